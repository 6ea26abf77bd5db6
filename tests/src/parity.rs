//! Cross-backend parity: run one computation on every compiled-in backend and compare each
//! result with the `flex` (CPU reference) result.
//!
//! ```ignore
//! parity_test!(conv_block, Tol::new(1e-5, 1e-4), |device, out| {
//!     let x = Tensor::<4>::ones([1, 3, 8, 8], device);
//!     out.push("y", block(device).forward(x));
//! });
//! ```

use burn::prelude::*;
use rlip_backends::BackendKind;

/// A named tolerance: an element passes if `|x − ref| ≤ abs + rel·|ref|`.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    /// Absolute part.
    pub abs: f64,
    /// Relative part.
    pub rel: f64,
}

impl Tol {
    /// A tolerance of `abs + rel·|ref|`.
    pub const fn new(abs: f64, rel: f64) -> Self {
        Self { abs, rel }
    }
}

/// Named host copies of the tensors a parity body produced.
#[derive(Debug, Default)]
pub struct Outputs(pub Vec<(String, Vec<usize>, Vec<f32>)>);

impl Outputs {
    /// Records tensor `t` under `name`.
    pub fn push<const D: usize>(&mut self, name: &str, t: Tensor<D>) {
        let shape = t.dims().to_vec();
        let v = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("float data");
        self.0.push((name.to_string(), shape, v));
    }
}

/// The devices to compare: every compiled-in backend that can run here. `RLIP_PARITY_BACKENDS`
/// (comma-separated) restricts the list; `flex` is always first.
pub fn devices() -> Vec<(BackendKind, Device)> {
    let only = std::env::var("RLIP_PARITY_BACKENDS").ok();
    BackendKind::compiled_in()
        .into_iter()
        .filter(|b| {
            *b == BackendKind::Flex
                || only
                    .as_deref()
                    .is_none_or(|o| o.split(',').any(|x| x.trim() == b.feature()))
        })
        .filter(|b| *b != BackendKind::Cuda || std::env::var("RLIP_PARITY_CUDA").is_ok())
        .map(|b| (b, rlip_backends::device(b, None).expect("compiled backend")))
        .collect()
}

/// Runs `body` on each device of [`devices`], compares with flex, prints a table, and panics
/// if any output of any backend is outside `tol` (or has another shape).
pub fn run_parity(name: &str, tol: Tol, body: impl Fn(&Device, &mut Outputs)) {
    let devs = devices();
    assert_eq!(
        devs.first().map(|d| d.0),
        Some(BackendKind::Flex),
        "flex must be compiled in"
    );
    let mut reference = Outputs::default();
    body(&devs[0].1, &mut reference);
    let mut failures = Vec::new();
    println!(
        "parity {name}: tolerance abs {:.1e} + rel {:.1e}",
        tol.abs, tol.rel
    );
    for (kind, dev) in &devs[1..] {
        let mut got = Outputs::default();
        body(dev, &mut got);
        assert_eq!(
            got.0.len(),
            reference.0.len(),
            "{name}/{kind}: number of outputs"
        );
        for ((n, s, v), (_, rs, rv)) in got.0.iter().zip(&reference.0) {
            if s != rs {
                failures.push(format!("{kind}/{n}: shape {s:?} vs flex {rs:?}"));
                continue;
            }
            let (mut max_abs, mut max_rel, mut ok) = (0f64, 0f64, true);
            for (a, b) in v.iter().zip(rv) {
                let (a, b) = (*a as f64, *b as f64);
                let d = (a - b).abs();
                // NaN differences fail too
                let within = d <= tol.abs + tol.rel * b.abs();
                ok &= within;
                max_abs = max_abs.max(if d.is_nan() { f64::INFINITY } else { d });
                max_rel = max_rel.max(d / b.abs().max(1e-12));
            }
            println!(
                "  {kind:<5} {n:<24} max_abs {max_abs:>10.3e}  max_rel {max_rel:>10.3e}  {}",
                if ok { "ok" } else { "FAIL" }
            );
            if !ok {
                failures.push(format!("{kind}/{n}: max_abs {max_abs:.3e}"));
            }
        }
    }
    if devs.len() == 1 {
        println!("  (only flex compiled in: nothing to compare)");
    }
    assert!(failures.is_empty(), "parity {name} failed: {failures:?}");
}

/// Declares a `#[test]` that runs a body on every backend and compares with flex.
#[macro_export]
macro_rules! parity_test {
    ($name:ident, $tol:expr, |$dev:ident, $out:ident| $body:block) => {
        #[test]
        fn $name() {
            $crate::run_parity(
                stringify!($name),
                $tol,
                |$dev: &burn::prelude::Device, $out: &mut $crate::Outputs| $body,
            );
        }
    };
}

/// Tolerance of the whole small model across backends (f32 sums in different orders through
/// about 40 layers; GPU matmuls may use TF32-like tensor-core math).
pub const SMALL_MODEL_TOL: Tol = Tol::new(5e-4, 5e-3);

/// The small preset end to end on `device`: deterministic weights (the official init rules,
/// fixed seed), a padded batch of two images, 7 label texts; records the encoder memory and the
/// last decoder layer's logits and boxes.
pub fn small_model_case(device: &Device, out: &mut Outputs) {
    use rlip_model::position::PaddingMask;
    use rlip_model::rlip::{RlipConfig, RlipParSeDa};
    let cfg = RlipConfig::small();
    let (model, _) = RlipParSeDa::init(&cfg, device);
    let (h, w) = (72, 96);
    let sizes = [(72, 96), (64, 80)];
    let mut data = vec![0f32; 2 * 3 * h * w];
    for (b, &(hb, wb)) in sizes.iter().enumerate() {
        for c in 0..3 {
            for y in 0..hb {
                for x in 0..wb {
                    let v = ((x * 7 + y * 13 + c * 29 + b * 31) % 97) as f32 / 48.0 - 1.0;
                    data[((b * 3 + c) * h + y) * w + x] = v;
                }
            }
        }
    }
    let images = Tensor::<4>::from_data(TensorData::new(data, [2, 3, h, w]), device);
    let mask = PaddingMask::from_sizes(&sizes, h, w);
    let (l, t) = (7, 5);
    let ids: Vec<i64> = (0..l * t)
        .map(|i| match i % t {
            0 => 0,
            4 => 2,
            _ => 4 + (i as i64 * 37) % 200,
        })
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [l, t]), device);
    let am = Tensor::<2, Int>::ones([l, t], device);
    let labels = model.encode_labels(ids, am, 4);
    out.push("text.pooled", labels.pooled.clone());
    let o = model.forward(images, &mask, &labels);
    out.push("encoder.memory", o.memory.clone());
    let last = o.layers.last().expect("decoder layers");
    out.push("sub_logits", last.sub_logits.clone());
    out.push("obj_logits", last.obj_logits.clone());
    out.push("verb_logits", last.verb_logits.clone());
    out.push("sub_boxes", last.sub_boxes.clone());
    out.push("obj_boxes", last.obj_boxes.clone());
}

/// `(values [3, h, w], h, w)` per image.
type TrainImages = Vec<(Vec<f32>, usize, usize)>;

fn train_batch() -> (TrainImages, Vec<rlip_train::matcher::PairTargets>) {
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
    let t = |sub: [f32; 4], obj: [f32; 4], o: usize, v: usize| rlip_train::matcher::PairTargets {
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
pub fn train_texts(device: &Device) -> rlip_train::trainer::LabelTexts {
    let ids: Vec<i64> = (0..7)
        .flat_map(|i| [0, 10 + 3 * i, 11 + 3 * i, 12 + i, 2])
        .collect();
    rlip_train::trainer::LabelTexts {
        ids: Tensor::from_data(TensorData::new(ids, [7, 5]), device),
        mask: Tensor::ones([7, 5], device),
        n_obj: 4,
    }
}

/// Two training steps on the small padded batch: records the first step's loss, gradient norm and (with
/// `terms`) its loss terms, then the loss after the update.
pub fn two_train_steps(
    trainer: &mut rlip_train::trainer::Trainer,
    texts: &rlip_train::trainer::LabelTexts,
    device: &Device,
    out: &mut Outputs,
    terms: bool,
) {
    let (images, targets) = train_batch();
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

/// The small preset's training step on `device`: deterministic weights, two steps of AdamW with
/// the official criterion on a padded batch of two images; records the first step's loss, terms
/// and gradient norm and the second step's loss.
pub fn small_train_step_case(device: &Device, out: &mut Outputs) {
    use rlip_model::rlip::{RlipConfig, RlipParSeDa};
    use rlip_train::loss::{Criterion, CriterionConfig};
    use rlip_train::trainer::{OptimConfig, Trainer};
    let ad = device.clone().autodiff();
    let (model, _) = RlipParSeDa::init(&RlipConfig::small(), &ad);
    let texts = train_texts(&ad);
    let crit = Criterion::new(CriterionConfig::default()).expect("default criterion");
    let optim = OptimConfig {
        lr: 1e-3,
        lr_backbone: 1e-4,
        lr_text: 1e-4,
        ..OptimConfig::default()
    };
    let mut trainer = Trainer::new(model, crit, optim, true, &ad);
    two_train_steps(&mut trainer, &texts, device, out, true);
}
