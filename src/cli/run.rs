//! `candle-distill run <recipe>`: the whole job a recipe describes.

use std::path::PathBuf;

use anyhow::Context;
use candle_distill::recipe::Recipe;

#[derive(clap::Args)]
pub struct Args {
    /// The recipe (TOML), e.g. recipes/quickstart-cpu.toml.
    pub recipe: PathBuf,
    /// Override a recipe value: --set task.data=../shared/data/glue (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run folder (overrides the recipe's `output`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start over in a run folder that holds another run.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut recipe = Recipe::load(&args.recipe, &args.overrides)?;
    if let Some(out) = args.out {
        recipe.output = Some(out);
    }
    let report = candle_distill::pipeline::run_recipe(&recipe, Some(&args.recipe), args.force)
        .with_context(|| format!("running {}", args.recipe.display()))?;
    println!("{}", report.to_markdown());
    println!(
        "run folder: {}",
        report
            .student_dir
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    Ok(())
}
