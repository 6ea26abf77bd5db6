//! The inference pipeline (`rlip_train::infer`): images from disk through the official
//! preprocessing, padded batching, the model and post-processing, against the golden fixtures;
//! checkpoint round trips, partial loads and bad input on the small preset.

use std::path::{Path, PathBuf};

use rlip_data::labels::LabelSet;
use rlip_data::preprocess::{RgbImage, load_rgb};
use rlip_model::rlip::{RlipConfig, RlipParSeDa};
use rlip_model::text::LabelTokenizer;
use rlip_model::weights::{Loader, st};
use rlip_tests::Fixture;
use rlip_tests::fixture::assert_all;
use rlip_tests::golden::model_config;
use rlip_train::infer::{InferError, PairMode, Predictor, draw_triplets, load_model};

fn device() -> burn::prelude::Device {
    rlip_backends::default_device().expect("flex")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rlip-infer-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A predictor with the fixture's weights (rebuilt from its manifest), the roberta-base
/// vocabulary and the built-in HICO labels, preprocessing at the fixture's 320/533 sizes.
fn golden_predictor(fx: &Fixture) -> Predictor {
    let mut cfg = model_config(fx).expect("config");
    cfg.eval_size = 320;
    cfg.eval_max_size = 533;
    let sd = rlip_tests::generate(&fx.manifest, |_| true);
    let dev = device();
    let mut ld = Loader::new(&sd, &dev, "fixture");
    let model = RlipParSeDa::load(&mut ld, &cfg);
    assert!(ld.finish().expect("clean load").is_clean());
    let labels = LabelSet::builtin("hico").unwrap();
    let want: Vec<String> = fx.manifest["label_texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(labels.flat_texts(), want, "built-in HICO label texts");
    let tok = LabelTokenizer::from_dir(rlip_tests::fixture::golden_root().join("tokenizer"))
        .expect("tokenizer");
    Predictor::new(model, cfg, &tok, labels, PairMode::Hoi, &dev).expect("predictor")
}

fn fixture_images(fx: &Fixture) -> Vec<RgbImage> {
    fx.manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| load_rgb(&fx.dir.join(i["png"].as_str().unwrap())).expect("image"))
        .collect()
}

/// From the PNG on disk to `PostProcessHOI` output: equal to the official pipeline's.
#[test]
fn pipeline_matches_official_postprocessing_r50() {
    let fx = Fixture::named("rlipv2_parseda_r50");
    let p = golden_predictor(&fx);
    let prepared: Vec<_> = fixture_images(&fx).iter().map(|i| p.prepare(i)).collect();
    let preds = p.predict(&prepared).expect("predict");
    let pred = &preds[0];
    assert_eq!(pred.labels, fx.output("f64/post.labels").to_i64());
    let boxes: Vec<f32> = pred.boxes.iter().flatten().copied().collect();
    let v = pred.num_verbs;
    assert_all(&[
        fx.check_values("post.boxes", &[pred.boxes.len(), 4], &boxes),
        fx.check_values(
            "post.verb_scores",
            &[pred.num_pairs(), v],
            &pred.verb_scores,
        ),
    ]);
    // the ranked triplets come from the same candidates as the HICO evaluator
    let t = p.triplets(pred, None, 100, true).expect("triplets");
    assert!(!t.is_empty() && t.len() <= 100);
    assert!(t.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(t.iter().all(|t| t.subject == "person"));
}

/// Two images of different sizes padded into one batch, exactly as the official batching does.
#[test]
fn padded_batch_pipeline_matches_official_outputs() {
    let fx = Fixture::named("rlipv2_parseda_r50_batch2");
    let p = golden_predictor(&fx);
    let prepared: Vec<_> = fixture_images(&fx).iter().map(|i| p.prepare(i)).collect();
    let raw = p.forward(&prepared).expect("forward");
    let (b, q) = (raw.batch, raw.pairs);
    assert_all(&[
        fx.check_values(
            "pred_obj_logits",
            &[b, q, raw.num_obj_logits],
            &raw.obj_logits,
        ),
        fx.check_values(
            "pred_sub_logits",
            &[b, q, raw.num_obj_logits],
            &raw.sub_logits,
        ),
        fx.check_values("pred_verb_logits", &[b, q, raw.num_verbs], &raw.verb_logits),
        fx.check_values("pred_sub_boxes", &[b, q, 4], &raw.sub_boxes),
        fx.check_values("pred_obj_boxes", &[b, q, 4], &raw.obj_boxes),
    ]);
}

/// A byte-level BPE vocabulary of single letters (ids < 64, for the small preset's label
/// encoder), written as `vocab.json` + `merges.txt`.
pub fn tiny_tokenizer(dir: &Path) -> LabelTokenizer {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<s>", "<pad>", "</s>", "<unk>"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for (i, c) in ('a'..='z').chain(['Ġ']).enumerate() {
        vocab.insert(c.to_string(), (4 + i).into());
    }
    std::fs::write(dir.join("vocab.json"), serde_json::to_vec(&vocab).unwrap()).unwrap();
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\n").unwrap();
    LabelTokenizer::from_dir(dir).expect("tiny tokenizer")
}

fn small_labels() -> LabelSet {
    LabelSet {
        source: "test".into(),
        objects: vec!["person".into(), "ball".into(), "kite".into()],
        relations: vec!["hold".into(), "kick".into()],
    }
}

fn gradient(w: usize, h: usize, seed: u8) -> RgbImage {
    let data = (0..h)
        .flat_map(|y| {
            (0..w).flat_map(move |x| {
                [
                    (x * 255 / w) as u8,
                    (y * 255 / h) as u8,
                    seed.wrapping_mul(37),
                ]
            })
        })
        .collect();
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

/// Small preset: initialise, save as safetensors, load back by official keys, run a padded
/// batch, rank and draw triplets.
#[test]
fn small_model_round_trip_and_batch() {
    let dir = tmp("small");
    let dev = device();
    let cfg = RlipConfig::small();
    let (_, sd) = RlipParSeDa::init(&cfg, &dev);
    let ckpt = dir.join("small.safetensors");
    st::write(&sd, &ckpt).unwrap();
    let (model, report) = load_model(&cfg, &ckpt, &dev, false).expect("load");
    assert!(report.is_clean(), "{report}");
    let tok = tiny_tokenizer(&dir);
    for mode in [PairMode::Hoi, PairMode::Sgg] {
        let (model, _) = load_model(&cfg, &ckpt, &dev, false).unwrap();
        let p = Predictor::new(model, cfg.clone(), &tok, small_labels(), mode, &dev).unwrap();
        let imgs = [gradient(90, 60, 1), gradient(50, 120, 2)];
        let prepared: Vec<_> = imgs.iter().map(|i| p.prepare(i)).collect();
        let preds = p.predict(&prepared).unwrap();
        assert_eq!(preds.len(), 2);
        for (img, pred) in imgs.iter().zip(&preds) {
            assert_eq!(pred.num_pairs(), cfg.num_queries / 2);
            assert!(pred.verb_scores.iter().all(|s| (0.0..=1.0).contains(s)));
            assert!(pred.labels.iter().all(|&l| (0..3).contains(&l)));
            if mode == PairMode::Hoi {
                assert!(pred.sub_ids.iter().all(|&i| pred.labels[i] == 0));
            }
            let t = p.triplets(pred, None, 5, false).unwrap();
            assert_eq!(t.len(), 5);
            let png = draw_triplets(img, &t);
            assert!(png.width >= img.width);
            assert!(png.height > img.height, "legend panel below the image");
        }
        // from files, batched by two with read-ahead: same as batching the decoded images
        let third = gradient(70, 70, 3);
        let mut paths = Vec::new();
        for (i, im) in imgs.iter().chain([&third]).enumerate() {
            let path = dir.join(format!("img{i}.png"));
            std::fs::write(&path, rlip_data::draw::encode_png(im)).unwrap();
            paths.push(path);
        }
        let mut seen = Vec::new();
        let from_files = p.predict_files(&paths, 2, |n| seen.push(n)).unwrap();
        assert_eq!(seen, [2, 3]);
        let third_pred = p.predict(&[p.prepare(&third)]).unwrap();
        assert_eq!(from_files[..2], preds[..]);
        assert_eq!(from_files[2], third_pred[0]);
        // a corrupt image names its file
        std::fs::write(&paths[2], b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let e = p.predict_files(&paths, 2, |_| {}).unwrap_err().to_string();
        assert!(e.contains("img2.png"), "{e}");
    }
    drop(model);
    std::fs::remove_dir_all(&dir).ok();
}

/// Wrong shapes, a foreign method and too many queries give clear errors; `partial` applies the
/// official query filter.
#[test]
fn checkpoint_mismatches_are_reported() {
    let dir = tmp("mismatch");
    let dev = device();
    let cfg = RlipConfig::small();
    let (_, sd) = RlipParSeDa::init(&cfg, &dev);
    let ckpt = dir.join("small.safetensors");
    st::write(&sd, &ckpt).unwrap();

    // fewer queries than the checkpoint: error naming the fix, then a partial load that cuts rows
    let mut fewer = cfg.clone();
    fewer.num_queries = 8;
    let e = load_model(&fewer, &ckpt, &dev, false).expect_err("mismatch");
    let msg = e.to_string();
    assert!(
        msg.contains("refpoint_embed.weight") && msg.contains("--partial"),
        "{msg}"
    );
    let (_, report) = load_model(&fewer, &ckpt, &dev, true).expect("partial load");
    assert!(
        report.missing.is_empty() && report.misshaped.is_empty(),
        "{report}"
    );

    // another width: mis-shaped keys always fail, even with partial
    let mut wide = cfg.clone();
    wide.hidden_dim = 32;
    wide.dim_feedforward = 64;
    let e = load_model(&wide, &ckpt, &dev, true).expect_err("mismatch");
    assert!(matches!(e, InferError::Checkpoint { .. }));
    assert!(e.to_string().contains("mis-shaped"), "{e}");

    // a checkpoint of another method (no ParSe decoders)
    let mut other = rlip_model::weights::StateDict::new();
    for (k, t) in sd.iter().filter(|(k, _)| !k.starts_with("transformer.")) {
        other.insert(format!("detr.{k}"), t.clone());
    }
    let path = dir.join("other.safetensors");
    st::write(&other, &path).unwrap();
    let msg = load_model(&cfg, &path, &dev, false)
        .expect_err("foreign checkpoint")
        .to_string();
    assert!(msg.contains("not an RLIPv2-ParSeDA checkpoint"), "{msg}");
    assert!(msg.contains("other.safetensors"), "{msg}");

    // truncated file
    let bytes = std::fs::read(&ckpt).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_model(&cfg, &cut, &dev, false)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("cut.safetensors"), "{msg}");

    // a tokenizer whose ids do not fit the label encoder
    let (model, _) = load_model(&cfg, &ckpt, &dev, false).unwrap();
    let big =
        LabelTokenizer::from_dir(rlip_tests::fixture::golden_root().join("tokenizer")).unwrap();
    let e = Predictor::new(
        model,
        cfg.clone(),
        &big,
        small_labels(),
        PairMode::Hoi,
        &dev,
    )
    .err()
    .expect("vocabulary mismatch");
    assert!(e.to_string().contains("vocabulary"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn configs_are_validated() {
    for name in ["r50", "swin_t", "swin_l", "small"] {
        RlipConfig::resolve(name).expect(name);
    }
    let mut bad = RlipConfig::small();
    bad.num_queries = 15;
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("num_queries")
    );
    let mut bad = RlipConfig::small();
    bad.nheads = 3;
    assert!(bad.validate().is_err());
    let dir = tmp("config");
    let p = dir.join("cfg.json");
    std::fs::write(&p, serde_json::to_vec(&RlipConfig::small()).unwrap()).unwrap();
    assert_eq!(
        RlipConfig::resolve(p.to_str().unwrap()).unwrap(),
        RlipConfig::small()
    );
    std::fs::write(&p, "{\"hidden_dim\": 3}").unwrap();
    let e = RlipConfig::resolve(p.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cfg.json") && e.contains("malformed"), "{e}");
    assert!(
        RlipConfig::resolve("r51")
            .unwrap_err()
            .to_string()
            .contains("preset")
    );
    std::fs::remove_dir_all(&dir).ok();
}

rlip_tests::parity_test!(
    small_model_parity,
    rlip_tests::parity::SMALL_MODEL_TOL,
    |device, out| {
        rlip_tests::parity::small_model_case(device, out);
    }
);

/// RLIP-rs checkpoints: parameters by module path with the config in the metadata, restored
/// exactly; a file from another configuration is refused.
#[test]
fn trained_checkpoints_round_trip() {
    use rlip_model::checkpoint::{META_CONFIG, collect_params, save_params};
    let dir = tmp("ckpt");
    let dev = device();
    let cfg = RlipConfig::small();
    let mut other = cfg.clone();
    other.num_queries = 8;
    // a model whose parameters differ from a fresh init
    let (model, _) = {
        let path = dir.join("base.safetensors");
        let (_, base) = RlipParSeDa::init(&cfg, &dev);
        let mut shifted = rlip_model::weights::StateDict::new();
        for (k, t) in base.iter() {
            let v: Vec<f32> = t.to_f32().iter().map(|x| x + 0.25).collect();
            shifted.insert(
                k,
                rlip_model::weights::RawTensor::from_f32(t.shape.clone(), &v),
            );
        }
        st::write(&shifted, &path).unwrap();
        load_model(&cfg, &path, &dev, false).unwrap()
    };
    let mut meta = std::collections::BTreeMap::new();
    meta.insert(META_CONFIG.into(), serde_json::to_string(&cfg).unwrap());
    let path = dir.join("trained.safetensors");
    save_params(&model, &path, &meta).unwrap();
    assert_eq!(
        rlip_train::infer::checkpoint_config(&path).unwrap(),
        Some(cfg.clone())
    );
    let (back, report) = load_model(&cfg, &path, &dev, false).unwrap();
    let (a, b) = (collect_params(&model), collect_params(&back));
    assert_eq!(a.len(), b.len());
    assert_eq!(report.applied.len(), a.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "parameter {} differs after the round trip", x.0);
    }
    let e = load_model(&other, &path, &dev, false)
        .expect_err("config mismatch")
        .to_string();
    assert!(e.contains("another model configuration"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The stacked relation-query fusion computes the official per-branch formula
/// `relu(Σ_c fc3_c(relu(fc1_c(a) · fc2_c(b))))`, here evaluated on the host in f64.
#[test]
fn branch_fusion_is_the_official_sum_over_branches() {
    use burn::prelude::*;
    use rlip_model::parse_decoder::MultiBranchFusion;
    use rlip_model::weights::{RawTensor, StateDict};
    let (d, repr, k, rows) = (6, 8, 4, 5);
    let sub = repr / k;
    let mut seed = 7u64;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    };
    let mut sd = StateDict::new();
    // official layout: weight [out, in]
    let shapes = [(1, sub, d), (2, sub, d), (3, repr, sub)];
    for c in 0..k {
        for (n, out, inp) in shapes {
            sd.insert(
                format!("m.fc_{n}.{c}.weight"),
                RawTensor::from_f32(vec![out, inp], &rand(out * inp)),
            );
            sd.insert(
                format!("m.fc_{n}.{c}.bias"),
                RawTensor::from_f32(vec![out], &rand(out)),
            );
        }
    }
    let (a, b) = (rand(rows * d), rand(rows * d));
    let dev = device();
    let mut ld = Loader::new(&sd, &dev, "test");
    let m = MultiBranchFusion::load(&mut ld, "m", d, repr, k);
    assert!(ld.finish().unwrap().is_clean());
    let t = |v: &[f32]| Tensor::<1>::from_floats(v, &dev).reshape([1, rows, d]);
    let got = m
        .forward(t(&a), t(&b))
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let val = |key: String| sd.get(&key).unwrap().to_f64();
    let lin = |x: &[f64], n: usize, c: usize, out: usize, inp: usize| -> Vec<f64> {
        let (w, bias) = (
            val(format!("m.fc_{n}.{c}.weight")),
            val(format!("m.fc_{n}.{c}.bias")),
        );
        (0..out)
            .map(|o| bias[o] + (0..inp).map(|i| w[o * inp + i] * x[i]).sum::<f64>())
            .collect()
    };
    let mut worst = 0f64;
    for r in 0..rows {
        let xa: Vec<f64> = a[r * d..(r + 1) * d].iter().map(|&v| v as f64).collect();
        let xb: Vec<f64> = b[r * d..(r + 1) * d].iter().map(|&v| v as f64).collect();
        let mut acc = vec![0f64; repr];
        for c in 0..k {
            let h: Vec<f64> = lin(&xa, 1, c, sub, d)
                .iter()
                .zip(lin(&xb, 2, c, sub, d))
                .map(|(p, q)| (p * q).max(0.0))
                .collect();
            for (s, y) in acc.iter_mut().zip(lin(&h, 3, c, repr, sub)) {
                *s += y;
            }
        }
        for (j, s) in acc.iter().enumerate() {
            worst = worst.max((got[r * repr + j] as f64 - s.max(0.0)).abs());
        }
    }
    assert!(worst < 2e-6, "max |Δ| {worst}");
}

/// Checkpoints written before the fusion's branches were stacked (one tensor per branch,
/// `….fc_{n}.{c}.*`) still load, into the same parameters.
#[test]
fn checkpoints_with_per_branch_fusion_tensors_load() {
    use rlip_model::checkpoint::{META_CONFIG, META_FORMAT, collect_params, save_params};
    let dir = tmp("branches");
    let dev = device();
    let cfg = RlipConfig::small();
    let (model, _) = RlipParSeDa::init(&cfg, &dev);
    let mut meta = std::collections::BTreeMap::new();
    meta.insert(META_CONFIG.into(), serde_json::to_string(&cfg).unwrap());
    let path = dir.join("new.safetensors");
    save_params(&model, &path, &meta).unwrap();
    // the same parameters in the older layout
    let k = cfg.mbf_cardinality;
    let mut old: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut split = 0;
    for (name, shape, v) in collect_params(&model) {
        let Some(stem) = name.strip_prefix("verb_tgt_generator.") else {
            old.push((name, shape, v));
            continue;
        };
        split += 1;
        let (fc, kind) = stem.split_once('.').unwrap();
        for c in 0..k {
            let (s, part): (Vec<usize>, Vec<f32>) = match (fc, kind) {
                ("fc_1" | "fc_2", "weight") => {
                    let (rows, cols) = (shape[0], shape[1] / k);
                    let part = (0..rows)
                        .flat_map(|i| {
                            v[i * shape[1] + c * cols..i * shape[1] + (c + 1) * cols].to_vec()
                        })
                        .collect();
                    (vec![rows, cols], part)
                }
                ("fc_3", "weight") => {
                    let rows = shape[0] / k;
                    (
                        vec![rows, shape[1]],
                        v[c * rows * shape[1]..(c + 1) * rows * shape[1]].to_vec(),
                    )
                }
                ("fc_3", "bias") => (vec![shape[1]], v[c * shape[1]..(c + 1) * shape[1]].to_vec()),
                _ => {
                    let n = shape[0] / k;
                    (vec![n], v[c * n..(c + 1) * n].to_vec())
                }
            };
            old.push((format!("verb_tgt_generator.{fc}.{c}.{kind}"), s, part));
        }
    }
    assert_eq!(split, 6, "fc_1, fc_2, fc_3: weight and bias each");
    let mut st_meta = meta;
    st_meta.insert(META_FORMAT.into(), rlip_model::checkpoint::FORMAT.into());
    let old_path = dir.join("old.safetensors");
    let bytes = rlip_model::checkpoint::serialize_f32(&old, st_meta).unwrap();
    std::fs::write(&old_path, bytes).unwrap();
    let (back, _) = load_model(&cfg, &old_path, &dev, false).unwrap();
    let (a, b) = (collect_params(&model), collect_params(&back));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            x, y,
            "parameter {} differs after loading the older layout",
            x.0
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
