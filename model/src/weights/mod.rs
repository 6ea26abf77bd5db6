//! Checkpoint reading and loading official RLIPv2 weights into Burn modules.
//!
//! Files are read into a [`StateDict`] (official key → [`RawTensor`]) by [`pth`] (PyTorch zip
//! checkpoints, read without executing pickle code) or [`safetensors`](mod@crate::weights::st).
//! Modules are then built from a [`Loader`], which hands out tensors by their **official** key
//! names and records a [`KeyReport`] of what was applied, missing, unexpected or mis-shaped.
//!
//! The PyTorch → Burn remapping rules, applied by the helpers in [`layers`]:
//!
//! | official tensor | Burn field | rule |
//! |---|---|---|
//! | `nn.Linear.weight` `[out, in]` | `Linear.weight` `[in, out]` | transposed |
//! | `nn.Linear.bias`, `nn.Conv2d.{weight,bias}` | same | as is |
//! | `nn.LayerNorm` / `nn.GroupNorm` `weight`, `bias` | `gamma`, `beta` | renamed |
//! | `FrozenBatchNorm2d` `weight`, `bias`, `running_mean`, `running_var` | [`layers::FrozenBatchNorm`] | folded into scale and shift at load |
//! | `nn.MultiheadAttention.in_proj_{weight,bias}` `[3d, d]` | three `Linear`s q, k, v | split in rows, then transposed |
//! | int64 buffers (`position_ids`, `relative_position_index`) | — | recomputed; the stored copy is checked and dropped |
//! | shared box heads stored twice (`transformer.{ho,verb}_decoder.{sub,obj}_bbox_embed.*`) | the top-level `{sub,obj}_bbox_embed.*` | accepted as aliases when equal |

pub mod layers;
pub mod pickle;
pub mod pth;
pub mod report;
pub mod st;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;

pub use report::KeyReport;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// 16-bit signed integer.
    I16,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
    /// Boolean stored as one byte.
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Whether the type is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// Lower-case name, as PyTorch and safetensors print it.
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A dense, row-major, little-endian tensor as read from a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Element type.
    pub dtype: DType,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// `numel * dtype.size()` bytes, little-endian, row-major.
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// A float32 tensor from values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape/len mismatch"
        );
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            dtype: DType::F32,
            shape,
            bytes,
        }
    }

    /// An int64 tensor from values.
    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape/len mismatch"
        );
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            dtype: DType::I64,
            shape,
            bytes,
        }
    }

    /// Values converted to f32 (integers and bools by value, halves widened).
    pub fn to_f32(&self) -> Vec<f32> {
        self.f32_values()
    }

    /// Values converted to f64.
    pub fn to_f64(&self) -> Vec<f64> {
        let b = &self.bytes;
        let n = self.numel();
        let mut out = Vec::with_capacity(n);
        let sz = self.dtype.size();
        for i in 0..n {
            let c = &b[i * sz..(i + 1) * sz];
            let v = match self.dtype {
                DType::F32 => f32::from_le_bytes(c.try_into().unwrap()) as f64,
                DType::F64 => f64::from_le_bytes(c.try_into().unwrap()),
                DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
                DType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f64(),
                DType::I64 => i64::from_le_bytes(c.try_into().unwrap()) as f64,
                DType::I32 => i32::from_le_bytes(c.try_into().unwrap()) as f64,
                DType::I16 => i16::from_le_bytes([c[0], c[1]]) as f64,
                DType::I8 => c[0] as i8 as f64,
                DType::U8 | DType::Bool => c[0] as f64,
            };
            out.push(v);
        }
        out
    }

    /// Values as i64 (floats truncated).
    pub fn to_i64(&self) -> Vec<i64> {
        if self.dtype == DType::I64 {
            return self
                .bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
        }
        self.to_f64().into_iter().map(|v| v as i64).collect()
    }

    /// Exact f32 values for an f32 tensor (no rounding through f64 needed, but identical).
    fn f32_values(&self) -> Vec<f32> {
        if self.dtype == DType::F32 {
            self.bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        } else {
            self.to_f64().into_iter().map(|v| v as f32).collect()
        }
    }

    /// Converts to a float Burn tensor of rank `D` on `device` (values cast to f32).
    pub fn to_tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(self.f32_values(), self.shape.clone()),
            device,
        )
    }
}

/// An ordered map from official key names to tensors (the `state_dict` of a checkpoint).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    order: Vec<String>,
    map: BTreeMap<String, RawTensor>,
}

impl StateDict {
    /// An empty state dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces) a tensor; the first insertion fixes the key's position.
    pub fn insert(&mut self, key: impl Into<String>, t: RawTensor) {
        let key = key.into();
        if self.map.insert(key.clone(), t).is_none() {
            self.order.push(key);
        }
    }

    /// The tensor stored under `key`.
    pub fn get(&self, key: &str) -> Option<&RawTensor> {
        self.map.get(key)
    }

    /// Keys in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// `(key, tensor)` pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RawTensor)> {
        self.order.iter().map(|k| (k.as_str(), &self.map[k]))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The official fine-tuning query filter for ParSeDA checkpoints
    /// (`util/misc.py::filter_ckpt_tgt_anchor`): every tensor whose key contains `tgt_embed` or
    /// `refpoint_embed` keeps only its first `num_queries` rows. Returns the keys it shortened.
    pub fn truncate_query_rows(&mut self, num_queries: usize) -> Vec<String> {
        let mut changed = Vec::new();
        for (key, t) in self.map.iter_mut() {
            if !(key.contains("tgt_embed") || key.contains("refpoint_embed")) {
                continue;
            }
            let Some(&rows) = t.shape.first() else {
                continue;
            };
            if rows <= num_queries {
                continue;
            }
            let row_bytes = t.bytes.len() / rows;
            t.bytes.truncate(num_queries * row_bytes);
            t.shape[0] = num_queries;
            changed.push(key.clone());
        }
        changed
    }

    /// Reads a `.pth` (its top-level `model` entry, or the whole pickle when it is a bare
    /// state dict) or a `.safetensors` file, chosen by content, not by extension (a bare pickle
    /// stream goes to the `.pth` reader, which reports the legacy format as unsupported).
    pub fn read(path: &Path) -> Result<Self, WeightError> {
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| WeightError::io(path, e))?;
            let n = f.read(&mut magic).map_err(|e| WeightError::io(path, e))?;
            if n < 4 {
                return Err(WeightError::format(path, "file is shorter than 4 bytes"));
            }
        }
        if &magic == b"PK\x03\x04" || magic[0] == 0x80 {
            pth::read_state_dict(path, Some("model"))
        } else {
            st::read(path)
        }
    }
}

/// Errors from reading checkpoints and loading weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a valid checkpoint of the expected format.
    #[error("{path}: {msg}")]
    Format {
        /// File.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Keys were missing, unexpected or mis-shaped and a partial load was not allowed.
    #[error("{origin}: checkpoint does not match the model:\n{report}")]
    Mismatch {
        /// Where the weights came from.
        origin: String,
        /// The full key report.
        report: Box<KeyReport>,
    },
}

impl WeightError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }

    /// A format error on `path`.
    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// How a parameter is initialised when the checkpoint does not provide it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Constant value.
    Constant(f64),
    /// Uniform in ±sqrt(1/fan_in) (PyTorch's default for Linear and Conv).
    KaimingUniform,
    /// Xavier/Glorot uniform.
    XavierUniform,
    /// Normal with the given standard deviation.
    Normal(f64),
    /// Uniform in [lo, hi).
    Uniform(f64, f64),
}

/// Hands out parameters by official key and records what was used.
///
/// Build a whole model from one loader, then call [`Loader::finish`] to get the key report (and an
/// error if anything is missing or mis-shaped, unless partial loading was allowed).
pub struct Loader<'a> {
    sd: &'a StateDict,
    device: Device,
    source: String,
    allow_partial: bool,
    report: KeyReport,
    rng: u64,
    inits: Option<StateDict>,
    float_dtype: Option<burn::tensor::FloatDType>,
}

impl<'a> Loader<'a> {
    /// A loader over `sd`, creating tensors on `device`; `source` names the file in messages.
    pub fn new(sd: &'a StateDict, device: &Device, source: impl Into<String>) -> Self {
        Self {
            sd,
            device: device.clone(),
            source: source.into(),
            allow_partial: false,
            report: KeyReport::default(),
            rng: 0x5EED_2024,
            inits: None,
            float_dtype: None,
        }
    }

    /// Keeps a copy of every initialised (missing) parameter, returned by
    /// [`Loader::finish_with_inits`]: with an empty state dict this yields a complete, freshly
    /// initialised checkpoint under the official keys.
    pub fn record_inits(mut self, yes: bool) -> Self {
        self.inits = yes.then(StateDict::new);
        self
    }

    fn record(&mut self, key: &str, shape: &[usize], values: &[f32]) {
        if let Some(sd) = &mut self.inits {
            sd.insert(key, RawTensor::from_f32(shape.to_vec(), values));
        }
    }

    /// Allows missing keys (they are initialised by their [`Init`] rule instead of failing).
    pub fn allow_partial(mut self, yes: bool) -> Self {
        self.allow_partial = yes;
        self
    }

    /// Creates float tensors in `dtype` instead of the device's default float type (`None`: the
    /// default). Mixed-precision training loads its float32 master weights this way on a device
    /// whose default is bf16.
    pub fn float_dtype(mut self, dtype: Option<burn::tensor::FloatDType>) -> Self {
        self.float_dtype = dtype;
        self
    }

    /// Device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn create<const D: usize>(&self, values: Vec<f32>, shape: &[usize]) -> Tensor<D> {
        let data = TensorData::new(values, shape.to_vec());
        match self.float_dtype {
            Some(dt) => Tensor::from_data(data, (&self.device, burn::tensor::DType::from(dt))),
            None => Tensor::from_data(data, &self.device),
        }
    }

    /// The raw entry for `key`, marking it as used; `None` (and recorded as missing) if absent.
    fn take(&mut self, key: &str, shape: &[usize]) -> Option<&'a RawTensor> {
        match self.sd.get(key) {
            Some(t) if t.shape == shape => {
                self.report.applied.push(key.to_string());
                Some(t)
            }
            Some(t) => {
                self.report
                    .misshaped
                    .push((key.to_string(), shape.to_vec(), t.shape.clone()));
                None
            }
            None => {
                self.report.missing.push(key.to_string());
                None
            }
        }
    }

    /// A float tensor of `shape` from `key`, or initialised by `init` if absent.
    pub fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Tensor<D> {
        match self.take(key, &shape) {
            Some(t) => self.create(t.f32_values(), &shape),
            None => {
                let v = self.init_values(shape.iter().product(), fan_in(&shape), init);
                self.record(key, &shape, &v);
                self.create(v, &shape)
            }
        }
    }

    /// A float tensor of `shape` from `key`, or from `init()` (row-major values) if absent.
    pub fn tensor_with<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        init: impl FnOnce() -> Vec<f32>,
    ) -> Tensor<D> {
        let v = match self.take(key, &shape) {
            Some(t) => t.f32_values(),
            None => {
                let v = init();
                self.record(key, &shape, &v);
                v
            }
        };
        self.create(v, &shape)
    }

    /// Values of `key` as f32 (for parameters that are folded or reshaped before use).
    pub fn values(&mut self, key: &str, shape: &[usize], init: Init) -> Vec<f32> {
        match self.take(key, shape) {
            Some(t) => t.f32_values(),
            None => {
                let n = shape.iter().product();
                let v = self.init_values(n, fan_in(shape), init);
                self.record(key, shape, &v);
                v
            }
        }
    }

    /// Marks an integer buffer that the model recomputes: checks it against `expected` if present.
    pub fn buffer_i64(&mut self, key: &str, expected: &[i64]) {
        if let Some(t) = self.sd.get(key) {
            if t.to_i64() == expected {
                self.report.buffers.push(key.to_string());
            } else {
                self.report.bad_buffers.push(key.to_string());
            }
        }
    }

    fn init_values(&mut self, n: usize, fan_in: usize, init: Init) -> Vec<f32> {
        let mut next = || {
            // splitmix64
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        };
        let fan_in = fan_in.max(1) as f64;
        (0..n)
            .map(|_| {
                (match init {
                    Init::Zeros => 0.0,
                    Init::Ones => 1.0,
                    Init::Constant(c) => c,
                    Init::KaimingUniform => (2.0 * next() - 1.0) / fan_in.sqrt(),
                    Init::XavierUniform => (2.0 * next() - 1.0) * (3.0 / fan_in).sqrt(),
                    Init::Normal(std) => {
                        let (u1, u2) = (next().max(1e-300), next());
                        std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
                    }
                    Init::Uniform(lo, hi) => lo + (hi - lo) * next(),
                }) as f32
            })
            .collect()
    }

    /// [`Loader::finish`], also returning the parameters initialised because the checkpoint
    /// lacked them (empty unless [`Loader::record_inits`] was set).
    pub fn finish_with_inits(mut self) -> Result<(KeyReport, StateDict), WeightError> {
        let inits = self.inits.take().unwrap_or_default();
        self.finish().map(|r| (r, inits))
    }

    /// Finishes loading: computes unexpected keys and aliases, and fails on any mismatch unless
    /// partial loading was allowed (mis-shaped keys always fail).
    pub fn finish(mut self) -> Result<KeyReport, WeightError> {
        self.report.finalize(self.sd);
        let fail = !self.report.misshaped.is_empty()
            || !self.report.bad_buffers.is_empty()
            || !self.report.bad_aliases.is_empty()
            || (!self.allow_partial
                && (!self.report.missing.is_empty() || !self.report.unexpected.is_empty()));
        if fail {
            Err(WeightError::Mismatch {
                origin: self.source,
                report: Box::new(self.report),
            })
        } else {
            Ok(self.report)
        }
    }
}

/// PyTorch's fan-in: elements per output row.
fn fan_in(shape: &[usize]) -> usize {
    if shape.len() < 2 {
        shape.iter().product()
    } else {
        shape[1..].iter().product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_rows_are_truncated_like_the_official_filter() {
        let mut sd = StateDict::new();
        let rows = |n: usize, w: usize| (0..n * w).map(|i| i as f32).collect::<Vec<_>>();
        sd.insert(
            "tgt_embed.weight",
            RawTensor::from_f32(vec![6, 2], &rows(6, 2)),
        );
        sd.insert(
            "verb_tgt_embed.weight",
            RawTensor::from_f32(vec![6, 2], &rows(6, 2)),
        );
        sd.insert(
            "refpoint_embed.weight",
            RawTensor::from_f32(vec![3, 4], &rows(3, 4)),
        );
        sd.insert("other.weight", RawTensor::from_f32(vec![6, 2], &rows(6, 2)));
        let mut changed = sd.truncate_query_rows(4);
        changed.sort();
        assert_eq!(changed, ["tgt_embed.weight", "verb_tgt_embed.weight"]);
        let t = sd.get("tgt_embed.weight").unwrap();
        assert_eq!(t.shape, [4, 2]);
        assert_eq!(t.to_f32(), rows(4, 2));
        assert_eq!(sd.get("refpoint_embed.weight").unwrap().shape, [3, 4]);
        assert_eq!(sd.get("other.weight").unwrap().shape, [6, 2]);
    }
}
