//! Prometheus metrics on `/metrics` (text exposition format 0.0.4), served by a small
//! blocking HTTP server on the address given (`--metrics`; off unless configured).
//!
//! The daemon's figures are read from the bus at scrape time (one `GetManagedObjects` call
//! gives every camera's properties), so a scrape always shows the daemon's current
//! counters; the capture-to-publish histogram and the MQTT counters are the bridge's own.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prom_daemon::client::BusArgs;
use zbus::zvariant::OwnedValue;

use crate::Counters;

/// Upper bounds of the capture-to-publish latency buckets, seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0];

/// A cumulative histogram as Prometheus exposes it.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative here; summed when rendered).
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// What the metrics server reads: shared with the publisher.
pub struct Shared {
    pub node: String,
    pub counters: Arc<Counters>,
    /// Capture-to-publish latency per camera.
    pub latency: Mutex<BTreeMap<String, Histogram>>,
    pub bus: BusArgs,
    conn: Mutex<Option<zbus::blocking::Connection>>,
}

impl Shared {
    pub fn new(node: String, counters: Arc<Counters>, bus: BusArgs) -> Shared {
        Shared { node, counters, latency: Mutex::default(), bus, conn: Mutex::default() }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The daemon's view: whether it owns its name, its model, and per camera its properties.
pub(crate) struct DaemonView {
    pub up: bool,
    pub model: Option<(String, String)>,
    pub cameras: BTreeMap<String, HashMap<String, OwnedValue>>,
}

impl DaemonView {
    pub fn u64(&self, camera: &str, key: &str) -> Option<u64> {
        self.cameras.get(camera)?.get(key).and_then(|v| u64::try_from(v.clone()).ok())
    }

    pub fn f64(&self, camera: &str, key: &str) -> Option<f64> {
        self.cameras.get(camera)?.get(key).and_then(|v| f64::try_from(v.clone()).ok())
    }

    pub fn string(&self, camera: &str, key: &str) -> Option<String> {
        self.cameras.get(camera)?.get(key).and_then(|v| String::try_from(v.clone()).ok())
    }
}

/// Reads the daemon's state from the bus (one `GetManagedObjects` for every camera).
pub(crate) fn read_daemon(shared: &Shared) -> DaemonView {
    let mut view = DaemonView { up: false, model: None, cameras: BTreeMap::new() };
    let mut guard = lock(&shared.conn);
    if guard.is_none() {
        *guard = shared.bus.connect().ok();
    }
    let Some(conn) = guard.as_ref() else { return view };
    let read = |view: &mut DaemonView| -> zbus::Result<()> {
        let dbus = zbus::blocking::fdo::DBusProxy::new(conn)?;
        let name = zbus::names::BusName::try_from(prom_daemon::dbus::BUS_NAME)?;
        view.up = dbus.name_has_owner(name)?;
        if !view.up {
            return Ok(());
        }
        let objects = zbus::blocking::fdo::ObjectManagerProxy::builder(conn)
            .destination(prom_daemon::dbus::BUS_NAME)?
            .path(prom_daemon::dbus::ROOT_PATH)?
            .build()?
            .get_managed_objects()?;
        for (path, interfaces) in objects {
            if let Some(props) = interfaces.get("io.prom.Camera1") {
                let camera = prom_daemon::client::camera_name(path.as_str()).to_owned();
                let props = props.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                view.cameras.insert(camera, props);
            }
        }
        let root = prom_daemon::dbus::Classifier1ProxyBlocking::builder(conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()?;
        let model = root.model()?;
        let text = |k: &str| {
            model.get(k).and_then(|v| String::try_from(v.clone()).ok()).unwrap_or_default()
        };
        if !model.is_empty() {
            view.model = Some((text("name"), text("checksum")));
        }
        Ok(())
    };
    if let Err(e) = read(&mut view) {
        tracing::debug!("metrics: reading the daemon: {e}");
        if matches!(e, zbus::Error::InputOutput(_)) {
            *guard = None;
        }
    }
    view
}

/// The metrics page.
pub fn render(shared: &Shared) -> String {
    let view = read_daemon(shared);
    let node = escape(&shared.node);
    let mut out = String::new();
    family(&mut out, "prom_daemon_up", "gauge", "Whether prom-daemon owns io.prom.Classifier1.");
    let _ = writeln!(out, "prom_daemon_up{{node=\"{node}\"}} {}", u8::from(view.up));
    family(&mut out, "prom_model_info", "gauge", "The model prom-daemon serves (value 1).");
    if let Some((name, checksum)) = &view.model {
        let _ = writeln!(
            out,
            "prom_model_info{{node=\"{node}\",name=\"{}\",checksum=\"{}\"}} 1",
            escape(name),
            escape(checksum)
        );
    }
    let counter = |props: &HashMap<String, OwnedValue>, key: &str| {
        props.get(key).and_then(|v| u64::try_from(v.clone()).ok())
    };
    for (name, key, help) in [
        ("prom_camera_frames_captured_total", "FramesCaptured", "Frames delivered by the source."),
        ("prom_camera_frames_classified_total", "FramesClassified", "Frames classified."),
        ("prom_camera_frames_dropped_total", "FramesDropped", "Frames dropped by the daemon."),
    ] {
        family(&mut out, name, "counter", help);
        for (camera, props) in &view.cameras {
            if let Some(v) = counter(props, key) {
                let _ =
                    writeln!(out, "{name}{{node=\"{node}\",camera=\"{}\"}} {v}", escape(camera));
            }
        }
    }
    family(&mut out, "prom_camera_fps", "gauge", "Classified frames per second (recent average).");
    for (camera, props) in &view.cameras {
        if let Some(fps) = props.get("Fps").and_then(|v| f64::try_from(v.clone()).ok()) {
            let _ = writeln!(
                out,
                "prom_camera_fps{{node=\"{node}\",camera=\"{}\"}} {fps}",
                escape(camera)
            );
        }
    }
    let name = "prom_camera_capture_to_publish_seconds";
    family(&mut out, name, "histogram", "From frame capture to the MQTT hand-off.");
    for (camera, h) in lock(&shared.latency).iter() {
        let labels = format!("node=\"{node}\",camera=\"{}\"", escape(camera));
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(h.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
    let c = &shared.counters;
    for (name, value, help) in [
        ("prom_bridge_results_received_total", &c.received, "Results received from the daemon."),
        ("prom_bridge_mqtt_published_total", &c.published, "Results handed to the MQTT client."),
        ("prom_bridge_mqtt_dropped_total", &c.dropped, "Results dropped (queue or client full)."),
        (
            "prom_bridge_mqtt_reconnects_total",
            &c.connection_errors,
            "Broker connection errors, each followed by a reconnect.",
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name}{{node=\"{node}\"}} {}", value.load(Ordering::Relaxed));
    }
    let heap = crate::heap::live_bytes();
    if heap > 0 {
        let name = "prom_bridge_heap_bytes";
        family(&mut out, name, "gauge", "Heap bytes the bridge has allocated and not freed.");
        let _ = writeln!(out, "{name}{{node=\"{node}\"}} {heap}");
    }
    out
}

/// Serves `/metrics` on `listener` until the process ends (one request at a time: scrapes
/// are rare and small).
pub fn serve(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if let Err(e) = answer(stream, &shared) {
            tracing::debug!("metrics: {e}");
        }
    }
}

fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET /metrics ") || line == b"GET /metrics" {
        ("200 OK", render(shared))
    } else {
        ("404 Not Found", "only /metrics is served here\n".to_owned())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_when_rendered() {
        let shared = Shared::new(
            "n\"1".into(),
            Arc::default(),
            BusArgs { session: false, bus_address: Some("unix:path=/nonexistent/bus".into()) },
        );
        let mut h = Histogram::default();
        for s in [0.0004, 0.0015, 0.0015, 3.0] {
            h.observe(s);
        }
        lock(&shared.latency).insert("cam".into(), h);
        let text = render(&shared);
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix}\n{text}"))
        };
        let b = "prom_camera_capture_to_publish_seconds_bucket{node=\"n\\\"1\",camera=\"cam\"";
        assert!(line(&format!("{b},le=\"0.0005\"}}")).ends_with(" 1"));
        assert!(line(&format!("{b},le=\"0.002\"}}")).ends_with(" 3"));
        assert!(line(&format!("{b},le=\"2\"}}")).ends_with(" 3"));
        assert!(line(&format!("{b},le=\"+Inf\"}}")).ends_with(" 4"));
        // No daemon on that bus: down, and no camera figures.
        assert_eq!(line("prom_daemon_up"), "prom_daemon_up{node=\"n\\\"1\"} 0");
        assert!(!text.contains("prom_camera_frames_captured_total{"));
    }
}
