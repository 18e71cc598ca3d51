//! The pipeline's capture and inference threads allocate nothing per frame once running
//! (counted by a global allocator on exactly those threads), and stale frames are dropped
//! and counted rather than queued.

// A global allocator is an unsafe trait; this test file is the only unsafe code in the crate.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prom_daemon::config::{Camera, Source, Threads};
use prom_daemon::dbus::ServiceOptions;
use prom_daemon::pipeline::{LoadedModel, ModelOrigin, Pipeline, PipelineOptions, ThreadRole};
use prom_daemon::preprocess::PixelFormat;
use prom_engine::{synthesize, SynthConfig};
use prom_kernels::Kernels;

mod common;
use common::PrivateBus;

struct Counting;

static PIPELINE_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator; the bookkeeping does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACKED.with(Cell::get) {
            PIPELINE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if TRACKED.with(Cell::get) {
            PIPELINE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn model(dir: &std::path::Path) -> Arc<LoadedModel> {
    // Large enough that inference is several times slower than producing a test-pattern
    // frame on any machine, so the unpaced camera always outruns it and frames are dropped.
    let cfg =
        SynthConfig { width: 1.0, resolution: 160, classes: 10, seed: 3, ..SynthConfig::default() };
    let path = dir.join("m.prom");
    synthesize(&cfg).unwrap().write(&path).unwrap();
    Arc::new(
        LoadedModel::load(&ModelOrigin::File(path), Kernels::detect().unwrap(), 1 << 26).unwrap(),
    )
}

fn frames_classified(p: &Pipeline) -> u64 {
    p.reports()[0].stats.frames_classified
}

fn wait_frames(p: &Pipeline, n: u64) {
    let until = Instant::now() + Duration::from_secs(30);
    while frames_classified(p) < n {
        assert!(Instant::now() < until, "only {} frames", frames_classified(p));
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn no_allocation_per_frame_on_the_hot_path() {
    let bus = PrivateBus::start();
    let service = bus.service(ServiceOptions::default());
    let mut camera = Camera::new("cam0", Source::TestPattern);
    camera.format = Some(PixelFormat::Yuyv);
    camera.fps = 1000.0;
    camera.scene_seconds = 0.01; // scenes change often: results differ frame to frame
    let handle = service.add_camera("cam0").unwrap();
    let opts = PipelineOptions {
        threads: Threads::Fixed(2),
        unpaced: true,
        thread_hook: Some(Arc::new(|role| {
            assert!(matches!(role, ThreadRole::Capture | ThreadRole::Inference));
            TRACKED.with(|t| t.set(true));
        })),
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::start(&[camera], vec![handle.clone()], model(&bus.dir), opts).unwrap();
    // Warm-up: buffers, preprocessor, score boxes and statistics reach their sizes.
    wait_frames(&pipeline, 60);
    let before = PIPELINE_ALLOCS.load(Ordering::SeqCst);
    let start = frames_classified(&pipeline);
    wait_frames(&pipeline, start + 300);
    let allocs = PIPELINE_ALLOCS.load(Ordering::SeqCst) - before;
    let done = frames_classified(&pipeline) - start;
    assert!(pipeline.stop(Duration::from_secs(5)));
    assert_eq!(allocs, 0, "{allocs} heap allocations in {done} frames on capture/inference");
    let report = &pipeline.reports()[0];
    assert!(handle.signals_sent() > 0, "results reached the bus");
    // The unpaced test pattern outruns inference: stale frames are dropped, not queued.
    assert!(report.stats.frames_captured > report.stats.frames_classified);
    assert!(report.stats.frames_dropped > 0, "{:?}", report.stats);
    assert!(
        report.stats.frames_captured
            >= report.stats.frames_classified + report.stats.frames_dropped
                - handle.signals_dropped()
    );
}
