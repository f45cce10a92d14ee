//! Resolving a model spec (folder or hub id) to files, and building models from them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use super::bert::{BertForMaskedLM, BertForSequenceClassification};
use super::config::BertConfig;
use super::params::{var_builder, Fresh, LoadReport, ParamSource};
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
        Ok(ModelFiles {
            spec: spec.to_string(),
            config,
            weights,
            tokenizer: tokenizer_files(source)?,
            commit: source.commit(),
        })
    }

    /// The tokenizer of a folder or hub id alone, without fetching the weights (for
    /// plans).
    pub fn read_tokenizer_only(spec: &str) -> Result<TextTokenizer> {
        let source = Location::parse(spec, RepoKind::Model)?.open()?;
        TextTokenizer::from_files(&tokenizer_files(&source)?)
    }

    pub fn read_config(&self) -> Result<BertConfig> {
        BertConfig::from_file(&self.config)
    }

    pub fn read_tokenizer(&self) -> Result<TextTokenizer> {
        TextTokenizer::from_files(&self.tokenizer)
    }

    /// Every tensor, under its canonical name whatever the family (`model::family`).
    pub fn read_weights(&self) -> Result<HashMap<String, Tensor>> {
        let family = self.read_config()?.family();
        Ok(family.canonical_tensors(read_weights(&self.weights)?))
    }

    /// Whether the checkpoint carries distillation projections (`fit_dense*`).
    pub fn holds_projections(&self) -> Result<bool> {
        Ok(super::weights::tensor_names(&self.weights)?
            .iter()
            .any(|n| n.starts_with("fit_dense")))
    }
}

fn tokenizer_files(source: &FileSource) -> Result<TokenizerFiles> {
    let optional =
        |name: &str| -> Result<Option<PathBuf>> { Ok(source.first_of(&[name])?.map(|(_, p)| p)) };
    let tokenizer_json = optional("tokenizer.json")?;
    // Kept even beside tokenizer.json: exports and fine-tuned folders ship it too.
    let vocab_txt = optional("vocab.txt")?;
    if tokenizer_json.is_none() && vocab_txt.is_none() {
        return Err(source.missing(&["tokenizer.json", "vocab.txt"]));
    }
    Ok(TokenizerFiles {
        tokenizer_json,
        vocab_txt,
        tokenizer_config: optional("tokenizer_config.json")?,
        special_tokens_map: optional("special_tokens_map.json")?,
    })
}

/// How to build a model from a checkpoint.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub device: Device,
    pub dtype: DType,
    /// Register every tensor as a trainable `Var`.
    pub trainable: bool,
    /// Which tensors the checkpoint may lack (created from a seed); anything else
    /// missing is an error naming them.
    pub fresh: Fresh,
}

impl BuildOptions {
    /// Frozen f32, every tensor required.
    pub fn inference(device: &Device) -> Self {
        BuildOptions {
            device: device.clone(),
            dtype: DType::F32,
            trainable: false,
            fresh: Fresh::Nothing,
        }
    }

    /// Trainable f32; a task head the checkpoint lacks is created from `seed`.
    pub fn training(device: &Device, seed: u64) -> Self {
        BuildOptions {
            device: device.clone(),
            dtype: DType::F32,
            trainable: true,
            fresh: Fresh::TaskAdditions { seed },
        }
    }

    /// Trainable f32 where every tensor the checkpoint lacks is drawn from `seed`: a
    /// random model, for tests and for students asked to start from scratch.
    pub fn random(device: &Device, seed: u64) -> Self {
        BuildOptions {
            fresh: Fresh::Anything { seed },
            ..Self::training(device, seed)
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
    config: &BertConfig,
    tensors: HashMap<String, Tensor>,
    options: &BuildOptions,
    make: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<M>,
) -> Result<Built<M>> {
    let mut tensors = tensors;
    if let Fresh::Anything { .. } = options.fresh {
        // A random model gets what transformers would compute, not random numbers.
        config.add_formula_tensors(&mut tensors)?;
    }
    let source = Arc::new(ParamSource::new(
        origin,
        tensors,
        options.trainable,
        options.fresh,
    ));
    let vb = var_builder(&source, options.dtype, &options.device);
    let model = make(vb).map_err(|e| Error::msg(format!("{origin}: {e}")))?;
    Ok(Built {
        model,
        varmap: source.varmap().cloned(),
        report: source.checked_report(config.model_type.as_deref())?,
    })
}

pub fn build_classifier(
    origin: &str,
    config: &BertConfig,
    tensors: HashMap<String, Tensor>,
    options: &BuildOptions,
) -> Result<Built<BertForSequenceClassification>> {
    build(origin, config, tensors, options, |vb| {
        BertForSequenceClassification::new(vb, config)
    })
}

pub fn build_masked_lm(
    origin: &str,
    config: &BertConfig,
    tensors: HashMap<String, Tensor>,
    options: &BuildOptions,
) -> Result<Built<BertForMaskedLM>> {
    build(origin, config, tensors, options, |vb| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_config;

    /// A random one-layer classifier's tensors (25: 5 embedding, 16 layer, pooler 2,
    /// classifier 2) and its config.
    fn tiny_checkpoint() -> (BertConfig, HashMap<String, Tensor>) {
        let mut config = tiny_config(16, 1, 2, 32);
        config.set_labels(&["a".into(), "b".into()]);
        let built = build_classifier(
            "random",
            &config,
            HashMap::new(),
            &BuildOptions::random(&Device::Cpu, 3),
        )
        .unwrap();
        let varmap = built.varmap.unwrap();
        let tensors = crate::model::params::named_tensors(&varmap);
        (config, tensors)
    }

    fn mismatch(err: Error) -> (Vec<String>, String) {
        let text = err.to_string();
        match err {
            Error::CheckpointMismatch { missing, .. } => (missing, text),
            other => panic!("expected a checkpoint mismatch, got {other}"),
        }
    }

    #[test]
    fn another_family_is_refused_instead_of_reinitialised() {
        // A RoBERTa checkpoint whose config says it is a BERT.
        let (config, tensors) = tiny_checkpoint();
        let renamed: HashMap<_, _> = tensors
            .into_iter()
            .map(|(k, t)| (k.replacen("bert.", "roberta.", 1), t))
            .collect();
        // Training may add the pooler; inference needs it from the checkpoint too.
        for (options, rejected) in [
            (BuildOptions::training(&Device::Cpu, 1), 21),
            (BuildOptions::inference(&Device::Cpu), 23),
        ] {
            let err = build_classifier("ckpt/roberta", &config, renamed.clone(), &options)
                .err()
                .expect("a foreign checkpoint must not build");
            let (missing, text) = mismatch(err);
            assert_eq!(missing.len(), rejected, "{text}");
            assert!(
                missing.iter().all(|n| n.starts_with("bert.")),
                "{missing:?}"
            );
            assert!(text.starts_with("ckpt/roberta: "), "{text}");
            assert_eq!(text.matches("ckpt/roberta").count(), 1, "{text}");
            assert!(text.contains("model_type `bert`"), "{text}");
            assert!(
                text.contains(&format!("{rejected} of the 25 tensors")),
                "{text}"
            );
            assert!(text.contains("It holds `roberta."), "{text}");
            assert!(text.contains("student.from = \"random\""), "{text}");
        }
        // Asked for explicitly, a random model builds from the same files.
        let built = build_classifier(
            "ckpt/roberta",
            &config,
            renamed,
            &BuildOptions::random(&Device::Cpu, 1),
        )
        .unwrap();
        assert_eq!(built.report.created.len(), 23);
    }

    #[test]
    fn one_missing_encoder_tensor_is_named() {
        let (config, mut tensors) = tiny_checkpoint();
        let gone = "bert.encoder.layer.0.attention.self.query.weight";
        tensors.remove(gone).unwrap();
        let err = build_classifier(
            "ckpt",
            &config,
            tensors,
            &BuildOptions::training(&Device::Cpu, 1),
        )
        .err()
        .expect("a missing encoder tensor must not be created");
        let (missing, text) = mismatch(err);
        assert_eq!(missing, vec![gone.to_string()]);
        assert!(text.contains("1 of the 25 tensors"), "{text}");
        assert!(text.contains("model_type `bert`"), "{text}");
    }

    #[test]
    fn the_task_head_and_pooler_are_created_for_training_only() {
        let (config, mut tensors) = tiny_checkpoint();
        tensors.retain(|k, _| !k.starts_with("classifier.") && !k.starts_with("bert.pooler."));
        let built = build_classifier(
            "encoder",
            &config,
            tensors.clone(),
            &BuildOptions::training(&Device::Cpu, 1),
        )
        .unwrap();
        assert_eq!(
            built.report.created,
            [
                "bert.pooler.dense.bias",
                "bert.pooler.dense.weight",
                "classifier.bias",
                "classifier.weight"
            ]
        );
        assert_eq!(built.report.loaded, 21);
        let err = build_classifier(
            "encoder",
            &config,
            tensors,
            &BuildOptions::inference(&Device::Cpu),
        )
        .err()
        .expect("inference needs the head");
        let (_, text) = mismatch(err);
        assert!(text.contains("no sequence-classification head"), "{text}");
        assert!(text.contains("candle-distill finetune"), "{text}");
    }

    #[test]
    fn a_masked_lm_needs_its_head() {
        let (config, tensors) = tiny_checkpoint();
        let err = build_masked_lm(
            "encoder",
            &config,
            tensors,
            &BuildOptions::inference(&Device::Cpu),
        )
        .err()
        .expect("an MLM without its head must not build");
        let (missing, text) = mismatch(err);
        assert!(missing.iter().all(|n| n.starts_with("cls.")), "{missing:?}");
        assert!(text.contains("no masked-LM head"), "{text}");
    }
}
