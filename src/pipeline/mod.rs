//! A whole run from a recipe: data, teacher (fine-tuned first when it needs it, and
//! checked before any distillation), student, stages with resume, best checkpoint,
//! export, report and plots. `stages`: the training stages and their data;
//! `finetune`: fine-tuning (the teacher, the `finetune` command); `nodes`: several
//! machines, and the per-device replicas of data-parallel runs.

mod finetune;
mod nodes;
mod stages;
pub mod sweep;

pub use finetune::{default_finetune_stage, finetune, finetune_to_folder, FinetuneReport};
pub use nodes::run_recipe_on_node;
pub use stages::{augment_task, run_stages, stage_dataset, LogitCache};
pub use sweep::SweepReport;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::data::labels::{reconcile_labels, LabelMatch};
use crate::data::{
    load_dataset, DataSource, Dataset, EncodedDataset, Label, LoadOptions, Predictions, Split, Task,
};
use crate::distill::cache::files_identity;
use crate::distill::replicas::{local_group, node_group, start_message};
use crate::distill::{Evaluator, Scores, StageSummary, Target, TeacherParts, TrainExample};
use crate::eval::evaluate_encoded;
use crate::export::{export_classifier, ExportOptions, ExportSource};
use crate::export::{DatasetInfo, MetricRow, ModelCard, SpeedComparison, TeacherSize};
use crate::metrics::{task_metrics, Metrics};
use crate::model::{BertForSequenceClassification, BuildOptions, ModelFiles};
use crate::recipe::{FinetuneWhen, Recipe, StageSpec};
use crate::run::{Opened, RunDir};
use crate::tokenizer::{Encoded, TextTokenizer};
use crate::train::cluster::{NodeSpec, Rendezvous};
use crate::{Error, Result};

use nodes::{local_students, local_teachers, replicas};

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
    let opts = |limit| LoadOptions {
        skip_malformed: recipe.task.skip_malformed,
        limit,
    };
    let train = load_dataset(
        &source,
        Some(task),
        Split::Train,
        &opts(recipe.task.train_limit),
    )?;
    let dev = load_dataset(
        &source,
        Some(task),
        Split::Dev,
        &opts(recipe.task.dev_limit),
    )?;
    let dev_mismatched = if task.has_split(Split::DevMismatched) {
        Some(load_dataset(
            &source,
            Some(task),
            Split::DevMismatched,
            &opts(recipe.task.dev_limit),
        )?)
    } else {
        None
    };
    Ok(TaskData {
        task,
        train,
        dev,
        dev_mismatched,
        augmented: None,
        max_seq_len: recipe.task.resolved_max_seq_len(),
    })
}

fn target(label: Label) -> Target {
    match label {
        Label::Class(c) => Target::Class(c as u32),
        Label::Score(s) => Target::Score(s),
        Label::Unlabeled => Target::None,
    }
}

pub fn encode(
    dataset: &Dataset,
    tokenizer: &TextTokenizer,
    max_len: usize,
) -> Result<Vec<TrainExample>> {
    dataset
        .examples
        .iter()
        .map(|e| {
            Ok(TrainExample {
                encoded: tokenizer.encode(&e.text_a, e.text_b.as_deref(), max_len)?,
                target: target(e.label),
            })
        })
        .collect()
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

/// What a run reports at its end.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub recipe: String,
    pub task: String,
    pub teacher: ModelSummary,
    pub student: ModelSummary,
    pub stages: Vec<StageSummary>,
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

fn tensor_params(tensors: &HashMap<String, Tensor>) -> usize {
    tensors.values().map(|t| t.elem_count()).sum()
}

fn latency_ms(
    model: &BertForSequenceClassification,
    examples: &[TrainExample],
    pad_id: u32,
    device: &Device,
) -> Result<f64> {
    let batch: Vec<&Encoded> = examples.iter().take(32).map(|e| &e.encoded).collect();
    let input = crate::tokenizer::pad_batch(&batch, pad_id, device)?;
    model.logits(&input)?; // warm-up
    let start = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        model.logits(&input)?.to_device(&Device::Cpu)?;
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0 / reps as f64)
}

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
fn prepare_teacher(
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
        &run.path("teacher-finetune"),
        devices,
    )?;
    let spec = dir.display().to_string();
    Ok((ModelFiles::resolve(&spec)?, spec))
}

/// Runs a recipe end to end (on every device of `recipe.device` at once when it lists
/// several).
pub fn run_recipe(recipe: &Recipe, recipe_path: Option<&Path>, force: bool) -> Result<RunReport> {
    let devices = recipe.device.open()?;
    lead_run(recipe, recipe_path, force, &devices, None)
}

/// The run on this process's `devices` (parsed once: each parse opens the devices
/// anew), alone or as node 0 of `cluster`.
pub(super) fn lead_run(
    recipe: &Recipe,
    recipe_path: Option<&Path>,
    force: bool,
    devices: &[Device],
    cluster: Option<(&NodeSpec, Rendezvous)>,
) -> Result<RunReport> {
    let started = Instant::now();
    let device = devices[0].clone();
    let out = recipe.output_dir(recipe_path);
    let run = match RunDir::open(&out, &recipe.resolved_toml()?, force)? {
        Opened::Fresh(r) => r,
        Opened::Resume(r) => {
            tracing::info!("{}: resuming", r.root().display());
            r
        }
    };
    let mut data = load_task_data(recipe)?;
    let (teacher_files, teacher_spec) = prepare_teacher(recipe, &run, &data, devices)?;
    let teacher_config = teacher_files.read_config()?;
    let tokenizer = teacher_files.read_tokenizer()?;
    let tensors = teacher_files.read_weights()?;
    let teachers = local_teachers(recipe, &teacher_spec, &teacher_config, &tensors, devices)?;
    let teacher = &teachers[0];
    let evaluator = GlueEvaluator::new(
        &data.dev,
        &tokenizer,
        data.max_seq_len,
        recipe.eval.batch_size,
        &device,
    )?;

    // Pre-flight: a teacher near chance level wastes hours (TinyBERT #52: RTE 30.7).
    let teacher_dev = evaluator.metrics(teacher)?;
    let chance = chance_score(data.task, &data.dev)?;
    tracing::info!(
        "teacher dev {} = {:.4} (chance {:.4})",
        teacher_dev.score_name,
        teacher_dev.score,
        chance
    );
    if teacher_dev.score <= chance + recipe.teacher.min_margin_over_chance
        && !recipe.teacher.allow_weak_teacher
    {
        return Err(Error::msg(format!(
            "the teacher scores {:.4} {} on {} dev, within {} of chance ({:.4}): it was probably never fine-tuned \
             on this task. Fine-tune it (teacher.finetune = \"always\") or set teacher.allow_weak_teacher = true.",
            teacher_dev.score, teacher_dev.score_name, data.task, recipe.teacher.min_margin_over_chance, chance
        )));
    }

    // After the pre-flight: augmentation can take hours.
    augment_task(recipe, &run, &mut data, &device)?;

    let parts = TeacherParts {
        config: &teacher_config,
        tensors: &tensors,
        tokenizer: &tokenizer,
    };
    let students = local_students(recipe, &parts, &data.labels(), devices)?;
    let student = &students[0];
    let group = match cluster {
        None => local_group(devices)?,
        Some((node, mut rendezvous)) => {
            let start = start_message(devices, &teacher_spec)?;
            rendezvous.start(&start)?;
            node_group(devices, node, rendezvous, &start)?
        }
    };
    let replicas = replicas(&students, Some(&teachers), devices, &group);
    let identity = files_identity(&teacher_files);
    let cache_dir = run.path("cache");
    let cache = LogitCache {
        dir: &cache_dir,
        identity: &identity,
    };
    let split = recipe.first_swept_stage();
    let specs = &recipe.stages[..split.unwrap_or(recipe.stages.len())];
    let mut stages = run_stages(
        &run,
        specs,
        split.is_none(),
        recipe,
        &replicas,
        Some(cache),
        &data,
        Some(&evaluator),
    )?;
    run.write_plot()?;
    // The best dev student of the final stage (of the best variant) is the result.
    let (best_dir, sweep) = match split {
        None => (run.root().join("checkpoints/best"), None),
        Some(_) => {
            let shared_seconds = started.elapsed().as_secs_f64();
            let outcome = sweep::run_variants(
                &run,
                recipe,
                &replicas,
                cache,
                &data,
                &evaluator,
                &device,
                shared_seconds,
            )?;
            stages.extend(outcome.stages);
            (outcome.best_dir, Some(outcome.report))
        }
    };
    drop(replicas);
    let best = crate::model::load_classifier(
        &best_dir.display().to_string(),
        &BuildOptions::inference(&device),
    )?;
    let student_dev = evaluator.metrics(&best.built.model)?;
    let mismatched = |model: &BertForSequenceClassification| -> Result<Option<Metrics>> {
        match &data.dev_mismatched {
            Some(d) => Ok(Some(
                GlueEvaluator::new(
                    d,
                    &tokenizer,
                    data.max_seq_len,
                    recipe.eval.batch_size,
                    &device,
                )?
                .metrics(model)?,
            )),
            None => Ok(None),
        }
    };
    let sample = encode(&data.dev, &tokenizer, data.max_seq_len)?;
    let report = RunReport {
        recipe: recipe
            .name
            .clone()
            .unwrap_or_else(|| out.display().to_string()),
        task: data.task.to_string(),
        teacher: ModelSummary {
            model: teacher_spec.clone(),
            parameters: tensor_params(&tensors),
            layers: teacher_config.num_hidden_layers,
            hidden_size: teacher_config.hidden_size,
            dev_mismatched: mismatched(teacher)?,
            dev: teacher_dev,
            latency_ms_batch32: latency_ms(teacher, &sample, tokenizer.pad_id(), &device)?,
        },
        student: ModelSummary {
            model: student.description.clone(),
            parameters: student.model_parameters(),
            layers: student.config.num_hidden_layers,
            hidden_size: student.config.hidden_size,
            dev_mismatched: mismatched(&best.built.model)?,
            dev: student_dev,
            latency_ms_batch32: latency_ms(
                &best.built.model,
                &sample,
                tokenizer.pad_id(),
                &device,
            )?,
        },
        stages,
        sweep,
        seconds: started.elapsed().as_secs_f64(),
        student_dir: run.path("student"),
    };
    export_student(recipe, &run, &report, &data, &best_dir)?;
    crate::io::write_json(&run.path("report.json"), &report)?;
    crate::io::write_atomic(&run.path("report.md"), report.to_markdown().as_bytes())?;
    Ok(report)
}

/// Bytes of a model's weight files; 0 when they cannot be found (the card then says so).
fn weights_bytes(model: &str) -> u64 {
    ModelFiles::resolve(model)
        .map(|f| {
            f.weights
                .paths()
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Exports the best student to `<run>/student` with a model card, checked against the
/// checkpoint on dev sentences.
fn export_student(
    recipe: &Recipe,
    run: &RunDir,
    report: &RunReport,
    data: &TaskData,
    best: &Path,
) -> Result<()> {
    let mut source = ExportSource::from_checkpoint(&best.display().to_string())?;
    let teacher = &report.teacher;
    let student = &report.student;
    source.card = ModelCard {
        model_name: recipe.name.clone(),
        // The model the user named; when the run fine-tuned it first, the card says so.
        teacher: Some(recipe.teacher.model.clone()),
        teacher_finetuned: teacher.model != recipe.teacher.model,
        dataset: Some(DatasetInfo {
            id: "nyu-mll/glue".into(),
            config: Some(data.task.name().to_string()),
            split: Some("validation".into()),
            name: Some(format!("GLUE {}", data.task)),
        }),
        recipe: recipe.resolved_toml().ok(),
        metrics: student
            .dev
            .values
            .iter()
            .map(|(name, v)| MetricRow {
                name: name.clone(),
                student: *v,
                teacher: teacher.dev.get(name),
            })
            .collect(),
        teacher_size: Some(TeacherSize {
            parameters: teacher.parameters,
            size_on_disk_bytes: weights_bytes(&teacher.model),
        }),
        speed: Some(SpeedComparison {
            setting: format!(
                "batch 32, max_seq_len {}, {}",
                data.max_seq_len, recipe.device
            ),
            student_ms: student.latency_ms_batch32,
            teacher_ms: teacher.latency_ms_batch32,
        }),
        license: None,
        language: Some("en".into()),
    };
    let options = ExportOptions {
        dtype: recipe.export.dtype.dtype(),
        force: true, // the run folder is ours; a resumed run re-exports the same student
        check_examples: data.export_check_examples(),
        tolerance: None,
    };
    let exported = export_classifier(&source, &run.path("student"), &options)?;
    tracing::info!(
        "exported the student to {} (logits checked on {} dev examples, relative error {:.1e})",
        exported.out.display(),
        options.check_examples.len(),
        exported.check.rel_err
    );
    Ok(())
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
        md += &format!(
            "\nThe student keeps {:.1}% of the teacher's dev score with {:.1}x fewer parameters and runs {:.1}x faster.\n",
            100.0 * s.dev.score / t.dev.score,
            t.parameters as f64 / s.parameters as f64,
            t.latency_ms_batch32 / s.latency_ms_batch32
        );
        md += "\n## Stages\n\n| stage | steps | seconds | final loss | best dev |\n|---|---|---|---|---|\n";
        for st in &self.stages {
            md += &format!(
                "| {} | {} | {:.0} | {:.4} | {} |\n",
                st.name,
                st.steps,
                st.seconds,
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
