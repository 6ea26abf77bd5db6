//! RoBERTa (Liu et al., 2019) as RLIPv2's label encoder, matching HuggingFace `RobertaModel`
//! (transformers 4.30, used by the official RLIPv2 code
//! `models/dab_deformable/deformable_transformer.py`)
//! and the official `models/modeling_roberta.py::RobertaLayer` used inside the ALIF encoder.
//!
//! Post-LayerNorm transformer: embeddings (word + position + token type, LayerNorm), then layers of
//! self-attention and an erf-GELU feed-forward, each added to its input and layer-normed. The
//! pooler is `tanh(dense(h_<s>))`. Dropout is omitted (inference and the official eval match).

use crate::dense::{Linear, matmul};
use crate::norm::LayerNorm;
use crate::norm::softmax;
use burn::module::Param;
use burn::nn::Embedding;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::util::{dropout, dropout_biased};
use crate::weights::layers::{layer_norm, linear};
use crate::weights::{Init, Loader};

/// RoBERTa sizes, with HuggingFace `config.json` field names (unknown fields are ignored and
/// missing ones take the roberta-base value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RobertaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Rows of the position table (positions start after the padding index).
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding token id (also the padding index of the position table).
    pub pad_token_id: usize,
    /// Training dropout after the embeddings, the attention output and the FFN output
    /// (HuggingFace's name and default, 0.1).
    pub hidden_dropout_prob: f64,
    /// Training dropout on the attention probabilities (HuggingFace's name and default, 0.1).
    pub attention_probs_dropout_prob: f64,
}

impl Default for RobertaConfig {
    fn default() -> Self {
        Self::roberta_base()
    }
}

/// An inconsistent model configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A size that must be positive is zero.
    #[error("{name} must be positive")]
    Zero {
        /// Field name.
        name: &'static str,
    },
    /// A width does not split evenly over heads.
    #[error("{name} = {value} is not divisible by {by_name} = {by}")]
    NotDivisible {
        /// Field name of the width.
        name: &'static str,
        /// The width.
        value: usize,
        /// Field name of the divisor.
        by_name: &'static str,
        /// The divisor.
        by: usize,
    },
    /// A setting this implementation does not support, or an unreadable configuration.
    #[error("{0}")]
    Unsupported(String),
    /// The padding id leaves no room in the position table.
    #[error("pad_token_id = {pad} leaves no position in a table of {positions} rows")]
    NoPositions {
        /// Padding id.
        pad: usize,
        /// Rows of the position table.
        positions: usize,
    },
}

/// `Ok` when every `(name, value)` is positive.
pub(crate) fn check_positive(sizes: &[(&'static str, usize)]) -> Result<(), ConfigError> {
    match sizes.iter().find(|(_, v)| *v == 0) {
        Some(&(name, _)) => Err(ConfigError::Zero { name }),
        None => Ok(()),
    }
}

/// `Ok` when `value` splits evenly into `by` parts.
pub(crate) fn check_divisible(
    (name, value): (&'static str, usize),
    (by_name, by): (&'static str, usize),
) -> Result<(), ConfigError> {
    if by == 0 {
        return Err(ConfigError::Zero { name: by_name });
    }
    if value % by != 0 {
        return Err(ConfigError::NotDivisible {
            name,
            value,
            by_name,
            by,
        });
    }
    Ok(())
}

impl RobertaConfig {
    /// Checks the sizes a forward pass relies on (positive sizes, heads dividing the width, a
    /// position table longer than the padding index).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("type_vocab_size", self.type_vocab_size),
        ])?;
        check_divisible(
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
        )?;
        if self.max_position_embeddings <= self.pad_token_id + 1 {
            return Err(ConfigError::NoPositions {
                pad: self.pad_token_id,
                positions: self.max_position_embeddings,
            });
        }
        Ok(())
    }

    /// roberta-base: vocab 50265, width 768, 12 layers, 12 heads, FFN 3072, 514 positions.
    pub fn roberta_base() -> Self {
        Self {
            vocab_size: 50265,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 514,
            type_vocab_size: 1,
            layer_norm_eps: 1e-5,
            pad_token_id: 1,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
        }
    }

    /// A small model for tests and demos: vocab 256, width 32, 2 layers, 4 heads, FFN 64, 16
    /// positions, no dropout.
    pub fn tiny() -> Self {
        Self {
            vocab_size: 256,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            max_position_embeddings: 16,
            type_vocab_size: 1,
            layer_norm_eps: 1e-5,
            pad_token_id: 1,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
        }
    }
}

/// Additive attention bias `[B, 1, 1, L]` from a padding mask `[B, L]` (true = padding):
/// 0 on real tokens and `f32::MIN` on padding, as HuggingFace's extended attention mask.
pub fn padding_bias(padding: Tensor<2, Bool>) -> Tensor<4> {
    let [b, l] = padding.dims();
    // mask_fill, not a product: `0 · MIN` must stay 0 where MIN rounds to −∞ (bf16, f16)
    let zeros = Tensor::<2>::zeros([b, l], &padding.device());
    zeros.mask_fill(padding, f32::MIN).reshape([b, 1, 1, l])
}

/// Token, position and token-type embeddings followed by LayerNorm.
#[derive(Module, Debug)]
pub struct RobertaEmbeddings {
    /// `word_embeddings` `[vocab, d]`.
    pub word: Embedding,
    /// `position_embeddings` `[max_positions, d]`.
    pub position: Embedding,
    /// `token_type_embeddings` `[type_vocab, d]`.
    pub token_type: Embedding,
    norm: LayerNorm,
    pad_id: usize,
    max_positions: usize,
    dropout: f64,
}

impl RobertaEmbeddings {
    /// Loads `{prefix}.{word,position,token_type}_embeddings.weight` and `{prefix}.LayerNorm`; the
    /// `{prefix}.position_ids` buffer is recomputed (and checked when present).
    pub fn load(ld: &mut Loader, prefix: &str, cfg: &RobertaConfig) -> Self {
        let d = cfg.hidden_size;
        let table = |ld: &mut Loader, name: &str, n: usize| Embedding {
            weight: Param::from_tensor(ld.tensor(
                &format!("{prefix}.{name}.weight"),
                [n, d],
                Init::Normal(0.02),
            )),
        };
        let word = table(ld, "word_embeddings", cfg.vocab_size);
        let position = table(ld, "position_embeddings", cfg.max_position_embeddings);
        let token_type = table(ld, "token_type_embeddings", cfg.type_vocab_size);
        let ids: Vec<i64> = (0..cfg.max_position_embeddings as i64).collect();
        ld.buffer_i64(&format!("{prefix}.position_ids"), &ids);
        Self {
            word,
            position,
            token_type,
            norm: layer_norm(ld, &format!("{prefix}.LayerNorm"), d, cfg.layer_norm_eps),
            pad_id: cfg.pad_token_id,
            max_positions: cfg.max_position_embeddings,
            dropout: cfg.hidden_dropout_prob,
        }
    }

    /// Position ids as HuggingFace's `create_position_ids_from_input_ids`: real tokens count
    /// up from `pad_id + 1`, padding tokens get `pad_id`.
    pub fn position_ids(&self, input_ids: Tensor<2, Int>) -> Tensor<2, Int> {
        let real = input_ids.not_equal_elem(self.pad_id as i64).int();
        real.clone().cumsum(1) * real + self.pad_id as i64
    }

    /// Longest sequence (special tokens included) the position table covers.
    pub fn max_tokens(&self) -> usize {
        self.max_positions.saturating_sub(self.pad_id + 1)
    }

    /// Embeds `input_ids` `[B, L]` (token type 0 everywhere) into `[B, L, d]`.
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let pos = self.position.forward(self.position_ids(input_ids.clone()));
        let types = self.token_type.forward(input_ids.zeros_like());
        let x = self.word.forward(input_ids) + types + pos;
        dropout(self.norm.forward(x), self.dropout)
    }
}

/// One post-LayerNorm RoBERTa layer (`RobertaLayer`): self-attention, then the GELU FFN.
#[derive(Module, Debug)]
pub struct RobertaLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    n_heads: usize,
    hidden_dropout: f64,
    attn_dropout: f64,
}

impl RobertaLayer {
    /// Loads `{prefix}.attention.{self.{query,key,value},output.{dense,LayerNorm}}`,
    /// `{prefix}.intermediate.dense` and `{prefix}.output.{dense,LayerNorm}`.
    pub fn load(ld: &mut Loader, prefix: &str, cfg: &RobertaConfig) -> Self {
        let (d, f, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let a = format!("{prefix}.attention");
        Self {
            query: linear(ld, &format!("{a}.self.query"), d, d, true),
            key: linear(ld, &format!("{a}.self.key"), d, d, true),
            value: linear(ld, &format!("{a}.self.value"), d, d, true),
            attn_out: linear(ld, &format!("{a}.output.dense"), d, d, true),
            attn_norm: layer_norm(ld, &format!("{a}.output.LayerNorm"), d, eps),
            intermediate: linear(ld, &format!("{prefix}.intermediate.dense"), d, f, true),
            output: linear(ld, &format!("{prefix}.output.dense"), f, d, true),
            out_norm: layer_norm(ld, &format!("{prefix}.output.LayerNorm"), d, eps),
            n_heads: cfg.num_attention_heads,
            hidden_dropout: cfg.hidden_dropout_prob,
            attn_dropout: cfg.attention_probs_dropout_prob,
        }
    }

    /// Applies the layer to `hidden` `[B, L, d]`; `bias` is an additive attention bias
    /// broadcastable to `[B, heads, L, L]` (see [`padding_bias`]).
    pub fn forward(&self, hidden: Tensor<3>, bias: Option<Tensor<4>>) -> Tensor<3> {
        let [b, l, d] = hidden.dims();
        let (h, dh) = (self.n_heads, d / self.n_heads);
        // `q·kᵀ / sqrt(dh)` as the official code computes it; when sqrt(dh) is a power of two
        // (roberta-base: 8) scaling q first is the same in floating point and rides in the
        // head-split launch
        let root = (dh as f64).sqrt();
        let exact = root.fract() == 0.0 && (root as u64).is_power_of_two();
        let q = self
            .query
            .forward_heads(hidden.clone(), h, exact.then(|| 1.0 / root), false);
        let k_t = self.key.forward_heads(hidden.clone(), h, None, true);
        let v = self.value.forward_heads(hidden.clone(), h, None, false);
        let mut scores = matmul(q, k_t);
        if !exact {
            scores = scores.div_scalar(root);
        }
        let probs = match bias {
            Some(bias) => crate::norm::softmax_masked(scores, bias),
            None => softmax(scores, 3),
        };
        let ctx = matmul(dropout(probs, self.attn_dropout), v)
            .swap_dims(1, 2)
            .reshape([b, l, d]);
        let attn_out = dropout_biased(self.attn_out.forward_biased(ctx), self.hidden_dropout);
        let attn = self.attn_norm.forward_add_biased(hidden, attn_out);
        let ffn = self
            .output
            .forward_biased(self.intermediate.forward_gelu(attn.clone()));
        self.out_norm
            .forward_add_biased(attn, dropout_biased(ffn, self.hidden_dropout))
    }
}

/// Output of [`RobertaModel::forward`].
#[derive(Debug, Clone)]
pub struct RobertaOutput {
    /// Last layer's hidden states `[B, L, d]`.
    pub last_hidden: Tensor<3>,
    /// `tanh(dense(h_<s>))` `[B, d]` (`pooler_output`).
    pub pooled: Tensor<2>,
}

/// HuggingFace `RobertaModel` with its pooler.
#[derive(Module, Debug)]
pub struct RobertaModel {
    /// Token embeddings.
    pub embeddings: RobertaEmbeddings,
    /// Transformer layers.
    pub layers: Vec<RobertaLayer>,
    pooler: Linear,
}

impl RobertaModel {
    /// Loads `{prefix}.embeddings.*`, `{prefix}.encoder.layer.{i}.*` and `{prefix}.pooler.dense`
    /// (the official prefix is `transformer.text_encoder`).
    pub fn load(ld: &mut Loader, prefix: &str, cfg: &RobertaConfig) -> Self {
        let embeddings = RobertaEmbeddings::load(ld, &format!("{prefix}.embeddings"), cfg);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| RobertaLayer::load(ld, &format!("{prefix}.encoder.layer.{i}"), cfg))
            .collect();
        let d = cfg.hidden_size;
        Self {
            embeddings,
            layers,
            pooler: linear(ld, &format!("{prefix}.pooler.dense"), d, d, true),
        }
    }

    /// Longest sequence (special tokens included) the model accepts.
    pub fn max_tokens(&self) -> usize {
        self.embeddings.max_tokens()
    }

    /// Rows of the word-embedding table (token ids must be below this).
    pub fn vocab_size(&self) -> usize {
        self.embeddings.word.weight.dims()[0]
    }

    /// Encodes `input_ids` `[B, L]` with `attention_mask` `[B, L]` (1 = real token, 0 = padding).
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> RobertaOutput {
        let bias = padding_bias(attention_mask.equal_elem(0));
        let mut h = self.embeddings.forward(input_ids);
        for layer in &self.layers {
            h = layer.forward(h, Some(bias.clone()));
        }
        let [b, _, d] = h.dims();
        let first = h.clone().slice(s![.., 0..1]).reshape([b, d]);
        RobertaOutput {
            last_hidden: h,
            pooled: self.pooler.forward(first).tanh(),
        }
    }

    /// The pooled feature `[B, d]` of each sequence (`pooler_output`).
    pub fn pooled(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2, Int>) -> Tensor<2> {
        self.forward(input_ids, attention_mask).pooled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_huggingface_json() {
        let json = r#"{"architectures":["RobertaForMaskedLM"],"hidden_size":768,"num_hidden_layers":12,
            "num_attention_heads":12,"intermediate_size":3072,"max_position_embeddings":514,
            "type_vocab_size":1,"layer_norm_eps":1e-05,"pad_token_id":1,"vocab_size":50265}"#;
        let cfg: RobertaConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg, RobertaConfig::roberta_base());
        let partial: RobertaConfig = serde_json::from_str(r#"{"hidden_size":32}"#).unwrap();
        assert_eq!(partial.num_hidden_layers, 12);
    }

    #[test]
    fn validate_rejects_inconsistent_sizes() {
        assert_eq!(RobertaConfig::roberta_base().validate(), Ok(()));
        assert_eq!(RobertaConfig::tiny().validate(), Ok(()));
        let heads = RobertaConfig {
            num_attention_heads: 5,
            ..RobertaConfig::tiny()
        };
        assert!(matches!(
            heads.validate(),
            Err(ConfigError::NotDivisible { by: 5, .. })
        ));
        let zero = RobertaConfig {
            num_attention_heads: 0,
            ..RobertaConfig::tiny()
        };
        assert_eq!(
            zero.validate(),
            Err(ConfigError::Zero {
                name: "num_attention_heads"
            })
        );
        let short = RobertaConfig {
            max_position_embeddings: 2,
            ..RobertaConfig::tiny()
        };
        assert!(matches!(
            short.validate(),
            Err(ConfigError::NoPositions { .. })
        ));
    }
}
