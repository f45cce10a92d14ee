//! `bench` on two tiny models with tiny iteration counts: the structure of the table and
//! of the JSON (timings are measured, never asserted).

use candle_distill::bench::{bench, BenchOptions};
use candle_distill::testing::{tiny_config, write_random_classifier, write_random_masked_lm};

#[test]
fn bench_reports_every_model_and_shape_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tmp.path().join("teacher");
    let student = tmp.path().join("student");
    write_random_classifier(&teacher, &tiny_config(32, 3, 4, 64), 1).unwrap();
    // No task head: bench gives it a seeded one, as for a pre-trained encoder.
    write_random_masked_lm(&student, &tiny_config(16, 1, 2, 32), 2).unwrap();
    let specs = vec![
        teacher.to_str().unwrap().to_string(),
        student.to_str().unwrap().to_string(),
    ];
    let opts = BenchOptions {
        seq_lens: vec![8, 16],
        batches: vec![1, 3],
        iters: 3,
        warmup: 1,
        ..Default::default()
    };
    let report = bench(&specs, &opts).unwrap();

    assert_eq!(report.models.len(), 2);
    assert_eq!(report.models[0].layers, 3);
    assert_eq!(report.models[1].hidden_size, 16);
    // Parameters of the classifier as run: encoder + pooler + a 2-way head.
    let student_config = tiny_config(16, 1, 2, 32);
    assert_eq!(
        report.models[1].parameters,
        student_config.encoder_parameters() + 2 * 17
    );
    assert!(report.models.iter().all(|m| m.size_on_disk_bytes > 0));
    assert_eq!(report.results.len(), 2 * 2 * 2);
    for r in &report.results {
        assert_eq!(r.iters, 3);
        assert!(r.median_ms > 0.0 && r.p90_ms >= r.median_ms, "{r:?}");
        let expected = r.batch as f64 / (r.median_ms / 1e3);
        assert!((r.sequences_per_s - expected).abs() < 1e-6 * expected);
    }

    let json = serde_json::to_value(&report).unwrap();
    for key in ["device", "threads", "models", "results"] {
        assert!(json.get(key).is_some(), "JSON lacks `{key}`");
    }
    assert_eq!(json["results"][7]["model"], 1);
    assert_eq!(json["results"][7]["seq_len"], 16);
    assert_eq!(json["results"][7]["batch"], 3);

    let table = report.to_table();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("device cpu"), "{table}");
    assert!(table.contains(&format!("[1]  {}", specs[0])), "{table}");
    assert!(table.contains(&format!("[2]  {}", specs[1])), "{table}");
    let header = lines
        .iter()
        .find(|l| l.trim_start().starts_with("seq"))
        .expect("shape header");
    assert!(header.contains("[1] median ms") && header.contains("[2] median ms"));
    assert!(header.contains("speed-up"));
    let rows: Vec<&&str> = lines
        .iter()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w == "8" || w == "16")
        })
        .collect();
    assert_eq!(rows.len(), 4, "one row per shape:\n{table}");
    assert!(rows
        .iter()
        .all(|r| r.matches('|').count() == 2 && r.ends_with('x')));
}

#[test]
fn bench_refuses_sequences_longer_than_the_model_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_random_classifier(&dir, &tiny_config(16, 1, 2, 32), 1).unwrap();
    let opts = BenchOptions {
        seq_lens: vec![256],
        batches: vec![1],
        iters: 1,
        warmup: 0,
        ..Default::default()
    };
    let err = bench(&[dir.to_str().unwrap().to_string()], &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_position_embeddings") && err.contains("256"),
        "{err}"
    );
}
