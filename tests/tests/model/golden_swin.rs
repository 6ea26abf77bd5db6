//! Swin-T backbone against the official RLIPv2-ParSeDA Swin-T fixture, and shape checks of a small
//! custom Swin on inputs that are not multiples of the patch or window size.

use burn::prelude::*;
use rlip_model::backbone::{Swin, SwinConfig};
use rlip_model::weights::{Loader, StateDict};
use rlip_tests::fixture::assert_all;
use rlip_tests::{Check, Fixture};

#[test]
fn swint_backbone_matches_official() {
    let fx = Fixture::named("rlipv2_parseda_swint");
    let sd = rlip_tests::generate(&fx.manifest, |k| k.starts_with("backbone.0.body."));
    let device = rlip_backends::default_device().expect("default device");
    let mut ld = Loader::new(&sd, &device, "rlipv2_parseda_swint");
    let cfg = SwinConfig::tiny();
    let swin = Swin::load(&mut ld, "backbone.0.body", &cfg);
    let report = ld.finish().expect("all Swin-T keys load");
    assert!(report.is_clean(), "{report}");
    assert_eq!(swin.out_channels(), vec![192, 384, 768]);
    assert_eq!(cfg.out_strides(), vec![8, 16, 32]);

    let image = fx.input("image").to_tensor::<4>(&device);
    let feats = swin.forward(image);
    assert_eq!(feats.len(), 3);
    let checks: Vec<Check> = feats
        .into_iter()
        .enumerate()
        .map(|(i, f)| fx.check(&format!("backbone.feat{i}"), f))
        .collect();
    assert_all(&checks);
}

#[test]
fn small_swin_shapes_on_ragged_input() {
    let device = rlip_backends::default_device().expect("default device");
    let cfg = SwinConfig {
        embed_dim: 8,
        depths: vec![2, 1, 2, 1],
        num_heads: vec![1, 2, 2, 4],
        window_size: 3,
        mlp_ratio: 2.0,
        patch_size: 2,
        qkv_bias: true,
        out_indices: vec![1, 2, 3],
        norm_eps: 1e-5,
        drop_path_rate: 0.0,
    };
    let sd = StateDict::new();
    let mut ld = Loader::new(&sd, &device, "random").allow_partial(true);
    let swin = Swin::load(&mut ld, "body", &cfg);
    let report = ld.finish().expect("random init");
    assert!(report.applied.is_empty());

    // 2 × 3 × 23 × 37: patch 2 → 12 × 19; stages 12×19, 6×10, 3×5, 2×3.
    // deterministic input: the device's random generator is shared with the drop-path test
    let x: Vec<f32> = (0..2 * 3 * 23 * 37)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x = Tensor::<4>::from_data(TensorData::new(x, [2, 3, 23, 37]), &device);
    let feats = swin.forward(x);
    let dims: Vec<[usize; 4]> = feats.iter().map(|f| f.dims()).collect();
    assert_eq!(dims, vec![[2, 16, 6, 10], [2, 32, 3, 5], [2, 64, 2, 3]]);
    assert_eq!(swin.out_channels(), vec![16, 32, 64]);
    for f in feats {
        let v = f
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 data");
        assert!(v.iter().all(|x| x.is_finite()), "non-finite output");
    }
}
