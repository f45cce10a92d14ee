//! Teacher outputs that several epochs need (the prediction stage's logits) are computed
//! once and kept on disk, keyed by the teacher, the tokenised data and the settings,
//! so later epochs, resumed runs and other runs on the same data reuse them.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use crate::data::{inference_order, EncodedDataset};
use crate::model::BertForSequenceClassification;
use crate::tokenizer::{pad_batch, Encoded};
use crate::Result;

/// Logits of `model` for every example, in order, on the CPU, in f32, in the batches
/// evaluation forms (`data::inference_order`: examples of similar length together).
pub fn model_logits(
    model: &BertForSequenceClassification,
    examples: &EncodedDataset,
    batch_size: usize,
    device: &Device,
) -> Result<Tensor> {
    let labels = model.config().num_labels();
    let mut rows = vec![0f32; examples.len() * labels];
    let bar = crate::progress::bar(examples.len() as u64, "teacher");
    let encoded = examples.encoded();
    for indices in inference_order(&examples.lengths(), batch_size) {
        // Inputs only: the examples may be unlabelled, and labels are not needed here.
        let batch: Vec<&Encoded> = indices.iter().map(|&i| encoded[i]).collect();
        let input = pad_batch(&batch, examples.pad_id, device)?;
        let logits: Vec<Vec<f32>> = model
            .logits(&input)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2()?;
        for (&i, row) in indices.iter().zip(logits) {
            rows[i * labels..(i + 1) * labels].copy_from_slice(&row);
        }
        bar.inc(indices.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Tensor::from_vec(
        rows,
        (examples.len(), labels),
        &Device::Cpu,
    )?)
}

/// Content key of a teacher-output cache entry.
pub fn cache_key(teacher_identity: &str, examples: &[&Encoded], settings: &str) -> String {
    let mut h = Sha256::new();
    h.update(teacher_identity.as_bytes());
    h.update([0]);
    h.update(settings.as_bytes());
    for e in examples {
        h.update((e.ids.len() as u32).to_le_bytes());
        for (id, t) in e.ids.iter().zip(&e.type_ids) {
            h.update(id.to_le_bytes());
            h.update(t.to_le_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

/// Cached [`model_logits`]: read `<dir>/teacher-logits-<key>.safetensors` when present,
/// else compute and write it atomically.
pub fn cached_logits(
    dir: &Path,
    key: &str,
    compute: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    let path = dir.join(format!(
        "teacher-logits-{}.safetensors",
        &key[..32.min(key.len())]
    ));
    if path.is_file() {
        let mut t = candle_core::safetensors::load(&path, &Device::Cpu)?;
        if let Some(logits) = t.remove("logits") {
            tracing::info!("teacher logits: reusing {}", path.display());
            return Ok(logits);
        }
    }
    let logits = compute()?;
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let tmp = crate::io::temp_path(&path);
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("logits".to_string(), logits.clone())]),
        &tmp,
    )?;
    crate::io::commit(&tmp, &path)?;
    Ok(logits)
}

/// An identity for a model's files: config text plus weight file names, sizes and times.
pub fn files_identity(files: &crate::model::ModelFiles) -> String {
    let mut parts = vec![std::fs::read_to_string(&files.config).unwrap_or_default()];
    for p in files.weights.paths() {
        let meta = std::fs::metadata(p).ok();
        parts.push(format!(
            "{}:{}:{:?}",
            p.display(),
            meta.as_ref().map(|m| m.len()).unwrap_or(0),
            meta.and_then(|m| m.modified().ok())
        ));
    }
    parts.join("\n")
}
