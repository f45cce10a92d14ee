//! Checking an exported folder before it is moved into place: it must load, hold exactly
//! the tensors that were meant to be written, tokenise like the source, and give the
//! trained model's logits. Any mismatch is an error.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::model::{load_classifier, BertForSequenceClassification, BuildOptions};
use crate::tokenizer::{pad_batch, TextTokenizer, TokenizerFiles};
use crate::{Error, Result};

/// One input: a sentence, or a sentence pair.
pub type Example = (String, Option<String>);

/// What the logit check compared and found.
#[derive(Debug, Clone, Serialize)]
pub struct LogitCheck {
    pub examples: Vec<Example>,
    /// Logits of the model re-loaded from the exported folder (f32 compute).
    pub exported_logits: Vec<Vec<f32>>,
    /// Logits of the trained model the export was made from.
    pub reference_logits: Vec<Vec<f32>>,
    /// ||exported - reference|| / ||reference|| over all logits.
    pub rel_err: f64,
    pub tolerance: f64,
}

/// Relative error allowed between the trained model and its export, per stored dtype.
/// f32 is written bit for bit; half precision rounds every weight.
pub fn default_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 1e-2,
        DType::BF16 => 5e-2,
        _ => 1e-5,
    }
}

/// Sentences used when the caller gives none: plain English of varied length, and pairs.
pub fn default_examples() -> Vec<Example> {
    let single = [
        "the movie was great fun .",
        "a dull , boring story with poor acting .",
        "it is not the best film of the year , but i love it .",
        "she walked to the river at night .",
        "what a wonderful day !",
        "the plot is too long and the music is awful .",
    ];
    let pairs = [
        ("the cat sat on the mat .", "a cat is sitting on a mat ."),
        (
            "he bought a new car .",
            "the old house by the river was sold .",
        ),
    ];
    single
        .iter()
        .map(|s| (s.to_string(), None))
        .chain(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), Some(b.to_string()))),
        )
        .collect()
}

/// Reads examples from a text file: one a line, a tab between the two sentences of a pair.
pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let examples: Vec<Example> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once('\t') {
            Some((a, b)) => (a.to_string(), Some(b.to_string())),
            None => (l.to_string(), None),
        })
        .collect();
    if examples.is_empty() {
        return Err(Error::invalid(
            path.display(),
            "(file)",
            "no examples: expected one sentence (or tab-separated pair) a line",
        ));
    }
    Ok(examples)
}

const BATCH: usize = 16;

/// Logits (f32) of `model` on `examples`, tokenised by `tokenizer` up to `max_len` tokens.
pub fn classifier_logits(
    model: &BertForSequenceClassification,
    tokenizer: &TextTokenizer,
    examples: &[Example],
    max_len: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(BATCH) {
        let encoded = chunk
            .iter()
            .map(|(a, b)| tokenizer.encode(a, b.as_deref(), max_len))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<_> = encoded.iter().collect();
        let input = pad_batch(&refs, tokenizer.pad_id(), device)?;
        let logits = model.logits(&input)?.to_dtype(DType::F32)?;
        out.extend(logits.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Norm-relative error of `a` against `b`.
pub fn relative_error(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (ra, rb) in a.iter().zip(b) {
        for (x, y) in ra.iter().zip(rb) {
            num += (*x as f64 - *y as f64).powi(2);
            den += (*y as f64).powi(2);
        }
    }
    let shapes_match = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.len() == y.len());
    if !shapes_match || num.is_nan() {
        return f64::INFINITY;
    }
    num.sqrt() / den.sqrt().max(1e-30)
}

fn mismatch(dir: &Path, what: impl std::fmt::Display) -> Error {
    Error::msg(format!(
        "export check failed for {}: {what}; nothing was written to the destination",
        dir.display()
    ))
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The weights: exactly the intended names, dtypes and values.
fn check_weights(
    dir: &Path,
    stored: &HashMap<String, Tensor>,
    written: &HashMap<String, Tensor>,
) -> Result<()> {
    if let Some(name) = written.keys().find(|k| !stored.contains_key(*k)) {
        return Err(mismatch(dir, format!("tensor `{name}` is missing")));
    }
    if let Some(name) = stored.keys().find(|k| !written.contains_key(*k)) {
        return Err(mismatch(dir, format!("unexpected tensor `{name}`")));
    }
    for (name, want) in written {
        let got = &stored[name];
        if got.dtype() != want.dtype() || got.dims() != want.dims() || values(got)? != values(want)?
        {
            return Err(mismatch(
                dir,
                format!("tensor `{name}` differs from the trained model's"),
            ));
        }
    }
    Ok(())
}

/// The tokenizer: tokenizer.json (`loaded`) and, where one was written, the vocab.txt
/// + tokenizer_config.json pair must both tokenise the examples as the source did.
fn check_tokenizers(
    dir: &Path,
    loaded: &TextTokenizer,
    source: &TextTokenizer,
    examples: &[Example],
    max_len: usize,
) -> Result<()> {
    let mut tokenizers = vec![("tokenizer.json", loaded.clone())];
    if dir.join("vocab.txt").is_file() {
        let from_vocab = TextTokenizer::from_files(&TokenizerFiles {
            vocab_txt: Some(dir.join("vocab.txt")),
            tokenizer_config: Some(dir.join("tokenizer_config.json")),
            ..Default::default()
        })?;
        tokenizers.push(("vocab.txt", from_vocab));
    }
    for (a, b) in examples {
        let want = source.encode(a, b.as_deref(), max_len)?;
        for (file, tok) in &tokenizers {
            if tok.encode(a, b.as_deref(), max_len)? != want {
                return Err(mismatch(
                    dir,
                    format!("{file} tokenises {a:?} differently from the source tokenizer"),
                ));
            }
        }
    }
    Ok(())
}

/// Re-loads the folder at `dir` and compares it with what was meant to be written.
pub(crate) fn verify_folder(
    dir: &Path,
    reference: &BertForSequenceClassification,
    reference_tokenizer: &TextTokenizer,
    written: &HashMap<String, Tensor>,
    examples: &[Example],
    tolerance: f64,
) -> Result<LogitCheck> {
    let spec = dir
        .to_str()
        .ok_or_else(|| Error::invalid(dir.display(), "path", "is not valid UTF-8"))?;
    let loaded = load_classifier(spec, &BuildOptions::inference(&Device::Cpu))?;

    check_weights(dir, &loaded.files.read_weights()?, written)?;
    let max_len = reference.config().max_sequence_length();
    check_tokenizers(
        dir,
        &loaded.tokenizer,
        reference_tokenizer,
        examples,
        max_len,
    )?;
    // The logits.
    let reference_logits = classifier_logits(
        reference,
        reference_tokenizer,
        examples,
        max_len,
        &Device::Cpu,
    )?;
    let exported_logits = classifier_logits(
        &loaded.built.model,
        &loaded.tokenizer,
        examples,
        max_len,
        &Device::Cpu,
    )?;
    let rel_err = relative_error(&exported_logits, &reference_logits);
    // NaN logits fail too.
    if rel_err.is_nan() || rel_err > tolerance {
        return Err(mismatch(
            dir,
            format!(
                "logits differ from the trained model's on {} examples: relative error {rel_err:.3e} > tolerance {tolerance:.1e}",
                examples.len()
            ),
        ));
    }
    Ok(LogitCheck {
        examples: examples.to_vec(),
        exported_logits,
        reference_logits,
        rel_err,
        tolerance,
    })
}
