//! Golden checks: every number of each `expected.json` under `shared/golden/eval/`, produced by
//! running the official RLIPv2 evaluators, must be reproduced.

use std::path::{Path, PathBuf};

use rlip_data::hico::{load_hoi_annotations, load_hoi_list};
use rlip_data::npy::read_npy;
use rlip_data::oi::{load_oi_annotations, load_oi_categories};
use rlip_data::vcoco::{
    DetValue, load_coco_instances, load_split_ids, load_vcoco_detections_json,
    load_vcoco_detections_pickle, load_vsrl_annotations,
};
use rlip_train::eval::hico::{
    Bucket, HicoEvalConfig, HicoSplit, ZeroShotSetting, evaluate_hico, hico_gt_from_annotations,
};
use rlip_train::eval::oi::{OiCorrections, OiEvalConfig, evaluate_oi, oi_gt_from_annotations};
use rlip_train::eval::postprocess::{
    PostProcessHoiConfig, RawOutputs, postprocess_hoi, postprocess_sgg,
};
use rlip_train::eval::vcoco::{
    VcocoInTrainingOptions, VcocoOfficialGt, VcocoScenario, evaluate_vcoco_in_training,
    evaluate_vcoco_official, vcoco_detections_from_predictions, vcoco_gt_from_annotations,
};
use rlip_train::eval::{CorrectMat, KeptPrediction, PairPredictions, load_predictions_npy};
use serde_json::Value;

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/golden/eval")
        .join(case)
}

fn load_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// Tracks the largest absolute difference seen.
struct Cmp {
    what: &'static str,
    max_diff: f64,
}

impl Cmp {
    fn new(what: &'static str) -> Self {
        Cmp {
            what,
            max_diff: 0.0,
        }
    }
    fn num(&mut self, ctx: &str, got: f64, want: &Value, tol: f64) {
        let w = if want.is_null() {
            f64::NAN
        } else {
            want.as_f64()
                .unwrap_or_else(|| panic!("{ctx}: {want} is not a number"))
        };
        if w.is_nan() || got.is_nan() {
            assert!(
                w.is_nan() && got.is_nan(),
                "{}: {ctx}: got {got}, want {w}",
                self.what
            );
            return;
        }
        let d = (got - w).abs();
        self.max_diff = self.max_diff.max(d);
        assert!(
            d <= tol,
            "{}: {ctx}: got {got}, want {w} (diff {d:e})",
            self.what
        );
    }
    fn int(&self, ctx: &str, got: i64, want: &Value) {
        assert_eq!(Some(got), want.as_i64(), "{}: {ctx}", self.what);
    }
    fn done(&self) {
        println!("{}: max abs diff {:e}", self.what, self.max_diff);
    }
}

fn kept_rows_equal(cmp: &Cmp, ctx: &str, got: &[KeptPrediction], want: &Value) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{}: {ctx}: kept length", cmp.what);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let w = w.as_array().unwrap();
        let row = (
            w[0].as_i64().unwrap(),
            w[1].as_i64().unwrap(),
            w[2].as_i64().unwrap(),
            w[3].as_f64().unwrap() as f32,
        );
        assert_eq!(
            (
                g.subject_id as i64,
                g.object_id as i64,
                g.verb as i64,
                g.score
            ),
            row,
            "{}: {ctx}: kept row {i}",
            cmp.what
        );
    }
}

fn triplet_of(v: &Value) -> (i64, i64, i64) {
    let a = v.as_array().unwrap();
    (
        a[0].as_i64().unwrap(),
        a[1].as_i64().unwrap(),
        a[2].as_i64().unwrap(),
    )
}

// ------------------------------------------------------------------------------------------
// HICO-DET
// ------------------------------------------------------------------------------------------

fn check_hico(case: &str, split: HicoSplit) {
    let dir = golden(case);
    let exp = load_json(&dir.join("expected.json"));
    let anns = load_hoi_annotations(dir.join("test_hico.json")).unwrap();
    let gts = hico_gt_from_annotations(&anns).unwrap();
    let preds = load_predictions_npy(&dir, "preds_").unwrap();
    let mat = CorrectMat::load(dir.join("corre_hico.npy")).unwrap();
    let mut cmp = Cmp::new(if case.contains("zero") {
        "hico zero-shot UC-RF"
    } else {
        "hico default"
    });

    let mut rare = split.rare.clone();
    rare.sort();
    let mut non_rare = split.non_rare.clone();
    non_rare.sort();
    let want_rare: Vec<_> = exp["rare_triplets"]
        .as_array()
        .unwrap()
        .iter()
        .map(triplet_of)
        .collect();
    let want_non_rare: Vec<_> = exp["non_rare_triplets"]
        .as_array()
        .unwrap()
        .iter()
        .map(triplet_of)
        .collect();
    assert_eq!(rare, want_rare, "rare split");
    assert_eq!(non_rare, want_non_rare, "non-rare split");

    for (run, cfg) in [
        ("without_nms", HicoEvalConfig::default()),
        ("with_nms", HicoEvalConfig::official_with_nms()),
    ] {
        let r = evaluate_hico(&preds, &gts, &mat, &split, &cfg).unwrap();
        let e = &exp[run];
        let m = &e["metrics"];
        cmp.num(&format!("{run} mAP"), r.metrics.map, &m["mAP"], 1e-9);
        cmp.num(
            &format!("{run} mAP rare"),
            r.metrics.map_rare,
            &m["mAP rare"],
            1e-9,
        );
        cmp.num(
            &format!("{run} mAP non-rare"),
            r.metrics.map_non_rare,
            &m["mAP non-rare"],
            1e-9,
        );
        cmp.num(
            &format!("{run} mean max recall"),
            r.metrics.mean_max_recall,
            &m["mean max recall"],
            1e-9,
        );
        let pc = e["per_class"].as_array().unwrap();
        assert_eq!(r.per_class.len(), pc.len(), "{run}: number of classes");
        for (g, w) in r.per_class.iter().zip(pc) {
            let ctx = format!("{run} class {:?}", g.triplet);
            assert_eq!(g.triplet, triplet_of(&w["triplet"]), "{ctx}");
            assert_eq!(g.triplet_ids, triplet_of(&w["triplet_ids"]), "{ctx}");
            cmp.int(&format!("{ctx} n_gt"), g.n_gt as i64, &w["n_gt"]);
            cmp.int(&format!("{ctx} n_pred"), g.n_pred as i64, &w["n_pred"]);
            cmp.int(&format!("{ctx} n_tp"), g.n_tp as i64, &w["n_tp"]);
            cmp.num(&format!("{ctx} ap"), g.ap, &w["ap"], 1e-9);
            cmp.num(
                &format!("{ctx} max_recall"),
                g.max_recall,
                &w["max_recall"],
                1e-9,
            );
            let bucket = match g.bucket {
                Bucket::Rare => "rare",
                Bucket::NonRare => "non_rare",
                Bucket::Neither => "neither",
            };
            assert_eq!(bucket, w["bucket"].as_str().unwrap(), "{ctx}");
        }
        let kept = e["per_image_kept"].as_array().unwrap();
        assert_eq!(r.per_image_kept.len(), kept.len());
        for (i, (g, w)) in r.per_image_kept.iter().zip(kept).enumerate() {
            kept_rows_equal(&cmp, &format!("{run} image {i}"), g, w);
        }
        // The printed metric line, character for character.
        let stdout: Vec<&str> = e["stdout"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(
            stdout.contains(&r.official_line().as_str()),
            "{run}: {} not in {stdout:?}",
            r.official_line()
        );
        assert_eq!(
            r.warnings.len(),
            stdout.iter().filter(|l| l.starts_with("Warning")).count()
        );
        let _ = format!("{r}");
    }
    cmp.done();
}

#[test]
fn golden_hico_default_40img() {
    let dir = golden("hico_eval/default_40img");
    let train = load_hoi_annotations(dir.join("trainval_hico.json")).unwrap();
    let split = HicoSplit::from_training_counts(&train).unwrap();
    check_hico("hico_eval/default_40img", split);
}

#[test]
fn golden_hico_zeroshot_ucrf_32img() {
    let dir = golden("hico_eval/zeroshot_ucrf_32img");
    let list = load_hoi_list(dir.join("hoi_list_new.json")).unwrap();
    let split = HicoSplit::zero_shot(ZeroShotSetting::UcRf, &list).unwrap();
    check_hico("hico_eval/zeroshot_ucrf_32img", split);
}

// ------------------------------------------------------------------------------------------
// Open Images
// ------------------------------------------------------------------------------------------

#[test]
fn golden_oi_40img() {
    let dir = golden("oi_sgg_eval/oi_40img");
    let exp = load_json(&dir.join("expected.json"));
    let case = load_json(&dir.join("case.json"));
    let anns = load_oi_annotations(dir.join("OI_SGG_test.json")).unwrap();
    let all = load_oi_categories(dir.join("categories_dict.json")).unwrap();
    let evaluated =
        load_oi_categories(dir.join("OI_SGG_trainval_test_categories_dict.json")).unwrap();
    let gts = oi_gt_from_annotations(&anns, &all, &evaluated).unwrap();
    let preds = load_predictions_npy(&dir, "preds_").unwrap();
    let mut cmp = Cmp::new("oi");
    for (run, use_nms) in [("with_nms", true), ("without_nms", false)] {
        let cfg = OiEvalConfig {
            use_nms,
            ..OiEvalConfig::default()
        };
        let r = evaluate_oi(&preds, &gts, &cfg).unwrap();
        let e = &exp[run];
        let wm = e["metrics"].as_object().unwrap();
        assert_eq!(wm.len(), r.metrics.len(), "{run}: metric keys");
        for (k, v) in wm {
            let got = *r
                .metrics
                .get(k)
                .unwrap_or_else(|| panic!("{run}: missing metric {k}"));
            cmp.num(&format!("{run} {k}"), got, v, 1e-9);
        }
        let s = r.summary.unwrap();
        cmp.num(&format!("{run} R@50"), s.r50, &e["summary"]["R@50"], 1e-9);
        cmp.num(
            &format!("{run} wmAP_rel"),
            s.wmap_rel,
            &e["summary"]["wmAP_rel"],
            1e-9,
        );
        cmp.num(
            &format!("{run} wmAP_phr"),
            s.wmap_phr,
            &e["summary"]["wmAP_phr"],
            1e-9,
        );
        cmp.num(
            &format!("{run} score_wtd"),
            s.score_wtd,
            &e["summary"]["score_wtd"],
            1e-9,
        );
        for t in &r.top_k {
            let key = format!("top{}", t.top_k);
            let w = &e[&key];
            let pc = w["per_class"].as_array().unwrap();
            assert_eq!(t.per_class.len(), pc.len());
            for (g, wc) in t.per_class.iter().zip(pc) {
                let ctx = format!("{run} {key} {:?}", g.triplet);
                assert_eq!(g.triplet, triplet_of(&wc["triplet"]), "{ctx}");
                cmp.int(&format!("{ctx} n_gt"), g.n_gt as i64, &wc["n_gt"]);
                for (mode, gm) in [("rel", &g.rel), ("phr", &g.phr)] {
                    let wmode = &wc[mode];
                    cmp.int(
                        &format!("{ctx} {mode} n_pred"),
                        gm.n_pred as i64,
                        &wmode["n_pred"],
                    );
                    cmp.int(
                        &format!("{ctx} {mode} n_tp"),
                        gm.n_tp as i64,
                        &wmode["n_tp"],
                    );
                    cmp.num(&format!("{ctx} {mode} ap"), gm.ap, &wmode["ap"], 1e-9);
                    cmp.num(
                        &format!("{ctx} {mode} max_recall"),
                        gm.max_recall,
                        &wmode["max_recall"],
                        1e-9,
                    );
                }
            }
            let rc = &w["recall_counts"];
            cmp.int("rel_tp", t.recall_counts.rel_tp as i64, &rc["rel_tp"]);
            cmp.int("rel_gt", t.recall_counts.rel_gt as i64, &rc["rel_gt"]);
            cmp.int("phr_tp", t.recall_counts.phr_tp as i64, &rc["phr_tp"]);
            cmp.int("phr_gt", t.recall_counts.phr_gt as i64, &rc["phr_gt"]);
            // Without NMS the top-50 list is documented as the first 50 rows of the top-100 list.
            let (kept, limit) = match &w["per_image_kept"] {
                Value::String(_) => (&e["top100"]["per_image_kept"], t.top_k),
                k => (k, usize::MAX),
            };
            let rel = kept["rel"].as_array().unwrap();
            let phr = kept["phrase_from_rel_index"].as_array().unwrap();
            for (i, k) in t.per_image_kept.iter().enumerate() {
                let want_rel: Vec<Value> = rel[i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .take(limit)
                    .cloned()
                    .collect();
                kept_rows_equal(
                    &cmp,
                    &format!("{run} {key} image {i}"),
                    &k.rel,
                    &Value::Array(want_rel),
                );
                let want: Vec<usize> = phr[i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .filter(|&x| x < limit)
                    .collect();
                assert_eq!(
                    k.phrase_from_rel_index, want,
                    "{run} {key} image {i} phrases"
                );
            }
        }
        let stdout: Vec<String> = e["stdout"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        let shown = format!("{r}");
        for line in shown.lines().skip(1).take(3) {
            assert!(
                stdout.iter().any(|l| l == line),
                "{run}: printed line {line:?} not in official stdout"
            );
        }

        // The corrected phrase matching reproduces the case's diagnostic (NOT official) numbers.
        let cfg_c = OiEvalConfig {
            corrections: OiCorrections {
                sort_phrases_before_matching: true,
                ..OiCorrections::default()
            },
            ..cfg.clone()
        };
        let rc = evaluate_oi(&preds, &gts, &cfg_c).unwrap().summary.unwrap();
        let d = &case["diagnostic_NOT_official"]["values"][run];
        cmp.num("diag R@50", rc.r50, &d["R@50"], 1e-9);
        cmp.num("diag wmAP_rel", rc.wmap_rel, &d["wmAP_rel"], 1e-9);
        cmp.num("diag wmAP_phr", rc.wmap_phr, &d["wmAP_phr"], 1e-9);
        cmp.num("diag score_wtd", rc.score_wtd, &d["score_wtd"], 1e-9);
        if use_nms {
            assert!(
                (rc.wmap_phr - s.wmap_phr).abs() > 1e-6,
                "the defect must trigger in this case"
            );
        }
    }
    cmp.done();
}

// ------------------------------------------------------------------------------------------
// V-COCO
// ------------------------------------------------------------------------------------------

fn check_scenario(cmp: &mut Cmp, name: &str, got: &VcocoScenario, exp: &Value) {
    let roles = exp[name].as_object().unwrap();
    assert_eq!(got.roles.len(), roles.len(), "{name}: number of roles");
    for g in &got.roles {
        let w = &roles[&g.name];
        let ctx = format!("{name} {}", g.name);
        cmp.num(&format!("{ctx} ap"), g.ap, &w["ap"], 1e-6);
        cmp.num(
            &format!("{ctx} ap_float64"),
            g.ap_float64,
            &w["ap_float64"],
            1e-6,
        );
        cmp.int(&format!("{ctx} npos"), g.npos as i64, &w["npos"]);
        cmp.int(&format!("{ctx} n_det"), g.n_det as i64, &w["n_det"]);
        cmp.int(&format!("{ctx} n_tp"), g.n_tp as i64, &w["n_tp"]);
    }
    cmp.num(
        &format!("{name}_average"),
        got.average,
        &exp[format!("{name}_average")],
        1e-6,
    );
    cmp.num(
        &format!("{name}_average_without_point"),
        got.average_without_point,
        &exp[format!("{name}_average_without_point")],
        1e-6,
    );
    let m = exp[format!("{name}_role_ap_matrix")].as_array().unwrap();
    assert_eq!(m.len(), got.role_ap_matrix.len());
    for (row, w) in got.role_ap_matrix.iter().zip(m) {
        for (r, g) in row.iter().enumerate() {
            cmp.num(
                &format!("{name} matrix"),
                g.unwrap_or(f64::NAN),
                &w[r],
                1e-6,
            );
        }
    }
}

#[test]
fn golden_vcoco_20img() {
    let dir = golden("vcoco/vcoco_20img");
    let exp = load_json(&dir.join("expected.json"));

    // PostProcessHOI on the raw arrays reproduces preds_*.npy.
    let f = |n: &str| read_npy(dir.join(n)).unwrap();
    let (obj, verb, sb, ob) = (
        f("raw_pred_obj_logits.npy"),
        f("raw_pred_verb_logits.npy"),
        f("raw_pred_sub_boxes.npy"),
        f("raw_pred_obj_boxes.npy"),
    );
    let sizes = load_json(&dir.join("raw_orig_sizes_hw.json"));
    let hw: Vec<[i64; 2]> = sizes["orig_size_hw"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| [v[0].as_i64().unwrap(), v[1].as_i64().unwrap()])
        .collect();
    let image_ids: Vec<i64> = sizes["image_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let raw = RawOutputs {
        batch: obj.shape[0],
        queries: obj.shape[1],
        obj_logits: obj.as_f32().unwrap(),
        num_obj_logits: obj.shape[2],
        sub_logits: None,
        num_sub_logits: 0,
        verb_logits: verb.as_f32().unwrap(),
        num_verbs: verb.shape[2],
        sub_boxes: sb.as_f32().unwrap(),
        obj_boxes: ob.as_f32().unwrap(),
    };
    let mine = postprocess_hoi(&raw, &hw, &PostProcessHoiConfig::default()).unwrap();
    let preds = load_predictions_npy(&dir, "preds_").unwrap();
    let mut pp = Cmp::new("vcoco PostProcessHOI vs preds_*.npy");
    compare_preds(&mut pp, "vcoco postprocess", &mine, &preds);
    pp.done();
    let mut dcmp = Cmp::new("vcoco generate_vcoco_official detections");

    // generate_vcoco_official detections, from our predictions directly.
    let mat = CorrectMat::load(dir.join("corre_vcoco.npy")).unwrap();
    let dets = vcoco_detections_from_predictions(&mine, &image_ids, &mat).unwrap();
    let dets_json = load_vcoco_detections_json(dir.join("vcoco_detections.json")).unwrap();
    let dets_pickle = load_vcoco_detections_pickle(dir.join("vcoco_detections.pickle")).unwrap();
    assert_eq!(dets.len(), dets_json.len());
    for (a, b) in dets_json.iter().zip(&dets_pickle) {
        assert_eq!(a.image_id, b.image_id);
        assert_eq!(a.person_box, b.person_box);
        assert_eq!(a.values.len(), b.values.len());
    }
    for (i, (g, w)) in dets.iter().zip(&dets_json).enumerate() {
        assert_eq!(g.image_id, w.image_id, "det {i}");
        for c in 0..4 {
            assert!(
                (g.person_box[c] - w.person_box[c]).abs() <= 1e-3,
                "det {i} person box"
            );
        }
        assert_eq!(
            g.values.keys().collect::<Vec<_>>(),
            w.values.keys().collect::<Vec<_>>(),
            "det {i} keys"
        );
        for (k, gv) in &g.values {
            let close = |a: f64, b: f64, tol_rel: f64, tol_abs: f64| {
                (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol_abs + tol_rel * b.abs()
            };
            let diff = |a: f64, b: f64| {
                if a.is_nan() && b.is_nan() {
                    0.0
                } else {
                    (a - b).abs()
                }
            };
            match (gv, &w.values[k]) {
                (DetValue::Score(a), DetValue::Score(b)) => {
                    dcmp.max_diff = dcmp.max_diff.max(diff(*a, *b));
                    assert!(close(*a, *b, 1e-5, 1e-9), "det {i} {k}: {a} vs {b}")
                }
                (DetValue::List(a), DetValue::List(b)) => {
                    assert_eq!(a.len(), b.len());
                    for c in 0..4 {
                        assert!(close(a[c], b[c], 0.0, 1e-3), "det {i} {k} box");
                    }
                    dcmp.max_diff = dcmp.max_diff.max(diff(a[4], b[4]));
                    assert!(close(a[4], b[4], 1e-5, 1e-9), "det {i} {k} score");
                }
                _ => panic!("det {i} {k}: kinds differ"),
            }
        }
    }

    // Official vsrl_eval, from our detections and from the pickle.
    let vsrl = load_vsrl_annotations(dir.join("vcoco_test.json")).unwrap();
    let coco = load_coco_instances(dir.join("instances_vcoco_all_2014.json")).unwrap();
    let ids = load_split_ids(dir.join("vcoco_test.ids")).unwrap();
    let gt = VcocoOfficialGt::new(&vsrl, &coco, &ids).unwrap();
    let off = &exp["official_vsrl_eval"];
    dcmp.done();
    for (src, d) in [("ours", &dets), ("pickle", &dets_pickle)] {
        let mut cmp = Cmp::new(if src == "ours" {
            "vcoco official (our detections)"
        } else {
            "vcoco official (pickle)"
        });
        let r = evaluate_vcoco_official(d, &gt, 0.5).unwrap();
        let agents = off["agent"].as_object().unwrap();
        assert_eq!(agents.len(), r.agent.len());
        for a in &r.agent {
            let w = &agents[&a.name];
            let ctx = format!("{src} agent {}", a.name);
            cmp.num(&format!("{ctx} ap"), a.ap, &w["ap"], 1e-6);
            cmp.num(
                &format!("{ctx} ap_float64"),
                a.ap_float64,
                &w["ap_float64"],
                1e-6,
            );
            cmp.int(&format!("{ctx} npos"), a.npos as i64, &w["npos"]);
            cmp.int(&format!("{ctx} n_det"), a.n_det as i64, &w["n_det"]);
            cmp.int(&format!("{ctx} n_tp"), a.n_tp as i64, &w["n_tp"]);
        }
        cmp.num(
            "agent_average",
            r.agent_average,
            &off["agent_average"],
            1e-6,
        );
        check_scenario(&mut cmp, "scenario_1", &r.scenario_1, off);
        check_scenario(&mut cmp, "scenario_2", &r.scenario_2, off);
        let shown = format!("{r}");
        for line in off["printed"].as_array().unwrap() {
            assert!(
                shown.lines().any(|l| l == line.as_str().unwrap()),
                "{src}: {line} not printed:\n{shown}"
            );
        }
        cmp.done();
    }
    let mut cmp = Cmp::new("vcoco in-training");

    // In-training evaluator.
    let hoia = rlip_data::vcoco::load_hoia_annotations(dir.join("test_vcoco.json")).unwrap();
    let gts = vcoco_gt_from_annotations(&hoia).unwrap();
    let r =
        evaluate_vcoco_in_training(&preds, &gts, &mat, &VcocoInTrainingOptions::default()).unwrap();
    let it = &exp["in_training_vcoco_eval"];
    cmp.num("mAP_all", r.map_all, &it["metrics"]["mAP_all"], 1e-9);
    cmp.num(
        "mAP_thesis",
        r.map_thesis,
        &it["metrics"]["mAP_thesis"],
        1e-9,
    );
    let pc = it["per_class"].as_array().unwrap();
    assert_eq!(pc.len(), r.per_class.len());
    for (g, w) in r.per_class.iter().zip(pc) {
        let ctx = format!("in-training {}", g.name);
        cmp.int(&ctx, g.verb_class as i64, &w["verb_class"]);
        assert_eq!(g.name, w["name"].as_str().unwrap());
        cmp.int(&format!("{ctx} n_gt"), g.n_gt as i64, &w["n_gt"]);
        cmp.int(&format!("{ctx} n_pred"), g.n_pred as i64, &w["n_pred"]);
        cmp.int(&format!("{ctx} n_tp"), g.n_tp as i64, &w["n_tp"]);
        cmp.num(&format!("{ctx} ap"), g.ap, &w["ap"], 1e-9);
    }
    let returned = r.returned();
    let wr = it["returned"].as_object().unwrap();
    assert_eq!(returned.len(), wr.len());
    for (k, v) in wr {
        cmp.num(&format!("returned {k}"), returned[k], v, 1e-9);
    }
    let kept = it["per_image_kept"].as_array().unwrap();
    for (i, (g, w)) in r.per_image_kept.iter().zip(kept).enumerate() {
        kept_rows_equal(&cmp, &format!("in-training image {i}"), g, w);
    }
    let shown = format!("{r}");
    let stdout: Vec<&str> = it["stdout"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for line in shown.lines() {
        assert!(
            stdout.contains(&line),
            "in-training line {line:?} not in official stdout"
        );
    }
    cmp.done();
}

// ------------------------------------------------------------------------------------------
// Post-processing
// ------------------------------------------------------------------------------------------

fn compare_preds(cmp: &mut Cmp, what: &str, got: &[PairPredictions], want: &[PairPredictions]) {
    assert_eq!(got.len(), want.len(), "{what}: images");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.labels, w.labels, "{what} image {i} labels");
        assert_eq!(g.sub_ids, w.sub_ids, "{what} image {i} sub_ids");
        assert_eq!(g.obj_ids, w.obj_ids, "{what} image {i} obj_ids");
        assert_eq!(g.num_verbs, w.num_verbs);
        for (a, b) in g.boxes.iter().flatten().zip(w.boxes.iter().flatten()) {
            assert!((a - b).abs() <= 1e-3, "{what} image {i} box {a} vs {b}");
        }
        for (a, b) in g.verb_scores.iter().zip(&w.verb_scores) {
            let d = (*a as f64 - *b as f64).abs();
            cmp.max_diff = cmp.max_diff.max(d);
            assert!(
                d <= 1e-9 + 1e-5 * (*b as f64).abs(),
                "{what} image {i} score {a} vs {b}"
            );
        }
    }
}

fn preds_from_json(v: &Value) -> Vec<PairPredictions> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|img| {
            let ints = |k: &str| -> Vec<i64> {
                img[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            };
            let boxes: Vec<[f32; 4]> = img["boxes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    let b = b.as_array().unwrap();
                    [0, 1, 2, 3].map(|c| b[c].as_f64().unwrap() as f32)
                })
                .collect();
            let rows = img["verb_scores"].as_array().unwrap();
            let num_verbs = rows.first().map_or(0, |r| r.as_array().unwrap().len());
            let verb_scores = rows
                .iter()
                .flat_map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                })
                .collect();
            let n = img["num_pairs"].as_u64().unwrap() as usize;
            let p = PairPredictions {
                labels: ints("labels"),
                boxes,
                verb_scores,
                num_verbs,
                sub_ids: ints("sub_ids").into_iter().map(|x| x as usize).collect(),
                obj_ids: ints("obj_ids").into_iter().map(|x| x as usize).collect(),
            };
            assert_eq!(p.num_pairs(), n);
            p
        })
        .collect()
}

#[test]
fn golden_postprocess_hoi_sgg_4img() {
    let dir = golden("postprocess/hoi_sgg_4img");
    let exp = load_json(&dir.join("expected.json"));
    let f = |n: &str| read_npy(dir.join(n)).unwrap();
    let hw_a = f("orig_size_hw.npy");
    let hw: Vec<[i64; 2]> = hw_a
        .to_i64_vec()
        .unwrap()
        .chunks(2)
        .map(|c| [c[0], c[1]])
        .collect();
    let mut cmp = Cmp::new("postprocess");
    let raw_of = |prefix: &str| {
        let (o, s, v, sb, ob) = (
            f(&format!("{prefix}_raw_pred_obj_logits.npy")),
            f(&format!("{prefix}_raw_pred_sub_logits.npy")),
            f(&format!("{prefix}_raw_pred_verb_logits.npy")),
            f(&format!("{prefix}_raw_pred_sub_boxes.npy")),
            f(&format!("{prefix}_raw_pred_obj_boxes.npy")),
        );
        (o, s, v, sb, ob)
    };
    let (o, s, v, sb, ob) = raw_of("hoi");
    let raw = RawOutputs {
        batch: o.shape[0],
        queries: o.shape[1],
        obj_logits: o.as_f32().unwrap(),
        num_obj_logits: o.shape[2],
        sub_logits: Some(s.as_f32().unwrap()),
        num_sub_logits: s.shape[2],
        verb_logits: v.as_f32().unwrap(),
        num_verbs: v.shape[2],
        sub_boxes: sb.as_f32().unwrap(),
        obj_boxes: ob.as_f32().unwrap(),
    };
    let plain = postprocess_hoi(&raw, &hw, &PostProcessHoiConfig::default()).unwrap();
    compare_preds(&mut cmp, "hoi", &plain, &preds_from_json(&exp["hoi"]));
    let nf = postprocess_hoi(
        &raw,
        &hw,
        &PostProcessHoiConfig {
            zero_shot_hoi_eval: true,
            ..Default::default()
        },
    )
    .unwrap();
    compare_preds(
        &mut cmp,
        "hoi_zero_shot_nf",
        &nf,
        &preds_from_json(&exp["hoi_zero_shot_nf"]),
    );

    let (o, s, v, sb, ob) = raw_of("sgg");
    let raw = RawOutputs {
        batch: o.shape[0],
        queries: o.shape[1],
        obj_logits: o.as_f32().unwrap(),
        num_obj_logits: o.shape[2],
        sub_logits: Some(s.as_f32().unwrap()),
        num_sub_logits: s.shape[2],
        verb_logits: v.as_f32().unwrap(),
        num_verbs: v.shape[2],
        sub_boxes: sb.as_f32().unwrap(),
        obj_boxes: ob.as_f32().unwrap(),
    };
    let sgg = postprocess_sgg(&raw, &hw).unwrap();
    compare_preds(&mut cmp, "sgg", &sgg, &preds_from_json(&exp["sgg"]));
    cmp.done();
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
