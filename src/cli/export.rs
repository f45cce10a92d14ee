//! `candle-distill export --from <checkpoint> --out <dir>`: a Hugging Face folder that
//! transformers loads as is, checked against the checkpoint before it is moved into place.

use std::path::PathBuf;

use anyhow::Context;
use candle_distill::device::FloatType;
use candle_distill::export::{export_classifier, read_examples, ExportOptions, ExportSource};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint to export: a folder in Hugging Face layout (training-only tensors
    /// such as `fit_denses.*` are left out) or a hub id. (`--model`, as the other
    /// commands call it, is the same flag.)
    #[arg(long, visible_alias = "model")]
    pub from: String,
    /// Destination folder; must be absent or empty unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype of the weights: f32, f16 or bf16.
    #[arg(long, default_value_t = FloatType::default())]
    pub dtype: FloatType,
    /// Replace an existing non-empty destination.
    #[arg(long)]
    pub force: bool,
    /// Inputs to check the export's logits on: one sentence a line, a tab between the
    /// two sentences of a pair (e.g. dev examples). Built-in sentences when absent.
    #[arg(long)]
    pub check_texts: Option<PathBuf>,
    /// Teacher hub id or path, named in the model card.
    #[arg(long)]
    pub teacher: Option<String>,
    /// Also write the checked inputs and the exported model's logits as JSON
    /// (for tests/scripts/check_export_with_transformers.py).
    #[arg(long)]
    pub logits_out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dtype = args.dtype.dtype();
    // A run folder exports its best dev checkpoint.
    let run_best = std::path::Path::new(&args.from).join("checkpoints/best");
    let from = if run_best.join("model.safetensors").is_file() {
        run_best.display().to_string()
    } else {
        args.from.clone()
    };
    let mut source = ExportSource::from_checkpoint(&from).context("reading the checkpoint")?;
    source.card.teacher = args.teacher.clone();
    let check_examples = match &args.check_texts {
        Some(path) => read_examples(path)?,
        None => Vec::new(),
    };
    let options = ExportOptions {
        dtype,
        force: args.force,
        check_examples,
        tolerance: None,
    };
    let report = export_classifier(&source, &args.out, &options)
        .with_context(|| format!("exporting {}", args.from))?;
    if let Some(path) = &args.logits_out {
        let logits = serde_json::json!({
            "model": report.out,
            "dtype": report.dtype,
            "examples": report.check.examples,
            "logits": report.check.exported_logits,
        });
        candle_distill::io::write_json(path, &logits)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "exported {} to {}\n  {} tensors, {:.1}M parameters, {:.1} MiB ({})",
        args.from,
        report.out.display(),
        report.tensors,
        report.parameters as f64 / 1e6,
        report.size_on_disk_bytes as f64 / 1048576.0,
        report.dtype
    );
    if !report.dropped.is_empty() {
        println!("  left out (training only): {}", report.dropped.join(", "));
    }
    println!(
        "  checked: re-loaded logits match on {} examples, relative error {:.2e} (tolerance {:.0e})",
        report.check.examples.len(),
        report.check.rel_err,
        report.check.tolerance
    );
    Ok(())
}
