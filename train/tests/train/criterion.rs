//! The RLIPv2-ParSeDA training criterion against straightforward f64 re-computations of the
//! official formulas, gradient flow on an autodiff device, and non-finite reporting.

use burn::prelude::*;
use rlip_model::prediction_heads::LayerPredictions;
use rlip_train::loss::terms::{
    box_losses, focal_verb_loss, quality_focal_verb_loss, weighted_cross_entropy,
};
use rlip_train::loss::{Criterion, CriterionConfig, CriterionError, TERM_NAMES, VerbLoss};
use rlip_train::matcher::{
    HostPredictions, MatchError, MatcherConfig, PairMatcher, PairTargets, cxcywh_to_xyxy,
    generalized_box_iou,
};

// ---------------------------------------------------------------------------------------------
// Helpers.

fn device() -> Device {
    rlip_backends::default_device().expect("flex device")
}

fn tensor<const D: usize>(v: &[f32], shape: [usize; D], dev: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), dev)
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()[0]
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-5 * want.abs().max(1.0);
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} (diff {})",
        (got - want).abs()
    );
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f32 {
        (lo + (hi - lo) * self.unit()) as f32
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }
}

/// Host copy of one layer, to build tensors from and compute references with.
#[derive(Clone)]
struct Layer {
    b: usize,
    p: usize,
    n_obj: usize,
    n_verb: usize,
    sub_logits: Vec<f32>,
    obj_logits: Vec<f32>,
    verb_logits: Vec<f32>,
    sub_boxes: Vec<f32>,
    obj_boxes: Vec<f32>,
}

impl Layer {
    fn random(rng: &mut Rng, b: usize, p: usize, n_obj: usize, n_verb: usize) -> Self {
        Self {
            b,
            p,
            n_obj,
            n_verb,
            sub_logits: rng.vec(b * p * n_obj, -3.0, 3.0),
            obj_logits: rng.vec(b * p * n_obj, -3.0, 3.0),
            verb_logits: rng.vec(b * p * n_verb, -5.0, 2.0),
            sub_boxes: (0..b * p)
                .flat_map(|_| {
                    [
                        rng.range(0.2, 0.8),
                        rng.range(0.2, 0.8),
                        rng.range(0.05, 0.5),
                        rng.range(0.05, 0.5),
                    ]
                })
                .collect(),
            obj_boxes: (0..b * p)
                .flat_map(|_| {
                    [
                        rng.range(0.2, 0.8),
                        rng.range(0.2, 0.8),
                        rng.range(0.05, 0.5),
                        rng.range(0.05, 0.5),
                    ]
                })
                .collect(),
        }
    }

    fn tensors(&self, dev: &Device) -> LayerPredictions {
        let (b, p) = (self.b, self.p);
        LayerPredictions {
            sub_logits: tensor(&self.sub_logits, [b, p, self.n_obj], dev),
            obj_logits: tensor(&self.obj_logits, [b, p, self.n_obj], dev),
            verb_logits: tensor(&self.verb_logits, [b, p, self.n_verb], dev),
            sub_boxes: tensor(&self.sub_boxes, [b, p, 4], dev),
            obj_boxes: tensor(&self.obj_boxes, [b, p, 4], dev),
        }
    }

    fn box_at(v: &[f32], row: usize) -> [f64; 4] {
        [0, 1, 2, 3].map(|i| v[row * 4 + i] as f64)
    }
}

fn random_targets(
    rng: &mut Rng,
    n: usize,
    n_obj: usize,
    n_verb: usize,
    zero_obj: bool,
) -> PairTargets {
    let mut t = PairTargets::default();
    for k in 0..n {
        let bx = |rng: &mut Rng| {
            [
                rng.range(0.25, 0.75),
                rng.range(0.25, 0.75),
                rng.range(0.1, 0.4),
                rng.range(0.1, 0.4),
            ]
        };
        t.sub_boxes.push(bx(rng));
        t.obj_boxes.push(if zero_obj && k == 1 {
            [0.0; 4]
        } else {
            bx(rng)
        });
        t.sub_labels.push(rng.below(n_obj - 1));
        t.obj_labels.push(rng.below(n_obj - 1));
        let mut row: Vec<f32> = (0..n_verb)
            .map(|_| (rng.below(4) == 0) as u8 as f32)
            .collect();
        row[rng.below(n_verb)] = 1.0;
        t.verb_labels.push(row);
    }
    t
}

// ---------------------------------------------------------------------------------------------
// f64 references of the official formulas.

fn ref_ce(logits: &[f32], c: usize, targets: &[usize], eos: f64) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (i, &t) in targets.iter().enumerate() {
        let x: Vec<f64> = logits[i * c..(i + 1) * c]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let lse = x.iter().map(|v| v.exp()).sum::<f64>().ln();
        let w = if t == c - 1 { eos } else { 1.0 };
        num += w * (lse - x[t]);
        den += w;
    }
    num / den
}

fn clamp_sigmoid(x: f32) -> f64 {
    (1.0 / (1.0 + (-(x as f64)).exp())).clamp(1e-6, 1.0 - 1e-6)
}

fn ref_focal(logits: &[f32], gt: &[f32]) -> f64 {
    let (mut pos, mut neg, mut n_pos) = (0.0, 0.0, 0usize);
    for (&x, &t) in logits.iter().zip(gt) {
        let p = clamp_sigmoid(x);
        if t == 1.0 {
            pos += p.ln() * (1.0 - p).powi(2);
            n_pos += 1;
        } else {
            neg += (1.0 - p).ln() * p.powi(2) * (1.0 - t as f64).powi(4);
        }
    }
    if n_pos == 0 {
        -neg
    } else {
        -(pos + neg) / n_pos as f64
    }
}

fn ref_qfl(logits: &[f32], gt: &[f32], beta: f64) -> f64 {
    let (mut s, mut n_pos) = (0.0, 0usize);
    for (&x, &t) in logits.iter().zip(gt) {
        let (p, t) = (clamp_sigmoid(x), t as f64);
        s += (t - p).abs().powf(beta) * ((1.0 - t) * (1.0 - p).ln() + t * p.ln());
        n_pos += (t > 0.0) as usize;
    }
    -s / n_pos.max(1) as f64
}

fn giou_cxcywh(a: [f64; 4], b: [f64; 4]) -> f64 {
    generalized_box_iou(cxcywh_to_xyxy(a), cxcywh_to_xyxy(b))
}

fn f64x4(b: &[f32; 4]) -> [f64; 4] {
    b.map(|v| v as f64)
}

/// `[loss_sub_bbox, loss_obj_bbox, loss_sub_giou, loss_obj_giou]`.
fn ref_boxes(
    src_sub: &[[f64; 4]],
    src_obj: &[[f64; 4]],
    t_sub: &[[f32; 4]],
    t_obj: &[[f32; 4]],
    n_int: f64,
) -> [f64; 4] {
    if src_sub.is_empty() {
        return [0.0; 4];
    }
    let (mut l1s, mut l1o, mut gs, mut go, mut n_exist) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for k in 0..src_sub.len() {
        let (ts, to) = (f64x4(&t_sub[k]), f64x4(&t_obj[k]));
        let exist = to.iter().any(|&v| v != 0.0);
        l1s += (0..4).map(|i| (src_sub[k][i] - ts[i]).abs()).sum::<f64>();
        gs += 1.0 - giou_cxcywh(src_sub[k], ts);
        if exist {
            l1o += (0..4).map(|i| (src_obj[k][i] - to[i]).abs()).sum::<f64>();
            go += 1.0 - giou_cxcywh(src_obj[k], to);
            n_exist += 1.0;
        }
    }
    [
        l1s / n_int,
        l1o / (n_exist + 1e-4),
        gs / n_int,
        go / (n_exist + 1e-4),
    ]
}

/// All six terms of one layer, given the matching.
#[allow(clippy::too_many_arguments)]
fn ref_layer(
    l: &Layer,
    targets: &[PairTargets],
    matches: &[Vec<(usize, usize)>],
    cfg: &CriterionConfig,
    n_int: f64,
    pseudo: Option<&[Vec<Vec<f32>>]>,
) -> [f64; 6] {
    let (p, c, v) = (l.p, l.n_obj, l.n_verb);
    let mut obj_t = vec![c - 1; l.b * p];
    let mut sub_t = vec![c - 1; l.b * p];
    let mut verb_t = vec![0.0f32; l.b * p * v];
    let (mut ss, mut so, mut ts, mut to) = (vec![], vec![], vec![], vec![]);
    for (i, m) in matches.iter().enumerate() {
        for &(q, k) in m {
            let row = i * p + q;
            let t = &targets[i];
            obj_t[row] = t.obj_labels[k];
            sub_t[row] = t.sub_labels[k];
            let (ps, po) = (
                Layer::box_at(&l.sub_boxes, row),
                Layer::box_at(&l.obj_boxes, row),
            );
            // RQL scale: (1 + min(GIoU_sub, GIoU_obj [+ GIoU_sub when no object box])) / 2.
            let gs = giou_cxcywh(ps, f64x4(&t.sub_boxes[k]));
            let exist = t.obj_boxes[k].iter().any(|&x| x != 0.0);
            let go = giou_cxcywh(po, f64x4(&t.obj_boxes[k])) + if exist { 0.0 } else { gs };
            let scale = (1.0 + gs.min(go)) / 2.0;
            for j in 0..v {
                let lab = t.verb_labels[k][j] as f64 + pseudo.map_or(0.0, |pv| pv[i][k][j] as f64);
                verb_t[row * v + j] = match cfg.verb_loss {
                    VerbLoss::Focal => lab as f32,
                    VerbLoss::QualityFocal { .. } => (lab * scale) as f32,
                };
            }
            ss.push(ps);
            so.push(po);
            ts.push(t.sub_boxes[k]);
            to.push(t.obj_boxes[k]);
        }
    }
    let mut obj_ce = ref_ce(&l.obj_logits, c, &obj_t, cfg.eos_coef);
    if cfg.matcher.subject_class {
        obj_ce += ref_ce(&l.sub_logits, c, &sub_t, cfg.eos_coef);
    }
    let verb = match cfg.verb_loss {
        VerbLoss::Focal => ref_focal(&l.verb_logits, &verb_t),
        VerbLoss::QualityFocal { beta } => ref_qfl(&l.verb_logits, &verb_t, beta),
    };
    let [a, b, g1, g2] = ref_boxes(&ss, &so, &ts, &to, n_int);
    [obj_ce, verb, a, b, g1, g2]
}

// ---------------------------------------------------------------------------------------------
// Single terms.

#[test]
fn cross_entropy_by_hand() {
    let dev = device();
    // One image, two queries, three classes (the last is "no objects").
    // Query 0 -> class 1 (weight 1), query 1 -> class 2 (weight 0.1).
    let logits = [1.0f32, 2.0, 0.5, 0.0, 0.0, 3.0];
    let lse0 = (1f64.exp() + 2f64.exp() + 0.5f64.exp()).ln();
    let lse1 = (2.0 + 3f64.exp()).ln();
    let want = ((lse0 - 2.0) + 0.1 * (lse1 - 3.0)) / 1.1;
    let got = scalar(weighted_cross_entropy(
        tensor(&logits, [1, 2, 3], &dev),
        &[1, 2],
        0.1,
    ));
    close(got, want, "weighted CE");
    close(ref_ce(&logits, 3, &[1, 2], 0.1), want, "reference CE");
}

#[test]
fn focal_and_quality_focal_by_hand_and_random() {
    let dev = device();
    // One positive (logit 0 -> p 0.5) and one negative (logit 0): pos term log(.5)·.25,
    // neg term log(.5)·.25 -> loss = -2·.25·log(.5) / 1.
    let got = scalar(focal_verb_loss(
        tensor(&[0.0, 0.0], [1, 1, 2], &dev),
        &[1.0, 0.0],
    ));
    close(got, -0.5 * 0.5f64.ln(), "focal by hand");
    // No positive: the sum of negative terms, not divided.
    let got = scalar(focal_verb_loss(
        tensor(&[0.0, 0.0], [1, 1, 2], &dev),
        &[0.0, 0.0],
    ));
    close(got, -0.5 * 0.5f64.ln(), "focal, no positive");
    // QFL, target .5 at p .5: the positive's weight |t−p|^2 is 0; the negative (t 0, p .5)
    // gives .25·log(.5); one positive.
    let got = scalar(quality_focal_verb_loss(
        tensor(&[0.0, 0.0], [1, 1, 2], &dev),
        &[0.5, 0.0],
        2.0,
    ));
    close(got, -0.25 * 0.5f64.ln(), "QFL by hand");

    let mut rng = Rng(3);
    for case in 0..5 {
        let (b, p, v) = (2, 3, 7);
        let logits = rng.vec(b * p * v, -8.0, 8.0);
        let hard: Vec<f32> = (0..b * p * v)
            .map(|_| (rng.below(3) == 0) as u8 as f32)
            .collect();
        // Soft targets in [0, 1], some exactly 1 and 0.
        let soft: Vec<f32> = hard
            .iter()
            .map(|&h| if h > 0.0 { rng.range(0.0, 1.0) } else { 0.0 })
            .collect();
        let t = tensor(&logits, [b, p, v], &dev);
        close(
            scalar(focal_verb_loss(t.clone(), &hard)),
            ref_focal(&logits, &hard),
            &format!("focal {case}"),
        );
        // Focal on soft targets: (1−t)^4 weights the negatives.
        close(
            scalar(focal_verb_loss(t.clone(), &soft)),
            ref_focal(&logits, &soft),
            &format!("focal soft {case}"),
        );
        close(
            scalar(quality_focal_verb_loss(t, &soft, 2.0)),
            ref_qfl(&logits, &soft, 2.0),
            &format!("QFL {case}"),
        );
    }
}

#[test]
fn box_losses_by_hand_and_with_missing_object_boxes() {
    let dev = device();
    // One image, two queries; query 1 matched to a target with an exact subject and an object
    // box shifted by 0.1 in x (GIoU: inter .1·.2=.02... computed below).
    let sub = [0.5f32, 0.5, 0.2, 0.2, 0.3, 0.3, 0.2, 0.2];
    let obj = [0.5f32, 0.5, 0.2, 0.2, 0.6, 0.5, 0.2, 0.2];
    let t_sub = [[0.3f32, 0.3, 0.2, 0.2]];
    let t_obj = [[0.5f32, 0.5, 0.2, 0.2]];
    let out = box_losses(
        tensor(&sub, [1, 2, 4], &dev),
        tensor(&obj, [1, 2, 4], &dev),
        &[1],
        &t_sub,
        &t_obj,
        2.0,
    );
    close(scalar(out.sub_bbox), 0.0, "sub L1");
    close(scalar(out.sub_giou), 0.0, "sub GIoU");
    close(scalar(out.obj_bbox), 0.1 / 1.0001, "obj L1 over (1 + 1e-4)");
    // Boxes [.5,.4,.7,.6] and [.4,.4,.6,.6]: inter .1·.2 = .02, union .06, enclosing .3·.2 = .06.
    let giou = 0.02 / 0.06;
    close(scalar(out.obj_giou), (1.0 - giou) / 1.0001, "obj GIoU");

    // Random, with a zero object box among the targets.
    let mut rng = Rng(11);
    let l = Layer::random(&mut rng, 2, 4, 3, 2);
    let rows = [0usize, 3, 5, 6];
    let t_sub: Vec<[f32; 4]> = (0..4)
        .map(|_| {
            [
                rng.range(0.3, 0.7),
                rng.range(0.3, 0.7),
                rng.range(0.1, 0.3),
                rng.range(0.1, 0.3),
            ]
        })
        .collect();
    let mut t_obj = t_sub.clone();
    t_obj[2] = [0.0; 4];
    let out = box_losses(
        tensor(&l.sub_boxes, [2, 4, 4], &dev),
        tensor(&l.obj_boxes, [2, 4, 4], &dev),
        &rows,
        &t_sub,
        &t_obj,
        7.0,
    );
    let ss: Vec<[f64; 4]> = rows
        .iter()
        .map(|&r| Layer::box_at(&l.sub_boxes, r))
        .collect();
    let so: Vec<[f64; 4]> = rows
        .iter()
        .map(|&r| Layer::box_at(&l.obj_boxes, r))
        .collect();
    let want = ref_boxes(&ss, &so, &t_sub, &t_obj, 7.0);
    let got = [out.sub_bbox, out.obj_bbox, out.sub_giou, out.obj_giou].map(scalar);
    for i in 0..4 {
        close(got[i], want[i], &format!("box term {i}"));
    }
    // Nothing matched: four zeros.
    let out = box_losses(
        tensor(&l.sub_boxes, [2, 4, 4], &dev),
        tensor(&l.obj_boxes, [2, 4, 4], &dev),
        &[],
        &[],
        &[],
        1.0,
    );
    assert_eq!(
        [out.sub_bbox, out.obj_bbox, out.sub_giou, out.obj_giou].map(scalar),
        [0.0; 4]
    );
}

// ---------------------------------------------------------------------------------------------
// The whole criterion.

/// Random layers and targets; with `zero_obj` the second pair of each image has no object box.
fn batch(
    rng: &mut Rng,
    n_layers: usize,
    counts: &[usize],
    zero_obj: bool,
) -> (Vec<Layer>, Vec<PairTargets>) {
    let (p, n_obj, n_verb) = (5, 4, 6);
    let layers = (0..n_layers)
        .map(|_| Layer::random(rng, counts.len(), p, n_obj, n_verb))
        .collect();
    let targets = counts
        .iter()
        .map(|&n| random_targets(rng, n, n_obj, n_verb, zero_obj))
        .collect();
    (layers, targets)
}

fn check_criterion(cfg: CriterionConfig, seed: u64, pseudo: bool) {
    // The RQL scale can leave [0, 1] for pairs without an object box (an error, as the
    // official assert), so those are exercised with the plain focal loss only.
    let zero_obj = cfg.verb_loss == VerbLoss::Focal;
    let dev = device();
    let mut rng = Rng(seed);
    let (layers, targets) = batch(&mut rng, 3, &[3, 0, 2], zero_obj);
    let pseudo_rows: Option<Vec<Vec<Vec<f32>>>> = pseudo.then(|| {
        targets
            .iter()
            .map(|t| {
                t.verb_labels
                    .iter()
                    .map(|row| {
                        row.iter()
                            .map(|&l| {
                                if l > 0.0 {
                                    0.0
                                } else if rng.below(3) == 0 {
                                    rng.range(0.3, 1.0)
                                } else {
                                    0.0
                                }
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    });
    let preds: Vec<LayerPredictions> = layers.iter().map(|l| l.tensors(&dev)).collect();
    let crit = Criterion::new(cfg).unwrap();
    let out = crit
        .forward(&preds, &targets, pseudo_rows.as_deref())
        .unwrap();
    let n_int = 5.0;
    assert_eq!(out.num_interactions, n_int);

    // Names: last layer unsuffixed, then aux 0 and 1.
    let names: Vec<String> = out.terms.iter().map(|t| t.name.clone()).collect();
    let mut want_names: Vec<String> = TERM_NAMES.iter().map(|s| s.to_string()).collect();
    for i in 0..2 {
        want_names.extend(TERM_NAMES.iter().map(|s| format!("{s}_{i}")));
    }
    assert_eq!(names, want_names);

    let values = out.check_finite().expect("finite");
    let mut total = 0.0;
    for (li, suffix) in [(2usize, String::new()), (0, "_0".into()), (1, "_1".into())] {
        // The criterion's matching is the matcher's on that layer.
        let host = HostPredictions::from_layer(&preds[li]).unwrap();
        let m = PairMatcher::new(cfg.matcher)
            .match_batch(&host, &targets)
            .unwrap();
        assert_eq!(out.matches[li], m, "layer {li} matching");
        assert_eq!(m[1], vec![], "image without targets");
        let want = ref_layer(
            &layers[li],
            &targets,
            &m,
            &cfg,
            n_int,
            pseudo_rows.as_deref(),
        );
        for (k, base) in TERM_NAMES.iter().enumerate() {
            let name = format!("{base}{suffix}");
            let got = values.iter().find(|(n, _)| *n == name).unwrap().1;
            close(got, want[k], &name);
            let w = out.term(&name).unwrap().weight;
            assert_eq!(Some(w), cfg.base_weight(base));
            total += w * want[k];
        }
    }
    close(scalar(out.total.clone()), total, "weighted total");
    assert!(out.logs.iter().any(|(n, _)| n == "obj_class_error"));
    assert!(out.logs.iter().any(|(n, _)| n == "obj_cardinality_error_1"));
}

#[test]
fn criterion_matches_reference_hico_finetune_rql() {
    check_criterion(CriterionConfig::default(), 21, false);
}

#[test]
fn criterion_matches_reference_plain_focal_without_subject_class() {
    let cfg = CriterionConfig {
        verb_loss: VerbLoss::Focal,
        matcher: MatcherConfig {
            subject_class: false,
            ..MatcherConfig::default()
        },
        ..CriterionConfig::default()
    };
    check_criterion(cfg, 22, false);
}

#[test]
fn criterion_matches_reference_pretraining_rpl() {
    check_criterion(CriterionConfig::pretraining(), 23, true);
}

#[test]
fn criterion_config_checks_and_weights() {
    let bad = CriterionConfig {
        verb_loss: VerbLoss::Focal,
        ..CriterionConfig::pretraining()
    };
    assert!(matches!(
        Criterion::new(bad),
        Err(CriterionError::Config(_))
    ));
    let d = CriterionConfig::default();
    assert_eq!(
        (
            d.eos_coef,
            d.bbox_loss_coef,
            d.giou_loss_coef,
            d.obj_loss_coef,
            d.verb_loss_coef
        ),
        (0.1, 2.5, 1.0, 1.0, 1.0)
    );
    let m = d.matcher;
    assert_eq!(
        (
            m.cost_obj_class,
            m.cost_verb_class,
            m.cost_bbox,
            m.cost_giou,
            m.subject_class
        ),
        (1.0, 1.0, 2.5, 1.0, true)
    );
    let crit = Criterion::new(CriterionConfig {
        exponential_hyper: Some(0.8),
        ..d
    })
    .unwrap();
    assert_eq!(crit.weight("loss_sub_bbox", 3), Some(2.5));
    assert!((crit.weight("loss_sub_bbox_0", 3).unwrap() - 2.5 * 0.64).abs() < 1e-12);
    assert!((crit.weight("loss_verb_ce_1", 3).unwrap() - 0.8).abs() < 1e-12);
    assert_eq!(
        crit.weight("loss_verb_ce_2", 3),
        None,
        "layer 2 of 3 is the last, unsuffixed"
    );
    assert_eq!(crit.weight("obj_class_error", 3), None);

    // Pseudo rows must come exactly with pseudo_verb.
    let dev = device();
    let mut rng = Rng(4);
    let (layers, targets) = batch(&mut rng, 1, &[1], false);
    let preds: Vec<LayerPredictions> = layers.iter().map(|l| l.tensors(&dev)).collect();
    let rpl = Criterion::new(CriterionConfig::pretraining()).unwrap();
    assert!(matches!(
        rpl.forward(&preds, &targets, None),
        Err(CriterionError::Input(_))
    ));
    let plain = Criterion::new(d).unwrap();
    let rows = vec![vec![vec![0.0; 6]]];
    assert!(matches!(
        plain.forward(&preds, &targets, Some(&rows)),
        Err(CriterionError::Input(_))
    ));
    assert!(matches!(
        plain.forward(&preds, &[], None),
        Err(CriterionError::Input(_))
    ));
    // Without aux loss only the last layer's six terms.
    let last_only = Criterion::new(CriterionConfig {
        aux_loss: false,
        ..d
    })
    .unwrap();
    let (layers, targets) = batch(&mut rng, 3, &[2], false);
    let preds: Vec<LayerPredictions> = layers.iter().map(|l| l.tensors(&dev)).collect();
    assert_eq!(
        last_only
            .forward(&preds, &targets, None)
            .unwrap()
            .terms
            .len(),
        6
    );
}

#[test]
fn rql_scale_out_of_range_is_an_error_like_the_official_assert() {
    // A target without an object box whose subject is far from the prediction: the official
    // GIoU cost becomes −(GIoU_sub + GIoU_obj) > 1 and the soft-label scale negative.
    let dev = device();
    let layer = Layer {
        b: 1,
        p: 1,
        n_obj: 2,
        n_verb: 1,
        sub_logits: vec![0.0, 0.0],
        obj_logits: vec![0.0, 0.0],
        verb_logits: vec![0.0],
        sub_boxes: vec![0.9, 0.9, 0.05, 0.05],
        obj_boxes: vec![0.9, 0.9, 0.05, 0.05],
    };
    let t = PairTargets {
        sub_boxes: vec![[0.1, 0.1, 0.05, 0.05]],
        obj_boxes: vec![[0.0; 4]],
        sub_labels: vec![0],
        obj_labels: vec![0],
        verb_labels: vec![vec![1.0]],
    };
    let crit = Criterion::new(CriterionConfig::default()).unwrap();
    let err = crit
        .forward(&[layer.tensors(&dev)], std::slice::from_ref(&t), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            CriterionError::SoftLabelOutOfRange {
                layer: 0,
                image: 0,
                ..
            }
        ),
        "{err}"
    );
    // Plain focal has no scale and runs.
    let focal = Criterion::new(CriterionConfig {
        verb_loss: VerbLoss::Focal,
        ..CriterionConfig::default()
    })
    .unwrap();
    focal
        .forward(&[layer.tensors(&dev)], &[t], None)
        .unwrap()
        .check_finite()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Gradients and non-finite inputs.

#[test]
fn gradients_reach_logits_and_boxes() {
    let ad = device().autodiff();
    let mut rng = Rng(31);
    let (layers, targets) = batch(&mut rng, 2, &[2, 3], false);
    for cfg in [
        CriterionConfig::default(),
        CriterionConfig {
            verb_loss: VerbLoss::Focal,
            ..CriterionConfig::default()
        },
    ] {
        let preds: Vec<LayerPredictions> = layers
            .iter()
            .map(|l| {
                let t = l.tensors(&ad);
                LayerPredictions {
                    sub_logits: t.sub_logits.require_grad(),
                    obj_logits: t.obj_logits.require_grad(),
                    verb_logits: t.verb_logits.require_grad(),
                    sub_boxes: t.sub_boxes.require_grad(),
                    obj_boxes: t.obj_boxes.require_grad(),
                }
            })
            .collect();
        let out = Criterion::new(cfg)
            .unwrap()
            .forward(&preds, &targets, None)
            .unwrap();
        let grads = out.total.backward();
        for (li, p) in preds.iter().enumerate() {
            let fields = [
                ("sub_logits", &p.sub_logits),
                ("obj_logits", &p.obj_logits),
                ("verb_logits", &p.verb_logits),
                ("sub_boxes", &p.sub_boxes),
                ("obj_boxes", &p.obj_boxes),
            ];
            for (name, t) in fields {
                let g = host(
                    t.grad(&grads)
                        .unwrap_or_else(|| panic!("layer {li} {name}: no gradient")),
                );
                assert!(
                    g.iter().all(|v| v.is_finite()),
                    "layer {li} {name}: non-finite gradient"
                );
                assert!(
                    g.iter().any(|v| v.abs() > 1e-6),
                    "layer {li} {name}: zero gradient"
                );
            }
        }
    }
}

#[test]
fn gradient_of_quality_focal_matches_finite_differences() {
    let ad = device().autodiff();
    let mut rng = Rng(41);
    let logits = rng.vec(12, -3.0, 3.0);
    let gt: Vec<f32> = (0..12).map(|i| [1.0, 0.0, 0.4, 0.0][i % 4]).collect();
    let x = tensor(&logits, [1, 3, 4], &ad).require_grad();
    let g = host(
        x.grad(&quality_focal_verb_loss(x.clone(), &gt, 2.0).backward())
            .unwrap(),
    );
    let h = 1e-3;
    for i in 0..12 {
        let mut up = logits.clone();
        let mut dn = logits.clone();
        up[i] += h as f32;
        dn[i] -= h as f32;
        let fd = (ref_qfl(&up, &gt, 2.0) - ref_qfl(&dn, &gt, 2.0)) / (2.0 * h);
        assert!((g[i] as f64 - fd).abs() < 2e-3, "d/dx{i}: {} vs {fd}", g[i]);
    }
}

#[test]
fn gradient_of_box_losses_matches_finite_differences() {
    let ad = device().autodiff();
    let mut rng = Rng(43);
    let l = Layer::random(&mut rng, 1, 3, 2, 1);
    let rows = [0usize, 2];
    let t_sub = [[0.4f32, 0.5, 0.2, 0.3], [0.6, 0.4, 0.3, 0.2]];
    let t_obj = [[0.5f32, 0.5, 0.3, 0.3], [0.0; 4]];
    let sum = |r: [f64; 4]| r.iter().sum::<f64>();
    let reference = |sub: &[f32], obj: &[f32]| {
        let ss: Vec<[f64; 4]> = rows.iter().map(|&r| Layer::box_at(sub, r)).collect();
        let so: Vec<[f64; 4]> = rows.iter().map(|&r| Layer::box_at(obj, r)).collect();
        sum(ref_boxes(&ss, &so, &t_sub, &t_obj, 2.0))
    };
    let sub = tensor(&l.sub_boxes, [1, 3, 4], &ad).require_grad();
    let obj = tensor(&l.obj_boxes, [1, 3, 4], &ad).require_grad();
    let out = box_losses(sub.clone(), obj.clone(), &rows, &t_sub, &t_obj, 2.0);
    let grads = (out.sub_bbox + out.obj_bbox + out.sub_giou + out.obj_giou).backward();
    let (gs, go) = (
        host(sub.grad(&grads).unwrap()),
        host(obj.grad(&grads).unwrap()),
    );
    let h = 1e-3f32;
    for i in 0..12 {
        let (mut up, mut dn) = (l.sub_boxes.clone(), l.sub_boxes.clone());
        up[i] += h;
        dn[i] -= h;
        let fd = (reference(&up, &l.obj_boxes) - reference(&dn, &l.obj_boxes)) / (2.0 * h as f64);
        assert!(
            (gs[i] as f64 - fd).abs() < 5e-3,
            "d/d sub[{i}]: {} vs {fd}",
            gs[i]
        );
        let (mut up, mut dn) = (l.obj_boxes.clone(), l.obj_boxes.clone());
        up[i] += h;
        dn[i] -= h;
        let fd = (reference(&l.sub_boxes, &up) - reference(&l.sub_boxes, &dn)) / (2.0 * h as f64);
        assert!(
            (go[i] as f64 - fd).abs() < 5e-3,
            "d/d obj[{i}]: {} vs {fd}",
            go[i]
        );
    }
    // Unmatched query 1 and the object box of the pair without one get no gradient.
    assert!(gs[4..8].iter().chain(&go[4..12]).all(|&g| g == 0.0));
}

#[test]
fn nan_predictions_are_reported() {
    let dev = device();
    let mut rng = Rng(51);
    let (mut layers, targets) = batch(&mut rng, 2, &[2, 0], false);
    let (p, c, v) = (layers[0].p, layers[0].n_obj, layers[0].n_verb);
    // NaN logits in image 1, which has no targets: matching succeeds and the classification
    // terms of that layer become NaN; the report names them.
    layers[1].obj_logits[p * c] = f32::NAN;
    layers[1].verb_logits[p * v + 2] = f32::NAN;
    let preds: Vec<LayerPredictions> = layers.iter().map(|l| l.tensors(&dev)).collect();
    let crit = Criterion::new(CriterionConfig::default()).unwrap();
    let out = crit.forward(&preds, &targets, None).unwrap();
    let bad = out.check_finite().unwrap_err();
    let names: Vec<&str> = bad.0.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["loss_obj_ce", "loss_verb_ce"], "{bad}");
    assert!(bad.to_string().contains("loss_obj_ce = NaN"), "{bad}");
    assert!(!scalar(out.total).is_finite());

    // A NaN box in an image with targets: the matcher refuses, naming layer, image and query.
    layers[0].sub_boxes[4 * 3 + 1] = f32::NAN;
    let preds: Vec<LayerPredictions> = layers.iter().map(|l| l.tensors(&dev)).collect();
    let err = crit.forward(&preds, &targets, None).unwrap_err();
    assert!(
        matches!(
            err,
            CriterionError::Match {
                layer: 0,
                source: MatchError::NonFiniteCost {
                    image: 0,
                    query: 3,
                    ..
                }
            }
        ),
        "{err}"
    );
}
