//! The lanes of a corpus epoch. A lane makes rows on demand from its shards (or from
//! its share of every shard's units), through the token cache when there is one, and
//! passes them through its own shuffle buffer.
//!
//! A replica's lanes are read in one of two ways ([`LaneReader`]). Training on the CPU,
//! the trainer reads them itself when it needs rows: its thread pool already keeps
//! every core busy, and a reader thread beside it (benches/corpus.rs, 2 cores) took
//! 5.4-7.9 s of user time per job against 5.1-5.6 s inline, in hand-offs and in cores
//! taken from the pool, and its peak memory varied from 111 to 143 MB from run to run
//! (111-115 inline), as the allocator kept the pages of rows freed on another thread
//! than made them. Training on a GPU, the CPU waits on the device, so one thread reads
//! every lane ahead of the trainer into bounded queues (as PyTorch's DataLoader reads
//! in the main process by default, and in workers when asked).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::shards::{ExampleReader, Piece, PieceReader, Shard};
use super::token_cache::{CacheWriter, CachedRows};
use super::{Corpus, Form, Specials, LANES, UNIT_LINES};
use crate::rng::Rng;
use crate::tokenizer::Encoded;
use crate::{Error, Result};

/// Rows each lane is read ahead of the trainer, enough that it never waits.
const QUEUE_ROWS: usize = 256;

/// The reader refills the lanes once one of them holds fewer rows than this: in
/// bursts, because waking a thread for every row taken costs more than the reading.
const REFILL_BELOW: usize = QUEUE_ROWS / 2;

/// Some lanes of an epoch, asked for by their places in the list they were opened
/// with.
pub enum LaneReader {
    /// Read by the trainer's thread when asked.
    Inline(Vec<Lane>),
    /// Read ahead on a thread of their own.
    Ahead(AheadReader),
}

impl LaneReader {
    /// Lanes `lanes` of `epoch`, read ahead on a background thread when `ahead`.
    pub fn start(corpus: &Corpus, epoch: usize, lanes: &[usize], ahead: bool) -> LaneReader {
        let lanes: Vec<Lane> = lanes
            .iter()
            .map(|&lane| Lane::new(corpus, epoch, lane))
            .collect();
        if ahead {
            LaneReader::Ahead(AheadReader::start(lanes))
        } else {
            LaneReader::Inline(lanes)
        }
    }

    /// The next row of the lane at `place`, or none at its end.
    pub fn next_row(&mut self, place: usize) -> Result<Option<Encoded>> {
        match self {
            LaneReader::Inline(lanes) => lanes[place].next_row(),
            LaneReader::Ahead(reader) => reader.next_row(place),
        }
    }
}

/// Lanes read on a background thread into bounded queues.
pub struct AheadReader {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

/// What the reader and the trainer share: each lane's queue, and a signal each way.
struct Shared {
    queues: Mutex<Queues>,
    /// A row was queued, or a lane ended.
    filled: Condvar,
    /// A lane ran low, or the trainer has gone.
    taken: Condvar,
}

struct Queues {
    lanes: Vec<Queue>,
    /// The trainer has gone: the reader stops.
    closed: bool,
    /// The trainer waits for a row (so the reader must wake it).
    trainer_waits: bool,
    /// The reader waits for room (so the trainer must wake it when a lane runs low).
    reader_waits: bool,
}

#[derive(Default)]
struct Queue {
    rows: VecDeque<Encoded>,
    /// The lane has no more rows (after `error`, if any).
    ended: bool,
    error: Option<Error>,
}

impl AheadReader {
    fn start(lanes: Vec<Lane>) -> AheadReader {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues {
                lanes: lanes.iter().map(|_| Queue::default()).collect(),
                closed: false,
                trainer_waits: false,
                reader_waits: false,
            }),
            filled: Condvar::new(),
            taken: Condvar::new(),
        });
        let for_thread = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("corpus-reader".into())
            .spawn(move || read_lanes(lanes, &for_thread));
        let handle = match handle {
            Ok(h) => Some(h),
            Err(e) => {
                let mut queues = shared.lock();
                for queue in &mut queues.lanes {
                    queue.error = Some(Error::msg(format!("cannot start the corpus reader: {e}")));
                    queue.ended = true;
                }
                None
            }
        };
        AheadReader { shared, handle }
    }

    fn next_row(&self, place: usize) -> Result<Option<Encoded>> {
        let mut queues = self.shared.lock();
        loop {
            let queue = &mut queues.lanes[place];
            if let Some(row) = queue.rows.pop_front() {
                let low = queue.rows.len() < REFILL_BELOW;
                if low && queues.reader_waits {
                    queues.reader_waits = false;
                    self.shared.taken.notify_one();
                }
                return Ok(Some(row));
            }
            if let Some(e) = queue.error.take() {
                return Err(e);
            }
            if queue.ended {
                return Ok(None);
            }
            queues.trainer_waits = true;
            queues = self.shared.wait(&self.shared.filled, queues);
        }
    }
}

impl Drop for AheadReader {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.taken.notify_one();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Shared {
    /// The queues; a panic elsewhere while holding them leaves them usable (each
    /// change to them is one push or pop).
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, signal: &Condvar, guard: MutexGuard<'a, Queues>) -> MutexGuard<'a, Queues> {
        signal.wait(guard).unwrap_or_else(|e| e.into_inner())
    }
}

/// The reader thread: once a lane runs low, one row at a time to the lane with the
/// fewest rows queued until every lane is full; until every lane has ended or the
/// trainer has gone.
fn read_lanes(mut lanes: Vec<Lane>, shared: &Shared) {
    let _ends = EndOnExit(shared);
    let mut refilling = true;
    loop {
        let place = {
            let mut queues = shared.lock();
            loop {
                if queues.closed || queues.lanes.iter().all(|q| q.ended) {
                    return;
                }
                let open = || queues.lanes.iter().filter(|q| !q.ended);
                refilling |= open().any(|q| q.rows.len() < REFILL_BELOW);
                let emptiest = (0..queues.lanes.len())
                    .filter(|&p| !queues.lanes[p].ended)
                    .min_by_key(|&p| queues.lanes[p].rows.len())
                    .filter(|&p| refilling && queues.lanes[p].rows.len() < QUEUE_ROWS);
                match emptiest {
                    Some(place) => break place,
                    None => {
                        refilling = false;
                        queues.reader_waits = true;
                        queues = shared.wait(&shared.taken, queues);
                    }
                }
            }
        };
        let row = lanes[place].next_row();
        let mut queues = shared.lock();
        let queue = &mut queues.lanes[place];
        match row {
            Ok(Some(row)) => queue.rows.push_back(row),
            Ok(None) => queue.ended = true,
            Err(e) => {
                queue.error = Some(e);
                queue.ended = true;
            }
        }
        if queues.trainer_waits {
            queues.trainer_waits = false;
            shared.filled.notify_one();
        }
    }
}

/// Ends every lane when the reader thread stops, so that the trainer never waits for
/// a row that cannot come; a panic ends them with an error, not as if read through.
struct EndOnExit<'a>(&'a Shared);

impl Drop for EndOnExit<'_> {
    fn drop(&mut self) {
        let mut queues = self.0.lock();
        for queue in queues.lanes.iter_mut().filter(|q| !q.ended) {
            queue.ended = true;
            if std::thread::panicking() {
                queue.error = Some(Error::msg("the corpus reader stopped unexpectedly"));
            }
        }
        self.0.filled.notify_one();
    }
}

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
    fn new(corpus: &Corpus, epoch: usize, lane: usize) -> Lane {
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
    fn next_row(&mut self) -> Result<Option<Encoded>> {
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
                let Some(piece) = pieces.next_piece()? else {
                    return Ok(None);
                };
                let keep = share.keeps(units.index);
                let mut out = |segment| ready.push_back(segment);
                match piece {
                    Piece::Text(text) => {
                        if keep {
                            packer.push(&corpus.tokenizer.ids(&text)?, &mut out);
                        }
                        if units.text_line() && keep {
                            packer.end_document(&mut out);
                        }
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
            return None;
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
