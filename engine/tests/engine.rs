//! End-to-end: synthesized models load, validate and run; results are identical for every
//! thread count, for the int8-multiply baseline and for every tier.

use prom_engine::{synthesize, Model, Plan, PointwiseMode, State, SynthConfig};
use prom_kernels::{Kernels, Tier};
use std::sync::Arc;

fn model(width: f32, resolution: u32, classes: u32, seed: u64) -> Arc<Model> {
    // A few pointwise layers at int8 precision (per-layer precision), the rest ternary.
    let cfg = SynthConfig {
        width,
        resolution,
        classes,
        seed,
        int8_pointwise: vec![1, 6],
        ..SynthConfig::default()
    };
    let bytes = synthesize(&cfg).expect("synth").to_bytes();
    Arc::new(Model::from_bytes(&bytes).expect("synthesized model validates"))
}

fn image(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn logits(
    model: &Arc<Model>,
    kernels: Kernels,
    mode: PointwiseMode,
    threads: usize,
    input: &[u8],
) -> Vec<i32> {
    let plan = Arc::new(Plan::new(Arc::clone(model), kernels, mode));
    let mut state = State::new(plan, threads);
    state.run(input).to_vec()
}

#[test]
fn results_identical_across_threads_modes_and_tiers() {
    for (width, res, classes) in [(0.35, 96, 10), (1.0, 128, 37), (1.4, 96, 5), (1.0, 32, 10)] {
        let m = model(width, res, classes, 7);
        let input = image(3, (res * res * 3) as usize);
        let reference = logits(&m, Kernels::scalar(), PointwiseMode::Ternary, 1, &input);
        assert_eq!(reference.len(), classes as usize);
        assert!(reference.iter().any(|&l| l != reference[0]), "logits should not be constant");
        for tier in Tier::ALL.into_iter().filter(|t| t.is_available()) {
            let k = Kernels::new(tier).unwrap();
            for threads in [1, 2, 3] {
                for mode in [PointwiseMode::Ternary, PointwiseMode::Int8Baseline] {
                    assert_eq!(
                        logits(&m, k, mode, threads, &input),
                        reference,
                        "width {width} res {res}: tier {tier}, {threads} threads, {mode:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn mobilenetv2_1_0_224_fits_the_size_target() {
    let cfg = SynthConfig::default();
    let bytes = synthesize(&cfg).unwrap().to_bytes();
    let m = Model::from_bytes(&bytes).unwrap();
    assert_eq!(m.graph().classes(), 1000);
    let macs: u64 = m.graph().ops.iter().map(|o| o.macs).sum();
    // 300.8 M MACs of MobileNetV2-1.0-224 (+ the pool's additions counted as MACs).
    assert!((295_000_000..310_000_000).contains(&macs), "{macs} MACs");
    assert!(bytes.len() <= 2_000_000, "model is {} bytes", bytes.len());
}
