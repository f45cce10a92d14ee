//! Marian (opus-mt) translation models: files, tokenizers and a generation loop.
//!
//! candle-transformers' `MTModel` runs the encoder and the cached decoder; what it lacks
//! is here: loading a Helsinki-NLP folder (config.json, weights, `source.spm`,
//! `target.spm`, `vocab.json`), tokenisation without `tokenizer.json`, and greedy or
//! temperature/top-p sampled decoding that stops at EOS or a length limit.
//!
//! Its encoder takes no padding mask (and neither does the cross-attention), so a padded
//! batch would change results. Batches therefore hold sources of EQUAL token length only:
//! [`MarianTranslator::generate`] groups them, and every row decodes with its own random
//! stream, so batching never changes a result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::marian::{Config as CandleMarianConfig, MTModel};
use tokenizers::Tokenizer;

use super::spm::load_spm_tokenizer;
use crate::hub::{Location, RepoKind};
use crate::model::weights::{read_weights, WeightFiles};
use crate::rng::Rng;
use crate::{Error, Result};

/// The files of a Marian checkpoint, resolved to local paths.
#[derive(Debug, Clone)]
pub struct MarianFiles {
    pub spec: String,
    pub config: PathBuf,
    pub weights: WeightFiles,
    pub source_spm: PathBuf,
    pub target_spm: PathBuf,
    pub vocab: PathBuf,
}

impl MarianFiles {
    /// A local folder or a hub id (`Helsinki-NLP/opus-mt-en-de[@revision]`).
    pub fn resolve(spec: &str) -> Result<Self> {
        let source = Location::parse(spec, RepoKind::Model)?.open()?;
        let weights = match source.first_of(&["model.safetensors", "pytorch_model.bin"])? {
            Some((name, path)) if name == "pytorch_model.bin" => WeightFiles::PytorchBin(path),
            Some((_, path)) => WeightFiles::Safetensors(vec![path]),
            None => return Err(source.missing(&["model.safetensors", "pytorch_model.bin"])),
        };
        Ok(MarianFiles {
            spec: spec.to_string(),
            config: source.require("config.json")?,
            weights,
            source_spm: source.require("source.spm")?,
            target_spm: source.require("target.spm")?,
            vocab: source.require("vocab.json")?,
        })
    }

    /// Every file, for cache keys.
    pub fn all_paths(&self) -> Vec<&Path> {
        let mut v = vec![
            self.config.as_path(),
            self.source_spm.as_path(),
            self.target_spm.as_path(),
            self.vocab.as_path(),
        ];
        v.extend(self.weights.paths());
        v
    }
}

/// Reads a Marian config.json into candle's config, filling fields older opus-mt
/// configs omit with transformers' defaults.
pub fn read_config(path: &Path) -> Result<CandleMarianConfig> {
    let mut value: serde_json::Value = crate::io::read_json(path)?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| Error::invalid(path.display(), "config", "expected a JSON object"))?;
    let eos = obj.get("eos_token_id").cloned().unwrap_or(0.into());
    obj.entry("forced_eos_token_id").or_insert(eos);
    obj.entry("use_cache").or_insert(true.into());
    obj.entry("is_encoder_decoder").or_insert(true.into());
    obj.entry("share_encoder_decoder_embeddings")
        .or_insert(true.into());
    obj.entry("scale_embedding").or_insert(true.into());
    obj.entry("activation_function").or_insert("swish".into());
    let config: CandleMarianConfig =
        serde_json::from_value(value).map_err(|e| Error::invalid(path.display(), "config", e))?;
    if !config.share_encoder_decoder_embeddings {
        return Err(Error::invalid(
            path.display(),
            "share_encoder_decoder_embeddings",
            "false is not supported (candle's Marian shares one embedding)",
        ));
    }
    Ok(config)
}

/// Marian's tokenisation: SentencePiece pieces from `source.spm`, ids from
/// `vocab.json` (unknown pieces -> `<unk>`), then `</s>`. Decoding joins the target
/// pieces and turns `▁` back into spaces, as sentencepiece's `DecodePieces` does.
pub struct MarianTokenizer {
    source: Tokenizer,
    vocab: HashMap<String, u32>,
    pieces: Vec<String>,
    pub eos_id: u32,
    pub pad_id: u32,
    pub unk_id: u32,
}

impl MarianTokenizer {
    pub fn from_files(
        source_spm: &Path,
        vocab_json: &Path,
        pad_id: u32,
        eos_id: u32,
    ) -> Result<Self> {
        let (_, source) = load_spm_tokenizer(source_spm)?;
        let vocab: HashMap<String, u32> = crate::io::read_json(vocab_json)?;
        let size = vocab.values().copied().max().map_or(0, |m| m as usize + 1);
        let mut pieces = vec![String::new(); size];
        for (piece, &id) in &vocab {
            pieces[id as usize] = piece.clone();
        }
        let unk_id = *vocab.get("<unk>").ok_or_else(|| Error::Tokenizer {
            path: vocab_json.display().to_string(),
            message: "vocabulary has no `<unk>` entry".into(),
        })?;
        Ok(MarianTokenizer {
            source,
            vocab,
            pieces,
            eos_id,
            pad_id,
            unk_id,
        })
    }

    /// Token ids of `text` followed by `</s>`, cut to `max_len` (the `</s>` kept).
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        let enc = self
            .source
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                path: "source.spm".into(),
                message: e.to_string(),
            })?;
        let mut ids: Vec<u32> = enc
            .get_tokens()
            .iter()
            .map(|p| self.vocab.get(p).copied().unwrap_or(self.unk_id))
            .collect();
        ids.truncate(max_len.saturating_sub(1));
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Text of generated ids; special ids (`</s>`, `<pad>`, `<unk>`) are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut text = String::new();
        for &id in ids {
            if id == self.eos_id || id == self.pad_id || id == self.unk_id {
                continue;
            }
            if let Some(p) = self.pieces.get(id as usize) {
                text.push_str(p);
            }
        }
        text.replace('▁', " ").trim().to_string()
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
}

/// How each next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Sampling {
    Greedy,
    /// Softmax at `temperature`, restricted to the smallest set of tokens whose
    /// probability reaches `top_p`.
    TopP {
        temperature: f64,
        top_p: f64,
    },
}

/// Chooses a token from one row of logits. The pad token is never chosen (transformers
/// forbids it for Marian with `bad_words_ids`).
pub fn choose(logits: &[f32], sampling: Sampling, banned: u32, rng: &mut Rng) -> u32 {
    let allowed = |i: usize| i != banned as usize;
    match sampling {
        Sampling::Greedy => {
            let mut best = (f32::NEG_INFINITY, 0usize);
            for (i, &v) in logits.iter().enumerate() {
                if allowed(i) && v > best.0 {
                    best = (v, i);
                }
            }
            best.1 as u32
        }
        Sampling::TopP { temperature, top_p } => {
            let t = temperature.max(1e-6);
            let max = logits
                .iter()
                .enumerate()
                .filter(|(i, _)| allowed(*i))
                .map(|(_, &v)| f64::from(v))
                .fold(f64::NEG_INFINITY, f64::max);
            let mut probs: Vec<(usize, f64)> = logits
                .iter()
                .enumerate()
                .filter(|(i, _)| allowed(*i))
                .map(|(i, &v)| (i, ((f64::from(v) - max) / t).exp()))
                .collect();
            let total: f64 = probs.iter().map(|p| p.1).sum();
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut kept = 0;
            let mut mass = 0.0;
            for p in &probs {
                kept += 1;
                mass += p.1 / total;
                if mass >= top_p {
                    break;
                }
            }
            probs.truncate(kept.max(1));
            let kept_total: f64 = probs.iter().map(|p| p.1).sum();
            let mut u = rng.next_f64() * kept_total;
            for &(i, p) in &probs {
                if u < p {
                    return i as u32;
                }
                u -= p;
            }
            probs[probs.len() - 1].0 as u32
        }
    }
}

/// Decoding settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerateOptions {
    pub sampling: Sampling,
    /// Most tokens generated per sentence, `</s>` included.
    pub max_len: usize,
    /// Most sentences per forward pass.
    pub batch_size: usize,
}

/// One translation direction: model, tokenizer, device.
pub struct MarianTranslator {
    model: MTModel,
    pub tokenizer: MarianTokenizer,
    config: CandleMarianConfig,
    device: Device,
}

impl MarianTranslator {
    pub fn load(files: &MarianFiles, device: &Device, dtype: DType) -> Result<Self> {
        let config = read_config(&files.config)?;
        let tensors = read_weights(&files.weights)?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        let model = MTModel::new(&config, vb).map_err(|e| Error::Weights {
            path: files.spec.clone(),
            name: "*".into(),
            message: e.to_string(),
        })?;
        let tokenizer = MarianTokenizer::from_files(
            &files.source_spm,
            &files.vocab,
            config.pad_token_id,
            config.eos_token_id,
        )?;
        Ok(MarianTranslator {
            model,
            tokenizer,
            config,
            device: device.clone(),
        })
    }

    pub fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Translates each text with its own random stream (`rngs[i]` for `texts[i]`).
    pub fn translate(
        &mut self,
        texts: &[&str],
        opts: &GenerateOptions,
        rngs: &mut [Rng],
    ) -> Result<Vec<String>> {
        let max = self.max_positions();
        let sources = texts
            .iter()
            .map(|t| self.tokenizer.encode(t, max))
            .collect::<Result<Vec<_>>>()?;
        let outputs = self.generate(&sources, opts, rngs)?;
        Ok(outputs
            .iter()
            .map(|ids| self.tokenizer.decode(ids))
            .collect())
    }

    /// Generated ids per source (without the final `</s>`). Sources are grouped by
    /// length; each group is decoded in batches of at most `opts.batch_size`.
    pub fn generate(
        &mut self,
        sources: &[Vec<u32>],
        opts: &GenerateOptions,
        rngs: &mut [Rng],
    ) -> Result<Vec<Vec<u32>>> {
        if rngs.len() != sources.len() {
            crate::bail!(
                "{} random streams for {} sources",
                rngs.len(),
                sources.len()
            );
        }
        let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, s) in sources.iter().enumerate() {
            by_len.entry(s.len()).or_default().push(i);
        }
        let mut out = vec![Vec::new(); sources.len()];
        for group in by_len.values() {
            for chunk in group.chunks(opts.batch_size.max(1)) {
                let batch: Vec<&[u32]> = chunk.iter().map(|&i| sources[i].as_slice()).collect();
                let mut batch_rngs: Vec<Rng> = chunk.iter().map(|&i| rngs[i].clone()).collect();
                let ids = self.generate_equal_length(&batch, opts, &mut batch_rngs)?;
                for ((&i, ids), rng) in chunk.iter().zip(ids).zip(batch_rngs) {
                    out[i] = ids;
                    rngs[i] = rng;
                }
            }
        }
        Ok(out)
    }

    fn generate_equal_length(
        &mut self,
        batch: &[&[u32]],
        opts: &GenerateOptions,
        rngs: &mut [Rng],
    ) -> Result<Vec<Vec<u32>>> {
        let n = batch.len();
        let src_len = batch[0].len();
        let flat: Vec<u32> = batch.iter().flat_map(|s| s.iter().copied()).collect();
        let src = Tensor::from_vec(flat, (n, src_len), &self.device)?;
        // The encoder's attention layers keep a cache too: clear it for every batch.
        self.model.reset_kv_cache();
        let encoded = self.model.encoder().forward(&src, 0)?;
        let max_len = opts.max_len.min(self.max_positions());
        let (eos, pad) = (self.config.eos_token_id, self.config.pad_token_id);
        let mut last = vec![self.config.decoder_start_token_id; n];
        let mut out = vec![Vec::new(); n];
        let mut done = vec![false; n];
        for step in 0..max_len {
            let input = Tensor::from_vec(last.clone(), (n, 1), &self.device)?;
            let logits = self
                .model
                .decode(&input, &encoded, step)?
                .squeeze(1)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            for b in 0..n {
                if done[b] {
                    last[b] = pad;
                    continue;
                }
                let token = choose(&logits[b], opts.sampling, pad, &mut rngs[b]);
                if token == eos {
                    done[b] = true;
                } else {
                    out[b].push(token);
                }
                last[b] = token;
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        self.model.reset_kv_cache();
        Ok(out)
    }
}
