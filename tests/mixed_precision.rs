//! Mixed-precision training: steps computed in bf16 or f16 update f32 master weights,
//! every one of them, and follow the f32 run within the compute dtype's precision; f16
//! runs log their loss scale.

use std::collections::HashMap;

use candle_core::{DType, Device};
use candle_distill::distill::{StudentInit, TrainSettings, Trainer};
use candle_distill::run::{Opened, RunDir};
use candle_distill::testing::{run_two_stages, TinyDistillation};
use candle_distill::train::Precision;

type Weights = HashMap<String, Vec<f32>>;

struct Trained {
    initial: Weights,
    last: Weights,
    dtypes: Vec<DType>,
    metrics: Vec<serde_json::Value>,
}

fn weights(varmap: &candle_nn::VarMap) -> Weights {
    varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let t = v.as_tensor().to_dtype(DType::F32).unwrap();
            (k.clone(), t.flatten_all().unwrap().to_vec1().unwrap())
        })
        .collect()
}

/// Intermediate then prediction stages on the tiny teacher, in `precision`.
fn train(dir: &std::path::Path, precision: Precision) -> Trained {
    let dev = Device::Cpu;
    let tiny = TinyDistillation::new(dir, 64, &dev).unwrap();
    // Narrower than the teacher, so the projections train too.
    let init = StudentInit::Random {
        layers: 2,
        hidden: 16,
        heads: 4,
        intermediate: 32,
    };
    let student = tiny.student(&init, &dev).unwrap();
    let initial = weights(&student.varmap);
    let settings = TrainSettings {
        epochs: 2,
        learning_rate: 1e-3,
        batch_size: 8,
        log_every: 1,
        precision,
        ..Default::default()
    };
    let run = match RunDir::open(&dir.join("run"), "recipe", false).unwrap() {
        Opened::Fresh(r) | Opened::Resume(r) => r,
    };
    let trainer = Trainer {
        teacher: Some(&tiny.teacher),
        student: &student,
        evaluator: None,
        run: &run,
        device: dev.clone(),
        interrupt_after: None,
        parallel: None,
    };
    run_two_stages(
        &trainer,
        &settings,
        &tiny.examples,
        Some(&tiny.logits),
        17,
        |_| {},
    )
    .unwrap();
    let metrics = std::fs::read_to_string(run.path("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Trained {
        initial,
        last: weights(&student.varmap),
        dtypes: student
            .varmap
            .all_vars()
            .iter()
            .map(|v| v.dtype())
            .collect(),
        metrics,
    }
}

fn distance(a: &Weights, b: &Weights) -> f64 {
    a.iter()
        .map(|(k, x)| {
            x.iter()
                .zip(&b[k])
                .map(|(p, q)| ((p - q) as f64).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        .sqrt()
}

#[test]
fn bf16_and_f16_steps_train_f32_master_weights_like_f32() {
    let dir = tempfile::tempdir().unwrap();
    let full = train(&dir.path().join("f32"), Precision::F32);
    let moved = distance(&full.last, &full.initial);
    assert!(moved > 0.1, "the f32 run barely trained: {moved}");
    for (precision, tolerance) in [(Precision::Bf16, 0.05), (Precision::F16, 0.02)] {
        let mixed = train(&dir.path().join(format!("{precision:?}")), precision);
        assert!(
            mixed.dtypes.iter().all(|d| *d == DType::F32),
            "{precision:?}: master weights must stay f32, got {:?}",
            mixed.dtypes
        );
        // Every variable got a gradient through its cast and moved.
        for (name, before) in &mixed.initial {
            assert_ne!(
                before, &mixed.last[name],
                "{precision:?}: `{name}` never moved"
            );
        }
        let off = distance(&mixed.last, &full.last) / moved;
        println!("{precision:?}: distance to the f32 run / distance trained = {off:.4}");
        // Not zero: the steps really ran in the lower precision.
        assert!(off > 0.0, "{precision:?}: identical to the f32 run");
        assert!(
            off < tolerance,
            "{precision:?}: ended {off:.4} (relative) from the f32 run, tolerance {tolerance}"
        );
        let steps: Vec<&serde_json::Value> = mixed
            .metrics
            .iter()
            .filter(|m| m.get("loss").is_some())
            .collect();
        assert_eq!(steps.len(), full.metrics.len());
        let scaled = steps.iter().all(|m| m.get("loss_scale").is_some());
        assert_eq!(
            scaled,
            precision == Precision::F16,
            "{precision:?} loss_scale"
        );
    }
}
