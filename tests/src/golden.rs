//! The model-fixture comparison shared by the golden tests and `cargo xtask golden`.
//!
//! Checks the backbone, input projections, masks, positional encodings and the deformable
//! encoder layers of a fixture folder (manifest.json, inputs/outputs.safetensors). The ALIF fusion
//! is not part of this comparison: before encoder layers 0, 2 and 4 the last level is replaced by
//! the fixture's fused visual tokens (`alif.vis_fused{k}`), exactly where the official encoder
//! writes them, so every deformable layer runs on the official inputs.

use burn::prelude::*;
use rlip_model::backbone::{Backbone, BackboneConfig, ResNetConfig, SwinConfig};
use rlip_model::encoder::{EncoderLayer, InputProjections};
use rlip_model::msda::MsdaConfig;
use rlip_model::position::PaddingMask;
use rlip_model::weights::Loader;

use crate::{Check, Fixture};

/// Errors that make a fixture impossible to compare (as opposed to a failed check).
#[derive(Debug)]
pub struct Unsupported(pub String);

/// The backbone configuration named in the fixture's `args_subset`.
pub fn backbone_config(fx: &Fixture) -> Result<BackboneConfig, Unsupported> {
    let args = fx.manifest["args_subset"].to_string();
    let name = [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "swin_tiny",
        "swin_small",
        "swin_base",
        "swin_large",
    ]
    .into_iter()
    .find(|n| {
        args.contains(&format!("'backbone': '{n}'"))
            || args.contains(&format!("\"backbone\":\"{n}\""))
    })
    .ok_or_else(|| {
        Unsupported(format!(
            "{}: unknown backbone in args_subset",
            fx.dir.display()
        ))
    })?;
    Ok(match name {
        "resnet18" => BackboneConfig::ResNet(ResNetConfig::resnet18()),
        "resnet34" => BackboneConfig::ResNet(ResNetConfig::resnet34()),
        "resnet50" => BackboneConfig::ResNet(ResNetConfig::resnet50()),
        "resnet101" => BackboneConfig::ResNet(ResNetConfig::resnet101()),
        "swin_tiny" => BackboneConfig::Swin(SwinConfig::tiny()),
        "swin_small" => BackboneConfig::Swin(SwinConfig::small()),
        "swin_base" => BackboneConfig::Swin(SwinConfig::base()),
        _ => BackboneConfig::Swin(SwinConfig::large()),
    })
}

fn keep(k: &str) -> bool {
    k.starts_with("backbone.0.body.")
        || k.starts_with("input_proj.")
        || k == "transformer.level_embed"
        || k.starts_with("transformer.encoder.layers.")
}

/// Runs the comparison on `device` and returns one [`Check`] per stored output; structural
/// outputs (shapes, masks, valid ratios) are asserted exactly.
pub fn encoder_checks(fx: &Fixture, device: &Device) -> Result<Vec<Check>, Unsupported> {
    let cfg = backbone_config(fx)?;
    let sd = crate::generate(&fx.manifest, keep);
    let mut ld = Loader::new(&sd, device, fx.dir.display().to_string());
    let backbone = Backbone::load(&mut ld, "backbone.0.body", &cfg);
    let proj = InputProjections::load(&mut ld, &cfg.out_channels(), 4, 256, cfg.pos_offset());
    let msda = MsdaConfig {
        d_model: 256,
        n_levels: 4,
        n_heads: 8,
        n_points: 4,
    };
    let layers: Vec<EncoderLayer> = (0..6)
        .map(|i| {
            EncoderLayer::load(
                &mut ld,
                &format!("transformer.encoder.layers.{i}"),
                msda,
                2048,
            )
        })
        .collect();
    let report = ld.finish().map_err(|e| Unsupported(e.to_string()))?;
    assert!(report.is_clean(), "{report}");

    let image = fx.input("image").to_tensor::<4>(device);
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

    let shapes = fx.output("common/meta.spatial_shapes").to_i64();
    let ours: Vec<i64> = ms
        .shapes
        .iter()
        .flat_map(|[h, w]| [*h as i64, *w as i64])
        .collect();
    assert_eq!(ours, shapes, "spatial shapes");
    let starts: Vec<i64> = ms.level_start.iter().map(|&s| s as i64).collect();
    assert_eq!(
        starts,
        fx.output("common/meta.level_start_index").to_i64(),
        "level starts"
    );
    let flat: Vec<i64> = (0..b)
        .flat_map(|i| {
            ms.masks.iter().flat_map(move |m| {
                let n = m.height * m.width;
                m.data[i * n..(i + 1) * n].iter().map(|&x| x as i64)
            })
        })
        .collect();
    assert_eq!(
        flat,
        fx.output("common/meta.mask_flat").to_i64(),
        "flattened mask"
    );
    for l in 0..3 {
        let m: Vec<i64> = ms.masks[l].data.iter().map(|&x| x as i64).collect();
        assert_eq!(
            m,
            fx.output(&format!("common/meta.backbone_mask{l}")).to_i64(),
            "mask {l}"
        );
    }
    let ratios = ms.valid_ratios_flat();
    assert_eq!(
        ratios,
        fx.output("f32/meta.valid_ratios").to_f32(),
        "valid ratios"
    );

    let last = *ms.level_start.last().expect("levels");
    let s_total = ms.src.dims()[1];
    checks.push(fx.check(
        "encoder.pos_flat_last",
        ms.pos.clone().slice(s![.., last..s_total]),
    ));

    // The encoder needs the fused tokens of all three rounds (batch-2 fixtures store round 0 only).
    if !(0..3).all(|k| fx.has(&format!("alif.vis_fused{k}"))) {
        return Ok(checks);
    }
    let reference = ms.reference_points(device);
    let mut src = ms.src.clone();
    for (i, layer) in layers.iter().enumerate() {
        if i % 2 == 0 {
            let fused = fx
                .output(&format!("f64/alif.vis_fused{}", i / 2))
                .to_tensor::<3>(device);
            src = src.slice_assign(s![.., last..s_total], fused);
        }
        src = layer.forward(
            src,
            ms.pos.clone(),
            reference.clone(),
            &ms.shapes,
            &ms.padding,
        );
        if fx.has(&format!("encoder.layer_out{i}")) {
            checks.push(fx.check(&format!("encoder.layer_out{i}"), src.clone()));
        }
        if fx.has(&format!("encoder.layer_out_last{i}")) {
            checks.push(fx.check(
                &format!("encoder.layer_out_last{i}"),
                src.clone().slice(s![.., last..s_total]),
            ));
        }
    }
    checks.push(fx.check("encoder.memory", src));
    Ok(checks)
}

/// The model configuration of a fixture (backbone from `args_subset`, official ParSeDA sizes).
pub fn model_config(fx: &Fixture) -> Result<rlip_model::rlip::RlipConfig, Unsupported> {
    let mut cfg = rlip_model::rlip::RlipConfig::r50();
    cfg.backbone = backbone_config(fx)?;
    let args = fx.manifest["args_subset"].to_string();
    if let Some(q) = args
        .split("'num_queries': ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
    {
        cfg.num_queries = q;
    }
    Ok(cfg)
}

/// Runs the whole model on a fixture (weights rebuilt from the manifest and loaded through the
/// official-key loader, the fixture's token ids as label input) and compares every stored
/// output. The key report must be clean: every official key used, aliases equal.
pub fn model_checks(fx: &Fixture, device: &Device) -> Result<Vec<Check>, Unsupported> {
    use burn::tensor::Int;
    use rlip_model::rlip::RlipParSeDa;

    let cfg = model_config(fx)?;
    let sd = crate::generate(&fx.manifest, |_| true);
    let mut ld = Loader::new(&sd, device, fx.dir.display().to_string());
    let model = RlipParSeDa::load(&mut ld, &cfg);
    let report = ld.finish().map_err(|e| Unsupported(e.to_string()))?;
    if !report.is_clean() {
        return Err(Unsupported(report.to_string()));
    }
    rlip_backends::limits::check_params_fit(&model, device)
        .map_err(|e| Unsupported(e.to_string()))?;
    let ids = fx.input("input_ids");
    let am = fx.input("attention_mask");
    let to_int = |t: &rlip_model::weights::RawTensor| {
        Tensor::<2, Int>::from_data(TensorData::new(t.to_i64(), t.shape.clone()), device)
    };
    let n_obj = fx.input("obj_pred_names_sums").to_i64()[0] as usize;
    let labels = model.encode_labels(to_int(ids), to_int(am), n_obj);
    let mut checks = Vec::new();
    if fx.has("text.pooled") {
        checks.push(fx.check("text.pooled", labels.pooled.clone()));
    }
    let image = fx.input("image").to_tensor::<4>(device);
    let pm = fx.input("pixel_mask");
    let mask = PaddingMask::from_u8(pm.shape[0], pm.shape[1], pm.shape[2], &pm.bytes);
    let out = model.forward(image, &mask, &labels);

    let mut push3 = |name: &str, t: Tensor<3>| {
        if fx.has(name) {
            checks.push(fx.check(name, t));
        }
    };
    for (i, t) in out.alif.vis_fused.iter().enumerate() {
        push3(&format!("alif.vis_fused{i}"), t.clone());
    }
    for (i, t) in out.alif.lang_out.iter().enumerate() {
        push3(&format!("alif.lang_out{i}"), t.clone());
    }
    push3("encoder.memory", out.memory.clone());
    push3("verb.mbf_out", out.mbf.clone());
    push3("verb.tgt_in", out.verb_tgt.clone());
    for (i, q) in out.ho.query_pos.iter().enumerate() {
        push3(&format!("ho.query_pos{i}"), q.clone());
        push3(&format!("verb.query_pos{i}"), out.verb.query_pos[i].clone());
    }
    let n = out.layers.len();
    for (lvl, p) in out.layers.iter().enumerate() {
        let prefix = if lvl + 1 == n {
            String::new()
        } else {
            format!("aux{lvl}.")
        };
        push3(&format!("{prefix}pred_sub_logits"), p.sub_logits.clone());
        push3(&format!("{prefix}pred_obj_logits"), p.obj_logits.clone());
        push3(&format!("{prefix}pred_verb_logits"), p.verb_logits.clone());
        push3(&format!("{prefix}pred_sub_boxes"), p.sub_boxes.clone());
        push3(&format!("{prefix}pred_obj_boxes"), p.obj_boxes.clone());
    }
    let mut push4 = |name: &str, t: Tensor<4>| {
        if fx.has(name) {
            checks.push(fx.check(name, t));
        }
    };
    push4("text.resized", out.text_resized.clone());
    push4("ho.hs", Tensor::stack(out.ho.hs.clone(), 0));
    push4("verb.hs", Tensor::stack(out.verb.hs.clone(), 0));
    push4("ho.ref_input0", out.ho.ref_input[0].clone());
    push4("verb.ref_input0", out.verb.ref_input[0].clone());
    let refs = |r: &[(Tensor<3>, Tensor<3>)]| -> Tensor<5> {
        Tensor::stack(
            r.iter()
                .map(|(s, o)| Tensor::stack::<4>(vec![s.clone(), o.clone()], 0))
                .collect(),
            0,
        )
    };
    if fx.has("ho.refs") {
        checks.push(fx.check("ho.refs", refs(&out.ho.refs)));
    }
    if fx.has("verb.refs") {
        checks.push(fx.check("verb.refs", refs(&out.verb.refs)));
    }
    if fx.has("verb.ref_in") {
        let (s, o) = out.ho.refs[n - 1].clone();
        checks.push(fx.check("verb.ref_in", Tensor::stack::<4>(vec![s, o], 0)));
    }
    // post-processing compares labels and ids exactly: meaningful at float32 only (in bf16 or
    // f16 near-tied classes flip; the value checks above report the error)
    let f32_model = out
        .layers
        .last()
        .is_some_and(|l| l.obj_logits.dtype() == burn::tensor::DType::F32);
    if fx.has("post.boxes") && f32_model {
        checks.extend(postprocess_checks(fx, &out));
    }
    Ok(checks)
}

/// Post-processing of the final outputs against the fixture's `post.*` (official
/// `PostProcessHOI`) and `hico.top100.*` / `hico.nms.*` (the HICO evaluator's prediction side).
/// Labels and ids must be equal; boxes and scores are compared with the README tolerance, and
/// the candidate lists as sets keyed by (subject, object, verb), since adjacent scores can differ
/// by less than the float32 error. Returns the value checks; structural mismatches panic.
pub fn postprocess_checks(fx: &Fixture, out: &rlip_model::rlip::RlipOutput) -> Vec<Check> {
    use rlip_train::eval::CorrectMat;
    use rlip_train::eval::hico::hico_candidates;
    use rlip_train::eval::postprocess::{PostProcessHoiConfig, RawOutputs, postprocess_hoi};

    let host = |t: Tensor<3>| {
        t.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32")
    };
    let last = out.layers.last().expect("layers");
    let [b, p, c] = last.obj_logits.dims();
    let v = last.verb_logits.dims()[2];
    let (obj, verb) = (
        host(last.obj_logits.clone()),
        host(last.verb_logits.clone()),
    );
    let (sb, ob) = (host(last.sub_boxes.clone()), host(last.obj_boxes.clone()));
    let raw = RawOutputs {
        batch: b,
        queries: p,
        obj_logits: &obj,
        num_obj_logits: c,
        sub_logits: None,
        num_sub_logits: 0,
        verb_logits: &verb,
        num_verbs: v,
        sub_boxes: &sb,
        obj_boxes: &ob,
    };
    let sizes: Vec<[i64; 2]> = fx
        .input("orig_size")
        .to_i64()
        .chunks(2)
        .map(|s| [s[0], s[1]])
        .collect();
    let preds =
        postprocess_hoi(&raw, &sizes, &PostProcessHoiConfig::default()).expect("postprocess");
    let pred = &preds[0];
    let mut checks = Vec::new();
    assert_eq!(
        pred.labels,
        fx.output("f64/post.labels").to_i64(),
        "post.labels"
    );
    let ids = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    assert_eq!(
        ids(&pred.sub_ids),
        fx.output("f64/post.sub_ids").to_i64(),
        "post.sub_ids"
    );
    assert_eq!(
        ids(&pred.obj_ids),
        fx.output("f64/post.obj_ids").to_i64(),
        "post.obj_ids"
    );
    let boxes: Vec<f32> = pred.boxes.iter().flatten().copied().collect();
    checks.push(fx.check_values("post.boxes", &[pred.boxes.len(), 4], &boxes));
    checks.push(fx.check_values(
        "post.verb_scores",
        &[pred.num_pairs(), v],
        &pred.verb_scores,
    ));

    let corre = CorrectMat::load(
        crate::fixture::golden_root().join("eval/hico_eval/default_40img/corre_hico.npy"),
    )
    .expect("corre_hico.npy");
    for (name, nms) in [("hico.top100", None), ("hico.nms", Some((0.7, 1.0, 0.5)))] {
        let kept = hico_candidates(pred, &corre, 100, nms).expect("candidates");
        let want_s = fx.output(&format!("f64/{name}.subject_id")).to_i64();
        let want_o = fx.output(&format!("f64/{name}.object_id")).to_i64();
        let want_c = fx.output(&format!("f64/{name}.category_id")).to_i64();
        let want_score = fx.output(&format!("f64/{name}.score")).to_f64();
        let mut want: Vec<((i64, i64, i64), f64)> = (0..want_s.len())
            .map(|i| ((want_s[i], want_o[i], want_c[i]), want_score[i]))
            .collect();
        let mut got: Vec<((i64, i64, i64), f64)> = kept
            .iter()
            .map(|k| {
                (
                    (k.subject_id as i64, k.object_id as i64, k.verb as i64),
                    k.score as f64,
                )
            })
            .collect();
        want.sort_by_key(|a| a.0);
        got.sort_by_key(|a| a.0);
        let wk: Vec<_> = want.iter().map(|w| w.0).collect();
        let gk: Vec<_> = got.iter().map(|g| g.0).collect();
        assert_eq!(gk, wk, "{name}: kept (subject, object, verb) sets differ");
        let scores: Vec<f32> = got.iter().map(|g| g.1 as f32).collect();
        // compare in the fixture's (sorted-by-key) order
        let key_order: Vec<f64> = want.iter().map(|w| w.1).collect();
        let tol = fx.tolerance(&format!("{name}.score"));
        let max_abs = scores
            .iter()
            .zip(&key_order)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        let max_ref = key_order.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        checks.push(Check {
            name: format!("{name}.score"),
            max_abs,
            rel: max_abs / max_ref,
            tol,
        });
    }
    checks
}
