//! The tokenizer files of an exported folder: `tokenizer.json`, `vocab.txt`,
//! `tokenizer_config.json` and `special_tokens_map.json`, as transformers'
//! `BertTokenizer` saves them, whatever subset the source had; for BPE and
//! SentencePiece vocabularies (RoBERTa, XLM-R, MPNet) the files of a fast tokenizer.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::model::Family;
use crate::tokenizer::{TextTokenizer, TokenizerFiles};
use crate::{Error, Result};

/// Where the student's tokenizer comes from.
#[derive(Clone)]
pub enum ExportTokenizer {
    /// The files of a checkpoint; their `tokenizer_config.json` and
    /// `special_tokens_map.json` settings are carried over.
    Files(TokenizerFiles),
    /// A tokenizer already in memory.
    Loaded(Box<TextTokenizer>),
}

/// Special-token roles in the order transformers lists them, with BERT's tokens.
const BERT_ROLES: &[(&str, &str)] = &[
    ("unk_token", "[UNK]"),
    ("sep_token", "[SEP]"),
    ("pad_token", "[PAD]"),
    ("cls_token", "[CLS]"),
    ("mask_token", "[MASK]"),
];

/// The same roles in RoBERTa's, XLM-R's and MPNet's vocabularies.
const ROBERTA_ROLES: &[(&str, &str)] = &[
    ("bos_token", "<s>"),
    ("eos_token", "</s>"),
    ("unk_token", "<unk>"),
    ("sep_token", "</s>"),
    ("pad_token", "<pad>"),
    ("cls_token", "<s>"),
    ("mask_token", "<mask>"),
];

/// Keys of a source `tokenizer_config.json` that describe where it came from, not
/// what it is; they would be wrong in the exported folder.
const STALE_KEYS: [&str; 5] = [
    "name_or_path",
    "tokenizer_file",
    "special_tokens_map_file",
    "auto_map",
    "added_tokens_decoder",
];

/// A tokenizer ready to be written: the loaded tokenizer plus the settings of its files.
pub(crate) struct ResolvedTokenizer {
    pub tokenizer: TextTokenizer,
    config: Map<String, Value>,
    special: Map<String, Value>,
}

fn object(path: &Path) -> Result<Map<String, Value>> {
    match crate::io::read_json::<Value>(path)? {
        Value::Object(map) => Ok(map),
        _ => Err(Error::invalid(
            path.display(),
            "(file)",
            "expected a JSON object",
        )),
    }
}

fn tok_err(path: &Path, message: impl ToString) -> Error {
    Error::Tokenizer {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// `BertTokenizer`'s settings, from what tokenizer.json's normalizer does (the source
/// config may be stale).
fn bert_tokenizer_config(
    config: &mut Map<String, Value>,
    normalizer: &Value,
    lower: Option<bool>,
    family: Family,
) {
    let lowercase = normalizer["lowercase"].as_bool().or(lower).unwrap_or(true);
    config.insert("do_lower_case".into(), json!(lowercase));
    // The family's own WordPiece class: DistilBertTokenizer gives no token_type_ids,
    // which DistilBERT's forward does not take (transformers 4).
    let class = match family {
        Family::DistilBert => "DistilBertTokenizer",
        Family::Electra => "ElectraTokenizer",
        _ => "BertTokenizer",
    };
    config.insert("tokenizer_class".into(), json!(class));
    config
        .entry("tokenize_chinese_chars")
        .or_insert_with(|| json!(normalizer["handle_chinese_chars"].as_bool().unwrap_or(true)));
    config
        .entry("strip_accents")
        .or_insert_with(|| normalizer["strip_accents"].clone());
    config
        .entry("clean_up_tokenization_spaces")
        .or_insert(json!(true));
}

impl ResolvedTokenizer {
    pub fn new(source: &ExportTokenizer) -> Result<Self> {
        match source {
            ExportTokenizer::Loaded(tok) => Ok(ResolvedTokenizer {
                tokenizer: (**tok).clone(),
                config: Map::new(),
                special: Map::new(),
            }),
            ExportTokenizer::Files(files) => Ok(ResolvedTokenizer {
                tokenizer: TextTokenizer::from_files(files)?,
                config: match &files.tokenizer_config {
                    Some(p) => object(p)?,
                    None => Map::new(),
                },
                special: match &files.special_tokens_map {
                    Some(p) => object(p)?,
                    None => Map::new(),
                },
            }),
        }
    }

    /// The tokenizer as `tokenizer.json` would serialise it.
    fn json(&self) -> Result<Value> {
        let text = self
            .tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| tok_err(Path::new("tokenizer.json"), e))?;
        serde_json::from_str(&text).map_err(|e| tok_err(Path::new("tokenizer.json"), e))
    }

    /// The token of a special role: `special_tokens_map.json`, then
    /// `tokenizer_config.json`, then BERT's default. Values may be plain strings or
    /// transformers' `AddedToken` objects (`{"content": ...}`).
    fn special_token(&self, role: &str, default: &str) -> String {
        self.configured_token(role)
            .unwrap_or_else(|| default.to_string())
    }

    /// The token the source's files give a special role, if any.
    fn configured_token(&self, role: &str) -> Option<String> {
        let as_text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
            _ => None,
        };
        self.special
            .get(role)
            .and_then(as_text)
            .or_else(|| self.config.get(role).and_then(as_text))
    }

    /// Whether the special tokens are BERT's (`[CLS]` A `[SEP]`): the source's files
    /// say so, or the vocabulary has `[CLS]` and no `<s>`. MPNet's WordPiece
    /// vocabulary holds `[CLS]` too, but its files name `<s>`.
    fn has_bert_specials(&self) -> bool {
        match self.configured_token("cls_token") {
            Some(cls) => cls == "[CLS]",
            None => {
                self.tokenizer.token_to_id("[CLS]").is_some()
                    && self.tokenizer.token_to_id("<s>").is_none()
            }
        }
    }

    /// Writes the tokenizer files into `dir` and returns their names: for a BERT
    /// WordPiece vocabulary the four files of transformers' `BertTokenizer`; for any
    /// other (BPE, Unigram, MPNet's) `tokenizer.json` with the config and special
    /// tokens of a fast tokenizer. `max_positions` caps `model_max_length`.
    pub fn write(
        &self,
        dir: &Path,
        max_positions: usize,
        family: Family,
    ) -> Result<Vec<&'static str>> {
        let json = self.json()?;
        // MPNet's WordPiece vocabulary has RoBERTa's special tokens and pair template,
        // which BertTokenizer would not reproduce: only tokenizer.json carries them.
        let bert_wordpiece =
            json["model"]["type"].as_str() == Some("WordPiece") && self.has_bert_specials();
        let path = dir.join("tokenizer.json");
        self.tokenizer
            .inner()
            .save(&path, true)
            .map_err(|e| tok_err(&path, e))?;
        let mut written = vec!["tokenizer.json"];
        if bert_wordpiece {
            let vocab = self.vocab_lines(dir)?;
            std::fs::write(dir.join("vocab.txt"), vocab).map_err(|e| Error::io(dir, e))?;
            written.push("vocab.txt");
        }
        let special = self.special_tokens(dir)?;
        crate::io::write_json(
            &dir.join("special_tokens_map.json"),
            &Value::Object(special.clone()),
        )?;
        let max_len = self
            .config
            .get("model_max_length")
            .and_then(|v| v.as_u64())
            .map(|n| (n as usize).min(max_positions))
            .unwrap_or(max_positions);
        let mut config = self.config.clone();
        for key in STALE_KEYS {
            config.remove(key);
        }
        config.extend(special);
        config.insert("model_max_length".into(), json!(max_len));
        if bert_wordpiece {
            bert_tokenizer_config(
                &mut config,
                &json["normalizer"],
                self.tokenizer.lowercase(),
                family,
            );
        } else {
            // The source's class (RobertaTokenizer, MPNetTokenizer, ...) loads its fast
            // variant from tokenizer.json.
            config
                .entry("tokenizer_class")
                .or_insert(json!("PreTrainedTokenizerFast"));
        }
        crate::io::write_json(&dir.join("tokenizer_config.json"), &Value::Object(config))?;
        written.extend(["tokenizer_config.json", "special_tokens_map.json"]);
        Ok(written)
    }

    /// Each special role's token (BERT's or RoBERTa's defaults, whichever the
    /// vocabulary holds), each checked to be in the vocabulary.
    fn special_tokens(&self, dir: &Path) -> Result<Map<String, Value>> {
        let roles = if self.has_bert_specials() {
            BERT_ROLES
        } else {
            ROBERTA_ROLES
        };
        let mut special = Map::new();
        for (role, default) in roles {
            let token = self.special_token(role, default);
            if self.tokenizer.token_to_id(&token).is_none() {
                return Err(tok_err(
                    &dir.join("tokenizer.json"),
                    format!("{role} `{token}` is not in the vocabulary"),
                ));
            }
            special.insert(role.to_string(), Value::String(token));
        }
        Ok(special)
    }

    /// The WordPiece vocabulary in id order, one token a line, as `BertTokenizer` reads it.
    fn vocab_lines(&self, dir: &Path) -> Result<String> {
        let vocab = self.tokenizer.inner().get_vocab(false);
        let mut tokens = vec![None; vocab.len()];
        for (token, id) in vocab {
            let slot = tokens.get_mut(id as usize).ok_or_else(|| {
                tok_err(
                    &dir.join("vocab.txt"),
                    format!("token `{token}` has id {id}, past the vocabulary's end"),
                )
            })?;
            if token.contains('\n') {
                return Err(tok_err(
                    &dir.join("vocab.txt"),
                    format!("token {id} contains a line break and cannot be written"),
                ));
            }
            *slot = Some(token);
        }
        let mut out = String::new();
        for (id, token) in tokens.into_iter().enumerate() {
            let token = token.ok_or_else(|| {
                tok_err(
                    &dir.join("vocab.txt"),
                    format!("no token has id {id}: the vocabulary has gaps"),
                )
            })?;
            out.push_str(&token);
            out.push('\n');
        }
        Ok(out)
    }
}
