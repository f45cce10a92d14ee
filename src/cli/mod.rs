//! Command-line front end. Each subcommand lives in its own file and calls library code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod export;
mod inspect;

#[derive(Parser)]
#[command(
    name = "candle-distill",
    version,
    about = "Distil BERT teachers into small TinyBERT students, on CPU, CUDA or Metal",
    propagate_version = true
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a checkpoint's architecture, size, cost, labels and tokenizer.
    Inspect(inspect::Args),
    /// Write a student as a Hugging Face folder that transformers loads, checked first.
    Export(export::Args),
    /// Time models side by side (teacher vs student): latency, throughput, size.
    Bench(bench::Args),
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result: anyhow::Result<()> = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
