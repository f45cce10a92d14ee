//! Recipes: one TOML file per job, a versioned schema, `--set key=value` overrides.
//!
//! Unknown keys and wrong types are errors that name the key and the file, so a typo
//! never silently falls back to a default (TinyBERT reference issue #77).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::augment::job::AugmentSettings;
use crate::data::corpus::LANES;
use crate::data::Task;
use crate::device::{DeviceList, FloatType};
use crate::distill::{LayerMap, LossWeights, Normalise, StageKind, StudentSpec, TrainSettings};
use crate::train::{Precision, Schedule};
use crate::{Error, Result};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Schema version; this build reads version 1.
    pub version: u32,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// `cpu`, `cuda[:N]`, `metal`, `auto`, or a list (`cuda:0,cuda:1`): one
    /// data-parallel replica on each.
    #[serde(default)]
    pub device: DeviceList,
    /// Compute dtype of every training stage (`f32`, `bf16`, `f16`; weights stay in
    /// f32); a stage's own `precision` wins.
    #[serde(default)]
    pub precision: Precision,
    /// Run folder; defaults to `runs/<name>`.
    #[serde(default)]
    pub output: Option<PathBuf>,
    pub teacher: TeacherSpec,
    pub task: TaskSpec,
    pub student: StudentSpec,
    #[serde(default)]
    pub eval: EvalSpec,
    pub stages: Vec<StageSpec>,
    #[serde(default)]
    pub export: ExportSpec,
    /// Augmentation of the task's training text, for stages with
    /// `data = { source = "augmented" }`; written once to `<run>/augmented/`.
    #[serde(default)]
    pub augment: Option<AugmentSettings>,
    /// Stage settings to try, each with its values (`"stages.1.learning_rate" = [1e-5,
    /// 2e-5, 3e-5]`): every combination runs from the same checkpoint of the stages
    /// before the first swept one, in `<run>/sweep/<variant>/`; the best on dev wins.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sweep: BTreeMap<String, Vec<toml::Value>>,
}

/// One combination of a recipe's sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// `key=value` pairs, also the variant's folder name.
    pub label: String,
    /// The recipe with these values set and no sweep of its own.
    pub recipe: Recipe,
}

pub use crate::rng::DEFAULT_SEED;

fn default_seed() -> u64 {
    DEFAULT_SEED
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// Hub id (`org/name[@revision]`) or folder.
    pub model: String,
    /// Fine-tune the teacher on the task first: `auto` does it when the checkpoint has
    /// no head for the task's labels.
    #[serde(default)]
    pub finetune: FinetuneWhen,
    /// Settings of that fine-tuning.
    #[serde(default)]
    pub finetune_settings: Option<StageSpec>,
    /// Refuse to distil from a teacher whose dev score is at most chance + this margin.
    #[serde(default = "default_margin")]
    pub min_margin_over_chance: f64,
    /// Distil even from a teacher near chance level.
    #[serde(default)]
    pub allow_weak_teacher: bool,
    /// Teacher inference dtype (`f32`, `f16`, `bf16`).
    #[serde(default)]
    pub dtype: FloatType,
}

fn default_margin() -> f64 {
    0.05
}

impl TeacherSpec {
    /// This model with every other setting at its default.
    pub fn new(model: impl Into<String>) -> TeacherSpec {
        TeacherSpec {
            model: model.into(),
            finetune: FinetuneWhen::default(),
            finetune_settings: None,
            min_margin_over_chance: default_margin(),
            allow_weak_teacher: false,
            dtype: FloatType::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FinetuneWhen {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli.
    pub name: Task,
    /// `hub` (nyu-mll/glue parquet) or a folder in the GLUE TSV layout.
    #[serde(default = "default_data")]
    pub data: String,
    #[serde(default)]
    pub max_seq_len: Option<usize>,
    /// Use only the first N training rows.
    #[serde(default)]
    pub train_limit: Option<usize>,
    #[serde(default)]
    pub dev_limit: Option<usize>,
    /// Skip malformed rows (reported) instead of stopping.
    #[serde(default)]
    pub skip_malformed: bool,
}

/// A task's data when a recipe or a command names none: the hub's `nyu-mll/glue`.
pub const DEFAULT_DATA: &str = "hub";

fn default_data() -> String {
    DEFAULT_DATA.into()
}

impl TaskSpec {
    /// This task's data (`hub`, a folder or a hub dataset) with every other setting at
    /// its default.
    pub fn new(name: Task, data: impl Into<String>) -> TaskSpec {
        TaskSpec {
            name,
            data: data.into(),
            max_seq_len: None,
            train_limit: None,
            dev_limit: None,
            skip_malformed: false,
        }
    }

    /// `max_seq_len`, or the task's default when the recipe gives none.
    pub fn resolved_max_seq_len(&self) -> usize {
        self.max_seq_len.unwrap_or(self.name.default_max_seq_len())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Evaluate on dev every N steps (0: at the end of each epoch only).
    #[serde(default)]
    pub every: usize,
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Stop the final stage after this many evaluations without improvement.
    #[serde(default)]
    pub patience: Option<usize>,
}

impl Default for EvalSpec {
    fn default() -> Self {
        EvalSpec {
            every: 0,
            batch_size: default_eval_batch(),
            patience: None,
        }
    }
}

/// Examples per batch where only forward passes run: the default of a recipe's
/// `[eval] batch_size` and of `eval --batch-size`, and the batch of the teacher's
/// logits for prediction stages.
pub const EVAL_BATCH_SIZE: usize = 64;

fn default_eval_batch() -> usize {
    EVAL_BATCH_SIZE
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// Export dtype: `f32`, `f16` or `bf16`.
    #[serde(default)]
    pub dtype: FloatType,
}

/// Training data of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "source", deny_unknown_fields)]
pub enum StageData {
    /// The task's labeled training split.
    #[default]
    Train,
    /// A file of text (one sentence, or a tab-separated pair, per line) that the
    /// teacher labels: a transfer set. With `stream`, read on background threads as
    /// it trains instead of whole (for files larger than memory; needs `max_steps`).
    Unlabeled {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "is_false")]
        stream: bool,
    },
    /// Augmented task text that the teacher labels: the file of `candle-distill augment`
    /// at `path` (JSONL; or plain text as for `unlabeled`), or without a path the
    /// run's own augmentation from the recipe's `[augment]` table. `stream` as for
    /// `unlabeled`.
    Augmented {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "is_false")]
        stream: bool,
    },
    /// Unlabeled text streamed from shards, for general distillation at corpus scale:
    /// paths or globs of `.txt` (a blank line ends a document), `.jsonl`, `.tsv` (with
    /// a header) or `.parquet` files, all but parquet optionally `.gz` or `.zst`.
    /// Packed into segments of the
    /// task's max_seq_len. Its length is unknown ahead, so the stage needs `max_steps`.
    Corpus {
        files: Vec<String>,
        /// The JSONL field or parquet column holding the text.
        #[serde(default = "default_text_field")]
        text_field: String,
        /// Segments held by the seeded shuffle buffer (0: the shards' order).
        #[serde(default = "default_shuffle_buffer")]
        shuffle_buffer: usize,
        /// A folder where the shards' rows are kept once tokenised, for later epochs,
        /// runs and nodes (sharing the folder) to read instead of the text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_cache: Option<PathBuf>,
    },
}

impl StageData {
    /// Read on background threads as the stage trains, never whole.
    pub fn is_streamed(&self) -> bool {
        match self {
            StageData::Corpus { .. } => true,
            StageData::Unlabeled { stream, .. } | StageData::Augmented { stream, .. } => *stream,
            StageData::Train => false,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !b
}

/// What a stage streaming its data needs: files, a step count, no gold labels.
fn check_streamed_stage(stage: &StageSpec) -> Result<(), (&'static str, &'static str)> {
    if matches!(&stage.data, StageData::Corpus { files, .. } if files.is_empty()) {
        return Err((
            "data.files",
            "is empty: give paths or globs of corpus shards",
        ));
    }
    if stage.max_steps.is_none() {
        return Err((
            "max_steps",
            "is needed with a corpus or a streamed file: its length is unknown until \
             read (the learning-rate schedule needs the total)",
        ));
    }
    if stage.kind == StageKind::Finetune || stage.losses().needs_labels() {
        return Err((
            "data",
            "streamed text has no labels: its stages learn from the teacher alone",
        ));
    }
    Ok(())
}

fn default_text_field() -> String {
    "text".into()
}

/// About 5 MB of segments of 128 tokens: enough to mix documents, bounded.
fn default_shuffle_buffer() -> usize {
    10_000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub kind: StageKind,
    #[serde(default)]
    pub data: StageData,
    /// Loss weights; defaults depend on the kind (TinyBERT's choices).
    #[serde(default)]
    pub losses: Option<LossWeights>,
    #[serde(default)]
    pub layer_map: LayerMap,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub warmup_ratio: Option<f64>,
    #[serde(default)]
    pub schedule: Option<Schedule>,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    pub max_grad_norm: Option<f64>,
    /// Sort batches by length (less padding, same results up to batch order).
    #[serde(default = "default_group_by_length")]
    pub group_by_length: bool,
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: usize,
    /// Compute dtype of this stage; defaults to the recipe's `precision`.
    #[serde(default)]
    pub precision: Option<Precision>,
    /// Evaluate on dev every N steps in this stage (0: at epoch ends only); defaults to
    /// the recipe's `eval.every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    /// How the attention and hidden-state losses are averaged: `tokens` (over real
    /// tokens) or `reference` (TinyBERT's code: batches padded to max_seq_len, a mean
    /// over every position).
    #[serde(default)]
    pub normalise: Normalise,
}

// A stage's defaults are `TrainSettings::for_stage`'s; those that do not depend on
// the stage's kind (all but warm-up and schedule) are read from any kind's.
const STAGE: TrainSettings = TrainSettings::for_stage(StageKind::Intermediate);
fn default_epochs() -> usize {
    STAGE.epochs
}
fn default_lr() -> f64 {
    STAGE.learning_rate
}
fn default_batch() -> usize {
    STAGE.batch_size
}
fn default_wd() -> f64 {
    STAGE.weight_decay
}
fn default_clip() -> Option<f64> {
    STAGE.max_grad_norm
}
fn default_group_by_length() -> bool {
    STAGE.group_by_length
}
fn default_ckpt() -> usize {
    STAGE.checkpoint_every
}

impl StageSpec {
    /// A stage of this kind with every setting at its default, as a recipe's
    /// `[[stages]]` table holding only `kind`.
    pub fn new(kind: StageKind) -> StageSpec {
        StageSpec {
            name: None,
            kind,
            data: StageData::Train,
            losses: None,
            layer_map: LayerMap::default(),
            epochs: default_epochs(),
            max_steps: STAGE.max_steps,
            learning_rate: default_lr(),
            batch_size: default_batch(),
            warmup_ratio: None,
            schedule: None,
            weight_decay: default_wd(),
            max_grad_norm: default_clip(),
            group_by_length: default_group_by_length(),
            checkpoint_every: default_ckpt(),
            precision: None,
            eval_every: None,
            normalise: STAGE.normalise,
        }
    }

    /// The length every batch is padded to: the task's max_seq_len under `reference`
    /// normalisation of intermediate losses, else none (each batch to its longest row).
    fn pad_to(&self, recipe: &Recipe) -> Option<usize> {
        let losses = self.losses();
        let intermediate = losses.needs_attention() || losses.needs_hidden_states();
        if self.normalise != Normalise::Reference || !intermediate {
            return None;
        }
        Some(recipe.task.resolved_max_seq_len())
    }

    pub fn display_name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", index + 1, self.kind.name()))
    }

    pub fn losses(&self) -> LossWeights {
        self.losses.unwrap_or_else(|| self.kind.default_losses())
    }

    /// Optimisation settings, with the kind's defaults for schedule and warm-up:
    /// constant LR for intermediate stages (TinyBERT), 10% warm-up + linear decay otherwise.
    pub fn settings(&self, recipe: &Recipe, is_final: bool) -> TrainSettings {
        let eval = &recipe.eval;
        let defaults = TrainSettings::for_stage(self.kind);
        TrainSettings {
            epochs: self.epochs,
            max_steps: self.max_steps,
            learning_rate: self.learning_rate,
            batch_size: self.batch_size,
            warmup_ratio: self.warmup_ratio.unwrap_or(defaults.warmup_ratio),
            schedule: self.schedule.unwrap_or(defaults.schedule),
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            eval_every: self.eval_every.unwrap_or(eval.every),
            patience: if is_final { eval.patience } else { None },
            group_by_length: self.group_by_length,
            checkpoint_every: self.checkpoint_every,
            log_every: defaults.log_every,
            precision: self.precision.unwrap_or(recipe.precision),
            initial_loss_scale: defaults.initial_loss_scale,
            normalise: self.normalise,
            pad_to: self.pad_to(recipe),
        }
    }
}

impl Recipe {
    /// A recipe of these parts with every other setting at its default, as a file
    /// holding only them gives.
    pub fn new(
        teacher: TeacherSpec,
        task: TaskSpec,
        student: StudentSpec,
        stages: Vec<StageSpec>,
    ) -> Recipe {
        Recipe {
            version: SCHEMA_VERSION,
            name: None,
            description: None,
            seed: default_seed(),
            device: DeviceList::default(),
            precision: Precision::default(),
            output: None,
            teacher,
            task,
            student,
            eval: EvalSpec::default(),
            stages,
            export: ExportSpec::default(),
            augment: None,
            sweep: BTreeMap::new(),
        }
    }

    /// Whether a stage takes the teacher's logits (prediction losses). When none does
    /// (general and intermediate stages only), the teacher's task head is never used:
    /// a pre-trained encoder serves as it is. A sweep may change any stage: assumed.
    pub fn uses_teacher_head(&self) -> bool {
        !self.sweep.is_empty()
            || self
                .stages
                .iter()
                .any(|s| s.losses().needs_teacher_logits())
    }

    /// A stage trains on the run's own augmented data.
    pub fn needs_augmentation(&self) -> bool {
        self.stages
            .iter()
            .any(|s| matches!(s.data, StageData::Augmented { path: None, .. }))
    }

    /// Reads a recipe file and applies `key=value` overrides (dotted keys; values are
    /// TOML literals, or plain strings when they do not parse as one).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Recipe> {
        let mut value: toml::Value = toml::from_str(text)
            .map_err(|e| Error::invalid(origin, "TOML", e.to_string().trim_end()))?;
        for o in overrides {
            apply_override(&mut value, o, origin)?;
        }
        let version = value.get("version").and_then(|v| v.as_integer());
        match version {
            Some(v) if v == SCHEMA_VERSION as i64 => {}
            Some(v) => {
                return Err(Error::invalid(
                    origin,
                    "version",
                    format!("recipe schema version {v} is not supported; this build reads version {SCHEMA_VERSION}"),
                ))
            }
            None => return Err(Error::invalid(origin, "version", format!("missing; add `version = {SCHEMA_VERSION}`"))),
        }
        let recipe: Recipe = value.try_into().map_err(|e: toml::de::Error| {
            Error::invalid(origin, "recipe", e.to_string().trim_end())
        })?;
        recipe.validate(origin)?;
        Ok(recipe)
    }

    /// A streamed stage's epoch is read in [`LANES`] lanes shared out among the
    /// data-parallel replicas (`devices` times nodes): it can feed at most that many.
    pub fn check_streamed_replicas(&self, replicas: usize) -> Result<()> {
        let streamed = self.stages.iter().any(|s| s.data.is_streamed());
        if streamed && replicas > LANES {
            return Err(Error::invalid(
                "device",
                format!("{replicas} data-parallel replicas"),
                format!(
                    "a streamed stage's data is read in {LANES} lanes, which feed at most \
                     {LANES} replicas (devices times nodes)"
                ),
            ));
        }
        Ok(())
    }

    pub fn validate(&self, origin: &str) -> Result<()> {
        if self.stages.is_empty() {
            return Err(Error::invalid(
                origin,
                "stages",
                "a recipe needs at least one [[stages]] entry",
            ));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            let field = |f: &str| format!("stages[{i}].{f}");
            if stage.epochs == 0 && stage.max_steps.is_none() {
                return Err(Error::invalid(
                    origin,
                    field("epochs"),
                    "must be at least 1",
                ));
            }
            if stage.batch_size == 0 {
                return Err(Error::invalid(
                    origin,
                    field("batch_size"),
                    "must be at least 1",
                ));
            }
            if !(stage.learning_rate > 0.0 && stage.learning_rate < 1.0) {
                return Err(Error::invalid(
                    origin,
                    field("learning_rate"),
                    format!("{} is not in (0, 1)", stage.learning_rate),
                ));
            }
            if let Some(w) = stage.warmup_ratio {
                if !(0.0..1.0).contains(&w) {
                    return Err(Error::invalid(
                        origin,
                        field("warmup_ratio"),
                        format!("{w} is not in [0, 1)"),
                    ));
                }
            }
            let own_augmented = matches!(stage.data, StageData::Augmented { path: None, .. });
            if own_augmented && self.augment.is_none() {
                return Err(Error::invalid(
                    origin,
                    field("data"),
                    "uses the run's augmented data but the recipe has no [augment] table; \
                     add one (e.g. `[augment]` with `method = \"mlm\"`) or give the file: \
                     data = { source = \"augmented\", path = \"...\" }",
                ));
            }
            if stage.data.is_streamed() {
                check_streamed_stage(stage)
                    .map_err(|(f, m)| Error::invalid(origin, field(f), m))?;
            }
            stage.losses().validate(&format!("{origin}: stages[{i}]"))?;
            if stage.kind == StageKind::Finetune && stage.losses().needs_teacher() {
                return Err(Error::invalid(
                    origin,
                    field("losses"),
                    "a finetune stage has no teacher; use kind = \"prediction\" for teacher losses",
                ));
            }
        }
        if let Some(a) = &self.augment {
            a.validate(origin)?;
        }
        if !self.sweep.is_empty() {
            self.sweep_variants(origin)?;
        }
        Ok(())
    }

    /// Adds `key=v1,v2,...` (`run --sweep`) to the sweep, replacing the recipe's values
    /// for that key. Values are TOML literals, or strings when they do not parse as one.
    pub fn add_sweep(&mut self, spec: &str) -> Result<()> {
        let (key, values) = spec.split_once('=').ok_or_else(|| {
            Error::invalid(
                "--sweep",
                spec,
                "expected key=v1,v2,..., e.g. stages.1.learning_rate=1e-5,2e-5,3e-5",
            )
        })?;
        let values = values.split(',').map(literal).collect();
        self.sweep.insert(key.trim().to_string(), values);
        self.validate("--sweep")
    }

    /// The stage the sweep starts at: the stages before it run once, shared.
    pub fn first_swept_stage(&self) -> Option<usize> {
        self.sweep
            .keys()
            .filter_map(|k| stage_key(k))
            .map(|(n, _)| n)
            .min()
    }

    /// Every combination of the sweep's values, in key order (none without a sweep).
    /// Keys must be settings of stages (`stages.N.key`); each variant must be a valid
    /// recipe.
    pub fn sweep_variants(&self, origin: &str) -> Result<Vec<Variant>> {
        let mut combos: Vec<Vec<String>> = vec![Vec::new()];
        for (key, values) in &self.sweep {
            match stage_key(key) {
                Some((n, rest)) if n < self.stages.len() && !rest.is_empty() => {}
                _ => {
                    return Err(Error::invalid(
                        origin,
                        format!("sweep.\"{key}\""),
                        format!(
                            "a sweep varies stage settings: expected stages.N.key with N below {}",
                            self.stages.len()
                        ),
                    ))
                }
            }
            if values.is_empty() {
                return Err(Error::invalid(
                    origin,
                    format!("sweep.\"{key}\""),
                    "needs at least one value",
                ));
            }
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push(format!("{key}={v}"));
                        c
                    })
                })
                .collect();
        }
        if self.sweep.is_empty() {
            return Ok(Vec::new());
        }
        let mut base = self.clone();
        base.sweep.clear();
        let text = base.resolved_toml()?;
        combos
            .into_iter()
            .map(|overrides| {
                let label = overrides.join(",");
                let recipe = Recipe::parse(
                    &text,
                    &format!("{origin}: sweep variant {label}"),
                    &overrides,
                )?;
                Ok(Variant { label, recipe })
            })
            .collect()
    }

    /// The recipe with every default written out, as stored in the run folder.
    pub fn resolved_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| Error::msg(format!("cannot serialise the recipe: {e}")))
    }

    pub fn output_dir(&self, recipe_path: Option<&Path>) -> PathBuf {
        if let Some(o) = &self.output {
            return o.clone();
        }
        let name = self.name.clone().or_else(|| {
            recipe_path
                .and_then(|p| p.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
        });
        PathBuf::from("runs").join(name.unwrap_or_else(|| "run".into()))
    }
}

/// A value given on the command line: a TOML literal, or a string when it is not one.
fn literal(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// `stages.N.rest` as (N, rest).
fn stage_key(key: &str) -> Option<(usize, &str)> {
    let (n, rest) = key.strip_prefix("stages.")?.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

fn apply_override(root: &mut toml::Value, spec: &str, origin: &str) -> Result<()> {
    let (key, raw) = spec.split_once('=').ok_or_else(|| {
        Error::invalid(
            "--set",
            spec,
            "expected key=value, e.g. task.data=../shared/data/glue",
        )
    })?;
    let key = key.trim();
    let value = literal(raw);
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        // `stages.1.epochs` indexes into arrays.
        if let Ok(index) = part.parse::<usize>() {
            let arr = node.as_array_mut().ok_or_else(|| {
                Error::invalid(
                    "--set",
                    key,
                    format!("`{}` is not a list in {origin}", parts[..i].join(".")),
                )
            })?;
            let len = arr.len();
            let slot = arr.get_mut(index).ok_or_else(|| {
                Error::invalid(
                    "--set",
                    key,
                    format!("index {index} is out of range ({len} entries) in {origin}"),
                )
            })?;
            if last {
                *slot = value;
                return Ok(());
            }
            node = slot;
            continue;
        }
        let table = node.as_table_mut().ok_or_else(|| {
            Error::invalid(
                "--set",
                key,
                format!("`{}` is not a table in {origin}", parts[..i].join(".")),
            )
        })?;
        if last {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
version = 1
[teacher]
model = "bert-base-uncased"
[task]
name = "sst2"
[student]
from = "teacher_layers"
layers = [2, 4, 6]
[[stages]]
kind = "intermediate"
[[stages]]
kind = "prediction"
epochs = 2
"#;

    #[test]
    fn parses_with_defaults_and_round_trips() {
        let r = Recipe::parse(MINIMAL, "r.toml", &[]).unwrap();
        assert_eq!(r.stages[0].losses(), LossWeights::intermediate());
        assert_eq!(r.stages[1].settings(&r, true).schedule, Schedule::Linear);
        assert_eq!(r.stages[0].settings(&r, false).schedule, Schedule::Constant);
        let again = Recipe::parse(&r.resolved_toml().unwrap(), "resolved", &[]).unwrap();
        assert_eq!(again, r);
    }

    /// The defaults are written once: a stage table holding only `kind`, the code's
    /// `StageSpec::new` and the trainer's `TrainSettings::for_stage` agree.
    #[test]
    fn one_set_of_stage_defaults() {
        let r = Recipe::parse(MINIMAL, "r.toml", &[]).unwrap();
        assert_eq!(r.stages[0], StageSpec::new(StageKind::Intermediate));
        let finetune = Recipe::parse(
            &MINIMAL.replace("kind = \"prediction\"\nepochs = 2", "kind = \"finetune\""),
            "r.toml",
            &[],
        )
        .unwrap();
        assert_eq!(finetune.stages[1], StageSpec::new(StageKind::Finetune));
        let settings = StageSpec::new(StageKind::Finetune).settings(&r, true);
        assert_eq!(settings, TrainSettings::for_stage(StageKind::Finetune));
        let recipe = Recipe::new(
            TeacherSpec::new("bert-base-uncased"),
            TaskSpec::new(Task::Sst2, "hub"),
            r.student.clone(),
            r.stages.clone(),
        );
        assert_eq!(recipe, r);
    }

    #[test]
    fn a_sweep_is_a_grid_of_stage_settings() {
        let mut r = Recipe::parse(
            &format!("{MINIMAL}\n[sweep]\n\"stages.1.learning_rate\" = [1e-5, 3e-5]\n"),
            "r.toml",
            &[],
        )
        .unwrap();
        assert_eq!(r.first_swept_stage(), Some(1));
        r.add_sweep("stages.1.batch_size=16,32").unwrap();
        let v = r.sweep_variants("r.toml").unwrap();
        let labels: Vec<&str> = v.iter().map(|v| v.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "stages.1.batch_size=16,stages.1.learning_rate=0.00001",
                "stages.1.batch_size=16,stages.1.learning_rate=0.00003",
                "stages.1.batch_size=32,stages.1.learning_rate=0.00001",
                "stages.1.batch_size=32,stages.1.learning_rate=0.00003",
            ]
        );
        assert_eq!(v[3].recipe.stages[1].batch_size, 32);
        assert_eq!(v[3].recipe.stages[1].learning_rate, 3e-5);
        assert!(v.iter().all(|v| v.recipe.sweep.is_empty()));
        // Resolved and read back, the sweep survives.
        let again = Recipe::parse(&r.resolved_toml().unwrap(), "resolved", &[]).unwrap();
        assert_eq!(again.sweep, r.sweep);
        for (bad, says) in [
            ("teacher.model=a,b", "stages.N.key"),
            ("stages.7.learning_rate=0.00001", "N below 2"),
            ("stages.1.learning_rate=2", "learning_rate"),
            ("stages.1.epochs=one", "epochs"),
        ] {
            let err = r.clone().add_sweep(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_file() {
        let typo = MINIMAL.replace("epochs = 2", "epoch = 2");
        let err = Recipe::parse(&typo, "recipes/x.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("recipes/x.toml") && err.contains("epoch"),
            "{err}"
        );
        let wrong = MINIMAL.replace("epochs = 2", "epochs = \"two\"");
        let err = Recipe::parse(&wrong, "recipes/x.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("recipes/x.toml") && err.contains("epochs"),
            "{err}"
        );
        let err = Recipe::parse(&MINIMAL.replace("version = 1", "version = 7"), "x", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 7"), "{err}");
        let err = Recipe::parse(&MINIMAL.replace("version = 1", ""), "x", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("version") && err.contains("missing"), "{err}");
        let bad_student = MINIMAL.replace("from = \"teacher_layers\"", "from = \"teachers\"");
        assert!(Recipe::parse(&bad_student, "x", &[]).is_err());
    }

    #[test]
    fn overrides_set_nested_values_and_array_entries() {
        let r = Recipe::parse(
            MINIMAL,
            "r.toml",
            &[
                "task.data=../shared/data/glue".into(),
                "stages.1.learning_rate=3e-5".into(),
                "seed=7".into(),
            ],
        )
        .unwrap();
        assert_eq!(r.task.data, "../shared/data/glue");
        assert_eq!(r.stages[1].learning_rate, 3e-5);
        assert_eq!(r.seed, 7);
        let err = Recipe::parse(MINIMAL, "r.toml", &["stages.5.epochs=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
        let err = Recipe::parse(MINIMAL, "r.toml", &["nonsense".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("key=value"), "{err}");
        let err = Recipe::parse(MINIMAL, "r.toml", &["task.nmae=sst2".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nmae"), "{err}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        let err = Recipe::parse(
            &MINIMAL.replace("epochs = 2", "epochs = 2\nlearning_rate = 5.0"),
            "r.toml",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("stages[1].learning_rate"), "{err}");
        let err = Recipe::parse(
            &MINIMAL.replace(
                "kind = \"prediction\"",
                "kind = \"finetune\"\nlosses = { soft_ce = 1.0 }",
            ),
            "r.toml",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no teacher"), "{err}");
    }
}
