//! Marian generation on tiny random pairs written in the Helsinki-NLP layout: stopping
//! at EOS or the length limit, and batching that never changes a result.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_distill::augment::backtranslate::{BackTranslator, BacktranslateConfig};
use candle_distill::augment::marian::{GenerateOptions, MarianFiles, MarianTranslator, Sampling};
use candle_distill::augment::tiny::{write_random_marian, TinyMarian};
use candle_distill::augment::{augment_rows, Method, TextRef};
use candle_distill::rng::Rng;

fn spm_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm/glue-unigram.spm")
}

fn translator(dir: &Path, shape: TinyMarian) -> MarianTranslator {
    write_random_marian(dir, &spm_fixture(), &shape).unwrap();
    let files = MarianFiles::resolve(dir.to_str().unwrap()).unwrap();
    MarianTranslator::load(&files, &Device::Cpu, DType::F32).unwrap()
}

const TEXTS: [&str; 7] = [
    "the movie was good",
    "a film about a dog",
    "the actors shine",
    "it is a very long and rather boring story about nothing at all",
    "the movie was bad",
    "x",
    "an awful , dull film",
];

const SAMPLING: Sampling = Sampling::TopP {
    temperature: 0.8,
    top_p: 0.9,
};

fn opts(sampling: Sampling, max_len: usize, batch_size: usize) -> GenerateOptions {
    GenerateOptions {
        sampling,
        max_len,
        batch_size,
    }
}

fn rngs(n: usize) -> Vec<Rng> {
    (0..n).map(|i| Rng::new(100 + i as u64)).collect()
}

#[test]
fn tokenizer_maps_pieces_through_vocab_json_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let t = translator(dir.path(), TinyMarian::default());
    let text = "The movie was surprisingly good, and the actors shine!";
    let ids = t.tokenizer.encode(text, 512).unwrap();
    assert_eq!(*ids.last().unwrap(), t.tokenizer.eos_id);
    assert_eq!(t.tokenizer.decode(&ids), text);
    // Ids come from vocab.json (reversed spm order), not from the spm model.
    let vocab: std::collections::HashMap<String, u32> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("vocab.json")).unwrap())
            .unwrap();
    let (spm, _) = candle_distill::augment::spm::load_spm_tokenizer(&spm_fixture()).unwrap();
    assert_eq!(ids[1], vocab["▁movie"]);
    assert_ne!(ids[1] as usize, spm.piece_to_id("▁movie").unwrap());
    // Cut to the limit, `</s>` kept.
    let cut = t.tokenizer.encode(text, 4).unwrap();
    assert_eq!(cut.len(), 4);
    assert_eq!(cut[..3], ids[..3]);
    assert_eq!(cut[3], t.tokenizer.eos_id);
}

#[test]
fn generation_stops_at_eos_or_the_length_limit() {
    let dir = tempfile::tempdir().unwrap();
    let sources: Vec<Vec<u32>> = {
        let t = translator(dir.path(), TinyMarian::default());
        TEXTS
            .iter()
            .map(|s| t.tokenizer.encode(s, 64).unwrap())
            .collect()
    };
    for sampling in [Sampling::Greedy, SAMPLING] {
        let eos_always = tempfile::tempdir().unwrap();
        let mut t = translator(
            eos_always.path(),
            TinyMarian {
                eos_bias: 50.0,
                ..Default::default()
            },
        );
        let out = t
            .generate(&sources, &opts(sampling, 9, 4), &mut rngs(sources.len()))
            .unwrap();
        assert!(out.iter().all(|o| o.is_empty()), "{out:?}");

        let eos_never = tempfile::tempdir().unwrap();
        let mut t = translator(
            eos_never.path(),
            TinyMarian {
                eos_bias: -50.0,
                ..Default::default()
            },
        );
        let out = t
            .generate(&sources, &opts(sampling, 9, 4), &mut rngs(sources.len()))
            .unwrap();
        assert!(out.iter().all(|o| o.len() == 9), "{out:?}");
        let pad = t.tokenizer.pad_id;
        assert!(out
            .iter()
            .flatten()
            .all(|&id| id != pad && id != t.tokenizer.eos_id));
    }
}

#[test]
fn batched_and_one_by_one_generation_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = translator(
        dir.path(),
        TinyMarian {
            seed: 3,
            ..Default::default()
        },
    );
    let sources: Vec<Vec<u32>> = TEXTS
        .iter()
        .map(|s| t.tokenizer.encode(s, 64).unwrap())
        .collect();
    // Some sources share a length, so real batches form.
    let mut lengths: Vec<usize> = sources.iter().map(Vec::len).collect();
    lengths.sort();
    lengths.dedup();
    assert!(lengths.len() < sources.len(), "{lengths:?}");
    for sampling in [Sampling::Greedy, SAMPLING] {
        let o = opts(sampling, 12, 8);
        let batched = t.generate(&sources, &o, &mut rngs(sources.len())).unwrap();
        let single: Vec<Vec<u32>> = sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut r = vec![Rng::new(100 + i as u64)];
                t.generate(std::slice::from_ref(s), &opts(sampling, 12, 1), &mut r)
                    .unwrap()
                    .remove(0)
            })
            .collect();
        assert_eq!(batched, single, "{sampling:?}");
        assert!(batched.iter().any(|o| !o.is_empty()));
        // Same seeds, same result; other seeds, another sample.
        assert_eq!(
            t.generate(&sources, &o, &mut rngs(sources.len())).unwrap(),
            batched
        );
        if sampling != Sampling::Greedy {
            let other: Vec<Rng> = (0..sources.len())
                .map(|i| Rng::new(900 + i as u64))
                .collect();
            assert_ne!(
                t.generate(&sources, &o, &mut other.clone()).unwrap(),
                batched
            );
        }
    }
}

#[test]
fn back_translation_rows_are_seeded_and_batch_independent() {
    let (fwd_dir, bwd_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let make = |batch_size: usize, seed: u64| {
        let fwd = translator(
            fwd_dir.path(),
            TinyMarian {
                seed: 1,
                ..Default::default()
            },
        );
        let bwd = translator(
            bwd_dir.path(),
            TinyMarian {
                seed: 2,
                ..Default::default()
            },
        );
        let config = BacktranslateConfig {
            sampling: SAMPLING,
            samples: 3,
            max_len: 10,
            batch_size,
            seed,
        };
        BackTranslator::new(fwd, bwd, config).unwrap()
    };
    let rows: Vec<Vec<String>> = TEXTS
        .iter()
        .map(|t| vec![t.to_string(), "x y".to_string()])
        .collect();
    let mut bt = make(16, 7);
    let out = augment_rows(&rows, 0, &mut bt).unwrap();
    assert_eq!(
        out.iter().filter(|r| r.method == Method::Original).count(),
        rows.len()
    );
    let new = out
        .iter()
        .filter(|r| r.method == Method::Backtranslate)
        .count();
    assert!(new > 0 && new <= rows.len() * 2 * 3, "{new}");
    assert_eq!(bt.stats().round_trips, rows.len() * 2 * 3);
    assert_eq!(augment_rows(&rows, 0, &mut make(1, 7)).unwrap(), out);
    assert_ne!(augment_rows(&rows, 0, &mut make(16, 8)).unwrap(), out);
    // One text's round trips do not depend on the other texts in the call.
    let one = [TextRef {
        row: 3,
        column: 0,
        text: TEXTS[3],
    }];
    let mut alone = make(16, 7);
    let all: Vec<TextRef> = TEXTS
        .iter()
        .enumerate()
        .map(|(row, text)| TextRef {
            row,
            column: 0,
            text,
        })
        .collect();
    assert_eq!(
        alone.round_trips(&one).unwrap()[0],
        make(16, 7).round_trips(&all).unwrap()[3]
    );
}
