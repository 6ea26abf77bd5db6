//! `cargo xtask bench data`: throughput of the training input pipeline on the synthetic dataset
//! (PNG decoding from disk, the official training augmentation scaled to the 128-pixel images,
//! normalisation, padded batching) through the deterministic loader, per worker count.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rlip_data::DataError;
use rlip_data::hico::{coco_id_to_index, load_hoi_annotations};
use rlip_data::loader::{Loader, LoaderConfig};
use rlip_data::preprocess::{RgbImage, load_rgb, normalize, pad_batch};
use rlip_data::rng::Rng;
use rlip_data::synth::{SynthConfig, SynthSize, generate};
use rlip_data::transforms::{Sample, TrainAugment, augment};

/// Images per batch (the demo's training batch size).
const BATCH: usize = 8;
/// Each worker count runs whole epochs until at least this many seconds have passed.
const MIN_SECONDS: f64 = 1.5;

/// One training image: file and annotations (boxes with class index, `(subject, object, verb)`).
struct Item {
    path: PathBuf,
    boxes: Vec<([f64; 4], usize)>,
    hois: Vec<(usize, usize, usize)>,
}

/// The sample of a decoded image, as the official train loader builds it: boxes clamped to the
/// image, empty ones dropped with their relations, relations of one pair merged.
fn to_sample(item: &Item, image: RgbImage) -> Sample {
    let (w, h) = (image.width as f64, image.height as f64);
    let mut index = vec![None; item.boxes.len()];
    let (mut boxes, mut labels) = (Vec::new(), Vec::new());
    for (i, (b, label)) in item.boxes.iter().enumerate() {
        let c = [
            b[0].clamp(0.0, w),
            b[1].clamp(0.0, h),
            b[2].clamp(0.0, w),
            b[3].clamp(0.0, h),
        ];
        if c[2] > c[0] && c[3] > c[1] {
            index[i] = Some(boxes.len());
            boxes.push(c.map(|v| v as f32));
            labels.push(*label);
        }
    }
    let mut pairs: Vec<(usize, Option<usize>, Vec<usize>)> = Vec::new();
    for &(s, o, v) in &item.hois {
        let (Some(s), Some(o)) = (index[s], index[o]) else {
            continue;
        };
        match pairs.iter_mut().find(|p| p.0 == s && p.1 == Some(o)) {
            Some(p) if !p.2.contains(&v) => p.2.push(v),
            Some(_) => {}
            None => pairs.push((s, Some(o), vec![v])),
        }
    }
    Sample {
        image,
        boxes,
        labels,
        pairs,
    }
}

/// Reads the training annotations of the synthetic dataset in `dir`.
fn read_items(dir: &Path) -> Result<Vec<Item>> {
    let anns = load_hoi_annotations(dir.join("annotations/trainval_hico.json"))?;
    let images = dir.join("images/train2015");
    anns.iter()
        .map(|a| {
            let n = a.annotations.len();
            let boxes = a
                .annotations
                .iter()
                .map(|b| Ok((b.bbox, coco_id_to_index(b.category_id).context("category")?)))
                .collect::<Result<_>>()?;
            let hois = a
                .hoi_annotation
                .iter()
                .map(|r| {
                    let (s, o) = (
                        usize::try_from(r.subject_id)?,
                        usize::try_from(r.object_id)?,
                    );
                    if s >= n || o >= n {
                        bail!("{}: relation outside the box list", a.file_name);
                    }
                    Ok((s, o, usize::try_from(r.category_id - 1)?))
                })
                .collect::<Result<_>>()?;
            Ok(Item {
                path: images.join(&a.file_name),
                boxes,
                hois,
            })
        })
        .collect()
}

/// Decode + augment + normalise one image: `([3, h, w] values, h, w)`.
type Prepared = (Vec<f32>, usize, usize);

fn prepare(item: &Item, cfg: &TrainAugment, rng: &mut Rng) -> Result<Prepared, DataError> {
    let s = augment(&to_sample(item, load_rgb(&item.path)?), cfg, rng);
    Ok((normalize(&s.image), s.image.height, s.image.width))
}

/// Generates the synthetic dataset of `size` (`tiny`, `small`, `demo`) under
/// `target/bench-data/`, then prints images/s of the full training input pipeline for each
/// worker count in `workers` (0 = in the calling thread), plus a single-thread cost breakdown.
pub fn run(workers: &[usize], size: &str) -> Result<()> {
    let synth_size: SynthSize = size.parse().map_err(anyhow::Error::msg)?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench-data")
        .join(synth_size.name());
    let t = Instant::now();
    let synth = SynthConfig {
        overwrite: true,
        ..SynthConfig::new(synth_size, 0)
    };
    generate(&dir, synth).with_context(|| format!("generating {}", dir.display()))?;
    let items = std::sync::Arc::new(read_items(&dir)?);
    let px = synth.image_size;
    let cfg = TrainAugment::scaled(px, px * 1333 / 800);
    println!(
        "data pipeline bench: synthetic '{}' ({} train images, {px} px, generated in {:.1} s), \
         batch {BATCH}, TrainAugment::scaled({px}, {})",
        synth_size.name(),
        items.len(),
        t.elapsed().as_secs_f64(),
        cfg.max_size,
    );

    // Single-thread cost of each stage.
    let (mut t_dec, mut t_aug, mut t_norm, mut t_pad) = (0.0, 0.0, 0.0, 0.0);
    let mut batch = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let t0 = Instant::now();
        let image = load_rgb(&item.path)?;
        let t1 = Instant::now();
        let s = augment(
            &to_sample(item, image),
            &cfg,
            &mut Rng::derive(0, 0, i as u64),
        );
        let t2 = Instant::now();
        batch.push((normalize(&s.image), s.image.height, s.image.width));
        let t3 = Instant::now();
        if batch.len() == BATCH {
            std::hint::black_box(pad_batch(&batch));
            batch.clear();
        }
        t_dec += (t1 - t0).as_secs_f64();
        t_aug += (t2 - t1).as_secs_f64();
        t_norm += (t3 - t2).as_secs_f64();
        t_pad += t3.elapsed().as_secs_f64();
    }
    let per = |s: f64| s * 1e6 / items.len().max(1) as f64;
    println!(
        "per image, one thread: decode {:.0} µs, augment {:.0} µs, normalise {:.0} µs, \
         pad {:.0} µs",
        per(t_dec),
        per(t_aug),
        per(t_norm),
        per(t_pad)
    );

    println!(
        "{:>8} {:>8} {:>8} {:>9} {:>10}",
        "workers", "epochs", "images", "seconds", "images/s"
    );
    for &w in workers {
        let its = items.clone();
        let c = cfg.clone();
        let loader = Loader::new(
            items.len(),
            LoaderConfig::new(BATCH, w, 0),
            move |i, rng| prepare(&its[i], &c, rng),
        )?;
        let (mut images, mut epochs) = (0, 0u64);
        let start = Instant::now();
        while epochs == 0 || start.elapsed().as_secs_f64() < MIN_SECONDS {
            for b in loader.epoch(epochs, 0)? {
                let b = b?;
                images += b.items.len();
                std::hint::black_box(pad_batch(&b.items));
            }
            epochs += 1;
            if images == 0 {
                break;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{w:>8} {epochs:>8} {images:>8} {secs:>9.2} {:>10.1}",
            images as f64 / secs
        );
    }
    Ok(())
}
