//! Mixed-precision training: forward and backward passes in bf16 or f16 while the
//! weights and AdamW moments stay in f32 (the "master weights"), and dynamic loss
//! scaling so that f16's small gradients do not underflow to zero.

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// The dtype a training step computes in; the weights are always kept in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 compute, f32 master weights; bf16 has f32's range, so no loss scaling.
    Bf16,
    /// f16 compute, f32 master weights, dynamic loss scaling.
    F16,
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// `f32`, `bf16` or `f16`, as in recipes (for command-line flags).
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            _ => Err(format!("`{text}`: expected f32, bf16 or f16")),
        }
    }
}

impl std::fmt::Display for Precision {
    /// As in recipes: `f32`, `bf16` or `f16`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl Precision {
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }
}

/// Dynamic loss scaling, with PyTorch `GradScaler`'s defaults: the loss is multiplied by
/// `scale` before the backward pass and the gradients divided by it before the update.
/// A step whose gradients overflowed is skipped and the scale halved; after
/// [`LossScale::GROWTH_INTERVAL`] clean steps in a row the scale doubles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Clean steps since the last change of scale.
    pub clean_steps: usize,
    /// Steps skipped because their gradients overflowed (the optimizer did not count them).
    pub skipped: usize,
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale {
            scale: Self::INITIAL,
            clean_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScale {
    pub const INITIAL: f64 = 65536.0;
    pub const GROWTH_INTERVAL: usize = 2000;
    /// The scale never drops below this: gradients that overflow even at scale 1 mean
    /// the loss diverged, and the trainer stops with an error.
    pub const MIN: f64 = 1.0;

    /// Records the outcome of one step.
    pub fn update(&mut self, overflowed: bool) {
        if overflowed {
            self.scale = (self.scale / 2.0).max(Self::MIN);
            self.clean_steps = 0;
            self.skipped += 1;
        } else {
            self.clean_steps += 1;
            if self.clean_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_names_parse_as_in_recipes() {
        for (text, p) in [
            ("\"f32\"", Precision::F32),
            ("\"bf16\"", Precision::Bf16),
            ("\"f16\"", Precision::F16),
        ] {
            assert_eq!(serde_json::from_str::<Precision>(text).unwrap(), p);
        }
        assert!(serde_json::from_str::<Precision>("\"fp8\"").is_err());
        assert_eq!("BF16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("fp8"
            .parse::<Precision>()
            .unwrap_err()
            .contains("expected f32, bf16 or f16"));
        assert_eq!(Precision::Bf16.compute_dtype(), DType::BF16);
        assert!(Precision::F16.needs_loss_scaling() && !Precision::Bf16.needs_loss_scaling());
    }

    #[test]
    fn scale_halves_on_overflow_and_doubles_after_clean_steps() {
        let mut s = LossScale::default();
        s.update(true);
        assert_eq!((s.scale, s.skipped, s.clean_steps), (32768.0, 1, 0));
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!(s.scale, 32768.0);
        s.update(false);
        assert_eq!((s.scale, s.clean_steps), (65536.0, 0));
        for _ in 0..40 {
            s.update(true);
        }
        assert_eq!(s.scale, LossScale::MIN);
        assert_eq!(s.skipped, 41);
    }
}
