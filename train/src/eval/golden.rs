//! Golden-case runner: evaluates one case folder in the layout of `shared/golden/eval/` and
//! compares every number its `expected.json` holds (produced by the official RLIPv2 code).
//!
//! The kind of case is told by the files present ([`detect_case_kind`]):
//!
//! | kind | marker file | what is checked |
//! |---|---|---|
//! | HICO-DET | `test_hico.json` | rare / non-rare split, then per run (`without_nms`, `with_nms`): metrics, per-class counts and APs, kept lists, the printed metric line |
//! | V-COCO | `vcoco_test.json` or `test_vcoco.json` | `PostProcessHOI` on the raw arrays vs `preds_*.npy`, the `generate_vcoco_official.py` detections, official `vsrl_eval` (from our detections and from the pickle), the in-training evaluator |
//! | Open Images | `OI_SGG_test.json` | per run: every official metric, summary, per-class, recall sums, kept lists, printed lines, and the case's `diagnostic_NOT_official` numbers with the corrected phrase matching |
//! | post-processing | `hoi_raw_pred_obj_logits.npy` or `sgg_raw_pred_obj_logits.npy` | `PostProcessHOI` (plain, NF zero-shot) and `PostProcessSGG` outputs |
//!
//! Configuration comes from `expected.json → settings` (top-K, thresholds) and, for HICO-DET
//! zero-shot cases, the setting named in the case description (`UC-RF`, `UC-NF`, `UO`).
//!
//! Tolerances follow the golden README: 1e-9 absolute on HICO-DET, Open Images and in-training
//! V-COCO values; 1e-6 absolute on official `vsrl_eval` values; post-processing and detections
//! 1e-5 relative + 1e-9 absolute on scores and 1e-3 px on boxes; counts, labels, ids and kept
//! lists exactly.

use std::path::{Path, PathBuf};

use rlip_data::DataError;
use rlip_data::hico::{load_hoi_annotations, load_hoi_list};
use rlip_data::npy::{NpyArray, read_npy};
use rlip_data::oi::{load_oi_annotations, load_oi_categories};
use rlip_data::vcoco::{
    DetValue, VcocoDetection, load_coco_instances, load_hoia_annotations, load_split_ids,
    load_vcoco_detections_json, load_vcoco_detections_pickle, load_vsrl_annotations,
};
use serde::Serialize;
use serde_json::Value;

use super::hico::{
    Bucket, HicoEvalConfig, HicoSplit, ZeroShotSetting, evaluate_hico, hico_gt_from_annotations,
};
use super::oi::{OiCorrections, OiEvalConfig, evaluate_oi, oi_gt_from_annotations};
use super::postprocess::{PostProcessHoiConfig, RawOutputs, postprocess_hoi, postprocess_sgg};
use super::vcoco::{
    MISSING_CATEGORY_ID, VcocoApEntry, VcocoInTrainingOptions, VcocoOfficialGt,
    VcocoOfficialReport, VcocoScenario, evaluate_vcoco_in_training, evaluate_vcoco_official,
    vcoco_detections_from_predictions, vcoco_gt_from_annotations, vcoco_image_id_from_file_name,
};
use super::{
    CorrectMat, EvalError, KeptPrediction, PairPredictions, invalid, load_predictions_npy,
};

/// Absolute tolerance on HICO-DET, Open Images and in-training V-COCO values.
pub const TOL_EXACT_AP: f64 = 1e-9;
/// Absolute tolerance on official `vsrl_eval` values (float32 maths).
pub const TOL_VSRL: f64 = 1e-6;
/// Relative tolerance on post-processed scores.
pub const TOL_SCORE_REL: f64 = 1e-5;
/// Tolerance on post-processed boxes, in pixels.
pub const TOL_BOX_PX: f64 = 1e-3;

/// One compared value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricCheck {
    /// What was compared, e.g. `"with_nms mAP"` or `"without_nms class (0, 9, 75) ap"`.
    pub name: String,
    /// Our value (for exact comparisons of lists: the number of mismatching entries).
    pub got: f64,
    /// The expected value (for exact comparisons of lists: 0).
    pub expected: f64,
    /// Absolute tolerance.
    pub abs_tol: f64,
    /// Relative tolerance (on `|expected|`).
    pub rel_tol: f64,
    /// Whether this is a headline metric (printed even when it passes).
    pub headline: bool,
    /// Whether it passed.
    pub passed: bool,
    /// Details (first mismatch, how a setting was chosen, ...).
    pub note: Option<String>,
}

impl MetricCheck {
    /// `|got - expected|` (0 when both are NaN, infinite when only one is).
    pub fn abs_diff(&self) -> f64 {
        diff(self.got, self.expected)
    }
}

fn diff(a: f64, b: f64) -> f64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => 0.0,
        (false, false) => (a - b).abs(),
        _ => f64::INFINITY,
    }
}

/// What a golden case folder exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CaseKind {
    /// `hico_eval/*`.
    Hico,
    /// `vcoco/*`.
    Vcoco,
    /// `oi_sgg_eval/*`.
    Oi,
    /// `postprocess/*`.
    PostProcess,
}

/// Tells the kind of a case folder from the files present.
pub fn detect_case_kind(dir: &Path) -> Result<CaseKind, EvalError> {
    let has = |f: &str| dir.join(f).is_file();
    if has("test_hico.json") {
        Ok(CaseKind::Hico)
    } else if has("OI_SGG_test.json") {
        Ok(CaseKind::Oi)
    } else if has("vcoco_test.json") || has("test_vcoco.json") {
        Ok(CaseKind::Vcoco)
    } else if has("hoi_raw_pred_obj_logits.npy") || has("sgg_raw_pred_obj_logits.npy") {
        Ok(CaseKind::PostProcess)
    } else {
        Err(EvalError::MissingFile {
            path: dir.to_path_buf(),
            what: "golden case files (one of test_hico.json, OI_SGG_test.json, vcoco_test.json / test_vcoco.json, hoi_raw_pred_obj_logits.npy / sgg_raw_pred_obj_logits.npy)".into(),
        })
    }
}

/// The case folders under `root` (`root` itself if it is one): folders holding an
/// `expected.json`, up to three levels down, sorted.
pub fn find_cases(root: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if d.join("expected.json").is_file() {
            out.push(d.to_path_buf());
            return;
        }
        if depth == 0 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(d) else {
            return;
        };
        let mut subs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        for s in subs {
            walk(&s, depth - 1, out);
        }
    }
    let mut out = Vec::new();
    walk(root, 3, &mut out);
    out
}

/// Runs one golden case and returns every comparison. `Err` only when the inputs cannot be
/// read or the evaluators refuse them.
pub fn check_case(dir: &Path) -> Result<Vec<MetricCheck>, EvalError> {
    let kind = detect_case_kind(dir)?;
    let exp = load_json(&dir.join("expected.json"))?;
    let case = if dir.join("case.json").is_file() {
        load_json(&dir.join("case.json"))?
    } else {
        Value::Null
    };
    let mut c = Checks::default();
    match kind {
        CaseKind::Hico => check_hico(dir, &exp, &case, &mut c)?,
        CaseKind::Oi => check_oi(dir, &exp, &case, &mut c)?,
        CaseKind::Vcoco => check_vcoco(dir, &exp, &mut c)?,
        CaseKind::PostProcess => check_postprocess(dir, &exp, &mut c)?,
    }
    Ok(c.out)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn load_json(path: &Path) -> Result<Value, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| {
        EvalError::Data(DataError::Json {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// A JSON number, `null` = NaN.
fn num_of(v: &Value) -> Option<f64> {
    match v {
        Value::Null => Some(f64::NAN),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn arr(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[][..], Vec::as_slice)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    arr(v)
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

#[derive(Default)]
struct Checks {
    out: Vec<MetricCheck>,
}

impl Checks {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        name: String,
        got: f64,
        expected: f64,
        abs_tol: f64,
        rel_tol: f64,
        headline: bool,
        passed: bool,
        note: Option<String>,
    ) {
        self.out.push(MetricCheck {
            name,
            got,
            expected,
            abs_tol,
            rel_tol,
            headline,
            passed,
            note,
        });
    }

    /// A float against a JSON value (tolerance absolute + relative).
    fn num_rel(
        &mut self,
        name: impl Into<String>,
        got: f64,
        want: Option<&Value>,
        abs_tol: f64,
        rel_tol: f64,
        headline: bool,
    ) {
        let name = name.into();
        match want.map(|w| (w, num_of(w))) {
            None => self.push(
                name,
                got,
                f64::NAN,
                abs_tol,
                rel_tol,
                headline,
                false,
                Some("missing in expected.json".into()),
            ),
            Some((w, None)) => self.push(
                name,
                got,
                f64::NAN,
                abs_tol,
                rel_tol,
                headline,
                false,
                Some(format!("expected value {w} is not a number")),
            ),
            Some((_, Some(w))) => {
                let d = diff(got, w);
                let ok = d
                    <= abs_tol
                        + if w.is_finite() {
                            rel_tol * w.abs()
                        } else {
                            0.0
                        };
                self.push(name, got, w, abs_tol, rel_tol, headline, ok, None)
            }
        }
    }

    fn num(
        &mut self,
        name: impl Into<String>,
        got: f64,
        want: Option<&Value>,
        tol: f64,
        headline: bool,
    ) {
        self.num_rel(name, got, want, tol, 0.0, headline)
    }

    /// An integer that must match exactly.
    fn int(&mut self, name: impl Into<String>, got: usize, want: Option<&Value>) {
        let name = name.into();
        match want.and_then(Value::as_u64) {
            Some(w) => self.push(
                name,
                got as f64,
                w as f64,
                0.0,
                0.0,
                false,
                got as u64 == w,
                None,
            ),
            None => self.push(
                name,
                got as f64,
                f64::NAN,
                0.0,
                0.0,
                false,
                false,
                Some(format!("expected.json has no integer here ({want:?})")),
            ),
        }
    }

    /// Two counts computed here that must be equal.
    fn count(&mut self, name: impl Into<String>, got: usize, expected: usize) {
        self.push(
            name.into(),
            got as f64,
            expected as f64,
            0.0,
            0.0,
            false,
            got == expected,
            None,
        )
    }

    /// An exact comparison of a list: `mismatches` entries differ (0 passes).
    fn exact(&mut self, name: impl Into<String>, mismatches: usize, first: Option<String>) {
        self.push(
            name.into(),
            mismatches as f64,
            0.0,
            0.0,
            0.0,
            false,
            mismatches == 0,
            first,
        )
    }

    /// A largest deviation that must stay within `tol`.
    fn max_dev(&mut self, name: impl Into<String>, dev: f64, tol: f64, note: Option<String>) {
        self.push(name.into(), dev, 0.0, tol, 0.0, false, dev <= tol, note)
    }

    fn flag(&mut self, name: impl Into<String>, ok: bool, note: Option<String>) {
        self.exact(name, usize::from(!ok), note)
    }
}

fn kept_row_mismatch(got: &KeptPrediction, want: &Value) -> bool {
    let w = arr(Some(want));
    if w.len() != 4 {
        return true;
    }
    let ints = [0, 1, 2].map(|i| w[i].as_i64());
    let score = w[3].as_f64().map(|s| s as f32);
    ints != [
        Some(got.subject_id as i64),
        Some(got.object_id as i64),
        Some(got.verb as i64),
    ] || score != Some(got.score)
}

/// Compares kept lists image by image (`limit` rows of the expected list at most); returns the
/// number of images that differ and a description of the first.
fn kept_lists(got: &[&[KeptPrediction]], want: &[Value], limit: usize) -> (usize, Option<String>) {
    let mut bad = 0;
    let mut first = None;
    if got.len() != want.len() {
        return (
            got.len().abs_diff(want.len()).max(1),
            Some(format!("{} images, expected {}", got.len(), want.len())),
        );
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let w: Vec<&Value> = arr(Some(w)).iter().take(limit).collect();
        let row = if g.len() != w.len() {
            Some(format!("image {i}: {} rows, expected {}", g.len(), w.len()))
        } else {
            g.iter().zip(&w).enumerate().find_map(|(r, (gk, wk))| {
                kept_row_mismatch(gk, wk).then(|| {
                    format!(
                        "image {i} row {r}: got [{}, {}, {}, {}], expected {}",
                        gk.subject_id, gk.object_id, gk.verb, gk.score, wk
                    )
                })
            })
        };
        if let Some(m) = row {
            bad += 1;
            first.get_or_insert(m);
        }
    }
    (bad, first)
}

fn triplet_of(v: Option<&Value>) -> Option<(i64, i64, i64)> {
    let a = arr(v);
    if a.len() != 3 {
        return None;
    }
    Some((a[0].as_i64()?, a[1].as_i64()?, a[2].as_i64()?))
}

fn setting_f64(exp: &Value, key: &str, default: f64) -> f64 {
    exp.get("settings")
        .and_then(|s| s.get(key))
        .and_then(Value::as_f64)
        .unwrap_or(default)
}

/// Every line of `lines` must occur in `within`.
fn lines_contained(c: &mut Checks, name: impl Into<String>, lines: &[String], within: &[String]) {
    let missing: Vec<&String> = lines.iter().filter(|l| !within.contains(l)).collect();
    c.exact(
        name,
        missing.len(),
        missing.first().map(|l| format!("line not found: {l:?}")),
    );
}

// ---------------------------------------------------------------------------------------------
// HICO-DET
// ---------------------------------------------------------------------------------------------

/// The zero-shot setting a description names (`UC-RF`, `UC-NF`, `UO`), if any.
fn zero_shot_in_text(text: &str) -> Option<ZeroShotSetting> {
    let t = text.to_ascii_uppercase().replace('_', "-");
    if t.contains("UC-RF") || t.contains("UCRF") {
        return Some(ZeroShotSetting::UcRf);
    }
    if t.contains("UC-NF") || t.contains("UCNF") {
        return Some(ZeroShotSetting::UcNf);
    }
    if t.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == "UO")
    {
        return Some(ZeroShotSetting::Uo);
    }
    None
}

fn sorted_triplets(v: Option<&Value>) -> Option<Vec<(i64, i64, i64)>> {
    let mut t = arr(v)
        .iter()
        .map(|x| triplet_of(Some(x)))
        .collect::<Option<Vec<_>>>()?;
    t.sort();
    Some(t)
}

fn hico_buckets(dir: &Path, exp: &Value, case: &Value) -> Result<(HicoSplit, String), EvalError> {
    let mut text = String::new();
    for v in [
        exp.get("settings").and_then(|s| s.get("bucketing")),
        case.get("bucketing"),
        case.get("evaluator"),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(s) = v.as_str() {
            text.push_str(s);
            text.push('\n');
        }
    }
    let list = dir.join("hoi_list_new.json");
    let train = dir.join("trainval_hico.json");
    if let Some(z) = zero_shot_in_text(&text) {
        if !list.is_file() {
            return Err(EvalError::MissingFile {
                path: list,
                what: format!("600-class HOI list (the case is zero-shot {z:?})"),
            });
        }
        let s = HicoSplit::zero_shot(z, &load_hoi_list(&list)?)?;
        return Ok((s, format!("zero-shot {z:?}, named by the case description")));
    }
    if train.is_file() {
        let s = HicoSplit::from_training_counts(&load_hoi_annotations(&train)?)?;
        return Ok((s, "rare = < 10 instances in trainval_hico.json".into()));
    }
    if list.is_file() {
        let hoi = load_hoi_list(&list)?;
        let want = sorted_triplets(exp.get("rare_triplets"));
        for z in [
            ZeroShotSetting::UcRf,
            ZeroShotSetting::UcNf,
            ZeroShotSetting::Uo,
        ] {
            let s = HicoSplit::zero_shot(z, &hoi)?;
            let mut r = s.rare.clone();
            r.sort();
            if Some(r) == want {
                return Ok((
                    s,
                    format!(
                        "zero-shot {z:?}: not named by the case, the only setting whose unseen list matches rare_triplets"
                    ),
                ));
            }
        }
        return Err(invalid(format!(
            "{}: hoi_list_new.json but no zero-shot setting named (UC-RF, UC-NF, UO) and none matches rare_triplets",
            dir.display()
        )));
    }
    Err(EvalError::MissingFile {
        path: train,
        what: "trainval_hico.json or hoi_list_new.json (the rare / zero-shot buckets)".into(),
    })
}

fn check_hico(dir: &Path, exp: &Value, case: &Value, c: &mut Checks) -> Result<(), EvalError> {
    let anns = load_hoi_annotations(dir.join("test_hico.json"))?;
    let gts = hico_gt_from_annotations(&anns)?;
    let preds = load_predictions_npy(dir, "preds_")?;
    let mat = CorrectMat::load(dir.join("corre_hico.npy"))?;
    let (split, how) = hico_buckets(dir, exp, case)?;
    for (key, ours) in [
        ("rare_triplets", &split.rare),
        ("non_rare_triplets", &split.non_rare),
    ] {
        let mut ours = ours.clone();
        ours.sort();
        let want = sorted_triplets(exp.get(key));
        let ok = want.as_ref() == Some(&ours);
        let note = if ok {
            Some(how.clone())
        } else {
            Some(format!(
                "{how}; got {} triplets, expected {:?} entries",
                ours.len(),
                want.map(|w| w.len())
            ))
        };
        c.flag(key, ok, note);
    }
    let base = HicoEvalConfig {
        max_hois: setting_f64(exp, "max_hois", 100.0) as usize,
        overlap_iou: setting_f64(exp, "overlap_iou", 0.5),
        thres_nms: setting_f64(exp, "thres_nms", 0.7) as f32,
        nms_alpha: setting_f64(exp, "nms_alpha", 1.0) as f32,
        nms_beta: setting_f64(exp, "nms_beta", 0.5) as f32,
        ..HicoEvalConfig::default()
    };
    let Some(obj) = exp.as_object() else {
        return Err(invalid("expected.json is not an object"));
    };
    for (run, e) in obj {
        let use_nms = match run.as_str() {
            "without_nms" => false,
            "with_nms" => true,
            "rare_triplets" | "non_rare_triplets" | "settings" => continue,
            _ => {
                c.flag(
                    format!("{run}: run recognised"),
                    e.get("metrics").is_none(),
                    Some("expected.json has a run this checker does not know".into()),
                );
                continue;
            }
        };
        let r = evaluate_hico(
            &preds,
            &gts,
            &mat,
            &split,
            &HicoEvalConfig { use_nms, ..base },
        )?;
        let m = e.get("metrics");
        let g = |k: &str| m.and_then(|m| m.get(k));
        c.num(
            format!("{run} mAP"),
            r.metrics.map,
            g("mAP"),
            TOL_EXACT_AP,
            true,
        );
        c.num(
            format!("{run} mAP rare"),
            r.metrics.map_rare,
            g("mAP rare"),
            TOL_EXACT_AP,
            true,
        );
        c.num(
            format!("{run} mAP non-rare"),
            r.metrics.map_non_rare,
            g("mAP non-rare"),
            TOL_EXACT_AP,
            true,
        );
        c.num(
            format!("{run} mean max recall"),
            r.metrics.mean_max_recall,
            g("mean max recall"),
            TOL_EXACT_AP,
            true,
        );
        let pc = arr(e.get("per_class"));
        c.count(
            format!("{run} number of test classes"),
            r.per_class.len(),
            pc.len(),
        );
        for (gc, w) in r.per_class.iter().zip(pc) {
            let ctx = format!("{run} class {:?}", gc.triplet);
            let bucket = match gc.bucket {
                Bucket::Rare => "rare",
                Bucket::NonRare => "non_rare",
                Bucket::Neither => "neither",
            };
            let ok = triplet_of(w.get("triplet")) == Some(gc.triplet)
                && triplet_of(w.get("triplet_ids")) == Some(gc.triplet_ids)
                && w.get("bucket").and_then(Value::as_str) == Some(bucket);
            c.flag(
                format!("{ctx} identity"),
                ok,
                (!ok).then(|| {
                    format!(
                        "got {:?} ids {:?} {bucket}, expected {} {} {}",
                        gc.triplet,
                        gc.triplet_ids,
                        w.get("triplet").unwrap_or(&Value::Null),
                        w.get("triplet_ids").unwrap_or(&Value::Null),
                        w.get("bucket").unwrap_or(&Value::Null)
                    )
                }),
            );
            c.int(format!("{ctx} n_gt"), gc.n_gt, w.get("n_gt"));
            c.int(format!("{ctx} n_pred"), gc.n_pred, w.get("n_pred"));
            c.int(format!("{ctx} n_tp"), gc.n_tp, w.get("n_tp"));
            c.num(format!("{ctx} ap"), gc.ap, w.get("ap"), TOL_EXACT_AP, false);
            c.num(
                format!("{ctx} max_recall"),
                gc.max_recall,
                w.get("max_recall"),
                TOL_EXACT_AP,
                false,
            );
        }
        if let Some(k) = e.get("per_image_kept") {
            let got: Vec<&[KeptPrediction]> = r.per_image_kept.iter().map(Vec::as_slice).collect();
            let (bad, first) = kept_lists(&got, arr(Some(k)), usize::MAX);
            c.exact(
                format!("{run} per_image_kept (images differing)"),
                bad,
                first,
            );
        }
        if let Some(out) = e.get("stdout") {
            let stdout = strings(Some(out));
            lines_contained(
                c,
                format!("{run} printed metric line"),
                &[r.official_line()],
                &stdout,
            );
            let warn = stdout.iter().filter(|l| l.starts_with("Warning")).count();
            c.count(format!("{run} warnings printed"), r.warnings.len(), warn);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Open Images
// ---------------------------------------------------------------------------------------------

fn check_oi(dir: &Path, exp: &Value, case: &Value, c: &mut Checks) -> Result<(), EvalError> {
    let anns = load_oi_annotations(dir.join("OI_SGG_test.json"))?;
    let all = load_oi_categories(dir.join("categories_dict.json"))?;
    let evaluated = load_oi_categories(dir.join("OI_SGG_trainval_test_categories_dict.json"))?;
    let gts = oi_gt_from_annotations(&anns, &all, &evaluated)?;
    let preds = load_predictions_npy(dir, "preds_")?;
    let top_ks: Vec<usize> = match exp.get("settings").and_then(|s| s.get("topK")) {
        Some(v) => arr(Some(v))
            .iter()
            .filter_map(|k| k.as_u64().map(|k| k as usize))
            .collect(),
        None => vec![50, 100],
    };
    let base = OiEvalConfig {
        top_ks,
        overlap_iou: setting_f64(exp, "overlap_iou", 0.5),
        thres_nms: setting_f64(exp, "thres_nms", 0.7) as f32,
        nms_alpha: setting_f64(exp, "nms_alpha", 1.0) as f32,
        nms_beta: setting_f64(exp, "nms_beta", 0.5) as f32,
        thres_nms_phr: setting_f64(exp, "thres_nms_phr", 0.5) as f32,
        ..OiEvalConfig::default()
    };
    let Some(obj) = exp.as_object() else {
        return Err(invalid("expected.json is not an object"));
    };
    for (run, e) in obj {
        let use_nms = match run.as_str() {
            "with_nms" => true,
            "without_nms" => false,
            "settings" => continue,
            _ => {
                c.flag(
                    format!("{run}: run recognised"),
                    e.get("metrics").is_none(),
                    Some("expected.json has a run this checker does not know".into()),
                );
                continue;
            }
        };
        let cfg = OiEvalConfig {
            use_nms,
            ..base.clone()
        };
        let r = evaluate_oi(&preds, &gts, &cfg)?;
        let wm = e.get("metrics").and_then(Value::as_object);
        if let Some(wm) = wm {
            for (k, v) in wm {
                match r.metrics.get(k) {
                    Some(&got) => c.num(format!("{run} {k}"), got, Some(v), TOL_EXACT_AP, false),
                    None => c.flag(
                        format!("{run} {k}"),
                        false,
                        Some("we do not compute this metric".into()),
                    ),
                }
            }
            let extra: Vec<&String> = r.metrics.keys().filter(|k| !wm.contains_key(*k)).collect();
            c.exact(
                format!("{run} metric names"),
                extra.len(),
                extra
                    .first()
                    .map(|k| format!("we report {k:?}, the official code does not")),
            );
        }
        let summary = e.get("summary");
        let s = |k: &str| summary.and_then(|s| s.get(k));
        match r.summary {
            Some(rs) => {
                c.num(format!("{run} R@50"), rs.r50, s("R@50"), TOL_EXACT_AP, true);
                c.num(
                    format!("{run} wmAP_rel"),
                    rs.wmap_rel,
                    s("wmAP_rel"),
                    TOL_EXACT_AP,
                    true,
                );
                c.num(
                    format!("{run} wmAP_phr"),
                    rs.wmap_phr,
                    s("wmAP_phr"),
                    TOL_EXACT_AP,
                    true,
                );
                c.num(
                    format!("{run} score_wtd"),
                    rs.score_wtd,
                    s("score_wtd"),
                    TOL_EXACT_AP,
                    true,
                );
            }
            None => c.flag(
                format!("{run} summary"),
                summary.is_none(),
                Some("no summary: K = 50 and 100 are needed".into()),
            ),
        }
        let top100_kept = e.get("top100").and_then(|t| t.get("per_image_kept"));
        for t in &r.top_k {
            let key = format!("top{}", t.top_k);
            let Some(w) = e.get(&key) else {
                c.flag(
                    format!("{run} {key}"),
                    false,
                    Some("missing in expected.json".into()),
                );
                continue;
            };
            let pc = arr(w.get("per_class"));
            c.count(
                format!("{run} {key} number of test triplets"),
                t.per_class.len(),
                pc.len(),
            );
            for (g, wc) in t.per_class.iter().zip(pc) {
                let ctx = format!("{run} {key} {:?}", g.triplet);
                c.flag(
                    format!("{ctx} identity"),
                    triplet_of(wc.get("triplet")) == Some(g.triplet),
                    None,
                );
                c.int(format!("{ctx} n_gt"), g.n_gt, wc.get("n_gt"));
                for (mode, gm) in [("rel", &g.rel), ("phr", &g.phr)] {
                    let wm = wc.get(mode);
                    let f = |k: &str| wm.and_then(|x| x.get(k));
                    c.int(format!("{ctx} {mode} n_pred"), gm.n_pred, f("n_pred"));
                    c.int(format!("{ctx} {mode} n_tp"), gm.n_tp, f("n_tp"));
                    c.num(
                        format!("{ctx} {mode} ap"),
                        gm.ap,
                        f("ap"),
                        TOL_EXACT_AP,
                        false,
                    );
                    c.num(
                        format!("{ctx} {mode} max_recall"),
                        gm.max_recall,
                        f("max_recall"),
                        TOL_EXACT_AP,
                        false,
                    );
                }
            }
            let rc = w.get("recall_counts");
            let f = |k: &str| rc.and_then(|x| x.get(k));
            c.int(
                format!("{run} {key} rel_tp"),
                t.recall_counts.rel_tp,
                f("rel_tp"),
            );
            c.int(
                format!("{run} {key} rel_gt"),
                t.recall_counts.rel_gt,
                f("rel_gt"),
            );
            c.int(
                format!("{run} {key} phr_tp"),
                t.recall_counts.phr_tp,
                f("phr_tp"),
            );
            c.int(
                format!("{run} {key} phr_gt"),
                t.recall_counts.phr_gt,
                f("phr_gt"),
            );
            // A string instead of lists means "the first K rows of the top-100 list".
            let (kept, limit) = match w.get("per_image_kept") {
                Some(Value::String(_)) => (top100_kept, t.top_k),
                k => (k, usize::MAX),
            };
            if let Some(kept) = kept {
                let rel: Vec<&[KeptPrediction]> =
                    t.per_image_kept.iter().map(|k| k.rel.as_slice()).collect();
                let (bad, first) = kept_lists(&rel, arr(kept.get("rel")), limit);
                c.exact(
                    format!("{run} {key} kept relations (images differing)"),
                    bad,
                    first,
                );
                let phr = arr(kept.get("phrase_from_rel_index"));
                let mut bad = 0;
                let mut first = None;
                for (i, k) in t.per_image_kept.iter().enumerate() {
                    let want: Vec<usize> = arr(phr.get(i))
                        .iter()
                        .filter_map(|x| x.as_u64().map(|x| x as usize))
                        .filter(|&x| x < limit)
                        .collect();
                    if k.phrase_from_rel_index != want {
                        bad += 1;
                        first.get_or_insert(format!(
                            "image {i}: got {:?}, expected {want:?}",
                            k.phrase_from_rel_index
                        ));
                    }
                }
                if phr.len() != t.per_image_kept.len() {
                    bad += 1;
                }
                c.exact(
                    format!("{run} {key} kept phrases (images differing)"),
                    bad,
                    first,
                );
            }
        }
        if let Some(out) = e.get("stdout") {
            let shown = format!("{r}");
            let ours: Vec<String> = shown.lines().skip(1).take(3).map(str::to_string).collect();
            lines_contained(
                c,
                format!("{run} printed metric lines"),
                &ours,
                &strings(Some(out)),
            );
        }
        // The case's diagnostic numbers: the corrected phrase matching.
        if let Some(d) = case
            .get("diagnostic_NOT_official")
            .and_then(|d| d.get("values"))
            .and_then(|v| v.get(run))
        {
            let cfg_c = OiEvalConfig {
                corrections: OiCorrections {
                    sort_phrases_before_matching: true,
                    ..OiCorrections::default()
                },
                ..cfg.clone()
            };
            if let Some(rc) = evaluate_oi(&preds, &gts, &cfg_c)?.summary {
                let ctx = format!("{run} diagnostic (NOT official, sorted phrases)");
                c.num(
                    format!("{ctx} R@50"),
                    rc.r50,
                    d.get("R@50"),
                    TOL_EXACT_AP,
                    false,
                );
                c.num(
                    format!("{ctx} wmAP_rel"),
                    rc.wmap_rel,
                    d.get("wmAP_rel"),
                    TOL_EXACT_AP,
                    false,
                );
                c.num(
                    format!("{ctx} wmAP_phr"),
                    rc.wmap_phr,
                    d.get("wmAP_phr"),
                    TOL_EXACT_AP,
                    false,
                );
                c.num(
                    format!("{ctx} score_wtd"),
                    rc.score_wtd,
                    d.get("score_wtd"),
                    TOL_EXACT_AP,
                    false,
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Post-processing and predictions
// ---------------------------------------------------------------------------------------------

/// Predictions stored as JSON (`{labels, boxes, verb_scores, sub_ids, obj_ids, num_pairs}` per
/// image).
fn preds_from_json(v: &Value, num_verbs_hint: usize) -> Result<Vec<PairPredictions>, String> {
    arr(Some(v))
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let ints = |k: &str| -> Result<Vec<i64>, String> {
                arr(img.get(k))
                    .iter()
                    .map(|x| {
                        x.as_i64()
                            .ok_or_else(|| format!("image {i}: {k} holds {x}"))
                    })
                    .collect()
            };
            let boxes = arr(img.get("boxes"))
                .iter()
                .map(|b| {
                    let b = arr(Some(b));
                    if b.len() != 4 {
                        return Err(format!("image {i}: a box has {} values", b.len()));
                    }
                    let f = |c: usize| num_of(&b[c]).map(|x| x as f32);
                    Ok([f(0), f(1), f(2), f(3)])
                })
                .collect::<Result<Vec<_>, String>>()?
                .into_iter()
                .map(|b| {
                    b.iter()
                        .all(Option::is_some)
                        .then(|| b.map(|x| x.unwrap_or(f32::NAN)))
                        .ok_or_else(|| format!("image {i}: a box holds a non-number"))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let rows = arr(img.get("verb_scores"));
            let num_verbs = rows.first().map_or(num_verbs_hint, |r| arr(Some(r)).len());
            let mut verb_scores = Vec::new();
            for r in rows {
                for x in arr(Some(r)) {
                    verb_scores.push(
                        num_of(x).ok_or_else(|| format!("image {i}: a score is {x}"))? as f32,
                    );
                }
            }
            let ids = |k: &str| -> Result<Vec<usize>, String> {
                ints(k)?
                    .into_iter()
                    .map(|x| usize::try_from(x).map_err(|_| format!("image {i}: {k} holds {x}")))
                    .collect()
            };
            let p = PairPredictions {
                labels: ints("labels")?,
                boxes,
                verb_scores,
                num_verbs,
                sub_ids: ids("sub_ids")?,
                obj_ids: ids("obj_ids")?,
            };
            if let Some(n) = img.get("num_pairs").and_then(Value::as_u64)
                && n as usize != p.num_pairs()
            {
                return Err(format!(
                    "image {i}: num_pairs {n} but {} sub_ids",
                    p.num_pairs()
                ));
            }
            Ok(p)
        })
        .collect()
}

/// Compares post-processed predictions: labels and ids exactly, boxes within 1e-3 px, scores
/// within 1e-5 relative + 1e-9 absolute.
fn compare_preds(c: &mut Checks, what: &str, got: &[PairPredictions], want: &[PairPredictions]) {
    c.count(format!("{what}: images"), got.len(), want.len());
    let (mut ids_bad, mut ids_first) = (0usize, None);
    let mut box_dev = 0.0f64;
    let (mut sc_bad, mut sc_first, mut sc_dev) = (0usize, None, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.labels == w.labels
            && g.sub_ids == w.sub_ids
            && g.obj_ids == w.obj_ids
            && (g.num_verbs == w.num_verbs || g.num_pairs() == 0)
            && g.boxes.len() == w.boxes.len()
            && g.verb_scores.len() == w.verb_scores.len();
        if !same {
            ids_bad += 1;
            ids_first.get_or_insert(format!(
                "image {i}: labels / ids / shapes differ ({} vs {} pairs)",
                g.num_pairs(),
                w.num_pairs()
            ));
            continue;
        }
        for (a, b) in g.boxes.iter().flatten().zip(w.boxes.iter().flatten()) {
            box_dev = box_dev.max(diff(*a as f64, *b as f64));
        }
        for (k, (a, b)) in g.verb_scores.iter().zip(&w.verb_scores).enumerate() {
            let (a, b) = (*a as f64, *b as f64);
            let d = diff(a, b);
            sc_dev = sc_dev.max(d);
            if d > TOL_EXACT_AP + TOL_SCORE_REL * b.abs() {
                sc_bad += 1;
                sc_first.get_or_insert(format!("image {i} score {k}: {a} vs {b}"));
            }
        }
    }
    c.exact(
        format!("{what}: labels, ids and shapes (images differing)"),
        ids_bad,
        ids_first,
    );
    c.max_dev(
        format!("{what}: boxes, max abs deviation (px)"),
        box_dev,
        TOL_BOX_PX,
        None,
    );
    c.exact(
        format!("{what}: scores outside 1e-5 rel + 1e-9 abs"),
        sc_bad,
        Some(sc_first.unwrap_or_else(|| format!("max abs deviation {sc_dev:e}"))),
    );
}

fn npy(dir: &Path, name: &str) -> Result<NpyArray, EvalError> {
    Ok(read_npy(dir.join(name))?)
}

fn f32s<'a>(a: &'a NpyArray, dir: &Path, name: &str) -> Result<&'a [f32], EvalError> {
    a.as_f32().ok_or_else(|| {
        EvalError::Data(DataError::Invalid {
            path: dir.join(name),
            msg: "expected float32".into(),
        })
    })
}

fn dims3(a: &NpyArray, dir: &Path, name: &str) -> Result<[usize; 3], EvalError> {
    match a.shape.as_slice() {
        &[b, q, c] => Ok([b, q, c]),
        s => Err(EvalError::Data(DataError::Invalid {
            path: dir.join(name),
            msg: format!("expected a [B, Q, C] array, got shape {s:?}"),
        })),
    }
}

/// The raw head outputs of a golden case: `{prefix}pred_{obj,sub,verb}_logits.npy` and
/// `{prefix}pred_{sub,obj}_boxes.npy` (the subject logits are optional).
struct RawArrays {
    obj: NpyArray,
    sub: Option<NpyArray>,
    verb: NpyArray,
    sub_boxes: NpyArray,
    obj_boxes: NpyArray,
}

impl RawArrays {
    fn load(dir: &Path, prefix: &str) -> Result<Self, EvalError> {
        let f = |n: &str| npy(dir, &format!("{prefix}pred_{n}.npy"));
        let sub_name = format!("{prefix}pred_sub_logits.npy");
        Ok(RawArrays {
            obj: f("obj_logits")?,
            sub: if dir.join(&sub_name).is_file() {
                Some(npy(dir, &sub_name)?)
            } else {
                None
            },
            verb: f("verb_logits")?,
            sub_boxes: f("sub_boxes")?,
            obj_boxes: f("obj_boxes")?,
        })
    }

    fn outputs(&self, dir: &Path, prefix: &str) -> Result<RawOutputs<'_>, EvalError> {
        let n = |s: &str| format!("{prefix}pred_{s}.npy");
        let [b, q, c] = dims3(&self.obj, dir, &n("obj_logits"))?;
        let [_, _, v] = dims3(&self.verb, dir, &n("verb_logits"))?;
        let (sub_logits, num_sub) = match &self.sub {
            Some(s) => (
                Some(f32s(s, dir, &n("sub_logits"))?),
                dims3(s, dir, &n("sub_logits"))?[2],
            ),
            None => (None, 0),
        };
        Ok(RawOutputs {
            batch: b,
            queries: q,
            obj_logits: f32s(&self.obj, dir, &n("obj_logits"))?,
            num_obj_logits: c,
            sub_logits,
            num_sub_logits: num_sub,
            verb_logits: f32s(&self.verb, dir, &n("verb_logits"))?,
            num_verbs: v,
            sub_boxes: f32s(&self.sub_boxes, dir, &n("sub_boxes"))?,
            obj_boxes: f32s(&self.obj_boxes, dir, &n("obj_boxes"))?,
        })
    }
}

fn check_postprocess(dir: &Path, exp: &Value, c: &mut Checks) -> Result<(), EvalError> {
    let hw_a = npy(dir, "orig_size_hw.npy")?;
    let hw: Vec<[i64; 2]> = hw_a
        .to_i64_vec()
        .ok_or_else(|| {
            EvalError::Data(DataError::Invalid {
                path: dir.join("orig_size_hw.npy"),
                msg: "expected an integer [B, 2] array".into(),
            })
        })?
        .chunks(2)
        .map(|c| [c[0], c.get(1).copied().unwrap_or(0)])
        .collect();
    let Some(obj) = exp.as_object() else {
        return Err(invalid("expected.json is not an object"));
    };
    for (key, want) in obj {
        if key == "settings" {
            continue;
        }
        let subject = exp
            .get("settings")
            .and_then(|s| s.get(key))
            .and_then(|s| s.get("subject_category_id"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let (prefix, got) = match key.as_str() {
            "hoi" | "hoi_zero_shot_nf" => {
                let raw = RawArrays::load(dir, "hoi_raw_")?;
                let cfg = PostProcessHoiConfig {
                    subject_category_id: subject,
                    zero_shot_hoi_eval: key == "hoi_zero_shot_nf",
                };
                (
                    "hoi",
                    postprocess_hoi(&raw.outputs(dir, "hoi_raw_")?, &hw, &cfg)?,
                )
            }
            "sgg" => {
                let raw = RawArrays::load(dir, "sgg_raw_")?;
                ("sgg", postprocess_sgg(&raw.outputs(dir, "sgg_raw_")?, &hw)?)
            }
            _ => {
                c.flag(
                    format!("{key}: output recognised"),
                    false,
                    Some("expected.json holds an output this checker does not know".into()),
                );
                continue;
            }
        };
        let nv = got.first().map_or(0, |p| p.num_verbs);
        match preds_from_json(want, nv) {
            Ok(want) => {
                let start = c.out.len();
                compare_preds(c, key, &got, &want);
                for m in &mut c.out[start..] {
                    m.headline = true;
                }
            }
            Err(m) => c.flag(format!("{key} ({prefix} raw arrays)"), false, Some(m)),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// V-COCO
// ---------------------------------------------------------------------------------------------

fn compare_detections(c: &mut Checks, what: &str, got: &[VcocoDetection], want: &[VcocoDetection]) {
    c.count(format!("{what}: detections"), got.len(), want.len());
    let (mut keys_bad, mut keys_first) = (0usize, None);
    let mut box_dev = 0.0f64;
    let (mut nan_bad, mut nan_first) = (0usize, None);
    let (mut sc_bad, mut sc_first, mut sc_dev) = (0usize, None, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.image_id != w.image_id || !g.values.keys().eq(w.values.keys()) {
            keys_bad += 1;
            keys_first.get_or_insert(format!(
                "detection {i}: image {} vs {}, {} vs {} keys",
                g.image_id,
                w.image_id,
                g.values.len(),
                w.values.len()
            ));
            continue;
        }
        for k in 0..4 {
            box_dev = box_dev.max(diff(g.person_box[k], w.person_box[k]));
        }
        let mut score = |k: &str, a: f64, b: f64| {
            let d = diff(a, b);
            sc_dev = sc_dev.max(d);
            if d > TOL_EXACT_AP + TOL_SCORE_REL * b.abs() {
                sc_bad += 1;
                sc_first.get_or_insert(format!("detection {i} {k}: {a} vs {b}"));
            }
        };
        for (k, gv) in &g.values {
            match (gv, &w.values[k]) {
                (DetValue::Score(a), DetValue::Score(b)) => score(k, *a, *b),
                (DetValue::List(a), DetValue::List(b)) if a.len() == 5 && b.len() == 5 => {
                    for j in 0..4 {
                        let d = diff(a[j], b[j]);
                        if d.is_infinite() {
                            nan_bad += 1;
                            nan_first.get_or_insert(format!(
                                "detection {i} {k}: box {:?} vs {:?}",
                                &a[..4],
                                &b[..4]
                            ));
                        } else {
                            box_dev = box_dev.max(d);
                        }
                    }
                    score(k, a[4], b[4]);
                }
                _ => {
                    keys_bad += 1;
                    keys_first.get_or_insert(format!("detection {i} {k}: kinds differ"));
                }
            }
        }
    }
    c.exact(
        format!("{what}: image ids and keys (detections differing)"),
        keys_bad,
        keys_first,
    );
    c.max_dev(
        format!("{what}: boxes, max abs deviation (px)"),
        box_dev,
        TOL_BOX_PX,
        None,
    );
    c.exact(
        format!("{what}: NaN (missing-object) boxes differing"),
        nan_bad,
        nan_first,
    );
    c.exact(
        format!("{what}: scores outside 1e-5 rel + 1e-9 abs"),
        sc_bad,
        Some(sc_first.unwrap_or_else(|| format!("max abs deviation {sc_dev:e}"))),
    );
}

/// The per-entry rows of an official V-COCO table (agent actions, or one scenario's roles):
/// their count (`count_what`), then `ap`, `ap_float64`, `npos`, `n_det`, `n_tp` of each entry
/// against the expected object keyed by entry name.
fn check_ap_entries(
    c: &mut Checks,
    prefix: &str,
    count_what: &str,
    got: &[VcocoApEntry],
    want: Option<&Value>,
) {
    let want = want.and_then(Value::as_object);
    c.count(
        format!("{prefix} {count_what}"),
        got.len(),
        want.map_or(0, |w| w.len()),
    );
    for g in got {
        let w = want.and_then(|x| x.get(&g.name));
        let f = |k: &str| w.and_then(|x| x.get(k));
        let ctx = format!("{prefix} {}", g.name);
        c.num(format!("{ctx} ap"), g.ap, f("ap"), TOL_VSRL, false);
        c.num(
            format!("{ctx} ap_float64"),
            g.ap_float64,
            f("ap_float64"),
            TOL_VSRL,
            false,
        );
        c.int(format!("{ctx} npos"), g.npos, f("npos"));
        c.int(format!("{ctx} n_det"), g.n_det, f("n_det"));
        c.int(format!("{ctx} n_tp"), g.n_tp, f("n_tp"));
    }
}

fn check_scenario(c: &mut Checks, src: &str, name: &str, got: &VcocoScenario, off: &Value) {
    check_ap_entries(
        c,
        &format!("{src} {name}"),
        "number of roles",
        &got.roles,
        off.get(name),
    );
    c.num(
        format!("{src} {name}_average"),
        got.average,
        off.get(format!("{name}_average")),
        TOL_VSRL,
        true,
    );
    c.num(
        format!("{src} {name}_average_without_point"),
        got.average_without_point,
        off.get(format!("{name}_average_without_point")),
        TOL_VSRL,
        false,
    );
    let m = arr(off.get(format!("{name}_role_ap_matrix")));
    c.count(
        format!("{src} {name} matrix rows"),
        got.role_ap_matrix.len(),
        m.len(),
    );
    let mut worst = 0.0f64;
    let mut bad = 0;
    for (row, w) in got.role_ap_matrix.iter().zip(m) {
        for (r, g) in row.iter().enumerate() {
            let want = arr(Some(w)).get(r).and_then(num_of);
            let d = match want {
                Some(wv) => diff(g.unwrap_or(f64::NAN), wv),
                None => f64::INFINITY,
            };
            if d > TOL_VSRL {
                bad += 1;
            }
            worst = worst.max(d);
        }
    }
    c.exact(
        format!("{src} {name}_role_ap_matrix entries outside 1e-6"),
        bad,
        Some(format!("max abs deviation {worst:e}")),
    );
}

fn check_official(c: &mut Checks, src: &str, r: &VcocoOfficialReport, off: &Value) {
    check_ap_entries(
        c,
        &format!("{src} agent"),
        "actions",
        &r.agent,
        off.get("agent"),
    );
    c.num(
        format!("{src} agent_average"),
        r.agent_average,
        off.get("agent_average"),
        TOL_VSRL,
        true,
    );
    check_scenario(c, src, "scenario_1", &r.scenario_1, off);
    check_scenario(c, src, "scenario_2", &r.scenario_2, off);
    if let Some(p) = off.get("printed") {
        let shown = format!("{r}");
        let lines: Vec<String> = shown.lines().map(str::to_string).collect();
        // Every official "Average ..." line must appear in what we print.
        lines_contained(
            c,
            format!("{src} printed averages"),
            &strings(Some(p)),
            &lines,
        );
    }
}

fn check_vcoco(dir: &Path, exp: &Value, c: &mut Checks) -> Result<(), EvalError> {
    let has = |f: &str| dir.join(f).is_file();
    let missing = setting_f64(exp, "missing_category_id", MISSING_CATEGORY_ID as f64);
    c.flag(
        "missing_category_id is 80",
        missing == MISSING_CATEGORY_ID as f64,
        Some(format!("case uses {missing}")),
    );
    // Post-processing of the raw arrays.
    let sizes = if has("raw_orig_sizes_hw.json") {
        Some(load_json(&dir.join("raw_orig_sizes_hw.json"))?)
    } else {
        None
    };
    let mine = if has("raw_pred_obj_logits.npy") {
        let hw: Vec<[i64; 2]> = arr(sizes.as_ref().and_then(|s| s.get("orig_size_hw")))
            .iter()
            .map(|v| {
                let a = arr(Some(v));
                [
                    a.first().and_then(Value::as_i64).unwrap_or(0),
                    a.get(1).and_then(Value::as_i64).unwrap_or(0),
                ]
            })
            .collect();
        let raw = RawArrays::load(dir, "raw_")?;
        let subject = setting_f64(exp, "subject_category_id", 0.0) as i64;
        Some(postprocess_hoi(
            &raw.outputs(dir, "raw_")?,
            &hw,
            &PostProcessHoiConfig {
                subject_category_id: subject,
                zero_shot_hoi_eval: false,
            },
        )?)
    } else {
        None
    };
    let preds_npy = if has("preds_labels.npy") {
        Some(load_predictions_npy(dir, "preds_")?)
    } else {
        None
    };
    if let (Some(m), Some(p)) = (&mine, &preds_npy) {
        compare_preds(c, "PostProcessHOI(raw) vs preds_*.npy", m, p);
    }
    let hoia = if has("test_vcoco.json") {
        Some(load_hoia_annotations(dir.join("test_vcoco.json"))?)
    } else {
        None
    };
    let mat = if has("corre_vcoco.npy") {
        Some(CorrectMat::load(dir.join("corre_vcoco.npy"))?)
    } else {
        None
    };

    // Official evaluator.
    if let Some(off) = exp.get("official_vsrl_eval") {
        let vsrl = load_vsrl_annotations(dir.join("vcoco_test.json"))?;
        let coco = load_coco_instances(dir.join("instances_vcoco_all_2014.json"))?;
        let ids = load_split_ids(dir.join("vcoco_test.ids"))?;
        let gt = VcocoOfficialGt::new(&vsrl, &coco, &ids)?;
        let ovr = setting_f64(exp, "ovr_thresh", 0.5) as f32;
        let image_ids: Option<Vec<i64>> = match sizes.as_ref().and_then(|s| s.get("image_ids")) {
            Some(v) => Some(arr(Some(v)).iter().filter_map(Value::as_i64).collect()),
            None => hoia.as_ref().map(|h| {
                h.iter()
                    .map(|a| {
                        vcoco_image_id_from_file_name(&a.file_name)
                            .or(a.img_id)
                            .unwrap_or(-1)
                    })
                    .collect()
            }),
        };
        let ours = match (mine.as_ref().or(preds_npy.as_ref()), &image_ids, &mat) {
            (Some(p), Some(ids), Some(m)) => Some(vcoco_detections_from_predictions(p, ids, m)?),
            _ => None,
        };
        let reference = if has("vcoco_detections.json") {
            Some(load_vcoco_detections_json(
                dir.join("vcoco_detections.json"),
            )?)
        } else {
            None
        };
        let pickle = if has("vcoco_detections.pickle") {
            Some(load_vcoco_detections_pickle(
                dir.join("vcoco_detections.pickle"),
            )?)
        } else {
            None
        };
        if let (Some(j), Some(p)) = (&reference, &pickle) {
            compare_detections(c, "vcoco_detections.json vs .pickle", j, p);
        }
        if let (Some(o), Some(r)) = (&ours, reference.as_ref().or(pickle.as_ref())) {
            compare_detections(c, "generate_vcoco_official detections", o, r);
        }
        for (src, d) in [("ours", &ours), ("pickle", &pickle)] {
            if let Some(d) = d {
                let r = evaluate_vcoco_official(d, &gt, ovr)?;
                check_official(c, &format!("official ({src} detections)"), &r, off);
            }
        }
        c.flag(
            "official evaluator ran",
            ours.is_some() || pickle.is_some(),
            Some("no predictions and no detection pickle".into()),
        );
    }

    // In-training evaluator.
    if let Some(it) = exp.get("in_training_vcoco_eval") {
        let (Some(hoia), Some(mat), Some(preds)) =
            (&hoia, &mat, preds_npy.as_ref().or(mine.as_ref()))
        else {
            return Err(EvalError::MissingFile {
                path: dir.join("test_vcoco.json"),
                what: "test_vcoco.json, corre_vcoco.npy and predictions (preds_*.npy or raw_*.npy) for the in-training evaluator".into(),
            });
        };
        let gts = vcoco_gt_from_annotations(hoia)?;
        let opts = VcocoInTrainingOptions {
            max_hois: setting_f64(exp, "in_training_max_hois", 100.0) as usize,
            overlap_iou: setting_f64(exp, "in_training_overlap_iou", 0.5),
            ..VcocoInTrainingOptions::default()
        };
        let r = evaluate_vcoco_in_training(preds, &gts, mat, &opts)?;
        let m = it.get("metrics");
        c.num(
            "in-training mAP_all",
            r.map_all,
            m.and_then(|m| m.get("mAP_all")),
            TOL_EXACT_AP,
            true,
        );
        c.num(
            "in-training mAP_thesis",
            r.map_thesis,
            m.and_then(|m| m.get("mAP_thesis")),
            TOL_EXACT_AP,
            true,
        );
        let pc = arr(it.get("per_class"));
        c.count("in-training number of classes", r.per_class.len(), pc.len());
        for (g, w) in r.per_class.iter().zip(pc) {
            let ctx = format!("in-training {}", g.name);
            c.flag(
                format!("{ctx} identity"),
                w.get("verb_class").and_then(Value::as_u64) == Some(g.verb_class as u64)
                    && w.get("name").and_then(Value::as_str) == Some(g.name.as_str()),
                None,
            );
            c.int(format!("{ctx} n_gt"), g.n_gt, w.get("n_gt"));
            c.int(format!("{ctx} n_pred"), g.n_pred, w.get("n_pred"));
            c.int(format!("{ctx} n_tp"), g.n_tp, w.get("n_tp"));
            c.num(format!("{ctx} ap"), g.ap, w.get("ap"), TOL_EXACT_AP, false);
        }
        if let Some(wr) = it.get("returned").and_then(Value::as_object) {
            let returned = r.returned();
            c.count("in-training returned keys", returned.len(), wr.len());
            for (k, v) in wr {
                match returned.get(k) {
                    Some(&g) => c.num(
                        format!("in-training returned {k}"),
                        g,
                        Some(v),
                        TOL_EXACT_AP,
                        false,
                    ),
                    None => c.flag(
                        format!("in-training returned {k}"),
                        false,
                        Some("not returned by us".into()),
                    ),
                }
            }
        }
        if let Some(k) = it.get("per_image_kept") {
            let got: Vec<&[KeptPrediction]> = r.per_image_kept.iter().map(Vec::as_slice).collect();
            let (bad, first) = kept_lists(&got, arr(Some(k)), usize::MAX);
            c.exact("in-training per_image_kept (images differing)", bad, first);
        }
        if let Some(out) = it.get("stdout") {
            let shown = format!("{r}");
            let ours: Vec<String> = shown.lines().map(str::to_string).collect();
            lines_contained(c, "in-training printed lines", &ours, &strings(Some(out)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_shot_names() {
        assert_eq!(
            zero_shot_in_text("UC-RF unseen (rare)"),
            Some(ZeroShotSetting::UcRf)
        );
        assert_eq!(zero_shot_in_text("uc_nf"), Some(ZeroShotSetting::UcNf));
        assert_eq!(
            zero_shot_in_text("UO, short for unseen objects"),
            Some(ZeroShotSetting::Uo)
        );
        assert_eq!(zero_shot_in_text("rare = <10 instances; COUNT"), None);
    }

    #[test]
    fn check_pass_rules() {
        let mut c = Checks::default();
        c.num("a", 1.0, Some(&Value::from(1.0 + 1e-10)), 1e-9, true);
        c.num("b", 1.0, Some(&Value::from(1.1)), 1e-9, true);
        c.num("c", f64::NAN, Some(&Value::Null), 1e-9, true);
        c.num("d", 1.0, None, 1e-9, true);
        c.num("e", f64::NAN, None, 1e-9, true);
        let passed: Vec<bool> = c.out.iter().map(|m| m.passed).collect();
        assert_eq!(passed, [true, false, true, false, false]);
    }
}
