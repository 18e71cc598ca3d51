//! prom-bridge with real parts: Debian's mosquitto on a loopback port, the real prom-daemon
//! on a private bus (the trained Fashion-MNIST model, a test-pattern camera) and the real
//! prom-bridge binary; `mosquitto_sub` reads what the bridge publishes, and the D-Bus
//! signals are read beside it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prom_daemon::client::{start_private_bus, watch_signals, Classified};

const WAIT: Duration = Duration::from_secs(20);

/// Kills and reaps the process on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn target_bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} missing: build the workspace first (cargo test --workspace builds it)",
        path.display()
    );
    path
}

fn program(name: &str) -> PathBuf {
    // (mosquitto is in /usr/sbin, which a user's PATH may lack)
    prom_daemon::client::find_program(name)
        .or_else(|| Some(Path::new("/usr/sbin").join(name)).filter(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{name} not found: apt-get install mosquitto mosquitto-clients"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("prom-bridge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// mosquitto on 127.0.0.1:`port` only, no persistence.
fn broker(dir: &Path, port: u16) -> Proc {
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    // The log (mosquitto-PORT.log, see `mosquitto`) names each client's protocol version:
    // "(p2, ..." is 3.1.1, "(p5, ..." is 5.
    let text = format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n");
    std::fs::write(&conf, text).unwrap();
    mosquitto(&conf, &[port])
}

/// mosquitto with the configuration file `conf`, once it listens on every one of `ports`;
/// its log goes to `conf` with the extension `.log`.
fn mosquitto(conf: &Path, ports: &[u16]) -> Proc {
    let child = Command::new(program("mosquitto"))
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(conf.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    let until = Instant::now() + WAIT;
    while ports.iter().any(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err()) {
        assert!(Instant::now() < until, "mosquitto did not listen on {ports:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

/// `mosquitto_sub` on `topic`: its lines ("TOPIC PAYLOAD") arrive on the channel.
fn subscribe(port: u16, topic: &str) -> (Proc, mpsc::Receiver<String>) {
    subscribe_with(port, topic, &[])
}

/// [`subscribe`] with more `mosquitto_sub` arguments (credentials).
fn subscribe_with(port: u16, topic: &str, extra: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new(program("mosquitto_sub"))
        // "TOPIC PAYLOAD" (-v would print an empty payload as "(null)").
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-F", "%t %p", "-t", topic])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Proc(child), rx)
}

fn daemon(dir: &Path, bus: &str) -> Proc {
    daemon_with_camera(dir, bus, "front_door")
}

fn daemon_with_camera(dir: &Path, bus: &str, camera: &str) -> Proc {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fashion-mnist-prom.prom");
    let config = dir.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\nthreads = 1\n\n[[camera]]\nname = \"{camera}\"\n\
             source = \"testpattern\"\nfps = 20\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let child = Command::new(target_bin("prom-daemon"))
        .arg("--config")
        .arg(&config)
        .arg("--bus-address")
        .arg(bus)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    Proc(child)
}

fn bridge(dir: &Path, bus: &str, port: u16) -> Proc {
    bridge_with(dir, bus, port, &[])
}

fn bridge_with(dir: &Path, bus: &str, port: u16, extra: &[&str]) -> Proc {
    let child = Command::new(target_bin("prom-bridge"))
        .args(["--bus-address", bus, "--mqtt", &format!("mqtt://127.0.0.1:{port}")])
        .args(["--node", "testnode", "--qos", "1"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("bridge.log")).unwrap())
        .spawn()
        .unwrap();
    Proc(child)
}

/// The next line from `rx` within the wait, parsed as "TOPIC JSON-or-text".
fn next(rx: &mpsc::Receiver<String>, what: &str, dir: &Path) -> (String, String) {
    let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
        panic!(
            "no MQTT message ({what}) within {WAIT:?}; bridge log:\n{}\ndaemon log:\n{}",
            std::fs::read_to_string(dir.join("bridge.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        )
    });
    let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
    (topic.to_owned(), payload.to_owned())
}

/// A private bus, and a broker on a free loopback port with a subscriber on a topic filter.
struct Rig {
    dir: PathBuf,
    bus: String,
    port: u16,
    rx: mpsc::Receiver<String>,
    // Dropped in this order: the subscriber, the broker, then the bus (Drop below).
    _sub: Proc,
    _broker: Proc,
    bus_proc: Child,
}

impl Rig {
    fn start(name: &str, topic: &str) -> Rig {
        let dir = tmpdir(name);
        let (bus_proc, bus) = start_private_bus(&dir).unwrap();
        let port = free_port();
        let _broker = broker(&dir, port);
        let (_sub, rx) = subscribe(port, topic);
        Rig { dir, bus, port, rx, _sub, _broker, bus_proc }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.bus_proc.kill();
        let _ = self.bus_proc.wait();
    }
}

fn as_json(c: &Classified) -> serde_json::Value {
    serde_json::to_value(prom_bridge::ResultMessage::from_signal(c)).unwrap()
}

#[test]
fn results_reach_mqtt_equal_to_the_dbus_signals_with_availability() {
    let rig = Rig::start("results", "prom/testnode/#");
    let (dir, bus, port, rx) = (&rig.dir, rig.bus.as_str(), rig.port, &rig.rx);

    // The bridge first: it must wait for the daemon.
    let mut bridge_proc = bridge(dir, bus, port);
    let (topic, payload) = next(rx, "availability", dir);
    assert_eq!((topic.as_str(), payload.as_str()), ("prom/testnode/availability", "online"));
    assert_eq!(bridge_protocol(dir, port), "p2", "MQTT 3.1.1 unless asked for 5");

    // D-Bus signals, read by the test as any client would.
    let (sig_tx, sig_rx) = mpsc::channel();
    {
        let bus = bus.to_owned();
        std::thread::spawn(move || {
            let conn = zbus::blocking::connection::Builder::address(bus.as_str())
                .unwrap()
                .build()
                .unwrap();
            let _ = watch_signals(&conn, None, None, |c| Ok(sig_tx.send(c).is_ok()));
        });
    }
    let _daemon = daemon(dir, bus);

    // Twenty results: every MQTT message equals the signal with its sequence number.
    let mut signals: BTreeMap<u64, Classified> = BTreeMap::new();
    let mut matched = 0;
    let until = Instant::now() + WAIT;
    while matched < 20 {
        assert!(Instant::now() < until, "only {matched} results matched within {WAIT:?}");
        let (topic, payload) = next(rx, "result", dir);
        if !topic.ends_with("/result") {
            continue; // state and stats, published when the daemon's camera appears
        }
        assert_eq!(topic, "prom/testnode/front_door/result");
        let got: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let seq = got["sequence"].as_u64().unwrap();
        while !signals.contains_key(&seq) {
            let c = sig_rx.recv_timeout(WAIT).expect("the D-Bus signal of an MQTT result");
            signals.insert(c.sequence, c);
        }
        assert_eq!(got, as_json(&signals[&seq]), "sequence {seq}");
        assert!(!signals[&seq].top_k.is_empty());
        matched += 1;
    }

    // A clean exit says offline.
    prom_daemon::client::terminate(bridge_proc.0.id()).unwrap();
    let status = bridge_proc.0.wait().unwrap();
    assert!(status.success(), "prom-bridge exited with {status}");
    loop {
        let (topic, payload) = next(rx, "offline", dir);
        if topic == "prom/testnode/availability" {
            assert_eq!(payload, "offline");
            break;
        }
    }
}

/// The protocol level the broker logged for the bridge's connection ("p2": 3.1.1, "p5": 5).
fn bridge_protocol(dir: &Path, port: u16) -> String {
    let log = std::fs::read_to_string(dir.join(format!("mosquitto-{port}.log"))).unwrap();
    let line = log
        .lines()
        .rfind(|l| l.contains("as prom-bridge-testnode-"))
        .unwrap_or_else(|| panic!("no bridge connection in the broker's log:\n{log}"));
    let start = line.rfind(" (").expect("(pN, cN, kN)") + 2;
    line[start..].split(',').next().unwrap().to_owned()
}

#[test]
fn mqtt_5_results_pause_switch_and_last_will() {
    let rig = Rig::start("mqtt5", "#");
    let (dir, bus, port, rx) = (&rig.dir, rig.bus.as_str(), rig.port, &rig.rx);
    let mut bridge_proc =
        bridge_with(dir, bus, port, &["--mqtt-version", "5", "--stats-interval", "1"]);
    let _daemon = daemon(dir, bus);
    assert_eq!(text_on(rx, "prom/testnode/availability", dir), "online");
    assert_eq!(bridge_protocol(dir, port), "p5", "the bridge spoke MQTT 5");
    let result = wait_for(rx, "prom/testnode/front_door/result", dir, |_| true);
    assert!(!result["top_k"].as_array().unwrap().is_empty(), "{result}");
    // Commands arrive through a version 5 subscription too.
    publish(port, "prom/testnode/front_door/set", "OFF");
    while text_on(rx, "prom/testnode/front_door/state", dir) != "paused" {}
    publish(port, "prom/testnode/front_door/set", "ON");
    while text_on(rx, "prom/testnode/front_door/state", dir) != "running" {}
    // The will, registered in the version 5 CONNECT.
    bridge_proc.0.kill().unwrap();
    bridge_proc.0.wait().unwrap();
    assert_eq!(text_on(rx, "prom/testnode/availability", dir), "offline");
}

#[test]
fn a_killed_bridge_is_announced_offline_by_its_last_will() {
    let rig = Rig::start("will", "prom/testnode/availability");
    let (dir, bus, port, rx) = (&rig.dir, rig.bus.as_str(), rig.port, &rig.rx);
    let mut bridge_proc = bridge(dir, bus, port);
    assert_eq!(next(rx, "online", dir).1, "online");
    bridge_proc.0.kill().unwrap();
    bridge_proc.0.wait().unwrap();
    // The broker notices the dropped connection and publishes the will.
    assert_eq!(next(rx, "last will", dir).1, "offline");
}

/// The payload of the first message on `topic` that satisfies `ok` (others skipped).
fn first_on(
    rx: &mpsc::Receiver<String>,
    topic: &str,
    dir: &Path,
    ok: impl Fn(&str) -> bool,
) -> String {
    let until = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < until, "no matching message on {topic} within {WAIT:?}");
        let (t, payload) = next(rx, topic, dir);
        if t == topic && ok(&payload) {
            return payload;
        }
    }
}

/// The first JSON payload on `topic` that satisfies `ok`.
fn wait_for(
    rx: &mpsc::Receiver<String>,
    topic: &str,
    dir: &Path,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let json = |p: &str| serde_json::from_str::<serde_json::Value>(p).unwrap();
    json(&first_on(rx, topic, dir, |p| ok(&json(p))))
}

#[test]
fn the_bridge_survives_a_broker_restart_counts_drops_and_publishes_stats() {
    let dir = tmpdir("restart");
    let (bus_proc, bus) = start_private_bus(&dir).unwrap();
    let _bus = Proc(bus_proc);
    let port = free_port();
    let broker1 = broker(&dir, port);
    let (sub1, rx1) = subscribe(port, "prom/testnode/#");
    // A small queue, so an outage of a few seconds at 20 fps must drop results.
    let _bridge = bridge_with(&dir, &bus, port, &["--queue", "8", "--stats-interval", "1"]);
    let _daemon = daemon(&dir, &bus);
    let result = "prom/testnode/front_door/result";
    wait_for(&rx1, result, &dir, |_| true);
    // Stats while all is well: the daemon's figures and the measured latency.
    let cam = wait_for(&rx1, "prom/testnode/front_door/stats", &dir, |v| v["fps"].is_number());
    for key in ["frames_captured", "frames_classified", "frames_dropped", "published"] {
        assert!(cam[key].is_u64(), "{key} in {cam}");
    }
    assert_eq!(cam["state"], "running", "{cam}");
    let (p50, p99) =
        (cam["latency_ms_p50"].as_f64().unwrap(), cam["latency_ms_p99"].as_f64().unwrap());
    assert!(0.0 <= p50 && p50 <= p99 && p99 < 1000.0, "{cam}");

    // The broker goes away for 3 s while the camera keeps producing.
    drop(sub1);
    drop(broker1);
    std::thread::sleep(Duration::from_secs(3));
    let _broker2 = broker(&dir, port);
    let (_sub2, rx2) = subscribe(port, "prom/testnode/#");
    // Reconnected: results again, and the counters say what happened.
    wait_for(&rx2, result, &dir, |_| true);
    let stats = wait_for(&rx2, "prom/testnode/stats", &dir, |v| {
        v["broker_connections"].as_u64() >= Some(2)
    });
    assert!(stats["results_dropped"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["broker_connection_errors"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["results_published"].as_u64().unwrap() > 0, "{stats}");
}

#[test]
fn the_bridge_resubscribes_when_the_daemon_restarts() {
    let rig = Rig::start("daemon-restart", "prom/testnode/#");
    let (dir, bus, port, rx) = (&rig.dir, rig.bus.as_str(), rig.port, &rig.rx);
    let _bridge = bridge(dir, bus, port);
    let result = "prom/testnode/front_door/result";
    let mut first = daemon(dir, bus);
    wait_for(rx, result, dir, |_| true);
    prom_daemon::client::terminate(first.0.id()).unwrap();
    first.0.wait().unwrap();
    // The new daemon has a new unique name on the bus; its results must come through.
    let restarted_us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()
            as u64;
    let _second = daemon(dir, bus);
    wait_for(rx, result, dir, |v| v["capture_timestamp_us"].as_u64() > Some(restarted_us));
}

/// `curl` the page, then `promtool check metrics` on it.
fn scrape(addr: &str) -> String {
    let out = Command::new(program("curl"))
        .args(["-sS", "--fail", "--max-time", "10", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut check = Command::new(program("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    text
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series}\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_are_scraped_with_curl_and_pass_promtool() {
    let rig = Rig::start("metrics", "prom/testnode/+/result");
    let (dir, bus, port, rx) = (&rig.dir, rig.bus.as_str(), rig.port, &rig.rx);
    let addr = format!("127.0.0.1:{}", free_port());
    let _bridge = bridge_with(dir, bus, port, &["--metrics", &addr]);
    // Without the daemon: up is 0, and the page is still valid.
    let until = Instant::now() + WAIT;
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < until, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = scrape(&addr);
    assert_eq!(sample(&text, "prom_daemon_up{node=\"testnode\"}"), 0.0);

    let _daemon = daemon(dir, bus);
    for _ in 0..10 {
        next(rx, "result", dir);
    }
    // The daemon refreshes its statistics properties every 500 ms.
    std::thread::sleep(Duration::from_millis(1200));
    let text = scrape(&addr);
    let cam = "{node=\"testnode\",camera=\"front_door\"}";
    assert_eq!(sample(&text, "prom_daemon_up{node=\"testnode\"}"), 1.0);
    assert!(sample(&text, &format!("prom_camera_frames_captured_total{cam}")) >= 10.0, "{text}");
    assert!(sample(&text, &format!("prom_camera_frames_classified_total{cam}")) >= 10.0);
    sample(&text, &format!("prom_camera_frames_dropped_total{cam}"));
    assert!(sample(&text, &format!("prom_camera_fps{cam}")) > 0.0);
    assert!(sample(&text, &format!("prom_camera_capture_to_publish_seconds_count{cam}")) >= 10.0);
    assert!(sample(&text, "prom_bridge_mqtt_published_total{node=\"testnode\"}") >= 10.0);
    sample(&text, "prom_bridge_mqtt_dropped_total{node=\"testnode\"}");
    // The binary's counting allocator: some heap, far below the 15 MB RSS target.
    let heap = sample(&text, "prom_bridge_heap_bytes{node=\"testnode\"}");
    assert!(heap > 1000.0 && heap < 15e6, "heap {heap}");
    let info = text.lines().find(|l| l.starts_with("prom_model_info{")).expect("model info");
    assert!(info.contains("checksum=\"") && info.ends_with(" 1"), "{info}");
}

fn publish(port: u16, topic: &str, payload: &str) {
    let st = Command::new(program("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-m", payload])
        .status()
        .unwrap();
    assert!(st.success(), "mosquitto_pub {topic} {payload}");
}

/// The next message on `topic` (others skipped).
fn text_on(rx: &mpsc::Receiver<String>, topic: &str, dir: &Path) -> String {
    first_on(rx, topic, dir, |_| true)
}

/// The test daemon's camera, as any D-Bus client sees it (properties read afresh).
fn front_door(conn: &zbus::blocking::Connection) -> prom_daemon::dbus::Camera1ProxyBlocking<'_> {
    prom_daemon::dbus::Camera1ProxyBlocking::builder(conn)
        .path(prom_daemon::dbus::camera_path("front_door"))
        .unwrap()
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .unwrap()
}

#[test]
fn home_assistant_discovery_and_the_pause_switch() {
    let rig = Rig::start("ha", "#");
    let (dir, bus, port, rx) = (&rig.dir, rig.bus.as_str(), rig.port, &rig.rx);
    let _bridge = bridge_with(dir, bus, port, &["--stats-interval", "1"]);
    let _daemon = daemon(dir, bus);

    // Every entity of the camera, with what Home Assistant requires of its component.
    let mut configs = BTreeMap::new();
    let until = Instant::now() + WAIT;
    while configs.len() < 4 {
        assert!(Instant::now() < until, "discovery incomplete: {:?}", configs.keys());
        let (topic, payload) = next(rx, "discovery", dir);
        if topic.starts_with("homeassistant/") {
            let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
            configs.insert(topic, v);
        }
    }
    let base = "homeassistant/{}/prom_testnode/front_door_{}/config";
    let topic =
        |component: &str, object: &str| base.replacen("{}", component, 1).replacen("{}", object, 1);
    let mut ids = std::collections::BTreeSet::new();
    for (component, object) in
        [("sensor", "label"), ("sensor", "fps"), ("sensor", "latency"), ("switch", "classifying")]
    {
        let c = &configs[&topic(component, object)];
        assert!(c["name"].is_string(), "{c}");
        assert!(ids.insert(c["unique_id"].as_str().unwrap().to_owned()), "unique_id {c}");
        assert!(!c["device"]["identifiers"].as_array().unwrap().is_empty(), "{c}");
        assert_eq!(c["availability_topic"], "prom/testnode/availability");
        assert!(c["state_topic"].is_string(), "{c}");
        if component == "switch" {
            assert_eq!(c["command_topic"], "prom/testnode/front_door/set");
            assert_eq!(c["state_topic"], "prom/testnode/front_door/state");
            assert_eq!((&c["payload_on"], &c["payload_off"]), (&"ON".into(), &"OFF".into()));
        }
    }
    let label = &configs[&topic("sensor", "label")];
    assert_eq!(label["state_topic"], "prom/testnode/front_door/result");
    assert_eq!(label["json_attributes_topic"], "prom/testnode/front_door/result");
    assert_eq!(configs[&topic("sensor", "fps")]["state_topic"], "prom/testnode/front_door/stats");

    // The switch: OFF pauses the camera over D-Bus, ON resumes it.
    let conn = zbus::blocking::connection::Builder::address(bus).unwrap().build().unwrap();
    let camera = front_door(&conn);
    let state = "prom/testnode/front_door/state";
    publish(port, "prom/testnode/front_door/set", "OFF");
    while text_on(rx, state, dir) != "paused" {}
    assert_eq!(camera.state().unwrap(), "paused");
    publish(port, "prom/testnode/front_door/set", "ON");
    while text_on(rx, state, dir) != "running" {}
    assert_eq!(camera.state().unwrap(), "running");
}

#[test]
fn a_broker_with_passwords_takes_the_right_one_only() {
    let dir = tmpdir("auth");
    let (bus_proc, bus) = start_private_bus(&dir).unwrap();
    let _bus = Proc(bus_proc);
    let port = free_port();
    let passwords = dir.join("passwords");
    let st = Command::new(program("mosquitto_passwd"))
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["bridge", "s3cret word"])
        .status()
        .unwrap();
    assert!(st.success());
    let conf = dir.join("auth.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
    )
    .unwrap();
    let _broker = mosquitto(&conf, &[port]);
    let topic = "prom/testnode/availability";
    let (_s, rx) = subscribe_with(port, topic, &["-u", "bridge", "-P", "s3cret word"]);
    let good = dir.join("good");
    std::fs::write(&good, "s3cret word\n").unwrap();
    let bad = dir.join("bad");
    std::fs::write(&bad, "guess\n").unwrap();

    let with_password = |file: &Path| {
        let args = ["--username", "bridge", "--password-file", file.to_str().unwrap()];
        bridge_with(&dir, &bus, port, &args)
    };
    // The wrong password: refused, so nothing is announced.
    let wrong = with_password(&bad);
    assert!(rx.recv_timeout(Duration::from_secs(2)).is_err(), "a refused bridge announced itself");
    drop(wrong);
    // The right one: online.
    let _right = with_password(&good);
    let line = rx.recv_timeout(WAIT).expect("online with the right password");
    assert_eq!(line, "prom/testnode/availability online");
}

#[test]
fn the_bridge_reconnects_when_the_bus_restarts() {
    let dir = tmpdir("bus-restart");
    let (mut bus_proc, printed) = start_private_bus(&dir).unwrap();
    // The address without the bus's GUID: a restarted bus has a new one.
    let bus = printed.split(",guid=").next().unwrap().to_owned();
    let port = free_port();
    let _broker = broker(&dir, port);
    let (_sub, rx) = subscribe(port, "prom/testnode/#");
    let _bridge = bridge(&dir, &bus, port);
    let result = "prom/testnode/front_door/result";
    let first = daemon(&dir, &bus);
    wait_for(&rx, result, &dir, |_| true);
    // The bus goes away (the daemon exits on a lost bus and is restarted, as systemd would).
    bus_proc.kill().unwrap();
    bus_proc.wait().unwrap();
    drop(first);
    let _ = std::fs::remove_file(dir.join("bus"));
    let _bus = Proc(start_private_bus(&dir).unwrap().0);
    let restarted_us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()
            as u64;
    let _second = daemon(&dir, &bus);
    wait_for(&rx, result, &dir, |v| v["capture_timestamp_us"].as_u64() > Some(restarted_us));
}

#[test]
fn cameras_that_come_and_go_are_announced_and_withdrawn() {
    let rig = Rig::start("come-and-go", "homeassistant/#");
    let (dir, bus, port, rx) = (&rig.dir, rig.bus.as_str(), rig.port, &rig.rx);
    // Stats only every hour: what follows is driven by the daemon's signals alone.
    let _bridge = bridge_with(dir, bus, port, &["--stats-interval", "3600"]);
    let label = |camera: &str| format!("homeassistant/sensor/prom_testnode/{camera}_label/config");
    let mut first = daemon_with_camera(dir, bus, "front_door");
    assert!(!text_on(rx, &label("front_door"), dir).is_empty());
    // The daemon comes back with another camera: one announced, the other withdrawn.
    prom_daemon::client::terminate(first.0.id()).unwrap();
    first.0.wait().unwrap();
    let _second = daemon_with_camera(dir, bus, "garden");
    let mut garden = false;
    let mut withdrawn = false;
    let until = Instant::now() + WAIT;
    while !(garden && withdrawn) {
        assert!(
            Instant::now() < until,
            "garden announced {garden}, front_door withdrawn {withdrawn}"
        );
        let (topic, payload) = next(rx, "discovery", dir);
        garden |= topic == label("garden") && !payload.is_empty();
        withdrawn |= topic == label("front_door") && payload.is_empty();
    }
}

#[test]
fn the_state_topic_follows_pauses_by_other_clients_at_once() {
    let rig = Rig::start("events", "prom/testnode/#");
    let (dir, bus, port, rx) = (&rig.dir, rig.bus.as_str(), rig.port, &rig.rx);
    // Stats only every hour: the state can only come from the daemon's PropertiesChanged.
    let _bridge = bridge_with(dir, bus, port, &["--stats-interval", "3600"]);
    let _daemon = daemon(dir, bus);
    let state = "prom/testnode/front_door/state";
    // "starting", then "running", as the daemon reports them.
    while text_on(rx, state, dir) != "running" {}
    // Paused and resumed by another client on the bus, as promctl does.
    let conn = zbus::blocking::connection::Builder::address(bus).unwrap().build().unwrap();
    let camera = front_door(&conn);
    // A state read before the call may still be on its way (a camera re-read that a
    // daemon event started): the previous state may repeat, nothing else may come first.
    let becomes = |before: &str, after: &str| {
        let seen = first_on(rx, state, dir, |s| s != before);
        assert_eq!(seen, after, "after {before:?}");
    };
    camera.pause().unwrap();
    becomes("running", "paused");
    camera.resume().unwrap();
    becomes("paused", "running");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(program("openssl")).current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tls_to_a_broker_whose_certificate_chains_to_the_given_ca_only() {
    let dir = tmpdir("tls");
    let (bus_proc, bus) = start_private_bus(&dir).unwrap();
    let _bus = Proc(bus_proc);
    // A CA and a server certificate for 127.0.0.1; a second CA that signed nothing.
    for ca in ["ca", "other"] {
        let (key, pem, subj) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN={ca}"));
        let args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"];
        openssl(&dir, &[&args[..], &["-keyout", &key, "-out", &pem, "-subj", &subj]].concat());
    }
    openssl(
        &dir,
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key"]
            .into_iter()
            .chain(["-out", "server.csr", "-subj", "/CN=127.0.0.1"])
            .collect::<Vec<_>>(),
    );
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &dir,
        &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"]
            .into_iter()
            .chain(["-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf"])
            .collect::<Vec<_>>(),
    );
    // mosquitto drops root for its own user before it reads the key (a test key).
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The broker: TLS for the bridge, plain for the test's subscriber.
    let (plain, tls) = (free_port(), free_port());
    let conf = dir.join("tls.conf");
    let file = |name: &str| dir.join(name).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "allow_anonymous true\nlistener {plain} 127.0.0.1\nlistener {tls} 127.0.0.1\n\
             cafile {}\ncertfile {}\nkeyfile {}\n",
            file("ca.pem"),
            file("server.pem"),
            file("server.key")
        ),
    )
    .unwrap();
    let _broker = mosquitto(&conf, &[plain, tls]);
    let (_sub, rx) = subscribe(plain, "prom/testnode/availability");
    let url = format!("mqtts://127.0.0.1:{tls}");
    let with_ca = |ca: &str| {
        let child = Command::new(target_bin("prom-bridge"))
            .args(["--bus-address", &bus, "--mqtt", &url, "--node", "testnode"])
            .args(["--ca-file", &file(ca)])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("bridge.log")).unwrap())
            .spawn()
            .unwrap();
        Proc(child)
    };
    // A CA that did not sign the broker's certificate: no connection.
    let wrong = with_ca("other.pem");
    assert!(rx.recv_timeout(Duration::from_secs(2)).is_err(), "connected to an untrusted broker");
    drop(wrong);
    let _right = with_ca("ca.pem");
    assert_eq!(next(&rx, "online over TLS", &dir).1, "online");
}
