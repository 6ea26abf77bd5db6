//! Evaluation tasks: `cargo xtask golden eval DIR...` (golden cases of the official evaluators)
//! and `cargo xtask bench eval` (HICO-DET evaluation speed on a test-set-sized synthetic input).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rlip_train::eval::golden::{MetricCheck, check_case, detect_case_kind, find_cases};
use rlip_train::eval::hico::{HicoEvalConfig, HicoSetting, evaluate_hico};
use rlip_train::eval::synth::{SynthConfig, synth_hico};

fn fmt_value(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn print_check(c: &MetricCheck) {
    let tol = if c.rel_tol > 0.0 {
        format!("{:e} + {:e}·|exp|", c.abs_tol, c.rel_tol)
    } else {
        format!("{:e}", c.abs_tol)
    };
    println!(
        "{} {:<64} ours {:<22} expected {:<22} |diff| {:<10.3e} tol {tol}",
        if c.passed { "PASS" } else { "FAIL" },
        c.name,
        fmt_value(c.got),
        fmt_value(c.expected),
        c.abs_diff(),
    );
    if let (false, Some(n)) = (c.passed, &c.note) {
        println!("     {n}");
    }
}

/// `cargo xtask golden eval DIR...`: every case folder under each `DIR` (a folder holding an
/// `expected.json`, or a parent of such folders). Prints headline metrics and every failing
/// comparison (all of them with `RLIP_VERBOSE=1`); exits non-zero unless everything passes.
pub fn golden(dirs: &[PathBuf]) -> Result<()> {
    let verbose = std::env::var("RLIP_VERBOSE").is_ok_and(|v| v != "0" && !v.is_empty());
    let mut cases = Vec::new();
    for d in dirs {
        if !d.is_dir() {
            bail!("{}: no such folder", d.display());
        }
        let found = find_cases(d);
        if found.is_empty() {
            bail!(
                "{}: no golden case (a folder with expected.json) found",
                d.display()
            );
        }
        cases.extend(found);
    }
    let (mut failed_checks, mut failed_cases, mut total) = (0usize, 0usize, 0usize);
    for case in &cases {
        let kind = match detect_case_kind(case) {
            Ok(k) => format!("{k:?}"),
            Err(e) => format!("unknown ({e})"),
        };
        println!("== {} [{kind}]", case.display());
        let checks = match check_case(case) {
            Ok(c) => c,
            Err(e) => {
                println!("FAIL could not evaluate the case: {e}");
                failed_cases += 1;
                continue;
            }
        };
        let failed = checks.iter().filter(|c| !c.passed).count();
        let mut hidden = 0;
        for c in &checks {
            if verbose || c.headline || !c.passed {
                print_check(c);
            } else {
                hidden += 1;
            }
        }
        let worst = checks
            .iter()
            .map(MetricCheck::abs_diff)
            .filter(|d| d.is_finite())
            .fold(0.0f64, f64::max);
        println!(
            "-- {}: {}/{} checks passed, largest |diff| {worst:.3e}{}",
            if failed == 0 { "PASS" } else { "FAIL" },
            checks.len() - failed,
            checks.len(),
            if hidden > 0 {
                format!(" ({hidden} passing checks not shown; RLIP_VERBOSE=1 shows them)")
            } else {
                String::new()
            }
        );
        total += checks.len();
        failed_checks += failed;
        failed_cases += usize::from(failed > 0);
    }
    println!(
        "golden eval: {} case(s), {total} checks, {failed_checks} failed, {failed_cases} case(s) failed",
        cases.len()
    );
    if failed_cases > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// `cargo xtask bench eval [-- --images N --pairs N --seed N --release]`.
///
/// The `cargo xtask` alias builds xtask unoptimised, so the benchmark re-runs itself with the
/// evaluation crates optimised: by default in the dev profile with `opt-level = 3` and no debug
/// assertions for `rlip-data` and `rlip-train` (their dependencies are already optimised there,
/// so only those two crates are rebuilt), or with `--release` as a full release build.
pub fn bench(args: &[String]) -> Result<()> {
    let mut cfg = SynthConfig::hico_test_sized();
    let mut release = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name}: not a number"))
        };
        match a.as_str() {
            "--images" => cfg.images = val("--images")? as usize,
            "--pairs" => cfg.pairs = val("--pairs")? as usize,
            "--seed" => cfg.seed = val("--seed")?,
            "--release" => release = true,
            other => bail!(
                "bench eval: unknown argument {other:?} (use --images N, --pairs N, --seed N, --release)"
            ),
        }
    }
    let child = std::env::var_os("RLIP_XTASK_BENCH_CHILD").is_some();
    if !child && cfg!(debug_assertions) {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(crate::root())
            .env("RLIP_XTASK_BENCH_CHILD", "1");
        if release {
            c.args(["run", "--quiet", "--release", "-p", "xtask"]);
        } else {
            c.args(["run", "--quiet", "-p", "xtask"]);
            for krate in ["rlip-data", "rlip-train"] {
                for (k, v) in [
                    ("opt-level", "3"),
                    ("debug-assertions", "false"),
                    ("overflow-checks", "false"),
                ] {
                    c.arg("--config")
                        .arg(format!("profile.dev.package.{krate}.{k}={v}"));
                }
            }
        }
        c.args(["--", "bench", "eval", "--"]).args(args);
        eprintln!("+ {c:?}");
        let st = c.status().context("running the optimised benchmark")?;
        std::process::exit(st.code().unwrap_or(1));
    }
    let build = if !cfg!(debug_assertions) {
        "release"
    } else if child {
        "dev profile with rlip-data/rlip-train at opt-level 3, no debug assertions"
    } else {
        "UNOPTIMISED"
    };
    println!(
        "HICO-DET evaluation benchmark: synthetic, seed {}, build {build}, single thread",
        cfg.seed
    );
    let t = Instant::now();
    let data = synth_hico(&cfg);
    let gen_s = t.elapsed().as_secs_f64();
    let n_gt: usize = data.gts.iter().map(|g| g.hois.len()).sum();
    let n_boxes: usize = data.gts.iter().map(|g| g.boxes.len()).sum();
    println!(
        "{:>7} {:>10} {:>6} {:>10} {:>9} {:>9} {:>8} {:>11}",
        "images", "pairs/img", "verbs", "kept/img", "GT HOIs", "GT boxes", "classes", "generate s"
    );
    println!(
        "{:>7} {:>10} {:>6} {:>10} {:>9} {:>9} {:>8} {:>11.2}",
        cfg.images,
        cfg.pairs,
        117,
        100,
        n_gt,
        n_boxes,
        data.classes.len(),
        gen_s
    );
    println!();
    println!(
        "{:<28} {:>7} {:>12} {:>9} {:>9} {:>9}",
        "evaluate_hico setting", "seconds", "triplets/s", "mAP", "rare", "non-rare"
    );
    let settings = [
        ("Default, no NMS", HicoEvalConfig::default()),
        ("Default, triplet NMS", HicoEvalConfig::official_with_nms()),
        (
            "Known Object, triplet NMS",
            HicoEvalConfig {
                setting: HicoSetting::KnownObject,
                ..HicoEvalConfig::official_with_nms()
            },
        ),
    ];
    for (name, c) in settings {
        let t = Instant::now();
        let r = evaluate_hico(&data.preds, &data.gts, &data.correct_mat, &data.buckets, &c)?;
        let s = t.elapsed().as_secs_f64();
        // "triplets": the (pair, verb) candidates ranked per image.
        let triplets = (cfg.images * cfg.pairs * 117) as f64;
        println!(
            "{:<28} {:>7.2} {:>12.3e} {:>9.4} {:>9.4} {:>9.4}",
            name,
            s,
            triplets / s,
            r.metrics.map,
            r.metrics.map_rare,
            r.metrics.map_non_rare
        );
    }
    Ok(())
}
