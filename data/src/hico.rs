//! HICO-DET ground truth in the PPDM / official RLIPv2 JSON layout (`test_hico.json`,
//! `trainval_hico.json`) and the 600-class HOI list (`hoi_list_new.json`).
//!
//! The same image layout is used by the HOIA-format V-COCO file (`test_vcoco.json`), where
//! `object_id` may be -1 (no object) and `hoi_category_id` is absent.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DataError;

/// The 80 valid COCO category ids; a class index is the position in this list (person = 0).
pub const COCO_VALID_OBJ_IDS: [i64; 80] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
];

/// Position of a COCO category id in [`COCO_VALID_OBJ_IDS`].
pub fn coco_id_to_index(id: i64) -> Option<usize> {
    COCO_VALID_OBJ_IDS.iter().position(|&v| v == id)
}

/// One annotated box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoxAnnotation {
    /// `[x1, y1, x2, y2]` in pixels.
    pub bbox: [f64; 4],
    /// COCO category id.
    pub category_id: i64,
}

/// One annotated interaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoiAnnotation {
    /// Index of the subject box in `annotations`.
    pub subject_id: i64,
    /// Index of the object box in `annotations` (-1 = no object, V-COCO only).
    pub object_id: i64,
    /// Verb id (HICO: 1..117; HOIA V-COCO: verb-role class 0..28).
    pub category_id: i64,
    /// HOI class id 1..600 (HICO only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hoi_category_id: Option<i64>,
}

/// One image of a PPDM-layout annotation file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoiImageAnnotation {
    /// Image file name.
    pub file_name: String,
    /// Image id, when the file carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub img_id: Option<i64>,
    /// Boxes.
    pub annotations: Vec<BoxAnnotation>,
    /// Interactions.
    pub hoi_annotation: Vec<HoiAnnotation>,
}

/// Reads a PPDM-layout annotation list and checks every box index and category id.
pub fn load_hoi_annotations(path: impl AsRef<Path>) -> Result<Vec<HoiImageAnnotation>, DataError> {
    let path = path.as_ref();
    let images: Vec<HoiImageAnnotation> = crate::read_json(path)?;
    for (i, img) in images.iter().enumerate() {
        for b in &img.annotations {
            if coco_id_to_index(b.category_id).is_none() {
                return Err(DataError::invalid(
                    path,
                    format!(
                        "image {i} ({}): unknown COCO category id {}",
                        img.file_name, b.category_id
                    ),
                ));
            }
        }
        let n = img.annotations.len() as i64;
        for h in &img.hoi_annotation {
            if h.subject_id < 0 || h.subject_id >= n || h.object_id < -1 || h.object_id >= n {
                return Err(DataError::invalid(
                    path,
                    format!(
                        "image {i} ({}): interaction refers to box {}/{} but the image has {n} boxes",
                        img.file_name, h.subject_id, h.object_id
                    ),
                ));
            }
        }
    }
    Ok(images)
}

/// One entry of `hoi_list_new.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoiClass {
    /// "001".."600".
    pub id: String,
    /// COCO category id of the object.
    pub object_cat: i64,
    /// Verb id 1..117.
    pub verb_id: i64,
    /// Object name.
    #[serde(default)]
    pub object_name: String,
    /// Verb name.
    #[serde(default)]
    pub verb_name: String,
}

/// Reads `hoi_list_new.json` and checks that entry *i* has id *i + 1* and valid ids.
pub fn load_hoi_list(path: impl AsRef<Path>) -> Result<Vec<HoiClass>, DataError> {
    let path = path.as_ref();
    let list: Vec<HoiClass> = crate::read_json(path)?;
    for (i, c) in list.iter().enumerate() {
        let id: usize = c.id.trim().parse().map_err(|_| {
            DataError::invalid(path, format!("entry {i}: id {:?} is not a number", c.id))
        })?;
        if id != i + 1 {
            return Err(DataError::invalid(
                path,
                format!("entry {i} has id {id}, expected {}", i + 1),
            ));
        }
        if coco_id_to_index(c.object_cat).is_none() || !(1..=117).contains(&c.verb_id) {
            return Err(DataError::invalid(
                path,
                format!(
                    "entry {i}: object_cat {} / verb_id {} out of range",
                    c.object_cat, c.verb_id
                ),
            ));
        }
    }
    Ok(list)
}
