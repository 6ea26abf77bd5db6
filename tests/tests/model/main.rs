//! The model-level integration tests in one binary (one link of every backend instead of one
//! per file): golden checks against the official fixtures, cross-backend parity, inference,
//! reduced precision and the training step. Tests that seed the device's random generator
//! live in their own binary (`drop_path`).

mod golden_model;
mod golden_r50;
mod golden_swin;
mod golden_text_alif;
mod infer;
mod msda;
mod precision;
mod train_step;
