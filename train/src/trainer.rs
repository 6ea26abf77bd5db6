//! The optimisation step of the official recipe (AdamW with
//! weight decay 1e-4, separate learning rates for the backbone, the label encoder and the rest,
//! the ResNet stem and `layer1` frozen, gradient clipping at a global norm, step decay), in
//! float32 or with bf16 / f16 mixed precision ([`Trainer::with_mixed_precision`]).

use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::FloatDType;
use rlip_data::DataError;
use rlip_data::labels::LabelSet;
use rlip_data::preprocess::pad_batch;
use rlip_model::position::PaddingMask;
use rlip_model::prediction_heads::LayerPredictions;
use rlip_model::rlip::RlipParSeDa;
use rlip_model::text::tokenizer::{LabelTokenizer, TokenizerError};
use serde::Serialize;

use crate::loss::{Criterion, CriterionError, NonFiniteLoss};
use crate::matcher::PairTargets;
use crate::optim::{AdamW, AdamWConfig, LossScaler};

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
    /// A checkpoint could not be written or read.
    #[error("checkpoint {0}")]
    Checkpoint(String),
    /// The data loader failed.
    #[error("data: {0}")]
    Loader(String),
}

pub use rlip_data::transforms::Sample as TrainSample;

/// Tokenised label texts of a step: object texts (with "no objects" last), then relations.
#[derive(Debug, Clone)]
pub struct LabelTexts {
    /// `[L, T]` token ids.
    pub ids: Tensor<2, Int>,
    /// `[L, T]` attention mask.
    pub mask: Tensor<2, Int>,
    /// Object texts including "no objects".
    pub n_obj: usize,
}

impl LabelTexts {
    /// Tokenises `labels.flat_texts()` (objects, "no objects", relations) onto `device`.
    pub fn encode(
        tokenizer: &LabelTokenizer,
        labels: &LabelSet,
        device: &Device,
    ) -> Result<Self, TokenizerError> {
        let (ids, mask) = tokenizer
            .batch_encode(&labels.flat_texts())?
            .to_tensors(device);
        Ok(Self {
            ids,
            mask,
            n_obj: labels.n_obj_with_none(),
        })
    }
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
    /// The loss scale of f16 training in effect for this step (`None` without loss scaling).
    pub loss_scale: Option<f64>,
    /// The gradients overflowed under loss scaling: the parameters were not updated and the
    /// scale was halved (f16 training only).
    pub skipped: bool,
}

/// Sums squared gradients of the parameters it visits.
struct GradNorm<'a> {
    grads: &'a [&'a GradientsParams],
    /// Every gradient found, viewed as rank 4.
    found: Vec<Tensor<4>>,
}

impl ModuleVisitor for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        for g in self.grads {
            if let Some(t) = g.get::<D>(param.id) {
                self.found.push(rlip_model::fused::rank4(t));
            }
        }
    }
}

/// Casts every float parameter to `dtype`. With `track` the casts stay in the autodiff graph, so
/// the gradient of a cast parameter flows back (cast to the original type) into the original
/// parameter; without, each parameter becomes a new leaf keeping its `require_grad` flag.
struct CastParams {
    dtype: FloatDType,
    track: bool,
}

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (dtype, track) = (self.dtype, self.track);
        param.map(|t| {
            if track {
                t.cast(dtype)
            } else {
                let require_grad = t.is_require_grad();
                // a new leaf: the cast of a detached tensor is an untracked op's output, which
                // autodiff refuses to track (wgpu with an f16 default panicked here)
                let t = Tensor::from_inner(t.inner().cast(dtype));
                if require_grad { t.require_grad() } else { t }
            }
        })
    }
}

/// One decoder layer's predictions in float32 (the criterion's type under mixed precision).
fn predictions_f32(p: LayerPredictions) -> LayerPredictions {
    let f = |t: Tensor<3>| t.cast(FloatDType::F32);
    LayerPredictions {
        sub_logits: f(p.sub_logits),
        obj_logits: f(p.obj_logits),
        verb_logits: f(p.verb_logits),
        sub_boxes: f(p.sub_boxes),
        obj_boxes: f(p.obj_boxes),
    }
}

/// File names inside a training checkpoint folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// Optimiser state (AdamW moments in float32 by module path, and the loss scale; safetensors).
pub const OPTIM_FILE: &str = "optim.safetensors";

/// A model being trained on an autodiff device, with its optimiser state.
pub struct Trainer {
    model: Option<RlipParSeDa>,
    optim: AdamW,
    criterion: Criterion,
    optim_cfg: OptimConfig,
    device: Device,
    step: usize,
    seed: u64,
    /// The compute type of mixed-precision training (`None`: float32 throughout).
    compute: Option<FloatDType>,
    /// Dynamic loss scaling (f16 training).
    scaler: Option<LossScaler>,
    /// Devices of the data-parallel shards after the first (`device`, which holds the master
    /// weights and the optimiser).
    replicas: Vec<Device>,
}

impl Trainer {
    /// Prepares `model` (on the autodiff device `device`) for training. With `freeze_stem` the
    /// ResNet stem and `layer1` are frozen as in the official code (which always starts from a
    /// pre-trained backbone); a model trained from scratch trains them.
    pub fn new(
        model: RlipParSeDa,
        criterion: Criterion,
        optim_cfg: OptimConfig,
        freeze_stem: bool,
        device: &Device,
    ) -> Self {
        let mut model = model;
        if freeze_stem {
            model.backbone = model.backbone.freeze_official();
        }
        let optim = AdamW::new(AdamWConfig {
            weight_decay: optim_cfg.weight_decay,
            ..AdamWConfig::default()
        });
        Self {
            model: Some(model),
            optim,
            criterion,
            optim_cfg,
            device: device.clone(),
            step: 0,
            seed: 0,
            compute: None,
            scaler: None,
            replicas: Vec::new(),
        }
    }

    /// Mixed-precision training in `dtype` (bf16 or f16; `F32` turns it off). The parameters become
    /// float32 master weights (optimiser moments and checkpoints are float32; build the model
    /// with float32 tensors, e.g. `RlipParSeDa::init_as(.., Some(FloatDType::F32))`, so none is
    /// rounded first); each step casts them to bf16 inside the autodiff graph, runs forward and
    /// backward in bf16 with the model's float32 islands (norms, softmax, box refinement,
    /// deformable sampling), computes the criterion in float32, and applies float32 gradients
    /// to the masters — the scheme of PyTorch's autocast. f16 adds dynamic loss scaling
    /// ([`LossScaler`]: steps whose gradients overflow are skipped). The device's default float
    /// type must be `dtype` (`rlip_backends::set_precision`), since the model creates its
    /// constants in it.
    pub fn with_mixed_precision(mut self, dtype: FloatDType) -> Result<Self, TrainError> {
        if Self::master_dtype(dtype)?.is_none() {
            self.compute = None;
            self.scaler = None;
            return Ok(self);
        }
        let default = self.device.settings().float_dtype;
        if default != dtype {
            return Err(TrainError::Invalid(format!(
                "mixed precision in {dtype:?} needs a device whose default float type is \
                 {dtype:?}, not {default:?}"
            )));
        }
        let model = self.model.take().expect("model present between steps");
        self.model = Some(model.map(&mut CastParams {
            dtype: FloatDType::F32,
            track: false,
        }));
        self.compute = Some(dtype);
        self.scaler = (dtype == FloatDType::F16).then(LossScaler::default);
        Ok(self)
    }

    /// The type to build a model in for training with compute type `dtype`: `None` (the device
    /// default) in float32, float32 master weights for bf16 and f16 mixed precision. Other types
    /// are an error.
    pub fn master_dtype(dtype: FloatDType) -> Result<Option<FloatDType>, TrainError> {
        match dtype {
            FloatDType::F32 => Ok(None),
            FloatDType::BF16 | FloatDType::F16 => Ok(Some(FloatDType::F32)),
            other => Err(TrainError::Invalid(format!(
                "mixed-precision training supports bf16 and f16, not {other:?}"
            ))),
        }
    }

    /// Data parallelism: each step splits its batch into one shard per device — this trainer's
    /// device first, then `replicas` (autodiff devices) — runs forward and backward of each on a
    /// copy of the model on its device (distinct devices in parallel threads, a device named
    /// twice one shard after another), and applies the mean of the shards' gradients to the
    /// master weights. The loss terms are normalised by the step's pair count over the number
    /// of shards, as the official distributed training does; every shard draws the step's
    /// dropout masks from the same seed.
    pub fn with_data_parallel(mut self, replicas: Vec<Device>) -> Result<Self, TrainError> {
        if let Some(d) = replicas.iter().find(|d| !d.is_autodiff()) {
            return Err(TrainError::Invalid(format!(
                "data-parallel device {d:?} is not an autodiff device"
            )));
        }
        self.replicas = replicas;
        Ok(self)
    }

    /// Devices a step is spread over (1 without data parallelism).
    pub fn shards(&self) -> usize {
        1 + self.replicas.len()
    }

    /// The compute type of mixed-precision training, `None` in float32.
    pub fn mixed_precision(&self) -> Option<FloatDType> {
        self.compute
    }

    /// The model for evaluation: without autodiff, its parameters in the compute type.
    pub fn eval_model(&self) -> RlipParSeDa {
        let model = self.model().valid();
        match self.compute {
            Some(dtype) => model.map(&mut CastParams {
                dtype,
                track: false,
            }),
            None => model,
        }
    }

    /// Seed of the training randomness inside the model (dropout, stochastic depth): step `n`
    /// draws from a generator seeded by `(seed, n)`, so a resumed run repeats the masks.
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    /// The model (still on the autodiff device).
    pub fn model(&self) -> &RlipParSeDa {
        self.model.as_ref().expect("model present between steps")
    }

    /// The autodiff device the model trains on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Steps taken (including those before a resume).
    pub fn steps(&self) -> usize {
        self.step
    }

    /// Writes `dir/model.safetensors` (parameters with their ids and `metadata`) and
    /// `dir/optim.safetensors` (AdamW moments, loss scale). Callers make the folder itself
    /// appear atomically.
    pub fn save(
        &self,
        dir: &Path,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), TrainError> {
        let io = |e: String| TrainError::Checkpoint(format!("{}: {e}", dir.display()));
        rlip_model::checkpoint::save_params(self.model(), &dir.join(MODEL_FILE), metadata)
            .map_err(|e| io(e.to_string()))?;
        let mut extra = std::collections::BTreeMap::new();
        if let Some(s) = &self.scaler {
            s.to_extra(&mut extra);
        }
        let bytes = self
            .optim
            .to_bytes(&extra)
            .map_err(|e| io(format!("{OPTIM_FILE}: {e}")))?;
        rlip_model::util::write_atomic(&dir.join(OPTIM_FILE), &bytes)
            .map_err(|e| io(format!("{OPTIM_FILE}: {e}")))
    }

    /// Restores the parameters (with their ids) and optimiser state written by [`Trainer::save`]
    /// into this trainer, whose model must have the same configuration; `steps` is the step
    /// count to continue from. The moments stay float32 under mixed precision; an f16 run gets
    /// its loss scale back.
    pub fn restore(&mut self, dir: &Path, steps: usize) -> Result<(), TrainError> {
        let path = dir.join(OPTIM_FILE);
        let bytes = std::fs::read(&path)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
        let mut optim = self.optim.clone();
        let extra = optim
            .load_bytes(&bytes, &path)
            .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        let bad = optim.mismatches(self.model());
        if !bad.is_empty() {
            let more = if bad.len() > 10 {
                format!(", … ({} in all)", bad.len())
            } else {
                String::new()
            };
            return Err(TrainError::Checkpoint(format!(
                "{}: optimiser state does not fit the model: {}{more}",
                path.display(),
                bad[..bad.len().min(10)].join(", ")
            )));
        }
        let model = self.model.take().expect("model present between steps");
        let mpath = dir.join(MODEL_FILE);
        let model = match rlip_model::checkpoint::load_params_with_ids(model.clone(), &mpath) {
            Ok((m, _)) => m,
            Err(e) => {
                self.model = Some(model);
                return Err(TrainError::Checkpoint(e.to_string()));
            }
        };
        self.model = Some(model);
        self.optim = optim;
        if let Some(s) = self.scaler.as_mut() {
            s.load_extra(&extra);
        }
        self.step = steps;
        Ok(())
    }

    /// One optimisation step on a batch of `(values [3, h, w], h, w)` images and their targets
    /// (class indices into `texts`), with every learning rate multiplied by `lr_scale`. A
    /// non-finite loss stops before the update and leaves the parameters as they were. Under
    /// data parallelism ([`Trainer::with_data_parallel`]) the batch is split into one shard per
    /// device (fewer when the batch is smaller) and the shards' gradients are averaged.
    pub fn step(
        &mut self,
        images: &[(Vec<f32>, usize, usize)],
        targets: &[PairTargets],
        texts: &LabelTexts,
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
        let result = self.backward(&model, images, targets, texts);
        let ShardOut {
            loss,
            terms,
            grads: [mut g_backbone, mut g_text, mut g_rest],
        } = match result {
            Ok(r) => r,
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
        let loss_scale = self.scaler.map(|s| s.scale);
        let grad_norm = {
            let groups = [&g_backbone, &g_text, &g_rest];
            let mut v = GradNorm {
                grads: &groups,
                found: Vec::new(),
            };
            model.visit(&mut v);
            rlip_model::fused::sum_squares(v.found)
                .map_or(0.0, |s| (s.into_scalar::<f32>() as f64).sqrt())
                / loss_scale.unwrap_or(1.0)
        };
        if let Some(scaler) = self.scaler.as_mut()
            && !scaler.update(grad_norm.is_finite())
        {
            // overflow under loss scaling: skip the update, try again with half the scale
            self.model = Some(model);
            self.step += 1;
            return Ok(StepLog {
                step,
                loss,
                terms,
                grad_norm,
                lr_scale,
                loss_scale,
                skipped: true,
            });
        }
        if !grad_norm.is_finite() {
            self.model = Some(model);
            return Err(TrainError::NonFinite {
                step,
                source: NonFiniteLoss(vec![("gradient norm".into(), grad_norm)]),
            });
        }
        let clip = self.optim_cfg.clip_max_norm;
        // unscale (f16) and clip inside the update's pass over the gradients
        let mut factor = 1.0 / loss_scale.unwrap_or(1.0);
        if clip > 0.0 && grad_norm > clip {
            factor *= clip / (grad_norm + 1e-6);
        }
        let c = &self.optim_cfg;
        let mut model =
            self.optim
                .step_scaled(c.lr_backbone * lr_scale, factor, model, &mut g_backbone);
        model = self
            .optim
            .step_scaled(c.lr_text * lr_scale, factor, model, &mut g_text);
        model = self
            .optim
            .step_scaled(c.lr * lr_scale, factor, model, &mut g_rest);
        self.model = Some(model);
        self.step += 1;
        Ok(StepLog {
            step,
            loss,
            terms,
            grad_norm,
            lr_scale,
            loss_scale,
            skipped: false,
        })
    }

    /// Forward and backward of a step: the weighted loss, the unweighted terms and the
    /// gradients of the three parameter groups (backbone, label encoder, rest) on the master
    /// device, averaged over the data-parallel shards.
    fn backward(
        &self,
        model: &RlipParSeDa,
        images: &[(Vec<f32>, usize, usize)],
        targets: &[PairTargets],
        texts: &LabelTexts,
    ) -> Result<ShardOut, TrainError> {
        let step = self.step;
        let seed = self.seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let ctx = ShardContext {
            criterion: &self.criterion,
            compute: self.compute,
            loss_scale: self.scaler.map(|s| s.scale),
            seed,
            step,
        };
        let b = images.len();
        let k = (1 + self.replicas.len()).min(b);
        if k == 1 {
            return ctx.run(model, &self.device, images, targets, texts, None);
        }
        // contiguous shards, the first `b % k` one image larger; the official normalisation:
        // the step's pair count over the number of shards
        let bounds: Vec<(usize, usize)> = (0..k)
            .scan(0, |start, r| {
                let len = b / k + usize::from(r < b % k);
                let s = *start;
                *start += len;
                Some((s, s + len))
            })
            .collect();
        let pairs: usize = targets.iter().map(PairTargets::len).sum();
        let norm = Some((pairs as f64 / k as f64).max(1.0));
        let devices: Vec<&Device> = std::iter::once(&self.device)
            .chain(&self.replicas)
            .take(k)
            .collect();
        let shard = |r: usize| -> Result<ShardOut, TrainError> {
            let (s, e) = bounds[r];
            let dev = devices[r];
            let replica;
            let m = if r == 0 {
                model
            } else {
                replica = model.clone().fork(dev);
                &replica
            };
            ctx.run(m, dev, &images[s..e], &targets[s..e], texts, norm)
        };
        let distinct = (0..k).all(|i| (0..i).all(|j| devices[i] != devices[j]));
        let outs: Vec<Result<ShardOut, TrainError>> = if distinct {
            // one thread per device; each device runs its own shard
            std::thread::scope(|sc| {
                let handles: Vec<_> = (0..k).map(|r| sc.spawn(move || shard(r))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a data-parallel shard panicked"))
                    .collect()
            })
        } else {
            // a device named twice runs its shards one after another (its random generator is
            // seeded per shard, which threads sharing it would race on)
            (0..k).map(shard).collect()
        };
        let outs: Vec<ShardOut> = outs.into_iter().collect::<Result<_, _>>()?;
        let inv = 1.0 / k as f64;
        let loss = outs.iter().map(|o| o.loss).sum::<f64>() * inv;
        let terms = outs[0]
            .terms
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let v = outs.iter().map(|o| o.terms[i].1).sum::<f64>() * inv;
                (name.clone(), v)
            })
            .collect();
        let mut parts: Vec<[GradientsParams; 3]> = outs.into_iter().map(|o| o.grads).collect();
        let grads = std::array::from_fn(|g| {
            let mut merge = MergeGrads {
                parts: parts.iter_mut().map(|p| &mut p[g]).collect(),
                out: GradientsParams::new(),
                factor: inv,
            };
            model.visit(&mut merge);
            merge.out
        });
        Ok(ShardOut { loss, terms, grads })
    }
}

/// What every shard of a step shares.
struct ShardContext<'a> {
    criterion: &'a Criterion,
    compute: Option<FloatDType>,
    loss_scale: Option<f64>,
    seed: u64,
    step: usize,
}

/// One shard's (or a whole step's) loss, terms and parameter-group gradients.
struct ShardOut {
    loss: f64,
    terms: Vec<(String, f64)>,
    grads: [GradientsParams; 3],
}

impl ShardContext<'_> {
    /// Forward, criterion and backward of `model` (on `device`) on one shard.
    fn run(
        &self,
        model: &RlipParSeDa,
        device: &Device,
        images: &[(Vec<f32>, usize, usize)],
        targets: &[PairTargets],
        texts: &LabelTexts,
        num_interactions: Option<f64>,
    ) -> Result<ShardOut, TrainError> {
        let step = self.step;
        // every shard draws its dropout masks from the step's seed, so one shard is exactly
        // the single-device step
        device.seed(self.seed);
        let batch = pad_batch(images);
        let b = images.len();
        let x = Tensor::<4>::from_data(
            TensorData::new(batch.data, [b, 3, batch.height, batch.width]),
            device,
        );
        let mask = PaddingMask::from_sizes(&batch.sizes, batch.height, batch.width);
        // under mixed precision the forward runs on casts of the float32 masters
        let work = match self.compute {
            Some(dtype) => model.clone().map(&mut CastParams { dtype, track: true }),
            None => model.clone(),
        };
        let (ids, attn) = if texts.ids.device() == *device {
            (texts.ids.clone(), texts.mask.clone())
        } else {
            (
                texts.ids.clone().to_device(device),
                texts.mask.clone().to_device(device),
            )
        };
        let labels = work.encode_labels(ids, attn, texts.n_obj);
        let pseudo = self.criterion.config().pseudo_verb.then(|| {
            let [l, d] = labels.pooled.dims();
            let verbs = labels.pooled.clone().slice(s![texts.n_obj..l]);
            let host = verbs
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 text features");
            crate::loss::pseudo_verb::pseudo_verb_targets(&host, l - texts.n_obj, d, targets)
        });
        let mut layers = work.forward(x, &mask, &labels).layers;
        drop(work);
        if self.compute.is_some() {
            layers = layers.into_iter().map(predictions_f32).collect();
        }
        let crit = self
            .criterion
            .forward_normalised(&layers, targets, pseudo.as_deref(), num_interactions)
            .map_err(|source| TrainError::Criterion { step, source })?;
        let terms = crit
            .check_finite()
            .map_err(|source| TrainError::NonFinite { step, source })?;
        let loss: f64 = crit
            .terms
            .iter()
            .zip(&terms)
            .map(|(t, (_, v))| t.weight * v)
            .sum();
        let mut grads = match self.loss_scale {
            Some(k) => (crit.total * k).backward(),
            None => crit.total.backward(),
        };
        let g_backbone = GradientsParams::from_module(&mut grads, &model.backbone);
        let g_text = GradientsParams::from_module(&mut grads, &model.text_encoder);
        let g_rest = GradientsParams::from_grads(grads, model);
        Ok(ShardOut {
            loss,
            terms,
            grads: [g_backbone, g_text, g_rest],
        })
    }
}

/// Sums the shards' gradients of every visited parameter onto the first shard's device, times
/// `factor`.
struct MergeGrads<'a> {
    parts: Vec<&'a mut GradientsParams>,
    out: GradientsParams,
    factor: f64,
}

impl ModuleVisitor for MergeGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let mut sum: Option<Tensor<D>> = None;
        for p in self.parts.iter_mut() {
            if let Some(g) = p.remove::<D>(param.id) {
                sum = Some(match sum {
                    Some(acc) => {
                        let dev = acc.device();
                        acc + g.to_device(&dev)
                    }
                    None => g,
                });
            }
        }
        if let Some(g) = sum {
            self.out.register(param.id, g * self.factor);
        }
    }
}
