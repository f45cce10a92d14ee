//! The run's student exported to `<run>/student` as a Hugging Face folder with a
//! model card, checked against the best checkpoint on dev sentences.

use std::path::Path;

use super::report::RunReport;
use super::task::TaskData;
use crate::export::{export_classifier, ExportOptions, ExportSource};
use crate::export::{DatasetInfo, MetricRow, ModelCard, SpeedComparison, TeacherSize};
use crate::model::ModelFiles;
use crate::recipe::Recipe;
use crate::run::RunDir;
use crate::Result;

/// Bytes of a model's weight files; 0 when they cannot be found (the card then says so).
fn weights_bytes(model: &str) -> u64 {
    ModelFiles::resolve(model)
        .map(|f| {
            f.weights
                .paths()
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Exports the best student to `<run>/student` with a model card, checked against the
/// checkpoint on dev sentences.
pub(super) fn export_student(
    recipe: &Recipe,
    run: &RunDir,
    report: &RunReport,
    data: &TaskData,
    best: &Path,
) -> Result<()> {
    let mut source = ExportSource::from_checkpoint(&best.display().to_string())?;
    let teacher = &report.teacher;
    let student = &report.student;
    source.card = ModelCard {
        model_name: recipe.name.clone(),
        // The model the user named; when the run fine-tuned it first, the card says so.
        teacher: Some(recipe.teacher.model.clone()),
        teacher_finetuned: teacher.model != recipe.teacher.model,
        dataset: Some(DatasetInfo {
            id: "nyu-mll/glue".into(),
            config: Some(data.task.name().to_string()),
            split: Some("validation".into()),
            name: Some(format!("GLUE {}", data.task)),
        }),
        recipe: recipe.resolved_toml().ok(),
        metrics: student
            .dev
            .values
            .iter()
            .map(|(name, v)| MetricRow {
                name: name.clone(),
                student: *v,
                teacher: teacher.dev.get(name),
            })
            .collect(),
        teacher_size: Some(TeacherSize {
            parameters: teacher.parameters,
            size_on_disk_bytes: weights_bytes(&teacher.model),
        }),
        speed: Some(SpeedComparison {
            setting: format!(
                "batch 32, max_seq_len {}, {}",
                data.max_seq_len, recipe.device
            ),
            student_ms: student.latency_ms_batch32,
            teacher_ms: teacher.latency_ms_batch32,
        }),
        license: None,
        language: Some("en".into()),
    };
    let options = ExportOptions {
        dtype: recipe.export.dtype.dtype(),
        force: true, // the run folder is ours; a resumed run re-exports the same student
        check_examples: data.export_check_examples(),
        tolerance: None,
    };
    let exported = export_classifier(&source, &run.path("student"), &options)?;
    tracing::info!(
        "exported the student to {} (logits checked on {} dev examples, relative error {:.1e})",
        exported.out.display(),
        options.check_examples.len(),
        exported.check.rel_err
    );
    Ok(())
}
