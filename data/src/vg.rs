//! Visual Genome scene graphs as the official RLIPv2 code reads and preprocesses them.
//!
//! # Loader (`datasets/vg.py::VGRelDetection`, `datasets/mixed_dataset.py::MixedRelDetection`)
//!
//! [`load_scene_graphs`] reads `scene_graphs_preprocessv1.json`: a list of images
//! `{"image_id", "objects": [{"object_id", "x", "y", "w", "h", "names"}], "relationships":
//! [{"relationship_id", "predicate", "subject_id", "object_id"}]}` with `names` one string.
//! Other fields (`synsets`, ...) are ignored. Optional fields: `file_name`, `width`, `height`
//! (added by our synthetic dataset; the official loader opens `images/{image_id}.jpg` and takes
//! the size from the image), `relationship_id` (unused by the loaders), and the pseudo-label
//! fields `dataset`, `data_split` and `confidence` ([`crate::pseudo`]).
//!
//! Semantics kept from the official loaders: a relationship's `subject_id` / `object_id` is looked
//! up among the image's `object_id`s (`add_local_object_id`); a repeated `object_id` maps to its
//! last object (the id → index dict is overwritten). An id that is not among the objects makes the
//! official loader raise `KeyError`; here it is an error naming the file, image and field. Names
//! are used verbatim (no lower-casing or aliasing at load time). What the loaders do per sample —
//! the relation cap, merging repeated (subject, object) pairs and duplicate triplets into one
//! multi-label pair, box clamping — is in [`crate::pretrain`].
//!
//! The keep-names file (`vg_keep_names_v1_no_lias_freq.json`, [`load_keep_names`]) holds
//! `relationship_names`, `object_names` (most frequent first) and, optionally (the official loader
//! checks for them), `relationship_freq` / `object_freq` (name → count).
//!
//! # Preprocessing (`datasets/vg.py::vg_preprocess`, run with `IoU_thre = 0.7`)
//!
//! The official repository has no separate script (`datasets/vg.sh` only runs `vg.py`); the steps
//! are those `vg_preprocess` executes on the raw `scene_graphs.json` (objects with a list of
//! `names`), in order ([`preprocess`]):
//!
//! 0. lower-case every object name and every predicate;
//! 1. drop a relationship when an earlier kept one has the same `subject_id`, `object_id` and
//!    predicate (exact duplicate triplets);
//! 2. keep only the first of an object's `names`;
//! 3. drop a relationship when an earlier kept one is *redundant* with it: same predicate after
//!    relationship aliasing, and both the subjects and the objects have the same name after object
//!    aliasing and an IoU ≥ the threshold ([`vg_iou`]: inclusive-pixel areas, `+1`); the pairwise
//!    scan is the official one (each kept relationship removes later ones);
//! 4. keep at most `max_relations` (100, the official `num_queries` default) relationships per
//!    image, the first ones;
//! 9. count predicates over all remaining relationships and names over all objects, keep the names
//!    with a count ≥ `min_count` (20) — most frequent first, ties in first-appearance order — and
//!    drop the relationships whose predicate, subject name or object name is not kept. Objects are
//!    not removed (the official object filter is commented out). The counts are those before this
//!    last filter; they form the keep-names file.
//!
//! Steps 5 (box filtering) and 8 (box merging) are announced in the official docstring but not
//! implemented there; step 7 (renaming by alias) is disabled there. They are not implemented here.
//! The aliases of step 3 come from Visual Genome's `object_alias.txt` / `relationship_alias.txt`
//! (not in the repository; [`Aliases::load`]); without them names compare verbatim. An object
//! without names, or a relationship whose subject / object id is not among the image's objects,
//! is an error (the official script raises `IndexError` / `KeyError`). Output images keep
//! `image_id`, the optional `file_name` / `width` / `height`, the objects (`names` now a string)
//! and the relationships; other raw fields (`synsets`, ...) are dropped.
//! [`preprocess_scene_graphs`] writes [`SCENE_GRAPHS_FILE`] and [`KEEP_NAMES_FILE`] — the names
//! the loader reads (the official script writes `scene_graphs_preprocess_greater20.json` and left
//! the keep-names dump commented out).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::DataError;
use crate::fsutil::{refuse_existing, write_atomic, write_err};

/// File name of the preprocessed scene graphs the official loader reads.
pub const SCENE_GRAPHS_FILE: &str = "scene_graphs_preprocessv1.json";
/// File name of the official keep-names / frequency file.
pub const KEEP_NAMES_FILE: &str = "vg_keep_names_v1_no_lias_freq.json";

/// An image id: a number (Visual Genome, COCO, Objects365) or a string (e.g. `"n102412"` in the
/// official VG + Open Images folder). [`fmt::Display`] writes it as Python's `str()` does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageId {
    /// A non-negative integer id.
    Num(u64),
    /// A textual id.
    Text(String),
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageId::Num(n) => write!(f, "{n}"),
            ImageId::Text(s) => f.write_str(s),
        }
    }
}

/// One object (box) of a preprocessed scene graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SceneGraphObject {
    /// Id, unique in the file in the official data.
    pub object_id: u64,
    /// Left edge in pixels.
    #[serde(serialize_with = "int_if_integral")]
    pub x: f64,
    /// Top edge in pixels.
    #[serde(serialize_with = "int_if_integral")]
    pub y: f64,
    /// Width in pixels.
    #[serde(serialize_with = "int_if_integral")]
    pub w: f64,
    /// Height in pixels.
    #[serde(serialize_with = "int_if_integral")]
    pub h: f64,
    /// The object's name.
    pub names: String,
}

impl SceneGraphObject {
    /// `[x, y, x + w, y + h]`, as the official loaders build boxes.
    pub fn xyxy(&self) -> [f64; 4] {
        [self.x, self.y, self.x + self.w, self.y + self.h]
    }
}

/// One relationship (triplet) of a scene graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SceneGraphRelation {
    /// Id (unused by the loaders; optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relationship_id: Option<u64>,
    /// Predicate text.
    pub predicate: String,
    /// `object_id` of the subject.
    pub subject_id: u64,
    /// `object_id` of the object.
    pub object_id: u64,
    /// Relation Tagger confidence (pseudo-labelled COCO / Objects365 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

/// One image of a preprocessed (or pseudo-labelled) scene-graph file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SceneGraphImage {
    /// Image id.
    pub image_id: ImageId,
    /// Image file relative to the image folder (non-official; our synthetic dataset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// Image width in pixels, when the file states it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    /// Image height in pixels, when the file states it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<usize>,
    /// Source dataset of pseudo-labelled images (`coco2017`, `o365`); absent for VG.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Split folder of pseudo-labelled images (`train2017`, `val2017`, `train`, `val`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_split: Option<String>,
    /// Boxes.
    pub objects: Vec<SceneGraphObject>,
    /// Relationships between the boxes.
    pub relationships: Vec<SceneGraphRelation>,
}

impl SceneGraphImage {
    /// `object_id` → index into `objects`; a repeated id maps to its last object.
    pub fn object_index(&self) -> HashMap<u64, usize> {
        local_ids(self.objects.iter().map(|o| o.object_id))
    }

    /// The official VG image path: `root/{image_id}.jpg`, or `root/{file_name}` when the image
    /// states a `file_name` (our synthetic dataset).
    pub fn vg_image_path(&self, root: &Path) -> PathBuf {
        match &self.file_name {
            Some(f) => root.join(f),
            None => root.join(format!("{}.jpg", self.image_id)),
        }
    }
}

/// One object of the raw `scene_graphs.json`: like [`SceneGraphObject`] with a list of names.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSceneGraphObject {
    /// Id.
    pub object_id: u64,
    /// Left edge in pixels.
    pub x: f64,
    /// Top edge in pixels.
    pub y: f64,
    /// Width in pixels.
    pub w: f64,
    /// Height in pixels.
    pub h: f64,
    /// All names given to the object.
    pub names: Vec<String>,
}

/// One image of the raw `scene_graphs.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSceneGraph {
    /// Image id.
    pub image_id: ImageId,
    /// Optional image file name (passed through).
    pub file_name: Option<String>,
    /// Optional width (passed through).
    pub width: Option<usize>,
    /// Optional height (passed through).
    pub height: Option<usize>,
    /// Boxes.
    pub objects: Vec<RawSceneGraphObject>,
    /// Relationships.
    pub relationships: Vec<SceneGraphRelation>,
}

/// The keep-names / frequency file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeepNames {
    /// Predicates, most frequent first.
    pub relationship_names: Vec<String>,
    /// Object names, most frequent first.
    pub object_names: Vec<String>,
    /// Predicate → count, when the file has `relationship_freq`.
    pub relationship_freq: Option<HashMap<String, u64>>,
    /// Object name → count, when the file has `object_freq`.
    pub object_freq: Option<HashMap<String, u64>>,
}

/// Reads a preprocessed scene-graph file (`scene_graphs_preprocessv1.json` layout) and checks
/// that every relationship's subject and object ids are among its image's objects.
pub fn load_scene_graphs(path: impl AsRef<Path>) -> Result<Vec<SceneGraphImage>, DataError> {
    read_records(path.as_ref(), "image", parse_image)
}

/// Reads a raw Visual Genome `scene_graphs.json` (objects with a non-empty list of `names`) and
/// checks the relationships' ids like [`load_scene_graphs`].
pub fn load_raw_scene_graphs(path: impl AsRef<Path>) -> Result<Vec<RawSceneGraph>, DataError> {
    read_records(path.as_ref(), "image", parse_raw_image)
}

/// Reads a keep-names file. `relationship_freq` / `object_freq` may be absent (as in the official
/// `vg_keep_names_v2.json`); when present, every count must be a non-negative integer.
pub fn load_keep_names(path: impl AsRef<Path>) -> Result<KeepNames, DataError> {
    let path = path.as_ref();
    let v: Value = crate::read_json(path)?;
    let f = Fields::of(&v, "").map_err(|m| DataError::invalid(path, m))?;
    let names = |key: &str| -> Result<Vec<String>, String> {
        let list = f.list(key)?;
        list.iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{key}[{i}]: expected a string, found {}", found(s)))
            })
            .collect()
    };
    let freq = |key: &str| -> Result<Option<HashMap<String, u64>>, String> {
        let Some(m) = f.opt(key) else {
            return Ok(None);
        };
        let m = m
            .as_object()
            .ok_or_else(|| format!("{key}: expected an object of counts, found {}", found(m)))?;
        m.iter()
            .map(|(k, c)| {
                c.as_u64().map(|c| (k.clone(), c)).ok_or_else(|| {
                    format!(
                        "{key}[{k:?}]: expected a non-negative integer count, found {}",
                        found(c)
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    };
    let bad = |m: String| DataError::invalid(path, m);
    Ok(KeepNames {
        relationship_names: names("relationship_names").map_err(bad)?,
        object_names: names("object_names").map_err(bad)?,
        relationship_freq: freq("relationship_freq").map_err(bad)?,
        object_freq: freq("object_freq").map_err(bad)?,
    })
}

/// Name aliases for the redundancy test of the preprocessing: every alias maps to the first name
/// of its line in Visual Genome's `object_alias.txt` / `relationship_alias.txt`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Aliases {
    /// Object name → canonical name.
    pub objects: HashMap<String, String>,
    /// Predicate → canonical predicate.
    pub relations: HashMap<String, String>,
}

impl Aliases {
    /// Reads the two alias files.
    pub fn load(object_alias: &Path, relationship_alias: &Path) -> Result<Self, DataError> {
        let read = |p: &Path| -> Result<HashMap<String, String>, DataError> {
            let bytes = crate::read_bytes(p)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| DataError::invalid(p, "alias file is not UTF-8 text"))?;
            Ok(parse_alias_lines(&text))
        };
        Ok(Aliases {
            objects: read(object_alias)?,
            relations: read(relationship_alias)?,
        })
    }

    fn object<'a>(&'a self, name: &'a str) -> &'a str {
        self.objects.get(name).map_or(name, String::as_str)
    }

    fn relation<'a>(&'a self, name: &'a str) -> &'a str {
        self.relations.get(name).map_or(name, String::as_str)
    }
}

/// Parses alias lines as the official `alias_dict`: each line is trimmed and split at commas, and
/// every item maps to the line's first item (a later line wins for a repeated item).
pub fn parse_alias_lines(text: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let items: Vec<&str> = line.trim().split(',').collect();
        for it in &items {
            map.insert(it.to_string(), items[0].to_string());
        }
    }
    map
}

/// Options of [`preprocess`]; the defaults are the official ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessConfig {
    /// Subject and object IoU at or above which a same-class, same-predicate triplet is redundant.
    pub iou_threshold: f64,
    /// Relationships kept per image (the first ones).
    pub max_relations: usize,
    /// Minimum count of a predicate / object name to be kept.
    pub min_count: u64,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            iou_threshold: 0.7,
            max_relations: 100,
            min_count: 20,
        }
    }
}

/// Relationship and object counts through the preprocessing steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PreprocessStats {
    /// Images.
    pub images: usize,
    /// Objects.
    pub objects: usize,
    /// Objects with two or more names.
    pub objects_with_several_names: usize,
    /// Relationships in the raw file.
    pub relations_raw: usize,
    /// After removing exact duplicate triplets (step 1).
    pub relations_after_duplicates: usize,
    /// After removing redundant triplets (step 3).
    pub relations_after_redundancy: usize,
    /// After the per-image cap (step 4).
    pub relations_after_cap: usize,
    /// After the frequency filter (step 9): the relationships written.
    pub relations_kept: usize,
    /// Predicates kept.
    pub relationship_names: usize,
    /// Object names kept.
    pub object_names: usize,
}

/// The result of [`preprocess`].
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// The preprocessed images.
    pub images: Vec<SceneGraphImage>,
    /// The kept names with their counts (always with frequencies).
    pub keep_names: KeepNames,
    /// Counts through the steps.
    pub stats: PreprocessStats,
}

/// IoU of two `[x0, y0, x1, y1]` boxes as the official `compute_IOU_vg` computes it: areas and the
/// intersection count inclusive pixels (`+1`), and boxes whose overlap is empty or a line (an
/// edge `≥` the opposite edge) have IoU 0.
pub fn vg_iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let area = |r: [f64; 4]| (r[2] - r[0] + 1.0) * (r[3] - r[1] + 1.0);
    let (x0, x1) = (a[0].max(b[0]), a[2].min(b[2]));
    let (y0, y1) = (a[1].max(b[1]), a[3].min(b[3]));
    if y0 >= y1 || x0 >= x1 {
        return 0.0;
    }
    let inter = (y1 - y0 + 1.0) * (x1 - x0 + 1.0);
    inter / (area(a) + area(b) - inter)
}

/// The official VG preprocessing (steps 0–4 and 9 of `vg_preprocess`, see the module docs) as a
/// pure function. Fails, naming the image and relationship, on an object without names or a
/// relationship whose subject / object id is not among the image's objects.
pub fn preprocess(
    raw: Vec<RawSceneGraph>,
    cfg: &PreprocessConfig,
    aliases: &Aliases,
) -> Result<Preprocessed, String> {
    let mut stats = PreprocessStats {
        images: raw.len(),
        ..Default::default()
    };
    let mut images = Vec::with_capacity(raw.len());
    for (ii, img) in raw.into_iter().enumerate() {
        let at = |m: String| format!("image {ii} (image_id {}): {m}", img.image_id);
        // Steps 0 and 2: lower-case, keep the first name.
        let mut objects = Vec::with_capacity(img.objects.len());
        for (oi, o) in img.objects.iter().enumerate() {
            let first = o
                .names
                .first()
                .ok_or_else(|| at(format!("objects[{oi}].names: empty list")))?;
            stats.objects += 1;
            stats.objects_with_several_names += usize::from(o.names.len() >= 2);
            objects.push(SceneGraphObject {
                object_id: o.object_id,
                x: o.x,
                y: o.y,
                w: o.w,
                h: o.h,
                names: first.to_lowercase(),
            });
        }
        let index = local_ids(objects.iter().map(|o| o.object_id));
        let mut rels = img.relationships;
        for (ri, r) in rels.iter_mut().enumerate() {
            for (field, id) in [("subject_id", r.subject_id), ("object_id", r.object_id)] {
                if !index.contains_key(&id) {
                    return Err(at(format!(
                        "relationships[{ri}].{field}: object id {id} is not among the image's objects"
                    )));
                }
            }
            r.predicate = r.predicate.to_lowercase();
        }
        stats.relations_raw += rels.len();
        // Step 1: exact duplicate triplets.
        let mut seen = HashSet::new();
        rels.retain(|r| seen.insert((r.subject_id, r.object_id, r.predicate.clone())));
        stats.relations_after_duplicates += rels.len();
        // Step 3: redundant triplets (official pairwise scan).
        let obj = |id: u64| &objects[index[&id]];
        let same = |a: &SceneGraphObject, b: &SceneGraphObject| {
            if aliases.object(&a.names) == aliases.object(&b.names) {
                vg_iou(a.xyxy(), b.xyxy())
            } else {
                0.0
            }
        };
        let mut keep = vec![true; rels.len()];
        for i in 0..rels.len() {
            if !keep[i] {
                continue;
            }
            for j in i + 1..rels.len() {
                let (a, b) = (&rels[i], &rels[j]);
                if keep[j]
                    && same(obj(a.subject_id), obj(b.subject_id)) >= cfg.iou_threshold
                    && same(obj(a.object_id), obj(b.object_id)) >= cfg.iou_threshold
                    && aliases.relation(&a.predicate) == aliases.relation(&b.predicate)
                {
                    keep[j] = false;
                }
            }
        }
        let mut k = keep.iter();
        rels.retain(|_| *k.next().unwrap_or(&true));
        stats.relations_after_redundancy += rels.len();
        // Step 4: per-image cap.
        rels.truncate(cfg.max_relations);
        stats.relations_after_cap += rels.len();
        images.push(SceneGraphImage {
            image_id: img.image_id,
            file_name: img.file_name,
            width: img.width,
            height: img.height,
            dataset: None,
            data_split: None,
            objects,
            relationships: rels,
        });
    }
    // Step 9: frequency thresholds.
    let rel_counts = count_sorted(
        images
            .iter()
            .flat_map(|i| i.relationships.iter().map(|r| r.predicate.as_str())),
    );
    let obj_counts = count_sorted(
        images
            .iter()
            .flat_map(|i| i.objects.iter().map(|o| o.names.as_str())),
    );
    let kept = |c: Vec<(String, u64)>| -> Vec<(String, u64)> {
        c.into_iter().filter(|(_, n)| *n >= cfg.min_count).collect()
    };
    let (rel_keep, obj_keep) = (kept(rel_counts), kept(obj_counts));
    let rel_set: HashSet<&str> = rel_keep.iter().map(|(n, _)| n.as_str()).collect();
    let obj_set: HashSet<&str> = obj_keep.iter().map(|(n, _)| n.as_str()).collect();
    for img in &mut images {
        let index = img.object_index();
        let objects = &img.objects;
        let name = |id: u64| objects[index[&id]].names.as_str();
        img.relationships.retain(|r| {
            obj_set.contains(name(r.subject_id))
                && obj_set.contains(name(r.object_id))
                && rel_set.contains(r.predicate.as_str())
        });
        stats.relations_kept += img.relationships.len();
    }
    stats.relationship_names = rel_keep.len();
    stats.object_names = obj_keep.len();
    let split = |v: Vec<(String, u64)>| {
        let names = v.iter().map(|(n, _)| n.clone()).collect();
        (names, v.into_iter().collect::<HashMap<_, _>>())
    };
    let ((relationship_names, rf), (object_names, of)) = (split(rel_keep), split(obj_keep));
    Ok(Preprocessed {
        images,
        keep_names: KeepNames {
            relationship_names,
            object_names,
            relationship_freq: Some(rf),
            object_freq: Some(of),
        },
        stats,
    })
}

/// Runs [`preprocess`] on the raw `scene_graphs.json` at `raw_path` and writes
/// `out_dir/`[`SCENE_GRAPHS_FILE`] and `out_dir/`[`KEEP_NAMES_FILE`] (creating `out_dir`), each
/// atomically (a temporary file in the same folder, then a rename). Never overwrites: if either
/// file exists, nothing is written and the error is a [`DataError::Write`] of kind
/// `AlreadyExists`.
pub fn preprocess_scene_graphs(
    raw_path: impl AsRef<Path>,
    out_dir: impl AsRef<Path>,
    cfg: &PreprocessConfig,
    aliases: &Aliases,
) -> Result<PreprocessStats, DataError> {
    let (raw_path, out_dir) = (raw_path.as_ref(), out_dir.as_ref());
    let targets = [
        out_dir.join(SCENE_GRAPHS_FILE),
        out_dir.join(KEEP_NAMES_FILE),
    ];
    refuse_existing(&targets)?;
    let raw = load_raw_scene_graphs(raw_path)?;
    let out = preprocess(raw, cfg, aliases).map_err(|m| DataError::invalid(raw_path, m))?;
    let graphs = serde_json::to_vec(&out.images).map_err(|e| write_err(&targets[0], e))?;
    let keep = serde_json::to_vec(&KeepNamesOut(&out.keep_names))
        .map_err(|e| write_err(&targets[1], e))?;
    std::fs::create_dir_all(out_dir).map_err(|e| write_err(out_dir, e))?;
    refuse_existing(&targets)?;
    write_atomic(&targets[0], &graphs)?;
    write_atomic(&targets[1], &keep)?;
    Ok(out.stats)
}

/// Serialises a keep-names file with the frequency objects in name order (so that a loader that
/// pairs `*_names[i]` with the `i`-th frequency, as the official `sample_text` does, is right).
struct KeepNamesOut<'a>(&'a KeepNames);

struct OrderedFreq<'a>(&'a [String], Option<&'a HashMap<String, u64>>);

impl Serialize for OrderedFreq<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for n in self.0 {
            let c = self.1.and_then(|f| f.get(n)).copied().unwrap_or(0);
            m.serialize_entry(n, &c)?;
        }
        m.end()
    }
}

impl Serialize for KeepNamesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let k = self.0;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("relationship_names", &k.relationship_names)?;
        m.serialize_entry("object_names", &k.object_names)?;
        m.serialize_entry(
            "relationship_freq",
            &OrderedFreq(&k.relationship_names, k.relationship_freq.as_ref()),
        )?;
        m.serialize_entry(
            "object_freq",
            &OrderedFreq(&k.object_names, k.object_freq.as_ref()),
        )?;
        m.end()
    }
}

/// Integral coordinates are written as integers (as in the raw Visual Genome files).
fn int_if_integral<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// Counts in first-appearance order, then sorted by count, descending and stable (the official
/// `sorted(..., key=count, reverse=True)` over an insertion-ordered dict).
pub(crate) fn count_sorted<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(String, u64)> {
    let mut order: Vec<(String, u64)> = Vec::new();
    let mut at: HashMap<&'a str, usize> = HashMap::new();
    for n in names {
        match at.get(n) {
            Some(&i) => order[i].1 += 1,
            None => {
                at.insert(n, order.len());
                order.push((n.to_string(), 1));
            }
        }
    }
    order.sort_by_key(|e| std::cmp::Reverse(e.1)); // stable
    order
}

/// `id` → position, the last position for a repeated id.
fn local_ids(ids: impl Iterator<Item = u64>) -> HashMap<u64, usize> {
    ids.enumerate().map(|(i, id)| (id, i)).collect()
}

// ---------------------------------------------------------------------------------------------
// JSON records with messages that name the record and the field.

/// Streams the top-level JSON list of `path`, converting each element with `parse`. A conversion
/// failure becomes a [`DataError::Invalid`] naming `{what} {index}` and the field; a syntax error
/// or a top level that is not a list is a [`DataError::Json`].
pub(crate) fn read_records<T>(
    path: &Path,
    what: &'static str,
    parse: fn(&Value) -> Result<T, String>,
) -> Result<Vec<T>, DataError> {
    use serde::de::{Deserializer as _, Error as _, SeqAccess, Visitor};

    struct Records<'a, T> {
        what: &'static str,
        parse: fn(&Value) -> Result<T, String>,
        failed: &'a mut Option<String>,
    }
    impl<'de, T> Visitor<'de> for Records<'_, T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a JSON list of {}s", self.what)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element::<Value>()? {
                match (self.parse)(&v) {
                    Ok(t) => out.push(t),
                    Err(m) => {
                        *self.failed = Some(format!("{} {}{m}", self.what, out.len()));
                        return Err(A::Error::custom("invalid record"));
                    }
                }
            }
            Ok(out)
        }
    }

    let bytes = crate::read_bytes(path)?;
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let res = (&mut de)
        .deserialize_seq(Records {
            what,
            parse,
            failed: &mut failed,
        })
        .and_then(|v| de.end().map(|()| v));
    match (res, failed) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(msg)) => Err(DataError::invalid(path, msg)),
        (Err(source), None) => Err(DataError::Json {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A short description of a JSON value for messages.
pub(crate) fn found(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.chars().count() > 40 => {
            format!("string {:?}…", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The fields of one JSON object, with the path (`objects[2]`) used in messages.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    at: String,
}

impl<'a> Fields<'a> {
    pub(crate) fn of(v: &'a Value, at: impl Into<String>) -> Result<Self, String> {
        let at = at.into();
        match v.as_object() {
            Some(map) => Ok(Fields { map, at }),
            None if at.is_empty() => Err(format!("expected an object, found {}", found(v))),
            None => Err(format!("{at}: expected an object, found {}", found(v))),
        }
    }

    fn name(&self, key: &str) -> String {
        if self.at.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.at)
        }
    }

    fn bad(&self, key: &str, expected: &str, v: &Value) -> String {
        format!(
            "{}: expected {expected}, found {}",
            self.name(key),
            found(v)
        )
    }

    pub(crate) fn req(&self, key: &str) -> Result<&'a Value, String> {
        self.map
            .get(key)
            .ok_or_else(|| format!("{}: missing field", self.name(key)))
    }

    /// The field, or `None` if it is absent or `null`.
    pub(crate) fn opt(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn u64(&self, key: &str) -> Result<u64, String> {
        let v = self.req(key)?;
        v.as_u64()
            .ok_or_else(|| self.bad(key, "a non-negative integer", v))
    }

    pub(crate) fn f64(&self, key: &str) -> Result<f64, String> {
        let v = self.req(key)?;
        v.as_f64().ok_or_else(|| self.bad(key, "a number", v))
    }

    pub(crate) fn string(&self, key: &str) -> Result<String, String> {
        let v = self.req(key)?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.bad(key, "a string", v))
    }

    pub(crate) fn list(&self, key: &str) -> Result<&'a Vec<Value>, String> {
        let v = self.req(key)?;
        v.as_array().ok_or_else(|| self.bad(key, "a list", v))
    }

    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>, String> {
        self.opt(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.bad(key, "a non-negative integer", v))
            })
            .transpose()
    }

    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>, String> {
        self.opt(key)
            .map(|v| v.as_f64().ok_or_else(|| self.bad(key, "a number", v)))
            .transpose()
    }

    pub(crate) fn opt_string(&self, key: &str) -> Result<Option<String>, String> {
        self.opt(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.bad(key, "a string", v))
            })
            .transpose()
    }

    fn image_id(&self) -> Result<ImageId, String> {
        let v = self.req("image_id")?;
        match v {
            Value::String(s) => Ok(ImageId::Text(s.clone())),
            _ => v
                .as_u64()
                .map(ImageId::Num)
                .ok_or_else(|| self.bad("image_id", "a non-negative integer or a string", v)),
        }
    }
}

fn parse_relation(v: &Value, at: String) -> Result<SceneGraphRelation, String> {
    let f = Fields::of(v, at)?;
    Ok(SceneGraphRelation {
        relationship_id: f.opt_u64("relationship_id")?,
        predicate: f.string("predicate")?,
        subject_id: f.u64("subject_id")?,
        object_id: f.u64("object_id")?,
        confidence: f.opt_f64("confidence")?,
    })
}

/// The fields of one image that both layouts share, plus the layout's own (`extra`).
struct ImageParts<O, X> {
    image_id: ImageId,
    objects: Vec<O>,
    relationships: Vec<SceneGraphRelation>,
    file_name: Option<String>,
    width: Option<usize>,
    height: Option<usize>,
    extra: X,
}

/// Parses the image-level fields shared by both layouts, with `object` parsing one object and
/// `extra` the fields only one layout has (read last). Returns the message prefix
/// `" (image_id …): "` in errors.
fn parse_with<O, X>(
    v: &Value,
    object: impl Fn(&Fields) -> Result<O, String>,
    object_id: impl Fn(&O) -> u64,
    extra: impl Fn(&Fields) -> Result<X, String>,
) -> Result<ImageParts<O, X>, String> {
    let f = Fields::of(v, "").map_err(|m| format!(": {m}"))?;
    let image_id = f.image_id().map_err(|m| format!(": {m}"))?;
    let inner = || -> Result<_, String> {
        let objects = f
            .list("objects")?
            .iter()
            .enumerate()
            .map(|(i, o)| object(&Fields::of(o, format!("objects[{i}]"))?))
            .collect::<Result<Vec<O>, String>>()?;
        let relationships = f
            .list("relationships")?
            .iter()
            .enumerate()
            .map(|(i, r)| parse_relation(r, format!("relationships[{i}]")))
            .collect::<Result<Vec<_>, String>>()?;
        let index = local_ids(objects.iter().map(&object_id));
        for (i, r) in relationships.iter().enumerate() {
            for (field, id) in [("subject_id", r.subject_id), ("object_id", r.object_id)] {
                if !index.contains_key(&id) {
                    return Err(format!(
                        "relationships[{i}].{field}: object id {id} is not among the image's objects"
                    ));
                }
            }
        }
        Ok(ImageParts {
            image_id: image_id.clone(),
            objects,
            relationships,
            file_name: f.opt_string("file_name")?,
            width: f.opt_u64("width")?.map(|w| w as usize),
            height: f.opt_u64("height")?.map(|h| h as usize),
            extra: extra(&f)?,
        })
    };
    inner().map_err(|m| format!(" (image_id {image_id}): {m}"))
}

pub(crate) fn parse_image(v: &Value) -> Result<SceneGraphImage, String> {
    let object = |o: &Fields| -> Result<SceneGraphObject, String> {
        Ok(SceneGraphObject {
            object_id: o.u64("object_id")?,
            x: o.f64("x")?,
            y: o.f64("y")?,
            w: o.f64("w")?,
            h: o.f64("h")?,
            names: o.string("names")?,
        })
    };
    let extra = |f: &Fields| -> Result<_, String> {
        Ok((f.opt_string("dataset")?, f.opt_string("data_split")?))
    };
    let p = parse_with(v, object, |o| o.object_id, extra)?;
    let (dataset, data_split) = p.extra;
    Ok(SceneGraphImage {
        image_id: p.image_id,
        file_name: p.file_name,
        width: p.width,
        height: p.height,
        dataset,
        data_split,
        objects: p.objects,
        relationships: p.relationships,
    })
}

fn parse_raw_image(v: &Value) -> Result<RawSceneGraph, String> {
    let object = |o: &Fields| -> Result<RawSceneGraphObject, String> {
        let names = o
            .list("names")?
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.as_str().map(str::to_string).ok_or_else(|| {
                    format!(
                        "{}: expected a string, found {}",
                        o.name(&format!("names[{i}]")),
                        found(n)
                    )
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if names.is_empty() {
            return Err(format!("{}: empty list", o.name("names")));
        }
        Ok(RawSceneGraphObject {
            object_id: o.u64("object_id")?,
            x: o.f64("x")?,
            y: o.f64("y")?,
            w: o.f64("w")?,
            h: o.f64("h")?,
            names,
        })
    };
    let p = parse_with(v, object, |o| o.object_id, |_| Ok(()))?;
    Ok(RawSceneGraph {
        image_id: p.image_id,
        file_name: p.file_name,
        width: p.width,
        height: p.height,
        objects: p.objects,
        relationships: p.relationships,
    })
}
