//! Frame preparation: a 640x480 camera frame to the 224x224 RGB model input (centre crop,
//! bilinear resize, colour conversion), per source format. The daemon's target is
//! preparation + publishing at most 10% of inference time (docs/BENCHMARKS.md).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prom_daemon::preprocess::{Crop, Frame, PixelFormat, Preprocessor};
use prom_daemon::sources::{convert_rgb, render_rgb, Scene};

fn frame_prep(c: &mut Criterion) {
    let (w, h) = (640usize, 480usize);
    let mut rgb = vec![0u8; w * h * 3];
    render_rgb(Scene::ColourBars, 0, w, h, &mut rgb);
    let mut g = c.benchmark_group("frame_prep");
    g.throughput(Throughput::Elements(224 * 224));
    for format in [PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::Yuv420, PixelFormat::Rgb24] {
        let mut data = vec![0u8; format.frame_len(w, h).unwrap()];
        convert_rgb(&rgb, w, h, format, &mut data);
        let mut pre = Preprocessor::new(format, w, h, Crop::Centre, 224, 224).unwrap();
        let mut out = vec![0u8; pre.output_len()];
        let frame = Frame::new(format, w, h, &data);
        g.bench_function(BenchmarkId::new(format.name(), "640x480-224"), |b| {
            b.iter(|| pre.run(&frame, &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, frame_prep);
criterion_main!(benches);
