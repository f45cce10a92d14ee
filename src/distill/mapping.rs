//! Which student layer learns from which teacher layer.
//!
//! Layers are 1-based as in the TinyBERT paper; 0 is the embedding output.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How to pair student layers with teacher layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerMap {
    /// `uniform` (TinyBERT: student m <- teacher m*N/M), `top` or `bottom`.
    Strategy(MapStrategy),
    /// Explicit `(student, teacher)` pairs; 0 means the embedding output.
    Pairs(Vec<[usize; 2]>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapStrategy {
    Uniform,
    Top,
    Bottom,
}

impl Default for LayerMap {
    fn default() -> Self {
        LayerMap::Strategy(MapStrategy::Uniform)
    }
}

/// Resolved pairs for the transformer layers, 1-based, in student order.
/// The embedding pair (0, 0) is not included: the embedding loss adds it.
pub fn resolve(
    map: &LayerMap,
    student_layers: usize,
    teacher_layers: usize,
) -> Result<Vec<(usize, usize)>> {
    let (m, n) = (student_layers, teacher_layers);
    if m == 0 || n == 0 {
        return Err(Error::msg(
            "layer mapping needs at least one layer on each side",
        ));
    }
    let pairs: Vec<(usize, usize)> = match map {
        LayerMap::Strategy(MapStrategy::Uniform) => {
            if m > n {
                return Err(Error::msg(format!(
                    "uniform layer map: the student has more layers ({m}) than the teacher ({n})"
                )));
            }
            if n % m != 0 {
                tracing::warn!(
                    "uniform layer map: {n} teacher layers are not a multiple of {m} student layers; \
                     student layer j learns from teacher layer floor(j*{n}/{m})"
                );
            }
            (1..=m).map(|j| (j, j * n / m)).collect()
        }
        LayerMap::Strategy(MapStrategy::Top) => {
            if m > n {
                return Err(Error::msg(format!(
                    "top layer map: student {m} layers > teacher {n}"
                )));
            }
            (1..=m).map(|j| (j, n - m + j)).collect()
        }
        LayerMap::Strategy(MapStrategy::Bottom) => {
            if m > n {
                return Err(Error::msg(format!(
                    "bottom layer map: student {m} layers > teacher {n}"
                )));
            }
            (1..=m).map(|j| (j, j)).collect()
        }
        LayerMap::Pairs(pairs) => {
            let mut out = Vec::new();
            for &[s, t] in pairs {
                if s > m || t > n {
                    return Err(Error::invalid(
                        "layer_map",
                        format!("[{s}, {t}]"),
                        format!("student layers are 0..={m} and teacher layers 0..={n} (0 = embeddings)"),
                    ));
                }
                if s == 0 || t == 0 {
                    if s != t {
                        return Err(Error::invalid(
                            "layer_map",
                            format!("[{s}, {t}]"),
                            "the embedding output (0) can only be paired with the other model's embeddings (0)",
                        ));
                    }
                    continue; // the embedding loss covers (0, 0)
                }
                if out.iter().any(|&(os, _)| os == s) {
                    return Err(Error::invalid(
                        "layer_map",
                        format!("[{s}, {t}]"),
                        "student layer mapped twice",
                    ));
                }
                out.push((s, t));
            }
            out.sort();
            out
        }
    };
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies() {
        let uniform = LayerMap::Strategy(MapStrategy::Uniform);
        assert_eq!(
            resolve(&uniform, 4, 12).unwrap(),
            vec![(1, 3), (2, 6), (3, 9), (4, 12)]
        );
        assert_eq!(
            resolve(&uniform, 3, 6).unwrap(),
            vec![(1, 2), (2, 4), (3, 6)]
        );
        let top = LayerMap::Strategy(MapStrategy::Top);
        assert_eq!(resolve(&top, 2, 6).unwrap(), vec![(1, 5), (2, 6)]);
        let bottom = LayerMap::Strategy(MapStrategy::Bottom);
        assert_eq!(resolve(&bottom, 2, 6).unwrap(), vec![(1, 1), (2, 2)]);
        assert!(resolve(&uniform, 8, 4).is_err());
    }

    #[test]
    fn explicit_pairs_are_checked() {
        let ok = LayerMap::Pairs(vec![[0, 0], [2, 12], [1, 6]]);
        assert_eq!(resolve(&ok, 2, 12).unwrap(), vec![(1, 6), (2, 12)]);
        let err = resolve(&LayerMap::Pairs(vec![[3, 1]]), 2, 12)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[3, 1]") && err.contains("0..=2"), "{err}");
        assert!(resolve(&LayerMap::Pairs(vec![[0, 3]]), 2, 12).is_err());
        assert!(resolve(&LayerMap::Pairs(vec![[1, 3], [1, 4]]), 2, 12).is_err());
    }

    #[test]
    fn parses_from_toml() {
        #[derive(Deserialize)]
        struct W {
            map: LayerMap,
        }
        let w: W = toml::from_str("map = \"top\"").unwrap();
        assert_eq!(w.map, LayerMap::Strategy(MapStrategy::Top));
        let w: W = toml::from_str("map = [[1, 2], [2, 4]]").unwrap();
        assert_eq!(w.map, LayerMap::Pairs(vec![[1, 2], [2, 4]]));
    }
}
