//! Tiny random Marian models in the Helsinki-NLP folder layout, for tests and benches.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::marian::MTModel;

use super::spm::SpmModel;
use crate::rng::Rng;
use crate::{Error, Result};

/// Shape and bias of a tiny Marian model.
#[derive(Debug, Clone)]
pub struct TinyMarian {
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub max_positions: usize,
    /// Added to `</s>`'s logit: large positive ends every sentence at once, large
    /// negative never ends one.
    pub eos_bias: f32,
    pub seed: u64,
}

impl Default for TinyMarian {
    fn default() -> Self {
        TinyMarian {
            d_model: 32,
            layers: 2,
            heads: 4,
            ffn: 64,
            max_positions: 64,
            eos_bias: 0.0,
            seed: 0,
        }
    }
}

/// Writes config.json, model.safetensors, source.spm/target.spm (copies of `spm`) and a
/// vocab.json as opus-mt has it (`</s>` = 0, `<unk>` = 1, the pieces, `<pad>` last).
/// Random weights: N(0, 0.3) except LayerNorm weights (1) and biases (0).
pub fn write_random_marian(dir: &Path, spm: &Path, shape: &TinyMarian) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let model = SpmModel::from_file(spm)?;
    let mut vocab: Vec<String> = vec!["</s>".into(), "<unk>".into()];
    // Reverse spm order, so vocab ids differ from spm ids (as in real Marian vocabularies).
    for p in model.pieces.iter().rev() {
        if !matches!(p.piece.as_str(), "<unk>" | "<s>" | "</s>") {
            vocab.push(p.piece.clone());
        }
    }
    vocab.push("<pad>".into());
    let v = vocab.len();
    let vocab_json: HashMap<&str, usize> = vocab
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    crate::io::write_json(&dir.join("vocab.json"), &vocab_json)?;
    for name in ["source.spm", "target.spm"] {
        std::fs::copy(spm, dir.join(name)).map_err(|e| Error::io(dir.join(name), e))?;
    }
    let config = serde_json::json!({
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": v,
        "decoder_vocab_size": v,
        "max_position_embeddings": shape.max_positions,
        "encoder_layers": shape.layers,
        "decoder_layers": shape.layers,
        "encoder_ffn_dim": shape.ffn,
        "decoder_ffn_dim": shape.ffn,
        "encoder_attention_heads": shape.heads,
        "decoder_attention_heads": shape.heads,
        "d_model": shape.d_model,
        "activation_function": "swish",
        "scale_embedding": true,
        "decoder_start_token_id": v - 1,
        "pad_token_id": v - 1,
        "eos_token_id": 0,
        "forced_eos_token_id": 0,
        "bad_words_ids": [[v - 1]],
    });
    crate::io::write_json(&dir.join("config.json"), &config)?;
    let cfg = super::marian::read_config(&dir.join("config.json"))?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    MTModel::new(&cfg, vb)?;
    let mut rng = Rng::new(shape.seed);
    let mut tensors = HashMap::new();
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let shape_of = data[name].as_tensor().dims().to_vec();
        let n: usize = shape_of.iter().product();
        let values: Vec<f32> = if name.contains("layer_norm") && name.ends_with("weight") {
            vec![1.0; n]
        } else if name.contains("layer_norm") || name.ends_with("bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| 0.3 * rng.normal()).collect()
        };
        let mut values = values;
        if name == "final_logits_bias" {
            values[0] = shape.eos_bias;
        }
        tensors.insert(
            name.clone(),
            Tensor::from_vec(values, shape_of, &Device::Cpu)?,
        );
    }
    crate::model::weights::save_safetensors(&tensors, &dir.join("model.safetensors"))
}
