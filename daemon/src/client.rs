//! promctl's client side of the daemon: `status`, `watch`, `reload`, `pause`, `resume` and
//! `demo`, using the proxy types of [`crate::dbus`].

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use zbus::zvariant::OwnedValue;

use crate::dbus::{
    camera_path, Camera1ProxyBlocking, Classifier1ProxyBlocking, Prediction, BUS_NAME,
    CAMERA_INTERFACE, CAMERA_PATH_PREFIX,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Which bus the client talks to.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct BusArgs {
    /// Use the session bus instead of the system bus.
    #[arg(long, conflicts_with = "bus_address")]
    pub session: bool,
    /// Use the bus at this D-Bus address (such as unix:path=/tmp/bus).
    #[arg(long, value_name = "ADDRESS")]
    pub bus_address: Option<String>,
}

impl BusArgs {
    /// Connects to the chosen bus.
    pub fn connect(&self) -> Result<zbus::blocking::Connection> {
        let conn = match (&self.bus_address, self.session) {
            (Some(a), _) => zbus::blocking::connection::Builder::address(a.as_str())?.build(),
            (None, true) => zbus::blocking::Connection::session(),
            (None, false) => zbus::blocking::Connection::system(),
        };
        conn.map_err(|e| format!("cannot connect to the {} bus: {e}", self.describe()).into())
    }

    fn describe(&self) -> String {
        match (&self.bus_address, self.session) {
            (Some(a), _) => a.clone(),
            (None, true) => "session".into(),
            (None, false) => "system".into(),
        }
    }
}

/// Explains the common failure of every client command: no daemon on the bus.
fn no_daemon(e: zbus::Error) -> Box<dyn std::error::Error> {
    match &e {
        zbus::Error::MethodError(name, _, _)
            if name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown" =>
        {
            format!("prom-daemon is not running on this bus ({BUS_NAME} has no owner)").into()
        }
        _ => Box::new(e),
    }
}

/// A camera's name from its object path.
pub fn camera_name(path: &str) -> &str {
    path.strip_prefix(CAMERA_PATH_PREFIX).unwrap_or(path)
}

#[derive(Serialize)]
struct CameraStatus {
    name: String,
    state: String,
    fps: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    frames_captured: u64,
    frames_dropped: u64,
    frames_classified: u64,
}

#[derive(Serialize)]
struct Status {
    state: String,
    tier: String,
    threads: u32,
    model: serde_json::Map<String, serde_json::Value>,
    cameras: Vec<CameraStatus>,
}

fn value_to_json(v: &OwnedValue) -> serde_json::Value {
    if let Ok(s) = <&str>::try_from(v) {
        return s.into();
    }
    if let Ok(n) = u32::try_from(v) {
        return n.into();
    }
    if let Ok(n) = u64::try_from(v) {
        return n.into();
    }
    serde_json::Value::String(format!("{v:?}"))
}

fn query_status(conn: &zbus::blocking::Connection) -> Result<Status> {
    let root = Classifier1ProxyBlocking::new(conn)?;
    let state = root.state().map_err(no_daemon)?;
    let model: HashMap<String, OwnedValue> = root.model()?;
    let mut model: Vec<(String, serde_json::Value)> =
        model.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect();
    model.sort_by(|a, b| a.0.cmp(&b.0));
    let om = zbus::blocking::fdo::ObjectManagerProxy::builder(conn)
        .destination(BUS_NAME)?
        .path(crate::dbus::ROOT_PATH)?
        .build()?;
    let mut cameras = Vec::new();
    let mut objects: Vec<_> = om.get_managed_objects()?.into_iter().collect();
    objects.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (path, ifaces) in objects {
        if !ifaces.keys().any(|i| i.as_str() == CAMERA_INTERFACE) {
            continue;
        }
        let cam = Camera1ProxyBlocking::builder(conn).path(path.clone())?.build()?;
        let (p50, p99) = cam.latency_ms()?;
        cameras.push(CameraStatus {
            name: camera_name(path.as_str()).to_owned(),
            state: cam.state()?,
            fps: cam.fps()?,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            frames_captured: cam.frames_captured()?,
            frames_dropped: cam.frames_dropped()?,
            frames_classified: cam.frames_classified()?,
        });
    }
    Ok(Status {
        state,
        tier: root.tier()?,
        threads: root.threads()?,
        model: model.into_iter().collect(),
        cameras,
    })
}

/// `promctl status`.
pub fn status(bus: &BusArgs, json: bool) -> Result<()> {
    let conn = bus.connect()?;
    let s = query_status(&conn)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &s)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "state:   {}", s.state)?;
    writeln!(
        out,
        "tier:    {} ({} thread{})",
        s.tier,
        s.threads,
        if s.threads == 1 { "" } else { "s" }
    )?;
    let field = |k: &str| {
        s.model.get(k).map_or(String::new(), |v| v.to_string().trim_matches('"').to_owned())
    };
    writeln!(out, "model:   {}", field("name"))?;
    if !field("path").is_empty() {
        writeln!(out, "         {}", field("path"))?;
    }
    writeln!(
        out,
        "         {} classes, input {}x{}, {}",
        field("classes"),
        field("input_width"),
        field("input_height"),
        field("checksum")
    )?;
    for c in &s.cameras {
        writeln!(
            out,
            "camera {}: {}, {:.1} fps, latency p50 {:.1} ms p99 {:.1} ms, frames {} captured / {} classified / {} dropped",
            c.name, c.state, c.fps, c.latency_p50_ms, c.latency_p99_ms, c.frames_captured, c.frames_classified, c.frames_dropped
        )?;
    }
    Ok(())
}

/// `promctl reload [PATH]`.
pub fn reload(bus: &BusArgs, path: Option<&Path>) -> Result<()> {
    let conn = bus.connect()?;
    let root = Classifier1ProxyBlocking::new(&conn)?;
    let path = match path {
        Some(p) => std::path::absolute(p)?.display().to_string(),
        None => String::new(),
    };
    root.reload_model(&path).map_err(no_daemon)?;
    let model = root.model()?;
    let name = model.get("name").and_then(|v| <&str>::try_from(v).ok()).unwrap_or("?");
    println!("reloaded: now serving {name}");
    Ok(())
}

/// `promctl pause CAMERA` / `promctl resume CAMERA`.
pub fn pause_resume(bus: &BusArgs, camera: &str, pause: bool) -> Result<()> {
    let conn = bus.connect()?;
    let cam = Camera1ProxyBlocking::builder(&conn).path(camera_path(camera))?.build()?;
    let r = if pause { cam.pause() } else { cam.resume() };
    r.map_err(|e| match &e {
        zbus::Error::MethodError(name, _, _)
            if name.as_str() == "org.freedesktop.DBus.Error.UnknownObject"
                || name.as_str() == "org.freedesktop.DBus.Error.UnknownMethod" =>
        {
            format!("no camera named {camera:?}").into()
        }
        _ => no_daemon(e),
    })?;
    println!("camera {camera}: {}", cam.state()?);
    Ok(())
}

/// One `Classified` signal.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Classified {
    /// Camera name.
    pub camera: String,
    /// Frame sequence number.
    pub sequence: u64,
    /// Capture time, microseconds since the Unix epoch.
    pub capture_timestamp_us: u64,
    /// (class id, label, score), best first.
    pub top_k: Vec<Prediction>,
}

/// Subscribes to `Classified` on every camera (or only `camera`) and calls `each` per
/// signal until it returns `false` or `timeout` passes without a signal.
///
/// Only signals sent by the current owner of io.prom.Classifier1 count: anyone on the bus
/// can emit a `Classified` signal on a camera path. The owner is looked up at the start and
/// followed through NameOwnerChanged (a restarted daemon has a new unique name).
pub fn watch_signals(
    conn: &zbus::blocking::Connection,
    camera: Option<&str>,
    timeout: Option<Duration>,
    mut each: impl FnMut(Classified) -> Result<bool>,
) -> Result<()> {
    let dbus = zbus::blocking::fdo::DBusProxy::new(conn)?;
    // Subscribed before the owner is read, so no change between the two is missed.
    let owner_changes = dbus.receive_name_owner_changed_with_args(&[(0, BUS_NAME)])?;
    let owner = std::sync::Arc::new(std::sync::Mutex::new(current_owner(&dbus)));
    let mut rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(CAMERA_INTERFACE)?
        .member("Classified")?;
    if let Some(c) = camera {
        rule = rule.path(camera_path(c))?;
    } else {
        rule = rule.path_namespace(crate::dbus::ROOT_PATH)?;
    }
    let iter = zbus::blocking::MessageIterator::for_match_rule(rule.build(), conn, Some(64))?;
    {
        let owner = owner.clone();
        std::thread::Builder::new().name("watch-owner".into()).spawn(move || {
            for change in owner_changes {
                let Ok(args) = change.args() else { continue };
                let new = args.new_owner().as_ref().map(|n| n.to_string());
                *owner.lock().unwrap_or_else(|e| e.into_inner()) = new;
            }
        })?;
    }
    let (tx, rx) = crossbeam_channel::bounded(64);
    std::thread::Builder::new().name("watch".into()).spawn(move || {
        for m in iter {
            if tx.send(m).is_err() {
                return;
            }
        }
    })?;
    let deadline = |t: Duration| Instant::now() + t;
    let mut until = timeout.map(deadline);
    loop {
        let msg = match until {
            Some(u) => rx
                .recv_deadline(u)
                .map_err(|_| format!("no result within {:?}", timeout.unwrap_or_default()))?,
            None => rx.recv().map_err(|_| "the bus connection ended")?,
        }?;
        let header = msg.header();
        let sender = header.sender().map(|s| s.to_string());
        let from_owner = {
            let mut owner = owner.lock().unwrap_or_else(|e| e.into_inner());
            if owner.is_none() {
                // The daemon may have come up after the lookup and before its
                // NameOwnerChanged reached us: ask again.
                *owner = current_owner(&dbus);
            }
            owner.is_some() && *owner == sender
        };
        if !from_owner {
            tracing::debug!("ignoring a Classified signal from {sender:?}, not the daemon");
            continue;
        }
        let path = header.path().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let (sequence, capture_timestamp_us, top_k): (u64, u64, Vec<Prediction>) =
            msg.body().deserialize()?;
        let c = Classified {
            camera: camera_name(&path).to_owned(),
            sequence,
            capture_timestamp_us,
            top_k,
        };
        if !each(c)? {
            return Ok(());
        }
        until = timeout.map(deadline);
    }
}

/// The unique name owning io.prom.Classifier1, if any.
fn current_owner(dbus: &zbus::blocking::fdo::DBusProxy<'_>) -> Option<String> {
    let name = zbus::names::BusName::try_from(BUS_NAME).ok()?;
    dbus.get_name_owner(name).ok().map(|o| o.to_string())
}

fn print_result(out: &mut impl Write, c: &Classified, json: bool, show: usize) -> Result<()> {
    if json {
        #[derive(Serialize)]
        struct Entry<'a> {
            class: u32,
            label: &'a str,
            score: f64,
        }
        #[derive(Serialize)]
        struct Line<'a> {
            camera: &'a str,
            sequence: u64,
            capture_timestamp_us: u64,
            top_k: Vec<Entry<'a>>,
        }
        let line = Line {
            camera: &c.camera,
            sequence: c.sequence,
            capture_timestamp_us: c.capture_timestamp_us,
            top_k: c
                .top_k
                .iter()
                .map(|(class, label, score)| Entry { class: *class, label, score: *score })
                .collect(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        writeln!(out)?;
    } else {
        let age_ms = crate::pipeline::unix_us(std::time::SystemTime::now())
            .saturating_sub(c.capture_timestamp_us) as f64
            / 1e3;
        write!(out, "{} #{:<5} ({:5.1} ms ago):", c.camera, c.sequence, age_ms)?;
        if c.top_k.is_empty() {
            write!(out, " (nothing above the threshold)")?;
        }
        for (class, label, score) in c.top_k.iter().take(show) {
            write!(out, "  {:5.1}% {label} [{class}]", score * 100.0)?;
        }
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

/// `promctl watch`.
pub fn watch(bus: &BusArgs, camera: Option<&str>, count: Option<u64>, json: bool) -> Result<()> {
    let conn = bus.connect()?;
    // Fail early, with a clear message, when no daemon is there.
    Classifier1ProxyBlocking::new(&conn)?.state().map_err(no_daemon)?;
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    watch_signals(&conn, camera, None, |c| {
        print_result(&mut out, &c, json, 5)?;
        seen += 1;
        Ok(count.is_none_or(|n| seen < n))
    })
}

// ---------------------------------------------------------------------------------------
// promctl demo

/// Kills (SIGKILL) and reaps a child process when dropped, unless it already ended.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Removes a directory tree when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Finds `name` next to the running executable (a cargo build or an installed package),
/// then on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(name)));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Some(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
}

/// Sends SIGTERM to `pid` with kill(1) (this crate has no unsafe code for kill(2)).
pub fn terminate(pid: u32) -> Result<()> {
    let st = Command::new("kill").arg("-TERM").arg(pid.to_string()).status()?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("kill -TERM {pid} failed").into())
    }
}

/// Starts a private `dbus-daemon` listening in `dir`; returns it and its address.
pub fn start_private_bus(dir: &Path) -> Result<(Child, String)> {
    let dbus = find_program("dbus-daemon").ok_or(
        "dbus-daemon not found (Debian: apt install dbus-daemon; ./scripts/install-prereqs.sh)",
    )?;
    let mut child = Command::new(dbus)
        .arg("--session")
        .arg("--nofork")
        .arg("--nopidfile")
        .arg(format!("--address=unix:path={}", dir.join("bus").display()))
        .arg("--print-address=1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // It complains about fd limits when not root-privileged enough; nothing to act on.
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start dbus-daemon: {e}"))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("dbus-daemon has no stdout")?;
    BufReader::new(stdout).read_line(&mut line)?;
    let address = line.trim().to_owned();
    if address.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        return Err("dbus-daemon did not print its address".into());
    }
    Ok((child, address))
}

/// Waits until `BUS_NAME` has an owner, or the daemon process ends.
fn wait_for_service(
    conn: &zbus::blocking::Connection,
    daemon: &mut Child,
    within: Duration,
) -> Result<()> {
    let dbus = zbus::blocking::fdo::DBusProxy::new(conn)?;
    let until = Instant::now() + within;
    let name = zbus::names::BusName::try_from(BUS_NAME)?;
    loop {
        if dbus.name_has_owner(name.clone())? {
            return Ok(());
        }
        if let Some(st) = daemon.try_wait()? {
            return Err(format!("prom-daemon exited before it was ready ({st})").into());
        }
        if Instant::now() > until {
            return Err(format!("prom-daemon did not appear on the bus within {within:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Options of `promctl demo`.
pub struct DemoOptions<'a> {
    /// Results of the file camera to show.
    pub frames: u64,
    /// JSON lines instead of text.
    pub json: bool,
    /// A model file to serve instead of the embedded one.
    pub model: Option<&'a Path>,
    /// A folder of images instead of the bundled ones (names ending `_<class id>` give the
    /// true class).
    pub images: Option<&'a Path>,
}

/// The true class in an image's file name: `<anything>_<class id>.<ext>`.
pub fn class_from_file_name(path: &Path) -> Option<u32> {
    let stem = path.file_stem()?.to_str()?;
    stem.rsplit_once('_')?.1.parse().ok()
}

/// One `ClassifyImage` answer in the demo's JSON output.
#[derive(Serialize)]
struct DemoImage<'a> {
    image: String,
    true_class: Option<u32>,
    true_label: Option<&'a str>,
    top_k: &'a [Prediction],
    correct: Option<bool>,
}

/// `promctl demo`: a private bus, the daemon with the embedded trained model (or `--model`)
/// and a `file:` camera playing the bundled test images (or `--images`); every image is
/// also sent through `ClassifyImage`, printing predicted against true labels and the
/// accuracy, then a few of the camera's `Classified` signals.
pub fn demo(o: &DemoOptions<'_>) -> Result<()> {
    let (frames, json) = (o.frames, o.json);
    let daemon_exe = find_program("prom-daemon").ok_or(
        "prom-daemon not found next to promctl or on PATH (build it: cargo build --release -p prom-daemon)",
    )?;
    let dir = std::env::temp_dir().join(format!("promctl-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dir = TempDir(dir);
    let images_dir = match o.images {
        Some(d) => d.to_path_buf(),
        None => {
            let d = dir.0.join("images");
            std::fs::create_dir_all(&d)?;
            for (name, bytes) in crate::demo_images::FASHION_MNIST {
                std::fs::write(d.join(name), bytes)?;
            }
            d
        }
    };
    let mut images: Vec<PathBuf> = std::fs::read_dir(&images_dir)
        .map_err(|e| format!("{}: {e}", images_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                ["png", "jpg", "jpeg", "ppm", "pgm"].contains(&e.to_ascii_lowercase().as_str())
            })
        })
        .collect();
    images.sort();
    if images.is_empty() {
        return Err(format!("{}: no images (PNG, JPEG, PPM)", images_dir.display()).into());
    }
    let (bus, address) = start_private_bus(&dir.0)?;
    let _bus = Reaped(Some(bus));
    let config = dir.0.join("demo.toml");
    let source = format!("file:{}", images_dir.display());
    std::fs::write(
        &config,
        format!(
            "# promctl demo: one camera playing the demo images at 10 fps.\n\
             log = \"warn\"\n\n[[camera]]\nname = \"demo\"\nsource = {}\nfps = 10\n",
            toml_string(&source)
        ),
    )?;
    let log_path = dir.0.join("prom-daemon.log");
    let log = std::fs::File::create(&log_path)?;
    let mut err = std::io::stderr().lock();
    let mut out = std::io::stdout().lock();
    writeln!(err, "promctl demo: private D-Bus at {address}")?;
    let mut cmd = Command::new(&daemon_exe);
    cmd.arg("--config").arg(&config);
    match o.model {
        Some(m) => cmd.arg("--model").arg(m),
        None => cmd.arg("--embedded-model"),
    };
    let child = cmd
        .arg("--bus-address")
        .arg(&address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", daemon_exe.display()))?;
    let pid = child.id();
    let mut daemon = Reaped(Some(child));
    let conn = zbus::blocking::connection::Builder::address(address.as_str())?.build()?;
    let ready = daemon
        .0
        .as_mut()
        .ok_or("no daemon")
        .map_err(Into::into)
        .and_then(|d| wait_for_service(&conn, d, Duration::from_secs(20)));
    if let Err(e) = ready {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(format!("{e}\n--- prom-daemon log ---\n{text}").into());
    }
    let status = query_status(&conn)?;
    let name = status.model.get("name").and_then(|v| v.as_str()).unwrap_or("?");
    writeln!(err, "promctl demo: {} (pid {pid}) serving model: {name}", daemon_exe.display())?;
    writeln!(
        err,
        "promctl demo: kernel tier {}, {} thread(s); {} images from {}",
        status.tier,
        status.threads,
        images.len(),
        if o.images.is_some() {
            images_dir.display().to_string()
        } else {
            "the bundled Fashion-MNIST test set".into()
        }
    )?;
    writeln!(err, "promctl demo: ClassifyImage over D-Bus, predicted vs true label:")?;
    let proxy = Classifier1ProxyBlocking::new(&conn)?;
    let labels: Vec<String> = match o.model {
        Some(m) => prom_engine::Model::open(m)?.labels().to_vec(),
        None => prom_engine::Model::from_bytes(crate::pipeline::EMBEDDED_MODEL)?.labels().to_vec(),
    };
    let (mut labelled, mut right) = (0usize, 0usize);
    for path in &images {
        let bytes = std::fs::read(path)?;
        let top_k = proxy.classify_image(&bytes)?;
        let truth = class_from_file_name(path);
        let true_label = truth.map(|t| labels.get(t as usize).map_or("?", |l| l.as_str()));
        let correct = truth.map(|t| top_k.first().is_some_and(|p| p.0 == t));
        labelled += usize::from(truth.is_some());
        right += usize::from(correct == Some(true));
        let file = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        if json {
            let line =
                DemoImage { image: file, true_class: truth, true_label, top_k: &top_k, correct };
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
        } else {
            let (class, label, score) = top_k.first().cloned().unwrap_or((0, "?".into(), 0.0));
            let mark = match correct {
                Some(true) => "ok",
                Some(false) => "WRONG",
                None => "",
            };
            let truth_text = match truth {
                Some(t) => format!("true {t:>4} {:<14}", true_label.unwrap_or("?")),
                None => String::new(),
            };
            writeln!(
                out,
                "{file:<28} predicted {class:>4} {label:<14} {:5.1}%  {truth_text} {mark}",
                score * 100.0
            )?;
        }
    }
    if labelled > 0 {
        writeln!(
            err,
            "promctl demo: accuracy {right}/{labelled} = {:.1}% on these images",
            100.0 * right as f64 / labelled as f64
        )?;
    }
    writeln!(err, "promctl demo: the camera `demo` plays the same images; {frames} of its Classified signals:")?;
    let mut seen = 0u64;
    watch_signals(&conn, None, Some(Duration::from_secs(10)), |c| {
        print_result(&mut out, &c, json, 3)?;
        seen += 1;
        Ok(seen < frames)
    })?;
    let status = query_status(&conn)?;
    for c in &status.cameras {
        writeln!(
            err,
            "promctl demo: camera {}: {:.1} fps, capture-to-publish latency p50 {:.1} ms p99 {:.1} ms; \
             {} frames captured, {} classified, {} dropped",
            c.name, c.fps, c.latency_p50_ms, c.latency_p99_ms, c.frames_captured, c.frames_classified, c.frames_dropped
        )?;
    }
    terminate(pid)?;
    let started = Instant::now();
    let mut child = daemon.0.take().ok_or("no daemon")?;
    let code = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("prom-daemon did not exit within 5 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    writeln!(
        err,
        "promctl demo: prom-daemon stopped on SIGTERM in {} ms ({code})",
        started.elapsed().as_millis()
    )?;
    if !code.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(format!("prom-daemon failed: {code}\n--- prom-daemon log ---\n{text}").into());
    }
    Ok(())
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
