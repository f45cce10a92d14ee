//! The loss of one batch: the stage's weighted losses over the student's and the
//! teacher's outputs, with each part's value for the log. A pure function of its
//! inputs, so the trainer, the tests and the benches compute the same thing.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, D};

use super::losses::{self, LossWeights, Normalise};
use super::student::project;
use crate::model::bert::Linear;
use crate::model::{BertInput, ClassifierOutput};
use crate::{Error, Result};

/// Everything one batch's loss depends on.
pub struct BatchLoss<'a> {
    /// The stage's name, for errors.
    pub stage: &'a str,
    pub weights: &'a LossWeights,
    pub normalise: Normalise,
    /// (student layer, teacher layer) pairs of the intermediate losses, 1-based.
    pub pairs: &'a [(usize, usize)],
    pub input: &'a BertInput,
    /// The student's projections to the teacher's width (none at equal width).
    pub projections: &'a [Linear],
    pub student: &'a ClassifierOutput,
    pub teacher: Option<&'a ClassifierOutput>,
    /// Cached teacher logits of these rows, used instead of `teacher`'s.
    pub teacher_logits: Option<&'a Tensor>,
    /// Gold labels (class ids or scores), for the hard-label loss.
    pub targets: Option<&'a Tensor>,
    pub share: TokenShare,
}

/// A data-parallel worker's loss is multiplied by its share of the batch's rows; a
/// mean over its own real tokens (or real attention pairs) needs another factor for
/// the workers' sum to be the whole batch's mean: these, divided by the row share.
#[derive(Debug, Clone, Copy)]
pub struct TokenShare {
    pub tokens: f64,
    pub pairs: f64,
}

impl TokenShare {
    /// The whole batch on one worker.
    pub const ALL: TokenShare = TokenShare {
        tokens: 1.0,
        pairs: 1.0,
    };

    /// The share of the rows `mine` of `batch` (`lengths` by row), whose row share
    /// is `row_share`.
    pub fn of(mine: &[usize], batch: &[usize], lengths: &[usize], row_share: f64) -> Self {
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

/// A weighted sum of named parts, each part's value kept for the log.
#[derive(Default)]
struct Total {
    sum: Option<Tensor>,
    parts: BTreeMap<String, f64>,
}

impl Total {
    fn add(&mut self, name: &str, weight: f64, loss: Tensor) -> Result<()> {
        self.parts.insert(name.to_string(), scalar(&loss)?);
        let weighted = (loss * weight)?;
        self.sum = Some(sum_with(self.sum.take(), weighted)?);
        Ok(())
    }
}

fn sum_with(acc: Option<Tensor>, x: Tensor) -> candle_core::Result<Tensor> {
    match acc {
        Some(a) => a + x,
        None => Ok(x),
    }
}

/// A scalar tensor's value.
pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64)
}

impl BatchLoss<'_> {
    /// The weighted loss and its parts by name (unweighted), for logging.
    pub fn compute(&self) -> Result<(Tensor, BTreeMap<String, f64>)> {
        let mut total = Total::default();
        if let Some(teacher) = self.teacher {
            self.intermediate(teacher, &mut total)?;
        }
        self.soft_logits(&mut total)?;
        self.hard_labels(&mut total)?;
        let sum = total
            .sum
            .ok_or_else(|| Error::msg(format!("stage `{}` has no applicable loss", self.stage)))?;
        Ok((sum, total.parts))
    }

    /// Attention, hidden-state, cosine and embedding losses over the layer pairs.
    fn intermediate(&self, teacher: &ClassifierOutput, total: &mut Total) -> Result<()> {
        let (w, normalise, mask) = (self.weights, self.normalise, &self.input.attention_mask);
        // Token means are over this worker's tokens: rescaled to the whole batch's.
        let share = match normalise {
            Normalise::Tokens => self.share,
            Normalise::Reference => TokenShare::ALL,
        };
        let (s_enc, t_enc) = (&self.student.encoder, &teacher.encoder);
        let (mut attention, mut mse, mut cos) = (None, None, None);
        for &(s, t) in self.pairs {
            if w.attention > 0.0 {
                let (a, b) = (
                    &s_enc.attention_scores[s - 1],
                    &t_enc.attention_scores[t - 1],
                );
                attention = Some(sum_with(attention, normalise.attention_mse(a, b, mask)?)?);
            }
            if w.hidden > 0.0 || w.cosine > 0.0 {
                let projected = project(self.projections, s, &s_enc.hidden_states[s])?;
                let target = &t_enc.hidden_states[t];
                if w.hidden > 0.0 {
                    mse = Some(sum_with(
                        mse,
                        normalise.hidden_mse(&projected, target, mask)?,
                    )?);
                }
                if w.cosine > 0.0 {
                    cos = Some(sum_with(
                        cos,
                        losses::hidden_cosine(&projected, target, mask)?,
                    )?);
                }
            }
        }
        if let Some(l) = attention {
            total.add("attention", w.attention * share.pairs, l)?;
        }
        if let Some(l) = mse {
            total.add("hidden", w.hidden * share.tokens, l)?;
        }
        if let Some(l) = cos {
            total.add("cosine", w.cosine, l)?;
        }
        if w.embedding > 0.0 {
            let projected = project(self.projections, 0, &s_enc.hidden_states[0])?;
            let l = normalise.hidden_mse(&projected, &t_enc.hidden_states[0], mask)?;
            total.add("embedding", w.embedding * share.tokens, l)?;
        }
        Ok(())
    }

    /// Soft cross-entropy, KL and logit MSE against the teacher's logits.
    fn soft_logits(&self, total: &mut Total) -> Result<()> {
        let w = self.weights;
        let teacher = match (self.teacher_logits, self.teacher) {
            (Some(l), _) => l,
            (None, Some(t)) => &t.logits,
            _ => return Ok(()),
        };
        let logits = &self.student.logits;
        if logits.dim(D::Minus1)? == 1 {
            // Regression distils the teacher's score (TinyBERT's reference used gold, #128).
            let weight = w.soft_ce + w.kl + w.logits_mse;
            if weight > 0.0 {
                total.add("logits_mse", weight, losses::logits_mse(logits, teacher)?)?;
            }
            return Ok(());
        }
        let t2 = if w.t2_scale {
            w.temperature * w.temperature
        } else {
            1.0
        };
        if w.soft_ce > 0.0 {
            let l = losses::soft_cross_entropy(logits, teacher, w.temperature)?;
            total.add("soft_ce", w.soft_ce * t2, l)?;
        }
        if w.kl > 0.0 {
            let l = losses::kl_divergence(logits, teacher, w.temperature)?;
            total.add("kl", w.kl * t2, l)?;
        }
        if w.logits_mse > 0.0 {
            total.add(
                "logits_mse",
                w.logits_mse,
                losses::logits_mse(logits, teacher)?,
            )?;
        }
        Ok(())
    }

    /// Cross-entropy (or MSE for regression) against the gold labels.
    fn hard_labels(&self, total: &mut Total) -> Result<()> {
        if self.weights.hard <= 0.0 {
            return Ok(());
        }
        let targets = self.targets.ok_or_else(|| {
            Error::msg(format!(
                "stage `{}` uses the hard-label loss but its data has no labels",
                self.stage
            ))
        })?;
        let logits = &self.student.logits;
        let l = if logits.dim(D::Minus1)? == 1 {
            losses::logits_mse(&logits.squeeze(D::Minus1)?, targets)?
        } else {
            losses::hard_cross_entropy(logits, targets)?
        };
        total.add("hard", self.weights.hard, l)
    }
}
