//! Where a model's tensors come from: a loaded checkpoint, fresh initialisation, or both.
//!
//! [`ParamSource`] is a candle `SimpleBackend`: the model code asks for a tensor by name
//! and shape; this answers from the checkpoint (checking the shape), or creates it
//! from the seeded generator when allowed, and records which names it created. When
//! trainable, every tensor handed out is a `Var` registered in a `VarMap`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::rng::Rng;

pub struct ParamSource {
    origin: String,
    pretrained: Mutex<HashMap<String, Tensor>>,
    varmap: Option<VarMap>,
    /// `None`: every tensor must come from the checkpoint.
    rng: Option<Mutex<Rng>>,
    created: Mutex<BTreeSet<String>>,
    used: Mutex<BTreeSet<String>>,
}

/// What building a model from a [`ParamSource`] did, for logs and checks.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Tensors that were not in the checkpoint and were freshly initialised.
    pub created: Vec<String>,
    /// Checkpoint tensors the model did not use (heads of another task, buffers).
    pub unused: Vec<String>,
}

impl ParamSource {
    /// `origin` names the checkpoint in errors. With `init_seed`, missing tensors are
    /// created; without it, a missing tensor is an error.
    pub fn new(
        origin: impl Into<String>,
        pretrained: HashMap<String, Tensor>,
        trainable: bool,
        init_seed: Option<u64>,
    ) -> Self {
        ParamSource {
            origin: origin.into(),
            pretrained: Mutex::new(pretrained),
            varmap: trainable.then(VarMap::new),
            rng: init_seed.map(|s| Mutex::new(Rng::new(s))),
            created: Default::default(),
            used: Default::default(),
        }
    }

    pub fn varmap(&self) -> Option<&VarMap> {
        self.varmap.as_ref()
    }

    pub fn report(&self) -> LoadReport {
        let used = self.used.lock().expect("lock");
        LoadReport {
            created: self.created.lock().expect("lock").iter().cloned().collect(),
            unused: self
                .pretrained
                .lock()
                .expect("lock")
                .keys()
                .filter(|k| !used.contains(*k))
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.pretrained.lock().expect("lock").contains_key(name)
    }

    /// A checkpoint tensor by name, or an error naming it.
    pub fn get_pretrained(&self, name: &str) -> crate::Result<Tensor> {
        self.pretrained
            .lock()
            .expect("lock")
            .get(name)
            .cloned()
            .ok_or_else(|| crate::Error::Weights {
                path: self.origin.clone(),
                name: name.to_string(),
                message: "missing".into(),
            })
    }

    /// Adds a tensor as if the checkpoint had it (aliases such as a shared projection).
    pub fn insert_pretrained(&self, name: &str, tensor: Tensor) {
        self.pretrained
            .lock()
            .expect("lock")
            .insert(name.to_string(), tensor);
    }

    fn fresh(&self, shape: &Shape, init: Init, name: &str) -> candle_core::Result<Tensor> {
        let Some(rng) = &self.rng else {
            candle_core::bail!(
                "{}: tensor `{name}` (shape {shape:?}) is missing from the checkpoint",
                self.origin
            )
        };
        let n = shape.elem_count();
        let mut rng = rng.lock().expect("lock");
        let values: Vec<f32> = match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| mean as f32 + stdev as f32 * rng.normal())
                .collect(),
            Init::Uniform { lo, up } => (0..n)
                .map(|_| lo as f32 + (up - lo) as f32 * rng.next_f32())
                .collect(),
            Init::Kaiming { .. } => candle_core::bail!("kaiming init is not used by this crate"),
        };
        self.created.lock().expect("lock").insert(name.to_string());
        Tensor::from_vec(values, shape, &Device::Cpu)
    }
}

/// Shares a [`ParamSource`] between the VarBuilder and the caller, who reads the
/// report and the VarMap after the model is built.
struct Shared(Arc<ParamSource>);

impl candle_nn::var_builder::SimpleBackend for Shared {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let this = &self.0;
        if let Some(var) = this
            .varmap
            .as_ref()
            .and_then(|m| m.data().lock().expect("lock").get(name).cloned())
        {
            return Ok(var.as_tensor().clone());
        }
        let pretrained = this.pretrained.lock().expect("lock").get(name).cloned();
        let tensor = match pretrained {
            Some(t) => {
                if t.shape() != &shape {
                    candle_core::bail!(
                        "{}: tensor `{name}` has shape {:?}, the config implies {:?}",
                        this.origin,
                        t.dims(),
                        shape.dims()
                    )
                }
                this.used.lock().expect("lock").insert(name.to_string());
                t
            }
            None => this.fresh(&shape, init, name)?,
        };
        let tensor = tensor.to_device(dev)?.to_dtype(dtype)?;
        match &this.varmap {
            Some(map) => {
                let var = Var::from_tensor(&tensor)?;
                map.data()
                    .lock()
                    .expect("lock")
                    .insert(name.to_string(), var.clone());
                Ok(var.as_tensor().clone())
            }
            None => Ok(tensor),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let this = &self.0;
        let pretrained = this.pretrained.lock().expect("lock").get(name).cloned();
        match pretrained {
            Some(t) => {
                this.used.lock().expect("lock").insert(name.to_string());
                t.to_device(dev)?.to_dtype(dtype)
            }
            None => candle_core::bail!("{}: tensor `{name}` is missing", this.origin),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// A VarBuilder drawing from `source`.
pub fn var_builder(
    source: &Arc<ParamSource>,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Shared(source.clone())), dtype, device.clone())
}
