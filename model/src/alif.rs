//! ALIF, RLIPv2's early language-image fusion encoder (Yuan et al., "RLIPv2: Fast Scaling of
//! Relational Language-Image Pre-training", ICCV 2023).
//!
//! Follows the official code (JacobYuan7/RLIPv2): `models/deformable_transformer.py`
//! (`RLIPv2_DeformableTransformerEncoder`), `models/fuse_helper.py` (`RLIPv2_VLFuse`,
//! `RLIPv2_BiAttentionBlockForCheckpoint`, `RLIPv2_BiMultiHeadAttention`, `FeatureResizer`) and
//! `models/dab_deformable/deformable_transformer.py` (`RLIP_ParSeDABDeformableTransformer_v2`),
//! with the flags of the ParSeDA fine-tuning scripts: `--fusion_type GLIP_attn
//! --gating_mechanism VXAc --fusion_interval 2 --fusion_last_vis --lang_aux_loss`.
//!
//! Six deformable encoder layers run on the multi-scale visual tokens. Before layers 0, 2 and 4 a
//! fusion round mixes the last (stride-64) level with the label sequence: both are layer-normed,
//! a bidirectional multi-head attention produces a delta for each side, each side becomes
//! `normed + gamma[0] · delta`, and one RoBERTa layer then runs on the labels. Each round's label
//! features go through the `FeatureResizer` (768 → 256, LayerNorm) for the decoders.
//!
//! Official behaviours kept on purpose:
//! - The padding masks passed to the bi-attention are boolean "valid" masks. The official
//!   `masked_fill(mask == 0, -9e15)` on a bool tensor yields `true`, so every logit in both
//!   directions gets `+1.0` and no token is masked: padded image tokens (and padded labels) take
//!   part. [`AlifConfig::apply_fusion_masks`] switches to the evidently intended masking.
//! - The residual is taken from the layer-normed inputs, not the raw ones.
//! - Only element 0 of `gamma_v` / `gamma_l` is used (VXAc).
//! - The query side adds the last level's positional encoding (sine + level embedding) to the
//!   normed visual tokens; keys and values carry no position.
//! - The RoBERTa layers do apply the label padding mask (HuggingFace extended mask).

use crate::dense::{Linear, matmul};
use crate::norm::LayerNorm;
use crate::norm::softmax_masked;
use burn::module::Param;
use burn::prelude::*;

use crate::encoder::{EncoderLayer, MultiScale};
use crate::msda::MsdaConfig;
use crate::text::roberta::{check_divisible, check_positive};
use crate::text::{ConfigError, RobertaConfig, RobertaLayer, padding_bias};
use crate::weights::layers::{layer_norm, linear};
use crate::weights::{Init, Loader};

/// Sizes and switches of the ALIF encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct AlifConfig {
    /// Deformable attention of the encoder layers (`d_model` is the visual width).
    pub msda: MsdaConfig,
    /// Encoder layers.
    pub n_layers: usize,
    /// Feed-forward width of the encoder layers.
    pub d_ffn: usize,
    /// A fusion round runs before every `fusion_interval`-th layer.
    pub fusion_interval: usize,
    /// Heads of the bi-attention.
    pub fusion_heads: usize,
    /// Inner width of the bi-attention.
    pub fusion_dim: usize,
    /// The RoBERTa layers of the label path (their width is the label width).
    pub text: RobertaConfig,
    /// Mask padded tokens in the bi-attention (false: the official behaviour, nothing masked).
    pub apply_fusion_masks: bool,
}

impl AlifConfig {
    /// The RLIPv2-ParSeDA setting: 6 layers of width 256 (4 levels, 8 heads, 4 points, FFN 2048),
    /// fusion every 2 layers, bi-attention inner width 2048 over 8 heads, roberta-base label
    /// layers.
    pub fn parseda() -> Self {
        Self {
            msda: MsdaConfig {
                d_model: 256,
                n_levels: 4,
                n_heads: 8,
                n_points: 4,
            },
            n_layers: 6,
            d_ffn: 2048,
            fusion_interval: 2,
            fusion_heads: 8,
            fusion_dim: 2048,
            text: RobertaConfig::roberta_base(),
            apply_fusion_masks: false,
        }
    }

    /// Number of fusion rounds (`n_layers / fusion_interval`).
    pub fn rounds(&self) -> usize {
        self.n_layers / self.fusion_interval.max(1)
    }

    /// Checks the sizes a forward pass relies on: positive widths, heads dividing the visual,
    /// bi-attention and label widths, and a positive fusion interval.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_positive(&[
            ("d_model", self.msda.d_model),
            ("n_levels", self.msda.n_levels),
            ("n_points", self.msda.n_points),
            ("d_ffn", self.d_ffn),
            ("fusion_interval", self.fusion_interval),
            ("fusion_dim", self.fusion_dim),
        ])?;
        check_divisible(
            ("d_model", self.msda.d_model),
            ("n_heads", self.msda.n_heads),
        )?;
        check_divisible(
            ("fusion_dim", self.fusion_dim),
            ("fusion_heads", self.fusion_heads),
        )?;
        self.text.validate()
    }
}

/// `FeatureResizer`: Linear, LayerNorm (eps 1e-12), then dropout in training (official 0.1,
/// `expander_dropout`).
#[derive(Module, Debug)]
pub struct FeatureResizer {
    fc: Linear,
    norm: LayerNorm,
    dropout: f64,
}

impl FeatureResizer {
    /// Loads `{prefix}.fc` and `{prefix}.layer_norm` (official prefix `transformer.resizer`).
    /// Training dropout `dropout`.
    pub fn load(ld: &mut Loader, prefix: &str, d_in: usize, d_out: usize, dropout: f64) -> Self {
        Self {
            fc: linear(ld, &format!("{prefix}.fc"), d_in, d_out, true),
            norm: layer_norm(ld, &format!("{prefix}.layer_norm"), d_out, 1e-12),
            dropout,
        }
    }

    /// Resizes the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        crate::util::dropout(self.norm.forward(self.fc.forward(x)), self.dropout)
    }
}

/// `RLIPv2_BiMultiHeadAttention`: one attention map between visual and label tokens, normalised
/// along each side, giving a visual delta (from label values) and a label delta (from visual
/// values).
#[derive(Module, Debug)]
pub struct BiMultiHeadAttention {
    v_proj: Linear,
    l_proj: Linear,
    values_v_proj: Linear,
    values_l_proj: Linear,
    out_v_proj: Linear,
    out_l_proj: Linear,
    n_heads: usize,
    dim: usize,
    dropout: f64,
}

impl BiMultiHeadAttention {
    /// Loads the six projections under `prefix` for visual width `v_dim`, label width `l_dim`
    /// and inner width `dim` split over `n_heads`; `dropout` on both attention maps in training
    /// (official 0.1).
    pub fn load(
        ld: &mut Loader,
        prefix: &str,
        v_dim: usize,
        l_dim: usize,
        dim: usize,
        n_heads: usize,
        dropout: f64,
    ) -> Self {
        Self {
            v_proj: linear(ld, &format!("{prefix}.v_proj"), v_dim, dim, true),
            l_proj: linear(ld, &format!("{prefix}.l_proj"), l_dim, dim, true),
            values_v_proj: linear(ld, &format!("{prefix}.values_v_proj"), v_dim, dim, true),
            values_l_proj: linear(ld, &format!("{prefix}.values_l_proj"), l_dim, dim, true),
            out_v_proj: linear(ld, &format!("{prefix}.out_v_proj"), dim, v_dim, true),
            out_l_proj: linear(ld, &format!("{prefix}.out_l_proj"), dim, l_dim, true),
            n_heads,
            dim,
            dropout,
        }
    }

    /// Deltas `(visual [B, N, v_dim], label [B, L, l_dim])` for visual tokens `v` with positional
    /// encoding `v_pos` and label tokens `l`.
    ///
    /// `v_bias` `[B, 1, 1, N]` and `l_bias` `[B, 1, 1, L]` are added to the logits before the
    /// softmax over visual tokens (label side) and over label tokens (visual side).
    pub fn forward(
        &self,
        v: Tensor<3>,
        v_pos: Tensor<3>,
        l: Tensor<3>,
        v_bias: Tensor<4>,
        l_bias: Tensor<4>,
    ) -> (Tensor<3>, Tensor<3>) {
        let (dv, dl) = self.forward_biased(v, v_pos, l, v_bias, l_bias);
        (dv.resolve(), dl.resolve())
    }

    /// [`BiMultiHeadAttention::forward`] with the output projections' biases possibly still due
    /// ([`crate::dense::Linear::forward_biased`]).
    pub fn forward_biased(
        &self,
        v: Tensor<3>,
        v_pos: Tensor<3>,
        l: Tensor<3>,
        v_bias: Tensor<4>,
        l_bias: Tensor<4>,
    ) -> (crate::dense::Biased<3>, crate::dense::Biased<3>) {
        let [b, n, _] = v.dims();
        let [_, len, _] = l.dims();
        let dim = self.dim;
        let (h, dh) = (self.n_heads, dim / self.n_heads);
        let scale = (dh as f64).powf(-0.5);
        let q = self
            .v_proj
            .forward_heads(v.clone() + v_pos, h, Some(scale), false);
        let k_t = self.l_proj.forward_heads(l.clone(), h, None, true);
        let value_v = self.values_v_proj.forward_heads(v, h, None, false);
        let value_l = self.values_l_proj.forward_heads(l, h, None, false);

        let logits = matmul(q, k_t); // [B, H, N, L]
        let logits_t = logits.clone().swap_dims(2, 3); // [B, H, L, N]
        let shifted = logits_t.clone() - logits_t.max_dim(3);
        let attn_l = crate::util::dropout(softmax_masked(shifted, v_bias), self.dropout);
        let attn_v = crate::util::dropout(softmax_masked(logits, l_bias), self.dropout);

        let out_v = matmul(attn_v, value_l).swap_dims(1, 2).reshape([b, n, dim]);
        let out_l = matmul(attn_l, value_v)
            .swap_dims(1, 2)
            .reshape([b, len, dim]);
        (
            self.out_v_proj.forward_biased(out_v),
            self.out_l_proj.forward_biased(out_l),
        )
    }
}

/// One `RLIPv2_VLFuse` round (`b_attn`, gating VXAc).
#[derive(Module, Debug)]
pub struct VlFuse {
    norm_v: LayerNorm,
    norm_l: LayerNorm,
    attn: BiMultiHeadAttention,
    gamma_v: Param<Tensor<1>>,
    gamma_l: Param<Tensor<1>>,
    apply_masks: bool,
}

impl VlFuse {
    /// Loads `{prefix}.b_attn.{layer_norm_v,layer_norm_l,attn.*,gamma_v,gamma_l}`.
    pub fn load(ld: &mut Loader, prefix: &str, cfg: &AlifConfig) -> Self {
        let (dv, dl) = (cfg.msda.d_model, cfg.text.hidden_size);
        let p = format!("{prefix}.b_attn");
        let gamma = |ld: &mut Loader, name: &str, d: usize| {
            Param::from_tensor(ld.tensor(
                &format!("{p}.{name}"),
                [d],
                Init::Constant(1.0 / cfg.msda.n_levels as f64),
            ))
        };
        Self {
            norm_v: layer_norm(ld, &format!("{p}.layer_norm_v"), dv, 1e-5),
            norm_l: layer_norm(ld, &format!("{p}.layer_norm_l"), dl, 1e-5),
            attn: BiMultiHeadAttention::load(
                ld,
                &format!("{p}.attn"),
                dv,
                dl,
                cfg.fusion_dim,
                cfg.fusion_heads,
                cfg.text.attention_probs_dropout_prob,
            ),
            gamma_v: gamma(ld, "gamma_v", dv),
            gamma_l: gamma(ld, "gamma_l", dl),
            apply_masks: cfg.apply_fusion_masks,
        }
    }

    /// Fuses visual tokens `v` `[B, N, dv]` (positional encoding `v_pos`, padding `v_pad`
    /// `[B, N]`, true = padding) with label tokens `l` `[B, L, dl]` (padding `l_pad`).
    /// Returns the fused `(visual, label)` tokens.
    pub fn forward(
        &self,
        v: Tensor<3>,
        v_pos: Tensor<3>,
        v_pad: Tensor<2, Bool>,
        l: Tensor<3>,
        l_pad: Tensor<2, Bool>,
    ) -> (Tensor<3>, Tensor<3>) {
        let v = self.norm_v.forward(v);
        let l = self.norm_l.forward(l);
        let (dv, dl) = self.attn.forward_biased(
            v.clone(),
            v_pos,
            l.clone(),
            self.fusion_bias(v_pad),
            self.fusion_bias(l_pad),
        );
        (
            dv.gate(v, self.gamma_v.val()),
            dl.gate(l, self.gamma_l.val()),
        )
    }

    /// The logit bias `[B, 1, 1, T]` of a padding mask: `+1` everywhere (official), or `+1` on
    /// real tokens and `-9e15` on padding when masks are applied.
    fn fusion_bias(&self, pad: Tensor<2, Bool>) -> Tensor<4> {
        let [b, t] = pad.dims();
        let ones = Tensor::<2>::ones([b, t], &pad.device());
        let bias = if self.apply_masks {
            ones.mask_fill(pad, -9e15)
        } else {
            ones
        };
        bias.reshape([b, 1, 1, t])
    }
}

/// Output of [`AlifEncoder::forward`].
#[derive(Debug, Clone)]
pub struct AlifOutput {
    /// Encoder memory `[B, S, d]`.
    pub memory: Tensor<3>,
    /// Label features after each round's RoBERTa layer, `[rounds, B, L, d_text]`
    /// (official `text_memory_bf_resize`). With no fusion round: the input, `[1, B, L, d_text]`.
    pub text: Tensor<4>,
    /// The same through the FeatureResizer, `[rounds, L, B, d]` (official `text_memory_resized`;
    /// round `k` feeds decoder layer `k`).
    pub text_resized: Tensor<4>,
}

/// Intermediate tensors of one ALIF pass, for checks against the official model.
#[derive(Debug, Clone, Default)]
pub struct AlifTrace {
    /// Visual output of each round's VLFuse (last level) `[B, N_last, d]`.
    pub vis_fused: Vec<Tensor<3>>,
    /// Label output of each round's VLFuse, before the RoBERTa layer `[B, L, d_text]`.
    pub lang_fused: Vec<Tensor<3>>,
    /// Output of each round's RoBERTa layer `[B, L, d_text]`.
    pub lang_out: Vec<Tensor<3>>,
    /// Output of each deformable encoder layer `[B, S, d]`.
    pub layer_out: Vec<Tensor<3>>,
}

/// The ALIF encoder (`RLIPv2_DeformableTransformerEncoder` with `fusion_last_vis`) plus the
/// label FeatureResizer.
#[derive(Module, Debug)]
pub struct AlifEncoder {
    /// Deformable encoder layers.
    pub layers: Vec<EncoderLayer>,
    /// Fusion rounds.
    pub fusions: Vec<VlFuse>,
    /// One RoBERTa layer per round.
    pub roberta_layers: Vec<RobertaLayer>,
    /// `transformer.resizer`.
    pub resizer: FeatureResizer,
    fusion_interval: usize,
}

impl AlifEncoder {
    /// Loads `transformer.encoder.{layers,VLFuse_layers,roberta_layers}.*` and
    /// `transformer.resizer.*`. Check `cfg` with [`AlifConfig::validate`] first: sizes that do
    /// not split over the heads make the forward pass fail.
    pub fn load(ld: &mut Loader, cfg: &AlifConfig) -> Self {
        let e = "transformer.encoder";
        let layers = (0..cfg.n_layers)
            .map(|i| EncoderLayer::load(ld, &format!("{e}.layers.{i}"), cfg.msda, cfg.d_ffn))
            .collect();
        let fusions = (0..cfg.rounds())
            .map(|k| VlFuse::load(ld, &format!("{e}.VLFuse_layers.{k}"), cfg))
            .collect();
        let roberta_layers = (0..cfg.rounds())
            .map(|k| RobertaLayer::load(ld, &format!("{e}.roberta_layers.{k}"), &cfg.text))
            .collect();
        let resizer = FeatureResizer::load(
            ld,
            "transformer.resizer",
            cfg.text.hidden_size,
            cfg.msda.d_model,
            cfg.text.hidden_dropout_prob,
        );
        Self {
            layers,
            fusions,
            roberta_layers,
            resizer,
            fusion_interval: cfg.fusion_interval.max(1),
        }
    }

    /// Encodes the multi-scale input `ms` together with the label sequence `lang` `[B, L, d_text]`
    /// (the pooled label features repeated over the batch) whose padding is `text_mask` `[B, L]`
    /// (true = padding; all false at inference).
    ///
    /// A configuration without fusion rounds (`n_layers < fusion_interval`) passes the label
    /// features through unfused, as one round.
    pub fn forward(
        &self,
        ms: &MultiScale,
        lang: Tensor<3>,
        text_mask: Tensor<2, Bool>,
    ) -> AlifOutput {
        self.run(ms, lang, text_mask, None)
    }

    /// [`forward`](Self::forward), also returning the intermediate tensors.
    pub fn forward_traced(
        &self,
        ms: &MultiScale,
        lang: Tensor<3>,
        text_mask: Tensor<2, Bool>,
    ) -> (AlifOutput, AlifTrace) {
        let mut trace = AlifTrace::default();
        let out = self.run(ms, lang, text_mask, Some(&mut trace));
        (out, trace)
    }

    fn run(
        &self,
        ms: &MultiScale,
        lang: Tensor<3>,
        text_mask: Tensor<2, Bool>,
        mut trace: Option<&mut AlifTrace>,
    ) -> AlifOutput {
        let device = ms.src.device();
        let [_, s_total, _] = ms.src.dims();
        let last = ms.level_start.last().copied().unwrap_or(0);
        let pos_last = ms.pos.clone().slice(s![.., last..s_total]);
        let pad_last = ms.padding.mask.clone().slice(s![.., last..s_total]);
        let reference = ms.reference_points(&device);
        let text_bias = padding_bias(text_mask.clone());

        let mut src = ms.src.clone();
        let mut lang = lang;
        let mut rounds = Vec::with_capacity(self.fusions.len());
        // whether a fusion round runs before layer `i` (it changes `src`, so the layer's query
        // `src + pos` cannot come from the previous layer's last norm)
        let fuses = |i: usize| {
            i.is_multiple_of(self.fusion_interval) && i / self.fusion_interval < self.fusions.len()
        };
        let mut query = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let k = i / self.fusion_interval;
            if fuses(i) {
                let part = src.clone().slice(s![.., last..s_total]);
                let (v, l) = self.fusions[k].forward(
                    part,
                    pos_last.clone(),
                    pad_last.clone(),
                    lang,
                    text_mask.clone(),
                );
                src = src.slice_assign(s![.., last..s_total], v.clone());
                lang = self.roberta_layers[k].forward(l.clone(), Some(text_bias.clone()));
                rounds.push(lang.clone());
                if let Some(t) = trace.as_deref_mut() {
                    t.vis_fused.push(v);
                    t.lang_fused.push(l);
                    t.lang_out.push(lang.clone());
                }
            }
            let next_query = i + 1 < self.layers.len() && !fuses(i + 1);
            (src, query) = layer.forward_with_query(
                src,
                query.take(),
                ms.pos.clone(),
                reference.clone(),
                &ms.shapes,
                &ms.padding,
                next_query,
            );
            if let Some(t) = trace.as_deref_mut() {
                t.layer_out.push(src.clone());
            }
        }
        if rounds.is_empty() {
            rounds.push(lang);
        }
        let text = Tensor::stack::<4>(rounds, 0);
        let text_resized = self.resizer.forward(text.clone().swap_dims(1, 2));
        AlifOutput {
            memory: src,
            text,
            text_resized,
        }
    }
}
