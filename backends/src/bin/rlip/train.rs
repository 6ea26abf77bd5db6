//! `rlip train`: fine-tuning on a HICO-DET, V-COCO or Open Images folder, or relational
//! pre-training on Visual Genome scene graphs (and COCO / Objects365 pseudo-relations), with resumable checkpoints, periodic evaluation, metrics and
//! training curves.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use clap::{Args, ValueEnum};
use rlip_data::hico::{coco_id_to_index, load_hoi_annotations};
use rlip_data::labels::LabelSet;
use rlip_data::pretrain::{RelationImage, TextSampling, Vocabulary};
use rlip_data::transforms::TrainAugment;
use rlip_data::vg::{KEEP_NAMES_FILE, SCENE_GRAPHS_FILE, load_keep_names, load_scene_graphs};
use rlip_model::checkpoint::{META_BASE, META_CONFIG, save_params};
use rlip_model::rlip::{RlipConfig, RlipParSeDa};
use rlip_model::text::tokenizer::LabelTokenizer;
use rlip_train::eval::hico::ZeroShotSetting;
use rlip_train::eval::{
    Dataset, EvalOptions, EvalSplit, SplitConfig, evaluate_split, load_split_with,
};
use rlip_train::fit::{
    FitConfig, FitHooks, FitState, Progress, STATE_FILE, TrainData, checkpoint_name, fit,
    list_checkpoints, pretrain_samples, prune_checkpoints, read_state, save_checkpoint,
};
use rlip_train::infer::{PairMode, Predictor, load_model_as};
use rlip_train::loss::{Criterion, CriterionConfig, VerbLoss};
use rlip_train::samples::{FinetuneDataset, hico_samples, oi_samples, vcoco_samples};
use rlip_train::trainer::{LabelTexts, OptimConfig, TrainError, Trainer};

use crate::eval::DatasetArg;
use crate::infer::load_tokenizer;

/// What to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Fine-tune on a dataset folder (`--dataset`).
    Finetune,
    /// Relational pre-training on VG scene graphs (`annotations/scene_graphs_preprocessv1.json`
    /// and `annotations/vg_keep_names_v1_no_lias_freq.json`), label texts sampled per batch,
    /// relational pseudo-labels (RPL) in the verb loss.
    Pretrain,
}

impl From<DatasetArg> for FinetuneDataset {
    fn from(d: DatasetArg) -> Self {
        match d {
            DatasetArg::Hico => FinetuneDataset::Hico,
            DatasetArg::Vcoco => FinetuneDataset::Vcoco,
            DatasetArg::Oi => FinetuneDataset::Oi,
        }
    }
}

/// Training augmentation presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Augment {
    /// The official chain.
    Official,
    /// Flip, colour jitter and a narrow multi-scale range, no crop.
    Light,
}

/// Arguments of `rlip train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset folder (the `--dataset` layout for fine-tuning; VG files under `annotations/`
    /// for pre-training).
    #[arg(long)]
    data: PathBuf,
    /// Fine-tuning or pre-training.
    #[arg(long, value_enum, default_value = "finetune")]
    mode: Mode,
    /// Fine-tuning dataset layout: `hico` (`images/train2015`, `annotations/trainval_hico.json`;
    /// the synthetic dataset has it too), `vcoco` (HOIA layout from `cargo xtask prepare vcoco
    /// --convert`: `images/train2014`, `annotations/trainval_vcoco.json`; plain focal verb loss
    /// as the official scripts) or `oi` (`images/`, `annotations/OI_SGG_train_finetuning.json`,
    /// `categories_dict.json`, `OI_SGG_trainval_test_categories_dict.json`).
    #[arg(long, value_enum, default_value = "hico")]
    dataset: DatasetArg,
    /// Fine-tuning annotation file, relative to `DATA/annotations/` or absolute (default: the
    /// dataset's official train file). The official HICO-DET few-shot
    /// (`trainval_hico_1percent.json`, `…_10percent.json`) and zero-shot
    /// (`trainval_hico_UC-RF.json`, `…_UC-NF.json`) files have the same layout.
    #[arg(long)]
    train_annotations: Option<PathBuf>,
    /// Fine-tuning label texts: `hico`, `vcoco` or a JSON file (default: HICO-DET
    /// `DATA/labels.json` if present, else `hico`; V-COCO `vcoco`; Open Images
    /// `annotations/OI_SGG_trainval_test_categories_dict.json`).
    #[arg(long)]
    labels: Option<String>,
    /// Tokenizer (`tokenizer.json` or a folder; default `DATA/tokenizer.json`).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Model configuration: preset or JSON file.
    #[arg(long, default_value = "small")]
    config: String,
    /// Start from this checkpoint (official `.pth`/safetensors, loaded partially with the
    /// official query filter, or an RLIP-rs checkpoint); default: fresh initialisation.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Train the ResNet stem and `layer1` even when starting from `--init` (the official recipe
    /// freezes them because its backbones are ImageNet-pre-trained; a checkpoint trained from
    /// scratch, e.g. the demo's pre-training, still needs them to learn).
    #[arg(long)]
    train_stem: bool,
    /// Continue the run in `--out` from its newest checkpoint (same batches and losses as an
    /// uninterrupted run).
    #[arg(long)]
    resume: bool,
    /// Epochs.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Data-parallel training over these device indices of `--backend` (e.g. `0,1,2,3` on
    /// cuda; replaces `--device`): the first holds the master weights, each step's batch is
    /// split evenly and the shards' gradients averaged. With flex every index names the CPU and
    /// the shards run one after another.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<usize>,
    /// Learning rate (transformer and heads).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Backbone learning rate.
    #[arg(long, default_value_t = 1e-5)]
    lr_backbone: f64,
    /// Label-encoder learning rate.
    #[arg(long, default_value_t = 1e-5)]
    lr_text: f64,
    /// Epoch from which learning rates are multiplied by 0.1.
    #[arg(long)]
    lr_drop: Option<usize>,
    /// Step from which learning rates are multiplied by 0.1 (for runs of a few epochs; with
    /// `--lr-drop` too, the earlier drop applies).
    #[arg(long)]
    lr_drop_step: Option<usize>,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 0.1)]
    clip_max_norm: f64,
    /// Largest training short side (the official scales 480..800 are scaled to it; default:
    /// the configuration's evaluation size).
    #[arg(long)]
    train_size: Option<usize>,
    /// Pre-training: also COCO pseudo-relations (`FILE`, images under `--coco-root`), the
    /// mixed-dataset recipe (relations capped at half the queries, vocabularies fused).
    #[arg(long)]
    coco_pseudo: Option<PathBuf>,
    /// Pre-training: COCO image root (`train2017/` below it).
    #[arg(long)]
    coco_root: Option<PathBuf>,
    /// Pre-training: also Objects365 pseudo-relations (`FILE`).
    #[arg(long)]
    o365_pseudo: Option<PathBuf>,
    /// Pre-training: Objects365 image root.
    #[arg(long)]
    o365_root: Option<PathBuf>,
    /// Pre-training: Objects365 `image_id_to_filepath.json`.
    #[arg(long)]
    o365_paths: Option<PathBuf>,
    /// Pre-training: relation-confidence threshold of pseudo-labels (official 0.2).
    #[arg(long, default_value_t = rlip_data::pseudo::RELATION_THRESHOLD)]
    pseudo_threshold: f64,
    /// Training augmentation: `official` (flip, colour jitter, multi-scale resize, and half of
    /// the time the random-size crop branch; sizes scaled to `--train-size`) or `light` (flip,
    /// colour jitter, short sides between 7/8 of `--train-size` and `--train-size`, no crop:
    /// for short runs on small images, where the official downscaling leaves objects too small).
    #[arg(long, value_enum, default_value = "official")]
    augment: Augment,
    /// Label texts per pre-training batch (official 500: 2/3 objects, 1/3 relations).
    #[arg(long, default_value_t = 500)]
    num_texts: usize,
    /// Seed of shuffling, augmentation and text sampling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Data-loading threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Stop after this many steps in all.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Stop after this many seconds of training in this process.
    #[arg(long)]
    time_limit: Option<f64>,
    /// Also checkpoint every N steps (checkpoints are always written at the end of every epoch
    /// and of the run).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Step checkpoints kept (the newest; the best is kept separately).
    #[arg(long, default_value_t = 3)]
    keep_last: usize,
    /// Fine-tuning: evaluate on the test split every N epochs and at the end, keeping the best
    /// checkpoint in `best/` by HICO-DET Default Full mAP, V-COCO role AP scenario 1 (the
    /// in-training mAP without the official role files) or Open Images `score_wtd` (0 = never).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Images per forward pass during evaluation.
    #[arg(long, default_value_t = 8)]
    eval_batch_size: usize,
    /// Output folder: `checkpoint.safetensors` (final model), `checkpoints/step-N/`, `best/`,
    /// `metrics.jsonl`, `curves.png`, `train_args.json`.
    #[arg(long, default_value = "rlip-train-out")]
    out: PathBuf,
}

/// The fine-tuning data and its label texts.
fn prepare_finetune(
    a: &TrainArgs,
    cfg: &RlipConfig,
    tok: &LabelTokenizer,
    ad: &Device,
) -> Result<(TrainData, LabelSet)> {
    let dataset = FinetuneDataset::from(a.dataset);
    let ann_dir = a.data.join("annotations");
    let labels = match (&a.labels, dataset) {
        (Some(spec), _) => LabelSet::resolve(spec)?,
        (None, FinetuneDataset::Hico) if a.data.join("labels.json").is_file() => {
            LabelSet::from_file(&a.data.join("labels.json"))?
        }
        (None, FinetuneDataset::Hico) => LabelSet::builtin("hico").expect("built in"),
        (None, FinetuneDataset::Vcoco) => LabelSet::builtin("vcoco").expect("built in"),
        (None, FinetuneDataset::Oi) => {
            LabelSet::from_file(&ann_dir.join("OI_SGG_trainval_test_categories_dict.json"))?
        }
    };
    let anns_path = ann_dir.join(
        a.train_annotations
            .clone()
            .unwrap_or_else(|| dataset.default_annotations().into()),
    );
    let images = dataset.image_dir(&a.data);
    let (n_obj, n_verb, max_boxes) = (
        labels.objects.len(),
        labels.relations.len(),
        cfg.num_queries,
    );
    let t = std::time::Instant::now();
    // pairs without an object (V-COCO) take the `missing objects` text
    let mut no_object_label = n_obj;
    let (samples, dropped) = match dataset {
        FinetuneDataset::Hico => {
            let anns = load_hoi_annotations(&anns_path)?;
            let obj_index = move |id: i64| coco_id_to_index(id).filter(|&k| k < n_obj);
            hico_samples(&anns, &images, &obj_index, n_verb, max_boxes)?
        }
        FinetuneDataset::Vcoco => {
            let missing = rlip_data::labels::VCOCO_MISSING_OBJECT;
            no_object_label = labels
                .objects
                .iter()
                .position(|o| o == missing)
                .with_context(|| {
                    format!(
                        "the V-COCO label texts ({}) need the object text {missing:?} for actions without an object",
                        labels.source
                    )
                })?;
            let anns = load_hoi_annotations(&anns_path)?;
            (vcoco_samples(&anns, &images, n_verb, max_boxes)?, 0)
        }
        FinetuneDataset::Oi => {
            let all_path = ann_dir.join("categories_dict.json");
            let all = rlip_data::oi::load_oi_categories(&all_path)?;
            let evaluated = rlip_data::oi::OiCategories {
                obj: labels.objects.clone(),
                rel: labels.relations.clone(),
            };
            let valid = rlip_data::oi::valid_obj_ids(&all, &evaluated, &all_path)?;
            let anns = rlip_data::oi::read_oi_annotations(&anns_path)?;
            oi_samples(&anns, &images, &valid, n_verb, max_boxes)?
        }
    };
    if samples.is_empty() {
        bail!("{}: no usable training image", anns_path.display());
    }
    println!(
        "{} training images ({dropped} dropped: relation indices outside their box list), decoded in {:.1} s",
        samples.len(),
        t.elapsed().as_secs_f64()
    );
    let data = TrainData::Fixed {
        samples: Arc::new(samples),
        texts: LabelTexts::encode(tok, &labels, ad)?,
        num_verbs: n_verb,
        no_object_label,
    };
    Ok((data, labels))
}

fn prepare_pretrain(a: &TrainArgs, tok: LabelTokenizer, cfg: &RlipConfig) -> Result<TrainData> {
    let ann = a.data.join("annotations");
    let graphs = load_scene_graphs(ann.join(SCENE_GRAPHS_FILE))?;
    let keep = ann.join(KEEP_NAMES_FILE);
    let vocab = Vocabulary::from_keep_names(&load_keep_names(&keep)?, &keep)?;
    let root = [a.data.join("images/train2015"), a.data.join("images")]
        .into_iter()
        .find(|p| p.is_dir())
        .with_context(|| format!("no images/ folder in {}", a.data.display()))?;
    let t = std::time::Instant::now();
    let mut images: Vec<RelationImage> = graphs
        .iter()
        .map(|g| RelationImage::from_vg(g, &root))
        .collect::<Result<_, _>>()?;
    let mut vocabs = vec![vocab];
    let mut extra = Vec::new();
    if let Some(f) = &a.coco_pseudo {
        let root = a
            .coco_root
            .as_ref()
            .context("--coco-pseudo needs --coco-root")?;
        for g in rlip_data::pseudo::load_pseudo_relations(f, a.pseudo_threshold)? {
            extra.push(RelationImage::from_coco(&g, root)?);
        }
    }
    if let Some(f) = &a.o365_pseudo {
        let (root, paths) = a
            .o365_root
            .as_ref()
            .zip(a.o365_paths.as_ref())
            .context("--o365-pseudo needs --o365-root and --o365-paths")?;
        let files = rlip_data::pseudo::O365FilePaths::load(paths)?;
        for g in rlip_data::pseudo::load_pseudo_relations(f, a.pseudo_threshold)? {
            extra.push(RelationImage::from_o365(&g, root, &files)?);
        }
    }
    // the official caps: `num_queries` relations per image for VG alone, half as many in the
    // mixed dataset (the matcher leaves targets beyond the pair queries unmatched)
    let max_pairs = if extra.is_empty() {
        rlip_data::pretrain::vg_relation_cap(cfg.num_queries)
    } else {
        vocabs.push(Vocabulary::count(extra.iter()));
        rlip_data::pretrain::mixed_relation_cap(cfg.num_queries).max(1)
    };
    images.extend(extra);
    let vocab = Vocabulary::fuse(&vocabs);
    let (samples, images, skipped) = pretrain_samples(&images, &vocab, max_pairs)?;
    if samples.is_empty() {
        bail!("{}: no image with a usable relation", ann.display());
    }
    println!(
        "{} pre-training images ({skipped} without a usable relation skipped), {} object and {} relation names, decoded in {:.1} s",
        samples.len(),
        vocab.objects.len(),
        vocab.relations.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(TrainData::Pretrain {
        samples: Arc::new(samples),
        images,
        vocab,
        sampling: TextSampling {
            num_texts: a.num_texts,
            ..TextSampling::default()
        },
        tokenizer: tok,
    })
}

/// Test-split evaluation during fine-tuning with the dataset's official evaluator: HICO-DET
/// Default Full/Rare/Non-Rare mAP (and the zero-shot unseen mAP when the folder lists unseen
/// combinations), V-COCO role AP (scenarios 1 and 2) and the in-training mAP, Open Images
/// R@50, wmAP and `score_wtd`.
struct Evaluator {
    dataset: Dataset,
    split: EvalSplit,
    unseen: Option<EvalSplit>,
    labels: LabelSet,
    tokenizer: LabelTokenizer,
    cfg: RlipConfig,
    batch: usize,
}

/// `(key in metrics.jsonl and report.json, headline metric)` per dataset; the first key present
/// selects `best/`.
fn eval_keys(dataset: Dataset) -> &'static [(&'static str, &'static str)] {
    match dataset {
        Dataset::Hico => &[
            ("map_full", "Default Full mAP"),
            ("map_rare", "Default Rare mAP"),
            ("map_nonrare", "Default Non-Rare mAP"),
        ],
        Dataset::Vcoco => &[
            ("ap_role_1", "AP_role scenario 1"),
            ("ap_role_2", "AP_role scenario 2"),
            ("map_all", "in-training mAP_all"),
        ],
        Dataset::Oi => &[
            ("score_wtd", "score_wtd"),
            ("r50", "R@50"),
            ("wmap_rel", "wmAP_rel"),
            ("wmap_phr", "wmAP_phr"),
        ],
    }
}

impl Evaluator {
    /// `None` without `--eval-every`; an error naming the missing file when the test split
    /// cannot be read.
    fn new(
        a: &TrainArgs,
        labels: LabelSet,
        cfg: &RlipConfig,
        tokenizer: LabelTokenizer,
    ) -> Result<Option<Self>> {
        if a.eval_every == 0 {
            return Ok(None);
        }
        let dataset = Dataset::from(a.dataset);
        let split = load_split_with(dataset, &a.data, &SplitConfig::default())
            .with_context(|| format!("--eval-every: the {dataset} test split"))?;
        if labels.relations.len() != split.num_verbs() {
            bail!(
                "the label texts of {} have {} relations but the {dataset} test split has {}",
                labels.source,
                labels.relations.len(),
                split.num_verbs()
            );
        }
        let unseen = (dataset == Dataset::Hico
            && a.data.join("annotations/unseen_hoi.json").is_file())
        .then(|| {
            load_split_with(
                Dataset::Hico,
                &a.data,
                &SplitConfig {
                    zero_shot: Some(ZeroShotSetting::UnseenFile),
                },
            )
        })
        .transpose()?;
        Ok(Some(Evaluator {
            dataset,
            split,
            unseen,
            labels,
            tokenizer,
            cfg: cfg.clone(),
            batch: a.eval_batch_size,
        }))
    }

    /// The metric that selects `best/`.
    fn best_key(&self, m: &BTreeMap<String, f64>) -> Option<f64> {
        eval_keys(self.dataset)
            .iter()
            .find_map(|(k, _)| m.get(*k).copied().filter(|v| v.is_finite()))
    }

    fn run(&self, trainer: &Trainer) -> Result<BTreeMap<String, f64>> {
        let device = trainer.device().clone().inner();
        let model = trainer.eval_model();
        let mode = match self.dataset {
            Dataset::Oi => PairMode::Sgg,
            _ => PairMode::Hoi,
        };
        let p = Predictor::new(
            model,
            self.cfg.clone(),
            &self.tokenizer,
            self.labels.clone(),
            mode,
            &device,
        )?;
        let paths: Vec<PathBuf> = self.split.images.iter().map(|i| i.path.clone()).collect();
        let preds = p.predict_files(&paths, self.batch, |_| {})?;
        let opts = EvalOptions::default();
        let r = evaluate_split(&self.split, &preds, &opts)?;
        let mut m = BTreeMap::new();
        for (key, name) in eval_keys(self.dataset) {
            if let Some(v) = r.metric(name) {
                m.insert(key.to_string(), 100.0 * v);
            }
        }
        if let Some(u) = &self.unseen {
            let r = evaluate_split(u, &preds, &opts)?;
            if let Some(v) = r.metric("Default Unseen mAP") {
                m.insert("zero_shot_unseen_map".into(), 100.0 * v);
            }
        }
        Ok(m)
    }
}

fn tokenizer_path(a: &TrainArgs) -> PathBuf {
    a.tokenizer
        .clone()
        .unwrap_or_else(|| a.data.join("tokenizer.json"))
}

/// Logging, checkpointing and evaluation during [`fit`].
struct Hooks<'a> {
    a: &'a TrainArgs,
    bar: indicatif::ProgressBar,
    metrics: std::fs::File,
    meta: BTreeMap<String, String>,
    ckpt_dir: PathBuf,
    evaluator: Option<Evaluator>,
    best: Option<f64>,
    error: Option<anyhow::Error>,
}

impl Hooks<'_> {
    fn log_line(&mut self, v: serde_json::Value) -> Result<(), TrainError> {
        writeln!(self.metrics, "{v}").map_err(|e| {
            TrainError::Checkpoint(format!(
                "writing {}: {e}",
                self.a.out.join("metrics.jsonl").display()
            ))
        })
    }

    fn checkpoint(&mut self, trainer: &Trainer, state: &FitState) -> Result<(), TrainError> {
        let dir = self.ckpt_dir.join(checkpoint_name(state.steps));
        save_checkpoint(trainer, &dir, state, &self.meta)?;
        prune_checkpoints(&self.ckpt_dir, self.a.keep_last.max(1))
    }

    fn evaluate(&mut self, trainer: &Trainer, state: &FitState) -> Result<(), TrainError> {
        let Some(ev) = &self.evaluator else {
            return Ok(());
        };
        let t = std::time::Instant::now();
        let m = ev.run(trainer).map_err(|e| {
            let msg = format!("evaluation at step {}: {e:#}", state.steps);
            self.error = Some(e);
            TrainError::Invalid(msg)
        })?;
        let line = format!(
            "eval after epoch {} (step {}, {:.0} s): {}",
            state.epoch,
            state.steps,
            t.elapsed().as_secs_f64(),
            m.iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.bar.suspend(|| println!("{line}"));
        self.log_line(serde_json::json!({
            "eval": {"step": state.steps, "epoch": state.epoch, "metrics": m}
        }))?;
        let score = self
            .evaluator
            .as_ref()
            .and_then(|ev| ev.best_key(&m))
            .unwrap_or(f64::NEG_INFINITY);
        if self.best.is_none_or(|b| score > b) {
            self.best = Some(score);
            save_checkpoint(trainer, &self.a.out.join("best"), state, &self.meta)?;
        }
        Ok(())
    }
}

impl FitHooks for Hooks<'_> {
    fn on_step(&mut self, trainer: &Trainer, p: &Progress) -> Result<(), TrainError> {
        let s = &p.state;
        self.bar.set_position(s.steps as u64);
        self.bar.set_message(format!(
            "epoch {} loss {:.3} lr×{} {:.1} img/s",
            s.epoch, p.log.loss, p.log.lr_scale, p.images_per_s
        ));
        if p.log.skipped {
            tracing::warn!(
                step = p.log.step,
                loss_scale = p.log.loss_scale,
                "f16 gradients overflowed: step skipped, loss scale halved"
            );
        }
        let mut line = serde_json::json!({
            "step": p.log.step, "epoch": s.epoch, "images": s.images, "seconds": s.seconds,
            "loss": p.log.loss, "grad_norm": p.log.grad_norm, "lr_scale": p.log.lr_scale,
            "terms": p.log.terms.iter().cloned().collect::<BTreeMap<_, _>>(),
        });
        if let Some(k) = p.log.loss_scale {
            line["loss_scale"] = k.into();
            line["skipped"] = p.log.skipped.into();
        }
        self.log_line(line)?;
        if self
            .a
            .checkpoint_every
            .is_some_and(|n| n > 0 && s.steps.is_multiple_of(n))
        {
            self.checkpoint(trainer, s)?;
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, trainer: &Trainer, state: &FitState) -> Result<(), TrainError> {
        self.checkpoint(trainer, state)?;
        if self.a.eval_every > 0 && state.epoch.is_multiple_of(self.a.eval_every) {
            self.evaluate(trainer, state)?;
        }
        Ok(())
    }
}

/// Keeps the lines of `metrics.jsonl` up to step `steps` (a killed run may have logged steps
/// after its last checkpoint; the resumed run logs them again).
fn truncate_metrics(path: &Path, steps: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let keep: String = text
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            let step = v["step"].as_u64().or(v["eval"]["step"].as_u64());
            step.is_some_and(|s| {
                (s as usize) < steps || (v["eval"].is_object() && s as usize <= steps)
            })
        })
        .map(|l| format!("{l}\n"))
        .collect();
    rlip_model::util::write_atomic(path, keep.as_bytes())
        .with_context(|| format!("rewriting {}", path.display()))
}

/// Runs `rlip train` on `backend`, device `index` (or the `--devices` list).
pub fn run(a: TrainArgs, backend: rlip_backends::BackendKind, index: Option<usize>) -> Result<()> {
    if index.is_some() && !a.devices.is_empty() {
        bail!("--device and --devices both given: --devices lists every device of the run");
    }
    let devices = if a.devices.is_empty() {
        vec![rlip_backends::device(backend, index)?]
    } else {
        a.devices
            .iter()
            .map(|&i| rlip_backends::device(backend, Some(i)))
            .collect::<Result<Vec<_>, _>>()?
    };
    if a.batch_size < devices.len() {
        bail!(
            "--batch-size {} is smaller than the {} devices it is split over",
            a.batch_size,
            devices.len()
        );
    }
    let device = &devices[0];
    // mixed precision (`--float-dtype bf16`): float32 master weights, built without rounding
    let precision = rlip_backends::precision().dtype();
    let master = Trainer::master_dtype(precision)?;
    let cfg = RlipConfig::resolve(&a.config).context("model configuration")?;
    let tok_path = tokenizer_path(&a);
    let tokenizer =
        load_tokenizer(&tok_path).with_context(|| format!("tokenizer {}", tok_path.display()))?;
    let ad = device.clone().autodiff();
    let (data, evaluator) = match a.mode {
        Mode::Finetune => {
            let (data, labels) = prepare_finetune(&a, &cfg, &tokenizer, &ad)?;
            (data, Evaluator::new(&a, labels, &cfg, tokenizer)?)
        }
        Mode::Pretrain => (prepare_pretrain(&a, tokenizer, &cfg)?, None),
    };
    let model = match &a.init {
        Some(p) => {
            let (m, report) = load_model_as(&cfg, p, &ad, true, master)?;
            println!(
                "initialised from {}: {}",
                p.display(),
                report.to_string().lines().next().unwrap_or("")
            );
            m
        }
        None => RlipParSeDa::init_as(&cfg, &ad, master).0,
    };
    rlip_backends::limits::check_params_fit(&model, &ad)
        .context("the model does not fit this device")?;
    let optim = OptimConfig {
        lr: a.lr,
        lr_backbone: a.lr_backbone,
        lr_text: a.lr_text,
        weight_decay: 1e-4,
        clip_max_norm: a.clip_max_norm,
    };
    let criterion = Criterion::new(match (a.mode, a.dataset) {
        // the official V-COCO scripts leave out --giou_verb_label: plain focal verb loss
        (Mode::Finetune, DatasetArg::Vcoco) => CriterionConfig {
            verb_loss: VerbLoss::Focal,
            ..CriterionConfig::default()
        },
        (Mode::Finetune, _) => CriterionConfig::default(),
        (Mode::Pretrain, _) => CriterionConfig::pretraining(),
    })?;
    let freeze = a.init.is_some() && !a.train_stem;
    let mut trainer = Trainer::new(model, criterion, optim.clone(), freeze, &ad)
        .with_mixed_precision(precision)?
        .with_data_parallel(devices[1..].iter().map(|d| d.clone().autodiff()).collect())?;
    if trainer.shards() > 1 {
        println!(
            "data parallel over {} devices ({backend}: {:?}), batch {} split evenly",
            trainer.shards(),
            a.devices,
            a.batch_size
        );
    }
    if let Some(dt) = trainer.mixed_precision() {
        println!("mixed precision: {dt:?} compute, float32 master weights");
    }
    let train_size = a.train_size.unwrap_or(cfg.eval_size);
    let fit_cfg = FitConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr_drop: a.lr_drop,
        lr_drop_step: a.lr_drop_step,
        augment: {
            let mut aug = TrainAugment::scaled(train_size, cfg.eval_max_size.max(train_size));
            if a.augment == Augment::Light {
                aug.resize_prob = 1.0;
                aug.scales = (0..=4).map(|k| train_size * (28 + k) / 32).collect();
            }
            aug
        },
        seed: a.seed,
        max_steps: a.max_steps,
        time_limit_s: a.time_limit,
        workers: a.workers,
    };

    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let ckpt_dir = a.out.join("checkpoints");
    let metrics_path = a.out.join("metrics.jsonl");
    let start = if a.resume {
        let (_, dir) = list_checkpoints(&ckpt_dir).pop().with_context(|| {
            format!("--resume: no complete checkpoint in {}", ckpt_dir.display())
        })?;
        let state = read_state(&dir)?;
        trainer.restore(&dir, state.steps)?;
        truncate_metrics(&metrics_path, state.steps)?;
        println!(
            "resumed from {} (epoch {}, batch {}, step {})",
            dir.display(),
            state.epoch,
            state.batch,
            state.steps
        );
        state
    } else {
        if ckpt_dir.join(checkpoint_name(0)).exists() || list_checkpoints(&ckpt_dir).pop().is_some()
        {
            bail!(
                "{} already holds checkpoints: pass --resume to continue that run, or choose another --out",
                ckpt_dir.display()
            );
        }
        FitState::default()
    };
    let args_json = serde_json::json!({
        "data": a.data, "mode": format!("{:?}", a.mode).to_lowercase(),
        "dataset": FinetuneDataset::from(a.dataset), "config": cfg,
        "init": a.init, "optim": optim, "fit": fit_cfg,
    });
    rlip_model::util::write_atomic(
        &a.out.join("train_args.json"),
        &serde_json::to_vec_pretty(&args_json)?,
    )?;
    let metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(a.resume)
        .write(true)
        .truncate(!a.resume)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
    let mut meta = BTreeMap::new();
    meta.insert(META_CONFIG.to_string(), serde_json::to_string(&cfg)?);
    if let Some(p) = &a.init {
        meta.insert(
            META_BASE.to_string(),
            std::fs::canonicalize(p)?.display().to_string(),
        );
    }
    let per_epoch = data.num_samples() / a.batch_size;
    let total = (per_epoch * a.epochs).min(a.max_steps.unwrap_or(usize::MAX));
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} eta {eta}")
            .expect("valid template"),
    );
    bar.set_position(start.steps as u64);
    let mut hooks = Hooks {
        a: &a,
        bar,
        metrics,
        meta: meta.clone(),
        ckpt_dir: ckpt_dir.clone(),
        evaluator,
        best: None,
        error: None,
    };
    let result = fit(&mut trainer, &data, &fit_cfg, start, &mut hooks);
    hooks.bar.finish_and_clear();
    let final_path = a.out.join("checkpoint.safetensors");
    let state = match result {
        Ok(s) => s,
        Err(e) => {
            // the parameters are those of the last good step
            save_params(trainer.model(), &final_path, &meta)
                .with_context(|| format!("saving {}", final_path.display()))?;
            if let Some(inner) = hooks.error.take() {
                return Err(inner.context(e.to_string()));
            }
            return Err(e).context(format!(
                "training stopped; the parameters of the last good step are in {}",
                final_path.display()
            ));
        }
    };
    if list_checkpoints(&ckpt_dir)
        .last()
        .is_none_or(|(s, _)| *s != state.steps)
    {
        hooks.checkpoint(&trainer, &state)?;
    }
    let evaluated_last = state.batch == 0 && state.epoch.is_multiple_of(hooks.a.eval_every.max(1));
    if hooks.evaluator.is_some() && !evaluated_last {
        hooks.evaluate(&trainer, &state)?;
    }
    save_params(trainer.model(), &final_path, &meta)
        .with_context(|| format!("saving {}", final_path.display()))?;
    drop(hooks);
    let plot = a.out.join("curves.png");
    let text = std::fs::read_to_string(&metrics_path)
        .with_context(|| format!("reading {}", metrics_path.display()))?;
    let charts = rlip_train::plot::charts_from_metrics(&text)?;
    rlip_train::plot::write_png(&plot, &charts, 900, 300)?;
    println!(
        "{} steps (epoch {}, {:.0} s of training); checkpoint {}; metrics {}; curves {}; resumable checkpoints in {} ({STATE_FILE})",
        state.steps,
        state.epoch,
        state.seconds,
        final_path.display(),
        metrics_path.display(),
        plot.display(),
        ckpt_dir.display()
    );
    Ok(())
}
