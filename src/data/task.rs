//! The nine GLUE tasks: names, text columns, label names, splits and metrics.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// A GLUE task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Cola,
    Sst2,
    Mrpc,
    Qqp,
    Stsb,
    Mnli,
    Qnli,
    Rte,
    Wnli,
}

/// Which part of a task's data. For MNLI, `Dev` and `Test` are the matched sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    Dev,
    DevMismatched,
    Test,
    TestMismatched,
}

/// The official metrics a task is scored with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricSet {
    /// Accuracy (SST-2, MNLI, QNLI, RTE, WNLI).
    Accuracy,
    /// F1 of the positive class and accuracy (MRPC, QQP).
    F1Accuracy,
    /// Matthews correlation (CoLA), accuracy reported alongside.
    Matthews,
    /// Pearson and Spearman correlation (STS-B).
    Correlation,
}

impl MetricSet {
    /// The name of the main score (`Metrics::score_name`).
    pub fn score_name(self) -> &'static str {
        match self {
            MetricSet::Accuracy => "accuracy",
            MetricSet::F1Accuracy => "f1_accuracy_mean",
            MetricSet::Matthews => "matthews_correlation",
            MetricSet::Correlation => "pearson_spearman_mean",
        }
    }
}

impl Task {
    pub const ALL: [Task; 9] = [
        Task::Cola,
        Task::Sst2,
        Task::Mrpc,
        Task::Qqp,
        Task::Stsb,
        Task::Mnli,
        Task::Qnli,
        Task::Rte,
        Task::Wnli,
    ];

    /// Lower-case name, as the hub config is called (`sst2`, `stsb`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Task::Cola => "cola",
            Task::Sst2 => "sst2",
            Task::Mrpc => "mrpc",
            Task::Qqp => "qqp",
            Task::Stsb => "stsb",
            Task::Mnli => "mnli",
            Task::Qnli => "qnli",
            Task::Rte => "rte",
            Task::Wnli => "wnli",
        }
    }

    /// The folder name in the GLUE download (`SST-2`, `STS-B`, ...).
    pub fn glue_dir_name(self) -> &'static str {
        match self {
            Task::Cola => "CoLA",
            Task::Sst2 => "SST-2",
            Task::Mrpc => "MRPC",
            Task::Qqp => "QQP",
            Task::Stsb => "STS-B",
            Task::Mnli => "MNLI",
            Task::Qnli => "QNLI",
            Task::Rte => "RTE",
            Task::Wnli => "WNLI",
        }
    }

    /// Text columns in the hub parquet files: one for single sentences, two for pairs.
    pub fn hub_text_columns(self) -> &'static [&'static str] {
        match self {
            Task::Cola | Task::Sst2 => &["sentence"],
            Task::Mrpc | Task::Stsb | Task::Rte | Task::Wnli => &["sentence1", "sentence2"],
            Task::Qqp => &["question1", "question2"],
            Task::Mnli => &["premise", "hypothesis"],
            Task::Qnli => &["question", "sentence"],
        }
    }

    pub fn is_pair(self) -> bool {
        self.hub_text_columns().len() == 2
    }

    /// Class names in the hub's (and the usual checkpoints') index order; empty for STS-B.
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Task::Cola => &["unacceptable", "acceptable"],
            Task::Sst2 => &["negative", "positive"],
            Task::Mrpc => &["not_equivalent", "equivalent"],
            Task::Qqp => &["not_duplicate", "duplicate"],
            Task::Stsb => &[],
            Task::Mnli => &["entailment", "neutral", "contradiction"],
            Task::Qnli | Task::Rte => &["entailment", "not_entailment"],
            Task::Wnli => &["not_entailment", "entailment"],
        }
    }

    pub fn is_regression(self) -> bool {
        self == Task::Stsb
    }

    /// Outputs of the classification head: 1 for regression, else the number of classes.
    pub fn num_outputs(self) -> usize {
        if self.is_regression() {
            1
        } else {
            self.label_names().len()
        }
    }

    /// Sequence length used when the user gives none: 64 for single sentences, 128 for pairs.
    pub fn default_max_seq_len(self) -> usize {
        if self.is_pair() {
            128
        } else {
            64
        }
    }

    /// Splits to evaluate for model selection; MNLI's two dev sets are kept apart.
    pub fn dev_splits(self) -> &'static [Split] {
        match self {
            Task::Mnli => &[Split::Dev, Split::DevMismatched],
            _ => &[Split::Dev],
        }
    }

    pub fn test_splits(self) -> &'static [Split] {
        match self {
            Task::Mnli => &[Split::Test, Split::TestMismatched],
            _ => &[Split::Test],
        }
    }

    pub fn has_split(self, split: Split) -> bool {
        match split {
            Split::DevMismatched | Split::TestMismatched => self == Task::Mnli,
            _ => true,
        }
    }

    pub fn metric_set(self) -> MetricSet {
        match self {
            Task::Cola => MetricSet::Matthews,
            Task::Mrpc | Task::Qqp => MetricSet::F1Accuracy,
            Task::Stsb => MetricSet::Correlation,
            _ => MetricSet::Accuracy,
        }
    }

    /// File name of the GLUE leaderboard submission for `split` (`SST-2.tsv`, `MNLI-mm.tsv`).
    pub fn submission_file(self, split: Split) -> &'static str {
        match (self, split) {
            (Task::Mnli, Split::TestMismatched) => "MNLI-mm.tsv",
            (Task::Mnli, _) => "MNLI-m.tsv",
            (Task::Cola, _) => "CoLA.tsv",
            (Task::Sst2, _) => "SST-2.tsv",
            (Task::Mrpc, _) => "MRPC.tsv",
            (Task::Qqp, _) => "QQP.tsv",
            (Task::Stsb, _) => "STS-B.tsv",
            (Task::Qnli, _) => "QNLI.tsv",
            (Task::Rte, _) => "RTE.tsv",
            (Task::Wnli, _) => "WNLI.tsv",
        }
    }

    /// Whether the leaderboard wants class names (MNLI, QNLI, RTE) rather than indices.
    pub fn submission_uses_names(self) -> bool {
        matches!(self, Task::Mnli | Task::Qnli | Task::Rte)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Lower-case with `-`, `_` and spaces removed: `SST-2`, `sst_2` and `sst2` all match.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

impl FromStr for Task {
    type Err = Error;

    fn from_str(s: &str) -> Result<Task> {
        let key = squash(s);
        Task::ALL
            .into_iter()
            .find(|t| t.name() == key)
            .ok_or_else(|| {
                Error::invalid(
                    "--task",
                    s,
                    "unknown task; expected one of cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli",
                )
            })
    }
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::DevMismatched => "dev-mismatched",
            Split::Test => "test",
            Split::TestMismatched => "test-mismatched",
        }
    }

    pub fn is_test(self) -> bool {
        matches!(self, Split::Test | Split::TestMismatched)
    }

    /// The split's name in the hub files of `task` (`validation`, `validation_mismatched`, ...).
    pub fn hub_name(self, task: Task) -> &'static str {
        match (self, task) {
            (Split::Train, _) => "train",
            (Split::Dev, Task::Mnli) => "validation_matched",
            (Split::DevMismatched, _) => "validation_mismatched",
            (Split::Dev, _) => "validation",
            (Split::Test, Task::Mnli) => "test_matched",
            (Split::TestMismatched, _) => "test_mismatched",
            (Split::Test, _) => "test",
        }
    }

    /// The file name in the GLUE download folder of `task`.
    pub fn glue_file_name(self, task: Task) -> &'static str {
        match (self, task) {
            (Split::Train, _) => "train.tsv",
            (Split::Dev, Task::Mnli) => "dev_matched.tsv",
            (Split::DevMismatched, _) => "dev_mismatched.tsv",
            (Split::Dev, _) => "dev.tsv",
            (Split::Test, Task::Mnli) => "test_matched.tsv",
            (Split::TestMismatched, _) => "test_mismatched.tsv",
            (Split::Test, _) => "test.tsv",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = Error;

    fn from_str(s: &str) -> Result<Split> {
        match squash(s).as_str() {
            "train" => Ok(Split::Train),
            "dev" | "validation" | "devmatched" | "validationmatched" => Ok(Split::Dev),
            "devmismatched" | "validationmismatched" => Ok(Split::DevMismatched),
            "test" | "testmatched" => Ok(Split::Test),
            "testmismatched" => Ok(Split::TestMismatched),
            _ => Err(Error::invalid(
                "--split",
                s,
                "expected train, dev, dev-mismatched, test or test-mismatched",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_task_names_in_common_spellings() {
        for (s, t) in [
            ("sst2", Task::Sst2),
            ("SST-2", Task::Sst2),
            ("sst-2", Task::Sst2),
            ("STS-B", Task::Stsb),
            ("CoLA", Task::Cola),
            ("mnli", Task::Mnli),
            ("WNLI", Task::Wnli),
        ] {
            assert_eq!(s.parse::<Task>().unwrap(), t, "{s}");
        }
        let err = "imdb".parse::<Task>().unwrap_err().to_string();
        assert!(err.contains("imdb") && err.contains("qnli"), "{err}");
        for t in Task::ALL {
            assert_eq!(t.name().parse::<Task>().unwrap(), t);
            assert_eq!(t.glue_dir_name().parse::<Task>().unwrap(), t);
        }
    }

    #[test]
    fn splits_and_files_follow_glue_and_hub_names() {
        assert_eq!("validation".parse::<Split>().unwrap(), Split::Dev);
        assert_eq!(
            "dev_mismatched".parse::<Split>().unwrap(),
            Split::DevMismatched
        );
        assert_eq!(Split::Dev.hub_name(Task::Mnli), "validation_matched");
        assert_eq!(Split::Dev.hub_name(Task::Rte), "validation");
        assert_eq!(Split::Dev.glue_file_name(Task::Mnli), "dev_matched.tsv");
        assert_eq!(Task::Mnli.dev_splits(), &[Split::Dev, Split::DevMismatched]);
        assert!(!Task::Sst2.has_split(Split::DevMismatched));
        assert_eq!(
            Task::Mnli.submission_file(Split::TestMismatched),
            "MNLI-mm.tsv"
        );
        assert_eq!(Task::Stsb.num_outputs(), 1);
        assert_eq!(Task::Mnli.num_outputs(), 3);
        assert_eq!(Task::Sst2.default_max_seq_len(), 64);
        assert_eq!(Task::Rte.default_max_seq_len(), 128);
    }
}
