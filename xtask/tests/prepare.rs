//! `xtask prepare` end to end: the synthetic dataset passes, hand-made broken folders fail with
//! messages that name what is missing (and where to get it) or the malformed file, record and
//! field; conversions write their files once and never overwrite.

use std::path::{Path, PathBuf};
use std::process::Command;

use rlip_data::synth::{SynthConfig, SynthSize, generate};
use serde_json::{Value, json};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rlip-prepare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `xtask prepare ARGS`; returns (success, stdout + stderr).
fn prepare(args: &[&str], root: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("prepare")
        .args(args)
        .arg("--root")
        .arg(root)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn synth(name: &str) -> PathBuf {
    let d = tmp(name);
    generate(&d, SynthConfig::new(SynthSize::Tiny, 0)).unwrap();
    d
}

fn write_json(p: &Path, v: &Value) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, v.to_string()).unwrap();
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn touch(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"").unwrap();
}

#[test]
fn the_synthetic_dataset_is_ready_as_hico_and_vg() {
    let d = synth("ready");
    for ds in ["hico", "vg"] {
        let (ok, out) = prepare(&[ds], &d);
        assert!(ok, "{ds}: {out}");
        assert!(out.contains(&format!("{ds}: ready")), "{out}");
    }
    let (ok, out) = prepare(&["hico"], &d);
    assert!(
        ok && out.contains("24 images/train2015 files found"),
        "{out}"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn missing_files_are_named_with_their_source() {
    let d = synth("missing");
    std::fs::remove_file(d.join("annotations/test_hico.json")).unwrap();
    std::fs::remove_file(d.join("images/train2015/synth_train2015_00000003.png")).unwrap();
    let (ok, out) = prepare(&["hico"], &d);
    assert!(!ok, "{out}");
    assert!(out.contains("MISSING  annotations/test_hico.json"), "{out}");
    assert!(
        out.contains("get it from: the PPDM annotation files"),
        "{out}"
    );
    assert!(
        out.contains("1 of 24 images/train2015 files are missing, e.g. ")
            && out.contains("synth_train2015_00000003.png"),
        "{out}"
    );
    assert!(out.contains("2 problem(s)"), "{out}");
    // An empty folder: every required item is listed.
    let e = tmp("empty");
    let (ok, out) = prepare(&["oi"], &e);
    assert!(!ok);
    for f in [
        "images",
        "annotations/OI_SGG_train_finetuning.json",
        "annotations/OI_SGG_test.json",
        "annotations/categories_dict.json",
    ] {
        assert!(out.contains(&format!("MISSING  {f}")), "{f}: {out}");
    }
    std::fs::remove_dir_all(&d).ok();
    std::fs::remove_dir_all(&e).ok();
}

#[test]
fn malformed_files_are_named_with_record_and_field() {
    let d = synth("malformed");
    let tv = d.join("annotations/trainval_hico.json");
    let mut v = read_json(&tv);
    v[3]["annotations"][1]["bbox"][2] = json!("wide");
    write_json(&tv, &v);
    let (ok, out) = prepare(&["hico"], &d);
    assert!(!ok);
    assert!(
        out.contains("trainval_hico.json: malformed JSON")
            && out.contains("record and field: [3].annotations[1].bbox[2]"),
        "{out}"
    );

    // A semantic error: the reader's own message names the record.
    let mut v = read_json(&d.join("annotations/test_hico.json"));
    v[2]["hoi_annotation"][0]["object_id"] = json!(99);
    write_json(&d.join("annotations/test_hico.json"), &v);
    let (_, out) = prepare(&["hico"], &d);
    assert!(out.contains("test_hico.json: invalid content: image 2 (synth_test2015_00000003.png): interaction refers to box"), "{out}");

    // A verb id outside the dataset's verbs (labels.json has 8).
    let mut v = read_json(&tv);
    v[3]["annotations"][1]["bbox"][2] = json!(60.0);
    v[5]["hoi_annotation"][0]["category_id"] = json!(9);
    write_json(&tv, &v);
    let (_, out) = prepare(&["hico"], &d);
    assert!(out.contains("[5] (synth_train2015_00000006.png): hoi_annotation[0].category_id 9 is not a verb id 1..=8"), "{out}");

    // VG: the scene-graph reader names image and field.
    let sg = d.join("annotations/scene_graphs_preprocessv1.json");
    let mut v = read_json(&sg);
    v[4]["objects"][0]["w"] = json!("x");
    write_json(&sg, &v);
    let (ok, out) = prepare(&["vg"], &d);
    assert!(
        !ok && out.contains("scene_graphs_preprocessv1.json")
            && out.contains("image 4")
            && out.contains("objects[0].w"),
        "{out}"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn few_shot_subsets_are_drawn_once_and_never_overwritten() {
    // 60 training images, 2 verbs: 10% = 6 images.
    let d = synth("fewshot");
    let tv = d.join("annotations/trainval_hico.json");
    let v = read_json(&tv);
    let many: Vec<Value> = (0..60).map(|i| v[i % 24].clone()).collect();
    write_json(&tv, &Value::Array(many));
    let (ok, out) = prepare(&["hico", "--few-shot", "10"], &d);
    assert!(
        !ok && out.contains("MISSING  annotations/trainval_hico_10percent.json"),
        "{out}"
    );
    let (ok, out) = prepare(
        &["hico", "--few-shot", "10", "--convert", "--seed", "3"],
        &d,
    );
    let few = d.join("annotations/trainval_hico_10percent.json");
    // The synthetic data has 8 verbs: 6 images cannot hold one per verb (the official recipe
    // fails the same way).
    assert!(
        !ok && out.contains("fewer than the 8 images drawn for the 8 verbs") && !few.exists(),
        "{out}"
    );
    let many: Vec<Value> = (0..240).map(|i| v[i % 24].clone()).collect();
    write_json(&tv, &Value::Array(many));
    let (ok, out) = prepare(
        &["hico", "--few-shot", "10", "--convert", "--seed", "3"],
        &d,
    );
    assert!(ok, "{out}");
    assert!(out.contains("(24 of 240 images, seed 3"), "{out}");
    let before = std::fs::read(&few).unwrap();
    let (ok, out) = prepare(
        &["hico", "--few-shot", "10", "--convert", "--seed", "4"],
        &d,
    );
    assert!(ok && !out.contains("wrote"), "{out}");
    assert_eq!(
        std::fs::read(&few).unwrap(),
        before,
        "an existing subset is never replaced"
    );
    let (ok, out) = prepare(&["hico", "--few-shot", "5"], &d);
    assert!(!ok && out.contains("1 and 10"), "{out}");
    std::fs::remove_dir_all(&d).ok();
}

/// The 26 V-COCO actions and their non-agent roles.
const ACTIONS: [(&str, &[&str]); 26] = [
    ("hold", &["obj"]),
    ("stand", &[]),
    ("sit", &["instr"]),
    ("ride", &["instr"]),
    ("walk", &[]),
    ("look", &["obj"]),
    ("hit", &["instr", "obj"]),
    ("eat", &["obj", "instr"]),
    ("jump", &["instr"]),
    ("lay", &["instr"]),
    ("talk_on_phone", &["instr"]),
    ("carry", &["obj"]),
    ("throw", &["obj"]),
    ("catch", &["obj"]),
    ("cut", &["instr", "obj"]),
    ("run", &[]),
    ("work_on_computer", &["instr"]),
    ("ski", &["instr"]),
    ("surf", &["instr"]),
    ("skateboard", &["instr"]),
    ("smile", &[]),
    ("drink", &["instr"]),
    ("kick", &["obj"]),
    ("point", &["instr"]),
    ("read", &["obj"]),
    ("snowboard", &["instr"]),
];

/// A V-COCO release: image `id` has a person `10 * id` and a ball `10 * id + 1`; every person
/// holds its ball and smiles.
fn vcoco_release(root: &Path) {
    let split = |ids: &[i64]| -> Value {
        let n = ids.len();
        ACTIONS
            .iter()
            .map(|(name, roles)| {
                let k = roles.len() + 1;
                let mut roid: Vec<i64> = ids.iter().map(|i| 10 * i).collect();
                roid.extend((1..k).flat_map(|_| ids.iter().map(|i| if *name == "hold" { 10 * i + 1 } else { 0 })));
                let label = if matches!(*name, "hold" | "smile") { 1 } else { 0 };
                json!({"image_id": ids, "ann_id": ids.iter().map(|i| 10 * i).collect::<Vec<_>>(),
                       "role_object_id": roid, "label": vec![label; n], "action_name": name,
                       "role_name": std::iter::once("agent").chain(roles.iter().copied()).collect::<Vec<_>>()})
            })
            .collect()
    };
    let name = |i: i64| {
        format!(
            "COCO_{}2014_{i:012}.jpg",
            if i < 3 { "train" } else { "val" }
        )
    };
    let images: Vec<Value> = (1..=4)
        .map(|i| json!({"id": i, "width": 64, "height": 48, "file_name": name(i)}))
        .collect();
    let anns: Vec<Value> = (1..=4)
        .flat_map(|i| {
            [(10 * i, 1), (10 * i + 1, 37)].map(|(id, cat)| {
                json!({"id": id, "image_id": i, "category_id": cat, "bbox": [1, 2, 10, 20], "area": 200})
            })
        })
        .collect();
    write_json(
        &root.join("data/instances_vcoco_all_2014.json"),
        &json!({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}),
    );
    write_json(
        &root.join("data/vcoco/vcoco_trainval.json"),
        &split(&[1, 2]),
    );
    write_json(&root.join("data/vcoco/vcoco_test.json"), &split(&[3, 4]));
    std::fs::write(root.join("data/splits/vcoco_test.ids").tap_dir(), "3\n4\n").unwrap();
    for i in 1..=4 {
        touch(
            &root
                .join(format!(
                    "images/{}2014",
                    if i < 3 { "train" } else { "val" }
                ))
                .join(name(i)),
        );
    }
    // prior.pickle as Python 2 writes it (protocol 0): 80 classes x 29 verbs, all ones.
    let mut p = String::from("(dp0\n");
    let raw: String = (0..29)
        .flat_map(|_| 1f64.to_le_bytes())
        .map(|b| format!("\\x{b:02x}"))
        .collect();
    for k in 0..80 {
        p += &format!(
            "I{k}\ncnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR(I1\n(I1\nI29\ntcnumpy\ndtype\n(S'f8'\nI0\nI1\ntR(I3\nS'<'\nNNNI-1\nI-1\nI0\ntbI00\nS'{raw}'\ntbs"
        );
    }
    p += ".";
    std::fs::write(root.join("prior.pickle"), p).unwrap();
}

trait TapDir {
    fn tap_dir(self) -> Self;
}
impl TapDir for PathBuf {
    /// Creates the parent folder, returns the path.
    fn tap_dir(self) -> Self {
        std::fs::create_dir_all(self.parent().unwrap()).unwrap();
        self
    }
}

#[test]
fn vcoco_is_converted_from_the_release_once() {
    let d = tmp("vcoco");
    vcoco_release(&d);
    let (ok, out) = prepare(&["vcoco"], &d);
    assert!(
        !ok && out.contains("MISSING  annotations/trainval_vcoco.json")
            && out.contains("--convert"),
        "{out}"
    );
    let (ok, out) = prepare(&["vcoco", "--convert"], &d);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "converted: trainval 2 images / 4 interactions, test 2 / 4, corre_vcoco.npy [29, 80]"
        ),
        "{out}"
    );
    let tv = read_json(&d.join("annotations/trainval_vcoco.json"));
    assert_eq!(
        tv[0]["hoi_annotation"],
        json!([
            {"subject_id": 0, "object_id": 1, "category_id": 0},
            {"subject_id": 0, "object_id": -1, "category_id": 23},
        ])
    );
    // Again: nothing to do, nothing overwritten.
    let before = std::fs::read(d.join("annotations/test_vcoco.json")).unwrap();
    let (ok, out) = prepare(&["vcoco", "--convert"], &d);
    assert!(ok && !out.contains("converted"), "{out}");
    assert_eq!(
        std::fs::read(d.join("annotations/test_vcoco.json")).unwrap(),
        before
    );
    // Only the matrix missing: it alone is rebuilt.
    std::fs::remove_file(d.join("annotations/corre_vcoco.npy")).unwrap();
    let (ok, out) = prepare(&["vcoco", "--convert"], &d);
    assert!(
        ok && out.contains("wrote annotations/corre_vcoco.npy [29, 80]"),
        "{out}"
    );
    // A broken release: an object id that is not an annotation of its image.
    let e = tmp("vcoco-bad");
    vcoco_release(&e);
    let p = e.join("data/vcoco/vcoco_test.json");
    let mut v = read_json(&p);
    v[0]["role_object_id"][2] = json!(999);
    write_json(&p, &v);
    let (ok, out) = prepare(&["vcoco", "--convert"], &e);
    assert!(!ok && out.contains("vcoco_test.json: invalid content: action \"hold\", entry 0 (image_id 3): role_object_id (obj): annotation id 999"), "{out}");
    assert!(!e.join("annotations/trainval_vcoco.json").exists());
    std::fs::remove_dir_all(&d).ok();
    std::fs::remove_dir_all(&e).ok();
}

#[test]
fn vg_is_preprocessed_from_raw_scene_graphs() {
    let d = tmp("vg");
    let obj = |id: u64, name: &str| json!({"object_id": id, "x": 1, "y": 2, "w": 10, "h": 12, "names": [name]});
    let raw: Vec<Value> = (1..=25u64)
        .map(|i| json!({"image_id": i, "objects": [obj(100 * i, "Man"), obj(100 * i + 1, "horse")],
                        "relationships": [{"relationship_id": i, "predicate": "Riding", "subject_id": 100 * i, "object_id": 100 * i + 1}]}))
        .collect();
    write_json(&d.join("annotations/scene_graphs.json"), &Value::Array(raw));
    for i in 1..=25 {
        touch(&d.join(format!("images/{i}.jpg")));
    }
    let (ok, out) = prepare(&["vg"], &d);
    assert!(
        !ok && out.contains("MISSING  annotations/scene_graphs_preprocessv1.json"),
        "{out}"
    );
    let (ok, out) = prepare(&["vg", "--convert"], &d);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "preprocessed: 25 images, 25 -> 25 relationships, 1 predicates, 2 object names kept"
        ),
        "{out}"
    );
    assert!(out.contains("25 images found"), "{out}");
    let keep = read_json(&d.join("annotations/vg_keep_names_v1_no_lias_freq.json"));
    assert_eq!(keep["relationship_names"], json!(["riding"]));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn pseudo_relation_folders_are_checked() {
    let d = tmp("coco");
    let img = |id: u64, ds: &str, split: &str| {
        json!({"image_id": id, "dataset": ds, "data_split": split,
        "objects": [{"object_id": 1, "x": 1.0, "y": 2.0, "w": 3.0, "h": 4.0, "names": "person"}],
        "relationships": [{"predicate": "on", "subject_id": 1, "object_id": 1, "confidence": 0.5}]})
    };
    write_json(
        &d.join("annotations/RLIPv2_train2017_threshold20_x.json"),
        &json!([img(139, "coco2017", "train2017")]),
    );
    touch(&d.join("train2017/000000000139.jpg"));
    let (ok, out) = prepare(&["coco-pseudo"], &d);
    assert!(ok, "{out}");
    write_json(
        &d.join("annotations/RLIPv2_train2017_threshold20_x.json"),
        &json!([img(139, "coco2017", "train2017"), img(7, "o365", "train")]),
    );
    let (ok, out) = prepare(&["coco-pseudo"], &d);
    assert!(
        !ok && out.contains("image 1 (image_id 7): dataset: expected \"coco2017\""),
        "{out}"
    );

    let o = tmp("o365");
    write_json(
        &o.join("rel_annotations/RLIPv2_o365trainval_Tagger2.json"),
        &json!([img(7, "o365", "train"), img(8, "o365", "train")]),
    );
    write_json(
        &o.join("image_id_to_filepath.json"),
        &json!({"7": "train/patch0/a.jpg"}),
    );
    touch(&o.join("train/patch0/a.jpg"));
    let (ok, out) = prepare(&["o365-pseudo"], &o);
    assert!(
        !ok && out.contains("image_id_to_filepath.json: invalid content: no entry for image id 8"),
        "{out}"
    );
    write_json(
        &o.join("image_id_to_filepath.json"),
        &json!({"7": "train/patch0/a.jpg", "8": "train/patch0/b.jpg"}),
    );
    let (ok, out) = prepare(&["o365-pseudo"], &o);
    assert!(
        !ok && out.contains("1 of 2 images are missing") && out.contains("b.jpg"),
        "{out}"
    );
    touch(&o.join("train/patch0/b.jpg"));
    let (ok, out) = prepare(&["o365-pseudo"], &o);
    assert!(ok, "{out}");
    std::fs::remove_dir_all(&d).ok();
    std::fs::remove_dir_all(&o).ok();
}
