//! The NCCL back end of [`AllReduce`]: one replica per GPU, gradients summed on the GPUs.
//!
//! Rank 0 makes a [`NcclId`] and hands it to the other ranks: directly when they are
//! threads of one process, over TCP between machines ([`NcclId::internal`] is 128 bytes
//! to send; [`NcclId::uninit`] rebuilds it).

use std::sync::Mutex;

use candle_core::cuda::cudarc::nccl::safe::{Comm, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};

pub use candle_core::cuda::cudarc::nccl::safe::Id as NcclId;

use super::parallel::{flatten_f32, unflatten_like, AllReduce};
use crate::{Error, Result};

pub struct NcclAllReduce {
    comm: Mutex<Comm>,
    rank: usize,
    world: usize,
}

// SAFETY: the communicator is only used under the mutex, one call at a time, which is
// what NCCL requires of a communicator shared between threads.
unsafe impl Send for NcclAllReduce {}
unsafe impl Sync for NcclAllReduce {}

impl NcclAllReduce {
    /// A new group id; rank 0 makes it once.
    pub fn unique_id() -> Result<NcclId> {
        NcclId::new().map_err(|e| Error::msg(format!("NCCL: cannot create a group id: {e:?}")))
    }

    /// Joins the group as `rank` of `world` on `device` (a CUDA device). Blocks until
    /// every rank has joined.
    pub fn new(device: &Device, rank: usize, world: usize, id: NcclId) -> Result<Self> {
        let cuda = device.as_cuda_device()?;
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, id)
            .map_err(|e| Error::msg(format!("NCCL: rank {rank} of {world} cannot join: {e:?}")))?;
        Ok(NcclAllReduce {
            comm: Mutex::new(comm),
            rank,
            world,
        })
    }
}

/// The id as bytes, for node 0 to send to the other nodes.
pub fn id_to_bytes(id: &NcclId) -> Vec<u8> {
    id.internal().iter().map(|&c| c as u8).collect()
}

/// The id node 0 sent.
pub fn id_from_bytes(bytes: &[u8]) -> Result<NcclId> {
    let internal: [u8; 128] = bytes.try_into().map_err(|_| {
        Error::msg(format!(
            "NCCL: a group id has 128 bytes, node 0 sent {}",
            bytes.len()
        ))
    })?;
    Ok(NcclId::uninit(internal.map(|b| b as std::ffi::c_char)))
}

/// Sums one contiguous f32 buffer over the group.
struct SumOp<'a>(&'a Comm);

impl CustomOp1 for SumOp<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce needs tensors on a CUDA device")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("the NCCL all-reduce needs a contiguous tensor")
        };
        let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let device = &storage.device;
        let mut dst = device.alloc_zeros::<f32>(end - start)?;
        self.0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok((
            CudaStorage::wrap_cuda_slice(dst, device.clone()),
            layout.shape().clone(),
        ))
    }
}

impl AllReduce for NcclAllReduce {
    fn world_size(&self) -> usize {
        self.world
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn all_reduce_sum(&self, tensors: Vec<Tensor>) -> Result<Vec<Tensor>> {
        // One collective for the whole list: flattened into one f32 buffer.
        let flat = flatten_f32(&tensors)?;
        let summed = {
            let comm = self
                .comm
                .lock()
                .map_err(|_| Error::msg("NCCL: a worker panicked"))?;
            flat.apply_op1_no_bwd(&SumOp(&comm))?
        };
        unflatten_like(&summed, &tensors)
    }
}
