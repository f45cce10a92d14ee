//! Writes student checkpoints for trying `export` and `bench` without a training run.
//!
//!   cargo run --example make_student -- tiny <out> [seed]
//!       the deterministic tiny student of tests/export.rs (with training-only tensors)
//!   cargo run --example make_student -- from-encoder <encoder> <out> <layers> <labels> [seed]
//!       keeps the encoder's layers <layers> (0-based, comma-separated, e.g. 1,3,5),
//!       renumbered from 0, and adds a seeded random classifier head for <labels>
//!       (comma-separated names).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_distill::model::{build_classifier, BuildOptions, ModelFiles};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seed = |i: usize| -> anyhow::Result<u64> {
        Ok(args.get(i).map(|s| s.parse()).transpose()?.unwrap_or(0))
    };
    match args.first().map(String::as_str) {
        Some("tiny") if args.len() >= 2 => {
            candle_distill::testing::write_tiny_student(Path::new(&args[1]), seed(2)?)?;
        }
        Some("from-encoder") if args.len() >= 5 => {
            let layers = args[3]
                .split(',')
                .map(|s| s.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .context("layers: expected comma-separated indices")?;
            let labels: Vec<String> = args[4].split(',').map(str::to_string).collect();
            from_encoder(&args[1], Path::new(&args[2]), &layers, &labels, seed(5)?)?;
        }
        _ => bail!(
            "usage: make_student tiny <out> [seed] | from-encoder <encoder> <out> <layers> <labels> [seed]"
        ),
    }
    Ok(())
}

fn from_encoder(
    spec: &str,
    out: &Path,
    layers: &[usize],
    labels: &[String],
    seed: u64,
) -> anyhow::Result<()> {
    let files = ModelFiles::resolve(spec)?;
    let mut config = files.read_config()?;
    if let Some(&bad) = layers.iter().find(|&&l| l >= config.num_hidden_layers) {
        bail!(
            "layer {bad} does not exist: {spec} has {} layers",
            config.num_hidden_layers
        );
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in files.read_weights()? {
        let Some(rest) = name.strip_prefix("bert.encoder.layer.") else {
            tensors.insert(name, t);
            continue;
        };
        let (index, tail) = rest.split_once('.').context("layer tensor name")?;
        if let Some(new) = layers.iter().position(|&l| l.to_string() == index) {
            tensors.insert(format!("bert.encoder.layer.{new}.{tail}"), t);
        }
    }
    config.num_hidden_layers = layers.len();
    config.set_labels(labels);
    config.architectures = Some(vec!["BertForSequenceClassification".into()]);
    let built = build_classifier(
        spec,
        &config,
        tensors,
        &BuildOptions::training(&Device::Cpu, seed),
    )?;
    eprintln!("initialised: {}", built.report.created.join(", "));
    let varmap = built.varmap.context("trainable build has a varmap")?;
    let tensors = varmap
        .data()
        .lock()
        .expect("lock")
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(DType::F32)?)))
        .collect::<anyhow::Result<HashMap<_, _>>>()?;
    std::fs::create_dir_all(out)?;
    candle_distill::model::weights::save_safetensors(&tensors, &out.join("model.safetensors"))?;
    candle_distill::io::write_json(&out.join("config.json"), &config)?;
    let tok = &files.tokenizer;
    for path in [
        &tok.tokenizer_json,
        &tok.vocab_txt,
        &tok.tokenizer_config,
        &tok.special_tokens_map,
    ]
    .into_iter()
    .flatten()
    {
        std::fs::copy(path, out.join(path.file_name().context("file name")?))?;
    }
    Ok(())
}
