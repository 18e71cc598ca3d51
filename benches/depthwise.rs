//! Criterion: int8 depthwise 3x3 over every distinct depthwise shape of MobileNetV2-1.0-224,
//! best SIMD tier against scalar, single thread. Throughput in MACs.
//!
//! `cargo bench -p prom-benches --bench depthwise`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prom_benches::{mobilenetv2_depthwise, OwnedEpilogue, Rng};
use prom_kernels::{DepthwiseShape, Kernels};
use std::time::Duration;

fn depthwise(c: &mut Criterion) {
    let tiers = [Kernels::detect().expect("kernel tier (PROM_KERNEL_TIER)"), Kernels::scalar()];
    let mut group = c.benchmark_group("depthwise");
    group.sample_size(20).warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    for (i, (h, w, ch, stride)) in mobilenetv2_depthwise().into_iter().enumerate() {
        let mut rng = Rng::new(100 + i as u64);
        let shape = DepthwiseShape { height: h, width: w, channels: ch, stride };
        let (ho, wo) = (shape.out_height(), shape.out_width());
        let input = rng.i8s(h * w * ch);
        let weights = rng.weights(9 * ch);
        let epi = OwnedEpilogue::new(&mut rng, ch, 3000.0);
        let mut out = vec![0i8; ho * wo * ch];
        group.throughput(Throughput::Elements((ho * wo * ch * 9) as u64));
        for kern in tiers {
            let id =
                BenchmarkId::new(format!("dw-{}", kern.tier()), format!("{h}x{w}x{ch}s{stride}"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    kern.depthwise3x3(shape, &input, -128, &weights, &epi.view(), 0..ho, &mut out)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, depthwise);
criterion_main!(benches);
