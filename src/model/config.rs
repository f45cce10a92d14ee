//! `config.json` of a BERT-family checkpoint, as Hugging Face writes it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f32 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_max_pos() -> usize {
    512
}
fn default_init_range() -> f64 {
    0.02
}

/// The fields of a Hugging Face `BertConfig` that this crate reads. Fields it does not
/// know are kept in `extra` and written back on export, so nothing a user had is lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Class index -> name. JSON keys are strings ("0", "1", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, i64>>,
    /// `regression`, `single_label_classification` or `multi_label_classification`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Activation functions found in BERT-family configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The exact erf GELU (`gelu` in transformers).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            cause: e,
        })?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// A config for a fresh model of the given shape, with BERT defaults elsewhere.
    pub fn with_shape(
        vocab_size: usize,
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        intermediate_size: usize,
    ) -> Self {
        BertConfig {
            vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size,
            hidden_act: default_act(),
            hidden_dropout_prob: default_dropout(),
            attention_probs_dropout_prob: default_dropout(),
            max_position_embeddings: default_max_pos(),
            type_vocab_size: default_type_vocab(),
            layer_norm_eps: default_eps(),
            initializer_range: default_init_range(),
            pad_token_id: 0,
            model_type: Some("bert".into()),
            architectures: None,
            id2label: None,
            label2id: None,
            problem_type: None,
            num_labels: None,
            extra: Default::default(),
        }
    }

    /// Checks that the shape is one a BERT can have; `origin` names the file for errors.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::invalid(origin, field, "must be greater than 0"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::invalid(
                origin,
                "hidden_size",
                format!(
                    "{} is not divisible by num_attention_heads = {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        self.activation(origin)?;
        // A model_type other than `bert` is not refused here: whether the checkpoint's
        // tensors make a BERT is checked when the model is built (model::params), and
        // an error there names the model_type.
        self.labels(origin)?;
        Ok(())
    }

    pub fn activation(&self, origin: &str) -> Result<Activation> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(Error::invalid(
                origin,
                "hidden_act",
                format!("`{other}` is not supported; expected gelu, gelu_new or relu"),
            )),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Class names in index order, from `id2label`, or `None` when the config has no label map.
    pub fn labels(&self, origin: &str) -> Result<Option<Vec<String>>> {
        let Some(map) = &self.id2label else {
            return Ok(None);
        };
        let mut labels = vec![None; map.len()];
        for (key, name) in map {
            let index: usize = key.parse().map_err(|_| {
                Error::invalid(origin, "id2label", format!("key `{key}` is not an index"))
            })?;
            if index >= labels.len() || labels[index].is_some() {
                return Err(Error::invalid(
                    origin,
                    "id2label",
                    format!(
                        "indices must be 0..{} without gaps, found `{key}`",
                        map.len()
                    ),
                ));
            }
            labels[index] = Some(name.clone());
        }
        Ok(Some(labels.into_iter().flatten().collect()))
    }

    /// Number of outputs of the classification head, as transformers decides it:
    /// `id2label` wins, then `num_labels`, then 2.
    pub fn num_labels(&self) -> usize {
        self.id2label
            .as_ref()
            .map(|m| m.len())
            .or(self.num_labels)
            .unwrap_or(2)
    }

    pub fn is_regression(&self) -> bool {
        self.problem_type.as_deref() == Some("regression")
            || (self.problem_type.is_none() && self.num_labels() == 1)
    }

    /// Sets the label map (and the problem type for a single regression output).
    pub fn set_labels(&mut self, labels: &[String]) {
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
        );
        self.label2id = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i as i64))
                .collect(),
        );
        self.num_labels = None;
        self.problem_type = Some(if labels.len() == 1 {
            "regression".into()
        } else {
            "single_label_classification".into()
        });
    }

    /// Parameters of the encoder (embeddings, layers, pooler), without any head.
    pub fn encoder_parameters(&self) -> usize {
        let h = self.hidden_size;
        let i = self.intermediate_size;
        let embeddings =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + 2 * (h * i) + i + h + 2 * 2 * h;
        let pooler = h * h + h;
        embeddings + self.num_hidden_layers * layer + pooler
    }

    /// Multiply-adds count twice: FLOPs of one forward pass per token at sequence length `seq`.
    pub fn forward_flops_per_token(&self, seq: usize) -> u64 {
        let h = self.hidden_size as u64;
        let i = self.intermediate_size as u64;
        let s = seq as u64;
        let projections = 2 * 4 * h * h;
        let ffn = 2 * 2 * h * i;
        let attention = 2 * 2 * s * h;
        self.num_hidden_layers as u64 * (projections + ffn + attention)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hf_config_and_keeps_unknown_fields() {
        let json = r#"{"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
            "num_attention_heads": 12, "intermediate_size": 1536, "hidden_act": "gelu",
            "gradient_checkpointing": false, "id2label": {"1": "positive", "0": "negative"}}"#;
        let config: BertConfig = serde_json::from_str(json).unwrap();
        config.validate("config.json").unwrap();
        assert_eq!(config.head_dim(), 32);
        assert_eq!(config.num_labels(), 2);
        assert_eq!(
            config.labels("c").unwrap().unwrap(),
            vec!["negative".to_string(), "positive".to_string()]
        );
        let back = serde_json::to_value(&config).unwrap();
        assert_eq!(back["gradient_checkpointing"], false);
    }

    #[test]
    fn rejects_bad_shapes_naming_the_field() {
        let mut config = BertConfig::with_shape(100, 30, 2, 4, 64);
        let err = config.validate("x/config.json").unwrap_err().to_string();
        assert!(
            err.contains("hidden_size") && err.contains("x/config.json"),
            "{err}"
        );
        config.hidden_size = 32;
        config.hidden_act = "swish".into();
        let err = config.validate("x/config.json").unwrap_err().to_string();
        assert!(err.contains("hidden_act") && err.contains("swish"), "{err}");
    }

    #[test]
    fn parameter_count_matches_bert_base() {
        // bert-base-uncased: 109,482,240 parameters without heads (transformers' count).
        let config = BertConfig::with_shape(30522, 768, 12, 12, 3072);
        assert_eq!(config.encoder_parameters(), 109_482_240);
    }
}
