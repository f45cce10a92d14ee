//! SentencePiece `.spm` models as `tokenizers` tokenizers, with no Python step.
//!
//! A `.spm` file is a serialised `ModelProto` (sentencepiece_model.proto). A minimal
//! protobuf reader takes what segmentation needs: the pieces with scores and types, the
//! trainer's model type / unk id / byte fallback / whitespace options, and the
//! normaliser spec. The tokenizer is then the one sentencepiece runs:
//! - normaliser: the model's precompiled character map (`nmt_nfkc`: NFKC plus the NMT
//!   clean-ups, exactly as compiled into the file), then, with `remove_extra_whitespaces`,
//!   leading/trailing spaces stripped and runs of spaces collapsed;
//! - pre-tokeniser: Metaspace (`▁`), a dummy prefix when `add_dummy_prefix`, split at
//!   spaces when `split_by_whitespace`;
//! - model: Unigram (Viterbi over the piece scores; unknown characters become the unk id).
//!
//! Not supported (an error, or noted): BPE/word/char models (error);
//! `treat_whitespace_as_suffix` and `escape_whitespaces = false` (error); a
//! `normalization_rule_tsv` without a precompiled map (error); user-defined pieces are
//! scored like normal pieces instead of being matched first; control pieces (`</s>`)
//! written literally in the text can match.

use std::path::Path;

use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::precompiled::Precompiled;
use tokenizers::normalizers::replace::{Replace, ReplacePattern};
use tokenizers::normalizers::strip::Strip;
use tokenizers::normalizers::utils::Sequence;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// The kind of a piece (`SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceKind {
    fn from_proto(v: u64) -> Self {
        match v {
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            4 => PieceKind::UserDefined,
            5 => PieceKind::Unused,
            6 => PieceKind::Byte,
            _ => PieceKind::Normal,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// `NormalizerSpec`, with sentencepiece's defaults for absent fields.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    pub name: String,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    pub normalization_rule_tsv: String,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
            normalization_rule_tsv: String::new(),
        }
    }
}

/// The parts of a `ModelProto` that tokenisation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    pub unk_id: usize,
    pub byte_fallback: bool,
    pub split_by_whitespace: bool,
    pub treat_whitespace_as_suffix: bool,
    pub normalizer: NormalizerSpec,
}

/// A protobuf wire-format cursor: just enough to walk messages.
struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Wire { buf, pos: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            out |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("field of {n} bytes at byte {} runs past the end", self.pos))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next (field number, value), or `None` at the end.
    fn field(&mut self) -> std::result::Result<Option<(u64, Value<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            t => return Err(format!("unsupported wire type {t} at byte {}", self.pos)),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn utf8(bytes: &[u8]) -> std::result::Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| format!("piece is not UTF-8: {e}"))
}

impl SpmModel {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|m| Error::Tokenizer {
            path: path.display().to_string(),
            message: format!("not a SentencePiece model: {m}"),
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut model = SpmModel {
            pieces: Vec::new(),
            model_type: 1,
            unk_id: 0,
            byte_fallback: false,
            split_by_whitespace: true,
            treat_whitespace_as_suffix: false,
            normalizer: NormalizerSpec::default(),
        };
        let mut wire = Wire::new(bytes);
        while let Some((field, value)) = wire.field()? {
            match (field, value) {
                (1, Value::Bytes(b)) => model.pieces.push(parse_piece(b)?),
                (2, Value::Bytes(b)) => parse_trainer(b, &mut model)?,
                (3, Value::Bytes(b)) => model.normalizer = parse_normalizer(b)?,
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err("no pieces".into());
        }
        if model.unk_id >= model.pieces.len() {
            return Err(format!(
                "unk_id {} is outside the {} pieces",
                model.unk_id,
                model.pieces.len()
            ));
        }
        Ok(model)
    }

    /// A piece's id in the model's own order (tests compare it with a vocabulary's).
    #[cfg(any(test, feature = "testing"))]
    pub fn piece_to_id(&self, piece: &str) -> Option<usize> {
        self.pieces.iter().position(|p| p.piece == piece)
    }

    /// The equivalent `tokenizers` tokenizer; token ids are the spm model's ids.
    pub fn to_tokenizer(&self) -> std::result::Result<Tokenizer, String> {
        if self.model_type != 1 {
            return Err(format!(
                "model type {} is not supported (only unigram, type 1)",
                self.model_type
            ));
        }
        if self.treat_whitespace_as_suffix || !self.normalizer.escape_whitespaces {
            return Err(
                "treat_whitespace_as_suffix / escape_whitespaces=false are not supported".into(),
            );
        }
        if self.normalizer.precompiled_charsmap.is_empty()
            && !self.normalizer.normalization_rule_tsv.is_empty()
        {
            return Err(
                "custom normalization_rule_tsv without a precompiled map is not supported".into(),
            );
        }
        let vocab: Vec<(String, f64)> = self
            .pieces
            .iter()
            .map(|p| (p.piece.clone(), f64::from(p.score)))
            .collect();
        let unigram = Unigram::from(vocab, Some(self.unk_id), self.byte_fallback)
            .map_err(|e| e.to_string())?;
        let mut tokenizer = Tokenizer::new(unigram);
        let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
        if !self.normalizer.precompiled_charsmap.is_empty() {
            let map = Precompiled::from(&self.normalizer.precompiled_charsmap)
                .map_err(|e| format!("precompiled_charsmap: {e}"))?;
            normalizers.push(map.into());
        }
        if self.normalizer.remove_extra_whitespaces {
            normalizers.push(Strip::new(true, true).into());
            let collapse = Replace::new(ReplacePattern::Regex(" {2,}".into()), " ")
                .map_err(|e| e.to_string())?;
            normalizers.push(collapse.into());
        }
        tokenizer.with_normalizer(Some(Sequence::new(normalizers)));
        let prepend = if self.normalizer.add_dummy_prefix {
            PrependScheme::Always
        } else {
            PrependScheme::Never
        };
        tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', prepend, self.split_by_whitespace)));
        tokenizer.with_decoder(Some(MetaspaceDecoder::new(
            '▁',
            prepend,
            self.split_by_whitespace,
        )));
        Ok(tokenizer)
    }
}

fn parse_piece(bytes: &[u8]) -> std::result::Result<Piece, String> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceKind::Normal,
    };
    let mut wire = Wire::new(bytes);
    while let Some((field, value)) = wire.field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => piece.piece = utf8(b)?,
            (2, Value::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Value::Varint(v)) => piece.kind = PieceKind::from_proto(v),
            _ => {}
        }
    }
    Ok(piece)
}

fn parse_trainer(bytes: &[u8], model: &mut SpmModel) -> std::result::Result<(), String> {
    let mut wire = Wire::new(bytes);
    while let Some((field, value)) = wire.field()? {
        if let Value::Varint(v) = value {
            match field {
                3 => model.model_type = v,
                22 => model.split_by_whitespace = v != 0,
                24 => model.treat_whitespace_as_suffix = v != 0,
                35 => model.byte_fallback = v != 0,
                40 => model.unk_id = v as usize,
                _ => {}
            }
        }
    }
    Ok(())
}

fn parse_normalizer(bytes: &[u8]) -> std::result::Result<NormalizerSpec, String> {
    let mut spec = NormalizerSpec::default();
    let mut wire = Wire::new(bytes);
    while let Some((field, value)) = wire.field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => spec.name = utf8(b)?,
            (2, Value::Bytes(b)) => spec.precompiled_charsmap = b.to_vec(),
            (3, Value::Varint(v)) => spec.add_dummy_prefix = v != 0,
            (4, Value::Varint(v)) => spec.remove_extra_whitespaces = v != 0,
            (5, Value::Varint(v)) => spec.escape_whitespaces = v != 0,
            (6, Value::Bytes(b)) => spec.normalization_rule_tsv = utf8(b)?,
            _ => {}
        }
    }
    Ok(spec)
}

/// Loads a `.spm` file straight into a tokenizer (ids = the spm model's ids).
pub fn load_spm_tokenizer(path: &Path) -> Result<(SpmModel, Tokenizer)> {
    let model = SpmModel::from_file(path)?;
    let tokenizer = model.to_tokenizer().map_err(|m| Error::Tokenizer {
        path: path.display().to_string(),
        message: m,
    })?;
    Ok((model, tokenizer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_reader_rejects_truncated_input() {
        // Field 1, length 5, but only 2 bytes follow.
        assert!(SpmModel::from_bytes(&[0x0a, 0x05, 0x0a, 0x01]).is_err());
        assert!(SpmModel::from_bytes(&[]).unwrap_err().contains("no pieces"));
    }
}
