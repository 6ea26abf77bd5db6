//! `rlip train`: fine-tuning on a HICO-DET-format dataset folder.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use clap::Args;
use rlip_data::hico::{coco_id_to_index, load_hoi_annotations};
use rlip_data::labels::LabelSet;
use rlip_model::checkpoint::{META_BASE, META_CONFIG, save_params};
use rlip_model::rlip::{RlipConfig, RlipParSeDa};
use rlip_train::infer::load_model;
use rlip_train::loss::{Criterion, CriterionConfig};
use rlip_train::trainer::{AugmentConfig, FitConfig, OptimConfig, Trainer, fit, hico_samples};

use crate::infer::load_tokenizer;

/// Arguments of `rlip train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset folder in the HICO-DET layout (`annotations/trainval_hico.json`,
    /// `images/train2015/`).
    #[arg(long)]
    data: PathBuf,
    /// Label texts: `hico`, `vcoco` or a JSON file (default: `DATA/labels.json` if present, else
    /// `hico`).
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
    /// Epochs.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
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
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 0.1)]
    clip_max_norm: f64,
    /// Training short sides (default: the config's eval size and ±1/8 of it).
    #[arg(long, value_delimiter = ',')]
    scales: Vec<usize>,
    /// Seed of shuffling and augmentation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Stop after this many seconds of training.
    #[arg(long)]
    time_limit: Option<f64>,
    /// Output folder: `checkpoint.safetensors`, `metrics.jsonl`, `train_args.json`.
    #[arg(long, default_value = "rlip-train-out")]
    out: PathBuf,
}

/// Runs `rlip train`.
pub fn run(a: TrainArgs, device: &Device) -> Result<()> {
    let cfg = RlipConfig::resolve(&a.config).context("model configuration")?;
    let labels = match &a.labels {
        Some(spec) => LabelSet::resolve(spec)?,
        None if a.data.join("labels.json").is_file() => {
            LabelSet::from_file(&a.data.join("labels.json"))?
        }
        None => LabelSet::builtin("hico").expect("built in"),
    };
    let tok_path = a
        .tokenizer
        .clone()
        .unwrap_or_else(|| a.data.join("tokenizer.json"));
    let tokenizer =
        load_tokenizer(&tok_path).with_context(|| format!("tokenizer {}", tok_path.display()))?;
    let anns_path = a.data.join("annotations/trainval_hico.json");
    let anns = load_hoi_annotations(&anns_path)?;
    let n_obj = labels.objects.len();
    let obj_index = move |id: i64| coco_id_to_index(id).filter(|&k| k < n_obj);
    let t = std::time::Instant::now();
    let (samples, dropped) = hico_samples(
        &anns,
        &a.data.join("images/train2015"),
        &obj_index,
        labels.relations.len(),
    )?;
    if samples.is_empty() {
        bail!("{}: no usable training image", anns_path.display());
    }
    println!(
        "{} training images ({} dropped: relation indices outside their box list), decoded in {:.1} s",
        samples.len(),
        dropped,
        t.elapsed().as_secs_f64()
    );

    let ad = device.clone().autodiff();
    let model = match &a.init {
        Some(p) => {
            let (m, report) = load_model(&cfg, p, &ad, true)?;
            println!(
                "initialised from {}: {}",
                p.display(),
                report.to_string().lines().next().unwrap_or("")
            );
            m
        }
        None => RlipParSeDa::init(&cfg, &ad).0,
    };
    let texts = labels.flat_texts();
    let batch = tokenizer.batch_encode(&texts)?;
    let text = batch.to_tensors(&ad);
    let optim = OptimConfig {
        lr: a.lr,
        lr_backbone: a.lr_backbone,
        lr_text: a.lr_text,
        weight_decay: 1e-4,
        clip_max_norm: a.clip_max_norm,
    };
    let mut trainer = Trainer::new(
        model,
        text,
        labels.n_obj_with_none(),
        Criterion::new(CriterionConfig::default())?,
        optim.clone(),
        a.init.is_some(),
        &ad,
    );
    let scales = if a.scales.is_empty() {
        let s = cfg.eval_size;
        vec![s * 7 / 8, s, s * 9 / 8]
    } else {
        a.scales.clone()
    };
    let fit_cfg = FitConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr_drop: a.lr_drop,
        augment: AugmentConfig {
            scales,
            max_size: cfg.eval_max_size,
            flip: true,
        },
        seed: a.seed,
        max_steps: a.max_steps,
        time_limit_s: a.time_limit,
        subject_label: labels
            .objects
            .iter()
            .position(|o| o == "person")
            .unwrap_or(0),
        num_verbs: labels.relations.len(),
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let args_json = serde_json::json!({
        "data": a.data, "labels": labels.source, "config": cfg, "init": a.init,
        "optim": optim, "fit": fit_cfg,
    });
    rlip_model::util::write_atomic(
        &a.out.join("train_args.json"),
        &serde_json::to_vec_pretty(&args_json)?,
    )?;
    let metrics_path = a.out.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path)
        .with_context(|| format!("creating {}", metrics_path.display()))?;
    let steps_per_epoch = samples.len().div_ceil(a.batch_size);
    let total = (steps_per_epoch * a.epochs).min(a.max_steps.unwrap_or(usize::MAX));
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} eta {eta}")
            .expect("valid template"),
    );
    let mut meta = BTreeMap::new();
    meta.insert(META_CONFIG.to_string(), serde_json::to_string(&cfg)?);
    if let Some(p) = &a.init {
        meta.insert(
            META_BASE.to_string(),
            std::fs::canonicalize(p)?.display().to_string(),
        );
    }
    let ckpt = a.out.join("checkpoint.safetensors");
    let mut last_epoch = 0;
    let mut write_err = None;
    let result = fit(&mut trainer, &samples, &fit_cfg, |p| {
        bar.set_position(p.log.step as u64 + 1);
        bar.set_message(format!(
            "epoch {} loss {:.3} lr×{} {:.1} img/s",
            p.epoch,
            p.log.loss,
            p.log.lr_scale,
            p.images as f64 / p.seconds.max(1e-9)
        ));
        let line = serde_json::json!({
            "step": p.log.step, "epoch": p.epoch, "images": p.images, "seconds": p.seconds,
            "loss": p.log.loss, "grad_norm": p.log.grad_norm, "lr_scale": p.log.lr_scale,
            "terms": p.log.terms.iter().cloned().collect::<BTreeMap<_, _>>(),
        });
        if let Err(e) = writeln!(metrics, "{line}") {
            write_err.get_or_insert(e);
        }
        last_epoch = p.epoch;
    });
    bar.finish_and_clear();
    if let Some(e) = write_err {
        return Err(e).with_context(|| format!("writing {}", metrics_path.display()));
    }
    let steps = match result {
        Ok(s) => s,
        Err(e) => {
            // keep the parameters of the last good step
            save(&trainer, &ckpt, &meta)?;
            return Err(e).context(format!(
                "training stopped; the last good parameters are in {}",
                ckpt.display()
            ));
        }
    };
    save(&trainer, &ckpt, &meta)?;
    println!(
        "{steps} steps ({} epochs) done; checkpoint {} ; metrics {}",
        last_epoch + 1,
        ckpt.display(),
        metrics_path.display()
    );
    Ok(())
}

fn save(trainer: &Trainer, path: &Path, meta: &BTreeMap<String, String>) -> Result<()> {
    save_params(trainer.model(), path, meta).with_context(|| format!("saving {}", path.display()))
}
