//! The `.spm` -> tokenizers conversion against the sentencepiece library: the fixture
//! model and expected pieces come from tests/scripts/make_spm_fixture.py.

use candle_distill::augment::spm::{load_spm_tokenizer, PieceKind};

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    pieces: Vec<String>,
    ids: Vec<u32>,
    decoded: String,
}

#[derive(serde::Deserialize)]
struct Expected {
    vocab_size: usize,
    unk_id: usize,
    eos_id: usize,
    cases: Vec<Case>,
}

fn fixture() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm")
}

#[test]
fn pieces_and_ids_match_sentencepiece() {
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    let (model, tokenizer) = load_spm_tokenizer(&fixture().join("glue-unigram.spm")).unwrap();
    assert_eq!(model.pieces.len(), expected.vocab_size);
    assert_eq!(model.unk_id, expected.unk_id);
    assert_eq!(model.pieces[expected.unk_id].kind, PieceKind::Unknown);
    assert_eq!(model.pieces[expected.eos_id].kind, PieceKind::Control);
    assert_eq!(model.normalizer.name, "nmt_nfkc");
    assert!(!model.normalizer.precompiled_charsmap.is_empty());
    let mut failures = Vec::new();
    for case in &expected.cases {
        let enc = tokenizer.encode(case.text.as_str(), false).unwrap();
        if enc.get_ids() != case.ids.as_slice() || enc.get_tokens() != case.pieces.as_slice() {
            failures.push(format!(
                "{:?}\n  rust: {:?}\n  spm:  {:?}",
                case.text,
                enc.get_tokens(),
                case.pieces
            ));
        }
        let decoded = tokenizer.decode(&case.ids, false).unwrap();
        if !case.ids.contains(&(expected.unk_id as u32)) && decoded != case.decoded {
            failures.push(format!(
                "decode {:?}: {decoded:?} != {:?}",
                case.text, case.decoded
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
