//! Knowledge distillation: layer mapping, losses, students, and the staged trainer.

pub mod losses;
pub mod mapping;
pub mod student;

pub use losses::LossWeights;
pub use mapping::{LayerMap, MapStrategy};
