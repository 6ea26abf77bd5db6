//! Hungarian pair matching for RLIPv2-ParSeDA training, on the host.
//!
//! [`linear_sum_assignment`] is an exact rectangular assignment solver with the semantics of
//! `scipy.optimize.linear_sum_assignment` (the shortest-augmenting-path method of Crouse 2016,
//! including scipy's tie-breaking, so equal-cost problems resolve to the same pairs).
//! [`PairMatcher`] builds the official `HungarianMatcherHOI` cost between predicted and target
//! subject–object pairs and solves one assignment per image. Like the official matcher (which
//! moves its cost matrix to the CPU), everything here works on host `f32` inputs and computes in
//! `f64`.

use std::fmt;

use burn::tensor::Transaction;
use rlip_model::prediction_heads::LayerPredictions;

// ---------------------------------------------------------------------------------------------
// Linear assignment.

/// Why [`linear_sum_assignment`] could not solve a problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AssignmentError {
    /// `cost.len()` is not `rows * cols`.
    #[error("cost matrix has {len} entries, expected {rows}x{cols}")]
    Shape {
        /// Entries given.
        len: usize,
        /// Rows requested.
        rows: usize,
        /// Columns requested.
        cols: usize,
    },
    /// A NaN or `-inf` entry (scipy: "matrix contains invalid numeric entries").
    #[error("cost matrix entry ({row}, {col}) is {value}: NaN and -inf are invalid")]
    InvalidEntry {
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
        /// The entry.
        value: f64,
    },
    /// `+inf` entries leave no complete assignment (scipy: "cost matrix is infeasible").
    #[error("cost matrix is infeasible: +inf entries leave no complete assignment")]
    Infeasible,
}

/// Minimum-cost assignment of a row-major `rows x cols` cost matrix, as
/// `scipy.optimize.linear_sum_assignment(cost)`.
///
/// Returns `min(rows, cols)` `(row, col)` pairs sorted by row. `+inf` marks a forbidden pair;
/// NaN and `-inf` are errors, as in scipy. Among optimal assignments the one scipy returns is
/// chosen (same algorithm and tie rules; a constant matrix gives the identity).
pub fn linear_sum_assignment(
    cost: &[f64],
    rows: usize,
    cols: usize,
) -> Result<Vec<(usize, usize)>, AssignmentError> {
    if cost.len() != rows * cols {
        return Err(AssignmentError::Shape {
            len: cost.len(),
            rows,
            cols,
        });
    }
    if let Some(k) = cost
        .iter()
        .position(|c| c.is_nan() || *c == f64::NEG_INFINITY)
    {
        return Err(AssignmentError::InvalidEntry {
            row: k / cols,
            col: k % cols,
            value: cost[k],
        });
    }
    if rows == 0 || cols == 0 {
        return Ok(Vec::new());
    }
    // The solver wants at least as many columns as rows: solve the transpose of a tall matrix.
    if cols < rows {
        let mut t = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = cost[r * cols + c];
            }
        }
        // In the transposed problem each original column `c` gets original row `row_of[c]`.
        let row_of = shortest_augmenting_path(&t, cols, rows)?;
        let mut pairs: Vec<(usize, usize)> = row_of
            .into_iter()
            .enumerate()
            .map(|(c, r)| (r, c))
            .collect();
        pairs.sort_unstable();
        Ok(pairs)
    } else {
        let col_of = shortest_augmenting_path(cost, rows, cols)?;
        Ok(col_of.into_iter().enumerate().collect())
    }
}

/// Crouse's shortest augmenting path for `nr <= nc`; returns the column of each row.
fn shortest_augmenting_path(
    cost: &[f64],
    nr: usize,
    nc: usize,
) -> Result<Vec<usize>, AssignmentError> {
    const NONE: usize = usize::MAX;
    let mut u = vec![0.0f64; nr];
    let mut v = vec![0.0f64; nc];
    let mut dist = vec![0.0f64; nc];
    let mut path = vec![NONE; nc];
    let mut col4row = vec![NONE; nr];
    let mut row4col = vec![NONE; nc];
    let mut seen_row = vec![false; nr];
    let mut seen_col = vec![false; nc];
    let mut remaining: Vec<usize> = Vec::with_capacity(nc);

    for cur_row in 0..nr {
        // Dijkstra-like search for the cheapest path from `cur_row` to a free column.
        remaining.clear();
        // Columns are scanned from the last to the first; with scipy's tie rule this makes a
        // constant cost matrix resolve to the identity.
        remaining.extend((0..nc).rev());
        seen_row.fill(false);
        seen_col.fill(false);
        dist.fill(f64::INFINITY);

        let mut min_val = 0.0f64;
        let mut i = cur_row;
        let sink = loop {
            seen_row[i] = true;
            let mut best: Option<usize> = None;
            let mut lowest = f64::INFINITY;
            for (k, &j) in remaining.iter().enumerate() {
                let r = min_val + cost[i * nc + j] - u[i] - v[j];
                if r < dist[j] {
                    path[j] = i;
                    dist[j] = r;
                }
                // On equal distance prefer a free column: it ends the path.
                if dist[j] < lowest || (dist[j] == lowest && row4col[j] == NONE) {
                    lowest = dist[j];
                    best = Some(k);
                }
            }
            min_val = lowest;
            let k = match best {
                Some(k) if min_val.is_finite() => k,
                _ => return Err(AssignmentError::Infeasible),
            };
            let j = remaining[k];
            seen_col[j] = true;
            remaining.swap_remove(k);
            if row4col[j] == NONE {
                break j;
            }
            i = row4col[j];
        };

        // Dual update.
        u[cur_row] += min_val;
        for r in 0..nr {
            if seen_row[r] && r != cur_row {
                u[r] += min_val - dist[col4row[r]];
            }
        }
        for j in 0..nc {
            if seen_col[j] {
                v[j] -= min_val - dist[j];
            }
        }

        // Augment along the path.
        let mut j = sink;
        loop {
            let r = path[j];
            row4col[j] = r;
            std::mem::swap(&mut col4row[r], &mut j);
            if r == cur_row {
                break;
            }
        }
    }
    Ok(col4row)
}

// ---------------------------------------------------------------------------------------------
// Boxes.

/// `(cx, cy, w, h)` to `(x0, y0, x1, y1)`.
pub fn cxcywh_to_xyxy(b: [f64; 4]) -> [f64; 4] {
    [
        b[0] - 0.5 * b[2],
        b[1] - 0.5 * b[3],
        b[0] + 0.5 * b[2],
        b[1] + 0.5 * b[3],
    ]
}

/// Generalized IoU of two `(x0, y0, x1, y1)` boxes (the official `generalized_box_iou` entry).
///
/// A degenerate pair whose enclosing box has zero area gives NaN, as in the official code.
pub fn generalized_box_iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area_a + area_b - inter;
    let iou = inter / union;
    let cw = (a[2].max(b[2]) - a[0].min(b[0])).max(0.0);
    let ch = (a[3].max(b[3]) - a[1].min(b[1])).max(0.0);
    let enclosing = cw * ch;
    iou - (enclosing - union) / enclosing
}

/// Whether a target object box is present: the official test `(obj_box != 0).any()`.
///
/// Targets whose object box is all zeros (relations without an object) leave the object box
/// out of the L1 cost and the box losses, and add the subject GIoU cost to the object one.
pub fn object_box_exists(b: &[f32; 4]) -> bool {
    b.iter().any(|&x| x != 0.0)
}

fn f64x4(b: &[f32]) -> [f64; 4] {
    [b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64]
}

fn l1(a: [f64; 4], b: [f64; 4]) -> f64 {
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum()
}

/// The official pair GIoU cost `max(−GIoU(sub), −GIoU(obj) + [obj box all zero]·(−GIoU(sub)))`
/// for `(cx, cy, w, h)` boxes.
///
/// `(1 − cost) / 2` is the RLIPv2 relation quality (RQL) soft-label scale of a matched pair.
pub fn pair_giou_cost(
    pred_sub: [f64; 4],
    pred_obj: [f64; 4],
    tgt_sub: &[f32; 4],
    tgt_obj: &[f32; 4],
) -> f64 {
    let sub = -generalized_box_iou(cxcywh_to_xyxy(pred_sub), cxcywh_to_xyxy(f64x4(tgt_sub)));
    let zero_obj = if object_box_exists(tgt_obj) { 0.0 } else { 1.0 };
    let obj = -generalized_box_iou(cxcywh_to_xyxy(pred_obj), cxcywh_to_xyxy(f64x4(tgt_obj)))
        + sub * zero_obj;
    sub.max(obj)
}

// ---------------------------------------------------------------------------------------------
// Inputs.

/// The ground truth of one image: `n` subject–object pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairTargets {
    /// `n` subject boxes `(cx, cy, w, h)`, normalised to the image.
    pub sub_boxes: Vec<[f32; 4]>,
    /// `n` object boxes `(cx, cy, w, h)`; all zeros marks a relation without an object box.
    pub obj_boxes: Vec<[f32; 4]>,
    /// `n` subject classes (indices into the object texts).
    pub sub_labels: Vec<usize>,
    /// `n` object classes (indices into the object texts).
    pub obj_labels: Vec<usize>,
    /// `n` rows of verb (relation) labels, multi-hot over the verb texts.
    pub verb_labels: Vec<Vec<f32>>,
}

impl PairTargets {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.obj_labels.len()
    }

    /// Whether the image has no pairs.
    pub fn is_empty(&self) -> bool {
        self.obj_labels.is_empty()
    }

    /// Checks lengths, label ranges (`< n_obj`) and verb-row widths (`== n_verb`).
    pub fn validate(&self, n_obj: usize, n_verb: usize) -> Result<(), String> {
        let n = self.len();
        let lens = [
            ("sub_boxes", self.sub_boxes.len()),
            ("obj_boxes", self.obj_boxes.len()),
            ("sub_labels", self.sub_labels.len()),
            ("verb_labels", self.verb_labels.len()),
        ];
        for (name, len) in lens {
            if len != n {
                return Err(format!("{name} has {len} entries, obj_labels has {n}"));
            }
        }
        for (t, (&s, &o)) in self.sub_labels.iter().zip(&self.obj_labels).enumerate() {
            if s >= n_obj || o >= n_obj {
                return Err(format!(
                    "pair {t}: labels (sub {s}, obj {o}) out of range for {n_obj} object classes"
                ));
            }
        }
        for (t, row) in self.verb_labels.iter().enumerate() {
            if row.len() != n_verb {
                return Err(format!(
                    "pair {t}: {} verb labels, the predictions have {n_verb} verb classes",
                    row.len()
                ));
            }
        }
        Ok(())
    }
}

/// One decoder layer's predictions copied to the host, row-major `[B, P, ·]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPredictions {
    /// Images `B`.
    pub batch: usize,
    /// Pair queries per image `P`.
    pub pairs: usize,
    /// Object classes including the last, "no objects", class.
    pub n_obj: usize,
    /// Verb classes.
    pub n_verb: usize,
    /// `[B, P, n_obj]` subject logits.
    pub sub_logits: Vec<f32>,
    /// `[B, P, n_obj]` object logits.
    pub obj_logits: Vec<f32>,
    /// `[B, P, n_verb]` verb logits (sigmoid).
    pub verb_logits: Vec<f32>,
    /// `[B, P, 4]` subject boxes `(cx, cy, w, h)`.
    pub sub_boxes: Vec<f32>,
    /// `[B, P, 4]` object boxes.
    pub obj_boxes: Vec<f32>,
}

impl HostPredictions {
    /// Reads a layer's tensors back in one transaction (values only; no gradient is kept).
    pub fn from_layer(layer: &LayerPredictions) -> Result<Self, String> {
        let mut all = Self::from_layers(std::slice::from_ref(layer))?;
        Ok(all.remove(0))
    }

    /// Reads several layers back in one transaction.
    pub fn from_layers(layers: &[LayerPredictions]) -> Result<Vec<Self>, String> {
        let mut tx = Transaction::default();
        let mut dims = Vec::with_capacity(layers.len());
        for (l, layer) in layers.iter().enumerate() {
            let [b, p, n_obj] = layer.obj_logits.dims();
            let n_verb = layer.verb_logits.dims()[2];
            let expect = [
                ("sub_logits", layer.sub_logits.dims(), [b, p, n_obj]),
                ("verb_logits", layer.verb_logits.dims(), [b, p, n_verb]),
                ("sub_boxes", layer.sub_boxes.dims(), [b, p, 4]),
                ("obj_boxes", layer.obj_boxes.dims(), [b, p, 4]),
            ];
            for (name, got, want) in expect {
                if got != want {
                    return Err(format!("layer {l}: {name} is {got:?}, expected {want:?}"));
                }
            }
            dims.push((b, p, n_obj, n_verb));
            tx = tx
                .register(layer.sub_logits.clone())
                .register(layer.obj_logits.clone())
                .register(layer.verb_logits.clone())
                .register(layer.sub_boxes.clone())
                .register(layer.obj_boxes.clone());
        }
        let data = tx
            .try_execute()
            .map_err(|e| format!("reading predictions: {e:?}"))?;
        let mut vecs = data.into_iter().map(|d| {
            d.convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| format!("reading predictions: {e:?}"))
        });
        let mut next = || vecs.next().expect("five tensors per layer");
        dims.into_iter()
            .map(|(batch, pairs, n_obj, n_verb)| {
                Ok(Self {
                    batch,
                    pairs,
                    n_obj,
                    n_verb,
                    sub_logits: next()?,
                    obj_logits: next()?,
                    verb_logits: next()?,
                    sub_boxes: next()?,
                    obj_boxes: next()?,
                })
            })
            .collect()
    }

    /// Checks that every buffer has the length its dimensions imply.
    pub fn validate(&self) -> Result<(), String> {
        let bp = self.batch * self.pairs;
        let lens = [
            ("sub_logits", self.sub_logits.len(), bp * self.n_obj),
            ("obj_logits", self.obj_logits.len(), bp * self.n_obj),
            ("verb_logits", self.verb_logits.len(), bp * self.n_verb),
            ("sub_boxes", self.sub_boxes.len(), bp * 4),
            ("obj_boxes", self.obj_boxes.len(), bp * 4),
        ];
        for (name, got, want) in lens {
            if got != want {
                return Err(format!("{name} has {got} values, expected {want}"));
            }
        }
        Ok(())
    }

    /// Subject box of query `q` in image `b`.
    pub fn sub_box(&self, b: usize, q: usize) -> [f64; 4] {
        let k = (b * self.pairs + q) * 4;
        f64x4(&self.sub_boxes[k..k + 4])
    }

    /// Object box of query `q` in image `b`.
    pub fn obj_box(&self, b: usize, q: usize) -> [f64; 4] {
        let k = (b * self.pairs + q) * 4;
        f64x4(&self.obj_boxes[k..k + 4])
    }
}

fn softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn sigmoid(x: f32) -> f64 {
    1.0 / (1.0 + (-(x as f64)).exp())
}

// ---------------------------------------------------------------------------------------------
// Matcher.

/// Weights of the matching cost (`HungarianMatcherHOI`). `Default` is the RLIPv2-ParSeDA setting
/// of every official script (`--set_cost_bbox 2.5 --set_cost_giou 1 --subject_class`; argparse
/// defaults otherwise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatcherConfig {
    /// `set_cost_obj_class`: weight of `−p_obj[target class]`, and of `−p_sub[target class]`
    /// when `subject_class` is on (the official code uses the same weight for both).
    pub cost_obj_class: f64,
    /// `set_cost_verb_class`: weight of the verb cost.
    pub cost_verb_class: f64,
    /// `set_cost_bbox`: weight of `max(L1(sub), L1(obj))`.
    pub cost_bbox: f64,
    /// `set_cost_giou`: weight of [`pair_giou_cost`].
    pub cost_giou: f64,
    /// `subject_class`: also match on the subject class.
    pub subject_class: bool,
}

impl Default for MatcherConfig {
    fn default() -> Self {
        Self {
            cost_obj_class: 1.0,
            cost_verb_class: 1.0,
            cost_bbox: 2.5,
            cost_giou: 1.0,
            subject_class: true,
        }
    }
}

/// Why a batch could not be matched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatchError {
    /// Predictions and targets disagree in shape, or a label is out of range.
    #[error("invalid matcher input: {0}")]
    Input(String),
    /// A cost entry is NaN or infinite (the predictions are not finite).
    #[error(
        "non-finite matching cost {value} ({component}) at image {image}, query {query}, \
         target {target}: the predictions are not finite"
    )]
    NonFiniteCost {
        /// Image in the batch.
        image: usize,
        /// Pair query.
        query: usize,
        /// Target pair.
        target: usize,
        /// First non-finite cost component: `obj_class`, `sub_class`, `verb_class`, `bbox`,
        /// `giou`.
        component: &'static str,
        /// Its value.
        value: f64,
    },
    /// The assignment solver failed.
    #[error("image {image}: {source}")]
    Assignment {
        /// Image in the batch.
        image: usize,
        /// Solver error.
        source: AssignmentError,
    },
}

/// Matched `(query, target)` pairs of one image, sorted by query.
pub type ImageMatches = Vec<(usize, usize)>;

/// The official HOI pair matcher (`HungarianMatcherHOI`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PairMatcher {
    /// Cost weights.
    pub config: MatcherConfig,
}

impl PairMatcher {
    /// A matcher with these weights.
    pub fn new(config: MatcherConfig) -> Self {
        Self { config }
    }

    /// The `[P, T]` row-major matching cost of image `image` against its targets.
    pub fn cost_matrix(
        &self,
        preds: &HostPredictions,
        image: usize,
        targets: &PairTargets,
    ) -> Result<Vec<f64>, MatchError> {
        preds.validate().map_err(MatchError::Input)?;
        if image >= preds.batch {
            return Err(MatchError::Input(format!(
                "image {image} out of range for batch {}",
                preds.batch
            )));
        }
        targets
            .validate(preds.n_obj, preds.n_verb)
            .map_err(|e| MatchError::Input(format!("image {image}: {e}")))?;
        let cfg = &self.config;
        let (p, t_n, n_obj, n_verb) = (preds.pairs, targets.len(), preds.n_obj, preds.n_verb);

        // Per-target verb statistics (the column sums of the official verb cost).
        let verb_pos: Vec<f64> = targets
            .verb_labels
            .iter()
            .map(|r| r.iter().map(|&v| v as f64).sum::<f64>() + 1e-4)
            .collect();
        let verb_neg: Vec<f64> = targets
            .verb_labels
            .iter()
            .map(|r| r.iter().map(|&v| 1.0 - v as f64).sum::<f64>() + 1e-4)
            .collect();

        let mut cost = vec![0.0f64; p * t_n];
        for q in 0..p {
            let row = image * p + q;
            let obj_prob = softmax(&preds.obj_logits[row * n_obj..(row + 1) * n_obj]);
            let sub_prob = if cfg.subject_class {
                softmax(&preds.sub_logits[row * n_obj..(row + 1) * n_obj])
            } else {
                Vec::new()
            };
            let verb_prob: Vec<f64> = preds.verb_logits[row * n_verb..(row + 1) * n_verb]
                .iter()
                .map(|&x| sigmoid(x))
                .collect();
            let (ps, po) = (preds.sub_box(image, q), preds.obj_box(image, q));
            for t in 0..t_n {
                let c_obj = -obj_prob[targets.obj_labels[t]];
                let c_sub = if cfg.subject_class {
                    -sub_prob[targets.sub_labels[t]]
                } else {
                    0.0
                };
                let labels = &targets.verb_labels[t];
                let (mut pos, mut neg) = (0.0f64, 0.0f64);
                for (pv, &l) in verb_prob.iter().zip(labels) {
                    pos += pv * l as f64;
                    neg += (1.0 - pv) * (1.0 - l as f64);
                }
                let c_verb = -(pos / verb_pos[t] + neg / verb_neg[t]) / 2.0;
                let (ts, to) = (&targets.sub_boxes[t], &targets.obj_boxes[t]);
                let c_sub_l1 = l1(ps, f64x4(ts));
                let c_obj_l1 = if object_box_exists(to) {
                    l1(po, f64x4(to))
                } else {
                    0.0
                };
                let c_bbox = c_sub_l1.max(c_obj_l1);
                let c_giou = pair_giou_cost(ps, po, ts, to);
                let parts = [
                    ("obj_class", c_obj),
                    ("sub_class", c_sub),
                    ("verb_class", c_verb),
                    ("bbox", c_bbox),
                    ("giou", c_giou),
                ];
                if let Some(&(component, value)) = parts.iter().find(|(_, v)| !v.is_finite()) {
                    return Err(MatchError::NonFiniteCost {
                        image,
                        query: q,
                        target: t,
                        component,
                        value,
                    });
                }
                cost[q * t_n + t] = cfg.cost_obj_class * c_obj
                    + cfg.cost_obj_class * c_sub
                    + cfg.cost_verb_class * c_verb
                    + cfg.cost_bbox * c_bbox
                    + cfg.cost_giou * c_giou;
            }
        }
        Ok(cost)
    }

    /// Matches every image of the batch: `(query, target)` pairs per image, sorted by query,
    /// `min(P, T)` of them.
    pub fn match_batch(
        &self,
        preds: &HostPredictions,
        targets: &[PairTargets],
    ) -> Result<Vec<ImageMatches>, MatchError> {
        if targets.len() != preds.batch {
            return Err(MatchError::Input(format!(
                "{} target sets for a batch of {}",
                targets.len(),
                preds.batch
            )));
        }
        targets
            .iter()
            .enumerate()
            .map(|(image, tgt)| {
                let cost = self.cost_matrix(preds, image, tgt)?;
                linear_sum_assignment(&cost, preds.pairs, tgt.len())
                    .map_err(|source| MatchError::Assignment { image, source })
            })
            .collect()
    }
}

impl fmt::Display for PairMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "PairMatcher(obj_class {}, verb_class {}, bbox {}, giou {}, subject_class {})",
            c.cost_obj_class, c.cost_verb_class, c.cost_bbox, c.cost_giou, c.subject_class
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic generator (splitmix64), shared with the scipy fixture script below.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Minimum total cost over all assignments of `min(r, c)` pairs, by enumeration.
    fn brute_force(cost: &[f64], r: usize, c: usize) -> f64 {
        fn rec(
            cost: &[f64],
            r: usize,
            c: usize,
            row: usize,
            used: &mut [bool],
            left: usize,
        ) -> f64 {
            if left == 0 {
                return 0.0;
            }
            if r - row < left {
                return f64::INFINITY;
            }
            // Either skip this row (only when rows outnumber what is left) or assign it.
            let mut best = rec(cost, r, c, row + 1, used, left);
            for j in 0..c {
                if !used[j] {
                    used[j] = true;
                    let v = cost[row * c + j] + rec(cost, r, c, row + 1, used, left - 1);
                    used[j] = false;
                    best = best.min(v);
                }
            }
            best
        }
        rec(cost, r, c, 0, &mut vec![false; c], r.min(c))
    }

    fn check_valid(pairs: &[(usize, usize)], r: usize, c: usize) {
        assert_eq!(pairs.len(), r.min(c));
        assert!(
            pairs.windows(2).all(|w| w[0].0 < w[1].0),
            "rows sorted, distinct"
        );
        let mut cols: Vec<usize> = pairs.iter().map(|p| p.1).collect();
        cols.sort_unstable();
        cols.dedup();
        assert_eq!(cols.len(), pairs.len(), "distinct columns");
        assert!(pairs.iter().all(|&(i, j)| i < r && j < c));
    }

    fn total(cost: &[f64], c: usize, pairs: &[(usize, usize)]) -> f64 {
        pairs.iter().map(|&(i, j)| cost[i * c + j]).sum()
    }

    #[test]
    fn lsap_matches_brute_force_on_random_matrices() {
        let mut rng = Rng(7);
        for case in 0..3000 {
            let r = 1 + rng.below(6) as usize;
            let c = 1 + rng.below(6) as usize;
            let kind = case % 3;
            let cost: Vec<f64> = (0..r * c)
                .map(|_| match kind {
                    0 => rng.unit() * 10.0 - 3.0,     // continuous
                    1 => rng.below(3) as f64,         // many ties
                    _ => (rng.below(5) as f64) * 0.5, // ties on a coarse grid
                })
                .collect();
            let pairs = linear_sum_assignment(&cost, r, c).unwrap();
            check_valid(&pairs, r, c);
            let best = brute_force(&cost, r, c);
            let got = total(&cost, c, &pairs);
            assert!(
                (got - best).abs() < 1e-9,
                "case {case} ({r}x{c}): got {got}, optimum {best}, cost {cost:?}"
            );
        }
    }

    #[test]
    fn lsap_constant_matrix_gives_identity_like_scipy() {
        for (r, c) in [(1, 1), (3, 3), (5, 5), (2, 4), (4, 2), (1, 3), (3, 1)] {
            let pairs = linear_sum_assignment(&vec![1.5; r * c], r, c).unwrap();
            let want: Vec<(usize, usize)> = (0..r.min(c)).map(|i| (i, i)).collect();
            assert_eq!(pairs, want, "{r}x{c}");
        }
    }

    /// Exact pairs from `scipy.optimize.linear_sum_assignment` (scipy 1.17.1) for tie-heavy
    /// integer matrices drawn with `Rng(2024)`: per case `rows cols` then `row:col` pairs.
    const SCIPY_TIES: &str = "\
2 3 0:0 1:1\n\
5 2 1:0 3:1\n\
5 5 0:1 1:0 2:4 3:2 4:3\n\
5 6 0:5 1:1 2:3 3:2 4:4\n\
5 6 0:0 1:3 2:1 3:4 4:2\n\
2 6 0:0 1:4\n\
5 3 0:2 2:0 4:1\n\
2 6 0:0 1:3\n\
4 1 0:0\n\
1 3 0:0\n\
4 3 0:1 1:0 2:2\n\
1 5 0:0\n\
2 3 0:2 1:0\n\
3 4 0:2 1:3 2:0\n\
2 4 0:0 1:1\n\
6 3 0:1 2:2 3:0\n\
1 4 0:0\n\
4 2 0:1 2:0\n\
6 3 0:0 1:2 2:1\n\
6 2 0:1 1:0\n\
6 2 1:0 4:1\n\
2 4 0:1 1:3\n\
1 3 0:0\n\
2 2 0:0 1:1\n\
2 6 0:2 1:0\n\
5 6 0:1 1:0 2:2 3:5 4:4\n\
5 5 0:4 1:0 2:1 3:2 4:3\n\
6 1 0:0\n\
5 2 2:0 4:1\n\
2 2 0:1 1:0\n\
2 3 0:2 1:0\n\
4 6 0:1 1:0 2:4 3:5\n\
1 2 0:0\n\
4 5 0:3 1:2 2:0 3:1\n\
3 5 0:1 1:0 2:3\n\
4 4 0:1 1:2 2:3 3:0\n\
2 4 0:1 1:3\n\
5 4 0:0 1:1 2:2 4:3\n\
4 6 0:0 1:3 2:4 3:2\n\
4 1 0:0\n\
5 1 4:0\n\
6 3 1:1 3:2 4:0\n\
4 1 1:0\n\
6 4 0:2 1:3 3:0 4:1\n\
6 6 0:5 1:1 2:0 3:3 4:2 5:4\n\
2 3 0:0 1:1\n\
3 1 1:0\n\
3 3 0:1 1:0 2:2\n\
4 6 0:0 1:1 2:2 3:5\n\
1 6 0:1\n\
1 4 0:1\n\
6 6 0:1 1:2 2:0 3:5 4:4 5:3\n\
6 2 1:1 3:0\n\
1 6 0:0\n\
2 2 0:0 1:1\n\
1 3 0:2\n\
5 3 0:0 1:2 2:1\n\
6 4 0:0 1:1 2:2 3:3\n\
5 1 3:0\n\
2 6 0:2 1:0\n\
5 6 0:3 1:4 2:0 3:5 4:1\n\
3 3 0:2 1:0 2:1\n\
6 6 0:1 1:4 2:0 3:3 4:5 5:2\n\
3 3 0:2 1:0 2:1\n\
6 1 1:0\n\
6 6 0:2 1:0 2:4 3:3 4:5 5:1\n\
4 6 0:1 1:4 2:5 3:0\n\
6 2 0:0 4:1\n\
5 6 0:1 1:0 2:2 3:5 4:4\n\
4 1 3:0\n\
1 6 0:0\n\
5 1 0:0\n\
2 6 0:3 1:2\n\
6 5 0:4 1:1 2:2 3:3 5:0\n\
3 6 0:1 1:0 2:5\n\
1 6 0:1\n\
2 5 0:0 1:3\n\
2 3 0:1 1:0\n\
2 4 0:1 1:0\n\
4 6 0:5 1:4 2:1 3:2\n\
2 3 0:0 1:1\n\
3 3 0:1 1:0 2:2\n\
5 2 2:1 3:0\n\
2 4 0:1 1:2\n\
3 2 1:1 2:0\n\
5 3 0:0 1:1 3:2\n\
6 3 0:1 1:2 3:0\n\
2 1 1:0\n\
6 3 0:1 1:0 2:2\n\
4 4 0:1 1:2 2:3 3:0\n\
5 1 1:0\n\
2 6 0:2 1:4\n\
1 5 0:0\n\
5 1 2:0\n\
4 3 0:2 1:0 2:1\n\
1 1 0:0\n\
3 2 0:1 1:0\n\
4 4 0:3 1:2 2:1 3:0\n\
2 4 0:2 1:1\n\
2 6 0:0 1:1\n\
3 1 0:0\n\
6 2 1:0 3:1\n\
5 4 0:3 2:0 3:1 4:2\n\
5 4 0:2 1:0 3:3 4:1\n\
5 6 0:0 1:1 2:2 3:3 4:5\n\
2 1 1:0\n\
5 2 0:0 4:1\n\
1 5 0:0\n\
4 4 0:0 1:3 2:1 3:2\n\
6 4 0:3 1:1 2:2 3:0\n\
5 5 0:0 1:2 2:4 3:3 4:1\n\
2 4 0:1 1:0\n\
3 5 0:4 1:1 2:2\n\
4 2 0:1 1:0\n\
2 3 0:0 1:2\n\
4 6 0:1 1:3 2:5 3:0\n\
2 1 0:0\n\
1 3 0:2\n\
5 2 0:1 2:0\n\
4 6 0:4 1:3 2:0 3:2\n\
";

    #[test]
    fn lsap_tie_breaking_matches_scipy() {
        let mut rng = Rng(2024);
        let mut n = 0;
        for line in SCIPY_TIES.lines().filter(|l| !l.trim().is_empty()) {
            let mut it = line.split_whitespace();
            let r: usize = it.next().unwrap().parse().unwrap();
            let c: usize = it.next().unwrap().parse().unwrap();
            let want: Vec<(usize, usize)> = it
                .map(|p| {
                    let (a, b) = p.split_once(':').unwrap();
                    (a.parse().unwrap(), b.parse().unwrap())
                })
                .collect();
            let gr = 1 + rng.below(6) as usize;
            let gc = 1 + rng.below(6) as usize;
            assert_eq!((gr, gc), (r, c), "fixture out of step with the generator");
            let cost: Vec<f64> = (0..r * c).map(|_| rng.below(3) as f64).collect();
            assert_eq!(
                linear_sum_assignment(&cost, r, c).unwrap(),
                want,
                "case {n}: {cost:?}"
            );
            n += 1;
        }
        assert!(n >= 100);
    }

    #[test]
    fn lsap_errors_and_edge_cases() {
        assert_eq!(linear_sum_assignment(&[], 0, 3), Ok(vec![]));
        assert_eq!(linear_sum_assignment(&[], 4, 0), Ok(vec![]));
        assert!(matches!(
            linear_sum_assignment(&[1.0, 2.0], 2, 2),
            Err(AssignmentError::Shape { .. })
        ));
        let err = linear_sum_assignment(&[1.0, f64::NAN, 0.0, 2.0], 2, 2).unwrap_err();
        assert!(
            matches!(err, AssignmentError::InvalidEntry { row: 0, col: 1, .. }),
            "{err}"
        );
        let err = linear_sum_assignment(&[0.0, 1.0, f64::NEG_INFINITY, 2.0], 2, 2).unwrap_err();
        assert!(
            matches!(err, AssignmentError::InvalidEntry { row: 1, col: 0, .. }),
            "{err}"
        );
        // +inf forbids a pair, like scipy.
        let inf = f64::INFINITY;
        assert_eq!(
            linear_sum_assignment(&[inf, 1.0, 1.0, 5.0], 2, 2),
            Ok(vec![(0, 1), (1, 0)])
        );
        assert_eq!(
            linear_sum_assignment(&[inf, inf, 1.0, 5.0], 2, 2),
            Err(AssignmentError::Infeasible)
        );
        // Tall matrix: rows are queries, result sorted by row.
        let cost = [5.0, 9.0, 1.0, 9.0, 9.0, 0.0];
        assert_eq!(linear_sum_assignment(&cost, 3, 2), Ok(vec![(1, 0), (2, 1)]));
    }

    // -----------------------------------------------------------------------------------------
    // Matcher.

    fn random_preds(
        rng: &mut Rng,
        b: usize,
        p: usize,
        n_obj: usize,
        n_verb: usize,
    ) -> HostPredictions {
        let mut v = |n: usize, lo: f64, hi: f64| -> Vec<f32> {
            (0..n)
                .map(|_| (lo + (hi - lo) * rng.unit()) as f32)
                .collect()
        };
        let sub_logits = v(b * p * n_obj, -3.0, 3.0);
        let obj_logits = v(b * p * n_obj, -3.0, 3.0);
        let verb_logits = v(b * p * n_verb, -4.0, 2.0);
        let sub_boxes = v(b * p * 4, 0.1, 0.6);
        let obj_boxes = v(b * p * 4, 0.1, 0.6);
        HostPredictions {
            batch: b,
            pairs: p,
            n_obj,
            n_verb,
            sub_logits,
            obj_logits,
            verb_logits,
            sub_boxes,
            obj_boxes,
        }
    }

    fn random_targets(rng: &mut Rng, n: usize, n_obj: usize, n_verb: usize) -> PairTargets {
        let bx = |rng: &mut Rng| -> [f32; 4] {
            [0.2, 0.2, 0.1, 0.1].map(|lo: f32| lo + 0.4 * rng.unit() as f32)
        };
        let mut t = PairTargets::default();
        for k in 0..n {
            t.sub_boxes.push(bx(rng));
            // Every third pair has no object box.
            t.obj_boxes
                .push(if k % 3 == 2 { [0.0; 4] } else { bx(rng) });
            t.sub_labels.push(rng.below(n_obj as u64 - 1) as usize);
            t.obj_labels.push(rng.below(n_obj as u64 - 1) as usize);
            let mut row: Vec<f32> = (0..n_verb)
                .map(|_| (rng.below(3) == 0) as u8 as f32)
                .collect();
            row[rng.below(n_verb as u64) as usize] = 1.0;
            t.verb_labels.push(row);
        }
        t
    }

    /// The official cost written out directly, one entry at a time.
    fn reference_cost(
        cfg: &MatcherConfig,
        p: &HostPredictions,
        b: usize,
        q: usize,
        t: &PairTargets,
        k: usize,
    ) -> f64 {
        let row = b * p.pairs + q;
        let soft = |x: &[f32], i: usize| {
            let den: f64 = x.iter().map(|&v| (v as f64).exp()).sum();
            (x[i] as f64).exp() / den
        };
        let obj = &p.obj_logits[row * p.n_obj..(row + 1) * p.n_obj];
        let sub = &p.sub_logits[row * p.n_obj..(row + 1) * p.n_obj];
        let verb = &p.verb_logits[row * p.n_verb..(row + 1) * p.n_verb];
        let prob: Vec<f64> = verb
            .iter()
            .map(|&x| 1.0 / (1.0 + (-x as f64).exp()))
            .collect();
        let lab: Vec<f64> = t.verb_labels[k].iter().map(|&x| x as f64).collect();
        let a: f64 = prob.iter().zip(&lab).map(|(p, l)| p * l).sum::<f64>()
            / (lab.iter().sum::<f64>() + 1e-4);
        let bneg: f64 = prob
            .iter()
            .zip(&lab)
            .map(|(p, l)| (1.0 - p) * (1.0 - l))
            .sum::<f64>()
            / (lab.iter().map(|l| 1.0 - l).sum::<f64>() + 1e-4);
        let c_verb = -(a + bneg) / 2.0;
        let mut c = cfg.cost_obj_class * -soft(obj, t.obj_labels[k]) + cfg.cost_verb_class * c_verb;
        if cfg.subject_class {
            c += cfg.cost_obj_class * -soft(sub, t.sub_labels[k]);
        }
        let (ps, po) = (p.sub_box(b, q), p.obj_box(b, q));
        let ts = f64x4(&t.sub_boxes[k]);
        let to = f64x4(&t.obj_boxes[k]);
        let exists = to.iter().any(|&x| x != 0.0);
        let l1s: f64 = (0..4).map(|i| (ps[i] - ts[i]).abs()).sum();
        let l1o: f64 = if exists {
            (0..4).map(|i| (po[i] - to[i]).abs()).sum()
        } else {
            0.0
        };
        c += cfg.cost_bbox * l1s.max(l1o);
        let gs = -generalized_box_iou(cxcywh_to_xyxy(ps), cxcywh_to_xyxy(ts));
        let go = -generalized_box_iou(cxcywh_to_xyxy(po), cxcywh_to_xyxy(to))
            + if exists { 0.0 } else { gs };
        c + cfg.cost_giou * gs.max(go)
    }

    fn permutations_best(cost: &[f64], p: usize, t: usize) -> f64 {
        brute_force(cost, p, t)
    }

    #[test]
    fn matcher_cost_and_assignment_match_reference_and_brute_force() {
        let mut rng = Rng(99);
        for case in 0..60 {
            let (b, p, n_obj, n_verb) = (2, 2 + case % 5, 4, 5);
            let subject_class = case % 2 == 0;
            let cfg = MatcherConfig {
                subject_class,
                ..MatcherConfig::default()
            };
            let m = PairMatcher::new(cfg);
            let preds = random_preds(&mut rng, b, p, n_obj, n_verb);
            let targets: Vec<PairTargets> = (0..b)
                .map(|i| random_targets(&mut rng, (case + i) % 6, n_obj, n_verb))
                .collect();
            let matches = m.match_batch(&preds, &targets).unwrap();
            for (img, t) in targets.iter().enumerate() {
                let cost = m.cost_matrix(&preds, img, t).unwrap();
                for q in 0..p {
                    for k in 0..t.len() {
                        let want = reference_cost(&cfg, &preds, img, q, t, k);
                        assert!((cost[q * t.len() + k] - want).abs() < 1e-9);
                    }
                }
                check_valid(&matches[img], p, t.len());
                let got = total(&cost, t.len(), &matches[img]);
                let best = permutations_best(&cost, p, t.len());
                assert!((got - best).abs() < 1e-9, "case {case} image {img}");
            }
        }
    }

    #[test]
    fn matcher_prefers_the_right_pair_and_handles_missing_object_boxes() {
        // Two queries, two targets: query 1 predicts target 0 exactly and query 0 target 1.
        let t = PairTargets {
            sub_boxes: vec![[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]],
            obj_boxes: vec![[0.5, 0.5, 0.2, 0.2], [0.0; 4]],
            sub_labels: vec![0, 0],
            obj_labels: vec![1, 2],
            verb_labels: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
        };
        let mut preds = HostPredictions {
            batch: 1,
            pairs: 2,
            n_obj: 4,
            n_verb: 2,
            sub_logits: vec![0.0; 8],
            obj_logits: vec![0.0; 8],
            verb_logits: vec![0.0; 4],
            sub_boxes: vec![0.7, 0.7, 0.2, 0.2, 0.3, 0.3, 0.2, 0.2],
            obj_boxes: vec![0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.2, 0.2],
        };
        let m = PairMatcher::default();
        assert_eq!(
            m.match_batch(&preds, std::slice::from_ref(&t)).unwrap(),
            vec![vec![(0, 1), (1, 0)]]
        );
        // Target 1 has no object box: its object L1 is left out and its GIoU cost is the
        // subject's plus the (non-negative) cost against the zero box.
        let cost = m.cost_matrix(&preds, 0, &t).unwrap();
        let g = pair_giou_cost(
            preds.sub_box(0, 0),
            preds.obj_box(0, 0),
            &t.sub_boxes[1],
            &t.obj_boxes[1],
        );
        let to_zero = -generalized_box_iou(cxcywh_to_xyxy(preds.obj_box(0, 0)), [0.0; 4]);
        assert!(to_zero >= 0.0);
        // Subject GIoU is exactly 1 (cost −1), so the pair cost is −1 plus the zero-box part.
        assert!((g - (to_zero - 1.0)).abs() < 1e-12, "{g} vs {to_zero}");
        assert!(cost.iter().all(|c| c.is_finite()));

        // A NaN prediction is a clear error naming where it is.
        preds.verb_logits[2] = f32::NAN;
        let err = m.match_batch(&preds, &[t]).unwrap_err();
        assert!(
            matches!(
                err,
                MatchError::NonFiniteCost {
                    image: 0,
                    query: 1,
                    component: "verb_class",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn matcher_rejects_bad_targets_and_handles_empty_images() {
        let mut rng = Rng(5);
        let preds = random_preds(&mut rng, 2, 3, 4, 5);
        let m = PairMatcher::default();
        let empty = PairTargets::default();
        let one = random_targets(&mut rng, 1, 4, 5);
        assert_eq!(
            m.match_batch(&preds, &[empty.clone(), one.clone()])
                .unwrap()[0],
            vec![]
        );
        let mut bad = one.clone();
        bad.obj_labels[0] = 4;
        assert!(matches!(
            m.match_batch(&preds, &[empty.clone(), bad]),
            Err(MatchError::Input(_))
        ));
        let mut bad = one.clone();
        bad.verb_labels[0].push(0.0);
        assert!(matches!(
            m.match_batch(&preds, &[empty.clone(), bad]),
            Err(MatchError::Input(_))
        ));
        assert!(matches!(
            m.match_batch(&preds, &[empty]),
            Err(MatchError::Input(_))
        ));
        // More targets than queries: every query is used.
        let many = random_targets(&mut rng, 5, 4, 5);
        let got = m.match_batch(&preds, &[many.clone(), many]).unwrap();
        assert!(got.iter().all(|g| g.len() == 3));
    }

    #[test]
    fn giou_of_known_boxes() {
        assert!(
            (generalized_box_iou([0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]) - 1.0).abs() < 1e-12
        );
        // Disjoint unit squares two apart: IoU 0, enclosing 3x1, union 2 -> -1/3.
        let g = generalized_box_iou([0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]);
        assert!((g + 1.0 / 3.0).abs() < 1e-12);
        // Half overlap: inter 1, union 3, enclosing 3 -> 1/3.
        let g = generalized_box_iou([0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 3.0, 1.0]);
        assert!((g - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(cxcywh_to_xyxy([0.5, 0.5, 0.2, 0.4]), [0.4, 0.3, 0.6, 0.7]);
    }
}
