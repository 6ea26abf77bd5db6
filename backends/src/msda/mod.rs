//! Fused multi-scale deformable attention sampling, plugged into the model through
//! [`rlip_model::msda::register_kernel`].
//!
//! The operation is a Burn backend extension ([`MsdaOps`]): one forward and one backward op per
//! backend, and a hand-written autodiff node that calls the backward op, so training uses the
//! fused path too. Implemented for the `flex` CPU backend ([`cpu`]: loops over `f32` slices,
//! parallel over queries and, for the value gradient, over (image, head)) and for the cubecl
//! runtimes of the `wgpu` and `cuda` backends ([`cube`]: CubeCL kernels, atomics for the value
//! gradient). Tensors on any other device (tch), or not `f32`, fall back to the portable
//! `grid_sample` composite.

#[cfg(feature = "flex")]
pub mod cpu;
#[cfg(feature = "cube")]
pub mod cube;

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, backend_extension};
use burn::prelude::*;
use rlip_model::msda::{MsdaKernel, SpatialShapes};

/// Backend operations of the fused sampling core (see `rlip_model::msda::ms_deform_attn_core`
/// for the tensor contract). `shapes` holds the per-level `(H, W)`.
#[cfg_attr(not(any(feature = "flex", feature = "cube")), allow(unused_variables))]
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "fusion"),
    Autodiff
)]
pub trait MsdaOps: Backend {
    /// `value [N, S, M, D]`, `loc [N, Lq, M, L, P, 2]`, `attn [N, Lq, M, L, P]` → `[N, Lq, M·D]`.
    #[fusion(dtype = value, shape = forward_shape(value, loc))]
    fn msda_forward(
        value: FloatTensor<Self>,
        loc: FloatTensor<Self>,
        attn: FloatTensor<Self>,
        shapes: Vec<[usize; 2]>,
    ) -> FloatTensor<Self>;

    /// Gradients `(∂value, ∂loc, ∂attn)` of [`MsdaOps::msda_forward`] for the output gradient
    /// `grad`.
    #[fusion(meta = |value, loc, attn, _grad, _shapes| (value.clone(), loc.clone(), attn.clone()))]
    fn msda_backward(
        value: FloatTensor<Self>,
        loc: FloatTensor<Self>,
        attn: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        shapes: Vec<[usize; 2]>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Output shape of the forward op, `[N, Lq, M·D]` (Fusion records it before the kernel runs).
#[cfg(feature = "fusion")]
fn forward_shape(value: &burn::tensor::Shape, loc: &burn::tensor::Shape) -> burn::tensor::Shape {
    burn::tensor::Shape::from([value[0], loc[1], value[2] * value[3]])
}

#[cfg(feature = "flex")]
mod flex_impl {
    use burn::backend::Flex;
    use burn::tensor::TensorData;
    use burn_flex::FlexTensor;

    use super::cpu::{self, Dims};
    use super::*;

    /// The values of a tensor made dense by `to_contiguous` (which copies only when needed).
    fn f32s(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>()
            .expect("the MSDA kernel only accepts f32 tensors")
    }

    fn dims(value: &FlexTensor, loc: &FlexTensor, shapes: &[[usize; 2]]) -> Dims {
        let v = value.layout().shape().to_vec();
        let q = loc.layout().shape().to_vec();
        Dims {
            n: v[0],
            s: v[1],
            m: v[2],
            d: v[3],
            lq: q[1],
            p: q[4],
            shapes: shapes.to_vec(),
        }
    }

    fn tensor(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(data, shape))
    }

    impl MsdaOps for Flex {
        fn msda_forward(
            value: FlexTensor,
            loc: FlexTensor,
            attn: FlexTensor,
            shapes: Vec<[usize; 2]>,
        ) -> FlexTensor {
            let d = dims(&value, &loc, &shapes);
            let [value, loc, attn] = [value, loc, attn].map(|t| t.to_contiguous());
            let out = cpu::forward(&d, f32s(&value), f32s(&loc), f32s(&attn));
            tensor(out, vec![d.n, d.lq, d.m * d.d])
        }

        fn msda_backward(
            value: FlexTensor,
            loc: FlexTensor,
            attn: FlexTensor,
            grad: FlexTensor,
            shapes: Vec<[usize; 2]>,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let d = dims(&value, &loc, &shapes);
            let shapes_in = (
                value.layout().shape().to_vec(),
                loc.layout().shape().to_vec(),
                attn.layout().shape().to_vec(),
            );
            let [value, loc, attn, grad] = [value, loc, attn, grad].map(|t| t.to_contiguous());
            let (gv, gl, ga) =
                cpu::backward(&d, f32s(&value), f32s(&loc), f32s(&attn), f32s(&grad));
            (
                tensor(gv, shapes_in.0),
                tensor(gl, shapes_in.1),
                tensor(ga, shapes_in.2),
            )
        }
    }
}

#[cfg(feature = "cube")]
impl MsdaOps for burn_cubecl::CubeBackend {
    fn msda_forward(
        value: FloatTensor<Self>,
        loc: FloatTensor<Self>,
        attn: FloatTensor<Self>,
        shapes: Vec<[usize; 2]>,
    ) -> FloatTensor<Self> {
        cube::forward(value, loc, attn, &shapes)
    }

    fn msda_backward(
        value: FloatTensor<Self>,
        loc: FloatTensor<Self>,
        attn: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        shapes: Vec<[usize; 2]>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        cube::backward(value, loc, attn, grad, &shapes)
    }
}

/// The autodiff node: the forward op now, the backward op when gradients are requested.
#[derive(Debug)]
struct MsdaBackward;

impl<B: MsdaOps> Backward<B, 3> for MsdaBackward {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        Vec<[usize; 2]>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_value, node_loc, node_attn] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (value, loc, attn, shapes) = ops.state;
        let (gv, gl, ga) = B::msda_backward(value, loc, attn, grad, shapes);
        for (node, g) in [(node_value, gv), (node_loc, gl), (node_attn, ga)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: MsdaOps, C: CheckpointStrategy> MsdaOps for Autodiff<B, C> {
    fn msda_forward(
        value: FloatTensor<Self>,
        loc: FloatTensor<Self>,
        attn: FloatTensor<Self>,
        shapes: Vec<[usize; 2]>,
    ) -> FloatTensor<Self> {
        match MsdaBackward
            .prepare::<C>([value.node(), loc.node(), attn.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (v, l, a) = (
                    value.into_primitive(),
                    loc.into_primitive(),
                    attn.into_primitive(),
                );
                let out = B::msda_forward(v.clone(), l.clone(), a.clone(), shapes.clone());
                prep.finish((v, l, a, shapes), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::msda_forward(
                value.into_primitive(),
                loc.into_primitive(),
                attn.into_primitive(),
                shapes,
            )),
        }
    }

    fn msda_backward(
        value: FloatTensor<Self>,
        loc: FloatTensor<Self>,
        attn: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        shapes: Vec<[usize; 2]>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Second-order gradients are not needed by RLIPv2; the backward op runs untracked.
        let (gv, gl, ga) = B::msda_backward(
            value.into_primitive(),
            loc.into_primitive(),
            attn.into_primitive(),
            grad.into_primitive(),
            shapes,
        );
        let lift = <Self as AutodiffBackend>::from_inner;
        (lift(gv), lift(gl), lift(ga))
    }
}

/// Runs the fused op through the backend extension.
fn fused(
    value: &Tensor<4>,
    shapes: &SpatialShapes,
    loc: &Tensor<6>,
    attn: &Tensor<5>,
) -> Tensor<3> {
    let out = <Dispatch as MsdaOps>::msda_forward(
        value.clone().into_dispatch(),
        loc.clone().into_dispatch(),
        attn.clone().into_dispatch(),
        shapes.to_vec(),
    );
    Tensor::from_dispatch(out)
}

/// The fused sampling core as an [`MsdaKernel`]: accepts tensors on the flex device and on
/// cubecl devices (wgpu, cuda), with or without autodiff, and declines everything else.
/// Half-precision inputs are sampled in float32 and the result cast back.
#[derive(Debug, Default)]
pub struct FusedMsda;

impl MsdaKernel for FusedMsda {
    fn name(&self) -> &str {
        "fused"
    }

    fn forward(
        &self,
        value: &Tensor<4>,
        shapes: &SpatialShapes,
        locations: &Tensor<6>,
        weights: &Tensor<5>,
    ) -> Option<Tensor<3>> {
        use burn::tensor::{DType, FloatDType};
        if !supported(&value.device()) {
            return None;
        }
        let dtypes = [value.dtype(), locations.dtype(), weights.dtype()];
        if dtypes.iter().all(|d| *d == DType::F32) {
            return Some(fused(value, shapes, locations, weights));
        }
        // Half precision: the sampling runs as a float32 island, as the official op does under
        // autocast (its inputs are cast to float32), and the result is cast back.
        if dtypes.iter().all(|d| matches!(d, DType::BF16 | DType::F16)) {
            let f32 = FloatDType::F32;
            let out = fused(
                &value.clone().cast(f32),
                shapes,
                &locations.clone().cast(f32),
                &weights.clone().cast(f32),
            );
            return Some(out.cast(FloatDType::from(value.dtype())));
        }
        None
    }
}

/// Whether the extension has a kernel for `device`'s backend.
pub fn supported(device: &Device) -> bool {
    let inner = device.clone().inner();
    #[cfg(feature = "flex")]
    if inner == Device::flex() {
        return true;
    }
    #[cfg(feature = "cube")]
    if let burn::backend::DispatchDevice::Cube(cube) = inner.as_dispatch() {
        // On CUDA (H200, driver 580) the first form of the forward kernel read out of bounds at
        // the 4-level encoder shape of an 800x1333 input (compute-sanitizer: the first corner's
        // `value` read, ~300 MB past any allocation; error 700/717), while 4 small levels, 2 or
        // 1 large levels ran (bench/history.md, 2026-11-28). The kernels now take the level
        // table and sizes as launch scalars instead of a side tensor and shape metadata (with
        // the sampling points, which are bounds-checked, the only inputs of that read's index
        // besides the value tensor's address); until a CUDA run confirms them
        // (`bench msda --check`, run first by the GPU suite script), CUDA keeps the portable
        // composite unless `RLIP_MSDA=fused` asks for the kernels. wgpu runs them (Vulkan on an
        // H200, and lavapipe in the tests).
        #[cfg(feature = "cuda")]
        if matches!(cube, burn_cubecl::CubeDevice::Cuda(_)) {
            return std::env::var("RLIP_MSDA").is_ok_and(|v| v == "fused");
        }
        let _ = cube;
        return true;
    }
    let _ = inner;
    false
}

/// Registers the fused kernels this binary was built with (idempotent; [`crate::device`] calls
/// it). Setting `RLIP_MSDA=portable` keeps the portable composite everywhere (for comparisons).
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("RLIP_MSDA").is_ok_and(|v| v == "portable") {
            tracing::info!("RLIP_MSDA=portable: fused deformable attention disabled");
            return;
        }
        rlip_model::msda::register_kernel(Arc::new(FusedMsda));
    });
}
