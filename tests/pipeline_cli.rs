//! `candle-distill run` end to end on tiny models: teacher fine-tuned first (it has no
//! head), then intermediate and prediction distillation; outputs of the run folder;
//! a run killed with SIGKILL and started again reaches the same student.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::common;

use candle_distill::testing::tiny_config;
use common::tiny_run::{cli, kill_after_a_checkpoint, recipe, setup, weights};

/// `run <recipe> --out <out> <extra>...`.
fn run_command(recipe: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = cli();
    c.arg("run").arg(recipe).arg("--out").arg(out).args(extra);
    c
}

fn run_to(recipe: &Path, out: &Path) -> std::process::Output {
    run_command(recipe, out, &[]).output().unwrap()
}

/// `run --sweep` over two learning rates of the prediction stage.
fn sweep_to(recipe: &Path, out: &Path) -> Command {
    run_command(
        recipe,
        out,
        &["--sweep", "stages.1.learning_rate=1e-4,3e-3"],
    )
}

fn student_weights(run: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    weights(&run.join("checkpoints/best/model.safetensors"))
}

#[test]
fn run_writes_a_complete_run_folder_and_refuses_another_recipe_there() {
    let dir = setup();
    let recipe = recipe(dir.path());
    let out = dir.path().join("run");
    let o = run_to(&recipe, &out);
    assert!(
        o.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for f in [
        "recipe.toml",
        "metrics.jsonl",
        "loss.png",
        "report.json",
        "report.md",
        "checkpoints/best/config.json",
        "teacher-finetune/checkpoints/best/model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let teacher = report["teacher"]["dev"]["accuracy"].as_f64().unwrap();
    let student = report["student"]["dev"]["accuracy"].as_f64().unwrap();
    assert!(teacher > 0.8, "teacher dev accuracy {teacher}");
    assert!(student > 0.7, "student dev accuracy {student}");
    // The report's teacher scores, carried over from the fine-tuning (not evaluated
    // again), are those of the fine-tuned teacher the run distilled from.
    let o = cli()
        .arg("eval")
        .arg("--model")
        .arg(out.join("teacher-finetune/checkpoints/best"))
        .args(["--task", "SST-2", "--data"])
        .arg(dir.path().join("glue"))
        .args(["--batch-size", "16"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let eval: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(eval["results"]["dev"]["metrics"], report["teacher"]["dev"]);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(md.matches("| dev accuracy |").count(), 1, "{md}");
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"stage\":\"intermediate\"")
            && metrics.contains("\"stage\":\"prediction\"")
    );
    // The resolved recipe holds every default.
    let resolved = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
    assert!(
        resolved.contains("warmup_ratio") || resolved.contains("max_grad_norm"),
        "{resolved}"
    );

    // The exported student is the best checkpoint, loadable as a classifier.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("student/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["1"], "positive");
    let card = std::fs::read_to_string(out.join("student/README.md")).unwrap();
    assert!(card.contains("(fine-tuned on the task first)"), "{card}");
    let disk = card
        .lines()
        .find(|l| l.starts_with("| weights on disk |"))
        .unwrap();
    assert!(!disk.contains(" - |") && !disk.contains("inf"), "{disk}");
    // `export --from <run folder>` takes its best checkpoint.
    let o = cli()
        .arg("export")
        .arg("--from")
        .arg(&out)
        .arg("--out")
        .arg(dir.path().join("exported"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.path().join("exported/model.safetensors").is_file());

    // Same folder, changed recipe: refused, nothing overwritten.
    let o = cli()
        .arg("run")
        .arg(&recipe)
        .arg("--out")
        .arg(&out)
        .args(["--set", "seed=6"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("different recipe"));
    assert!(out.join("report.json").is_file());
}

#[test]
fn a_killed_run_resumes_to_the_same_student() {
    let dir = setup();
    let recipe = recipe(dir.path());
    let straight = dir.path().join("straight");
    let o = run_to(&recipe, &straight);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let killed = dir.path().join("killed");
    let mut child = cli();
    child.arg("run").arg(&recipe).arg("--out").arg(&killed);
    kill_after_a_checkpoint(child, &killed);
    let o = run_to(&recipe, &killed);
    assert!(
        o.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let a = student_weights(&straight);
    let b = student_weights(&killed);
    assert_eq!(a.len(), b.len());
    for (name, values) in &a {
        assert_eq!(values, &b[name], "{name} differs after resuming");
    }
}

/// A run started again after all its stages finished (its export had failed, say)
/// skips them, exports, and still reports every stage as the first start would have.
#[test]
fn a_run_resumed_after_its_stages_still_reports_them() {
    let dir = setup();
    let recipe = recipe(dir.path());
    let out = dir.path().join("run");
    let o = run_to(&recipe, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
    };
    let first = read();
    std::fs::remove_dir_all(out.join("student")).unwrap();
    std::fs::remove_file(out.join("report.json")).unwrap();
    let o = run_to(&recipe, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = read();
    assert_eq!(again["stages"].as_array().unwrap().len(), 2);
    assert_eq!(again["stages"], first["stages"]);
    assert_eq!(again["student"]["dev"], first["student"]["dev"]);
}

/// A recipe's `[augment]` table feeds a stage with `data = { source = "augmented" }`:
/// the run augments the training text into its folder and trains on more rows.
#[test]
fn a_stage_trains_on_the_runs_augmented_data() {
    let dir = setup();
    candle_distill::testing::write_random_masked_lm(
        &dir.path().join("mlm"),
        &tiny_config(32, 1, 2, 64),
        2,
    )
    .unwrap();
    let recipe = recipe(dir.path());
    let run = |out: &Path, sets: &[&str]| {
        let mut command = cli();
        command.arg("run").arg(&recipe).arg("--out").arg(out);
        let augment = format!(
            "augment={{ method = \"mlm\", mlm_model = \"{}\", n_aug = 3 }}",
            dir.path().join("mlm").display()
        );
        command.args(["--set", &augment, "--set", "stages.1.epochs=1"]);
        for set in sets {
            command.args(["--set", set]);
        }
        command.output().unwrap()
    };
    let out = dir.path().join("run");
    let o = run(
        &out,
        &[
            "stages.0.data={ source = \"augmented\" }",
            "stages.0.epochs=1",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let files: Vec<PathBuf> = std::fs::read_dir(out.join("augmented"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let rows = candle_distill::augment::cache::read_augmented(&files[0]).unwrap();
    assert!(rows.len() > 480, "{} augmented rows", rows.len());
    let distinct: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.text_a.as_str()).collect();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    // One epoch at batch 16 over every distinct augmented row; the prediction stage
    // still trains on the 480 task rows.
    assert_eq!(
        report["stages"][0]["steps"].as_u64().unwrap() as usize,
        distinct.len().div_ceil(16)
    );
    assert_eq!(report["stages"][1]["steps"], 30);
    let resolved = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
    assert!(resolved.contains("[augment]"), "{resolved}");

    // Streamed instead of held: an epoch of every augmented row (not deduplicated).
    let streamed = dir.path().join("streamed");
    let steps = rows.len().div_ceil(16);
    let o = run(
        &streamed,
        &[
            "stages.0.data={ source = \"augmented\", stream = true }",
            &format!("stages.0.max_steps={}", steps + 1),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(streamed.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["stages"][0]["steps"].as_u64().unwrap() as usize,
        steps + 1
    );
    let metrics = std::fs::read_to_string(streamed.join("metrics.jsonl")).unwrap();
    let last = metrics
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["stage"] == "intermediate" && v.get("loss").is_some())
        .unwrap();
    // The step after an epoch of every row is the next epoch's first.
    assert_eq!(
        (last["step"].as_u64(), last["epoch"].as_u64()),
        (Some(steps as u64 + 1), Some(1))
    );
}

/// `finetune` killed mid-training and started again writes the same model folder.
#[test]
fn a_killed_finetune_resumes_to_the_same_model() {
    let dir = setup();
    let finetune = |out: &Path| {
        let mut c = cli();
        c.arg("finetune")
            .arg("--model")
            .arg(dir.path().join("teacher"))
            .args(["--task", "sst2", "--epochs", "3", "--lr", "3e-3"])
            .args([
                "--batch-size",
                "16",
                "--max-seq-len",
                "24",
                "--checkpoint-every",
                "10",
            ])
            .arg("--data")
            .arg(dir.path().join("glue"))
            .arg("--out")
            .arg(out);
        c
    };
    let straight = dir.path().join("straight");
    let o = finetune(&straight).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let killed = dir.path().join("killed");
    kill_after_a_checkpoint(finetune(&killed), &killed.join("training"));
    assert!(!killed.join("model.safetensors").exists());
    let o = finetune(&killed).output().unwrap();
    assert!(
        o.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (a, b) = (
        weights(&straight.join("model.safetensors")),
        weights(&killed.join("model.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    for (name, values) in &a {
        assert_eq!(values, &b[name], "{name} differs after resuming");
    }
}

/// `run --sweep`: the teacher's fine-tuning, the intermediate stage and the teacher
/// logits are made once; each learning rate trains the prediction stage from the same
/// checkpoint in its own folder; the report marks the best, whose student is exported;
/// a second start reuses every finished variant.
#[test]
fn a_sweep_shares_the_stages_before_it_and_exports_the_best_variant() {
    let dir = setup();
    let recipe = recipe(dir.path());
    let out = dir.path().join("swept");
    let sweep = || sweep_to(&recipe, &out).output().unwrap();
    let o = sweep();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let variants = report["sweep"]["variants"].as_array().unwrap();
    let labels: Vec<&str> = variants
        .iter()
        .map(|v| v["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "stages.1.learning_rate=0.0001",
            "stages.1.learning_rate=0.003"
        ]
    );
    // The shared stage ran once, in the run folder; each variant only its own stage.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"stage\":\"intermediate\""));
    assert!(!metrics.contains("\"stage\":\"prediction\""));
    for label in &labels {
        let v = out.join("sweep").join(label);
        let m = std::fs::read_to_string(v.join("metrics.jsonl")).unwrap();
        assert!(
            m.contains("\"stage\":\"prediction\"") && !m.contains("\"stage\":\"intermediate\"")
        );
        assert!(!v.join("cache").exists() && !v.join("teacher-finetune").exists());
        let recipe = std::fs::read_to_string(v.join("recipe.toml")).unwrap();
        assert!(!recipe.contains("[sweep]"), "{recipe}");
    }
    // One logit cache, the run's.
    assert_eq!(std::fs::read_dir(out.join("cache")).unwrap().count(), 1);
    // The two learning rates trained different students; the best one is exported.
    let best = report["sweep"]["best"].as_u64().unwrap() as usize;
    let scores: Vec<f64> = variants
        .iter()
        .map(|v| v["score"].as_f64().unwrap())
        .collect();
    assert!(scores.iter().all(|&s| s <= scores[best]));
    let of = |label: &str| student_weights(&out.join("sweep").join(label));
    let (a, b) = (of(labels[0]), of(labels[1]));
    assert!(
        a.iter().any(|(k, v)| v != &b[k]),
        "variants trained the same weights"
    );
    let exported = weights(&out.join("student/model.safetensors"));
    let winner = of(labels[best]);
    for (name, values) in &exported {
        assert_eq!(
            values, &winner[name],
            "{name}: the export is not the best variant's"
        );
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Sweep") && md.contains("| best |"), "{md}");

    // Started again: every variant is reused, and the result is the same.
    let started = Instant::now();
    let o = sweep();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(again["sweep"]["variants"], report["sweep"]["variants"]);
    eprintln!("second start: {:.1} s", started.elapsed().as_secs_f64());
}

/// A sweep killed inside its first variant and started again exports the student of
/// an uninterrupted sweep.
#[test]
fn a_killed_sweep_resumes_to_the_same_student() {
    let dir = setup();
    let recipe = recipe(dir.path());
    let straight = dir.path().join("straight");
    let o = sweep_to(&recipe, &straight).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let killed = dir.path().join("killed");
    let first = killed.join("sweep/stages.1.learning_rate=0.0001");
    kill_after_a_checkpoint(sweep_to(&recipe, &killed), &first);
    assert!(
        !first.join("variant.json").exists(),
        "killed after the variant finished"
    );
    let o = sweep_to(&recipe, &killed).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = weights(&straight.join("student/model.safetensors"));
    let b = weights(&killed.join("student/model.safetensors"));
    for (name, values) in &a {
        assert_eq!(values, &b[name], "{name} differs after resuming the sweep");
    }
}

/// Sweeping the first stage shares no checkpoint: the second variant starts from the
/// initial weights, not the first variant's, so it trains what a plain run with its
/// value trains.
#[test]
fn a_sweep_of_the_first_stage_starts_every_variant_afresh() {
    let dir = setup();
    let recipe = recipe(dir.path());
    let swept = dir.path().join("swept");
    let o = run_command(
        &recipe,
        &swept,
        &["--sweep", "stages.0.learning_rate=1e-3,3e-3"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plain = dir.path().join("plain");
    let o = run_command(&recipe, &plain, &["--set", "stages.0.learning_rate=3e-3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = student_weights(&swept.join("sweep/stages.0.learning_rate=0.003"));
    let b = student_weights(&plain);
    for (name, values) in &b {
        assert_eq!(values, &a[name], "{name}: the variant did not start afresh");
    }
}
