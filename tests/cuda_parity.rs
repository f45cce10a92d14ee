//! CUDA against the CPU, for a machine with a GPU (`.ci/gpu-check.sh` runs it):
//! the teacher's forward of every encoder family with every hidden state and attention
//! score (f32 within 1e-3 relative error, bf16 within 2e-2), and two distillation training steps (weights
//! within 1e-3). Built only with `--features cuda`; without a CUDA device it says so
//! and passes.
#![cfg(feature = "cuda")]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_distill::distill::{build_student, StudentInit, TeacherParts, TrainSettings, Trainer};
use candle_distill::model::{load_classifier, BertInput, BuildOptions, Family, Outputs};
use candle_distill::rng::Rng;
use candle_distill::run::{Opened, RunDir};
use candle_distill::testing::{
    run_two_stages, tiny_config, tiny_family_config, tiny_train_examples, write_random_classifier,
};
use candle_distill::train::Schedule;

fn cuda() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Norm-relative error of `b` against `a`.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let a = a
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let b = b
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let diff = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap();
    let norm = a.sqr().unwrap().sum_all().unwrap();
    let (d, n) = (
        diff.to_scalar::<f32>().unwrap(),
        norm.to_scalar::<f32>().unwrap(),
    );
    (d / n.max(1e-12)).sqrt()
}

fn input(device: &Device) -> BertInput {
    let mut rng = Rng::new(4);
    let (batch, seq) = (4, 24);
    let ids: Vec<u32> = (0..batch * seq).map(|_| 5 + rng.below(60) as u32).collect();
    // Padding in the batch: row r keeps 24 - 4r tokens.
    let mask: Vec<u32> = (0..batch * seq)
        .map(|i| u32::from(i % seq < seq - 4 * (i / seq)))
        .collect();
    BertInput {
        input_ids: Tensor::from_vec(ids, (batch, seq), device).unwrap(),
        token_type_ids: Tensor::zeros((batch, seq), DType::U32, device).unwrap(),
        attention_mask: Tensor::from_vec(mask, (batch, seq), device).unwrap(),
    }
}

#[test]
fn teacher_forward_on_cuda_matches_the_cpu() {
    let Some(gpu) = cuda() else { return };
    // Every encoder family (RoBERTa's positions, ELECTRA's projection, MPNet's bias...).
    for family in Family::ALL {
        teacher_forward_matches(&gpu, family);
    }
}

fn teacher_forward_matches(gpu: &Device, family: Family) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_family_config(family, 128, 4, 4, 512);
    config.set_labels(&["a".into(), "b".into()]);
    write_random_classifier(dir.path(), &config, 3).unwrap();
    let spec = dir.path().display().to_string();
    let on = |device: &Device, dtype: DType| {
        let built = load_classifier(
            &spec,
            &BuildOptions {
                dtype,
                ..BuildOptions::inference(device)
            },
        )
        .unwrap();
        built
            .built
            .model
            .forward(&input(device), Outputs::ALL, None)
            .unwrap()
    };
    let cpu = on(&Device::Cpu, DType::F32);
    for (dtype, tolerance) in [(DType::F32, 1e-3), (DType::BF16, 2e-2)] {
        let out = on(gpu, dtype);
        let mut worst = rel_err(&cpu.logits, &out.logits);
        for (a, b) in cpu
            .encoder
            .hidden_states
            .iter()
            .zip(&out.encoder.hidden_states)
        {
            worst = worst.max(rel_err(a, b));
        }
        for (a, b) in cpu
            .encoder
            .attention_scores
            .iter()
            .zip(&out.encoder.attention_scores)
        {
            worst = worst.max(rel_err(a, b));
        }
        eprintln!(
            "{} teacher forward {dtype:?}: worst relative error {worst:.2e} (tolerance \
             {tolerance:.0e})",
            family.model_type()
        );
        assert!(worst <= tolerance, "{family:?} {dtype:?}: {worst}");
    }
}

/// Two intermediate-stage steps then two prediction-stage steps on `device`; the
/// student's weights after them.
fn train_on(device: &Device, root: &Path) -> HashMap<String, Tensor> {
    let tok = candle_distill::tokenizer::TextTokenizer::from_files(
        &candle_distill::tokenizer::TokenizerFiles {
            tokenizer_json: Some(root.join("teacher/tokenizer.json")),
            ..Default::default()
        },
    )
    .unwrap();
    let teacher = load_classifier(
        &root.join("teacher").display().to_string(),
        &BuildOptions::inference(device),
    )
    .unwrap();
    let teacher_config = teacher.built.model.config().clone();
    let tensors = HashMap::new();
    let parts = TeacherParts {
        config: &teacher_config,
        tensors: &tensors,
        tokenizer: &tok,
    };
    let init = StudentInit::Checkpoint {
        model: root.join("student").display().to_string(),
    };
    let student =
        build_student(&init.into(), &parts, &["a".into(), "b".into()], 3, device).unwrap();
    let examples = tiny_train_examples(&tok, 32, 9).unwrap();
    let run_dir = root.join(format!("{device:?}").replace([':', ' ', '(', ')'], "_"));
    let run = match RunDir::open(&run_dir, "recipe", false).unwrap() {
        Opened::Fresh(r) | Opened::Resume(r) => r,
    };
    let settings = TrainSettings {
        epochs: 1,
        max_steps: Some(2),
        learning_rate: 1e-3,
        batch_size: 8,
        warmup_ratio: 0.0,
        schedule: Schedule::Constant,
        checkpoint_every: 100,
        log_every: 1,
        ..Default::default()
    };
    let trainer = Trainer {
        teacher: Some(&teacher.built.model),
        student: &student,
        evaluator: None,
        run: &run,
        device: device.clone(),
        interrupt_after: None,
        parallel: None,
    };
    run_two_stages(&trainer, &settings, &examples, None, 7, |_| {}).unwrap();
    let data = student.varmap.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect()
}

#[test]
fn distillation_steps_on_cuda_match_the_cpu() {
    let Some(gpu) = cuda() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut teacher = tiny_config(64, 4, 4, 128);
    teacher.set_labels(&["a".into(), "b".into()]);
    write_random_classifier(&dir.path().join("teacher"), &teacher, 5).unwrap();
    // No dropout: both devices must see the same network.
    let mut student = tiny_config(32, 2, 4, 64);
    student.set_labels(&["a".into(), "b".into()]);
    student.hidden_dropout_prob = 0.0;
    student.attention_probs_dropout_prob = 0.0;
    write_random_classifier(&dir.path().join("student"), &student, 11).unwrap();
    let cpu = train_on(&Device::Cpu, dir.path());
    let cuda = train_on(&gpu, dir.path());
    let worst = cpu
        .iter()
        .map(|(name, t)| (rel_err(t, &cuda[name]), name))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    eprintln!(
        "training steps f32: worst relative error {:.2e} in `{}` (tolerance 1e-3)",
        worst.0, worst.1
    );
    assert!(worst.0 <= 1e-3, "{}: {}", worst.1, worst.0);
}
