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
    /// Run the test suite: unit and golden tests on flex, and the cross-backend parity suite on
    /// every backend this machine can run (wgpu via a Vulkan driver, tch via `.venv`); then
    /// `cargo check` the cuda backend.
    Test {
        /// Skip the `cargo check --features cuda` step.
        #[arg(long)]
        no_cuda_check: bool,
        /// Also build the suite with the wgpu and tch backends found on this machine and run the
        /// cross-backend parity tests on them (not yet part of CI: see the README).
        #[arg(long)]
        parity: bool,
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
        /// Training time budget in seconds.
        #[arg(long, default_value_t = 500.0)]
        train_seconds: f64,
        /// Upper bound on training epochs.
        #[arg(long, default_value_t = 50)]
        epochs: usize,
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
        #[arg(value_parser = ["infer", "train", "eval", "data"])]
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

/// Runs `cmd`, echoing its output; accepts a crash after the test harness reported success for
/// every test binary (wgpu may crash while tearing down the GPU device at process exit).
fn run_tests_tolerating_gpu_teardown(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let out = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .context("running cargo test")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    if out.status.success() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        // cargo reports a crashed test binary as "process didn't exit successfully ... (signal: 11, SIGSEGV ...)".
        let crashed_after_success = stderr.contains("process didn't exit successfully")
            && stderr.contains("SIGSEGV")
            && !stdout.contains("FAILED")
            && !stdout.contains("panicked")
            && last_binary_reported_ok(&stdout);
        if crashed_after_success
            || out.status.signal() == Some(11) && last_binary_reported_ok(&stdout)
        {
            eprintln!(
                "note: a test binary crashed at exit after all its tests passed (GPU teardown); accepted"
            );
            return Ok(());
        }
    }
    bail!("tests failed: {}", out.status)
}

fn last_binary_reported_ok(stdout: &str) -> bool {
    stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("test result:"))
        .is_some_and(|l| l.starts_with("test result: ok."))
}

fn test(no_cuda_check: bool, parity: bool) -> Result<()> {
    let mut features = vec!["rlip-tests/flex"];
    let mut cmd = cargo();
    if !parity {
        eprintln!("note: flex only; `cargo xtask test --parity` adds wgpu and tch where available");
    } else if vulkan_available() {
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
    let torch = if parity { torch_lib() } else { None };
    if torch.is_some() {
        features.push("rlip-tests/tch");
        torch_env(&mut cmd);
    } else if parity {
        eprintln!(
            "note: no torch=={TORCH_VERSION} in .venv: tch parity skipped (`cargo xtask setup` installs it)"
        );
    }
    cmd.args(["test", "--workspace", "--features"])
        .arg(features.join(","));
    run_tests_tolerating_gpu_teardown(&mut cmd)?;
    if !no_cuda_check {
        ok(cargo().env("CUDARC_CUDA_VERSION", "13000").args([
            "check",
            "-p",
            "rlip-backends",
            "--features",
            "cuda",
        ]))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup { no_torch } => setup(no_torch),
        Cmd::Test {
            no_cuda_check,
            parity,
        } => test(no_cuda_check, parity),
        Cmd::Bench { what, rest, .. } if what == "eval" => eval::bench(&rest),
        Cmd::Bench {
            what,
            workers,
            size,
            ..
        } if what == "data" => bench_data::run(&workers, &size),
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
            train_seconds,
            epochs,
        } => demo::run(demo::DemoArgs {
            out,
            backend,
            size,
            train_seconds,
            epochs,
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
