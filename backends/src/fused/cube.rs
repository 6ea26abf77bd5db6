//! The fused kernels as CubeCL kernels (wgpu and CUDA), float32 only.
//!
//! - layer norm (of `x`, `x + residual` or `(x + bias) + residual`): one cube of one plane per row, a strided pass of
//!   each unit over the row and a plane sum for the mean, then the same for the variance (two
//!   passes, as Burn's composite does), and a third pass that writes
//!   `(x − mean) / sqrt(var + eps) · gamma + beta`; on devices without plane operations one unit
//!   per row;
//! - softmax over rows (optionally of `x + bias`): the same layout, a plane maximum, then a plane
//!   sum of the exponentials;
//! - ReLU, a linear layer's bias add with what follows it (ReLU, GELU, a gated residual, zeroed
//!   padding rows, a product with another biased output), the per-channel affine map (with optional
//!   residual and ReLU), the box refinement `sigmoid(delta + inverse_sigmoid(reference))`
//!   (optionally with a bias on `delta`), the split of a projection into attention heads and the
//!   deformable attention's sampling locations: one unit per output element;
//! - the sine embedding of boxes: one unit per output element, and for its gradient one unit per
//!   box coordinate;
//! - backward: the layer norm's and the softmax's input gradients (row kernels as above), the
//!   ReLU's and the head split's (one unit per element);
//! - the optimiser: AdamW (one unit per parameter element, reading strided parameters and
//!   gradients in place) and the partial sums of squares of the gradient norm (one unit per
//!   strided slice of a tensor, written into one buffer shared by all tensors).

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cube;
use cubecl::features::Plane;
use cubecl::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cube_util::{address_type, elementwise};

/// Most cubes along one axis of a launch grid (WebGPU's limit is 65535).
const MAX_CUBES_X: usize = 32768;
/// Rows per cube of the one-unit-per-row kernels (layer norm, softmax).
const ROWS_PER_CUBE: usize = 64;

/// Index of this cube in a two-axis grid (`CUBE_COUNT_X` cubes per grid row).
#[cube]
fn cube_index() -> usize {
    CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
}

/// The layer norm's input at `i` (column `k`): `x[i]`, plus `bias[k]` first when `has_bias`,
/// plus `residual[i]` when `has_residual` (`(x + bias) + residual`, as a linear layer's output
/// added to the residual stream).
#[cube]
fn ln_input(
    x: &Tensor<f32>,
    residual: &Tensor<f32>,
    bias: &Tensor<f32>,
    i: usize,
    k: usize,
    #[comptime] has_residual: bool,
    #[comptime] has_bias: bool,
) -> f32 {
    let mut v = x[i];
    if has_bias {
        v += bias[k];
    }
    if has_residual {
        v += residual[i];
    }
    v
}

/// The row this unit works on, its first column and its column step: one cube of one plane per
/// row when `plane` (its units take every `CUBE_DIM`-th element of the row, so reads are
/// coalesced, and plane operations combine them), else one unit per row, walking it in order.
#[cube]
fn row_slot(#[comptime] plane: bool) -> (usize, usize, usize) {
    if plane {
        (cube_index(), UNIT_POS_X as usize, CUBE_DIM_X as usize)
    } else {
        (
            cube_index() * CUBE_DIM_X as usize + UNIT_POS_X as usize,
            0usize,
            1usize,
        )
    }
}

/// The sum over a row of the units' partial sums `v` (see [`row_slot`]).
#[cube]
fn row_sum(v: f32, #[comptime] plane: bool) -> f32 {
    if plane { plane_sum(v) } else { v }
}

/// Layer norm of each row of `x [rows, c]` (plus `bias [c]` when `has_bias` and `residual` when
/// `has_residual`; otherwise any tensor, e.g. `x`), laid out as [`row_slot`] says. With
/// `has_plus`, `out` has `2·rows` rows and the second half gets the norm plus `plus [rows, c]`
/// (a positional query added to the layer's output).
#[allow(clippy::too_many_arguments)]
#[cube(launch_unchecked, address_type = "dynamic")]
fn layer_norm_kernel(
    x: &Tensor<f32>,
    residual: &Tensor<f32>,
    bias: &Tensor<f32>,
    gamma: &Tensor<f32>,
    beta: &Tensor<f32>,
    plus: &Tensor<f32>,
    out: &mut Tensor<f32>,
    rows: usize,
    epsilon: f32,
    #[comptime] c: usize,
    #[comptime] has_residual: bool,
    #[comptime] has_bias: bool,
    #[comptime] has_plus: bool,
    #[comptime] plane: bool,
) {
    let (row, first, step) = row_slot(plane);
    // in the plane layout the whole cube leaves together (its units share the row)
    if row >= rows {
        terminate!();
    }
    let base = row * c;
    let mut sum = 0.0f32;
    let mut i = first;
    while i < c {
        sum += ln_input(x, residual, bias, base + i, i, has_residual, has_bias);
        i += step;
    }
    let mean = row_sum(sum, plane) / f32::cast_from(c);
    let mut sq = 0.0f32;
    let mut i = first;
    while i < c {
        let d = ln_input(x, residual, bias, base + i, i, has_residual, has_bias) - mean;
        sq += d * d;
        i += step;
    }
    let denom = (row_sum(sq, plane) / f32::cast_from(c) + epsilon).sqrt();
    let mut i = first;
    while i < c {
        let y = (ln_input(x, residual, bias, base + i, i, has_residual, has_bias) - mean) / denom
            * gamma[i]
            + beta[i];
        out[base + i] = y;
        if has_plus {
            out[rows * c + base + i] = y + plus[base + i];
        }
        i += step;
    }
}

/// Backward of [`layer_norm_kernel`] for the output gradient `grad`, laid out the same way:
/// `d_x = (g·γ − mean(g·γ) − x̂·mean(g·γ·x̂)) / σ` (the input gradient of the normalised sum) and
/// `g_xhat = g·x̂` (whose column sums are `∂γ`), the row statistics recomputed as the forward
/// computes them.
#[allow(clippy::too_many_arguments)]
#[cube(launch_unchecked, address_type = "dynamic")]
fn layer_norm_backward_kernel(
    x: &Tensor<f32>,
    residual: &Tensor<f32>,
    bias: &Tensor<f32>,
    gamma: &Tensor<f32>,
    grad: &Tensor<f32>,
    d_x: &mut Tensor<f32>,
    g_xhat: &mut Tensor<f32>,
    rows: usize,
    epsilon: f32,
    #[comptime] c: usize,
    #[comptime] has_residual: bool,
    #[comptime] has_bias: bool,
    #[comptime] plane: bool,
) {
    let (row, first, step) = row_slot(plane);
    if row >= rows {
        terminate!();
    }
    let base = row * c;
    let n = f32::cast_from(c);
    let mut sum = 0.0f32;
    let mut i = first;
    while i < c {
        sum += ln_input(x, residual, bias, base + i, i, has_residual, has_bias);
        i += step;
    }
    let mean = row_sum(sum, plane) / n;
    let mut sq = 0.0f32;
    let mut i = first;
    while i < c {
        let d = ln_input(x, residual, bias, base + i, i, has_residual, has_bias) - mean;
        sq += d * d;
        i += step;
    }
    let sigma = (row_sum(sq, plane) / n + epsilon).sqrt();
    let mut sa = 0.0f32;
    let mut sb = 0.0f32;
    let mut i = first;
    while i < c {
        let xh = (ln_input(x, residual, bias, base + i, i, has_residual, has_bias) - mean) / sigma;
        let gg = grad[base + i] * gamma[i];
        sa += gg;
        sb += gg * xh;
        i += step;
    }
    let a = row_sum(sa, plane) / n;
    let b = row_sum(sb, plane) / n;
    let mut i = first;
    while i < c {
        let xh = (ln_input(x, residual, bias, base + i, i, has_residual, has_bias) - mean) / sigma;
        let g = grad[base + i];
        d_x[base + i] = (g * gamma[i] - a - xh * b) / sigma;
        g_xhat[base + i] = g * xh;
        i += step;
    }
}

/// `x[i] + bias[(i / period) · len + i mod len]` when `has_bias`, else `x[i]`: a bias of `len`
/// values repeating along the flattened tensor (per column for a bias of the row width, per row
/// group for a longer one), a block of its own for each `period` elements (one block when
/// `period` is the tensor's size).
#[cube]
fn biased(
    x: &Tensor<f32>,
    bias: &Tensor<f32>,
    i: usize,
    len: usize,
    period: usize,
    #[comptime] has_bias: bool,
) -> f32 {
    if has_bias {
        x[i] + bias[(i / period) * len + i % len]
    } else {
        x[i]
    }
}

/// Softmax of each row of `x [rows, c]` (laid out as [`row_slot`] says):
/// `exp(x − max) / Σ exp(x − max)`, as Burn's composite.
#[allow(clippy::too_many_arguments)]
#[cube(launch_unchecked, address_type = "dynamic")]
fn softmax_kernel(
    x: &Tensor<f32>,
    bias: &Tensor<f32>,
    out: &mut Tensor<f32>,
    rows: usize,
    len: usize,
    period: usize,
    #[comptime] c: usize,
    #[comptime] has_bias: bool,
    #[comptime] plane: bool,
) {
    let (row, first, step) = row_slot(plane);
    if row >= rows {
        terminate!();
    }
    let base = row * c;
    // the smallest finite float32 starts the running maximum (WGSL has no infinity literal)
    let mut m = f32::new(-3.402_823_5e38);
    let mut i = first;
    while i < c {
        m = max(m, biased(x, bias, base + i, len, period, has_bias));
        i += step;
    }
    let m = if plane { plane_max(m) } else { m };
    let mut sum = 0.0f32;
    let mut i = first;
    while i < c {
        sum += (biased(x, bias, base + i, len, period, has_bias) - m).exp();
        i += step;
    }
    let sum = row_sum(sum, plane);
    let mut i = first;
    while i < c {
        out[base + i] = (biased(x, bias, base + i, len, period, has_bias) - m).exp() / sum;
        i += step;
    }
}

/// One unit per row of `x [rows, c]`: `x / max(sqrt(Σ x²), 1e-12) / 2`, in the model's order of
/// operations (the row's L2 norm clamped, the division, then the halving).
#[cube(launch_unchecked, address_type = "dynamic")]
fn l2_halve_rows_kernel(x: &Tensor<f32>, out: &mut Tensor<f32>, rows: usize, c: usize) {
    let row = cube_index() * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    if row >= rows {
        terminate!();
    }
    let base = row * c;
    let mut sum = 0.0f32;
    for k in 0..c {
        let v = x[base + k];
        sum += v * v;
    }
    let mut norm = sum.sqrt();
    // `clamp_min`: NaN passes through
    if norm < 1.0e-12f32 {
        norm = 1.0e-12f32;
    }
    for k in 0..c {
        out[base + k] = x[base + k] / norm / 2.0f32;
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

/// The ReLU's input gradient from its output `y`: `0` where `y <= 0`, else `grad` (Burn's
/// `relu_backward`: NaN outputs pass the gradient). One unit per element.
#[cube(launch_unchecked, address_type = "dynamic")]
fn relu_backward_kernel(y: &Tensor<f32>, grad: &Tensor<f32>, out: &mut Tensor<f32>) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    out[ABSOLUTE_POS] = if y[ABSOLUTE_POS] <= 0.0f32 {
        0.0f32
    } else {
        grad[ABSOLUTE_POS]
    };
}

/// The softmax's input gradient from its output `y [rows, c]` (laid out as [`row_slot`] says):
/// `y · (g − Σ_row g·y)`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn softmax_backward_kernel(
    y: &Tensor<f32>,
    grad: &Tensor<f32>,
    out: &mut Tensor<f32>,
    rows: usize,
    #[comptime] c: usize,
    #[comptime] plane: bool,
) {
    let (row, first, step) = row_slot(plane);
    if row >= rows {
        terminate!();
    }
    let base = row * c;
    let mut dot = 0.0f32;
    let mut i = first;
    while i < c {
        dot += grad[base + i] * y[base + i];
        i += step;
    }
    let dot = row_sum(dot, plane);
    let mut i = first;
    while i < c {
        out[base + i] = y[base + i] * (grad[base + i] - dot);
        i += step;
    }
}

/// `1 / √(2π)`, rounded to float32 as the composite rounds it.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `bias_epilogue_kernel`: `max(v, 0)`.
pub const RELU: u32 = 0;
/// `bias_epilogue_kernel`: `v · (erf(v / √2) + 1) / 2` (Burn's exact GELU, its order of
/// operations).
pub const GELU: u32 = 1;
/// `bias_epilogue_kernel`: `a + v · b[0]` (a residual plus a gated delta).
pub const GATE: u32 = 2;
/// `bias_epilogue_kernel`: `0` on rows `r` with `b[r] ≠ 0` (padding), else `v`.
pub const ZERO_ROWS: u32 = 3;
/// `bias_epilogue_kernel`: `v · (a + b[col])` (the product of two biased outputs).
pub const PRODUCT: u32 = 4;
/// `bias_epilogue_kernel`: `a · gelu'(v)`, the exact derivative
/// `(erf(v / √2) + 1) / 2 + v · exp(−v² / 2) / √(2π)` times the output gradient `a` (GELU's
/// backward, as PyTorch and flex compute it).
pub const GELU_GRAD: u32 = 5;

/// One unit per element of `x [R, C]` (row-major): `v = x + bias[col]`, then what `kind` says
/// ([`RELU`], [`GELU`], [`GATE`], [`ZERO_ROWS`], [`PRODUCT`], [`GELU_GRAD`]) with the operands
/// `a` and `b`
/// (any tensor where `kind` reads none).
#[cube(launch_unchecked, address_type = "dynamic")]
fn bias_epilogue_kernel(
    x: &Tensor<f32>,
    bias: &Tensor<f32>,
    a: &Tensor<f32>,
    b: &Tensor<f32>,
    out: &mut Tensor<f32>,
    c: usize,
    #[comptime] kind: u32,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let col = ABSOLUTE_POS % c;
    let v = x[ABSOLUTE_POS] + bias[col];
    let mut y = v;
    if comptime![kind == RELU] {
        // `v <= 0` is false for NaN, which passes through as in `max(v, 0)`'s Burn form
        y = if v <= 0.0f32 { 0.0f32 } else { v };
    } else if comptime![kind == GELU] {
        y = (v * (Erf::erf(v / core::f32::consts::SQRT_2) + 1.0f32)) / 2.0f32;
    } else if comptime![kind == GATE] {
        y = a[ABSOLUTE_POS] + v * b[0];
    } else if comptime![kind == ZERO_ROWS] {
        y = if b[ABSOLUTE_POS / c] != 0.0f32 {
            0.0f32
        } else {
            v
        };
    } else if comptime![kind == PRODUCT] {
        y = v * (a[ABSOLUTE_POS] + b[col]);
    } else if comptime![kind == GELU_GRAD] {
        let cdf = (Erf::erf(v / core::f32::consts::SQRT_2) + 1.0f32) * 0.5f32;
        let pdf = (v * v * -0.5f32).exp() * INV_SQRT_2PI;
        y = a[ABSOLUTE_POS] * (cdf + v * pdf);
    }
    out[ABSOLUTE_POS] = y;
}

/// One unit per element of the output: `(x + bias) · scale` for `x [B, N, H, E]` (row-major,
/// `bias [H·E]`) written as `[B, H, N, E]`, or as `[B, H, E, N]` when `transposed`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn heads_kernel(
    x: &Tensor<f32>,
    bias: &Tensor<f32>,
    out: &mut Tensor<f32>,
    n: usize,
    h: usize,
    e: usize,
    scale: f32,
    #[comptime] transposed: bool,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let p = ABSOLUTE_POS;
    let (token, channel, rest) = if transposed {
        (p % n, (p / n) % e, p / (n * e))
    } else {
        ((p / e) % n, p % e, p / (n * e))
    };
    let head = rest % h;
    let batch = rest / h;
    let col = head * e + channel;
    out[p] = (x[(batch * n + token) * h * e + col] + bias[col]) * scale;
}

/// Backward of [`heads_kernel`]: one unit per element of the row-major `[B, N, H, E]` output,
/// `grad · scale` read from `grad [B, H, N, E]` (or `[B, H, E, N]` when `transposed`) through
/// its strides.
#[cube(launch_unchecked, address_type = "dynamic")]
fn heads_backward_kernel(
    grad: &Tensor<f32>,
    out: &mut Tensor<f32>,
    n: usize,
    h: usize,
    e: usize,
    scale: f32,
    #[comptime] transposed: bool,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let p = ABSOLUTE_POS;
    let channel = p % e;
    let head = (p / e) % h;
    let token = (p / (e * h)) % n;
    let batch = p / (e * h * n);
    let (i2, i3) = if transposed {
        (channel, token)
    } else {
        (token, channel)
    };
    let g = grad[batch * grad.stride(0)
        + head * grad.stride(1)
        + i2 * grad.stride(2)
        + i3 * grad.stride(3)];
    out[p] = g * scale;
}

/// One unit per element of the sampling locations `[N, Lq, M, L, P, 2]`: the offsets `off`
/// (same shape, row-major) plus their repeating `bias` (`M·L·P·2`), placed around the reference
/// `ref [N, Lq, L, R]`: for points (`R = 2`) `ref + (off + bias) / normalizer[level]`
/// (`normalizer [L·2]`: each level's width and height), for boxes (`R = 4`)
/// `ref.xy + (off + bias) / P · ref.wh · 0.5`, in the official order of operations.
#[cube(launch_unchecked, address_type = "dynamic")]
fn sampling_locations_kernel(
    off: &Tensor<f32>,
    bias: &Tensor<f32>,
    reference: &Tensor<f32>,
    normalizer: &Tensor<f32>,
    out: &mut Tensor<f32>,
    m: usize,
    l: usize,
    p: usize,
    #[comptime] boxes: bool,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let xy = i % 2;
    let level = (i / (2 * p)) % l;
    // over N·Lq: the batch folded into the queries
    let query = i / (2 * p * l * m);
    let v = off[i] + bias[i % bias.len()];
    if boxes {
        let r = (query * l + level) * 4 + xy;
        out[i] = reference[r] + v / f32::cast_from(p) * reference[r + 2] * 0.5f32;
    } else {
        let r = (query * l + level) * 2 + xy;
        out[i] = reference[r] + v / normalizer[level * 2 + xy];
    }
}

/// One unit per element of `x [R·n]` (rows of `n`): `(x − sum[row] / n)²`, the squared deviation
/// from the row mean given the row sums.
#[cube(launch_unchecked, address_type = "dynamic")]
fn squared_deviation_kernel(x: &Tensor<f32>, sum: &Tensor<f32>, out: &mut Tensor<f32>, n: usize) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let mean = sum[ABSOLUTE_POS / n] / f32::cast_from(n);
    let d = x[ABSOLUTE_POS] - mean;
    out[ABSOLUTE_POS] = d * d;
}

/// One unit per element of a row-major `x [B, C, H, W]` in `G` groups of `n = C/G·H·W`
/// values: `(x − mean) / sqrt(var + epsilon) · gamma[c] + beta[c]` with the group's
/// `mean = sum / n` and `var = sq_sum / n`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn group_norm_apply_kernel(
    x: &Tensor<f32>,
    sum: &Tensor<f32>,
    sq_sum: &Tensor<f32>,
    gamma: &Tensor<f32>,
    beta: &Tensor<f32>,
    out: &mut Tensor<f32>,
    n: usize,
    hw: usize,
    c: usize,
    epsilon: f32,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let row = ABSOLUTE_POS / n;
    let count = f32::cast_from(n);
    let mean = sum[row] / count;
    let var = sq_sum[row] / count;
    let ch = (ABSOLUTE_POS / hw) % c;
    out[ABSOLUTE_POS] = (x[ABSOLUTE_POS] - mean) / (var + epsilon).sqrt() * gamma[ch] + beta[ch];
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

/// One unit per element: `sigmoid(delta + inverse_sigmoid(reference))`, with the official
/// `inverse_sigmoid` (`log(x1 / x2)`, `x = clamp(r, 0, 1)`, `x1 = max(x, 1e-5)`,
/// `x2 = max(1 − x, 1e-5)`) and Burn's sigmoid (`exp(−log(exp(−v) + 1))`), op for op.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::manual_clamp)] // comparisons as Burn's clamp: NaN passes through
fn refine_boxes_kernel(
    delta: &Tensor<f32>,
    bias: &Tensor<f32>,
    reference: &Tensor<f32>,
    out: &mut Tensor<f32>,
    #[comptime] has_bias: bool,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let r = reference[ABSOLUTE_POS];
    let mut x = r;
    if r < 0.0f32 {
        x = 0.0f32;
    }
    if r > 1.0f32 {
        x = 1.0f32;
    }
    let x1 = if x < 1.0e-5f32 { 1.0e-5f32 } else { x };
    let t = -x + 1.0f32;
    let x2 = if t < 1.0e-5f32 { 1.0e-5f32 } else { t };
    let v = biased(delta, bias, ABSOLUTE_POS, bias.len(), out.len(), has_bias) + (x1 / x2).ln();
    out[ABSOLUTE_POS] = (-((-v).exp() + 1.0f32).ln()).exp();
}

/// The box coordinate (0 = x, 1 = y, 2 = w, 3 = h) of output block `j` of the sine embedding
/// (blocks in y, x, w, h order; the map is its own inverse).
#[cube]
fn sine_block_coord(j: usize) -> usize {
    if j < 2 { 1 - j } else { j }
}

/// One unit per output element of `out [B, Q, 4n]` for boxes `pos [B, Q, 4]`: block `j` holds
/// coordinate `sine_block_coord(j)`; channel `i` of a block is `sin` (even `i`) or `cos` (odd)
/// of `pos · scale / dim_t[i]`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::manual_is_multiple_of)] // the cube macro translates `%`
fn sine_embed_kernel(
    pos: &Tensor<f32>,
    dim_t: &Tensor<f32>,
    out: &mut Tensor<f32>,
    n: usize,
    scale: f32,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS % n;
    let j = (ABSOLUTE_POS / n) % 4;
    let bq = ABSOLUTE_POS / (4 * n);
    let v = pos[bq * 4 + sine_block_coord(j)] * scale / dim_t[i];
    out[ABSOLUTE_POS] = if i % 2 == 0 { v.sin() } else { v.cos() };
}

/// One unit per box coordinate: the gradient of [`sine_embed_kernel`] for the output gradient
/// `grad [B, Q, 4n]`, `Σ_i grad_i · (cos v_i | −sin v_i) / dim_t[i] · scale`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::manual_is_multiple_of)] // the cube macro translates `%`
fn sine_embed_backward_kernel(
    pos: &Tensor<f32>,
    dim_t: &Tensor<f32>,
    grad: &Tensor<f32>,
    out: &mut Tensor<f32>,
    n: usize,
    scale: f32,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let c = ABSOLUTE_POS % 4;
    let bq = ABSOLUTE_POS / 4;
    let base = (bq * 4 + sine_block_coord(c)) * n;
    let p = pos[ABSOLUTE_POS] * scale;
    let mut acc = 0.0f32;
    for i in 0..n {
        let v = p / dim_t[i];
        let d = if i % 2 == 0 { v.cos() } else { -v.sin() };
        acc += grad[base + i] * d / dim_t[i];
    }
    out[ABSOLUTE_POS] = acc * scale;
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

/// `bias` checked as a repeating bias of `x` (float32, its size dividing `x`'s) and made dense.
fn repeating_bias(bias: CubeTensor, x: &CubeTensor, op: &str) -> CubeTensor {
    check_f32(&[&bias], op);
    let (len, n) = (
        bias.meta.shape().num_elements(),
        x.meta.shape().num_elements(),
    );
    assert!(
        len > 0 && n % len == 0,
        "fused {op}: a bias of {len} does not repeat over {n} elements"
    );
    into_contiguous(bias)
}

fn check_f32(ts: &[&CubeTensor], op: &str) {
    for t in ts {
        assert_eq!(t.dtype, DType::F32, "fused {op}: float32 tensors only");
    }
}

/// The launch of one unit per element of `out` (cubes, cube size and the address type for
/// `out` and `inputs`), or `None` when `out` is empty.
fn per_output_element(
    out: &CubeTensor,
    inputs: &[&CubeTensor],
) -> Option<(CubeCount, CubeDim, AddressType)> {
    let n = out.meta.shape().num_elements();
    if n == 0 {
        return None;
    }
    let (count, dim) = elementwise(out, n);
    let mut all = inputs.to_vec();
    all.push(out);
    Some((count, dim, address_type(&all)))
}

/// A grid of `cubes` cubes over two axes.
fn grid(cubes: usize) -> CubeCount {
    let x = cubes.clamp(1, MAX_CUBES_X);
    CubeCount::Static(x as u32, cubes.div_ceil(x) as u32, 1)
}

/// An operand of the layer norm of `x [R, C]` checked and made dense: float32, with `C` elements
/// when `per_column` (a bias), else `x`'s shape (a residual, a tensor added to the output).
fn row_operand(
    t: CubeTensor,
    x: &CubeTensor,
    per_column: bool,
    op: &str,
    what: &str,
) -> CubeTensor {
    check_f32(&[&t], op);
    let fits = if per_column {
        t.meta.shape().num_elements() == x.meta.shape()[1]
    } else {
        t.meta.shape() == x.meta.shape()
    };
    assert!(
        fits,
        "fused {op}: {what} ({:?} for x of {:?})",
        t.meta.shape(),
        x.meta.shape()
    );
    into_contiguous(t)
}

/// Layer norm of each row of `x [R, C]`, or of `(x + bias) + residual` with what is given
/// (`bias [C]`, `residual` of `x`'s shape); with `plus` (`x`'s shape) the result has `2R` rows,
/// the norm and then the norm plus `plus`.
pub fn layer_norm(
    x: CubeTensor,
    residual: Option<CubeTensor>,
    bias: Option<CubeTensor>,
    gamma: CubeTensor,
    beta: CubeTensor,
    plus: Option<CubeTensor>,
    epsilon: f64,
) -> CubeTensor {
    check_f32(&[&x, &gamma, &beta], "layer norm");
    let [x, gamma, beta] = [x, gamma, beta].map(into_contiguous);
    let op = "layer norm";
    let residual = residual.map(|r| row_operand(r, &x, false, op, "residual shape"));
    let bias = bias.map(|b| row_operand(b, &x, true, op, "bias size"));
    let plus = plus.map(|p| row_operand(p, &x, false, op, "shape of the added tensor"));
    let (has_residual, has_bias, has_plus) = (residual.is_some(), bias.is_some(), plus.is_some());
    let residual = residual.unwrap_or_else(|| x.clone());
    let bias = bias.unwrap_or_else(|| gamma.clone());
    let plus = plus.unwrap_or_else(|| x.clone());
    let [rows, c] = x.meta.shape().dims::<2>();
    let out = if has_plus {
        empty_device_contiguous_dtype(
            x.client.clone(),
            x.device.clone(),
            [2 * rows, c].into(),
            DType::F32,
        )
    } else {
        empty_dense(&x)
    };
    if rows == 0 || c == 0 {
        return out;
    }
    let addr = address_type(&[&x, &out]);
    let (count, dim, plane) = row_launch(&x, rows, c);
    // SAFETY: cubes and units past the last row return before reading; every index is below
    // `row·c + c` for a row below `rows` (`2·rows·c` for `out` with `plus`), or below `c` for
    // `bias`, `gamma` and `beta`, which have those sizes.
    unsafe {
        layer_norm_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            x.into_tensor_arg(),
            residual.into_tensor_arg(),
            bias.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            plus.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows,
            epsilon as f32,
            c,
            has_residual,
            has_bias,
            has_plus,
            plane,
        );
    }
    out
}

/// Backward of [`layer_norm`] (same optional `residual` and `bias`) for the output gradient
/// `grad [R, C]`: `(d_x, g_xhat)`, the gradient of the normalised input and `grad · x̂`, whose
/// column sums are `∂γ` (see `layer_norm_backward_kernel`).
pub fn layer_norm_backward(
    x: CubeTensor,
    residual: Option<CubeTensor>,
    bias: Option<CubeTensor>,
    gamma: CubeTensor,
    grad: CubeTensor,
    epsilon: f64,
) -> (CubeTensor, CubeTensor) {
    check_f32(&[&x, &gamma, &grad], "layer norm backward");
    let [x, gamma, grad] = [x, gamma, grad].map(into_contiguous);
    let [rows, c] = x.meta.shape().dims::<2>();
    assert_eq!(
        grad.meta.shape(),
        x.meta.shape(),
        "fused layer norm backward: gradient shape"
    );
    assert_eq!(
        gamma.meta.shape().num_elements(),
        c,
        "fused layer norm backward: gamma size"
    );
    let op = "layer norm backward";
    let residual = residual.map(|r| row_operand(r, &x, false, op, "residual shape"));
    let bias = bias.map(|b| row_operand(b, &x, true, op, "bias size"));
    let (has_residual, has_bias) = (residual.is_some(), bias.is_some());
    let residual = residual.unwrap_or_else(|| x.clone());
    let bias = bias.unwrap_or_else(|| gamma.clone());
    let d_x = empty_dense(&x);
    let g_xhat = empty_dense(&x);
    if rows == 0 || c == 0 {
        return (d_x, g_xhat);
    }
    let addr = address_type(&[&x, &grad, &d_x]);
    let (count, dim, plane) = row_launch(&x, rows, c);
    // SAFETY: cubes and units past the last row return before reading; every index is below
    // `row·c + c` for a row below `rows`, or below `c` for `bias` and `gamma`, which have that
    // size; every tensor of `[R, C]` is dense.
    unsafe {
        layer_norm_backward_kernel::launch_unchecked(
            &d_x.client,
            count,
            dim,
            addr,
            x.into_tensor_arg(),
            residual.into_tensor_arg(),
            bias.into_tensor_arg(),
            gamma.into_tensor_arg(),
            grad.into_tensor_arg(),
            d_x.clone().into_tensor_arg(),
            g_xhat.clone().into_tensor_arg(),
            rows,
            epsilon as f32,
            c,
            has_residual,
            has_bias,
            plane,
        );
    }
    (d_x, g_xhat)
}

/// The ReLU's input gradient from its output `y` and the output gradient `grad` (same shape).
pub fn relu_backward(y: CubeTensor, grad: CubeTensor) -> CubeTensor {
    check_f32(&[&y, &grad], "relu backward");
    assert_eq!(
        y.meta.shape(),
        grad.meta.shape(),
        "fused relu backward: gradient shape"
    );
    // walk both buffers in `y`'s layout when `grad` shares it, else both row-major
    let (y, grad) = if dense(&y) && dense(&grad) && y.meta.strides() == grad.meta.strides() {
        (y, grad)
    } else {
        (into_contiguous(y), into_contiguous(grad))
    };
    let out = empty_same_layout(&y);
    let Some((count, dim, addr)) = per_output_element(&out, &[&y, &grad]) else {
        return out;
    };
    // SAFETY: units past the output return first; `y`, `grad` and `out` are dense buffers of
    // one size in one layout.
    unsafe {
        relu_backward_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            y.into_tensor_arg(),
            grad.into_tensor_arg(),
            out.clone().into_tensor_arg(),
        );
    }
    out
}

/// The softmax's input gradient from its output `y [R, C]` and the output gradient `grad`:
/// `y · (g − Σ_row g·y)`.
pub fn softmax_backward(y: CubeTensor, grad: CubeTensor) -> CubeTensor {
    check_f32(&[&y, &grad], "softmax backward");
    let [y, grad] = [y, grad].map(into_contiguous);
    assert_eq!(
        y.meta.shape(),
        grad.meta.shape(),
        "fused softmax backward: gradient shape"
    );
    let [rows, c] = y.meta.shape().dims::<2>();
    let out = empty_dense(&y);
    if rows == 0 || c == 0 {
        return out;
    }
    let addr = address_type(&[&y, &grad, &out]);
    let (count, dim, plane) = row_launch(&y, rows, c);
    // SAFETY: cubes and units past the last row return before reading; every index is below
    // `row·c + c` for a row below `rows`, and all three tensors are dense `[R, C]`.
    unsafe {
        softmax_backward_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            y.into_tensor_arg(),
            grad.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows,
            c,
            plane,
        );
    }
    out
}

/// `max(x, 0)`, elementwise.
pub fn relu(x: CubeTensor) -> CubeTensor {
    check_f32(&[&x], "relu");
    let x = densify(x);
    let out = empty_same_layout(&x);
    let Some((count, dim, addr)) = per_output_element(&out, &[&x]) else {
        return out;
    };
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

/// `x / max(‖x‖, 1e-12) / 2` for each row of `x [R, C]` (the heads' normalised, halved text).
pub fn l2_halve_rows(x: CubeTensor) -> CubeTensor {
    check_f32(&[&x], "l2 rows");
    let x = into_contiguous(x);
    let [rows, c] = x.meta.shape().dims::<2>();
    let out = empty_dense(&x);
    if rows == 0 || c == 0 {
        return out;
    }
    let addr = address_type(&[&x, &out]);
    // SAFETY: units past the last row return first; every index is below `row·c + c` for a
    // row below `rows`.
    unsafe {
        l2_halve_rows_kernel::launch_unchecked(
            &out.client,
            grid(rows.div_ceil(ROWS_PER_CUBE)),
            CubeDim::new_1d(ROWS_PER_CUBE as u32),
            addr,
            x.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows,
            c,
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
    let Some((count, dim, addr)) = per_output_element(&out, &[&x]) else {
        return out;
    };
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

/// `sigmoid(delta + inverse_sigmoid(reference))`, elementwise (same shapes).
pub fn refine_boxes(
    delta: CubeTensor,
    bias: Option<CubeTensor>,
    reference: CubeTensor,
) -> CubeTensor {
    check_f32(&[&delta, &reference], "box refinement");
    assert_eq!(
        delta.meta.shape(),
        reference.meta.shape(),
        "fused box refinement: shapes"
    );
    let [delta, reference] = [delta, reference].map(into_contiguous);
    let bias = bias.map(|b| repeating_bias(b, &delta, "box refinement"));
    let has_bias = bias.is_some();
    let bias = bias.unwrap_or_else(|| delta.clone());
    let out = empty_dense(&delta);
    let Some((count, dim, addr)) = per_output_element(&out, &[&delta, &reference]) else {
        return out;
    };
    // SAFETY: units past the output return first; the three tensors are dense and of one size,
    // and the bias index is taken modulo its size.
    unsafe {
        refine_boxes_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            delta.into_tensor_arg(),
            bias.into_tensor_arg(),
            reference.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            has_bias,
        );
    }
    out
}

/// The sine embedding of boxes `pos [B, Q, 4]` with frequencies `dim_t [n]`: `[B, Q, 4n]`.
pub fn sine_embed(pos: CubeTensor, dim_t: CubeTensor, scale: f32) -> CubeTensor {
    check_f32(&[&pos, &dim_t], "sine embedding");
    let [pos, dim_t] = [pos, dim_t].map(into_contiguous);
    let [b, q, four] = pos.meta.shape().dims::<3>();
    assert_eq!(four, 4, "fused sine embedding: boxes have 4 coordinates");
    let n = dim_t.meta.shape().num_elements();
    let out = empty_device_contiguous_dtype(
        pos.client.clone(),
        pos.device.clone(),
        burn::tensor::Shape::new([b, q, 4 * n]),
        DType::F32,
    );
    let Some((count, dim, addr)) = per_output_element(&out, &[&pos]) else {
        return out;
    };
    // SAFETY: units past the output return first; reads are of box `bq` (below B·Q) and
    // frequency `i` (below n).
    unsafe {
        sine_embed_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            pos.into_tensor_arg(),
            dim_t.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            n,
            scale,
        );
    }
    out
}

/// The gradient of [`sine_embed`] with respect to `pos`, for the output gradient `grad`.
pub fn sine_embed_backward(
    pos: CubeTensor,
    dim_t: CubeTensor,
    grad: CubeTensor,
    scale: f32,
) -> CubeTensor {
    check_f32(&[&pos, &dim_t, &grad], "sine embedding gradient");
    let [pos, dim_t, grad] = [pos, dim_t, grad].map(into_contiguous);
    let n = dim_t.meta.shape().num_elements();
    let out = empty_dense(&pos);
    let total = pos.meta.shape().num_elements();
    assert_eq!(
        grad.meta.shape().num_elements(),
        total * n,
        "fused sine embedding gradient: shapes"
    );
    let Some((count, dim, addr)) = per_output_element(&out, &[&pos, &grad]) else {
        return out;
    };
    // SAFETY: units past the output return first; unit `p` reads `grad` in its box's block,
    // below `(p / 4 + 1) · 4n`, and frequencies below n.
    unsafe {
        sine_embed_backward_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            pos.into_tensor_arg(),
            dim_t.into_tensor_arg(),
            grad.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            n,
            scale,
        );
    }
    out
}

/// Whether the row kernels may use plane operations (see [`set_plane_rows`]).
static PLANE_ROWS: AtomicBool = AtomicBool::new(true);

/// Lets the row kernels (layer norm, softmax and their backward passes) use one plane per row
/// on devices with plane operations (`true`, the default), or makes them use one unit per row on
/// every device (`false`: the layout of devices without plane operations, e.g. to test it on a
/// device that has them).
pub fn set_plane_rows(enabled: bool) {
    PLANE_ROWS.store(enabled, Ordering::Relaxed);
}

/// How a row kernel over `rows` rows of `c` columns is launched on `t`'s device: its cubes, their
/// shape and whether it is one plane per row (devices with plane operations: one cube of one
/// plane, no wider than the row, per row) or one unit per row.
fn row_launch(t: &CubeTensor, rows: usize, c: usize) -> (CubeCount, CubeDim, bool) {
    let props = t.client.properties();
    // the smallest plane the device may use: a cube of that many units is one plane
    let plane = props.hardware.plane_size_min as usize;
    if PLANE_ROWS.load(Ordering::Relaxed) && props.features.plane.contains(Plane::Ops) && plane >= 1
    {
        let units = plane.min(c.next_power_of_two());
        (grid(rows), CubeDim::new_1d(units as u32), true)
    } else {
        let count = grid(rows.div_ceil(ROWS_PER_CUBE));
        (count, CubeDim::new_1d(ROWS_PER_CUBE as u32), false)
    }
}

/// Softmax over the last dimension of `x [R, C]`.
pub fn softmax(x: CubeTensor, bias: Option<(CubeTensor, usize)>) -> CubeTensor {
    check_f32(&[&x], "softmax");
    let x = into_contiguous(x);
    let n = x.meta.shape().num_elements();
    let (bias, groups) = match bias {
        Some((b, groups)) => {
            assert!(
                groups > 0 && n.is_multiple_of(groups),
                "fused softmax: {groups} bias groups over {n} elements"
            );
            (Some(repeating_bias(b, &x, "softmax")), groups)
        }
        None => (None, 1),
    };
    let has_bias = bias.is_some();
    let len = bias
        .as_ref()
        .map_or(1, |b| b.meta.shape().num_elements() / groups);
    let period = n / groups;
    assert!(
        bias.as_ref().is_none_or(
            |b| b.meta.shape().num_elements() == groups * len && period.is_multiple_of(len)
        ),
        "fused softmax: a bias of {groups} groups of {len} does not repeat over {period} elements"
    );
    let bias = bias.unwrap_or_else(|| x.clone());
    let [rows, c] = x.meta.shape().dims::<2>();
    let out = empty_dense(&x);
    if rows == 0 || c == 0 {
        return out;
    }
    let addr = address_type(&[&x, &out]);
    let (count, dim, plane) = row_launch(&x, rows, c);
    // SAFETY: cubes and units past the last row return before reading; every index is below
    // `row·c + c` for a row below `rows`, and the bias index below `groups · len` (its size:
    // the element index over `period` is below `groups`, its remainder modulo `len` below `len`).
    unsafe {
        softmax_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            x.into_tensor_arg(),
            bias.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows,
            len,
            period,
            c,
            has_bias,
            plane,
        );
    }
    out
}

/// `(x + bias) · scale` of `x [B, N, H, E]` with the heads first: `[B, H, N, E]`, or
/// `[B, H, E, N]` when `transposed`; row-major either way.
pub fn heads(x: CubeTensor, bias: CubeTensor, scale: f32, transposed: bool) -> CubeTensor {
    check_f32(&[&x, &bias], "heads");
    let [x, bias] = [x, bias].map(into_contiguous);
    let [b, n, h, e] = x.meta.shape().dims::<4>();
    assert_eq!(
        bias.meta.shape().num_elements(),
        h * e,
        "fused heads: bias size"
    );
    let shape = if transposed {
        [b, h, e, n]
    } else {
        [b, h, n, e]
    };
    let out = empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        burn::tensor::Shape::from(shape),
        DType::F32,
    );
    let Some((count, dim, addr)) = per_output_element(&out, &[&x]) else {
        return out;
    };
    // SAFETY: units past the output return first; the input index is that of element
    // (batch, token, head, channel) of the dense `[B, N, H, E]` input, and the bias index is
    // below `H·E`, its size.
    unsafe {
        heads_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            x.into_tensor_arg(),
            bias.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            n,
            h,
            e,
            scale,
            transposed,
        );
    }
    out
}

/// Backward of [`heads`]: the gradient of `x [B, N, H, E]` (row-major) from that of the output
/// (`[B, H, N, E]`, or `[B, H, E, N]` when `transposed`; any layout), `grad · scale`.
pub fn heads_backward(grad: CubeTensor, scale: f32, transposed: bool) -> CubeTensor {
    check_f32(&[&grad], "heads backward");
    let [b, h, d2, d3] = grad.meta.shape().dims::<4>();
    let (n, e) = if transposed { (d3, d2) } else { (d2, d3) };
    let out = empty_device_contiguous_dtype(
        grad.client.clone(),
        grad.device.clone(),
        burn::tensor::Shape::from([b, n, h, e]),
        DType::F32,
    );
    let Some((count, dim, addr)) = per_output_element(&out, &[&grad]) else {
        return out;
    };
    // SAFETY: units past the output return first; each reads the element (batch, head, token,
    // channel) of `grad`, inside its shape, through its strides.
    unsafe {
        heads_backward_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            grad.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            n,
            h,
            e,
            scale,
            transposed,
        );
    }
    out
}

/// The deformable attention's sampling locations `[N, Lq, M, L, P, 2]` from the offsets' product
/// `off` (that shape), their repeating `bias`, the reference points or boxes
/// `reference [N, Lq, L, R]` and, for points, each level's `normalizer [L·2]` (width, height).
pub fn sampling_locations(
    off: CubeTensor,
    bias: CubeTensor,
    reference: CubeTensor,
    normalizer: CubeTensor,
) -> CubeTensor {
    check_f32(&[&off, &reference, &normalizer], "sampling locations");
    let [off, reference, normalizer] = [off, reference, normalizer].map(into_contiguous);
    let bias = repeating_bias(bias, &off, "sampling locations");
    let [n, lq, m, l, p, two] = off.meta.shape().dims::<6>();
    let [rn, rq, rl, r] = reference.meta.shape().dims::<4>();
    assert!(
        two == 2 && [rn, rq, rl] == [n, lq, l] && (r == 2 || r == 4),
        "fused sampling locations: offsets {:?} and reference {:?}",
        off.meta.shape(),
        reference.meta.shape()
    );
    assert!(
        r == 4 || normalizer.meta.shape().num_elements() == 2 * l,
        "fused sampling locations: normalizer size"
    );
    let out = empty_dense(&off);
    let Some((count, dim, addr)) = per_output_element(&out, &[&off]) else {
        return out;
    };
    // SAFETY: units past the output return first; `off` and `out` are dense of one size; the
    // reference index is that of (query, level, coordinate) of the dense `[N·Lq, L, R]`
    // reference, the normalizer index below `2L` and the bias index taken modulo its size.
    unsafe {
        sampling_locations_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            off.into_tensor_arg(),
            bias.into_tensor_arg(),
            reference.into_tensor_arg(),
            normalizer.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            m,
            l,
            p,
            r == 4,
        );
    }
    out
}

/// `(x − sum[row] / n)²` for a dense row-major `x` in rows of `n` and the row sums `sum`.
pub fn squared_deviation(x: CubeTensor, sum: CubeTensor, n: usize) -> CubeTensor {
    check_f32(&[&x, &sum], "group norm");
    let [x, sum] = [x, sum].map(into_contiguous);
    let total = x.meta.shape().num_elements();
    assert_eq!(
        sum.meta.shape().num_elements() * n,
        total,
        "fused group norm: row sums"
    );
    let out = empty_dense(&x);
    let Some((count, dim, addr)) = per_output_element(&out, &[&x]) else {
        return out;
    };
    // SAFETY: units past the output return first; `x` and `out` are dense of one size and the
    // row index is below the number of rows, the size of `sum`.
    unsafe {
        squared_deviation_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            x.into_tensor_arg(),
            sum.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            n,
        );
    }
    out
}

/// The group norm of `x [B, C, H, W]` in `groups` groups from the groups' sums `sum` and sums
/// of squared deviations `sq_sum` (`B·G` each), with the per-channel `gamma` and `beta`.
pub fn group_norm_apply(
    x: CubeTensor,
    sum: CubeTensor,
    sq_sum: CubeTensor,
    gamma: CubeTensor,
    beta: CubeTensor,
    groups: usize,
    epsilon: f64,
) -> CubeTensor {
    check_f32(&[&x, &sum, &sq_sum, &gamma, &beta], "group norm");
    let [x, sum, sq_sum, gamma, beta] = [x, sum, sq_sum, gamma, beta].map(into_contiguous);
    let [b, c, h, w] = x.meta.shape().dims::<4>();
    assert!(
        c % groups == 0
            && sum.meta.shape().num_elements() == b * groups
            && sq_sum.meta.shape().num_elements() == b * groups
            && gamma.meta.shape().num_elements() == c
            && beta.meta.shape().num_elements() == c,
        "fused group norm: shapes"
    );
    let out = empty_dense(&x);
    let Some((count, dim, addr)) = per_output_element(&out, &[&x]) else {
        return out;
    };
    // SAFETY: units past the output return first; `x` and `out` are dense of one size, the
    // group index is below `B·G` (the size of the sums) and the channel index below `C`.
    unsafe {
        group_norm_apply_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            x.into_tensor_arg(),
            sum.into_tensor_arg(),
            sq_sum.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            c / groups * h * w,
            h * w,
            c,
            epsilon as f32,
        );
    }
    out
}

/// `v = x + bias` for `x [R, C]` and `bias [C]`, then what `kind` says (see
/// `bias_epilogue_kernel`) with `a` (`x`'s shape; [`GATE`], [`PRODUCT`]) and `b` (`[1]` or
/// longer for [`GATE`], `[R]` for [`ZERO_ROWS`], `[C]` for [`PRODUCT`]).
pub fn bias_epilogue(
    x: CubeTensor,
    bias: CubeTensor,
    a: Option<CubeTensor>,
    b: Option<CubeTensor>,
    kind: u32,
) -> CubeTensor {
    let op = "bias epilogue";
    check_f32(&[&x, &bias], op);
    let [x, bias] = [x, bias].map(into_contiguous);
    let [r, c] = x.meta.shape().dims::<2>();
    assert_eq!(bias.meta.shape().num_elements(), c, "fused {op}: bias size");
    // the elements each operand must have (the gate: at least one, only its first is read)
    let (a_len, b_len) = match kind {
        RELU | GELU => (None, None),
        GELU_GRAD => (Some(r * c), None),
        GATE => (Some(r * c), Some(1)),
        ZERO_ROWS => (None, Some(r)),
        PRODUCT => (Some(r * c), Some(c)),
        _ => panic!("fused {op}: unknown kind {kind}"),
    };
    let operand = |t: Option<CubeTensor>, len: Option<usize>, exact: bool, name: &str| match len {
        Some(len) => {
            let t = t.unwrap_or_else(|| panic!("fused {op}: operand {name} missing"));
            check_f32(&[&t], op);
            let n = t.meta.shape().num_elements();
            let fits = if exact { n == len } else { n >= len };
            assert!(
                fits,
                "fused {op}: operand {name} has {n} elements, not {len}"
            );
            into_contiguous(t)
        }
        None => x.clone(),
    };
    let a = operand(a, a_len, true, "a");
    let b = operand(b, b_len, kind != GATE, "b");
    let out = empty_dense(&x);
    let Some((count, dim, addr)) = per_output_element(&out, &[&x, &a]) else {
        return out;
    };
    // SAFETY: units past the output return first; `x`, `out` and a read `a` are dense of one
    // size, the bias and a per-column `b` are read below `c`, a per-row `b` below `R` and a gate
    // at 0.
    unsafe {
        bias_epilogue_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            x.into_tensor_arg(),
            bias.into_tensor_arg(),
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            c,
            kind,
        );
    }
    out
}

/// Elements one unit of `square_partials_kernel` sums at most (below the cap on units).
const SQUARE_SPAN: usize = 16;
/// Most units (partial sums) per tensor in [`square_partials_into`].
const MAX_SQUARE_UNITS: usize = 65536;

/// Partial sums [`square_partials_into`] writes for a tensor of `n` elements.
pub fn square_units(n: usize) -> usize {
    n.div_ceil(SQUARE_SPAN).clamp(1, MAX_SQUARE_UNITS)
}

/// Offset in `t`'s buffer of the element at row-major position `i` of its shape.
#[cube]
fn logical_offset(t: &Tensor<f32>, i: usize) -> usize {
    let mut rest = i;
    let mut offset = 0usize;
    let mut d = t.rank();
    while d > 0 {
        d -= 1;
        let size = t.shape(d);
        offset += (rest % size) * t.stride(d);
        rest /= size;
    }
    offset
}

/// Unit `u < units` writes `Σ x[i]²` over `i = u, u + units, …` below `n` to `out[offset + u]`
/// (`x` dense in some axis order when `dense`, else read through its strides).
#[cube(launch_unchecked, address_type = "dynamic")]
fn square_partials_kernel(
    x: &Tensor<f32>,
    out: &mut Tensor<f32>,
    n: usize,
    units: usize,
    offset: usize,
    #[comptime] dense: bool,
) {
    let u = ABSOLUTE_POS;
    if u >= units {
        terminate!();
    }
    let mut acc = 0.0f32;
    let mut i = u;
    while i < n {
        let v = if dense { x[i] } else { x[logical_offset(x, i)] };
        acc += v * v;
        i += units;
    }
    out[offset + u] = acc;
}

/// Writes the [`square_units`]`(n)` partial sums of squares of `x` (`n` elements) to
/// `acc[offset..]` and returns `acc` (written in place when this is its only handle, else a
/// copy): the sum of all partials of a list of tensors is `Σ x²` over their elements.
pub fn square_partials_into(x: CubeTensor, acc: CubeTensor, offset: usize) -> CubeTensor {
    check_f32(&[&x, &acc], "sum of squares");
    let n = x.meta.shape().num_elements();
    let units = square_units(n);
    let len = acc.meta.shape().num_elements();
    assert!(
        offset + units <= len,
        "fused sum of squares: {units} partials at {offset} do not fit in {len}"
    );
    let acc = if !(acc.is_contiguous() && dense(&acc)) {
        into_contiguous(acc)
    } else if acc.can_mut() {
        acc
    } else {
        acc.copy()
    };
    let is_dense = dense(&x);
    let (count, dim) = crate::cube_util::elementwise(&acc, units);
    let addr = address_type(&[&x, &acc]);
    // SAFETY: units at or past `units` return first; unit `u` writes `acc[offset + u]`, inside
    // `acc` (checked above), which is dense; reads are below `n` positions of `x`, through its
    // strides unless dense (where its `n` elements fill its buffer).
    unsafe {
        square_partials_kernel::launch_unchecked(
            &acc.client,
            count,
            dim,
            addr,
            x.into_tensor_arg(),
            acc.clone().into_tensor_arg(),
            n,
            units,
            offset,
            is_dense,
        );
    }
    acc
}

/// One AdamW step per element `i` of the row-major order of `param`'s shape (`param` and
/// `grad` read through their strides unless `plain`, when both are row-major and dense;
/// `p_out` has `param`'s layout when `same_layout`, else is row-major and dense): see
/// [`rlip_model::fused::adamw`] for the formula.
#[allow(clippy::too_many_arguments)]
#[cube(launch_unchecked, address_type = "dynamic")]
fn adamw_kernel(
    param: &Tensor<f32>,
    grad: &Tensor<f32>,
    exp_avg: &Tensor<f32>,
    exp_avg_sq: &Tensor<f32>,
    p_out: &mut Tensor<f32>,
    m_out: &mut Tensor<f32>,
    v_out: &mut Tensor<f32>,
    n: usize,
    grad_scale: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
    step_size: f32,
    decay: f32,
    #[comptime] plain: bool,
    #[comptime] same_layout: bool,
) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let (pi, gi) = if plain {
        (i, i)
    } else {
        (logical_offset(param, i), logical_offset(grad, i))
    };
    let oi = if same_layout { pi } else { i };
    let g = grad[gi] * grad_scale;
    let m = exp_avg[i] * beta1 + g * one_minus_beta1;
    let v = exp_avg_sq[i] * beta2 + g * g * one_minus_beta2;
    let denom = v.sqrt() / bias_correction2_sqrt + eps;
    p_out[oi] = param[pi] * decay - m / denom * step_size;
    m_out[i] = m;
    v_out[i] = v;
}

/// One AdamW step of `param` (kept in its own memory layout when `keep_layout` and dense, else
/// row-major) with `grad` (any layout) and the flat moments: `(param', exp_avg', exp_avg_sq')`.
pub fn adamw(
    param: CubeTensor,
    grad: CubeTensor,
    exp_avg: CubeTensor,
    exp_avg_sq: CubeTensor,
    s: &rlip_model::fused::AdamWScalars,
    keep_layout: bool,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    check_f32(&[&param, &grad, &exp_avg, &exp_avg_sq], "adamw");
    let n = param.meta.shape().num_elements();
    assert_eq!(
        grad.meta.shape(),
        param.meta.shape(),
        "fused adamw: gradient shape"
    );
    for m in [&exp_avg, &exp_avg_sq] {
        assert_eq!(m.meta.shape().num_elements(), n, "fused adamw: moment size");
    }
    let [exp_avg, exp_avg_sq] = [exp_avg, exp_avg_sq].map(into_contiguous);
    let same_layout = keep_layout && dense(&param);
    let p_out = if same_layout {
        empty_same_layout(&param)
    } else {
        empty_dense(&param)
    };
    let m_out = empty_dense(&exp_avg);
    let v_out = empty_dense(&exp_avg_sq);
    if n == 0 {
        return (p_out, m_out, v_out);
    }
    let plain = [&param, &grad]
        .iter()
        .all(|t| t.is_contiguous() && dense(t));
    let (count, dim) = crate::cube_util::elementwise(&m_out, n);
    let addr = address_type(&[&param, &grad, &exp_avg, &exp_avg_sq, &p_out]);
    // SAFETY: units at or past `n` return first; position `i < n` of the shape is at
    // `logical_offset` in each strided tensor (or at `i` in the row-major dense ones), and the
    // flat moments have `n` elements.
    unsafe {
        adamw_kernel::launch_unchecked(
            &m_out.client,
            count,
            dim,
            addr,
            param.into_tensor_arg(),
            grad.into_tensor_arg(),
            exp_avg.into_tensor_arg(),
            exp_avg_sq.into_tensor_arg(),
            p_out.clone().into_tensor_arg(),
            m_out.clone().into_tensor_arg(),
            v_out.clone().into_tensor_arg(),
            n,
            s.grad_scale,
            s.beta1,
            s.one_minus_beta1,
            s.beta2,
            s.one_minus_beta2,
            s.bias_correction2_sqrt,
            s.eps,
            s.step_size,
            s.decay,
            plain,
            same_layout,
        );
    }
    (p_out, m_out, v_out)
}

/// Corners `(x0, y0, x1, y1)` of box `i` of `[N, 4]` `(cx, cy, w, h)` boxes, as the official
/// `box_cxcywh_to_xyxy` computes them.
#[cube]
fn xyxy(t: &Tensor<f32>, i: usize) -> (f32, f32, f32, f32) {
    let (cx, cy) = (t[4 * i], t[4 * i + 1]);
    let (hw, hh) = (t[4 * i + 2] * 0.5f32, t[4 * i + 3] * 0.5f32);
    (cx - hw, cy - hh, cx + hw, cy + hh)
}

/// `max(v, 0)` as Burn's `clamp_min` (NaN passes).
#[cube]
fn at_least_zero(v: f32) -> f32 {
    if v < 0.0f32 { 0.0f32 } else { v }
}

/// The overlap's width and height and the enclosing box's, before the clamp at 0, of two boxes'
/// corners: `min(a1, b1) − max(a0, b0)` and `max(a1, b1) − min(a0, b0)` per axis, the pairwise
/// maximum and minimum as Burn's `max_pair`/`min_pair` (the first operand on ties).
#[allow(clippy::too_many_arguments)]
#[cube]
fn giou_sides(
    ax0: f32,
    ay0: f32,
    ax1: f32,
    ay1: f32,
    bx0: f32,
    by0: f32,
    bx1: f32,
    by1: f32,
) -> (f32, f32, f32, f32) {
    let rbx = if bx1 < ax1 { bx1 } else { ax1 };
    let ltx = if ax0 < bx0 { bx0 } else { ax0 };
    let rby = if by1 < ay1 { by1 } else { ay1 };
    let lty = if ay0 < by0 { by0 } else { ay0 };
    let ex = if ax1 < bx1 { bx1 } else { ax1 };
    let sx = if bx0 < ax0 { bx0 } else { ax0 };
    let ey = if ay1 < by1 { by1 } else { ay1 };
    let sy = if by0 < ay0 { by0 } else { ay0 };
    (rbx - ltx, rby - lty, ex - sx, ey - sy)
}

/// Generalized IoU of box `i` of `a` with box `i` of `b` (`[N, 4]` `(cx, cy, w, h)`), one unit
/// per pair, in the order of operations of the composite (`paired_generalized_box_iou` of the
/// training crate): pairwise maximum and minimum as Burn's `max_pair`/`min_pair`, overlaps
/// clamped at 0.
#[cube(launch_unchecked, address_type = "dynamic")]
fn paired_giou_kernel(a: &Tensor<f32>, b: &Tensor<f32>, out: &mut Tensor<f32>, n: usize) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let (ax0, ay0, ax1, ay1) = xyxy(a, i);
    let (bx0, by0, bx1, by1) = xyxy(b, i);
    let (vw, vh, ew, eh) = giou_sides(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1);
    let area_a = (ax1 - ax0) * (ay1 - ay0);
    let area_b = (bx1 - bx0) * (by1 - by0);
    let inter = at_least_zero(vw) * at_least_zero(vh);
    let union = area_a + area_b - inter;
    let iou = inter / union;
    let enclosing = at_least_zero(ew) * at_least_zero(eh);
    out[i] = iou - (enclosing - union) / enclosing;
}

/// Backward of [`paired_giou_kernel`] for the output gradient `grad [N]`: the gradients of both
/// `[N, 4]` box sets, with the composite's routing (a pairwise maximum or minimum passes the
/// gradient to the operand it took, the first on ties; a clamped overlap passes none below 0).
#[cube(launch_unchecked, address_type = "dynamic")]
fn paired_giou_backward_kernel(
    a: &Tensor<f32>,
    b: &Tensor<f32>,
    grad: &Tensor<f32>,
    d_a: &mut Tensor<f32>,
    d_b: &mut Tensor<f32>,
    n: usize,
) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let (ax0, ay0, ax1, ay1) = xyxy(a, i);
    let (bx0, by0, bx1, by1) = xyxy(b, i);
    let (vw, vh, ew, eh) = giou_sides(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1);
    let area_a = (ax1 - ax0) * (ay1 - ay0);
    let area_b = (bx1 - bx0) * (by1 - by0);
    let iw = at_least_zero(vw);
    let ih = at_least_zero(vh);
    let inter = iw * ih;
    let union = area_a + area_b - inter;
    let cw = at_least_zero(ew);
    let ch = at_least_zero(eh);
    let enclosing = cw * ch;

    let g = grad[i];
    // giou = inter / union − (enclosing − union) / enclosing
    let g_union = g / enclosing - g * inter / (union * union);
    let g_inter = g / union - g_union;
    let g_enclosing = -g * union / (enclosing * enclosing);
    // overlap and enclosing sides (no gradient where the clamp took 0)
    let g_vw = if vw < 0.0f32 { 0.0f32 } else { g_inter * ih };
    let g_vh = if vh < 0.0f32 { 0.0f32 } else { g_inter * iw };
    let g_ew = if ew < 0.0f32 {
        0.0f32
    } else {
        g_enclosing * ch
    };
    let g_eh = if eh < 0.0f32 {
        0.0f32
    } else {
        g_enclosing * cw
    };
    // areas
    let mut ga_x0 = -g_union * (ay1 - ay0);
    let mut ga_x1 = g_union * (ay1 - ay0);
    let mut ga_y0 = -g_union * (ax1 - ax0);
    let mut ga_y1 = g_union * (ax1 - ax0);
    let mut gb_x0 = -g_union * (by1 - by0);
    let mut gb_x1 = g_union * (by1 - by0);
    let mut gb_y0 = -g_union * (bx1 - bx0);
    let mut gb_y1 = g_union * (bx1 - bx0);
    // rb = min(a1, b1), lt = max(a0, b0): + g_v to rb's source, − g_v to lt's
    if bx1 < ax1 {
        gb_x1 += g_vw;
    } else {
        ga_x1 += g_vw;
    }
    if ax0 < bx0 {
        gb_x0 -= g_vw;
    } else {
        ga_x0 -= g_vw;
    }
    if by1 < ay1 {
        gb_y1 += g_vh;
    } else {
        ga_y1 += g_vh;
    }
    if ay0 < by0 {
        gb_y0 -= g_vh;
    } else {
        ga_y0 -= g_vh;
    }
    // enclosing: e = max(a1, b1), s = min(a0, b0)
    if ax1 < bx1 {
        gb_x1 += g_ew;
    } else {
        ga_x1 += g_ew;
    }
    if bx0 < ax0 {
        gb_x0 -= g_ew;
    } else {
        ga_x0 -= g_ew;
    }
    if ay1 < by1 {
        gb_y1 += g_eh;
    } else {
        ga_y1 += g_eh;
    }
    if by0 < ay0 {
        gb_y0 -= g_eh;
    } else {
        ga_y0 -= g_eh;
    }
    // corners of (cx, cy, w, h): x0 = cx − w/2, x1 = cx + w/2
    d_a[4 * i] = ga_x0 + ga_x1;
    d_a[4 * i + 1] = ga_y0 + ga_y1;
    d_a[4 * i + 2] = (ga_x1 - ga_x0) * 0.5f32;
    d_a[4 * i + 3] = (ga_y1 - ga_y0) * 0.5f32;
    d_b[4 * i] = gb_x0 + gb_x1;
    d_b[4 * i + 1] = gb_y0 + gb_y1;
    d_b[4 * i + 2] = (gb_x1 - gb_x0) * 0.5f32;
    d_b[4 * i + 3] = (gb_y1 - gb_y0) * 0.5f32;
}

/// Checks two `[N, 4]` box sets and makes them dense.
fn box_pairs(a: CubeTensor, b: CubeTensor, op: &str) -> (CubeTensor, CubeTensor, usize) {
    check_f32(&[&a, &b], op);
    assert_eq!(a.meta.shape(), b.meta.shape(), "fused {op}: box set shapes");
    let [n, four] = a.meta.shape().dims::<2>();
    assert_eq!(four, 4, "fused {op}: boxes are [N, 4]");
    let [a, b] = [a, b].map(into_contiguous);
    (a, b, n)
}

/// Generalized IoU `[N]` of the rows of two `[N, 4]` `(cx, cy, w, h)` box sets.
pub fn paired_giou(a: CubeTensor, b: CubeTensor) -> CubeTensor {
    let (a, b, n) = box_pairs(a, b, "paired giou");
    let out =
        empty_device_contiguous_dtype(a.client.clone(), a.device.clone(), [n].into(), DType::F32);
    let Some((count, dim, addr)) = per_output_element(&out, &[&a, &b]) else {
        return out;
    };
    // SAFETY: units at or past `n` return first; unit `i` reads row `i` of the dense `[N, 4]`
    // inputs and writes `out[i]`.
    unsafe {
        paired_giou_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            n,
        );
    }
    out
}

/// The gradients `(∂a, ∂b)` of [`paired_giou`] for the output gradient `grad [N]`.
pub fn paired_giou_backward(
    a: CubeTensor,
    b: CubeTensor,
    grad: CubeTensor,
) -> (CubeTensor, CubeTensor) {
    let (a, b, n) = box_pairs(a, b, "paired giou backward");
    check_f32(&[&grad], "paired giou backward");
    assert_eq!(
        grad.meta.shape().num_elements(),
        n,
        "fused paired giou backward: gradient size"
    );
    let grad = into_contiguous(grad);
    let (d_a, d_b) = (empty_dense(&a), empty_dense(&b));
    if n == 0 {
        return (d_a, d_b);
    }
    let (count, dim) = crate::cube_util::elementwise(&d_a, n);
    let addr = address_type(&[&a, &b, &grad, &d_a]);
    // SAFETY: units at or past `n` return first; unit `i` reads row `i` of the dense `[N, 4]`
    // inputs and `grad[i]`, and writes row `i` of the two dense `[N, 4]` outputs.
    unsafe {
        paired_giou_backward_kernel::launch_unchecked(
            &d_a.client,
            count,
            dim,
            addr,
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            grad.into_tensor_arg(),
            d_a.clone().into_tensor_arg(),
            d_b.clone().into_tensor_arg(),
            n,
        );
    }
    (d_a, d_b)
}
