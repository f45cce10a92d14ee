//! Data-parallel replicas of one process: one student (and teacher) per local device,
//! each trained on its own thread, joined in one all-reduce group with the replicas of
//! the other nodes.
//!
//! The group's back end follows the devices: NCCL when every device is a GPU and the
//! build has the `nccl` feature; otherwise threads of one process share sums in memory
//! ([`ThreadAllReduce`]), and separate processes over TCP ([`TcpAllReduce`], one
//! replica per process).

use candle_core::Device;

use super::student::Student;
use crate::model::BertForSequenceClassification;
use crate::train::cluster::{NodeSpec, Rendezvous, Start, TcpAllReduce};
use crate::train::parallel::{AllReduce, ThreadAllReduce};
use crate::{Error, Result};

/// One replica: its models, its device, and its handle on the group (none when it
/// trains alone).
pub struct Replica<'a> {
    pub student: &'a Student,
    pub teacher: Option<&'a BertForSequenceClassification>,
    pub device: Device,
    pub parallel: Option<&'a dyn AllReduce>,
}

impl Replica<'_> {
    /// The replica that evaluates, logs and writes checkpoints.
    pub fn is_leader(&self) -> bool {
        self.parallel.is_none_or(|p| p.is_leader())
    }
}

/// Runs `work` for every replica at once, the first on this thread, and returns the
/// first replica's result, or the first error. A replica that fails or panics aborts
/// the group, so the others stop with an error instead of waiting forever.
pub fn on_every_replica<T: Send>(
    replicas: &[Replica],
    work: impl Fn(&Replica) -> Result<T> + Sync,
) -> Result<T> {
    let (first, others) = replicas
        .split_first()
        .ok_or_else(|| Error::msg("no replica to train"))?;
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = others
            .iter()
            .map(|r| scope.spawn(move || aborting_on_failure(r, || work(r))))
            .collect();
        let mut result = aborting_on_failure(first, || work(first));
        for (i, h) in handles.into_iter().enumerate() {
            let outcome = h.join().unwrap_or_else(|_| {
                Err(Error::msg(format!(
                    "data-parallel replica {} panicked",
                    i + 1
                )))
            });
            if let (Ok(_), Err(e)) = (&result, outcome) {
                result = Err(e);
            }
        }
        result
    })
}

fn aborting_on_failure<T>(replica: &Replica, work: impl FnOnce() -> Result<T>) -> Result<T> {
    /// Aborts the group when dropped armed: on an error, and while unwinding a panic.
    struct Guard<'a>(Option<&'a dyn AllReduce>);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                p.abort();
            }
        }
    }
    let mut guard = Guard(replica.parallel);
    let result = work();
    if result.is_ok() {
        guard.0 = None;
    }
    result
}

/// How this process takes part in training: alone, with local replicas, or as one
/// node of several.
pub enum Group {
    Alone,
    Threads(Vec<ThreadAllReduce>),
    Tcp(TcpAllReduce),
    #[cfg(feature = "nccl")]
    Nccl(Vec<crate::train::nccl::NcclAllReduce>),
}

impl Group {
    /// The all-reduce handle of each local replica, in device order.
    pub fn handles(&self) -> Vec<Option<&dyn AllReduce>> {
        match self {
            Group::Alone => vec![None],
            Group::Threads(g) => g.iter().map(|h| Some(h as &dyn AllReduce)).collect(),
            Group::Tcp(h) => vec![Some(h as &dyn AllReduce)],
            #[cfg(feature = "nccl")]
            Group::Nccl(g) => g.iter().map(|h| Some(h as &dyn AllReduce)).collect(),
        }
    }
}

/// Whether these devices train through NCCL: all GPUs, and the build has it.
pub fn uses_nccl(devices: &[Device]) -> bool {
    cfg!(feature = "nccl") && devices.iter().all(|d| d.is_cuda())
}

/// The group of one process with `devices`, with no other node.
pub fn local_group(devices: &[Device]) -> Result<Group> {
    if devices.len() == 1 {
        return Ok(Group::Alone);
    }
    #[cfg(feature = "nccl")]
    if uses_nccl(devices) {
        let id = crate::train::nccl::NcclAllReduce::unique_id()?;
        return nccl_group(devices, 0, devices.len(), id);
    }
    Ok(Group::Threads(ThreadAllReduce::group(devices.len())))
}

/// The group of one node among several, once node 0 has said start. The other nodes'
/// ranks follow theirs: node `n`'s replica `i` is rank `n * devices + i`.
pub fn node_group(
    devices: &[Device],
    node: &NodeSpec,
    rendezvous: Rendezvous,
    start: &Start,
) -> Result<Group> {
    #[cfg(feature = "nccl")]
    if uses_nccl(devices) {
        let bytes = start.nccl_id.as_deref().ok_or_else(|| {
            Error::msg("node 0 sent no NCCL id: is it built with --features nccl?")
        })?;
        let id = crate::train::nccl::id_from_bytes(bytes)?;
        drop(rendezvous);
        let world = node.nnodes * devices.len();
        return nccl_group(devices, node.node_rank * devices.len(), world, id);
    }
    let _ = start;
    if devices.len() != 1 {
        return Err(Error::invalid(
            "device",
            format!("{} devices", devices.len()),
            "a node of a multi-node run without NCCL trains one replica; list one device, or \
             use GPUs with a build that has --features nccl",
        ));
    }
    Ok(Group::Tcp(rendezvous.into_all_reduce(node.nnodes)))
}

/// Node 0's start message: the teacher to load, and a fresh NCCL id when the nodes use it.
pub fn start_message(devices: &[Device], teacher: &str) -> Result<Start> {
    #[cfg(feature = "nccl")]
    if uses_nccl(devices) {
        let id = crate::train::nccl::NcclAllReduce::unique_id()?;
        return Ok(Start {
            teacher: teacher.to_string(),
            nccl_id: Some(crate::train::nccl::id_to_bytes(&id)),
        });
    }
    let _ = devices;
    Ok(Start {
        teacher: teacher.to_string(),
        nccl_id: None,
    })
}

/// NCCL communicators join collectively, so each is made on its own thread.
#[cfg(feature = "nccl")]
fn nccl_group(
    devices: &[Device],
    first_rank: usize,
    world: usize,
    id: crate::train::nccl::NcclId,
) -> Result<Group> {
    use crate::train::nccl::NcclAllReduce;
    let comms = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| scope.spawn(move || NcclAllReduce::new(d, first_rank + i, world, id)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::msg("NCCL: joining the group panicked")))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(Group::Nccl(comms))
}
