//! Tensor ops used by the model, each picking a fused kernel when no gradient is needed
//! and a differentiable composition when one is.
//!
//! candle's fused `layer_norm` and `softmax_last_dim` silently drop gradients
//! (../shared/notes/candle.md): using them on a trainable path trains nothing.

use candle_core::{DType, Result, Tensor, D};

use super::kernels;
use crate::rng::{mix64, unit_f32, Rng, GOLDEN_GAMMA};

fn needs_grad(tensors: &[&Tensor]) -> bool {
    tensors.iter().any(|t| t.track_op())
}

/// LayerNorm over the last dimension.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if needs_grad(&[x, weight, bias]) {
        if kernels::applies(x) {
            return kernels::layer_norm(x, weight, bias, eps);
        }
        candle_nn::ops::layer_norm_slow(x, weight, bias, eps as f32)
    } else {
        candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps as f32)
    }
}

/// Softmax over the last dimension, computed in f32 for half-precision inputs.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = if dtype == DType::F32 {
        x.clone()
    } else {
        x.to_dtype(DType::F32)?
    };
    let y = if needs_grad(&[x]) {
        if kernels::applies(&x32) {
            kernels::softmax_last_dim(&x32)?
        } else {
            candle_nn::ops::softmax(&x32, D::Minus1)?
        }
    } else {
        candle_nn::ops::softmax_last_dim(&x32.contiguous()?)?
    };
    y.to_dtype(dtype)
}

/// `a @ b`: through the system BLAS for f32 CPU tensors when build.rs found one,
/// candle's matmul otherwise.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    #[cfg(system_blas)]
    if kernels::applies(a) && kernels::applies(b) {
        return super::blas::matmul(a, b);
    }
    // candle's CUDA and Metal matmuls take an operand only with dense rows or as a plain
    // transpose; a strided view such as the pooler's first-token slice, (batch, hidden)
    // with a row stride of seq * hidden, is refused there, so it is copied first.
    if a.device().is_cpu() {
        a.matmul(b)
    } else {
        a.contiguous()?.matmul(b)
    }
}

/// A dense layer, `x W^T + b` for x (..., in) and W (out, in): one fused op through
/// the system BLAS for f32 CPU tensors when build.rs found one, a matmul (leading dims
/// folded into rows) and a broadcast add otherwise.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    #[cfg(system_blas)]
    if let Some(b) = bias {
        if kernels::applies(x) && kernels::applies(weight) && kernels::applies(b) {
            return super::blas::linear(x, weight, b);
        }
    }
    let y = match x.rank() {
        2 => matmul(x, &weight.t()?)?,
        _ => {
            // One product over all rows: faster than a broadcast batch matmul.
            let mut out_dims = x.dims().to_vec();
            *out_dims.last_mut().expect("rank >= 1") = weight.dim(0)?;
            let rows = x.flatten_to(x.rank() - 2)?;
            matmul(&rows, &weight.t()?)?.reshape(out_dims)?
        }
    };
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// GELU, erf form (BERT's "gelu"), with a fused backward on the CPU.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if kernels::applies(x) {
        kernels::gelu_erf(x)
    } else {
        x.gelu_erf()
    }
}

/// Inverted dropout. On the CPU its mask is [`keeps`]'s for a seed drawn from the
/// caller's generator, so a resumed run draws the same masks as an uninterrupted one
/// and an f32 run (one fused op) the same as a half-precision one. On a GPU it comes
/// from the device's generator, which `BertModel::forward` seeds from the run's.
pub fn dropout(x: &Tensor, p: f32, rng: &mut Rng) -> Result<Tensor> {
    // A seed only where it is used, so a GPU run's stream is as it was.
    let seed = if p > 0.0 && x.device().is_cpu() {
        rng.next_u64()
    } else {
        0
    };
    seeded_dropout(x, p, seed)
}

/// Dropout with the mask [`keeps`] draws from `seed` on the CPU (one fused op for
/// f32, the same mask as a tensor otherwise); on a GPU, the device's generator. The
/// fused attention (`attention::context`) draws the same masks.
pub fn seeded_dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if !x.device().is_cpu() {
        return device_dropout(x, p);
    }
    if kernels::applies(x) {
        return kernels::dropout(x, p, seed);
    }
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|i| if keeps(seed, i, p) { scale } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

/// Whether dropout keeps element `index` of a mask drawn from `seed` with drop
/// probability `p`. A hash (the SplitMix64 finaliser) rather than a stream, so the
/// fused attention's backward pass finds any element's draw again without the draws
/// before it.
#[inline]
pub fn keeps(seed: u64, index: usize, p: f32) -> bool {
    let z = mix64(seed ^ (index as u64).wrapping_mul(GOLDEN_GAMMA));
    unit_f32(z) >= p
}

/// Dropout drawn on the device: masks drawn element by element on the CPU and copied
/// over took three quarters of a TinyBERT-4 training step on an H200 (285 ms against
/// 70 ms). `BertModel::forward` seeds the device generator from the run's generator
/// once a pass (seeding creates a cuRAND generator), so masks still follow the run's
/// seed and its resume state.
fn device_dropout(x: &Tensor, p: f32) -> Result<Tensor> {
    let draws = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
    let mask = (draws.ge(p as f64)?.to_dtype(x.dtype())? * (1.0 / (1.0 - p as f64)))?;
    x.mul(&mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn layer_norm_paths_agree_and_grad_path_has_gradients() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 8, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 8, &dev).unwrap();
        let fused = layer_norm(&x, &w, &b, 1e-12).unwrap();
        let wv = Var::from_tensor(&w).unwrap();
        let slow = layer_norm(&x, wv.as_tensor(), &b, 1e-12).unwrap();
        let diff = (fused - &slow).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        let grads = slow.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(wv.as_tensor())
            .expect("gradient for LayerNorm weight");
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }

    #[test]
    fn softmax_paths_agree_and_grad_path_has_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 2.0, (2, 4, 5), &dev).unwrap();
        let a = softmax_last_dim(&x.as_tensor().detach()).unwrap();
        let b = softmax_last_dim(x.as_tensor()).unwrap();
        let diff = (a - &b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        let weights = Tensor::arange(0f32, 5.0, &dev).unwrap();
        let loss = b.broadcast_mul(&weights).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads
            .get(x.as_tensor())
            .expect("gradient for softmax input");
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }

    #[test]
    fn dropout_keeps_expected_fraction_and_scales() {
        let x = Tensor::ones((100, 100), DType::F32, &Device::Cpu).unwrap();
        let y = dropout(&x, 0.25, &mut Rng::new(3)).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let kept = v.iter().filter(|&&e| e > 0.0).count() as f32 / v.len() as f32;
        assert!((kept - 0.75).abs() < 0.02, "{kept}");
        assert!(v.iter().all(|&e| e == 0.0 || (e - 1.0 / 0.75).abs() < 1e-6));
        let again = dropout(&x, 0.25, &mut Rng::new(3)).unwrap();
        assert_eq!(v, again.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}
