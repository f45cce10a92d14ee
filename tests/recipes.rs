//! The shipped recipes parse and validate; `plan` resolves the quick-start recipe;
//! bad recipes are refused with the key and file named.

use crate::common;

use std::process::Command;

use candle_distill::recipe::Recipe;

fn recipe_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(common::repo_root().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_recipe_is_valid() {
    let files = recipe_files();
    assert!(
        files.len() >= 19,
        "expected TinyBERT-4/6 recipes for 9 tasks plus the quick start"
    );
    for f in files {
        let r = Recipe::load(&f, &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!r.stages.is_empty());
    }
    for task in [
        "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli",
    ] {
        for s in ["tinybert4", "tinybert6"] {
            let f = common::repo_root().join(format!("recipes/{s}-{task}.toml"));
            let r = Recipe::load(&f, &[]).unwrap();
            assert_eq!(r.task.name.name(), task);
            // The reference keeps the best of evaluations every 50 steps: the prediction
            // stage evaluates every 100 (every 2,000 for the three large dev sets), the
            // intermediate one as the recipe's `eval.every` says.
            let last = r.stages.len() - 1;
            let every = if ["mnli", "qnli", "qqp"].contains(&task) {
                2000
            } else {
                100
            };
            let settings = |i: usize| r.stages[i].settings(&r, i == last);
            assert_eq!(settings(last).eval_every, every, "{s}-{task}");
            assert_eq!(settings(0).eval_every, r.eval.every, "{s}-{task}");
            // The reference's loss weighting: intermediate batches padded to
            // max_seq_len; the prediction stage pads each batch to its longest row.
            let max_len = r
                .task
                .max_seq_len
                .unwrap_or(if task == "sst2" || task == "cola" {
                    64
                } else {
                    128
                });
            assert_eq!(settings(0).pad_to, Some(max_len), "{s}-{task}");
            assert_eq!(settings(last).pad_to, None, "{s}-{task}");
            // The paper's learning-rate choice on dev for the small tasks.
            let variants = r.sweep_variants("recipe").unwrap();
            if ["cola", "mrpc", "rte", "stsb"].contains(&task) {
                let lrs: Vec<f64> = variants
                    .iter()
                    .map(|v| v.recipe.stages[1].learning_rate)
                    .collect();
                assert_eq!(lrs, [1e-5, 2e-5, 3e-5], "{s}-{task}");
                assert_eq!(r.first_swept_stage(), Some(1));
            } else {
                assert!(variants.is_empty(), "{s}-{task}");
            }
        }
    }
}

#[test]
fn plan_prints_pairs_shapes_and_work_for_the_quickstart() {
    let (Some(model), Some(glue)) = (common::minilm_dir(), common::glue_dir()) else {
        return;
    };
    let o = Command::new(env!("CARGO_BIN_EXE_candle-distill"))
        .arg("plan")
        .arg(common::repo_root().join("recipes/quickstart-cpu.toml"))
        .arg("--set")
        .arg(format!("teacher.model={}", model.display()))
        .arg("--set")
        .arg(format!("task.data={}", glue.display()))
        .args([
            "--set",
            &format!(
                "augment={{ method = \"both\", n_aug = 4, samples = 2, mlm_model = \"{}\" }}",
                model.display()
            ),
            "--set",
            "stages.0.data={ source = \"augmented\" }",
            "--set",
            "device=cpu,cpu",
            "--set",
            "stages.1.precision=bf16",
            "--set",
            "sweep={ \"stages.1.learning_rate\" = [1e-5, 3e-5] }",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    // Not augmented yet: the bound is 4000 x (1 original + 4 MLM + 2 round trips).
    assert!(
        text.contains("sst2 train augmented (both), at most 28000 rows"),
        "{text}"
    );
    // MiniLM has no SST-2 head: the plan shows the run fine-tunes it first, with
    // the quick start's settings (1 epoch of 4,000 sentences at batch 32).
    assert!(
        text.contains(
            "fine-tuned on sst2 train first (it has no classifier head for sst2): \
             1 epochs x batch 32 = 125 steps"
        ),
        "{text}"
    );
    assert!(
        text.contains("student<-teacher: 0<-0 1<-2 2<-4 3<-6"),
        "{text}"
    );
    assert!(text.contains("4000 train, 872 dev"), "{text}");
    assert!(
        text.contains(
            "evaluation  at each epoch's end: 3 evaluations x 872 dev examples \
             = 2616 student forward passes"
        ),
        "{text}"
    );
    assert!(text.contains("375 steps"), "{text}");
    assert!(
        text.contains("normalise   tokens: a mean over real tokens"),
        "{text}"
    );
    assert!(
        text.contains("sweep     2 variants (stages.1.learning_rate = 0.00001, 0.00003): stage 1 runs once; stages 2-2 run per variant"),
        "{text}"
    );
    // No GloVe file: the plan counts the words masked-LM augmentation cannot replace.
    let warning = text
        .lines()
        .find(|l| l.starts_with("warning: no GloVe vectors given (augment.glove): "))
        .unwrap_or_else(|| panic!("no GloVe warning: {text}"));
    let counts: Vec<usize> = warning
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .take(2)
        .collect();
    assert!(counts[0] > 0 && counts[0] < counts[1], "{warning}");
    assert!(text.contains("2 data-parallel replicas"), "{text}");
    assert!(text.contains("bf16 compute"), "{text}");
    assert!(
        text.contains("student (B, 12, L, L) vs teacher (B, 12, L, L)"),
        "{text}"
    );
}

#[test]
fn bad_recipes_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good =
        std::fs::read_to_string(common::repo_root().join("recipes/quickstart-cpu.toml")).unwrap();
    let cases = [
        (
            good.replace(
                "epochs = 3\nlearning_rate = 5e-5\nbatch_size = 32\n\n[[stages]]",
                "epoch = 3\nlearning_rate = 5e-5\nbatch_size = 32\n\n[[stages]]",
            ),
            "epoch",
        ),
        (
            good.replace("train_limit = 4000", "train_limit = \"all\""),
            "train_limit",
        ),
        (good.replace("version = 1", "version = 2"), "version"),
        (
            good.replace("version = 1", "version = 1\nprecision = \"fp8\""),
            "fp8",
        ),
        // The run's augmented data, but nothing says how to augment.
        (
            good.replace(
                "name = \"intermediate\"\nkind = \"intermediate\"",
                "name = \"intermediate\"\nkind = \"intermediate\"\ndata = { source = \"augmented\" }",
            ),
            "stages[0].data",
        ),
        (
            good.replace("[task]", "[augment]\nmethod = \"mlm\"\ntop_kk = 5\n\n[task]"),
            "top_kk",
        ),
        (
            good.replace("[task]", "[augment]\nmethod = \"mlm\"\np_t = 1.5\n\n[task]"),
            "augment.p_t",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        assert_ne!(text, &good, "case {i} did not change the recipe");
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_candle-distill"))
            .arg("plan")
            .arg(&path)
            .args(["--set", "task.data=/nonexistent"])
            .output()
            .unwrap();
        assert!(!o.status.success(), "case {i} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(key),
            "case {i}: error does not name `{key}`: {err}"
        );
        assert!(
            err.contains(&format!("bad{i}.toml")),
            "case {i}: error does not name the file: {err}"
        );
    }
}

#[test]
fn impossible_plans_are_rejected_before_training() {
    let (Some(model), Some(glue)) = (common::minilm_dir(), common::glue_dir()) else {
        return;
    };
    let recipe = common::repo_root().join("recipes/quickstart-cpu.toml");
    let plan = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_candle-distill"));
        c.arg("plan").arg(&recipe);
        c.arg("--set")
            .arg(format!("teacher.model={}", model.display()));
        c.arg("--set").arg(format!("task.data={}", glue.display()));
        for e in extra {
            c.args(["--set", e]);
        }
        let o = c.output().unwrap();
        assert!(!o.status.success(), "accepted: {extra:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = plan(&["student.layers=[2, 4, 9]"]);
    assert!(
        err.contains("student.layers") && err.contains("between 1 and 6"),
        "{err}"
    );
    let err = plan(&[
        "student={from = \"random\", layers = 2, hidden = 128, heads = 8, intermediate = 256}",
    ]);
    assert!(err.contains("8 heads") && err.contains("12"), "{err}");
    let err = plan(&["stages.0.layer_map=[[1, 7]]"]);
    assert!(err.contains("[1, 7]") && err.contains("0..=6"), "{err}");
    let err = plan(&[
        "student={from = \"random\", layers = 8, hidden = 384, heads = 12, intermediate = 256}",
    ]);
    assert!(err.contains("more layers"), "{err}");
}
