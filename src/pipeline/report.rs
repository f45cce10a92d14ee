//! What a run reports at its end (`report.json`, `report.md`): both models' dev
//! scores, sizes and speed, and every stage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::sweep::SweepReport;
use super::task::{GlueEvaluator, TaskData};
use crate::distill::{StageSummary, Student};
use crate::metrics::Metrics;
use crate::model::{BertForSequenceClassification, BuildOptions};
use crate::recipe::Recipe;
use crate::tokenizer::TextTokenizer;
use crate::Result;

/// What a run reports at its end.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub recipe: String,
    pub task: String,
    pub teacher: ModelSummary,
    pub student: ModelSummary,
    pub stages: Vec<StageSummary>,
    /// Whether a stage took the teacher's logits; when none did (general distillation)
    /// neither head was trained and their dev scores say nothing.
    pub teacher_head_used: bool,
    /// The variants of a sweep, when the recipe has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepReport>,
    pub seconds: f64,
    pub student_dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub model: String,
    pub parameters: usize,
    pub layers: usize,
    pub hidden_size: usize,
    pub dev: Metrics,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_mismatched: Option<Metrics>,
    /// Milliseconds per batch of 32 at the task's max_seq_len, on the run's device.
    pub latency_ms_batch32: f64,
}

pub(super) fn tensor_params(tensors: &HashMap<String, Tensor>) -> usize {
    tensors.values().map(|t| t.elem_count()).sum()
}

/// Scores and times models for the report: MNLI's mismatched dev metrics (its
/// evaluator built once for both models) and latency on the first 32 dev examples at
/// the task's max_seq_len (tokenised once, by the dev evaluator).
pub(super) struct Scorer<'a> {
    dev: &'a GlueEvaluator,
    mismatched: Option<GlueEvaluator>,
    device: &'a Device,
}

impl<'a> Scorer<'a> {
    pub(super) fn new(
        recipe: &Recipe,
        data: &TaskData,
        tokenizer: &TextTokenizer,
        dev: &'a GlueEvaluator,
        device: &'a Device,
    ) -> Result<Self> {
        let mismatched = data
            .dev_mismatched
            .as_ref()
            .map(|d| {
                GlueEvaluator::new(
                    d,
                    tokenizer,
                    data.max_seq_len,
                    recipe.eval.batch_size,
                    device,
                )
            })
            .transpose()?;
        Ok(Scorer {
            dev,
            mismatched,
            device,
        })
    }

    /// The summary of `model`, named `name`, of `parameters` parameters (the trained
    /// ones, without training-only projections), whose dev metrics are `dev`.
    pub(super) fn summary(
        &self,
        name: String,
        parameters: usize,
        model: &BertForSequenceClassification,
        dev: Metrics,
    ) -> Result<ModelSummary> {
        let config = model.config();
        Ok(ModelSummary {
            model: name,
            parameters,
            layers: config.num_hidden_layers,
            hidden_size: config.hidden_size,
            dev,
            dev_mismatched: self
                .mismatched
                .as_ref()
                .map(|e| e.metrics(model))
                .transpose()?,
            latency_ms_batch32: self.latency_ms(model)?,
        })
    }

    /// The summary of the best checkpoint of `student`, saved in `best_dir`, loaded as
    /// a user will load it.
    pub(super) fn best_student(&self, student: &Student, best_dir: &Path) -> Result<ModelSummary> {
        let best = crate::model::load_classifier(
            &best_dir.display().to_string(),
            &BuildOptions::inference(self.device),
        )?;
        self.summary(
            student.description.clone(),
            student.model_parameters(),
            &best.built.model,
            self.dev.metrics(&best.built.model)?,
        )
    }

    fn latency_ms(&self, model: &BertForSequenceClassification) -> Result<f64> {
        let sample = &self.dev.encoded;
        let first: Vec<usize> = (0..sample.len().min(32)).collect();
        let input = sample.batch(&first, self.device)?.input;
        model.logits(&input)?; // warm-up
        let start = Instant::now();
        let reps = 3;
        for _ in 0..reps {
            model.logits(&input)?.to_device(&Device::Cpu)?;
        }
        Ok(start.elapsed().as_secs_f64() * 1000.0 / reps as f64)
    }
}

impl RunReport {
    pub fn to_markdown(&self) -> String {
        let t = &self.teacher;
        let s = &self.student;
        let mut md = format!("# {} on {}\n\n", self.recipe, self.task);
        md += "| | teacher | student |\n|---|---|---|\n";
        md += &format!("| model | {} | {} |\n", t.model, s.model);
        md += &format!(
            "| layers / width | {} / {} | {} / {} |\n",
            t.layers, t.hidden_size, s.layers, s.hidden_size
        );
        md += &format!(
            "| parameters | {:.1}M | {:.1}M |\n",
            t.parameters as f64 / 1e6,
            s.parameters as f64 / 1e6
        );
        md += &format!(
            "| dev {} | {:.4} | {:.4} |\n",
            t.dev.score_name, t.dev.score, s.dev.score
        );
        // The other metrics of the task (the score row already shows its own).
        for (k, v) in t.dev.values.iter().filter(|(k, _)| **k != t.dev.score_name) {
            md += &format!(
                "| dev {k} | {:.4} | {:.4} |\n",
                v,
                s.dev.get(k).unwrap_or(f64::NAN)
            );
        }
        if let (Some(tm), Some(sm)) = (&t.dev_mismatched, &s.dev_mismatched) {
            md += &format!(
                "| dev mismatched {} | {:.4} | {:.4} |\n",
                tm.score_name, tm.score, sm.score
            );
        }
        md += &format!(
            "| latency, batch 32 (ms) | {:.1} | {:.1} |\n",
            t.latency_ms_batch32, s.latency_ms_batch32
        );
        let (fewer, faster) = (
            t.parameters as f64 / s.parameters as f64,
            t.latency_ms_batch32 / s.latency_ms_batch32,
        );
        md += &if self.teacher_head_used {
            format!(
                "\nThe student keeps {:.1}% of the teacher's dev score with {fewer:.1}x fewer parameters and runs {faster:.1}x faster.\n",
                100.0 * s.dev.score / t.dev.score,
            )
        } else {
            format!(
                "\nThe student has {fewer:.1}x fewer parameters and runs {faster:.1}x faster. No stage used \
                 the teacher's logits: both heads are untrained and their dev scores are near chance; \
                 a task recipe (student.from = \"checkpoint\") trains the student's.\n"
            )
        };
        md += "\n## Stages\n\n| stage | steps | seconds | reading data | final loss | best dev |\n|---|---|---|---|---|---|\n";
        for st in &self.stages {
            md += &format!(
                "| {} | {} | {:.0} | {} | {:.4} | {} |\n",
                st.name,
                st.steps,
                st.seconds,
                reading_share(st),
                st.final_loss,
                st.best
                    .as_ref()
                    .map(|b| format!("{:.4}", b.main))
                    .unwrap_or_else(|| "-".into())
            );
        }
        if let Some(sweep) = &self.sweep {
            md += &sweep.to_markdown();
        }
        md
    }
}

/// The share of a stage's seconds its steps waited for streamed rows ("-" for rows
/// held in memory).
fn reading_share(stage: &StageSummary) -> String {
    if stage.data_seconds > 0.0 && stage.seconds > 0.0 {
        format!("{:.1}%", 100.0 * stage.data_seconds / stage.seconds)
    } else {
        "-".into()
    }
}
