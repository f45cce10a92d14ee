//! Pre-tokenised shards: the rows a lane made from a shard, written once as token ids
//! so that later epochs, later runs and other nodes (given the same folder) read them
//! instead of tokenising the text again, as the DistilBERT scripts binarise theirs.
//!
//! The folder `<token_cache>/<key>/` holds one file per shard and lane part
//! (`<shard>-all.tok` when a lane reads whole shards, `<shard>-lane<k>.tok` when lanes
//! share them). `<key>` hashes everything the rows depend on: the cache format, how
//! text becomes rows (packed segments and their text field, or examples), the
//! sequence length, the tokenizer (its whole `tokenizer.json`), and the lane layout;
//! `<shard>` hashes the shard's path, size and modification time (a hub shard's repo,
//! commit and name), so a changed file is tokenised again.
//!
//! A file holds rows in the order the lane made them (before its shuffle buffer), each
//! as little-endian u32s: the token count `n`, the position where the second text's
//! token types (1) begin (`n` for one text), then the `n` ids. It is written to a
//! temporary name and renamed into place only once the shard part was read to its end,
//! so a cache file is always whole.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Shard;
use crate::tokenizer::Encoded;
use crate::{Error, Result};

/// Changes whenever the file layout or the way rows are made changes.
const FORMAT: &str = "candle-distill token cache 1";

/// A corpus's folder of pre-tokenised shard parts.
#[derive(Debug, Clone)]
pub struct TokenCache {
    dir: PathBuf,
}

impl TokenCache {
    /// The folder under `root` for rows made as `recipe` says (the caller's
    /// description of everything the rows depend on but the shards).
    pub fn open(root: &Path, recipe: &str) -> Result<Self> {
        let key = hex(&Sha256::digest(format!("{FORMAT}\n{recipe}")))[..16].to_string();
        let dir = root.join(key);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(TokenCache { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `shard`'s rows that lane `part` makes (`None`: all of them).
    pub fn path(&self, shard: &Shard, part: Option<usize>) -> Result<PathBuf> {
        let identity = match shard {
            Shard::Local(path) => {
                let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                format!("{}\n{}\n{modified}", path.display(), meta.len())
            }
            Shard::Hub { repo, commit, name } => format!("hub\n{repo}\n{commit}\n{name}"),
        };
        let name = hex(&Sha256::digest(identity))[..20].to_string();
        let part = part.map_or("all".to_string(), |k| format!("lane{k}"));
        Ok(self.dir.join(format!("{name}-{part}.tok")))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The rows of a cache file, read one at a time.
pub struct CachedRows {
    path: PathBuf,
    reader: BufReader<File>,
}

impl CachedRows {
    /// The file's rows, or none when it is not written (yet).
    pub fn open(path: &Path) -> Result<Option<Self>> {
        match File::open(path) {
            Ok(file) => Ok(Some(CachedRows {
                path: path.to_path_buf(),
                reader: BufReader::with_capacity(1 << 16, file),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    pub fn next_row(&mut self) -> Result<Option<Encoded>> {
        let mut head = [0u8; 8];
        match self.reader.read_exact(&mut head[..4]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(Error::io(&self.path, e)),
        }
        self.reader
            .read_exact(&mut head[4..])
            .map_err(|e| Error::io(&self.path, e))?;
        let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let second = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let mut bytes = vec![0u8; 4 * n];
        self.reader
            .read_exact(&mut bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        let ids = bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let type_ids = (0..n).map(|i| u32::from(i >= second)).collect();
        Ok(Some(Encoded { ids, type_ids }))
    }
}

/// Rows being written to a temporary file beside their cache file; dropped before
/// [`CacheWriter::finish`] (the part not read to its end, an error), it removes it.
pub struct CacheWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl CacheWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = crate::io::temp_path(path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(CacheWriter {
            path: path.to_path_buf(),
            tmp,
            writer: Some(BufWriter::with_capacity(1 << 16, file)),
        })
    }

    /// Appends a row. Token types other than zeros then ones cannot be written.
    pub fn push(&mut self, row: &Encoded) -> Result<()> {
        let n = row.ids.len();
        let second = row.type_ids.iter().position(|&t| t != 0).unwrap_or(n);
        let zeros_then_ones =
            row.type_ids.len() == n && row.type_ids[second..].iter().all(|&t| t == 1);
        if !zeros_then_ones {
            return Err(Error::msg(
                "token types other than zeros then ones cannot be cached",
            ));
        }
        let mut bytes = Vec::with_capacity(8 + 4 * n);
        bytes.extend_from_slice(&(n as u32).to_le_bytes());
        bytes.extend_from_slice(&(second as u32).to_le_bytes());
        for id in &row.ids {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::msg("cache file closed"))?;
        writer
            .write_all(&bytes)
            .map_err(|e| Error::io(&self.tmp, e))
    }

    /// Every row is written: the file takes its place.
    pub fn finish(mut self) -> Result<()> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        let done = writer
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))
            .and_then(|file| file.sync_all().map_err(|e| Error::io(&self.tmp, e)))
            .and_then(|()| crate::io::commit(&self.tmp, &self.path));
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
