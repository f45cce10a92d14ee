//! Reading text columns from a TSV or JSONL file, until the GLUE loader feeds rows.
//!
//! TSV is read as GLUE ships it: tab-separated, no quoting. A column is named by its
//! header (with a header row) or by its 0-based index. JSONL: one object per line,
//! columns are field names.

use std::path::Path;

use crate::{Error, Result};

/// Rows of the selected text columns, in file order; a file without rows is an error.
pub fn read_text_rows(path: &Path, columns: &[String], header: bool) -> Result<Vec<Vec<String>>> {
    let rows = read_rows(path, columns, header)?;
    if rows.is_empty() {
        return Err(no_rows(path));
    }
    Ok(rows)
}

fn no_rows(path: &Path) -> Error {
    Error::invalid(
        path.display(),
        "rows",
        "holds no rows to augment; expected at least one",
    )
}

fn read_rows(path: &Path, columns: &[String], header: bool) -> Result<Vec<Vec<String>>> {
    if columns.is_empty() || columns.len() > 2 {
        return Err(Error::invalid(
            path.display(),
            "text columns",
            "give one or two columns",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json"));
    if is_jsonl {
        return read_jsonl(path, text, columns);
    }
    let mut lines = text.lines().enumerate();
    let names: Vec<String> = if header {
        match lines.next() {
            Some((_, h)) => h.split('\t').map(|s| s.trim().to_string()).collect(),
            None => return Err(no_rows(path)),
        }
    } else {
        Vec::new()
    };
    let indices = columns
        .iter()
        .map(|c| {
            names
                .iter()
                .position(|n| n == c)
                .or_else(|| c.parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::invalid(
                        path.display(),
                        "text columns",
                        format!("no column `{c}` (header: {})", names.join(", ")),
                    )
                })
        })
        .collect::<Result<Vec<usize>>>()?;
    let mut rows = Vec::new();
    for (no, line) in lines {
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let row = indices
            .iter()
            .map(|&i| {
                fields.get(i).map(|s| s.to_string()).ok_or_else(|| {
                    Error::invalid(
                        path.display(),
                        format!("line {}", no + 1),
                        format!("has {} fields, column {i} wanted", fields.len()),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        rows.push(row);
    }
    Ok(rows)
}

fn read_jsonl(path: &Path, text: &str, columns: &[String]) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    for (no, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            cause: e,
        })?;
        let row = columns
            .iter()
            .map(|c| match value.get(c) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                _ => Err(Error::invalid(
                    path.display(),
                    format!("line {}", no + 1),
                    format!("no string field `{c}`"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_by_header_or_index_and_jsonl_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let tsv = dir.path().join("train.tsv");
        std::fs::write(&tsv, "\u{feff}id\ta\tb\n1\t\"quoted\" x\ty\n2\tp\tq\n").unwrap();
        let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rows = read_text_rows(&tsv, &cols(&["a", "b"]), true).unwrap();
        assert_eq!(rows, vec![vec!["\"quoted\" x", "y"], vec!["p", "q"]]);
        let rows = read_text_rows(&tsv, &cols(&["2"]), false).unwrap();
        assert_eq!(rows[0], vec!["b"]);
        assert!(read_text_rows(&tsv, &cols(&["zzz"]), true).is_err());
        let jsonl = dir.path().join("x.jsonl");
        std::fs::write(&jsonl, "{\"s\": \"hi\", \"label\": 1}\n\n{\"s\": \"yo\"}\n").unwrap();
        assert_eq!(
            read_text_rows(&jsonl, &cols(&["s"]), true).unwrap(),
            vec![vec!["hi"], vec!["yo"]]
        );
        assert!(read_text_rows(&jsonl, &cols(&["label"]), true).is_err());
        for (name, text) in [("empty.tsv", "a\tb\n"), ("empty.jsonl", "\n")] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let err = read_text_rows(&path, &cols(&["a"]), true)
                .unwrap_err()
                .to_string();
            assert!(err.contains(name) && err.contains("no rows"), "{err}");
        }
    }
}
