//! Corpora for general distillation, streamed: shards are read, tokenised and packed
//! on a background thread into a bounded queue ahead of the trainer, so memory does
//! not grow with the corpus.
//!
//! Packing: the text of a document (the lines of a text shard up to a blank line, one
//! JSONL record, one parquet row) is tokenised and cut into contiguous segments of
//! `max_seq_len` tokens, special tokens included (`[CLS] segment [SEP]`); a document's
//! last segment is shorter. This is the reference's general distillation without its
//! sentence pairs: its pregenerated instances are `[CLS] A [SEP] B [SEP]` of the same
//! length, and the losses (attention and hidden states) do not use the pairing.
//!
//! Order: each epoch reads the shards in a seeded order and passes the segments
//! through a seeded shuffle buffer of bounded size. The same seed and epoch give the
//! same rows in the same order, so a resumed run skips the rows it trained on and
//! continues with the same next row.

pub mod shards;

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::rng::Rng;
use crate::tokenizer::{Encoded, TextTokenizer};
use crate::{Error, Result};
use shards::Piece;

/// Rows read ahead of the trainer: a few batches' worth, enough that it never waits.
const QUEUE_ROWS: usize = 1024;

/// A corpus ready to stream: its shards, how to read and order them, and the
/// tokenizer that packs them.
#[derive(Clone)]
pub struct Corpus {
    files: Vec<PathBuf>,
    text_field: String,
    shuffle_buffer: usize,
    seed: u64,
    tokenizer: TextTokenizer,
    specials: Specials,
    max_seq_len: usize,
}

/// The settings of a corpus, as a recipe gives them.
#[derive(Debug, Clone)]
pub struct CorpusSettings<'a> {
    pub files: &'a [String],
    pub text_field: &'a str,
    pub shuffle_buffer: usize,
    pub seed: u64,
    pub max_seq_len: usize,
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
        let files = shards::resolve(settings.files)?;
        let specials = Specials::of(tokenizer)?;
        let overhead = specials.prefix.len() + specials.suffix.len();
        if settings.max_seq_len <= overhead {
            return Err(Error::invalid(
                "max_seq_len",
                settings.max_seq_len,
                format!("must leave room for text beside the {overhead} special tokens"),
            ));
        }
        Ok(Corpus {
            files,
            text_field: settings.text_field.to_string(),
            shuffle_buffer: settings.shuffle_buffer,
            seed: settings.seed,
            tokenizer: tokenizer.clone(),
            specials,
            max_seq_len: settings.max_seq_len,
        })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn pad_id(&self) -> u32 {
        self.tokenizer.pad_id()
    }

    /// The rows of `epoch` after its first `skip`, read on a background thread.
    pub fn epoch(&self, epoch: usize, skip: usize) -> EpochRows {
        let (tx, rx) = sync_channel(QUEUE_ROWS);
        let job = EpochJob {
            corpus: self.clone(),
            epoch,
            skip,
        };
        let handle = std::thread::Builder::new()
            .name(format!("corpus-epoch-{epoch}"))
            .spawn(move || job.run(tx))
            .map_err(|e| Error::msg(format!("cannot start the corpus reader: {e}")));
        match handle {
            Ok(h) => EpochRows {
                rx: Some(rx),
                handle: Some(h),
                ahead: None,
            },
            Err(e) => {
                let (tx, rx) = sync_channel(1);
                let _ = tx.send(Err(e));
                EpochRows {
                    rx: Some(rx),
                    handle: None,
                    ahead: None,
                }
            }
        }
    }

    /// The shards in the order `epoch` reads them: seeded, unless shuffling is off.
    fn epoch_files(&self, epoch: usize) -> Vec<PathBuf> {
        let mut files = self.files.clone();
        if self.shuffle_buffer > 1 {
            self.epoch_rng(epoch).fork(1).shuffle(&mut files);
        }
        files
    }

    fn epoch_rng(&self, epoch: usize) -> Rng {
        Rng::new(self.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
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

/// One epoch's rows as they arrive from the reader.
pub struct EpochRows {
    rx: Option<Receiver<Result<Encoded>>>,
    handle: Option<JoinHandle<()>>,
    /// The row after the last batch (or the error reading it), read to know whether
    /// that batch ended the epoch.
    ahead: Option<Result<Encoded>>,
}

impl EpochRows {
    /// Up to `n` rows, and whether the epoch ends with them (no row is left). Fewer
    /// than `n` only at the end; none when the epoch has ended.
    pub fn next_batch(&mut self, n: usize) -> Result<(Vec<Encoded>, bool)> {
        let mut rows = Vec::with_capacity(n);
        if let Some(row) = self.ahead.take() {
            rows.push(row?);
        }
        while rows.len() < n {
            match self.next_row()? {
                Some(row) => rows.push(row),
                None => return Ok((rows, true)),
            }
        }
        // An error reading ahead belongs to the next batch, not this one.
        let ended = match self.next_row() {
            Ok(None) => true,
            ahead => {
                self.ahead = ahead.transpose();
                false
            }
        };
        Ok((rows, ended))
    }

    fn next_row(&mut self) -> Result<Option<Encoded>> {
        match self.rx.as_ref().map(|rx| rx.recv()) {
            Some(Ok(row)) => row.map(Some),
            // The reader finished and hung up.
            Some(Err(_)) | None => Ok(None),
        }
    }
}

impl Drop for EpochRows {
    fn drop(&mut self) {
        // Hanging up stops the reader at its next row; then it can be joined.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What the reader thread of one epoch does.
struct EpochJob {
    corpus: Corpus,
    epoch: usize,
    skip: usize,
}

impl EpochJob {
    fn run(self, tx: SyncSender<Result<Encoded>>) {
        let mut sent = 0usize;
        let mut send = |row: Encoded| {
            sent += 1;
            sent <= self.skip || tx.send(Ok(row)).is_ok()
        };
        if let Err(e) = self.read(&mut send) {
            let _ = tx.send(Err(e));
        }
    }

    /// Packs every shard's text and passes the segments through the shuffle buffer to
    /// `send`, until `send` says the receiver has gone.
    fn read(&self, send: &mut dyn FnMut(Encoded) -> bool) -> Result<()> {
        let corpus = &self.corpus;
        let mut rng = corpus.epoch_rng(self.epoch);
        let mut buffer = ShuffleBuffer::new(corpus.shuffle_buffer, rng.fork(2));
        let mut packer = Packer::new(&corpus.specials, corpus.max_seq_len);
        let mut open = true;
        for file in corpus.epoch_files(self.epoch) {
            shards::for_each_piece(&file, &corpus.text_field, &mut |piece| {
                let mut out = |segment| {
                    if let Some(row) = buffer.push(segment) {
                        open &= send(row);
                    }
                };
                match piece {
                    Piece::Text(text) => packer.push(&corpus.tokenizer.ids(&text)?, &mut out),
                    Piece::DocumentEnd => packer.end_document(&mut out),
                }
                Ok(open)
            })?;
            if !open {
                return Ok(());
            }
        }
        for row in buffer.drain() {
            if !send(row) {
                break;
            }
        }
        Ok(())
    }
}

/// Cuts a document's tokens into segments of at most `max_seq_len` with specials.
struct Packer<'a> {
    specials: &'a Specials,
    /// Text tokens per segment.
    budget: usize,
    current: Vec<u32>,
}

impl<'a> Packer<'a> {
    fn new(specials: &'a Specials, max_seq_len: usize) -> Self {
        let budget = max_seq_len - specials.prefix.len() - specials.suffix.len();
        Packer {
            specials,
            budget,
            current: Vec::with_capacity(budget),
        }
    }

    fn push(&mut self, ids: &[u32], out: &mut dyn FnMut(Encoded)) {
        for &id in ids {
            self.current.push(id);
            if self.current.len() == self.budget {
                out(self.segment());
            }
        }
    }

    fn end_document(&mut self, out: &mut dyn FnMut(Encoded)) {
        if !self.current.is_empty() {
            out(self.segment());
        }
    }

    fn segment(&mut self) -> Encoded {
        let s = self.specials;
        let mut ids = Vec::with_capacity(s.prefix.len() + self.current.len() + s.suffix.len());
        ids.extend_from_slice(&s.prefix);
        ids.append(&mut self.current);
        ids.extend_from_slice(&s.suffix);
        Encoded {
            type_ids: vec![0; ids.len()],
            ids,
        }
    }
}

/// A seeded shuffle of a stream in bounded memory: each arriving row takes the place
/// of a random held one, which leaves. Capacity 0 or 1 keeps the order.
struct ShuffleBuffer<T> {
    capacity: usize,
    held: Vec<T>,
    rng: Rng,
}

impl<T> ShuffleBuffer<T> {
    fn new(capacity: usize, rng: Rng) -> Self {
        ShuffleBuffer {
            capacity,
            held: Vec::new(),
            rng,
        }
    }

    fn push(&mut self, row: T) -> Option<T> {
        if self.capacity <= 1 {
            return Some(row);
        }
        if self.held.len() < self.capacity {
            self.held.push(row);
            return None;
        }
        let i = self.rng.below(self.capacity);
        Some(std::mem::replace(&mut self.held[i], row))
    }

    /// The rows still held, in a seeded random order.
    fn drain(mut self) -> impl Iterator<Item = T> {
        self.rng.shuffle(&mut self.held);
        self.held.into_iter()
    }
}

#[cfg(test)]
mod tests;
