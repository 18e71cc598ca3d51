//! The daemon's TOML configuration: defaults, loading rules, the shipped example, validation
//! errors naming their key, command line overrides.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use prom_daemon::config::{
    example, Bus, Camera, CliOverrides, Config, ConfigError, Crop, LogLevel, ModelChoice,
    PixelFormat, PublishMode, Retry, Smoothing, Source, Threads, AUTO_MACS_PER_THREAD,
    DEFAULT_CAMERA_NAME, DEFAULT_MODEL_PATH,
};
use prom_kernels::Tier;

fn parse(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("{e}\n--- in:\n{text}"))
}

fn error(text: &str) -> String {
    match Config::from_toml(text) {
        Ok(config) => panic!("accepted:\n{text}\nas {config:#?}"),
        Err(e) => e.to_string(),
    }
}

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("config-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn threads_auto_gives_each_thread_enough_work_and_no_more_threads_than_cpus() {
    let per = AUTO_MACS_PER_THREAD;
    // The embedded Fashion-MNIST model (6.1 M MACs) and a 25.7 M one: one thread.
    assert_eq!(Threads::Auto.for_model(6_100_000, 2), 1);
    assert_eq!(Threads::Auto.for_model(25_700_000, 16), 1);
    assert_eq!(Threads::Auto.for_model(0, 8), 1);
    assert_eq!(Threads::Auto.for_model(2 * per - 1, 8), 1);
    assert_eq!(Threads::Auto.for_model(2 * per, 8), 2);
    // MobileNetV2-1.0-224 (300.8 M): one thread per CPU up to ten.
    assert_eq!(Threads::Auto.for_model(300_800_000, 2), 2);
    assert_eq!(Threads::Auto.for_model(300_800_000, 4), 4);
    assert_eq!(Threads::Auto.for_model(300_800_000, 64), 10);
    assert_eq!(Threads::Auto.for_model(u64::MAX, 0), 1);
    assert_eq!(Threads::Auto.for_model(u64::MAX, 5000), 1024);
    // A fixed count is kept whatever the model and the CPUs.
    assert_eq!(Threads::Fixed(3).for_model(1, 1), 3);
    assert_eq!(Threads::Fixed(1).for_model(u64::MAX, 64), 1);
}

#[test]
fn threads_is_a_count_or_auto() {
    assert_eq!(parse("threads = \"auto\"\n").threads, Threads::Auto);
    assert_eq!(parse("threads = 7\n").threads, Threads::Fixed(7));
    assert_eq!("auto".parse::<Threads>(), Ok(Threads::Auto));
    assert_eq!("12".parse::<Threads>(), Ok(Threads::Fixed(12)));
    assert_eq!(
        "many".parse::<Threads>(),
        Err("expected a thread count or \"auto\", found \"many\"".to_owned())
    );
    assert_eq!(Threads::Auto.to_string(), "auto");
    assert_eq!(Threads::Fixed(4).to_string(), "4");
    assert_eq!(
        error("threads = \"Auto\""),
        "threads: expected an integer or \"auto\", found string \"Auto\""
    );
    let mut config = parse("threads = 3\n");
    let args = DaemonArgs::try_parse_from(["prom-daemon", "--threads", "auto"]).unwrap();
    config.apply(&args.overrides).unwrap();
    assert_eq!(config.threads, Threads::Auto);
    assert!(DaemonArgs::try_parse_from(["prom-daemon", "--threads", "two"]).is_err());
}

#[test]
fn defaults() {
    let config = Config::default();
    assert_eq!(config.model, ModelChoice::Default);
    assert!(!config.model.is_explicit());
    assert_eq!(config.model.path(), Path::new(DEFAULT_MODEL_PATH));
    assert_eq!(config.threads, Threads::Auto);
    assert_eq!(config.kernel_tier, None);
    assert_eq!(config.bus, Bus::System);
    assert_eq!(config.log, LogLevel::Info);
    assert_eq!(config.file, None);
    assert_eq!(config.cameras.len(), 1);
    let camera = &config.cameras[0];
    assert_eq!(camera.name, DEFAULT_CAMERA_NAME);
    assert_eq!(camera.source, Source::TestPattern);
    assert_eq!(camera.fps, 10.0);
    assert_eq!(camera.scene_seconds, 1.0);
    assert_eq!((camera.width, camera.height), (640, 480));
    assert_eq!(camera.format, None);
    assert_eq!(camera.crop, None);
    assert_eq!(
        camera.retry,
        Retry { initial: Duration::from_millis(500), max: Duration::from_secs(10) }
    );
    let publish = camera.publish;
    assert_eq!(publish.top_k, 5);
    assert_eq!(publish.threshold, 0.0);
    assert_eq!(publish.mode, PublishMode::Every);
    assert_eq!(publish.min_interval, Duration::ZERO);
    assert_eq!(publish.smoothing, Smoothing::None);
    config.validate().unwrap();

    // An empty file, or one with only comments, gives the same.
    assert_eq!(parse(""), config);
    assert_eq!(parse("# nothing here\n"), config);
}

#[test]
fn explicit_missing_file_is_an_error() {
    let path = scratch("explicit-missing").join("nope.toml");
    let err = Config::load(Some(&path)).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("nope.toml"), "{message}");
    assert!(message.contains("cannot read"), "{message}");
}

#[test]
fn missing_default_path_gives_defaults() {
    let default_path = scratch("default-missing").join("prom-daemon.toml");
    let config = Config::load_with_default(None, &default_path).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn existing_default_path_is_read() {
    let dir = scratch("default-present");
    let default_path = dir.join("prom-daemon.toml");
    std::fs::write(&default_path, "threads = 3\n").unwrap();
    let config = Config::load_with_default(None, &default_path).unwrap();
    assert_eq!(config.threads, Threads::Fixed(3));
    assert_eq!(config.file.as_deref(), Some(default_path.as_path()));

    // An explicit path wins over the default one.
    let explicit = dir.join("other.toml");
    std::fs::write(&explicit, "threads = 2\n").unwrap();
    let config = Config::load_with_default(Some(&explicit), &default_path).unwrap();
    assert_eq!(config.threads, Threads::Fixed(2));
    assert_eq!(config.file.as_deref(), Some(explicit.as_path()));
}

#[test]
fn errors_in_files_name_the_file_and_the_key() {
    let dir = scratch("file-errors");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[[camera]]\nsource = \"testpattern\"\n[camera.publish]\ntop_k = 0\n")
        .unwrap();
    let err = Config::load(Some(&path)).unwrap_err();
    assert_eq!(err.key(), Some("camera[0].publish.top_k"));
    assert_eq!(
        err.to_string(),
        format!("{}: camera[0].publish.top_k: 0 is out of range 1..=100", path.display())
    );

    std::fs::write(&path, "threads = 2\nbus = \"system\n").unwrap();
    let err = Config::load(Some(&path)).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ConfigError::Syntax { line: 2, .. }), "{err:?}");
    assert!(message.starts_with(&format!("{}: TOML syntax error at line 2", path.display())));
}

#[test]
fn syntax_errors_give_line_and_column() {
    for (text, line, column) in [
        ("threads = 2\nbus = = 3\n", 2, 7),
        ("threads = 2\n\n[camera\n", 3, 8),
        ("threads = 2\nthreads = 3\n", 2, 1),
        ("log = \"info\"\nmodel = 'x\n", 2, 11),
    ] {
        match Config::from_toml(text) {
            Err(ConfigError::Syntax { line: l, column: c, message, .. }) => {
                assert_eq!((l, c), (line, column), "{text:?}: {message}");
                assert!(!message.is_empty() && !message.contains('\n'), "{message:?}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
        let message = Config::from_toml(text).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("TOML syntax error at line {line}, column {column}: ")),
            "{message}"
        );
    }
}

#[test]
fn the_example_parses_and_validates() {
    let config = parse(example());
    config.validate().unwrap();
    assert_eq!(config.model, ModelChoice::Default);
    assert_eq!(config.threads, Threads::Auto);
    assert_eq!(config.bus, Bus::System);
    assert_eq!(config.log, LogLevel::Info);
    assert_eq!(config.cameras.len(), 1);
    let camera = &config.cameras[0];
    assert_eq!(camera.name, "cam0");
    assert_eq!(camera.source, Source::V4l2 { device: "/dev/video0".into() });
    assert_eq!(camera.format, None, "format = \"auto\"");
    assert_eq!((camera.width, camera.height, camera.fps), (640, 480, 30.0));
    // The example spells out the defaults.
    let defaults = Camera::new("cam0", camera.source.clone());
    assert_eq!(*camera, defaults);
}

/// Every commented-out `# [[camera]]` block of the example is valid, alone and all together.
#[test]
fn the_examples_commented_cameras_are_valid() {
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in example().lines() {
        if line == "# [[camera]]" {
            blocks.extend(current.take());
            current = Some(String::new());
        }
        match (&mut current, line.strip_prefix("# ")) {
            (Some(block), Some(content)) => {
                block.push_str(content);
                block.push('\n');
            }
            (Some(_), None) => blocks.extend(current.take()),
            (None, _) => {}
        }
    }
    blocks.extend(current);
    assert_eq!(blocks.len(), 5, "{blocks:#?}");

    for block in &blocks {
        let config = parse(&format!("{}\n{block}", example()));
        assert_eq!(config.cameras.len(), 2, "{block}");
    }
    let all = parse(&format!("{}\n{}", example(), blocks.concat()));
    let names: Vec<&str> = all.cameras.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["cam0", "csi", "door", "gallery", "usb2", "pattern"]);

    let door = &all.cameras[2];
    assert_eq!(door.source, Source::Fifo { path: "/run/prom/door.fifo".into() });
    assert_eq!(door.format, Some(PixelFormat::Nv12));
    assert_eq!(door.crop, Some(Crop { x: 280, y: 0, width: 720, height: 720 }));
    assert_eq!(door.retry.initial, Duration::from_millis(200));
    assert_eq!(door.publish.mode, PublishMode::OnChange);
    assert_eq!(door.publish.threshold, 0.2);
    assert_eq!(door.publish.min_interval, Duration::from_millis(500));
    assert_eq!(door.publish.smoothing, Smoothing::MovingAverage { window: 5 });
    let usb2 = &all.cameras[4];
    assert_eq!(usb2.format, Some(PixelFormat::Mjpeg));
    assert_eq!(usb2.publish.smoothing, Smoothing::Hysteresis { enter: 0.6, leave: 0.4 });
    assert_eq!(all.cameras[5].source, Source::TestPattern);
    assert_eq!(all.cameras[5].scene_seconds, 1.0);
}

#[test]
fn a_full_config() {
    let config = parse(
        r#"
model = "/opt/models/mobilenet.prom"
threads = 3
max_model_mib = 12
kernel_tier = "scalar"
bus = "unix:path=/tmp/prom-test-bus"
log = "debug"

[[camera]]
name = "front_door"
source = "v4l2:/dev/video2"
format = "mjpeg"
width = 1280
height = 720
fps = 7.5
crop = { x = 10, y = 20, width = 700, height = 700 }
retry = { initial_ms = 100, max_ms = 100 }

[camera.publish]
top_k = 1
threshold = 0.5
mode = "on_change"
min_interval_ms = 250
smoothing = { kind = "moving_average", window = 8 }

[[camera]]
source = "stdin:"
format = "yuv420"
width = 320
height = 240

[[camera]]
name = "pattern"
source = "testpattern"
scene_seconds = 0.5
[camera.publish.smoothing]
kind = "hysteresis"
enter = 0.7
leave = 0.3

[[camera]]
source = "file:/srv/images"
"#,
    );
    assert_eq!(config.model, ModelChoice::Path("/opt/models/mobilenet.prom".into()));
    assert!(config.model.is_explicit());
    assert_eq!(config.threads, Threads::Fixed(3));
    assert_eq!((config.max_model_mib, config.max_model_bytes()), (12, 12 << 20));
    assert_eq!(config.kernel_tier, Some(Tier::Scalar));
    assert_eq!(config.bus, Bus::Address("unix:path=/tmp/prom-test-bus".into()));
    assert_eq!(config.log, LogLevel::Debug);
    assert_eq!(config.log.level(), tracing::Level::DEBUG);

    let [front, stdin, pattern, files] = &config.cameras[..] else {
        panic!("{:#?}", config.cameras)
    };
    assert_eq!(front.name, "front_door");
    assert_eq!(front.source, Source::V4l2 { device: "/dev/video2".into() });
    assert_eq!(front.format, Some(PixelFormat::Mjpeg));
    assert_eq!((front.width, front.height, front.fps), (1280, 720, 7.5));
    assert_eq!(front.crop, Some(Crop { x: 10, y: 20, width: 700, height: 700 }));
    assert_eq!(
        front.retry,
        Retry { initial: Duration::from_millis(100), max: Duration::from_millis(100) }
    );
    assert_eq!(front.publish.top_k, 1);
    assert_eq!(front.publish.threshold, 0.5);
    assert_eq!(front.publish.mode, PublishMode::OnChange);
    assert_eq!(front.publish.min_interval, Duration::from_millis(250));
    assert_eq!(front.publish.smoothing, Smoothing::MovingAverage { window: 8 });

    assert_eq!(stdin.name, "cam1", "default names follow the position");
    assert_eq!(stdin.source, Source::Stdin);
    assert_eq!(stdin.format, Some(PixelFormat::Yuv420));
    assert_eq!((stdin.width, stdin.height, stdin.fps), (320, 240, 30.0));

    assert_eq!(pattern.scene_seconds, 0.5);
    assert_eq!(pattern.fps, 10.0);
    assert_eq!(pattern.publish.smoothing, Smoothing::Hysteresis { enter: 0.7, leave: 0.3 });

    assert_eq!(files.name, "cam3");
    assert_eq!(files.source, Source::File { path: "/srv/images".into() });
    assert_eq!(files.fps, 10.0);
}

#[test]
fn bus_and_smoothing_spellings() {
    assert_eq!(parse("bus = \"session\"").bus, Bus::Session);
    assert_eq!(parse("bus = \"system\"").bus, Bus::System);
    assert_eq!(
        parse("bus = \"tcp:host=localhost,port=1234\"").bus,
        Bus::Address("tcp:host=localhost,port=1234".into())
    );
    let camera = |publish: &str| {
        parse(&format!("[[camera]]\nsource = \"testpattern\"\n[camera.publish]\n{publish}\n"))
            .cameras[0]
            .publish
    };
    assert_eq!(camera("smoothing = \"none\"").smoothing, Smoothing::None);
    assert_eq!(camera("smoothing = { kind = \"none\" }").smoothing, Smoothing::None);
    assert_eq!(
        camera("smoothing = { kind = \"hysteresis\", enter = 1, leave = 0 }").smoothing,
        Smoothing::Hysteresis { enter: 1.0, leave: 0.0 }
    );
    assert_eq!(camera("threshold = 1").threshold, 1.0);
    assert_eq!(camera("top_k = 100").top_k, 100);
}

#[test]
fn several_cameras_with_unique_names() {
    let config = parse(
        "[[camera]]\nname = \"a\"\nsource = \"testpattern\"\n\
         [[camera]]\nname = \"b\"\nsource = \"testpattern\"\n\
         [[camera]]\nname = \"c_3\"\nsource = \"v4l2:/dev/video0\"\n\
         [[camera]]\nname = \"D\"\nsource = \"v4l2:/dev/video1\"\n",
    );
    let names: Vec<&str> = config.cameras.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c_3", "D"]);
}

#[test]
fn duplicate_camera_names_are_rejected() {
    let message = error(
        "[[camera]]\nname = \"a\"\nsource = \"testpattern\"\n\
         [[camera]]\nname = \"b\"\nsource = \"testpattern\"\n\
         [[camera]]\nname = \"a\"\nsource = \"file:/x.png\"\n",
    );
    assert_eq!(message, "camera[2].name: \"a\" is already the name of camera[0]");

    // A default name can collide with an explicit one too.
    let message = error(
        "[[camera]]\nname = \"cam1\"\nsource = \"testpattern\"\n\
         [[camera]]\nsource = \"testpattern\"\n",
    );
    assert_eq!(message, "camera[1].name: \"cam1\" is already the name of camera[0]");
}

/// Each invalid setting is rejected with a message that names its key.
#[test]
fn validation_errors_name_their_key() {
    const CAM: &str = "[[camera]]\nsource = \"testpattern\"\n";
    const RAW: &str = "[[camera]]\nsource = \"stdin:\"\nformat = \"yuv420\"\n";
    let publish = |body: &str| format!("{CAM}[camera.publish]\n{body}\n");
    let cases: Vec<(String, &str)> = vec![
        // Top level.
        ("colour = 1".into(), "colour: unknown key (expected one of: model, threads, max_model_mib, kernel_tier, bus, log, camera)"),
        ("model = \"\"".into(), "model: must not be empty"),
        ("model = 3".into(), "model: expected a string, found integer 3"),
        ("threads = 0".into(), "threads: 0 is out of range 1..=1024"),
        ("threads = 5000".into(), "threads: 5000 is out of range 1..=1024"),
        ("max_model_mib = 0".into(), "max_model_mib: 0 is out of range 1..=4096"),
        ("max_model_mib = 4097".into(), "max_model_mib: 4097 is out of range 1..=4096"),
        ("threads = \"4\"".into(), "threads: expected an integer or \"auto\", found string \"4\""),
        ("threads = 2.5".into(), "threads: expected an integer or \"auto\", found float 2.5"),
        ("kernel_tier = \"sse\"".into(), "kernel_tier: unknown kernel tier \"sse\" (expected scalar, avx2, avx512, neon)"),
        ("bus = \"sytem\"".into(), "bus: \"sytem\" is not \"system\", \"session\" or a D-Bus address"),
        ("bus = true".into(), "bus: expected a string, found boolean true"),
        ("log = \"loud\"".into(), "log: unknown log level \"loud\" (expected error, warn, info, debug, trace)"),
        ("camera = []".into(), "camera: empty"),
        ("[camera]\nsource = \"testpattern\"".into(), "camera: expected an array of tables ([[camera]]), found a table"),
        ("camera = [1]".into(), "camera[0]: expected a table, found integer 1"),
        // Camera keys.
        (format!("{CAM}colour = 1"), "camera[0].colour: unknown key (expected one of: name, source,"),
        ("[[camera]]\nname = \"x\"".into(), "camera[0].source: missing (a source such as"),
        (format!("{CAM}[[camera]]\nsource = \"foo:\""), "camera[1].source: unknown source \"foo:\" (expected v4l2:, stdin:, fifo:, file:, testpattern)"),
        ("[[camera]]\nsource = \"v4l2:\"".into(), "camera[0].source: v4l2: needs a path"),
        ("[[camera]]\nsource = \"fifo:\"".into(), "camera[0].source: fifo: needs a path"),
        ("[[camera]]\nsource = \"file:\"".into(), "camera[0].source: file: needs a path"),
        ("[[camera]]\nsource = \"stdin:yuv420\"\nformat = \"yuv420\"".into(), "camera[0].source: \"stdin:yuv420\": stdin: takes no argument"),
        ("[[camera]]\nsource = \"/dev/video0\"".into(), "camera[0].source: unknown source \"/dev/video0\""),
        (format!("{CAM}name = \"front door\""), "camera[0].name: \"front door\" may only contain ASCII letters, digits and _"),
        (format!("{CAM}name = \"caméra\""), "camera[0].name: \"caméra\" may only contain"),
        (format!("{CAM}name = \"\""), "camera[0].name: must not be empty"),
        (format!("{CAM}format = \"yuyv\""), "camera[0].format: not used by the testpattern source"),
        ("[[camera]]\nsource = \"file:/x\"\nformat = \"yuyv\"".into(), "camera[0].format: not used by the file: source"),
        ("[[camera]]\nsource = \"file:/x\"\nwidth = 320".into(), "camera[0].width: not used by the file: source"),
        ("[[camera]]\nsource = \"v4l2:/dev/video0\"\nscene_seconds = 2".into(), "camera[0].scene_seconds: not used by the v4l2: source"),
        ("[[camera]]\nsource = \"stdin:\"".into(), "camera[0].format: required for the stdin: source (one of yuv420, nv12, yuyv, rgb24)"),
        ("[[camera]]\nsource = \"fifo:/run/f\"".into(), "camera[0].format: required for the fifo: source"),
        ("[[camera]]\nsource = \"fifo:/run/f\"\nformat = \"auto\"".into(), "camera[0].format: unknown pixel format \"auto\""),
        ("[[camera]]\nsource = \"stdin:\"\nformat = \"mjpeg\"".into(), "camera[0].format: mjpeg is not a raw frame format (expected yuv420, nv12, yuyv, rgb24)"),
        ("[[camera]]\nsource = \"v4l2:/dev/video0\"\nformat = \"yuv420\"".into(), "camera[0].format: yuv420 is not a V4L2 capture format (expected yuyv, mjpeg, nv12, rgb24, bgr24, grey, auto)"),
        ("[[camera]]\nsource = \"v4l2:/dev/video0\"\nformat = \"h264\"".into(), "camera[0].format: unknown pixel format \"h264\""),
        (format!("{RAW}width = 0"), "camera[0].width: 0 is out of range 16..=8192"),
        (format!("{RAW}height = 9000"), "camera[0].height: 9000 is out of range 16..=8192"),
        (format!("{RAW}width = 641"), "camera[0].width: 641 must be even for yuv420"),
        (format!("{RAW}height = 479"), "camera[0].height: 479 must be even for yuv420"),
        (format!("{CAM}fps = 0"), "camera[0].fps: 0 is out of range"),
        (format!("{CAM}fps = -1.5"), "camera[0].fps: -1.5 is out of range"),
        (format!("{CAM}fps = 2000"), "camera[0].fps: 2000 is out of range"),
        (format!("{CAM}fps = nan"), "camera[0].fps: NaN is out of range"),
        (format!("{CAM}fps = \"30\""), "camera[0].fps: expected a number, found string \"30\""),
        (format!("{CAM}scene_seconds = 0"), "camera[0].scene_seconds: 0 is out of range"),
        // Crop.
        (format!("{CAM}crop = {{ x = 0, y = 0, width = 100 }}"), "camera[0].crop.height: missing (an integer)"),
        (format!("{CAM}crop = {{ x = 0, y = 0, width = 0, height = 10 }}"), "camera[0].crop.width: 0 is out of range 1..=16384"),
        (format!("{CAM}crop = {{ x = -1, y = 0, width = 10, height = 10 }}"), "camera[0].crop.x: -1 is out of range 0..=16384"),
        (format!("{CAM}crop = {{ x = 600, y = 0, width = 100, height = 100 }}"), "camera[0].crop: region 100x100 at (600, 0) does not fit in the 640x480 frame"),
        (format!("{CAM}crop = {{ x = 0, y = 0, width = 10, height = 10, z = 1 }}"), "camera[0].crop.z: unknown key (expected one of: x, y, width, height)"),
        (format!("{CAM}crop = \"centre\""), "camera[0].crop: expected a table, found string \"centre\""),
        // Retry.
        (format!("{CAM}[camera.retry]\ninitial_ms = 0"), "camera[0].retry.initial_ms: 0 is out of range 1..=3600000"),
        (format!("{CAM}[camera.retry]\nmax_ms = 100"), "camera[0].retry.max_ms: 100 is less than retry.initial_ms (500)"),
        (format!("{CAM}[camera.retry]\nbackoff = 2"), "camera[0].retry.backoff: unknown key (expected one of: initial_ms, max_ms)"),
        // Publishing policy.
        (publish("top_k = 0"), "camera[0].publish.top_k: 0 is out of range 1..=100"),
        (publish("top_k = 101"), "camera[0].publish.top_k: 101 is out of range 1..=100"),
        (publish("threshold = 1.5"), "camera[0].publish.threshold: 1.5 is out of range 0..=1"),
        (publish("threshold = -0.1"), "camera[0].publish.threshold: -0.1 is out of range 0..=1"),
        (publish("mode = \"sometimes\""), "camera[0].publish.mode: unknown mode \"sometimes\" (expected every, on_change)"),
        (publish("min_interval_ms = -1"), "camera[0].publish.min_interval_ms: -1 is out of range 0..=3600000"),
        (publish("topk = 3"), "camera[0].publish.topk: unknown key (expected one of: top_k, threshold, mode, min_interval_ms, smoothing)"),
        (publish("smoothing = \"median\""), "camera[0].publish.smoothing: unknown smoothing \"median\" (expected none, moving_average, hysteresis)"),
        (publish("smoothing = \"moving_average\""), "camera[0].publish.smoothing: moving_average needs a window"),
        (publish("smoothing = \"hysteresis\""), "camera[0].publish.smoothing: hysteresis needs thresholds"),
        (publish("smoothing = 3"), "camera[0].publish.smoothing: expected \"none\" or a table with a kind, found integer 3"),
        (publish("smoothing = { window = 3 }"), "camera[0].publish.smoothing.kind: missing (none, moving_average, hysteresis)"),
        (publish("smoothing = { kind = \"median\" }"), "camera[0].publish.smoothing.kind: unknown smoothing \"median\""),
        (publish("smoothing = { kind = \"moving_average\" }"), "camera[0].publish.smoothing.window: missing (an integer)"),
        (publish("smoothing = { kind = \"moving_average\", window = 0 }"), "camera[0].publish.smoothing.window: 0 is out of range 1..=1000"),
        (publish("smoothing = { kind = \"moving_average\", window = 3, enter = 0.5 }"), "camera[0].publish.smoothing.enter: unknown key (expected one of: kind, window)"),
        (publish("smoothing = { kind = \"none\", window = 3 }"), "camera[0].publish.smoothing.window: unknown key (expected one of: kind)"),
        (publish("smoothing = { kind = \"hysteresis\", enter = 0.4, leave = 0.6 }"), "camera[0].publish.smoothing.leave: 0.6 must be less than publish.smoothing.enter (0.4)"),
        (publish("smoothing = { kind = \"hysteresis\", enter = 0.5, leave = 0.5 }"), "camera[0].publish.smoothing.leave: 0.5 must be less than"),
        (publish("smoothing = { kind = \"hysteresis\", enter = 1.5, leave = 0.5 }"), "camera[0].publish.smoothing.enter: 1.5 is out of range 0..=1"),
        (publish("smoothing = { kind = \"hysteresis\", enter = 0.5 }"), "camera[0].publish.smoothing.leave: missing (a number)"),
        (publish("threshold = 0.3\nsmoothing = { kind = \"hysteresis\", enter = 0.6, leave = 0.4 }"), "camera[0].publish.threshold: not used with hysteresis smoothing"),
        // Later cameras are named by their index.
        (format!("{CAM}{CAM}[camera.publish]\ntop_k = 0"), "camera[1].publish.top_k: 0 is out of range 1..=100"),
        // Sources shared between cameras.
        ("[[camera]]\nsource = \"v4l2:/dev/video0\"\n[[camera]]\nsource = \"v4l2:/dev/video0\"".into(), "camera[1].source: \"v4l2:/dev/video0\" is already the source of camera[0] (\"cam0\")"),
        (format!("{RAW}{RAW}"), "camera[1].source: \"stdin:\" is already the source of camera[0]"),
        ("[[camera]]\nsource = \"fifo:/f\"\nformat = \"nv12\"\n[[camera]]\nsource = \"fifo:/f\"\nformat = \"nv12\"".into(), "camera[1].source: \"fifo:/f\" is already the source of camera[0]"),
    ];
    let mut failures = Vec::new();
    for (text, expected) in &cases {
        let message = error(text);
        if !message.starts_with(expected) {
            failures.push(format!("{text:?}\n  expected: {expected}\n  got:      {message}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn sources_parse_and_print_back() {
    for (spec, source) in [
        ("v4l2:/dev/video0", Source::V4l2 { device: "/dev/video0".into() }),
        ("stdin:", Source::Stdin),
        ("fifo:/run/prom/cam.fifo", Source::Fifo { path: "/run/prom/cam.fifo".into() }),
        ("file:/srv/images", Source::File { path: "/srv/images".into() }),
        ("file:relative/image.png", Source::File { path: "relative/image.png".into() }),
        ("testpattern", Source::TestPattern),
    ] {
        assert_eq!(spec.parse::<Source>().unwrap(), source);
        assert_eq!(source.to_string(), spec);
    }
    assert_eq!("stdin".parse::<Source>().unwrap(), Source::Stdin);
    assert_eq!("testpattern:".parse::<Source>().unwrap(), Source::TestPattern);
    assert!(Source::Stdin.is_raw_stream());
    assert!(!Source::TestPattern.is_raw_stream());
}

#[test]
fn overrides_replace_what_they_name() {
    let mut config = parse(example());
    let overrides = CliOverrides {
        model: Some("/tmp/m.prom".into()),
        source: Some("fifo:/tmp/cam.fifo".into()),
        format: Some("nv12".into()),
        width: Some(1280),
        height: Some(720),
        fps: Some(15.0),
        threads: Some(Threads::Fixed(2)),
        session: true,
        bus_address: None,
    };
    config.apply(&overrides).unwrap();
    assert_eq!(config.model, ModelChoice::Path("/tmp/m.prom".into()));
    assert_eq!(config.threads, Threads::Fixed(2));
    assert_eq!(config.bus, Bus::Session);
    assert_eq!(config.log, LogLevel::Info, "untouched");
    assert_eq!(config.cameras.len(), 1);
    let camera = &config.cameras[0];
    assert_eq!(camera.name, "cam0");
    assert_eq!(camera.source, Source::Fifo { path: "/tmp/cam.fifo".into() });
    assert_eq!(camera.format, Some(PixelFormat::Nv12));
    assert_eq!((camera.width, camera.height, camera.fps), (1280, 720, 15.0));

    // --source replaces several cameras with one, at the source's defaults.
    let mut config = parse(
        "[[camera]]\nname = \"a\"\nsource = \"testpattern\"\n\
         [[camera]]\nname = \"b\"\nsource = \"v4l2:/dev/video0\"\n",
    );
    config
        .apply(&CliOverrides {
            source: Some("testpattern".into()),
            bus_address: Some("unix:path=/tmp/bus".into()),
            ..CliOverrides::default()
        })
        .unwrap();
    assert_eq!(config.cameras, vec![Camera::new("cam0", Source::TestPattern)]);
    assert_eq!(config.bus, Bus::Address("unix:path=/tmp/bus".into()));

    // v4l2 accepts "auto".
    let mut config = Config::default();
    config
        .apply(&CliOverrides {
            source: Some("v4l2:/dev/video3".into()),
            format: Some("auto".into()),
            ..CliOverrides::default()
        })
        .unwrap();
    assert_eq!(config.cameras[0].format, None);
    assert_eq!(config.cameras[0].fps, 30.0);

    // No overrides: nothing changes.
    let mut config = parse(example());
    config.apply(&CliOverrides::default()).unwrap();
    assert_eq!(config, parse(example()));
}

#[test]
fn override_errors_name_the_flag_and_change_nothing() {
    let cases: Vec<(CliOverrides, &str)> = vec![
        (
            CliOverrides { threads: Some(Threads::Fixed(0)), ..Default::default() },
            "--threads: 0 is out of range 1..=1024",
        ),
        (
            CliOverrides { model: Some(PathBuf::new()), ..Default::default() },
            "--model: must not be empty",
        ),
        (
            CliOverrides { source: Some("foo:".into()), ..Default::default() },
            "--source: unknown source \"foo:\" (expected v4l2:, stdin:, fifo:, file:, testpattern)",
        ),
        (
            CliOverrides { source: Some("stdin:".into()), ..Default::default() },
            "--format: required for the stdin: source (one of yuv420, nv12, yuyv, rgb24)",
        ),
        (
            CliOverrides {
                source: Some("stdin:".into()),
                format: Some("grey".into()),
                ..Default::default()
            },
            "--format: grey is not a raw frame format",
        ),
        (
            CliOverrides {
                source: Some("stdin:".into()),
                format: Some("yuv420".into()),
                width: Some(641),
                ..Default::default()
            },
            "--width: 641 must be even for yuv420",
        ),
        (
            CliOverrides {
                source: Some("testpattern".into()),
                height: Some(10),
                ..Default::default()
            },
            "--height: 10 is out of range 16..=8192",
        ),
        (
            CliOverrides {
                source: Some("testpattern".into()),
                fps: Some(0.0),
                ..Default::default()
            },
            "--fps: 0 is out of range",
        ),
        (
            CliOverrides { source: Some("file:/x".into()), width: Some(320), ..Default::default() },
            "--width: not used by the file: source",
        ),
        (
            CliOverrides {
                source: Some("testpattern".into()),
                format: Some("yuyv".into()),
                ..Default::default()
            },
            "--format: not used by the testpattern source",
        ),
        (
            CliOverrides { format: Some("yuyv".into()), ..Default::default() },
            "--format: only used together with --source",
        ),
        (
            CliOverrides { fps: Some(5.0), ..Default::default() },
            "--fps: only used together with --source",
        ),
        (
            CliOverrides { bus_address: Some("nonsense".into()), ..Default::default() },
            "--bus-address: \"nonsense\" is not",
        ),
        (
            CliOverrides {
                session: true,
                bus_address: Some("unix:path=/x".into()),
                ..Default::default()
            },
            "--session: cannot be combined with --bus-address",
        ),
    ];
    for (overrides, expected) in cases {
        let mut config = parse(example());
        let message = config.apply(&overrides).unwrap_err().to_string();
        assert!(
            message.starts_with(expected),
            "{overrides:?}\n  expected: {expected}\n  got:      {message}"
        );
        assert_eq!(config, parse(example()), "a failed apply leaves the config unchanged");
    }
}

#[derive(Parser, Debug)]
struct DaemonArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: CliOverrides,
}

#[test]
fn overrides_parse_from_the_command_line() {
    DaemonArgs::command().debug_assert();
    let args = DaemonArgs::try_parse_from([
        "prom-daemon",
        "--config",
        "/etc/x.toml",
        "--source",
        "stdin:",
        "--format",
        "yuv420",
        "--width",
        "1280",
        "--height",
        "720",
        "--fps",
        "15",
        "--threads",
        "2",
        "--bus-address",
        "unix:path=/tmp/bus",
        "--model",
        "/m.prom",
    ])
    .unwrap();
    assert_eq!(args.config.as_deref(), Some(Path::new("/etc/x.toml")));
    let mut config = Config::default();
    config.apply(&args.overrides).unwrap();
    assert_eq!(config.cameras[0].source, Source::Stdin);
    assert_eq!(config.cameras[0].format, Some(PixelFormat::Yuv420));
    assert_eq!((config.cameras[0].width, config.cameras[0].height), (1280, 720));
    assert_eq!(config.threads, Threads::Fixed(2));
    assert_eq!(config.bus, Bus::Address("unix:path=/tmp/bus".into()));

    let args = DaemonArgs::try_parse_from(["prom-daemon", "--session"]).unwrap();
    assert!(args.overrides.session);

    // clap itself refuses --format without --source and --session with --bus-address.
    assert!(DaemonArgs::try_parse_from(["prom-daemon", "--format", "yuyv"]).is_err());
    assert!(DaemonArgs::try_parse_from([
        "prom-daemon",
        "--session",
        "--bus-address",
        "unix:path=/x"
    ])
    .is_err());
}

#[test]
fn crop_for_a_frame() {
    let mut camera = Camera::new("c", Source::TestPattern);
    assert_eq!(camera.crop_for(640, 480, 224, 224), Crop { x: 80, y: 0, width: 480, height: 480 });
    camera.crop = Some(Crop { x: 600, y: 400, width: 100, height: 100 });
    assert_eq!(camera.crop_for(640, 480, 224, 224), Crop { x: 600, y: 400, width: 40, height: 80 });
    assert_eq!(camera.crop_for(320, 240, 224, 224), Crop { x: 40, y: 0, width: 240, height: 240 });
}
