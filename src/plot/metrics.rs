//! Charts of a run's `metrics.jsonl`: one loss panel per stage and one panel of
//! dev metrics.
//!
//! Lines are JSON objects. Training lines carry `step`, optional `stage` (default
//! "train"), `loss` and/or a `losses` object of parts; evaluation lines carry an
//! `eval` object of metrics. Other lines (learning-rate logs, events) are ignored.
//! `null` values are gaps. A final line without its newline is still being
//! written by the run and is skipped if it does not parse yet.

use std::path::Path;

use serde_json::{Map, Value};

use super::{Chart, Series};
use crate::{Error, Result};

/// Builds the charts of a metrics file's text; errors name the offending line.
pub fn charts_from_metrics(jsonl_text: &str) -> Result<Vec<Chart>> {
    parse(jsonl_text, "metrics.jsonl").map(Curves::into_charts)
}

/// Reads `metrics` (a metrics.jsonl file) and writes its charts to `png` atomically.
pub fn plot_metrics_file(metrics: &Path, png: &Path) -> Result<()> {
    plot_run_metrics(metrics, None, png)
}

/// A run's charts: those of its teacher's fine-tuning first when `teacher` (that
/// run's metrics.jsonl) is given, its dev panel titled "teacher dev metrics", then the
/// run's own.
pub fn run_charts(metrics: &Path, teacher: Option<&Path>) -> Result<Vec<Chart>> {
    let mut charts = Vec::new();
    if let Some(teacher) = teacher {
        for mut chart in file_charts(teacher)? {
            if chart.title == DEV_TITLE {
                chart.title = format!("teacher {DEV_TITLE}");
            }
            charts.push(chart);
        }
    }
    charts.extend(file_charts(metrics)?);
    Ok(charts)
}

fn file_charts(metrics: &Path) -> Result<Vec<Chart>> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    Ok(parse(&text, &metrics.display().to_string())?.into_charts())
}

/// Writes [`run_charts`] to `png` atomically.
pub fn plot_run_metrics(metrics: &Path, teacher: Option<&Path>, png: &Path) -> Result<()> {
    let charts = run_charts(metrics, teacher)?;
    if charts.is_empty() {
        return Err(Error::invalid(
            metrics.display(),
            "losses",
            "no `loss`, `losses` or `eval` values to plot yet",
        ));
    }
    super::write_png(&charts, png)
}

const DEV_TITLE: &str = "dev metrics";

type Points = Vec<(f64, f64)>;

/// Named point lists in order of first appearance.
#[derive(Default)]
struct Named(Vec<(String, Points)>);

impl Named {
    fn push(&mut self, name: &str, point: (f64, f64)) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, points)) => points.push(point),
            None => self.0.push((name.to_string(), vec![point])),
        }
    }
}

#[derive(Default)]
struct Curves {
    /// Per stage: "total" then the loss parts.
    losses: Vec<(String, Named)>,
    /// Per stage: dev metrics.
    evals: Vec<(String, Named)>,
}

fn stage_entry<'a>(list: &'a mut Vec<(String, Named)>, stage: &str) -> &'a mut Named {
    let i = match list.iter().position(|(s, _)| s == stage) {
        Some(i) => i,
        None => {
            list.push((stage.to_string(), Named::default()));
            list.len() - 1
        }
    };
    &mut list[i].1
}

fn parse(text: &str, source: &str) -> Result<Curves> {
    let mut curves = Curves::default();
    let line_count = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| Error::invalid(source, format!("line {number}"), message);
        let value: Value = match serde_json::from_str(line) {
            Ok(value) => value,
            Err(_) if number == line_count && !text.ends_with('\n') => break,
            Err(e) => return Err(bad(format!("not valid JSON: {e}"))),
        };
        let Value::Object(object) = value else {
            return Err(bad("expected a JSON object".into()));
        };
        let (loss, losses, eval) = (object.get("loss"), object.get("losses"), object.get("eval"));
        if loss.is_none() && losses.is_none() && eval.is_none() {
            continue;
        }
        let step = match object.get("step") {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            Some(other) => return Err(bad(format!("`step` must be a number, found {other}"))),
            None => return Err(bad("`step` is missing".into())),
        };
        let stage = match object.get("stage") {
            Some(Value::String(s)) => s.as_str(),
            None => "train",
            Some(other) => return Err(bad(format!("`stage` must be a string, found {other}"))),
        };
        if let Some(loss) = loss {
            let y = number_or_gap(loss)
                .ok_or_else(|| bad(format!("`loss` must be a number, found {loss}")))?;
            stage_entry(&mut curves.losses, stage).push("total", (step, y));
        }
        if let Some(losses) = losses {
            let parts = numbers(losses, false).map_err(|m| bad(format!("`losses` {m}")))?;
            let named = stage_entry(&mut curves.losses, stage);
            for (name, y) in parts {
                named.push(name, (step, y));
            }
        }
        if let Some(eval) = eval {
            let metrics = numbers(eval, true).map_err(|m| bad(format!("`eval` {m}")))?;
            let named = stage_entry(&mut curves.evals, stage);
            for (name, y) in metrics {
                named.push(name, (step, y));
            }
        }
    }
    Ok(curves)
}

/// A number, or NaN (a gap) for `null`; `None` for anything else.
fn number_or_gap(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::Null => Some(f64::NAN),
        _ => None,
    }
}

/// The numeric members of an object. Evaluations may also hold non-numeric extras
/// (per-class tables, notes), which are not curves and are passed over.
fn numbers(value: &Value, skip_other: bool) -> std::result::Result<Vec<(&str, f64)>, String> {
    let object: &Map<String, Value> = value
        .as_object()
        .ok_or_else(|| format!("must be an object of numbers, found {value}"))?;
    let mut out = Vec::new();
    for (name, v) in object {
        match number_or_gap(v) {
            Some(y) => out.push((name.as_str(), y)),
            None if skip_other => {}
            None => return Err(format!("`{name}` must be a number, found {v}")),
        }
    }
    Ok(out)
}

impl Curves {
    fn into_charts(self) -> Vec<Chart> {
        let mut charts: Vec<Chart> = self
            .losses
            .into_iter()
            .map(|(stage, named)| loss_chart(&stage, named))
            .collect();
        if let Some(chart) = eval_chart(self.evals) {
            charts.push(chart);
        }
        charts
    }
}

fn loss_chart(stage: &str, named: Named) -> Chart {
    // A single loss part is usually the total under another name: keep one curve.
    let total = named
        .0
        .iter()
        .find(|(n, _)| n == "total")
        .map(|(_, p)| p.clone());
    let mut widest = 1;
    let series = named
        .0
        .into_iter()
        .filter(|(name, points)| {
            name == "total" || !total.as_ref().is_some_and(|t| same_curve(t, points))
        })
        .map(|(name, raw)| {
            let window = smoothing_window(raw.len());
            widest = widest.max(window);
            if window > 1 {
                Series::new(name, moving_average(&raw, window)).with_raw(raw)
            } else {
                let few = raw.len() <= 30;
                let series = Series::new(name, raw);
                if few {
                    series.with_markers()
                } else {
                    series
                }
            }
        })
        .collect::<Vec<_>>();
    let title = if widest > 1 {
        format!("{stage} loss (moving average of {widest})")
    } else {
        format!("{stage} loss")
    };
    let log_y = spans_decades(&series);
    Chart {
        title,
        x_label: "step".into(),
        y_label: if log_y {
            "loss (log scale)".into()
        } else {
            "loss".into()
        },
        series,
        log_y,
    }
}

fn eval_chart(evals: Vec<(String, Named)>) -> Option<Chart> {
    let several_stages = evals.len() > 1;
    let mut series = Vec::new();
    for (stage, named) in evals {
        // `main` repeats the task's headline metric under a fixed name; drop it
        // when it is an exact copy of another curve.
        let duplicates_main = |points: &Points| {
            named
                .0
                .iter()
                .any(|(n, p)| n != "main" && same_curve(p, points))
        };
        for (name, points) in named.0.iter() {
            if name == "main" && duplicates_main(points) {
                continue;
            }
            let label = if several_stages {
                format!("{stage} {name}")
            } else {
                name.clone()
            };
            series.push(Series::new(label, points.clone()).with_markers());
        }
    }
    (!series.is_empty()).then(|| Chart {
        title: DEV_TITLE.into(),
        x_label: "step".into(),
        y_label: "score".into(),
        series,
        log_y: false,
    })
}

/// Equal point for point, gaps included.
fn same_curve(a: &Points, b: &Points) -> bool {
    let same = |u: f64, v: f64| u == v || (u.is_nan() && v.is_nan());
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(p, q)| same(p.0, q.0) && same(p.1, q.1))
}

/// Centred moving-average window for `n` noisy points: none for short runs,
/// about a fortieth of the run otherwise (odd, at most 201).
fn smoothing_window(n: usize) -> usize {
    2 * (n / 40).min(100) + 1
}

/// Centred moving average over the finite values in each window (shrinking at the
/// ends); a window without finite values is a gap.
fn moving_average(points: &[(f64, f64)], window: usize) -> Points {
    let half = window / 2;
    let mut sums = vec![0.0; points.len() + 1];
    let mut counts = vec![0usize; points.len() + 1];
    for (i, &(_, y)) in points.iter().enumerate() {
        let finite = y.is_finite();
        sums[i + 1] = sums[i] + if finite { y } else { 0.0 };
        counts[i + 1] = counts[i] + finite as usize;
    }
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(points.len()));
            let n = counts[b] - counts[a];
            let y = if n == 0 {
                f64::NAN
            } else {
                (sums[b] - sums[a]) / n as f64
            };
            (x, y)
        })
        .collect()
}

/// Whether the finite values are all positive and span two decades or more.
fn spans_decades(series: &[Series]) -> bool {
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().chain(&s.raw))
        .map(|p| p.1)
        .filter(|y| y.is_finite());
    let mut range: Option<(f64, f64)> = None;
    for y in values {
        if y <= 0.0 {
            return false;
        }
        range = Some(range.map_or((y, y), |(lo, hi)| (lo.min(y), hi.max(y))));
    }
    range.is_some_and(|(lo, hi)| hi / lo >= 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"stage":"intermediate","step":1,"loss":0.9,"losses":{"attention":0.4,"hidden":0.5},"lr":5e-5}
{"stage":"intermediate","step":2,"loss":0.7,"losses":{"attention":0.3,"hidden":0.4},"lr":5e-5}
{"event":"checkpoint","path":"x"}

{"stage":"prediction","step":3,"loss":0.5,"losses":{"soft":0.5}}
{"stage":"prediction","step":4,"eval":{"accuracy":0.81,"main":0.81,"confusion":[[1,2],[3,4]]}}
{"stage":"prediction","step":5,"loss":null}
{"stage":"prediction","step":8,"eval":{"accuracy":0.84,"main":0.84}}
"#;

    #[test]
    fn sample_gives_a_panel_per_stage_and_one_for_dev_metrics() {
        let charts = charts_from_metrics(SAMPLE).unwrap();
        let titles: Vec<&str> = charts.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(
            titles,
            ["intermediate loss", "prediction loss", "dev metrics"]
        );
        let names: Vec<&str> = charts[0].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["total", "attention", "hidden"]);
        assert_eq!(charts[0].series[2].points, vec![(1.0, 0.5), (2.0, 0.4)]);
        let total = &charts[1].series[0].points;
        assert_eq!(total.len(), 2);
        assert!(total[1].1.is_nan(), "null loss should be a gap");
        // `main` duplicates accuracy and is dropped; the confusion table is no curve.
        let dev = &charts[2];
        assert_eq!(dev.series.len(), 1);
        assert_eq!(dev.series[0].name, "accuracy");
        assert_eq!(dev.series[0].points, vec![(4.0, 0.81), (8.0, 0.84)]);
        assert!(dev.series[0].markers);
    }

    #[test]
    fn a_part_identical_to_the_total_is_not_drawn_twice() {
        let text = "{\"step\":1,\"loss\":0.5,\"losses\":{\"kd\":0.5}}\n\
                    {\"step\":2,\"loss\":null,\"losses\":{\"kd\":null}}\n";
        let charts = charts_from_metrics(text).unwrap();
        assert_eq!(charts.len(), 1);
        assert_eq!(charts[0].title, "train loss");
        assert_eq!(charts[0].series.len(), 1);
        assert_eq!(charts[0].series[0].name, "total");
    }

    #[test]
    fn malformed_lines_are_reported_by_number() {
        let cases = [
            (
                "{\"step\":1,\"loss\":0.5}\n{\"step\":2,\"loss\":\n{\"step\":3}\n",
                "line 2",
            ),
            ("[1,2]\n", "line 1"),
            ("{\"loss\":0.5}\n", "`step` is missing"),
            ("\n{\"step\":1,\"loss\":\"high\"}\n", "line 2"),
            (
                "{\"step\":1,\"losses\":{\"kd\":true}}\n",
                "`kd` must be a number",
            ),
            (
                "{\"step\":1,\"stage\":3,\"loss\":1}\n",
                "`stage` must be a string",
            ),
        ];
        for (text, expected) in cases {
            let err = charts_from_metrics(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.contains("metrics.jsonl"), "{err}");
        }
    }

    #[test]
    fn a_half_written_last_line_is_skipped() {
        let text = "{\"step\":1,\"loss\":0.5}\n{\"step\":2,\"lo";
        let charts = charts_from_metrics(text).unwrap();
        assert_eq!(charts[0].series[0].points, vec![(1.0, 0.5)]);
        assert!(charts_from_metrics(&format!("{text}\n")).is_err());
    }

    #[test]
    fn long_noisy_runs_are_smoothed_and_log_scaled_when_spanning_decades() {
        let text: String = (0..400)
            .map(|i| {
                let loss = 10.0 * (-(i as f64) / 40.0).exp() * if i % 2 == 0 { 1.2 } else { 0.8 };
                format!("{{\"stage\":\"intermediate\",\"step\":{i},\"loss\":{loss}}}\n")
            })
            .collect();
        let charts = charts_from_metrics(&text).unwrap();
        let series = &charts[0].series[0];
        assert_eq!(series.raw.len(), 400);
        assert_eq!(series.points.len(), 400);
        assert!(charts[0].log_y);
        assert!(
            charts[0].title.contains("moving average of 21"),
            "{}",
            charts[0].title
        );
        // Smoothing removes most of the +-20% zigzag (raw neighbours differ by 50%).
        let (a, b) = (series.points[200].1, series.points[201].1);
        assert!((a / b - (1.0f64 / 40.0).exp()).abs() < 0.05, "{a} {b}");
    }

    #[test]
    fn moving_average_skips_non_finite_values() {
        let points = [
            (0.0, 1.0),
            (1.0, f64::NAN),
            (2.0, 3.0),
            (3.0, f64::INFINITY),
            (4.0, 5.0),
        ];
        let avg = moving_average(&points, 3);
        assert_eq!(avg[0].1, 1.0);
        assert_eq!(avg[1].1, 2.0);
        assert_eq!(avg[2].1, 3.0);
        assert_eq!(avg[4].1, 5.0);
        assert!(moving_average(&[(0.0, f64::NAN)], 3)[0].1.is_nan());
    }

    /// The teacher's fine-tuning logs as any stage does (`Trainer` writes `stage` =
    /// the stage's name: "finetune" by default, "teacher-finetune" in the bundled
    /// recipes), into its own run folder `<run>/teacher-finetune/`; its lines get
    /// their own loss panel, and stay apart from the distillation stages' if both
    /// are in one file.
    #[test]
    fn teacher_finetune_lines_get_their_own_panel() {
        let line = |stage: &str, step: u32, loss: f64| {
            format!(
                "{{\"stage\":\"{stage}\",\"step\":{step},\"epoch\":0,\"loss\":{loss},\
                 \"losses\":{{\"hard\":{loss}}},\"lr\":2e-5,\"grad_norm\":1.5}}\n"
            )
        };
        let teacher: String = (1..=3)
            .map(|s| line("teacher-finetune", s, 0.7 / s as f64))
            .collect();
        let eval = "{\"stage\":\"teacher-finetune\",\"step\":3,\"eval\":{\"accuracy\":0.9},\"main\":0.9}\n";
        let charts = charts_from_metrics(&format!("{teacher}{eval}")).unwrap();
        let titles: Vec<&str> = charts.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["teacher-finetune loss", "dev metrics"]);
        assert_eq!(
            charts[0].series.len(),
            1,
            "the `hard` part repeats the total"
        );
        assert_eq!(charts[0].series[0].points.len(), 3);

        let student: String = (1..=2).map(|s| line("prediction", s, 0.3)).collect();
        let charts = charts_from_metrics(&format!("{teacher}{student}")).unwrap();
        let titles: Vec<&str> = charts.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["teacher-finetune loss", "prediction loss"]);
        assert_eq!(charts[1].series[0].points, vec![(1.0, 0.3), (2.0, 0.3)]);
    }

    /// The main run's plot shows the teacher's fine-tuning (kept in its own folder)
    /// in panels of its own, first.
    #[test]
    fn a_run_plot_has_the_teacher_finetune_panels_first() {
        let dir = tempfile::tempdir().unwrap();
        let (main, teacher) = (dir.path().join("m.jsonl"), dir.path().join("t.jsonl"));
        let train = |stage: &str| format!("{{\"stage\":\"{stage}\",\"step\":1,\"loss\":0.5}}\n");
        let eval = |stage: &str| {
            format!("{{\"stage\":\"{stage}\",\"step\":1,\"eval\":{{\"accuracy\":0.8}}}}\n")
        };
        let finetune = format!("{}{}", train("teacher-finetune"), eval("teacher-finetune"));
        std::fs::write(&teacher, finetune).unwrap();
        std::fs::write(
            &main,
            format!("{}{}", train("prediction"), eval("prediction")),
        )
        .unwrap();
        let titles: Vec<String> = run_charts(&main, Some(&teacher))
            .unwrap()
            .into_iter()
            .map(|c| c.title)
            .collect();
        let want = [
            "teacher-finetune loss",
            "teacher dev metrics",
            "prediction loss",
            "dev metrics",
        ];
        assert_eq!(titles, want);
        let png = dir.path().join("loss.png");
        plot_run_metrics(&main, Some(&teacher), &png).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    }

    #[test]
    fn writes_a_png_for_a_metrics_file_and_refuses_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        std::fs::write(&metrics, SAMPLE).unwrap();
        let png = dir.path().join("loss.png");
        plot_metrics_file(&metrics, &png).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
        std::fs::write(&metrics, "{\"lr\":1e-4}\n").unwrap();
        let err = plot_metrics_file(&metrics, &png).unwrap_err().to_string();
        assert!(err.contains("no `loss`"), "{err}");
    }
}
