//! rlip-train's integration tests in one binary: criterion, evaluators, training loop, plots.
//! The dropout test, which seeds the device's random generator, has its own binary.

mod common;
mod criterion;
mod eval_properties;
mod eval_split;
mod fit;
mod golden_eval;
mod plot;
mod trainer;
