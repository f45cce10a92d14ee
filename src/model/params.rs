//! Where a model's tensors come from: a loaded checkpoint, fresh initialisation, or both.
//!
//! [`ParamSource`] is a candle `SimpleBackend`: the model code asks for a tensor by name
//! and shape; this answers from the checkpoint (checking the shape), or creates it
//! from the seeded generator, and records which names it created. When trainable, every
//! tensor handed out is a `Var` registered in a `VarMap`.
//!
//! Whether what was created is acceptable is decided once the model is built, by
//! [`ParamSource::checked_report`] and the [`Fresh`] policy: a checkpoint of another
//! family loaded as a BERT would otherwise become a random network that trains without
//! complaint (all-mpnet-base-v2 fine-tuned to 49% on SST-2 behind two log lines).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::rng::Rng;

/// Which tensors a model may get freshly initialised when the checkpoint lacks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// None: every tensor comes from the checkpoint (inference, evaluation, augmentation).
    Nothing,
    /// Only what a task or distillation adds to a pre-trained encoder (see
    /// [`added_by_task`]), drawn from `seed`; anything else missing is an error.
    TaskAdditions { seed: u64 },
    /// Anything, drawn from `seed`: a random model, built only when asked for one.
    Anything { seed: u64 },
}

impl Fresh {
    fn seed(self) -> u64 {
        match self {
            Fresh::Nothing => 0,
            Fresh::TaskAdditions { seed } | Fresh::Anything { seed } => seed,
        }
    }
}

/// Tensors that a task or distillation adds to a pre-trained encoder: the sequence
/// classification head, a pooler (sentence-transformers checkpoints drop it) and the
/// student-to-teacher projections. Everything else must come from the checkpoint.
pub fn added_by_task(name: &str) -> bool {
    name.starts_with("classifier.")
        || name.starts_with("bert.pooler.")
        || name.starts_with("fit_dense")
}

/// The variables of `varmap` by name: handles sharing the variables' storage. Code
/// that reads a whole map takes it from here; only the backend below, which adds to
/// the map as a model is built, and test support lock the map themselves.
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The tensors of `varmap` by name; nothing is copied.
pub fn named_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    named_vars(varmap)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect()
}

pub struct ParamSource {
    origin: String,
    pretrained: Mutex<HashMap<String, Tensor>>,
    varmap: Option<VarMap>,
    fresh: Fresh,
    rng: Mutex<Rng>,
    created: Mutex<BTreeSet<String>>,
    used: Mutex<BTreeSet<String>>,
}

/// What building a model from a [`ParamSource`] did, for logs and checks.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Tensors that were not in the checkpoint and were freshly initialised.
    pub created: Vec<String>,
    /// Tensors taken from the checkpoint.
    pub loaded: usize,
    /// Checkpoint tensors the model did not use (heads of another task, buffers).
    pub unused: Vec<String>,
}

impl ParamSource {
    /// `origin` names the checkpoint in errors; `fresh` says which missing tensors
    /// [`ParamSource::checked_report`] accepts.
    pub fn new(
        origin: impl Into<String>,
        pretrained: HashMap<String, Tensor>,
        trainable: bool,
        fresh: Fresh,
    ) -> Self {
        ParamSource {
            origin: origin.into(),
            pretrained: Mutex::new(pretrained),
            varmap: trainable.then(VarMap::new),
            fresh,
            rng: Mutex::new(Rng::new(fresh.seed())),
            created: Default::default(),
            used: Default::default(),
        }
    }

    pub fn varmap(&self) -> Option<&VarMap> {
        self.varmap.as_ref()
    }

    /// What building the model did, once the [`Fresh`] policy accepts it: a
    /// [`crate::Error::CheckpointMismatch`] names the `model_type`, how many tensors
    /// would be random and the first of them, and what to do instead.
    pub fn checked_report(&self, model_type: Option<&str>) -> crate::Result<LoadReport> {
        let report = self.report();
        let rejected: Vec<String> = match self.fresh {
            Fresh::Anything { .. } => Vec::new(),
            Fresh::TaskAdditions { .. } => report
                .created
                .iter()
                .filter(|n| !added_by_task(n))
                .cloned()
                .collect(),
            Fresh::Nothing => report.created.clone(),
        };
        if rejected.is_empty() {
            return Ok(report);
        }
        Err(crate::Error::CheckpointMismatch {
            path: self.origin.clone(),
            message: mismatch_message(&report, &rejected, model_type),
            missing: rejected,
        })
    }

    fn report(&self) -> LoadReport {
        let used = self.used.lock().expect("lock");
        LoadReport {
            created: self.created.lock().expect("lock").iter().cloned().collect(),
            loaded: used.len(),
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
        let n = shape.elem_count();
        let mut rng = self.rng.lock().expect("lock");
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
                        "tensor `{name}` has shape {:?}, the config implies {:?}",
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
            None => candle_core::bail!("tensor `{name}` is missing from the checkpoint"),
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

/// Why a checkpoint cannot make the model: what is missing, what the checkpoint holds
/// instead, and what to do. Only the task head missing is said in those words.
fn mismatch_message(report: &LoadReport, rejected: &[String], model_type: Option<&str>) -> String {
    const SHOWN: usize = 4;
    let first = |names: &[String]| {
        let mut list = names
            .iter()
            .take(SHOWN)
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > SHOWN {
            list.push_str(", ...");
        }
        list
    };
    if rejected.iter().all(|n| added_by_task(n)) {
        return "the checkpoint has no sequence-classification head (it is a pre-trained encoder, \
                not a classifier for this task). Fine-tune it first: `candle-distill finetune \
                --model <it> --task <task> --out <dir>`, or give it to `run` as the teacher with \
                teacher.finetune = \"auto\""
            .into();
    }
    if rejected.iter().all(|n| n.starts_with("cls.")) {
        return format!(
            "the checkpoint has no masked-LM head ({} missing: {}); masked-token augmentation needs \
             a BERT saved with its MLM head, such as bert-base-uncased",
            rejected.len(),
            first(rejected)
        );
    }
    let family = match model_type {
        Some(t) => format!("model_type `{t}`"),
        None => "no model_type in config.json".into(),
    };
    let mut message = format!(
        "the checkpoint ({family}) does not hold the encoder its config describes: {} of the \
         {} tensors the model needs are not in it and would be randomly initialised ({}).",
        rejected.len(),
        report.loaded + report.created.len(),
        first(rejected)
    );
    if !report.unused.is_empty() {
        message.push_str(&format!(" It holds {} instead.", first(&report.unused)));
    }
    message.push_str(
        " candle-distill loads BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT and MPNet \
         checkpoints in transformers' layout; for a student trained from scratch set \
         student.from = \"random\"",
    );
    message
}
