//! A corpus's shards on disk: which files a list of paths and globs names, what each
//! holds (plain text, JSONL, TSV, parquet; `.gz` and `.zst` compressed or not), and its
//! text read one piece at a time, never whole.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use crate::{Error, Result};

/// What a shard holds, from its name (after any `.gz` or `.zst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardFormat {
    /// One sentence or paragraph per line; a blank line ends a document.
    Text,
    /// One JSON object per line; its text field is one document.
    Jsonl,
    /// Tab-separated with a header row (GLUE's files); the text column of each row is
    /// one document.
    Tsv,
    /// A text column; each row is one document.
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One piece of a shard's text, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// The end of a document: packed segments do not run across it.
    DocumentEnd,
}

/// The files named by `patterns` (paths or globs such as `wiki/*.jsonl.zst`), each
/// glob's matches sorted by name, in the order given. A pattern that names nothing is
/// an error that names it.
pub fn resolve(patterns: &[String]) -> Result<Vec<PathBuf>> {
    if patterns.is_empty() {
        return Err(Error::invalid(
            "corpus",
            "files",
            "is empty: expected paths or globs of text, JSONL or parquet shards",
        ));
    }
    let mut files = Vec::new();
    for pattern in patterns {
        let mut matched: Vec<PathBuf> = glob::glob(pattern)
            .map_err(|e| Error::invalid(pattern, "glob", e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::invalid(pattern, "glob", e))?;
        matched.retain(|p| p.is_file());
        if matched.is_empty() {
            return Err(Error::invalid(
                pattern,
                "files",
                "matches no file (expected a path or glob of corpus shards)",
            ));
        }
        matched.sort();
        for path in &matched {
            ShardFormat::of(path)?;
        }
        files.extend(matched);
    }
    Ok(files)
}

impl ShardFormat {
    /// The format of a shard from its extension, refusing names it cannot read.
    pub fn of(path: &Path) -> Result<Self> {
        let (stem, _) = split_compression(path);
        let ext = stem.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("txt" | "text") => Ok(ShardFormat::Text),
            Some("jsonl" | "ndjson") => Ok(ShardFormat::Jsonl),
            Some("tsv") => Ok(ShardFormat::Tsv),
            Some("parquet") if split_compression(path).1 == Compression::None => {
                Ok(ShardFormat::Parquet)
            }
            _ => Err(Error::invalid(
                path.display(),
                "format",
                "expected a .txt, .jsonl, .tsv or .parquet shard (all but parquet optionally .gz or .zst)",
            )),
        }
    }
}

fn split_compression(path: &Path) -> (String, Compression) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".gz") {
        (name[..name.len() - 3].to_string(), Compression::Gzip)
    } else if lower.ends_with(".zst") {
        (name[..name.len() - 4].to_string(), Compression::Zstd)
    } else {
        (name, Compression::None)
    }
}

/// The shard's lines, decompressed as its name says.
fn open_lines(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let raw: Box<dyn Read + Send> = match split_compression(path).1 {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| Error::io(path, e))?)
        }
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, raw)))
}

/// Calls `each` with every piece of `path` in order, ending with a document end;
/// stops early (without error) when `each` returns false.
pub fn for_each_piece(
    path: &Path,
    text_field: &str,
    each: &mut dyn FnMut(Piece) -> Result<bool>,
) -> Result<()> {
    match ShardFormat::of(path)? {
        ShardFormat::Parquet => parquet_pieces(path, text_field, each),
        format => line_pieces(path, format, text_field, each),
    }
}

fn line_pieces(
    path: &Path,
    format: ShardFormat,
    text_field: &str,
    each: &mut dyn FnMut(Piece) -> Result<bool>,
) -> Result<()> {
    let mut lines = open_lines(path)?;
    let mut line = String::new();
    let mut number = 0usize;
    let mut column = None;
    loop {
        line.clear();
        let read = lines.read_line(&mut line).map_err(|e| {
            Error::io(
                path,
                std::io::Error::new(e.kind(), format!("line {}: {e}", number + 1)),
            )
        })?;
        if read == 0 {
            break;
        }
        number += 1;
        let text = line
            .trim_end_matches(['\n', '\r'])
            .trim_start_matches('\u{feff}');
        let piece = match format {
            ShardFormat::Jsonl | ShardFormat::Tsv if text.trim().is_empty() => continue,
            ShardFormat::Jsonl => Piece::Text(json_text(text, text_field, path, number)?),
            ShardFormat::Tsv => match column {
                None => {
                    column = Some(tsv_column(text, text_field, path)?);
                    continue;
                }
                Some(c) => Piece::Text(tsv_text(text, c, path, number)?),
            },
            _ if text.trim().is_empty() => Piece::DocumentEnd,
            _ => Piece::Text(text.to_string()),
        };
        let document_end = matches!(format, ShardFormat::Jsonl | ShardFormat::Tsv);
        if !each(piece)? || (document_end && !each(Piece::DocumentEnd)?) {
            return Ok(());
        }
    }
    each(Piece::DocumentEnd).map(|_| ())
}

fn json_text(line: &str, field: &str, path: &Path, number: usize) -> Result<String> {
    let at = || format!("{}:{number}", path.display());
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Error::invalid(at(), "JSON", e))?;
    match value.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(Error::invalid(
            at(),
            field,
            format!("expected a string, found {other}"),
        )),
        None => Err(Error::invalid(
            at(),
            field,
            "missing (set the corpus's text_field to the field holding the text)",
        )),
    }
}

fn tsv_column(header: &str, field: &str, path: &Path) -> Result<usize> {
    header.split('\t').position(|c| c == field).ok_or_else(|| {
        Error::invalid(
            format!("{}:1", path.display()),
            "columns",
            format!(
                "no `{field}` column in the header [{}]",
                header.replace('\t', ", ")
            ),
        )
    })
}

fn tsv_text(line: &str, column: usize, path: &Path, number: usize) -> Result<String> {
    line.split('\t')
        .nth(column)
        .map(|t| t.trim().to_string())
        .ok_or_else(|| {
            Error::invalid(
                format!("{}:{number}", path.display()),
                "columns",
                format!("expected at least {} tab-separated fields", column + 1),
            )
        })
}

fn parquet_pieces(
    path: &Path,
    text_field: &str,
    each: &mut dyn FnMut(Piece) -> Result<bool>,
) -> Result<()> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader =
        SerializedFileReader::new(file).map_err(|e| Error::invalid(&origin, "parquet", e))?;
    let columns: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    if !columns.iter().any(|c| c == text_field) {
        return Err(Error::invalid(
            &origin,
            "columns",
            format!("no `{text_field}` column in [{}]", columns.join(", ")),
        ));
    }
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| Error::invalid(&origin, "parquet", e))?;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| Error::invalid(format!("{origin}: row {i}"), "parquet", e))?;
        let text = row
            .get_column_iter()
            .find(|(name, _)| name.as_str() == text_field)
            .and_then(|(_, field)| match field {
                Field::Str(s) => Some(s.clone()),
                _ => None,
            });
        let Some(text) = text else { continue };
        if !each(Piece::Text(text))? || !each(Piece::DocumentEnd)? {
            return Ok(());
        }
    }
    each(Piece::DocumentEnd).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pieces(path: &Path, field: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        for_each_piece(path, field, &mut |p| {
            out.push(p);
            Ok(true)
        })
        .unwrap();
        out
    }

    fn text(s: &str) -> Piece {
        Piece::Text(s.to_string())
    }

    /// Two one-record documents, "x y" and "z", then the shard's end.
    fn x_y_then_z() -> Vec<Piece> {
        vec![
            text("x y"),
            Piece::DocumentEnd,
            text("z"),
            Piece::DocumentEnd,
            Piece::DocumentEnd,
        ]
    }

    #[test]
    fn text_gzip_and_zstd_shards_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let body = "one\ntwo\n\nthree\n";
        std::fs::write(dir.path().join("a.txt"), body).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body.as_bytes()).unwrap();
        std::fs::write(dir.path().join("b.txt.gz"), gz.finish().unwrap()).unwrap();
        let zst = zstd::stream::encode_all(body.as_bytes(), 1).unwrap();
        std::fs::write(dir.path().join("c.TXT.zst"), zst).unwrap();
        let expected = vec![
            text("one"),
            text("two"),
            Piece::DocumentEnd,
            text("three"),
            Piece::DocumentEnd,
        ];
        for name in ["a.txt", "b.txt.gz", "c.TXT.zst"] {
            assert_eq!(pieces(&dir.path().join(name), "text"), expected, "{name}");
        }
    }

    #[test]
    fn jsonl_records_are_documents_and_bad_records_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        std::fs::write(&path, "{\"body\": \"x y\"}\n\n{\"body\": \"z\"}\n").unwrap();
        assert_eq!(pieces(&path, "body"), x_y_then_z());
        let err = for_each_piece(&path, "text", &mut |_| Ok(true)).unwrap_err();
        assert!(
            err.to_string().contains("c.jsonl:1: text: missing"),
            "{err}"
        );
        std::fs::write(&path, "{\"body\": 3}\n").unwrap();
        let err = for_each_piece(&path, "body", &mut |_| Ok(true)).unwrap_err();
        assert!(
            err.to_string().contains("expected a string, found 3"),
            "{err}"
        );
    }

    #[test]
    fn globs_resolve_sorted_and_unmatched_or_unknown_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.txt", "a.txt", "c.jsonl.zst"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let d = dir.path().display();
        let files = resolve(&[format!("{d}/*.txt"), format!("{d}/c.jsonl.zst")]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.txt", "b.txt", "c.jsonl.zst"]);
        let err = resolve(&[format!("{d}/*.parquet")]).unwrap_err();
        assert!(err.to_string().contains("matches no file"), "{err}");
        std::fs::write(dir.path().join("d.csv"), "").unwrap();
        let err = resolve(&[format!("{d}/d.csv")]).unwrap_err();
        assert!(
            err.to_string().contains("d.csv: format: expected a .txt"),
            "{err}"
        );
    }

    #[test]
    fn parquet_rows_are_documents_of_the_named_column() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/glue-parquet/cola/train-00000-of-00001.parquet");
        let all = pieces(&path, "sentence");
        let texts = all.iter().filter(|p| matches!(p, Piece::Text(_))).count();
        assert!(texts > 0);
        // Each row is followed by its document end, and the shard ends with one.
        assert_eq!(all.len(), 2 * texts + 1);
        let err = for_each_piece(&path, "text", &mut |_| Ok(true)).unwrap_err();
        assert!(err.to_string().contains("no `text` column in ["), "{err}");
    }

    #[test]
    fn tsv_rows_are_documents_of_the_named_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.tsv");
        std::fs::write(&path, "sentence\tlabel\nx y \t1\n\nz\t0\n").unwrap();
        assert_eq!(pieces(&path, "sentence"), x_y_then_z());
        let err = for_each_piece(&path, "text", &mut |_| Ok(true)).unwrap_err();
        assert!(
            err.to_string()
                .contains("train.tsv:1: columns: no `text` column"),
            "{err}"
        );
        let err = for_each_piece(&path, "label", &mut |_| Ok(true));
        assert!(err.is_ok());
        std::fs::write(&path, "a\tsentence\nonly\n").unwrap();
        let err = for_each_piece(&path, "sentence", &mut |_| Ok(true)).unwrap_err();
        assert!(
            err.to_string()
                .contains("train.tsv:2: columns: expected at least 2"),
            "{err}"
        );
    }

    #[test]
    fn reading_stops_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "1\n2\n3\n").unwrap();
        let mut seen = 0;
        for_each_piece(&path, "text", &mut |_| {
            seen += 1;
            Ok(seen < 2)
        })
        .unwrap();
        assert_eq!(seen, 2);
    }
}
