//! Tokenised datasets and batches: longest-first truncation, length-grouped shuffling,
//! dynamic padding to the longest example of each batch.

use candle_core::{Device, Tensor};

use super::dataset::{Dataset, Label};
use crate::model::BertInput;
use crate::rng::Rng;
use crate::tokenizer::{pad_batch_to, Encoded, TextTokenizer};
use crate::{Error, Result};

/// Every example of a dataset, tokenised once.
#[derive(Debug, Clone)]
pub struct EncodedDataset {
    pub encodings: Vec<Encoded>,
    pub labels: Vec<Label>,
    pub regression: bool,
    pub pad_id: u32,
}

/// One padded batch.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input: BertInput,
    /// (batch,) u32 class indices or f32 scores; `None` for unlabeled examples.
    pub labels: Option<Tensor>,
    /// Positions of the batch's examples in the dataset.
    pub indices: Vec<usize>,
}

impl EncodedDataset {
    /// Tokenises every example, truncated longest-first to `max_seq_len` tokens.
    pub fn new(dataset: &Dataset, tokenizer: &TextTokenizer, max_seq_len: usize) -> Result<Self> {
        if max_seq_len < 3 {
            return Err(Error::invalid(
                "--max-seq-len",
                max_seq_len,
                "must be at least 3 ([CLS], one token, [SEP])",
            ));
        }
        let encodings = dataset
            .examples
            .iter()
            .map(|e| tokenizer.encode(&e.text_a, e.text_b.as_deref(), max_seq_len))
            .collect::<Result<Vec<_>>>()?;
        Ok(EncodedDataset {
            encodings,
            labels: dataset.examples.iter().map(|e| e.label).collect(),
            regression: dataset.regression,
            pad_id: tokenizer.pad_id(),
        })
    }

    pub fn len(&self) -> usize {
        self.encodings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.encodings.is_empty()
    }

    /// Token counts, for [`batch_order`].
    pub fn lengths(&self) -> Vec<usize> {
        self.encodings.iter().map(|e| e.ids.len()).collect()
    }

    /// The same examples without labels: what distillation stages train on (they
    /// learn from the teacher alone).
    pub fn without_labels(mut self) -> Self {
        self.labels.fill(Label::Unlabeled);
        self
    }

    pub fn has_unlabeled(&self) -> bool {
        self.labels.iter().any(|l| matches!(l, Label::Unlabeled))
    }

    /// The examples' encodings, in order.
    pub fn encoded(&self) -> Vec<&Encoded> {
        self.encodings.iter().collect()
    }

    /// Pads the examples at `indices` to their longest and builds inputs and labels.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch> {
        self.batch_padded(indices, 0, device)
    }

    /// As [`batch`](Self::batch), padded to at least `pad_to` tokens.
    pub fn batch_padded(&self, indices: &[usize], pad_to: usize, device: &Device) -> Result<Batch> {
        let examples: Vec<&Encoded> = indices.iter().map(|&i| &self.encodings[i]).collect();
        let input = pad_batch_to(&examples, pad_to, self.pad_id, device)?;
        let labels: Vec<Label> = indices.iter().map(|&i| self.labels[i]).collect();
        let labels = if labels.iter().all(|l| matches!(l, Label::Unlabeled)) {
            None
        } else if self.regression {
            let scores = labels
                .iter()
                .map(|l| match l {
                    Label::Score(s) => Ok(*s),
                    other => Err(Error::msg(format!(
                        "a regression batch holds a {other:?} label"
                    ))),
                })
                .collect::<Result<Vec<f32>>>()?;
            Some(Tensor::new(scores, device)?)
        } else {
            let classes = labels
                .iter()
                .map(|l| match l {
                    Label::Class(c) => Ok(*c as u32),
                    other => Err(Error::msg(format!(
                        "a classification batch holds a {other:?} label"
                    ))),
                })
                .collect::<Result<Vec<u32>>>()?;
            Some(Tensor::new(classes, device)?)
        };
        Ok(Batch {
            input,
            labels,
            indices: indices.to_vec(),
        })
    }
}

/// Batches per sort chunk when grouping by length: large enough that batches have similar
/// lengths, small enough that each epoch still mixes the data.
pub const GROUP_CHUNK_BATCHES: usize = 50;

/// The batches of one epoch: every index once, shuffled; the last batch may be smaller.
///
/// With `group_by_length`, the shuffled indices are sorted by length within chunks of
/// 50 batches and the resulting batches shuffled, so padding is small but the order is
/// still random. The same `rng` state gives the same batches.
pub fn batch_order(
    lengths: &[usize],
    batch_size: usize,
    group_by_length: bool,
    rng: &mut Rng,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    if !group_by_length {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    }
    for chunk in order.chunks_mut(batch_size * GROUP_CHUNK_BATCHES) {
        // Stable, so equal lengths keep their shuffled order.
        chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    rng.shuffle(&mut batches);
    batches
}

/// Consecutive batches sorted by length, for inference: order does not matter there, and
/// sorting keeps padding small. Positions refer to the dataset.
pub fn inference_order(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(n: usize) -> Vec<usize> {
        let mut rng = Rng::new(3);
        (0..n).map(|_| 3 + rng.below(60)).collect()
    }

    fn check_partition(batches: &[Vec<usize>], n: usize, batch_size: usize) {
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        let small = batches.iter().filter(|b| b.len() < batch_size).count();
        assert!(small <= 1, "only one incomplete batch");
        assert_eq!(batches.len(), n.div_ceil(batch_size));
    }

    #[test]
    fn batches_cover_every_index_once_and_are_deterministic() {
        let lens = lengths(1000);
        for group in [false, true] {
            let a = batch_order(&lens, 32, group, &mut Rng::new(5));
            let b = batch_order(&lens, 32, group, &mut Rng::new(5));
            let c = batch_order(&lens, 32, group, &mut Rng::new(6));
            check_partition(&a, 1000, 32);
            assert_eq!(a, b);
            assert_ne!(a, c);
        }
    }

    fn tiny_tokenizer() -> (tempfile::TempDir, TextTokenizer) {
        let dir = tempfile::tempdir().unwrap();
        crate::testing::write_tiny_tokenizer(dir.path()).unwrap();
        let tok = TextTokenizer::from_files(&crate::tokenizer::TokenizerFiles {
            tokenizer_json: Some(dir.path().join("tokenizer.json")),
            ..Default::default()
        })
        .unwrap();
        (dir, tok)
    }

    fn dataset(labels: &[Label], regression: bool) -> Dataset {
        let texts = [
            "a good film",
            "the very long and very dull plot of the film",
            "fun",
        ];
        Dataset {
            task: None,
            split: crate::data::Split::Train,
            label_names: if regression {
                vec![]
            } else {
                vec!["no".into(), "yes".into()]
            },
            regression,
            examples: labels
                .iter()
                .enumerate()
                .map(|(i, l)| crate::data::Example {
                    idx: i,
                    text_a: texts[i % 3].into(),
                    text_b: (i == 1).then(|| "a cat and a dog and a man and a woman".into()),
                    label: *l,
                })
                .collect(),
            origin: "test".into(),
            skipped: 0,
        }
    }

    #[test]
    fn batches_pad_dynamically_and_carry_typed_labels() {
        let (_dir, tok) = tiny_tokenizer();
        let ds = dataset(&[Label::Class(1), Label::Class(0), Label::Class(1)], false);
        let enc = EncodedDataset::new(&ds, &tok, 12).unwrap();
        let lens = enc.lengths();
        assert_eq!(lens[1], 12, "the pair is truncated to max_seq_len");
        assert_eq!(lens[0], 5, "[CLS] a good film [SEP]");
        let pair_types = &enc.encodings[1].type_ids;
        assert!(
            pair_types.contains(&1),
            "second segment kept after longest-first"
        );
        let batch = enc.batch(&[2, 0], &Device::Cpu).unwrap();
        assert_eq!(
            batch.input.input_ids.dims(),
            &[2, 5],
            "padded to the longest in the batch"
        );
        let mask = batch.input.attention_mask.to_vec2::<u32>().unwrap();
        assert_eq!(mask[0], vec![1, 1, 1, 0, 0]);
        let labels = batch.labels.unwrap();
        assert_eq!(labels.dtype(), candle_core::DType::U32);
        assert_eq!(labels.to_vec1::<u32>().unwrap(), vec![1, 1]);

        let ds = dataset(&[Label::Score(4.5), Label::Score(0.25)], true);
        let enc = EncodedDataset::new(&ds, &tok, 64).unwrap();
        let labels = enc.batch(&[1, 0], &Device::Cpu).unwrap().labels.unwrap();
        assert_eq!(labels.to_vec1::<f32>().unwrap(), vec![0.25, 4.5]);

        let ds = dataset(&[Label::Unlabeled, Label::Unlabeled], false);
        let enc = EncodedDataset::new(&ds, &tok, 64).unwrap();
        assert!(enc.batch(&[0, 1], &Device::Cpu).unwrap().labels.is_none());
        assert!(EncodedDataset::new(&ds, &tok, 2).is_err());
    }

    #[test]
    fn grouping_by_length_reduces_padding() {
        let lens = lengths(3200);
        let padding = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| {
                    let max = b.iter().map(|&i| lens[i]).max().unwrap();
                    b.iter().map(|&i| max - lens[i]).sum::<usize>()
                })
                .sum()
        };
        let plain = padding(&batch_order(&lens, 32, false, &mut Rng::new(1)));
        let grouped = padding(&batch_order(&lens, 32, true, &mut Rng::new(1)));
        assert!(grouped * 5 < plain, "grouped {grouped} vs plain {plain}");
        let first = batch_order(&lens, 32, true, &mut Rng::new(1));
        assert_ne!(first[0], inference_order(&lens, 32)[0], "still shuffled");
    }
}
