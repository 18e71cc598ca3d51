//! The daemon's configuration: a TOML file (default [`DEFAULT_PATH`]) read into a validated,
//! typed [`Config`], with command line flags ([`CliOverrides`]) applied on top.
//!
//! Loading rules:
//! - `Config::load(Some(path))` (`--config FILE`): the file must exist and be valid;
//! - `Config::load(None)`: the file at [`DEFAULT_PATH`] if it exists, otherwise the built-in
//!   defaults ([`Config::default`]: one test pattern camera named [`DEFAULT_CAMERA_NAME`]);
//! - a file without any `[[camera]]` also gets that default camera.
//!
//! Every error names what is wrong: TOML syntax errors give the line and column, everything
//! else the key path and the problem, e.g.
//! `camera[1].publish.top_k: 0 is out of range 1..=100`. Unknown keys are errors, so a
//! misspelt key never goes unnoticed.
//!
//! The fully commented example file is `packaging/prom-daemon.toml` ([`example`]).

use std::fmt;
use std::fs;
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use prom_kernels::Tier;
use toml::{Table, Value};

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/prom/prom-daemon.toml";

/// The model used when none is configured (see [`ModelChoice::Default`]).
pub const DEFAULT_MODEL_PATH: &str = "/usr/share/prom/models/fashion-mnist-prom.prom";

/// Name of the built-in default camera and of the camera created by `--source`.
pub const DEFAULT_CAMERA_NAME: &str = "cam0";

/// The fully commented example configuration shipped as `packaging/prom-daemon.toml`.
pub fn example() -> &'static str {
    include_str!("../../packaging/prom-daemon.toml")
}

const THREADS: RangeInclusive<i64> = 1..=1024;
const MAX_MODEL_MIB: RangeInclusive<i64> = 1..=4096;
/// Default `max_model_mib`: the engine's default limit.
pub const DEFAULT_MAX_MODEL_MIB: u64 = prom_engine::DEFAULT_MAX_MODEL_BYTES >> 20;
const FRAME_SIZE: RangeInclusive<i64> = 16..=8192;
const MAX_FPS: f64 = 1000.0;
const MAX_SCENE_SECONDS: f64 = 86_400.0;
const TOP_K: RangeInclusive<i64> = 1..=100;
const INTERVAL_MS: RangeInclusive<i64> = 0..=3_600_000;
const RETRY_MS: RangeInclusive<i64> = 1..=3_600_000;
const WINDOW: RangeInclusive<i64> = 1..=1000;
const CROP_COORD: RangeInclusive<i64> = 0..=16_384;
const CROP_SIZE: RangeInclusive<i64> = 1..=16_384;

const DEFAULT_WIDTH: u32 = 640;
const DEFAULT_HEIGHT: u32 = 480;
const DEFAULT_TOP_K: usize = 5;
const DEFAULT_RETRY_INITIAL: Duration = Duration::from_millis(500);
const DEFAULT_RETRY_MAX: Duration = Duration::from_millis(10_000);

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a configuration could not be loaded or an override not applied.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read (a missing file named by `--config` included).
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// The file is not valid TOML.
    Syntax {
        /// The file, if the text came from one.
        path: Option<PathBuf>,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What the TOML parser reported.
        message: String,
    },
    /// A key has a wrong type or value, is unknown or missing, or conflicts with another one.
    Invalid {
        /// The file, if the value came from one.
        path: Option<PathBuf>,
        /// Key path (`camera[1].publish.top_k`) or command line flag (`--threads`).
        key: String,
        /// The problem.
        message: String,
    },
}

impl ConfigError {
    /// The key path or flag the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: None, key: key.into(), message: message.into() }
    }

    fn in_file(self, file: &Path) -> ConfigError {
        match self {
            ConfigError::Syntax { path: None, line, column, message } => {
                ConfigError::Syntax { path: Some(file.to_owned()), line, column, message }
            }
            ConfigError::Invalid { path: None, key, message } => {
                ConfigError::Invalid { path: Some(file.to_owned()), key, message }
            }
            other => other,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => {
                write!(f, "{}: cannot read the config file: {error}", path.display())
            }
            ConfigError::Syntax { path, line, column, message } => {
                if let Some(path) = path {
                    write!(f, "{}: ", path.display())?;
                }
                write!(f, "TOML syntax error at line {line}, column {column}: {message}")
            }
            ConfigError::Invalid { path, key, message } => {
                if let Some(path) = path {
                    write!(f, "{}: ", path.display())?;
                }
                write!(f, "{key}: {message}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Typed configuration

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The model to serve.
    pub model: ModelChoice,
    /// Inference worker threads (the inference thread included): a fixed count, or chosen
    /// from each model's size (the default).
    pub threads: Threads,
    /// Largest model file accepted, in MiB (`max_model_mib`, 1..=4096, default 64): a
    /// larger file is refused before it is read.
    pub max_model_mib: u64,
    /// Kernel tier to force; `None` picks the best one the CPU supports.
    pub kernel_tier: Option<Tier>,
    /// The D-Bus bus to publish on.
    pub bus: Bus,
    /// Log level.
    pub log: LogLevel,
    /// The cameras, at least one, with unique names.
    pub cameras: Vec<Camera>,
    /// The file this configuration was read from; `None` for the built-in defaults.
    pub file: Option<PathBuf>,
}

/// Which model to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelChoice {
    /// Not configured: [`DEFAULT_MODEL_PATH`] when it exists, otherwise the model embedded in
    /// the daemon.
    Default,
    /// Configured (`model` or `--model`): this file, which must exist.
    Path(PathBuf),
}

impl ModelChoice {
    /// The configured path, or [`DEFAULT_MODEL_PATH`].
    pub fn path(&self) -> &Path {
        match self {
            ModelChoice::Default => Path::new(DEFAULT_MODEL_PATH),
            ModelChoice::Path(path) => path,
        }
    }

    /// Whether a model path was configured explicitly.
    pub fn is_explicit(&self) -> bool {
        matches!(self, ModelChoice::Path(_))
    }
}

/// The D-Bus bus to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bus {
    /// The system bus (the default).
    System,
    /// The session bus (`--session`).
    Session,
    /// A bus address such as `unix:path=/tmp/bus` (`--bus-address`).
    Address(String),
}

impl Bus {
    fn parse(text: &str) -> Result<Bus, String> {
        match text {
            "system" => Ok(Bus::System),
            "session" => Ok(Bus::Session),
            address => check_bus_address(address).map(|()| Bus::Address(address.to_owned())),
        }
    }
}

fn check_bus_address(address: &str) -> Result<(), String> {
    // A D-Bus address is `transport:key=value,...`, possibly several joined by `;`.
    let valid = !address.is_empty()
        && address.split(';').filter(|a| !a.is_empty()).all(|a| {
            a.split_once(':').is_some_and(|(transport, _)| {
                !transport.is_empty()
                    && transport.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{address:?} is not \"system\", \"session\" or a D-Bus address \
             (such as \"unix:path=/run/user/1000/bus\")"
        ))
    }
}

impl fmt::Display for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bus::System => f.write_str("system"),
            Bus::Session => f.write_str("session"),
            Bus::Address(address) => f.write_str(address),
        }
    }
}

/// Log level (`log`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    Info,
    /// Debugging detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// All levels, least verbose first.
    pub const ALL: [LogLevel; 5] =
        [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace];

    /// Lower-case name, as written in the config file.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    /// The matching `tracing` level.
    pub fn level(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<LogLevel, String> {
        LogLevel::ALL.into_iter().find(|l| l.name() == text).ok_or_else(|| {
            format!(
                "unknown log level {text:?} (expected {})",
                names(LogLevel::ALL.map(|l| l.name()))
            )
        })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One camera: a frame source plus its publishing policy. Published on D-Bus as
/// `/io/prom/Classifier1/camera/NAME`.
#[derive(Clone, Debug, PartialEq)]
pub struct Camera {
    /// Unique name, non-empty, ASCII letters, digits and `_` only.
    pub name: String,
    /// Where the frames come from.
    pub source: Source,
    /// Frame format: required (one of [`PixelFormat::RAW_STREAM`]) for `stdin:` and `fifo:`;
    /// for `v4l2:` the preferred format (one of [`PixelFormat::V4L2`]), `None` choosing the
    /// cheapest usable one automatically; always `None` for `file:` and `testpattern`.
    pub format: Option<PixelFormat>,
    /// Frame width: requested from a V4L2 device, the size of raw `stdin:`/`fifo:` frames,
    /// the rendered size of the test pattern; not used by `file:` sources.
    pub width: u32,
    /// Frame height (as `width`).
    pub height: u32,
    /// Frames per second: requested from a V4L2 device, the rate of `file:` and
    /// `testpattern` frames, the expected rate of `stdin:`/`fifo:` frames (read as they come).
    pub fps: f64,
    /// Seconds between scene changes of the `testpattern` source (unused by other sources).
    pub scene_seconds: f64,
    /// Region of the frame to classify; `None` for the largest centred region with the
    /// model input's aspect ratio.
    pub crop: Option<Crop>,
    /// Back-off between attempts to reopen a failed or vanished source.
    pub retry: Retry,
    /// What is published on D-Bus, and when.
    pub publish: Publish,
}

impl Camera {
    /// A camera with every setting at its default for `source` (not validated: `stdin:` and
    /// `fifo:` still need a [`format`](Camera::format)).
    pub fn new(name: impl Into<String>, source: Source) -> Camera {
        let fps = match source {
            Source::File { .. } | Source::TestPattern => 10.0,
            Source::V4l2 { .. } | Source::Stdin | Source::Fifo { .. } => 30.0,
        };
        Camera {
            name: name.into(),
            source,
            format: None,
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            fps,
            scene_seconds: 1.0,
            crop: None,
            retry: Retry::default(),
            publish: Publish::default(),
        }
    }

    /// The region of a `frame_width` x `frame_height` frame to classify for a model input of
    /// `input_width` x `input_height`: the configured crop clipped to the frame, or (when none
    /// is configured or nothing of it is inside the frame) the centre crop.
    pub fn crop_for(
        &self,
        frame_width: u32,
        frame_height: u32,
        input_width: u32,
        input_height: u32,
    ) -> Crop {
        if let Some(crop) = self.crop {
            if let Some(clipped) = crop.clip(frame_width, frame_height) {
                return clipped;
            }
        }
        Crop::centre(frame_width, frame_height, input_width, input_height)
    }
}

/// A camera's frame source, parsed from a spec string (`v4l2:/dev/video0`, `stdin:`,
/// `fifo:/run/cam.fifo`, `file:/srv/images`, `testpattern`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A V4L2 capture device (`v4l2:/dev/videoN`).
    V4l2 {
        /// The device node.
        device: PathBuf,
    },
    /// Raw frames on standard input (`stdin:`).
    Stdin,
    /// Raw frames from a named pipe, reopened when the writer goes away (`fifo:PATH`).
    Fifo {
        /// The FIFO.
        path: PathBuf,
    },
    /// An image file, or a directory of images played in a loop (`file:PATH`).
    File {
        /// The file or directory.
        path: PathBuf,
    },
    /// Deterministic rendered scenes (`testpattern`).
    TestPattern,
}

const SOURCE_KINDS: &str = "v4l2:, stdin:, fifo:, file:, testpattern";

impl Source {
    /// The spec prefix naming the kind: `v4l2:`, `stdin:`, `fifo:`, `file:` or `testpattern`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::V4l2 { .. } => "v4l2:",
            Source::Stdin => "stdin:",
            Source::Fifo { .. } => "fifo:",
            Source::File { .. } => "file:",
            Source::TestPattern => "testpattern",
        }
    }

    /// Whether the source delivers raw frames whose format and size must be configured.
    pub fn is_raw_stream(&self) -> bool {
        matches!(self, Source::Stdin | Source::Fifo { .. })
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(spec: &str) -> Result<Source, String> {
        let path = |rest: &str, kind: &str, example: &str| {
            if rest.is_empty() {
                Err(format!("{kind} needs a path, as in \"{kind}{example}\""))
            } else {
                Ok(PathBuf::from(rest))
            }
        };
        if let Some(rest) = spec.strip_prefix("v4l2:") {
            Ok(Source::V4l2 { device: path(rest, "v4l2:", "/dev/video0")? })
        } else if let Some(rest) = spec.strip_prefix("fifo:") {
            Ok(Source::Fifo { path: path(rest, "fifo:", "/run/prom/cam.fifo")? })
        } else if let Some(rest) = spec.strip_prefix("file:") {
            Ok(Source::File { path: path(rest, "file:", "/srv/images")? })
        } else if spec == "stdin:" || spec == "stdin" {
            Ok(Source::Stdin)
        } else if spec == "testpattern" || spec == "testpattern:" {
            Ok(Source::TestPattern)
        } else if spec.starts_with("stdin:") || spec.starts_with("testpattern:") {
            let kind = &spec[..=spec.find(':').unwrap_or(0)];
            Err(format!(
                "{spec:?}: {kind} takes no argument (set format, width and height separately)"
            ))
        } else {
            Err(format!("unknown source {spec:?} (expected {SOURCE_KINDS})"))
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4l2 { device } => write!(f, "v4l2:{}", device.display()),
            Source::Stdin => f.write_str("stdin:"),
            Source::Fifo { path } => write!(f, "fifo:{}", path.display()),
            Source::File { path } => write!(f, "file:{}", path.display()),
            Source::TestPattern => f.write_str("testpattern"),
        }
    }
}

/// Camera frame formats are those of the preprocessing stage.
pub use crate::preprocess::PixelFormat;

/// A region of a frame, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width, at least 1.
    pub width: u32,
    /// Height, at least 1.
    pub height: u32,
}

impl Crop {
    /// The largest region of a `frame_width` x `frame_height` frame with the aspect ratio
    /// `aspect_width`:`aspect_height`, centred.
    pub fn centre(
        frame_width: u32,
        frame_height: u32,
        aspect_width: u32,
        aspect_height: u32,
    ) -> Crop {
        let (fw, fh) = (u64::from(frame_width), u64::from(frame_height));
        let (aw, ah) = (u64::from(aspect_width.max(1)), u64::from(aspect_height.max(1)));
        let (w, h) = if fw * ah >= fh * aw { (fh * aw / ah, fh) } else { (fw, fw * ah / aw) };
        let (w, h) = (w.clamp(1, fw.max(1)), h.clamp(1, fh.max(1)));
        Crop {
            x: ((fw.saturating_sub(w)) / 2) as u32,
            y: ((fh.saturating_sub(h)) / 2) as u32,
            width: w as u32,
            height: h as u32,
        }
    }

    /// The part of this region inside a `frame_width` x `frame_height` frame, if any.
    pub fn clip(self, frame_width: u32, frame_height: u32) -> Option<Crop> {
        let right = self.x.saturating_add(self.width).min(frame_width);
        let bottom = self.y.saturating_add(self.height).min(frame_height);
        (right > self.x && bottom > self.y).then(|| Crop {
            x: self.x,
            y: self.y,
            width: right - self.x,
            height: bottom - self.y,
        })
    }
}

/// Exponential back-off for reopening a failed source: `initial`, doubling up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// First delay (default 500 ms).
    pub initial: Duration,
    /// Longest delay (default 10 s).
    pub max: Duration,
}

impl Retry {
    /// The delay before reopening attempt `attempt` (0 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).map_or(self.max, |d| d.min(self.max))
    }
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { initial: DEFAULT_RETRY_INITIAL, max: DEFAULT_RETRY_MAX }
    }
}

/// A camera's D-Bus publishing policy (`[camera.publish]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Publish {
    /// At most this many classes per result, 1..=100 (default 5).
    pub top_k: usize,
    /// Classes scoring below this are left out, 0..=1 (default 0: none left out). Not used
    /// with [`Smoothing::Hysteresis`], whose `enter` and `leave` decide instead.
    pub threshold: f32,
    /// Every classified frame, or only changes.
    pub mode: PublishMode,
    /// At least this long between two results of the camera (default 0).
    pub min_interval: Duration,
    /// Temporal smoothing of the scores.
    pub smoothing: Smoothing,
}

impl Default for Publish {
    fn default() -> Publish {
        Publish {
            top_k: DEFAULT_TOP_K,
            threshold: 0.0,
            mode: PublishMode::Every,
            min_interval: Duration::ZERO,
            smoothing: Smoothing::None,
        }
    }
}

/// When results are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishMode {
    /// Every classified frame (`"every"`, the default).
    Every,
    /// Only when the published class ids (in order) differ from the last result sent
    /// (`"on_change"`).
    OnChange,
}

impl PublishMode {
    /// Name, as written in the config file.
    pub fn name(self) -> &'static str {
        match self {
            PublishMode::Every => "every",
            PublishMode::OnChange => "on_change",
        }
    }
}

impl fmt::Display for PublishMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Temporal smoothing of a camera's class scores (`publish.smoothing`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Smoothing {
    /// Each frame's scores as they are (`"none"`, the default).
    None,
    /// Each class's score averaged over the last `window` frames
    /// (`{ kind = "moving_average", window = N }`, 1..=1000).
    MovingAverage {
        /// Frames averaged.
        window: usize,
    },
    /// A class starts being published when its score reaches `enter` and stops when it
    /// falls below `leave` (`{ kind = "hysteresis", enter = E, leave = L }`,
    /// 0 <= leave < enter <= 1).
    Hysteresis {
        /// Score at which a class enters the published set.
        enter: f32,
        /// Score below which it leaves it again.
        leave: f32,
    },
}

impl fmt::Display for Smoothing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Smoothing::None => f.write_str("none"),
            Smoothing::MovingAverage { window } => write!(f, "moving_average(window={window})"),
            Smoothing::Hysteresis { enter, leave } => {
                write!(f, "hysteresis(enter={enter}, leave={leave})")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Command line overrides

/// Command line flags that override the config file; flatten into the daemon's clap parser
/// with `#[command(flatten)]`.
#[derive(Clone, Debug, Default, PartialEq, clap::Args)]
pub struct CliOverrides {
    /// Model file (.prom), instead of the config's `model`.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Camera source (v4l2:/dev/videoN, stdin:, fifo:PATH, file:PATH or testpattern);
    /// replaces the configured cameras with one camera named cam0.
    #[arg(long, value_name = "SPEC")]
    pub source: Option<String>,
    /// Frame format for --source: yuv420, nv12, yuyv or rgb24 for stdin:/fifo: (required);
    /// yuyv, mjpeg, nv12, rgb24, bgr24, grey or auto for v4l2:.
    #[arg(long, value_name = "FORMAT", requires = "source")]
    pub format: Option<String>,
    /// Frame width for --source (default 640).
    #[arg(long, value_name = "PIXELS", requires = "source")]
    pub width: Option<u32>,
    /// Frame height for --source (default 480).
    #[arg(long, value_name = "PIXELS", requires = "source")]
    pub height: Option<u32>,
    /// Frames per second for --source (default 10 for file: and testpattern, otherwise 30).
    #[arg(long, value_name = "FPS", requires = "source")]
    pub fps: Option<f64>,
    /// Inference worker threads, instead of the config's `threads`: a count, or `auto`
    /// (chosen from the model's size).
    #[arg(long, value_name = "N|auto")]
    pub threads: Option<Threads>,
    /// Publish on the session bus instead of the system bus.
    #[arg(long, conflicts_with = "bus_address")]
    pub session: bool,
    /// Publish on the bus at this D-Bus address (such as unix:path=/tmp/bus).
    #[arg(long, value_name = "ADDRESS")]
    pub bus_address: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Loading and validation

impl Default for Config {
    /// The built-in defaults: the default model, one thread per CPU, the system bus, log
    /// level info, one test pattern camera named `cam0` at 10 fps.
    fn default() -> Config {
        Config {
            model: ModelChoice::Default,
            threads: Threads::Auto,
            max_model_mib: DEFAULT_MAX_MODEL_MIB,
            kernel_tier: None,
            bus: Bus::System,
            log: LogLevel::Info,
            cameras: vec![Camera::new(DEFAULT_CAMERA_NAME, Source::TestPattern)],
            file: None,
        }
    }
}

/// Multiply-accumulates per inference that make a second thread worth its cost. Splitting a
/// layer costs a hand-over between cores per layer (a few microseconds); on the 6 M and
/// 25.7 M MAC models two threads were slower than one even on idle cores, from about 56 M on
/// they were as fast or faster (docs/BENCHMARKS.md, issue 12 item 7).
pub const AUTO_MACS_PER_THREAD: u64 = 30_000_000;

/// How many inference threads to run (the inference thread included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Threads {
    /// Chosen for each model when it is loaded or reloaded: one thread per
    /// [`AUTO_MACS_PER_THREAD`] of work per inference, at least one, at most one per CPU.
    #[default]
    Auto,
    /// Exactly this many, 1..=1024, whatever the model.
    Fixed(usize),
}

impl Threads {
    /// The thread count for a model of `macs` multiply-accumulates on `cpus` CPUs.
    pub fn for_model(self, macs: u64, cpus: usize) -> usize {
        match self {
            Threads::Fixed(n) => n.max(1),
            Threads::Auto => {
                let wanted = usize::try_from(macs / AUTO_MACS_PER_THREAD).unwrap_or(usize::MAX);
                wanted.clamp(1, cpus.clamp(1, *THREADS.end() as usize))
            }
        }
    }

    /// [`Threads::for_model`] on this machine's CPUs (those this process may run on).
    pub fn for_model_here(self, macs: u64) -> usize {
        self.for_model(macs, std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl fmt::Display for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threads::Auto => f.write_str("auto"),
            Threads::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Threads {
    type Err = String;

    /// `auto` or a count (its range is checked with the rest of the configuration).
    fn from_str(text: &str) -> std::result::Result<Threads, String> {
        match text {
            "auto" => Ok(Threads::Auto),
            _ => text
                .parse()
                .map(Threads::Fixed)
                .map_err(|_| format!("expected a thread count or \"auto\", found {text:?}")),
        }
    }
}

impl Config {
    /// `max_model_mib` in bytes.
    pub fn max_model_bytes(&self) -> u64 {
        self.max_model_mib << 20
    }

    /// Loads the configuration: from `path` (`--config`), which must exist, or from
    /// [`DEFAULT_PATH`], falling back to the built-in defaults when that file does not exist.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        Config::load_with_default(path, Path::new(DEFAULT_PATH))
    }

    /// [`Config::load`] with another default path (for tests and tools).
    pub fn load_with_default(path: Option<&Path>, default_path: &Path) -> Result<Config> {
        let (file, must_exist) = match path {
            Some(path) => (path, true),
            None => (default_path, false),
        };
        match fs::read_to_string(file) {
            Ok(text) => {
                let mut config = Config::from_toml(&text).map_err(|e| e.in_file(file))?;
                config.file = Some(file.to_owned());
                Ok(config)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound && !must_exist => {
                Ok(Config::default())
            }
            Err(error) => Err(ConfigError::Read { path: file.to_owned(), error }),
        }
    }

    /// Parses and validates configuration text.
    pub fn from_toml(text: &str) -> Result<Config> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| syntax_error(text, &e))?;
        read_config(&table)
    }

    /// Applies command line overrides and validates the result; on error `self` is left
    /// unchanged. Errors name the flag (`--threads: 0 is out of range 1..=1024`).
    pub fn apply(&mut self, overrides: &CliOverrides) -> Result<()> {
        let o = overrides;
        let mut next = self.clone();
        if let Some(model) = &o.model {
            if model.as_os_str().is_empty() {
                return Err(ConfigError::invalid("--model", "must not be empty"));
            }
            next.model = ModelChoice::Path(model.clone());
        }
        if let Some(threads) = o.threads {
            next.threads = check_threads("--threads", threads)?;
        }
        if o.session && o.bus_address.is_some() {
            return Err(ConfigError::invalid("--session", "cannot be combined with --bus-address"));
        }
        if o.session {
            next.bus = Bus::Session;
        }
        if let Some(address) = &o.bus_address {
            check_bus_address(address).map_err(|m| ConfigError::invalid("--bus-address", m))?;
            next.bus = Bus::Address(address.clone());
        }
        match &o.source {
            Some(spec) => {
                let source = spec.parse().map_err(|m| ConfigError::invalid("--source", m))?;
                let fields = CameraFields {
                    format: o.format.as_deref(),
                    width: o.width.map(i64::from),
                    height: o.height.map(i64::from),
                    fps: o.fps,
                    ..CameraFields::default()
                };
                let camera =
                    build_camera(
                        DEFAULT_CAMERA_NAME.into(),
                        source,
                        fields,
                        &|field| match field {
                            "source" | "format" | "width" | "height" | "fps" => {
                                format!("--{field}")
                            }
                            other => format!("--source camera {DEFAULT_CAMERA_NAME}: {other}"),
                        },
                    )?;
                next.cameras = vec![camera];
            }
            None => {
                let without = [
                    ("--format", o.format.is_some()),
                    ("--width", o.width.is_some()),
                    ("--height", o.height.is_some()),
                    ("--fps", o.fps.is_some()),
                ];
                if let Some((flag, _)) = without.iter().find(|(_, given)| *given) {
                    return Err(ConfigError::invalid(*flag, "only used together with --source"));
                }
            }
        }
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// Checks every value and the relations between them (ranges, formats fitting their
    /// sources, crops inside frames, unique camera names, a device or FIFO used by one camera
    /// only). [`Config::from_toml`], [`Config::load`] and [`Config::apply`] call it; call it
    /// after changing a `Config` by hand.
    pub fn validate(&self) -> Result<()> {
        if let ModelChoice::Path(path) = &self.model {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::invalid("model", "must not be empty"));
            }
        }
        check_threads("threads", self.threads)?;
        check_int("max_model_mib", wide(self.max_model_mib as usize), MAX_MODEL_MIB)?;
        if let Bus::Address(address) = &self.bus {
            check_bus_address(address).map_err(|m| ConfigError::invalid("bus", m))?;
        }
        if self.cameras.is_empty() {
            return Err(ConfigError::invalid("camera", "at least one camera is needed"));
        }
        for (i, camera) in self.cameras.iter().enumerate() {
            let key = |field: &str| format!("camera[{i}].{field}");
            validate_camera(camera, &key)?;
            for (j, earlier) in self.cameras[..i].iter().enumerate() {
                if earlier.name == camera.name {
                    return Err(ConfigError::invalid(
                        key("name"),
                        format!("{:?} is already the name of camera[{j}]", camera.name),
                    ));
                }
                let shared = match (&earlier.source, &camera.source) {
                    (Source::Stdin, Source::Stdin) => true,
                    (Source::V4l2 { device: a }, Source::V4l2 { device: b }) => a == b,
                    (Source::Fifo { path: a }, Source::Fifo { path: b }) => a == b,
                    _ => false,
                };
                if shared {
                    return Err(ConfigError::invalid(
                        key("source"),
                        format!(
                            "\"{}\" is already the source of camera[{j}] ({:?}); \
                             a device, FIFO or stdin can feed one camera only",
                            camera.source, earlier.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let message = error.message().trim().lines().map(str::trim).collect::<Vec<_>>().join("; ");
    ConfigError::Syntax { path: None, line, column, message }
}

/// Settings of one camera as given (TOML keys or flags), before defaults.
#[derive(Default)]
struct CameraFields<'a> {
    format: Option<&'a str>,
    width: Option<i64>,
    height: Option<i64>,
    fps: Option<f64>,
    scene_seconds: Option<f64>,
    crop: Option<Crop>,
    retry: Option<Retry>,
    publish: Option<Publish>,
}

/// Builds a camera from its settings: checks that each given setting is used by the source,
/// fills in defaults and validates. `key` names a field in errors.
fn build_camera(
    name: String,
    source: Source,
    fields: CameraFields<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<Camera> {
    let unused = |field: &str| {
        ConfigError::invalid(key(field), format!("not used by the {} source", source.kind()))
    };
    let mut camera = Camera::new(name, source.clone());
    if let Some(format) = fields.format {
        camera.format = match (&source, format) {
            (Source::V4l2 { .. }, "auto") => None,
            (Source::File { .. } | Source::TestPattern, _) => return Err(unused("format")),
            (_, format) => {
                Some(format.parse().map_err(|m: crate::preprocess::ParsePixelFormatError| {
                    ConfigError::invalid(key("format"), m.to_string())
                })?)
            }
        };
    }
    for (field, value, slot) in
        [("width", fields.width, &mut camera.width), ("height", fields.height, &mut camera.height)]
    {
        if let Some(value) = value {
            if matches!(source, Source::File { .. }) {
                return Err(unused(field));
            }
            *slot = check_int(&key(field), value, FRAME_SIZE)? as u32;
        }
    }
    if let Some(fps) = fields.fps {
        camera.fps = fps;
    }
    if let Some(seconds) = fields.scene_seconds {
        if source != Source::TestPattern {
            return Err(unused("scene_seconds"));
        }
        camera.scene_seconds = seconds;
    }
    camera.crop = fields.crop;
    camera.retry = fields.retry.unwrap_or_default();
    camera.publish = fields.publish.unwrap_or_default();
    validate_camera(&camera, key)?;
    Ok(camera)
}

fn validate_camera(camera: &Camera, key: &dyn Fn(&str) -> String) -> Result<()> {
    let invalid = |field: &str, message: String| Err(ConfigError::invalid(key(field), message));
    if camera.name.is_empty() {
        return invalid("name", "must not be empty".into());
    }
    if !camera.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return invalid(
            "name",
            format!(
                "{:?} may only contain ASCII letters, digits and _ (it is part of a D-Bus \
                 object path)",
                camera.name
            ),
        );
    }
    match (&camera.source, camera.format) {
        (Source::V4l2 { .. }, Some(format)) if !PixelFormat::V4L2.contains(&format) => {
            return invalid(
                "format",
                format!(
                    "{format} is not a V4L2 capture format (expected {}, auto)",
                    names(PixelFormat::V4L2.map(PixelFormat::name))
                ),
            );
        }
        (Source::Stdin | Source::Fifo { .. }, None) => {
            return invalid(
                "format",
                format!(
                    "required for the {} source (one of {})",
                    camera.source.kind(),
                    names(PixelFormat::RAW_STREAM.map(PixelFormat::name))
                ),
            );
        }
        (Source::Stdin | Source::Fifo { .. }, Some(format))
            if !PixelFormat::RAW_STREAM.contains(&format) =>
        {
            return invalid(
                "format",
                format!(
                    "{format} is not a raw frame format (expected {})",
                    names(PixelFormat::RAW_STREAM.map(PixelFormat::name))
                ),
            );
        }
        (Source::File { .. } | Source::TestPattern, Some(_)) => {
            return invalid("format", format!("not used by the {} source", camera.source.kind()));
        }
        _ => {}
    }
    let sized = !matches!(camera.source, Source::File { .. });
    if sized {
        check_int(&key("width"), i64::from(camera.width), FRAME_SIZE)?;
        check_int(&key("height"), i64::from(camera.height), FRAME_SIZE)?;
        if let Some(format) = camera.format {
            if format.needs_even_width() && !camera.width.is_multiple_of(2) {
                return invalid("width", format!("{} must be even for {format}", camera.width));
            }
            if format.needs_even_height() && !camera.height.is_multiple_of(2) {
                return invalid("height", format!("{} must be even for {format}", camera.height));
            }
        }
    }
    check_positive(&key("fps"), camera.fps, MAX_FPS)?;
    check_positive(&key("scene_seconds"), camera.scene_seconds, MAX_SCENE_SECONDS)?;
    if let Some(crop) = camera.crop {
        check_int(&key("crop.width"), i64::from(crop.width), CROP_SIZE)?;
        check_int(&key("crop.height"), i64::from(crop.height), CROP_SIZE)?;
        if sized {
            let right = u64::from(crop.x) + u64::from(crop.width);
            let bottom = u64::from(crop.y) + u64::from(crop.height);
            if right > u64::from(camera.width) || bottom > u64::from(camera.height) {
                return invalid(
                    "crop",
                    format!(
                        "region {}x{} at ({}, {}) does not fit in the {}x{} frame",
                        crop.width, crop.height, crop.x, crop.y, camera.width, camera.height
                    ),
                );
            }
        }
    }
    let retry = camera.retry;
    check_int(&key("retry.initial_ms"), millis(retry.initial), RETRY_MS)?;
    check_int(&key("retry.max_ms"), millis(retry.max), RETRY_MS)?;
    if retry.max < retry.initial {
        return invalid(
            "retry.max_ms",
            format!(
                "{} is less than retry.initial_ms ({})",
                millis(retry.max),
                millis(retry.initial)
            ),
        );
    }
    let publish = camera.publish;
    check_int(&key("publish.top_k"), wide(publish.top_k), TOP_K)?;
    check_unit(&key("publish.threshold"), f64::from(publish.threshold))?;
    check_int(&key("publish.min_interval_ms"), millis(publish.min_interval), INTERVAL_MS)?;
    match publish.smoothing {
        Smoothing::None => {}
        Smoothing::MovingAverage { window } => {
            check_int(&key("publish.smoothing.window"), wide(window), WINDOW)?;
        }
        Smoothing::Hysteresis { enter, leave } => {
            check_unit(&key("publish.smoothing.enter"), f64::from(enter))?;
            check_unit(&key("publish.smoothing.leave"), f64::from(leave))?;
            if leave >= enter {
                return invalid(
                    "publish.smoothing.leave",
                    format!("{leave} must be less than publish.smoothing.enter ({enter})"),
                );
            }
        }
    }
    Ok(())
}

fn check_threads(key: &str, threads: Threads) -> Result<Threads> {
    match threads {
        Threads::Auto => Ok(Threads::Auto),
        Threads::Fixed(n) => Ok(Threads::Fixed(check_int(key, wide(n), THREADS)? as usize)),
    }
}

fn wide(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn check_int(key: &str, value: i64, range: RangeInclusive<i64>) -> Result<i64> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{value} is out of range {}..={}", range.start(), range.end()),
        ))
    }
}

/// Checks `0 <= value <= 1` (NaN is out of range).
fn check_unit(key: &str, value: f64) -> Result<f64> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::invalid(key, format!("{value} is out of range 0..=1")))
    }
}

/// Checks `0 < value <= max` (NaN is out of range).
fn check_positive(key: &str, value: f64, max: f64) -> Result<f64> {
    if value > 0.0 && value <= max {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{value} is out of range (it must be greater than 0 and at most {max})"),
        ))
    }
}

/// `a, b, c` from a list of names.
fn names<const N: usize>(list: [&str; N]) -> String {
    list.join(", ")
}

// ---------------------------------------------------------------------------------------------
// Reading TOML values with key paths

/// A TOML table whose keys have been checked against the known ones, read with errors that
/// name the full key path.
struct Section<'a> {
    prefix: String,
    table: &'a Table,
}

impl<'a> Section<'a> {
    fn new(prefix: String, table: &'a Table, known: &[&str]) -> Result<Section<'a>> {
        let section = Section { prefix, table };
        if let Some(unknown) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ConfigError::invalid(
                section.key(unknown),
                format!("unknown key (expected one of: {})", known.join(", ")),
            ));
        }
        Ok(section)
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn wrong_type(&self, name: &str, expected: &str, found: &Value) -> ConfigError {
        ConfigError::invalid(
            self.key(name),
            format!("expected {expected}, found {}", describe(found)),
        )
    }

    fn str(&self, name: &str) -> Result<Option<&'a str>> {
        match self.table.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(name, "a string", other)),
        }
    }

    fn required_str(&self, name: &str, what: &str) -> Result<&'a str> {
        self.str(name)?
            .ok_or_else(|| ConfigError::invalid(self.key(name), format!("missing ({what})")))
    }

    fn int(&self, name: &str) -> Result<Option<i64>> {
        match self.table.get(name) {
            None => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(*i)),
            Some(other) => Err(self.wrong_type(name, "an integer", other)),
        }
    }

    fn required_int(&self, name: &str) -> Result<i64> {
        self.int(name)?.ok_or_else(|| ConfigError::invalid(self.key(name), "missing (an integer)"))
    }

    /// A number: a float or an integer.
    fn number(&self, name: &str) -> Result<Option<f64>> {
        match self.table.get(name) {
            None => Ok(None),
            Some(Value::Float(f)) => Ok(Some(*f)),
            Some(Value::Integer(i)) => Ok(Some(*i as f64)),
            Some(other) => Err(self.wrong_type(name, "a number", other)),
        }
    }

    fn required_number(&self, name: &str) -> Result<f64> {
        self.number(name)?.ok_or_else(|| ConfigError::invalid(self.key(name), "missing (a number)"))
    }

    fn table(&self, name: &str) -> Result<Option<&'a Table>> {
        match self.table.get(name) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(t)),
            Some(other) => Err(self.wrong_type(name, "a table", other)),
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

const TOP_KEYS: &[&str] =
    &["model", "threads", "max_model_mib", "kernel_tier", "bus", "log", "camera"];
const CAMERA_KEYS: &[&str] = &[
    "name",
    "source",
    "format",
    "width",
    "height",
    "fps",
    "scene_seconds",
    "crop",
    "retry",
    "publish",
];
const CROP_KEYS: &[&str] = &["x", "y", "width", "height"];
const RETRY_KEYS: &[&str] = &["initial_ms", "max_ms"];
const PUBLISH_KEYS: &[&str] = &["top_k", "threshold", "mode", "min_interval_ms", "smoothing"];

fn read_config(table: &Table) -> Result<Config> {
    let top = Section::new(String::new(), table, TOP_KEYS)?;
    let mut config = Config::default();
    if let Some(model) = top.str("model")? {
        if model.is_empty() {
            return Err(ConfigError::invalid("model", "must not be empty"));
        }
        config.model = ModelChoice::Path(model.into());
    }
    match table.get("threads") {
        None => {}
        Some(Value::String(s)) if s == "auto" => config.threads = Threads::Auto,
        Some(Value::Integer(n)) => {
            config.threads = Threads::Fixed(check_int("threads", *n, THREADS)? as usize)
        }
        Some(other) => {
            return Err(top.wrong_type("threads", "an integer or \"auto\"", other));
        }
    }
    if let Some(mib) = top.int("max_model_mib")? {
        config.max_model_mib = check_int("max_model_mib", mib, MAX_MODEL_MIB)? as u64;
    }
    if let Some(tier) = top.str("kernel_tier")? {
        config.kernel_tier =
            Some(Tier::ALL.into_iter().find(|t| t.name() == tier).ok_or_else(|| {
                ConfigError::invalid(
                    "kernel_tier",
                    format!(
                        "unknown kernel tier {tier:?} (expected {})",
                        names(Tier::ALL.map(Tier::name))
                    ),
                )
            })?);
    }
    if let Some(bus) = top.str("bus")? {
        config.bus = Bus::parse(bus).map_err(|m| ConfigError::invalid("bus", m))?;
    }
    if let Some(log) = top.str("log")? {
        config.log = log.parse().map_err(|m| ConfigError::invalid("log", m))?;
    }
    match table.get("camera") {
        None => {}
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ConfigError::invalid(
                "camera",
                "empty (remove it to get the built-in test pattern camera)",
            ));
        }
        Some(Value::Array(items)) => {
            config.cameras = items
                .iter()
                .enumerate()
                .map(|(i, item)| read_camera(i, item))
                .collect::<Result<_>>()?;
        }
        Some(other) => {
            return Err(top.wrong_type("camera", "an array of tables ([[camera]])", other));
        }
    }
    config.validate()?;
    Ok(config)
}

fn read_camera(index: usize, value: &Value) -> Result<Camera> {
    let prefix = format!("camera[{index}]");
    let Value::Table(table) = value else {
        return Err(ConfigError::invalid(
            prefix,
            format!("expected a table, found {}", describe(value)),
        ));
    };
    let cam = Section::new(prefix.clone(), table, CAMERA_KEYS)?;
    let name = cam.str("name")?.map_or_else(|| format!("cam{index}"), str::to_owned);
    let spec =
        cam.required_str("source", "a source such as \"v4l2:/dev/video0\" or \"testpattern\"")?;
    let source = spec.parse().map_err(|m| ConfigError::invalid(cam.key("source"), m))?;

    let crop = match cam.table("crop")? {
        None => None,
        Some(t) => {
            let crop = Section::new(cam.key("crop"), t, CROP_KEYS)?;
            let coord = |name: &str, range: RangeInclusive<i64>| -> Result<u32> {
                Ok(check_int(&crop.key(name), crop.required_int(name)?, range)? as u32)
            };
            Some(Crop {
                x: coord("x", CROP_COORD)?,
                y: coord("y", CROP_COORD)?,
                width: coord("width", CROP_SIZE)?,
                height: coord("height", CROP_SIZE)?,
            })
        }
    };

    let retry = match cam.table("retry")? {
        None => None,
        Some(t) => {
            let retry = Section::new(cam.key("retry"), t, RETRY_KEYS)?;
            let ms = |name: &str, default: Duration| -> Result<Duration> {
                Ok(match retry.int(name)? {
                    Some(ms) => {
                        Duration::from_millis(check_int(&retry.key(name), ms, RETRY_MS)? as u64)
                    }
                    None => default,
                })
            };
            Some(Retry {
                initial: ms("initial_ms", DEFAULT_RETRY_INITIAL)?,
                max: ms("max_ms", DEFAULT_RETRY_MAX)?,
            })
        }
    };

    let publish = match cam.table("publish")? {
        None => None,
        Some(t) => Some(read_publish(Section::new(cam.key("publish"), t, PUBLISH_KEYS)?)?),
    };

    let fields = CameraFields {
        format: cam.str("format")?,
        width: cam.int("width")?,
        height: cam.int("height")?,
        fps: cam.number("fps")?,
        scene_seconds: cam.number("scene_seconds")?,
        crop,
        retry,
        publish,
    };
    build_camera(name, source, fields, &|field| format!("{prefix}.{field}"))
}

fn read_publish(section: Section<'_>) -> Result<Publish> {
    let mut publish = Publish::default();
    if let Some(top_k) = section.int("top_k")? {
        publish.top_k = check_int(&section.key("top_k"), top_k, TOP_K)? as usize;
    }
    let threshold = section.number("threshold")?;
    if let Some(threshold) = threshold {
        publish.threshold = check_unit(&section.key("threshold"), threshold)? as f32;
    }
    if let Some(mode) = section.str("mode")? {
        publish.mode = match mode {
            "every" => PublishMode::Every,
            "on_change" => PublishMode::OnChange,
            other => {
                return Err(ConfigError::invalid(
                    section.key("mode"),
                    format!("unknown mode {other:?} (expected every, on_change)"),
                ))
            }
        };
    }
    if let Some(ms) = section.int("min_interval_ms")? {
        let ms = check_int(&section.key("min_interval_ms"), ms, INTERVAL_MS)?;
        publish.min_interval = Duration::from_millis(ms as u64);
    }
    publish.smoothing = read_smoothing(&section)?;
    if threshold.is_some() && matches!(publish.smoothing, Smoothing::Hysteresis { .. }) {
        return Err(ConfigError::invalid(
            section.key("threshold"),
            "not used with hysteresis smoothing (its enter and leave decide which classes \
             are published)",
        ));
    }
    Ok(publish)
}

const SMOOTHING_KINDS: &str = "none, moving_average, hysteresis";

fn read_smoothing(publish: &Section<'_>) -> Result<Smoothing> {
    let key = publish.key("smoothing");
    let table = match publish.table.get("smoothing") {
        None => return Ok(Smoothing::None),
        Some(Value::String(kind)) if kind == "none" => return Ok(Smoothing::None),
        Some(Value::String(kind)) if kind == "moving_average" => {
            return Err(ConfigError::invalid(
                key,
                "moving_average needs a window: write { kind = \"moving_average\", window = 5 }",
            ));
        }
        Some(Value::String(kind)) if kind == "hysteresis" => {
            return Err(ConfigError::invalid(
                key,
                "hysteresis needs thresholds: write { kind = \"hysteresis\", enter = 0.6, \
                 leave = 0.4 }",
            ));
        }
        Some(Value::String(kind)) => {
            return Err(ConfigError::invalid(
                key,
                format!("unknown smoothing {kind:?} (expected {SMOOTHING_KINDS})"),
            ));
        }
        Some(Value::Table(table)) => table,
        Some(other) => {
            return Err(publish.wrong_type("smoothing", "\"none\" or a table with a kind", other));
        }
    };
    let kind = Section::new(key.clone(), table, &["kind", "window", "enter", "leave"])?
        .required_str("kind", SMOOTHING_KINDS)?;
    match kind {
        "none" => {
            Section::new(key, table, &["kind"])?;
            Ok(Smoothing::None)
        }
        "moving_average" => {
            let s = Section::new(key, table, &["kind", "window"])?;
            let window = check_int(&s.key("window"), s.required_int("window")?, WINDOW)?;
            Ok(Smoothing::MovingAverage { window: window as usize })
        }
        "hysteresis" => {
            let s = Section::new(key, table, &["kind", "enter", "leave"])?;
            let enter = check_unit(&s.key("enter"), s.required_number("enter")?)? as f32;
            let leave = check_unit(&s.key("leave"), s.required_number("leave")?)? as f32;
            Ok(Smoothing::Hysteresis { enter, leave })
        }
        other => Err(ConfigError::invalid(
            format!("{key}.kind"),
            format!("unknown smoothing {other:?} (expected {SMOOTHING_KINDS})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_validates() {
        let config = Config::from_toml(example()).unwrap_or_else(|e| panic!("{e}"));
        config.validate().unwrap();
    }

    #[test]
    fn retry_delay_doubles_up_to_max() {
        let retry = Retry::default();
        assert_eq!(retry.delay(0), Duration::from_millis(500));
        assert_eq!(retry.delay(1), Duration::from_millis(1000));
        assert_eq!(retry.delay(4), Duration::from_millis(8000));
        assert_eq!(retry.delay(5), Duration::from_millis(10_000));
        assert_eq!(retry.delay(u32::MAX), Duration::from_millis(10_000));
    }

    #[test]
    fn centre_crop_keeps_the_aspect_ratio() {
        assert_eq!(Crop::centre(640, 480, 224, 224), Crop { x: 80, y: 0, width: 480, height: 480 });
        assert_eq!(Crop::centre(480, 640, 1, 1), Crop { x: 0, y: 80, width: 480, height: 480 });
        assert_eq!(Crop::centre(640, 480, 4, 3), Crop { x: 0, y: 0, width: 640, height: 480 });
        assert_eq!(Crop::centre(1, 1, 224, 224), Crop { x: 0, y: 0, width: 1, height: 1 });
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(PixelFormat::Yuv420.frame_len(640, 480), Some(640 * 480 * 3 / 2));
        assert_eq!(PixelFormat::Yuyv.frame_len(640, 480), Some(640 * 480 * 2));
        assert_eq!(PixelFormat::Rgb24.frame_len(4, 2), Some(24));
        assert_eq!(PixelFormat::Mjpeg.frame_len(4, 2), None);
    }
}
