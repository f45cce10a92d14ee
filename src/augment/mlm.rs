//! TinyBERT's data augmentation (Jiao et al. 2020, section 3.2), batched.
//!
//! 1. Split the text into basic words (BERT's basic tokenizer). Candidates are words of
//!    ASCII letters only that are not stop words.
//! 2. A candidate that is one WordPiece: the masked LM sees
//!    `[CLS] text-with-the-word-masked [SEP] original-text [SEP]` (token types 0 then 1);
//!    its top-K tokens at the mask, without `##` pieces, are the replacements. As in the
//!    reference, the word itself may be among them.
//! 3. A candidate of several pieces: its K nearest GloVe neighbours (cosine, the word
//!    itself excluded) when a GloVe file is given; otherwise the word keeps itself.
//! 4. N_a rounds: each candidate position takes a random replacement with probability
//!    p_t; each string not seen before is kept. Outputs are the basic words joined by
//!    spaces (lower-cased for uncased models), as the reference writes them.
//!
//! Deliberate differences from the reference script: special tokens (`[SEP]`, `[unused0]`,
//! ...) are never replacements; inputs longer than the model's limit are cut to a window
//! around the mask instead of crashing (its issue #141); a round that changes nothing is
//! not kept even when the original's spacing differs from the joined words.

use std::collections::{HashMap, HashSet};

use candle_core::Device;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{
    NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
};

pub use super::glove::Glove;
use super::{text_rng, Method, TextAugmenter, TextRef};
use crate::model::BertForMaskedLM;
use crate::tokenizer::{pad_batch, Encoded, TextTokenizer};
use crate::{Error, Result};

/// The stop words of the TinyBERT reference script (`StopWordsList` in its
/// data_augmentation.py): NLTK's English list (`nltk.corpus.stopwords.words("english")`)
/// without its eight wh-words (what, which, who, whom, when, where, why, how, which the
/// reference therefore may replace), plus `'s` and `'re`. 173 entries.
#[rustfmt::skip]
pub const STOP_WORDS: &[&str] = &[
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "you're", "you've",
    "you'll", "you'd", "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself",
    "she", "she's", "her", "hers", "herself", "it", "it's", "its", "itself", "they", "them",
    "their", "theirs", "themselves", "this", "that", "that'll",
    "these", "those", "am", "is", "are", "was", "were", "be", "been", "being", "have", "has",
    "had", "having", "do", "does", "did", "doing", "a", "an", "the", "and", "but", "if", "or",
    "because", "as", "until", "while", "of", "at", "by", "for", "with", "about", "against",
    "between", "into", "through", "during", "before", "after", "above", "below", "to", "from",
    "up", "down", "in", "out", "on", "off", "over", "under", "again", "further", "then", "once",
    "here", "there", "all", "any", "both", "each", "few", "more",
    "most", "other", "some", "such", "no", "nor", "not", "only", "own", "same", "so", "than",
    "too", "very", "s", "t", "can", "will", "just", "don", "don't", "should", "should've",
    "now", "d", "ll", "m", "o", "re", "ve", "y", "ain", "aren", "aren't", "couldn", "couldn't",
    "didn", "didn't", "doesn", "doesn't", "hadn", "hadn't", "hasn", "hasn't", "haven",
    "haven't", "isn", "isn't", "ma", "mightn", "mightn't", "mustn", "mustn't", "needn",
    "needn't", "shan", "shan't", "shouldn", "shouldn't", "wasn", "wasn't", "weren", "weren't",
    "won", "won't", "wouldn", "wouldn't", "'s", "'re",
];

/// Settings of the method. Defaults are the paper's: p_t = 0.4, K = 15, N_a = 20.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlmConfig {
    /// Probability that a candidate position is replaced in a round.
    pub p_t: f64,
    /// How many predictions (or GloVe neighbours) to take per word.
    pub top_k: usize,
    /// Rounds per text (at most this many new texts).
    pub n_aug: usize,
    pub seed: u64,
}

impl Default for MlmConfig {
    fn default() -> Self {
        super::job::AugmentSettings::default().mlm_config(crate::rng::DEFAULT_SEED)
    }
}

/// What happened to candidate words: the user should know how many multi-piece words
/// stayed unchanged for want of GloVe vectors.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MlmStats {
    pub texts: usize,
    pub candidate_words: usize,
    /// Single-piece words sent to the masked LM.
    pub masked_lm_words: usize,
    /// Multi-piece words replaced by GloVe neighbours.
    pub glove_words: usize,
    /// Multi-piece words left as they are (no GloVe file, or not in its vocabulary).
    pub kept_words: usize,
    pub new_texts: usize,
}

impl MlmStats {
    pub fn add(&mut self, other: &MlmStats) {
        self.texts += other.texts;
        self.candidate_words += other.candidate_words;
        self.masked_lm_words += other.masked_lm_words;
        self.glove_words += other.glove_words;
        self.kept_words += other.kept_words;
        self.new_texts += other.new_texts;
    }
}

/// BERT's basic tokenizer: clean control characters, space out CJK characters,
/// lower-case and strip accents when `lowercase`, split on whitespace and punctuation.
pub fn basic_words(text: &str, lowercase: bool) -> Result<Vec<String>> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| {
        Error::msg(format!("basic tokenizer on {text:?}: {e}"))
    };
    let mut normalized = NormalizedString::from(text);
    BertNormalizer::new(true, true, None, lowercase)
        .normalize(&mut normalized)
        .map_err(err)?;
    let mut pre = PreTokenizedString::from(normalized);
    BertPreTokenizer.pre_tokenize(&mut pre).map_err(err)?;
    Ok(pre
        .get_splits(OffsetReferential::Original, OffsetType::Char)
        .into_iter()
        .map(|(s, _, _)| s.to_string())
        .collect())
}

/// ASCII letters only (any case) and not a stop word.
pub fn is_candidate(word: &str) -> bool {
    !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_alphabetic())
        && !STOP_WORDS.contains(&word.to_ascii_lowercase().as_str())
}

/// One masked-LM question: the text's word pieces and which one is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskQuery {
    pub pieces: Vec<String>,
    pub mask: usize,
}

/// A masked language model as the method needs it.
pub trait MaskFiller {
    /// Whether the basic tokenizer lower-cases (uncased models).
    fn lowercase(&self) -> bool;
    /// The WordPiece split of one basic word.
    fn word_pieces(&mut self, word: &str) -> Result<Vec<String>>;
    /// The `k` most likely tokens at each query's mask, best first.
    fn top_k(&mut self, queries: &[MaskQuery], k: usize) -> Result<Vec<Vec<String>>>;
}

/// [`MaskFiller`] over a [`BertForMaskedLM`], many masked inputs per forward pass.
pub struct BertMaskFiller {
    model: BertForMaskedLM,
    tokenizer: TextTokenizer,
    device: Device,
    lowercase: bool,
    /// Model input limit (max_position_embeddings).
    max_len: usize,
    /// Upper bound on batch * padded length per forward pass.
    pub max_batch_tokens: usize,
    ids: SpecialIds,
    piece_cache: HashMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Copy)]
struct SpecialIds {
    cls: u32,
    sep: u32,
    mask: u32,
    unk: u32,
}

impl BertMaskFiller {
    pub fn new(model: BertForMaskedLM, tokenizer: TextTokenizer, device: &Device) -> Result<Self> {
        let id = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| Error::Tokenizer {
                path: "masked-LM tokenizer".into(),
                message: format!("vocabulary has no `{t}` token"),
            })
        };
        let ids = SpecialIds {
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            mask: id("[MASK]")?,
            unk: id("[UNK]")?,
        };
        let max_len = model.bert.config().max_position_embeddings;
        if max_len < 5 {
            crate::bail!("masked LM max_position_embeddings = {max_len}; need at least 5");
        }
        Ok(BertMaskFiller {
            lowercase: tokenizer.lowercase().unwrap_or(true),
            model,
            tokenizer,
            device: device.clone(),
            max_len,
            max_batch_tokens: 16_384,
            ids,
            piece_cache: HashMap::new(),
        })
    }

    /// `[CLS] window-with-mask [SEP] window [SEP]` and the mask's position. The window
    /// over the pieces is centred on the mask and short enough for the model's limit.
    fn build_input(&self, q: &MaskQuery) -> (Encoded, usize) {
        let n = q.pieces.len();
        let width = n.min((self.max_len - 3) / 2);
        let start = q.mask.saturating_sub(width / 2).min(n - width);
        let window = &q.pieces[start..start + width];
        let ids: Vec<u32> = window
            .iter()
            .map(|p| self.tokenizer.token_to_id(p).unwrap_or(self.ids.unk))
            .collect();
        let mut input = Vec::with_capacity(2 * width + 3);
        input.push(self.ids.cls);
        input.extend(&ids);
        let mask_pos = 1 + q.mask - start;
        input[mask_pos] = self.ids.mask;
        input.push(self.ids.sep);
        let first = input.len();
        input.extend(&ids);
        input.push(self.ids.sep);
        let mut type_ids = vec![0u32; first];
        type_ids.resize(input.len(), 1);
        (
            Encoded {
                ids: input,
                type_ids,
            },
            mask_pos,
        )
    }
}

/// Indices of the `k` largest values, best first (ties: lower index first).
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, cmp);
    idx.truncate(k);
    idx.sort_by(cmp);
    idx
}

impl MaskFiller for BertMaskFiller {
    fn lowercase(&self) -> bool {
        self.lowercase
    }

    fn word_pieces(&mut self, word: &str) -> Result<Vec<String>> {
        if let Some(p) = self.piece_cache.get(word) {
            return Ok(p.clone());
        }
        let pieces = self.tokenizer.pieces(word)?;
        self.piece_cache.insert(word.to_string(), pieces.clone());
        Ok(pieces)
    }

    fn top_k(&mut self, queries: &[MaskQuery], k: usize) -> Result<Vec<Vec<String>>> {
        let inputs: Vec<(Encoded, usize)> = queries.iter().map(|q| self.build_input(q)).collect();
        // Similar lengths together: less padding.
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].0.ids.len());
        let mut results = vec![Vec::new(); inputs.len()];
        let mut start = 0;
        while start < order.len() {
            let longest_first = inputs[order[start]].0.ids.len();
            let mut end = start + 1;
            while end < order.len() {
                let longest = inputs[order[end]].0.ids.len().max(longest_first);
                if (end - start + 1) * longest > self.max_batch_tokens {
                    break;
                }
                end += 1;
            }
            let batch: Vec<&Encoded> = order[start..end].iter().map(|&i| &inputs[i].0).collect();
            let positions: Vec<(usize, usize)> = order[start..end]
                .iter()
                .enumerate()
                .map(|(b, &i)| (b, inputs[i].1))
                .collect();
            let input = pad_batch(&batch, self.tokenizer.pad_id(), &self.device)?;
            let logits = self
                .model
                .predict_at(&input, &positions)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec2::<f32>()?;
            for (row, &i) in logits.iter().zip(&order[start..end]) {
                results[i] = top_k_indices(row, k)
                    .into_iter()
                    .map(|id| {
                        self.tokenizer
                            .id_to_token(id as u32)
                            .unwrap_or_else(|| "[UNK]".into())
                    })
                    .collect();
            }
            start = end;
        }
        Ok(results)
    }
}

/// Candidate words in `texts` and how many of them have several WordPieces: the
/// words only GloVe neighbours can replace (the masked LM fills single pieces).
pub fn count_multi_piece_words<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    tokenizer: &TextTokenizer,
) -> Result<(usize, usize)> {
    let lowercase = tokenizer.lowercase().unwrap_or(true);
    let mut pieces: HashMap<String, usize> = HashMap::new();
    let (mut candidates, mut multi) = (0, 0);
    for text in texts {
        for word in basic_words(text, lowercase)? {
            if !is_candidate(&word) {
                continue;
            }
            let n = match pieces.get(&word) {
                Some(&n) => n,
                None => {
                    let n = tokenizer.pieces(&word)?.len();
                    pieces.insert(word, n);
                    n
                }
            };
            candidates += 1;
            multi += usize::from(n > 1);
        }
    }
    Ok((candidates, multi))
}

/// The warning for augmentation without GloVe, or none when no word needs it.
pub fn no_glove_warning(candidates: usize, multi: usize) -> Option<String> {
    (multi > 0).then(|| {
        format!(
            "no GloVe vectors given (augment.glove): {multi} of {candidates} candidate words \
             ({:.1}%) have several WordPieces and will never be replaced. TinyBERT replaces them \
             with GloVe neighbours (the paper: the first 100,000 rows of glove.42B.300d); give a \
             file or hf://datasets/org/name/path",
            100.0 * multi as f64 / candidates.max(1) as f64
        )
    })
}

/// A token that may replace a word: no `##` continuation, no `[SPECIAL]` token.
fn usable_prediction(token: &str) -> bool {
    let special = token.starts_with('[') && token.ends_with(']') && token.len() > 2;
    !token.starts_with("##") && !special
}

/// Where a candidate's replacements come from.
enum Source {
    MaskedLm(usize),
    Fixed(Vec<String>),
}

/// The masked-token filling augmenter.
pub struct MlmAugmenter<F> {
    filler: F,
    glove: Option<Glove>,
    config: MlmConfig,
    stats: MlmStats,
}

impl<F: MaskFiller> MlmAugmenter<F> {
    pub fn new(filler: F, glove: Option<Glove>, config: MlmConfig) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.p_t) {
            return Err(Error::invalid(
                "augment settings",
                "p_t",
                format!("{} is not a probability in [0, 1]", config.p_t),
            ));
        }
        if config.top_k == 0 {
            return Err(Error::invalid(
                "augment settings",
                "top_k",
                "must be at least 1",
            ));
        }
        Ok(MlmAugmenter {
            filler,
            glove,
            config,
            stats: MlmStats::default(),
        })
    }

    pub fn stats(&self) -> &MlmStats {
        &self.stats
    }

    pub fn config(&self) -> &MlmConfig {
        &self.config
    }

    /// Per text: its basic words and, for each candidate position, its replacements.
    fn candidates(&mut self, texts: &[TextRef<'_>]) -> Result<Vec<TextCandidates>> {
        let lowercase = self.filler.lowercase();
        let k = self.config.top_k;
        let mut queries = Vec::new();
        let mut prepared = Vec::with_capacity(texts.len());
        for t in texts {
            let words = basic_words(t.text, lowercase)?;
            let pieces_per_word = words
                .iter()
                .map(|w| self.filler.word_pieces(w))
                .collect::<Result<Vec<_>>>()?;
            let all_pieces: Vec<String> = pieces_per_word.iter().flatten().cloned().collect();
            let mut sources = Vec::new();
            let mut offset = 0;
            for (pos, (word, pieces)) in words.iter().zip(&pieces_per_word).enumerate() {
                if is_candidate(word) && !pieces.is_empty() {
                    self.stats.candidate_words += 1;
                    if pieces.len() == 1 {
                        self.stats.masked_lm_words += 1;
                        sources.push((pos, Source::MaskedLm(queries.len())));
                        queries.push(MaskQuery {
                            pieces: all_pieces.clone(),
                            mask: offset,
                        });
                    } else {
                        let neighbours = match &mut self.glove {
                            Some(g) => g.neighbours(word, k),
                            None => Vec::new(),
                        };
                        if neighbours.is_empty() {
                            self.stats.kept_words += 1;
                        } else {
                            self.stats.glove_words += 1;
                        }
                        sources.push((pos, Source::Fixed(neighbours)));
                    }
                }
                offset += pieces.len();
            }
            prepared.push((words, sources));
        }
        let mut predictions = self
            .filler
            .top_k(&queries, k)?
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>();
        if predictions.len() != queries.len() {
            crate::bail!(
                "masked LM answered {} of {} queries",
                predictions.len(),
                queries.len()
            );
        }
        Ok(prepared
            .into_iter()
            .map(|(words, sources)| {
                let slots = sources
                    .into_iter()
                    .map(|(pos, source)| {
                        let mut list = match source {
                            Source::MaskedLm(q) => predictions[q]
                                .take()
                                .unwrap_or_default()
                                .into_iter()
                                .filter(|t| usable_prediction(t))
                                .collect(),
                            Source::Fixed(list) => list,
                        };
                        if list.is_empty() {
                            list.push(words[pos].clone());
                        }
                        (pos, list)
                    })
                    .collect();
                TextCandidates { words, slots }
            })
            .collect())
    }
}

/// A text's basic words and its candidate positions with their replacement lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextCandidates {
    pub words: Vec<String>,
    pub slots: Vec<(usize, Vec<String>)>,
}

/// One round: each slot draws a replacement, then keeps it with probability `p_t`
/// (draw order as in the reference: the choice, then the coin).
pub fn sample_round(c: &TextCandidates, p_t: f64, rng: &mut crate::rng::Rng) -> Vec<String> {
    let mut words = c.words.clone();
    for (pos, list) in &c.slots {
        let pick = &list[rng.below(list.len())];
        if rng.next_f64() < p_t {
            words[*pos] = pick.clone();
        }
    }
    words
}

/// N_a rounds; the new strings in the order first seen.
pub fn variants(
    original: &str,
    c: &TextCandidates,
    p_t: f64,
    n_aug: usize,
    rng: &mut crate::rng::Rng,
) -> Vec<String> {
    let mut seen: HashSet<String> = HashSet::new();
    seen.insert(original.to_string());
    seen.insert(c.words.join(" "));
    let mut out = Vec::new();
    if c.slots.is_empty() {
        return out;
    }
    for _ in 0..n_aug {
        let text = sample_round(c, p_t, rng).join(" ");
        if seen.insert(text.clone()) {
            out.push(text);
        }
    }
    out
}

impl<F: MaskFiller> TextAugmenter for MlmAugmenter<F> {
    fn method(&self) -> Method {
        Method::Mlm
    }

    fn augment_texts(&mut self, texts: &[TextRef<'_>]) -> Result<Vec<Vec<String>>> {
        let candidates = self.candidates(texts)?;
        let cfg = self.config.clone();
        let out: Vec<Vec<String>> = texts
            .iter()
            .zip(&candidates)
            .map(|(t, c)| {
                let mut rng = text_rng(cfg.seed, Method::Mlm, t.row, t.column);
                variants(t.text, c, cfg.p_t, cfg.n_aug, &mut rng)
            })
            .collect();
        self.stats.texts += texts.len();
        self.stats.new_texts += out.iter().map(|v| v.len()).sum::<usize>();
        Ok(out)
    }
}
