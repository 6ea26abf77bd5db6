//! ResNet-50 backbone, input projections, masks, positional encodings and the deformable encoder
//! layers against the official RLIPv2-ParSeDA fixtures (batch 1 and the padded batch 2).
//!
//! The ALIF fusion is not part of this check: before encoder layers 0, 2 and 4 the last level is
//! replaced by the fixture's fused visual tokens (`alif.vis_fused{k}`), exactly where the official
//! encoder writes them, so every deformable layer is checked on the official inputs.

use burn::prelude::*;
use rlip_model::backbone::{Backbone, BackboneConfig, ResNetConfig};
use rlip_model::encoder::{EncoderLayer, InputProjections};
use rlip_model::msda::MsdaConfig;
use rlip_model::position::PaddingMask;
use rlip_model::weights::Loader;
use rlip_tests::fixture::assert_all;
use rlip_tests::{Check, Fixture};

fn keep(k: &str) -> bool {
    k.starts_with("backbone.0.body.")
        || k.starts_with("input_proj.")
        || k == "transformer.level_embed"
        || k.starts_with("transformer.encoder.layers.")
}

fn run_case(name: &str) {
    let fx = Fixture::named(name);
    let device = rlip_backends::default_device().expect("flex");
    let sd = rlip_tests::generate(&fx.manifest, keep);
    let mut ld = Loader::new(&sd, &device, name);
    let cfg = BackboneConfig::ResNet(ResNetConfig::resnet50());
    let backbone = Backbone::load(&mut ld, "backbone.0.body", &cfg);
    let proj = InputProjections::load(&mut ld, &cfg.out_channels(), 4, 256, cfg.pos_offset());
    let msda = MsdaConfig { d_model: 256, n_levels: 4, n_heads: 8, n_points: 4 };
    let layers: Vec<EncoderLayer> = (0..6)
        .map(|i| EncoderLayer::load(&mut ld, &format!("transformer.encoder.layers.{i}"), msda, 2048))
        .collect();
    let report = ld.finish().expect("all keys load");
    assert!(report.is_clean(), "{report}");

    let image = fx.input("image").to_tensor::<4>(&device);
    let pm = fx.input("pixel_mask");
    let (b, h, w) = (pm.shape[0], pm.shape[1], pm.shape[2]);
    let mask = PaddingMask::from_u8(b, h, w, &pm.bytes);

    let mut checks: Vec<Check> = Vec::new();
    let feats = backbone.forward(image);
    for (i, f) in feats.iter().enumerate() {
        checks.push(fx.check(&format!("backbone.feat{i}"), f.clone()));
    }
    let ms = proj.forward(&feats, &mask);
    for (i, m) in ms.maps.iter().enumerate() {
        checks.push(fx.check(&format!("input_proj{i}"), m.clone()));
    }

    // Structure: shapes, level starts, masks and valid ratios are exact.
    let shapes = fx.output("common/meta.spatial_shapes").to_i64();
    let ours: Vec<i64> = ms.shapes.iter().flat_map(|[h, w]| [*h as i64, *w as i64]).collect();
    assert_eq!(ours, shapes, "spatial shapes");
    let starts: Vec<i64> = ms.level_start.iter().map(|&s| s as i64).collect();
    assert_eq!(starts, fx.output("common/meta.level_start_index").to_i64(), "level starts");
    let mask_flat: Vec<i64> = ms.mask_flat.clone().int().into_data().convert::<i64>().try_to_vec().unwrap();
    assert_eq!(mask_flat, fx.output("common/meta.mask_flat").to_i64(), "flattened mask");
    for l in 0..3 {
        let m: Vec<i64> = ms.masks[l].data.iter().map(|&x| x as i64).collect();
        assert_eq!(m, fx.output(&format!("common/meta.backbone_mask{l}")).to_i64(), "mask {l}");
    }
    let ratios: Vec<f32> = ms.valid_ratios.iter().flatten().flatten().copied().collect();
    assert_eq!(ratios, fx.output("f32/meta.valid_ratios").to_f32(), "valid ratios");

    let last = *ms.level_start.last().unwrap();
    let s_total = ms.src.dims()[1];
    checks.push(fx.check("encoder.pos_flat_last", ms.pos.clone().slice(s![.., last..s_total])));

    // Deformable encoder with the official fused tokens substituted before layers 0, 2, 4 (only
    // where the fixture stores all three rounds; batch 2 stores round 0 only).
    if !(0..3).all(|k| fx.has(&format!("alif.vis_fused{k}"))) {
        assert_all(&checks);
        return;
    }
    let reference = ms.reference_points(&device);
    let mut src = ms.src.clone();
    for (i, layer) in layers.iter().enumerate() {
        if i % 2 == 0 {
            let fused = fx.output(&format!("f64/alif.vis_fused{}", i / 2)).to_tensor::<3>(&device);
            src = src.slice_assign(s![.., last..s_total], fused);
        }
        src = layer.forward(src, ms.pos.clone(), reference.clone(), &ms.shapes, ms.mask_flat.clone());
        if fx.has(&format!("encoder.layer_out{i}")) {
            checks.push(fx.check(&format!("encoder.layer_out{i}"), src.clone()));
        }
        if fx.has(&format!("encoder.layer_out_last{i}")) {
            checks.push(fx.check(&format!("encoder.layer_out_last{i}"), src.clone().slice(s![.., last..s_total])));
        }
    }
    checks.push(fx.check("encoder.memory", src));
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
