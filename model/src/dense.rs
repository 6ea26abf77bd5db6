//! The model's dense products: [`Linear`] layers, batched [`matmul`]s and 2-D convolutions
//! ([`conv_forward`]), with one replaceable kernel for all of them.
//!
//! By default these are Burn's own ops, so each backend picks its fastest routine; on CUDA
//! that means float32 inputs multiplied on TF32 tensor cores (about 1e-3 relative error), as
//! PyTorch does with `allow_tf32`. A [`DenseKernel`] installed with [`set_kernel`] (e.g.
//! full-float32 kernels for parity runs) takes every product it accepts; the model code never
//! changes.

use std::sync::{Arc, RwLock};

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;

use crate::fused::Epilogue;

/// A replacement for the dense products on some devices.
pub trait DenseKernel: Send + Sync {
    /// Name shown in logs and benchmarks.
    fn name(&self) -> &str;
    /// `lhs [B, M, K] @ rhs [B, K, N]` (same `B`; either may be a strided view), or `None` to
    /// decline (Burn's matmul then runs).
    fn matmul(&self, lhs: &Tensor<3>, rhs: &Tensor<3>) -> Option<Tensor<3>>;
    /// `x [N, C_in, H, W]` convolved with `weight [C_out, C_in / groups, kH, kW]`, no bias, or
    /// `None` to decline (Burn's convolution then runs).
    fn conv2d(
        &self,
        x: &Tensor<4>,
        weight: &Tensor<4>,
        options: &ConvOptions<2>,
    ) -> Option<Tensor<4>>;
}

static KERNEL: RwLock<Option<Arc<dyn DenseKernel>>> = RwLock::new(None);

/// Installs (or, with `None`, removes) the dense kernel; returns the previous one.
pub fn set_kernel(kernel: Option<Arc<dyn DenseKernel>>) -> Option<Arc<dyn DenseKernel>> {
    std::mem::replace(
        &mut *KERNEL.write().unwrap_or_else(|e| e.into_inner()),
        kernel,
    )
}

/// The installed dense kernel, if any.
pub fn kernel() -> Option<Arc<dyn DenseKernel>> {
    KERNEL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// `nn.Linear` with Burn's parameter layout: `weight [d_in, d_out]`, optional `bias [d_out]`
/// (the same record as `burn::nn::Linear`), computed through the installed [`DenseKernel`].
#[derive(Module, Debug)]
pub struct Linear {
    /// `[d_in, d_out]` (the transpose of PyTorch's `[out, in]`).
    pub weight: Param<Tensor<2>>,
    /// `[d_out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// `x [..., d_in]` → `[..., d_out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }

    /// `relu(self.forward(x))`. Where a [`crate::fused::FusedKernel`] takes it, the bias add and
    /// the ReLU are one launch after the product (the same operations in the same order).
    pub fn forward_relu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.bias {
            Some(b) => linear_relu(x, self.weight.val(), b.val()),
            None => crate::fused::relu(self.forward(x)),
        }
    }

    /// `gelu(self.forward(x))` (Burn's exact GELU); the bias add and the GELU in one launch after
    /// the product where a [`crate::fused::FusedKernel`] takes them.
    pub fn forward_gelu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_biased(x).gelu()
    }

    /// `self.forward(x)` for `x [B, N, d_in]`, times `scale` when given, split into `heads`
    /// attention heads: `[B, H, N, d_out / H]`, or the keys' `[B, H, d_out / H, N]` when
    /// `transposed`. Where a [`crate::fused::FusedKernel`] takes it, the bias add, the scaling
    /// and the move of the heads are one launch after the product, and the result is row-major
    /// (so the attention products that follow need no copies).
    pub fn forward_heads(
        &self,
        x: Tensor<3>,
        heads: usize,
        scale: Option<f64>,
        transposed: bool,
    ) -> Tensor<4> {
        let [b, n, _] = x.dims();
        let d_out = self.weight.dims()[1];
        let e = d_out / heads;
        let y = self.forward_biased(x);
        if let (Some(bias), Some(k)) = (&y.bias, crate::fused::kernel()) {
            let product = y.product.clone().reshape([b, n, heads, e]);
            let s = scale.unwrap_or(1.0) as f32;
            if let Some(t) = k.heads(&product, bias, s, transposed) {
                return t;
            }
        }
        let y = y.resolve();
        let y = match scale {
            Some(s) => y.mul_scalar(s),
            None => y,
        };
        let y = y.reshape([b, n, heads, e]).swap_dims(1, 2);
        if transposed { y.swap_dims(2, 3) } else { y }
    }

    /// [`Linear::forward`], with the bias left out of the product where a
    /// [`crate::fused::FusedKernel`] takes unbiased products (so the consumer adds it in its
    /// own launch); otherwise the full output and no bias.
    pub fn forward_biased<const D: usize>(&self, x: Tensor<D>) -> Biased<D> {
        if let (Some(bias), Some(k)) = (&self.bias, crate::fused::kernel())
            && k.takes_unbiased(&x.device(), x.dtype())
        {
            return Biased {
                product: linear(x, self.weight.val(), None),
                bias: Some(bias.val()),
            };
        }
        Biased {
            product: self.forward(x),
            bias: None,
        }
    }
}

/// A linear layer's output whose bias may still be due: `product + bias` when `bias` is given
/// (left for a fused kernel to add in the launch that consumes it, see [`Linear::forward_biased`]).
#[derive(Debug, Clone)]
pub struct Biased<const D: usize> {
    /// `x W`, or the whole output when `bias` is `None`.
    pub product: Tensor<D>,
    /// The bias still to add along the last dimension.
    pub bias: Option<Tensor<1>>,
}

impl<const D: usize> Biased<D> {
    /// The product reshaped (row-major, so a bias that repeats along the flattened product
    /// still applies); the bias is unchanged.
    pub fn reshape<const D2: usize>(self, dims: [usize; D2]) -> Biased<D2> {
        Biased {
            product: self.product.reshape(dims),
            bias: self.bias,
        }
    }

    /// `fused(rows, bias)` on the product as rows `[R, C]` when a bias of the row width is due
    /// and the kernel takes it; otherwise `fallback` of the resolved output.
    fn epilogue(
        self,
        fused: impl FnOnce(&Tensor<2>, &Tensor<1>) -> Option<Tensor<2>>,
        fallback: impl FnOnce(Tensor<D>) -> Tensor<D>,
    ) -> Tensor<D> {
        let dims = self.product.dims();
        if let Some(bias) = &self.bias
            && bias.dims()[0] == dims[D - 1]
            && let Some(y) = fused(&crate::fused::as_rows(&self.product), bias)
        {
            return y.reshape(dims);
        }
        fallback(self.resolve())
    }

    /// `gelu(product + bias)` (Burn's exact GELU), in one launch where a
    /// [`crate::fused::FusedKernel`] takes it.
    pub fn gelu(self) -> Tensor<D> {
        let k = crate::fused::kernel();
        self.epilogue(
            |x, b| k.as_ref()?.bias_epilogue(x, b, Epilogue::Gelu),
            burn::tensor::activation::gelu,
        )
    }

    /// `residual + (product + bias) · gate[0]` (a residual plus a delta scaled by the first
    /// element of `gate`), in one launch where a [`crate::fused::FusedKernel`] takes it.
    pub fn gate(self, residual: Tensor<D>, gate: Tensor<1>) -> Tensor<D> {
        let k = crate::fused::kernel();
        let rows = crate::fused::as_rows(&residual);
        self.epilogue(
            |x, b| {
                k.as_ref()?.bias_epilogue(
                    x,
                    b,
                    Epilogue::Gate {
                        residual: &rows,
                        gate: &gate,
                    },
                )
            },
            |y| {
                let g = gate.clone().slice(s![0..1]).reshape([1; D]);
                residual + y * g
            },
        )
    }

    /// `product + bias` with zeros on the rows `r` (of the output as rows `[R, C]`) where
    /// `padding[r] ≠ 0` (`padding [R]`), in one launch where a [`crate::fused::FusedKernel`]
    /// takes it; otherwise `fallback` of the resolved output, which zeroes the same rows.
    pub fn zero_rows(
        self,
        padding: &Tensor<1>,
        fallback: impl FnOnce(Tensor<D>) -> Tensor<D>,
    ) -> Tensor<D> {
        let k = crate::fused::kernel();
        self.epilogue(
            |x, b| {
                k.as_ref()?
                    .bias_epilogue(x, b, Epilogue::ZeroRows { padding })
            },
            fallback,
        )
    }

    /// `(product + bias) · other`, in one launch where a [`crate::fused::FusedKernel`] takes
    /// both biases.
    pub fn product(self, other: Biased<D>) -> Tensor<D> {
        let dims = other.product.dims();
        match other.bias.clone() {
            Some(other_bias) if other_bias.dims()[0] == dims[D - 1] => {
                let k = crate::fused::kernel();
                let rows = crate::fused::as_rows(&other.product);
                self.epilogue(
                    |x, b| {
                        k.as_ref()?.bias_epilogue(
                            x,
                            b,
                            Epilogue::Product {
                                other: &rows,
                                other_bias: &other_bias,
                            },
                        )
                    },
                    |y| y * other.resolve(),
                )
            }
            _ => self.resolve() * other.resolve(),
        }
    }

    /// `product + bias` (Burn's add; the bias repeats along the flattened product, so it still
    /// applies after [`Biased::reshape`]), or the product when no bias is due.
    pub fn resolve(self) -> Tensor<D> {
        let Some(b) = self.bias else {
            return self.product;
        };
        let dims = self.product.dims();
        let len = b.dims()[0];
        if dims[D - 1] == len {
            return self.product + b.unsqueeze();
        }
        let n = dims.iter().product::<usize>();
        (self.product.reshape([n / len, len]) + b.unsqueeze()).reshape(dims)
    }
}

/// `x [..., d_in] @ weight [d_in, d_out] + bias` (Burn's layout), through the installed
/// [`DenseKernel`] when it accepts the operands.
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    if let Some(k) = kernel() {
        let dims = x.dims();
        let [d_in, d_out] = weight.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let lhs = x.clone().reshape([1, rows, d_in]);
        if let Some(out) = k.matmul(&lhs, &weight.clone().unsqueeze::<3>()) {
            let mut out_dims = dims;
            out_dims[D - 1] = d_out;
            let out = out.reshape(out_dims);
            return match bias {
                Some(b) => out + b.unsqueeze(),
                None => out,
            };
        }
    }
    burn::tensor::module::linear(x, weight, bias)
}

/// `relu(x @ weight + bias)` ([`linear`] then ReLU). Where a [`crate::fused::FusedKernel`] takes
/// it, the bias add and the ReLU are one launch after the product.
pub fn linear_relu<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<D> {
    if let Some(k) = crate::fused::kernel()
        && k.takes_unbiased(&x.device(), x.dtype())
    {
        let y = Biased {
            product: linear(x, weight, None),
            bias: Some(bias),
        };
        return y.epilogue(
            |x, b| k.bias_epilogue(x, b, Epilogue::Relu),
            crate::fused::relu,
        );
    }
    crate::fused::relu(linear(x, weight, Some(bias)))
}

/// `lhs [..., M, K] @ rhs [..., K, N]` with the batch dimensions broadcast, through the installed
/// [`DenseKernel`] when it accepts the operands.
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    if D >= 2
        && let Some(k) = kernel()
    {
        let (ld, rd) = (lhs.dims(), rhs.dims());
        let (m, kk, n) = (ld[D - 2], ld[D - 1], rd[D - 1]);
        let mut batch = [0usize; D];
        for i in 0..D - 2 {
            batch[i] = ld[i].max(rd[i]);
        }
        let mut out_dims = batch;
        out_dims[D - 2] = m;
        out_dims[D - 1] = n;
        let b: usize = batch[..D - 2].iter().product();
        let out = if rd[..D - 2].iter().all(|&s| s == 1) {
            // one right-hand matrix for every batch: fold the batches into the rows
            let l = expand_batch(lhs.clone(), &batch, m, kk).reshape([1, b * m, kk]);
            k.matmul(&l, &rhs.clone().reshape([1, kk, n]))
        } else {
            let l = expand_batch(lhs.clone(), &batch, m, kk).reshape([b, m, kk]);
            let r = expand_batch(rhs.clone(), &batch, kk, n).reshape([b, kk, n]);
            k.matmul(&l, &r)
        };
        if let Some(out) = out {
            return out.reshape(out_dims);
        }
    }
    lhs.matmul(rhs)
}

fn expand_batch<const D: usize>(t: Tensor<D>, batch: &[usize; D], r: usize, c: usize) -> Tensor<D> {
    let mut shape = *batch;
    shape[D - 2] = r;
    shape[D - 1] = c;
    if t.dims() == shape {
        t
    } else {
        t.expand(shape)
    }
}

/// A `burn::nn::conv::Conv2d` applied to `x`, through the installed [`DenseKernel`] when it
/// accepts the operands.
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let pads = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some([(top, bottom), (left, right)]),
        PaddingConfig2d::Valid => Some([(0, 0), (0, 0)]),
        // `Same` depends on the input size; the model's convolutions never use it
        PaddingConfig2d::Same => None,
    };
    if let (Some(k), Some(pads)) = (kernel(), pads) {
        let options = ConvOptions::new_with_padding(conv.stride, pads, conv.dilation, conv.groups);
        if let Some(out) = k.conv2d(&x, &conv.weight.val(), &options) {
            return match &conv.bias {
                Some(b) => {
                    let c = b.dims()[0];
                    out + b.val().reshape([1, c, 1, 1])
                }
                None => out,
            };
        }
    }
    conv.forward(x)
}
