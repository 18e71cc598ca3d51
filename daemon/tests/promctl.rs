//! promctl end to end: the real binary on synthesized models and image files.

use prom_engine::{softmax, top_k, Model, Plan, PointwiseMode, State};
use prom_kernels::Kernels;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn promctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_promctl")).args(args).output().expect("run promctl")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("promctl-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn synth(dir: &Path) -> PathBuf {
    let model = dir.join("m.prom");
    let out = promctl(&[
        "synth",
        "--width",
        "0.35",
        "--resolution",
        "96",
        "--classes",
        "12",
        "--seed",
        "5",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    model
}

#[test]
fn synth_then_inspect() {
    let dir = tmpdir("inspect");
    let model = synth(&dir);
    let out = promctl(&["inspect", "--json", model.to_str().unwrap()]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metadata"]["classes"], 12);
    assert_eq!(v["labels"].as_array().unwrap().len(), 12);
    assert_eq!(v["sections"].as_array().unwrap().len(), 4);
    let macs: u64 =
        v["layers"].as_array().unwrap().iter().map(|l| l["macs"].as_u64().unwrap()).sum();
    assert_eq!(macs, v["macs"].as_u64().unwrap());
    let text = promctl(&["inspect", model.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("pointwise"));
}

#[test]
fn classify_matches_the_engine() {
    let dir = tmpdir("classify");
    let model_path = synth(&dir);
    // Two 96x96 PPM images (the model's input size, so no resampling is involved).
    let mut images = Vec::new();
    for i in 0..2u8 {
        let pixels: Vec<u8> =
            (0..96 * 96 * 3).map(|j| ((j * (i as usize + 3)) % 251) as u8).collect();
        let mut ppm = b"P6\n96 96\n255\n".to_vec();
        ppm.extend_from_slice(&pixels);
        let p = dir.join(format!("img{i}.ppm"));
        std::fs::write(&p, &ppm).unwrap();
        images.push((p, pixels));
    }
    let mut args = vec!["classify", "--json", "--top", "3", model_path.to_str().unwrap()];
    args.extend(images.iter().map(|(p, _)| p.to_str().unwrap()));
    let out = promctl(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let model = Arc::new(Model::open(&model_path).unwrap());
    let plan = Arc::new(Plan::new(Arc::clone(&model), Kernels::scalar(), PointwiseMode::Ternary));
    let mut state = State::new(plan, 1);
    let scale = model.graph().tensors.last().unwrap().scale;
    for (line, (path, pixels)) in String::from_utf8_lossy(&out.stdout).lines().zip(&images) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["image"], path.to_str().unwrap());
        let mut probs = vec![0f32; 12];
        softmax(state.run(pixels), scale, &mut probs);
        let mut best = [0usize; 3];
        top_k(&probs, &mut best);
        let got: Vec<u64> =
            v["top"].as_array().unwrap().iter().map(|t| t["class"].as_u64().unwrap()).collect();
        assert_eq!(got, best.map(|b| b as u64));
        assert_eq!(v["top"][0]["label"], format!("class {}", best[0]));
    }
}

#[test]
fn benchmark_help_says_arm_figures_are_estimates_and_how_to_measure_a_pi() {
    let out = promctl(&["benchmark", "--help"]);
    assert!(out.status.success());
    let help =
        String::from_utf8(out.stdout).unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "ARM figures",
        "are estimates from a static cycle model",
        "Raspberry Pi",
        "`promctl benchmark`",
        "`cargo bench -p prom-benches --bench pointwise`",
    ] {
        assert!(help.contains(needle), "benchmark --help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn benchmark_json_has_the_documented_fields() {
    let dir = tmpdir("bench");
    let model = synth(&dir);
    let out = promctl(&[
        "benchmark",
        "--model",
        model.to_str().unwrap(),
        "--iterations",
        "3",
        "--warmup",
        "1",
        "--threads",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["p50", "p90", "p99", "mean"] {
        assert!(v["latency_ms"][key].as_f64().unwrap() > 0.0);
        assert!(v["baseline_int8_latency_ms"][key].as_f64().unwrap() > 0.0);
    }
    assert_eq!(v["threads"], 2);
    assert!(v["fps"].as_f64().unwrap() > 0.0);
    assert!(!v["tier"].as_str().unwrap().is_empty());
    assert!(v["layers"].as_array().unwrap().len() > 10);
    assert!(v["model_bytes"].as_u64().unwrap() < v["fp16_bytes"].as_u64().unwrap());
    assert!(v["energy"]["ratio"].as_f64().unwrap() > 1.0);
    assert!(v["open_ms"].as_f64().is_some());
}

#[test]
fn errors_name_the_problem() {
    let dir = tmpdir("errors");
    let out = promctl(&["inspect", dir.join("missing.prom").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.prom"));
    let bad = dir.join("bad.prom");
    std::fs::write(&bad, b"PROMMDL\0garbage").unwrap();
    let out = promctl(&["inspect", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = synth(&dir);
    let junk = dir.join("junk.jpg");
    std::fs::write(&junk, b"definitely not a jpeg").unwrap();
    let out = promctl(&["classify", model.to_str().unwrap(), junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.jpg"));
    let out = promctl(&["synth", "--width", "2.0", "-o", dir.join("x.prom").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("width multiplier 2"));
}
