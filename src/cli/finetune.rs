//! `candle-distill finetune`: fine-tune a pre-trained BERT on a GLUE task.

use std::path::PathBuf;

use anyhow::Context;
use candle_distill::data::Task;
use candle_distill::device::DeviceList;
use candle_distill::distill::{StageKind, StudentInit, StudentSpec, TrainSettings};
use candle_distill::recipe::{Recipe, TaskSpec, TeacherSpec};
use candle_distill::train::Precision;

// The flags' defaults are a recipe's finetune stage's.
const STAGE: TrainSettings = TrainSettings::for_stage(StageKind::Finetune);

#[derive(clap::Args)]
pub struct Args {
    /// Pre-trained model: hub id or folder.
    #[arg(long)]
    pub model: String,
    /// GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli).
    #[arg(long)]
    pub task: Task,
    /// Output folder for the fine-tuned model (Hugging Face layout).
    #[arg(long)]
    pub out: PathBuf,
    /// The task's data: `hub` (nyu-mll/glue), a folder in the GLUE TSV layout, or a hub
    /// dataset in nyu-mll/glue's parquet layout (org/name[@revision]).
    #[arg(long, default_value = candle_distill::recipe::DEFAULT_DATA)]
    pub data: String,
    #[arg(long, default_value_t = STAGE.epochs)]
    pub epochs: usize,
    #[arg(long, default_value_t = STAGE.learning_rate)]
    pub lr: f64,
    #[arg(long, default_value_t = STAGE.batch_size)]
    pub batch_size: usize,
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    #[arg(long, default_value_t = STAGE.warmup_ratio)]
    pub warmup_ratio: f64,
    #[arg(long, default_value_t = STAGE.weight_decay)]
    pub weight_decay: f64,
    /// Clip the gradient norm at this value (0: no clipping).
    #[arg(long, default_value_t = STAGE.max_grad_norm.unwrap_or(0.0))]
    pub max_grad_norm: f64,
    /// Evaluate on dev every N steps (0: each epoch end).
    #[arg(long, default_value_t = STAGE.eval_every)]
    pub eval_every: usize,
    /// Save a resumable checkpoint every N steps.
    #[arg(long, default_value_t = STAGE.checkpoint_every)]
    pub checkpoint_every: usize,
    /// Use only the first N training rows.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Leave out malformed rows (and say how many) instead of stopping, as a recipe's
    /// `task.skip_malformed`.
    #[arg(long)]
    pub skip_malformed: bool,
    #[arg(long, default_value_t = candle_distill::recipe::DEFAULT_SEED)]
    pub seed: u64,
    /// cpu, cuda:1, metal, auto, or a list (cuda:0,cuda:1): one data-parallel replica
    /// on each.
    #[arg(long, default_value_t = DeviceList::default())]
    pub device: DeviceList,
    /// Compute dtype of the training steps: f32, bf16 or f16 (weights stay in f32;
    /// f16 uses dynamic loss scaling).
    #[arg(long, default_value_t = Precision::default())]
    pub precision: Precision,
    /// Overwrite a non-empty output folder.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let recipe = finetune_recipe(&args)?;
    let report = candle_distill::pipeline::finetune_to_folder(&recipe, &args.out, args.force)
        .with_context(|| format!("fine-tuning on {}", args.task))?; // errors name the model
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// The recipe these flags stand for: the model as teacher and student, one
/// `finetune` stage.
pub(super) fn finetune_recipe(args: &Args) -> anyhow::Result<Recipe> {
    let mut stage = candle_distill::pipeline::default_finetune_stage();
    stage.epochs = args.epochs;
    stage.learning_rate = args.lr;
    stage.batch_size = args.batch_size;
    stage.warmup_ratio = Some(args.warmup_ratio);
    stage.weight_decay = args.weight_decay;
    stage.max_grad_norm = (args.max_grad_norm > 0.0).then_some(args.max_grad_norm);
    stage.checkpoint_every = args.checkpoint_every;
    stage.precision = Some(args.precision);
    let task = TaskSpec {
        max_seq_len: args.max_seq_len,
        train_limit: args.train_limit,
        skip_malformed: args.skip_malformed,
        ..TaskSpec::new(args.task, &args.data)
    };
    let student = StudentSpec::from(StudentInit::Checkpoint {
        model: args.model.clone(),
    });
    let mut recipe = Recipe::new(TeacherSpec::new(&args.model), task, student, vec![stage]);
    recipe.seed = args.seed;
    recipe.device = args.device.clone();
    recipe.eval.every = args.eval_every;
    recipe.validate("finetune options")?;
    Ok(recipe)
}
