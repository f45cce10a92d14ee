//! Training machinery shared by fine-tuning and distillation.

#[cfg(feature = "nccl")]
pub mod nccl;
pub mod optim;
pub mod parallel;
pub mod schedule;

pub use optim::{AdamW, AdamWConfig};
pub use schedule::{lr_at, Schedule};
