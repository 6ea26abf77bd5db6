//! The whole RLIPv2-ParSeDA model against the official fixtures: weights rebuilt from the
//! manifest and loaded by official keys, every stored intermediate and final output compared
//! with the official float64 run (README tolerance: 10× the official f32-vs-f64 error).

use rlip_tests::Fixture;
use rlip_tests::fixture::assert_all;
use rlip_tests::golden::model_checks;

fn run_case(name: &str) {
    let device = rlip_backends::default_device().expect("flex");
    let checks = model_checks(&Fixture::named(name), &device).unwrap_or_else(|e| panic!("{}", e.0));
    assert_all(&checks);
}

#[test]
fn r50_batch1_end_to_end() {
    run_case("rlipv2_parseda_r50");
}

#[test]
fn r50_batch2_padded_end_to_end() {
    run_case("rlipv2_parseda_r50_batch2");
}

#[test]
fn swint_end_to_end() {
    run_case("rlipv2_parseda_swint");
}
