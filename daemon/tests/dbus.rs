//! The D-Bus layer against a real private dbus-daemon and a zbus client.

use std::time::{Duration, Instant};

use prom_daemon::dbus::{
    camera_path, BusChoice, CameraControl, CameraStats, ModelInfo, Service, ServiceError,
    ServiceOptions, BUS_NAME, ROOT_PATH,
};
use zbus::blocking::Connection;
use zbus::zvariant::OwnedValue;

mod common;
use common::{camera_proxy, method_error, root_proxy, PrivateBus};

// Generous: on a loaded 2-core machine a signal once took longer than 5 s to arrive.
const WAIT: Duration = Duration::from_secs(20);

/// Collects PropertiesChanged of `path` on a thread: (interface, changed names).
fn watch_properties(
    conn: &Connection,
    path: &str,
) -> crossbeam_channel::Receiver<(String, Vec<(String, OwnedValue)>)> {
    let proxy = zbus::blocking::fdo::PropertiesProxy::builder(conn)
        .destination(BUS_NAME)
        .unwrap()
        .path(path.to_owned())
        .unwrap()
        .build()
        .unwrap();
    let signals = proxy.receive_properties_changed().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for s in signals {
            let a = s.args().unwrap();
            let mut changed: Vec<(String, OwnedValue)> = a
                .changed_properties()
                .iter()
                .map(|(k, v)| (k.to_string(), v.try_to_owned().unwrap()))
                .collect();
            changed.sort_by(|x, y| x.0.cmp(&y.0));
            if tx.send((a.interface_name().to_string(), changed)).is_err() {
                return;
            }
        }
    });
    rx
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn classified_signals_arrive_with_their_contents() {
    let bus = PrivateBus::start();
    let svc = bus.service(ServiceOptions::default());
    let cam = svc.add_camera("front-door").unwrap();
    assert_eq!(cam.path(), "/io/prom/Classifier1/camera/front_door");
    let client = bus.client();
    let proxy = camera_proxy(&client, "front-door");
    let signals = proxy.receive_classified().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for s in signals {
            let a = s.args().unwrap();
            let v = (a.sequence, a.capture_timestamp_us, a.top_k.clone());
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    for seq in 0..3u64 {
        let top = vec![
            (seq as u32, format!("label{seq}"), 0.5 + seq as f64 / 10.0),
            (9, "x".into(), 0.01),
        ];
        assert!(cam.publish(seq, 1_700_000_000_000_000 + seq, &top));
    }
    for seq in 0..3u64 {
        let (s, ts, top) = rx.recv_timeout(WAIT).expect("Classified signal");
        assert_eq!(s, seq);
        assert_eq!(ts, 1_700_000_000_000_000 + seq);
        assert_eq!(
            top,
            vec![
                (seq as u32, format!("label{seq}"), 0.5 + seq as f64 / 10.0),
                (9, "x".into(), 0.01)
            ]
        );
    }
    assert_eq!(cam.signals_sent(), 3);
    assert_eq!(cam.signals_dropped(), 0);
}

#[test]
fn publish_never_blocks_and_counts_drops() {
    let bus = PrivateBus::start();
    let svc = bus.service(ServiceOptions { signal_queue: 2, ..Default::default() });
    let cam = svc.add_camera("cam0").unwrap();
    let top = vec![(1, "a".to_string(), 0.5)];
    let t0 = Instant::now();
    for seq in 0..20_000 {
        cam.publish(seq, seq, &top);
    }
    assert!(t0.elapsed() < Duration::from_secs(1), "publish blocked: {:?}", t0.elapsed());
    drop(svc); // flushes the queue
    assert_eq!(cam.signals_sent() + cam.signals_dropped(), 20_000);
    assert!(cam.signals_dropped() > 0);
}

#[test]
fn root_properties_read_and_change() {
    let bus = PrivateBus::start();
    let svc =
        bus.service(ServiceOptions { tier: "scalar".into(), threads: 4, ..Default::default() });
    let client = bus.client();
    let root = root_proxy(&client);
    assert_eq!(root.state().unwrap(), "starting");
    assert_eq!(root.tier().unwrap(), "scalar");
    assert_eq!(root.threads().unwrap(), 4);
    assert!(root.model().unwrap().is_empty());

    let changes = watch_properties(&client, ROOT_PATH);
    svc.set_state("ready");
    let (iface, changed) = changes.recv_timeout(WAIT).unwrap();
    assert_eq!(iface, "io.prom.Classifier1");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].0, "State");
    assert_eq!(String::try_from(changed[0].1.clone()).unwrap(), "ready");
    assert_eq!(root.state().unwrap(), "ready");

    let info = ModelInfo {
        name: "mobilenet_v2".into(),
        path: "/usr/share/prom/model.prom".into(),
        checksum: "abc123".into(),
        classes: 1000,
        input_width: 224,
        input_height: 224,
        loaded_at_us: 1_700_000_000_000_000,
    };
    svc.set_model_info(Some(info));
    let (_, changed) = changes.recv_timeout(WAIT).unwrap();
    assert_eq!(changed.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["Model"]);
    let m = root.model().unwrap();
    assert_eq!(String::try_from(m["name"].clone()).unwrap(), "mobilenet_v2");
    assert_eq!(String::try_from(m["checksum"].clone()).unwrap(), "abc123");
    assert_eq!(u32::try_from(m["classes"].clone()).unwrap(), 1000);
    assert_eq!(u32::try_from(m["input_width"].clone()).unwrap(), 224);
    assert_eq!(u64::try_from(m["loaded_at_us"].clone()).unwrap(), 1_700_000_000_000_000);

    svc.handle().set_threads(2);
    let (_, changed) = changes.recv_timeout(WAIT).unwrap();
    assert_eq!(changed[0].0, "Threads");
    assert_eq!(root.threads().unwrap(), 2);
}

#[test]
fn camera_statistics_change_at_a_limited_rate() {
    let bus = PrivateBus::start();
    let interval = Duration::from_millis(300);
    let svc = bus.service(ServiceOptions { stats_interval: interval, ..Default::default() });
    let cam = svc.add_camera("cam0").unwrap();
    let client = bus.client();
    let proxy = camera_proxy(&client, "cam0");
    let changes = watch_properties(&client, &camera_path("cam0"));
    assert_eq!(proxy.state().unwrap(), "starting");
    cam.set_state("running");
    let (iface, changed) = changes.recv_timeout(WAIT).unwrap();
    assert_eq!(iface, "io.prom.Camera1");
    assert_eq!(changed[0].0, "State");

    let stats = |n: u64| CameraStats {
        fps: 10.0 + n as f64,
        latency_p50_ms: 12.5,
        latency_p99_ms: 30.0 + n as f64,
        frames_captured: 100 * n,
        frames_dropped: n,
        frames_classified: 99 * n,
    };
    let t_first = Instant::now();
    cam.update_stats(stats(1));
    let (_, changed) = changes.recv_timeout(WAIT).unwrap();
    let names: Vec<&str> = changed.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, ["Fps", "FramesCaptured", "FramesClassified", "FramesDropped", "LatencyMs"]);
    assert_eq!(proxy.fps().unwrap(), 11.0);
    assert_eq!(proxy.latency_ms().unwrap(), (12.5, 31.0));
    assert_eq!(proxy.frames_captured().unwrap(), 100);
    assert_eq!(proxy.frames_dropped().unwrap(), 1);
    assert_eq!(proxy.frames_classified().unwrap(), 99);

    // A burst of updates: one coalesced PropertiesChanged, not before the interval.
    for n in 2..=5 {
        cam.update_stats(stats(n));
    }
    let (_, changed) = changes.recv_timeout(WAIT).unwrap();
    assert!(t_first.elapsed() >= interval, "{:?}", t_first.elapsed());
    let fps = changed.iter().find(|c| c.0 == "Fps").unwrap();
    assert_eq!(f64::try_from(fps.1.clone()).unwrap(), 15.0);
    assert!(changes.recv_timeout(Duration::from_millis(2 * interval.as_millis() as u64)).is_err());
    assert_eq!(proxy.frames_captured().unwrap(), 500);
}

#[test]
fn classify_image_answers_results_and_errors() {
    let bus = PrivateBus::start();
    let opts = ServiceOptions {
        classifier: Some(Box::new(|img| {
            if img.width == 13 {
                return Err("model exploded".into());
            }
            Ok(vec![
                (img.width, format!("{}x{}", img.width, img.height), 0.75),
                (3, "b".into(), 0.25),
            ])
        })),
        ..Default::default()
    };
    let _svc = bus.service(opts);
    let client = bus.client();
    let root = root_proxy(&client);

    let top = root.classify_image(&png(8, 6)).unwrap();
    assert_eq!(top, vec![(8, "8x6".to_string(), 0.75), (3, "b".to_string(), 0.25)]);

    let (name, msg) = method_error(root.classify_image(b"definitely not an image").unwrap_err());
    assert_eq!(name, "io.prom.Classifier1.Error.InvalidImage");
    assert!(!msg.is_empty());

    // A PNG signature followed by garbage.
    let mut truncated = png(8, 6);
    truncated.truncate(20);
    let (name, _) = method_error(root.classify_image(&truncated).unwrap_err());
    assert_eq!(name, "io.prom.Classifier1.Error.InvalidImage");

    let (name, msg) = method_error(root.classify_image(&[]).unwrap_err());
    assert_eq!(name, "io.prom.Classifier1.Error.InvalidImage", "{msg}");

    let big = vec![0u8; (8 << 20) + 1];
    let (name, msg) = method_error(root.classify_image(&big).unwrap_err());
    assert_eq!(name, "io.prom.Classifier1.Error.ImageTooLarge");
    assert!(msg.contains("8388608"), "{msg}");

    let (name, msg) = method_error(root.classify_image(&png(13, 2)).unwrap_err());
    assert_eq!(name, "io.prom.Classifier1.Error.ClassifyFailed");
    assert!(msg.contains("model exploded"));

    // Still serving after the errors.
    assert_eq!(root.classify_image(&png(2, 2)).unwrap()[0].0, 2);
}

#[test]
fn classify_image_times_out_and_without_classifier_is_not_supported() {
    let bus = PrivateBus::start();
    let svc = bus.service(ServiceOptions {
        classifier: Some(Box::new(|_| {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(vec![])
        })),
        classify_timeout: Duration::from_millis(200),
        ..Default::default()
    });
    let client = bus.client();
    let root = root_proxy(&client);
    let t0 = Instant::now();
    let (name, _) = method_error(root.classify_image(&png(4, 4)).unwrap_err());
    assert_eq!(name, "io.prom.Classifier1.Error.Timeout");
    assert!(t0.elapsed() < Duration::from_millis(1200));
    // The bus side stays responsive while the classifier is stuck.
    assert_eq!(root.state().unwrap(), "starting");
    drop(svc);

    let bus = PrivateBus::start();
    let _svc = bus.service(ServiceOptions::default());
    let root = root_proxy(&bus.client());
    let (name, _) = method_error(root.classify_image(&png(4, 4)).unwrap_err());
    assert_eq!(name, "io.prom.Classifier1.Error.NotSupported");
}

#[test]
fn reload_model_success_and_failure() {
    let bus = PrivateBus::start();
    let (tx, rx) = crossbeam_channel::unbounded();
    let _svc = bus.service(ServiceOptions {
        reload: Some(Box::new(move |path| {
            tx.send(path.to_owned()).unwrap();
            if path == "slow.prom" {
                std::thread::sleep(Duration::from_millis(400));
            }
            if path.ends_with("good.prom") || path.is_empty() || path == "slow.prom" {
                Ok(())
            } else {
                Err(format!("{path}: bad magic"))
            }
        })),
        ..Default::default()
    });
    let root = root_proxy(&bus.client());
    root.reload_model("/models/good.prom").unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "/models/good.prom");
    root.reload_model("").unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "");
    let (name, msg) = method_error(root.reload_model("/models/bad.prom").unwrap_err());
    assert_eq!(name, "io.prom.Classifier1.Error.ReloadFailed");
    assert_eq!(msg, "/models/bad.prom: bad magic");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "/models/bad.prom");

    // State reads "reloading" while the handler runs, then goes back.
    let address = bus.address.clone();
    let slow = std::thread::spawn(move || {
        let conn = zbus::blocking::connection::Builder::address(address.as_str())
            .unwrap()
            .build()
            .unwrap();
        root_proxy(&conn).reload_model("slow.prom")
    });
    let t0 = Instant::now();
    while root.state().unwrap() != "reloading" {
        assert!(t0.elapsed() < WAIT, "State never read reloading");
        std::thread::sleep(Duration::from_millis(10));
    }
    slow.join().unwrap().unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "slow.prom");
    assert_eq!(root.state().unwrap(), "starting");
}

#[test]
fn pause_and_resume_reach_the_camera_handle() {
    let bus = PrivateBus::start();
    let svc = bus.service(ServiceOptions::default());
    let cam = svc.add_camera("cam0").unwrap();
    let other = svc.add_camera("cam1").unwrap();
    cam.set_state("running");
    let controls = cam.controls();
    let client = bus.client();
    let proxy = camera_proxy(&client, "cam0");
    assert!(!cam.is_paused());
    proxy.pause().unwrap();
    assert!(cam.is_paused());
    assert!(!other.is_paused());
    assert_eq!(controls.recv_timeout(WAIT).unwrap(), CameraControl::Pause);
    assert_eq!(proxy.state().unwrap(), "paused");
    cam.set_state("waiting"); // pipeline state while paused shows after Resume
    assert_eq!(proxy.state().unwrap(), "paused");
    proxy.resume().unwrap();
    assert!(!cam.is_paused());
    assert_eq!(controls.recv_timeout(WAIT).unwrap(), CameraControl::Resume);
    assert_eq!(proxy.state().unwrap(), "waiting");

    // Arguments to these argument-less methods are refused, and change nothing.
    let path = prom_daemon::dbus::camera_path("cam0");
    let path = path.as_str();
    for method in ["Pause", "Resume"] {
        let bad: [&dyn Fn() -> zbus::Result<zbus::Message>; 3] = [
            &|| client.call_method(Some(BUS_NAME), path, Some("io.prom.Camera1"), method, &(1u32,)),
            &|| client.call_method(Some(BUS_NAME), path, Some("io.prom.Camera1"), method, &("x",)),
            &|| {
                client.call_method(
                    Some(BUS_NAME),
                    path,
                    Some("io.prom.Camera1"),
                    method,
                    &(true, 2u8),
                )
            },
        ];
        for call in bad {
            let (name, msg) = method_error(call().unwrap_err());
            assert_eq!(name, "org.freedesktop.zbus.Error", "{method}: {msg}");
            assert!(msg.starts_with("Signature mismatch"), "{method}: {msg}");
            assert!(!cam.is_paused());
        }
    }
    assert!(controls.try_recv().is_err(), "a refused call reached the camera");
}

/// `Set` on any property of either interface answers PropertyReadOnly (zbus alone answers
/// UnknownProperty), changes nothing, and a property that does not exist is still unknown.
#[test]
fn setting_a_read_only_property_answers_property_read_only() {
    let bus = PrivateBus::start();
    let svc = bus.service(ServiceOptions::default());
    svc.set_state("running");
    let cam = svc.add_camera("cam0").unwrap();
    cam.set_state("running");
    let client = bus.client();
    let camera = prom_daemon::dbus::camera_path("cam0");
    let introspect = |path: &str| -> String {
        let reply = client
            .call_method(
                Some(BUS_NAME),
                path,
                Some("org.freedesktop.DBus.Introspectable"),
                "Introspect",
                &(),
            )
            .unwrap();
        reply.body().deserialize::<String>().unwrap()
    };
    let set = |path: &str, iface: &str, prop: &str, value: zbus::zvariant::Value<'_>| {
        client
            .call_method(
                Some(BUS_NAME),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "Set",
                &(iface, prop, value),
            )
            .map(|_| ())
    };
    let get = |path: &str, iface: &str, prop: &str| -> String {
        let reply = client
            .call_method(
                Some(BUS_NAME),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(iface, prop),
            )
            .unwrap();
        format!("{:?}", reply.body().deserialize::<zbus::zvariant::OwnedValue>().unwrap())
    };
    let mut checked = 0;
    for (path, iface) in [(ROOT_PATH, "io.prom.Classifier1"), (camera.as_str(), "io.prom.Camera1")]
    {
        let xml = introspect(path);
        let section = xml.split(&format!("<interface name=\"{iface}\">")).nth(1).unwrap();
        let section = section.split("</interface>").next().unwrap();
        let props: Vec<&str> = section
            .split("<property name=\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        assert!(props.len() >= 4, "{iface}: {props:?}");
        for prop in props {
            let before = get(path, iface, prop);
            for value in [zbus::zvariant::Value::from("x"), zbus::zvariant::Value::from(7u32)] {
                let (name, msg) = method_error(set(path, iface, prop, value).unwrap_err());
                assert_eq!(name, "org.freedesktop.DBus.Error.PropertyReadOnly", "{prop}: {msg}");
                assert!(msg.contains(prop), "{msg}");
            }
            assert_eq!(get(path, iface, prop), before, "{iface}.{prop} changed");
            checked += 1;
        }
        let (name, _) = method_error(set(path, iface, "NoSuchProperty", "x".into()).unwrap_err());
        assert_eq!(name, "org.freedesktop.DBus.Error.UnknownProperty");
    }
    assert!(checked >= 10, "{checked} properties");
}

#[test]
fn object_manager_lists_cameras_and_announces_new_ones() {
    let bus = PrivateBus::start();
    let svc = bus.service(ServiceOptions::default());
    svc.add_camera("cam0").unwrap();
    let client = bus.client();
    let om = zbus::blocking::fdo::ObjectManagerProxy::builder(&client)
        .destination(BUS_NAME)
        .unwrap()
        .path(ROOT_PATH)
        .unwrap()
        .build()
        .unwrap();
    let added = om.receive_interfaces_added().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for s in added {
            let path = s.args().unwrap().object_path().to_string();
            if tx.send(path).is_err() {
                return;
            }
        }
    });
    let cam1 = svc.add_camera("back yard").unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "/io/prom/Classifier1/camera/back_yard");

    let objects = om.get_managed_objects().unwrap();
    let mut paths: Vec<String> = objects.keys().map(|p| p.to_string()).collect();
    paths.sort();
    assert!(paths.contains(&"/io/prom/Classifier1/camera/cam0".to_string()), "{paths:?}");
    assert!(paths.contains(&cam1.path().to_string()), "{paths:?}");
    for p in ["/io/prom/Classifier1/camera/cam0", cam1.path()] {
        let ifaces = objects.iter().find(|(k, _)| k.as_str() == p).unwrap().1;
        let props = ifaces
            .iter()
            .find(|(k, _)| k.as_str() == "io.prom.Camera1")
            .expect("io.prom.Camera1 listed")
            .1;
        for key in
            ["Fps", "LatencyMs", "FramesCaptured", "FramesDropped", "FramesClassified", "State"]
        {
            assert!(props.contains_key(key), "{p}: {key} missing");
        }
    }
    assert!(matches!(svc.add_camera("cam0"), Err(ServiceError::BadCamera(_))));
}

#[test]
fn name_is_exclusive() {
    let bus = PrivateBus::start();
    let _svc = bus.service(ServiceOptions::default());
    match Service::start(BusChoice::Address(bus.address.clone()), ServiceOptions::default()) {
        Err(ServiceError::NameTaken) => {}
        Err(e) => panic!("expected NameTaken, got {e}"),
        Ok(_) => panic!("second service got the name"),
    }
}

/// Every interface member the live service introspects is in docs/io.prom.Classifier1.xml,
/// with the same names and types in the same order.
#[test]
fn introspection_matches_the_shipped_xml() {
    let bus = PrivateBus::start();
    let svc = bus.service(ServiceOptions::default());
    svc.add_camera("cam0").unwrap();
    let client = bus.client();
    let introspect = |path: &str| {
        zbus::blocking::fdo::IntrospectableProxy::builder(&client)
            .destination(BUS_NAME)
            .unwrap()
            .path(path.to_owned())
            .unwrap()
            .build()
            .unwrap()
            .introspect()
            .unwrap()
    };
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/io.prom.Classifier1.xml"),
    )
    .unwrap();
    let root = introspect(ROOT_PATH);
    let cam = introspect(&camera_path("cam0"));
    for (live, iface) in [(&root, "io.prom.Classifier1"), (&cam, "io.prom.Camera1")] {
        let l = interface_tokens(live, iface);
        assert!(!l.is_empty(), "{iface} not introspected");
        assert_eq!(interface_tokens(&doc, iface), l, "{iface}: docs XML differs from the service");
    }
    assert!(root.contains("org.freedesktop.DBus.ObjectManager"));
}

/// The `name="…"`, `type="…"` and `direction="…"` values inside `<interface name=iface>`.
fn interface_tokens(xml: &str, iface: &str) -> Vec<String> {
    let start = match xml.find(&format!("<interface name=\"{iface}\">")) {
        Some(s) => s,
        None => return Vec::new(),
    };
    let body = &xml[start..];
    let body = &body[..body.find("</interface>").unwrap()];
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("=\"") {
        let key_start = rest[..i].rfind(' ').map_or(0, |k| k + 1);
        let key = &rest[key_start..i];
        let after = &rest[i + 2..];
        let end = after.find('"').unwrap();
        if matches!(key, "name" | "type" | "direction" | "access") {
            out.push(format!("{key}={}", &after[..end]));
        }
        rest = &after[end + 1..];
    }
    out
}

/// Any local user can emit `Classified` on a camera path; `promctl watch` (watch_signals)
/// must show only what the owner of io.prom.Classifier1 sends, also after the service is
/// replaced by a new one (a new unique name) and when a forger holds the camera path first.
#[test]
fn watch_ignores_classified_signals_not_sent_by_the_daemon() {
    use prom_daemon::client::watch_signals;
    let bus = PrivateBus::start();
    let forger = bus.client();
    let forge = |camera: &str, seq: u64| {
        let top = vec![(666u32, "forged".to_owned(), 0.99f64)];
        let path = prom_daemon::dbus::camera_path(camera);
        forger
            .emit_signal(
                None::<&str>,
                path.as_str(),
                "io.prom.Camera1",
                "Classified",
                &(seq, 1u64, top),
            )
            .unwrap();
    };
    // Forged signals before any daemon exists, and around the real ones.
    let watcher = bus.client();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let collect = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            watch_signals(&watcher, None, Some(Duration::from_secs(3)), |c| {
                seen.lock().unwrap().push((c.camera, c.sequence, c.top_k[0].1.clone()));
                Ok(true)
            })
            .map_err(|e| e.to_string())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    forge("cam0", 100);
    for round in 0..2u64 {
        let svc = bus.service(ServiceOptions::default());
        let cam = svc.add_camera("cam0").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        for seq in 0..3u64 {
            forge("cam0", 200 + seq);
            assert!(cam.publish(round * 10 + seq, 5, &[(1, "real".into(), 0.5)]));
            forge("cam1", 300 + seq);
        }
        std::thread::sleep(Duration::from_millis(300));
        drop(cam);
        drop(svc); // the next round's service has another unique name
        std::thread::sleep(Duration::from_millis(200));
    }
    forge("cam0", 400);
    let r = collect.join().unwrap();
    assert!(r.unwrap_err().contains("no result within"));
    let seen = seen.lock().unwrap().clone();
    let want: Vec<_> = [0u64, 1, 2, 10, 11, 12]
        .iter()
        .map(|&s| ("cam0".to_owned(), s, "real".to_owned()))
        .collect();
    assert_eq!(seen, want);
}
