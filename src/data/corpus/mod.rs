//! Corpora for general distillation, streamed: shards are read, tokenised and packed
//! on background threads into bounded queues ahead of the trainer, so memory does not
//! grow with the corpus.
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
//! Lanes: each epoch's rows are split into [`LANES`] lanes, each read by its own
//! thread. With at least as many shards as lanes, a lane reads every `LANES`-th shard;
//! with fewer, every lane reads every shard and keeps every `LANES`-th document (the
//! tokenising, the costly part, is split). A data-parallel replica reads only its own
//! lanes, and the trainer's chunks take rows from every lane in turn ([`chunks`]), so
//! the global batches are the same for any number of replicas up to `LANES`.
//!
//! Order: each epoch reads the shards in a seeded order and passes each lane's
//! segments through a seeded shuffle buffer of bounded size (the recipe's
//! `shuffle_buffer` shared among the lanes). The same seed and epoch give the same
//! rows in the same order, so a resumed run replays the chunks it trained on and
//! continues with the same next row.

pub mod chunks;
pub mod shards;

pub use shards::{ExampleLines, Shard};

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::rng::Rng;
use crate::tokenizer::{Encoded, TextTokenizer};
use crate::{Error, Result};
use shards::Piece;

/// Rows each lane reads ahead of the trainer, enough that it never waits.
const QUEUE_ROWS: usize = 256;

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
    tokenizer: TextTokenizer,
    specials: Specials,
    max_seq_len: usize,
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
        Ok(Corpus {
            files,
            form: settings.form.clone(),
            shuffle_buffer: settings.shuffle_buffer,
            seed: settings.seed,
            tokenizer: tokenizer.clone(),
            specials,
            max_seq_len: settings.max_seq_len,
        })
    }

    pub fn files(&self) -> &[Shard] {
        &self.files
    }

    pub fn pad_id(&self) -> u32 {
        self.tokenizer.pad_id()
    }

    /// Lane `lane` of `epoch`'s rows, read on a background thread.
    pub fn lane(&self, epoch: usize, lane: usize) -> LaneRows {
        let (tx, rx) = sync_channel(QUEUE_ROWS);
        let job = LaneJob {
            corpus: self.clone(),
            epoch,
            lane,
        };
        let handle = std::thread::Builder::new()
            .name(format!("corpus-lane-{lane}"))
            .spawn(move || job.run(tx))
            .map_err(|e| Error::msg(format!("cannot start the corpus reader: {e}")));
        match handle {
            Ok(h) => LaneRows {
                rx: Some(rx),
                handle: Some(h),
            },
            Err(e) => {
                let (tx, rx) = sync_channel(1);
                let _ = tx.send(Err(e));
                LaneRows {
                    rx: Some(rx),
                    handle: None,
                }
            }
        }
    }

    /// The shards in the order `epoch` reads them: seeded, unless shuffling is off.
    fn epoch_files(&self, epoch: usize) -> Vec<Shard> {
        let mut files = self.files.clone();
        if self.shuffle_buffer > 1 {
            self.epoch_rng(epoch).fork(1).shuffle(&mut files);
        }
        files
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

/// The files of a stream of examples, as given: each must be one.
fn existing_files(paths: &[String]) -> Result<Vec<Shard>> {
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

/// One lane's rows of an epoch as they arrive from its reader.
pub struct LaneRows {
    rx: Option<Receiver<Result<Encoded>>>,
    handle: Option<JoinHandle<()>>,
}

impl LaneRows {
    /// The next row, or none at the end of the lane.
    pub fn next_row(&mut self) -> Result<Option<Encoded>> {
        match self.rx.as_ref().map(|rx| rx.recv()) {
            Some(Ok(row)) => row.map(Some),
            // The reader finished and hung up.
            Some(Err(_)) | None => Ok(None),
        }
    }
}

impl Drop for LaneRows {
    fn drop(&mut self) {
        // Hanging up stops the reader at its next row; then it can be joined.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What the reader thread of one lane of an epoch does.
struct LaneJob {
    corpus: Corpus,
    epoch: usize,
    lane: usize,
}

impl LaneJob {
    fn run(self, tx: SyncSender<Result<Encoded>>) {
        let mut send = |row: Encoded| tx.send(Ok(row)).is_ok();
        if let Err(e) = self.read(&mut send) {
            let _ = tx.send(Err(e));
        }
    }

    /// Passes the lane's rows through the lane's shuffle buffer to `send`, until
    /// `send` says the receiver has gone.
    fn read(&self, send: &mut dyn FnMut(Encoded) -> bool) -> Result<()> {
        let corpus = &self.corpus;
        let files = corpus.epoch_files(self.epoch);
        // With a shard for every lane, lanes read whole shards; else all of them.
        let by_shard = files.len() >= LANES;
        let files: Vec<&Shard> = files
            .iter()
            .enumerate()
            .filter(|(i, _)| !by_shard || i % LANES == self.lane)
            .map(|(_, f)| f)
            .collect();
        let buffer_rng = corpus.epoch_rng(self.epoch).fork(2).fork(self.lane as u64);
        let mut buffer = ShuffleBuffer::new(corpus.lane_buffer(), buffer_rng);
        let mut open = true;
        let mut out = |row| {
            if let Some(row) = buffer.push(row) {
                open &= send(row);
            }
            open
        };
        // Split by unit (document or line) when the lanes share the shards.
        let lane = (!by_shard).then_some(self.lane);
        match &corpus.form {
            Form::Segments { text_field } => self.segments(&files, text_field, lane, &mut out)?,
            Form::Examples(kind) => self.examples(&files, *kind, lane, &mut out)?,
        }
        if open {
            for row in buffer.drain() {
                if !send(row) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Packs the documents of `files` (every `LANES`-th unit from `lane`'s when
    /// given) into segments for `out`, until it returns false.
    fn segments(
        &self,
        files: &[&Shard],
        text_field: &str,
        lane: Option<usize>,
        out: &mut dyn FnMut(Encoded) -> bool,
    ) -> Result<()> {
        let corpus = &self.corpus;
        let mut packer = Packer::new(&corpus.specials, corpus.max_seq_len);
        let mut units = Units::default();
        let mut open = true;
        for file in files {
            shards::for_each_piece(&file.local()?, text_field, &mut |piece| {
                let mine = lane.is_none_or(|l| units.index % LANES == l);
                let mut emit = |segment| open &= out(segment);
                match piece {
                    Piece::Text(text) => {
                        if mine {
                            packer.push(&corpus.tokenizer.ids(&text)?, &mut emit);
                        }
                        if units.text_line() && mine {
                            packer.end_document(&mut emit);
                        }
                    }
                    Piece::DocumentEnd => {
                        if mine {
                            packer.end_document(&mut emit);
                        }
                        units.document_end();
                    }
                }
                Ok(open)
            })?;
            if !open {
                break;
            }
        }
        Ok(())
    }

    /// Tokenises the examples of `files` (every `LANES`-th from `lane`'s when given)
    /// for `out`, until it returns false.
    fn examples(
        &self,
        files: &[&Shard],
        kind: ExampleLines,
        lane: Option<usize>,
        out: &mut dyn FnMut(Encoded) -> bool,
    ) -> Result<()> {
        let corpus = &self.corpus;
        let mut index = 0usize;
        let mut keep = || {
            index += 1;
            lane.is_none_or(|l| (index - 1) % LANES == l)
        };
        for file in files {
            let mut open = true;
            shards::for_each_example(&file.local()?, kind, &mut keep, &mut |a, b| {
                let row = corpus
                    .tokenizer
                    .encode(&a, b.as_deref(), corpus.max_seq_len)?;
                open = out(row);
                Ok(open)
            })?;
            if !open {
                break;
            }
        }
        Ok(())
    }
}

/// Counts the units of text lanes take turns at: documents, cut every
/// [`UNIT_LINES`] lines.
#[derive(Default)]
struct Units {
    index: usize,
    lines: usize,
}

impl Units {
    /// A line of text; true when it completes a unit (which then ends).
    fn text_line(&mut self) -> bool {
        self.lines += 1;
        let full = self.lines == UNIT_LINES;
        if full {
            self.next();
        }
        full
    }

    fn document_end(&mut self) {
        if self.lines > 0 {
            self.next();
        }
    }

    fn next(&mut self) {
        self.index += 1;
        self.lines = 0;
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
