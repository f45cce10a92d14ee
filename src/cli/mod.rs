//! Command-line front end. Each subcommand lives in its own file and calls library code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod augment;
mod bench;
mod eval;
mod export;
mod finetune;
mod inspect;
mod plan;
mod run;

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
    /// Run a recipe: fine-tune the teacher if needed, distil, evaluate, export.
    Run(run::Args),
    /// Show what a recipe would do (layer pairs, shapes, sizes, steps) without training.
    Plan(plan::Args),
    /// Fine-tune a pre-trained BERT on a GLUE task.
    Finetune(finetune::Args),
    /// Show a checkpoint's architecture, size, cost, labels and tokenizer.
    Inspect(inspect::Args),
    /// Score a classifier on a GLUE split; write metrics, predictions and submission files.
    Eval(eval::Args),
    /// Augment a task's text: TinyBERT masked-token filling and/or back-translation.
    Augment(Box<augment::Args>),
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub fn main() -> ExitCode {
    candle_distill::runtime::init();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result: anyhow::Result<()> = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Run(args) => run::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Finetune(args) => finetune::run(args),
        Command::Augment(args) => augment::run(*args),
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
