//! Open Images v6 scene-graph evaluation, as `datasets/oi_sgg_eval.py::OISGGEvaluator` computes
//! it and `engine.evaluate_sgg_with_text` combines it (top-K 50 and 100).
//!
//! Relation detection (RelD): the top-K (subject, object, relation) candidates by score
//! (stable descending sort), optional triplet NMS (0.7, α = 1, β = 0.5), greedy matching with
//! IoU ≥ 0.5 on both boxes. Phrase detection (PhrD): each kept relation becomes a phrase whose
//! box is the union of its two boxes; optional phrase NMS (0.5) per triplet class; a phrase
//! matches a GT phrase of the same triplet with IoU ≥ 0.5. Each test triplet gets an 11-point AP;
//! `wmAP` weights the APs by GT frequency, `R@50` is the relation recall at K = 50 and
//! `score_wtd = 0.2·R@50 + 0.4·wmAP_rel + 0.4·wmAP_phr`.
//!
//! Official defects reproduced by default (see [`OiCorrections`]): with NMS, phrase matches are
//! computed on the grouped phrase list and applied after it is re-sorted by score; relation
//! predictions on images without GT boxes are ignored while their phrases count as FPs; the
//! greedy relation matching has the HICO "best GT already taken" defect; PhrD max recall leaves
//! triplets without any phrase prediction out of the denominator.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use rlip_data::oi::{OiCategories, OiImageAnnotation, valid_obj_ids};
use serde::Serialize;

use super::{EvalError, KeptPrediction, PairPredictions};
use super::{ap, assign_greedy, box_matches, invalid, py_float, top_candidates, triplet_nms};

/// A triplet class: (subject label, object label, relation).
pub type Triplet = (i64, i64, i64);

/// One test image's ground truth as the evaluator holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OiGtImage {
    /// File name.
    pub file_name: String,
    /// Boxes `[x1, y1, x2, y2]` (float32).
    pub boxes: Vec<[f32; 4]>,
    /// Object label (position in the evaluated object list).
    pub labels: Vec<i64>,
    /// Relations (subject box, object box, relation).
    pub rels: Vec<(usize, usize, i64)>,
}

/// Converts `OI_SGG_test.json` into evaluator GT (`OISGGDetection`, val branch): category ids
/// (indices into the full list `all`) become positions in the evaluated list `evaluated`.
pub fn oi_gt_from_annotations(
    anns: &[OiImageAnnotation],
    all: &OiCategories,
    evaluated: &OiCategories,
) -> Result<Vec<OiGtImage>, EvalError> {
    let valid = valid_obj_ids(
        all,
        evaluated,
        Path::new("OI_SGG_trainval_test_categories_dict.json"),
    )?;
    let num_rels = evaluated.rel.len() as i64;
    anns.iter()
        .map(|a| {
            let labels = a
                .annotations
                .iter()
                .map(|b| {
                    valid
                        .iter()
                        .position(|&v| v == b.category_id)
                        .map(|p| p as i64)
                        .ok_or_else(|| {
                            invalid(format!(
                                "{}: category {} is not an evaluated class",
                                a.file_name, b.category_id
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let n = labels.len();
            let rels = a
                .rel_annotations
                .iter()
                .map(|r| {
                    let s = usize::try_from(r.subject_id).ok().filter(|&s| s < n);
                    let o = usize::try_from(r.object_id).ok().filter(|&o| o < n);
                    match (s, o) {
                        (Some(s), Some(o)) if (0..num_rels).contains(&r.category_id) => {
                            Ok((s, o, r.category_id))
                        }
                        _ => Err(invalid(format!("{}: bad relation {r:?}", a.file_name))),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(OiGtImage {
                file_name: a.file_name.clone(),
                boxes: a
                    .annotations
                    .iter()
                    .map(|b| b.bbox.map(|x| x as f32))
                    .collect(),
                labels,
                rels,
            })
        })
        .collect()
}

/// Switches that correct the official evaluator's defects. All `false` reproduces the official
/// numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OiCorrections {
    /// Sort the predicted phrases by score *before* building their IoU matrix, so each phrase is
    /// judged on its own matches (official, with NMS: matches of the grouped list are applied to
    /// the re-sorted list by position).
    pub sort_phrases_before_matching: bool,
    /// Greedy relation matching picks the best *free* GT; duplicated GT relations are separate GT.
    pub match_free_gt: bool,
    /// Relation predictions on images without GT boxes count as FPs (official: ignored, while the
    /// phrase predictions of the same image are counted as FPs).
    pub no_gt_image_predictions_are_fp: bool,
    /// PhrD max recall counts the GT of every test triplet (official: only of triplets with at
    /// least one phrase prediction).
    pub phrase_recall_counts_all_gt: bool,
}

/// Evaluation options; the default is the official OI configuration (with NMS).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OiEvalConfig {
    /// The top-K values evaluated (official: 50 and 100; the summary needs both).
    pub top_ks: Vec<usize>,
    /// IoU threshold for a match (0.5, inclusive).
    pub overlap_iou: f64,
    /// Apply the triplet NMS and the phrase NMS.
    pub use_nms: bool,
    /// Triplet NMS threshold (0.7).
    pub thres_nms: f32,
    /// Subject IoU exponent (1).
    pub nms_alpha: f32,
    /// Object IoU exponent (0.5).
    pub nms_beta: f32,
    /// Phrase NMS threshold (0.5).
    pub thres_nms_phr: f32,
    /// Corrections (all off = official).
    pub corrections: OiCorrections,
}

impl Default for OiEvalConfig {
    fn default() -> Self {
        OiEvalConfig {
            top_ks: vec![50, 100],
            overlap_iou: 0.5,
            use_nms: true,
            thres_nms: 0.7,
            nms_alpha: 1.0,
            nms_beta: 0.5,
            thres_nms_phr: 0.5,
            corrections: OiCorrections::default(),
        }
    }
}

/// AP summary of one detection mode for one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OiModeResult {
    /// Predictions counted.
    pub n_pred: usize,
    /// True positives.
    pub n_tp: usize,
    /// 11-point AP.
    pub ap: f64,
    /// Recall after the last prediction.
    pub max_recall: f64,
}

/// Result of one test triplet at one K.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OiClassResult {
    /// (subject label, object label, relation).
    pub triplet: Triplet,
    /// GT instances.
    pub n_gt: usize,
    /// Relation detection.
    pub rel: OiModeResult,
    /// Phrase detection.
    pub phr: OiModeResult,
}

/// The TP and GT sums behind "max recall".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OiRecallCounts {
    /// RelD true positives.
    pub rel_tp: usize,
    /// RelD GT (all test triplets).
    pub rel_gt: usize,
    /// PhrD true positives.
    pub phr_tp: usize,
    /// PhrD GT (official: triplets with phrase predictions only).
    pub phr_gt: usize,
}

/// The metrics of one K, with the official names (`mAP@K (RelD)`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OiTopKMetrics {
    /// `mAP@K (RelD)`
    pub map_rel: f64,
    /// `wmAP@K (RelD)`
    pub wmap_rel: f64,
    /// `mean max recall@K (RelD)`
    pub mean_max_recall_rel: f64,
    /// `max recall@K (RelD)`
    pub max_recall_rel: f64,
    /// `mAP@K (PhrD)`
    pub map_phr: f64,
    /// `wmAP@K (PhrD)`
    pub wmap_phr: f64,
    /// `mean max recall@K (PhrD)`
    pub mean_max_recall_phr: f64,
    /// `max recall@K (PhrD)`
    pub max_recall_phr: f64,
}

/// One image's kept predictions before matching.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OiKept {
    /// Kept relations (after the top-K cut and the triplet NMS).
    pub rel: Vec<KeptPrediction>,
    /// For each kept phrase, in list order, the index in `rel` it was made from.
    pub phrase_from_rel_index: Vec<usize>,
}

/// Results for one K.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OiTopKResult {
    /// K.
    pub top_k: usize,
    /// Metrics.
    pub metrics: OiTopKMetrics,
    /// Per test triplet, in the evaluator's order.
    pub per_class: Vec<OiClassResult>,
    /// Recall sums.
    pub recall_counts: OiRecallCounts,
    /// Kept predictions per image.
    pub per_image_kept: Vec<OiKept>,
}

/// The four summary numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OiSummary {
    /// `max recall@50 (RelD)`.
    #[serde(rename = "R@50")]
    pub r50: f64,
    /// `wmAP@100 (RelD)`.
    pub wmap_rel: f64,
    /// `wmAP@100 (PhrD)`.
    pub wmap_phr: f64,
    /// `0.2·R@50 + 0.4·wmAP_rel + 0.4·wmAP_phr`.
    pub score_wtd: f64,
}

/// The Open Images report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OiReport {
    /// Options used.
    pub config: OiEvalConfig,
    /// One result per K, in `config.top_ks` order.
    pub top_k: Vec<OiTopKResult>,
    /// The merged metric dict with the official key names (present when K = 50 and 100 were run).
    pub metrics: BTreeMap<String, f64>,
    /// Summary (present when K = 50 and 100 were run).
    pub summary: Option<OiSummary>,
}

#[derive(Default, Clone)]
struct Acc {
    scores: Vec<f32>,
    tp: Vec<bool>,
}

#[derive(Clone, Copy)]
struct Phrase {
    bbox: [f32; 4],
    triplet: Triplet,
    score: f32,
    from_rel: usize,
}

fn union_box(a: &[f32; 4], b: &[f32; 4]) -> [f32; 4] {
    // Python min/max on float32 scalars.
    let mn = |x: f32, y: f32| if y < x { y } else { x };
    let mx = |x: f32, y: f32| if y > x { y } else { x };
    [
        mn(a[0], b[0]),
        mn(a[1], b[1]),
        mx(a[2], b[2]),
        mx(a[3], b[3]),
    ]
}

fn phrase_nms(phrases: &[Phrase], thres: f32) -> Vec<Phrase> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<Triplet, usize> = HashMap::new();
    for (i, p) in phrases.iter().enumerate() {
        let g = *index.entry(p.triplet).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let mut out = Vec::with_capacity(phrases.len());
    for members in &groups {
        let boxes: Vec<[f32; 4]> = members.iter().map(|&i| phrases[i].bbox).collect();
        let scores: Vec<f32> = members.iter().map(|&i| phrases[i].score).collect();
        for k in ap::nms_single(&boxes, &scores, thres) {
            out.push(phrases[members[k]]);
        }
    }
    out
}

fn evaluate_top_k(
    preds: &[PairPredictions],
    gts: &[OiGtImage],
    gt_triplets: &[Triplet],
    tindex: &HashMap<Triplet, usize>,
    n_gt: &[usize],
    k: usize,
    cfg: &OiEvalConfig,
) -> Result<OiTopKResult, EvalError> {
    let nc = gt_triplets.len();
    let mut rel_acc = vec![Acc::default(); nc];
    let mut phr_acc = vec![Acc::default(); nc];
    let mut kept_all = Vec::with_capacity(preds.len());
    let corr = cfg.corrections;
    for (pred, gt) in preds.iter().zip(gts) {
        pred.validate()?;
        let mut rels = top_candidates(pred, k, |_, _| Ok(1.0))?;
        if cfg.use_nms {
            rels = triplet_nms(&rels, pred, cfg.thres_nms, cfg.nms_alpha, cfg.nms_beta);
        }
        let triplet_of = |r: &KeptPrediction| {
            (
                pred.labels[r.subject_id],
                pred.labels[r.object_id],
                r.verb as i64,
            )
        };
        let mut phrases: Vec<Phrase> = rels
            .iter()
            .enumerate()
            .map(|(i, r)| Phrase {
                bbox: union_box(&pred.boxes[r.subject_id], &pred.boxes[r.object_id]),
                triplet: triplet_of(r),
                score: r.score,
                from_rel: i,
            })
            .collect();
        if cfg.use_nms {
            phrases = phrase_nms(&phrases, cfg.thres_nms_phr);
        }
        kept_all.push(OiKept {
            rel: rels.clone(),
            phrase_from_rel_index: phrases.iter().map(|p| p.from_rel).collect(),
        });

        if gt.boxes.is_empty() || rels.is_empty() {
            if corr.no_gt_image_predictions_are_fp {
                for r in &rels {
                    if let Some(&c) = tindex.get(&triplet_of(r)) {
                        rel_acc[c].scores.push(r.score);
                        rel_acc[c].tp.push(false);
                    }
                }
            }
            for p in &phrases {
                if let Some(&c) = tindex.get(&p.triplet) {
                    phr_acc[c].scores.push(p.score);
                    phr_acc[c].tp.push(false);
                }
            }
            continue;
        }

        // Relations.
        let matches = box_matches(
            &gt.boxes,
            &gt.labels,
            &pred.boxes,
            &pred.labels,
            cfg.overlap_iou,
        );
        let scores: Vec<f32> = rels.iter().map(|r| r.score).collect();
        let order = ap::argsort_desc_stable(&scores);
        let mut taken = vec![false; gt.rels.len()];
        let canonical = |g: usize| gt.rels.iter().position(|h| *h == gt.rels[g]).unwrap_or(g);
        for &i in &order {
            let r = rels[i];
            let (sub_m, obj_m) = (&matches[r.subject_id], &matches[r.object_id]);
            let candidates = gt.rels.iter().enumerate().filter_map(|(g, &(gs, go, gv))| {
                if gv != r.verb as i64 {
                    return None;
                }
                let so = sub_m.iter().find(|m| m.0 == gs)?.1;
                let oo = obj_m.iter().find(|m| m.0 == go)?.1;
                Some((g, so.min(oo)))
            });
            let Some(&c) = tindex.get(&triplet_of(&r)) else {
                continue;
            };
            let tp = assign_greedy(candidates, &mut taken, canonical, corr.match_free_gt);
            rel_acc[c].scores.push(r.score);
            rel_acc[c].tp.push(tp);
        }

        // Phrases.
        let gt_phr: Vec<([f32; 4], Triplet)> = gt
            .rels
            .iter()
            .map(|&(s, o, v)| {
                (
                    union_box(&gt.boxes[s], &gt.boxes[o]),
                    (gt.labels[s], gt.labels[o], v),
                )
            })
            .collect();
        let pscores: Vec<f32> = phrases.iter().map(|p| p.score).collect();
        let porder = ap::argsort_desc_stable(&pscores);
        if corr.sort_phrases_before_matching {
            phrases = porder.iter().map(|&i| phrases[i]).collect();
        }
        // IoU matrix on the list as it is now.
        let pmatches: Vec<Vec<(usize, f32)>> = phrases
            .iter()
            .map(|p| {
                gt_phr
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, t))| *t == p.triplet)
                    .filter_map(|(g, (b, _))| {
                        let iou = ap::iou_official(b, &p.bbox);
                        (iou as f64 >= cfg.overlap_iou).then_some((g, iou))
                    })
                    .collect()
            })
            .collect();
        // Then the list is (re-)sorted, and position idx uses the matches of position idx.
        let sorted: Vec<Phrase> = if corr.sort_phrases_before_matching {
            phrases.clone()
        } else {
            porder.iter().map(|&i| phrases[i]).collect()
        };
        let mut vis = vec![false; gt_phr.len()];
        for (idx, p) in sorted.iter().enumerate() {
            let mut best: Option<(usize, f32)> = None;
            for &(g, ov) in &pmatches[idx] {
                if ov > best.map_or(0.0, |b| b.1) {
                    best = Some((g, ov));
                }
            }
            let Some(&c) = tindex.get(&p.triplet) else {
                continue;
            };
            let tp = match best {
                Some((g, _)) if !vis[g] => {
                    vis[g] = true;
                    true
                }
                _ => false,
            };
            phr_acc[c].scores.push(p.score);
            phr_acc[c].tp.push(tp);
        }
    }

    let total_gt: usize = n_gt.iter().sum();
    let mut per_class = Vec::with_capacity(nc);
    let mut counts = OiRecallCounts {
        rel_tp: 0,
        rel_gt: 0,
        phr_tp: 0,
        phr_gt: 0,
    };
    let mode = |a: &Acc, n: usize| -> OiModeResult {
        if a.tp.is_empty() {
            OiModeResult {
                n_pred: 0,
                n_tp: 0,
                ap: 0.0,
                max_recall: 0.0,
            }
        } else {
            let r = ap::ranked_11point_ap(&a.scores, &a.tp, n);
            OiModeResult {
                n_pred: a.tp.len(),
                n_tp: r.n_tp,
                ap: r.ap,
                max_recall: r.max_recall,
            }
        }
    };
    for (c, t) in gt_triplets.iter().enumerate() {
        let rel = mode(&rel_acc[c], n_gt[c]);
        let phr = mode(&phr_acc[c], n_gt[c]);
        counts.rel_tp += rel.n_tp;
        counts.rel_gt += n_gt[c];
        counts.phr_tp += phr.n_tp;
        if phr.n_pred > 0 || corr.phrase_recall_counts_all_gt {
            counts.phr_gt += n_gt[c];
        }
        per_class.push(OiClassResult {
            triplet: *t,
            n_gt: n_gt[c],
            rel,
            phr,
        });
    }
    let weighted = |f: &dyn Fn(&OiClassResult) -> f64| -> f64 {
        let mut s = 0.0;
        for c in &per_class {
            s += f(c) * c.n_gt as f64 / total_gt as f64;
        }
        s
    };
    let mean = |f: &dyn Fn(&OiClassResult) -> f64| {
        ap::np_mean(&per_class.iter().map(f).collect::<Vec<_>>())
    };
    let ratio = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    let metrics = OiTopKMetrics {
        map_rel: mean(&|c| c.rel.ap),
        wmap_rel: weighted(&|c| c.rel.ap),
        mean_max_recall_rel: mean(&|c| c.rel.max_recall),
        max_recall_rel: ratio(counts.rel_tp, counts.rel_gt),
        map_phr: mean(&|c| c.phr.ap),
        wmap_phr: weighted(&|c| c.phr.ap),
        mean_max_recall_phr: mean(&|c| c.phr.max_recall),
        max_recall_phr: ratio(counts.phr_tp, counts.phr_gt),
    };
    Ok(OiTopKResult {
        top_k: k,
        metrics,
        per_class,
        recall_counts: counts,
        per_image_kept: kept_all,
    })
}

/// Evaluates Open Images predictions (one [`PairPredictions`] per GT image, same order; subject
/// labels are predicted).
pub fn evaluate_oi(
    preds: &[PairPredictions],
    gts: &[OiGtImage],
    cfg: &OiEvalConfig,
) -> Result<OiReport, EvalError> {
    if preds.len() != gts.len() {
        return Err(invalid(format!(
            "{} prediction images but {} GT images",
            preds.len(),
            gts.len()
        )));
    }
    let mut gt_triplets = Vec::new();
    let mut tindex = HashMap::new();
    let mut n_gt = Vec::new();
    for g in gts {
        if g.boxes.len() != g.labels.len() {
            return Err(invalid(format!(
                "{}: {} boxes but {} labels",
                g.file_name,
                g.boxes.len(),
                g.labels.len()
            )));
        }
        for &(s, o, v) in &g.rels {
            if s >= g.labels.len() || o >= g.labels.len() {
                return Err(invalid(format!(
                    "{}: relation box index out of range",
                    g.file_name
                )));
            }
            let t = (g.labels[s], g.labels[o], v);
            let i = *tindex.entry(t).or_insert_with(|| {
                gt_triplets.push(t);
                n_gt.push(0usize);
                gt_triplets.len() - 1
            });
            n_gt[i] += 1;
        }
    }
    let top_k = cfg
        .top_ks
        .iter()
        .map(|&k| evaluate_top_k(preds, gts, &gt_triplets, &tindex, &n_gt, k, cfg))
        .collect::<Result<Vec<_>, _>>()?;
    let mut metrics = BTreeMap::new();
    for r in &top_k {
        let m = &r.metrics;
        let k = r.top_k;
        for (name, v) in [
            ("mAP@{} (RelD)", m.map_rel),
            ("wmAP@{} (RelD)", m.wmap_rel),
            ("mean max recall@{} (RelD)", m.mean_max_recall_rel),
            ("max recall@{} (RelD)", m.max_recall_rel),
            ("mAP@{} (PhrD)", m.map_phr),
            ("wmAP@{} (PhrD)", m.wmap_phr),
            ("mean max recall@{} (PhrD)", m.mean_max_recall_phr),
            ("max recall@{} (PhrD)", m.max_recall_phr),
        ] {
            metrics.insert(name.replace("{}", &k.to_string()), v);
        }
    }
    let get = |k: usize| top_k.iter().find(|r| r.top_k == k).map(|r| r.metrics);
    let summary = match (get(50), get(100)) {
        (Some(m50), Some(m100)) => {
            let score_map = 0.2 * m50.max_recall_rel + 0.4 * m100.map_rel + 0.4 * m100.map_phr;
            let score_wtd = 0.2 * m50.max_recall_rel + 0.4 * m100.wmap_rel + 0.4 * m100.wmap_phr;
            metrics.insert("score_wtd (mAP)".into(), score_map);
            metrics.insert("score_wtd (wmAP)".into(), score_wtd);
            Some(OiSummary {
                r50: m50.max_recall_rel,
                wmap_rel: m100.wmap_rel,
                wmap_phr: m100.wmap_phr,
                score_wtd,
            })
        }
        _ => None,
    };
    Ok(OiReport {
        config: cfg.clone(),
        top_k,
        metrics,
        summary,
    })
}

impl fmt::Display for OiReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = |k: &str| {
            self.metrics
                .get(k)
                .copied()
                .map_or_else(|| "-".to_string(), py_float)
        };
        writeln!(f, "--------------------")?;
        writeln!(
            f,
            "mAP@100 (RelD): {}, wmAP@100 (RelD):{}, mean max recall@100 (RelD): {}, max recall@100 (RelD): {}, max recall@50 (RelD): {}, mean max recall@50 (RelD): {}",
            m("mAP@100 (RelD)"),
            m("wmAP@100 (RelD)"),
            m("mean max recall@100 (RelD)"),
            m("max recall@100 (RelD)"),
            m("max recall@50 (RelD)"),
            m("mean max recall@50 (RelD)")
        )?;
        writeln!(
            f,
            "mAP@100 (PhrD): {}, wmAP@100 (PhrD):{}, mean max recall@100 (PhrD): {}, max recall@100 (PhrD): {}",
            m("mAP@100 (PhrD)"),
            m("wmAP@100 (PhrD)"),
            m("mean max recall@100 (PhrD)"),
            m("max recall@100 (PhrD)")
        )?;
        writeln!(
            f,
            "score_wtd (mAP): {}, score_wtd (wmAP): {}",
            m("score_wtd (mAP)"),
            m("score_wtd (wmAP)")
        )?;
        writeln!(f, "--------------------")?;
        if self.config.corrections != OiCorrections::default() {
            writeln!(
                f,
                "(corrected metric, not the official number: {:?})",
                self.config.corrections
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(
        label_s: i64,
        label_o: i64,
        sb: [f32; 4],
        ob: [f32; 4],
        scores: Vec<f32>,
    ) -> PairPredictions {
        let nv = scores.len();
        PairPredictions {
            labels: vec![label_s, label_o],
            boxes: vec![sb, ob],
            verb_scores: scores,
            num_verbs: nv,
            sub_ids: vec![0],
            obj_ids: vec![1],
        }
    }

    #[test]
    fn image_without_gt_boxes_official_vs_corrected() {
        let b1 = [0.0, 0.0, 10.0, 10.0];
        let b2 = [20.0, 20.0, 30.0, 30.0];
        let gts = vec![
            OiGtImage {
                file_name: "a".into(),
                boxes: vec![b1, b2],
                labels: vec![1, 2],
                rels: vec![(0, 1, 0)],
            },
            OiGtImage {
                file_name: "b".into(),
                boxes: vec![],
                labels: vec![],
                rels: vec![],
            },
        ];
        let preds = vec![
            pred(1, 2, b1, b2, vec![0.9, 0.1]),
            pred(1, 2, b1, b2, vec![0.95, 0.2]),
        ];
        let cfg = OiEvalConfig {
            top_ks: vec![1],
            use_nms: false,
            ..OiEvalConfig::default()
        };
        let r = evaluate_oi(&preds, &gts, &cfg).unwrap();
        let c = &r.top_k[0].per_class[0];
        // Official: the relation FP on image "b" is ignored, its phrase FP counts.
        assert_eq!((c.rel.n_pred, c.rel.n_tp), (1, 1));
        assert_eq!((c.phr.n_pred, c.phr.n_tp), (2, 1));
        assert!((c.rel.ap - 1.0).abs() < 1e-12);
        assert!(c.phr.ap < 1.0);
        let cfg = OiEvalConfig {
            corrections: OiCorrections {
                no_gt_image_predictions_are_fp: true,
                ..Default::default()
            },
            ..cfg
        };
        let c2 = evaluate_oi(&preds, &gts, &cfg).unwrap().top_k[0].per_class[0].clone();
        assert_eq!((c2.rel.n_pred, c2.rel.n_tp), (2, 1));
        assert!((c2.rel.ap - c.phr.ap).abs() < 1e-12);
        assert!(r.summary.is_none());
    }
}
