//! What a device advertises, narrowed to what the LLVM backend lowers for it.
//!
//! Real behaviour, transcribed from `cubecl-llvm` 0.11.3 `src/shared/lowered_features.rs`
//! (NVPTX target only; the AMDGPU arm is not provided). `cubecl-cuda` calls
//! [`restrict_features`] only when the LLVM backend is selected, which never happens with the
//! `cpp` feature on — but the function keeps its upstream semantics so the stub never lies
//! about what a device can do. Keep in sync on upgrades.

use cubecl_core::ir::{
    ComplexKind, DeviceProperties, ElemType, FloatKind, IntKind, OpaqueType, UIntKind,
};

const HALF: ElemType = ElemType::Float(FloatKind::F16);
const BF16: ElemType = ElemType::Float(FloatKind::BF16);

/// The GPU target a device's features are narrowed for. The real enum also has `AmdGpu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GpuTarget {
    Nvptx,
}

/// Narrows `props` to what the LLVM backend lowers for `target`: the matrix forms that target
/// has register shapes for, and nothing that the backend does not lower.
pub fn restrict_features(props: &mut DeviceProperties, target: GpuTarget) {
    match target {
        GpuTarget::Nvptx => keep_nvptx_matrix_forms(props),
    }
    restrict_common(props);
}

/// An accumulator the half-precision matrix instructions of NVPTX write.
fn is_half_or_single(ty: ElemType) -> bool {
    matches!(
        ty,
        ElemType::Float(FloatKind::F16) | ElemType::Float(FloatKind::F32)
    )
}

/// Keeps the matrix forms NVPTX has register shapes for: f16/bf16/TF32 operands (TF32 only in
/// the geometries NVVM implements) and, for `mma`, 8-bit integers accumulating in i32.
fn keep_nvptx_matrix_forms(props: &mut DeviceProperties) {
    let byte = |ty: ElemType| {
        matches!(
            ty,
            ElemType::Int(IntKind::I8) | ElemType::UInt(UIntKind::U8)
        )
    };

    let tf32 = ElemType::Float(FloatKind::TF32);
    let f32 = ElemType::Float(FloatKind::F32);
    let matmul = &mut props.features.matmul;
    matmul.cmma.retain(|config| {
        let half =
            config.a_type == HALF && config.b_type == HALF && is_half_or_single(config.cd_type);
        let bf16 = config.a_type == BF16 && config.b_type == BF16 && config.cd_type == f32;
        let tf32 = config.a_type == tf32
            && config.b_type == tf32
            && config.cd_type == f32
            && (config.m, config.n, config.k) == (16, 16, 8);
        half || bf16 || tf32
    });
    matmul.mma.retain(|config| {
        let floats = (config.a_type == HALF || config.a_type == BF16)
            && config.b_type == config.a_type
            && config.cd_type == ElemType::Float(FloatKind::F32);
        let integers = byte(config.a_type)
            && byte(config.b_type)
            && config.cd_type == ElemType::Int(IntKind::I32);
        let tf32 = config.a_type == tf32
            && config.b_type == tf32
            && config.cd_type == f32
            && config.m == 16
            && config.n == 8
            && matches!(config.k, 4 | 8);
        floats || integers || tf32
    });
}

/// What the LLVM backend lowers on no GPU target.
fn restrict_common(props: &mut DeviceProperties) {
    // The cube-level matrix API, and the scaled instructions with their `block_scale` operands.
    let matmul = &mut props.features.matmul;
    matmul.cube_mma = Default::default();
    matmul.scaled_mma = Default::default();
    matmul.cmma_tensor_addressing = false;
    if matmul.cmma.is_empty() && matmul.mma.is_empty() {
        props.hardware.num_tensor_cores = None;
        props.hardware.min_tensor_cores_dim = None;
    }

    // No TMA, no clusters, no async copy, and no `mbarrier` behind them.
    props.features.tma = Default::default();
    props.features.cube_cluster = false;
    props.features.copy_async = false;
    props.features.types.opaque.remove(&OpaqueType::TensorMap);
    props.features.types.opaque.remove(&OpaqueType::Barrier);

    // No `bf16` atomics.
    props
        .features
        .types
        .atomic
        .retain(|ty, _| ty.elem_type() != BF16);

    // Complex arithmetic is lowered by the C++ backends only.
    props.features.types.complex.clear();
    for kind in [ComplexKind::C32, ComplexKind::C64] {
        props.features.types.elem.remove(&ElemType::Complex(kind));
    }

    // No vectorized atomics.
    props
        .features
        .types
        .atomic
        .retain(|ty, _| ty.vector_size() == 1);
}

#[cfg(test)]
mod tests {
    //! The upstream NVPTX tests, with the upstream `offline_kernels::device_properties` helper
    //! inlined.
    use super::*;
    use cubecl_core::ir::{
        DeviceIdentity, HardwareProperties, MemoryDeviceProperties, VectorSize,
        features::{Features, MmaConfig},
    };

    fn device_properties(plane_dim: u32) -> DeviceProperties {
        let hardware = HardwareProperties {
            load_width: 128,
            vector_register_count: None,
            plane_size_min: plane_dim,
            plane_size_max: plane_dim,
            max_bindings: 32,
            max_shared_memory_size: 65536,
            max_cube_count: (u32::MAX, u16::MAX as u32, u16::MAX as u32),
            max_units_per_cube: 1024,
            max_cube_dim: (1024, 1024, 1024),
            num_streaming_multiprocessors: None,
            num_tensor_cores: None,
            min_tensor_cores_dim: None,
            num_cpu_cores: None,
            last_level_cache_size: None,
            max_vector_size: VectorSize::MAX,
            cube_mma_reserved_shared_memory: 0,
        };
        DeviceProperties::new(
            Features::default(),
            MemoryDeviceProperties::new(u64::MAX, 256),
            hardware,
            cubecl_core::profile::TimingMethod::Device,
            DeviceIdentity {
                name: "offline".to_string(),
                fingerprint: "offline".to_string(),
                physical: None,
            },
        )
    }

    #[test]
    fn tf32_keeps_only_supported_matrix_shapes() {
        let mut props = device_properties(32);
        let tf32 = ElemType::Float(FloatKind::TF32);
        let f32 = ElemType::Float(FloatKind::F32);
        let config = |m, n, k| MmaConfig {
            a_type: tf32,
            b_type: tf32,
            cd_type: f32,
            m,
            n,
            k,
        };
        let forms = [
            config(16, 16, 8),
            config(16, 8, 4),
            config(16, 8, 8),
            config(16, 8, 16),
        ];
        props.features.matmul.cmma.extend(forms);
        props.features.matmul.mma.extend(forms);
        restrict_features(&mut props, GpuTarget::Nvptx);
        assert_eq!(props.features.matmul.cmma.len(), 1);
        assert!(props.features.matmul.cmma.contains(&config(16, 16, 8)));
        assert_eq!(props.features.matmul.mma.len(), 2);
        assert!(props.features.matmul.mma.contains(&config(16, 8, 4)));
        assert!(props.features.matmul.mma.contains(&config(16, 8, 8)));
    }

    /// `bf16` operands accumulate in `f32` only: no WMMA or `mma.sync` form writes `bf16`.
    #[test]
    fn bf16_keeps_its_f32_accumulator_forms() {
        let mut props = device_properties(32);
        let f32 = ElemType::Float(FloatKind::F32);
        let config = |cd_type, m, n, k| MmaConfig {
            a_type: BF16,
            b_type: BF16,
            cd_type,
            m,
            n,
            k,
        };
        props.features.matmul.cmma.extend([
            config(f32, 16, 16, 16),
            config(f32, 32, 8, 16),
            config(BF16, 16, 16, 16),
        ]);
        props
            .features
            .matmul
            .mma
            .extend([config(f32, 16, 8, 16), config(BF16, 16, 8, 16)]);
        restrict_features(&mut props, GpuTarget::Nvptx);
        assert_eq!(props.features.matmul.cmma.len(), 2);
        assert!(props.features.matmul.cmma.iter().all(|c| c.cd_type == f32));
        assert_eq!(props.features.matmul.mma.len(), 1);
        assert!(props.features.matmul.mma.contains(&config(f32, 16, 8, 16)));
    }
}
