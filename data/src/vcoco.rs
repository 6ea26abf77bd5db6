//! V-COCO files: the V-COCO role annotations (`vcoco_test.json`), the COCO instances subset
//! (`instances_vcoco_all_2014.json`), the split ids (`vcoco_test.ids`), the HOIA-format list the
//! in-training evaluator uses (`test_vcoco.json`, same layout as [`crate::hico`]) and the
//! detection list written by `generate_vcoco_official.py` (pickle, or the same list as JSON).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DataError;
use crate::pickle::PickleValue;

pub use crate::hico::{HoiImageAnnotation, load_hoi_annotations as load_hoia_annotations};

/// The 29 verb-role classes of the in-training evaluator and `generate_vcoco_official.py`.
pub const VCOCO_VERB_CLASSES: [&str; 29] = [
    "hold_obj",
    "stand",
    "sit_instr",
    "ride_instr",
    "walk",
    "look_obj",
    "hit_instr",
    "hit_obj",
    "eat_obj",
    "eat_instr",
    "jump_instr",
    "lay_instr",
    "talk_on_phone_instr",
    "carry_obj",
    "throw_obj",
    "catch_obj",
    "cut_instr",
    "cut_obj",
    "run",
    "work_on_computer_instr",
    "ski_instr",
    "surf_instr",
    "skateboard_instr",
    "smile",
    "drink_instr",
    "kick_obj",
    "point_instr",
    "read_obj",
    "snowboard_instr",
];

/// One action of `vcoco_test.json`, with the flat lists the file stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VsrlAction {
    /// Action name ("hold", ...).
    pub action_name: String,
    /// Roles, "agent" first.
    pub role_name: Vec<String>,
    /// COCO annotation id of each labelled person (M entries).
    pub ann_id: Vec<i64>,
    /// COCO image id of each entry.
    pub image_id: Vec<i64>,
    /// 1 when the person does this action.
    pub label: Vec<i64>,
    /// Role-major flat `[roles × M]` annotation ids (0 = no object).
    pub role_object_id: Vec<i64>,
}

impl VsrlAction {
    /// The role object annotation id of entry `m`, role `r` (r = 0 is the agent).
    pub fn role_object(&self, m: usize, r: usize) -> i64 {
        self.role_object_id[r * self.ann_id.len() + m]
    }
}

/// Reads `vcoco_test.json` and checks that every action has consistent list lengths.
pub fn load_vsrl_annotations(path: impl AsRef<Path>) -> Result<Vec<VsrlAction>, DataError> {
    let path = path.as_ref();
    let actions: Vec<VsrlAction> = crate::read_json(path)?;
    if actions.is_empty() {
        return Err(DataError::invalid(path, "no actions"));
    }
    for a in &actions {
        let m = a.ann_id.len();
        if a.image_id.len() != m
            || a.label.len() != m
            || a.role_object_id.len() != m * a.role_name.len()
        {
            return Err(DataError::invalid(
                path,
                format!(
                    "action {:?}: ann_id/image_id/label/role_object_id lengths disagree",
                    a.action_name
                ),
            ));
        }
        if a.role_name.first().map(String::as_str) != Some("agent") {
            return Err(DataError::invalid(
                path,
                format!("action {:?}: first role is not 'agent'", a.action_name),
            ));
        }
        if a.ann_id != actions[0].ann_id {
            return Err(DataError::invalid(
                path,
                format!(
                    "action {:?}: ann_id list differs from the first action's",
                    a.action_name
                ),
            ));
        }
    }
    Ok(actions)
}

/// A COCO image entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    /// Image id.
    pub id: i64,
    /// Width in pixels.
    pub width: f64,
    /// Height in pixels.
    pub height: f64,
    /// File name.
    #[serde(default)]
    pub file_name: String,
}

/// A COCO instance annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    /// Annotation id.
    pub id: i64,
    /// Image id.
    pub image_id: i64,
    /// COCO category id.
    pub category_id: i64,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// Area.
    pub area: f64,
    /// Crowd flag.
    #[serde(default)]
    pub iscrowd: i64,
    /// Optional ignore flag.
    #[serde(default)]
    pub ignore: Option<i64>,
}

/// A COCO category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoCategory {
    /// Category id.
    pub id: i64,
    /// Name.
    pub name: String,
}

/// The parts of a COCO instances file the V-COCO evaluator needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoInstances {
    /// Images.
    pub images: Vec<CocoImage>,
    /// Annotations, in file order.
    pub annotations: Vec<CocoAnnotation>,
    /// Categories, in file order (the order defines the contiguous class ids).
    pub categories: Vec<CocoCategory>,
}

/// Reads a COCO instances file.
pub fn load_coco_instances(path: impl AsRef<Path>) -> Result<CocoInstances, DataError> {
    crate::read_json(path.as_ref())
}

/// Reads a split file of image ids (one number per line, as `np.loadtxt` reads it).
pub fn load_split_ids(path: impl AsRef<Path>) -> Result<Vec<i64>, DataError> {
    let path = path.as_ref();
    let text = String::from_utf8(crate::read_bytes(path)?)
        .map_err(|_| DataError::invalid(path, "not UTF-8 text"))?;
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let v: f64 = line.parse().map_err(|_| {
            DataError::invalid(path, format!("line {}: {line:?} is not a number", i + 1))
        })?;
        if v.fract() != 0.0 {
            return Err(DataError::invalid(
                path,
                format!("line {}: {line:?} is not an integer id", i + 1),
            ));
        }
        ids.push(v as i64);
    }
    Ok(ids)
}

/// A value of a detection dict: an agent score, or a role entry `[x1, y1, x2, y2, score]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DetValue {
    /// `<action>_agent`: a score.
    Score(f64),
    /// `<action>_<role>`: box then score; NaN box = no object.
    List(Vec<f64>),
}

/// One detection of `generate_vcoco_official.py` (one per image and pair).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcocoDetection {
    /// COCO image id.
    pub image_id: i64,
    /// `[x1, y1, x2, y2]`.
    pub person_box: [f64; 4],
    /// Every other key (`hold_obj`, `hold_agent`, ...).
    pub values: BTreeMap<String, DetValue>,
}

fn detection_from_pairs(
    pairs: Vec<(String, DetLike)>,
    index: usize,
    path: &Path,
) -> Result<VcocoDetection, DataError> {
    let bad = |msg: String| DataError::invalid(path, format!("detection {index}: {msg}"));
    let mut image_id = None;
    let mut person_box = None;
    let mut values = BTreeMap::new();
    for (k, v) in pairs {
        match (k.as_str(), v) {
            ("image_id", DetLike::Num(x)) => {
                if x.fract() != 0.0 {
                    return Err(bad(format!("image_id {x} is not an integer")));
                }
                image_id = Some(x as i64)
            }
            ("person_box", DetLike::List(l)) if l.len() == 4 => {
                person_box = Some([l[0], l[1], l[2], l[3]])
            }
            ("image_id" | "person_box", _) => return Err(bad(format!("malformed {k:?}"))),
            (_, DetLike::Num(x)) => {
                values.insert(k, DetValue::Score(x));
            }
            (_, DetLike::List(l)) => {
                values.insert(k, DetValue::List(l));
            }
        }
    }
    Ok(VcocoDetection {
        image_id: image_id.ok_or_else(|| bad("no image_id".into()))?,
        person_box: person_box.ok_or_else(|| bad("no person_box".into()))?,
        values,
    })
}

enum DetLike {
    Num(f64),
    List(Vec<f64>),
}

/// Reads the detection pickle `generate_vcoco_official.py` writes (a list of plain dicts).
pub fn load_vcoco_detections_pickle(
    path: impl AsRef<Path>,
) -> Result<Vec<VcocoDetection>, DataError> {
    let path = path.as_ref();
    let root = crate::pickle::read_pickle(path)?;
    let PickleValue::List(items) = root else {
        return Err(DataError::invalid(path, "top level is not a list"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let PickleValue::Dict(kvs) = item else {
            return Err(DataError::invalid(
                path,
                format!("detection {i} is not a dict"),
            ));
        };
        let mut pairs = Vec::with_capacity(kvs.len());
        for (k, v) in kvs {
            let k = k
                .as_str()
                .ok_or_else(|| DataError::invalid(path, format!("detection {i}: non-string key")))?
                .to_string();
            let v = match v {
                PickleValue::List(l) | PickleValue::Tuple(l) => DetLike::List(
                    l.iter()
                        .map(|x| x.as_f64())
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            DataError::invalid(
                                path,
                                format!("detection {i}: {k:?} holds a non-number"),
                            )
                        })?,
                ),
                other => DetLike::Num(other.as_f64().ok_or_else(|| {
                    DataError::invalid(path, format!("detection {i}: {k:?} is not a number"))
                })?),
            };
            pairs.push((k, v));
        }
        out.push(detection_from_pairs(pairs, i, path)?);
    }
    Ok(out)
}

/// Reads the same detection list written as JSON (NaN as `null`).
pub fn load_vcoco_detections_json(
    path: impl AsRef<Path>,
) -> Result<Vec<VcocoDetection>, DataError> {
    let path = path.as_ref();
    let root: serde_json::Value = crate::read_json(path)?;
    let serde_json::Value::Array(items) = root else {
        return Err(DataError::invalid(path, "top level is not a list"));
    };
    let num = |v: &serde_json::Value| -> Option<f64> {
        match v {
            serde_json::Value::Null => Some(f64::NAN),
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let serde_json::Value::Object(map) = item else {
            return Err(DataError::invalid(
                path,
                format!("detection {i} is not an object"),
            ));
        };
        let mut pairs = Vec::with_capacity(map.len());
        for (k, v) in map {
            let v = match &v {
                serde_json::Value::Array(l) => {
                    DetLike::List(l.iter().map(num).collect::<Option<Vec<_>>>().ok_or_else(
                        || {
                            DataError::invalid(
                                path,
                                format!("detection {i}: {k:?} holds a non-number"),
                            )
                        },
                    )?)
                }
                other => DetLike::Num(num(other).ok_or_else(|| {
                    DataError::invalid(path, format!("detection {i}: {k:?} is not a number"))
                })?),
            };
            pairs.push((k, v));
        }
        out.push(detection_from_pairs(pairs, i, path)?);
    }
    Ok(out)
}
