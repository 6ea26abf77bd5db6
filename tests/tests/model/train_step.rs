//! One training step of the small preset on every compiled-in backend vs flex: the same
//! deterministic weights, padded batch, label texts and targets give the same loss terms,
//! gradient norm and, after the AdamW update, the same loss of a second step (which is where a
//! wrong update would show). With only flex compiled in the body runs once and compares nothing;
//! `cargo xtask test --parity` builds wgpu and tch too. The cases live in `rlip_tests::parity`
//! (`rlip-golden parity` runs the single-device one on a GPU too).

use rlip_model::rlip::{RlipConfig, RlipParSeDa};
use rlip_tests::parity::{SMALL_MODEL_TOL, small_train_step_case, train_texts, two_train_steps};
use rlip_tests::parity_test;
use rlip_train::loss::{Criterion, CriterionConfig};
use rlip_train::trainer::{OptimConfig, Trainer};

parity_test!(train_step_parity, SMALL_MODEL_TOL, |device, out| {
    small_train_step_case(device, out);
});

// Data parallelism across backends: each backend's device holds the master weights and the first
// shard, the CPU (flex) the second. On wgpu and tch the two shards run in parallel threads on
// different devices and the second shard's gradients travel to the first device; on flex both
// shards run one after another. The small preset has no dropout, so every backend must give
// flex's numbers.
parity_test!(data_parallel_step_parity, SMALL_MODEL_TOL, |device, out| {
    let ad = device.clone().autodiff();
    let cpu = rlip_backends::device(rlip_backends::BackendKind::Flex, None)
        .unwrap()
        .autodiff();
    let (model, _) = RlipParSeDa::init(&RlipConfig::small(), &ad);
    let texts = train_texts(&ad);
    let crit = Criterion::new(CriterionConfig::default()).unwrap();
    let mut trainer = Trainer::new(model, crit, OptimConfig::default(), true, &ad)
        .with_data_parallel(vec![cpu])
        .unwrap();
    two_train_steps(&mut trainer, &texts, device, out, false);
});
