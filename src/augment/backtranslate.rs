//! Back-translation: source language -> pivot language -> source language with a Marian
//! pair (default opus-mt-en-de then opus-mt-de-en). Sampling (temperature 0.8, as UDA
//! found diversity matters more than quality) or greedy; several samples per text.

use super::marian::{GenerateOptions, MarianTranslator, Sampling};
use super::{text_rng, Method, TextAugmenter, TextRef};
use crate::Result;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BacktranslateConfig {
    pub sampling: Sampling,
    /// Round trips per text (duplicates and unchanged results are dropped).
    pub samples: usize,
    /// Most tokens generated per translation.
    pub max_len: usize,
    /// Most sentences per forward pass (of equal token length).
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for BacktranslateConfig {
    fn default() -> Self {
        super::job::AugmentSettings::default().backtranslate_config(crate::rng::DEFAULT_SEED)
    }
}

/// Counts for the run report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BacktranslateStats {
    pub texts: usize,
    pub round_trips: usize,
    /// Round trips that gave back the original or an earlier result.
    pub duplicates: usize,
    pub new_texts: usize,
}

pub struct BackTranslator {
    pub forward: MarianTranslator,
    pub backward: MarianTranslator,
    config: BacktranslateConfig,
    stats: BacktranslateStats,
}

impl BackTranslator {
    pub fn new(
        forward: MarianTranslator,
        backward: MarianTranslator,
        config: BacktranslateConfig,
    ) -> Result<Self> {
        if config.samples == 0 || config.max_len == 0 {
            crate::bail!("back-translation needs samples >= 1 and max_len >= 1");
        }
        if let Sampling::TopP { temperature, top_p } = config.sampling {
            if temperature <= 0.0 || !(top_p > 0.0 && top_p <= 1.0) {
                crate::bail!(
                    "sampling needs temperature > 0 and top_p in (0, 1]; got {temperature} and {top_p} (use greedy for temperature 0)"
                );
            }
        }
        Ok(BackTranslator {
            forward,
            backward,
            config,
            stats: BacktranslateStats::default(),
        })
    }

    pub fn stats(&self) -> &BacktranslateStats {
        &self.stats
    }

    /// Round trips of every text, `samples` per text: result[text][sample].
    pub fn round_trips(&mut self, texts: &[TextRef<'_>]) -> Result<Vec<Vec<String>>> {
        let opts = GenerateOptions {
            sampling: self.config.sampling,
            max_len: self.config.max_len,
            batch_size: self.config.batch_size,
        };
        let mut rngs: Vec<_> = texts
            .iter()
            .map(|t| text_rng(self.config.seed, Method::Backtranslate, t.row, t.column))
            .collect();
        let mut out = vec![Vec::with_capacity(self.config.samples); texts.len()];
        let sources: Vec<&str> = texts.iter().map(|t| t.text).collect();
        for _ in 0..self.config.samples {
            let pivots = self.forward.translate(&sources, &opts, &mut rngs)?;
            let pivot_refs: Vec<&str> = pivots.iter().map(String::as_str).collect();
            let back = self.backward.translate(&pivot_refs, &opts, &mut rngs)?;
            for (o, b) in out.iter_mut().zip(back) {
                o.push(b);
            }
        }
        Ok(out)
    }
}

impl TextAugmenter for BackTranslator {
    fn method(&self) -> Method {
        Method::Backtranslate
    }

    fn augment_texts(&mut self, texts: &[TextRef<'_>]) -> Result<Vec<Vec<String>>> {
        let trips = self.round_trips(texts)?;
        let mut out = Vec::with_capacity(texts.len());
        for (t, results) in texts.iter().zip(trips) {
            let mut new = Vec::new();
            for r in results {
                self.stats.round_trips += 1;
                if r.trim().is_empty() || r == t.text || new.contains(&r) {
                    self.stats.duplicates += 1;
                } else {
                    new.push(r);
                }
            }
            self.stats.new_texts += new.len();
            out.push(new);
        }
        self.stats.texts += texts.len();
        Ok(out)
    }
}
