//! The RLIPv2-ParSeDA training criterion (`SetCriterionHOI` with `HungarianMatcherHOI`).
//!
//! [`Criterion::forward`] matches every decoder layer's pair predictions to the targets
//! ([`crate::matcher`]), then computes the official terms per layer: `loss_obj_ce` (object plus
//! subject cross-entropy, "no objects" weighted by `eos_coef`), `loss_verb_ce` (verb focal loss,
//! or with `--giou_verb_label` the quality focal loss against GIoU-scaled soft labels, RQL,
//! optionally with pseudo-labels, RPL), `loss_sub_bbox`, `loss_obj_bbox`, `loss_sub_giou`,
//! `loss_obj_giou`. Auxiliary layers get `_0`, `_1`, … suffixes, and the total is the
//! `weight_dict`-weighted sum. The loss terms themselves live in [`terms`].

pub mod pseudo_verb;
pub mod terms;

use std::fmt;

use burn::prelude::*;
use burn::tensor::Transaction;
use rlip_model::prediction_heads::LayerPredictions;

use crate::matcher::{
    HostPredictions, ImageMatches, MatchError, MatcherConfig, PairMatcher, PairTargets,
    pair_giou_cost,
};

/// Which verb classification loss to use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VerbLoss {
    /// `--verb_loss_type focal` alone: `_neg_loss` against the hard multi-hot labels.
    Focal,
    /// `--verb_loss_type focal --giou_verb_label` (RLIPv2's RQL): `_soft_neg_loss` with exponent
    /// `beta` against labels scaled by the matched pair's `(1 − GIoU cost) / 2`.
    QualityFocal {
        /// Modulating exponent (official 2).
        beta: f64,
    },
}

/// Criterion settings. `Default` is the official RLIPv2-ParSeDA HICO-DET fine-tuning setting
/// (the golden fixture's flags: `--subject_class --giou_verb_label --obj_loss_type
/// cross_entropy --verb_loss_type focal --bbox_loss_coef 2.5 --giou_loss_coef 1`, aux loss on,
/// `eos_coef` 0.1); [`CriterionConfig::pretraining`] adds `--pseudo_verb`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CriterionConfig {
    /// Matching cost; its `subject_class` also switches the subject cross-entropy on (the
    /// official code uses one flag for both).
    pub matcher: MatcherConfig,
    /// Weight of the last ("no objects") class in the cross-entropies.
    pub eos_coef: f64,
    /// Verb loss.
    pub verb_loss: VerbLoss,
    /// `--pseudo_verb` (RPL): add pseudo-label rows to the verb labels; needs
    /// [`VerbLoss::QualityFocal`] and pseudo rows in [`Criterion::forward`].
    pub pseudo_verb: bool,
    /// `obj_loss_coef`, weight of `loss_obj_ce`.
    pub obj_loss_coef: f64,
    /// `verb_loss_coef`, weight of `loss_verb_ce`.
    pub verb_loss_coef: f64,
    /// `bbox_loss_coef`, weight of `loss_sub_bbox` and `loss_obj_bbox`.
    pub bbox_loss_coef: f64,
    /// `giou_loss_coef`, weight of `loss_sub_giou` and `loss_obj_giou`.
    pub giou_loss_coef: f64,
    /// Compute the terms of every intermediate decoder layer too (official `aux_loss`, on).
    pub aux_loss: bool,
    /// `--exponential_loss` with this `exponential_hyper`: auxiliary layer `i` of `L` has its
    /// weights multiplied by `hyper^(L−1−i)`. `None` (official default) keeps them equal.
    pub exponential_hyper: Option<f64>,
}

impl Default for CriterionConfig {
    fn default() -> Self {
        Self {
            matcher: MatcherConfig::default(),
            eos_coef: 0.1,
            verb_loss: VerbLoss::QualityFocal { beta: 2.0 },
            pseudo_verb: false,
            obj_loss_coef: 1.0,
            verb_loss_coef: 1.0,
            bbox_loss_coef: 2.5,
            giou_loss_coef: 1.0,
            aux_loss: true,
            exponential_hyper: None,
        }
    }
}

impl CriterionConfig {
    /// The official pre-training setting (`--giou_verb_label --pseudo_verb --subject_class`).
    pub fn pretraining() -> Self {
        Self {
            pseudo_verb: true,
            ..Self::default()
        }
    }

    /// The official `weight_dict` entry of a base term name (without layer suffix).
    pub fn base_weight(&self, base: &str) -> Option<f64> {
        match base {
            "loss_obj_ce" => Some(self.obj_loss_coef),
            "loss_verb_ce" => Some(self.verb_loss_coef),
            "loss_sub_bbox" | "loss_obj_bbox" => Some(self.bbox_loss_coef),
            "loss_sub_giou" | "loss_obj_giou" => Some(self.giou_loss_coef),
            _ => None,
        }
    }
}

/// Names of the weighted terms of one layer, in the order [`Criterion::forward`] emits them.
pub const TERM_NAMES: [&str; 6] = [
    "loss_obj_ce",
    "loss_verb_ce",
    "loss_sub_bbox",
    "loss_obj_bbox",
    "loss_sub_giou",
    "loss_obj_giou",
];

/// Why the criterion could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CriterionError {
    /// Inconsistent settings.
    #[error("invalid criterion config: {0}")]
    Config(String),
    /// Predictions, targets or pseudo-labels disagree in shape or range.
    #[error("invalid criterion input: {0}")]
    Input(String),
    /// Matching failed on a decoder layer (for instance on non-finite predictions).
    #[error("matching decoder layer {layer}: {source}")]
    Match {
        /// Decoder layer (0-based; the last is the model output).
        layer: usize,
        /// What went wrong.
        source: MatchError,
    },
    /// An RQL soft-label scale left `[0, 1]` (the official code asserts; it can happen only
    /// for targets without an object box).
    #[error(
        "decoder layer {layer}, image {image}, query {query}, target {target}: relation \
         quality {value} outside [0, 1]"
    )]
    SoftLabelOutOfRange {
        /// Decoder layer.
        layer: usize,
        /// Image.
        image: usize,
        /// Query.
        query: usize,
        /// Target.
        target: usize,
        /// The scale.
        value: f64,
    },
}

/// Loss terms that are NaN or infinite, as `(name, value)`.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFiniteLoss(pub Vec<(String, f64)>);

impl fmt::Display for NonFiniteLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "non-finite loss terms:")?;
        for (name, v) in &self.0 {
            write!(f, " {name} = {v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NonFiniteLoss {}

/// One loss term: its unweighted value and its `weight_dict` weight.
#[derive(Debug, Clone)]
pub struct LossTerm {
    /// Official name, e.g. `loss_verb_ce` or `loss_sub_giou_1`.
    pub name: String,
    /// Unweighted value, a one-element tensor (differentiable).
    pub value: Tensor<1>,
    /// Weight in the total.
    pub weight: f64,
}

/// Everything one criterion call produces.
#[derive(Debug, Clone)]
pub struct CriterionOutput {
    /// Terms of the last layer, then of auxiliary layers `0, 1, …`.
    pub terms: Vec<LossTerm>,
    /// `Σ weight · value`, the loss to back-propagate.
    pub total: Tensor<1>,
    /// Matching per decoder layer (index = layer), per image.
    pub matches: Vec<Vec<ImageMatches>>,
    /// Host-side statistics, not part of the total: `obj_class_error`, `sub_class_error` (last
    /// layer, top-1 error of matched queries in percent) and `obj_cardinality_error` per layer.
    pub logs: Vec<(String, f64)>,
    /// `num_interactions`: target pairs in the batch, at least 1.
    pub num_interactions: f64,
}

impl CriterionOutput {
    /// The term called `name`.
    pub fn term(&self, name: &str) -> Option<&LossTerm> {
        self.terms.iter().find(|t| t.name == name)
    }

    /// Unweighted values of every term, read back in one transaction.
    pub fn values(&self) -> Vec<(String, f64)> {
        let tx = self
            .terms
            .iter()
            .fold(Transaction::default(), |tx, t| tx.register(t.value.clone()));
        tx.execute()
            .into_iter()
            .zip(&self.terms)
            .map(|(d, t)| {
                let v = d
                    .convert::<f64>()
                    .try_to_vec::<f64>()
                    .map_or(f64::NAN, |v| v[0]);
                (t.name.clone(), v)
            })
            .collect()
    }

    /// The values, or the non-finite terms by name.
    pub fn check_finite(&self) -> Result<Vec<(String, f64)>, NonFiniteLoss> {
        let values = self.values();
        let bad: Vec<(String, f64)> = values
            .iter()
            .filter(|(_, v)| !v.is_finite())
            .cloned()
            .collect();
        if bad.is_empty() {
            Ok(values)
        } else {
            Err(NonFiniteLoss(bad))
        }
    }
}

/// The official HOI set criterion for RLIPv2-ParSeDA.
#[derive(Debug, Clone, PartialEq)]
pub struct Criterion {
    config: CriterionConfig,
    matcher: PairMatcher,
}

/// One image's matched pairs, flattened: `(image, query, target)`.
type Flat = Vec<(usize, usize, usize)>;

impl Criterion {
    /// A criterion, after checking the settings.
    pub fn new(config: CriterionConfig) -> Result<Self, CriterionError> {
        if config.pseudo_verb && !matches!(config.verb_loss, VerbLoss::QualityFocal { .. }) {
            return Err(CriterionError::Config(
                "pseudo_verb (RPL) only applies with giou_verb_label (VerbLoss::QualityFocal)"
                    .into(),
            ));
        }
        let weights = [
            config.eos_coef,
            config.obj_loss_coef,
            config.verb_loss_coef,
            config.bbox_loss_coef,
            config.giou_loss_coef,
            config.exponential_hyper.unwrap_or(1.0),
        ];
        if weights.iter().any(|w| !w.is_finite()) {
            return Err(CriterionError::Config("weights must be finite".into()));
        }
        Ok(Self {
            config,
            matcher: PairMatcher::new(config.matcher),
        })
    }

    /// The settings.
    pub fn config(&self) -> &CriterionConfig {
        &self.config
    }

    /// The weight of term `name` (with its layer suffix) for a decoder of `n_layers` layers,
    /// as the official `weight_dict`.
    pub fn weight(&self, name: &str, n_layers: usize) -> Option<f64> {
        if let Some(w) = self.config.base_weight(name) {
            return Some(w);
        }
        let (base, layer) = name.rsplit_once('_')?;
        let layer: usize = layer.parse().ok()?;
        if !self.config.aux_loss || layer + 1 >= n_layers {
            return None;
        }
        let w = self.config.base_weight(base)?;
        Some(match self.config.exponential_hyper {
            Some(h) => w * h.powi((n_layers - 1 - layer) as i32),
            None => w,
        })
    }

    /// Computes every term for `layers` (the decoder layers in order; the last is the model
    /// output) against `targets` (one entry per image).
    ///
    /// `pseudo_verb[image][pair]` holds the RPL rows (see [`pseudo_verb::pseudo_verb_targets`]);
    /// required exactly when the config has `pseudo_verb`.
    pub fn forward(
        &self,
        layers: &[LayerPredictions],
        targets: &[PairTargets],
        pseudo_verb: Option<&[Vec<Vec<f32>>]>,
    ) -> Result<CriterionOutput, CriterionError> {
        self.forward_normalised(layers, targets, pseudo_verb, None)
    }

    /// [`Criterion::forward`] with the box and verb terms normalised by `num_interactions`
    /// instead of this batch's pair count: a data-parallel shard passes the whole step's pair
    /// count divided by the number of shards (at least 1), as the official code does with
    /// `all_reduce` and the world size.
    pub fn forward_normalised(
        &self,
        layers: &[LayerPredictions],
        targets: &[PairTargets],
        pseudo_verb: Option<&[Vec<Vec<f32>>]>,
        num_interactions: Option<f64>,
    ) -> Result<CriterionOutput, CriterionError> {
        let n_layers = layers.len();
        let last = n_layers
            .checked_sub(1)
            .ok_or_else(|| CriterionError::Input("no decoder layers".into()))?;
        let hosts = HostPredictions::from_layers(layers).map_err(CriterionError::Input)?;
        let (b, n_obj, n_verb) = (hosts[0].batch, hosts[0].n_obj, hosts[0].n_verb);
        for (l, h) in hosts.iter().enumerate() {
            if (h.batch, h.pairs, h.n_obj, h.n_verb) != (b, hosts[0].pairs, n_obj, n_verb) {
                return Err(CriterionError::Input(format!(
                    "layer {l} has a different shape from layer 0"
                )));
            }
        }
        if targets.len() != b {
            return Err(CriterionError::Input(format!(
                "{} target sets for a batch of {b}",
                targets.len()
            )));
        }
        for (i, t) in targets.iter().enumerate() {
            t.validate(n_obj, n_verb)
                .map_err(|e| CriterionError::Input(format!("image {i}: {e}")))?;
        }
        match (self.config.pseudo_verb, pseudo_verb) {
            (true, None) => {
                return Err(CriterionError::Input(
                    "pseudo_verb is on but no pseudo-label rows were given".into(),
                ));
            }
            (false, Some(_)) => {
                return Err(CriterionError::Input(
                    "pseudo-label rows given but pseudo_verb is off".into(),
                ));
            }
            (true, Some(rows)) => check_pseudo(rows, targets, n_verb)?,
            (false, None) => {}
        }

        let total_pairs: usize = targets.iter().map(PairTargets::len).sum();
        let num_interactions = num_interactions.unwrap_or((total_pairs as f64).max(1.0));

        let computed: Vec<usize> = if self.config.aux_loss {
            std::iter::once(last).chain(0..last).collect()
        } else {
            vec![last]
        };
        let mut matches: Vec<Vec<ImageMatches>> = vec![Vec::new(); n_layers];
        let mut terms = Vec::new();
        let mut logs = Vec::new();
        for &l in &computed {
            let host = &hosts[l];
            let m = self
                .matcher
                .match_batch(host, targets)
                .map_err(|source| CriterionError::Match { layer: l, source })?;
            let suffix = if l == last {
                String::new()
            } else {
                format!("_{l}")
            };
            let values = self.layer_terms(
                &layers[l],
                host,
                targets,
                &m,
                num_interactions,
                pseudo_verb,
                l,
            )?;
            for (base, value) in TERM_NAMES.iter().zip(values) {
                let name = format!("{base}{suffix}");
                let weight = self
                    .weight(&name, n_layers)
                    .expect("every emitted term has a weight");
                terms.push(LossTerm {
                    name,
                    value,
                    weight,
                });
            }
            if l == last {
                let flat = flatten(&m);
                logs.push((
                    "obj_class_error".to_string(),
                    class_error(&host.obj_logits, n_obj, host.pairs, &flat, |t, k| {
                        targets[t].obj_labels[k]
                    }),
                ));
                if self.config.matcher.subject_class {
                    logs.push((
                        "sub_class_error".to_string(),
                        class_error(&host.sub_logits, n_obj, host.pairs, &flat, |t, k| {
                            targets[t].sub_labels[k]
                        }),
                    ));
                }
            }
            logs.push((
                format!("obj_cardinality_error{suffix}"),
                cardinality_error(host, targets),
            ));
            matches[l] = m;
        }

        let last_logits = &layers[last].obj_logits;
        let zero = terms::zero(&last_logits.device(), last_logits.dtype());
        let total = terms
            .iter()
            .fold(zero, |acc, t| acc + t.value.clone().mul_scalar(t.weight));
        Ok(CriterionOutput {
            terms,
            total,
            matches,
            logs,
            num_interactions,
        })
    }

    /// The six terms of one layer, in [`TERM_NAMES`] order.
    #[allow(clippy::too_many_arguments)]
    fn layer_terms(
        &self,
        layer: &LayerPredictions,
        host: &HostPredictions,
        targets: &[PairTargets],
        matches: &[ImageMatches],
        num_interactions: f64,
        pseudo_verb: Option<&[Vec<Vec<f32>>]>,
        layer_idx: usize,
    ) -> Result<Vec<Tensor<1>>, CriterionError> {
        let cfg = &self.config;
        let (p, n_obj, n_verb) = (host.pairs, host.n_obj, host.n_verb);
        let flat = flatten(matches);

        // Classification: every query defaults to the last class.
        let class_targets = |label: &dyn Fn(usize, usize) -> usize| {
            let mut t = vec![n_obj - 1; host.batch * p];
            for &(i, q, k) in &flat {
                t[i * p + q] = label(i, k);
            }
            t
        };
        let obj_t = class_targets(&|i, k| targets[i].obj_labels[k]);
        let mut obj_ce =
            terms::weighted_cross_entropy(layer.obj_logits.clone(), &obj_t, cfg.eos_coef);
        if cfg.matcher.subject_class {
            let sub_t = class_targets(&|i, k| targets[i].sub_labels[k]);
            obj_ce = obj_ce
                + terms::weighted_cross_entropy(layer.sub_logits.clone(), &sub_t, cfg.eos_coef);
        }

        // Verbs: dense targets, matched rows filled.
        let mut dense = vec![0.0f32; host.batch * p * n_verb];
        for &(i, q, k) in &flat {
            let row = &mut dense[(i * p + q) * n_verb..(i * p + q + 1) * n_verb];
            let labels = &targets[i].verb_labels[k];
            match cfg.verb_loss {
                VerbLoss::Focal => row.copy_from_slice(labels),
                VerbLoss::QualityFocal { .. } => {
                    let cost = pair_giou_cost(
                        host.sub_box(i, q),
                        host.obj_box(i, q),
                        &targets[i].sub_boxes[k],
                        &targets[i].obj_boxes[k],
                    );
                    let scale = (1.0 - cost) / 2.0;
                    if !(0.0..=1.0).contains(&scale) {
                        return Err(CriterionError::SoftLabelOutOfRange {
                            layer: layer_idx,
                            image: i,
                            query: q,
                            target: k,
                            value: scale,
                        });
                    }
                    let extra = pseudo_verb.map(|pv| pv[i][k].as_slice());
                    for (v, out) in row.iter_mut().enumerate() {
                        let l = labels[v] as f64 + extra.map_or(0.0, |e| e[v] as f64);
                        *out = (l * scale) as f32;
                    }
                }
            }
        }
        let verb_ce = match cfg.verb_loss {
            VerbLoss::Focal => terms::focal_verb_loss(layer.verb_logits.clone(), &dense),
            VerbLoss::QualityFocal { beta } => {
                terms::quality_focal_verb_loss(layer.verb_logits.clone(), &dense, beta)
            }
        };

        let rows: Vec<usize> = flat.iter().map(|&(i, q, _)| i * p + q).collect();
        let tgt_sub: Vec<[f32; 4]> = flat
            .iter()
            .map(|&(i, _, k)| targets[i].sub_boxes[k])
            .collect();
        let tgt_obj: Vec<[f32; 4]> = flat
            .iter()
            .map(|&(i, _, k)| targets[i].obj_boxes[k])
            .collect();
        let boxes = terms::box_losses(
            layer.sub_boxes.clone(),
            layer.obj_boxes.clone(),
            &rows,
            &tgt_sub,
            &tgt_obj,
            num_interactions,
        );
        Ok(vec![
            obj_ce,
            verb_ce,
            boxes.sub_bbox,
            boxes.obj_bbox,
            boxes.sub_giou,
            boxes.obj_giou,
        ])
    }
}

fn check_pseudo(
    rows: &[Vec<Vec<f32>>],
    targets: &[PairTargets],
    n_verb: usize,
) -> Result<(), CriterionError> {
    if rows.len() != targets.len() {
        return Err(CriterionError::Input(format!(
            "{} pseudo-label images for {} target sets",
            rows.len(),
            targets.len()
        )));
    }
    for (i, (r, t)) in rows.iter().zip(targets).enumerate() {
        if r.len() != t.len() || r.iter().any(|row| row.len() != n_verb) {
            return Err(CriterionError::Input(format!(
                "image {i}: pseudo-label rows must be {} x {n_verb}",
                t.len()
            )));
        }
    }
    Ok(())
}

fn flatten(matches: &[ImageMatches]) -> Flat {
    matches
        .iter()
        .enumerate()
        .flat_map(|(i, m)| m.iter().map(move |&(q, k)| (i, q, k)))
        .collect()
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// `100 − top-1 accuracy` of the matched queries (official `accuracy`; no match gives 100).
fn class_error(
    logits: &[f32],
    n: usize,
    p: usize,
    flat: &Flat,
    label: impl Fn(usize, usize) -> usize,
) -> f64 {
    if flat.is_empty() {
        return 100.0;
    }
    let correct = flat
        .iter()
        .filter(|&&(i, q, k)| {
            let row = (i * p + q) * n;
            argmax(&logits[row..row + n]) == label(i, k)
        })
        .count();
    100.0 - 100.0 * correct as f64 / flat.len() as f64
}

/// Mean over images of `|#queries not predicting "no objects" − #targets|`.
fn cardinality_error(host: &HostPredictions, targets: &[PairTargets]) -> f64 {
    let (p, n) = (host.pairs, host.n_obj);
    let sum: f64 = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let card = (0..p)
                .filter(|&q| {
                    let row = (i * p + q) * n;
                    argmax(&host.obj_logits[row..row + n]) != n - 1
                })
                .count();
            (card as f64 - t.len() as f64).abs()
        })
        .sum();
    sum / targets.len().max(1) as f64
}
