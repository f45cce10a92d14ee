//! Resolving a model spec (folder or hub id) to files, and building models from them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use super::bert::{BertForMaskedLM, BertForSequenceClassification};
use super::config::BertConfig;
use super::params::{var_builder, LoadReport, ParamSource};
use super::weights::{read_weights, shards_from_index, WeightFiles};
use crate::hub::{FileSource, Location, RepoKind};
use crate::tokenizer::{TextTokenizer, TokenizerFiles};
use crate::{Error, Result};

/// Every file a BERT checkpoint is made of, resolved to local paths.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The spec as the user gave it, for messages and reports.
    pub spec: String,
    pub config: PathBuf,
    pub weights: WeightFiles,
    pub tokenizer: TokenizerFiles,
    /// The hub commit the files come from; `None` for a local folder.
    pub commit: Option<String>,
}

const WEIGHT_CANDIDATES: [&str; 3] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
];

impl ModelFiles {
    /// Resolves a local folder or hub id (`org/name[@revision]`).
    pub fn resolve(spec: &str) -> Result<Self> {
        let source = Location::parse(spec, RepoKind::Model)?.open()?;
        Self::from_source(spec, &source)
    }

    pub fn from_source(spec: &str, source: &FileSource) -> Result<Self> {
        let config = source.require("config.json")?;
        let weights = match source.first_of(&WEIGHT_CANDIDATES)? {
            Some((name, path)) if name == "model.safetensors.index.json" => {
                let shards = shards_from_index(&path)?
                    .iter()
                    .map(|s| source.require(s))
                    .collect::<Result<Vec<_>>>()?;
                WeightFiles::Safetensors(shards)
            }
            Some((name, path)) if name == "pytorch_model.bin" => WeightFiles::PytorchBin(path),
            Some((_, path)) => WeightFiles::Safetensors(vec![path]),
            None => return Err(source.missing(&WEIGHT_CANDIDATES)),
        };
        let optional = |name: &str| -> Result<Option<PathBuf>> {
            Ok(source.first_of(&[name])?.map(|(_, p)| p))
        };
        let tokenizer_json = optional("tokenizer.json")?;
        // Kept even beside tokenizer.json: exports and fine-tuned folders ship it too.
        let vocab_txt = optional("vocab.txt")?;
        if tokenizer_json.is_none() && vocab_txt.is_none() {
            return Err(source.missing(&["tokenizer.json", "vocab.txt"]));
        }
        Ok(ModelFiles {
            spec: spec.to_string(),
            config,
            weights,
            tokenizer: TokenizerFiles {
                tokenizer_json,
                vocab_txt,
                tokenizer_config: optional("tokenizer_config.json")?,
                special_tokens_map: optional("special_tokens_map.json")?,
            },
            commit: source.commit(),
        })
    }

    pub fn read_config(&self) -> Result<BertConfig> {
        BertConfig::from_file(&self.config)
    }

    pub fn read_tokenizer(&self) -> Result<TextTokenizer> {
        TextTokenizer::from_files(&self.tokenizer)
    }

    pub fn read_weights(&self) -> Result<HashMap<String, Tensor>> {
        read_weights(&self.weights)
    }
}

/// How to build a model from a checkpoint.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub device: Device,
    pub dtype: DType,
    /// Register every tensor as a trainable `Var`.
    pub trainable: bool,
    /// Seed for tensors the checkpoint lacks (a new head); `None` makes them an error.
    pub init_seed: Option<u64>,
}

impl BuildOptions {
    /// Frozen f32 on the CPU, every tensor required.
    pub fn inference(device: &Device) -> Self {
        BuildOptions {
            device: device.clone(),
            dtype: DType::F32,
            trainable: false,
            init_seed: None,
        }
    }

    pub fn training(device: &Device, seed: u64) -> Self {
        BuildOptions {
            device: device.clone(),
            dtype: DType::F32,
            trainable: true,
            init_seed: Some(seed),
        }
    }
}

/// A model built from tensors, with what was loaded, created and left over.
pub struct Built<M> {
    pub model: M,
    pub varmap: Option<VarMap>,
    pub report: LoadReport,
}

fn build<M>(
    origin: &str,
    tensors: HashMap<String, Tensor>,
    options: &BuildOptions,
    make: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<M>,
) -> Result<Built<M>> {
    let source = Arc::new(ParamSource::new(
        origin,
        tensors,
        options.trainable,
        options.init_seed,
    ));
    let vb = var_builder(&source, options.dtype, &options.device);
    let model = make(vb).map_err(|e| Error::Weights {
        path: origin.to_string(),
        name: "*".into(),
        message: e.to_string(),
    })?;
    Ok(Built {
        model,
        varmap: source.varmap().cloned(),
        report: source.report(),
    })
}

pub fn build_classifier(
    origin: &str,
    config: &BertConfig,
    tensors: HashMap<String, Tensor>,
    options: &BuildOptions,
) -> Result<Built<BertForSequenceClassification>> {
    build(origin, tensors, options, |vb| {
        BertForSequenceClassification::new(vb, config)
    })
}

pub fn build_masked_lm(
    origin: &str,
    config: &BertConfig,
    tensors: HashMap<String, Tensor>,
    options: &BuildOptions,
) -> Result<Built<BertForMaskedLM>> {
    build(origin, tensors, options, |vb| {
        BertForMaskedLM::new(vb, config)
    })
}

/// A checkpoint's config, tokenizer and classifier, ready to run.
pub struct LoadedClassifier {
    pub files: ModelFiles,
    pub config: BertConfig,
    pub tokenizer: TextTokenizer,
    pub built: Built<BertForSequenceClassification>,
}

/// Loads a sequence classifier. `num_labels` overrides the config's head size when the
/// checkpoint has no head yet (a pre-trained encoder about to be fine-tuned).
pub fn load_classifier(spec: &str, options: &BuildOptions) -> Result<LoadedClassifier> {
    let files = ModelFiles::resolve(spec)?;
    let config = files.read_config()?;
    let tokenizer = files.read_tokenizer()?;
    let tensors = files.read_weights()?;
    let built = build_classifier(spec, &config, tensors, options)?;
    if !built.report.created.is_empty() {
        tracing::info!(
            "{spec}: initialised {} tensors that the checkpoint lacks: {}",
            built.report.created.len(),
            built.report.created.join(", ")
        );
    }
    Ok(LoadedClassifier {
        files,
        config,
        tokenizer,
        built,
    })
}
