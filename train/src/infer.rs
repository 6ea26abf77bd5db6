//! Inference on images: checkpoint loading (with the official fine-tuning query filter), the
//! official evaluation preprocessing, padded batching, the model, post-processing to pairs, and
//! ranked relation triplets.

use std::path::Path;

use burn::prelude::*;
use rlip_data::DataError;
use rlip_data::labels::LabelSet;
use rlip_data::preprocess::{RgbImage, eval_size, normalize, pad_batch, resize_bilinear};
use rlip_model::backbone::BackboneConfig;
use rlip_model::checkpoint;
use rlip_model::position::PaddingMask;
use rlip_model::rlip::{LabelFeatures, RlipConfig, RlipParSeDa};
use rlip_model::text::{LabelTokenizer, TokenizerError};
use rlip_model::weights::{KeyReport, Loader, StateDict, WeightError};
use serde::Serialize;

use crate::eval::hico::hico_candidates;
use crate::eval::postprocess::{
    PostProcessHoiConfig, RawOutputs, postprocess_hoi, postprocess_sgg,
};
use crate::eval::{CorrectMat, EvalError, PairPredictions};

/// Why inference could not run.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The checkpoint could not be read.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The checkpoint does not fit the configured model (with a diagnosis when one is evident).
    #[error("{source}{hint}")]
    Checkpoint {
        /// The loader's error with its key report.
        source: WeightError,
        /// What the checkpoint appears to be, or empty.
        hint: String,
    },
    /// The tokenizer could not be loaded or failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// An image or label file could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Post-processing rejected the model outputs.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// Inconsistent request (labels too long for the text encoder, empty batch, ...).
    #[error("{0}")]
    Invalid(String),
}

/// What a checkpoint's keys say about it when they do not fit `cfg`, or `None`.
pub fn checkpoint_hint(sd: &StateDict, cfg: &RlipConfig) -> Option<String> {
    let has = |prefix: &str| sd.keys().any(|k| k.starts_with(prefix));
    let mut notes = Vec::new();
    if !has("transformer.ho_decoder.") || !has("transformer.verb_decoder.") {
        notes.push(
            "it has no ParSe decoders (transformer.ho_decoder.*, transformer.verb_decoder.*): \
             it is not an RLIPv2-ParSeDA checkpoint"
                .to_string(),
        );
    }
    let swin = has("backbone.0.body.layers.");
    let resnet = has("backbone.0.body.layer1.");
    match (&cfg.backbone, swin, resnet) {
        (BackboneConfig::ResNet(_), true, false) => {
            notes.push("it has a Swin backbone but the config names a ResNet".into())
        }
        (BackboneConfig::Swin(_), false, true) => {
            notes.push("it has a ResNet backbone but the config names a Swin".into())
        }
        _ => {}
    }
    if let Some(t) = sd.get("refpoint_embed.weight")
        && t.shape.first().is_some_and(|&q| q > cfg.num_queries)
    {
        notes.push(format!(
            "it has {} queries and the config {}: pass --partial to keep the first {} rows as \
             the official fine-tuning does",
            t.shape[0], cfg.num_queries, cfg.num_queries
        ));
    }
    if !has("transformer.text_encoder.") {
        notes.push("it has no label encoder (transformer.text_encoder.*)".into());
    }
    (!notes.is_empty()).then(|| format!("note: {}", notes.join("; ")))
}

/// Loads an RLIPv2-ParSeDA model from a `.pth` or `.safetensors` checkpoint by the official keys.
///
/// With `partial`, keys the checkpoint lacks are initialised (fine-tuning from a pre-trained or
/// detection checkpoint) and query rows are cut to `cfg.num_queries` first, as the official
/// `filter_ckpt_tgt_anchor` does; otherwise any missing or unexpected key is an error. Mis-shaped
/// keys are always an error.
pub fn load_model(
    cfg: &RlipConfig,
    checkpoint: &Path,
    device: &Device,
    partial: bool,
) -> Result<(RlipParSeDa, KeyReport), InferError> {
    load_model_as(cfg, checkpoint, device, partial, None)
}

/// [`load_model`] with float tensors created in `dtype` (`None`: the device default), e.g. the
/// float32 master weights of mixed-precision training on a bf16 device.
pub fn load_model_as(
    cfg: &RlipConfig,
    checkpoint: &Path,
    device: &Device,
    partial: bool,
    dtype: Option<burn::tensor::FloatDType>,
) -> Result<(RlipParSeDa, KeyReport), InferError> {
    if let Some(meta) = checkpoint::read_metadata(checkpoint).ok().flatten() {
        return load_trained(cfg, checkpoint, &meta, device, dtype);
    }
    let mut sd = StateDict::read(checkpoint)?;
    let hint = checkpoint_hint(&sd, cfg);
    if partial {
        let cut = sd.truncate_query_rows(cfg.num_queries);
        if !cut.is_empty() {
            tracing::info!(
                "kept the first {} query rows of {}",
                cfg.num_queries,
                cut.join(", ")
            );
        }
    }
    let mut ld = Loader::new(&sd, device, checkpoint.display().to_string())
        .allow_partial(partial)
        .float_dtype(dtype);
    let model = RlipParSeDa::load(&mut ld, cfg);
    match ld.finish() {
        Ok(report) => Ok((model, report)),
        Err(source) => Err(InferError::Checkpoint {
            source,
            hint: hint.map(|h| format!("\n{h}")).unwrap_or_default(),
        }),
    }
}

/// The configuration stored in an RLIP-rs checkpoint ([`rlip_model::checkpoint`]), or `None`
/// for other files (official checkpoints carry none).
pub fn checkpoint_config(path: &Path) -> Result<Option<RlipConfig>, InferError> {
    let Some(meta) = checkpoint::read_metadata(path).ok().flatten() else {
        return Ok(None);
    };
    let json = meta.get(checkpoint::META_CONFIG).ok_or_else(|| {
        InferError::Invalid(format!(
            "{}: RLIP-rs checkpoint without a config",
            path.display()
        ))
    })?;
    serde_json::from_str(json).map(Some).map_err(|e| {
        InferError::Invalid(format!(
            "{}: malformed config in metadata: {e}",
            path.display()
        ))
    })
}

/// A model trained by RLIP-rs: built like it was before training (from its base official
/// checkpoint, or freshly initialised), then its saved parameters loaded by module path.
fn load_trained(
    cfg: &RlipConfig,
    path: &Path,
    meta: &std::collections::BTreeMap<String, String>,
    device: &Device,
    dtype: Option<burn::tensor::FloatDType>,
) -> Result<(RlipParSeDa, KeyReport), InferError> {
    if let Some(saved) = checkpoint_config(path)?
        && &saved != cfg
    {
        return Err(InferError::Invalid(format!(
            "{} was trained with another model configuration than the one given",
            path.display()
        )));
    }
    let (model, mut report) = match meta.get(checkpoint::META_BASE) {
        Some(base) => load_model_as(cfg, Path::new(base), device, true, dtype)?,
        None => (
            RlipParSeDa::init_as(cfg, device, dtype).0,
            KeyReport::default(),
        ),
    };
    let (model, names) = checkpoint::load_params(model, path)?;
    // the trained parameters replace whatever the base provided; missing base keys were
    // initialised and then trained, so they are not missing from this model
    report.applied = names;
    report.missing.clear();
    Ok((model, report))
}

/// How detected pairs are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PairMode {
    /// Human–object interaction: every subject is the first object class (person), as
    /// `PostProcessHOI` does (HICO-DET, V-COCO).
    Hoi,
    /// Scene-graph triplets: subjects are classified too, as `PostProcessSGG` does (Open Images).
    Sgg,
}

/// One image after the official evaluation preprocessing.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// `[3, h, w]` normalised values.
    pub data: Vec<f32>,
    /// Resized height.
    pub height: usize,
    /// Resized width.
    pub width: usize,
    /// Original `(h, w)`, the size boxes are reported in.
    pub orig_hw: [i64; 2],
}

/// The final decoder layer's outputs of a batch, on the host, row-major.
#[derive(Debug, Clone)]
pub struct RawBatch {
    /// Images in the batch.
    pub batch: usize,
    /// Query pairs per image.
    pub pairs: usize,
    /// Object (and subject) classes including "no objects".
    pub num_obj_logits: usize,
    /// Relation classes.
    pub num_verbs: usize,
    /// `[B, P, C]` object logits.
    pub obj_logits: Vec<f32>,
    /// `[B, P, C]` subject logits.
    pub sub_logits: Vec<f32>,
    /// `[B, P, V]` relation logits.
    pub verb_logits: Vec<f32>,
    /// `[B, P, 4]` normalised subject boxes (cx, cy, w, h).
    pub sub_boxes: Vec<f32>,
    /// `[B, P, 4]` normalised object boxes.
    pub obj_boxes: Vec<f32>,
    /// Original `(h, w)` of each image.
    pub orig_hw: Vec<[i64; 2]>,
}

/// A ranked relation triplet in original-image pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Triplet {
    /// Subject class name.
    pub subject: String,
    /// Subject class index.
    pub subject_label: usize,
    /// Subject box `[x0, y0, x1, y1]`.
    pub subject_box: [f32; 4],
    /// Relation name.
    pub relation: String,
    /// Relation index.
    pub relation_id: usize,
    /// Object class name.
    pub object: String,
    /// Object class index.
    pub object_label: usize,
    /// Object box `[x0, y0, x1, y1]`.
    pub object_box: [f32; 4],
    /// Triplet score.
    pub score: f32,
}

/// A loaded model with its encoded label texts, ready to run on images.
pub struct Predictor {
    model: RlipParSeDa,
    cfg: RlipConfig,
    labels: LabelSet,
    text: LabelFeatures,
    mode: PairMode,
    device: Device,
}

impl Predictor {
    /// Encodes the label texts once (objects, "no objects", relations) and keeps them for every
    /// image.
    pub fn new(
        model: RlipParSeDa,
        cfg: RlipConfig,
        tokenizer: &LabelTokenizer,
        labels: LabelSet,
        mode: PairMode,
        device: &Device,
    ) -> Result<Self, InferError> {
        let texts = labels.flat_texts();
        let batch = tokenizer.batch_encode(&texts)?;
        let max = model.text_encoder.max_tokens();
        if batch.len > max {
            return Err(InferError::Invalid(format!(
                "label texts of {} are {} tokens long; the label encoder takes at most {max}",
                labels.source, batch.len
            )));
        }
        if let Some(bad) = batch
            .input_ids
            .iter()
            .find(|&&id| id < 0 || id as usize >= cfg.text.vocab_size)
        {
            return Err(InferError::Invalid(format!(
                "the tokenizer produced id {bad}, outside the label encoder's vocabulary of {} \
                 (tokenizer and checkpoint do not belong together)",
                cfg.text.vocab_size
            )));
        }
        let (ids, mask) = batch.to_tensors(device);
        let text = model.encode_labels(ids, mask, labels.n_obj_with_none());
        Ok(Self {
            model,
            cfg,
            labels,
            text,
            mode,
            device: device.clone(),
        })
    }

    /// The label set.
    pub fn labels(&self) -> &LabelSet {
        &self.labels
    }

    /// The model configuration.
    pub fn config(&self) -> &RlipConfig {
        &self.cfg
    }

    /// The official evaluation preprocessing: bilinear resize (short side `eval_size`, long side
    /// capped at `eval_max_size`) and ImageNet normalisation.
    pub fn prepare(&self, img: &RgbImage) -> PreparedImage {
        let (h, w) = eval_size(
            img.width,
            img.height,
            self.cfg.eval_size,
            Some(self.cfg.eval_max_size),
        );
        let resized = resize_bilinear(img, w, h);
        PreparedImage {
            data: normalize(&resized),
            height: h,
            width: w,
            orig_hw: [img.height as i64, img.width as i64],
        }
    }

    /// Runs the model on a batch (zero-padded to its largest image, as the official
    /// `nested_tensor_from_tensor_list`) and returns the final layer's outputs on the host.
    pub fn forward(&self, images: &[PreparedImage]) -> Result<RawBatch, InferError> {
        if images.is_empty() {
            return Err(InferError::Invalid("empty image batch".into()));
        }
        let parts: Vec<(Vec<f32>, usize, usize)> = images
            .iter()
            .map(|i| (i.data.clone(), i.height, i.width))
            .collect();
        let batch = pad_batch(&parts);
        let b = images.len();
        let x = Tensor::<4>::from_data(
            TensorData::new(batch.data, [b, 3, batch.height, batch.width]),
            &self.device,
        );
        let mask = PaddingMask::from_sizes(&batch.sizes, batch.height, batch.width);
        let out = self.model.forward(x, &mask, &self.text);
        let last = out
            .layers
            .last()
            .ok_or_else(|| InferError::Invalid("the model has no decoder layers".into()))?;
        let host = |t: &Tensor<3>| -> Result<Vec<f32>, InferError> {
            t.clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| InferError::Invalid(format!("reading model outputs: {e:?}")))
        };
        let [_, pairs, num_obj_logits] = last.obj_logits.dims();
        Ok(RawBatch {
            batch: b,
            pairs,
            num_obj_logits,
            num_verbs: last.verb_logits.dims()[2],
            obj_logits: host(&last.obj_logits)?,
            sub_logits: host(&last.sub_logits)?,
            verb_logits: host(&last.verb_logits)?,
            sub_boxes: host(&last.sub_boxes)?,
            obj_boxes: host(&last.obj_boxes)?,
            orig_hw: images.iter().map(|i| i.orig_hw).collect(),
        })
    }

    /// Post-processes a batch's outputs to per-image pairs in original-image pixels
    /// (`PostProcessHOI` or `PostProcessSGG` by the predictor's [`PairMode`]).
    pub fn postprocess(&self, raw: &RawBatch) -> Result<Vec<PairPredictions>, InferError> {
        let r = RawOutputs {
            batch: raw.batch,
            queries: raw.pairs,
            obj_logits: &raw.obj_logits,
            num_obj_logits: raw.num_obj_logits,
            sub_logits: Some(&raw.sub_logits),
            num_sub_logits: raw.num_obj_logits,
            verb_logits: &raw.verb_logits,
            num_verbs: raw.num_verbs,
            sub_boxes: &raw.sub_boxes,
            obj_boxes: &raw.obj_boxes,
        };
        Ok(match self.mode {
            PairMode::Hoi => postprocess_hoi(&r, &raw.orig_hw, &PostProcessHoiConfig::default())?,
            PairMode::Sgg => postprocess_sgg(&r, &raw.orig_hw)?,
        })
    }

    /// Runs image files in batches of `batch_size` (decoding the next batch on a second thread
    /// while the model runs) and returns their pairs in order; `progress(n)` is called after
    /// every batch with the number of images done.
    pub fn predict_files(
        &self,
        paths: &[std::path::PathBuf],
        batch_size: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<PairPredictions>, InferError> {
        let batch_size = batch_size.max(1);
        let load = |chunk: &[std::path::PathBuf]| -> Result<Vec<PreparedImage>, InferError> {
            chunk
                .iter()
                .map(|p| Ok(self.prepare(&rlip_data::preprocess::load_rgb(p)?)))
                .collect()
        };
        let chunks: Vec<&[std::path::PathBuf]> = paths.chunks(batch_size).collect();
        let mut out = Vec::with_capacity(paths.len());
        let mut next = chunks.first().map(|c| load(c)).transpose()?;
        for i in 0..chunks.len() {
            let current = next.take().expect("loaded ahead");
            let (preds, loaded) = std::thread::scope(|s| {
                let ahead = chunks.get(i + 1).map(|c| s.spawn(|| load(c)));
                let preds = self.predict(&current);
                let loaded = ahead.map(|h| h.join().expect("image loading thread panicked"));
                (preds, loaded)
            });
            out.extend(preds?);
            next = loaded.transpose()?;
            progress(out.len());
        }
        Ok(out)
    }

    /// [`Predictor::forward`] then [`Predictor::postprocess`].
    pub fn predict(&self, images: &[PreparedImage]) -> Result<Vec<PairPredictions>, InferError> {
        self.postprocess(&self.forward(images)?)
    }

    /// The `top_k` best (pair, relation) triplets of one image: scores masked by `validity` (all
    /// combinations allowed when `None`), the `top_k` best kept, then the official triplet NMS
    /// (threshold 0.7, exponents 1 and 0.5) when `nms`; sorted by descending score.
    pub fn triplets(
        &self,
        pred: &PairPredictions,
        validity: Option<&CorrectMat>,
        top_k: usize,
        nms: bool,
    ) -> Result<Vec<Triplet>, InferError> {
        let all_ones;
        let mat = match validity {
            Some(m) => m,
            None => {
                all_ones = CorrectMat {
                    num_verbs: self.labels.relations.len(),
                    num_objects: self.labels.objects.len(),
                    values: vec![1.0; self.labels.relations.len() * self.labels.objects.len()],
                };
                &all_ones
            }
        };
        let kept = hico_candidates(pred, mat, top_k, nms.then_some((0.7, 1.0, 0.5)))?;
        let name = |names: &[String], i: i64| {
            usize::try_from(i)
                .ok()
                .and_then(|i| names.get(i).cloned())
                .unwrap_or_else(|| format!("#{i}"))
        };
        let mut out: Vec<Triplet> = kept
            .iter()
            .map(|k| {
                let (sl, ol) = (pred.labels[k.subject_id], pred.labels[k.object_id]);
                Triplet {
                    subject: name(&self.labels.objects, sl),
                    subject_label: sl.max(0) as usize,
                    subject_box: pred.boxes[k.subject_id],
                    relation: name(&self.labels.relations, k.verb as i64),
                    relation_id: k.verb,
                    object: name(&self.labels.objects, ol),
                    object_label: ol.max(0) as usize,
                    object_box: pred.boxes[k.object_id],
                    score: k.score,
                }
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(out)
    }
}

/// Draws the given triplets on `img`: each triplet's subject and object boxes and a line between
/// their centres in one colour, a numbered tag at the subject, and a legend panel below the image
/// listing `#n subject relation object score`.
pub fn draw_triplets(img: &RgbImage, triplets: &[Triplet]) -> RgbImage {
    use rlip_data::draw::{PALETTE, contrast, draw_box, draw_line, draw_text};
    let scale = ((img.width.max(img.height) as f32 / 640.0).round() as i64).clamp(1, 4);
    let line_h = (8 + 5) * scale;
    let legend_h = if triplets.is_empty() {
        line_h + 2 * scale
    } else {
        triplets.len() as i64 * line_h + 2 * scale
    };
    let lines: Vec<String> = triplets
        .iter()
        .enumerate()
        .map(|(i, tr)| {
            format!(
                "#{} {} {} {} {:.3}",
                i + 1,
                tr.subject,
                tr.relation,
                tr.object,
                tr.score
            )
        })
        .collect();
    // the legend may be wider than a small image: widen the canvas rather than cut the text
    let text_w = lines
        .iter()
        .map(|l| rlip_data::draw::text_width(l, scale) + 6 * scale)
        .max()
        .unwrap_or(0) as usize;
    let width = img.width.max(text_w);
    let mut out = RgbImage {
        width,
        height: img.height + legend_h as usize,
        data: vec![250; width * (img.height + legend_h as usize) * 3],
    };
    for y in 0..img.height {
        let src = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        out.data[y * width * 3..y * width * 3 + img.width * 3].copy_from_slice(src);
    }
    let t = 2 * scale;
    // draw from the weakest up so the best triplet ends on top
    for (i, tr) in triplets.iter().enumerate().rev() {
        let c = PALETTE[i % PALETTE.len()];
        draw_box(&mut out, tr.subject_box, c, t);
        draw_box(&mut out, tr.object_box, c, (t / 2).max(1));
        let centre = |b: [f32; 4]| [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0];
        draw_line(
            &mut out,
            centre(tr.subject_box),
            centre(tr.object_box),
            c,
            scale,
        );
        let tag = format!("#{}", i + 1);
        let x = tr.subject_box[0].max(0.0) as i64;
        let y = tr.subject_box[1].max(0.0) as i64;
        draw_text(&mut out, x, y, &tag, scale, contrast(c), c);
    }
    let y0 = img.height as i64 + scale;
    if triplets.is_empty() {
        draw_text(
            &mut out,
            scale,
            y0,
            "no triplets",
            scale,
            [0, 0, 0],
            [250, 250, 250],
        );
    }
    for (i, text) in lines.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        draw_text(
            &mut out,
            scale,
            y0 + i as i64 * line_h,
            text,
            scale,
            contrast(c),
            c,
        );
    }
    out
}
