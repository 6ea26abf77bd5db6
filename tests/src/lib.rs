//! Test support for RLIP-rs: the golden-fixture weight generator, fixture access with the
//! README's tolerance rule, and the cross-backend parity harness.
//!
//! Golden fixtures are read from `../shared/golden` next to the repository (override with the
//! `RLIP_GOLDEN` environment variable); they are never copied into the repository.

pub mod fixture;
pub mod generator;
pub mod golden;
pub mod parity;

pub use fixture::{Check, Fixture};
pub use generator::{generate, splitmix_values};
pub use parity::{Outputs, Tol, devices, run_parity};
