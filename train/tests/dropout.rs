//! Training randomness in its own test binary: the device's random generator is global to the
//! process, and trainers of tests running in parallel would reseed it between steps.

use burn::prelude::*;
use rlip_model::rlip::{RlipConfig, RlipParSeDa};
use rlip_train::loss::{Criterion, CriterionConfig};
use rlip_train::samples::to_input;
use rlip_train::trainer::{OptimConfig, Trainer};

#[path = "train/common/mod.rs"]
mod common;
use common::{samples, text};

/// Dropout (label encoder, resizer, fusion attention) acts in training only: losses depend on
/// the trainer's seed and repeat for the same seed; without dropout the seed does not matter;
/// inference ignores it.
#[test]
fn dropout_is_seeded_per_step_and_off_at_inference() {
    let dev = rlip_backends::default_device().unwrap().autodiff();
    let mut with = RlipConfig::small();
    with.text.hidden_dropout_prob = 0.1;
    with.text.attention_probs_dropout_prob = 0.1;
    let texts = text(&dev);
    let (imgs, tgts): (Vec<_>, Vec<_>) = samples().iter().map(|s| to_input(s, 2, 3)).unzip();
    let run = |cfg: &RlipConfig, seed: u64| -> Vec<f64> {
        let (model, _) = RlipParSeDa::init(cfg, &dev);
        let crit = Criterion::new(CriterionConfig::default()).unwrap();
        let mut t = Trainer::new(model, crit, OptimConfig::default(), true, &dev);
        t.set_seed(seed);
        (0..2)
            .map(|_| t.step(&imgs, &tgts, &texts, 1.0).unwrap().loss)
            .collect()
    };
    let a = run(&with, 1);
    assert_eq!(a, run(&with, 1), "same seed, same masks");
    assert_ne!(a, run(&with, 2), "another seed, other masks");
    let without = RlipConfig::small();
    assert_eq!(run(&without, 1), run(&without, 2));
    // inference: the same weights give the same outputs with and without dropout configured
    let infer = |cfg: &RlipConfig| {
        let (model, _) = RlipParSeDa::init(cfg, &dev);
        let model = model.valid();
        let d = dev.clone().inner();
        let x = Tensor::<4>::ones([1, 3, 64, 64], &d).mul_scalar(0.3);
        let mask = rlip_model::position::PaddingMask::from_sizes(&[(64, 64)], 64, 64);
        let labels = model.encode_labels(
            texts.ids.clone().inner(),
            texts.mask.clone().inner(),
            texts.n_obj,
        );
        let out = model.forward(x, &mask, &labels);
        out.layers
            .last()
            .unwrap()
            .obj_logits
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(infer(&with), infer(&without));
}
