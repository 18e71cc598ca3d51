//! `prom-daemon`: loads the configuration and the model, starts the D-Bus service and the
//! pipeline, talks to systemd (READY, STATUS, WATCHDOG, RELOADING, STOPPING) and handles
//! SIGHUP (model reload), SIGTERM and SIGINT (clean exit, code 0).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::{bounded, select};
use prom_engine::{softmax, top_k, State};
use prom_kernels::Kernels;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::{Bus, CliOverrides, Config, ModelChoice, DEFAULT_MODEL_PATH, DEFAULT_PATH};
use crate::dbus::{BusChoice, DecodedImage, Prediction, Service, ServiceHandle, ServiceOptions};
use crate::lock;
use crate::logging::{self, LogTarget};
use crate::notify::Notifier;
use crate::pipeline::{LoadedModel, ModelOrigin, Pipeline, PipelineOptions};

/// How long shutdown waits for the pipeline threads (SIGTERM must end within 1 s).
const STOP_DEADLINE: Duration = Duration::from_millis(400);

/// How long a reload waits for the inference thread to take the new model.
const SWAP_TIMEOUT: Duration = Duration::from_secs(10);

/// Without a systemd watchdog, the inference thread counts as stalled after this long
/// without progress (STATUS and State report it).
const STALL_LIMIT: Duration = Duration::from_secs(5);

/// Classes returned by `ClassifyImage`.
const CLASSIFY_TOP_K: usize = 5;

/// Turn camera frames into classifications and publish them on D-Bus
/// (service io.prom.Classifier1).
#[derive(Parser, Debug)]
#[command(name = "prom-daemon", version, about, long_about = None)]
pub struct Args {
    /// Configuration file [default: /etc/prom/prom-daemon.toml, built-in defaults when it
    /// does not exist]. A file named here must exist.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: CliOverrides,
    /// Serve the model built into the daemon (MobileNetV2 PROM trained on Fashion-MNIST, 10
    /// clothing classes), ignoring the configured and installed models.
    #[arg(long, conflicts_with = "model")]
    pub embedded_model: bool,
    /// Check the configuration and the model, print the effective settings and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Debugging aid for the systemd watchdog: the inference thread stops making progress
    /// after N frames.
    #[arg(long, value_name = "N", hide = true)]
    pub debug_stall_after_frames: Option<u64>,

    /// Debugging aid for shutdown during reloads: every reload waits N ms before reading
    /// the model (as slow storage would).
    #[arg(long, value_name = "MS", hide = true)]
    pub debug_reload_delay_ms: Option<u64>,
}

/// Runs the daemon with the process arguments.
pub fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("prom-daemon: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

/// Everything reload needs, shared by SIGHUP (main thread) and ReloadModel (D-Bus thread).
struct Reloader {
    kernels: Kernels,
    max_model_bytes: u64,
    delay: Duration,
    /// Serialises reloads and holds the origin reloads re-read.
    origin: Mutex<ModelOrigin>,
    current: Arc<Mutex<Arc<LoadedModel>>>,
    pipeline: std::sync::OnceLock<Arc<Pipeline>>,
    service: std::sync::OnceLock<ServiceHandle>,
}

impl Reloader {
    /// Opens and validates the model (`path`, or the current origin when empty), prepares
    /// it and swaps it in between two frames. A failure leaves the serving model alone.
    fn reload(&self, path: &str) -> Result<()> {
        let mut origin = lock(&self.origin);
        let next = if path.is_empty() { origin.clone() } else { ModelOrigin::File(path.into()) };
        let started = Instant::now();
        std::thread::sleep(self.delay);
        let result =
            LoadedModel::load(&next, self.kernels, self.max_model_bytes).and_then(|model| {
                let model = Arc::new(model);
                if let Some(p) = self.pipeline.get() {
                    p.swap_model(model.clone(), SWAP_TIMEOUT)?;
                }
                Ok(model)
            });
        match result {
            Ok(model) => {
                tracing::info!(
                    "reloaded model {} from {next} ({}) in {:.1} ms",
                    model.info.name,
                    model.info.checksum,
                    started.elapsed().as_secs_f64() * 1e3
                );
                if let Some(s) = self.service.get() {
                    s.set_model_info(Some(model.info.clone()));
                    if let Some(p) = self.pipeline.get() {
                        s.set_threads(p.threads() as u32);
                    }
                }
                *lock(&self.current) = model;
                *origin = next;
                Ok(())
            }
            Err(e) => {
                tracing::error!("reload failed, the previous model keeps serving: {e}");
                Err(e)
            }
        }
    }
}

/// The model to serve at start-up.
fn initial_origin(config: &Config, embedded: bool) -> ModelOrigin {
    if embedded {
        return ModelOrigin::Embedded;
    }
    match &config.model {
        ModelChoice::Path(p) => ModelOrigin::File(p.clone()),
        ModelChoice::Default if Path::new(DEFAULT_MODEL_PATH).exists() => {
            ModelOrigin::File(DEFAULT_MODEL_PATH.into())
        }
        ModelChoice::Default => ModelOrigin::Embedded,
    }
}

/// The `ClassifyImage` handler: its own engine state (one thread), rebuilt when the served
/// model changes, so a D-Bus request never waits for or slows down the camera pipeline.
fn image_classifier(
    current: Arc<Mutex<Arc<LoadedModel>>>,
) -> impl FnMut(&DecodedImage) -> std::result::Result<Vec<Prediction>, String> {
    let mut engine: Option<(Arc<LoadedModel>, State)> = None;
    move |img: &DecodedImage| {
        let model = lock(&current).clone();
        if engine.as_ref().is_none_or(|(m, _)| !Arc::ptr_eq(m, &model)) {
            engine = Some((model.clone(), State::new(model.plan.clone(), 1)));
        }
        let Some((model, state)) = engine.as_mut() else { unreachable!() };
        let (w, h) = (model.input_width, model.input_height);
        let mut input = vec![0u8; w * h * 3];
        crate::imageio::crop_resize(
            &img.rgb,
            img.width as usize,
            img.height as usize,
            &mut input,
            w,
            h,
        );
        let mut probs = vec![0f32; model.classes()];
        softmax(state.run(&input), model.logit_scale, &mut probs);
        let mut best = vec![0usize; CLASSIFY_TOP_K.min(probs.len())];
        top_k(&probs, &mut best);
        Ok(best.iter().map(|&c| (c as u32, model.labels[c].clone(), f64::from(probs[c]))).collect())
    }
}

fn bus_choice(bus: &Bus) -> BusChoice {
    match bus {
        Bus::System => BusChoice::System,
        Bus::Session => BusChoice::Session,
        Bus::Address(a) => BusChoice::Address(a.clone()),
    }
}

/// Panics (a decoder's, caught and answered as an error) are logged with their message and
/// location only. The standard hook symbolises a backtrace when RUST_BACKTRACE is set, which
/// reads the binary's debug information: 200+ MiB of RSS, past the unit's MemoryMax, on a
/// hostile image.
fn log_panics_without_backtraces() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!("thread {} panicked: {info}", thread.name().unwrap_or("unnamed"));
    }));
}

/// The daemon proper.
pub fn run(args: Args) -> Result<()> {
    let mut config = Config::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    config.apply(&args.overrides).map_err(|e| e.to_string())?;
    let target = logging::init(config.log.level());
    log_panics_without_backtraces();
    let notifier = Notifier::from_env().map_err(|e| format!("systemd notification: {e}"))?;

    let kernels = match config.kernel_tier {
        Some(tier) => Kernels::new(tier),
        None => Kernels::detect(),
    }
    .map_err(|e| format!("kernel tier: {e}"))?;
    let origin = initial_origin(&config, args.embedded_model);
    let opened = Instant::now();
    let model = Arc::new(LoadedModel::load(&origin, kernels, config.max_model_bytes())?);
    let open_ms = opened.elapsed().as_secs_f64() * 1e3;

    if args.check_config {
        use std::fmt::Write as _;
        let mut report = String::new();
        let config_name =
            config.file.as_deref().map_or("built-in defaults".into(), |p| p.display().to_string());
        let _ = writeln!(report, "configuration: {config_name}");
        let _ = writeln!(
            report,
            "model: {} from {origin} ({}), opened in {open_ms:.1} ms",
            model.info.name, model.info.checksum
        );
        let _ = writeln!(
            report,
            "threads: {} ({}), tier: {}, bus: {}",
            config.threads.for_model_here(model.plan.macs()),
            config.threads,
            kernels.tier().name(),
            config.bus
        );
        for c in &config.cameras {
            let _ = writeln!(
                report,
                "camera {}: {} {}x{} @ {} fps",
                c.name, c.source, c.width, c.height, c.fps
            );
        }
        // A reader that stops early (`| head`) is not an error; println! would panic.
        use std::io::Write as _;
        match std::io::stdout().lock().write_all(report.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(format!("writing the report: {e}"))
            }
            _ => return Ok(()),
        }
    }

    tracing::info!(
        "prom-daemon {} starting: config {}, logs to {}",
        env!("CARGO_PKG_VERSION"),
        config.file.as_deref().map_or_else(
            || format!("built-in defaults ({DEFAULT_PATH} not found)"),
            |p| p.display().to_string()
        ),
        if target == LogTarget::Journald { "journald" } else { "stderr" }
    );
    tracing::info!(
        "model {} from {origin}: {} classes, input {}x{}, {} (opened and prepared in {open_ms:.1} ms)",
        model.info.name,
        model.info.classes,
        model.info.input_width,
        model.info.input_height,
        model.info.checksum
    );
    if origin == ModelOrigin::Embedded {
        tracing::info!(
            "serving the embedded default model: Fashion-MNIST (10 clothing classes on 32x32 \
             greyscale images); install a model at {DEFAULT_MODEL_PATH} or set `model` for \
             other classes"
        );
    }

    let current = Arc::new(Mutex::new(model.clone()));
    let reloader = Arc::new(Reloader {
        kernels,
        max_model_bytes: config.max_model_bytes(),
        delay: Duration::from_millis(args.debug_reload_delay_ms.unwrap_or(0)),
        origin: Mutex::new(origin),
        current: current.clone(),
        pipeline: std::sync::OnceLock::new(),
        service: std::sync::OnceLock::new(),
    });
    let service = {
        let reloader = reloader.clone();
        let opts = ServiceOptions {
            classifier: Some(Box::new(image_classifier(current.clone()))),
            reload: Some(Box::new(move |path: &str| reloader.reload(path))),
            state: "starting".into(),
            model: Some(model.info.clone()),
            tier: kernels.tier().name().into(),
            threads: config.threads.for_model_here(model.plan.macs()) as u32,
            ..ServiceOptions::default()
        };
        Service::start(bus_choice(&config.bus), opts)
            .map_err(|e| format!("{e} (bus: {})", config.bus))?
    };
    let _ = reloader.service.set(service.handle());
    let mut handles = Vec::new();
    for c in &config.cameras {
        handles.push(service.add_camera(&c.name).map_err(|e| e.to_string())?);
    }
    let pipeline = Arc::new(
        Pipeline::start(
            &config.cameras,
            handles,
            model,
            PipelineOptions {
                threads: config.threads,
                stall_after_frames: args.debug_stall_after_frames,
                ..PipelineOptions::default()
            },
        )
        .map_err(|e| format!("cannot start the pipeline: {e}"))?,
    );
    let _ = reloader.pipeline.set(pipeline.clone());
    // The engines start on the count they serve first (with a choice to make, one thread,
    // timed first), which may be below the model's upper bound given to the service above.
    service.set_threads(pipeline.threads() as u32);
    service.set_state("running");
    tracing::info!(
        "serving on the {} bus as {}: {} camera(s), {} thread(s), tier {}",
        config.bus,
        crate::dbus::BUS_NAME,
        config.cameras.len(),
        pipeline.threads(),
        kernels.tier().name()
    );
    notifier.send(&format!("READY=1\nSTATUS={}", status_line(&pipeline, "starting")));

    let exit = main_loop(&notifier, &pipeline, &reloader, &service);
    if reloader.origin.try_lock().is_err() {
        tracing::info!("stopping during a reload; the reload is abandoned");
    }
    let (exit, lost) = match exit {
        Ok(signal) => (signal, None),
        Err(reason) => ("the D-Bus connection was lost", Some(reason)),
    };

    notifier.send("STOPPING=1\nSTATUS=stopping");
    service.set_state("stopping");
    let clean = pipeline.stop(STOP_DEADLINE);
    for r in pipeline.reports() {
        let s = r.stages;
        let per = |t: f64| if s.frames > 0 { t / s.frames as f64 * 1e3 } else { 0.0 };
        tracing::info!(
            "camera {}: {} frames captured, {} classified, {} dropped; per frame: prepare \
             {:.3} ms, inference {:.3} ms, publish {:.3} ms; latency p50 {:.2} ms p99 {:.2} ms",
            r.name,
            r.stats.frames_captured,
            r.stats.frames_classified,
            r.stats.frames_dropped,
            per(s.prepare_s),
            per(s.inference_s),
            per(s.publish_s),
            r.stats.latency_p50_ms,
            r.stats.latency_p99_ms
        );
    }
    if !clean {
        tracing::info!("a source was still blocked (e.g. a FIFO without writer); leaving it");
    }
    drop(service);
    tracing::info!("stopped ({exit})");
    match lost {
        // Non-zero, so that systemd (Restart=on-failure) starts the daemon on the new bus.
        Some(reason) => Err(format!("lost the D-Bus connection ({reason}); exiting")),
        None => Ok(()),
    }
}

fn status_line(pipeline: &Pipeline, state: &str) -> String {
    let mut s = String::from(state);
    for r in pipeline.reports() {
        s.push_str(&format!(
            "; {} {:.1} fps, p50 {:.1} ms, p99 {:.1} ms",
            r.name, r.stats.fps, r.stats.latency_p50_ms, r.stats.latency_p99_ms
        ));
    }
    s
}

/// Signals, watchdog pings and STATUS until SIGTERM or SIGINT (returns the signal's name)
/// or until the bus connection is lost (returns why, and pings the watchdog no more).
fn main_loop(
    notifier: &Notifier,
    pipeline: &Arc<Pipeline>,
    reloader: &Arc<Reloader>,
    service: &Service,
) -> std::result::Result<&'static str, String> {
    let (sig_tx, sig_rx) = bounded::<i32>(8);
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(mut signals) => {
            let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
                for s in signals.forever() {
                    if sig_tx.send(s).is_err() {
                        return;
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!("cannot start the signal thread: {e}");
            }
        }
        Err(e) => tracing::error!("cannot install signal handlers: {e}"),
    }
    let watchdog = notifier.watchdog_timeout();
    let healthy_within = watchdog.map_or(STALL_LIMIT, |w| (w / 2).max(Duration::from_millis(200)));
    let tick = watchdog.map_or(Duration::from_secs(1), |w| {
        (w / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
    });
    let mut last_status = Instant::now();
    let mut threads_shown = pipeline.threads();
    let mut stalled = false;
    let mut reload_done: Option<crossbeam_channel::Receiver<Result<()>>> = None;
    let never = crossbeam_channel::never();
    loop {
        select! {
            recv(sig_rx) -> s => match s {
                Ok(SIGHUP) if reload_done.is_some() => {
                    tracing::warn!("SIGHUP: a reload is already in progress");
                }
                Ok(SIGHUP) => {
                    // On its own thread: signals (SIGTERM above all) are handled meanwhile.
                    tracing::info!("SIGHUP: reloading the model");
                    notifier.send("RELOADING=1\nSTATUS=reloading the model");
                    service.set_state("reloading");
                    let (tx, rx) = bounded(1);
                    let r = reloader.clone();
                    let spawned = std::thread::Builder::new()
                        .name("sighup-reload".into())
                        .spawn(move || drop(tx.send(r.reload(""))));
                    match spawned {
                        Ok(_) => reload_done = Some(rx),
                        Err(e) => {
                            tracing::error!("cannot start the reload thread: {e}");
                            service.set_state("running");
                            notifier.send("READY=1\nSTATUS=reload failed: no thread");
                        }
                    }
                }
                Ok(SIGTERM) => return Ok("SIGTERM"),
                Ok(_) => return Ok("SIGINT"),
                Err(_) => return Ok("signal thread ended"),
            },
            recv(reload_done.as_ref().unwrap_or(&never)) -> outcome => {
                reload_done = None;
                service.set_state("running");
                let status = match outcome {
                    Ok(Ok(())) => status_line(pipeline, "running"),
                    Ok(Err(e)) => format!("reload failed, previous model serving: {e}"),
                    Err(_) => "reload failed, previous model serving: the reload thread ended"
                        .to_owned(),
                };
                notifier.send(&format!("READY=1\nSTATUS={status}"));
            },
            default(tick) => {}
        }
        if let Some(reason) = service.bus_lost() {
            return Err(reason);
        }
        // `threads = "auto"` may switch between one thread and several while serving.
        if pipeline.threads() != threads_shown {
            threads_shown = pipeline.threads();
            service.set_threads(threads_shown as u32);
        }
        let healthy = pipeline.health().since_beat() < healthy_within;
        if healthy && watchdog.is_some() {
            notifier.send("WATCHDOG=1");
        }
        if healthy == stalled {
            stalled = !healthy;
            if stalled {
                tracing::error!(
                    "inference has made no progress for {:?}; {}",
                    pipeline.health().since_beat(),
                    if watchdog.is_some() {
                        "watchdog pings stopped"
                    } else {
                        "no watchdog configured"
                    }
                );
                service.set_state("stalled");
            } else {
                tracing::info!("inference is making progress again");
                service.set_state("running");
            }
        }
        if last_status.elapsed() >= Duration::from_secs(2) && notifier.is_active() {
            last_status = Instant::now();
            let state = if stalled { "stalled" } else { "running" };
            notifier.send(&format!("STATUS={}", status_line(pipeline, state)));
        }
    }
}
