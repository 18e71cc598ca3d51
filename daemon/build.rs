//! Synthesizes the embedded default model (MobileNetV2-1.0-224, 1000 classes, random
//! weights with calibrated quantization) so that the daemon and `promctl demo` run on a
//! fresh machine without a model file. It is not a trained model; the daemon says so.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let cfg = prom_engine::SynthConfig { seed: 2026, ..prom_engine::SynthConfig::default() };
    let spec = prom_engine::synthesize(&cfg).expect("default model configuration is valid");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("default.prom"), spec.to_bytes()).expect("write default.prom");
}
