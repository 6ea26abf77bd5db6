//! Backend selection: the only crate of RLIP-rs that names concrete Burn backends.
//!
//! Each backend is a cargo feature (`flex`, `wgpu`, `tch`, `cuda`); [`BackendKind`] plus a device
//! index turns into a [`Device`] at run time, with a clear error when the binary was built without
//! the requested backend.

pub mod bench;
#[cfg(feature = "cube")]
mod cube_util;
#[cfg(feature = "cube")]
pub mod dense;
#[cfg(feature = "cube")]
pub mod fused;
pub mod limits;
pub mod msda;

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use burn::prelude::Device;
use burn::tensor::FloatDType;

/// Precision of the float tensors a device creates (weights, activations): `f32` (default, the
/// parity setting), or `bf16` / `f16` everywhere (norms, softmax, box refinement and the
/// deformable-attention sampling stay float32; training keeps float32 master weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Precision {
    /// 32-bit floats.
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl Precision {
    /// The Burn float type of this precision.
    pub fn dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
            Self::F16 => FloatDType::F16,
        }
    }

    /// The name `--float-dtype` takes: `f32`, `bf16`, `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

static PRECISION: OnceLock<Precision> = OnceLock::new();

/// Sets the float precision of every device [`device`] creates afterwards in this process
/// (once; call before creating devices).
pub fn set_precision(p: Precision) -> Result<(), BackendError> {
    if *PRECISION.get_or_init(|| p) != p {
        return Err(BackendError::Precision(
            "the float precision was already chosen for this process".into(),
        ));
    }
    Ok(())
}

/// The float precision chosen with [`set_precision`] (default `f32`).
pub fn precision() -> Precision {
    PRECISION.get().copied().unwrap_or_default()
}

/// How float32 matmuls and convolutions are computed (the names of PyTorch's
/// `set_float32_matmul_precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum F32Precision {
    /// Each backend's fastest routine: on CUDA float32 operands are multiplied on TF32 tensor
    /// cores (about 1e-3 relative error per product); flex, tch and wgpu without tensor cores
    /// compute in float32 anyway.
    #[default]
    High,
    /// Float32 throughout on wgpu and cuda as well (slower; for parity runs and the float32
    /// column of benchmarks).
    Highest,
}

static F32_PRECISION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Chooses how float32 matmuls and convolutions run from now on in this process: `Highest`
/// installs the full-float32 kernels of [`dense`] into the model (the cubecl backends), `High`
/// removes them.
pub fn set_f32_precision(p: F32Precision) {
    let highest = p == F32Precision::Highest;
    F32_PRECISION.store(highest, std::sync::atomic::Ordering::SeqCst);
    #[cfg(feature = "cube")]
    {
        let kernel: Option<std::sync::Arc<dyn rlip_model::dense::DenseKernel>> =
            highest.then(|| std::sync::Arc::new(dense::FullF32) as _);
        rlip_model::dense::set_kernel(kernel);
    }
}

/// The float32 precision chosen with [`set_f32_precision`] (default `High`).
pub fn f32_precision() -> F32Precision {
    if F32_PRECISION.load(std::sync::atomic::Ordering::SeqCst) {
        F32Precision::Highest
    } else {
        F32Precision::High
    }
}

/// A Burn backend RLIP-rs can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum BackendKind {
    /// Pure-Rust CPU backend (the reference for tests).
    Flex,
    /// Portable GPU backend (Vulkan, Metal, DX12, WebGPU; lavapipe on machines without a GPU).
    Wgpu,
    /// LibTorch (CPU, or CUDA with `--device`).
    Tch,
    /// NVIDIA CUDA through CubeCL (NVRTC).
    Cuda,
}

impl BackendKind {
    /// Every backend, in the order tests report them.
    pub const ALL: [BackendKind; 4] = [Self::Flex, Self::Wgpu, Self::Tch, Self::Cuda];

    /// The cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Tch => "tch",
            Self::Cuda => "cuda",
        }
    }

    /// Whether this binary was built with the backend.
    pub fn compiled(self) -> bool {
        match self {
            Self::Flex => cfg!(feature = "flex"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Tch => cfg!(feature = "tch"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this binary.
    pub fn compiled_in() -> Vec<BackendKind> {
        Self::ALL.into_iter().filter(|b| b.compiled()).collect()
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.feature())
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.feature().eq_ignore_ascii_case(s))
            .ok_or_else(|| BackendError::Unknown(s.to_string()))
    }
}

/// Why a device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The name is not a backend.
    #[error("unknown backend '{0}' (expected one of: flex, wgpu, tch, cuda)")]
    Unknown(String),
    /// The backend exists but this binary was built without it.
    #[error(
        "this binary was built without the '{kind}' backend (compiled in: {compiled}); rebuild with `--features {kind}`"
    )]
    NotCompiled {
        /// Requested backend.
        kind: BackendKind,
        /// Backends that are available.
        compiled: String,
    },
    /// The backend is compiled in but cannot run on this machine.
    #[error("the '{kind}' backend cannot run here: {reason}")]
    Unavailable {
        /// Requested backend.
        kind: BackendKind,
        /// Why.
        reason: String,
    },
    /// The device cannot use the requested float precision.
    #[error("float precision: {0}")]
    Precision(String),
}

/// Creates the device for `kind`, using GPU `index` where the backend has several devices
/// (`wgpu`: the n-th discrete GPU, or the default adapter when `index` is `None`; `tch`: CPU when
/// `None`, else CUDA device `index`; `cuda`: device `index`, default 0).
#[allow(unused_variables)] // `index` is unused when only flex is compiled in
pub fn device(kind: BackendKind, index: Option<usize>) -> Result<Device, BackendError> {
    if !kind.compiled() {
        let compiled = BackendKind::compiled_in()
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(BackendError::NotCompiled { kind, compiled });
    }
    register_kernels();
    let device = plain_device(kind, index)?;
    let p = precision();
    if p != Precision::F32 {
        let mut d = device.clone();
        if let Err(e) = d.configure(p.dtype()) {
            // a second handle on an already configured device is fine
            if d.settings().float_dtype != p.dtype() {
                return Err(BackendError::Precision(format!(
                    "{kind} on this device has no {} arithmetic ({e:?})",
                    p.name()
                )));
            }
        }
    }
    Ok(device)
}

/// Registers the fused kernels this binary was built with into the model: deformable attention
/// ([`msda`]) and, on the cubecl backends, layer norm, ReLU and the frozen-batch-norm affine map
/// (`fused`). Idempotent; [`device`] calls it.
pub fn register_kernels() {
    msda::register();
    #[cfg(feature = "cube")]
    fused::register();
}

#[allow(unused_variables)] // `index` is unused when only flex is compiled in
fn plain_device(kind: BackendKind, index: Option<usize>) -> Result<Device, BackendError> {
    #[allow(unreachable_code)]
    match kind {
        #[cfg(feature = "flex")]
        BackendKind::Flex => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(match index {
            None => Device::wgpu(burn::prelude::DeviceKind::DefaultDevice),
            Some(i) => Device::wgpu(burn::prelude::DeviceKind::DiscreteGpu(i)),
        }),
        #[cfg(feature = "tch")]
        #[allow(deprecated)]
        // burn-tch is deprecated upstream; it stays our parity reference
        BackendKind::Tch => Ok(match index {
            None => Device::libtorch(),
            Some(i) => Device::libtorch_cuda(i),
        }),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            // cudarc panics on a device thread when the driver library is missing: check first
            if !cuda_driver_present() {
                return Err(BackendError::Unavailable {
                    kind,
                    reason: "no NVIDIA driver (libcuda.so.1 cannot be loaded)".into(),
                });
            }
            Ok(Device::cuda(index.unwrap_or(0)))
        }
        #[allow(unreachable_patterns)]
        _ => unreachable!("compiled() checked above"),
    }
}

/// Whether the CUDA driver library can be loaded.
#[cfg(feature = "cuda")]
fn cuda_driver_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        // SAFETY: loading the NVIDIA driver library runs only its own initialisers, as cudarc
        // would do a moment later.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

/// The reference device for tests and the default for the CLI: `flex` when compiled in.
pub fn default_device() -> Result<Device, BackendError> {
    let kind = BackendKind::compiled_in()
        .first()
        .copied()
        .unwrap_or(BackendKind::Flex);
    device(kind, None)
}
