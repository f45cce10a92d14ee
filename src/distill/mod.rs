//! Knowledge distillation: layer mapping, losses, students, and the staged trainer.

pub mod cache;
pub mod checkpoint;
pub mod losses;
pub mod mapping;
pub mod objective;
pub mod replicas;
pub mod student;
pub mod trainer;

pub use losses::{LossWeights, Normalise};
pub use mapping::{LayerMap, MapStrategy};
pub use student::{build_student, Projection, Student, StudentInit, StudentSpec, TeacherParts};
pub use trainer::{
    Evaluator, Progress, Scores, Stage, StageKind, StageSummary, TrainSettings, Trainer,
};
