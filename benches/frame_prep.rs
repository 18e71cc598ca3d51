//! Frame preparation: a 640x480 camera frame to the 224x224 RGB model input (centre crop,
//! bilinear resize, colour conversion), per source format. The daemon's target is
//! preparation + publishing at most 10% of inference time (docs/BENCHMARKS.md).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prom_daemon::preprocess::{Crop, Frame, PixelFormat, Preprocessor};
use prom_daemon::sources::{convert_rgb, render_rgb, Scene};
use prom_engine::{synthesize, Model, Plan, PointwiseMode, State, SynthConfig};
use prom_kernels::Kernels;

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
    // The daemon's split (pipeline::prepare_split) with the engine workers asleep, as
    // they are when a frame arrives: each iteration first lets them fall asleep.
    let format = PixelFormat::Yuyv;
    let mut data = vec![0u8; format.frame_len(w, h).unwrap()];
    convert_rgb(&rgb, w, h, format, &mut data);
    let frame = Frame::new(format, w, h, &data);
    let cfg = SynthConfig { width: 0.35, resolution: 96, classes: 10, ..SynthConfig::default() };
    let model = Arc::new(Model::from_bytes(&synthesize(&cfg).unwrap().to_bytes()).unwrap());
    let plan = Arc::new(Plan::new(model, Kernels::detect().unwrap(), PointwiseMode::Ternary));
    for threads in [1usize, 2] {
        let state = State::new(plan.clone(), threads);
        let pres: Vec<Mutex<Preprocessor>> = (0..threads)
            .map(|_| Mutex::new(Preprocessor::new(format, w, h, Crop::Centre, 224, 224).unwrap()))
            .collect();
        let mut out = vec![0u8; 224 * 224 * 3];
        g.bench_function(BenchmarkId::new("yuyv-split-cold", threads), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    std::thread::sleep(Duration::from_millis(5));
                    let t = Instant::now();
                    prom_daemon::pipeline::prepare_split(&state, &pres, &frame, &mut out, 224 * 3)
                        .unwrap();
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, frame_prep);
criterion_main!(benches);
