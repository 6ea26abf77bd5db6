//! The `rlip` binary end to end on a tiny synthetic dataset: train → infer → eval, and the
//! errors a user gets for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rlip_data::synth::{SynthConfig, SynthSize, generate};

fn rlip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlip"))
        .args(args)
        .output()
        .expect("running rlip")
}

fn ok(args: &[&str]) -> String {
    let out = rlip(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rlip {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = rlip(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "rlip {args:?} should fail");
    assert!(
        !stderr.contains("panicked"),
        "rlip {args:?} panicked:\n{stderr}"
    );
    stderr
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rlip-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_infer_eval_on_the_synthetic_set() {
    let dir = tmp("pipeline");
    let data = dir.join("data");
    generate(&data, SynthConfig::new(SynthSize::Tiny, 7)).expect("synthetic data");
    let run = dir.join("run");
    let out = ok(&[
        "train",
        "--data",
        s(&data),
        "--config",
        "small",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--max-steps",
        "2",
        "--out",
        s(&run),
    ]);
    assert!(out.contains("2 steps"), "{out}");
    let ckpt = run.join("checkpoint.safetensors");
    assert!(ckpt.is_file());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);

    let tok = data.join("tokenizer.json");
    let labels = data.join("labels.json");
    let img = data.join("images/test2015/synth_test2015_00000001.png");
    let infer = dir.join("infer");
    ok(&[
        "infer",
        "--checkpoint",
        s(&ckpt),
        "--tokenizer",
        s(&tok),
        "--labels",
        s(&labels),
        "--image",
        s(&img),
        "--out",
        s(&infer),
        "--top-k",
        "10",
    ]);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(infer.join("synth_test2015_00000001.json")).unwrap())
            .unwrap();
    let triplets = json["triplets"].as_array().unwrap();
    assert!(!triplets.is_empty() && triplets.len() <= 10);
    assert_eq!(triplets[0]["subject"], "person");
    let png = std::fs::read(infer.join("synth_test2015_00000001.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    let report = dir.join("report.json");
    let out = ok(&[
        "eval",
        "--dataset",
        "hico",
        "--root",
        s(&data),
        "--checkpoint",
        s(&ckpt),
        "--tokenizer",
        s(&tok),
        "--labels",
        s(&labels),
        "--out",
        s(&report),
    ]);
    assert!(out.contains("Full") && out.contains("Default"), "{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(r["headline"].as_array().is_some_and(|h| !h.is_empty()));

    // a checkpoint used with another configuration
    let e = fails(&[
        "infer",
        "--config",
        "r50",
        "--checkpoint",
        s(&ckpt),
        "--tokenizer",
        s(&tok),
        "--labels",
        s(&labels),
        "--image",
        s(&img),
        "--out",
        s(&infer),
    ]);
    assert!(e.contains("another model configuration"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tmp("bad");
    let corrupt = dir.join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
    let labels = dir.join("labels.json");
    std::fs::write(&labels, r#"{"objects": ["person"], "relations": []}"#).unwrap();
    let good_labels = dir.join("good.json");
    std::fs::write(
        &good_labels,
        r#"{"objects": ["person"], "relations": ["hold"]}"#,
    )
    .unwrap();
    let ckpt = dir.join("missing.safetensors");
    let tok = dir.join("no-tokenizer.json");
    let base = |labels: &Path, image: &Path| -> Vec<String> {
        [
            "infer",
            "--config",
            "small",
            "--checkpoint",
            s(&ckpt),
            "--tokenizer",
            s(&tok),
            "--labels",
            s(labels),
            "--image",
            s(image),
            "--out",
            s(&dir),
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |v: Vec<String>| fails(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let e = run(base(&labels, &corrupt));
    assert!(e.contains("labels.json") && e.contains("relations"), "{e}");
    let e = run(base(&good_labels, &corrupt));
    assert!(e.contains("corrupt.jpg"), "{e}");
    let e = run(base(&good_labels, &dir.join("nope.png")));
    assert!(e.contains("nope.png"), "{e}");
    let png = dir.join("ok.png");
    let img = rlip_data::preprocess::RgbImage {
        width: 8,
        height: 8,
        data: vec![9; 192],
    };
    std::fs::write(&png, rlip_data::draw::encode_png(&img)).unwrap();
    let e = run(base(&good_labels, &png));
    assert!(e.contains("no-tokenizer.json"), "{e}");
    let e = fails(&["inspect", s(&corrupt)]);
    assert!(e.contains("corrupt.jpg"), "{e}");
    let e = fails(&["--backend", "cuda", "backends"]);
    assert!(e.contains("cuda") && e.contains("--features"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
