//! RLIPv2 label side and ALIF fusion encoder against the official RLIPv2-ParSeDA fixtures
//! (JacobYuan7/RLIPv2, `models/fuse_helper.py`, `models/deformable_transformer.py`): RoBERTa
//! tokenisation and pooled label features, then the six-layer ALIF encoder with its three fusion
//! rounds, run from the image through the backbone and input projections.

use std::path::PathBuf;

use burn::prelude::*;
use rlip_model::alif::{AlifConfig, AlifEncoder};
use rlip_model::backbone::Backbone;
use rlip_model::encoder::{InputProjections, MultiScale};
use rlip_model::msda::MsdaConfig;
use rlip_model::position::PaddingMask;
use rlip_model::text::{
    ConfigError, LabelTokenizer, RobertaConfig, RobertaEmbeddings, RobertaModel, TextCache,
    TokenizerError,
};
use rlip_model::weights::{Loader, StateDict};
use rlip_tests::fixture::{assert_all, golden_root};
use rlip_tests::golden::backbone_config;
use rlip_tests::{Check, Fixture};
use serde_json::Value;

fn device() -> Device {
    rlip_backends::default_device().expect("default device")
}

fn tokenizer_dir() -> PathBuf {
    golden_root().join("tokenizer")
}

fn labels(fx: &Fixture) -> Vec<String> {
    fx.manifest["label_texts"]
        .as_array()
        .expect("label_texts")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Tokenizer

#[test]
fn tokenizer_reproduces_fixture_ids() {
    let fx = Fixture::named("rlipv2_parseda_r50");
    let dir = tokenizer_dir();
    let tok = LabelTokenizer::from_vocab_merges(dir.join("vocab.json"), dir.join("merges.txt"))
        .expect("tokenizer");
    let batch = tok.batch_encode(&labels(&fx)).expect("encode");
    let ids = fx.input("input_ids");
    assert_eq!(
        [batch.batch, batch.len],
        [ids.shape[0], ids.shape[1]],
        "shape"
    );
    assert_eq!(batch.input_ids, ids.to_i64(), "input_ids");
    assert_eq!(
        batch.attention_mask,
        fx.input("attention_mask").to_i64(),
        "attention_mask"
    );

    let known = tok
        .batch_encode(&["Hello world!", "person"])
        .expect("encode");
    assert_eq!(
        known.input_ids,
        vec![0, 31414, 232, 328, 2, 0, 5970, 2, 1, 1]
    );
    assert_eq!(known.attention_mask, vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);

    let from_dir = LabelTokenizer::from_dir(&dir).expect("from_dir");
    assert_eq!(from_dir.batch_encode(&labels(&fx)).expect("encode"), batch);

    // The same tokenizer through a HuggingFace tokenizer.json.
    let tmp = std::env::temp_dir().join(format!("rlip-tokjson-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let json = tmp.join("tokenizer.json");
    tok.save(&json).expect("save");
    let reloaded = LabelTokenizer::from_dir(&tmp).expect("tokenizer.json");
    assert_eq!(reloaded.batch_encode(&labels(&fx)).expect("encode"), batch);

    // Without the RoBERTa post-processor the ids would silently lack <s> … </s>.
    let mut v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    v["post_processor"] = Value::Null;
    std::fs::write(&json, v.to_string()).unwrap();
    let e = LabelTokenizer::from_tokenizer_json(&json).unwrap_err();
    assert!(
        matches!(e, TokenizerError::Malformed { ref path, .. } if path == &json),
        "{e}"
    );
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn tokenizer_errors_name_the_file() {
    let tmp = std::env::temp_dir().join(format!("rlip-tok-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let vocab = tmp.join("vocab.json");
    let merges = tmp.join("merges.txt");

    let e = LabelTokenizer::from_vocab_merges(&vocab, &merges).unwrap_err();
    assert!(
        matches!(e, TokenizerError::Io { ref path, .. } if path == &vocab),
        "{e}"
    );
    assert!(e.to_string().contains("vocab.json"), "{e}");

    std::fs::write(&vocab, "[1, 2]").unwrap();
    std::fs::write(&merges, "#version: 0.2\na b\n").unwrap();
    let e = LabelTokenizer::from_vocab_merges(&vocab, &merges).unwrap_err();
    assert!(
        matches!(e, TokenizerError::Malformed { ref path, .. } if path == &vocab),
        "{e}"
    );

    std::fs::write(&vocab, r#"{"<s>": 0, "</s>": 2, "a": 3, "b": 4, "ab": 5}"#).unwrap();
    let e = LabelTokenizer::from_vocab_merges(&vocab, &merges).unwrap_err();
    assert!(
        matches!(e, TokenizerError::MissingToken { ref token, .. } if token == "<pad>"),
        "{e}"
    );

    std::fs::write(
        &vocab,
        r#"{"<s>": 0, "<pad>": 1, "</s>": 2, "a": 3, "b": 4, "ab": 5}"#,
    )
    .unwrap();
    std::fs::write(&merges, "#version: 0.2\na b c\n").unwrap();
    let e = LabelTokenizer::from_vocab_merges(&vocab, &merges).unwrap_err();
    assert!(
        matches!(e, TokenizerError::Malformed { ref path, .. } if path == &merges),
        "{e}"
    );
    assert!(e.to_string().contains("line 2"), "{e}");

    std::fs::write(&merges, "#version: 0.2\na x\n").unwrap();
    let e = LabelTokenizer::from_vocab_merges(&vocab, &merges).unwrap_err();
    assert!(
        matches!(e, TokenizerError::Malformed { ref path, .. } if path == &merges),
        "{e}"
    );

    std::fs::write(&merges, "#version: 0.2\na b\n").unwrap();
    assert!(LabelTokenizer::from_vocab_merges(&vocab, &merges).is_ok());

    std::fs::write(tmp.join("tokenizer.json"), "{not json").unwrap();
    let e = LabelTokenizer::from_dir(&tmp).unwrap_err();
    assert!(e.to_string().contains("tokenizer.json"), "{e}");

    let empty = tmp.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(matches!(
        LabelTokenizer::from_dir(&empty),
        Err(TokenizerError::NotFound { .. })
    ));
    std::fs::remove_dir_all(&tmp).ok();
}

// ------------------------------------------------------------------------------------------------
// RoBERTa

fn is_text_encoder(k: &str) -> bool {
    k.starts_with("transformer.text_encoder.")
}

/// The manifest entries (and seed) of the keys `keep` selects, to show two fixtures share weights.
fn weight_recipe(fx: &Fixture, keep: fn(&str) -> bool) -> (Value, Vec<Value>) {
    let w = &fx.manifest["weights"];
    let entries = w["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| keep(e["key"].as_str().unwrap()))
        .cloned();
    (w["seed_xor"].clone(), entries.collect())
}

#[test]
fn text_pooled_matches_official() {
    let r50 = Fixture::named("rlipv2_parseda_r50");
    let swint = Fixture::named("rlipv2_parseda_swint");
    // The text encoder weights are the same in both fixtures; compute once, check both.
    assert_eq!(
        weight_recipe(&r50, is_text_encoder),
        weight_recipe(&swint, is_text_encoder)
    );
    assert_eq!(r50.input("input_ids"), swint.input("input_ids"));

    let device = device();
    let sd = rlip_tests::generate(&r50.manifest, is_text_encoder);
    let mut ld = Loader::new(&sd, &device, "rlipv2_parseda_r50");
    let model = RobertaModel::load(
        &mut ld,
        "transformer.text_encoder",
        &RobertaConfig::roberta_base(),
    );
    let report = ld.finish().expect("text encoder keys");
    assert!(report.is_clean(), "{report}");
    drop(sd);

    let dir = tokenizer_dir();
    let tok = LabelTokenizer::from_vocab_merges(dir.join("vocab.json"), dir.join("merges.txt"))
        .expect("tokenizer");
    let mut cache = TextCache::new();
    let pooled = cache
        .get_or_encode(&labels(&r50), &tok, &model, &device)
        .expect("encode");
    let checks: Vec<Check> = [&r50, &swint]
        .iter()
        .map(|fx| {
            let mut c = fx.check("text.pooled", pooled.clone());
            c.name = format!(
                "text.pooled ({})",
                fx.dir.file_name().unwrap().to_string_lossy()
            );
            c
        })
        .collect();
    assert_all(&checks);
}

fn tiny_model(device: &Device, vocab: usize) -> RobertaModel {
    let sd = StateDict::new();
    let mut ld = Loader::new(&sd, device, "random").allow_partial(true);
    let cfg = RobertaConfig {
        vocab_size: vocab,
        ..RobertaConfig::tiny()
    };
    RobertaModel::load(&mut ld, "t", &cfg)
}

#[test]
fn position_ids_follow_huggingface() {
    let device = device();
    let sd = StateDict::new();
    let mut ld = Loader::new(&sd, &device, "none").allow_partial(true);
    let emb = RobertaEmbeddings::load(&mut ld, "e", &RobertaConfig::tiny());
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![0i64, 7, 2, 1, 0, 2, 1, 1], [2, 4]),
        &device,
    );
    let pos = emb
        .position_ids(ids)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    assert_eq!(pos, vec![2, 3, 4, 1, 2, 3, 1, 1]);
    assert_eq!(emb.max_tokens(), 14);
}

#[test]
fn padding_leaves_pooled_features_unchanged() {
    let device = device();
    let m = tiny_model(&device, 64);
    let row = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<2, Int>::from_data(TensorData::new(v, [1, n]), &device)
    };
    let short = m.pooled(row(vec![0, 9, 2]), row(vec![1, 1, 1]));
    let padded = m.pooled(row(vec![0, 9, 2, 1, 1]), row(vec![1, 1, 1, 0, 0]));
    let diff = (short - padded).abs().max().into_scalar::<f32>();
    assert!(diff < 1e-6, "padding changed the pooled feature by {diff}");
}

#[test]
fn text_cache_encodes_each_label_list_once() {
    let device = device();
    let dir = tokenizer_dir();
    let tok = LabelTokenizer::from_vocab_merges(dir.join("vocab.json"), dir.join("merges.txt"))
        .expect("tokenizer");
    let m = tiny_model(&device, 50265);
    let mut cache = TextCache::new();
    let a = cache
        .get_or_encode(&["person", "ride bicycle"], &tok, &m, &device)
        .expect("a");
    assert_eq!(a.dims(), [2, 32]);
    let again = cache
        .get_or_encode(&["person", "ride bicycle"], &tok, &m, &device)
        .expect("a again");
    assert_eq!(cache.len(), 1);
    assert_eq!(a.into_data(), again.into_data());
    cache
        .get_or_encode(&["ride bicycle", "person"], &tok, &m, &device)
        .expect("b");
    assert_eq!(cache.len(), 2);
    assert!(
        cache
            .get(&["person".to_string(), "ride bicycle".to_string()])
            .is_some()
    );

    let long = "a ".repeat(20);
    let e = cache
        .get_or_encode(&["person", long.as_str()], &tok, &m, &device)
        .unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::TooLong {
                index: 1,
                max: 14,
                ..
            }
        ),
        "{e}"
    );
    let small = tiny_model(&device, 64);
    let e = TextCache::new()
        .get_or_encode(&["person"], &tok, &small, &device)
        .unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::IdOutOfRange {
                index: 0,
                id: 5970,
                vocab: 64
            }
        ),
        "{e}"
    );
    let none: [&str; 0] = [];
    assert!(matches!(
        cache.get_or_encode(&none, &tok, &m, &device),
        Err(TokenizerError::NoLabels)
    ));
    assert_eq!(cache.len(), 2);
}

// ------------------------------------------------------------------------------------------------
// ALIF

fn is_alif_input(k: &str) -> bool {
    k.starts_with("backbone.0.body.")
        || k.starts_with("input_proj.")
        || k == "transformer.level_embed"
        || k.starts_with("transformer.encoder.")
        || k.starts_with("transformer.resizer.")
}

/// Runs image → backbone → input projections → ALIF with the official pooled label features
/// (`f64/text.pooled`, from `pooled_from` when the fixture does not store them) and compares every
/// stored ALIF and encoder output.
fn alif_checks(name: &str, pooled_from: &str) -> Vec<Check> {
    let fx = Fixture::named(name);
    let device = device();
    let bcfg = backbone_config(&fx).expect("backbone");
    let sd = rlip_tests::generate(&fx.manifest, is_alif_input);
    let mut ld = Loader::new(&sd, &device, name.to_string());
    let backbone = Backbone::load(&mut ld, "backbone.0.body", &bcfg);
    let proj = InputProjections::load(&mut ld, &bcfg.out_channels(), 4, 256, bcfg.pos_offset());
    let alif = AlifEncoder::load(&mut ld, &AlifConfig::parseda());
    let report = ld.finish().expect("ALIF keys");
    assert!(report.is_clean(), "{report}");

    let image = fx.input("image").to_tensor::<4>(&device);
    let pm = fx.input("pixel_mask");
    let (b, h, w) = (pm.shape[0], pm.shape[1], pm.shape[2]);
    let feats = backbone.forward(image);
    let ms = proj.forward(&feats, &PaddingMask::from_u8(b, h, w, &pm.bytes));
    drop(sd);
    let mut checks = Vec::new();

    let src = if name == pooled_from {
        &fx
    } else {
        &Fixture::named(pooled_from)
    };
    let pooled = src.output("f64/text.pooled").to_tensor::<2>(&device);
    let [n_labels, d_text] = pooled.dims();
    let lang = pooled.reshape([1, n_labels, d_text]).repeat_dim(0, b);
    let tm = fx.input("text_attention_mask"); // [L, bs], 1 = padding
    assert_eq!(tm.shape, vec![n_labels, b]);
    let text_mask = Tensor::<2>::from_data(TensorData::new(tm.to_f32(), [n_labels, b]), &device)
        .swap_dims(0, 1)
        .greater_elem(0.5);

    let (out, trace) = alif.forward_traced(&ms, lang, text_mask);
    let last = *ms.level_start.last().unwrap();
    let s_total = ms.src.dims()[1];
    let mut add = |name: String, t: Tensor<3>| {
        if fx.has(&name) {
            checks.push(fx.check(&name, t));
        }
    };
    for (k, v) in trace.vis_fused.iter().enumerate() {
        add(format!("alif.vis_fused{k}"), v.clone());
    }
    for (k, l) in trace.lang_fused.iter().enumerate() {
        add(format!("alif.lang_fused{k}"), l.clone());
    }
    for (k, l) in trace.lang_out.iter().enumerate() {
        add(format!("alif.lang_out{k}"), l.clone());
    }
    for (i, x) in trace.layer_out.iter().enumerate() {
        add(format!("encoder.layer_out{i}"), x.clone());
        add(
            format!("encoder.layer_out_last{i}"),
            x.clone().slice(s![.., last..s_total]),
        );
    }
    add("encoder.memory".to_string(), out.memory);
    checks.push(fx.check("text.resized", out.text_resized));
    assert_eq!(out.text.dims(), [3, b, n_labels, d_text]);
    checks
}

#[test]
fn alif_r50_batch1_matches_official() {
    assert_all(&alif_checks("rlipv2_parseda_r50", "rlipv2_parseda_r50"));
}

/// The padded batch, where the unmasked bi-attention lets padded image tokens into the fusion.
#[test]
fn alif_r50_batch2_padded_matches_official() {
    assert_all(&alif_checks(
        "rlipv2_parseda_r50_batch2",
        "rlipv2_parseda_r50",
    ));
}

#[test]
fn alif_swint_matches_official() {
    assert_all(&alif_checks("rlipv2_parseda_swint", "rlipv2_parseda_swint"));
}

// ------------------------------------------------------------------------------------------------
// ALIF behaviour on a tiny random model

/// Deterministic values in [-1, 1).
fn pseudo(n: usize, seed: u64) -> Vec<f32> {
    rlip_tests::splitmix_values("alif-test", seed, 0.0, 1.0, n)
}

fn tiny_alif_config(n_layers: usize, apply_fusion_masks: bool) -> AlifConfig {
    AlifConfig {
        msda: MsdaConfig {
            d_model: 32,
            n_levels: 4,
            n_heads: 4,
            n_points: 2,
        },
        n_layers,
        d_ffn: 64,
        fusion_interval: 2,
        fusion_heads: 4,
        fusion_dim: 64,
        text: RobertaConfig::tiny(),
        apply_fusion_masks,
    }
}

/// A tiny ALIF (weights from the loader's fixed-seed init) and the multi-scale input of one
/// 64×64 image whose right 40 columns are padding: the last level (2×2) has a padded column.
fn tiny_alif(cfg: &AlifConfig, device: &Device) -> (AlifEncoder, MultiScale) {
    let sd = StateDict::new();
    let mut ld = Loader::new(&sd, device, "random").allow_partial(true);
    let proj = InputProjections::load(&mut ld, &[8, 16, 32], 4, 32, false);
    let alif = AlifEncoder::load(&mut ld, cfg);
    let feats: Vec<Tensor<4>> = [(8, 16), (16, 8), (32, 4)]
        .iter()
        .enumerate()
        .map(|(i, &(c, s))| {
            Tensor::from_data(
                TensorData::new(pseudo(c * s * s, i as u64), [1, c, s, s]),
                device,
            )
        })
        .collect();
    let ms = proj.forward(&feats, &PaddingMask::from_sizes(&[(64, 24)], 64, 64));
    (alif, ms)
}

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// Label input `[1, 5, 32]` and a mask with the last label padded.
fn tiny_labels(device: &Device, seed: u64) -> (Tensor<3>, Tensor<2, Bool>) {
    let lang = Tensor::from_data(TensorData::new(pseudo(5 * 32, seed), [1, 5, 32]), device);
    let mask = Tensor::from_data(
        TensorData::new(vec![false, false, false, false, true], [1, 5]),
        device,
    );
    (lang, mask)
}

/// Official behaviour: padded image tokens and padded labels reach the other modality through
/// the unmasked bi-attention. With `apply_fusion_masks` they do not. Two fusion rounds.
#[test]
fn fusion_masks_official_quirk_and_switch() {
    let device = device();
    for masked in [false, true] {
        let (alif, ms) = tiny_alif(&tiny_alif_config(4, masked), &device);
        let last = *ms.level_start.last().unwrap();
        let padded: Vec<bool> = ms.masks[3].data.clone();
        assert_eq!(padded, vec![false, true, false, true], "last-level mask");
        let (lang, text_mask) = tiny_labels(&device, 10);
        let base = alif.forward(&ms, lang.clone(), text_mask.clone());

        // Change the padded last-level image tokens (1 and 3).
        let mut ms2 = ms.clone();
        for t in [1, 3] {
            let i = last + t;
            ms2.src = ms2.src.clone().slice_assign(
                s![.., i..i + 1],
                Tensor::from_data(
                    TensorData::new(pseudo(32, 20 + t as u64), [1, 1, 32]),
                    &device,
                ),
            );
        }
        let vis = alif.forward(&ms2, lang.clone(), text_mask.clone());
        let d_text = max_diff(base.text.clone(), vis.text);

        // Change the padded label.
        let other = Tensor::from_data(TensorData::new(pseudo(32, 30), [1, 1, 32]), &device);
        let lang2 = lang.slice_assign(s![.., 4..5], other);
        let lab = alif.forward(&ms, lang2, text_mask);
        let d_mem = max_diff(base.memory.clone(), lab.memory.clone());
        let d_real = max_diff(
            base.text.clone().slice(s![.., .., 0..4]),
            lab.text.slice(s![.., .., 0..4]),
        );
        if masked {
            assert!(
                d_text < 1e-6,
                "masked: padded image tokens changed labels by {d_text}"
            );
            assert!(
                d_mem < 1e-6,
                "masked: a padded label changed the memory by {d_mem}"
            );
            assert!(
                d_real < 1e-6,
                "masked: a padded label changed real labels by {d_real}"
            );
        } else {
            assert!(
                d_text > 1e-3,
                "official: padded image tokens must reach labels ({d_text})"
            );
            assert!(
                d_mem > 1e-3,
                "official: a padded label must reach the memory ({d_mem})"
            );
            // Within a round labels attend only to image tokens, and the RoBERTa layer masks the
            // padded label; it reaches the real labels through the image tokens of round 0 in
            // round 1.
            assert!(d_real > 1e-3, "official: {d_real}");
        }
    }
}

/// With fewer layers than the fusion interval nothing is fused: the label features pass through.
#[test]
fn alif_without_fusion_rounds_passes_labels_through() {
    let device = device();
    let cfg = tiny_alif_config(1, false);
    assert_eq!(cfg.rounds(), 0);
    let (alif, ms) = tiny_alif(&cfg, &device);
    let (lang, mask) = tiny_labels(&device, 10);
    let out = alif.forward(&ms, lang.clone(), mask);
    assert_eq!(out.text.dims(), [1, 1, 5, 32]);
    assert_eq!(out.text_resized.dims(), [1, 5, 1, 32]);
    assert_eq!(max_diff(out.text.reshape([1, 5, 32]), lang), 0.0);
    assert_eq!(out.memory.dims(), ms.src.dims());
}

#[test]
fn alif_config_validation() {
    assert_eq!(AlifConfig::parseda().validate(), Ok(()));
    let bad = AlifConfig {
        fusion_dim: 100,
        ..AlifConfig::parseda()
    };
    assert!(matches!(
        bad.validate(),
        Err(ConfigError::NotDivisible {
            name: "fusion_dim",
            ..
        })
    ));
    let zero = AlifConfig {
        fusion_interval: 0,
        ..AlifConfig::parseda()
    };
    assert_eq!(
        zero.validate(),
        Err(ConfigError::Zero {
            name: "fusion_interval"
        })
    );
    let text = AlifConfig {
        text: RobertaConfig {
            num_attention_heads: 7,
            ..RobertaConfig::roberta_base()
        },
        ..AlifConfig::parseda()
    };
    assert!(text.validate().is_err());
}
