//! Golden fixture folders: manifest, inputs and outputs, and the README's comparison rule.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use rlip_model::weights::{RawTensor, StateDict, st};
use serde_json::Value;

/// The shared golden folder (`$RLIP_GOLDEN`, else `../shared/golden` beside the repository).
pub fn golden_root() -> PathBuf {
    if let Ok(p) = std::env::var("RLIP_GOLDEN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden")
}

/// One fixture folder of the model layout (manifest.json, inputs/outputs.safetensors).
pub struct Fixture {
    /// Folder.
    pub dir: PathBuf,
    /// Parsed manifest.json.
    pub manifest: Value,
    /// inputs.safetensors.
    pub inputs: StateDict,
    /// outputs.safetensors.
    pub outputs: StateDict,
}

/// Result of comparing one output with the fixture.
#[derive(Debug, Clone)]
pub struct Check {
    /// Output name.
    pub name: String,
    /// max |ours − f64|.
    pub max_abs: f64,
    /// max_abs / max |f64|.
    pub rel: f64,
    /// Allowed max_abs.
    pub tol: f64,
}

impl Check {
    /// Whether the output is within tolerance.
    pub fn pass(&self) -> bool {
        self.max_abs <= self.tol
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<28} max_abs {:>10.3e}  rel {:>10.3e}  tol {:>10.3e}  {}",
            self.name,
            self.max_abs,
            self.rel,
            self.tol,
            if self.pass() { "PASS" } else { "FAIL" }
        )
    }
}

impl Fixture {
    /// Opens the fixture folder `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref().to_path_buf();
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(dir.join("manifest.json"))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display())),
        )
        .expect("manifest.json");
        let inputs = st::read(&dir.join("inputs.safetensors")).expect("inputs");
        let outputs = st::read(&dir.join("outputs.safetensors")).expect("outputs");
        Self {
            dir,
            manifest,
            inputs,
            outputs,
        }
    }

    /// Opens `golden_root()/name`.
    pub fn named(name: &str) -> Self {
        Self::open(golden_root().join(name))
    }

    /// An input tensor.
    pub fn input(&self, key: &str) -> &RawTensor {
        self.inputs
            .get(key)
            .unwrap_or_else(|| panic!("fixture input {key} missing"))
    }

    /// A stored output (full key, e.g. `f64/backbone.feat0`).
    pub fn output(&self, key: &str) -> &RawTensor {
        self.outputs
            .get(key)
            .unwrap_or_else(|| panic!("fixture output {key} missing"))
    }

    /// The manifest entry of output `name` (from `outputs` or `postprocess`), if stored.
    pub fn find(&self, name: &str) -> Option<&Value> {
        ["outputs", "postprocess"].iter().find_map(|list| {
            self.manifest[*list]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["name"] == name))
        })
    }

    /// The manifest entry of output `name`.
    pub fn entry(&self, name: &str) -> &Value {
        self.find(name)
            .unwrap_or_else(|| panic!("no manifest entry for {name}"))
    }

    /// Whether the fixture stores output `name`.
    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// The README's tolerance for `name`: 10 × the official f32-vs-f64 max error.
    pub fn tolerance(&self, name: &str) -> f64 {
        let e = self.entry(name);
        let max_abs = e["f32_vs_f64"]["max_abs"].as_f64().unwrap_or(0.0);
        let max_ref = e["f32_vs_f64"]["max_ref"].as_f64().unwrap_or(1.0);
        if max_abs > 0.0 {
            10.0 * max_abs
        } else {
            1e-7 * max_ref.max(1.0)
        }
    }

    /// Compares full-size `values` of `shape` with the stored f64 reference of `name`,
    /// applying the entry's subsampling.
    pub fn check_values(&self, name: &str, shape: &[usize], values: &[f32]) -> Check {
        let e = self.entry(name);
        let full: Vec<usize> = e
            .get("full_shape")
            .or_else(|| e.get("shape"))
            .and_then(Value::as_array)
            .expect("full_shape")
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            shape,
            &full[..],
            "{name}: shape {shape:?}, fixture full shape {full:?}"
        );
        let (sub, stored) = match e.get("subsample") {
            Some(s) if !s.is_null() => {
                let axis = s["axis"].as_u64().unwrap() as usize;
                let step = s["step"].as_u64().unwrap() as usize;
                subsample(shape, values, axis, step)
            }
            _ => (shape.to_vec(), values.to_vec()),
        };
        let key = format!("f64/{name}");
        let reference = self.output(&key);
        assert_eq!(sub, reference.shape, "{name}: stored shape");
        let r = reference.to_f64();
        let mut max_abs: f64 = 0.0;
        let mut max_ref: f64 = 0.0;
        for (a, b) in stored.iter().zip(&r) {
            let d = (*a as f64 - b).abs();
            max_abs = if d.is_nan() {
                f64::INFINITY
            } else {
                max_abs.max(d)
            };
            max_ref = max_ref.max(b.abs());
        }
        Check {
            name: name.to_string(),
            max_abs,
            rel: max_abs / max_ref.max(1e-30),
            tol: self.tolerance(name),
        }
    }

    /// Compares a tensor with the stored f64 reference of `name`.
    pub fn check<const D: usize>(&self, name: &str, t: Tensor<D>) -> Check {
        let shape = t.dims().to_vec();
        let v = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 data");
        self.check_values(name, &shape, &v)
    }
}

/// `full[..., ::step along axis, ...]`.
pub fn subsample(
    shape: &[usize],
    values: &[f32],
    axis: usize,
    step: usize,
) -> (Vec<usize>, Vec<f32>) {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let n = shape[axis];
    let kept: Vec<usize> = (0..n).step_by(step).collect();
    let mut out = Vec::with_capacity(outer * kept.len() * inner);
    for o in 0..outer {
        for &k in &kept {
            let base = (o * n + k) * inner;
            out.extend_from_slice(&values[base..base + inner]);
        }
    }
    let mut s = shape.to_vec();
    s[axis] = kept.len();
    (s, out)
}

/// Asserts every check passed, printing the whole table first.
pub fn assert_all(checks: &[Check]) {
    for c in checks {
        println!("{c}");
    }
    let failed: Vec<_> = checks
        .iter()
        .filter(|c| !c.pass())
        .map(|c| c.name.as_str())
        .collect();
    assert!(failed.is_empty(), "outputs outside tolerance: {failed:?}");
}
