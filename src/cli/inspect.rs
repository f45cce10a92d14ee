//! `candle-distill inspect <model>`: what a checkpoint is, before anyone trains on it.

use candle_distill::model::ModelFiles;

#[derive(clap::Args)]
pub struct Args {
    /// A local folder or a hub id (`org/name` or `org/name@revision`).
    pub model: String,
    /// Sequence length for the FLOPs estimate.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Resolution errors name the folder or hub id themselves.
    let files = ModelFiles::resolve(&args.model)?;
    let report = candle_distill::inspect::inspect(&files, args.seq_len)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
