//! `cargo xtask demo`: the whole pipeline on the built-in synthetic dataset — generate it,
//! pre-train the small RLIPv2 preset on its Visual Genome form (label texts sampled per batch,
//! relational pseudo-labels), fine-tune it on its HICO-DET form, evaluate Full / Rare / Non-Rare
//! mAP and the zero-shot mAP on the held-out combinations, run `rlip infer` on test images, and
//! write `report.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{cargo, ok, root};

/// Demo settings.
pub struct DemoArgs {
    /// Output folder.
    pub out: PathBuf,
    /// Backend (`flex`, `wgpu`, `cuda`).
    pub backend: String,
    /// Synthetic dataset size.
    pub size: String,
    /// Pre-training steps.
    pub pretrain_steps: usize,
    /// Fine-tuning steps.
    pub finetune_steps: usize,
    /// Cap on the training time in seconds (a fifth for pre-training, the rest for
    /// fine-tuning): only a machine slower than the one the step counts were chosen on reaches
    /// it, and the report then says that training was cut short.
    pub train_seconds: f64,
}

/// Steps a run logged in `metrics.jsonl` (the last step index plus one).
fn steps_logged(metrics: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("parsing a line of {}", metrics.display()))?;
        if let Some(step) = v["step"].as_u64() {
            n = n.max(step as usize + 1);
        }
    }
    Ok(n)
}

fn headline(report: &serde_json::Value, name: &str) -> Option<f64> {
    report["headline"]
        .as_array()?
        .iter()
        .find(|h| h["name"].as_str() == Some(name))
        .and_then(|h| h["value"].as_f64())
}

/// Runs the demo.
pub fn run(a: DemoArgs) -> Result<()> {
    let start = Instant::now();
    let out = if a.out.is_absolute() {
        a.out.clone()
    } else {
        std::env::current_dir()?.join(&a.out)
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // 1. the CLI, built once (dev profile: dependencies and our numeric crates are optimised)
    let mut build = cargo();
    build.args(["build", "-p", "rlip-backends", "--features", &a.backend]);
    if a.backend == "cuda" {
        build.env("CUDARC_CUDA_VERSION", "13000");
    }
    ok(&mut build)?;
    let build_s = start.elapsed().as_secs_f64();
    let bin = root().join("target/debug/rlip");
    let rlip = |args: &[&str]| -> Result<()> {
        let mut c = Command::new(&bin);
        c.args(["--backend", &a.backend]).args(args);
        if a.backend == "wgpu" {
            c.env("CUBECL_AUTOTUNE_LEVEL", "minimal");
        }
        ok(&mut c)
    };
    let t0 = Instant::now();
    // 2. the dataset
    let data = out.join("data");
    crate::synth::run(&data, &a.size, 0, 128, true)?;
    let data_s = data.to_str().context("non-UTF-8 path")?;
    let run_dir = out.join("finetune");
    let ckpt = run_dir.join("checkpoint.safetensors");
    let ckpt_s = ckpt.to_str().context("non-UTF-8 path")?;
    let tok = data.join("tokenizer.json");
    let labels = data.join("labels.json");
    let (tok_s, labels_s) = (
        tok.to_str().context("non-UTF-8 path")?,
        labels.to_str().context("non-UTF-8 path")?,
    );
    // 3. training: pre-training on the VG form, then fine-tuning on the HICO-DET form
    let pre_dir = out.join("pretrain");
    let (pre_steps, ft_steps) = (a.pretrain_steps.to_string(), a.finetune_steps.to_string());
    // both stages drop their learning rates ×0.1 for the last fifth of their steps (the
    // official step decay, counted in steps: the runs are shorter than the official drop epoch)
    let drop_at = |steps: usize| (steps * 4 / 5).to_string();
    let (pre_drop, ft_drop) = (drop_at(a.pretrain_steps), drop_at(a.finetune_steps));
    let pre_limit = (a.train_seconds * 0.2).to_string();
    let ft_limit = (a.train_seconds * 0.8).to_string();
    let common = [
        "train",
        "--data",
        data_s,
        "--config",
        "small",
        "--epochs",
        "1000",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--lr-backbone",
        "5e-4",
        "--lr-text",
        "5e-4",
        "--workers",
        "1",
        "--augment",
        "light",
    ];
    for p in [&pre_dir, &run_dir] {
        if p.join("checkpoints").exists() {
            std::fs::remove_dir_all(p).with_context(|| format!("clearing {}", p.display()))?;
        }
    }
    let pre_s = pre_dir.to_str().context("non-UTF-8 path")?;
    let pre_ckpt = pre_dir.join("checkpoint.safetensors");
    let mut args = common.to_vec();
    args.extend([
        "--mode",
        "pretrain",
        "--max-steps",
        &pre_steps,
        "--lr-drop-step",
        &pre_drop,
        "--time-limit",
        &pre_limit,
        "--out",
        pre_s,
    ]);
    rlip(&args)?;
    let mut args = common.to_vec();
    let run_s = run_dir.to_str().context("non-UTF-8 path")?;
    let pre_ckpt_s = pre_ckpt.to_str().context("non-UTF-8 path")?;
    args.extend([
        "--init",
        pre_ckpt_s,
        "--max-steps",
        &ft_steps,
        "--lr-drop-step",
        &ft_drop,
        "--time-limit",
        &ft_limit,
        "--out",
        run_s,
    ]);
    rlip(&args)?;
    // 4. evaluation: Default setting, then zero-shot on the unseen combinations
    let eval_default = out.join("eval_default.json");
    let eval_zero = out.join("eval_zero_shot.json");
    for (extra, path) in [(None, &eval_default), (Some("unseen-file"), &eval_zero)] {
        let mut args = vec![
            "eval",
            "--dataset",
            "hico",
            "--root",
            data_s,
            "--checkpoint",
            ckpt_s,
            "--tokenizer",
            tok_s,
            "--labels",
            labels_s,
            "--batch-size",
            "8",
            "--out",
            path.to_str().context("non-UTF-8 path")?,
        ];
        if let Some(z) = extra {
            args.extend(["--zero-shot", z]);
        }
        rlip(&args)?;
    }
    // 5. inference on a few test images
    let test_dir = data.join("images/test2015");
    let mut images: Vec<PathBuf> = std::fs::read_dir(&test_dir)
        .with_context(|| format!("reading {}", test_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    images.sort();
    images.truncate(4);
    let infer_dir = out.join("infer");
    let mut args: Vec<String> = [
        "infer",
        "--checkpoint",
        ckpt_s,
        "--tokenizer",
        tok_s,
        "--labels",
        labels_s,
        "--validity",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(
        data.join("annotations/corre_hico.npy")
            .display()
            .to_string(),
    );
    args.extend(["--draw", "4", "--batch-size", "4", "--out"].map(String::from));
    args.push(infer_dir.display().to_string());
    args.push("--image".into());
    args.extend(images.iter().map(|p| p.display().to_string()));
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    rlip(&args_ref)?;

    // 6. the report
    let read = |p: &Path| -> Result<serde_json::Value> {
        serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))
    };
    let (d, z) = (read(&eval_default)?, read(&eval_zero)?);
    let done_pre = steps_logged(&pre_dir.join("metrics.jsonl"))?;
    let done_ft = steps_logged(&run_dir.join("metrics.jsonl"))?;
    let capped = done_pre < a.pretrain_steps || done_ft < a.finetune_steps;
    if capped {
        eprintln!(
            "warning: the time cap (--train-seconds {}) ended training after {done_pre} of {} \
             pre-training and {done_ft} of {} fine-tuning steps: the numbers below are not the \
             step budget's",
            a.train_seconds, a.pretrain_steps, a.finetune_steps
        );
    }
    // a metric without any ground truth (e.g. no rare test pairs in a tiny set) is NaN in the
    // report: it becomes null here
    let get = |r: &serde_json::Value, n: &str| -> Option<f64> {
        headline(r, n).filter(|v| v.is_finite()).map(|v| 100.0 * v)
    };
    let report = serde_json::json!({
        "map_full": get(&d, "Default Full mAP"),
        "map_rare": get(&d, "Default Rare mAP"),
        "map_nonrare": get(&d, "Default Non-Rare mAP"),
        "zero_shot_unseen_map": get(&z, "Default Unseen mAP"),
        "zero_shot_seen_map": get(&z, "Default Seen mAP"),
        "map_unit": "percent (HICO-DET Default setting, official evaluator)",
        "pretrain_steps": done_pre,
        "finetune_steps": done_ft,
        "cut_short_by_time_cap": capped,
        "wall_seconds": t0.elapsed().as_secs_f64(),
        "build_seconds": build_s,
        "backend": a.backend,
        "dataset": a.size,
        "checkpoint": ckpt,
        "metrics": run_dir.join("metrics.jsonl"),
        "curves": [pre_dir.join("curves.png"), run_dir.join("curves.png")],
        "pngs": infer_dir,
    });
    let report_path = out.join("report.json");
    std::fs::write(&report_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    println!("\n== RLIP-rs demo ({} backend)", a.backend);
    for k in [
        "map_full",
        "map_rare",
        "map_nonrare",
        "zero_shot_unseen_map",
        "pretrain_steps",
        "finetune_steps",
        "wall_seconds",
    ] {
        println!("{k:<22} {}", report[k]);
    }
    println!(
        "checkpoint {}\nmetrics    {}\ncurves     {} {}\npngs       {}\nreport     {}",
        ckpt.display(),
        run_dir.join("metrics.jsonl").display(),
        pre_dir.join("curves.png").display(),
        run_dir.join("curves.png").display(),
        infer_dir.display(),
        report_path.display()
    );
    if !report["map_full"].is_number() {
        bail!("the demo produced no mAP");
    }
    Ok(())
}
