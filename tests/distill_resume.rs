//! A stage killed between checkpoints and restarted reaches exactly the weights of an
//! uninterrupted run: model, optimizer moments, step, data order and dropout all resume.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_distill::distill::{
    LayerMap, Normalise, Progress, Stage, StageKind, StudentInit, TrainSettings, Trainer,
};
use candle_distill::run::{Opened, RunDir};
use candle_distill::testing::{write_tiny_tokenizer, TinyDistillation};
use candle_distill::train::Precision;

/// The random student both tests train.
fn tiny_student_init() -> StudentInit {
    StudentInit::Random {
        layers: 2,
        hidden: 16,
        heads: 4,
        intermediate: 32,
    }
}

/// Runs intermediate then prediction stages; `kill_at` interrupts the given stage once.
fn run(
    dir: &std::path::Path,
    kill_at: Option<(usize, usize)>,
    precision: Precision,
) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let tiny = TinyDistillation::new(dir.parent().unwrap(), 90, &dev).unwrap();
    let init = tiny_student_init();
    let (teacher, examples, logits) = (&tiny.teacher, &tiny.examples, &tiny.logits);
    let settings = TrainSettings {
        epochs: 3,
        learning_rate: 1e-3,
        batch_size: 8,
        checkpoint_every: 4,
        log_every: 1,
        precision,
        // Far above what f16 gradients can hold: the first steps overflow and are skipped.
        initial_loss_scale: 2f64.powi(40),
        ..Default::default()
    };
    let stages = [
        (StageKind::Intermediate, None),
        (StageKind::Prediction, Some(logits)),
    ];
    let mut attempt = 0;
    loop {
        // Each attempt is a fresh process: rebuild everything from the recipe.
        let student = tiny.student(&init, &dev).unwrap();
        let run = match RunDir::open(dir, "recipe", false).unwrap() {
            Opened::Fresh(r) | Opened::Resume(r) => r,
        };
        let saved: Option<Progress> = run.read_checkpoint_json("last", "progress.json").unwrap();
        let kill = kill_at.filter(|_| attempt == 0);
        let mut failed = false;
        for (index, (kind, teacher_logits)) in stages.iter().enumerate() {
            let resume = saved.clone().filter(|p| p.stage == index);
            if saved
                .as_ref()
                .is_some_and(|p| p.stage > index || (p.stage == index && p.finished))
            {
                continue; // done before the crash; its weights come back with the checkpoint
            }
            if saved
                .as_ref()
                .is_some_and(|p| p.stage + 1 == index && p.finished)
                && attempt > 0
            {
                // The previous stage finished: start from its final weights.
                let trainer = Trainer {
                    teacher: Some(teacher),
                    student: &student,
                    evaluator: None,
                    run: &run,
                    device: dev.clone(),
                    interrupt_after: None,
                    parallel: None,
                };
                trainer.restore_student().unwrap();
            }
            let trainer = Trainer {
                teacher: Some(teacher),
                student: &student,
                evaluator: None,
                run: &run,
                device: dev.clone(),
                interrupt_after: kill.filter(|(s, _)| *s == index).map(|(_, step)| step),
                parallel: None,
            };
            let stage = Stage {
                index,
                name: if index == 0 {
                    "intermediate"
                } else {
                    "prediction"
                },
                kind: *kind,
                losses: kind.default_losses(),
                layer_map: &LayerMap::default(),
                settings: &settings,
                data: examples.into(),
                teacher_logits: *teacher_logits,
                keep_best: false,
                seed: 17,
            };
            if trainer.run_stage(&stage, resume).is_err() {
                failed = true;
                break;
            }
        }
        if !failed {
            return student
                .varmap
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
                .collect();
        }
        attempt += 1;
        assert!(attempt < 3);
    }
}

fn assert_same(straight: &HashMap<String, Tensor>, resumed: &HashMap<String, Tensor>, label: &str) {
    for (name, t) in straight {
        let diff = (t - &resumed[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(
            diff, 0.0,
            "{name} differs after resuming from a kill in {label}"
        );
    }
}

#[test]
fn interrupted_runs_resume_to_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_tokenizer(&dir.path().join("tok")).unwrap();
    let straight = run(&dir.path().join("a"), None, Precision::F32);
    // Killed mid-epoch in the first stage (step 14: after the checkpoint at step 12).
    let resumed = run(&dir.path().join("b"), Some((0, 14)), Precision::F32);
    // Killed in the second stage.
    let resumed2 = run(&dir.path().join("c"), Some((1, 19)), Precision::F32);
    assert_same(&straight, &resumed, "stage 1");
    assert_same(&straight, &resumed2, "stage 2");
    let metrics_a = std::fs::read_to_string(dir.path().join("a/metrics.jsonl")).unwrap();
    let metrics_b = std::fs::read_to_string(dir.path().join("b/metrics.jsonl")).unwrap();
    let strip = |s: &str| s.lines().count();
    assert_eq!(
        strip(&metrics_a),
        strip(&metrics_b),
        "metrics log has duplicated or missing lines"
    );
}

/// f16 mixed precision resumes with its loss scale and skipped-step count: the
/// optimizer's step (bias correction) and the next scale come back as they were.
#[test]
fn f16_runs_resume_with_their_loss_scale() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_tokenizer(&dir.path().join("tok")).unwrap();
    let straight = run(&dir.path().join("a"), None, Precision::F16);
    // Killed after skipped (overflowed) steps and later clean ones.
    let resumed = run(&dir.path().join("b"), Some((0, 30)), Precision::F16);
    assert_same(&straight, &resumed, "stage 1 (f16)");
    let progress: Progress = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("a/checkpoints/last/progress.json")).unwrap(),
    )
    .unwrap();
    let scale = progress.loss_scale.expect("f16 runs keep a loss scale");
    println!("final loss scale {scale:?}");
    assert!(
        scale.skipped > 0 && scale.scale < 2f64.powi(40),
        "{scale:?}"
    );
}

/// The first step's loss parts of an intermediate stage trained with `settings`.
fn first_step_losses(dir: &std::path::Path, settings: &TrainSettings) -> serde_json::Value {
    let dev = Device::Cpu;
    let tiny = TinyDistillation::new(dir.parent().unwrap(), 32, &dev).unwrap();
    let init = tiny_student_init();
    let student = tiny.student(&init, &dev).unwrap();
    let Opened::Fresh(run) = RunDir::open(dir, "recipe", false).unwrap() else {
        panic!("fresh folder expected");
    };
    let trainer = Trainer {
        teacher: Some(&tiny.teacher),
        student: &student,
        evaluator: None,
        run: &run,
        device: dev,
        interrupt_after: None,
        parallel: None,
    };
    let layer_map = LayerMap::default();
    let stage = Stage {
        index: 0,
        name: "intermediate",
        kind: StageKind::Intermediate,
        losses: StageKind::Intermediate.default_losses(),
        layer_map: &layer_map,
        settings,
        data: (&tiny.examples).into(),
        teacher_logits: None,
        keep_best: false,
        seed: 7,
    };
    trainer.run_stage(&stage, None).unwrap();
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let first = metrics.lines().next().expect("a logged step");
    serde_json::from_str::<serde_json::Value>(first).unwrap()["losses"].clone()
}

/// `reference` normalisation pads every intermediate batch to `pad_to` (the recipe's
/// max_seq_len) and averages over all of it, as TinyBERT's code does; without `pad_to`
/// each batch is padded to its longest row only.
#[test]
fn reference_normalisation_pads_intermediate_batches() {
    let dir = tempfile::tempdir().unwrap();
    let settings = |pad_to: Option<usize>| TrainSettings {
        epochs: 1,
        max_steps: Some(1),
        batch_size: 8,
        log_every: 1,
        normalise: Normalise::Reference,
        pad_to,
        ..Default::default()
    };
    let longest = first_step_losses(&dir.path().join("longest"), &settings(None));
    let padded = first_step_losses(&dir.path().join("padded"), &settings(Some(96)));
    let part = |v: &serde_json::Value, name: &str| v[name].as_f64().unwrap();
    // Masked attention entries count as zeros: padding dilutes the attention loss...
    let (l, p) = (part(&longest, "attention"), part(&padded, "attention"));
    assert!(
        p < 0.8 * l,
        "attention: padded to 96 {p} vs longest row {l}"
    );
    // ...while padded positions' hidden states still differ, and count.
    for name in ["hidden", "embedding"] {
        assert_ne!(part(&longest, name), part(&padded, name), "{name}");
    }
}
