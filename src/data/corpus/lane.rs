//! One lane of a corpus epoch: it makes rows on demand from its shards (or from its
//! share of every shard's units), through the token cache when there is one, and passes
//! them through its own shuffle buffer. [`super::reader`] says who asks it for rows.

use std::collections::VecDeque;

use super::formats::{ExampleReader, Piece, PieceReader};
use super::shards::Shard;
use super::token_cache::{CacheWriter, CachedRows};
use super::{Corpus, Form, Specials, LANES, UNIT_LINES};
use crate::rng::Rng;
use crate::tokenizer::Encoded;
use crate::Result;

/// One lane of an epoch: its shards still to read, the shard being read, and its
/// shuffle buffer.
pub struct Lane {
    corpus: Corpus,
    /// The lane's shards, with their places in the corpus, in the order still to read.
    shards: VecDeque<(usize, Shard)>,
    /// With fewer shards than lanes, the lane whose units of every shard this one keeps.
    part: Option<usize>,
    current: Option<ShardRows>,
    buffer: ShuffleBuffer<Encoded>,
    /// The shuffle buffer's last rows, once every shard is read.
    drained: Option<std::vec::IntoIter<Encoded>>,
}

impl Lane {
    pub(super) fn new(corpus: &Corpus, epoch: usize, lane: usize) -> Lane {
        let shards = corpus.epoch_shards(epoch);
        // With a shard for every lane, lanes read whole shards; else each lane takes
        // every `LANES`-th unit (document or line) of every shard.
        let by_shard = shards.len() >= LANES;
        let shards = shards
            .into_iter()
            .enumerate()
            .filter(|(position, _)| !by_shard || position % LANES == lane)
            .map(|(_, shard)| shard)
            .collect();
        let buffer_rng = corpus.epoch_rng(epoch).fork(2).fork(lane as u64);
        Lane {
            corpus: corpus.clone(),
            shards,
            part: (!by_shard).then_some(lane),
            current: None,
            buffer: ShuffleBuffer::new(corpus.lane_buffer(), buffer_rng),
            drained: None,
        }
    }

    /// The lane's next row out of its shuffle buffer; none at the lane's end.
    pub(super) fn next_row(&mut self) -> Result<Option<Encoded>> {
        loop {
            if let Some(rest) = &mut self.drained {
                return Ok(rest.next());
            }
            match self.next_made()? {
                Some(row) => {
                    if let Some(out) = self.buffer.push(row) {
                        return Ok(Some(out));
                    }
                }
                None => {
                    let buffer = std::mem::replace(&mut self.buffer, ShuffleBuffer::off());
                    self.drained = Some(buffer.drain());
                }
            }
        }
    }

    /// The next row of the lane's shards, in their order; none after the last.
    fn next_made(&mut self) -> Result<Option<Encoded>> {
        loop {
            if let Some(current) = &mut self.current {
                if let Some(row) = current.next_row(&self.corpus)? {
                    return Ok(Some(row));
                }
                if let Some(current) = self.current.take() {
                    current.finish();
                }
            }
            let Some((index, shard)) = self.shards.pop_front() else {
                return Ok(None);
            };
            self.current = Some(ShardRows::open(&self.corpus, &shard, index, self.part)?);
        }
    }
}

/// The rows a lane makes of one shard: from the token cache, or made from its text
/// (and cached once it was read to the end).
enum ShardRows {
    Cached(CachedRows),
    Made {
        maker: RowMaker,
        writer: Option<CacheWriter>,
    },
}

impl ShardRows {
    fn open(corpus: &Corpus, shard: &Shard, index: usize, part: Option<usize>) -> Result<Self> {
        let cache = match &corpus.token_cache {
            Some(cache) => Some(cache.path(shard, part)?),
            None => None,
        };
        if let Some(rows) = cache
            .as_deref()
            .map(CachedRows::open)
            .transpose()?
            .flatten()
        {
            return Ok(ShardRows::Cached(rows));
        }
        let writer = cache.as_deref().and_then(|path| {
            CacheWriter::create(path)
                .map_err(|e| tracing::warn!("token cache not written: {e}"))
                .ok()
        });
        let share = Share { index, part };
        let path = shard.local()?;
        let maker = match &corpus.form {
            Form::Segments { text_field } => RowMaker::Segments {
                pieces: Box::new(PieceReader::open(&path, text_field)?),
                packer: Packer::new(&corpus.specials, corpus.max_seq_len),
                units: Units::default(),
                share,
                ready: VecDeque::new(),
            },
            Form::Examples(kind) => RowMaker::Examples {
                examples: ExampleReader::open(&path, *kind)?,
                share,
            },
        };
        Ok(ShardRows::Made { maker, writer })
    }

    fn next_row(&mut self, corpus: &Corpus) -> Result<Option<Encoded>> {
        match self {
            ShardRows::Cached(rows) => rows.next_row(),
            ShardRows::Made { maker, writer } => {
                let row = maker.next_row(corpus)?;
                if let (Some(row), Some(w)) = (&row, writer.as_mut()) {
                    if let Err(e) = w.push(row) {
                        tracing::warn!("token cache not written: {e}");
                        *writer = None;
                    }
                }
                Ok(row)
            }
        }
    }

    /// The shard was read to its end: its cache file, if written, takes its place.
    /// (Dropped before its end, a writer removes its file.)
    fn finish(self) {
        if let ShardRows::Made {
            writer: Some(w), ..
        } = self
        {
            if let Err(e) = w.finish() {
                tracing::warn!("token cache not written: {e}");
            }
        }
    }
}

/// Which units of a shard a lane keeps: all of them, or with fewer shards than lanes
/// every `LANES`-th, counted from a place of the shard's own (whatever the epoch's
/// shard order, a lane's part of a shard is always the same).
#[derive(Clone, Copy)]
struct Share {
    /// The shard's place in the corpus.
    index: usize,
    part: Option<usize>,
}

impl Share {
    fn keeps(self, unit: usize) -> bool {
        self.part
            .is_none_or(|lane| (unit + self.index) % LANES == lane)
    }
}

/// Makes rows from a shard's text.
enum RowMaker {
    /// Packs the kept units into segments.
    Segments {
        /// Boxed: a parquet reader is large beside the other readers.
        pieces: Box<PieceReader>,
        packer: Packer,
        units: Units,
        share: Share,
        /// Segments packed and not yet given.
        ready: VecDeque<Encoded>,
    },
    /// Tokenises the kept examples.
    Examples {
        examples: ExampleReader,
        share: Share,
    },
}

impl RowMaker {
    fn next_row(&mut self, corpus: &Corpus) -> Result<Option<Encoded>> {
        match self {
            RowMaker::Segments {
                pieces,
                packer,
                units,
                share,
                ready,
            } => loop {
                if let Some(row) = ready.pop_front() {
                    return Ok(Some(row));
                }
                // The next piece belongs to the unit being counted.
                let keep = share.keeps(units.index);
                let Some(piece) = pieces.next_piece(keep)? else {
                    return Ok(None);
                };
                let mut out = |segment| ready.push_back(segment);
                match piece {
                    // Text comes only when kept.
                    Piece::Text(text) => {
                        packer.push(&corpus.tokenizer.ids(&text)?, &mut out);
                        if units.text_line() {
                            packer.end_document(&mut out);
                        }
                    }
                    Piece::Unread => {
                        units.text_line();
                    }
                    Piece::DocumentEnd => {
                        if keep {
                            packer.end_document(&mut out);
                        }
                        units.document_end();
                    }
                }
            },
            RowMaker::Examples { examples, share } => {
                let keep = |example: usize| share.keeps(example);
                match examples.next_example(&keep)? {
                    Some((a, b)) => corpus
                        .tokenizer
                        .encode(&a, b.as_deref(), corpus.max_seq_len)
                        .map(Some),
                    None => Ok(None),
                }
            }
        }
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
struct Packer {
    specials: Specials,
    /// Text tokens per segment.
    budget: usize,
    current: Vec<u32>,
}

impl Packer {
    fn new(specials: &Specials, max_seq_len: usize) -> Self {
        let budget = max_seq_len - specials.prefix.len() - specials.suffix.len();
        Packer {
            specials: specials.clone(),
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
        let s = &self.specials;
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
///
/// The buffer starts giving rows once an eighth full and fills as it gives (one row
/// out for every two in), as webdataset's shuffle does: an epoch's first batches then
/// wait for fewer rows (by count, about 4,500 instead of 11,600 for the first 50
/// batches of 32 with the default 10,000 shared by 12 lanes), and only its first rows
/// are drawn from fewer.
struct ShuffleBuffer<T> {
    capacity: usize,
    held: Vec<T>,
    rng: Rng,
    /// While filling: the next row only comes in.
    in_only: bool,
}

impl<T> ShuffleBuffer<T> {
    fn new(capacity: usize, rng: Rng) -> Self {
        ShuffleBuffer {
            capacity,
            held: Vec::new(),
            rng,
            in_only: false,
        }
    }

    /// A buffer that keeps the order (what is left once a lane's buffer is drained).
    fn off() -> Self {
        ShuffleBuffer::new(0, Rng::new(0))
    }

    fn push(&mut self, row: T) -> Option<T> {
        if self.capacity <= 1 {
            return Some(row);
        }
        if self.held.len() < self.capacity {
            self.held.push(row);
            self.in_only = !self.in_only;
            if self.held.len() <= (self.capacity / 8).max(1) || self.in_only {
                return None;
            }
            let i = self.rng.below(self.held.len());
            return Some(self.held.swap_remove(i));
        }
        let i = self.rng.below(self.capacity);
        Some(std::mem::replace(&mut self.held[i], row))
    }

    /// The rows still held, in a seeded random order.
    fn drain(mut self) -> std::vec::IntoIter<T> {
        self.rng.shuffle(&mut self.held);
        self.held.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shuffle_buffer_gives_from_an_eighth_full_one_for_two_until_full() {
        let mut buffer = ShuffleBuffer::new(32, Rng::new(7));
        let given: Vec<Option<usize>> = (0..100).map(|row| buffer.push(row)).collect();
        // Nothing until 4 rows (an eighth) are held...
        assert!(given[..4].iter().all(Option::is_none), "{given:?}");
        // ...then one out for every two in, until the 32 are held (after 60 rows)...
        let out = |range: std::ops::Range<usize>| given[range].iter().flatten().count();
        assert_eq!(out(4..60), 28);
        // ...then one for one.
        assert_eq!(out(60..100), 40);
        assert_eq!(buffer.held.len(), 32);
        let mut every: Vec<usize> = given.into_iter().flatten().chain(buffer.drain()).collect();
        assert_ne!(every, (0..100).collect::<Vec<_>>(), "not shuffled");
        every.sort_unstable();
        assert_eq!(every, (0..100).collect::<Vec<_>>(), "each row once");
    }
}
