//! `candle-distill run` end to end on tiny models: teacher fine-tuned first (it has no
//! head), then intermediate and prediction distillation; outputs of the run folder;
//! a run killed with SIGKILL and started again reaches the same student.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_distill::rng::Rng;
use candle_distill::testing::{tiny_config, write_random_classifier};

const POSITIVE: &[&str] = &[
    "good", "great", "fun", "love", "best", "funny", "nice", "happy",
];
const NEGATIVE: &[&str] = &[
    "bad", "awful", "dull", "hate", "worst", "boring", "poor", "sad",
];
const NEUTRAL: &[&str] = &[
    "the", "movie", "film", "story", "was", "it", "a", "and", "plot", "actor",
];

fn write_sst2(dir: &Path) {
    let mut rng = Rng::new(3);
    let mut make = |n: usize| {
        let mut out = String::from("sentence\tlabel\n");
        let mut made = 0;
        while made < n {
            let len = 3 + rng.below(6);
            let (mut p, mut q) = (0, 0);
            let words: Vec<&str> = (0..len)
                .map(|_| match rng.below(3) {
                    0 => {
                        p += 1;
                        POSITIVE[rng.below(POSITIVE.len())]
                    }
                    1 => {
                        q += 1;
                        NEGATIVE[rng.below(NEGATIVE.len())]
                    }
                    _ => NEUTRAL[rng.below(NEUTRAL.len())],
                })
                .collect();
            if p != q {
                out += &format!("{} \t{}\n", words.join(" "), (p > q) as u8);
                made += 1;
            }
        }
        out
    };
    std::fs::create_dir_all(dir.join("SST-2")).unwrap();
    std::fs::write(dir.join("SST-2/train.tsv"), make(480)).unwrap();
    std::fs::write(dir.join("SST-2/dev.tsv"), make(120)).unwrap();
}

fn recipe(root: &Path) -> PathBuf {
    let text = format!(
        r#"version = 1
name = "tiny"
seed = 5
[teacher]
model = "{teacher}"
[teacher.finetune_settings]
kind = "finetune"
epochs = 4
learning_rate = 3e-3
batch_size = 16
checkpoint_every = 10
[task]
name = "sst2"
data = "{glue}"
max_seq_len = 24
[student]
from = "random"
layers = 2
hidden = 16
heads = 4
intermediate = 32
[[stages]]
name = "intermediate"
kind = "intermediate"
epochs = 3
learning_rate = 3e-3
batch_size = 16
checkpoint_every = 7
[[stages]]
name = "prediction"
kind = "prediction"
epochs = 3
learning_rate = 3e-3
batch_size = 16
checkpoint_every = 7
"#,
        teacher = root.join("teacher").display(),
        glue = root.join("glue").display()
    );
    let path = root.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_random_classifier(&dir.path().join("teacher"), &tiny_config(32, 2, 4, 64), 1).unwrap();
    write_sst2(&dir.path().join("glue"));
    dir
}

fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_candle-distill"));
    c.env("RUST_LOG", "warn");
    c
}

fn run_to(recipe: &Path, out: &Path) -> std::process::Output {
    cli()
        .arg("run")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn student_weights(run: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(
        run.join("checkpoints/best/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
    .collect()
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
    let mut child = cli()
        .arg("run")
        .arg(&recipe)
        .arg("--out")
        .arg(&killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the distillation has written a checkpoint and gone on.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let progress = std::fs::read_to_string(killed.join("checkpoints/last/progress.json"))
            .unwrap_or_default();
        if progress.contains("\"step\"")
            && std::fs::read_to_string(killed.join("metrics.jsonl"))
                .map(|m| m.lines().count() > 4)
                .unwrap_or(false)
        {
            break;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let was_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        was_running,
        "the run finished before it could be killed; the test needs a longer run"
    );
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
