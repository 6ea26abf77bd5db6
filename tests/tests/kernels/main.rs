//! The replaceable kernels of the model, in a test binary of their own: the dispatch tests
//! install process-global kernels.
//!
//! - [`dense`]: the full-float32 matmul and convolution (`--f32-precision highest`);
//! - [`fused`]: the one-launch layer norm, ReLU and frozen-batch-norm affine map.

mod dense;
mod fused;

use burn::prelude::*;

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let z = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xBF58_476D);
            ((z >> 40) % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// A tensor of [`values`].
fn tensor<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, seed), shape), device)
}

/// The largest absolute difference of two tensors of one shape.
fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar()
}

/// Whether `device` is a wgpu or cuda device (with or without autodiff).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn on_cube(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Cube(_)
    )
}

/// Held by the tests that install a process-global kernel (they run on parallel threads).
static GLOBAL_KERNEL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`GLOBAL_KERNEL`] (a failed test elsewhere does not poison it for the others).
fn global_kernel_lock() -> std::sync::MutexGuard<'static, ()> {
    GLOBAL_KERNEL.lock().unwrap_or_else(|e| e.into_inner())
}
