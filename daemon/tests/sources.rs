//! Frame sources: the test pattern's exact bytes, image files and directories, raw frames
//! through a real FIFO, and the retry back-off.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prom_daemon::config::{Camera, Retry, Source};
use prom_daemon::preprocess::{Crop, Frame, PixelFormat, Preprocessor};
use prom_daemon::sources::{
    self, render_rgb, Backoff, FileSource, FrameMeta, FrameSource, RawStream, Scene, SourceError,
    TestPattern,
};

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("prom-sources-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn frames(src: &mut dyn FrameSource, n: usize) -> Vec<(FrameMeta, Vec<u8>)> {
    (0..n)
        .map(|_| {
            let mut buf = Vec::new();
            let meta = src.next_frame(&mut buf).unwrap();
            (meta, buf)
        })
        .collect()
}

fn rgb(scene: Scene, index: u64, w: usize, h: usize) -> Vec<u8> {
    let mut out = vec![0; w * h * 3];
    render_rgb(scene, index, w, h, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Test pattern

#[test]
fn test_pattern_is_deterministic_and_exact() {
    let mut a = TestPattern::new(PixelFormat::Rgb24, 64, 48, 10.0, 1.0, false).unwrap();
    let mut b = TestPattern::new(PixelFormat::Rgb24, 64, 48, 10.0, 1.0, false).unwrap();
    assert_eq!(a.frames_per_scene(), 10);
    let (fa, fb) = (frames(&mut a, 45), frames(&mut b, 45));
    for (i, ((ma, da), (mb, db))) in fa.iter().zip(&fb).enumerate() {
        assert_eq!(da, db, "frame {i}");
        assert_eq!((ma.sequence, mb.sequence), (i as u64, i as u64));
        assert_eq!((ma.format, ma.width, ma.height, ma.stride), (PixelFormat::Rgb24, 64, 48, 192));
        assert_eq!(*da, rgb(a.scene_of(i as u64), i as u64, 64, 48), "frame {i}");
    }
    // Wall-clock and monotonic timestamps are filled in and ordered.
    assert!(fa[44].0.captured >= fa[0].0.captured);
    assert!(fa[0].0.captured_unix_us > 1_600_000_000_000_000);
    // Colour bars: white top left, black bottom right.
    assert_eq!(&fa[0].1[..3], &[255, 255, 255]);
    assert_eq!(&fa[0].1[fa[0].1.len() - 3..], &[0, 0, 0]);
}

#[test]
fn test_pattern_changes_scene_every_scene_seconds() {
    // 20 fps, 0.5 s per scene: 10 frames per scene.
    let mut src = TestPattern::new(PixelFormat::Rgb24, 32, 32, 20.0, 0.5, false).unwrap();
    assert_eq!(src.frames_per_scene(), 10);
    let f = frames(&mut src, 41);
    let scenes: Vec<Scene> = (0..41).map(|i| src.scene_of(i)).collect();
    assert_eq!(&scenes[..10], &[Scene::ColourBars; 10]);
    assert_eq!(scenes[10], Scene::Gradient);
    assert_eq!(scenes[20], Scene::Checkerboard);
    assert_eq!(scenes[30], Scene::MovingBox);
    assert_eq!(scenes[40], Scene::ColourBars);
    // Static scenes stay put within the scene, and every scene change changes the picture.
    for i in 1..30 {
        assert_eq!(f[i].1 == f[i - 1].1, i % 10 != 0, "frames {} and {i}", i - 1);
    }
    // The box moves every frame.
    for i in 31..40 {
        assert_ne!(f[i].1, f[i - 1].1, "moving box frame {i}");
    }
    assert_eq!(f[40].1, f[0].1, "the scenes loop");
    // All four scenes are distinct.
    for (i, j) in [(0, 10), (0, 20), (0, 30), (10, 20), (10, 30), (20, 30)] {
        assert_ne!(f[i].1, f[j].1);
    }
}

#[test]
fn yuyv_test_pattern_converts_back_to_the_rgb_scene() {
    let (w, h) = (64, 48);
    let mut src = TestPattern::new(PixelFormat::Yuyv, w, h, 10.0, 0.1, false).unwrap();
    assert_eq!(src.frames_per_scene(), 1);
    let mut pre = Preprocessor::new(PixelFormat::Yuyv, w, h, Crop::Centre, w, h).unwrap();
    let mut out = vec![0; w * h * 3];
    let mut buf = Vec::new();
    for i in 0..4u64 {
        let meta = src.next_frame(&mut buf).unwrap();
        assert_eq!(buf.len(), w * h * 2);
        assert_eq!(Some(buf.len()), PixelFormat::Yuyv.frame_len(w, h));
        assert_eq!((meta.format, meta.stride, meta.sequence), (PixelFormat::Yuyv, w * 2, i));
        pre.run(&Frame::new(meta.format, w, h, &buf), &mut out).unwrap();
        let scene = src.scene_of(i);
        let expected = rgb(scene, i, w, h);
        let diffs: Vec<u32> =
            out.iter().zip(&expected).map(|(&a, &b)| u32::from(a.abs_diff(b))).collect();
        let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
        let max = *diffs.iter().max().unwrap();
        // Chroma is shared by pixel pairs: colour edges on odd columns (the moving box) and the
        // gradient's horizontal ramp lose a little; elsewhere only rounding remains.
        let max_allowed = if scene == Scene::MovingBox { 255 } else { 4 };
        assert!(mean < 1.5, "{scene:?}: mean error {mean}");
        assert!(max <= max_allowed, "{scene:?}: max error {max}");
    }
}

#[test]
fn test_pattern_formats_and_sizes() {
    let cases = [
        (PixelFormat::Yuyv, 640 * 480 * 2),
        (PixelFormat::Nv12, 640 * 480 * 3 / 2),
        (PixelFormat::Yuv420, 640 * 480 * 3 / 2),
        (PixelFormat::Grey, 640 * 480),
        (PixelFormat::Bgr24, 640 * 480 * 3),
        (PixelFormat::Rgb24, 640 * 480 * 3),
    ];
    for (format, len) in cases {
        let mut src = TestPattern::new(format, 640, 480, 10.0, 1.0, false).unwrap();
        let mut buf = Vec::new();
        let meta = src.next_frame(&mut buf).unwrap();
        assert_eq!(buf.len(), len, "{format}");
        assert_eq!(meta.stride, format.row_bytes(640).unwrap());
        assert!(src.describe().contains(format.name()), "{}", src.describe());
    }
    // BGR24 is RGB24 swapped; grey of white is limited-range white.
    let mut rgb_src = TestPattern::new(PixelFormat::Rgb24, 16, 16, 10.0, 1.0, false).unwrap();
    let mut bgr_src = TestPattern::new(PixelFormat::Bgr24, 16, 16, 10.0, 1.0, false).unwrap();
    let mut grey_src = TestPattern::new(PixelFormat::Grey, 16, 16, 10.0, 1.0, false).unwrap();
    let (mut r, mut b, mut g) = (Vec::new(), Vec::new(), Vec::new());
    rgb_src.next_frame(&mut r).unwrap();
    bgr_src.next_frame(&mut b).unwrap();
    grey_src.next_frame(&mut g).unwrap();
    for (p, q) in r.chunks(3).zip(b.chunks(3)) {
        assert_eq!([p[0], p[1], p[2]], [q[2], q[1], q[0]]);
    }
    assert_eq!((g[0], g[15]), (235, 16));
    // Impossible setups are configuration errors naming the test pattern.
    for (format, w, h, fps, scene) in [
        (PixelFormat::Mjpeg, 64, 48, 10.0, 1.0),
        (PixelFormat::Yuyv, 63, 48, 10.0, 1.0),
        (PixelFormat::Nv12, 64, 47, 10.0, 1.0),
        (PixelFormat::Rgb24, 0, 48, 10.0, 1.0),
        (PixelFormat::Rgb24, 64, 48, 0.0, 1.0),
        (PixelFormat::Rgb24, 64, 48, f64::NAN, 1.0),
        (PixelFormat::Rgb24, 64, 48, 10.0, 0.0),
    ] {
        match TestPattern::new(format, w, h, fps, scene, false) {
            Err(e @ SourceError::Config(_)) => assert!(e.to_string().contains("testpattern")),
            other => panic!("{format} {w}x{h} @ {fps}: {other:?}"),
        }
    }
}

#[test]
fn warm_buffers_are_reused() {
    for format in [PixelFormat::Yuyv, PixelFormat::Rgb24, PixelFormat::Nv12] {
        let mut src = TestPattern::new(format, 320, 240, 10.0, 0.1, false).unwrap();
        let mut buf = Vec::new();
        src.next_frame(&mut buf).unwrap();
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        for _ in 0..8 {
            src.next_frame(&mut buf).unwrap();
            assert_eq!((buf.as_ptr(), buf.capacity()), (ptr, cap), "{format}");
        }
    }
}

#[test]
fn paced_sources_keep_to_the_fps() {
    let mut src = TestPattern::new(PixelFormat::Grey, 16, 16, 100.0, 1.0, true).unwrap();
    let mut buf = Vec::new();
    let start = Instant::now();
    for _ in 0..6 {
        src.next_frame(&mut buf).unwrap();
    }
    let took = start.elapsed();
    // The first frame comes at once, the next five 10 ms apart.
    assert!(took >= Duration::from_millis(45), "{took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// Image files

fn image(w: u32, h: u32, seed: u8) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([seed.wrapping_add(x as u8 * 7), seed ^ (y as u8 * 13), seed])
    })
}

#[test]
fn file_source_plays_a_directory_in_name_order_and_loops() {
    let dir = TempDir::new("dir");
    let (a, b, c) = (image(5, 4, 10), image(3, 2, 90), image(16, 8, 200));
    // Written out of order; names decide the order.
    c.save(dir.path("c.png")).unwrap();
    a.save(dir.path("a.ppm")).unwrap();
    b.save(dir.path("b.PNG")).unwrap();
    image::DynamicImage::ImageRgb8(c.clone()).save(dir.path("d.jpg")).unwrap();
    std::fs::write(dir.path("notes.txt"), "not an image, ignored").unwrap();
    std::fs::write(dir.path("bad.png"), "not a png either").unwrap();

    let mut src = FileSource::open(&dir.0, 10.0, false).unwrap();
    let names: Vec<String> =
        src.files().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["a.ppm", "b.PNG", "c.png", "d.jpg"], "bad.png skipped, notes.txt ignored");
    assert!(src.describe().contains("4 images"), "{}", src.describe());
    let f = frames(&mut src, 9);
    let expect = [(&a, 5, 4), (&b, 3, 2), (&c, 16, 8)];
    for (i, (meta, data)) in f.iter().enumerate() {
        assert_eq!(meta.sequence, i as u64);
        assert_eq!(meta.format, PixelFormat::Rgb24);
        assert_eq!(meta.stride, meta.width * 3);
        if i % 4 == 3 {
            // The lossy JPEG: size only.
            assert_eq!((meta.width, meta.height, data.len()), (16, 8, 16 * 8 * 3));
        } else {
            let (img, w, h) = expect[i % 4];
            assert_eq!((meta.width, meta.height), (w, h), "frame {i}");
            assert_eq!(data, img.as_raw(), "frame {i}");
        }
    }
}

#[test]
fn file_source_single_file_and_cache_budget() {
    let dir = TempDir::new("single");
    let a = image(8, 8, 1);
    a.save(dir.path("one.png")).unwrap();
    let mut src = FileSource::open(&dir.path("one.png"), 5.0, false).unwrap();
    assert_eq!(src.cached_bytes(), 8 * 8 * 3);
    for (_, data) in frames(&mut src, 3) {
        assert_eq!(data, a.as_raw().as_slice());
    }

    // Budget for one of three images: the rest are decoded when shown, with the same result.
    let imgs = [image(8, 8, 1), image(8, 8, 2), image(8, 8, 3)];
    for (i, img) in imgs.iter().enumerate() {
        img.save(dir.path(&format!("many{i}.png"))).unwrap();
    }
    std::fs::remove_file(dir.path("one.png")).unwrap();
    let mut src = FileSource::open_with_budget(&dir.0, 5.0, false, 8 * 8 * 3 + 10).unwrap();
    assert_eq!(src.cached_bytes(), 8 * 8 * 3);
    for (i, (_, data)) in frames(&mut src, 6).iter().enumerate() {
        assert_eq!(data, imgs[i % 3].as_raw(), "frame {i}");
    }
}

#[test]
fn file_source_errors_name_the_file() {
    let dir = TempDir::new("bad");
    std::fs::write(dir.path("broken.png"), "garbage").unwrap();
    std::fs::write(dir.path("worse.ppm"), "P6\n4 4\n255\nxx").unwrap();
    match FileSource::open(&dir.0, 10.0, false) {
        Err(e @ SourceError::Decode(_)) => {
            assert!(e.to_string().contains("broken.png"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    match FileSource::open(&dir.path("worse.ppm"), 10.0, false) {
        Err(e @ SourceError::Decode(_)) => assert!(e.to_string().contains("worse.ppm"), "{e}"),
        other => panic!("{other:?}"),
    }
    let empty = TempDir::new("empty");
    match FileSource::open(&empty.0, 10.0, false) {
        Err(e @ SourceError::Config(_)) => assert!(e.to_string().contains("no images"), "{e}"),
        other => panic!("{other:?}"),
    }
    match FileSource::open(&dir.path("missing.png"), 10.0, false) {
        Err(e @ SourceError::Io(..)) => assert!(e.to_string().contains("missing.png"), "{e}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw streams

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Frame `n` of a raw stream: every byte `n`, except the first (`n + 100`).
fn raw_frame(n: u8, len: usize) -> Vec<u8> {
    let mut frame = vec![n; len];
    frame[0] = n.wrapping_add(100);
    frame
}

fn write_frames(path: PathBuf, first: u8, count: u8, len: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // Opening for writing blocks until the reader opens.
        let mut fifo = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        for n in first..first + count {
            fifo.write_all(&raw_frame(n, len)).unwrap();
        }
        // Dropping closes the FIFO: the reader sees the end of the stream.
    })
}

#[test]
fn fifo_frames_end_and_continue_after_reopen() {
    let dir = TempDir::new("fifo");
    let path = dir.path("cam.fifo");
    mkfifo(&path);
    let (w, h) = (32, 16);
    let mut src = RawStream::fifo(&path, PixelFormat::Yuv420, w, h).unwrap();
    let len = src.frame_len();
    assert_eq!(len, 32 * 16 * 3 / 2);
    assert!(src.describe().starts_with("fifo:"), "{}", src.describe());

    let writer = write_frames(path.clone(), 0, 3, len);
    let mut buf = Vec::new();
    for n in 0..3u8 {
        let meta = src.next_frame(&mut buf).unwrap();
        assert_eq!(buf, raw_frame(n, len));
        assert_eq!(
            (meta.sequence, meta.format, meta.width, meta.height),
            (n.into(), PixelFormat::Yuv420, w, h)
        );
        assert_eq!(meta.stride, w);
    }
    writer.join().unwrap();
    match src.next_frame(&mut buf) {
        Err(e @ SourceError::Ended(_)) => assert!(e.to_string().contains("cam.fifo"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(src.next_frame(&mut buf), Err(SourceError::Ended(_))), "stays ended");

    // A new writer: reopen (blocks until it opens) and the frames continue.
    let writer = write_frames(path.clone(), 3, 2, len);
    src.reopen().unwrap();
    for n in 3..5u8 {
        let meta = src.next_frame(&mut buf).unwrap();
        assert_eq!(buf, raw_frame(n, len));
        assert_eq!(meta.sequence, u64::from(n));
    }
    writer.join().unwrap();
    assert!(matches!(src.next_frame(&mut buf), Err(SourceError::Ended(_))));
}

#[test]
fn short_final_frame_is_dropped_and_ends_the_stream() {
    let len = PixelFormat::Rgb24.frame_len(4, 2).unwrap();
    let mut data = raw_frame(1, len);
    data.extend(raw_frame(2, len));
    data.extend(&raw_frame(3, len)[..len / 2]);
    let mut src =
        RawStream::from_reader("test-pipe", Box::new(Cursor::new(data)), PixelFormat::Rgb24, 4, 2)
            .unwrap();
    let mut buf = Vec::new();
    assert_eq!(src.next_frame(&mut buf).unwrap().sequence, 0);
    assert_eq!(buf, raw_frame(1, len));
    assert_eq!(src.next_frame(&mut buf).unwrap().sequence, 1);
    assert_eq!(buf, raw_frame(2, len));
    match src.next_frame(&mut buf) {
        Err(e @ SourceError::Ended(_)) => assert_eq!(e.to_string(), "test-pipe: end of stream"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(src.next_frame(&mut buf), Err(SourceError::Ended(_))));
    assert!(matches!(src.reopen(), Err(SourceError::Config(_))), "a plain reader cannot reopen");

    // End of stream exactly at a frame boundary, and an empty stream.
    let mut src = RawStream::from_reader(
        "exact",
        Box::new(Cursor::new(raw_frame(7, len))),
        PixelFormat::Rgb24,
        4,
        2,
    )
    .unwrap();
    src.next_frame(&mut buf).unwrap();
    assert!(matches!(src.next_frame(&mut buf), Err(SourceError::Ended(_))));
    let mut src =
        RawStream::from_reader("empty", Box::new(std::io::empty()), PixelFormat::Nv12, 4, 2)
            .unwrap();
    assert!(matches!(src.next_frame(&mut buf), Err(SourceError::Ended(_))));
}

#[test]
fn raw_stream_setup_errors() {
    let empty = || Box::new(std::io::empty());
    for (format, w, h) in
        [(PixelFormat::Mjpeg, 4, 2), (PixelFormat::Yuv420, 3, 2), (PixelFormat::Rgb24, 0, 2)]
    {
        match RawStream::from_reader("x", empty(), format, w, h) {
            Err(SourceError::Config(msg)) => assert!(msg.starts_with("x: "), "{msg}"),
            other => panic!("{format} {w}x{h}: {other:?}"),
        }
    }
    let dir = TempDir::new("notfifo");
    std::fs::write(dir.path("plain"), "").unwrap();
    match RawStream::fifo(&dir.path("plain"), PixelFormat::Yuyv, 4, 2) {
        Err(SourceError::Config(msg)) => assert!(msg.contains("not a FIFO"), "{msg}"),
        other => panic!("{other:?}"),
    }
    match RawStream::fifo(&dir.path("missing"), PixelFormat::Yuyv, 4, 2) {
        Err(e @ SourceError::Io(..)) => assert!(e.to_string().contains("fifo:"), "{e}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Opening a camera's source, back-off

#[test]
fn open_builds_the_configured_source() {
    let camera = Camera::new("cam0", Source::TestPattern);
    let mut src = sources::open(&camera, false).unwrap();
    assert_eq!(src.describe(), "testpattern 640x480 yuyv @ 10 fps");
    let mut buf = Vec::new();
    let meta = src.next_frame(&mut buf).unwrap();
    assert_eq!((meta.format, buf.len()), (PixelFormat::Yuyv, 640 * 480 * 2));
    src.reopen().unwrap();

    let mut fifo = Camera::new("pi", "fifo:/nonexistent/x.fifo".parse().unwrap());
    assert!(matches!(sources::open(&fifo, false), Err(SourceError::Config(_))), "no format");
    fifo.format = Some(PixelFormat::Yuv420);
    assert!(matches!(sources::open(&fifo, false), Err(SourceError::Io(..))));
    // A device node that does not exist is an error naming it (daemon/tests/v4l2.rs tests
    // the V4L2 source itself).
    let v4l2 = Camera::new("usb", "v4l2:/dev/video-does-not-exist".parse().unwrap());
    match sources::open(&v4l2, false) {
        Err(e) => assert!(e.to_string().contains("v4l2:/dev/video-does-not-exist"), "{e}"),
        other => panic!("{:?}", other.map(|s| s.describe())),
    }
}

#[test]
fn backoff_doubles_up_to_the_maximum_and_resets() {
    let mut b = Backoff::from_ms(500, 10_000);
    let ms: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
    assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
    assert_eq!(b.attempts(), 8);
    for _ in 0..100 {
        assert_eq!(b.next_delay(), Duration::from_millis(10_000), "no overflow");
    }
    b.reset();
    assert_eq!((b.attempts(), b.next_delay()), (0, Duration::from_millis(500)));

    // The configured policy, and max below initial.
    let mut d = Backoff::new(Retry::default());
    assert_eq!(d.next_delay(), Retry::default().initial);
    assert_eq!(Backoff::default(), Backoff::new(Retry::default()));
    let mut flat = Backoff::from_ms(300, 100);
    assert_eq!([flat.next_delay(), flat.next_delay()], [Duration::from_millis(300); 2]);
}
