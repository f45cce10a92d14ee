//! Inference speed of classifiers side by side (teacher vs student): latency median and
//! p90 and throughput per sequence length and batch size, with parameters and size,
//! measured on the user's own machine.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::model::{build_classifier, BertConfig, BertInput, BuildOptions, ModelFiles};
use crate::rng::Rng;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub seq_lens: Vec<usize>,
    pub batches: Vec<usize>,
    /// Timed forward passes per shape.
    pub iters: usize,
    /// Untimed passes per shape before timing (allocator and cache warm-up).
    pub warmup: usize,
    pub device: Device,
    pub dtype: DType,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            seq_lens: vec![32, 64, 128],
            batches: vec![1, 8, 32],
            iters: 10,
            warmup: 2,
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchModel {
    /// The spec as given (folder or hub id).
    pub model: String,
    pub layers: usize,
    pub hidden_size: usize,
    /// Parameters of the classifier as run (encoder, pooler, head).
    pub parameters: usize,
    pub size_on_disk_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Index into [`BenchReport::models`].
    pub model: usize,
    pub seq_len: usize,
    pub batch: usize,
    pub iters: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub sequences_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `release` or `debug`: a debug build of this crate times slower than users see.
    pub build: String,
    pub device: String,
    pub dtype: String,
    pub threads: usize,
    pub iters: usize,
    pub warmup: usize,
    pub models: Vec<BenchModel>,
    /// One per model, sequence length and batch size, in that nesting order.
    pub results: Vec<BenchResult>,
}

/// The value below which `q` of the sorted samples lie (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// 22.7M, 26.8K: parameter counts at a glance.
fn count(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else {
        format!("{:.1}K", n as f64 / 1e3)
    }
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Random token ids (no padding): the cost of a forward pass does not depend on them.
fn random_input(batch: usize, seq: usize, vocab: usize, device: &Device) -> Result<BertInput> {
    let mut rng = Rng::new(0x0b5e_55ed);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.below(vocab.max(1)) as u32)
        .collect();
    Ok(BertInput {
        input_ids: Tensor::from_vec(ids, (batch, seq), device)?,
        token_type_ids: Tensor::zeros((batch, seq), DType::U32, device)?,
        attention_mask: Tensor::ones((batch, seq), DType::U32, device)?,
    })
}

fn check_options(opts: &BenchOptions) -> Result<()> {
    let lists = [("--seq-len", &opts.seq_lens), ("--batch", &opts.batches)];
    for (flag, list) in lists {
        if list.is_empty() || list.contains(&0) {
            return Err(Error::invalid(
                flag,
                format!("{list:?}"),
                "expected one or more positive numbers",
            ));
        }
    }
    if opts.iters == 0 {
        return Err(Error::invalid("--iters", "0", "expected at least 1"));
    }
    Ok(())
}

/// Milliseconds of each timed forward pass of `model` on random input of one shape,
/// after the warm-up passes; sorted.
fn time_shape(
    model: &crate::model::BertForSequenceClassification,
    vocab_size: usize,
    seq: usize,
    batch: usize,
    opts: &BenchOptions,
) -> Result<Vec<f64>> {
    let input = random_input(batch, seq, vocab_size, &opts.device)?;
    let run = || -> Result<f64> {
        let start = Instant::now();
        let logits = model.logits(&input)?;
        opts.device.synchronize()?;
        drop(logits);
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    for _ in 0..opts.warmup {
        run()?;
    }
    let mut times = (0..opts.iters).map(|_| run()).collect::<Result<Vec<_>>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Refuses a sequence length longer than model `spec` has positions for.
fn check_seq_lens(spec: &str, config: &BertConfig, opts: &BenchOptions) -> Result<()> {
    match opts
        .seq_lens
        .iter()
        .find(|&&s| s > config.max_sequence_length())
    {
        Some(&seq) => Err(Error::invalid(
            spec,
            "--seq-len",
            format!(
                "{seq} exceeds the longest input the model takes ({}, from \
                 max_position_embeddings)",
                config.max_sequence_length()
            ),
        )),
        None => Ok(()),
    }
}

/// Times every model in `specs` on every (sequence length, batch size).
pub fn bench(specs: &[String], opts: &BenchOptions) -> Result<BenchReport> {
    check_options(opts)?;
    if specs.is_empty() {
        return Err(Error::invalid("--model", "", "give at least one model"));
    }
    let shapes = opts.seq_lens.len() * opts.batches.len();
    let progress = indicatif::ProgressBar::new((specs.len() * shapes) as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} shapes")
            .map_err(Error::msg)?,
    );
    let mut models = Vec::new();
    let mut results = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let files = ModelFiles::resolve(spec)?;
        let config = files.read_config()?;
        check_seq_lens(spec, &config, opts)?;
        // A checkpoint without a task head (a pre-trained encoder) gets a seeded one:
        // its cost is what matters here, not its outputs.
        let build = BuildOptions {
            dtype: opts.dtype,
            fresh: crate::model::Fresh::TaskAdditions { seed: 0 },
            ..BuildOptions::inference(&opts.device)
        };
        let built = build_classifier(spec, &config, files.read_weights()?, &build)?;
        let model = built.model;
        models.push(BenchModel {
            model: spec.clone(),
            layers: config.num_hidden_layers,
            hidden_size: config.hidden_size,
            parameters: config.encoder_parameters() + config.head_parameters(),
            size_on_disk_bytes: files.weights.size_on_disk(),
        });
        progress.set_message(spec.clone());
        for &seq in &opts.seq_lens {
            for &batch in &opts.batches {
                let times = time_shape(&model, config.vocab_size, seq, batch, opts)?;
                let median_ms = median(&times);
                results.push(BenchResult {
                    model: index,
                    seq_len: seq,
                    batch,
                    iters: opts.iters,
                    median_ms,
                    p90_ms: quantile(&times, 0.9),
                    sequences_per_s: batch as f64 / (median_ms / 1e3),
                });
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    Ok(BenchReport {
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        device: crate::device::device_name(&opts.device),
        dtype: format!("{:?}", opts.dtype).to_lowercase(),
        threads: candle_core::utils::get_num_threads(),
        iters: opts.iters,
        warmup: opts.warmup,
        models,
        results,
    })
}

impl BenchReport {
    fn result(&self, model: usize, seq: usize, batch: usize) -> Option<&BenchResult> {
        self.results
            .iter()
            .find(|r| r.model == model && r.seq_len == seq && r.batch == batch)
    }

    /// The models, then one row per shape with every model side by side; models after
    /// the first also show their speed-up over the first (the teacher, by convention).
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "device {} ({} threads), {}, median and p90 of {} runs after {} warm-up\n\n",
            self.device, self.threads, self.dtype, self.iters, self.warmup
        );
        if self.build == "debug" {
            s += "note: a debug build of candle-distill; build with --release for representative timings\n\n";
        }
        let width = self
            .models
            .iter()
            .map(|m| m.model.len())
            .max()
            .unwrap_or(5)
            .max(5);
        s += &format!(
            "     {:<width$}  layers  hidden   params   weights\n",
            "model"
        );
        for (i, m) in self.models.iter().enumerate() {
            s += &format!(
                "[{}]  {:<width$}  {:>6}  {:>6}  {:>7}  {:>7.1} MiB\n",
                i + 1,
                m.model,
                m.layers,
                m.hidden_size,
                count(m.parameters),
                m.size_on_disk_bytes as f64 / 1048576.0
            );
        }
        s += "\n  seq  batch";
        for i in 0..self.models.len() {
            s += &format!(" | [{}] median ms   p90 ms     seq/s", i + 1);
            if i > 0 {
                s += "  speed-up";
            }
        }
        s += "\n";
        let mut shapes: Vec<(usize, usize)> =
            self.results.iter().map(|r| (r.seq_len, r.batch)).collect();
        shapes.dedup();
        shapes.sort();
        shapes.dedup();
        for (seq, batch) in shapes {
            s += &format!("{seq:>5}  {batch:>5}");
            let first = self.result(0, seq, batch);
            for i in 0..self.models.len() {
                match self.result(i, seq, batch) {
                    Some(r) => {
                        s += &format!(
                            " | {:>13.2} {:>8.2} {:>9.1}",
                            r.median_ms, r.p90_ms, r.sequences_per_s
                        );
                        if i > 0 {
                            let speedup = first.map(|f| f.median_ms / r.median_ms);
                            s += &match speedup {
                                Some(x) => format!("  {:>7.2}x", x),
                                None => format!("  {:>8}", "-"),
                            };
                        }
                    }
                    None => s += " |             -        -         -",
                }
            }
            s += "\n";
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let t: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(median(&t), 5.5);
        assert_eq!(quantile(&t, 0.9), 9.0);
        assert_eq!(quantile(&[4.0], 0.9), 4.0);
        assert_eq!(median(&[1.0, 2.0, 7.0]), 2.0);
    }

    #[test]
    fn rejects_empty_or_zero_shapes() {
        let opts = BenchOptions {
            batches: vec![1, 0],
            ..Default::default()
        };
        let err = bench(&["x".into()], &opts).unwrap_err().to_string();
        assert!(err.contains("--batch"), "{err}");
    }
}
