//! RLIPv2's relational pseudo-labels (RPL, `--pseudo_verb`).
//!
//! During pre-training the official model turns the verb texts into soft extra labels: verbs
//! whose text features lie close to a triplet's annotated verbs become partial positives. This
//! is the model's `"online"` mode (the official default): Euclidean distances between the verb
//! text features before the text resizer, turned into similarities, summed over the annotated
//! verbs, normalised by their maximum, zeroed on the annotated verbs and thresholded at 0.3.
//! The criterion adds these rows to the verb labels before the RQL GIoU scaling.

use crate::matcher::PairTargets;

/// Pseudo-labels at or below this normalised similarity are dropped (official `sim_thre`).
pub const PSEUDO_VERB_THRESHOLD: f64 = 0.3;

/// `eps` of `torch.nn.functional.pairwise_distance`, added to every difference.
const PAIRWISE_EPS: f64 = 1e-6;

/// Pseudo-verb rows for every target pair: `out[image][pair]` has `n_verb` values in `[0, 1]`.
///
/// `verb_text` is the `[n_verb, dim]` row-major verb text features the official code takes from
/// the text memory before resizing (first batch element; the texts are shared by the batch).
/// A pair without any verb label gets an all-zero row (the official code would divide by zero
/// there).
///
/// # Panics
/// If `verb_text.len() != n_verb · dim` or a verb-label row is not `n_verb` long.
pub fn pseudo_verb_targets(
    verb_text: &[f32],
    n_verb: usize,
    dim: usize,
    targets: &[PairTargets],
) -> Vec<Vec<Vec<f32>>> {
    assert_eq!(verb_text.len(), n_verb * dim, "verb text features");
    let sim = verb_similarity(verb_text, n_verb, dim);
    targets
        .iter()
        .map(|t| {
            t.verb_labels
                .iter()
                .map(|labels| pseudo_row(&sim, labels, n_verb))
                .collect()
        })
        .collect()
}

/// `sim[i][j] = max_k d(i, k) − d(i, j)` with `d` the official pairwise distance
/// `‖x_i − x_j + eps‖₂`.
fn verb_similarity(x: &[f32], n: usize, dim: usize) -> Vec<f64> {
    let mut d = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            let (a, b) = (&x[i * dim..(i + 1) * dim], &x[j * dim..(j + 1) * dim]);
            d[i * n + j] = a
                .iter()
                .zip(b)
                .map(|(&u, &v)| {
                    let e = u as f64 - v as f64 + PAIRWISE_EPS;
                    e * e
                })
                .sum::<f64>()
                .sqrt();
        }
    }
    for i in 0..n {
        let row = &mut d[i * n..(i + 1) * n];
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        row.iter_mut().for_each(|v| *v = max - *v);
    }
    d
}

fn pseudo_row(sim: &[f64], labels: &[f32], n: usize) -> Vec<f32> {
    assert_eq!(labels.len(), n, "verb-label row width");
    let mut s = vec![0.0f64; n];
    for (i, &l) in labels.iter().enumerate() {
        if l != 0.0 {
            for (j, v) in s.iter_mut().enumerate() {
                *v += l as f64 * sim[i * n + j];
            }
        }
    }
    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !(max > 0.0 && max.is_finite()) {
        return vec![0.0; n];
    }
    s.iter()
        .zip(labels)
        .map(|(&v, &l)| {
            let v = v / max;
            if l != 0.0 || v <= PSEUDO_VERB_THRESHOLD {
                0.0
            } else {
                v as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_labels_on_a_line_of_verbs() {
        // Four 1-d verb features at 0, 1, 2, 10. Distances from verb 0: 0, 1, 2, 10 (plus eps),
        // similarities 10, 9, 8, 0. A pair labelled with verb 0 only: normalised 1, .9, .8, 0;
        // the annotated verb is zeroed -> [0, .9, .8, 0].
        let text = [0.0f32, 1.0, 2.0, 10.0];
        let t = PairTargets {
            sub_boxes: vec![[0.5; 4]; 2],
            obj_boxes: vec![[0.5; 4]; 2],
            sub_labels: vec![0, 0],
            obj_labels: vec![0, 0],
            verb_labels: vec![vec![1.0, 0.0, 0.0, 0.0], vec![0.0, 0.0, 0.0, 1.0]],
        };
        let out = pseudo_verb_targets(&text, 4, 1, &[t]);
        let row = &out[0][0];
        assert_eq!(row[0], 0.0);
        assert!((row[1] - 0.9).abs() < 1e-5, "{row:?}");
        assert!((row[2] - 0.8).abs() < 1e-5, "{row:?}");
        assert_eq!(row[3], 0.0);
        // Verb 3 (at 10): distances 10, 9, 8, 0 -> similarities 0, 1, 2, 10 -> normalised
        // 0, .1, .2, 1; .1 and .2 fall under the 0.3 threshold and verb 3 is annotated.
        assert_eq!(out[0][1], vec![0.0; 4]);
    }

    #[test]
    fn pair_without_verbs_gets_zeros() {
        let t = PairTargets {
            sub_boxes: vec![[0.5; 4]],
            obj_boxes: vec![[0.5; 4]],
            sub_labels: vec![0],
            obj_labels: vec![0],
            verb_labels: vec![vec![0.0; 3]],
        };
        let out = pseudo_verb_targets(&[0.0, 1.0, 0.5, 0.2, 0.3, 0.9], 3, 2, &[t]);
        assert_eq!(out[0][0], vec![0.0; 3]);
    }
}
