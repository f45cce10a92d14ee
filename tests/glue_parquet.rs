//! GLUE from the hub layout: parquet fixtures written by pyarrow
//! (tests/scripts/make_glue_parquet.py) are served from a pre-seeded hf-hub cache with
//! HF_HUB_OFFLINE=1, and every task and split loads with the rows the script wrote.

use crate::common;

use std::path::Path;

use candle_distill::data::parquet::hub_file_name;
use candle_distill::data::{
    load_dataset, DataSource, Dataset, Label, LoadOptions, Split, Task, GLUE_HUB_REPO,
};

const REVISION: &str = "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c";

fn fixtures() -> std::path::PathBuf {
    common::repo_root().join("tests/fixtures/glue-parquet")
}

/// A hub cache at `home/hub` holding the fixtures as `nyu-mll/glue` at `main`.
fn seed_cache(home: &Path) {
    let repo = home.join("hub/datasets--nyu-mll--glue");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), REVISION).unwrap();
    let snapshot = repo.join("snapshots").join(REVISION);
    for config in std::fs::read_dir(fixtures()).unwrap() {
        let config = config.unwrap().path();
        if !config.is_dir() {
            continue;
        }
        let target = snapshot.join(config.file_name().unwrap());
        std::fs::create_dir_all(&target).unwrap();
        for file in std::fs::read_dir(&config).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, target.join(file.file_name().unwrap())).unwrap();
        }
    }
}

/// Runs `body` with HF_HOME at a cache seeded with the fixtures and HF_HUB_OFFLINE=1,
/// in a child process of this test binary that runs only `test`: the variables are
/// process-wide, and setting them here would race with the tests on other threads.
fn with_offline_cache(test: &str, body: impl FnOnce()) {
    if common::in_child() {
        return body();
    }
    let home = tempfile::tempdir().unwrap();
    seed_cache(home.path());
    common::run_in_child(
        &format!("glue_parquet::{test}"),
        &[
            ("HF_HOME", home.path().as_os_str()),
            ("HF_HUB_OFFLINE", "1".as_ref()),
        ],
    );
}

fn all_splits(task: Task) -> Vec<Split> {
    let mut splits = vec![Split::Train];
    splits.extend(task.dev_splits());
    splits.extend(task.test_splits());
    splits
}

fn load_hub(task: Task, split: Split) -> Dataset {
    load_dataset(
        &DataSource::glue_hub(),
        Some(task),
        split,
        &LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{task} {split}: {e}"))
}

#[test]
fn every_task_and_split_loads_from_the_cached_hub_layout() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap())
            .unwrap();
    with_offline_cache(
        "every_task_and_split_loads_from_the_cached_hub_layout",
        || {
            for task in Task::ALL {
                for split in all_splits(task) {
                    let key = hub_file_name(task, split)
                        .trim_end_matches("-00000-of-00001.parquet")
                        .to_string();
                    let expected = &manifest[&key];
                    let ds = load_hub(task, split);
                    assert_eq!(ds.len() as u64, expected["rows"].as_u64().unwrap(), "{key}");
                    assert!(ds.origin.starts_with(GLUE_HUB_REPO), "{}", ds.origin);
                    for (i, e) in ds.examples.iter().enumerate() {
                        let texts = &expected["texts"][i];
                        assert_eq!(e.text_a, texts[0].as_str().unwrap(), "{key} row {i}");
                        assert_eq!(e.text_b.as_deref(), texts[1].as_str(), "{key} row {i}");
                        assert_eq!(e.idx, 100 + i, "{key}: idx column");
                        let label = &expected["labels"][i];
                        let want = if split.is_test() {
                            Label::Unlabeled
                        } else if task.is_regression() {
                            Label::Score(label.as_f64().unwrap() as f32)
                        } else {
                            Label::Class(label.as_u64().unwrap() as usize)
                        };
                        assert_eq!(e.label, want, "{key} row {i}");
                    }
                }
            }
        },
    );
}

#[test]
fn hub_integers_and_tsv_strings_mean_the_same_classes() {
    let Some(glue) = common::glue_dir() else {
        return;
    };
    with_offline_cache("hub_integers_and_tsv_strings_mean_the_same_classes", || {
        for task in [
            Task::Cola,
            Task::Sst2,
            Task::Mrpc,
            Task::Stsb,
            Task::Rte,
            Task::Wnli,
        ] {
            for split in [Split::Train, Split::Dev] {
                let hub = load_hub(task, split);
                let tsv = load_dataset(
                    &DataSource::GlueDir(glue.clone()),
                    Some(task),
                    split,
                    &LoadOptions {
                        skip_malformed: false,
                        limit: Some(hub.len()),
                    },
                )
                .unwrap();
                assert_eq!(hub.label_names, tsv.label_names);
                for (h, t) in hub.examples.iter().zip(&tsv.examples) {
                    assert_eq!(
                        (&h.text_a, &h.text_b, h.label),
                        (&t.text_a, &t.text_b, t.label),
                        "{task} {split}"
                    );
                }
            }
        }
    });
}

#[test]
fn offline_without_the_file_names_the_cache_and_the_file() {
    with_offline_cache(
        "offline_without_the_file_names_the_cache_and_the_file",
        || {
            let source = DataSource::Hub {
                repo: "someone/other-glue".into(),
                revision: "main".into(),
            };
            let err = load_dataset(
                &source,
                Some(Task::Sst2),
                Split::Dev,
                &LoadOptions::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("sst2/validation-00000-of-00001.parquet"),
                "{err}"
            );
            assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
        },
    );
}
