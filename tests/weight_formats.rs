//! The same checkpoint in every layout users have loads to the same outputs: MiniLM re-saved
//! as pytorch_model.bin (zip and legacy format, `bert.`-prefixed names), as two safetensors
//! shards with an index, and with gamma/beta LayerNorm names. Plus a legacy-format file
//! written by torch itself.

use crate::common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_distill::model::weights::{read_weights, WeightFiles};
use candle_distill::model::ModelFiles;
use candle_distill::testing::pth::{write_pytorch_bin, PthFormat};
use common::minilm_dir;
use common::reference::check_against_reference;

/// MiniLM's tensors as stored (no `bert.` prefix), sorted by name.
fn minilm_tensors(dir: &Path) -> Vec<(String, Tensor)> {
    let mut tensors: Vec<_> =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// A copy of MiniLM's config and tokenizer files in `dst`, without weights.
fn copy_non_weights(src: &Path, dst: &Path) {
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ] {
        std::fs::copy(src.join(name), dst.join(name)).unwrap();
    }
}

fn save(tensors: &[(String, Tensor)], path: &Path) {
    let map: HashMap<_, _> = tensors.iter().cloned().collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

#[test]
fn pytorch_bin_with_bert_prefix_matches_transformers() {
    let Some(src) = minilm_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    copy_non_weights(&src, tmp.path());
    let prefixed: Vec<_> = minilm_tensors(&src)
        .into_iter()
        .map(|(n, t)| (format!("bert.{n}"), t))
        .collect();
    write_pytorch_bin(
        &tmp.path().join("pytorch_model.bin"),
        &prefixed,
        PthFormat::Zip,
    )
    .unwrap();
    let files = ModelFiles::resolve(tmp.path().to_str().unwrap()).unwrap();
    assert!(matches!(files.weights, WeightFiles::PytorchBin(_)));
    check_against_reference(tmp.path());
}

#[test]
fn legacy_pytorch_bin_matches_transformers() {
    let Some(src) = minilm_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    copy_non_weights(&src, tmp.path());
    write_pytorch_bin(
        &tmp.path().join("pytorch_model.bin"),
        &minilm_tensors(&src),
        PthFormat::Legacy,
    )
    .unwrap();
    check_against_reference(tmp.path());
}

#[test]
fn sharded_safetensors_match_transformers() {
    let Some(src) = minilm_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    copy_non_weights(&src, tmp.path());
    let tensors = minilm_tensors(&src);
    let half = tensors.len() / 2;
    let shards = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    save(&tensors[..half], &tmp.path().join(shards[0]));
    save(&tensors[half..], &tmp.path().join(shards[1]));
    let weight_map: serde_json::Map<String, serde_json::Value> = tensors
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.clone(), shards[usize::from(i >= half)].into()))
        .collect();
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let files = ModelFiles::resolve(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(files.weights.paths().len(), 2);
    check_against_reference(tmp.path());
}

#[test]
fn gamma_beta_layer_norm_names_match_transformers() {
    let Some(src) = minilm_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    copy_non_weights(&src, tmp.path());
    let renamed: Vec<_> = minilm_tensors(&src)
        .into_iter()
        .map(|(n, t)| {
            let n = n
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (n, t)
        })
        .collect();
    assert_eq!(
        renamed
            .iter()
            .filter(|(n, _)| n.ends_with(".gamma"))
            .count(),
        13
    );
    save(&renamed, &tmp.path().join("model.safetensors"));
    check_against_reference(tmp.path());
}

/// A state dict written by torch 2.15 in the legacy format (tests/scripts/make_legacy_pth.py).
#[test]
fn legacy_file_written_by_torch_reads_exactly() {
    let path = common::repo_root().join("tests/fixtures/legacy_pytorch_model.bin");
    let tensors = read_weights(&WeightFiles::PytorchBin(path)).unwrap();
    let values = |name: &str| -> Vec<f32> {
        tensors[name]
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let g: Vec<f32> = (0..24).map(|i| i as f32 / 10.0).collect();
    let word = &tensors["bert.embeddings.word_embeddings.weight"];
    assert_eq!(word.dims(), &[4, 6]);
    assert_eq!(values("bert.embeddings.word_embeddings.weight"), g);
    // Tied weights share one storage.
    assert_eq!(values("cls.predictions.decoder.weight"), g);
    // A transposed view.
    let query = &tensors["bert.encoder.layer.0.attention.self.query.weight"];
    assert_eq!(query.dims(), &[6, 4]);
    let transposed: Vec<f32> = (0..6)
        .flat_map(|c| (0..4).map(move |r| (r * 6 + c) as f32 / 10.0))
        .collect();
    assert_eq!(
        values("bert.encoder.layer.0.attention.self.query.weight"),
        transposed
    );
    // A view at storage offset 6, under its canonical name (gamma -> weight).
    assert_eq!(values("bert.embeddings.LayerNorm.weight"), g[6..12]);
    let beta = &tensors["bert.embeddings.LayerNorm.bias"];
    assert_eq!(beta.dtype(), DType::F16);
    assert_eq!(
        values("bert.embeddings.LayerNorm.bias"),
        [0.5, -0.5, 1.0, -1.0, 2.0, -2.0]
    );
    // position_ids are a buffer, not a parameter; the bool buffer is skipped.
    assert!(!tensors.contains_key("bert.embeddings.position_ids"));
    assert!(!tensors.contains_key("bert.mask"));
    assert_eq!(tensors.len(), 5);
}

#[test]
fn a_file_that_is_no_checkpoint_is_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pytorch_model.bin");
    std::fs::write(&path, b"<html>not a checkpoint</html>").unwrap();
    let err = read_weights(&WeightFiles::PytorchBin(path.clone()))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("not a PyTorch checkpoint"), "{err}");
    std::fs::write(
        &path,
        b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n",
    )
    .unwrap();
    let err = read_weights(&WeightFiles::PytorchBin(path))
        .unwrap_err()
        .to_string();
    assert!(err.contains("git lfs pull"), "{err}");
}
