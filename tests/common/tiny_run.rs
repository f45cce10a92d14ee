//! A tiny end-to-end run: a random teacher with no task head (so the run fine-tunes it
//! first), a synthetic SST-2 folder whose labels follow sentiment words, and a recipe
//! with intermediate and prediction stages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_distill::rng::Rng;
use candle_distill::testing::{tiny_config, write_random_classifier};

const POSITIVE: &[&str] = &[
    "good", "great", "fun", "love", "best", "funny", "nice", "happy",
];
const NEGATIVE: &[&str] = &[
    "bad", "awful", "dull", "hate", "worst", "boring", "poor", "sad",
];
const NEUTRAL: &[&str] = &[
    "the", "movie", "film", "story", "was", "it", "a", "and", "plot", "actor",
];

pub fn write_sst2(dir: &Path) {
    let mut rng = Rng::new(3);
    let mut make = |n: usize| {
        let mut out = String::from("sentence\tlabel\n");
        let mut made = 0;
        while made < n {
            let len = 3 + rng.below(6);
            let (mut p, mut q) = (0, 0);
            let words: Vec<&str> = (0..len)
                .map(|_| match rng.below(3) {
                    0 => {
                        p += 1;
                        POSITIVE[rng.below(POSITIVE.len())]
                    }
                    1 => {
                        q += 1;
                        NEGATIVE[rng.below(NEGATIVE.len())]
                    }
                    _ => NEUTRAL[rng.below(NEUTRAL.len())],
                })
                .collect();
            if p != q {
                out += &format!("{} \t{}\n", words.join(" "), (p > q) as u8);
                made += 1;
            }
        }
        out
    };
    std::fs::create_dir_all(dir.join("SST-2")).unwrap();
    std::fs::write(dir.join("SST-2/train.tsv"), make(480)).unwrap();
    std::fs::write(dir.join("SST-2/dev.tsv"), make(120)).unwrap();
}

pub fn recipe(root: &Path) -> PathBuf {
    let text = format!(
        r#"version = 1
name = "tiny"
seed = 5
[teacher]
model = "{teacher}"
[teacher.finetune_settings]
kind = "finetune"
epochs = 4
learning_rate = 3e-3
batch_size = 16
checkpoint_every = 10
[task]
name = "sst2"
data = "{glue}"
max_seq_len = 24
[student]
from = "random"
layers = 2
hidden = 16
heads = 4
intermediate = 32
[[stages]]
name = "intermediate"
kind = "intermediate"
epochs = 3
learning_rate = 3e-3
batch_size = 16
checkpoint_every = 7
[[stages]]
name = "prediction"
kind = "prediction"
epochs = 3
learning_rate = 3e-3
batch_size = 16
checkpoint_every = 7
"#,
        teacher = root.join("teacher").display(),
        glue = root.join("glue").display()
    );
    let path = root.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_random_classifier(&dir.path().join("teacher"), &tiny_config(32, 2, 4, 64), 1).unwrap();
    write_sst2(&dir.path().join("glue"));
    dir
}

/// The command under test, quiet but for warnings.
pub fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_candle-distill"));
    c.env("RUST_LOG", "warn");
    c
}

/// Every tensor of a safetensors file, flattened to f32 values by name.
pub fn weights(file: &Path) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(file, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// Starts `command`, kills it with SIGKILL once the run in `run` has written a checkpoint
/// and logged a few more lines, and checks it was still running then.
pub fn kill_after_a_checkpoint(mut command: Command, run: &Path) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let progress =
            std::fs::read_to_string(run.join("checkpoints/last/progress.json")).unwrap_or_default();
        if progress.contains("\"step\"")
            && std::fs::read_to_string(run.join("metrics.jsonl"))
                .map(|m| m.lines().count() > 4)
                .unwrap_or(false)
        {
            break;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let was_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        was_running,
        "the run finished before it could be killed; the test needs a longer run"
    );
}

/// A TCP port free on this machine now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Node `rank` of two; `timeout`: seconds to wait for the other.
pub fn node(recipe: &Path, out: &Path, rank: usize, port: u16, timeout: u32) -> Command {
    let mut c = cli();
    c.arg("run").arg(recipe).arg("--out").arg(out);
    c.args(["--nnodes", "2", "--node-rank", &rank.to_string()]);
    c.args(["--master-port", &port.to_string()]);
    c.args(["--join-timeout", &timeout.to_string()]);
    c
}
