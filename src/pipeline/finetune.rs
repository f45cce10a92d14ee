//! Fine-tuning a pre-trained BERT on a task: the teacher inside a run, and the
//! `finetune` command's model folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

use crate::distill::replicas::local_group;
use crate::distill::{
    build_student, Projection, Scores, StageKind, StudentInit, StudentSpec, TeacherParts,
    TrainSettings,
};
use crate::export::DatasetInfo;
use crate::export::{export_classifier, ExportOptions, ExportSource};
use crate::metrics::Metrics;
use crate::model::{BuildOptions, ModelFiles};
use crate::recipe::{Recipe, StageSpec};
use crate::run::{Opened, RunDir};
use crate::{Error, Result};

use super::nodes::replicas;
use super::stages::run_stages;
use super::{load_task_data, GlueEvaluator, TaskData};

/// The teacher's fine-tuning when a recipe gives no settings, and the `finetune`
/// command's: a `finetune` stage at the defaults. (Its warm-up, the kind's default, is
/// written out so that fine-tuning folders of earlier versions still resume.)
pub fn default_finetune_stage() -> StageSpec {
    StageSpec {
        name: Some("finetune".into()),
        warmup_ratio: Some(TrainSettings::for_stage(StageKind::Finetune).warmup_ratio),
        ..StageSpec::new(StageKind::Finetune)
    }
}

/// Fine-tunes `model` on the task in its own run folder, data-parallel over `devices`
/// when there are several; returns the best dev checkpoint.
pub fn finetune(
    model: &str,
    spec: &StageSpec,
    recipe: &Recipe,
    data: &TaskData,
    dir: &Path,
    devices: &[Device],
) -> Result<Finetuned> {
    let identity = serde_json::json!({"model": model, "stage": spec, "task": &recipe.task, "seed": recipe.seed});
    let text =
        serde_json::to_string_pretty(&identity).map_err(|e| Error::msg(e.to_string()))? + "\n";
    let run = match RunDir::open(dir, &text, false)? {
        Opened::Fresh(r) | Opened::Resume(r) => r,
    };
    let best = run.root().join("checkpoints/best");
    let saved = crate::distill::checkpoint::saved_progress(&run)?;
    if let Some(progress) = saved.filter(|p| p.finished && best.is_dir()) {
        return Ok(Finetuned {
            best,
            dev: progress.best,
        });
    }
    let files = ModelFiles::resolve(model)?;
    let config = files.read_config()?;
    let tokenizer = files.read_tokenizer()?;
    let tensors = files.read_weights()?;
    let parts = TeacherParts {
        config: &config,
        tensors: &tensors,
        tokenizer: &tokenizer,
    };
    let init = StudentSpec {
        init: StudentInit::Checkpoint {
            model: model.to_string(),
        },
        projection: Projection::Never,
    };
    let labels = data.labels();
    let trainees = devices
        .iter()
        .map(|d| build_student(&init, &parts, &labels, recipe.seed, d))
        .collect::<Result<Vec<_>>>()?;
    let evaluator = GlueEvaluator::new(
        &data.dev,
        &tokenizer,
        data.max_seq_len,
        recipe.eval.batch_size,
        &devices[0],
    )?;
    let group = local_group(devices)?;
    run_stages(
        &run,
        std::slice::from_ref(spec),
        true,
        recipe,
        &replicas(&trainees, None, devices, &group),
        None,
        data,
        Some(&evaluator),
    )?;
    run.write_plot()?;
    let dev = crate::distill::checkpoint::saved_progress(&run)?.and_then(|p| p.best);
    Ok(Finetuned { best, dev })
}

/// A finished fine-tuning: its best checkpoint, a Hugging Face folder, and that
/// checkpoint's dev scores.
pub struct Finetuned {
    pub best: PathBuf,
    pub dev: Option<Scores>,
}

/// Result of `candle-distill finetune`.
#[derive(Debug, Serialize)]
pub struct FinetuneReport {
    pub model: String,
    pub task: String,
    pub out: PathBuf,
    pub dev: Metrics,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_mismatched: Option<Metrics>,
    pub seconds: f64,
}

/// Fine-tunes `recipe.teacher.model` on the task; `out` becomes a Hugging Face model
/// folder (the best dev checkpoint) with the training state in `out/training/`, so
/// the same command resumes after a kill.
pub fn finetune_to_folder(recipe: &Recipe, out: &Path, force: bool) -> Result<FinetuneReport> {
    let started = Instant::now();
    let training = out.join("training");
    if force && out.exists() {
        // Never remove a folder another process is fine-tuning into.
        if training.is_dir() {
            drop(crate::io::DirLock::acquire(&training)?);
        }
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    if out.is_dir()
        && !training.is_dir()
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some()
    {
        return Err(Error::msg(format!(
            "{} exists and is not a fine-tuning folder; choose another --out or pass --force",
            out.display()
        )));
    }
    let devices = recipe.device.open()?;
    let device = devices[0].clone();
    let data = load_task_data(recipe)?;
    let spec = recipe
        .stages
        .first()
        .cloned()
        .unwrap_or_else(default_finetune_stage);
    let best = finetune(
        &recipe.teacher.model,
        &spec,
        recipe,
        &data,
        &training,
        &devices,
    )?
    .best;
    publish_checkpoint(&best, &recipe.teacher.model, &data, out)?;
    let model = crate::model::load_classifier(
        &out.display().to_string(),
        &BuildOptions::inference(&device),
    )?;
    let evaluator = GlueEvaluator::new(
        &data.dev,
        &model.tokenizer,
        data.max_seq_len,
        recipe.eval.batch_size,
        &device,
    )?;
    let dev = evaluator.metrics(&model.built.model)?;
    let dev_mismatched = match &data.dev_mismatched {
        Some(d) => Some(
            GlueEvaluator::new(
                d,
                &model.tokenizer,
                data.max_seq_len,
                recipe.eval.batch_size,
                &device,
            )?
            .metrics(&model.built.model)?,
        ),
        None => None,
    };
    let report = FinetuneReport {
        model: recipe.teacher.model.clone(),
        task: data.task.to_string(),
        out: out.to_path_buf(),
        dev,
        dev_mismatched,
        seconds: started.elapsed().as_secs_f64(),
    };
    crate::io::write_json(&training.join("report.json"), &report)?;
    Ok(report)
}

/// Exports a best checkpoint (checked) and moves its files into the model folder `out`,
/// each by an atomic rename, beside the `training/` state.
fn publish_checkpoint(best: &Path, source_model: &str, data: &TaskData, out: &Path) -> Result<()> {
    let mut source = ExportSource::from_checkpoint(&best.display().to_string())?;
    source.card.model_name = out.file_name().map(|n| n.to_string_lossy().into_owned());
    source.card.teacher = None;
    source.card.dataset = Some(DatasetInfo {
        id: "nyu-mll/glue".into(),
        config: Some(data.task.name().to_string()),
        split: Some("validation".into()),
        name: Some(format!(
            "GLUE {} (fine-tuned from {source_model})",
            data.task
        )),
    });
    let staging = out.join("training").join("export");
    let options = ExportOptions {
        force: true,
        check_examples: data.export_check_examples(),
        ..Default::default()
    };
    let report = export_classifier(&source, &staging, &options)?;
    for file in &report.files {
        let from = staging.join(file);
        let to = out.join(file);
        std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
    }
    Ok(())
}
