//! Building blocks shared by the evaluators: AP formulas, IoU, NMS, NumPy-compatible sums and
//! the sort orders the official code relies on.

/// NumPy's pairwise summation of a float64 array (`np.sum` / `np.add.reduce`), reproduced so that
/// means agree with the official numbers to the last bit.
pub fn np_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        np_sum(&a[..n2]) + np_sum(&a[n2..])
    }
}

/// `np.mean` of a float64 array (NaN when empty, as NumPy returns).
pub fn np_mean(a: &[f64]) -> f64 {
    if a.is_empty() {
        return f64::NAN;
    }
    np_sum(a) / a.len() as f64
}

/// The 11 recall thresholds of `np.arange(0., 1.1, 0.1)`: `i * 0.1` in float64
/// (so the fourth one is 0.30000000000000004, not 0.3).
pub fn eleven_point_thresholds() -> [f64; 11] {
    let mut t = [0.0; 11];
    for (i, v) in t.iter_mut().enumerate() {
        *v = i as f64 * 0.1;
    }
    t
}

/// The official 11-point interpolated AP (`voc_ap` of the HICO, OI and in-training V-COCO
/// evaluators): the mean over t in {0, 0.1, ..., 1} of the best precision at recall ≥ t,
/// accumulated as `ap += p / 11` in that order.
pub fn voc_ap_11point(rec: &[f64], prec: &[f64]) -> f64 {
    let mut ap = 0.0;
    for t in eleven_point_thresholds() {
        let mut p: Option<f64> = None;
        for (&r, &q) in rec.iter().zip(prec) {
            if r >= t {
                p = Some(match p {
                    // np.max propagates NaN.
                    Some(m) if m.is_nan() || q.is_nan() => f64::NAN,
                    Some(m) => m.max(q),
                    None => q,
                });
            }
        }
        ap += p.unwrap_or(0.0) / 11.0;
    }
    ap
}

/// VOC all-point AP (area under the monotone precision envelope), as `vsrl_eval.voc_ap`.
pub fn voc_ap_all_point(rec: &[f64], prec: &[f64]) -> f64 {
    let mut mrec = Vec::with_capacity(rec.len() + 2);
    mrec.push(0.0);
    mrec.extend_from_slice(rec);
    mrec.push(1.0);
    let mut mpre = Vec::with_capacity(prec.len() + 2);
    mpre.push(0.0);
    mpre.extend_from_slice(prec);
    mpre.push(0.0);
    for i in (1..mpre.len()).rev() {
        // np.maximum propagates NaN.
        let (a, b) = (mpre[i - 1], mpre[i]);
        mpre[i - 1] = if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.max(b)
        };
    }
    let terms: Vec<f64> = (0..mrec.len() - 1)
        .filter(|&i| mrec[i + 1] != mrec[i])
        .map(|i| (mrec[i + 1] - mrec[i]) * mpre[i + 1])
        .collect();
    np_sum(&terms)
}

/// Result of ranking one class's detections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankedAp {
    /// 11-point AP.
    pub ap: f64,
    /// Recall after the last detection.
    pub max_recall: f64,
    /// Number of true positives.
    pub n_tp: usize,
}

/// Sorts a class's detections by descending score (stable: ties keep their order, as
/// `np.argsort(-score)` does for the outcome-independent ties of the golden cases), accumulates
/// TP / FP, and returns the 11-point AP with recall `tp / n_gt` and precision `tp / (tp + fp)`.
pub fn ranked_11point_ap(scores: &[f32], tp: &[bool], n_gt: usize) -> RankedAp {
    let order = argsort_desc_stable(scores);
    let mut rec = Vec::with_capacity(order.len());
    let mut prec = Vec::with_capacity(order.len());
    let (mut ctp, mut cfp) = (0usize, 0usize);
    for &i in &order {
        if tp[i] {
            ctp += 1;
        } else {
            cfp += 1;
        }
        rec.push(ctp as f64 / n_gt as f64);
        prec.push(ctp as f64 / (ctp + cfp) as f64);
    }
    let max_recall = rec.iter().copied().fold(f64::NEG_INFINITY, |a, b| {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.max(b)
        }
    });
    RankedAp {
        ap: voc_ap_11point(&rec, &prec),
        max_recall,
        n_tp: ctp,
    }
}

/// Indices that sort `scores` in descending order; equal scores keep their input order
/// (Python's `list.sort(key=score, reverse=True)`, which is stable). NaN sorts first, as
/// Python's comparison-based sort leaves it in place relative to its neighbours only
/// unpredictably; we put it first deterministically.
pub fn argsort_desc_stable(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| desc_cmp(scores[a], scores[b]));
    idx
}

/// Indices in the order `scores.argsort()[::-1]` gives when ties are broken by a stable
/// ascending sort: descending score, equal scores in *reverse* input order.
pub fn argsort_desc_reverse_ties(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| desc_cmp(scores[a], scores[b]).then(b.cmp(&a)));
    idx
}

fn desc_cmp(a: f32, b: f32) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal),
    }
}

/// The official `compute_IOU` of the HICO / OI / in-training V-COCO evaluators, in float32:
/// areas with the +1-pixel convention, but an intersection only when
/// `max(y1) < min(y2)` and `max(x1) < min(x2)` *strictly* (so a zero-width box never overlaps).
pub fn iou_official(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let s1 = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0);
    let s2 = (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let sum_area = s1 + s2;
    let left = a[1].max(b[1]);
    let right = a[3].min(b[3]);
    let top = a[0].max(b[0]);
    let bottom = a[2].min(b[2]);
    // `left >= right or top >= bottom` -> 0 (a NaN coordinate falls through to NaN, as in NumPy).
    if left >= right || top >= bottom {
        return 0.0;
    }
    let inter = (right - left + 1.0) * (bottom - top + 1.0);
    inter / (sum_area - inter)
}

/// `max` as NumPy's `np.maximum` on two float32 scalars (NaN propagates).
fn np_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}
fn np_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.min(b)
    }
}

/// Intersection-over-union with the +1-pixel convention and clamped widths (the IoU of
/// `pairwise_nms` / `nms_cpu`), in float32.
pub fn iou_plus_one_clamped(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area_a = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0);
    let area_b = (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let w = np_max(0.0, np_min(a[2], b[2]) - np_max(a[0], b[0]) + 1.0);
    let h = np_max(0.0, np_min(a[3], b[3]) - np_max(a[1], b[1]) + 1.0);
    let inter = w * h;
    inter / (area_a + area_b - inter)
}

/// The official triplet NMS of one group (`pairwise_nms`): visits the group by descending score
/// and suppresses every remaining prediction with
/// `IoU_sub^alpha · IoU_obj^beta > thres`. Returns kept positions into the group, in visiting
/// order (descending score; ties in reverse input order, as `argsort()[::-1]` of a stable sort).
pub fn pairwise_nms(
    subs: &[[f32; 4]],
    objs: &[[f32; 4]],
    scores: &[f32],
    thres: f32,
    alpha: f32,
    beta: f32,
) -> Vec<usize> {
    let mut order = argsort_desc_reverse_ties(scores);
    let mut keep = Vec::new();
    while let Some(&i) = order.first() {
        keep.push(i);
        order = order[1..]
            .iter()
            .copied()
            .filter(|&j| {
                let s = iou_plus_one_clamped(&subs[i], &subs[j]);
                let o = iou_plus_one_clamped(&objs[i], &objs[j]);
                let ovr = s.powf(alpha) * o.powf(beta);
                // np.where(ovr <= thres): NaN is suppressed.
                ovr <= thres
            })
            .collect();
    }
    keep
}

/// The classic single-box NMS (`nms_cpu`), in float32, with the +1-pixel convention.
pub fn nms_single(boxes: &[[f32; 4]], scores: &[f32], thres: f32) -> Vec<usize> {
    let mut order = argsort_desc_reverse_ties(scores);
    let mut keep = Vec::new();
    while let Some(&i) = order.first() {
        keep.push(i);
        order = order[1..]
            .iter()
            .copied()
            .filter(|&j| iou_plus_one_clamped(&boxes[i], &boxes[j]) <= thres)
            .collect();
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn np_sum_matches_pairwise_blocks() {
        let v: Vec<f64> = (0..300).map(|i| 0.1 * i as f64 + 1e-3).collect();
        let s = np_sum(&v);
        let naive: f64 = v.iter().sum();
        assert!((s - naive).abs() < 1e-9);
        assert_eq!(np_sum(&[1.0, 2.0]), 3.0);
        assert!(np_mean(&[]).is_nan());
    }

    #[test]
    fn eleven_point_thresholds_are_numpy_arange() {
        let t = eleven_point_thresholds();
        assert_eq!(t[3], 0.30000000000000004);
        assert_eq!(t[10], 1.0);
        // recall 3/10 does not reach the 0.30000000000000004 threshold
        let ap = voc_ap_11point(&[0.3], &[1.0]);
        assert!((ap - 3.0 / 11.0).abs() < 1e-15);
    }

    #[test]
    fn ap_corner_cases() {
        // perfect ranking
        let r = ranked_11point_ap(&[0.9, 0.8], &[true, true], 2);
        assert!((r.ap - 1.0).abs() < 1e-12);
        assert_eq!(r.max_recall, 1.0);
        // no true positive
        let r = ranked_11point_ap(&[0.9], &[false], 3);
        assert_eq!(r.ap, 0.0);
        // FP first then TP: precision 0.5 at recall 1 -> 11 * 0.5 / 11
        let r = ranked_11point_ap(&[0.9, 0.8], &[false, true], 1);
        assert!((r.ap - 0.5).abs() < 1e-12);
        // all-point AP
        let ap = voc_ap_all_point(&[0.5, 0.5, 1.0], &[1.0, 0.5, 2.0 / 3.0]);
        assert!((ap - (0.5 * 1.0 + 0.5 * 2.0 / 3.0)).abs() < 1e-12);
        assert_eq!(voc_ap_all_point(&[], &[]), 0.0);
    }

    #[test]
    fn iou_conventions() {
        let a = [0.0, 0.0, 9.0, 9.0];
        assert_eq!(iou_official(&a, &a), 1.0);
        // zero-width box: the strict intersection test gives 0 even against itself
        let z = [5.0, 0.0, 5.0, 9.0];
        assert_eq!(iou_official(&z, &z), 0.0);
        // touching boxes: no overlap under the official test, one pixel column under NMS's
        let b = [9.0, 0.0, 18.0, 9.0];
        assert_eq!(iou_official(&a, &b), 0.0);
        assert!((iou_plus_one_clamped(&a, &b) - 10.0 / 190.0).abs() < 1e-6);
        // half overlap with +1 areas: [0,9] vs [5,14] -> inter 5*10, union 150
        let c = [5.0, 0.0, 14.0, 9.0];
        assert!((iou_official(&a, &c) - 50.0 / 150.0).abs() < 1e-7);
    }

    #[test]
    fn nms_suppresses_by_product_and_keeps_order() {
        let subs = [
            [0.0, 0.0, 9.0, 9.0],
            [0.0, 0.0, 9.0, 9.0],
            [100.0, 100.0, 109.0, 109.0],
        ];
        let objs = [
            [0.0, 0.0, 9.0, 9.0],
            [0.0, 0.0, 9.0, 8.0],
            [0.0, 0.0, 9.0, 9.0],
        ];
        let keep = pairwise_nms(&subs, &objs, &[0.5, 0.9, 0.7], 0.7, 1.0, 0.5);
        assert_eq!(keep, vec![1, 2]);
        // ties: reverse input order
        let keep = pairwise_nms(&subs[2..], &objs[2..], &[0.5], 0.7, 1.0, 0.5);
        assert_eq!(keep, vec![0]);
        assert_eq!(argsort_desc_reverse_ties(&[0.5, 0.5, 0.9]), vec![2, 1, 0]);
        assert_eq!(argsort_desc_stable(&[0.5, 0.5, 0.9]), vec![2, 0, 1]);
        let keep = nms_single(
            &[[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0]],
            &[0.1, 0.2],
            0.5,
        );
        assert_eq!(keep, vec![1]);
    }
}
