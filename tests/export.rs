//! Export: a folder transformers loads as is (checked against a committed transformers
//! fixture), training-only tensors left out, half precision, atomic and guarded writes,
//! and a verification that turns a mismatch into an error.

use crate::common;

use std::path::Path;

use candle_core::{DType, Device};
use candle_distill::export::{
    classifier_logits, export_classifier, ExportOptions, ExportSource, ExportTokenizer, ModelCard,
};
use candle_distill::model::{load_classifier, BuildOptions, ModelFiles};
use candle_distill::testing::{tiny_vocab, write_tiny_student};
use candle_distill::tokenizer::{TextTokenizer, TokenizerFiles};
use common::{read_json, rel_err};

/// The seed the committed fixture was generated with (see the script's docstring).
const SEED: u64 = 7;

fn tiny_student(dir: &Path) -> ExportSource {
    write_tiny_student(dir, SEED).unwrap();
    ExportSource::from_checkpoint(dir.to_str().unwrap()).unwrap()
}

fn siblings(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn tiny_export_matches_committed_transformers_logits() {
    let fixture =
        read_json(&common::repo_root().join("tests/fixtures/tiny_export_transformers.json"));
    let examples: Vec<(String, Option<String>)> =
        serde_json::from_value(fixture["examples"].clone()).unwrap();
    let hf_ids: Vec<Vec<u32>> =
        serde_json::from_value(fixture["transformers_input_ids"].clone()).unwrap();
    let hf_logits: Vec<Vec<f32>> =
        serde_json::from_value(fixture["transformers_logits"].clone()).unwrap();
    let rust_logits: Vec<Vec<f32>> =
        serde_json::from_value(fixture["rust_logits"].clone()).unwrap();
    assert_eq!(examples.len(), 8);

    let tmp = tempfile::tempdir().unwrap();
    // Regenerating the fixture starts from this student: see the script's docstring.
    let student_dir = std::env::var("CANDLE_DISTILL_TINY_STUDENT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().join("student"));
    let source = tiny_student(&student_dir);
    let out = tmp.path().join("export");
    let options = ExportOptions {
        check_examples: examples.clone(),
        ..Default::default()
    };
    let report = export_classifier(&source, &out, &options).unwrap();

    // The student is the model the fixture was made from (its weights are seeded; the
    // logits may differ in the last bits on another CPU's matmul kernels).
    for (ours, committed) in report.check.exported_logits.iter().zip(&rust_logits) {
        let e = rel_err(ours, committed);
        assert!(
            e < 1e-5,
            "the tiny student changed (relative error {e}); regenerate the fixture (see the script's docstring)"
        );
    }
    // The exported tokenizer gives transformers' ids; the model transformers' logits.
    let loaded = load_classifier(
        out.to_str().unwrap(),
        &BuildOptions::inference(&Device::Cpu),
    )
    .unwrap();
    for ((a, b), want) in examples.iter().zip(&hf_ids) {
        let got = loaded.tokenizer.encode(a, b.as_deref(), 128).unwrap();
        assert_eq!(&got.ids, want, "tokenisation of {a:?}");
    }
    let logits = classifier_logits(
        &loaded.built.model,
        &loaded.tokenizer,
        &examples,
        128,
        &Device::Cpu,
    )
    .unwrap();
    for (i, (ours, theirs)) in logits.iter().zip(&hf_logits).enumerate() {
        let e = rel_err(ours, theirs);
        assert!(
            e < 1e-4,
            "example {i}: relative error {e} against transformers"
        );
    }
}

#[test]
fn export_writes_a_transformers_folder_without_training_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut source = tiny_student(&tmp.path().join("student"));
    source.card = ModelCard {
        teacher: Some("org/teacher".into()),
        ..Default::default()
    };
    let out = tmp.path().join("export");
    let report = export_classifier(&source, &out, &ExportOptions::default()).unwrap();
    assert_eq!(
        report.dropped,
        vec!["fit_denses.0.bias", "fit_denses.0.weight"]
    );
    // transformers' BertTokenizer files beside the model, config and card.
    let mut files = report.files.clone();
    files.sort();
    assert_eq!(
        files,
        [
            "README.md",
            "config.json",
            "model.safetensors",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt"
        ]
    );
    assert_eq!(siblings(&out), files);
    assert_eq!(
        siblings(tmp.path()),
        vec!["export", "student"],
        "no staging folder left"
    );

    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    let names: Vec<String> = meta.tensors().keys().cloned().collect();
    assert_eq!(names.len(), report.tensors);
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("bert.") || n.starts_with("classifier.")),
        "{names:?}"
    );
    assert!(names
        .iter()
        .any(|n| n.as_str() == "bert.pooler.dense.weight"));

    let config = read_json(&out.join("config.json"));
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["model_type"], "bert");
    assert_eq!(config["id2label"]["1"], "positive");
    assert_eq!(config["label2id"]["negative"], 0);
    assert_eq!(config["problem_type"], "single_label_classification");
    assert_eq!(config["torch_dtype"], "float32");

    let tok = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tok["tokenizer_class"], "BertTokenizer");
    assert_eq!(tok["do_lower_case"], true);
    assert_eq!(tok["model_max_length"], 128);
    assert_eq!(
        read_json(&out.join("special_tokens_map.json"))["cls_token"],
        "[CLS]"
    );
    let vocab = std::fs::read_to_string(out.join("vocab.txt")).unwrap();
    assert_eq!(vocab.lines().collect::<Vec<_>>(), tiny_vocab());

    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.starts_with("---\nlibrary_name: transformers\n"),
        "{card}"
    );
    assert!(card.contains("base_model: \"org/teacher\""), "{card}");
    assert!(card.contains("| 1 | positive |"), "{card}");
}

#[test]
fn vocab_txt_is_generated_when_the_source_has_only_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("student");
    let mut source = tiny_student(&src);
    let tokenizer = TextTokenizer::from_files(&TokenizerFiles {
        tokenizer_json: Some(src.join("tokenizer.json")),
        ..Default::default()
    })
    .unwrap();
    source.tokenizer = ExportTokenizer::Loaded(Box::new(tokenizer));
    let out = tmp.path().join("export");
    export_classifier(&source, &out, &ExportOptions::default()).unwrap();
    let vocab = std::fs::read_to_string(out.join("vocab.txt")).unwrap();
    assert_eq!(vocab.lines().collect::<Vec<_>>(), tiny_vocab());
    let tok = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(
        tok["do_lower_case"], true,
        "read from tokenizer.json's normalizer"
    );
    assert_eq!(tok["mask_token"], "[MASK]");
}

#[test]
fn half_precision_exports_store_half_weights_and_stay_within_tolerance() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tiny_student(&tmp.path().join("student"));
    for (dtype, name) in [(DType::F16, "float16"), (DType::BF16, "bfloat16")] {
        let out = tmp.path().join(name);
        let options = ExportOptions {
            dtype,
            ..Default::default()
        };
        let report = export_classifier(&source, &out, &options).unwrap();
        assert_eq!(report.dtype, name);
        assert!(report.check.rel_err > 0.0 && report.check.rel_err <= report.check.tolerance);
        let files = ModelFiles::resolve(out.to_str().unwrap()).unwrap();
        let weights = files.read_weights().unwrap();
        assert!(weights.values().all(|t| t.dtype() == dtype));
        assert_eq!(read_json(&out.join("config.json"))["torch_dtype"], name);
    }
}

#[test]
fn a_logit_mismatch_is_an_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tiny_student(&tmp.path().join("student"));
    let out = tmp.path().join("export");
    // f16 rounding changes the logits a little; with no tolerance that is a mismatch.
    let options = ExportOptions {
        dtype: DType::F16,
        tolerance: Some(0.0),
        ..Default::default()
    };
    let err = export_classifier(&source, &out, &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("logits differ") && err.contains("tolerance"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(
        siblings(tmp.path()),
        vec!["student"],
        "no staging folder left"
    );
}

#[test]
fn a_label_map_that_disagrees_with_the_head_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut source = tiny_student(&tmp.path().join("student"));
    source
        .config
        .set_labels(&["a".to_string(), "b".to_string(), "c".to_string()]);
    let err = export_classifier(
        &source,
        &tmp.path().join("export"),
        &ExportOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("classifier.weight"), "{err}");
}

#[test]
fn a_non_empty_destination_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tiny_student(&tmp.path().join("student"));
    let out = tmp.path().join("export");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = export_classifier(&source, &out, &ExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );

    let forced = ExportOptions {
        force: true,
        ..Default::default()
    };
    export_classifier(&source, &out, &forced).unwrap();
    assert!(
        !out.join("keep.txt").exists(),
        "the old folder was replaced"
    );
    assert!(out.join("model.safetensors").is_file());
    assert_eq!(siblings(tmp.path()), vec!["export", "student"]);

    // An empty folder is fine without --force.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    export_classifier(&source, &empty, &ExportOptions::default()).unwrap();
}

#[test]
fn regression_students_export_with_problem_type_regression() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("student");
    let mut config = candle_distill::testing::tiny_config(32, 1, 4, 64);
    config.set_labels(&["score".to_string()]);
    candle_distill::testing::write_random_classifier(&dir, &config, 3).unwrap();
    let source = ExportSource::from_checkpoint(dir.to_str().unwrap()).unwrap();
    let out = tmp.path().join("export");
    let report = export_classifier(&source, &out, &ExportOptions::default()).unwrap();
    assert_eq!(report.check.exported_logits[0].len(), 1);
    let config = read_json(&out.join("config.json"));
    assert_eq!(config["problem_type"], "regression");
    assert_eq!(config["id2label"]["0"], "score");
}

#[test]
fn cli_exports_checks_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("student");
    write_tiny_student(&src, SEED).unwrap();
    let out = tmp.path().join("export");
    let texts = common::repo_root().join("tests/fixtures/tiny_export_texts.txt");
    let logits = tmp.path().join("logits.json");
    let run = |force: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_candle-distill"));
        cmd.arg("export")
            .arg("--from")
            .arg(&src)
            .arg("--out")
            .arg(&out);
        cmd.arg("--check-texts")
            .arg(&texts)
            .arg("--logits-out")
            .arg(&logits);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let first = run(false);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        stdout.contains("left out (training only): fit_denses.0.bias"),
        "{stdout}"
    );
    assert!(stdout.contains("on 8 examples"), "{stdout}");
    let written = read_json(&logits);
    assert_eq!(written["examples"].as_array().unwrap().len(), 8);
    assert_eq!(written["examples"][5][1], "a cat is sitting on a mat .");

    let second = run(false);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(run(true).status.success());
}
