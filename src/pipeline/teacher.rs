//! The teacher of a run: used as it is when it already classifies the task's labels,
//! else fine-tuned on the task first, in the run folder.

use candle_core::Device;

use super::finetune::{default_finetune_stage, finetune};
use super::task::TaskData;
use crate::data::labels::{reconcile_labels, LabelMatch};
use crate::device::FloatType;
use crate::distill::Scores;
use crate::model::ModelFiles;
use crate::recipe::{FinetuneWhen, Recipe, StageSpec};
use crate::run::RunDir;
use crate::train::Precision;
use crate::Result;

/// Whether the run fine-tunes the teacher (`config`) on the task first: always, never,
/// or (auto) when its head is not a classifier for the task's labels and a stage uses
/// that head. A teacher used
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
        // No stage takes the teacher's logits: its head, trained or not, is unused.
        FinetuneWhen::Auto if !recipe.uses_teacher_head() => false,
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

/// The teacher of a run: its files, its name for reports, and its dev scores when
/// they are already known.
pub(super) struct PreparedTeacher {
    pub files: ModelFiles,
    pub spec: String,
    /// The fine-tuning's best dev scores, when the teacher was fine-tuned in this run
    /// in f32 and is used in f32: the same weights on the same dev set, so evaluating
    /// it again (seconds on a CPU) would give the same numbers.
    pub dev: Option<Scores>,
}

/// Loads or fine-tunes the teacher, whose checkpoint `files` the recipe names.
pub(super) fn prepare_teacher(
    recipe: &Recipe,
    files: ModelFiles,
    run: &RunDir,
    data: &TaskData,
    devices: &[Device],
) -> Result<PreparedTeacher> {
    if !teacher_needs_finetune(recipe, &files.read_config()?, data)? {
        return Ok(PreparedTeacher {
            files,
            spec: recipe.teacher.model.clone(),
            dev: None,
        });
    }
    let spec = teacher_finetune_stage(recipe);
    tracing::info!(
        "teacher {}: fine-tuning on {} first",
        recipe.teacher.model,
        data.task
    );
    let finetuned = finetune(
        &recipe.teacher.model,
        &spec,
        recipe,
        data,
        &run.path(crate::run::TEACHER_FINETUNE_DIR),
        devices,
    )?;
    let all_f32 = recipe.teacher.dtype == FloatType::F32
        && spec.precision.unwrap_or(recipe.precision) == Precision::F32;
    let spec = finetuned.best.display().to_string();
    Ok(PreparedTeacher {
        files: ModelFiles::resolve(&spec)?,
        spec,
        dev: finetuned.dev.filter(|_| all_f32),
    })
}
