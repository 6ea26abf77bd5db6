//! The synthetic relational dataset: determinism, the official layouts parse with our readers,
//! annotations agree with the geometry, zero-shot split, label texts and tokenizer.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rlip_data::hico::{coco_id_to_index, load_hoi_annotations, load_hoi_list};
use rlip_data::labels::LabelSet;
use rlip_data::npy::read_npy;
use rlip_data::synth::{
    NUM_OBJECTS, NUM_RELATIONS, OBJECTS, PERSON, RARE_COMBOS, RELATIONS, SynthConfig, SynthSize,
    UNSEEN_COMBOS, generate, hoi_classes, relations_between, validity_matrix,
};

fn fresh_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("synth-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every file under `dir` (relative path → bytes).
fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn tiny(name: &str, seed: u64) -> PathBuf {
    let d = fresh_dir(name);
    let t = std::time::Instant::now();
    let s = generate(&d, SynthConfig::new(SynthSize::Tiny, seed)).unwrap();
    eprintln!("tiny generation: {:.3} s", t.elapsed().as_secs_f64());
    assert_eq!((s.train.images, s.test.images), (24, 12));
    d
}

#[test]
fn same_seed_gives_identical_bytes_and_other_seeds_differ() {
    let a = read_tree(&tiny("det-a", 11));
    let b = read_tree(&tiny("det-b", 11));
    let c = read_tree(&tiny("det-c", 12));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(v == &b[k], "{} differs between two runs", k.display());
    }
    assert!(a.iter().any(|(k, v)| c.get(k) != Some(v)));
    assert!(!a.keys().any(|k| k.to_string_lossy().contains(".tmp-")));
}

#[test]
fn refuses_a_non_empty_folder_unless_overwrite() {
    let d = tiny("overwrite", 3);
    let before = read_tree(&d);
    let err = generate(&d, SynthConfig::new(SynthSize::Tiny, 3)).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    let mut cfg = SynthConfig::new(SynthSize::Tiny, 3);
    cfg.overwrite = true;
    generate(&d, cfg).unwrap();
    assert_eq!(read_tree(&d), before);
}

#[test]
fn hico_files_parse_and_annotations_match_the_geometry() {
    let d = tiny("hico", 5);
    let ann = d.join("annotations");
    let list = load_hoi_list(ann.join("hoi_list_new.json")).unwrap();
    assert_eq!(list.len(), hoi_classes().len());
    let mut total_pairs = 0;
    for (file, set) in [
        ("trainval_hico.json", "train2015"),
        ("test_hico.json", "test2015"),
    ] {
        let images = load_hoi_annotations(ann.join(file)).unwrap();
        for img in &images {
            let png =
                rlip_data::preprocess::load_rgb(&d.join("images").join(set).join(&img.file_name))
                    .unwrap();
            assert_eq!((png.width, png.height), (128, 128));
            let classes: Vec<usize> = img
                .annotations
                .iter()
                .map(|b| coco_id_to_index(b.category_id).unwrap())
                .collect();
            assert!(classes.iter().all(|&k| k < NUM_OBJECTS));
            for b in &img.annotations {
                let [x0, y0, x1, y1] = b.bbox;
                assert!(
                    0.0 <= x0 && x0 < x1 && x1 <= 128.0,
                    "{}: {:?}",
                    img.file_name,
                    b
                );
                assert!(
                    0.0 <= y0 && y0 < y1 && y1 <= 128.0,
                    "{}: {:?}",
                    img.file_name,
                    b
                );
            }
            let mut masks: HashMap<(usize, usize), u32> = HashMap::new();
            for h in &img.hoi_annotation {
                let (s, o) = (h.subject_id as usize, h.object_id as usize);
                assert_eq!(classes[s], PERSON);
                assert_ne!(classes[o], PERSON);
                let r = (h.category_id - 1) as usize;
                assert!(r < NUM_RELATIONS);
                let hoi = &list[(h.hoi_category_id.unwrap() - 1) as usize];
                assert_eq!(hoi.verb_id, h.category_id);
                assert_eq!(hoi.object_cat, img.annotations[o].category_id);
                let m = masks.entry((s, o)).or_default();
                assert_eq!(*m & (1 << r), 0, "duplicate row");
                *m |= 1 << r;
            }
            total_pairs += masks.len();
            assert!(!masks.is_empty() && masks.len() <= 3, "{}", img.file_name);
            // Every (person, object) pair: annotated relations == geometry, others none.
            for (s, sb) in img.annotations.iter().enumerate() {
                if classes[s] != PERSON {
                    continue;
                }
                for (o, ob) in img.annotations.iter().enumerate() {
                    if classes[o] == PERSON {
                        continue;
                    }
                    let want = masks.get(&(s, o)).copied().unwrap_or(0);
                    assert_eq!(
                        relations_between(sb.bbox, ob.bbox),
                        want,
                        "{}: pair ({s}, {o})",
                        img.file_name
                    );
                }
            }
        }
    }
    assert!(total_pairs >= 36);
}

fn combo_counts(path: &Path) -> Vec<Vec<usize>> {
    let mut c = vec![vec![0; NUM_OBJECTS]; NUM_RELATIONS];
    for img in load_hoi_annotations(path).unwrap() {
        for h in &img.hoi_annotation {
            let o = coco_id_to_index(img.annotations[h.object_id as usize].category_id).unwrap();
            c[(h.category_id - 1) as usize][o] += 1;
        }
    }
    c
}

#[test]
fn unseen_combos_only_in_test_rare_combos_rare_and_validity_matrix() {
    for (size, name) in [(SynthSize::Tiny, "zs-tiny"), (SynthSize::Small, "zs-small")] {
        let d = fresh_dir(name);
        let summary = generate(&d, SynthConfig::new(size, 21)).unwrap();
        eprintln!(
            "{name}: {:.2} s, train {} pairs / {} hois, test {} / {}",
            summary.seconds,
            summary.train.pairs,
            summary.train.hois,
            summary.test.pairs,
            summary.test.hois
        );
        let ann = d.join("annotations");
        let train = combo_counts(&ann.join("trainval_hico.json"));
        let test = combo_counts(&ann.join("test_hico.json"));
        for &(r, o) in &UNSEEN_COMBOS {
            assert_eq!(train[r][o], 0, "{} {} in train", RELATIONS[r], OBJECTS[o]);
            assert!(
                test[r][o] > 0,
                "{} {} not in test",
                RELATIONS[r],
                OBJECTS[o]
            );
        }
        for &(r, o) in &RARE_COMBOS {
            assert!(
                (1..10).contains(&train[r][o]),
                "{} {}",
                RELATIONS[r],
                OBJECTS[o]
            );
            assert!(test[r][o] > 0);
        }
        assert_eq!(summary.train.combo_counts, train);
        assert_eq!(summary.test.combo_counts, test);
        // The validity matrix covers the data and is what corre_hico.npy holds.
        let valid = validity_matrix();
        let mat = read_npy(ann.join("corre_hico.npy")).unwrap();
        assert_eq!(mat.shape, vec![NUM_RELATIONS, NUM_OBJECTS]);
        let values = mat.as_f64().unwrap();
        for r in 0..NUM_RELATIONS {
            for o in 0..NUM_OBJECTS {
                assert_eq!(values[r * NUM_OBJECTS + o] == 1.0, valid[r][o]);
                if train[r][o] + test[r][o] > 0 {
                    assert!(valid[r][o], "{} {} not valid", RELATIONS[r], OBJECTS[o]);
                }
            }
            assert!(!valid[r][PERSON]);
        }
        // unseen_hoi.json: 0-based indices into hoi_list_new.json.
        let list = load_hoi_list(ann.join("hoi_list_new.json")).unwrap();
        let unseen: Vec<usize> =
            serde_json::from_slice(&std::fs::read(ann.join("unseen_hoi.json")).unwrap()).unwrap();
        let got: Vec<(usize, usize)> = unseen
            .iter()
            .map(|&i| {
                (
                    (list[i].verb_id - 1) as usize,
                    coco_id_to_index(list[i].object_cat).unwrap(),
                )
            })
            .collect();
        assert_eq!(got, UNSEEN_COMBOS.to_vec());
        if size == SynthSize::Small {
            // Every relation is well represented in training.
            for (name, &n) in RELATIONS.iter().zip(&summary.train.relation_counts) {
                assert!(n >= 40, "{name}: {n}");
            }
        }
    }
}

#[test]
fn labels_vg_file_and_tokenizer() {
    let d = tiny("labels", 9);
    let labels = LabelSet::from_file(&d.join("labels.json")).unwrap();
    assert_eq!(labels.objects, OBJECTS);
    assert_eq!(labels.relations, RELATIONS);

    // VG pre-training view of the train split.
    let vg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.join("annotations/scene_graphs_preprocessv1.json")).unwrap(),
    )
    .unwrap();
    let train = load_hoi_annotations(d.join("annotations/trainval_hico.json")).unwrap();
    let vg = vg.as_array().unwrap();
    assert_eq!(vg.len(), train.len());
    let mut seen_ids = std::collections::HashSet::new();
    for (img, h) in vg.iter().zip(&train) {
        assert_eq!(img["file_name"], h.file_name.as_str());
        let objs = img["objects"].as_array().unwrap();
        assert_eq!(objs.len(), h.annotations.len());
        let mut local = HashMap::new();
        for (i, (o, b)) in objs.iter().zip(&h.annotations).enumerate() {
            let id = o["object_id"].as_u64().unwrap();
            assert!(seen_ids.insert(id));
            local.insert(id, i);
            let k = coco_id_to_index(b.category_id).unwrap();
            assert_eq!(o["names"], OBJECTS[k]);
            let xywh = ["x", "y", "w", "h"].map(|k| o[k].as_f64().unwrap());
            assert_eq!(
                [xywh[0], xywh[1], xywh[0] + xywh[2], xywh[1] + xywh[3]],
                b.bbox
            );
        }
        let rels = img["relationships"].as_array().unwrap();
        assert_eq!(rels.len(), h.hoi_annotation.len());
        for (r, hh) in rels.iter().zip(&h.hoi_annotation) {
            assert_eq!(
                local[&r["subject_id"].as_u64().unwrap()] as i64,
                hh.subject_id
            );
            assert_eq!(
                local[&r["object_id"].as_u64().unwrap()] as i64,
                hh.object_id
            );
            assert_eq!(r["predicate"], RELATIONS[(hh.category_id - 1) as usize]);
        }
    }

    // Tokenizer: byte-level BPE, RoBERTa specials, small vocabulary, short labels.
    let tok = tokenizers::Tokenizer::from_file(d.join("tokenizer.json")).unwrap();
    assert!(tok.get_vocab_size(true) <= 256);
    for (i, t) in ["<s>", "<pad>", "</s>", "<unk>"].iter().enumerate() {
        assert_eq!(tok.token_to_id(t), Some(i as u32), "{t}");
    }
    for text in labels.flat_texts() {
        let enc = tok.encode(text.as_str(), true).unwrap();
        let ids = enc.get_ids();
        assert_eq!(ids.first(), Some(&0), "{text}");
        assert_eq!(ids.last(), Some(&2), "{text}");
        assert!(ids.len() >= 3 && ids.len() <= 14, "{text}: {ids:?}");
        assert!(
            !ids[1..ids.len() - 1].iter().any(|&i| i <= 3),
            "{text}: {ids:?}"
        );
        assert_eq!(tok.decode(&ids[1..ids.len() - 1], true).unwrap(), text);
    }
}
