//! Pre-training samples, vocabulary and the per-batch label texts of the official `engine.py`
//! (`merge_batch_data` / `sample_text`).

use std::collections::HashSet;
use std::path::PathBuf;

use rlip_data::DataError;
use rlip_data::labels::NO_OBJECTS;
use rlip_data::pretrain::{
    LabelBatch, PairLabels, RelationImage, SamplingStrategy, TextSampling, Vocabulary,
    drop_images_without_relations, mixed_relation_cap, sample_label_texts, vg_relation_cap,
};
use rlip_data::rng::Rng;

fn image(names: &[&str], rels: &[(usize, usize, &str)]) -> RelationImage {
    RelationImage {
        image_path: PathBuf::from(format!("img-{}.jpg", names.join("-"))),
        width: 100,
        height: 100,
        boxes: names.iter().map(|_| [0.0, 0.0, 10.0, 10.0]).collect(),
        box_names: names.iter().map(|s| s.to_string()).collect(),
        relations: rels
            .iter()
            .map(|(s, o, p)| (*s, *o, p.to_string()))
            .collect(),
        dataset: "vg".into(),
    }
}

fn counts(names: &[(&str, u64)]) -> Vec<(String, u64)> {
    names.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

/// A vocabulary of `n` objects `o0..` and `n` relations `r0..`, counts decreasing.
fn big_vocab(n: usize) -> Vocabulary {
    let list = |p: &str| {
        (0..n)
            .map(|i| (format!("{p}{i}"), (n - i) as u64))
            .collect()
    };
    Vocabulary {
        objects: list("o"),
        relations: list("r"),
    }
}

fn cfg(num_texts: usize, strategy: SamplingStrategy) -> TextSampling {
    TextSampling {
        num_texts,
        strategy,
        ..TextSampling::default()
    }
}

#[test]
fn official_defaults() {
    assert_eq!(mixed_relation_cap(200), 100);
    assert_eq!(vg_relation_cap(200), 200);
    let d = TextSampling::default();
    assert_eq!(
        (d.num_texts, d.strategy, d.relation_cap),
        (500, SamplingStrategy::Freq, 100)
    );
    assert_eq!((d.object_budget(), d.relation_budget()), (333, 167));
    let c = cfg(7, SamplingStrategy::Freq);
    assert_eq!((c.object_budget(), c.relation_budget()), (4, 3));
}

#[test]
fn vocabulary_counts_most_frequent_first_ties_by_first_appearance() {
    let a = image(&["tree", "man", "man"], &[(1, 0, "near"), (2, 0, "under")]);
    let b = image(&["tree", "dog"], &[(1, 0, "under")]);
    let v = Vocabulary::count([&a, &b]);
    assert_eq!(v.objects, counts(&[("tree", 2), ("man", 2), ("dog", 1)]));
    assert_eq!(v.relations, counts(&[("under", 2), ("near", 1)]));
    let k = v.to_keep_names();
    assert_eq!(k.object_names, ["tree", "man", "dog"]);
    assert_eq!(Vocabulary::from_keep_names(&k, "mem".as_ref()).unwrap(), v);
}

#[test]
fn fuse_sums_counts_in_the_official_order() {
    // Dataset A saw x once then y twice (sorted: y, x); dataset B saw x once.
    let a = image(&["x", "y", "y"], &[]);
    let b = image(&["x"], &[]);
    let fused = Vocabulary::fuse(&[Vocabulary::count([&a]), Vocabulary::count([&b])]);
    // The official fusion starts from A's sorted order, so the tie x = y = 2 keeps y first,
    // unlike counting the concatenation (first appearance: x).
    assert_eq!(fused.objects, counts(&[("y", 2), ("x", 2)]));
    assert_eq!(
        Vocabulary::count([&a, &b]).objects,
        counts(&[("x", 2), ("y", 2)])
    );
    let three = Vocabulary::fuse(&[
        Vocabulary {
            objects: counts(&[("a", 5)]),
            relations: counts(&[("on", 1)]),
        },
        Vocabulary {
            objects: counts(&[("b", 7), ("a", 1)]),
            relations: counts(&[("has", 1)]),
        },
    ]);
    assert_eq!(three.objects, counts(&[("b", 7), ("a", 6)]));
    assert_eq!(three.relations, counts(&[("on", 1), ("has", 1)]));
}

#[test]
fn images_without_relations_are_dropped() {
    let mut v = vec![image(&["a"], &[]), image(&["a", "b"], &[(0, 1, "on")])];
    assert_eq!(drop_images_without_relations(&mut v), 1);
    assert_eq!(v.len(), 1);
}

fn sample(
    images: &[&RelationImage],
    vocab: &Vocabulary,
    c: &TextSampling,
    seed: u64,
) -> LabelBatch {
    sample_label_texts(images, vocab, c, &mut Rng::new(seed)).unwrap()
}

#[test]
fn labels_cap_relations_and_merge_pairs() {
    let a = image(
        &["man", "horse", "man"],
        &[
            (0, 1, "riding"),
            (0, 1, "riding"), // duplicate triplet
            (0, 1, "on"),     // same pair, second label
            (2, 0, "near"),
            (0, 2, "behind"), // beyond the cap of 4
        ],
    );
    let b = image(&["dog", "man"], &[(1, 0, "walking")]);
    let c = TextSampling {
        num_texts: 0, // the official default: positives only
        relation_cap: 4,
        ..TextSampling::default()
    };
    let batch = sample(&[&a, &b], &Vocabulary::default(), &c, 1);
    assert_eq!(batch.object_texts, ["man", "horse", "dog"]);
    assert_eq!(batch.relation_texts, ["riding", "on", "near", "walking"]);
    assert_eq!(
        (batch.num_positive_objects, batch.num_positive_relations),
        (3, 4)
    );
    assert_eq!(batch.images[0].boxes, [0, 1, 0]);
    assert_eq!(
        batch.images[0].pairs,
        [
            PairLabels {
                subject: 0,
                object: 1,
                relations: vec![0, 1]
            },
            PairLabels {
                subject: 2,
                object: 0,
                relations: vec![2]
            },
        ]
    );
    assert_eq!(batch.images[1].boxes, [2, 0]);
    assert_eq!(
        batch.images[1].pairs,
        [PairLabels {
            subject: 1,
            object: 0,
            relations: vec![3]
        }]
    );
    assert_eq!(a.relation_texts(4), ["riding", "on", "near"]);
    assert_eq!(a.object_texts(), ["man", "horse"]);
    let flat = batch.label_set().flat_texts();
    assert_eq!(flat[3], NO_OBJECTS);
    assert_eq!(flat.len(), 3 + 1 + 4);
}

#[test]
fn sampling_fills_two_thirds_objects_one_third_relations() {
    let a = image(&["o5", "cat"], &[(1, 0, "r7"), (0, 1, "chasing")]);
    let vocab = big_vocab(1000);
    let batch = sample(&[&a], &vocab, &TextSampling::default(), 3);
    assert_eq!(batch.object_texts.len(), 333);
    assert_eq!(batch.relation_texts.len(), 167);
    // Positives first (including names outside the vocabulary), then distinct negatives.
    assert_eq!(&batch.object_texts[..2], ["o5", "cat"]);
    assert_eq!(&batch.relation_texts[..2], ["r7", "chasing"]);
    for texts in [&batch.object_texts, &batch.relation_texts] {
        let set: HashSet<_> = texts.iter().collect();
        assert_eq!(set.len(), texts.len(), "no text twice");
    }
    assert!(batch.object_texts[2..].iter().all(|t| t.starts_with('o')));
    assert!(batch.relation_texts[2..].iter().all(|t| t.starts_with('r')));
}

#[test]
fn sampling_is_deterministic_given_the_rng() {
    let a = image(&["o1"], &[(0, 0, "r1")]);
    let vocab = big_vocab(300);
    let c = cfg(60, SamplingStrategy::Freq);
    let x = sample(&[&a], &vocab, &c, 42);
    assert_eq!(x, sample(&[&a], &vocab, &c, 42));
    assert_ne!(x.object_texts, sample(&[&a], &vocab, &c, 43).object_texts);
    let r = cfg(60, SamplingStrategy::Random);
    assert_eq!(sample(&[&a], &vocab, &r, 5), sample(&[&a], &vocab, &r, 5));
}

#[test]
fn positives_are_always_present_even_beyond_the_budget() {
    let a = image(&["a", "b", "c", "d"], &[(0, 1, "x"), (2, 3, "y")]);
    let batch = sample(&[&a], &big_vocab(50), &cfg(3, SamplingStrategy::Freq), 0);
    // Budgets 2 objects / 1 relation: the 4 + 2 positives stay, nothing is drawn.
    assert_eq!(batch.object_texts, ["a", "b", "c", "d"]);
    assert_eq!(batch.relation_texts, ["x", "y"]);
    // Over many seeds, every positive stays whatever is drawn.
    let vocab = big_vocab(20);
    for seed in 0..50 {
        let b = sample(&[&a], &vocab, &cfg(30, SamplingStrategy::Freq), seed);
        assert_eq!(&b.object_texts[..4], ["a", "b", "c", "d"]);
        assert_eq!(&b.relation_texts[..2], ["x", "y"]);
        assert_eq!(b.object_texts.len(), 20);
    }
}

#[test]
fn a_vocabulary_smaller_than_the_budget_is_used_up() {
    let a = image(&["cat"], &[(0, 0, "on")]);
    let vocab = Vocabulary {
        objects: counts(&[("cat", 9), ("dog", 5), ("cup", 1), ("never", 0)]),
        relations: counts(&[("on", 3), ("has", 2)]),
    };
    let batch = sample(&[&a], &vocab, &TextSampling::default(), 7);
    // Frequency sampling cannot draw a zero-count name; the official loop would never end.
    let objs: HashSet<_> = batch.object_texts.iter().map(String::as_str).collect();
    assert_eq!(objs, HashSet::from(["cat", "dog", "cup"]));
    assert_eq!(batch.object_texts[0], "cat");
    assert_eq!(batch.relation_texts, ["on", "has"]);
    let uniform = sample(&[&a], &vocab, &cfg(500, SamplingStrategy::Random), 7);
    assert_eq!(
        uniform.object_texts.len(),
        4,
        "uniform sampling reaches every name"
    );
}

#[test]
fn frequent_names_are_drawn_more_often() {
    let a = image(&["p"], &[]);
    let vocab = Vocabulary {
        objects: counts(&[("common", 900), ("mid", 99), ("rare", 1)]),
        relations: vec![],
    };
    // 3 texts: 2 objects (one positive + one draw), 1 relation (none available).
    let c = cfg(3, SamplingStrategy::Freq);
    let mut hits = std::collections::HashMap::new();
    let mut rng = Rng::new(11);
    for _ in 0..4000 {
        let b = sample_label_texts(&[&a], &vocab, &c, &mut rng).unwrap();
        assert_eq!(b.object_texts.len(), 2);
        assert!(b.relation_texts.is_empty());
        *hits.entry(b.object_texts[1].clone()).or_insert(0usize) += 1;
    }
    let (common, mid, rare) = (
        hits["common"],
        hits["mid"],
        hits.get("rare").copied().unwrap_or(0),
    );
    assert!((3450..3750).contains(&common), "{hits:?}");
    assert!((300..500).contains(&mid), "{hits:?}");
    assert!(rare < 20, "{hits:?}");
    // Uniform sampling ignores the counts.
    let u = cfg(3, SamplingStrategy::Random);
    let mut rare_u = 0;
    for _ in 0..3000 {
        let b = sample_label_texts(&[&a], &vocab, &u, &mut rng).unwrap();
        rare_u += usize::from(b.object_texts[1] == "rare");
    }
    assert!((850..1150).contains(&rare_u), "{rare_u}");
}

#[test]
fn inconsistent_images_are_errors_not_panics() {
    let sample_err = |a: &RelationImage| {
        sample_label_texts(
            &[a],
            &Vocabulary::default(),
            &TextSampling::default(),
            &mut Rng::new(0),
        )
        .unwrap_err()
    };
    let mut a = image(&["a", "b"], &[(0, 5, "on")]);
    let e = sample_err(&a);
    assert!(matches!(e, DataError::Invalid { .. }), "{e}");
    assert!(
        e.to_string().contains("img-a-b.jpg") && e.to_string().contains("box 0/5"),
        "{e}"
    );
    a.relations.clear();
    a.box_names.pop();
    let e = sample_err(&a);
    assert!(e.to_string().contains("1 box names for 2 boxes"), "{e}");
}
