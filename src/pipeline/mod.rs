//! A whole run from a recipe, by concern: `task` (the task's data, loaded once, and
//! its scoring), `teacher` (used as it is, or fine-tuned first by `finetune`, and
//! checked before any distillation), `stages` (the training stages and their data,
//! with resume), `sweep` (variants of the later stages), `nodes` (several machines,
//! and the per-device replicas of data-parallel runs), `report` and `export` (the best
//! student). This file strings them together.

mod export;
mod finetune;
mod nodes;
mod report;
mod stages;
pub mod sweep;
mod task;
mod teacher;

pub use finetune::{default_finetune_stage, finetune, finetune_to_folder, FinetuneReport};
pub use nodes::run_recipe_on_node;
pub use report::{ModelSummary, RunReport};
pub use stages::{augment_task, run_stages, stage_dataset, LogitCache};
pub use sweep::SweepReport;
pub use task::{chance_score, load_task_data, GlueEvaluator, TaskData};
pub use teacher::{teacher_finetune_stage, teacher_needs_finetune};

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;

use crate::distill::cache::files_identity;
use crate::distill::replicas::Replica;
use crate::distill::student::check_student_vocabulary;
use crate::distill::{StageSummary, TeacherParts};
use crate::metrics::Metrics;
use crate::model::ModelFiles;
use crate::recipe::Recipe;
use crate::run::{Opened, RunDir};
use crate::train::cluster::{NodeSpec, Rendezvous};
use crate::{Error, Result};

use export::export_student;
use nodes::{lead_group, local_students, local_teachers, replicas};
use report::{tensor_params, Scorer};
use teacher::prepare_teacher;

/// Runs a recipe end to end (on every device of `recipe.device` at once when it lists
/// several).
pub fn run_recipe(recipe: &Recipe, recipe_path: Option<&Path>, force: bool) -> Result<RunReport> {
    recipe.check_streamed_replicas(recipe.device.specs().len())?;
    let devices = recipe.device.open()?;
    lead_run(recipe, recipe_path, force, &devices, None)
}

/// The run on this process's `devices` (parsed once: each parse opens the devices
/// anew), alone or as node 0 of `cluster`: the teacher ready and checked, augmentation,
/// students, stages (and a sweep's variants), then the report and the export of the
/// best student.
pub(super) fn lead_run(
    recipe: &Recipe,
    recipe_path: Option<&Path>,
    force: bool,
    devices: &[Device],
    cluster: Option<(&NodeSpec, Rendezvous)>,
) -> Result<RunReport> {
    let started = Instant::now();
    let device = &devices[0];
    // Before the run folder, the teacher's fine-tuning or any other work.
    let teacher_model = ModelFiles::resolve(&recipe.teacher.model)?;
    check_student_vocabulary(&recipe.student.init, &teacher_model)?;
    let run = open_run(recipe, recipe_path, force)?;
    let mut data = load_task_data(recipe)?;
    let prepared = prepare_teacher(recipe, teacher_model, &run, &data, devices)?;
    let (teacher_files, teacher_spec) = (prepared.files, prepared.spec);
    let config = teacher_files.read_config()?;
    let tokenizer = teacher_files.read_tokenizer()?;
    let tensors = teacher_files.read_weights()?;
    let teachers = local_teachers(recipe, &teacher_spec, &config, &tensors, devices)?;
    let evaluator = GlueEvaluator::new(
        &data.dev,
        &tokenizer,
        data.max_seq_len,
        recipe.eval.batch_size,
        device,
    )?;
    let teacher_dev = match prepared.dev {
        Some(scores) => evaluator.metrics_of(scores),
        None => evaluator.metrics(&teachers[0])?,
    };
    check_teacher(recipe, &teacher_dev, &data)?;
    // After the pre-flight: augmentation can take hours.
    augment_task(recipe, &run, &mut data, device)?;
    let parts = TeacherParts {
        config: &config,
        tensors: &tensors,
        tokenizer: &tokenizer,
    };
    let students = local_students(recipe, &parts, &data.labels(), devices)?;
    let group = lead_group(devices, cluster, &teacher_spec)?;
    let replicas = replicas(&students, Some(&teachers), devices, &group);
    let identity = files_identity(&teacher_files);
    let cache_dir = run.path("cache");
    let cache = LogitCache {
        dir: &cache_dir,
        identity: &identity,
    };
    let trained = train(recipe, &run, &replicas, cache, &data, &evaluator, started)?;
    drop(replicas);
    let scorer = Scorer::new(recipe, &data, &tokenizer, &evaluator, device)?;
    let teacher = scorer.summary(
        teacher_name(recipe, &teacher_spec),
        tensor_params(&tensors),
        &teachers[0],
        teacher_dev,
    )?;
    let student = scorer.best_student(&students[0], &trained.best_dir)?;
    let report = RunReport {
        recipe: recipe
            .name
            .clone()
            .unwrap_or_else(|| run.root().display().to_string()),
        task: data.task.to_string(),
        teacher,
        student,
        stages: trained.stages,
        teacher_head_used: recipe.uses_teacher_head(),
        sweep: trained.sweep,
        seconds: started.elapsed().as_secs_f64(),
        student_dir: run.path("student"),
    };
    export_student(recipe, &run, &report, &data, &trained.best_dir)?;
    crate::io::write_json(&run.path("report.json"), &report)?;
    crate::io::write_atomic(&run.path("report.md"), report.to_markdown().as_bytes())?;
    Ok(report)
}

/// The run folder: a fresh one, or the one to resume.
fn open_run(recipe: &Recipe, recipe_path: Option<&Path>, force: bool) -> Result<RunDir> {
    let out = recipe.output_dir(recipe_path);
    Ok(match RunDir::open(&out, &recipe.resolved_toml()?, force)? {
        Opened::Fresh(r) => r,
        Opened::Resume(r) => {
            tracing::info!("{}: resuming", r.root().display());
            r
        }
    })
}

/// The teacher as the report names it: said when its head was never used.
fn teacher_name(recipe: &Recipe, spec: &str) -> String {
    if recipe.uses_teacher_head() {
        spec.to_string()
    } else {
        format!("{spec} (its task head unused: dev score of an untrained head)")
    }
}

/// Pre-flight: a teacher near chance level wastes hours (TinyBERT #52: RTE 30.7). A
/// teacher whose head no stage uses is not held to its (untrained) head's score.
fn check_teacher(recipe: &Recipe, dev: &Metrics, data: &TaskData) -> Result<()> {
    if !recipe.uses_teacher_head() {
        tracing::info!(
            "teacher dev {} = {:.4}, not checked: no stage takes the teacher's logits, so its head is unused",
            dev.score_name,
            dev.score
        );
        return Ok(());
    }
    let chance = chance_score(data.task, &data.dev)?;
    tracing::info!(
        "teacher dev {} = {:.4} (chance {:.4})",
        dev.score_name,
        dev.score,
        chance
    );
    let margin = recipe.teacher.min_margin_over_chance;
    if dev.score <= chance + margin && !recipe.teacher.allow_weak_teacher {
        return Err(Error::msg(format!(
            "the teacher scores {:.4} {} on {} dev, within {margin} of chance ({chance:.4}): it was probably \
             never fine-tuned on this task. Fine-tune it (teacher.finetune = \"always\") or set \
             teacher.allow_weak_teacher = true.",
            dev.score, dev.score_name, data.task
        )));
    }
    Ok(())
}

/// What the stages produced: the best dev student of the final stage (of the best
/// variant of a sweep) is the result.
struct Trained {
    best_dir: PathBuf,
    stages: Vec<StageSummary>,
    sweep: Option<SweepReport>,
}

/// Runs the recipe's stages; with a sweep, the stages before the first swept one
/// once, then every variant from their checkpoint.
fn train(
    recipe: &Recipe,
    run: &RunDir,
    replicas: &[Replica],
    cache: LogitCache,
    data: &TaskData,
    evaluator: &GlueEvaluator,
    started: Instant,
) -> Result<Trained> {
    let split = recipe.first_swept_stage();
    let specs = &recipe.stages[..split.unwrap_or(recipe.stages.len())];
    let ends_the_run = split.is_none();
    let mut stages = run_stages(
        run,
        specs,
        ends_the_run,
        recipe,
        replicas,
        Some(cache),
        data,
        Some(evaluator),
    )?;
    run.write_plot()?;
    if ends_the_run {
        return Ok(Trained {
            best_dir: run.root().join("checkpoints/best"),
            stages,
            sweep: None,
        });
    }
    let outcome = sweep::run_variants(
        run,
        recipe,
        replicas,
        cache,
        data,
        evaluator,
        &replicas[0].device,
        started.elapsed().as_secs_f64(),
    )?;
    stages.extend(outcome.stages);
    Ok(Trained {
        best_dir: outcome.best_dir,
        stages,
        sweep: Some(outcome.report),
    })
}
