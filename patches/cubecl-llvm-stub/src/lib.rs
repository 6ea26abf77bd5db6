//! Offline stub of `cubecl-llvm` 0.11.3 for RLIP-rs.
//!
//! **Why this exists.** `burn/cuda` → `burn-cuda` 0.22.1 → `cubecl-cuda` 0.11.3, which depends on
//! `cubecl-llvm` 0.11.3 unconditionally. The real crate's build dependency
//! `tracel-llvm-bundler` downloads an LLVM bundle from GitHub in its build script, so the CUDA
//! backend cannot be built offline. `rlip-backends` enables `cubecl-cuda/cpp`, which makes the
//! CUDA C++ / NVRTC compiler the default (`cubecl_cuda::CudaBackend::Cpp`); that path needs no
//! LLVM. The workspace `[patch.crates-io]` swaps the real crate for this one.
//!
//! **What it provides.** Exactly the API surface `cubecl-cuda` 0.11.3 names (`grep -rn
//! cubecl_llvm` in its `src/`):
//!
//! * [`nvptx::ptx_version::PtxVersion`] and [`shared::lowered_features`] — pure-Rust helpers with
//!   the real crate's behaviour (the runtime reads the PTX version for every device, whichever
//!   backend compiles).
//! * [`PlironCompiler`], [`PlironOptions`], [`PlironArtifact`], [`NvptxModule`], [`LlvmTarget`] —
//!   the LLVM backend's types, so `cubecl_cuda::CudaCompiler::Llvm` still type-checks. Every
//!   compile entry point returns [`CompilationError::Generic`] with [`NOT_BUILT`]; nothing is
//!   ever compiled.
//!
//! The CPU JIT (`PlironEngine`, used by `cubecl-cpu`) and the AMDGPU target (used by
//! `cubecl-hip`) are **not** provided: enabling `burn/cpu` or `burn/rocm` with this patch in
//! place fails to compile, which is the intended signal to drop or extend the patch.
//!
//! **Upstream mirrored:** `cubecl-llvm` 0.11.3 (crates.io). Re-check this crate — the surface
//! `cubecl-cuda` uses and the semantics of the helpers — whenever cubecl/burn is upgraded, and
//! delete it (with the `[patch.crates-io]` entry) once `cubecl-cuda` makes `cubecl-llvm`
//! optional.

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use cubecl_core::environment::backtrace::BackTrace;
use cubecl_core::ir::amd::GfxArch;
use cubecl_core::ir::attributes::BufferIOAttr;
use cubecl_core::ir::nvidia::SmArch;
use cubecl_core::prelude::KernelDefinition;
pub use cubecl_core::{CompilationError, Compiler};

pub mod nvptx {
    //! NVPTX target: only the PTX version table survives in the stub.
    pub mod ptx_version;
}

pub mod shared {
    //! Target-independent pieces: only the device-feature narrowing survives in the stub.
    pub mod lowered_features;
}

/// The reason every compile entry point of this stub gives.
pub const NOT_BUILT: &str = "the LLVM/pliron CUDA compiler is not built in RLIP-rs \
    (cubecl-llvm is replaced by an offline stub, see patches/cubecl-llvm-stub); \
    the NVRTC (cpp) compiler is used — select cubecl_cuda::CudaBackend::Cpp";

/// LLVM compilation targets. The real enum also has `Cpu` (the default) and `AmdGpu`; only the
/// target `cubecl-cuda` configures is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LlvmTarget {
    Nvptx,
}

impl LlvmTarget {
    /// Whether the target provides a hardware launch grid.
    pub fn is_gpu(self) -> bool {
        true
    }
}

/// The LLVM backend's compiler. In the stub, [`Compiler::compile`] always fails with
/// [`NOT_BUILT`].
#[derive(Clone, Debug)]
pub struct PlironCompiler {
    pub target: LlvmTarget,
}

/// Options of the LLVM backend, as far as `cubecl-cuda` sets them. The real struct's CPU-only
/// fields (`cpu_buffer_alignment`, `f16_evaluation`) are omitted; `cubecl-cuda` fills the rest
/// with `..Default::default()`.
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    /// AMDGPU architecture, or `None` for other targets.
    pub arch: Option<GfxArch>,
    /// NVPTX architecture, or `None` for other targets.
    pub sm_arch: Option<SmArch>,
    /// PTX version to emit, or `None` for the oldest the architecture accepts.
    pub ptx_version: Option<nvptx::ptx_version::PtxVersion>,
    /// Pass scalars and static metadata in the kernel parameter block.
    pub grid_constants: bool,
}

/// Compiled PTX module. Never constructed by the stub; kept field-for-field so `cubecl-cuda`'s
/// loading code type-checks.
#[derive(Clone, Debug)]
pub struct NvptxModule {
    /// NUL-terminated PTX assembly.
    pub ptx: Vec<core::ffi::c_char>,
    /// Kernel entry point symbol.
    pub entrypoint: String,
    /// IR for logging and cache keys.
    pub ir: String,
    /// Shared memory required per launch, in bytes.
    pub shared_memory_size: usize,
    /// Buffer access modes in binding order.
    pub io: Vec<BufferIOAttr>,
}

/// Compiled kernel artifact. The real enum also has `Jit` (CPU) and `AmdGpuCode`; it is
/// `#[non_exhaustive]` here so `cubecl-cuda`'s catch-all arm stays meaningful.
#[derive(Clone)]
#[non_exhaustive]
pub enum PlironArtifact {
    NvptxCode(NvptxModule),
}

impl core::fmt::Display for PlironArtifact {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlironArtifact::NvptxCode(module) => write!(f, "{}", module.ir),
        }
    }
}

impl Compiler for PlironCompiler {
    type Representation = PlironArtifact;
    type CompilationOptions = PlironOptions;

    fn buffer_io(repr: &Self::Representation) -> Option<Vec<BufferIOAttr>> {
        match repr {
            PlironArtifact::NvptxCode(module) => Some(module.io.clone()),
        }
    }

    /// Always fails: the LLVM/pliron backend is not built into RLIP-rs.
    fn compile(
        &mut self,
        kernel: KernelDefinition,
        _compilation_options: &Self::CompilationOptions,
    ) -> Result<Self::Representation, CompilationError> {
        Err(CompilationError::Generic {
            reason: alloc::format!(
                "cannot compile '{}' with the LLVM backend: {NOT_BUILT}",
                kernel.settings.kernel_name
            ),
            backtrace: BackTrace::capture(),
        })
    }

    fn extension(&self) -> &'static str {
        match self.target {
            LlvmTarget::Nvptx => "ll",
        }
    }

    fn lang_tag(&self) -> &'static str {
        match self.target {
            LlvmTarget::Nvptx => "llvm",
        }
    }
}
