//! Learning-rate schedules: constant, or linear warm-up followed by linear decay to 0
//! (transformers' `get_linear_schedule_with_warmup`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant after warm-up (TinyBERT's intermediate stage).
    Constant,
    /// Linear warm-up, then linear decay to zero at the last step.
    #[default]
    Linear,
}

/// Learning rate for `step` (0-based) of `total` steps.
pub fn lr_at(schedule: Schedule, base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if warmup > 0 && step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => {
            let remaining = total.saturating_sub(step) as f64;
            let span = total.saturating_sub(warmup).max(1) as f64;
            base * (remaining / span).clamp(0.0, 1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_linear_decay() {
        let lrs: Vec<f64> = (0..10)
            .map(|s| lr_at(Schedule::Linear, 1.0, s, 10, 2))
            .collect();
        assert_eq!(lrs[0], 0.5);
        assert_eq!(lrs[1], 1.0);
        assert_eq!(lrs[2], 1.0);
        assert!((lrs[6] - 0.5).abs() < 1e-12);
        assert!(lrs[9] > 0.0 && lrs[9] < lrs[8]);
        assert_eq!(lr_at(Schedule::Constant, 2.0, 7, 10, 2), 2.0);
    }
}
