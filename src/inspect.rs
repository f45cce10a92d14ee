//! Facts about a checkpoint: architecture, size, cost, labels and tokenizer.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{ModelFiles, WeightFiles};
use crate::Result;

#[derive(Debug, Serialize)]
pub struct ModelReport {
    pub model: String,
    /// The hub commit the files come from; `None` for a local folder.
    pub commit: Option<String>,
    /// The encoder family (`bert`, `roberta`, `mpnet`, ...).
    pub model_type: String,
    pub architectures: Vec<String>,
    pub layers: usize,
    pub hidden_size: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    /// Parameters actually stored in the weight files.
    pub parameters: usize,
    pub weight_format: String,
    /// Parameters per stored dtype (`f32`, `f16`, ...).
    pub weight_dtypes: BTreeMap<String, usize>,
    pub size_on_disk_bytes: u64,
    pub seq_len: usize,
    pub forward_gflops_per_sequence: f64,
    pub labels: Option<Vec<String>>,
    pub problem_type: Option<String>,
    pub tokenizer_source: String,
    pub tokenizer_vocab_size: usize,
    pub lowercase: Option<bool>,
    pub vocab_sha256: String,
}

pub fn inspect(files: &ModelFiles, seq_len: usize) -> Result<ModelReport> {
    let config = files.read_config()?;
    let tokenizer = files.read_tokenizer()?;
    let tensors = files.read_weights()?;
    let parameters = tensors.values().map(|t| t.elem_count()).sum();
    let mut weight_dtypes = BTreeMap::new();
    for t in tensors.values() {
        *weight_dtypes
            .entry(t.dtype().as_str().to_string())
            .or_insert(0) += t.elem_count();
    }
    let origin = files.config.display().to_string();
    Ok(ModelReport {
        model: files.spec.clone(),
        commit: files.commit.clone(),
        model_type: config.family().model_type().into(),
        architectures: config.architectures.clone().unwrap_or_default(),
        layers: config.num_hidden_layers,
        hidden_size: config.hidden_size,
        heads: config.num_attention_heads,
        intermediate_size: config.intermediate_size,
        vocab_size: config.vocab_size,
        max_position_embeddings: config.max_position_embeddings,
        parameters,
        weight_format: match &files.weights {
            WeightFiles::Safetensors(v) if v.len() > 1 => {
                format!("safetensors ({} shards)", v.len())
            }
            WeightFiles::Safetensors(_) => "safetensors".into(),
            WeightFiles::PytorchBin(path) if crate::model::torch_legacy::is_legacy(path)? => {
                "pytorch_model.bin (legacy pre-1.6 format)".into()
            }
            WeightFiles::PytorchBin(_) => "pytorch_model.bin".into(),
        },
        weight_dtypes,
        size_on_disk_bytes: files.weights.size_on_disk(),
        seq_len,
        forward_gflops_per_sequence: config.forward_flops_per_token(seq_len) as f64
            * seq_len as f64
            / 1e9,
        labels: config.labels(&origin)?,
        problem_type: config.problem_type.clone(),
        tokenizer_source: if files.tokenizer.tokenizer_json.is_some() {
            "tokenizer.json".into()
        } else {
            "vocab.txt".into()
        },
        tokenizer_vocab_size: tokenizer.vocab_size(),
        lowercase: tokenizer.lowercase(),
        vocab_sha256: tokenizer.vocab_hash(),
    })
}

impl ModelReport {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<24} {v}\n"));
        line("model", self.model.clone());
        if let Some(commit) = &self.commit {
            line("commit", commit.clone());
        }
        line("model_type", self.model_type.clone());
        line("architectures", self.architectures.join(", "));
        line(
            "shape",
            format!(
                "{} layers, hidden {}, {} heads, FFN {}",
                self.layers, self.hidden_size, self.heads, self.intermediate_size
            ),
        );
        line(
            "parameters",
            format!("{} ({:.1}M)", self.parameters, self.parameters as f64 / 1e6),
        );
        line(
            "weights",
            format!(
                "{}, {}, {:.1} MiB",
                self.weight_format,
                self.weight_dtypes
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" + "),
                self.size_on_disk_bytes as f64 / 1048576.0
            ),
        );
        line(
            "forward cost",
            format!(
                "{:.2} GFLOP per sequence of {} tokens",
                self.forward_gflops_per_sequence, self.seq_len
            ),
        );
        line(
            "labels",
            match &self.labels {
                Some(l) => format!("{} ({})", l.len(), l.join(", ")),
                None => "none (not fine-tuned for a task)".into(),
            },
        );
        if let Some(p) = &self.problem_type {
            line("problem type", p.clone());
        }
        line(
            "tokenizer",
            format!(
                "{}, {} tokens, lowercase {}",
                self.tokenizer_source,
                self.tokenizer_vocab_size,
                self.lowercase
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "unknown".into())
            ),
        );
        line("vocab sha256", self.vocab_sha256.clone());
        s
    }
}
