//! Reading checkpoint files into one name -> tensor map with canonical names.
//!
//! Canonical names are those of transformers' `BertForSequenceClassification` /
//! `BertForMaskedLM`: the encoder under `bert.`, LayerNorm parameters as `weight`/`bias`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// The weight files of one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFiles {
    /// `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    Safetensors(Vec<PathBuf>),
    /// `pytorch_model.bin`: PyTorch's zip format (torch >= 1.6) or its legacy format.
    PytorchBin(PathBuf),
}

impl WeightFiles {
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            WeightFiles::Safetensors(v) => v.iter().map(|p| p.as_path()).collect(),
            WeightFiles::PytorchBin(p) => vec![p.as_path()],
        }
    }

    pub fn size_on_disk(&self) -> u64 {
        self.paths()
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// Maps a checkpoint's tensor name to the canonical one; `None` for non-parameters.
pub fn canonical_name(name: &str) -> Option<String> {
    if name.ends_with("position_ids") || name.ends_with(".num_batches_tracked") {
        return None;
    }
    let mut n = name.to_string();
    // Old TensorFlow-converted checkpoints call LayerNorm parameters gamma/beta.
    if let Some(stem) = n.strip_suffix(".gamma") {
        n = format!("{stem}.weight");
    } else if let Some(stem) = n.strip_suffix(".beta") {
        n = format!("{stem}.bias");
    }
    const ENCODER_PARTS: [&str; 4] = ["embeddings.", "encoder.", "pooler.", "embeddings_project."];
    if ENCODER_PARTS.iter().any(|p| n.starts_with(p)) {
        n = format!("bert.{n}");
    }
    Some(n)
}

/// Loads every tensor of the checkpoint to the CPU in its stored dtype, with canonical names.
pub fn read_weights(files: &WeightFiles) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut insert = |path: &Path, name: String, tensor: Tensor| -> Result<()> {
        if let Some(canon) = canonical_name(&name) {
            if out.insert(canon.clone(), tensor).is_some() {
                return Err(Error::Weights {
                    path: path.display().to_string(),
                    name: canon,
                    message: "appears twice (with and without the `bert.` prefix?)".into(),
                });
            }
        }
        Ok(())
    };
    match files {
        WeightFiles::Safetensors(paths) => {
            for path in paths {
                let tensors = candle_core::safetensors::load(path, &Device::Cpu)
                    .map_err(|e| weights_error(path, e))?;
                for (name, t) in tensors {
                    insert(path, name, t)?;
                }
            }
        }
        WeightFiles::PytorchBin(path) => {
            let tensors = if super::torch_legacy::is_legacy(path)? {
                super::torch_legacy::read_legacy(path)?
            } else if starts_with(path, b"PK\x03\x04")? {
                candle_core::pickle::read_all(path).map_err(|e| weights_error(path, e))?
            } else if starts_with(path, b"version https://git-lfs")? {
                return Err(Error::Weights {
                    path: path.display().to_string(),
                    name: "*".into(),
                    message: "a Git LFS pointer, not the weights: fetch them with `git lfs pull`"
                        .into(),
                });
            } else {
                return Err(Error::Weights {
                    path: path.display().to_string(),
                    name: "*".into(),
                    message: "not a PyTorch checkpoint (neither the zip format of torch >= 1.6 \
                              nor the legacy format)"
                        .into(),
                });
            };
            for (name, t) in tensors {
                insert(path, name, t)?;
            }
        }
    }
    Ok(out)
}

/// The checkpoint's canonical tensor names, read from the safetensors headers alone
/// (a `pytorch_model.bin` is loaded whole).
pub fn tensor_names(files: &WeightFiles) -> Result<Vec<String>> {
    let WeightFiles::Safetensors(paths) = files else {
        return Ok(read_weights(files)?.into_keys().collect());
    };
    let mut names = Vec::new();
    for path in paths {
        // SAFETY: the file is mapped read-only while a checkpoint is not being written;
        // only its header is read, and no tensor outlives the mapping.
        let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
            .map_err(|e| weights_error(path, e))?;
        names.extend(
            mapped
                .tensors()
                .into_iter()
                .filter_map(|(name, _)| canonical_name(&name)),
        );
    }
    Ok(names)
}

fn starts_with(path: &Path, prefix: &[u8]) -> Result<bool> {
    use std::io::Read;
    let mut head = vec![0u8; prefix.len()];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(file.read_exact(&mut head).is_ok() && head == prefix)
}

fn weights_error(path: &Path, e: candle_core::Error) -> Error {
    Error::Weights {
        path: path.display().to_string(),
        name: "*".into(),
        message: format!("cannot read the file: {e}"),
    }
}

/// Lists the shard files named by a `model.safetensors.index.json`.
pub fn shards_from_index(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: index.to_path_buf(),
        cause: e,
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::invalid(index.display(), "weight_map", "missing or not an object"))?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// Writes tensors as safetensors atomically (temporary file, then rename).
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = crate::io::temp_path(path);
    candle_core::safetensors::save(tensors, &tmp)?;
    crate::io::commit(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::canonical_name;

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical_name("embeddings.word_embeddings.weight").as_deref(),
            Some("bert.embeddings.word_embeddings.weight")
        );
        assert_eq!(
            canonical_name("bert.encoder.layer.0.output.LayerNorm.gamma").as_deref(),
            Some("bert.encoder.layer.0.output.LayerNorm.weight")
        );
        assert_eq!(
            canonical_name("classifier.bias").as_deref(),
            Some("classifier.bias")
        );
        assert_eq!(canonical_name("bert.embeddings.position_ids"), None);
        assert_eq!(
            canonical_name("fit_denses.0.weight").as_deref(),
            Some("fit_denses.0.weight")
        );
        // What TinyBERT's general checkpoints hold besides the encoder.
        assert_eq!(
            canonical_name("cls.predictions.transform.LayerNorm.gamma").as_deref(),
            Some("cls.predictions.transform.LayerNorm.weight")
        );
        assert_eq!(
            canonical_name("fit_dense.bias").as_deref(),
            Some("fit_dense.bias")
        );
    }
}
