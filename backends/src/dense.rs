//! Full-float32 dense products on the cubecl backends (`--f32-precision highest`).
//!
//! Burn's default matmul and convolution on CUDA run float32 operands on TF32 tensor cores
//! (10-bit mantissas, about 1e-3 relative error per product), which is what makes the golden
//! checks fail on cuda. These ops compute in float32 throughout: matmuls with cubek's unit
//! routine (no tensor cores, the one Burn itself falls back to on devices without them),
//! convolutions and their gradients with Burn's direct kernels. They are slower; they exist for
//! parity runs and for reporting the float32 column of a benchmark.
//!
//! [`FullF32`] plugs them into the model through [`rlip_model::dense::set_kernel`]; it takes
//! float32 tensors on wgpu and cuda devices and declines everything else (flex and tch
//! compute in float32 anyway, half-precision tensors never used TF32).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use rlip_model::dense::DenseKernel;

use crate::cube_util::on_cube;

/// Backend operations of the full-float32 products.
#[backend_extension(Cube, Fusion: cfg(feature = "fusion"), Autodiff)]
pub trait FullF32Ops: Backend {
    /// `lhs [B, M, K] @ rhs [B, K, N]` → `[B, M, N]` (equal batch sizes).
    #[fusion(dtype = lhs, shape = matmul_shape(lhs, rhs))]
    fn full_f32_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x [N, C_in, H, W]` ⋆ `weight [C_out, C_in, kH, kW]`, no bias, groups 1.
    #[fusion(dtype = x, shape = conv_shape(x, weight, options))]
    fn full_f32_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The transposed convolution of `x [N, C_in, H, W]` with `weight [C_in, C_out, kH, kW]`
    /// (the input gradient of [`FullF32Ops::full_f32_conv2d`]), no bias.
    #[fusion(dtype = x, shape = conv_transpose_shape(x, weight, options))]
    fn full_f32_conv_transpose2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvTransposeOptions<2>,
    ) -> FloatTensor<Self>;
}

#[cfg(feature = "fusion")]
fn matmul_shape(lhs: &burn::tensor::Shape, rhs: &burn::tensor::Shape) -> burn::tensor::Shape {
    burn::tensor::Shape::from([lhs[0], lhs[1], rhs[2]])
}

#[cfg(feature = "fusion")]
/// Output size of a convolution along one axis.
fn conv_out(size: usize, k: usize, stride: usize, pad: (usize, usize), dilation: usize) -> usize {
    (size + pad.0 + pad.1 - dilation * (k - 1) - 1) / stride + 1
}

#[cfg(feature = "fusion")]
fn conv_shape(
    x: &burn::tensor::Shape,
    weight: &burn::tensor::Shape,
    o: &ConvOptions<2>,
) -> burn::tensor::Shape {
    let h = conv_out(x[2], weight[2], o.stride[0], o.padding[0], o.dilation[0]);
    let w = conv_out(x[3], weight[3], o.stride[1], o.padding[1], o.dilation[1]);
    burn::tensor::Shape::from([x[0], weight[0], h, w])
}

#[cfg(feature = "fusion")]
fn conv_transpose_shape(
    x: &burn::tensor::Shape,
    weight: &burn::tensor::Shape,
    o: &ConvTransposeOptions<2>,
) -> burn::tensor::Shape {
    let size = |i: usize| {
        (x[2 + i] - 1) * o.stride[i] + o.dilation[i] * (weight[2 + i] - 1) + o.padding_out[i] + 1
            - 2 * o.padding[i]
    };
    burn::tensor::Shape::from([x[0], weight[1] * o.groups, size(0), size(1)])
}

mod cube_impl {
    use burn_cubecl::CubeBackend;
    use burn_cubecl::kernel::conv::{
        ConvStrategy, ConvTranspose2dStrategy, conv_forward, conv_transpose2d,
    };
    use burn_cubecl::kernel::matmul::init_matmul_output;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::ir::{ElemType, FloatKind};
    use cubek_matmul::definition::{MatmulElems, MatmulGlobalElems};
    use cubek_matmul::multi_level;
    use cubek_matmul::strategy::Strategy;
    use cubek_std::InputBinding;

    use super::*;

    impl FullF32Ops for CubeBackend {
        fn full_f32_matmul(lhs: CubeTensor, rhs: CubeTensor) -> CubeTensor {
            let out = init_matmul_output(&lhs, &rhs, DType::F32);
            let f32 = ElemType::Float(FloatKind::F32);
            let mut elems = MatmulElems::from_globals(&MatmulGlobalElems {
                lhs: f32,
                rhs: f32,
                out: f32,
            });
            // the unit routine: every product and sum in float32 registers, no tensor cores
            let strategy =
                Strategy::MultiLevel(multi_level::Strategy::SimpleUnit(Default::default()));
            let client = out.client.clone();
            cubek_matmul::launch::launch_ref(
                &strategy,
                &client,
                InputBinding::new(lhs.binding(), f32),
                InputBinding::new(rhs.binding(), f32),
                out.clone().binding(),
                &mut elems,
            )
            .unwrap_or_else(|e| panic!("full-f32 matmul: the unit routine refused: {e:?}"));
            out
        }

        fn full_f32_conv2d(
            x: CubeTensor,
            weight: CubeTensor,
            options: ConvOptions<2>,
        ) -> CubeTensor {
            conv_forward(x, weight, None, options, ConvStrategy::Direct)
                .unwrap_or_else(|e| panic!("full-f32 conv2d: the direct kernel refused: {e:?}"))
        }

        fn full_f32_conv_transpose2d(
            x: CubeTensor,
            weight: CubeTensor,
            options: ConvTransposeOptions<2>,
        ) -> CubeTensor {
            conv_transpose2d(x, weight, None, options, ConvTranspose2dStrategy::Direct)
                .unwrap_or_else(|e| {
                    panic!("full-f32 transposed conv2d: the direct kernel refused: {e:?}")
                })
        }
    }
}

/// Autodiff node of the matmul: both gradients are full-float32 matmuls too.
#[derive(Debug)]
struct MatmulBackward;

impl<B: FullF32Ops> Backward<B, 2> for MatmulBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_lhs, node_rhs] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (lhs, rhs) = ops.state;
        if let Some(node) = node_lhs {
            let g = B::full_f32_matmul(grad.clone(), B::float_swap_dims(rhs, 1, 2));
            grads.register::<B>(node.id, g);
        }
        if let Some(node) = node_rhs {
            let g = B::full_f32_matmul(B::float_swap_dims(lhs, 1, 2), grad);
            grads.register::<B>(node.id, g);
        }
    }
}

/// Autodiff node of the convolution (groups 1, symmetric padding): the input gradient is the
/// transposed convolution, the weight gradient a convolution of the input by the output gradient
/// with stride and dilation exchanged, both with the direct kernels.
#[derive(Debug)]
struct ConvBackward;

impl<B: FullF32Ops> Backward<B, 2> for ConvBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, ConvOptions<2>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        use burn::backend::TensorMetadata;
        let [node_x, node_w] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, o) = ops.state;
        let (xs, ws, gs) = (x.shape(), weight.shape(), grad.shape());
        if let Some(node) = node_x {
            // what the strided convolution dropped at the end of each axis comes back as
            // output padding
            let padding_out = [0, 1].map(|i| {
                xs[2 + i] + 2 * o.padding[i].0
                    - o.dilation[i] * (ws[2 + i] - 1)
                    - 1
                    - (gs[2 + i] - 1) * o.stride[i]
            });
            let t = ConvTransposeOptions::new(
                o.stride,
                o.padding.map(|p| p.0),
                padding_out,
                o.dilation,
                1,
            );
            let g = B::full_f32_conv_transpose2d(grad.clone(), weight, t);
            grads.register::<B>(node.id, g);
        }
        if let Some(node) = node_w {
            // dW[co, ci] = Σ_n x[n, ci] ⋆ grad[n, co]: channels become the batch
            let xt = B::float_swap_dims(x, 0, 1);
            let gt = B::float_swap_dims(grad, 0, 1);
            let wo = ConvOptions::new_with_padding(o.dilation, o.padding, o.stride, 1);
            let g = B::float_swap_dims(B::full_f32_conv2d(xt, gt, wo), 0, 1);
            // a stride that does not divide the input leaves extra taps past the kernel
            let gd = g.shape();
            let g = if gd[2] != ws[2] || gd[3] != ws[3] {
                B::float_slice(
                    g,
                    &[
                        burn::tensor::Slice::from(0..ws[0]),
                        (0..ws[1]).into(),
                        (0..ws[2]).into(),
                        (0..ws[3]).into(),
                    ],
                )
            } else {
                g
            };
            grads.register::<B>(node.id, g);
        }
    }
}

impl<B: FullF32Ops, C: CheckpointStrategy> FullF32Ops for Autodiff<B, C> {
    fn full_f32_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        match MatmulBackward
            .prepare::<C>([lhs.node(), rhs.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (l, r) = (lhs.into_primitive(), rhs.into_primitive());
                let out = B::full_f32_matmul(l.clone(), r.clone());
                prep.finish((l, r), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::full_f32_matmul(
                lhs.into_primitive(),
                rhs.into_primitive(),
            )),
        }
    }

    fn full_f32_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match ConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.into_primitive(), weight.into_primitive());
                let out = B::full_f32_conv2d(x.clone(), w.clone(), options.clone());
                prep.finish((x, w, options), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::full_f32_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                options,
            )),
        }
    }

    fn full_f32_conv_transpose2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvTransposeOptions<2>,
    ) -> FloatTensor<Self> {
        // only ever called inside a backward pass (second-order gradients are not needed)
        let out =
            B::full_f32_conv_transpose2d(x.into_primitive(), weight.into_primitive(), options);
        <Self as burn::backend::AutodiffBackend>::from_inner(out)
    }
}

/// The full-float32 products as a [`DenseKernel`] (see the module docs).
#[derive(Debug, Default)]
pub struct FullF32;

impl DenseKernel for FullF32 {
    fn name(&self) -> &str {
        "full-f32"
    }

    fn matmul(&self, lhs: &Tensor<3>, rhs: &Tensor<3>) -> Option<Tensor<3>> {
        if !on_cube(&lhs.device()) || lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 {
            return None;
        }
        if lhs.dims()[0] != rhs.dims()[0] {
            return None;
        }
        Some(Tensor::from_dispatch(
            <Dispatch as FullF32Ops>::full_f32_matmul(
                lhs.clone().into_dispatch(),
                rhs.clone().into_dispatch(),
            ),
        ))
    }

    fn conv2d(
        &self,
        x: &Tensor<4>,
        weight: &Tensor<4>,
        options: &ConvOptions<2>,
    ) -> Option<Tensor<4>> {
        let ok = on_cube(&x.device())
            && x.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && options.groups == 1
            && !options.is_asymmetric();
        ok.then(|| {
            Tensor::from_dispatch(<Dispatch as FullF32Ops>::full_f32_conv2d(
                x.clone().into_dispatch(),
                weight.clone().into_dispatch(),
                options.clone(),
            ))
        })
    }
}
