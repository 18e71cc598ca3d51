//! Criterion: ternary (add-only) vs int8-multiply pointwise kernels over every distinct 1x1
//! shape of MobileNetV2-1.0-224, single thread. Throughput is in MACs (elements).
//!
//! `cargo bench -p prom-benches --bench pointwise`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prom_benches::{mobilenetv2_pointwise, PointwiseLayer};
use prom_kernels::{Kernels, Tier};
use std::time::Duration;

fn pointwise(c: &mut Criterion) {
    let simd = Kernels::detect().expect("kernel tier (PROM_KERNEL_TIER)");
    let scalar = Kernels::scalar();
    let simd_name = simd.tier().name();
    assert_ne!(simd.tier(), Tier::Scalar, "no SIMD tier on this CPU: nothing to compare");
    let mut group = c.benchmark_group("pointwise");
    group.sample_size(20).warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(2));
    for (i, (p, k, n)) in mobilenetv2_pointwise().into_iter().enumerate() {
        let layer = PointwiseLayer::random(p, k, n, i as u64);
        let id = format!("{p}x{k}x{n}");
        group.throughput(Throughput::Elements(layer.macs()));
        let mut out = vec![0i8; p * n];

        let mut scratch = layer.scratch(&simd);
        let tw = layer.prepared_ternary(&simd);
        group.bench_function(BenchmarkId::new(format!("ternary-{simd_name}"), &id), |b| {
            b.iter(|| layer.run_ternary(&simd, &tw, &mut out, &mut scratch))
        });
        let w = layer.int8_weights(&simd);
        group.bench_function(BenchmarkId::new(format!("int8-{simd_name}"), &id), |b| {
            b.iter(|| layer.run_int8(&simd, &w, &mut out, &mut scratch))
        });
        let mut scratch = layer.scratch(&scalar);
        let sw = layer.prepared_ternary(&scalar);
        group.bench_function(BenchmarkId::new("ternary-scalar", &id), |b| {
            b.iter(|| layer.run_ternary(&scalar, &sw, &mut out, &mut scratch))
        });
    }
    group.finish();
}

criterion_group!(benches, pointwise);
criterion_main!(benches);
