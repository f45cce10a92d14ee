//! One training stage: intermediate (attention + hidden), prediction (soft logits),
//! general distillation, or plain fine-tuning. Checkpoints to the run folder and
//! resumes bit-for-bit from it.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use super::losses::{self, LossWeights, Normalise};
use super::mapping::{self, LayerMap};
use super::student::{project, Student};
use crate::model::bert::Linear;
use crate::model::{BertForSequenceClassification, ClassifierOutput, Outputs};
use crate::rng::Rng;
use crate::run::{CheckpointFile, RunDir};
use crate::tokenizer::{pad_batch_to, Encoded};
use crate::train::parallel::{shard_range, AllReduce};
use crate::train::{lr_at, AdamW, AdamWConfig, LossScale, Precision, Schedule};
use crate::{Error, Result};

/// The gold target of one example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Class(u32),
    Score(f32),
    None,
}

#[derive(Debug, Clone)]
pub struct TrainExample {
    pub encoded: Encoded,
    pub target: Target,
}

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

/// A recipe stage's defaults (3 epochs, lr 5e-5, batch 32, 10% warm-up then linear decay,
/// weight decay 0.01, clipping at 1.0, length grouping, a checkpoint every 200 steps).
impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            epochs: 3,
            max_steps: None,
            learning_rate: 5e-5,
            batch_size: 32,
            warmup_ratio: 0.1,
            schedule: Schedule::Linear,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            eval_every: 0,
            patience: None,
            group_by_length: true,
            checkpoint_every: 200,
            log_every: 10,
            precision: Precision::F32,
            initial_loss_scale: LossScale::INITIAL,
            normalise: Normalise::default(),
            pad_to: None,
        }
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
    pub data: &'a [TrainExample],
    /// Teacher logits per example (cached), for prediction losses.
    pub teacher_logits: Option<&'a Tensor>,
    /// Save the best dev checkpoint (the final stage).
    pub keep_best: bool,
    pub seed: u64,
}

pub struct Trainer<'a> {
    pub teacher: Option<&'a BertForSequenceClassification>,
    pub student: &'a Student,
    pub evaluator: Option<&'a dyn Evaluator>,
    pub run: &'a RunDir,
    pub device: Device,
    pub pad_id: u32,
    /// Testing aid: fail as a killed process would, right after this many steps of a
    /// stage (before any checkpoint of that step is written).
    pub interrupt_after: Option<usize>,
    /// Data-parallel group: this replica trains on its share of every batch, and only
    /// the leader logs, evaluates and writes checkpoints.
    pub parallel: Option<&'a dyn AllReduce>,
}

/// The batches of one epoch: shuffled, optionally grouped by length (sorted inside
/// chunks of 50 batches, then chunks shuffled), the last incomplete batch kept.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    group_by_length: bool,
    rng: &mut Rng,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    if group_by_length {
        for chunk in order.chunks_mut(batch_size * 50) {
            chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(|c| c.to_vec()).collect();
    if group_by_length {
        rng.shuffle(&mut batches);
    }
    batches
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

/// A data-parallel worker's loss is multiplied by its share of the batch's rows; a
/// mean over its own real tokens (or real attention pairs) needs another factor for
/// the workers' sum to be the whole batch's mean: these, divided by the row share.
#[derive(Debug, Clone, Copy)]
struct TokenShare {
    tokens: f64,
    pairs: f64,
}

impl TokenShare {
    fn of(mine: &[usize], batch: &[usize], lengths: &[usize], row_share: f64) -> Self {
        let sum = |rows: &[usize], f: &dyn Fn(usize) -> f64| -> f64 {
            rows.iter().map(|&i| f(lengths[i])).sum()
        };
        let ratio = |f: &dyn Fn(usize) -> f64| {
            let whole = sum(batch, f);
            if whole > 0.0 && row_share > 0.0 {
                sum(mine, f) / whole / row_share
            } else {
                1.0
            }
        };
        TokenShare {
            tokens: ratio(&|n| n as f64),
            pairs: ratio(&|n| (n * n) as f64),
        }
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64)
}

impl Trainer<'_> {
    fn targets(&self, batch: &[&TrainExample]) -> Result<Option<Tensor>> {
        match batch.first().map(|e| e.target) {
            Some(Target::Class(_)) => {
                let v = batch
                    .iter()
                    .map(|e| match e.target {
                        Target::Class(c) => Ok(c),
                        _ => Err(Error::msg("mixed label kinds in one batch")),
                    })
                    .collect::<Result<Vec<u32>>>()?;
                Ok(Some(Tensor::new(v.as_slice(), &self.device)?))
            }
            Some(Target::Score(_)) => {
                let v = batch
                    .iter()
                    .map(|e| match e.target {
                        Target::Score(s) => Ok(s),
                        _ => Err(Error::msg("mixed label kinds in one batch")),
                    })
                    .collect::<Result<Vec<f32>>>()?;
                Ok(Some(Tensor::new(v.as_slice(), &self.device)?))
            }
            _ => Ok(None),
        }
    }

    /// The weighted loss of one batch and its parts, for logging.
    #[allow(clippy::too_many_arguments)]
    fn batch_loss(
        &self,
        stage: &Stage,
        pairs: &[(usize, usize)],
        input: &crate::model::BertInput,
        projections: &[Linear],
        student_out: &ClassifierOutput,
        teacher_out: Option<&ClassifierOutput>,
        teacher_logits: Option<&Tensor>,
        targets: Option<&Tensor>,
        token_share: TokenShare,
    ) -> Result<(Tensor, BTreeMap<String, f64>)> {
        let w = &stage.losses;
        let (normalise, mask) = (stage.settings.normalise, &input.attention_mask);
        // Token means are over this worker's tokens: rescaled to the whole batch's.
        let (per_pair, per_token) = match normalise {
            Normalise::Tokens => (token_share.pairs, token_share.tokens),
            Normalise::Reference => (1.0, 1.0),
        };
        let mut total: Option<Tensor> = None;
        let mut parts = BTreeMap::new();
        let mut add = |name: &str, weight: f64, loss: Tensor| -> Result<()> {
            parts.insert(name.to_string(), scalar(&loss)?);
            let weighted = (loss * weight)?;
            total = Some(match total.take() {
                Some(t) => (t + weighted)?,
                None => weighted,
            });
            Ok(())
        };
        let s_enc = &student_out.encoder;
        if let Some(t) = teacher_out {
            let t_enc = &t.encoder;
            if w.attention > 0.0 {
                let mut sum: Option<Tensor> = None;
                for &(s, tl) in pairs {
                    let l = normalise.attention_mse(
                        &s_enc.attention_scores[s - 1],
                        &t_enc.attention_scores[tl - 1],
                        mask,
                    )?;
                    sum = Some(match sum {
                        Some(x) => (x + l)?,
                        None => l,
                    });
                }
                if let Some(sum) = sum {
                    add("attention", w.attention * per_pair, sum)?;
                }
            }
            if w.hidden > 0.0 || w.cosine > 0.0 {
                let mut mse: Option<Tensor> = None;
                let mut cos: Option<Tensor> = None;
                for &(s, tl) in pairs {
                    let projected = project(projections, s, &s_enc.hidden_states[s])?;
                    let target = &t_enc.hidden_states[tl];
                    if w.hidden > 0.0 {
                        let l = normalise.hidden_mse(&projected, target, mask)?;
                        mse = Some(match mse {
                            Some(x) => (x + l)?,
                            None => l,
                        });
                    }
                    if w.cosine > 0.0 {
                        let l = losses::hidden_cosine(&projected, target, &input.attention_mask)?;
                        cos = Some(match cos {
                            Some(x) => (x + l)?,
                            None => l,
                        });
                    }
                }
                if let Some(l) = mse {
                    add("hidden", w.hidden * per_token, l)?;
                }
                if let Some(l) = cos {
                    add("cosine", w.cosine, l)?;
                }
            }
            if w.embedding > 0.0 {
                let projected = project(projections, 0, &s_enc.hidden_states[0])?;
                let l = normalise.hidden_mse(&projected, &t_enc.hidden_states[0], mask)?;
                add("embedding", w.embedding * per_token, l)?;
            }
        }
        let logits = &student_out.logits;
        let regression = logits.dim(D::Minus1)? == 1;
        let teacher_logits = match (teacher_logits, teacher_out) {
            (Some(l), _) => Some(l.clone()),
            (None, Some(t)) => Some(t.logits.clone()),
            _ => None,
        };
        if let Some(t) = &teacher_logits {
            let t2 = if w.t2_scale {
                w.temperature * w.temperature
            } else {
                1.0
            };
            if regression {
                // Regression distils the teacher's score (TinyBERT's reference used gold, #128).
                let weight = w.soft_ce + w.kl + w.logits_mse;
                if weight > 0.0 {
                    add("logits_mse", weight, losses::logits_mse(logits, t)?)?;
                }
            } else {
                if w.soft_ce > 0.0 {
                    add(
                        "soft_ce",
                        w.soft_ce * t2,
                        losses::soft_cross_entropy(logits, t, w.temperature)?,
                    )?;
                }
                if w.kl > 0.0 {
                    add(
                        "kl",
                        w.kl * t2,
                        losses::kl_divergence(logits, t, w.temperature)?,
                    )?;
                }
                if w.logits_mse > 0.0 {
                    add("logits_mse", w.logits_mse, losses::logits_mse(logits, t)?)?;
                }
            }
        }
        if w.hard > 0.0 {
            let targets = targets.ok_or_else(|| {
                Error::msg(format!(
                    "stage `{}` uses the hard-label loss but its data has no labels",
                    stage.name
                ))
            })?;
            let l = if regression {
                losses::logits_mse(&logits.squeeze(D::Minus1)?, targets)?
            } else {
                losses::hard_cross_entropy(logits, targets)?
            };
            add("hard", w.hard, l)?;
        }
        let total = total
            .ok_or_else(|| Error::msg(format!("stage `{}` has no applicable loss", stage.name)))?;
        Ok((total, parts))
    }

    fn save_resume(&self, optimizer: &AdamW, progress: &Progress) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self
            .student
            .varmap
            .data()
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        self.run.write_checkpoint(
            "last",
            &[
                ("student.safetensors", CheckpointFile::Tensors(tensors)),
                (
                    "optimizer.safetensors",
                    CheckpointFile::Tensors(optimizer.state_tensors()),
                ),
                (
                    "progress.json",
                    CheckpointFile::Json(
                        serde_json::to_value(progress).map_err(|e| Error::msg(e.to_string()))?,
                    ),
                ),
            ],
        )
    }

    /// Restores student variables from the resume checkpoint.
    pub fn restore_student(&self) -> Result<()> {
        let tensors =
            self.run
                .read_checkpoint_tensors("last", "student.safetensors", &self.device)?;
        let data = self.student.varmap.data().lock().expect("lock");
        for (name, var) in data.iter() {
            let t = tensors.get(name).ok_or_else(|| {
                Error::msg(format!(
                    "resume checkpoint has no `{name}`: was the recipe changed?"
                ))
            })?;
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Runs (or continues) one stage. `resume` is the saved progress when it belongs
    /// to this stage.
    pub fn run_stage(&self, stage: &Stage, resume: Option<Progress>) -> Result<StageSummary> {
        let settings = stage.settings;
        stage.losses.validate(stage.name)?;
        if stage.data.is_empty() {
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
        let needs_teacher_forward = stage.losses.needs_hidden_states()
            || stage.losses.needs_attention()
            || (stage.losses.needs_teacher_logits() && stage.teacher_logits.is_none());
        let teacher = match (needs_teacher_forward, self.teacher) {
            (true, Some(t)) => Some(t),
            (true, None) => {
                return Err(Error::msg(format!(
                    "stage `{}` needs a teacher and none was given",
                    stage.name
                )))
            }
            (false, _) => None,
        };
        if let Some(t) = teacher {
            check_compatible(&stage.losses, &self.student.config, t.config())?;
        }
        let pairs = match teacher {
            Some(t) => mapping::resolve(
                stage.layer_map,
                self.student.config.num_hidden_layers,
                t.config().num_hidden_layers,
            )?,
            None => Vec::new(),
        };
        let want = Outputs {
            hidden_states: stage.losses.needs_hidden_states(),
            attention_scores: stage.losses.needs_attention(),
        };

        let lengths: Vec<usize> = stage.data.iter().map(|e| e.encoded.ids.len()).collect();
        let batches_per_epoch = lengths.len().div_ceil(settings.batch_size);
        let total_steps = settings
            .max_steps
            .unwrap_or(usize::MAX)
            .min(batches_per_epoch * settings.epochs);
        let warmup = (settings.warmup_ratio * total_steps as f64).round() as usize;

        let vars: Vec<(String, candle_core::Var)> = self
            .student
            .varmap
            .data()
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut optimizer = AdamW::new(
            vars,
            AdamWConfig {
                lr: settings.learning_rate,
                weight_decay: settings.weight_decay,
                ..Default::default()
            },
        )?;

        let parallel = self.parallel.filter(|p| p.world_size() > 1);
        let leader = parallel.is_none_or(|p| p.is_leader());
        let mut base = Rng::new(stage.seed ^ (stage.index as u64).wrapping_mul(0x9E37_79B9));
        let mut progress = match resume {
            Some(p) => {
                let opt_state = self.run.read_checkpoint_tensors(
                    "last",
                    "optimizer.safetensors",
                    &self.device,
                )?;
                let skipped = p.loss_scale.as_ref().map_or(0, |s| s.skipped);
                optimizer.load_state(&opt_state, p.step - skipped)?;
                self.restore_student()?;
                if leader {
                    self.run.truncate_metrics(p.metrics_len)?;
                }
                tracing::info!(
                    "stage {}: resuming at step {} of {total_steps}",
                    stage.name,
                    p.step
                );
                p
            }
            None => Progress {
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
            },
        };
        if let Some(p) = parallel {
            broadcast_weights(p, &optimizer)?;
        }
        let started = Instant::now();
        let mut last_loss = f64::NAN;
        let mut stopped_early = false;
        let bar = crate::progress::bar(total_steps as u64, stage.name);
        if !leader {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_position(progress.step as u64);

        'epochs: while progress.epoch < settings.epochs
            && progress.step < total_steps
            && !progress.finished
        {
            let mut epoch_rng = progress.order_rng.clone();
            let batches = epoch_batches(
                &lengths,
                settings.batch_size,
                settings.group_by_length,
                &mut epoch_rng,
            );
            for batch_idx in batches.iter().skip(progress.step_in_epoch) {
                // A data-parallel worker trains on its share, padded as the whole batch,
                // its loss weighted by its share of the rows: the summed gradients are
                // then those of the whole batch.
                let (mine, share) = match parallel {
                    Some(p) => {
                        let r = shard_range(batch_idx.len(), p.rank(), p.world_size());
                        (
                            &batch_idx[r.clone()],
                            r.len() as f64 / batch_idx.len() as f64,
                        )
                    }
                    None => (&batch_idx[..], 1.0),
                };
                let token_share = TokenShare::of(mine, batch_idx, &lengths, share);
                let longest = batch_idx.iter().map(|&i| lengths[i]).max().unwrap_or(0);
                let pad_to = settings.pad_to.map_or(longest, |p| p.max(longest));
                let mut step_dropout =
                    parallel.map(|p| progress.dropout_rng.fork(p.rank() as u64 + 1));
                let dropout_rng = match step_dropout.as_mut() {
                    Some(r) => r,
                    None => &mut progress.dropout_rng,
                };
                let lr = lr_at(
                    settings.schedule,
                    settings.learning_rate,
                    progress.step,
                    total_steps,
                    warmup,
                );
                optimizer.set_lr(lr);
                let loss_scale = progress.loss_scale.as_ref().map_or(1.0, |s| s.scale);
                // With several workers, the logged loss parts are the leader's share's.
                let (mut grads, mut loss_value, parts) = if mine.is_empty() {
                    // No rows here (a batch smaller than the group): no gradient of its own.
                    let none = Tensor::zeros((), DType::F32, &self.device)?.backward()?;
                    (none, 0.0, BTreeMap::new())
                } else {
                    let batch: Vec<&TrainExample> = mine.iter().map(|&i| &stage.data[i]).collect();
                    let encoded: Vec<&Encoded> = batch.iter().map(|e| &e.encoded).collect();
                    let input = pad_batch_to(&encoded, pad_to, self.pad_id, &self.device)?;
                    let teacher_out = match teacher {
                        Some(t) => Some(t.forward(&input, want, None)?),
                        None => None,
                    };
                    let cached_logits = match stage.teacher_logits {
                        Some(all) => {
                            let idx: Vec<u32> = mine.iter().map(|&i| i as u32).collect();
                            Some(
                                all.index_select(&Tensor::new(idx.as_slice(), all.device())?, 0)?
                                    .to_device(&self.device)?,
                            )
                        }
                        None => None,
                    };
                    let cast;
                    let (model, projections) = match settings.precision {
                        Precision::F32 => (&self.student.model, &self.student.projections),
                        p => {
                            cast = self.student.cast(p.compute_dtype())?;
                            (&cast.0, &cast.1)
                        }
                    };
                    let student_out = model.forward(&input, want, Some(dropout_rng))?;
                    let targets = self.targets(&batch)?;
                    let (loss, parts) = self.batch_loss(
                        stage,
                        &pairs,
                        &input,
                        projections,
                        &student_out,
                        teacher_out.as_ref(),
                        cached_logits.as_ref(),
                        targets.as_ref(),
                        token_share,
                    )?;
                    let loss = if share == 1.0 { loss } else { (loss * share)? };
                    let grads = if loss_scale == 1.0 {
                        loss.backward()?
                    } else {
                        (&loss * loss_scale)?.backward()?
                    };
                    (grads, scalar(&loss)?, parts)
                };
                if let Some(p) = parallel {
                    loss_value = sum_over_workers(p, &optimizer, &mut grads, loss_value)?;
                }
                let grad_norm = match &mut progress.loss_scale {
                    None => Some(optimizer.step(&grads, settings.max_grad_norm)?),
                    Some(scaler) => {
                        let norm =
                            optimizer.step_scaled(&grads, settings.max_grad_norm, scaler.scale)?;
                        if norm.is_none() && scaler.scale <= LossScale::MIN {
                            return Err(Error::msg(format!(
                                "stage `{}`: f16 gradients overflow even at loss scale 1 (step {}): the loss \
                                 diverged; lower the learning rate or train in bf16",
                                stage.name,
                                progress.step + 1
                            )));
                        }
                        scaler.update(norm.is_none());
                        norm
                    }
                };
                last_loss = loss_value;
                progress.step += 1;
                if self.interrupt_after == Some(progress.step) {
                    return Err(Error::msg(format!(
                        "interrupted after step {}",
                        progress.step
                    )));
                }
                progress.step_in_epoch += 1;
                bar.set_position(progress.step as u64);
                bar.set_message(format!("loss {last_loss:.4}"));
                if leader
                    && (progress.step % settings.log_every.max(1) == 0
                        || progress.step == total_steps)
                {
                    let mut record = serde_json::json!({
                        "stage": stage.name, "step": progress.step, "epoch": progress.epoch,
                        "loss": last_loss, "losses": parts, "lr": lr, "grad_norm": grad_norm,
                    });
                    if let Some(s) = &progress.loss_scale {
                        record["loss_scale"] = s.scale.into();
                        record["skipped_steps"] = s.skipped.into();
                    }
                    self.run.log(&record)?;
                }
                let epoch_end = progress.step_in_epoch == batches.len();
                let last_step = progress.step >= total_steps;
                let eval_now = (settings.eval_every > 0
                    && progress.step % settings.eval_every == 0)
                    || epoch_end
                    || last_step;
                if eval_now {
                    let mut stop = false;
                    if let (true, Some(evaluator)) = (leader, self.evaluator) {
                        stop = self.evaluate(stage, evaluator, &mut progress)?;
                    }
                    if let Some(p) = parallel {
                        stop = leader_decides(p, stop, &self.device)?;
                    }
                    if stop {
                        stopped_early = true;
                        progress.finished = true;
                    }
                }
                if epoch_end {
                    progress.epoch += 1;
                    progress.step_in_epoch = 0;
                    progress.order_rng = epoch_rng.clone();
                }
                if progress.finished || last_step {
                    progress.finished = true;
                }
                if leader
                    && (progress.finished
                        || epoch_end
                        || progress.step % settings.checkpoint_every.max(1) == 0)
                {
                    progress.metrics_len = self.run.metrics_len();
                    self.save_resume(&optimizer, &progress)?;
                }
                if progress.finished {
                    break 'epochs;
                }
                if epoch_end {
                    continue 'epochs;
                }
            }
        }
        bar.finish_and_clear();
        Ok(StageSummary {
            name: stage.name.to_string(),
            steps: progress.step,
            seconds: started.elapsed().as_secs_f64(),
            final_loss: last_loss,
            best: progress.best.clone(),
            best_step: progress.best_step,
            stopped_early,
        })
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
                self.save_best()?;
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

    /// Writes the student as a Hugging Face folder to checkpoints/best.
    fn save_best(&self) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self
            .student
            .varmap
            .data()
            .lock()
            .expect("lock")
            .iter()
            .filter(|(k, _)| !k.starts_with("fit_dense"))
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let config =
            serde_json::to_value(&self.student.config).map_err(|e| Error::msg(e.to_string()))?;
        let tokenizer = self
            .student
            .tokenizer
            .inner()
            .to_string(true)
            .map_err(|e| Error::msg(format!("serialising the tokenizer: {e}")))?;
        self.run.write_checkpoint(
            "best",
            &[
                ("model.safetensors", CheckpointFile::Tensors(tensors)),
                ("config.json", CheckpointFile::Json(config)),
                (
                    "tokenizer.json",
                    CheckpointFile::Bytes(tokenizer.into_bytes()),
                ),
            ],
        )
    }
}

/// Sums this worker's gradients and loss (both already weighted by its share of the
/// batch) with the other workers', so every replica takes the same step; returns the
/// whole batch's loss.
fn sum_over_workers(
    parallel: &dyn AllReduce,
    optimizer: &AdamW,
    grads: &mut candle_core::backprop::GradStore,
    loss: f64,
) -> Result<f64> {
    let vars: Vec<&candle_core::Var> = optimizer.vars().collect();
    let mut tensors = vars
        .iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => v.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<Vec<Tensor>>>()?;
    let device = vars
        .first()
        .map(|v| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    tensors.push(Tensor::new(&[loss as f32], &device)?);
    let mut summed = parallel.all_reduce_sum(tensors)?;
    let loss = summed
        .pop()
        .ok_or_else(|| Error::msg("all-reduce lost the loss"))?
        .to_vec1::<f32>()?[0];
    for (v, g) in vars.iter().zip(summed) {
        grads.insert(v.as_tensor(), g);
    }
    Ok(loss as f64)
}

/// Every replica starts the stage from the leader's weights: replicas built apart (on
/// other machines, other devices) cannot drift from a difference in initialisation.
fn broadcast_weights(parallel: &dyn AllReduce, optimizer: &AdamW) -> Result<()> {
    let vars: Vec<&candle_core::Var> = optimizer.vars().collect();
    // A sum of the leader's values and zeros is the leader's values, exactly.
    let mine = vars
        .iter()
        .map(|v| {
            if parallel.is_leader() {
                Ok(v.as_tensor().clone())
            } else {
                v.as_tensor().zeros_like()
            }
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    for (v, t) in vars.iter().zip(parallel.all_reduce_sum(mine)?) {
        v.set(&t)?;
    }
    Ok(())
}

/// The leader's yes or no, on every worker.
fn leader_decides(
    parallel: &dyn AllReduce,
    yes: bool,
    device: &candle_core::Device,
) -> Result<bool> {
    let mine = if parallel.is_leader() && yes {
        1f32
    } else {
        0f32
    };
    let summed = parallel.all_reduce_sum(vec![Tensor::new(&[mine], device)?])?;
    Ok(summed
        .first()
        .map(|t| t.to_vec1::<f32>())
        .transpose()?
        .is_some_and(|v| v[0] > 0.5))
}
