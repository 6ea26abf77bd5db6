//! The fused kernels as CubeCL kernels (wgpu and CUDA), float32 only.
//!
//! - layer norm: one cube of one plane per row, a strided pass of each unit over the row and a
//!   plane sum for the mean, then the same for the variance (two passes, as Burn's composite
//!   does), and a third pass that writes `(x − mean) / sqrt(var + eps) · gamma + beta`; on
//!   devices without plane operations one unit per row;
//! - ReLU and the per-channel affine map (with optional residual and ReLU): one unit per element.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::features::Plane;
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, cube};

/// Most cubes along one axis of a launch grid (WebGPU's limit is 65535).
const MAX_CUBES_X: usize = 32768;
/// Rows per cube of the one-unit-per-row layer-norm kernel.
const ROWS_PER_CUBE: usize = 64;

/// Index of this cube in a two-axis grid (`CUBE_COUNT_X` cubes per grid row).
#[cube]
fn cube_index() -> usize {
    CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
}

/// One cube per row of `x [rows, c]`, the cube no wider than one plane: its units take every
/// `CUBE_DIM`-th element of the row and plane sums combine them (reads are coalesced).
#[cube(launch_unchecked, address_type = "dynamic")]
fn layer_norm_plane_kernel(
    x: &Tensor<f32>,
    gamma: &Tensor<f32>,
    beta: &Tensor<f32>,
    out: &mut Tensor<f32>,
    rows: usize,
    epsilon: f32,
    #[comptime] c: usize,
) {
    let row = cube_index();
    // the whole cube leaves together
    if row >= rows {
        terminate!();
    }
    let t = UNIT_POS_X as usize;
    let units = CUBE_DIM_X as usize;
    let base = row * c;
    let mut sum = 0.0f32;
    let mut i = t;
    while i < c {
        sum += x[base + i];
        i += units;
    }
    let mean = plane_sum(sum) / f32::cast_from(c);
    let mut sq = 0.0f32;
    let mut i = t;
    while i < c {
        let d = x[base + i] - mean;
        sq += d * d;
        i += units;
    }
    let denom = (plane_sum(sq) / f32::cast_from(c) + epsilon).sqrt();
    let mut i = t;
    while i < c {
        out[base + i] = (x[base + i] - mean) / denom * gamma[i] + beta[i];
        i += units;
    }
}

/// One unit per row of `x [rows, c]` (devices without plane operations).
#[cube(launch_unchecked, address_type = "dynamic")]
fn layer_norm_row_kernel(
    x: &Tensor<f32>,
    gamma: &Tensor<f32>,
    beta: &Tensor<f32>,
    out: &mut Tensor<f32>,
    rows: usize,
    epsilon: f32,
    #[comptime] c: usize,
) {
    let row = cube_index() * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    if row >= rows {
        terminate!();
    }
    let base = row * c;
    let mut sum = 0.0f32;
    for k in 0..c {
        sum += x[base + k];
    }
    let mean = sum / f32::cast_from(c);
    let mut sq = 0.0f32;
    for k in 0..c {
        let d = x[base + k] - mean;
        sq += d * d;
    }
    let denom = (sq / f32::cast_from(c) + epsilon).sqrt();
    for k in 0..c {
        out[base + k] = (x[base + k] - mean) / denom * gamma[k] + beta[k];
    }
}

/// One unit per element.
#[cube(launch_unchecked, address_type = "dynamic")]
fn relu_kernel(x: &Tensor<f32>, out: &mut Tensor<f32>) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let v = x[ABSOLUTE_POS];
    // `v <= 0` is false for NaN, which passes through as in `max(x, 0)`'s Burn form
    out[ABSOLUTE_POS] = if v <= 0.0f32 { 0.0f32 } else { v };
}

/// One unit per buffer position of `x [N, C, H, W]` (any dense layout; `residual` and `out` have
/// the same): position `p` holds channel `(p / channel_stride) % channels`. `residual` is read
/// only when `has_residual` (otherwise any tensor, e.g. `x`).
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn channel_affine_kernel(
    x: &Tensor<f32>,
    scale: &Tensor<f32>,
    shift: &Tensor<f32>,
    residual: &Tensor<f32>,
    out: &mut Tensor<f32>,
    channels: usize,
    channel_stride: usize,
    #[comptime] has_residual: bool,
    #[comptime] relu: bool,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let ch = (ABSOLUTE_POS / channel_stride) % channels;
    let scaled = x[ABSOLUTE_POS] * scale[ch];
    let mut v = scaled + shift[ch];
    if has_residual {
        v += residual[ABSOLUTE_POS];
    }
    if relu && v <= 0.0f32 {
        v = 0.0f32;
    }
    out[ABSOLUTE_POS] = v;
}

fn address_type(tensors: &[&CubeTensor]) -> AddressType {
    tensors
        .iter()
        .map(|t| t.required_address_type())
        .max()
        .unwrap_or_default()
}

/// A dense row-major float32 tensor of `t`'s shape. (Burn's default allocation pads rows to an
/// alignment on CUDA; the kernels here index buffers densely.)
fn empty_dense(t: &CubeTensor) -> CubeTensor {
    empty_device_contiguous_dtype(
        t.client.clone(),
        t.device.clone(),
        t.meta.shape().clone(),
        DType::F32,
    )
}

/// Whether `t`'s elements fill its buffer exactly, one per position, in some order of its axes:
/// row-major, or a permutation of it such as the channels-last output of a convolution.
fn dense(t: &CubeTensor) -> bool {
    t.is_contiguous_buffer() && t.is_nonoverlapping()
}

/// `t` itself when [`dense`], else a row-major copy.
fn densify(t: CubeTensor) -> CubeTensor {
    if dense(&t) { t } else { into_contiguous(t) }
}

/// An uninitialised float32 tensor with dense `t`'s shape and strides (so elementwise kernels
/// keep their input's layout and the next op needs no copy).
fn empty_same_layout(t: &CubeTensor) -> CubeTensor {
    let bytes = t.meta.shape().num_elements() * DType::F32.size();
    CubeTensor::new(
        t.client.clone(),
        t.client.empty(bytes),
        (*t.meta).clone(),
        t.device.clone(),
        DType::F32,
    )
}

/// Cubes of one unit per element for `n` elements on `t`'s device.
fn elementwise(t: &CubeTensor, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&t.client, n);
    (calculate_cube_count_elemwise(&t.client, n, dim), dim)
}

fn check_f32(ts: &[&CubeTensor], op: &str) {
    for t in ts {
        assert_eq!(t.dtype, DType::F32, "fused {op}: float32 tensors only");
    }
}

/// A grid of `cubes` cubes over two axes.
fn grid(cubes: usize) -> CubeCount {
    let x = cubes.clamp(1, MAX_CUBES_X);
    CubeCount::Static(x as u32, cubes.div_ceil(x) as u32, 1)
}

/// Layer norm of each row of `x [R, C]`.
pub fn layer_norm(x: CubeTensor, gamma: CubeTensor, beta: CubeTensor, epsilon: f64) -> CubeTensor {
    check_f32(&[&x, &gamma, &beta], "layer norm");
    let [x, gamma, beta] = [x, gamma, beta].map(into_contiguous);
    let [rows, c] = x.meta.shape().dims::<2>();
    let out = empty_dense(&x);
    if rows == 0 || c == 0 {
        return out;
    }
    let addr = address_type(&[&x, &out]);
    let props = x.client.properties();
    // the smallest plane the device may use: a cube of that many units is one plane
    let plane = props.hardware.plane_size_min as usize;
    let plane_ops = props.features.plane.contains(Plane::Ops);
    let args = (
        x.into_tensor_arg(),
        gamma.into_tensor_arg(),
        beta.into_tensor_arg(),
        out.clone().into_tensor_arg(),
    );
    // SAFETY: cubes and units past the last row return before reading; every index is below
    // `row·c + c` for a row below `rows`, or below `c` for `gamma` and `beta`, which have those
    // sizes.
    unsafe {
        if plane_ops && plane >= 1 {
            let dim = CubeDim::new_1d(plane.min(c.next_power_of_two()) as u32);
            layer_norm_plane_kernel::launch_unchecked(
                &out.client,
                grid(rows),
                dim,
                addr,
                args.0,
                args.1,
                args.2,
                args.3,
                rows,
                epsilon as f32,
                c,
            );
        } else {
            let dim = CubeDim::new_1d(ROWS_PER_CUBE as u32);
            layer_norm_row_kernel::launch_unchecked(
                &out.client,
                grid(rows.div_ceil(ROWS_PER_CUBE)),
                dim,
                addr,
                args.0,
                args.1,
                args.2,
                args.3,
                rows,
                epsilon as f32,
                c,
            );
        }
    }
    out
}

/// `max(x, 0)`, elementwise.
pub fn relu(x: CubeTensor) -> CubeTensor {
    check_f32(&[&x], "relu");
    let x = densify(x);
    let out = empty_same_layout(&x);
    let n = x.meta.shape().num_elements();
    if n == 0 {
        return out;
    }
    let (count, dim) = elementwise(&x, n);
    let addr = address_type(&[&x, &out]);
    // SAFETY: units past the output return first; `x` and `out` are dense buffers of one size.
    unsafe {
        relu_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            x.into_tensor_arg(),
            out.clone().into_tensor_arg(),
        );
    }
    out
}

/// `x · scale[c] + shift[c] (+ residual) (then ReLU)` on `x [N, C, H, W]`.
pub fn channel_affine(
    x: CubeTensor,
    scale: CubeTensor,
    shift: CubeTensor,
    residual: Option<CubeTensor>,
    relu: bool,
) -> CubeTensor {
    check_f32(&[&x, &scale, &shift], "channel affine");
    let [scale, shift] = [scale, shift].map(into_contiguous);
    // walk the buffer in x's own layout when the residual shares it, else both row-major
    let (x, residual) = match residual {
        None => (densify(x), None),
        Some(r) => {
            check_f32(&[&r], "channel affine");
            assert_eq!(
                r.meta.shape(),
                x.meta.shape(),
                "fused channel affine: residual shape"
            );
            if dense(&x) && r.meta.strides() == x.meta.strides() && dense(&r) {
                (x, Some(r))
            } else {
                (into_contiguous(x), Some(into_contiguous(r)))
            }
        }
    };
    let c = x.meta.shape()[1];
    let channel_stride = x.meta.strides()[1];
    let out = empty_same_layout(&x);
    let n = x.meta.shape().num_elements();
    if n == 0 {
        return out;
    }
    let (count, dim) = elementwise(&x, n);
    let addr = address_type(&[&x, &out]);
    let has_residual = residual.is_some();
    let residual = residual.unwrap_or_else(|| x.clone());
    // SAFETY: units past the output return first; `x`, `residual` and `out` are dense buffers of
    // the same size, and the channel index is below `c`, the size of `scale` and `shift`.
    unsafe {
        channel_affine_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            x.into_tensor_arg(),
            scale.into_tensor_arg(),
            shift.into_tensor_arg(),
            residual.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            c,
            channel_stride,
            has_residual,
            relu,
        );
    }
    out
}
