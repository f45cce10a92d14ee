//! GLUE from the Hugging Face hub: the parquet files of `nyu-mll/glue`
//! (`<config>/<split>-00000-of-00001.parquet`), fetched through the hf-hub cache.
//! Labels are integers in the task's label order (-1 in test splits); STS-B's are floats.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};

use super::dataset::{clean_text, Dataset, Example, Label, LoadOptions, RowErrors};
use super::task::{Split, Task};
use crate::hub::{Location, RepoKind};
use crate::{Error, Result};

/// The file of `task`/`split` inside a dataset repo in the `nyu-mll/glue` layout.
pub fn hub_file_name(task: Task, split: Split) -> String {
    format!(
        "{}/{}-00000-of-00001.parquet",
        task.name(),
        split.hub_name(task)
    )
}

/// Fetches (or finds in the cache) and reads one split from a hub dataset repo.
pub fn load_hub(
    repo: &str,
    revision: &str,
    task: Task,
    split: Split,
    options: &LoadOptions,
) -> Result<Dataset> {
    let location = Location::Hub {
        repo: repo.to_string(),
        revision: revision.to_string(),
        kind: RepoKind::Dataset,
    };
    let name = hub_file_name(task, split);
    let path = location.open()?.require(&name)?;
    let mut dataset = load_file(&path, task, split, options)?;
    dataset.origin = format!("{location}/{name}");
    Ok(dataset)
}

fn parquet_err(origin: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(origin, "parquet", e)
}

/// Reads a parquet file with the hub's GLUE columns for `task`.
pub fn load_file(path: &Path, task: Task, split: Split, options: &LoadOptions) -> Result<Dataset> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| parquet_err(&origin, e))?;
    check_columns(&reader, task, split, &origin)?;

    let label_names: Vec<String> = task.label_names().iter().map(|s| s.to_string()).collect();
    let mut errors = RowErrors::new(options);
    let mut examples = Vec::new();
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| parquet_err(&origin, e))?;
    for (i, row) in rows.enumerate() {
        if options.limit.is_some_and(|n| examples.len() >= n) {
            break;
        }
        let row = row.map_err(|e| parquet_err(&origin, e))?;
        let at = format!("{origin}: row {i}");
        let parsed = example_of(&row, i, task, label_names.len());
        match parsed {
            Ok(example) => examples.push(example),
            Err(message) => errors.bad(&at, message)?,
        }
    }
    Ok(Dataset {
        task: Some(task),
        split,
        label_names: if task.is_regression() {
            Vec::new()
        } else {
            label_names
        },
        regression: task.is_regression(),
        examples,
        origin,
        skipped: errors.skipped,
    })
}

/// Refuses a file without `task`'s text columns, or without labels outside a test split.
fn check_columns(
    reader: &SerializedFileReader<std::fs::File>,
    task: Task,
    split: Split,
    origin: &str,
) -> Result<()> {
    let names = column_names(reader);
    for needed in task.hub_text_columns() {
        if !names.iter().any(|n| n == needed) {
            return Err(Error::invalid(
                origin,
                "columns",
                format!("no `{needed}` column for {task} in [{}]", names.join(", ")),
            ));
        }
    }
    let has_label = names.iter().any(|n| n == "label");
    if !has_label && !split.is_test() {
        return Err(Error::invalid(
            origin,
            "columns",
            format!("no `label` column in [{}]", names.join(", ")),
        ));
    }
    Ok(())
}

/// The names of a parquet file's (leaf) columns.
pub(crate) fn column_names(reader: &impl FileReader) -> Vec<String> {
    let schema = reader.metadata().file_metadata().schema_descr();
    schema
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect()
}

/// The example of row `i`, or what is wrong with it.
fn example_of(
    row: &Row,
    i: usize,
    task: Task,
    classes: usize,
) -> std::result::Result<Example, String> {
    let get = |name: &str| {
        row.get_column_iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, f)| f)
    };
    let mut texts = task.hub_text_columns().iter().map(|c| match get(c) {
        Some(Field::Str(s)) => clean_text(s).ok_or(format!("empty `{c}`")),
        Some(other) => Err(format!("`{c}` is not a string: {other}")),
        None => Err(format!("no `{c}`")),
    });
    let text_a = texts.next().ok_or("no text column")??;
    let text_b = texts.next().transpose()?;
    let label = match get("label") {
        None | Some(Field::Null) => Label::Unlabeled,
        Some(field) => label_of(field, task, classes)?,
    };
    let idx = match get("idx") {
        Some(Field::Int(v)) if *v >= 0 => *v as usize,
        Some(Field::Long(v)) if *v >= 0 => *v as usize,
        _ => i,
    };
    Ok(Example {
        idx,
        text_a,
        text_b,
        label,
    })
}

/// A hub label: a class index, a float score for STS-B, or -1 for "no label".
fn label_of(field: &Field, task: Task, classes: usize) -> std::result::Result<Label, String> {
    let value: f64 = match field {
        Field::Byte(v) => *v as f64,
        Field::Short(v) => *v as f64,
        Field::Int(v) => *v as f64,
        Field::Long(v) => *v as f64,
        Field::Float(v) => *v as f64,
        Field::Double(v) => *v,
        other => return Err(format!("label `{other}` is not a number")),
    };
    if value == -1.0 {
        return Ok(Label::Unlabeled);
    }
    if task.is_regression() {
        return if value.is_finite() {
            Ok(Label::Score(value as f32))
        } else {
            Err(format!("score `{value}` is not finite"))
        };
    }
    if value >= 0.0 && value.fract() == 0.0 && (value as usize) < classes {
        Ok(Label::Class(value as usize))
    } else {
        Err(format!(
            "label `{value}` is not a class index below {classes}"
        ))
    }
}
