//! `models/hoi.py::PostProcessHOI` and `PostProcessSGG` on plain float32 arrays.
//!
//! Raw head outputs are row-major `[B, Q, C]` slices; boxes are normalised `cx, cy, w, h`.
//! The results are [`PairPredictions`] in original-image pixels, as the evaluators take them.

use super::{EvalError, PairPredictions, invalid};

/// Raw outputs of the HOI / SGG heads for a batch.
#[derive(Debug, Clone, Copy)]
pub struct RawOutputs<'a> {
    /// Batch size B.
    pub batch: usize,
    /// Queries (pairs) per image Q.
    pub queries: usize,
    /// Object logits `[B, Q, C_obj]`; the last class is "no object".
    pub obj_logits: &'a [f32],
    /// Number of object logits per query (C_obj).
    pub num_obj_logits: usize,
    /// Subject logits `[B, Q, C_sub]` (SGG, and HOI zero-shot evaluation); last = "no object".
    pub sub_logits: Option<&'a [f32]>,
    /// Number of subject logits per query.
    pub num_sub_logits: usize,
    /// Verb logits `[B, Q, V]`.
    pub verb_logits: &'a [f32],
    /// Number of verbs V.
    pub num_verbs: usize,
    /// Subject boxes `[B, Q, 4]`, normalised cxcywh.
    pub sub_boxes: &'a [f32],
    /// Object boxes `[B, Q, 4]`, normalised cxcywh.
    pub obj_boxes: &'a [f32],
}

impl RawOutputs<'_> {
    fn check(&self, target_sizes_hw: &[[i64; 2]], need_sub: bool) -> Result<(), EvalError> {
        let bq = self.batch * self.queries;
        let checks = [
            (
                "obj_logits",
                self.obj_logits.len(),
                bq * self.num_obj_logits,
            ),
            ("verb_logits", self.verb_logits.len(), bq * self.num_verbs),
            ("sub_boxes", self.sub_boxes.len(), bq * 4),
            ("obj_boxes", self.obj_boxes.len(), bq * 4),
        ];
        for (name, got, want) in checks {
            if got != want {
                return Err(invalid(format!("{name} has {got} values, expected {want}")));
            }
        }
        if self.num_obj_logits < 2 {
            return Err(invalid(
                "need at least one real object class plus 'no object'",
            ));
        }
        if need_sub {
            let s = self
                .sub_logits
                .ok_or_else(|| invalid("subject logits are required"))?;
            if s.len() != bq * self.num_sub_logits || self.num_sub_logits < 2 {
                return Err(invalid(format!(
                    "sub_logits has {} values, expected {}",
                    s.len(),
                    bq * self.num_sub_logits
                )));
            }
        }
        if target_sizes_hw.len() != self.batch {
            return Err(invalid(format!(
                "{} target sizes for a batch of {}",
                target_sizes_hw.len(),
                self.batch
            )));
        }
        Ok(())
    }
}

/// Softmax over `logits` (float32, max-subtracted), then the best score and its index among all
/// but the last class (`prob[..., :-1].max(-1)`; the first index wins on ties).
pub fn softmax_best_real(logits: &[f32]) -> (f32, usize) {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - m).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut best = (f32::NEG_INFINITY, 0usize);
    for (i, &e) in exps[..exps.len() - 1].iter().enumerate() {
        let p = e / sum;
        if p > best.0 || (i == 0 && p.is_nan()) {
            best = (p, i);
        }
    }
    best
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `box_cxcywh_to_xyxy` then scaling by `(w, h, w, h)`, in float32.
fn to_pixels(b: &[f32], hw: [i64; 2]) -> [f32; 4] {
    let (h, w) = (hw[0] as f32, hw[1] as f32);
    let (cx, cy, bw, bh) = (b[0], b[1], b[2], b[3]);
    [
        (cx - 0.5 * bw) * w,
        (cy - 0.5 * bh) * h,
        (cx + 0.5 * bw) * w,
        (cy + 0.5 * bh) * h,
    ]
}

/// Options of [`postprocess_hoi`]; the default is the official one (person = 0, no filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PostProcessHoiConfig {
    /// The subject label written for every pair (person = 0).
    pub subject_category_id: i64,
    /// Zero-shot (NF) evaluation: keep only pairs whose subject argmax over the real classes is
    /// `subject_category_id` (needs `sub_logits`); ids are renumbered over the kept pairs.
    pub zero_shot_hoi_eval: bool,
}

/// `PostProcessHOI` (sigmoid verbs, no temperature, no verb curing): object label and score from
/// the softmax without the last class, verb scores `sigmoid(verb) · object score`, boxes in
/// pixels; `target_sizes_hw` holds each image's original `(h, w)`.
pub fn postprocess_hoi(
    raw: &RawOutputs<'_>,
    target_sizes_hw: &[[i64; 2]],
    cfg: &PostProcessHoiConfig,
) -> Result<Vec<PairPredictions>, EvalError> {
    raw.check(target_sizes_hw, cfg.zero_shot_hoi_eval)?;
    let (q, c, v) = (raw.queries, raw.num_obj_logits, raw.num_verbs);
    let mut out = Vec::with_capacity(raw.batch);
    for (b, &hw) in target_sizes_hw.iter().enumerate() {
        let mut sub_labels = Vec::new();
        let mut obj_labels = Vec::new();
        let mut sub_boxes = Vec::new();
        let mut obj_boxes = Vec::new();
        let mut scores = Vec::new();
        for qi in 0..q {
            let row = b * q + qi;
            if cfg.zero_shot_hoi_eval {
                let cs = raw.num_sub_logits;
                let s = raw.sub_logits.unwrap_or_default();
                let (_, sl) = softmax_best_real(&s[row * cs..(row + 1) * cs]);
                if sl as i64 != cfg.subject_category_id {
                    continue;
                }
            }
            let (os, ol) = softmax_best_real(&raw.obj_logits[row * c..(row + 1) * c]);
            sub_labels.push(cfg.subject_category_id);
            obj_labels.push(ol as i64);
            sub_boxes.push(to_pixels(&raw.sub_boxes[row * 4..row * 4 + 4], hw));
            obj_boxes.push(to_pixels(&raw.obj_boxes[row * 4..row * 4 + 4], hw));
            scores.extend(
                raw.verb_logits[row * v..(row + 1) * v]
                    .iter()
                    .map(|&x| sigmoid(x) * os),
            );
        }
        out.push(assemble(
            sub_labels, obj_labels, sub_boxes, obj_boxes, scores, v,
        ));
    }
    Ok(out)
}

/// `PostProcessSGG` (sigmoid relations): subject and object labels / scores from their softmax
/// without the last class, relation scores `sigmoid(rel) · object score · subject score`.
pub fn postprocess_sgg(
    raw: &RawOutputs<'_>,
    target_sizes_hw: &[[i64; 2]],
) -> Result<Vec<PairPredictions>, EvalError> {
    raw.check(target_sizes_hw, true)?;
    let (q, c, cs, v) = (
        raw.queries,
        raw.num_obj_logits,
        raw.num_sub_logits,
        raw.num_verbs,
    );
    let s = raw.sub_logits.unwrap_or_default();
    let mut out = Vec::with_capacity(raw.batch);
    for (b, &hw) in target_sizes_hw.iter().enumerate() {
        let mut sub_labels = Vec::with_capacity(q);
        let mut obj_labels = Vec::with_capacity(q);
        let mut sub_boxes = Vec::with_capacity(q);
        let mut obj_boxes = Vec::with_capacity(q);
        let mut scores = Vec::with_capacity(q * v);
        for qi in 0..q {
            let row = b * q + qi;
            let (os, ol) = softmax_best_real(&raw.obj_logits[row * c..(row + 1) * c]);
            let (ss, sl) = softmax_best_real(&s[row * cs..(row + 1) * cs]);
            sub_labels.push(sl as i64);
            obj_labels.push(ol as i64);
            sub_boxes.push(to_pixels(&raw.sub_boxes[row * 4..row * 4 + 4], hw));
            obj_boxes.push(to_pixels(&raw.obj_boxes[row * 4..row * 4 + 4], hw));
            scores.extend(
                raw.verb_logits[row * v..(row + 1) * v]
                    .iter()
                    .map(|&x| sigmoid(x) * os * ss),
            );
        }
        out.push(assemble(
            sub_labels, obj_labels, sub_boxes, obj_boxes, scores, v,
        ));
    }
    Ok(out)
}

fn assemble(
    sub_labels: Vec<i64>,
    obj_labels: Vec<i64>,
    sub_boxes: Vec<[f32; 4]>,
    obj_boxes: Vec<[f32; 4]>,
    verb_scores: Vec<f32>,
    num_verbs: usize,
) -> PairPredictions {
    let n = sub_labels.len();
    let mut labels = sub_labels;
    labels.extend(obj_labels);
    let mut boxes = sub_boxes;
    boxes.extend(obj_boxes);
    PairPredictions {
        labels,
        boxes,
        verb_scores,
        num_verbs,
        sub_ids: (0..n).collect(),
        obj_ids: (n..2 * n).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_real_class_skips_no_object() {
        // the largest logit is "no object": the best real class is returned
        let (p, i) = softmax_best_real(&[1.0, 2.0, 5.0]);
        assert_eq!(i, 1);
        assert!(p > 0.0 && p < 0.1);
    }

    #[test]
    fn rejects_bad_shapes() {
        let raw = RawOutputs {
            batch: 1,
            queries: 1,
            obj_logits: &[0.0; 3],
            num_obj_logits: 3,
            sub_logits: None,
            num_sub_logits: 0,
            verb_logits: &[0.0; 2],
            num_verbs: 2,
            sub_boxes: &[0.5; 4],
            obj_boxes: &[0.5; 3],
        };
        assert!(postprocess_hoi(&raw, &[[10, 10]], &PostProcessHoiConfig::default()).is_err());
        assert!(
            postprocess_sgg(
                &RawOutputs {
                    obj_boxes: &[0.5; 4],
                    ..raw
                },
                &[[10, 10]]
            )
            .is_err()
        );
        let ok = postprocess_hoi(
            &RawOutputs {
                obj_boxes: &[0.5; 4],
                ..raw
            },
            &[[10, 20]],
            &PostProcessHoiConfig::default(),
        )
        .unwrap();
        assert_eq!(ok[0].boxes[0], [5.0, 2.5, 15.0, 7.5]);
        assert_eq!(ok[0].obj_ids, vec![1]);
    }
}
