//! Fused CPU kernels with their own backward pass, for f32 tensors on the CPU.
//!
//! candle's generic softmax, LayerNorm and GELU backward passes are compositions of
//! many whole-tensor ops (../shared/notes/candle.md: softmax fwd+bwd 200-285 ms and
//! gelu_erf 160-175 ms per TinyBERT-4 layer at batch 16, seq 128). These do each in one
//! or two passes over memory. Callers use [`applies`] to pick them: on other devices
//! and dtypes the plain compositions in `ops` run instead, so CUDA/Metal builds never
//! reach these kernels.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape,
    Storage, Tensor,
};
use rayon::prelude::*;

use super::ops;

/// Compiles the slice loop it wraps three times: with AVX-512 (16 lanes and 32
/// registers, which the erf and exp polynomials need to stay out of memory), with AVX2
/// (x86-64-v3), and for the default target (SSE2, 4 lanes); the CPU picks at run time.
/// Element-wise loops and the fixed-lane sums give the same bits in all three: Rust
/// never fuses a multiply and an add on its own.
macro_rules! vectorised {
    ($item:item) => {
        #[multiversion::multiversion(targets(
            "x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma",
            "x86_64+avx2+fma"
        ))]
        $item
    };
}
pub(crate) use vectorised;

/// Rows per rayon task: rows are short (a few hundred floats), so batch them.
const MIN_ROWS_PER_TASK: usize = 16;
/// Elements per rayon task for elementwise kernels.
const MIN_ELEMS_PER_TASK: usize = 1 << 14;

/// Whether these kernels handle `x`: f32 on the CPU.
pub fn applies(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

pub(super) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: input must be contiguous");
    };
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        other => bail!("{op}: expected f32, got {:?}", other.dtype()),
    }
}

/// Runs `f` on a contiguous f32 CPU tensor's data.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => Ok(f(contiguous_f32(s, layout, "with_f32")?)),
        _ => bail!("with_f32: tensor is not on the CPU"),
    }
}

fn last_dim(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("expected a non-empty last dimension, got {:?}", l.dims()),
    }
}

// ---------------------------------------------------------------- softmax

/// The sum of `f(x, y, z)` over three slices with eight independent accumulators
/// (element i into lane i % 8), eight elements at a time so that the compiler sees
/// whole vectors: a single running sum is a chain of dependent additions, and an
/// iterator with an index per element kept an index test per element. A fixed lane
/// order, so the same inputs always give the same bits.
#[inline(always)]
fn sum8_zip3(x: &[f32], y: &[f32], z: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let (xs, ys, zs) = (x.chunks_exact(8), y.chunks_exact(8), z.chunks_exact(8));
    let rest = xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .zip(zs.remainder());
    for ((x, y), z) in xs.zip(ys).zip(zs) {
        for j in 0..8 {
            acc[j] += f(x[j], y[j], z[j]);
        }
    }
    for (a, ((&x, &y), &z)) in acc.iter_mut().zip(rest) {
        *a += f(x, y, z);
    }
    acc.iter().sum()
}

/// [`sum8_zip3`] over two slices (the third argument's loads are never used, so the
/// compiler drops them).
#[inline(always)]
fn sum8_zip(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    sum8_zip3(x, y, y, |x, y, _| f(x, y))
}

/// The largest element, in eight lanes: a single running `max` is a chain of
/// dependent instructions, 4 cycles an element.
#[inline(always)]
fn max8(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            acc[j] = acc[j].max(c[j]);
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a = a.max(v);
    }
    acc.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// e^x in straight-line arithmetic that the compiler vectorises: libm's `expf` is a
/// call per element (4% of a student step in `perf`, from the attention softmax).
/// x = k ln 2 + r with |r| <= ln 2 / 2, Cephes' degree-6 polynomial for e^r, and 2^k
/// written into the exponent bits: within 2e-7 relative of `f32::exp` on [-87, 88].
/// Below -87 it returns 0, as `exp` does for a masked score (-10000): the clamped
/// polynomial's 1.6e-38 there, scaled by a softmax's row sum, became a subnormal
/// probability, and BLAS products over subnormals made the two real-weight training
/// tests (padded batches) take 366 s instead of 115 s.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    // round(x / ln 2) by adding and removing 1.5 * 2^23: no rounding call. The sum's
    // low mantissa bits then hold k as an integer, read without a float-to-int
    // conversion (Rust's saturating `as i32` does not vectorise: one lane at a time).
    let shifted = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let k = shifted - 12_582_912.0;
    let k_int = shifted.to_bits().wrapping_sub(0x4B40_0000);
    // ln 2 in two parts (Cephes' C1, C2), so r keeps its low bits.
    let r = x - k * 0.693_359_4 + k * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let scale = f32::from_bits(k_int.wrapping_add(127) << 23);
    let y = (p * r * r + r + 1.0) * scale;
    if underflow {
        0.0
    } else {
        y
    }
}

/// erf(x) by Abramowitz and Stegun 7.1.26 (absolute error under 1.5e-7; under 1e-6
/// after f32 rounding, checked against candle's `erf_f32`) on [`exp`]:
/// vectorised where candle's `erf_f32` is a call per element.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4;
    p = p * t - 1.453_152_1;
    p = p * t + 1.421_413_7;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp(-a * a);
    y.copysign(x)
}

vectorised! {
    pub(super) fn softmax_row(x: &[f32], y: &mut [f32]) {
        let max = max8(x);
        for (y, &x) in y.iter_mut().zip(x) {
            *y = exp(x - max);
        }
        let inv = 1.0 / sum8_zip(y, y, |v, _| v);
        y.iter_mut().for_each(|v| *v *= inv);
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let dim = last_dim(l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(y, x)| softmax_row(x, y));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

/// dx = y * (g - sum(g * y)) per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(ys, yl, self.name())?;
        let g = contiguous_f32(gs, gl, self.name())?;
        let dim = last_dim(yl)?;
        let mut dx = g.to_vec();
        dx.par_chunks_mut(dim)
            .zip(y.par_chunks(dim))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(dx, y)| softmax_grad_row_in_place(dx, y));
        Ok((CpuStorage::F32(dx), yl.shape().clone()))
    }
}

vectorised! {
    /// One row of the softmax backward, `y (g - sum(g y))`, written over the
    /// gradient `g`.
    pub(super) fn softmax_grad_row_in_place(g: &mut [f32], y: &[f32]) {
        let dot = sum8_zip(y, g, |a, b| a * b);
        for (g, &y) in g.iter_mut().zip(y) {
            *g = y * (*g - dot);
        }
    }
}

/// Softmax over the last dimension with a fused backward. `x` must satisfy [`applies`].
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

// ---------------------------------------------------------------- LayerNorm

/// Mean and 1/std of one row.
#[inline]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum8_zip(x, x, |v, _| v) / n;
    let var = sum8_zip(x, x, |v, _| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

vectorised! {
    fn layer_norm_row(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let (mean, rstd) = row_stats(x, eps);
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = (x - mean) * rstd * w + b;
        }
    }
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let w = contiguous_f32(ws, wl, self.name())?;
        let b = contiguous_f32(bs, bl, self.name())?;
        let dim = last_dim(xl)?;
        if w.len() != dim || b.len() != dim {
            bail!("layer norm: weight/bias of {} for rows of {dim}", w.len());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(y, x)| layer_norm_row(y, x, w, b, self.eps));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dim = x.dim(candle_core::D::Minus1)?;
        let n = x.elem_count();
        // One buffer holding dx, then dw, then db; views split it without copying.
        let all = x.contiguous()?.apply_op3_no_bwd(
            &grad.contiguous()?,
            &w.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, dim)?;
        let db = all.narrow(0, n + dim, dim)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// dx = rstd * (g*w - mean(g*w) - xhat * mean(g*w*xhat)); dw = sum g*xhat; db = sum g.
struct LayerNormGrad {
    eps: f32,
}

/// Rows per block of the LayerNorm backward's dw/db sums (a fixed split: determinism).
const LN_GRAD_ROWS: usize = 32;

vectorised! {
    /// One row of the LayerNorm backward: writes dx, adds the row's dw and db terms to
    /// `acc` (dw then db).
    fn layer_norm_grad_row(dx: &mut [f32], x: &[f32], g: &[f32], w: &[f32], acc: &mut [f32], eps: f32) {
        let (mean, rstd) = row_stats(x, eps);
        let inv_n = 1.0 / x.len() as f32;
        let (acc_w, acc_b) = acc.split_at_mut(x.len());
        let accs = acc_w.iter_mut().zip(acc_b.iter_mut());
        for ((dw, db), (&x, &g)) in accs.zip(x.iter().zip(g)) {
            *dw += g * ((x - mean) * rstd);
            *db += g;
        }
        let m_gw = sum8_zip(g, w, |g, w| g * w) * inv_n;
        let m_gwx = sum8_zip3(g, w, x, |g, w, x| g * w * ((x - mean) * rstd)) * inv_n;
        for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(w) {
            let xhat = (x - mean) * rstd;
            *dx = rstd * (g * w - m_gw - xhat * m_gwx);
        }
    }
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let g = contiguous_f32(gs, gl, self.name())?;
        let w = contiguous_f32(ws, wl, self.name())?;
        let dim = last_dim(xl)?;
        let n = x.len();
        let mut out = vec![0f32; n + 2 * dim];
        let (dx, dwb) = out.split_at_mut(n);
        // dw/db are summed over rows in fixed blocks of rows, and the blocks' partial sums
        // in block order, so the result does not depend on how rayon schedules the
        // blocks: the same inputs give the same bits under any load.
        let block = LN_GRAD_ROWS * dim;
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(block)
            .zip(x.par_chunks(block).zip(g.par_chunks(block)))
            .map(|(dx, (x, g))| {
                let mut acc = vec![0f32; 2 * dim];
                for (dx, (x, g)) in dx.chunks_mut(dim).zip(x.chunks(dim).zip(g.chunks(dim))) {
                    layer_norm_grad_row(dx, x, g, w, &mut acc, self.eps);
                }
                acc
            })
            .collect();
        let mut partial = vec![0f32; 2 * dim];
        for p in &partials {
            partial.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        dwb.copy_from_slice(&partial);
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * dim)))
    }
}

/// LayerNorm over the last dimension with a fused backward. `x` must satisfy [`applies`].
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

// ---------------------------------------------------------------- GELU (erf)

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f32 = 0.398_942_3;

#[inline]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

#[inline]
fn gelu_grad(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

vectorised! {
    fn gelu_slice(y: &mut [f32], x: &[f32]) {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = gelu(x));
    }
}

vectorised! {
    fn gelu_grad_slice(dx: &mut [f32], x: &[f32], g: &[f32]) {
        let pairs = x.iter().zip(g);
        dx.iter_mut()
            .zip(pairs)
            .for_each(|(d, (&x, &g))| *d = g * gelu_grad(x));
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        // Chunks with a plain loop inside, which vectorises (a rayon closure per
        // element does not).
        y.par_chunks_mut(MIN_ELEMS_PER_TASK)
            .zip(x.par_chunks(MIN_ELEMS_PER_TASK))
            .for_each(|(y, x)| gelu_slice(y, x));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &GeluErfGrad)?,
        ))
    }
}

struct GeluErfGrad;

impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let g = contiguous_f32(gs, gl, self.name())?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(MIN_ELEMS_PER_TASK)
            .zip(
                x.par_chunks(MIN_ELEMS_PER_TASK)
                    .zip(g.par_chunks(MIN_ELEMS_PER_TASK)),
            )
            .for_each(|(d, (x, g))| gelu_grad_slice(d, x, g));
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// GELU (erf form) with a fused backward. `x` must satisfy [`applies`].
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluErf)
}

// ---------------------------------------------------------------- dropout

/// Inverted dropout with the mask [`ops::keeps`] draws from a seed, as one node of the
/// graph. As `x * mask`, candle's backward also multiplies out (and sums into a zeroed
/// buffer) a gradient for the constant mask; here the backward finds the mask again.
#[derive(Clone, Copy)]
struct Dropout {
    p: f32,
    seed: u64,
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let mut y = x.to_vec();
        y.par_chunks_mut(MIN_ELEMS_PER_TASK)
            .enumerate()
            .for_each(|(chunk, y)| dropout_slice(y, self.seed, chunk * MIN_ELEMS_PER_TASK, self.p));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

vectorised! {
    /// Dropout in place on elements `first..` of a mask drawn from `seed` with drop
    /// probability `p`: each kept element times 1 / (1 - p), the others 0. The hash
    /// takes 64-bit multiplies, which vectorise only with AVX-512.
    pub(super) fn dropout_slice(x: &mut [f32], seed: u64, first: usize, p: f32) {
        let scale = 1.0 / (1.0 - p);
        for (i, x) in x.iter_mut().enumerate() {
            *x = if ops::keeps(seed, first + i, p) {
                *x * scale
            } else {
                0.0
            };
        }
    }
}

/// Dropout with drop probability `p` (below 1) and the mask of `seed`. `x` must
/// satisfy [`applies`].
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Dropout { p, seed })
}

// ---------------------------------------------------------------- masked MSE

/// Elements per partial sum of [`masked_mse`]: fixed, so the reduction's order never
/// depends on how rayon schedules the chunks (results are the same run to run).
const MSE_CHUNK: usize = 1 << 15;

/// `x` where it is above `floor`, else 0 (TinyBERT's treatment of masked scores).
#[inline]
fn above(x: f32, floor: f32) -> f32 {
    if x > floor {
        x
    } else {
        0.0
    }
}

/// mean((a' - b')^2), where x' zeroes entries at or below `floor`; gradient to `a` only
/// (`b` is the teacher's, which never trains).
struct MaskedMse {
    floor: f32,
}

impl CustomOp2 for MaskedMse {
    fn name(&self) -> &'static str {
        "fused-masked-mse"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(a, al, self.name())?;
        let b = contiguous_f32(b, bl, self.name())?;
        if a.len() != b.len() || a.is_empty() {
            bail!(
                "{}: shapes {:?} and {:?}",
                self.name(),
                al.dims(),
                bl.dims()
            );
        }
        let floor = self.floor;
        let partial: Vec<f64> = a
            .par_chunks(MSE_CHUNK)
            .zip(b.par_chunks(MSE_CHUNK))
            .map(|(a, b)| {
                let square = |a, b| {
                    let d = above(a, floor) - above(b, floor);
                    d * d
                };
                sum8_zip(a, b, square) as f64
            })
            .collect();
        let mean = partial.iter().sum::<f64>() / a.len() as f64;
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = 2.0 * grad.to_scalar::<f32>()? / a.elem_count() as f32;
        let grad_a = a.apply_op2_no_bwd(
            b,
            &MaskedMseGrad {
                floor: self.floor,
                scale,
            },
        )?;
        Ok((Some(grad_a), None))
    }
}

/// d/da of [`MaskedMse`] times the upstream gradient: scale * (a' - b') where a > floor.
struct MaskedMseGrad {
    floor: f32,
    scale: f32,
}

impl CustomOp2 for MaskedMseGrad {
    fn name(&self) -> &'static str {
        "fused-masked-mse-grad"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(a, al, self.name())?;
        let b = contiguous_f32(b, bl, self.name())?;
        let (floor, scale) = (self.floor, self.scale);
        let mut da = vec![0f32; a.len()];
        da.par_iter_mut()
            .zip(a.par_iter().zip(b.par_iter()))
            .with_min_len(MIN_ELEMS_PER_TASK)
            .for_each(|(d, (&a, &b))| {
                *d = if a > floor {
                    scale * (a - above(b, floor))
                } else {
                    0.0
                }
            });
        Ok((CpuStorage::F32(da), al.shape().clone()))
    }
}

/// mean((a' - b')^2) with entries at or below `floor` set to 0 on both sides, in one
/// pass (and one for the gradient, which flows to `a` only). Both must satisfy
/// [`applies`] and have the same shape.
pub fn masked_mse(a: &Tensor, b: &Tensor, floor: f32) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!(
            "masked_mse: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        );
    }
    a.contiguous()?
        .apply_op2(&b.contiguous()?.detach(), MaskedMse { floor })
}

// ---------------------------------------------------------------- token-pair MSE

/// Rows (one query of one head) per block of the token-pair MSE's sums.
const PAIR_ROWS: usize = 256;

/// The layout of a (batch, heads, seq, seq) score tensor and its (batch, seq) mask.
#[derive(Clone, Copy)]
struct PairLayout {
    heads: usize,
    seq: usize,
}

impl PairLayout {
    fn of(al: &Layout, ml: &Layout) -> Result<Self> {
        match (al.dims(), ml.dims()) {
            (&[b, h, q, k], &[mb, ms]) if q == k && mb == b && ms == q => {
                Ok(PairLayout { heads: h, seq: q })
            }
            (a, m) => bail!("token-pair MSE: scores {a:?} and mask {m:?} do not match"),
        }
    }

    /// The mask row of score row `r` and that row's query position.
    fn row(&self, r: usize) -> (usize, usize) {
        (r / (self.heads * self.seq), r % self.seq)
    }

    /// Real (query, key) pairs over all heads: heads * sum over rows of len^2.
    fn count(&self, mask: &[f32]) -> f64 {
        let per_row: f64 = mask
            .chunks(self.seq)
            .map(|m| {
                let n: f64 = m.iter().map(|&v| v as f64).sum();
                n * n
            })
            .sum();
        (per_row * self.heads as f64).max(1.0)
    }
}

/// The scores `a` and `b`, the mask and their layout, checked, for the token-pair ops.
struct PairInputs<'a> {
    a: &'a [f32],
    b: &'a [f32],
    mask: &'a [f32],
    layout: PairLayout,
}

impl<'a> PairInputs<'a> {
    fn of(
        op: &str,
        (a, al): (&'a CpuStorage, &Layout),
        (b, bl): (&'a CpuStorage, &Layout),
        (m, ml): (&'a CpuStorage, &Layout),
    ) -> Result<Self> {
        let (a, b) = (contiguous_f32(a, al, op)?, contiguous_f32(b, bl, op)?);
        if a.len() != b.len() {
            bail!("{op}: shapes {:?} and {:?}", al.dims(), bl.dims());
        }
        Ok(PairInputs {
            a,
            b,
            mask: contiguous_f32(m, ml, op)?,
            layout: PairLayout::of(al, ml)?,
        })
    }
}

/// mean over real (query, key) pairs of (a - b)^2: `mask` (batch, seq) is 1 for real
/// tokens. One pass, summed in fixed blocks in order (deterministic).
struct TokenPairMse;

impl CustomOp3 for TokenPairMse {
    fn name(&self) -> &'static str {
        "fused-token-pair-mse"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let PairInputs {
            a,
            b,
            mask,
            layout: p,
        } = PairInputs::of(self.name(), (a, al), (b, bl), (m, ml))?;
        let block = PAIR_ROWS * p.seq;
        let partial: Vec<f64> = a
            .par_chunks(block)
            .zip(b.par_chunks(block))
            .enumerate()
            .map(|(i, (a, b))| {
                let mut sum = 0f64;
                for (j, (a, b)) in a.chunks(p.seq).zip(b.chunks(p.seq)).enumerate() {
                    let (row, q) = p.row(i * PAIR_ROWS + j);
                    let m = &mask[row * p.seq..(row + 1) * p.seq];
                    if m[q] == 0.0 {
                        continue;
                    }
                    sum += sum8_zip3(a, b, m, |a, b, m| m * (a - b) * (a - b)) as f64;
                }
                sum
            })
            .collect();
        let mean = partial.iter().sum::<f64>() / p.count(mask);
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        mask: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let count = with_f32(mask, |m| {
            PairLayout::of(a.layout(), mask.layout()).map(|p| p.count(m))
        })??;
        let scale = (2.0 * grad.to_scalar::<f32>()? as f64 / count) as f32;
        let grad_a = a.apply_op3_no_bwd(b, mask, &TokenPairMseGrad { scale })?;
        Ok((Some(grad_a), None, None))
    }
}

/// d/da of [`TokenPairMse`] times the upstream gradient: scale * m_q * m_k * (a - b).
struct TokenPairMseGrad {
    scale: f32,
}

impl CustomOp3 for TokenPairMseGrad {
    fn name(&self) -> &'static str {
        "fused-token-pair-mse-grad"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let PairInputs {
            a,
            b,
            mask,
            layout: p,
        } = PairInputs::of(self.name(), (a, al), (b, bl), (m, ml))?;
        let mut da = vec![0f32; a.len()];
        da.par_chunks_mut(p.seq)
            .zip(a.par_chunks(p.seq).zip(b.par_chunks(p.seq)))
            .enumerate()
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(r, (d, (a, b)))| {
                let (row, q) = p.row(r);
                let m = &mask[row * p.seq..(row + 1) * p.seq];
                let s = self.scale * m[q];
                for k in 0..p.seq {
                    d[k] = s * m[k] * (a[k] - b[k]);
                }
            });
        Ok((CpuStorage::F32(da), al.shape().clone()))
    }
}

/// The mean over real (query, key) pairs of `(a - b)^2`, for (batch, heads, seq, seq)
/// scores and a (batch, seq) mask of 0/1 (any dtype). The gradient flows to `a` only.
/// `a` must satisfy [`applies`].
pub fn token_pair_mse(a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op3(
        &b.contiguous()?.detach(),
        &mask.to_dtype(DType::F32)?.contiguous()?.detach(),
        TokenPairMse,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_abs_diff as max_diff;
    use candle_core::{Var, D};

    /// A loss with distinct weights per element, so every gradient entry matters.
    fn weighted_sum(y: &Tensor) -> Tensor {
        let w = Tensor::arange(0f32, y.elem_count() as f32, y.device())
            .unwrap()
            .reshape(y.shape())
            .unwrap()
            .sin()
            .unwrap();
        (y * w).unwrap().sum_all().unwrap()
    }

    /// Gradients of `fused` and `plain` w.r.t. each var agree to `tol`, as do outputs.
    fn check_against(
        vars: &[&Var],
        fused: impl Fn(&[&Tensor]) -> Tensor,
        plain: impl Fn(&[&Tensor]) -> Tensor,
        tol: f32,
    ) {
        let xs: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let yf = fused(&xs);
        let yp = plain(&xs);
        assert!(max_diff(&yf, &yp) < tol, "outputs differ");
        let gf = weighted_sum(&yf).backward().unwrap();
        let gp = weighted_sum(&yp).backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let a = gf.get(v.as_tensor()).expect("fused gradient");
            let b = gp.get(v.as_tensor()).expect("plain gradient");
            let d = max_diff(a, b);
            assert!(d < tol, "gradient {i} differs by {d}");
        }
    }

    /// Central finite differences of `f` at a few entries of `x` against autograd.
    fn finite_differences(x: &Var, f: impl Fn(&Tensor) -> Tensor, entries: &[usize]) {
        let loss = |t: &Tensor| weighted_sum(&f(t)).to_scalar::<f32>().unwrap() as f64;
        let grads = weighted_sum(&f(x.as_tensor())).backward().unwrap();
        let g: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f32> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-2f32;
        for &i in entries {
            let mut plus = base.clone();
            plus[i] += h;
            let mut minus = base.clone();
            minus[i] -= h;
            let tp = Tensor::from_vec(plus, x.shape(), x.device()).unwrap();
            let tm = Tensor::from_vec(minus, x.shape(), x.device()).unwrap();
            let numeric = (loss(&tp) - loss(&tm)) / (2.0 * h as f64);
            assert!(
                (numeric - g[i] as f64).abs() < 2e-2 * (1.0 + numeric.abs()),
                "entry {i}: finite difference {numeric}, autograd {}",
                g[i]
            );
        }
    }

    #[test]
    fn softmax_matches_plain_composition_and_finite_differences() {
        let x = Var::randn(0f32, 3.0, (3, 4, 37), &Device::Cpu).unwrap();
        check_against(
            &[&x],
            |t| softmax_last_dim(t[0]).unwrap(),
            |t| candle_nn::ops::softmax(t[0], D::Minus1).unwrap(),
            1e-5,
        );
        finite_differences(&x, |t| softmax_last_dim(t).unwrap(), &[0, 5, 100, 400]);
        // Non-contiguous input goes through a copy, not through wrong strides.
        let t = x.as_tensor().transpose(0, 1).unwrap();
        let a = softmax_last_dim(&t).unwrap();
        let b = candle_nn::ops::softmax(&t, D::Minus1).unwrap();
        assert!(max_diff(&a, &b) < 1e-6);
    }

    #[test]
    fn layer_norm_matches_plain_composition_and_finite_differences() {
        let dev = Device::Cpu;
        // 27 wide: the eight-lane sums' remainder is taken too.
        let x = Var::randn(0.5f32, 2.0, (5, 7, 27), &dev).unwrap();
        let w = Var::randn(1f32, 0.3, 27, &dev).unwrap();
        let b = Var::randn(0f32, 0.3, 27, &dev).unwrap();
        check_against(
            &[&x, &w, &b],
            |t| layer_norm(t[0], t[1], t[2], 1e-12).unwrap(),
            |t| candle_nn::ops::layer_norm_slow(t[0], t[1], t[2], 1e-12).unwrap(),
            1e-4,
        );
        let (wt, bt) = (w.as_tensor().clone(), b.as_tensor().clone());
        finite_differences(
            &x,
            |t| layer_norm(t, &wt, &bt, 1e-12).unwrap(),
            &[0, 30, 500],
        );
        let xt = x.as_tensor().clone();
        finite_differences(&w, |t| layer_norm(&xt, t, &bt, 1e-12).unwrap(), &[0, 26]);
    }

    #[test]
    fn gelu_matches_plain_composition_and_finite_differences() {
        let x = Var::randn(0f32, 2.0, (4, 300), &Device::Cpu).unwrap();
        check_against(
            &[&x],
            |t| gelu_erf(t[0]).unwrap(),
            |t| t[0].gelu_erf().unwrap(),
            1e-5,
        );
        finite_differences(&x, |t| gelu_erf(t).unwrap(), &[0, 17, 999]);
    }

    #[test]
    fn lane_reductions_match_their_iterator_forms_at_every_length() {
        // Element i into lane i % 8, the lanes summed in order.
        let lanes = |x: &mut dyn Iterator<Item = f32>| {
            let mut acc = [0f32; 8];
            for (i, v) in x.enumerate() {
                acc[i % 8] += v;
            }
            acc.iter().sum::<f32>()
        };
        for n in 0..=27 {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.3) * 0.7).collect();
            let y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.9).sin()).collect();
            let dot = sum8_zip(&x, &y, |a, b| a * b);
            let mut products = x.iter().zip(&y).map(|(a, b)| a * b);
            assert_eq!(dot.to_bits(), lanes(&mut products).to_bits());
            let triple = sum8_zip3(&x, &y, &x, |a, b, c| a * b - c);
            let mut triples = x.iter().zip(&y).map(|(a, b)| a * b - a);
            assert_eq!(triple.to_bits(), lanes(&mut triples).to_bits(), "n = {n}");
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max8(&x), max, "n = {n}");
        }
    }

    #[test]
    fn exp_and_erf_match_libm() {
        for i in -100_000..=100_000 {
            let x = i as f32 * 8.7e-4;
            let (ours, libm) = (exp(x), x.exp());
            assert!(
                (ours - libm).abs() <= 2e-7 * libm,
                "exp({x}) = {ours}, not {libm}"
            );
            let (ours, reference) = (erf(x / 20.0), candle_core::cpu::erf::erf_f32(x / 20.0));
            assert!(
                (ours - reference).abs() < 1e-6,
                "erf({x}): {ours}, not {reference}"
            );
        }
        // Masked scores give 0, not a number that turns subnormal when scaled.
        assert_eq!(exp(-10000.0), 0.0);
        assert_eq!(exp(-87.5), 0.0);
    }

    #[test]
    fn dropout_matches_the_seeds_mask_as_a_tensor() {
        // Long enough for several rayon chunks, so each chunk's first index is checked.
        let n = 5 * (MIN_ELEMS_PER_TASK / 2 + 3);
        let x = Var::randn(0f32, 1.0, (n / 5, 5), &Device::Cpu).unwrap();
        let (p, seed) = (0.25, 99);
        let mask: Vec<f32> = (0..n)
            .map(|i| {
                if ops::keeps(seed, i, p) {
                    1.0 / (1.0 - p)
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (n / 5, 5), &Device::Cpu).unwrap();
        check_against(
            &[&x],
            |t| dropout(t[0], p, seed).unwrap(),
            |t| (t[0] * &mask).unwrap(),
            1e-6,
        );
        finite_differences(&x, |t| dropout(t, p, seed).unwrap(), &[0, 17, n - 1]);
    }

    #[test]
    fn masked_mse_matches_plain_composition_and_finite_differences() {
        let dev = Device::Cpu;
        // Scores with masked keys (-10000) on both sides, in different places, and more
        // elements than one partial-sum chunk.
        let mask = |seed: f32| {
            Tensor::arange(0f32, 3.0 * 70_000.0, &dev)
                .unwrap()
                .affine(0.37, seed as f64)
                .unwrap()
                .sin()
                .unwrap()
                .gt(0.8)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .reshape((3, 70_000))
                .unwrap()
        };
        let masked = |x: Tensor, m: Tensor| {
            (x.broadcast_mul(&(1.0 - &m).unwrap()).unwrap() + (m * -10000.0).unwrap()).unwrap()
        };
        let a = Var::from_tensor(&masked(
            Tensor::randn(0f32, 2.0, (3, 70_000), &dev).unwrap(),
            mask(0.0),
        ))
        .unwrap();
        let b = masked(
            Tensor::randn(0f32, 2.0, (3, 70_000), &dev).unwrap(),
            mask(1.0),
        );
        let plain = |a: &Tensor| {
            let z = |x: &Tensor| x.mul(&x.gt(-100.0).unwrap().to_dtype(DType::F32).unwrap());
            (z(a).unwrap() - z(&b).unwrap())
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
        };
        let fused = masked_mse(a.as_tensor(), &b, -100.0).unwrap();
        let expected = plain(a.as_tensor());
        let (f, p) = (
            fused.to_scalar::<f32>().unwrap(),
            expected.to_scalar::<f32>().unwrap(),
        );
        assert!((f - p).abs() < 1e-5 * p, "{f} vs {p}");
        let gf = fused.backward().unwrap();
        let gp = expected.backward().unwrap();
        let d = max_diff(
            gf.get(a.as_tensor()).unwrap(),
            gp.get(a.as_tensor()).unwrap(),
        );
        assert!(d < 1e-9, "gradient differs by {d}");
        let small = Var::randn(0f32, 1.0, (4, 9), &dev).unwrap();
        let target = Tensor::randn(0f32, 1.0, (4, 9), &dev).unwrap();
        finite_differences(
            &small,
            |t| masked_mse(t, &target, -100.0).unwrap(),
            &[0, 13, 35],
        );
    }

    #[test]
    fn token_pair_mse_matches_plain_composition_and_finite_differences() {
        let dev = Device::Cpu;
        // Rows of 9, 5 and 2 real tokens out of 9; more rows than one block of sums.
        let (b, h, s) = (3, 40, 9);
        let lens = [9usize, 5, 2];
        let mask: Vec<f32> = lens
            .iter()
            .flat_map(|&n| (0..s).map(move |i| if i < n { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (b, s), &dev).unwrap();
        let a = Var::randn(0f32, 2.0, (b, h, s, s), &dev).unwrap();
        let target = Tensor::randn(0f32, 2.0, (b, h, s, s), &dev).unwrap();
        let plain = |a: &Tensor| {
            let pairs = mask
                .unsqueeze(2)
                .unwrap()
                .broadcast_mul(&mask.unsqueeze(1).unwrap())
                .unwrap()
                .unsqueeze(1)
                .unwrap();
            let count = (pairs.sum_all().unwrap() * h as f64).unwrap();
            (a - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .broadcast_mul(&pairs)
                .unwrap()
                .sum_all()
                .unwrap()
                .div(&count)
                .unwrap()
        };
        let fused = token_pair_mse(a.as_tensor(), &target, &mask).unwrap();
        let expected = plain(a.as_tensor());
        let (f, p) = (
            fused.to_scalar::<f32>().unwrap(),
            expected.to_scalar::<f32>().unwrap(),
        );
        assert!((f - p).abs() < 1e-5 * p, "{f} vs {p}");
        let gf = fused.backward().unwrap();
        let gp = expected.backward().unwrap();
        let d = max_diff(
            gf.get(a.as_tensor()).unwrap(),
            gp.get(a.as_tensor()).unwrap(),
        );
        assert!(d < 1e-9, "gradient differs by {d}");
        let small_mask = Tensor::new(&[[1f32, 1.0, 0.0], [1.0, 0.0, 0.0]], &dev).unwrap();
        let small = Var::randn(0f32, 1.0, (2, 2, 3, 3), &dev).unwrap();
        let small_target = Tensor::randn(0f32, 1.0, (2, 2, 3, 3), &dev).unwrap();
        finite_differences(
            &small,
            |t| token_pair_mse(t, &small_target, &small_mask).unwrap(),
            &[0, 1, 4, 10, 27],
        );
    }

    /// Reductions over rows split them the same way whatever the thread count or load,
    /// so the same inputs give the same bits (run to run, and in pools of any size).
    #[test]
    fn reductions_are_bit_identical_across_thread_pools() {
        let dev = Device::Cpu;
        let x = Var::randn(0.5f32, 2.0, (40, 33, 24), &dev).unwrap();
        let w = Var::randn(1f32, 0.3, 24, &dev).unwrap();
        let b = Var::randn(0f32, 0.3, 24, &dev).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (40, 33, 24), &dev).unwrap();
        let a = Var::randn(0f32, 2.0, (5, 70_000), &dev).unwrap();
        let target = Tensor::randn(0f32, 2.0, (5, 70_000), &dev).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        let run = || {
            let y = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12).unwrap();
            let loss = (y * &weights).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            let mse = masked_mse(a.as_tensor(), &target, -100.0).unwrap();
            let gm = mse.backward().unwrap();
            [
                bits(g.get(x.as_tensor()).unwrap()),
                bits(g.get(w.as_tensor()).unwrap()),
                bits(g.get(b.as_tensor()).unwrap()),
                bits(&mse),
                bits(gm.get(a.as_tensor()).unwrap()),
            ]
        };
        let in_pool = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(run)
        };
        let one = in_pool(1);
        for threads in [2, 3, 4] {
            assert!(in_pool(threads) == one, "{threads} threads differ from 1");
        }
    }
}
