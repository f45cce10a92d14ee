//! Real weights (slow, minutes): fine-tune all-MiniLM-L6-v2 on the first 4,000 SST-2
//! training sentences for one epoch and score the 872 dev sentences.
//! Reference, PyTorch + transformers on the same 2-core machine and settings: 82.0%.
//! Run alone with `cargo test --release --test real_finetune -- --nocapture`.

mod common;

use std::process::Command;

#[test]
fn minilm_finetuned_on_4000_sst2_sentences_reaches_80_percent() {
    let (Some(model), Some(glue)) = (common::minilm_dir(), common::glue_dir()) else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_candle-distill"))
        .args([
            "finetune",
            "--task",
            "sst2",
            "--train-limit",
            "4000",
            "--epochs",
            "1",
            "--lr",
            "1e-4",
        ])
        .args([
            "--batch-size",
            "32",
            "--max-seq-len",
            "64",
            "--warmup-ratio",
            "0.1",
            "--weight-decay",
            "0.01",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--data")
        .arg(&glue)
        .arg("--out")
        .arg(out.path().join("sst2-minilm"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "finetune failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let acc = report["dev"]["accuracy"].as_f64().unwrap();
    eprintln!(
        "SST-2 dev accuracy {:.4} after one epoch on 4,000 sentences ({:.0} s; PyTorch reference 0.820)",
        acc,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(report["dev"]["n"], 872);
    assert!(acc >= 0.80, "dev accuracy {acc} < 0.80");
    // The result is a model folder that loads and evaluates as is.
    let folder = out.path().join("sst2-minilm");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
    ] {
        assert!(folder.join(f).is_file(), "{f} missing");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["id2label"]["1"], "positive");
}
