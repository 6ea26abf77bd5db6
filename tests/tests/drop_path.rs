//! Tests that seed the process-global device random generator, in their own test binary: a
//! trainer in a test running in parallel reseeds it at every step.

use burn::prelude::*;
use rlip_model::backbone::{Swin, SwinConfig};
use rlip_model::weights::{Loader, StateDict};

/// Stochastic depth: on an autodiff device it changes the features with the seed; on the
/// inference device the same weights give the same features with or without it.
#[test]
fn drop_path_acts_in_training_only() {
    let cfg = |rate| SwinConfig {
        embed_dim: 8,
        depths: vec![2, 2, 2, 2],
        num_heads: vec![1, 2, 2, 4],
        window_size: 3,
        mlp_ratio: 2.0,
        patch_size: 2,
        qkv_bias: true,
        out_indices: vec![1, 2, 3],
        norm_eps: 1e-5,
        drop_path_rate: rate,
    };
    let features = |rate: f64, device: &Device, seed: u64| -> Vec<f32> {
        let sd = StateDict::new();
        let mut ld = Loader::new(&sd, device, "random").allow_partial(true);
        let swin = Swin::load(&mut ld, "body", &cfg(rate));
        ld.finish().expect("random init");
        let x = Tensor::<4>::ones([4, 3, 24, 24], device).mul_scalar(0.5);
        device.seed(seed);
        swin.forward(x)
            .pop()
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let dev = rlip_backends::default_device().expect("default device");
    let train = dev.clone().autodiff();
    assert_eq!(features(0.0, &train, 1), features(0.0, &train, 2));
    let (a, b) = (features(0.5, &train, 1), features(0.5, &train, 2));
    assert_ne!(a, b, "drop path draws per seed");
    assert_eq!(a, features(0.5, &train, 1), "and repeats for one seed");
    assert_eq!(features(0.5, &dev, 1), features(0.0, &dev, 2));
}
