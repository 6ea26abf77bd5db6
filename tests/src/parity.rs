//! Cross-backend parity: run one computation on every compiled-in backend and compare each
//! result with the `flex` (CPU reference) result.
//!
//! ```ignore
//! parity_test!(conv_block, Tol::new(1e-5, 1e-4), |device, out| {
//!     let x = Tensor::<4>::ones([1, 3, 8, 8], device);
//!     out.push("y", block(device).forward(x));
//! });
//! ```

use burn::prelude::*;
use rlip_backends::BackendKind;

/// A named tolerance: an element passes if `|x − ref| ≤ abs + rel·|ref|`.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    /// Absolute part.
    pub abs: f64,
    /// Relative part.
    pub rel: f64,
}

impl Tol {
    /// A tolerance of `abs + rel·|ref|`.
    pub const fn new(abs: f64, rel: f64) -> Self {
        Self { abs, rel }
    }
}

/// Named host copies of the tensors a parity body produced.
#[derive(Debug, Default)]
pub struct Outputs(pub Vec<(String, Vec<usize>, Vec<f32>)>);

impl Outputs {
    /// Records tensor `t` under `name`.
    pub fn push<const D: usize>(&mut self, name: &str, t: Tensor<D>) {
        let shape = t.dims().to_vec();
        let v = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("float data");
        self.0.push((name.to_string(), shape, v));
    }
}

/// The devices to compare: every compiled-in backend that can run here. `RLIP_PARITY_BACKENDS`
/// (comma-separated) restricts the list; `flex` is always first.
pub fn devices() -> Vec<(BackendKind, Device)> {
    let only = std::env::var("RLIP_PARITY_BACKENDS").ok();
    BackendKind::compiled_in()
        .into_iter()
        .filter(|b| {
            *b == BackendKind::Flex
                || only
                    .as_deref()
                    .is_none_or(|o| o.split(',').any(|x| x.trim() == b.feature()))
        })
        .filter(|b| *b != BackendKind::Cuda || std::env::var("RLIP_PARITY_CUDA").is_ok())
        .map(|b| (b, rlip_backends::device(b, None).expect("compiled backend")))
        .collect()
}

/// Runs `body` on each device of [`devices`], compares with flex, prints a table, and panics
/// if any output of any backend is outside `tol` (or has another shape).
pub fn run_parity(name: &str, tol: Tol, body: impl Fn(&Device, &mut Outputs)) {
    let devs = devices();
    assert_eq!(
        devs.first().map(|d| d.0),
        Some(BackendKind::Flex),
        "flex must be compiled in"
    );
    let mut reference = Outputs::default();
    body(&devs[0].1, &mut reference);
    let mut failures = Vec::new();
    println!(
        "parity {name}: tolerance abs {:.1e} + rel {:.1e}",
        tol.abs, tol.rel
    );
    for (kind, dev) in &devs[1..] {
        let mut got = Outputs::default();
        body(dev, &mut got);
        assert_eq!(
            got.0.len(),
            reference.0.len(),
            "{name}/{kind}: number of outputs"
        );
        for ((n, s, v), (_, rs, rv)) in got.0.iter().zip(&reference.0) {
            if s != rs {
                failures.push(format!("{kind}/{n}: shape {s:?} vs flex {rs:?}"));
                continue;
            }
            let (mut max_abs, mut max_rel, mut ok) = (0f64, 0f64, true);
            for (a, b) in v.iter().zip(rv) {
                let (a, b) = (*a as f64, *b as f64);
                let d = (a - b).abs();
                if !(d <= tol.abs + tol.rel * b.abs()) {
                    ok = false;
                }
                max_abs = max_abs.max(if d.is_nan() { f64::INFINITY } else { d });
                max_rel = max_rel.max(d / b.abs().max(1e-12));
            }
            println!(
                "  {kind:<5} {n:<24} max_abs {max_abs:>10.3e}  max_rel {max_rel:>10.3e}  {}",
                if ok { "ok" } else { "FAIL" }
            );
            if !ok {
                failures.push(format!("{kind}/{n}: max_abs {max_abs:.3e}"));
            }
        }
    }
    if devs.len() == 1 {
        println!("  (only flex compiled in: nothing to compare)");
    }
    assert!(failures.is_empty(), "parity {name} failed: {failures:?}");
}

/// Declares a `#[test]` that runs a body on every backend and compares with flex.
#[macro_export]
macro_rules! parity_test {
    ($name:ident, $tol:expr, |$dev:ident, $out:ident| $body:block) => {
        #[test]
        fn $name() {
            $crate::run_parity(
                stringify!($name),
                $tol,
                |$dev: &burn::prelude::Device, $out: &mut $crate::Outputs| $body,
            );
        }
    };
}
