//! ParSe decoding with DAB-Deformable-DETR anchors (RLIPv2-ParSeDA).
//!
//! References: Yuan et al., "RLIPv2: Fast Scaling of Relational Language-Image Pre-training"
//! (ICCV 2023); Liu et al., "DAB-DETR: Dynamic Anchor Boxes are Better Queries for DETR"
//! (ICLR 2022). Official code: `models/dab_deformable/deformable_transformer.py`
//! (`DABDeformableTransformerDecoderHOI`, `DeformableTransformerDecoderLayer`,
//! `MultiBranchFusion`, `gen_sineembed_for_position`).
//!
//! The subject/object ("ho") decoder runs over all queries — the first half are subjects, the
//! second half objects — each with its own 4-d anchor. The relation ("verb") decoder runs over
//! one query per pair; its content is `MultiBranchFusion(subject, object)` plus learned
//! embeddings, and its reference box is the mean of the pair's anchors. Both refine their anchors
//! after every layer with the shared box heads.

use crate::dense::{Linear, linear_relu, matmul};
use crate::fused::relu;
use crate::norm::LayerNorm;
use crate::norm::{refine_boxes_biased, softmax};
use burn::module::Param;
use burn::prelude::*;

use crate::msda::{MsDeformAttn, MsdaConfig};
use crate::weights::layers::{layer_norm, linear, linear_from, linear_tensors};
use crate::weights::{Init, Loader};

/// A stack of Linear layers with ReLU between them (the official `MLP`).
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// Loads `{prefix}.layers.{i}` for `n` layers `d_in → hidden … → d_out`.
    pub fn load(
        ld: &mut Loader,
        prefix: &str,
        d_in: usize,
        hidden: usize,
        d_out: usize,
        n: usize,
    ) -> Self {
        let layers = (0..n)
            .map(|i| {
                let a = if i == 0 { d_in } else { hidden };
                let b = if i + 1 == n { d_out } else { hidden };
                linear(ld, &format!("{prefix}.layers.{i}"), a, b, true)
            })
            .collect();
        Self { layers }
    }

    /// Applies the layers, ReLU after all but the last.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_biased(x).resolve()
    }

    /// [`Mlp::forward`] with the last layer's bias possibly still due
    /// ([`Linear::forward_biased`]).
    pub fn forward_biased<const D: usize>(&self, mut x: Tensor<D>) -> crate::dense::Biased<D> {
        let (last, hidden) = self.layers.split_last().expect("at least one layer");
        for l in hidden {
            x = l.forward_relu(x);
        }
        last.forward_biased(x)
    }
}

/// `nn.MultiheadAttention` (batch-first here) with the packed input projection split in q, k, v.
#[derive(Module, Debug)]
pub struct MultiheadAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl MultiheadAttention {
    /// Loads `{prefix}.in_proj_{weight,bias}` (`[3d, d]`, rows q, k, v) and `{prefix}.out_proj`.
    pub fn load(ld: &mut Loader, prefix: &str, d: usize, heads: usize) -> Self {
        let w: Tensor<2> = ld.tensor(
            &format!("{prefix}.in_proj_weight"),
            [3 * d, d],
            Init::XavierUniform,
        );
        let b: Tensor<1> = ld.tensor(&format!("{prefix}.in_proj_bias"), [3 * d], Init::Zeros);
        let part = |i: usize| {
            linear_from(
                w.clone().slice(s![i * d..(i + 1) * d]),
                Some(b.clone().slice(s![i * d..(i + 1) * d])),
            )
        };
        Self {
            q: part(0),
            k: part(1),
            v: part(2),
            out: linear(ld, &format!("{prefix}.out_proj"), d, d, true),
            heads,
        }
    }

    /// Attention of `query` over `key`/`value`, all `[B, N, d]`.
    pub fn forward(&self, query: Tensor<3>, key: Tensor<3>, value: Tensor<3>) -> Tensor<3> {
        self.forward_biased(query, key, value).resolve()
    }

    /// [`MultiheadAttention::forward`] with the output projection's bias possibly still due
    /// ([`Linear::forward_biased`]).
    pub fn forward_biased(
        &self,
        query: Tensor<3>,
        key: Tensor<3>,
        value: Tensor<3>,
    ) -> crate::dense::Biased<3> {
        let [b, nq, d] = query.dims();
        let (h, hd) = (self.heads, d / self.heads);
        // PyTorch's `q · sqrt(1 / E)` before the product
        let q = self
            .q
            .forward_heads(query, h, Some((1.0 / hd as f64).sqrt()), false);
        let k_t = self.k.forward_heads(key, h, None, true);
        let v = self.v.forward_heads(value, h, None, false);
        let attn = softmax(matmul(q, k_t), 3);
        self.out
            .forward_biased(matmul(attn, v).swap_dims(1, 2).reshape([b, nq, d]))
    }
}

/// Sizes of the decoders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoderConfig {
    /// Model width.
    pub d_model: usize,
    /// FFN width.
    pub d_ffn: usize,
    /// Layers per decoder.
    pub layers: usize,
    /// Deformable attention sizes.
    pub msda: MsdaConfig,
}

/// One decoder layer: self-attention, deformable cross-attention, FFN (all post-norm).
#[derive(Module, Debug)]
pub struct DecoderLayer {
    self_attn: MultiheadAttention,
    norm2: LayerNorm,
    cross_attn: MsDeformAttn,
    norm1: LayerNorm,
    linear1: Linear,
    linear2: Linear,
    norm3: LayerNorm,
}

impl DecoderLayer {
    /// Loads `{prefix}.{self_attn,norm2,cross_attn,norm1,linear1,linear2,norm3}`.
    pub fn load(ld: &mut Loader, prefix: &str, c: &DecoderConfig) -> Self {
        let d = c.d_model;
        Self {
            self_attn: MultiheadAttention::load(
                ld,
                &format!("{prefix}.self_attn"),
                d,
                c.msda.n_heads,
            ),
            norm2: layer_norm(ld, &format!("{prefix}.norm2"), d, 1e-5),
            cross_attn: MsDeformAttn::load(ld, &format!("{prefix}.cross_attn"), c.msda),
            norm1: layer_norm(ld, &format!("{prefix}.norm1"), d, 1e-5),
            linear1: linear(ld, &format!("{prefix}.linear1"), d, c.d_ffn, true),
            linear2: linear(ld, &format!("{prefix}.linear2"), c.d_ffn, d, true),
            norm3: layer_norm(ld, &format!("{prefix}.norm3"), d, 1e-5),
        }
    }

    /// One layer over queries `tgt` `[B, Q, d]` with positional queries `pos`.
    pub fn forward(
        &self,
        tgt: Tensor<3>,
        pos: Tensor<3>,
        reference: Tensor<4>,
        mem: &Memory<'_>,
    ) -> Tensor<3> {
        let qk = tgt.clone() + pos.clone();
        let sa = self.self_attn.forward_biased(qk.clone(), qk, tgt.clone());
        let (tgt, query) = self.norm2.forward_add_biased_plus(tgt, sa, pos);
        let ca = self.cross_attn.forward_biased(
            query,
            reference,
            mem.src.clone(),
            mem.shapes,
            Some(&mem.padding),
        );
        let tgt = self.norm1.forward_add_biased(tgt, ca);
        let ffn = self
            .linear2
            .forward_biased(self.linear1.forward_relu(tgt.clone()));
        self.norm3.forward_add_biased(tgt, ffn)
    }
}

/// The encoder output the decoders attend to.
#[derive(Debug, Clone)]
pub struct Memory<'a> {
    /// `[B, S, d]` encoder memory.
    pub src: Tensor<3>,
    /// Level sizes.
    pub shapes: &'a [[usize; 2]],
    /// `[B, S]` padding (true / 1 on padded tokens).
    pub padding: crate::msda::TokenPadding,
    /// `[B, L, 2]` valid ratios `(w, h)`.
    pub valid_ratios: Tensor<3>,
}

/// Sine embedding of normalised boxes `[B, Q, 4]` → `[B, Q, 4n]` in (y, x, w, h) order, each
/// coordinate as DETR's `n` interleaved sin/cos features (`gen_sineembed_for_position`, where
/// `n` = 128 = d_model / 2 for the official width 256; smaller models use d_model / 2 too).
pub fn sine_embed_boxes(pos: Tensor<3>, n: usize) -> Tensor<3> {
    let [b, q, _] = pos.dims();
    let device = pos.device();
    let dim_t: Vec<f32> = (0..n)
        .map(|i| 10000f32.powf((2 * (i / 2)) as f32 / n as f32))
        .collect();
    let dim_t = Tensor::<1>::from_data(TensorData::new(dim_t, [n]), &device);
    let scale = 2.0 * std::f32::consts::PI;
    if let Some(k) = crate::fused::kernel()
        && let Some(out) = k.sine_embed_boxes(&pos, &dim_t, scale)
    {
        return out;
    }
    let dim_t = dim_t.reshape([1, 1, n]);
    let even: Vec<f32> = (0..n).map(|i| if i % 2 == 0 { 1.0 } else { 0.0 }).collect();
    let even = Tensor::<1>::from_data(TensorData::new(even, [n]), &device).reshape([1, 1, n]);
    let odd = even.clone().neg() + 1.0;
    let coord = |c: usize| {
        let x = (pos.clone().slice(s![.., .., c..c + 1]) * scale) / dim_t.clone();
        x.clone().sin() * even.clone() + x.cos() * odd.clone()
    };
    let out = Tensor::cat(vec![coord(1), coord(0), coord(2), coord(3)], 2);
    debug_assert_eq!(out.dims(), [b, q, 4 * n]);
    out
}

/// `log(x / (1 − x))` with both clamped at 1e-5, as the official `inverse_sigmoid`.
pub fn inverse_sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let x = x.clamp(0.0, 1.0);
    let x1 = x.clone().clamp_min(1e-5);
    let x2 = (x.neg() + 1.0).clamp_min(1e-5);
    (x1 / x2).log()
}

/// Which queries a decoder runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    /// Subject and object queries with their own anchors (the "ho" decoder).
    SubjectObject,
    /// One relation query per pair, referenced at the mean of the pair's anchors.
    Relation,
}

/// A DAB deformable decoder of either kind, with iterative refinement of (subject, object)
/// anchors by the shared box heads.
#[derive(Module, Debug)]
pub struct ParseDecoder {
    layers: Vec<DecoderLayer>,
    query_scale: Mlp,
    ref_point_head: Mlp,
    #[module(skip)]
    kind: DecoderKind,
}

/// Per-layer decoder outputs.
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    /// Query features after each layer, `[B, Q, d]`.
    pub hs: Vec<Tensor<3>>,
    /// Refined (subject, object) anchors after each layer, each `[B, P, 4]` (sigmoid space),
    /// detached: the next layer's anchors.
    pub refs: Vec<(Tensor<3>, Tensor<3>)>,
    /// The same boxes before the detach: each layer's box predictions, with their gradient
    /// through the layer's features and box heads.
    pub boxes: Vec<(Tensor<3>, Tensor<3>)>,
    /// Positional queries fed to each layer, `[B, Q, d]`.
    pub query_pos: Vec<Tensor<3>>,
    /// Reference boxes fed to each layer (anchors × valid ratios), `[B, Q, L, 4]`.
    pub ref_input: Vec<Tensor<4>>,
}

impl ParseDecoder {
    /// Loads `{prefix}.layers.{i}`, `{prefix}.query_scale`, `{prefix}.ref_point_head`.
    pub fn load(ld: &mut Loader, prefix: &str, c: &DecoderConfig, kind: DecoderKind) -> Self {
        let d = c.d_model;
        Self {
            layers: (0..c.layers)
                .map(|i| DecoderLayer::load(ld, &format!("{prefix}.layers.{i}"), c))
                .collect(),
            query_scale: Mlp::load(ld, &format!("{prefix}.query_scale"), d, d, d, 2),
            ref_point_head: Mlp::load(ld, &format!("{prefix}.ref_point_head"), 2 * d, d, d, 2),
            kind,
        }
    }

    /// Decodes `tgt` `[B, Q, d]` from anchors `(sub, obj)` `[B, P, 4]`; `box_heads[l]` are the
    /// (subject, object) box MLPs that refine the anchors after layer `l`.
    pub fn forward(
        &self,
        tgt: Tensor<3>,
        anchors: (Tensor<3>, Tensor<3>),
        mem: &Memory<'_>,
        box_heads: &[(&Mlp, &Mlp)],
    ) -> DecoderOutput {
        let (mut sub, mut obj) = anchors;
        let [b, l, _] = mem.valid_ratios.dims();
        let ratios = Tensor::cat(vec![mem.valid_ratios.clone(), mem.valid_ratios.clone()], 2)
            .reshape([b, 1, l, 4]);
        let mut output = tgt;
        let mut out = DecoderOutput {
            hs: Vec::new(),
            refs: Vec::new(),
            boxes: Vec::new(),
            query_pos: Vec::new(),
            ref_input: Vec::new(),
        };
        for (lid, layer) in self.layers.iter().enumerate() {
            let boxes = match self.kind {
                DecoderKind::SubjectObject => Tensor::cat(vec![sub.clone(), obj.clone()], 1),
                DecoderKind::Relation => (sub.clone() + obj.clone()) * 0.5,
            };
            let q = boxes.dims()[1];
            let ref_input = boxes.reshape([b, q, 1, 4]) * ratios.clone();
            let first_level = ref_input.clone().slice(s![.., .., 0..1]).reshape([b, q, 4]);
            let d = output.dims()[2];
            let raw_pos = self
                .ref_point_head
                .forward_biased(sine_embed_boxes(first_level, d / 2));
            let pos = if lid == 0 {
                raw_pos.resolve()
            } else {
                self.query_scale
                    .forward_biased(output.clone())
                    .product(raw_pos)
            };
            output = layer.forward(output, pos.clone(), ref_input.clone(), mem);
            let p = sub.dims()[1];
            let (hs_sub, hs_obj) = match self.kind {
                DecoderKind::SubjectObject => (
                    output.clone().slice(s![.., 0..p]),
                    output.clone().slice(s![.., p..2 * p]),
                ),
                DecoderKind::Relation => (output.clone(), output.clone()),
            };
            let (sub_head, obj_head) = box_heads[lid];
            let new_sub = refine_boxes_biased(sub_head.forward_biased(hs_sub), sub);
            let new_obj = refine_boxes_biased(obj_head.forward_biased(hs_obj), obj);
            sub = new_sub.clone().detach();
            obj = new_obj.clone().detach();
            out.boxes.push((new_sub, new_obj));
            out.hs.push(output.clone());
            out.refs.push((sub.clone(), obj.clone()));
            out.query_pos.push(pos);
            out.ref_input.push(ref_input);
        }
        out
    }
}

/// Multi-branch fusion of subject and object features (the official `MultiBranchFusion`, from
/// Zhang et al.'s spatially conditioned graphs): `relu(Σ_c fc3_c(relu(fc1_c(a) · fc2_c(b))))`.
///
/// The `K` branches are stored side by side, so the whole fusion is three products instead of
/// `3K`: `fc_1` and `fc_2` hold the branches' first projections as the columns of one
/// `[d, K·sub]` layer, and `fc_3` their last projections as the rows of one `[K·sub, repr]`
/// weight (`Σ_c h_c W_c = [h_1 … h_K] [W_1; …; W_K]`) with the `K` biases kept apart
/// (`[K, repr]`) and summed, so training updates each branch's parameters as the official code
/// does.
#[derive(Module, Debug)]
pub struct MultiBranchFusion {
    fc_1: Linear,
    fc_2: Linear,
    fc_3: BranchSum,
}

/// The stacked last projections of [`MultiBranchFusion`]'s branches.
#[derive(Module, Debug)]
pub struct BranchSum {
    /// `[K·sub, repr]`: branch `c`'s `[sub, repr]` weight is rows `c·sub .. (c+1)·sub`.
    pub weight: Param<Tensor<2>>,
    /// `[K, repr]`: one bias per branch.
    pub bias: Param<Tensor<2>>,
}

impl MultiBranchFusion {
    /// Loads `{prefix}.fc_{1,2,3}.{c}` for `cardinality` branches of width `repr / cardinality`.
    pub fn load(ld: &mut Loader, prefix: &str, d: usize, repr: usize, cardinality: usize) -> Self {
        let sub = repr / cardinality;
        // per branch: the `[in, out]` weight (Burn's layout) and the bias
        let mut branches = |n: usize, a: usize, b: usize| -> (Vec<Tensor<2>>, Vec<Tensor<1>>) {
            (0..cardinality)
                .map(|c| {
                    let (w, bias) = linear_tensors(ld, &format!("{prefix}.fc_{n}.{c}"), a, b, true);
                    (w.transpose(), bias.expect("loaded with a bias"))
                })
                .unzip()
        };
        let side_by_side = |(w, b): (Vec<Tensor<2>>, Vec<Tensor<1>>)| Linear {
            weight: Param::from_tensor(Tensor::cat(w, 1)),
            bias: Some(Param::from_tensor(Tensor::cat(b, 0))),
        };
        let fc_1 = side_by_side(branches(1, d, sub));
        let fc_2 = side_by_side(branches(2, d, sub));
        let (w3, b3) = branches(3, sub, repr);
        let fc_3 = BranchSum {
            weight: Param::from_tensor(Tensor::cat(w3, 0)),
            bias: Param::from_tensor(Tensor::stack(b3, 0)),
        };
        Self { fc_1, fc_2, fc_3 }
    }

    /// Fuses `appearance` and `spatial`, both `[B, P, d]`.
    pub fn forward(&self, appearance: Tensor<3>, spatial: Tensor<3>) -> Tensor<3> {
        let h = relu(self.fc_1.forward(appearance) * self.fc_2.forward(spatial));
        let repr = self.fc_3.weight.dims()[1];
        let bias = self.fc_3.bias.val().sum_dim(0).reshape([repr]);
        linear_relu(h, self.fc_3.weight.val(), bias)
    }
}

/// The learned queries of RLIPv2-ParSeDA: content for the subject/object and relation decoders
/// and the 4-d anchors (`tgt_embed`, `verb_tgt_embed`, `refpoint_embed`).
#[derive(Module, Debug)]
pub struct Queries {
    /// `[Q, d]` subject/object content.
    pub tgt: Param<Tensor<2>>,
    /// `[Q, d]` relation content (rows of a pair are summed).
    pub verb_tgt: Param<Tensor<2>>,
    /// `[Q, 4]` anchor logits.
    pub anchors: Param<Tensor<2>>,
}

impl Queries {
    /// Loads `tgt_embed.weight`, `verb_tgt_embed.weight`, `refpoint_embed.weight` for `q` queries.
    pub fn load(ld: &mut Loader, q: usize, d: usize) -> Self {
        Self {
            tgt: Param::from_tensor(ld.tensor("tgt_embed.weight", [q, d], Init::Normal(1.0))),
            verb_tgt: Param::from_tensor(ld.tensor(
                "verb_tgt_embed.weight",
                [q, d],
                Init::Normal(1.0),
            )),
            anchors: Param::from_tensor(ld.tensor(
                "refpoint_embed.weight",
                [q, 4],
                Init::Normal(1.0),
            )),
        }
    }
}
