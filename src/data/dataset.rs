//! Datasets in memory: examples, labels, and where they came from.

use std::path::PathBuf;

use super::task::{MetricSet, Split, Task};
use crate::{Error, Result};

/// The gold label of one example.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Label {
    /// Index into [`Dataset::label_names`].
    Class(usize),
    /// A regression target (STS-B: 0 to 5).
    Score(f32),
    /// Test sets and distillation transfer text.
    Unlabeled,
}

/// One sentence or sentence pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The example's id in its source (the `index`/`idx`/`id` column, else its row number
    /// from 0); leaderboard submissions are keyed by it.
    pub idx: usize,
    pub text_a: String,
    pub text_b: Option<String>,
    pub label: Label,
}

impl Example {
    /// Its one or two texts, in order.
    pub fn texts(&self) -> Vec<String> {
        std::iter::once(self.text_a.clone())
            .chain(self.text_b.clone())
            .collect()
    }
}

/// Predictions or gold labels of a whole dataset, in example order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Predictions {
    Classes(Vec<usize>),
    Scores(Vec<f32>),
}

impl Predictions {
    pub fn len(&self) -> usize {
        match self {
            Predictions::Classes(v) => v.len(),
            Predictions::Scores(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// The GLUE task, or `None` for user data loaded without one.
    pub task: Option<Task>,
    pub split: Split,
    /// Class names in label-index order; empty for regression.
    pub label_names: Vec<String>,
    pub regression: bool,
    pub examples: Vec<Example>,
    /// The file or hub file the examples were read from, for messages and manifests.
    pub origin: String,
    /// Malformed rows left out because the user asked to skip them.
    pub skipped: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    pub fn is_regression(&self) -> bool {
        self.regression
    }

    /// Outputs a model needs for this data: 1 for regression, else the number of classes.
    pub fn num_outputs(&self) -> usize {
        if self.regression {
            1
        } else {
            self.label_names.len()
        }
    }

    pub fn is_pair(&self) -> bool {
        self.examples.first().is_some_and(|e| e.text_b.is_some())
    }

    /// Examples per class, in label order (all zero for unlabeled or regression data).
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.label_names.len()];
        for e in &self.examples {
            if let Label::Class(c) = e.label {
                counts[c] += 1;
            }
        }
        counts
    }

    /// Whether every example has a gold label.
    pub fn is_labeled(&self) -> bool {
        !self.examples.is_empty()
            && self
                .examples
                .iter()
                .all(|e| !matches!(e.label, Label::Unlabeled))
    }

    /// The metrics this data is scored with: the task's, else accuracy or correlation.
    pub fn metric_set(&self) -> MetricSet {
        match self.task {
            Some(task) => task.metric_set(),
            None if self.regression => MetricSet::Correlation,
            None => MetricSet::Accuracy,
        }
    }

    /// Gold labels of every example; an error when any is missing.
    pub fn gold(&self) -> Result<Predictions> {
        let missing = || {
            Error::msg(format!(
                "{}: the {} split has unlabeled examples; it can be predicted but not scored",
                self.origin, self.split
            ))
        };
        if self.regression {
            self.examples
                .iter()
                .map(|e| match e.label {
                    Label::Score(s) => Ok(s),
                    _ => Err(missing()),
                })
                .collect::<Result<_>>()
                .map(Predictions::Scores)
        } else {
            self.examples
                .iter()
                .map(|e| match e.label {
                    Label::Class(c) => Ok(c),
                    _ => Err(missing()),
                })
                .collect::<Result<_>>()
                .map(Predictions::Classes)
        }
    }

    /// Keeps the first `n` examples.
    pub fn truncate(&mut self, n: usize) {
        self.examples.truncate(n);
    }
}

/// Where examples come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// A folder in the GLUE download layout (`SST-2/train.tsv`, `MNLI/dev_matched.tsv`, ...).
    GlueDir(PathBuf),
    /// Parquet files of a hub dataset in the `nyu-mll/glue` layout, through the hf-hub cache.
    Hub { repo: String, revision: String },
    /// A user's CSV, TSV or JSON-lines file.
    UserFile(UserFile),
}

pub const GLUE_HUB_REPO: &str = "nyu-mll/glue";

impl DataSource {
    /// `nyu-mll/glue` at `main`.
    pub fn glue_hub() -> Self {
        DataSource::Hub {
            repo: GLUE_HUB_REPO.into(),
            revision: "main".into(),
        }
    }

    /// The task data a user names, with the same meaning in recipes (`task.data`) and
    /// in every command's `--data`: `hub` (nyu-mll/glue), a folder in the GLUE TSV
    /// layout, or another hub dataset in the same parquet layout (`org/name[@revision]`).
    pub fn parse(spec: &str) -> Result<Self> {
        if spec == "hub" {
            return Ok(DataSource::glue_hub());
        }
        Ok(
            match crate::hub::Location::parse(spec, crate::hub::RepoKind::Dataset)? {
                crate::hub::Location::Local(dir) => DataSource::GlueDir(dir),
                crate::hub::Location::Hub { repo, revision, .. } => {
                    DataSource::Hub { repo, revision }
                }
            },
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserFormat {
    Csv,
    Tsv,
    JsonLines,
}

/// A user's labelled (or unlabelled) file with named columns.
#[derive(Debug, Clone, PartialEq)]
pub struct UserFile {
    pub path: PathBuf,
    /// `None`: from the extension (`.csv`, `.tsv`, `.jsonl`/`.json`).
    pub format: Option<UserFormat>,
    /// One column for single sentences, two for pairs.
    pub text_columns: Vec<String>,
    /// `None`: unlabeled data.
    pub label_column: Option<String>,
    /// Class names in index order. `None`: the task's, or else the sorted distinct values
    /// (numerically sorted when all are integers). Ignored for regression.
    pub labels: Option<Vec<String>>,
    /// Labels are real-valued scores (implied by a regression task).
    pub regression: bool,
}

/// How loading treats bad rows and how much it reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Leave out malformed rows (and count them) instead of stopping at the first one.
    pub skip_malformed: bool,
    /// Keep only the first `n` examples.
    pub limit: Option<usize>,
}

/// Loads one split of a task (or a user file, where `task` is optional).
pub fn load_dataset(
    source: &DataSource,
    task: Option<Task>,
    split: Split,
    options: &LoadOptions,
) -> Result<Dataset> {
    let need_task =
        || task.ok_or_else(|| Error::msg("GLUE data needs a task (--task cola, sst2, ... wnli)"));
    let check_split = |task: Task| {
        if task.has_split(split) {
            Ok(())
        } else {
            Err(Error::invalid(
                "--split",
                split,
                format!("{task} has no such split; only MNLI has mismatched sets"),
            ))
        }
    };
    let dataset = match source {
        DataSource::GlueDir(dir) => {
            let task = need_task()?;
            check_split(task)?;
            super::glue_tsv::load(dir, task, split, options)?
        }
        DataSource::Hub { repo, revision } => {
            let task = need_task()?;
            check_split(task)?;
            super::parquet::load_hub(repo, revision, task, split, options)?
        }
        DataSource::UserFile(file) => super::user::load(file, task, split, options)?,
    };
    if dataset.skipped > 0 {
        tracing::warn!(
            "{}: skipped {} malformed rows",
            dataset.origin,
            dataset.skipped
        );
    }
    require_rows(&dataset)?;
    Ok(dataset)
}

/// An empty split, transfer set or input is an error naming its file: training or
/// evaluating on nothing would otherwise "succeed" with no metrics.
pub(crate) fn require_rows(dataset: &Dataset) -> Result<()> {
    if !dataset.examples.is_empty() {
        return Ok(());
    }
    let skipped = match dataset.skipped {
        0 => String::new(),
        n => format!(" ({n} malformed rows were left out)"),
    };
    Err(Error::invalid(
        &dataset.origin,
        "rows",
        format!("holds no examples{skipped}; expected at least one data row"),
    ))
}

/// Counts malformed rows, or turns the first one into an error naming `file:line`.
pub(crate) struct RowErrors {
    skip: bool,
    pub skipped: usize,
}

impl RowErrors {
    pub fn new(options: &LoadOptions) -> Self {
        RowErrors {
            skip: options.skip_malformed,
            skipped: 0,
        }
    }

    /// Records a bad row at `where_` (`file:line`); an error unless skipping.
    pub fn bad(&mut self, where_: &str, message: impl std::fmt::Display) -> Result<()> {
        if !self.skip {
            return Err(Error::invalid(
                where_,
                "malformed row",
                format!("{message} (pass --skip-malformed to leave such rows out)"),
            ));
        }
        if self.skipped < 5 {
            tracing::warn!("{where_}: skipping malformed row: {message}");
        }
        self.skipped += 1;
        Ok(())
    }
}

/// A text field, trimmed; `None` when empty.
pub(crate) fn clean_text(field: &str) -> Option<String> {
    let text = field.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Parses a class label given as a name (case-insensitive) or as an index.
pub(crate) fn parse_class(value: &str, names: &[String]) -> std::result::Result<usize, String> {
    let value = value.trim();
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(value)) {
        return Ok(i);
    }
    match value.parse::<usize>() {
        Ok(i) if i < names.len() => Ok(i),
        _ => Err(format!(
            "label `{value}` is none of [{}] and not an index below {}",
            names.join(", "),
            names.len()
        )),
    }
}

/// Parses a regression score; it must be a finite number.
pub(crate) fn parse_score(value: &str) -> std::result::Result<f32, String> {
    match value.trim().parse::<f32>() {
        Ok(s) if s.is_finite() => Ok(s),
        _ => Err(format!("score `{}` is not a finite number", value.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_specs_mean_the_same_everywhere() {
        assert_eq!(DataSource::parse("hub").unwrap(), DataSource::glue_hub());
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().display().to_string();
        assert_eq!(
            DataSource::parse(&folder).unwrap(),
            DataSource::GlueDir(dir.path().to_path_buf())
        );
        assert_eq!(
            DataSource::parse("someone/glue-copy@v2").unwrap(),
            DataSource::Hub {
                repo: "someone/glue-copy".into(),
                revision: "v2".into()
            }
        );
        let file = dir.path().join("train.tsv");
        std::fs::write(&file, "sentence\tlabel\n").unwrap();
        let err = DataSource::parse(&file.display().to_string())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train.tsv") && err.contains("`hub`, a folder"),
            "{err}"
        );
        let err = DataSource::parse("../no/such/glue")
            .unwrap_err()
            .to_string();
        assert!(err.contains("../no/such/glue"), "{err}");
    }
}
