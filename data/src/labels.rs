//! Label texts: the object and relation names fed to the label encoder.
//!
//! RLIPv2 classifies by aligning visual features with encoded label texts. The text sequence of a
//! dataset is its object names, then `"no objects"`, then its relation names
//! ([`LabelSet::flat_texts`]), as the official `engine.py` builds it.

use std::path::Path;

use crate::DataError;

/// The text of the extra "no object" class between objects and relations.
pub const NO_OBJECTS: &str = "no objects";

/// Object and relation names of one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSet {
    /// Where the names came from (`hico`, `vcoco`, or a file path), for messages.
    pub source: String,
    /// Object names, in class-index order.
    pub objects: Vec<String>,
    /// Relation (verb / predicate) names, in class-index order.
    pub relations: Vec<String>,
}

impl LabelSet {
    /// The built-in label set `name` (`hico` or `vcoco`), or `None`.
    pub fn builtin(name: &str) -> Option<Self> {
        let (extra, relations) = match name {
            "hico" => (None, HICO_VERBS),
            "vcoco" => (Some(VCOCO_MISSING_OBJECT), VCOCO_VERBS),
            _ => return None,
        };
        Some(Self {
            source: name.to_string(),
            objects: HICO_OBJECTS
                .iter()
                .copied()
                .chain(extra)
                .map(String::from)
                .collect(),
            relations: relations.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Reads a label file: a JSON object with the object names under `objects`, `obj` or
    /// `object_names` and the relation names under `relations`, `rel` or `verb_names` (our
    /// layout, the Open Images `categories_dict.json`, and `vcoco_names*.json`).
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let v: serde_json::Value = crate::read_json(path)?;
        let Some(map) = v.as_object() else {
            return Err(DataError::invalid(path, "expected a JSON object"));
        };
        let list = |keys: &[&str]| -> Result<Vec<String>, DataError> {
            let (key, val) = keys
                .iter()
                .find_map(|k| map.get(*k).map(|v| (*k, v)))
                .ok_or_else(|| {
                    DataError::invalid(path, format!("missing field (one of {})", keys.join(", ")))
                })?;
            let arr = val
                .as_array()
                .ok_or_else(|| DataError::invalid(path, format!("field '{key}' is not a list")))?;
            let names = arr
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.as_str()
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .ok_or_else(|| {
                            DataError::invalid(
                                path,
                                format!("field '{key}', entry {i}: expected a non-empty string"),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if names.is_empty() {
                return Err(DataError::invalid(path, format!("field '{key}' is empty")));
            }
            Ok(names)
        };
        Ok(Self {
            source: path.display().to_string(),
            objects: list(&["objects", "obj", "object_names"])?,
            relations: list(&["relations", "rel", "verb_names"])?,
        })
    }

    /// `builtin(spec)` or, if `spec` is not a built-in name, [`LabelSet::from_file`].
    pub fn resolve(spec: &str) -> Result<Self, DataError> {
        if let Some(set) = Self::builtin(spec) {
            return Ok(set);
        }
        if spec == "oi" {
            return Err(DataError::invalid(
                Path::new(spec),
                "the Open Images label texts come with the dataset: pass its \
                 annotations/OI_SGG_trainval_test_categories_dict.json as the label file",
            ));
        }
        Self::from_file(Path::new(spec))
    }

    /// Number of object classes including "no objects" (the object logits per query).
    pub fn n_obj_with_none(&self) -> usize {
        self.objects.len() + 1
    }

    /// The label-encoder input: objects, `"no objects"`, relations.
    pub fn flat_texts(&self) -> Vec<String> {
        let mut t = self.objects.clone();
        t.push(NO_OBJECTS.to_string());
        t.extend(self.relations.iter().cloned());
        t
    }
}

/// The 80 HICO-DET object names (COCO classes, in the order of the 80 valid COCO ids).
pub const HICO_OBJECTS: &[&str] = &[
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// The 117 HICO-DET verb names (underscores as spaces, as `load_hico_verb_txt` returns them).
pub const HICO_VERBS: &[&str] = &[
    "adjust",
    "assemble",
    "block",
    "blow",
    "board",
    "break",
    "brush with",
    "buy",
    "carry",
    "catch",
    "chase",
    "check",
    "clean",
    "control",
    "cook",
    "cut",
    "cut with",
    "direct",
    "drag",
    "dribble",
    "drink with",
    "drive",
    "dry",
    "eat",
    "eat at",
    "exit",
    "feed",
    "fill",
    "flip",
    "flush",
    "fly",
    "greet",
    "grind",
    "groom",
    "herd",
    "hit",
    "hold",
    "hop on",
    "hose",
    "hug",
    "hunt",
    "inspect",
    "install",
    "jump",
    "kick",
    "kiss",
    "lasso",
    "launch",
    "lick",
    "lie on",
    "lift",
    "light",
    "load",
    "lose",
    "make",
    "milk",
    "move",
    "no interaction",
    "open",
    "operate",
    "pack",
    "paint",
    "park",
    "pay",
    "peel",
    "pet",
    "pick",
    "pick up",
    "point",
    "pour",
    "pull",
    "push",
    "race",
    "read",
    "release",
    "repair",
    "ride",
    "row",
    "run",
    "sail",
    "scratch",
    "serve",
    "set",
    "shear",
    "sign",
    "sip",
    "sit at",
    "sit on",
    "slide",
    "smell",
    "spin",
    "squeeze",
    "stab",
    "stand on",
    "stand under",
    "stick",
    "stir",
    "stop at",
    "straddle",
    "swing",
    "tag",
    "talk on",
    "teach",
    "text on",
    "throw",
    "tie",
    "toast",
    "train",
    "turn",
    "type on",
    "walk",
    "wash",
    "watch",
    "wave",
    "wear",
    "wield",
    "zip",
];

/// The extra, 81st V-COCO object text of `vcoco_names_v3.json`, after the 80 COCO names of
/// [`HICO_OBJECTS`] (the same list and order).
pub const VCOCO_MISSING_OBJECT: &str = "missing objects";

/// The 29 V-COCO action-role texts of `vcoco_names_v3.json`.
pub const VCOCO_VERBS: &[&str] = &[
    "hold",
    "stand",
    "sit on/at",
    "ride on",
    "walk",
    "look at",
    "hit with",
    "hit",
    "eat",
    "eat with",
    "jump",
    "lay on",
    "talk on phone",
    "carry",
    "throw",
    "catch",
    "cut with",
    "cut",
    "run",
    "work on computer",
    "ski",
    "surf",
    "skateboard",
    "smile",
    "drink from",
    "kick",
    "point",
    "read",
    "snowboard",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_sets_have_official_sizes() {
        let h = LabelSet::builtin("hico").unwrap();
        assert_eq!((h.objects.len(), h.relations.len()), (80, 117));
        let t = h.flat_texts();
        assert_eq!(t.len(), 198);
        assert_eq!(t[80], NO_OBJECTS);
        assert_eq!(t[81], "adjust");
        assert_eq!(t[87], "brush with");
        let v = LabelSet::builtin("vcoco").unwrap();
        assert_eq!((v.objects.len(), v.relations.len()), (81, 29));
        assert_eq!(v.objects[80], "missing objects");
        assert!(LabelSet::builtin("nope").is_none());
    }

    #[test]
    fn label_files_in_every_layout_and_bad_ones() {
        let dir = std::env::temp_dir().join(format!("rlip-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, s: &str| {
            let p = dir.join(name);
            std::fs::write(&p, s).unwrap();
            p
        };
        let ours = write("a.json", r#"{"objects":["cat","mat"],"relations":["on"]}"#);
        let set = LabelSet::from_file(&ours).unwrap();
        assert_eq!(set.flat_texts(), ["cat", "mat", "no objects", "on"]);
        let oi = write("b.json", r#"{"obj":["a"],"rel":["b","c"]}"#);
        assert_eq!(LabelSet::from_file(&oi).unwrap().relations.len(), 2);
        for (name, body, needle) in [
            ("c.json", "[1,2]", "expected a JSON object"),
            ("d.json", r#"{"objects":["a"]}"#, "missing field"),
            (
                "e.json",
                r#"{"objects":["a", 3],"relations":["r"]}"#,
                "entry 1",
            ),
            ("f.json", r#"{"objects":[],"relations":["r"]}"#, "is empty"),
            ("g.json", "{not json", "malformed JSON"),
        ] {
            let p = write(name, body);
            let e = LabelSet::from_file(&p).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(name), "{e}");
        }
        let e = LabelSet::resolve("oi").unwrap_err().to_string();
        assert!(e.contains("categories_dict"), "{e}");
        let e = LabelSet::resolve(dir.join("missing.json").to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
