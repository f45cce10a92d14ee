//! One lane of a corpus epoch: its reader thread, which makes rows from the lane's
//! shards (or its share of every shard's units) through the token cache when there is
//! one, and passes them through the lane's shuffle buffer into a bounded queue.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::shards::{self, ExampleLines, Piece, Shard};
use super::token_cache::{CacheWriter, CachedRows};
use super::{Corpus, Form, Specials, LANES, UNIT_LINES};
use crate::rng::Rng;
use crate::tokenizer::Encoded;
use crate::{Error, Result};

/// Rows each lane reads ahead of the trainer, enough that it never waits.
const QUEUE_ROWS: usize = 256;

/// Starts the reader of lane `lane` of `epoch`.
pub fn start(corpus: &Corpus, epoch: usize, lane: usize) -> LaneRows {
    let (tx, rx) = sync_channel(QUEUE_ROWS);
    let job = LaneJob {
        corpus: corpus.clone(),
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
        let shards = corpus.epoch_shards(self.epoch);
        // With a shard for every lane, lanes read whole shards; else each lane takes
        // every `LANES`-th unit (document or line) of every shard.
        let by_shard = shards.len() >= LANES;
        let part = (!by_shard).then_some(self.lane);
        let buffer_rng = corpus.epoch_rng(self.epoch).fork(2).fork(self.lane as u64);
        let mut buffer = ShuffleBuffer::new(corpus.lane_buffer(), buffer_rng);
        let mut open = true;
        let mut out = |row| {
            if let Some(row) = buffer.push(row) {
                open &= send(row);
            }
            open
        };
        for (position, (index, shard)) in shards.iter().enumerate() {
            if by_shard && position % LANES != self.lane {
                continue;
            }
            if !self.shard_rows(shard, *index, part, &mut out)? {
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

    /// The rows of `shard` (the `index`-th of the corpus) that this lane makes, from
    /// the token cache, or made from its text (and cached when it was read to the
    /// end); false when `out` said to stop.
    fn shard_rows(
        &self,
        shard: &Shard,
        index: usize,
        part: Option<usize>,
        out: &mut dyn FnMut(Encoded) -> bool,
    ) -> Result<bool> {
        let cache = match &self.corpus.token_cache {
            Some(cache) => Some(cache.path(shard, part)?),
            None => None,
        };
        if let Some(mut rows) = cache
            .as_deref()
            .map(CachedRows::open)
            .transpose()?
            .flatten()
        {
            while let Some(row) = rows.next_row()? {
                if !out(row) {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        let mut writer = cache.as_deref().and_then(|path| {
            CacheWriter::create(path)
                .map_err(|e| tracing::warn!("token cache not written: {e}"))
                .ok()
        });
        let mut emit = |row: Encoded| {
            if let Some(e) = writer.as_mut().and_then(|w| w.push(&row).err()) {
                tracing::warn!("token cache not written: {e}");
                writer = None;
            }
            out(row)
        };
        // Units spread over the lanes from a place of the shard's own, whatever the
        // epoch's shard order, so that a lane's part of a shard is always the same.
        let mine = |unit: usize| part.is_none_or(|lane| (unit + index) % LANES == lane);
        let whole = match &self.corpus.form {
            Form::Segments { text_field } => self.segments(shard, text_field, &mine, &mut emit)?,
            Form::Examples(kind) => self.examples(shard, *kind, &mine, &mut emit)?,
        };
        // Not read to the end, the writer is dropped, and its file with it.
        if let Some(w) = writer.filter(|_| whole) {
            if let Err(e) = w.finish() {
                tracing::warn!("token cache not written: {e}");
            }
        }
        Ok(whole)
    }

    /// Packs the units of `shard` that are `mine` into segments for `out`; false when
    /// `out` said to stop.
    fn segments(
        &self,
        shard: &Shard,
        text_field: &str,
        mine: &dyn Fn(usize) -> bool,
        out: &mut dyn FnMut(Encoded) -> bool,
    ) -> Result<bool> {
        let corpus = &self.corpus;
        let mut packer = Packer::new(&corpus.specials, corpus.max_seq_len);
        let mut units = Units::default();
        let mut open = true;
        shards::for_each_piece(&shard.local()?, text_field, &mut |piece| {
            let keep = mine(units.index);
            let mut emit = |segment| open &= out(segment);
            match piece {
                Piece::Text(text) => {
                    if keep {
                        packer.push(&corpus.tokenizer.ids(&text)?, &mut emit);
                    }
                    if units.text_line() && keep {
                        packer.end_document(&mut emit);
                    }
                }
                Piece::DocumentEnd => {
                    if keep {
                        packer.end_document(&mut emit);
                    }
                    units.document_end();
                }
            }
            Ok(open)
        })?;
        Ok(open)
    }

    /// Tokenises the examples of `shard` that are `mine` for `out`; false when `out`
    /// said to stop.
    fn examples(
        &self,
        shard: &Shard,
        kind: ExampleLines,
        mine: &dyn Fn(usize) -> bool,
        out: &mut dyn FnMut(Encoded) -> bool,
    ) -> Result<bool> {
        let corpus = &self.corpus;
        let mut index = 0usize;
        let mut keep = || {
            index += 1;
            mine(index - 1)
        };
        let mut open = true;
        shards::for_each_example(&shard.local()?, kind, &mut keep, &mut |a, b| {
            let row = corpus
                .tokenizer
                .encode(&a, b.as_deref(), corpus.max_seq_len)?;
            open = out(row);
            Ok(open)
        })?;
        Ok(open)
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
