//! `candle-distill plan <recipe>`: what a run would do, checked, before any training.

use std::path::PathBuf;

use anyhow::Context;
use candle_distill::recipe::Recipe;

#[derive(clap::Args)]
pub struct Args {
    pub recipe: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let recipe = Recipe::load(&args.recipe, &args.overrides)?;
    let plan = candle_distill::plan::plan(&recipe)
        .with_context(|| format!("planning {}", args.recipe.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan.to_text());
    }
    Ok(())
}
