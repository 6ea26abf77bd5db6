//! The replaceable kernels of the model, in a test binary of their own: the dispatch tests
//! install process-global kernels.
//!
//! - [`dense`]: the full-float32 matmul and convolution (`--f32-precision highest`);
//! - [`fused`]: the one-launch layer norm, ReLU and frozen-batch-norm affine map.

mod dense;
mod fused;

/// Held by the tests that install a process-global kernel (they run on parallel threads).
static GLOBAL_KERNEL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`GLOBAL_KERNEL`] (a failed test elsewhere does not poison it for the others).
fn global_kernel_lock() -> std::sync::MutexGuard<'static, ()> {
    GLOBAL_KERNEL.lock().unwrap_or_else(|e| e.into_inner())
}
