//! The task's data of a run (train, dev, MNLI's mismatched dev, augmented rows),
//! loaded once, and its scoring with the task's official metrics.

use candle_core::Device;

use crate::data::{
    load_dataset, DataSource, Dataset, EncodedDataset, LoadOptions, Predictions, Split, Task,
};
use crate::distill::{Evaluator, Scores};
use crate::eval::evaluate_encoded;
use crate::metrics::{task_metrics, Metrics};
use crate::model::BertForSequenceClassification;
use crate::recipe::Recipe;
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// Task data of a run, loaded once.
pub struct TaskData {
    pub task: Task,
    pub train: Dataset,
    /// Model selection split (MNLI: matched).
    pub dev: Dataset,
    /// MNLI's mismatched dev set, scored separately, never merged.
    pub dev_mismatched: Option<Dataset>,
    pub max_seq_len: usize,
    /// The run's augmented rows (all methods, each text pair once), once
    /// [`augment_task`] made them; read once for every stage that trains on them.
    pub augmented: Option<Dataset>,
    /// The files of the run's augmentation, for stages that stream them.
    pub augmented_files: Vec<std::path::PathBuf>,
}

impl TaskData {
    /// Dev sentences an export's logits are checked on against the trained model.
    pub fn export_check_examples(&self) -> Vec<(String, Option<String>)> {
        self.dev
            .examples
            .iter()
            .take(32)
            .map(|e| (e.text_a.clone(), e.text_b.clone()))
            .collect()
    }

    /// The student's output labels: the task's classes, or one score.
    pub fn labels(&self) -> Vec<String> {
        if self.task.is_regression() {
            vec!["score".to_string()]
        } else {
            self.dev.label_names.clone()
        }
    }
}

pub fn load_task_data(recipe: &Recipe) -> Result<TaskData> {
    let task = recipe.task.name;
    let source = DataSource::parse(&recipe.task.data)?;
    let load = |split, limit| {
        let options = LoadOptions {
            skip_malformed: recipe.task.skip_malformed,
            limit,
        };
        load_dataset(&source, Some(task), split, &options)
    };
    let train = load(Split::Train, recipe.task.train_limit)?;
    let dev = load(Split::Dev, recipe.task.dev_limit)?;
    let dev_mismatched = if task.has_split(Split::DevMismatched) {
        Some(load(Split::DevMismatched, recipe.task.dev_limit)?)
    } else {
        None
    };
    Ok(TaskData {
        task,
        train,
        dev,
        dev_mismatched,
        augmented: None,
        augmented_files: Vec::new(),
        max_seq_len: recipe.task.resolved_max_seq_len(),
    })
}

/// Scores a model on a dataset with the task's official metrics (tokenised once).
pub struct GlueEvaluator {
    pub dataset: Dataset,
    pub encoded: EncodedDataset,
    pub batch_size: usize,
    pub device: Device,
}

impl GlueEvaluator {
    pub fn new(
        dataset: &Dataset,
        tokenizer: &TextTokenizer,
        max_len: usize,
        batch_size: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(GlueEvaluator {
            dataset: dataset.clone(),
            encoded: EncodedDataset::new(dataset, tokenizer, max_len)?,
            batch_size,
            device: device.clone(),
        })
    }

    pub fn metrics(&self, model: &BertForSequenceClassification) -> Result<Metrics> {
        evaluate_encoded(
            model,
            &self.dataset,
            &self.encoded,
            self.batch_size,
            &self.device,
        )?
        .metrics
        .ok_or_else(|| Error::msg(format!("{}: no labels to score", self.dataset.origin)))
    }

    /// The metrics that `scores`, an earlier [`Evaluator::evaluate`] on this data, hold.
    pub fn metrics_of(&self, scores: Scores) -> Metrics {
        Metrics {
            values: scores.metrics,
            score: scores.main,
            score_name: self.dataset.metric_set().score_name().into(),
            n: self.dataset.len(),
        }
    }
}

impl Evaluator for GlueEvaluator {
    fn evaluate(&self, model: &BertForSequenceClassification) -> Result<Scores> {
        let m = self.metrics(model)?;
        Ok(Scores {
            main: m.score,
            metrics: m.values,
        })
    }
}

/// Score of always predicting the most frequent dev label (0 for correlations).
pub fn chance_score(task: Task, dev: &Dataset) -> Result<f64> {
    if task.is_regression() {
        return Ok(0.0);
    }
    let counts = dev.label_counts();
    let majority = counts
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| **c)
        .map(|(i, _)| i)
        .unwrap_or(0);
    let constant = Predictions::Classes(vec![majority; dev.len()]);
    Ok(task_metrics(task, &constant, &dev.gold()?)?.score)
}
