//! Real weights (slow, minutes): fine-tune all-MiniLM-L6-v2 on the first 4,000 SST-2
//! training sentences for one epoch and score the 872 dev sentences.
//! Reference, PyTorch + transformers on the same 2-core machine and settings: 82.0%.
//! Run alone with `cargo test --test tests real_finetune:: -- --nocapture`; the mixed-precision
//! comparison (bf16 and f16 against f32, about 12 minutes on 2 cores) with
//! `cargo test --test tests real_finetune:: -- --ignored --nocapture`.

use crate::common;

use std::path::Path;
use std::process::Command;

/// Fine-tunes with the test's settings in `precision` into `out`; the dev accuracy and
/// the seconds it took.
fn finetune(model: &Path, glue: &Path, out: &Path, precision: &str) -> (f64, f64) {
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
            "--precision",
            precision,
        ])
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(glue)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "finetune ({precision}) failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["dev"]["n"], 872);
    (
        report["dev"]["accuracy"].as_f64().unwrap(),
        started.elapsed().as_secs_f64(),
    )
}

#[test]
fn minilm_finetuned_on_4000_sst2_sentences_reaches_80_percent() {
    let (Some(model), Some(glue)) = (common::minilm_dir(), common::glue_dir()) else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let (acc, seconds) = finetune(&model, &glue, &out.path().join("sst2-minilm"), "f32");
    eprintln!(
        "SST-2 dev accuracy {acc:.4} after one epoch on 4,000 sentences ({seconds:.0} s; PyTorch reference 0.820)"
    );
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

/// Mixed precision on real weights: bf16 and f16 compute (f32 master weights) reach the
/// f32 run's accuracy within 1.5 points.
#[test]
#[ignore = "about 12 minutes on 2 cores: run with --ignored"]
fn mixed_precision_finetuning_matches_f32_accuracy() {
    let (Some(model), Some(glue)) = (common::minilm_dir(), common::glue_dir()) else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let runs: Vec<(&str, f64, f64)> = ["f32", "bf16", "f16"]
        .into_iter()
        .map(|p| {
            let (acc, secs) = finetune(&model, &glue, &out.path().join(p), p);
            (p, acc, secs)
        })
        .collect();
    let f32_acc = runs[0].1;
    eprintln!("precision  SST-2 dev accuracy  vs f32     seconds (CPU)");
    for (p, acc, secs) in &runs {
        eprintln!(
            "{p:<9}  {:>17.2}%  {:>+6.2} pt  {secs:>8.0}",
            acc * 100.0,
            (acc - f32_acc) * 100.0
        );
    }
    for (p, acc, _) in &runs[1..] {
        assert!(
            (acc - f32_acc).abs() <= 0.015,
            "{p}: {acc:.4} vs f32 {f32_acc:.4}"
        );
    }
}
