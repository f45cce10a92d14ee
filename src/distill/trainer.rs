//! One training stage: intermediate (attention + hidden), prediction (soft logits),
//! general distillation, or plain fine-tuning. Checkpoints to the run folder and
//! resumes bit-for-bit from it.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::losses::{LossWeights, Normalise};
use super::mapping::{self, LayerMap};
use super::objective::{scalar, BatchLoss, TokenShare};
use super::student::Student;
use crate::data::batch::GROUP_CHUNK_BATCHES;
use crate::data::corpus::chunks::{Chunk, ChunkStream};
use crate::data::corpus::Corpus;
use crate::data::{batch_order, Batch, EncodedDataset, Label};
use crate::model::{BertForSequenceClassification, Outputs};
use crate::rng::Rng;
use crate::run::RunDir;
use crate::train::parallel::{self, shard_range, AllReduce};
use crate::train::{lr_at, AdamW, AdamWConfig, LossScale, Precision, Schedule};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Attention + hidden losses on unlabeled text, from a pre-trained teacher.
    General,
    /// Attention + hidden + embedding losses on task data, from a fine-tuned teacher.
    Intermediate,
    /// Soft-logit losses on task data.
    Prediction,
    /// Gold labels only; no teacher.
    Finetune,
}

impl StageKind {
    /// As written in recipes.
    pub fn name(self) -> &'static str {
        match self {
            StageKind::General => "general",
            StageKind::Intermediate => "intermediate",
            StageKind::Prediction => "prediction",
            StageKind::Finetune => "finetune",
        }
    }

    const fn trains_layers_only(self) -> bool {
        matches!(self, StageKind::General | StageKind::Intermediate)
    }

    pub fn default_losses(self) -> LossWeights {
        match self {
            StageKind::General | StageKind::Intermediate => LossWeights::intermediate(),
            StageKind::Prediction => LossWeights::prediction(),
            StageKind::Finetune => LossWeights::hard_labels(),
        }
    }
}

/// Everything that shapes one stage's optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub epochs: usize,
    /// Stop after this many steps (over all epochs), if set.
    pub max_steps: Option<usize>,
    pub learning_rate: f64,
    pub batch_size: usize,
    pub warmup_ratio: f64,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    /// Evaluate every N steps (and at the end of each epoch); 0 = only at epoch ends.
    pub eval_every: usize,
    /// Stop after this many evaluations without improvement.
    pub patience: Option<usize>,
    pub group_by_length: bool,
    /// Write the resume checkpoint every N steps (and at each epoch end).
    pub checkpoint_every: usize,
    pub log_every: usize,
    /// Compute dtype of the training steps; the weights stay in f32.
    pub precision: Precision,
    /// The f16 loss scale at the start of the stage.
    #[serde(default = "initial_loss_scale")]
    pub initial_loss_scale: f64,
    /// How the attention and hidden-state losses are averaged.
    #[serde(default)]
    pub normalise: Normalise,
    /// Pad every batch to this many tokens (`reference` normalisation); none: each
    /// batch to its longest row.
    #[serde(default)]
    pub pad_to: Option<usize>,
}

fn initial_loss_scale() -> f64 {
    LossScale::INITIAL
}

impl TrainSettings {
    /// The defaults of a stage of `kind`, the one place they are written: recipes, the
    /// `finetune` command and the trainer all start from these. 3 epochs, lr 5e-5,
    /// batch 32, weight decay 0.01, clipping at 1.0, length grouping, a checkpoint
    /// every 200 steps; TinyBERT's layer-matching stages (general, intermediate) train
    /// at a constant rate, the others warm up over 10% of the steps and then decay
    /// linearly.
    pub const fn for_stage(kind: StageKind) -> TrainSettings {
        let layers_only = kind.trains_layers_only();
        TrainSettings {
            epochs: 3,
            max_steps: None,
            learning_rate: 5e-5,
            batch_size: 32,
            warmup_ratio: if layers_only { 0.0 } else { 0.1 },
            schedule: if layers_only {
                Schedule::Constant
            } else {
                Schedule::Linear
            },
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            eval_every: 0,
            patience: None,
            group_by_length: true,
            checkpoint_every: 200,
            log_every: 10,
            precision: Precision::F32,
            initial_loss_scale: LossScale::INITIAL,
            normalise: Normalise::Tokens,
            pad_to: None,
        }
    }

    /// AdamW as a stage with these settings runs it.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig::new(self.learning_rate, self.weight_decay)
    }
}

/// A stage that trains the whole model (prediction, fine-tuning) at its defaults.
impl Default for TrainSettings {
    fn default() -> Self {
        Self::for_stage(StageKind::Finetune)
    }
}

/// Scores of one evaluation; `main` selects the best checkpoint (higher is better).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub main: f64,
    pub metrics: BTreeMap<String, f64>,
}

/// Evaluates the student on held-out data (GLUE dev, say).
pub trait Evaluator: Sync {
    fn evaluate(&self, model: &BertForSequenceClassification) -> Result<Scores>;
}

/// Where a stage stands, saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub stage: usize,
    pub epoch: usize,
    pub step_in_epoch: usize,
    pub step: usize,
    /// The order generator as it was at the start of `epoch`.
    pub order_rng: Rng,
    pub dropout_rng: Rng,
    pub best: Option<Scores>,
    pub best_step: Option<usize>,
    pub evals_since_best: usize,
    pub metrics_len: u64,
    pub finished: bool,
    /// The f16 loss scale (mixed precision in f16 only).
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageSummary {
    pub name: String,
    pub steps: usize,
    pub seconds: f64,
    /// Of `seconds`, those the steps waited for a streamed corpus's rows (read,
    /// tokenised, packed, exchanged); zero for rows held in memory.
    #[serde(default)]
    pub data_seconds: f64,
    pub final_loss: f64,
    pub best: Option<Scores>,
    pub best_step: Option<usize>,
    pub stopped_early: bool,
}

/// The stage about to run.
pub struct Stage<'a> {
    pub index: usize,
    pub name: &'a str,
    pub kind: StageKind,
    pub losses: LossWeights,
    pub layer_map: &'a LayerMap,
    pub settings: &'a TrainSettings,
    pub data: StageRows<'a>,
    /// Teacher logits per example (cached, for in-memory rows), for prediction losses.
    pub teacher_logits: Option<&'a Tensor>,
    /// Save the best dev checkpoint (the final stage).
    pub keep_best: bool,
    pub seed: u64,
}

/// A stage's training rows: tokenised in memory, or streamed from a corpus.
#[derive(Clone, Copy)]
pub enum StageRows<'a> {
    Encoded(&'a EncodedDataset),
    Corpus(&'a Corpus),
}

impl<'a> From<&'a EncodedDataset> for StageRows<'a> {
    fn from(data: &'a EncodedDataset) -> Self {
        StageRows::Encoded(data)
    }
}

/// The rows of one step: `indices` of `data`, whose token counts are `lengths`.
struct StepRows<'r> {
    data: &'r EncodedDataset,
    lengths: &'r [usize],
    indices: &'r [usize],
    /// Which rows of `data` this replica holds (a corpus's lanes); `None` when it
    /// holds them all and trains on its contiguous share of each batch.
    held: Option<&'r [bool]>,
}

impl StepRows<'_> {
    /// The rows of the batch this replica trains on: those it holds, or its
    /// contiguous share.
    fn mine(&self, parallel: Option<&dyn AllReduce>) -> std::borrow::Cow<'_, [usize]> {
        match (parallel, self.held) {
            (None, _) => self.indices.into(),
            (Some(_), Some(held)) => self
                .indices
                .iter()
                .copied()
                .filter(|&i| held[i])
                .collect::<Vec<_>>()
                .into(),
            (Some(p), None) => {
                let r = shard_range(self.indices.len(), p.rank(), p.world_size());
                self.indices[r].into()
            }
        }
    }
}

pub struct Trainer<'a> {
    pub teacher: Option<&'a BertForSequenceClassification>,
    pub student: &'a Student,
    pub evaluator: Option<&'a dyn Evaluator>,
    pub run: &'a RunDir,
    pub device: Device,
    /// Testing aid: fail as a killed process would, right after this many steps of a
    /// stage (before any checkpoint of that step is written).
    pub interrupt_after: Option<usize>,
    /// Data-parallel group: this replica trains on its share of every batch, and only
    /// the leader logs, evaluates and writes checkpoints.
    pub parallel: Option<&'a dyn AllReduce>,
}

/// Refuses loss choices the two architectures cannot support.
pub fn check_compatible(
    losses: &LossWeights,
    student: &crate::model::BertConfig,
    teacher: &crate::model::BertConfig,
) -> Result<()> {
    if losses.needs_attention() && student.num_attention_heads != teacher.num_attention_heads {
        return Err(Error::msg(format!(
            "the attention loss compares attention maps head by head, but the student has {} heads and the \
             teacher {}. Give the student {} heads (its width {} must then be divisible by it), or set the \
             attention loss weight to 0.",
            student.num_attention_heads,
            teacher.num_attention_heads,
            teacher.num_attention_heads,
            student.hidden_size
        )));
    }
    if student.vocab_size != teacher.vocab_size {
        return Err(Error::msg(format!(
            "student vocabulary ({}) differs from the teacher's ({}): they must share one tokenizer",
            student.vocab_size, teacher.vocab_size
        )));
    }
    Ok(())
}

/// What a stage works out once, before its first step.
struct StagePlan<'s> {
    teacher: Option<&'s BertForSequenceClassification>,
    /// (student layer, teacher layer) pairs of the intermediate losses.
    pairs: Vec<(usize, usize)>,
    want: Outputs,
    /// Tokens of each training row.
    lengths: Vec<usize>,
    total_steps: usize,
    warmup_steps: usize,
    parallel: Option<&'s dyn AllReduce>,
    leader: bool,
}

/// What the step loop of a stage carries from step to step.
struct LoopState<'l> {
    optimizer: &'l mut AdamW,
    progress: &'l mut Progress,
    bar: &'l indicatif::ProgressBar,
    last_loss: f64,
    stopped_early: bool,
    /// Seconds spent waiting for a streamed corpus's chunks.
    data_seconds: f64,
}

/// One optimizer step, for the log.
struct StepRecord {
    loss: f64,
    parts: BTreeMap<String, f64>,
    lr: f64,
    grad_norm: Option<f64>,
}

impl<'a> Trainer<'a> {
    /// Restores student variables from the resume checkpoint.
    pub fn restore_student(&self) -> Result<()> {
        checkpoint::restore_student(self.run, self.student, &self.device)
    }

    /// Runs (or continues) one stage. `resume` is the saved progress when it belongs
    /// to this stage.
    pub fn run_stage(&self, stage: &Stage, resume: Option<Progress>) -> Result<StageSummary> {
        let plan = self.plan(stage)?;
        let (mut optimizer, mut progress) = self.start_or_resume(stage, &plan, resume)?;
        let started = Instant::now();
        let bar = crate::progress::bar(plan.total_steps as u64, stage.name);
        if !plan.leader {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_position(progress.step as u64);
        let mut state = LoopState {
            optimizer: &mut optimizer,
            progress: &mut progress,
            bar: &bar,
            last_loss: f64::NAN,
            stopped_early: false,
            data_seconds: 0.0,
        };
        while state.progress.epoch < stage.settings.epochs
            && state.progress.step < plan.total_steps
            && !state.progress.finished
        {
            match stage.data {
                StageRows::Encoded(data) => self.epoch_in_memory(stage, &plan, data, &mut state)?,
                StageRows::Corpus(corpus) => {
                    self.epoch_streamed(stage, &plan, corpus, &mut state)?
                }
            }
        }
        bar.finish_and_clear();
        Ok(StageSummary {
            name: stage.name.to_string(),
            steps: state.progress.step,
            seconds: started.elapsed().as_secs_f64(),
            data_seconds: state.data_seconds,
            final_loss: state.last_loss,
            best: state.progress.best.clone(),
            best_step: state.progress.best_step,
            stopped_early: state.stopped_early,
        })
    }

    /// The rest of one epoch over rows in memory, in the epoch's seeded batch order.
    fn epoch_in_memory(
        &self,
        stage: &Stage,
        plan: &StagePlan,
        data: &EncodedDataset,
        state: &mut LoopState,
    ) -> Result<()> {
        let mut epoch_rng = state.progress.order_rng.clone();
        let batches = batch_order(
            &plan.lengths,
            stage.settings.batch_size,
            stage.settings.group_by_length,
            &mut epoch_rng,
        );
        for batch in batches.iter().skip(state.progress.step_in_epoch) {
            let rows = StepRows {
                data,
                lengths: &plan.lengths,
                indices: batch,
                held: None,
            };
            let record = self.step(stage, plan, &rows, state.optimizer, state.progress)?;
            let epoch_end = state.progress.step_in_epoch == batches.len();
            if epoch_end {
                state.progress.order_rng = epoch_rng.clone();
            }
            if self.after_step(stage, plan, &record, epoch_end, state)? {
                break;
            }
        }
        Ok(())
    }

    /// The rest of one epoch streamed from a corpus, a chunk of rows at a time: with
    /// `group_by_length`, 50 batches' rows ordered as [`batch_order`] orders a dataset
    /// (sorted by length, the batches shuffled), else one batch's. Each replica holds
    /// the rows of its own lanes and trains on those of each batch. A resumed epoch
    /// replays the chunks already trained on, then skips the batches of its chunk.
    fn epoch_streamed(
        &self,
        stage: &Stage,
        plan: &StagePlan,
        corpus: &Corpus,
        state: &mut LoopState,
    ) -> Result<()> {
        let settings = stage.settings;
        let chunk_batches = if settings.group_by_length {
            GROUP_CHUNK_BATCHES
        } else {
            1
        };
        let chunk_rows = chunk_batches * settings.batch_size;
        let (epoch, done) = (state.progress.epoch, state.progress.step_in_epoch);
        let (rank, world) = plan.parallel.map_or((0, 1), |p| (p.rank(), p.world_size()));
        // Read ahead on a thread only for a GPU: on the CPU the trainer's own pool keeps
        // every core busy (src/data/corpus/reader.rs).
        let ahead = !self.device.is_cpu();
        let waiting = Instant::now();
        let mut stream = ChunkStream::open(corpus, epoch, (rank, world), ahead)?;
        let exchange = |table: Vec<f32>| self.exchange(plan, table);
        for _ in 0..done / chunk_batches {
            stream.next_chunk(chunk_rows, &exchange)?;
        }
        state.data_seconds += waiting.elapsed().as_secs_f64();
        let (mut chunk, mut skip) = (done / chunk_batches, done % chunk_batches);
        loop {
            let waiting = Instant::now();
            let Chunk {
                lengths,
                rows,
                ended,
            } = stream.next_chunk(chunk_rows, &exchange)?;
            state.data_seconds += waiting.elapsed().as_secs_f64();
            if lengths.is_empty() {
                return self.end_of_stream(stage, corpus, state.progress);
            }
            let mut rng = state
                .progress
                .order_rng
                .clone()
                .fork(((epoch as u64) << 32) | chunk as u64);
            let batches = batch_order(
                &lengths,
                settings.batch_size,
                settings.group_by_length,
                &mut rng,
            );
            let held: Vec<bool> = rows.iter().map(Option::is_some).collect();
            let data = EncodedDataset {
                labels: vec![Label::Unlabeled; rows.len()],
                encodings: rows.into_iter().map(Option::unwrap_or_default).collect(),
                regression: false,
                pad_id: corpus.pad_id(),
            };
            for (i, batch) in batches.iter().enumerate().skip(skip) {
                let rows = StepRows {
                    data: &data,
                    lengths: &lengths,
                    indices: batch,
                    held: Some(&held),
                };
                let record = self.step(stage, plan, &rows, state.optimizer, state.progress)?;
                let epoch_end = ended && i + 1 == batches.len();
                if self.after_step(stage, plan, &record, epoch_end, state)? {
                    return Ok(());
                }
            }
            (chunk, skip) = (chunk + 1, 0);
        }
    }

    /// Sums a corpus chunk's table across the group (it is this replica's alone
    /// without one).
    fn exchange(&self, plan: &StagePlan, table: Vec<f32>) -> Result<Vec<f32>> {
        match plan.parallel {
            Some(p) => parallel::sum_table(p, table, &self.device),
            None => Ok(table),
        }
    }

    /// The stream ran out before a batch: the end of the epoch (a corpus resumed at
    /// its very end), or of a corpus without text.
    fn end_of_stream(&self, stage: &Stage, corpus: &Corpus, progress: &mut Progress) -> Result<()> {
        if progress.step_in_epoch == 0 {
            return Err(Error::msg(format!(
                "stage `{}`: the corpus has no text ({} shards)",
                stage.name,
                corpus.files().len()
            )));
        }
        self.end_epoch(progress);
        Ok(())
    }

    /// Logs, evaluates and checkpoints after a step; true when the epoch or the stage
    /// is over.
    fn after_step(
        &self,
        stage: &Stage,
        plan: &StagePlan,
        record: &StepRecord,
        epoch_end: bool,
        state: &mut LoopState,
    ) -> Result<bool> {
        let progress = &mut *state.progress;
        state.last_loss = record.loss;
        if self.interrupt_after == Some(progress.step) {
            return Err(Error::msg(format!(
                "interrupted after step {}",
                progress.step
            )));
        }
        state.bar.set_position(progress.step as u64);
        state.bar.set_message(format!("loss {:.4}", record.loss));
        state.stopped_early |= self.log_and_evaluate(stage, plan, record, epoch_end, progress)?;
        if epoch_end {
            self.end_epoch(progress);
        }
        progress.finished |= progress.step >= plan.total_steps;
        self.checkpoint_if_due(stage, plan, epoch_end, state.optimizer, progress)?;
        Ok(progress.finished || epoch_end)
    }

    fn end_epoch(&self, progress: &mut Progress) {
        progress.epoch += 1;
        progress.step_in_epoch = 0;
    }

    /// Checks the stage and works out its teacher, layer pairs and step counts.
    fn plan(&self, stage: &Stage<'a>) -> Result<StagePlan<'a>> {
        let settings = stage.settings;
        stage.losses.validate(stage.name)?;
        if matches!(stage.data, StageRows::Encoded(d) if d.is_empty()) {
            return Err(Error::msg(format!(
                "stage `{}` has no training data",
                stage.name
            )));
        }
        if settings.batch_size == 0 {
            return Err(Error::invalid(
                stage.name,
                "batch_size",
                "must be at least 1",
            ));
        }
        let teacher = self.stage_teacher(stage)?;
        let pairs = match teacher {
            Some(t) => {
                check_compatible(&stage.losses, &self.student.config, t.config())?;
                mapping::resolve(
                    stage.layer_map,
                    self.student.config.num_hidden_layers,
                    t.config().num_hidden_layers,
                )?
            }
            None => Vec::new(),
        };
        let (lengths, total_steps) = match stage.data {
            StageRows::Encoded(data) => {
                let lengths = data.lengths();
                let batches_per_epoch = lengths.len().div_ceil(settings.batch_size);
                let steps = settings
                    .max_steps
                    .unwrap_or(usize::MAX)
                    .min(batches_per_epoch * settings.epochs);
                (lengths, steps)
            }
            // A stream's length is unknown until read: the recipe gives the steps.
            StageRows::Corpus(_) => (
                Vec::new(),
                settings.max_steps.ok_or_else(|| {
                    Error::invalid(
                        stage.name,
                        "max_steps",
                        "a corpus is streamed and its length is not known ahead: set max_steps",
                    )
                })?,
            ),
        };
        let parallel = self.parallel.filter(|p| p.world_size() > 1);
        Ok(StagePlan {
            teacher,
            pairs,
            want: Outputs {
                hidden_states: stage.losses.needs_hidden_states(),
                attention_scores: stage.losses.needs_attention(),
            },
            lengths,
            total_steps,
            warmup_steps: (settings.warmup_ratio * total_steps as f64).round() as usize,
            parallel,
            leader: parallel.is_none_or(|p| p.is_leader()),
        })
    }

    /// The teacher when the stage's losses need its forward pass (cached logits do not).
    fn stage_teacher(&self, stage: &Stage) -> Result<Option<&'a BertForSequenceClassification>> {
        let needs_forward = stage.losses.needs_hidden_states()
            || stage.losses.needs_attention()
            || (stage.losses.needs_teacher_logits() && stage.teacher_logits.is_none());
        match (needs_forward, self.teacher) {
            (true, None) => Err(Error::msg(format!(
                "stage `{}` needs a teacher and none was given",
                stage.name
            ))),
            (true, teacher) => Ok(teacher),
            (false, _) => Ok(None),
        }
    }

    /// A fresh optimizer and progress, or both as the resume checkpoint holds them;
    /// every replica then starts from the leader's weights.
    fn start_or_resume(
        &self,
        stage: &Stage,
        plan: &StagePlan,
        resume: Option<Progress>,
    ) -> Result<(AdamW, Progress)> {
        let settings = stage.settings;
        let mut optimizer = AdamW::new(self.student.trainable_vars(), settings.adamw())?;
        let progress = match resume {
            Some(p) => {
                let skipped = p.loss_scale.as_ref().map_or(0, |s| s.skipped);
                checkpoint::restore_optimizer(
                    self.run,
                    &mut optimizer,
                    p.step - skipped,
                    &self.device,
                )?;
                self.restore_student()?;
                if plan.leader {
                    self.run.truncate_metrics(p.metrics_len)?;
                }
                tracing::info!(
                    "stage {}: resuming at step {} of {}",
                    stage.name,
                    p.step,
                    plan.total_steps
                );
                p
            }
            None => self.fresh_progress(stage),
        };
        if let Some(p) = plan.parallel {
            parallel::broadcast_from_leader(p, &optimizer.vars().collect::<Vec<_>>())?;
        }
        Ok((optimizer, progress))
    }

    fn fresh_progress(&self, stage: &Stage) -> Progress {
        let settings = stage.settings;
        let mut base = Rng::new(stage.seed ^ (stage.index as u64).wrapping_mul(0x9E37_79B9));
        Progress {
            stage: stage.index,
            epoch: 0,
            step_in_epoch: 0,
            step: 0,
            order_rng: base.fork(1),
            dropout_rng: base.fork(2),
            best: None,
            best_step: None,
            evals_since_best: 0,
            metrics_len: self.run.metrics_len(),
            finished: false,
            loss_scale: settings.precision.needs_loss_scaling().then(|| LossScale {
                scale: settings.initial_loss_scale,
                ..Default::default()
            }),
        }
    }

    /// One optimizer step on `rows`; advances the step counters.
    fn step(
        &self,
        stage: &Stage,
        plan: &StagePlan,
        rows: &StepRows,
        optimizer: &mut AdamW,
        progress: &mut Progress,
    ) -> Result<StepRecord> {
        let settings = stage.settings;
        let lr = lr_at(
            settings.schedule,
            settings.learning_rate,
            progress.step,
            plan.total_steps,
            plan.warmup_steps,
        );
        optimizer.set_lr(lr);
        let (mut grads, mut loss, parts) = self.gradients(stage, plan, rows, progress)?;
        if let Some(p) = plan.parallel {
            let vars: Vec<&candle_core::Var> = optimizer.vars().collect();
            loss = parallel::sum_over_workers(p, &vars, &mut grads, loss)?;
        }
        let grad_norm = self.apply(stage, optimizer, &grads, progress)?;
        progress.step += 1;
        progress.step_in_epoch += 1;
        Ok(StepRecord {
            loss,
            parts,
            lr,
            grad_norm,
        })
    }

    /// This worker's gradients and loss on its share of `rows`. A data-parallel
    /// worker trains on its share, padded as the whole batch, its loss weighted by its
    /// share of the rows: the summed gradients are then those of the whole batch. With
    /// several workers, the logged loss parts are the leader's share's.
    fn gradients(
        &self,
        stage: &Stage,
        plan: &StagePlan,
        rows: &StepRows,
        progress: &mut Progress,
    ) -> Result<(GradStore, f64, BTreeMap<String, f64>)> {
        let batch = rows.indices;
        // Each worker draws its own dropout masks, from its own fork, every step.
        let mut worker_dropout = plan
            .parallel
            .map(|p| progress.dropout_rng.fork(p.rank() as u64 + 1));
        let mine = rows.mine(plan.parallel);
        let mine = mine.as_ref();
        let share = mine.len() as f64 / batch.len() as f64;
        if mine.is_empty() {
            // No rows here (a batch smaller than the group): no gradient of its own.
            let none = Tensor::zeros((), DType::F32, &self.device)?.backward()?;
            return Ok((none, 0.0, BTreeMap::new()));
        }
        let longest = batch.iter().map(|&i| rows.lengths[i]).max().unwrap_or(0);
        let pad_to = stage.settings.pad_to.map_or(longest, |p| p.max(longest));
        let Batch { input, labels, .. } = rows.data.batch_padded(mine, pad_to, &self.device)?;
        let teacher_out = match plan.teacher {
            Some(t) => Some(t.forward(&input, plan.want, None)?),
            None => None,
        };
        let cached_logits = self.cached_logits(stage, mine)?;
        let cast;
        let (model, projections) = match stage.settings.precision {
            Precision::F32 => (&self.student.model, &self.student.projections),
            p => {
                cast = self.student.cast(p.compute_dtype())?;
                (&cast.0, &cast.1)
            }
        };
        let dropout = worker_dropout.as_mut().unwrap_or(&mut progress.dropout_rng);
        let student_out = model.forward(&input, plan.want, Some(dropout))?;
        let (loss, parts) = BatchLoss {
            stage: stage.name,
            weights: &stage.losses,
            normalise: stage.settings.normalise,
            pairs: &plan.pairs,
            input: &input,
            projections,
            student: &student_out,
            teacher: teacher_out.as_ref(),
            teacher_logits: cached_logits.as_ref(),
            targets: labels.as_ref(),
            share: TokenShare::of(mine, batch, rows.lengths, share),
        }
        .compute()?;
        let loss = if share == 1.0 { loss } else { (loss * share)? };
        let loss_scale = progress.loss_scale.as_ref().map_or(1.0, |s| s.scale);
        let grads = if loss_scale == 1.0 {
            loss.backward()?
        } else {
            (&loss * loss_scale)?.backward()?
        };
        Ok((grads, scalar(&loss)?, parts))
    }

    /// The cached teacher logits of `rows`, on this trainer's device.
    fn cached_logits(&self, stage: &Stage, rows: &[usize]) -> Result<Option<Tensor>> {
        let Some(all) = stage.teacher_logits else {
            return Ok(None);
        };
        let idx: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
        let picked = all.index_select(&Tensor::new(idx.as_slice(), all.device())?, 0)?;
        Ok(Some(picked.to_device(&self.device)?))
    }

    /// Clips and applies the gradients (unscaled first under f16 loss scaling, the step
    /// skipped on overflow); returns the gradient norm, none for a skipped step.
    fn apply(
        &self,
        stage: &Stage,
        optimizer: &mut AdamW,
        grads: &GradStore,
        progress: &mut Progress,
    ) -> Result<Option<f64>> {
        let clip = stage.settings.max_grad_norm;
        let Some(scaler) = &mut progress.loss_scale else {
            return Ok(Some(optimizer.step(grads, clip)?));
        };
        let norm = optimizer.step_scaled(grads, clip, scaler.scale)?;
        if norm.is_none() && scaler.scale <= LossScale::MIN {
            return Err(Error::msg(format!(
                "stage `{}`: f16 gradients overflow even at loss scale 1 (step {}): the loss \
                 diverged; lower the learning rate or train in bf16",
                stage.name,
                progress.step + 1
            )));
        }
        scaler.update(norm.is_none());
        Ok(norm)
    }

    /// Logs the step (the leader, every `log_every` steps and the last) and evaluates
    /// when due; returns true when the stage stops early (patience ran out).
    fn log_and_evaluate(
        &self,
        stage: &Stage,
        plan: &StagePlan,
        record: &StepRecord,
        epoch_end: bool,
        progress: &mut Progress,
    ) -> Result<bool> {
        let settings = stage.settings;
        let last_step = progress.step >= plan.total_steps;
        if plan.leader && (progress.step.is_multiple_of(settings.log_every.max(1)) || last_step) {
            let mut line = serde_json::json!({
                "stage": stage.name, "step": progress.step, "epoch": progress.epoch,
                "loss": record.loss, "losses": record.parts, "lr": record.lr,
                "grad_norm": record.grad_norm,
            });
            if let Some(s) = &progress.loss_scale {
                line["loss_scale"] = s.scale.into();
                line["skipped_steps"] = s.skipped.into();
            }
            self.run.log(&line)?;
        }
        let due = settings.eval_every > 0 && progress.step.is_multiple_of(settings.eval_every);
        if !(due || epoch_end || last_step) {
            return Ok(false);
        }
        let mut stop = false;
        if let (true, Some(evaluator)) = (plan.leader, self.evaluator) {
            stop = self.evaluate(stage, evaluator, progress)?;
        }
        if let Some(p) = plan.parallel {
            stop = parallel::leader_decides(p, stop, &self.device)?;
        }
        progress.finished |= stop;
        Ok(stop)
    }

    /// The leader writes the resume checkpoint at the end of the stage, of each epoch,
    /// and every `checkpoint_every` steps.
    fn checkpoint_if_due(
        &self,
        stage: &Stage,
        plan: &StagePlan,
        epoch_end: bool,
        optimizer: &AdamW,
        progress: &mut Progress,
    ) -> Result<()> {
        let every = stage.settings.checkpoint_every.max(1);
        if plan.leader && (progress.finished || epoch_end || progress.step.is_multiple_of(every)) {
            progress.metrics_len = self.run.metrics_len();
            checkpoint::save_resume(self.run, self.student, optimizer, progress)?;
        }
        Ok(())
    }

    /// Evaluates, logs, keeps the best checkpoint; returns true when patience ran out.
    fn evaluate(
        &self,
        stage: &Stage,
        evaluator: &dyn Evaluator,
        progress: &mut Progress,
    ) -> Result<bool> {
        let scores = evaluator.evaluate(&self.student.model)?;
        self.run.log(&serde_json::json!({
            "stage": stage.name, "step": progress.step, "eval": scores.metrics, "main": scores.main,
        }))?;
        tracing::info!(
            "{} step {}: dev {:.4}",
            stage.name,
            progress.step,
            scores.main
        );
        let improved = progress.best.as_ref().is_none_or(|b| scores.main > b.main);
        if improved {
            progress.best = Some(scores);
            progress.best_step = Some(progress.step);
            progress.evals_since_best = 0;
            if stage.keep_best {
                checkpoint::save_best(self.run, self.student)?;
            }
            Ok(false)
        } else {
            progress.evals_since_best += 1;
            Ok(stage
                .settings
                .patience
                .is_some_and(|p| progress.evals_since_best >= p))
        }
    }
}
