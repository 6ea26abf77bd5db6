//! Backend-generic RLIPv2 modules and official weight loading.
//!
//! Nothing here names a concrete Burn backend: every module runs on the [`burn::prelude::Device`]
//! its tensors live on. `rlip-backends` turns cargo features and `--backend` into a device.

pub mod alif;
pub mod backbone;
pub mod checkpoint;
pub mod dense;
pub mod encoder;
pub mod fused;
pub mod msda;
pub mod norm;
pub mod parse_decoder;
pub mod position;
pub mod prediction_heads;

pub mod rlip;
pub mod text;
pub mod util;
pub mod weights;
