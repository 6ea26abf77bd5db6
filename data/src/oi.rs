//! Open Images v6 scene-graph ground truth in the RLIPv2 JSON layout (`OI_SGG_test.json`,
//! `categories_dict.json`, `OI_SGG_trainval_test_categories_dict.json`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DataError;

/// One annotated box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OiBox {
    /// `[x1, y1, x2, y2]` in pixels.
    pub bbox: [f64; 4],
    /// Index into the full (601-name) object list.
    pub category_id: i64,
}

/// One annotated relation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OiRelation {
    /// Index of the subject box.
    pub subject_id: i64,
    /// Index of the object box.
    pub object_id: i64,
    /// Relation id 0..29.
    pub category_id: i64,
}

/// One image of `OI_SGG_test.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OiImageAnnotation {
    /// Image file name.
    pub file_name: String,
    /// Boxes.
    pub annotations: Vec<OiBox>,
    /// Relations.
    pub rel_annotations: Vec<OiRelation>,
}

/// A `{"obj": [...], "rel": [...]}` category file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OiCategories {
    /// Object names.
    pub obj: Vec<String>,
    /// Relation names.
    pub rel: Vec<String>,
}

/// Reads an annotation list without checking relation indices: the official training loader
/// drops images whose relations point past their boxes, which the caller counts.
pub fn read_oi_annotations(path: impl AsRef<Path>) -> Result<Vec<OiImageAnnotation>, DataError> {
    crate::read_json(path.as_ref())
}

/// Reads `OI_SGG_test.json` (or the train list) and checks every box index.
pub fn load_oi_annotations(path: impl AsRef<Path>) -> Result<Vec<OiImageAnnotation>, DataError> {
    let path = path.as_ref();
    let images: Vec<OiImageAnnotation> = crate::read_json(path)?;
    for (i, img) in images.iter().enumerate() {
        let n = img.annotations.len() as i64;
        for r in &img.rel_annotations {
            if r.subject_id < 0 || r.subject_id >= n || r.object_id < 0 || r.object_id >= n {
                return Err(DataError::invalid(
                    path,
                    format!(
                        "image {i} ({}): relation refers to box {}/{} but the image has {n} boxes",
                        img.file_name, r.subject_id, r.object_id
                    ),
                ));
            }
        }
    }
    Ok(images)
}

/// Reads a category file.
pub fn load_oi_categories(path: impl AsRef<Path>) -> Result<OiCategories, DataError> {
    crate::read_json(path.as_ref())
}

/// For each evaluated object name, its index in the full list (the official `_valid_obj_ids`).
pub fn valid_obj_ids(
    all: &OiCategories,
    evaluated: &OiCategories,
    path: &Path,
) -> Result<Vec<i64>, DataError> {
    evaluated
        .obj
        .iter()
        .map(|name| {
            all.obj
                .iter()
                .position(|n| n == name)
                .map(|p| p as i64)
                .ok_or_else(|| {
                    DataError::invalid(
                        path,
                        format!("object name {name:?} is not in the full list"),
                    )
                })
        })
        .collect()
}
