//! Visual Genome scene graphs: the official loader's layout and checks, the keep-names file, the
//! official preprocessing (`datasets/vg.py::vg_preprocess`) and the synthetic dataset's VG files.

use std::path::{Path, PathBuf};

use rlip_data::DataError;
use rlip_data::pretrain::{RelationImage, Vocabulary};
use rlip_data::synth::{SynthConfig, SynthSize, generate};
use rlip_data::vg::{
    Aliases, ImageId, KEEP_NAMES_FILE, PreprocessConfig, RawSceneGraph, SCENE_GRAPHS_FILE,
    load_keep_names, load_raw_scene_graphs, load_scene_graphs, parse_alias_lines, preprocess,
    preprocess_scene_graphs, vg_iou,
};

fn fresh_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vg-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The error message, checked to name `path`.
fn message(e: DataError, path: &Path) -> String {
    let m = e.to_string();
    assert!(m.contains(&path.display().to_string()), "{m}");
    m
}

const PREPROCESSED: &str = r#"[
 {"image_id": 1,
  "objects": [
    {"object_id": 10, "x": 5, "y": 5, "w": 20, "h": 30, "names": "man", "synsets": ["man.n.01"]},
    {"object_id": 11, "x": 50.5, "y": 40, "w": 100, "h": 20, "names": "horse"},
    {"object_id": 12, "x": -5, "y": 10, "w": 400, "h": 10, "names": "man"}],
  "relationships": [
    {"relationship_id": 100, "predicate": "riding", "subject_id": 10, "object_id": 11, "synsets": []},
    {"predicate": "near", "subject_id": 12, "object_id": 10}]},
 {"image_id": 2, "file_name": "b.png", "width": 64, "height": 48, "objects": [], "relationships": []}
]"#;

#[test]
fn loads_the_preprocessed_layout_with_optional_fields() {
    let dir = fresh_dir("load");
    let p = write(&dir, "sg.json", PREPROCESSED);
    let images = load_scene_graphs(&p).unwrap();
    assert_eq!(images.len(), 2);
    let a = &images[0];
    assert_eq!(a.image_id, ImageId::Num(1));
    assert_eq!(
        (a.file_name.as_deref(), a.width, a.height),
        (None, None, None)
    );
    assert_eq!(a.objects[1].xyxy(), [50.5, 40.0, 150.5, 60.0]);
    assert_eq!(a.objects[2].names, "man");
    assert_eq!(a.relationships[0].relationship_id, Some(100));
    assert_eq!(a.relationships[1].relationship_id, None);
    assert_eq!(a.relationships[1].predicate, "near");
    // The official loader opens images/{image_id}.jpg; our synthetic file_name wins when given.
    assert_eq!(a.vg_image_path(Path::new("r")), Path::new("r/1.jpg"));
    assert_eq!(
        images[1].vg_image_path(Path::new("r")),
        Path::new("r/b.png")
    );
    assert_eq!((images[1].width, images[1].height), (Some(64), Some(48)));
}

#[test]
fn relation_with_a_missing_subject_or_object_id_is_an_error() {
    let dir = fresh_dir("missing-id");
    for (field, rel) in [
        (
            "subject_id",
            r#"{"predicate": "on", "subject_id": 99, "object_id": 10}"#,
        ),
        (
            "object_id",
            r#"{"predicate": "on", "subject_id": 10, "object_id": 98}"#,
        ),
    ] {
        let text = format!(
            r#"[{{"image_id": 1, "objects": [], "relationships": []}},
               {{"image_id": 7, "objects": [{{"object_id": 10, "x": 0, "y": 0, "w": 1, "h": 1,
                 "names": "a"}}], "relationships": [{rel}]}}]"#
        );
        let p = write(&dir, &format!("{field}.json"), &text);
        let m = message(load_scene_graphs(&p).unwrap_err(), &p);
        assert!(
            m.contains("image 1 (image_id 7)") && m.contains(&format!("relationships[0].{field}")),
            "{m}"
        );
    }
}

#[test]
fn wrong_types_and_missing_fields_name_the_record_and_field() {
    let dir = fresh_dir("types");
    let obj = |extra: &str| {
        format!(
            r#"[{{"image_id": 3, "objects": [{{"object_id": 1, "x": 0, "y": 0, "w": 1, "h": 1,
                "names": "a"}}, {{"object_id": 2, {extra}}}], "relationships": []}}]"#
        )
    };
    let cases = [
        (
            obj(r#""x": "5", "y": 0, "w": 1, "h": 1, "names": "b""#),
            "objects[1].x: expected a number, found string \"5\"",
        ),
        (
            obj(r#""x": 5, "y": 0, "w": 1, "h": 1, "names": ["b"]"#),
            "objects[1].names: expected a string, found a list",
        ),
        (
            obj(r#""x": 5, "y": 0, "w": 1, "names": "b""#),
            "objects[1].h: missing field",
        ),
        (
            r#"[{"image_id": -4, "objects": [], "relationships": []}]"#.into(),
            "image 0: image_id: expected a non-negative integer or a string, found number -4",
        ),
        (
            r#"[{"image_id": 1, "objects": []}]"#.into(),
            "relationships: missing field",
        ),
        (
            r#"[3]"#.into(),
            "image 0: expected an object, found number 3",
        ),
        (
            r#"[{"image_id": 1, "objects": [], "relationships": [{"predicate": 5,
              "subject_id": 1, "object_id": 1}]}]"#
                .into(),
            "relationships[0].predicate: expected a string, found number 5",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = write(&dir, &format!("{i}.json"), text);
        let e = load_scene_graphs(&p).unwrap_err();
        assert!(matches!(e, DataError::Invalid { .. }), "{e}");
        let m = message(e, &p);
        assert!(m.contains(want), "case {i}: {m}");
    }
}

#[test]
fn malformed_json_is_a_json_error_naming_the_file() {
    let dir = fresh_dir("malformed");
    for (i, text) in [
        r#"[{"image_id": 1, "objects": ["#,
        r#"{"image_id": 1}"#,
        "[] x",
    ]
    .iter()
    .enumerate()
    {
        let p = write(&dir, &format!("{i}.json"), text);
        let e = load_scene_graphs(&p).unwrap_err();
        assert!(matches!(e, DataError::Json { .. }), "{e}");
        message(e, &p);
    }
    let e = load_scene_graphs(dir.join("absent.json")).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e}");
}

#[test]
fn keep_names_file_with_and_without_frequencies() {
    let dir = fresh_dir("keep");
    let p = write(
        &dir,
        "k.json",
        r#"{"relationship_names": ["on", "has"], "object_names": ["man", "shirt", "tree"],
            "relationship_freq": {"on": 50, "has": 20},
            "object_freq": {"man": 90, "shirt": 40, "tree": 21}}"#,
    );
    let k = load_keep_names(&p).unwrap();
    assert_eq!(k.object_names, ["man", "shirt", "tree"]);
    assert_eq!(k.relationship_freq.as_ref().unwrap()["has"], 20);
    let v = Vocabulary::from_keep_names(&k, &p).unwrap();
    assert_eq!(
        v.objects,
        [
            ("man".into(), 90),
            ("shirt".into(), 40),
            ("tree".into(), 21)
        ]
    );
    // Frequencies are optional in the file (vg_keep_names_v2.json) but needed for a vocabulary.
    let p2 = write(
        &dir,
        "k2.json",
        r#"{"relationship_names": ["on"], "object_names": ["a"]}"#,
    );
    let k2 = load_keep_names(&p2).unwrap();
    assert!(k2.object_freq.is_none());
    let m = message(Vocabulary::load(&p2).unwrap_err(), &p2);
    assert!(m.contains("object_freq"), "{m}");
    for (i, (text, want)) in [
        (
            r#"{"relationship_names": ["on"], "object_names": ["a"], "object_freq": {"a": 1.5}}"#,
            "object_freq[\"a\"]: expected a non-negative integer count, found number 1.5",
        ),
        (
            r#"{"relationship_names": ["on", 3], "object_names": ["a"]}"#,
            "relationship_names[1]: expected a string, found number 3",
        ),
        (
            r#"{"relationship_names": ["on"]}"#,
            "object_names: missing field",
        ),
    ]
    .iter()
    .enumerate()
    {
        let p = write(&dir, &format!("bad{i}.json"), text);
        let m = message(load_keep_names(&p).unwrap_err(), &p);
        assert!(m.contains(want), "{m}");
    }
    // Names and frequencies that disagree.
    let p3 = write(
        &dir,
        "k3.json",
        r#"{"relationship_names": ["on"], "object_names": ["a", "b"],
            "relationship_freq": {"on": 1}, "object_freq": {"a": 3}}"#,
    );
    let m = message(Vocabulary::load(&p3).unwrap_err(), &p3);
    assert!(m.contains("object_names[1]") && m.contains("\"b\""), "{m}");
}

#[test]
fn iou_follows_the_official_inclusive_pixel_convention() {
    assert_eq!(vg_iou([0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0]), 1.0);
    // 10x10 boxes overlapping in 5x10 (inclusive pixels: 6x10 of 10x10 each).
    let iou = vg_iou([0.0, 0.0, 9.0, 9.0], [4.0, 0.0, 13.0, 9.0]);
    assert!((iou - 60.0 / 140.0).abs() < 1e-12, "{iou}");
    // Touching edges and zero-size boxes have IoU 0, even with themselves.
    assert_eq!(vg_iou([0.0, 0.0, 9.0, 9.0], [9.0, 0.0, 19.0, 9.0]), 0.0);
    assert_eq!(vg_iou([3.0, 3.0, 3.0, 9.0], [3.0, 3.0, 3.0, 9.0]), 0.0);
}

#[test]
fn alias_lines_map_to_their_first_name() {
    let m = parse_alias_lines("man,men,guy\n tree,trees \nguy,dude\n");
    assert_eq!(m["men"], "man");
    assert_eq!(m["trees"], "tree");
    assert_eq!(m["guy"], "guy"); // a later line wins
    assert_eq!(m["dude"], "guy");
}

/// A raw `scene_graphs.json` exercising every preprocessing step.
fn raw_fixture() -> String {
    // Image 1: an exact duplicate (after lower-casing), a redundant near-copy (IoU ≥ 0.7, same
    // names and predicate), a near-copy with a different predicate (kept), and a relation whose
    // object is rare ("ghost", count 1 < 2).
    let objs = [
        r#"{"object_id": 1, "x": 0, "y": 0, "w": 99, "h": 99, "names": ["Man", "person"]}"#,
        r#"{"object_id": 2, "x": 200, "y": 0, "w": 49, "h": 49, "names": ["horse"]}"#,
        r#"{"object_id": 3, "x": 1, "y": 1, "w": 99, "h": 99, "names": ["man"]}"#,
        r#"{"object_id": 4, "x": 201, "y": 1, "w": 49, "h": 49, "names": ["HORSE"]}"#,
        r#"{"object_id": 5, "x": 0, "y": 0, "w": 10, "h": 10, "names": ["ghost"]}"#,
        r#"{"object_id": 6, "x": 0, "y": 0, "w": 5, "h": 5, "names": ["steed"]}"#,
    ]
    .join(",");
    let rels = [
        (1, 2, "Riding"),
        (1, 2, "riding"),
        (3, 4, "riding"),
        (3, 4, "on"),
        (1, 5, "riding"),
        (3, 6, "mounting"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (s, o, p))| {
        format!(r#"{{"relationship_id": {i}, "predicate": "{p}", "subject_id": {s}, "object_id": {o}, "synsets": []}}"#)
    })
    .collect::<Vec<_>>()
    .join(",");
    // Image 2: three relations, capped to 2 with max_relations = 2.
    let img2 = r#"{"image_id": 2, "width": 300, "height": 200,
        "objects": [{"object_id": 7, "x": 0, "y": 0, "w": 9, "h": 9, "names": ["man"]},
                    {"object_id": 8, "x": 20, "y": 0, "w": 9, "h": 9, "names": ["horse"]}],
        "relationships": [
          {"relationship_id": 10, "predicate": "riding", "subject_id": 7, "object_id": 8},
          {"relationship_id": 11, "predicate": "on", "subject_id": 8, "object_id": 7},
          {"relationship_id": 12, "predicate": "on", "subject_id": 7, "object_id": 7}]}"#;
    format!(r#"[{{"image_id": 1, "objects": [{objs}], "relationships": [{rels}]}}, {img2}]"#)
}

fn small_cfg() -> PreprocessConfig {
    PreprocessConfig {
        iou_threshold: 0.7,
        max_relations: 2,
        min_count: 2,
    }
}

#[test]
fn preprocessing_follows_the_official_steps() {
    let dir = fresh_dir("pre");
    let p = write(&dir, "scene_graphs.json", &raw_fixture());
    let raw: Vec<RawSceneGraph> = load_raw_scene_graphs(&p).unwrap();
    assert_eq!(raw[0].objects[0].names, ["Man", "person"]);
    let out = preprocess(raw.clone(), &small_cfg(), &Aliases::default()).unwrap();
    let s = &out.stats;
    assert_eq!(
        (s.images, s.objects, s.objects_with_several_names),
        (2, 8, 1)
    );
    assert_eq!(s.relations_raw, 9);
    assert_eq!(s.relations_after_duplicates, 8); // "Riding" == "riding" after lower-casing
    assert_eq!(s.relations_after_redundancy, 7); // (3, 4, riding) is redundant with (1, 2, riding)
    assert_eq!(s.relations_after_cap, 4); // at most 2 per image
    let img = &out.images[0];
    assert_eq!(img.objects[0].names, "man");
    assert_eq!(img.objects[3].names, "horse");
    assert_eq!(img.objects.len(), 6, "objects are never removed");
    // Counts after the cap: predicates riding 2 (img1 (1,2) + img2), on 2; objects man 3,
    // horse 3, ghost 1, steed 1. min_count 2 drops ghost / steed relations (none left here).
    assert_eq!(out.keep_names.relationship_names, ["riding", "on"]);
    assert_eq!(out.keep_names.object_names, ["man", "horse"]);
    assert_eq!(out.keep_names.object_freq.as_ref().unwrap()["man"], 3);
    let preds: Vec<_> = img
        .relationships
        .iter()
        .map(|r| r.predicate.as_str())
        .collect();
    assert_eq!(preds, ["riding", "on"]);
    let ids: Vec<_> = out.images[1]
        .relationships
        .iter()
        .map(|r| r.relationship_id)
        .collect();
    assert_eq!(ids, [Some(10), Some(11)]);
    assert_eq!(s.relations_kept, 4);
    assert_eq!(
        (out.images[1].width, out.images[1].height),
        (Some(300), Some(200))
    );

    // A larger cap keeps the rare-object relation until the frequency filter removes it.
    let cfg = PreprocessConfig {
        max_relations: 10,
        ..small_cfg()
    };
    let out = preprocess(raw, &cfg, &Aliases::default()).unwrap();
    assert_eq!(out.stats.relations_after_cap, 7);
    let preds: Vec<_> = out.images[0]
        .relationships
        .iter()
        .map(|r| r.predicate.as_str())
        .collect();
    assert_eq!(
        preds,
        ["riding", "on"],
        "ghost / steed / mounting relations are filtered"
    );
}

#[test]
fn preprocessing_uses_aliases_in_the_redundancy_test() {
    let text = r#"[{"image_id": 1,
      "objects": [{"object_id": 1, "x": 0, "y": 0, "w": 99, "h": 99, "names": ["man"]},
                  {"object_id": 2, "x": 200, "y": 0, "w": 49, "h": 49, "names": ["horse"]},
                  {"object_id": 3, "x": 200, "y": 0, "w": 49, "h": 49, "names": ["steed"]}],
      "relationships": [{"predicate": "riding", "subject_id": 1, "object_id": 2},
                        {"predicate": "mounting", "subject_id": 1, "object_id": 3}]}]"#;
    let dir = fresh_dir("alias");
    let raw = load_raw_scene_graphs(write(&dir, "r.json", text)).unwrap();
    let cfg = PreprocessConfig {
        min_count: 0,
        ..Default::default()
    };
    let plain = preprocess(raw.clone(), &cfg, &Aliases::default()).unwrap();
    assert_eq!(plain.stats.relations_after_redundancy, 2);
    let aliases = Aliases {
        objects: parse_alias_lines("horse,steed"),
        relations: parse_alias_lines("riding,mounting"),
    };
    let merged = preprocess(raw, &cfg, &aliases).unwrap();
    assert_eq!(merged.stats.relations_after_redundancy, 1);
    // Names are not renamed by the aliases (official step 7 is disabled).
    assert_eq!(merged.images[0].objects[2].names, "steed");
    assert_eq!(merged.images[0].relationships[0].predicate, "riding");
}

#[test]
fn raw_file_errors_name_the_record() {
    let dir = fresh_dir("raw-errors");
    let p = write(
        &dir,
        "r.json",
        r#"[{"image_id": 5, "objects": [{"object_id": 1, "x": 0, "y": 0, "w": 1, "h": 1,
            "names": []}], "relationships": []}]"#,
    );
    let m = message(load_raw_scene_graphs(&p).unwrap_err(), &p);
    assert!(
        m.contains("image 0 (image_id 5): objects[0].names: empty list"),
        "{m}"
    );
    let p = write(
        &dir,
        "r2.json",
        r#"[{"image_id": 5, "objects": [{"object_id": 1, "x": 0, "y": 0, "w": 1, "h": 1,
            "names": ["a", 2]}], "relationships": []}]"#,
    );
    let m = message(load_raw_scene_graphs(&p).unwrap_err(), &p);
    assert!(m.contains("objects[0].names[1]: expected a string"), "{m}");
}

#[test]
fn preprocess_writer_is_atomic_and_never_overwrites() {
    let dir = fresh_dir("writer");
    let raw = write(&dir, "scene_graphs.json", &raw_fixture());
    let out = dir.join("out");
    let stats = preprocess_scene_graphs(&raw, &out, &small_cfg(), &Aliases::default()).unwrap();
    assert_eq!(stats.relations_kept, 4);
    let images = load_scene_graphs(out.join(SCENE_GRAPHS_FILE)).unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].objects[0].names, "man");
    let text = std::fs::read_to_string(out.join(SCENE_GRAPHS_FILE)).unwrap();
    assert!(
        text.contains(r#""x":0,"#),
        "integral coordinates stay integers: {text}"
    );
    let vocab = Vocabulary::load(out.join(KEEP_NAMES_FILE)).unwrap();
    assert_eq!(vocab.relations, [("riding".into(), 2), ("on".into(), 2)]);
    // The frequency objects are written in name order.
    let k = std::fs::read_to_string(out.join(KEEP_NAMES_FILE)).unwrap();
    assert!(k.contains(r#""object_freq":{"man":3,"horse":3}"#), "{k}");
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");

    let before = std::fs::read(out.join(SCENE_GRAPHS_FILE)).unwrap();
    let e = preprocess_scene_graphs(&raw, &out, &small_cfg(), &Aliases::default()).unwrap_err();
    match &e {
        DataError::Write { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists)
        }
        other => panic!("expected a write error, got {other:?}"),
    }
    assert_eq!(std::fs::read(out.join(SCENE_GRAPHS_FILE)).unwrap(), before);
    // Only the keep-names file present: still refused, nothing written.
    let out2 = dir.join("out2");
    std::fs::create_dir_all(&out2).unwrap();
    std::fs::write(out2.join(KEEP_NAMES_FILE), b"{}").unwrap();
    assert!(preprocess_scene_graphs(&raw, &out2, &small_cfg(), &Aliases::default()).is_err());
    assert!(!out2.join(SCENE_GRAPHS_FILE).exists());
    // A raw file with a dangling id: an error naming the raw file, nothing written.
    let bad = write(
        &dir,
        "bad.json",
        r#"[{"image_id": 1, "objects": [], "relationships": [{"predicate": "on",
            "subject_id": 1, "object_id": 2}]}]"#,
    );
    let out3 = dir.join("out3");
    let m = message(
        preprocess_scene_graphs(&bad, &out3, &small_cfg(), &Aliases::default()).unwrap_err(),
        &bad,
    );
    assert!(m.contains("relationships[0].subject_id"), "{m}");
    assert!(!out3.join(SCENE_GRAPHS_FILE).exists());
}

#[test]
fn vg_images_convert_to_relation_images() {
    let dir = fresh_dir("convert");
    let p = write(&dir, "sg.json", PREPROCESSED);
    let images = load_scene_graphs(&p).unwrap();
    // Image 1 states no size: it comes from the image file (content-sniffed, as Pillow does).
    image::RgbImage::new(200, 100)
        .save_with_format(dir.join("1.jpg"), image::ImageFormat::Png)
        .unwrap();
    let r = RelationImage::from_vg(&images[0], &dir).unwrap();
    assert_eq!((r.width, r.height, r.dataset.as_str()), (200, 100, "vg"));
    assert_eq!(r.image_path, dir.join("1.jpg"));
    // Boxes are x, y, x + w, y + h clamped to the image.
    assert_eq!(r.boxes[0], [5.0, 5.0, 25.0, 35.0]);
    assert_eq!(r.boxes[2], [0.0, 10.0, 200.0, 20.0]);
    assert_eq!(r.box_names, ["man", "horse", "man"]);
    assert_eq!(
        r.relations,
        [(0, 1, "riding".into()), (2, 0, "near".into())]
    );
    let b = RelationImage::from_vg(&images[1], &dir).unwrap();
    assert_eq!((b.width, b.height), (64, 48));
    // No image file and no size in the annotation: an I/O error naming the image.
    let mut no_file = images[0].clone();
    no_file.image_id = ImageId::Num(3);
    let e = RelationImage::from_vg(&no_file, &dir).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e}");
    message(e, &dir.join("3.jpg"));
    // A pseudo-labelled image is not a VG image.
    let mut coco = images[1].clone();
    coco.dataset = Some("coco2017".into());
    assert!(RelationImage::from_vg(&coco, &dir).is_err());
}

#[test]
fn synthetic_dataset_vg_files_load_and_convert() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vg-synth");
    let _ = std::fs::remove_dir_all(&dir);
    let summary = generate(&dir, SynthConfig::new(SynthSize::Tiny, 0)).unwrap();
    let ann = dir.join("annotations");
    let images = load_scene_graphs(ann.join(SCENE_GRAPHS_FILE)).unwrap();
    assert_eq!(images.len(), summary.train.images);
    let root = dir.join("images").join("train2015");
    let rel: Vec<RelationImage> = images
        .iter()
        .map(|i| RelationImage::from_vg(i, &root))
        .collect::<Result<_, _>>()
        .unwrap();
    let triplets: usize = rel.iter().map(|r| r.relations.len()).sum();
    assert_eq!(triplets, summary.train.hois);
    for r in &rel {
        assert!(r.image_path.is_file(), "{}", r.image_path.display());
        assert_eq!((r.width, r.height), (128, 128));
        for b in &r.boxes {
            assert!(b[0] >= 0.0 && b[0] < b[2] && b[2] <= 128.0 && b[1] < b[3] && b[3] <= 128.0);
        }
        for (s, o, _) in &r.relations {
            assert_eq!(r.box_names[*s], "person");
            assert_ne!(s, o);
        }
    }
    // The keep-names file agrees with the counts of the converted images.
    let file = Vocabulary::load(ann.join(KEEP_NAMES_FILE)).unwrap();
    let counted = Vocabulary::count(&rel);
    let sorted = |v: &[(String, u64)]| {
        let mut v: Vec<_> = v.iter().filter(|(_, c)| *c > 0).cloned().collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&file.relations), sorted(&counted.relations));
    assert_eq!(sorted(&file.objects), sorted(&counted.objects));
}
