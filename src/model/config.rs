//! `config.json` of a BERT-family checkpoint, as Hugging Face writes it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::family::Family;

use crate::{Error, Result};

/// The position table's canonical name.
const POSITION_TABLE: &str = "bert.embeddings.position_embeddings.weight";

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

/// transformers' ElectraConfig default for `embedding_size`.
const ELECTRA_EMBEDDING_SIZE: usize = 128;

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
    /// Reads config.json of any supported family (DistilBERT's field names become
    /// BERT's), refusing other `model_type`s by name.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json_error = |cause| Error::Json {
            path: path.to_path_buf(),
            cause,
        };
        let mut fields: Map<String, Value> = serde_json::from_str(&text).map_err(json_error)?;
        let origin = path.display().to_string();
        let model_type = fields.get("model_type").and_then(Value::as_str);
        Family::from_model_type(model_type, &origin)?.config_to_bert_names(&mut fields);
        let config: BertConfig =
            serde_json::from_value(Value::Object(fields)).map_err(json_error)?;
        config.validate(&origin)?;
        Ok(config)
    }

    /// config.json as transformers reads it for this config's family.
    pub fn to_family_json(&self) -> Result<Value> {
        let Value::Object(mut fields) =
            serde_json::to_value(self).map_err(|e| Error::msg(e.to_string()))?
        else {
            return Err(Error::msg("a config serialises to a JSON object"));
        };
        let family = self.family();
        if family == Family::Electra {
            // Written always: transformers would read a missing one as 128.
            fields.insert("embedding_size".into(), self.embedding_size().into());
        }
        family.config_to_family_names(&mut fields);
        Ok(Value::Object(fields))
    }

    /// The encoder family. A config is validated when read, so an unsupported
    /// model_type never gets here from a file; one built in code is a BERT unless
    /// it says otherwise.
    pub fn family(&self) -> Family {
        Family::from_model_type(self.model_type.as_deref(), "config").unwrap_or(Family::Bert)
    }

    /// The width of the token embeddings: ELECTRA's `embedding_size` (projected to
    /// `hidden_size` after the embedding LayerNorm; 128 when the config has none, as
    /// transformers' ElectraConfig defaults), else `hidden_size`.
    pub fn embedding_size(&self) -> usize {
        let default = if self.family() == Family::Electra {
            ELECTRA_EMBEDDING_SIZE
        } else {
            self.hidden_size
        };
        self.extra
            .get("embedding_size")
            .and_then(Value::as_u64)
            .map_or(default, |e| e as usize)
    }

    /// MPNet's number of relative-position buckets.
    pub fn relative_attention_num_buckets(&self) -> usize {
        self.extra
            .get("relative_attention_num_buckets")
            .and_then(Value::as_u64)
            .map_or(32, |n| n as usize)
    }

    /// For families that number positions after a padding index (fairseq's scheme:
    /// real tokens from `padding_idx + 1`, padding at `padding_idx`), that index:
    /// RoBERTa's and XLM-R's `pad_token_id`, and MPNet's 1, which transformers
    /// hard-codes whatever the config says. `None`: positions are 0, 1, 2, ...
    pub fn position_padding_idx(&self) -> Option<usize> {
        match self.family() {
            Family::MPNet => Some(1),
            f if f.positions_after_padding() => Some(self.pad_token_id),
            _ => None,
        }
    }

    /// The longest input the position table covers: families that number positions
    /// after a padding index lose that index and the slots before it.
    pub fn max_sequence_length(&self) -> usize {
        match self.position_padding_idx() {
            Some(idx) => self.max_position_embeddings.saturating_sub(idx + 1),
            None => self.max_position_embeddings,
        }
    }

    /// Tensors that a checkpoint of this config holds but training leaves as they are:
    /// DistilBERT's sinusoidal position table (`sinusoidal_pos_embds`), which
    /// transformers freezes too.
    pub fn frozen_tensors(&self) -> Vec<&'static str> {
        if self.fixed_positions() {
            vec![POSITION_TABLE]
        } else {
            Vec::new()
        }
    }

    /// Adds the tensors this config defines by formula when `tensors` lacks them (a
    /// random student, a model written at random): DistilBERT's sinusoidal position
    /// table, which transformers computes too when it builds such a model.
    pub fn add_formula_tensors(
        &self,
        tensors: &mut std::collections::HashMap<String, candle_core::Tensor>,
    ) -> Result<()> {
        if self.fixed_positions() && !tensors.contains_key(POSITION_TABLE) {
            let table = super::bert::sinusoidal_positions(
                self.max_position_embeddings,
                self.embedding_size(),
            )?;
            tensors.insert(POSITION_TABLE.into(), table);
        }
        Ok(())
    }

    /// Whether the position table is fixed (DistilBERT's `sinusoidal_pos_embds`).
    pub fn fixed_positions(&self) -> bool {
        self.family() == Family::DistilBert
            && self
                .extra
                .get("sinusoidal_pos_embds")
                .and_then(Value::as_bool)
                .unwrap_or(false)
    }

    /// Dropout before the classification head's output layer: `classifier_dropout`
    /// (DistilBERT: `seq_classif_dropout`), else the hidden dropout.
    pub fn classifier_dropout(&self) -> f32 {
        ["classifier_dropout", "seq_classif_dropout"]
            .iter()
            .find_map(|k| self.extra.get(*k).and_then(Value::as_f64))
            .map_or(self.hidden_dropout_prob, |p| p as f32)
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

    /// A fresh model of this config's family and vocabulary (positions, token types,
    /// padding id) in another shape, with BERT's defaults elsewhere: a random student
    /// of this teacher.
    pub fn reshaped(
        &self,
        num_hidden_layers: usize,
        hidden_size: usize,
        num_attention_heads: usize,
        intermediate_size: usize,
    ) -> Self {
        let mut c = BertConfig::with_shape(
            self.vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size,
        );
        c.max_position_embeddings = self.max_position_embeddings;
        c.type_vocab_size = self.type_vocab_size;
        c.pad_token_id = self.pad_token_id;
        c.model_type = self.model_type.clone();
        if self.family() != Family::Bert {
            c.layer_norm_eps = self.layer_norm_eps;
        }
        // The family's own settings; ELECTRA's student embeds at its own width.
        for key in [
            "relative_attention_num_buckets",
            "classifier_dropout",
            "seq_classif_dropout",
            "sinusoidal_pos_embds",
        ] {
            if let Some(v) = self.extra.get(key) {
                c.extra.insert(key.into(), v.clone());
            }
        }
        if c.family() == Family::Electra {
            c.extra.insert("embedding_size".into(), hidden_size.into());
        }
        c
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
        // Whether the checkpoint's tensors make the family's encoder is checked when
        // the model is built (model::params); an error there names the model_type.
        Family::from_model_type(self.model_type.as_deref(), origin)?;
        if let (Some(idx), 0) = (self.position_padding_idx(), self.max_sequence_length()) {
            return Err(Error::invalid(
                origin,
                "max_position_embeddings",
                format!(
                    "{} leaves no position after the padding index + 1 = {}",
                    self.max_position_embeddings,
                    idx + 1
                ),
            ));
        }
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

    /// Parameters of the encoder (embeddings, layers, a BERT's pooler), without any
    /// head.
    pub fn encoder_parameters(&self) -> usize {
        let family = self.family();
        let h = self.hidden_size;
        let i = self.intermediate_size;
        let e = self.embedding_size();
        let types = if family.has_token_type_embeddings() {
            self.type_vocab_size
        } else {
            0
        };
        let mut embeddings = (self.vocab_size + self.max_position_embeddings + types) * e + 2 * e;
        if e != h {
            embeddings += e * h + h;
        }
        if family.has_relative_attention_bias() {
            embeddings += self.relative_attention_num_buckets() * self.num_attention_heads;
        }
        let layer = 4 * (h * h + h) + 2 * (h * i) + i + h + 2 * 2 * h;
        let pooler = match family.head() {
            super::family::HeadKind::Pooler => h * h + h,
            super::family::HeadKind::Dense(_) => 0,
        };
        embeddings + self.num_hidden_layers * layer + pooler
    }

    /// Parameters of the sequence-classification head.
    pub fn head_parameters(&self) -> usize {
        let h = self.hidden_size;
        let out = self.num_labels() * (h + 1);
        match self.family().head() {
            super::family::HeadKind::Pooler => out,
            super::family::HeadKind::Dense(_) => h * h + h + out,
        }
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
    fn parameter_counts_match_the_built_model_of_every_family() {
        use crate::model::{build_classifier, BuildOptions};
        for family in Family::ALL {
            let mut config = crate::testing::tiny_family_config(family, 32, 2, 4, 64);
            config.pad_token_id = 1;
            let built = build_classifier(
                "random",
                &config,
                Default::default(),
                &BuildOptions::random(&candle_core::Device::Cpu, 1),
            )
            .unwrap();
            let varmap = built.varmap.unwrap();
            let counted: usize = crate::model::params::named_tensors(&varmap)
                .values()
                .map(|t| t.elem_count())
                .sum();
            assert_eq!(
                config.encoder_parameters() + config.head_parameters(),
                counted,
                "{family:?}"
            );
        }
    }

    #[test]
    fn electra_embeddings_are_128_wide_unless_the_config_says_otherwise() {
        let mut c = BertConfig::with_shape(50, 64, 1, 4, 128);
        c.model_type = Some("electra".into());
        assert_eq!(c.embedding_size(), 128);
        assert_eq!(c.to_family_json().unwrap()["embedding_size"], 128);
        // A random student of it embeds at its own width, and says so.
        let student = c.reshaped(1, 32, 4, 64);
        assert_eq!(student.embedding_size(), 32);
        assert_eq!(student.to_family_json().unwrap()["embedding_size"], 32);
        c.model_type = Some("bert".into());
        assert_eq!(c.embedding_size(), 64);
        assert!(c.to_family_json().unwrap().get("embedding_size").is_none());
    }

    #[test]
    fn positions_after_padding_lose_their_slots() {
        let mut c = BertConfig::with_shape(50, 32, 1, 4, 64);
        assert_eq!(
            (c.position_padding_idx(), c.max_sequence_length()),
            (None, 512)
        );
        c.model_type = Some("roberta".into());
        c.pad_token_id = 1;
        assert_eq!(
            (c.position_padding_idx(), c.max_sequence_length()),
            (Some(1), 510)
        );
        // MPNet counts from padding index 1 whatever pad_token_id says, as transformers.
        c.model_type = Some("mpnet".into());
        c.pad_token_id = 0;
        assert_eq!(
            (c.position_padding_idx(), c.max_sequence_length()),
            (Some(1), 510)
        );
    }

    #[test]
    fn parameter_count_matches_bert_base() {
        // bert-base-uncased: 109,482,240 parameters without heads (transformers' count).
        let config = BertConfig::with_shape(30522, 768, 12, 12, 3072);
        assert_eq!(config.encoder_parameters(), 109_482_240);
    }
}
