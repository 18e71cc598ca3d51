//! The frame pipeline: one capture thread per camera -> a newest-frame slot per camera
//! (bounded channel of capacity 1; a stale frame is taken back out, recycled and counted as
//! dropped) -> one inference thread (preprocessing, the engine with its worker pool, the
//! publishing policy) -> the D-Bus publisher thread (via [`CameraHandle::publish_scores`]).
//!
//! Nothing queues without bound: each camera owns a fixed set of frame buffers that circulate
//! between its capture thread and the inference thread, and score buffers circulate between
//! the inference and publisher threads. After the first frames (which size the buffers) the
//! capture and inference threads allocate nothing per frame (daemon/tests/pipeline.rs counts).
//!
//! A failing source puts its camera in the `waiting` state and is reopened with back-off;
//! the daemon never exits for it. Models are swapped by [`Pipeline::swap_model`] between two
//! frames; everything expensive (open, validate, weight preparation, worker threads)
//! happens on the caller's thread before the swap.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, Receiver, Select, Sender, TrySendError};
use prom_engine::{softmax, Model, Plan, PointwiseMode, State};
use prom_kernels::Kernels;

use crate::config::{Camera, Source, Threads};
use crate::dbus::{CameraHandle, CameraStats, ModelInfo, Scores};
use crate::engines::Engines;
use crate::lock;
use crate::preprocess::{Crop as PreCrop, Frame, PixelFormat, Preprocessor};
use crate::publish::Policy;
use crate::sources::{self, Backoff, FrameMeta, FrameSource, SourceError};

/// The default model built into the daemon: models/fashion-mnist-prom.prom, MobileNetV2-1.0
/// at 32x32 trained on Fashion-MNIST (10 clothing classes) with PROM quantization-aware
/// training, every pointwise layer ternary (docs/MODELS.md).
pub static EMBEDDED_MODEL: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fashion-mnist-prom.prom"));

/// Name of the embedded model in `Model.name` and logs.
pub const EMBEDDED_MODEL_NAME: &str =
    "embedded default (MobileNetV2-1.0-32 PROM, Fashion-MNIST, 10 classes)";

/// Frame buffers per camera: one being filled, one waiting in the slot, one being
/// preprocessed.
const FRAME_BUFFERS: usize = 3;

/// How often the inference thread wakes without frames (health beat, statistics, stop).
const TICK: Duration = Duration::from_millis(100);

/// Capture-to-publish latencies kept per camera for the percentiles.
const LATENCY_WINDOW: usize = 256;

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelOrigin {
    /// A `.prom` file, memory-mapped.
    File(PathBuf),
    /// [`EMBEDDED_MODEL`].
    Embedded,
}

impl std::fmt::Display for ModelOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelOrigin::File(p) => write!(f, "{}", p.display()),
            ModelOrigin::Embedded => f.write_str("(embedded)"),
        }
    }
}

/// An opened, validated model with its execution plan for this CPU.
pub struct LoadedModel {
    /// The plan (weights prepared for the kernel tier).
    pub plan: Arc<Plan>,
    /// Class labels, shared with the publisher.
    pub labels: Arc<[String]>,
    /// The `Model` property.
    pub info: ModelInfo,
    /// Where it came from.
    pub origin: ModelOrigin,
    /// Scale of the logits (for the softmax).
    pub logit_scale: f32,
    /// Input width in pixels.
    pub input_width: usize,
    /// Input height in pixels.
    pub input_height: usize,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel").field("info", &self.info).finish_non_exhaustive()
    }
}

impl LoadedModel {
    /// Opens and validates the model at `origin` (a file of at most `max_bytes`) and
    /// prepares its weights for `kernels`. Errors name the file and the problem.
    pub fn load(
        origin: &ModelOrigin,
        kernels: Kernels,
        max_bytes: u64,
    ) -> Result<LoadedModel, String> {
        let model = match origin {
            ModelOrigin::File(path) => {
                // Read, not mapped: an administrator overwriting the served file in place
                // (cp, not mv) must not crash the daemon with SIGBUS (see ARCHITECTURE.md).
                Model::read_limited(path, max_bytes).map_err(|e| e.to_string())?
            }
            ModelOrigin::Embedded => {
                Model::from_bytes(EMBEDDED_MODEL).map_err(|e| format!("embedded model: {e}"))?
            }
        };
        let model = Arc::new(model);
        let meta = model.metadata();
        let name = match origin {
            ModelOrigin::File(path) => path
                .file_stem()
                .map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned()),
            ModelOrigin::Embedded => EMBEDDED_MODEL_NAME.to_owned(),
        };
        let info = ModelInfo {
            name,
            path: match origin {
                ModelOrigin::File(path) => absolute(path).display().to_string(),
                ModelOrigin::Embedded => String::new(),
            },
            checksum: format!("crc32:{:08x}", model.checksum()),
            classes: meta.classes,
            input_width: meta.input_width,
            input_height: meta.input_height,
            loaded_at_us: unix_us(SystemTime::now()),
        };
        let logit_scale = model.graph().tensors.last().map_or(1.0, |t| t.scale);
        let labels: Arc<[String]> = model.labels().to_vec().into();
        let (input_width, input_height) = (meta.input_width as usize, meta.input_height as usize);
        let plan = Arc::new(Plan::new(model, kernels, PointwiseMode::Ternary));
        Ok(LoadedModel {
            plan,
            labels,
            info,
            origin: origin.clone(),
            logit_scale,
            input_width,
            input_height,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.labels.len()
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

pub use crate::sources::unix_us;

/// Which pipeline thread is starting (see [`PipelineOptions::thread_hook`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadRole {
    /// A camera's capture thread.
    Capture,
    /// The inference thread.
    Inference,
}

/// Hook run at the start of every pipeline thread (instrumentation, CPU affinity).
pub type ThreadHook = Arc<dyn Fn(ThreadRole) + Send + Sync>;

/// Settings of a pipeline.
#[derive(Clone, Default)]
pub struct PipelineOptions {
    /// Worker threads of the engine (the inference thread included), fixed or chosen per
    /// model ([`Threads::Auto`], the default).
    pub threads: Threads,
    /// Sleep to the configured fps for test pattern and file sources (the daemon does; a
    /// benchmark may not).
    pub unpaced: bool,
    /// Run at the start of each pipeline thread.
    pub thread_hook: Option<ThreadHook>,
    /// Debugging aid for the watchdog: after this many classified frames the inference
    /// thread stops making progress (and stops its health beat) until the pipeline stops.
    pub stall_after_frames: Option<u64>,
}

/// Per-frame stage timings of one camera, summed since the start (for STATUS, logs and the
/// benchmark figures).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTotals {
    /// Frames classified.
    pub frames: u64,
    /// Seconds spent converting frames to model input.
    pub prepare_s: f64,
    /// Seconds spent in the engine (including the softmax).
    pub inference_s: f64,
    /// Seconds spent in the publishing policy and handing results to the publisher.
    pub publish_s: f64,
}

/// A snapshot of one camera for status reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CameraReport {
    /// The camera's name.
    pub name: String,
    /// The numbers also published on D-Bus.
    pub stats: CameraStats,
    /// Stage timings.
    pub stages: StageTotals,
}

struct CameraShared {
    captured: AtomicU64,
    dropped: AtomicU64,
    report: Mutex<CameraReport>,
}

/// Liveness of the inference thread: the time of its last beat.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    beat_ms: AtomicU64,
}

impl Health {
    fn new() -> Health {
        Health { epoch: Instant::now(), beat_ms: AtomicU64::new(0) }
    }

    fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.beat_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the inference thread last showed progress (it beats at least every
    /// 100 ms while healthy, with or without frames).
    pub fn since_beat(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.beat_ms.load(Ordering::Relaxed)))
    }
}

struct FrameMsg {
    buf: Vec<u8>,
    meta: FrameMeta,
}

struct Swap {
    model: Arc<LoadedModel>,
    engines: Box<Engines>,
    done: Sender<()>,
}

/// The running pipeline. [`Pipeline::stop`] ends it.
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    joins: Mutex<Vec<JoinHandle<()>>>,
    exited: Receiver<()>,
    swap_tx: Sender<Swap>,
    health: Arc<Health>,
    cameras: Vec<Arc<CameraShared>>,
    threads: Threads,
    /// The thread count serving now (the inference thread keeps it current).
    threads_now: Arc<AtomicUsize>,
}

impl Pipeline {
    /// Starts capture for `cameras` (one [`CameraHandle`] each, same order) and the
    /// inference thread serving `model`.
    pub fn start(
        cameras: &[Camera],
        handles: Vec<CameraHandle>,
        model: Arc<LoadedModel>,
        opts: PipelineOptions,
    ) -> std::io::Result<Pipeline> {
        assert_eq!(cameras.len(), handles.len(), "one handle per camera");
        let engines = Box::new(Engines::new(model.plan.clone(), opts.threads));
        let threads_now = Arc::new(AtomicUsize::new(engines.threads()));
        let stop = Arc::new(AtomicBool::new(false));
        let health = Arc::new(Health::new());
        health.beat();
        let (exited_tx, exited) = bounded(cameras.len() + 1);
        let (swap_tx, swap_rx) = bounded::<Swap>(1);
        let mut shared = Vec::new();
        let mut capture = Vec::new();
        let mut inputs = Vec::new();
        for (camera, handle) in cameras.iter().zip(handles) {
            let cam = Arc::new(CameraShared {
                captured: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                report: Mutex::new(CameraReport {
                    name: camera.name.clone(),
                    ..Default::default()
                }),
            });
            let (slot_tx, slot_rx) = bounded::<FrameMsg>(1);
            let (free_tx, free_rx) = bounded::<Vec<u8>>(FRAME_BUFFERS);
            for _ in 0..FRAME_BUFFERS {
                let _ = free_tx.send(Vec::new());
            }
            let worker = CaptureWorker {
                camera: camera.clone(),
                handle: handle.clone(),
                cam: cam.clone(),
                slot_tx,
                slot_rx: slot_rx.clone(),
                free_rx,
                stop: stop.clone(),
                paced: !opts.unpaced,
                hook: opts.thread_hook.clone(),
                exited: exited_tx.clone(),
            };
            capture.push(
                std::thread::Builder::new()
                    .name(format!("capture-{}", camera.name))
                    .spawn(move || worker.run())?,
            );
            inputs.push(CameraRuntime::new(camera, handle, cam.clone(), slot_rx, free_tx));
            shared.push(cam);
        }
        let worker = InferenceWorker {
            cameras: inputs,
            model: model.clone(),
            engines,
            threads_now: threads_now.clone(),
            swap_rx,
            stop: stop.clone(),
            health: health.clone(),
            stall_after: opts.stall_after_frames,
            hook: opts.thread_hook,
            exited: exited_tx,
        };
        let mut joins = capture;
        joins.push(
            std::thread::Builder::new().name("inference".into()).spawn(move || worker.run())?,
        );
        Ok(Pipeline {
            stop,
            joins: Mutex::new(joins),
            exited,
            swap_tx,
            health,
            cameras: shared,
            threads: opts.threads,
            threads_now,
        })
    }

    /// The liveness of the inference thread.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Engine worker threads serving now (with [`Threads::Auto`], chosen for the model
    /// served, and between one and several by measuring both: see [`Engines`]).
    pub fn threads(&self) -> usize {
        self.threads_now.load(Ordering::Relaxed)
    }

    /// Per-camera statistics.
    pub fn reports(&self) -> Vec<CameraReport> {
        self.cameras.iter().map(|c| lock(&c.report).clone()).collect()
    }

    /// Serves `model` from the next frame on. The engine state (arena, worker threads) is
    /// built here, on the caller's thread; the inference thread only exchanges it between
    /// two frames. Waits up to `timeout` for the exchange. With [`Threads::Auto`] the thread
    /// count is chosen anew for `model`.
    pub fn swap_model(&self, model: Arc<LoadedModel>, timeout: Duration) -> Result<(), String> {
        let engines = Box::new(Engines::new(model.plan.clone(), self.threads));
        let (done, done_rx) = bounded(1);
        self.swap_tx
            .send_timeout(Swap { model, engines, done }, timeout)
            .map_err(|_| "the inference thread did not take the new model".to_owned())?;
        done_rx
            .recv_timeout(timeout)
            .map_err(|_| "the inference thread did not confirm the new model".to_owned())
    }

    /// Stops every thread, waiting at most `deadline` for them. Threads blocked in a
    /// system call that cannot be interrupted (a FIFO waiting for its writer) are left
    /// behind; they end with the process.
    /// Returns whether every thread ended in time.
    pub fn stop(&self, deadline: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let until = Instant::now() + deadline;
        let mut joins = lock(&self.joins);
        let total = joins.len();
        let mut ended = 0;
        while ended < total {
            match self.exited.recv_deadline(until) {
                Ok(()) => ended += 1,
                Err(_) => break,
            }
        }
        if ended == total {
            for h in joins.drain(..) {
                let _ = h.join();
            }
        }
        ended == total
    }
}

/// Sleeps up to `d`, in short steps so that `stop` is noticed; returns whether to go on.
fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
    false
}

// ---------------------------------------------------------------------------------------
// Capture

struct CaptureWorker {
    camera: Camera,
    handle: CameraHandle,
    cam: Arc<CameraShared>,
    slot_tx: Sender<FrameMsg>,
    slot_rx: Receiver<FrameMsg>,
    free_rx: Receiver<Vec<u8>>,
    stop: Arc<AtomicBool>,
    paced: bool,
    hook: Option<ThreadHook>,
    exited: Sender<()>,
}

impl CaptureWorker {
    fn run(self) {
        if let Some(hook) = &self.hook {
            hook(ThreadRole::Capture);
        }
        self.capture_loop();
        let _ = self.exited.send(());
    }

    fn capture_loop(&self) {
        let name = &self.camera.name;
        let mut backoff = Backoff::new(self.camera.retry);
        let mut source: Option<Box<dyn FrameSource + Send>> = None;
        let mut buf: Option<Vec<u8>> = None;
        let mut failing = false;
        let mut running = false;
        // Streams must be drained while paused (a writer would block, a camera's ring
        // would fill with stale frames); generated sources simply idle.
        let drain_when_paused =
            !matches!(self.camera.source, Source::TestPattern | Source::File { .. });
        while !self.stop.load(Ordering::Relaxed) {
            let src = match source.as_mut() {
                Some(s) => s,
                None => match sources::open(&self.camera, self.paced) {
                    Ok(s) => {
                        tracing::info!("camera {name}: {}", s.describe());
                        source.insert(s)
                    }
                    Err(e) => {
                        self.wait_after_failure(&mut backoff, &mut failing, &e);
                        continue;
                    }
                },
            };
            if self.handle.is_paused() && !drain_when_paused {
                sleep_unless_stopped(&self.stop, Duration::from_millis(50));
                continue;
            }
            let mut frame = match buf.take() {
                Some(b) => b,
                None => match self.free_rx.recv_timeout(TICK) {
                    Ok(b) => b,
                    Err(_) => continue,
                },
            };
            match src.next_frame(&mut frame) {
                Ok(meta) => {
                    if failing {
                        tracing::info!("camera {name}: frames again from {}", src.describe());
                    }
                    backoff.reset();
                    if failing || !running {
                        self.handle.set_state("running");
                        running = true;
                    }
                    failing = false;
                    if self.handle.is_paused() {
                        buf = Some(frame);
                        continue;
                    }
                    self.cam.captured.fetch_add(1, Ordering::Relaxed);
                    buf = self.offer(FrameMsg { buf: frame, meta });
                }
                Err(e) => {
                    buf = Some(frame);
                    self.wait_after_failure(&mut backoff, &mut failing, &e);
                    if self.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let reopened = match &mut source {
                        Some(s) if !matches!(e, SourceError::Config(_)) => s.reopen(),
                        _ => Err(e),
                    };
                    if let Err(e) = reopened {
                        tracing::debug!("camera {name}: reopening failed: {e}");
                        source = None; // opened afresh next time round
                    }
                }
            }
        }
        self.handle.set_state("stopped");
    }

    /// Puts `msg` in the newest-frame slot, replacing (and recycling) a frame that is still
    /// waiting there. Returns a buffer to reuse, if one came back.
    fn offer(&self, msg: FrameMsg) -> Option<Vec<u8>> {
        match self.slot_tx.try_send(msg) {
            Ok(()) => None,
            Err(TrySendError::Disconnected(_)) => None,
            Err(TrySendError::Full(msg)) => {
                let stale = match self.slot_rx.try_recv() {
                    Ok(stale) => {
                        self.cam.dropped.fetch_add(1, Ordering::Relaxed);
                        Some(stale.buf)
                    }
                    Err(_) => None,
                };
                // Only this thread sends, so the slot has room now.
                match self.slot_tx.try_send(msg) {
                    Ok(()) => stale,
                    Err(e) => {
                        self.cam.dropped.fetch_add(1, Ordering::Relaxed);
                        Some(e.into_inner().buf)
                    }
                }
            }
        }
    }

    fn wait_after_failure(&self, backoff: &mut Backoff, failing: &mut bool, e: &SourceError) {
        let delay = backoff.next_delay();
        if !*failing {
            tracing::warn!("camera {}: {e}; retrying (back-off from {delay:?})", self.camera.name);
            *failing = true;
        } else {
            tracing::debug!(
                "camera {}: {e}; retry {} in {delay:?}",
                self.camera.name,
                backoff.attempts()
            );
        }
        self.handle.set_state("waiting");
        sleep_unless_stopped(&self.stop, delay);
    }
}

// ---------------------------------------------------------------------------------------
// Inference

struct CameraRuntime {
    camera: Camera,
    handle: CameraHandle,
    cam: Arc<CameraShared>,
    slot: Receiver<FrameMsg>,
    free: Sender<Vec<u8>>,
    /// One preprocessor per engine worker (up to [`MAX_PREP_SPLIT`]): frames are converted
    /// by all workers, each doing a band of output rows.
    pres: Vec<Mutex<Preprocessor>>,
    /// The (format, width, height, input width, input height) `pres` were built for.
    pre_key: (PixelFormat, usize, usize, usize, usize),
    policy: Policy,
    spare: Option<Box<Scores>>,
    classified: u64,
    latencies_us: [f32; LATENCY_WINDOW],
    latency_count: usize,
    sorted: [f32; LATENCY_WINDOW],
    stages: StageTotals,
    fps_mark: (Instant, u64),
    fps: f64,
    last_stats: Instant,
}

impl CameraRuntime {
    fn new(
        camera: &Camera,
        handle: CameraHandle,
        cam: Arc<CameraShared>,
        slot: Receiver<FrameMsg>,
        free: Sender<Vec<u8>>,
    ) -> CameraRuntime {
        let now = Instant::now();
        CameraRuntime {
            camera: camera.clone(),
            handle,
            cam,
            slot,
            free,
            pres: Vec::new(),
            pre_key: (PixelFormat::Rgb24, 0, 0, 0, 0),
            policy: Policy::new(camera.publish, 0),
            spare: None,
            classified: 0,
            latencies_us: [0.0; LATENCY_WINDOW],
            latency_count: 0,
            sorted: [0.0; LATENCY_WINDOW],
            stages: StageTotals::default(),
            fps_mark: (now, 0),
            fps: 0.0,
            last_stats: now,
        }
    }

    /// Updates fps and latency percentiles and hands them to D-Bus and the status report;
    /// at most every 250 ms.
    fn refresh_stats(&mut self, now: Instant, force: bool) {
        if !force && now.duration_since(self.last_stats) < Duration::from_millis(250) {
            return;
        }
        self.last_stats = now;
        let (mark_t, mark_n) = self.fps_mark;
        let span = now.duration_since(mark_t);
        if span >= Duration::from_secs(1) {
            self.fps = (self.classified - mark_n) as f64 / span.as_secs_f64();
            self.fps_mark = (now, self.classified);
        }
        let n = self.latency_count.min(LATENCY_WINDOW);
        let (p50, p99) = if n == 0 {
            (0.0, 0.0)
        } else {
            let s = &mut self.sorted[..n];
            s.copy_from_slice(&self.latencies_us[..n]);
            s.sort_unstable_by(f32::total_cmp);
            let at = |q: f64| s[((q * (n - 1) as f64).round() as usize).min(n - 1)] as f64 / 1000.0;
            (at(0.5), at(0.99))
        };
        let stats = CameraStats {
            fps: self.fps,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            frames_captured: self.cam.captured.load(Ordering::Relaxed),
            frames_dropped: self.cam.dropped.load(Ordering::Relaxed)
                + self.handle.signals_dropped(),
            frames_classified: self.classified,
        };
        self.handle.update_stats(stats);
        let mut report = lock(&self.cam.report);
        report.stats = stats;
        report.stages = self.stages;
    }
}

/// Most engine workers that share the conversion of one frame.
const MAX_PREP_SPLIT: usize = 8;

/// Output rows per band of a split conversion.
const PREP_BAND_ROWS: usize = 16;

/// Most bands of a split conversion (larger inputs use taller bands).
const MAX_PREP_BANDS: usize = 32;

/// Converts `frame` into `input` on all of `state`'s workers (the inference thread's
/// conversion; public for the `frame_prep` benchmark). The output rows are cut into
/// bands that the workers take in turn from a shared counter, each with its own
/// preprocessor: a worker still waking up from its sleep between frames (hundreds of
/// microseconds on some machines) simply takes fewer bands. Allocates nothing.
pub fn prepare_split(
    state: &State,
    pres: &[Mutex<Preprocessor>],
    frame: &Frame,
    input: &mut [u8],
    row_bytes: usize,
) -> Result<(), crate::preprocess::PreprocessError> {
    let rows = input.len() / row_bytes;
    let per = PREP_BAND_ROWS.max(rows.div_ceil(MAX_PREP_BANDS));
    let mut chunks = input.chunks_mut(per * row_bytes);
    let bands: [Mutex<Option<&mut [u8]>>; MAX_PREP_BANDS] =
        std::array::from_fn(|_| Mutex::new(chunks.next()));
    let next = AtomicU64::new(0);
    let failure = Mutex::new(None);
    state.parallel(&|worker, _| {
        let Some(pre) = pres.get(worker) else { return };
        let mut pre = lock(pre);
        loop {
            let band = next.fetch_add(1, Ordering::Relaxed) as usize;
            let Some(out) = bands.get(band).and_then(|b| lock(b).take()) else { return };
            let start = band * per;
            if let Err(e) = pre.run_rows(frame, start..start + out.len() / row_bytes, out) {
                *lock(&failure) = Some(e);
                return;
            }
        }
    });
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct InferenceWorker {
    cameras: Vec<CameraRuntime>,
    model: Arc<LoadedModel>,
    engines: Box<Engines>,
    threads_now: Arc<AtomicUsize>,
    swap_rx: Receiver<Swap>,
    stop: Arc<AtomicBool>,
    health: Arc<Health>,
    stall_after: Option<u64>,
    hook: Option<ThreadHook>,
    exited: Sender<()>,
}

impl InferenceWorker {
    fn run(mut self) {
        if let Some(hook) = &self.hook {
            hook(ThreadRole::Inference);
        }
        self.inference_loop();
        for c in &mut self.cameras {
            c.refresh_stats(Instant::now(), true);
        }
        let _ = self.exited.send(());
    }

    fn inference_loop(&mut self) {
        let mut input = vec![0u8; self.model.input_width * self.model.input_height * 3];
        let mut probs = vec![0f32; self.model.classes()];
        for c in &mut self.cameras {
            c.policy = Policy::new(c.camera.publish, probs.len());
        }
        let slots: Vec<Receiver<FrameMsg>> = self.cameras.iter().map(|c| c.slot.clone()).collect();
        let swap_rx = self.swap_rx.clone();
        let mut select = Select::new();
        for s in &slots {
            select.recv(s);
        }
        let swap_index = select.recv(&swap_rx);
        let mut total_frames = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            self.health.beat();
            let ready = select.select_timeout(TICK);
            let now = Instant::now();
            let Ok(op) = ready else {
                for c in &mut self.cameras {
                    c.refresh_stats(now, false);
                }
                continue;
            };
            let index = op.index();
            if index == swap_index {
                let Ok(swap) = op.recv(&swap_rx) else { continue };
                self.install(swap, &mut input, &mut probs);
                continue;
            }
            let Ok(msg) = op.recv(&slots[index]) else { continue };
            if let Some(n) = self.stall_after {
                if total_frames >= n {
                    tracing::error!("inference stalled on purpose (--debug-stall-after-frames)");
                    while !self.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return;
                }
            }
            total_frames += 1;
            self.classify(index, msg, &mut input, &mut probs);
        }
    }

    fn install(&mut self, swap: Swap, input: &mut Vec<u8>, probs: &mut Vec<f32>) {
        let Swap { model, engines, done } = swap;
        self.engines = engines; // the previous states (and their workers) are dropped here
        self.threads_now.store(self.engines.threads(), Ordering::Relaxed);
        self.model = model;
        input.resize(self.model.input_width * self.model.input_height * 3, 0);
        probs.resize(self.model.classes(), 0.0);
        for c in &mut self.cameras {
            c.policy = Policy::new(c.camera.publish, probs.len());
            c.pres.clear();
        }
        tracing::info!("now serving model {} ({})", self.model.info.name, self.model.info.checksum);
        let _ = done.send(());
    }

    fn classify(&mut self, index: usize, msg: FrameMsg, input: &mut [u8], probs: &mut [f32]) {
        let t0 = Instant::now();
        let (iw, ih) = (self.model.input_width, self.model.input_height);
        let c = &mut self.cameras[index];
        let FrameMsg { buf, meta } = msg;
        let key = (meta.format, meta.width, meta.height, iw, ih);
        let workers = self.engines.state().threads().min(MAX_PREP_SPLIT);
        if c.pres.len() != workers || c.pre_key != key {
            let crop = match c.camera.crop {
                None => PreCrop::Centre,
                Some(_) => {
                    let (fw, fh) = (meta.width as u32, meta.height as u32);
                    let r = c.camera.crop_for(fw, fh, iw as u32, ih as u32);
                    PreCrop::Region {
                        x: r.x as usize,
                        y: r.y as usize,
                        width: r.width as usize,
                        height: r.height as usize,
                    }
                }
            };
            c.pres.clear();
            for _ in 0..workers {
                match Preprocessor::new(meta.format, meta.width, meta.height, crop, iw, ih) {
                    Ok(p) => c.pres.push(Mutex::new(p)),
                    Err(e) => {
                        tracing::warn!("camera {}: {e}", c.camera.name);
                        c.pres.clear();
                        let _ = c.free.try_send(buf);
                        return;
                    }
                }
            }
            c.pre_key = key;
        }
        let frame = meta.frame(&buf);
        let converted = if workers > 1 && meta.format != PixelFormat::Mjpeg {
            prepare_split(self.engines.state(), &c.pres, &frame, input, iw * 3)
        } else {
            lock(&c.pres[0]).run(&frame, input)
        };
        let _ = c.free.try_send(buf);
        if let Err(e) = converted {
            tracing::warn!("camera {}: frame {} skipped: {e}", c.camera.name, meta.sequence);
            c.cam.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let t1 = Instant::now();
        let logits = self.engines.state().run(input);
        softmax(logits, self.model.logit_scale, probs);
        let t2 = Instant::now();
        let c = &mut self.cameras[index];
        let mut scores = c.spare.take().unwrap_or_else(|| c.handle.recycle());
        if c.policy.decide(probs, t2, &mut scores) {
            c.handle.publish_scores(
                meta.sequence,
                meta.captured_unix_us,
                &self.model.labels,
                scores,
            );
        } else {
            c.spare = Some(scores); // kept for the next frame: no allocation either way
        }
        let t3 = Instant::now();
        c.classified += 1;
        let latency_us = t3.duration_since(meta.captured).as_secs_f64() * 1e6;
        c.latencies_us[c.latency_count % LATENCY_WINDOW] = latency_us as f32;
        c.latency_count += 1;
        c.stages.frames += 1;
        c.stages.prepare_s += (t1 - t0).as_secs_f64();
        c.stages.inference_s += (t2 - t1).as_secs_f64();
        c.stages.publish_s += (t3 - t2).as_secs_f64();
        c.refresh_stats(t3, false);
        self.engines.record(t3 - t0, t3);
        self.threads_now.store(self.engines.threads(), Ordering::Relaxed);
    }
}
