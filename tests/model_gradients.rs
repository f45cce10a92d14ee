//! The silent no-gradient trap (../shared/notes/candle.md): after one optimizer step,
//! every trainable tensor must have received a non-zero gradient and changed.

use candle_core::{DType, Device, Tensor};
use candle_distill::model::bert::cross_entropy;
use candle_distill::model::{
    build_classifier, build_masked_lm, BertForSequenceClassification, BertInput, BuildOptions,
    Built, Outputs,
};
use candle_distill::rng::Rng;
use candle_distill::testing::{max_abs_diff, tiny_config};
use candle_nn::{Optimizer, VarMap};

fn batch(dev: &Device) -> BertInput {
    let ids = Tensor::new(&[[2u32, 10, 11, 12, 13, 3], [2, 20, 21, 3, 0, 0]], dev).unwrap();
    BertInput {
        input_ids: ids,
        token_type_ids: Tensor::new(&[[0u32, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dev).unwrap(),
        attention_mask: Tensor::new(&[[1u32, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dev).unwrap(),
    }
}

/// A random 2-layer, 32-wide classifier drawn from `seed`.
fn tiny_classifier(dev: &Device, seed: u64) -> Built<BertForSequenceClassification> {
    let config = tiny_config(32, 2, 4, 64);
    build_classifier(
        "tiny",
        &config,
        Default::default(),
        &BuildOptions::random(dev, seed),
    )
    .unwrap()
}

fn snapshot(varmap: &VarMap) -> Vec<(String, Tensor)> {
    let mut all: Vec<_> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Steps once with SGD and checks every variable got a gradient and moved.
pub fn assert_all_trained(varmap: &VarMap, loss: &Tensor, expected_tensors: usize) {
    let before = snapshot(varmap);
    assert_eq!(
        before.len(),
        expected_tensors,
        "unexpected number of tensors"
    );
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut without = Vec::new();
    for (name, var) in data.iter() {
        match grads.get(var.as_tensor()) {
            Some(g) => {
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                if norm <= 0.0 {
                    without.push(format!("{name} (zero)"));
                }
            }
            None => without.push(format!("{name} (none)")),
        }
    }
    drop(data);
    assert!(without.is_empty(), "tensors without gradient: {without:?}");
    let mut sgd = candle_nn::SGD::new(varmap.all_vars(), 0.1).unwrap();
    sgd.step(&grads).unwrap();
    let after = snapshot(varmap);
    let unchanged: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|((_, a), (_, b))| {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f32>().unwrap() == 0.0
        })
        .map(|((n, _), _)| n.clone())
        .collect();
    assert!(
        unchanged.is_empty(),
        "tensors that did not change: {unchanged:?}"
    );
}

#[test]
fn classification_loss_reaches_every_tensor() {
    let dev = Device::Cpu;
    let built = tiny_classifier(&dev, 1);
    let input = batch(&dev);
    let mut rng = Rng::new(5);
    let out = built
        .model
        .forward(&input, Outputs::default(), Some(&mut rng))
        .unwrap();
    let loss = cross_entropy(&out.logits, &Tensor::new(&[1u32, 0], &dev).unwrap()).unwrap();
    // 5 embedding tensors + 16 per layer + pooler 2 + classifier 2.
    assert_all_trained(built.varmap.as_ref().unwrap(), &loss, 5 + 16 * 2 + 4);
}

#[test]
fn the_first_token_path_gives_the_full_passs_logits_and_gradients() {
    let dev = Device::Cpu;
    let built = tiny_classifier(&dev, 1);
    assert_eq!(
        built.varmap.as_ref().unwrap().data().lock().unwrap().len(),
        5 + 16 * 2 + 4
    );
    let labels = Tensor::new(&[1u32, 0], &dev).unwrap();
    assert_first_token_path_matches(&built, &batch(&dev), &labels);
}

/// Logits alone run the last layer for the first token; asking for the hidden states
/// runs it for every token. Without dropout both must give the same loss and the same
/// gradient on every tensor, the last layer's included. (tests/families.rs runs this
/// for every family.)
pub fn assert_first_token_path_matches(
    built: &Built<BertForSequenceClassification>,
    input: &BertInput,
    labels: &Tensor,
) {
    let full = Outputs {
        hidden_states: true,
        attention_scores: false,
    };
    let loss_of = |want: Outputs| {
        let out = built.model.forward(input, want, None).unwrap();
        cross_entropy(&out.logits, labels).unwrap()
    };
    let (first, every) = (loss_of(Outputs::default()), loss_of(full));
    let (a, b) = (
        first.to_scalar::<f32>().unwrap(),
        every.to_scalar::<f32>().unwrap(),
    );
    assert!((a - b).abs() < 1e-6, "losses {a} and {b}");
    let (g_first, g_every) = (first.backward().unwrap(), every.backward().unwrap());
    let vars = built.varmap.as_ref().unwrap().data().lock().unwrap();
    for (name, var) in vars.iter() {
        let (x, y) = (
            g_first.get(var.as_tensor()).unwrap(),
            g_every.get(var.as_tensor()).unwrap(),
        );
        let scale = max_abs_diff(y, &y.zeros_like().unwrap());
        let diff = max_abs_diff(x, y);
        assert!(
            diff <= 1e-5 * scale.max(1e-3),
            "{name}: gradients differ by {diff} (largest {scale})"
        );
    }
}

#[test]
fn masked_lm_loss_reaches_every_tensor() {
    let dev = Device::Cpu;
    let config = tiny_config(32, 2, 4, 64);
    let built = build_masked_lm(
        "tiny",
        &config,
        Default::default(),
        &BuildOptions::random(&dev, 2),
    )
    .unwrap();
    let input = batch(&dev);
    let logits = built.model.forward(&input, None).unwrap();
    let (b, s, v) = logits.dims3().unwrap();
    let targets = Tensor::arange(0u32, (b * s) as u32, &dev).unwrap();
    let loss = cross_entropy(&logits.reshape((b * s, v)).unwrap(), &targets).unwrap();
    // No pooler; the MLM head adds transform (4) and the decoder bias (tied decoder weight).
    assert_all_trained(built.varmap.as_ref().unwrap(), &loss, 5 + 16 * 2 + 5);
}

#[test]
fn intermediate_outputs_reach_every_encoder_tensor() {
    // Distillation trains on hidden states and attention scores, not logits.
    let dev = Device::Cpu;
    let built = tiny_classifier(&dev, 3);
    let out = built
        .model
        .forward(&batch(&dev), Outputs::ALL, None)
        .unwrap();
    let mut loss = out.logits.sqr().unwrap().sum_all().unwrap();
    for h in &out.encoder.hidden_states {
        loss = (loss + h.sqr().unwrap().mean_all().unwrap()).unwrap();
    }
    for a in &out.encoder.attention_scores {
        let finite = a.clamp(-100f32, 100f32).unwrap();
        loss = (loss + finite.sqr().unwrap().mean_all().unwrap()).unwrap();
    }
    assert_eq!(out.encoder.hidden_states.len(), 3);
    assert_eq!(out.encoder.attention_scores[0].dims(), &[2, 4, 6, 6]);
    assert_all_trained(built.varmap.as_ref().unwrap(), &loss, 5 + 16 * 2 + 4);
    let _ = DType::F32;
}
