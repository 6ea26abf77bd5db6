//! The float32 islands of the reduced-precision modes: layer norm, softmax and the box
//! refinement compute in float32 when their input is bf16 or f16 and cast the result back, as the
//! official model does under `torch.autocast` (layer/group norm and softmax are on its float32
//! list; the box update adds the float32 reference to the head's output). In float32 they are
//! exactly the plain operations. (The input projections' group norm uses [`in_f32`] for its
//! statistics, `crate::encoder::group_norm_blocked`.)

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};

use crate::dense::Biased;

/// Runs `f` on `x` in float32 when `x` is bf16 or f16 and casts the result back to `x`'s type;
/// in any other type `f` runs on `x` unchanged.
pub fn in_f32<const D: usize>(x: Tensor<D>, f: impl FnOnce(Tensor<D>) -> Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    if matches!(dtype, DType::BF16 | DType::F16) {
        f(x.cast(FloatDType::F32)).cast(FloatDType::from(dtype))
    } else {
        f(x)
    }
}

/// Softmax along `dim`, in float32 for half-precision input.
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    in_f32(x, |x| crate::fused::softmax(x, dim))
}

/// [`softmax`] over the last dimension of `x + mask` for `x [B, H, Q, K]` and an additive mask
/// `[B, 1, 1, K]` (one launch where a fused kernel takes it; half precision adds in its type,
/// then normalises as a float32 island).
pub fn softmax_masked(x: Tensor<4>, mask: Tensor<4>) -> Tensor<4> {
    if x.dtype() != DType::F32 || mask.dtype() != DType::F32 {
        return softmax(x + mask, 3);
    }
    let [b, _, _, k] = mask.dims();
    crate::fused::grouped_bias_softmax(x, mask.reshape([b, k]))
}

/// [`softmax`] over the last dimension of a linear layer's output whose bias may still be due
/// ([`crate::dense::Linear::forward_biased`]; the bias add in the softmax's launch).
pub fn softmax_biased<const D: usize>(y: Biased<D>) -> Tensor<D> {
    match y {
        Biased {
            product,
            bias: Some(bias),
        } if product.dtype() == DType::F32 => crate::fused::bias_softmax(product, bias),
        y => softmax(y.resolve(), D - 1),
    }
}

/// [`refine_boxes`] of a box head's output whose last bias may still be due (the bias add in
/// the refinement's launch).
pub fn refine_boxes_biased<const D: usize>(delta: Biased<D>, reference: Tensor<D>) -> Tensor<D> {
    match delta {
        Biased {
            product,
            bias: Some(bias),
        } if product.dtype() == DType::F32 => {
            let reference = reference.cast(FloatDType::F32);
            crate::fused::bias_refine_boxes(product, bias, reference)
        }
        delta => refine_boxes(delta.resolve(), reference),
    }
}

/// `sigmoid(delta + inverse_sigmoid(reference))`, the box refinement of the decoders and heads,
/// in float32 for half-precision input.
pub fn refine_boxes<const D: usize>(delta: Tensor<D>, reference: Tensor<D>) -> Tensor<D> {
    in_f32(delta, |delta| {
        let reference = reference.cast(FloatDType::from(delta.dtype()));
        crate::fused::refine_boxes(delta, reference)
    })
}

/// `nn.LayerNorm` over the last dimension: Burn's parameters and module paths (`gamma`, `beta`),
/// statistics and affine map in float32 for half-precision input (Burn's own widens only f16).
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// The scale (`weight` in PyTorch).
    pub gamma: Param<Tensor<1>>,
    /// The shift (`bias` in PyTorch).
    pub beta: Option<Param<Tensor<1>>>,
    epsilon: f64,
}

impl LayerNorm {
    /// A layer norm with scale `gamma`, shift `beta` and `epsilon`.
    pub fn new(gamma: Tensor<1>, beta: Option<Tensor<1>>, epsilon: f64) -> Self {
        Self {
            gamma: Param::from_tensor(gamma),
            beta: beta.map(Param::from_tensor),
            epsilon,
        }
    }

    /// Normalises `x` over its last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        in_f32(x, |x| {
            let dtype = FloatDType::from(x.dtype());
            crate::fused::layer_norm(
                x,
                self.gamma.val().cast(dtype),
                self.beta.as_ref().map(|b| b.val().cast(dtype)),
                self.epsilon,
            )
        })
    }

    /// `self.forward(x + y)` for a linear layer's output `y` whose bias may still be due
    /// ([`crate::dense::Linear::forward_biased`]): the bias add and the residual add inside the
    /// norm's launch where a fused kernel takes them.
    pub fn forward_add_biased<const D: usize>(&self, x: Tensor<D>, y: Biased<D>) -> Tensor<D> {
        match (self.fusable(&x, &y), y) {
            (Some((bias, gamma, beta)), Biased { product, .. }) => {
                crate::fused::bias_add_layer_norm(product, bias, x, gamma, beta, self.epsilon)
            }
            (None, y) => self.forward_add(x, y.resolve()),
        }
    }

    /// `(n, n + plus)` for `n = self.forward_add_biased(x, y)`: both in the norm's launch where a
    /// fused kernel takes them (a layer's output and, for the next attention, its sum with a
    /// positional query).
    pub fn forward_add_biased_plus<const D: usize>(
        &self,
        x: Tensor<D>,
        y: Biased<D>,
        plus: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>) {
        match (self.fusable(&x, &y), y) {
            (Some((bias, gamma, beta)), Biased { product, .. }) => {
                crate::fused::bias_add_layer_norm_plus(
                    product,
                    bias,
                    x,
                    gamma,
                    beta,
                    self.epsilon,
                    plus,
                )
            }
            (None, y) => {
                let n = self.forward_add(x, y.resolve());
                (n.clone(), n + plus)
            }
        }
    }

    /// `(bias, gamma, beta)` in the float type of the residual stream `x` when the norm can take
    /// `y`'s bias (a bias still due, float32), else `None`.
    fn fusable<const D: usize>(
        &self,
        x: &Tensor<D>,
        y: &Biased<D>,
    ) -> Option<(Tensor<1>, Tensor<1>, Option<Tensor<1>>)> {
        let bias = y.bias.as_ref()?;
        if matches!(x.dtype(), DType::BF16 | DType::F16) {
            return None;
        }
        let dtype = FloatDType::from(x.dtype());
        Some((
            bias.clone().cast(dtype),
            self.gamma.val().cast(dtype),
            self.beta.as_ref().map(|b| b.val().cast(dtype)),
        ))
    }

    /// `self.forward(x + residual)`, the add inside the norm's launch where a fused kernel takes
    /// it (float32; half-precision inputs add in their type, then normalise as a float32 island).
    pub fn forward_add<const D: usize>(&self, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
        if matches!(x.dtype(), DType::BF16 | DType::F16) {
            return self.forward(x + residual);
        }
        let dtype = FloatDType::from(x.dtype());
        crate::fused::add_layer_norm(
            x,
            residual,
            self.gamma.val().cast(dtype),
            self.beta.as_ref().map(|b| b.val().cast(dtype)),
            self.epsilon,
        )
    }
}
