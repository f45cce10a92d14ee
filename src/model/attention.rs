//! Multi-head self-attention as two fused CPU ops, for f32 tensors with a system BLAS.
//!
//! As a composition of candle ops, one attention block splits the heads (three copies),
//! adds the mask, takes the softmax, draws and multiplies a dropout mask, multiplies
//! by V and merges the heads (one more copy); candle's backward then spends a zeroed
//! buffer and a sum on every one of those nodes. At batch 16, sequence 128 and 12
//! heads each pass over the (batch, heads, seq, seq) scores is 12.6 MB. Here the
//! heads are read in place from the (batch, seq, heads * width) projections by
//! strided BLAS calls, one task per (batch entry, head).
//!
//! The attention loss needs the pre-softmax scores with their gradient, so the block
//! is cut there:
//! - [`scores`]: `Q K^T / sqrt(d) + mask`, (batch, heads, seq, seq);
//! - [`context`]: softmax, dropout, times V, written into (batch, seq, heads * width).
//!
//! [`context`]'s backward recomputes the probabilities and the dropout mask
//! (`ops::keeps`, a hash of a seed and the element's index) instead of keeping them.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::blas::{init_threads, output, repeat_row, sgemm, OutPtr as Out};
use super::kernels::{
    contiguous_f32, dropout_slice, softmax_grad_row_in_place, softmax_row, with_f32,
};

/// Whether the fused ops handle `x`: f32 on the CPU.
pub fn applies(x: &Tensor) -> bool {
    super::kernels::applies(x)
}

/// One attention call's sizes: batch, heads, sequence, head width.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    s: usize,
    d: usize,
}

impl Dims {
    /// From a (batch, seq, heads * width) projection.
    fn of_projection(shape: &Shape, heads: usize) -> Result<Dims> {
        let (b, s, width) = shape.dims3()?;
        if heads == 0 || width % heads != 0 {
            bail!("attention: width {width} does not split into {heads} heads");
        }
        Ok(Dims {
            b,
            h: heads,
            s,
            d: width / heads,
        })
    }

    fn width(&self) -> usize {
        self.h * self.d
    }

    fn heads(&self) -> usize {
        self.b * self.h
    }

    /// Where head `t` (= entry * heads + head) starts in a (batch, seq, width) tensor.
    fn head(&self, t: usize) -> usize {
        (t / self.h) * self.s * self.width() + (t % self.h) * self.d
    }

    /// Where head `t`'s (seq, seq) block starts in a (batch, heads, seq, seq) tensor.
    fn block(&self, t: usize) -> usize {
        t * self.s * self.s
    }

    fn scores_shape(&self) -> Shape {
        Shape::from((self.b, self.h, self.s, self.s))
    }

    fn projection_shape(&self) -> Shape {
        Shape::from((self.b, self.s, self.width()))
    }
}

/// Runs `task(t)` for every (batch entry, head) pair on rayon's pool.
fn each_head(dims: Dims, task: impl Fn(usize) + Send + Sync) {
    init_threads();
    (0..dims.heads()).into_par_iter().for_each(task);
}

/// Attention dropout: probability and the seed its mask is drawn from.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
}

impl Dropout {
    /// Applies the mask to row `row` (of all heads' rows) of probabilities, in place.
    fn apply(&self, probs: &mut [f32], row: usize) {
        dropout_slice(probs, self.seed, row * probs.len(), self.p);
    }
}

// ---------------------------------------------------------------- scores

struct Scores {
    heads: usize,
    scale: f32,
}

impl CustomOp3 for Scores {
    fn name(&self) -> &'static str {
        "fused-attention-scores"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sm: &CpuStorage,
        lm: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Dims::of_projection(lq.shape(), self.heads)?;
        let (q, k) = (
            contiguous_f32(sq, lq, "attention scores")?,
            contiguous_f32(sk, lk, "attention scores")?,
        );
        let mask = contiguous_f32(sm, lm, "attention mask")?;
        if lk.dims() != lq.dims() || lm.dims() != [dims.b, dims.s] {
            bail!(
                "attention scores: queries {:?}, keys {:?} and mask {:?} do not fit",
                lq.dims(),
                lk.dims(),
                lm.dims()
            );
        }
        let Dims { s, d, .. } = dims;
        let scores = output(dims.heads() * s * s, |c| {
            let c = Out(c);
            each_head(dims, |t| {
                let entry_mask = &mask[(t / dims.h) * s..][..s];
                // SAFETY: head t's (s, s) block lies within the output, which no other
                // task writes; its rows are set to the mask before BLAS adds to them;
                // q and k hold (b, s, h * d) floats, so each head's s rows of d floats
                // at a stride of h * d lie within them.
                unsafe {
                    let block = c.at(dims.block(t));
                    repeat_row(block, entry_mask, s);
                    let (qh, kh) = (q.as_ptr().add(dims.head(t)), k.as_ptr().add(dims.head(t)));
                    sgemm(
                        (false, true),
                        (s, s, d),
                        self.scale,
                        (qh, dims.width()),
                        (kh, dims.width()),
                        1.0,
                        (block, s),
                    );
                }
            });
        });
        Ok((CpuStorage::F32(scores), dims.scores_shape()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        _mask: &Tensor,
        _scores: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = Dims::of_projection(q.shape(), self.heads)?;
        let (dq, dk) = with_f32(grad, |g| {
            with_f32(q, |q| {
                with_f32(k, |k| {
                    // dQ = scale dS K and dK = scale dS^T Q, head by head.
                    let of = |x: &[f32], trans: bool| {
                        output(x.len(), |c| {
                            let c = Out(c);
                            each_head(dims, |t| self.grad_head(dims, g, x, trans, c, t));
                        })
                    };
                    (of(k, false), of(q, true))
                })
            })
        })???;
        let shape = dims.projection_shape();
        Ok((
            Some(Tensor::from_vec(dq, shape.clone(), &Device::Cpu)?),
            Some(Tensor::from_vec(dk, shape, &Device::Cpu)?),
            None,
        ))
    }
}

impl Scores {
    /// Head t of `scale op(dS) x` into `out`, op a transpose when `trans`.
    fn grad_head(&self, dims: Dims, g: &[f32], x: &[f32], trans: bool, out: Out, t: usize) {
        let Dims { s, d, .. } = dims;
        // SAFETY: g holds (b, h, s, s) floats and x and out (b, s, h * d), so head t's
        // block of g and its strided columns of x and out lie within them; no other
        // task writes head t's columns of out, and beta 0 writes every one of them.
        unsafe {
            sgemm(
                (trans, false),
                (s, d, s),
                self.scale,
                (g.as_ptr().add(dims.block(t)), s),
                (x.as_ptr().add(dims.head(t)), dims.width()),
                0.0,
                (out.at(dims.head(t)), dims.width()),
            )
        }
    }
}

/// `Q K^T / sqrt(d) + mask` per head, (batch, heads, seq, seq), for queries and keys
/// of shape (batch, seq, heads * d) and an additive mask of shape (batch, seq).
pub fn scores(q: &Tensor, k: &Tensor, mask: &Tensor, heads: usize) -> Result<Tensor> {
    let d = q.dim(2)? / heads.max(1);
    let scale = 1.0 / (d as f32).sqrt();
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &mask.contiguous()?,
        Scores { heads, scale },
    )
}

// ---------------------------------------------------------------- context

struct Context {
    heads: usize,
    dropout: Option<Dropout>,
}

impl Context {
    /// Head t's probabilities, (s, s): the softmax of its scores' rows.
    fn probs(&self, dims: Dims, scores: &[f32], t: usize) -> Vec<f32> {
        let s = dims.s;
        let block = &scores[dims.block(t)..][..s * s];
        let mut probs = vec![0f32; s * s];
        for (x, y) in block.chunks_exact(s).zip(probs.chunks_exact_mut(s)) {
            softmax_row(x, y);
        }
        probs
    }

    /// Head t's dropout applied to its (s, s) probabilities (or their gradient), in
    /// place; nothing without dropout.
    fn drop(&self, dims: Dims, probs: &mut [f32], t: usize) {
        if let Some(dropout) = self.dropout {
            for (i, row) in probs.chunks_exact_mut(dims.s).enumerate() {
                dropout.apply(row, t * dims.s + i);
            }
        }
    }

    /// Head t of the backward pass: dV into `dv`, dScores into `ds`.
    fn grad_head(
        &self,
        dims: Dims,
        (sc, v, g): (&[f32], &[f32], &[f32]),
        (dv, ds): (Out, Out),
        t: usize,
    ) {
        let (s, d, width) = (dims.s, dims.d, dims.width());
        let probs = self.probs(dims, sc, t);
        // The probabilities after dropout, a second buffer only when there is dropout.
        let mut kept = Vec::new();
        let dropped = if self.dropout.is_some() {
            kept.extend_from_slice(&probs);
            self.drop(dims, &mut kept, t);
            &kept
        } else {
            &probs
        };
        // SAFETY: v, g and dv hold (b, s, h * d) floats and ds (b, h, s, s), so head
        // t's strided columns and (s, s) block lie within them; only this task writes
        // head t's part of dv and ds, and beta 0 writes every float of it.
        let block = unsafe {
            // dV = P'^T dC
            sgemm(
                (true, false),
                (s, d, s),
                1.0,
                (dropped.as_ptr(), s),
                (g.as_ptr().add(dims.head(t)), width),
                0.0,
                (dv.at(dims.head(t)), width),
            );
            // dP' = dC V^T, into dScores' block
            let block = ds.at(dims.block(t));
            sgemm(
                (false, true),
                (s, s, d),
                1.0,
                (g.as_ptr().add(dims.head(t)), width),
                (v.as_ptr().add(dims.head(t)), width),
                0.0,
                (block, s),
            );
            std::slice::from_raw_parts_mut(block, s * s)
        };
        // Through dropout (dP = dP' * kept / (1 - p)), then softmax
        // (dS = P (dP - sum(dP P))) row by row, in place.
        self.drop(dims, block, t);
        for (row, p) in block.chunks_exact_mut(s).zip(probs.chunks_exact(s)) {
            softmax_grad_row_in_place(row, p);
        }
    }
}

impl CustomOp2 for Context {
    fn name(&self) -> &'static str {
        "fused-attention-context"
    }

    fn cpu_fwd(
        &self,
        ss: &CpuStorage,
        ls: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Dims::of_projection(lv.shape(), self.heads)?;
        let (scores, v) = (
            contiguous_f32(ss, ls, "attention context")?,
            contiguous_f32(sv, lv, "attention context")?,
        );
        if ls.shape() != &dims.scores_shape() {
            bail!(
                "attention context: scores {:?} do not fit values {:?}",
                ls.dims(),
                lv.dims()
            );
        }
        let Dims { s, d, .. } = dims;
        let context = output(v.len(), |c| {
            let c = Out(c);
            each_head(dims, |t| {
                let mut dropped = self.probs(dims, scores, t);
                self.drop(dims, &mut dropped, t);
                // SAFETY: v and the output hold (b, s, h * d) floats, so head t's
                // strided columns lie within them; only this task writes head t's
                // columns of the output, and beta 0 writes every one of them.
                unsafe {
                    sgemm(
                        (false, false),
                        (s, d, s),
                        1.0,
                        (dropped.as_ptr(), s),
                        (v.as_ptr().add(dims.head(t)), dims.width()),
                        0.0,
                        (c.at(dims.head(t)), dims.width()),
                    )
                }
            });
        });
        Ok((CpuStorage::F32(context), dims.projection_shape()))
    }

    fn bwd(
        &self,
        scores: &Tensor,
        v: &Tensor,
        _context: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = Dims::of_projection(v.shape(), self.heads)?;
        let (ds, dv) = with_f32(grad, |g| {
            with_f32(scores, |sc| {
                with_f32(v, |v| {
                    let mut dv = Vec::with_capacity(v.len());
                    let ds = output(sc.len(), |ds| {
                        let outs = (Out(dv.as_mut_ptr()), Out(ds));
                        each_head(dims, |t| self.grad_head(dims, (sc, v, g), outs, t));
                    });
                    // SAFETY: every head wrote its columns of dv with beta 0 above.
                    unsafe { dv.set_len(v.len()) };
                    (ds, dv)
                })
            })
        })???;
        Ok((
            Some(Tensor::from_vec(ds, dims.scores_shape(), &Device::Cpu)?),
            Some(Tensor::from_vec(dv, dims.projection_shape(), &Device::Cpu)?),
        ))
    }
}

/// `dropout(softmax(scores)) V` with the heads merged: (batch, seq, heads * d), for
/// scores (batch, heads, seq, seq) and values (batch, seq, heads * d).
pub fn context(
    scores: &Tensor,
    v: &Tensor,
    heads: usize,
    dropout: Option<Dropout>,
) -> Result<Tensor> {
    let dropout = dropout.filter(|d| d.p > 0.0);
    scores
        .contiguous()?
        .apply_op2(&v.contiguous()?, Context { heads, dropout })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::keeps;
    use crate::testing::{max_abs_diff as max_diff, max_rel_diff};
    use candle_core::{Var, D};

    fn split(x: &Tensor, heads: usize) -> Tensor {
        let (b, s, w) = x.dims3().unwrap();
        x.reshape((b, s, heads, w / heads))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    }

    /// The block as candle ops: split heads, scores, mask, softmax, the same dropout
    /// mask as a tensor, times V, merged heads.
    fn composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        heads: usize,
        dropout: Option<Dropout>,
    ) -> (Tensor, Tensor) {
        let (b, s, w) = q.dims3().unwrap();
        let scale = 1.0 / ((w / heads) as f64).sqrt();
        let scores = (split(q, heads)
            .matmul(&split(k, heads).t().unwrap())
            .unwrap()
            * scale)
            .unwrap()
            .broadcast_add(&mask.reshape((b, 1, 1, s)).unwrap())
            .unwrap();
        let mut probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        if let Some(dropout) = dropout {
            probs = super::super::ops::seeded_dropout(&probs, dropout.p, dropout.seed).unwrap();
        }
        let context = probs
            .matmul(&split(v, heads))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, s, w))
            .unwrap();
        (scores, context)
    }

    #[test]
    fn fused_attention_matches_the_composition_with_gradients() {
        let dev = Device::Cpu;
        let (b, s, heads, d) = (3, 7, 4, 5);
        let var = || Var::randn(0f32, 1.0, (b, s, heads * d), &dev).unwrap();
        let (q, k, v) = (var(), var(), var());
        // The last two keys of the first entry are padding.
        let mut mask = vec![0f32; b * s];
        mask[s - 2] = -10000.0;
        mask[s - 1] = -10000.0;
        let mask = Tensor::from_vec(mask, (b, s), &dev).unwrap();
        let score_weights = Tensor::randn(0f32, 1.0, (b, heads, s, s), &dev).unwrap();
        let context_weights = Tensor::randn(0f32, 1.0, (b, s, heads * d), &dev).unwrap();
        for dropout in [None, Some(Dropout { p: 0.3, seed: 17 })] {
            let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            let fused_scores = scores(qt, kt, &mask, heads).unwrap();
            let fused = context(&fused_scores, vt, heads, dropout).unwrap();
            let (plain_scores, plain) = composed(qt, kt, vt, &mask, heads, dropout);
            // The fused op adds the mask inside the product (one rounding): masked
            // scores near -10000 may differ by one f32 step there (0.001).
            let d = max_rel_diff(&fused_scores, &plain_scores);
            assert!(d < 1e-5, "scores differ by {d} relative to 1 + |score|");
            assert!(max_diff(&fused, &plain) < 1e-5, "{dropout:?}");
            // A loss on both outputs, as distillation takes one on the scores and
            // the layer's output depends on the context.
            let loss = |sc: &Tensor, c: &Tensor| {
                ((sc * &score_weights).unwrap().sum_all().unwrap()
                    + (c * &context_weights).unwrap().sum_all().unwrap())
                .unwrap()
            };
            let gf = loss(&fused_scores, &fused).backward().unwrap();
            let gp = loss(&plain_scores, &plain).backward().unwrap();
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let d = max_diff(
                    gf.get(x.as_tensor()).unwrap(),
                    gp.get(x.as_tensor()).unwrap(),
                );
                assert!(d < 1e-4, "d{name} differs by {d} ({dropout:?})");
            }
        }
    }

    #[test]
    fn dropout_masks_keep_the_expected_share_and_follow_the_seed() {
        let kept = |seed| (0..100_000).filter(|&i| keeps(seed, i, 0.1)).count();
        let share = kept(3) as f64 / 100_000.0;
        assert!((share - 0.9).abs() < 0.005, "kept {share}");
        let differ = (0..1000)
            .filter(|&i| keeps(3, i, 0.5) != keeps(4, i, 0.5))
            .count();
        assert!(differ > 400, "seeds 3 and 4 drew nearly the same mask");
    }
}
