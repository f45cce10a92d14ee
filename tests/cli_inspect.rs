//! `candle-distill inspect` on folders: a tiny random model (counts checked against the
//! config), the same model as a float16 pytorch_model.bin, and the real MiniLM.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use candle_core::DType;
use candle_distill::model::{BertConfig, ModelFiles};
use candle_distill::testing::pth::{write_pytorch_bin, PthFormat};
use candle_distill::testing::{tiny_config, write_random_classifier};

fn inspect(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_candle-distill"))
        .arg("inspect")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn json(spec: &Path) -> serde_json::Value {
    let out = inspect(&["--json", spec.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// BertForSequenceClassification's parameter count, from the config alone.
fn expected_parameters(c: &BertConfig) -> usize {
    let (h, i, l) = (c.hidden_size, c.intermediate_size, c.num_labels());
    let embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h;
    let layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h;
    embeddings + c.num_hidden_layers * layer + (h * h + h) + (h * l + l)
}

fn tiny(dir: &Path) -> BertConfig {
    let mut config = tiny_config(16, 2, 2, 32);
    config.id2label = Some(
        [("0", "negative"), ("1", "positive")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    write_random_classifier(dir, &config, 3).unwrap();
    config
}

#[test]
fn tiny_model_report() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny(tmp.path());
    let report = json(tmp.path());
    assert_eq!(report["parameters"], expected_parameters(&config));
    assert_eq!(report["layers"], 2);
    assert_eq!(report["hidden_size"], 16);
    assert_eq!(
        report["labels"],
        serde_json::json!(["negative", "positive"])
    );
    assert_eq!(report["weight_format"], "safetensors");
    assert_eq!(
        report["weight_dtypes"],
        serde_json::json!({"f32": expected_parameters(&config)})
    );
    assert!(report["commit"].is_null());
    assert_eq!(report["lowercase"], true);

    let out = inspect(&[tmp.path().to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("2 layers, hidden 16, 2 heads, FFN 32"),
        "{text}"
    );
    assert!(
        text.contains("labels                   2 (negative, positive)"),
        "{text}"
    );
    assert!(text.contains("safetensors, f32,"), "{text}");
}

#[test]
fn half_precision_pytorch_bin_report() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny(tmp.path());
    let files = ModelFiles::resolve(tmp.path().to_str().unwrap()).unwrap();
    let mut tensors: Vec<_> = files
        .read_weights()
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::F16).unwrap()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    write_pytorch_bin(
        &tmp.path().join("pytorch_model.bin"),
        &tensors,
        PthFormat::Zip,
    )
    .unwrap();
    let report = json(tmp.path());
    assert_eq!(report["weight_format"], "pytorch_model.bin");
    assert_eq!(
        report["weight_dtypes"],
        serde_json::json!({"f16": expected_parameters(&config)})
    );
}

#[test]
fn minilm_report_and_vocab_hash_across_tokenizer_files() {
    let Some(dir) = common::minilm_dir() else {
        return;
    };
    let report = json(&dir);
    assert_eq!(report["parameters"], 22_713_216);
    assert_eq!(report["layers"], 6);
    assert_eq!(report["heads"], 12);
    assert!(report["labels"].is_null());
    assert_eq!(report["tokenizer_source"], "tokenizer.json");
    assert_eq!(report["tokenizer_vocab_size"], 30522);

    // The same checkpoint without tokenizer.json: vocab.txt + tokenizer_config.json.
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "config.json",
        "vocab.txt",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        std::os::unix::fs::symlink(dir.join(name), tmp.path().join(name)).unwrap();
    }
    let from_vocab = json(tmp.path());
    assert_eq!(from_vocab["tokenizer_source"], "vocab.txt");
    assert_eq!(from_vocab["vocab_sha256"], report["vocab_sha256"]);
    assert_eq!(from_vocab["lowercase"], true);
    assert_eq!(from_vocab["parameters"], report["parameters"]);

    let text = String::from_utf8(inspect(&[dir.to_str().unwrap()]).stdout).unwrap();
    assert!(text.contains("22713216 (22.7M)"), "{text}");
    assert!(text.contains("none (not fine-tuned for a task)"), "{text}");
}

#[test]
fn a_folder_without_weights_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
    let out = inspect(&[tmp.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(tmp.path().to_str().unwrap()) && err.contains("model.safetensors"),
        "{err}"
    );
    assert_eq!(
        err.matches(tmp.path().to_str().unwrap()).count(),
        1,
        "the folder is named once: {err}"
    );
}
