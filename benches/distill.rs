//! Distillation speed, side by side with PyTorch (benches/pytorch_reference.py).
//!
//! `cargo bench --bench distill` runs every measurement in its own subprocess (so each
//! peak RSS is its own), then runs the PyTorch reference when `PYTHON` (default
//! `python3`) has torch, and prints one table: shape, ours, PyTorch, ratio, peak memory.
//! Arguments after `--`: `--only a,b` picks measurements, `--no-python` skips the reference,
//! `--run NAME` runs one measurement and prints one JSON line (used by the parent).
//!
//! Weights are random: speed does not depend on them. Threads: RAYON_NUM_THREADS
//! (set to 2 by the parent unless already set), torch.set_num_threads on the other side.
//! On a GPU (build with `--features cuda`): BENCH_DEVICE=cuda:0 runs both sides there,
//! and BENCH_STEP_BATCH (default 16) sets the batch of the step measurements.
//!
//! The quickstart row is the whole job of `recipes/quickstart-cpu.toml` (CPU only; real
//! MiniLM weights and the GLUE files), against benches/pytorch_quickstart.py doing the
//! same job; the table is followed by both sides' dev accuracies.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use candle_distill::data::{inference_order, EncodedDataset, Label};
use candle_distill::distill::objective::{BatchLoss, TokenShare};
use candle_distill::distill::{LossWeights, Normalise, TrainSettings};
use candle_distill::model::bert::Linear;
use candle_distill::model::params::named_vars;
use candle_distill::model::{
    build_classifier, BertConfig, BertForSequenceClassification, BertInput, BuildOptions,
    ClassifierOutput, ModelFiles, Outputs,
};
use candle_distill::rng::Rng;
use candle_distill::train::optim::AdamW;
use candle_nn::{VarBuilder, VarMap};
use common::{peak_rss_mb, Usage};

const MEASUREMENTS: &[(&str, &str)] = &[
    (
        "step",
        "distill step: BERT-base teacher + TinyBERT-4 step, b16 s128",
    ),
    ("teacher", "teacher forward, all states, b16 s128"),
    ("student", "student fwd+bwd+AdamW, b16 s128"),
    ("epoch_pad64", "SST-2 4k epoch, MiniLM->3L, padded to 64"),
    (
        "epoch_grouped",
        "SST-2 4k epoch, MiniLM->3L, length-grouped",
    ),
    ("infer_b1", "student inference b1 s64 (per batch)"),
    ("infer_b32", "student inference b32 s64 (per batch)"),
    (
        "quickstart",
        "quick start end to end (recipes/quickstart-cpu.toml)",
    ),
];

const VOCAB: usize = 30522;
const SST2_SENTENCES: usize = 4000;
const EPOCH_BATCH: usize = 32;
const EPOCH_MAX_LEN: usize = 64;

/// BENCH_DEVICE (default `cpu`), for both sides.
fn bench_device() -> Device {
    let spec = std::env::var("BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    spec.parse::<candle_distill::device::DeviceSpec>()
        .and_then(|d| d.open())
        .unwrap_or_else(|e| panic!("BENCH_DEVICE={spec}: {e}"))
}

/// BENCH_STEP_BATCH (default 16): the batch of the step, teacher and student rows.
fn step_batch() -> usize {
    std::env::var("BENCH_STEP_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(16)
}

/// BENCH_DEVICE as torch names it (`cuda:0`, `cpu`).
fn torch_device() -> String {
    match std::env::var("BENCH_DEVICE").as_deref() {
        Ok("cuda") => "cuda:0".into(),
        Ok(d) if d.starts_with("cuda") => d.into(),
        _ => "cpu".into(),
    }
}

fn teacher_base() -> BertConfig {
    BertConfig::with_shape(VOCAB, 768, 12, 12, 3072)
}

fn teacher_minilm() -> BertConfig {
    BertConfig::with_shape(VOCAB, 384, 6, 12, 1536)
}

fn student_config(layers: usize) -> BertConfig {
    BertConfig::with_shape(VOCAB, 312, layers, 12, 1200)
}

fn random_model(
    config: &BertConfig,
    trainable: bool,
    seed: u64,
) -> Result<(BertForSequenceClassification, Option<VarMap>)> {
    let options = BuildOptions {
        device: bench_device(),
        dtype: DType::F32,
        trainable,
        fresh: candle_distill::model::Fresh::Anything { seed },
    };
    let built = build_classifier("random", config, HashMap::new(), &options)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok((built.model, built.varmap))
}

fn random_input(batch: usize, seq: usize, rng: &mut Rng) -> Result<BertInput> {
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| 1000 + rng.below(VOCAB - 1000) as u32)
        .collect();
    let dev = bench_device();
    Ok(BertInput {
        input_ids: Tensor::from_vec(ids, (batch, seq), &dev)?,
        token_type_ids: Tensor::zeros((batch, seq), DType::U32, &dev)?,
        attention_mask: Tensor::ones((batch, seq), DType::U32, &dev)?,
    })
}

/// A student with its teacher-width projection and optimizer.
struct Student {
    model: BertForSequenceClassification,
    proj: Linear,
    opt: AdamW,
    rng: Rng,
}

impl Student {
    fn new(config: &BertConfig, teacher_hidden: usize) -> Result<Self> {
        let (model, varmap) = random_model(config, true, 7)?;
        let varmap = varmap.expect("trainable model has a VarMap");
        let proj_map = VarMap::new();
        let vb = VarBuilder::from_varmap(&proj_map, DType::F32, &bench_device());
        let proj = Linear::new(vb.pp("fit_dense"), config.hidden_size, teacher_hidden)?;
        let mut vars = named_vars(&varmap);
        vars.extend(named_vars(&proj_map));
        // The AdamW of a prediction stage at the defaults, as the trainer builds it.
        let opt = AdamW::new(vars, TrainSettings::default().adamw())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Student {
            model,
            proj,
            opt,
            rng: Rng::new(11),
        })
    }

    /// Forward, TinyBERT losses against the teacher's outputs, backward, AdamW.
    fn step(&mut self, input: &BertInput, teacher: &ClassifierOutput, logits: bool) -> Result<f32> {
        let mut lap = Laps::new();
        let out = self
            .model
            .forward(input, Outputs::ALL, Some(&mut self.rng))?;
        lap.mark("forward");
        let loss = distill_loss(&out, teacher, input, &self.proj, logits)?;
        let value = loss.to_scalar::<f32>()?;
        lap.mark("loss");
        let grads = loss.backward()?;
        lap.mark("backward");
        self.opt
            .step(&grads, Some(1.0))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        lap.mark("adamw");
        Ok(value)
    }
}

/// Stage times on stderr when BENCH_LAPS is set, to see where a step's time goes.
struct Laps {
    last: Option<Instant>,
}

impl Laps {
    fn new() -> Self {
        Laps {
            last: std::env::var_os("BENCH_LAPS").map(|_| Instant::now()),
        }
    }

    fn mark(&mut self, what: &str) {
        if let Some(last) = self.last.as_mut() {
            eprintln!("  {what}: {:.0} ms", last.elapsed().as_secs_f64() * 1e3);
            *last = Instant::now();
        }
    }
}

/// The trainer's own batch loss (candle_distill::distill::objective): attention MSE
/// over uniformly mapped layers, hidden MSE through the projection (embeddings
/// included), and soft cross-entropy on logits at T = 1 when `logits`; averaged over
/// every position as TinyBERT's reference does, as the PyTorch side does.
fn distill_loss(
    s: &ClassifierOutput,
    t: &ClassifierOutput,
    input: &BertInput,
    proj: &Linear,
    logits: bool,
) -> Result<Tensor> {
    let s_layers = s.encoder.attention_scores.len();
    let every = t.encoder.attention_scores.len() / s_layers;
    let pairs: Vec<(usize, usize)> = (1..=s_layers).map(|l| (l, l * every)).collect();
    let weights = LossWeights {
        attention: 1.0,
        hidden: 1.0,
        embedding: 1.0,
        soft_ce: if logits { 1.0 } else { 0.0 },
        temperature: 1.0,
        ..LossWeights::default()
    };
    let loss = BatchLoss {
        stage: "bench",
        weights: &weights,
        normalise: Normalise::Reference,
        pairs: &pairs,
        input,
        projections: &vec![proj.clone(); s_layers + 1],
        student: s,
        teacher: Some(t),
        teacher_logits: None,
        targets: None,
        share: TokenShare::ALL,
    };
    let (total, _) = loss
        .compute()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok(total)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A row's wall seconds (the median run) and its per-run resource use; the quick
/// start's dev accuracies too.
struct Timing {
    seconds: f64,
    usage: Usage,
    accuracy: Option<Accuracy>,
}

/// Dev accuracies of a whole job: the fine-tuned teacher's and the best student's.
#[derive(Clone, Copy)]
struct Accuracy {
    teacher: f64,
    student: f64,
}

/// Median seconds of `runs` calls after one warm-up call.
fn time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    // GPU work is asynchronous: a run ends when the device is done.
    let device = bench_device();
    f()?;
    device.synchronize()?;
    let mut all = Vec::new();
    let usage = Usage::now();
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        all.push(start.elapsed().as_secs_f64());
    }
    Ok(Timing {
        usage: Usage::since(usage, runs),
        seconds: median(all),
        accuracy: None,
    })
}

fn teacher_forward(
    teacher: &BertForSequenceClassification,
    input: &BertInput,
) -> Result<ClassifierOutput> {
    teacher.forward(input, Outputs::ALL, None)
}

fn measure_step(which: &str) -> Result<Timing> {
    let mut rng = Rng::new(1);
    let input = random_input(step_batch(), 128, &mut rng)?;
    let (teacher, _) = random_model(&teacher_base(), false, 3)?;
    match which {
        "teacher" => time(3, || teacher_forward(&teacher, &input).map(|_| ())),
        "student" => {
            let mut student = Student::new(&student_config(4), 768)?;
            let t = teacher_forward(&teacher, &input)?;
            drop(teacher);
            time(3, || student.step(&input, &t, true).map(|_| ()))
        }
        _ => {
            let mut student = Student::new(&student_config(4), 768)?;
            time(3, || {
                let t = teacher_forward(&teacher, &input)?;
                student.step(&input, &t, true).map(|_| ())
            })
        }
    }
}

/// The repository: where it was built, or `CANDLE_DISTILL_ROOT` for a binary carried
/// to another machine (.ci/gpu-check.sh).
fn repo_root() -> PathBuf {
    std::env::var_os("CANDLE_DISTILL_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn minilm_dir() -> PathBuf {
    repo_root().join("target/test-assets/all-MiniLM-L6-v2")
}

fn glue_dir() -> PathBuf {
    repo_root().join("../shared/data/glue")
}

fn sst2_path() -> PathBuf {
    glue_dir().join("SST-2/train.tsv")
}

/// The first 4,000 SST-2 training sentences, tokenised and truncated to 64 tokens.
fn sst2() -> Result<EncodedDataset> {
    let err = |e: String| candle_core::Error::Msg(e);
    let files =
        ModelFiles::resolve(&minilm_dir().display().to_string()).map_err(|e| err(e.to_string()))?;
    let tokenizer = files.read_tokenizer().map_err(|e| err(e.to_string()))?;
    let text = std::fs::read_to_string(sst2_path()).map_err(|e| err(e.to_string()))?;
    let encodings = text
        .lines()
        .skip(1)
        .take(SST2_SENTENCES)
        .map(|line| {
            let sentence = line.split('\t').next().unwrap_or("");
            tokenizer
                .encode(sentence, None, EPOCH_MAX_LEN)
                .map_err(|e| err(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(EncodedDataset {
        labels: vec![Label::Unlabeled; encodings.len()],
        encodings,
        regression: false,
        pad_id: tokenizer.pad_id(),
    })
}

/// Batches of example indices: in order, or (grouped) the trainer's inference order,
/// sorted by length so each batch pads only to its own longest sentence.
/// Deterministic: PyTorch's side (sorted the other way round) gets the same shapes.
fn batches(lengths: &[usize], grouped: bool) -> Vec<Vec<usize>> {
    if grouped {
        return inference_order(lengths, EPOCH_BATCH);
    }
    let order: Vec<usize> = (0..lengths.len()).collect();
    order.chunks(EPOCH_BATCH).map(<[usize]>::to_vec).collect()
}

fn measure_epoch(grouped: bool) -> Result<Timing> {
    let data = sst2()?;
    let plan = batches(&data.lengths(), grouped);
    let pad_to = if grouped { 0 } else { EPOCH_MAX_LEN };
    let (teacher, _) = random_model(&teacher_minilm(), false, 3)?;
    let mut student = Student::new(&student_config(3), 384)?;
    let usage = Usage::now();
    let start = Instant::now();
    for rows in &plan {
        let input = data
            .batch_padded(rows, pad_to, &bench_device())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .input;
        let t = teacher_forward(&teacher, &input)?;
        student.step(&input, &t, false)?;
    }
    bench_device().synchronize()?;
    Ok(Timing {
        seconds: start.elapsed().as_secs_f64(),
        usage: Usage::since(usage, 1),
        accuracy: None,
    })
}

/// `candle-distill run recipes/quickstart-cpu.toml` in this process, into a scratch
/// folder, with the real MiniLM and the GLUE files: wall time from the recipe's
/// loading to the exported student.
fn measure_quickstart() -> Result<Timing> {
    let err = |e: &dyn std::fmt::Display| candle_core::Error::Msg(e.to_string());
    let glue = glue_dir();
    if !bench_device().is_cpu() || !minilm_dir().is_dir() || !glue.is_dir() {
        candle_core::bail!(
            "the quick start runs on the CPU and needs {} and {}",
            minilm_dir().display(),
            glue.display()
        );
    }
    let path = repo_root().join("recipes/quickstart-cpu.toml");
    let sets = [
        format!("teacher.model={}", minilm_dir().display()),
        format!("task.data={}", glue.display()),
    ];
    let scratch = tempfile::tempdir().map_err(|e| err(&e))?;
    let usage = Usage::now();
    let start = Instant::now();
    let mut recipe = candle_distill::recipe::Recipe::load(&path, &sets).map_err(|e| err(&e))?;
    recipe.output = Some(scratch.path().join("run"));
    let report =
        candle_distill::pipeline::run_recipe(&recipe, Some(&path), false).map_err(|e| err(&e))?;
    let seconds = start.elapsed().as_secs_f64();
    let accuracy = |m: &candle_distill::metrics::Metrics| m.values.get("accuracy").copied();
    Ok(Timing {
        seconds,
        usage: Usage::since(usage, 1),
        accuracy: accuracy(&report.teacher.dev)
            .zip(accuracy(&report.student.dev))
            .map(|(teacher, student)| Accuracy { teacher, student }),
    })
}

fn measure_inference(batch: usize) -> Result<Timing> {
    let (model, _) = random_model(&student_config(4), false, 5)?;
    let input = random_input(batch, 64, &mut Rng::new(2))?;
    let runs = if batch == 1 { 50 } else { 10 };
    time(runs, || model.logits(&input).map(|_| ()))
}

fn run_one(name: &str) -> Result<()> {
    let Timing {
        seconds,
        usage,
        accuracy,
    } = match name {
        "step" | "teacher" | "student" => measure_step(name)?,
        "epoch_pad64" => measure_epoch(false)?,
        "epoch_grouped" => measure_epoch(true)?,
        "infer_b1" => measure_inference(1)?,
        "infer_b32" => measure_inference(32)?,
        "quickstart" => measure_quickstart()?,
        other => candle_core::bail!("unknown measurement `{other}`"),
    };
    let row = serde_json::json!({
        "name": name,
        "seconds": seconds,
        "user_s": usage.user_s,
        "sys_s": usage.sys_s,
        "minflt": usage.minflt,
        "peak_mb": peak_rss_mb(),
        "teacher_accuracy": accuracy.map(|a| a.teacher),
        "student_accuracy": accuracy.map(|a| a.student),
    });
    println!("{row}");
    Ok(())
}

/// One measurement as a child printed it: wall seconds, per-run user and system
/// seconds and minor page faults, peak RSS.
#[derive(Default, Clone, Copy)]
struct Row {
    seconds: Option<f64>,
    user_s: Option<f64>,
    sys_s: Option<f64>,
    minflt: Option<f64>,
    peak_mb: Option<f64>,
    accuracy: Option<Accuracy>,
}

fn parse_rows(stdout: &str) -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    for line in stdout.lines().filter(|l| l.trim_start().starts_with('{')) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(name) = v.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        rows.insert(
            name.to_string(),
            Row {
                seconds: v.get("seconds").and_then(|s| s.as_f64()),
                user_s: v.get("user_s").and_then(|s| s.as_f64()),
                sys_s: v.get("sys_s").and_then(|s| s.as_f64()),
                minflt: v.get("minflt").and_then(|s| s.as_f64()),
                peak_mb: v.get("peak_mb").and_then(|s| s.as_f64()),
                accuracy: v
                    .get("teacher_accuracy")
                    .and_then(|a| a.as_f64())
                    .zip(v.get("student_accuracy").and_then(|a| a.as_f64()))
                    .map(|(teacher, student)| Accuracy { teacher, student }),
            },
        );
    }
    rows
}

fn fmt_time(s: Option<f64>) -> String {
    match s {
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
        None => "-".into(),
    }
}

fn fmt_mb(m: Option<f64>) -> String {
    m.map_or("-".into(), |m| format!("{m:.0} MB"))
}

/// `user/sys` seconds and minor faults (k = thousands) of one side, per run.
fn fmt_usage(r: &Row) -> String {
    match (r.user_s, r.sys_s, r.minflt) {
        (Some(u), Some(s), Some(f)) => format!("{u:.2}/{s:.2} s {:.0}k", f / 1e3),
        _ => "-".into(),
    }
}

/// The quick start's dev accuracies on both sides, when it ran.
fn print_accuracies(ours: &BTreeMap<String, Row>, theirs: &BTreeMap<String, Row>) {
    let side = |rows: &BTreeMap<String, Row>| rows.get("quickstart").and_then(|r| r.accuracy);
    let (o, t) = (side(ours), side(theirs));
    if o.is_none() && t.is_none() {
        return;
    }
    let pct = |a: Option<Accuracy>, f: fn(Accuracy) -> f64| {
        a.map_or("-".into(), |a| format!("{:.2}%", 100.0 * f(a)))
    };
    println!("\nquick start, SST-2 dev accuracy     ours     PyTorch");
    for (what, f) in [
        (
            "teacher (MiniLM-L6, fine-tuned)",
            (|a| a.teacher) as fn(Accuracy) -> f64,
        ),
        ("student (its layers 2, 4, 6)", |a| a.student),
    ] {
        println!("{what:<36} {:>8} {:>10}", pct(o, f), pct(t, f));
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    candle_distill::runtime::init();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--run") {
        let name = args.get(i + 1).ok_or("--run needs a measurement name")?;
        run_one(name)?;
        return Ok(());
    }
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect());
    let selected: Vec<&(&str, &str)> = MEASUREMENTS
        .iter()
        .filter(|(n, _)| only.as_ref().is_none_or(|o| o.iter().any(|x| x == n)))
        .collect();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "2".into());
    let exe = std::env::current_exe()?;

    let mut ours = BTreeMap::new();
    for (name, _) in &selected {
        eprintln!("ours: {name} ...");
        let out = Command::new(&exe)
            .args(["--run", name])
            .env("RAYON_NUM_THREADS", &threads)
            .output()?;
        if !out.status.success() {
            eprintln!(
                "ours: {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        ours.extend(parse_rows(&String::from_utf8_lossy(&out.stdout)));
    }

    let mut theirs = BTreeMap::new();
    if !args.iter().any(|a| a == "--no-python") {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let script = repo_root().join("benches/pytorch_reference.py");
        let names: Vec<&str> = selected.iter().map(|(n, _)| *n).collect();
        eprintln!("pytorch: {} ...", names.join(","));
        match Command::new(&python)
            .arg(&script)
            .args(["--only", &names.join(","), "--threads", &threads])
            .args([
                "--device",
                &torch_device(),
                "--batch",
                &step_batch().to_string(),
            ])
            .output()
        {
            Ok(out) => {
                eprint!("{}", String::from_utf8_lossy(&out.stderr));
                theirs = parse_rows(&String::from_utf8_lossy(&out.stdout));
            }
            Err(e) => eprintln!("pytorch reference not run ({python}: {e})"),
        }
    }

    println!(
        "\n{:<58} {:>10} {:>10} {:>7} {:>9} {:>9} {:>20} {:>20}",
        "shape",
        "ours",
        "PyTorch",
        "ratio",
        "peak ours",
        "peak torch",
        "ours user/sys flt",
        "torch user/sys flt"
    );
    let mut names: Vec<(String, String)> = selected
        .iter()
        // The step rows' batch is BENCH_STEP_BATCH's.
        .map(|(n, d)| {
            (
                n.to_string(),
                d.replace("b16 ", &format!("b{} ", step_batch())),
            )
        })
        .collect();
    for (extra, what) in [
        ("ort_b1", "onnxruntime student inference b1 s64"),
        ("ort_b32", "onnxruntime student inference b32 s64"),
    ] {
        if theirs.contains_key(extra) {
            names.push((extra.into(), what.into()));
        }
    }
    for (name, what) in names {
        // onnxruntime rows compare against our own inference numbers.
        let o = ours
            .get(&name.replace("ort_", "infer_"))
            .copied()
            .unwrap_or_default();
        let t = theirs.get(&name).copied().unwrap_or_default();
        let ratio = match (o.seconds, t.seconds) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!(
            "{:<58} {:>10} {:>10} {:>7} {:>9} {:>9} {:>20} {:>20}",
            what,
            fmt_time(o.seconds),
            fmt_time(t.seconds),
            ratio,
            fmt_mb(o.peak_mb),
            fmt_mb(t.peak_mb),
            fmt_usage(&o),
            fmt_usage(&t)
        );
    }
    print_accuracies(&ours, &theirs);
    println!(
        "(ratio = ours / PyTorch time; below 1 is faster. user/sys: CPU seconds per run, flt: minor page faults per run. RAYON_NUM_THREADS={threads}; device {}; step rows at batch {})",
        torch_device(),
        step_batch()
    );
    Ok(())
}
