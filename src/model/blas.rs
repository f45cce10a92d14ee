//! f32 CPU matmul through the system BLAS's `cblas_sgemm`, with its own backward:
//! OpenBLAS (Debian's `libopenblas-dev`) or Accelerate on macOS, when build.rs finds one
//! (`cfg(system_blas)`); the library is linked by build.rs.
//!
//! On this project's 2-core AVX2 machines the `gemm` crate candle uses reaches about
//! 90-117 GFLOP/s where an optimised BLAS reaches about 150 (../shared/notes/candle.md);
//! BERT training and inference are mostly matmul. Transposed operands (`x.t()`) are
//! passed to BLAS as transposes, not copied. Dense layers are one op ([`linear`]) with
//! the bias written in first and their own backward; `attention` calls [`sgemm`] per
//! head.

use std::ffi::c_int;

use candle_core::backend::BackendStorage;
use std::sync::Once;

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};

use super::kernels::{contiguous_f32, with_f32};
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

/// OpenBLAS runs single-threaded: the parallelism is rayon's (see `Product::gemm`).
pub(super) fn init_threads() {
    #[cfg(not(blas_accelerate))]
    {
        static ONCE: Once = Once::new();
        // SAFETY: sets a global thread count; no pointers involved.
        ONCE.call_once(|| unsafe { openblas_set_num_threads(1) });
    }
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

/// One single-threaded row-major product on raw pointers, `c = alpha op(a) op(b) +
/// beta c`, for kernels that walk their own blocks (`attention`).
///
/// # Safety
/// The pointers must be valid for the (m, k), (k, n) and (m, n) matrices that the
/// transposes and leading dimensions describe; with `beta == 0`, `c` is not read.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sgemm(
    (trans_a, trans_b): (bool, bool),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (*const f32, usize),
    (b, ldb): (*const f32, usize),
    beta: f32,
    (c, ldc): (*mut f32, usize),
) {
    let flag = |t: bool| if t { TRANS } else { NO_TRANS };
    // SAFETY: the caller's contract.
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            flag(trans_a),
            flag(trans_b),
            m as c_int,
            n as c_int,
            k as c_int,
            alpha,
            a,
            lda as c_int,
            b,
            ldb as c_int,
            beta,
            c,
            ldc as c_int,
        )
    }
}

/// Products under this many floating-point operations run on the calling thread.
const SMALL_FLOP: usize = 1 << 21;
/// Smallest share of one product worth a rayon task (floating-point operations).
const TASK_FLOP: usize = 1 << 22;

/// How a product's output is shared out among rayon tasks. Each task packs the whole
/// of the operand it does not split, so the split runs along the longer side of the
/// output: rows when there are more rows than columns, else columns. Splitting a
/// 64-row product by rows packed the whole weight matrix four times over (a third of
/// a batch-1 inference in `perf`); splitting the weight gradient (312 rows, 2048-long
/// inner dimension) by rows repacked the 2048-row gradient in every task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// One task per batch entry.
    Entries,
    /// Blocks of this many output rows of each entry.
    Rows(usize),
    /// Blocks of this many output columns of each entry.
    Cols(usize),
}

impl Split {
    fn choose(threads: usize, batch: usize, m: usize, n: usize, k: usize) -> Split {
        let threads = threads.max(1);
        if batch >= threads {
            return Split::Entries;
        }
        // One task a thread, none smaller than TASK_FLOP. Two a thread (so that a
        // thread slowed by a neighbour on a shared VM could hand work over) packed the
        // unsplit operand twice as often: batch-1 inference took 7.5-8.3 ms instead of
        // 6.0-6.2, batch 32 111-123 ms instead of 104-118.
        let wanted = threads.div_ceil(batch.max(1));
        let side = |len: usize, other: usize| {
            let by_work = TASK_FLOP / (2 * other * k).max(1);
            len.div_ceil(wanted).max(by_work).clamp(1, len)
        };
        if m >= n {
            Split::Rows(side(m, n))
        } else {
            Split::Cols(side(n, m))
        }
    }

    /// Tasks for one batch entry of an (m, n) output.
    fn per_entry(self, m: usize, n: usize) -> usize {
        match self {
            Split::Entries => 1,
            Split::Rows(r) => m.div_ceil(r),
            Split::Cols(c) => n.div_ceil(c),
        }
    }

    /// Task `t`'s batch entry, first row, rows, first column and columns.
    fn block(self, t: usize, m: usize, n: usize) -> (usize, usize, usize, usize, usize) {
        let per = self.per_entry(m, n);
        let (i, j) = (t / per, t % per);
        match self {
            Split::Entries => (i, 0, m, 0, n),
            Split::Rows(r) => (i, j * r, r.min(m - j * r), 0, n),
            Split::Cols(c) => (i, 0, m, j * c, c.min(n - j * c)),
        }
    }
}

/// An output's base pointer, shared by tasks that write disjoint blocks of it.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: every user hands it only to tasks that write disjoint blocks (here
// `Split::block`; `attention`'s heads), and joins them all before the buffer is read.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `offset` must lie within the buffer.
    pub(super) unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(offset) }
    }
}

/// One product's operands and shape: `c = a @ b + beta * c` for each of `batch`
/// entries of (m, k) by (k, n).
struct Product<'a> {
    a: &'a [f32],
    oa: Operand,
    b: &'a [f32],
    ob: Operand,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
}

impl Product<'_> {
    /// Writes the (batch, m, n) product into `c` (contiguous, batch * m * n floats).
    /// With `beta == 0` it never reads `c`, so `c` may be uninitialised (the BLAS
    /// specification: "when beta is zero, C need not be set on input").
    ///
    /// # Safety
    /// `c` must be valid for writes of batch * m * n floats, and the operands' layouts
    /// must lie within their slices (candle validated them against their storage).
    unsafe fn gemm(&self, c: *mut f32, beta: f32) {
        let (m, n, k) = (self.m, self.n, self.k);
        init_threads();
        // One thread pool, rayon's: BLAS runs single-threaded inside rayon tasks. Two
        // pools on two cores (OpenBLAS's spinning beside rayon's) cost a second of
        // system time per distillation step.
        let split = Split::choose(rayon::current_num_threads(), self.batch, m, n, k);
        let tasks = self.batch * split.per_entry(m, n);
        let out = OutPtr(c);
        let task = |t: usize| {
            let (i, r0, mr, c0, nc) = split.block(t, m, n);
            let (oa, ob) = (self.oa, self.ob);
            let pa = oa.offset + i * oa.batch_stride + r0 * if oa.trans { 1 } else { oa.ld };
            let pb = ob.offset + i * ob.batch_stride + c0 * if ob.trans { ob.ld } else { 1 };
            // SAFETY: see the function's contract; block (i, r0.., c0..) of entry i lies
            // within c's batch * m * n floats, and no other task writes it.
            unsafe {
                cblas_sgemm(
                    ROW_MAJOR,
                    if oa.trans { TRANS } else { NO_TRANS },
                    if ob.trans { TRANS } else { NO_TRANS },
                    mr as c_int,
                    nc as c_int,
                    k as c_int,
                    1.0,
                    self.a[pa..].as_ptr(),
                    oa.ld as c_int,
                    self.b[pb..].as_ptr(),
                    ob.ld as c_int,
                    beta,
                    out.at(i * m * n + r0 * n + c0),
                    n as c_int,
                )
            };
        };
        // Small products stay on the calling thread: waking a worker costs more.
        if 2 * self.batch * m * n * k < SMALL_FLOP {
            (0..tasks).for_each(task);
        } else {
            (0..tasks).into_par_iter().for_each(task);
        }
    }
}
fn f32_slice<'a>(s: &'a CpuStorage, op: &str) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(v),
        other => bail!("{op}: f32 operands only, got {:?}", other.dtype()),
    }
}

fn operands(l1: &Layout, l2: &Layout, op: &str) -> Result<(Operand, Operand)> {
    match (operand(l1), operand(l2)) {
        (Some(oa), Some(ob)) => Ok((oa, ob)),
        _ => bail!(
            "{op}: unsupported strides {:?} / {:?}",
            l1.stride(),
            l2.stride()
        ),
    }
}

/// A batch * m * n output filled by `fill` (which must write every float).
pub(super) fn output(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut c = Vec::with_capacity(len);
    fill(c.as_mut_ptr());
    // SAFETY: `fill` wrote all `len` floats (gemm with beta 0, or rows set first).
    unsafe { c.set_len(len) };
    c
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
        let (a, b) = (f32_slice(s1, "matmul")?, f32_slice(s2, "matmul")?);
        let (da, db) = (l1.dims(), l2.dims());
        let r = da.len();
        if r < 2 || db.len() != r || da[..r - 2] != db[..r - 2] || da[r - 1] != db[r - 2] {
            bail!("openblas matmul: shapes {da:?} and {db:?} do not multiply");
        }
        let (oa, ob) = operands(l1, l2, "openblas matmul")?;
        let (m, k, n) = (da[r - 2], da[r - 1], db[r - 1]);
        let batch: usize = da[..r - 2].iter().product();
        let mut out_dims = da.to_vec();
        out_dims[r - 1] = n;
        let len = batch * m * n;
        let c = if k == 0 {
            vec![0f32; len]
        } else {
            let product = Product {
                a,
                oa,
                b,
                ob,
                batch,
                m,
                n,
                k,
            };
            // SAFETY: `output` hands over room for len floats; gemm with beta 0 writes
            // each of them; the layouts were checked by candle and `operands`.
            output(len, |c| unsafe { product.gemm(c, 0.0) })
        };
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

/// A dense layer in one op, `x W^T + b` for x (rows, in), W (out, in), b (out): the
/// bias is written into the output first and BLAS adds the product to it, and the
/// backward pass returns dx, dW and db directly. As a matmul plus `broadcast_add`,
/// candle's backward spends four more passes over the (rows, out) output (a zeroed
/// buffer and a sum for each side of the add) and two over W (its transposed view).
struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "openblas-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(sx, "linear")?, f32_slice(sw, "linear")?);
        let bias = contiguous_f32(sb, lb, "linear bias")?;
        // Leading dims fold into rows: the input is contiguous (`linear`).
        let dims = lx.dims();
        let (k, (n, kw)) = (*dims.last().unwrap_or(&0), lw.shape().dims2()?);
        let m = lx.shape().elem_count() / k.max(1);
        if dims.len() < 2 || !lx.is_contiguous() || k != kw || bias.len() != n {
            bail!(
                "linear: input {:?} (contiguous), weight {:?} and bias {:?} do not fit",
                lx.dims(),
                lw.dims(),
                lb.dims()
            );
        }
        let (rows, wt) = (
            Layout::contiguous_with_offset((m, k), lx.start_offset()),
            lw.transpose(0, 1)?,
        );
        let (oa, ob) = operands(&rows, &wt, "linear")?;
        let product = Product {
            a: x,
            oa,
            b: w,
            ob,
            batch: 1,
            m,
            n,
            k,
        };
        let c = output(m * n, |c| {
            // SAFETY: the rows are set to the bias first (all m * n floats), then gemm
            // adds the product in place; layouts checked by candle and `operands`.
            unsafe {
                repeat_row(c, bias, m);
                if k > 0 {
                    product.gemm(c, 1.0);
                }
            }
        });
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = n;
        Ok((CpuStorage::F32(c), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (k, n) = (x.dim(D::Minus1)?, grad.dim(D::Minus1)?);
        let (x2, g2) = (x.reshape(((), k))?, grad.contiguous()?.reshape(((), n))?);
        let dx = matmul(&g2, w)?.reshape(x.shape())?;
        let dw = matmul(&g2.t()?, &x2)?;
        Ok((Some(dx), Some(dw), Some(column_sums(&g2)?)))
    }
}

/// Sums of a (rows, n) tensor's columns. candle's `sum(0)` walks a non-last dimension
/// one element at a time on one thread: 4% of a student step in `perf`.
fn column_sums(g: &Tensor) -> Result<Tensor> {
    let n = g.dim(1)?;
    let sums = with_f32(g, |g| {
        let mut sums = vec![0f32; n];
        for row in g.chunks_exact(n) {
            sums.iter_mut().zip(row).for_each(|(s, x)| *s += x);
        }
        sums
    })?;
    Tensor::from_vec(sums, n, g.device())
}

/// `x W^T + b` for f32 CPU tensors, x of shape (..., in): leading dims fold into rows
/// inside the op, with no reshape nodes (each costs a zeroed buffer and a sum in
/// candle's backward).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&in_place(w)?, &b.contiguous()?, Linear)
}

/// `a @ b` for f32 CPU tensors of equal batch dims.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    in_place(a)?.apply_op2(&in_place(b)?, Matmul)
}

/// `t` itself when BLAS can read its layout in place, else a contiguous copy.
fn in_place(t: &Tensor) -> Result<Tensor> {
    match operand(t.layout()) {
        Some(_) => Ok(t.clone()),
        None => t.contiguous(),
    }
}

/// Writes `row` into each of `rows` consecutive rows at `c`, before a product with
/// beta 1 adds to them (a bias, an attention mask).
///
/// # Safety
/// `c` must be valid for writes of rows * row.len() floats.
pub(super) unsafe fn repeat_row(c: *mut f32, row: &[f32], rows: usize) {
    for i in 0..rows {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(i * row.len()), row.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_abs_diff as max_diff;
    use candle_core::{Device, Var};

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

    /// Runs `f` in a pool of two threads, as on this project's machines.
    fn two_threads(f: impl FnOnce() + Send) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(f);
    }

    #[test]
    fn products_split_along_the_longer_side_match_candle() {
        let dev = Device::Cpu;
        // Tall outputs split by rows, wide ones (a batch-1 inference's 64 tokens by a
        // 1,200-wide layer, a weight gradient) by columns; both large enough to share.
        assert!(matches!(Split::choose(2, 1, 301, 300, 400), Split::Rows(r) if r < 301));
        assert!(matches!(Split::choose(2, 1, 64, 1200, 312), Split::Cols(c) if c < 1200));
        assert_eq!(Split::choose(2, 4, 64, 1200, 312), Split::Entries);
        // One task a thread: each task packs the unsplit operand again.
        assert_eq!(Split::choose(2, 1, 2048, 312, 312).per_entry(2048, 312), 2);
        for (m, k, n) in [(301, 400, 300), (64, 312, 1201)] {
            assert!(2 * m * n * k >= SMALL_FLOP);
            two_threads(|| {
                let a = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let at = Tensor::randn(0f32, 1.0, (k, m), &dev).unwrap();
                let b = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                let bt = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
                // Plain and transposed operands on either side.
                for left in [a, at.t().unwrap()] {
                    for right in [b.t().unwrap(), bt.clone()] {
                        let ours = matmul(&left, &right).unwrap();
                        let plain = left.matmul(&right).unwrap();
                        assert!(max_diff(&ours, &plain) < 1e-3, "({m}, {k}, {n})");
                    }
                }
                // A batch smaller than the thread count is split within each entry.
                let x = Tensor::randn(0f32, 1.0, (1, m, k), &dev).unwrap();
                let y = Tensor::randn(0f32, 1.0, (1, k, n), &dev).unwrap();
                assert!(max_diff(&matmul(&x, &y).unwrap(), &x.matmul(&y).unwrap()) < 1e-3);
            });
        }
    }

    #[test]
    fn linear_matches_matmul_plus_bias_with_gradients() {
        let dev = Device::Cpu;
        // A small layer (one thread) and a wide one (split by columns).
        for (rows, input, out) in [(5, 7, 3), (64, 312, 1200)] {
            two_threads(|| {
                let x = Var::randn(0f32, 1.0, (rows, input), &dev).unwrap();
                let w = Var::randn(0f32, 1.0, (out, input), &dev).unwrap();
                let b = Var::randn(0f32, 1.0, out, &dev).unwrap();
                let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
                let ours = linear(xt, wt, bt).unwrap();
                let plain = xt
                    .matmul(&wt.t().unwrap())
                    .unwrap()
                    .broadcast_add(bt)
                    .unwrap();
                assert!(max_diff(&ours, &plain) < 1e-3);
                let weights = Tensor::randn(0f32, 1.0, (rows, out), &dev).unwrap();
                let go = (ours * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let gp = (plain * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                for v in [&x, &w, &b] {
                    let (o, p) = (
                        go.get(v.as_tensor()).unwrap(),
                        gp.get(v.as_tensor()).unwrap(),
                    );
                    assert_eq!(o.dims(), p.dims());
                    let scale = max_diff(p, &p.zeros_like().unwrap());
                    let d = max_diff(o, p);
                    assert!(d <= 1e-5 * scale.max(1.0), "gradient differs by {d}");
                }
            });
        }
    }
}
