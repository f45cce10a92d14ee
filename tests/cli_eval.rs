//! `candle-distill eval` on tiny random models and a small GLUE folder: metrics JSON,
//! predictions, leaderboard submission files, MNLI's two dev sets, refused label maps.

use std::path::Path;
use std::process::{Command, Output};

use candle_distill::testing::{tiny_config, write_random_classifier};

fn write_model(dir: &Path, labels: &[&str]) {
    let mut config = tiny_config(16, 1, 2, 32);
    config.set_labels(&labels.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    write_random_classifier(dir, &config, 5).unwrap();
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_candle-distill"))
        .arg("eval")
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const SST_DEV: &str = "sentence\tlabel\na good film \t1\nthe plot was dull \t0\ngreat fun \t1\nbad , awful movie \t0\nnot very nice \t0\ni love it \t1\n";
const SST_TEST: &str = "index\tsentence\n0\ta great song\n1\ta sad , boring night\n2\tnice\n";

#[test]
fn sst2_dev_metrics_agree_with_the_predictions_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, glue, out) = (
        tmp.path().join("m"),
        tmp.path().join("glue"),
        tmp.path().join("out"),
    );
    write_model(&model, &["negative", "positive"]);
    write(&glue, "SST-2/dev.tsv", SST_DEV);
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--task",
        "SST-2",
        "--data",
        glue.to_str().unwrap(),
        "--batch-size",
        "4",
        "--out",
        out.to_str().unwrap(),
    ];
    let report = ok_json(&eval(&args));
    let dev = &report["results"]["dev"];
    assert_eq!(dev["examples"], 6);
    let accuracy = dev["metrics"]["accuracy"].as_f64().unwrap();
    assert_eq!(dev["metrics"]["score"].as_f64().unwrap(), accuracy);

    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(written, report);
    let predictions = std::fs::read_to_string(out.join("predictions-dev.tsv")).unwrap();
    let mut lines = predictions.lines();
    assert_eq!(lines.next(), Some("index\tprediction\tlabel"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 6);
    assert!(rows
        .iter()
        .all(|r| ["negative", "positive"].contains(&r[1])));
    let right = rows.iter().filter(|r| r[1] == r[2]).count();
    assert_eq!(accuracy, right as f64 / 6.0);

    // The output folder is not overwritten without --force.
    let again = eval(&args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

#[test]
fn test_split_writes_the_leaderboard_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, glue, out) = (
        tmp.path().join("m"),
        tmp.path().join("glue"),
        tmp.path().join("out"),
    );
    write_model(&model, &["negative", "positive"]);
    write(&glue, "SST-2/test.tsv", SST_TEST);
    let report = ok_json(&eval(&[
        "--model",
        model.to_str().unwrap(),
        "--task",
        "sst2",
        "--split",
        "test",
        "--data",
        glue.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(report["results"]["test"]["metrics"].is_null());
    let submission = std::fs::read_to_string(out.join("SST-2.tsv")).unwrap();
    let lines: Vec<&str> = submission.lines().collect();
    assert_eq!(lines[0], "index\tprediction");
    assert_eq!(lines.len(), 4);
    for (i, line) in lines[1..].iter().enumerate() {
        let (index, value) = line.split_once('\t').unwrap();
        assert_eq!(index, i.to_string());
        assert!(value == "0" || value == "1", "{line}");
    }
}

#[test]
fn mnli_scores_matched_and_mismatched_apart_and_names_test_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, glue, out) = (
        tmp.path().join("m"),
        tmp.path().join("glue"),
        tmp.path().join("out"),
    );
    write_model(&model, &["entailment", "neutral", "contradiction"]);
    let header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2";
    let row = |i: usize, a: &str, b: &str, gold: Option<&str>| match gold {
        Some(g) => {
            format!("{i}\t1\t1n\tfiction\tx\tx\tx\tx\t{a}\t{b}\t{g}\t{g}\t{g}\t{g}\t{g}\t{g}\n")
        }
        None => format!("{i}\t1\t1n\tfiction\tx\tx\tx\tx\t{a}\t{b}\n"),
    };
    let dev_header = format!("{header}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n");
    write(
        &glue,
        "MNLI/dev_matched.tsv",
        &format!(
            "{dev_header}{}{}",
            row(0, "the cat is big", "a cat is big", Some("entailment")),
            row(1, "the dog ran", "the dog sat", Some("contradiction"))
        ),
    );
    write(
        &glue,
        "MNLI/dev_mismatched.tsv",
        &format!(
            "{dev_header}{}{}{}",
            row(0, "she is happy", "she is sad", Some("contradiction")),
            row(1, "we eat", "we eat at night", Some("neutral")),
            row(2, "a man", "a woman", Some("neutral"))
        ),
    );
    write(
        &glue,
        "MNLI/test_matched.tsv",
        &format!("{header}\n{}", row(9, "a red car", "a car", None)),
    );
    write(
        &glue,
        "MNLI/test_mismatched.tsv",
        &format!("{header}\n{}", row(4, "a book", "a song", None)),
    );

    let report = ok_json(&eval(&[
        "--model",
        model.to_str().unwrap(),
        "--task",
        "mnli",
        "--data",
        glue.to_str().unwrap(),
    ]));
    let results = report["results"].as_object().unwrap();
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results["dev"]["metrics"]["n"], 2);
    assert_eq!(results["dev-mismatched"]["metrics"]["n"], 3);

    ok_json(&eval(&[
        "--model",
        model.to_str().unwrap(),
        "--task",
        "mnli",
        "--split",
        "test",
        "--data",
        glue.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    for (file, index) in [("MNLI-m.tsv", "9"), ("MNLI-mm.tsv", "4")] {
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        let row = text.lines().nth(1).unwrap();
        let (i, label) = row.split_once('\t').unwrap();
        assert_eq!(i, index);
        assert!(
            ["entailment", "neutral", "contradiction"].contains(&label),
            "{row}"
        );
    }
}

#[test]
fn a_model_with_other_labels_is_refused_showing_both_maps() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, glue) = (tmp.path().join("m"), tmp.path().join("glue"));
    write_model(&model, &["positive", "negative"]);
    write(&glue, "SST-2/dev.tsv", SST_DEV);
    let out = eval(&[
        "--model",
        model.to_str().unwrap(),
        "--task",
        "sst2",
        "--data",
        glue.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("{0: positive, 1: negative}") && err.contains("{0: negative, 1: positive}"),
        "{err}"
    );
}

/// A tiny pre-trained encoder of another family as users hold one: no task head, its
/// tensors under its own prefix (`mpnet.encoder...`), `model_type` not `bert`.
/// A BERT without its head, its encoder's tensors under `prefix.` and its config's
/// model_type set to `model_type`.
fn write_other_family(dir: &Path, model_type: &str, prefix: &str) {
    write_model(dir, &["negative", "positive"]);
    let path = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let renamed: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("classifier."))
        .map(|(k, t)| (k.replacen("bert.", &format!("{prefix}."), 1), t))
        .collect();
    candle_core::safetensors::save(&renamed, &path).unwrap();
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["model_type"] = model_type.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
}

/// `candle-distill finetune` on SST-2 for one epoch at batch 2, plus `extra` flags.
fn finetune(model: &Path, glue: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_candle-distill"))
        .args([
            "finetune",
            "--model",
            model.to_str().unwrap(),
            "--task",
            "sst2",
        ])
        .args([
            "--data",
            glue.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--epochs", "1", "--batch-size", "2"])
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn finetune_refuses_a_checkpoint_that_would_train_as_a_random_network() {
    let tmp = tempfile::tempdir().unwrap();
    // An ELECTRA's tensors under a config that says BERT.
    let (model, glue, out) = (
        tmp.path().join("electra"),
        tmp.path().join("glue"),
        tmp.path().join("out"),
    );
    write_other_family(&model, "bert", "electra");
    write(&glue, "SST-2/train.tsv", SST_DEV);
    write(&glue, "SST-2/dev.tsv", SST_DEV);
    let err = stderr(&finetune(&model, &glue, &out, &[]));
    assert!(err.contains("model_type `bert`"), "{err}");
    assert!(
        err.contains("does not hold the encoder its config describes"),
        "{err}"
    );
    // 5 embedding tensors + 16 for the one layer would be random; the head and pooler
    // the task adds are not counted.
    assert!(err.contains("21 of the 25 tensors"), "{err}");
    assert!(err.contains("`electra.embeddings"), "{err}");
    assert_eq!(err.matches(model.to_str().unwrap()).count(), 1, "{err}");
    assert!(!out.join("model.safetensors").exists());
    let checkpoints = walk(&out)
        .into_iter()
        .filter(|p| p.ends_with("model.safetensors"));
    assert_eq!(checkpoints.count(), 0, "nothing may have been trained");
}

#[test]
fn a_family_not_supported_yet_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, glue) = (tmp.path().join("deberta"), tmp.path().join("glue"));
    write_other_family(&model, "deberta-v2", "deberta");
    write(&glue, "SST-2/dev.tsv", SST_DEV);
    let err = stderr(&eval_sst2(&model, &glue));
    assert!(err.contains("`deberta-v2` (DeBERTa-v2/v3"), "{err}");
    assert!(err.contains("not supported yet"), "{err}");
    assert!(err.contains("config.json"), "{err}");
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{err}"
    );
}

#[test]
fn eval_of_an_encoder_without_a_head_says_so_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, glue) = (tmp.path().join("encoder"), tmp.path().join("glue"));
    write_other_family(&model, "bert", "bert");
    write(&glue, "SST-2/dev.tsv", SST_DEV);
    let err = stderr(&eval_sst2(&model, &glue));
    assert!(err.contains("no sequence-classification head"), "{err}");
    assert!(err.contains("candle-distill finetune"), "{err}");
    assert!(!err.contains("tensor '*'") && !err.contains("`*`"), "{err}");
    assert_eq!(err.matches(model.to_str().unwrap()).count(), 1, "{err}");
}

/// `candle-distill eval` of `model` on the SST-2 dev file under `glue`.
fn eval_sst2(model: &Path, glue: &Path) -> Output {
    eval(&[
        "--model",
        model.to_str().unwrap(),
        "--task",
        "sst2",
        "--data",
        glue.to_str().unwrap(),
    ])
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn eval_on_a_dev_file_without_rows_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, glue) = (tmp.path().join("m"), tmp.path().join("glue"));
    write_model(&model, &["negative", "positive"]);
    write(&glue, "SST-2/dev.tsv", "sentence\tlabel\n");
    let err = stderr(&eval_sst2(&model, &glue));
    assert!(err.contains("SST-2/dev.tsv"), "{err}");
    assert!(err.contains("no examples"), "{err}");
}

#[test]
fn a_folder_in_use_is_refused_and_a_killed_holder_does_not_block() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, glue, out) = (
        tmp.path().join("m"),
        tmp.path().join("glue"),
        tmp.path().join("out"),
    );
    write_model(&model, &["negative", "positive"]);
    write(&glue, "SST-2/train.tsv", SST_DEV);
    write(&glue, "SST-2/dev.tsv", SST_DEV);
    let attempt =
        |force: bool| finetune(&model, &glue, &out, if force { &["--force"] } else { &[] });
    // Another process holds the fine-tuning's folder (flock's `-o`: the lock stays
    // with flock, not the sleep it starts), as a running fine-tuning would.
    let training = out.join("training");
    std::fs::create_dir_all(&training).unwrap();
    let mut holder = Command::new("flock")
        .arg("-o")
        .arg(training.join(".lock"))
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1) from util-linux");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let refused = loop {
        let run = attempt(false);
        if !run.status.success() {
            break stderr(&run);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was never taken"
        );
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::create_dir_all(&training).unwrap();
    };
    assert!(
        refused.contains("in use by another candle-distill process"),
        "{refused}"
    );
    assert!(refused.contains("training"), "{refused}");
    // --force must not remove a folder in use either.
    let forced = stderr(&attempt(true));
    assert!(forced.contains("in use"), "{forced}");
    assert!(training.is_dir());
    // SIGKILL: the lock dies with its holder.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let run = attempt(false);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.join("model.safetensors").is_file());
}
