//! GLUE metrics: accuracy, F1, Matthews correlation, Pearson and Spearman correlation,
//! and each task's main score used for model selection.
//!
//! Degenerate inputs follow scikit-learn where it defines a value: Matthews correlation
//! is 0 when either side has a single class, F1 is 0 when there are no positives. Pearson
//! and Spearman of a constant vector are undefined (scipy returns NaN); here they are 0,
//! so that a model predicting a constant ranks below any model that correlates, and
//! metric files never hold NaN (JSON has no NaN).

use std::collections::BTreeMap;

use crate::data::{MetricSet, Predictions, Task};
use crate::{Error, Result};

/// Named metric values and the main score (higher is better).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metrics {
    #[serde(flatten)]
    pub values: BTreeMap<String, f64>,
    /// The score used to pick the best checkpoint: the GLUE leaderboard's per-task score
    /// (Matthews for CoLA; the mean of F1 and accuracy for MRPC/QQP; the mean of Pearson
    /// and Spearman for STS-B; accuracy otherwise).
    pub score: f64,
    /// Which value `score` is.
    pub score_name: String,
    /// Number of examples scored.
    pub n: usize,
}

impl Metrics {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }
}

pub fn accuracy(predictions: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    let right = predictions.iter().zip(gold).filter(|(p, g)| p == g).count();
    right as f64 / gold.len() as f64
}

/// F1 of class 1 (the positive class of MRPC and QQP); 0 when it has no true positives.
pub fn f1_binary(predictions: &[usize], gold: &[usize]) -> f64 {
    let (mut tp, mut fp, mut fneg) = (0usize, 0usize, 0usize);
    for (&p, &g) in predictions.iter().zip(gold) {
        match (p == 1, g == 1) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            _ => {}
        }
    }
    if tp == 0 {
        return 0.0;
    }
    2.0 * tp as f64 / (2 * tp + fp + fneg) as f64
}

/// Matthews correlation coefficient, multi-class (Gorodkin's R_K, as scikit-learn).
pub fn matthews(predictions: &[usize], gold: &[usize]) -> f64 {
    let classes = predictions.iter().chain(gold).max().map_or(0, |m| m + 1);
    let mut true_count = vec![0f64; classes];
    let mut pred_count = vec![0f64; classes];
    let mut correct = 0f64;
    for (&p, &g) in predictions.iter().zip(gold) {
        true_count[g] += 1.0;
        pred_count[p] += 1.0;
        if p == g {
            correct += 1.0;
        }
    }
    let n = gold.len() as f64;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let cov_tp = correct * n - dot(&true_count, &pred_count);
    let cov_pp = n * n - dot(&pred_count, &pred_count);
    let cov_tt = n * n - dot(&true_count, &true_count);
    if cov_pp * cov_tt == 0.0 {
        return 0.0;
    }
    cov_tp / (cov_tt * cov_pp).sqrt()
}

/// Pearson correlation; 0 when either vector is constant.
pub fn pearson(x: &[f32], y: &[f32]) -> f64 {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let y: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    pearson_f64(&x, &y)
}

fn pearson_f64(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n == 0 {
        return 0.0;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Ranks from 1, ties sharing their average rank (scipy's `rankdata(method="average")`).
pub fn average_ranks(values: &[f32]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) share ranks start+1..=end.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman rank correlation: Pearson of average ranks; 0 when either vector is constant.
pub fn spearman(x: &[f32], y: &[f32]) -> f64 {
    pearson_f64(&average_ranks(x), &average_ranks(y))
}

/// Scores predictions against gold labels with one of the GLUE metric sets.
pub fn compute_metrics(
    set: MetricSet,
    predictions: &Predictions,
    gold: &Predictions,
) -> Result<Metrics> {
    if predictions.len() != gold.len() {
        return Err(Error::msg(format!(
            "{} predictions for {} gold labels",
            predictions.len(),
            gold.len()
        )));
    }
    if gold.is_empty() {
        return Err(Error::msg("no examples to score"));
    }
    let mut values = BTreeMap::new();
    let score = match (set, predictions, gold) {
        (MetricSet::Correlation, Predictions::Scores(p), Predictions::Scores(g)) => {
            let (r, rho) = (pearson(p, g), spearman(p, g));
            values.insert("pearson".into(), r);
            values.insert("spearman".into(), rho);
            (r + rho) / 2.0
        }
        (MetricSet::Correlation, _, _) => {
            return Err(Error::msg("correlation metrics need real-valued scores"))
        }
        (set, Predictions::Classes(p), Predictions::Classes(g)) => {
            let acc = accuracy(p, g);
            values.insert("accuracy".into(), acc);
            match set {
                MetricSet::F1Accuracy => {
                    let f1 = f1_binary(p, g);
                    values.insert("f1".into(), f1);
                    (f1 + acc) / 2.0
                }
                MetricSet::Matthews => {
                    let mcc = matthews(p, g);
                    values.insert("matthews_correlation".into(), mcc);
                    mcc
                }
                _ => acc,
            }
        }
        _ => return Err(Error::msg("classification metrics need class predictions")),
    };
    let score_name = set.score_name();
    if score_name.ends_with("_mean") {
        values.insert(score_name.into(), score);
    }
    Ok(Metrics {
        values,
        score,
        score_name: score_name.into(),
        n: gold.len(),
    })
}

/// The official metrics of `task`.
pub fn task_metrics(task: Task, predictions: &Predictions, gold: &Predictions) -> Result<Metrics> {
    compute_metrics(task.metric_set(), predictions, gold)
}

#[cfg(test)]
mod tests {
    //! Expected values from scikit-learn 1.x / scipy on the same vectors:
    //! /work/pyenv/bin/python -c "from sklearn.metrics import accuracy_score, f1_score,
    //!   matthews_corrcoef; from scipy.stats import pearsonr, spearmanr, rankdata; ..."
    //! (the calls are named next to each number).
    use super::*;

    const P: [usize; 10] = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1];
    const G: [usize; 10] = [1, 0, 0, 1, 0, 1, 1, 0, 1, 0];
    // Ties in both vectors: 2.5 twice in X, 3.0 twice in Y.
    const X: [f32; 8] = [2.5, 0.0, 4.2, 3.3, 1.1, 5.0, 2.5, 3.8];
    const Y: [f32; 8] = [2.0, 0.4, 4.8, 3.0, 1.5, 4.6, 2.7, 3.0];

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    #[test]
    fn binary_metrics_match_sklearn() {
        close(accuracy(&P, &G), 0.7); // accuracy_score(G, P)
        close(f1_binary(&P, &G), 0.7272727272727273); // f1_score(G, P)
        close(matthews(&P, &G), 0.408248290463863); // matthews_corrcoef(G, P)
    }

    #[test]
    fn multiclass_matthews_matches_sklearn() {
        let p = [0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 2, 0];
        let g = [0, 1, 2, 1, 1, 0, 2, 2, 0, 1, 2, 1];
        close(accuracy(&p, &g), 0.6666666666666666);
        close(matthews(&p, &g), 0.5052911526399114); // matthews_corrcoef(g, p)
    }

    #[test]
    fn degenerate_classifications_score_zero_as_sklearn() {
        // matthews_corrcoef([1,1,1,1], [1,0,1,1]) == 0.0; ([1,1,1],[1,1,1]) == 0.0
        close(matthews(&[1, 0, 1, 1], &[1, 1, 1, 1]), 0.0);
        close(matthews(&[1, 1, 1], &[1, 1, 1]), 0.0);
        // f1_score([0,0,0], [0,0,0], zero_division=0) == 0.0
        close(f1_binary(&[0, 0, 0], &[0, 0, 0]), 0.0);
    }

    #[test]
    fn correlations_with_ties_match_scipy() {
        close(pearson(&X, &Y), 0.9515705974890092); // pearsonr(X, Y)[0]
        close(spearman(&X, &Y), 0.9638554216867469); // spearmanr(X, Y)[0]
                                                     // rankdata(X) == [3.5, 1, 7, 5, 2, 8, 3.5, 6]
        assert_eq!(
            average_ranks(&X),
            vec![3.5, 1.0, 7.0, 5.0, 2.0, 8.0, 3.5, 6.0]
        );
    }

    #[test]
    fn constant_vectors_correlate_zero_not_nan() {
        // scipy gives NaN here (ConstantInputWarning); we document 0.
        let c = [1.0f32; 4];
        let v = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(pearson(&c, &v), 0.0);
        assert_eq!(spearman(&c, &v), 0.0);
    }

    #[test]
    fn task_scores_pick_the_glue_main_metric() {
        let p = Predictions::Classes(P.to_vec());
        let g = Predictions::Classes(G.to_vec());
        let m = task_metrics(Task::Mrpc, &p, &g).unwrap();
        close(m.score, (0.7272727272727273 + 0.7) / 2.0);
        assert_eq!(m.n, 10);
        let m = task_metrics(Task::Cola, &p, &g).unwrap();
        close(m.score, 0.408248290463863);
        close(m.get("accuracy").unwrap(), 0.7);
        let m = task_metrics(Task::Sst2, &p, &g).unwrap();
        assert_eq!(m.score_name, "accuracy");
        let s = task_metrics(
            Task::Stsb,
            &Predictions::Scores(X.to_vec()),
            &Predictions::Scores(Y.to_vec()),
        )
        .unwrap();
        close(s.score, (0.9515705974890092 + 0.9638554216867469) / 2.0);
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["pearson"].is_number() && json["score"].is_number());
        assert!(task_metrics(Task::Stsb, &p, &g).is_err());
        assert!(task_metrics(Task::Sst2, &p, &Predictions::Classes(vec![1])).is_err());
    }
}
