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
