//! V-COCO evaluation.
//!
//! - [`evaluate_vcoco_official`]: `datasets/vsrl_eval.py::VCOCOeval._do_eval` — agent AP and
//!   role AP in scenario 1 and scenario 2 (VOC all-point AP, float32 like the original). A GT
//!   role without object is matched, in scenario 1, only by a predicted role box that is all
//!   zeros or all NaN; in scenario 2 by any box. Actions with two object roles (cut, eat, hit)
//!   give two role APs. Detections whose best-overlapping GT person has no V-COCO label are
//!   skipped.
//! - [`vcoco_detections_from_predictions`]: what `generate_vcoco_official.py` writes, built
//!   directly from [`PairPredictions`] — no pickle round-trip. Users who have the pickle can read
//!   it with [`rlip_data::vcoco::load_vcoco_detections_pickle`].
//! - [`evaluate_vcoco_in_training`]: `datasets/vcoco_eval.py::VCOCOEvaluator`, the metric the
//!   official training loop prints (11-point AP per verb-role class, `mAP_all`, `mAP_thesis`).
//!
//! Deviation: when an image has no GT person the official script crashes (`argmax` of an empty
//! array); here its detections count as FPs.

use std::collections::BTreeMap;
use std::fmt;

use rlip_data::hico::{HoiImageAnnotation, coco_id_to_index};
use rlip_data::vcoco::{CocoInstances, DetValue, VCOCO_VERB_CLASSES, VcocoDetection, VsrlAction};
use serde::Serialize;

use super::{CorrectMat, EvalError, KeptPrediction, PairPredictions};
use super::{ap, assign_greedy, box_matches, invalid, top_candidates};

/// Label of the "missing object" class in V-COCO predictions.
pub const MISSING_CATEGORY_ID: i64 = 80;

// ---------------------------------------------------------------------------------------------
// Official evaluator (vsrl_eval.py)
// ---------------------------------------------------------------------------------------------

/// One image of the official evaluator's GT database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcocoDbEntry {
    /// COCO image id.
    pub image_id: i64,
    /// Valid boxes `[x1, y1, x2, y2]` (inclusive pixel corners, clipped), float32.
    pub boxes: Vec<[f32; 4]>,
    /// Contiguous class (1 = the first COCO category, person).
    pub gt_classes: Vec<i64>,
    /// `[box][action]`: 1 / 0, or -1 for objects not in V-COCO.
    pub gt_actions: Vec<Vec<i32>>,
    /// `[box][action][role-1]`: index of the role object box, or -1.
    pub gt_role_id: Vec<Vec<[i32; 2]>>,
}

/// The official evaluator's ground truth: actions, roles and the per-image database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcocoOfficialGt {
    /// Action names.
    pub actions: Vec<String>,
    /// Roles of each action ("agent" first).
    pub roles: Vec<Vec<String>>,
    /// One entry per split image id, in split order.
    pub db: Vec<VcocoDbEntry>,
}

impl VcocoOfficialGt {
    /// Builds the GT database from `vcoco_test.json`, the COCO instances file and the split ids
    /// (`VCOCOeval._get_vcocodb`).
    pub fn new(
        vsrl: &[VsrlAction],
        coco: &CocoInstances,
        split_ids: &[i64],
    ) -> Result<Self, EvalError> {
        if vsrl.is_empty() {
            return Err(invalid("no V-COCO actions"));
        }
        for a in vsrl {
            if a.role_name.len() > 3 {
                return Err(invalid(format!(
                    "action {:?} has more than two object roles",
                    a.action_name
                )));
            }
        }
        let cat_index: BTreeMap<i64, i64> = coco
            .categories
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i as i64 + 1))
            .collect();
        let num_actions = vsrl.len();
        let vcoco_ann = &vsrl[0].ann_id;
        // Index images and annotations once (annotations keep file order within an image).
        let mut images_by_id: std::collections::HashMap<i64, &rlip_data::vcoco::CocoImage> =
            std::collections::HashMap::new();
        for im in &coco.images {
            images_by_id.entry(im.id).or_insert(im);
        }
        let mut anns_by_image: std::collections::HashMap<
            i64,
            Vec<&rlip_data::vcoco::CocoAnnotation>,
        > = std::collections::HashMap::new();
        for a in &coco.annotations {
            anns_by_image.entry(a.image_id).or_default().push(a);
        }
        let vcoco_ann_set: std::collections::HashSet<i64> = vcoco_ann.iter().copied().collect();
        // For each action, the entries labelled 1 of each annotation id, in list order.
        let positives: Vec<std::collections::HashMap<i64, Vec<usize>>> = vsrl
            .iter()
            .map(|x| {
                let mut m: std::collections::HashMap<i64, Vec<usize>> =
                    std::collections::HashMap::new();
                for (row, (&a, &l)) in x.ann_id.iter().zip(&x.label).enumerate() {
                    if l == 1 {
                        m.entry(a).or_default().push(row);
                    }
                }
                m
            })
            .collect();
        let mut db = Vec::with_capacity(split_ids.len());
        for &id in split_ids {
            let img = images_by_id.get(&id).copied().ok_or_else(|| {
                invalid(format!(
                    "image id {id} of the split is not in the COCO file"
                ))
            })?;
            let (w, h) = (img.width, img.height);
            let mut valid: Vec<(i64, [f64; 4], i64)> = Vec::new();
            for &ann in anns_by_image.get(&id).map_or(&[][..], Vec::as_slice) {
                if ann.ignore == Some(1) {
                    continue;
                }
                let x1 = ann.bbox[0];
                let y1 = ann.bbox[1];
                let x2 = x1 + (ann.bbox[2] - 1.0).max(0.0);
                let y2 = y1 + (ann.bbox[3] - 1.0).max(0.0);
                let clip = |v: f64, lim: f64| (lim - 1.0).min(v.max(0.0));
                let (x1, y1, x2, y2) = (clip(x1, w), clip(y1, h), clip(x2, w), clip(y2, h));
                if ann.area > 0.0 && x2 > x1 && y2 > y1 {
                    let cls = *cat_index.get(&ann.category_id).ok_or_else(|| {
                        invalid(format!(
                            "annotation {}: unknown category {}",
                            ann.id, ann.category_id
                        ))
                    })?;
                    valid.push((ann.id, [x1, y1, x2, y2], cls));
                }
            }
            let valid_ids: Vec<i64> = valid.iter().map(|v| v.0).collect();
            let mut entry = VcocoDbEntry {
                image_id: id,
                boxes: valid.iter().map(|v| v.1.map(|x| x as f32)).collect(),
                gt_classes: valid.iter().map(|v| v.2).collect(),
                gt_actions: Vec::with_capacity(valid.len()),
                gt_role_id: Vec::with_capacity(valid.len()),
            };
            for &(ann_id, _, _) in &valid {
                let mut actions = vec![-1i32; num_actions];
                let mut roles = vec![[-1i32; 2]; num_actions];
                if vcoco_ann_set.contains(&ann_id) {
                    actions.iter_mut().for_each(|a| *a = 0);
                    for (i, x) in vsrl.iter().enumerate() {
                        let rows: &[usize] =
                            positives[i].get(&ann_id).map_or(&[][..], Vec::as_slice);
                        let Some(&m) = rows.first() else { continue };
                        if rows.len() > 1 {
                            return Err(invalid(format!(
                                "annotation {ann_id} is labelled {} times for action {:?}",
                                rows.len(),
                                x.action_name
                            )));
                        }
                        actions[i] = 1;
                        for j in 1..x.role_name.len() {
                            let rid = x.role_object(m, j);
                            if rid == 0 {
                                continue;
                            }
                            let pos = valid_ids.iter().position(|&v| v == rid).ok_or_else(|| {
                                invalid(format!(
                                    "action {:?}: role object {rid} of annotation {ann_id} is not a valid box of image {id}",
                                    x.action_name
                                ))
                            })?;
                            roles[i][j - 1] = pos as i32;
                        }
                    }
                }
                entry.gt_actions.push(actions);
                entry.gt_role_id.push(roles);
            }
            db.push(entry);
        }
        Ok(VcocoOfficialGt {
            actions: vsrl.iter().map(|a| a.action_name.clone()).collect(),
            roles: vsrl.iter().map(|a| a.role_name.clone()).collect(),
            db,
        })
    }
}

/// AP of one action (agent) or action-role.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcocoApEntry {
    /// "hold" (agent) or "hold-obj" (role).
    pub name: String,
    /// The AP as the evaluator stores it (float32, widened).
    pub ap: f64,
    /// The AP before the float32 rounding.
    pub ap_float64: f64,
    /// Positives (GT persons doing the action).
    pub npos: usize,
    /// Detections counted.
    pub n_det: usize,
    /// True positives.
    pub n_tp: usize,
}

/// Role APs of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcocoScenario {
    /// One entry per action-role, in action then role order.
    pub roles: Vec<VcocoApEntry>,
    /// The `[actions][2]` role-AP matrix (`None` where the action has no such role).
    pub role_ap_matrix: Vec<[Option<f64>; 2]>,
    /// `nanmean` of the matrix: "Average Role \[scenario_k\] AP".
    pub average: f64,
    /// `(25·average − AP(action[-3], role 0)) / 24`: the average omitting "point".
    pub average_without_point: f64,
}

/// The official V-COCO report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcocoOfficialReport {
    /// Agent AP per action.
    pub agent: Vec<VcocoApEntry>,
    /// `nansum(agent AP) / num_actions`.
    pub agent_average: f64,
    /// Scenario 1.
    pub scenario_1: VcocoScenario,
    /// Scenario 2.
    pub scenario_2: VcocoScenario,
}

struct ImageDets {
    agents: Vec<[f32; 4]>,
    agent_scores: Vec<Vec<f32>>,           // [det][action]
    role_entries: Vec<Vec<[[f32; 5]; 2]>>, // [det][action][rid]
}

fn collect_dets(dets: &[&VcocoDetection], gt: &VcocoOfficialGt) -> Result<ImageDets, EvalError> {
    let na = gt.actions.len();
    let mut out = ImageDets {
        agents: Vec::new(),
        agent_scores: Vec::new(),
        role_entries: Vec::new(),
    };
    for d in dets {
        out.agents.push(d.person_box.map(|x| x as f32));
        let mut scores = vec![0.0f32; na];
        let mut roles = vec![[[0.0f32; 5]; 2]; na];
        for aid in 0..na {
            for (j, role) in gt.roles[aid].iter().enumerate() {
                let key = format!("{}_{}", gt.actions[aid], role);
                let v = d.values.get(&key).ok_or_else(|| {
                    invalid(format!(
                        "detection of image {} has no key {key:?}",
                        d.image_id
                    ))
                })?;
                match (role.as_str(), v) {
                    ("agent", DetValue::Score(s)) => scores[aid] = *s as f32,
                    ("agent", DetValue::List(l)) if l.len() == 1 => scores[aid] = l[0] as f32,
                    (_, DetValue::List(l)) if l.len() == 5 && j >= 1 => {
                        for (dst, &x) in roles[aid][j - 1].iter_mut().zip(l) {
                            *dst = x as f32;
                        }
                    }
                    (_, DetValue::Score(s)) if j >= 1 => roles[aid][j - 1] = [*s as f32; 5],
                    _ => {
                        return Err(invalid(format!(
                            "detection of image {}: key {key:?} has the wrong shape",
                            d.image_id
                        )));
                    }
                }
            }
        }
        out.agent_scores.push(scores);
        out.role_entries.push(roles);
    }
    Ok(out)
}

/// `get_overlap` of vsrl_eval in float32 (+1-pixel areas, clamped widths).
fn get_overlap(gt: &[f32; 4], p: &[f32; 4]) -> f32 {
    let mx = |a: f32, b: f32| {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else {
            a.max(b)
        }
    };
    let mn = |a: f32, b: f32| {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else {
            a.min(b)
        }
    };
    let iw = mx(mn(gt[2], p[2]) - mx(gt[0], p[0]) + 1.0, 0.0);
    let ih = mx(mn(gt[3], p[3]) - mx(gt[1], p[1]) + 1.0, 0.0);
    let inter = iw * ih;
    let uni = (p[2] - p[0] + 1.0) * (p[3] - p[1] + 1.0)
        + (gt[2] - gt[0] + 1.0) * (gt[3] - gt[1] + 1.0)
        - inter;
    inter / uni
}

/// `argmax` and `max` of the overlaps with every GT person (first max; NaN wins, as in NumPy).
fn best_overlap(gt_boxes: &[[f32; 4]], p: &[f32; 4]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (j, g) in gt_boxes.iter().enumerate() {
        let o = get_overlap(g, p);
        match best {
            None => best = Some((j, o)),
            Some((_, b)) if b.is_nan() => {}
            Some(_) if o.is_nan() => best = Some((j, o)),
            Some((_, b)) if o > b => best = Some((j, o)),
            _ => {}
        }
    }
    best
}

#[derive(Default)]
struct Acc {
    sc: Vec<f32>,
    tp: Vec<bool>,
}

fn all_point_ap(acc: &Acc, npos: usize) -> (f64, f64, usize) {
    let order = ap::argsort_desc_reverse_ties(&acc.sc);
    let mut rec = Vec::with_capacity(order.len());
    let mut prec = Vec::with_capacity(order.len());
    let (mut tp, mut fp) = (0usize, 0usize);
    for &i in &order {
        if acc.tp[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        // rec = float32 cumsum / float(npos) -> float32; prec in float64 (NumPy 2 promotion).
        rec.push((tp as f32 / npos as f32) as f64);
        prec.push(tp as f64 / ((tp + fp) as f64).max(f64::EPSILON));
    }
    let ap64 = ap::voc_ap_all_point(&rec, &prec);
    (ap64 as f32 as f64, ap64, tp)
}

/// Runs `VCOCOeval._do_eval(detections, ovr_thresh)`: agent AP and both role scenarios.
pub fn evaluate_vcoco_official(
    dets: &[VcocoDetection],
    gt: &VcocoOfficialGt,
    ovr_thresh: f32,
) -> Result<VcocoOfficialReport, EvalError> {
    let na = gt.actions.len();
    if gt.roles.len() != na {
        return Err(invalid("actions and roles differ in length"));
    }
    for e in &gt.db {
        let n = e.boxes.len();
        let ok = e.gt_classes.len() == n
            && e.gt_actions.len() == n
            && e.gt_role_id.len() == n
            && e.gt_actions.iter().all(|a| a.len() == na)
            && e.gt_role_id
                .iter()
                .all(|r| r.len() == na && r.iter().flatten().all(|&i| i < n as i32));
        if !ok {
            return Err(invalid(format!(
                "GT database entry of image {} is inconsistent",
                e.image_id
            )));
        }
    }
    // Detections of each image, in list order (one pass instead of a scan per image).
    let mut by_image: std::collections::HashMap<i64, Vec<&VcocoDetection>> =
        std::collections::HashMap::new();
    for d in dets {
        by_image.entry(d.image_id).or_default().push(d);
    }
    let mut npos = vec![0usize; na];
    let mut agent_acc: Vec<Acc> = (0..na).map(|_| Acc::default()).collect();
    let mut role_acc: [Vec<[Acc; 2]>; 2] = [
        (0..na).map(|_| [Acc::default(), Acc::default()]).collect(),
        (0..na).map(|_| [Acc::default(), Acc::default()]).collect(),
    ];

    for entry in &gt.db {
        let gt_inds: Vec<usize> = (0..entry.gt_classes.len())
            .filter(|&i| entry.gt_classes[i] == 1)
            .collect();
        let gt_boxes: Vec<[f32; 4]> = gt_inds.iter().map(|&i| entry.boxes[i]).collect();
        let gt_actions: Vec<&Vec<i32>> = gt_inds.iter().map(|&i| &entry.gt_actions[i]).collect();
        let ignore: Vec<bool> = gt_actions.iter().map(|a| a.contains(&-1)).collect();
        for (aid, n) in npos.iter_mut().enumerate() {
            *n += gt_actions.iter().filter(|a| a[aid] == 1).count();
        }
        let img_dets = by_image.get(&entry.image_id).map_or(&[][..], Vec::as_slice);
        let d = collect_dets(img_dets, gt)?;

        // Agent.
        for aid in 0..na {
            let valid: Vec<usize> = (0..d.agents.len())
                .filter(|&j| !d.agent_scores[j][aid].is_nan())
                .collect();
            let scores: Vec<f32> = valid.iter().map(|&j| d.agent_scores[j][aid]).collect();
            let mut covered = vec![false; gt_boxes.len()];
            for o in ap::argsort_desc_reverse_ties(&scores) {
                let j = valid[o];
                let acc = &mut agent_acc[aid];
                let Some((jmax, ovmax)) = best_overlap(&gt_boxes, &d.agents[j]) else {
                    acc.sc.push(scores[o]);
                    acc.tp.push(false);
                    continue;
                };
                if ignore[jmax] {
                    continue;
                }
                acc.sc.push(scores[o]);
                let ok = gt_actions[jmax][aid] == 1 && ovmax >= ovr_thresh && !covered[jmax];
                if ok {
                    covered[jmax] = true;
                }
                acc.tp.push(ok);
            }
        }

        // Roles, both scenarios.
        for (sidx, accs) in role_acc.iter_mut().enumerate() {
            for aid in 0..na {
                let nroles = gt.roles[aid].len();
                if nroles < 2 {
                    continue;
                }
                #[allow(clippy::needless_range_loop)] // rid indexes three parallel structures
                for rid in 0..nroles - 1 {
                    let gt_roles: Vec<Option<[f32; 4]>> = gt_inds
                        .iter()
                        .map(|&i| {
                            let r = entry.gt_role_id[i][aid][rid];
                            (r > -1).then(|| entry.boxes[r as usize])
                        })
                        .collect();
                    let valid: Vec<usize> = (0..d.agents.len())
                        .filter(|&j| !d.role_entries[j][aid][rid][4].is_nan())
                        .collect();
                    let scores: Vec<f32> = valid
                        .iter()
                        .map(|&j| d.role_entries[j][aid][rid][4])
                        .collect();
                    let mut covered = vec![false; gt_boxes.len()];
                    for o in ap::argsort_desc_reverse_ties(&scores) {
                        let j = valid[o];
                        let acc = &mut accs[aid][rid];
                        let Some((jmax, ovmax)) = best_overlap(&gt_boxes, &d.agents[j]) else {
                            acc.sc.push(scores[o]);
                            acc.tp.push(false);
                            continue;
                        };
                        if ignore[jmax] {
                            continue;
                        }
                        let e = &d.role_entries[j][aid][rid];
                        let role_box = [e[0], e[1], e[2], e[3]];
                        let ov_role = match gt_roles[jmax] {
                            None => {
                                if sidx == 1
                                    || role_box.iter().all(|&x| x == 0.0)
                                    || role_box.iter().all(|x| x.is_nan())
                                {
                                    1.0
                                } else {
                                    0.0
                                }
                            }
                            Some(g) => get_overlap(&g, &role_box),
                        };
                        acc.sc.push(scores[o]);
                        let ok = gt_actions[jmax][aid] == 1
                            && ovmax >= ovr_thresh
                            && ov_role >= ovr_thresh
                            && !covered[jmax];
                        if ok {
                            covered[jmax] = true;
                        }
                        acc.tp.push(ok);
                    }
                }
            }
        }
    }

    let entry = |name: String, acc: &Acc, n: usize| -> VcocoApEntry {
        let (ap32, ap64, ntp) = if n == 0 {
            (f64::NAN, f64::NAN, 0)
        } else {
            all_point_ap(acc, n)
        };
        VcocoApEntry {
            name,
            ap: ap32,
            ap_float64: ap64,
            npos: n,
            n_det: acc.sc.len(),
            n_tp: ntp,
        }
    };
    let agent: Vec<VcocoApEntry> = (0..na)
        .map(|aid| entry(gt.actions[aid].clone(), &agent_acc[aid], npos[aid]))
        .collect();
    let agent_sum: f32 = agent
        .iter()
        .filter(|e| !e.ap.is_nan())
        .map(|e| e.ap as f32)
        .sum();
    let agent_average = (agent_sum / na as f32) as f64;

    let scenario = |accs: &Vec<[Acc; 2]>| -> VcocoScenario {
        let mut roles = Vec::new();
        let mut matrix = vec![[None, None]; na];
        for aid in 0..na {
            let nroles = gt.roles[aid].len();
            for rid in 0..nroles.saturating_sub(1) {
                let e = entry(
                    format!("{}-{}", gt.actions[aid], gt.roles[aid][rid + 1]),
                    &accs[aid][rid],
                    npos[aid],
                );
                matrix[aid][rid] = (!e.ap.is_nan()).then_some(e.ap);
                roles.push(e);
            }
        }
        let vals: Vec<f64> = matrix.iter().flatten().flatten().copied().collect();
        let average = if vals.is_empty() {
            f64::NAN
        } else {
            (vals.iter().sum::<f64>() / vals.len() as f64) as f32 as f64
        };
        let point = if na >= 3 {
            matrix[na - 3][0].unwrap_or(f64::NAN)
        } else {
            f64::NAN
        };
        let average_without_point = ((average as f32 * 25.0 - point as f32) / 24.0) as f64;
        VcocoScenario {
            roles,
            role_ap_matrix: matrix,
            average,
            average_without_point,
        }
    };
    Ok(VcocoOfficialReport {
        agent,
        agent_average,
        scenario_1: scenario(&role_acc[0]),
        scenario_2: scenario(&role_acc[1]),
    })
}

impl fmt::Display for VcocoOfficialReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "---------Reporting Agent AP (%)------------------")?;
        for e in &self.agent {
            writeln!(
                f,
                "{:>20}: AP = {:.2} (#pos = {})",
                e.name,
                e.ap * 100.0,
                e.npos
            )?;
        }
        writeln!(f, "Average Agent AP = {:.2}", self.agent_average * 100.0)?;
        writeln!(f, "---------------------------------------------")?;
        for (name, s) in [
            ("scenario_1", &self.scenario_1),
            ("scenario_2", &self.scenario_2),
        ] {
            writeln!(f, "---------Reporting Role AP (%)------------------")?;
            for e in &s.roles {
                writeln!(
                    f,
                    "{:>23}: AP = {:.2} (#pos = {})",
                    e.name,
                    e.ap * 100.0,
                    e.npos
                )?;
            }
            writeln!(f, "Average Role [{name}] AP = {:.2}", s.average * 100.0)?;
            writeln!(f, "---------------------------------------------")?;
            writeln!(
                f,
                "Average Role [{name}] AP = {:.2}, omitting the action \"point\"",
                s.average_without_point * 100.0
            )?;
            writeln!(f, "---------------------------------------------")?;
        }
        Ok(())
    }
}

/// Builds the detection list of `generate_vcoco_official.py` from predictions in the
/// `PostProcessHOI` layout (all pairs, no top-K): for each pair, the person box, each verb-role
/// score masked by `correct_mat` (with the appended ones column for label 80 "missing object"),
/// role boxes `[object box..., score]` (NaN box when the object label is 80), agent scores, and for
/// cut / hit / eat the agent score as the max over their roles.
pub fn vcoco_detections_from_predictions(
    preds: &[PairPredictions],
    image_ids: &[i64],
    correct_mat: &CorrectMat,
) -> Result<Vec<VcocoDetection>, EvalError> {
    if preds.len() != image_ids.len() {
        return Err(invalid(format!(
            "{} prediction images but {} image ids",
            preds.len(),
            image_ids.len()
        )));
    }
    let mat = correct_mat.with_ones_column();
    let mut out = Vec::new();
    for (pred, &image_id) in preds.iter().zip(image_ids) {
        pred.validate()?;
        if pred.num_verbs != VCOCO_VERB_CLASSES.len() {
            return Err(invalid(format!(
                "V-COCO predictions need 29 verb scores, got {}",
                pred.num_verbs
            )));
        }
        for p in 0..pred.num_pairs() {
            let person_box = pred.boxes[pred.sub_ids[p]].map(|x| x as f64);
            let obj_label = pred.labels[pred.obj_ids[p]];
            let obj_box: [f64; 4] = if obj_label == MISSING_CATEGORY_ID {
                [f64::NAN; 4]
            } else {
                pred.boxes[pred.obj_ids[p]].map(|x| x as f64)
            };
            let mut values = BTreeMap::new();
            let (mut cut, mut hit, mut eat) = (0.0f64, 0.0f64, 0.0f64);
            for (v, class) in VCOCO_VERB_CLASSES.iter().enumerate() {
                let m = mat.get(v, obj_label)?;
                let s = pred.score(p, v);
                let score = (if m == 1.0 { s } else { (s as f64 * m) as f32 }) as f64;
                let role =
                    || DetValue::List(vec![obj_box[0], obj_box[1], obj_box[2], obj_box[3], score]);
                if !class.contains('_') {
                    values.insert(format!("{class}_agent"), DetValue::Score(score));
                } else if class.contains("cut_") {
                    values.insert(class.to_string(), role());
                    if score > cut {
                        cut = score;
                    }
                } else if class.contains("hit_") {
                    values.insert(class.to_string(), role());
                    if score > hit {
                        hit = score;
                    }
                } else if class.contains("eat_") {
                    values.insert(class.to_string(), role());
                    if score > eat {
                        eat = score;
                    }
                } else {
                    values.insert(class.to_string(), role());
                    let agent = class.replace("_obj", "").replace("_instr", "");
                    values.insert(format!("{agent}_agent"), DetValue::Score(score));
                }
            }
            values.insert("cut_agent".into(), DetValue::Score(cut));
            values.insert("hit_agent".into(), DetValue::Score(hit));
            values.insert("eat_agent".into(), DetValue::Score(eat));
            out.push(VcocoDetection {
                image_id,
                person_box,
                values,
            });
        }
    }
    Ok(out)
}

/// The COCO image id encoded in a V-COCO file name (`COCO_val2014_000000043485.jpg` → 43485),
/// as `datasets/vcoco.py` derives `img_id`.
pub fn vcoco_image_id_from_file_name(name: &str) -> Option<i64> {
    let stem = name.trim_end_matches(['.', 'j', 'p', 'g']);
    stem.split('_').nth(2)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// In-training evaluator (vcoco_eval.py)
// ---------------------------------------------------------------------------------------------

/// One image of the HOIA-format GT the in-training evaluator uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcocoGtImage {
    /// File name.
    pub file_name: String,
    /// Boxes (float32).
    pub boxes: Vec<[f32; 4]>,
    /// Class index (position in the 80 COCO ids).
    pub labels: Vec<i64>,
    /// (subject box, object box or `None`, verb-role class 0..28).
    pub hois: Vec<(usize, Option<usize>, i64)>,
}

/// Converts `test_vcoco.json` (HOIA layout, `object_id` -1 = no object) into evaluator GT.
pub fn vcoco_gt_from_annotations(
    anns: &[HoiImageAnnotation],
) -> Result<Vec<VcocoGtImage>, EvalError> {
    anns.iter()
        .map(|a| {
            let labels = a
                .annotations
                .iter()
                .map(|b| {
                    coco_id_to_index(b.category_id)
                        .map(|i| i as i64)
                        .ok_or_else(|| {
                            invalid(format!(
                                "{}: unknown COCO id {}",
                                a.file_name, b.category_id
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let n = labels.len();
            let hois = a
                .hoi_annotation
                .iter()
                .map(|h| {
                    let s = usize::try_from(h.subject_id).ok().filter(|&s| s < n);
                    let o = if h.object_id == -1 {
                        Some(None)
                    } else {
                        usize::try_from(h.object_id)
                            .ok()
                            .filter(|&o| o < n)
                            .map(Some)
                    };
                    match (s, o) {
                        (Some(s), Some(o)) if (0..29).contains(&h.category_id) => {
                            Ok((s, o, h.category_id))
                        }
                        _ => Err(invalid(format!("{}: bad interaction {h:?}", a.file_name))),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(VcocoGtImage {
                file_name: a.file_name.clone(),
                boxes: a
                    .annotations
                    .iter()
                    .map(|b| b.bbox.map(|x| x as f32))
                    .collect(),
                labels,
                hois,
            })
        })
        .collect()
}

/// Options of the in-training evaluator; the default is the official one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VcocoInTrainingOptions {
    /// Predictions kept per image (100).
    pub max_hois: usize,
    /// IoU threshold (0.5).
    pub overlap_iou: f64,
    /// Corrected metric: match the best *free* GT, duplicated GT entries separately (official:
    /// best-overlapping GT, FP when it is taken).
    pub match_free_gt: bool,
}

impl Default for VcocoInTrainingOptions {
    fn default() -> Self {
        VcocoInTrainingOptions {
            max_hois: 100,
            overlap_iou: 0.5,
            match_free_gt: false,
        }
    }
}

/// Result of one verb-role class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcocoClassResult {
    /// Class index 0..28.
    pub verb_class: usize,
    /// Class name.
    pub name: String,
    /// GT instances.
    pub n_gt: usize,
    /// Predictions counted.
    pub n_pred: usize,
    /// True positives.
    pub n_tp: usize,
    /// 11-point AP.
    pub ap: f64,
}

/// The in-training V-COCO report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcocoInTrainingReport {
    /// Mean AP over the classes with GT.
    #[serde(rename = "mAP_all")]
    pub map_all: f64,
    /// Mean AP over the 24 "thesis" classes (a class without GT counts as 0).
    #[serde(rename = "mAP_thesis")]
    pub map_thesis: f64,
    /// Per class with GT, in class order.
    pub per_class: Vec<VcocoClassResult>,
    /// Kept predictions per image (top 100, no NMS).
    pub per_image_kept: Vec<Vec<KeptPrediction>>,
}

/// The classes averaged in `mAP_thesis`.
pub const THESIS_MAP_INDICES: [usize; 24] = [
    0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25, 27, 28,
];

/// Runs `VCOCOEvaluator.evaluate()` on predictions in the `PostProcessHOI` layout.
pub fn evaluate_vcoco_in_training(
    preds: &[PairPredictions],
    gts: &[VcocoGtImage],
    correct_mat: &CorrectMat,
    opts: &VcocoInTrainingOptions,
) -> Result<VcocoInTrainingReport, EvalError> {
    if preds.len() != gts.len() {
        return Err(invalid(format!(
            "{} prediction images but {} GT images",
            preds.len(),
            gts.len()
        )));
    }
    let mat = correct_mat.with_ones_column();
    let nv = VCOCO_VERB_CLASSES.len();
    let mut n_gt = vec![0usize; nv];
    for g in gts {
        for &(s, o, v) in &g.hois {
            if s >= g.boxes.len()
                || o.is_some_and(|o| o >= g.boxes.len())
                || g.boxes.len() != g.labels.len()
            {
                return Err(invalid(format!(
                    "{}: interaction box index out of range",
                    g.file_name
                )));
            }
            let v = usize::try_from(v).ok().filter(|&v| v < nv).ok_or_else(|| {
                invalid(format!("{}: verb-role class {v} out of range", g.file_name))
            })?;
            n_gt[v] += 1;
        }
    }
    let mut acc: Vec<Acc> = (0..nv).map(|_| Acc::default()).collect();
    let mut per_image_kept = Vec::with_capacity(preds.len());
    for (pred, gt) in preds.iter().zip(gts) {
        pred.validate()?;
        if pred.num_verbs != nv {
            return Err(invalid(format!(
                "V-COCO predictions need {nv} verb scores, got {}",
                pred.num_verbs
            )));
        }
        let kept = top_candidates(pred, opts.max_hois, |p, v| {
            mat.get(v, pred.labels[pred.obj_ids[p]])
        })?;
        per_image_kept.push(kept.clone());
        if gt.boxes.is_empty() {
            for k in &kept {
                acc[k.verb].sc.push(k.score);
                acc[k.verb].tp.push(false);
            }
            continue;
        }
        let matches = box_matches(
            &gt.boxes,
            &gt.labels,
            &pred.boxes,
            &pred.labels,
            opts.overlap_iou,
        );
        let scores: Vec<f32> = kept.iter().map(|k| k.score).collect();
        let mut taken = vec![false; gt.hois.len()];
        let canonical = |g: usize| gt.hois.iter().position(|h| *h == gt.hois[g]).unwrap_or(g);
        for i in ap::argsort_desc_stable(&scores) {
            let k = kept[i];
            let sub_m = &matches[k.subject_id];
            let obj_m = &matches[k.object_id];
            let candidates = gt.hois.iter().enumerate().filter_map(|(g, &(gs, go, gv))| {
                if gv != k.verb as i64 {
                    return None;
                }
                let so = sub_m.iter().find(|m| m.0 == gs)?.1;
                match go {
                    None => Some((g, so)),
                    Some(go) => {
                        // The official `elif` also needs the predicted object to match some GT box.
                        if obj_m.is_empty() {
                            return None;
                        }
                        let oo = obj_m.iter().find(|m| m.0 == go)?.1;
                        Some((g, so.min(oo)))
                    }
                }
            });
            let tp = assign_greedy(candidates, &mut taken, canonical, opts.match_free_gt);
            acc[k.verb].sc.push(k.score);
            acc[k.verb].tp.push(tp);
        }
    }
    let mut per_class = Vec::new();
    let mut ap_of = vec![0.0f64; nv];
    for v in 0..nv {
        if n_gt[v] == 0 {
            continue;
        }
        let a = &acc[v];
        let (apv, ntp) = if a.tp.is_empty() {
            (0.0, 0)
        } else {
            let r = ap::ranked_11point_ap(&a.sc, &a.tp, n_gt[v]);
            (r.ap, r.n_tp)
        };
        ap_of[v] = apv;
        per_class.push(VcocoClassResult {
            verb_class: v,
            name: VCOCO_VERB_CLASSES[v].to_string(),
            n_gt: n_gt[v],
            n_pred: a.tp.len(),
            n_tp: ntp,
            ap: apv,
        });
    }
    let map_all = ap::np_mean(&per_class.iter().map(|c| c.ap).collect::<Vec<_>>());
    let map_thesis = ap::np_mean(
        &THESIS_MAP_INDICES
            .iter()
            .map(|&i| ap_of[i])
            .collect::<Vec<_>>(),
    );
    Ok(VcocoInTrainingReport {
        map_all,
        map_thesis,
        per_class,
        per_image_kept,
    })
}

impl VcocoInTrainingReport {
    /// The dict the official `compute_map` returns (`AP_<class>`, `mAP_all`, `mAP_thesis`).
    pub fn returned(&self) -> BTreeMap<String, f64> {
        let mut m: BTreeMap<String, f64> = self
            .per_class
            .iter()
            .map(|c| (format!("AP_{}", c.name), c.ap))
            .collect();
        m.insert("mAP_all".into(), self.map_all);
        m.insert("mAP_thesis".into(), self.map_thesis);
        m
    }
}

impl fmt::Display for VcocoInTrainingReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "------------------------------------------------------------"
        )?;
        for c in &self.per_class {
            writeln!(f, "{:>23}: #GTs = {:04}, AP = {:.4}", c.name, c.n_gt, c.ap)?;
        }
        writeln!(
            f,
            "------------------------------------------------------------"
        )?;
        writeln!(
            f,
            "mAP all: {:.4} mAP thesis: {:.4}",
            self.map_all, self.map_thesis
        )?;
        writeln!(
            f,
            "------------------------------------------------------------"
        )
    }
}
