//! AdamW with decoupled weight decay, no decay on biases and LayerNorm parameters
//! (the BERT / TinyBERT convention), global-norm gradient clipping, and a state that
//! can be saved and restored exactly (candle's own AdamW keeps its moments private).
//!
//! On the CPU (f32) the update is one fused in-place pass over parameter, gradient and
//! moments; elsewhere it is a composition of tensor ops that runs on any device.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::model::kernels;
use crate::model::kernels::vectorised;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// AdamW at a learning rate and weight decay (a stage's: `TrainSettings::adamw`),
    /// with BERT's betas (0.9, 0.999) and epsilon 1e-6.
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        AdamWConfig {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay,
        }
    }
}

/// Whether weight decay applies to a parameter, by its name: not to biases (MPNet's
/// `relative_attention_bias` included, as transformers' Trainer leaves out any name
/// holding "bias") nor LayerNorm parameters.
pub fn decays(name: &str) -> bool {
    !(name.contains("bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

/// First and second moments: plain buffers for the fused CPU kernel, tensors elsewhere.
enum Moments {
    Cpu { m: Vec<f32>, v: Vec<f32> },
    Tensors { m: Tensor, v: Tensor },
}

struct Param {
    name: String,
    var: Var,
    moments: Moments,
    decay: bool,
}

impl Param {
    /// Copies of the moments as tensors shaped like the parameter.
    fn moments(&self) -> (Tensor, Tensor) {
        match &self.moments {
            Moments::Cpu { m, v } => {
                let dev = self.var.device();
                // The buffers were sized from this parameter, so the shapes always match.
                let as_tensor = |data: &[f32]| {
                    Tensor::from_slice(data, self.var.shape(), dev)
                        .expect("moment buffer has the parameter's element count")
                };
                (as_tensor(m), as_tensor(v))
            }
            Moments::Tensors { m, v } => (m.clone(), v.clone()),
        }
    }

    fn set_moments(&mut self, m: &Tensor, v: &Tensor) -> Result<()> {
        self.moments = match &self.moments {
            Moments::Cpu { .. } => Moments::Cpu {
                m: m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                v: v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            },
            Moments::Tensors { .. } => Moments::Tensors {
                m: m.to_device(self.var.device())?.to_dtype(DType::F32)?,
                v: v.to_device(self.var.device())?.to_dtype(DType::F32)?,
            },
        };
        Ok(())
    }
}

/// Constants of one AdamW update, in the form the fused kernel uses them.
#[derive(Clone, Copy)]
struct Update {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias1: f32,
    bias2: f32,
    /// Multiplies the parameter before the step (1 - lr * wd, or 1 without decay).
    keep: f32,
    /// Gradient scale: clipping, divided by the loss scale.
    scale: f32,
}

/// The fused CPU update: theta, m and v in one pass, in place.
struct FusedAdamW<'a> {
    u: Update,
    m: RefCell<&'a mut [f32]>,
    v: RefCell<&'a mut [f32]>,
}

impl InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        ps: &mut CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            candle_core::bail!("fused AdamW needs contiguous parameter and gradient");
        };
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (ps, gs) else {
            candle_core::bail!("fused AdamW needs f32 parameter and gradient");
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if p.len() != g.len() || p.len() != m.len() || p.len() != v.len() {
            candle_core::bail!("fused AdamW: parameter, gradient and moments differ in size");
        }
        let u = self.u;
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| adamw_slice(p, g, m, v, &u));
        Ok(())
    }
}

vectorised! {
    /// One AdamW update of a slice of parameters. Zipped, not indexed: without bounds
    /// checks the loop vectorises (same results in every `vectorised!` version).
    fn adamw_slice(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], u: &Update) {
        let moments = m.iter_mut().zip(v.iter_mut());
        for ((p, &g), (m, v)) in p.iter_mut().zip(g).zip(moments) {
            let g = g * u.scale;
            *m = u.beta1 * *m + (1.0 - u.beta1) * g;
            *v = u.beta2 * *v + (1.0 - u.beta2) * g * g;
            let update = (*m / u.bias1) / ((*v / u.bias2).sqrt() + u.eps);
            *p = *p * u.keep - u.lr * update;
        }
    }
}

vectorised! {
    /// The sum of squares of `values` in f64, over eight lanes the compiler vectorises
    /// (one running sum would be a chain of dependent additions); the same values always
    /// give the same sum.
    fn sum_of_squares(values: &[f32]) -> f64 {
        const LANES: usize = 8;
        let square = |x: f32| (x as f64) * (x as f64);
        let mut lanes = [0f64; LANES];
        let chunks = values.chunks_exact(LANES);
        let rest: f64 = chunks.remainder().iter().map(|&x| square(x)).sum();
        for chunk in chunks {
            for (lane, &x) in lanes.iter_mut().zip(chunk) {
                *lane += square(x);
            }
        }
        lanes.iter().sum::<f64>() + rest
    }
}

pub struct AdamW {
    params: Vec<Param>,
    config: AdamWConfig,
    step: usize,
}

impl AdamW {
    /// Parameters are kept in name order so that saved states line up.
    pub fn new(mut vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let moments = if kernels::applies(var.as_tensor()) {
                    let n = var.elem_count();
                    Moments::Cpu {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    let zeros = var.as_tensor().zeros_like()?.to_dtype(DType::F32)?;
                    Moments::Tensors {
                        m: zeros.clone(),
                        v: zeros,
                    }
                };
                Ok(Param {
                    decay: decays(&name),
                    name,
                    moments,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            config,
            step: 0,
        })
    }

    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    pub fn step_count(&self) -> usize {
        self.step
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.params.iter().map(|p| &p.var)
    }

    /// L2 norm of all gradients together.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        // Other gradients (on a GPU) are squared and summed where they are, and read
        // back once, not once per tensor.
        let mut elsewhere: Option<Tensor> = None;
        for p in &self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            if !kernels::applies(g) {
                let sq = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
                elsewhere = Some(match elsewhere {
                    Some(t) => (t + sq)?,
                    None => sq,
                });
                continue;
            }
            total += kernels::with_f32(g, |s| {
                // Chunk sums collected in order, then added in order: rayon's own
                // `sum` adds in an order that depends on scheduling.
                let chunks: Vec<f64> = s.par_chunks(1 << 14).map(sum_of_squares).collect();
                chunks.iter().sum::<f64>()
            })?;
        }
        if let Some(t) = elsewhere {
            total += t.to_scalar::<f32>()? as f64;
        }
        Ok(total.sqrt())
    }

    /// One update. `max_grad_norm` clips the global gradient norm first (as
    /// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
    pub fn step(&mut self, grads: &GradStore, max_grad_norm: Option<f64>) -> Result<f64> {
        match self.step_scaled(grads, max_grad_norm, 1.0)? {
            Some(norm) => Ok(norm),
            None => Err(Error::msg(format!(
                "gradient norm is not finite at step {}: the loss diverged (lower the learning rate)",
                self.step + 1
            ))),
        }
    }

    /// As [`AdamW::step`], for the gradients of a loss multiplied by `loss_scale` (mixed
    /// precision): they are divided by it first. When they are not finite (an f16
    /// overflow) nothing is updated, the step is not counted, and `None` is returned.
    pub fn step_scaled(
        &mut self,
        grads: &GradStore,
        max_grad_norm: Option<f64>,
        loss_scale: f64,
    ) -> Result<Option<f64>> {
        let norm = self.grad_norm(grads)? / loss_scale;
        if !norm.is_finite() {
            return Ok(None);
        }
        let clip = match max_grad_norm {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        let scale = clip / loss_scale;
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let keep = if p.decay && c.weight_decay > 0.0 {
                1.0 - c.lr * c.weight_decay
            } else {
                1.0
            };
            match &mut p.moments {
                Moments::Cpu { m, v } => {
                    let op = FusedAdamW {
                        u: Update {
                            lr: c.lr as f32,
                            beta1: c.beta1 as f32,
                            beta2: c.beta2 as f32,
                            eps: c.eps as f32,
                            bias1: bias1 as f32,
                            bias2: bias2 as f32,
                            keep: keep as f32,
                            scale: scale as f32,
                        },
                        m: RefCell::new(m.as_mut_slice()),
                        v: RefCell::new(v.as_mut_slice()),
                    };
                    p.var.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
                }
                Moments::Tensors { m, v } => {
                    let g = (g.to_dtype(DType::F32)? * scale)?;
                    *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let update = ((&*m / bias1)? / ((&*v / bias2)?.sqrt()? + c.eps)?)?;
                    let theta = (p.var.as_tensor().to_dtype(DType::F32)? * keep)?;
                    let theta = (theta - (update * c.lr)?)?;
                    p.var.set(&theta.to_dtype(p.var.dtype())?)?;
                }
            }
        }
        Ok(Some(norm))
    }

    /// Moments by parameter name, for checkpoints.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            let (m, v) = p.moments();
            out.insert(format!("exp_avg.{}", p.name), m);
            out.insert(format!("exp_avg_sq.{}", p.name), v);
        }
        out
    }

    /// Restores moments and the step count saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for p in &mut self.params {
            let mut loaded = Vec::new();
            for prefix in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{prefix}.{}", p.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    Error::msg(format!(
                        "optimizer state has no `{key}`: checkpoint from another model?"
                    ))
                })?;
                if t.dims() != p.var.dims() {
                    return Err(Error::msg(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        p.var.dims()
                    )));
                }
                loaded.push(t);
            }
            p.set_moments(loaded[0], loaded[1])?;
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Every element counts once, the tail past the last full group of lanes too.
    #[test]
    fn sum_of_squares_counts_every_element() {
        for n in [0usize, 1, 7, 8, 9, 37] {
            let values: Vec<f32> = (1..=n).map(|i| i as f32).collect();
            let expected = (n * (n + 1) * (2 * n + 1) / 6) as f64;
            assert_eq!(sum_of_squares(&values), expected, "n = {n}");
        }
    }

    /// One AdamW step on f(x) = sum(x^2) from known values, checked against the formula
    /// (torch.optim.AdamW gives the same numbers: lr 0.1, wd 0.01, eps 1e-8).
    #[test]
    fn first_step_matches_the_formula_and_skips_decay_on_bias() {
        let dev = Device::Cpu;
        let w = Var::new(&[1.0f32, -2.0], &dev).unwrap();
        let b = Var::new(&[3.0f32], &dev).unwrap();
        let config = AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let mut opt = AdamW::new(
            vec![("l.weight".into(), w.clone()), ("l.bias".into(), b.clone())],
            config,
        )
        .unwrap();
        let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap()
            + b.as_tensor().sqr().unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let norm = opt.step(&grads, None).unwrap();
        assert!((norm - (4.0f64 + 16.0 + 36.0).sqrt()).abs() < 1e-5);
        // First step: update = sign(g) * lr (m_hat / sqrt(v_hat) = +-1); decay multiplies by 1 - lr*wd.
        let w_after: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        assert!(
            (w_after[0] - (1.0 * 0.999 - 0.1)).abs() < 1e-6,
            "{w_after:?}"
        );
        assert!(
            (w_after[1] - (-2.0 * 0.999 + 0.1)).abs() < 1e-6,
            "{w_after:?}"
        );
        let b_after: Vec<f32> = b.as_tensor().to_vec1().unwrap();
        assert!((b_after[0] - (3.0 - 0.1)).abs() < 1e-6, "{b_after:?}");
    }

    #[test]
    fn clipping_scales_gradients_and_state_round_trips() {
        let dev = Device::Cpu;
        let w = Var::new(&[3.0f32, 4.0], &dev).unwrap();
        let config = AdamWConfig::new(0.01, 0.0);
        let mut a = AdamW::new(vec![("w".into(), w.clone())], config).unwrap();
        let grads = w
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let norm = a.step(&grads, Some(1.0)).unwrap();
        assert!((norm - 10.0).abs() < 1e-5);
        let m: Vec<f32> = a.state_tensors()["exp_avg.w"].to_vec1().unwrap();
        // Clipped gradient is (6, 8) / 10; m = 0.1 * g.
        assert!(
            (m[0] - 0.06).abs() < 1e-6 && (m[1] - 0.08).abs() < 1e-6,
            "{m:?}"
        );

        let w2 = Var::new(&[3.0f32, 4.0], &dev).unwrap();
        let mut b = AdamW::new(vec![("w".into(), w2.clone())], config).unwrap();
        b.load_state(&a.state_tensors(), a.step_count()).unwrap();
        w2.set(w.as_tensor()).unwrap();
        let g1 = w
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = w2
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        a.step(&g1, None).unwrap();
        b.step(&g2, None).unwrap();
        assert_eq!(
            w.as_tensor().to_vec1::<f32>().unwrap(),
            w2.as_tensor().to_vec1::<f32>().unwrap()
        );
    }

    /// The fused CPU kernel (f32) and the device-generic composition (taken for f64)
    /// follow the same trajectory over several clipped, decayed steps.
    #[test]
    fn fused_cpu_update_matches_generic_update() {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..300).map(|i| ((i as f32) * 0.37).sin()).collect();
        let fused = Var::from_slice(&init, (3, 100), &dev).unwrap();
        let generic = Var::from_tensor(&fused.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
        let config = AdamWConfig::new(0.05, 0.1);
        let mut a = AdamW::new(vec![("w".into(), fused.clone())], config).unwrap();
        let mut b = AdamW::new(vec![("w".into(), generic.clone())], config).unwrap();
        assert!(matches!(a.params[0].moments, Moments::Cpu { .. }));
        assert!(matches!(b.params[0].moments, Moments::Tensors { .. }));
        for _ in 0..4 {
            let loss = |v: &Var| v.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
            let na = a
                .step(&loss(&fused).backward().unwrap(), Some(2.0))
                .unwrap();
            let nb = b
                .step(&loss(&generic).backward().unwrap(), Some(2.0))
                .unwrap();
            assert!((na - nb).abs() < 1e-4 * nb, "{na} vs {nb}");
        }
        let x: Vec<f32> = fused.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f64> = generic
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let moved = x.iter().zip(&init).any(|(a, b)| (a - b).abs() > 0.1);
        assert!(moved, "parameters barely moved");
        for (a, b) in x.iter().zip(&y) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// A loss scaled by S gives the update of the unscaled loss; gradients that
    /// overflowed leave the weights and the step count alone.
    #[test]
    fn scaled_gradients_are_unscaled_and_overflow_skips_the_step() {
        let dev = Device::Cpu;
        let run = |scale: f64, blow_up: bool| {
            let w = Var::new(&[1.0f32, -2.0, 0.5], &dev).unwrap();
            let mut opt =
                AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::new(5e-5, 0.01)).unwrap();
            let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * scale).unwrap();
            let loss = if blow_up {
                (loss * f64::INFINITY).unwrap()
            } else {
                loss
            };
            let norm = opt
                .step_scaled(&loss.backward().unwrap(), Some(1.0), scale)
                .unwrap();
            (
                norm,
                w.as_tensor().to_vec1::<f32>().unwrap(),
                opt.step_count(),
            )
        };
        let (plain_norm, plain, _) = run(1.0, false);
        let (scaled_norm, scaled, steps) = run(1024.0, false);
        assert!((plain_norm.unwrap() - scaled_norm.unwrap()).abs() < 1e-9);
        assert_eq!(plain, scaled);
        assert_eq!(steps, 1);
        let (norm, untouched, steps) = run(1024.0, true);
        assert_eq!(norm, None);
        assert_eq!(untouched, vec![1.0, -2.0, 0.5]);
        assert_eq!(steps, 0);
    }

    #[test]
    fn decay_groups_follow_bert_convention() {
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(!decays("bert.encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
        assert!(!decays("bert.encoder.relative_attention_bias.weight"));
    }
}
