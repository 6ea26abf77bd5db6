//! Building Burn layers from official PyTorch parameters (the remapping rules of [`super`]).

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::prelude::*;

use super::{Init, Loader};
use crate::dense::Linear;
use crate::norm::LayerNorm;

/// `nn.Linear(d_in, d_out)` at `prefix` (`{prefix}.weight` `[out, in]`, transposed for Burn).
pub fn linear(ld: &mut Loader, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Linear {
    let (w, b) = linear_tensors(ld, prefix, d_in, d_out, bias);
    linear_from(w, b)
}

/// The PyTorch-layout weight `[out, in]` and the bias of `nn.Linear(d_in, d_out)` at `prefix`,
/// as plain tensors (for layers assembled from several official ones).
pub fn linear_tensors(
    ld: &mut Loader,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
) -> (Tensor<2>, Option<Tensor<1>>) {
    let w: Tensor<2> = ld.tensor(
        &format!("{prefix}.weight"),
        [d_out, d_in],
        Init::KaimingUniform,
    );
    let b = bias.then(|| {
        ld.tensor(
            &format!("{prefix}.bias"),
            [d_out],
            Init::Uniform(-bound(d_in), bound(d_in)),
        )
    });
    (w, b)
}

/// Builds a Linear from an already-loaded PyTorch-layout weight `[out, in]` and bias.
pub fn linear_from(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Linear {
    Linear {
        weight: Param::from_tensor(weight.transpose()),
        bias: bias.map(Param::from_tensor),
    }
}

fn bound(fan_in: usize) -> f64 {
    1.0 / (fan_in.max(1) as f64).sqrt()
}

/// Geometry of a 2-D convolution.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Square kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Symmetric zero padding.
    pub pad: usize,
    /// Whether the conv has a bias.
    pub bias: bool,
}

impl ConvSpec {
    /// A `k×k` convolution with stride and padding.
    pub fn new(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, bias: bool) -> Self {
        Self {
            c_in,
            c_out,
            k,
            stride,
            pad,
            bias,
        }
    }
}

/// `nn.Conv2d` at `prefix`.
pub fn conv2d(ld: &mut Loader, prefix: &str, s: ConvSpec) -> Conv2d {
    let mut c = Conv2dConfig::new([s.c_in, s.c_out], [s.k, s.k])
        .with_stride([s.stride, s.stride])
        .with_padding(PaddingConfig2d::Explicit(s.pad, s.pad, s.pad, s.pad))
        .with_bias(s.bias)
        .init(ld.device());
    let weight = ld.tensor(
        &format!("{prefix}.weight"),
        [s.c_out, s.c_in, s.k, s.k],
        Init::KaimingUniform,
    );
    let channels_last =
        s.k > 1 && crate::fused::kernel().is_some_and(|k| k.channels_last_weights(ld.device()));
    c.weight = Param::from_tensor(if channels_last {
        channels_last_layout(weight)
    } else {
        weight
    });
    if s.bias {
        let b = bound(s.c_in * s.k * s.k);
        c.bias = Some(Param::from_tensor(ld.tensor(
            &format!("{prefix}.bias"),
            [s.c_out],
            Init::Uniform(-b, b),
        )));
    }
    c
}

/// `w [O, I, kH, kW]` with the same shape and values, stored as `[O, kH, kW, I]` in memory (a
/// copy through the host, once at load).
pub fn channels_last_layout(w: Tensor<4>) -> Tensor<4> {
    let device = w.device();
    let data = w.permute([0, 2, 3, 1]).into_data();
    Tensor::<4>::from_data(data, &device).permute([0, 3, 1, 2])
}

/// `nn.LayerNorm(d, eps)` at `prefix` (`weight`/`bias` → `gamma`/`beta`).
pub fn layer_norm(ld: &mut Loader, prefix: &str, d: usize, eps: f64) -> LayerNorm {
    let gamma = ld.tensor(&format!("{prefix}.weight"), [d], Init::Ones);
    let beta = ld.tensor(&format!("{prefix}.bias"), [d], Init::Zeros);
    LayerNorm::new(gamma, Some(beta), eps)
}

/// `nn.GroupNorm(groups, c)` at `prefix` (eps 1e-5).
pub fn group_norm(ld: &mut Loader, prefix: &str, groups: usize, c: usize) -> GroupNorm {
    let mut n = GroupNormConfig::new(groups, c)
        .with_epsilon(1e-5)
        .init(ld.device());
    n.gamma = Some(Param::from_tensor(ld.tensor(
        &format!("{prefix}.weight"),
        [c],
        Init::Ones,
    )));
    n.beta = Some(Param::from_tensor(ld.tensor(
        &format!("{prefix}.bias"),
        [c],
        Init::Zeros,
    )));
    n
}

/// DETR's `FrozenBatchNorm2d`: a per-channel affine map from fixed statistics.
///
/// Computed as the official code does, `scale = w * rsqrt(var + 1e-5)`,
/// `shift = b - mean * scale`, `y = x * scale + shift`; `scale` and `shift` are computed once when
/// the statistics are loaded (they are constants, and the official forward recomputes the same
/// values every call).
#[derive(Module, Debug)]
pub struct FrozenBatchNorm {
    /// `weight * rsqrt(running_var + 1e-5)`, `[C]`. The statistics are not parameters
    /// (mixed-precision training does not cast them): they keep the loaded type and are cast to
    /// the input's when applied.
    pub scale: Tensor<1>,
    /// `bias - running_mean * scale`, `[C]`.
    pub shift: Tensor<1>,
}

impl FrozenBatchNorm {
    /// Loads `{prefix}.{weight,bias,running_mean,running_var}` for `c` channels.
    pub fn load(ld: &mut Loader, prefix: &str, c: usize) -> Self {
        let weight: Tensor<1> = ld.tensor(&format!("{prefix}.weight"), [c], Init::Ones);
        let bias: Tensor<1> = ld.tensor(&format!("{prefix}.bias"), [c], Init::Zeros);
        let mean: Tensor<1> = ld.tensor(&format!("{prefix}.running_mean"), [c], Init::Zeros);
        let var: Tensor<1> = ld.tensor(&format!("{prefix}.running_var"), [c], Init::Ones);
        let scale = weight * (var + 1e-5).sqrt().recip();
        let shift = bias - mean * scale.clone();
        Self { scale, shift }
    }

    /// Applies the affine map to `[B, C, H, W]`, then adds `residual` when given and applies
    /// ReLU when `relu` (one fused launch where a [`crate::fused::FusedKernel`] is installed).
    pub fn forward_act(&self, x: Tensor<4>, residual: Option<Tensor<4>>, relu: bool) -> Tensor<4> {
        let dtype = burn::tensor::FloatDType::from(x.dtype());
        crate::fused::channel_affine(
            x,
            self.scale.clone().cast(dtype),
            self.shift.clone().cast(dtype),
            residual,
            relu,
        )
    }

    /// Applies the affine map to `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_act(x, None, false)
    }
}
