//! Parity with Hugging Face transformers on real weights (all-MiniLM-L6-v2).
//! Reference values: tests/scripts/bert_reference.py, committed as fixtures.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_distill::model::{build_classifier, BertInput, BuildOptions, ModelFiles, Outputs};
use candle_distill::tokenizer::{TextTokenizer, TokenizerFiles};
use common::{minilm_dir, rel_err};

const TOL: f32 = 1e-4;

struct Reference {
    tensors: std::collections::HashMap<String, Tensor>,
    texts: Vec<Vec<String>>,
    stride: usize,
    heads: Vec<usize>,
}

fn reference() -> Reference {
    let root = common::repo_root().join("tests/fixtures");
    let tensors =
        candle_core::safetensors::load(root.join("minilm_reference.safetensors"), &Device::Cpu)
            .unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("minilm_reference.json")).unwrap())
            .unwrap();
    Reference {
        tensors,
        texts: serde_json::from_value(meta["texts"].clone()).unwrap(),
        stride: meta["hidden_stride"].as_u64().unwrap() as usize,
        heads: serde_json::from_value(meta["heads"].clone()).unwrap(),
    }
}

fn to_u32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn reference_input(r: &Reference) -> BertInput {
    BertInput {
        input_ids: to_u32(&r.tensors["input_ids"]),
        token_type_ids: to_u32(&r.tensors["token_type_ids"]),
        attention_mask: to_u32(&r.tensors["attention_mask"]),
    }
}

fn check_tokenizer(tok: &TextTokenizer, r: &Reference, what: &str) {
    let ids: Vec<Vec<u32>> = to_u32(&r.tensors["input_ids"]).to_vec2().unwrap();
    let mask: Vec<Vec<u32>> = to_u32(&r.tensors["attention_mask"]).to_vec2().unwrap();
    for (i, text) in r.texts.iter().enumerate() {
        let enc = tok
            .encode(&text[0], text.get(1).map(|s| s.as_str()), 512)
            .unwrap();
        let n = mask[i].iter().sum::<u32>() as usize;
        assert_eq!(
            enc.ids,
            ids[i][..n],
            "{what}: tokenisation of example {i} differs: {text:?}"
        );
    }
}

#[test]
fn tokenization_matches_transformers() {
    let Some(dir) = minilm_dir() else { return };
    let r = reference();
    assert_eq!(r.texts.len(), 16);
    let files = ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    check_tokenizer(&files.read_tokenizer().unwrap(), &r, "tokenizer.json");
    // The vocab.txt + tokenizer_config.json path, for checkpoints without tokenizer.json.
    let from_vocab = TextTokenizer::from_files(&TokenizerFiles {
        vocab_txt: Some(dir.join("vocab.txt")),
        tokenizer_config: Some(dir.join("tokenizer_config.json")),
        ..Default::default()
    })
    .unwrap();
    check_tokenizer(&from_vocab, &r, "vocab.txt");
    assert_eq!(
        from_vocab.vocab_hash(),
        files.read_tokenizer().unwrap().vocab_hash()
    );
}

/// Runs the checkpoint in `dir` on the reference batch and compares every output.
pub fn check_against_reference(dir: &std::path::Path) {
    let r = reference();
    let files = ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    let config = files.read_config().unwrap();
    let options = BuildOptions {
        init_seed: Some(0), // the checkpoint has no classifier head; it is not compared
        ..BuildOptions::inference(&Device::Cpu)
    };
    let built =
        build_classifier("minilm", &config, files.read_weights().unwrap(), &options).unwrap();
    assert_eq!(
        built.report.created,
        vec!["classifier.bias", "classifier.weight"]
    );
    let input = reference_input(&r);
    let out = built.model.forward(&input, Outputs::ALL, None).unwrap();

    let hidden = Tensor::stack(&out.encoder.hidden_states, 0).unwrap();
    let hidden_dim = hidden.dim(3).unwrap();
    let idx: Vec<u32> = (0..hidden_dim)
        .step_by(r.stride)
        .map(|i| i as u32)
        .collect();
    let sub = hidden
        .index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 3)
        .unwrap();
    let layers = hidden.dim(0).unwrap();
    for l in 0..layers {
        let e = rel_err(
            &vec(&sub.i(l).unwrap()),
            &vec(&r.tensors["hidden_sub"].i(l).unwrap()),
        );
        assert!(e < TOL, "hidden state {l}: relative error {e}");
        let sum = hidden.i(l).unwrap().sum(2).unwrap();
        let e = rel_err(&vec(&sum), &vec(&r.tensors["hidden_sum"].i(l).unwrap()));
        assert!(e < TOL, "hidden state {l} sums: relative error {e}");
        let sumsq = hidden.i(l).unwrap().sqr().unwrap().sum(2).unwrap();
        let e = rel_err(&vec(&sumsq), &vec(&r.tensors["hidden_sumsq"].i(l).unwrap()));
        assert!(e < TOL, "hidden state {l} squared sums: relative error {e}");
    }

    // Scores: ours carry the -10000 mask on padded keys; compare real keys only.
    let key_mask = input
        .attention_mask
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(1)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let heads = Tensor::new(
        r.heads
            .iter()
            .map(|&h| h as u32)
            .collect::<Vec<_>>()
            .as_slice(),
        &Device::Cpu,
    )
    .unwrap();
    for (l, scores) in out.encoder.attention_scores.iter().enumerate() {
        let masked = scores.broadcast_mul(&key_mask).unwrap();
        let ours = masked.index_select(&heads, 1).unwrap();
        let theirs = r.tensors["scores_sub"]
            .i(l)
            .unwrap()
            .broadcast_mul(&key_mask)
            .unwrap();
        let e = rel_err(&vec(&ours), &vec(&theirs));
        assert!(e < TOL, "attention scores of layer {l}: relative error {e}");
        let rowsum = masked.sum(3).unwrap();
        let e = rel_err(
            &vec(&rowsum),
            &vec(&r.tensors["scores_rowsum"].i(l).unwrap()),
        );
        assert!(
            e < TOL,
            "attention score row sums of layer {l}: relative error {e}"
        );
        // Padded keys carry the finite mask value.
        let min = scores.min_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(min < -9000.0 && min.is_finite());
    }
    let e = rel_err(&vec(&out.pooled), &vec(&r.tensors["pooled"]));
    assert!(e < TOL, "pooled output: relative error {e}");
}

#[test]
fn outputs_match_transformers() {
    let Some(dir) = minilm_dir() else { return };
    check_against_reference(&dir);
}

#[test]
fn half_precision_forward_is_finite_and_close() {
    let Some(dir) = minilm_dir() else { return };
    let r = reference();
    let files = ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
    let config = files.read_config().unwrap();
    let input = reference_input(&r);
    let run = |dtype: DType| {
        let options = BuildOptions {
            dtype,
            init_seed: Some(0),
            ..BuildOptions::inference(&Device::Cpu)
        };
        let built =
            build_classifier("minilm", &config, files.read_weights().unwrap(), &options).unwrap();
        let out = built.model.forward(&input, Outputs::ALL, None).unwrap();
        (vec(&out.encoder.last_hidden_state), vec(&out.pooled))
    };
    let (h32, p32) = run(DType::F32);
    for (dtype, tol) in [(DType::F16, 1e-2), (DType::BF16, 5e-2)] {
        let (h, p) = run(dtype);
        assert!(
            h.iter().chain(&p).all(|v| v.is_finite()),
            "{dtype:?} gave non-finite values"
        );
        let e = rel_err(&h, &h32);
        assert!(e < tol, "{dtype:?} last hidden state: relative error {e}");
        let e = rel_err(&p, &p32);
        assert!(e < tol, "{dtype:?} pooled: relative error {e}");
    }
}
