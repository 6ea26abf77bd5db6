//! Bounded mutation fuzzing of every file reader: valid small fixtures are truncated, have bytes
//! flipped, spans deleted or repeated, and numbers or strings replaced by hostile values (NaN,
//! negative, huge, wrong type), or — for JSON — valid JSON whose nodes are replaced, removed or
//! repeated. Each reader must return `Ok` or a `DataError` whose message
//! names the file — never panic. Deterministic (seeded), a few hundred cases per reader.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rlip_data::DataError;
use rlip_data::rng::Rng;
use serde_json::{Value, json};

type Reader = fn(&Path) -> Result<(), DataError>;

const CASES: usize = 300;

const HICO: &str = r#"[{"file_name": "HICO_train2015_00000001.jpg", "img_id": 1,
  "annotations": [{"bbox": [207, 32, 426, 299], "category_id": 1},
                  {"bbox": [58.5, 97.25, 571.0, 404.0], "category_id": 4}],
  "hoi_annotation": [{"subject_id": 0, "object_id": 1, "category_id": 73, "hoi_category_id": 153},
                     {"subject_id": 0, "object_id": 1, "category_id": 77, "hoi_category_id": 154}]},
 {"file_name": "b.jpg", "annotations": [], "hoi_annotation": []}]"#;

const HOI_LIST: &str = r#"[{"id": "001", "object_cat": 5, "verb_id": 5, "object_name": "airplane", "verb_name": "board"},
 {"id": "002", "object_cat": 5, "verb_id": 18}]"#;

const VCOCO_HOIA: &str = r#"[{"file_name": "COCO_val2014_000000000042.jpg",
  "annotations": [{"bbox": [1.0, 2.0, 30.0, 40.0], "category_id": 1}, {"bbox": [3, 4, 50, 60], "category_id": 37}],
  "hoi_annotation": [{"subject_id": 0, "object_id": -1, "category_id": 1},
                     {"subject_id": 0, "object_id": 1, "category_id": 15}]}]"#;

const VSRL: &str = r#"[{"image_id": [42, 42, 73], "ann_id": [5, 6, 7], "role_object_id": [5, 6, 7, 9, 0, 0],
  "label": [1, 0, 0], "action_name": "hold", "role_name": ["agent", "obj"], "include": [[], []]},
 {"image_id": [42, 42, 73], "ann_id": [5, 6, 7], "role_object_id": [5, 6, 7],
  "label": [0, 1, 1], "action_name": "stand", "role_name": ["agent"], "include": [[]]}]"#;

const COCO: &str = r#"{"images": [{"id": 42, "width": 640, "height": 480, "file_name": "COCO_val2014_000000000042.jpg"}],
 "annotations": [{"id": 5, "image_id": 42, "category_id": 1, "bbox": [1.5, 2, 30, 40], "area": 1200.0, "iscrowd": 0},
                 {"id": 9, "image_id": 42, "category_id": 37, "bbox": [3, 4, 5, 6], "area": 30, "iscrowd": 1, "ignore": 0}],
 "categories": [{"id": 1, "name": "person"}, {"id": 37, "name": "sports ball"}]}"#;

const DETECTIONS: &str = r#"[{"image_id": 42, "person_box": [1.0, 2.0, 30.0, 40.0], "hold_agent": 0.5,
  "hold_obj": [3.0, 4.0, 50.0, 60.0, 0.25], "stand_agent": 0.9, "look_obj": [null, null, null, null, 0.1]}]"#;

const OI: &str = r#"[{"file_name": "ca5267a6336b71ea.jpg",
  "annotations": [{"bbox": [10.0, 20.0, 30.0, 40.0], "category_id": 69}, {"bbox": [1, 2, 3, 4], "category_id": 5}],
  "rel_annotations": [{"subject_id": 0, "object_id": 1, "category_id": 3}]}]"#;

const OI_CATS: &str = r#"{"obj": ["Man", "Woman", "Guitar"], "rel": ["at", "holds", "plays"]}"#;

const SCENE_GRAPHS: &str = r#"[{"image_id": 1, "objects": [
   {"object_id": 10, "x": 5, "y": 6, "w": 30, "h": 40, "names": "man", "synsets": ["man.n.01"]},
   {"object_id": 11, "x": 50.5, "y": 60, "w": 10, "h": 12, "names": "horse"}],
  "relationships": [{"relationship_id": 7, "predicate": "riding", "subject_id": 10, "object_id": 11}]},
 {"image_id": "n102412", "file_name": "n102412.jpg", "width": 64, "height": 48, "objects": [], "relationships": []}]"#;

const RAW_SCENE_GRAPHS: &str = r#"[{"image_id": 1, "objects": [
   {"object_id": 10, "x": 5, "y": 6, "w": 30, "h": 40, "names": ["Man", "person"]},
   {"object_id": 11, "x": 50, "y": 60, "w": 10, "h": 12, "names": ["horse"]}],
  "relationships": [{"relationship_id": 7, "predicate": "Riding", "subject_id": 10, "object_id": 11},
                    {"relationship_id": 8, "predicate": "riding", "subject_id": 10, "object_id": 11}]}]"#;

const KEEP_NAMES: &str = r#"{"relationship_names": ["on", "has"], "object_names": ["man", "shirt", "tree"],
 "relationship_freq": {"on": 10, "has": 4}, "object_freq": {"man": 9, "shirt": 5, "tree": 2}}"#;

const PSEUDO: &str = r#"[{"image_id": 139, "dataset": "coco2017", "data_split": "train2017",
  "objects": [{"object_id": 1, "x": 1.5, "y": 2.5, "w": 100.0, "h": 50.0, "names": "person"},
              {"object_id": 2, "x": 3.0, "y": 4.0, "w": 20.0, "h": 10.0, "names": "cup"}],
  "relationships": [{"predicate": "holding", "subject_id": 1, "object_id": 2, "confidence": 0.73},
                    {"predicate": "near", "subject_id": 2, "object_id": 1, "confidence": 0.11}]},
 {"image_id": 7, "dataset": "o365", "data_split": "train", "objects": [], "relationships": []}]"#;

const O365_PATHS: &str =
    r#"{"7": "train/patch0/objects365_v1_00000007.jpg", "139": "val/patch3/x.jpg"}"#;

const LABELS: &str =
    r#"{"objects": ["person", "ball", "box"], "relations": ["hold", "kick", "look at"]}"#;

const SPLIT_IDS: &str = "42\n73  # comment\n\n1.0e2\n";

/// `pickle.dumps(dets, p)` (Python 3) of a two-detection list as `generate_vcoco_official.py`
/// writes it, protocols 2 and 0.
const DET_PICKLE_P2: &[u8] = b"\x80\x02]q\x00(}q\x01(X\x08\x00\x00\x00image_idq\x02K\x01X\n\x00\x00\x00person_boxq\x03]q\x04(G?\xf0\x00\x00\x00\x00\x00\x00G@\x00\x00\x00\x00\x00\x00\x00G@\x08\x00\x00\x00\x00\x00\x00G@\x10\x00\x00\x00\x00\x00\x00eX\n\x00\x00\x00hold_agentq\x05G?\xe0\x00\x00\x00\x00\x00\x00X\x08\x00\x00\x00hold_objq\x06]q\x07(G?\xf0\x00\x00\x00\x00\x00\x00G@\x00\x00\x00\x00\x00\x00\x00G@\x08\x00\x00\x00\x00\x00\x00G@\x10\x00\x00\x00\x00\x00\x00G?\xec\xcc\xcc\xcc\xcc\xcc\xcdeX\x0b\x00\x00\x00stand_agentq\x08K\x01u}q\x09(h\x02K\x02h\x03(K\x00K\x00K\x05K\x05tq\nh\x06]q\x0b(G\x7f\xf8\x00\x00\x00\x00\x00\x00G\x7f\xf8\x00\x00\x00\x00\x00\x00G\x7f\xf8\x00\x00\x00\x00\x00\x00G\x7f\xf8\x00\x00\x00\x00\x00\x00G?\xb9\x99\x99\x99\x99\x99\x9aeue.";
const DET_PICKLE_P0: &[u8] = b"(lp0\n(dp1\nVimage_id\np2\nI1\nsVperson_box\np3\n(lp4\nF1.0\naF2.0\naF3.0\naF4.0\nasVhold_agent\np5\nF0.5\nsVhold_obj\np6\n(lp7\nF1.0\naF2.0\naF3.0\naF4.0\naF0.9\nasVstand_agent\np8\nI1\nsa(dp9\ng2\nI2\nsg3\n(I0\nI0\nI5\nI5\ntp10\nsg6\n(lp11\nFnan\naFnan\naFnan\naFnan\naF0.1\nasa.";

/// `{0: np.ones((1, 3)), 1: ...}` written by Python 2.7 / numpy 1.16, protocol 2 (the layout of
/// V-COCO's `prior.pickle`).
const PRIOR_P2: &[u8] = b"\x80\x02}q\x00(K\x00cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85q\x03U\x01bq\x04\x87q\x05Rq\x06(K\x01K\x01K\x03\x86q\x07cnumpy\ndtype\nq\x08U\x02f8q\x09K\x00K\x01\x87q\nRq\x0b(K\x03U\x01<q\x0cNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0db\x89U\x18\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00\xf0?q\x0etq\x0fbK\x01h\x01h\x02K\x00\x85q\x10h\x04\x87q\x11Rq\x12(K\x01K\x01K\x03\x86q\x13h\x0b\x89U\x18\x00\x00\x00\x00\x00\x00\xf0?\x00\x00\x00\x00\x00\x00\xe0?\x00\x00\x00\x00\x00\x00\xf0?q\x14tq\x15bu.";
const PRIOR_P0: &[u8] = b"(dp0\nI0\ncnumpy.core.multiarray\n_reconstruct\np1\n(cnumpy\nndarray\np2\n(I0\ntp3\nS'b'\np4\ntp5\nRp6\n(I1\n(I1\nI3\ntp7\ncnumpy\ndtype\np8\n(S'f8'\np9\nI0\nI1\ntp10\nRp11\n(I3\nS'<'\np12\nNNNI-1\nI-1\nI0\ntp13\nbI00\nS'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\xf0?\\x00\\x00\\x00\\x00\\x00\\x00\\xf0?'\np14\ntp15\nbs.";

fn npy(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out.extend(body);
    out
}

/// Values that replace a number or a string of a fixture.
const HOSTILE: &[&str] = &[
    "NaN",
    "-1",
    "-0",
    "-0.5",
    "1e400",
    "-1e400",
    "1e308",
    "18446744073709551616",
    "-9223372036854775809",
    "9223372036854775807",
    "4294967296",
    "0.5",
    "\"s\"",
    "\"\"",
    "null",
    "[]",
    "{}",
    "[[]]",
    "true",
    "9007199254740993",
    "\"\\ud800\"",
    "1.5e-400",
    "\"é\"",
];

/// One random mutation of `data`, described for the failure message.
fn mutate(data: &mut Vec<u8>, rng: &mut Rng) -> String {
    let n = data.len().max(1);
    match rng.below(7) {
        0 => {
            let at = rng.below(n);
            data.truncate(at);
            format!("truncate at {at}")
        }
        1 => {
            let at = rng.below(n).min(data.len().saturating_sub(1));
            if let Some(b) = data.get_mut(at) {
                *b ^= 1 << rng.below(8);
            }
            format!("flip a bit of byte {at}")
        }
        2 => {
            let at = rng.below(n).min(data.len());
            let b = rng.pick(b"{}[]\",:0123456789eE.+-nN \\\xff\x00");
            data.insert(at, b);
            format!("insert {b:#04x} at {at}")
        }
        3 => {
            let (a, len) = (rng.below(n).min(data.len()), rng.below(16));
            let end = (a + len).min(data.len());
            data.drain(a..end);
            format!("delete {a}..{end}")
        }
        4 => {
            let (a, len) = (rng.below(n).min(data.len()), 1 + rng.below(64));
            let end = (a + len).min(data.len());
            let span = data[a..end].to_vec();
            data.splice(end..end, span);
            format!("repeat {a}..{end}")
        }
        _ => replace_token(data, rng),
    }
}

/// Replaces a random number (a digit run with sign, dot and exponent) or quoted string (either
/// quote) with a
/// hostile value.
fn replace_token(data: &mut Vec<u8>, rng: &mut Rng) -> String {
    let is_num = |b: u8| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E');
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let start = i;
        if data[i].is_ascii_digit() || data[i] == b'-' {
            while i < data.len() && is_num(data[i]) {
                i += 1;
            }
            tokens.push((start, i));
        } else if data[i] == b'"' || data[i] == b'\'' {
            let q = data[i];
            i += 1;
            while i < data.len() && data[i] != q {
                i += 1;
            }
            i += 1;
            tokens.push((start, i.min(data.len())));
        } else {
            i += 1;
        }
    }
    if tokens.is_empty() {
        return "no token to replace".into();
    }
    let (a, b) = tokens[rng.below(tokens.len())];
    let v = rng.pick(HOSTILE);
    data.splice(a..b, v.bytes());
    format!("replace bytes {a}..{b} with {v}")
}

/// Valid-JSON mutations: a random node replaced by a hostile value, an object key or array
/// element removed, an array element repeated, or an unknown key added.
fn mutate_json(v: &mut Value, rng: &mut Rng) -> String {
    fn paths(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| paths(x, format!("{at}/{i}"), out)),
            Value::Object(m) => m.iter().for_each(|(k, x)| {
                paths(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                )
            }),
            _ => {}
        }
        out.push(at);
    }
    let hostile = [
        json!(-1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e308),
        json!(-1e308),
        json!(0.5),
        json!(-0.0),
        json!(4294967296u64),
        json!(1e15),
        json!("s"),
        json!(""),
        json!("é\u{0}"),
        Value::Null,
        json!([]),
        json!({}),
        json!([[]]),
        json!(true),
    ];
    let mut all = Vec::new();
    paths(v, String::new(), &mut all);
    let at = all[rng.below(all.len())].clone();
    let Some(node) = v.pointer_mut(&at) else {
        return "no node".into();
    };
    match (rng.below(4), node) {
        (1, Value::Object(m)) if !m.is_empty() => {
            let k = m
                .keys()
                .nth(rng.below(m.len()))
                .cloned()
                .unwrap_or_default();
            m.remove(&k);
            format!("remove key {at}/{k}")
        }
        (1, Value::Array(a)) if !a.is_empty() => {
            let i = rng.below(a.len());
            a.remove(i);
            format!("remove element {at}/{i}")
        }
        (2, Value::Array(a)) if !a.is_empty() => {
            let i = rng.below(a.len());
            a.push(a[i].clone());
            format!("repeat element {at}/{i}")
        }
        (3, Value::Object(m)) => {
            m.insert("extra".into(), hostile[rng.below(hostile.len())].clone());
            format!("add key {at}/extra")
        }
        (_, node) => {
            let h = hostile[rng.below(hostile.len())].clone();
            let d = format!("set {at} = {h}");
            *node = h;
            d
        }
    }
}

fn readers() -> Vec<(&'static str, Vec<u8>, Reader)> {
    use rlip_data::{
        hico, labels, npy as n, oi, pickle, pretrain, pseudo, vcoco, vcoco_convert, vg,
    };
    vec![
        ("hico.json", HICO.into(), |p| {
            hico::load_hoi_annotations(p).map(drop)
        }),
        ("hoi_list.json", HOI_LIST.into(), |p| {
            hico::load_hoi_list(p).map(drop)
        }),
        ("vcoco_hoia.json", VCOCO_HOIA.into(), |p| {
            vcoco::load_hoia_annotations(p).map(drop)
        }),
        ("vsrl.json", VSRL.into(), |p| {
            vcoco::load_vsrl_annotations(p).map(drop)
        }),
        ("instances.json", COCO.into(), |p| {
            vcoco::load_coco_instances(p).map(drop)
        }),
        ("detections.json", DETECTIONS.into(), |p| {
            vcoco::load_vcoco_detections_json(p).map(drop)
        }),
        ("split.ids", SPLIT_IDS.into(), |p| {
            vcoco::load_split_ids(p).map(drop)
        }),
        ("oi.json", OI.into(), |p| {
            oi::load_oi_annotations(p).map(drop)
        }),
        ("oi_cats.json", OI_CATS.into(), |p| {
            oi::load_oi_categories(p).map(drop)
        }),
        ("scene_graphs.json", SCENE_GRAPHS.into(), |p| {
            vg::load_scene_graphs(p).map(drop)
        }),
        ("raw_scene_graphs.json", RAW_SCENE_GRAPHS.into(), |p| {
            let raw = vg::load_raw_scene_graphs(p)?;
            // The preprocessing itself on whatever parsed.
            let cfg = vg::PreprocessConfig {
                min_count: 1,
                ..Default::default()
            };
            vg::preprocess(raw, &cfg, &Default::default()).map_err(|m| DataError::Invalid {
                path: p.to_path_buf(),
                msg: m,
            })?;
            Ok(())
        }),
        ("keep_names.json", KEEP_NAMES.into(), |p| {
            vg::load_keep_names(p).map(drop)
        }),
        ("vocabulary.json", KEEP_NAMES.into(), |p| {
            pretrain::Vocabulary::load(p).map(drop)
        }),
        ("pseudo.json", PSEUDO.into(), |p| {
            pseudo::load_pseudo_relations(p, 0.2).map(drop)
        }),
        ("o365_paths.json", O365_PATHS.into(), |p| {
            pseudo::O365FilePaths::load(p).map(drop)
        }),
        ("labels.json", LABELS.into(), |p| {
            labels::LabelSet::from_file(p).map(drop)
        }),
        ("f8.npy", npy("<f8", "(2, 3)", &[0u8; 48]), |p| {
            n::read_npy(p).map(drop)
        }),
        (
            "i4.npy",
            npy("<i4", "(3,)", &[1, 0, 0, 0, 255, 255, 255, 255, 7, 0, 0, 0]),
            |p| n::read_npy(p).map(drop),
        ),
        ("b1.npy", npy("|b1", "(2, 2)", &[0, 1, 1, 0]), |p| {
            n::read_npy(p).map(drop)
        }),
        ("det_p2.pkl", DET_PICKLE_P2.into(), |p| {
            vcoco::load_vcoco_detections_pickle(p).map(drop)
        }),
        ("det_p0.pkl", DET_PICKLE_P0.into(), |p| {
            pickle::read_pickle(p).map(drop)
        }),
        ("prior_p2.pickle", PRIOR_P2.into(), |p| {
            vcoco_convert::load_prior(p).map(drop)
        }),
        ("prior_p0.pickle", PRIOR_P0.into(), |p| {
            vcoco_convert::load_prior(p).map(drop)
        }),
    ]
}

fn fuzz_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("rlip-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn fixtures_are_valid() {
    let dir = fuzz_dir();
    for (name, data, read) in readers() {
        let p = dir.join(format!("valid-{name}"));
        std::fs::write(&p, &data).unwrap();
        read(&p).unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    }
}

/// Regressions found by the fuzzer, and the protocol-0 strings the pickle reader now reads.
#[test]
fn fixed_reader_bugs_stay_fixed() {
    use rlip_data::vcoco::load_vcoco_detections_pickle;
    let dir = fuzz_dir();
    // A non-ASCII .npy dtype panicked (byte slicing inside a character).
    let p = dir.join("regression-descr.npy");
    std::fs::write(&p, npy("é8", "(1,)", &[0; 8])).unwrap();
    let e = rlip_data::npy::read_npy(&p).unwrap_err().to_string();
    assert!(
        e.contains("regression-descr.npy") && e.contains("unsupported dtype"),
        "{e}"
    );
    // A protocol-0 pickle (str keys as UNICODE 'V' lines) was refused; it reads as protocol 2.
    let (p0, p2) = (dir.join("regression-p0.pkl"), dir.join("regression-p2.pkl"));
    std::fs::write(&p0, DET_PICKLE_P0).unwrap();
    std::fs::write(&p2, DET_PICKLE_P2).unwrap();
    let (a, b) = (
        load_vcoco_detections_pickle(&p0).unwrap(),
        load_vcoco_detections_pickle(&p2).unwrap(),
    );
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(a[1].person_box, [0.0, 0.0, 5.0, 5.0]);
}

#[test]
fn mutated_files_give_ok_or_an_error_naming_the_file() {
    let dir = fuzz_dir();
    let mut failures = Vec::new();
    for (ri, (name, fixture, read)) in readers().into_iter().enumerate() {
        let path = dir.join(format!("fuzz-{name}"));
        let shown = path.to_string_lossy().into_owned();
        let mut rng = Rng::new(0xF0_22 + ri as u64);
        let (mut oks, mut errs) = (0, 0);
        for case in 0..CASES {
            let mut data = fixture.clone();
            let n = 1 + rng.below(3);
            let steps: Vec<String> = match serde_json::from_slice::<Value>(&fixture) {
                Ok(mut v) if rng.chance(0.5) => {
                    let s = (0..n).map(|_| mutate_json(&mut v, &mut rng)).collect();
                    data = serde_json::to_vec(&v).unwrap();
                    s
                }
                _ => (0..n).map(|_| mutate(&mut data, &mut rng)).collect(),
            };
            std::fs::write(&path, &data).unwrap();
            let input = || {
                let s = String::from_utf8_lossy(&data);
                format!(
                    "{name} case {case} ({}): {:?}",
                    steps.join(", "),
                    &s[..s.len().min(1500)]
                )
            };
            match catch_unwind(AssertUnwindSafe(|| read(&path))) {
                Ok(Ok(())) => oks += 1,
                Ok(Err(e)) => {
                    errs += 1;
                    let msg = e.to_string();
                    if !msg.contains(&shown) {
                        failures.push(format!(
                            "error does not name the file: {msg}\n  input {}",
                            input()
                        ));
                    }
                }
                Err(_) => failures.push(format!("PANIC on input {}", input())),
            }
        }
        println!("{name}: {oks} ok, {errs} errors");
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
