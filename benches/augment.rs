//! Augmentation throughput (sentences per second), printed as a table.
//!
//! Rows: masked-token filling with a tiny BERT and with all-MiniLM-L6-v2 shapes (6 x 384,
//! 30522 vocabulary, random weights; needs the MiniLM tokenizer from
//! target/test-assets), each batched and one masked input per forward pass (how the
//! TinyBERT reference runs); back-translation through a tiny random Marian pair.
//!
//! Run: cargo bench --bench augment

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use candle_distill::augment::backtranslate::{BackTranslator, BacktranslateConfig};
use candle_distill::augment::marian::{MarianFiles, MarianTranslator, Sampling};
use candle_distill::augment::mlm::{BertMaskFiller, MlmAugmenter, MlmConfig};
use candle_distill::augment::tiny::{write_random_marian, TinyMarian};
use candle_distill::augment::{augment_rows, TextAugmenter};
use candle_distill::model::{build_masked_lm, BertConfig, BuildOptions};
use candle_distill::testing::{tiny_config, write_tiny_tokenizer};
use candle_distill::tokenizer::{TextTokenizer, TokenizerFiles};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// SST-2 training sentences when the GLUE folder is there, else a fixed set.
fn sentences(n: usize) -> Vec<Vec<String>> {
    let path = root().join("../shared/data/glue/SST-2/train.tsv");
    let mut rows: Vec<Vec<String>> = std::fs::read_to_string(path)
        .ok()
        .map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split('\t').next())
                .filter(|s| s.split(' ').count() >= 6)
                .take(n)
                .map(|s| vec![s.trim().to_string()])
                .collect()
        })
        .unwrap_or_default();
    while rows.len() < n {
        rows.push(vec![
            "the movie was a very good story about a happy dog and its city".into(),
        ]);
    }
    rows
}

fn time(rows: &[Vec<String>], aug: &mut dyn TextAugmenter) -> (f64, usize) {
    let start = Instant::now();
    let out = augment_rows(rows, 0, aug).expect("augment");
    (rows.len() as f64 / start.elapsed().as_secs_f64(), out.len())
}

fn mlm_filler(config: &BertConfig, tokenizer: TextTokenizer) -> BertMaskFiller {
    let options = BuildOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        trainable: false,
        fresh: candle_distill::model::Fresh::Anything { seed: 0 },
    };
    let model = build_masked_lm("random", config, HashMap::new(), &options)
        .expect("build")
        .model;
    BertMaskFiller::new(model, tokenizer, &Device::Cpu).expect("filler")
}

fn tokenizer(dir: &Path) -> Option<TextTokenizer> {
    let json = dir.join("tokenizer.json");
    json.is_file().then(|| {
        TextTokenizer::from_files(&TokenizerFiles {
            tokenizer_json: Some(json),
            tokenizer_config: Some(dir.join("tokenizer_config.json")).filter(|p| p.is_file()),
            ..Default::default()
        })
        .expect("tokenizer")
    })
}

fn main() {
    candle_distill::runtime::init();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut table: Vec<(String, usize, f64, usize)> = Vec::new();
    let mlm_config = MlmConfig::default();

    write_tiny_tokenizer(tmp.path()).expect("tokenizer");
    let tiny_tok = tokenizer(tmp.path()).expect("tiny tokenizer");
    let rows = sentences(64);
    for (label, batch_tokens) in [("batched", 16_384), ("one mask per pass", 1)] {
        let mut filler = mlm_filler(&tiny_config(32, 2, 2, 64), tiny_tok.clone());
        filler.max_batch_tokens = batch_tokens;
        let mut aug = MlmAugmenter::new(filler, None, mlm_config.clone()).expect("aug");
        let (rate, out) = time(&rows, &mut aug);
        table.push((
            format!("mlm, tiny BERT (2 x 32), {label}"),
            rows.len(),
            rate,
            out,
        ));
    }

    let minilm = root().join("target/test-assets/all-MiniLM-L6-v2");
    match tokenizer(&minilm) {
        Some(tok) => {
            let rows = sentences(16);
            let mut config = BertConfig::with_shape(30522, 384, 6, 12, 1536);
            config.max_position_embeddings = 512;
            for (label, batch_tokens) in [("batched", 16_384), ("one mask per pass", 1)] {
                let mut filler = mlm_filler(&config, tok.clone());
                filler.max_batch_tokens = batch_tokens;
                let mut aug = MlmAugmenter::new(filler, None, mlm_config.clone()).expect("aug");
                let (rate, out) = time(&rows, &mut aug);
                table.push((
                    format!("mlm, MiniLM-L6 shapes (6 x 384), {label}"),
                    rows.len(),
                    rate,
                    out,
                ));
            }
        }
        None => eprintln!("SKIPPED MiniLM rows: no tokenizer at {}", minilm.display()),
    }

    let spm = root().join("tests/fixtures/spm/glue-unigram.spm");
    let load = |name: &str, seed| {
        let dir = tmp.path().join(name);
        write_random_marian(
            &dir,
            &spm,
            &TinyMarian {
                seed,
                ..Default::default()
            },
        )
        .expect("marian");
        let files = MarianFiles::resolve(dir.to_str().expect("utf-8")).expect("files");
        MarianTranslator::load(&files, &Device::Cpu, DType::F32).expect("load")
    };
    let rows = sentences(64);
    for (label, batch_size) in [("batch 32", 32), ("batch 1", 1)] {
        let config = BacktranslateConfig {
            sampling: Sampling::TopP {
                temperature: 0.8,
                top_p: 0.9,
            },
            samples: 1,
            max_len: 32,
            batch_size,
            seed: 1,
        };
        let mut bt = BackTranslator::new(load("fwd", 1), load("bwd", 2), config).expect("bt");
        let (rate, out) = time(&rows, &mut bt);
        table.push((
            format!("backtranslate, tiny Marian (2 x 32), {label}"),
            rows.len(),
            rate,
            out,
        ));
    }

    println!(
        "\n{:<52} {:>9} {:>14} {:>11}",
        "method", "sentences", "sentences/s", "rows out"
    );
    for (name, n, rate, out) in table {
        println!("{name:<52} {n:>9} {rate:>14.1} {out:>11}");
    }
}
