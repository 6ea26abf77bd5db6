//! Golden checks: every number of each `expected.json` under `shared/golden/eval/`, produced by
//! running the official RLIPv2 evaluators, must be reproduced. The comparisons live in
//! [`rlip_train::eval::golden::check_case`] (shared with `cargo xtask golden eval`); this test
//! runs it on every case folder found, so new cases are picked up without code changes.

use std::path::{Path, PathBuf};

use rlip_data::hico::load_hoi_annotations;
use rlip_data::oi::{load_oi_annotations, load_oi_categories};
use rlip_train::eval::golden::{CaseKind, check_case, detect_case_kind, find_cases};
use rlip_train::eval::hico::{HicoEvalConfig, HicoSplit, evaluate_hico, hico_gt_from_annotations};
use rlip_train::eval::oi::{OiCorrections, OiEvalConfig, evaluate_oi, oi_gt_from_annotations};
use rlip_train::eval::vcoco::{
    VcocoInTrainingOptions, evaluate_vcoco_in_training, vcoco_gt_from_annotations,
};
use rlip_train::eval::{CorrectMat, load_predictions_npy};

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/eval")
}

fn golden(case: &str) -> PathBuf {
    golden_root().join(case)
}

/// Runs every case folder and fails on any mismatch, listing all failed comparisons.
#[test]
fn golden_eval_cases() {
    let cases = find_cases(&golden_root());
    assert!(
        !cases.is_empty(),
        "no golden eval cases under {}",
        golden_root().display()
    );
    let mut kinds = Vec::new();
    let mut failures = Vec::new();
    for dir in &cases {
        kinds.push(detect_case_kind(dir).unwrap());
        let checks = check_case(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(
            checks.len() > 10,
            "{}: only {} checks",
            dir.display(),
            checks.len()
        );
        let worst = checks
            .iter()
            .filter(|c| c.abs_diff().is_finite())
            .map(|c| c.abs_diff())
            .fold(0.0f64, f64::max);
        println!(
            "{}: {} checks, {} failed, max abs diff {worst:e}",
            dir.display(),
            checks.len(),
            checks.iter().filter(|c| !c.passed).count()
        );
        for c in checks.iter().filter(|c| !c.passed) {
            failures.push(format!(
                "{}: {}: got {}, expected {}, diff {:e}{}",
                dir.display(),
                c.name,
                c.got,
                c.expected,
                c.abs_diff(),
                c.note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ));
        }
    }
    for k in [
        CaseKind::Hico,
        CaseKind::Vcoco,
        CaseKind::Oi,
        CaseKind::PostProcess,
    ] {
        assert!(kinds.contains(&k), "no {k:?} case found");
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A broken expectation must be reported as a failure, not silently accepted.
#[test]
fn golden_runner_detects_a_wrong_expectation() {
    let src = golden("hico_eval/default_40img");
    let tmp = std::env::temp_dir().join(format!("rlip-golden-tamper-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.join(e.file_name())).unwrap();
    }
    let p = tmp.join("expected.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let m = v["with_nms"]["metrics"]["mAP"].as_f64().unwrap();
    v["with_nms"]["metrics"]["mAP"] = serde_json::json!(m + 1e-6);
    v["without_nms"]["per_class"][0]["n_tp"] = serde_json::json!(1000);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let checks = check_case(&tmp).unwrap();
    std::fs::remove_dir_all(&tmp).ok();
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.contains(&"with_nms mAP"));
    assert!(failed.iter().any(|n| n.ends_with("n_tp")));
}

// ------------------------------------------------------------------------------------------
// Corrected metrics differ from the official ones exactly where the documented defects trigger.
// ------------------------------------------------------------------------------------------

#[test]
fn hico_corrections_change_the_documented_cases_only() {
    use rlip_train::eval::hico::{HicoCorrections, HicoSetting};
    let dir = golden("hico_eval/default_40img");
    let train = load_hoi_annotations(dir.join("trainval_hico.json")).unwrap();
    let split = HicoSplit::from_training_counts(&train).unwrap();
    let gts = hico_gt_from_annotations(&load_hoi_annotations(dir.join("test_hico.json")).unwrap())
        .unwrap();
    let preds = load_predictions_npy(&dir, "preds_").unwrap();
    let mat = CorrectMat::load(dir.join("corre_hico.npy")).unwrap();
    let official = evaluate_hico(&preds, &gts, &mat, &split, &HicoEvalConfig::default()).unwrap();

    // "best GT already taken": image 10, object 11, verb 94 (taken_B) becomes a TP; the
    // duplicated GT of image 0 (object 54, verb 36) can now be matched by dup_gt_2nd.
    let cfg = HicoEvalConfig {
        corrections: HicoCorrections {
            match_free_gt: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let fixed = evaluate_hico(&preds, &gts, &mat, &split, &cfg).unwrap();
    let find = |r: &rlip_train::eval::hico::HicoReport, t| {
        r.per_class.iter().find(|c| c.triplet == t).unwrap().clone()
    };
    assert_eq!(
        find(&fixed, (0, 11, 94)).n_tp,
        find(&official, (0, 11, 94)).n_tp + 1
    );
    assert_eq!(
        find(&fixed, (0, 54, 36)).n_tp,
        find(&official, (0, 54, 36)).n_tp + 1
    );
    assert!(fixed.metrics.map > official.metrics.map);
    let changed: Vec<_> = official
        .per_class
        .iter()
        .zip(&fixed.per_class)
        .filter(|(a, b)| a.n_tp != b.n_tp)
        .map(|(a, _)| a.triplet)
        .collect();
    println!("match_free_gt changes classes {changed:?}");

    // Image 20 has no GT box: its 3 predictions of test classes become FPs.
    let cfg = HicoEvalConfig {
        corrections: HicoCorrections {
            no_gt_image_predictions_are_fp: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let fixed = evaluate_hico(&preds, &gts, &mat, &split, &cfg).unwrap();
    let n = |r: &rlip_train::eval::hico::HicoReport| {
        r.per_class.iter().map(|c| c.n_pred).sum::<usize>()
    };
    assert_eq!(n(&fixed), n(&official) + 3);
    assert!(fixed.metrics.map <= official.metrics.map);

    // Known-Object (our addition): never more predictions than Default, same GT.
    let cfg = HicoEvalConfig {
        setting: HicoSetting::KnownObject,
        ..Default::default()
    };
    let ko = evaluate_hico(&preds, &gts, &mat, &split, &cfg).unwrap();
    for (a, b) in official.per_class.iter().zip(&ko.per_class) {
        assert_eq!(a.n_gt, b.n_gt);
        assert!(b.n_pred <= a.n_pred);
        assert_eq!(a.n_tp, b.n_tp);
    }
    assert!(format!("{ko}").contains("Known-Object"));
}

#[test]
fn oi_and_vcoco_corrections() {
    let dir = golden("oi_sgg_eval/oi_40img");
    let anns = load_oi_annotations(dir.join("OI_SGG_test.json")).unwrap();
    let all = load_oi_categories(dir.join("categories_dict.json")).unwrap();
    let evaluated =
        load_oi_categories(dir.join("OI_SGG_trainval_test_categories_dict.json")).unwrap();
    let gts = oi_gt_from_annotations(&anns, &all, &evaluated).unwrap();
    let preds = load_predictions_npy(&dir, "preds_").unwrap();
    let official = evaluate_oi(&preds, &gts, &OiEvalConfig::default()).unwrap();
    // The phrase-order defect triggers in this case (with NMS, the default).
    let sorted = OiEvalConfig {
        corrections: OiCorrections {
            sort_phrases_before_matching: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let s_off = official.summary.unwrap();
    let s_fix = evaluate_oi(&preds, &gts, &sorted).unwrap().summary.unwrap();
    assert!((s_off.wmap_phr - s_fix.wmap_phr).abs() > 1e-6);
    // Image 13 has no GT box: its relation predictions of test classes become FPs.
    let cfg = OiEvalConfig {
        corrections: OiCorrections {
            no_gt_image_predictions_are_fp: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let fixed = evaluate_oi(&preds, &gts, &cfg).unwrap();
    let n = |r: &rlip_train::eval::oi::OiReport| {
        r.top_k[1]
            .per_class
            .iter()
            .map(|c| c.rel.n_pred)
            .sum::<usize>()
    };
    let test_triplets: Vec<_> = official.top_k[1]
        .per_class
        .iter()
        .map(|c| c.triplet)
        .collect();
    let in_13 = official.top_k[1].per_image_kept[13]
        .rel
        .iter()
        .filter(|k| {
            let l = &preds[13].labels;
            test_triplets.contains(&(l[k.subject_id], l[k.object_id], k.verb as i64))
        })
        .count();
    println!("image 13: {in_13} relation predictions of test triplets");
    assert_eq!(n(&fixed), n(&official) + in_13);
    // The never-predicted subject class (triplet [32, 11, 0]) enters the PhrD denominator.
    let cfg = OiEvalConfig {
        corrections: OiCorrections {
            phrase_recall_counts_all_gt: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let fixed = evaluate_oi(&preds, &gts, &cfg).unwrap();
    assert!(fixed.top_k[1].recall_counts.phr_gt > official.top_k[1].recall_counts.phr_gt);
    assert_eq!(
        fixed.top_k[1].recall_counts.phr_gt,
        fixed.top_k[1].recall_counts.rel_gt
    );
    assert!(format!("{fixed}").contains("corrected metric"));

    // V-COCO in-training: the corrected greedy matching never loses a TP.
    let dir = golden("vcoco/vcoco_20img");
    let hoia = rlip_data::vcoco::load_hoia_annotations(dir.join("test_vcoco.json")).unwrap();
    let gts = vcoco_gt_from_annotations(&hoia).unwrap();
    let preds = load_predictions_npy(&dir, "preds_").unwrap();
    let mat = CorrectMat::load(dir.join("corre_vcoco.npy")).unwrap();
    let off =
        evaluate_vcoco_in_training(&preds, &gts, &mat, &VcocoInTrainingOptions::default()).unwrap();
    let opts = VcocoInTrainingOptions {
        match_free_gt: true,
        ..Default::default()
    };
    let fixed = evaluate_vcoco_in_training(&preds, &gts, &mat, &opts).unwrap();
    for (a, b) in off.per_class.iter().zip(&fixed.per_class) {
        assert!(b.n_tp >= a.n_tp, "{}", a.name);
    }
}
