//! Full-float32 dense products (`--f32-precision highest`).
//!
//! 1. The model's dense entry points (`rlip_model::dense`: `Linear`, broadcast batched
//!    `matmul`, `conv_forward`) hand the installed kernel the operands it documents and give
//!    the same results as Burn's ops (flex, with a kernel that records and computes with Burn).
//! 2. The full-float32 ops of `rlip_backends::dense` (matmul on strided and transposed views,
//!    convolutions with stride, padding and an uneven stride, and all their gradients) against
//!    flex's Burn ops on every compiled-in GPU backend (skipped with only flex compiled in).
//! 3. The small model end to end on wgpu with `--f32-precision highest` against flex
//!    (`rlip-golden parity` in a child process).

use std::sync::{Arc, Mutex};

use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use rlip_model::dense::{DenseKernel, Linear, conv_forward, matmul, set_kernel};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use rlip_tests::{Tol, parity_test};

use crate::{max_diff, tensor};

/// Records the operand shapes it is given and computes with Burn's own ops.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl DenseKernel for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn matmul(&self, lhs: &Tensor<3>, rhs: &Tensor<3>) -> Option<Tensor<3>> {
        let msg = format!("matmul {:?} {:?}", lhs.dims(), rhs.dims());
        self.0.lock().unwrap().push(msg);
        Some(lhs.clone().matmul(rhs.clone()))
    }
    fn conv2d(&self, x: &Tensor<4>, w: &Tensor<4>, o: &ConvOptions<2>) -> Option<Tensor<4>> {
        let msg = format!("conv {:?} {:?} {:?}", x.dims(), w.dims(), o.padding);
        self.0.lock().unwrap().push(msg);
        Some(burn::tensor::module::conv2d(
            x.clone(),
            w.clone(),
            None,
            o.clone(),
        ))
    }
}

#[test]
fn dense_entry_points_hand_the_kernel_what_they_document() {
    let dev = Device::flex();
    let x4 = tensor([2, 3, 5, 4], 1, &dev);
    let y4 = tensor([2, 3, 4, 6], 2, &dev);
    let shared = tensor([1, 1, 4, 6], 3, &dev); // one rhs for every batch
    let heads = tensor([2, 1, 4, 6], 4, &dev); // broadcast over the second batch axis
    let lin = Linear {
        weight: burn::module::Param::from_tensor(tensor([4, 7], 5, &dev).transpose()),
        bias: Some(burn::module::Param::from_tensor(tensor([4], 6, &dev))),
    };
    let conv = burn::nn::conv::Conv2dConfig::new([3, 5], [3, 3])
        .with_stride([2, 2])
        .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&dev);
    let img = tensor([2, 3, 9, 8], 7, &dev);
    let lx = tensor([2, 3, 7], 8, &dev);

    // Burn's results with no kernel installed
    let want = (
        x4.clone().matmul(y4.clone()),
        x4.clone().matmul(shared.clone()),
        x4.clone().matmul(heads.clone()),
        lin.forward(lx.clone()),
        conv.forward(img.clone()),
    );
    let rec = Arc::new(Recorder::default());
    let _lock = crate::global_kernel_lock();
    let previous = set_kernel(Some(rec.clone()));
    let got = (
        matmul(x4.clone(), y4),
        matmul(x4.clone(), shared),
        matmul(x4, heads),
        lin.forward(lx),
        conv_forward(&conv, img),
    );
    set_kernel(previous);
    assert!(max_diff(got.0, want.0) < 1e-6);
    assert!(max_diff(got.1, want.1) < 1e-6);
    assert!(max_diff(got.2, want.2) < 1e-6);
    assert!(max_diff(got.3, want.3) < 1e-6);
    assert!(max_diff(got.4, want.4) < 1e-6);
    let calls = rec.0.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "matmul [6, 5, 4] [6, 4, 6]",
            // a shared right-hand matrix folds the batches into rows
            "matmul [1, 30, 4] [1, 4, 6]",
            // a broadcast one is expanded to the full batch
            "matmul [6, 5, 4] [6, 4, 6]",
            // a linear layer is one matmul over all rows; the bias is added after
            "matmul [1, 6, 7] [1, 7, 4]",
            // the convolution gets explicit symmetric padding; the bias is added after
            "conv [2, 3, 9, 8] [5, 3, 3, 3] [(1, 1), (1, 1)]",
        ]
    );
}

/// Cross-backend tolerance of the full-float32 ops: float32 sums in another order only.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
const FULL_F32_TOL: Tol = Tol::new(1e-5, 1e-4);

/// The full-float32 op on a wgpu or cuda device (and a check that it took the operands), Burn's
/// op elsewhere.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn full_matmul(gpu: bool, a: Tensor<3>, b: Tensor<3>) -> Tensor<3> {
    if !gpu {
        return a.matmul(b);
    }
    rlip_backends::dense::FullF32
        .matmul(&a, &b)
        .expect("the full-f32 kernel takes f32 tensors on a GPU device")
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn full_conv(gpu: bool, x: Tensor<4>, w: Tensor<4>, o: &ConvOptions<2>) -> Tensor<4> {
    if !gpu {
        return burn::tensor::module::conv2d(x, w, None, o.clone());
    }
    rlip_backends::dense::FullF32
        .conv2d(&x, &w, o)
        .expect("the full-f32 kernel takes f32 tensors on a GPU device")
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
parity_test!(full_f32_products_parity, FULL_F32_TOL, |device, out| {
    // wgpu and cuda (tch computes in float32 already: the kernel declines it, Burn's op runs)
    let gpu = crate::on_cube(device);
    let ad = device.clone().autodiff();
    // matmul: a plain batch, then a transposed right-hand view (a linear layer's weight)
    let a = tensor([3, 17, 33], 11, &ad).require_grad();
    let b = tensor([3, 33, 9], 12, &ad).require_grad();
    let wt = tensor([1, 9, 33], 13, &ad).require_grad();
    let y1 = full_matmul(gpu, a.clone(), b.clone());
    let y2 = full_matmul(gpu, a.clone(), wt.clone().swap_dims(1, 2).repeat_dim(0, 3));
    let r1 = tensor([3, 17, 9], 14, &ad);
    let r2 = tensor([3, 17, 9], 15, &ad);
    let g = (y1.clone() * r1 + y2.clone() * r2).sum().backward();
    out.push("matmul", y1);
    out.push("matmul_transposed_rhs", y2);
    out.push("matmul_d_lhs", a.grad(&g).expect("grad"));
    out.push("matmul_d_rhs", b.grad(&g).expect("grad"));
    out.push("matmul_d_transposed", wt.grad(&g).expect("grad"));

    // convolutions: a 7x7 stride-2 stem (11 does not divide evenly), a 3x3 with dilation, a 1x1
    for (name, k, stride, pad, dil, size) in [
        ("conv_stem", 7, 2, 3, 1, [2, 3, 11, 13]),
        ("conv_3x3_dilated", 3, 1, 2, 2, [1, 4, 9, 8]),
        ("conv_1x1", 1, 1, 0, 1, [2, 6, 5, 7]),
    ] {
        let c_out = 5;
        let x = tensor(size, 21, &ad).require_grad();
        let w = tensor([c_out, size[1], k, k], 22, &ad).require_grad();
        let o = ConvOptions::new([stride; 2], [pad; 2], [dil; 2], 1);
        let y = full_conv(gpu, x.clone(), w.clone(), &o);
        let r = tensor(y.dims(), 23, &ad);
        let g = (y.clone() * r).sum().backward();
        out.push(name, y);
        out.push(&format!("{name}_d_x"), x.grad(&g).expect("grad"));
        out.push(&format!("{name}_d_w"), w.grad(&g).expect("grad"));
    }
});

/// The small model on wgpu with the full-float32 kernels installed, against flex.
#[cfg(feature = "wgpu")]
#[test]
fn small_model_on_wgpu_with_full_f32_products() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rlip-golden"))
        .args(["--f32-precision", "highest", "parity"])
        .env("RLIP_PARITY_BACKENDS", "wgpu")
        .output()
        .expect("running rlip-golden");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("dense products: full-f32"),
        "the kernel was not installed: {stdout}"
    );
    assert!(stdout.contains("wgpu"), "wgpu was not compared: {stdout}");
}
