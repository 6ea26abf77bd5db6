//! The fused layer norm, ReLU and frozen-batch-norm kernels.
//!
//! 1. The model's entry points (`rlip_model::fused`) hand the installed kernel the operands they
//!    document, fall back to Burn's ops when it declines, and the ResNet blocks use the affine
//!    kernel with the residual and ReLU folded in (flex, with a kernel that records and computes
//!    with Burn's ops).
//! 2. The cubecl kernels of `rlip_backends::fused` and all their gradients against flex's Burn
//!    ops on every compiled-in GPU backend (skipped with only flex compiled in).

use std::sync::{Arc, Mutex};

use burn::prelude::*;
use rlip_model::fused::{Epilogue, FusedKernel, channel_affine, layer_norm, relu, set_kernel};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use rlip_tests::{Tol, parity_test};

#[cfg(any(feature = "wgpu", feature = "cuda"))]
use crate::values;
use crate::{max_diff, tensor};

/// Records the operands it is given and computes with Burn's ops; declines ReLU (to check the
/// fallback).
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
}

impl FusedKernel for Recorder {
    fn name(&self) -> &str {
        "recorder"
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
        let input = match (bias, residual) {
            (Some(b), Some(r)) => {
                self.push(format!("bias_add_layer_norm {:?}", x.dims()));
                (x.clone() + b.clone().unsqueeze()) + r.clone()
            }
            (None, Some(r)) => {
                self.push(format!("add_layer_norm {:?}", x.dims()));
                x.clone() + r.clone()
            }
            (None, None) => {
                self.push(format!("layer_norm {:?} eps {epsilon}", x.dims()));
                x.clone()
            }
            (Some(_), None) => panic!("a bias without a residual is not asked"),
        };
        Some(burn::tensor::module::layer_norm(
            input,
            gamma.clone(),
            Some(beta.clone()),
            epsilon,
        ))
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
        self.push(format!("layer_norm_plus {:?}", x.dims()));
        let n = burn::tensor::module::layer_norm(
            (x.clone() + bias.clone().unsqueeze()) + residual.clone(),
            gamma.clone(),
            Some(beta.clone()),
            epsilon,
        );
        Some(Tensor::cat(vec![n.clone(), n + plus.clone()], 0))
    }
    fn channels_last_weights(&self, _device: &Device) -> bool {
        false
    }
    fn takes_unbiased(&self, _device: &Device, _dtype: burn::tensor::DType) -> bool {
        true
    }
    fn bias_epilogue(
        &self,
        x: &Tensor<2>,
        bias: &Tensor<1>,
        epilogue: Epilogue<'_>,
    ) -> Option<Tensor<2>> {
        let v = x.clone() + bias.clone().unsqueeze();
        let (name, y) = match epilogue {
            Epilogue::Relu => ("relu", burn::tensor::activation::relu(v)),
            Epilogue::Gelu => ("gelu", burn::tensor::activation::gelu(v)),
            Epilogue::Gate { residual, gate } => (
                "gate",
                residual.clone() + v * gate.clone().slice(s![0..1]).unsqueeze(),
            ),
            Epilogue::ZeroRows { padding } => {
                let rows = padding.clone().not_equal_elem(0.0).unsqueeze_dim::<2>(1);
                ("zero_rows", v.mask_fill(rows.expand(x.dims()), 0.0))
            }
            Epilogue::Product { other, other_bias } => (
                "product",
                v * (other.clone() + other_bias.clone().unsqueeze()),
            ),
        };
        self.push(format!("bias_epilogue {name} {:?}", x.dims()));
        Some(y)
    }
    fn heads(
        &self,
        x: &Tensor<4>,
        bias: &Tensor<1>,
        scale: f32,
        transposed: bool,
    ) -> Option<Tensor<4>> {
        self.push(format!(
            "heads {:?} scale {scale} transposed {transposed}",
            x.dims()
        ));
        let [_, _, h, e] = x.dims();
        let y = (x.clone() + bias.clone().reshape([1, 1, h, e]))
            .mul_scalar(scale)
            .swap_dims(1, 2);
        Some(if transposed { y.swap_dims(2, 3) } else { y })
    }
    fn group_norm(
        &self,
        x: &Tensor<4>,
        _gamma: &Tensor<1>,
        _beta: &Tensor<1>,
        groups: usize,
        _epsilon: f64,
    ) -> Option<Tensor<4>> {
        self.push(format!(
            "group_norm {:?} groups {groups} (declined)",
            x.dims()
        ));
        None
    }
    fn sampling_locations(
        &self,
        offsets: &Tensor<6>,
        bias: &Tensor<1>,
        reference: &Tensor<4>,
        _normalizer: &Tensor<1>,
    ) -> Option<Tensor<6>> {
        self.push(format!(
            "sampling_locations {:?} bias {} reference {:?} (declined)",
            offsets.dims(),
            bias.dims()[0],
            reference.dims()
        ));
        None
    }
    fn softmax(&self, x: &Tensor<2>, bias: Option<&Tensor<1>>, groups: usize) -> Option<Tensor<2>> {
        let x = match bias {
            Some(b) => {
                let len = b.dims()[0] / groups;
                self.push(format!("softmax {:?} bias {len} groups {groups}", x.dims()));
                let [r, c] = x.dims();
                let blocks = b.clone().reshape([groups, 1, len]);
                (x.clone().reshape([groups, r * c / (groups * len), len]) + blocks).reshape([r, c])
            }
            None => {
                self.push(format!("softmax {:?}", x.dims()));
                x.clone()
            }
        };
        Some(burn::tensor::activation::softmax(x, 1))
    }
    fn relu(&self, x: &Tensor<1>) -> Option<Tensor<1>> {
        self.push(format!("relu {:?} (declined)", x.dims()));
        None
    }
    fn adamw(
        &self,
        param: &Tensor<4>,
        grad: &Tensor<4>,
        exp_avg: &Tensor<1>,
        _exp_avg_sq: &Tensor<1>,
        scalars: &rlip_model::fused::AdamWScalars,
        keep_layout: bool,
    ) -> Option<(Tensor<4>, Tensor<1>, Tensor<1>)> {
        self.push(format!(
            "adamw {:?} grad {:?} moments {:?} decay {} keep_layout {keep_layout} (declined)",
            param.dims(),
            grad.dims(),
            exp_avg.dims(),
            scalars.decay
        ));
        None
    }
    fn sum_squares(&self, xs: &[Tensor<4>]) -> Option<Tensor<1>> {
        let dims: Vec<[usize; 4]> = xs.iter().map(|x| x.dims()).collect();
        self.push(format!("sum_squares {dims:?}"));
        xs.iter()
            .map(|x| x.clone().powi_scalar(2).sum())
            .reduce(|a, b| a + b)
    }
    fn l2_halve_rows(&self, x: &Tensor<2>) -> Option<Tensor<2>> {
        self.push(format!("l2_halve_rows {:?} (declined)", x.dims()));
        None
    }
    fn channel_affine(
        &self,
        x: &Tensor<4>,
        scale: &Tensor<1>,
        shift: &Tensor<1>,
        residual: Option<&Tensor<4>>,
        relu: bool,
    ) -> Option<Tensor<4>> {
        self.push(format!(
            "affine {:?} residual {} relu {relu}",
            x.dims(),
            residual.is_some()
        ));
        let c = scale.dims()[0];
        let y =
            x.clone() * scale.clone().reshape([1, c, 1, 1]) + shift.clone().reshape([1, c, 1, 1]);
        let y = match residual {
            Some(r) => y + r.clone(),
            None => y,
        };
        Some(if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        })
    }
    fn refine_boxes(
        &self,
        delta: &Tensor<1>,
        bias: Option<&Tensor<1>>,
        reference: &Tensor<1>,
    ) -> Option<Tensor<1>> {
        let delta = match bias {
            Some(b) => {
                let (n, len) = (delta.dims()[0], b.dims()[0]);
                self.push(format!("refine [{n}] bias {len}"));
                (delta.clone().reshape([n / len, len]) + b.clone().unsqueeze()).reshape([n])
            }
            None => {
                self.push(format!("refine {:?}", delta.dims()));
                delta.clone()
            }
        };
        Some(burn::tensor::activation::sigmoid(
            delta + rlip_model::parse_decoder::inverse_sigmoid(reference.clone()),
        ))
    }
    fn sine_embed_boxes(
        &self,
        pos: &Tensor<3>,
        dim_t: &Tensor<1>,
        scale: f32,
    ) -> Option<Tensor<3>> {
        self.push(format!(
            "sine {:?} n {} scale {scale:.4} (declined)",
            pos.dims(),
            dim_t.dims()[0]
        ));
        None
    }
}

#[test]
fn fused_entry_points_hand_the_kernel_what_they_document() {
    let _lock = crate::global_kernel_lock();
    // a device created by another test would register the real kernel: register it first
    rlip_backends::register_kernels();
    let dev = Device::flex();
    let x3 = tensor([2, 5, 6], 1, &dev);
    let gamma = tensor([6], 2, &dev);
    let beta = tensor([6], 3, &dev);
    let img = tensor([2, 3, 4, 5], 4, &dev);
    let res = tensor([2, 3, 4, 5], 5, &dev);
    let scale = tensor([3], 6, &dev);
    let shift = tensor([3], 7, &dev);
    let c = |t: &Tensor<1>| t.clone().reshape([1, 3, 1, 1]);
    let affine = img.clone() * c(&scale) + c(&shift);

    let want = (
        burn::tensor::module::layer_norm(x3.clone(), gamma.clone(), Some(beta.clone()), 1e-5),
        burn::tensor::activation::relu(x3.clone()),
        burn::tensor::activation::relu(affine.clone() + res.clone()),
        affine.clone(),
        affine.clone() + res.clone(),
    );
    let rec = Arc::new(Recorder::default());
    let previous = set_kernel(Some(rec.clone()));
    let got = (
        layer_norm(x3.clone(), gamma.clone(), Some(beta), 1e-5),
        relu(x3.clone()),
        channel_affine(
            img.clone(),
            scale.clone(),
            shift.clone(),
            Some(res.clone()),
            true,
        ),
        channel_affine(img.clone(), scale.clone(), shift.clone(), None, false),
        channel_affine(img, scale, shift, Some(res), false),
    );
    // without a shift the layer norm is Burn's (the kernel is not asked)
    let no_beta = layer_norm(x3.clone(), gamma.clone(), None, 1e-5);
    let boxes = tensor([2, 3, 4], 8, &dev).abs();
    let delta = tensor([2, 3, 4], 9, &dev);
    let refined = rlip_model::fused::refine_boxes(delta.clone(), boxes.clone());
    // a broadcast reference is not asked for
    let first = boxes.clone().slice(s![0..1]);
    let broadcast = rlip_model::fused::refine_boxes(delta.clone(), first.clone());
    let sine = rlip_model::parse_decoder::sine_embed_boxes(boxes.clone(), 8);
    let lin = rlip_model::dense::Linear {
        weight: burn::module::Param::from_tensor(tensor([6, 7], 10, &dev)),
        bias: Some(burn::module::Param::from_tensor(tensor([7], 11, &dev))),
    };
    let lin_relu = lin.forward_relu(x3.clone());
    let q_heads = lin.forward_heads(x3.clone(), 7, Some(0.5), false);
    let k_heads = lin.forward_heads(x3.clone(), 1, None, true);
    let ln = rlip_model::norm::LayerNorm::new(gamma.clone(), Some(tensor([6], 12, &dev)), 1e-5);
    let res3 = tensor([2, 5, 6], 13, &dev);
    let ln_add = ln.forward_add(x3.clone(), res3.clone());
    let lin6 = rlip_model::dense::Linear {
        weight: burn::module::Param::from_tensor(tensor([6, 6], 14, &dev)),
        bias: Some(burn::module::Param::from_tensor(tensor([6], 15, &dev))),
    };
    let ln_biased = ln.forward_add_biased(res3.clone(), lin6.forward_biased(x3.clone()));
    let soft_biased =
        rlip_model::norm::softmax_biased(lin6.forward_biased(x3.clone()).reshape([2, 5, 2, 3]));
    let lin4 = rlip_model::dense::Linear {
        weight: burn::module::Param::from_tensor(tensor([6, 4], 16, &dev)),
        bias: Some(burn::module::Param::from_tensor(tensor([4], 17, &dev))),
    };
    let boxes5 = tensor([2, 5, 4], 18, &dev).abs();
    let refined_biased =
        rlip_model::norm::refine_boxes_biased(lin4.forward_biased(x3.clone()), boxes5.clone());
    let gn = burn::nn::GroupNormConfig::new(2, 4).init(&dev);
    let gn_in = tensor([1, 4, 3, 5], 20, &dev);
    let gn_declined = rlip_model::encoder::group_norm_blocked(&gn, gn_in.clone());
    // [2, 5, 1, 1, 2, 2] offsets from a [6 → 4] layer around one level of points
    let pts = tensor([2, 5, 1, 2], 19, &dev).abs();
    let loc_declined = rlip_model::msda::sampling_locations_biased(
        pts.clone(),
        lin4.forward_biased(x3.clone()).reshape([2, 5, 1, 1, 2, 2]),
        &[[3, 4]],
        2,
    );
    let soft_last = rlip_model::fused::softmax(x3.clone(), 2);
    // another dimension is not asked for
    let soft_mid = rlip_model::fused::softmax(x3.clone(), 1);
    // a linear layer's bias with what follows it
    let lin6b = rlip_model::dense::Linear {
        weight: burn::module::Param::from_tensor(tensor([6, 6], 21, &dev)),
        bias: Some(burn::module::Param::from_tensor(tensor([6], 22, &dev))),
    };
    let gate = tensor([6], 23, &dev);
    let flags: Vec<f32> = (0..10).map(|i| f32::from(u8::from(i % 3 == 1))).collect();
    let padding = Tensor::<1>::from_data(TensorData::new(flags, [10]), &dev);
    let pad_mask = padding
        .clone()
        .equal_elem(1.0)
        .reshape([2, 5, 1])
        .expand([2, 5, 6]);
    let epilogues = || {
        (
            lin6.forward_gelu(x3.clone()),
            lin6.forward_biased(x3.clone())
                .gate(res3.clone(), gate.clone()),
            lin6.forward_biased(x3.clone())
                .zero_rows(&padding, |v| v.mask_fill(pad_mask.clone(), 0.0)),
            lin6.forward_biased(x3.clone())
                .product(lin6b.forward_biased(x3.clone())),
        )
    };
    let fused_epilogues = epilogues();
    let scores = tensor([2, 3, 5, 6], 24, &dev);
    let mask = tensor([2, 1, 1, 6], 25, &dev);
    let masked = rlip_model::norm::softmax_masked(scores.clone(), mask.clone());
    // declined: Burn's ops
    let halved = rlip_model::fused::l2_halve_rows(x3.clone());
    set_kernel(previous);
    // without a kernel (flex declines): Burn's ops, the same values
    let unfused_epilogues = epilogues();
    let want_epilogues = (
        burn::tensor::activation::gelu(lin6.forward(x3.clone())),
        res3.clone() + lin6.forward(x3.clone()) * gate.clone().slice(s![0..1]).reshape([1, 1, 1]),
        lin6.forward(x3.clone()).mask_fill(pad_mask, 0.0),
        lin6.forward(x3.clone()) * lin6b.forward(x3.clone()),
    );
    let norm = x3.clone().powi_scalar(2).sum_dim(2).sqrt().clamp_min(1e-12);
    assert!(max_diff(halved, x3.clone() / norm / 2.0) == 0.0);
    let want_masked = burn::tensor::activation::softmax(scores.clone() + mask.clone(), 3);
    assert!(max_diff(masked, want_masked.clone()) < 1e-6);
    assert!(max_diff(rlip_model::norm::softmax_masked(scores, mask), want_masked) < 1e-6);
    for (a, b, c, d) in [fused_epilogues, unfused_epilogues] {
        assert!(max_diff(a, want_epilogues.0.clone()) == 0.0);
        assert!(max_diff(b, want_epilogues.1.clone()) == 0.0);
        assert!(max_diff(c, want_epilogues.2.clone()) == 0.0);
        assert!(max_diff(d, want_epilogues.3.clone()) == 0.0);
    }
    assert!(
        max_diff(
            lin_relu,
            burn::tensor::activation::relu(lin.forward(x3.clone()))
        ) == 0.0
    );
    assert!(max_diff(ln_add, ln.forward(x3.clone() + res3.clone())) == 0.0);
    // without a kernel the bias is added with the product, and the sum is the same
    let unfused = lin6.forward_biased(x3.clone());
    assert!(unfused.bias.is_none());
    let want_biased = ln.forward(res3.clone() + lin6.forward(x3.clone()));
    assert!(max_diff(ln_biased, want_biased.clone()) == 0.0);
    assert!(max_diff(ln.forward_add_biased(res3, unfused), want_biased) == 0.0);
    let want_soft =
        burn::tensor::activation::softmax(lin6.forward(x3.clone()).reshape([2, 5, 2, 3]), 3);
    assert!(max_diff(soft_biased, want_soft) < 1e-6);
    let want_refined_biased = burn::tensor::activation::sigmoid(
        lin4.forward(x3.clone()) + rlip_model::parse_decoder::inverse_sigmoid(boxes5),
    );
    assert!(max_diff(refined_biased, want_refined_biased) < 1e-6);
    let want_loc = rlip_model::msda::sampling_locations(
        pts,
        lin4.forward(x3.clone()).reshape([2, 5, 1, 1, 2, 2]),
        &[[3, 4]],
        2,
    );
    assert!(max_diff(loc_declined, want_loc) < 1e-6);
    assert!(
        max_diff(
            gn_declined,
            rlip_model::encoder::group_norm_blocked(&gn, gn_in)
        ) == 0.0
    );
    // without a kernel: Burn's ops on strided views, the same values
    let split = |y: Tensor<3>, h: usize| y.reshape([2, 5, h, 7 / h]).swap_dims(1, 2);
    let want_q = split(lin.forward(x3.clone()).mul_scalar(0.5), 7);
    let want_k = split(lin.forward(x3.clone()), 1).swap_dims(2, 3);
    assert_eq!(
        lin.forward_heads(x3.clone(), 7, Some(0.5), false).dims(),
        [2, 7, 5, 1]
    );
    assert!(max_diff(q_heads, want_q.clone()) == 0.0);
    assert!(max_diff(k_heads, want_k.clone()) == 0.0);
    assert!(max_diff(lin.forward_heads(x3.clone(), 7, Some(0.5), false), want_q) == 0.0);
    assert!(max_diff(lin.forward_heads(x3.clone(), 1, None, true), want_k) == 0.0);
    assert!(max_diff(soft_last, burn::tensor::activation::softmax(x3.clone(), 2)) == 0.0);
    assert!(max_diff(soft_mid, burn::tensor::activation::softmax(x3.clone(), 1)) == 0.0);
    let want_refined = burn::tensor::activation::sigmoid(
        delta.clone() + rlip_model::parse_decoder::inverse_sigmoid(boxes.clone()),
    );
    assert!(max_diff(refined, want_refined.clone()) == 0.0);
    let want_broadcast = burn::tensor::activation::sigmoid(
        delta + rlip_model::parse_decoder::inverse_sigmoid(first),
    );
    assert!(max_diff(broadcast, want_broadcast) == 0.0);
    assert!(max_diff(sine, rlip_model::parse_decoder::sine_embed_boxes(boxes, 8)) == 0.0);
    assert!(max_diff(got.0, want.0) < 1e-6);
    assert!(max_diff(got.1, want.1) == 0.0);
    assert!(max_diff(got.2, want.2) < 1e-6);
    assert!(max_diff(got.3, want.3) < 1e-6);
    assert!(max_diff(got.4, want.4) < 1e-6);
    let burn_no_beta = burn::tensor::module::layer_norm(x3, gamma, None, 1e-5);
    assert!(max_diff(no_beta, burn_no_beta) == 0.0);
    let calls = rec.0.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            // the leading dimensions fold into rows
            "layer_norm [10, 6] eps 0.00001",
            // a ReLU is flattened; declined, so Burn's ran
            "relu [60] (declined)",
            "affine [2, 3, 4, 5] residual true relu true",
            "affine [2, 3, 4, 5] residual false relu false",
            "affine [2, 3, 4, 5] residual true relu false",
            // flattened; the broadcast one is not asked
            "refine [24]",
            "sine [2, 3, 4] n 8 scale 6.2832 (declined)",
            // a linear layer's product, then its bias with the ReLU
            "bias_epilogue relu [10, 7]",
            // the product split into heads, the bias, scale and layout left to the kernel
            "heads [2, 5, 7, 1] scale 0.5 transposed false",
            "heads [2, 5, 1, 7] scale 1 transposed true",
            // the residual add goes into the norm
            "add_layer_norm [10, 6]",
            // and a linear layer's bias before it
            "bias_add_layer_norm [10, 6]",
            // a bias of 6 repeating over rows of 3
            "softmax [20, 3] bias 6 groups 1",
            "refine [40] bias 4",
            "group_norm [1, 4, 3, 5] groups 2 (declined)",
            // declined: the bias is added and Burn's ops place the points
            "sampling_locations [2, 5, 1, 1, 2, 2] bias 4 reference [2, 5, 1, 2] (declined)",
            "softmax [10, 6]",
            "bias_epilogue gelu [10, 6]",
            "bias_epilogue gate [10, 6]",
            "bias_epilogue zero_rows [10, 6]",
            "bias_epilogue product [10, 6]",
            // one mask row per image over the keys
            "softmax [30, 6] bias 6 groups 2",
            "l2_halve_rows [10, 6] (declined)",
        ]
    );
}

/// `bias_add_layer_norm_plus` hands the kernel rows and splits its `[2R, C]` result into the norm
/// and the norm plus the added tensor; without a kernel it computes the same with Burn's ops.
#[test]
fn layer_norm_plus_splits_the_stacked_rows() {
    use rlip_model::fused::bias_add_layer_norm_plus;
    let _lock = crate::global_kernel_lock();
    rlip_backends::register_kernels();
    let dev = Device::flex();
    let (x, r, pos) = (
        tensor([2, 3, 6], 91, &dev),
        tensor([2, 3, 6], 92, &dev),
        tensor([2, 3, 6], 93, &dev),
    );
    let (bias, gamma, beta) = (
        tensor([6], 94, &dev),
        tensor([6], 95, &dev),
        tensor([6], 96, &dev),
    );
    let run = || {
        bias_add_layer_norm_plus(
            x.clone(),
            bias.clone(),
            r.clone(),
            gamma.clone(),
            Some(beta.clone()),
            1e-5,
            pos.clone(),
        )
    };
    let previous = set_kernel(None);
    let (want_norm, want_query) = run();
    let rec = Arc::new(Recorder::default());
    set_kernel(Some(rec.clone()));
    let (norm, query) = run();
    set_kernel(previous);
    assert_eq!(rec.0.lock().unwrap().clone(), ["layer_norm_plus [6, 6]"]);
    assert!(max_diff(norm.clone(), want_norm.clone()) < 1e-6);
    assert!(max_diff(query.clone(), want_query) < 1e-6);
    assert!(max_diff(query - norm, pos) < 1e-6);
}

/// The optimiser's entry points hand the kernel rank-4 views (leading unit axes), ask a rank-4
/// parameter to keep its layout and others not, and return `None` when it declines AdamW (the
/// optimiser then runs Burn's ops).
#[test]
fn optimiser_entry_points_hand_the_kernel_rank4_views() {
    use rlip_model::fused::{AdamWScalars, adamw, rank4, sum_squares};
    let _lock = crate::global_kernel_lock();
    rlip_backends::register_kernels();
    let dev = Device::flex();
    let (p2, g2) = (tensor([3, 4], 81, &dev), tensor([3, 4], 82, &dev));
    let (p4, g4) = (
        tensor([2, 3, 1, 2], 83, &dev),
        tensor([2, 3, 1, 2], 84, &dev),
    );
    let m = tensor([12], 85, &dev);
    let s = AdamWScalars::new(1.0, 0.5, 0.9, 0.999, 1e-8, 0.1, 1);
    let rec = Arc::new(Recorder::default());
    let previous = set_kernel(Some(rec.clone()));
    let declined = (
        adamw(&p2, &g2, &m, &m, &s).is_none(),
        adamw(&p4, &g4, &m, &m, &s).is_none(),
    );
    let sum = sum_squares(vec![rank4(p2.clone()), rank4(tensor([5], 86, &dev))]);
    set_kernel(previous);
    assert_eq!(declined, (true, true));
    let want = p2.powi_scalar(2).sum() + tensor([5], 86, &dev).powi_scalar(2).sum();
    assert!(max_diff(sum.expect("two tensors"), want) < 1e-6);
    let calls = rec.0.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            // 1 − lr · weight decay = 0.95
            "adamw [1, 1, 3, 4] grad [1, 1, 3, 4] moments [12] decay 0.95 keep_layout false (declined)",
            "adamw [2, 3, 1, 2] grad [2, 3, 1, 2] moments [12] decay 0.95 keep_layout true (declined)",
            "sum_squares [[1, 1, 3, 4], [1, 1, 1, 5]]",
        ]
    );
    assert!(sum_squares(Vec::new()).is_none());
}

/// A ResNet-50 bottleneck calls the affine kernel once per convolution: with ReLU after the
/// first two, without it for the shortcut, and with the residual and ReLU after the last.
#[test]
fn bottleneck_folds_residual_and_relu_into_the_affine_map() {
    use rlip_model::backbone::resnet::{BlockKind, ResNet, ResNetConfig};
    use rlip_model::weights::{Loader, StateDict};
    let _lock = crate::global_kernel_lock();
    rlip_backends::register_kernels();
    let dev = Device::flex();
    let cfg = ResNetConfig {
        block: BlockKind::Bottleneck,
        layers: [1, 1, 1, 1],
        width: 4,
    };
    let sd = StateDict::new();
    let mut ld = Loader::new(&sd, &dev, "test").allow_partial(true);
    let net = ResNet::load(&mut ld, "backbone", &cfg);
    let x = tensor([1, 3, 32, 32], 9, &dev);
    let want = net.forward(x.clone());
    let rec = Arc::new(Recorder::default());
    let previous = set_kernel(Some(rec.clone()));
    let got = net.forward(x);
    set_kernel(previous);
    for (g, w) in got.into_iter().zip(want) {
        assert!(max_diff(g, w) < 1e-6);
    }
    let calls = rec.0.lock().unwrap().clone();
    // the stem (ReLU), then per block: shortcut, conv1 (ReLU), conv2 (ReLU), conv3 (+residual)
    assert_eq!(calls.len(), 1 + 4 * 4, "{calls:#?}");
    assert_eq!(calls[0], "affine [1, 4, 16, 16] residual false relu true");
    assert_eq!(
        &calls[1..5],
        [
            "affine [1, 16, 8, 8] residual false relu false",
            "affine [1, 4, 8, 8] residual false relu true",
            "affine [1, 4, 8, 8] residual false relu true",
            "affine [1, 16, 8, 8] residual true relu true",
        ]
    );
}

/// While alive, the fused row kernels use one unit per row on every device (the layout of
/// devices without plane operations); dropping it restores the default.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
struct UnitRows;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl UnitRows {
    fn new() -> Self {
        rlip_backends::fused::cube::set_plane_rows(false);
        UnitRows
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl Drop for UnitRows {
    fn drop(&mut self) {
        rlip_backends::fused::cube::set_plane_rows(true);
    }
}

/// Cross-backend tolerance of the fused kernels: float32 sums in another order only.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
const FUSED_TOL: Tol = Tol::new(1e-5, 1e-4);

/// The layer norm of `(x + bias) + res` stacked over itself plus `pos` (`[2R, C]`): the fused
/// kernel where `gpu`, else Burn's ops (the reference).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn ln_plus(
    gpu: bool,
    x: &Tensor<2>,
    bias: &Tensor<1>,
    res: &Tensor<2>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    pos: &Tensor<2>,
) -> Tensor<2> {
    use rlip_backends::fused::FusedCube;
    if gpu {
        return FusedCube
            .layer_norm_plus(x, bias, res, gamma, beta, pos, 1e-5)
            .expect("fused");
    }
    let n = burn::tensor::module::layer_norm(
        (x.clone() + bias.clone().unsqueeze()) + res.clone(),
        gamma.clone(),
        Some(beta.clone()),
        1e-5,
    );
    Tensor::cat(vec![n.clone(), n + pos.clone()], 0)
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
parity_test!(fused_kernels_parity, FUSED_TOL, |device, out| {
    use rlip_backends::fused::FusedCube;
    // the kernels on wgpu and cuda, Burn's ops elsewhere (the reference)
    let gpu = crate::on_cube(device);
    let ad = device.clone().autodiff();

    // layer norm: a row wider than the cube (70 > 64 units), and a narrow one (20)
    for (name, rows, c) in [("ln_wide", 37, 70), ("ln_narrow", 9, 20)] {
        let x = (tensor([rows, c], 31, &ad) * 3.0 + 0.5).require_grad();
        let gamma = tensor([c], 32, &ad).require_grad();
        let beta = tensor([c], 33, &ad).require_grad();
        let y = if gpu {
            FusedCube
                .layer_norm(&x, None, None, &gamma, &beta, 1e-5)
                .expect("the fused kernel takes f32 tensors on a GPU device")
        } else {
            burn::tensor::module::layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-5)
        };
        let r = tensor([rows, c], 34, &ad);
        let g = (y.clone() * r).sum().backward();
        out.push(name, y);
        out.push(&format!("{name}_d_x"), x.grad(&g).expect("grad"));
        out.push(&format!("{name}_d_gamma"), gamma.grad(&g).expect("grad"));
        out.push(&format!("{name}_d_beta"), beta.grad(&g).expect("grad"));
    }
    // layer norm of a residual sum: gradients for both addends, gamma and beta
    let x = (tensor([21, 70], 38, &ad) * 2.0).require_grad();
    let res = tensor([21, 70], 39, &ad).require_grad();
    let gamma = tensor([70], 40, &ad).require_grad();
    let beta = tensor([70], 44, &ad).require_grad();
    let y = if gpu {
        FusedCube
            .layer_norm(&x, None, Some(&res), &gamma, &beta, 1e-5)
            .expect("fused")
    } else {
        burn::tensor::module::layer_norm(
            x.clone() + res.clone(),
            gamma.clone(),
            Some(beta.clone()),
            1e-5,
        )
    };
    let g = (y.clone() * tensor([21, 70], 45, &ad)).sum().backward();
    out.push("add_ln", y);
    out.push("add_ln_d_x", x.grad(&g).expect("grad"));
    out.push("add_ln_d_residual", res.grad(&g).expect("grad"));
    out.push("add_ln_d_gamma", gamma.grad(&g).expect("grad"));
    out.push("add_ln_d_beta", beta.grad(&g).expect("grad"));

    // layer norm of a linear layer's product, its bias and the residual stream
    let x = (tensor([21, 70], 46, &ad) * 2.0).require_grad();
    let bias = tensor([70], 47, &ad).require_grad();
    let res = tensor([21, 70], 48, &ad).require_grad();
    let y = if gpu {
        FusedCube
            .layer_norm(&x, Some(&bias), Some(&res), &gamma, &beta, 1e-5)
            .expect("fused")
    } else {
        burn::tensor::module::layer_norm(
            (x.clone() + bias.clone().unsqueeze()) + res.clone(),
            gamma.clone(),
            Some(beta.clone()),
            1e-5,
        )
    };
    let g = (y.clone() * tensor([21, 70], 49, &ad)).sum().backward();
    out.push("bias_add_ln", y);
    out.push("bias_add_ln_d_x", x.grad(&g).expect("grad"));
    out.push("bias_add_ln_d_bias", bias.grad(&g).expect("grad"));
    out.push("bias_add_ln_d_residual", res.grad(&g).expect("grad"));
    out.push("bias_add_ln_d_gamma", gamma.grad(&g).expect("grad"));

    // the same norm and its sum with a positional query, in one launch: both halves used
    let pos = tensor([21, 70], 56, &ad).require_grad();
    let stacked = ln_plus(gpu, &x, &bias, &res, &gamma, &beta, &pos);
    let (norm, query) = (
        stacked.clone().slice(s![0..21, 0..70]),
        stacked.slice(s![21..42, 0..70]),
    );
    let g = ((norm.clone() * tensor([21, 70], 57, &ad)).sum()
        + (query.clone() * tensor([21, 70], 58, &ad)).sum())
    .backward();
    out.push("ln_plus_norm", norm);
    out.push("ln_plus_query", query);
    for (name, t) in [("x", &x), ("residual", &res), ("pos", &pos)] {
        out.push(&format!("ln_plus_d_{name}"), t.grad(&g).expect("grad"));
    }
    for (name, t) in [("bias", &bias), ("gamma", &gamma), ("beta", &beta)] {
        out.push(&format!("ln_plus_d_{name}"), t.grad(&g).expect("grad"));
    }

    // more rows than one grid axis holds (the kernel spreads rows over two axes)
    let x = tensor([33_000, 3], 35, device);
    let (gamma, beta) = (tensor([3], 36, device), tensor([3], 37, device));
    out.push(
        "ln_many_rows",
        if gpu {
            FusedCube
                .layer_norm(&x, None, None, &gamma, &beta, 1e-5)
                .expect("fused")
        } else {
            burn::tensor::module::layer_norm(x, gamma, Some(beta), 1e-5)
        },
    );

    // softmax: rows wider and narrower than a plane, one with a masked (−inf) entry
    for (name, rows, c) in [("softmax_wide", 23, 70), ("softmax_narrow", 9, 5)] {
        let mut v = values(rows * c, 81)
            .iter()
            .map(|v| v * 6.0)
            .collect::<Vec<_>>();
        v[1] = f32::NEG_INFINITY;
        let x = Tensor::<2>::from_data(TensorData::new(v, [rows, c]), &ad).require_grad();
        let y = if gpu {
            FusedCube.softmax(&x, None, 1).expect("fused")
        } else {
            burn::tensor::activation::softmax(x.clone(), 1)
        };
        let g = (y.clone() * tensor([rows, c], 82, &ad)).sum().backward();
        out.push(name, y);
        out.push(&format!("{name}_d_x"), x.grad(&g).expect("grad"));
    }

    // softmax with a repeating bias longer than a row (the deformable attention's weights:
    // one bias per head and row position), rows of 12 in groups of 3 heads
    let x = (tensor([2, 5, 3, 12], 83, &ad) * 4.0).require_grad();
    let bias = (tensor([36], 84, &ad) * 2.0).require_grad();
    let y = if gpu {
        FusedCube
            .softmax(&x.clone().reshape([30, 12]), Some(&bias), 1)
            .expect("fused")
            .reshape([2, 5, 3, 12])
    } else {
        burn::tensor::activation::softmax(x.clone() + bias.clone().reshape([1, 1, 3, 12]), 3)
    };
    let g = (y.clone() * tensor([2, 5, 3, 12], 85, &ad))
        .sum()
        .backward();
    out.push("bias_softmax", y);
    out.push("bias_softmax_d_x", x.grad(&g).expect("grad"));
    out.push("bias_softmax_d_bias", bias.grad(&g).expect("grad"));

    // rows L2-normalised and halved (the heads' text)
    let x = (tensor([7, 33], 89, &ad) * 3.0).require_grad();
    let y = if gpu {
        FusedCube.l2_halve_rows(&x).expect("fused")
    } else {
        let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
        x.clone() / norm / 2.0
    };
    let g = (y.clone() * tensor([7, 33], 90, &ad)).sum().backward();
    out.push("l2_halve_rows", y);
    out.push("l2_halve_rows_d_x", x.grad(&g).expect("grad"));

    // softmax with a per-image mask over the keys (an attention mask `[B, 1, 1, K]` on scores
    // `[B, H, Q, K]`): 2 images, 3 heads, 4 queries, rows of 70 (wider than a plane)
    let x = (tensor([2, 3, 4, 70], 86, &ad) * 4.0).require_grad();
    let mask = (tensor([2, 70], 87, &ad) * 2.0).require_grad();
    let y = if gpu {
        FusedCube
            .softmax(
                &x.clone().reshape([24, 70]),
                Some(&mask.clone().reshape([140])),
                2,
            )
            .expect("fused")
            .reshape([2, 3, 4, 70])
    } else {
        burn::tensor::activation::softmax(x.clone() + mask.clone().reshape([2, 1, 1, 70]), 3)
    };
    let g = (y.clone() * tensor([2, 3, 4, 70], 88, &ad))
        .sum()
        .backward();
    out.push("masked_softmax", y);
    out.push("masked_softmax_d_x", x.grad(&g).expect("grad"));
    out.push("masked_softmax_d_mask", mask.grad(&g).expect("grad"));

    // the row kernels laid out for devices without plane operations (one unit per row), forward
    // and backward: a layer norm with every operand and a biased softmax, rows of 70
    let rows_only = gpu.then(UnitRows::new);
    let x = (tensor([21, 70], 141, &ad) * 2.0).require_grad();
    let bias = tensor([70], 142, &ad).require_grad();
    let res = tensor([21, 70], 143, &ad).require_grad();
    let pos = tensor([21, 70], 144, &ad).require_grad();
    let gamma = tensor([70], 145, &ad).require_grad();
    let beta = tensor([70], 146, &ad).require_grad();
    let stacked = ln_plus(gpu, &x, &bias, &res, &gamma, &beta, &pos);
    let scores = (tensor([21, 70], 147, &ad) * 4.0).require_grad();
    let soft = if gpu {
        FusedCube.softmax(&scores, Some(&bias), 1).expect("fused")
    } else {
        burn::tensor::activation::softmax(scores.clone() + bias.clone().unsqueeze(), 1)
    };
    let g = ((stacked.clone() * tensor([42, 70], 148, &ad)).sum()
        + (soft.clone() * tensor([21, 70], 149, &ad)).sum())
    .backward();
    drop(rows_only);
    out.push("unit_rows_ln_plus", stacked);
    out.push("unit_rows_softmax", soft);
    for (name, t) in [
        ("x", &x),
        ("residual", &res),
        ("pos", &pos),
        ("scores", &scores),
    ] {
        out.push(&format!("unit_rows_d_{name}"), t.grad(&g).expect("grad"));
    }
    for (name, t) in [("bias", &bias), ("gamma", &gamma), ("beta", &beta)] {
        out.push(&format!("unit_rows_d_{name}"), t.grad(&g).expect("grad"));
    }

    // the deformable attention's sampling locations around points and around boxes: offsets
    // [N, Lq, M, L, P, 2] = [2, 3, 2, 3, 2, 2], their bias per head, level, point and coordinate
    let shapes = [[5, 7], [3, 4], [2, 2]];
    for (name, r) in [("locations_points", 2), ("locations_boxes", 4)] {
        let off = (tensor([2, 3, 2, 3, 2, 2], 111, &ad) * 3.0).require_grad();
        let bias = tensor([24], 112, &ad).require_grad();
        let reference = tensor([2, 3, 3, r], 113, &ad).abs().require_grad();
        let y = if gpu {
            let norm: Vec<f32> = shapes
                .iter()
                .flat_map(|&[h, w]| [w as f32, h as f32])
                .collect();
            let norm = Tensor::<1>::from_data(TensorData::new(norm, [6]), &ad);
            let norm = if r == 2 { norm } else { bias.clone() };
            FusedCube
                .sampling_locations(&off, &bias, &reference, &norm)
                .expect("fused")
        } else {
            let v = off.clone() + bias.clone().reshape([1, 1, 2, 3, 2, 2]);
            rlip_model::msda::sampling_locations(reference.clone(), v, &shapes, 2)
        };
        let g = (y.clone() * tensor([2, 3, 2, 3, 2, 2], 114, &ad))
            .sum()
            .backward();
        out.push(name, y);
        out.push(&format!("{name}_d_off"), off.grad(&g).expect("grad"));
        out.push(&format!("{name}_d_bias"), bias.grad(&g).expect("grad"));
        out.push(
            &format!("{name}_d_reference"),
            reference.grad(&g).expect("grad"),
        );
    }

    // group norm (3 groups of 2 channels), on a row-major input and on a channels-last view
    // (a convolution's output layout on the cubecl backends)
    for (name, channels_last) in [("group_norm", false), ("group_norm_channels_last", true)] {
        let x = if channels_last {
            (tensor([2, 5, 7, 6], 121, &ad) * 3.0 + 1.0)
                .permute([0, 3, 1, 2])
                .require_grad()
        } else {
            (tensor([2, 6, 5, 7], 121, &ad) * 3.0 + 1.0).require_grad()
        };
        let gamma = tensor([6], 122, &ad).require_grad();
        let beta = tensor([6], 123, &ad).require_grad();
        let y = if gpu {
            FusedCube
                .group_norm(&x, &gamma, &beta, 3, 1e-5)
                .expect("fused")
        } else {
            let rows = x.clone().reshape([2, 3, 70]);
            let mean = rows.clone().mean_dim(2);
            let centred = rows - mean;
            let var = centred.clone().powi_scalar(2).mean_dim(2);
            let y = (centred / (var + 1e-5).sqrt()).reshape([2, 6, 5, 7]);
            y * gamma.clone().reshape([1, 6, 1, 1]) + beta.clone().reshape([1, 6, 1, 1])
        };
        let g = (y.clone() * tensor([2, 6, 5, 7], 124, &ad))
            .sum()
            .backward();
        out.push(name, y);
        out.push(&format!("{name}_d_x"), x.grad(&g).expect("grad"));
        out.push(&format!("{name}_d_gamma"), gamma.grad(&g).expect("grad"));
        out.push(&format!("{name}_d_beta"), beta.grad(&g).expect("grad"));
    }

    // a linear layer's bias with ReLU, with exact zeros after the add
    let x = (tensor([13, 9], 91, &ad) * 4.0).round().require_grad();
    let bias = tensor([9], 92, &ad).round().require_grad();
    let y = if gpu {
        FusedCube
            .bias_epilogue(&x, &bias, Epilogue::Relu)
            .expect("fused")
    } else {
        burn::tensor::activation::relu(x.clone() + bias.clone().unsqueeze())
    };
    let g = (y.clone() * tensor([13, 9], 93, &ad)).sum().backward();
    out.push("bias_relu", y);
    out.push("bias_relu_d_x", x.grad(&g).expect("grad"));
    out.push("bias_relu_d_bias", bias.grad(&g).expect("grad"));

    // the other epilogues of a linear layer's bias: GELU, a gated residual, zeroed padding
    // rows (rows 1, 4, 7, 10) and the product with another biased output
    let flags: Vec<f32> = (0..13).map(|i| f32::from(u8::from(i % 3 == 1))).collect();
    let padding = Tensor::<1>::from_data(TensorData::new(flags, [13]), &ad);
    for kind in ["gelu", "gate", "zero_rows", "product"] {
        let x = (tensor([13, 9], 94, &ad) * 3.0).require_grad();
        let bias = tensor([9], 95, &ad).require_grad();
        let a = tensor([13, 9], 96, &ad).require_grad();
        let b = tensor([9], 97, &ad).require_grad();
        let epilogue = match kind {
            "gelu" => Epilogue::Gelu,
            "gate" => Epilogue::Gate {
                residual: &a,
                gate: &b,
            },
            "zero_rows" => Epilogue::ZeroRows { padding: &padding },
            _ => Epilogue::Product {
                other: &a,
                other_bias: &b,
            },
        };
        let y = if gpu {
            FusedCube.bias_epilogue(&x, &bias, epilogue).expect("fused")
        } else {
            let v = x.clone() + bias.clone().unsqueeze();
            match kind {
                "gelu" => burn::tensor::activation::gelu(v),
                "gate" => a.clone() + v * b.clone().slice(s![0..1]).unsqueeze(),
                "zero_rows" => {
                    let rows = padding.clone().equal_elem(1.0).unsqueeze_dim::<2>(1);
                    v.mask_fill(rows.expand([13, 9]), 0.0)
                }
                _ => v * (a.clone() + b.clone().unsqueeze()),
            }
        };
        let g = (y.clone() * tensor([13, 9], 98, &ad)).sum().backward();
        let name = format!("bias_{kind}");
        out.push(&name, y);
        out.push(&format!("{name}_d_x"), x.grad(&g).expect("grad"));
        out.push(&format!("{name}_d_bias"), bias.grad(&g).expect("grad"));
        if matches!(kind, "gate" | "product") {
            out.push(&format!("{name}_d_a"), a.grad(&g).expect("grad"));
            out.push(&format!("{name}_d_b"), b.grad(&g).expect("grad"));
        }
    }

    // ReLU, with exact zeros in the input
    let x = (tensor([300], 41, &ad) * 4.0).round().require_grad();
    let y = if gpu {
        FusedCube.relu(&x).expect("fused")
    } else {
        burn::tensor::activation::relu(x.clone())
    };
    let g = (y.clone() * tensor([300], 42, &ad)).sum().backward();
    out.push("relu", y);
    out.push("relu_d_x", x.grad(&g).expect("grad"));
    // through the model's entry point on a transposed view (flattening copies it row-major)
    let x = tensor([6, 50], 43, device).transpose();
    out.push("relu_transposed", rlip_model::fused::relu(x));

    // box refinement, with references inside, on and outside the clamps' edges
    let mut r = values(60, 61).iter().map(|v| v.abs()).collect::<Vec<_>>();
    r[..8].copy_from_slice(&[0.0, 1.0, 1e-6, 1.0 - 1e-6, -0.2, 1.5, 0.5, 1e-5]);
    let reference = Tensor::<2>::from_data(TensorData::new(r, [15, 4]), &ad).require_grad();
    let delta = (tensor([15, 4], 62, &ad) * 3.0).require_grad();
    let y = if gpu {
        FusedCube
            .refine_boxes(
                &delta.clone().reshape([60]),
                None,
                &reference.clone().reshape([60]),
            )
            .expect("fused")
            .reshape([15, 4])
    } else {
        burn::tensor::activation::sigmoid(
            delta.clone() + rlip_model::parse_decoder::inverse_sigmoid(reference.clone()),
        )
    };
    let g = (y.clone() * tensor([15, 4], 63, &ad)).sum().backward();
    out.push("refine", y);
    out.push("refine_d_delta", delta.grad(&g).expect("grad"));
    out.push("refine_d_reference", reference.grad(&g).expect("grad"));
    // with a box head's last bias (one per coordinate)
    let bias = tensor([4], 64, &ad).require_grad();
    let y = if gpu {
        FusedCube
            .refine_boxes(
                &delta.clone().reshape([60]),
                Some(&bias),
                &reference.clone().reshape([60]),
            )
            .expect("fused")
            .reshape([15, 4])
    } else {
        burn::tensor::activation::sigmoid(
            (delta.clone() + bias.clone().unsqueeze())
                + rlip_model::parse_decoder::inverse_sigmoid(reference.clone()),
        )
    };
    let g = (y.clone() * tensor([15, 4], 65, &ad)).sum().backward();
    out.push("bias_refine", y);
    out.push("bias_refine_d_delta", delta.grad(&g).expect("grad"));
    out.push("bias_refine_d_bias", bias.grad(&g).expect("grad"));
    out.push("bias_refine_d_reference", reference.grad(&g).expect("grad"));

    // sine embedding of boxes (n = 16 channels per coordinate)
    let pos = tensor([2, 5, 4], 71, &ad).abs().require_grad();
    let y = if gpu {
        let n = 16;
        let dim_t: Vec<f32> = (0..n)
            .map(|i| 10000f32.powf((2 * (i / 2)) as f32 / n as f32))
            .collect();
        let dim_t = Tensor::<1>::from_data(TensorData::new(dim_t, [n]), &ad);
        FusedCube
            .sine_embed_boxes(&pos, &dim_t, 2.0 * std::f32::consts::PI)
            .expect("fused")
    } else {
        rlip_model::parse_decoder::sine_embed_boxes(pos.clone(), 16)
    };
    let g = (y.clone() * tensor([2, 5, 64], 72, &ad)).sum().backward();
    out.push("sine", y);
    out.push("sine_d_pos", pos.grad(&g).expect("grad"));

    // a linear layer's product split into attention heads (bias, scale, heads first), in the
    // queries' [B, H, N, E] and the keys' transposed [B, H, E, N] layouts
    for (name, scale, transposed) in [("heads", 0.25f32, false), ("heads_t", 1.0, true)] {
        let x = (tensor([2, 7, 3, 5], 101, &ad) * 2.0).require_grad();
        let bias = tensor([15], 102, &ad).require_grad();
        let y = if gpu {
            FusedCube
                .heads(&x, &bias, scale, transposed)
                .expect("fused")
        } else {
            let y = (x.clone() + bias.clone().reshape([1, 1, 3, 5]))
                .mul_scalar(scale)
                .swap_dims(1, 2);
            if transposed { y.swap_dims(2, 3) } else { y }
        };
        let r = tensor(y.dims(), 103, &ad);
        let g = (y.clone() * r).sum().backward();
        out.push(name, y);
        out.push(&format!("{name}_d_x"), x.grad(&g).expect("grad"));
        out.push(&format!("{name}_d_bias"), bias.grad(&g).expect("grad"));
    }

    // the affine map: plain, with ReLU, and with residual and ReLU; on row-major tensors and on
    // channels-last views (the layout of a convolution's output on the cubecl backends), where
    // the kernel walks the buffer in its own order
    let scale = tensor([5], 51, &ad);
    let shift = tensor([5], 52, &ad);
    let channels_last = |seed| {
        tensor([2, 6, 7, 5], seed, &ad)
            .permute([0, 3, 1, 2])
            .require_grad()
    };
    for (name, with_residual, with_relu, layout) in [
        ("affine", false, false, "row-major"),
        ("affine_relu", false, true, "row-major"),
        ("affine_add_relu", true, true, "row-major"),
        ("affine_relu_channels_last", false, true, "channels-last"),
        ("affine_add_relu_channels_last", true, true, "channels-last"),
        ("affine_add_relu_mixed_layouts", true, true, "mixed"),
    ] {
        let (x, res) = match layout {
            "row-major" => (
                tensor([2, 5, 6, 7], 53, &ad).require_grad(),
                tensor([2, 5, 6, 7], 54, &ad).require_grad(),
            ),
            "channels-last" => (channels_last(53), channels_last(54)),
            _ => (
                channels_last(53),
                tensor([2, 5, 6, 7], 54, &ad).require_grad(),
            ),
        };
        let residual = with_residual.then(|| res.clone());
        let y = if gpu {
            FusedCube
                .channel_affine(&x, &scale, &shift, residual.as_ref(), with_relu)
                .expect("fused")
        } else {
            let c = |t: &Tensor<1>| t.clone().reshape([1, 5, 1, 1]);
            let y = x.clone() * c(&scale) + c(&shift);
            let y = match residual {
                Some(r) => y + r,
                None => y,
            };
            if with_relu {
                burn::tensor::activation::relu(y)
            } else {
                y
            }
        };
        let g = (y.clone() * tensor([2, 5, 6, 7], 55, &ad)).sum().backward();
        out.push(name, y);
        out.push(&format!("{name}_d_x"), x.grad(&g).expect("grad"));
        if with_residual {
            out.push(&format!("{name}_d_residual"), res.grad(&g).expect("grad"));
        }
    }

    // the criterion's GIoU of matched box pairs (cx, cy, w, h): overlapping, disjoint (the
    // clamped overlap), nested, identical (ties in every maximum and minimum) and a zero target
    // box (an object pair without a box), then random pairs; gradients for both sets
    let fixed: Vec<f32> = vec![
        0.5, 0.5, 0.4, 0.3, 0.6, 0.55, 0.3, 0.3, // overlapping
        0.2, 0.2, 0.1, 0.1, 0.8, 0.7, 0.2, 0.1, // disjoint
        0.5, 0.5, 0.6, 0.6, 0.5, 0.52, 0.2, 0.1, // nested
        0.3, 0.6, 0.2, 0.4, 0.3, 0.6, 0.2, 0.4, // identical
        0.4, 0.4, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0, // zero target
    ];
    let mut a_v: Vec<f32> = fixed.chunks(8).flat_map(|c| c[..4].to_vec()).collect();
    let mut b_v: Vec<f32> = fixed.chunks(8).flat_map(|c| c[4..].to_vec()).collect();
    let rnd: Vec<f32> = values(160, 59);
    for (k, v) in rnd.iter().enumerate() {
        // centres in (0.2, 0.8), sizes in (0.05, 0.45)
        let u = (v.abs() % 1.0) * 0.6;
        let x = if k % 4 < 2 { 0.2 + u } else { 0.05 + u * 0.66 };
        if k < 80 { a_v.push(x) } else { b_v.push(x) }
    }
    let n = a_v.len() / 4;
    let a = Tensor::<2>::from_data(TensorData::new(a_v, [n, 4]), &ad).require_grad();
    let b = Tensor::<2>::from_data(TensorData::new(b_v, [n, 4]), &ad).require_grad();
    let giou = if gpu {
        FusedCube.paired_giou(&a, &b).expect("fused")
    } else {
        use rlip_train::loss::terms::{box_cxcywh_to_xyxy, paired_generalized_box_iou};
        paired_generalized_box_iou(box_cxcywh_to_xyxy(a.clone()), box_cxcywh_to_xyxy(b.clone()))
    };
    let g = (giou.clone() * tensor([n], 60, &ad)).sum().backward();
    out.push("paired_giou", giou);
    out.push("paired_giou_d_a", a.grad(&g).expect("grad"));
    out.push("paired_giou_d_b", b.grad(&g).expect("grad"));

    // the optimiser's kernels, on plain (non-autodiff) tensors as the trainer runs them: the
    // sum of squares of gradients in several layouts (one larger than a unit's span), and AdamW
    // on a row-major parameter, on a channels-last one with a row-major gradient and on one
    // with a transposed gradient
    let grads: Vec<Tensor<4>> = vec![
        rlip_model::fused::rank4(tensor([37, 70], 61, device)),
        tensor([2, 6, 7, 5], 62, device).permute([0, 3, 1, 2]),
        rlip_model::fused::rank4(tensor([9, 13], 63, device).transpose()),
        rlip_model::fused::rank4(tensor([3], 64, device)),
        // more than the cap of partial sums per tensor (65,536 units of 16)
        rlip_model::fused::rank4(tensor([1_100_000], 65, device)),
    ];
    let sq = if gpu {
        FusedCube.sum_squares(&grads).expect("fused")
    } else {
        let sum = |t: Tensor<4>| t.powi_scalar(2).sum();
        grads.iter().cloned().map(sum).reduce(|a, b| a + b).unwrap()
    };
    out.push("sum_squares", sq);
    let s = rlip_model::fused::AdamWScalars::new(0.37, 1e-2, 0.9, 0.999, 1e-8, 1e-4, 3);
    let moments = |seed: u64, n: usize| {
        let m = tensor([n], seed, device) * 0.1;
        let v = tensor([n], seed + 1, device).abs() * 0.01;
        (m, v)
    };
    for (name, param, grad, keep) in [
        (
            "adamw",
            tensor([2, 1, 13, 9], 71, device),
            tensor([2, 1, 13, 9], 72, device),
            true,
        ),
        (
            "adamw_channels_last",
            tensor([2, 6, 7, 5], 73, device).permute([0, 3, 1, 2]),
            tensor([2, 5, 6, 7], 74, device),
            true,
        ),
        (
            "adamw_to_row_major",
            tensor([2, 6, 7, 5], 78, device).permute([0, 3, 1, 2]),
            tensor([2, 5, 6, 7], 79, device)
                .permute([0, 1, 3, 2])
                .swap_dims(2, 3),
            false,
        ),
        (
            "adamw_transposed_grad",
            tensor([1, 1, 11, 4], 75, device),
            tensor([1, 1, 4, 11], 76, device).swap_dims(2, 3),
            true,
        ),
    ] {
        let n = param.shape().num_elements();
        let (m, v) = moments(77, n);
        let (p2, m2, v2) = if gpu {
            FusedCube
                .adamw(&param, &grad, &m, &v, &s, keep)
                .expect("fused")
        } else {
            // the optimiser's portable path (train/src/optim.rs), row-major
            let dims = param.dims();
            let g = grad.reshape([n]).mul_scalar(s.grad_scale);
            let m2 = m.mul_scalar(s.beta1) + g.clone().mul_scalar(s.one_minus_beta1);
            let v2 = v.mul_scalar(s.beta2) + g.square().mul_scalar(s.one_minus_beta2);
            let denom = v2
                .clone()
                .sqrt()
                .div_scalar(s.bias_correction2_sqrt)
                .add_scalar(s.eps);
            let update = m2.clone().div(denom).mul_scalar(s.step_size);
            let p2 = (param.reshape([n]).mul_scalar(s.decay) - update).reshape(dims);
            (p2, m2, v2)
        };
        out.push(name, p2);
        out.push(&format!("{name}_exp_avg"), m2);
        out.push(&format!("{name}_exp_avg_sq"), v2);
    }
});

/// NaN passes through the fused ReLU, as through Burn's.
#[cfg(feature = "wgpu")]
#[test]
fn fused_relu_keeps_nan_on_wgpu() {
    use rlip_backends::fused::FusedCube;
    let dev = rlip_backends::device(rlip_backends::BackendKind::Wgpu, None).expect("wgpu");
    let x = Tensor::<1>::from_data(TensorData::new(vec![f32::NAN, -1.0, 0.0, 2.0], [4]), &dev);
    let y: Vec<f32> = FusedCube
        .relu(&x)
        .expect("fused")
        .into_data()
        .try_to_vec()
        .unwrap();
    assert!(y[0].is_nan());
    assert_eq!(&y[1..], [0.0, 0.0, 2.0]);
}
