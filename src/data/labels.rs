//! Reconciling a dataset's label names with a model's `id2label`, so that nobody trains
//! or scores on a permuted label map without knowing.

use crate::model::BertConfig;
use crate::{Error, Result};

/// How a model's outputs were matched to the data's labels. Output `i` always means
/// data label `i`: permuted maps are refused, never silently re-ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelMatch {
    /// The model's names are the data's, in the same order (ignoring case).
    Same,
    /// The model has placeholder names (`LABEL_0`, ...) or none; the data's order is assumed.
    Assumed,
    /// Both are regression with one output.
    Regression,
}

fn format_map(names: &[String]) -> String {
    let items: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{i}: {n}"))
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn is_placeholder(name: &str, index: usize) -> bool {
    name.eq_ignore_ascii_case(&format!("LABEL_{index}"))
}

/// Checks that a model's label map agrees with the data's.
///
/// `data_labels` is empty for regression data. `origin` names the model for messages.
pub fn reconcile_labels(
    data_labels: &[String],
    regression: bool,
    config: &BertConfig,
    origin: &str,
) -> Result<LabelMatch> {
    let outputs = config.num_labels();
    let model_labels = config.labels(origin)?;
    if regression {
        if outputs != 1 {
            return Err(Error::msg(format!(
                "{origin}: the data is a regression task (one score) but the model has {outputs} outputs {}",
                model_labels.as_deref().map(format_map).unwrap_or_default()
            )));
        }
        return Ok(LabelMatch::Regression);
    }
    let data_map = format_map(data_labels);
    if outputs != data_labels.len() {
        return Err(Error::msg(format!(
            "{origin}: the model has {outputs} outputs {} but the data has {} labels {data_map}",
            model_labels.as_deref().map(format_map).unwrap_or_default(),
            data_labels.len()
        )));
    }
    let Some(model_labels) = model_labels else {
        tracing::warn!(
            "{origin}: the model has no id2label; assuming the data's label order {data_map}"
        );
        return Ok(LabelMatch::Assumed);
    };
    if model_labels
        .iter()
        .enumerate()
        .all(|(i, n)| is_placeholder(n, i))
    {
        tracing::warn!(
            "{origin}: the model's labels are placeholders {}; assuming the data's order {data_map}",
            format_map(&model_labels)
        );
        return Ok(LabelMatch::Assumed);
    }
    let same = |a: &String, b: &String| a.trim().eq_ignore_ascii_case(b.trim());
    if model_labels
        .iter()
        .zip(data_labels)
        .all(|(m, d)| same(m, d))
    {
        return Ok(LabelMatch::Same);
    }
    let model_map = format_map(&model_labels);
    let permuted = model_labels
        .iter()
        .all(|m| data_labels.iter().any(|d| same(m, d)));
    if permuted {
        Err(Error::msg(format!(
            "{origin}: the model's labels are the data's in another order: model id2label {model_map}, \
             data {data_map}. Refusing to use a permuted label map; re-order the model's head or \
             pass labels in the model's order."
        )))
    } else {
        Err(Error::msg(format!(
            "{origin}: the model's labels do not match the data's: model id2label {model_map}, \
             data {data_map}. Was this model trained on another task?"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn config_with(labels: Option<&[&str]>, num_labels: Option<usize>) -> BertConfig {
        let mut c = BertConfig::with_shape(10, 8, 1, 2, 16);
        if let Some(l) = labels {
            c.set_labels(&names(l));
        }
        c.num_labels = num_labels.or(c.num_labels);
        c
    }

    #[test]
    fn same_names_in_any_case_match() {
        let data = names(&["negative", "positive"]);
        let c = config_with(Some(&["NEGATIVE", "POSITIVE"]), None);
        assert_eq!(
            reconcile_labels(&data, false, &c, "m").unwrap(),
            LabelMatch::Same
        );
    }

    #[test]
    fn placeholders_and_missing_maps_are_assumed_in_data_order() {
        let data = names(&["entailment", "neutral", "contradiction"]);
        let c = config_with(Some(&["LABEL_0", "LABEL_1", "LABEL_2"]), None);
        assert_eq!(
            reconcile_labels(&data, false, &c, "m").unwrap(),
            LabelMatch::Assumed
        );
        let c = config_with(None, Some(3));
        assert_eq!(
            reconcile_labels(&data, false, &c, "m").unwrap(),
            LabelMatch::Assumed
        );
    }

    #[test]
    fn permuted_map_is_refused_showing_both_maps() {
        let data = names(&["entailment", "not_entailment"]);
        let c = config_with(Some(&["not_entailment", "entailment"]), None);
        let err = reconcile_labels(&data, false, &c, "teacher")
            .unwrap_err()
            .to_string();
        assert!(err.contains("another order"), "{err}");
        assert!(err.contains("{0: not_entailment, 1: entailment}"), "{err}");
        assert!(err.contains("{0: entailment, 1: not_entailment}"), "{err}");
    }

    #[test]
    fn other_names_or_sizes_are_refused() {
        let data = names(&["negative", "positive"]);
        let c = config_with(Some(&["contradiction", "entailment"]), None);
        let err = reconcile_labels(&data, false, &c, "m")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("do not match") && err.contains("positive"),
            "{err}"
        );
        let c = config_with(Some(&["a", "b", "c"]), None);
        let err = reconcile_labels(&data, false, &c, "m")
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 outputs"), "{err}");
    }

    #[test]
    fn regression_needs_one_output() {
        let one = config_with(Some(&["LABEL_0"]), None);
        assert_eq!(
            reconcile_labels(&[], true, &one, "m").unwrap(),
            LabelMatch::Regression
        );
        let two = config_with(None, Some(2));
        assert!(reconcile_labels(&[], true, &two, "m").is_err());
    }
}
