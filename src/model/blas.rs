//! f32 CPU matmul through the system BLAS's `cblas_sgemm`, with its own backward:
//! OpenBLAS (Debian's `libopenblas-dev`) or Accelerate on macOS, when build.rs finds one
//! (`cfg(system_blas)`); the library is linked by build.rs.
//!
//! On this project's 2-core AVX2 machines the `gemm` crate candle uses reaches about
//! 90-117 GFLOP/s where an optimised BLAS reaches about 150 (../shared/notes/candle.md);
//! BERT training and inference are mostly matmul. Transposed operands (`x.t()`) are
//! passed to BLAS as transposes, not copied.

use std::ffi::c_int;
use std::sync::Once;

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
}

#[cfg(not(blas_accelerate))]
extern "C" {
    fn openblas_set_num_threads(n: c_int);
}

/// OpenBLAS runs single-threaded: the parallelism is rayon's (see `cpu_fwd`).
fn init_threads() {
    #[cfg(not(blas_accelerate))]
    {
        static ONCE: Once = Once::new();
        // SAFETY: sets a global thread count; no pointers involved.
        ONCE.call_once(|| unsafe { openblas_set_num_threads(1) });
    }
}

/// Products under this many floating-point operations run on the calling thread.
const SMALL_FLOP: usize = 1 << 21;

/// Output rows per rayon task: whole batch entries when there are enough of them to
/// share out, else blocks of rows large enough to be worth a task (about 4 MFLOP).
fn rows_per_task(threads: usize, batch: usize, m: usize, n: usize, k: usize) -> usize {
    let threads = threads.max(1);
    if batch >= threads {
        return m;
    }
    let by_work = (1 << 22) / (2 * n * k).max(1);
    let by_threads = m.div_ceil(threads * 2 / batch.max(1)).max(1);
    by_work.max(by_threads).clamp(1, m)
}

/// How one operand's (batch..., rows, cols) layout maps onto BLAS arguments.
#[derive(Debug, Clone, Copy)]
struct Operand {
    trans: bool,
    ld: usize,
    batch_stride: usize,
    offset: usize,
}

/// `None` when the layout needs a copy first (batch dims that do not collapse, or
/// neither rows nor columns unit-strided).
fn operand(l: &Layout) -> Option<Operand> {
    let dims = l.dims();
    let stride = l.stride();
    let r = dims.len();
    if r < 2 {
        return None;
    }
    let (rows, cols) = (dims[r - 2], dims[r - 1]);
    let (trans, ld) = if stride[r - 1] == 1 || cols == 1 {
        (false, stride[r - 2].max(cols))
    } else if stride[r - 2] == 1 || rows == 1 {
        (true, stride[r - 1].max(rows))
    } else {
        return None;
    };
    // Leading dims must be one evenly strided batch.
    let batch_stride = if r > 2 { stride[r - 3] } else { 0 };
    for i in 0..r.saturating_sub(3) {
        if dims[i + 1] > 1 && stride[i] != stride[i + 1] * dims[i + 1] {
            return None;
        }
    }
    Some(Operand {
        trans,
        ld,
        batch_stride,
        offset: l.start_offset(),
    })
}

struct Matmul;

impl CustomOp2 for Matmul {
    fn name(&self) -> &'static str {
        "openblas-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            bail!("openblas matmul: f32 operands only");
        };
        let (da, db) = (l1.dims(), l2.dims());
        let r = da.len();
        if r < 2 || db.len() != r || da[..r - 2] != db[..r - 2] || da[r - 1] != db[r - 2] {
            bail!("openblas matmul: shapes {da:?} and {db:?} do not multiply");
        }
        let (Some(oa), Some(ob)) = (operand(l1), operand(l2)) else {
            bail!(
                "openblas matmul: unsupported strides {:?} / {:?}",
                l1.stride(),
                l2.stride()
            );
        };
        let (m, k, n) = (da[r - 2], da[r - 1], db[r - 1]);
        let batch: usize = da[..r - 2].iter().product();
        let mut out_dims = da.to_vec();
        out_dims[r - 1] = n;
        let mut c = vec![0f32; batch * m * n];
        if m * n * k > 0 {
            init_threads();
            // One thread pool, rayon's: BLAS runs single-threaded inside rayon tasks,
            // each on a block of output rows of one batch entry. Two pools on two cores
            // (OpenBLAS's spinning beside rayon's) cost a second of system time per
            // distillation step.
            let rows = rows_per_task(rayon::current_num_threads(), batch, m, n, k);
            let product = |(t, block): (usize, &mut [f32])| {
                let per_entry = m.div_ceil(rows);
                let (i, r0) = (t / per_entry, (t % per_entry) * rows);
                let mr = block.len() / n;
                let pa = oa.offset + i * oa.batch_stride + r0 * if oa.trans { 1 } else { oa.ld };
                let pb = ob.offset + i * ob.batch_stride;
                // SAFETY: the layouts were checked above: every index sgemm reads lies
                // within the operand's storage (candle validated the layouts against it;
                // rows r0..r0+mr of `a` are inside its m rows), and `block` holds mr * n
                // floats of `c`.
                unsafe {
                    cblas_sgemm(
                        ROW_MAJOR,
                        if oa.trans { TRANS } else { NO_TRANS },
                        if ob.trans { TRANS } else { NO_TRANS },
                        mr as c_int,
                        n as c_int,
                        k as c_int,
                        1.0,
                        a[pa..].as_ptr(),
                        oa.ld as c_int,
                        b[pb..].as_ptr(),
                        ob.ld as c_int,
                        0.0,
                        block.as_mut_ptr(),
                        n as c_int,
                    )
                };
            };
            // Small products stay on the calling thread: waking a worker costs more.
            if 2 * batch * m * n * k < SMALL_FLOP {
                c.chunks_mut(rows * n).enumerate().for_each(product);
            } else {
                c.par_chunks_mut(rows * n).enumerate().for_each(product);
            }
        }
        Ok((CpuStorage::F32(c), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _c: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(matmul(grad, &b.t()?)?), Some(matmul(&a.t()?, grad)?)))
    }
}

/// `a @ b` for f32 CPU tensors of equal batch dims; copies operands BLAS cannot read in place.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = match operand(a.layout()) {
        Some(_) => a.clone(),
        None => a.contiguous()?,
    };
    let b = match operand(b.layout()) {
        Some(_) => b.clone(),
        None => b.contiguous()?,
    };
    a.apply_op2(&b, Matmul)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_candle_matmul_with_transposes_batches_and_gradients() {
        let dev = Device::Cpu;
        let a = Var::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, (2, 3, 4, 7), &dev).unwrap();
        // b.t() is a strided view: passed to BLAS as a transpose.
        let ours = matmul(a.as_tensor(), &b.as_tensor().t().unwrap()).unwrap();
        let plain = a.as_tensor().matmul(&b.as_tensor().t().unwrap()).unwrap();
        assert!(max_diff(&ours, &plain) < 1e-5);
        let w = Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &dev).unwrap();
        let go = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            let d = max_diff(
                go.get(v.as_tensor()).unwrap(),
                gp.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "gradient differs by {d}");
        }
        // 2-D, transposed left operand, narrowed (offset) right operand.
        let x = Tensor::randn(0f32, 1.0, (6, 9), &dev).unwrap();
        let y = Tensor::randn(0f32, 1.0, (6, 10), &dev)
            .unwrap()
            .narrow(1, 2, 5)
            .unwrap();
        let ours = matmul(&x.t().unwrap(), &y).unwrap();
        let plain = x.t().unwrap().matmul(&y).unwrap();
        assert!(max_diff(&ours, &plain) < 1e-5);
    }

    #[test]
    fn large_products_split_into_row_blocks_match_candle() {
        let dev = Device::Cpu;
        let (m, k, n) = (301, 400, 300);
        assert!(
            rows_per_task(2, 1, m, n, k) < m,
            "this product must be split"
        );
        assert!(2 * m * n * k >= SMALL_FLOP);
        // Two threads, as on this project's machines, whatever this one has.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let a = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let at = Tensor::randn(0f32, 1.0, (k, m), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            // Row blocks of a plain and of a transposed left operand, times a transposed right.
            for left in [a, at.t().unwrap()] {
                let ours = matmul(&left, &b.t().unwrap()).unwrap();
                let plain = left.matmul(&b.t().unwrap()).unwrap();
                assert!(max_diff(&ours, &plain) < 1e-3);
            }
            // A batch smaller than the thread count is split by rows within each entry.
            let x = Tensor::randn(0f32, 1.0, (1, m, k), &dev).unwrap();
            let y = Tensor::randn(0f32, 1.0, (1, k, n), &dev).unwrap();
            assert!(max_diff(&matmul(&x, &y).unwrap(), &x.matmul(&y).unwrap()) < 1e-3);
        });
    }
}
