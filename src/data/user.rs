//! Users' own data: CSV, TSV or JSON-lines files with named text and label columns,
//! and plain text files (one sentence, or a tab-separated pair, per line) for
//! distillation transfer sets.

use std::path::Path;

use super::dataset::{
    clean_text, parse_class, parse_score, Dataset, Example, Label, LoadOptions, RowErrors,
    UserFile, UserFormat,
};
use super::task::{Split, Task};
use crate::{Error, Result};

/// A row before its label is interpreted.
struct RawRow {
    at: String,
    texts: Vec<String>,
    label: Option<String>,
}

fn format_of(file: &UserFile) -> Result<UserFormat> {
    if let Some(f) = file.format {
        return Ok(f);
    }
    let ext = file
        .path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "csv" => Ok(UserFormat::Csv),
        "tsv" | "tab" => Ok(UserFormat::Tsv),
        "jsonl" | "json" | "ndjson" => Ok(UserFormat::JsonLines),
        _ => Err(Error::invalid(
            file.path.display(),
            "format",
            "cannot tell the format from the extension; expected .csv, .tsv or .jsonl",
        )),
    }
}

/// Loads a user file. With a task, its label names (or regression) apply.
pub fn load(
    file: &UserFile,
    task: Option<Task>,
    split: Split,
    options: &LoadOptions,
) -> Result<Dataset> {
    let origin = file.path.display().to_string();
    if file.text_columns.is_empty() || file.text_columns.len() > 2 {
        return Err(Error::invalid(
            &origin,
            "text columns",
            format!(
                "expected one or two text columns, got {}",
                file.text_columns.len()
            ),
        ));
    }
    let mut errors = RowErrors::new(options);
    let rows = match format_of(file)? {
        UserFormat::Csv => read_delimited(file, b',', true, &mut errors, options)?,
        UserFormat::Tsv => read_delimited(file, b'\t', false, &mut errors, options)?,
        UserFormat::JsonLines => read_json_lines(file, &mut errors, options)?,
    };
    let regression = file.regression || task.is_some_and(Task::is_regression);
    let label_names: Vec<String> = if regression {
        Vec::new()
    } else if let Some(names) = &file.labels {
        names.clone()
    } else if let Some(task) = task {
        task.label_names().iter().map(|s| s.to_string()).collect()
    } else {
        infer_labels(rows.iter().filter_map(|r| r.label.as_deref()))
    };
    let mut examples = Vec::with_capacity(rows.len());
    for (row_index, row) in rows.into_iter().enumerate() {
        let label = match &row.label {
            None => Ok(Label::Unlabeled),
            Some(v) if regression => parse_score(v).map(Label::Score),
            Some(v) => parse_class(v, &label_names).map(Label::Class),
        };
        let mut texts = row.texts.into_iter();
        match label {
            Ok(label) => examples.push(Example {
                idx: row_index,
                text_a: texts.next().unwrap_or_default(),
                text_b: texts.next(),
                label,
            }),
            Err(message) => errors.bad(&row.at, message)?,
        }
    }
    Ok(Dataset {
        task,
        split,
        label_names,
        regression,
        examples,
        origin,
        skipped: errors.skipped,
    })
}

/// Sorted distinct label values; numerically sorted when every value is an integer.
pub fn infer_labels<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<String> = values.map(|v| v.trim().to_string()).collect();
    names.sort();
    names.dedup();
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().unwrap_or_default());
    }
    names
}

fn read_delimited(
    file: &UserFile,
    delimiter: u8,
    quoting: bool,
    errors: &mut RowErrors,
    options: &LoadOptions,
) -> Result<Vec<RawRow>> {
    let origin = file.path.display().to_string();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .flexible(true)
        .from_path(&file.path)
        .map_err(|e| Error::invalid(&origin, "file", e))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| Error::invalid(&origin, "header", e))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
        .collect();
    let find = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            Error::invalid(
                format!("{origin}:1"),
                "header",
                format!("no `{name}` column in [{}]", header.join(", ")),
            )
        })
    };
    let text_cols = file
        .text_columns
        .iter()
        .map(|c| find(c))
        .collect::<Result<Vec<_>>>()?;
    let label_col = file.label_column.as_deref().map(find).transpose()?;
    let mut rows = Vec::new();
    for record in reader.records() {
        if options.limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        let record = record.map_err(|e| Error::invalid(&origin, "row", e))?;
        let line = record.position().map(|p| p.line()).unwrap_or_default();
        let at = format!("{origin}:{line}");
        if record.len() != header.len() {
            errors.bad(
                &at,
                format!("expected {} columns, found {}", header.len(), record.len()),
            )?;
            continue;
        }
        let texts: Option<Vec<String>> =
            text_cols.iter().map(|&c| clean_text(&record[c])).collect();
        let Some(texts) = texts else {
            errors.bad(&at, "empty text")?;
            continue;
        };
        rows.push(RawRow {
            at,
            texts,
            label: label_col.map(|c| record[c].to_string()),
        });
    }
    Ok(rows)
}

fn read_json_lines(
    file: &UserFile,
    errors: &mut RowErrors,
    options: &LoadOptions,
) -> Result<Vec<RawRow>> {
    let text = std::fs::read_to_string(&file.path).map_err(|e| Error::io(&file.path, e))?;
    let origin = file.path.display().to_string();
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if options.limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{origin}:{}", i + 1);
        let parsed = (|| -> std::result::Result<RawRow, String> {
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
            let object = value.as_object().ok_or("not a JSON object")?;
            let texts = file
                .text_columns
                .iter()
                .map(|c| match object.get(c) {
                    Some(serde_json::Value::String(s)) => {
                        clean_text(s).ok_or(format!("empty `{c}`"))
                    }
                    Some(_) => Err(format!("`{c}` is not a string")),
                    None => Err(format!("no `{c}` field")),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let label = match file.label_column.as_deref() {
                None => None,
                Some(c) => Some(match object.get(c) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    Some(serde_json::Value::Bool(b)) => b.to_string(),
                    _ => return Err(format!("no string or number `{c}` field")),
                }),
            };
            Ok(RawRow {
                at: at.clone(),
                texts,
                label,
            })
        })();
        match parsed {
            Ok(row) => rows.push(row),
            Err(message) => errors.bad(&at, message)?,
        }
    }
    Ok(rows)
}

/// The text, or the text pair, of a line (not blank) of an unlabeled file. `pairs`
/// is whether the file's rows are pairs, set by its first row.
pub fn unlabeled_line(
    line: &str,
    pairs: &mut Option<bool>,
) -> std::result::Result<(String, Option<String>), String> {
    let fields: Vec<&str> = line.split('\t').collect();
    let is_pair = fields.len() == 2;
    if fields.len() > 2 || *pairs.get_or_insert(is_pair) != is_pair {
        return Err(format!(
            "expected {} tab-separated field(s), found {}",
            if *pairs == Some(true) { 2 } else { 1 },
            fields.len()
        ));
    }
    let texts: Option<Vec<String>> = fields.iter().map(|f| clean_text(f)).collect();
    let mut texts = texts.ok_or("empty text")?;
    let text_b = if is_pair { texts.pop() } else { None };
    Ok((texts.remove(0), text_b))
}

/// Unlabeled text for a distillation transfer set: one sentence per line, or a pair
/// separated by one tab. Blank lines are ignored.
pub fn load_unlabeled(path: &Path, options: &LoadOptions) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let origin = path.display().to_string();
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut errors = RowErrors::new(options);
    let mut examples: Vec<Example> = Vec::new();
    let mut pairs = None;
    for (i, line) in text.lines().enumerate() {
        if options.limit.is_some_and(|n| examples.len() >= n) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{origin}:{}", i + 1);
        match unlabeled_line(line, &mut pairs) {
            Ok((text_a, text_b)) => examples.push(Example {
                idx: examples.len(),
                text_a,
                text_b,
                label: Label::Unlabeled,
            }),
            Err(message) => errors.bad(&at, message)?,
        }
    }
    let dataset = Dataset {
        task: None,
        split: Split::Train,
        label_names: Vec::new(),
        regression: false,
        examples,
        origin,
        skipped: errors.skipped,
    };
    super::dataset::require_rows(&dataset)?;
    Ok(dataset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_file(path: &Path, text: &[&str], label: Option<&str>) -> UserFile {
        UserFile {
            path: path.to_path_buf(),
            format: None,
            text_columns: text.iter().map(|s| s.to_string()).collect(),
            label_column: label.map(str::to_string),
            labels: None,
            regression: false,
        }
    }

    #[test]
    fn csv_with_quotes_and_inferred_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reviews.csv");
        std::fs::write(
            &path,
            "id,text,stars\n1,\"Great, really\",5\n2,Bad,1\n3,\"Okay \"\"ish\"\"\",10\n",
        )
        .unwrap();
        let file = user_file(&path, &["text"], Some("stars"));
        let ds = load(&file, None, Split::Train, &LoadOptions::default()).unwrap();
        assert_eq!(ds.label_names, vec!["1", "5", "10"], "numeric order");
        assert_eq!(ds.examples[0].text_a, "Great, really");
        assert_eq!(ds.examples[0].label, Label::Class(1));
        assert_eq!(ds.examples[2].text_a, "Okay \"ish\"");
        assert_eq!(ds.examples[2].label, Label::Class(2));
    }

    #[test]
    fn tsv_pairs_with_given_labels_and_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.tsv");
        std::fs::write(
            &path,
            "q\ta\tlab\n\"Why\tBecause\tyes\nWho\tNobody\tno\nWhat\t\tyes\nHow\tSo\tmaybe\nA\tB\n",
        )
        .unwrap();
        let mut file = user_file(&path, &["q", "a"], Some("lab"));
        file.labels = Some(vec!["no".into(), "yes".into()]);
        let err = load(&file, None, Split::Train, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pairs.tsv:4") && err.contains("empty text"),
            "{err}"
        );
        let options = LoadOptions {
            skip_malformed: true,
            limit: None,
        };
        let ds = load(&file, None, Split::Train, &options).unwrap();
        assert_eq!(ds.skipped, 3, "empty text, unknown label, short row");
        assert_eq!(
            ds.examples[0].text_a, "\"Why",
            "quotes are plain text in TSV"
        );
        assert_eq!(ds.examples[0].label, Label::Class(1));
        assert_eq!(ds.examples[1].text_b.as_deref(), Some("Nobody"));
    }

    #[test]
    fn json_lines_with_task_labels_and_regression() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(
            &path,
            "{\"s\": \"fun\", \"y\": \"positive\"}\n\n{\"s\": \"dull\", \"y\": 0}\n[1]\n",
        )
        .unwrap();
        let file = user_file(&path, &["s"], Some("y"));
        let err = load(&file, Some(Task::Sst2), Split::Dev, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data.jsonl:4") && err.contains("not a JSON object"),
            "{err}"
        );
        let options = LoadOptions {
            skip_malformed: true,
            limit: None,
        };
        let ds = load(&file, Some(Task::Sst2), Split::Dev, &options).unwrap();
        assert_eq!(ds.label_counts(), vec![1, 1]);

        std::fs::write(
            &path,
            "{\"s\": \"a\", \"y\": 4.5}\n{\"s\": \"b\", \"y\": \"1\"}\n",
        )
        .unwrap();
        let mut file = user_file(&path, &["s"], Some("y"));
        file.regression = true;
        let ds = load(&file, None, Split::Train, &LoadOptions::default()).unwrap();
        assert_eq!(ds.examples[0].label, Label::Score(4.5));
        assert_eq!(ds.num_outputs(), 1);
    }

    #[test]
    fn unlabeled_text_single_and_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("transfer.txt");
        std::fs::write(&path, "a fine film\n\nthe plot is thin \n").unwrap();
        let ds = load_unlabeled(&path, &LoadOptions::default()).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.examples[1].text_a, "the plot is thin");
        assert!(!ds.is_labeled());
        std::fs::write(&path, "q one\ta one\nq two\ta two\nlonely\n").unwrap();
        let err = load_unlabeled(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("transfer.txt:3"), "{err}");
        let skip = LoadOptions {
            skip_malformed: true,
            limit: None,
        };
        let ds = load_unlabeled(&path, &skip).unwrap();
        assert_eq!((ds.len(), ds.skipped), (2, 1));
        assert_eq!(ds.examples[1].text_b.as_deref(), Some("a two"));
        // Nothing left to train on is an error naming the file, not an empty stage.
        std::fs::write(&path, "\n\n").unwrap();
        let err = load_unlabeled(&path, &skip).unwrap_err().to_string();
        assert!(
            err.contains("transfer.txt") && err.contains("no examples"),
            "{err}"
        );
    }
}
