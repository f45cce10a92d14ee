//! The text of a corpus's shards, read one piece at a time and never whole: the lines
//! of text, JSONL and TSV shards (decompressed as their names say) and the rows of
//! parquet ones, and the examples of a streamed transfer set.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::Field;
use parquet::schema::types::Type;

use super::shards::{split_compression, Compression, ShardFormat};
use crate::{Error, Result};

/// One piece of a shard's text, in order: a line of a text shard is lent from the
/// reader's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(Cow<'a, str>),
    /// A line or record the caller did not want, counted and not parsed: a lane that
    /// keeps every twelfth document of a shard does not decode the other eleven.
    Unread,
    /// The end of a document: packed segments do not run across it.
    DocumentEnd,
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

/// How the lines of a file of examples read: the rows a stage's `unlabeled` or
/// `augmented` data streams, tokenised as the task's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExampleLines {
    /// A text, or a tab-separated pair, per line (`unlabeled`, plain `augmented`).
    Text,
    /// A JSON record of `candle-distill augment` per line.
    Augmented,
}

/// The examples of a file, read one at a time. Lines not kept are not parsed; a bad
/// line is an error that names the file and line.
pub struct ExampleReader {
    lines: NumberedLines,
    kind: ExampleLines,
    /// Whether a text file holds pairs: its first line's to say, kept or not.
    pairs: Option<bool>,
    /// Examples seen so far, kept or not.
    seen: usize,
}

impl ExampleReader {
    pub fn open(path: &Path, kind: ExampleLines) -> Result<Self> {
        Ok(ExampleReader {
            lines: NumberedLines::open(path)?,
            kind,
            pairs: None,
            seen: 0,
        })
    }

    /// The text (and second text) of the next example whose index in the file `keep`
    /// keeps; none at the end.
    pub fn next_example(
        &mut self,
        keep: &dyn Fn(usize) -> bool,
    ) -> Result<Option<(String, Option<String>)>> {
        while let Some(number) = self.lines.advance()? {
            let text = self.lines.text();
            if text.trim().is_empty() {
                continue;
            }
            self.pairs
                .get_or_insert_with(|| text.split('\t').count() == 2);
            self.seen += 1;
            if !keep(self.seen - 1) {
                continue;
            }
            let path = &self.lines.path;
            let bad =
                |message: String| Error::msg(format!("{}:{number}: {message}", path.display()));
            return match self.kind {
                ExampleLines::Text => crate::data::user::unlabeled_line(text, &mut self.pairs)
                    .map(Some)
                    .map_err(bad),
                ExampleLines::Augmented => serde_json::from_str(text)
                    .map(|row: AugmentedText| Some((row.text_a, row.text_b)))
                    .map_err(|e| bad(e.to_string())),
            };
        }
        Ok(None)
    }
}

/// The text columns of a row that `augment` wrote (`augment::AugmentedRow`; its other
/// fields say where the row came from, which a corpus does not need).
#[derive(serde::Deserialize)]
struct AugmentedText {
    text_a: String,
    #[serde(default)]
    text_b: Option<String>,
}

/// A file's lines, read one at a time, numbered from 1, without line ends or a
/// byte-order mark.
struct NumberedLines {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    line: String,
    number: usize,
}

impl NumberedLines {
    fn open(path: &Path) -> Result<Self> {
        Ok(NumberedLines {
            path: path.to_path_buf(),
            reader: open_lines(path)?,
            line: String::new(),
            number: 0,
        })
    }

    /// Reads the next line; its number, or none at the end.
    fn advance(&mut self) -> Result<Option<usize>> {
        self.line.clear();
        let read = self.reader.read_line(&mut self.line).map_err(|e| {
            let at = format!("line {}: {e}", self.number + 1);
            Error::io(&self.path, std::io::Error::new(e.kind(), at))
        })?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        Ok(Some(self.number))
    }

    /// The line last read.
    fn text(&self) -> &str {
        let text = self.line.trim_end_matches(['\n', '\r']);
        text.trim_start_matches('\u{feff}')
    }
}

/// The pieces of a shard, read one at a time, the last a document end.
pub struct PieceReader {
    source: PieceSource,
    /// A document end is due before the next piece read (after a record).
    pending_end: bool,
    /// The shard's closing document end was given.
    closed: bool,
}

enum PieceSource {
    Lines {
        lines: NumberedLines,
        format: ShardFormat,
        text_field: String,
        /// A TSV shard's text column, once its header was read.
        column: Option<usize>,
    },
    Parquet {
        rows: RowIter<'static>,
        text_field: String,
        origin: String,
        row: usize,
    },
}

impl PieceReader {
    pub fn open(path: &Path, text_field: &str) -> Result<Self> {
        let source = match ShardFormat::of(path)? {
            ShardFormat::Parquet => parquet_rows(path, text_field)?,
            format => PieceSource::Lines {
                lines: NumberedLines::open(path)?,
                format,
                text_field: text_field.to_string(),
                column: None,
            },
        };
        Ok(PieceReader {
            source,
            pending_end: false,
            closed: false,
        })
    }

    /// The next piece; none after the shard's closing document end. Unless `wanted`,
    /// a line or record comes as [`Piece::Unread`] (its errors are left to the reader
    /// that wants it).
    pub fn next_piece(&mut self, wanted: bool) -> Result<Option<Piece<'_>>> {
        if std::mem::take(&mut self.pending_end) {
            return Ok(Some(Piece::DocumentEnd));
        }
        let text = match &mut self.source {
            PieceSource::Lines {
                lines,
                format,
                text_field,
                column,
            } => next_line_piece(lines, *format, text_field, column, wanted)?,
            PieceSource::Parquet {
                rows,
                text_field,
                origin,
                row,
            } => next_parquet_text(rows, text_field, origin, row, wanted)?.map(|text| (text, true)),
        };
        Ok(match text {
            Some((piece, record)) => {
                // A JSONL, TSV or parquet record is a document of its own.
                self.pending_end = record;
                Some(piece)
            }
            None if self.closed => None,
            None => {
                self.closed = true;
                Some(Piece::DocumentEnd)
            }
        })
    }
}

/// The next piece of a line-based shard, and whether it is a record (a document of
/// its own); none at the end.
fn next_line_piece<'a>(
    lines: &'a mut NumberedLines,
    format: ShardFormat,
    text_field: &str,
    column: &mut Option<usize>,
    wanted: bool,
) -> Result<Option<(Piece<'a>, bool)>> {
    loop {
        let Some(number) = lines.advance()? else {
            return Ok(None);
        };
        let (text, path) = (lines.text(), &lines.path);
        let blank = text.trim().is_empty();
        let record = match format {
            ShardFormat::Jsonl | ShardFormat::Tsv if blank => continue,
            // A record not wanted is not parsed (a TSV header always is).
            ShardFormat::Jsonl if !wanted => return Ok(Some((Piece::Unread, true))),
            ShardFormat::Tsv if !wanted && column.is_some() => {
                return Ok(Some((Piece::Unread, true)))
            }
            ShardFormat::Jsonl => json_text(text, text_field, path, number)?,
            ShardFormat::Tsv => match column {
                None => {
                    *column = Some(tsv_column(text, text_field, path)?);
                    continue;
                }
                Some(c) => tsv_text(text, *c, path, number)?,
            },
            _ if blank => return Ok(Some((Piece::DocumentEnd, false))),
            _ if !wanted => return Ok(Some((Piece::Unread, false))),
            // A line of text, lent (returned after the loop, where the borrow may end).
            _ => break,
        };
        return Ok(Some((Piece::Text(record.into()), true)));
    }
    Ok(Some((Piece::Text(Cow::Borrowed(lines.text())), false)))
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

/// A parquet shard's rows, after checking it has the text column; only that column
/// is decoded when it is a top-level one (a wiki dump's rows also hold ids, URLs and
/// titles).
fn parquet_rows(path: &Path, text_field: &str) -> Result<PieceSource> {
    let origin = path.display().to_string();
    let bad = |e: parquet::errors::ParquetError| Error::invalid(&origin, "parquet", e);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let columns = crate::data::parquet::column_names(&reader);
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    if !columns.iter().any(|c| c == text_field) {
        return Err(Error::invalid(
            &origin,
            "columns",
            format!("no `{text_field}` column in [{}]", columns.join(", ")),
        ));
    }
    let root = schema.root_schema();
    let projection = root
        .get_fields()
        .iter()
        .find(|f| f.name() == text_field)
        .map(|field| {
            Type::group_type_builder(root.name())
                .with_fields(vec![field.clone()])
                .build()
        })
        .transpose()
        .map_err(bad)?;
    let rows = RowIter::from_file_into(Box::new(reader))
        .project(projection)
        .map_err(bad)?;
    Ok(PieceSource::Parquet {
        rows,
        text_field: text_field.to_string(),
        origin,
        row: 0,
    })
}

/// The text of the next parquet row that has one (unread unless `wanted`); none at
/// the end.
fn next_parquet_text(
    rows: &mut RowIter<'static>,
    text_field: &str,
    origin: &str,
    row: &mut usize,
    wanted: bool,
) -> Result<Option<Piece<'static>>> {
    for next in rows {
        *row += 1;
        let next =
            next.map_err(|e| Error::invalid(format!("{origin}: row {}", *row - 1), "parquet", e))?;
        let text = next
            .get_column_iter()
            .find(|(name, _)| name.as_str() == text_field)
            .and_then(|(_, field)| match field {
                Field::Str(s) => Some(s),
                _ => None,
            });
        match text {
            Some(text) if wanted => return Ok(Some(Piece::Text(text.clone().into()))),
            Some(_) => return Ok(Some(Piece::Unread)),
            None => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Every piece of a shard, its lines and records wanted or not.
    fn read_pieces(path: &Path, field: &str, wanted: bool) -> Result<Vec<Piece<'static>>> {
        let mut reader = PieceReader::open(path, field)?;
        let mut out = Vec::new();
        while let Some(piece) = reader.next_piece(wanted)? {
            out.push(match piece {
                Piece::Text(t) => Piece::Text(Cow::Owned(t.into_owned())),
                Piece::Unread => Piece::Unread,
                Piece::DocumentEnd => Piece::DocumentEnd,
            });
        }
        Ok(out)
    }

    fn read_all(path: &Path, field: &str) -> Result<Vec<Piece<'static>>> {
        read_pieces(path, field, true)
    }

    fn pieces(path: &Path, field: &str) -> Vec<Piece<'static>> {
        read_all(path, field).unwrap()
    }

    fn text(s: &str) -> Piece<'static> {
        Piece::Text(s.to_string().into())
    }

    /// Two one-record documents, "x y" and "z", then the shard's end.
    fn x_y_then_z() -> Vec<Piece<'static>> {
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
        let err = read_all(&path, "text").unwrap_err();
        assert!(
            err.to_string().contains("c.jsonl:1: text: missing"),
            "{err}"
        );
        std::fs::write(&path, "{\"body\": 3}\n").unwrap();
        let err = read_all(&path, "body").unwrap_err();
        assert!(
            err.to_string().contains("expected a string, found 3"),
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
        let err = read_all(&path, "text").unwrap_err();
        assert!(err.to_string().contains("no `text` column in ["), "{err}");
    }

    /// Every piece of a shard, none of its lines or records wanted: no text comes.
    fn unwanted(path: &Path, field: &str) -> Vec<Piece<'static>> {
        let out = read_pieces(path, field, false).unwrap();
        let read = out.iter().find(|p| matches!(p, Piece::Text(_)));
        assert!(read.is_none(), "{read:?} read though not wanted");
        out
    }

    #[test]
    fn pieces_not_wanted_are_counted_and_not_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let one_then_bad = [
            Piece::Unread,
            Piece::DocumentEnd,
            Piece::Unread,
            Piece::DocumentEnd,
        ];
        let jsonl = dir.path().join("c.jsonl");
        std::fs::write(&jsonl, "{\"body\": \"x\"}\n\nnot json\n").unwrap();
        assert_eq!(
            unwanted(&jsonl, "body"),
            [&one_then_bad[..], &[Piece::DocumentEnd]].concat()
        );
        let mut reader = PieceReader::open(&jsonl, "body").unwrap();
        reader.next_piece(false).unwrap();
        reader.next_piece(false).unwrap();
        let err = reader.next_piece(true).unwrap_err();
        assert!(err.to_string().contains("c.jsonl:3: JSON"), "{err}");
        let tsv = dir.path().join("t.tsv");
        std::fs::write(&tsv, "sentence\tlabel\nx\t1\nonly\n").unwrap();
        assert_eq!(
            unwanted(&tsv, "sentence"),
            [&one_then_bad[..], &[Piece::DocumentEnd]].concat()
        );
        let err = read_all(&dir.path().join("t.tsv"), "label").unwrap_err();
        assert!(err.to_string().contains("t.tsv:3: columns"), "{err}");
        let text = dir.path().join("a.txt");
        std::fs::write(&text, "one\n\ntwo\n").unwrap();
        assert_eq!(
            unwanted(&text, "text"),
            [
                Piece::Unread,
                Piece::DocumentEnd,
                Piece::Unread,
                Piece::DocumentEnd
            ]
        );
        let parquet = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/glue-parquet/cola/train-00000-of-00001.parquet");
        let read = pieces(&parquet, "sentence");
        let unread = unwanted(&parquet, "sentence");
        assert_eq!(unread.len(), read.len());
        assert!(unread.iter().zip(&read).all(|(u, r)| matches!(
            (u, r),
            (Piece::Unread, Piece::Text(_)) | (Piece::DocumentEnd, Piece::DocumentEnd)
        )));
    }

    #[test]
    fn tsv_rows_are_documents_of_the_named_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.tsv");
        std::fs::write(&path, "sentence\tlabel\nx y \t1\n\nz\t0\n").unwrap();
        assert_eq!(pieces(&path, "sentence"), x_y_then_z());
        let err = read_all(&path, "text").unwrap_err();
        assert!(
            err.to_string()
                .contains("train.tsv:1: columns: no `text` column"),
            "{err}"
        );
        let err = read_all(&path, "label");
        assert!(err.is_ok());
        std::fs::write(&path, "a\tsentence\nonly\n").unwrap();
        let err = read_all(&path, "sentence").unwrap_err();
        assert!(
            err.to_string()
                .contains("train.tsv:2: columns: expected at least 2"),
            "{err}"
        );
    }

    #[test]
    fn examples_are_kept_by_their_index_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.tsv");
        std::fs::write(&path, "a\tb\n\nc\td\ne\tf\n").unwrap();
        let mut reader = ExampleReader::open(&path, ExampleLines::Text).unwrap();
        let odd = |i: usize| i % 2 == 1;
        let first = reader.next_example(&odd).unwrap();
        assert_eq!(first, Some(("c".to_string(), Some("d".to_string()))));
        assert_eq!(reader.next_example(&odd).unwrap(), None);
        std::fs::write(&path, "{\"text_a\": 3}\n").unwrap();
        let mut reader = ExampleReader::open(&path, ExampleLines::Augmented).unwrap();
        let err = reader.next_example(&|_| true).unwrap_err();
        assert!(err.to_string().contains("u.tsv:1: "), "{err}");
    }
}
