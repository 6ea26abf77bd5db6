//! RLIPv2-ParSeDA end to end: backbone → input projections → ALIF encoder (with the RoBERTa
//! label encoder) → ParSe subject/object and relation decoders → heads.
//!
//! Reference: Yuan et al., "RLIPv2: Fast Scaling of Relational Language-Image Pre-training",
//! ICCV 2023; official code `models/hoi.py::RLIP_ParSeDA` with
//! `models/dab_deformable/deformable_transformer.py::RLIP_ParSeDABDeformableTransformer_v2`.
//! Parameters are loaded by their official `state_dict` keys (see [`crate::weights`]).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::alif::{AlifConfig, AlifEncoder, AlifTrace};
use crate::backbone::{Backbone, BackboneConfig, ResNetConfig, SwinConfig};
use crate::encoder::{InputProjections, MultiScale};
use crate::msda::MsdaConfig;
use crate::parse_decoder::{
    DecoderConfig, DecoderKind, DecoderOutput, Memory, MultiBranchFusion, ParseDecoder, Queries,
};
use crate::position::PaddingMask;
use crate::prediction_heads::{Heads, LayerPredictions};
use crate::text::roberta::{ConfigError, check_divisible, check_positive};
use crate::text::{RobertaConfig, RobertaModel};
use crate::weights::{Loader, StateDict};

/// Configuration of an RLIPv2-ParSeDA model (JSON-loadable; presets below).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlipConfig {
    /// Visual backbone.
    pub backbone: BackboneConfig,
    /// Transformer width.
    pub hidden_dim: usize,
    /// Subject/object queries (pairs = half of them).
    pub num_queries: usize,
    /// Feature levels (backbone levels plus strided extra levels).
    pub num_feature_levels: usize,
    /// Attention heads (encoder, decoders).
    pub nheads: usize,
    /// Encoder layers.
    pub enc_layers: usize,
    /// Layers per decoder.
    pub dec_layers: usize,
    /// Feed-forward width.
    pub dim_feedforward: usize,
    /// Sampling points per head and level in the encoder.
    pub enc_n_points: usize,
    /// Sampling points per head and level in the decoders.
    pub dec_n_points: usize,
    /// A language fusion round precedes every `fusion_interval`-th encoder layer.
    pub fusion_interval: usize,
    /// Heads of the fusion bi-attention.
    pub fusion_heads: usize,
    /// Inner width of the fusion bi-attention.
    pub fusion_dim: usize,
    /// Branches of the MultiBranchFusion that builds relation queries.
    pub mbf_cardinality: usize,
    /// Label encoder (RoBERTa).
    pub text: RobertaConfig,
    /// Evaluation resize: shorter side.
    pub eval_size: usize,
    /// Evaluation resize: longer side cap.
    pub eval_max_size: usize,
}

impl RlipConfig {
    fn parseda(backbone: BackboneConfig, num_queries: usize) -> Self {
        Self {
            backbone,
            hidden_dim: 256,
            num_queries,
            num_feature_levels: 4,
            nheads: 8,
            enc_layers: 6,
            dec_layers: 3,
            dim_feedforward: 2048,
            enc_n_points: 4,
            dec_n_points: 4,
            fusion_interval: 2,
            fusion_heads: 8,
            fusion_dim: 2048,
            mbf_cardinality: 16,
            text: RobertaConfig::roberta_base(),
            eval_size: 800,
            eval_max_size: 1333,
        }
    }

    /// RLIPv2-ParSeDA with ResNet-50 (HICO-DET fine-tuning: 128 queries = 64 pairs).
    pub fn r50() -> Self {
        Self::parseda(BackboneConfig::ResNet(ResNetConfig::resnet50()), 128)
    }

    /// RLIPv2-ParSeDA with Swin-T.
    pub fn swin_t() -> Self {
        Self::parseda(BackboneConfig::Swin(SwinConfig::tiny()), 128)
    }

    /// RLIPv2-ParSeDA with Swin-L (200 queries).
    pub fn swin_l() -> Self {
        Self::parseda(BackboneConfig::Swin(SwinConfig::large()), 200)
    }

    /// A small model for tests and the CPU demo: a narrow ResNet-18 (16 channels in the stem,
    /// no official weights), transformer width 64, 16 queries, a tiny label encoder.
    pub fn small() -> Self {
        Self {
            backbone: BackboneConfig::ResNet(ResNetConfig {
                width: 16,
                ..ResNetConfig::resnet18()
            }),
            hidden_dim: 64,
            num_queries: 16,
            num_feature_levels: 4,
            nheads: 4,
            enc_layers: 2,
            dec_layers: 2,
            dim_feedforward: 128,
            enc_n_points: 2,
            dec_n_points: 2,
            fusion_interval: 2,
            fusion_heads: 4,
            fusion_dim: 64,
            mbf_cardinality: 4,
            text: RobertaConfig::tiny(),
            eval_size: 128,
            eval_max_size: 213,
        }
    }

    /// A preset by name: `r50`, `swin_t`, `swin_l`, `small`.
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "r50" => Self::r50(),
            "swin_t" => Self::swin_t(),
            "swin_l" => Self::swin_l(),
            "small" => Self::small(),
            _ => return None,
        })
    }

    /// Checks the sizes a forward pass relies on: the encoder's (see [`AlifConfig::validate`]), an
    /// even positive query count (subject and object halves), at least one decoder and encoder
    /// layer, and 4 feature levels (the backbone's three plus the extra stride-64 level).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.alif().validate()?;
        check_positive(&[
            ("num_queries", self.num_queries),
            ("enc_layers", self.enc_layers),
            ("dec_layers", self.dec_layers),
            ("dec_n_points", self.dec_n_points),
            ("mbf_cardinality", self.mbf_cardinality),
            ("eval_size", self.eval_size),
        ])?;
        check_divisible(("num_queries", self.num_queries), ("pairs of", 2))?;
        check_divisible(
            ("hidden_dim", self.hidden_dim),
            ("mbf_cardinality", self.mbf_cardinality),
        )?;
        if self.num_feature_levels != 4 {
            return Err(ConfigError::Unsupported(format!(
                "num_feature_levels = {} (RLIPv2-ParSeDA uses the backbone's 3 levels plus one extra: 4)",
                self.num_feature_levels
            )));
        }
        if self.eval_max_size < self.eval_size {
            return Err(ConfigError::Unsupported(format!(
                "eval_max_size = {} is smaller than eval_size = {}",
                self.eval_max_size, self.eval_size
            )));
        }
        Ok(())
    }

    /// A preset name (`r50`, `swin_t`, `swin_l`, `small`) or the path of a JSON configuration,
    /// validated.
    pub fn resolve(spec: &str) -> Result<Self, ConfigError> {
        let cfg = match Self::preset(spec) {
            Some(c) => c,
            None => {
                let bytes = std::fs::read(spec).map_err(|e| {
                    ConfigError::Unsupported(format!(
                        "'{spec}' is neither a preset (r50, swin_t, swin_l, small) nor a readable JSON file: {e}"
                    ))
                })?;
                serde_json::from_slice(&bytes).map_err(|e| {
                    ConfigError::Unsupported(format!("{spec}: malformed config: {e}"))
                })?
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The encoder configuration.
    pub fn alif(&self) -> AlifConfig {
        AlifConfig {
            msda: MsdaConfig {
                d_model: self.hidden_dim,
                n_levels: self.num_feature_levels,
                n_heads: self.nheads,
                n_points: self.enc_n_points,
            },
            n_layers: self.enc_layers,
            d_ffn: self.dim_feedforward,
            fusion_interval: self.fusion_interval,
            fusion_heads: self.fusion_heads,
            fusion_dim: self.fusion_dim,
            text: self.text.clone(),
            apply_fusion_masks: false,
        }
    }

    /// The decoder configuration.
    pub fn decoder(&self) -> DecoderConfig {
        DecoderConfig {
            d_model: self.hidden_dim,
            d_ffn: self.dim_feedforward,
            layers: self.dec_layers,
            msda: MsdaConfig {
                d_model: self.hidden_dim,
                n_levels: self.num_feature_levels,
                n_heads: self.nheads,
                n_points: self.dec_n_points,
            },
        }
    }
}

/// Encoded label texts: pooled RoBERTa features and the object/relation split.
#[derive(Debug, Clone)]
pub struct LabelFeatures {
    /// `[L, d_text]` pooled features: object texts (with "no objects" last), then relations.
    pub pooled: Tensor<2>,
    /// Number of object texts (including "no objects").
    pub n_obj: usize,
}

/// Everything one forward pass produces.
#[derive(Debug, Clone)]
pub struct RlipOutput {
    /// Predictions per decoder layer (the last is the model output, the others auxiliary).
    pub layers: Vec<LayerPredictions>,
    /// The flattened multi-scale input.
    pub multiscale: MultiScale,
    /// Encoder memory `[B, S, d]`.
    pub memory: Tensor<3>,
    /// Resized per-round text `[rounds, L, B, d]`.
    pub text_resized: Tensor<4>,
    /// Subject/object decoder outputs.
    pub ho: DecoderOutput,
    /// Relation decoder outputs.
    pub verb: DecoderOutput,
    /// `[B, P, d]` MultiBranchFusion of the last subject and object features.
    pub mbf: Tensor<3>,
    /// `[B, P, d]` relation decoder input content.
    pub verb_tgt: Tensor<3>,
    /// ALIF intermediates.
    pub alif: AlifTrace,
}

/// The RLIPv2-ParSeDA model.
#[derive(Module, Debug)]
pub struct RlipParSeDa {
    /// Visual backbone (`backbone.0.body`).
    pub backbone: Backbone,
    /// Input projections and level embeddings.
    pub input_proj: InputProjections,
    /// RoBERTa label encoder (`transformer.text_encoder`).
    pub text_encoder: RobertaModel,
    /// ALIF encoder (`transformer.encoder`, `transformer.resizer`).
    pub encoder: AlifEncoder,
    /// Subject/object decoder (`transformer.ho_decoder`).
    pub ho_decoder: ParseDecoder,
    /// Relation decoder (`transformer.verb_decoder`).
    pub verb_decoder: ParseDecoder,
    /// Relation query generator (`transformer.verb_tgt_generator`).
    pub verb_tgt_generator: MultiBranchFusion,
    /// Learned queries and anchors.
    pub queries: Queries,
    /// Box and class heads.
    pub heads: Heads,
    #[module(skip)]
    dec_layers: usize,
    #[module(skip)]
    num_queries: usize,
}

impl RlipParSeDa {
    /// Builds the model from official keys (missing keys are initialised by the official rules
    /// when the loader allows a partial load).
    pub fn load(ld: &mut Loader, cfg: &RlipConfig) -> Self {
        let d = cfg.hidden_dim;
        let dec = cfg.decoder();
        let backbone = Backbone::load(ld, "backbone.0.body", &cfg.backbone);
        let input_proj = InputProjections::load(
            ld,
            &cfg.backbone.out_channels(),
            cfg.num_feature_levels,
            d,
            cfg.backbone.pos_offset(),
        );
        let text_encoder = RobertaModel::load(ld, "transformer.text_encoder", &cfg.text);
        let encoder = AlifEncoder::load(ld, &cfg.alif());
        let ho_decoder = ParseDecoder::load(
            ld,
            "transformer.ho_decoder",
            &dec,
            DecoderKind::SubjectObject,
        );
        let verb_decoder =
            ParseDecoder::load(ld, "transformer.verb_decoder", &dec, DecoderKind::Relation);
        let verb_tgt_generator = MultiBranchFusion::load(
            ld,
            "transformer.verb_tgt_generator",
            d,
            d,
            cfg.mbf_cardinality,
        );
        let queries = Queries::load(ld, cfg.num_queries, d);
        let heads = Heads::load(ld, d, cfg.dec_layers);
        Self {
            backbone,
            input_proj,
            text_encoder,
            encoder,
            ho_decoder,
            verb_decoder,
            verb_tgt_generator,
            queries,
            heads,
            dec_layers: cfg.dec_layers,
            num_queries: cfg.num_queries,
        }
    }

    /// A freshly initialised model (the official initialisation rules, fixed seed) and its
    /// parameters as a state dict under the official keys (for tests, benchmarks, training from
    /// scratch).
    pub fn init(cfg: &RlipConfig, device: &Device) -> (Self, StateDict) {
        Self::init_as(cfg, device, None)
    }

    /// [`RlipParSeDa::init`] with float tensors created in `dtype` (`None`: the device default).
    pub fn init_as(
        cfg: &RlipConfig,
        device: &Device,
        dtype: Option<burn::tensor::FloatDType>,
    ) -> (Self, StateDict) {
        let empty = StateDict::new();
        let mut ld = Loader::new(&empty, device, "initialisation")
            .allow_partial(true)
            .record_inits(true)
            .float_dtype(dtype);
        let model = Self::load(&mut ld, cfg);
        let (_, sd) = ld
            .finish_with_inits()
            .expect("a partial load of an empty state dict has no mismatches");
        (model, sd)
    }

    /// Encodes tokenised labels (`[L, T]` ids and attention mask) into pooled features.
    pub fn encode_labels(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        n_obj: usize,
    ) -> LabelFeatures {
        LabelFeatures {
            pooled: self.text_encoder.pooled(input_ids, attention_mask),
            n_obj,
        }
    }

    /// Runs the model on a zero-padded image batch `[B, 3, H, W]` with its padding `mask`.
    pub fn forward(
        &self,
        images: Tensor<4>,
        mask: &PaddingMask,
        labels: &LabelFeatures,
    ) -> RlipOutput {
        let device = images.device();
        let b = mask.batch;
        let feats = self.backbone.forward(images);
        let ms = self.input_proj.forward(&feats, mask);
        let [l, dt] = labels.pooled.dims();
        let lang = labels.pooled.clone().reshape([1, l, dt]).expand([b, l, dt]);
        let text_mask =
            Tensor::<2, Bool>::from_data(TensorData::new(vec![false; b * l], [b, l]), &device);
        let (enc, trace) = self.encoder.forward_traced(&ms, lang, text_mask);

        let ratios = ms.valid_ratios_flat();
        let n_levels = ms.shapes.len();
        let mem = Memory {
            src: enc.memory.clone(),
            shapes: &ms.shapes,
            padding: ms.padding.clone(),
            valid_ratios: Tensor::from_data(TensorData::new(ratios, [b, n_levels, 2]), &device),
        };
        let q = self.num_queries;
        let p = q / 2;
        let d = self.queries.tgt.dims()[1];
        let anchors = burn::tensor::activation::sigmoid(self.queries.anchors.val());
        let anchor = |r: std::ops::Range<usize>| {
            anchors
                .clone()
                .slice(s![r])
                .reshape([1, p, 4])
                .expand([b, p, 4])
        };
        let (sub0, obj0) = (anchor(0..p), anchor(p..q));
        let tgt = self.queries.tgt.val().reshape([1, q, d]).expand([b, q, d]);
        let n = self.dec_layers;
        let ho = self.ho_decoder.forward(
            tgt,
            (sub0.clone(), obj0.clone()),
            &mem,
            &self.heads.box_heads(false, n),
        );

        let last = ho.hs[n - 1].clone();
        let mbf = self
            .verb_tgt_generator
            .forward(last.clone().slice(s![.., 0..p]), last.slice(s![.., p..q]));
        let vt = self.queries.verb_tgt.val();
        let verb_tgt =
            mbf.clone() + (vt.clone().slice(s![0..p]) + vt.slice(s![p..q])).reshape([1, p, d]);
        let verb = self.verb_decoder.forward(
            verb_tgt.clone(),
            ho.refs[n - 1].clone(),
            &mem,
            &self.heads.box_heads(true, n),
        );

        let [rounds, n_text, _, d_text] = enc.text_resized.dims();
        // layers past the last fusion round share its text: one classifier per round
        let mut classifiers: Vec<Option<Tensor<3>>> = vec![None; rounds];
        let layers = (0..n)
            .map(|lvl| {
                let r = lvl.min(rounds - 1);
                let cls = classifiers[r]
                    .get_or_insert_with(|| {
                        let text = enc
                            .text_resized
                            .clone()
                            .slice(s![r..r + 1])
                            .reshape([n_text, b, d_text])
                            .swap_dims(0, 1);
                        self.heads.text_classifiers(text)
                    })
                    .clone();
                self.heads.predict(
                    ho.hs[lvl].clone(),
                    verb.hs[lvl].clone(),
                    ho.boxes[lvl].clone(),
                    cls,
                    labels.n_obj,
                )
            })
            .collect();
        RlipOutput {
            layers,
            multiscale: ms,
            memory: enc.memory,
            text_resized: enc.text_resized,
            ho,
            verb,
            mbf,
            verb_tgt,
            alif: trace,
        }
    }
}
