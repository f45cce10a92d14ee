//! The augmented file of one task and method, cached by a content key and written in
//! resumable chunks.
//!
//! Layout in the output folder:
//! - `<task>.<method>.<key16>.jsonl`: the finished file, one [`AugmentedRow`] per line;
//!   its existence means it is complete (it is renamed into place). A second run with the
//!   same key reuses it; other settings give another key, so nothing is overwritten.
//! - `<task>.<method>.<key16>.json`: the manifest (full key, counts).
//! - `.<task>.<method>.<key16>.partial/`: chunks of `chunk_rows` input rows and
//!   `progress.json` while the run is going; an interrupted run resumes after the last
//!   chunk recorded there. Each chunk and the progress file are written atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{augment_rows, check_rows, AugmentedRow, Method, TextAugmenter};
use crate::{Error, Result};

/// Bump when the output of a method changes for the same inputs and settings.
pub const FORMAT_VERSION: u32 = 1;

/// SHA-256 over labelled parts: input rows, model identities, settings.
pub struct KeyBuilder(Sha256);

impl Default for KeyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyBuilder {
    pub fn new() -> Self {
        let mut h = Sha256::new();
        h.update(format!("candle-distill augment v{FORMAT_VERSION}\0"));
        KeyBuilder(h)
    }

    pub fn add(&mut self, label: &str, bytes: &[u8]) -> &mut Self {
        self.0.update((label.len() as u64).to_le_bytes());
        self.0.update(label.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn add_rows(&mut self, rows: &[Vec<String>]) -> &mut Self {
        let mut h = Sha256::new();
        for row in rows {
            for text in row {
                h.update((text.len() as u64).to_le_bytes());
                h.update(text.as_bytes());
            }
            h.update([0xff]);
        }
        self.add("rows", &h.finalize())
    }

    /// A file's identity: small files (configs, vocabularies) by content, large ones
    /// (weights) by name and size. Hub paths hold the revision's snapshot hash anyway.
    pub fn add_file(&mut self, label: &str, path: &Path) -> Result<&mut Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.len() <= 16 << 20 {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            self.add(label, &Sha256::digest(&bytes));
        } else {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            self.add(label, format!("{name}:{}", meta.len()).as_bytes());
        }
        Ok(self)
    }

    pub fn add_json<T: Serialize>(&mut self, label: &str, value: &T) -> &mut Self {
        let text = serde_json::to_string(value).unwrap_or_default();
        self.add(label, text.as_bytes())
    }

    pub fn finish(&self) -> String {
        format!("{:x}", self.0.clone().finalize())
    }
}

/// Where and how to write one task's augmented file.
#[derive(Debug, Clone)]
pub struct CacheSpec {
    pub out_dir: PathBuf,
    pub task: String,
    pub method: Method,
    /// From [`KeyBuilder`].
    pub key: String,
    /// Input rows per chunk (the unit of resumption).
    pub chunk_rows: usize,
    pub show_progress: bool,
}

impl CacheSpec {
    fn stem(&self) -> String {
        let short = &self.key[..self.key.len().min(16)];
        format!("{}.{}.{short}", self.task, self.method.as_str())
    }

    pub fn output_path(&self) -> PathBuf {
        self.out_dir.join(format!("{}.jsonl", self.stem()))
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.out_dir.join(format!("{}.json", self.stem()))
    }

    fn partial_dir(&self) -> PathBuf {
        self.out_dir.join(format!(".{}.partial", self.stem()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Progress {
    key: String,
    chunk_rows: usize,
    input_rows: usize,
    chunks_done: usize,
}

/// What a finished (or reused) file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub key: String,
    pub task: String,
    pub method: Method,
    pub input_rows: usize,
    pub output_rows: usize,
    pub format_version: u32,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// The file existed already; nothing was computed.
    pub reused: bool,
    /// Chunks found done from an interrupted run.
    pub chunks_resumed: usize,
}

/// Augments `rows` into the cached file of `spec`, reusing or resuming earlier work.
pub fn run_cached(
    rows: &[Vec<String>],
    spec: &CacheSpec,
    augmenter: &mut dyn TextAugmenter,
) -> Result<Outcome> {
    check_rows(rows)?;
    if augmenter.method() != spec.method {
        crate::bail!(
            "cache is for {} but the augmenter is {}",
            spec.method.as_str(),
            augmenter.method().as_str()
        );
    }
    let out = spec.output_path();
    if out.is_file() {
        return reuse(spec, out);
    }
    let chunk_rows = spec.chunk_rows.max(1);
    let partial = spec.partial_dir();
    // Two processes computing the same augmentation would interleave its chunks.
    let _lock = crate::io::DirLock::acquire(&partial)?;
    let progress_path = partial.join("progress.json");
    let fresh = Progress {
        key: spec.key.clone(),
        chunk_rows,
        input_rows: rows.len(),
        chunks_done: 0,
    };
    let mut progress = match crate::io::read_json::<Progress>(&progress_path) {
        Ok(p) if p.key == fresh.key && p.chunk_rows == chunk_rows && p.input_rows == rows.len() => {
            p
        }
        _ => fresh,
    };
    let resumed = progress.chunks_done;
    let chunks = rows.len().div_ceil(chunk_rows);
    let bar = progress_bar(
        spec,
        rows.len() as u64,
        (resumed * chunk_rows).min(rows.len()) as u64,
    );
    for c in progress.chunks_done..chunks {
        let start = c * chunk_rows;
        let end = (start + chunk_rows).min(rows.len());
        let augmented = augment_rows(&rows[start..end], start, augmenter)?;
        let mut text = String::new();
        for row in &augmented {
            text.push_str(&serde_json::to_string(row).map_err(|e| Error::msg(e.to_string()))?);
            text.push('\n');
        }
        crate::io::write_atomic(&chunk_path(&partial, c), text.as_bytes())?;
        progress.chunks_done = c + 1;
        crate::io::write_json(&progress_path, &progress)?;
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    let tmp = crate::io::temp_path(&out);
    let output_rows = join_chunks(&partial, chunks, &tmp)?;
    let manifest = Manifest {
        key: spec.key.clone(),
        task: spec.task.clone(),
        method: spec.method,
        input_rows: rows.len(),
        output_rows,
        format_version: FORMAT_VERSION,
    };
    crate::io::write_json(&spec.manifest_path(), &manifest)?;
    crate::io::commit(&tmp, &out)?;
    std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    Ok(Outcome {
        path: out,
        manifest,
        reused: false,
        chunks_resumed: resumed,
    })
}

/// The finished file of an earlier run, when it is this spec's.
fn reuse(spec: &CacheSpec, out: PathBuf) -> Result<Outcome> {
    let manifest: Manifest = crate::io::read_json(&spec.manifest_path())?;
    if manifest.key != spec.key {
        crate::bail!(
            "{} belongs to another key ({}); remove it to recompute",
            out.display(),
            manifest.key
        );
    }
    Ok(Outcome {
        path: out,
        manifest,
        reused: true,
        chunks_resumed: 0,
    })
}

/// Writes the `chunks` chunk files of `partial`, in order, to `tmp` (synced, to be
/// moved into place); returns the number of rows.
fn join_chunks(partial: &Path, chunks: usize, tmp: &Path) -> Result<usize> {
    let file = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut w = std::io::BufWriter::new(file);
    let mut rows = 0;
    for c in 0..chunks {
        let path = chunk_path(partial, c);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        rows += bytes.iter().filter(|&&b| b == b'\n').count();
        w.write_all(&bytes).map_err(|e| Error::io(tmp, e))?;
    }
    let file = w.into_inner().map_err(|e| Error::io(tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(tmp, e))?;
    Ok(rows)
}

fn chunk_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("chunk-{index:06}.jsonl"))
}

fn progress_bar(spec: &CacheSpec, total: u64, done: u64) -> ProgressBar {
    let bar = if spec.show_progress {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let style = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} rows {per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(format!("{} {}", spec.task, spec.method.as_str()));
    bar.set_position(done);
    bar.reset_eta();
    bar
}

/// Reads an augmented file back.
pub fn read_augmented(path: &Path) -> Result<Vec<AugmentedRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| Error::Json {
                path: path.to_path_buf(),
                cause: e,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::TextRef;

    /// Two seeded variants per text; counts texts seen; can fail on a given call.
    struct Fake {
        texts_seen: usize,
        calls: usize,
        fail_on_call: Option<usize>,
    }

    impl Fake {
        fn new(fail_on_call: Option<usize>) -> Self {
            Fake {
                texts_seen: 0,
                calls: 0,
                fail_on_call,
            }
        }
    }

    impl TextAugmenter for Fake {
        fn method(&self) -> Method {
            Method::Mlm
        }
        fn augment_texts(&mut self, texts: &[TextRef<'_>]) -> Result<Vec<Vec<String>>> {
            self.calls += 1;
            if self.fail_on_call == Some(self.calls) {
                crate::bail!("interrupted");
            }
            self.texts_seen += texts.len();
            Ok(texts
                .iter()
                .map(|t| {
                    let mut rng = crate::augment::text_rng(1, Method::Mlm, t.row, t.column);
                    (0..2)
                        .map(|_| format!("{} {}", t.text, rng.below(1000)))
                        .collect()
                })
                .collect())
        }
    }

    fn rows(n: usize) -> Vec<Vec<String>> {
        (0..n).map(|i| vec![format!("text {i}")]).collect()
    }

    fn spec(dir: &Path, key: &str) -> CacheSpec {
        CacheSpec {
            out_dir: dir.to_path_buf(),
            task: "sst2".into(),
            method: Method::Mlm,
            key: key.into(),
            chunk_rows: 4,
            show_progress: false,
        }
    }

    #[test]
    fn second_run_reuses_and_an_interrupted_run_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let data = rows(10);
        let key = KeyBuilder::new()
            .add_rows(&data)
            .add("settings", b"a")
            .finish();

        let mut fake = Fake::new(None);
        let first = run_cached(&data, &spec(dir.path(), &key), &mut fake).unwrap();
        assert!(!first.reused);
        assert_eq!(fake.texts_seen, 10);
        let written = read_augmented(&first.path).unwrap();
        assert_eq!(
            written,
            augment_rows(&data, 0, &mut Fake::new(None)).unwrap()
        );
        assert_eq!(first.manifest.output_rows, 30);
        assert!(first
            .path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("sst2.mlm."));

        let mut again = Fake::new(None);
        let second = run_cached(&data, &spec(dir.path(), &key), &mut again).unwrap();
        assert!(second.reused);
        assert_eq!(again.texts_seen, 0);

        // Another key: its own file; interrupted in its third chunk, then resumed.
        let key2 = KeyBuilder::new()
            .add_rows(&data)
            .add("settings", b"b")
            .finish();
        assert_ne!(key, key2);
        let mut failing = Fake::new(Some(3));
        assert!(run_cached(&data, &spec(dir.path(), &key2), &mut failing).is_err());
        assert!(!spec(dir.path(), &key2).output_path().exists());
        let mut rest = Fake::new(None);
        let resumed = run_cached(&data, &spec(dir.path(), &key2), &mut rest).unwrap();
        assert_eq!(resumed.chunks_resumed, 2);
        assert_eq!(
            rest.texts_seen, 2,
            "only the last chunk (rows 8..10) is recomputed"
        );
        assert_eq!(read_augmented(&resumed.path).unwrap(), written);
        assert_ne!(resumed.path, first.path);
        // Only the two finished files and their manifests remain.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn keys_depend_on_every_part() {
        let k =
            |rows: &[Vec<String>], s: &[u8]| KeyBuilder::new().add_rows(rows).add("s", s).finish();
        let a = vec![vec!["ab".to_string(), "c".to_string()]];
        let b = vec![vec!["a".to_string(), "bc".to_string()]];
        assert_ne!(k(&a, b"x"), k(&b, b"x"));
        assert_ne!(k(&a, b"x"), k(&a, b"y"));
        assert_eq!(k(&a, b"x"), k(&a, b"x"));
    }
}
