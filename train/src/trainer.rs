//! Fine-tuning on HICO-DET-format data: training samples with the official target rules,
//! augmentation and batching, and the optimisation step of the official recipe (AdamW with
//! weight decay 1e-4, separate learning rates for the backbone, the label encoder and the rest,
//! the ResNet stem and `layer1` frozen, gradient clipping at a global norm, step decay).

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rlip_data::DataError;
use rlip_data::hico::HoiImageAnnotation;
use rlip_data::preprocess::{RgbImage, load_rgb, normalize, pad_batch, resize_bilinear};
use rlip_model::position::PaddingMask;
use rlip_model::rlip::RlipParSeDa;
use serde::Serialize;

use crate::loss::{Criterion, CriterionError, NonFiniteLoss};
use crate::matcher::PairTargets;

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A data file could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The criterion rejected the batch.
    #[error("step {step}: {source}")]
    Criterion {
        /// Optimisation step.
        step: usize,
        /// Cause.
        source: CriterionError,
    },
    /// A loss term became NaN or infinite: training stops before the update.
    #[error("step {step}: {source}; the parameters were not updated")]
    NonFinite {
        /// Optimisation step.
        step: usize,
        /// The offending terms.
        source: NonFiniteLoss,
    },
    /// Inconsistent request.
    #[error("{0}")]
    Invalid(String),
}

/// One training image with its boxes and relation pairs (pixels, original image).
#[derive(Debug, Clone)]
pub struct TrainSample {
    /// Decoded image.
    pub image: RgbImage,
    /// `[x0, y0, x1, y1]` boxes, clamped to the image, degenerate ones removed.
    pub boxes: Vec<[f32; 4]>,
    /// Class index of each box.
    pub labels: Vec<usize>,
    /// `(subject box, object box, verb indices)`, one entry per distinct pair (multi-verb pairs
    /// merged, as the official loader does).
    pub pairs: Vec<(usize, usize, Vec<usize>)>,
}

/// Builds training samples from HICO-DET-format annotations the way the official
/// `HICODetection` train branch does: images whose relations point outside their box list are
/// dropped (returned count), boxes are clamped to the image and degenerate ones removed together
/// with their relations, and relations of the same (subject, object) merged into one multi-verb
/// pair. `obj_index` maps a `category_id` to a class index; verbs are `category_id - 1`.
pub fn hico_samples(
    annotations: &[HoiImageAnnotation],
    image_dir: &Path,
    obj_index: &dyn Fn(i64) -> Option<usize>,
    num_verbs: usize,
) -> Result<(Vec<TrainSample>, usize), DataError> {
    let mut out = Vec::new();
    let mut dropped = 0;
    for ann in annotations {
        let n = ann.annotations.len() as i64;
        if ann
            .hoi_annotation
            .iter()
            .any(|h| h.subject_id < 0 || h.subject_id >= n || h.object_id < 0 || h.object_id >= n)
        {
            dropped += 1;
            continue;
        }
        let path = image_dir.join(&ann.file_name);
        let image = load_rgb(&path)?;
        let (w, h) = (image.width as f64, image.height as f64);
        let mut keep_index = vec![None; ann.annotations.len()];
        let mut boxes = Vec::new();
        let mut labels = Vec::new();
        for (i, b) in ann.annotations.iter().enumerate() {
            let label = obj_index(b.category_id).ok_or_else(|| DataError::Invalid {
                path: path.clone(),
                msg: format!("box {i}: unknown category_id {}", b.category_id),
            })?;
            let [x0, y0, x1, y1] = b.bbox;
            if [x0, y0, x1, y1].iter().any(|v| !v.is_finite()) {
                return Err(DataError::Invalid {
                    path: path.clone(),
                    msg: format!("box {i}: non-finite coordinates"),
                });
            }
            let c = [
                x0.clamp(0.0, w),
                y0.clamp(0.0, h),
                x1.clamp(0.0, w),
                y1.clamp(0.0, h),
            ];
            if c[2] > c[0] && c[3] > c[1] {
                keep_index[i] = Some(boxes.len());
                boxes.push(c.map(|v| v as f32));
                labels.push(label);
            }
        }
        let mut pairs: Vec<(usize, usize, Vec<usize>)> = Vec::new();
        for r in &ann.hoi_annotation {
            let (Some(s), Some(o)) = (
                keep_index[r.subject_id as usize],
                keep_index[r.object_id as usize],
            ) else {
                continue;
            };
            let v = usize::try_from(r.category_id - 1)
                .ok()
                .filter(|&v| v < num_verbs)
                .ok_or_else(|| DataError::Invalid {
                    path: path.clone(),
                    msg: format!(
                        "relation verb category_id {} outside 1..={num_verbs}",
                        r.category_id
                    ),
                })?;
            match pairs.iter_mut().find(|p| p.0 == s && p.1 == o) {
                Some(p) if !p.2.contains(&v) => p.2.push(v),
                Some(_) => {}
                None => pairs.push((s, o, vec![v])),
            }
        }
        out.push(TrainSample {
            image,
            boxes,
            labels,
            pairs,
        });
    }
    Ok((out, dropped))
}

pub use rlip_data::rng::Rng;

/// Train-time augmentation: random horizontal flip and a random short side from `scales`
/// (long side capped at `max_size`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AugmentConfig {
    /// Candidate short sides.
    pub scales: Vec<usize>,
    /// Long-side cap.
    pub max_size: usize,
    /// Random horizontal flip with probability 0.5.
    pub flip: bool,
}

/// One augmented image: normalised `[3, h, w]` values and its targets (boxes normalised cxcywh
/// to the augmented image, subjects labelled with `subject_label`).
pub fn augment(
    s: &TrainSample,
    cfg: &AugmentConfig,
    num_verbs: usize,
    subject_label: usize,
    rng: &mut Rng,
) -> ((Vec<f32>, usize, usize), PairTargets) {
    let flip = cfg.flip && rng.below(2) == 1;
    let size = cfg.scales[rng.below(cfg.scales.len())];
    let (h, w) =
        rlip_data::preprocess::eval_size(s.image.width, s.image.height, size, Some(cfg.max_size));
    let mut img = resize_bilinear(&s.image, w, h);
    if flip {
        for y in 0..h {
            let row = &mut img.data[y * w * 3..(y + 1) * w * 3];
            for x in 0..w / 2 {
                for c in 0..3 {
                    row.swap(x * 3 + c, (w - 1 - x) * 3 + c);
                }
            }
        }
    }
    let (sx, sy) = (
        w as f32 / s.image.width as f32,
        h as f32 / s.image.height as f32,
    );
    let norm = |b: [f32; 4]| {
        let (mut x0, y0, mut x1, y1) = (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy);
        if flip {
            (x0, x1) = (w as f32 - x1, w as f32 - x0);
        }
        [
            (x0 + x1) / 2.0 / w as f32,
            (y0 + y1) / 2.0 / h as f32,
            (x1 - x0) / w as f32,
            (y1 - y0) / h as f32,
        ]
    };
    let mut t = PairTargets {
        sub_boxes: Vec::new(),
        obj_boxes: Vec::new(),
        sub_labels: Vec::new(),
        obj_labels: Vec::new(),
        verb_labels: Vec::new(),
    };
    for (sb, ob, verbs) in &s.pairs {
        t.sub_boxes.push(norm(s.boxes[*sb]));
        t.obj_boxes.push(norm(s.boxes[*ob]));
        t.sub_labels.push(subject_label);
        t.obj_labels.push(s.labels[*ob]);
        let mut row = vec![0f32; num_verbs];
        for &v in verbs {
            row[v] = 1.0;
        }
        t.verb_labels.push(row);
    }
    ((normalize(&img), h, w), t)
}

/// Optimiser settings (official fine-tuning defaults: lr 1e-4, backbone and label encoder 1e-5,
/// weight decay 1e-4, clipping at global norm 0.1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptimConfig {
    /// Learning rate of everything but the backbone and the label encoder.
    pub lr: f64,
    /// Backbone learning rate.
    pub lr_backbone: f64,
    /// Label-encoder (`transformer.text_encoder`) learning rate.
    pub lr_text: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub clip_max_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            lr_backbone: 1e-5,
            lr_text: 1e-5,
            weight_decay: 1e-4,
            clip_max_norm: 0.1,
        }
    }
}

/// Loss values and timing of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    /// Step index (from 0).
    pub step: usize,
    /// Weighted total.
    pub loss: f64,
    /// Unweighted terms by official name.
    pub terms: Vec<(String, f64)>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning-rate multiplier in effect (step decay).
    pub lr_scale: f64,
}

/// Sums squared gradients of the parameters it visits.
struct GradNorm<'a> {
    grads: &'a [&'a GradientsParams],
    sq: Option<Tensor<1>>,
}

impl ModuleVisitor for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        for g in self.grads {
            if let Some(t) = g.get::<D>(param.id) {
                let s = t.powi_scalar(2).sum();
                self.sq = Some(match self.sq.take() {
                    Some(a) => a + s,
                    None => s,
                });
            }
        }
    }
}

/// Multiplies every visited parameter's gradient by a factor.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(t) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, t * self.factor);
        }
    }
}

/// A model being trained on an autodiff device, with its optimiser state.
pub struct Trainer {
    model: Option<RlipParSeDa>,
    optim: ModuleOptimizer,
    criterion: Criterion,
    optim_cfg: OptimConfig,
    text_ids: Tensor<2, Int>,
    text_mask: Tensor<2, Int>,
    n_obj: usize,
    device: Device,
    step: usize,
}

impl Trainer {
    /// Prepares `model` (on the autodiff device `device`) for training on the tokenised label
    /// texts (`ids`, `mask`: `[L, T]`, with `n_obj` object texts including "no objects"). With
    /// `freeze_stem` the ResNet stem and `layer1` are frozen as in the official code (which
    /// always starts from a pre-trained backbone); a model trained from scratch trains them.
    pub fn new(
        model: RlipParSeDa,
        text: (Tensor<2, Int>, Tensor<2, Int>),
        n_obj: usize,
        criterion: Criterion,
        optim_cfg: OptimConfig,
        freeze_stem: bool,
        device: &Device,
    ) -> Self {
        let mut model = model;
        if freeze_stem {
            model.backbone = model.backbone.freeze_official();
        }
        let optim = AdamWConfig::new()
            .with_weight_decay(optim_cfg.weight_decay as f32)
            .init();
        Self {
            model: Some(model),
            optim,
            criterion,
            optim_cfg,
            text_ids: text.0,
            text_mask: text.1,
            n_obj,
            device: device.clone(),
            step: 0,
        }
    }

    /// The model (still on the autodiff device).
    pub fn model(&self) -> &RlipParSeDa {
        self.model.as_ref().expect("model present between steps")
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// One optimisation step on a batch of `(values [3, h, w], h, w)` images and their targets,
    /// with every learning rate multiplied by `lr_scale`. A non-finite loss stops before the
    /// update and leaves the parameters as they were.
    pub fn step(
        &mut self,
        images: &[(Vec<f32>, usize, usize)],
        targets: &[PairTargets],
        lr_scale: f64,
    ) -> Result<StepLog, TrainError> {
        if images.is_empty() || images.len() != targets.len() {
            return Err(TrainError::Invalid(format!(
                "a batch needs images and targets of equal, non-zero length ({} vs {})",
                images.len(),
                targets.len()
            )));
        }
        let step = self.step;
        let model = self.model.take().expect("model present between steps");
        let batch = pad_batch(images);
        let b = images.len();
        let x = Tensor::<4>::from_data(
            TensorData::new(batch.data, [b, 3, batch.height, batch.width]),
            &self.device,
        );
        let mask = PaddingMask::from_sizes(&batch.sizes, batch.height, batch.width);
        let labels = model.encode_labels(self.text_ids.clone(), self.text_mask.clone(), self.n_obj);
        let out = model.forward(x, &mask, &labels);
        let crit = match self.criterion.forward(&out.layers, targets, None) {
            Ok(c) => c,
            Err(source) => {
                self.model = Some(model);
                return Err(TrainError::Criterion { step, source });
            }
        };
        let terms = match crit.check_finite() {
            Ok(t) => t,
            Err(source) => {
                self.model = Some(model);
                return Err(TrainError::NonFinite { step, source });
            }
        };
        let loss: f64 = crit
            .terms
            .iter()
            .zip(&terms)
            .map(|(t, (_, v))| t.weight * v)
            .sum();
        let mut grads = crit.total.backward();
        let mut g_backbone = GradientsParams::from_module(&mut grads, &model.backbone);
        let mut g_text = GradientsParams::from_module(&mut grads, &model.text_encoder);
        let mut g_rest = GradientsParams::from_grads(grads, &model);
        let grad_norm = {
            let groups = [&g_backbone, &g_text, &g_rest];
            let mut v = GradNorm {
                grads: &groups,
                sq: None,
            };
            model.visit(&mut v);
            v.sq.map_or(0.0, |s| (s.into_scalar::<f32>() as f64).sqrt())
        };
        let clip = self.optim_cfg.clip_max_norm;
        if clip > 0.0 && grad_norm > clip {
            let factor = clip / (grad_norm + 1e-6);
            for g in [&mut g_backbone, &mut g_text, &mut g_rest] {
                model.visit(&mut Scale { grads: g, factor });
            }
        }
        let c = &self.optim_cfg;
        let mut model = self.optim.step(c.lr_backbone * lr_scale, model, g_backbone);
        model = self.optim.step(c.lr_text * lr_scale, model, g_text);
        model = self.optim.step(c.lr * lr_scale, model, g_rest);
        self.model = Some(model);
        self.step += 1;
        Ok(StepLog {
            step,
            loss,
            terms,
            grad_norm,
            lr_scale,
        })
    }
}

/// Schedule and data settings of a training run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Epoch from which every learning rate is multiplied by 0.1 (official `lr_drop`).
    pub lr_drop: Option<usize>,
    /// Augmentation.
    pub augment: AugmentConfig,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Stop after this many steps.
    pub max_steps: Option<usize>,
    /// Stop once this many seconds have passed (checked after each step).
    pub time_limit_s: Option<f64>,
    /// Class index given to every subject (person = 0).
    pub subject_label: usize,
    /// Number of relation classes.
    pub num_verbs: usize,
}

/// Progress of [`fit`], passed to its callback after every step.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Epoch (from 0).
    pub epoch: usize,
    /// Images processed so far in the run.
    pub images: usize,
    /// Seconds since the start of the run.
    pub seconds: f64,
    /// The step's losses.
    pub log: StepLog,
}

/// Trains on `samples` for `cfg.epochs` epochs (deterministic shuffling and augmentation from
/// `cfg.seed` and the epoch), calling `on_step` after every step. Returns the number of steps.
pub fn fit(
    trainer: &mut Trainer,
    samples: &[TrainSample],
    cfg: &FitConfig,
    mut on_step: impl FnMut(&Progress),
) -> Result<usize, TrainError> {
    if samples.is_empty() || cfg.batch_size == 0 || cfg.augment.scales.is_empty() {
        return Err(TrainError::Invalid(
            "training needs samples, a positive batch size and at least one scale".into(),
        ));
    }
    let start = std::time::Instant::now();
    let mut images = 0;
    let mut steps = 0;
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..samples.len()).collect();
        let mut rng = Rng::new(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.shuffle(&mut order);
        let lr_scale = match cfg.lr_drop {
            Some(d) if epoch >= d => 0.1,
            _ => 1.0,
        };
        for chunk in order.chunks(cfg.batch_size) {
            let (imgs, tgts): (Vec<_>, Vec<_>) = chunk
                .iter()
                .map(|&i| {
                    augment(
                        &samples[i],
                        &cfg.augment,
                        cfg.num_verbs,
                        cfg.subject_label,
                        &mut rng,
                    )
                })
                .unzip();
            let log = trainer.step(&imgs, &tgts, lr_scale)?;
            images += chunk.len();
            steps += 1;
            on_step(&Progress {
                epoch,
                images,
                seconds: start.elapsed().as_secs_f64(),
                log,
            });
            let out_of_time = cfg
                .time_limit_s
                .is_some_and(|t| start.elapsed().as_secs_f64() >= t);
            if out_of_time || cfg.max_steps.is_some_and(|m| steps >= m) {
                return Ok(steps);
            }
        }
    }
    Ok(steps)
}
