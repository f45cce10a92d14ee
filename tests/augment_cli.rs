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

/// Masked-LM augmentation without GloVe warns how many words it cannot replace; with
/// GloVe vectors from a hub dataset (a deflated .zip, read from a pre-seeded cache
/// offline) those words get neighbours.
#[test]
fn glove_from_a_hub_dataset_replaces_multi_piece_words() {
    use sha2::Digest;
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_random_masked_lm(&d.join("mlm"), &tiny_config(32, 1, 2, 64), 1).unwrap();
    // Words outside the tiny vocabulary split into letters: several WordPieces.
    std::fs::write(
        d.join("train.tsv"),
        "sentence\tlabel\nthe zebra was good\t1\na quokka and a wombat\t0\n",
    )
    .unwrap();
    let glove = "zebra 1 0 0\nokapi 0.9 0.1 0\nquokka 0 1 0\nwombat 0 0.9 0.1\n";
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("glove.test.3d.txt", options).unwrap();
    zip.write_all(glove.as_bytes()).unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    // The hub cache's layout: blobs by sha256, a snapshot per commit, refs/main.
    let repo = d.join("hf/hub/datasets--org--glove");
    let commit = "e".repeat(40);
    let blob = format!("{:x}", sha2::Sha256::digest(&bytes));
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(&commit)).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("blobs").join(&blob), &bytes).unwrap();
    std::fs::write(
        repo.join("snapshots").join(&commit).join("glove.zip"),
        &bytes,
    )
    .unwrap();
    std::fs::write(repo.join("refs/main"), &commit).unwrap();

    let run = |out: &str, glove: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_candle-distill"));
        c.args([
            "augment", "--task", "sst2", "--method", "mlm", "--n-aug", "2", "--p-t", "1",
            "--top-k", "1",
        ])
        .arg("--input")
        .arg(d.join("train.tsv"))
        .arg("--out")
        .arg(d.join(out))
        .arg("--mlm-model")
        .arg(d.join("mlm"))
        .env("HF_HOME", d.join("hf"))
        .env("HF_HUB_OFFLINE", "1");
        if let Some(g) = glove {
            c.args(["--glove", g]);
        }
        let o = c.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(o.status.success(), "{stdout}\n{stderr}");
        (stdout, stderr)
    };
    let (stdout, stderr) = run("plain", None);
    assert!(
        stderr.contains("no GloVe vectors given (augment.glove): 3 of 4 candidate words"),
        "{stderr}"
    );
    assert!(
        stdout.contains("GloVe 0, kept unchanged for lack of GloVe vectors 3"),
        "{stdout}"
    );
    let (stdout, stderr) = run("glove", Some("hf://datasets/org/glove/glove.zip"));
    assert!(!stderr.contains("no GloVe vectors"), "{stderr}");
    assert!(
        stdout.contains("GloVe 3, kept unchanged for lack of GloVe vectors 0"),
        "{stdout}"
    );
    let rows = read_augmented(
        &std::fs::read_dir(d.join("glove"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .unwrap(),
    )
    .unwrap();
    assert!(
        rows.iter().any(|r| r.text_a.contains("okapi")),
        "zebra's neighbour never used: {rows:?}\n{stdout}\n{stderr}"
    );
}

/// An input file with a header and no rows is an error that names the file once.
#[test]
fn an_empty_input_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty.tsv");
    std::fs::write(&input, "sentence\tlabel\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_candle-distill"))
        .args(["augment", "--task", "sst2", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches(input.to_str().unwrap()).count(),
        1,
        "the file is named once: {err}"
    );
}
