//! Who reads a replica's lanes of a corpus epoch ([`LaneReader`]). Training on the CPU,
//! the trainer reads them itself when it needs rows; on a GPU, where the CPU waits on
//! the device, one background thread reads every lane ahead of the trainer into bounded
//! queues (as PyTorch's DataLoader reads in the main process by default, and in workers
//! when asked).
//!
//! Why not a thread on the CPU too, measured with benches/corpus.rs on 2 cores (README):
//! the trainer's pool already keeps both cores busy, so a reader thread took its time
//! from the steps (0.86-0.99 of the in-memory rate either way, within the VM's noise),
//! and its allocator heap made peak memory land anywhere from 112 to 144 MB from run to
//! run (mimalloc backs a new thread's memory with transparent huge pages: 112 MB in a
//! run with MIMALLOC_ALLOW_LARGE_OS_PAGES=0, which made batch-1 inference 9% slower, so
//! it is not set). Read inline, 111-115 MB in every run. Rows cross between the threads as
//! tokens copied through each lane's queue ([`RowRing`]), never as allocations made on
//! one thread and freed on the other (which the allocator is slow to reuse).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::lane::Lane;
use super::Corpus;
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
    rows: RowRing,
    /// The lane has no more rows (after `error`, if any).
    ended: bool,
    error: Option<Error>,
}

/// Rows queued as their tokens, copied in by the reader and out by the trainer: no row
/// made on one thread is freed on the other (the allocator keeps the pages of blocks
/// freed from another thread than made them, and peak memory then varies from run to
/// run by a quarter). The buffers grow to their steady size once.
#[derive(Default)]
struct RowRing {
    ids: VecDeque<u32>,
    type_ids: VecDeque<u32>,
    lengths: VecDeque<usize>,
}

impl RowRing {
    fn len(&self) -> usize {
        self.lengths.len()
    }

    fn push_back(&mut self, row: &Encoded) {
        self.ids.extend(&row.ids);
        self.type_ids.extend(&row.type_ids);
        self.lengths.push_back(row.ids.len());
    }

    fn pop_front(&mut self) -> Option<Encoded> {
        let n = self.lengths.pop_front()?;
        Some(Encoded {
            ids: self.ids.drain(..n).collect(),
            type_ids: self.type_ids.drain(..n).collect(),
        })
    }
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
                refilling |= queues
                    .lanes
                    .iter()
                    .any(|q| !q.ended && q.rows.len() < REFILL_BELOW);
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
            Ok(Some(row)) => queue.rows.push_back(&row),
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
