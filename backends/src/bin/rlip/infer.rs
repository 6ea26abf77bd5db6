//! `rlip infer`: detections and relation triplets on custom images.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use clap::{Args, ValueEnum};
use rlip_data::labels::LabelSet;
use rlip_data::preprocess::load_rgb_upright;
use rlip_model::rlip::RlipConfig;
use rlip_model::text::LabelTokenizer;
use rlip_model::util::write_atomic;
use rlip_train::eval::CorrectMat;
use rlip_train::infer::{
    PairMode, Predictor, Triplet, checkpoint_config, draw_triplets, load_model,
};

/// The model to run: configuration, checkpoint, tokenizer and label texts.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model configuration: a preset (`r50`, `swin_t`, `swin_l`, `small`) or a JSON file
    /// (default: the one stored in an RLIP-rs checkpoint, else `r50`).
    #[arg(long)]
    pub config: Option<String>,
    /// Checkpoint: an official `.pth` (its `model` entry) or a `.safetensors` file.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// HuggingFace `tokenizer.json`, or a folder with `tokenizer.json` or `vocab.json` + `merges.txt`.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Load a checkpoint that lacks some of the model's keys (new heads are initialised, query
    /// rows cut to the configured count as the official fine-tuning does).
    #[arg(long)]
    pub partial: bool,
}

/// How subjects are labelled.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeArg {
    /// `hoi` when the first object class is "person" (HICO-DET, V-COCO, the synthetic set),
    /// `sgg` otherwise.
    Auto,
    /// Human–object interactions: every subject is the first object class.
    Hoi,
    /// Scene-graph triplets: subjects are classified.
    Sgg,
}

/// Arguments of `rlip infer`.
#[derive(Args, Debug)]
pub struct InferArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Label texts: `hico`, `vcoco`, or a JSON file with `objects`/`relations` (also reads the
    /// Open Images `categories_dict.json` layout with `obj`/`rel`).
    #[arg(long, default_value = "hico")]
    labels: String,
    /// Images (PNG or JPEG).
    #[arg(long = "image", required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Output folder for `<image>.json` and `<image>.png`.
    #[arg(long, default_value = "rlip-out")]
    out: PathBuf,
    /// Images per forward pass (padded to the largest, as the official batching does).
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Triplets written to each JSON file.
    #[arg(long, default_value_t = 100)]
    top_k: usize,
    /// Triplets drawn on each PNG.
    #[arg(long, default_value_t = 8)]
    draw: usize,
    /// Smallest score drawn on the PNG.
    #[arg(long, default_value_t = 0.0)]
    min_score: f32,
    /// Verb × object validity matrix (`corre_hico.npy` style); all combinations when absent.
    #[arg(long)]
    validity: Option<PathBuf>,
    /// Skip the triplet NMS.
    #[arg(long)]
    no_nms: bool,
    /// Subject labelling.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
}

/// Loads the model and label texts into a [`Predictor`], logging timings and the key report.
pub fn build_predictor(
    m: &ModelArgs,
    labels: LabelSet,
    mode: PairMode,
    device: &Device,
) -> Result<Predictor> {
    let cfg = match (&m.config, checkpoint_config(&m.checkpoint)?) {
        (Some(spec), _) => RlipConfig::resolve(spec).context("model configuration")?,
        (None, Some(saved)) => saved,
        (None, None) => RlipConfig::r50(),
    };
    let t = Instant::now();
    let tokenizer = load_tokenizer(&m.tokenizer)?;
    let (model, report) = load_model(&cfg, &m.checkpoint, device, m.partial)?;
    rlip_backends::limits::check_params_fit(&model, device).with_context(|| {
        format!(
            "{}: the model does not fit this device",
            m.checkpoint.display()
        )
    })?;
    if !report.is_clean() {
        tracing::warn!("partial load of {}:\n{report}", m.checkpoint.display());
    }
    tracing::info!(
        "loaded {} ({} tensors) in {:.1} s",
        m.checkpoint.display(),
        report.applied.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let n_texts = labels.flat_texts().len();
    let source = labels.source.clone();
    let p = Predictor::new(model, cfg, &tokenizer, labels, mode, device)?;
    tracing::info!(
        "encoded {n_texts} label texts of {source} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(p)
}

/// A tokenizer from a `tokenizer.json` file or a folder.
pub fn load_tokenizer(path: &Path) -> Result<LabelTokenizer> {
    Ok(if path.is_dir() {
        LabelTokenizer::from_dir(path)?
    } else {
        LabelTokenizer::from_tokenizer_json(path)?
    })
}

/// Output file stems: the image's stem, made unique with its position when two collide.
fn stems(images: &[PathBuf]) -> Vec<String> {
    let base: Vec<String> = images
        .iter()
        .map(|p| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into())
        })
        .collect();
    base.iter()
        .enumerate()
        .map(|(i, s)| {
            if base.iter().filter(|b| *b == s).count() > 1 {
                format!("{s}-{i}")
            } else {
                s.clone()
            }
        })
        .collect()
}

#[derive(serde::Serialize)]
struct ImageReport<'a> {
    image: String,
    width: usize,
    height: usize,
    labels: &'a str,
    triplets: &'a [Triplet],
}

/// Runs `rlip infer`.
pub fn run(a: InferArgs, device: &Device) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let labels = LabelSet::resolve(&a.labels)?;
    let mode = match a.mode {
        ModeArg::Hoi => PairMode::Hoi,
        ModeArg::Sgg => PairMode::Sgg,
        ModeArg::Auto if labels.objects.first().is_some_and(|o| o == "person") => PairMode::Hoi,
        ModeArg::Auto => PairMode::Sgg,
    };
    let validity = a
        .validity
        .as_deref()
        .map(CorrectMat::load)
        .transpose()
        .context("validity matrix")?;
    if let Some(v) = &validity
        && (v.num_verbs, v.num_objects) != (labels.relations.len(), labels.objects.len())
    {
        bail!(
            "validity matrix is {}x{} but the labels have {} relations x {} objects",
            v.num_verbs,
            v.num_objects,
            labels.relations.len(),
            labels.objects.len()
        );
    }
    // read every image first: a bad file fails before the model is loaded
    let images = a
        .images
        .iter()
        .map(|p| load_rgb_upright(p).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("creating output folder {}", a.out.display()))?;
    let predictor = build_predictor(&a.model, labels, mode, device)?;

    let names = stems(&a.images);
    let bar = indicatif::ProgressBar::new(images.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images  {elapsed_precise}  {msg}",
        )
        .expect("valid template"),
    );
    let start = Instant::now();
    let mut model_secs = 0.0;
    for (chunk_i, chunk) in images.chunks(a.batch_size).enumerate() {
        let prepared: Vec<_> = chunk.iter().map(|im| predictor.prepare(im)).collect();
        let t = Instant::now();
        let preds = predictor.predict(&prepared)?;
        let dt = t.elapsed().as_secs_f64();
        model_secs += dt;
        bar.set_message(format!("{:.2} s/batch", dt));
        for (j, (img, pred)) in chunk.iter().zip(&preds).enumerate() {
            let idx = chunk_i * a.batch_size + j;
            let triplets = predictor.triplets(pred, validity.as_ref(), a.top_k, !a.no_nms)?;
            let json = serde_json::to_vec_pretty(&ImageReport {
                image: a.images[idx].display().to_string(),
                width: img.width,
                height: img.height,
                labels: &predictor.labels().source,
                triplets: &triplets,
            })?;
            let jpath = a.out.join(format!("{}.json", names[idx]));
            write_atomic(&jpath, &json).with_context(|| format!("writing {}", jpath.display()))?;
            let shown: Vec<Triplet> = triplets
                .iter()
                .filter(|t| t.score >= a.min_score)
                .take(a.draw)
                .cloned()
                .collect();
            let png = rlip_data::draw::encode_png(&draw_triplets(img, &shown));
            let ppath = a.out.join(format!("{}.png", names[idx]));
            write_atomic(&ppath, &png).with_context(|| format!("writing {}", ppath.display()))?;
            bar.inc(1);
            bar.suspend(|| {
                println!(
                    "{}: {} triplets, best: {}",
                    a.images[idx].display(),
                    triplets.len(),
                    triplets
                        .first()
                        .map(|t| format!(
                            "{} {} {} ({:.3})",
                            t.subject, t.relation, t.object, t.score
                        ))
                        .unwrap_or_else(|| "none".into())
                )
            });
        }
    }
    bar.finish_and_clear();
    let n = images.len() as f64;
    println!(
        "{} images in {:.2} s ({:.2} s model, {:.3} images/s); outputs in {}",
        images.len(),
        start.elapsed().as_secs_f64(),
        model_secs,
        n / model_secs.max(1e-9),
        a.out.display()
    );
    Ok(())
}
