//! The saved-predictions file: model outputs after post-processing, one entry per test image,
//! so a split can be evaluated (again) without running the model.
//!
//! # Format (JSON, version 1)
//!
//! ```json
//! {
//!   "format": "rlip-predictions",
//!   "version": 1,
//!   "dataset": "hico",
//!   "images": [
//!     {
//!       "file_name": "HICO_test2015_00000001.jpg",
//!       "image_id": 1,
//!       "num_verbs": 117,
//!       "labels": [0, 0, 12, 40],
//!       "boxes": [[x1, y1, x2, y2], [..], [..], [..]],
//!       "verb_scores": [[s_0, .., s_116], [..]],
//!       "sub_ids": [0, 1],
//!       "obj_ids": [2, 3]
//!     }
//!   ]
//! }
//! ```
//!
//! - `format` must be `"rlip-predictions"` and `version` at most 1 when present (they are always
//!   written). `dataset` (`hico` | `vcoco` | `oi`) is optional; when present it must match the
//!   split.
//! - Each image has the [`PairPredictions`] fields, in the layout `PostProcessHOI` /
//!   `PostProcessSGG` emit: for *np* pairs, `labels` and `boxes` have 2·np entries (subjects,
//!   then objects; any layout works as long as `sub_ids` / `obj_ids` index into them), `boxes`
//!   are `[x1, y1, x2, y2]` in original-image pixels, `verb_scores` has np rows of `num_verbs`
//!   scores, and pair *p* is `(sub_ids[p], obj_ids[p])`.
//! - Labels: HICO-DET and V-COCO use positions in the 80 COCO ids (person = 0; V-COCO also 80
//!   = "missing object", whose box is ignored); Open Images uses positions in the 288 evaluated
//!   objects. `num_verbs` is 117 (HICO-DET), 29 (V-COCO) or 30 (Open Images). For V-COCO keep
//!   every pair (the official `generate_vcoco_official.py` writes one detection per pair).
//! - `image_id` is optional and informational. Images are matched to the split by `file_name`;
//!   the order of `images` does not matter.
//! - An image with no pairs (`"labels": [], "boxes": [], "verb_scores": [], "sub_ids": [],
//!   "obj_ids": []`) is allowed: it contributes no detection. An image of the split that is
//!   *absent* from the file is an error unless the caller asks for absent images to count as
//!   empty ([`MissingImages::Empty`]).
//! - Unknown fields, duplicate or unknown file names, NaN (`null`) boxes or scores, negative or
//!   out-of-range labels and indices, and rows of the wrong length are errors that name the
//!   file, the image and the field.
//!
//! Files are written atomically: to a temporary file in the same folder, then renamed.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::split::{Dataset, EvalSplit};
use super::{EvalError, PairPredictions};

/// The value of the `format` field.
pub const PREDICTIONS_FORMAT: &str = "rlip-predictions";
/// The format version this code writes (and the newest it reads).
pub const PREDICTIONS_VERSION: u32 = 1;

/// One image's predictions, keyed by its file name.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePredictions {
    /// File name, as the split's annotation file lists it.
    pub file_name: String,
    /// Optional image id (informational).
    pub image_id: Option<i64>,
    /// The predictions.
    pub predictions: PairPredictions,
}

/// The content of a predictions file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PredictionsFile {
    /// The dataset the predictions are for, when known.
    pub dataset: Option<Dataset>,
    /// One entry per image, any order.
    pub images: Vec<ImagePredictions>,
}

/// What to do with split images that have no entry in the predictions file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum MissingImages {
    /// Refuse the file (the default: a partial file would silently lower every AP).
    #[default]
    Error,
    /// Treat them as images without any prediction.
    Empty,
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

struct Rows<'a> {
    values: &'a [f32],
    width: usize,
    rows: usize,
}

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.rows))?;
        for r in 0..self.rows {
            seq.serialize_element(&self.values[r * self.width..(r + 1) * self.width])?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct ImageOut<'a> {
    file_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_id: Option<i64>,
    num_verbs: usize,
    labels: &'a [i64],
    boxes: &'a [[f32; 4]],
    verb_scores: Rows<'a>,
    sub_ids: &'a [usize],
    obj_ids: &'a [usize],
}

struct ImagesOut<'a>(&'a [ImagePredictions]);

impl Serialize for ImagesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for im in self.0 {
            let p = &im.predictions;
            seq.serialize_element(&ImageOut {
                file_name: &im.file_name,
                image_id: im.image_id,
                num_verbs: p.num_verbs,
                labels: &p.labels,
                boxes: &p.boxes,
                verb_scores: Rows {
                    values: &p.verb_scores,
                    width: p.num_verbs,
                    rows: p.num_pairs(),
                },
                sub_ids: &p.sub_ids,
                obj_ids: &p.obj_ids,
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct FileOut<'a> {
    format: &'a str,
    version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataset: Option<Dataset>,
    images: ImagesOut<'a>,
}

/// Writes `file` as JSON (see the module docs), atomically. Every image is validated first;
/// nothing is written when one is invalid.
pub fn write_predictions(path: &Path, file: &PredictionsFile) -> Result<(), EvalError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, im) in file.images.iter().enumerate() {
        if let Some(first) = seen.insert(im.file_name.as_str(), i) {
            return Err(pred_err(
                path,
                format!(
                    "images {first} and {i} have the same file name {:?}",
                    im.file_name
                ),
            ));
        }
        check_image(&im.predictions)
            .map_err(|m| pred_err(path, format!("image {i} ({:?}): {m}", im.file_name)))?;
    }
    let out = FileOut {
        format: PREDICTIONS_FORMAT,
        version: PREDICTIONS_VERSION,
        dataset: file.dataset,
        images: ImagesOut(&file.images),
    };
    write_atomic(path, |w| {
        serde_json::to_writer(&mut *w, &out).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })
}

/// Writes the predictions of every image of `split` (`preds[i]` belongs to `split.images[i]`).
pub fn write_split_predictions(
    path: &Path,
    split: &EvalSplit,
    preds: &[PairPredictions],
) -> Result<(), EvalError> {
    if preds.len() != split.images.len() {
        return Err(pred_err(
            path,
            format!(
                "{} prediction entries for a split of {} images",
                preds.len(),
                split.images.len()
            ),
        ));
    }
    let file = PredictionsFile {
        dataset: Some(split.dataset),
        images: split
            .images
            .iter()
            .zip(preds)
            .map(|(im, p)| ImagePredictions {
                file_name: im.file_name.clone(),
                image_id: im.image_id,
                predictions: p.clone(),
            })
            .collect(),
    };
    write_predictions(path, &file)
}

/// Writes a file through `body` into a temporary file next to `path`, then renames it over
/// `path`; on failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    body: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), EvalError> {
    let werr = |source| EvalError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| werr(std::io::Error::other("not a file path")))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        body(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// A float that reads JSON `null` as NaN, so that validation can name the field.
#[derive(Clone, Copy)]
struct Num(f32);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or null")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v as f32))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f32))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f32))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Num, E> {
                Ok(Num(f32::NAN))
            }
            fn visit_none<E: de::Error>(self) -> Result<Num, E> {
                Ok(Num(f32::NAN))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageIn {
    file_name: String,
    #[serde(default)]
    image_id: Option<i64>,
    num_verbs: usize,
    labels: Vec<i64>,
    boxes: Vec<[Num; 4]>,
    verb_scores: Vec<Vec<Num>>,
    sub_ids: Vec<i64>,
    obj_ids: Vec<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    dataset: Option<Dataset>,
    images: Vec<ImageIn>,
}

fn pred_err(path: &Path, msg: String) -> EvalError {
    EvalError::Predictions {
        path: path.to_path_buf(),
        msg,
    }
}

/// Checks one image's predictions; the message names the field.
fn check_image(p: &PairPredictions) -> Result<(), String> {
    let n = p.labels.len();
    if p.boxes.len() != n {
        return Err(format!(
            "boxes: {} boxes but labels has {n} entries",
            p.boxes.len()
        ));
    }
    if let Some(i) = p.labels.iter().position(|&l| l < 0) {
        return Err(format!("labels[{i}] = {} is negative", p.labels[i]));
    }
    for (i, b) in p.boxes.iter().enumerate() {
        if let Some(c) = b.iter().position(|x| !x.is_finite()) {
            return Err(format!(
                "boxes[{i}][{c}] is {} (a box needs 4 finite coordinates)",
                b[c]
            ));
        }
    }
    if p.sub_ids.len() != p.obj_ids.len() {
        return Err(format!(
            "obj_ids: {} entries but sub_ids has {}",
            p.obj_ids.len(),
            p.sub_ids.len()
        ));
    }
    for (field, ids) in [("sub_ids", &p.sub_ids), ("obj_ids", &p.obj_ids)] {
        if let Some(i) = ids.iter().position(|&j| j >= n) {
            return Err(format!(
                "{field}[{i}] = {} is out of range ({n} boxes)",
                ids[i]
            ));
        }
    }
    if p.verb_scores.len() != p.num_pairs() * p.num_verbs {
        return Err(format!(
            "verb_scores: {} values, expected {} pairs x {} verbs",
            p.verb_scores.len(),
            p.num_pairs(),
            p.num_verbs
        ));
    }
    if let Some(i) = p.verb_scores.iter().position(|x| !x.is_finite()) {
        let v = p.num_verbs.max(1);
        return Err(format!(
            "verb_scores[{}][{}] is {}",
            i / v,
            i % v,
            p.verb_scores[i]
        ));
    }
    Ok(())
}

fn convert_image(im: ImageIn) -> Result<ImagePredictions, String> {
    let np = im.sub_ids.len();
    if im.verb_scores.len() != np {
        return Err(format!(
            "verb_scores: {} rows but there are {np} pairs (sub_ids)",
            im.verb_scores.len()
        ));
    }
    let mut verb_scores = Vec::with_capacity(np * im.num_verbs);
    for (r, row) in im.verb_scores.iter().enumerate() {
        if row.len() != im.num_verbs {
            return Err(format!(
                "verb_scores[{r}]: {} values, expected num_verbs = {}",
                row.len(),
                im.num_verbs
            ));
        }
        verb_scores.extend(row.iter().map(|x| x.0));
    }
    let ids = |field: &str, v: &[i64]| -> Result<Vec<usize>, String> {
        v.iter()
            .enumerate()
            .map(|(i, &x)| {
                usize::try_from(x).map_err(|_| format!("{field}[{i}] = {x} is negative"))
            })
            .collect()
    };
    let predictions = PairPredictions {
        labels: im.labels,
        boxes: im.boxes.iter().map(|b| b.map(|x| x.0)).collect(),
        verb_scores,
        num_verbs: im.num_verbs,
        sub_ids: ids("sub_ids", &im.sub_ids)?,
        obj_ids: ids("obj_ids", &im.obj_ids)?,
    };
    check_image(&predictions)?;
    Ok(ImagePredictions {
        file_name: im.file_name,
        image_id: im.image_id,
        predictions,
    })
}

/// Reads a predictions file and checks each image on its own (lengths, indices, NaN, duplicate
/// names); see [`read_predictions`] for the checks against a split.
pub fn read_predictions_file(path: &Path) -> Result<PredictionsFile, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| {
        EvalError::Data(rlip_data::DataError::Io {
            path: path.to_path_buf(),
            source,
        })
    })?;
    let raw: FileIn = serde_json::from_slice(&bytes)
        .map_err(|e| pred_err(path, format!("not a predictions file: {e}")))?;
    drop(bytes);
    if let Some(f) = &raw.format
        && f != PREDICTIONS_FORMAT
    {
        return Err(pred_err(
            path,
            format!("format is {f:?}, expected {PREDICTIONS_FORMAT:?}"),
        ));
    }
    if let Some(v) = raw.version
        && v > PREDICTIONS_VERSION
    {
        return Err(pred_err(
            path,
            format!("version {v} is newer than this reader ({PREDICTIONS_VERSION})"),
        ));
    }
    let mut images = Vec::with_capacity(raw.images.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, im) in raw.images.into_iter().enumerate() {
        let name = im.file_name.clone();
        if let Some(first) = seen.insert(name.clone(), i) {
            return Err(pred_err(
                path,
                format!("images {first} and {i} have the same file name {name:?}"),
            ));
        }
        images.push(
            convert_image(im).map_err(|m| pred_err(path, format!("image {i} ({name:?}): {m}")))?,
        );
    }
    Ok(PredictionsFile {
        dataset: raw.dataset,
        images,
    })
}

/// Reads a predictions file and aligns it to `split` (result `i` belongs to
/// `split.images[i]`). Unknown images, images of the split without an entry, a different
/// `dataset`, a wrong `num_verbs` and out-of-range labels are errors.
pub fn read_predictions(path: &Path, split: &EvalSplit) -> Result<Vec<PairPredictions>, EvalError> {
    align_predictions(
        read_predictions_file(path)?,
        path,
        split,
        MissingImages::Error,
    )
}

/// Aligns the content of a predictions file (read from `path`, for messages) to `split`.
pub fn align_predictions(
    file: PredictionsFile,
    path: &Path,
    split: &EvalSplit,
    missing: MissingImages,
) -> Result<Vec<PairPredictions>, EvalError> {
    if let Some(d) = file.dataset
        && d != split.dataset
    {
        return Err(pred_err(
            path,
            format!(
                "the predictions are for {d}, the split is {}",
                split.dataset
            ),
        ));
    }
    let index = split.index_by_file_name();
    let (nv, nl) = (split.num_verbs(), split.num_labels());
    let mut out: Vec<Option<PairPredictions>> = vec![None; split.images.len()];
    let mut unknown = Vec::new();
    for (i, im) in file.images.into_iter().enumerate() {
        let Some(&k) = index.get(im.file_name.as_str()) else {
            unknown.push(im.file_name);
            continue;
        };
        let p = im.predictions;
        let ctx = || format!("image {i} ({:?})", split.images[k].file_name);
        if p.num_pairs() > 0 && p.num_verbs != nv {
            return Err(pred_err(
                path,
                format!(
                    "{}: num_verbs is {}, {} needs {nv}",
                    ctx(),
                    p.num_verbs,
                    split.dataset
                ),
            ));
        }
        if let Some(j) = p.labels.iter().position(|&l| l as usize >= nl) {
            return Err(pred_err(
                path,
                format!(
                    "{}: labels[{j}] = {} is out of range ({} labels for {})",
                    ctx(),
                    p.labels[j],
                    nl,
                    split.dataset
                ),
            ));
        }
        let p = if p.num_pairs() == 0 {
            PairPredictions { num_verbs: nv, ..p }
        } else {
            p
        };
        out[k] = Some(p);
    }
    if !unknown.is_empty() {
        let shown: Vec<&str> = unknown.iter().take(5).map(String::as_str).collect();
        return Err(pred_err(
            path,
            format!(
                "{} image(s) are not in the {} test split (first: {})",
                unknown.len(),
                split.dataset,
                shown.join(", ")
            ),
        ));
    }
    let absent: Vec<usize> = (0..out.len()).filter(|&k| out[k].is_none()).collect();
    if !absent.is_empty() && missing == MissingImages::Error {
        let shown: Vec<&str> = absent
            .iter()
            .take(5)
            .map(|&k| split.images[k].file_name.as_str())
            .collect();
        return Err(pred_err(
            path,
            format!(
                "{} of the {} test images have no predictions (first: {}); write an empty entry for images without detections",
                absent.len(),
                split.images.len(),
                shown.join(", ")
            ),
        ));
    }
    Ok(out
        .into_iter()
        .map(|p| {
            p.unwrap_or_else(|| PairPredictions {
                labels: Vec::new(),
                boxes: Vec::new(),
                verb_scores: Vec::new(),
                num_verbs: nv,
                sub_ids: Vec::new(),
                obj_ids: Vec::new(),
            })
        })
        .collect())
}
