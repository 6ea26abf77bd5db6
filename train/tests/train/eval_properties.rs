//! Property tests of the evaluators on deterministic synthetic data (`eval::synth`):
//! perfect predictions score 100; no score permutation beats the ranking that puts every true
//! positive first; results do not depend on the order of the images.

use std::collections::HashMap;
use std::path::Path;

use rlip_data::vcoco::{
    VCOCO_VERB_CLASSES, load_coco_instances, load_hoia_annotations, load_split_ids,
    load_vsrl_annotations,
};
use rlip_train::eval::ap::{ranked_11point_ap, voc_ap_all_point};
use rlip_train::eval::hico::{HicoEvalConfig, HicoSetting, evaluate_hico};
use rlip_train::eval::oi::{OiEvalConfig, evaluate_oi};
use rlip_train::eval::synth::{Rng, SynthConfig, perfect_predictions, synth_hico, synth_oi};
use rlip_train::eval::vcoco::{
    VcocoInTrainingOptions, VcocoOfficialGt, evaluate_vcoco_in_training, evaluate_vcoco_official,
    vcoco_detections_from_predictions, vcoco_gt_from_annotations,
};
use rlip_train::eval::{CorrectMat, PairPredictions};

const SEEDS: [u64; 4] = [1, 2, 3, 42];

fn hico_configs() -> [HicoEvalConfig; 3] {
    [
        HicoEvalConfig::default(),
        HicoEvalConfig::official_with_nms(),
        HicoEvalConfig {
            setting: HicoSetting::KnownObject,
            ..HicoEvalConfig::official_with_nms()
        },
    ]
}

fn one_or_nan(x: f64) -> bool {
    x.is_nan() || (x - 1.0).abs() < 1e-12
}

#[test]
fn perfect_hico_predictions_score_100() {
    for seed in SEEDS {
        let s = synth_hico(&SynthConfig::small(30, seed));
        let preds: Vec<PairPredictions> = s
            .gts
            .iter()
            .map(|g| {
                let rels: Vec<_> = g.hois.iter().map(|&(a, b, v)| (a, Some(b), v)).collect();
                perfect_predictions(&g.boxes, &g.labels, &rels, 117, -1)
            })
            .collect();
        for cfg in hico_configs() {
            let r = evaluate_hico(&preds, &s.gts, &s.correct_mat, &s.buckets, &cfg).unwrap();
            let m = r.metrics;
            assert!((m.map - 1.0).abs() < 1e-12, "seed {seed} {cfg:?}: {m:?}");
            assert!(
                one_or_nan(m.map_rare) && one_or_nan(m.map_non_rare),
                "{m:?}"
            );
            assert!((m.mean_max_recall - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn perfect_oi_predictions_score_100() {
    for seed in SEEDS {
        let s = synth_oi(&SynthConfig::small(30, seed));
        let preds: Vec<PairPredictions> = s
            .gts
            .iter()
            .map(|g| {
                let rels: Vec<_> = g.rels.iter().map(|&(a, b, v)| (a, Some(b), v)).collect();
                perfect_predictions(&g.boxes, &g.labels, &rels, s.num_rels, -1)
            })
            .collect();
        for use_nms in [true, false] {
            let cfg = OiEvalConfig {
                use_nms,
                ..OiEvalConfig::default()
            };
            let sum = evaluate_oi(&preds, &s.gts, &cfg).unwrap().summary.unwrap();
            for v in [sum.r50, sum.wmap_rel, sum.wmap_phr, sum.score_wtd] {
                assert!(
                    (v - 1.0).abs() < 1e-12,
                    "seed {seed} nms {use_nms}: {sum:?}"
                );
            }
        }
    }
}

fn vcoco_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/eval/vcoco/vcoco_20img")
}

/// Perfect V-COCO detections built from the official GT database: for every labelled person,
/// one pair per distinct role object (or none) with score 1 on each (action, role) it fills.
#[test]
fn perfect_vcoco_predictions_score_100() {
    let dir = vcoco_dir();
    let vsrl = load_vsrl_annotations(dir.join("vcoco_test.json")).unwrap();
    let coco = load_coco_instances(dir.join("instances_vcoco_all_2014.json")).unwrap();
    let ids = load_split_ids(dir.join("vcoco_test.ids")).unwrap();
    let gt = VcocoOfficialGt::new(&vsrl, &coco, &ids).unwrap();
    let class_of: HashMap<&str, usize> = VCOCO_VERB_CLASSES
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, i))
        .collect();
    let mut preds = Vec::new();
    let mut image_ids = Vec::new();
    for e in &gt.db {
        let mut rels: Vec<(usize, Option<usize>, Vec<usize>)> = Vec::new();
        for (p, acts) in e.gt_actions.iter().enumerate() {
            if e.gt_classes[p] != 1 || acts.contains(&-1) {
                continue;
            }
            for (aid, &a) in acts.iter().enumerate() {
                if a != 1 {
                    continue;
                }
                let roles = &gt.roles[aid];
                let mut targets = Vec::new();
                if roles.len() == 1 {
                    targets.push((None, gt.actions[aid].clone()));
                }
                for (r, role) in roles.iter().enumerate().skip(1) {
                    let obj = e.gt_role_id[p][aid][r - 1];
                    let obj = (obj >= 0).then_some(obj as usize);
                    targets.push((obj, format!("{}_{}", gt.actions[aid], role)));
                }
                for (obj, name) in targets {
                    let c = class_of[name.as_str()];
                    match rels.iter_mut().find(|(s, o, _)| *s == p && *o == obj) {
                        Some(x) => x.2.push(c),
                        None => rels.push((p, obj, vec![c])),
                    }
                }
            }
        }
        let flat: Vec<(usize, Option<usize>, i64)> =
            rels.iter().map(|(s, o, _)| (*s, *o, 0)).collect();
        let labels: Vec<i64> = e.gt_classes.iter().map(|&c| c - 1).collect();
        let mut pp = perfect_predictions(&e.boxes, &labels, &flat, 29, 80);
        for (k, (_, _, classes)) in rels.iter().enumerate() {
            pp.verb_scores[k * 29] = 0.0;
            for &c in classes {
                pp.verb_scores[k * 29 + c] = 1.0;
            }
        }
        preds.push(pp);
        image_ids.push(e.image_id);
    }
    let ones = CorrectMat {
        num_verbs: 29,
        num_objects: 80,
        values: vec![1.0; 29 * 80],
    };
    let dets = vcoco_detections_from_predictions(&preds, &image_ids, &ones).unwrap();
    let r = evaluate_vcoco_official(&dets, &gt, 0.5).unwrap();
    assert!((r.scenario_1.average - 1.0).abs() < 1e-6, "{r}");
    assert!((r.scenario_2.average - 1.0).abs() < 1e-6, "{r}");
    // Agent AP is not 100 by construction: a person with two role objects gets two pairs, both
    // carrying that action's agent score, and the second is a duplicate detection (a FP).

    // In-training evaluator, from the HOIA GT.
    let hoia = load_hoia_annotations(dir.join("test_vcoco.json")).unwrap();
    let gts = vcoco_gt_from_annotations(&hoia).unwrap();
    let preds: Vec<PairPredictions> = gts
        .iter()
        .map(|g| perfect_predictions(&g.boxes, &g.labels, &g.hois, 29, 80))
        .collect();
    let r = evaluate_vcoco_in_training(&preds, &gts, &ones, &VcocoInTrainingOptions::default())
        .unwrap();
    assert!((r.map_all - 1.0).abs() < 1e-12, "{r}");
}

/// Average precision of one class is at most that of the order that ranks every TP first.
#[test]
fn no_score_permutation_beats_tp_first_ranking() {
    let mut rng = Rng::new(11);
    for _ in 0..500 {
        let n = 1 + rng.below(40);
        let tp: Vec<bool> = (0..n).map(|_| rng.f64() < 0.4).collect();
        let n_gt = tp.iter().filter(|&&t| t).count() + rng.below(5);
        if n_gt == 0 {
            continue;
        }
        // Distinct scores; the TP-first ranking gives every TP a higher score than every FP.
        let mut scores: Vec<f32> = (0..n).map(|i| (i + 1) as f32 / (n + 1) as f32).collect();
        rng.shuffle(&mut scores);
        let mut best = scores.clone();
        best.sort_by(|a, b| b.total_cmp(a));
        let mut it = best.into_iter();
        let mut oracle = vec![0.0f32; n];
        for (i, _) in tp.iter().enumerate().filter(|(_, t)| **t) {
            oracle[i] = it.next().unwrap();
        }
        for (i, _) in tp.iter().enumerate().filter(|(_, t)| !**t) {
            oracle[i] = it.next().unwrap();
        }
        let shuffled = ranked_11point_ap(&scores, &tp, n_gt).ap;
        let top = ranked_11point_ap(&oracle, &tp, n_gt).ap;
        assert!(shuffled <= top + 1e-12, "{shuffled} > {top}");

        // The same for the all-point AP of the official V-COCO evaluator.
        let curve = |s: &[f32]| {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
            let (mut c, mut rec, mut prec) = (0usize, Vec::new(), Vec::new());
            for (k, &i) in order.iter().enumerate() {
                c += usize::from(tp[i]);
                rec.push(c as f64 / n_gt as f64);
                prec.push(c as f64 / (k + 1) as f64);
            }
            voc_ap_all_point(&rec, &prec)
        };
        assert!(curve(&scores) <= curve(&oracle) + 1e-12);
    }

    // Evaluator level: perfect detections (score 1) plus background; shuffling every score
    // within each image never raises the mAP above the score-sorted result (which is 100).
    for seed in SEEDS {
        let s = synth_hico(&SynthConfig::small(25, seed));
        let mut preds: Vec<PairPredictions> = s
            .gts
            .iter()
            .map(|g| {
                let rels: Vec<_> = g.hois.iter().map(|&(a, b, v)| (a, Some(b), v)).collect();
                perfect_predictions(&g.boxes, &g.labels, &rels, 117, -1)
            })
            .collect();
        let mut rng = Rng::new(seed);
        let cfg = HicoEvalConfig::default();
        let sorted = evaluate_hico(&preds, &s.gts, &s.correct_mat, &s.buckets, &cfg).unwrap();
        for p in &mut preds {
            rng.shuffle(&mut p.verb_scores);
        }
        let shuffled = evaluate_hico(&preds, &s.gts, &s.correct_mat, &s.buckets, &cfg).unwrap();
        assert!(shuffled.metrics.map <= sorted.metrics.map + 1e-12);
    }
}

fn permutation(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut p);
    p
}

#[test]
fn hico_ap_does_not_depend_on_image_order() {
    for seed in SEEDS {
        let cfg = SynthConfig {
            distinct_classes_per_image: false,
            ..SynthConfig::small(60, seed)
        };
        let s = synth_hico(&cfg);
        let mut rng = Rng::new(seed + 100);
        let perm = permutation(&mut rng, s.gts.len());
        let gts2: Vec<_> = perm.iter().map(|&i| s.gts[i].clone()).collect();
        let preds2: Vec<_> = perm.iter().map(|&i| s.preds[i].clone()).collect();
        for cfg in hico_configs() {
            let a = evaluate_hico(&s.preds, &s.gts, &s.correct_mat, &s.buckets, &cfg).unwrap();
            let b = evaluate_hico(&preds2, &gts2, &s.correct_mat, &s.buckets, &cfg).unwrap();
            assert!(
                a.metrics.map > 0.05 && a.metrics.map < 0.99,
                "{:?}",
                a.metrics
            );
            let by: HashMap<_, _> = b.per_class.iter().map(|c| (c.triplet, c)).collect();
            assert_eq!(a.per_class.len(), b.per_class.len());
            for c in &a.per_class {
                let d = by[&c.triplet];
                assert_eq!((c.n_gt, c.n_pred, c.n_tp), (d.n_gt, d.n_pred, d.n_tp));
                assert!((c.ap - d.ap).abs() < 1e-12, "{:?}", c.triplet);
            }
            for (x, y) in [
                (a.metrics.map, b.metrics.map),
                (a.metrics.map_rare, b.metrics.map_rare),
                (a.metrics.map_non_rare, b.metrics.map_non_rare),
            ] {
                assert!((x - y).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn oi_ap_does_not_depend_on_image_order() {
    for seed in SEEDS {
        let cfg = SynthConfig {
            distinct_classes_per_image: false,
            ..SynthConfig::small(60, seed)
        };
        let s = synth_oi(&cfg);
        let mut rng = Rng::new(seed + 200);
        let perm = permutation(&mut rng, s.gts.len());
        let gts2: Vec<_> = perm.iter().map(|&i| s.gts[i].clone()).collect();
        let preds2: Vec<_> = perm.iter().map(|&i| s.preds[i].clone()).collect();
        for use_nms in [true, false] {
            let cfg = OiEvalConfig {
                use_nms,
                ..OiEvalConfig::default()
            };
            let a = evaluate_oi(&s.preds, &s.gts, &cfg).unwrap();
            let b = evaluate_oi(&preds2, &gts2, &cfg).unwrap();
            let (sa, sb) = (a.summary.unwrap(), b.summary.unwrap());
            assert!(sa.score_wtd > 0.05 && sa.score_wtd < 0.99, "{sa:?}");
            for (x, y) in [
                (sa.r50, sb.r50),
                (sa.wmap_rel, sb.wmap_rel),
                (sa.wmap_phr, sb.wmap_phr),
            ] {
                assert!((x - y).abs() < 1e-12, "{sa:?} vs {sb:?}");
            }
            for (ta, tb) in a.top_k.iter().zip(&b.top_k) {
                let by: HashMap<_, _> = tb.per_class.iter().map(|c| (c.triplet, c)).collect();
                for c in &ta.per_class {
                    let d = by[&c.triplet];
                    assert!((c.rel.ap - d.rel.ap).abs() < 1e-12);
                    assert!((c.phr.ap - d.phr.ap).abs() < 1e-12);
                }
            }
        }
    }
}
