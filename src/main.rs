//! The `candle-distill` command line: parses arguments and delegates to the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
