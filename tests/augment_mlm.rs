//! TinyBERT masked-token filling: exact outputs with a table-driven masked LM, and the
//! BERT implementation's top-K on a hand-built model whose predictions are known.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_distill::augment::mlm::{
    basic_words, is_candidate, sample_round, BertMaskFiller, Glove, MaskFiller, MaskQuery,
    MlmAugmenter, MlmConfig, TextCandidates,
};
use candle_distill::augment::{augment_rows, Method, TextAugmenter, TextRef};
use candle_distill::model::{build_masked_lm, BertConfig, BuildOptions};
use candle_distill::rng::Rng;
use candle_distill::testing::{tiny_vocab, write_tiny_tokenizer};
use candle_distill::tokenizer::{TextTokenizer, TokenizerFiles};

/// A masked LM answering from a table keyed by the masked word; it records every query.
struct TableFiller {
    pieces: HashMap<&'static str, Vec<&'static str>>,
    answers: HashMap<&'static str, Vec<&'static str>>,
    queries: Vec<(MaskQuery, usize)>,
}

impl TableFiller {
    fn new() -> Self {
        TableFiller {
            pieces: HashMap::from([("surprisingly", vec!["surprising", "##ly"])]),
            answers: HashMap::new(),
            queries: Vec::new(),
        }
    }
}

impl MaskFiller for TableFiller {
    fn lowercase(&self) -> bool {
        true
    }
    fn word_pieces(&mut self, word: &str) -> candle_distill::Result<Vec<String>> {
        Ok(match self.pieces.get(word) {
            Some(p) => p.iter().map(|s| s.to_string()).collect(),
            None => vec![word.to_string()],
        })
    }
    fn top_k(
        &mut self,
        queries: &[MaskQuery],
        k: usize,
    ) -> candle_distill::Result<Vec<Vec<String>>> {
        Ok(queries
            .iter()
            .map(|q| {
                self.queries.push((q.clone(), k));
                let word = q.pieces[q.mask].as_str();
                self.answers
                    .get(word)
                    .map(|a| a.iter().take(k).map(|s| s.to_string()).collect())
                    .unwrap_or_default()
            })
            .collect())
    }
}

const SENTENCE: &str = "The movie was surprisingly GOOD, and the actors shine!";

fn config(p_t: f64, top_k: usize, n_aug: usize) -> MlmConfig {
    MlmConfig {
        p_t,
        top_k,
        n_aug,
        seed: 11,
    }
}

fn one_text(text: &str) -> Vec<TextRef<'_>> {
    vec![TextRef {
        row: 0,
        column: 0,
        text,
    }]
}

#[test]
fn basic_tokenizer_splits_punctuation_lowercases_and_strips_accents() {
    assert_eq!(
        basic_words("Don't STOP, Café-au-lait!", true).unwrap(),
        ["don", "'", "t", "stop", ",", "cafe", "-", "au", "-", "lait", "!"]
    );
    assert_eq!(basic_words("Café x", false).unwrap(), ["Café", "x"]);
    assert!(is_candidate("movie") && is_candidate("Movie"));
    // The reference list is NLTK's without the wh-words.
    assert!(is_candidate("what") && is_candidate("how"));
    assert_eq!(candle_distill::augment::mlm::STOP_WORDS.len(), 173);
    for w in ["the", "The", "don", "t", "3d", "café", "co-op", ",", ""] {
        assert!(!is_candidate(w), "{w}");
    }
}

#[test]
fn candidates_queries_and_exact_output_with_certain_replacement() {
    let mut filler = TableFiller::new();
    filler.answers = HashMap::from([
        ("movie", vec!["##s", "film", "[SEP]"]),
        ("good", vec!["great"]),
        ("actors", vec!["##x"]),
        ("shine", vec!["glow", "##ing"]),
    ]);
    let mut aug = MlmAugmenter::new(filler, None, config(1.0, 3, 20)).unwrap();
    let out = aug.augment_texts(&one_text(SENTENCE)).unwrap();
    // p_t = 1 and one usable prediction per word: every round makes the same text.
    // `actors` has no usable prediction (only `##x`) and keeps itself; `surprisingly`
    // is two pieces and there is no GloVe file, so it stays too.
    assert_eq!(
        out,
        vec![vec![
            "the film was surprisingly great , and the actors glow !".to_string()
        ]]
    );
    let stats = aug.stats().clone();
    assert_eq!(stats.candidate_words, 5);
    assert_eq!(stats.masked_lm_words, 4);
    assert_eq!(stats.kept_words, 1);
    assert_eq!(stats.glove_words, 0);
    assert_eq!(stats.new_texts, 1);
}

#[test]
fn masked_lm_queries_mask_the_right_piece_and_ask_for_k() {
    let mut recorder = TableFiller::new();
    let words = basic_words(SENTENCE, true).unwrap();
    let pieces: Vec<String> = words
        .iter()
        .flat_map(|w| recorder.word_pieces(w).unwrap())
        .collect();
    {
        let mut aug = MlmAugmenter::new(&mut recorder, None, config(0.4, 7, 5)).unwrap();
        aug.augment_texts(&one_text(SENTENCE)).unwrap();
    }
    let masked: Vec<(&str, usize)> = recorder
        .queries
        .iter()
        .map(|(q, k)| {
            assert_eq!(q.pieces, pieces, "queries carry the whole text's pieces");
            (q.pieces[q.mask].as_str(), *k)
        })
        .collect();
    // the movie was surprising ##ly good , and the actors shine !
    assert_eq!(
        masked,
        [("movie", 7), ("good", 7), ("actors", 7), ("shine", 7)]
    );
    assert_eq!(
        recorder
            .queries
            .iter()
            .map(|(q, _)| q.mask)
            .collect::<Vec<_>>(),
        [1, 5, 9, 10]
    );
}

impl MaskFiller for &mut TableFiller {
    fn lowercase(&self) -> bool {
        true
    }
    fn word_pieces(&mut self, word: &str) -> candle_distill::Result<Vec<String>> {
        (**self).word_pieces(word)
    }
    fn top_k(
        &mut self,
        queries: &[MaskQuery],
        k: usize,
    ) -> candle_distill::Result<Vec<Vec<String>>> {
        (**self).top_k(queries, k)
    }
}

fn rich_filler() -> TableFiller {
    let mut filler = TableFiller::new();
    let list: Vec<&'static str> = vec![
        "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "b1", "b2", "b3", "b4", "b5", "b6",
        "b7", "b8",
    ];
    for w in ["movie", "good", "actors", "shine"] {
        filler.answers.insert(w, list.clone());
    }
    filler
}

#[test]
fn rounds_are_bounded_by_n_aug_distinct_and_drawn_from_the_top_k() {
    let k = 15;
    for n_aug in [3, 20] {
        let mut aug = MlmAugmenter::new(rich_filler(), None, config(0.5, k, n_aug)).unwrap();
        let out = aug.augment_texts(&one_text(SENTENCE)).unwrap().remove(0);
        let original = basic_words(SENTENCE, true).unwrap();
        assert!(!out.is_empty() && out.len() <= n_aug, "{}", out.len());
        let mut seen = std::collections::HashSet::new();
        let allowed: Vec<&str> = rich_filler().answers["movie"][..k].to_vec();
        for text in &out {
            assert!(seen.insert(text.clone()), "duplicate {text}");
            assert_ne!(text, &original.join(" "));
            let words: Vec<&str> = text.split(' ').collect();
            assert_eq!(words.len(), original.len());
            for (i, (w, o)) in words.iter().zip(&original).enumerate() {
                let slot = [1, 4, 8, 9].contains(&i); // movie, good, actors, shine
                if slot {
                    assert!(*w == o || allowed.contains(w), "{w} at {i}");
                } else {
                    assert_eq!(w, o, "non-candidate word {i} changed");
                }
            }
        }
        // Only the top K (15 of 17 table entries) may appear.
        assert!(!out.iter().any(|t| t.contains("b7") || t.contains("b8")));
    }
}

#[test]
fn nothing_changes_with_p_zero_and_results_are_seeded_and_batch_independent() {
    let mut aug = MlmAugmenter::new(rich_filler(), None, config(0.0, 15, 20)).unwrap();
    assert_eq!(
        aug.augment_texts(&one_text(SENTENCE)).unwrap(),
        vec![Vec::<String>::new()]
    );

    let texts = [
        TextRef {
            row: 3,
            column: 0,
            text: SENTENCE,
        },
        TextRef {
            row: 4,
            column: 1,
            text: "Good actors shine.",
        },
    ];
    let run = |texts: &[TextRef], seed| {
        let mut cfg = config(0.4, 15, 20);
        cfg.seed = seed;
        MlmAugmenter::new(rich_filler(), None, cfg)
            .unwrap()
            .augment_texts(texts)
            .unwrap()
    };
    let together = run(&texts, 5);
    let apart: Vec<Vec<String>> = texts
        .iter()
        .flat_map(|t| run(std::slice::from_ref(t), 5))
        .collect();
    assert_eq!(together, apart);
    assert_ne!(together, run(&texts, 6));
}

#[test]
fn replacement_probability_is_p_t() {
    let c = TextCandidates {
        words: vec!["x".into(), "y".into()],
        slots: vec![(0, vec!["new".into()])],
    };
    let mut rng = Rng::new(1);
    let n = 20_000;
    let replaced = (0..n)
        .filter(|_| sample_round(&c, 0.4, &mut rng)[0] == "new")
        .count();
    let rate = replaced as f64 / n as f64;
    assert!((rate - 0.4).abs() < 0.015, "{rate}");
}

#[test]
fn multi_piece_words_take_glove_neighbours_without_themselves() {
    let words = ["surprisingly", "amazingly", "shockingly", "banana"];
    let vectors = vec![
        1.0, 0.0, 0.0, //
        0.9, 0.1, 0.0, //
        0.7, 0.7, 0.0, //
        0.0, 0.0, 1.0,
    ];
    let mut glove = Glove::from_vectors(
        words.iter().map(|s| s.to_string()).collect(),
        vectors.clone(),
        3,
    );
    assert_eq!(
        glove.neighbours("surprisingly", 2),
        ["amazingly", "shockingly"]
    );
    assert_eq!(glove.neighbours("Amazingly", 2), Vec::<String>::new());
    let glove = Glove::from_vectors(words.iter().map(|s| s.to_string()).collect(), vectors, 3);
    let mut aug = MlmAugmenter::new(TableFiller::new(), Some(glove), config(1.0, 1, 5)).unwrap();
    let out = aug.augment_texts(&one_text("surprisingly so")).unwrap();
    assert_eq!(out, vec![vec!["amazingly so".to_string()]]);
    assert_eq!(aug.stats().glove_words, 1);
    assert_eq!(aug.stats().kept_words, 0);
}

#[test]
fn glove_file_is_read_up_to_max_words() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("glove.txt");
    std::fs::write(&path, "a 1 0\nb 0.9 0.1\nc 0 1\nd 1 1\n").unwrap();
    let mut g = Glove::from_file(&path, 3).unwrap();
    assert_eq!(g.len(), 3);
    assert_eq!(g.neighbours("a", 5), ["b", "c"]);
    std::fs::write(&path, "a 1 0\nb 0.9\n").unwrap();
    let err = Glove::from_file(&path, 10).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn pair_rows_augment_each_column_and_copy_the_other() {
    let mut filler = TableFiller::new();
    filler.answers = HashMap::from([("movie", vec!["film"]), ("shine", vec!["glow"])]);
    let mut aug = MlmAugmenter::new(filler, None, config(1.0, 15, 20)).unwrap();
    let rows = vec![vec!["A movie.".to_string(), "They shine".to_string()]];
    let out = augment_rows(&rows, 0, &mut aug).unwrap();
    let got: Vec<_> = out
        .iter()
        .map(|r| (r.method, r.text_a.as_str(), r.text_b.as_deref().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (Method::Original, "A movie.", "They shine"),
            (Method::Mlm, "a film .", "They shine"),
            (Method::Mlm, "A movie.", "they glow"),
        ]
    );
}

// ---- The BERT implementation on a model whose predictions are known ----

/// Score of vocabulary entry `v` at input position `p`: a fixed pseudo-random table.
fn score(p: usize, v: usize) -> f32 {
    let h = (p as u64 * 1_000_003 + v as u64 * 7919).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// A 0-layer BertForMaskedLM whose logits at position p rank the vocabulary by
/// `score(p, .)`: the hidden state at p is a*e_p + b*1 (a > 0) after the LayerNorms,
/// and every decoder row sums to zero, so logit_v = a * score(p, v).
fn known_filler(dir: &std::path::Path, max_pos: usize) -> BertMaskFiller {
    write_tiny_tokenizer(dir).unwrap();
    let vocab = tiny_vocab().len();
    let hidden = max_pos + 1;
    let mut cfg = BertConfig::with_shape(vocab, hidden, 0, 1, 4);
    cfg.max_position_embeddings = max_pos;
    let dev = Device::Cpu;
    let zeros = |r: usize, c: usize| Tensor::zeros((r, c), candle_core::DType::F32, &dev).unwrap();
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &dev).unwrap();
    let zvec = |n: usize| Tensor::zeros(n, candle_core::DType::F32, &dev).unwrap();
    let mut pos = vec![0f32; max_pos * hidden];
    for p in 0..max_pos {
        pos[p * hidden + p] = 10.0;
    }
    let mut dec = vec![0f32; vocab * hidden];
    for v in 0..vocab {
        let mut sum = 0.0;
        for p in 0..max_pos {
            dec[v * hidden + p] = score(p, v);
            sum += score(p, v);
        }
        dec[v * hidden + max_pos] = -sum;
    }
    let tensors = HashMap::from([
        (
            "bert.embeddings.word_embeddings.weight".to_string(),
            zeros(vocab, hidden),
        ),
        (
            "bert.embeddings.position_embeddings.weight".to_string(),
            Tensor::from_vec(pos, (max_pos, hidden), &dev).unwrap(),
        ),
        (
            "bert.embeddings.token_type_embeddings.weight".to_string(),
            zeros(2, hidden),
        ),
        ("bert.embeddings.LayerNorm.weight".to_string(), ones(hidden)),
        ("bert.embeddings.LayerNorm.bias".to_string(), zvec(hidden)),
        (
            "cls.predictions.transform.dense.weight".to_string(),
            Tensor::eye(hidden, candle_core::DType::F32, &dev).unwrap(),
        ),
        (
            "cls.predictions.transform.dense.bias".to_string(),
            zvec(hidden),
        ),
        (
            "cls.predictions.transform.LayerNorm.weight".to_string(),
            ones(hidden),
        ),
        (
            "cls.predictions.transform.LayerNorm.bias".to_string(),
            zvec(hidden),
        ),
        ("cls.predictions.bias".to_string(), zvec(vocab)),
        (
            "cls.predictions.decoder.weight".to_string(),
            Tensor::from_vec(dec, (vocab, hidden), &dev).unwrap(),
        ),
    ]);
    let model = build_masked_lm("known", &cfg, tensors, &BuildOptions::inference(&dev))
        .unwrap()
        .model;
    let tokenizer = TextTokenizer::from_files(&TokenizerFiles {
        tokenizer_json: Some(dir.join("tokenizer.json")),
        tokenizer_config: Some(dir.join("tokenizer_config.json")),
        ..Default::default()
    })
    .unwrap();
    BertMaskFiller::new(model, tokenizer, &dev).unwrap()
}

fn expected_top_k(position: usize, k: usize) -> Vec<String> {
    let vocab = tiny_vocab();
    let mut ids: Vec<usize> = (0..vocab.len()).collect();
    ids.sort_by(|&a, &b| score(position, b).total_cmp(&score(position, a)));
    ids[..k].iter().map(|&i| vocab[i].clone()).collect()
}

#[test]
fn bert_filler_returns_the_known_top_k_at_each_mask_batched_and_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let max_pos = 16;
    let mut filler = known_filler(dir.path(), max_pos);
    let q = |text: &str, mask: usize| MaskQuery {
        pieces: text.split(' ').map(str::to_string).collect(),
        mask,
    };
    let long = vec!["movie"; 20].join(" ");
    let queries = [
        q("the movie was good", 1),
        q("a cat", 0),
        // 8 pieces, window 6 ending at the last piece: starts at 2.
        q("the dog ran to the big red house", 6),
        // 20 pieces: a 6-piece window ((16 - 3) / 2) centred on piece 15 starts at 12.
        q(&long, 15),
        q(&long, 0),
        q(&long, 19),
    ];
    // Input position of the mask: 1 + its index in the window.
    let mask_positions = [2, 1, 5, 4, 1, 6];
    let k = 5;
    let got = filler.top_k(&queries, k).unwrap();
    for (i, pos) in mask_positions.iter().enumerate() {
        assert_eq!(got[i], expected_top_k(*pos, k), "query {i}");
    }
    // One query per forward pass gives the same answers.
    filler.max_batch_tokens = 1;
    assert_eq!(filler.top_k(&queries, k).unwrap(), got);
    assert_eq!(filler.word_pieces("house").unwrap(), ["house"]);
    assert_eq!(filler.word_pieces("houses").unwrap(), ["house", "##s"]);
}
