//! RLIPv2-ParSeDA prediction heads: boxes per decoder layer and language-aligned class logits.
//!
//! Official code: `models/hoi.py::RLIP_ParSeDA.forward` (`encode_and_save=False`). Subject,
//! object and relation logits are dot products between decoder features (plus a learned bias)
//! and a projection of the L2-normalised, halved per-round text features, plus the constant prior
//! bias `−log((1 − 0.01) / 0.01)`. Boxes are `sigmoid(MLP(h) + inverse_sigmoid(anchor))`.

use crate::dense::{Linear, matmul};
use burn::module::Param;
use burn::prelude::*;

use crate::parse_decoder::Mlp;
use crate::weights::layers::linear;
use crate::weights::{Init, Loader};

/// Outputs of one decoder layer, `P` pairs.
#[derive(Debug, Clone)]
pub struct LayerPredictions {
    /// `[B, P, n_obj]` subject logits over the object texts.
    pub sub_logits: Tensor<3>,
    /// `[B, P, n_obj]` object logits (last text = "no objects").
    pub obj_logits: Tensor<3>,
    /// `[B, P, n_rel]` relation logits (sigmoid).
    pub verb_logits: Tensor<3>,
    /// `[B, P, 4]` subject boxes `(cx, cy, w, h)` relative to the unpadded image.
    pub sub_boxes: Tensor<3>,
    /// `[B, P, 4]` object boxes.
    pub obj_boxes: Tensor<3>,
}

/// The box MLPs and the text-aligned classifier.
#[derive(Module, Debug)]
pub struct Heads {
    /// `sub_bbox_embed.{i}`: layers `0..n` refine subject anchors in the subject/object decoder,
    /// `n..2n` in the relation decoder.
    pub sub_bbox: Vec<Mlp>,
    /// `obj_bbox_embed.{i}`, laid out as `sub_bbox`.
    pub obj_bbox: Vec<Mlp>,
    projection_text: Linear,
    bias_obj: Param<Tensor<1>>,
    bias_pred: Param<Tensor<1>>,
}

/// The prior-probability bias added to every logit: `−log((1 − 0.01) / 0.01)`.
pub fn prior_bias() -> f64 {
    -((1.0f64 - 0.01) / 0.01).ln()
}

impl Heads {
    /// Loads the top-level `{sub,obj}_bbox_embed.{0..2n}`, `projection_text`, `bias_obj_a`,
    /// `bias_pred_a` for `n` decoder layers of width `d`.
    pub fn load(ld: &mut Loader, d: usize, n_layers: usize) -> Self {
        let mlps = |ld: &mut Loader, name: &str| -> Vec<Mlp> {
            (0..2 * n_layers)
                .map(|i| Mlp::load(ld, &format!("{name}.{i}"), d, d, 4, 3))
                .collect()
        };
        let sub_bbox = mlps(ld, "sub_bbox_embed");
        let obj_bbox = mlps(ld, "obj_bbox_embed");
        Self {
            sub_bbox,
            obj_bbox,
            projection_text: linear(ld, "projection_text", d, d, true),
            bias_obj: Param::from_tensor(ld.tensor("bias_obj_a", [d], Init::Zeros)),
            bias_pred: Param::from_tensor(ld.tensor("bias_pred_a", [d], Init::Zeros)),
        }
    }

    /// The (subject, object) box heads of decoder layer `l` of the given decoder.
    pub fn box_heads(&self, relation_decoder: bool, n_layers: usize) -> Vec<(&Mlp, &Mlp)> {
        let off = if relation_decoder { n_layers } else { 0 };
        (0..n_layers)
            .map(|l| (&self.sub_bbox[off + l], &self.obj_bbox[off + l]))
            .collect()
    }

    /// Projected text classifiers `[B, L, d]` from per-round text features `[B, L, d]`.
    pub fn text_classifiers(&self, text: Tensor<3>) -> Tensor<3> {
        self.projection_text
            .forward(crate::fused::l2_halve_rows(text))
    }

    /// Predictions of one decoder layer.
    ///
    /// `hs_pairs`: `[B, 2P, d]` the subject/object decoder's features (subjects, then objects);
    /// `hs_verb`: `[B, P, d]` the relation decoder's; `boxes`: the (subject, object) boxes the
    /// subject/object decoder's layer refined with this layer's box heads
    /// ([`crate::parse_decoder::DecoderOutput::boxes`], the official
    /// `sigmoid(bbox_embed(h) + inverse_sigmoid(anchor))`); `cls`: this round's
    /// [`Heads::text_classifiers`], the first `n_obj` entries object texts, the rest relation
    /// texts.
    pub fn predict(
        &self,
        hs_pairs: Tensor<3>,
        hs_verb: Tensor<3>,
        boxes: (Tensor<3>, Tensor<3>),
        cls: Tensor<3>,
        n_obj: usize,
    ) -> LayerPredictions {
        let [_, l, d] = cls.dims();
        let p = hs_verb.dims()[1];
        let obj_text = cls.clone().slice(s![.., 0..n_obj]).swap_dims(1, 2);
        let rel_text = cls.slice(s![.., n_obj..l]).swap_dims(1, 2);
        let bo = self.bias_obj.val().reshape([1, 1, d]);
        let bp = self.bias_pred.val().reshape([1, 1, d]);
        let bias = prior_bias();
        // subjects and objects share the object texts and their bias: one product for both
        let pair_logits = matmul(hs_pairs + bo, obj_text) + bias;
        LayerPredictions {
            sub_logits: pair_logits.clone().slice(s![.., 0..p]),
            obj_logits: pair_logits.slice(s![.., p..2 * p]),
            verb_logits: matmul(hs_verb + bp, rel_text) + bias,
            sub_boxes: boxes.0,
            obj_boxes: boxes.1,
        }
    }
}
