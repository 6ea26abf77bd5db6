//! rlip-data's integration tests in one binary: file formats, fuzzing, the loader, transforms
//! and the synthetic dataset.

mod fuzz;
mod images;
mod loader;
mod pretrain;
mod pseudo;
mod synth;
mod transforms;
mod vcoco_convert;
mod vg;
