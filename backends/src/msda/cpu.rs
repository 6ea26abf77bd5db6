//! Multi-scale deformable attention sampling on the CPU: forward and backward as plain loops over
//! `f32` slices, parallel with rayon. Same contract as `rlip_model::msda::ms_deform_attn_core`:
//! bilinear sampling with zero padding and `align_corners = false` (pixel coordinate
//! `x · W − 0.5`), weighted by the attention weights and summed over levels and points.

use rayon::prelude::*;

/// Sizes of one sampling call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dims {
    /// Batch.
    pub n: usize,
    /// Value tokens (Σ H·W).
    pub s: usize,
    /// Heads.
    pub m: usize,
    /// Channels per head.
    pub d: usize,
    /// Queries.
    pub lq: usize,
    /// Points per level and head.
    pub p: usize,
    /// Per-level `(H, W)`.
    pub shapes: Vec<[usize; 2]>,
}

impl Dims {
    fn levels(&self) -> usize {
        self.shapes.len()
    }

    /// First token of every level.
    fn starts(&self) -> Vec<usize> {
        let mut acc = 0;
        self.shapes
            .iter()
            .map(|[h, w]| {
                let s = acc;
                acc += h * w;
                s
            })
            .collect()
    }
}

/// The up to four in-bounds corners of a bilinear sample: `(token offset in the level, weight,
/// ∂weight/∂x, ∂weight/∂y)` with `x`, `y` in pixels.
fn corners(lx: f32, ly: f32, h: usize, w: usize) -> impl Iterator<Item = (usize, f32, f32, f32)> {
    let (px, py) = (lx * w as f32 - 0.5, ly * h as f32 - 0.5);
    let (x0, y0) = (px.floor(), py.floor());
    let (fx, fy) = (px - x0, py - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    [
        (0, 0, (1.0 - fx) * (1.0 - fy), -(1.0 - fy), -(1.0 - fx)),
        (1, 0, fx * (1.0 - fy), 1.0 - fy, -fx),
        (0, 1, (1.0 - fx) * fy, -fy, 1.0 - fx),
        (1, 1, fx * fy, fy, fx),
    ]
    .into_iter()
    .filter_map(move |(dx, dy, cw, dcx, dcy)| {
        let (x, y) = (x0 + dx, y0 + dy);
        (x >= 0
            && y >= 0
            && (x as usize) < w
            && (y as usize) < h
            && px.is_finite()
            && py.is_finite())
        .then(|| ((y as usize) * w + x as usize, cw, dcx, dcy))
    })
}

/// Forward: `value [N, S, M, D]`, `loc [N, Lq, M, L, P, 2]`, `attn [N, Lq, M, L, P]` →
/// `[N, Lq, M·D]`.
pub fn forward(dims: &Dims, value: &[f32], loc: &[f32], attn: &[f32]) -> Vec<f32> {
    let Dims { s, m, d, lq, p, .. } = *dims;
    let l = dims.levels();
    let starts = dims.starts();
    let mut out = vec![0f32; dims.n * lq * m * d];
    out.par_chunks_mut(m * d).enumerate().for_each(|(nq, row)| {
        let n = nq / lq;
        for head in 0..m {
            let acc = &mut row[head * d..(head + 1) * d];
            for (lvl, &[h, w]) in dims.shapes.iter().enumerate() {
                for pt in 0..p {
                    let k = ((nq * m + head) * l + lvl) * p + pt;
                    let a = attn[k];
                    for (tok, cw, _, _) in corners(loc[2 * k], loc[2 * k + 1], h, w) {
                        let base = ((n * s + starts[lvl] + tok) * m + head) * d;
                        let f = a * cw;
                        for (o, v) in acc.iter_mut().zip(&value[base..base + d]) {
                            *o += f * v;
                        }
                    }
                }
            }
        }
    });
    out
}

/// Gradients of [`forward`] for the output gradient `grad [N, Lq, M·D]`: `(∂value, ∂loc, ∂attn)`
/// with the shapes of the inputs.
pub fn backward(
    dims: &Dims,
    value: &[f32],
    loc: &[f32],
    attn: &[f32],
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims {
        n, s, m, d, lq, p, ..
    } = *dims;
    let l = dims.levels();
    let starts = dims.starts();
    let pts = m * l * p;
    // ∂loc and ∂attn: independent per (n, q)
    let mut g_loc = vec![0f32; n * lq * pts * 2];
    let mut g_attn = vec![0f32; n * lq * pts];
    g_loc
        .par_chunks_mut(pts * 2)
        .zip(g_attn.par_chunks_mut(pts))
        .enumerate()
        .for_each(|(nq, (gl, ga))| {
            let nn = nq / lq;
            for head in 0..m {
                let go = &grad[(nq * m + head) * d..(nq * m + head + 1) * d];
                for (lvl, &[h, w]) in dims.shapes.iter().enumerate() {
                    for pt in 0..p {
                        let j = (head * l + lvl) * p + pt;
                        let k = nq * pts + j;
                        let a = attn[k];
                        let (mut gs, mut gx, mut gy) = (0f32, 0f32, 0f32);
                        for (tok, cw, dcx, dcy) in corners(loc[2 * k], loc[2 * k + 1], h, w) {
                            let base = ((nn * s + starts[lvl] + tok) * m + head) * d;
                            let dot: f32 = go
                                .iter()
                                .zip(&value[base..base + d])
                                .map(|(g, v)| g * v)
                                .sum();
                            gs += cw * dot;
                            gx += dcx * dot;
                            gy += dcy * dot;
                        }
                        ga[j] = gs;
                        gl[2 * j] = a * gx * w as f32;
                        gl[2 * j + 1] = a * gy * h as f32;
                    }
                }
            }
        });
    // ∂value: accumulated per (n, head) into a [N, M, S, D] buffer, then laid out as [N, S, M, D]
    let mut g_nm = vec![0f32; n * m * s * d];
    g_nm.par_chunks_mut(s * d).enumerate().for_each(|(nm, gv)| {
        let (nn, head) = (nm / m, nm % m);
        for q in 0..lq {
            let nq = nn * lq + q;
            let go = &grad[(nq * m + head) * d..(nq * m + head + 1) * d];
            for (lvl, &[h, w]) in dims.shapes.iter().enumerate() {
                for pt in 0..p {
                    let k = nq * pts + (head * l + lvl) * p + pt;
                    let a = attn[k];
                    for (tok, cw, _, _) in corners(loc[2 * k], loc[2 * k + 1], h, w) {
                        let base = (starts[lvl] + tok) * d;
                        let f = a * cw;
                        for (o, g) in gv[base..base + d].iter_mut().zip(go) {
                            *o += f * g;
                        }
                    }
                }
            }
        }
    });
    let mut g_value = vec![0f32; n * s * m * d];
    g_value
        .par_chunks_mut(s * m * d)
        .enumerate()
        .for_each(|(nn, gv)| {
            for head in 0..m {
                let src = &g_nm[(nn * m + head) * s * d..(nn * m + head + 1) * s * d];
                for tok in 0..s {
                    gv[(tok * m + head) * d..(tok * m + head + 1) * d]
                        .copy_from_slice(&src[tok * d..(tok + 1) * d]);
                }
            }
        });
    (g_value, g_loc, g_attn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> Dims {
        Dims {
            n: 2,
            s: 3 * 4 + 2 * 2,
            m: 2,
            d: 3,
            lq: 5,
            p: 2,
            shapes: vec![[3, 4], [2, 2]],
        }
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32) / (1u64 << 24) as f32
    }

    fn inputs(dims: &Dims, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut sd = seed;
        let l = dims.levels();
        let value = (0..dims.n * dims.s * dims.m * dims.d)
            .map(|_| lcg(&mut sd) * 2.0 - 1.0)
            .collect();
        // locations partly outside [0, 1] to exercise the zero padding
        let loc = (0..dims.n * dims.lq * dims.m * l * dims.p * 2)
            .map(|_| lcg(&mut sd) * 1.4 - 0.2)
            .collect();
        let attn = (0..dims.n * dims.lq * dims.m * l * dims.p)
            .map(|_| lcg(&mut sd))
            .collect();
        (value, loc, attn)
    }

    /// ⟨forward(inputs), r⟩ for a fixed random `r`: its gradient is `backward(…, r)`.
    fn objective(dims: &Dims, v: &[f32], lo: &[f32], a: &[f32], r: &[f32]) -> f64 {
        forward(dims, v, lo, a)
            .iter()
            .zip(r)
            .map(|(o, r)| (*o as f64) * (*r as f64))
            .sum()
    }

    #[test]
    fn backward_matches_finite_differences() {
        let dims = dims();
        let (v, lo, a) = inputs(&dims, 7);
        let mut sd = 99;
        let r: Vec<f32> = (0..dims.n * dims.lq * dims.m * dims.d)
            .map(|_| lcg(&mut sd) - 0.5)
            .collect();
        let (gv, gl, ga) = backward(&dims, &v, &lo, &a, &r);
        let eps = 1e-3f32;
        let check = |which: usize, g: &[f32]| {
            let base = [v.clone(), lo.clone(), a.clone()];
            for i in (0..g.len()).step_by(7) {
                let mut plus = base.clone();
                plus[which][i] += eps;
                let mut minus = base.clone();
                minus[which][i] -= eps;
                let fd = (objective(&dims, &plus[0], &plus[1], &plus[2], &r)
                    - objective(&dims, &minus[0], &minus[1], &minus[2], &r))
                    / (2.0 * eps as f64);
                // the sampling is piecewise bilinear: a finite difference across a pixel edge
                // differs from the one-sided derivative, so compare loosely per element
                assert!(
                    (fd - g[i] as f64).abs() < 2e-2 * (1.0 + fd.abs()),
                    "input {which} element {i}: finite difference {fd}, backward {}",
                    g[i]
                );
            }
        };
        check(0, &gv);
        check(2, &ga);
        check(1, &gl);
    }

    #[test]
    fn outside_points_sample_zero() {
        let dims = dims();
        let (v, _, a) = inputs(&dims, 3);
        let lo = vec![1.5f32; dims.n * dims.lq * dims.m * 2 * dims.p * 2];
        assert!(forward(&dims, &v, &lo, &a).iter().all(|&x| x == 0.0));
    }
}
