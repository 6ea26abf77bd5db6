//! Fused kernels for the short elementwise and row chains of the forward: layer norm (of a
//! residual sum too), softmax, ReLU, a linear layer's bias with what follows it (ReLU, GELU, a
//! gated residual, zeroed padding rows, a product with another layer's output), the backbone's frozen
//! batch norm (with its residual add and ReLU), the decoders' box refinement, the sine
//! embedding of their anchors, the split of attention projections into heads and the deformable
//! attention's sampling locations. Layer norm, softmax and box refinement also take the bias of
//! the linear layer whose product they consume ([`crate::dense::Linear::forward_biased`]).
//!
//! Written with Burn's tensor ops, a layer norm is nine kernel launches, a ReLU two and a
//! bottleneck's `relu(bn(conv(x)) + identity)` four after the convolution. On a GPU at batch 1 the
//! launches, not the arithmetic, set the time of these steps. A [`FusedKernel`] installed with
//! [`set_kernel`] computes each in one launch where it accepts the operands; otherwise (and by
//! default, e.g. on the CPU) the functions here run Burn's ops. The model code never changes.
//!
//! The training step uses three more: [`adamw`] (one launch per parameter instead of about 16 of
//! Burn's ops), [`sum_squares`] (the gradient norm, one launch per gradient) and
//! [`FusedKernel::paired_giou`] (the criterion's GIoU, one launch forward and one backward).

use std::sync::{Arc, RwLock};

use burn::prelude::*;

/// One-launch replacements for short chains of ops on some devices.
pub trait FusedKernel: Send + Sync {
    /// Name shown in logs and benchmarks.
    fn name(&self) -> &str;
    /// Layer norm of each row of `v = (x [R, C] + bias) + residual` with what is given (`bias
    /// [C]`: a linear layer's; `residual` of `x`'s shape), with `gamma [C]` and `beta [C]`:
    /// `(v − mean) / sqrt(var + epsilon) · gamma + beta` (biased variance), or `None` to decline.
    fn layer_norm(
        &self,
        x: &Tensor<2>,
        bias: Option<&Tensor<1>>,
        residual: Option<&Tensor<2>>,
        gamma: &Tensor<1>,
        beta: &Tensor<1>,
        epsilon: f64,
    ) -> Option<Tensor<2>>;
    /// [`FusedKernel::layer_norm`] of `(x + bias) + residual` followed by the norm plus `plus`
    /// (`x`'s shape; a positional query added to the layer's output): `[2R, C]`, the norm in the
    /// first `R` rows; or `None` to decline (the default).
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_plus(
        &self,
        _x: &Tensor<2>,
        _bias: &Tensor<1>,
        _residual: &Tensor<2>,
        _gamma: &Tensor<1>,
        _beta: &Tensor<1>,
        _plus: &Tensor<2>,
        _epsilon: f64,
    ) -> Option<Tensor<2>> {
        None
    }
    /// Whether convolution weights `[O, I, kH, kW]` should be stored channels-last on `device`
    /// (`[O, kH, kW, I]` in memory, the layout the device's convolutions read, so they need no
    /// copy of their weights per call). Asked when a convolution is loaded.
    fn channels_last_weights(&self, device: &Device) -> bool;
    /// Whether [`FusedKernel::bias_epilogue`] and [`FusedKernel::heads`] take tensors of
    /// `dtype` on `device` (asked before a linear layer's product is computed without its
    /// bias).
    fn takes_unbiased(&self, device: &Device, dtype: burn::tensor::DType) -> bool;
    /// `(x + bias) · scale` for `x [B, N, H, E]` (a linear layer's product split into `H`
    /// attention heads) and `bias [H·E]`, with the heads first: a row-major `[B, H, N, E]`, or
    /// `[B, H, E, N]` when `transposed` (the keys' layout for `q · kᵀ`); or `None` to decline.
    fn heads(
        &self,
        x: &Tensor<4>,
        bias: &Tensor<1>,
        scale: f32,
        transposed: bool,
    ) -> Option<Tensor<4>>;
    /// `v = x + bias` for `x [R, C]`, `bias [C]` (a linear layer's product and its bias), then
    /// the [`Epilogue`] that follows it; or `None` to decline.
    fn bias_epilogue(
        &self,
        x: &Tensor<2>,
        bias: &Tensor<1>,
        epilogue: Epilogue<'_>,
    ) -> Option<Tensor<2>>;
    /// Group norm of `x [B, C, H, W]` in `groups` groups of `n = C/G·H·W` values with
    /// per-channel `gamma` and `beta`: `(x − mean) / sqrt(var + epsilon) · gamma + beta`, the
    /// statistics summed in blocks of [`crate::encoder::sum_block`]`(n)` values first (two
    /// passes: mean, then mean squared deviation); or `None` to decline.
    fn group_norm(
        &self,
        x: &Tensor<4>,
        gamma: &Tensor<1>,
        beta: &Tensor<1>,
        groups: usize,
        epsilon: f64,
    ) -> Option<Tensor<4>>;
    /// The deformable attention's sampling locations `[N, Lq, M, L, P, 2]` from the offsets'
    /// product `offsets` (that shape) plus their repeating `bias` (`v`, see
    /// [`FusedKernel::softmax`]) around `reference [N, Lq, L, R]`: for points (`R = 2`)
    /// `ref + v / normalizer[level]` (`normalizer [L·2]`, each level's width and height), for
    /// boxes (`R = 4`) `ref.xy + v / P · ref.wh · 0.5` (official order of operations); or `None`.
    fn sampling_locations(
        &self,
        offsets: &Tensor<6>,
        bias: &Tensor<1>,
        reference: &Tensor<4>,
        normalizer: &Tensor<1>,
    ) -> Option<Tensor<6>>;
    /// Softmax of each row of `v = x [R, C] + bias` (`exp(v − max) / Σ exp(v − max)`), or
    /// `None`. A `bias` is `groups` blocks of `len` values, each repeating along its share of
    /// the flattened `x` (`n / groups` of its `n` elements): element `i` gets
    /// `bias[(i / (n / groups)) · len + i mod len]`. With one group that is a bias repeating
    /// along all of `x` (per column when `len = C`, one per row group when longer); with one
    /// group per image, a per-image bias over the columns (an attention mask).
    fn softmax(&self, x: &Tensor<2>, bias: Option<&Tensor<1>>, groups: usize) -> Option<Tensor<2>>;
    /// `max(x, 0)` of a flat tensor (NaN stays NaN), or `None` to decline.
    fn relu(&self, x: &Tensor<1>) -> Option<Tensor<1>>;
    /// `x / max(sqrt(Σ x²), 1e-12) / 2` for each row of `x [R, C]` (the prediction heads' text
    /// before its projection), or `None` to decline.
    fn l2_halve_rows(&self, x: &Tensor<2>) -> Option<Tensor<2>>;
    /// `x · scale[c] + shift[c]`, then `+ residual` when given, then ReLU when `relu`, on
    /// `x [N, C, H, W]` (`residual` has `x`'s shape), or `None` to decline.
    fn channel_affine(
        &self,
        x: &Tensor<4>,
        scale: &Tensor<1>,
        shift: &Tensor<1>,
        residual: Option<&Tensor<4>>,
        relu: bool,
    ) -> Option<Tensor<4>>;
    /// `sigmoid((delta + bias) + inverse_sigmoid(reference))` of flat tensors of one size, with
    /// the official `inverse_sigmoid` ([`crate::parse_decoder::inverse_sigmoid`]) and a
    /// repeating `bias` as for [`FusedKernel::softmax`] when given (a box head's last bias), or
    /// `None`.
    fn refine_boxes(
        &self,
        delta: &Tensor<1>,
        bias: Option<&Tensor<1>>,
        reference: &Tensor<1>,
    ) -> Option<Tensor<1>>;
    /// The sine embedding of boxes `pos [B, Q, 4]` → `[B, Q, 4n]` (`n` = `dim_t`'s length):
    /// four blocks of `n` channels for the coordinates y, x, w, h, channel `i` of a block being
    /// `sin` (even `i`) or `cos` (odd `i`) of `coordinate · scale / dim_t[i]`; or `None`.
    fn sine_embed_boxes(&self, pos: &Tensor<3>, dim_t: &Tensor<1>, scale: f32)
    -> Option<Tensor<3>>;
    /// One AdamW step of a parameter (see [`adamw`]): `(param', exp_avg', exp_avg_sq')`, the
    /// parameter in its own memory layout when `keep_layout` (else row-major), the moments flat
    /// in the parameter's row-major order; or `None` to decline (the default).
    fn adamw(
        &self,
        _param: &Tensor<4>,
        _grad: &Tensor<4>,
        _exp_avg: &Tensor<1>,
        _exp_avg_sq: &Tensor<1>,
        _scalars: &AdamWScalars,
        _keep_layout: bool,
    ) -> Option<(Tensor<4>, Tensor<1>, Tensor<1>)> {
        None
    }
    /// Generalized IoU `[N]` of the rows of two `[N, 4]` `(cx, cy, w, h)` box sets (the
    /// criterion's GIoU loss: corners as the official `box_cxcywh_to_xyxy`, then the diagonal of
    /// its `generalized_box_iou`), or `None` to decline (the default).
    fn paired_giou(&self, _a: &Tensor<2>, _b: &Tensor<2>) -> Option<Tensor<1>> {
        None
    }
    /// `Σ x²` over every element of every tensor of `xs`, as a `[1]` tensor, or `None` to
    /// decline (the default).
    fn sum_squares(&self, _xs: &[Tensor<4>]) -> Option<Tensor<1>> {
        None
    }
}

/// The float32 scalars of one AdamW step ([`adamw`]), each computed in f64 and rounded once, as
/// Burn's scalar ops round theirs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWScalars {
    /// Multiplies the gradient first (gradient clipping, loss-scale removal).
    pub grad_scale: f32,
    /// First-moment decay `β₁`.
    pub beta1: f32,
    /// `1 − β₁`.
    pub one_minus_beta1: f32,
    /// Second-moment decay `β₂`.
    pub beta2: f32,
    /// `1 − β₂`.
    pub one_minus_beta2: f32,
    /// `sqrt(1 − β₂ᵗ)`.
    pub bias_correction2_sqrt: f32,
    /// Added to the bias-corrected root of the second moment.
    pub eps: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
    /// `1 − lr · weight_decay`.
    pub decay: f32,
}

impl AdamWScalars {
    /// The scalars of step `t` (from 1) with learning rate `lr`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        grad_scale: f64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        t: u64,
    ) -> Self {
        let t = t as f64;
        Self {
            grad_scale: grad_scale as f32,
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: (1.0 - beta2.powf(t)).sqrt() as f32,
            eps: eps as f32,
            step_size: (lr / (1.0 - beta1.powf(t))) as f32,
            decay: (1.0 - lr * weight_decay) as f32,
        }
    }
}

/// `t` as a rank-4 tensor with leading unit axes (a view: the layout is kept), or `None` above
/// rank 4.
fn to_rank4<const D: usize>(t: Tensor<D>) -> Option<Tensor<4>> {
    if D > 4 {
        return None;
    }
    let dims = t.dims();
    let mut d = [1usize; 4];
    d[4 - D..].copy_from_slice(&dims);
    Some(t.reshape(d))
}

/// One AdamW step of `param` (any float layout) with gradient `grad` and the flat float32
/// moments, in one launch where the installed kernel takes it, else `None` (the caller runs
/// Burn's ops). A rank-4 parameter keeps its memory layout (a convolution's channels-last
/// weight); others come back row-major, as from Burn's ops. Per element, in float32 and this
/// order:
/// `g = grad · grad_scale`, `m' = m · β₁ + g · (1 − β₁)`, `v' = v · β₂ + g² · (1 − β₂)`,
/// `p' = p · decay − m' / (sqrt(v') / bias_correction2_sqrt + eps) · step_size`.
pub fn adamw<const D: usize>(
    param: &Tensor<D>,
    grad: &Tensor<D>,
    exp_avg: &Tensor<1>,
    exp_avg_sq: &Tensor<1>,
    scalars: &AdamWScalars,
) -> Option<(Tensor<D>, Tensor<1>, Tensor<1>)> {
    let k = kernel()?;
    let dims = param.dims();
    let (p4, g4) = (to_rank4(param.clone())?, to_rank4(grad.clone())?);
    let (p, m, v) = k.adamw(&p4, &g4, exp_avg, exp_avg_sq, scalars, D == 4)?;
    Some((p.reshape(dims), m, v))
}

/// `Σ x²` over every element of every tensor of `xs`, as a `[1]` tensor (`None` when `xs` is
/// empty): one launch per tensor and one sum where the installed kernel takes them, else
/// Burn's ops (a square, a sum and an add per tensor).
pub fn sum_squares(xs: Vec<Tensor<4>>) -> Option<Tensor<1>> {
    if xs.is_empty() {
        return None;
    }
    if let Some(k) = kernel()
        && let Some(s) = k.sum_squares(&xs)
    {
        return Some(s);
    }
    xs.into_iter()
        .map(|t| t.powi_scalar(2).sum())
        .reduce(|a, b| a + b)
}

/// `t` viewed as rank 4 for [`sum_squares`] (leading unit axes; flattened above rank 4).
pub fn rank4<const D: usize>(t: Tensor<D>) -> Tensor<4> {
    if D <= 4 {
        return to_rank4(t).expect("rank 4 or less");
    }
    let n = t.dims().iter().product::<usize>();
    t.reshape([1, 1, 1, n])
}

/// What follows a linear layer's bias add `v = x + bias` (`x [R, C]`) in
/// [`FusedKernel::bias_epilogue`].
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// `max(v, 0)`.
    Relu,
    /// Burn's exact GELU, `v · (erf(v / √2) + 1) / 2`.
    Gelu,
    /// `residual + v · gate[0]` (`residual [R, C]`): a residual plus a delta scaled by the first
    /// element of a gate.
    Gate {
        /// `[R, C]`.
        residual: &'a Tensor<2>,
        /// Only element 0 is read.
        gate: &'a Tensor<1>,
    },
    /// `v` with zeros on the rows `r` where `padding[r] ≠ 0` (`padding [R]`, 1 on padded rows).
    ZeroRows {
        /// `[R]`.
        padding: &'a Tensor<1>,
    },
    /// `v · (other + other_bias)`: the product of two linear layers' outputs.
    Product {
        /// The other layer's product, `[R, C]`.
        other: &'a Tensor<2>,
        /// Its bias, `[C]`.
        other_bias: &'a Tensor<1>,
    },
}

static KERNEL: RwLock<Option<Arc<dyn FusedKernel>>> = RwLock::new(None);

/// Installs (or, with `None`, removes) the fused kernel; returns the previous one.
pub fn set_kernel(kernel: Option<Arc<dyn FusedKernel>>) -> Option<Arc<dyn FusedKernel>> {
    std::mem::replace(
        &mut *KERNEL.write().unwrap_or_else(|e| e.into_inner()),
        kernel,
    )
}

/// The installed fused kernel, if any.
pub fn kernel() -> Option<Arc<dyn FusedKernel>> {
    KERNEL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// `t` as rows of its last dimension, `[Π leading dims, last]`.
pub(crate) fn as_rows<const D: usize>(t: &Tensor<D>) -> Tensor<2> {
    let dims = t.dims();
    t.clone()
        .reshape([dims[..D - 1].iter().product::<usize>(), dims[D - 1]])
}

/// Layer norm over the last dimension of `x` (Burn's `layer_norm` when no kernel accepts it).
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Tensor<D> {
    norm_rows(x, None, None, gamma, beta, epsilon)
}

/// Layer norm over the last dimension of `x + residual` (Burn's add and `layer_norm` when no
/// kernel accepts it).
pub fn add_layer_norm<const D: usize>(
    x: Tensor<D>,
    residual: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Tensor<D> {
    norm_rows(x, None, Some(residual), gamma, beta, epsilon)
}

/// Layer norm over the last dimension of `(x + bias) + residual` (a linear layer's product, its
/// bias and the residual stream; Burn's adds and `layer_norm` when no kernel accepts it).
pub fn bias_add_layer_norm<const D: usize>(
    x: Tensor<D>,
    bias: Tensor<1>,
    residual: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Tensor<D> {
    norm_rows(x, Some(bias), Some(residual), gamma, beta, epsilon)
}

/// `(y, y + plus)` for `y` = [`bias_add_layer_norm`]`(x, bias, residual, ..)`: one launch where
/// the installed kernel takes it, else the norm and Burn's add.
#[allow(clippy::too_many_arguments)]
pub fn bias_add_layer_norm_plus<const D: usize>(
    x: Tensor<D>,
    bias: Tensor<1>,
    residual: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
    plus: Tensor<D>,
) -> (Tensor<D>, Tensor<D>) {
    let dims = x.dims();
    if let (Some(k), Some(b)) = (kernel(), beta.as_ref())
        && residual.dims() == dims
        && plus.dims() == dims
    {
        let rows = dims[..D - 1].iter().product::<usize>();
        if let Some(y) = k.layer_norm_plus(
            &as_rows(&x),
            &bias,
            &as_rows(&residual),
            &gamma,
            b,
            &as_rows(&plus),
            epsilon,
        ) {
            let c = dims[D - 1];
            let norm = y.clone().slice(s![0..rows, 0..c]).reshape(dims);
            let with_plus = y.slice(s![rows..2 * rows, 0..c]).reshape(dims);
            return (norm, with_plus);
        }
    }
    let y = bias_add_layer_norm(x, bias, residual, gamma, beta, epsilon);
    (y.clone(), y + plus)
}

/// [`layer_norm`] of `x`, `x + residual` or `(x + bias) + residual`.
fn norm_rows<const D: usize>(
    x: Tensor<D>,
    bias: Option<Tensor<1>>,
    residual: Option<Tensor<D>>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Tensor<D> {
    let dims = x.dims();
    if let (Some(k), Some(b)) = (kernel(), beta.as_ref())
        && residual.as_ref().is_none_or(|r| r.dims() == dims)
    {
        let r = residual.as_ref().map(as_rows);
        if let Some(y) = k.layer_norm(&as_rows(&x), bias.as_ref(), r.as_ref(), &gamma, b, epsilon) {
            return y.reshape(dims);
        }
    }
    let x = match bias {
        Some(b) => x + b.unsqueeze(),
        None => x,
    };
    let x = match residual {
        Some(r) => x + r,
        None => x,
    };
    burn::tensor::module::layer_norm(x, gamma, beta, epsilon)
}

/// Softmax along `dim` (Burn's when no kernel accepts it; the kernel takes the last dimension).
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    if dim + 1 == D
        && let Some(k) = kernel()
        && let Some(y) = k.softmax(&as_rows(&x), None, 1)
    {
        return y.reshape(x.dims());
    }
    burn::tensor::activation::softmax(x, dim)
}

/// Softmax over the last dimension of `x + bias`, `bias` repeating along the flattened `x`
/// (element `i` gets `bias[i mod len]`; e.g. a linear layer's bias before its output is viewed
/// as rows of a fraction of its width). Burn's add and softmax when no kernel accepts it.
pub fn bias_softmax<const D: usize>(x: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
    if let Some(k) = kernel()
        && let Some(y) = k.softmax(&as_rows(&x), Some(&bias), 1)
    {
        return y.reshape(x.dims());
    }
    burn::tensor::activation::softmax(add_repeating(x, bias), D - 1)
}

/// Softmax over the last dimension of `x + bias` for `bias [G, C]` (`C` = the last dimension):
/// the `i`-th of `G` equal shares of `x`'s rows gets bias row `i` (a per-image attention mask
/// over keys for `x [B, H, Q, K]` and `bias [B, K]`). Burn's add and softmax when no kernel
/// accepts it.
pub fn grouped_bias_softmax<const D: usize>(x: Tensor<D>, bias: Tensor<2>) -> Tensor<D> {
    let dims = x.dims();
    let [g, c] = bias.dims();
    if let Some(k) = kernel()
        && let Some(y) = k.softmax(&as_rows(&x), Some(&bias.clone().reshape([g * c])), g)
    {
        return y.reshape(dims);
    }
    let n = dims.iter().product::<usize>();
    let sum = x.reshape([g, n / (g * c), c]) + bias.unsqueeze_dim::<3>(1);
    burn::tensor::activation::softmax(sum.reshape(dims), D - 1)
}

/// `x + bias` with `bias` repeating along the flattened `x` (its length divides `x`'s size).
fn add_repeating<const D: usize>(x: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
    let dims = x.dims();
    let (len, n) = (bias.dims()[0], dims.iter().product::<usize>());
    (x.reshape([n / len, len]) + bias.unsqueeze()).reshape(dims)
}

/// `x / max(‖x‖, 1e-12) / 2` along the last dimension: each row L2-normalised (the norm clamped
/// below at 1e-12), then halved, in that order (Burn's ops when no kernel accepts it).
pub fn l2_halve_rows<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if let Some(k) = kernel()
        && let Some(y) = k.l2_halve_rows(&as_rows(&x))
    {
        return y.reshape(x.dims());
    }
    let norm = x
        .clone()
        .powi_scalar(2)
        .sum_dim(D - 1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm / 2.0
}

/// ReLU (Burn's when no kernel accepts it).
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if let Some(k) = kernel() {
        let dims = x.dims();
        let n = dims.iter().product::<usize>();
        if let Some(y) = k.relu(&x.clone().reshape([n])) {
            return y.reshape(dims);
        }
    }
    burn::tensor::activation::relu(x)
}

/// `x · scale + shift` per channel of `x [N, C, H, W]` (`scale`, `shift`: `[C]` in `x`'s type),
/// then `+ residual` when given, then ReLU when `relu`.
pub fn channel_affine(
    x: Tensor<4>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    residual: Option<Tensor<4>>,
    relu: bool,
) -> Tensor<4> {
    if let Some(k) = kernel()
        && let Some(y) = k.channel_affine(&x, &scale, &shift, residual.as_ref(), relu)
    {
        return y;
    }
    let c = scale.dims()[0];
    let y = x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1]);
    let y = match residual {
        Some(r) => y + r,
        None => y,
    };
    if relu {
        burn::tensor::activation::relu(y)
    } else {
        y
    }
}

/// `sigmoid(delta + inverse_sigmoid(reference))` (Burn's ops when no kernel accepts it, e.g.
/// for a broadcast `reference`).
pub fn refine_boxes<const D: usize>(delta: Tensor<D>, reference: Tensor<D>) -> Tensor<D> {
    refine(delta, None, reference)
}

/// `sigmoid((delta + bias) + inverse_sigmoid(reference))`, `bias` repeating along the
/// flattened `delta` (a box head's last bias; see [`bias_softmax`]).
pub fn bias_refine_boxes<const D: usize>(
    delta: Tensor<D>,
    bias: Tensor<1>,
    reference: Tensor<D>,
) -> Tensor<D> {
    refine(delta, Some(bias), reference)
}

fn refine<const D: usize>(
    delta: Tensor<D>,
    bias: Option<Tensor<1>>,
    reference: Tensor<D>,
) -> Tensor<D> {
    let dims = delta.dims();
    if let Some(k) = kernel()
        && reference.dims() == dims
    {
        let n = dims.iter().product::<usize>();
        let flat = |t: &Tensor<D>| t.clone().reshape([n]);
        if let Some(y) = k.refine_boxes(&flat(&delta), bias.as_ref(), &flat(&reference)) {
            return y.reshape(dims);
        }
    }
    let delta = match bias {
        Some(b) => add_repeating(delta, b),
        None => delta,
    };
    burn::tensor::activation::sigmoid(delta + crate::parse_decoder::inverse_sigmoid(reference))
}
