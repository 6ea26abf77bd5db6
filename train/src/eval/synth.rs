//! Deterministic synthetic evaluation inputs: HICO-DET-like and Open-Images-like ground truth
//! with long-tailed class frequencies, noisy "model" predictions, and perfect predictions.
//!
//! Used by the evaluation benchmark (`cargo xtask bench eval`) and the property tests. Everything
//! is a pure function of the seed ([`Rng`] is SplitMix64), so runs are reproducible.

use super::hico::{HicoGtImage, HicoSplit, Triplet};
use super::oi::OiGtImage;
use super::{CorrectMat, PairPredictions};

pub use rlip_data::rng::Rng;

/// Options of the synthetic generators.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthConfig {
    /// Test images.
    pub images: usize,
    /// Predicted pairs per image (`PostProcessHOI` keeps every query: 64–200 in RLIPv2).
    pub pairs: usize,
    /// Triplet classes (HICO-DET: 600).
    pub num_classes: usize,
    /// Seed.
    pub seed: u64,
    /// Mean number of GT interactions per image beyond the first (HICO-DET test: about 2.5).
    pub extra_gt_mean: f64,
    /// Never put two GT interactions of the same triplet class in one image (needed for
    /// "perfect predictions score 100" with NMS, which suppresses same-class neighbours).
    pub distinct_classes_per_image: bool,
    /// Image width and height in pixels.
    pub image_size: (f32, f32),
}

impl SynthConfig {
    /// HICO-DET test-set sized: 9,658 images, 100 pairs each, 600 classes, about 3.5 GT
    /// interactions per image with a Zipf-like class frequency.
    pub fn hico_test_sized() -> Self {
        SynthConfig {
            images: 9658,
            pairs: 100,
            num_classes: 600,
            seed: 2023,
            extra_gt_mean: 2.5,
            distinct_classes_per_image: false,
            image_size: (640.0, 480.0),
        }
    }

    /// A small configuration for tests.
    pub fn small(images: usize, seed: u64) -> Self {
        SynthConfig {
            images,
            pairs: 16,
            num_classes: 60,
            seed,
            extra_gt_mean: 2.0,
            distinct_classes_per_image: true,
            image_size: (640.0, 480.0),
        }
    }
}

/// One synthetic GT image: boxes, labels, interactions (subject, object, verb / relation).
#[derive(Debug, Clone, PartialEq)]
pub struct SynthGtImage {
    /// Boxes `[x1, y1, x2, y2]`.
    pub boxes: Vec<[f32; 4]>,
    /// Box labels.
    pub labels: Vec<i64>,
    /// Interactions.
    pub rels: Vec<(usize, usize, i64)>,
}

/// A synthetic HICO-DET-like evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthHico {
    /// GT per image.
    pub gts: Vec<HicoGtImage>,
    /// Noisy predictions per image (`cfg.pairs` pairs, 117 verbs).
    pub preds: Vec<PairPredictions>,
    /// Verb × object validity matrix (ones for the class list).
    pub correct_mat: CorrectMat,
    /// Rare = the least frequent 23 % of the classes (HICO-DET: 138 of 600).
    pub buckets: HicoSplit,
    /// The triplet classes, most frequent first.
    pub classes: Vec<Triplet>,
}

/// A synthetic Open-Images-like evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOi {
    /// GT per image.
    pub gts: Vec<OiGtImage>,
    /// Noisy predictions per image (`cfg.pairs` pairs, 30 relations).
    pub preds: Vec<PairPredictions>,
    /// Number of object labels (288).
    pub num_objects: usize,
    /// Number of relations (30).
    pub num_rels: usize,
}

/// Cumulative Zipf(1) weights over `n` classes.
fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (0..n)
        .map(|i| {
            acc += 1.0 / (i as f64 + 1.0);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

fn sample_cdf(rng: &mut Rng, cdf: &[f64]) -> usize {
    let u = rng.f64();
    cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
}

fn random_box(rng: &mut Rng, (w, h): (f32, f32)) -> [f32; 4] {
    let bw = rng.range_f32(0.05 * w, 0.5 * w);
    let bh = rng.range_f32(0.05 * h, 0.6 * h);
    let x = rng.range_f32(0.0, w - bw);
    let y = rng.range_f32(0.0, h - bh);
    [x, y, x + bw, y + bh]
}

/// Moves each side of `b` by up to `frac` of the box size.
fn jitter(rng: &mut Rng, b: &[f32; 4], frac: f32) -> [f32; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let mut j = |v: f32, s: f32| v + rng.range_f32(-frac, frac) * s;
    let (x1, y1, x2, y2) = (j(b[0], w), j(b[1], h), j(b[2], w), j(b[3], h));
    [x1.min(x2 - 1.0), y1.min(y2 - 1.0), x2, y2]
}

/// Draws one image's GT: `1 + Poisson-ish(extra_gt_mean)` interactions of Zipf-distributed
/// classes `(subject label, object label, verb)`; subjects and objects are sometimes shared
/// between interactions, as in HICO-DET.
pub fn synth_gt_image(
    rng: &mut Rng,
    classes: &[Triplet],
    cdf: &[f64],
    cfg: &SynthConfig,
) -> SynthGtImage {
    let mut n = 1;
    while n < 20 && rng.f64() < cfg.extra_gt_mean / (cfg.extra_gt_mean + 1.0) {
        n += 1;
    }
    let mut img = SynthGtImage {
        boxes: Vec::new(),
        labels: Vec::new(),
        rels: Vec::new(),
    };
    let mut used = Vec::new();
    for _ in 0..n * 4 {
        if img.rels.len() == n {
            break;
        }
        let c = sample_cdf(rng, cdf);
        if cfg.distinct_classes_per_image && used.contains(&c) {
            continue;
        }
        let (sl, ol, v) = classes[c];
        let mut pick = |img: &mut SynthGtImage, label: i64, reuse: f64| -> usize {
            let same: Vec<usize> = (0..img.labels.len())
                .filter(|&i| img.labels[i] == label)
                .collect();
            if !same.is_empty() && rng.f64() < reuse {
                return same[rng.below(same.len())];
            }
            img.boxes.push(random_box(rng, cfg.image_size));
            img.labels.push(label);
            img.labels.len() - 1
        };
        let s = pick(&mut img, sl, 0.5);
        let o = pick(&mut img, ol, 0.2);
        if s == o || img.rels.contains(&(s, o, v)) {
            continue;
        }
        used.push(c);
        img.rels.push((s, o, v));
    }
    img
}

/// Predictions that find every GT interaction exactly: one pair per interaction with the GT
/// boxes and labels and score 1 for its verb (0 for the others), subjects first, then objects.
/// `None` objects (V-COCO roles without object) get `missing_label` and a zero box.
pub fn perfect_predictions(
    boxes: &[[f32; 4]],
    labels: &[i64],
    rels: &[(usize, Option<usize>, i64)],
    num_verbs: usize,
    missing_label: i64,
) -> PairPredictions {
    let np = rels.len();
    let mut p = PairPredictions {
        labels: vec![0; 2 * np],
        boxes: vec![[0.0; 4]; 2 * np],
        verb_scores: vec![0.0; np * num_verbs],
        num_verbs,
        sub_ids: (0..np).collect(),
        obj_ids: (np..2 * np).collect(),
    };
    for (k, &(s, o, v)) in rels.iter().enumerate() {
        p.labels[k] = labels[s];
        p.boxes[k] = boxes[s];
        match o {
            Some(o) => {
                p.labels[np + k] = labels[o];
                p.boxes[np + k] = boxes[o];
            }
            None => p.labels[np + k] = missing_label,
        }
        p.verb_scores[k * num_verbs + v as usize] = 1.0;
    }
    p
}

/// Noisy predictions for one image: most GT interactions are found (jittered boxes, sometimes
/// a wrong object label, a near-duplicate now and then), the remaining pairs are background with
/// low scores. `subject_label(rng, gt_label)` gives the predicted subject label.
fn noisy_predictions(
    rng: &mut Rng,
    gt: &SynthGtImage,
    cfg: &SynthConfig,
    num_verbs: usize,
    num_labels: usize,
    predicted_subject: bool,
) -> PairPredictions {
    let np = cfg.pairs;
    let mut sub: Vec<([f32; 4], i64)> = Vec::with_capacity(np);
    let mut obj: Vec<([f32; 4], i64)> = Vec::with_capacity(np);
    let mut scores = Vec::with_capacity(np * num_verbs);
    let background = |rng: &mut Rng, scores: &mut Vec<f32>| {
        for _ in 0..num_verbs {
            let u = rng.f32();
            scores.push(0.25 * u * u * u * u);
        }
    };
    for &(s, o, v) in &gt.rels {
        if sub.len() == np {
            break;
        }
        if rng.f64() > 0.85 {
            continue;
        }
        let copies = if rng.f64() < 0.25 { 2 } else { 1 };
        for _ in 0..copies {
            if sub.len() == np {
                break;
            }
            let sl = if predicted_subject && rng.f64() < 0.1 {
                rng.below(num_labels) as i64
            } else {
                gt.labels[s]
            };
            let ol = if rng.f64() < 0.1 {
                rng.below(num_labels) as i64
            } else {
                gt.labels[o]
            };
            sub.push((jitter(rng, &gt.boxes[s], 0.12), sl));
            obj.push((jitter(rng, &gt.boxes[o], 0.12), ol));
            let base = scores.len();
            background(rng, &mut scores);
            scores[base + v as usize] = rng.range_f32(0.2, 1.0);
        }
    }
    while sub.len() < np {
        let sb = if !gt.boxes.is_empty() && rng.f64() < 0.5 {
            let k = rng.below(gt.boxes.len());
            jitter(rng, &gt.boxes[k], 0.3)
        } else {
            random_box(rng, cfg.image_size)
        };
        let sl = if predicted_subject {
            rng.below(num_labels) as i64
        } else {
            0
        };
        sub.push((sb, sl));
        obj.push((
            random_box(rng, cfg.image_size),
            rng.below(num_labels) as i64,
        ));
        background(rng, &mut scores);
    }
    let n = sub.len();
    PairPredictions {
        labels: sub.iter().chain(&obj).map(|x| x.1).collect(),
        boxes: sub.iter().chain(&obj).map(|x| x.0).collect(),
        verb_scores: scores,
        num_verbs,
        sub_ids: (0..n).collect(),
        obj_ids: (n..2 * n).collect(),
    }
}

/// `n` distinct random triplet classes; subjects are person (0) unless `subjects > 1`.
fn random_classes(
    rng: &mut Rng,
    n: usize,
    subjects: usize,
    objects: usize,
    verbs: usize,
) -> Vec<Triplet> {
    let mut out: Vec<Triplet> = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::new();
    while out.len() < n.min(subjects * objects * verbs) {
        let t = (
            rng.below(subjects) as i64,
            rng.below(objects) as i64,
            rng.below(verbs) as i64,
        );
        if seen.insert(t) {
            out.push(t);
        }
    }
    out
}

/// A HICO-DET-like set: `cfg.num_classes` (person, object, verb) classes over 80 objects and 117
/// verbs, Zipf class frequencies, noisy predictions.
pub fn synth_hico(cfg: &SynthConfig) -> SynthHico {
    let mut rng = Rng::new(cfg.seed);
    let classes = random_classes(&mut rng, cfg.num_classes, 1, 80, 117);
    let cdf = zipf_cdf(classes.len());
    let mut mat = CorrectMat {
        num_verbs: 117,
        num_objects: 80,
        values: vec![0.0; 117 * 80],
    };
    for &(_, o, v) in &classes {
        mat.values[v as usize * 80 + o as usize] = 1.0;
    }
    let n_rare = classes.len() * 23 / 100;
    let buckets = HicoSplit {
        rare: classes[classes.len() - n_rare..].to_vec(),
        non_rare: classes[..classes.len() - n_rare].to_vec(),
    };
    let mut gts = Vec::with_capacity(cfg.images);
    let mut preds = Vec::with_capacity(cfg.images);
    for i in 0..cfg.images {
        let g = synth_gt_image(&mut rng, &classes, &cdf, cfg);
        preds.push(noisy_predictions(&mut rng, &g, cfg, 117, 80, false));
        gts.push(HicoGtImage {
            file_name: format!("HICO_test2015_{:08}.jpg", i + 1),
            boxes: g.boxes,
            labels: g.labels,
            hois: g.rels,
        });
    }
    SynthHico {
        gts,
        preds,
        correct_mat: mat,
        buckets,
        classes,
    }
}

/// An Open-Images-like set: `cfg.num_classes` (subject, object, relation) classes over 288
/// objects and 30 relations, predicted subject labels, noisy predictions.
pub fn synth_oi(cfg: &SynthConfig) -> SynthOi {
    let (num_objects, num_rels) = (288, 30);
    let mut rng = Rng::new(cfg.seed ^ 0x0123_4567_89AB_CDEF);
    let classes = random_classes(&mut rng, cfg.num_classes, 40, num_objects, num_rels);
    let cdf = zipf_cdf(classes.len());
    let mut gts = Vec::with_capacity(cfg.images);
    let mut preds = Vec::with_capacity(cfg.images);
    for i in 0..cfg.images {
        let g = synth_gt_image(&mut rng, &classes, &cdf, cfg);
        preds.push(noisy_predictions(
            &mut rng,
            &g,
            cfg,
            num_rels,
            num_objects,
            true,
        ));
        gts.push(OiGtImage {
            file_name: format!("{i:016x}.jpg"),
            boxes: g.boxes,
            labels: g.labels,
            rels: g.rels,
        });
    }
    SynthOi {
        gts,
        preds,
        num_objects,
        num_rels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sized() {
        let cfg = SynthConfig::small(20, 7);
        let a = synth_hico(&cfg);
        let b = synth_hico(&cfg);
        assert_eq!(a, b);
        assert_eq!(a.gts.len(), 20);
        assert!(
            a.preds
                .iter()
                .all(|p| p.num_pairs() == 16 && p.validate().is_ok())
        );
        assert_ne!(synth_hico(&SynthConfig::small(20, 8)).gts, a.gts);
        let o = synth_oi(&cfg);
        assert!(o.preds.iter().all(|p| p.validate().is_ok()));
    }

    #[test]
    fn rng_ranges() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
            let f = r.f32();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
