//! One-launch layer norm (alone, of a residual sum, or with a linear layer's bias before it),
//! softmax (optionally with a bias or a per-image mask), ReLU, a linear layer's bias with what
//! follows it (ReLU, GELU, gated residual, zeroed padding rows, product with another biased
//! output), frozen-batch-norm affine map, box refinement (optionally with a bias), box sine embedding,
//! attention head split and deformable-attention sampling locations on the cubecl backends
//! (wgpu, cuda), plugged into the model through [`rlip_model::fused::set_kernel`]; and, for the
//! training step, the optimiser's AdamW update and gradient-norm partial sums.
//!
//! A Burn backend extension ([`FusedOps`]) with CubeCL kernels ([`cube`]) for the forward and
//! hand-written autodiff nodes. Their backward is one kernel for the layer norm (input gradient
//! and `g·x̂`; Burn's column sums give `∂γ`, `∂β`), the softmax, the ReLU, the head split and the
//! sine embedding, and Burn's ops for the rest. Float32 tensors only: half-precision layer norms
//! are float32 islands already, and half-precision ReLU and affine maps keep Burn's ops. The CPU
//! backends keep Burn's ops too.

pub mod cube;

use std::sync::Arc;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use rlip_model::fused::{AdamWScalars, Epilogue, FusedKernel};

use crate::cube_util::on_cube;

/// Backend operations of the fused kernels.
#[backend_extension(Cube, Fusion: cfg(feature = "fusion"), Autodiff)]
pub trait FusedOps: Backend {
    /// Layer norm of each row of `x [R, C]` (see [`rlip_model::fused::FusedKernel::layer_norm`]).
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// Layer norm of each row of `x + residual` (both `[R, C]`).
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// Layer norm of each row of `(x + bias) + residual` (`x`, `residual`: `[R, C]`; `bias [C]`).
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_bias_add_layer_norm(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// [`FusedOps::fused_bias_add_layer_norm`] followed by the norm plus `plus` (`x`'s shape):
    /// `[2R, C]`, the norm in the first `R` rows, the norm plus `plus` in the next.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = x, shape = double_rows(x))]
    fn fused_bias_add_layer_norm_plus(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        plus: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// Generalized IoU `[N]` of the rows of two `[N, 4]` `(cx, cy, w, h)` box sets.
    #[fusion(dtype = a, shape = first_dim(a))]
    fn fused_paired_giou(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradients `(∂a, ∂b)` of [`FusedOps::fused_paired_giou`] for `grad [N]`.
    #[fusion(meta = |a, b, _grad| (a.clone(), b.clone()))]
    fn fused_paired_giou_backward(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `max(x, 0)`, elementwise.
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_relu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x / max(‖x‖, 1e-12) / 2` for each row of `x [R, C]`.
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_l2_halve_rows(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Softmax over the last dimension of `x [R, C]`.
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Softmax over the last dimension of `x [R, C]` plus a `bias` of `groups` blocks of `len`
    /// values: element `i` of the flattened `x` (of `n` elements) gets
    /// `bias[(i / (n / groups)) · len + i mod len]` (one block repeating along `x` when
    /// `groups` is 1).
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_bias_softmax(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        groups: usize,
    ) -> FloatTensor<Self>;

    /// `max(x + bias, 0)` for `x [R, C]`, `bias [C]`.
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_bias_relu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `gelu(x + bias)` (Burn's exact GELU) for `x [R, C]`, `bias [C]`.
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `residual + (x + bias) · gate[0]` for `x`, `residual` `[R, C]`, `bias [C]`.
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_bias_gate(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gate: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x + bias` for `x [R, C]`, `bias [C]`, with zeros on the rows `r` where
    /// `padding[r] ≠ 0` (`padding [R]`, 1 on padded rows).
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_bias_zero_rows(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `(x + bias) · (y + y_bias)` for `x`, `y` `[R, C]` and biases `[C]`.
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_bias_product(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        y: FloatTensor<Self>,
        y_bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x · scale[c] + shift[c]`, then ReLU when `relu`, on `x [N, C, H, W]`.
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_channel_affine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// `relu(x · scale[c] + shift[c] + residual)` on `x [N, C, H, W]`.
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_channel_affine_add_relu(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `sigmoid(delta + inverse_sigmoid(reference))`, elementwise (one shape).
    #[fusion(dtype = delta, shape = same_shape(delta))]
    fn fused_refine_boxes(
        delta: FloatTensor<Self>,
        reference: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `sigmoid((delta + bias) + inverse_sigmoid(reference))` with a repeating `bias` (element
    /// `i` gets `bias[i mod len(bias)]`).
    #[fusion(dtype = delta, shape = same_shape(delta))]
    fn fused_bias_refine_boxes(
        delta: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        reference: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The deformable attention's sampling locations `[N, Lq, M, L, P, 2]` from the offsets'
    /// product `off` (that shape), their repeating `bias`, the reference points or boxes
    /// `reference [N, Lq, L, R]` and, for points, the levels' `normalizer [L·2]` (see
    /// [`rlip_model::fused::FusedKernel::sampling_locations`]).
    #[fusion(dtype = off, shape = same_shape(off))]
    fn fused_sampling_locations(
        off: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        reference: FloatTensor<Self>,
        normalizer: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Group norm of `x [B, C, H, W]` in `groups` groups with per-channel `gamma` and `beta`
    /// (see [`rlip_model::fused::FusedKernel::group_norm`]).
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// `(x + bias) · scale` of `x [B, N, H, E]` (`bias [H·E]`) as `[B, H, N, E]`.
    #[fusion(dtype = x, shape = heads_shape(x))]
    fn fused_heads(x: FloatTensor<Self>, bias: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;

    /// [`FusedOps::fused_heads`] transposed: `[B, H, E, N]`.
    #[fusion(dtype = x, shape = heads_t_shape(x))]
    fn fused_heads_t(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;

    /// The sine embedding of boxes `pos [B, Q, 4]` with frequencies `dim_t [n]` and `scale`:
    /// `[B, Q, 4n]` (see [`rlip_model::fused::FusedKernel::sine_embed_boxes`]).
    #[fusion(dtype = pos, shape = sine_shape(pos, dim_t))]
    fn fused_sine_embed(
        pos: FloatTensor<Self>,
        dim_t: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;

    /// The gradient of [`FusedOps::fused_sine_embed`] with respect to `pos`.
    #[fusion(dtype = pos, shape = same_shape(pos))]
    fn fused_sine_embed_backward(
        pos: FloatTensor<Self>,
        dim_t: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;

    /// Backward of [`FusedOps::fused_heads`] without the bias: `grad · scale` of the heads-first
    /// gradient (`[B, H, N, E]`, or `[B, H, E, N]` when `transposed`) as a row-major
    /// `[B, N, H, E]`.
    #[fusion(dtype = grad, shape = unheads_shape(grad, transposed))]
    fn fused_heads_backward(
        grad: FloatTensor<Self>,
        scale: f32,
        transposed: bool,
    ) -> FloatTensor<Self>;

    /// GELU's backward at `x + bias` (`x [R, C]`, `bias [C]`): `grad · gelu'(x + bias)`, the exact
    /// derivative.
    #[fusion(dtype = x, shape = same_shape(x))]
    fn fused_bias_gelu_backward(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The ReLU's input gradient from its output `y` and the output gradient `grad` (Burn's
    /// `relu_backward` in one launch).
    #[fusion(dtype = y, shape = same_shape(y))]
    fn fused_relu_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The softmax's input gradient from its output `y [R, C]`: `y · (g − Σ_row g·y)`.
    #[fusion(dtype = y, shape = same_shape(y))]
    fn fused_softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Backward of the layer norm of `v = (x + bias) + residual` (the bias when `has_bias`, the
    /// residual when `has_residual`; otherwise those arguments are ignored) for the output
    /// gradient `grad [R, C]`: `(∂v, grad · x̂)` (see [`cube::layer_norm_backward`]).
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |x, _r, _b, _gamma, _grad, _eps, _hr, _hb| (x.clone(), x.clone()))]
    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
        has_residual: bool,
        has_bias: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// One AdamW step (see [`rlip_model::fused::adamw`]): `(param', exp_avg', exp_avg_sq')` for
    /// `param` and `grad` of one shape (any layouts) and the flat moments; `param'` in `param`'s
    /// layout when `keep_layout` and that layout is dense, else row-major.
    #[fusion(meta = |param, _grad, exp_avg, exp_avg_sq, _scalars, _keep| {
        (param.clone(), exp_avg.clone(), exp_avg_sq.clone())
    })]
    fn fused_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        exp_avg: FloatTensor<Self>,
        exp_avg_sq: FloatTensor<Self>,
        scalars: AdamWScalars,
        keep_layout: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `acc` with the [`cube::square_units`] partial sums of squares of `x` written from
    /// `offset` on (see [`cube::square_partials_into`]).
    #[fusion(dtype = acc, shape = same_shape(acc))]
    fn fused_square_partials_into(
        x: FloatTensor<Self>,
        acc: FloatTensor<Self>,
        offset: usize,
    ) -> FloatTensor<Self>;
}

#[cfg(feature = "fusion")]
fn same_shape(x: &burn::tensor::Shape) -> burn::tensor::Shape {
    x.clone()
}

#[cfg(feature = "fusion")]
fn sine_shape(pos: &burn::tensor::Shape, dim_t: &burn::tensor::Shape) -> burn::tensor::Shape {
    burn::tensor::Shape::from([pos[0], pos[1], 4 * dim_t[0]])
}

#[cfg(feature = "fusion")]
fn heads_shape(x: &burn::tensor::Shape) -> burn::tensor::Shape {
    burn::tensor::Shape::from([x[0], x[2], x[1], x[3]])
}

#[cfg(feature = "fusion")]
fn unheads_shape(grad: &burn::tensor::Shape, transposed: &bool) -> burn::tensor::Shape {
    if *transposed {
        burn::tensor::Shape::from([grad[0], grad[3], grad[1], grad[2]])
    } else {
        burn::tensor::Shape::from([grad[0], grad[2], grad[1], grad[3]])
    }
}

#[cfg(feature = "fusion")]
fn first_dim(x: &burn::tensor::Shape) -> burn::tensor::Shape {
    burn::tensor::Shape::from([x[0]])
}

#[cfg(feature = "fusion")]
fn double_rows(x: &burn::tensor::Shape) -> burn::tensor::Shape {
    burn::tensor::Shape::from([2 * x[0], x[1]])
}

#[cfg(feature = "fusion")]
fn heads_t_shape(x: &burn::tensor::Shape) -> burn::tensor::Shape {
    burn::tensor::Shape::from([x[0], x[2], x[3], x[1]])
}

impl FusedOps for burn_cubecl::CubeBackend {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        cube::layer_norm(x, None, None, gamma, beta, None, epsilon)
    }

    fn fused_add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        cube::layer_norm(x, Some(residual), None, gamma, beta, None, epsilon)
    }

    fn fused_bias_add_layer_norm(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        cube::layer_norm(x, Some(residual), Some(bias), gamma, beta, None, epsilon)
    }

    fn fused_bias_add_layer_norm_plus(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        plus: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        cube::layer_norm(
            x,
            Some(residual),
            Some(bias),
            gamma,
            beta,
            Some(plus),
            epsilon,
        )
    }

    fn fused_paired_giou(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        cube::paired_giou(a, b)
    }

    fn fused_paired_giou_backward(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        cube::paired_giou_backward(a, b, grad)
    }

    fn fused_relu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        cube::relu(x)
    }

    fn fused_l2_halve_rows(x: FloatTensor<Self>) -> FloatTensor<Self> {
        cube::l2_halve_rows(x)
    }

    fn fused_heads_backward(
        grad: FloatTensor<Self>,
        scale: f32,
        transposed: bool,
    ) -> FloatTensor<Self> {
        cube::heads_backward(grad, scale, transposed)
    }

    fn fused_bias_gelu_backward(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cube::bias_epilogue(x, bias, Some(grad), None, cube::GELU_GRAD)
    }

    fn fused_relu_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        cube::relu_backward(y, grad)
    }

    fn fused_softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        cube::softmax_backward(y, grad)
    }

    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
        has_residual: bool,
        has_bias: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        cube::layer_norm_backward(
            x,
            has_residual.then_some(residual),
            has_bias.then_some(bias),
            gamma,
            grad,
            epsilon,
        )
    }

    fn fused_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        exp_avg: FloatTensor<Self>,
        exp_avg_sq: FloatTensor<Self>,
        scalars: AdamWScalars,
        keep_layout: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        cube::adamw(param, grad, exp_avg, exp_avg_sq, &scalars, keep_layout)
    }

    fn fused_square_partials_into(
        x: FloatTensor<Self>,
        acc: FloatTensor<Self>,
        offset: usize,
    ) -> FloatTensor<Self> {
        cube::square_partials_into(x, acc, offset)
    }

    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        cube::softmax(x, None)
    }

    fn fused_bias_softmax(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        groups: usize,
    ) -> FloatTensor<Self> {
        cube::softmax(x, Some((bias, groups)))
    }

    fn fused_bias_relu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        cube::bias_epilogue(x, bias, None, None, cube::RELU)
    }

    fn fused_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        cube::bias_epilogue(x, bias, None, None, cube::GELU)
    }

    fn fused_bias_gate(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gate: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cube::bias_epilogue(x, bias, Some(residual), Some(gate), cube::GATE)
    }

    fn fused_bias_zero_rows(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cube::bias_epilogue(x, bias, None, Some(padding), cube::ZERO_ROWS)
    }

    fn fused_bias_product(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        y: FloatTensor<Self>,
        y_bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cube::bias_epilogue(x, bias, Some(y), Some(y_bias), cube::PRODUCT)
    }

    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        use burn::backend::ops::FloatTensorOps;
        let x = burn_cubecl::kernel::into_contiguous(x);
        let [b, c, h, w] = x.shape().dims::<4>();
        let n = c / groups * h * w;
        // sums of blocks of about √n values, then of the block sums (as the portable path)
        let block = rlip_model::encoder::sum_block(n);
        let group_sums = |t: FloatTensor<Self>| {
            let t = Self::float_reshape(t, [b, groups, n / block, block].into());
            Self::float_sum_dim(Self::float_sum_dim(t, 3), 2)
        };
        let sum = group_sums(x.clone());
        let sq_sum = group_sums(cube::squared_deviation(x.clone(), sum.clone(), n));
        cube::group_norm_apply(x, sum, sq_sum, gamma, beta, groups, epsilon)
    }

    fn fused_sampling_locations(
        off: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        reference: FloatTensor<Self>,
        normalizer: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cube::sampling_locations(off, bias, reference, normalizer)
    }

    fn fused_heads(x: FloatTensor<Self>, bias: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        cube::heads(x, bias, scale, false)
    }

    fn fused_heads_t(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        cube::heads(x, bias, scale, true)
    }

    fn fused_channel_affine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        cube::channel_affine(x, scale, shift, None, relu)
    }

    fn fused_channel_affine_add_relu(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cube::channel_affine(x, scale, shift, Some(residual), true)
    }

    fn fused_refine_boxes(
        delta: FloatTensor<Self>,
        reference: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cube::refine_boxes(delta, None, reference)
    }

    fn fused_bias_refine_boxes(
        delta: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        reference: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cube::refine_boxes(delta, Some(bias), reference)
    }

    fn fused_sine_embed(
        pos: FloatTensor<Self>,
        dim_t: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        cube::sine_embed(pos, dim_t, scale)
    }

    fn fused_sine_embed_backward(
        pos: FloatTensor<Self>,
        dim_t: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        cube::sine_embed_backward(pos, dim_t, grad, scale)
    }
}

/// The layer norm's gradients for the normalised input `v = (x + bias) + residual` (`x [R, C]`,
/// the bias and residual when given) and output gradient `grad`, each computed only when `want`
/// asks for it: `(∂v, ∂gamma, ∂beta)` with `∂v = (g·γ − mean(g·γ) − x̂·mean(g·γ·x̂)) / σ`
/// (one row kernel, which also writes `g·x̂`), `∂γ = Σ_rows g·x̂`, `∂β = Σ_rows g`.
#[allow(clippy::type_complexity)]
fn layer_norm_grads<B: FusedOps>(
    x: FloatTensor<B>,
    residual: Option<FloatTensor<B>>,
    bias: Option<FloatTensor<B>>,
    gamma: FloatTensor<B>,
    epsilon: f64,
    grad: FloatTensor<B>,
    want: [bool; 3],
) -> (
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
) {
    let c = x.shape()[1];
    let d_beta = want[2].then(|| B::float_reshape(B::float_sum_dim(grad.clone(), 0), [c].into()));
    if !(want[0] || want[1]) {
        return (None, None, d_beta);
    }
    let (has_residual, has_bias) = (residual.is_some(), bias.is_some());
    let (d_x, g_xhat) = B::fused_layer_norm_backward(
        x.clone(),
        residual.unwrap_or_else(|| x.clone()),
        bias.unwrap_or_else(|| gamma.clone()),
        gamma,
        grad,
        epsilon,
        has_residual,
        has_bias,
    );
    let d_gamma = want[1].then(|| B::float_reshape(B::float_sum_dim(g_xhat, 0), [c].into()));
    (want[0].then_some(d_x), d_gamma, d_beta)
}

/// Autodiff node of the layer norm ([`layer_norm_grads`]).
#[derive(Debug)]
struct LayerNormBackward;

impl<B: FusedOps> Backward<B, 3> for LayerNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, epsilon) = ops.state;
        let want = [node_x.is_some(), node_gamma.is_some(), node_beta.is_some()];
        let (d_x, d_gamma, d_beta) =
            layer_norm_grads::<B>(x, None, None, gamma, epsilon, grad, want);
        for (node, g) in [(node_x, d_x), (node_gamma, d_gamma), (node_beta, d_beta)] {
            if let (Some(node), Some(g)) = (node, g) {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

/// Autodiff node of the layer norm of a sum: both addends get the input gradient.
#[derive(Debug)]
struct AddLayerNormBackward;

impl<B: FusedOps> Backward<B, 4> for AddLayerNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, r, gamma, beta] = ops.parents.map(|n| n.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        let (x_t, residual, gamma_t, epsilon) = ops.state;
        sum_layer_norm_backward::<B>(
            grads,
            grad,
            (x_t, None, residual),
            gamma_t,
            epsilon,
            [x, None, r, gamma, beta],
        );
    }
}

/// Autodiff node of the layer norm of `(x + bias) + residual`: `x` and the residual get the
/// input gradient, the bias its sum over rows.
#[derive(Debug)]
struct BiasAddLayerNormBackward;

impl<B: FusedOps> Backward<B, 5> for BiasAddLayerNormBackward {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        f64,
    );

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
        let nodes = ops.parents.map(|n| n.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        let (x, bias, residual, gamma, epsilon) = ops.state;
        sum_layer_norm_backward::<B>(
            grads,
            grad,
            (x, Some(bias), residual),
            gamma,
            epsilon,
            nodes,
        );
    }
}

/// Autodiff node of [`FusedOps::fused_bias_add_layer_norm_plus`]: the output gradient's two
/// halves `[g₁; g₂]`; the norm gets `g₁ + g₂` (then as [`BiasAddLayerNormBackward`]), the added
/// tensor `g₂`.
#[derive(Debug)]
struct BiasAddLayerNormPlusBackward;

impl<B: FusedOps> Backward<B, 6> for BiasAddLayerNormPlusBackward {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        f64,
    );

    fn backward(self, ops: Ops<Self::State, 6>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, bias, r, gamma, beta, plus] = ops.parents.map(|n| n.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        let (x_t, bias_t, residual, gamma_t, epsilon) = ops.state;
        let [rows, c] = x_t.shape().dims::<2>();
        let g1 = B::float_slice(
            grad.clone(),
            &[burn::tensor::Slice::from(0..rows), (0..c).into()],
        );
        let g2 = B::float_slice(
            grad,
            &[burn::tensor::Slice::from(rows..2 * rows), (0..c).into()],
        );
        if let Some(node) = plus {
            grads.register::<B>(node, g2.clone());
        }
        sum_layer_norm_backward::<B>(
            grads,
            B::float_add(g1, g2),
            (x_t, Some(bias_t), residual),
            gamma_t,
            epsilon,
            [x, bias, r, gamma, beta],
        );
    }
}

/// Autodiff node of the paired generalized IoU: both box sets' gradients in one launch.
#[derive(Debug)]
struct PairedGiouBackward;

impl<B: FusedOps> Backward<B, 2> for PairedGiouBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (a, b) = ops.state;
        let (d_a, d_b) = B::fused_paired_giou_backward(a, b, grad);
        if let Some(node) = node_a {
            grads.register::<B>(node.id, d_a);
        }
        if let Some(node) = node_b {
            grads.register::<B>(node.id, d_b);
        }
    }
}

/// The backward of a layer norm of the sum of `x [R, C]` (with a `[C]` bias when there is one)
/// and a residual, given as its parts `(x, bias, residual)`, for the nodes `[x, bias, residual,
/// gamma, beta]`: both addends get the input gradient, the bias its sum over rows.
#[allow(clippy::type_complexity)]
fn sum_layer_norm_backward<B: FusedOps>(
    grads: &mut Gradients,
    grad: FloatTensor<B>,
    (x_t, bias_t, residual_t): (FloatTensor<B>, Option<FloatTensor<B>>, FloatTensor<B>),
    gamma: FloatTensor<B>,
    epsilon: f64,
    [x, bias, residual, node_gamma, node_beta]: [Option<NodeId>; 5],
) {
    let want = [
        x.is_some() || residual.is_some() || bias.is_some(),
        node_gamma.is_some(),
        node_beta.is_some(),
    ];
    let (d_sum, d_gamma, d_beta) =
        layer_norm_grads::<B>(x_t, Some(residual_t), bias_t, gamma, epsilon, grad, want);
    if let Some(d) = d_sum {
        if let Some(node) = residual {
            grads.register::<B>(node, d.clone());
        }
        register_biased::<B>(grads, [x, bias], d);
    }
    for (node, g) in [(node_gamma, d_gamma), (node_beta, d_beta)] {
        if let (Some(node), Some(g)) = (node, g) {
            grads.register::<B>(node, g);
        }
    }
}

/// Autodiff node of `y = x / n / 2` with `n = max(‖x‖, 1e-12)` per row:
/// `∂x = (g − x · (x·g) / ‖x‖²) / (2n)`, the second term only where the norm is not clamped.
#[derive(Debug)]
struct L2HalveRowsBackward;

impl<B: FusedOps> Backward<B, 1> for L2HalveRowsBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let Some(node) = node else { return };
        let x = ops.state;
        let sq = B::float_sum_dim(B::float_mul(x.clone(), x.clone()), 1);
        let norm = B::float_sqrt(sq.clone());
        let bool_dtype = burn::backend::get_or_init_device_settings::<B>(&x.device()).bool_dtype;
        let clamped = B::float_lower_elem(norm.clone(), 1e-12f32.into(), bool_dtype);
        let n = B::float_clamp_min(norm, 1e-12f32.into());
        let dot = B::float_sum_dim(B::float_mul(x.clone(), grad.clone()), 1);
        // the norm's share, zero on clamped rows (there the clamp passes no gradient)
        let coef = B::float_mask_fill(B::float_div(dot, sq), clamped, 0f32.into());
        let d = B::float_sub(grad, B::float_mul(x, coef));
        let d = B::float_div(d, B::float_mul_scalar(n, 2f32.into()));
        grads.register::<B>(node.id, d);
    }
}

/// Autodiff node of the ReLU: Burn's ReLU backward on the output, in one launch.
#[derive(Debug)]
struct ReluBackward;

impl<B: FusedOps> Backward<B, 1> for ReluBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::fused_relu_backward(ops.state, grad));
        }
    }
}

/// Autodiff node of the softmax: `∂x = y · (g − Σ_row g·y)`.
#[derive(Debug)]
struct SoftmaxBackward;

impl<B: FusedOps> Backward<B, 1> for SoftmaxBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, softmax_grad::<B>(ops.state, grad));
        }
    }
}

/// The softmax's input gradient from its output `y [R, C]`: `y · (g − Σ_row g·y)` (one row
/// kernel).
fn softmax_grad<B: FusedOps>(y: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    B::fused_softmax_backward(y, grad)
}

/// The gradient of a repeating bias of `len` elements: the input gradient `g` summed over the
/// repeats.
fn repeating_bias_grad<B: Backend>(g: FloatTensor<B>, len: usize) -> FloatTensor<B> {
    grouped_bias_grad::<B>(g, len, 1)
}

/// The gradient of a bias of `groups` blocks of `len` values, each block repeating along its
/// share of the flattened input (see [`FusedOps::fused_bias_softmax`]): the input gradient `g`
/// summed over each block's repeats.
fn grouped_bias_grad<B: Backend>(g: FloatTensor<B>, len: usize, groups: usize) -> FloatTensor<B> {
    let n = g.shape().num_elements();
    let blocks = B::float_reshape(g, [groups, n / (groups * len), len].into());
    B::float_reshape(B::float_sum_dim(blocks, 1), [groups * len].into())
}

/// Autodiff node of the softmax of `x` plus a repeating bias.
#[derive(Debug)]
struct BiasSoftmaxBackward;

impl<B: FusedOps> Backward<B, 2> for BiasSoftmaxBackward {
    type State = (FloatTensor<B>, usize, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (y, len, groups) = ops.state;
        let g = softmax_grad::<B>(y, grad);
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, grouped_bias_grad::<B>(g.clone(), len, groups));
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, g);
        }
    }
}

/// Autodiff node of the bias add with ReLU: `∂x = g'`, `∂bias = Σ_rows g'`, with `g'` the output
/// gradient past the ReLU.
#[derive(Debug)]
struct BiasReluBackward;

impl<B: FusedOps> Backward<B, 2> for BiasReluBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let nodes = ops.parents.map(|n| n.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        let g = B::fused_relu_backward(ops.state, grad);
        register_biased::<B>(grads, nodes, g);
    }
}

/// `x [R, C] + bias [C]` (Burn's broadcast add).
fn plus_bias<B: Backend>(x: FloatTensor<B>, bias: FloatTensor<B>) -> FloatTensor<B> {
    let c = x.shape()[1];
    B::float_add(x, B::float_reshape(bias, [1, c].into()))
}

/// Registers `g` (the gradient of `x + bias`) for `x` and, summed over rows, for the bias.
fn register_biased<B: Backend>(
    grads: &mut Gradients,
    [node_x, node_bias]: [Option<NodeId>; 2],
    g: FloatTensor<B>,
) {
    if let Some(node) = node_bias {
        let c = g.shape()[1];
        grads.register::<B>(node, repeating_bias_grad::<B>(g.clone(), c));
    }
    if let Some(node) = node_x {
        grads.register::<B>(node, g);
    }
}

/// Autodiff node of the bias add with GELU: the exact GELU derivative at `x + bias`
/// (`(1 + erf(v / √2)) / 2 + v · exp(−v² / 2) / √(2π)`, PyTorch's and flex's; Burn's default
/// `gelu_backward`, which the cubecl backends keep, differentiates the tanh approximation),
/// in one launch.
#[derive(Debug)]
struct BiasGeluBackward;

impl<B: FusedOps> Backward<B, 2> for BiasGeluBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let nodes = ops.parents.map(|n| n.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        let (x, bias) = ops.state;
        let g = B::fused_bias_gelu_backward(x, bias, grad);
        register_biased::<B>(grads, nodes, g);
    }
}

/// Autodiff node of `residual + (x + bias) · gate[0]`: the residual gets the output gradient
/// `g`, `x + bias` gets `g · gate[0]`, and `gate[0]` gets `Σ g · (x + bias)` (its other elements
/// are not read: zero).
#[derive(Debug)]
struct BiasGateBackward;

impl<B: FusedOps> Backward<B, 4> for BiasGateBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_bias, node_residual, node_gate] = ops.parents.map(|n| n.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        let (x, bias, gate) = ops.state;
        let len = gate.shape().num_elements();
        if let Some(node) = node_gate {
            let v = plus_bias::<B>(x, bias);
            let first = B::float_reshape(B::float_sum(B::float_mul(grad.clone(), v)), [1].into());
            let d_gate = if len > 1 {
                let rest = B::float_zeros([len - 1].into(), &first.device(), first.dtype().into());
                B::float_cat(vec![first, rest], 0)
            } else {
                first
            };
            grads.register::<B>(node, d_gate);
        }
        if node_x.is_some() || node_bias.is_some() {
            let g0 = B::float_reshape(
                B::float_slice(gate, &[burn::tensor::Slice::from(0..1)]),
                [1, 1].into(),
            );
            register_biased::<B>(grads, [node_x, node_bias], B::float_mul(grad.clone(), g0));
        }
        if let Some(node) = node_residual {
            grads.register::<B>(node, grad);
        }
    }
}

/// Autodiff node of `x + bias` with zeroed padding rows: the output gradient with those rows
/// zeroed (the padding mask gets none).
#[derive(Debug)]
struct BiasZeroRowsBackward;

impl<B: FusedOps> Backward<B, 2> for BiasZeroRowsBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let nodes = ops.parents.map(|n| n.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        let shape = grad.shape();
        let padding = B::float_reshape(ops.state, [shape[0], 1].into());
        let bool_dtype =
            burn::backend::get_or_init_device_settings::<B>(&padding.device()).bool_dtype;
        let padded = B::bool_expand(
            B::float_not_equal_elem(padding, 0f32.into(), bool_dtype),
            shape,
        );
        register_biased::<B>(grads, nodes, B::float_mask_fill(grad, padded, 0f32.into()));
    }
}

/// Autodiff node of `(x + bias) · (y + y_bias)`: each factor gets the output gradient times the
/// other, each bias its factor's gradient summed over rows.
#[derive(Debug)]
struct BiasProductBackward;

impl<B: FusedOps> Backward<B, 4> for BiasProductBackward {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
    );

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_bias, node_y, node_y_bias] = ops.parents.map(|n| n.map(|n| n.id));
        let grad = grads.consume::<B>(&ops.node);
        let (x, bias, y, y_bias) = ops.state;
        let u = plus_bias::<B>(x, bias);
        let w = plus_bias::<B>(y, y_bias);
        if node_y.is_some() || node_y_bias.is_some() {
            register_biased::<B>(grads, [node_y, node_y_bias], B::float_mul(grad.clone(), u));
        }
        if node_x.is_some() || node_bias.is_some() {
            register_biased::<B>(grads, [node_x, node_bias], B::float_mul(grad, w));
        }
    }
}

/// Autodiff node of the sampling locations: with `v = off + bias` and `g` the output gradient,
/// for points `∂v = g / normalizer` and `∂ref = Σ_{M,P} g`; for boxes
/// `∂v = g / P · wh · 0.5`, `∂xy = Σ_{M,P} g` and `∂wh = Σ_{M,P} g · v / P · 0.5`; the bias
/// gets `∂v` summed over its repeats (Burn's ops).
#[derive(Debug)]
struct SamplingLocationsBackward;

impl<B: FusedOps> Backward<B, 3> for SamplingLocationsBackward {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_off, node_bias, node_ref] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (off, bias, reference, normalizer) = ops.state;
        let shape = off.shape();
        let [n, lq, _, l, p, _] = shape.dims::<6>();
        let r = reference.shape()[3];
        let len = bias.shape().num_elements();
        let total = shape.num_elements();
        // [N, Lq, 1, L, 1, 2] views of the reference's parts
        let part = |from: usize| {
            let s = [
                burn::tensor::Slice::from(..),
                burn::tensor::Slice::from(..),
                burn::tensor::Slice::from(..),
                burn::tensor::Slice::from(from..from + 2),
            ];
            let t = B::float_slice(reference.clone(), &s);
            B::float_reshape(t, [n, lq, 1, l, 1, 2].into())
        };
        // the sum over heads and points, as the reference's [N, Lq, L, 2]
        let over_heads_points = |t: FloatTensor<B>| {
            let t = B::float_sum_dim(B::float_sum_dim(t, 4), 2);
            B::float_reshape(t, [n, lq, l, 2].into())
        };
        let (d_v, d_ref) = if r == 4 {
            let wh = part(2);
            let scaled = B::float_mul_scalar(
                B::float_div_scalar(grad.clone(), (p as f32).into()),
                0.5f32.into(),
            );
            let d_v = B::float_mul(scaled.clone(), wh);
            let d_ref = node_ref.is_some().then(|| {
                let rows = B::float_reshape(off, [total / len, len].into());
                let v = B::float_add(rows, B::float_reshape(bias, [1, len].into()));
                let v = B::float_reshape(v, shape.clone());
                let d_wh = over_heads_points(B::float_mul(scaled, v));
                B::float_cat(vec![over_heads_points(grad), d_wh], 3)
            });
            (d_v, d_ref)
        } else {
            let norm = B::float_reshape(normalizer, [1, 1, 1, l, 1, 2].into());
            let d_v = B::float_div(grad.clone(), norm);
            (d_v, node_ref.is_some().then(|| over_heads_points(grad)))
        };
        if let (Some(node), Some(d)) = (node_ref, d_ref) {
            grads.register::<B>(node.id, d);
        }
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, repeating_bias_grad::<B>(d_v.clone(), len));
        }
        if let Some(node) = node_off {
            grads.register::<B>(node.id, d_v);
        }
    }
}

/// Autodiff node of the group norm: with `x̂` the normalised input (statistics recomputed with
/// Burn's ops) and `g` the output gradient, `∂β = Σ g`, `∂γ = Σ g·x̂` (over batch and space)
/// and, per group, `∂x = (g·γ − mean(g·γ) − x̂·mean(g·γ·x̂)) / σ`.
#[derive(Debug)]
struct GroupNormBackward;

impl<B: FusedOps> Backward<B, 3> for GroupNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, usize, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, groups, epsilon) = ops.state;
        let [b, c, h, w] = x.shape().dims::<4>();
        let n = c / groups * h * w;
        let rows = |t: FloatTensor<B>| B::float_reshape(t, [b, groups, n].into());
        let xr = rows(x);
        let mean = B::float_mean_dim(xr.clone(), 2);
        let centred = B::float_sub(xr, mean);
        let var = B::float_mean_dim(B::float_mul(centred.clone(), centred.clone()), 2);
        let sigma = B::float_sqrt(B::float_add_scalar(var, epsilon.into()));
        let x_hat = B::float_reshape(B::float_div(centred, sigma.clone()), [b, c, h * w].into());
        let g = B::float_reshape(grad, [b, c, h * w].into());
        // per channel: sum over batch and space
        let per_channel = |t: FloatTensor<B>| {
            B::float_reshape(B::float_sum_dim(B::float_sum_dim(t, 2), 0), [c].into())
        };
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, per_channel(g.clone()));
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, per_channel(B::float_mul(g.clone(), x_hat.clone())));
        }
        if let Some(node) = node_x {
            let g_gamma = B::float_mul(g, B::float_reshape(gamma, [1, c, 1].into()));
            let (gg, xh) = (rows(g_gamma), rows(x_hat));
            let a = B::float_mean_dim(gg.clone(), 2);
            let m = B::float_mean_dim(B::float_mul(gg.clone(), xh.clone()), 2);
            let inner = B::float_sub(B::float_sub(gg, a), B::float_mul(xh, m));
            let d_x = B::float_reshape(B::float_div(inner, sigma), [b, c, h, w].into());
            grads.register::<B>(node.id, d_x);
        }
    }
}

/// Autodiff node of the head split (`transposed`, `scale`): the output gradient moved back to
/// `[B, N, H, E]` and scaled, and its sum over `B·N` for the bias.
#[derive(Debug)]
struct HeadsBackward;

impl<B: FusedOps> Backward<B, 2> for HeadsBackward {
    type State = (bool, f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (transposed, scale) = ops.state;
        // [B, H, N, E] or [B, H, E, N] → row-major [B, N, H, E], scaled, in one launch
        let g = B::fused_heads_backward(grad, scale, transposed);
        if let Some(node) = node_bias {
            let s = g.shape();
            let rows = B::float_reshape(g.clone(), [s[0] * s[1], s[2] * s[3]].into());
            let gb = B::float_reshape(B::float_sum_dim(rows, 0), [s[2] * s[3]].into());
            grads.register::<B>(node.id, gb);
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, g);
        }
    }
}

/// The gradient past the affine map's ReLU (`output` is `None` without ReLU).
fn through_relu<B: FusedOps>(
    output: Option<FloatTensor<B>>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    match output {
        Some(out) => B::fused_relu_backward(out, grad),
        None => grad,
    }
}

/// `grad · scale[c]` for `grad [N, C, H, W]`.
fn scale_channels<B: Backend>(grad: FloatTensor<B>, scale: FloatTensor<B>) -> FloatTensor<B> {
    let c = scale.shape()[0];
    B::float_mul(grad, B::float_reshape(scale, [1, c, 1, 1].into()))
}

/// Autodiff node of the affine map (its scale and shift are constants): `∂x = g · scale`, with
/// `g` the output gradient past the ReLU.
#[derive(Debug)]
struct AffineBackward;

impl<B: FusedOps> Backward<B, 1> for AffineBackward {
    type State = (Option<FloatTensor<B>>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (output, scale) = ops.state;
        if let Some(node) = node_x {
            let g = through_relu::<B>(output, grad);
            grads.register::<B>(node.id, scale_channels::<B>(g, scale));
        }
    }
}

/// Autodiff node of the affine map with residual and ReLU: `∂x = g · scale`, `∂residual = g`.
#[derive(Debug)]
struct AffineAddReluBackward;

impl<B: FusedOps> Backward<B, 2> for AffineAddReluBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_residual] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (output, scale) = ops.state;
        let g = through_relu::<B>(Some(output), grad);
        if let Some(node) = node_residual {
            grads.register::<B>(node.id, g.clone());
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, scale_channels::<B>(g, scale));
        }
    }
}

/// Autodiff node of the box refinement. `∂delta` is Burn's sigmoid backward; `∂reference`
/// follows Burn's autodiff of the composite op for op: the log and division gradients, and the
/// clamps passing the gradient only where they did not clamp (`x ≥ 1e-5`, `1 − x ≥ 1e-5`,
/// `0 ≤ r ≤ 1`).
#[derive(Debug)]
struct RefineBackward;

impl<B: FusedOps> Backward<B, 2> for RefineBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_delta, node_ref] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (output, r) = ops.state;
        let (g, d_r) = refine_grads::<B>(output, r, grad, node_ref.is_some());
        if let (Some(node), Some(d_r)) = (node_ref, d_r) {
            grads.register::<B>(node.id, d_r);
        }
        if let Some(node) = node_delta {
            grads.register::<B>(node.id, g);
        }
    }
}

/// The box refinement's gradients from its `output`, the reference `r` and the output gradient:
/// `(∂delta, ∂reference)`, the latter only when `want_reference`.
fn refine_grads<B: Backend>(
    output: FloatTensor<B>,
    r: FloatTensor<B>,
    grad: FloatTensor<B>,
    want_reference: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let g = B::sigmoid_backward(output, grad);
    let d_r = want_reference.then(|| {
        let bool_dtype = burn::backend::get_or_init_device_settings::<B>(&r.device()).bool_dtype;
        let zero_where = |t: FloatTensor<B>, mask| B::float_mask_fill(t, mask, 0f32.into());
        let x = B::float_clamp(r.clone(), 0f32.into(), 1f32.into());
        let x1 = B::float_clamp_min(x.clone(), 1e-5f32.into());
        let t = B::float_add_scalar(B::float_neg(x.clone()), 1f32.into());
        let x2 = B::float_clamp_min(t.clone(), 1e-5f32.into());
        let d_log = B::float_div(g.clone(), B::float_div(x1.clone(), x2.clone()));
        let d_x1 = B::float_div(d_log.clone(), x2.clone());
        let d_x2 = B::float_neg(B::float_div(
            B::float_mul(d_log, x1),
            B::float_mul(x2.clone(), x2),
        ));
        let d_x1 = zero_where(d_x1, B::float_lower_elem(x, 1e-5f32.into(), bool_dtype));
        let d_x2 = zero_where(d_x2, B::float_lower_elem(t, 1e-5f32.into(), bool_dtype));
        // t = 1 − x
        let d_x = B::float_sub(d_x1, d_x2);
        let d_r = zero_where(d_x, B::float_lower_elem(r.clone(), 0f32.into(), bool_dtype));
        zero_where(d_r, B::float_greater_elem(r, 1f32.into(), bool_dtype))
    });
    (g, d_r)
}

/// Autodiff node of the box refinement with a repeating bias on `delta`.
#[derive(Debug)]
struct BiasRefineBackward;

impl<B: FusedOps> Backward<B, 3> for BiasRefineBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_delta, node_bias, node_ref] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (output, r, len) = ops.state;
        let (g, d_r) = refine_grads::<B>(output, r, grad, node_ref.is_some());
        if let (Some(node), Some(d_r)) = (node_ref, d_r) {
            grads.register::<B>(node.id, d_r);
        }
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, repeating_bias_grad::<B>(g.clone(), len));
        }
        if let Some(node) = node_delta {
            grads.register::<B>(node.id, g);
        }
    }
}

/// Autodiff node of the sine embedding (its frequencies are constants): the backward kernel.
#[derive(Debug)]
struct SineEmbedBackward;

impl<B: FusedOps> Backward<B, 1> for SineEmbedBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_pos] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (pos, dim_t, scale) = ops.state;
        if let Some(node) = node_pos {
            grads.register::<B>(
                node.id,
                B::fused_sine_embed_backward(pos, dim_t, grad, scale),
            );
        }
    }
}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
                let out =
                    B::fused_layer_norm(x.clone(), gamma.clone(), beta.into_primitive(), epsilon);
                prep.finish((x, gamma, epsilon), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )),
        }
    }

    fn fused_add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match AddLayerNormBackward
            .prepare::<C>([x.node(), residual.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, r, gamma) = (
                    x.into_primitive(),
                    residual.into_primitive(),
                    gamma.into_primitive(),
                );
                let out = B::fused_add_layer_norm(
                    x.clone(),
                    r.clone(),
                    gamma.clone(),
                    beta.into_primitive(),
                    epsilon,
                );
                prep.finish((x, r, gamma, epsilon), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_add_layer_norm(
                x.into_primitive(),
                residual.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )),
        }
    }

    fn fused_bias_add_layer_norm(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match BiasAddLayerNormBackward
            .prepare::<C>([
                x.node(),
                bias.node(),
                residual.node(),
                gamma.node(),
                beta.node(),
            ])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, bias, r, gamma) = (
                    x.into_primitive(),
                    bias.into_primitive(),
                    residual.into_primitive(),
                    gamma.into_primitive(),
                );
                let out = B::fused_bias_add_layer_norm(
                    x.clone(),
                    bias.clone(),
                    r.clone(),
                    gamma.clone(),
                    beta.into_primitive(),
                    epsilon,
                );
                prep.finish((x, bias, r, gamma, epsilon), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_bias_add_layer_norm(
                x.into_primitive(),
                bias.into_primitive(),
                residual.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )),
        }
    }

    fn fused_bias_add_layer_norm_plus(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        plus: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match BiasAddLayerNormPlusBackward
            .prepare::<C>([
                x.node(),
                bias.node(),
                residual.node(),
                gamma.node(),
                beta.node(),
                plus.node(),
            ])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, bias, r, gamma) = (
                    x.into_primitive(),
                    bias.into_primitive(),
                    residual.into_primitive(),
                    gamma.into_primitive(),
                );
                let out = B::fused_bias_add_layer_norm_plus(
                    x.clone(),
                    bias.clone(),
                    r.clone(),
                    gamma.clone(),
                    beta.into_primitive(),
                    plus.into_primitive(),
                    epsilon,
                );
                prep.finish((x, bias, r, gamma, epsilon), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_bias_add_layer_norm_plus(
                x.into_primitive(),
                bias.into_primitive(),
                residual.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                plus.into_primitive(),
                epsilon,
            )),
        }
    }

    fn fused_paired_giou(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        match PairedGiouBackward
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (a, b) = (a.into_primitive(), b.into_primitive());
                let out = B::fused_paired_giou(a.clone(), b.clone());
                prep.finish((a, b), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_paired_giou(a.into_primitive(), b.into_primitive()))
            }
        }
    }

    fn fused_paired_giou_backward(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // second-order gradients are not needed: untracked
        let (d_a, d_b) = B::fused_paired_giou_backward(
            a.into_primitive(),
            b.into_primitive(),
            grad.into_primitive(),
        );
        let lift = <Self as burn::backend::AutodiffBackend>::from_inner;
        (lift(d_a), lift(d_b))
    }

    fn fused_relu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match ReluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_relu(x.into_primitive());
                prep.finish(out.clone(), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_relu(x.into_primitive())),
        }
    }

    fn fused_l2_halve_rows(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match L2HalveRowsBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let out = B::fused_l2_halve_rows(x.clone());
                prep.finish(x, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_l2_halve_rows(x.into_primitive())),
        }
    }

    fn fused_heads_backward(
        grad: FloatTensor<Self>,
        scale: f32,
        transposed: bool,
    ) -> FloatTensor<Self> {
        // second-order gradients are not needed: untracked
        let out = B::fused_heads_backward(grad.into_primitive(), scale, transposed);
        <Self as burn::backend::AutodiffBackend>::from_inner(out)
    }

    fn fused_bias_gelu_backward(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        // second-order gradients are not needed: untracked
        let out = B::fused_bias_gelu_backward(
            x.into_primitive(),
            bias.into_primitive(),
            grad.into_primitive(),
        );
        <Self as burn::backend::AutodiffBackend>::from_inner(out)
    }

    fn fused_relu_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // second-order gradients are not needed: untracked
        let out = B::fused_relu_backward(y.into_primitive(), grad.into_primitive());
        <Self as burn::backend::AutodiffBackend>::from_inner(out)
    }

    fn fused_softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::fused_softmax_backward(y.into_primitive(), grad.into_primitive());
        <Self as burn::backend::AutodiffBackend>::from_inner(out)
    }

    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
        has_residual: bool,
        has_bias: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // second-order gradients are not needed: untracked
        let (d, gx) = B::fused_layer_norm_backward(
            x.into_primitive(),
            residual.into_primitive(),
            bias.into_primitive(),
            gamma.into_primitive(),
            grad.into_primitive(),
            epsilon,
            has_residual,
            has_bias,
        );
        let lift = <Self as burn::backend::AutodiffBackend>::from_inner;
        (lift(d), lift(gx))
    }

    // The optimiser's ops run on gradients and parameters outside the graph: untracked.
    fn fused_adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        exp_avg: FloatTensor<Self>,
        exp_avg_sq: FloatTensor<Self>,
        scalars: AdamWScalars,
        keep_layout: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (p, m, v) = B::fused_adamw(
            param.into_primitive(),
            grad.into_primitive(),
            exp_avg.into_primitive(),
            exp_avg_sq.into_primitive(),
            scalars,
            keep_layout,
        );
        let lift = <Self as burn::backend::AutodiffBackend>::from_inner;
        (lift(p), lift(m), lift(v))
    }

    fn fused_square_partials_into(
        x: FloatTensor<Self>,
        acc: FloatTensor<Self>,
        offset: usize,
    ) -> FloatTensor<Self> {
        <Self as burn::backend::AutodiffBackend>::from_inner(B::fused_square_partials_into(
            x.into_primitive(),
            acc.into_primitive(),
            offset,
        ))
    }

    fn fused_bias_relu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        match BiasReluBackward
            .prepare::<C>([x.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_bias_relu(x.into_primitive(), bias.into_primitive());
                prep.finish(out.clone(), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_bias_relu(
                x.into_primitive(),
                bias.into_primitive(),
            )),
        }
    }

    fn fused_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        match BiasGeluBackward
            .prepare::<C>([x.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, bias) = (x.into_primitive(), bias.into_primitive());
                let out = B::fused_bias_gelu(x.clone(), bias.clone());
                prep.finish((x, bias), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_bias_gelu(
                x.into_primitive(),
                bias.into_primitive(),
            )),
        }
    }

    fn fused_bias_gate(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gate: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match BiasGateBackward
            .prepare::<C>([x.node(), bias.node(), residual.node(), gate.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, bias, gate) = (
                    x.into_primitive(),
                    bias.into_primitive(),
                    gate.into_primitive(),
                );
                let out = B::fused_bias_gate(
                    x.clone(),
                    bias.clone(),
                    residual.into_primitive(),
                    gate.clone(),
                );
                prep.finish((x, bias, gate), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_bias_gate(
                x.into_primitive(),
                bias.into_primitive(),
                residual.into_primitive(),
                gate.into_primitive(),
            )),
        }
    }

    fn fused_bias_zero_rows(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match BiasZeroRowsBackward
            .prepare::<C>([x.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let padding = padding.into_primitive();
                let out = B::fused_bias_zero_rows(
                    x.into_primitive(),
                    bias.into_primitive(),
                    padding.clone(),
                );
                prep.finish(padding, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_bias_zero_rows(
                x.into_primitive(),
                bias.into_primitive(),
                padding.into_primitive(),
            )),
        }
    }

    fn fused_bias_product(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        y: FloatTensor<Self>,
        y_bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match BiasProductBackward
            .prepare::<C>([x.node(), bias.node(), y.node(), y_bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (
                    x.into_primitive(),
                    bias.into_primitive(),
                    y.into_primitive(),
                    y_bias.into_primitive(),
                );
                let out = B::fused_bias_product(
                    state.0.clone(),
                    state.1.clone(),
                    state.2.clone(),
                    state.3.clone(),
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_bias_product(
                x.into_primitive(),
                bias.into_primitive(),
                y.into_primitive(),
                y_bias.into_primitive(),
            )),
        }
    }

    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match GroupNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
                let out = B::fused_group_norm(
                    x.clone(),
                    gamma.clone(),
                    beta.into_primitive(),
                    groups,
                    epsilon,
                );
                prep.finish((x, gamma, groups, epsilon), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_group_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                groups,
                epsilon,
            )),
        }
    }

    fn fused_sampling_locations(
        off: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        reference: FloatTensor<Self>,
        normalizer: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match SamplingLocationsBackward
            .prepare::<C>([off.node(), bias.node(), reference.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (off, bias, r, norm) = (
                    off.into_primitive(),
                    bias.into_primitive(),
                    reference.into_primitive(),
                    normalizer.into_primitive(),
                );
                let out =
                    B::fused_sampling_locations(off.clone(), bias.clone(), r.clone(), norm.clone());
                prep.finish((off, bias, r, norm), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_sampling_locations(
                off.into_primitive(),
                bias.into_primitive(),
                reference.into_primitive(),
                normalizer.into_primitive(),
            )),
        }
    }

    fn fused_heads(x: FloatTensor<Self>, bias: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        heads_autodiff::<B, C>(x, bias, scale, false)
    }

    fn fused_heads_t(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        heads_autodiff::<B, C>(x, bias, scale, true)
    }

    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_softmax(x.into_primitive());
                prep.finish(out.clone(), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_softmax(x.into_primitive())),
        }
    }

    fn fused_bias_softmax(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        groups: usize,
    ) -> FloatTensor<Self> {
        let len = bias.shape().num_elements() / groups;
        match BiasSoftmaxBackward
            .prepare::<C>([x.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_bias_softmax(x.into_primitive(), bias.into_primitive(), groups);
                prep.finish((out.clone(), len, groups), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_bias_softmax(
                x.into_primitive(),
                bias.into_primitive(),
                groups,
            )),
        }
    }

    fn fused_bias_refine_boxes(
        delta: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        reference: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let len = bias.shape().num_elements();
        match BiasRefineBackward
            .prepare::<C>([delta.node(), bias.node(), reference.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let r = reference.into_primitive();
                let out = B::fused_bias_refine_boxes(
                    delta.into_primitive(),
                    bias.into_primitive(),
                    r.clone(),
                );
                prep.finish((out.clone(), r, len), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_bias_refine_boxes(
                delta.into_primitive(),
                bias.into_primitive(),
                reference.into_primitive(),
            )),
        }
    }

    fn fused_channel_affine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let (scale, shift) = (scale.into_primitive(), shift.into_primitive());
        match AffineBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_channel_affine(x.into_primitive(), scale.clone(), shift, relu);
                prep.finish((relu.then(|| out.clone()), scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_channel_affine(
                x.into_primitive(),
                scale,
                shift,
                relu,
            )),
        }
    }

    fn fused_channel_affine_add_relu(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (scale, shift) = (scale.into_primitive(), shift.into_primitive());
        match AffineAddReluBackward
            .prepare::<C>([x.node(), residual.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_channel_affine_add_relu(
                    x.into_primitive(),
                    scale.clone(),
                    shift,
                    residual.into_primitive(),
                );
                prep.finish((out.clone(), scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_channel_affine_add_relu(
                x.into_primitive(),
                scale,
                shift,
                residual.into_primitive(),
            )),
        }
    }

    fn fused_refine_boxes(
        delta: FloatTensor<Self>,
        reference: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match RefineBackward
            .prepare::<C>([delta.node(), reference.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let r = reference.into_primitive();
                let out = B::fused_refine_boxes(delta.into_primitive(), r.clone());
                prep.finish((out.clone(), r), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_refine_boxes(
                delta.into_primitive(),
                reference.into_primitive(),
            )),
        }
    }

    fn fused_sine_embed(
        pos: FloatTensor<Self>,
        dim_t: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let dim_t = dim_t.into_primitive();
        match SineEmbedBackward
            .prepare::<C>([pos.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let pos = pos.into_primitive();
                let out = B::fused_sine_embed(pos.clone(), dim_t.clone(), scale);
                prep.finish((pos, dim_t, scale), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_sine_embed(pos.into_primitive(), dim_t, scale))
            }
        }
    }

    fn fused_sine_embed_backward(
        pos: FloatTensor<Self>,
        dim_t: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        // only ever called inside a backward pass (second-order gradients are not needed)
        <Self as burn::backend::AutodiffBackend>::from_inner(B::fused_sine_embed_backward(
            pos.into_primitive(),
            dim_t.into_primitive(),
            grad.into_primitive(),
            scale,
        ))
    }
}

/// Whether every tensor is float32 on a cubecl device.
/// The head split on an autodiff backend (both layouts).
fn heads_autodiff<B: FusedOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
    scale: f32,
    transposed: bool,
) -> FloatTensor<Autodiff<B, C>> {
    let run = |x, bias| {
        if transposed {
            B::fused_heads_t(x, bias, scale)
        } else {
            B::fused_heads(x, bias, scale)
        }
    };
    match HeadsBackward
        .prepare::<C>([x.node(), bias.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            (transposed, scale),
            run(x.into_primitive(), bias.into_primitive()),
        ),
        OpsKind::UnTracked(prep) => prep.finish(run(x.into_primitive(), bias.into_primitive())),
    }
}

fn accepts(device: &Device, dtypes: &[DType]) -> bool {
    on_cube(device) && dtypes.iter().all(|d| *d == DType::F32)
}

/// The fused kernels as a [`FusedKernel`]: float32 tensors on wgpu and cuda devices, with or
/// without autodiff; everything else is declined.
#[derive(Debug, Default)]
pub struct FusedCube;

impl FusedKernel for FusedCube {
    fn name(&self) -> &str {
        "cube"
    }

    fn layer_norm(
        &self,
        x: &Tensor<2>,
        bias: Option<&Tensor<1>>,
        residual: Option<&Tensor<2>>,
        gamma: &Tensor<1>,
        beta: &Tensor<1>,
        epsilon: f64,
    ) -> Option<Tensor<2>> {
        let mut dtypes = vec![x.dtype(), gamma.dtype(), beta.dtype()];
        dtypes.extend(residual.map(|r| r.dtype()));
        dtypes.extend(bias.map(|b| b.dtype()));
        if !accepts(&x.device(), &dtypes) {
            return None;
        }
        let (x, gamma, beta) = (
            x.clone().into_dispatch(),
            gamma.clone().into_dispatch(),
            beta.clone().into_dispatch(),
        );
        let residual = residual.map(|r| r.clone().into_dispatch());
        let bias = bias.map(|b| b.clone().into_dispatch());
        Some(Tensor::from_dispatch(match (residual, bias) {
            (None, None) => <Dispatch as FusedOps>::fused_layer_norm(x, gamma, beta, epsilon),
            (Some(r), None) => {
                <Dispatch as FusedOps>::fused_add_layer_norm(x, r, gamma, beta, epsilon)
            }
            (Some(r), Some(b)) => {
                <Dispatch as FusedOps>::fused_bias_add_layer_norm(x, b, r, gamma, beta, epsilon)
            }
            // not asked by the model: a bias without a residual stays Burn's add
            (None, Some(_)) => return None,
        }))
    }

    fn layer_norm_plus(
        &self,
        x: &Tensor<2>,
        bias: &Tensor<1>,
        residual: &Tensor<2>,
        gamma: &Tensor<1>,
        beta: &Tensor<1>,
        plus: &Tensor<2>,
        epsilon: f64,
    ) -> Option<Tensor<2>> {
        let dtypes = [
            x.dtype(),
            bias.dtype(),
            residual.dtype(),
            gamma.dtype(),
            beta.dtype(),
            plus.dtype(),
        ];
        accepts(&x.device(), &dtypes).then(|| {
            Tensor::from_dispatch(<Dispatch as FusedOps>::fused_bias_add_layer_norm_plus(
                x.clone().into_dispatch(),
                bias.clone().into_dispatch(),
                residual.clone().into_dispatch(),
                gamma.clone().into_dispatch(),
                beta.clone().into_dispatch(),
                plus.clone().into_dispatch(),
                epsilon,
            ))
        })
    }

    fn channels_last_weights(&self, device: &Device) -> bool {
        on_cube(device)
    }

    fn takes_unbiased(&self, device: &Device, dtype: DType) -> bool {
        accepts(device, &[dtype])
    }

    fn bias_epilogue(
        &self,
        x: &Tensor<2>,
        bias: &Tensor<1>,
        epilogue: Epilogue<'_>,
    ) -> Option<Tensor<2>> {
        let mut dtypes = vec![x.dtype(), bias.dtype()];
        match epilogue {
            Epilogue::Relu | Epilogue::Gelu => {}
            Epilogue::Gate { residual, gate } => dtypes.extend([residual.dtype(), gate.dtype()]),
            Epilogue::ZeroRows { padding } => dtypes.push(padding.dtype()),
            Epilogue::Product { other, other_bias } => {
                dtypes.extend([other.dtype(), other_bias.dtype()])
            }
        }
        if !accepts(&x.device(), &dtypes) {
            return None;
        }
        let d = |t: &Tensor<2>| t.clone().into_dispatch();
        let (x, bias) = (d(x), bias.clone().into_dispatch());
        Some(Tensor::from_dispatch(match epilogue {
            Epilogue::Relu => <Dispatch as FusedOps>::fused_bias_relu(x, bias),
            Epilogue::Gelu => <Dispatch as FusedOps>::fused_bias_gelu(x, bias),
            Epilogue::Gate { residual, gate } => <Dispatch as FusedOps>::fused_bias_gate(
                x,
                bias,
                d(residual),
                gate.clone().into_dispatch(),
            ),
            Epilogue::ZeroRows { padding } => <Dispatch as FusedOps>::fused_bias_zero_rows(
                x,
                bias,
                padding.clone().into_dispatch(),
            ),
            Epilogue::Product { other, other_bias } => <Dispatch as FusedOps>::fused_bias_product(
                x,
                bias,
                d(other),
                other_bias.clone().into_dispatch(),
            ),
        }))
    }

    fn heads(
        &self,
        x: &Tensor<4>,
        bias: &Tensor<1>,
        scale: f32,
        transposed: bool,
    ) -> Option<Tensor<4>> {
        accepts(&x.device(), &[x.dtype(), bias.dtype()]).then(|| {
            let (x, bias) = (x.clone().into_dispatch(), bias.clone().into_dispatch());
            Tensor::from_dispatch(if transposed {
                <Dispatch as FusedOps>::fused_heads_t(x, bias, scale)
            } else {
                <Dispatch as FusedOps>::fused_heads(x, bias, scale)
            })
        })
    }

    fn group_norm(
        &self,
        x: &Tensor<4>,
        gamma: &Tensor<1>,
        beta: &Tensor<1>,
        groups: usize,
        epsilon: f64,
    ) -> Option<Tensor<4>> {
        accepts(&x.device(), &[x.dtype(), gamma.dtype(), beta.dtype()]).then(|| {
            Tensor::from_dispatch(<Dispatch as FusedOps>::fused_group_norm(
                x.clone().into_dispatch(),
                gamma.clone().into_dispatch(),
                beta.clone().into_dispatch(),
                groups,
                epsilon,
            ))
        })
    }

    fn sampling_locations(
        &self,
        offsets: &Tensor<6>,
        bias: &Tensor<1>,
        reference: &Tensor<4>,
        normalizer: &Tensor<1>,
    ) -> Option<Tensor<6>> {
        let dtypes = [
            offsets.dtype(),
            bias.dtype(),
            reference.dtype(),
            normalizer.dtype(),
        ];
        accepts(&offsets.device(), &dtypes).then(|| {
            Tensor::from_dispatch(<Dispatch as FusedOps>::fused_sampling_locations(
                offsets.clone().into_dispatch(),
                bias.clone().into_dispatch(),
                reference.clone().into_dispatch(),
                normalizer.clone().into_dispatch(),
            ))
        })
    }

    fn softmax(&self, x: &Tensor<2>, bias: Option<&Tensor<1>>, groups: usize) -> Option<Tensor<2>> {
        let mut dtypes = vec![x.dtype()];
        dtypes.extend(bias.map(|b| b.dtype()));
        accepts(&x.device(), &dtypes).then(|| {
            let x = x.clone().into_dispatch();
            Tensor::from_dispatch(match bias {
                None => <Dispatch as FusedOps>::fused_softmax(x),
                Some(b) => {
                    <Dispatch as FusedOps>::fused_bias_softmax(x, b.clone().into_dispatch(), groups)
                }
            })
        })
    }

    fn adamw(
        &self,
        param: &Tensor<4>,
        grad: &Tensor<4>,
        exp_avg: &Tensor<1>,
        exp_avg_sq: &Tensor<1>,
        scalars: &AdamWScalars,
        keep_layout: bool,
    ) -> Option<(Tensor<4>, Tensor<1>, Tensor<1>)> {
        let dtypes = [
            param.dtype(),
            grad.dtype(),
            exp_avg.dtype(),
            exp_avg_sq.dtype(),
        ];
        let n = param.shape().num_elements();
        if !accepts(&param.device(), &dtypes)
            || grad.dims() != param.dims()
            || exp_avg.dims() != [n]
            || exp_avg_sq.dims() != [n]
        {
            return None;
        }
        let (p, m, v) = <Dispatch as FusedOps>::fused_adamw(
            param.clone().into_dispatch(),
            grad.clone().into_dispatch(),
            exp_avg.clone().into_dispatch(),
            exp_avg_sq.clone().into_dispatch(),
            *scalars,
            keep_layout,
        );
        Some((
            Tensor::from_dispatch(p),
            Tensor::from_dispatch(m),
            Tensor::from_dispatch(v),
        ))
    }

    fn sum_squares(&self, xs: &[Tensor<4>]) -> Option<Tensor<1>> {
        let first = xs.first()?;
        let device = first.device();
        if !xs
            .iter()
            .all(|x| x.dtype() == DType::F32 && x.device() == device)
            || !accepts(&device, &[DType::F32])
        {
            return None;
        }
        let sizes: Vec<usize> = xs.iter().map(|x| x.shape().num_elements()).collect();
        let total = sizes.iter().map(|&n| cube::square_units(n)).sum::<usize>();
        let mut partials = Tensor::<1>::empty([total], (&device, DType::F32)).into_dispatch();
        let mut offset = 0;
        for (x, n) in xs.iter().zip(sizes) {
            partials = <Dispatch as FusedOps>::fused_square_partials_into(
                x.clone().into_dispatch(),
                partials,
                offset,
            );
            offset += cube::square_units(n);
        }
        let partials = Tensor::<1>::from_dispatch(partials);
        Some(partials.sum())
    }

    fn paired_giou(&self, a: &Tensor<2>, b: &Tensor<2>) -> Option<Tensor<1>> {
        (accepts(&a.device(), &[a.dtype(), b.dtype()])
            && a.dims() == b.dims()
            && a.dims()[1] == 4
            && b.device() == a.device())
        .then(|| {
            Tensor::from_dispatch(<Dispatch as FusedOps>::fused_paired_giou(
                a.clone().into_dispatch(),
                b.clone().into_dispatch(),
            ))
        })
    }

    fn l2_halve_rows(&self, x: &Tensor<2>) -> Option<Tensor<2>> {
        accepts(&x.device(), &[x.dtype()]).then(|| {
            Tensor::from_dispatch(<Dispatch as FusedOps>::fused_l2_halve_rows(
                x.clone().into_dispatch(),
            ))
        })
    }

    fn relu(&self, x: &Tensor<1>) -> Option<Tensor<1>> {
        accepts(&x.device(), &[x.dtype()]).then(|| {
            Tensor::from_dispatch(<Dispatch as FusedOps>::fused_relu(
                x.clone().into_dispatch(),
            ))
        })
    }

    fn channel_affine(
        &self,
        x: &Tensor<4>,
        scale: &Tensor<1>,
        shift: &Tensor<1>,
        residual: Option<&Tensor<4>>,
        relu: bool,
    ) -> Option<Tensor<4>> {
        let mut dtypes = vec![x.dtype(), scale.dtype(), shift.dtype()];
        dtypes.extend(residual.map(|r| r.dtype()));
        if !accepts(&x.device(), &dtypes) {
            return None;
        }
        let (x, scale, shift) = (
            x.clone().into_dispatch(),
            scale.clone().into_dispatch(),
            shift.clone().into_dispatch(),
        );
        Some(Tensor::from_dispatch(match (residual, relu) {
            (None, relu) => <Dispatch as FusedOps>::fused_channel_affine(x, scale, shift, relu),
            (Some(r), true) => <Dispatch as FusedOps>::fused_channel_affine_add_relu(
                x,
                scale,
                shift,
                r.clone().into_dispatch(),
            ),
            // no fused form: Burn's ops
            (Some(_), false) => return None,
        }))
    }

    fn refine_boxes(
        &self,
        delta: &Tensor<1>,
        bias: Option<&Tensor<1>>,
        reference: &Tensor<1>,
    ) -> Option<Tensor<1>> {
        let mut dtypes = vec![delta.dtype(), reference.dtype()];
        dtypes.extend(bias.map(|b| b.dtype()));
        accepts(&delta.device(), &dtypes).then(|| {
            let (delta, reference) = (
                delta.clone().into_dispatch(),
                reference.clone().into_dispatch(),
            );
            Tensor::from_dispatch(match bias {
                None => <Dispatch as FusedOps>::fused_refine_boxes(delta, reference),
                Some(b) => <Dispatch as FusedOps>::fused_bias_refine_boxes(
                    delta,
                    b.clone().into_dispatch(),
                    reference,
                ),
            })
        })
    }

    fn sine_embed_boxes(
        &self,
        pos: &Tensor<3>,
        dim_t: &Tensor<1>,
        scale: f32,
    ) -> Option<Tensor<3>> {
        (accepts(&pos.device(), &[pos.dtype(), dim_t.dtype()]) && pos.dims()[2] == 4).then(|| {
            Tensor::from_dispatch(<Dispatch as FusedOps>::fused_sine_embed(
                pos.clone().into_dispatch(),
                dim_t.clone().into_dispatch(),
                scale,
            ))
        })
    }
}

/// Installs [`FusedCube`] into the model (idempotent; [`crate::device`] calls it).
/// `RLIP_FUSED=off` keeps Burn's ops (for comparisons).
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("RLIP_FUSED").is_ok_and(|v| v == "off") {
            tracing::info!("RLIP_FUSED=off: fused layer norm, ReLU and affine kernels disabled");
            return;
        }
        rlip_model::fused::set_kernel(Some(Arc::new(FusedCube)));
    });
}
