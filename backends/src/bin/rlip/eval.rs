//! `rlip eval`: evaluates a test split (HICO-DET, V-COCO, Open Images) with the official RLIPv2
//! metrics, from saved predictions or (to come) by running a checkpoint.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use rlip_backends::BackendKind;
use rlip_data::labels::LabelSet;
use rlip_train::eval::split::SplitGt;
use rlip_train::infer::PairMode;

use crate::infer::{ModelArgs, build_predictor};
use rlip_data::vcoco::load_vcoco_detections_pickle;
use rlip_train::eval::hico::{HicoCorrections, ZeroShotSetting};
use rlip_train::eval::oi::OiCorrections;
use rlip_train::eval::predictions::{MissingImages, align_predictions, write_atomic};
use rlip_train::eval::vcoco::VcocoInTrainingOptions;
use rlip_train::eval::{
    Dataset, EvalOptions, EvalReport, EvalSplit, PairPredictions, SplitConfig, evaluate_split,
    evaluate_vcoco_detections, load_split_with, read_predictions_file, write_split_predictions,
};

/// The dataset of `rlip eval` and `rlip train`; each command's `--dataset` documents the files
/// it reads.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetArg {
    /// HICO-DET.
    Hico,
    /// V-COCO in the HOIA layout.
    Vcoco,
    /// Open Images v6 scene graphs.
    Oi,
}

impl From<DatasetArg> for Dataset {
    fn from(d: DatasetArg) -> Self {
        match d {
            DatasetArg::Hico => Dataset::Hico,
            DatasetArg::Vcoco => Dataset::Vcoco,
            DatasetArg::Oi => Dataset::Oi,
        }
    }
}

/// HICO-DET zero-shot settings.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroShotArg {
    /// Unseen composition, rare first.
    UcRf,
    /// Unseen composition, non-rare first.
    UcNf,
    /// Unseen object.
    Uo,
    /// The unseen HOIs of `annotations/unseen_hoi.json` (0-based indices into
    /// `hoi_list_new.json`), for HICO-format datasets with their own classes (`labels.json`).
    UnseenFile,
}

/// Arguments of `rlip eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Dataset: `hico` (`ROOT/annotations/test_hico.json`, `corre_hico.npy`,
    /// `trainval_hico.json`), `vcoco` (`ROOT/annotations/test_vcoco.json`, `corre_vcoco.npy`,
    /// `vcoco_test.json`, `ROOT/data/instances_vcoco_all_2014.json`,
    /// `ROOT/data/splits/vcoco_test.ids`) or `oi` (`ROOT/annotations/OI_SGG_test.json`,
    /// `categories_dict.json`, `OI_SGG_trainval_test_categories_dict.json`).
    #[arg(long, value_enum)]
    pub dataset: DatasetArg,
    /// Dataset folder in the official RLIPv2 layout (`annotations/`, `images/`, V-COCO `data/`).
    #[arg(long)]
    pub root: PathBuf,
    /// Saved predictions (JSON, see `rlip_train::eval::predictions`); for V-COCO also the
    /// detection pickle of `generate_vcoco_official.py` (`.pickle` / `.pkl`).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Write the report (headline metrics, per-class APs) as JSON here (atomically).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// HICO-DET zero-shot bucketing (needs `annotations/hoi_list_new.json`; `unseen-file` also
    /// `annotations/unseen_hoi.json`).
    #[arg(long, value_enum)]
    pub zero_shot: Option<ZeroShotArg>,
    /// No triplet NMS (HICO-DET, Open Images); the RLIPv2 scripts use it, so it is on by default.
    #[arg(long)]
    pub no_nms: bool,
    /// Count test images absent from the predictions file as images without detections
    /// (default: refuse the file).
    #[arg(long)]
    pub missing_as_empty: bool,
    /// Switch on every documented correction of the official evaluators (the numbers are then
    /// not comparable with published ones).
    #[arg(long)]
    pub corrected: bool,
    /// Model path: checkpoint to run over the split when `--predictions` is absent.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Label texts for `--checkpoint` (default: the dataset's own: `hico`, `vcoco`, or the Open
    /// Images categories of the split); a JSON label file for other HICO-format datasets.
    #[arg(long)]
    pub labels: Option<String>,
    /// Model path: configuration preset (`r50`, `swin_t`, `swin_l`, `small`) or JSON file.
    #[arg(long)]
    pub config: Option<String>,
    /// Model path: HuggingFace `tokenizer.json` or a folder with the tokenizer files.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Model path: images per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Model path: also save the predictions (to re-evaluate without the model).
    #[arg(long)]
    pub save_predictions: Option<PathBuf>,
}

impl EvalArgs {
    fn options(&self) -> EvalOptions {
        let mut o = EvalOptions {
            use_nms: !self.no_nms,
            ..EvalOptions::default()
        };
        if self.corrected {
            o.hico_corrections = HicoCorrections {
                match_free_gt: true,
                no_gt_image_predictions_are_fp: true,
            };
            o.oi_corrections = OiCorrections {
                sort_phrases_before_matching: true,
                match_free_gt: true,
                no_gt_image_predictions_are_fp: true,
                phrase_recall_counts_all_gt: true,
            };
            o.vcoco_in_training_options = VcocoInTrainingOptions {
                match_free_gt: true,
                ..VcocoInTrainingOptions::default()
            };
        }
        o
    }
}

/// Runs `f` under a spinner on stderr (hidden when stderr is not a terminal).
fn step<T>(msg: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(msg.to_string());
    let t = Instant::now();
    let r = f();
    bar.finish_and_clear();
    if r.is_ok() {
        tracing::info!("{msg}: {:.1} s", t.elapsed().as_secs_f64());
    }
    r
}

fn is_pickle(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("pickle" | "pkl")
    )
}

/// Runs the model of `--checkpoint` over the split's test images (official preprocessing,
/// batches of `--batch-size`, progress bar) and returns the post-processed pairs in split order.
fn predict_with_model(
    a: &EvalArgs,
    split: &EvalSplit,
    backend: BackendKind,
    device: Option<usize>,
) -> Result<Vec<PairPredictions>> {
    let checkpoint = a.checkpoint.clone().context("--checkpoint is required")?;
    let tokenizer = a
        .tokenizer
        .clone()
        .context("--tokenizer is required with --checkpoint (tokenizer.json or a folder)")?;
    let labels = match (&a.labels, &split.gt) {
        (Some(spec), _) => LabelSet::resolve(spec)?,
        (None, _) if split.root.join("labels.json").is_file() => {
            LabelSet::from_file(&split.root.join("labels.json"))?
        }
        (None, SplitGt::Oi(o)) => LabelSet {
            source: "OI_SGG_trainval_test_categories_dict.json".into(),
            objects: o.categories.obj.clone(),
            relations: o.categories.rel.clone(),
        },
        (None, SplitGt::Vcoco(_)) => LabelSet::builtin("vcoco").expect("built in"),
        (None, SplitGt::Hico(_)) => LabelSet::builtin("hico").expect("built in"),
    };
    if labels.relations.len() != split.num_verbs() {
        bail!(
            "the label texts of {} have {} relations but the split has {}",
            labels.source,
            labels.relations.len(),
            split.num_verbs()
        );
    }
    let mode = match split.gt {
        SplitGt::Oi(_) => PairMode::Sgg,
        _ => PairMode::Hoi,
    };
    let m = ModelArgs {
        config: a.config.clone(),
        checkpoint,
        tokenizer,
        partial: false,
    };
    let dev = rlip_backends::device(backend, device)?;
    let predictor = build_predictor(&m, labels, mode, &dev)?;
    let paths: Vec<PathBuf> = split.images.iter().map(|i| i.path.clone()).collect();
    let bar = indicatif::ProgressBar::new(paths.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images  {per_sec}  eta {eta}",
        )
        .expect("valid template"),
    );
    let t = Instant::now();
    let preds = predictor.predict_files(&paths, a.batch_size, |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    println!(
        "ran the model on {} images in {:.1} s ({:.2} images/s)",
        paths.len(),
        t.elapsed().as_secs_f64(),
        paths.len() as f64 / t.elapsed().as_secs_f64().max(1e-9)
    );
    Ok(preds)
}

/// Runs `rlip eval`.
pub fn run(a: EvalArgs, backend: BackendKind, device: Option<usize>) -> Result<()> {
    let dataset = Dataset::from(a.dataset);
    let cfg = SplitConfig {
        zero_shot: a.zero_shot.map(|z| match z {
            ZeroShotArg::UcRf => ZeroShotSetting::UcRf,
            ZeroShotArg::UcNf => ZeroShotSetting::UcNf,
            ZeroShotArg::Uo => ZeroShotSetting::Uo,
            ZeroShotArg::UnseenFile => ZeroShotSetting::UnseenFile,
        }),
    };
    if a.predictions.is_some() && a.checkpoint.is_some() {
        bail!("give either --predictions or --checkpoint, not both");
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let split = step(&format!("reading the {dataset} test split"), || {
        load_split_with(dataset, &a.root, &cfg)
            .with_context(|| format!("loading the {dataset} split from {}", a.root.display()))
    })?;
    for w in &split.warnings {
        tracing::warn!("{w}");
    }
    let options = a.options();
    let report: EvalReport = match (&a.predictions, &a.checkpoint) {
        (Some(p), _) if dataset == Dataset::Vcoco && is_pickle(p) => {
            let dets = step("reading the V-COCO detection pickle", || {
                Ok(load_vcoco_detections_pickle(p)?)
            })?;
            step("evaluating (official vsrl_eval)", || {
                Ok(evaluate_vcoco_detections(&split, &dets, &options)?)
            })?
        }
        (Some(p), _) => {
            let missing = if a.missing_as_empty {
                MissingImages::Empty
            } else {
                MissingImages::Error
            };
            let preds = step("reading predictions", || {
                let f = read_predictions_file(p)?;
                Ok(align_predictions(f, p, &split, missing)?)
            })?;
            step("evaluating", || {
                Ok(evaluate_split(&split, &preds, &options)?)
            })?
        }
        (None, Some(_)) => {
            let preds = predict_with_model(&a, &split, backend, device)?;
            if let Some(s) = &a.save_predictions {
                write_split_predictions(s, &split, &preds)
                    .with_context(|| format!("saving predictions to {}", s.display()))?;
            }
            step("evaluating", || {
                Ok(evaluate_split(&split, &preds, &options)?)
            })?
        }
        (None, None) => bail!(
            "nothing to evaluate: give --predictions FILE (saved predictions, or for V-COCO the \
             generate_vcoco_official.py pickle) or --checkpoint"
        ),
    };
    print!("{}", report.table());
    if let Some(out) = &a.out {
        let json = serde_json::to_vec_pretty(&report).context("serialising the report")?;
        write_atomic(out, |w| {
            use std::io::Write;
            w.write_all(&json)?;
            w.write_all(b"\n")
        })
        .with_context(|| format!("writing {}", out.display()))?;
        println!("report written to {}", out.display());
    }
    Ok(())
}
