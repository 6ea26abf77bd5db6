//! From RLIPv2-ParSeDA head outputs to scored HOI triplets, on plain host arrays.
//!
//! Reference: Yuan et al., "RLIPv2: Fast Scaling of Relational Language-Image Pre-training"
//! (ICCV 2023). Official code: `models/hoi.py::PostProcessHOI` (object label and score from the
//! softmax without the "no objects" class, verb scores `sigmoid(verb) · object score`, boxes in
//! original-image pixels) and the prediction side of `datasets/hico_eval.py::HICOEvaluator`
//! (verb–object validity mask, stable top-k, optional triplet NMS).
//!
//! Everything here works on row-major `f32` slices, so any backend's outputs can be fed after one
//! copy to the host. Softmax, sigmoid and box scaling are computed in `f64` and rounded once; the
//! triplet NMS runs in `f32` as the official NumPy code does.

/// Raw head outputs of a batch (one decoder layer), row-major.
#[derive(Debug, Clone, Copy)]
pub struct HoiHeadOutputs<'a> {
    /// Images B.
    pub batch: usize,
    /// Pairs per image P.
    pub pairs: usize,
    /// `[B, P, C]` object logits; the last of the C classes is "no objects".
    pub obj_logits: &'a [f32],
    /// `[B, P, C]` subject logits (only needed for the zero-shot subject filter).
    pub sub_logits: Option<&'a [f32]>,
    /// Object classes C, "no objects" included.
    pub num_obj_classes: usize,
    /// `[B, P, V]` verb logits (sigmoid classifier).
    pub verb_logits: &'a [f32],
    /// Verb classes V.
    pub num_verbs: usize,
    /// `[B, P, 4]` subject boxes, normalised `(cx, cy, w, h)`.
    pub sub_boxes: &'a [f32],
    /// `[B, P, 4]` object boxes, normalised `(cx, cy, w, h)`.
    pub obj_boxes: &'a [f32],
}

/// Options of [`postprocess_hoi`]. The default is the official HICO-DET setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PostProcessConfig {
    /// Label written for every subject (person = 0).
    pub subject_category_id: i64,
    /// Zero-shot "NF" evaluation (`zero_shot_hoi_eval`): keep only pairs whose best real subject
    /// class is `subject_category_id`; ids are renumbered over the kept pairs.
    pub subject_filter: bool,
}

/// `PostProcessHOI` output for one image: `2·n` boxes (subjects, then objects) and `n` pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct HoiDetections {
    /// Class of each box (position among the real object classes).
    pub labels: Vec<i64>,
    /// `[x1, y1, x2, y2]` in original-image pixels.
    pub boxes: Vec<[f32; 4]>,
    /// `[n, V]` verb scores, row-major.
    pub verb_scores: Vec<f32>,
    /// Verb classes V.
    pub num_verbs: usize,
    /// Subject box index of each pair.
    pub sub_ids: Vec<usize>,
    /// Object box index of each pair.
    pub obj_ids: Vec<usize>,
}

impl HoiDetections {
    /// Number of pairs.
    pub fn num_pairs(&self) -> usize {
        self.sub_ids.len()
    }

    /// Score of pair `p` for verb `v`.
    pub fn score(&self, p: usize, v: usize) -> f32 {
        self.verb_scores[p * self.num_verbs + v]
    }
}

/// Error for inconsistent input sizes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("post-processing: {0}")]
pub struct PostProcessError(pub String);

fn expect_len(name: &str, got: usize, want: usize) -> Result<(), PostProcessError> {
    if got == want { Ok(()) } else { Err(PostProcessError(format!("{name} has {got} values, expected {want}"))) }
}

/// The best real class of a logit row (all but the last, "no objects") and its softmax
/// probability over all classes; the first index wins on ties, as `torch.max`. `logits` needs
/// at least two classes.
pub fn best_real_class(logits: &[f32]) -> (f32, usize) {
    let (p, i) = best_real_class_f64(logits);
    (p as f32, i)
}

fn best_real_class_f64(logits: &[f32]) -> (f64, usize) {
    let real = &logits[..logits.len().saturating_sub(1)];
    let mut best = 0;
    for (i, &x) in real.iter().enumerate() {
        if x > real[best] {
            best = i;
        }
    }
    let m = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let sum: f64 = logits.iter().map(|&x| (x as f64 - m).exp()).sum();
    ((real[best] as f64 - m).exp() / sum, best)
}

/// `box_cxcywh_to_xyxy` of the 4 values `b`, scaled by the image size `(h, w)`.
pub fn cxcywh_to_pixels(b: &[f32], size_hw: [usize; 2]) -> [f32; 4] {
    let (h, w) = (size_hw[0] as f64, size_hw[1] as f64);
    let (cx, cy, bw, bh) = (b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64);
    [((cx - 0.5 * bw) * w) as f32, ((cy - 0.5 * bh) * h) as f32, ((cx + 0.5 * bw) * w) as f32, ((cy + 0.5 * bh) * h) as f32]
}

/// `PostProcessHOI` (sigmoid verbs, no temperature): one [`HoiDetections`] per image, where
/// `sizes_hw[b]` is image `b`'s original `(h, w)`.
pub fn postprocess_hoi(
    out: &HoiHeadOutputs<'_>,
    sizes_hw: &[[usize; 2]],
    cfg: &PostProcessConfig,
) -> Result<Vec<HoiDetections>, PostProcessError> {
    let (b, p, c, v) = (out.batch, out.pairs, out.num_obj_classes, out.num_verbs);
    expect_len("obj_logits", out.obj_logits.len(), b * p * c)?;
    expect_len("verb_logits", out.verb_logits.len(), b * p * v)?;
    expect_len("sub_boxes", out.sub_boxes.len(), b * p * 4)?;
    expect_len("obj_boxes", out.obj_boxes.len(), b * p * 4)?;
    expect_len("sizes_hw", sizes_hw.len(), b)?;
    if c < 2 {
        return Err(PostProcessError("need a real object class besides \"no objects\"".into()));
    }
    let sub_logits = match (cfg.subject_filter, out.sub_logits) {
        (false, _) => None,
        (true, Some(s)) => {
            expect_len("sub_logits", s.len(), b * p * c)?;
            Some(s)
        }
        (true, None) => return Err(PostProcessError("the subject filter needs sub_logits".into())),
    };
    let mut result = Vec::with_capacity(b);
    for (img, &hw) in sizes_hw.iter().enumerate() {
        let rows = (img * p..(img + 1) * p).filter(|&r| {
            sub_logits.is_none_or(|s| best_real_class(&s[r * c..(r + 1) * c]).1 as i64 == cfg.subject_category_id)
        });
        let (mut obj_labels, mut sub_px, mut obj_px, mut scores) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            let (os, label) = best_real_class_f64(&out.obj_logits[r * c..(r + 1) * c]);
            obj_labels.push(label as i64);
            sub_px.push(cxcywh_to_pixels(&out.sub_boxes[r * 4..r * 4 + 4], hw));
            obj_px.push(cxcywh_to_pixels(&out.obj_boxes[r * 4..r * 4 + 4], hw));
            scores.extend(out.verb_logits[r * v..(r + 1) * v].iter().map(|&x| (os / (1.0 + (-x as f64).exp())) as f32));
        }
        let n = obj_labels.len();
        let mut labels = vec![cfg.subject_category_id; n];
        labels.extend(obj_labels);
        sub_px.extend(obj_px);
        result.push(HoiDetections {
            labels,
            boxes: sub_px,
            verb_scores: scores,
            num_verbs: v,
            sub_ids: (0..n).collect(),
            obj_ids: (n..2 * n).collect(),
        });
    }
    Ok(result)
}

/// One scored (subject, object, verb) candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoiCandidate {
    /// Subject box index.
    pub subject_id: usize,
    /// Object box index.
    pub object_id: usize,
    /// Verb index.
    pub verb: usize,
    /// Score after the validity mask.
    pub score: f32,
}

/// A `[verbs, objects]` verb–object validity matrix (HICO-DET's `corre_hico.npy`, 600 ones).
#[derive(Debug, Clone, PartialEq)]
pub struct VerbObjectMask {
    /// Verb classes (rows).
    pub num_verbs: usize,
    /// Object classes (columns).
    pub num_objects: usize,
    /// Row-major values.
    pub values: Vec<f64>,
}

impl VerbObjectMask {
    /// Wraps row-major `values` of shape `[num_verbs, num_objects]`.
    pub fn new(num_verbs: usize, num_objects: usize, values: Vec<f64>) -> Result<Self, PostProcessError> {
        expect_len("verb-object mask", values.len(), num_verbs * num_objects)?;
        Ok(Self { num_verbs, num_objects, values })
    }

    /// The entry for `verb` and object class `object`.
    pub fn get(&self, verb: usize, object: usize) -> f64 {
        self.values[verb * self.num_objects + object]
    }
}

/// Descending order for scores, NaN last; `-0.0 == 0.0` as in Python.
fn desc(a: f32, b: f32) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal),
        (x, y) => x.cmp(&y),
    }
}

/// The `k` best (pair, verb) candidates of one image: every score times `mask[verb, object
/// label]` (when given), then Python's stable descending sort (ties keep the flat
/// `pair · V + verb` order) and the cut at `k` (the official `max_hois` = 100).
pub fn top_candidates(
    det: &HoiDetections,
    mask: Option<&VerbObjectMask>,
    k: usize,
) -> Result<Vec<HoiCandidate>, PostProcessError> {
    let v = det.num_verbs;
    expect_len("verb_scores", det.verb_scores.len(), det.num_pairs() * v)?;
    if let Some(m) = mask {
        expect_len("mask rows", m.num_verbs, v)?;
    }
    let mut cands = Vec::with_capacity(det.num_pairs() * v);
    for (p, (&s, &o)) in det.sub_ids.iter().zip(&det.obj_ids).enumerate() {
        let label = usize::try_from(det.labels[o]).map_err(|_| PostProcessError(format!("negative label at {o}")))?;
        if mask.is_some_and(|m| label >= m.num_objects) {
            return Err(PostProcessError(format!("object label {label} outside the mask")));
        }
        for verb in 0..v {
            let raw = det.score(p, verb);
            // `hoi_scores *= masks`: float32 scores times float64 mask, stored as float32.
            let score = mask.map_or(raw, |m| (raw as f64 * m.get(verb, label)) as f32);
            cands.push(HoiCandidate { subject_id: s, object_id: o, verb, score });
        }
    }
    cands.sort_by(|a, b| desc(a.score, b.score));
    cands.truncate(k);
    Ok(cands)
}

/// The triplet NMS of `--use_nms_filter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripletNms {
    /// A candidate is suppressed when `IoU_sub^alpha · IoU_obj^beta > thres`.
    pub thres: f32,
    /// Exponent of the subject IoU.
    pub alpha: f32,
    /// Exponent of the object IoU.
    pub beta: f32,
}

impl Default for TripletNms {
    /// The official setting: 0.7, 1, 0.5.
    fn default() -> Self {
        Self { thres: 0.7, alpha: 1.0, beta: 0.5 }
    }
}

/// Greedy NMS over pairs of boxes (official `pairwise_nms`, float32, `+1`-pixel areas); returns
/// the kept indices in visiting order. The visiting order is `scores.argsort()[::-1]` with ties
/// in reverse input order (what a stable ascending argsort gives; NumPy's own tie order is
/// unspecified).
pub fn pairwise_nms(subs: &[[f32; 4]], objs: &[[f32; 4]], scores: &[f32], nms: &TripletNms) -> Vec<usize> {
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let inter = |a: &[f32; 4], b: &[f32; 4]| {
        let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
        let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
        w * h
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| desc(scores[a], scores[b]).then(b.cmp(&a)));
    let mut keep = Vec::new();
    while let Some((&i, rest)) = order.split_first() {
        keep.push(i);
        let (sa, oa) = (area(&subs[i]), area(&objs[i]));
        order = rest
            .iter()
            .copied()
            .filter(|&j| {
                let si = inter(&subs[i], &subs[j]);
                let oi = inter(&objs[i], &objs[j]);
                let ovr = (si / (sa + area(&subs[j]) - si)).powf(nms.alpha)
                    * (oi / (oa + area(&objs[j]) - oi)).powf(nms.beta);
                ovr <= nms.thres
            })
            .collect();
    }
    keep
}

/// Triplet NMS over one image's candidates: groups by (subject label, object label, verb) in
/// order of first appearance, runs [`pairwise_nms`] in each group and returns the kept
/// candidates group after group (the official output order).
pub fn triplet_nms(cands: &[HoiCandidate], det: &HoiDetections, nms: &TripletNms) -> Vec<HoiCandidate> {
    let mut groups: Vec<((i64, i64, usize), Vec<usize>)> = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        let key = (det.labels[c.subject_id], det.labels[c.object_id], c.verb);
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    let mut out = Vec::with_capacity(cands.len());
    for (_, members) in groups {
        let subs: Vec<[f32; 4]> = members.iter().map(|&i| det.boxes[cands[i].subject_id]).collect();
        let objs: Vec<[f32; 4]> = members.iter().map(|&i| det.boxes[cands[i].object_id]).collect();
        let scores: Vec<f32> = members.iter().map(|&i| cands[i].score).collect();
        out.extend(pairwise_nms(&subs, &objs, &scores, nms).into_iter().map(|k| cands[members[k]]));
    }
    out
}

/// The HICO-DET prediction list of one image as the official evaluator holds it before
/// matching: [`top_candidates`] (mask, top `k`) then, if `nms` is given, [`triplet_nms`].
pub fn hico_predictions(
    det: &HoiDetections,
    mask: &VerbObjectMask,
    k: usize,
    nms: Option<&TripletNms>,
) -> Result<Vec<HoiCandidate>, PostProcessError> {
    let top = top_candidates(det, Some(mask), k)?;
    Ok(match nms {
        Some(n) => triplet_nms(&top, det, n),
        None => top,
    })
}
