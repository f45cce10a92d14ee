//! Distillation losses, exactly as TinyBERT defines them where it does
//! (../shared/notes/tinybert.md), plus the common alternatives.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::ops::{log_softmax, softmax};
use serde::{Deserialize, Serialize};

use crate::model::kernels;

/// Entries at or below this are masked keys (the mask adds -10000) and count as 0.
const MASKED_SCORE: f64 = -100.0;

fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.sqr()?.mean_all()
}

fn zero_masked(scores: &Tensor) -> Result<Tensor> {
    let keep = scores.gt(MASKED_SCORE)?.to_dtype(scores.dtype())?;
    scores.mul(&keep)
}

/// TinyBERT attention loss for one layer pair: MSE of pre-softmax scores after
/// setting masked entries (<= -100) to 0 on both sides.
pub fn attention_mse(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let s = student.to_dtype(DType::F32)?;
    let t = teacher.to_dtype(DType::F32)?;
    if kernels::applies(&s) && kernels::applies(&t) {
        // One pass instead of eight whole-tensor ops over (batch, heads, seq, seq).
        return kernels::masked_mse(&s, &t, MASKED_SCORE as f32);
    }
    mse(&zero_masked(&s)?, &zero_masked(&t)?)
}

/// Hidden-state (and embedding) loss: MSE over every element, padding included as in
/// the reference. The caller projects the student state first when widths differ.
pub fn hidden_mse(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    mse(
        &student.to_dtype(DType::F32)?,
        &teacher.to_dtype(DType::F32)?,
    )
}

/// How the attention and hidden-state losses are averaged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalise {
    /// A mean over real tokens only: a row's loss does not depend on the padding its
    /// batch needs, so not on which rows it is batched with.
    #[default]
    Tokens,
    /// As TinyBERT's reference code: every batch of an intermediate stage is padded to
    /// `max_seq_len` and the mean runs over every position, padding included.
    Reference,
}

impl Normalise {
    /// The attention loss of one layer pair; `mask` (batch, seq) is 1 for real tokens.
    pub fn attention_mse(
        self,
        student: &Tensor,
        teacher: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        match self {
            Normalise::Reference => attention_mse(student, teacher),
            Normalise::Tokens => attention_mse_tokens(student, teacher, mask),
        }
    }

    /// The hidden-state (or embedding) loss of one pair; `mask` as above.
    pub fn hidden_mse(self, student: &Tensor, teacher: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match self {
            Normalise::Reference => hidden_mse(student, teacher),
            Normalise::Tokens => hidden_mse_tokens(student, teacher, mask),
        }
    }
}

/// Attention loss, mean over real (query, key) pairs: `mask` (batch, seq) is 1 for
/// real tokens. Masked keys and padded queries count for nothing.
pub fn attention_mse_tokens(student: &Tensor, teacher: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let s = student.to_dtype(DType::F32)?;
    let t = teacher.to_dtype(DType::F32)?;
    if kernels::applies(&s) && kernels::applies(&t) {
        // One pass over (batch, heads, seq, seq) instead of five whole-tensor ops.
        return kernels::token_pair_mse(&s, &t, mask);
    }
    let heads = s.dim(1)? as f64;
    let m = mask.to_dtype(DType::F32)?;
    // (batch, 1, seq, seq): 1 where both query and key are real tokens.
    let pairs = m
        .unsqueeze(2)?
        .broadcast_mul(&m.unsqueeze(1)?)?
        .unsqueeze(1)?;
    let count = (pairs.sum_all()? * heads)?.clamp(1.0, f64::MAX)?;
    (s - t)?
        .sqr()?
        .broadcast_mul(&pairs)?
        .sum_all()?
        .div(&count)
}

/// Hidden-state loss, mean over the elements of real tokens (`mask` as above).
pub fn hidden_mse_tokens(student: &Tensor, teacher: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let s = student.to_dtype(DType::F32)?;
    let t = teacher.to_dtype(DType::F32)?;
    let width = s.dim(D::Minus1)? as f64;
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let count = (m.sum_all()? * width)?.clamp(1.0, f64::MAX)?;
    (s - t)?.sqr()?.broadcast_mul(&m)?.sum_all()?.div(&count)
}

/// 1 - cosine similarity per token, averaged over real tokens (mask (batch, seq) of 0/1).
pub fn hidden_cosine(student: &Tensor, teacher: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let s = student.to_dtype(DType::F32)?;
    let t = teacher.to_dtype(DType::F32)?;
    let dot = (&s * &t)?.sum(D::Minus1)?;
    let norms = (s.sqr()?.sum(D::Minus1)?.sqrt()? * t.sqr()?.sum(D::Minus1)?.sqrt()?)?;
    let cos = (dot / (norms + 1e-8)?)?;
    let mask = mask.to_dtype(DType::F32)?;
    let per_token = (1.0 - cos)?.mul(&mask)?;
    per_token
        .sum_all()?
        .div(&mask.sum_all()?.clamp(1.0, f64::MAX)?)
}

/// Soft cross-entropy between softmax(teacher/T) and log_softmax(student/T), mean over
/// the batch. TinyBERT: T = 1 and no T^2 factor.
pub fn soft_cross_entropy(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let s = (student.to_dtype(DType::F32)? / temperature)?;
    let t = (teacher.to_dtype(DType::F32)? / temperature)?;
    let p = softmax(&t, D::Minus1)?;
    (p * log_softmax(&s, D::Minus1)?)?
        .sum(D::Minus1)?
        .neg()?
        .mean_all()
}

/// KL(teacher || student) at temperature T, mean over the batch.
pub fn kl_divergence(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let s = (student.to_dtype(DType::F32)? / temperature)?;
    let t = (teacher.to_dtype(DType::F32)? / temperature)?;
    let log_p = log_softmax(&t, D::Minus1)?;
    let p = log_p.exp()?;
    (p * (log_p - log_softmax(&s, D::Minus1)?)?)?
        .sum(D::Minus1)?
        .mean_all()
}

/// Mean squared error between logits (also the regression loss against the teacher).
pub fn logits_mse(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    mse(
        &student.to_dtype(DType::F32)?,
        &teacher.to_dtype(DType::F32)?,
    )
}

/// Cross-entropy against gold class indices.
pub fn hard_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    crate::model::bert::cross_entropy(logits, labels)
}

/// Weights of every loss a stage can use. Zero switches a loss off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossWeights {
    /// Attention-score MSE over mapped layers (summed over layers).
    pub attention: f64,
    /// Hidden-state MSE over mapped layers (summed over layers).
    pub hidden: f64,
    /// Embedding-output MSE.
    pub embedding: f64,
    /// Cosine loss on mapped hidden states.
    pub cosine: f64,
    /// Soft cross-entropy with the teacher's distribution.
    pub soft_ce: f64,
    /// KL divergence to the teacher's distribution.
    pub kl: f64,
    /// MSE to the teacher's logits (for regression tasks: to its score).
    pub logits_mse: f64,
    /// Cross-entropy (or MSE for regression) with gold labels.
    pub hard: f64,
    /// Softmax temperature for soft_ce and kl.
    pub temperature: f64,
    /// Multiply soft_ce and kl by T^2 (Hinton et al.), off in TinyBERT.
    pub t2_scale: bool,
}

impl Default for LossWeights {
    fn default() -> Self {
        LossWeights {
            attention: 0.0,
            hidden: 0.0,
            embedding: 0.0,
            cosine: 0.0,
            soft_ce: 0.0,
            kl: 0.0,
            logits_mse: 0.0,
            hard: 0.0,
            temperature: 1.0,
            t2_scale: false,
        }
    }
}

impl LossWeights {
    /// TinyBERT intermediate stage: attention + hidden + embedding losses.
    pub fn intermediate() -> Self {
        LossWeights {
            attention: 1.0,
            hidden: 1.0,
            embedding: 1.0,
            ..Default::default()
        }
    }

    /// TinyBERT prediction stage: soft cross-entropy at T = 1.
    pub fn prediction() -> Self {
        LossWeights {
            soft_ce: 1.0,
            ..Default::default()
        }
    }

    /// Plain fine-tuning on gold labels.
    pub fn hard_labels() -> Self {
        LossWeights {
            hard: 1.0,
            ..Default::default()
        }
    }

    pub fn needs_hidden_states(&self) -> bool {
        self.hidden > 0.0 || self.embedding > 0.0 || self.cosine > 0.0
    }

    pub fn needs_attention(&self) -> bool {
        self.attention > 0.0
    }

    pub fn needs_teacher_logits(&self) -> bool {
        self.soft_ce > 0.0 || self.kl > 0.0 || self.logits_mse > 0.0
    }

    pub fn needs_teacher(&self) -> bool {
        self.needs_hidden_states() || self.needs_attention() || self.needs_teacher_logits()
    }

    pub fn needs_labels(&self) -> bool {
        self.hard > 0.0
    }

    pub fn validate(&self, origin: &str) -> crate::Result<()> {
        let all = [
            ("attention", self.attention),
            ("hidden", self.hidden),
            ("embedding", self.embedding),
            ("cosine", self.cosine),
            ("soft_ce", self.soft_ce),
            ("kl", self.kl),
            ("logits_mse", self.logits_mse),
            ("hard", self.hard),
        ];
        for (name, w) in all {
            if !(w >= 0.0 && w.is_finite()) {
                return Err(crate::Error::invalid(
                    origin,
                    format!("losses.{name}"),
                    format!("{w} must be a finite weight >= 0"),
                ));
            }
        }
        if all.iter().all(|(_, w)| *w == 0.0) {
            return Err(crate::Error::invalid(
                origin,
                "losses",
                "every loss weight is 0: the stage would learn nothing",
            ));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(crate::Error::invalid(
                origin,
                "losses.temperature",
                format!("{} must be > 0", self.temperature),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    /// One row of 5 tokens through two tiny random models, padded to `len`: the
    /// attention and hidden-state losses of layer 2 under `normalise`.
    fn row_losses(len: usize, normalise: Normalise) -> (f32, f32) {
        use crate::model::{BertInput, Outputs};
        let dev = Device::Cpu;
        let (_, teacher) = crate::testing::tiny_teacher(&dev, 5).unwrap();
        let (_, student) = crate::testing::tiny_teacher(&dev, 6).unwrap();
        let mut ids = vec![2u32, 7, 8, 9, 3];
        let mut mask = vec![1u32; ids.len()];
        ids.resize(len, 0);
        mask.resize(len, 0);
        let input = BertInput {
            input_ids: Tensor::from_vec(ids, (1, len), &dev).unwrap(),
            token_type_ids: Tensor::zeros((1, len), DType::U32, &dev).unwrap(),
            attention_mask: Tensor::from_vec(mask, (1, len), &dev).unwrap(),
        };
        let s = student.forward(&input, Outputs::ALL, None).unwrap().encoder;
        let t = teacher.forward(&input, Outputs::ALL, None).unwrap().encoder;
        let (sa, ta) = (&s.attention_scores[1], &t.attention_scores[1]);
        let (sh, th) = (&s.hidden_states[2], &t.hidden_states[2]);
        let m = &input.attention_mask;
        let a = normalise.attention_mse(sa, ta, m).unwrap();
        let h = normalise.hidden_mse(sh, th, m).unwrap();
        (scalar(&a), scalar(&h))
    }

    #[test]
    fn tokens_normalisation_gives_a_row_the_same_loss_whatever_its_padding() {
        // Alone (5 tokens) and in a batch whose longest row has 12 or 40.
        let alone = row_losses(5, Normalise::Tokens);
        for len in [12, 40] {
            let batched = row_losses(len, Normalise::Tokens);
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1e-6);
            assert!(
                close(batched.0, alone.0) && close(batched.1, alone.1),
                "padded to {len}: {batched:?} vs alone {alone:?}"
            );
        }
        // The reference's mean over every position shrinks as padding grows.
        let (r5, r40) = (
            row_losses(5, Normalise::Reference),
            row_losses(40, Normalise::Reference),
        );
        assert!(r40.0 < 0.5 * r5.0 && r40.1 < r5.1, "{r5:?} vs {r40:?}");
        // Without padding the two agree.
        assert!(
            (r5.0 - alone.0).abs() <= 1e-5 * alone.0 && (r5.1 - alone.1).abs() <= 1e-5 * alone.1
        );
    }

    #[test]
    fn attention_loss_ignores_masked_keys() {
        let dev = Device::Cpu;
        let s = Tensor::new(&[[1.0f32, -10000.0], [2.0, -9999.0]], &dev).unwrap();
        let t = Tensor::new(&[[0.0f32, -10000.0], [0.0, -3.0]], &dev).unwrap();
        // Masked: s[0][1], s[1][1], t[0][1] -> 0; t[1][1] = -3 stays.
        // diffs: 1, 0, 2, 3 -> (1 + 0 + 4 + 9) / 4
        assert!((scalar(&attention_mse(&s, &t).unwrap()) - 3.5).abs() < 1e-6);
    }

    #[test]
    fn soft_ce_kl_and_temperature() {
        let dev = Device::Cpu;
        let s = Tensor::new(&[[1.0f32, 2.0, 3.0]], &dev).unwrap();
        let t = Tensor::new(&[[3.0f32, 1.0, 0.0]], &dev).unwrap();
        // Values from numpy: -sum(softmax(t) * log_softmax(s)) and sum p (log p - log q).
        let ce = scalar(&soft_cross_entropy(&s, &t, 1.0).unwrap());
        assert!((ce - 2.209_391).abs() < 1e-4, "{ce}");
        let kl = scalar(&kl_divergence(&s, &t, 1.0).unwrap());
        assert!((kl - 1.685_124).abs() < 1e-4, "{kl}");
        // Identical logits: KL 0, CE = entropy.
        assert!(scalar(&kl_divergence(&t, &t, 2.0).unwrap()).abs() < 1e-6);
        let ce2 = scalar(&soft_cross_entropy(&s, &t, 2.0).unwrap());
        assert!(ce2 < ce);
    }

    #[test]
    fn cosine_counts_real_tokens_only() {
        let dev = Device::Cpu;
        let s = Tensor::new(&[[[1.0f32, 0.0], [1.0, 0.0]]], &dev).unwrap();
        let t = Tensor::new(&[[[2.0f32, 0.0], [0.0, 1.0]]], &dev).unwrap();
        let all =
            scalar(&hidden_cosine(&s, &t, &Tensor::new(&[[1u32, 1]], &dev).unwrap()).unwrap());
        assert!((all - 0.5).abs() < 1e-6);
        let first =
            scalar(&hidden_cosine(&s, &t, &Tensor::new(&[[1u32, 0]], &dev).unwrap()).unwrap());
        assert!(first.abs() < 1e-6);
    }

    #[test]
    fn losses_carry_gradients() {
        let dev = Device::Cpu;
        let s = Var::randn(0f32, 1.0, (2, 3), &dev).unwrap();
        let t = Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap();
        for loss in [
            attention_mse(s.as_tensor(), &t).unwrap(),
            soft_cross_entropy(s.as_tensor(), &t, 2.0).unwrap(),
            kl_divergence(s.as_tensor(), &t, 1.0).unwrap(),
            logits_mse(s.as_tensor(), &t).unwrap(),
        ] {
            let g = loss.backward().unwrap();
            let g = g.get(s.as_tensor()).expect("gradient");
            assert!(scalar(&g.abs().unwrap().sum_all().unwrap()) > 0.0);
        }
    }

    #[test]
    fn weights_are_validated() {
        assert!(LossWeights::intermediate().validate("r.toml").is_ok());
        let err = LossWeights::default()
            .validate("r.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("every loss weight is 0"), "{err}");
        let bad = LossWeights {
            hidden: -1.0,
            ..LossWeights::intermediate()
        };
        assert!(bad
            .validate("r.toml")
            .unwrap_err()
            .to_string()
            .contains("losses.hidden"));
    }
}
