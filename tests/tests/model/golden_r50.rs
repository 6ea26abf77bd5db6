//! ResNet-50 backbone, input projections, masks, positional encodings and the deformable encoder
//! layers against the official RLIPv2-ParSeDA fixtures (batch 1 and the padded batch 2).

use rlip_tests::Fixture;
use rlip_tests::fixture::assert_all;
use rlip_tests::golden::encoder_checks;

fn run_case(name: &str) {
    let device = rlip_backends::default_device().expect("flex");
    let checks = encoder_checks(&Fixture::named(name), &device).expect("fixture");
    assert_all(&checks);
}

#[test]
fn r50_batch1_backbone_projections_encoder() {
    run_case("rlipv2_parseda_r50");
}

#[test]
fn r50_batch2_padded_backbone_projections_encoder() {
    run_case("rlipv2_parseda_r50_batch2");
}

/// The device-side sine encoding equals the host reference (the official formula) on masks with
/// irregular padding, both variants.
#[test]
fn device_sine_encoding_matches_host_reference() {
    use burn::prelude::*;
    use rlip_model::position::{
        PaddingMask, sine_coordinates, sine_embed, sine_position_embedding,
    };
    let device = rlip_backends::default_device().expect("flex");
    let (b, h, w, feats) = (2, 5, 7, 16);
    let bytes: Vec<u8> = (0..b * h * w)
        .map(|i| u8::from((i * 7919) % 5 == 0 || i % w >= 5 + i / (h * w)))
        .collect();
    let mask = PaddingMask::from_u8(b, h, w, &bytes);
    for offset in [false, true] {
        let host = sine_position_embedding(&mask, feats, offset);
        let (ys, xs) = sine_coordinates(&mask, offset);
        let up = |v: Vec<f32>| Tensor::<3>::from_data(TensorData::new(v, [b, h * w, 1]), &device);
        let dev = Tensor::cat(
            vec![sine_embed(up(ys), feats), sine_embed(up(xs), feats)],
            2,
        );
        // host layout [B, 2F, H, W] -> [B, H·W, 2F]
        let host = Tensor::<4>::from_data(TensorData::new(host, [b, 2 * feats, h, w]), &device)
            .flatten::<3>(2, 3)
            .swap_dims(1, 2);
        let diff: f32 = (dev - host).abs().max().into_scalar();
        assert!(diff <= 1e-6, "offset {offset}: max |Δ| {diff}");
    }
}
