//! Evaluation of a sequence classifier on a dataset: label maps checked, inference in
//! length-sorted batches without dropout or gradients, metrics of the task.

use candle_core::{DType, Device};

use crate::data::{
    inference_order, reconcile_labels, Dataset, EncodedDataset, LabelMatch, Predictions,
};
use crate::metrics::{compute_metrics, Metrics};
use crate::model::BertForSequenceClassification;
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub batch_size: usize,
    pub max_seq_len: usize,
    pub device: Device,
}

#[derive(Debug, Clone)]
pub struct EvalResult {
    /// `None` when the data has no labels (test splits).
    pub metrics: Option<Metrics>,
    /// A class index or a score per example, in dataset order.
    pub predictions: Predictions,
    /// The model's raw outputs per example, in dataset order.
    pub logits: Vec<Vec<f32>>,
    pub label_match: LabelMatch,
}

/// Tokenises `dataset` and evaluates `model` on it.
pub fn evaluate(
    model: &BertForSequenceClassification,
    tokenizer: &TextTokenizer,
    dataset: &Dataset,
    options: &EvalOptions,
) -> Result<EvalResult> {
    let encoded = EncodedDataset::new(dataset, tokenizer, options.max_seq_len)?;
    evaluate_encoded(
        model,
        dataset,
        &encoded,
        options.batch_size,
        &options.device,
    )
}

/// Evaluates on a dataset tokenised beforehand (the trainer encodes its dev set once).
pub fn evaluate_encoded(
    model: &BertForSequenceClassification,
    dataset: &Dataset,
    encoded: &EncodedDataset,
    batch_size: usize,
    device: &Device,
) -> Result<EvalResult> {
    let label_match = reconcile_labels(
        &dataset.label_names,
        dataset.regression,
        model.config(),
        "the model",
    )?;
    let logits = predict_logits(model, encoded, batch_size, device)?;
    let predictions = if dataset.regression {
        Predictions::Scores(logits.iter().map(|l| l[0]).collect())
    } else {
        Predictions::Classes(logits.iter().map(|l| argmax(l)).collect())
    };
    let metrics = if dataset.is_labeled() {
        Some(compute_metrics(
            dataset.metric_set(),
            &predictions,
            &dataset.gold()?,
        )?)
    } else {
        None
    };
    Ok(EvalResult {
        metrics,
        predictions,
        logits,
        label_match,
    })
}

/// The model's outputs for every example, in dataset order.
pub fn predict_logits(
    model: &BertForSequenceClassification,
    encoded: &EncodedDataset,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    if batch_size == 0 {
        return Err(Error::invalid("--batch-size", 0, "must be at least 1"));
    }
    let mut logits = vec![Vec::new(); encoded.len()];
    for indices in inference_order(&encoded.lengths(), batch_size) {
        let batch = encoded.batch(&indices, device)?;
        let out = model
            .logits(&batch.input)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        for (row, i) in out.into_iter().zip(indices) {
            logits[i] = row;
        }
    }
    Ok(logits)
}

/// Index of the largest value (the first one on ties).
fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Example, Label, Split, Task};
    use crate::model::{build_classifier, BuildOptions};
    use crate::testing::{tiny_config, write_tiny_tokenizer};
    use crate::tokenizer::pad_batch;

    fn sst2(texts: &[(&str, usize)]) -> Dataset {
        Dataset {
            task: Some(Task::Sst2),
            split: Split::Dev,
            label_names: vec!["negative".into(), "positive".into()],
            regression: false,
            examples: texts
                .iter()
                .enumerate()
                .map(|(i, (t, l))| Example {
                    idx: i,
                    text_a: t.to_string(),
                    text_b: None,
                    label: Label::Class(*l),
                })
                .collect(),
            origin: "test".into(),
            skipped: 0,
        }
    }

    #[test]
    fn batched_padded_predictions_equal_one_by_one_and_score_them() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_tokenizer(dir.path()).unwrap();
        let tokenizer =
            crate::tokenizer::TextTokenizer::from_files(&crate::tokenizer::TokenizerFiles {
                tokenizer_json: Some(dir.path().join("tokenizer.json")),
                ..Default::default()
            })
            .unwrap();
        let mut config = tiny_config(16, 2, 2, 32);
        config.set_labels(&["negative".into(), "positive".into()]);
        let built = build_classifier(
            "random",
            &config,
            Default::default(),
            &BuildOptions::random(&Device::Cpu, 11),
        )
        .unwrap();
        let data = sst2(&[
            ("a good film", 1),
            (
                "the plot was very dull and the actor was awful , not fun",
                0,
            ),
            ("great", 1),
            ("bad movie", 0),
            ("i love this song and the music is nice", 1),
        ]);
        let options = EvalOptions {
            batch_size: 2,
            max_seq_len: 64,
            device: Device::Cpu,
        };
        let result = evaluate(&built.model, &tokenizer, &data, &options).unwrap();
        assert_eq!(result.label_match, LabelMatch::Same);
        let Predictions::Classes(classes) = &result.predictions else {
            panic!("classes expected")
        };
        for (i, e) in data.examples.iter().enumerate() {
            // Alone, unpadded: the same logits as inside a padded, length-sorted batch.
            let enc = tokenizer.encode(&e.text_a, None, 64).unwrap();
            let input = pad_batch(&[&enc], tokenizer.pad_id(), &Device::Cpu).unwrap();
            let alone = built
                .model
                .logits(&input)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (a, b) in alone[0].iter().zip(&result.logits[i]) {
                assert!((a - b).abs() < 1e-4, "example {i}: {a} vs {b}");
            }
            assert_eq!(classes[i], argmax(&alone[0]));
        }
        let gold: Vec<usize> = vec![1, 0, 1, 0, 1];
        let metrics = result.metrics.unwrap();
        assert_eq!(metrics.n, 5);
        assert_eq!(
            metrics.get("accuracy").unwrap(),
            crate::metrics::accuracy(classes, &gold)
        );

        let mut permuted = config.clone();
        permuted.set_labels(&["positive".into(), "negative".into()]);
        let built = build_classifier(
            "random",
            &permuted,
            Default::default(),
            &BuildOptions::random(&Device::Cpu, 11),
        )
        .unwrap();
        let err = evaluate(&built.model, &tokenizer, &data, &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("another order"), "{err}");
    }
}
