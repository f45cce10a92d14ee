//! Every GLUE TSV in ../shared/data/glue loads, with the row and label counts that
//! SOURCES.md gives for it.

use crate::common;

use candle_distill::data::{load_dataset, DataSource, Label, LoadOptions, Split, Task};

fn load(task: Task, split: Split) -> Option<candle_distill::data::Dataset> {
    let dir = common::glue_dir()?;
    Some(
        load_dataset(
            &DataSource::GlueDir(dir),
            Some(task),
            split,
            &LoadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{task} {split}: {e}")),
    )
}

/// (task, split, rows, per-label counts in the task's label order) from SOURCES.md.
const COUNTS: &[(Task, Split, usize, &[usize])] = &[
    (Task::Sst2, Split::Train, 67_349, &[29_780, 37_569]),
    (Task::Sst2, Split::Dev, 872, &[428, 444]),
    (Task::Cola, Split::Train, 8_551, &[2_528, 6_023]),
    (Task::Cola, Split::Dev, 1_043, &[322, 721]),
    (Task::Mrpc, Split::Train, 3_668, &[1_194, 2_474]),
    (Task::Mrpc, Split::Dev, 408, &[129, 279]),
    (Task::Rte, Split::Train, 2_490, &[1_249, 1_241]),
    (Task::Rte, Split::Dev, 277, &[146, 131]),
    (Task::Qnli, Split::Dev, 5_463, &[2_702, 2_761]),
    (Task::Wnli, Split::Train, 635, &[323, 312]),
    (Task::Wnli, Split::Dev, 71, &[40, 31]),
];

#[test]
fn every_local_classification_file_has_the_documented_counts() {
    for &(task, split, rows, labels) in COUNTS {
        let Some(ds) = load(task, split) else { return };
        assert_eq!(ds.len(), rows, "{task} {split} rows");
        assert_eq!(ds.label_counts(), labels, "{task} {split} labels");
        assert_eq!(ds.skipped, 0);
        assert_eq!(ds.is_pair(), task.is_pair(), "{task}");
        for e in &ds.examples {
            assert!(!e.text_a.is_empty() && e.text_a.trim() == e.text_a);
        }
    }
}

#[test]
fn stsb_scores_are_floats_from_0_to_5() {
    for (split, rows) in [(Split::Train, 5_749), (Split::Dev, 1_500)] {
        let Some(ds) = load(Task::Stsb, split) else {
            return;
        };
        assert_eq!(ds.len(), rows);
        assert!(ds.is_regression() && ds.label_names.is_empty());
        let scores: Vec<f32> = ds
            .examples
            .iter()
            .map(|e| match e.label {
                Label::Score(s) => s,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(scores.iter().all(|s| (0.0..=5.0).contains(s)));
        assert!(scores.iter().any(|s| s.fract() != 0.0));
    }
    let ds = load(Task::Stsb, Split::Dev).unwrap();
    assert_eq!(ds.examples[0].label, Label::Score(5.0));
    assert_eq!(ds.examples[0].text_a, "A man with a hard hat is dancing.");
}

#[test]
fn quirks_bom_quotes_trailing_spaces_and_ids_are_handled() {
    let Some(mrpc) = load(Task::Mrpc, Split::Dev) else {
        return;
    };
    // The BOM-prefixed header still finds `Quality`; a leading quote is plain text.
    let first = &mrpc.examples[0];
    assert_eq!(first.label, Label::Class(1));
    assert!(first
        .text_b
        .as_deref()
        .unwrap()
        .starts_with("\"The foodservice"));
    let sst = load(Task::Sst2, Split::Dev).unwrap();
    assert_eq!(
        sst.examples[0].text_a,
        "it 's a charming and often affecting journey ."
    );
    // CoLA dev has no final newline: the last row is still there.
    let cola = load(Task::Cola, Split::Dev).unwrap();
    assert_eq!(cola.examples.last().unwrap().idx, 1_042);
    // QNLI keeps its index column and the U+FEFF inside row 60's text.
    let qnli = load(Task::Qnli, Split::Dev).unwrap();
    let row = &qnli.examples[60];
    assert_eq!(row.idx, 60);
    assert_eq!(
        row.text_b.as_deref().unwrap().matches('\u{feff}').count(),
        3
    );
    assert_eq!(qnli.examples.last().unwrap().idx, 5_462);
}

#[test]
fn limit_keeps_the_first_examples() {
    let Some(dir) = common::glue_dir() else {
        return;
    };
    let options = LoadOptions {
        limit: Some(4_000),
        ..Default::default()
    };
    let ds = load_dataset(
        &DataSource::GlueDir(dir),
        Some(Task::Sst2),
        Split::Train,
        &options,
    )
    .unwrap();
    assert_eq!(ds.len(), 4_000);
    assert_eq!(
        ds.examples[0].text_a,
        "hide new secretions from the parental units"
    );
}
