//! `candle-distill eval`: scores a classifier on a GLUE split, writes metrics,
//! predictions and, for test splits, the GLUE leaderboard submission file.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use candle_distill::data::{
    load_dataset, DataSource, Dataset, LoadOptions, Predictions, Split, Task,
};
use candle_distill::device::DeviceList;
use candle_distill::eval::{evaluate, EvalOptions, EvalResult};
use candle_distill::model::{load_classifier, BuildOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The fine-tuned model: a local folder or a hub id (`org/name[@revision]`).
    #[arg(long)]
    pub model: String,
    /// GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli.
    #[arg(long)]
    pub task: Task,
    /// dev, dev-mismatched, test or test-mismatched. For MNLI, `dev` and `test` score
    /// the matched and the mismatched sets, each on its own.
    #[arg(long, default_value = "dev")]
    pub split: Split,
    /// The task's data: `hub` (nyu-mll/glue), a folder in the GLUE TSV layout
    /// (SST-2/dev.tsv, ...), or a hub dataset in nyu-mll/glue's parquet layout
    /// (org/name[@revision]).
    #[arg(long, default_value = candle_distill::recipe::DEFAULT_DATA)]
    pub data: String,
    #[arg(long, default_value_t = candle_distill::recipe::EVAL_BATCH_SIZE)]
    pub batch_size: usize,
    /// Tokens per example after truncation (default: 64 for single sentences, 128 for pairs).
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// cpu, cuda[:N], metal[:N] or auto: one device, read as `run` and `finetune` read it.
    #[arg(long, default_value_t = DeviceList::default())]
    pub device: DeviceList,
    /// Leave out malformed rows (and say how many) instead of stopping.
    #[arg(long)]
    pub skip_malformed: bool,
    /// Score only the first N examples of each split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write metrics.json, predictions and submission files into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write into --out even when it is not empty.
    #[arg(long)]
    pub force: bool,
}

/// The splits one `--split` stands for: MNLI's matched and mismatched sets stay apart.
fn splits(task: Task, split: Split) -> Vec<Split> {
    match (task, split) {
        (Task::Mnli, Split::Dev) => task.dev_splits().to_vec(),
        (Task::Mnli, Split::Test) => task.test_splits().to_vec(),
        _ => vec![split],
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let task = args.task;
    if !task.has_split(args.split) {
        anyhow::bail!(
            "{task} has no {} split; only MNLI has mismatched sets",
            args.split
        );
    }
    let device = args.device.one("eval")?.open()?;
    if let Some(out) = &args.out {
        candle_distill::io::ensure_fresh_dir(out, args.force)?;
    }
    let loaded = load_classifier(&args.model, &BuildOptions::inference(&device))
        .context("loading the model")?; // the error names the model
    let options = EvalOptions {
        batch_size: args.batch_size,
        max_seq_len: args.max_seq_len.unwrap_or(task.default_max_seq_len()),
        device,
    };
    let load_options = LoadOptions {
        skip_malformed: args.skip_malformed,
        limit: args.limit,
    };
    let data = DataSource::parse(&args.data)?;
    let mut results = serde_json::Map::new();
    for split in splits(task, args.split) {
        let dataset = load_dataset(&data, Some(task), split, &load_options)
            .with_context(|| format!("loading {task} {split}"))?;
        tracing::info!("{}: {} examples", dataset.origin, dataset.len());
        let result = evaluate(&loaded.built.model, &loaded.tokenizer, &dataset, &options)
            .with_context(|| format!("evaluating {} on {task} {split}", args.model))?;
        if let Some(out) = &args.out {
            write_outputs(out, task, split, &dataset, &result)?;
        }
        results.insert(
            split.name().to_string(),
            serde_json::json!({
                "data": dataset.origin,
                "examples": dataset.len(),
                "skipped": dataset.skipped,
                "metrics": result.metrics,
            }),
        );
    }
    let report = serde_json::json!({
        "model": args.model,
        "task": task.name(),
        "max_seq_len": options.max_seq_len,
        "results": results,
    });
    if let Some(out) = &args.out {
        candle_distill::io::write_json(&out.join("metrics.json"), &report)?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// How one prediction is written: a class name or a score with three decimals.
fn prediction_text(dataset: &Dataset, predictions: &Predictions, i: usize) -> String {
    match predictions {
        Predictions::Classes(c) => dataset.label_names[c[i]].clone(),
        Predictions::Scores(s) => format!("{:.3}", s[i]),
    }
}

fn write_outputs(
    out: &std::path::Path,
    task: Task,
    split: Split,
    dataset: &Dataset,
    result: &EvalResult,
) -> anyhow::Result<()> {
    let gold = dataset.gold().ok();
    let mut predictions = String::from("index\tprediction");
    predictions.push_str(if gold.is_some() { "\tlabel\n" } else { "\n" });
    for (i, example) in dataset.examples.iter().enumerate() {
        write!(
            predictions,
            "{}\t{}",
            example.idx,
            prediction_text(dataset, &result.predictions, i)
        )?;
        if let Some(gold) = &gold {
            write!(predictions, "\t{}", prediction_text(dataset, gold, i))?;
        }
        predictions.push('\n');
    }
    let path = out.join(format!("predictions-{}.tsv", split.name()));
    candle_distill::io::write_atomic(&path, predictions.as_bytes())?;

    if split.is_test() {
        // The leaderboard wants class names for MNLI/QNLI/RTE, class indices elsewhere.
        let mut submission = String::from("index\tprediction\n");
        for (i, example) in dataset.examples.iter().enumerate() {
            let value = match &result.predictions {
                Predictions::Classes(c) if task.submission_uses_names() => {
                    dataset.label_names[c[i]].clone()
                }
                Predictions::Classes(c) => c[i].to_string(),
                Predictions::Scores(s) => format!("{:.3}", s[i]),
            };
            writeln!(submission, "{}\t{value}", example.idx)?;
        }
        let path = out.join(task.submission_file(split));
        candle_distill::io::write_atomic(&path, submission.as_bytes())?;
        tracing::info!("wrote the GLUE submission file {}", path.display());
    }
    Ok(())
}
