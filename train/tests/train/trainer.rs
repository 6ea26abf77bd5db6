//! Training on the small preset: the step of the official recipe drives the loss of a fixed
//! two-image batch down (overfit), frozen parameters stay put, and a bad batch is refused.

use burn::prelude::*;
use rlip_data::hico::{BoxAnnotation, HoiAnnotation, HoiImageAnnotation};
use rlip_model::rlip::{RlipConfig, RlipParSeDa};
use rlip_train::loss::{Criterion, CriterionConfig};
use rlip_train::samples::{hico_samples, oi_samples, to_input, vcoco_samples};
use rlip_train::trainer::{OptimConfig, Trainer};

use crate::common::{samples, scene, text};

/// A fresh temporary folder `{prefix}-{pid}` holding one blank `w × h` PNG called `name`.
fn image_dir(prefix: &str, name: &str, w: usize, h: usize) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(name),
        rlip_data::draw::encode_png(&scene(w, h, &[])),
    )
    .unwrap();
    dir
}

fn trainer(dev: &Device) -> Trainer {
    let cfg = RlipConfig::small();
    let (model, _) = RlipParSeDa::init(&cfg, dev);
    let optim = OptimConfig {
        lr: 1e-3,
        lr_backbone: 1e-4,
        lr_text: 1e-4,
        ..OptimConfig::default()
    };
    let crit = Criterion::new(CriterionConfig::default()).unwrap();
    Trainer::new(model, crit, optim, true, dev)
}

#[test]
fn overfits_a_two_image_batch() {
    let dev = rlip_backends::default_device().unwrap().autodiff();
    let mut t = trainer(&dev);
    let texts = text(&dev);
    let (imgs, tgts): (Vec<_>, Vec<_>) = samples().iter().map(|s| to_input(s, 2, 3)).unzip();
    let start = std::time::Instant::now();
    let first = t.step(&imgs, &tgts, &texts, 1.0).unwrap();
    let mut last = first.clone();
    let mut steps = 1;
    while steps < 300 && last.loss > 0.1 * first.loss {
        last = t.step(&imgs, &tgts, &texts, 1.0).unwrap();
        steps += 1;
    }
    println!(
        "loss {:.4} -> {:.4} in {steps} steps ({:.2} s/step)",
        first.loss,
        last.loss,
        start.elapsed().as_secs_f64() / steps as f64
    );
    assert!(
        last.loss <= 0.1 * first.loss,
        "loss {:.4} -> {:.4} after {steps} steps",
        first.loss,
        last.loss
    );
    // the matched boxes converge to the targets: within 200 steps in all, the L1 terms (Σ over
    // cx, cy, w, h of the normalised boxes, per pair) fall below 0.02, under half a pixel per
    // coordinate at 96 px
    let l1 = |log: &rlip_train::trainer::StepLog| {
        let term = |n: &str| log.terms.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        term("loss_sub_bbox")
            .unwrap()
            .max(term("loss_obj_bbox").unwrap())
    };
    while steps < 200 && l1(&last) >= 0.02 {
        last = t.step(&imgs, &tgts, &texts, 1.0).unwrap();
        steps += 1;
    }
    println!("box L1 {:.4} after {steps} steps", l1(&last));
    assert!(
        l1(&last) < 0.02,
        "box L1 {:.4} after {steps} steps",
        l1(&last)
    );
}

/// The official train-branch rules: images with out-of-range relation indices are dropped,
/// boxes clamped, degenerate boxes removed with their relations, multi-verb pairs merged.
#[test]
fn hico_samples_follow_the_official_loader() {
    let dir = image_dir("rlip-samples", "a.png", 50, 40);
    let bx = |bbox: [f64; 4], category_id| BoxAnnotation { bbox, category_id };
    let rel = |subject_id, object_id, category_id| HoiAnnotation {
        subject_id,
        object_id,
        category_id,
        hoi_category_id: None,
    };
    let good = HoiImageAnnotation {
        file_name: "a.png".into(),
        img_id: None,
        annotations: vec![
            bx([-5.0, 0.0, 20.0, 60.0], 1),  // clamped to the image
            bx([10.0, 10.0, 30.0, 30.0], 3), // object class 2
            bx([30.0, 30.0, 30.0, 35.0], 2), // zero width: removed
        ],
        hoi_annotation: vec![rel(0, 1, 2), rel(0, 1, 5), rel(0, 1, 2), rel(0, 2, 1)],
    };
    let bad = HoiImageAnnotation {
        hoi_annotation: vec![rel(0, 7, 1)],
        ..good.clone()
    };
    let (samples, dropped) = hico_samples(
        &[good, bad],
        &dir,
        &|id| rlip_data::hico::coco_id_to_index(id),
        10,
        128,
    )
    .unwrap();
    assert_eq!(dropped, 1);
    assert_eq!(samples.len(), 1);
    let s = &samples[0];
    assert_eq!(
        s.boxes,
        vec![[0.0, 0.0, 20.0, 40.0], [10.0, 10.0, 30.0, 30.0]]
    );
    assert_eq!(s.labels, vec![0, 2]);
    assert_eq!(s.pairs, vec![(0, Some(1), vec![1, 4])]);
    // model inputs: normalised cxcywh boxes, classes from the box labels, multi-hot verbs
    let ((v, h, w), t) = to_input(s, 10, 80);
    assert_eq!((h, w, v.len()), (40, 50, 3 * 40 * 50));
    assert_eq!(
        (t.sub_labels.clone(), t.obj_labels.clone()),
        (vec![0], vec![2])
    );
    assert_eq!(t.obj_boxes[0], [0.4, 0.5, 0.4, 0.5]);
    assert_eq!(t.sub_boxes[0], [0.2, 0.5, 0.4, 1.0]);
    let hot: Vec<usize> = (0..10).filter(|&k| t.verb_labels[0][k] == 1.0).collect();
    assert_eq!(hot, vec![1, 4]);
    std::fs::remove_dir_all(&dir).ok();
}

/// V-COCO (`datasets/vcoco.py`): verb roles 0-based, `object_id` −1 makes a pair without an
/// object (kept with its subject, object box all zeros, class `missing objects`), boxes past
/// `max_boxes` removed with their relations, malformed indices named.
#[test]
fn vcoco_samples_keep_pairs_without_objects() {
    let dir = image_dir("rlip-vcoco-samples", "v.png", 40, 40);
    let bx = |bbox: [f64; 4], category_id| BoxAnnotation { bbox, category_id };
    let rel = |subject_id, object_id, category_id| HoiAnnotation {
        subject_id,
        object_id,
        category_id,
        hoi_category_id: None,
    };
    let ann = HoiImageAnnotation {
        file_name: "v.png".into(),
        img_id: None,
        annotations: vec![
            bx([0.0, 0.0, 20.0, 40.0], 1),
            bx([20.0, 10.0, 30.0, 20.0], 44), // bottle, class 39
            bx([5.0, 5.0, 10.0, 10.0], 1),    // past max_boxes = 2
        ],
        // hold bottle, stand (no object), smile + stand merged, a relation of a removed box
        hoi_annotation: vec![rel(0, 1, 0), rel(0, -1, 1), rel(0, -1, 23), rel(2, -1, 1)],
    };
    let s = vcoco_samples(std::slice::from_ref(&ann), &dir, 29, 2).unwrap();
    assert_eq!(s[0].labels, vec![0, 39]);
    assert_eq!(
        s[0].pairs,
        vec![(0, Some(1), vec![0]), (0, None, vec![1, 23])]
    );
    let (_, t) = to_input(&s[0], 29, 80);
    assert_eq!(t.obj_labels, vec![39, 80]);
    assert_eq!(t.obj_boxes[1], [0.0; 4]);
    assert_eq!(t.sub_labels, vec![0, 0]);
    // verb 29 is outside the 29 roles; subject −1 is not a box
    for (bad, needle) in [
        (rel(0, 1, 29), "category_id 29"),
        (rel(-1, 1, 0), "box -1/1"),
    ] {
        let a = HoiImageAnnotation {
            hoi_annotation: vec![bad],
            ..ann.clone()
        };
        let e = vcoco_samples(&[a], &dir, 29, 2).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains("v.png"), "{e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Open Images (`datasets/oi_sgg.py`): images with out-of-range relation indices are dropped
/// and counted, classes are positions among the evaluated objects, subjects keep their class.
#[test]
fn oi_samples_follow_the_official_loader() {
    use rlip_data::oi::{OiBox, OiImageAnnotation, OiRelation};
    let dir = image_dir("rlip-oi-samples", "o.png", 40, 40);
    let rel = |subject_id, object_id, category_id| OiRelation {
        subject_id,
        object_id,
        category_id,
    };
    let good = OiImageAnnotation {
        file_name: "o.png".into(),
        annotations: vec![
            OiBox {
                bbox: [0.0, 0.0, 20.0, 20.0],
                category_id: 57,
            },
            OiBox {
                bbox: [10.0, 10.0, 40.0, 40.0],
                category_id: 3,
            },
        ],
        rel_annotations: vec![rel(0, 1, 4), rel(1, 0, 29), rel(0, 1, 7)],
    };
    let bad = OiImageAnnotation {
        rel_annotations: vec![rel(0, 2, 4)],
        ..good.clone()
    };
    let (s, dropped) = oi_samples(&[good.clone(), bad], &dir, &[3, 9, 57], 30, 200).unwrap();
    assert_eq!((s.len(), dropped), (1, 1));
    assert_eq!(s[0].labels, vec![2, 0]);
    assert_eq!(
        s[0].pairs,
        vec![(0, Some(1), vec![4, 7]), (1, Some(0), vec![29])]
    );
    let (_, t) = to_input(&s[0], 30, 3);
    assert_eq!((t.sub_labels, t.obj_labels), (vec![2, 0], vec![0, 2]));
    let e = oi_samples(&[good], &dir, &[3, 9], 30, 200)
        .unwrap_err()
        .to_string();
    assert!(e.contains("category_id 57") && e.contains("o.png"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A pair without an object trains on its subject: no object-box loss, finite terms.
#[test]
fn pairs_without_objects_have_no_object_box_loss() {
    let dev = rlip_backends::default_device().unwrap().autodiff();
    let mut t = trainer(&dev);
    let texts = text(&dev);
    let mut s = samples();
    for x in &mut s {
        x.pairs = vec![(0, None, vec![1])];
    }
    let (imgs, tgts): (Vec<_>, Vec<_>) = s.iter().map(|s| to_input(s, 2, 3)).unzip();
    let log = t.step(&imgs, &tgts, &texts, 1.0).unwrap();
    let term = |n: &str| log.terms.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
    assert_eq!(term("loss_obj_bbox"), Some(0.0));
    assert_eq!(term("loss_obj_giou"), Some(0.0));
    assert!(term("loss_sub_bbox").unwrap() > 0.0);
    assert!(log.loss.is_finite() && log.loss > 0.0);
}

/// Data parallelism: a step on `[x, x]` split over two shards (here both on the CPU device)
/// is exactly a single-device step on `x` — loss, gradient norm (the shards' gradients are
/// averaged, not summed) and updated parameters — over several steps.
#[test]
fn data_parallel_step_over_two_shards_averages_them() {
    let dev = rlip_backends::default_device().unwrap().autodiff();
    let (model, _) = RlipParSeDa::init(&RlipConfig::small(), &dev);
    let optim = OptimConfig {
        lr: 1e-3,
        lr_backbone: 1e-4,
        lr_text: 1e-4,
        ..OptimConfig::default()
    };
    let crit = || Criterion::new(CriterionConfig::default()).unwrap();
    let mut single = Trainer::new(model.clone(), crit(), optim.clone(), true, &dev);
    let mut dp = Trainer::new(model, crit(), optim, true, &dev)
        .with_data_parallel(vec![dev.clone()])
        .unwrap();
    assert_eq!(dp.shards(), 2);
    let texts = text(&dev);
    let (x, t) = to_input(&samples()[0], 2, 3);
    let on_x = |tr: &mut Trainer| {
        tr.step(
            std::slice::from_ref(&x),
            std::slice::from_ref(&t),
            &texts,
            1.0,
        )
        .unwrap()
    };
    for step in 0..3 {
        let a = on_x(&mut single);
        let b = dp
            .step(
                &[x.clone(), x.clone()],
                &[t.clone(), t.clone()],
                &texts,
                1.0,
            )
            .unwrap();
        assert_eq!((a.loss, a.grad_norm), (b.loss, b.grad_norm), "step {step}");
        assert_eq!(a.terms, b.terms, "step {step}");
    }
    let (pa, pb) = (
        rlip_model::checkpoint::collect_params(single.model()),
        rlip_model::checkpoint::collect_params(dp.model()),
    );
    assert_eq!(pa.len(), pb.len());
    for ((name, _, va), (_, _, vb)) in pa.iter().zip(&pb) {
        assert_eq!(va, vb, "{name}");
    }
    // a batch smaller than the shard count runs on fewer shards
    assert!(on_x(&mut dp).loss.is_finite());
}
