//! `rlip-golden model|backbone DIR...`: compares RLIP-rs with golden model fixtures and prints PASS/FAIL per
//! output (run through `cargo xtask golden`). Exits 0 only if every output passes.

use std::process::ExitCode;

use rlip_tests::Fixture;
use rlip_tests::golden::{encoder_checks, model_checks};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (what, dirs) = match args.split_first() {
        Some((w, d)) if (w == "model" || w == "backbone") && !d.is_empty() => {
            (w.clone(), d.to_vec())
        }
        _ => {
            eprintln!("usage: rlip-golden model|backbone FIXTURE_DIR...");
            return ExitCode::from(2);
        }
    };
    let device = match rlip_backends::default_device() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut ok = true;
    for dir in dirs {
        let path = std::path::Path::new(&dir);
        for f in ["manifest.json", "inputs.safetensors", "outputs.safetensors"] {
            if !path.join(f).is_file() {
                eprintln!("error: {dir}: missing {f}");
                return ExitCode::from(2);
            }
        }
        println!("== {dir}");
        let fx = Fixture::open(path);
        let result = if what == "model" {
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
    }
    println!("{}", if ok { "ALL PASS" } else { "SOME FAILED" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
