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
