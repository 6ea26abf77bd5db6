//! The label-text side of RLIPv2 (Yuan et al., "RLIPv2: Fast Scaling of Relational
//! Language-Image Pre-training", ICCV 2023; official code JacobYuan7/RLIPv2).
//!
//! Every label (object name or verb phrase) is tokenised with RoBERTa's byte-level BPE
//! ([`LabelTokenizer`]) and encoded by a roberta-base model ([`RobertaModel`]); its pooled `<s>`
//! vector is the label's feature. The features depend only on the label list, so [`TextCache`]
//! keeps them per list. [`RobertaLayer`] is also used by the ALIF encoder
//! ([`crate::alif`]) on the fused label sequence.

pub mod cache;
pub mod roberta;
pub mod tokenizer;

pub use cache::{TextCache, encode_labels};
pub use roberta::{
    ConfigError, RobertaConfig, RobertaEmbeddings, RobertaLayer, RobertaModel, RobertaOutput,
    padding_bias,
};
pub use tokenizer::{LabelTokenizer, TokenBatch, TokenizerError};
