//! General distillation's memory and speed as the corpus grows: a synthetic corpus of
//! 10^5, 10^6 and 10^7 sentences (written once into a temporary folder), one general
//! stage of a fixed number of steps streamed from it (`source = "corpus"`), the same
//! file streamed as a transfer set (`source = "unlabeled"`, `stream = true`: one
//! example per line), and the in-memory path (`source = "unlabeled"`: read whole,
//! tokenised up front). Every sentence is its own document, and both group batches by length (50
//! batches at a time), so both train on the same shapes.
//!
//! `cargo bench --bench corpus [-- --sizes 100000,1000000 --in-memory-max 1000000 --repeat 3]`.
//! Each measurement runs in its own subprocess (`--run`), so each peak RSS is its own.
//! Printed per row: wall seconds of the whole job, rows per second of the stage's
//! steps, peak RSS, user and system CPU seconds, minor page faults. Random weights:
//! speed does not depend on them.
//!
//! Each size runs `--repeat` rounds (3 by default), every path once a round, in turn,
//! so that a change in the machine's speed reaches every path alike; each path's row
//! is its median run by rows per second, with the range beside it, the largest peak of
//! its runs, and the share of the stage its steps waited for rows ("reading"), which
//! the trainer measures: reading, tokenising and packing happen between the steps on
//! the CPU, so this share is what streaming costs. "vs memory" divides by the
//! in-memory path's median rate at the same size.

mod common;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_distill::pipeline::run_recipe;
use candle_distill::recipe::Recipe;
use candle_distill::rng::Rng;
use candle_distill::testing::{tiny_config, write_random_classifier, TINY_WORDS};
use common::{peak_rss_mb, Usage};

const STEPS: usize = 200;
const BATCH: usize = 32;
const MAX_SEQ_LEN: usize = 128;

fn main() {
    // As the command-line tool does: what it sets decides how much memory is kept.
    candle_distill::runtime::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(spec) = flag("--run") {
        if let Err(e) = run_child(&spec) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    let sizes: Vec<usize> = flag("--sizes")
        .unwrap_or_else(|| "100000,1000000,10000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("--sizes: comma-separated counts"))
        .collect();
    let in_memory_max: usize = flag("--in-memory-max")
        .map(|s| s.parse().expect("--in-memory-max: a count"))
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("a temporary folder");
    write_models(dir.path());
    let repeat: usize = flag("--repeat")
        .map(|s| s.parse().expect("--repeat: a count"))
        .unwrap_or(3)
        .max(1);
    println!(
        "general stage: {STEPS} steps of batch {BATCH}, max_seq_len {MAX_SEQ_LEN}; teacher 4x128, student 2x64 (random); median of {repeat}\n"
    );
    println!(
        "{:>10} {:<9} {:>8} {:>7} {:>11} {:>9} {:>9} {:>9} {:>12} {:>7}",
        "sentences",
        "path",
        "wall s",
        "rows/s",
        "range",
        "vs memory",
        "reading",
        "peak MB",
        "user/sys s",
        "faults"
    );
    for &n in &sizes {
        let corpus = write_corpus(dir.path(), n);
        let paths: Vec<&str> = ["streamed", "transfer", "in-memory"]
            .into_iter()
            .filter(|&p| p != "in-memory" || n <= in_memory_max)
            .collect();
        let mut runs: Vec<Vec<Row>> = paths.iter().map(|_| Vec::new()).collect();
        for _ in 0..repeat {
            for (path, runs) in paths.iter().zip(&mut runs) {
                let spec = format!("{path}:{}:{}", dir.path().display(), corpus.display());
                runs.push(measure(&spec));
            }
        }
        let in_memory = paths
            .iter()
            .position(|&p| p == "in-memory")
            .map(|i| median(&mut runs[i]).rows_per_s);
        for (path, runs) in paths.iter().zip(&mut runs) {
            print_row(n, path, runs, in_memory);
        }
        if n > in_memory_max {
            println!("{n:>10} in-memory (skipped: above --in-memory-max {in_memory_max})");
        }
        std::fs::remove_file(&corpus).ok();
    }
}

/// Sorts the runs by rate and gives the median one.
fn median(runs: &mut [Row]) -> &Row {
    runs.sort_by(|a, b| a.rows_per_s.total_cmp(&b.rows_per_s));
    &runs[runs.len() / 2]
}

fn print_row(n: usize, path: &str, runs: &mut [Row], in_memory: Option<f64>) {
    let peak = runs.iter().map(|r| r.peak_mb).fold(0.0, f64::max);
    let low = runs
        .iter()
        .map(|r| r.rows_per_s)
        .fold(f64::INFINITY, f64::min);
    let high = runs.iter().map(|r| r.rows_per_s).fold(0.0, f64::max);
    let row = median(runs);
    let versus = in_memory.map_or("-".into(), |m| format!("{:.2}", row.rows_per_s / m));
    println!(
        "{n:>10} {path:<9} {:>8.1} {:>7.0} {:>11} {:>9} {:>9} {:>9.0} {:>12} {:>7}",
        row.wall_s,
        row.rows_per_s,
        format!("{low:.0}-{high:.0}"),
        versus,
        if row.data_s > 0.0 {
            format!("{:.1}%", 100.0 * row.data_s / row.stage_s)
        } else {
            "-".into()
        },
        peak,
        format!("{:.1}/{:.1}", row.user_s, row.sys_s),
        format!("{:.0}k", row.minflt / 1000.0)
    );
}

struct Row {
    wall_s: f64,
    stage_s: f64,
    data_s: f64,
    rows_per_s: f64,
    peak_mb: f64,
    user_s: f64,
    sys_s: f64,
    minflt: f64,
}

/// Runs one measurement in a subprocess and reads the JSON line it prints.
fn measure(spec: &str) -> Row {
    let exe = std::env::current_exe().expect("the bench's own path");
    let out = Command::new(exe)
        .args(["--run", spec])
        .env("RUST_LOG", "warn")
        .output()
        .expect("the measurement subprocess");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "measurement {spec} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Row {
        wall_s: f("wall_s"),
        stage_s: f("stage_s"),
        data_s: f("data_s"),
        rows_per_s: f("rows_per_s"),
        peak_mb: f("peak_mb"),
        user_s: f("user_s"),
        sys_s: f("sys_s"),
        minflt: f("minflt"),
    }
}

/// The random teacher and student, and a small SST-2 folder for the run's dev set.
fn write_models(dir: &Path) {
    write_random_classifier(&dir.join("teacher"), &tiny_config(128, 4, 4, 512), 1)
        .expect("teacher");
    let glue = dir.join("glue/SST-2");
    std::fs::create_dir_all(&glue).expect("glue folder");
    let mut rng = Rng::new(2);
    let rows: String = (0..64)
        .map(|i| format!("{}\t{}\n", sentence(&mut rng), i % 2))
        .collect();
    for split in ["train", "dev"] {
        std::fs::write(
            glue.join(format!("{split}.tsv")),
            format!("sentence\tlabel\n{rows}"),
        )
        .expect("glue file");
    }
}

fn sentence(rng: &mut Rng) -> String {
    let words: Vec<&str> = (0..6 + rng.below(20))
        .map(|_| TINY_WORDS[rng.below(TINY_WORDS.len())])
        .collect();
    words.join(" ")
}

/// `n` sentences, each its own document (a blank line after it).
fn write_corpus(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join(format!("corpus-{n}.txt"));
    let file = std::fs::File::create(&path).expect("corpus file");
    let mut out = BufWriter::new(file);
    let mut rng = Rng::new(n as u64);
    for _ in 0..n {
        writeln!(out, "{}\n", sentence(&mut rng)).expect("corpus write");
    }
    out.flush().expect("corpus write");
    path
}

/// In the subprocess: the run, then its timings and this process's resource use.
fn run_child(spec: &str) -> Result<(), String> {
    let mut parts = spec.splitn(3, ':');
    let (path, dir, corpus) = match (parts.next(), parts.next(), parts.next()) {
        (Some(p), Some(d), Some(c)) => (p, Path::new(d), c),
        _ => return Err(format!("--run {spec}: expected path:dir:corpus")),
    };
    let data = match path {
        "streamed" => format!("{{ source = \"corpus\", files = [\"{corpus}\"] }}"),
        "transfer" => format!("{{ source = \"unlabeled\", path = \"{corpus}\", stream = true }}"),
        _ => format!("{{ source = \"unlabeled\", path = \"{corpus}\" }}"),
    };
    let text = format!(
        r#"version = 1
name = "corpus-bench"
seed = 1
[teacher]
model = "{teacher}"
finetune = "never"
allow_weak_teacher = true
[task]
name = "sst2"
data = "{glue}"
max_seq_len = {MAX_SEQ_LEN}
[student]
from = "random"
layers = 2
hidden = 64
heads = 4
intermediate = 256
[[stages]]
name = "general"
kind = "general"
data = {data}
epochs = 1
max_steps = {STEPS}
batch_size = {BATCH}
checkpoint_every = 1000
"#,
        teacher = dir.join("teacher").display(),
        glue = dir.join("glue").display(),
    );
    let out = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut recipe = Recipe::parse(&text, "corpus-bench.toml", &[]).map_err(|e| e.to_string())?;
    recipe.output = Some(out.path().join("run"));
    let started = Instant::now();
    let report = run_recipe(&recipe, None, false).map_err(|e| e.to_string())?;
    let wall_s = started.elapsed().as_secs_f64();
    let stage = &report.stages[0];
    let usage = Usage::now();
    let row = serde_json::json!({
        "wall_s": wall_s,
        "stage_s": stage.seconds,
        "data_s": stage.data_seconds,
        "rows_per_s": (stage.steps * BATCH) as f64 / stage.seconds,
        "peak_mb": peak_rss_mb(),
        "user_s": usage.user_s, "sys_s": usage.sys_s, "minflt": usage.minflt,
    });
    println!("{row}");
    Ok(())
}
