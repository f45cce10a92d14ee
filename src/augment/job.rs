//! Augmentation as a job: the settings shared by the `augment` command and a recipe's
//! `[augment]` table, the content key of each method's cached file, and the models
//! loaded only when that file is not there yet.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::backtranslate::{BackTranslator, BacktranslateConfig};
use super::cache::{read_augmented, run_cached, CacheSpec, KeyBuilder, Outcome};
use super::glove::{Glove, GloveSource};
use super::marian::{MarianFiles, MarianTranslator, Sampling};
use super::mlm::{
    count_multi_piece_words, no_glove_warning, BertMaskFiller, MlmAugmenter, MlmConfig,
};
use super::{AugmentedRow, Method, TextAugmenter, TextRef};
use crate::model::{build_masked_lm, BuildOptions, ModelFiles};
use crate::{Error, Result};

/// Which methods a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Methods {
    #[default]
    Mlm,
    Backtranslate,
    Both,
}

impl Methods {
    pub fn list(self) -> &'static [Method] {
        match self {
            Methods::Mlm => &[Method::Mlm],
            Methods::Backtranslate => &[Method::Backtranslate],
            Methods::Both => &[Method::Mlm, Method::Backtranslate],
        }
    }
}

/// Every setting of both methods, with TinyBERT's and opus-mt's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSettings {
    pub method: Methods,
    /// Masked LM (folder or hub id).
    pub mlm_model: String,
    /// GloVe vectors for words of several WordPieces (otherwise they stay): a local
    /// file or `hf://datasets/org/name[@revision]/path`, text or a .zip of it.
    pub glove: Option<String>,
    /// GloVe rows to load (the reference used the first 100,000).
    pub glove_words: usize,
    /// Replacement probability p_t.
    pub p_t: f64,
    /// Predictions (or neighbours) per word, K.
    pub top_k: usize,
    /// Rounds per text, N_a.
    pub n_aug: usize,
    /// Translation into the pivot language.
    pub mt_forward: String,
    /// Translation back from the pivot language.
    pub mt_backward: String,
    pub temperature: f64,
    pub top_p: f64,
    /// Greedy decoding instead of sampling.
    pub greedy: bool,
    /// Round trips per text.
    pub samples: usize,
    /// Most tokens per translation.
    pub max_len: usize,
    /// Sentences per translation batch (does not change results).
    pub batch_size: usize,
    /// Input rows per resumable chunk.
    pub chunk_rows: usize,
}

/// The defaults of every augmentation setting, the one place they are written: the
/// paper's p_t = 0.4, K = 15, N_a = 20 and the reference's 100,000 GloVe rows; for
/// back-translation, top-p sampling (0.9 at temperature 0.8), one round trip.
impl Default for AugmentSettings {
    fn default() -> Self {
        AugmentSettings {
            method: Methods::Mlm,
            mlm_model: "bert-base-uncased".into(),
            glove: None,
            glove_words: 100_000,
            p_t: 0.4,
            top_k: 15,
            n_aug: 20,
            mt_forward: "Helsinki-NLP/opus-mt-en-de".into(),
            mt_backward: "Helsinki-NLP/opus-mt-de-en".into(),
            temperature: 0.8,
            top_p: 0.9,
            greedy: false,
            samples: 1,
            max_len: 256,
            batch_size: 32,
            chunk_rows: 256,
        }
    }
}

impl AugmentSettings {
    /// The masked-LM method's settings.
    pub fn mlm_config(&self, seed: u64) -> MlmConfig {
        MlmConfig {
            p_t: self.p_t,
            top_k: self.top_k,
            n_aug: self.n_aug,
            seed,
        }
    }

    /// The back-translation method's settings.
    pub fn backtranslate_config(&self, seed: u64) -> BacktranslateConfig {
        BacktranslateConfig {
            sampling: if self.greedy {
                Sampling::Greedy
            } else {
                Sampling::TopP {
                    temperature: self.temperature,
                    top_p: self.top_p,
                }
            },
            samples: self.samples,
            max_len: self.max_len,
            batch_size: self.batch_size,
            seed,
        }
    }

    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, msg: &str| Err(Error::invalid(origin, field, msg));
        if !(0.0..=1.0).contains(&self.p_t) {
            return bad("augment.p_t", "must be within [0, 1]");
        }
        if self.top_k == 0 {
            return bad("augment.top_k", "must be at least 1");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("augment.top_p", "must be within (0, 1]");
        }
        if self.temperature <= 0.0 {
            return bad("augment.temperature", "must be positive");
        }
        if self.samples == 0 || self.max_len == 0 || self.batch_size == 0 {
            return bad(
                "augment.samples / max_len / batch_size",
                "must be at least 1",
            );
        }
        if self.chunk_rows == 0 {
            return bad("augment.chunk_rows", "must be at least 1");
        }
        Ok(())
    }
}

/// What one method's job produced.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub method: Method,
    pub outcome: Outcome,
    /// One line on what the method did (counts of words, round trips...); empty when the
    /// file was reused.
    pub summary: String,
}

/// Where and how a job runs.
pub struct JobContext<'a> {
    /// Names the output files (`<task>.<method>.<key>.jsonl`).
    pub task: &'a str,
    pub out_dir: &'a Path,
    pub seed: u64,
    pub device: &'a Device,
    pub show_progress: bool,
}

/// Runs each of the settings' methods over `rows`, reusing or resuming cached files.
pub fn augment_cached(
    rows: &[Vec<String>],
    settings: &AugmentSettings,
    ctx: &JobContext<'_>,
) -> Result<Vec<JobOutcome>> {
    settings.validate("augment settings")?;
    settings
        .method
        .list()
        .iter()
        .map(|method| match method {
            Method::Backtranslate => backtranslate_job(rows, settings, ctx),
            _ => mlm_job(rows, settings, ctx),
        })
        .collect()
}

/// Every row of the given augmented files, each distinct (text a, text b) once, in file
/// order: with both methods, the originals that open each file's groups appear once.
pub fn read_augmented_files(paths: &[PathBuf]) -> Result<Vec<AugmentedRow>> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for path in paths {
        for row in read_augmented(path)? {
            if seen.insert((row.text_a.clone(), row.text_b.clone())) {
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

fn context<T>(result: Result<T>, what: impl std::fmt::Display) -> Result<T> {
    result.map_err(|e| Error::msg(format!("{what}: {e}")))
}

fn spec(
    ctx: &JobContext<'_>,
    settings: &AugmentSettings,
    method: Method,
    key: String,
) -> CacheSpec {
    CacheSpec {
        out_dir: ctx.out_dir.to_path_buf(),
        task: ctx.task.to_string(),
        method,
        key,
        chunk_rows: settings.chunk_rows,
        show_progress: ctx.show_progress,
    }
}

/// The cached file, when it exists; models are loaded only otherwise.
fn reuse(rows: &[Vec<String>], spec: &CacheSpec) -> Result<Option<JobOutcome>> {
    if !spec.output_path().is_file() {
        return Ok(None);
    }
    let outcome = run_cached(rows, spec, &mut NoWork(spec.method))?;
    Ok(Some(JobOutcome {
        method: spec.method,
        outcome,
        summary: String::new(),
    }))
}

/// Adds the contents of a model's config, weights and tokenizer files to `key`.
fn add_model_files(key: &mut KeyBuilder, files: &ModelFiles) -> Result<()> {
    key.add_file("config", &files.config)?;
    for p in files.weights.paths() {
        key.add_file("weights", p)?;
    }
    for p in [&files.tokenizer.tokenizer_json, &files.tokenizer.vocab_txt]
        .into_iter()
        .flatten()
    {
        key.add_file("tokenizer", p)?;
    }
    Ok(())
}

/// The TinyBERT augmentation of `rows` with the masked LM (and GloVe vectors) of
/// `settings`, or the cached file of an earlier run with the same inputs.
fn mlm_job(
    rows: &[Vec<String>],
    settings: &AugmentSettings,
    ctx: &JobContext<'_>,
) -> Result<JobOutcome> {
    let config = settings.mlm_config(ctx.seed);
    let model = &settings.mlm_model;
    // Errors below name the model (or its files) themselves: the context says its role.
    let what = "masked LM";
    let files = context(ModelFiles::resolve(model), what)?;
    let mut key = KeyBuilder::new();
    key.add_rows(rows)
        .add("method", b"mlm")
        .add_json("settings", &config)
        .add("glove_words", &settings.glove_words.to_le_bytes());
    add_model_files(&mut key, &files)?;
    let glove_path = match &settings.glove {
        Some(spec) => Some(GloveSource::parse(spec)?.resolve()?),
        None => None,
    };
    if let Some(g) = &glove_path {
        key.add_file("glove", g)?;
    }
    let spec = spec(ctx, settings, Method::Mlm, key.finish());
    if let Some(reused) = reuse(rows, &spec)? {
        return Ok(reused);
    }
    let built = context(
        build_masked_lm(
            model,
            &files.read_config()?,
            files.read_weights()?,
            &BuildOptions::inference(ctx.device),
        ),
        what,
    )?;
    let tokenizer = files.read_tokenizer()?;
    if glove_path.is_none() {
        let texts = rows.iter().flatten().map(String::as_str);
        let (candidates, multi) = count_multi_piece_words(texts, &tokenizer)?;
        if let Some(w) = no_glove_warning(candidates, multi) {
            tracing::warn!("{w}");
        }
    }
    let filler = BertMaskFiller::new(built.model, tokenizer, ctx.device)?;
    let glove = match &glove_path {
        Some(path) => Some(context(
            Glove::from_file(path, settings.glove_words),
            "GloVe vectors",
        )?),
        None => None,
    };
    let mut augmenter = MlmAugmenter::new(filler, glove, config)?;
    let outcome = run_cached(rows, &spec, &mut augmenter)?;
    let s = augmenter.stats();
    let mut summary = format!(
        "candidate words: {} (masked LM {}, GloVe {}, kept unchanged for lack of GloVe vectors {})",
        s.candidate_words, s.masked_lm_words, s.glove_words, s.kept_words
    );
    if s.kept_words > 0 && settings.glove.is_none() {
        summary.push_str("; give a GloVe file to replace multi-piece words too");
    }
    Ok(JobOutcome {
        method: Method::Mlm,
        outcome,
        summary,
    })
}

fn backtranslate_job(
    rows: &[Vec<String>],
    settings: &AugmentSettings,
    ctx: &JobContext<'_>,
) -> Result<JobOutcome> {
    let config = settings.backtranslate_config(ctx.seed);
    let forward = context(
        MarianFiles::resolve(&settings.mt_forward),
        "forward translation model",
    )?;
    let backward = context(
        MarianFiles::resolve(&settings.mt_backward),
        "backward translation model",
    )?;
    let mut key = KeyBuilder::new();
    key.add_rows(rows).add("method", b"backtranslate");
    // Batch size does not change results; leave it out of the key.
    key.add_json("sampling", &config.sampling)
        .add_json("samples", &config.samples)
        .add_json("max_len", &config.max_len)
        .add_json("seed", &config.seed);
    for (label, files) in [("forward", &forward), ("backward", &backward)] {
        for p in files.all_paths() {
            key.add_file(label, p)?;
        }
    }
    let spec = spec(ctx, settings, Method::Backtranslate, key.finish());
    if let Some(reused) = reuse(rows, &spec)? {
        return Ok(reused);
    }
    let fwd = context(
        MarianTranslator::load(&forward, ctx.device, DType::F32),
        "forward translation model",
    )?;
    let bwd = context(
        MarianTranslator::load(&backward, ctx.device, DType::F32),
        "backward translation model",
    )?;
    let mut augmenter = BackTranslator::new(fwd, bwd, config)?;
    let outcome = run_cached(rows, &spec, &mut augmenter)?;
    let s = augmenter.stats();
    Ok(JobOutcome {
        method: Method::Backtranslate,
        outcome,
        summary: format!(
            "{} round trips, {} duplicates dropped",
            s.round_trips, s.duplicates
        ),
    })
}

/// Stands in for a model when the cached file exists (no model is loaded then).
struct NoWork(Method);

impl TextAugmenter for NoWork {
    fn method(&self) -> Method {
        self.0
    }
    fn augment_texts(&mut self, _: &[TextRef<'_>]) -> Result<Vec<Vec<String>>> {
        crate::bail!("the cached file disappeared while reading it")
    }
}
