//! `cargo xtask`: project automation (setup of test prerequisites, the test suite, golden checks).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod bench_data;
mod demo;
mod eval;
mod prepare;
mod synth;

/// The torch version burn-tch 0.22 (torch-sys 0.22) links against.
const TORCH_VERSION: &str = "2.9.0";

#[derive(Parser)]
#[command(name = "xtask", about = "RLIP-rs project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the cross-backend tests need: Mesa's lavapipe Vulkan driver (apt) and
    /// torch==2.9.0 in `.venv` (pip) for the tch backend. Idempotent.
    Setup {
        /// Skip the torch install (about 4 GB).
        #[arg(long)]
        no_torch: bool,
    },
    /// Run the test suite in one build: unit, golden and CLI tests on flex, and the cross-backend
    /// parity suite on every backend this machine can run (wgpu via a Vulkan driver such as
    /// lavapipe, tch via `.venv`; `cargo xtask setup` installs both). The cuda backend is compiled
    /// into the same build (it needs no GPU to build) and runs only with `RLIP_PARITY_CUDA=1`.
    Test {
        /// Build flex only (no wgpu, tch or cuda): the quickest build.
        #[arg(long)]
        flex_only: bool,
        /// Leave cuda out of the build.
        #[arg(long)]
        no_cuda: bool,
    },
    /// The README's main job: generate the synthetic dataset, train the small preset on it,
    /// evaluate (Full / Rare / Non-Rare and zero-shot mAP), run `rlip infer` on test images,
    /// write `OUT/report.json`.
    Demo {
        /// Output folder.
        #[arg(long, default_value = "target/demo")]
        out: PathBuf,
        /// Backend to run on.
        #[arg(long, default_value = "flex", value_parser = ["flex", "wgpu", "cuda", "tch"])]
        backend: String,
        /// Synthetic dataset size.
        #[arg(long, default_value = "demo", value_parser = ["tiny", "small", "demo"])]
        size: String,
        /// Pre-training steps (batch 4).
        #[arg(long, default_value_t = 250)]
        pretrain_steps: usize,
        /// Fine-tuning steps (batch 4).
        #[arg(long, default_value_t = 1500)]
        finetune_steps: usize,
        /// Cap on the training time in seconds (a fifth pre-training, the rest fine-tuning);
        /// the step counts end training first on a 2-core machine.
        #[arg(long, default_value_t = 530.0)]
        train_seconds: f64,
    },
    /// Benchmarks (not tests); each prints a table. `infer`: inference images/s and peak memory
    /// of the small preset and of r50 at 800x1333, per backend available here. `train`: training
    /// steps (official criterion and optimiser step) images/s and peak memory of the small preset
    /// and of r50 at the official 800x1200 (smaller on CPU). `eval`: HICO-DET
    /// evaluation time on a synthetic test-set-sized input (options after `--`: --images N,
    /// --pairs N, --seed N, --release). `data`: training input pipeline images/s on the synthetic
    /// dataset per loader worker count (--workers, --size).
    Bench {
        /// What to benchmark.
        #[arg(value_parser = ["infer", "train", "eval", "data", "msda", "gpu"])]
        what: String,
        /// `bench data`: loader worker counts to measure (0 = in the calling thread).
        #[arg(long, value_delimiter = ',', default_value = "0,1,2,4")]
        workers: Vec<usize>,
        /// `bench data`: synthetic dataset size.
        #[arg(long, default_value = "small", value_parser = ["tiny", "small", "demo"])]
        size: String,
        /// Backends to measure (default: every one available on this machine).
        #[arg(long, value_delimiter = ',')]
        backend: Vec<String>,
        /// Small preset only.
        #[arg(long)]
        quick: bool,
        /// `bench gpu`: only build the `rlip` binary (release, cuda + wgpu + autotune), strip
        /// it and pack it in `target/gpu-bench/` with the Vulkan loader, the committed tuning
        /// cache and `run.sh`, to carry to a GPU machine, where `target/gpu-bench/run.sh OUT`
        /// runs the suite on cuda and wgpu.
        #[arg(long)]
        pack: bool,
        /// `bench gpu --pack`: also Burn's kernel fusion.
        #[arg(long)]
        fusion: bool,
        /// Options of `bench eval`, after `--`.
        #[arg(last = true)]
        rest: Vec<String>,
    },
    /// Write the deterministic synthetic relational dataset (HICO-DET layout, VG pre-training
    /// file, labels.json, tokenizer.json) and print a summary.
    Synth {
        /// Output folder (must be empty or missing unless --overwrite).
        #[arg(long)]
        out: PathBuf,
        /// Dataset size: tiny (24/12 images), small (400/100) or demo (3000/400).
        #[arg(long, default_value = "small", value_parser = ["tiny", "small", "demo"])]
        size: String,
        /// Seed; the same seed gives byte-identical files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Image side in pixels.
        #[arg(long, default_value_t = 128)]
        image_size: usize,
        /// Replace the files of an earlier dataset in a non-empty folder.
        #[arg(long)]
        overwrite: bool,
    },
    /// Check a dataset folder against the layout the official code reads: print what is missing
    /// and where to get it, run the conversions this repository implements (--convert: V-COCO
    /// from the original release, VG preprocessing, a HICO-DET few-shot subset), parse every
    /// annotation file with our readers and check that the images they name exist. Exits
    /// non-zero when something required is missing or malformed. Never overwrites a file.
    Prepare {
        /// Dataset.
        #[arg(value_parser = prepare::DATASETS)]
        dataset: String,
        /// The dataset folder (HICO-DET: hico_20160224_det; V-COCO: v-coco; VG; COCO2017;
        /// Objects365; Open Images v6).
        #[arg(long)]
        root: PathBuf,
        /// Write what can be derived from files present (never replacing a file).
        #[arg(long)]
        convert: bool,
        /// HICO-DET: also check (and with --convert, draw) the few-shot subset of 1 or 10 percent.
        #[arg(long)]
        few_shot: Option<usize>,
        /// Seed of the few-shot draw.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Compare the model with golden fixture folders (manifest.json, inputs/outputs.safetensors).
    Golden {
        /// What to compare: `model` (everything, end to end), `backbone` (backbone,
        /// projections and deformable encoder layers with the fixture's fused tokens) or `eval`
        /// (evaluator cases of the layout of shared/golden/eval; a folder may hold many cases).
        #[arg(value_parser = ["model", "backbone", "eval"])]
        what: String,
        /// Fixture folders.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("+ {cmd:?}");
    cmd.status().with_context(|| format!("running {cmd:?}"))
}

fn ok(cmd: &mut Command) -> Result<()> {
    let st = run(cmd)?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn venv_python() -> PathBuf {
    root().join(".venv/bin/python")
}

/// The torch library folder of `.venv` if it holds the torch version burn-tch needs.
fn torch_lib() -> Option<PathBuf> {
    let py = venv_python();
    if !py.exists() {
        return None;
    }
    let out = Command::new(&py)
        .args(["-c", "import torch, os; print(torch.__version__); print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let version = lines.next()?;
    let lib = lines.next()?;
    (out.status.success() && version.split('+').next() == Some(TORCH_VERSION))
        .then(|| PathBuf::from(lib))
}

/// Whether a Vulkan driver (a GPU, or Mesa's lavapipe) is installed.
fn vulkan_available() -> bool {
    ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .any(|d| {
            std::fs::read_dir(d)
                .map(|mut r| r.next().is_some())
                .unwrap_or(false)
        })
}

/// Sets what building or running the tch backend against `.venv`'s torch needs.
fn torch_env(cmd: &mut Command) {
    let venv = root().join(".venv");
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("LIBTORCH_USE_PYTORCH", "1")
        .env("VIRTUAL_ENV", &venv)
        .env("PATH", path);
    if let Some(lib) = torch_lib() {
        cmd.env("LD_LIBRARY_PATH", lib);
    }
}

fn setup(no_torch: bool) -> Result<()> {
    if !vulkan_available() {
        ok(Command::new("apt-get").arg("update").arg("-qq"))?;
        ok(Command::new("apt-get").args([
            "install",
            "-y",
            "-qq",
            "mesa-vulkan-drivers",
            "libvulkan1",
        ]))?;
    }
    if !no_torch && torch_lib().is_none() {
        if !venv_python().exists() {
            ok(Command::new("python3")
                .args(["-m", "venv"])
                .arg(root().join(".venv")))?;
        }
        ok(Command::new(venv_python())
            .args(["-m", "pip", "install", "-q", "--no-cache-dir"])
            .arg(format!("torch=={TORCH_VERSION}")))?;
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs `cmd` (a `cargo test --no-fail-fast`), streaming its output; accepts only crashes of
/// test binaries that happen after their harness reported every test passed (wgpu may crash
/// while tearing down the GPU device at process exit, as Burn's own CI tolerates).
fn run_tests_tolerating_gpu_teardown(mut cmd: Command) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    eprintln!("+ {cmd:?}");
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    cmd.stdout(writer.try_clone().context("cloning a pipe")?)
        .stderr(writer);
    let mut child = cmd.spawn().context("running cargo test")?;
    // The pipe's write ends live in `cmd`: drop them so the reader sees the end of output.
    drop(cmd);
    let mut log = String::new();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading cargo test output")?;
        writeln!(out, "{line}").ok();
        log.push_str(&line);
        log.push('\n');
    }
    drop(out);
    let status = child.wait().context("waiting for cargo test")?;
    if status.success() {
        return Ok(());
    }
    let crashed = teardown_crashes_only(&log).with_context(|| format!("tests failed: {status}"))?;
    eprintln!(
        "note: {crashed} test binary(ies) crashed at exit after all their tests passed (GPU teardown); accepted"
    );
    Ok(())
}

/// Reads a `cargo test --no-fail-fast` log: `Ok(n)` when the only failures are `n` test
/// binaries killed by SIGSEGV after reporting `test result: ok.`, an error naming the first
/// other failure otherwise.
fn teardown_crashes_only(log: &str) -> Result<usize> {
    struct Target<'a> {
        name: &'a str,
        passed: bool,
        failed: bool,
        segfault: bool,
        errored: bool,
    }
    let mut targets: Vec<Target> = Vec::new();
    for line in log.lines() {
        let t = line.trim_start();
        if t.starts_with("Running ") || t.starts_with("Doc-tests ") {
            targets.push(Target {
                name: t,
                passed: false,
                failed: false,
                segfault: false,
                errored: false,
            });
        } else if let Some(cur) = targets.last_mut() {
            if t.starts_with("test result: ok.") {
                cur.passed = true;
            } else if t.starts_with("test result: FAILED") {
                cur.failed = true;
            } else if t.contains("process didn't exit successfully") {
                cur.errored = true;
                cur.segfault |= t.contains("SIGSEGV") || t.contains("signal: 11");
            }
        }
    }
    let mut crashed = 0;
    for t in &targets {
        if t.failed {
            bail!("{}: tests failed", t.name);
        }
        if t.errored {
            if !(t.passed && t.segfault) {
                bail!("{}: the test binary did not finish", t.name);
            }
            crashed += 1;
        }
    }
    if crashed == 0 {
        bail!("cargo test failed before or outside the test binaries (see the output above)");
    }
    Ok(crashed)
}

fn test(flex_only: bool, no_cuda: bool) -> Result<()> {
    let mut features = vec!["rlip-tests/flex"];
    let mut cmd = cargo();
    let mut wgpu = false;
    if flex_only {
        eprintln!("note: flex only (no cross-backend parity)");
    } else {
        if vulkan_available() {
            wgpu = true;
            features.push("rlip-tests/wgpu");
            cmd.env("CUBECL_AUTOTUNE_LEVEL", "minimal");
            if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
                cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
            }
        } else {
            eprintln!(
                "note: no Vulkan driver: wgpu parity skipped (`cargo xtask setup` installs lavapipe)"
            );
        }
        if torch_lib().is_some() {
            features.push("rlip-tests/tch");
            torch_env(&mut cmd);
        } else {
            eprintln!(
                "note: no torch=={TORCH_VERSION} in .venv: tch parity skipped (`cargo xtask setup` installs it)"
            );
        }
        if !no_cuda {
            // Built, not run: the parity harness uses cuda only with RLIP_PARITY_CUDA set.
            features.push("rlip-tests/cuda");
            cmd.env("CUDARC_CUDA_VERSION", "13000");
        }
    }
    // Burn's default device prefers cuda when compiled in; the tests' reference device is flex
    // (state Burn creates on its default device, e.g. optimiser moments on resume, lands there)
    cmd.env("BURN_DEVICE", "flex");
    let features = features.join(",");
    let mut again = Command::new(cmd.get_program());
    again.current_dir(root());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => again.env(k, v),
            None => again.env_remove(k),
        };
    }
    cmd.args([
        "test",
        "--workspace",
        "--no-fail-fast",
        "--features",
        &features,
    ]);
    run_tests_tolerating_gpu_teardown(cmd)?;
    if wgpu {
        // The deformable-attention value gradient again with compare-and-swap atomics, the path
        // of GPUs without native float atomic adds (lavapipe has them). `--workspace` keeps the
        // first run's feature resolution, so nothing is rebuilt.
        again
            .env("RLIP_MSDA_ATOMICS", "cas")
            .env("RLIP_PARITY_BACKENDS", "wgpu")
            .args([
                "test",
                "--workspace",
                "--features",
                &features,
                "--test",
                "model",
                "--",
                "msda::",
            ]);
        run_tests_tolerating_gpu_teardown(again)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup { no_torch } => setup(no_torch),
        Cmd::Test { flex_only, no_cuda } => test(flex_only, no_cuda),
        Cmd::Bench { what, rest, .. } if what == "eval" => eval::bench(&rest),
        Cmd::Bench {
            what,
            workers,
            size,
            ..
        } if what == "data" => bench_data::run(&workers, &size),
        Cmd::Bench {
            what,
            pack: true,
            fusion,
            ..
        } if what == "gpu" => bench::pack(fusion),
        Cmd::Bench {
            what,
            backend,
            quick,
            ..
        } => bench::run(&what, backend, quick),
        Cmd::Prepare {
            dataset,
            root,
            convert,
            few_shot,
            seed,
        } => prepare::run(&prepare::PrepareArgs {
            dataset,
            root,
            convert,
            few_shot,
            seed,
        }),
        Cmd::Synth {
            out,
            size,
            seed,
            image_size,
            overwrite,
        } => synth::run(&out, &size, seed, image_size, overwrite),
        Cmd::Golden { what, dirs } if what == "eval" => eval::golden(&dirs),
        Cmd::Demo {
            out,
            backend,
            size,
            pretrain_steps,
            finetune_steps,
            train_seconds,
        } => demo::run(demo::DemoArgs {
            out,
            backend,
            size,
            pretrain_steps,
            finetune_steps,
            train_seconds,
        }),
        Cmd::Golden { what, dirs } => {
            let mut c = cargo();
            c.args([
                "run",
                "--quiet",
                "-p",
                "rlip-tests",
                "--bin",
                "rlip-golden",
                "--",
            ])
            .arg(what);
            for d in dirs {
                c.arg(
                    std::fs::canonicalize(&d)
                        .with_context(|| format!("{}: no such folder", d.display()))?,
                );
            }
            let st = run(&mut c)?;
            std::process::exit(st.code().unwrap_or(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::teardown_crashes_only;

    const OK_THEN_SEGV: &str = "     Running tests/infer.rs (target/debug/deps/infer-1)\n\
running 2 tests\ntest result: ok. 2 passed; 0 failed\n\
error: test failed, to rerun pass `--test infer`\n\
Caused by:\n  process didn't exit successfully: `infer-1` (signal: 11, SIGSEGV: invalid memory reference)\n\
     Running tests/msda.rs (target/debug/deps/msda-2)\ntest result: ok. 5 passed\n";

    #[test]
    fn a_crash_after_success_is_accepted() {
        assert_eq!(teardown_crashes_only(OK_THEN_SEGV).unwrap(), 1);
    }

    #[test]
    fn failures_and_unfinished_binaries_are_not() {
        let failed = OK_THEN_SEGV.replace(
            "test result: ok. 5 passed",
            "test result: FAILED. 4 passed; 1 failed",
        );
        assert!(
            teardown_crashes_only(&failed)
                .unwrap_err()
                .to_string()
                .contains("msda")
        );
        // crashed before its harness finished
        let unfinished = OK_THEN_SEGV.replace("test result: ok. 2 passed; 0 failed\n", "");
        assert!(
            teardown_crashes_only(&unfinished)
                .unwrap_err()
                .to_string()
                .contains("infer")
        );
        // another signal
        let abort = OK_THEN_SEGV.replace(
            "signal: 11, SIGSEGV: invalid memory reference",
            "signal: 6, SIGABRT",
        );
        assert!(teardown_crashes_only(&abort).is_err());
        // a compile error: no test binary ran
        assert!(teardown_crashes_only("error[E0308]: mismatched types\n").is_err());
    }
}
