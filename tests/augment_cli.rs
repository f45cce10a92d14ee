//! `candle-distill augment` end to end on tiny random models: both methods write their
//! files, a second run reuses them.

use std::path::PathBuf;
use std::process::Command;

use candle_distill::augment::cache::read_augmented;
use candle_distill::augment::tiny::{write_random_marian, TinyMarian};
use candle_distill::augment::Method;
use candle_distill::testing::{tiny_config, write_random_masked_lm};

#[test]
fn augment_both_methods_then_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_random_masked_lm(&d.join("mlm"), &tiny_config(32, 1, 2, 64), 1).unwrap();
    let spm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm/glue-unigram.spm");
    for (name, seed) in [("fwd", 1), ("bwd", 2)] {
        write_random_marian(
            &d.join(name),
            &spm,
            &TinyMarian {
                seed,
                ..Default::default()
            },
        )
        .unwrap();
    }
    std::fs::write(
        d.join("train.tsv"),
        "sentence\tlabel\nthe movie was good\t1\na dull , awful film about a cat\t0\nhappy actors\t1\n",
    )
    .unwrap();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_candle-distill"))
            .args([
                "augment",
                "--task",
                "sst2",
                "--method",
                "both",
                "--max-len",
                "8",
            ])
            .arg("--input")
            .arg(d.join("train.tsv"))
            .arg("--out")
            .arg(d.join("out"))
            .arg("--mlm-model")
            .arg(d.join("mlm"))
            .arg("--mt-forward")
            .arg(d.join("fwd"))
            .arg("--mt-backward")
            .arg(d.join("bwd"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first = run();
    assert!(
        first.contains("wrote") && first.contains("candidate words"),
        "{first}"
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    for (path, method) in files.iter().zip([Method::Backtranslate, Method::Mlm]) {
        let rows = read_augmented(path).unwrap();
        assert_eq!(rows[0].text_a, "the movie was good");
        assert_eq!(rows[0].method, Method::Original);
        assert!(rows
            .iter()
            .all(|r| r.method == Method::Original || r.method == method));
        assert!(rows.iter().any(|r| r.method == method), "{path:?}");
        assert!(rows.iter().all(|r| r.source_row < 3));
    }
    let second = run();
    assert_eq!(second.matches("reused").count(), 2, "{second}");
}

/// Without `--input`, `augment --task` reads the task's training split (here a GLUE TSV
/// folder) and `--limit` keeps its first rows; pair tasks augment both columns.
#[test]
fn augment_reads_the_task_split_from_a_glue_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_random_masked_lm(&d.join("mlm"), &tiny_config(32, 1, 2, 64), 1).unwrap();
    std::fs::create_dir_all(d.join("glue/RTE")).unwrap();
    std::fs::write(
        d.join("glue/RTE/train.tsv"),
        "index\tsentence1\tsentence2\tlabel\n\
         0\tthe movie was good\tthe film was good\tentailment\n\
         1\ta dull film about a cat\tthe cat was happy\tnot_entailment\n\
         2\thappy actors\tsad actors\tnot_entailment\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_candle-distill"))
        .args(["augment", "--task", "rte", "--limit", "2", "--n-aug", "4"])
        .arg("--data")
        .arg(d.join("glue"))
        .arg("--out")
        .arg(d.join("out"))
        .arg("--mlm-model")
        .arg(d.join("mlm"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .expect("an augmented file");
    assert!(file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("rte.mlm."));
    let rows = read_augmented(&file).unwrap();
    let originals: Vec<(&str, Option<&str>)> = rows
        .iter()
        .filter(|r| r.method == Method::Original)
        .map(|r| (r.text_a.as_str(), r.text_b.as_deref()))
        .collect();
    assert_eq!(
        originals,
        [
            ("the movie was good", Some("the film was good")),
            ("a dull film about a cat", Some("the cat was happy")),
        ]
    );
    // Both columns get variants, each beside the other column's original text.
    assert!(rows.iter().any(|r| r.method == Method::Mlm
        && r.text_a != "the movie was good"
        && r.text_b.as_deref() == Some("the film was good")));
    assert!(rows.iter().any(|r| r.method == Method::Mlm
        && r.text_a == "the movie was good"
        && r.text_b.as_deref() != Some("the film was good")));
}
