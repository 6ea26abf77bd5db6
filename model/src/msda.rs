//! Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021).
//!
//! [`MsDeformAttn`] is the official `MSDeformAttn` module (value/offset/weight/output projections).
//! Its sampling core, [`ms_deform_attn_core`], is the operator every backend must provide:
//! bilinear sampling with zero padding and `align_corners = false` of per-level value maps at
//! the sampling locations, weighted by the attention weights. The portable implementation here is
//! built from `grid_sample_2d` and is differentiable in values, locations and weights on every
//! device. A fused kernel registers itself with [`register_kernel`]; the model code never changes.

use std::sync::{Arc, RwLock};

use crate::dense::Linear;
use crate::norm::softmax_biased;
use burn::prelude::*;
use burn::tensor::ops::{GridSampleOptions, GridSamplePaddingMode, InterpolateMode};

use crate::weights::layers::linear_from;
use crate::weights::{Init, Loader};

/// Per-level feature-map sizes `(H, W)` of a flattened multi-scale value tensor.
pub type SpatialShapes = [[usize; 2]];

/// A replacement for the sampling core on some devices (e.g. a fused CubeCL kernel).
pub trait MsdaKernel: Send + Sync {
    /// Name shown in logs and benchmarks.
    fn name(&self) -> &str;
    /// Computes the core for tensors on `value.device()`, or returns `None` to decline
    /// (another kernel or the portable path then runs). Same contract as [`ms_deform_attn_core`].
    fn forward(
        &self,
        value: &Tensor<4>,
        shapes: &SpatialShapes,
        locations: &Tensor<6>,
        weights: &Tensor<5>,
    ) -> Option<Tensor<3>>;
}

static KERNELS: RwLock<Vec<Arc<dyn MsdaKernel>>> = RwLock::new(Vec::new());

/// Registers a sampling kernel; later registrations are tried first.
pub fn register_kernel(kernel: Arc<dyn MsdaKernel>) {
    KERNELS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(0, kernel);
}

/// The sampling core of multi-scale deformable attention.
///
/// - `value`: `[N, S, M, D]` (S = Σ H_l·W_l tokens, M heads of D channels), levels concatenated
///   in the order of `shapes`;
/// - `locations`: `[N, Lq, M, L, P, 2]` normalised `(x, y)` in `[0, 1]` (outside is zero-padded);
/// - `weights`: `[N, Lq, M, L, P]` attention weights.
///
/// Returns `[N, Lq, M·D]`. Uses a registered kernel when one accepts the inputs.
pub fn ms_deform_attn_core(
    value: Tensor<4>,
    shapes: &SpatialShapes,
    locations: Tensor<6>,
    weights: Tensor<5>,
) -> Tensor<3> {
    let kernels = KERNELS.read().unwrap_or_else(|e| e.into_inner()).clone();
    for k in kernels {
        if let Some(out) = k.forward(&value, shapes, &locations, &weights) {
            return out;
        }
    }
    ms_deform_attn_core_portable(value, shapes, locations, weights)
}

/// The portable sampling core (per level `grid_sample_2d`, then a weighted sum).
pub fn ms_deform_attn_core_portable(
    value: Tensor<4>,
    shapes: &SpatialShapes,
    locations: Tensor<6>,
    weights: Tensor<5>,
) -> Tensor<3> {
    let [n, s, m, d] = value.dims();
    let [_, lq, _, l, p, _] = locations.dims();
    assert_eq!(shapes.len(), l, "levels in locations vs spatial shapes");
    assert_eq!(
        shapes.iter().map(|[h, w]| h * w).sum::<usize>(),
        s,
        "tokens vs spatial shapes"
    );
    let grids = locations * 2.0 - 1.0;
    let opts = GridSampleOptions::new(InterpolateMode::Bilinear)
        .with_padding_mode(GridSamplePaddingMode::Zeros)
        .with_align_corners(false);
    let mut sampled = Vec::with_capacity(l);
    let mut start = 0;
    for (lvl, &[h, w]) in shapes.iter().enumerate() {
        // [N, HW, M, D] -> [N·M, D, H, W]
        let v = value
            .clone()
            .slice(s![.., start..start + h * w])
            .permute([0, 2, 3, 1])
            .reshape([n * m, d, h, w]);
        start += h * w;
        // [N, Lq, M, P, 2] -> [N·M, Lq, P, 2]
        let g = grids
            .clone()
            .slice(s![.., .., .., lvl..lvl + 1])
            .reshape([n, lq, m, p, 2])
            .swap_dims(1, 2)
            .reshape([n * m, lq, p, 2]);
        sampled.push(v.grid_sample_2d(g, opts.clone())); // [N·M, D, Lq, P]
    }
    // [N·M, D, Lq, L, P] · [N·M, 1, Lq, L, P] summed over (L, P)
    let stacked = Tensor::stack::<5>(sampled, 3).reshape([n * m, d, lq, l * p]);
    let w = weights.swap_dims(1, 2).reshape([n * m, 1, lq, l * p]);
    (stacked * w)
        .sum_dim(3)
        .reshape([n, m * d, lq])
        .swap_dims(1, 2)
}

/// Sizes of a multi-scale deformable attention module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MsdaConfig {
    /// Model width.
    pub d_model: usize,
    /// Feature levels.
    pub n_levels: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Sampling points per head and level.
    pub n_points: usize,
}

/// Which value tokens are padding, `[N, S]`: as a mask (true = padded) and as floats (1 on
/// padded tokens, the form the fused kernels read).
#[derive(Debug, Clone)]
pub struct TokenPadding {
    /// `[N, S]`, true on padded tokens.
    pub mask: Tensor<2, Bool>,
    /// `[N, S]`, 1 on padded tokens and 0 elsewhere.
    pub flags: Tensor<2>,
}

impl TokenPadding {
    /// From a mask (its float form is computed on the device).
    pub fn from_mask(mask: Tensor<2, Bool>) -> Self {
        let flags = mask.clone().float();
        Self { mask, flags }
    }

    /// From per-token flags in row-major `[n, s]` order, both forms uploaded (no kernel).
    pub fn from_flags(flags: Vec<bool>, [n, s]: [usize; 2], device: &Device) -> Self {
        let floats: Vec<f32> = flags.iter().map(|&p| f32::from(u8::from(p))).collect();
        Self {
            mask: Tensor::from_data(TensorData::new(flags, [n, s]), device),
            flags: Tensor::from_data(TensorData::new(floats, [n, s]), device),
        }
    }

    /// The tokens `range` of every row.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        Self {
            mask: self.mask.clone().slice(s![.., range.clone()]),
            flags: self.flags.clone().slice(s![.., range]),
        }
    }
}

/// The `MSDeformAttn` module.
#[derive(Module, Debug)]
pub struct MsDeformAttn {
    sampling_offsets: Linear,
    attention_weights: Linear,
    value_proj: Linear,
    output_proj: Linear,
    n_levels: usize,
    n_heads: usize,
    n_points: usize,
}

impl MsDeformAttn {
    /// Loads `{prefix}.{sampling_offsets,attention_weights,value_proj,output_proj}`; absent
    /// parameters get the official initialisation.
    pub fn load(ld: &mut Loader, prefix: &str, c: MsdaConfig) -> Self {
        let (d, m, l, p) = (c.d_model, c.n_heads, c.n_levels, c.n_points);
        let off = m * l * p * 2;
        let sw = ld.tensor::<2>(
            &format!("{prefix}.sampling_offsets.weight"),
            [off, d],
            Init::Zeros,
        );
        let sb = ld.tensor_with::<1>(&format!("{prefix}.sampling_offsets.bias"), [off], || {
            // Head h looks along angle 2πh/M, normalised to the unit square, at distances 1..=P.
            let mut v = Vec::with_capacity(off);
            for h in 0..m {
                let t = (h as f32) * (2.0 * std::f32::consts::PI / m as f32);
                let (x, y) = (t.cos(), t.sin());
                let norm = x.abs().max(y.abs());
                for _ in 0..l {
                    for k in 0..p {
                        v.push(x / norm * (k + 1) as f32);
                        v.push(y / norm * (k + 1) as f32);
                    }
                }
            }
            v
        });
        let aw = ld.tensor::<2>(
            &format!("{prefix}.attention_weights.weight"),
            [m * l * p, d],
            Init::Zeros,
        );
        let ab = ld.tensor::<1>(
            &format!("{prefix}.attention_weights.bias"),
            [m * l * p],
            Init::Zeros,
        );
        let value_proj = xavier_linear(ld, &format!("{prefix}.value_proj"), d);
        let output_proj = xavier_linear(ld, &format!("{prefix}.output_proj"), d);
        Self {
            sampling_offsets: linear_from(sw, Some(sb)),
            attention_weights: linear_from(aw, Some(ab)),
            value_proj,
            output_proj,
            n_levels: l,
            n_heads: m,
            n_points: p,
        }
    }

    /// Attends from `query` `[N, Lq, C]` to `input` `[N, S, C]`.
    ///
    /// `reference` is `[N, Lq, L, 2]` points or `[N, Lq, L, 4]` boxes `(cx, cy, w, h)`, normalised;
    /// `padding` (`[N, S]`, true on padded tokens) zeroes those values.
    pub fn forward(
        &self,
        query: Tensor<3>,
        reference: Tensor<4>,
        input: Tensor<3>,
        shapes: &SpatialShapes,
        padding: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let padding = padding.map(TokenPadding::from_mask);
        self.forward_biased(query, reference, input, shapes, padding.as_ref())
            .resolve()
    }

    /// [`MsDeformAttn::forward`] with the output projection's bias possibly still due
    /// ([`Linear::forward_biased`]).
    pub fn forward_biased(
        &self,
        query: Tensor<3>,
        reference: Tensor<4>,
        input: Tensor<3>,
        shapes: &SpatialShapes,
        padding: Option<&TokenPadding>,
    ) -> crate::dense::Biased<3> {
        let [n, lq, _] = query.dims();
        let [_, s, c] = input.dims();
        let (m, l, p) = (self.n_heads, self.n_levels, self.n_points);
        let value = self.value_proj.forward_biased(input);
        let value = match padding {
            Some(pad) => value.zero_rows(&pad.flags.clone().reshape([n * s]), |v| {
                v.mask_fill(
                    pad.mask.clone().unsqueeze_dim::<3>(2).expand([n, s, c]),
                    0.0,
                )
            }),
            None => value.resolve(),
        };
        let value = value.reshape([n, s, m, c / m]);
        let offsets = self
            .sampling_offsets
            .forward_biased(query.clone())
            .reshape([n, lq, m, l, p, 2]);
        let weights =
            softmax_biased(
                self.attention_weights
                    .forward_biased(query)
                    .reshape([n, lq, m, l * p]),
            )
            .reshape([n, lq, m, l, p]);
        let locations = sampling_locations_biased(reference, offsets, shapes, p);
        self.output_proj
            .forward_biased(ms_deform_attn_core(value, shapes, locations, weights))
    }
}

/// [`sampling_locations`] of offsets whose bias may still be due
/// ([`crate::dense::Linear::forward_biased`]): the bias add and the placement around the
/// references in one launch where a [`crate::fused::FusedKernel`] takes them.
pub fn sampling_locations_biased(
    reference: Tensor<4>,
    offsets: crate::dense::Biased<6>,
    shapes: &SpatialShapes,
    n_points: usize,
) -> Tensor<6> {
    if let (Some(bias), Some(k)) = (offsets.bias.as_ref(), crate::fused::kernel()) {
        let r = reference.dims()[3];
        let normalizer = match r {
            2 => level_normalizer(shapes, &reference.device()),
            _ => bias.clone(),
        };
        if let Some(loc) = k.sampling_locations(&offsets.product, bias, &reference, &normalizer) {
            return loc;
        }
    }
    sampling_locations(reference, offsets.resolve(), shapes, n_points)
}

/// Each level's `(width, height)`, `[L·2]`: what point offsets are divided by.
fn level_normalizer(shapes: &SpatialShapes, device: &Device) -> Tensor<1> {
    let norm: Vec<f32> = shapes
        .iter()
        .flat_map(|&[h, w]| [w as f32, h as f32])
        .collect();
    let l = norm.len();
    Tensor::<1>::from_data(TensorData::new(norm, [l]), device)
}

/// Sampling locations `[N, Lq, M, L, P, 2]` from reference points or boxes and raw offsets, as the
/// official module computes them (offsets in pixels of each level for points; in units of
/// `P`-ths of the half box size for boxes).
pub fn sampling_locations(
    reference: Tensor<4>,
    offsets: Tensor<6>,
    shapes: &SpatialShapes,
    n_points: usize,
) -> Tensor<6> {
    let [n, lq, l, r] = reference.dims();
    let device = reference.device();
    match r {
        2 => {
            let norm = level_normalizer(shapes, &device).reshape([1, 1, 1, l, 1, 2]);
            reference.reshape([n, lq, 1, l, 1, 2]) + offsets / norm
        }
        4 => {
            let xy = reference
                .clone()
                .slice(s![.., .., .., 0..2])
                .reshape([n, lq, 1, l, 1, 2]);
            let wh = reference
                .slice(s![.., .., .., 2..4])
                .reshape([n, lq, 1, l, 1, 2]);
            xy + offsets / n_points as f32 * wh * 0.5
        }
        _ => panic!("reference points must have 2 or 4 coordinates, got {r}"),
    }
}

fn xavier_linear(ld: &mut Loader, prefix: &str, d: usize) -> Linear {
    // Xavier bound sqrt(6 / (d + d)) = sqrt(3 / fan_in) for a square weight.
    let w = ld.tensor::<2>(&format!("{prefix}.weight"), [d, d], Init::XavierUniform);
    let b = ld.tensor::<1>(&format!("{prefix}.bias"), [d], Init::Zeros);
    linear_from(w, Some(b))
}
