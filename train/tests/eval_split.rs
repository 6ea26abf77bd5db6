//! Whole-split evaluation: dataset folders in the official RLIPv2 layout (built at test time in a
//! temporary folder from the golden case files), the saved-predictions format, and bad input.

use std::path::{Path, PathBuf};

use rlip_data::vcoco::load_vcoco_detections_pickle;
use rlip_train::eval::hico::ZeroShotSetting;
use rlip_train::eval::predictions::{MissingImages, align_predictions};
use rlip_train::eval::{
    Dataset, EvalError, EvalOptions, ImagePredictions, PairPredictions, PredictionsFile,
    SplitConfig, evaluate_split, evaluate_vcoco_detections, load_predictions_npy, load_split,
    load_split_with, read_predictions, read_predictions_file, write_predictions,
    write_split_predictions,
};
use serde_json::{Value, json};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/golden/eval")
        .join(case)
}

fn expected(case: &str) -> Value {
    serde_json::from_slice(&std::fs::read(golden(case).join("expected.json")).unwrap()).unwrap()
}

/// A temporary folder removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "rlip-eval-split-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn place(root: &Path, case: &str, files: &[(&str, &str)]) {
    for (src, dst) in files {
        let d = root.join(dst);
        std::fs::create_dir_all(d.parent().unwrap()).unwrap();
        std::fs::copy(golden(case).join(src), d).unwrap();
    }
}

fn hico_root(tag: &str) -> Tmp {
    let t = Tmp::new(tag);
    place(
        &t.0,
        "hico_eval/default_40img",
        &[
            ("test_hico.json", "annotations/test_hico.json"),
            ("corre_hico.npy", "annotations/corre_hico.npy"),
            ("trainval_hico.json", "annotations/trainval_hico.json"),
        ],
    );
    t
}

fn close(a: f64, b: &Value, tol: f64) {
    let b = b.as_f64().unwrap_or(f64::NAN);
    assert!(
        (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol,
        "{a} vs {b}"
    );
}

#[test]
fn hico_split_roundtrip_reproduces_golden_numbers() {
    let root = hico_root("hico");
    let split = load_split(Dataset::Hico, &root.0).unwrap();
    assert_eq!(split.len(), 40);
    assert!(
        split.images[0]
            .path
            .ends_with("images/test2015/HICO_test2015_00000001.jpg")
    );
    let preds = load_predictions_npy(golden("hico_eval/default_40img"), "preds_").unwrap();
    let file = root.0.join("preds.json");
    write_split_predictions(&file, &split, &preds).unwrap();
    let back = read_predictions(&file, &split).unwrap();
    assert_eq!(back, preds, "JSON round trip is bit-exact");

    let exp = expected("hico_eval/default_40img");
    for (use_nms, run) in [(true, "with_nms"), (false, "without_nms")] {
        let r = evaluate_split(
            &split,
            &back,
            &EvalOptions {
                use_nms,
                ..EvalOptions::default()
            },
        )
        .unwrap();
        let m = &exp[run]["metrics"];
        close(r.metric("Default Full mAP").unwrap(), &m["mAP"], 1e-9);
        close(r.metric("Default Rare mAP").unwrap(), &m["mAP rare"], 1e-9);
        close(
            r.metric("Default Non-Rare mAP").unwrap(),
            &m["mAP non-rare"],
            1e-9,
        );
        let h = r.hico.as_ref().unwrap();
        assert_eq!(
            h.per_class.len(),
            exp[run]["per_class"].as_array().unwrap().len()
        );
        for c in &h.per_class {
            assert!(c.known_object.n_pred <= c.default.n_pred);
        }
        assert!(r.metric("Known Object Full mAP").is_some());
        let t = r.table();
        assert!(t.contains("Known Object*") && t.contains("Non-Rare"), "{t}");
        assert!(
            !r.warnings.is_empty(),
            "the case has a class in neither bucket"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["dataset"], "hico");
        assert!(json["hico"]["per_class"][0]["default"]["ap"].is_number());
    }
}

#[test]
fn hico_zero_shot_split() {
    let t = Tmp::new("zs");
    let case = "hico_eval/zeroshot_ucrf_32img";
    place(
        &t.0,
        case,
        &[
            ("test_hico.json", "annotations/test_hico.json"),
            ("corre_hico.npy", "annotations/corre_hico.npy"),
            ("hoi_list_new.json", "annotations/hoi_list_new.json"),
        ],
    );
    // Default setting needs trainval_hico.json, which this folder lacks.
    let err = load_split(Dataset::Hico, &t.0).unwrap_err();
    assert!(
        matches!(&err, EvalError::MissingFile { path, .. } if path.ends_with("annotations/trainval_hico.json")),
        "{err}"
    );
    assert!(err.to_string().contains("rare split"), "{err}");
    let split = load_split_with(
        Dataset::Hico,
        &t.0,
        &SplitConfig {
            zero_shot: Some(ZeroShotSetting::UcRf),
        },
    )
    .unwrap();
    let preds = load_predictions_npy(golden(case), "preds_").unwrap();
    let r = evaluate_split(&split, &preds, &EvalOptions::default()).unwrap();
    let m = &expected(case)["with_nms"]["metrics"];
    close(r.metric("Default Full mAP").unwrap(), &m["mAP"], 1e-9);
    close(
        r.metric("Default Unseen mAP").unwrap(),
        &m["mAP rare"],
        1e-9,
    );
    close(
        r.metric("Default Seen mAP").unwrap(),
        &m["mAP non-rare"],
        1e-9,
    );
    assert!(r.table().contains("Unseen"));
}

fn vcoco_root(tag: &str) -> Tmp {
    let t = Tmp::new(tag);
    place(
        &t.0,
        "vcoco/vcoco_20img",
        &[
            ("test_vcoco.json", "annotations/test_vcoco.json"),
            ("corre_vcoco.npy", "annotations/corre_vcoco.npy"),
            ("vcoco_test.json", "annotations/vcoco_test.json"),
            (
                "instances_vcoco_all_2014.json",
                "data/instances_vcoco_all_2014.json",
            ),
            ("vcoco_test.ids", "data/splits/vcoco_test.ids"),
        ],
    );
    t
}

#[test]
fn vcoco_split_official_and_in_training() {
    let root = vcoco_root("vcoco");
    let split = load_split(Dataset::Vcoco, &root.0).unwrap();
    assert_eq!(split.len(), 20);
    assert_eq!(split.images[0].image_id, Some(43485));
    assert_eq!(split.images[0].orig_size_hw, Some([640, 480]));
    let preds = load_predictions_npy(golden("vcoco/vcoco_20img"), "preds_").unwrap();
    let file = root.0.join("p.json");
    write_split_predictions(&file, &split, &preds).unwrap();
    let preds = read_predictions(&file, &split).unwrap();
    let r = evaluate_split(&split, &preds, &EvalOptions::default()).unwrap();
    let exp = expected("vcoco/vcoco_20img");
    let off = &exp["official_vsrl_eval"];
    close(
        r.metric("AP_role scenario 1").unwrap(),
        &off["scenario_1_average"],
        1e-6,
    );
    close(
        r.metric("AP_role scenario 2").unwrap(),
        &off["scenario_2_average"],
        1e-6,
    );
    close(r.metric("Agent AP").unwrap(), &off["agent_average"], 1e-6);
    close(
        r.metric("in-training mAP_all").unwrap(),
        &exp["in_training_vcoco_eval"]["metrics"]["mAP_all"],
        1e-9,
    );
    let t = r.table();
    assert!(
        t.contains("AP_role scenario 1") && t.contains("hold-obj"),
        "{t}"
    );

    // The official detection pickle, evaluated directly.
    let dets =
        load_vcoco_detections_pickle(golden("vcoco/vcoco_20img").join("vcoco_detections.pickle"))
            .unwrap();
    let r = evaluate_vcoco_detections(&split, &dets, &EvalOptions::default()).unwrap();
    close(
        r.metric("AP_role scenario 1").unwrap(),
        &off["scenario_1_average"],
        1e-6,
    );
    assert!(r.vcoco.unwrap().in_training.is_none());
}

#[test]
fn vcoco_official_files_in_the_vcoco_repository_layout() {
    let root = vcoco_root("vcoco-alt");
    std::fs::create_dir_all(root.0.join("data/vcoco")).unwrap();
    std::fs::rename(
        root.0.join("annotations/vcoco_test.json"),
        root.0.join("data/vcoco/vcoco_test.json"),
    )
    .unwrap();
    assert!(load_split(Dataset::Vcoco, &root.0).is_ok());
    std::fs::remove_file(root.0.join("data/splits/vcoco_test.ids")).unwrap();
    let err = load_split(Dataset::Vcoco, &root.0).unwrap_err().to_string();
    assert!(
        err.contains("vcoco_test.ids") && err.contains("test image ids"),
        "{err}"
    );
}

#[test]
fn oi_split() {
    let t = Tmp::new("oi");
    let case = "oi_sgg_eval/oi_40img";
    place(
        &t.0,
        case,
        &[
            ("OI_SGG_test.json", "annotations/OI_SGG_test.json"),
            ("categories_dict.json", "annotations/categories_dict.json"),
            (
                "OI_SGG_trainval_test_categories_dict.json",
                "annotations/OI_SGG_trainval_test_categories_dict.json",
            ),
        ],
    );
    let split = load_split(Dataset::Oi, &t.0).unwrap();
    let preds = load_predictions_npy(golden(case), "preds_").unwrap();
    let exp = expected(case);
    for (use_nms, run) in [(true, "with_nms"), (false, "without_nms")] {
        let r = evaluate_split(
            &split,
            &preds,
            &EvalOptions {
                use_nms,
                ..EvalOptions::default()
            },
        )
        .unwrap();
        let s = &exp[run]["summary"];
        for k in ["R@50", "wmAP_rel", "wmAP_phr", "score_wtd"] {
            close(r.metric(k).unwrap(), &s[k], 1e-9);
        }
        let oi = r.oi.as_ref().unwrap();
        assert!(!oi.top_k[1].per_class[0].names.0.is_empty());
        assert!(r.table().contains("score_wtd"));
    }
}

#[test]
fn missing_files_are_named() {
    let root = hico_root("missing");
    std::fs::remove_file(root.0.join("annotations/corre_hico.npy")).unwrap();
    let err = load_split(Dataset::Hico, &root.0).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("corre_hico.npy") && msg.contains("validity matrix"),
        "{msg}"
    );
    let err = load_split(Dataset::Oi, &root.0.join("nope")).unwrap_err();
    assert!(err.to_string().contains("dataset folder"), "{err}");
    let err = load_split(Dataset::Oi, &root.0).unwrap_err();
    assert!(err.to_string().contains("OI_SGG_test.json"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The predictions file
// ---------------------------------------------------------------------------------------------

fn tiny_file(root: &Path) -> (PathBuf, Value) {
    let split = load_split(Dataset::Hico, root).unwrap();
    let images: Vec<Value> = split
        .images
        .iter()
        .map(|im| {
            json!({"file_name": im.file_name, "num_verbs": 117, "labels": [], "boxes": [],
                   "verb_scores": [], "sub_ids": [], "obj_ids": []})
        })
        .collect();
    let v =
        json!({"format": "rlip-predictions", "version": 1, "dataset": "hico", "images": images});
    (root.join("tiny.json"), v)
}

fn write_json(p: &Path, v: &Value) {
    std::fs::write(p, serde_json::to_vec(v).unwrap()).unwrap();
}

fn one_pair() -> Value {
    let mut scores = vec![0.0f32; 117];
    scores[3] = 0.5;
    json!({"labels": [0, 5], "boxes": [[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 50.0, 60.0]],
           "verb_scores": [scores], "sub_ids": [0], "obj_ids": [1]})
}

fn set_image(v: &mut Value, i: usize, fields: Value) {
    for (k, x) in fields.as_object().unwrap() {
        v["images"][i][k] = x.clone();
    }
}

fn pred_error(root: &Path, v: &Value) -> String {
    let split = load_split(Dataset::Hico, root).unwrap();
    let p = root.join("bad.json");
    write_json(&p, v);
    match read_predictions(&p, &split) {
        Ok(_) => panic!("accepted {v}"),
        Err(e) => {
            assert!(e.to_string().contains("bad.json"), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn empty_prediction_sets_are_allowed() {
    let root = hico_root("empty");
    let split = load_split(Dataset::Hico, &root.0).unwrap();
    let (p, v) = tiny_file(&root.0);
    write_json(&p, &v);
    let preds = read_predictions(&p, &split).unwrap();
    assert!(
        preds
            .iter()
            .all(|x| x.num_pairs() == 0 && x.num_verbs == 117)
    );
    let r = evaluate_split(&split, &preds, &EvalOptions::default()).unwrap();
    assert_eq!(r.metric("Default Full mAP"), Some(0.0));
}

#[test]
fn bad_predictions_are_refused_with_file_image_and_field() {
    let root = hico_root("bad");
    let (_, base) = tiny_file(&root.0);

    let mut v = base.clone();
    set_image(&mut v, 2, one_pair());
    v["images"][2]["boxes"][1][2] = Value::Null; // NaN written by a careless writer
    let e = pred_error(&root.0, &v);
    assert!(e.contains("image 2") && e.contains("boxes[1][2]"), "{e}");

    let mut v = base.clone();
    set_image(&mut v, 0, one_pair());
    v["images"][0]["verb_scores"][0] = json!([0.1, 0.2]);
    let e = pred_error(&root.0, &v);
    assert!(
        e.contains("verb_scores[0]") && e.contains("num_verbs"),
        "{e}"
    );

    let mut v = base.clone();
    set_image(&mut v, 0, one_pair());
    v["images"][0]["verb_scores"][0][7] = Value::Null;
    assert!(pred_error(&root.0, &v).contains("verb_scores[0][7]"));

    let mut v = base.clone();
    set_image(&mut v, 1, one_pair());
    v["images"][1]["obj_ids"] = json!([4]);
    let e = pred_error(&root.0, &v);
    assert!(
        e.contains("obj_ids[0]") && e.contains("out of range"),
        "{e}"
    );

    let mut v = base.clone();
    set_image(&mut v, 1, one_pair());
    v["images"][1]["sub_ids"] = json!([-1]);
    assert!(pred_error(&root.0, &v).contains("negative"));

    let mut v = base.clone();
    set_image(&mut v, 1, one_pair());
    v["images"][1]["labels"] = json!([0, 80]);
    let e = pred_error(&root.0, &v);
    assert!(e.contains("labels[1]") && e.contains("out of range"), "{e}");

    let mut v = base.clone();
    set_image(&mut v, 1, one_pair());
    v["images"][1]["num_verbs"] = json!(29);
    v["images"][1]["verb_scores"] = json!([vec![0.0; 29]]);
    assert!(pred_error(&root.0, &v).contains("num_verbs is 29"));

    let mut v = base.clone();
    v["images"][3]["file_name"] = json!("HICO_test2015_99999999.jpg");
    let e = pred_error(&root.0, &v);
    assert!(
        e.contains("not in the hico test split") && e.contains("99999999"),
        "{e}"
    );

    let mut v = base.clone();
    v["images"].as_array_mut().unwrap().pop();
    let e = pred_error(&root.0, &v);
    assert!(e.contains("have no predictions"), "{e}");
    // ... unless absent images are asked to count as empty.
    let split = load_split(Dataset::Hico, &root.0).unwrap();
    let p = root.0.join("partial.json");
    write_json(&p, &v);
    let f = read_predictions_file(&p).unwrap();
    let preds = align_predictions(f, &p, &split, MissingImages::Empty).unwrap();
    assert_eq!(preds.len(), 40);

    let mut v = base.clone();
    let first = v["images"][0].clone();
    v["images"].as_array_mut().unwrap().push(first);
    assert!(pred_error(&root.0, &v).contains("same file name"));

    let mut v = base.clone();
    v["dataset"] = json!("oi");
    assert!(pred_error(&root.0, &v).contains("for oi"));

    let mut v = base.clone();
    v["format"] = json!("something-else");
    assert!(pred_error(&root.0, &v).contains("format"));

    let mut v = base.clone();
    v["images"][0]["verb_score"] = json!([]);
    assert!(pred_error(&root.0, &v).contains("unknown field"));

    // Not JSON at all / truncated.
    let split = load_split(Dataset::Hico, &root.0).unwrap();
    let p = root.0.join("trunc.json");
    std::fs::write(&p, b"{\"images\": [{\"file_name\": \"a").unwrap();
    let e = read_predictions(&p, &split).unwrap_err().to_string();
    assert!(
        e.contains("trunc.json") && e.contains("not a predictions file"),
        "{e}"
    );
    let e = read_predictions(&root.0.join("absent.json"), &split).unwrap_err();
    assert!(e.to_string().contains("absent.json"));
}

#[test]
fn writing_refuses_nan_and_is_atomic() {
    let t = Tmp::new("write");
    let p = t.0.join("out.json");
    let good = PredictionsFile {
        dataset: None,
        images: vec![ImagePredictions {
            file_name: "a.jpg".into(),
            image_id: None,
            predictions: PairPredictions {
                labels: vec![0, 1],
                boxes: vec![[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.4]],
                verb_scores: vec![0.1, f32::MIN_POSITIVE, 0.3],
                num_verbs: 3,
                sub_ids: vec![0],
                obj_ids: vec![1],
            },
        }],
    };
    write_predictions(&p, &good).unwrap();
    let before = std::fs::read(&p).unwrap();
    assert_eq!(read_predictions_file(&p).unwrap(), good);
    let mut bad = good.clone();
    bad.images[0].predictions.boxes[1][3] = f32::NAN;
    let e = write_predictions(&p, &bad).unwrap_err().to_string();
    assert!(e.contains("a.jpg") && e.contains("boxes[1][3]"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), before, "file untouched");
    let leftovers: Vec<_> = std::fs::read_dir(&t.0).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    // Writing into a folder that does not exist fails cleanly.
    assert!(write_predictions(&t.0.join("no/such/dir/x.json"), &good).is_err());
}

#[test]
fn f32_values_survive_the_json_round_trip_bit_exactly() {
    let t = Tmp::new("bits");
    let mut rng = rlip_train::eval::synth::Rng::new(99);
    let n = 5000;
    let scores: Vec<f32> = (0..n)
        .map(|i| match i % 4 {
            0 => f32::from_bits((rng.next_u64() as u32) & 0x3fff_ffff), // [0, 2)
            1 => rng.f32(),
            2 => rng.f32() * 1e-30,
            _ => (rng.f32() * 1e6).round() / 7.0,
        })
        .collect();
    let f = PredictionsFile {
        dataset: None,
        images: vec![ImagePredictions {
            file_name: "x".into(),
            image_id: Some(1),
            predictions: PairPredictions {
                labels: vec![0, 0],
                boxes: vec![[0.5, 1.25, 3.0e3, 4.1], [1.0 / 3.0, 2.0, 3.0, 4.0]],
                verb_scores: scores,
                num_verbs: n,
                sub_ids: vec![0],
                obj_ids: vec![1],
            },
        }],
    };
    let p = t.0.join("bits.json");
    write_predictions(&p, &f).unwrap();
    let back = read_predictions_file(&p).unwrap();
    let a = &f.images[0].predictions.verb_scores;
    let b = &back.images[0].predictions.verb_scores;
    assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(back, f);
}

#[test]
fn malformed_pickles_are_errors_not_panics() {
    let t = Tmp::new("pickle");
    let good = std::fs::read(golden("vcoco/vcoco_20img").join("vcoco_detections.pickle")).unwrap();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("garbage".into(), b"not a pickle at all".to_vec()),
        // A pickle that would import and call Python code.
        (
            "global".into(),
            b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.".to_vec(),
        ),
        // A pickle of the wrong structure (a dict, not a list).
        ("dict".into(), b"\x80\x02}q\x00.".to_vec()),
    ];
    for cut in [1, 2, 10, good.len() / 3, good.len() / 2, good.len() - 1] {
        cases.push((format!("truncated at {cut}"), good[..cut].to_vec()));
    }
    let mut rng = rlip_train::eval::synth::Rng::new(5);
    for k in 0..20 {
        let mut b = good.clone();
        for _ in 0..8 {
            let i = rng.below(b.len());
            b[i] = rng.next_u64() as u8;
        }
        cases.push((format!("corrupted {k}"), b));
    }
    for (what, bytes) in cases {
        let p = t.0.join("d.pickle");
        std::fs::write(&p, &bytes).unwrap();
        let r = std::panic::catch_unwind(|| load_vcoco_detections_pickle(&p));
        let r = r.unwrap_or_else(|_| panic!("{what}: the pickle reader panicked"));
        if what.starts_with("corrupted") {
            continue; // a corrupted byte may land in a float and still parse
        }
        let e = r.expect_err(&what).to_string();
        assert!(e.contains("d.pickle"), "{what}: {e}");
    }
}
