//! One training step of the small preset on every compiled-in backend vs flex: the same
//! deterministic weights, padded batch, label texts and targets give the same loss terms,
//! gradient norm and, after the AdamW update, the same loss of a second step (which is where a
//! wrong update would show). With only flex compiled in the body runs once and compares nothing;
//! `cargo xtask test --parity` builds wgpu and tch too.

use burn::prelude::*;
use rlip_model::rlip::{RlipConfig, RlipParSeDa};
use rlip_tests::parity::SMALL_MODEL_TOL;
use rlip_tests::parity_test;
use rlip_train::loss::{Criterion, CriterionConfig};
use rlip_train::matcher::PairTargets;
use rlip_train::trainer::{LabelTexts, OptimConfig, Trainer};

/// `(values [3, h, w], h, w)` per image.
type Images = Vec<(Vec<f32>, usize, usize)>;

fn batch() -> (Images, Vec<PairTargets>) {
    let sizes = [(72, 96), (64, 80)];
    let images = sizes
        .iter()
        .enumerate()
        .map(|(b, &(h, w))| {
            let v = (0..3 * h * w)
                .map(|i| ((i * 7 + b * 31) % 97) as f32 / 48.0 - 1.0)
                .collect();
            (v, h, w)
        })
        .collect();
    let t = |sub: [f32; 4], obj: [f32; 4], o: usize, v: usize| PairTargets {
        sub_boxes: vec![sub],
        obj_boxes: vec![obj],
        sub_labels: vec![0],
        obj_labels: vec![o],
        verb_labels: vec![(0..3).map(|k| f32::from(k == v)).collect()],
    };
    let targets = vec![
        t([0.3, 0.5, 0.3, 0.6], [0.7, 0.6, 0.2, 0.2], 1, 0),
        t([0.6, 0.4, 0.3, 0.7], [0.25, 0.3, 0.3, 0.25], 2, 2),
    ];
    (images, targets)
}

/// 3 objects + "no objects" + 3 relations, 5 tokens each.
fn texts(device: &Device) -> LabelTexts {
    let ids: Vec<i64> = (0..7)
        .flat_map(|i| [0, 10 + 3 * i, 11 + 3 * i, 12 + i, 2])
        .collect();
    LabelTexts {
        ids: Tensor::from_data(TensorData::new(ids, [7, 5]), device),
        mask: Tensor::ones([7, 5], device),
        n_obj: 4,
    }
}

/// Two training steps on [`batch`]: records the first step's loss, gradient norm and (with
/// `terms`) its loss terms, then the loss after the update.
fn two_steps(
    trainer: &mut Trainer,
    texts: &LabelTexts,
    device: &Device,
    out: &mut rlip_tests::Outputs,
    terms: bool,
) {
    let (images, targets) = batch();
    let first = trainer.step(&images, &targets, texts, 1.0).unwrap();
    let second = trainer.step(&images, &targets, texts, 1.0).unwrap();
    let scalar = |v: f64| Tensor::<1>::from_floats([v as f32], device);
    out.push("loss", scalar(first.loss));
    out.push("grad_norm", scalar(first.grad_norm));
    if terms {
        for (name, v) in &first.terms {
            out.push(name, scalar(*v));
        }
    }
    out.push("loss_after_update", scalar(second.loss));
}

parity_test!(train_step_parity, SMALL_MODEL_TOL, |device, out| {
    let ad = device.clone().autodiff();
    let (model, _) = RlipParSeDa::init(&RlipConfig::small(), &ad);
    let texts = texts(&ad);
    let crit = Criterion::new(CriterionConfig::default()).unwrap();
    let optim = OptimConfig {
        lr: 1e-3,
        lr_backbone: 1e-4,
        lr_text: 1e-4,
        ..OptimConfig::default()
    };
    let mut trainer = Trainer::new(model, crit, optim, true, &ad);
    two_steps(&mut trainer, &texts, device, out, true);
});

// Data parallelism across backends: each backend's device holds the master weights and the first
// shard, the CPU (flex) the second. On wgpu and tch the two shards run in parallel threads on
// different devices and the second shard's gradients travel to the first device; on flex both
// shards run one after another. The small preset has no dropout, so every backend must give
// flex's numbers.
parity_test!(data_parallel_step_parity, SMALL_MODEL_TOL, |device, out| {
    let ad = device.clone().autodiff();
    let cpu = rlip_backends::device(rlip_backends::BackendKind::Flex, None)
        .unwrap()
        .autodiff();
    let (model, _) = RlipParSeDa::init(&RlipConfig::small(), &ad);
    let texts = texts(&ad);
    let crit = Criterion::new(CriterionConfig::default()).unwrap();
    let mut trainer = Trainer::new(model, crit, OptimConfig::default(), true, &ad)
        .with_data_parallel(vec![cpu])
        .unwrap();
    two_steps(&mut trainer, &texts, device, out, false);
});
