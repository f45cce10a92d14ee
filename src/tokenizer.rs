//! WordPiece tokenisation for BERT models: `tokenizer.json`, or `vocab.txt` plus
//! `tokenizer_config.json` when a checkpoint has no `tokenizer.json`.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::model::BertInput;
use crate::{Error, Result};

/// The tokenizer files a checkpoint may have.
#[derive(Debug, Clone, Default)]
pub struct TokenizerFiles {
    pub tokenizer_json: Option<PathBuf>,
    pub vocab_txt: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    pub special_tokens_map: Option<PathBuf>,
}

/// One tokenised example, not padded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    origin: String,
    pad_id: u32,
    lowercase: Option<bool>,
}

fn tok_err(origin: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        path: origin.to_string(),
        message: e.to_string(),
    }
}

impl TextTokenizer {
    pub fn from_files(files: &TokenizerFiles) -> Result<Self> {
        let config = match &files.tokenizer_config {
            Some(p) => Some(crate::io::read_json::<serde_json::Value>(p)?),
            None => None,
        };
        let lowercase = config
            .as_ref()
            .and_then(|c| c.get("do_lower_case"))
            .and_then(|v| v.as_bool());
        let (inner, origin) = if let Some(path) = &files.tokenizer_json {
            let origin = path.display().to_string();
            let tok = Tokenizer::from_file(path).map_err(|e| tok_err(&origin, e))?;
            (tok, origin)
        } else if let Some(vocab) = &files.vocab_txt {
            let origin = vocab.display().to_string();
            (from_vocab(vocab, lowercase.unwrap_or(true))?, origin)
        } else {
            return Err(Error::Tokenizer {
                path: "(model folder)".into(),
                message: "no tokenizer.json and no vocab.txt".into(),
            });
        };
        Self::from_tokenizer(inner, origin, lowercase)
    }

    /// Wraps a built tokenizer; padding is ours (dynamic, per batch), so its own is removed.
    pub fn from_tokenizer(
        mut inner: Tokenizer,
        origin: String,
        lowercase: Option<bool>,
    ) -> Result<Self> {
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| tok_err(&origin, e))?;
        Ok(TextTokenizer {
            inner,
            origin,
            pad_id,
            lowercase,
        })
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn lowercase(&self) -> Option<bool> {
        self.lowercase
    }

    /// SHA-256 over the vocabulary sorted by id: two models can share inputs only
    /// when these agree.
    pub fn vocab_hash(&self) -> String {
        let mut vocab: Vec<(String, u32)> = self.inner.get_vocab(true).into_iter().collect();
        vocab.sort_by_key(|(_, id)| *id);
        let mut hasher = Sha256::new();
        for (token, id) in vocab {
            hasher.update(id.to_le_bytes());
            hasher.update(token.as_bytes());
            hasher.update([0u8]);
        }
        format!("{:x}", hasher.finalize())
    }

    /// Tokenises a sentence or pair with special tokens, truncated longest-first to `max_len`.
    pub fn encode(&self, a: &str, b: Option<&str>, max_len: usize) -> Result<Encoded> {
        let input: EncodeInput = match b {
            Some(b) => (a, b).into(),
            None => a.into(),
        };
        let mut enc = self
            .inner
            .encode(input, true)
            .map_err(|e| tok_err(&self.origin, e))?;
        if enc.get_ids().len() > max_len {
            // Truncate with the tokenizer's own longest-first rule, keeping special tokens.
            let mut tok = self.inner.clone();
            tok.with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| tok_err(&self.origin, e))?;
            let input: EncodeInput = match b {
                Some(b) => (a, b).into(),
                None => a.into(),
            };
            enc = tok
                .encode(input, true)
                .map_err(|e| tok_err(&self.origin, e))?;
        }
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        })
    }

    /// Token ids of a text without special tokens, untruncated.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(&self.origin, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Word pieces of a text without special tokens.
    pub fn pieces(&self, text: &str) -> Result<Vec<String>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(&self.origin, e))?;
        Ok(enc.get_tokens().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| tok_err(&self.origin, e))
    }
}

/// Pads encoded examples to the longest one and builds the model input on `device`.
pub fn pad_batch(examples: &[&Encoded], pad_id: u32, device: &Device) -> Result<BertInput> {
    let seq = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    pad_batch_to(examples, seq, pad_id, device)
}

/// As [`pad_batch`], padded to `seq` tokens (at least the longest example): data-parallel
/// workers pad their shares as the whole batch would be.
pub fn pad_batch_to(
    examples: &[&Encoded],
    seq: usize,
    pad_id: u32,
    device: &Device,
) -> Result<BertInput> {
    let batch = examples.len();
    let seq = examples
        .iter()
        .map(|e| e.ids.len())
        .max()
        .unwrap_or(0)
        .max(seq);
    let mut ids = vec![pad_id; batch * seq];
    let mut types = vec![0u32; batch * seq];
    let mut mask = vec![0u32; batch * seq];
    for (row, e) in examples.iter().enumerate() {
        let start = row * seq;
        ids[start..start + e.ids.len()].copy_from_slice(&e.ids);
        types[start..start + e.type_ids.len()].copy_from_slice(&e.type_ids);
        mask[start..start + e.ids.len()].fill(1);
    }
    Ok(BertInput {
        input_ids: Tensor::from_vec(ids, (batch, seq), device)?,
        token_type_ids: Tensor::from_vec(types, (batch, seq), device)?,
        attention_mask: Tensor::from_vec(mask, (batch, seq), device)?,
    })
}

/// A BERT WordPiece tokenizer built from `vocab.txt`, as transformers' `BertTokenizer` is.
fn from_vocab(vocab: &Path, lowercase: bool) -> Result<Tokenizer> {
    let origin = vocab.display().to_string();
    let vocab_str = vocab
        .to_str()
        .ok_or_else(|| tok_err(&origin, "path is not UTF-8"))?;
    let model = WordPiece::from_file(vocab_str)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| tok_err(&origin, e))?;
    let mut tok = Tokenizer::new(model);
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| tok_err(&origin, format!("vocabulary has no `{t}` token")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    tok.with_decoder(Some(WordPieceDecoder::default()));
    Ok(tok)
}
