//! The teacher of a run: used as it is when it already classifies the task's labels,
//! else fine-tuned on the task first, in the run folder.

use candle_core::Device;

use super::finetune::{default_finetune_stage, finetune};
use super::task::TaskData;
use crate::data::labels::{reconcile_labels, LabelMatch};
use crate::model::ModelFiles;
use crate::recipe::{FinetuneWhen, Recipe, StageSpec};
use crate::run::RunDir;
use crate::Result;

/// Whether the run fine-tunes the teacher (`config`) on the task first: always, never,
/// or (auto) when its head is not a classifier for the task's labels. A teacher used
/// as it is must have the task's label map: a permuted or foreign one is an error.
pub fn teacher_needs_finetune(
    recipe: &Recipe,
    config: &crate::model::BertConfig,
    data: &TaskData,
) -> Result<bool> {
    let regression = data.task.is_regression();
    let labels = || {
        reconcile_labels(
            &data.dev.label_names,
            regression,
            config,
            &recipe.teacher.model,
        )
    };
    let needs = match recipe.teacher.finetune {
        FinetuneWhen::Always => true,
        FinetuneWhen::Never => false,
        FinetuneWhen::Auto => {
            !(config.id2label.is_some()
                && config.num_labels() == data.dev.num_outputs()
                && labels()? == LabelMatch::Same)
        }
    };
    if !needs {
        // Refuses permuted or foreign label maps before any work.
        labels()?;
    }
    Ok(needs)
}

/// The stage that fine-tunes the teacher: the recipe's settings, else the defaults.
pub fn teacher_finetune_stage(recipe: &Recipe) -> StageSpec {
    recipe
        .teacher
        .finetune_settings
        .clone()
        .unwrap_or_else(default_finetune_stage)
}

/// Loads or fine-tunes the teacher, then checks it is worth distilling from.
pub(super) fn prepare_teacher(
    recipe: &Recipe,
    run: &RunDir,
    data: &TaskData,
    devices: &[Device],
) -> Result<(ModelFiles, String)> {
    let files = ModelFiles::resolve(&recipe.teacher.model)?;
    if !teacher_needs_finetune(recipe, &files.read_config()?, data)? {
        return Ok((files, recipe.teacher.model.clone()));
    }
    let spec = teacher_finetune_stage(recipe);
    tracing::info!(
        "teacher {}: fine-tuning on {} first",
        recipe.teacher.model,
        data.task
    );
    let dir = finetune(
        &recipe.teacher.model,
        &spec,
        recipe,
        data,
        &run.path(crate::run::TEACHER_FINETUNE_DIR),
        devices,
    )?;
    let spec = dir.display().to_string();
    Ok((ModelFiles::resolve(&spec)?, spec))
}
