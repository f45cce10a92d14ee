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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_distill::augment::job::AugmentSettings;
    use candle_distill::bench::BenchOptions;
    use candle_distill::data::Task;
    use candle_distill::device::{DeviceList, FloatType};
    use candle_distill::recipe::{TaskSpec, DEFAULT_DATA, DEFAULT_SEED, EVAL_BATCH_SIZE};
    use candle_distill::train::Precision;

    fn parse(args: &[&str]) -> Command {
        let line = std::iter::once("candle-distill").chain(args.iter().copied());
        Cli::try_parse_from(line)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
    }

    /// Each flag left out takes the library's default, written once there.
    #[test]
    fn flags_default_to_the_librarys_defaults() {
        let Command::Finetune(args) =
            parse(&["finetune", "--model", "m", "--task", "sst2", "--out", "o"])
        else {
            panic!("not finetune")
        };
        assert_eq!(args.precision, Precision::default());
        let recipe = finetune::finetune_recipe(&args).unwrap();
        // The settings the stage trains with are a recipe's finetune stage's.
        let default_stage = candle_distill::pipeline::default_finetune_stage();
        assert_eq!(recipe.stages.len(), 1);
        assert_eq!(
            recipe.stages[0].settings(&recipe, true),
            default_stage.settings(&recipe, true)
        );
        assert_eq!(recipe.task, TaskSpec::new(Task::Sst2, DEFAULT_DATA));
        assert_eq!(recipe.device, DeviceList::default());
        assert_eq!(recipe.seed, DEFAULT_SEED);

        let Command::Augment(args) = parse(&["augment", "--task", "sst2"]) else {
            panic!("not augment")
        };
        assert_eq!(args.settings(), AugmentSettings::default());
        assert_eq!(
            (args.data.as_str(), args.device),
            (DEFAULT_DATA, DeviceList::default())
        );

        let Command::Eval(args) = parse(&["eval", "--model", "m", "--task", "sst2"]) else {
            panic!("not eval")
        };
        assert_eq!(args.batch_size, EVAL_BATCH_SIZE);
        assert_eq!(
            (args.data.as_str(), args.device),
            (DEFAULT_DATA, DeviceList::default())
        );

        let Command::Bench(args) = parse(&["bench", "--model", "m"]) else {
            panic!("not bench")
        };
        let library = BenchOptions::default();
        assert_eq!(
            (args.seq_lens, args.batches, args.iters, args.warmup),
            (
                library.seq_lens,
                library.batches,
                library.iters,
                library.warmup
            )
        );
        assert_eq!(
            (args.device, args.dtype),
            (DeviceList::default(), FloatType::default())
        );
    }

    #[test]
    fn finetune_skips_malformed_rows_when_asked_and_export_takes_model() {
        let line = [
            "finetune",
            "--model",
            "m",
            "--task",
            "sst2",
            "--out",
            "o",
            "--skip-malformed",
        ];
        let Command::Finetune(args) = parse(&line) else {
            panic!("not finetune")
        };
        assert!(
            finetune::finetune_recipe(&args)
                .unwrap()
                .task
                .skip_malformed
        );
        let Command::Export(args) = parse(&["export", "--model", "ckpt", "--out", "o"]) else {
            panic!("not export")
        };
        assert_eq!(args.from, "ckpt");
    }
}
