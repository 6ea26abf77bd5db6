//! `cargo xtask bench infer|train|msda|gpu`: builds the `rlip` CLI (dev profile, optimised
//! dependencies) with every backend this machine can run and prints its inference,
//! training-step, deformable-attention or whole GPU-suite benchmark table per backend.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, ok, root, torch_env, torch_lib, vulkan_available};

/// Backends usable here: flex always; wgpu with a Vulkan driver; tch with the `.venv` torch;
/// cuda with an NVIDIA driver.
fn available() -> Vec<&'static str> {
    let mut v = vec!["flex"];
    if vulkan_available() {
        v.push("wgpu");
    }
    if torch_lib().is_some() {
        v.push("tch");
    }
    if Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        v.push("cuda");
    }
    v
}

/// Whether the wgpu device is a software rasteriser (lavapipe): only tiny shapes are practical.
fn software_vulkan() -> bool {
    !Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success())
        && !std::path::Path::new("/dev/dri/renderD128").exists()
}

/// Builds `rlip` and `rlip-golden` in the release profile with cuda, wgpu and Burn's autotuned
/// kernels (no GPU needed; `fusion` adds Burn's kernel fusion), strips them and packs them with
/// xz into a fresh `target/gpu-bench/`, with what a GPU machine without a Rust toolchain needs
/// beside them: the Vulkan loader (for wgpu), the committed tuning cache
/// (`bench/tuning/cuda-h200.db.xz`), the r50 golden fixture (`../shared/golden`) and the suite
/// script `run.sh` (`xtask/gpu-run.sh`).
pub fn pack(fusion: bool) -> Result<()> {
    let mut features = vec![
        "rlip-backends/cuda",
        "rlip-backends/wgpu",
        "rlip-backends/autotune",
        "rlip-tests/cuda",
        "rlip-tests/wgpu",
    ];
    if fusion {
        features.push("rlip-backends/fusion");
    }
    let features = features.join(",");
    let mut build = cargo();
    build.env("CUDARC_CUDA_VERSION", "13000").args([
        "build",
        "--release",
        "-p",
        "rlip-backends",
        "-p",
        "rlip-tests",
        "--bins",
        "--features",
        &features,
    ]);
    ok(&mut build)?;
    // fresh: whatever else lies there would travel with it (the device carries 64 MiB)
    let dir = root().join("target/gpu-bench");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("lib"))?;
    std::fs::create_dir_all(dir.join("environment"))?;
    for name in ["rlip", "rlip-golden"] {
        let bin = dir.join(name);
        std::fs::copy(root().join("target/release").join(name), &bin)?;
        ok(Command::new("strip").arg(&bin))?;
        ok(Command::new("xz").args(["-f", "-T0", "-6"]).arg(&bin))?;
    }
    let fixture = root().join("../shared/golden/rlipv2_parseda_r50");
    let to = dir.join("golden/rlipv2_parseda_r50");
    std::fs::create_dir_all(&to)?;
    for f in ["manifest.json", "inputs.safetensors", "outputs.safetensors"] {
        std::fs::copy(fixture.join(f), to.join(f))
            .with_context(|| format!("copying the golden fixture {}", fixture.join(f).display()))?;
    }
    // GPU containers may carry the NVIDIA Vulkan driver (its ICD file) but not the loader that
    // wgpu opens: on the lent H200 of 2026-11-28 wgpu found no adapter for want of it
    let loader = [
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/lib64/libvulkan.so.1",
        "/usr/lib/libvulkan.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .context("no libvulkan.so.1 here to carry for wgpu: `cargo xtask setup` installs libvulkan1")?;
    std::fs::copy(&loader, dir.join("lib/libvulkan.so.1"))
        .with_context(|| format!("copying {}", loader.display()))?;
    let cache = root().join("bench/tuning/cuda-h200.db.xz");
    let db = std::fs::File::create(dir.join("environment/default.db.part"))?;
    ok(Command::new("xz").arg("-dc").arg(&cache).stdout(db))
        .with_context(|| format!("unpacking {}", cache.display()))?;
    std::fs::rename(
        dir.join("environment/default.db.part"),
        dir.join("environment/default.db"),
    )?;
    let script = dir.join("run.sh");
    std::fs::copy(root().join("xtask/gpu-run.sh"), &script)?;
    let size: u64 = walk_size(&dir)?;
    println!(
        "packed {} ({:.1} MiB; features {features}; CUDARC_CUDA_VERSION 13000): on the GPU \
         machine, from the workspace root, `target/gpu-bench/run.sh OUT [SECONDS]` runs the \
         suite on cuda and wgpu and writes the tables, gpu.jsonl and the grown tuning cache to \
         OUT",
        dir.display(),
        size as f64 / (1u64 << 20) as f64
    );
    Ok(())
}

/// Total size in bytes of the files under `dir`.
fn walk_size(dir: &std::path::Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() {
            walk_size(&e.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Runs the inference (`what = "infer"`), training-step (`"train"`), deformable-attention
/// (`"msda"`) or whole GPU-suite (`"gpu"`) benchmark; `backends` empty = every available one
/// (`gpu`: every GPU one); `quick` = small shapes only.
pub fn run(what: &str, backends: Vec<String>, quick: bool) -> Result<()> {
    let avail = available();
    let chosen: Vec<String> = if backends.is_empty() {
        let gpu = |b: &&&str| **b == "cuda" || (**b == "wgpu" && !software_vulkan());
        if what == "gpu" && !quick {
            let v: Vec<String> = avail.iter().filter(gpu).map(|s| s.to_string()).collect();
            if v.is_empty() {
                bail!(
                    "no GPU backend runs here: `--quick` smoke-tests the suite on {avail:?}, \
                     `--pack` builds a binary to carry to a GPU machine"
                );
            }
            v
        } else {
            avail.iter().map(|s| s.to_string()).collect()
        }
    } else {
        for b in &backends {
            if !avail.contains(&b.as_str()) {
                bail!("backend {b} is not available on this machine (available: {avail:?})");
            }
        }
        backends
    };
    let mut build = cargo();
    build
        .args(["build", "-p", "rlip-backends", "--features"])
        .arg(chosen.join(","));
    if chosen.iter().any(|b| b == "cuda") {
        build.env("CUDARC_CUDA_VERSION", "13000");
    }
    if chosen.iter().any(|b| b == "tch") {
        torch_env(&mut build);
    }
    ok(&mut build)?;
    // the dev profile optimises every dependency (opt-level 3) and our numeric crates (2): the
    // same binary the tests and the demo use, without a second full build
    let bin = root().join("target/debug/rlip");
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let json: PathBuf = out_dir.join(format!("{what}.jsonl"));
    for b in &chosen {
        let cpu = b == "flex" || b == "tch";
        let slow = cpu || (b == "wgpu" && software_vulkan());
        let mut runs: Vec<Vec<&str>> = vec![vec![
            "--config", "small", "--batch", "1,4", "--warmup", "1", "--iters", "5",
        ]];
        if what == "gpu" {
            runs = vec![if quick { vec!["--quick"] } else { vec![] }];
        } else if what == "msda" {
            runs = vec![if quick || slow {
                vec![
                    "--levels",
                    "50x84,25x42,13x21,7x11",
                    "--warmup",
                    "1",
                    "--iters",
                    "3",
                ]
            } else {
                vec![]
            }];
        } else if what == "train" {
            // the official fine-tuning benchmark: r50, batch 4 at 800x1200 (about 70 GB on a
            // GPU with the official code); on a CPU one step of batch 1 at a smaller size
            runs = vec![vec![
                "--config", "small", "--batch", "4,8", "--warmup", "2", "--iters", "5",
            ]];
            if !quick && !slow {
                runs.push(vec![
                    "--config", "r50", "--batch", "1,4", "--size", "800x1200", "--warmup", "2",
                    "--iters", "5",
                ]);
            } else if !quick {
                eprintln!(
                    "note: {b} is CPU/software here: r50 training measured at batch 1, 400x600"
                );
                runs.push(vec![
                    "--config", "r50", "--batch", "1", "--size", "400x600", "--warmup", "0",
                    "--iters", "1",
                ]);
            }
        } else if !quick {
            if b == "wgpu" && software_vulkan() {
                eprintln!(
                    "note: wgpu runs on lavapipe (software) here: r50 at 800x1333 skipped (shader \
                     compilation alone takes many minutes)"
                );
            } else if slow {
                runs.push(vec![
                    "--config", "r50", "--batch", "1", "--warmup", "0", "--iters", "1",
                ]);
            } else {
                runs.push(vec![
                    "--config", "r50", "--batch", "1,4", "--warmup", "2", "--iters", "10",
                ]);
            }
        }
        for args in runs {
            let mut c = Command::new(&bin);
            c.args(["--backend", b, "bench", what])
                .args(args)
                .arg("--json")
                .arg(&json);
            if b == "wgpu" {
                c.env("CUBECL_AUTOTUNE_LEVEL", "minimal");
                if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
                    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
                }
            }
            if b == "tch" {
                torch_env(&mut c);
            }
            ok(&mut c)?;
        }
    }
    println!("measurements appended to {}", json.display());
    Ok(())
}
