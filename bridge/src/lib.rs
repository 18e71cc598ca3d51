//! prom-bridge: prom-daemon's classifications, read over D-Bus as an ordinary client, published
//! to an MQTT broker. The daemon stays without network access; this separate, unprivileged
//! program holds the network side (docs/BRIDGE.md).
//!
//! Three threads and two bounded hand-offs, so a slow or absent broker never holds up the
//! D-Bus side (and so never the daemon):
//!
//! - **D-Bus**: `Classified` signals of every camera, only from the owner of
//!   io.prom.Classifier1 (followed across daemon restarts), into a bounded queue; when it is
//!   full the oldest result is dropped and counted. A lost bus is reconnected with back-off.
//! - **publisher**: takes results from the queue and hands them to the MQTT client without
//!   waiting (`try_publish`); a full client queue drops the result and counts it.
//! - **MQTT**: rumqttc's event loop (connects, keeps alive, reconnects with back-off), which
//!   announces `online` on the availability topic after every connection; the broker
//!   publishes the last will, `offline`, when the bridge vanishes.
//!
//! Every `stats_interval` the publisher also sends each camera's figures (the daemon's
//! properties and the capture-to-publish latency it measured) and the bridge's counters.

pub mod cli;
pub mod config;
pub mod events;
pub mod heap;
pub mod homeassistant;
pub mod metrics;
pub mod mqtt;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use prom_daemon::client::{watch_signals, BusArgs, Classified};
use rumqttc::QoS;
use serde::Serialize;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Where the results go and how.
#[derive(Clone, Debug)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    /// Topic prefix: topics are `<prefix>/<node>/...`.
    pub prefix: String,
    /// This machine's name in the topics.
    pub node: String,
    pub qos: QoS,
    /// Retain the result messages (availability is always retained).
    pub retain: bool,
    /// User name and password for the broker, if it asks for them.
    pub credentials: Option<(String, String)>,
    /// TLS (`mqtts://`): the PEM certificates the broker's must chain to.
    pub tls_ca: Option<Vec<u8>>,
    /// MQTT 3.1.1 or 5.
    pub version: mqtt::Version,
}

impl MqttTarget {
    /// Parses `mqtt://HOST[:PORT]` (default port 1883) or `mqtts://HOST[:PORT]` (TLS,
    /// default port 8883); returns host, port and whether TLS is asked for.
    pub fn parse_url(url: &str) -> Result<(String, u16, bool)> {
        let (rest, tls) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err(format!("--mqtt {url:?}: expected mqtt://HOST[:PORT]").into()),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return Err(format!("--mqtt {url:?}: no host").into());
        }
        // [v6]:port, [v6], host:port or host.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) =
                v6.split_once(']').ok_or_else(|| format!("--mqtt {url:?}: unclosed ["))?;
            (host, after.strip_prefix(':'))
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("--mqtt {url:?}: bad port {p:?}"))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok((host.to_owned(), port, tls))
    }

    /// `<prefix>/<node>/availability`: `online` while connected, `offline` otherwise (last
    /// will, and on a clean exit).
    pub fn availability_topic(&self) -> String {
        format!("{}/{}/availability", self.prefix, self.node)
    }

    /// `<prefix>/<node>/<camera>/result`.
    pub fn result_topic(&self, camera: &str) -> String {
        format!("{}/{}/{}/result", self.prefix, self.node, camera)
    }

    /// `<prefix>/<node>/<camera>/state`: the camera's `State` (running, paused, ...).
    pub fn state_topic(&self, camera: &str) -> String {
        format!("{}/{}/{}/state", self.prefix, self.node, camera)
    }

    /// `<prefix>/<node>/<camera>/set`: `ON` resumes the camera, `OFF` pauses it.
    pub fn command_topic(&self, camera: &str) -> String {
        format!("{}/{}/{}/set", self.prefix, self.node, camera)
    }

    /// The camera a command topic names, if it is one.
    pub fn command_camera<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let rest = rest.strip_prefix(&self.node)?.strip_prefix('/')?;
        let camera = rest.strip_suffix("/set")?;
        (!camera.is_empty() && !camera.contains('/')).then_some(camera)
    }

    /// `<prefix>/<node>/<camera>/stats`.
    pub fn camera_stats_topic(&self, camera: &str) -> String {
        format!("{}/{}/{}/stats", self.prefix, self.node, camera)
    }

    /// `<prefix>/<node>/stats`: the bridge's own counters (no camera topic is this short).
    pub fn bridge_stats_topic(&self) -> String {
        format!("{}/{}/stats", self.prefix, self.node)
    }
}

/// Counters, shared by the threads.
#[derive(Default, Debug)]
pub struct Counters {
    /// Results received from the daemon.
    pub received: AtomicU64,
    /// Results handed to the MQTT client.
    pub published: AtomicU64,
    /// Results dropped because the queue or the MQTT client was full.
    pub dropped: AtomicU64,
    /// Connections to the broker made (the first one included).
    pub connections: AtomicU64,
    /// Connection errors (each followed by a reconnect).
    pub connection_errors: AtomicU64,
}

/// One result as JSON on `.../result`.
#[derive(Serialize, Debug, PartialEq)]
pub struct ResultMessage<'a> {
    pub camera: &'a str,
    pub sequence: u64,
    pub capture_timestamp_us: u64,
    pub top_k: Vec<Prediction<'a>>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Prediction<'a> {
    pub id: u32,
    pub label: &'a str,
    pub score: f64,
}

impl<'a> ResultMessage<'a> {
    pub fn from_signal(c: &'a Classified) -> ResultMessage<'a> {
        ResultMessage {
            camera: &c.camera,
            sequence: c.sequence,
            capture_timestamp_us: c.capture_timestamp_us,
            top_k: c
                .top_k
                .iter()
                .map(|(id, label, score)| Prediction { id: *id, label, score: *score })
                .collect(),
        }
    }
}

/// A bounded queue that drops its oldest entry, counted, instead of blocking the producer.
pub struct DropOldest<T> {
    tx: Sender<T>,
    rx: Receiver<T>,
}

impl<T> DropOldest<T> {
    pub fn new(capacity: usize) -> DropOldest<T> {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        DropOldest { tx, rx }
    }

    /// Queues `item`; returns how many older items were dropped to make room.
    pub fn push(&self, mut item: T) -> u64 {
        let mut dropped = 0;
        loop {
            match self.tx.try_send(item) {
                Ok(()) => return dropped,
                Err(TrySendError::Full(back)) => {
                    item = back;
                    if self.rx.try_recv().is_ok() {
                        dropped += 1;
                    }
                }
                Err(TrySendError::Disconnected(_)) => return dropped,
            }
        }
    }

    pub fn receiver(&self) -> Receiver<T> {
        self.rx.clone()
    }
}

/// What `run` needs.
pub struct Options {
    pub bus: BusArgs,
    pub mqtt: MqttTarget,
    /// Results held while the broker is slow or away.
    pub queue: usize,
    /// How often the stats topics are published.
    pub stats_interval: Duration,
    /// Where to serve Prometheus' `/metrics` (none: not served).
    pub metrics: Option<std::net::SocketAddr>,
}

/// The bridge's counters as published on `<prefix>/<node>/stats`.
#[derive(Serialize, Debug)]
struct BridgeStats {
    results_received: u64,
    results_published: u64,
    results_dropped: u64,
    broker_connections: u64,
    broker_connection_errors: u64,
}

impl Counters {
    fn snapshot(&self) -> BridgeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BridgeStats {
            results_received: get(&self.received),
            results_published: get(&self.published),
            results_dropped: get(&self.dropped),
            broker_connections: get(&self.connections),
            broker_connection_errors: get(&self.connection_errors),
        }
    }
}

/// One camera's figures on `<prefix>/<node>/<camera>/stats`: the daemon's properties (absent
/// while it cannot be asked) and the latency from capture to publish measured here.
#[derive(Serialize, Debug, Default)]
struct CameraStats {
    state: Option<String>,
    fps: Option<f64>,
    frames_captured: Option<u64>,
    frames_classified: Option<u64>,
    frames_dropped: Option<u64>,
    /// Capture to MQTT hand-off over the last interval, milliseconds.
    latency_ms_p50: Option<f64>,
    latency_ms_p99: Option<f64>,
    /// Results of this camera published since the bridge started.
    published: u64,
}

/// Per camera: what the publisher measured since the last stats message.
#[derive(Default)]
struct Window {
    latencies_us: Vec<u64>,
    published: u64,
}

/// The `q`-quantile (0..=1) of `v` by the nearest-rank rule, in milliseconds.
pub fn quantile_ms(v: &mut [u64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1] as f64 / 1e3)
}

/// `map[key]`, inserted as the default first; the key is copied only then (once per
/// camera, not per result).
fn slot<'m, V: Default>(
    map: &'m mut std::collections::BTreeMap<String, V>,
    key: &str,
) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// Pauses (`on` false) or resumes a camera over D-Bus; returns its `State` afterwards.
fn set_camera(conn: &zbus::blocking::Connection, camera: &str, on: bool) -> zbus::Result<String> {
    let proxy = prom_daemon::dbus::Camera1ProxyBlocking::builder(conn)
        .path(prom_daemon::dbus::camera_path(camera))?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()?;
    if on {
        proxy.resume()?;
    } else {
        proxy.pause()?;
    }
    proxy.state()
}

/// Runs the bridge until `stop` is set (then announces `offline` and returns).
pub fn run(o: Options, counters: Arc<Counters>, stop: Arc<AtomicBool>) -> Result<()> {
    let target = o.mqtt.clone();
    let shared =
        Arc::new(metrics::Shared::new(target.node.clone(), counters.clone(), o.bus.clone()));
    if let Some(addr) = o.metrics {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("--metrics {addr}: cannot listen: {e}"))?;
        tracing::info!("serving Prometheus metrics on http://{addr}/metrics");
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || metrics::serve(listener, shared))?;
    }
    let (client, connection) = mqtt::connect(
        &target,
        format!("prom-bridge-{}-{}", target.node, std::process::id()),
        (target.availability_topic(), "offline"),
        o.queue.max(10),
    );

    // The daemon's notifications (and new broker connections) for the publisher.
    let (change_tx, change_rx) = crossbeam_channel::bounded::<events::Change>(64);
    events::spawn(&o.bus, change_tx.clone())?;

    // Commands from MQTT (`<camera>/set`), carried out over D-Bus by their own thread so the
    // event loop never waits for the bus.
    let (commands, command_rx) = crossbeam_channel::bounded::<(String, bool)>(16);
    {
        let client = client.clone();
        let bus = o.bus.clone();
        let target = target.clone();
        std::thread::Builder::new().name("control".into()).spawn(move || {
            let mut conn: Option<zbus::blocking::Connection> = None;
            for (camera, on) in command_rx {
                if conn.is_none() {
                    conn = bus.connect().ok();
                }
                let Some(c) = &conn else { continue };
                match set_camera(c, &camera, on) {
                    Ok(state) => {
                        let topic = target.state_topic(&camera);
                        client.try_publish(topic, QoS::AtLeastOnce, true, state);
                    }
                    Err(e) => {
                        // The bus policy decides who may pause a camera.
                        tracing::warn!(
                            "{} camera {camera}: {e}",
                            if on { "resume" } else { "pause" }
                        );
                        if matches!(e, zbus::Error::InputOutput(_)) {
                            conn = None;
                        }
                    }
                }
            }
        })?;
    }

    // MQTT event loop: connects and reconnects (after a pause that grows to 10 s).
    {
        let client = client.clone();
        let target = target.clone();
        let counters = counters.clone();
        let stop = stop.clone();
        let availability = target.availability_topic();
        let changes = change_tx;
        std::thread::Builder::new().name("mqtt".into()).spawn(move || {
            let mut backoff = Duration::from_millis(100);
            connection.run(|event| {
                match event {
                    Ok(mqtt::Incoming::Connected) => {
                        counters.connections.fetch_add(1, Ordering::Relaxed);
                        backoff = Duration::from_millis(100);
                        tracing::info!("connected to the MQTT broker");
                        client.try_publish(availability.as_str(), QoS::AtLeastOnce, true, "online");
                        let set = format!("{}/{}/+/set", target.prefix, target.node);
                        client.try_subscribe(set, QoS::AtLeastOnce);
                        // Announce the cameras again now: the broker may have lost them.
                        let _ = changes.try_send(events::Change::Cameras);
                    }
                    Ok(mqtt::Incoming::Message { topic, payload }) => {
                        let Some(camera) = target.command_camera(&topic) else { return true };
                        let on = match &payload[..] {
                            b"ON" => true,
                            b"OFF" => false,
                            other => {
                                let text = String::from_utf8_lossy(other);
                                tracing::warn!("{topic}: ignoring {text:?} (ON or OFF)");
                                return true;
                            }
                        };
                        if commands.try_send((camera.to_owned(), on)).is_err() {
                            tracing::warn!("{topic}: too many commands at once, ignored");
                        }
                    }
                    Ok(mqtt::Incoming::Other) => {}
                    Err(e) => {
                        if stop.load(Ordering::Relaxed) {
                            return false;
                        }
                        counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("MQTT: {e}; reconnecting in {backoff:?}");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
                true
            });
        })?;
    }

    // D-Bus side: every result into the drop-oldest queue.
    let queue = Arc::new(DropOldest::new(o.queue.max(1)));
    {
        let queue = queue.clone();
        let counters = counters.clone();
        let bus = o.bus.clone();
        std::thread::Builder::new().name("dbus".into()).spawn(move || {
            let mut backoff = Duration::from_millis(100);
            loop {
                let watched = bus.connect().and_then(|conn| {
                    tracing::info!("watching prom-daemon's results on the bus");
                    backoff = Duration::from_millis(100);
                    watch_signals(&conn, None, None, |c| {
                        counters.received.fetch_add(1, Ordering::Relaxed);
                        let dropped = queue.push(c);
                        counters.dropped.fetch_add(dropped, Ordering::Relaxed);
                        Ok(true)
                    })
                });
                if let Err(e) = watched {
                    tracing::warn!("D-Bus: {e}; reconnecting in {backoff:?}");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        })?;
    }

    // systemd (Type=notify): the bridge is up once its threads run; the broker and the
    // daemon may come later.
    let notifier = prom_daemon::notify::Notifier::from_env()
        .map_err(|e| format!("systemd notification: {e}"))?;
    notifier.send("READY=1\nSTATUS=publishing to the MQTT broker");

    // Publisher: never waits for the network.
    let rx = queue.receiver();
    let mut windows: std::collections::BTreeMap<String, Window> = Default::default();
    let mut totals: std::collections::BTreeMap<String, u64> = Default::default();
    let mut announced = std::collections::BTreeSet::new();
    let mut announced_for = 0;
    // The cameras are read at once (the daemon may be up already), then every interval and
    // whenever the daemon reports a change.
    let mut next_stats = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut result = None;
        crossbeam_channel::select! {
            recv(rx) -> c => result = c.ok(),
            recv(change_rx) -> change => match change {
                Ok(events::Change::State { camera, state }) => {
                    client.try_publish(target.state_topic(&camera), QoS::AtLeastOnce, true, state);
                }
                Ok(events::Change::Cameras) => next_stats = std::time::Instant::now(),
                // Never while the watchers run; if they all ended, do not spin on it.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            },
            default(Duration::from_millis(100)) => {}
        }
        if let Some(c) = result {
            let payload = serde_json::to_vec(&ResultMessage::from_signal(&c))?;
            let topic = target.result_topic(&c.camera);
            match client.try_publish(topic, target.qos, target.retain, payload) {
                true => {
                    counters.published.fetch_add(1, Ordering::Relaxed);
                    let now = prom_daemon::sources::unix_us(std::time::SystemTime::now());
                    let latency_us = now.saturating_sub(c.capture_timestamp_us);
                    let window = slot(&mut windows, &c.camera);
                    window.latencies_us.push(latency_us);
                    window.published += 1;
                    slot(&mut metrics::lock(&shared.latency), &c.camera)
                        .observe(latency_us as f64 / 1e6);
                }
                false => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if std::time::Instant::now() >= next_stats {
            next_stats += o.stats_interval;
            let view = metrics::read_daemon(&shared);
            // Announce again after every new broker connection (it may have lost them).
            let connections = counters.connections.load(Ordering::Relaxed);
            if connections != announced_for {
                announced.clear();
                announced_for = connections;
            }
            // A camera the running daemon no longer has: its entities are withdrawn (an
            // empty retained config removes them from Home Assistant) and its figures
            // are no longer published.
            if view.up {
                let gone: Vec<String> =
                    announced.iter().filter(|c| !view.cameras.contains_key(*c)).cloned().collect();
                for camera in gone {
                    for (topic, _) in homeassistant::discovery(&target, &camera) {
                        client.try_publish(topic, QoS::AtLeastOnce, true, Vec::new());
                    }
                    announced.remove(&camera);
                    windows.remove(&camera);
                }
            }
            let cameras: std::collections::BTreeSet<String> =
                view.cameras.keys().chain(windows.keys()).cloned().collect();
            for camera in &cameras {
                if view.cameras.contains_key(camera) && announced.insert(camera.clone()) {
                    for (topic, config) in homeassistant::discovery(&target, camera) {
                        client.try_publish(topic, QoS::AtLeastOnce, true, config);
                    }
                }
                let w = windows.entry(camera.clone()).or_default();
                let total = totals.entry(camera.clone()).or_default();
                *total += w.published;
                let s = CameraStats {
                    state: view.string(camera, "State"),
                    fps: view.f64(camera, "Fps"),
                    frames_captured: view.u64(camera, "FramesCaptured"),
                    frames_classified: view.u64(camera, "FramesClassified"),
                    frames_dropped: view.u64(camera, "FramesDropped"),
                    latency_ms_p50: quantile_ms(&mut w.latencies_us, 0.5),
                    latency_ms_p99: quantile_ms(&mut w.latencies_us, 0.99),
                    published: *total,
                };
                if let Some(state) = &s.state {
                    let topic = target.state_topic(camera);
                    client.try_publish(topic, QoS::AtLeastOnce, true, state.clone());
                }
                client.try_publish(
                    target.camera_stats_topic(camera),
                    target.qos,
                    true,
                    serde_json::to_vec(&s)?,
                );
                // Emptied, not replaced: the buffer is reused next interval.
                w.latencies_us.clear();
                w.published = 0;
            }
            client.try_publish(
                target.bridge_stats_topic(),
                target.qos,
                true,
                serde_json::to_vec(&counters.snapshot())?,
            );
        }
    }
    notifier.send("STOPPING=1");
    // A clean exit is announced (the last will covers the others).
    client.try_publish(target.availability_topic(), QoS::AtLeastOnce, true, "offline");
    std::thread::sleep(Duration::from_millis(200));
    client.try_disconnect();
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls() {
        let p = |u: &str| MqttTarget::parse_url(u).map_err(|e| e.to_string());
        assert_eq!(p("mqtt://broker").unwrap(), ("broker".into(), 1883, false));
        assert_eq!(p("mqtt://127.0.0.1:18830").unwrap(), ("127.0.0.1".into(), 18830, false));
        assert_eq!(p("mqtt://[::1]:1884/").unwrap(), ("::1".into(), 1884, false));
        assert_eq!(p("mqtt://[::1]").unwrap(), ("::1".into(), 1883, false));
        assert_eq!(p("mqtts://broker").unwrap(), ("broker".into(), 8883, true));
        assert_eq!(p("mqtts://broker:18883").unwrap(), ("broker".into(), 18883, true));
        assert!(p("tcp://broker").unwrap_err().contains("expected mqtt://"));
        assert!(p("mqtt://broker:x").unwrap_err().contains("bad port"));
        assert!(p("mqtt://").unwrap_err().contains("no host"));
    }

    #[test]
    fn command_topics_name_their_camera() {
        let t = MqttTarget {
            host: "h".into(),
            port: 1,
            prefix: "prom".into(),
            node: "pi".into(),
            qos: QoS::AtMostOnce,
            retain: false,
            credentials: None,
            tls_ca: None,
            version: Default::default(),
        };
        assert_eq!(t.command_camera(&t.command_topic("front_door")), Some("front_door"));
        assert_eq!(t.command_camera("prom/pi/front_door/result"), None);
        assert_eq!(t.command_camera("prom/other/front_door/set"), None);
        assert_eq!(t.command_camera("prom/pi//set"), None);
        assert_eq!(t.command_camera("prom/pi/a/b/set"), None);
        assert_eq!(t.command_camera("prompi/x/set"), None);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&mut v, 0.5), Some(50.0));
        assert_eq!(quantile_ms(&mut v, 0.99), Some(99.0));
        assert_eq!(quantile_ms(&mut [7000], 0.99), Some(7.0));
        assert_eq!(quantile_ms(&mut [], 0.5), None);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_entries() {
        let q = DropOldest::new(3);
        let dropped: u64 = (0..10).map(|i| q.push(i)).sum();
        assert_eq!(dropped, 7);
        let rx = q.receiver();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![7, 8, 9]);
    }

    #[test]
    fn result_json_has_sequence_timestamp_and_top_k() {
        let c = Classified {
            camera: "front_door".into(),
            sequence: 7,
            capture_timestamp_us: 1_700_000_000_000_000,
            top_k: vec![(9, "Ankle boot".into(), 0.75), (7, "Sneaker".into(), 0.125)],
        };
        let v: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&ResultMessage::from_signal(&c)).unwrap())
                .unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "camera": "front_door", "sequence": 7, "capture_timestamp_us": 1_700_000_000_000_000u64,
                "top_k": [{"id": 9, "label": "Ankle boot", "score": 0.75},
                          {"id": 7, "label": "Sneaker", "score": 0.125}]
            })
        );
    }
}
