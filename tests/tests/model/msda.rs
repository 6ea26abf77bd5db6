//! Multi-scale deformable attention against an independent float64 reference.
//!
//! The reference in this file is written from the operator's definition, not from
//! `grid_sample`: a value map of level `l` (tokens `start_l .. start_l + H·W`, row-major `(y, x)`)
//! is sampled at pixel coordinates `(x·W − 0.5, y·H − 0.5)` with the bilinear *tent* kernel
//! `Σ_{i,j} v[j, i] · max(0, 1 − |px − i|) · max(0, 1 − |py − j|)` over the pixels of the map, so
//! anything outside the map (zero padding) simply has no pixel to contribute. Checked here:
//!
//! 1. Both sampling cores — the portable `grid_sample` composite and the fused CPU kernel of
//!    `rlip_backends::msda` — (f32, flex) vs the f64 reference on several geometries (1×1 and
//!    non-square levels, N = 2, M = 2..8, P = 2..4), with locations drawn in `[-0.2, 1.2]` plus
//!    points exactly on pixel centres, pixel edges, the map borders 0 and 1, and half a pixel or
//!    one pixel outside.
//! 2. A padded batch (zeroed padded value tokens, encoder reference points scaled by valid
//!    ratios < 1) through [`sampling_locations`] and the core; then the whole [`MsDeformAttn`]
//!    module with random weights (value/offset/weight/output projections, masked fill of padded
//!    tokens, softmax over L·P, 2-d point and 4-d box references) vs an f64 reference of the
//!    module, and the masked tokens' contents having no effect.
//! 3. Gradients (autodiff on flex, both cores) of `Σ out·R` w.r.t. value, locations and weights vs central
//!    finite differences of the f64 reference, with sample points kept away from the pixel-grid
//!    lines (integer pixel coordinates, i.e. through pixel centres), where bilinear sampling has
//!    kinks; the module's gradient w.r.t. its query vs finite differences of the f64 module
//!    reference.
//! 4. Cross-backend parity of the core's output and its three gradients (every compiled-in
//!    backend vs flex; with only flex compiled in the body runs once and compares nothing).

use burn::prelude::*;
use rlip_backends::msda::FusedMsda;
use rlip_model::msda::{
    MsDeformAttn, MsdaConfig, MsdaKernel, SpatialShapes, ms_deform_attn_core,
    ms_deform_attn_core_portable, sampling_locations,
};
use rlip_model::weights::{Loader, RawTensor, StateDict};
use rlip_tests::{Tol, parity_test};

/// Forward max |f32 − f64| of the core: sums of at most L·P·4 taps of O(1) values with weights
/// O(1); f32 rounding (including `loc·2 − 1` and back inside `grid_sample`) is ~1e-6 at worst.
const CORE_TOL: f64 = 1e-5;
/// Forward max |f32 − f64| of the whole module: three more C-wide matmuls and a softmax on top
/// of the core, each adding a few f32 ulps of O(1) numbers.
const MODULE_TOL: f64 = 2e-5;
/// Gradients vs central differences pass if `|g − fd| ≤ GRAD_ABS + GRAD_REL·|fd|`. The f64
/// central differences are exact up to ~1e-11 away from grid lines (the function is at most
/// bilinear in each cell), so this bounds the f32 autodiff error (gradients are O(1..10)).
const GRAD_ABS: f64 = 1e-4;
/// Relative part of the gradient tolerance (see [`GRAD_ABS`]).
const GRAD_REL: f64 = 1e-4;
/// Central-difference step on normalised locations, values and weights (f64).
const FD_STEP: f64 = 1e-4;
/// Central-difference step on the module's query (f64); offsets move by < 1e-4 pixel.
const FD_STEP_QUERY: f64 = 1e-5;
/// Sample points closer than this (in pixels of their level) to a pixel-grid line are redrawn for
/// gradient checks: one FD step moves them by at most `FD_STEP · max(H, W)` = 6e-4 pixel here.
const GRID_MARGIN_PX: f64 = 1e-2;
/// Cross-backend tolerance (vs flex) for the core's output and gradients.
const PARITY_TOL: Tol = Tol::new(1e-5, 1e-4);

// ---------------------------------------------------------------------------------------------
// Deterministic inputs.

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi) as f32).collect()
    }
}

/// Sizes of one core problem.
#[derive(Debug, Clone)]
struct Geom {
    n: usize,
    lq: usize,
    m: usize,
    d: usize,
    p: usize,
    shapes: Vec<[usize; 2]>,
}

impl Geom {
    fn l(&self) -> usize {
        self.shapes.len()
    }
    fn s(&self) -> usize {
        self.shapes.iter().map(|[h, w]| h * w).sum()
    }
    fn starts(&self) -> Vec<usize> {
        self.shapes
            .iter()
            .scan(0, |acc, [h, w]| {
                let s = *acc;
                *acc += h * w;
                Some(s)
            })
            .collect()
    }
    /// Samples `N·Lq·M·L·P` (the weights' length; locations have twice as many numbers).
    fn samples(&self) -> usize {
        self.n * self.lq * self.m * self.l() * self.p
    }
    fn value_len(&self) -> usize {
        self.n * self.s() * self.m * self.d
    }
    fn out_len(&self) -> usize {
        self.n * self.lq * self.m * self.d
    }
    /// Level of sample `i` (flat index into `[N, Lq, M, L, P]`).
    fn level_of(&self, i: usize) -> usize {
        (i / self.p) % self.l()
    }
    /// `(W, H)` of the level of sample `i`, as the size along coordinate `k` (0 = x, 1 = y).
    fn size_of(&self, i: usize, k: usize) -> usize {
        let [h, w] = self.shapes[self.level_of(i)];
        if k == 0 { w } else { h }
    }
}

/// Inputs of the core.
struct CoreCase {
    g: Geom,
    value: Vec<f32>,
    loc: Vec<f32>,
    attw: Vec<f32>,
}

/// Distance (in pixels) of normalised coordinate `u` on an axis of `size` pixels to the nearest
/// pixel-grid line (an integer pixel coordinate `u·size − 0.5`, a line of pixel centres, where the
/// bilinear weights have kinks).
fn grid_dist(u: f64, size: usize) -> f64 {
    let px = u * size as f64 - 0.5;
    (px - px.round()).abs()
}

/// Locations: mostly uniform in [-0.2, 1.2]; with `special`, also exact pixel centres, pixel edges
/// (including the borders 0 and 1), and points half a pixel / one pixel outside the map.
/// With `smooth`, every coordinate is redrawn until it is `GRID_MARGIN_PX` away from grid lines.
fn gen_locations(rng: &mut Rng, g: &Geom, special: bool, smooth: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(2 * g.samples());
    for i in 0..g.samples() {
        for k in 0..2 {
            let size = g.size_of(i, k);
            let sz = size as f64;
            let u = loop {
                let u = match if special { rng.below(12) } else { 0 } {
                    0..=4 => rng.range(-0.2, 1.2),
                    5 => 0.0,
                    6 => 1.0,
                    7 | 8 => (rng.below(size) as f64 + 0.5) / sz,
                    9 => rng.below(size + 1) as f64 / sz,
                    10 => [-0.5 / sz, (sz + 0.5) / sz][rng.below(2)],
                    _ => [
                        -1.0 / sz,
                        (sz + 1.0) / sz,
                        0.5 / sz - 1e-7,
                        1.0 - 0.5 / sz + 1e-7,
                    ][rng.below(4)],
                } as f32 as f64;
                if !smooth || grid_dist(u, size) > GRID_MARGIN_PX {
                    break u;
                }
            };
            out.push(u as f32);
        }
    }
    out
}

fn gen_core_case(seed: u64, g: Geom, special: bool, smooth: bool) -> CoreCase {
    let mut rng = Rng(seed);
    let value = rng.vec(g.value_len(), -1.0, 1.0);
    let loc = gen_locations(&mut rng, &g, special, smooth);
    let attw = rng.vec(g.samples(), -0.3, 1.0);
    CoreCase {
        g,
        value,
        loc,
        attw,
    }
}

// ---------------------------------------------------------------------------------------------
// Float64 references.

/// The core from its definition: tent-kernel bilinear sampling with zero padding, weighted sum
/// over levels and points. `value` `[N, S, M, D]`, `loc` `[N, Lq, M, L, P, 2]`, `attw`
/// `[N, Lq, M, L, P]`; returns `[N, Lq, M·D]`.
fn core_ref(g: &Geom, value: &[f64], loc: &[f64], attw: &[f64]) -> Vec<f64> {
    let (s, l, starts) = (g.s(), g.l(), g.starts());
    let mut out = vec![0.0; g.out_len()];
    for b in 0..g.n {
        for q in 0..g.lq {
            for h in 0..g.m {
                let o = ((b * g.lq + q) * g.m + h) * g.d;
                for (lv, &[hh, ww]) in g.shapes.iter().enumerate() {
                    for pt in 0..g.p {
                        let i = (((b * g.lq + q) * g.m + h) * l + lv) * g.p + pt;
                        let px = loc[2 * i] * ww as f64 - 0.5;
                        let py = loc[2 * i + 1] * hh as f64 - 0.5;
                        for y in 0..hh {
                            let ky = (1.0 - (py - y as f64).abs()).max(0.0);
                            if ky == 0.0 {
                                continue;
                            }
                            for x in 0..ww {
                                let kx = (1.0 - (px - x as f64).abs()).max(0.0);
                                if kx == 0.0 {
                                    continue;
                                }
                                let c = attw[i] * kx * ky;
                                let v = ((b * s + starts[lv] + y * ww + x) * g.m + h) * g.d;
                                for dd in 0..g.d {
                                    out[o + dd] += c * value[v + dd];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// `x` `[rows, d_in]` · `w`ᵀ (`w` `[d_out, d_in]`, PyTorch layout) + `b`.
fn linear_ref(x: &[f64], w: &[f64], b: &[f64], d_in: usize, d_out: usize) -> Vec<f64> {
    let rows = x.len() / d_in;
    let mut out = vec![0.0; rows * d_out];
    for r in 0..rows {
        for o in 0..d_out {
            out[r * d_out + o] = b[o]
                + (0..d_in)
                    .map(|i| x[r * d_in + i] * w[o * d_in + i])
                    .sum::<f64>();
        }
    }
    out
}

/// Parameters of the module (PyTorch layout), as f64.
struct ModuleParams {
    so_w: Vec<f64>,
    so_b: Vec<f64>,
    aw_w: Vec<f64>,
    aw_b: Vec<f64>,
    vp_w: Vec<f64>,
    vp_b: Vec<f64>,
    op_w: Vec<f64>,
    op_b: Vec<f64>,
}

/// The `MSDeformAttn` module in f64: returns the output `[N, Lq, C]` and the smallest distance (in
/// pixels) of any sampling coordinate to a pixel-grid line.
#[allow(clippy::too_many_arguments)]
fn module_ref(
    g: &Geom,
    w: &ModuleParams,
    query: &[f64],
    reference: &[f64],
    r: usize,
    input: &[f64],
    padding: &[bool],
) -> (Vec<f64>, f64) {
    let (l, p, m) = (g.l(), g.p, g.m);
    let c = m * g.d;
    let mut value = linear_ref(input, &w.vp_w, &w.vp_b, c, c);
    for (t, &pad) in padding.iter().enumerate() {
        if pad {
            value[t * c..(t + 1) * c].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    let offsets = linear_ref(query, &w.so_w, &w.so_b, c, m * l * p * 2);
    let mut attw = linear_ref(query, &w.aw_w, &w.aw_b, c, m * l * p);
    for row in attw.chunks_mut(l * p) {
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        row.iter_mut().for_each(|v| *v = (*v - mx).exp() / z);
    }
    let mut loc = vec![0.0; 2 * g.samples()];
    let mut min_dist = f64::INFINITY;
    for b in 0..g.n {
        for q in 0..g.lq {
            for h in 0..m {
                for (lv, &[hh, ww]) in g.shapes.iter().enumerate() {
                    let rf = &reference[((b * g.lq + q) * l + lv) * r..][..r];
                    for pt in 0..p {
                        let i = (((b * g.lq + q) * m + h) * l + lv) * p + pt;
                        for k in 0..2 {
                            let off = offsets[2 * i + k];
                            let size = if k == 0 { ww } else { hh };
                            let u = if r == 2 {
                                rf[k] + off / size as f64
                            } else {
                                rf[k] + off / p as f64 * rf[2 + k] * 0.5
                            };
                            min_dist = min_dist.min(grid_dist(u, size));
                            loc[2 * i + k] = u;
                        }
                    }
                }
            }
        }
    }
    let core = core_ref(g, &value, &loc, &attw);
    (linear_ref(&core, &w.op_w, &w.op_b, c, c), min_dist)
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn device() -> Device {
    rlip_backends::default_device().expect("flex device")
}

fn tensor<const D: usize>(v: &[f32], shape: [usize; D], dev: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), dev)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn max_abs_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths");
    got.iter()
        .zip(want)
        .map(|(a, b)| {
            let d = (*a as f64 - b).abs();
            if d.is_nan() { f64::INFINITY } else { d }
        })
        .fold(0.0, f64::max)
}

/// Asserts `|got − want| ≤ GRAD_ABS + GRAD_REL·|want|` elementwise; returns max |got − want|.
fn check_grad(name: &str, got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{name}: lengths");
    let mut worst = (0.0, 0usize);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let d = (*a as f64 - b).abs();
        assert!(
            d <= GRAD_ABS + GRAD_REL * b.abs(),
            "{name}[{i}]: autodiff {a} vs finite differences {b} (|Δ| = {d:.3e})"
        );
        if d > worst.0 {
            worst = (d, i);
        }
    }
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    println!(
        "{name:<24} max |autodiff − fd| {:.3e} (at {}; max |fd| {scale:.3e})",
        worst.0, worst.1
    );
    worst.0
}

/// Central differences of `f` at `x`, one coordinate at a time.
fn central_diff(x: &[f64], step: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            xs[i] = x[i] + step;
            let fp = f(&xs);
            xs[i] = x[i] - step;
            let fm = f(&xs);
            xs[i] = x[i];
            (fp - fm) / (2.0 * step)
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A sampling core: the portable composite or the fused CPU kernel.
type CoreFn = fn(Tensor<4>, &SpatialShapes, Tensor<6>, Tensor<5>) -> Tensor<3>;

fn fused_core(v: Tensor<4>, s: &SpatialShapes, loc: Tensor<6>, w: Tensor<5>) -> Tensor<3> {
    FusedMsda
        .forward(&v, s, &loc, &w)
        .expect("the fused kernel accepts f32 tensors on flex and cubecl devices")
}

/// Both implementations of the core; every core check runs on each.
const CORES: [(&str, CoreFn); 2] = [
    ("portable", ms_deform_attn_core_portable),
    ("fused", fused_core),
];

/// The other compiled-in backends (of the parity selection) where the fused kernel runs: the
/// CubeCL kernels on wgpu (and cuda with `RLIP_PARITY_CUDA`).
fn fused_devices() -> Vec<(String, Device)> {
    rlip_tests::parity::devices()
        .into_iter()
        .filter(|(k, d)| {
            *k != rlip_backends::BackendKind::Flex && rlip_backends::msda::supported(d)
        })
        .map(|(k, d)| (format!("fused-{k}"), d))
        .collect()
}

fn run_core(core: CoreFn, c: &CoreCase, dev: &Device) -> Vec<f32> {
    let g = &c.g;
    let v = tensor(&c.value, [g.n, g.s(), g.m, g.d], dev);
    let loc = tensor(&c.loc, [g.n, g.lq, g.m, g.l(), g.p, 2], dev);
    let w = tensor(&c.attw, [g.n, g.lq, g.m, g.l(), g.p], dev);
    let out = core(v, &g.shapes, loc, w);
    assert_eq!(out.dims(), [g.n, g.lq, g.m * g.d]);
    host(out)
}

// ---------------------------------------------------------------------------------------------
// 1. Forward of the core.

#[test]
fn core_matches_f64_reference() {
    let dev = device();
    let geoms = [
        Geom {
            n: 2,
            lq: 6,
            m: 4,
            d: 3,
            p: 3,
            shapes: vec![[5, 7], [3, 2], [1, 1], [2, 5]],
        },
        Geom {
            n: 2,
            lq: 5,
            m: 8,
            d: 2,
            p: 2,
            shapes: vec![[1, 1], [4, 3]],
        },
        Geom {
            n: 2,
            lq: 4,
            m: 2,
            d: 4,
            p: 4,
            shapes: vec![[3, 3], [1, 4], [6, 1]],
        },
    ];
    let mut worst: f64 = 0.0;
    for (gi, g) in geoms.iter().enumerate() {
        for (special, seed) in [(false, 11u64), (true, 12), (true, 13)] {
            let c = gen_core_case(seed + 100 * gi as u64, g.clone(), special, false);
            let want = core_ref(g, &f64s(&c.value), &f64s(&c.loc), &f64s(&c.attw));
            let runs = CORES
                .iter()
                .map(|(n, core)| (n.to_string(), *core, dev.clone()))
                .chain(
                    fused_devices()
                        .into_iter()
                        .map(|(n, d)| (n, fused_core as CoreFn, d)),
                );
            for (name, core, dev) in runs {
                let got = run_core(core, &c, &dev);
                let err = max_abs_err(&got, &want);
                let outside = c.loc.iter().filter(|u| !(0.0..=1.0).contains(*u)).count();
                println!(
                    "{name}: geometry {gi} special {special:<5}: max |f32 − f64| {err:.3e} ({outside}/{} coords outside [0,1])",
                    c.loc.len()
                );
                assert!(
                    err <= CORE_TOL,
                    "{name}: geometry {gi} {g:?} special {special}: max error {err:.3e}"
                );
                worst = worst.max(err);
            }
        }
    }
    println!("core forward: worst max |f32 − f64| = {worst:.3e} (tol {CORE_TOL:.0e})");
}

/// Hand-checkable points on a 2×3 map: exact pixel centres give the pixel, borders give the
/// average with the zero padding, points a whole pixel outside give 0.
#[test]
fn core_exact_points() {
    let dev = device();
    let g = Geom {
        n: 1,
        lq: 1,
        m: 1,
        d: 1,
        p: 6,
        shapes: vec![[2, 3]],
    };
    let value: Vec<f32> = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0]; // rows (y) of 3 (x)
    // (x, y) normalised.
    let pts: [(f32, f32, f64); 6] = [
        (0.5 / 3.0, 0.25, 1.0),               // centre of pixel (0, 0)
        (2.5 / 3.0, 0.75, 32.0),              // centre of pixel (2, 1)
        (0.0, 0.25, 0.5),                     // left border beside (0, 0): half of it
        (1.0, 1.0, 8.0),                      // bottom-right corner: a quarter of 32
        (-1.0 / 3.0 + 0.5 / 3.0, 0.25, 0.0),  // one pixel left of (0, 0): nothing
        (1.5 / 3.0, 0.5, (2.0 + 16.0) / 2.0), // centre column, between the two rows
    ];
    let mut loc = Vec::new();
    for (x, y, _) in pts {
        loc.extend([x, y]);
    }
    for (k, (_, _, want)) in pts.iter().enumerate() {
        let mut attw = vec![0.0f32; g.p];
        attw[k] = 1.0;
        let c = CoreCase {
            g: g.clone(),
            value: value.clone(),
            loc: loc.clone(),
            attw,
        };
        for (name, core) in CORES {
            let got = run_core(core, &c, &dev)[0] as f64;
            let r = core_ref(&g, &f64s(&c.value), &f64s(&c.loc), &f64s(&c.attw))[0];
            assert!(
                (r - want).abs() < 1e-6,
                "reference at point {k}: {r} vs {want}"
            );
            assert!(
                (got - want).abs() < CORE_TOL,
                "{name}: point {k} {:?}: got {got}, expected {want}",
                pts[k]
            );
        }
    }
}

/// The fused kernel on the GPU backends at the real encoder shape of an 800x1333 input (4 levels,
/// 22,223 tokens and queries, 8 heads x 32, 4 points) against the flex kernel: index
/// arithmetic, level table and launch geometry at full size, where the small cases above do not
/// reach (the CUDA kernel faulted at this shape in its first form, with the level table in a side
/// tensor).
#[test]
fn fused_core_at_the_encoder_shape() {
    let shapes = vec![[100, 167], [50, 84], [25, 42], [13, 21]];
    let g = Geom {
        n: 1,
        lq: shapes.iter().map(|[h, w]| h * w).sum(),
        m: 8,
        d: 32,
        p: 4,
        shapes,
    };
    // Four cases of the same shape back to back: each output lands in the buffer the one before
    // was read from, so a read that did not wait for its kernel would return the previous
    // case's values (bench/history.md: on lavapipe a read once returned before its kernel ran).
    let cases = [17, 18, 19, 20].map(|seed| gen_core_case(seed, g.clone(), true, false));
    let want = cases.each_ref().map(|c| run_core(fused_core, c, &device()));
    for (name, dev) in fused_devices() {
        for (c, want) in cases.iter().zip(&want) {
            let got = run_core(fused_core, c, &dev);
            let err = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-5, "{name}: max |difference| to flex {err}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Padded levels and the whole module.

/// A padded batch of 2: element 0 fills every level, element 1 only `valid` of each level.
struct Padded {
    g: Geom,
    /// `[N, S]`, true on padded tokens.
    padding: Vec<bool>,
    /// Encoder reference points `[N, Lq = S, L, 2]` scaled by the valid ratios (official recipe).
    reference: Vec<f32>,
}

fn padded_batch(m: usize, d: usize, p: usize) -> Padded {
    let shapes = vec![[4, 5], [2, 3], [1, 2]];
    let valid = [[[4, 5], [2, 3], [1, 2]], [[3, 3], [2, 2], [1, 1]]];
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let g = Geom {
        n: 2,
        lq: s,
        m,
        d,
        p,
        shapes: shapes.clone(),
    };
    let l = shapes.len();
    let mut padding = Vec::new();
    let mut reference = Vec::new();
    for vb in &valid {
        // valid ratios (w, h) per level, as the official get_valid_ratio computes them
        let vr: Vec<[f64; 2]> = shapes
            .iter()
            .zip(vb)
            .map(|([h, w], [vh, vw])| [*vw as f64 / *w as f64, *vh as f64 / *h as f64])
            .collect();
        for (lv, &[h, w]) in shapes.iter().enumerate() {
            for y in 0..h {
                for x in 0..w {
                    padding.push(y >= vb[lv][0] || x >= vb[lv][1]);
                    let rx = (x as f64 + 0.5) / (vr[lv][0] * w as f64);
                    let ry = (y as f64 + 0.5) / (vr[lv][1] * h as f64);
                    for r in vr.iter().take(l) {
                        reference.extend([(rx * r[0]) as f32, (ry * r[1]) as f32]);
                    }
                }
            }
        }
    }
    Padded {
        g,
        padding,
        reference,
    }
}

#[test]
fn padded_levels_with_valid_ratios() {
    let dev = device();
    let pb = padded_batch(4, 2, 3);
    let g = &pb.g;
    let l = g.l();
    let mut rng = Rng(21);
    let mut value = rng.vec(g.value_len(), -1.0, 1.0);
    for (t, &pad) in pb.padding.iter().enumerate() {
        if pad {
            value[t * g.m * g.d..(t + 1) * g.m * g.d]
                .iter_mut()
                .for_each(|v| *v = 0.0);
        }
    }
    let offsets = rng.vec(2 * g.samples(), -1.5, 1.5); // pixels of each level
    let attw = rng.vec(g.samples(), 0.0, 1.0);

    // Locations through the crate's `sampling_locations` (2-d branch) vs f64.
    let loc_t = sampling_locations(
        tensor(&pb.reference, [g.n, g.lq, l, 2], &dev),
        tensor(&offsets, [g.n, g.lq, g.m, l, g.p, 2], &dev),
        &g.shapes,
        g.p,
    );
    let loc = host(loc_t);
    let mut loc_want = vec![0.0f64; 2 * g.samples()];
    for (i, lw) in loc_want.chunks_mut(2).enumerate() {
        let (bq, lv) = (i / (g.m * l * g.p), g.level_of(i));
        let [h, w] = g.shapes[lv];
        lw[0] = pb.reference[(bq * l + lv) * 2] as f64 + offsets[2 * i] as f64 / w as f64;
        lw[1] = pb.reference[(bq * l + lv) * 2 + 1] as f64 + offsets[2 * i + 1] as f64 / h as f64;
    }
    let loc_err = max_abs_err(&loc, &loc_want);
    assert!(
        loc_err <= 1e-6,
        "sampling locations: max error {loc_err:.3e}"
    );
    // Reference points of element 1's unpadded tokens stay inside its valid region.
    let per_token = 2 * l;
    let b1 = &pb.reference[pb.reference.len() / 2..];
    let pad1 = &pb.padding[g.lq..];
    assert!(
        b1.chunks(per_token)
            .zip(pad1)
            .filter(|(_, p)| !**p)
            .all(|(r, _)| r.iter().all(|&u| u > 0.0 && u < 1.0))
    );

    let c = CoreCase {
        g: g.clone(),
        value,
        loc,
        attw,
    };
    let want = core_ref(g, &f64s(&c.value), &f64s(&c.loc), &f64s(&c.attw));
    for (name, core) in CORES {
        let err = max_abs_err(&run_core(core, &c, &dev), &want);
        println!(
            "{name}: padded batch: locations max err {loc_err:.3e}, core max |f32 − f64| {err:.3e}"
        );
        assert!(err <= CORE_TOL, "{name}: padded core: max error {err:.3e}");
    }
}

/// Random module parameters, as a state dict under prefix `x` and as f64.
fn module_params(seed: u64, c: usize, m: usize, l: usize, p: usize) -> (StateDict, ModuleParams) {
    let mut rng = Rng(seed);
    let mut sd = StateDict::new();
    let mut put = |key: &str, shape: Vec<usize>, lo: f64, hi: f64| {
        let v = rng.vec(shape.iter().product(), lo, hi);
        sd.insert(format!("x.{key}"), RawTensor::from_f32(shape, &v));
        f64s(&v)
    };
    let off = m * l * p * 2;
    let params = ModuleParams {
        so_w: put("sampling_offsets.weight", vec![off, c], -0.4, 0.4),
        so_b: put("sampling_offsets.bias", vec![off], -2.0, 2.0),
        aw_w: put("attention_weights.weight", vec![m * l * p, c], -0.8, 0.8),
        aw_b: put("attention_weights.bias", vec![m * l * p], -1.0, 1.0),
        vp_w: put("value_proj.weight", vec![c, c], -0.6, 0.6),
        vp_b: put("value_proj.bias", vec![c], -0.3, 0.3),
        op_w: put("output_proj.weight", vec![c, c], -0.6, 0.6),
        op_b: put("output_proj.bias", vec![c], -0.3, 0.3),
    };
    (sd, params)
}

fn load_module(sd: &StateDict, cfg: MsdaConfig, dev: &Device) -> MsDeformAttn {
    let mut ld = Loader::new(sd, dev, "random msda");
    let module = MsDeformAttn::load(&mut ld, "x", cfg);
    let report = ld.finish().expect("all keys load");
    assert!(report.is_clean(), "{report}");
    module
}

fn padding_tensor(padding: &[bool], n: usize, dev: &Device) -> Tensor<2, Bool> {
    Tensor::from_data(
        TensorData::new(padding.to_vec(), [n, padding.len() / n]),
        dev,
    )
}

/// 4-d box references `(cx, cy, w, h)` `[N, Lq, L, 4]`.
fn box_reference(rng: &mut Rng, n: usize, lq: usize, l: usize) -> Vec<f32> {
    (0..n * lq * l)
        .flat_map(|_| {
            let (cx, cy) = (rng.range(0.1, 0.9), rng.range(0.1, 0.9));
            let (w, h) = (rng.range(0.05, 0.7), rng.range(0.05, 0.7));
            [cx as f32, cy as f32, w as f32, h as f32]
        })
        .collect()
}

#[test]
fn module_matches_f64_reference() {
    let dev = device();
    let (m, d, p) = (2, 4, 2);
    let pb = padded_batch(m, d, p);
    let c = m * d;
    let l = pb.g.l();
    let s = pb.g.s();
    let cfg = MsdaConfig {
        d_model: c,
        n_levels: l,
        n_heads: m,
        n_points: p,
    };
    let (sd, params) = module_params(31, c, m, l, p);
    let module = load_module(&sd, cfg, &dev);
    let mut rng = Rng(32);
    let input = rng.vec(2 * s * c, -1.0, 1.0);
    // Same tokens with different garbage in the padded positions: must not matter.
    let mut input2 = input.clone();
    for (t, &pad) in pb.padding.iter().enumerate() {
        if pad {
            input2[t * c..(t + 1) * c]
                .iter_mut()
                .for_each(|v| *v = rng.range(-50.0, 50.0) as f32);
        }
    }
    let mask = || padding_tensor(&pb.padding, 2, &dev);

    // Encoder self-attention: queries are the tokens, 2-d reference points.
    let g = &pb.g;
    let run = |query: &[f32], reference: &[f32], r: usize, g: &Geom, input: &[f32]| {
        let out = module.forward(
            tensor(query, [g.n, g.lq, c], &dev),
            tensor(reference, [g.n, g.lq, l, r], &dev),
            tensor(input, [g.n, s, c], &dev),
            &g.shapes,
            Some(mask()),
        );
        assert_eq!(out.dims(), [g.n, g.lq, c]);
        host(out)
    };
    let got = run(&input, &pb.reference, 2, g, &input);
    let (want, _) = module_ref(
        g,
        &params,
        &f64s(&input),
        &f64s(&pb.reference),
        2,
        &f64s(&input),
        &pb.padding,
    );
    let err2 = max_abs_err(&got, &want);
    let got_garbage = run(&input, &pb.reference, 2, g, &input2);
    assert_eq!(
        got, got_garbage,
        "padded tokens' contents changed the output"
    );

    // Decoder-style cross-attention: 7 queries with 4-d box references.
    let gq = Geom { lq: 7, ..g.clone() };
    let query = rng.vec(2 * gq.lq * c, -1.0, 1.0);
    let boxes = box_reference(&mut rng, 2, gq.lq, l);
    let got4 = run(&query, &boxes, 4, &gq, &input);
    let (want4, _) = module_ref(
        &gq,
        &params,
        &f64s(&query),
        &f64s(&boxes),
        4,
        &f64s(&input),
        &pb.padding,
    );
    let err4 = max_abs_err(&got4, &want4);
    println!(
        "module: 2-d reference max |f32 − f64| {err2:.3e}, 4-d reference {err4:.3e} (tol {MODULE_TOL:.0e})"
    );
    assert!(
        err2 <= MODULE_TOL,
        "module (2-d reference): max error {err2:.3e}"
    );
    assert!(
        err4 <= MODULE_TOL,
        "module (4-d reference): max error {err4:.3e}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Gradients.

fn grad_geom() -> Geom {
    Geom {
        n: 2,
        lq: 3,
        m: 2,
        d: 3,
        p: 2,
        shapes: vec![[3, 4], [2, 2], [1, 1]],
    }
}

#[test]
fn core_gradients_match_finite_differences() {
    let g = grad_geom();
    let c = gen_core_case(41, g.clone(), false, true);
    let r = Rng(42).vec(g.out_len(), -1.0, 1.0);
    let (v, loc, w, r64) = (f64s(&c.value), f64s(&c.loc), f64s(&c.attw), f64s(&r));
    let fd_v = central_diff(&v, FD_STEP, |x| dot(&core_ref(&g, x, &loc, &w), &r64));
    let fd_l = central_diff(&loc, FD_STEP, |x| dot(&core_ref(&g, &v, x, &w), &r64));
    let fd_w = central_diff(&w, FD_STEP, |x| dot(&core_ref(&g, &v, &loc, x), &r64));
    let runs = CORES
        .iter()
        .map(|(n, core)| (n.to_string(), *core, device()))
        .chain(
            fused_devices()
                .into_iter()
                .map(|(n, d)| (n, fused_core as CoreFn, d)),
        );
    for (name, core, dev) in runs {
        let (gv, gl, gw, _) = core_grad_tensors(core, &c, &r, &dev);
        let (gv, gl, gw) = (host(gv), host(gl), host(gw));
        println!("{name}:");
        check_grad("d/d value", &gv, &fd_v);
        check_grad("d/d locations", &gl, &fd_l);
        check_grad("d/d weights", &gw, &fd_w);
    }
    assert!(
        fd_l.iter().any(|v| v.abs() > 0.1),
        "location gradient unexpectedly ~0"
    );
}

/// Output and gradients of `Σ out·R` w.r.t. value, locations and weights (on the autodiff
/// version of `dev`).
fn core_grad_tensors(
    core: CoreFn,
    c: &CoreCase,
    r: &[f32],
    dev: &Device,
) -> (Tensor<4>, Tensor<6>, Tensor<5>, Tensor<3>) {
    let ad = dev.clone().autodiff();
    let g = &c.g;
    let v = tensor(&c.value, [g.n, g.s(), g.m, g.d], &ad).require_grad();
    let loc = tensor(&c.loc, [g.n, g.lq, g.m, g.l(), g.p, 2], &ad).require_grad();
    let w = tensor(&c.attw, [g.n, g.lq, g.m, g.l(), g.p], &ad).require_grad();
    let out = core(v.clone(), &g.shapes, loc.clone(), w.clone());
    let rt = tensor(r, [g.n, g.lq, g.m * g.d], &ad);
    let grads = (out.clone() * rt).sum().backward();
    let gv = v.grad(&grads).expect("value gradient");
    let gl = loc.grad(&grads).expect("location gradient");
    let gw = w.grad(&grads).expect("weight gradient");
    (gv, gl, gw, out)
}

#[test]
fn module_query_gradient_matches_finite_differences() {
    let dev = device();
    let ad = dev.clone().autodiff();
    let (m, d, p) = (2, 4, 2);
    let c = m * d;
    let shapes = vec![[3, 4], [2, 2], [1, 2]];
    let l = shapes.len();
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let g = Geom {
        n: 2,
        lq: 3,
        m,
        d,
        p,
        shapes,
    };
    let cfg = MsdaConfig {
        d_model: c,
        n_levels: l,
        n_heads: m,
        n_points: p,
    };
    let padding: Vec<bool> = (0..2 * s).map(|t| t >= s && (t - s) % 4 == 3).collect();
    // Find a seed whose sampling points all stay clear of pixel-grid lines.
    let (params, sd, query, boxes, input) = (0..64u64)
        .find_map(|k| {
            let (sd, params) = module_params(51 + k, c, m, l, p);
            let mut rng = Rng(151 + k);
            let query = rng.vec(g.n * g.lq * c, -1.0, 1.0);
            let boxes = box_reference(&mut rng, g.n, g.lq, l);
            let input = rng.vec(g.n * s * c, -1.0, 1.0);
            let (_, dist) = module_ref(
                &g,
                &params,
                &f64s(&query),
                &f64s(&boxes),
                4,
                &f64s(&input),
                &padding,
            );
            (dist > 1e-3).then_some((params, sd, query, boxes, input))
        })
        .expect("a seed with sampling points off the pixel grid");
    let r = Rng(52).vec(g.out_len(), -1.0, 1.0);

    let module = load_module(&sd, cfg, &ad);
    let q = tensor(&query, [g.n, g.lq, c], &ad).require_grad();
    let out = module.forward(
        q.clone(),
        tensor(&boxes, [g.n, g.lq, l, 4], &ad),
        tensor(&input, [g.n, s, c], &ad),
        &g.shapes,
        Some(padding_tensor(&padding, g.n, &ad)),
    );
    let grads = (out * tensor(&r, [g.n, g.lq, c], &ad)).sum().backward();
    let gq = host(q.grad(&grads).expect("query gradient"));
    assert!(
        gq.iter().all(|v| v.is_finite()),
        "non-finite query gradient"
    );
    assert!(gq.iter().any(|v| v.abs() > 1e-3), "query gradient is ~0");

    let (b64, in64, r64) = (f64s(&boxes), f64s(&input), f64s(&r));
    let fd = central_diff(&f64s(&query), FD_STEP_QUERY, |x| {
        dot(
            &module_ref(&g, &params, x, &b64, 4, &in64, &padding).0,
            &r64,
        )
    });
    check_grad("module d/d query", &gq, &fd);
}

// ---------------------------------------------------------------------------------------------
// 4. Cross-backend parity.

parity_test!(msda_core_parity, PARITY_TOL, |device, out| {
    let c = gen_core_case(61, grad_geom(), true, true);
    let r = Rng(62).vec(c.g.out_len(), -1.0, 1.0);
    let (gv, gl, gw, y) = core_grad_tensors(ms_deform_attn_core, &c, &r, device);
    out.push("out", y);
    out.push("grad_value", gv);
    out.push("grad_locations", gl);
    out.push("grad_weights", gw);
});
