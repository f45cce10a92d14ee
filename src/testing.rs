//! Tiny random models written to disk in the Hugging Face layout, for tests, benches
//! and trying the tool without downloads. Nothing here is used by a real run.

use std::path::Path;

pub mod pth;

use candle_core::{DType, Device};

use crate::model::{build_classifier, build_masked_lm, BertConfig, BuildOptions, Family};
use crate::{Error, Result};

/// Words of the tiny vocabulary (besides special tokens, letters and `##` letters).
pub const TINY_WORDS: &[&str] = &[
    "the", "a", "an", "is", "was", "it", "this", "that", "movie", "film", "story", "good", "bad",
    "great", "awful", "fun", "dull", "love", "hate", "best", "worst", "very", "not", "and", "but",
    "of", "to", "in", "with", "for", "on", "at", "by", "cat", "dog", "man", "woman", "house",
    "car", "red", "blue", "green", "big", "small", "happy", "sad", "run", "walk", "eat", "see",
    "play", "book", "day", "night", "time", "city", "river", "music", "song", "actor", "plot",
    "scene", "funny", "boring", "nice", "poor", "bright", "dark", "old", "new", "he", "she",
    "they", "we", "you", "i", ".", ",", "!", "?", "'", "s",
];

/// A random 4-layer, 32-wide teacher with labels `a` and `b`, built in memory on
/// `device`, and its config. Deterministic in `seed`.
pub fn tiny_teacher(
    device: &Device,
    seed: u64,
) -> Result<(BertConfig, crate::model::BertForSequenceClassification)> {
    let mut config = tiny_config(32, 4, 4, 64);
    config.set_labels(&["a".into(), "b".into()]);
    let built = build_classifier(
        "tiny-teacher",
        &config,
        Default::default(),
        &BuildOptions {
            fresh: crate::model::Fresh::Anything { seed },
            ..BuildOptions::inference(device)
        },
    )?;
    Ok((config, built.model))
}

/// `n` random sentences of 2 to 11 tiny-vocabulary words (at most 24 tokens), labelled
/// 0, 1, 0, 1...: training data for trainer tests. Deterministic in `seed`.
pub fn tiny_train_examples(
    tokenizer: &crate::tokenizer::TextTokenizer,
    n: usize,
    seed: u64,
) -> Result<crate::data::EncodedDataset> {
    let mut rng = crate::rng::Rng::new(seed);
    let encodings = (0..n)
        .map(|_| {
            let words = 2 + rng.below(10);
            let text: Vec<&str> = (0..words)
                .map(|_| TINY_WORDS[rng.below(TINY_WORDS.len())])
                .collect();
            tokenizer.encode(&text.join(" "), None, 24)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(crate::data::EncodedDataset {
        encodings,
        labels: (0..n).map(|i| crate::data::Label::Class(i % 2)).collect(),
        regression: false,
        pad_id: tokenizer.pad_id(),
    })
}

/// What the trainer tests distil from: the tiny tokenizer (written under `dir/tok`),
/// the tiny teacher, `rows` training sentences and the teacher's logits on them.
pub struct TinyDistillation {
    pub tokenizer: crate::tokenizer::TextTokenizer,
    pub teacher_config: BertConfig,
    pub teacher: crate::model::BertForSequenceClassification,
    pub examples: crate::data::EncodedDataset,
    pub logits: candle_core::Tensor,
}

impl TinyDistillation {
    pub fn new(dir: &Path, rows: usize, device: &Device) -> Result<Self> {
        let tok_dir = dir.join("tok");
        if !tok_dir.join("tokenizer.json").is_file() {
            write_tiny_tokenizer(&tok_dir)?;
        }
        let tokenizer =
            crate::tokenizer::TextTokenizer::from_files(&crate::tokenizer::TokenizerFiles {
                tokenizer_json: Some(tok_dir.join("tokenizer.json")),
                ..Default::default()
            })?;
        let (teacher_config, teacher) = tiny_teacher(device, 5)?;
        let examples = tiny_train_examples(&tokenizer, rows, 9)?;
        let logits = crate::distill::cache::model_logits(&teacher, &examples, 16, device)?;
        Ok(TinyDistillation {
            tokenizer,
            teacher_config,
            teacher,
            examples,
            logits,
        })
    }

    /// A student built from `init` against this teacher (labels `a`, `b`; seed 3).
    pub fn student(
        &self,
        init: &crate::distill::StudentInit,
        device: &Device,
    ) -> Result<crate::distill::Student> {
        let none = std::collections::HashMap::new();
        let parts = crate::distill::TeacherParts {
            config: &self.teacher_config,
            tensors: &none,
            tokenizer: &self.tokenizer,
        };
        let spec = crate::distill::StudentSpec::from(init.clone());
        crate::distill::build_student(&spec, &parts, &["a".into(), "b".into()], 3, device)
    }
}

/// TinyBERT's two task stages with `trainer`: intermediate, then prediction (on
/// `logits` when given, else on the teacher's live outputs). `adjust` may change each
/// stage before it runs.
pub fn run_two_stages(
    trainer: &crate::distill::Trainer,
    settings: &crate::distill::TrainSettings,
    data: &crate::data::EncodedDataset,
    logits: Option<&candle_core::Tensor>,
    seed: u64,
    adjust: impl Fn(&mut crate::distill::Stage),
) -> Result<()> {
    use crate::distill::{LayerMap, Stage, StageKind};
    let layer_map = LayerMap::default();
    for (index, kind) in [StageKind::Intermediate, StageKind::Prediction]
        .into_iter()
        .enumerate()
    {
        let mut stage = Stage {
            index,
            name: if index == 0 {
                "intermediate"
            } else {
                "prediction"
            },
            kind,
            losses: kind.default_losses(),
            layer_map: &layer_map,
            settings,
            data: data.into(),
            teacher_logits: if index == 1 { logits } else { None },
            keep_best: false,
            seed,
        };
        adjust(&mut stage);
        trainer.run_stage(&stage, None)?;
    }
    Ok(())
}

/// The tiny vocabulary in id order.
pub fn tiny_vocab() -> Vec<String> {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend(TINY_WORDS.iter().map(|s| s.to_string()));
    for c in 'a'..='z' {
        let s = c.to_string();
        if !vocab.contains(&s) {
            vocab.push(s);
        }
        vocab.push(format!("##{c}"));
    }
    vocab
}

/// A config of the given shape over the tiny vocabulary.
pub fn tiny_config(hidden: usize, layers: usize, heads: usize, intermediate: usize) -> BertConfig {
    let mut config =
        BertConfig::with_shape(tiny_vocab().len(), hidden, layers, heads, intermediate);
    config.max_position_embeddings = 128;
    config.architectures = Some(vec!["BertForSequenceClassification".into()]);
    config
}

/// [`tiny_config`] as a checkpoint of `family` would have it: its `model_type`, and
/// ELECTRA's narrower embeddings (so the projection is exercised).
pub fn tiny_family_config(
    family: Family,
    hidden: usize,
    layers: usize,
    heads: usize,
    intermediate: usize,
) -> BertConfig {
    let mut config = tiny_config(hidden, layers, heads, intermediate);
    config.model_type = Some(family.model_type().into());
    config.architectures = Some(vec![family.classifier_architecture().into()]);
    if family == Family::Electra {
        config
            .extra
            .insert("embedding_size".into(), (hidden / 2).into());
    }
    config
}

/// Writes `vocab.txt`, `tokenizer_config.json` and `tokenizer.json` for the tiny vocabulary.
pub fn write_tiny_tokenizer(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let vocab_path = dir.join("vocab.txt");
    crate::io::write_atomic(&vocab_path, (tiny_vocab().join("\n") + "\n").as_bytes())?;
    crate::io::write_atomic(
        &dir.join("tokenizer_config.json"),
        br#"{"do_lower_case": true, "tokenizer_class": "BertTokenizer", "model_max_length": 128}"#,
    )?;
    let tok = crate::tokenizer::TextTokenizer::from_files(&crate::tokenizer::TokenizerFiles {
        vocab_txt: Some(vocab_path),
        tokenizer_config: Some(dir.join("tokenizer_config.json")),
        ..Default::default()
    })?;
    let json_path = dir.join("tokenizer.json");
    tok.inner()
        .save(&json_path, true)
        .map_err(|e| Error::Tokenizer {
            path: json_path.display().to_string(),
            message: e.to_string(),
        })
}

/// Writes a random `BertForSequenceClassification` (config, safetensors, tokenizer) to `dir`.
pub fn write_random_classifier(dir: &Path, config: &BertConfig, seed: u64) -> Result<()> {
    let built = build_classifier(
        "random",
        config,
        Default::default(),
        &BuildOptions::random(&Device::Cpu, seed),
    )?;
    let varmap = built.varmap.expect("trainable build has a varmap");
    write_varmap_model(dir, config, &varmap)
}

/// Writes a random `BertForMaskedLM` to `dir` (decoder tied to the word embeddings).
pub fn write_random_masked_lm(dir: &Path, config: &BertConfig, seed: u64) -> Result<()> {
    let mut config = config.clone();
    config.architectures = Some(vec!["BertForMaskedLM".into()]);
    let built = build_masked_lm(
        "random",
        &config,
        Default::default(),
        &BuildOptions::random(&Device::Cpu, seed),
    )?;
    let varmap = built.varmap.expect("trainable build has a varmap");
    write_varmap_model(dir, &config, &varmap)
}

fn write_varmap_model(dir: &Path, config: &BertConfig, varmap: &candle_nn::VarMap) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors = crate::model::params::named_tensors(varmap)
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    // In the family's own layout, as transformers would save it.
    let tensors = config.family().checkpoint_tensors(&tensors);
    crate::model::weights::save_safetensors(&tensors, &dir.join("model.safetensors"))?;
    crate::io::write_json(&dir.join("config.json"), &config.to_family_json()?)?;
    write_tiny_tokenizer(dir)
}

/// A tiny trained-looking student checkpoint: a 2-label classifier plus the
/// training-only projection (`fit_denses.0.*`) that a TinyBERT checkpoint carries and
/// export must leave out. Deterministic in `seed`, so tests can compare against
/// committed reference outputs.
pub fn write_tiny_student(dir: &Path, seed: u64) -> Result<()> {
    let mut config = tiny_config(32, 2, 4, 64);
    config.set_labels(&["negative".to_string(), "positive".to_string()]);
    write_random_classifier(dir, &config, seed)?;
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    // At the 0.02 init scale attention is uniform and every input gets about the same
    // logits; larger dense weights make the outputs depend on the input, as a trained
    // model's do, so comparisons against references can fail.
    for (name, t) in tensors.iter_mut() {
        if name.ends_with(".weight") && !name.contains("embeddings") && !name.contains("LayerNorm")
        {
            *t = (&*t * 10.0)?;
        }
    }
    let mut rng = crate::rng::Rng::new(seed ^ 0x5eed);
    let teacher_hidden = 48;
    let mut normal = |n: usize| -> Vec<f32> { (0..n).map(|_| 0.02 * rng.normal()).collect() };
    tensors.insert(
        "fit_denses.0.weight".into(),
        candle_core::Tensor::from_vec(
            normal(teacher_hidden * 32),
            (teacher_hidden, 32),
            &Device::Cpu,
        )?,
    );
    tensors.insert(
        "fit_denses.0.bias".into(),
        candle_core::Tensor::from_vec(normal(teacher_hidden), teacher_hidden, &Device::Cpu)?,
    );
    crate::model::weights::save_safetensors(&tensors, &path)
}

/// The largest absolute difference between two tensors of one shape (for checks of a
/// fused op against its composition).
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("tensors of one shape")
}

/// The largest difference between two tensors of one shape relative to `1 + |b|`: for
/// values such as masked attention scores near -10000, where one f32 step is 0.001 and
/// a fused op that rounds once differs from its composition by that much.
pub fn max_rel_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| {
            let scale = (b.abs()? + 1.0)?;
            (d.abs()? / scale)?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()
        })
        .expect("tensors of one shape")
}
