//! `candle-distill augment`: masked-token filling and/or back-translation of a task's
//! training text (or of any TSV/JSONL file), cached per task and method.

use std::path::PathBuf;

use anyhow::Context;
use candle_distill::augment::input::read_text_rows;
use candle_distill::augment::job::{augment_cached, AugmentSettings, JobContext, Methods};
use candle_distill::data::{load_dataset, DataSource, LoadOptions, Split, Task};
use candle_distill::device::DeviceList;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    Mlm,
    Backtranslate,
    Both,
}

impl From<Methods> for MethodArg {
    fn from(methods: Methods) -> Self {
        match methods {
            Methods::Mlm => MethodArg::Mlm,
            Methods::Backtranslate => MethodArg::Backtranslate,
            Methods::Both => MethodArg::Both,
        }
    }
}

/// The flags' defaults are a recipe's `[augment]` defaults.
fn defaults() -> AugmentSettings {
    AugmentSettings::default()
}

#[derive(clap::Args)]
pub struct Args {
    /// GLUE task whose training split is augmented; also names the output files
    /// (`<task>.<method>.<key>.jsonl`), with --input too.
    #[arg(long)]
    pub task: Task,
    #[arg(long, value_enum, default_value_t = MethodArg::from(defaults().method))]
    pub method: MethodArg,
    /// The task's data: `hub` (nyu-mll/glue), a folder in the GLUE TSV layout, or a hub
    /// dataset in nyu-mll/glue's parquet layout (org/name[@revision]).
    #[arg(long, default_value = candle_distill::recipe::DEFAULT_DATA)]
    pub data: String,
    /// Augment only the first N training rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Augment this TSV (GLUE layout, no quoting) or JSONL file instead of the task's data.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// With --input: one or two text columns, header names (or 0-based indices).
    #[arg(long, value_delimiter = ',', default_value = "sentence")]
    pub text_columns: Vec<String>,
    /// With --input: the TSV has no header row.
    #[arg(long)]
    pub no_header: bool,
    /// Output folder.
    #[arg(long, default_value = "augmented")]
    pub out: PathBuf,
    /// Masked LM (folder or hub id).
    #[arg(long, default_value_t = defaults().mlm_model)]
    pub mlm_model: String,
    /// GloVe vectors for words of several WordPieces (otherwise they stay): a file
    /// (text, or a .zip of it) or hf://datasets/org/name[@revision]/path.
    #[arg(long)]
    pub glove: Option<String>,
    /// GloVe rows to load (the reference used the first 100,000).
    #[arg(long, default_value_t = defaults().glove_words)]
    pub glove_words: usize,
    /// Replacement probability p_t.
    #[arg(long, default_value_t = defaults().p_t)]
    pub p_t: f64,
    /// Predictions (or neighbours) per word, K.
    #[arg(long, default_value_t = defaults().top_k)]
    pub top_k: usize,
    /// Rounds per text, N_a.
    #[arg(long, default_value_t = defaults().n_aug)]
    pub n_aug: usize,
    /// Translation into the pivot language.
    #[arg(long, default_value_t = defaults().mt_forward)]
    pub mt_forward: String,
    /// Translation back from the pivot language.
    #[arg(long, default_value_t = defaults().mt_backward)]
    pub mt_backward: String,
    #[arg(long, default_value_t = defaults().temperature)]
    pub temperature: f64,
    #[arg(long, default_value_t = defaults().top_p)]
    pub top_p: f64,
    /// Greedy decoding instead of sampling.
    #[arg(long)]
    pub greedy: bool,
    /// Round trips per text.
    #[arg(long, default_value_t = defaults().samples)]
    pub samples: usize,
    /// Most tokens per translation.
    #[arg(long, default_value_t = defaults().max_len)]
    pub max_len: usize,
    /// Sentences per translation batch.
    #[arg(long, default_value_t = defaults().batch_size)]
    pub batch_size: usize,
    /// Input rows per resumable chunk.
    #[arg(long, default_value_t = defaults().chunk_rows)]
    pub chunk_rows: usize,
    #[arg(long, default_value_t = candle_distill::recipe::DEFAULT_SEED)]
    pub seed: u64,
    /// cpu, cuda[:N], metal[:N] or auto: one device, read as `run` and `finetune` read it.
    #[arg(long, default_value_t = DeviceList::default())]
    pub device: DeviceList,
}

impl Args {
    pub(super) fn settings(&self) -> AugmentSettings {
        AugmentSettings {
            method: match self.method {
                MethodArg::Mlm => Methods::Mlm,
                MethodArg::Backtranslate => Methods::Backtranslate,
                MethodArg::Both => Methods::Both,
            },
            mlm_model: self.mlm_model.clone(),
            glove: self.glove.clone(),
            glove_words: self.glove_words,
            p_t: self.p_t,
            top_k: self.top_k,
            n_aug: self.n_aug,
            mt_forward: self.mt_forward.clone(),
            mt_backward: self.mt_backward.clone(),
            temperature: self.temperature,
            top_p: self.top_p,
            greedy: self.greedy,
            samples: self.samples,
            max_len: self.max_len,
            batch_size: self.batch_size,
            chunk_rows: self.chunk_rows,
        }
    }

    /// The text rows to augment: the given file, or the task's training split.
    fn rows(&self) -> anyhow::Result<Vec<Vec<String>>> {
        if let Some(input) = &self.input {
            // Its errors name the file.
            let mut rows = read_text_rows(input, &self.text_columns, !self.no_header)?;
            if let Some(n) = self.limit {
                rows.truncate(n);
            }
            return Ok(rows);
        }
        let task = self.task;
        let options = LoadOptions {
            limit: self.limit,
            ..Default::default()
        };
        let train = load_dataset(
            &DataSource::parse(&self.data)?,
            Some(task),
            Split::Train,
            &options,
        )
        .with_context(|| format!("loading the {task} training split"))?;
        Ok(train.examples.iter().map(|e| e.texts()).collect())
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rows = args.rows()?;
    tracing::info!("{}: {} rows to augment", args.task, rows.len());
    let device = args.device.one("augment")?.open()?;
    let ctx = JobContext {
        task: args.task.name(),
        out_dir: &args.out,
        seed: args.seed,
        device: &device,
        show_progress: true,
    };
    for job in augment_cached(&rows, &args.settings(), &ctx)? {
        let o = &job.outcome;
        if o.reused {
            println!(
                "reused {} ({} rows)",
                o.path.display(),
                o.manifest.output_rows
            );
        } else {
            println!(
                "wrote {} ({} rows from {} input rows; {} chunks resumed)",
                o.path.display(),
                o.manifest.output_rows,
                o.manifest.input_rows,
                o.chunks_resumed
            );
            println!("{}: {}", job.method.as_str(), job.summary);
        }
    }
    Ok(())
}
