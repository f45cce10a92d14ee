//! The GLUE download's TSV files, with their quirks: MRPC's header starts with a BOM,
//! CoLA's train/dev files have no header (and dev no final newline), fields are split on
//! tabs only with quotes as plain text (QUOTE_NONE), sentences carry trailing spaces,
//! RTE/QNLI/MNLI labels are strings and STS-B scores are floats.

use std::path::Path;

use super::dataset::{
    clean_text, parse_class, parse_score, Dataset, Example, Label, LoadOptions, RowErrors,
};
use super::task::{Split, Task};
use crate::{Error, Result};

/// Column names of a task's TSV header: text columns, label column, id column.
fn header_columns(task: Task) -> (&'static [&'static str], &'static str, &'static str) {
    match task {
        Task::Cola | Task::Sst2 => (&["sentence"], "label", "index"),
        Task::Mrpc => (&["#1 String", "#2 String"], "Quality", "index"),
        Task::Qqp => (&["question1", "question2"], "is_duplicate", "id"),
        Task::Stsb => (&["sentence1", "sentence2"], "score", "index"),
        Task::Mnli => (&["sentence1", "sentence2"], "gold_label", "index"),
        Task::Qnli => (&["question", "sentence"], "label", "index"),
        Task::Rte | Task::Wnli => (&["sentence1", "sentence2"], "label", "index"),
    }
}

/// Where the fields of a row are.
struct Columns {
    count: usize,
    label: Option<usize>,
    id: Option<usize>,
}

/// CoLA train/dev: source, label, original mark, sentence; no header.
const COLA_RAW: Columns = Columns {
    count: 4,
    label: Some(1),
    id: None,
};

/// Loads `<dir>/<Task dir>/<split file>`.
pub fn load(dir: &Path, task: Task, split: Split, options: &LoadOptions) -> Result<Dataset> {
    let path = dir
        .join(task.glue_dir_name())
        .join(split.glue_file_name(task));
    load_file(&path, task, split, options)
}

/// Loads one GLUE TSV file of `task`.
pub fn load_file(path: &Path, task: Task, split: Split, options: &LoadOptions) -> Result<Dataset> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let origin = path.display().to_string();
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::invalid(&origin, "encoding", format!("not UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .peekable();
    // A final newline leaves one empty piece at the end; it is not a row.
    let total = text.split('\n').count();
    let ends_with_newline = text.ends_with('\n');

    let label_names: Vec<String> = task.label_names().iter().map(|s| s.to_string()).collect();
    let first = lines.peek().map(|(_, l)| *l).unwrap_or("");
    let headerless_cola = task == Task::Cola && !first.starts_with("index\t");
    let (columns, text_cols) = if headerless_cola {
        (COLA_RAW, vec![3])
    } else {
        let (_, header) = lines
            .next()
            .ok_or_else(|| Error::invalid(&origin, "header", "the file is empty"))?;
        let names: Vec<&str> = header.split('\t').map(str::trim).collect();
        let find = |name: &str| names.iter().position(|n| *n == name);
        let (text_names, label_name, id_name) = header_columns(task);
        let text = text_names
            .iter()
            .map(|n| {
                find(n).ok_or_else(|| {
                    Error::invalid(
                        format!("{origin}:1"),
                        "header",
                        format!("no `{n}` column in [{}]", names.join(", ")),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let label = find(label_name);
        if label.is_none() && !split.is_test() {
            return Err(Error::invalid(
                format!("{origin}:1"),
                "header",
                format!(
                    "no `{label_name}` column in [{}]; only test files may be unlabeled",
                    names.join(", ")
                ),
            ));
        }
        let columns = Columns {
            count: names.len(),
            label,
            id: find(id_name),
        };
        (columns, text)
    };

    let data_start = usize::from(!headerless_cola);
    let mut errors = RowErrors::new(options);
    let mut examples = Vec::new();
    for (i, line) in lines {
        if i + 1 == total && ends_with_newline {
            break;
        }
        if options.limit.is_some_and(|n| examples.len() >= n) {
            break;
        }
        let at = format!("{origin}:{}", i + 1);
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != columns.count {
            errors.bad(
                &at,
                format!(
                    "expected {} tab-separated columns, found {}",
                    columns.count,
                    fields.len()
                ),
            )?;
            continue;
        }
        match parse_row(
            &fields,
            &columns,
            &text_cols,
            task,
            &label_names,
            i - data_start,
        ) {
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

fn parse_row(
    fields: &[&str],
    columns: &Columns,
    text_cols: &[usize],
    task: Task,
    label_names: &[String],
    row: usize,
) -> std::result::Result<Example, String> {
    let mut texts = text_cols.iter().map(|&c| clean_text(fields[c]));
    let text_a = texts.next().flatten().ok_or("empty text")?;
    let text_b = match texts.next() {
        Some(Some(t)) => Some(t),
        Some(None) => return Err("empty second text".into()),
        None => None,
    };
    let label = match columns.label {
        None => Label::Unlabeled,
        Some(c) if task.is_regression() => Label::Score(parse_score(fields[c])?),
        Some(c) => Label::Class(parse_class(fields[c], label_names)?),
    };
    let idx = match columns.id {
        Some(c) => fields[c]
            .trim()
            .parse::<usize>()
            .map_err(|_| format!("id `{}` is not a non-negative integer", fields[c].trim()))?,
        None => row,
    };
    Ok(Example {
        idx,
        text_a,
        text_b,
        label,
    })
}
