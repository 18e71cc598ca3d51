//! Frame sources: where a camera's frames come from.
//!
//! Every source implements [`FrameSource`]: [`FrameSource::next_frame`] fills a caller-owned
//! buffer with one frame (reusing its capacity, so a warm capture loop does not
//! allocate) and returns its [`FrameMeta`].
//!
//! - [`TestPattern`] (`testpattern`): deterministic rendered scenes ([`Scene`]), paced to the
//!   configured fps, the scene changing every `scene_seconds`. Frame `i` is a pure function of
//!   its scene and `i` ([`render_rgb`]), so tests can assert exact bytes.
//! - [`FileSource`] (`file:PATH`): an image or a directory of images (JPEG, PNG, PPM/PGM;
//!   sorted by name, looping forever) decoded once at open to RGB24, paced to the fps.
//! - [`RawStream`] (`stdin:`, `fifo:PATH`): raw frames of a configured format and size, read
//!   as they come. The end of the stream is [`SourceError::Ended`]; a FIFO can be
//!   [reopened](FrameSource::reopen) for the next writer.
//!
//! - [`V4l2Source`](crate::v4l2::V4l2Source) (`v4l2:/dev/videoN`), in [`crate::v4l2`]: mmap
//!   streaming from a capture device, rows at the driver's stride.
//!
//! [`Backoff`] is the retry schedule the capture loop uses between attempts to reopen a
//! vanished source.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Camera, Retry, Source};
use crate::preprocess::{Frame, PixelFormat};

/// Default memory budget for the decoded frames a [`FileSource`] keeps (64 MiB).
pub const DEFAULT_CACHE_BUDGET: usize = 64 << 20;

/// Image file extensions a directory [`FileSource`] plays (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "ppm", "pgm", "pnm"];

/// Pixel format of [`TestPattern`] frames when none is configured: what a typical USB camera
/// delivers, so the default pipeline exercises a real conversion.
pub const DEFAULT_TEST_PATTERN_FORMAT: PixelFormat = PixelFormat::Yuyv;

// ---------------------------------------------------------------------------------------------
// Errors and metadata

/// Why a source could not deliver a frame (or be opened).
#[derive(Debug)]
pub enum SourceError {
    /// The stream ended (the writer closed it, possibly in the middle of a frame, whose
    /// bytes are dropped). Carries the source's description.
    Ended(String),
    /// Reading or opening failed: the source (spec or file path) and the error.
    Io(String, io::Error),
    /// An image could not be decoded; the message names the file.
    Decode(String),
    /// The source cannot be set up as configured; the message names the source.
    Config(String),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Ended(source) => write!(f, "{source}: end of stream"),
            SourceError::Io(source, error) => write!(f, "{source}: {error}"),
            SourceError::Decode(msg) | SourceError::Config(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SourceError::Io(_, error) => Some(error),
            _ => None,
        }
    }
}

/// What [`FrameSource::next_frame`] delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMeta {
    /// Pixel layout of the bytes.
    pub format: PixelFormat,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes per row of the first plane: the format's row bytes, or more for V4L2 drivers
    /// that pad rows (`bytesperline`).
    pub stride: usize,
    /// 0 for the source's first frame, then counting up by one per delivered frame (across
    /// reopens).
    pub sequence: u64,
    /// When the frame was captured (monotonic clock).
    pub captured: Instant,
    /// When the frame was captured, in microseconds since the Unix epoch (wall clock).
    pub captured_unix_us: u64,
}

impl FrameMeta {
    /// The frame these metadata describe, in `data` (the buffer `next_frame` filled).
    pub fn frame<'a>(&self, data: &'a [u8]) -> Frame<'a> {
        Frame {
            format: self.format,
            width: self.width,
            height: self.height,
            stride: self.stride,
            data,
        }
    }
}

/// A source of camera frames.
pub trait FrameSource {
    /// Fills `buf` with the next frame (resizing it to the frame's length, reusing its
    /// capacity) and describes it. Blocks until the frame is due (paced sources) or has
    /// arrived (streams).
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<FrameMeta, SourceError>;

    /// The source, for logs and D-Bus (`testpattern 640x480 yuyv @ 10 fps`, ...).
    fn describe(&self) -> String;

    /// Makes the source deliver frames again after an error such as
    /// [`SourceError::Ended`]. May block (a FIFO waits for its next writer). Sources that
    /// never end do nothing; a source that cannot be reopened (stdin) returns an error.
    fn reopen(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Opens the source of `camera`. `paced` makes the test pattern and file sources sleep to
/// the camera's fps (the daemon always wants this; tests may not).
pub fn open(camera: &Camera, paced: bool) -> Result<Box<dyn FrameSource + Send>, SourceError> {
    let (w, h) = (camera.width as usize, camera.height as usize);
    Ok(match &camera.source {
        Source::TestPattern => Box::new(TestPattern::new(
            camera.format.unwrap_or(DEFAULT_TEST_PATTERN_FORMAT),
            w,
            h,
            camera.fps,
            camera.scene_seconds,
            paced,
        )?),
        Source::File { path } => Box::new(FileSource::open(path, camera.fps, paced)?),
        Source::Stdin | Source::Fifo { .. } => {
            let Some(format) = camera.format else {
                return Err(SourceError::Config(format!(
                    "{}: raw frames need a format (one of yuv420, nv12, yuyv, rgb24)",
                    camera.source
                )));
            };
            match &camera.source {
                Source::Fifo { path } => Box::new(RawStream::fifo(path, format, w, h)?),
                _ => Box::new(RawStream::stdin(format, w, h)?),
            }
        }
        Source::V4l2 { device } => Box::new(crate::v4l2::V4l2Source::open(
            device,
            crate::v4l2::Request::for_camera(camera),
        )?),
    })
}

/// Microseconds since the Unix epoch (0 before it).
pub fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn now_stamps() -> (Instant, u64) {
    (Instant::now(), unix_us(SystemTime::now()))
}

fn meta(format: PixelFormat, width: usize, height: usize, sequence: u64) -> FrameMeta {
    let (captured, captured_unix_us) = now_stamps();
    FrameMeta {
        format,
        width,
        height,
        stride: format.row_bytes(width).unwrap_or(0),
        sequence,
        captured,
        captured_unix_us,
    }
}

fn check_fps(source: &str, fps: f64) -> Result<Duration, SourceError> {
    if fps.is_finite() && fps > 0.0 && fps <= 1000.0 {
        Ok(Duration::from_secs_f64(1.0 / fps))
    } else {
        Err(SourceError::Config(format!("{source}: fps {fps} is not in (0, 1000]")))
    }
}

// ---------------------------------------------------------------------------------------------
// Pacing

/// Sleeps so that frames come out `period` apart: the first at once, each later one at the
/// previous deadline plus `period`. A caller that falls more than one period behind restarts
/// the schedule instead of delivering a burst.
#[derive(Debug)]
struct Pacer {
    period: Duration,
    paced: bool,
    next: Option<Instant>,
}

impl Pacer {
    fn new(period: Duration, paced: bool) -> Pacer {
        Pacer { period, paced, next: None }
    }

    fn wait(&mut self) {
        if !self.paced {
            return;
        }
        let now = Instant::now();
        let next = match self.next {
            None => now + self.period,
            Some(deadline) if deadline > now => {
                std::thread::sleep(deadline - now);
                deadline + self.period
            }
            Some(deadline) if now - deadline > self.period => now + self.period,
            Some(deadline) => deadline + self.period,
        };
        self.next = Some(next);
    }
}

// ---------------------------------------------------------------------------------------------
// Test pattern

/// A [`TestPattern`] scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scene {
    /// Eight vertical bars: white, yellow, cyan, green, magenta, red, blue, black.
    ColourBars,
    /// Red rising left to right, green top to bottom, blue constant 128.
    Gradient,
    /// Black and white squares, `max(1, min(w, h) / 8)` pixels wide, white top left.
    Checkerboard,
    /// An orange square (`max(1, min(w, h) / 4)` wide) on dark blue, moving 4 pixels right and
    /// 3 down per frame, wrapping.
    MovingBox,
}

impl Scene {
    /// The scenes in the order the test pattern plays them.
    pub const ALL: [Scene; 4] =
        [Scene::ColourBars, Scene::Gradient, Scene::Checkerboard, Scene::MovingBox];
}

const BARS: [[u8; 3]; 8] = [
    [255, 255, 255],
    [255, 255, 0],
    [0, 255, 255],
    [0, 255, 0],
    [255, 0, 255],
    [255, 0, 0],
    [0, 0, 255],
    [0, 0, 0],
];

/// Renders frame `index` of `scene` as `width x height` RGB24 into `out` (which must be
/// `width * height * 3` bytes). A pure function of its arguments.
pub fn render_rgb(scene: Scene, index: u64, width: usize, height: usize, out: &mut [u8]) {
    assert_eq!(out.len(), width * height * 3, "render_rgb: output length");
    let ramp = |v: usize, len: usize| if len > 1 { (v * 255 / (len - 1)) as u8 } else { 0 };
    let side = |div: usize| (width.min(height) / div).max(1);
    let (cell, bs) = (side(8), side(4));
    // Box position: (4 i, 3 i) modulo the room left for it (no overflow for any index).
    let wrap = |step: u64, len: usize| {
        let room = (len - bs + 1) as u64;
        (index % room * step % room) as usize
    };
    let (bx, by) = (wrap(4, width), wrap(3, height));
    for (y, row) in out.chunks_exact_mut(width * 3).enumerate() {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let rgb = match scene {
                Scene::ColourBars => BARS[x * 8 / width],
                Scene::Gradient => [ramp(x, width), ramp(y, height), 128],
                Scene::Checkerboard => {
                    if (x / cell + y / cell) % 2 == 0 {
                        [255; 3]
                    } else {
                        [0; 3]
                    }
                }
                Scene::MovingBox => {
                    if (bx..bx + bs).contains(&x) && (by..by + bs).contains(&y) {
                        [255, 160, 0]
                    } else {
                        [16, 24, 80]
                    }
                }
            };
            px.copy_from_slice(&rgb);
        }
    }
}

/// RGB to BT.601 limited-range YCbCr (16.16 fixed point, round half up): the inverse of
/// [`crate::preprocess::yuv_to_rgb`] up to rounding.
#[inline]
pub fn rgb_to_yuv(rgb: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = rgb.map(i32::from);
    let y = (16829 * r + 33039 * g + 6416 * b + (16 << 16) + (1 << 15)) >> 16;
    let u = (-9714 * r - 19070 * g + 28784 * b + (128 << 16) + (1 << 15)) >> 16;
    let v = (28784 * r - 24103 * g - 4681 * b + (128 << 16) + (1 << 15)) >> 16;
    [y, u, v].map(|c| c.clamp(0, 255) as u8)
}

/// Converts a `w x h` RGB24 image to `format` (not MJPEG) in `out`, which must have the
/// format's frame length. Subsampled chroma is the rounded mean of the covered pixels'.
pub fn convert_rgb(rgb: &[u8], w: usize, h: usize, format: PixelFormat, out: &mut [u8]) {
    let px = |x: usize, y: usize| {
        let i = (y * w + x) * 3;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    };
    let yuv = |x: usize, y: usize| rgb_to_yuv(px(x, y));
    match format {
        PixelFormat::Rgb24 => out.copy_from_slice(rgb),
        PixelFormat::Bgr24 => {
            for (o, i) in out.chunks_exact_mut(3).zip(rgb.chunks_exact(3)) {
                o.copy_from_slice(&[i[2], i[1], i[0]]);
            }
        }
        PixelFormat::Grey => {
            for (o, i) in out.iter_mut().zip(rgb.chunks_exact(3)) {
                *o = rgb_to_yuv([i[0], i[1], i[2]])[0];
            }
        }
        PixelFormat::Yuyv => {
            for y in 0..h {
                for x in (0..w).step_by(2) {
                    let (a, b) = (yuv(x, y), yuv(x + 1, y));
                    let o = (y * w + x) * 2;
                    out[o..o + 4].copy_from_slice(&[
                        a[0],
                        avg(&[a[1], b[1]]),
                        b[0],
                        avg(&[a[2], b[2]]),
                    ]);
                }
            }
        }
        PixelFormat::Nv12 | PixelFormat::Yuv420 => {
            let (luma, chroma) = out.split_at_mut(w * h);
            for y in 0..h {
                for x in 0..w {
                    luma[y * w + x] = yuv(x, y)[0];
                }
            }
            let (cw, ch) = (w / 2, h / 2);
            for cy in 0..ch {
                for cx in 0..cw {
                    let q = [
                        yuv(2 * cx, 2 * cy),
                        yuv(2 * cx + 1, 2 * cy),
                        yuv(2 * cx, 2 * cy + 1),
                        yuv(2 * cx + 1, 2 * cy + 1),
                    ];
                    let u = avg(&q.map(|p| p[1]));
                    let v = avg(&q.map(|p| p[2]));
                    if format == PixelFormat::Nv12 {
                        chroma[(cy * cw + cx) * 2] = u;
                        chroma[(cy * cw + cx) * 2 + 1] = v;
                    } else {
                        chroma[cy * cw + cx] = u;
                        chroma[cw * ch + cy * cw + cx] = v;
                    }
                }
            }
        }
        PixelFormat::Mjpeg => unreachable!("convert_rgb: MJPEG is rejected at construction"),
    }
}

fn avg(samples: &[u8]) -> u8 {
    let n = samples.len() as u32;
    ((samples.iter().map(|&s| u32::from(s)).sum::<u32>() + n / 2) / n) as u8
}

/// Deterministic rendered scenes (`testpattern`): the [`Scene`]s in turn, each shown for
/// `scene_seconds` worth of frames (`max(1, round(scene_seconds * fps))`), looping. Frame
/// `i` shows scene [`TestPattern::scene_of`]`(i)` rendered by [`render_rgb`] with index `i`,
/// converted to the requested format (any but MJPEG; YUV as BT.601 limited range).
#[derive(Debug)]
pub struct TestPattern {
    format: PixelFormat,
    width: usize,
    height: usize,
    fps: f64,
    frames_per_scene: u64,
    frame_len: usize,
    sequence: u64,
    pacer: Pacer,
    rgb: Vec<u8>,
}

impl TestPattern {
    /// A test pattern of `format` frames (any but MJPEG) of `width x height` at `fps`,
    /// changing scene every `scene_seconds` (> 0). With `paced` false frames come as fast as
    /// they are asked for (tests).
    pub fn new(
        format: PixelFormat,
        width: usize,
        height: usize,
        fps: f64,
        scene_seconds: f64,
        paced: bool,
    ) -> Result<TestPattern, SourceError> {
        let bad = |msg: String| Err(SourceError::Config(format!("testpattern: {msg}")));
        if format == PixelFormat::Mjpeg {
            return bad("cannot render mjpeg frames".into());
        }
        let Some(frame_len) = format.frame_len(width, height) else {
            return bad(format!("{format} cannot have frame size {width}x{height}"));
        };
        let period = check_fps("testpattern", fps)?;
        if !(scene_seconds.is_finite() && scene_seconds > 0.0) {
            return bad(format!("scene_seconds {scene_seconds} is not positive"));
        }
        let frames_per_scene = ((scene_seconds * fps).round() as u64).max(1);
        Ok(TestPattern {
            format,
            width,
            height,
            fps,
            frames_per_scene,
            frame_len,
            sequence: 0,
            pacer: Pacer::new(period, paced),
            rgb: Vec::new(),
        })
    }

    /// Frames each scene is shown for.
    pub fn frames_per_scene(&self) -> u64 {
        self.frames_per_scene
    }

    /// The scene frame `index` shows.
    pub fn scene_of(&self, index: u64) -> Scene {
        Scene::ALL[(index / self.frames_per_scene % Scene::ALL.len() as u64) as usize]
    }
}

impl FrameSource for TestPattern {
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<FrameMeta, SourceError> {
        self.pacer.wait();
        let (w, h, i) = (self.width, self.height, self.sequence);
        let scene = self.scene_of(i);
        buf.resize(self.frame_len, 0);
        if self.format == PixelFormat::Rgb24 {
            render_rgb(scene, i, w, h, buf);
        } else {
            self.rgb.resize(w * h * 3, 0);
            render_rgb(scene, i, w, h, &mut self.rgb);
            convert_rgb(&self.rgb, w, h, self.format, buf);
        }
        self.sequence += 1;
        Ok(meta(self.format, w, h, i))
    }

    fn describe(&self) -> String {
        format!("testpattern {}x{} {} @ {} fps", self.width, self.height, self.format, self.fps)
    }
}

// ---------------------------------------------------------------------------------------------
// Image files

/// One image of a [`FileSource`]: decoded once at open; its pixels kept while the memory
/// budget allows, otherwise decoded again each time it is shown.
#[derive(Debug)]
struct Image {
    path: PathBuf,
    width: usize,
    height: usize,
    pixels: Option<Vec<u8>>,
}

/// Images from a file or a directory (`file:PATH`), as RGB24 frames at `fps`, looping.
///
/// A directory plays its files with an [image extension](IMAGE_EXTENSIONS) in name order
/// (other files are ignored). Every image is decoded at open: one that fails is skipped with
/// a warning when others work; if none does, opening fails with a [`SourceError::Decode`]
/// naming the (first) file. Decoded frames are cached up to a memory budget
/// ([`DEFAULT_CACHE_BUDGET`]); images beyond it are decoded again whenever they are shown.
/// Images keep their own size, so consecutive frames may differ in width and height.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    images: Vec<Image>,
    fps: f64,
    next: usize,
    sequence: u64,
    pacer: Pacer,
}

impl FileSource {
    /// Opens `path` (an image or a directory of images) with the default cache budget.
    pub fn open(path: &Path, fps: f64, paced: bool) -> Result<FileSource, SourceError> {
        FileSource::open_with_budget(path, fps, paced, DEFAULT_CACHE_BUDGET)
    }

    /// Opens `path`, caching at most `budget` bytes of decoded pixels.
    pub fn open_with_budget(
        path: &Path,
        fps: f64,
        paced: bool,
        budget: usize,
    ) -> Result<FileSource, SourceError> {
        let spec = format!("file:{}", path.display());
        let period = check_fps(&spec, fps)?;
        let io_err = |e| SourceError::Io(spec.clone(), e);
        let files = if std::fs::metadata(path).map_err(io_err)?.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path).map_err(io_err)? {
                let file = entry.map_err(io_err)?.path();
                let image = file
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
                if image && file.is_file() {
                    files.push(file);
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(SourceError::Config(format!(
                    "{spec}: the directory has no images ({})",
                    IMAGE_EXTENSIONS.join(", ")
                )));
            }
            files
        } else {
            vec![path.to_owned()]
        };
        let mut images = Vec::with_capacity(files.len());
        let mut first_error = None;
        let mut cached = 0usize;
        for file in files {
            match crate::imageio::load(&file) {
                Ok((w, h, pixels)) => {
                    let keep = cached + pixels.len() <= budget;
                    if keep {
                        cached += pixels.len();
                    } else {
                        tracing::debug!(
                            "{}: over the {budget}-byte cache budget, decoded when shown",
                            file.display()
                        );
                    }
                    images.push(Image {
                        path: file,
                        width: w as usize,
                        height: h as usize,
                        pixels: keep.then_some(pixels),
                    });
                }
                Err(e) => {
                    tracing::warn!("{spec}: skipping {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        if images.is_empty() {
            let e = first_error.map_or_else(|| "no images".to_owned(), |e| e.to_string());
            return Err(SourceError::Decode(format!("{spec}: {e}")));
        }
        Ok(FileSource {
            path: path.to_owned(),
            images,
            fps,
            next: 0,
            sequence: 0,
            pacer: Pacer::new(period, paced),
        })
    }

    /// The images played, in order.
    pub fn files(&self) -> Vec<&Path> {
        self.images.iter().map(|i| i.path.as_path()).collect()
    }

    /// Bytes of decoded pixels kept in memory.
    pub fn cached_bytes(&self) -> usize {
        self.images.iter().filter_map(|i| i.pixels.as_ref()).map(Vec::len).sum()
    }
}

impl FrameSource for FileSource {
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<FrameMeta, SourceError> {
        self.pacer.wait();
        let image = &self.images[self.next];
        self.next = (self.next + 1) % self.images.len();
        let (w, h) = match &image.pixels {
            Some(pixels) => {
                buf.clear();
                buf.extend_from_slice(pixels);
                (image.width, image.height)
            }
            None => {
                let (w, h, pixels) = crate::imageio::load(&image.path).map_err(|e| {
                    SourceError::Decode(format!("file:{}: {e}", self.path.display()))
                })?;
                buf.clear();
                buf.extend_from_slice(&pixels);
                (w as usize, h as usize)
            }
        };
        let sequence = self.sequence;
        self.sequence += 1;
        Ok(meta(PixelFormat::Rgb24, w, h, sequence))
    }

    fn describe(&self) -> String {
        format!(
            "file:{} ({} image{}) @ {} fps",
            self.path.display(),
            self.images.len(),
            if self.images.len() == 1 { "" } else { "s" },
            self.fps
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Raw frame streams

#[derive(Debug)]
enum Origin {
    Stdin,
    Fifo(PathBuf),
    Reader(String),
}

/// Raw frames of a fixed format and size on standard input (`stdin:`), a named pipe
/// (`fifo:PATH`) or any reader: exactly `format.frame_len(width, height)` bytes per frame,
/// read as they arrive (no pacing).
///
/// The end of the stream, at a frame boundary or in the middle of a frame (whose bytes are
/// dropped), is [`SourceError::Ended`], and every later `next_frame` returns it again until
/// [`reopen`](FrameSource::reopen).
///
/// A FIFO is opened on the first `next_frame`, not by [`RawStream::fifo`]; opening a FIFO
/// for reading **blocks until a writer opens it** (POSIX), so that first call, and every
/// `reopen`, waits for the next writer. Standard input and plain readers cannot be reopened.
pub struct RawStream {
    origin: Origin,
    reader: Option<Box<dyn Read + Send>>,
    ended: bool,
    format: PixelFormat,
    width: usize,
    height: usize,
    frame_len: usize,
    sequence: u64,
}

impl fmt::Debug for RawStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawStream")
            .field("origin", &self.origin)
            .field("open", &self.reader.is_some())
            .field("ended", &self.ended)
            .field("format", &self.format)
            .field("size", &(self.width, self.height))
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl RawStream {
    fn new(
        origin: Origin,
        reader: Option<Box<dyn Read + Send>>,
        format: PixelFormat,
        width: usize,
        height: usize,
    ) -> Result<RawStream, SourceError> {
        let mut stream = RawStream {
            origin,
            reader,
            ended: false,
            format,
            width,
            height,
            frame_len: 0,
            sequence: 0,
        };
        stream.frame_len = match format.frame_len(width, height) {
            Some(len) if format != PixelFormat::Mjpeg => len,
            _ => {
                return Err(SourceError::Config(format!(
                    "{}: {format} frames of {width}x{height} cannot be read as raw frames",
                    stream.spec()
                )))
            }
        };
        Ok(stream)
    }

    /// Raw frames on standard input.
    pub fn stdin(
        format: PixelFormat,
        width: usize,
        height: usize,
    ) -> Result<RawStream, SourceError> {
        RawStream::new(Origin::Stdin, Some(Box::new(io::stdin())), format, width, height)
    }

    /// Raw frames from the FIFO at `path`, which must exist and be a FIFO. Does not open it
    /// (see the type's documentation: opening blocks until a writer appears).
    pub fn fifo(
        path: &Path,
        format: PixelFormat,
        width: usize,
        height: usize,
    ) -> Result<RawStream, SourceError> {
        use std::os::unix::fs::FileTypeExt;
        let stream = RawStream::new(Origin::Fifo(path.to_owned()), None, format, width, height)?;
        let kind = std::fs::metadata(path).map_err(|e| SourceError::Io(stream.spec(), e))?;
        if !kind.file_type().is_fifo() {
            return Err(SourceError::Config(format!(
                "{}: not a FIFO (create one with mkfifo)",
                stream.spec()
            )));
        }
        Ok(stream)
    }

    /// Raw frames from `reader`, called `name` in messages (tests, other pipes).
    pub fn from_reader(
        name: impl Into<String>,
        reader: Box<dyn Read + Send>,
        format: PixelFormat,
        width: usize,
        height: usize,
    ) -> Result<RawStream, SourceError> {
        RawStream::new(Origin::Reader(name.into()), Some(reader), format, width, height)
    }

    /// Bytes per frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    fn spec(&self) -> String {
        match &self.origin {
            Origin::Stdin => "stdin:".to_owned(),
            Origin::Fifo(path) => format!("fifo:{}", path.display()),
            Origin::Reader(name) => name.clone(),
        }
    }

    fn open_fifo(&mut self) -> Result<(), SourceError> {
        if let Origin::Fifo(path) = &self.origin {
            let file = File::open(path).map_err(|e| SourceError::Io(self.spec(), e))?;
            self.reader = Some(Box::new(file));
        }
        Ok(())
    }

    fn end(&mut self) -> SourceError {
        self.ended = true;
        self.reader = None;
        SourceError::Ended(self.spec())
    }
}

impl FrameSource for RawStream {
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<FrameMeta, SourceError> {
        if self.ended {
            return Err(SourceError::Ended(self.spec()));
        }
        if self.reader.is_none() {
            self.open_fifo()?;
        }
        buf.resize(self.frame_len, 0);
        let mut filled = 0;
        while filled < self.frame_len {
            let Some(reader) = self.reader.as_mut() else { return Err(self.end()) };
            match reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    if filled > 0 {
                        tracing::warn!(
                            "{}: stream ended in the middle of a frame ({filled} of {} bytes), \
                             dropped",
                            self.spec(),
                            self.frame_len
                        );
                    }
                    return Err(self.end());
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.ended = true;
                    self.reader = None;
                    return Err(SourceError::Io(self.spec(), e));
                }
            }
        }
        let sequence = self.sequence;
        self.sequence += 1;
        Ok(meta(self.format, self.width, self.height, sequence))
    }

    fn describe(&self) -> String {
        format!("{} {}x{} {}", self.spec(), self.width, self.height, self.format)
    }

    /// Opens the FIFO again, **blocking until a writer opens it**; then frames continue
    /// (sequence numbers too). Standard input and plain readers cannot be reopened.
    fn reopen(&mut self) -> Result<(), SourceError> {
        if !matches!(self.origin, Origin::Fifo(_)) {
            return Err(SourceError::Config(format!("{}: cannot be reopened", self.spec())));
        }
        self.reader = None;
        self.open_fifo()?;
        self.ended = false;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Retry back-off

/// Exponential back-off between attempts to reopen a vanished camera or FIFO: the
/// configured [`Retry`] policy (`initial`, doubling, capped at `max`) plus the attempt count.
/// Pure logic; the caller sleeps.
///
/// ```
/// use prom_daemon::sources::Backoff;
/// use std::time::Duration;
/// let mut b = Backoff::from_ms(100, 1000);
/// let ms: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
/// assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
/// b.reset();
/// assert_eq!(b.next_delay(), Duration::from_millis(100));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    policy: Retry,
    attempt: u32,
}

impl Backoff {
    /// A back-off following `policy`.
    pub fn new(policy: Retry) -> Backoff {
        Backoff { policy, attempt: 0 }
    }

    /// A back-off from `initial_ms` doubling up to `max_ms` (`max_ms` is raised to
    /// `initial_ms` if smaller).
    pub fn from_ms(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff::new(Retry {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms.max(initial_ms)),
        })
    }

    /// The delay to wait before the next attempt; each call doubles the following one, up
    /// to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Attempts made since the last [`reset`](Backoff::reset).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over from the initial delay (call after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(Retry::default())
    }
}
