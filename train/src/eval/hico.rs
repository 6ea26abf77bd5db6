//! HICO-DET evaluation, as `datasets/hico_eval.py::HICOEvaluator` computes it.
//!
//! Per image: every (pair, verb) is a candidate scored `verb_score · correct_mat[verb, object]`;
//! the 100 best are kept with a stable descending sort (ties keep (pair, verb) flat order);
//! optionally the triplet NMS (`IoU_sub^α · IoU_obj^β > thres` suppresses, per
//! (subject label, object label, verb), float32, +1-pixel areas) runs on them. Predictions are
//! then matched greedily in descending score to GT interactions with IoU ≥ 0.5 on both boxes
//! (same category), and each triplet class that occurs in the test GT gets an 11-point
//! interpolated AP. Full / Rare / Non-Rare are the means over all test triplets / those in the
//! rare list / those in the non-rare list ([`HicoSplit`]); zero-shot settings use the unseen
//! HOIs as "rare" and the seen ones as "non-rare".
//!
//! Official defects reproduced by default (see [`HicoCorrections`] for the corrected metric):
//! a prediction whose best-overlapping GT is already matched is a FP even when another matching
//! GT is free, a duplicated GT interaction can never be matched twice (yet counts twice in
//! `n_gt`), and predictions on images without any GT box are ignored.

use std::collections::HashMap;
use std::fmt;

use rlip_data::hico::{COCO_VALID_OBJ_IDS, HoiClass, HoiImageAnnotation, coco_id_to_index};
use serde::Serialize;

use super::{CorrectMat, EvalError, KeptPrediction, PairPredictions};
use super::{ap, assign_greedy, box_matches, invalid, py_float, top_candidates, triplet_nms};

/// A triplet class: (subject class index, object class index, verb index 0..116 for HICO-DET).
pub type Triplet = (i64, i64, i64);

/// One test image's ground truth as the evaluator holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HicoGtImage {
    /// File name.
    pub file_name: String,
    /// Boxes `[x1, y1, x2, y2]` (float32, unclipped).
    pub boxes: Vec<[f32; 4]>,
    /// Class index of each box (position in the 80 COCO ids; a dataset with fewer object classes
    /// uses the first ones).
    pub labels: Vec<i64>,
    /// Interactions (subject box, object box, verb index).
    pub hois: Vec<(usize, usize, i64)>,
}

/// Converts the PPDM-layout test list into evaluator GT (`HICODetection`, val branch), for the
/// official HICO-DET classes (117 verbs, 80 COCO objects).
pub fn hico_gt_from_annotations(
    anns: &[HoiImageAnnotation],
) -> Result<Vec<HicoGtImage>, EvalError> {
    hico_gt_from_annotations_with(anns, 117, 80)
}

/// [`hico_gt_from_annotations`] for a HICO-format dataset with `num_verbs` verbs and
/// `num_objects` (≤ 80) object classes: a box's `category_id` must be one of the first
/// `num_objects` COCO ids (its class is its position in [`COCO_VALID_OBJ_IDS`]), an interaction's
/// verb id must be in `1..=num_verbs`.
pub fn hico_gt_from_annotations_with(
    anns: &[HoiImageAnnotation],
    num_verbs: usize,
    num_objects: usize,
) -> Result<Vec<HicoGtImage>, EvalError> {
    let num_verbs = num_verbs as i64;
    anns.iter()
        .map(|a| {
            let labels = a
                .annotations
                .iter()
                .map(|b| match coco_id_to_index(b.category_id) {
                    Some(i) if i < num_objects => Ok(i as i64),
                    Some(i) => Err(invalid(format!(
                        "{}: COCO id {} is object class {i}, but the dataset has {num_objects} object classes",
                        a.file_name, b.category_id
                    ))),
                    None => Err(invalid(format!(
                        "{}: unknown COCO id {}",
                        a.file_name, b.category_id
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let boxes = a
                .annotations
                .iter()
                .map(|b| b.bbox.map(|x| x as f32))
                .collect();
            let n = labels.len();
            let hois = a
                .hoi_annotation
                .iter()
                .map(|h| {
                    let s = usize::try_from(h.subject_id).ok().filter(|&s| s < n);
                    let o = usize::try_from(h.object_id).ok().filter(|&o| o < n);
                    match (s, o) {
                        (Some(s), Some(o)) if (1..=num_verbs).contains(&h.category_id) => {
                            Ok((s, o, h.category_id - 1))
                        }
                        _ => Err(invalid(format!(
                            "{}: bad interaction ({}, {}, verb {})",
                            a.file_name, h.subject_id, h.object_id, h.category_id
                        ))),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(HicoGtImage {
                file_name: a.file_name.clone(),
                boxes,
                labels,
                hois,
            })
        })
        .collect()
}

/// The rare / non-rare (or unseen / seen) triplet lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HicoSplit {
    /// "Rare" triplets (zero-shot: unseen).
    pub rare: Vec<Triplet>,
    /// "Non-rare" triplets (zero-shot: seen).
    pub non_rare: Vec<Triplet>,
}

/// Zero-shot settings: the three splits hard-coded in `datasets/hico.py::build` (indices into
/// the official 600 HOIs), or an unseen list read from the dataset folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ZeroShotSetting {
    /// Unseen composition, rare first (120 unseen HOIs).
    UcRf,
    /// Unseen composition, non-rare first (120 unseen HOIs).
    UcNf,
    /// Unseen object (the HOIs of 12 objects).
    Uo,
    /// **Our addition**: the unseen HOIs listed in `annotations/unseen_hoi.json` (a JSON list of
    /// 0-based indices into `annotations/hoi_list_new.json`, the form of `unseen_idx` in
    /// `datasets/hico.py::build`), for HICO-format datasets with their own classes such as the
    /// synthetic one ([`rlip_data::synth`]). Build its buckets with [`HicoSplit::from_unseen`].
    UnseenFile,
}

/// UC-RF unseen HOI indices (0-based into the 600-class list), from the RLIPv2 build script.
pub const UC_RF_UNSEEN: [usize; 120] = [
    509, 279, 280, 402, 504, 286, 499, 498, 289, 485, 303, 311, 325, 439, 351, 358, 66, 427, 379,
    418, 70, 416, 389, 90, 395, 76, 397, 84, 135, 262, 401, 592, 560, 586, 548, 593, 526, 181, 257,
    539, 535, 260, 596, 345, 189, 205, 206, 429, 179, 350, 405, 522, 449, 261, 255, 546, 547, 44,
    22, 334, 599, 239, 315, 317, 229, 158, 195, 238, 364, 222, 281, 149, 399, 83, 127, 254, 398,
    403, 555, 552, 520, 531, 440, 436, 482, 274, 8, 188, 216, 597, 77, 407, 556, 469, 474, 107,
    390, 410, 27, 381, 463, 99, 184, 100, 292, 517, 80, 333, 62, 354, 104, 55, 50, 198, 168, 391,
    192, 595, 136, 581,
];

/// UC-NF unseen HOI indices (0-based), from the RLIPv2 build script.
pub const UC_NF_UNSEEN: [usize; 120] = [
    38, 41, 20, 18, 245, 11, 19, 154, 459, 42, 155, 139, 60, 461, 577, 153, 582, 89, 141, 576, 75,
    212, 472, 61, 457, 146, 208, 94, 471, 131, 248, 544, 515, 566, 370, 481, 226, 250, 470, 323,
    169, 480, 479, 230, 385, 73, 159, 190, 377, 176, 249, 371, 284, 48, 583, 53, 162, 140, 185,
    106, 294, 56, 320, 152, 374, 338, 29, 594, 346, 456, 589, 45, 23, 67, 478, 223, 493, 228, 240,
    215, 91, 115, 337, 559, 7, 218, 518, 297, 191, 266, 304, 6, 572, 529, 312, 9, 308, 417, 197,
    193, 163, 455, 25, 54, 575, 446, 387, 483, 534, 340, 508, 110, 329, 246, 173, 506, 383, 93,
    516, 64,
];

/// UO unseen HOI indices (0-based), from the RLIPv2 build script.
pub const UO_UNSEEN: [usize; 100] = [
    111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 224,
    225, 226, 227, 228, 229, 230, 231, 290, 291, 292, 293, 294, 313, 314, 315, 316, 317, 318, 319,
    320, 321, 322, 323, 324, 336, 337, 338, 339, 340, 341, 418, 419, 420, 421, 422, 423, 424, 425,
    426, 427, 428, 429, 430, 431, 432, 433, 453, 454, 455, 456, 457, 458, 459, 460, 461, 462, 463,
    464, 465, 466, 467, 468, 469, 470, 471, 472, 473, 533, 534, 535, 536, 537, 558, 559, 560, 561,
    595, 596, 597, 598, 599,
];

impl ZeroShotSetting {
    /// The unseen HOI indices of an official setting (into the official 600-class list);
    /// `None` for [`ZeroShotSetting::UnseenFile`], whose list is in the dataset folder.
    pub fn unseen(self) -> Option<&'static [usize]> {
        match self {
            ZeroShotSetting::UcRf => Some(&UC_RF_UNSEEN),
            ZeroShotSetting::UcNf => Some(&UC_NF_UNSEEN),
            ZeroShotSetting::Uo => Some(&UO_UNSEEN),
            ZeroShotSetting::UnseenFile => None,
        }
    }

    /// The name used on the command line (`UC-RF`, `UC-NF`, `UO`, `unseen-file`).
    pub fn name(self) -> &'static str {
        match self {
            ZeroShotSetting::UcRf => "UC-RF",
            ZeroShotSetting::UcNf => "UC-NF",
            ZeroShotSetting::Uo => "UO",
            ZeroShotSetting::UnseenFile => "unseen-file",
        }
    }
}

impl HicoSplit {
    /// Default setting: triplets with fewer than 10 instances in the training list are rare
    /// (`HICODetection.set_rare_hois`), in order of first appearance.
    pub fn from_training_counts(train: &[HoiImageAnnotation]) -> Result<Self, EvalError> {
        let mut order: Vec<Triplet> = Vec::new();
        let mut counts: HashMap<Triplet, usize> = HashMap::new();
        for img in train {
            for h in &img.hoi_annotation {
                let cat = |id: i64| -> Result<i64, EvalError> {
                    let b = usize::try_from(id)
                        .ok()
                        .and_then(|i| img.annotations.get(i))
                        .ok_or_else(|| {
                            invalid(format!("{}: box index {id} out of range", img.file_name))
                        })?;
                    coco_id_to_index(b.category_id)
                        .map(|i| i as i64)
                        .ok_or_else(|| {
                            invalid(format!(
                                "{}: unknown COCO id {}",
                                img.file_name, b.category_id
                            ))
                        })
                };
                let t = (cat(h.subject_id)?, cat(h.object_id)?, h.category_id - 1);
                let c = counts.entry(t).or_insert(0);
                if *c == 0 {
                    order.push(t);
                }
                *c += 1;
            }
        }
        let (rare, non_rare) = order.into_iter().partition(|t| counts[t] < 10);
        Ok(HicoSplit { rare, non_rare })
    }

    /// Zero-shot setting: unseen HOIs are "rare", the other HOIs of the 600 are "non-rare"
    /// (`HICODetection.set_seen_hois`); the subject is always person.
    /// [`ZeroShotSetting::UnseenFile`] has no built-in list: it is an error here (use
    /// [`HicoSplit::from_unseen`] with the indices of `unseen_hoi.json`).
    pub fn zero_shot(setting: ZeroShotSetting, hoi_list: &[HoiClass]) -> Result<Self, EvalError> {
        let unseen = setting.unseen().ok_or_else(|| {
            invalid(
                "the unseen-file zero-shot setting has no built-in unseen list (read annotations/unseen_hoi.json and use HicoSplit::from_unseen)",
            )
        })?;
        Self::from_unseen(unseen, hoi_list)
    }

    /// Like [`HicoSplit::zero_shot`] with an explicit list of unseen HOI indices.
    pub fn from_unseen(unseen: &[usize], hoi_list: &[HoiClass]) -> Result<Self, EvalError> {
        let triplet = |i: usize| -> Result<Triplet, EvalError> {
            let c = hoi_list
                .get(i)
                .ok_or_else(|| invalid(format!("HOI index {i} outside the HOI list")))?;
            let o = coco_id_to_index(c.object_cat)
                .ok_or_else(|| invalid(format!("HOI {i}: unknown COCO id {}", c.object_cat)))?;
            Ok((0, o as i64, c.verb_id - 1))
        };
        let rare = unseen
            .iter()
            .map(|&u| triplet(u))
            .collect::<Result<Vec<_>, _>>()?;
        let non_rare = (0..hoi_list.len())
            .filter(|i| !unseen.contains(i))
            .map(triplet)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HicoSplit { rare, non_rare })
    }
}

/// Which HICO-DET setting to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum HicoSetting {
    /// The official Default setting: every test image counts for every triplet class.
    #[default]
    Default,
    /// **Our addition** (the official RLIPv2 code lacks it): the HICO-DET benchmark's
    /// Known-Object setting. For a triplet class with object *o*, only images whose GT contains an
    /// interaction with an object of class *o* are evaluated; predictions of that class on other
    /// images are dropped (neither TP nor FP). GT counts are unchanged (every GT instance lies in
    /// such an image).
    KnownObject,
}

/// Switches that correct the official evaluator's defects. All `false` (the default) reproduces
/// the official numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct HicoCorrections {
    /// Match each prediction to the best-overlapping GT interaction that is *still free*, and
    /// treat duplicated GT entries as separate GT (official: the best-overlapping GT, a FP if
    /// that one is already taken; a duplicate is looked up as its first copy).
    pub match_free_gt: bool,
    /// Count predictions (of test triplet classes) on images without GT boxes as FPs (official:
    /// they are ignored because a list is compared with tuples).
    pub no_gt_image_predictions_are_fp: bool,
}

/// Evaluation options. [`HicoEvalConfig::default`] is the official configuration without NMS;
/// [`HicoEvalConfig::official_with_nms`] the one with it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HicoEvalConfig {
    /// Predictions kept per image (100).
    pub max_hois: usize,
    /// IoU threshold for a box match (0.5, inclusive).
    pub overlap_iou: f64,
    /// Apply the triplet NMS (`--use_nms_filter`).
    pub use_nms: bool,
    /// NMS threshold (0.7).
    pub thres_nms: f32,
    /// Exponent of the subject IoU (1).
    pub nms_alpha: f32,
    /// Exponent of the object IoU (0.5).
    pub nms_beta: f32,
    /// Default or Known-Object.
    pub setting: HicoSetting,
    /// Corrections of official defects (all off = official).
    pub corrections: HicoCorrections,
}

impl Default for HicoEvalConfig {
    fn default() -> Self {
        HicoEvalConfig {
            max_hois: 100,
            overlap_iou: 0.5,
            use_nms: false,
            thres_nms: 0.7,
            nms_alpha: 1.0,
            nms_beta: 0.5,
            setting: HicoSetting::Default,
            corrections: HicoCorrections::default(),
        }
    }
}

impl HicoEvalConfig {
    /// The official configuration with the triplet NMS (0.7, α = 1, β = 0.5).
    pub fn official_with_nms() -> Self {
        HicoEvalConfig {
            use_nms: true,
            ..Self::default()
        }
    }
}

/// Which bucket a triplet class falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    /// In the rare (unseen) list.
    Rare,
    /// In the non-rare (seen) list.
    NonRare,
    /// In neither list: counts only in the full mAP (the official code prints a warning).
    Neither,
}

/// Result of one test triplet class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HicoClassResult {
    /// (subject idx, object idx, verb idx).
    pub triplet: Triplet,
    /// (subject COCO id, object COCO id, verb id 1..=verbs).
    pub triplet_ids: (i64, i64, i64),
    /// GT instances.
    pub n_gt: usize,
    /// Predictions counted for this class.
    pub n_pred: usize,
    /// True positives.
    pub n_tp: usize,
    /// 11-point AP.
    pub ap: f64,
    /// Recall after the last prediction.
    pub max_recall: f64,
    /// Bucket.
    pub bucket: Bucket,
}

/// The official metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HicoMetrics {
    /// Full mAP.
    #[serde(rename = "mAP")]
    pub map: f64,
    /// Rare (zero-shot: unseen) mAP; NaN when no test class is rare.
    #[serde(rename = "mAP rare")]
    pub map_rare: f64,
    /// Non-rare (zero-shot: seen) mAP; NaN when no test class is non-rare.
    #[serde(rename = "mAP non-rare")]
    pub map_non_rare: f64,
    /// Mean of per-class max recall.
    #[serde(rename = "mean max recall")]
    pub mean_max_recall: f64,
}

/// The HICO-DET report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HicoReport {
    /// Options used.
    pub config: HicoEvalConfig,
    /// Metrics.
    pub metrics: HicoMetrics,
    /// Per test triplet class, in the evaluator's order (first appearance in the GT).
    pub per_class: Vec<HicoClassResult>,
    /// Each image's kept predictions before matching.
    pub per_image_kept: Vec<Vec<KeptPrediction>>,
    /// Warnings the official code prints (classes in neither bucket).
    pub warnings: Vec<String>,
}

#[derive(Default)]
struct ClassAcc {
    scores: Vec<f32>,
    tp: Vec<bool>,
}

/// Evaluates HICO-DET predictions (one [`PairPredictions`] per GT image, same order).
pub fn evaluate_hico(
    preds: &[PairPredictions],
    gts: &[HicoGtImage],
    correct_mat: &CorrectMat,
    split: &HicoSplit,
    cfg: &HicoEvalConfig,
) -> Result<HicoReport, EvalError> {
    if preds.len() != gts.len() {
        return Err(invalid(format!(
            "{} prediction images but {} GT images",
            preds.len(),
            gts.len()
        )));
    }
    // Test triplets in order of first appearance, with GT counts.
    let mut gt_triplets: Vec<Triplet> = Vec::new();
    let mut tindex: HashMap<Triplet, usize> = HashMap::new();
    let mut n_gt: Vec<usize> = Vec::new();
    for g in gts {
        if g.boxes.len() != g.labels.len() {
            return Err(invalid(format!(
                "{}: {} boxes but {} labels",
                g.file_name,
                g.boxes.len(),
                g.labels.len()
            )));
        }
        for &(s, o, v) in &g.hois {
            if s >= g.labels.len() || o >= g.labels.len() {
                return Err(invalid(format!(
                    "{}: interaction box index out of range",
                    g.file_name
                )));
            }
            let t = (g.labels[s], g.labels[o], v);
            let i = *tindex.entry(t).or_insert_with(|| {
                gt_triplets.push(t);
                n_gt.push(0);
                gt_triplets.len() - 1
            });
            n_gt[i] += 1;
        }
    }
    let mut acc: Vec<ClassAcc> = gt_triplets.iter().map(|_| ClassAcc::default()).collect();
    let mut per_image_kept = Vec::with_capacity(preds.len());

    for (pred, gt) in preds.iter().zip(gts) {
        pred.validate()?;
        let mut kept = top_candidates(pred, cfg.max_hois, |p, v| {
            correct_mat.get(v, pred.labels[pred.obj_ids[p]])
        })?;
        if cfg.use_nms {
            kept = triplet_nms(&kept, pred, cfg.thres_nms, cfg.nms_alpha, cfg.nms_beta);
        }
        per_image_kept.push(kept.clone());

        let triplet_of = |k: &KeptPrediction| {
            (
                pred.labels[k.subject_id],
                pred.labels[k.object_id],
                k.verb as i64,
            )
        };
        if cfg.setting == HicoSetting::KnownObject {
            let objs: Vec<i64> = gt.hois.iter().map(|&(_, o, _)| gt.labels[o]).collect();
            kept.retain(|k| objs.contains(&pred.labels[k.object_id]));
        }
        if gt.boxes.is_empty() || kept.is_empty() {
            if cfg.corrections.no_gt_image_predictions_are_fp {
                for k in &kept {
                    if let Some(&c) = tindex.get(&triplet_of(k)) {
                        acc[c].scores.push(k.score);
                        acc[c].tp.push(false);
                    }
                }
            }
            continue;
        }
        let matches = box_matches(
            &gt.boxes,
            &gt.labels,
            &pred.boxes,
            &pred.labels,
            cfg.overlap_iou,
        );
        // compute_fptp re-sorts by score (stable).
        let scores: Vec<f32> = kept.iter().map(|k| k.score).collect();
        let order = ap::argsort_desc_stable(&scores);
        let mut taken = vec![false; gt.hois.len()];
        let canonical = |g: usize| gt.hois.iter().position(|h| *h == gt.hois[g]).unwrap_or(g);
        for &i in &order {
            let k = kept[i];
            let sub_m = &matches[k.subject_id];
            let obj_m = &matches[k.object_id];
            let candidates = gt.hois.iter().enumerate().filter_map(|(g, &(gs, go, gv))| {
                if gv != k.verb as i64 {
                    return None;
                }
                let so = sub_m.iter().find(|m| m.0 == gs)?.1;
                let oo = obj_m.iter().find(|m| m.0 == go)?.1;
                Some((g, so.min(oo)))
            });
            let t = triplet_of(&k);
            let Some(&c) = tindex.get(&t) else {
                continue;
            };
            let is_tp = assign_greedy(
                candidates,
                &mut taken,
                canonical,
                cfg.corrections.match_free_gt,
            );
            acc[c].scores.push(k.score);
            acc[c].tp.push(is_tp);
        }
    }

    let bucket_of = |t: &Triplet| {
        if split.rare.contains(t) {
            Bucket::Rare
        } else if split.non_rare.contains(t) {
            Bucket::NonRare
        } else {
            Bucket::Neither
        }
    };
    let mut per_class = Vec::with_capacity(gt_triplets.len());
    let mut warnings = Vec::new();
    for (c, t) in gt_triplets.iter().enumerate() {
        let a = &acc[c];
        let (ap_v, max_recall, n_tp) = if a.tp.is_empty() {
            (0.0, 0.0, 0)
        } else {
            let r = ap::ranked_11point_ap(&a.scores, &a.tp, n_gt[c]);
            (r.ap, r.max_recall, r.n_tp)
        };
        let bucket = bucket_of(t);
        if bucket == Bucket::Neither {
            warnings.push(format!(
                "Warning: triplet {t:?} is neither in rare triplets nor in non-rare triplets"
            ));
        }
        let id = |i: i64| {
            usize::try_from(i)
                .ok()
                .and_then(|i| COCO_VALID_OBJ_IDS.get(i).copied())
                .unwrap_or(-1)
        };
        per_class.push(HicoClassResult {
            triplet: *t,
            triplet_ids: (id(t.0), id(t.1), t.2 + 1),
            n_gt: n_gt[c],
            n_pred: a.tp.len(),
            n_tp,
            ap: ap_v,
            max_recall,
            bucket,
        });
    }
    let aps = |f: &dyn Fn(&HicoClassResult) -> bool| -> Vec<f64> {
        per_class.iter().filter(|c| f(c)).map(|c| c.ap).collect()
    };
    let metrics = HicoMetrics {
        map: ap::np_mean(&aps(&|_| true)),
        map_rare: ap::np_mean(&aps(&|c| c.bucket == Bucket::Rare)),
        map_non_rare: ap::np_mean(&aps(&|c| c.bucket == Bucket::NonRare)),
        mean_max_recall: ap::np_mean(&per_class.iter().map(|c| c.max_recall).collect::<Vec<_>>()),
    };
    Ok(HicoReport {
        config: *cfg,
        metrics,
        per_class,
        per_image_kept,
        warnings,
    })
}

impl HicoReport {
    /// The metric line the official evaluator prints.
    pub fn official_line(&self) -> String {
        let m = &self.metrics;
        format!(
            "mAP: {} mAP rare (unseen): {}  mAP non-rare (seen): {}  mean max recall: {}",
            py_float(m.map),
            py_float(m.map_rare),
            py_float(m.map_non_rare),
            py_float(m.mean_max_recall)
        )
    }
}

impl fmt::Display for HicoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for w in &self.warnings {
            writeln!(f, "{w}")?;
        }
        writeln!(f, "--------------------")?;
        writeln!(f, "{}", self.official_line())?;
        writeln!(f, "--------------------")?;
        if self.config.setting == HicoSetting::KnownObject {
            writeln!(
                f,
                "(Known-Object setting: our addition, not computed by the official RLIPv2 code)"
            )?;
        }
        let c = self.config.corrections;
        if c.match_free_gt || c.no_gt_image_predictions_are_fp {
            writeln!(f, "(corrected metric, not the official number: {c:?})")?;
        }
        Ok(())
    }
}

/// The HICO-DET prediction side of the official evaluator for one image: (pair, verb) scores
/// multiplied by the verb–object validity matrix, the `max_hois` best kept (stable descending
/// order), then, with `nms = Some((threshold, alpha, beta))`, the official triplet NMS (its output
/// is grouped by triplet in order of first appearance).
pub fn hico_candidates(
    pred: &PairPredictions,
    correct_mat: &CorrectMat,
    max_hois: usize,
    nms: Option<(f32, f32, f32)>,
) -> Result<Vec<KeptPrediction>, EvalError> {
    pred.validate()?;
    let kept = top_candidates(pred, max_hois, |p, v| {
        correct_mat.get(v, pred.labels[pred.obj_ids[p]])
    })?;
    Ok(match nms {
        Some((t, a, b)) => triplet_nms(&kept, pred, t, a, b),
        None => kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_object_drops_predictions_on_images_without_the_object() {
        let person = [0.0, 0.0, 10.0, 10.0];
        let thing = [20.0, 20.0, 30.0, 30.0];
        let gts = vec![
            HicoGtImage {
                file_name: "a".into(),
                boxes: vec![person, thing],
                labels: vec![0, 5],
                hois: vec![(0, 1, 3)],
            },
            // Image b has a person doing something with object class 7 only.
            HicoGtImage {
                file_name: "b".into(),
                boxes: vec![person, thing],
                labels: vec![0, 7],
                hois: vec![(0, 1, 2)],
            },
        ];
        let pred = |score: f32| PairPredictions {
            labels: vec![0, 5],
            boxes: vec![person, thing],
            verb_scores: vec![0.0, 0.0, 0.0, score],
            num_verbs: 4,
            sub_ids: vec![0],
            obj_ids: vec![1],
        };
        // The prediction on image b (object 5, not present there) outranks the TP on image a.
        let preds = vec![pred(0.5), pred(0.9)];
        let mat = CorrectMat {
            num_verbs: 4,
            num_objects: 8,
            values: vec![1.0; 32],
        };
        let split = HicoSplit {
            rare: vec![(0, 5, 3)],
            non_rare: vec![(0, 7, 2)],
        };
        let cfg = HicoEvalConfig {
            max_hois: 1,
            ..HicoEvalConfig::default()
        };
        let def = evaluate_hico(&preds, &gts, &mat, &split, &cfg).unwrap();
        assert_eq!(def.per_class[0].n_pred, 2);
        assert!((def.per_class[0].ap - 6.0 / 11.0 * 0.5 - 5.0 / 11.0 * 0.5).abs() < 1e-12);
        let ko = evaluate_hico(
            &preds,
            &gts,
            &mat,
            &split,
            &HicoEvalConfig {
                setting: HicoSetting::KnownObject,
                ..cfg
            },
        )
        .unwrap();
        assert_eq!(ko.per_class[0].n_pred, 1);
        assert!((ko.per_class[0].ap - 1.0).abs() < 1e-12);
        assert_eq!(ko.metrics.map_non_rare, 0.0);
    }
}
