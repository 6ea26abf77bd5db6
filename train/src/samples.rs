//! Fine-tuning samples from the annotation files of HICO-DET, V-COCO and Open Images v6, built
//! the way the train branches of the official `datasets/hico.py`, `vcoco.py` and `oi_sgg.py`
//! build their targets, and the model inputs of one augmented sample ([`to_input`]).
//!
//! Shared rules: at most `max_boxes` boxes per image (the official loaders keep the first
//! `num_queries`), boxes clamped to the image and removed when left without area, relations
//! pointing at a removed box dropped, relations of one (subject, object) merged into a
//! multi-label pair.

use std::path::{Path, PathBuf};

use rlip_data::DataError;
use rlip_data::hico::{HoiImageAnnotation, coco_id_to_index};
use rlip_data::oi::OiImageAnnotation;
use rlip_data::preprocess::{load_rgb, normalize};

use crate::matcher::PairTargets;
use crate::trainer::TrainSample;

/// Which fine-tuning dataset a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinetuneDataset {
    /// HICO-DET (`images/train2015`, `annotations/trainval_hico.json`; verbs 1-based).
    Hico,
    /// V-COCO in the HOIA layout (`images/train2014`, `annotations/trainval_vcoco.json`; verb
    /// roles 0-based, `object_id` −1 for actions without an object).
    Vcoco,
    /// Open Images v6 scene graphs (`images/`, `annotations/OI_SGG_train_finetuning.json`;
    /// subjects of any class, 30 relations).
    Oi,
}

impl FinetuneDataset {
    /// The official training annotation file under `annotations/`.
    pub fn default_annotations(self) -> &'static str {
        match self {
            Self::Hico => "trainval_hico.json",
            Self::Vcoco => "trainval_vcoco.json",
            Self::Oi => "OI_SGG_train_finetuning.json",
        }
    }

    /// The training image folder below the dataset root.
    pub fn image_dir(self, root: &Path) -> PathBuf {
        match self {
            Self::Hico => root.join("images").join("train2015"),
            Self::Vcoco => root.join("images").join("train2014"),
            Self::Oi => root.join("images"),
        }
    }
}

/// One relation of an image before the box rules: subject box, object box (`None`: no
/// object), relation class.
type RawRelation = (usize, Option<usize>, usize);

/// Applies the shared rules to one image (see the module documentation).
fn build_sample(
    path: &Path,
    boxes: &[([f64; 4], usize)],
    relations: &[RawRelation],
    max_boxes: usize,
) -> Result<TrainSample, DataError> {
    let image = load_rgb(path)?;
    let (w, h) = (image.width as f64, image.height as f64);
    let mut keep_index = vec![None; boxes.len()];
    let (mut kept, mut labels) = (Vec::new(), Vec::new());
    for (i, &([x0, y0, x1, y1], label)) in boxes.iter().enumerate().take(max_boxes) {
        if [x0, y0, x1, y1].iter().any(|v| !v.is_finite()) {
            return Err(DataError::invalid(
                path,
                format!("box {i}: non-finite coordinates"),
            ));
        }
        let c = [
            x0.clamp(0.0, w),
            y0.clamp(0.0, h),
            x1.clamp(0.0, w),
            y1.clamp(0.0, h),
        ];
        if c[2] > c[0] && c[3] > c[1] {
            keep_index[i] = Some(kept.len());
            kept.push(c.map(|v| v as f32));
            labels.push(label);
        }
    }
    let mut pairs: Vec<(usize, Option<usize>, Vec<usize>)> = Vec::new();
    for &(s, o, v) in relations {
        let Some(s) = keep_index[s] else { continue };
        let o = match o {
            Some(o) => match keep_index[o] {
                Some(k) => Some(k),
                None => continue,
            },
            None => None,
        };
        match pairs.iter_mut().find(|p| p.0 == s && p.1 == o) {
            Some(p) if !p.2.contains(&v) => p.2.push(v),
            Some(_) => {}
            None => pairs.push((s, o, vec![v])),
        }
    }
    Ok(TrainSample {
        image,
        boxes: kept,
        labels,
        pairs,
    })
}

/// `index` as a relation class `< num_verbs`, or an error naming the file.
fn verb(path: &Path, id: i64, offset: i64, num_verbs: usize) -> Result<usize, DataError> {
    usize::try_from(id - offset)
        .ok()
        .filter(|&v| v < num_verbs)
        .ok_or_else(|| {
            DataError::invalid(
                path,
                format!(
                    "relation category_id {id} outside {offset}..{}",
                    num_verbs as i64 + offset
                ),
            )
        })
}

/// `(bbox, category_id)` pairs with their class index from `label`; an id without one is an
/// error naming the box (`unknown` says which list it is missing from).
fn labelled_boxes(
    path: &Path,
    boxes: impl Iterator<Item = ([f64; 4], i64)>,
    label: impl Fn(i64) -> Option<usize>,
    unknown: &str,
) -> Result<Vec<([f64; 4], usize)>, DataError> {
    boxes
        .enumerate()
        .map(|(i, (bbox, id))| {
            let l = label(id).ok_or_else(|| {
                DataError::invalid(path, format!("box {i}: category_id {id} {unknown}"))
            })?;
            Ok((bbox, l))
        })
        .collect()
}

/// Whether every `(subject, object)` index is one of `n` boxes (the official loaders drop the
/// image otherwise).
fn indices_in_range(n: usize, mut pairs: impl Iterator<Item = (i64, i64)>) -> bool {
    let ok = |i: i64| (0..n as i64).contains(&i);
    pairs.all(|(s, o)| ok(s) && ok(o))
}

/// `(subject, object, category_id)` relations with checked indices as [`RawRelation`]s with
/// relation class `category_id − offset`.
fn object_relations(
    path: &Path,
    relations: impl Iterator<Item = (i64, i64, i64)>,
    offset: i64,
    num_verbs: usize,
) -> Result<Vec<RawRelation>, DataError> {
    relations
        .map(|(s, o, id)| {
            Ok((
                s as usize,
                Some(o as usize),
                verb(path, id, offset, num_verbs)?,
            ))
        })
        .collect()
}

/// HICO-DET training samples (`datasets/hico.py`): images whose relations point outside their
/// box list are dropped (returned count); `obj_index` maps a `category_id` to a class index;
/// verbs are `category_id − 1`.
pub fn hico_samples(
    annotations: &[HoiImageAnnotation],
    image_dir: &Path,
    obj_index: &dyn Fn(i64) -> Option<usize>,
    num_verbs: usize,
    max_boxes: usize,
) -> Result<(Vec<TrainSample>, usize), DataError> {
    let mut out = Vec::new();
    let mut dropped = 0;
    for ann in annotations {
        let rels = || {
            ann.hoi_annotation
                .iter()
                .map(|r| (r.subject_id, r.object_id, r.category_id))
        };
        if !indices_in_range(ann.annotations.len(), rels().map(|(s, o, _)| (s, o))) {
            dropped += 1;
            continue;
        }
        let path = image_dir.join(&ann.file_name);
        let boxes = labelled_boxes(
            &path,
            ann.annotations.iter().map(|b| (b.bbox, b.category_id)),
            obj_index,
            "is not an object of the label set",
        )?;
        let relations = object_relations(&path, rels(), 1, num_verbs)?;
        out.push(build_sample(&path, &boxes, &relations, max_boxes)?);
    }
    Ok((out, dropped))
}

/// V-COCO training samples (`datasets/vcoco.py`, HOIA layout): box classes are positions of
/// the COCO ids in the 80 valid ids, verb roles are `category_id` (0-based), and an
/// `object_id` of −1 makes a pair without an object (target object box all zeros, object class
/// `missing objects`, see [`to_input`]). Every image is kept (the reader has checked indices).
pub fn vcoco_samples(
    annotations: &[HoiImageAnnotation],
    image_dir: &Path,
    num_verbs: usize,
    max_boxes: usize,
) -> Result<Vec<TrainSample>, DataError> {
    annotations
        .iter()
        .map(|ann| {
            let path = image_dir.join(&ann.file_name);
            let n = ann.annotations.len() as i64;
            let boxes = labelled_boxes(
                &path,
                ann.annotations.iter().map(|b| (b.bbox, b.category_id)),
                coco_id_to_index,
                "is not a COCO object",
            )?;
            let relations = ann
                .hoi_annotation
                .iter()
                .map(|r| {
                    if !(0..n).contains(&r.subject_id) || !(-1..n).contains(&r.object_id) {
                        return Err(DataError::invalid(
                            &path,
                            format!(
                                "relation refers to box {}/{} but the image has {n} boxes",
                                r.subject_id, r.object_id
                            ),
                        ));
                    }
                    let o = usize::try_from(r.object_id).ok();
                    Ok((
                        r.subject_id as usize,
                        o,
                        verb(&path, r.category_id, 0, num_verbs)?,
                    ))
                })
                .collect::<Result<Vec<_>, DataError>>()?;
            build_sample(&path, &boxes, &relations, max_boxes)
        })
        .collect()
}

/// Open Images v6 training samples (`datasets/oi_sgg.py`): images whose relations point
/// outside their box list are dropped (returned count, as the official loader does);
/// box classes are positions of `category_id` in `valid_obj_ids` (the evaluated objects'
/// indices in the full list), relations are `category_id` (0-based); subjects keep their own
/// class.
pub fn oi_samples(
    annotations: &[OiImageAnnotation],
    image_dir: &Path,
    valid_obj_ids: &[i64],
    num_verbs: usize,
    max_boxes: usize,
) -> Result<(Vec<TrainSample>, usize), DataError> {
    let mut out = Vec::new();
    let mut dropped = 0;
    for ann in annotations {
        let rels = || {
            ann.rel_annotations
                .iter()
                .map(|r| (r.subject_id, r.object_id, r.category_id))
        };
        if !indices_in_range(ann.annotations.len(), rels().map(|(s, o, _)| (s, o))) {
            dropped += 1;
            continue;
        }
        let path = image_dir.join(&ann.file_name);
        let boxes = labelled_boxes(
            &path,
            ann.annotations.iter().map(|b| (b.bbox, b.category_id)),
            |id| valid_obj_ids.iter().position(|&v| v == id),
            "is not an evaluated object",
        )?;
        let relations = object_relations(&path, rels(), 0, num_verbs)?;
        out.push(build_sample(&path, &boxes, &relations, max_boxes)?);
    }
    Ok((out, dropped))
}

/// Model inputs of one augmented sample: normalised `[3, h, w]` values and the pair targets
/// (boxes as normalised cxcywh of the image, subject and object classes from the box labels,
/// multi-hot relation rows over `num_verbs`). A pair without an object gets an all-zero object
/// box (no box loss, matched on the subject alone) and the object class `no_object_label`.
pub fn to_input(
    s: &TrainSample,
    num_verbs: usize,
    no_object_label: usize,
) -> ((Vec<f32>, usize, usize), PairTargets) {
    let (w, h) = (s.image.width as f32, s.image.height as f32);
    let norm = |b: [f32; 4]| {
        [
            (b[0] + b[2]) / 2.0 / w,
            (b[1] + b[3]) / 2.0 / h,
            (b[2] - b[0]) / w,
            (b[3] - b[1]) / h,
        ]
    };
    let mut t = PairTargets::default();
    for (sb, ob, verbs) in &s.pairs {
        t.sub_boxes.push(norm(s.boxes[*sb]));
        t.sub_labels.push(s.labels[*sb]);
        match ob {
            Some(o) => {
                t.obj_boxes.push(norm(s.boxes[*o]));
                t.obj_labels.push(s.labels[*o]);
            }
            None => {
                t.obj_boxes.push([0.0; 4]);
                t.obj_labels.push(no_object_label);
            }
        }
        let mut row = vec![0f32; num_verbs];
        for &v in verbs {
            row[v] = 1.0;
        }
        t.verb_labels.push(row);
    }
    ((normalize(&s.image), s.image.height, s.image.width), t)
}
