//! Criterion: the stem (3x3 stride-2 conv from uint8 RGB) of MobileNetV2 at 224 px for width
//! 0.35..1.4 (16, 32, 48 output channels), best SIMD tier against scalar. Throughput in MACs.
//!
//! `cargo bench -p prom-benches --bench stem`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prom_benches::{OwnedEpilogue, Rng};
use prom_kernels::{Kernels, StemShape};
use std::time::Duration;

fn stem(c: &mut Criterion) {
    let tiers = [Kernels::detect().expect("kernel tier (PROM_KERNEL_TIER)"), Kernels::scalar()];
    let mut group = c.benchmark_group("stem");
    group.sample_size(20).warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    for out_channels in [16, 32, 48] {
        let mut rng = Rng::new(200 + out_channels as u64);
        let shape = StemShape { height: 224, width: 224, out_channels };
        let (ho, wo) = (shape.out_height(), shape.out_width());
        let input = rng.u8s(224 * 224 * 3);
        let weights = rng.weights(27 * out_channels);
        let epi = OwnedEpilogue::new(&mut rng, out_channels, 100_000.0);
        let mut out = vec![0i8; ho * wo * out_channels];
        group.throughput(Throughput::Elements((ho * wo * out_channels * 27) as u64));
        for kern in tiers {
            let id = BenchmarkId::new(
                format!("stem-{}", kern.tier()),
                format!("224x224x3to{out_channels}"),
            );
            group.bench_function(id, |b| {
                b.iter(|| kern.stem3x3s2(shape, &input, 0, &weights, &epi.view(), 0..ho, &mut out))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, stem);
criterion_main!(benches);
