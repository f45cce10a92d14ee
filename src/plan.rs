//! `plan`: the resolved run before any training — layer pairs, tensor shapes,
//! projections, parameter counts, FLOPs and the work each stage will do — with
//! impossible plans rejected.

use serde::Serialize;

use crate::augment::job::AugmentSettings;
use crate::augment::Method;
use crate::distill::losses::LossWeights;
use crate::distill::mapping;
use crate::distill::student::check_student_vocabulary;
use crate::distill::trainer::check_compatible;
use crate::distill::StudentInit;
use crate::model::{BertConfig, ModelFiles};
use crate::pipeline::{load_task_data, TaskData};
use crate::recipe::{Recipe, StageData, StageSpec};
use crate::train::Precision;
use crate::{Error, Result};

#[derive(Debug, Serialize)]
pub struct Plan {
    pub teacher: ModelShape,
    pub student: ModelShape,
    /// Projection matrices (student width -> teacher width), training only.
    pub projections: Option<ProjectionPlan>,
    pub task: String,
    pub train_examples: usize,
    pub dev_examples: usize,
    pub max_seq_len: usize,
    /// The recipe's devices: one data-parallel replica on each (per node).
    pub devices: Vec<String>,
    /// The teacher's fine-tuning on the task, when the run does it first.
    pub teacher_finetune: Option<FinetunePlan>,
    pub stages: Vec<StagePlan>,
    /// The sweep's variants and what they share, when the recipe has one.
    pub sweep: Option<String>,
    /// What the run will do that the user may not expect (printed last).
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct FinetunePlan {
    /// Why: `teacher.finetune = "always"`, or the teacher has no head for the task.
    pub reason: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub steps: usize,
    pub learning_rate: f64,
}

#[derive(Debug, Serialize)]
pub struct ModelShape {
    pub source: String,
    /// The encoder family (`bert`, `roberta`, `mpnet`, ...).
    pub model_type: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub parameters: usize,
    /// Forward GFLOP for one sequence at max_seq_len.
    pub gflops_per_sequence: f64,
}

#[derive(Debug, Serialize)]
pub struct ProjectionPlan {
    pub count: usize,
    pub from: usize,
    pub to: usize,
    pub parameters: usize,
    /// Trained ones from the student checkpoint, rather than new ones.
    pub from_checkpoint: bool,
}

#[derive(Debug, Serialize)]
pub struct StagePlan {
    pub name: String,
    pub kind: String,
    pub data: String,
    pub losses: String,
    /// (student layer, teacher layer), 1-based; 0 = embeddings.
    pub pairs: Vec<(usize, usize)>,
    pub attention_shapes: Option<String>,
    pub hidden_shapes: Option<String>,
    /// How the attention and hidden-state losses are averaged, when the stage has them.
    pub normalise: Option<String>,
    pub epochs: usize,
    pub batch_size: usize,
    pub steps: usize,
    pub examples_seen: usize,
    pub learning_rate: f64,
    pub schedule: String,
    /// Dev evaluations the stage runs (every `eval_every` steps, each epoch's end, the
    /// last step), each over `dev_examples`.
    pub eval_every: usize,
    pub evaluations: usize,
}

fn shape(source: String, c: &BertConfig, seq: usize) -> ModelShape {
    ModelShape {
        source,
        model_type: c.family().model_type().into(),
        layers: c.num_hidden_layers,
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        intermediate: c.intermediate_size,
        parameters: c.encoder_parameters() + c.head_parameters(),
        gflops_per_sequence: c.forward_flops_per_token(seq) as f64 * seq as f64 / 1e9,
    }
}

/// The student's config as the recipe's `[student]` section would build it, its
/// description, and whether its checkpoint carries trained projections (`fit_dense*`).
pub fn student_config(
    init: &StudentInit,
    teacher: &BertConfig,
) -> Result<(BertConfig, String, bool)> {
    Ok(match init {
        StudentInit::Checkpoint { model } => {
            let files = ModelFiles::resolve(model)?;
            (
                files.read_config()?,
                format!("checkpoint {model}"),
                files.holds_projections()?,
            )
        }
        StudentInit::TeacherLayers { layers } => {
            let n = teacher.num_hidden_layers;
            if layers.is_empty() || layers.iter().any(|&l| l == 0 || l > n) {
                return Err(Error::invalid(
                    "student.layers",
                    format!("{layers:?}"),
                    format!("expected teacher layers between 1 and {n}"),
                ));
            }
            let mut c = teacher.clone();
            c.num_hidden_layers = layers.len();
            (c, format!("teacher layers {layers:?}"), false)
        }
        StudentInit::Random {
            layers,
            hidden,
            heads,
            intermediate,
        } => {
            let c = teacher.reshaped(*layers, *hidden, *heads, *intermediate);
            c.validate("[student]")?;
            (c, format!("random {layers} x {hidden}"), false)
        }
    })
}

pub fn plan(recipe: &Recipe) -> Result<Plan> {
    recipe.check_streamed_replicas(recipe.device.specs().len())?;
    let data = load_task_data(recipe)?;
    let teacher_files = ModelFiles::resolve(&recipe.teacher.model)?;
    let mut teacher = teacher_files.read_config()?;
    let teacher_finetune = finetune_plan(recipe, &teacher, &data)?;
    let labels = data.task.num_outputs();
    teacher.num_labels = Some(labels);
    teacher.id2label = None;
    let (mut student, source, checkpoint_projections) =
        student_config(&recipe.student.init, &teacher)?;
    check_student_vocabulary(&recipe.student.init, &teacher_files)?;
    student.num_labels = Some(labels);
    student.id2label = None;
    let seq = data.max_seq_len;

    let projected = recipe.student.projection.applies(
        student.hidden_size,
        teacher.hidden_size,
        checkpoint_projections,
    )?;
    let projections = projected.then(|| ProjectionPlan {
        count: student.num_hidden_layers + 1,
        from: student.hidden_size,
        to: teacher.hidden_size,
        parameters: (student.num_hidden_layers + 1)
            * (student.hidden_size * teacher.hidden_size + teacher.hidden_size),
        from_checkpoint: checkpoint_projections,
    });
    let models = Models {
        student: &student,
        teacher: &teacher,
        projected,
    };
    let stages = recipe
        .stages
        .iter()
        .enumerate()
        .map(|(i, spec)| stage_plan(recipe, &data, &models, i, spec))
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan {
        teacher: shape(recipe.teacher.model.clone(), &teacher, seq),
        student: shape(source, &student, seq),
        projections,
        task: data.task.to_string(),
        train_examples: data.train.len(),
        dev_examples: data.dev.len(),
        max_seq_len: seq,
        devices: recipe
            .device
            .specs()
            .iter()
            .map(ToString::to_string)
            .collect(),
        teacher_finetune,
        stages,
        sweep: sweep_text(recipe)?,
        warnings: augmentation_warnings(recipe, &data)?,
    })
}

/// The student and teacher configurations a plan compares, and whether the student's
/// hidden states are projected to the teacher's width.
struct Models<'a> {
    student: &'a BertConfig,
    teacher: &'a BertConfig,
    projected: bool,
}

impl Models<'_> {
    fn hidden_shapes(&self) -> String {
        let (s, t) = (self.student.hidden_size, self.teacher.hidden_size);
        if self.projected {
            format!("student (B, L, {s}) -> projection -> (B, L, {t}) vs teacher (B, L, {t})")
        } else {
            format!("student (B, L, {s}) vs teacher (B, L, {t})")
        }
    }
}

fn streamed(stream: bool) -> &'static str {
    if stream {
        ", streamed"
    } else {
        ""
    }
}

/// Where a stage's rows come from, and how many an augmented stage may see.
fn data_text(recipe: &Recipe, data: &TaskData, spec: &StageSpec, examples: usize) -> String {
    match &spec.data {
        StageData::Train => format!("{} train", data.task),
        StageData::Unlabeled { path, stream } => {
            format!("unlabeled {}{}", path.display(), streamed(*stream))
        }
        StageData::Augmented {
            path: Some(path),
            stream,
        } => format!("augmented {}{}", path.display(), streamed(*stream)),
        StageData::Corpus {
            files, token_cache, ..
        } => format!(
            "corpus {}, streamed in segments of up to {} tokens{}",
            files.join(" "),
            data.max_seq_len,
            token_cache
                .as_ref()
                .map(|d| format!(", token cache {}", d.display()))
                .unwrap_or_default()
        ),
        StageData::Augmented { path: None, stream } => format!(
            "{} train augmented ({}){}, at most {examples} rows",
            data.task,
            recipe
                .augment
                .as_ref()
                .map(|a| format!("{:?}", a.method).to_lowercase())
                .unwrap_or_default(),
            streamed(*stream)
        ),
    }
}

/// "linear, warm-up 10%, bf16 compute".
fn schedule_text(settings: &crate::distill::TrainSettings) -> String {
    let precision = match settings.precision {
        Precision::F32 => "",
        Precision::Bf16 => ", bf16 compute",
        Precision::F16 => ", f16 compute with loss scaling",
    };
    format!(
        "{:?}, warm-up {:.0}%{precision}",
        settings.schedule,
        settings.warmup_ratio * 100.0
    )
    .to_lowercase()
}

/// Stage `i` of the recipe: data, losses, shapes compared, steps and evaluations.
fn stage_plan(
    recipe: &Recipe,
    data: &TaskData,
    models: &Models,
    i: usize,
    spec: &StageSpec,
) -> Result<StagePlan> {
    let (student, teacher) = (models.student, models.teacher);
    let seq = data.max_seq_len;
    let losses = spec.losses();
    if losses.needs_teacher() {
        check_compatible(&losses, models.student, models.teacher)?;
    }
    let pairs = layer_pairs(spec, &losses, models)?;
    let examples = planned_examples(recipe, data, spec)?;
    let settings = spec.settings(recipe, i + 1 == recipe.stages.len());
    let per_epoch = examples.div_ceil(spec.batch_size);
    let steps = settings
        .max_steps
        .unwrap_or(usize::MAX)
        .min(per_epoch * settings.epochs);
    Ok(StagePlan {
        name: spec.display_name(i),
        kind: format!("{:?}", spec.kind).to_lowercase(),
        data: data_text(recipe, data, spec, examples),
        losses: loss_text(&losses)?,
        attention_shapes: losses.needs_attention().then(|| {
            format!(
                "student (B, {}, L, L) vs teacher (B, {}, L, L), L <= {seq}",
                student.num_attention_heads, teacher.num_attention_heads
            )
        }),
        hidden_shapes: losses.needs_hidden_states().then(|| models.hidden_shapes()),
        normalise: (losses.needs_attention() || losses.needs_hidden_states())
            .then(|| normalise_text(settings.pad_to)),
        pairs,
        epochs: settings.epochs,
        batch_size: settings.batch_size,
        steps,
        examples_seen: steps
            .saturating_mul(settings.batch_size)
            .min(examples * settings.epochs),
        learning_rate: settings.learning_rate,
        eval_every: settings.eval_every,
        evaluations: evaluations(steps, per_epoch, settings.eval_every),
        schedule: schedule_text(&settings),
    })
}

/// The (student, teacher) layer pairs of a stage's intermediate losses; the
/// embeddings' pair (0, 0) first when they have a weight.
fn layer_pairs(
    spec: &StageSpec,
    losses: &LossWeights,
    models: &Models,
) -> Result<Vec<(usize, usize)>> {
    if !(losses.needs_hidden_states() || losses.needs_attention()) {
        return Ok(Vec::new());
    }
    let mut pairs = mapping::resolve(
        &spec.layer_map,
        models.student.num_hidden_layers,
        models.teacher.num_hidden_layers,
    )?;
    if losses.embedding > 0.0 {
        pairs.insert(0, (0, 0));
    }
    Ok(pairs)
}

/// The examples a stage's epoch holds, as far as the plan can tell.
fn planned_examples(recipe: &Recipe, data: &TaskData, spec: &StageSpec) -> Result<usize> {
    Ok(match (&spec.data, &recipe.augment) {
        // Not augmented yet: at most every variant of every text is new.
        (StageData::Augmented { path: None, .. }, Some(a)) if !spec.data.is_streamed() => {
            let columns = if data.task.is_pair() { 2 } else { 1 };
            data.train.len() * (1 + columns * variants_per_text(a))
        }
        // Streamed: the shards or files must exist; the rows seen are what the steps take.
        (streamed, _) if streamed.is_streamed() => {
            match streamed {
                StageData::Corpus { files, .. } => {
                    crate::data::corpus::shards::resolve(files)?;
                }
                StageData::Unlabeled { path, .. }
                | StageData::Augmented {
                    path: Some(path), ..
                } => {
                    crate::data::corpus::existing_files(&[path.display().to_string()])?;
                }
                _ => {}
            }
            spec.max_steps.unwrap_or(0).saturating_mul(spec.batch_size)
        }
        _ => crate::pipeline::stage_dataset(spec, data)?.len(),
    })
}

/// The losses with a weight, "name=weight, ... (T=temperature)".
fn loss_text(losses: &LossWeights) -> Result<String> {
    let w = serde_json::to_value(losses).map_err(|e| Error::msg(e.to_string()))?;
    let weighted: Vec<String> = w
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| v.as_f64().is_some_and(|x| x > 0.0) && *k != "temperature")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Ok(format!(
        "{} (T={})",
        weighted.join(", "),
        losses.temperature
    ))
}

/// How the intermediate losses are averaged, given the stage's `pad_to`.
fn normalise_text(pad_to: Option<usize>) -> String {
    match pad_to {
        Some(n) => format!("reference: every batch padded to {n}, a mean over every position"),
        None => "tokens: a mean over real tokens; batches padded to their longest row".to_string(),
    }
}

/// "N variants (...): stages 1..k once, the rest per variant".
fn sweep_text(recipe: &Recipe) -> Result<Option<String>> {
    let Some(split) = recipe.first_swept_stage() else {
        return Ok(None);
    };
    let variants = recipe.sweep_variants("the recipe")?;
    let values: Vec<String> = recipe
        .sweep
        .iter()
        .map(|(k, v)| {
            let v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            format!("{k} = {}", v.join(", "))
        })
        .collect();
    let shared = match split {
        0 => "no stage is shared".to_string(),
        1 => "stage 1 runs once".to_string(),
        n => format!("stages 1-{n} run once"),
    };
    Ok(Some(format!(
        "{} variants ({}): {shared}; stages {}-{} run per variant from its checkpoint, \
         in <run>/sweep/<variant>/; the best on dev is exported",
        variants.len(),
        values.join("; "),
        split + 1,
        recipe.stages.len()
    )))
}

/// Masked-LM augmentation without GloVe leaves multi-piece words unchanged: how many.
fn augmentation_warnings(recipe: &Recipe, data: &crate::pipeline::TaskData) -> Result<Vec<String>> {
    let Some(a) = &recipe.augment else {
        return Ok(Vec::new());
    };
    let mlm = a.method.list().contains(&crate::augment::Method::Mlm);
    if !recipe.needs_augmentation() || !mlm || a.glove.is_some() {
        return Ok(Vec::new());
    }
    let texts = data
        .train
        .examples
        .iter()
        .flat_map(|e| std::iter::once(e.text_a.as_str()).chain(e.text_b.as_deref()));
    // A plan should not fail for want of the masked LM's tokenizer (offline, say).
    let counted = ModelFiles::read_tokenizer_only(&a.mlm_model)
        .and_then(|t| crate::augment::mlm::count_multi_piece_words(texts, &t));
    Ok(match counted {
        Ok((candidates, multi)) => crate::augment::mlm::no_glove_warning(candidates, multi)
            .into_iter()
            .collect(),
        Err(e) => vec![format!(
            "no GloVe vectors given (augment.glove): words of several WordPieces will never be \
             replaced (not counted: {e})"
        )],
    })
}

/// How many dev evaluations a stage of `steps` runs: the trainer evaluates every
/// `every` steps (0: never between epochs), at each epoch's end and at the last step.
fn evaluations(steps: usize, per_epoch: usize, every: usize) -> usize {
    (1..=steps)
        .filter(|&s| (every > 0 && s % every == 0) || s % per_epoch.max(1) == 0 || s == steps)
        .count()
}

/// The teacher's fine-tuning, as the run will do it (pipeline::teacher_needs_finetune).
fn finetune_plan(
    recipe: &Recipe,
    teacher: &BertConfig,
    data: &crate::pipeline::TaskData,
) -> Result<Option<FinetunePlan>> {
    if !crate::pipeline::teacher_needs_finetune(recipe, teacher, data)? {
        return Ok(None);
    }
    let spec = crate::pipeline::teacher_finetune_stage(recipe);
    let settings = spec.settings(recipe, true);
    let per_epoch = data.train.len().div_ceil(spec.batch_size);
    Ok(Some(FinetunePlan {
        reason: match recipe.teacher.finetune {
            crate::recipe::FinetuneWhen::Always => "teacher.finetune = \"always\"".into(),
            _ => format!("it has no classifier head for {}", data.task),
        },
        epochs: settings.epochs,
        batch_size: spec.batch_size,
        steps: settings
            .max_steps
            .unwrap_or(usize::MAX)
            .min(per_epoch * settings.epochs),
        learning_rate: settings.learning_rate,
    }))
}

impl Plan {
    // Long on purpose: the printed plan, section by section in the order it is read.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let m = |m: &ModelShape| {
            format!(
                "{} | {}, {} layers x {}, {} heads, FFN {} | {:.1}M params | {:.2} GFLOP/seq",
                m.source,
                m.model_type,
                m.layers,
                m.hidden,
                m.heads,
                m.intermediate,
                m.parameters as f64 / 1e6,
                m.gflops_per_sequence
            )
        };
        s += &format!("teacher   {}\n", m(&self.teacher));
        if let Some(f) = &self.teacher_finetune {
            s += &format!(
                "          fine-tuned on {} train first ({}): {} epochs x batch {} = {} steps; lr {}\n",
                self.task, f.reason, f.epochs, f.batch_size, f.steps, f.learning_rate
            );
        }
        s += &format!("student   {}\n", m(&self.student));
        s += &format!(
            "          {:.1}x fewer parameters, {:.1}x less compute\n",
            self.teacher.parameters as f64 / self.student.parameters as f64,
            self.teacher.gflops_per_sequence / self.student.gflops_per_sequence
        );
        if let Some(p) = &self.projections {
            s += &format!(
                "projection {} x Linear({} -> {}), {:.2}M params, {}, training only\n",
                p.count,
                p.from,
                p.to,
                p.parameters as f64 / 1e6,
                if p.from_checkpoint {
                    "the checkpoint's"
                } else {
                    "new"
                }
            );
        }
        s += &format!(
            "task      {}: {} train, {} dev, max_seq_len {}\n",
            self.task, self.train_examples, self.dev_examples, self.max_seq_len
        );
        if self.devices.len() > 1 {
            s += &format!(
                "devices   {}: {} data-parallel replicas, each on its share of every batch\n",
                self.devices.join(", "),
                self.devices.len()
            );
        } else {
            s += &format!("device    {}\n", self.devices.join(""));
        }
        for (i, st) in self.stages.iter().enumerate() {
            s += &format!(
                "\nstage {} `{}` ({}) on {}\n",
                i + 1,
                st.name,
                st.kind,
                st.data
            );
            s += &format!("  losses      {}\n", st.losses);
            if !st.pairs.is_empty() {
                let pairs: Vec<String> =
                    st.pairs.iter().map(|(a, b)| format!("{a}<-{b}")).collect();
                s += &format!(
                    "  layers      student<-teacher: {}  (0 = embeddings)\n",
                    pairs.join(" ")
                );
            }
            if let Some(a) = &st.attention_shapes {
                s += &format!("  attention   {a}\n");
            }
            if let Some(h) = &st.hidden_shapes {
                s += &format!("  hidden      {h}\n");
            }
            if let Some(n) = &st.normalise {
                s += &format!("  normalise   {n}\n");
            }
            s += &format!(
                "  work        {} epochs x batch {} = {} steps, {} examples; lr {} ({})\n",
                st.epochs, st.batch_size, st.steps, st.examples_seen, st.learning_rate, st.schedule
            );
            let when = match st.eval_every {
                0 => "at each epoch's end".to_string(),
                n => format!("every {n} steps and at each epoch's end"),
            };
            s += &format!(
                "  evaluation  {when}: {} evaluations x {} dev examples = {} student forward passes\n",
                st.evaluations,
                self.dev_examples,
                st.evaluations * self.dev_examples
            );
        }
        if let Some(sweep) = &self.sweep {
            s += &format!("\nsweep     {sweep}\n");
        }
        for w in &self.warnings {
            s += &format!("\nwarning: {w}\n");
        }
        s
    }
}

/// The most new texts one input text can give under these settings.
fn variants_per_text(a: &AugmentSettings) -> usize {
    a.method
        .list()
        .iter()
        .map(|m| match m {
            Method::Backtranslate => a.samples,
            _ => a.n_aug,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn evaluations_count_every_n_steps_epoch_ends_and_the_last_step() {
        // 2 epochs of 250 steps, every 100: 100 200 250 300 400 500.
        assert_eq!(super::evaluations(500, 250, 100), 6);
        // At epoch ends only.
        assert_eq!(super::evaluations(500, 250, 0), 2);
        // Stopped early by max_steps (130): 100, 125, 130.
        assert_eq!(super::evaluations(130, 125, 100), 3);
    }
}
