//! A stage's checkpoints in the run folder: `last` (student, optimizer state and
//! progress, written atomically together: what a killed run resumes from) and `best`
//! (the best dev student as a Hugging Face folder).

use candle_core::Device;

use super::student::Student;
use super::trainer::Progress;
use crate::run::{CheckpointFile, RunDir};
use crate::train::AdamW;
use crate::{Error, Result};

/// Writes the resume checkpoint `last`.
pub fn save_resume(
    run: &RunDir,
    student: &Student,
    optimizer: &AdamW,
    progress: &Progress,
) -> Result<()> {
    let progress = serde_json::to_value(progress).map_err(|e| Error::msg(e.to_string()))?;
    run.write_checkpoint(
        "last",
        &[
            (
                "student.safetensors",
                CheckpointFile::Tensors(student.named_tensors()),
            ),
            (
                "optimizer.safetensors",
                CheckpointFile::Tensors(optimizer.state_tensors()),
            ),
            ("progress.json", CheckpointFile::Json(progress)),
        ],
    )
}

/// The progress saved in `last`, if any.
pub fn saved_progress(run: &RunDir) -> Result<Option<Progress>> {
    run.read_checkpoint_json("last", "progress.json")
}

/// Puts the student's variables back as `last` holds them.
pub fn restore_student(run: &RunDir, student: &Student, device: &Device) -> Result<()> {
    let tensors = run.read_checkpoint_tensors("last", "student.safetensors", device)?;
    for (name, var) in student.named_vars() {
        let t = tensors.get(&name).ok_or_else(|| {
            Error::msg(format!(
                "resume checkpoint has no `{name}`: was the recipe changed?"
            ))
        })?;
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Restores the optimizer's state from `last`, `steps` steps into training.
pub fn restore_optimizer(
    run: &RunDir,
    optimizer: &mut AdamW,
    steps: usize,
    device: &Device,
) -> Result<()> {
    let state = run.read_checkpoint_tensors("last", "optimizer.safetensors", device)?;
    optimizer.load_state(&state, steps)
}

/// Writes the student as a Hugging Face folder of its family to `best`.
pub fn save_best(run: &RunDir, student: &Student) -> Result<()> {
    let config = student.config.to_family_json()?;
    let tokenizer = student
        .tokenizer
        .inner()
        .to_string(true)
        .map_err(|e| Error::msg(format!("serialising the tokenizer: {e}")))?;
    run.write_checkpoint(
        "best",
        &[
            (
                "model.safetensors",
                CheckpointFile::Tensors(
                    student
                        .config
                        .family()
                        .checkpoint_tensors(&student.model_tensors()),
                ),
            ),
            ("config.json", CheckpointFile::Json(config)),
            (
                "tokenizer.json",
                CheckpointFile::Bytes(tokenizer.into_bytes()),
            ),
        ],
    )
}
