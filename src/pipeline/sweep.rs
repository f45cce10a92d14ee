//! Sweeps (`run --sweep KEY=V1,V2,...`, a recipe's `[sweep]`): the paper picks the
//! prediction stage's learning rate from {1e-5, 2e-5, 3e-5} on dev for small tasks.
//!
//! The stages before the first swept one run once, in the run folder, after the
//! teacher's fine-tuning and the augmentation; each variant then starts from copies of
//! that checkpoint in `<run>/sweep/<variant>/`, sharing the run's teacher-logit cache.
//! A variant resumes like a run, and one that finished is not run again
//! (`variant.json`). The best variant on dev is the run's result.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::stages::{run_stages, LogitCache};
use super::{GlueEvaluator, TaskData};
use crate::distill::replicas::Replica;
use crate::distill::StageSummary;
use crate::model::BuildOptions;
use crate::recipe::Recipe;
use crate::run::{Opened, RunDir};
use crate::{Error, Result};

/// One variant's outcome, as `variant.json` in its folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    /// Its `key=value` settings (also its folder's name).
    pub label: String,
    /// Dev score of its best checkpoint, and which metric that is.
    pub score: f64,
    pub score_name: String,
    pub dev: BTreeMap<String, f64>,
    /// Its own training time (not counting the shared stages).
    pub seconds: f64,
}

/// The sweep part of a run's report.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// Time until the shared stages were done (teacher fine-tuning, augmentation,
    /// the stages before the first swept one): spent once, not per variant. In this
    /// process: a resumed run counts only what it redid.
    pub shared_seconds: f64,
    pub variants: Vec<VariantResult>,
    /// Index of the best variant in `variants`.
    pub best: usize,
}

/// What the run continues with after a sweep.
pub(super) struct SweepOutcome {
    pub report: SweepReport,
    /// The best variant's best checkpoint: the run's student.
    pub best_dir: PathBuf,
    /// The stages the best variant trained in this process.
    pub stages: Vec<StageSummary>,
}

/// Runs every variant of `recipe`'s sweep from the run's checkpoint of its shared
/// stages (which must be done).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_variants(
    run: &RunDir,
    recipe: &Recipe,
    replicas: &[Replica],
    cache: LogitCache,
    data: &TaskData,
    evaluator: &GlueEvaluator,
    device: &Device,
    shared_seconds: f64,
) -> Result<SweepOutcome> {
    let variants = recipe.sweep_variants("the recipe")?;
    // Sweeping the first stage shares no checkpoint: every variant starts from the
    // students' initial weights, kept here (deep copies) and put back before each.
    let initial = if recipe.first_swept_stage() == Some(0) {
        Some(snapshot(replicas)?)
    } else {
        None
    };
    let start = VariantStart {
        shared: run.root().join("checkpoints/last"),
        initial,
    };
    let mut results = Vec::new();
    let mut trained = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let dir = run.path("sweep").join(&v.label);
        let record = dir.join("variant.json");
        if record.is_file() {
            tracing::info!("sweep variant {}: finished before", v.label);
            results.push(crate::io::read_json::<VariantResult>(&record)?);
            trained.push(Vec::new());
            continue;
        }
        tracing::info!("sweep variant {} of {}: {}", i + 1, variants.len(), v.label);
        let started = Instant::now();
        let vrun = match RunDir::open(&dir, &v.recipe.resolved_toml()?, false)? {
            Opened::Fresh(r) | Opened::Resume(r) => r,
        };
        start.prepare(&vrun, replicas)?;
        let stages = run_stages(
            &vrun,
            &v.recipe.stages,
            true,
            &v.recipe,
            replicas,
            Some(cache),
            data,
            Some(evaluator),
        )?;
        vrun.write_plot()?;
        let result = score_variant(&v.label, &vrun, evaluator, device, started)?;
        crate::io::write_json(&record, &result)?;
        results.push(result);
        trained.push(stages);
    }
    let best = best_variant(&results)
        .ok_or_else(|| Error::msg("the sweep has no variants to choose from"))?;
    tracing::info!(
        "sweep: best variant {} (dev {} {:.4})",
        results[best].label,
        results[best].score_name,
        results[best].score
    );
    Ok(SweepOutcome {
        best_dir: run
            .path("sweep")
            .join(&results[best].label)
            .join("checkpoints/best"),
        stages: std::mem::take(&mut trained[best]),
        report: SweepReport {
            shared_seconds,
            variants: results,
            best,
        },
    })
}

/// Where every variant starts: from the shared stages' checkpoint, or (a sweep of the
/// first stage) from the students' initial weights.
struct VariantStart {
    shared: PathBuf,
    initial: Option<Vec<Vec<(String, candle_core::Tensor)>>>,
}

impl VariantStart {
    /// Puts the start in place for the variant run `vrun`, unless it is resuming.
    fn prepare(&self, vrun: &RunDir, replicas: &[Replica]) -> Result<()> {
        let last = vrun.root().join("checkpoints/last");
        match &self.initial {
            Some(weights) => restore(replicas, weights),
            None if !last.join("progress.json").is_file() => copy_checkpoint(&self.shared, &last),
            None => Ok(()),
        }
    }
}

/// The dev score of a finished variant's best student.
fn score_variant(
    label: &str,
    vrun: &RunDir,
    evaluator: &GlueEvaluator,
    device: &Device,
    started: Instant,
) -> Result<VariantResult> {
    let best = crate::model::load_classifier(
        &vrun.root().join("checkpoints/best").display().to_string(),
        &BuildOptions::inference(device),
    )?;
    let dev = evaluator.metrics(&best.built.model)?;
    Ok(VariantResult {
        label: label.to_string(),
        score: dev.score,
        score_name: dev.score_name.clone(),
        dev: dev.values.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Each replica's student variables, copied.
fn snapshot(replicas: &[Replica]) -> Result<Vec<Vec<(String, candle_core::Tensor)>>> {
    replicas
        .iter()
        .map(|r| {
            r.student
                .named_tensors()
                .into_iter()
                .map(|(k, v)| Ok((k, v.copy()?)))
                .collect()
        })
        .collect()
}

fn restore(replicas: &[Replica], weights: &[Vec<(String, candle_core::Tensor)>]) -> Result<()> {
    for (r, w) in replicas.iter().zip(weights) {
        let vars: HashMap<String, candle_core::Var> = r.student.named_vars().into_iter().collect();
        for (name, t) in w {
            if let Some(var) = vars.get(name) {
                var.set(t)?;
            }
        }
    }
    Ok(())
}

/// The highest dev score; the first of equals.
fn best_variant(results: &[VariantResult]) -> Option<usize> {
    (0..results.len()).reduce(|b, i| {
        if results[i].score > results[b].score {
            i
        } else {
            b
        }
    })
}

/// Copies the shared checkpoint's files into a variant's folder: into a temporary
/// folder first, renamed into place, so a killed copy leaves no half checkpoint.
fn copy_checkpoint(from: &Path, to: &Path) -> Result<()> {
    let partial = to.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let path = entry.map_err(|e| Error::io(from, e))?.path();
        if path.is_file() {
            let target = partial.join(path.file_name().unwrap_or_default());
            std::fs::copy(&path, &target).map_err(|e| Error::io(&path, e))?;
        }
    }
    std::fs::rename(&partial, to).map_err(|e| Error::io(to, e))
}

impl SweepReport {
    /// The variants as a Markdown table, the best marked.
    pub fn to_markdown(&self) -> String {
        let name = self
            .variants
            .first()
            .map_or("score", |v| v.score_name.as_str());
        let mut md = format!(
            "\n## Sweep\n\nShared stages (teacher fine-tuning, augmentation, stages before the \
             first swept one): {:.0} s, once for all variants.\n\n| variant | dev {name} | seconds | |\n|---|---|---|---|\n",
            self.shared_seconds
        );
        for (i, v) in self.variants.iter().enumerate() {
            md += &format!(
                "| {} | {:.4} | {:.0} | {} |\n",
                v.label,
                v.score,
                v.seconds,
                if i == self.best { "best" } else { "" }
            );
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(label: &str, score: f64) -> VariantResult {
        VariantResult {
            label: label.into(),
            score,
            score_name: "accuracy".into(),
            dev: BTreeMap::new(),
            seconds: 1.0,
        }
    }

    #[test]
    fn the_best_variant_is_the_highest_score_first_of_equals() {
        let r = [result("a", 0.5), result("b", 0.7), result("c", 0.7)];
        assert_eq!(best_variant(&r), Some(1));
        assert_eq!(best_variant(&[]), None);
        let report = SweepReport {
            shared_seconds: 12.0,
            variants: r.to_vec(),
            best: 1,
        };
        let md = report.to_markdown();
        assert!(md.contains("| b | 0.7000 | 1 | best |"), "{md}");
        assert!(md.contains("| a | 0.5000 | 1 |  |"), "{md}");
    }
}
