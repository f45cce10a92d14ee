//! `candle-distill finetune`: fine-tune a pre-trained BERT on a GLUE task.

use std::path::PathBuf;

use anyhow::Context;
use candle_distill::recipe::{Recipe, StageSpec};
use candle_distill::train::Precision;

#[derive(clap::Args)]
pub struct Args {
    /// Pre-trained model: hub id or folder.
    #[arg(long)]
    pub model: String,
    /// GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli).
    #[arg(long)]
    pub task: String,
    /// Output folder for the fine-tuned model (Hugging Face layout).
    #[arg(long)]
    pub out: PathBuf,
    /// `hub` or a folder in the GLUE TSV layout.
    #[arg(long, default_value = "hub")]
    pub data: String,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Evaluate on dev every N steps (0: each epoch end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Save a resumable checkpoint every N steps.
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: usize,
    /// Use only the first N training rows.
    #[arg(long)]
    pub train_limit: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// cpu, cuda:1, metal, auto, or a list (cuda:0,cuda:1): one data-parallel replica
    /// on each.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype of the training steps: f32, bf16 or f16 (weights stay in f32;
    /// f16 uses dynamic loss scaling).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Overwrite a non-empty output folder.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut stage = candle_distill::pipeline::default_finetune_stage();
    stage.epochs = args.epochs;
    stage.learning_rate = args.lr;
    stage.batch_size = args.batch_size;
    stage.warmup_ratio = Some(args.warmup_ratio);
    stage.weight_decay = args.weight_decay;
    stage.max_grad_norm = Some(args.max_grad_norm);
    stage.checkpoint_every = args.checkpoint_every;
    stage.precision = Some(args.precision);
    let recipe = finetune_recipe(&args, stage)?;
    let report = candle_distill::pipeline::finetune_to_folder(&recipe, &args.out, args.force)
        .with_context(|| format!("fine-tuning on {}", args.task))?; // errors name the model
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn finetune_recipe(args: &Args, stage: StageSpec) -> anyhow::Result<Recipe> {
    let toml = format!(
        "version = 1\nseed = {}\ndevice = {:?}\n[teacher]\nmodel = {:?}\n[task]\nname = {:?}\ndata = {:?}\n[student]\nfrom = \"checkpoint\"\nmodel = {:?}\n[eval]\nevery = {}\n",
        args.seed, args.device, args.model, args.task, args.data, args.model, args.eval_every
    );
    let mut recipe = Recipe::parse(
        &format!("{toml}[[stages]]\nkind = \"finetune\"\n"),
        "finetune options",
        &[],
    )?;
    recipe.task.max_seq_len = args.max_seq_len;
    recipe.task.train_limit = args.train_limit;
    recipe.stages = vec![stage];
    Ok(recipe)
}
