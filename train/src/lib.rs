#![warn(missing_docs)]
//! rlip-train: training, evaluation and inference for RLIP-rs.
//!
//! [`eval`] holds the evaluators that reproduce the official RLIPv2 numbers (HICO-DET, V-COCO,
//! Open Images) and the post-processing that turns raw head outputs into their input.
//! [`infer`] runs a checkpoint on images: official preprocessing, batching, post-processing and
//! ranked triplets.
//! [`plot`] draws training curves (loss, loss terms, evaluation metrics from `metrics.jsonl`)
//! as PNG charts.

pub mod eval;
#[cfg(feature = "model")]
pub mod fit;
#[cfg(feature = "model")]
pub mod infer;
#[cfg(feature = "model")]
pub mod loss;
#[cfg(feature = "model")]
pub mod matcher;
#[cfg(feature = "model")]
pub mod optim;
pub mod plot;
#[cfg(feature = "model")]
pub mod samples;
#[cfg(feature = "model")]
pub mod trainer;
