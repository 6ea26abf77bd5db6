//! `rlip-golden [--backend B] model|backbone DIR...`: compares RLIP-rs with golden model fixtures
//! and prints PASS/FAIL per output (run through `cargo xtask golden`); exits 0 only if every
//! output passes. `rlip-golden --backend B bench-infer ...` runs the inference benchmark of
//! `rlip bench infer`, so that one binary carries both checks to a GPU machine.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rlip_backends::BackendKind;
use rlip_backends::bench::BenchInferArgs;
use rlip_tests::Fixture;
use rlip_tests::golden::{encoder_checks, model_checks};

#[derive(Parser)]
#[command(name = "rlip-golden")]
struct Cli {
    /// Backend to run on (must be compiled in).
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
    /// Device index for GPU backends.
    #[arg(long)]
    device: Option<usize>,
    /// Float precision of the model (`bf16`/`f16`: every float tensor in that type; the golden
    /// tolerances are float32 ones, so expect failures and read the errors).
    #[arg(long, value_enum, default_value = "f32")]
    float_dtype: rlip_backends::Precision,
    /// How float32 matmuls and convolutions run on wgpu and cuda (`highest`: float32
    /// throughout instead of TF32 tensor cores).
    #[arg(long, value_enum, default_value = "high")]
    f32_precision: rlip_backends::F32Precision,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole model, end to end.
    Model {
        /// Fixture folders.
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
    },
    /// Backbone, input projections and deformable encoder layers.
    Backbone {
        /// Fixture folders.
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
    },
    /// The inference benchmark (`rlip bench infer`).
    BenchInfer(BenchInferArgs),
    /// Cross-backend parity of the small preset, a forward and two training steps: every
    /// compiled-in backend against flex (set `RLIP_PARITY_CUDA=1` to include cuda).
    Parity,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = rlip_backends::set_precision(cli.float_dtype) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    rlip_backends::set_f32_precision(cli.f32_precision);
    if let Some(k) = rlip_model::dense::kernel() {
        println!("dense products: {}", k.name());
    }
    let device = match rlip_backends::device(cli.backend, cli.device) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // installed by `device`; it takes float32 tensors on wgpu and cuda devices only
    if let Some(k) = rlip_model::fused::kernel() {
        println!("fused kernels: {}", k.name());
    }
    let (model, dirs) = match cli.cmd {
        Cmd::Model { dirs } => (true, dirs),
        Cmd::Backbone { dirs } => (false, dirs),
        Cmd::Parity => {
            let forward = std::panic::catch_unwind(|| {
                rlip_tests::run_parity(
                    "small_model",
                    rlip_tests::parity::SMALL_MODEL_TOL,
                    rlip_tests::parity::small_model_case,
                )
            });
            // forward, backward (the fused kernels' gradients) and the AdamW update
            let training = std::panic::catch_unwind(|| {
                rlip_tests::run_parity(
                    "small_train_step",
                    rlip_tests::parity::SMALL_MODEL_TOL,
                    rlip_tests::parity::small_train_step_case,
                )
            });
            return if forward.is_ok() && training.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Cmd::BenchInfer(a) => {
            return match rlip_backends::bench::run(a, &cli.backend.to_string(), &device) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let mut ok = true;
    for path in dirs {
        for f in ["manifest.json", "inputs.safetensors", "outputs.safetensors"] {
            if !path.join(f).is_file() {
                eprintln!("error: {}: missing {f}", path.display());
                return ExitCode::from(2);
            }
        }
        println!("== {} ({})", path.display(), cli.backend);
        let fx = Fixture::open(&path);
        let t = std::time::Instant::now();
        let result = if model {
            model_checks(&fx, &device)
        } else {
            encoder_checks(&fx, &device)
        };
        match result {
            Ok(checks) => {
                for c in &checks {
                    println!("{c}");
                    ok &= c.pass();
                }
            }
            Err(e) => {
                println!("cannot compare: {}", e.0);
                ok = false;
            }
        }
        println!("({:.1} s)", t.elapsed().as_secs_f64());
    }
    println!("{}", if ok { "ALL PASS" } else { "SOME FAILED" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
