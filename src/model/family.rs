//! The encoder families this crate runs, and what sets each apart from BERT.
//!
//! Every family is one encoder here (`bert.rs`): embeddings, post-LayerNorm layers,
//! a head on the first token. What differs is small and listed by [`Family`]: how
//! positions are numbered, whether token types exist, an embedding projection
//! (ELECTRA), a relative position bias (MPNet), the classification head, the tensor
//! names and, for DistilBERT, the config's field names. Inside the crate every tensor
//! has its canonical (BERT) name; checkpoints are read and written in their family's
//! own layout, which transformers loads as is.

use std::collections::HashMap;

use candle_core::Tensor;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// An encoder family, from `model_type` in config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Bert,
    Roberta,
    XlmRoberta,
    Electra,
    DistilBert,
    MPNet,
}

/// The classification head on the first token's final hidden state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// BERT: the pooler (dense, tanh), dropout, `classifier`.
    Pooler,
    /// RoBERTa, XLM-R, MPNet (tanh), ELECTRA (GELU), DistilBERT (ReLU): dropout,
    /// `classifier.dense`, the activation, dropout, `classifier.out_proj`.
    Dense(HeadActivation),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadActivation {
    Tanh,
    Gelu,
    Relu,
}

/// model_type values of families that are not supported yet, with what they are.
const NOT_YET: [(&str, &str); 6] = [
    ("deberta", "DeBERTa (disentangled attention)"),
    ("deberta-v2", "DeBERTa-v2/v3 (disentangled attention)"),
    ("albert", "ALBERT (shared layers)"),
    ("gpt2", "a decoder"),
    ("llama", "a decoder"),
    ("t5", "an encoder-decoder"),
];

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Bert,
        Family::Roberta,
        Family::XlmRoberta,
        Family::Electra,
        Family::DistilBert,
        Family::MPNet,
    ];

    /// The family of a config's `model_type` (BERT when it has none); `origin` names
    /// the config in the error for any other model_type.
    pub fn from_model_type(model_type: Option<&str>, origin: &str) -> Result<Family> {
        let Some(name) = model_type else {
            return Ok(Family::Bert);
        };
        if let Some(f) = Family::ALL.iter().find(|f| f.model_type() == name) {
            return Ok(*f);
        }
        let what = NOT_YET
            .iter()
            .find(|(t, _)| *t == name)
            .map(|(_, what)| format!(" ({what}) is not supported yet"))
            .unwrap_or_else(|| " is not a supported encoder family".into());
        let supported: Vec<&str> = Family::ALL.iter().map(|f| f.model_type()).collect();
        Err(Error::invalid(
            origin,
            "model_type",
            format!("`{name}`{what}; expected one of {}", supported.join(", ")),
        ))
    }

    /// `model_type` in config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::XlmRoberta => "xlm-roberta",
            Family::Electra => "electra",
            Family::DistilBert => "distilbert",
            Family::MPNet => "mpnet",
        }
    }

    /// transformers' class for a sequence classifier of this family.
    pub fn classifier_architecture(self) -> &'static str {
        match self {
            Family::Bert => "BertForSequenceClassification",
            Family::Roberta => "RobertaForSequenceClassification",
            Family::XlmRoberta => "XLMRobertaForSequenceClassification",
            Family::Electra => "ElectraForSequenceClassification",
            Family::DistilBert => "DistilBertForSequenceClassification",
            Family::MPNet => "MPNetForSequenceClassification",
        }
    }

    /// The prefix of the encoder's tensors in a full checkpoint.
    fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta | Family::XlmRoberta => "roberta.",
            Family::Electra => "electra.",
            Family::DistilBert => "distilbert.",
            Family::MPNet => "mpnet.",
        }
    }

    /// Whether token type ids reach the model (RoBERTa's single type is always 0).
    pub fn has_token_types(self) -> bool {
        matches!(self, Family::Bert | Family::Electra)
    }

    /// Whether the embeddings hold a token-type table (RoBERTa's has one row).
    pub fn has_token_type_embeddings(self) -> bool {
        !matches!(self, Family::DistilBert | Family::MPNet)
    }

    /// Whether positions count the tokens that are not the padding index from that
    /// index + 1 (fairseq's scheme; the index is `pad_token_id`, MPNet's always 1),
    /// rather than 0, 1, 2, ... for every slot.
    pub fn positions_after_padding(self) -> bool {
        matches!(self, Family::Roberta | Family::XlmRoberta | Family::MPNet)
    }

    pub fn has_relative_attention_bias(self) -> bool {
        self == Family::MPNet
    }

    /// Whether the attention block's output projection is followed by dropout
    /// (DistilBERT's is not).
    pub fn drops_attention_output(self) -> bool {
        self != Family::DistilBert
    }

    pub fn head(self) -> HeadKind {
        match self {
            Family::Bert => HeadKind::Pooler,
            Family::Roberta | Family::XlmRoberta | Family::MPNet => {
                HeadKind::Dense(HeadActivation::Tanh)
            }
            Family::Electra => HeadKind::Dense(HeadActivation::Gelu),
            Family::DistilBert => HeadKind::Dense(HeadActivation::Relu),
        }
    }

    /// A checkpoint's tensor name (prefixed or bare, as `weights::canonical_name`
    /// leaves it) as the crate names it. Canonical names are left as they are.
    pub fn canonical_name(self, name: &str) -> String {
        let n = match name.strip_prefix(self.prefix()) {
            Some(rest) => format!("bert.{rest}"),
            None => name.to_string(),
        };
        match self {
            Family::DistilBert => distilbert_to_canonical(&n),
            Family::MPNet => rename_parts(&n, &MPNET_PARTS, false),
            _ => n,
        }
    }

    /// A canonical tensor name as a checkpoint of this family names it.
    pub fn checkpoint_name(self, name: &str) -> String {
        let n = match self {
            Family::DistilBert => distilbert_from_canonical(name),
            Family::MPNet => rename_parts(name, &MPNET_PARTS, true),
            _ => name.to_string(),
        };
        match n.strip_prefix("bert.") {
            Some(rest) => format!("{}{rest}", self.prefix()),
            None => n,
        }
    }

    /// Every tensor of a checkpoint of this family under its canonical name.
    pub fn canonical_tensors(self, tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
        tensors
            .into_iter()
            .map(|(k, t)| (self.canonical_name(&k), t))
            .collect()
    }

    /// Canonical tensors under this family's checkpoint names.
    pub fn checkpoint_tensors(self, tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
        tensors
            .iter()
            .map(|(k, t)| (self.checkpoint_name(k), t.clone()))
            .collect()
    }

    /// config.json in this family's field names -> BERT's (DistilBERT's `dim`,
    /// `n_layers`, ... become `hidden_size`, `num_hidden_layers`, ...). Fields already
    /// in BERT's names are left alone.
    pub fn config_to_bert_names(self, config: &mut Map<String, Value>) {
        if self == Family::DistilBert {
            for (theirs, ours) in DISTILBERT_FIELDS {
                if let Some(v) = config.remove(theirs) {
                    config.entry(ours).or_insert(v);
                }
            }
        }
    }

    /// The reverse of [`Family::config_to_bert_names`], for writing config.json.
    pub fn config_to_family_names(self, config: &mut Map<String, Value>) {
        if self == Family::DistilBert {
            for (theirs, ours) in DISTILBERT_FIELDS {
                if let Some(v) = config.remove(ours) {
                    config.insert(theirs.into(), v);
                }
            }
            // Fixed in DistilBERT (LayerNorm eps 1e-12, no token types).
            config.remove("layer_norm_eps");
            config.remove("type_vocab_size");
        }
        if matches!(self, Family::MPNet) {
            config.remove("type_vocab_size");
        }
    }
}

/// DistilBERT's config fields and BERT's names for them.
const DISTILBERT_FIELDS: [(&str, &str); 7] = [
    ("dim", "hidden_size"),
    ("n_layers", "num_hidden_layers"),
    ("n_heads", "num_attention_heads"),
    ("hidden_dim", "intermediate_size"),
    ("activation", "hidden_act"),
    ("dropout", "hidden_dropout_prob"),
    ("attention_dropout", "attention_probs_dropout_prob"),
];

/// MPNet's attention names (within a layer) and BERT's.
const MPNET_PARTS: [(&str, &str); 5] = [
    (".attention.attn.q.", ".attention.self.query."),
    (".attention.attn.k.", ".attention.self.key."),
    (".attention.attn.v.", ".attention.self.value."),
    (".attention.attn.o.", ".attention.output.dense."),
    (".attention.LayerNorm.", ".attention.output.LayerNorm."),
];

/// DistilBERT's names within a layer and BERT's.
const DISTILBERT_PARTS: [(&str, &str); 8] = [
    (".attention.q_lin.", ".attention.self.query."),
    (".attention.k_lin.", ".attention.self.key."),
    (".attention.v_lin.", ".attention.self.value."),
    (".attention.out_lin.", ".attention.output.dense."),
    (".sa_layer_norm.", ".attention.output.LayerNorm."),
    (".ffn.lin1.", ".intermediate.dense."),
    (".ffn.lin2.", ".output.dense."),
    (".output_layer_norm.", ".output.LayerNorm."),
];

/// Replaces the first of `parts` found in `name` (`(theirs, ours)`; `reverse` maps
/// ours back to theirs).
fn rename_parts(name: &str, parts: &[(&str, &str)], reverse: bool) -> String {
    for (theirs, ours) in parts {
        let (from, to) = if reverse {
            (ours, theirs)
        } else {
            (theirs, ours)
        };
        if name.contains(from) {
            return name.replacen(from, to, 1);
        }
    }
    name.to_string()
}

fn distilbert_to_canonical(name: &str) -> String {
    let n = match name {
        "pre_classifier.weight" => return "classifier.dense.weight".into(),
        "pre_classifier.bias" => return "classifier.dense.bias".into(),
        "classifier.weight" => return "classifier.out_proj.weight".into(),
        "classifier.bias" => return "classifier.out_proj.bias".into(),
        _ => match name.strip_prefix("transformer.layer.") {
            // A bare DistilBertModel checkpoint.
            Some(rest) => format!("bert.encoder.layer.{rest}"),
            None => name.replacen("bert.transformer.layer.", "bert.encoder.layer.", 1),
        },
    };
    rename_parts(&n, &DISTILBERT_PARTS, false)
}

fn distilbert_from_canonical(name: &str) -> String {
    let n = match name {
        "classifier.dense.weight" => return "pre_classifier.weight".into(),
        "classifier.dense.bias" => return "pre_classifier.bias".into(),
        "classifier.out_proj.weight" => return "classifier.weight".into(),
        "classifier.out_proj.bias" => return "classifier.bias".into(),
        _ => name.replacen("bert.encoder.layer.", "bert.transformer.layer.", 1),
    };
    rename_parts(&n, &DISTILBERT_PARTS, true)
}

/// MPNet's bucket for the offset `key - query` (T5's bidirectional scheme: exact
/// buckets for small offsets, logarithmic ones up to `max_distance`, each sign half of
/// `num_buckets`).
pub fn relative_position_bucket(offset: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let n = -offset;
    let base = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    if n < max_exact {
        return (base + n) as usize;
    }
    // As transformers computes it: in f32, truncated towards zero.
    let log_ratio = ((n as f32 / max_exact as f32).ln()
        / (max_distance as f32 / max_exact as f32).ln())
        * (half - max_exact) as f32;
    let large = (max_exact + log_ratio as i64).min(half - 1);
    (base + large) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_every_family() {
        let canonical = [
            "bert.embeddings.word_embeddings.weight",
            "bert.encoder.layer.3.attention.self.query.weight",
            "bert.encoder.layer.3.attention.self.value.bias",
            "bert.encoder.layer.3.attention.output.dense.weight",
            "bert.encoder.layer.3.attention.output.LayerNorm.bias",
            "bert.encoder.layer.3.intermediate.dense.weight",
            "bert.encoder.layer.3.output.dense.bias",
            "bert.encoder.layer.3.output.LayerNorm.weight",
            "classifier.dense.weight",
            "classifier.out_proj.bias",
            "fit_denses.2.weight",
        ];
        for family in Family::ALL {
            for name in canonical {
                let theirs = family.checkpoint_name(name);
                assert_eq!(family.canonical_name(&theirs), name, "{family:?} {theirs}");
                // Canonical names are a fixed point of the reading direction.
                assert_eq!(family.canonical_name(name), name, "{family:?}");
            }
        }
    }

    #[test]
    fn checkpoint_names_are_transformers_names() {
        let d = Family::DistilBert;
        assert_eq!(
            d.checkpoint_name("bert.encoder.layer.0.attention.output.LayerNorm.weight"),
            "distilbert.transformer.layer.0.sa_layer_norm.weight"
        );
        assert_eq!(
            d.checkpoint_name("bert.encoder.layer.1.output.dense.bias"),
            "distilbert.transformer.layer.1.ffn.lin2.bias"
        );
        assert_eq!(
            d.checkpoint_name("classifier.dense.weight"),
            "pre_classifier.weight"
        );
        assert_eq!(
            d.checkpoint_name("classifier.out_proj.weight"),
            "classifier.weight"
        );
        assert_eq!(
            d.canonical_name("transformer.layer.2.ffn.lin1.weight"),
            "bert.encoder.layer.2.intermediate.dense.weight"
        );
        let m = Family::MPNet;
        assert_eq!(
            m.checkpoint_name("bert.encoder.layer.0.attention.output.dense.weight"),
            "mpnet.encoder.layer.0.attention.attn.o.weight"
        );
        assert_eq!(
            m.checkpoint_name("bert.encoder.relative_attention_bias.weight"),
            "mpnet.encoder.relative_attention_bias.weight"
        );
        assert_eq!(
            Family::XlmRoberta.checkpoint_name("bert.embeddings.LayerNorm.bias"),
            "roberta.embeddings.LayerNorm.bias"
        );
        assert_eq!(
            Family::Electra.canonical_name("electra.embeddings_project.weight"),
            "bert.embeddings_project.weight"
        );
    }

    #[test]
    fn other_model_types_are_refused_by_name() {
        let err = Family::from_model_type(Some("deberta-v2"), "m/config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("m/config.json"), "{err}");
        assert!(err.contains("`deberta-v2` (DeBERTa-v2/v3"), "{err}");
        assert!(err.contains("not supported yet"), "{err}");
        assert!(err.contains("bert, roberta, xlm-roberta, electra"), "{err}");
        let err = Family::from_model_type(Some("whisper"), "c").unwrap_err();
        assert!(err.to_string().contains("`whisper` is not a supported"));
        assert_eq!(Family::from_model_type(None, "c").unwrap(), Family::Bert);
    }

    #[test]
    fn distilbert_config_fields_round_trip() {
        let mut c: Map<String, Value> = serde_json::from_str(
            r#"{"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37,
                "activation": "gelu", "dropout": 0.1, "attention_dropout": 0.2,
                "vocab_size": 99}"#,
        )
        .unwrap();
        let before = c.clone();
        Family::DistilBert.config_to_bert_names(&mut c);
        assert_eq!(c["hidden_size"], 32);
        assert_eq!(c["attention_probs_dropout_prob"], 0.2);
        assert!(!c.contains_key("dim"));
        Family::DistilBert.config_to_family_names(&mut c);
        assert_eq!(c, before);
    }

    #[test]
    fn buckets_match_transformers() {
        // transformers' MPNetEncoder.relative_position_bucket (32 buckets, max distance
        // 128) at the offsets -130, -64, -20, -8, -7, -1, 0, 1,
        // 7, 8, 20, 64, 130.
        let offsets = [-130, -64, -20, -8, -7, -1, 0, 1, 7, 8, 20, 64, 130];
        let expected = [15, 14, 10, 8, 7, 1, 0, 17, 23, 24, 26, 30, 31];
        let got: Vec<usize> = offsets
            .iter()
            .map(|&o| relative_position_bucket(o, 32, 128))
            .collect();
        assert_eq!(got, expected);
    }
}
