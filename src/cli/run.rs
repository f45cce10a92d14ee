//! `candle-distill run <recipe>`: the whole job a recipe describes, on one device, on
//! several of one machine, or (with `--nnodes`) as one node of several machines.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use candle_distill::device::DeviceList;
use candle_distill::recipe::Recipe;
use candle_distill::train::cluster::NodeSpec;

#[derive(clap::Args)]
pub struct Args {
    /// The recipe (TOML), e.g. recipes/quickstart-cpu.toml.
    pub recipe: PathBuf,
    /// Override a recipe value: --set task.data=../shared/data/glue (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Try each value of a stage setting (repeatable: a grid), e.g.
    /// `stages.1.learning_rate=1e-5,2e-5,3e-5`; the best variant on dev wins.
    #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
    pub sweep: Vec<String>,
    /// Run folder (overrides the recipe's `output`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Device(s), overriding the recipe's: cpu, cuda:1, metal, auto, or a list such as
    /// cuda:0,cuda:1 for one data-parallel replica on each.
    #[arg(long)]
    pub device: Option<DeviceList>,
    /// Start over in a run folder that holds another run.
    #[arg(long)]
    pub force: bool,
    /// Machines taking part (data-parallel over all their devices). Start the same
    /// command on each, with its own --node-rank; the run folder must be on storage
    /// they all see.
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This machine's rank, 0 to nnodes-1; node 0 writes the run folder.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Host name or address of node 0, which the other nodes connect to.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Port node 0 listens on.
    #[arg(long, default_value_t = 29500)]
    pub master_port: u16,
    /// Seconds a node waits for the others to join.
    #[arg(long, default_value_t = 900)]
    pub join_timeout: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut recipe = Recipe::load(&args.recipe, &args.overrides)?;
    for spec in &args.sweep {
        recipe.add_sweep(spec)?;
    }
    if let Some(out) = &args.out {
        recipe.output = Some(out.clone());
    }
    if let Some(device) = &args.device {
        recipe.device = device.clone();
    }
    let context = || format!("running {}", args.recipe.display());
    let report = if args.nnodes > 1 || args.node_rank > 0 {
        let node = NodeSpec {
            nnodes: args.nnodes,
            node_rank: args.node_rank,
            master: format!("{}:{}", args.master_addr, args.master_port),
            join_timeout: Duration::from_secs(args.join_timeout),
        };
        let report = candle_distill::pipeline::run_recipe_on_node(
            &recipe,
            Some(&args.recipe),
            args.force,
            &node,
        )
        .with_context(|| {
            format!(
                "{} as node {} of {}",
                context(),
                args.node_rank,
                args.nnodes
            )
        })?;
        match report {
            Some(r) => r,
            None => {
                println!(
                    "node {} of {}: training finished; node 0 writes the results",
                    args.node_rank, args.nnodes
                );
                return Ok(());
            }
        }
    } else {
        candle_distill::pipeline::run_recipe(&recipe, Some(&args.recipe), args.force)
            .with_context(context)?
    };
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
