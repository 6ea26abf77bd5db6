//! The individual loss terms of `SetCriterionHOI`, as differentiable Burn tensor code.
//!
//! Every function takes predictions on any device (autodiff or not) plus host-side targets and
//! returns a one-element tensor on the predictions' device. Targets are constants: no gradient
//! flows into them, as in the official code where they come from the `no_grad` matcher.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::{log_softmax, sigmoid};

/// Probability clamp of the official focal losses (`eps = 1e-6`).
pub const FOCAL_EPS: f64 = 1e-6;

/// Where the predictions are: their device and float type (float32 under mixed-precision
/// training, whatever the device's default float type), so targets are created alike.
type At = (Device, DType);

fn at<const D: usize>(t: &Tensor<D>) -> At {
    (t.device(), t.dtype())
}

fn host_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], at: &At) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), (&at.0, at.1))
}

/// A one-element zero on `dev` in `dtype` (the value of a term with nothing to compare).
pub fn zero(dev: &Device, dtype: DType) -> Tensor<1> {
    Tensor::zeros([1], (dev, dtype))
}

/// Class-weighted cross-entropy over every query, as
/// `F.cross_entropy(logits.transpose(1, 2), targets, weight)`: class weights are 1 except the
/// last ("no objects") class, weighted `eos_coef`, and the mean divides by the summed weights of
/// the target classes.
///
/// `logits` is `[B, P, C]`; `targets` holds `B·P` class indices (`< C`), row-major.
///
/// # Panics
/// If `targets.len() != B·P` or a target is `>= C`.
pub fn weighted_cross_entropy(logits: Tensor<3>, targets: &[usize], eos_coef: f64) -> Tensor<1> {
    let [b, p, c] = logits.dims();
    assert_eq!(targets.len(), b * p, "one target class per query");
    assert!(targets.iter().all(|&t| t < c), "target class out of range");
    let dev = at(&logits);
    let weight = |t: usize| if t == c - 1 { eos_coef } else { 1.0 };
    let idx: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let idx = Tensor::<3, Int>::from_data(TensorData::new(idx, [b, p, 1]), &dev.0);
    let w: Vec<f32> = targets.iter().map(|&t| weight(t) as f32).collect();
    let w_sum: f64 = targets.iter().map(|&t| weight(t)).sum();
    let nll = log_softmax(logits, 2).gather(2, idx).neg();
    (nll * host_tensor(w, [b, p, 1], &dev))
        .sum()
        .div_scalar(w_sum)
}

/// The official verb focal loss `_neg_loss` (CornerNet form) on sigmoid probabilities:
/// `−(Σ_pos log p·(1−p)² + Σ_neg log(1−p)·p²·(1−t)⁴) / max(#pos, 1)`, with `p` clamped to
/// `[1e-6, 1 − 1e-6]`, positives `t == 1`, negatives `t < 1`.
///
/// `logits` is `[B, P, V]`; `targets` its `B·P·V` dense targets, row-major.
///
/// # Panics
/// If `targets.len() != B·P·V`.
pub fn focal_verb_loss(logits: Tensor<3>, targets: &[f32]) -> Tensor<1> {
    let [b, p, v] = logits.dims();
    assert_eq!(targets.len(), b * p * v, "dense verb targets");
    let dev = at(&logits);
    let pos: Vec<f32> = targets.iter().map(|&t| (t == 1.0) as u8 as f32).collect();
    let neg_w: Vec<f32> = targets
        .iter()
        .map(|&t| if t < 1.0 { (1.0 - t).powi(4) } else { 0.0 })
        .collect();
    let num_pos = pos.iter().filter(|&&x| x > 0.0).count();
    let prob = sigmoid(logits).clamp(FOCAL_EPS, 1.0 - FOCAL_EPS);
    let one_minus = prob.clone().neg().add_scalar(1.0);
    let pos_loss = prob.clone().log()
        * one_minus.clone()
        * one_minus.clone()
        * host_tensor(pos, [b, p, v], &dev);
    let neg_loss = one_minus.log() * prob.clone() * prob * host_tensor(neg_w, [b, p, v], &dev);
    (pos_loss.sum() + neg_loss.sum())
        .neg()
        .div_scalar(num_pos.max(1) as f64)
}

/// The official soft-target focal loss `_soft_neg_loss` (quality focal loss), used with
/// `--giou_verb_label` (RLIPv2's RQL) and its pseudo-labels (RPL):
/// `−Σ |t − p|^β·((1−t)·log(1−p) + t·log p) / max(#(t > 0), 1)`, `p` clamped as in
/// [`focal_verb_loss`].
///
/// # Panics
/// If `targets.len() != B·P·V`.
pub fn quality_focal_verb_loss(logits: Tensor<3>, targets: &[f32], beta: f64) -> Tensor<1> {
    let [b, p, v] = logits.dims();
    assert_eq!(targets.len(), b * p * v, "dense verb targets");
    let dev = at(&logits);
    let num_pos = targets.iter().filter(|&&t| t > 0.0).count();
    let gt = host_tensor(targets.to_vec(), [b, p, v], &dev);
    let prob = sigmoid(logits).clamp(FOCAL_EPS, 1.0 - FOCAL_EPS);
    let scale = (gt.clone() - prob.clone()).abs().powf_scalar(beta);
    let bce = gt.clone().neg().add_scalar(1.0) * prob.clone().neg().add_scalar(1.0).log()
        + gt * prob.log();
    (scale * bce).sum().neg().div_scalar(num_pos.max(1) as f64)
}

/// `[N, 4]` `(cx, cy, w, h)` boxes to `(x0, y0, x1, y1)`.
pub fn box_cxcywh_to_xyxy(boxes: Tensor<2>) -> Tensor<2> {
    let col = |i| boxes.clone().narrow(1, i, 1);
    let (cx, cy, w, h) = (col(0), col(1), col(2), col(3));
    let (hw, hh) = (w.mul_scalar(0.5), h.mul_scalar(0.5));
    Tensor::cat(
        vec![
            cx.clone() - hw.clone(),
            cy.clone() - hh.clone(),
            cx + hw,
            cy + hh,
        ],
        1,
    )
}

/// Generalized IoU of matching rows of two `[N, 4]` `(x0, y0, x1, y1)` box sets (the diagonal
/// of the official pairwise `generalized_box_iou`), `[N]`.
pub fn paired_generalized_box_iou(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    let n = a.dims()[0];
    let col = |t: &Tensor<2>, i| t.clone().narrow(1, i, 1);
    let (a0, a1, a2, a3) = (col(&a, 0), col(&a, 1), col(&a, 2), col(&a, 3));
    let (b0, b1, b2, b3) = (col(&b, 0), col(&b, 1), col(&b, 2), col(&b, 3));
    let area_a = (a2.clone() - a0.clone()) * (a3.clone() - a1.clone());
    let area_b = (b2.clone() - b0.clone()) * (b3.clone() - b1.clone());
    let iw = (a2.clone().min_pair(b2.clone()) - a0.clone().max_pair(b0.clone())).clamp_min(0.0);
    let ih = (a3.clone().min_pair(b3.clone()) - a1.clone().max_pair(b1.clone())).clamp_min(0.0);
    let inter = iw * ih;
    let union = area_a + area_b - inter.clone();
    let iou = inter / union.clone();
    let cw = (a2.max_pair(b2) - a0.min_pair(b0)).clamp_min(0.0);
    let ch = (a3.max_pair(b3) - a1.min_pair(b1)).clamp_min(0.0);
    let enclosing = cw * ch;
    let giou = iou - (enclosing.clone() - union) / enclosing;
    giou.reshape([n])
}

/// [`paired_generalized_box_iou`] of two `[N, 4]` `(cx, cy, w, h)` box sets: one launch where
/// the installed fused kernel takes it (forward and backward), else the composite.
pub fn paired_giou_cxcywh(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    if let Some(k) = rlip_model::fused::kernel()
        && let Some(g) = k.paired_giou(&a, &b)
    {
        return g;
    }
    paired_generalized_box_iou(box_cxcywh_to_xyxy(a), box_cxcywh_to_xyxy(b))
}

/// The four box terms of `loss_sub_obj_boxes`.
#[derive(Debug, Clone)]
pub struct BoxLosses {
    /// `loss_sub_bbox`: subject L1 summed over matched pairs, divided by `num_interactions`.
    pub sub_bbox: Tensor<1>,
    /// `loss_obj_bbox`: object L1 over pairs with an object box, divided by their count + 1e-4.
    pub obj_bbox: Tensor<1>,
    /// `loss_sub_giou`: `Σ (1 − GIoU)` of subjects, divided by `num_interactions`.
    pub sub_giou: Tensor<1>,
    /// `loss_obj_giou`: `Σ (1 − GIoU)` of objects with a box, divided by their count + 1e-4.
    pub obj_giou: Tensor<1>,
}

/// The official `loss_sub_obj_boxes`.
///
/// `sub_boxes`/`obj_boxes` are the `[B, P, 4]` predictions; `rows` the matched `b·P + q` query
/// rows and `tgt_sub`/`tgt_obj` their targets in the same order (`(cx, cy, w, h)`). Object terms
/// skip targets whose object box is all zeros and are normalised by the number of object boxes
/// (+1e-4), not by `num_interactions`; that is what the official code does. No matched pair
/// gives four zeros.
///
/// # Panics
/// If the three slices differ in length or a row is out of range.
pub fn box_losses(
    sub_boxes: Tensor<3>,
    obj_boxes: Tensor<3>,
    rows: &[usize],
    tgt_sub: &[[f32; 4]],
    tgt_obj: &[[f32; 4]],
    num_interactions: f64,
) -> BoxLosses {
    let [b, p, _] = sub_boxes.dims();
    let n = rows.len();
    assert!(
        tgt_sub.len() == n && tgt_obj.len() == n,
        "one target per matched row"
    );
    assert!(rows.iter().all(|&r| r < b * p), "matched row out of range");
    let dev = at(&sub_boxes);
    if n == 0 {
        return BoxLosses {
            sub_bbox: zero(&dev.0, dev.1),
            obj_bbox: zero(&dev.0, dev.1),
            sub_giou: zero(&dev.0, dev.1),
            obj_giou: zero(&dev.0, dev.1),
        };
    }
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &dev.0);
    let src_sub = sub_boxes.reshape([b * p, 4]).select(0, idx.clone());
    let src_obj = obj_boxes.reshape([b * p, 4]).select(0, idx);
    let flat = |v: &[[f32; 4]]| v.iter().flatten().copied().collect::<Vec<f32>>();
    let t_sub = host_tensor(flat(tgt_sub), [n, 4], &dev);
    let t_obj = host_tensor(flat(tgt_obj), [n, 4], &dev);
    let exist: Vec<f32> = tgt_obj
        .iter()
        .map(|bx| crate::matcher::object_box_exists(bx) as u8 as f32)
        .collect();
    let n_exist = exist.iter().sum::<f32>() as f64 + 1e-4;
    let exist_col = host_tensor(exist.clone(), [n, 1], &dev);
    let exist = host_tensor(exist, [n], &dev);

    let sub_bbox = (src_sub.clone() - t_sub.clone())
        .abs()
        .sum()
        .div_scalar(num_interactions);
    let obj_bbox = ((src_obj.clone() - t_obj.clone()).abs() * exist_col)
        .sum()
        .div_scalar(n_exist);
    let giou_sub = paired_giou_cxcywh(src_sub, t_sub);
    let giou_obj = paired_giou_cxcywh(src_obj, t_obj);
    let sub_giou = giou_sub
        .neg()
        .add_scalar(1.0)
        .sum()
        .div_scalar(num_interactions);
    let obj_giou = (giou_obj.neg().add_scalar(1.0) * exist)
        .sum()
        .div_scalar(n_exist);
    BoxLosses {
        sub_bbox,
        obj_bbox,
        sub_giou,
        obj_giou,
    }
}
