//! GloVe vectors for the words the masked LM cannot fill: words of several WordPieces
//! get their nearest GloVe neighbours instead, as in TinyBERT's `data_augmentation.py`
//! (the paper used the first 100,000 rows of glove.42B.300d).
//!
//! The file is a local path or a hub file, `hf://datasets/org/name[@revision]/path`
//! (or `hf://org/name/...` in a model repo), in GloVe's text format (`word v1 v2 ...`
//! a line), plain or inside a `.zip` as Stanford distributes it. Only the first rows
//! are read, so a 5 GB archive costs its first megabytes.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::hub::{Location, RepoKind};
use crate::{Error, Result};

/// Where the GloVe file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GloveSource {
    Local(PathBuf),
    Hub { location: Location, file: String },
}

impl GloveSource {
    pub fn parse(spec: &str) -> Result<Self> {
        let Some(rest) = spec.strip_prefix("hf://") else {
            return Ok(GloveSource::Local(PathBuf::from(spec)));
        };
        let (kind, rest) = match rest.strip_prefix("datasets/") {
            Some(r) => (RepoKind::Dataset, r),
            None => (RepoKind::Model, rest),
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(org), Some(name), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::invalid(
                spec,
                "augment.glove",
                "expected a local file or hf://datasets/org/name[@revision]/path/to/file",
            ));
        };
        if file.is_empty() {
            return Err(Error::invalid(
                spec,
                "augment.glove",
                "names no file in the repo",
            ));
        }
        let location = Location::parse(&format!("{org}/{name}"), kind)?;
        Ok(GloveSource::Hub {
            location,
            file: file.to_string(),
        })
    }

    /// The file on this machine: downloaded into the hub cache (once) for hub files.
    pub fn resolve(&self) -> Result<PathBuf> {
        match self {
            GloveSource::Local(path) if path.is_file() => Ok(path.clone()),
            GloveSource::Local(path) => Err(Error::invalid(
                path.display(),
                "augment.glove",
                "no such file (expected GloVe vectors: `word v1 v2 ...` lines, or a .zip of them)",
            )),
            GloveSource::Hub { location, file } => location.open()?.require(file),
        }
    }
}

/// GloVe vectors (first `max_words` rows of a text file), unit-normalised, for
/// nearest-neighbour look-ups of multi-piece words.
#[derive(Debug)]
pub struct Glove {
    words: Vec<String>,
    index: HashMap<String, usize>,
    /// Row-major, `words.len() * dim`.
    vectors: Vec<f32>,
    dim: usize,
    cache: HashMap<(String, usize), Vec<String>>,
}

impl Glove {
    /// Reads the first `max_words` rows of a GloVe text file, or of the first `.txt`
    /// file inside a `.zip`.
    pub fn from_file(path: &Path, max_words: usize) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("zip"))
        {
            let bad = |e: zip::result::ZipError| Error::invalid(path.display(), "zip", e);
            let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
            let Some(index) = (0..archive.len()).find(|&i| {
                archive
                    .name_for_index(i)
                    .is_some_and(|n| n.is_ok_and(|n| n.ends_with(".txt")))
            }) else {
                return Err(Error::invalid(
                    path.display(),
                    "zip",
                    "holds no .txt file of GloVe vectors",
                ));
            };
            let entry = archive.by_index(index).map_err(bad)?;
            return Self::from_reader(std::io::BufReader::new(entry), path, max_words);
        }
        Self::from_reader(std::io::BufReader::new(file), path, max_words)
    }

    /// `word v1 v2 ...` lines; `path` names the file in errors.
    fn from_reader(reader: impl BufRead, path: &Path, max_words: usize) -> Result<Self> {
        let mut words = Vec::new();
        let mut vectors = Vec::new();
        let mut dim = 0;
        for (line_no, line) in reader.lines().enumerate() {
            if words.len() >= max_words {
                break;
            }
            let line = line.map_err(|e| Error::io(path, e))?;
            let mut parts = line.split_whitespace();
            let Some(word) = parts.next() else { continue };
            let values = parts
                .map(|v| v.parse::<f32>())
                .collect::<std::result::Result<Vec<f32>, _>>()
                .map_err(|e| Error::invalid(path.display(), format!("line {}", line_no + 1), e))?;
            if dim == 0 {
                dim = values.len();
            }
            if values.len() != dim || dim == 0 {
                return Err(Error::invalid(
                    path.display(),
                    format!("line {}", line_no + 1),
                    format!(
                        "expected {dim} numbers after the word, found {}",
                        values.len()
                    ),
                ));
            }
            words.push(word.to_string());
            vectors.extend(values);
        }
        Ok(Self::from_vectors(words, vectors, dim))
    }

    /// From words and their vectors (row-major); vectors are normalised here.
    pub fn from_vectors(words: Vec<String>, mut vectors: Vec<f32>, dim: usize) -> Self {
        for row in vectors.chunks_mut(dim.max(1)) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
        let mut index = HashMap::new();
        for (i, w) in words.iter().enumerate() {
            index.entry(w.clone()).or_insert(i);
        }
        Glove {
            words,
            index,
            vectors,
            dim,
            cache: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The `k` most similar words (cosine), the word itself excluded; empty when the
    /// word is not in the vocabulary. A Title-case word gets Title-case neighbours.
    pub fn neighbours(&mut self, word: &str, k: usize) -> Vec<String> {
        let key = (word.to_string(), k);
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let Some(&i) = self.index.get(word) else {
            return Vec::new();
        };
        let query = &self.vectors[i * self.dim..(i + 1) * self.dim];
        let mut scores: Vec<f32> = self
            .vectors
            .chunks(self.dim)
            .map(|row| row.iter().zip(query).map(|(a, b)| a * b).sum())
            .collect();
        scores[i] = f32::NEG_INFINITY;
        let title = is_title(word);
        let out: Vec<String> = super::mlm::top_k_indices(&scores, k + 1)
            .into_iter()
            .filter(|&j| j != i)
            .take(k)
            .map(|j| {
                if title {
                    to_title(&self.words[j])
                } else {
                    self.words[j].clone()
                }
            })
            .collect();
        self.cache.insert(key, out.clone());
        out
    }
}

fn is_title(word: &str) -> bool {
    let mut chars = word.chars();
    chars.next().is_some_and(|c| c.is_uppercase()) && chars.all(|c| !c.is_uppercase())
}

fn to_title(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(c) => c
            .to_uppercase()
            .chain(chars.flat_map(|c| c.to_lowercase()))
            .collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A .zip holding `entries` (name, text), deflated as Stanford's archives are.
    fn write_zip(path: &Path, entries: &[(&str, &str)]) {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for (name, text) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn a_zip_is_read_in_place_up_to_max_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("glove.42B.300d.zip");
        write_zip(
            &path,
            &[
                ("README", "not vectors"),
                ("glove.test.2d.txt", "a 1 0\nb 0.9 0.1\nc 0 1\nd 1 1\n"),
            ],
        );
        let mut g = Glove::from_file(&path, 3).unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(g.neighbours("a", 5), ["b", "c"]);
        write_zip(&path, &[("README", "no vectors here")]);
        let err = Glove::from_file(&path, 3).unwrap_err().to_string();
        assert!(
            err.contains("glove.42B.300d.zip") && err.contains("no .txt"),
            "{err}"
        );
    }

    #[test]
    fn sources_are_local_files_or_hub_files() {
        assert_eq!(
            GloveSource::parse("vectors/glove.txt").unwrap(),
            GloveSource::Local(PathBuf::from("vectors/glove.txt"))
        );
        let GloveSource::Hub { location, file } =
            GloveSource::parse("hf://datasets/stanfordnlp/glove@v1/42B/glove.42B.300d.zip")
                .unwrap()
        else {
            panic!("not a hub source");
        };
        assert_eq!(file, "42B/glove.42B.300d.zip");
        assert_eq!(
            location,
            Location::Hub {
                repo: "stanfordnlp/glove".into(),
                revision: "v1".into(),
                kind: RepoKind::Dataset,
            }
        );
        let Ok(GloveSource::Hub { location, .. }) = GloveSource::parse("hf://org/name/g.txt")
        else {
            panic!("not a hub source");
        };
        assert!(matches!(
            location,
            Location::Hub {
                kind: RepoKind::Model,
                ..
            }
        ));
        for bad in [
            "hf://datasets/org",
            "hf://org/name/",
            "hf://datasets/org/name",
        ] {
            let err = GloveSource::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("augment.glove"), "{err}");
        }
        let missing = GloveSource::parse("no/such/glove.txt")
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(missing.contains("no/such/glove.txt") && missing.contains("no such file"));
    }
}
