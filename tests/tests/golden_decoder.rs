//! RLIPv2-ParSeDA decoding, heads and post-processing against the official fixtures
//! (JacobYuan7/RLIPv2 at 2adae60: `RLIP_ParSeDABDeformableTransformer_v2.forward` with
//! `encode_and_save=False`, `models/hoi.py::RLIP_ParSeDA`, `PostProcessHOI`,
//! `datasets/hico_eval.py::HICOEvaluator`).
//!
//! The decoders run on an encoder memory built from the existing pieces and on the fixture's
//! `f64/text.resized`, so a failure here points at decoding, not at the label encoder:
//! - case (a): backbone → input projections → 6 deformable encoder layers, with the fixture's
//!   `alif.vis_fused{k}` written into the last level before layers 0, 2, 4;
//! - case (b) stores only round 0 of the fused tokens, so its memory comes from the ALIF
//!   encoder fed with case (a)'s `f64/text.pooled` (the label features do not depend on the
//!   images).
//!
//! Tensors are compared with `Fixture::check` (README: 10 × the official f32-vs-f64 error).
//! Post-processing: labels and ids exactly, scores and boxes within the same tolerance; the
//! HICO top-100 / NMS lists as sets plus their order wherever adjacent reference scores differ by
//! more than the tolerance (README near-tie note), and exactly when fed the reference's own
//! `post.*`. The host-only tests replay the `eval/` cases (NMS suppression, score ties at the
//! cut, the zero-shot subject filter).

use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use rlip_model::alif::AlifEncoder;
use rlip_model::backbone::Backbone;
use rlip_model::encoder::{EncoderLayer, InputProjections, MultiScale};
use rlip_model::parse_decoder::{DecoderKind, DecoderOutput, Memory, MultiBranchFusion, ParseDecoder, Queries};
use rlip_model::position::PaddingMask;
use rlip_model::postprocess::{
    HoiCandidate, HoiDetections, HoiHeadOutputs, PostProcessConfig, TripletNms, VerbObjectMask, hico_predictions,
    postprocess_hoi,
};
use rlip_model::prediction_heads::{Heads, LayerPredictions};
use rlip_model::rlip::RlipConfig;
use rlip_model::weights::Loader;
use rlip_tests::fixture::{assert_all, golden_root};
use rlip_tests::golden::model_config;
use rlip_tests::{Check, Fixture};
use serde_json::Value;

/// How the encoder memory is produced.
enum MemorySource {
    /// Deformable layers with the fixture's fused tokens substituted (all rounds stored).
    Substituted(Vec<EncoderLayer>),
    /// The ALIF encoder on given pooled label features `[L, 768]`.
    Alif(Box<(AlifEncoder, Tensor<2>)>),
}

/// Everything below the label encoder, loaded by official keys.
struct Parts {
    backbone: Backbone,
    proj: InputProjections,
    memory: MemorySource,
    ho: ParseDecoder,
    verb: ParseDecoder,
    mbf: MultiBranchFusion,
    queries: Queries,
    heads: Heads,
}

fn keep(k: &str, alif: bool) -> bool {
    const PREFIXES: [&str; 9] = [
        "backbone.0.body.",
        "input_proj.",
        "transformer.encoder.layers.",
        "transformer.ho_decoder.",
        "transformer.verb_decoder.",
        "transformer.verb_tgt_generator.",
        "sub_bbox_embed.",
        "obj_bbox_embed.",
        "projection_text.",
    ];
    const KEYS: [&str; 6] =
        ["transformer.level_embed", "tgt_embed.weight", "verb_tgt_embed.weight", "refpoint_embed.weight", "bias_obj_a", "bias_pred_a"];
    PREFIXES.iter().any(|p| k.starts_with(p))
        || KEYS.contains(&k)
        || (alif && (k.starts_with("transformer.encoder.") || k.starts_with("transformer.resizer.")))
}

fn load_parts(fx: &Fixture, cfg: &RlipConfig, pooled: Option<Tensor<2>>, device: &Device) -> Parts {
    let alif = pooled.is_some();
    let sd = rlip_tests::generate(&fx.manifest, |k| keep(k, alif));
    let mut ld = Loader::new(&sd, device, fx.dir.display().to_string());
    let d = cfg.hidden_dim;
    let dec = cfg.decoder();
    let backbone = Backbone::load(&mut ld, "backbone.0.body", &cfg.backbone);
    let proj =
        InputProjections::load(&mut ld, &cfg.backbone.out_channels(), cfg.num_feature_levels, d, cfg.backbone.pos_offset());
    let memory = match pooled {
        Some(p) => MemorySource::Alif(Box::new((AlifEncoder::load(&mut ld, &cfg.alif()), p))),
        None => MemorySource::Substituted(
            (0..cfg.enc_layers)
                .map(|i| {
                    EncoderLayer::load(&mut ld, &format!("transformer.encoder.layers.{i}"), dec.msda, cfg.dim_feedforward)
                })
                .collect(),
        ),
    };
    let parts = Parts {
        backbone,
        proj,
        memory,
        ho: ParseDecoder::load(&mut ld, "transformer.ho_decoder", &dec, DecoderKind::SubjectObject),
        verb: ParseDecoder::load(&mut ld, "transformer.verb_decoder", &dec, DecoderKind::Relation),
        mbf: MultiBranchFusion::load(&mut ld, "transformer.verb_tgt_generator", d, d, cfg.mbf_cardinality),
        queries: Queries::load(&mut ld, cfg.num_queries, d),
        heads: Heads::load(&mut ld, d, cfg.dec_layers),
    };
    let report = ld.finish().expect("weights");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.aliases.len(), 72, "shared box-head aliases");
    parts
}

/// The encoder memory `[B, S, d]` of the fixture image(s), and the multi-scale input.
fn encode(parts: &Parts, fx: &Fixture, device: &Device) -> (MultiScale, Tensor<3>) {
    let image = fx.input("image").to_tensor::<4>(device);
    let pm = fx.input("pixel_mask");
    let mask = PaddingMask::from_u8(pm.shape[0], pm.shape[1], pm.shape[2], &pm.bytes);
    let ms = parts.proj.forward(&parts.backbone.forward(image), &mask);
    let memory = match &parts.memory {
        MemorySource::Substituted(layers) => {
            let last = *ms.level_start.last().expect("levels");
            let s_total = ms.src.dims()[1];
            let reference = ms.reference_points(device);
            let mut src = ms.src.clone();
            for (i, layer) in layers.iter().enumerate() {
                if i % 2 == 0 {
                    let fused = fx.output(&format!("f64/alif.vis_fused{}", i / 2)).to_tensor::<3>(device);
                    src = src.slice_assign(s![.., last..s_total], fused);
                }
                src = layer.forward(src, ms.pos.clone(), reference.clone(), &ms.shapes, ms.mask_flat.clone());
            }
            src
        }
        MemorySource::Alif(alif) => {
            let (enc, pooled) = alif.as_ref();
            let b = mask.batch;
            let [l, dt] = pooled.dims();
            let lang = pooled.clone().reshape([1, l, dt]).expand([b, l, dt]);
            let text_mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![false; b * l], [b, l]), device);
            enc.forward(&ms, lang, text_mask).memory
        }
    };
    (ms, memory)
}

/// Decoder and head outputs of one pass.
struct Decoded {
    ho: DecoderOutput,
    verb: DecoderOutput,
    mbf: Tensor<3>,
    verb_tgt: Tensor<3>,
    layers: Vec<LayerPredictions>,
}

/// The `encode_and_save=False` branch: both decoders, then the heads of every layer.
fn decode(parts: &Parts, ms: &MultiScale, memory: Tensor<3>, text_resized: Tensor<4>, n_obj: usize) -> Decoded {
    let device = memory.device();
    let [b, _, d] = memory.dims();
    let n_levels = ms.shapes.len();
    let ratios: Vec<f32> = ms.valid_ratios.iter().flatten().flatten().copied().collect();
    let mem = Memory {
        src: memory,
        shapes: &ms.shapes,
        padding: ms.mask_flat.clone(),
        valid_ratios: Tensor::from_data(TensorData::new(ratios, [b, n_levels, 2]), &device),
    };
    let q = parts.queries.tgt.dims()[0];
    let p = q / 2;
    let n = parts.heads.sub_bbox.len() / 2;
    let anchors = sigmoid(parts.queries.anchors.val());
    let anchor = |r: std::ops::Range<usize>| anchors.clone().slice(s![r]).reshape([1, p, 4]).expand([b, p, 4]);
    let (sub0, obj0) = (anchor(0..p), anchor(p..q));
    let tgt = parts.queries.tgt.val().reshape([1, q, d]).expand([b, q, d]);
    let ho = parts.ho.forward(tgt, (sub0.clone(), obj0.clone()), &mem, &parts.heads.box_heads(false, n));

    let last = ho.hs[n - 1].clone();
    let mbf = parts.mbf.forward(last.clone().slice(s![.., 0..p]), last.slice(s![.., p..q]));
    let vt = parts.queries.verb_tgt.val();
    let verb_tgt = mbf.clone() + (vt.clone().slice(s![0..p]) + vt.slice(s![p..q])).reshape([1, p, d]);
    let verb = parts.verb.forward(verb_tgt.clone(), ho.refs[n - 1].clone(), &mem, &parts.heads.box_heads(true, n));

    let [rounds, n_text, _, d_text] = text_resized.dims();
    assert_eq!(rounds, n, "one text round per decoder layer");
    let layers = (0..n)
        .map(|l| {
            let (a_sub, a_obj) = if l == 0 { (sub0.clone(), obj0.clone()) } else { ho.refs[l - 1].clone() };
            let text = text_resized.clone().slice(s![l..l + 1]).reshape([n_text, b, d_text]).swap_dims(0, 1);
            let hs = ho.hs[l].clone();
            parts.heads.predict(
                l,
                hs.clone().slice(s![.., 0..p]),
                hs.slice(s![.., p..q]),
                verb.hs[l].clone(),
                a_sub,
                a_obj,
                text,
                n_obj,
            )
        })
        .collect();
    Decoded { ho, verb, mbf, verb_tgt, layers }
}

fn stack_refs(r: &[(Tensor<3>, Tensor<3>)]) -> Tensor<5> {
    Tensor::stack(r.iter().map(|(s, o)| Tensor::stack::<4>(vec![s.clone(), o.clone()], 0)).collect(), 0)
}

/// Every stored decoder / head output of the fixture against `out`.
fn tensor_checks(fx: &Fixture, out: &Decoded, memory: &Tensor<3>) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut push = |name: &str, c: &dyn Fn() -> Check| {
        if fx.has(name) {
            checks.push(c());
        }
    };
    push("encoder.memory", &|| fx.check("encoder.memory", memory.clone()));
    for l in 0..2 {
        push(&format!("ho.query_pos{l}"), &|| fx.check(&format!("ho.query_pos{l}"), out.ho.query_pos[l].clone()));
        push(&format!("verb.query_pos{l}"), &|| fx.check(&format!("verb.query_pos{l}"), out.verb.query_pos[l].clone()));
    }
    push("ho.ref_input0", &|| fx.check("ho.ref_input0", out.ho.ref_input[0].clone()));
    push("ho.hs", &|| fx.check("ho.hs", Tensor::stack::<4>(out.ho.hs.clone(), 0)));
    push("ho.refs", &|| fx.check("ho.refs", stack_refs(&out.ho.refs)));
    push("verb.mbf_out", &|| fx.check("verb.mbf_out", out.mbf.clone()));
    push("verb.tgt_in", &|| fx.check("verb.tgt_in", out.verb_tgt.clone()));
    let n = out.layers.len();
    push("verb.ref_in", &|| {
        let (s, o) = out.ho.refs[n - 1].clone();
        fx.check("verb.ref_in", Tensor::stack::<4>(vec![s, o], 0))
    });
    push("verb.ref_input0", &|| fx.check("verb.ref_input0", out.verb.ref_input[0].clone()));
    push("verb.hs", &|| fx.check("verb.hs", Tensor::stack::<4>(out.verb.hs.clone(), 0)));
    push("verb.refs", &|| fx.check("verb.refs", stack_refs(&out.verb.refs)));
    for (l, p) in out.layers.iter().enumerate() {
        let prefix = if l + 1 == n { String::new() } else { format!("aux{l}.") };
        for (field, t) in [
            ("pred_sub_logits", &p.sub_logits),
            ("pred_obj_logits", &p.obj_logits),
            ("pred_verb_logits", &p.verb_logits),
            ("pred_sub_boxes", &p.sub_boxes),
            ("pred_obj_boxes", &p.obj_boxes),
        ] {
            let name = format!("{prefix}{field}");
            push(&name, &|| fx.check(&name, t.clone()));
        }
    }
    checks
}

fn host(t: &Tensor<3>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32")
}

/// A compared list of numbers: max |ours − reference| against the fixture tolerance of `name`.
fn value_check(fx: &Fixture, name: &str, ours: &[f64], reference: &[f64]) -> Check {
    assert_eq!(ours.len(), reference.len(), "{name}: length");
    let max_abs = ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let max_ref = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    Check { name: name.to_string(), max_abs, rel: max_abs / max_ref.max(1e-30), tol: fx.tolerance(name) }
}

/// The fixture's `f64/post.*` as detections (boxes and scores rounded to f32).
fn reference_detections(fx: &Fixture) -> HoiDetections {
    let f = |k: &str| fx.output(&format!("f64/post.{k}"));
    let boxes = f("boxes").to_f32();
    let scores = f("verb_scores");
    HoiDetections {
        labels: f("labels").to_i64(),
        boxes: boxes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect(),
        verb_scores: scores.to_f32(),
        num_verbs: scores.shape[1],
        sub_ids: f("sub_ids").to_i64().into_iter().map(|i| i as usize).collect(),
        obj_ids: f("obj_ids").to_i64().into_iter().map(|i| i as usize).collect(),
    }
}

/// Compares one HICO list (`top100` or `nms`) with the fixture: ids exactly as sets, the score of
/// each triplet within tolerance, and the top-100 order wherever adjacent reference scores are
/// separated by more than the tolerance; `exact_order` demands the identical sequence.
fn compare_hico_list(fx: &Fixture, list: &str, ours: &[HoiCandidate], exact_order: bool) -> Check {
    let g = |k: &str| fx.output(&format!("f64/hico.{list}.{k}"));
    let (sid, oid, cid) = (g("subject_id").to_i64(), g("object_id").to_i64(), g("category_id").to_i64());
    let score = g("score").to_f64();
    let key = |c: &HoiCandidate| (c.subject_id as i64, c.object_id as i64, c.verb as i64);
    let reference: Vec<(i64, i64, i64)> = (0..sid.len()).map(|i| (sid[i], oid[i], cid[i])).collect();
    let name = format!("hico.{list}.score");
    assert_eq!(ours.len(), reference.len(), "{list}: length");
    if exact_order {
        let ours_keys: Vec<_> = ours.iter().map(key).collect();
        assert_eq!(ours_keys, reference, "{list}: order");
    }
    let mut sorted_ours: Vec<_> = ours.iter().map(key).collect();
    let mut sorted_ref = reference.clone();
    sorted_ours.sort_unstable();
    sorted_ref.sort_unstable();
    assert_eq!(sorted_ours, sorted_ref, "{list}: triplet sets");
    let tol = fx.tolerance(&name);
    let pos = |k: &(i64, i64, i64)| ours.iter().position(|c| key(c) == *k).expect("in set");
    if list == "top100" {
        for i in 1..reference.len() {
            if score[i - 1] - score[i] > tol {
                assert!(pos(&reference[i - 1]) < pos(&reference[i]), "{list}: order at rank {i}");
            }
        }
    }
    let ours_scores: Vec<f64> = reference.iter().map(|k| ours[pos(k)].score as f64).collect();
    value_check(fx, &name, &ours_scores, &score)
}

/// `PostProcessHOI` and the HICO prediction side on `out`'s final layer (case (a)).
fn postprocess_checks(fx: &Fixture, out: &Decoded) -> Vec<Check> {
    let last = out.layers.last().expect("layers");
    let [b, p, c] = last.obj_logits.dims();
    let v = last.verb_logits.dims()[2];
    let (obj, verb, sb, ob) = (host(&last.obj_logits), host(&last.verb_logits), host(&last.sub_boxes), host(&last.obj_boxes));
    let raw = HoiHeadOutputs {
        batch: b,
        pairs: p,
        obj_logits: &obj,
        sub_logits: None,
        num_obj_classes: c,
        verb_logits: &verb,
        num_verbs: v,
        sub_boxes: &sb,
        obj_boxes: &ob,
    };
    let sizes: Vec<[usize; 2]> =
        fx.input("orig_size").to_i64().chunks_exact(2).map(|s| [s[0] as usize, s[1] as usize]).collect();
    let det = postprocess_hoi(&raw, &sizes, &PostProcessConfig::default()).expect("post-process").remove(0);
    let reference = reference_detections(fx);
    assert_eq!(det.labels, reference.labels, "post.labels");
    assert_eq!(det.sub_ids, reference.sub_ids, "post.sub_ids");
    assert_eq!(det.obj_ids, reference.obj_ids, "post.obj_ids");
    let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let boxes = |d: &HoiDetections| d.boxes.iter().flatten().map(|&v| v as f64).collect::<Vec<_>>();
    let mut checks = vec![
        value_check(fx, "post.boxes", &boxes(&det), &fx.output("f64/post.boxes").to_f64()),
        value_check(fx, "post.verb_scores", &f64s(&det.verb_scores), &fx.output("f64/post.verb_scores").to_f64()),
    ];

    let corre = read_npy(&golden_root().join("eval/hico_eval/default_40img/corre_hico.npy"));
    assert_eq!(corre.shape, [117, 80], "corre_hico shape");
    let mask = VerbObjectMask::new(117, 80, corre.f64()).expect("mask");
    let nms = TripletNms::default();
    // Our model's predictions: sets, scores within tolerance, order outside near-ties.
    let top = hico_predictions(&det, &mask, 100, None).expect("top-100");
    checks.push(compare_hico_list(fx, "top100", &top, false));
    let kept = hico_predictions(&det, &mask, 100, Some(&nms)).expect("nms");
    checks.push(compare_hico_list(fx, "nms", &kept, false));
    // The reference's own post-processed outputs: the official lists exactly.
    for (list, nms) in [("top100", None), ("nms", Some(&nms))] {
        let kept = hico_predictions(&reference, &mask, 100, nms).expect("hico list");
        let mut c = compare_hico_list(fx, list, &kept, true);
        c.name = format!("hico.{list}.score (f64 post)");
        checks.push(c);
    }
    checks
}

fn run_case(name: &str, pooled_from: Option<&str>) {
    let device = rlip_backends::default_device().expect("flex");
    let fx = Fixture::named(name);
    let cfg = model_config(&fx).expect("config");
    let pooled = pooled_from.map(|src| Fixture::named(src).output("f64/text.pooled").to_tensor::<2>(&device));
    let parts = load_parts(&fx, &cfg, pooled, &device);
    let (ms, memory) = encode(&parts, &fx, &device);
    let text = fx.output("f64/text.resized").to_tensor::<4>(&device);
    let n_obj = fx.input("obj_pred_names_sums").to_i64()[0] as usize;
    let out = decode(&parts, &ms, memory.clone(), text, n_obj);
    let mut checks = tensor_checks(&fx, &out, &memory);
    if fx.has("post.verb_scores") {
        checks.extend(postprocess_checks(&fx, &out));
    }
    assert_all(&checks);
}

#[test]
fn r50_batch1_decoders_heads_postprocess() {
    run_case("rlipv2_parseda_r50", None);
}

#[test]
fn r50_batch2_padded_decoders_heads() {
    run_case("rlipv2_parseda_r50_batch2", Some("rlipv2_parseda_r50"));
}

// ---------------------------------------------------------------------------------------------
// Host-only replays of the `eval/` cases (official evaluator outputs on synthetic predictions).

/// A `.npy` array: little-endian, C order.
struct Npy {
    descr: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Npy {
    fn f64(&self) -> Vec<f64> {
        assert_eq!(self.descr, "<f8");
        self.data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    }
    fn f32(&self) -> Vec<f32> {
        assert_eq!(self.descr, "<f4");
        self.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }
    fn i64(&self) -> Vec<i64> {
        assert_eq!(self.descr, "<i8");
        self.data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    }
}

/// Minimal `.npy` (v1–v3) reader for the fixture arrays.
fn read_npy(path: &Path) -> Npy {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}: not .npy", path.display());
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).expect("header");
    let field = |k: &str| {
        let i = header.find(&format!("'{k}':")).unwrap_or_else(|| panic!("{k} in {header}")) + k.len() + 3;
        header[i..].trim_start()
    };
    assert!(field("fortran_order").starts_with("False"), "{}: Fortran order", path.display());
    let descr = field("descr")[1..].split('\'').next().expect("descr").to_string();
    let dims = field("shape");
    let shape = dims[1..dims.find(')').expect("shape")]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("dim"))
        .collect::<Vec<usize>>();
    let data = bytes[start + len..].to_vec();
    Npy { descr, shape, data }
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).expect("json")
}

#[test]
fn hico_candidates_and_triplet_nms_match_official_eval_case() {
    let dir = golden_root().join("eval/hico_eval/default_40img");
    let npy = |k: &str| read_npy(&dir.join(format!("preds_{k}.npy")));
    let (labels, boxes, scores) = (npy("labels"), npy("boxes"), npy("verb_scores"));
    let (sub_ids, obj_ids) = (npy("sub_ids").i64(), npy("obj_ids").i64());
    let (n_img, n_box, np, nv) = (labels.shape[0], labels.shape[1], scores.shape[1], scores.shape[2]);
    let (labels, boxes, scores) = (labels.i64(), boxes.f32(), scores.f32());
    let corre = read_npy(&dir.join("corre_hico.npy"));
    let mask = VerbObjectMask::new(corre.shape[0], corre.shape[1], corre.f64()).expect("mask");
    let expected = json(&dir.join("expected.json"));
    assert_eq!(expected["settings"]["max_hois"], 100);
    let nms = TripletNms::default();
    for i in 0..n_img {
        let det = HoiDetections {
            labels: labels[i * n_box..(i + 1) * n_box].to_vec(),
            boxes: boxes[i * n_box * 4..(i + 1) * n_box * 4].chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect(),
            verb_scores: scores[i * np * nv..(i + 1) * np * nv].to_vec(),
            num_verbs: nv,
            sub_ids: sub_ids[i * np..(i + 1) * np].iter().map(|&x| x as usize).collect(),
            obj_ids: obj_ids[i * np..(i + 1) * np].iter().map(|&x| x as usize).collect(),
        };
        for (run, nms) in [("without_nms", None), ("with_nms", Some(&nms))] {
            let ours = hico_predictions(&det, &mask, 100, nms).expect("predictions");
            let rows: Vec<(usize, usize, usize, f32)> = expected[run]["per_image_kept"][i]
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| {
                    let u = |j: usize| r[j].as_u64().expect("id") as usize;
                    (u(0), u(1), u(2), r[3].as_f64().expect("score") as f32)
                })
                .collect();
            let got: Vec<_> = ours.iter().map(|c| (c.subject_id, c.object_id, c.verb, c.score)).collect();
            assert_eq!(got, rows, "image {i}, {run}");
        }
    }
}

#[test]
fn postprocess_hoi_matches_official_eval_case() {
    let dir = golden_root().join("eval/postprocess/hoi_sgg_4img");
    let npy = |k: &str| read_npy(&dir.join(format!("{k}.npy")));
    let (obj, sub, verb) = (npy("hoi_raw_pred_obj_logits"), npy("hoi_raw_pred_sub_logits"), npy("hoi_raw_pred_verb_logits"));
    let (sb, ob) = (npy("hoi_raw_pred_sub_boxes").f32(), npy("hoi_raw_pred_obj_boxes").f32());
    let (b, p, c, v) = (obj.shape[0], obj.shape[1], obj.shape[2], verb.shape[2]);
    let (obj, sub, verb) = (obj.f32(), sub.f32(), verb.f32());
    let sizes: Vec<[usize; 2]> =
        npy("orig_size_hw").i64().chunks_exact(2).map(|s| [s[0] as usize, s[1] as usize]).collect();
    let raw = HoiHeadOutputs {
        batch: b,
        pairs: p,
        obj_logits: &obj,
        sub_logits: Some(&sub),
        num_obj_classes: c,
        verb_logits: &verb,
        num_verbs: v,
        sub_boxes: &sb,
        obj_boxes: &ob,
    };
    let expected = json(&dir.join("expected.json"));
    for (run, subject_filter) in [("hoi", false), ("hoi_zero_shot_nf", true)] {
        let cfg = PostProcessConfig { subject_category_id: 0, subject_filter };
        let ours = postprocess_hoi(&raw, &sizes, &cfg).expect("post-process");
        for (i, (d, e)) in ours.iter().zip(expected[run].as_array().expect("images")).enumerate() {
            let ints = |k: &str| e[k].as_array().expect(k).iter().map(|x| x.as_i64().expect("int")).collect::<Vec<_>>();
            let ctx = format!("{run}, image {i}");
            assert_eq!(d.num_pairs() as u64, e["num_pairs"].as_u64().expect("num_pairs"), "{ctx}");
            assert_eq!(d.labels, ints("labels"), "{ctx}: labels");
            assert_eq!(d.sub_ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), ints("sub_ids"), "{ctx}: sub_ids");
            assert_eq!(d.obj_ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), ints("obj_ids"), "{ctx}: obj_ids");
            let exp_boxes = e["boxes"].as_array().expect("boxes").iter().flat_map(|r| r.as_array().expect("box").clone());
            for (got, want) in d.boxes.iter().flatten().zip(exp_boxes) {
                assert!((*got as f64 - want.as_f64().expect("coord")).abs() <= 1e-3, "{ctx}: box {got} vs {want}");
            }
            let exp_scores =
                e["verb_scores"].as_array().expect("scores").iter().flat_map(|r| r.as_array().expect("row").clone());
            let mut n = 0;
            for (got, want) in d.verb_scores.iter().zip(exp_scores) {
                let want = want.as_f64().expect("score");
                assert!((*got as f64 - want).abs() <= 1e-5 * want.abs() + 1e-9, "{ctx}: score {got} vs {want}");
                n += 1;
            }
            assert_eq!(n, d.verb_scores.len(), "{ctx}: score count");
        }
    }
}
