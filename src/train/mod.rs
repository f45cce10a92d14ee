//! Training machinery shared by fine-tuning and distillation.

pub mod cluster;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod optim;
pub mod parallel;
pub mod precision;
pub mod schedule;

pub use optim::{AdamW, AdamWConfig};
pub use precision::{LossScale, Precision};
pub use schedule::{lr_at, Schedule};
