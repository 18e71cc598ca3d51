//! The D-Bus service `io.prom.Classifier1` (zbus 5), decoupled from the pipeline.
//!
//! Layout (see docs/DBUS.md and docs/io.prom.Classifier1.xml):
//!
//! - well-known name [`BUS_NAME`];
//! - root object [`ROOT_PATH`] with interface `io.prom.Classifier1` (State, Model, Tier,
//!   Threads; ClassifyImage, ReloadModel) and `org.freedesktop.DBus.ObjectManager`;
//! - one object per camera, `/io/prom/Classifier1/camera/NAME`, interface `io.prom.Camera1`
//!   (signal Classified; Fps, LatencyMs, frame counters, State; Pause, Resume).
//!
//! Nothing here blocks the inference path: results are pushed with
//! [`CameraHandle::publish`] into a bounded queue drained by a publisher thread (a full
//! queue drops and counts), statistics and state are plain shared values that the publisher
//! thread turns into `PropertiesChanged` (camera statistics at most every
//! [`ServiceOptions::stats_interval`]), and the methods that need work done
//! (ClassifyImage, ReloadModel) forward it over bounded channels to worker threads and await
//! the answer without occupying the bus connection's executor.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use zbus::message::Header;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

/// The well-known bus name.
pub const BUS_NAME: &str = "io.prom.Classifier1";
/// The root object path.
pub const ROOT_PATH: &str = "/io/prom/Classifier1";
/// The root object's interface.
pub const ROOT_INTERFACE: &str = "io.prom.Classifier1";
/// The per-camera interface.
pub const CAMERA_INTERFACE: &str = "io.prom.Camera1";
/// Prefix of camera object paths (followed by the camera's path element).
pub const CAMERA_PATH_PREFIX: &str = "/io/prom/Classifier1/camera/";
/// Default upper bound of a `ClassifyImage` payload (8 MiB).
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 8 << 20;

/// Incoming messages the connection buffers (zbus's default is 64).
const MAX_QUEUED_MESSAGES: usize = 8;

/// One classification result: (class id, label, score).
pub type Prediction = (u32, String, f64);

/// Which bus to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusChoice {
    /// The system bus (production default).
    System,
    /// The user's session bus.
    Session,
    /// A bus given by its D-Bus address, e.g. `unix:path=/tmp/bus`.
    Address(String),
}

/// A decoded image handed to the classifier: `width x height` RGB8, row-major.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes of RGB.
    pub rgb: Vec<u8>,
}

/// The classifier behind `ClassifyImage`: runs on the service's classify worker thread,
/// never on the bus executor. Returns the top-k predictions or a message.
pub type ClassifierFn =
    Box<dyn FnMut(&DecodedImage) -> Result<Vec<Prediction>, String> + Send + 'static>;

/// The handler behind `ReloadModel(path)`: runs on the service's reload worker thread.
/// An empty path means "reload the configured model".
pub type ReloadFn = Box<dyn FnMut(&str) -> Result<(), String> + Send + 'static>;

/// The `Model` property (`a{sv}` on the bus; see [`ModelInfo::to_dict`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// File the model was loaded from.
    pub path: String,
    /// Checksum of the model file (e.g. hex SHA-256 or the container's checksum).
    pub checksum: String,
    /// Number of output classes.
    pub classes: u32,
    /// Input width in pixels.
    pub input_width: u32,
    /// Input height in pixels.
    pub input_height: u32,
    /// When the model was loaded, microseconds since the Unix epoch.
    pub loaded_at_us: u64,
}

impl ModelInfo {
    /// The bus representation: keys `name` (s), `path` (s), `checksum` (s), `classes` (u),
    /// `input_width` (u), `input_height` (u), `loaded_at_us` (t). `None` -> empty dict.
    pub fn to_dict(info: Option<&ModelInfo>) -> HashMap<String, OwnedValue> {
        let mut d = HashMap::new();
        if let Some(m) = info {
            d.insert("name".into(), OwnedValue::from(zbus::zvariant::Str::from(m.name.clone())));
            d.insert("path".into(), OwnedValue::from(zbus::zvariant::Str::from(m.path.clone())));
            d.insert(
                "checksum".into(),
                OwnedValue::from(zbus::zvariant::Str::from(m.checksum.clone())),
            );
            d.insert("classes".into(), OwnedValue::from(m.classes));
            d.insert("input_width".into(), OwnedValue::from(m.input_width));
            d.insert("input_height".into(), OwnedValue::from(m.input_height));
            d.insert("loaded_at_us".into(), OwnedValue::from(m.loaded_at_us));
        }
        d
    }
}

/// Per-camera statistics, published as properties of `io.prom.Camera1`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CameraStats {
    /// Classified frames per second (recent average).
    pub fps: f64,
    /// Capture-to-publish latency, median, milliseconds.
    pub latency_p50_ms: f64,
    /// Capture-to-publish latency, 99th percentile, milliseconds.
    pub latency_p99_ms: f64,
    /// Frames delivered by the source.
    pub frames_captured: u64,
    /// Frames dropped (stale in the newest-frame slot, or signals dropped on a full queue).
    pub frames_dropped: u64,
    /// Frames classified.
    pub frames_classified: u64,
}

/// A control request for a camera's capture loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraControl {
    /// `Pause` was called.
    Pause,
    /// `Resume` was called.
    Resume,
}

/// Tunables and initial values of the service.
pub struct ServiceOptions {
    /// Backs `ClassifyImage`; `None` answers it with `...Error.NotSupported`.
    pub classifier: Option<ClassifierFn>,
    /// Backs `ReloadModel`; `None` answers it with `...Error.ReloadFailed`.
    pub reload: Option<ReloadFn>,
    /// Largest accepted `ClassifyImage` payload in bytes.
    pub max_image_bytes: usize,
    /// How long `ClassifyImage` waits for the classifier before `...Error.Timeout`.
    pub classify_timeout: Duration,
    /// How long `ReloadModel` waits for the handler before `...Error.Timeout`.
    pub reload_timeout: Duration,
    /// Minimum interval between statistics `PropertiesChanged` signals of one camera.
    pub stats_interval: Duration,
    /// Capacity of the result-signal queue (shared by all cameras).
    pub signal_queue: usize,
    /// `ClassifyImage` requests that may wait for the classifier before `...Error.Busy`.
    pub classify_queue: usize,
    /// Payload bytes that `ClassifyImage` requests may hold, waiting or being decoded,
    /// before `...Error.Busy` (one request of any accepted size always fits).
    pub classify_queue_bytes: usize,
    /// Initial `State`.
    pub state: String,
    /// Initial `Model`.
    pub model: Option<ModelInfo>,
    /// Initial `Tier`.
    pub tier: String,
    /// Initial `Threads`.
    pub threads: u32,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            classifier: None,
            reload: None,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            classify_timeout: Duration::from_secs(10),
            reload_timeout: Duration::from_secs(60),
            stats_interval: Duration::from_millis(500),
            signal_queue: 64,
            classify_queue: 4,
            classify_queue_bytes: 2 * DEFAULT_MAX_IMAGE_BYTES,
            state: "starting".into(),
            model: None,
            tier: String::new(),
            threads: 0,
        }
    }
}

/// Errors of [`Service`] itself (connecting, registering, naming).
#[derive(Debug)]
pub enum ServiceError {
    /// A D-Bus failure, with what was being done.
    Bus(String, Box<zbus::Error>),
    /// The well-known name is owned by another connection.
    NameTaken,
    /// A camera name is unusable (empty or a duplicate).
    BadCamera(String),
    /// A thread could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceError::Bus(what, e) => write!(f, "D-Bus: {what}: {e}"),
            ServiceError::NameTaken => write!(f, "D-Bus name {BUS_NAME} is already owned"),
            ServiceError::BadCamera(m) => write!(f, "camera: {m}"),
            ServiceError::Thread(e) => write!(f, "cannot start D-Bus thread: {e}"),
        }
    }
}

impl std::error::Error for ServiceError {}

/// The D-Bus errors of the API, named `io.prom.Classifier1.Error.<Variant>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "io.prom.Classifier1.Error")]
pub enum ApiError {
    /// A zbus-internal failure.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The payload is not a decodable JPEG, PNG or PPM image.
    InvalidImage(String),
    /// The payload exceeds the size limit.
    ImageTooLarge(String),
    /// The classifier failed on a valid image.
    ClassifyFailed(String),
    /// Too many `ClassifyImage` requests are waiting.
    Busy(String),
    /// The worker did not answer in time.
    Timeout(String),
    /// The method is not available in this daemon (no classifier configured).
    NotSupported(String),
    /// The model could not be reloaded; the previous one keeps serving.
    ReloadFailed(String),
}

// ---------------------------------------------------------------------------------------
// A one-shot reply slot that an async method can await without blocking its executor.

struct SlotInner<T> {
    value: Option<T>,
    done: bool,
    waker: Option<Waker>,
}

struct Slot<T>(Mutex<SlotInner<T>>);

impl<T> Slot<T> {
    fn new() -> Arc<Self> {
        Arc::new(Slot(Mutex::new(SlotInner { value: None, done: false, waker: None })))
    }

    /// Fills the slot unless it is already filled; returns whether this call filled it.
    fn complete(&self, value: T) -> bool {
        let waker = {
            let mut s = lock(&self.0);
            if s.done {
                return false;
            }
            s.done = true;
            s.value = Some(value);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    fn is_done(&self) -> bool {
        lock(&self.0).done
    }
}

struct SlotFuture<T>(Arc<Slot<T>>);

impl<T> Future for SlotFuture<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = lock(&self.0 .0);
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

use crate::dbus_readonly::ReadOnlyProperties;
use crate::lock;

type Expiry = (Instant, Box<dyn FnOnce() + Send>);

/// One thread that fires timeouts of pending requests.
fn timer_thread(rx: Receiver<Expiry>, stop: Receiver<()>) {
    let mut pending: Vec<Expiry> = Vec::new();
    loop {
        let now = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            if pending[i].0 <= now {
                let (_, fire) = pending.swap_remove(i);
                fire();
            } else {
                i += 1;
            }
        }
        let wait = pending
            .iter()
            .map(|p| p.0.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        select! {
            recv(rx) -> m => match m {
                Ok(e) => pending.push(e),
                Err(_) => return,
            },
            recv(stop) -> _ => return,
            default(wait) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Shared state.

struct RootProps {
    state: String,
    model: Option<ModelInfo>,
    tier: String,
    threads: u32,
}

struct RootShared {
    props: Mutex<RootProps>,
}

struct CameraProps {
    stats: CameraStats,
    state: String,
    /// The state to show again on Resume (the pipeline's latest while paused).
    resume_state: String,
}

struct CameraShared {
    name: String,
    path: OwnedObjectPath,
    props: Mutex<CameraProps>,
    paused: AtomicBool,
    control_tx: Sender<CameraControl>,
    control_rx: Receiver<CameraControl>,
    signals_dropped: AtomicU64,
    signals_sent: AtomicU64,
    /// Score buffers on their way back to the camera's inference loop.
    spare_scores: Receiver<Box<Scores>>,
    spare_scores_tx: Sender<Box<Scores>>,
}

impl CameraShared {
    fn give_back(&self, payload: TopKPayload) {
        if let TopKPayload::Indexed(_, scores) = payload {
            let _ = self.spare_scores_tx.try_send(scores);
        }
    }
}

struct Published {
    camera: Arc<CameraShared>,
    sequence: u64,
    timestamp_us: u64,
    top_k: TopKPayload,
}

/// Largest top-k a [`Scores`] value carries (the config allows `top_k` up to 100).
pub const MAX_TOP_K: usize = 100;

/// A top-k result without heap storage: class ids and scores in a fixed array, labels
/// resolved by the publisher thread from the shared label list. This is what the inference
/// thread hands over per frame, so publishing allocates nothing on that thread.
#[derive(Clone)]
pub struct Scores {
    len: usize,
    entries: [(u32, f64); MAX_TOP_K],
}

impl Default for Scores {
    fn default() -> Self {
        Scores { len: 0, entries: [(0, 0.0); MAX_TOP_K] }
    }
}

impl Scores {
    /// Removes every entry.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends (class id, score); returns `false` (and keeps nothing) when full.
    pub fn push(&mut self, class: u32, score: f64) -> bool {
        if self.len == MAX_TOP_K {
            return false;
        }
        self.entries[self.len] = (class, score);
        self.len += 1;
        true
    }

    /// The entries, best first as pushed.
    pub fn as_slice(&self) -> &[(u32, f64)] {
        &self.entries[..self.len]
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Scores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

enum TopKPayload {
    Owned(Vec<Prediction>),
    Indexed(Arc<[String]>, Box<Scores>),
}

/// Score buffers per camera beyond the signal queue's capacity: one being filled by the
/// inference thread, one being emitted by the publisher.
const SPARE_SCORES_EXTRA: usize = 2;

mod erased {
    use super::{Arc, Scores};

    /// Both payload kinds as the `a(usd)` array the signal carries.
    pub(super) trait TopK {
        fn as_vec(&self) -> Vec<(u32, &str, f64)>;
    }

    impl TopK for Vec<super::Prediction> {
        fn as_vec(&self) -> Vec<(u32, &str, f64)> {
            self.iter().map(|(c, l, s)| (*c, l.as_str(), *s)).collect()
        }
    }

    impl TopK for (&Arc<[String]>, &Scores) {
        fn as_vec(&self) -> Vec<(u32, &str, f64)> {
            let (labels, scores) = *self;
            scores
                .as_slice()
                .iter()
                .map(|&(c, s)| (c, labels.get(c as usize).map_or("", String::as_str), s))
                .collect()
        }
    }
}

/// Wakes the publisher thread (never blocks; one pending wake is enough).
#[derive(Clone)]
struct Waker2(Sender<()>);

impl Waker2 {
    fn wake(&self) {
        let _ = self.0.try_send(());
    }
}

// ---------------------------------------------------------------------------------------
// Interfaces.

struct ClassifyJob {
    bytes: Vec<u8>,
    slot: Arc<Slot<Result<Vec<Prediction>, ApiError>>>,
    _held: HeldBytes,
}

/// Payload bytes held by a `ClassifyImage` request, counted in a shared total until the
/// request is done (dropped).
struct HeldBytes {
    total: Arc<AtomicUsize>,
    bytes: usize,
}

impl HeldBytes {
    /// Counts `bytes` more, unless that would pass `budget` while something is held.
    fn reserve(total: &Arc<AtomicUsize>, bytes: usize, budget: usize) -> Option<HeldBytes> {
        total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held == 0 || held + bytes <= budget).then_some(held + bytes)
            })
            .ok()
            .map(|_| HeldBytes { total: total.clone(), bytes })
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

struct ReloadJob {
    path: String,
    slot: Arc<Slot<Result<(), ApiError>>>,
}

struct RootIface {
    shared: Arc<RootShared>,
    classify_tx: Option<Sender<ClassifyJob>>,
    reload_tx: Option<Sender<ReloadJob>>,
    timer_tx: Sender<Expiry>,
    max_image_bytes: usize,
    held_bytes: Arc<AtomicUsize>,
    classify_queue_bytes: usize,
    classify_timeout: Duration,
    reload_timeout: Duration,
}

impl RootIface {
    fn arm_timeout<T: Send + 'static>(
        &self,
        slot: &Arc<Slot<Result<T, ApiError>>>,
        after: Duration,
        what: &'static str,
    ) {
        let s = slot.clone();
        let fire = Box::new(move || {
            s.complete(Err(ApiError::Timeout(format!("{what} did not finish within {after:?}"))));
        });
        // The timer queue is bounded like everything else; if it is full, fail the request
        // now rather than wait (the worker skips jobs whose reply is already sent).
        match self.timer_tx.try_send((Instant::now() + after, fire)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                slot.complete(Err(ApiError::Busy("too many requests in flight".into())));
            }
            Err(TrySendError::Disconnected(_)) => {
                slot.complete(Err(ApiError::Timeout("service is shutting down".into())));
            }
        }
    }
}

#[zbus::interface(name = "io.prom.Classifier1")]
impl RootIface {
    /// Classifies an encoded image (JPEG, PNG or PPM/PGM); returns the top-k
    /// (class id, label, score), best first.
    #[zbus(out_args("top_k"))]
    async fn classify_image(&self, image: Vec<u8>) -> Result<Vec<Prediction>, ApiError> {
        if image.len() > self.max_image_bytes {
            return Err(ApiError::ImageTooLarge(format!(
                "image is {} bytes; the limit is {} bytes",
                image.len(),
                self.max_image_bytes
            )));
        }
        if image.is_empty() {
            return Err(ApiError::InvalidImage("empty image".into()));
        }
        let Some(tx) = &self.classify_tx else {
            return Err(ApiError::NotSupported("no classifier in this daemon".into()));
        };
        let held = HeldBytes::reserve(&self.held_bytes, image.len(), self.classify_queue_bytes)
            .ok_or_else(|| {
                ApiError::Busy("too many image bytes waiting to be classified".into())
            })?;
        let slot = Slot::new();
        match tx.try_send(ClassifyJob { bytes: image, slot: slot.clone(), _held: held }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::Busy("too many ClassifyImage requests waiting".into()))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::ClassifyFailed("classifier worker is not running".into()))
            }
        }
        self.arm_timeout(&slot, self.classify_timeout, "classification");
        SlotFuture(slot).await
    }

    /// Loads the model at `path` (empty: the configured model) off the hot path and swaps
    /// it in; on failure the old model keeps serving.
    async fn reload_model(&self, path: String) -> Result<(), ApiError> {
        let Some(tx) = &self.reload_tx else {
            return Err(ApiError::ReloadFailed("reloading is not supported by this daemon".into()));
        };
        let slot = Slot::new();
        match tx.try_send(ReloadJob { path, slot: slot.clone() }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::Busy("a reload is already in progress".into()))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::ReloadFailed("reload worker is not running".into()))
            }
        }
        self.arm_timeout(&slot, self.reload_timeout, "reload");
        SlotFuture(slot).await
    }

    /// Service state: starting, running, reloading, stalled, stopping.
    #[zbus(property)]
    async fn state(&self) -> String {
        lock(&self.shared.props).state.clone()
    }

    /// The loaded model (a{sv}; empty when none).
    #[zbus(property)]
    async fn model(&self) -> HashMap<String, OwnedValue> {
        ModelInfo::to_dict(lock(&self.shared.props).model.as_ref())
    }

    /// Kernel tier in use (e.g. scalar, neon, neon-dotprod, avx2).
    #[zbus(property)]
    async fn tier(&self) -> String {
        lock(&self.shared.props).tier.clone()
    }

    /// Inference worker threads.
    #[zbus(property)]
    async fn threads(&self) -> u32 {
        lock(&self.shared.props).threads
    }
}

struct CameraIface {
    cam: Arc<CameraShared>,
    wake: Waker2,
}

#[zbus::interface(name = "io.prom.Camera1")]
impl CameraIface {
    /// Stops classifying this camera's frames until Resume.
    // The (unused) header parameter makes zbus check the call's signature, which it skips
    // for methods without parameters: a call with arguments is refused, not obeyed.
    async fn pause(&self, #[zbus(header)] _header: Header<'_>) -> zbus::fdo::Result<()> {
        self.cam.paused.store(true, Ordering::SeqCst);
        {
            let mut p = lock(&self.cam.props);
            if p.state != "paused" {
                p.resume_state = std::mem::replace(&mut p.state, "paused".into());
            }
        }
        let _ = self.cam.control_tx.try_send(CameraControl::Pause);
        self.wake.wake();
        Ok(())
    }

    /// Undoes Pause.
    // The (unused) header parameter makes zbus check the call's signature, which it skips
    // for methods without parameters: a call with arguments is refused, not obeyed.
    async fn resume(&self, #[zbus(header)] _header: Header<'_>) -> zbus::fdo::Result<()> {
        self.cam.paused.store(false, Ordering::SeqCst);
        {
            let mut p = lock(&self.cam.props);
            if p.state == "paused" {
                p.state = p.resume_state.clone();
            }
        }
        let _ = self.cam.control_tx.try_send(CameraControl::Resume);
        self.wake.wake();
        Ok(())
    }

    /// A classified frame: sequence number, capture time (µs, CLOCK_REALTIME) and the
    /// top-k (class id, label, score), best first.
    #[zbus(signal)]
    async fn classified(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        sequence: u64,
        capture_timestamp_us: u64,
        top_k: Vec<Prediction>,
    ) -> zbus::Result<()>;

    /// Classified frames per second.
    #[zbus(property)]
    async fn fps(&self) -> f64 {
        lock(&self.cam.props).stats.fps
    }

    /// Capture-to-publish latency (p50, p99) in milliseconds.
    #[zbus(property)]
    async fn latency_ms(&self) -> (f64, f64) {
        let s = lock(&self.cam.props).stats;
        (s.latency_p50_ms, s.latency_p99_ms)
    }

    /// Frames delivered by the source.
    #[zbus(property)]
    async fn frames_captured(&self) -> u64 {
        lock(&self.cam.props).stats.frames_captured
    }

    /// Frames dropped.
    #[zbus(property)]
    async fn frames_dropped(&self) -> u64 {
        lock(&self.cam.props).stats.frames_dropped
    }

    /// Frames classified.
    #[zbus(property)]
    async fn frames_classified(&self) -> u64 {
        lock(&self.cam.props).stats.frames_classified
    }

    /// Camera state: starting, running, waiting, paused, stopped.
    #[zbus(property)]
    async fn state(&self) -> String {
        lock(&self.cam.props).state.clone()
    }
}

// ---------------------------------------------------------------------------------------
// Client-side proxies (for promctl and tests).

/// Client proxy of the root interface.
#[zbus::proxy(
    interface = "io.prom.Classifier1",
    default_service = "io.prom.Classifier1",
    default_path = "/io/prom/Classifier1"
)]
pub trait Classifier1 {
    /// `ClassifyImage(ay) -> a(usd)`.
    fn classify_image(&self, image: &[u8]) -> zbus::Result<Vec<Prediction>>;
    /// `ReloadModel(s)`.
    fn reload_model(&self, path: &str) -> zbus::Result<()>;
    /// `State` (s).
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    /// `Model` (a{sv}).
    #[zbus(property)]
    fn model(&self) -> zbus::Result<HashMap<String, OwnedValue>>;
    /// `Tier` (s).
    #[zbus(property)]
    fn tier(&self) -> zbus::Result<String>;
    /// `Threads` (u).
    #[zbus(property)]
    fn threads(&self) -> zbus::Result<u32>;
}

/// Client proxy of a camera object.
#[zbus::proxy(interface = "io.prom.Camera1", default_service = "io.prom.Classifier1")]
pub trait Camera1 {
    /// `Pause()`.
    fn pause(&self) -> zbus::Result<()>;
    /// `Resume()`.
    fn resume(&self) -> zbus::Result<()>;
    /// `Classified(t, t, a(usd))`.
    #[zbus(signal)]
    fn classified(
        &self,
        sequence: u64,
        capture_timestamp_us: u64,
        top_k: Vec<Prediction>,
    ) -> zbus::Result<()>;
    /// `Fps` (d).
    #[zbus(property)]
    fn fps(&self) -> zbus::Result<f64>;
    /// `LatencyMs` ((dd)).
    #[zbus(property)]
    fn latency_ms(&self) -> zbus::Result<(f64, f64)>;
    /// `FramesCaptured` (t).
    #[zbus(property)]
    fn frames_captured(&self) -> zbus::Result<u64>;
    /// `FramesDropped` (t).
    #[zbus(property)]
    fn frames_dropped(&self) -> zbus::Result<u64>;
    /// `FramesClassified` (t).
    #[zbus(property)]
    fn frames_classified(&self) -> zbus::Result<u64>;
    /// `State` (s).
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
}

/// The object path of camera `name` (see [`camera_path_element`]).
pub fn camera_path(name: &str) -> String {
    format!("{CAMERA_PATH_PREFIX}{}", camera_path_element(name))
}

/// A camera name as an object-path element: ASCII letters, digits and `_` are kept, every
/// other byte becomes `_` (so `front-door` -> `front_door`).
pub fn camera_path_element(name: &str) -> String {
    name.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { b as char } else { '_' })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Handles.

/// Cloneable handle to the root object's properties.
#[derive(Clone)]
pub struct ServiceHandle {
    shared: Arc<RootShared>,
    wake: Waker2,
}

impl ServiceHandle {
    /// Sets `State` (PropertiesChanged follows promptly if it changed).
    pub fn set_state(&self, state: &str) {
        lock(&self.shared.props).state = state.to_owned();
        self.wake.wake();
    }

    /// Sets `Model`.
    pub fn set_model_info(&self, model: Option<ModelInfo>) {
        lock(&self.shared.props).model = model;
        self.wake.wake();
    }

    /// Sets `Tier`.
    pub fn set_tier(&self, tier: &str) {
        lock(&self.shared.props).tier = tier.to_owned();
        self.wake.wake();
    }

    /// Sets `Threads`.
    pub fn set_threads(&self, threads: u32) {
        lock(&self.shared.props).threads = threads;
        self.wake.wake();
    }
}

/// Cloneable, non-blocking handle to one camera object.
#[derive(Clone)]
pub struct CameraHandle {
    cam: Arc<CameraShared>,
    signals: Sender<Published>,
    wake: Waker2,
}

impl CameraHandle {
    /// The camera's name as given to [`Service::add_camera`].
    pub fn name(&self) -> &str {
        &self.cam.name
    }

    /// The camera's object path.
    pub fn path(&self) -> &str {
        self.cam.path.as_str()
    }

    /// Queues a `Classified` signal. Never blocks: when the queue is full the result is
    /// dropped, counted (see [`CameraHandle::signals_dropped`]) and `false` returned.
    pub fn publish(&self, sequence: u64, timestamp_us: u64, top_k: &[Prediction]) -> bool {
        let msg = Published {
            camera: self.cam.clone(),
            sequence,
            timestamp_us,
            top_k: TopKPayload::Owned(top_k.to_vec()),
        };
        self.send(msg)
    }

    /// Queues a `Classified` signal whose labels are looked up in `labels` by the publisher
    /// thread. `scores` is a boxed buffer that travels to the publisher and comes back
    /// through [`CameraHandle::recycle`], so a caller that keeps a few boxes in circulation
    /// allocates nothing per frame. Never blocks; a full queue drops and counts.
    pub fn publish_scores(
        &self,
        sequence: u64,
        timestamp_us: u64,
        labels: &Arc<[String]>,
        scores: Box<Scores>,
    ) -> bool {
        let msg = Published {
            camera: self.cam.clone(),
            sequence,
            timestamp_us,
            top_k: TopKPayload::Indexed(labels.clone(), scores),
        };
        self.send(msg)
    }

    /// A score buffer handed back by the publisher after emitting it (or a new one when
    /// none is waiting yet).
    pub fn recycle(&self) -> Box<Scores> {
        self.cam.spare_scores.try_recv().unwrap_or_default()
    }

    fn send(&self, msg: Published) -> bool {
        match self.signals.try_send(msg) {
            Ok(()) => true,
            Err(e) => {
                self.cam.signals_dropped.fetch_add(1, Ordering::Relaxed);
                self.cam.give_back(e.into_inner().top_k);
                false
            }
        }
    }

    /// Result signals dropped because the queue was full (or the service stopped).
    pub fn signals_dropped(&self) -> u64 {
        self.cam.signals_dropped.load(Ordering::Relaxed)
    }

    /// Result signals sent on the bus.
    pub fn signals_sent(&self) -> u64 {
        self.cam.signals_sent.load(Ordering::Relaxed)
    }

    /// Replaces the statistics; `PropertiesChanged` for the changed ones follows within
    /// the service's statistics interval.
    pub fn update_stats(&self, stats: CameraStats) {
        let changed = {
            let mut p = lock(&self.cam.props);
            let changed = p.stats != stats;
            p.stats = stats;
            changed
        };
        if changed {
            self.wake.wake();
        }
    }

    /// Sets the camera's `State` as seen by the pipeline (starting, running, waiting,
    /// stopped). While paused the bus shows `paused` and this value comes back on Resume.
    pub fn set_state(&self, state: &str) {
        {
            let mut p = lock(&self.cam.props);
            if self.cam.paused.load(Ordering::SeqCst) {
                p.resume_state = state.to_owned();
            } else {
                p.state = state.to_owned();
            }
        }
        self.wake.wake();
    }

    /// Whether a client has paused this camera (cheap; poll it in the capture loop).
    pub fn is_paused(&self) -> bool {
        self.cam.paused.load(Ordering::SeqCst)
    }

    /// Pause/Resume requests, for a capture loop that prefers waiting on a channel. The
    /// queue is small and lossy; [`CameraHandle::is_paused`] is the authoritative state.
    pub fn controls(&self) -> Receiver<CameraControl> {
        self.cam.control_rx.clone()
    }
}

// ---------------------------------------------------------------------------------------
// The service.

/// The running D-Bus service. Dropping it stops its threads and closes the connection.
pub struct Service {
    conn: zbus::blocking::Connection,
    handle: ServiceHandle,
    cameras: Arc<Mutex<Vec<Arc<CameraShared>>>>,
    signals_tx: Sender<Published>,
    signal_queue: usize,
    stop_tx: Option<Sender<()>>,
    publisher: Option<JoinHandle<()>>,
    bus_lost: Arc<Mutex<Option<String>>>,
}

/// How often the service checks that its bus connection still works.
const BUS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Service {
    /// Connects to `bus`, registers the root object (with ObjectManager) and requests
    /// the name [`BUS_NAME`] (failing if it is taken).
    pub fn start(bus: BusChoice, mut opts: ServiceOptions) -> Result<Service, ServiceError> {
        let bus_err = |what: &str| {
            let what = what.to_owned();
            move |e| ServiceError::Bus(what, Box::new(e))
        };
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let (timer_tx, timer_rx) = bounded::<Expiry>(64);
        let (wake_tx, wake_rx) = bounded::<()>(1);
        let (signals_tx, signals_rx) = bounded::<Published>(opts.signal_queue.max(1));
        let wake = Waker2(wake_tx);

        let shared = Arc::new(RootShared {
            props: Mutex::new(RootProps {
                state: std::mem::take(&mut opts.state),
                model: opts.model.take(),
                tier: std::mem::take(&mut opts.tier),
                threads: opts.threads,
            }),
        });

        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(f).map_err(ServiceError::Thread)
        };
        {
            let stop = stop_rx.clone();
            spawn("dbus-timer", Box::new(move || timer_thread(timer_rx, stop)))?;
        }
        let classify_tx = match opts.classifier.take() {
            Some(f) => {
                let (tx, rx) = bounded(opts.classify_queue.max(1));
                let stop = stop_rx.clone();
                spawn("dbus-classify", Box::new(move || classify_worker(f, rx, stop)))?;
                Some(tx)
            }
            None => None,
        };
        let reload_tx = match opts.reload.take() {
            Some(f) => {
                let (tx, rx) = bounded(1);
                let stop = stop_rx.clone();
                let handle = ServiceHandle { shared: shared.clone(), wake: wake.clone() };
                spawn("dbus-reload", Box::new(move || reload_worker(f, rx, stop, handle)))?;
                Some(tx)
            }
            None => None,
        };

        let root = RootIface {
            shared: shared.clone(),
            classify_tx,
            reload_tx,
            timer_tx,
            max_image_bytes: opts.max_image_bytes,
            held_bytes: Arc::new(AtomicUsize::new(0)),
            classify_queue_bytes: opts.classify_queue_bytes,
            classify_timeout: opts.classify_timeout,
            reload_timeout: opts.reload_timeout,
        };
        let builder = match &bus {
            BusChoice::System => zbus::blocking::connection::Builder::system(),
            BusChoice::Session => zbus::blocking::connection::Builder::session(),
            BusChoice::Address(a) => zbus::blocking::connection::Builder::address(a.as_str()),
        }
        .map_err(bus_err("bus address"))?;
        let conn = builder
            // Incoming messages buffered before the handlers take them: ClassifyImage
            // payloads are up to max_image_bytes each, so a flood must wait in the bus
            // (which refuses senders once its per-connection limit is reached), not here.
            .max_queued(MAX_QUEUED_MESSAGES)
            .serve_at(ROOT_PATH, ReadOnlyProperties::new(root))
            .map_err(bus_err("registering the root object"))?
            .serve_at(ROOT_PATH, zbus::fdo::ObjectManager)
            .map_err(bus_err("registering the ObjectManager"))?
            .build()
            .map_err(|e| ServiceError::Bus(format!("connecting to {bus:?}"), Box::new(e)))?;
        // Requested here rather than by the builder, which does not report `Exists`.
        match conn.request_name_with_flags(BUS_NAME, zbus::fdo::RequestNameFlags::DoNotQueue.into())
        {
            Ok(zbus::fdo::RequestNameReply::PrimaryOwner)
            | Ok(zbus::fdo::RequestNameReply::AlreadyOwner) => {}
            Ok(_) | Err(zbus::Error::NameTaken) => return Err(ServiceError::NameTaken),
            Err(e) => return Err(ServiceError::Bus(format!("requesting {BUS_NAME}"), Box::new(e))),
        }

        let bus_lost = Arc::new(Mutex::new(None));
        {
            let (conn, lost, stop) = (conn.clone(), bus_lost.clone(), stop_rx.clone());
            spawn("dbus-watch", Box::new(move || watch_bus(&conn, &lost, &stop)))?;
        }
        let cameras: Arc<Mutex<Vec<Arc<CameraShared>>>> = Arc::default();
        let publisher = {
            let conn = conn.clone();
            let shared = shared.clone();
            let cameras = cameras.clone();
            let interval = opts.stats_interval;
            spawn(
                "dbus-publish",
                Box::new(move || {
                    Publisher::new(conn, shared, cameras, interval)
                        .run(signals_rx, wake_rx, stop_rx)
                }),
            )?
        };
        Ok(Service {
            conn,
            bus_lost,
            handle: ServiceHandle { shared, wake },
            cameras,
            signals_tx,
            signal_queue: opts.signal_queue.max(1),
            stop_tx: Some(stop_tx),
            publisher: Some(publisher),
        })
    }

    /// Why the bus connection was lost (the bus daemon restarted or dropped us), or `None`
    /// while it works. A lost connection does not come back: the caller exits so that its
    /// supervisor starts it again on the new bus.
    pub fn bus_lost(&self) -> Option<String> {
        lock(&self.bus_lost).clone()
    }

    /// Registers camera `name` at `/io/prom/Classifier1/camera/<element>` (see
    /// [`camera_path_element`]); ObjectManager announces it with InterfacesAdded.
    pub fn add_camera(&self, name: &str) -> Result<CameraHandle, ServiceError> {
        if name.is_empty() {
            return Err(ServiceError::BadCamera("empty camera name".into()));
        }
        let path = camera_path(name);
        let opath = OwnedObjectPath::try_from(path.clone())
            .map_err(|e| ServiceError::BadCamera(format!("{name:?}: {e}")))?;
        if lock(&self.cameras).iter().any(|c| c.path == opath) {
            return Err(ServiceError::BadCamera(format!("{name:?}: duplicate path {path}")));
        }
        let (control_tx, control_rx) = bounded(8);
        // Enough score buffers for a full signal queue, allocated now: `recycle` then never
        // allocates, even while the publisher lags (a full queue drops, returning the box).
        let spares = self.signal_queue + SPARE_SCORES_EXTRA;
        let (spare_scores_tx, spare_scores) = bounded(spares);
        for _ in 0..spares {
            let _ = spare_scores_tx.try_send(Box::<Scores>::default());
        }
        let cam = Arc::new(CameraShared {
            name: name.to_owned(),
            path: opath,
            props: Mutex::new(CameraProps {
                stats: CameraStats::default(),
                state: "starting".into(),
                resume_state: "starting".into(),
            }),
            paused: AtomicBool::new(false),
            control_tx,
            control_rx,
            signals_dropped: AtomicU64::new(0),
            signals_sent: AtomicU64::new(0),
            spare_scores,
            spare_scores_tx,
        });
        lock(&self.cameras).push(cam.clone());
        let iface = CameraIface { cam: cam.clone(), wake: self.handle.wake.clone() };
        let added = self
            .conn
            .object_server()
            .at(path.as_str(), ReadOnlyProperties::new(iface))
            .map_err(|e| ServiceError::Bus(format!("registering {path}"), Box::new(e)))?;
        if !added {
            return Err(ServiceError::BadCamera(format!("{name:?}: {path} already registered")));
        }
        Ok(CameraHandle { cam, signals: self.signals_tx.clone(), wake: self.handle.wake.clone() })
    }

    /// A cloneable handle for setting the root properties from other threads.
    pub fn handle(&self) -> ServiceHandle {
        self.handle.clone()
    }

    /// Sets `State`.
    pub fn set_state(&self, state: &str) {
        self.handle.set_state(state)
    }

    /// Sets `Model`.
    pub fn set_model_info(&self, model: Option<ModelInfo>) {
        self.handle.set_model_info(model)
    }

    /// Sets `Tier`.
    pub fn set_tier(&self, tier: &str) {
        self.handle.set_tier(tier)
    }

    /// Sets `Threads`.
    pub fn set_threads(&self, threads: u32) {
        self.handle.set_threads(threads)
    }

    /// The underlying connection (e.g. for the unique name).
    pub fn connection(&self) -> &zbus::blocking::Connection {
        &self.conn
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Disconnecting the stop channel ends every worker; the publisher flushes first.
        self.stop_tx.take();
        if let Some(p) = self.publisher.take() {
            let _ = p.join();
        }
        let _ = self.conn.release_name(BUS_NAME);
    }
}

/// Asks the bus daemon for its id every [`BUS_CHECK_INTERVAL`] until `stop`; records the
/// first failure to reach it in `lost`. (zbus does not report a closed connection to a
/// server by itself: the object server simply stops receiving calls.)
///
/// `GetId` is on the bus driver's own interface, which every bus policy lets everyone call;
/// `org.freedesktop.DBus.Peer.Ping` is not: a Debian system bus with systemd's policy files
/// refused it, and the daemon, taking the refusal for a lost bus, exited a second after
/// every start (found by the booted package test). An error *reply* still proves the
/// connection works, so only errors without one count as a lost bus.
fn watch_bus(conn: &zbus::blocking::Connection, lost: &Mutex<Option<String>>, stop: &Receiver<()>) {
    let mut refused_logged = false;
    loop {
        select! {
            recv(stop) -> _ => return,
            default(BUS_CHECK_INTERVAL) => {}
        }
        let check = conn.call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "GetId",
            &(),
        );
        match check {
            Ok(_) => {}
            Err(e @ (zbus::Error::MethodError(..) | zbus::Error::FDO(_))) => {
                if !refused_logged {
                    tracing::warn!("the bus answered the connection check with an error: {e}");
                    refused_logged = true;
                }
            }
            Err(e) => {
                tracing::error!("lost the D-Bus connection: {e}");
                *lock(lost) = Some(e.to_string());
                return;
            }
        }
    }
}

fn classify_worker(mut f: ClassifierFn, rx: Receiver<ClassifyJob>, stop: Receiver<()>) {
    loop {
        let job = select! {
            recv(rx) -> j => match j { Ok(j) => j, Err(_) => return },
            recv(stop) -> _ => return,
        };
        if job.slot.is_done() {
            continue; // timed out while queued
        }
        let decoded = crate::imageio::decode(&job.bytes);
        // The payload is not needed past the decode; free it before classifying.
        drop(job.bytes);
        let result = match decoded {
            Err(crate::imageio::ImageError::TooLarge(m)) => Err(ApiError::ImageTooLarge(m)),
            Err(crate::imageio::ImageError::Invalid(m)) => Err(ApiError::InvalidImage(m)),
            Ok((width, height, rgb)) => {
                let img = DecodedImage { width, height, rgb };
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&img))) {
                    Ok(Ok(top)) => Ok(top),
                    Ok(Err(m)) => Err(ApiError::ClassifyFailed(m)),
                    Err(_) => Err(ApiError::ClassifyFailed("classifier panicked".into())),
                }
            }
        };
        job.slot.complete(result);
    }
}

/// Runs reload jobs; `State` reads `reloading` meanwhile and afterwards goes back to what
/// it was, unless the handler set another state itself.
fn reload_worker(
    mut f: ReloadFn,
    rx: Receiver<ReloadJob>,
    stop: Receiver<()>,
    handle: ServiceHandle,
) {
    loop {
        let job = select! {
            recv(rx) -> j => match j { Ok(j) => j, Err(_) => return },
            recv(stop) -> _ => return,
        };
        if job.slot.is_done() {
            continue;
        }
        let before =
            std::mem::replace(&mut lock(&handle.shared.props).state, "reloading".to_owned());
        handle.wake.wake();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&job.path)));
        {
            let mut p = lock(&handle.shared.props);
            if p.state == "reloading" {
                p.state = before;
            }
        }
        handle.wake.wake();
        let result = match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(m)) => Err(ApiError::ReloadFailed(m)),
            Err(_) => Err(ApiError::ReloadFailed("reload handler panicked".into())),
        };
        job.slot.complete(result);
    }
}

// ---------------------------------------------------------------------------------------
// The publisher thread: result signals and PropertiesChanged.

#[derive(Clone, PartialEq)]
struct RootSnapshot {
    state: String,
    model: Option<ModelInfo>,
    tier: String,
    threads: u32,
}

struct CameraSeen {
    path: OwnedObjectPath,
    state: String,
    stats: CameraStats,
    last_stats_emit: Option<Instant>,
}

struct Publisher {
    conn: zbus::blocking::Connection,
    root: Arc<RootShared>,
    cameras: Arc<Mutex<Vec<Arc<CameraShared>>>>,
    interval: Duration,
    root_seen: RootSnapshot,
    cams_seen: Vec<CameraSeen>,
}

impl Publisher {
    fn new(
        conn: zbus::blocking::Connection,
        root: Arc<RootShared>,
        cameras: Arc<Mutex<Vec<Arc<CameraShared>>>>,
        interval: Duration,
    ) -> Self {
        let root_seen = Self::snapshot(&root);
        Publisher { conn, root, cameras, interval, root_seen, cams_seen: Vec::new() }
    }

    fn snapshot(root: &RootShared) -> RootSnapshot {
        let p = lock(&root.props);
        RootSnapshot {
            state: p.state.clone(),
            model: p.model.clone(),
            tier: p.tier.clone(),
            threads: p.threads,
        }
    }

    fn run(mut self, signals: Receiver<Published>, wake: Receiver<()>, stop: Receiver<()>) {
        let mut next_due: Option<Instant> = None;
        loop {
            let wait = next_due
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            select! {
                recv(signals) -> m => if let Ok(m) = m { self.emit_classified(m) },
                recv(wake) -> _ => {},
                recv(stop) -> _ => {
                    while let Ok(m) = signals.try_recv() {
                        self.emit_classified(m);
                    }
                    self.flush_properties(Instant::now(), true);
                    return;
                },
                default(wait) => {},
            }
            next_due = self.flush_properties(Instant::now(), false);
        }
    }

    fn emit_classified(&self, m: Published) {
        let path = m.camera.path.as_str();
        let emit = |top_k: &dyn erased::TopK| {
            self.conn.emit_signal(
                None::<&str>,
                path,
                CAMERA_INTERFACE,
                "Classified",
                &(m.sequence, m.timestamp_us, top_k.as_vec()),
            )
        };
        let r = match &m.top_k {
            TopKPayload::Owned(v) => emit(v),
            TopKPayload::Indexed(labels, scores) => emit(&(labels, &**scores)),
        };
        m.camera.give_back(m.top_k);
        match r {
            Ok(()) => {
                m.camera.signals_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                m.camera.signals_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("D-Bus: cannot emit Classified for {}: {e}", m.camera.name);
            }
        }
    }

    fn properties_changed(&self, path: &str, iface: &str, changed: HashMap<&str, Value<'_>>) {
        if changed.is_empty() {
            return;
        }
        let invalidated: Vec<&str> = Vec::new();
        if let Err(e) = self.conn.emit_signal(
            None::<&str>,
            path,
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged",
            &(iface, changed, invalidated),
        ) {
            tracing::warn!("D-Bus: cannot emit PropertiesChanged on {path}: {e}");
        }
    }

    /// Emits what changed; returns when rate-limited statistics are next due.
    fn flush_properties(&mut self, now: Instant, force: bool) -> Option<Instant> {
        let root = Self::snapshot(&self.root);
        if root != self.root_seen {
            let mut ch: HashMap<&str, Value<'_>> = HashMap::new();
            if root.state != self.root_seen.state {
                ch.insert("State", Value::from(root.state.clone()));
            }
            if root.model != self.root_seen.model {
                ch.insert("Model", Value::from(ModelInfo::to_dict(root.model.as_ref())));
            }
            if root.tier != self.root_seen.tier {
                ch.insert("Tier", Value::from(root.tier.clone()));
            }
            if root.threads != self.root_seen.threads {
                ch.insert("Threads", Value::from(root.threads));
            }
            self.properties_changed(ROOT_PATH, ROOT_INTERFACE, ch);
            self.root_seen = root;
        }

        let cams: Vec<Arc<CameraShared>> = lock(&self.cameras).clone();
        let mut next_due = None;
        for cam in cams {
            let (state, stats) = {
                let p = lock(&cam.props);
                (p.state.clone(), p.stats)
            };
            let idx = match self.cams_seen.iter().position(|c| c.path == cam.path) {
                Some(i) => i,
                None => {
                    self.cams_seen.push(CameraSeen {
                        path: cam.path.clone(),
                        state: "starting".into(),
                        stats: CameraStats::default(),
                        last_stats_emit: None,
                    });
                    self.cams_seen.len() - 1
                }
            };
            let interval = self.interval;
            let seen = &mut self.cams_seen[idx];
            let mut ch: HashMap<&str, Value<'_>> = HashMap::new();
            if state != seen.state {
                ch.insert("State", Value::from(state.clone()));
                seen.state = state;
            }
            if stats != seen.stats {
                let due = seen.last_stats_emit.map(|t| t + interval).unwrap_or(now);
                if force || due <= now {
                    let old = seen.stats;
                    if stats.fps != old.fps {
                        ch.insert("Fps", Value::from(stats.fps));
                    }
                    if (stats.latency_p50_ms, stats.latency_p99_ms)
                        != (old.latency_p50_ms, old.latency_p99_ms)
                    {
                        ch.insert(
                            "LatencyMs",
                            Value::from((stats.latency_p50_ms, stats.latency_p99_ms)),
                        );
                    }
                    if stats.frames_captured != old.frames_captured {
                        ch.insert("FramesCaptured", Value::from(stats.frames_captured));
                    }
                    if stats.frames_dropped != old.frames_dropped {
                        ch.insert("FramesDropped", Value::from(stats.frames_dropped));
                    }
                    if stats.frames_classified != old.frames_classified {
                        ch.insert("FramesClassified", Value::from(stats.frames_classified));
                    }
                    seen.stats = stats;
                    seen.last_stats_emit = Some(now);
                } else {
                    next_due = Some(next_due.map_or(due, |d: Instant| d.min(due)));
                }
            }
            let path = seen.path.clone();
            self.properties_changed(path.as_str(), CAMERA_INTERFACE, ch);
        }
        next_due
    }
}
