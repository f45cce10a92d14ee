//! AdamW with decoupled weight decay, no decay on biases and LayerNorm parameters
//! (the BERT / TinyBERT convention), global-norm gradient clipping, and a state that
//! can be saved and restored exactly (candle's own AdamW keeps its moments private).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 5e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.01,
        }
    }
}

/// Whether weight decay applies to a parameter, by its name.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

struct Param {
    name: String,
    var: Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    decay: bool,
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
                let zeros = var.as_tensor().zeros_like()?.to_dtype(DType::F32)?;
                Ok(Param {
                    decay: decays(&name),
                    name,
                    exp_avg: zeros.clone(),
                    exp_avg_sq: zeros,
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
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                total += g
                    .to_dtype(DType::F32)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f32>()? as f64;
            }
        }
        Ok(total.sqrt())
    }

    /// One update. `max_grad_norm` clips the global gradient norm first (as
    /// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
    pub fn step(&mut self, grads: &GradStore, max_grad_norm: Option<f64>) -> Result<f64> {
        let norm = self.grad_norm(grads)?;
        if !norm.is_finite() {
            return Err(Error::msg(format!(
                "gradient norm is {norm} at step {}: the loss diverged (lower the learning rate)",
                self.step + 1
            )));
        }
        let scale = match max_grad_norm {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let g = (g.to_dtype(DType::F32)? * scale)?;
            p.exp_avg = ((&p.exp_avg * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            p.exp_avg_sq = ((&p.exp_avg_sq * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&p.exp_avg / bias1)? / ((&p.exp_avg_sq / bias2)?.sqrt()? + c.eps)?)?;
            let theta = p.var.as_tensor().to_dtype(DType::F32)?;
            let theta = if p.decay && c.weight_decay > 0.0 {
                (theta * (1.0 - c.lr * c.weight_decay))?
            } else {
                theta
            };
            let theta = (theta - (update * c.lr)?)?;
            p.var.set(&theta.to_dtype(p.var.dtype())?)?;
        }
        Ok(norm)
    }

    /// Moments by parameter name, for checkpoints.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("exp_avg.{}", p.name), p.exp_avg.clone());
            out.insert(format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.clone());
        }
        out
    }

    /// Restores moments and the step count saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for p in &mut self.params {
            for (prefix, slot) in [
                ("exp_avg", &mut p.exp_avg),
                ("exp_avg_sq", &mut p.exp_avg_sq),
            ] {
                let key = format!("{prefix}.{}", p.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    Error::msg(format!(
                        "optimizer state has no `{key}`: checkpoint from another model?"
                    ))
                })?;
                if t.dims() != slot.dims() {
                    return Err(Error::msg(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        slot.dims()
                    )));
                }
                *slot = t.to_device(slot.device())?.to_dtype(DType::F32)?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
        let config = AdamWConfig {
            lr: 0.01,
            weight_decay: 0.0,
            ..Default::default()
        };
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

    #[test]
    fn decay_groups_follow_bert_convention() {
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(!decays("bert.encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
    }
}
