//! `rlip bench infer` and `rlip bench train`: inference and training-step throughput of a preset
//! with freshly initialised weights on synthetic input.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::prelude::*;
use clap::Args;
use rlip_model::position::PaddingMask;
use rlip_model::rlip::{RlipConfig, RlipParSeDa};

/// Arguments of `rlip bench infer`.
#[derive(Args, Debug)]
pub struct BenchInferArgs {
    /// Model preset or JSON config.
    #[arg(long, default_value = "r50")]
    pub config: String,
    /// Input `HEIGHTxWIDTH`; default: the config's eval size on a 3:5 image (800x1333 for r50).
    #[arg(long)]
    pub size: Option<String>,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Number of label texts (HICO-DET: 80 objects + "no objects" + 117 verbs = 198).
    #[arg(long, default_value_t = 198)]
    pub labels: usize,
    /// Untimed warm-up runs per batch size (GPU backends compile and autotune on the first).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs per batch size (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Append one JSON line per measurement to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `n` label texts of deterministic token ids, 6 tokens each (`<s>`, 4 words, `</s>`), as
/// `(input_ids, attention_mask)` on `device`.
fn label_tokens(cfg: &RlipConfig, n: usize, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let n_tok = 6;
    let vocab = cfg.text.vocab_size as i64;
    let ids: Vec<i64> = (0..n * n_tok)
        .map(|i| match i % n_tok {
            0 => 0,
            j if j == n_tok - 1 => 2.min(vocab - 1),
            _ => 4 + (i as i64 * 7919) % (vocab - 4).max(1),
        })
        .collect();
    (
        Tensor::from_data(TensorData::new(ids, [n, n_tok]), device),
        Tensor::ones([n, n_tok], device),
    )
}

/// Appends one JSON line to `path` (created if missing).
fn append_json(path: &std::path::Path, line: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// The peak-RSS table cell.
fn rss_cell() -> String {
    peak_rss_mib()
        .map(|v| format!("{v:.0}"))
        .unwrap_or("-".into())
}

/// Memory the device's pools hold in MiB (GPU backends; `None` on the CPU backends). Pools keep
/// their pages, so after a run this is the run's peak.
pub fn device_reserved_mib(device: &Device) -> Option<f64> {
    device
        .memory_pool_usage()
        .map(|u| u.bytes_reserved as f64 / (1024.0 * 1024.0))
        .filter(|&v| v > 0.0)
}

fn device_cell(device: &Device) -> String {
    device_reserved_mib(device)
        .map(|v| format!("{v:.0}"))
        .unwrap_or("-".into())
}

/// Runs `f` `warmup + iters` times, waiting for `device` after each; returns the first run's
/// seconds and the timed runs' seconds.
fn time_runs(
    device: &Device,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, Vec<f64>)> {
    let mut times = Vec::new();
    let mut first = 0.0;
    for i in 0..warmup + iters {
        let t = Instant::now();
        f()?;
        // Reading a result back is not enough: on lavapipe, rerunning the deformable-attention
        // forward on the same inputs and reading its output took 0.1 ms, and 1.8 s with this
        // sync, so the read had not waited for the kernel.
        device
            .sync()
            .map_err(|e| anyhow::anyhow!("waiting for the device: {e}"))?;
        let dt = t.elapsed().as_secs_f64();
        if i == 0 {
            first = dt;
        }
        if i >= warmup {
            times.push(dt);
        }
    }
    Ok((first, times))
}

/// Set while `bench gpu` times its comparison row with Burn's ops in place of the fused kernels.
static UNFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The float setting of this process as benchmark output names it: `f32` (each backend's
/// fastest float32 routines: TF32 tensor cores on CUDA), `f32-highest` (float32 throughout),
/// `bf16`, `f16`; `f32-unfused` for `bench gpu`'s row without the fused kernels.
pub fn precision_label() -> &'static str {
    match (crate::precision(), crate::f32_precision()) {
        (crate::Precision::F32, crate::F32Precision::Highest) => "f32-highest",
        (crate::Precision::F32, _) if UNFUSED.load(std::sync::atomic::Ordering::SeqCst) => {
            "f32-unfused"
        }
        (p, _) => p.name(),
    }
}

/// Prints one benchmark table row and returns the median seconds. `host` is the median time the
/// host spent issuing the work (inference only: a training step reads the matching back).
#[allow(clippy::too_many_arguments)]
fn print_row(
    backend: &str,
    config: &str,
    b: usize,
    (h, w): (usize, usize),
    first: f64,
    times: &[f64],
    host: Option<f64>,
    device: &Device,
) -> f64 {
    let m = median(times.to_vec());
    let host = host.map_or("-".to_string(), |t| format!("{:.1}", t * 1e3));
    println!(
        "| {backend} | {config} | {b} | {h}x{w} | {:.1} | {host} | {:.2} | {first:.1} | {} | {} |",
        m * 1e3,
        b as f64 / m,
        rss_cell(),
        device_cell(device)
    );
    m
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark and prints one table row per batch size.
pub fn run(a: BenchInferArgs, backend: &str, device: &Device) -> Result<()> {
    let cfg = RlipConfig::resolve(&a.config)?;
    let (h, w) = match &a.size {
        Some(s) => parse_size(s)?,
        None => (cfg.eval_size, cfg.eval_max_size),
    };
    if a.iters == 0 || a.batch.contains(&0) {
        bail!("--iters and every --batch must be positive");
    }
    let t = Instant::now();
    let (model, _) = RlipParSeDa::init(&cfg, device);
    crate::limits::check_params_fit(&model, device)?;
    let init_s = t.elapsed().as_secs_f64();

    let (ids, mask) = label_tokens(&cfg, a.labels, device);
    let n_obj = (a.labels * 2 / 3).max(1);
    let mut labels = None;
    let (_, text_times) = time_runs(device, a.warmup, a.iters, || {
        let l = model.encode_labels(ids.clone(), mask.clone(), n_obj);
        let _ = l.pooled.clone().slice(s![0..1, 0..1]).into_data();
        labels = Some(l);
        Ok(())
    })?;
    let labels = labels.expect("at least one run");
    println!(
        "backend {backend}, config {}, precision {}, input {h}x{w}, {} label texts; init {init_s:.1} s; text encoder {:.1} ms",
        a.config,
        precision_label(),
        a.labels,
        median(text_times.clone()) * 1e3
    );
    println!(
        "| backend | config | batch | input | ms/batch (median of {}) | host ms | images/s | first call s | peak RSS MiB | device MiB |",
        a.iters
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &b in &a.batch {
        let n = b * 3 * h * w;
        let data: Vec<f32> = (0..n)
            .map(|i| ((i as u64 * 2654435761) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(data, [b, 3, h, w]), device);
        let pm = PaddingMask::from_sizes(&vec![(h, w); b], h, w);
        // the time until `forward` returns: the host's share (issuing the kernels), since the
        // forward itself never waits for the device
        let mut host = Vec::new();
        let (first, times) = time_runs(device, a.warmup, a.iters, || {
            let t = Instant::now();
            let out = model.forward(x.clone(), &pm, &labels);
            host.push(t.elapsed().as_secs_f64());
            let last = out.layers.last().expect("layers");
            let _ = last.verb_logits.clone().into_data();
            let _ = last.obj_boxes.clone().into_data();
            Ok(())
        })?;
        let host = median(host[a.warmup..].to_vec());
        let m = print_row(
            backend,
            &a.config,
            b,
            (h, w),
            first,
            &times,
            Some(host),
            device,
        );
        if let Some(p) = &a.json {
            let line = serde_json::json!({
                "device_reserved_mib": device_reserved_mib(device),
                "host_ms_median": host * 1e3,
                "bench": "infer", "backend": backend, "config": a.config, "batch": b,
                "precision": precision_label(),
                "height": h, "width": w, "labels": a.labels, "ms_median": m * 1e3,
                "ms_all": times.iter().map(|t| t * 1e3).collect::<Vec<_>>(),
                "images_per_s": b as f64 / m, "first_call_s": first,
                "text_encoder_ms": median(text_times.clone()) * 1e3,
                "peak_rss_mib": peak_rss_mib(),
            });
            append_json(p, &line)?;
        }
    }
    Ok(())
}

/// Arguments of `rlip bench train`.
#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// Model preset or JSON config.
    #[arg(long, default_value = "small")]
    pub config: String,
    /// Input `HEIGHTxWIDTH`; default: the config's eval size on a 2:3 image (800x1200 for r50,
    /// the official fine-tuning benchmark size).
    #[arg(long)]
    pub size: Option<String>,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub batch: Vec<usize>,
    /// Number of label texts (HICO-DET: 198).
    #[arg(long, default_value_t = 198)]
    pub labels: usize,
    /// Relation pairs per image.
    #[arg(long, default_value_t = 3)]
    pub pairs: usize,
    /// Untimed warm-up steps per batch size.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed steps per batch size (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Append one JSON line per measurement to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

fn parse_size(s: &str) -> Result<(usize, usize)> {
    s.split_once('x')
        .and_then(|(h, w)| Some((h.parse::<usize>().ok()?, w.parse::<usize>().ok()?)))
        .filter(|&(h, w)| h > 0 && w > 0)
        .ok_or_else(|| anyhow::anyhow!("--size must be HEIGHTxWIDTH, got '{s}'"))
}

/// Times full training steps (forward, official criterion with Hungarian matching, backward,
/// clipping, AdamW) on synthetic images and targets; prints one table row per batch size.
pub fn run_train(a: BenchTrainArgs, backend: &str, device: &Device) -> Result<()> {
    use rlip_train::loss::{Criterion, CriterionConfig};
    use rlip_train::matcher::PairTargets;
    use rlip_train::trainer::{LabelTexts, OptimConfig, Trainer};

    let cfg = RlipConfig::resolve(&a.config)?;
    let (h, w) = match &a.size {
        Some(s) => parse_size(s)?,
        None => (cfg.eval_size, cfg.eval_size * 3 / 2),
    };
    if a.iters == 0 || a.batch.contains(&0) || a.labels < 3 {
        bail!("--iters and every --batch must be positive, --labels at least 3");
    }
    let ad = device.clone().autodiff();
    let precision = crate::precision().dtype();
    let master = Trainer::master_dtype(precision)?;
    let (model, _) = RlipParSeDa::init_as(&cfg, &ad, master);
    crate::limits::check_params_fit(&model, &ad)?;
    let n_obj = (a.labels * 2 / 5).max(2);
    let (ids, mask) = label_tokens(&cfg, a.labels, &ad);
    let texts = LabelTexts { ids, mask, n_obj };
    let n_verb = a.labels - n_obj;
    let crit = Criterion::new(CriterionConfig::default())?;
    let mut trainer = Trainer::new(model, crit, OptimConfig::default(), true, &ad)
        .with_mixed_precision(precision)?;
    println!(
        "backend {backend}, config {}, {}, input {h}x{w}, {} label texts, {} pairs per image",
        a.config,
        match trainer.mixed_precision() {
            Some(dt) => format!("mixed precision ({dt:?} compute, f32 masters)"),
            None => precision_label().into(),
        },
        a.labels,
        a.pairs
    );
    println!(
        "| backend | config | batch | input | ms/step (median of {}) | host ms | images/s | first step s | peak RSS MiB | device MiB |",
        a.iters
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut rng = rlip_data::rng::Rng::new(11);
    for &b in &a.batch {
        let images: Vec<(Vec<f32>, usize, usize)> = (0..b)
            .map(|_| {
                let v = (0..3 * h * w).map(|_| rng.range_f32(-2.0, 2.0)).collect();
                (v, h, w)
            })
            .collect();
        let mut boxes = || {
            let (cx, cy) = (rng.range_f32(0.2, 0.8), rng.range_f32(0.2, 0.8));
            [cx, cy, rng.range_f32(0.05, 0.3), rng.range_f32(0.05, 0.3)]
        };
        let targets: Vec<PairTargets> = (0..b)
            .map(|_| {
                let mut t = PairTargets::default();
                for k in 0..a.pairs {
                    t.sub_boxes.push(boxes());
                    t.obj_boxes.push(boxes());
                    t.sub_labels.push(0);
                    t.obj_labels.push(1 + k % (n_obj - 2));
                    let mut row = vec![0f32; n_verb];
                    row[k % n_verb] = 1.0;
                    t.verb_labels.push(row);
                }
                t
            })
            .collect();
        let (first, times) = time_runs(device, a.warmup, a.iters, || {
            trainer.step(&images, &targets, &texts, 1.0).map(|_| ())?;
            Ok(())
        })?;
        let m = print_row(backend, &a.config, b, (h, w), first, &times, None, device);
        if let Some(p) = &a.json {
            let line = serde_json::json!({
                "device_reserved_mib": device_reserved_mib(device),
                "bench": "train", "backend": backend, "config": a.config, "batch": b,
                "precision": precision_label(),
                "height": h, "width": w, "labels": a.labels, "ms_median": m * 1e3,
                "ms_all": times.iter().map(|t| t * 1e3).collect::<Vec<_>>(),
                "images_per_s": b as f64 / m, "first_step_s": first,
                "peak_rss_mib": peak_rss_mib(),
            });
            append_json(p, &line)?;
        }
    }
    Ok(())
}

/// Arguments of `rlip bench msda`.
#[derive(Args, Debug)]
pub struct BenchMsdaArgs {
    /// Level sizes `HxW` (default: the encoder of an 800x1333 input, 22,223 tokens).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100x167,50x84,25x42,13x21"
    )]
    pub levels: Vec<String>,
    /// Queries (default: one per value token, as in the encoder).
    #[arg(long)]
    pub queries: Option<usize>,
    /// Images.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Heads.
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    /// Channels per head.
    #[arg(long, default_value_t = 32)]
    pub channels: usize,
    /// Sampling points per head and level.
    #[arg(long, default_value_t = 4)]
    pub points: usize,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Append one JSON line per measurement to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Before timing, check this backend's fused kernel against flex's on the same inputs
    /// (output and the three gradients); fails when one differs by more than 1e-4 of its
    /// largest reference value.
    #[arg(long)]
    pub check: bool,
}

/// Output and gradients `(∂value, ∂loc, ∂attn)` of the fused core for the output gradient
/// `grad`, on `device` (with autodiff), as flat `f32` vectors; `None` without a fused kernel.
#[allow(clippy::too_many_arguments)]
fn fused_outputs(
    device: &Device,
    shapes: &[[usize; 2]],
    dims: [usize; 6],
    value: &[f32],
    loc: &[f32],
    attn: &[f32],
    grad: &[f32],
) -> Result<Option<[Vec<f32>; 4]>> {
    use rlip_model::msda::MsdaKernel;
    let [n, tokens, lq, m, d, p] = dims;
    let l = shapes.len();
    let dev = device.clone().autodiff();
    let v = Tensor::<4>::from_data(TensorData::new(value.to_vec(), [n, tokens, m, d]), &dev)
        .require_grad();
    let lo = Tensor::<6>::from_data(TensorData::new(loc.to_vec(), [n, lq, m, l, p, 2]), &dev)
        .require_grad();
    let w = Tensor::<5>::from_data(TensorData::new(attn.to_vec(), [n, lq, m, l, p]), &dev)
        .require_grad();
    let g = Tensor::<3>::from_data(TensorData::new(grad.to_vec(), [n, lq, m * d]), &dev);
    let Some(out) = crate::msda::FusedMsda.forward(&v, shapes, &lo, &w) else {
        return Ok(None);
    };
    let grads = (out.clone() * g).sum().backward();
    let flat = |t: TensorData| -> Result<Vec<f32>> {
        t.convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading a tensor back: {e:?}"))
    };
    let missing = || anyhow::anyhow!("the fused core produced no gradient");
    Ok(Some([
        flat(out.into_data())?,
        flat(v.grad(&grads).ok_or_else(missing)?.into_data())?,
        flat(lo.grad(&grads).ok_or_else(missing)?.into_data())?,
        flat(w.grad(&grads).ok_or_else(missing)?.into_data())?,
    ]))
}

/// `(max |a − b|, max |b|)` over two equally long slices.
fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    a.iter().zip(b).fold((0.0f32, 0.0f32), |(e, r), (x, y)| {
        (e.max((x - y).abs()), r.max(y.abs()))
    })
}

/// Times the deformable-attention sampling core alone, forward and forward + backward, with the
/// fused kernel of this backend (if it has one) and the portable `grid_sample` composite.
pub fn run_msda(a: BenchMsdaArgs, backend: &str, device: &Device) -> Result<()> {
    use rlip_model::msda::{MsdaKernel, ms_deform_attn_core_portable};
    let shapes: Vec<[usize; 2]> = a
        .levels
        .iter()
        .map(|s| parse_size(s).map(|(h, w)| [h, w]))
        .collect::<Result<_>>()?;
    let tokens: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let (n, m, d, p, l) = (a.batch, a.heads, a.channels, a.points, shapes.len());
    let lq = a.queries.unwrap_or(tokens);
    if a.iters == 0 || [n, m, d, p, lq].contains(&0) {
        bail!("--iters, --batch, --heads, --channels, --points and --queries must be positive");
    }
    let mut rng = rlip_data::rng::Rng::new(5);
    let mut vec = |len: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..len).map(|_| rng.range_f32(lo, hi)).collect()
    };
    let value = vec(n * tokens * m * d, -1.0, 1.0);
    let loc = vec(n * lq * m * l * p * 2, -0.05, 1.05);
    let attn = vec(n * lq * m * l * p, 0.0, 1.0 / (l * p) as f32);
    let grad = vec(n * lq * m * d, -1.0, 1.0);
    println!(
        "backend {backend}: deformable-attention core, {n} image(s), {lq} queries, {l} levels ({tokens} tokens), {m} heads x {d}, {p} points"
    );
    if a.check {
        check_fused(
            backend,
            device,
            &shapes,
            [n, tokens, lq, m, d, p],
            [&value, &loc, &attn, &grad],
        )?;
    }
    println!(
        "| backend | implementation | pass | ms (median of {}) | first call s | device MiB |",
        a.iters
    );
    println!("|---|---|---|---|---|---|");
    type Core = fn(&Tensor<4>, &[[usize; 2]], &Tensor<6>, &Tensor<5>) -> Option<Tensor<3>>;
    let fused: Core = |v, s, loc, w| crate::msda::FusedMsda.forward(v, s, loc, w);
    let portable: Core = |v, s, loc, w| {
        Some(ms_deform_attn_core_portable(
            v.clone(),
            s,
            loc.clone(),
            w.clone(),
        ))
    };
    for (name, core) in [("fused", fused), ("portable", portable)] {
        for pass in ["forward", "forward+backward"] {
            let dev = if pass == "forward" {
                device.clone()
            } else {
                device.clone().autodiff()
            };
            let t4 = |v: &[f32], s: [usize; 4]| {
                Tensor::<4>::from_data(TensorData::new(v.to_vec(), s), &dev)
            };
            let v = t4(&value, [n, tokens, m, d]);
            let lo =
                Tensor::<6>::from_data(TensorData::new(loc.clone(), [n, lq, m, l, p, 2]), &dev);
            let w = Tensor::<5>::from_data(TensorData::new(attn.clone(), [n, lq, m, l, p]), &dev);
            let g = Tensor::<3>::from_data(TensorData::new(grad.clone(), [n, lq, m * d]), &dev);
            if core(&v, &shapes, &lo, &w).is_none() {
                println!(
                    "| {backend} | {name} | {pass} | - (no fused kernel on this backend) | | |"
                );
                break;
            }
            let read = |t: Tensor<1>| -> Result<()> {
                t.try_into_data()
                    .map(drop)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            };
            let timed = time_runs(&dev, a.warmup, a.iters, || {
                if pass == "forward" {
                    let out = core(&v, &shapes, &lo, &w).expect("checked above");
                    // one element: the sync in `time_runs` waits for the whole kernel, and a full
                    // read would time a device-to-host copy of the output as well
                    read(out.slice(s![0..1, 0..1, 0..1]).flatten(0, 2))?;
                } else {
                    let (v, lo, w) = (
                        v.clone().require_grad(),
                        lo.clone().require_grad(),
                        w.clone().require_grad(),
                    );
                    let out = core(&v, &shapes, &lo, &w).expect("checked above");
                    let grads = (out * g.clone()).sum().backward();
                    for t in [
                        v.grad(&grads)
                            .map(|t| t.slice(s![0..1, 0..1, 0..1, 0..1]).sum()),
                        lo.grad(&grads).map(|t| t.sum()),
                        w.grad(&grads).map(|t| t.sum()),
                    ]
                    .into_iter()
                    .flatten()
                    {
                        read(t)?;
                    }
                }
                Ok(())
            });
            // a device that cannot run one variant (e.g. a buffer over its size limit) still
            // reports the others
            let (first, times) = match timed {
                Ok(t) => t,
                Err(e) => {
                    // the device's root cause: the line after the last "Caused by:"
                    let e = format!("{e:#}");
                    let lines: Vec<&str> = e.lines().collect();
                    let e = lines
                        .iter()
                        .rposition(|l| l.trim() == "Caused by:")
                        .and_then(|i| lines.get(i + 1))
                        .or(lines.first())
                        .map_or("", |l| l.trim());
                    println!("| {backend} | {name} | {pass} | failed: {e} | | |");
                    continue;
                }
            };
            let med = median(times.clone());
            println!(
                "| {backend} | {name} | {pass} | {:.2} | {first:.1} | {} |",
                med * 1e3,
                device_cell(&dev)
            );
            if let Some(path) = &a.json {
                append_json(
                    path,
                    &serde_json::json!({
                        "bench": "msda", "backend": backend, "implementation": name,
                        "pass": pass, "batch": n, "queries": lq, "tokens": tokens, "heads": m,
                        "channels": d, "points": p, "levels": a.levels, "ms_median": med * 1e3,
                        "ms_all": times.iter().map(|t| t * 1e3).collect::<Vec<_>>(),
                        "first_call_s": first, "device_reserved_mib": device_reserved_mib(&dev),
                    }),
                )?;
            }
        }
    }
    Ok(())
}

/// `bench msda --check`: the fused kernel on `device` against the flex kernel.
fn check_fused(
    backend: &str,
    device: &Device,
    shapes: &[[usize; 2]],
    dims: [usize; 6],
    [value, loc, attn, grad]: [&[f32]; 4],
) -> Result<()> {
    if backend == "flex" {
        println!("check skipped: flex is the reference");
        return Ok(());
    }
    let flex = match crate::device(crate::BackendKind::Flex, None) {
        Ok(d) => d,
        Err(e) => {
            println!("check skipped: no flex reference in this build ({e})");
            return Ok(());
        }
    };
    let t = Instant::now();
    let Some(got) = fused_outputs(device, shapes, dims, value, loc, attn, grad)? else {
        println!("check skipped: no fused kernel on {backend}");
        return Ok(());
    };
    let device_s = t.elapsed().as_secs_f64();
    let want = fused_outputs(&flex, shapes, dims, value, loc, attn, grad)?
        .ok_or_else(|| anyhow::anyhow!("the flex build has no fused kernel"))?;
    let mut bad = Vec::new();
    let mut cells = Vec::new();
    for (name, (g, w)) in ["output", "d value", "d loc", "d attn"]
        .into_iter()
        .zip(got.iter().zip(&want))
    {
        let (err, scale) = max_diff(g, w);
        cells.push(format!("{name} {err:.1e} (of {scale:.1e})"));
        // NaN fails too
        if err.is_nan() || err > 1e-4 * scale {
            bad.push(name);
        }
    }
    println!(
        "check: fused on {backend} vs flex, max |difference|: {} ({device_s:.1} s on {backend})",
        cells.join(", ")
    );
    if !bad.is_empty() {
        bail!(
            "the fused kernel on {backend} disagrees with flex on {} (tolerance 1e-4 of the largest reference value)",
            bad.join(", ")
        );
    }
    Ok(())
}

/// Arguments of `rlip bench gpu`.
#[derive(Args, Debug)]
pub struct BenchGpuArgs {
    /// Small shapes only (a smoke run on a CPU or software GPU).
    #[arg(long)]
    pub quick: bool,
    /// Append one JSON line per measurement to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// The GPU suite of the anchor table in one process, in this order: r50 inference at 800x1333,
/// batch 1 (label texts cached; the text encoder alone on 198 labels), batch 1 again with
/// `--f32-precision highest` when the process runs at the default, the deformable-attention
/// core at the encoder shape (fused and portable), batch 4, and an r50 training step at batch
/// 4, 800x1200.
pub fn run_gpu(a: BenchGpuArgs, backend: &str, device: &Device) -> Result<()> {
    let (config, train_size, levels) = if a.quick {
        (
            "small",
            "96x128",
            vec!["12x16".to_string(), "6x8".into(), "3x4".into()],
        )
    } else {
        (
            "r50",
            "800x1200",
            ["100x167", "50x84", "25x42", "13x21"]
                .map(String::from)
                .to_vec(),
        )
    };
    let t = Instant::now();
    let infer = |batch: usize, warmup: usize, iters: usize| {
        run(
            BenchInferArgs {
                config: config.into(),
                size: a.quick.then(|| "96x128".into()),
                batch: vec![batch],
                labels: 198,
                warmup,
                iters,
                json: a.json.clone(),
            },
            backend,
            device,
        )
    };
    // Cheapest first: with autotune every new shape is tuned on first use (minutes on cuda),
    // so the shapes a shipped tuning cache may lack (batch 4, the training step) come last and
    // a time limit cuts them, not the rest.
    infer(1, 2, if a.quick { 3 } else { 10 })?;
    if crate::precision() == crate::Precision::F32
        && crate::f32_precision() == crate::F32Precision::High
    {
        // the float32 column: the same forward with full-float32 matmuls and convolutions
        crate::set_f32_precision(crate::F32Precision::Highest);
        let r = infer(1, 1, 3);
        crate::set_f32_precision(crate::F32Precision::High);
        r?;
        // what the fused kernels buy: the same forward with Burn's ops (`RLIP_FUSED=off`)
        if let Some(k) = rlip_model::fused::set_kernel(None) {
            UNFUSED.store(true, std::sync::atomic::Ordering::SeqCst);
            let r = infer(1, 1, 3);
            UNFUSED.store(false, std::sync::atomic::Ordering::SeqCst);
            rlip_model::fused::set_kernel(Some(k));
            r?;
        }
    }
    run_msda(
        BenchMsdaArgs {
            levels,
            queries: None,
            batch: 1,
            heads: 8,
            channels: 32,
            points: 4,
            warmup: 2,
            iters: if a.quick { 3 } else { 10 },
            json: a.json.clone(),
            check: true,
        },
        backend,
        device,
    )?;
    infer(4, 2, if a.quick { 3 } else { 10 })?;
    run_train(
        BenchTrainArgs {
            config: config.into(),
            size: Some(train_size.into()),
            batch: vec![4],
            labels: 198,
            pairs: 3,
            warmup: 2,
            iters: if a.quick { 2 } else { 5 },
            json: a.json.clone(),
        },
        backend,
        device,
    )?;
    println!("suite on {backend} took {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}
