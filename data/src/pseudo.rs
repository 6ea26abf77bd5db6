//! Pseudo-labelled COCO 2017 and Objects365 relation files, as the official
//! `datasets/mixed_dataset.py::MixedRelDetection` (and `datasets/coco.py::CocoRLIPDetection`)
//! read them.
//!
//! The files (written by the official `generate_relations_using_verb_tagger.py`) use the
//! scene-graph layout of [`crate::vg`], plus per image `"dataset"` (`"coco2017"` or `"o365"`) and
//! `"data_split"` (`"train2017"` / `"val2017"` for COCO, `"train"` / `"val"` for Objects365), and
//! per relationship the Relation Tagger's `"confidence"`. Boxes are floats in pixels.
//!
//! - Relation threshold ([`filter_by_confidence`]): with a threshold `t > 0` (the official
//!   pre-training scripts use `--relation_threshold 0.20`; `t` must be ≤ 1), a relationship is
//!   kept when it has no `confidence` (VG annotations) or its `confidence ≥ t`; `t ≤ 0` keeps
//!   everything. Images are kept even when no relationship survives (the mixed dataset then skips
//!   them: [`crate::pretrain::drop_images_without_relations`]).
//! - Image files: COCO images are `{coco_root}/{data_split}/{image_id:012}.jpg`, with
//!   `train2017` when `data_split` is absent ([`coco_image_path`]); Objects365 images are
//!   `{o365_root}/{path}` with `path` looked up by the image id's string in
//!   `image_id_to_filepath.json` ([`O365FilePaths`]).
//! - Not implemented: the optional `--pair_overlap` filter and HICO-DET (`"dataset": "hico"`)
//!   images of the mixed dataset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::DataError;
use crate::vg::{SceneGraphImage, found, read_records};

/// The relation threshold of the official pre-training scripts (`--relation_threshold 0.20`).
pub const RELATION_THRESHOLD: f64 = 0.2;
/// The COCO split folder used when an image has no `data_split`.
pub const COCO_DEFAULT_SPLIT: &str = "train2017";
/// The `dataset` value of pseudo-labelled COCO 2017 images.
pub const COCO2017: &str = "coco2017";
/// The `dataset` value of pseudo-labelled Objects365 images.
pub const O365: &str = "o365";

/// Reads a pseudo-relation file, checks that every image's `dataset` is `coco2017` or `o365`,
/// and applies the relation threshold (see [`filter_by_confidence`]). `threshold` must not be
/// NaN or above 1 (the official `assert`).
pub fn load_pseudo_relations(
    path: impl AsRef<Path>,
    threshold: f64,
) -> Result<Vec<SceneGraphImage>, DataError> {
    let path = path.as_ref();
    if threshold.is_nan() || threshold > 1.0 {
        return Err(DataError::invalid(
            path,
            format!("relation threshold {threshold} is not in (0, 1] (or ≤ 0 for none)"),
        ));
    }
    let mut images = read_records(path, "image", |v| {
        let img = crate::vg::parse_image(v)?;
        match img.dataset.as_deref() {
            Some(COCO2017) | Some(O365) => Ok(img),
            Some(other) => Err(format!(
                " (image_id {}): dataset: expected \"{COCO2017}\" or \"{O365}\", found {other:?}",
                img.image_id
            )),
            None => Err(format!(
                " (image_id {}): dataset: missing field",
                img.image_id
            )),
        }
    })?;
    filter_by_confidence(&mut images, threshold);
    Ok(images)
}

/// Applies the official relation threshold in place: with `threshold > 0`, drops the
/// relationships that have a `confidence` below it (those without one are kept); with
/// `threshold ≤ 0` (or NaN) does nothing. Returns how many relationships were dropped.
pub fn filter_by_confidence(images: &mut [SceneGraphImage], threshold: f64) -> usize {
    if threshold.is_nan() || threshold <= 0.0 {
        return 0;
    }
    let mut dropped = 0;
    for img in images {
        let before = img.relationships.len();
        img.relationships
            .retain(|r| r.confidence.is_none_or(|c| c >= threshold));
        dropped += before - img.relationships.len();
    }
    dropped
}

/// The COCO image file of a pseudo-labelled image:
/// `{coco_root}/{data_split or "train2017"}/{image_id zero-padded to 12}.jpg`.
pub fn coco_image_path(coco_root: &Path, img: &SceneGraphImage) -> PathBuf {
    let split = img.data_split.as_deref().unwrap_or(COCO_DEFAULT_SPLIT);
    coco_root
        .join(split)
        .join(format!("{:0>12}.jpg", img.image_id.to_string()))
}

/// Objects365's `image_id_to_filepath.json`: image id (as a string) → file path relative to the
/// Objects365 folder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct O365FilePaths {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    /// Image id string → relative path.
    pub paths: HashMap<String, String>,
}

impl O365FilePaths {
    /// Reads `image_id_to_filepath.json` (a JSON object of strings).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let v: Value = crate::read_json(path)?;
        let Some(map) = v.as_object() else {
            return Err(DataError::invalid(
                path,
                format!("expected an object of image id → path, found {}", found(&v)),
            ));
        };
        let paths = map
            .iter()
            .map(|(k, p)| match p.as_str() {
                Some(s) => Ok((k.clone(), s.to_string())),
                None => Err(DataError::invalid(
                    path,
                    format!("[{k:?}]: expected a path string, found {}", found(p)),
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(O365FilePaths {
            source: path.to_path_buf(),
            paths,
        })
    }

    /// `{o365_root}/{path of img.image_id}`; an id missing from the map is an error naming the
    /// map file and the id.
    pub fn image_path(
        &self,
        o365_root: &Path,
        img: &SceneGraphImage,
    ) -> Result<PathBuf, DataError> {
        let id = img.image_id.to_string();
        self.paths
            .get(&id)
            .map(|p| o365_root.join(p))
            .ok_or_else(|| DataError::invalid(&self.source, format!("no entry for image id {id}")))
    }
}
