//! Data-parallel training: one model replica per worker, each on its share of every
//! global batch, gradients summed across workers before each optimizer step.
//!
//! The trainer sees only [`AllReduce`]; [`ThreadAllReduce`] connects replicas that run
//! as threads of one process (CPU, or one GPU per thread). A multi-GPU NCCL back end
//! implements the same trait.

use std::sync::{Arc, Condvar, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::{Error, Result};

/// Sums tensors across the workers of a data-parallel group.
pub trait AllReduce: Send + Sync {
    fn world_size(&self) -> usize;
    fn rank(&self) -> usize;
    /// Every worker calls this with tensors of the same shapes, in the same order; each
    /// gets back the element-wise sums, identical on every worker.
    fn all_reduce_sum(&self, tensors: Vec<Tensor>) -> Result<Vec<Tensor>>;

    /// The one worker that logs, evaluates and writes checkpoints.
    fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    /// This worker failed: wake the others, blocked or about to block in a collective,
    /// with an error instead of leaving them waiting forever.
    fn abort(&self) {}
}

/// The tensors as one flat f32 vector, in order, on the first one's device: what a
/// collective between processes sums in one go.
pub fn flatten_f32(tensors: &[Tensor]) -> Result<Tensor> {
    let flat = tensors
        .iter()
        .map(|t| t.to_dtype(DType::F32)?.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    if flat.is_empty() {
        return Ok(Tensor::zeros(0, DType::F32, &Device::Cpu)?);
    }
    Ok(Tensor::cat(&flat, 0)?.contiguous()?)
}

/// `flat` (as [`flatten_f32`] made it from `like`) cut back into tensors with the
/// shapes, dtypes and devices of `like`.
pub fn unflatten_like(flat: &Tensor, like: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut offset = 0;
    like.iter()
        .map(|t| {
            let n = t.elem_count();
            let part = flat
                .narrow(0, offset, n)?
                .reshape(t.shape())?
                .to_dtype(t.dtype())?
                .to_device(t.device())?;
            offset += n;
            Ok(part)
        })
        .collect()
}

/// The rows of a global batch that worker `rank` of `world` trains on: contiguous
/// shares, the first ones one row larger when the batch does not divide evenly.
pub fn shard_range(batch: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let base = batch / world;
    let extra = batch % world;
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Sums this worker's gradients of `vars` and its loss (both already weighted by its
/// share of the batch) with the other workers', so every replica takes the same step;
/// returns the whole batch's loss.
pub fn sum_over_workers(
    parallel: &dyn AllReduce,
    vars: &[&Var],
    grads: &mut GradStore,
    loss: f64,
) -> Result<f64> {
    let mut tensors = vars
        .iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => v.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<Vec<Tensor>>>()?;
    let device = vars.first().map_or(Device::Cpu, |v| v.device().clone());
    tensors.push(Tensor::new(&[loss as f32], &device)?);
    let mut summed = parallel.all_reduce_sum(tensors)?;
    let loss = summed
        .pop()
        .ok_or_else(|| Error::msg("all-reduce lost the loss"))?
        .to_vec1::<f32>()?[0];
    for (v, g) in vars.iter().zip(summed) {
        grads.insert(v.as_tensor(), g);
    }
    Ok(loss as f64)
}

/// Every replica takes the leader's values of `vars`: replicas built apart (on other
/// machines, other devices) cannot drift from a difference in initialisation.
pub fn broadcast_from_leader(parallel: &dyn AllReduce, vars: &[&Var]) -> Result<()> {
    // A sum of the leader's values and zeros is the leader's values, exactly.
    let mine = vars
        .iter()
        .map(|v| {
            if parallel.is_leader() {
                Ok(v.as_tensor().clone())
            } else {
                v.as_tensor().zeros_like()
            }
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    for (v, t) in vars.iter().zip(parallel.all_reduce_sum(mine)?) {
        v.set(&t)?;
    }
    Ok(())
}

/// The element-wise sum of every worker's `table` (f32 counts or scores of equal
/// length), on every worker.
pub fn sum_table(parallel: &dyn AllReduce, table: Vec<f32>, device: &Device) -> Result<Vec<f32>> {
    let n = table.len();
    let summed = parallel.all_reduce_sum(vec![Tensor::from_vec(table, n, device)?])?;
    let first = summed
        .into_iter()
        .next()
        .ok_or_else(|| Error::msg("all-reduce lost the table"))?;
    Ok(first.to_vec1()?)
}

/// The leader's yes or no, on every worker.
pub fn leader_decides(parallel: &dyn AllReduce, yes: bool, device: &Device) -> Result<bool> {
    let mine = if parallel.is_leader() && yes {
        1f32
    } else {
        0f32
    };
    let summed = parallel.all_reduce_sum(vec![Tensor::new(&[mine], device)?])?;
    Ok(summed
        .first()
        .map(|t| t.to_vec1::<f32>())
        .transpose()?
        .is_some_and(|v| v[0] > 0.5))
}

/// An all-reduce between threads of one process.
///
/// Sums are formed in rank order by the last worker to arrive, so results do not depend
/// on thread timing: two runs give identical bits.
pub struct ThreadAllReduce {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    world: usize,
    state: Mutex<Round>,
    turned: Condvar,
}

struct Round {
    generation: u64,
    aborted: bool,
    slots: Vec<Option<Vec<Tensor>>>,
    result: Option<Arc<Result<Vec<Tensor>, String>>>,
}

impl ThreadAllReduce {
    /// One handle per worker, rank 0 first; move each into its own thread.
    pub fn group(world: usize) -> Vec<ThreadAllReduce> {
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(Round {
                generation: 0,
                aborted: false,
                slots: (0..world).map(|_| None).collect(),
                result: None,
            }),
            turned: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadAllReduce {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// Sums on rank 0's device (replicas may sit on different GPUs).
fn sum_in_rank_order(slots: &mut [Option<Vec<Tensor>>]) -> Result<Vec<Tensor>, String> {
    let mut parts = slots.iter_mut().map(|s| s.take().unwrap_or_default());
    let mut total = parts.next().unwrap_or_default();
    for (rank, part) in parts.enumerate() {
        if part.len() != total.len() {
            return Err(format!(
                "worker {} sent {} tensors, worker 0 sent {}",
                rank + 1,
                part.len(),
                total.len()
            ));
        }
        for (t, p) in total.iter_mut().zip(part) {
            let p = p.to_device(t.device()).map_err(|e| e.to_string())?;
            *t = t.add(&p).map_err(|e| e.to_string())?;
        }
    }
    Ok(total)
}

impl AllReduce for ThreadAllReduce {
    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn all_reduce_sum(&self, tensors: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let shared = &self.shared;
        let mut round = shared
            .state
            .lock()
            .map_err(|_| Error::msg("a data-parallel worker panicked"))?;
        if round.aborted {
            return Err(Error::msg(
                "all-reduce: another data-parallel worker failed",
            ));
        }
        let generation = round.generation;
        let device = tensors.first().map(|t| t.device().clone());
        round.slots[self.rank] = Some(tensors);
        if round.slots.iter().all(Option::is_some) {
            let sum = sum_in_rank_order(&mut round.slots);
            round.result = Some(Arc::new(sum));
            round.generation += 1;
            shared.turned.notify_all();
        } else {
            while round.generation == generation {
                if round.aborted {
                    return Err(Error::msg(
                        "all-reduce: another data-parallel worker failed",
                    ));
                }
                round = shared
                    .turned
                    .wait(round)
                    .map_err(|_| Error::msg("a data-parallel worker panicked"))?;
            }
        }
        // The next round cannot finish (and replace `result`) before every worker of this
        // one has arrived there, that is, after each has read this result.
        let result = round
            .result
            .clone()
            .ok_or_else(|| Error::msg("all-reduce finished without a result"))?;
        drop(round);
        match (result.as_ref(), device) {
            (Ok(sum), Some(device)) => Ok(sum
                .iter()
                .map(|t| t.to_device(&device))
                .collect::<candle_core::Result<_>>()?),
            (Ok(sum), None) => Ok(sum.clone()),
            (Err(e), _) => Err(Error::msg(format!("all-reduce: {e}"))),
        }
    }

    fn abort(&self) {
        // Even with the lock poisoned by a panicking worker, mark the round and wake all.
        let mut round = match self.shared.state.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        round.aborted = true;
        self.shared.turned.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn shards_cover_the_batch_once_in_order() {
        for batch in 0..12 {
            for world in 1..5 {
                let ranges: Vec<_> = (0..world).map(|r| shard_range(batch, r, world)).collect();
                let flat: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(flat, (0..batch).collect::<Vec<_>>(), "{batch} / {world}");
                let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn thread_all_reduce_sums_in_every_worker_over_many_rounds() {
        let world = 3;
        let handles: Vec<_> = ThreadAllReduce::group(world)
            .into_iter()
            .map(|comm| {
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    for round in 0..50u32 {
                        let r = comm.rank() as f32;
                        let a = Tensor::new(&[r, 10.0 * r + round as f32], &Device::Cpu).unwrap();
                        let b = Tensor::new(&[[1f32]], &Device::Cpu).unwrap();
                        let out = comm.all_reduce_sum(vec![a, b]).unwrap();
                        seen.push((
                            out[0].to_vec1::<f32>().unwrap(),
                            out[1].to_vec2::<f32>().unwrap(),
                        ));
                    }
                    seen
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (round, (a, b)) in results[0].iter().enumerate() {
            // ranks 0 + 1 + 2 = 3; 10 * 3 + 3 * round.
            assert_eq!(a, &vec![3.0, 30.0 + 3.0 * round as f32]);
            assert_eq!(b, &vec![vec![3.0]]);
        }
        assert!(results.iter().all(|r| r == &results[0]));
    }

    /// A worker that fails aborts the group: the others get an error, not a hang.
    #[test]
    fn an_aborting_worker_wakes_the_others_with_an_error() {
        let mut group = ThreadAllReduce::group(3).into_iter();
        let failing = group.next().unwrap();
        let waiting: Vec<_> = group
            .map(|comm| {
                std::thread::spawn(move || {
                    let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
                    comm.all_reduce_sum(vec![t])
                        .map(|_| ())
                        .unwrap_err()
                        .to_string()
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        failing.abort();
        for w in waiting {
            assert!(w
                .join()
                .unwrap()
                .contains("another data-parallel worker failed"));
        }
        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        assert!(failing.all_reduce_sum(vec![t]).is_err());
    }
}
