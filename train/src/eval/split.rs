//! Test splits read from a dataset folder in the official RLIPv2 layout.
//!
//! | dataset | files under `ROOT` (as `datasets/*.py::build` and `datasets/vsrl_eval.py` name them) |
//! |---|---|
//! | HICO-DET | `annotations/test_hico.json`, `annotations/corre_hico.npy`, `annotations/trainval_hico.json` (rare split, Default setting) or `annotations/hoi_list_new.json` (zero-shot settings; the unseen-file setting also `annotations/unseen_hoi.json`); images `images/test2015/`; optionally `labels.json` (a HICO-format dataset with its own classes) |
//! | V-COCO | `annotations/test_vcoco.json` (HOIA layout), `annotations/corre_vcoco.npy`; for the official evaluator `annotations/vcoco_test.json` (or `data/vcoco/vcoco_test.json`), `data/instances_vcoco_all_2014.json`, `data/splits/vcoco_test.ids`; images `images/val2014/` |
//! | Open Images v6 | `annotations/OI_SGG_test.json`, `annotations/categories_dict.json`, `annotations/OI_SGG_trainval_test_categories_dict.json`; images `images/` |
//!
//! The official `OISGGDetection` hard-codes the two category files under
//! `/Path/To/data/open-imagev6/annotations/`; here they are read from `ROOT/annotations/`.
//! A missing file is an [`EvalError::MissingFile`] naming the path and what the file is.
//!
//! # HICO-format datasets with their own classes
//!
//! When `ROOT/labels.json` exists (read with [`LabelSet::from_file`]; the synthetic dataset of
//! [`rlip_data::synth`] writes one), the HICO-DET loader takes the number of verbs and objects
//! from it instead of the official 117 × 80: `corre_hico.npy` must be `[relations, objects]`, a
//! box `category_id` must be one of the first `objects` COCO ids (the class is its position in
//! `COCO_VALID_OBJ_IDS`, so at most 80 objects) and a verb id must be in `1..=relations`. The
//! rare split (fewer than 10 training instances) and the HOI classes (the (verb, object) pairs of
//! the test GT) need nothing else. The official zero-shot index lists only fit the official
//! 600-class `hoi_list_new.json`; [`ZeroShotSetting::UnseenFile`] reads the unseen HOIs from
//! `annotations/unseen_hoi.json` (0-based indices into `annotations/hoi_list_new.json`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rlip_data::hico::{HoiClass, coco_id_to_index, load_hoi_annotations, load_hoi_list};
use rlip_data::labels::LabelSet;
use rlip_data::oi::{OiCategories, load_oi_annotations, load_oi_categories};
use rlip_data::vcoco::{
    load_coco_instances, load_hoia_annotations, load_split_ids, load_vsrl_annotations,
};
use serde::{Deserialize, Serialize};

use super::hico::{HicoGtImage, HicoSplit, ZeroShotSetting, hico_gt_from_annotations_with};
use super::oi::{OiGtImage, oi_gt_from_annotations};
use super::vcoco::{
    VcocoGtImage, VcocoOfficialGt, vcoco_gt_from_annotations, vcoco_image_id_from_file_name,
};
use super::{CorrectMat, EvalError, invalid};

/// The datasets RLIPv2 evaluates on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// HICO-DET (600 HOI classes, 117 verbs, 80 COCO objects).
    Hico,
    /// V-COCO (29 verb-role classes; official role AP in scenarios 1 and 2).
    Vcoco,
    /// Open Images v6 scene graphs (288 objects, 30 relations).
    Oi,
}

impl Dataset {
    /// All datasets.
    pub const ALL: [Dataset; 3] = [Dataset::Hico, Dataset::Vcoco, Dataset::Oi];

    /// The lower-case name used on the command line and in files (`hico`, `vcoco`, `oi`).
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Hico => "hico",
            Dataset::Vcoco => "vcoco",
            Dataset::Oi => "oi",
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = EvalError;

    /// Accepts `hico` (`hico-det`, `hicodet`), `vcoco` (`v-coco`) and `oi` (`openimages`,
    /// `oi-sgg`, `oi_sgg`), case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "hico" | "hico-det" | "hico_det" | "hicodet" => Ok(Dataset::Hico),
            "vcoco" | "v-coco" | "v_coco" => Ok(Dataset::Vcoco),
            "oi" | "openimages" | "open-images" | "oi-sgg" | "oi_sgg" => Ok(Dataset::Oi),
            other => Err(invalid(format!(
                "unknown dataset {other:?} (expected hico, vcoco or oi)"
            ))),
        }
    }
}

impl FromStr for ZeroShotSetting {
    type Err = EvalError;

    /// Accepts `UC-RF`, `UC-NF`, `UO` and `unseen-file` (case-insensitive, `-`/`_` optional).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let k: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        match k.as_str() {
            "ucrf" => Ok(ZeroShotSetting::UcRf),
            "ucnf" => Ok(ZeroShotSetting::UcNf),
            "uo" => Ok(ZeroShotSetting::Uo),
            "unseenfile" => Ok(ZeroShotSetting::UnseenFile),
            _ => Err(invalid(format!(
                "unknown zero-shot setting {s:?} (expected UC-RF, UC-NF, UO or unseen-file)"
            ))),
        }
    }
}

/// One test image, in split order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalImage {
    /// File name as the annotation file lists it (the key of saved predictions).
    pub file_name: String,
    /// Full path of the image (`ROOT/images/<set>/<file_name>`); it is not checked to exist.
    pub path: PathBuf,
    /// Original `(height, width)` when the annotations carry it (V-COCO: from the COCO
    /// instances file; HICO-DET and Open Images: `None`, read it from the image). This is the
    /// `orig_size` the post-processing scales boxes with.
    pub orig_size_hw: Option<[i64; 2]>,
    /// COCO image id (V-COCO: from the file name, as `datasets/vcoco.py` derives it), or the
    /// `img_id` field of the annotation when present.
    pub image_id: Option<i64>,
}

/// HICO-DET ground truth of a split.
#[derive(Debug, Clone, PartialEq)]
pub struct HicoSplitGt {
    /// Per test image, split order.
    pub gts: Vec<HicoGtImage>,
    /// `corre_hico.npy` `[117, 80]` (with `labels.json`: `[relations, objects]`).
    pub correct_mat: CorrectMat,
    /// Rare / non-rare triplets (zero-shot: unseen / seen).
    pub buckets: HicoSplit,
    /// The zero-shot setting, when the buckets are unseen / seen.
    pub zero_shot: Option<ZeroShotSetting>,
    /// The classes of `ROOT/labels.json` when the dataset has one (then they set the number of
    /// verbs and objects); `None`: the official HICO-DET classes (117 verbs, 80 objects).
    pub labels: Option<LabelSet>,
}

/// V-COCO ground truth of a split.
#[derive(Debug, Clone, PartialEq)]
pub struct VcocoSplitGt {
    /// HOIA-format GT of the in-training evaluator, split order.
    pub gts: Vec<VcocoGtImage>,
    /// `corre_vcoco.npy` `[29, 80]` (the code appends the "missing object" column).
    pub correct_mat: CorrectMat,
    /// The official `vsrl_eval` GT database.
    pub official: VcocoOfficialGt,
    /// COCO image id of each test image, split order.
    pub image_ids: Vec<i64>,
}

/// Open Images ground truth of a split.
#[derive(Debug, Clone, PartialEq)]
pub struct OiSplitGt {
    /// Per test image, split order.
    pub gts: Vec<OiGtImage>,
    /// The evaluated categories (288 objects, 30 relations), in their own order.
    pub categories: OiCategories,
}

/// The ground truth the evaluators of one dataset need.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitGt {
    /// HICO-DET.
    Hico(HicoSplitGt),
    /// V-COCO.
    Vcoco(VcocoSplitGt),
    /// Open Images v6.
    Oi(OiSplitGt),
}

/// Options of [`load_split_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SplitConfig {
    /// HICO-DET only: bucket by a zero-shot setting (unseen = "rare", seen = "non-rare", from
    /// `annotations/hoi_list_new.json`; [`ZeroShotSetting::UnseenFile`]: the unseen indices of
    /// `annotations/unseen_hoi.json`) instead of the rare split of `trainval_hico.json`.
    pub zero_shot: Option<ZeroShotSetting>,
}

/// A test split: its images in order, and the ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSplit {
    /// The dataset.
    pub dataset: Dataset,
    /// The dataset folder.
    pub root: PathBuf,
    /// Test images, in the order of the annotation file (the order predictions are aligned to).
    pub images: Vec<EvalImage>,
    /// Ground truth.
    pub gt: SplitGt,
    /// Things worth telling the user that do not stop the evaluation.
    pub warnings: Vec<String>,
}

impl EvalSplit {
    /// Number of test images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether the split has no image.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Number of verb (relation) columns predictions must have: HICO-DET 117 (a HICO-format
    /// dataset with `labels.json`: its relations), V-COCO 29, Open Images the number of relation
    /// names (30).
    pub fn num_verbs(&self) -> usize {
        match &self.gt {
            SplitGt::Hico(h) => h.correct_mat.num_verbs,
            SplitGt::Vcoco(v) => v.correct_mat.num_verbs,
            SplitGt::Oi(o) => o.categories.rel.len(),
        }
    }

    /// Number of valid predicted box labels: HICO-DET 80 (COCO positions; with `labels.json`: its
    /// objects), V-COCO 81 (80 plus the "missing object" label 80), Open Images the number of
    /// evaluated objects (288).
    pub fn num_labels(&self) -> usize {
        match &self.gt {
            SplitGt::Hico(h) => h.correct_mat.num_objects,
            SplitGt::Vcoco(v) => v.correct_mat.num_objects + 1,
            SplitGt::Oi(o) => o.categories.obj.len(),
        }
    }

    /// Index of each image by file name.
    pub fn index_by_file_name(&self) -> HashMap<&str, usize> {
        self.images
            .iter()
            .enumerate()
            .map(|(i, im)| (im.file_name.as_str(), i))
            .collect()
    }
}

/// Looks for a required file among `candidates` (first existing wins).
fn require(candidates: &[PathBuf], what: &str) -> Result<PathBuf, EvalError> {
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let what = if candidates.len() > 1 {
        let others: Vec<String> = candidates[1..]
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!("{what} (also looked for {})", others.join(", "))
    } else {
        what.to_string()
    };
    Err(EvalError::MissingFile {
        path: candidates[0].clone(),
        what,
    })
}

/// [`load_split_with`] with the default options (HICO-DET: Default setting, rare split from
/// `trainval_hico.json`).
pub fn load_split(dataset: Dataset, root: &Path) -> Result<EvalSplit, EvalError> {
    load_split_with(dataset, root, &SplitConfig::default())
}

/// Reads the test split of `dataset` from `root` (official RLIPv2 layout, see the module docs).
pub fn load_split_with(
    dataset: Dataset,
    root: &Path,
    cfg: &SplitConfig,
) -> Result<EvalSplit, EvalError> {
    if !root.is_dir() {
        return Err(EvalError::MissingFile {
            path: root.to_path_buf(),
            what: format!("{dataset} dataset folder"),
        });
    }
    if cfg.zero_shot.is_some() && dataset != Dataset::Hico {
        return Err(invalid(
            "zero-shot settings are only defined for HICO-DET here",
        ));
    }
    let ann = root.join("annotations");
    match dataset {
        Dataset::Hico => load_hico(root, &ann, cfg),
        Dataset::Vcoco => load_vcoco(root, &ann),
        Dataset::Oi => load_oi(root, &ann),
    }
}

/// `(verbs, objects, label set)` of a HICO-format dataset: from `ROOT/labels.json` when it
/// exists, else the official 117 × 80.
fn hico_classes(root: &Path) -> Result<(usize, usize, Option<LabelSet>), EvalError> {
    let file = root.join("labels.json");
    if !file.is_file() {
        return Ok((117, 80, None));
    }
    let labels = LabelSet::from_file(&file)?;
    let (v, o) = (labels.relations.len(), labels.objects.len());
    if v == 0 || o == 0 || o > COCO_OBJECTS {
        return Err(EvalError::Data(rlip_data::DataError::Invalid {
            path: file,
            msg: format!(
                "{v} relations and {o} objects: a HICO-format dataset needs at least one of each, \
                 and at most {COCO_OBJECTS} objects (object classes are positions in the COCO ids)"
            ),
        }));
    }
    Ok((v, o, Some(labels)))
}

/// Object classes a HICO-format category id can name (positions in `COCO_VALID_OBJ_IDS`).
const COCO_OBJECTS: usize = rlip_data::hico::COCO_VALID_OBJ_IDS.len();

fn load_hico(root: &Path, ann: &Path, cfg: &SplitConfig) -> Result<EvalSplit, EvalError> {
    let test = require(
        &[ann.join("test_hico.json")],
        "HICO-DET test annotations (PPDM layout test_hico.json)",
    )?;
    let mat = require(
        &[ann.join("corre_hico.npy")],
        "HICO-DET verb x object validity matrix (corre_hico.npy)",
    )?;
    let buckets_file = match cfg.zero_shot {
        None => require(
            &[ann.join("trainval_hico.json")],
            "HICO-DET training annotations (trainval_hico.json; they define the rare split)",
        )?,
        Some(_) => require(
            &[ann.join("hoi_list_new.json")],
            "HICO-DET 600-class HOI list (hoi_list_new.json; zero-shot settings need it)",
        )?,
    };
    let unseen_file = match cfg.zero_shot {
        Some(ZeroShotSetting::UnseenFile) => Some(require(
            &[ann.join("unseen_hoi.json")],
            "unseen HOI list (unseen_hoi.json: 0-based indices into hoi_list_new.json; the unseen-file zero-shot setting needs it)",
        )?),
        _ => None,
    };
    let (num_verbs, num_objects, labels) = hico_classes(root)?;
    let anns = load_hoi_annotations(&test)?;
    let gts = hico_gt_from_annotations_with(&anns, num_verbs, num_objects)?;
    let correct_mat = CorrectMat::load(&mat)?;
    if correct_mat.num_verbs != num_verbs || correct_mat.num_objects != num_objects {
        let whence = if labels.is_some() {
            format!(
                " ([relations, objects] of {})",
                root.join("labels.json").display()
            )
        } else {
            String::new()
        };
        return Err(EvalError::Data(rlip_data::DataError::Invalid {
            path: mat,
            msg: format!(
                "expected a [{num_verbs}, {num_objects}] matrix{whence}, got [{}, {}]",
                correct_mat.num_verbs, correct_mat.num_objects
            ),
        }));
    }
    let buckets = match (cfg.zero_shot, unseen_file) {
        (None, _) => HicoSplit::from_training_counts(&load_hoi_annotations(&buckets_file)?)?,
        (Some(ZeroShotSetting::UnseenFile), Some(unseen_file)) => {
            let list = load_hoi_list(&buckets_file)?;
            check_hoi_list(&list, &buckets_file, num_verbs, num_objects)?;
            let unseen = load_unseen(&unseen_file, list.len())?;
            HicoSplit::from_unseen(&unseen, &list)?
        }
        (Some(z), _) => {
            let list = load_hoi_list(&buckets_file)?;
            if labels.is_some() && list.len() != 600 {
                return Err(EvalError::Data(rlip_data::DataError::Invalid {
                    path: buckets_file,
                    msg: format!(
                        "the {} zero-shot setting indexes the official 600-class HOI list, but this one has {} entries (for a dataset with its own classes use the unseen-file setting and annotations/unseen_hoi.json)",
                        z.name(),
                        list.len()
                    ),
                }));
            }
            HicoSplit::zero_shot(z, &list)?
        }
    };
    let img_dir = root.join("images").join("test2015");
    let images = anns
        .iter()
        .map(|a| EvalImage {
            file_name: a.file_name.clone(),
            path: img_dir.join(&a.file_name),
            orig_size_hw: None,
            image_id: a.img_id,
        })
        .collect();
    let split = EvalSplit {
        dataset: Dataset::Hico,
        root: root.to_path_buf(),
        images,
        gt: SplitGt::Hico(HicoSplitGt {
            gts,
            correct_mat,
            buckets,
            zero_shot: cfg.zero_shot,
            labels,
        }),
        warnings: Vec::new(),
    };
    check_unique_names(&split, &test)?;
    Ok(split)
}

/// Every HOI class of `hoi_list_new.json` must name a verb and an object of the dataset.
fn check_hoi_list(
    list: &[HoiClass],
    file: &Path,
    num_verbs: usize,
    num_objects: usize,
) -> Result<(), EvalError> {
    for (i, c) in list.iter().enumerate() {
        let object_ok = coco_id_to_index(c.object_cat).is_some_and(|o| o < num_objects);
        let verb_ok = usize::try_from(c.verb_id).is_ok_and(|v| (1..=num_verbs).contains(&v));
        if !object_ok || !verb_ok {
            return Err(EvalError::Data(rlip_data::DataError::Invalid {
                path: file.to_path_buf(),
                msg: format!(
                    "entry {i}: object_cat {} / verb_id {} is not one of the dataset's {num_objects} objects / {num_verbs} verbs",
                    c.object_cat, c.verb_id
                ),
            }));
        }
    }
    Ok(())
}

/// Reads `unseen_hoi.json`: a JSON list of distinct 0-based indices below `num_hois`.
fn load_unseen(file: &Path, num_hois: usize) -> Result<Vec<usize>, EvalError> {
    let bytes = std::fs::read(file).map_err(|source| rlip_data::DataError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let unseen: Vec<usize> =
        serde_json::from_slice(&bytes).map_err(|source| rlip_data::DataError::Json {
            path: file.to_path_buf(),
            source,
        })?;
    let bad = |msg: String| {
        EvalError::Data(rlip_data::DataError::Invalid {
            path: file.to_path_buf(),
            msg,
        })
    };
    let mut seen = vec![false; num_hois];
    for (k, &u) in unseen.iter().enumerate() {
        match seen.get_mut(u) {
            None => {
                return Err(bad(format!(
                    "entry {k}: HOI index {u} outside hoi_list_new.json ({num_hois} entries; indices are 0-based)"
                )));
            }
            Some(true) => return Err(bad(format!("entry {k}: HOI index {u} listed twice"))),
            Some(s) => *s = true,
        }
    }
    Ok(unseen)
}

fn load_vcoco(root: &Path, ann: &Path) -> Result<EvalSplit, EvalError> {
    let test = require(
        &[ann.join("test_vcoco.json")],
        "V-COCO test annotations in HOIA layout (test_vcoco.json, made by convert_vcoco_annotations.py)",
    )?;
    let mat = require(
        &[ann.join("corre_vcoco.npy")],
        "V-COCO verb x object validity matrix (corre_vcoco.npy)",
    )?;
    let vsrl = require(
        &[
            ann.join("vcoco_test.json"),
            root.join("data").join("vcoco").join("vcoco_test.json"),
        ],
        "V-COCO role annotations of the official evaluator (vcoco_test.json from the v-coco repository)",
    )?;
    let coco = require(
        &[root.join("data").join("instances_vcoco_all_2014.json")],
        "COCO instances of the V-COCO images (instances_vcoco_all_2014.json, made by the v-coco repository's script)",
    )?;
    let ids = require(
        &[root.join("data").join("splits").join("vcoco_test.ids")],
        "V-COCO test image ids (vcoco_test.ids from the v-coco repository)",
    )?;
    let anns = load_hoia_annotations(&test)?;
    let gts = vcoco_gt_from_annotations(&anns)?;
    let correct_mat = CorrectMat::load(&mat)?;
    if correct_mat.num_verbs != 29 {
        return Err(EvalError::Data(rlip_data::DataError::Invalid {
            path: mat,
            msg: format!("expected 29 verb-role rows, got {}", correct_mat.num_verbs),
        }));
    }
    let coco = load_coco_instances(&coco)?;
    let split_ids = load_split_ids(&ids)?;
    let official = VcocoOfficialGt::new(&load_vsrl_annotations(&vsrl)?, &coco, &split_ids)?;
    let sizes: HashMap<i64, [i64; 2]> = coco
        .images
        .iter()
        .map(|im| (im.id, [im.height as i64, im.width as i64]))
        .collect();
    let img_dir = root.join("images").join("val2014");
    let mut images = Vec::with_capacity(anns.len());
    let mut image_ids = Vec::with_capacity(anns.len());
    for (i, a) in anns.iter().enumerate() {
        let id = vcoco_image_id_from_file_name(&a.file_name)
            .or(a.img_id)
            .ok_or_else(|| {
                EvalError::Data(rlip_data::DataError::Invalid {
                    path: test.clone(),
                    msg: format!(
                        "image {i} ({}): no COCO image id in the file name (COCO_val2014_<id>.jpg) and no img_id",
                        a.file_name
                    ),
                })
            })?;
        image_ids.push(id);
        images.push(EvalImage {
            file_name: a.file_name.clone(),
            path: img_dir.join(&a.file_name),
            orig_size_hw: sizes.get(&id).copied(),
            image_id: Some(id),
        });
    }
    let mut warnings = Vec::new();
    let in_test: std::collections::HashSet<i64> = image_ids.iter().copied().collect();
    let absent = split_ids.iter().filter(|i| !in_test.contains(i)).count();
    if absent > 0 {
        warnings.push(format!(
            "{absent} of the {} official test ids have no image in test_vcoco.json: their GT counts as missed",
            split_ids.len()
        ));
    }
    let split = EvalSplit {
        dataset: Dataset::Vcoco,
        root: root.to_path_buf(),
        images,
        gt: SplitGt::Vcoco(VcocoSplitGt {
            gts,
            correct_mat,
            official,
            image_ids,
        }),
        warnings,
    };
    check_unique_names(&split, &test)?;
    Ok(split)
}

fn load_oi(root: &Path, ann: &Path) -> Result<EvalSplit, EvalError> {
    let test = require(
        &[ann.join("OI_SGG_test.json")],
        "Open Images test annotations (OI_SGG_test.json)",
    )?;
    let all = require(
        &[ann.join("categories_dict.json")],
        "Open Images full category list (categories_dict.json, 601 objects)",
    )?;
    let evaluated = require(
        &[ann.join("OI_SGG_trainval_test_categories_dict.json")],
        "Open Images evaluated categories (OI_SGG_trainval_test_categories_dict.json, 288 objects, 30 relations)",
    )?;
    let anns = load_oi_annotations(&test)?;
    let all = load_oi_categories(&all)?;
    let categories = load_oi_categories(&evaluated)?;
    let gts = oi_gt_from_annotations(&anns, &all, &categories)?;
    let img_dir = root.join("images");
    let images = anns
        .iter()
        .map(|a| EvalImage {
            file_name: a.file_name.clone(),
            path: img_dir.join(&a.file_name),
            orig_size_hw: None,
            image_id: None,
        })
        .collect();
    let split = EvalSplit {
        dataset: Dataset::Oi,
        root: root.to_path_buf(),
        images,
        gt: SplitGt::Oi(OiSplitGt { gts, categories }),
        warnings: Vec::new(),
    };
    check_unique_names(&split, &test)?;
    Ok(split)
}

/// Predictions are keyed by file name, so names must be unique.
fn check_unique_names(split: &EvalSplit, file: &Path) -> Result<(), EvalError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, im) in split.images.iter().enumerate() {
        if let Some(first) = seen.insert(im.file_name.as_str(), i) {
            return Err(EvalError::Data(rlip_data::DataError::Invalid {
                path: file.to_path_buf(),
                msg: format!(
                    "images {first} and {i} have the same file name {:?}; predictions could not be told apart",
                    im.file_name
                ),
            }));
        }
    }
    Ok(())
}
