//! `rlip`: the RLIP-rs command line.

mod eval;
mod infer;
mod train;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rlip_backends::{BackendKind, F32Precision, Precision, device};
use rlip_model::weights::{StateDict, pth, st};

/// RLIPv2 relation detection on any Burn backend.
#[derive(Parser, Debug)]
#[command(name = "rlip", version, about)]
struct Cli {
    /// Backend to run on (must be compiled in: see `rlip backends`).
    #[arg(long, global = true, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
    /// Device index for GPU backends (wgpu: n-th discrete GPU; tch: CUDA device; cuda: device).
    #[arg(long, global = true)]
    device: Option<usize>,
    /// Float precision of weights and activations: `bf16` and `f16` run everything but the
    /// float32 islands (norms, softmax, box refinement, deformable-attention sampling) in that
    /// type; `train` and `bench train` then keep float32 master weights (mixed precision; f16
    /// with dynamic loss scaling).
    #[arg(long, global = true, value_enum, default_value = "f32")]
    float_dtype: Precision,
    /// How float32 matmuls and convolutions run on wgpu and cuda: `high` (each backend's
    /// fastest routine; TF32 tensor cores on CUDA) or `highest` (float32 throughout; slower,
    /// for parity runs).
    #[arg(long, global = true, value_enum, default_value = "high")]
    f32_precision: F32Precision,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List a checkpoint's tensors (name, dtype, shape) and its other entries.
    Inspect {
        /// A `.pth` (torch.save zip) or `.safetensors` file.
        file: PathBuf,
    },
    /// Write the model weights of a checkpoint (`model` entry of a `.pth`) as safetensors.
    Convert {
        /// Input `.pth` or `.safetensors`.
        input: PathBuf,
        /// Output `.safetensors` (written atomically).
        output: PathBuf,
    },
    /// List the backends compiled into this binary and check that the selected one runs.
    Backends,
    /// Benchmarks (not tests): `rlip bench infer|train|msda|gpu` time the model on synthetic
    /// input.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Fine-tune on a HICO-DET-format folder or pre-train on VG scene graphs (resumable).
    Train(Box<train::TrainArgs>),
    /// Detect relation triplets on images: writes `<image>.json` and an annotated `<image>.png`.
    Infer(infer::InferArgs),
    /// Evaluate a test split (HICO-DET, V-COCO, Open Images) with the official metrics.
    Eval(eval::EvalArgs),
}

/// Benchmarks.
#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Inference images/s of a preset (freshly initialised weights, synthetic input).
    Infer(rlip_backends::bench::BenchInferArgs),
    /// Training steps/s of a preset (synthetic images and targets, the official criterion and
    /// optimiser step).
    Train(rlip_backends::bench::BenchTrainArgs),
    /// The deformable-attention sampling core alone (fused kernel and portable composite,
    /// forward and forward + backward).
    Msda(rlip_backends::bench::BenchMsdaArgs),
    /// The GPU suite: r50 inference (batch 1 and 4), an r50 training step and the
    /// deformable-attention core, in one process.
    Gpu(rlip_backends::bench::BenchGpuArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Burn creates some state (e.g. AdamW moments loaded by `--resume`) on its default device,
    // which prefers CUDA when compiled in: make it the device this run uses. Nothing else runs
    // yet, so changing the environment here is sound.
    if std::env::var_os("BURN_DEVICE").is_none() {
        let name = match cli.backend {
            BackendKind::Flex => "flex",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Tch => "tch",
            BackendKind::Cuda => "cuda",
        };
        // SAFETY: single-threaded at this point (no backend, logger or worker thread started).
        unsafe { std::env::set_var("BURN_DEVICE", name) };
    }
    if let Err(e) = run(cli) {
        eprintln!("error: {}", error_text(&e));
        std::process::exit(1);
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text the message before it
/// already contains (library errors often include their source in their own message).
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    if cli.float_dtype != Precision::F32 {
        rlip_backends::set_precision(cli.float_dtype)?;
    }
    rlip_backends::set_f32_precision(cli.f32_precision);
    match cli.command {
        Command::Inspect { file } => inspect(&file),
        Command::Convert { input, output } => {
            let sd = StateDict::read(&input)?;
            st::write(&sd, &output)?;
            println!("wrote {} tensors to {}", sd.len(), output.display());
            Ok(())
        }
        Command::Bench(BenchCmd::Infer(a)) => rlip_backends::bench::run(
            a,
            &cli.backend.to_string(),
            &device(cli.backend, cli.device)?,
        ),
        Command::Bench(BenchCmd::Train(a)) => rlip_backends::bench::run_train(
            a,
            &cli.backend.to_string(),
            &device(cli.backend, cli.device)?,
        ),
        Command::Bench(BenchCmd::Msda(a)) => rlip_backends::bench::run_msda(
            a,
            &cli.backend.to_string(),
            &device(cli.backend, cli.device)?,
        ),
        Command::Bench(BenchCmd::Gpu(a)) => rlip_backends::bench::run_gpu(
            a,
            &cli.backend.to_string(),
            &device(cli.backend, cli.device)?,
        ),
        Command::Train(a) => train::run(*a, cli.backend, cli.device),
        Command::Infer(a) => infer::run(a, &device(cli.backend, cli.device)?),
        Command::Eval(a) => eval::run(a, cli.backend, cli.device),
        Command::Backends => {
            for b in BackendKind::ALL {
                println!(
                    "{:<5} {}",
                    b,
                    if b.compiled() {
                        "compiled in"
                    } else {
                        "not compiled in"
                    }
                );
            }
            let dev = device(cli.backend, cli.device)?;
            let x = burn::Tensor::<2>::ones([2, 2], &dev);
            let s: f32 = (x.clone().matmul(x)).sum().into_scalar();
            if s != 8.0 {
                bail!(
                    "{} computed 2x2 ones·ones sum = {s}, expected 8",
                    cli.backend
                );
            }
            println!("{} ({:?}): ok", cli.backend, dev);
            Ok(())
        }
    }
}

fn inspect(file: &std::path::Path) -> Result<()> {
    let head = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // Zip (torch.save) and bare pickle streams (legacy torch.save, reported as unsupported) go to
    // the .pth reader; everything else is read as safetensors.
    let is_zip = head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80);
    let print_sd = |prefix: &str, sd: &StateDict| {
        let mut numel = 0usize;
        for (k, t) in sd.iter() {
            numel += t.numel();
            println!("{prefix}{k:<70} {:<8} {:?}", t.dtype.name(), t.shape);
        }
        println!("{prefix}({} tensors, {} elements)", sd.len(), numel);
    };
    if is_zip {
        let ckpt = pth::read_checkpoint(file)?;
        for (name, entry) in &ckpt.entries {
            match entry {
                pth::Entry::StateDict(sd) => {
                    println!("{name}: state dict");
                    print_sd("  ", sd);
                }
                pth::Entry::Tensor(t) => {
                    println!("{name}: tensor {} {:?}", t.dtype.name(), t.shape)
                }
                pth::Entry::Value(v) => println!("{name}: {v}"),
            }
        }
    } else {
        print_sd("", &st::read(file)?);
    }
    Ok(())
}
