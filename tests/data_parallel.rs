//! Data-parallel training through the `AllReduce` trait, with the in-process back end:
//! two (and three) replicas, each on its share of every batch, end with the weights of
//! one replica trained on the whole batches, even when the other replicas were built
//! with other weights. Same trainer code as a multi-GPU run.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use candle_distill::distill::{Student, StudentInit, TrainSettings, Trainer};
use candle_distill::run::{Opened, RunDir};
use candle_distill::testing::{
    run_two_stages, tiny_config, write_random_classifier, TinyDistillation,
};
use candle_distill::train::parallel::{AllReduce, ThreadAllReduce};

struct Setup {
    tiny: TinyDistillation,
    student_dir: String,
}

fn setup(dir: &Path) -> Setup {
    // 90 rows at batch 8: the last batch has 2 rows, fewer than three workers.
    let tiny = TinyDistillation::new(dir, 90, &Device::Cpu).unwrap();
    // Without dropout, so that one replica and several see the same network.
    let mut student_config = tiny_config(16, 2, 4, 32);
    student_config.set_labels(&["a".into(), "b".into()]);
    student_config.hidden_dropout_prob = 0.0;
    student_config.attention_probs_dropout_prob = 0.0;
    let student_dir = dir.join("student");
    write_random_classifier(&student_dir, &student_config, 11).unwrap();
    Setup {
        tiny,
        student_dir: student_dir.display().to_string(),
    }
}

/// One replica: intermediate then prediction (soft + hard labels); its final weights.
fn train(s: &Setup, run_dir: &Path, parallel: Option<&dyn AllReduce>) -> HashMap<String, Vec<f32>> {
    let dev = Device::Cpu;
    let student = build(s);
    if parallel.is_some_and(|p| p.rank() > 0) {
        // Replicas built elsewhere may differ: the leader's weights win.
        for var in student.varmap.all_vars() {
            var.set(&(var.as_tensor() + 0.01).unwrap()).unwrap();
        }
    }
    let run = match RunDir::open(run_dir, "recipe", false).unwrap() {
        Opened::Fresh(r) | Opened::Resume(r) => r,
    };
    let settings = TrainSettings {
        epochs: 2,
        learning_rate: 1e-3,
        batch_size: 8,
        checkpoint_every: 5,
        log_every: 1,
        ..Default::default()
    };
    let trainer = Trainer {
        teacher: Some(&s.tiny.teacher),
        student: &student,
        evaluator: None,
        run: &run,
        device: dev.clone(),
        interrupt_after: None,
        parallel,
    };
    // Prediction with hard labels too: the gold targets are sharded with the rows.
    run_two_stages(
        &trainer,
        &settings,
        &s.tiny.examples,
        Some(&s.tiny.logits),
        7,
        |stage| {
            if stage.index == 1 {
                stage.losses.hard = 0.5;
            }
        },
    )
    .unwrap();
    weights(&student)
}

fn build(s: &Setup) -> Student {
    let init = StudentInit::Checkpoint {
        model: s.student_dir.clone(),
    };
    s.tiny.student(&init, &Device::Cpu).unwrap()
}

fn weights(student: &Student) -> HashMap<String, Vec<f32>> {
    student
        .varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

fn train_in_parallel(s: &Setup, dir: &Path, world: usize) -> Vec<HashMap<String, Vec<f32>>> {
    let group = ThreadAllReduce::group(world);
    std::thread::scope(|scope| {
        let handles: Vec<_> = group
            .iter()
            .map(|comm| {
                let run_dir = dir.join(format!("rank{}", comm.rank()));
                scope.spawn(move || train(s, &run_dir, Some(comm as &dyn AllReduce)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn max_abs_diff(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) -> (f32, String) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0f32, String::new());
    for (name, x) in a {
        let y = &b[name];
        for (p, q) in x.iter().zip(y) {
            let d = (p - q).abs();
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
    }
    worst
}

#[test]
fn replicas_on_shares_of_each_batch_match_one_replica_on_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let single = train(&s, &dir.path().join("single"), None);
    let start = weights(&build(&s));
    let (moved, _) = max_abs_diff(&single, &start);
    assert!(moved > 1e-3, "training did not move the weights ({moved})");

    for world in [2, 3] {
        let replicas = train_in_parallel(&s, &dir.path().join(format!("world{world}")), world);
        // Every replica took the same steps.
        for r in &replicas[1..] {
            assert_eq!(max_abs_diff(&replicas[0], r).0, 0.0, "replicas diverged");
        }
        // And they are the single replica's, up to float summation order.
        let (diff, name) = max_abs_diff(&single, &replicas[0]);
        assert!(
            diff < 1e-4,
            "{world} workers: `{name}` differs by {diff} from one worker"
        );
        // Only the leader writes the run folder.
        let leader = dir.path().join(format!("world{world}/rank0"));
        assert!(leader.join("metrics.jsonl").is_file());
        assert!(leader.join("checkpoints/last/progress.json").is_file());
        let other = dir.path().join(format!("world{world}/rank1"));
        assert!(!other.join("checkpoints").exists());
        assert_eq!(
            std::fs::read_to_string(other.join("metrics.jsonl")).unwrap_or_default(),
            ""
        );
    }
}
