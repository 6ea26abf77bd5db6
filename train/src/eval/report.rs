//! Whole-split evaluation: runs the evaluators a dataset needs on predictions aligned to an
//! [`EvalSplit`] and collects the numbers papers report, plus per-class APs, in an
//! [`EvalReport`] (serialisable to JSON; [`EvalReport::table`] prints it).
//!
//! All metric values are fractions in [0, 1] (the tables print percentages). `NaN` (written as
//! JSON `null`) means "no class in that bucket".
//!
//! | dataset | headline metrics | evaluators |
//! |---|---|---|
//! | HICO-DET | Full / Rare / Non-Rare mAP (zero-shot: Full / Unseen / Seen) in the Default and the Known-Object setting | [`super::hico::evaluate_hico`] twice |
//! | V-COCO | role AP scenario 1 and 2, agent AP (official `vsrl_eval`), plus the in-training `mAP_all` | [`super::vcoco::evaluate_vcoco_official`] on the `generate_vcoco_official.py` detections, [`super::vcoco::evaluate_vcoco_in_training`] |
//! | Open Images | R@50, wmAP_rel, wmAP_phr, score_wtd | [`super::oi::evaluate_oi`] (top-K 50 and 100) |

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rlip_data::vcoco::VcocoDetection;
use serde::Serialize;

use super::hico::{
    Bucket, HicoCorrections, HicoEvalConfig, HicoMetrics, HicoSetting, Triplet, ZeroShotSetting,
    evaluate_hico,
};
use super::oi::{
    OiCorrections, OiEvalConfig, OiModeResult, OiRecallCounts, OiSummary, OiTopKMetrics,
    evaluate_oi,
};
use super::split::{Dataset, EvalSplit, SplitGt};
use super::vcoco::{
    VcocoClassResult, VcocoInTrainingOptions, VcocoOfficialReport, evaluate_vcoco_in_training,
    evaluate_vcoco_official, vcoco_detections_from_predictions,
};
use super::{EvalError, PairPredictions, invalid};

/// Options of [`evaluate_split`]. The default reproduces the numbers of the official RLIPv2
/// fine-tuning scripts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalOptions {
    /// Triplet NMS before matching (HICO-DET and Open Images; `--use_nms_filter`, which every
    /// RLIPv2 HICO-DET and Open Images script passes). Default `true`.
    pub use_nms: bool,
    /// HICO-DET corrections of official defects (default: none, official numbers).
    pub hico_corrections: HicoCorrections,
    /// Open Images corrections of official defects (default: none).
    pub oi_corrections: OiCorrections,
    /// V-COCO: also run the in-training evaluator (`mAP_all`, `mAP_thesis`). Default `true`.
    pub vcoco_in_training: bool,
    /// Options of the V-COCO in-training evaluator (default: official).
    pub vcoco_in_training_options: VcocoInTrainingOptions,
    /// IoU threshold of the official V-COCO evaluator (0.5).
    pub vcoco_ovr_thresh: f32,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            use_nms: true,
            hico_corrections: HicoCorrections::default(),
            oi_corrections: OiCorrections::default(),
            vcoco_in_training: true,
            vcoco_in_training_options: VcocoInTrainingOptions::default(),
            vcoco_ovr_thresh: 0.5,
        }
    }
}

impl EvalOptions {
    /// Whether any correction of an official defect is switched on (the numbers are then not
    /// comparable with published ones).
    pub fn corrected(&self) -> bool {
        self.hico_corrections != HicoCorrections::default()
            || self.oi_corrections != OiCorrections::default()
            || self.vcoco_in_training_options.match_free_gt
    }
}

/// One headline number.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadlineMetric {
    /// Name, e.g. `"Default Full mAP"`, `"AP_role scenario 1"`, `"R@50"`.
    pub name: String,
    /// Value in [0, 1] (NaN when undefined).
    pub value: f64,
}

/// Per-class counts and AP of one setting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassStats {
    /// Predictions counted.
    pub n_pred: usize,
    /// True positives.
    pub n_tp: usize,
    /// AP.
    pub ap: f64,
    /// Recall after the last prediction.
    pub max_recall: f64,
}

/// One HICO-DET test triplet class in both settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HicoClassAps {
    /// (subject idx, object idx, verb idx).
    pub triplet: Triplet,
    /// (subject COCO id, object COCO id, verb id 1..117).
    pub triplet_ids: (i64, i64, i64),
    /// Rare / non-rare (zero-shot: unseen / seen) / neither.
    pub bucket: Bucket,
    /// GT instances.
    pub n_gt: usize,
    /// Default setting.
    pub default: ClassStats,
    /// Known-Object setting.
    pub known_object: ClassStats,
}

/// HICO-DET results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HicoSplitReport {
    /// The zero-shot setting when the buckets are unseen ("rare") / seen ("non-rare").
    pub zero_shot: Option<ZeroShotSetting>,
    /// Default setting (official).
    pub default: HicoMetrics,
    /// Known-Object setting (our addition; the official RLIPv2 code lacks it).
    pub known_object: HicoMetrics,
    /// Per test triplet class, in the evaluator's order (first appearance in the GT).
    pub per_class: Vec<HicoClassAps>,
}

/// The in-training V-COCO metric, without the per-image lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcocoInTrainingSummary {
    /// Mean AP over the verb-role classes with GT.
    #[serde(rename = "mAP_all")]
    pub map_all: f64,
    /// Mean AP over the 24 "thesis" classes.
    #[serde(rename = "mAP_thesis")]
    pub map_thesis: f64,
    /// Per verb-role class with GT.
    pub per_class: Vec<VcocoClassResult>,
}

/// V-COCO results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VcocoSplitReport {
    /// Official `vsrl_eval`: agent AP and role AP per action(-role), scenarios 1 and 2.
    pub official: VcocoOfficialReport,
    /// The in-training evaluator (absent when evaluating a detection pickle, or when disabled).
    pub in_training: Option<VcocoInTrainingSummary>,
}

/// One Open Images test triplet, with names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OiClassAps {
    /// (subject label, object label, relation).
    pub triplet: Triplet,
    /// (subject name, object name, relation name).
    pub names: (String, String, String),
    /// GT instances.
    pub n_gt: usize,
    /// Relation detection.
    pub rel: OiModeResult,
    /// Phrase detection.
    pub phr: OiModeResult,
}

/// Open Images results of one K.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OiTopKReport {
    /// K.
    pub top_k: usize,
    /// Metrics of this K.
    pub metrics: OiTopKMetrics,
    /// Recall sums.
    pub recall_counts: OiRecallCounts,
    /// Per test triplet.
    pub per_class: Vec<OiClassAps>,
}

/// Open Images results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OiSplitReport {
    /// R@50, wmAP_rel, wmAP_phr, score_wtd.
    pub summary: OiSummary,
    /// Every metric with its official name (`mAP@100 (RelD)`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// K = 50 and K = 100.
    pub top_k: Vec<OiTopKReport>,
}

/// The result of [`evaluate_split`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Dataset.
    pub dataset: Dataset,
    /// Test images.
    pub num_images: usize,
    /// Options used.
    pub options: EvalOptions,
    /// The numbers papers report, in table order.
    pub headline: Vec<HeadlineMetric>,
    /// HICO-DET details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hico: Option<HicoSplitReport>,
    /// V-COCO details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcoco: Option<VcocoSplitReport>,
    /// Open Images details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oi: Option<OiSplitReport>,
    /// Warnings (classes in neither bucket, split inconsistencies).
    pub warnings: Vec<String>,
}

impl EvalReport {
    /// The headline metric called `name`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.headline
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    /// The report as a table in the style of the papers (percentages, two decimals).
    pub fn table(&self) -> String {
        let mut s = String::new();
        let pct = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{:.2}", v * 100.0)
            }
        };
        let corrected = if self.options.corrected() {
            " (CORRECTED metric, not comparable with published numbers)"
        } else {
            ""
        };
        if let Some(h) = &self.hico {
            let nms = if self.options.use_nms {
                "triplet NMS"
            } else {
                "no NMS"
            };
            let _ = writeln!(
                s,
                "HICO-DET: {} test images, {} test triplet classes, {nms}{corrected}",
                self.num_images,
                h.per_class.len()
            );
            let (b1, b2) = match h.zero_shot {
                Some(z) => {
                    let _ = writeln!(s, "zero-shot setting {z:?}: Rare = unseen, Non-Rare = seen");
                    ("Unseen", "Seen")
                }
                None => ("Rare", "Non-Rare"),
            };
            let _ = writeln!(s, "{:<14} {:>8} {:>8} {:>9}", "", "Full", b1, b2);
            for (name, m) in [("Default", &h.default), ("Known Object*", &h.known_object)] {
                let _ = writeln!(
                    s,
                    "{:<14} {:>8} {:>8} {:>9}",
                    name,
                    pct(m.map),
                    pct(m.map_rare),
                    pct(m.map_non_rare)
                );
            }
            let _ = writeln!(
                s,
                "* Known Object is our addition (HICO-DET benchmark definition); the official RLIPv2 code does not compute it."
            );
        }
        if let Some(v) = &self.vcoco {
            let o = &v.official;
            let _ = writeln!(
                s,
                "V-COCO: {} test images (official vsrl_eval){corrected}",
                self.num_images
            );
            let _ = writeln!(
                s,
                "{:<24} {:>8}",
                "AP_role scenario 1",
                pct(o.scenario_1.average)
            );
            let _ = writeln!(
                s,
                "{:<24} {:>8}",
                "AP_role scenario 2",
                pct(o.scenario_2.average)
            );
            let _ = writeln!(s, "{:<24} {:>8}", "Agent AP", pct(o.agent_average));
            let _ = writeln!(
                s,
                "{:<24} {:>8}   (scenario 2: {})",
                "AP_role S1 w/o point",
                pct(o.scenario_1.average_without_point),
                pct(o.scenario_2.average_without_point)
            );
            let _ = writeln!(
                s,
                "{:<24} {:>8} {:>8} {:>6}",
                "action-role", "S1", "S2", "#pos"
            );
            for (a, b) in o.scenario_1.roles.iter().zip(&o.scenario_2.roles) {
                let _ = writeln!(
                    s,
                    "{:<24} {:>8} {:>8} {:>6}",
                    a.name,
                    pct(a.ap),
                    pct(b.ap),
                    a.npos
                );
            }
            if let Some(it) = &v.in_training {
                let _ = writeln!(
                    s,
                    "in-training metric (vcoco_eval.py): mAP_all {}  mAP_thesis {}",
                    pct(it.map_all),
                    pct(it.map_thesis)
                );
            }
        }
        if let Some(o) = &self.oi {
            let nms = if self.options.use_nms {
                "triplet + phrase NMS"
            } else {
                "no NMS"
            };
            let _ = writeln!(
                s,
                "Open Images v6: {} test images, {nms}{corrected}",
                self.num_images
            );
            let _ = writeln!(
                s,
                "{:>8} {:>9} {:>9} {:>10}",
                "R@50", "wmAP_rel", "wmAP_phr", "score_wtd"
            );
            let m = &o.summary;
            let _ = writeln!(
                s,
                "{:>8} {:>9} {:>9} {:>10}",
                pct(m.r50),
                pct(m.wmap_rel),
                pct(m.wmap_phr),
                pct(m.score_wtd)
            );
        }
        for w in &self.warnings {
            if w.to_ascii_lowercase().starts_with("warning") {
                let _ = writeln!(s, "{w}");
            } else {
                let _ = writeln!(s, "warning: {w}");
            }
        }
        s
    }
}

fn stats(c: &super::hico::HicoClassResult) -> ClassStats {
    ClassStats {
        n_pred: c.n_pred,
        n_tp: c.n_tp,
        ap: c.ap,
        max_recall: c.max_recall,
    }
}

/// Evaluates predictions aligned to `split` (`preds[i]` belongs to `split.images[i]`; see
/// [`super::read_predictions`]).
pub fn evaluate_split(
    split: &EvalSplit,
    preds: &[PairPredictions],
    options: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    if preds.len() != split.images.len() {
        return Err(invalid(format!(
            "{} prediction entries for a split of {} images",
            preds.len(),
            split.images.len()
        )));
    }
    let mut warnings = split.warnings.clone();
    let mut report = EvalReport {
        dataset: split.dataset,
        num_images: split.images.len(),
        options: *options,
        headline: Vec::new(),
        hico: None,
        vcoco: None,
        oi: None,
        warnings: Vec::new(),
    };
    match &split.gt {
        SplitGt::Hico(h) => {
            let base = if options.use_nms {
                HicoEvalConfig::official_with_nms()
            } else {
                HicoEvalConfig::default()
            };
            let base = HicoEvalConfig {
                corrections: options.hico_corrections,
                ..base
            };
            let def = evaluate_hico(preds, &h.gts, &h.correct_mat, &h.buckets, &base)?;
            let ko = evaluate_hico(
                preds,
                &h.gts,
                &h.correct_mat,
                &h.buckets,
                &HicoEvalConfig {
                    setting: HicoSetting::KnownObject,
                    ..base
                },
            )?;
            if def.per_class.len() != ko.per_class.len()
                || def
                    .per_class
                    .iter()
                    .zip(&ko.per_class)
                    .any(|(a, b)| a.triplet != b.triplet)
            {
                return Err(invalid(
                    "Default and Known-Object class lists differ (internal error)",
                ));
            }
            warnings.extend(def.warnings.iter().cloned());
            let (r, n) = if h.zero_shot.is_some() {
                ("Unseen", "Seen")
            } else {
                ("Rare", "Non-Rare")
            };
            for (setting, m) in [("Default", &def.metrics), ("Known Object", &ko.metrics)] {
                for (bucket, v) in [("Full", m.map), (r, m.map_rare), (n, m.map_non_rare)] {
                    report.headline.push(HeadlineMetric {
                        name: format!("{setting} {bucket} mAP"),
                        value: v,
                    });
                }
            }
            report.hico = Some(HicoSplitReport {
                zero_shot: h.zero_shot,
                default: def.metrics,
                known_object: ko.metrics,
                per_class: def
                    .per_class
                    .iter()
                    .zip(&ko.per_class)
                    .map(|(a, b)| HicoClassAps {
                        triplet: a.triplet,
                        triplet_ids: a.triplet_ids,
                        bucket: a.bucket,
                        n_gt: a.n_gt,
                        default: stats(a),
                        known_object: stats(b),
                    })
                    .collect(),
            });
        }
        SplitGt::Vcoco(v) => {
            let dets = vcoco_detections_from_predictions(preds, &v.image_ids, &v.correct_mat)?;
            let official = evaluate_vcoco_official(&dets, &v.official, options.vcoco_ovr_thresh)?;
            drop(dets);
            let in_training = if options.vcoco_in_training {
                let r = evaluate_vcoco_in_training(
                    preds,
                    &v.gts,
                    &v.correct_mat,
                    &options.vcoco_in_training_options,
                )?;
                Some(VcocoInTrainingSummary {
                    map_all: r.map_all,
                    map_thesis: r.map_thesis,
                    per_class: r.per_class,
                })
            } else {
                None
            };
            report.headline = vcoco_headline(&official);
            if let Some(it) = &in_training {
                report.headline.push(HeadlineMetric {
                    name: "in-training mAP_all".into(),
                    value: it.map_all,
                });
            }
            report.vcoco = Some(VcocoSplitReport {
                official,
                in_training,
            });
        }
        SplitGt::Oi(o) => {
            let cfg = OiEvalConfig {
                use_nms: options.use_nms,
                corrections: options.oi_corrections,
                ..OiEvalConfig::default()
            };
            let r = evaluate_oi(preds, &o.gts, &cfg)?;
            let summary = r
                .summary
                .ok_or_else(|| invalid("Open Images summary needs K = 50 and 100"))?;
            let name = |list: &[String], i: i64| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| list.get(i))
                    .cloned()
                    .unwrap_or_else(|| format!("#{i}"))
            };
            let cats = &o.categories;
            report.headline = vec![
                HeadlineMetric {
                    name: "R@50".into(),
                    value: summary.r50,
                },
                HeadlineMetric {
                    name: "wmAP_rel".into(),
                    value: summary.wmap_rel,
                },
                HeadlineMetric {
                    name: "wmAP_phr".into(),
                    value: summary.wmap_phr,
                },
                HeadlineMetric {
                    name: "score_wtd".into(),
                    value: summary.score_wtd,
                },
            ];
            report.oi = Some(OiSplitReport {
                summary,
                metrics: r.metrics.clone(),
                top_k: r
                    .top_k
                    .iter()
                    .map(|t| OiTopKReport {
                        top_k: t.top_k,
                        metrics: t.metrics,
                        recall_counts: t.recall_counts,
                        per_class: t
                            .per_class
                            .iter()
                            .map(|c| OiClassAps {
                                triplet: c.triplet,
                                names: (
                                    name(&cats.obj, c.triplet.0),
                                    name(&cats.obj, c.triplet.1),
                                    name(&cats.rel, c.triplet.2),
                                ),
                                n_gt: c.n_gt,
                                rel: c.rel,
                                phr: c.phr,
                            })
                            .collect(),
                    })
                    .collect(),
            });
        }
    }
    report.warnings = warnings;
    Ok(report)
}

fn vcoco_headline(o: &VcocoOfficialReport) -> Vec<HeadlineMetric> {
    vec![
        HeadlineMetric {
            name: "AP_role scenario 1".into(),
            value: o.scenario_1.average,
        },
        HeadlineMetric {
            name: "AP_role scenario 2".into(),
            value: o.scenario_2.average,
        },
        HeadlineMetric {
            name: "Agent AP".into(),
            value: o.agent_average,
        },
    ]
}

/// Evaluates a V-COCO detection list as `generate_vcoco_official.py` writes it (read the
/// pickle with [`rlip_data::vcoco::load_vcoco_detections_pickle`]) with the official evaluator
/// only; detections of images outside the official test ids are ignored, as `vsrl_eval` does.
pub fn evaluate_vcoco_detections(
    split: &EvalSplit,
    dets: &[VcocoDetection],
    options: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    let SplitGt::Vcoco(v) = &split.gt else {
        return Err(invalid(format!(
            "a V-COCO detection list cannot be evaluated on {}",
            split.dataset
        )));
    };
    let official = evaluate_vcoco_official(dets, &v.official, options.vcoco_ovr_thresh)?;
    Ok(EvalReport {
        dataset: split.dataset,
        num_images: split.images.len(),
        options: EvalOptions {
            vcoco_in_training: false,
            ..*options
        },
        headline: vcoco_headline(&official),
        hico: None,
        vcoco: Some(VcocoSplitReport {
            official,
            in_training: None,
        }),
        oi: None,
        warnings: split.warnings.clone(),
    })
}
