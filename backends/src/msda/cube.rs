//! Multi-scale deformable attention sampling as CubeCL kernels, for every cubecl runtime Burn
//! runs (wgpu — Vulkan, Metal, DirectX, WebGPU — and CUDA through NVRTC). Same contract as the
//! CPU kernel in [`super::cpu`]: bilinear sampling with zero padding and `align_corners = false`.
//!
//! - forward: one thread per output element `(n, q, m, c)`, looping over levels and points;
//! - value gradient: one thread per `(n, q, m, c)`, scattering into the four corners with float
//!   atomic adds (native where the device has them, a compare-and-swap loop on the bits
//!   otherwise);
//! - location and weight gradients: one thread per sampling point `(n, q, m, l, p)`, looping over
//!   the channels, so they need no atomics.
//!
//! The level table `(H, W, first token)` and the token and query counts travel as launch
//! scalars, heads and channels as compile-time constants: the kernels read no tensor shapes and
//! no uploaded side tensor, only the four data tensors.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_contiguous_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use cubecl::cube;
use cubecl::features::AtomicUsage;
use cubecl::ir::FloatKind;
use cubecl::prelude::*;

use crate::cube_util::{address_type, elementwise};

/// The four bilinear corners of pixel coordinate `(x, y)` (after the `−0.5` shift): for corner
/// `k` (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right) whether it lies inside the
/// `h × w` map, its token offset in the level, and its weight.
#[cube]
fn corner(x: f32, y: f32, h: usize, w: usize, k: u32) -> (bool, usize, f32) {
    let x0 = x.floor();
    let y0 = y.floor();
    let fx = x - x0;
    let fy = y - y0;
    let dx = k % 2;
    let dy = k / 2;
    let xi = i32::cast_from(x0) + i32::cast_from(dx);
    let yi = i32::cast_from(y0) + i32::cast_from(dy);
    let wx = if dx == 0 { 1.0f32 - fx } else { fx };
    let wy = if dy == 0 { 1.0f32 - fy } else { fy };
    // non-finite or far-away coordinates sample nothing
    let finite = x > -1.0e9f32 && x < 1.0e9f32 && y > -1.0e9f32 && y < 1.0e9f32;
    let inside = finite && xi >= 0 && yi >= 0 && xi < i32::cast_from(w) && yi < i32::cast_from(h);
    let offset = if inside {
        usize::cast_from(yi) * w + usize::cast_from(xi)
    } else {
        0usize
    };
    (inside, offset, wx * wy)
}

/// `(H, W, first token)` of level `l` (a run-time index) from the level table.
#[cube]
fn level_at(
    hs: &Sequence<usize>,
    ws: &Sequence<usize>,
    starts: &Sequence<usize>,
    l: usize,
    #[comptime] n_levels: usize,
) -> (usize, usize, usize) {
    let mut h = 0usize;
    let mut w = 0usize;
    let mut start = 0usize;
    #[unroll]
    for i in 0..n_levels {
        if l == i {
            h = hs[i];
            w = ws[i];
            start = starts[i];
        }
    }
    (h, w, start)
}

/// One thread per output element `(n, q, m, c)`. `s` is the number of value tokens, `lq` of
/// queries; `hs`, `ws`, `starts` the level table.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn msda_forward_kernel(
    value: &Tensor<f32>,
    loc: &Tensor<f32>,
    attn: &Tensor<f32>,
    out: &mut Tensor<f32>,
    hs: Sequence<usize>,
    ws: Sequence<usize>,
    starts: Sequence<usize>,
    s: usize,
    lq: usize,
    #[comptime] n_levels: usize,
    #[comptime] n_points: usize,
    #[comptime] m_count: usize,
    #[comptime] d: usize,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let c = ABSOLUTE_POS % d;
    let m = (ABSOLUTE_POS / d) % m_count;
    let nq = ABSOLUTE_POS / (d * m_count);
    let n = nq / lq;
    let mut acc = 0.0f32;
    #[unroll]
    for l in 0..n_levels {
        let (h, w, start) = (hs[l], ws[l], starts[l]);
        let (wf, hf) = (f32::cast_from(w), f32::cast_from(h));
        let base = n * s + start;
        for p in 0..n_points {
            let k = (nq * m_count + m) * n_levels * n_points + l * n_points + p;
            let a = attn[k];
            let x = loc[2 * k] * wf - 0.5f32;
            let y = loc[2 * k + 1] * hf - 0.5f32;
            let mut sample = 0.0f32;
            #[unroll]
            for corner_k in 0..4u32 {
                let (inside, offset, cw) = corner(x, y, h, w, corner_k);
                if inside {
                    sample += cw * value[((base + offset) * m_count + m) * d + c];
                }
            }
            acc += a * sample;
        }
    }
    out[ABSOLUTE_POS] = acc;
}

/// `grad_value` with native float atomic adds; one thread per output-gradient element.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn msda_grad_value_kernel(
    loc: &Tensor<f32>,
    attn: &Tensor<f32>,
    grad: &Tensor<f32>,
    grad_value: &mut Tensor<Atomic<f32>>,
    hs: Sequence<usize>,
    ws: Sequence<usize>,
    starts: Sequence<usize>,
    s: usize,
    lq: usize,
    #[comptime] n_levels: usize,
    #[comptime] n_points: usize,
    #[comptime] m_count: usize,
    #[comptime] d: usize,
) {
    if ABSOLUTE_POS >= grad.len() {
        terminate!();
    }
    let c = ABSOLUTE_POS % d;
    let m = (ABSOLUTE_POS / d) % m_count;
    let nq = ABSOLUTE_POS / (d * m_count);
    let n = nq / lq;
    let g = grad[ABSOLUTE_POS];
    #[unroll]
    for l in 0..n_levels {
        let (h, w, start) = (hs[l], ws[l], starts[l]);
        let (wf, hf) = (f32::cast_from(w), f32::cast_from(h));
        let base = n * s + start;
        for p in 0..n_points {
            let k = (nq * m_count + m) * n_levels * n_points + l * n_points + p;
            let ag = attn[k] * g;
            let x = loc[2 * k] * wf - 0.5f32;
            let y = loc[2 * k + 1] * hf - 0.5f32;
            #[unroll]
            for corner_k in 0..4u32 {
                let (inside, offset, cw) = corner(x, y, h, w, corner_k);
                if inside {
                    let i = ((base + offset) * m_count + m) * d + c;
                    grad_value[i].fetch_add(cw * ag);
                }
            }
        }
    }
}

/// `grad_value` on devices without float atomics: a compare-and-swap loop on the `f32` bits.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn msda_grad_value_cas_kernel(
    loc: &Tensor<f32>,
    attn: &Tensor<f32>,
    grad: &Tensor<f32>,
    grad_value: &mut Tensor<Atomic<u32>>,
    hs: Sequence<usize>,
    ws: Sequence<usize>,
    starts: Sequence<usize>,
    s: usize,
    lq: usize,
    #[comptime] n_levels: usize,
    #[comptime] n_points: usize,
    #[comptime] m_count: usize,
    #[comptime] d: usize,
) {
    if ABSOLUTE_POS >= grad.len() {
        terminate!();
    }
    let c = ABSOLUTE_POS % d;
    let m = (ABSOLUTE_POS / d) % m_count;
    let nq = ABSOLUTE_POS / (d * m_count);
    let n = nq / lq;
    let g = grad[ABSOLUTE_POS];
    #[unroll]
    for l in 0..n_levels {
        let (h, w, start) = (hs[l], ws[l], starts[l]);
        let (wf, hf) = (f32::cast_from(w), f32::cast_from(h));
        let base = n * s + start;
        for p in 0..n_points {
            let k = (nq * m_count + m) * n_levels * n_points + l * n_points + p;
            let ag = attn[k] * g;
            let x = loc[2 * k] * wf - 0.5f32;
            let y = loc[2 * k + 1] * hf - 0.5f32;
            #[unroll]
            for corner_k in 0..4u32 {
                let (inside, offset, cw) = corner(x, y, h, w, corner_k);
                let add = cw * ag;
                if inside && add != 0.0f32 {
                    let i = ((base + offset) * m_count + m) * d + c;
                    let mut seen = grad_value[i].load();
                    loop {
                        let expected = seen;
                        let next = (f32::from_bits(expected) + add).to_bits();
                        seen = grad_value[i].compare_exchange_weak(expected, next);
                        if seen == expected {
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Location and weight gradients: one thread per sampling point `(n, q, m, l, p)`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn msda_grad_point_kernel(
    value: &Tensor<f32>,
    loc: &Tensor<f32>,
    attn: &Tensor<f32>,
    grad: &Tensor<f32>,
    grad_loc: &mut Tensor<f32>,
    grad_attn: &mut Tensor<f32>,
    hs: Sequence<usize>,
    ws: Sequence<usize>,
    starts: Sequence<usize>,
    s: usize,
    lq: usize,
    #[comptime] n_levels: usize,
    #[comptime] n_points: usize,
    #[comptime] m_count: usize,
    #[comptime] d: usize,
) {
    if ABSOLUTE_POS >= grad_attn.len() {
        terminate!();
    }
    let k = ABSOLUTE_POS;
    let l = (k / n_points) % n_levels;
    let nqm = k / (n_points * n_levels);
    let m = nqm % m_count;
    let nq = nqm / m_count;
    let n = nq / lq;
    let (h, w, start) = level_at(&hs, &ws, &starts, l, n_levels);
    let (wf, hf) = (f32::cast_from(w), f32::cast_from(h));
    let base = n * s + start;
    let a = attn[k];
    let x = loc[2 * k] * wf - 0.5f32;
    let y = loc[2 * k + 1] * hf - 0.5f32;
    let fx = x - x.floor();
    let fy = y - y.floor();
    let mut g_attn = 0.0f32;
    let mut g_x = 0.0f32;
    let mut g_y = 0.0f32;
    for c in 0..d {
        let g = grad[nq * m_count * d + m * d + c];
        #[unroll]
        for corner_k in 0..4u32 {
            let (inside, offset, cw) = corner(x, y, h, w, corner_k);
            if inside {
                let v = value[((base + offset) * m_count + m) * d + c] * g;
                let dx = corner_k % 2;
                let dy = corner_k / 2;
                // ∂cw/∂x and ∂cw/∂y of the bilinear weight
                let wx = if dx == 0 { 1.0f32 - fx } else { fx };
                let wy = if dy == 0 { 1.0f32 - fy } else { fy };
                let sx = if dx == 0 { -1.0f32 } else { 1.0f32 };
                let sy = if dy == 0 { -1.0f32 } else { 1.0f32 };
                g_attn += cw * v;
                g_x += sx * wy * v;
                g_y += sy * wx * v;
            }
        }
    }
    grad_attn[k] = g_attn;
    grad_loc[2 * k] = a * g_x * wf;
    grad_loc[2 * k + 1] = a * g_y * hf;
}

/// The level table and sizes of one call, passed to the kernels as launch scalars (in the
/// kernel's parameter block on CUDA): no side tensor to upload and no shape metadata to read.
struct Launch {
    /// Images.
    n: usize,
    hs: Vec<usize>,
    ws: Vec<usize>,
    starts: Vec<usize>,
    /// Value tokens per image.
    s: usize,
    /// Queries per image.
    lq: usize,
    n_levels: usize,
    n_points: usize,
    m: usize,
    d: usize,
}

impl Launch {
    fn new(value: &CubeTensor, loc: &CubeTensor, shapes: &[[usize; 2]]) -> Self {
        let [n, s, m, d] = value.meta.shape().dims::<4>();
        let [_, lq, _, _, n_points, _] = loc.meta.shape().dims::<6>();
        let mut starts = Vec::with_capacity(shapes.len());
        let mut start = 0usize;
        for [h, w] in shapes {
            starts.push(start);
            start += h * w;
        }
        Self {
            n,
            hs: shapes.iter().map(|[h, _]| *h).collect(),
            ws: shapes.iter().map(|[_, w]| *w).collect(),
            starts,
            s,
            lq,
            n_levels: shapes.len(),
            n_points,
            m,
            d,
        }
    }

    /// `(hs, ws, starts)` as kernel arguments.
    fn table(&self) -> [SequenceArg<usize>; 3] {
        [&self.hs, &self.ws, &self.starts].map(|v| {
            let mut seq = SequenceArg::new();
            for x in v {
                seq.push(*x);
            }
            seq
        })
    }
}

/// Forward: `value [N, S, M, D]`, `loc [N, Lq, M, L, P, 2]`, `attn [N, Lq, M, L, P]` →
/// `[N, Lq, M·D]`.
pub fn forward(
    value: CubeTensor,
    loc: CubeTensor,
    attn: CubeTensor,
    shapes: &[[usize; 2]],
) -> CubeTensor {
    let [value, loc, attn] = [value, loc, attn].map(into_contiguous);
    let call = Launch::new(&value, &loc, shapes);
    let (n, lq, m, d) = (call.n, call.lq, call.m, call.d);
    // The kernels index every tensor as a dense row-major buffer. Burn's default allocation
    // (`empty_device_dtype`) pads rows to an alignment on CUDA (a pitched layout: a `[.., 2]`
    // location gradient would get rows of 4 floats), so outputs are allocated dense.
    let out = empty_device_contiguous_dtype(
        value.client.clone(),
        value.device.clone(),
        Shape::new([n, lq, m * d]),
        DType::F32,
    );
    let (count, dim) = elementwise(&value, n * lq * m * d);
    let addr = address_type(&[&value, &loc, &attn, &out]);
    let [hs, ws, starts] = call.table();
    // SAFETY: every thread past the output returns first, and every read is of an index the
    // shapes bound (in-map corners of the level table, points of the thread's own query).
    unsafe {
        msda_forward_kernel::launch_unchecked(
            &out.client,
            count,
            dim,
            addr,
            value.into_tensor_arg(),
            loc.into_tensor_arg(),
            attn.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            hs,
            ws,
            starts,
            call.s,
            call.lq,
            call.n_levels,
            call.n_points,
            call.m,
            call.d,
        );
    }
    out
}

/// Backward: `(∂value, ∂loc, ∂attn)` for the output gradient `grad [N, Lq, M·D]`.
pub fn backward(
    value: CubeTensor,
    loc: CubeTensor,
    attn: CubeTensor,
    grad: CubeTensor,
    shapes: &[[usize; 2]],
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let [value, loc, attn, grad] = [value, loc, attn, grad].map(into_contiguous);
    let call = Launch::new(&value, &loc, shapes);
    let client = value.client.clone();
    let device = value.device.clone();
    // made dense (a no-op unless the allocator padded its rows, see `forward`)
    let grad_value = into_contiguous(zeros_client(
        client.clone(),
        device.clone(),
        value.meta.shape().clone(),
        DType::F32,
    ));
    let grad_loc = empty_device_contiguous_dtype(
        client.clone(),
        device.clone(),
        loc.meta.shape().clone(),
        DType::F32,
    );
    let grad_attn = empty_device_contiguous_dtype(
        client.clone(),
        device.clone(),
        attn.meta.shape().clone(),
        DType::F32,
    );

    // `RLIP_MSDA_ATOMICS=cas` forces the compare-and-swap path (to test it on any device)
    let native = client
        .properties()
        .atomic_type_usage(Type::atomic(FloatKind::F32))
        .contains(AtomicUsage::Add)
        && std::env::var("RLIP_MSDA_ATOMICS").map_or(true, |v| v != "cas");
    tracing::debug!(native, "MSDA value gradient: float atomics");
    let (count, dim) = elementwise(&grad, grad.meta.shape().num_elements());
    let addr = address_type(&[&loc, &attn, &grad, &grad_value]);
    let [hs, ws, starts] = call.table();
    let launch = if native {
        msda_grad_value_kernel::launch_unchecked
    } else {
        msda_grad_value_cas_kernel::launch_unchecked
    };
    // SAFETY: as the forward; the scattered writes go to in-map corners of the thread's image.
    unsafe {
        launch(
            &client,
            count,
            dim,
            addr,
            loc.clone().into_tensor_arg(),
            attn.clone().into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            grad_value.clone().into_tensor_arg(),
            hs,
            ws,
            starts,
            call.s,
            call.lq,
            call.n_levels,
            call.n_points,
            call.m,
            call.d,
        );
    }

    let (count, dim) = elementwise(&attn, attn.meta.shape().num_elements());
    let addr = address_type(&[&value, &loc, &attn, &grad, &grad_loc, &grad_attn]);
    let [hs, ws, starts] = call.table();
    // SAFETY: one thread per sampling point, past-the-end threads return first; reads as the
    // forward's.
    unsafe {
        msda_grad_point_kernel::launch_unchecked(
            &client,
            count,
            dim,
            addr,
            value.into_tensor_arg(),
            loc.into_tensor_arg(),
            attn.into_tensor_arg(),
            grad.into_tensor_arg(),
            grad_loc.clone().into_tensor_arg(),
            grad_attn.clone().into_tensor_arg(),
            hs,
            ws,
            starts,
            call.s,
            call.lq,
            call.n_levels,
            call.n_points,
            call.m,
            call.d,
        );
    }
    (grad_value, grad_loc, grad_attn)
}
