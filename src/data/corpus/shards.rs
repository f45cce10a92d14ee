//! A corpus's shards on disk: which files a list of paths and globs names, what each
//! holds (plain text, JSONL, TSV, parquet; `.gz` and `.zst` compressed or not), and its
//! text read one piece at a time, never whole.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use crate::hub::{HubRepo, Location, RepoKind};
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

/// Where hub dataset shards are named: `hf://datasets/org/name[@revision]/glob`, as in
/// Python's `huggingface_hub` file system.
const HUB_PREFIX: &str = "hf://datasets/";

/// One shard: a local file, or a file of a hub dataset repo at a commit, downloaded
/// into the hub's cache when a reader first needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shard {
    Local(PathBuf),
    Hub {
        repo: String,
        commit: String,
        name: String,
    },
}

impl Shard {
    /// The shard's local path, downloading a hub file not cached yet.
    pub fn local(&self) -> Result<PathBuf> {
        // Lanes sharing a shard ask for it at once: one downloads, the others then
        // find it in the cache.
        static DOWNLOADS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        match self {
            Shard::Local(path) => Ok(path.clone()),
            Shard::Hub { repo, commit, name } => {
                let _one_at_a_time = DOWNLOADS.lock().unwrap_or_else(|e| e.into_inner());
                let location = Location::Hub {
                    repo: repo.clone(),
                    revision: commit.clone(),
                    kind: RepoKind::Dataset,
                };
                location.open()?.require(name)
            }
        }
    }

    /// The name the shard's format is read from.
    fn name(&self) -> &Path {
        match self {
            Shard::Local(path) => path,
            Shard::Hub { name, .. } => Path::new(name),
        }
    }
}

/// The shards named by `patterns` (paths or globs such as `wiki/*.jsonl.zst`, or
/// `hf://datasets/org/name/glob` in a hub dataset repo), each glob's matches sorted by
/// name, in the order given. A pattern that names nothing is an error that names it.
pub fn resolve(patterns: &[String]) -> Result<Vec<Shard>> {
    if patterns.is_empty() {
        return Err(Error::invalid(
            "corpus",
            "files",
            "is empty: expected paths or globs of text, JSONL or parquet shards",
        ));
    }
    let mut shards = Vec::new();
    for pattern in patterns {
        let matched = match pattern.strip_prefix(HUB_PREFIX) {
            Some(rest) => hub_matches(pattern, rest)?,
            None => local_matches(pattern)?,
        };
        if matched.is_empty() {
            return Err(Error::invalid(
                pattern,
                "files",
                "matches no file (expected a path or glob of corpus shards)",
            ));
        }
        for shard in &matched {
            ShardFormat::of(shard.name())?;
        }
        shards.extend(matched);
    }
    Ok(shards)
}

fn local_matches(pattern: &str) -> Result<Vec<Shard>> {
    let mut matched: Vec<PathBuf> = glob::glob(pattern)
        .map_err(|e| Error::invalid(pattern, "glob", e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::invalid(pattern, "glob", e))?;
    matched.retain(|p| p.is_file());
    matched.sort();
    Ok(matched.into_iter().map(Shard::Local).collect())
}

/// The files of a hub dataset repo that `rest` (`org/name[@revision]/glob`) names, at
/// the commit its revision points to now.
fn hub_matches(pattern: &str, rest: &str) -> Result<Vec<Shard>> {
    let mut parts = rest.splitn(3, '/');
    let (org, name, glob) = match (parts.next(), parts.next(), parts.next()) {
        (Some(org), Some(name), Some(glob)) if !org.is_empty() && !glob.is_empty() => {
            (org, name, glob)
        }
        _ => {
            return Err(Error::invalid(
                pattern,
                "files",
                "expected hf://datasets/org/name[@revision]/glob",
            ))
        }
    };
    let (name, revision) = name.split_once('@').unwrap_or((name, "main"));
    let repo = format!("{org}/{name}");
    let glob = glob::Pattern::new(glob).map_err(|e| Error::invalid(pattern, "glob", e))?;
    let (commit, files) = HubRepo::new(&repo, revision, RepoKind::Dataset)?.files()?;
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    Ok(files
        .into_iter()
        .filter(|f| glob.matches_with(f, options))
        .map(|name| Shard::Hub {
            repo: repo.clone(),
            commit: commit.clone(),
            name,
        })
        .collect())
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

/// How the lines of a file of examples read: the rows a stage's `unlabeled` or
/// `augmented` data streams, tokenised as the task's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExampleLines {
    /// A text, or a tab-separated pair, per line (`unlabeled`, plain `augmented`).
    Text,
    /// A JSON record of `candle-distill augment` per line.
    Augmented,
}

/// Calls `each` with the text (and second text) of every example of `path` in order
/// that `keep` (asked once per example, in order) keeps; stops early (without error)
/// when `each` returns false. Lines not kept are not parsed. A bad line is an error
/// that names the file and line.
pub fn for_each_example(
    path: &Path,
    kind: ExampleLines,
    keep: &mut dyn FnMut() -> bool,
    each: &mut dyn FnMut(String, Option<String>) -> Result<bool>,
) -> Result<()> {
    let mut lines = NumberedLines::open(path)?;
    let mut pairs = None;
    while let Some((number, text)) = lines.next_line()? {
        if text.trim().is_empty() {
            continue;
        }
        // Whether a text file holds pairs is its first line's to say, kept or not.
        pairs.get_or_insert_with(|| text.split('\t').count() == 2);
        if !keep() {
            continue;
        }
        let bad = |message: String| Error::msg(format!("{}:{number}: {message}", path.display()));
        let (a, b) = match kind {
            ExampleLines::Text => {
                crate::data::user::unlabeled_line(text, &mut pairs).map_err(bad)?
            }
            ExampleLines::Augmented => {
                let row: crate::augment::AugmentedRow =
                    serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
                (row.text_a, row.text_b)
            }
        };
        if !each(a, b)? {
            return Ok(());
        }
    }
    Ok(())
}

/// A file's lines, read one at a time, numbered from 1, without line ends or a
/// byte-order mark.
struct NumberedLines<'p> {
    path: &'p Path,
    reader: Box<dyn BufRead + Send>,
    line: String,
    number: usize,
}

impl<'p> NumberedLines<'p> {
    fn open(path: &'p Path) -> Result<Self> {
        Ok(NumberedLines {
            path,
            reader: open_lines(path)?,
            line: String::new(),
            number: 0,
        })
    }

    /// The next line and its number.
    fn next_line(&mut self) -> Result<Option<(usize, &str)>> {
        self.line.clear();
        let read = self.reader.read_line(&mut self.line).map_err(|e| {
            let at = format!("line {}: {e}", self.number + 1);
            Error::io(self.path, std::io::Error::new(e.kind(), at))
        })?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        let text = self.line.trim_end_matches(['\n', '\r']);
        Ok(Some((self.number, text.trim_start_matches('\u{feff}'))))
    }
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
    let mut lines = NumberedLines::open(path)?;
    let mut column = None;
    while let Some((number, text)) = lines.next_line()? {
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
            .map(|p| p.name().file_name().unwrap().to_string_lossy().into_owned())
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
