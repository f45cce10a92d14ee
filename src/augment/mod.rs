//! Task-data augmentation: TinyBERT's masked-token filling ([`mlm`]) and round-trip
//! translation through a Marian pair ([`backtranslate`]), cached on disk ([`cache`]).
//!
//! Every method works on plain rows of one or two text columns. For each row the output
//! holds the original row first, then rows where one column is replaced by a new variant
//! while the other keeps its original text (labels are the caller's to copy: the teacher
//! relabels augmented rows anyway).

pub mod backtranslate;
pub mod cache;
pub mod glove;
pub mod input;
pub mod job;
pub mod marian;
pub mod mlm;
pub mod spm;
#[cfg(any(test, feature = "testing"))]
pub mod tiny;

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::{Error, Result};

/// Which augmentation produced a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The row as it was in the input.
    Original,
    /// TinyBERT masked-token filling (and GloVe neighbours for multi-piece words).
    Mlm,
    /// Round-trip translation.
    Backtranslate,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Original => "original",
            Method::Mlm => "mlm",
            Method::Backtranslate => "backtranslate",
        }
    }

    /// A distinct number per method, so two methods never share random streams.
    fn salt(self) -> u64 {
        match self {
            Method::Original => 0,
            Method::Mlm => 0x6d6c_6d00,
            Method::Backtranslate => 0x6274_0000,
        }
    }
}

/// One output row: which input row it comes from, how it was made, its text columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AugmentedRow {
    pub source_row: usize,
    pub method: Method,
    pub text_a: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_b: Option<String>,
}

/// One text to augment: its row, its column (0 or 1) and the text itself.
#[derive(Debug, Clone, Copy)]
pub struct TextRef<'a> {
    pub row: usize,
    pub column: usize,
    pub text: &'a str,
}

/// An augmentation method over a batch of texts.
pub trait TextAugmenter {
    fn method(&self) -> Method;

    /// For each text, its NEW variants in the order they were made (never the original,
    /// never twice the same string). Results must not depend on how texts are batched:
    /// randomness comes from [`text_rng`] for each text's row and column.
    fn augment_texts(&mut self, texts: &[TextRef<'_>]) -> Result<Vec<Vec<String>>>;
}

/// SplitMix64 finaliser: spreads structured inputs over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random stream of one text: a function of (seed, method, row, column) only, so
/// results stay the same whatever the batching, chunking or resumption.
pub fn text_rng(seed: u64, method: Method, row: usize, column: usize) -> Rng {
    let h = mix(seed ^ method.salt());
    let h = mix(h ^ row as u64);
    Rng::new(mix(h ^ column as u64))
}

/// Checks that every row has one or two text columns, all rows the same number.
pub fn check_rows(rows: &[Vec<String>]) -> Result<usize> {
    let Some(first) = rows.first() else {
        return Ok(1);
    };
    let columns = first.len();
    if !(1..=2).contains(&columns) {
        return Err(Error::invalid(
            "input rows",
            "columns",
            format!("expected one or two text columns, row 0 has {columns}"),
        ));
    }
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != columns) {
        return Err(Error::invalid(
            "input rows",
            "columns",
            format!(
                "row 0 has {columns} text columns but row {i} has {}",
                r.len()
            ),
        ));
    }
    Ok(columns)
}

/// Augments rows of one or two text columns. `first_row` is the index of `rows[0]` in the
/// whole input (so chunks of a large input number their rows correctly).
///
/// Per input row: the original, then `(a', b)` for each new variant `a'` of column a,
/// then `(a, b')` for each new variant of column b. (The TinyBERT script reused the last
/// variant of column a when augmenting column b, and wrote the original twice; not here.)
pub fn augment_rows(
    rows: &[Vec<String>],
    first_row: usize,
    augmenter: &mut dyn TextAugmenter,
) -> Result<Vec<AugmentedRow>> {
    let columns = check_rows(rows)?;
    let method = augmenter.method();
    let texts: Vec<TextRef> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, row)| {
            row.iter().enumerate().map(move |(column, text)| TextRef {
                row: first_row + i,
                column,
                text,
            })
        })
        .collect();
    let variants = augmenter.augment_texts(&texts)?;
    if variants.len() != texts.len() {
        crate::bail!(
            "{} augmenter returned {} results for {} texts",
            method.as_str(),
            variants.len(),
            texts.len()
        );
    }
    let mut out = Vec::new();
    let mut variants = variants.into_iter();
    for (i, row) in rows.iter().enumerate() {
        let source_row = first_row + i;
        let b = row.get(1).cloned();
        out.push(AugmentedRow {
            source_row,
            method: Method::Original,
            text_a: row[0].clone(),
            text_b: b.clone(),
        });
        for new_a in variants.next().unwrap_or_default() {
            out.push(AugmentedRow {
                source_row,
                method,
                text_a: new_a,
                text_b: b.clone(),
            });
        }
        if columns == 2 {
            for new_b in variants.next().unwrap_or_default() {
                out.push(AugmentedRow {
                    source_row,
                    method,
                    text_a: row[0].clone(),
                    text_b: Some(new_b),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends "+<column>" once per text; a fixed, inspectable augmenter.
    struct Suffix;
    impl TextAugmenter for Suffix {
        fn method(&self) -> Method {
            Method::Mlm
        }
        fn augment_texts(&mut self, texts: &[TextRef<'_>]) -> Result<Vec<Vec<String>>> {
            Ok(texts
                .iter()
                .map(|t| vec![format!("{}+{}@{}", t.text, t.column, t.row)])
                .collect())
        }
    }

    #[test]
    fn pair_rows_keep_the_other_column_original() {
        let rows = vec![vec!["a".to_string(), "b".to_string()]];
        let out = augment_rows(&rows, 7, &mut Suffix).unwrap();
        let texts: Vec<_> = out
            .iter()
            .map(|r| {
                (
                    r.source_row,
                    r.method,
                    r.text_a.as_str(),
                    r.text_b.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            texts,
            vec![
                (7, Method::Original, "a", Some("b")),
                (7, Method::Mlm, "a+0@7", Some("b")),
                (7, Method::Mlm, "a", Some("b+1@7")),
            ]
        );
    }

    #[test]
    fn rows_must_have_one_or_two_equal_columns() {
        let bad = vec![
            vec!["a".to_string()],
            vec!["a".to_string(), "b".to_string()],
        ];
        assert!(augment_rows(&bad, 0, &mut Suffix).is_err());
        let three = vec![vec!["a".to_string(); 3]];
        assert!(check_rows(&three).is_err());
    }

    #[test]
    fn text_streams_differ_by_row_column_method_and_seed() {
        let draw = |s, m, r, c| text_rng(s, m, r, c).next_u64();
        let base = draw(1, Method::Mlm, 3, 0);
        assert_eq!(base, draw(1, Method::Mlm, 3, 0));
        assert_ne!(base, draw(2, Method::Mlm, 3, 0));
        assert_ne!(base, draw(1, Method::Backtranslate, 3, 0));
        assert_ne!(base, draw(1, Method::Mlm, 4, 0));
        assert_ne!(base, draw(1, Method::Mlm, 3, 1));
    }
}
