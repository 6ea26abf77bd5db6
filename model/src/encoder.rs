//! Multi-scale encoder input (input projections, masks, positional encodings, level embeddings)
//! and the deformable encoder layer.
//!
//! Follows the official RLIPv2-ParSeDA (`models/hoi.py`, `models/deformable_transformer.py`):
//! three backbone levels go through `1×1 conv + GroupNorm(32)`; a fourth, stride-64 level is a
//! `3×3 / stride 2 conv + GroupNorm(32)` on the raw last backbone map. Each level's mask is the
//! image mask resized by nearest neighbour, and its positional encoding the sine encoding of that
//! mask plus the level embedding.

use crate::dense::{Linear, conv_forward};
use crate::norm::LayerNorm;
use burn::module::Param;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use crate::msda::{MsDeformAttn, MsdaConfig, TokenPadding};
use crate::position::{PaddingMask, encoder_reference_points, sine_coordinates, sine_embed};
use crate::weights::layers::{ConvSpec, conv2d, group_norm, layer_norm, linear};
use crate::weights::{Init, Loader};

/// One input projection: a convolution followed by GroupNorm(32).
#[derive(Module, Debug)]
pub struct Projection {
    conv: Conv2d,
    norm: GroupNorm,
}

impl Projection {
    /// Applies conv then GroupNorm.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        group_norm_blocked(&self.norm, conv_forward(&self.conv, x))
    }
}

/// GroupNorm with two-level (blocked) sums for the statistics.
///
/// A group of a large feature map holds tens of thousands of values; one running f32 sum over
/// them loses about 1e-4 relative accuracy on padded batches, ten times the official float32
/// error. Summing blocks of about √n values first, then the block sums, keeps the error at the
/// level of PyTorch's cascaded reductions. Two passes: mean, then mean of squared deviations.
pub fn group_norm_blocked(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let g = norm.num_groups;
    if let (Some(k), Some(gm), Some(bt)) = (crate::fused::kernel(), &norm.gamma, &norm.beta)
        && let Some(y) = k.group_norm(&x, &gm.val(), &bt.val(), g, norm.epsilon)
    {
        return y;
    }
    let n = c / g * h * w;
    let block = sum_block(n);
    // the statistics are a float32 island in the reduced-precision modes
    let y = crate::norm::in_f32(x, |x| {
        let blocked = x.reshape([b, g, n / block, block]);
        let mean = blocked.clone().sum_dim(3).sum_dim(2) / n as f64;
        let centred = blocked - mean;
        let var = centred.clone().powi_scalar(2).sum_dim(3).sum_dim(2) / n as f64;
        (centred / (var + norm.epsilon).sqrt()).reshape([b, c, h, w])
    });
    let y = match &norm.gamma {
        Some(gm) => y * gm.val().reshape([1, c, 1, 1]),
        None => y,
    };
    match &norm.beta {
        Some(bt) => y + bt.val().reshape([1, c, 1, 1]),
        None => y,
    }
}

/// The block length of [`group_norm_blocked`]'s sums over `n` values: the largest divisor of
/// `n` at most `√n`.
pub fn sum_block(n: usize) -> usize {
    (1..=n)
        .filter(|d| n.is_multiple_of(*d) && d * d <= n)
        .max()
        .unwrap_or(1)
}

/// The input projections of all levels plus the learned level embeddings.
#[derive(Module, Debug)]
pub struct InputProjections {
    /// `input_proj.{l}`; the levels past the backbone's are strided 3×3 convolutions.
    pub levels: Vec<Projection>,
    /// `transformer.level_embed` `[L, d]`.
    pub level_embed: Param<Tensor<2>>,
    /// Subtract 0.5 in the sine encoding (Swin path).
    pos_offset: bool,
}

/// The flattened multi-scale encoder input.
#[derive(Debug, Clone)]
pub struct MultiScale {
    /// Projected maps per level, `[B, d, H_l, W_l]`.
    pub maps: Vec<Tensor<4>>,
    /// Masks per level (true = padding).
    pub masks: Vec<PaddingMask>,
    /// `[B, S, d]` flattened features.
    pub src: Tensor<3>,
    /// `[B, S, d]` sine encoding plus level embedding.
    pub pos: Tensor<3>,
    /// `[B, S]` flattened padding (true / 1 on padded tokens).
    pub padding: TokenPadding,
    /// `(H_l, W_l)` per level.
    pub shapes: Vec<[usize; 2]>,
    /// First token of each level.
    pub level_start: Vec<usize>,
    /// Per image, per level `(w, h)` valid ratios.
    pub valid_ratios: Vec<Vec<[f32; 2]>>,
}

impl InputProjections {
    /// Loads `input_proj.{l}.{0,1}` and `transformer.level_embed` for backbone channels
    /// `in_channels` and `n_levels` levels of width `d`.
    pub fn load(
        ld: &mut Loader,
        in_channels: &[usize],
        n_levels: usize,
        d: usize,
        pos_offset: bool,
    ) -> Self {
        let mut levels = Vec::with_capacity(n_levels);
        let mut c_in = in_channels[0];
        for l in 0..n_levels {
            let spec = if l < in_channels.len() {
                c_in = in_channels[l];
                ConvSpec::new(c_in, d, 1, 1, 0, true)
            } else {
                let s = ConvSpec::new(c_in, d, 3, 2, 1, true);
                c_in = d;
                s
            };
            levels.push(Projection {
                conv: conv2d(ld, &format!("input_proj.{l}.0"), spec),
                norm: group_norm(ld, &format!("input_proj.{l}.1"), 32, d),
            });
        }
        let level_embed = Param::from_tensor(ld.tensor(
            "transformer.level_embed",
            [n_levels, d],
            Init::Normal(1.0),
        ));
        Self {
            levels,
            level_embed,
            pos_offset,
        }
    }

    /// Projects backbone maps `features` of a batch with image padding `mask` and flattens them.
    pub fn forward(&self, features: &[Tensor<4>], mask: &PaddingMask) -> MultiScale {
        let device = features[0].device();
        let mut maps = Vec::new();
        let mut last_raw = features[features.len() - 1].clone();
        for (l, proj) in self.levels.iter().enumerate() {
            let m = if l < features.len() {
                proj.forward(features[l].clone())
            } else {
                let m = proj.forward(last_raw.clone());
                last_raw = m.clone();
                m
            };
            maps.push(m);
        }
        let [_, d] = self.level_embed.dims();
        let mut srcs = Vec::new();
        let mut coords = Vec::new();
        let mut masks = Vec::new();
        let mut shapes = Vec::new();
        let mut level_start = Vec::new();
        let mut level_of = Vec::new();
        let mut start = 0;
        for (l, m) in maps.iter().enumerate() {
            let [_, _, h, w] = m.dims();
            let lm = mask.resize_nearest(h, w);
            let (ys, xs) = sine_coordinates(&lm, self.pos_offset);
            coords.push([ys, xs]);
            srcs.push(m.clone().flatten::<3>(2, 3).swap_dims(1, 2));
            masks.push(lm);
            shapes.push([h, w]);
            level_start.push(start);
            level_of.extend(std::iter::repeat_n(l as i64, h * w));
            start += h * w;
        }
        let b = mask.batch;
        // positional encoding of every level at once: the coordinates in `[B, S]` order, the
        // sines and cosines on the device, then each position's level embedding
        let gather = |axis: usize| -> Tensor<3> {
            let v: Vec<f32> = (0..b)
                .flat_map(|i| {
                    coords.iter().zip(&shapes).flat_map(move |(c, [h, w])| {
                        c[axis][i * h * w..(i + 1) * h * w].iter().copied()
                    })
                })
                .collect();
            Tensor::from_data(TensorData::new(v, [b, start, 1]), &device)
        };
        let ys = gather(0);
        let xs = gather(1);
        let level_of = Tensor::<1, Int>::from_data(TensorData::new(level_of, [start]), &device);
        let pos = Tensor::cat(vec![sine_embed(ys, d / 2), sine_embed(xs, d / 2)], 2)
            + self
                .level_embed
                .val()
                .select(0, level_of)
                .unsqueeze_dim::<3>(0);
        let flat: Vec<bool> = (0..b)
            .flat_map(|i| {
                masks.iter().flat_map(move |m| {
                    m.data[i * m.height * m.width..(i + 1) * m.height * m.width]
                        .iter()
                        .copied()
                })
            })
            .collect();
        let padding = TokenPadding::from_flags(flat, [b, start], &device);
        let per_level: Vec<Vec<[f32; 2]>> = masks.iter().map(PaddingMask::valid_ratios).collect();
        let valid_ratios = (0..b)
            .map(|i| per_level.iter().map(|v| v[i]).collect())
            .collect();
        MultiScale {
            maps,
            masks,
            src: Tensor::cat(srcs, 1),
            pos,
            padding,
            shapes,
            level_start,
            valid_ratios,
        }
    }
}

impl MultiScale {
    /// Encoder reference points `[B, S, L, 2]` on `device`.
    pub fn reference_points(&self, device: &Device) -> Tensor<4> {
        let (v, shape) = encoder_reference_points(&self.shapes, &self.valid_ratios);
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    /// The valid ratios as a row-major `[B, L, 2]` buffer of `(w, h)` pairs.
    pub fn valid_ratios_flat(&self) -> Vec<f32> {
        self.valid_ratios
            .iter()
            .flatten()
            .flatten()
            .copied()
            .collect()
    }
}

/// A deformable encoder layer: MSDA self-attention, then a ReLU FFN, both post-norm.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    self_attn: MsDeformAttn,
    norm1: LayerNorm,
    linear1: Linear,
    linear2: Linear,
    norm2: LayerNorm,
}

impl EncoderLayer {
    /// Loads `{prefix}.{self_attn,norm1,linear1,linear2,norm2}`.
    pub fn load(ld: &mut Loader, prefix: &str, msda: MsdaConfig, d_ffn: usize) -> Self {
        let d = msda.d_model;
        Self {
            self_attn: MsDeformAttn::load(ld, &format!("{prefix}.self_attn"), msda),
            norm1: layer_norm(ld, &format!("{prefix}.norm1"), d, 1e-5),
            linear1: linear(ld, &format!("{prefix}.linear1"), d, d_ffn, true),
            linear2: linear(ld, &format!("{prefix}.linear2"), d_ffn, d, true),
            norm2: layer_norm(ld, &format!("{prefix}.norm2"), d, 1e-5),
        }
    }

    /// One layer over `src` `[B, S, d]` with positional encoding `pos`.
    pub fn forward(
        &self,
        src: Tensor<3>,
        pos: Tensor<3>,
        reference: Tensor<4>,
        shapes: &[[usize; 2]],
        padding: &TokenPadding,
    ) -> Tensor<3> {
        self.forward_with_query(src, None, pos, reference, shapes, padding, false)
            .0
    }

    /// [`EncoderLayer::forward`] with the query `src + pos` given when the caller has it
    /// (`query`), and returning the next layer's `out + pos` too when `next_query` (from the last
    /// layer norm's launch where a fused kernel takes it).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with_query(
        &self,
        src: Tensor<3>,
        query: Option<Tensor<3>>,
        pos: Tensor<3>,
        reference: Tensor<4>,
        shapes: &[[usize; 2]],
        padding: &TokenPadding,
        next_query: bool,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        let query = query.unwrap_or_else(|| src.clone() + pos.clone());
        let attn =
            self.self_attn
                .forward_biased(query, reference, src.clone(), shapes, Some(padding));
        let src = self.norm1.forward_add_biased(src, attn);
        let ffn = self
            .linear2
            .forward_biased(self.linear1.forward_relu(src.clone()));
        if next_query {
            let (out, q) = self.norm2.forward_add_biased_plus(src, ffn, pos);
            (out, Some(q))
        } else {
            (self.norm2.forward_add_biased(src, ffn), None)
        }
    }
}
