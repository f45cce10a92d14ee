//! `candle-distill augment`: masked-token filling and/or back-translation of a task's
//! text, cached per task and method.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::DType;
use candle_distill::augment::backtranslate::{BackTranslator, BacktranslateConfig};
use candle_distill::augment::cache::{run_cached, CacheSpec, KeyBuilder};
use candle_distill::augment::input::read_text_rows;
use candle_distill::augment::marian::{MarianFiles, MarianTranslator, Sampling};
use candle_distill::augment::mlm::{BertMaskFiller, Glove, MlmAugmenter, MlmConfig};
use candle_distill::augment::Method;
use candle_distill::model::{build_masked_lm, BuildOptions, ModelFiles};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    Mlm,
    Backtranslate,
    Both,
}

#[derive(clap::Args)]
pub struct Args {
    /// Task name; names the output files (`<task>.<method>.<key>.jsonl`).
    #[arg(long)]
    pub task: String,
    #[arg(long, value_enum, default_value = "mlm")]
    pub method: MethodArg,
    /// TSV (GLUE layout, no quoting) or JSONL file with the text columns.
    #[arg(long)]
    pub input: PathBuf,
    /// One or two text columns: header names (or 0-based indices), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "sentence")]
    pub text_columns: Vec<String>,
    /// The TSV has no header row.
    #[arg(long)]
    pub no_header: bool,
    /// Output folder.
    #[arg(long, default_value = "augmented")]
    pub out: PathBuf,
    /// Masked LM (folder or hub id).
    #[arg(long, default_value = "bert-base-uncased")]
    pub mlm_model: String,
    /// GloVe text file for words of several WordPieces (otherwise they stay).
    #[arg(long)]
    pub glove: Option<PathBuf>,
    /// GloVe rows to load (the reference used the first 100,000).
    #[arg(long, default_value_t = 100_000)]
    pub glove_words: usize,
    /// Replacement probability p_t.
    #[arg(long, default_value_t = 0.4)]
    pub p_t: f64,
    /// Predictions (or neighbours) per word, K.
    #[arg(long, default_value_t = 15)]
    pub top_k: usize,
    /// Rounds per text, N_a.
    #[arg(long, default_value_t = 20)]
    pub n_aug: usize,
    /// Translation into the pivot language.
    #[arg(long, default_value = "Helsinki-NLP/opus-mt-en-de")]
    pub mt_forward: String,
    /// Translation back from the pivot language.
    #[arg(long, default_value = "Helsinki-NLP/opus-mt-de-en")]
    pub mt_backward: String,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Greedy decoding instead of sampling.
    #[arg(long)]
    pub greedy: bool,
    /// Round trips per text.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Most tokens per translation.
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// Sentences per translation batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Input rows per resumable chunk.
    #[arg(long, default_value_t = 256)]
    pub chunk_rows: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rows = read_text_rows(&args.input, &args.text_columns, !args.no_header)
        .with_context(|| format!("reading {}", args.input.display()))?;
    tracing::info!("{}: {} rows", args.input.display(), rows.len());
    let device = candle_distill::device::parse_device(&args.device)?;
    if matches!(args.method, MethodArg::Mlm | MethodArg::Both) {
        run_mlm(&args, &rows, &device)?;
    }
    if matches!(args.method, MethodArg::Backtranslate | MethodArg::Both) {
        run_backtranslate(&args, &rows, &device)?;
    }
    Ok(())
}

fn spec(args: &Args, method: Method, key: String) -> CacheSpec {
    CacheSpec {
        out_dir: args.out.clone(),
        task: args.task.clone(),
        method,
        key,
        chunk_rows: args.chunk_rows,
        show_progress: true,
    }
}

fn run_mlm(args: &Args, rows: &[Vec<String>], device: &candle_core::Device) -> anyhow::Result<()> {
    let config = MlmConfig {
        p_t: args.p_t,
        top_k: args.top_k,
        n_aug: args.n_aug,
        seed: args.seed,
    };
    let files = ModelFiles::resolve(&args.mlm_model)
        .with_context(|| format!("resolving the masked LM {}", args.mlm_model))?;
    let mut key = KeyBuilder::new();
    key.add_rows(rows)
        .add("method", b"mlm")
        .add_json("settings", &config)
        .add("glove_words", &args.glove_words.to_le_bytes());
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
    if let Some(g) = &args.glove {
        key.add_file("glove", g)?;
    }
    let spec = spec(args, Method::Mlm, key.finish());
    if spec.output_path().is_file() {
        let outcome = run_cached(rows, &spec, &mut NoWork(Method::Mlm))?;
        println!(
            "reused {} ({} rows)",
            outcome.path.display(),
            outcome.manifest.output_rows
        );
        return Ok(());
    }
    let bert_config = files.read_config()?;
    let tokenizer = files.read_tokenizer()?;
    let built = build_masked_lm(
        &args.mlm_model,
        &bert_config,
        files.read_weights()?,
        &BuildOptions::inference(device),
    )
    .with_context(|| format!("building the masked LM {}", args.mlm_model))?;
    let filler = BertMaskFiller::new(built.model, tokenizer, device)?;
    let glove = match &args.glove {
        Some(path) => Some(
            Glove::from_file(path, args.glove_words)
                .with_context(|| format!("reading GloVe {}", path.display()))?,
        ),
        None => None,
    };
    let mut augmenter = MlmAugmenter::new(filler, glove, config)?;
    let outcome = run_cached(rows, &spec, &mut augmenter)?;
    let s = augmenter.stats();
    println!(
        "wrote {} ({} rows from {} input rows; {} chunks resumed)",
        outcome.path.display(),
        outcome.manifest.output_rows,
        outcome.manifest.input_rows,
        outcome.chunks_resumed
    );
    println!(
        "candidate words: {} (masked LM {}, GloVe {}, kept unchanged for lack of GloVe vectors {})",
        s.candidate_words, s.masked_lm_words, s.glove_words, s.kept_words
    );
    if s.kept_words > 0 && args.glove.is_none() {
        println!("note: pass --glove <glove.txt> to replace multi-piece words too");
    }
    Ok(())
}

fn run_backtranslate(
    args: &Args,
    rows: &[Vec<String>],
    device: &candle_core::Device,
) -> anyhow::Result<()> {
    let config = BacktranslateConfig {
        sampling: if args.greedy {
            Sampling::Greedy
        } else {
            Sampling::TopP {
                temperature: args.temperature,
                top_p: args.top_p,
            }
        },
        samples: args.samples,
        max_len: args.max_len,
        batch_size: args.batch_size,
        seed: args.seed,
    };
    let forward = MarianFiles::resolve(&args.mt_forward)
        .with_context(|| format!("resolving {}", args.mt_forward))?;
    let backward = MarianFiles::resolve(&args.mt_backward)
        .with_context(|| format!("resolving {}", args.mt_backward))?;
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
    let spec = spec(args, Method::Backtranslate, key.finish());
    if spec.output_path().is_file() {
        let outcome = run_cached(rows, &spec, &mut NoWork(Method::Backtranslate))?;
        println!(
            "reused {} ({} rows)",
            outcome.path.display(),
            outcome.manifest.output_rows
        );
        return Ok(());
    }
    let fwd = MarianTranslator::load(&forward, device, DType::F32)
        .with_context(|| format!("loading {}", args.mt_forward))?;
    let bwd = MarianTranslator::load(&backward, device, DType::F32)
        .with_context(|| format!("loading {}", args.mt_backward))?;
    let mut augmenter = BackTranslator::new(fwd, bwd, config)?;
    let outcome = run_cached(rows, &spec, &mut augmenter)?;
    let s = augmenter.stats();
    println!(
        "wrote {} ({} rows from {} input rows; {} chunks resumed); {} round trips, {} duplicates dropped",
        outcome.path.display(),
        outcome.manifest.output_rows,
        outcome.manifest.input_rows,
        outcome.chunks_resumed,
        s.round_trips,
        s.duplicates
    );
    Ok(())
}

/// Stands in for a model when the cached file exists (no model is loaded then).
struct NoWork(Method);

impl candle_distill::augment::TextAugmenter for NoWork {
    fn method(&self) -> Method {
        self.0
    }
    fn augment_texts(
        &mut self,
        _: &[candle_distill::augment::TextRef<'_>],
    ) -> candle_distill::Result<Vec<Vec<String>>> {
        candle_distill::bail!("the cached file disappeared while reading it")
    }
}
