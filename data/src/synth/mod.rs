//! A deterministic synthetic relational dataset in the official RLIPv2 layouts, small enough to
//! train a small RLIPv2 model on a CPU in minutes (the demo) and to drive tests.
//!
//! Each image shows one or two stick-figure persons, each in one or two relations with an
//! object (1–3 related pairs per image), plus up to two unrelated distractor objects, on a
//! textured background. Relations are defined by geometry and contact between the person's box
//! and the object's box ([`relations_between`]) and are drawn so that they are visible: an arm
//! reaches a held object, both arms go up to a carried one, a leg reaches a kicked ball, the
//! legs straddle a ridden object, the eyes turn to a watched object. Some relations imply others
//! (`carry` ⇒ `above` + `touch`; `hold`, `ride`, `kick` ⇒ `touch`), so pairs can be multi-label.
//! Everything is a pure function of the seed: the same configuration gives byte-identical files.
//!
//! # Classes
//!
//! Objects ([`OBJECTS`], person first): person, ball, box, kite, horse, bicycle, cup, umbrella,
//! skateboard, bird. Object class *k* is written with the COCO category id
//! `COCO_VALID_OBJ_IDS[k]` (= *k* + 1, ids 1..=10), so the official `_valid_obj_ids.index(id)`
//! and our [`crate::hico::coco_id_to_index`] both map it back to *k*. Relations ([`RELATIONS`]):
//! hold, carry, ride, kick, look at, next to, above, touch; relation *r* is verb id *r* + 1.
//!
//! The valid (relation, object) combinations ([`validity_matrix`]) are the common ones, four
//! rare ones ([`RARE_COMBOS`], fewer than 10 training instances at every size) and four unseen
//! ones ([`UNSEEN_COMBOS`], only in the test split, for zero-shot evaluation), with what they
//! imply.
//!
//! # Folder layout
//!
//! | file | content |
//! |---|---|
//! | `images/train2015/synth_train2015_NNNNNNNN.png`, `images/test2015/synth_test2015_NNNNNNNN.png` | RGB PNG images (`image_size`², default 128²), numbered from 1 |
//! | `annotations/trainval_hico.json`, `annotations/test_hico.json` | HICO-DET in the PPDM layout read by `datasets/hico.py` and [`crate::hico::load_hoi_annotations`]: a list of `{"file_name", "annotations": [{"bbox": [x0, y0, x1, y1], "category_id"}], "hoi_annotation": [{"subject_id", "object_id", "category_id", "hoi_category_id"}]}`; persons come first in `annotations`; boxes are in pixels, `x1`/`y1` exclusive; one `hoi_annotation` row per relation of a pair; `category_id` is the verb id 1..=8, `hoi_category_id` the 1-based index into `hoi_list_new.json` |
//! | `annotations/corre_hico.npy` | float64 `[num_relations, num_objects]` = `[8, 10]` validity matrix (1 = valid) |
//! | `annotations/hoi_list_new.json` | the valid combinations in the layout of the official `hoi_list_new.json`: `[{"id": "001", "object_cat", "object_index", "object_name", "verb_id", "verb_name"}]`, ordered by object, then verb |
//! | `annotations/unseen_hoi.json` | the zero-shot unseen combinations: a JSON list of 0-based indices into `hoi_list_new.json` (the form of `unseen_idx` in the official `datasets/hico.py::build`) |
//! | `annotations/scene_graphs_preprocessv1.json` | the train split as VG pre-training data, in the layout `datasets/vg.py` reads: `[{"image_id", "file_name", "width", "height", "objects": [{"object_id", "x", "y", "w", "h", "names"}], "relationships": [{"relationship_id", "predicate", "subject_id", "object_id"}]}]`; `names` is one string, ids are unique over the file, multi-label pairs have one relationship per predicate. `file_name` (under `images/train2015/`), `width` and `height` are additions: the official loader opens `images/{image_id}.jpg` instead |
//! | `annotations/vg_keep_names_v1_no_lias_freq.json` | the official keep-names file of the VG loader: `{"relationship_names", "object_names", "relationship_freq", "object_freq"}` (names in class order, training counts) |
//! | `labels.json` | `{"objects": [...], "relations": [...]}` ([`crate::labels::LabelSet::from_file`]) |
//! | `tokenizer.json` | a byte-level BPE tokenizer trained on the label texts (with `"no objects"`): `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, RoBERTa post-processor; at most 256 entries |
//! | `synth.json` | the configuration, class lists, rare / unseen combinations and counts |
//!
//! Every file is written atomically (a temporary file in the same folder, then a rename).

mod render;
mod scene;
mod write;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde::Serialize;

pub use write::npy_f64_bytes;

use crate::DataError;
use crate::fsutil::{write_atomic, write_err};
use crate::hico::{BoxAnnotation, COCO_VALID_OBJ_IDS, HoiAnnotation, HoiImageAnnotation};
use scene::{Rng, Scene, bit, sample_scene};
use write::{HoiListEntry, VgImage, VgKeepNames, VgObject, VgRelationship, write_json};

/// Object names, in class order (person first).
pub const OBJECTS: [&str; NUM_OBJECTS] = [
    "person",
    "ball",
    "box",
    "kite",
    "horse",
    "bicycle",
    "cup",
    "umbrella",
    "skateboard",
    "bird",
];

/// Relation names, in class order (relation *r* has verb id *r* + 1).
pub const RELATIONS: [&str; NUM_RELATIONS] = [
    "hold", "carry", "ride", "kick", "look at", "next to", "above", "touch",
];

/// Number of object classes (person included).
pub const NUM_OBJECTS: usize = 10;
/// Number of relation classes.
pub const NUM_RELATIONS: usize = 8;
/// Relations that are placed on purpose (all but `touch`, which is only implied).
pub(crate) const NUM_PRIMARY: usize = 7;

/// Object class: person.
pub const PERSON: usize = 0;
/// Object class: ball.
pub const BALL: usize = 1;
/// Object class: box (a crate).
pub const BOX: usize = 2;
/// Object class: kite.
pub const KITE: usize = 3;
/// Object class: horse.
pub const HORSE: usize = 4;
/// Object class: bicycle.
pub const BICYCLE: usize = 5;
/// Object class: cup.
pub const CUP: usize = 6;
/// Object class: umbrella.
pub const UMBRELLA: usize = 7;
/// Object class: skateboard.
pub const SKATEBOARD: usize = 8;
/// Object class: bird.
pub const BIRD: usize = 9;

/// Relation class: hold (object at a hand, arm stretched to it).
pub const REL_HOLD: usize = 0;
/// Relation class: carry (object resting on the head, arms raised).
pub const REL_CARRY: usize = 1;
/// Relation class: ride (person sitting on / standing on the object).
pub const REL_RIDE: usize = 2;
/// Relation class: kick (object at a foot, leg stretched to it).
pub const REL_KICK: usize = 3;
/// Relation class: look at (object beside the head, no contact, eyes turned to it).
pub const REL_LOOK_AT: usize = 4;
/// Relation class: next to (object on the ground beside the person, no contact).
pub const REL_NEXT_TO: usize = 5;
/// Relation class: above (object above the person's head).
pub const REL_ABOVE: usize = 6;
/// Relation class: touch (any contact; implied by hold, carry, ride and kick).
pub const REL_TOUCH: usize = 7;

pub(crate) const HOLD: u32 = 1 << REL_HOLD;
pub(crate) const CARRY: u32 = 1 << REL_CARRY;
pub(crate) const RIDE: u32 = 1 << REL_RIDE;
pub(crate) const KICK: u32 = 1 << REL_KICK;
pub(crate) const LOOK_AT: u32 = 1 << REL_LOOK_AT;
pub(crate) const NEXT_TO: u32 = 1 << REL_NEXT_TO;
pub(crate) const ABOVE: u32 = 1 << REL_ABOVE;
pub(crate) const TOUCH: u32 = 1 << REL_TOUCH;

/// The common (relation, object) combinations the generator places.
const COMMON_COMBOS: &[(usize, usize)] = &[
    (REL_HOLD, BALL),
    (REL_HOLD, BOX),
    (REL_HOLD, CUP),
    (REL_HOLD, UMBRELLA),
    (REL_HOLD, SKATEBOARD),
    (REL_CARRY, BOX),
    (REL_CARRY, SKATEBOARD),
    (REL_RIDE, HORSE),
    (REL_RIDE, BICYCLE),
    (REL_KICK, BALL),
    (REL_KICK, CUP),
    (REL_LOOK_AT, KITE),
    (REL_LOOK_AT, BIRD),
    (REL_LOOK_AT, BALL),
    (REL_NEXT_TO, BOX),
    (REL_NEXT_TO, HORSE),
    (REL_NEXT_TO, BICYCLE),
    (REL_NEXT_TO, BALL),
    (REL_NEXT_TO, CUP),
    (REL_ABOVE, KITE),
    (REL_ABOVE, BIRD),
    (REL_ABOVE, BALL),
];

/// Rare (relation, object) combinations: a handful of training instances at every size
/// (1 tiny, 4 small, 6 demo) and a few in the test split.
pub const RARE_COMBOS: [(usize, usize); 4] = [
    (REL_HOLD, KITE),
    (REL_CARRY, CUP),
    (REL_NEXT_TO, SKATEBOARD),
    (REL_ABOVE, UMBRELLA),
];

/// Unseen (relation, object) combinations: never in the training split, planted in the test
/// split (zero-shot evaluation). Their relations and objects are all seen in other combinations.
pub const UNSEEN_COMBOS: [(usize, usize); 4] = [
    (REL_KICK, BOX),
    (REL_CARRY, BALL),
    (REL_LOOK_AT, CUP),
    (REL_RIDE, SKATEBOARD),
];

/// The relation mask a placed relation (bit) implies.
pub(crate) fn implied_relations(primary: u32) -> u32 {
    match primary {
        HOLD | RIDE | KICK => primary | TOUCH,
        CARRY => CARRY | ABOVE | TOUCH,
        other => other,
    }
}

/// The objects of the common combinations of primary relation `rel`.
pub(crate) fn common_objects(rel: usize) -> Vec<usize> {
    COMMON_COMBOS
        .iter()
        .filter(|c| c.0 == rel)
        .map(|c| c.1)
        .collect()
}

/// The relations between a person box and an object box (`[x0, y0, x1, y1]`, pixels), as a bit
/// mask (bit *r* = [`RELATIONS`]\[*r*\]). With `W`, `H` the person's width and height:
///
/// - touch: the boxes intersect;
/// - hold: touch, object centre `0.30H..0.56H` below the person's top, at least `0.35W` off the
///   person's centre line, object bottom above `0.8H`;
/// - carry: touch, object bottom at most `0.08H` below the person's top, centre within `0.25W`;
/// - ride: touch, object bottom at least 2 px below the person's feet, object top at least
///   `0.35H` below the person's top, centre within `0.35W`;
/// - kick: touch, object top at least `0.6H` below the person's top, object bottom within
///   `0.12H` of the feet, centre at least `0.4W` off the centre line;
/// - look at: no contact, horizontal gap `2..1.3W`, object centre from `0.15H` above to `0.3H`
///   below the person's top;
/// - next to: no contact, horizontal gap `2..0.9W`, object bottom within `0.12H` of the feet;
/// - above: object bottom at most `0.08H` below and at most `0.9H` above the person's top,
///   object centre horizontally within the person's box.
///
/// The generator guarantees that every annotated pair has exactly its annotated relations under
/// this function and every other (person, object) pair none.
pub fn relations_between(person: [f64; 4], object: [f64; 4]) -> u32 {
    scene::relation_mask(person, object, false)
}

/// The relation indices set in `mask`, ascending.
pub fn mask_relations(mask: u32) -> Vec<usize> {
    (0..NUM_RELATIONS)
        .filter(|r| mask & (1 << r) != 0)
        .collect()
}

/// The COCO category id written for object class `object` (`COCO_VALID_OBJ_IDS[object]`).
pub fn category_id(object: usize) -> i64 {
    COCO_VALID_OBJ_IDS[object]
}

/// Valid (relation, object) combinations: `[relation][object]`.
pub fn validity_matrix() -> [[bool; NUM_OBJECTS]; NUM_RELATIONS] {
    let mut m = [[false; NUM_OBJECTS]; NUM_RELATIONS];
    for &(r, o) in COMMON_COMBOS
        .iter()
        .chain(RARE_COMBOS.iter())
        .chain(UNSEEN_COMBOS.iter())
    {
        for ri in mask_relations(implied_relations(bit(r))) {
            m[ri][o] = true;
        }
    }
    m
}

/// The valid combinations as HOI classes `(relation, object)`, ordered by object then relation
/// (the order of `hoi_list_new.json`; HOI class id = position + 1).
pub fn hoi_classes() -> Vec<(usize, usize)> {
    let m = validity_matrix();
    (0..NUM_OBJECTS)
        .flat_map(|o| (0..NUM_RELATIONS).map(move |r| (r, o)))
        .filter(|&(r, o)| m[r][o])
        .collect()
}

/// Dataset size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SynthSize {
    /// 24 training and 12 test images (tests; well under a second).
    Tiny,
    /// 400 training and 100 test images.
    Small,
    /// 3000 training and 400 test images (the CPU training demo).
    Demo,
}

impl SynthSize {
    /// The lower-case name (`tiny`, `small`, `demo`).
    pub fn name(self) -> &'static str {
        match self {
            SynthSize::Tiny => "tiny",
            SynthSize::Small => "small",
            SynthSize::Demo => "demo",
        }
    }

    /// `(training images, test images)`.
    pub fn images(self) -> (usize, usize) {
        match self {
            SynthSize::Tiny => (24, 12),
            SynthSize::Small => (400, 100),
            SynthSize::Demo => (3000, 400),
        }
    }

    /// `(rare instances in train, rare instances in test, unseen instances in test)`, per
    /// combination.
    fn plants(self) -> (usize, usize, usize) {
        match self {
            SynthSize::Tiny => (1, 1, 1),
            SynthSize::Small => (4, 3, 8),
            SynthSize::Demo => (6, 4, 16),
        }
    }
}

impl FromStr for SynthSize {
    type Err = String;

    /// `tiny`, `small` or `demo` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tiny" => Ok(SynthSize::Tiny),
            "small" => Ok(SynthSize::Small),
            "demo" => Ok(SynthSize::Demo),
            other => Err(format!(
                "unknown size {other:?} (expected tiny, small or demo)"
            )),
        }
    }
}

/// Options of [`generate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SynthConfig {
    /// How many images.
    pub size: SynthSize,
    /// Seed of everything; the same configuration gives byte-identical files.
    pub seed: u64,
    /// Side of the square images in pixels (96..=4096; all sizes scale with it).
    pub image_size: usize,
    /// Write into an existing non-empty folder (replacing the files of a previous run).
    #[serde(skip)]
    pub overwrite: bool,
}

impl SynthConfig {
    /// `size` with `seed`, 128×128 images, no overwriting.
    pub fn new(size: SynthSize, seed: u64) -> Self {
        SynthConfig {
            size,
            seed,
            image_size: 128,
            overwrite: false,
        }
    }
}

/// Counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SplitSummary {
    /// Images.
    pub images: usize,
    /// Person boxes.
    pub persons: usize,
    /// Non-person boxes (related objects and distractors).
    pub objects: usize,
    /// Related (person, object) pairs.
    pub pairs: usize,
    /// Relation instances (`hoi_annotation` rows); a multi-label pair counts once per relation.
    pub hois: usize,
    /// Relation instances per relation class.
    pub relation_counts: Vec<usize>,
    /// Relation instances per combination, `[relation][object]`.
    pub combo_counts: Vec<Vec<usize>>,
}

impl SplitSummary {
    fn new() -> Self {
        SplitSummary {
            relation_counts: vec![0; NUM_RELATIONS],
            combo_counts: vec![vec![0; NUM_OBJECTS]; NUM_RELATIONS],
            ..Default::default()
        }
    }
}

/// Instances of one (relation, object) combination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComboCount {
    /// Relation class.
    pub relation: usize,
    /// Object class.
    pub object: usize,
    /// `"relation object"`, e.g. `"kick box"`.
    pub name: String,
    /// 0-based index into `hoi_list_new.json`.
    pub hoi_index: usize,
    /// Instances in the training split.
    pub train: usize,
    /// Instances in the test split.
    pub test: usize,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthSummary {
    /// The dataset folder.
    pub out_dir: PathBuf,
    /// The configuration.
    pub config: SynthConfig,
    /// Training split counts.
    pub train: SplitSummary,
    /// Test split counts.
    pub test: SplitSummary,
    /// Combinations with 1..=9 training instances (the Default-setting "rare" HOIs), including
    /// [`RARE_COMBOS`] and, at small sizes, common combinations that happen to be rare.
    pub rare: Vec<ComboCount>,
    /// The [`UNSEEN_COMBOS`] (no training instance).
    pub unseen: Vec<ComboCount>,
    /// Wall-clock seconds of the generation (not written to any file).
    #[serde(skip)]
    pub seconds: f64,
}

/// Folder names of a split: (`images/` subfolder and file-name infix, annotation file).
const SPLITS: [(&str, &str); 2] = [
    ("train2015", "trainval_hico.json"),
    ("test2015", "test_hico.json"),
];

fn image_name(set: &str, i: usize) -> String {
    format!("synth_{set}_{:08}.png", i + 1)
}

/// Spreads `items` evenly over `n` images: entry `k` goes to image `k * n / items.len()`.
fn spread(n: usize, items: Vec<(usize, usize)>) -> Vec<Option<(usize, usize)>> {
    let mut plan = vec![None; n];
    let m = items.len();
    assert!(m <= n, "more planted pairs than images");
    for (k, it) in items.into_iter().enumerate() {
        plan[k * n / m] = Some(it);
    }
    plan
}

fn repeat_interleaved(combos: &[(usize, usize)], times: usize) -> Vec<(usize, usize)> {
    (0..times).flat_map(|_| combos.iter().copied()).collect()
}

/// One generated image: its scene and PNG bytes.
struct Generated {
    scene: Scene,
    png: Vec<u8>,
}

fn generate_image(
    seed: u64,
    split: usize,
    index: usize,
    size: i32,
    forced: Option<(usize, usize)>,
) -> Generated {
    let mut rng = Rng::derive(seed, split as u64 + 1, index as u64);
    let scene = sample_scene(&mut rng, size, forced);
    let img = render::render(&scene);
    Generated {
        scene,
        png: crate::draw::encode_png(&img),
    }
}

/// Generates the images of one split (in parallel over the available cores; the result does not
/// depend on the number of threads).
fn generate_split(
    cfg: &SynthConfig,
    split: usize,
    plan: &[Option<(usize, usize)>],
) -> Vec<Generated> {
    let n = plan.len();
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(n.max(1));
    let size = cfg.image_size as i32;
    let chunk = n.div_ceil(threads).max(1);
    let mut out: Vec<Generated> = Vec::with_capacity(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                s.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(j, &forced)| {
                            generate_image(cfg.seed, split, c * chunk + j, size, forced)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            out.extend(h.join().expect("synthetic image generation panicked"));
        }
    });
    out
}

fn ensure_dir(path: &Path) -> Result<(), DataError> {
    std::fs::create_dir_all(path).map_err(|e| write_err(path, e))
}

fn is_nonempty_dir(path: &Path) -> Result<bool, DataError> {
    match std::fs::read_dir(path) {
        Ok(mut it) => Ok(it.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(DataError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Removes `synth_<set>_*.png` files of an earlier run that this run did not write.
fn remove_stale_images(dir: &Path, set: &str, n: usize) -> Result<(), DataError> {
    let prefix = format!("synth_{set}_");
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(num) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".png"))
        else {
            continue;
        };
        if num.parse::<usize>().is_ok_and(|k| k == 0 || k > n) {
            std::fs::remove_file(e.path()).map_err(|err| write_err(&e.path(), err))?;
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct LabelsFile {
    objects: Vec<String>,
    relations: Vec<String>,
}

#[derive(Serialize)]
struct Manifest<'a> {
    generator: &'static str,
    config: &'a SynthConfig,
    objects: Vec<String>,
    relations: Vec<String>,
    object_category_ids: Vec<i64>,
    valid_combos: Vec<[usize; 2]>,
    rare_combos_planted: Vec<[usize; 2]>,
    unseen_combos: Vec<[usize; 2]>,
    train: &'a SplitSummary,
    test: &'a SplitSummary,
    rare: &'a [ComboCount],
    unseen: &'a [ComboCount],
}

/// Generates the dataset into `out_dir` (created if missing). Fails if `out_dir` is a non-empty
/// folder and `cfg.overwrite` is false; with `overwrite`, the files of this layout are replaced
/// and images of an earlier, larger run removed (nothing else is touched).
pub fn generate(out_dir: impl AsRef<Path>, cfg: SynthConfig) -> Result<SynthSummary, DataError> {
    let start = Instant::now();
    let out = out_dir.as_ref();
    if !(96..=4096).contains(&cfg.image_size) {
        return Err(DataError::invalid(
            out,
            format!("image size {} outside 96..=4096", cfg.image_size),
        ));
    }
    if out.exists() && !out.is_dir() {
        return Err(DataError::invalid(out, "not a folder"));
    }
    if !cfg.overwrite && is_nonempty_dir(out)? {
        return Err(DataError::invalid(
            out,
            "the output folder is not empty (set `overwrite` / pass --overwrite to replace a \
             previous dataset)",
        ));
    }
    let ann = out.join("annotations");
    ensure_dir(&ann)?;

    let (n_train, n_test) = cfg.size.images();
    let (rare_train, rare_test, unseen_test) = cfg.size.plants();
    let plans = [
        spread(n_train, repeat_interleaved(&RARE_COMBOS, rare_train)),
        spread(
            n_test,
            repeat_interleaved(&UNSEEN_COMBOS, unseen_test)
                .into_iter()
                .chain(repeat_interleaved(&RARE_COMBOS, rare_test))
                .collect(),
        ),
    ];
    let hoi_list = hoi_classes();
    let hoi_index = |r: usize, o: usize| hoi_list.iter().position(|&c| c == (r, o));
    let size = cfg.image_size;

    let mut summaries = [SplitSummary::new(), SplitSummary::new()];
    let mut vg: Vec<VgImage> = Vec::new();
    let (mut vg_obj_id, mut vg_rel_id) = (0u64, 0u64);
    for (split, (set, ann_file)) in SPLITS.iter().enumerate() {
        let img_dir = out.join("images").join(set);
        ensure_dir(&img_dir)?;
        let images = generate_split(&cfg, split, &plans[split]);
        let sum = &mut summaries[split];
        let mut hico: Vec<HoiImageAnnotation> = Vec::with_capacity(images.len());
        for (i, g) in images.iter().enumerate() {
            let name = image_name(set, i);
            write_atomic(&img_dir.join(&name), &g.png)?;
            let sc = &g.scene;
            let np = sc.persons.len();
            let boxes: Vec<(usize, scene::IBox)> = sc
                .persons
                .iter()
                .map(|p| (PERSON, p.bx))
                .chain(sc.objects.iter().map(|o| (o.kind, o.bx)))
                .collect();
            let mut hois = Vec::new();
            for pair in &sc.pairs {
                let kind = sc.objects[pair.object].kind;
                sum.pairs += 1;
                for r in mask_relations(pair.rels) {
                    let hoi = hoi_index(r, kind).ok_or_else(|| {
                        DataError::invalid(out, format!("internal: invalid combination {r}/{kind}"))
                    })?;
                    hois.push(HoiAnnotation {
                        subject_id: pair.person as i64,
                        object_id: (np + pair.object) as i64,
                        category_id: r as i64 + 1,
                        hoi_category_id: Some(hoi as i64 + 1),
                    });
                    sum.relation_counts[r] += 1;
                    sum.combo_counts[r][kind] += 1;
                    sum.hois += 1;
                }
            }
            sum.images += 1;
            sum.persons += np;
            sum.objects += sc.objects.len();
            hico.push(HoiImageAnnotation {
                file_name: name.clone(),
                img_id: None,
                annotations: boxes
                    .iter()
                    .map(|&(k, b)| BoxAnnotation {
                        bbox: b.map(f64::from),
                        category_id: category_id(k),
                    })
                    .collect(),
                hoi_annotation: hois,
            });
            if split == 0 {
                let first = vg_obj_id + 1;
                let objects = boxes
                    .iter()
                    .map(|&(k, b)| {
                        vg_obj_id += 1;
                        VgObject {
                            object_id: vg_obj_id,
                            x: f64::from(b[0]),
                            y: f64::from(b[1]),
                            w: f64::from(b[2] - b[0]),
                            h: f64::from(b[3] - b[1]),
                            names: OBJECTS[k].to_string(),
                        }
                    })
                    .collect();
                let mut relationships = Vec::new();
                for pair in &sc.pairs {
                    for r in mask_relations(pair.rels) {
                        vg_rel_id += 1;
                        relationships.push(VgRelationship {
                            relationship_id: vg_rel_id,
                            predicate: RELATIONS[r].to_string(),
                            subject_id: first + pair.person as u64,
                            object_id: first + (np + pair.object) as u64,
                        });
                    }
                }
                vg.push(VgImage {
                    image_id: i as u64 + 1,
                    file_name: name,
                    width: size,
                    height: size,
                    objects,
                    relationships,
                });
            }
        }
        write_json(&ann.join(ann_file), &hico)?;
        if cfg.overwrite {
            remove_stale_images(&img_dir, set, images.len())?;
        }
    }
    let [train, test] = summaries;

    // Validity matrix, HOI list, unseen list.
    let valid = validity_matrix();
    let flat: Vec<f64> = valid
        .iter()
        .flat_map(|row| row.iter().map(|&v| if v { 1.0 } else { 0.0 }))
        .collect();
    write_atomic(
        &ann.join("corre_hico.npy"),
        &npy_f64_bytes(&[NUM_RELATIONS, NUM_OBJECTS], &flat),
    )?;
    let list: Vec<HoiListEntry> = hoi_list
        .iter()
        .enumerate()
        .map(|(i, &(r, o))| HoiListEntry {
            id: format!("{:03}", i + 1),
            object_cat: category_id(o),
            object_index: o,
            object_name: OBJECTS[o].to_string(),
            verb_id: r as i64 + 1,
            verb_name: RELATIONS[r].to_string(),
        })
        .collect();
    write_json(&ann.join("hoi_list_new.json"), &list)?;
    let combo = |&(r, o): &(usize, usize)| ComboCount {
        relation: r,
        object: o,
        name: format!("{} {}", RELATIONS[r], OBJECTS[o]),
        hoi_index: hoi_index(r, o).expect("valid combination"),
        train: train.combo_counts[r][o],
        test: test.combo_counts[r][o],
    };
    let unseen: Vec<ComboCount> = UNSEEN_COMBOS.iter().map(combo).collect();
    let unseen_idx: Vec<usize> = unseen.iter().map(|c| c.hoi_index).collect();
    write_json(&ann.join("unseen_hoi.json"), &unseen_idx)?;
    let rare: Vec<ComboCount> = hoi_list
        .iter()
        .filter(|&&(r, o)| (1..10).contains(&train.combo_counts[r][o]))
        .map(combo)
        .collect();

    // VG pre-training view of the train split.
    write_json(&ann.join("scene_graphs_preprocessv1.json"), &vg)?;
    let freq = |names: &[&str], counts: &[usize]| {
        names
            .iter()
            .zip(counts)
            .map(|(n, &c)| (n.to_string(), serde_json::Value::from(c)))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut obj_counts = vec![0usize; NUM_OBJECTS];
    for img in &vg {
        for o in &img.objects {
            if let Some(k) = OBJECTS.iter().position(|n| *n == o.names) {
                obj_counts[k] += 1;
            }
        }
    }
    write_json(
        &ann.join("vg_keep_names_v1_no_lias_freq.json"),
        &VgKeepNames {
            relationship_names: RELATIONS.iter().map(|s| s.to_string()).collect(),
            object_names: OBJECTS.iter().map(|s| s.to_string()).collect(),
            relationship_freq: freq(&RELATIONS, &train.relation_counts),
            object_freq: freq(&OBJECTS, &obj_counts),
        },
    )?;

    // Label texts and tokenizer.
    let labels = LabelsFile {
        objects: OBJECTS.iter().map(|s| s.to_string()).collect(),
        relations: RELATIONS.iter().map(|s| s.to_string()).collect(),
    };
    write_json(&out.join("labels.json"), &labels)?;
    let texts = crate::labels::LabelSet {
        source: "synth".into(),
        objects: labels.objects.clone(),
        relations: labels.relations.clone(),
    }
    .flat_texts();
    let tok = write::train_tokenizer(&texts, 200)
        .map_err(|e| write_err(&out.join("tokenizer.json"), e))?;
    write_atomic(&out.join("tokenizer.json"), tok.as_bytes())?;

    let pairs = |v: &[(usize, usize)]| v.iter().map(|&(r, o)| [r, o]).collect::<Vec<_>>();
    let valid_combos = pairs(&hoi_list);
    write_json(
        &out.join("synth.json"),
        &Manifest {
            generator: "rlip-data synth v1",
            config: &cfg,
            objects: labels.objects.clone(),
            relations: labels.relations.clone(),
            object_category_ids: (0..NUM_OBJECTS).map(category_id).collect(),
            valid_combos,
            rare_combos_planted: pairs(&RARE_COMBOS),
            unseen_combos: pairs(&UNSEEN_COMBOS),
            train: &train,
            test: &test,
            rare: &rare,
            unseen: &unseen,
        },
    )?;

    Ok(SynthSummary {
        out_dir: out.to_path_buf(),
        config: cfg,
        train,
        test,
        rare,
        unseen,
        seconds: start.elapsed().as_secs_f64(),
    })
}
