//! Parity with Hugging Face transformers on real weights (all-MiniLM-L6-v2).
//! Reference values: tests/scripts/bert_reference.py, committed as fixtures.

use crate::common;

use candle_core::{DType, Device};
use candle_distill::model::{build_classifier, BuildOptions, ModelFiles, Outputs};
use candle_distill::tokenizer::{TextTokenizer, TokenizerFiles};
use common::reference::{
    check_against_reference, reference, reference_input, to_u32, vec, Reference,
};
use common::{minilm_dir, rel_err};

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
            fresh: candle_distill::model::Fresh::TaskAdditions { seed: 0 },
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
