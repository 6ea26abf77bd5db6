//! Pseudo-labelled COCO / Objects365 relation files: the confidence threshold of the official
//! mixed dataset, image paths, `image_id_to_filepath.json`, and errors.

use std::path::{Path, PathBuf};

use rlip_data::DataError;
use rlip_data::pretrain::RelationImage;
use rlip_data::pseudo::{
    O365FilePaths, RELATION_THRESHOLD, coco_image_path, filter_by_confidence, load_pseudo_relations,
};
use rlip_data::vg::ImageId;

fn fresh_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pseudo-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const PSEUDO: &str = r#"[
 {"image_id": 139, "dataset": "coco2017", "data_split": "val2017",
  "objects": [{"object_id": 0, "x": 10.5, "y": 20.25, "w": 30.0, "h": 40.0, "names": "person"},
              {"object_id": 1, "x": 100.0, "y": 20.0, "w": 50.0, "h": 60.0, "names": "tv"}],
  "relationships": [
    {"relationship_id": 0, "predicate": "watching", "subject_id": 0, "object_id": 1, "confidence": 0.41},
    {"relationship_id": 1, "predicate": "near", "subject_id": 0, "object_id": 1, "confidence": 0.2},
    {"relationship_id": 2, "predicate": "holding", "subject_id": 0, "object_id": 1, "confidence": 0.19999},
    {"relationship_id": 3, "predicate": "behind", "subject_id": 1, "object_id": 0}]},
 {"image_id": 7, "dataset": "coco2017",
  "objects": [{"object_id": 2, "x": 0, "y": 0, "w": 1, "h": 1, "names": "cup"}],
  "relationships": [{"relationship_id": 4, "predicate": "on", "subject_id": 2, "object_id": 2, "confidence": 0.05}]},
 {"image_id": 420, "dataset": "o365", "data_split": "train",
  "objects": [{"object_id": 3, "x": 1, "y": 2, "w": 3, "h": 4, "names": "dog"}],
  "relationships": []}
]"#;

fn predicates(img: &rlip_data::vg::SceneGraphImage) -> Vec<&str> {
    img.relationships
        .iter()
        .map(|r| r.predicate.as_str())
        .collect()
}

#[test]
fn confidence_threshold_keeps_unscored_and_at_or_above() {
    let dir = fresh_dir("threshold");
    let p = write(&dir, "coco.json", PSEUDO);
    let images = load_pseudo_relations(&p, RELATION_THRESHOLD).unwrap();
    assert_eq!(
        images.len(),
        3,
        "images without surviving relations are kept"
    );
    // 0.41 and 0.2 (= threshold) kept, 0.19999 dropped, no confidence kept.
    assert_eq!(predicates(&images[0]), ["watching", "near", "behind"]);
    assert!(images[1].relationships.is_empty());
    assert_eq!(images[0].relationships[0].confidence, Some(0.41));
    assert_eq!(images[0].dataset.as_deref(), Some("coco2017"));
    assert_eq!(images[0].data_split.as_deref(), Some("val2017"));
    // Threshold 0 (the official default) or below: no filtering.
    for t in [0.0, -1.0] {
        let all = load_pseudo_relations(&p, t).unwrap();
        assert_eq!(all[0].relationships.len(), 4);
        assert_eq!(all[1].relationships.len(), 1);
    }
    let mut all = load_pseudo_relations(&p, 0.0).unwrap();
    assert_eq!(filter_by_confidence(&mut all, 0.4), 3);
    assert_eq!(predicates(&all[0]), ["watching", "behind"]);
    // Above 1 is refused, naming the file.
    let e = load_pseudo_relations(&p, 1.5).unwrap_err();
    assert!(e.to_string().contains(&p.display().to_string()), "{e}");
}

#[test]
fn image_paths_follow_the_mixed_dataset() {
    let dir = fresh_dir("paths");
    let p = write(&dir, "coco.json", PSEUDO);
    let images = load_pseudo_relations(&p, 0.0).unwrap();
    let coco = Path::new("/data/coco2017");
    assert_eq!(
        coco_image_path(coco, &images[0]),
        Path::new("/data/coco2017/val2017/000000000139.jpg")
    );
    // No data_split: train2017.
    assert_eq!(
        coco_image_path(coco, &images[1]),
        Path::new("/data/coco2017/train2017/000000000007.jpg")
    );
    let map = write(
        &dir,
        "image_id_to_filepath.json",
        r#"{"420": "images/v1/patch3/objects365_v1_00000420.jpg", "421": "x.jpg"}"#,
    );
    let files = O365FilePaths::load(&map).unwrap();
    assert_eq!(
        files.image_path(Path::new("/o365"), &images[2]).unwrap(),
        Path::new("/o365/images/v1/patch3/objects365_v1_00000420.jpg")
    );
    let mut missing = images[2].clone();
    missing.image_id = ImageId::Num(9);
    let m = files
        .image_path(Path::new("/o365"), &missing)
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("image_id_to_filepath.json") && m.contains("image id 9"),
        "{m}"
    );
    let bad = write(&dir, "bad_map.json", r#"{"1": 5}"#);
    let m = O365FilePaths::load(&bad).unwrap_err().to_string();
    assert!(
        m.contains("bad_map.json") && m.contains("[\"1\"]: expected a path string"),
        "{m}"
    );
}

#[test]
fn pseudo_images_convert_with_their_image_size() {
    let dir = fresh_dir("convert");
    let p = write(&dir, "coco.json", PSEUDO);
    let images = load_pseudo_relations(&p, RELATION_THRESHOLD).unwrap();
    let coco = dir.join("coco");
    std::fs::create_dir_all(coco.join("val2017")).unwrap();
    // PNG bytes under a .jpg name: the format is sniffed from the content, as Pillow does.
    image::RgbImage::new(120, 90)
        .save_with_format(
            coco.join("val2017").join("000000000139.jpg"),
            image::ImageFormat::Png,
        )
        .unwrap();
    let r = RelationImage::from_coco(&images[0], &coco).unwrap();
    assert_eq!(
        (r.width, r.height, r.dataset.as_str()),
        (120, 90, "coco2017")
    );
    assert_eq!(r.boxes[0], [10.5, 20.25, 40.5, 60.25]);
    assert_eq!(
        r.boxes[1],
        [100.0, 20.0, 120.0, 80.0],
        "clamped to the width"
    );
    assert_eq!(r.relations.len(), 3);
    // The dataset field decides the kind of image.
    assert!(RelationImage::from_coco(&images[2], &coco).is_err());
    let o365 = dir.join("o365");
    std::fs::create_dir_all(&o365).unwrap();
    image::RgbImage::new(10, 20)
        .save(o365.join("dog.png"))
        .unwrap();
    let files = O365FilePaths::load(write(&dir, "map.json", r#"{"420": "dog.png"}"#)).unwrap();
    let r = RelationImage::from_o365(&images[2], &o365, &files).unwrap();
    assert_eq!((r.width, r.height, r.dataset.as_str()), (10, 20, "o365"));
    // A corrupt image file: an image error naming it.
    std::fs::write(o365.join("dog.png"), b"not an image").unwrap();
    let e = RelationImage::from_o365(&images[2], &o365, &files).unwrap_err();
    assert!(matches!(e, DataError::Image { .. }), "{e}");
}

#[test]
fn bad_records_name_the_image_and_field() {
    let dir = fresh_dir("errors");
    let img = |extra: &str, rel: &str| {
        format!(
            r#"[{{"image_id": 11, {extra} "objects": [{{"object_id": 0, "x": 0, "y": 0,
                "w": 1, "h": 1, "names": "a"}}], "relationships": [{rel}]}}]"#
        )
    };
    let ok_rel = r#"{"predicate": "on", "subject_id": 0, "object_id": 0, "confidence": 0.5}"#;
    for (i, (text, want)) in [
        (
            img("", ok_rel),
            "image 0 (image_id 11): dataset: missing field",
        ),
        (
            img(r#""dataset": "hico","#, ok_rel),
            "dataset: expected \"coco2017\" or \"o365\", found \"hico\"",
        ),
        (
            img(r#""dataset": 3,"#, ok_rel),
            "dataset: expected a string, found number 3",
        ),
        (
            img(
                r#""dataset": "o365","#,
                r#"{"predicate": "on", "subject_id": 0, "object_id": 0, "confidence": "high"}"#,
            ),
            "relationships[0].confidence: expected a number, found string \"high\"",
        ),
        (
            img(
                r#""dataset": "o365","#,
                r#"{"predicate": "on", "subject_id": 0, "object_id": 4}"#,
            ),
            "relationships[0].object_id: object id 4 is not among the image's objects",
        ),
    ]
    .iter()
    .enumerate()
    {
        let p = write(&dir, &format!("{i}.json"), text);
        let e = load_pseudo_relations(&p, RELATION_THRESHOLD).unwrap_err();
        assert!(matches!(e, DataError::Invalid { .. }), "{e}");
        let m = e.to_string();
        assert!(
            m.contains(&p.display().to_string()) && m.contains(want),
            "case {i}: {m}"
        );
    }
    let p = write(&dir, "trunc.json", r#"[{"image_id": 11, "dataset": "#);
    let e = load_pseudo_relations(&p, RELATION_THRESHOLD).unwrap_err();
    assert!(matches!(e, DataError::Json { .. }), "{e}");
}
