//! Corpora for general distillation, streamed: shards are read, tokenised and packed
//! a bounded number of rows ahead of the trainer (by the trainer itself on the CPU, on
//! a background thread for a GPU: see [`reader`]), so memory does not grow with the
//! corpus.
//!
//! Packing: the text of a document (the lines of a text shard up to a blank line, one
//! JSONL record, one parquet row) is tokenised and cut into contiguous segments of
//! `max_seq_len` tokens, special tokens included (`[CLS] segment [SEP]`); a document's
//! last segment is shorter. A text document longer than [`UNIT_LINES`] lines is packed
//! in pieces of that many lines (so that a shard without blank lines is not one
//! document). This is the reference's general distillation without its sentence
//! pairs: its pregenerated instances are `[CLS] A [SEP] B [SEP]` of the same length,
//! and the losses (attention and hidden states) do not use the pairing.
//!
//! Lanes: each epoch's rows are split into [`LANES`] lanes, each read on its own.
//! With at least as many shards as lanes, a lane reads every `LANES`-th shard;
//! with fewer, every lane reads every shard and keeps every `LANES`-th document: it
//! parses and tokenises only those (the costly parts are split; every lane reads the
//! lines, and decodes a parquet shard's rows, their text column alone). A data-parallel
//! replica reads only its own lanes, and the trainer's chunks take rows from every lane
//! in turn ([`chunks`]), so the global batches are the same for any number of replicas
//! up to `LANES`.
//!
//! Order: each epoch reads the shards in a seeded order and passes each lane's
//! segments through a seeded shuffle buffer of bounded size (the recipe's
//! `shuffle_buffer` shared among the lanes). The same seed and epoch give the same
//! rows in the same order, so a resumed run replays the chunks it trained on and
//! continues with the same next row.

pub mod chunks;
pub mod formats;
pub mod lane;
pub mod reader;
pub mod shards;
pub mod token_cache;

pub use formats::ExampleLines;
pub use reader::LaneReader;
pub use shards::Shard;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::rng::Rng;
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};
use token_cache::TokenCache;

/// Lanes every epoch is split into: fixed, whatever the number of replicas, so that
/// the global batches do not depend on it. 12 divides among 1, 2, 3, 4, 6 and 12.
pub const LANES: usize = 12;

/// Lines of a text document packed as one piece: a longer document is cut there.
pub const UNIT_LINES: usize = 64;

/// A corpus ready to stream: its shards, how to read and order them, and the
/// tokenizer that packs them.
#[derive(Clone)]
pub struct Corpus {
    files: Vec<Shard>,
    form: Form,
    shuffle_buffer: usize,
    seed: u64,
    /// Shared by the readers of every replica (a tokenizer is megabytes).
    tokenizer: Arc<TextTokenizer>,
    specials: Specials,
    max_seq_len: usize,
    /// Rows already made from the shards, read instead of tokenising again.
    token_cache: Option<TokenCache>,
}

/// The settings of a corpus, as a recipe gives them.
#[derive(Debug, Clone)]
pub struct CorpusSettings<'a> {
    /// Paths or globs of shards (paths of files, for examples).
    pub files: &'a [String],
    pub form: Form,
    pub shuffle_buffer: usize,
    pub seed: u64,
    pub max_seq_len: usize,
    /// A folder for pre-tokenised shards (see [`token_cache`]).
    pub token_cache: Option<&'a Path>,
}

/// What the rows of a stream are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// Documents packed into segments of up to `max_seq_len` tokens (general
    /// distillation); `text_field` names the JSONL field, TSV or parquet column.
    Segments { text_field: String },
    /// One example per line, tokenised as the task's rows are (a text or a pair, cut
    /// to `max_seq_len`): a transfer set (`unlabeled`, `augmented`) too large to hold.
    Examples(ExampleLines),
}

/// The tokens the tokenizer puts around one text (`[CLS]` and `[SEP]`, `<s>` and
/// `</s>`).
#[derive(Debug, Clone)]
struct Specials {
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

impl Corpus {
    /// Finds the shards (refusing patterns that name none) and checks the settings.
    pub fn open(settings: &CorpusSettings, tokenizer: &TextTokenizer) -> Result<Self> {
        let files = match settings.form {
            Form::Segments { .. } => shards::resolve(settings.files)?,
            Form::Examples(_) => existing_files(settings.files)?,
        };
        let specials = Specials::of(tokenizer)?;
        let overhead = specials.prefix.len() + specials.suffix.len();
        if settings.max_seq_len <= overhead {
            return Err(Error::invalid(
                "max_seq_len",
                settings.max_seq_len,
                format!("must leave room for text beside the {overhead} special tokens"),
            ));
        }
        let token_cache = match settings.token_cache {
            Some(root) => Some(TokenCache::open(root, &rows_recipe(settings, tokenizer)?)?),
            None => None,
        };
        Ok(Corpus {
            files,
            form: settings.form.clone(),
            shuffle_buffer: settings.shuffle_buffer,
            seed: settings.seed,
            tokenizer: Arc::new(tokenizer.clone()),
            specials,
            max_seq_len: settings.max_seq_len,
            token_cache,
        })
    }

    /// The folder of pre-tokenised shards, when the corpus has one.
    pub fn token_cache(&self) -> Option<&Path> {
        self.token_cache.as_ref().map(TokenCache::dir)
    }

    pub fn files(&self) -> &[Shard] {
        &self.files
    }

    pub fn pad_id(&self) -> u32 {
        self.tokenizer.pad_id()
    }

    /// The shards, with their places in the corpus, in the order `epoch` reads them:
    /// seeded, unless shuffling is off.
    fn epoch_shards(&self, epoch: usize) -> Vec<(usize, Shard)> {
        let mut shards: Vec<(usize, Shard)> = self.files.iter().cloned().enumerate().collect();
        if self.shuffle_buffer > 1 {
            self.epoch_rng(epoch).fork(1).shuffle(&mut shards);
        }
        shards
    }

    /// Each lane's share of the shuffle buffer (none when shuffling is off).
    fn lane_buffer(&self) -> usize {
        match self.shuffle_buffer {
            0 | 1 => self.shuffle_buffer,
            n => n.div_ceil(LANES).max(2),
        }
    }

    fn epoch_rng(&self, epoch: usize) -> Rng {
        Rng::new(self.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// Everything a corpus's rows depend on but its shards: how text becomes rows, the
/// sequence length, the whole tokenizer and the lane layout.
fn rows_recipe(settings: &CorpusSettings, tokenizer: &TextTokenizer) -> Result<String> {
    let tokenizer_json = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| Error::msg(format!("cannot fingerprint the tokenizer: {e}")))?;
    Ok(format!(
        "{:?}\nmax_seq_len {}\nlanes {LANES} unit_lines {UNIT_LINES}\n{tokenizer_json}",
        settings.form, settings.max_seq_len
    ))
}

/// The files of a stream of examples, as given: each must be one.
pub fn existing_files(paths: &[String]) -> Result<Vec<Shard>> {
    paths
        .iter()
        .map(|p| {
            let path = PathBuf::from(p);
            if path.is_file() {
                Ok(Shard::Local(path))
            } else {
                Err(Error::invalid(p, "path", "is not a file"))
            }
        })
        .collect()
}

impl Specials {
    /// What the tokenizer adds around a probe text: everything before and after the
    /// probe's own tokens.
    fn of(tokenizer: &TextTokenizer) -> Result<Self> {
        let probe = "hello";
        let with = tokenizer.encode(probe, None, usize::MAX)?.ids;
        let without = tokenizer.ids(probe)?;
        let at = (0..=with.len().saturating_sub(without.len()))
            .find(|&i| with[i..].starts_with(&without))
            .filter(|_| !without.is_empty())
            .ok_or_else(|| {
                Error::msg("the tokenizer's special tokens could not be told apart from a text's")
            })?;
        Ok(Specials {
            prefix: with[..at].to_vec(),
            suffix: with[at + without.len()..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests;
