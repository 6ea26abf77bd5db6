#![warn(missing_docs)]
//! rlip-train: training and evaluation for RLIP-rs.
//!
//! [`eval`] holds the evaluators that reproduce the official RLIPv2 numbers (HICO-DET, V-COCO,
//! Open Images) and the post-processing that turns raw head outputs into their input.

pub mod eval;
