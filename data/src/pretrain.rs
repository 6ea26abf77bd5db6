//! The dataset-independent relational pre-training sample ([`RelationImage`]), the label-text
//! vocabulary ([`Vocabulary`]) and the per-batch label texts ([`sample_label_texts`]).
//!
//! Official semantics followed:
//!
//! - Samples (`datasets/mixed_dataset.py::MixedRelDetection.__getitem__`, same in
//!   `datasets/vg.py::VGRelDetection`): boxes are `[x, y, x + w, y + h]` clamped to the image
//!   (`0..=width`, `0..=height`); every object is a box, named by its `names`; relationships
//!   refer to boxes through their object ids. Only the first `cap` relationships of an image are
//!   used: `num_queries / 2` in the mixed dataset ([`mixed_relation_cap`]; 100 with the scripts'
//!   `--num_queries 200`), `num_queries` in the VG-only loader ([`vg_relation_cap`]). Relationships
//!   with the same (subject, object) boxes form one pair with several relation labels, so a
//!   duplicate triplet adds nothing. The mixed dataset skips images without relationships after
//!   the confidence threshold ([`drop_images_without_relations`]).
//! - Vocabulary: either a keep-names file ([`Vocabulary::load`]), or counted online from the
//!   annotations as `ConcatDataset` does (`generate_keep_names_freq`, [`Vocabulary::count`]:
//!   every object's name and every relationship's predicate — after the confidence threshold,
//!   before the cap — most frequent first, ties in first-appearance order), the datasets' counts
//!   fused with `fuse_multi_keep_names_freq` ([`Vocabulary::fuse`]).
//! - Label texts per batch (`engine.py::merge_batch_data` and `sample_text`): the positive object
//!   texts are the distinct names of all boxes of the batch's images, the positive relation texts
//!   the distinct predicates of their capped relationships, both in order of first appearance
//!   (image by image). With `N` texts (`--negative_text_sampling 500`), the object list is filled
//!   up to `⌊2N/3⌋` (333) and the relation list up to `N − ⌊2N/3⌋` (167) by drawing vocabulary
//!   names: with `freq` (the scripts' `--sampling_stategy freq`) a name is drawn with probability
//!   proportional to its count, with `random` uniformly; a name already in the list is drawn
//!   again. Positives always stay, first, even beyond the budget (then nothing is drawn).
//!   The official loop redraws forever when the vocabulary cannot fill the budget; here drawing
//!   stops when no vocabulary name is left. Draws are done without replacement over the names not
//!   yet in the list — the same distribution as the official redraw loop, with a bounded number
//!   of draws — from [`crate::rng::Rng`], so a seed gives the same batch. `"no objects"` is not
//!   added ([`LabelBatch::label_set`] gives a [`LabelSet`] whose `flat_texts` adds it, as
//!   `--use_no_obj_token` does after sampling).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::DataError;
use crate::labels::LabelSet;
use crate::pseudo::{COCO2017, O365, O365FilePaths, coco_image_path};
use crate::rng::Rng;
use crate::vg::{KeepNames, SceneGraphImage, count_sorted, load_keep_names};

/// The `dataset` name of Visual Genome samples.
pub const VG: &str = "vg";
/// `--num_queries` of the official pre-training scripts.
pub const PRETRAIN_NUM_QUERIES: usize = 200;
/// `--negative_text_sampling` of the official pre-training scripts.
pub const NUM_LABEL_TEXTS: usize = 500;

/// The relationships per image the mixed dataset uses: `num_queries / 2`.
pub fn mixed_relation_cap(num_queries: usize) -> usize {
    num_queries / 2
}

/// The relationships per image the VG-only loader (`datasets/vg.py`) uses: `num_queries`.
pub fn vg_relation_cap(num_queries: usize) -> usize {
    num_queries
}

/// One pre-training image with its boxes and relation triplets.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationImage {
    /// The image file.
    pub image_path: PathBuf,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `[x0, y0, x1, y1]` in pixels, clamped to the image.
    pub boxes: Vec<[f64; 4]>,
    /// Name of each box.
    pub box_names: Vec<String>,
    /// `(subject box, object box, predicate)`, in file order, uncapped, possibly repeated.
    pub relations: Vec<(usize, usize, String)>,
    /// Source dataset: [`VG`], [`COCO2017`] or [`O365`].
    pub dataset: String,
}

impl RelationImage {
    /// Converts a scene-graph image whose file is `image_path`. The size is the image's
    /// `width` / `height` when it states both, otherwise read from the image file's header.
    pub fn from_scene_graph(
        img: &SceneGraphImage,
        image_path: PathBuf,
        dataset: &str,
    ) -> Result<Self, DataError> {
        let (width, height) = match (img.width, img.height) {
            (Some(w), Some(h)) => (w, h),
            _ => image_size(&image_path)?,
        };
        let (w, h) = (width as f64, height as f64);
        let boxes = img
            .objects
            .iter()
            .map(|o| {
                let [x0, y0, x1, y1] = o.xyxy();
                [
                    x0.clamp(0.0, w),
                    y0.clamp(0.0, h),
                    x1.clamp(0.0, w),
                    y1.clamp(0.0, h),
                ]
            })
            .collect();
        let index = img.object_index();
        let relations = img
            .relationships
            .iter()
            .enumerate()
            .map(|(k, r)| {
                let local = |field: &str, id: u64| {
                    index.get(&id).copied().ok_or_else(|| {
                        DataError::invalid(
                            &image_path,
                            format!(
                                "image_id {}: relationships[{k}].{field}: object id {id} is not \
                                 among the image's objects",
                                img.image_id
                            ),
                        )
                    })
                };
                Ok((
                    local("subject_id", r.subject_id)?,
                    local("object_id", r.object_id)?,
                    r.predicate.clone(),
                ))
            })
            .collect::<Result<_, DataError>>()?;
        Ok(RelationImage {
            image_path,
            width,
            height,
            boxes,
            box_names: img.objects.iter().map(|o| o.names.clone()).collect(),
            relations,
            dataset: dataset.to_string(),
        })
    }

    /// A Visual Genome image under `image_root` ([`SceneGraphImage::vg_image_path`]). The image
    /// must have no `dataset` field (the official mixed loader treats those as VG).
    pub fn from_vg(img: &SceneGraphImage, image_root: &Path) -> Result<Self, DataError> {
        let path = img.vg_image_path(image_root);
        expect_dataset(img, None, &path)?;
        Self::from_scene_graph(img, path, VG)
    }

    /// A pseudo-labelled COCO 2017 image ([`coco_image_path`]); its `dataset` must be `coco2017`.
    pub fn from_coco(img: &SceneGraphImage, coco_root: &Path) -> Result<Self, DataError> {
        let path = coco_image_path(coco_root, img);
        expect_dataset(img, Some(COCO2017), &path)?;
        Self::from_scene_graph(img, path, COCO2017)
    }

    /// A pseudo-labelled Objects365 image ([`O365FilePaths::image_path`]); its `dataset` must be
    /// `o365`.
    pub fn from_o365(
        img: &SceneGraphImage,
        o365_root: &Path,
        files: &O365FilePaths,
    ) -> Result<Self, DataError> {
        let path = files.image_path(o365_root, img)?;
        expect_dataset(img, Some(O365), &path)?;
        Self::from_scene_graph(img, path, O365)
    }

    /// The distinct box names, in order of first appearance (the official per-image object texts).
    pub fn object_texts(&self) -> Vec<&str> {
        distinct(self.box_names.iter().map(String::as_str))
    }

    /// The distinct predicates of the first `cap` relationships, in order of first appearance.
    pub fn relation_texts(&self, cap: usize) -> Vec<&str> {
        distinct(self.relations.iter().take(cap).map(|r| r.2.as_str()))
    }
}

/// Width and height from the image file's header (format guessed from the content, as Pillow).
fn image_size(path: &Path) -> Result<(usize, usize), DataError> {
    let bad = |msg: String| DataError::Image {
        path: path.to_path_buf(),
        msg,
    };
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let (w, h) = reader.into_dimensions().map_err(|e| bad(e.to_string()))?;
    Ok((w as usize, h as usize))
}

fn expect_dataset(img: &SceneGraphImage, want: Option<&str>, path: &Path) -> Result<(), DataError> {
    if img.dataset.as_deref() == want {
        return Ok(());
    }
    Err(DataError::invalid(
        path,
        format!(
            "image_id {}: dataset is {:?}, expected {:?}",
            img.image_id, img.dataset, want
        ),
    ))
}

fn distinct<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    it.filter(|s| seen.insert(*s)).collect()
}

/// Removes the images without relationships (the mixed dataset's `nonzero_rel_ids`); returns how
/// many were removed.
pub fn drop_images_without_relations(images: &mut Vec<RelationImage>) -> usize {
    let before = images.len();
    images.retain(|i| !i.relations.is_empty());
    before - images.len()
}

/// Object and relation names with their counts, most frequent first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vocabulary {
    /// Object names and counts.
    pub objects: Vec<(String, u64)>,
    /// Predicates and counts.
    pub relations: Vec<(String, u64)>,
}

impl Vocabulary {
    /// From a keep-names file's content: the names in file order, each with its count from the
    /// frequency object. The frequencies must be present and name exactly the listed names (the
    /// official sampler pairs the *i*-th name with the *i*-th count, which agrees when they do).
    pub fn from_keep_names(k: &KeepNames, source: &Path) -> Result<Self, DataError> {
        let pair = |names: &[String], freq: Option<&HashMap<String, u64>>, what: &str| {
            let (nk, fk) = (format!("{what}_names"), format!("{what}_freq"));
            let freq = freq.ok_or_else(|| {
                DataError::invalid(source, format!("{fk}: missing (needed for the counts)"))
            })?;
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(names.len());
            for (i, n) in names.iter().enumerate() {
                if !seen.insert(n) {
                    return Err(DataError::invalid(
                        source,
                        format!("{nk}[{i}]: {n:?} is listed twice"),
                    ));
                }
                let c = freq.get(n).ok_or_else(|| {
                    DataError::invalid(source, format!("{nk}[{i}]: {n:?} has no count in {fk}"))
                })?;
                out.push((n.clone(), *c));
            }
            if freq.len() != names.len() {
                return Err(DataError::invalid(
                    source,
                    format!("{fk}: {} names are not in {nk}", freq.len() - names.len()),
                ));
            }
            Ok(out)
        };
        Ok(Vocabulary {
            objects: pair(&k.object_names, k.object_freq.as_ref(), "object")?,
            relations: pair(
                &k.relationship_names,
                k.relationship_freq.as_ref(),
                "relationship",
            )?,
        })
    }

    /// Reads a keep-names file with frequencies ([`crate::vg::load_keep_names`],
    /// [`Vocabulary::from_keep_names`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        Self::from_keep_names(&load_keep_names(path)?, path)
    }

    /// Counts every box name and every (uncapped) relationship predicate of `images`: most
    /// frequent first, ties in order of first appearance (`generate_keep_names_freq`).
    pub fn count<'a>(images: impl IntoIterator<Item = &'a RelationImage> + Clone) -> Self {
        Vocabulary {
            objects: count_sorted(
                images
                    .clone()
                    .into_iter()
                    .flat_map(|i| i.box_names.iter().map(String::as_str)),
            ),
            relations: count_sorted(
                images
                    .into_iter()
                    .flat_map(|i| i.relations.iter().map(|r| r.2.as_str())),
            ),
        }
    }

    /// Sums the counts of several vocabularies as `fuse_multi_keep_names_freq` does: the first
    /// vocabulary's order, then names new in the later ones in their order, then a stable sort by
    /// count, descending. The official mixed datasets are fused in the order
    /// `[O365, VG, COCO]` (`vg_coco2017_o365`) or `[VG, COCO]` (`vg_coco2017`).
    pub fn fuse(vocabularies: &[Vocabulary]) -> Self {
        let fuse = |lists: Vec<&[(String, u64)]>| {
            let mut out: Vec<(String, u64)> = Vec::new();
            let mut at: HashMap<String, usize> = HashMap::new();
            for (n, c) in lists.into_iter().flatten() {
                match at.get(n) {
                    Some(&i) => out[i].1 += c,
                    None => {
                        at.insert(n.clone(), out.len());
                        out.push((n.clone(), *c));
                    }
                }
            }
            out.sort_by_key(|e| std::cmp::Reverse(e.1));
            out
        };
        Vocabulary {
            objects: fuse(vocabularies.iter().map(|v| &v.objects[..]).collect()),
            relations: fuse(vocabularies.iter().map(|v| &v.relations[..]).collect()),
        }
    }

    /// The keep-names file content of this vocabulary.
    pub fn to_keep_names(&self) -> KeepNames {
        let names = |v: &[(String, u64)]| v.iter().map(|(n, _)| n.clone()).collect();
        let freq = |v: &[(String, u64)]| Some(v.iter().cloned().collect());
        KeepNames {
            relationship_names: names(&self.relations),
            object_names: names(&self.objects),
            relationship_freq: freq(&self.relations),
            object_freq: freq(&self.objects),
        }
    }
}

/// How negative label texts are drawn from the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SamplingStrategy {
    /// Proportional to the names' counts (`--sampling_stategy freq`, the scripts' choice).
    #[default]
    Freq,
    /// Uniformly over the names (`random`).
    Random,
}

/// Options of [`sample_label_texts`]; the defaults are those of the official pre-training scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextSampling {
    /// Object plus relation texts per batch (`--negative_text_sampling`, 500).
    pub num_texts: usize,
    /// How negatives are drawn.
    pub strategy: SamplingStrategy,
    /// Relationships used per image ([`mixed_relation_cap`] of 200 queries = 100).
    pub relation_cap: usize,
}

impl Default for TextSampling {
    fn default() -> Self {
        TextSampling {
            num_texts: NUM_LABEL_TEXTS,
            strategy: SamplingStrategy::Freq,
            relation_cap: mixed_relation_cap(PRETRAIN_NUM_QUERIES),
        }
    }
}

impl TextSampling {
    /// The object-text budget: `⌊2 · num_texts / 3⌋` (official `int(n * 2/3.)`).
    pub fn object_budget(&self) -> usize {
        2 * self.num_texts / 3
    }

    /// The relation-text budget: `num_texts − object_budget()`.
    pub fn relation_budget(&self) -> usize {
        self.num_texts - self.object_budget()
    }
}

/// One (subject, object) pair of an image with all its relation labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairLabels {
    /// Subject box index.
    pub subject: usize,
    /// Object box index.
    pub object: usize,
    /// Indices into [`LabelBatch::relation_texts`], distinct, in order of first appearance.
    pub relations: Vec<usize>,
}

/// The labels of one image of a batch, as indices into the batch's texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLabels {
    /// Per box: index into [`LabelBatch::object_texts`].
    pub boxes: Vec<usize>,
    /// The related pairs (from the first `relation_cap` relationships), in order of first
    /// appearance.
    pub pairs: Vec<PairLabels>,
}

/// The label texts of a batch and each image's labels as indices into them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelBatch {
    /// Object texts: the positives first, then the sampled negatives.
    pub object_texts: Vec<String>,
    /// Relation texts: the positives first, then the sampled negatives.
    pub relation_texts: Vec<String>,
    /// How many object texts are positives.
    pub num_positive_objects: usize,
    /// How many relation texts are positives.
    pub num_positive_relations: usize,
    /// Per image, in batch order.
    pub images: Vec<ImageLabels>,
}

impl LabelBatch {
    /// The texts as a [`LabelSet`] (its `flat_texts` adds `"no objects"` between objects and
    /// relations).
    pub fn label_set(&self) -> LabelSet {
        LabelSet {
            source: "pre-training batch".into(),
            objects: self.object_texts.clone(),
            relations: self.relation_texts.clone(),
        }
    }
}

/// An ordered set of texts.
#[derive(Default)]
struct Texts {
    list: Vec<String>,
    at: HashMap<String, usize>,
}

impl Texts {
    fn index(&mut self, t: &str) -> usize {
        if let Some(&i) = self.at.get(t) {
            return i;
        }
        self.at.insert(t.to_string(), self.list.len());
        self.list.push(t.to_string());
        self.list.len() - 1
    }

    /// Fills the list up to `budget` with vocabulary names not yet in it, drawn without
    /// replacement with weights by `strategy`; stops early when no name is left.
    fn fill(
        &mut self,
        vocab: &[(String, u64)],
        budget: usize,
        strategy: SamplingStrategy,
        rng: &mut Rng,
    ) {
        if self.list.len() >= budget {
            return;
        }
        let mut pool: Vec<(&str, f64)> = Vec::new();
        let mut in_pool: HashMap<&str, usize> = HashMap::new();
        for (n, c) in vocab {
            let w = match strategy {
                SamplingStrategy::Freq => *c as f64,
                SamplingStrategy::Random => 1.0,
            };
            if w <= 0.0 || self.at.contains_key(n) {
                continue;
            }
            match in_pool.get(n.as_str()) {
                Some(&i) => pool[i].1 += w,
                None => {
                    in_pool.insert(n, pool.len());
                    pool.push((n, w));
                }
            }
        }
        while self.list.len() < budget && !pool.is_empty() {
            let total: f64 = pool.iter().map(|p| p.1).sum();
            let r = rng.f64() * total;
            let mut cum = 0.0;
            let pick = pool
                .iter()
                .position(|p| {
                    cum += p.1;
                    r < cum
                })
                .unwrap_or(pool.len() - 1);
            let (name, _) = pool.remove(pick);
            self.index(name);
        }
    }
}

/// Builds the label texts of a batch and each image's labels (see the module docs): positives
/// from `images` (relationships capped at `cfg.relation_cap`), then frequency-weighted (or
/// uniform) negatives from `vocab` up to `⌊2N/3⌋` object and `N − ⌊2N/3⌋` relation texts, objects
/// drawn first. Deterministic given `rng`'s state. An image whose box names do not match its boxes
/// or whose relation refers to a missing box is an error naming its image file.
pub fn sample_label_texts(
    images: &[&RelationImage],
    vocab: &Vocabulary,
    cfg: &TextSampling,
    rng: &mut Rng,
) -> Result<LabelBatch, DataError> {
    let (mut objects, mut relations) = (Texts::default(), Texts::default());
    let mut labels = Vec::with_capacity(images.len());
    for img in images {
        let n = img.boxes.len();
        if img.box_names.len() != n {
            return Err(DataError::invalid(
                &img.image_path,
                format!("{} box names for {n} boxes", img.box_names.len()),
            ));
        }
        let boxes = img.box_names.iter().map(|b| objects.index(b)).collect();
        let mut pairs: Vec<PairLabels> = Vec::new();
        let mut pair_at: HashMap<(usize, usize), usize> = HashMap::new();
        for (k, (s, o, p)) in img.relations.iter().take(cfg.relation_cap).enumerate() {
            if *s >= n || *o >= n {
                return Err(DataError::invalid(
                    &img.image_path,
                    format!("relation {k} refers to box {s}/{o} but the image has {n} boxes"),
                ));
            }
            let r = relations.index(p);
            let i = *pair_at.entry((*s, *o)).or_insert_with(|| {
                pairs.push(PairLabels {
                    subject: *s,
                    object: *o,
                    relations: Vec::new(),
                });
                pairs.len() - 1
            });
            if !pairs[i].relations.contains(&r) {
                pairs[i].relations.push(r);
            }
        }
        labels.push(ImageLabels { boxes, pairs });
    }
    let (num_positive_objects, num_positive_relations) = (objects.list.len(), relations.list.len());
    objects.fill(&vocab.objects, cfg.object_budget(), cfg.strategy, rng);
    relations.fill(&vocab.relations, cfg.relation_budget(), cfg.strategy, rng);
    Ok(LabelBatch {
        object_texts: objects.list,
        relation_texts: relations.list,
        num_positive_objects,
        num_positive_relations,
        images: labels,
    })
}
