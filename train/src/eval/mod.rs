//! Evaluators that reproduce the official RLIPv2 numbers, in pure Rust.
//!
//! | module | official code | entry point |
//! |---|---|---|
//! | [`hico`] | `datasets/hico_eval.py::HICOEvaluator` | [`hico::evaluate_hico`] |
//! | [`vcoco`] | `datasets/vsrl_eval.py::VCOCOeval` (scenario 1 / 2, agent AP), `generate_vcoco_official.py`, `datasets/vcoco_eval.py::VCOCOEvaluator` | [`vcoco::evaluate_vcoco_official`], [`vcoco::evaluate_vcoco_in_training`] |
//! | [`oi`] | `datasets/oi_sgg_eval.py::OISGGEvaluator` + `engine.evaluate_sgg_with_text` | [`oi::evaluate_oi`] |
//! | [`postprocess`] | `models/hoi.py::PostProcessHOI`, `PostProcessSGG` | [`postprocess::postprocess_hoi`], [`postprocess::postprocess_sgg`] |
//!
//! Whole-split evaluation (what `rlip eval` runs):
//!
//! | module | contents |
//! |---|---|
//! | [`split`] | [`load_split`]: a dataset folder in the official RLIPv2 layout → [`EvalSplit`] (test images in order, GT, validity matrix, rare / zero-shot buckets) |
//! | [`predictions`] | the saved-predictions JSON format ([`write_predictions`], [`read_predictions`]) |
//! | [`report`] | [`evaluate_split`] → [`EvalReport`] (headline metrics, per-class APs, [`EvalReport::table`]) |
//! | [`golden`] | [`golden::check_case`]: runs one golden case folder and compares every stored number |
//! | [`synth`] | deterministic synthetic HICO-DET / Open Images inputs (benchmarks, property tests) |
//!
//! Predictions come in the layout `PostProcessHOI` / `PostProcessSGG` emit
//! ([`PairPredictions`]); [`load_predictions_npy`] reads them from `.npy` files in the golden
//! layout (`preds_labels.npy`, `preds_boxes.npy`, `preds_verb_scores.npy`, `preds_sub_ids.npy`,
//! `preds_obj_ids.npy`).
//!
//! # Official numbers and corrected metrics
//!
//! By default every evaluator reproduces the official code, defects included, because that is
//! what papers report. Each documented defect can be switched off with a clearly named option;
//! the result is then *not* comparable with published numbers.
//!
//! | defect in the official code | where | default (official) | corrected option |
//! |---|---|---|---|
//! | A prediction whose best-overlapping GT interaction is already matched becomes a FP, even if another matching GT is still free; a GT interaction listed twice can only be matched once (the second copy is looked up as the first) | HICO, OI relations, V-COCO in-training | reproduced | `match_free_gt` ([`hico::HicoCorrections`], [`oi::OiCorrections`], [`vcoco::VcocoInTrainingOptions`]) |
//! | Predictions on an image without GT boxes are silently dropped instead of counted as FPs (a list/tuple comparison never matches) | HICO, OI relations | reproduced | `no_gt_image_predictions_are_fp` |
//! | Phrase detection: matches are computed on the (NMS-grouped) phrase list, then the list is re-sorted by score and phrase *k* of the sorted list uses the matches of phrase *k* of the unsorted one | OI with NMS | reproduced | [`oi::OiCorrections::sort_phrases_before_matching`] |
//! | PhrD "max recall" leaves the GT of triplets without any phrase prediction out of the denominator (RelD counts them) | OI | reproduced | [`oi::OiCorrections::phrase_recall_counts_all_gt`] |
//! | V-COCO official: an image without any GT person makes `argmax` fail (the script crashes) | V-COCO official | detections there count as FPs (documented deviation; the official code has no number) | — |
//!
//! The HICO-DET **Known-Object** setting is our addition (the official RLIPv2 code lacks it); it
//! follows the HICO-DET benchmark definition. See [`hico::HicoSetting`].

pub mod ap;
pub mod golden;
pub mod hico;
pub mod oi;
pub mod postprocess;
pub mod predictions;
pub mod report;
pub mod split;
pub mod synth;
pub mod vcoco;

pub use predictions::{
    ImagePredictions, PredictionsFile, read_predictions, read_predictions_file, write_predictions,
    write_split_predictions,
};
pub use report::{EvalOptions, EvalReport, evaluate_split, evaluate_vcoco_detections};
pub use split::{Dataset, EvalImage, EvalSplit, SplitConfig, load_split, load_split_with};

use std::path::{Path, PathBuf};

use rlip_data::DataError;
use rlip_data::npy::read_npy;
use serde::Serialize;

/// An evaluation error: bad input files or inconsistent arrays. Never a panic.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading an input file failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Predictions, ground truth or options are inconsistent.
    #[error("invalid evaluation input: {0}")]
    Invalid(String),
    /// A file the evaluation needs does not exist.
    #[error("{path}: missing {what}")]
    MissingFile {
        /// Where the file was looked for.
        path: PathBuf,
        /// What the file is (and where else it was looked for).
        what: String,
    },
    /// A predictions file is malformed or does not fit the split; the message names the image
    /// and the field.
    #[error("{path}: {msg}")]
    Predictions {
        /// The predictions file.
        path: PathBuf,
        /// What is wrong, naming the image and the field.
        msg: String,
    },
    /// Writing an output file failed.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

pub(crate) fn invalid(msg: impl Into<String>) -> EvalError {
    EvalError::Invalid(msg.into())
}

/// One image's predictions in the `PostProcessHOI` / `PostProcessSGG` layout.
///
/// For `np` pairs: `labels` and `boxes` have 2·np entries (subjects first, then objects),
/// `verb_scores` is `[np, num_verbs]` row-major, and pair *p* is
/// `(sub_ids[p], obj_ids[p])` — indices into `labels` / `boxes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairPredictions {
    /// Class index of each box (HICO / V-COCO: position in the 80 COCO ids; OI: position in the
    /// evaluated object list).
    pub labels: Vec<i64>,
    /// `[x1, y1, x2, y2]` in original-image pixels.
    pub boxes: Vec<[f32; 4]>,
    /// Verb (relation) scores, `[num_pairs, num_verbs]` row-major.
    pub verb_scores: Vec<f32>,
    /// Number of verb classes (columns of `verb_scores`).
    pub num_verbs: usize,
    /// Subject box index of each pair.
    pub sub_ids: Vec<usize>,
    /// Object box index of each pair.
    pub obj_ids: Vec<usize>,
}

impl PairPredictions {
    /// Number of pairs.
    pub fn num_pairs(&self) -> usize {
        self.sub_ids.len()
    }

    /// Score of pair `p`, verb `v`.
    pub fn score(&self, p: usize, v: usize) -> f32 {
        self.verb_scores[p * self.num_verbs + v]
    }

    /// Checks that all indices and lengths are consistent.
    pub fn validate(&self) -> Result<(), EvalError> {
        let n = self.labels.len();
        if self.boxes.len() != n {
            return Err(invalid(format!(
                "{} labels but {} boxes",
                n,
                self.boxes.len()
            )));
        }
        if self.obj_ids.len() != self.sub_ids.len() {
            return Err(invalid("sub_ids and obj_ids differ in length"));
        }
        if self.verb_scores.len() != self.sub_ids.len() * self.num_verbs {
            return Err(invalid(format!(
                "verb_scores has {} values, expected {} pairs x {} verbs",
                self.verb_scores.len(),
                self.sub_ids.len(),
                self.num_verbs
            )));
        }
        if let Some(&bad) = self.sub_ids.iter().chain(&self.obj_ids).find(|&&i| i >= n) {
            return Err(invalid(format!("box index {bad} out of range ({n} boxes)")));
        }
        Ok(())
    }
}

/// Reads predictions saved as `.npy` files in the golden layout:
/// `{prefix}labels.npy` (int [N, 2np]), `{prefix}boxes.npy` (float32 [N, 2np, 4]),
/// `{prefix}verb_scores.npy` (float32 [N, np, V]), `{prefix}sub_ids.npy` and
/// `{prefix}obj_ids.npy` (int [N, np]).
pub fn load_predictions_npy(
    dir: impl AsRef<Path>,
    prefix: &str,
) -> Result<Vec<PairPredictions>, EvalError> {
    let dir = dir.as_ref();
    let p = |name: &str| dir.join(format!("{prefix}{name}.npy"));
    let bad = |name: &str, msg: String| -> EvalError {
        EvalError::Data(DataError::Invalid { path: p(name), msg })
    };
    let labels = read_npy(p("labels"))?;
    let boxes = read_npy(p("boxes"))?;
    let scores = read_npy(p("verb_scores"))?;
    let sub_ids = read_npy(p("sub_ids"))?;
    let obj_ids = read_npy(p("obj_ids"))?;
    if labels.shape.len() != 2 {
        return Err(bad(
            "labels",
            format!("expected [N, 2np], got shape {:?}", labels.shape),
        ));
    }
    let (n, two_np) = (labels.shape[0], labels.shape[1]);
    if boxes.shape != [n, two_np, 4] {
        return Err(bad(
            "boxes",
            format!("expected shape [{n}, {two_np}, 4], got {:?}", boxes.shape),
        ));
    }
    if scores.shape.len() != 3 || scores.shape[0] != n {
        return Err(bad(
            "verb_scores",
            format!("expected [{n}, np, V], got {:?}", scores.shape),
        ));
    }
    let (np, v) = (scores.shape[1], scores.shape[2]);
    for (name, a) in [("sub_ids", &sub_ids), ("obj_ids", &obj_ids)] {
        if a.shape != [n, np] {
            return Err(bad(
                name,
                format!("expected shape [{n}, {np}], got {:?}", a.shape),
            ));
        }
    }
    let labels_v = labels
        .to_i64_vec()
        .ok_or_else(|| bad("labels", "expected an integer dtype".into()))?;
    let boxes_v = boxes
        .as_f32()
        .ok_or_else(|| bad("boxes", "expected float32".into()))?;
    let scores_v = scores
        .as_f32()
        .ok_or_else(|| bad("verb_scores", "expected float32".into()))?;
    let to_idx = |name: &str, a: &rlip_data::npy::NpyArray| -> Result<Vec<usize>, EvalError> {
        a.to_i64_vec()
            .ok_or_else(|| bad(name, "expected an integer dtype".into()))?
            .into_iter()
            .map(|x| usize::try_from(x).map_err(|_| bad(name, format!("negative index {x}"))))
            .collect()
    };
    let sub_v = to_idx("sub_ids", &sub_ids)?;
    let obj_v = to_idx("obj_ids", &obj_ids)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let pred = PairPredictions {
            labels: labels_v[i * two_np..(i + 1) * two_np].to_vec(),
            boxes: boxes_v[i * two_np * 4..(i + 1) * two_np * 4]
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect(),
            verb_scores: scores_v[i * np * v..(i + 1) * np * v].to_vec(),
            num_verbs: v,
            sub_ids: sub_v[i * np..(i + 1) * np].to_vec(),
            obj_ids: obj_v[i * np..(i + 1) * np].to_vec(),
        };
        pred.validate()
            .map_err(|e| invalid(format!("{}: image {i}: {e}", dir.display())))?;
        out.push(pred);
    }
    Ok(out)
}

/// A verb × object validity matrix (`corre_hico.npy`, `corre_vcoco.npy`): `[num_verbs, num_objects]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrectMat {
    /// Number of verbs (rows).
    pub num_verbs: usize,
    /// Number of objects (columns).
    pub num_objects: usize,
    /// Row-major values.
    pub values: Vec<f64>,
}

impl CorrectMat {
    /// Reads a `[V, O]` float matrix from a `.npy` file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, EvalError> {
        let path = path.as_ref();
        let a = read_npy(path)?;
        if a.shape.len() != 2 {
            return Err(EvalError::Data(DataError::Invalid {
                path: path.to_path_buf(),
                msg: format!(
                    "expected a [verbs, objects] matrix, got shape {:?}",
                    a.shape
                ),
            }));
        }
        Ok(CorrectMat {
            num_verbs: a.shape[0],
            num_objects: a.shape[1],
            values: a.to_f64_vec(),
        })
    }

    /// The matrix with a column of ones appended (what the V-COCO code does for the
    /// "missing object" label).
    pub fn with_ones_column(&self) -> Self {
        let o = self.num_objects + 1;
        let mut values = Vec::with_capacity(self.num_verbs * o);
        for v in 0..self.num_verbs {
            values
                .extend_from_slice(&self.values[v * self.num_objects..(v + 1) * self.num_objects]);
            values.push(1.0);
        }
        CorrectMat {
            num_verbs: self.num_verbs,
            num_objects: o,
            values,
        }
    }

    /// Value for verb `v` and object label `o`, or an error when out of range.
    pub fn get(&self, v: usize, o: i64) -> Result<f64, EvalError> {
        let oi = usize::try_from(o)
            .ok()
            .filter(|&o| o < self.num_objects)
            .ok_or_else(|| {
                invalid(format!(
                    "object label {o} outside the {}-column validity matrix",
                    self.num_objects
                ))
            })?;
        if v >= self.num_verbs {
            return Err(invalid(format!(
                "verb {v} outside the {}-row validity matrix",
                self.num_verbs
            )));
        }
        Ok(self.values[v * self.num_objects + oi])
    }
}

/// One kept prediction as the evaluators hold it before matching: (subject box, object box,
/// verb, score).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KeptPrediction {
    /// Subject box index.
    pub subject_id: usize,
    /// Object box index.
    pub object_id: usize,
    /// Verb (relation) index.
    pub verb: usize,
    /// Score (after the validity mask).
    pub score: f32,
}

/// The flattened (pair, verb) candidates of one image, scored and cut to the `max` best with a
/// stable descending sort (ties keep flat-index order), as the official evaluators do.
pub(crate) fn top_candidates(
    pred: &PairPredictions,
    max: usize,
    mut mask: impl FnMut(usize, usize) -> Result<f64, EvalError>,
) -> Result<Vec<KeptPrediction>, EvalError> {
    let v = pred.num_verbs;
    let mut cands = Vec::with_capacity(pred.num_pairs() * v);
    for p in 0..pred.num_pairs() {
        for verb in 0..v {
            let s = pred.score(p, verb);
            let m = mask(p, verb)?;
            // `hoi_scores *= masks`: float32 *= float64 computes in float64, stores float32.
            let s = if m == 1.0 { s } else { (s as f64 * m) as f32 };
            cands.push(KeptPrediction {
                subject_id: pred.sub_ids[p],
                object_id: pred.obj_ids[p],
                verb,
                score: s,
            });
        }
    }
    let scores: Vec<f32> = cands.iter().map(|c| c.score).collect();
    let order = ap::argsort_desc_stable(&scores);
    Ok(order.into_iter().take(max).map(|i| cands[i]).collect())
}

/// Groups predictions by triplet class in order of first appearance and applies the official
/// triplet NMS to each group; returns the kept predictions, grouped.
pub(crate) fn triplet_nms(
    kept: &[KeptPrediction],
    pred: &PairPredictions,
    thres: f32,
    alpha: f32,
    beta: f32,
) -> Vec<KeptPrediction> {
    let mut groups: Vec<((i64, i64, usize), Vec<usize>)> = Vec::new();
    let mut index: std::collections::HashMap<(i64, i64, usize), usize> =
        std::collections::HashMap::new();
    for (i, k) in kept.iter().enumerate() {
        let key = (pred.labels[k.subject_id], pred.labels[k.object_id], k.verb);
        let g = *index.entry(key).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    let mut out = Vec::with_capacity(kept.len());
    for (_, members) in &groups {
        let subs: Vec<[f32; 4]> = members
            .iter()
            .map(|&i| pred.boxes[kept[i].subject_id])
            .collect();
        let objs: Vec<[f32; 4]> = members
            .iter()
            .map(|&i| pred.boxes[kept[i].object_id])
            .collect();
        let scores: Vec<f32> = members.iter().map(|&i| kept[i].score).collect();
        for k in ap::pairwise_nms(&subs, &objs, &scores, thres, alpha, beta) {
            out.push(kept[members[k]]);
        }
    }
    out
}

/// For each predicted box, the GT boxes it overlaps with IoU ≥ `thr` (same category required),
/// in GT order, with the overlap (official `compute_iou_mat`).
pub(crate) fn box_matches(
    gt_boxes: &[[f32; 4]],
    gt_labels: &[i64],
    pred_boxes: &[[f32; 4]],
    pred_labels: &[i64],
    thr: f64,
) -> Vec<Vec<(usize, f32)>> {
    pred_boxes
        .iter()
        .zip(pred_labels)
        .map(|(pb, pl)| {
            gt_boxes
                .iter()
                .zip(gt_labels)
                .enumerate()
                .filter(|(_, (_, gl))| *gl == pl)
                .filter_map(|(g, (gb, _))| {
                    let iou = ap::iou_official(gb, pb);
                    (iou as f64 >= thr).then_some((g, iou))
                })
                .collect()
        })
        .collect()
}

/// The official greedy assignment of one prediction to a GT interaction.
///
/// `candidates` yields `(gt index, overlap)` for each GT interaction the prediction matches, in GT
/// order. Official: the best overlap wins (first on ties); the prediction is a TP only if that GT
/// — looked up as the *first* GT equal to it (`canonical`) — is not yet taken. Corrected
/// (`match_free_gt`): the best among the GT not yet taken, by its own index.
pub(crate) fn assign_greedy(
    candidates: impl Iterator<Item = (usize, f32)>,
    taken: &mut [bool],
    canonical: impl Fn(usize) -> usize,
    match_free_gt: bool,
) -> bool {
    let mut best: Option<(usize, f32)> = None;
    for (g, ov) in candidates {
        if match_free_gt && taken[g] {
            continue;
        }
        // `if min_overlap_gt > max_overlap` with max_overlap starting at 0.
        let cur = best.map_or(0.0, |b| b.1);
        if ov > cur {
            best = Some((g, ov));
        }
    }
    match best {
        Some((g, _)) => {
            let slot = if match_free_gt { g } else { canonical(g) };
            if taken[slot] {
                false
            } else {
                taken[slot] = true;
                true
            }
        }
        None => false,
    }
}

/// Formats a float the way Python's `str(float)` does (shortest round-trip digits, `.0` for
/// integral values, exponent form outside [1e-4, 1e16), `nan`, `inf`).
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{x:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = exp.parse().unwrap_or(0);
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", e.abs());
    }
    let s = format!("{x}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_float_formats_like_python() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.7479015488373778), "0.7479015488373778");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(f64::NAN), "nan");
        assert_eq!(py_float(0.0), "0.0");
    }

    #[test]
    fn greedy_official_vs_corrected() {
        // Two GT, prediction overlaps GT 0 best, GT 0 already taken.
        let mut taken = vec![true, false];
        assert!(!assign_greedy(
            [(0, 0.9), (1, 0.6)].into_iter(),
            &mut taken,
            |g| g,
            false
        ));
        let mut taken = vec![true, false];
        assert!(assign_greedy(
            [(0, 0.9), (1, 0.6)].into_iter(),
            &mut taken,
            |g| g,
            true
        ));
        assert_eq!(taken, vec![true, true]);
        // Duplicate GT: canonical lookup maps the copy to the first one.
        let mut taken = vec![true, false];
        assert!(!assign_greedy(
            [(1, 0.9)].into_iter(),
            &mut taken,
            |_| 0,
            false
        ));
    }
}
