//! `candle-distill bench --model <teacher> --model <student>`: inference speed side by side.

use anyhow::Context;
use candle_distill::bench::{bench, BenchOptions};
use candle_distill::device::{DeviceList, FloatType};

/// The flags' defaults are the library's.
fn defaults() -> BenchOptions {
    BenchOptions::default()
}

#[derive(clap::Args)]
pub struct Args {
    /// A model folder or hub id; repeat to compare (the first is the baseline of the
    /// speed-up column: put the teacher first).
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// Sequence lengths, comma-separated.
    #[arg(long = "seq-len", value_delimiter = ',', default_values_t = defaults().seq_lens)]
    pub seq_lens: Vec<usize>,
    /// Batch sizes, comma-separated.
    #[arg(long = "batch", value_delimiter = ',', default_values_t = defaults().batches)]
    pub batches: Vec<usize>,
    /// Timed forward passes per shape.
    #[arg(long, default_value_t = defaults().iters)]
    pub iters: usize,
    /// Untimed forward passes per shape before timing.
    #[arg(long, default_value_t = defaults().warmup)]
    pub warmup: usize,
    /// cpu, cuda[:N], metal[:N] or auto: one device, read as `run` and `finetune` read it.
    #[arg(long, default_value_t = DeviceList::default())]
    pub device: DeviceList,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value_t = FloatType::default())]
    pub dtype: FloatType,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let options = BenchOptions {
        seq_lens: args.seq_lens,
        batches: args.batches,
        iters: args.iters,
        warmup: args.warmup,
        device: args.device.one("bench")?.open()?,
        dtype: args.dtype.dtype(),
    };
    let report = bench(&args.models, &options).context("benchmarking")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
