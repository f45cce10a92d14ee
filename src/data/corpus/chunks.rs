//! An epoch of a corpus as chunks of rows taken from every lane in turn, each replica
//! of a data-parallel group holding only the rows of its own lanes.
//!
//! Before each chunk the replicas exchange what their lanes hold next: the token
//! counts (plus one) of each lane's next rows (its share of the chunk and one more; all of a
//! chunk and one more in a second round when lanes run dry near an epoch's end),
//! summed across the group (each lane's slots are zero everywhere but on its owner, so
//! the sum is an all-gather). From that table every replica works out the same chunk:
//! one row from each lane that still has one, lane after lane, until the chunk is full. So the chunk, its lengths and
//! the batches built from them do not depend on the number of replicas, and every row
//! is read by one replica only.

use std::collections::VecDeque;

use super::{Corpus, LaneReader, LANES};
use crate::tokenizer::Encoded;
use crate::{Error, Result};

/// Sums a vector across the replicas of the group (identity for one replica).
pub type Exchange<'a> = &'a dyn Fn(Vec<f32>) -> Result<Vec<f32>>;

/// One chunk of an epoch.
#[derive(Debug)]
pub struct Chunk {
    /// Token count of every row of the chunk, in the chunk's order.
    pub lengths: Vec<usize>,
    /// The rows this replica read, at their places in the chunk; `None` where another
    /// replica holds the row.
    pub rows: Vec<Option<Encoded>>,
    /// No row of the epoch is left after this chunk.
    pub ended: bool,
}

/// One replica's side of an epoch: its lanes and the rows it has read ahead of them.
pub struct ChunkStream {
    /// This replica's lanes, by lane number, with the rows read ahead of each.
    lanes: Vec<(usize, VecDeque<Encoded>)>,
    /// Reads this replica's lanes, asked for by their places in `lanes`.
    reader: LaneReader,
    /// The lane whose turn comes next: turns go on from chunk to chunk.
    turn: usize,
}

impl ChunkStream {
    /// Replica `rank` of `world` opens its lanes of `epoch`: those whose number is
    /// `rank` modulo `world`; read ahead on a background thread when `ahead`.
    pub fn open(
        corpus: &Corpus,
        epoch: usize,
        (rank, world): (usize, usize),
        ahead: bool,
    ) -> Result<Self> {
        if world == 0 || world > LANES || rank >= world {
            return Err(Error::msg(format!(
                "a corpus is read in {LANES} lanes: it can feed 1 to {LANES} data-parallel \
                 replicas, not {world}"
            )));
        }
        let numbers: Vec<usize> = (rank..LANES).step_by(world).collect();
        Ok(ChunkStream {
            reader: LaneReader::start(corpus, epoch, &numbers, ahead),
            lanes: numbers.into_iter().map(|l| (l, VecDeque::new())).collect(),
            turn: 0,
        })
    }

    /// The next chunk of up to `rows` rows; empty once the epoch has ended. Every
    /// replica of the group must call this together (it exchanges through
    /// `exchange`).
    pub fn next_chunk(&mut self, rows: usize, exchange: Exchange) -> Result<Chunk> {
        // A lane's share and one more usually tell the whole chunk; only near the end
        // of an epoch, with lanes run dry, do the others give more (a second round).
        let mut slots = rows.div_ceil(LANES) + 1;
        loop {
            let table = self.exchange_lengths(slots, exchange)?;
            let held: Vec<usize> = (0..LANES)
                .map(|lane| {
                    table[lane * slots..(lane + 1) * slots]
                        .iter()
                        .take_while(|&&n| n > 0.0)
                        .count()
                })
                .collect();
            let mut turn = self.turn;
            let order = take_in_turn(&held, rows, &mut turn);
            let mut taken = [0usize; LANES];
            for &(lane, _) in &order {
                taken[lane] += 1;
            }
            // A lane that may hold more than it showed must have shown more than it gave.
            let told = (0..LANES).all(|k| held[k] < slots || taken[k] < held[k]);
            if !told && slots <= rows {
                slots = rows + 1;
                continue;
            }
            self.turn = turn;
            let lengths = order
                .iter()
                .map(|&(lane, j)| table[lane * slots + j] as usize - 1)
                .collect();
            let chunk_rows = order.iter().map(|&(lane, _)| self.take(lane)).collect();
            return Ok(Chunk {
                lengths,
                rows: chunk_rows,
                ended: (0..LANES).all(|k| held[k] < slots && taken[k] == held[k]),
            });
        }
    }

    /// Tops up this replica's lanes to `slots` rows read ahead and exchanges their
    /// lengths: lane `k`'s rows at `k * slots ..`, each as its token count plus one
    /// (a row may have no tokens), zero past a lane's end.
    fn exchange_lengths(&mut self, slots: usize, exchange: Exchange) -> Result<Vec<f32>> {
        let mut table = vec![0f32; LANES * slots];
        for (place, (lane, ahead)) in self.lanes.iter_mut().enumerate() {
            while ahead.len() < slots {
                match self.reader.next_row(place)? {
                    Some(row) => ahead.push_back(row),
                    None => break,
                }
            }
            for (j, row) in ahead.iter().take(slots).enumerate() {
                table[*lane * slots + j] = (row.ids.len() + 1) as f32;
            }
        }
        exchange(table)
    }

    /// The next row of `lane` when this replica reads it.
    fn take(&mut self, lane: usize) -> Option<Encoded> {
        self.lanes
            .iter_mut()
            .find(|(l, _)| *l == lane)
            .and_then(|(_, ahead)| ahead.pop_front())
    }
}

/// Up to `rows` (lane, row in lane) picks: one row from each lane that still holds
/// one, lanes in turn from `turn`, round after round; `turn` moves on past the last
/// lane picked.
fn take_in_turn(held: &[usize], rows: usize, turn: &mut usize) -> Vec<(usize, usize)> {
    let lanes = held.len();
    let mut taken = vec![0usize; lanes];
    let mut order = Vec::with_capacity(rows);
    let mut idle = 0;
    while order.len() < rows && idle < lanes {
        let lane = *turn % lanes;
        *turn = (lane + 1) % lanes;
        if taken[lane] < held[lane] {
            order.push((lane, taken[lane]));
            taken[lane] += 1;
            idle = 0;
        } else {
            idle += 1;
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_take_turns_until_the_chunk_is_full_or_they_run_dry() {
        let mut turn = 0;
        let order = take_in_turn(&[2, 0, 1], 10, &mut turn);
        assert_eq!(order, vec![(0, 0), (2, 0), (0, 1)]);
        let order = take_in_turn(&[5, 5, 5], 4, &mut turn);
        assert_eq!(order, vec![(1, 0), (2, 0), (0, 0), (1, 1)]);
        assert_eq!(turn, 2, "the next chunk starts where this one stopped");
        assert!(take_in_turn(&[0, 0], 3, &mut turn).is_empty());
    }
}
