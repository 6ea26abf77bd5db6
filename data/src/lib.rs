#![warn(missing_docs)]
//! rlip-data: readers for the dataset and evaluation file formats RLIPv2 uses.
//!
//! - [`draw`]: boxes and bitmap-font labels on images, PNG encoding.
//! - [`npy`]: a small, safe `.npy` reader (no pickled objects).
//! - [`pickle`]: a minimal reader for plain-data pickles (lists, dicts, numbers, strings), enough
//!   for the V-COCO detection file `generate_vcoco_official.py` writes.
//! - [`hico`], [`vcoco`], [`oi`]: ground-truth readers for the official JSON annotation formats.
//! - [`vcoco_convert`]: conversion of the original V-COCO release (and VSGNet's `prior.pickle`)
//!   into the HOIA files `trainval_vcoco.json`, `test_vcoco.json` and `corre_vcoco.npy`.
//! - [`labels`]: built-in HICO-DET / V-COCO label texts and label files.
//! - [`rng`]: the deterministic SplitMix64 generator shared by data, augmentation and tests.
//! - [`preprocess`]: the official evaluation resize (Pillow-exact), normalisation and padded batching.
//! - [`vg`], [`pseudo`], [`pretrain`]: relational pre-training data: Visual Genome scene graphs
//!   (official loader and preprocessing), pseudo-labelled COCO / Objects365 relation files, and the
//!   dataset-independent sample, vocabulary and per-batch label-text sampling.
//! - [`transforms`]: the official HOI training augmentation (flip, colour jitter, multi-scale resize,
//!   random-size crop) on images with boxes and relation pairs.
//! - [`loader`]: a deterministic multi-threaded batch loader (shuffle and per-item generators from
//!   the seed, bounded read-ahead, resumable at any batch).

pub mod draw;
pub mod error;
pub(crate) mod fsutil;
pub mod hico;
pub mod labels;
pub mod loader;
pub mod npy;
pub mod oi;
pub mod pickle;
pub mod preprocess;
pub mod pretrain;
pub mod pseudo;
pub mod rng;
pub mod synth;
pub mod transforms;
pub mod vcoco;
pub mod vcoco_convert;
pub mod vg;

pub use error::DataError;

use std::path::Path;

/// Reads a whole file, naming it in the error.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and deserialises a JSON file, naming it in the error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, DataError> {
    let bytes = read_bytes(path)?;
    serde_json::from_slice(&bytes).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })
}
