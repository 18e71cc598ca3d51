//! V4L2 camera capture (`v4l2:/dev/videoN`) with the `v4l` crate: format negotiation and
//! mmap streaming.
//!
//! [`V4l2Source`] opens the device node, checks that it is a single-planar video capture
//! device with streaming I/O, picks a pixel format and size ([`choose_format`]), asks the
//! driver for them (`VIDIOC_S_FMT`) and for the frame rate (`VIDIOC_S_PARM`), and accepts
//! what the driver answers: the real size, stride and rate are logged when they differ from
//! the request and are what [`FrameSource::describe`] and [`FrameMeta`] report. Frames are
//! captured through a few mmap buffers ([`DEFAULT_BUFFERS`]); each dequeued buffer is copied
//! into the caller's buffer ([`copy_frame`]) and handed straight back to the driver.
//!
//! Failure handling (the pipeline retries with [`crate::sources::Backoff`], not this module):
//! - every wait for a frame is bounded ([`Request::timeout`], at least [`FIRST_FRAME_TIMEOUT`]
//!   for the first frame after streaming starts); a stalled camera is a [`SourceError::Io`]
//!   with [`io::ErrorKind::TimedOut`], after which the stream stays usable (the next call
//!   waits again) and [`reopen`](FrameSource::reopen) restarts it;
//! - any other device error (`ENODEV` after an unplug, `EIO`, ...) closes the device and is a
//!   [`SourceError::Io`]; later calls fail until [`reopen`](FrameSource::reopen) opens the node
//!   again and renegotiates everything (the new camera may be a different one);
//! - frames the driver flags as corrupt, or that are too short, are skipped; only
//!   [`MAX_BAD_FRAMES`] of them in a row are an error ([`SourceError::Decode`]).
//!
//! A frame's capture time is the driver's buffer timestamp when the driver says it is from
//! the monotonic clock (its age is measured against [`monotonic_now`] and subtracted from the
//! dequeue [`Instant`]), else the time it was dequeued.
//!
//! Everything that does not need a device (fourcc mapping, format choice, frame interval
//! arithmetic, repacking, timestamps) is a plain function, tested without hardware.

use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use v4l::buffer::Type as BufferType;
use v4l::capability::Flags as CapabilityFlags;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::video::capture::Parameters;
use v4l::video::Capture as _;
use v4l::{Capabilities, Device, Format, FourCC, Fraction, Timestamp};

use crate::config::Camera;
use crate::preprocess::PixelFormat;
use crate::sources::{FrameMeta, FrameSource, SourceError};

/// mmap buffers requested from the driver: one being copied, the others being filled, so a
/// short hiccup of the capture thread does not drop frames.
pub const DEFAULT_BUFFERS: u32 = 4;

/// Longest wait for one frame before the camera counts as stalled.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for the first frame after streaming starts (when longer than the request's
/// timeout): some cameras need a second or two to settle exposure before their first frame,
/// and timing that out would reopen them for ever.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Unusable frames (flagged corrupt, empty, short, not a JPEG) skipped in a row before
/// [`FrameSource::next_frame`] gives up with [`SourceError::Decode`] (about a second at 30 fps).
pub const MAX_BAD_FRAMES: u32 = 30;

/// A buffer timestamp older than this (or in the future) is not trusted; the dequeue time is
/// used instead.
pub const MAX_FRAME_AGE: Duration = Duration::from_secs(5);

/// Order in which `format = "auto"` considers the formats a device offers, cheapest first.
///
/// Preprocessing only reads the few source pixels the model input needs, so what a format
/// costs per frame is mostly the copy of the whole frame out of the mmap buffer, plus any
/// decoding:
/// 1. **NV12**: 1.5 bytes per pixel to copy (also the least USB/CSI bandwidth of the raw
///    formats), chroma sampled directly;
/// 2. **YUYV**: 2 bytes per pixel, the format every UVC camera has, sampled directly;
/// 3. **RGB24**, then **BGR24**: 3 bytes per pixel but no colour conversion at all (equal
///    cost; RGB first because it is the model's channel order);
/// 4. **MJPEG**: few bytes to copy, but every frame needs a JPEG (entropy) decode of the
///    whole image, by far the most CPU per frame even at 1/8 DCT scale, and it is lossy;
/// 5. **GREY**: cheapest of all to copy and convert, but it throws the colour away, which
///    costs an ImageNet-style classifier far more accuracy than any CPU saved, so it is a
///    last resort: [`choose_format`] only considers it when the device offers no colour
///    format at all.
pub const AUTO_ORDER: [PixelFormat; 6] = [
    PixelFormat::Nv12,
    PixelFormat::Yuyv,
    PixelFormat::Rgb24,
    PixelFormat::Bgr24,
    PixelFormat::Mjpeg,
    PixelFormat::Grey,
];

/// `ENODEV`: the device node's device is gone (unplugged); same value on every Linux arch.
const ENODEV: i32 = 19;

/// `V4L2_BUF_FLAG_ERROR`: the driver says the frame's data may be corrupted.
const BUF_FLAG_ERROR: u32 = 0x0000_0040;
/// `V4L2_BUF_FLAG_TIMESTAMP_MASK` and `V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC`.
const BUF_FLAG_TIMESTAMP_MASK: u32 = 0x0000_e000;
const BUF_FLAG_TIMESTAMP_MONOTONIC: u32 = 0x0000_2000;

// ---------------------------------------------------------------------------------------------
// FourCC codes

/// The pixel format of the V4L2 FourCC `code`, among those a V4L2 camera may be asked for
/// ([`PixelFormat::V4L2`]). `JPEG` counts as MJPEG: some drivers label their motion JPEG that
/// way and the frames are the same baseline JPEGs.
pub fn format_from_fourcc(code: [u8; 4]) -> Option<PixelFormat> {
    if &code == b"JPEG" {
        return Some(PixelFormat::Mjpeg);
    }
    PixelFormat::from_fourcc(code).filter(|f| PixelFormat::V4L2.contains(f))
}

/// A FourCC code for messages: its four characters when printable (`YUYV`, `H264`), else
/// its hexadecimal value (`0x00000000`).
pub fn fourcc_name(code: [u8; 4]) -> String {
    if code.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        code.iter().map(|&c| char::from(c)).collect::<String>().trim_end().to_owned()
    } else {
        format!("0x{:08x}", u32::from_le_bytes(code))
    }
}

// ---------------------------------------------------------------------------------------------
// Format choice

/// Frame sizes a device offers for one format (`VIDIOC_ENUM_FRAMESIZES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeRange {
    /// Exactly this size.
    Discrete {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// Any size from the minimum to the maximum in steps (a continuous range has steps of 1).
    Stepwise {
        /// Smallest width.
        min_width: u32,
        /// Largest width.
        max_width: u32,
        /// Width increment (0 or 1: any width).
        step_width: u32,
        /// Smallest height.
        min_height: u32,
        /// Largest height.
        max_height: u32,
        /// Height increment (0 or 1: any height).
        step_height: u32,
    },
}

impl SizeRange {
    /// The size of this range nearest to `width x height` (each side clamped to the range
    /// and rounded to the nearest step).
    pub fn nearest(&self, width: u32, height: u32) -> (u32, u32) {
        match *self {
            SizeRange::Discrete { width, height } => (width, height),
            SizeRange::Stepwise {
                min_width,
                max_width,
                step_width,
                min_height,
                max_height,
                step_height,
            } => (
                snap(width, min_width, max_width, step_width),
                snap(height, min_height, max_height, step_height),
            ),
        }
    }
}

/// `v` clamped to `min..=max` and rounded to the nearest `min + k * step` (half up) that is
/// not above `max`.
fn snap(v: u32, min: u32, max: u32, step: u32) -> u32 {
    let max = max.max(min);
    let v = v.clamp(min, max);
    if step <= 1 {
        return v;
    }
    let (off, step) = (u64::from(v - min), u64::from(step));
    let k = ((off + step / 2) / step).min(u64::from(max - min) / step);
    // k * step <= max - min, so this fits.
    min + (k * step) as u32
}

/// How far `w x h` is from the requested `rw x rh`: the sum of the side differences.
fn size_distance(w: u32, h: u32, rw: u32, rh: u32) -> u64 {
    u64::from(w.abs_diff(rw)) + u64::from(h.abs_diff(rh))
}

/// The size among `sizes` nearest to `width x height` (ties: the larger area, so no
/// resolution is given away) and its [`size_distance`]. No sizes (the driver does not
/// enumerate them) means any size: the request itself at distance 0.
fn nearest_size(sizes: &[SizeRange], width: u32, height: u32) -> (u32, u32, u64) {
    sizes
        .iter()
        .map(|s| {
            let (w, h) = s.nearest(width, height);
            (w, h, size_distance(w, h, width, height))
        })
        .min_by_key(|&(w, h, d)| (d, std::cmp::Reverse(u64::from(w) * u64::from(h))))
        .unwrap_or((width, height, 0))
}

/// One format a device offers (`VIDIOC_ENUM_FMT`) with its frame sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The V4L2 FourCC code.
    pub fourcc: [u8; 4],
    /// The sizes offered; empty when the driver does not enumerate them (any size is
    /// asked for, the driver adjusts it).
    pub sizes: Vec<SizeRange>,
}

/// What to ask the driver for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The FourCC code, as the device spells it (`MJPG` or `JPEG` for MJPEG).
    pub fourcc: [u8; 4],
    /// The pixel format.
    pub format: PixelFormat,
    /// Width to ask for.
    pub width: u32,
    /// Height to ask for.
    pub height: u32,
}

/// Picks the format and size to ask a device for, from what it offers, for a configured
/// `wanted` format (`None`: automatic) and size.
///
/// - `wanted` given: that format (an error naming what the device offers if it has none),
///   at its size nearest to the request.
/// - automatic: the size comes first: among the colour formats (GREY only if the device has
///   no colour format), those whose nearest size is nearest to the request; among these, the
///   cheapest by [`AUTO_ORDER`]. So a camera with YUYV only up to 640x480 but MJPEG at the
///   requested 1280x720 gets MJPEG, and one with both at the requested size gets YUYV.
/// - a device that enumerates no formats at all gets the request as it is (YUYV, the one
///   format all UVC cameras have, when automatic) and the driver's answer decides.
pub fn choose_format(
    offers: &[Offer],
    wanted: Option<PixelFormat>,
    width: u32,
    height: u32,
) -> Result<Choice, String> {
    if offers.is_empty() {
        let format = wanted.unwrap_or(PixelFormat::Yuyv);
        return Ok(Choice { fourcc: format.fourcc(), format, width, height });
    }
    let usable: Vec<(PixelFormat, &Offer)> =
        offers.iter().filter_map(|o| Some((format_from_fourcc(o.fourcc)?, o))).collect();
    let candidates: Vec<(PixelFormat, &Offer)> = match wanted {
        Some(want) => usable.iter().copied().filter(|&(f, _)| f == want).collect(),
        None => {
            let colour: Vec<_> =
                usable.iter().copied().filter(|&(f, _)| f != PixelFormat::Grey).collect();
            if colour.is_empty() {
                usable
            } else {
                colour
            }
        }
    };
    let rank = |f: PixelFormat| AUTO_ORDER.iter().position(|&g| g == f).unwrap_or(usize::MAX);
    candidates
        .into_iter()
        .map(|(format, offer)| {
            let (w, h, distance) = nearest_size(&offer.sizes, width, height);
            (distance, rank(format), Choice { fourcc: offer.fourcc, format, width: w, height: h })
        })
        .min_by_key(|&(distance, rank, _)| (distance, rank))
        .map(|(_, _, choice)| choice)
        .ok_or_else(|| {
            let offered: Vec<String> = offers.iter().map(|o| fourcc_name(o.fourcc)).collect();
            match wanted {
                Some(want) => format!(
                    "the device does not offer {want} (it offers {}); set format = \"auto\" \
                     or one of those",
                    offered.join(", ")
                ),
                None => format!(
                    "none of the device's formats ({}) can be used (expected one of {})",
                    offered.join(", "),
                    PixelFormat::V4L2.map(PixelFormat::name).join(", ")
                ),
            }
        })
}

// ---------------------------------------------------------------------------------------------
// Frame rate

/// The frame interval (`numerator / denominator` seconds per frame) to ask for `fps`:
/// `1/fps` for whole rates, `1001/(1000 fps')` for the NTSC family (29.97 -> 1001/30000,
/// 59.94, 23.976), else `fps` to 1/1000 as a reduced fraction (7.5 -> 2/15). `fps` is
/// clamped to 0.001..=1000.
pub fn fps_to_interval(fps: f64) -> (u32, u32) {
    let fps = if fps.is_finite() { fps.clamp(0.001, 1000.0) } else { 30.0 };
    if (fps - fps.round()).abs() < 1e-6 && fps >= 1.0 {
        return (1, fps.round() as u32);
    }
    let ntsc = fps * 1.001;
    if ntsc >= 1.0 && (ntsc - ntsc.round()).abs() < 1e-3 {
        return (1001, ntsc.round() as u32 * 1000);
    }
    let (num, den) = (1000u32, ((fps * 1000.0).round() as u32).max(1));
    let g = gcd(num, den);
    (num / g, den / g)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Frames per second of an interval of `numerator / denominator` seconds; `None` if either
/// is zero (a driver that does not report its rate).
pub fn interval_to_fps(numerator: u32, denominator: u32) -> Option<f64> {
    (numerator != 0 && denominator != 0).then(|| f64::from(denominator) / f64::from(numerator))
}

/// `fps` for messages: at most two decimals, no trailing zeros (`30`, `29.97`, `7.5`).
pub fn format_fps(fps: f64) -> String {
    let text = format!("{fps:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Whether the driver's rate is not what was asked for (more than 0.5 % off, i.e. not just
/// rounding such as 29.97 for 30).
fn fps_differs(asked: f64, got: f64) -> bool {
    (got - asked).abs() > asked * 0.005
}

// ---------------------------------------------------------------------------------------------
// Frame layout and copying

/// The frame layout the driver agreed to (its `VIDIOC_S_FMT` answer), validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureFormat {
    format: PixelFormat,
    width: usize,
    height: usize,
    stride: usize,
    min_len: usize,
    padded_len: usize,
}

impl CaptureFormat {
    /// The layout of frames of `fourcc`, `width x height`, `bytesperline` bytes from one row
    /// of the first plane to the next (NV12's UV plane starts right after `bytesperline x
    /// height` bytes and shares the stride; 0 means tightly packed). Errors say what is wrong.
    pub fn from_driver(
        fourcc: [u8; 4],
        width: u32,
        height: u32,
        bytesperline: u32,
    ) -> Result<CaptureFormat, String> {
        let Some(format) = format_from_fourcc(fourcc) else {
            return Err(format!("pixel format {} is not supported", fourcc_name(fourcc)));
        };
        let (w, h) = (width as usize, height as usize);
        if w == 0 || h == 0 {
            return Err(format!("{format} frames of {width}x{height}: the size is empty"));
        }
        if format == PixelFormat::Mjpeg {
            return Ok(CaptureFormat {
                format,
                width: w,
                height: h,
                stride: 0,
                min_len: 0,
                padded_len: 0,
            });
        }
        let bad = || format!("{format} frames of {width}x{height} cannot be read");
        let row = format.row_bytes(w).ok_or_else(bad)?;
        format.frame_len(w, h).ok_or_else(bad)?;
        let stride = if bytesperline == 0 { row } else { bytesperline as usize };
        if stride < row {
            return Err(format!(
                "{format} frames of {width}x{height}: bytesperline {stride} is less than a \
                 row ({row} bytes)"
            ));
        }
        let mut layout =
            CaptureFormat { format, width: w, height: h, stride, min_len: 0, padded_len: 0 };
        // Checked once here, so the per-frame arithmetic cannot overflow.
        let rows: usize = layout.planes().iter().map(|p| p.0).sum();
        let last = layout.planes().into_iter().rfind(|p| p.0 > 0).map_or(0, |p| p.1);
        layout.padded_len = stride.checked_mul(rows).ok_or_else(bad)?;
        layout.min_len = layout.padded_len - stride + last;
        Ok(layout)
    }

    /// The pixel format.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The driver's bytes per row (`bytesperline`); 0 for MJPEG.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Bytes of one tightly packed row of the first plane; 0 for MJPEG.
    pub fn row_bytes(&self) -> usize {
        self.format.row_bytes(self.width).unwrap_or(0)
    }

    /// The fewest bytes a raw frame can have: up to the last byte of its last row (the
    /// padding after it may be missing); 0 for MJPEG.
    pub fn min_len(&self) -> usize {
        self.min_len
    }

    /// Bytes of a raw frame with every row padded to the stride; 0 for MJPEG.
    pub fn padded_len(&self) -> usize {
        self.padded_len
    }

    /// `(rows, bytes per row)` of each plane (the second is `(0, 0)` for one-plane formats).
    fn planes(&self) -> [(usize, usize); 2] {
        match self.format {
            PixelFormat::Nv12 => [(self.height, self.width), (self.height / 2, self.width)],
            PixelFormat::Mjpeg => [(0, 0); 2],
            _ => [(self.height, self.row_bytes()), (0, 0)],
        }
    }
}

/// How [`copy_frame`] lays a raw frame out in the caller's buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Packing {
    /// As the driver does, rows `bytesperline` apart: one `memcpy` per frame. The
    /// [`FrameMeta::stride`] is then the driver's and may exceed the packed row.
    #[default]
    Driver,
    /// Rows packed tightly (stride = row bytes), one copy per row: for consumers that do not
    /// honour a stride.
    Tight,
}

/// Why a dequeued frame was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadFrame {
    /// The driver flagged the buffer as corrupt (`V4L2_BUF_FLAG_ERROR`).
    Corrupt,
    /// No bytes (`bytesused` = 0).
    Empty,
    /// A raw frame shorter than its format, size and stride need.
    Short {
        /// Bytes needed.
        needed: usize,
        /// Bytes the driver delivered.
        got: usize,
    },
    /// An MJPEG frame that does not start with a JPEG start-of-image marker.
    NotJpeg,
}

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadFrame::Corrupt => f.write_str("the driver flagged the frame as corrupt"),
            BadFrame::Empty => f.write_str("the frame is empty"),
            BadFrame::Short { needed, got } => {
                write!(f, "the frame has {got} bytes, its format and size need {needed}")
            }
            BadFrame::NotJpeg => f.write_str("the MJPEG frame does not start with a JPEG marker"),
        }
    }
}

/// The JPEG image in an MJPEG buffer's used bytes: it must start with the start-of-image
/// marker (`FF D8`); anything after the last end-of-image marker (`FF D9`) is cut off, since
/// drivers pad frames with zeros or leave stale bytes there. A frame without an end marker is
/// kept whole (the decoder decides).
pub fn jpeg_payload(data: &[u8]) -> Result<&[u8], BadFrame> {
    if data.is_empty() {
        return Err(BadFrame::Empty);
    }
    if !data.starts_with(&[0xff, 0xd8]) {
        return Err(BadFrame::NotJpeg);
    }
    // Searching from the end: trailing padding is short, and an EOI inside the image (an
    // embedded EXIF thumbnail) comes before the real one.
    match data.windows(2).rposition(|w| w == [0xff, 0xd9]) {
        Some(i) if i >= 2 => Ok(&data[..i + 2]),
        _ => Ok(data),
    }
}

/// Copies one dequeued frame, the first `bytesused` bytes of the mmap buffer `data`, into
/// `buf` (replacing its contents, reusing its capacity: no allocation once it has grown to a
/// frame) laid out as `packing` says, and returns the frame's stride (0 for MJPEG).
///
/// A `bytesused` beyond the buffer is clamped to it. A raw frame keeps at most
/// [`CaptureFormat::padded_len`] bytes (drivers may report a larger `sizeimage`) and must
/// have at least [`CaptureFormat::min_len`]; an MJPEG frame is its [`jpeg_payload`].
pub fn copy_frame(
    layout: &CaptureFormat,
    data: &[u8],
    bytesused: usize,
    packing: Packing,
    buf: &mut Vec<u8>,
) -> Result<usize, BadFrame> {
    let data = &data[..bytesused.min(data.len())];
    if data.is_empty() {
        return Err(BadFrame::Empty);
    }
    if layout.format == PixelFormat::Mjpeg {
        let jpeg = jpeg_payload(data)?;
        buf.clear();
        buf.extend_from_slice(jpeg);
        return Ok(0);
    }
    if data.len() < layout.min_len {
        return Err(BadFrame::Short { needed: layout.min_len, got: data.len() });
    }
    buf.clear();
    match packing {
        Packing::Driver => {
            buf.extend_from_slice(&data[..data.len().min(layout.padded_len)]);
            Ok(layout.stride)
        }
        Packing::Tight => {
            let mut plane = 0;
            for (rows, row) in layout.planes() {
                for r in 0..rows {
                    buf.extend_from_slice(&data[plane + r * layout.stride..][..row]);
                }
                plane += rows * layout.stride;
            }
            Ok(layout.row_bytes())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timestamps

/// Whether V4L2 buffer `flags` say the timestamp is from the monotonic clock
/// (`V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC`, the clock of [`Instant`] on Linux), rather than
/// copied from elsewhere or unknown.
pub fn is_monotonic_timestamp(flags: u32) -> bool {
    flags & BUF_FLAG_TIMESTAMP_MASK == BUF_FLAG_TIMESTAMP_MONOTONIC
}

/// A `timeval` as a duration since the clock's origin; `None` if negative or malformed.
pub fn timeval_to_duration(sec: i64, usec: i64) -> Option<Duration> {
    let sec = u64::try_from(sec).ok()?;
    let usec = u32::try_from(usec).ok().filter(|&u| u < 1_000_000)?;
    Some(Duration::new(sec, usec * 1000))
}

/// How long ago a frame stamped `captured` was taken, with the clock now at `now`; `None`
/// when the stamp is in the future or older than [`MAX_FRAME_AGE`] (not to be trusted).
pub fn frame_age(captured: Duration, now: Duration) -> Option<Duration> {
    now.checked_sub(captured).filter(|&age| age <= MAX_FRAME_AGE)
}

/// The current `CLOCK_MONOTONIC` reading (the clock of V4L2's monotonic buffer stamps and
/// of [`Instant`] on Linux), through rustix, which zbus already brings in.
pub fn monotonic_now() -> Option<Duration> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let sec = u64::try_from(t.tv_sec).ok()?;
    let nsec = u32::try_from(t.tv_nsec).ok().filter(|&n| n < 1_000_000_000)?;
    Some(Duration::new(sec, nsec))
}

/// Capture time of a frame dequeued at `now`: the driver's timestamp when it is monotonic and
/// plausible, else `now`; as an [`Instant`] and as microseconds since the Unix epoch.
fn capture_stamps(now: Instant, flags: u32, stamp: Timestamp) -> (Instant, u64) {
    let wall = SystemTime::now();
    let age = is_monotonic_timestamp(flags)
        .then(|| {
            // time_t is i32 on 32-bit ARM.
            #[allow(clippy::useless_conversion)]
            let (sec, usec) = (i64::from(stamp.sec), i64::from(stamp.usec));
            frame_age(timeval_to_duration(sec, usec)?, monotonic_now()?)
        })
        .flatten()
        .unwrap_or_default();
    let captured = now.checked_sub(age).unwrap_or(now);
    let wall = wall.checked_sub(age).unwrap_or(wall);
    (captured, crate::sources::unix_us(wall))
}

// ---------------------------------------------------------------------------------------------
// The source

/// What to ask a V4L2 device for.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Pixel format; `None` picks one automatically ([`choose_format`], [`AUTO_ORDER`]).
    pub format: Option<PixelFormat>,
    /// Width to ask for (the driver may give another).
    pub width: u32,
    /// Height to ask for.
    pub height: u32,
    /// Frames per second to ask for (0.001..=1000).
    pub fps: f64,
    /// mmap buffers (2..=32).
    pub buffers: u32,
    /// Longest wait for one frame (1 ms ..= 1 hour); for the first frame after streaming
    /// starts at least [`FIRST_FRAME_TIMEOUT`].
    pub timeout: Duration,
    /// Layout of the frames handed out.
    pub packing: Packing,
}

impl Request {
    /// The request for `camera` (its format, size and fps), with [`DEFAULT_BUFFERS`],
    /// [`DEFAULT_TIMEOUT`] and the driver's stride.
    pub fn for_camera(camera: &Camera) -> Request {
        Request {
            format: camera.format,
            width: camera.width,
            height: camera.height,
            fps: camera.fps,
            buffers: DEFAULT_BUFFERS,
            timeout: DEFAULT_TIMEOUT,
            packing: Packing::Driver,
        }
    }

    fn check(&self) -> Result<(), String> {
        if let Some(format) = self.format.filter(|f| !PixelFormat::V4L2.contains(f)) {
            return Err(format!("{format} is not a V4L2 capture format"));
        }
        if self.width == 0 || self.height == 0 {
            return Err(format!("frame size {}x{} is empty", self.width, self.height));
        }
        if !(self.fps.is_finite() && (0.001..=1000.0).contains(&self.fps)) {
            return Err(format!("fps {} is not in 0.001..=1000", self.fps));
        }
        if !(2..=32).contains(&self.buffers) {
            return Err(format!("{} buffers is not in 2..=32", self.buffers));
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&self.timeout) {
            return Err(format!("timeout {:?} is not in 1 ms ..= 1 h", self.timeout));
        }
        Ok(())
    }
}

/// A streaming capture: the mmap stream (which owns the device's file descriptor).
struct Capture {
    stream: MmapStream<'static>,
    /// Every buffer is with the driver (a wait for a frame was cut short), so the stream's
    /// notion of the buffer held by us is stale: the next frame must be dequeued first.
    all_queued: bool,
    /// A frame has arrived since streaming started (the short timeout applies).
    started: bool,
}

/// What the driver agreed to when the device was opened.
struct Session {
    capture: Capture,
    layout: CaptureFormat,
    fps: Option<f64>,
    driver: String,
    card: String,
}

/// A V4L2 capture device (`v4l2:/dev/videoN`): see the [module documentation](self).
pub struct V4l2Source {
    device: PathBuf,
    spec: String,
    request: Request,
    capture: Option<Capture>,
    layout: CaptureFormat,
    fps: Option<f64>,
    driver: String,
    card: String,
    sequence: u64,
    last_driver_sequence: Option<u32>,
    lost: u64,
}

impl fmt::Debug for V4l2Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V4l2Source")
            .field("device", &self.device)
            .field("open", &self.capture.is_some())
            .field("layout", &self.layout)
            .field("fps", &self.fps)
            .field("driver", &self.driver)
            .field("card", &self.card)
            .field("sequence", &self.sequence)
            .field("lost", &self.lost)
            .finish()
    }
}

impl V4l2Source {
    /// Opens `device`, negotiates `request` and sets up streaming (which starts with the
    /// first frame). Errors name the device: [`SourceError::Io`] when it cannot be opened or
    /// an ioctl fails, [`SourceError::Config`] when it is not a usable capture device or
    /// offers nothing usable.
    pub fn open(device: &Path, request: Request) -> Result<V4l2Source, SourceError> {
        let spec = format!("v4l2:{}", device.display());
        request.check().map_err(|m| SourceError::Config(format!("{spec}: {m}")))?;
        let session = start(device, &spec, &request)?;
        let mut source = V4l2Source {
            device: device.to_owned(),
            spec,
            request,
            capture: None,
            layout: session.layout,
            fps: None,
            driver: String::new(),
            card: String::new(),
            sequence: 0,
            last_driver_sequence: None,
            lost: 0,
        };
        source.install(session);
        Ok(source)
    }

    /// The negotiated frame layout (format, size, stride).
    pub fn layout(&self) -> CaptureFormat {
        self.layout
    }

    /// The frame rate the driver reports; `None` if it does not.
    pub fn fps(&self) -> Option<f64> {
        self.fps
    }

    /// The driver's name (`uvcvideo`).
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// The device's name (`HD Pro Webcam C920`).
    pub fn card(&self) -> &str {
        &self.card
    }

    /// Whether the device is open (false after a device error until a successful reopen).
    pub fn is_open(&self) -> bool {
        self.capture.is_some()
    }

    /// Frames the driver captured but this source did not deliver (skipped as unusable, or
    /// dropped by the driver), from the gaps in the driver's frame sequence numbers.
    pub fn lost_frames(&self) -> u64 {
        self.lost
    }

    fn install(&mut self, session: Session) {
        self.capture = Some(session.capture);
        self.layout = session.layout;
        self.fps = session.fps;
        self.driver = session.driver;
        self.card = session.card;
        self.last_driver_sequence = None;
    }

    /// Stops streaming and closes the device, never panicking.
    fn close(&mut self) {
        let Some(mut capture) = self.capture.take() else { return };
        // The v4l crate panics in its Drop impls when VIDIOC_STREAMOFF or freeing the
        // buffers fails with anything but ENODEV. Stop here first: if that fails otherwise,
        // leak the stream (mappings and descriptor) rather than risk a panic, or a panic
        // while unwinding (an abort); else drop it, catching a panic from freeing the buffers.
        match capture.stream.stop() {
            Err(e) if e.raw_os_error() != Some(ENODEV) => {
                tracing::warn!(
                    "{}: cannot stop streaming ({e}); leaking its buffers and descriptor",
                    self.spec
                );
                std::mem::forget(capture);
            }
            _ => {
                if panic::catch_unwind(AssertUnwindSafe(move || drop(capture))).is_err() {
                    tracing::warn!("{}: releasing the capture buffers failed", self.spec);
                }
            }
        }
    }

    fn closed_error(&self) -> SourceError {
        SourceError::Io(
            self.spec.clone(),
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the device was closed after an error and must be reopened",
            ),
        )
    }
}

impl Drop for V4l2Source {
    fn drop(&mut self) {
        self.close();
    }
}

impl FrameSource for V4l2Source {
    /// Waits (at most [`Request::timeout`] per dequeue) for the next usable frame and copies
    /// it into `buf` ([`copy_frame`], with the request's [`Packing`]). The capture time is
    /// the driver's timestamp when it is monotonic, else the dequeue time.
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<FrameMeta, SourceError> {
        let Some(capture) = self.capture.as_mut() else { return Err(self.closed_error()) };
        let frame = match next_buffer(capture, &self.layout, &self.request, buf) {
            Ok(frame) => frame,
            Err(Failure::Timeout(waited)) => {
                return Err(SourceError::Io(
                    self.spec.clone(),
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no frame within {waited:?}: the camera stalled"),
                    ),
                ))
            }
            Err(Failure::Bad(why)) => {
                return Err(SourceError::Decode(format!(
                    "{}: {MAX_BAD_FRAMES} unusable frames in a row (the last: {why})",
                    self.spec
                )))
            }
            Err(Failure::Device(e)) => {
                self.close();
                return Err(SourceError::Io(self.spec.clone(), e));
            }
        };
        if let Some(previous) = self.last_driver_sequence {
            // Drivers that do not count frames (always 0) give a huge gap: ignored.
            let gap = frame.driver_sequence.wrapping_sub(previous).wrapping_sub(1);
            if gap < 1 << 16 {
                self.lost += u64::from(gap);
            }
        }
        self.last_driver_sequence = Some(frame.driver_sequence);
        let sequence = self.sequence;
        self.sequence += 1;
        Ok(FrameMeta {
            format: self.layout.format,
            width: self.layout.width,
            height: self.layout.height,
            stride: frame.stride,
            sequence,
            captured: frame.captured,
            captured_unix_us: frame.captured_unix_us,
        })
    }

    /// `v4l2:/dev/video0 640x480 yuyv @ 30 fps (driver uvcvideo, card "HD Webcam")`, with
    /// what the driver agreed to (`? fps` if it does not report its rate).
    fn describe(&self) -> String {
        let fps = self.fps.map_or_else(|| "?".to_owned(), format_fps);
        format!(
            "{} {}x{} {} @ {fps} fps (driver {}, card {:?})",
            self.spec,
            self.layout.width,
            self.layout.height,
            self.layout.format,
            self.driver,
            self.card
        )
    }

    /// Closes the device and opens it again, renegotiating format, size and rate (the frame
    /// sequence numbers continue). On error the device stays closed.
    fn reopen(&mut self) -> Result<(), SourceError> {
        self.close();
        let before = self.describe();
        let session = start(&self.device, &self.spec, &self.request)?;
        self.install(session);
        let after = self.describe();
        if after != before {
            tracing::info!("{}: reopened as {after}", self.spec);
        }
        Ok(())
    }
}

/// Why [`next_buffer`] delivered nothing.
enum Failure {
    /// No frame within this timeout.
    Timeout(Duration),
    /// [`MAX_BAD_FRAMES`] unusable frames in a row; the last one's defect.
    Bad(BadFrame),
    /// The device failed.
    Device(io::Error),
}

/// A frame copied out of a buffer.
struct Captured {
    stride: usize,
    captured: Instant,
    captured_unix_us: u64,
    driver_sequence: u32,
}

/// What to do about an error from waiting for or dequeuing a buffer.
enum Next {
    /// A signal interrupted the wait: wait again.
    Retry,
    /// The wait timed out.
    Timeout,
    /// The device failed.
    Fail,
}

fn classify(e: &io::Error) -> Next {
    match e.kind() {
        io::ErrorKind::Interrupted => Next::Retry,
        // The v4l crate reports poll's timeout as TimedOut without an OS error code; a
        // driver's ETIMEDOUT (raw error 110) is a device failure.
        io::ErrorKind::TimedOut if e.raw_os_error().is_none() => Next::Timeout,
        _ => Next::Fail,
    }
}

/// Dequeues frames until a usable one is copied into `buf`, handing each buffer back to the
/// driver on the next call (the v4l stream's `next` queues the previous buffer, then waits).
fn next_buffer(
    capture: &mut Capture,
    layout: &CaptureFormat,
    request: &Request,
    buf: &mut Vec<u8>,
) -> Result<Captured, Failure> {
    let timeout = if capture.started {
        request.timeout
    } else {
        let first = request.timeout.max(FIRST_FRAME_TIMEOUT);
        capture.stream.set_timeout(first);
        first
    };
    let mut bad = 0;
    loop {
        if capture.all_queued {
            // A wait was cut short after the stream had queued its held buffer again: take
            // one back first (its frame is lost: the stream only shows the buffers `next`
            // returns), so that `next` queues a buffer we really hold.
            match CaptureStream::dequeue(&mut capture.stream) {
                Ok(_) => capture.all_queued = false,
                Err(e) => match classify(&e) {
                    Next::Retry => continue,
                    Next::Timeout => return Err(Failure::Timeout(timeout)),
                    Next::Fail => return Err(Failure::Device(e)),
                },
            }
        }
        let (data, meta) = match CaptureStream::next(&mut capture.stream) {
            Ok(frame) => frame,
            Err(e) => match classify(&e) {
                Next::Retry => {
                    capture.all_queued = true;
                    continue;
                }
                Next::Timeout => {
                    capture.all_queued = true;
                    return Err(Failure::Timeout(timeout));
                }
                Next::Fail => return Err(Failure::Device(e)),
            },
        };
        let now = Instant::now();
        let (flags, stamp, sequence) = (u32::from(meta.flags), meta.timestamp, meta.sequence);
        let copied = if flags & BUF_FLAG_ERROR != 0 {
            Err(BadFrame::Corrupt)
        } else {
            copy_frame(layout, data, meta.bytesused as usize, request.packing, buf)
        };
        if !capture.started {
            capture.started = true;
            capture.stream.set_timeout(request.timeout);
        }
        match copied {
            Ok(stride) => {
                let (captured, captured_unix_us) = capture_stamps(now, flags, stamp);
                return Ok(Captured {
                    stride,
                    captured,
                    captured_unix_us,
                    driver_sequence: sequence,
                });
            }
            Err(why) => {
                bad += 1;
                tracing::debug!("skipping frame {sequence}: {why}");
                if bad >= MAX_BAD_FRAMES {
                    return Err(Failure::Bad(why));
                }
            }
        }
    }
}

/// Runs a `v4l` call that may panic on driver data it cannot parse (an unknown colorspace, a
/// name cut in the middle of a UTF-8 character), turning the panic into an error. `what`
/// says what was being done.
fn guarded<T>(
    spec: &str,
    what: &str,
    call: impl FnOnce() -> io::Result<T>,
) -> Result<T, SourceError> {
    match panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(SourceError::Io(format!("{spec}: {what}"), e)),
        Err(_) => Err(SourceError::Config(format!("{spec}: {what}: {UNPARSABLE}"))),
    }
}

const UNPARSABLE: &str = "the driver's answer could not be parsed by the v4l crate";

/// Lists the formats the device offers, each with its frame sizes. Nothing listed (the
/// listing failed) lets the driver's answer to the request decide.
fn enumerate(device: &Device, spec: &str) -> Vec<Offer> {
    let formats = guarded(spec, "listing formats (VIDIOC_ENUM_FMT)", || device.enum_formats())
        .unwrap_or_else(|e| {
            tracing::warn!("{e}; asking for the configured format");
            Vec::new()
        });
    let mut offers = Vec::with_capacity(formats.len());
    for description in formats {
        let fourcc = description.fourcc;
        // A driver without VIDIOC_ENUM_FRAMESIZES: any size (the driver adjusts it).
        let sizes = guarded(spec, "listing frame sizes", || device.enum_framesizes(fourcc))
            .unwrap_or_default()
            .into_iter()
            .map(|s| match s.size {
                FrameSizeEnum::Discrete(d) => {
                    SizeRange::Discrete { width: d.width, height: d.height }
                }
                FrameSizeEnum::Stepwise(s) => SizeRange::Stepwise {
                    min_width: s.min_width,
                    max_width: s.max_width,
                    step_width: s.step_width,
                    min_height: s.min_height,
                    max_height: s.max_height,
                    step_height: s.step_height,
                },
            })
            .collect();
        offers.push(Offer { fourcc: fourcc.repr, sizes });
    }
    offers
}

/// Opens the device node and negotiates `request`: capabilities, format and size, frame
/// rate, buffers.
fn start(path: &Path, spec: &str, request: &Request) -> Result<Session, SourceError> {
    let device = Device::with_path(path).map_err(|e| SourceError::Io(spec.to_owned(), e))?;
    let caps = match guarded(spec, "VIDIOC_QUERYCAP", || device.query_caps()) {
        Ok(caps) => caps,
        Err(SourceError::Io(_, e)) if e.raw_os_error() == Some(25) => {
            // ENOTTY: the node does not answer V4L2 ioctls at all.
            return Err(SourceError::Config(format!("{spec}: not a V4L2 device ({e})")));
        }
        Err(SourceError::Config(m)) => {
            // The v4l crate insists on UTF-8 names, and drivers cut long names to 31 bytes,
            // possibly inside a character: carry on without the names and checks.
            tracing::warn!("{m}; the device's capabilities are not checked");
            Capabilities {
                driver: "?".into(),
                card: "?".into(),
                bus: String::new(),
                version: (0, 0, 0),
                capabilities: CapabilityFlags::empty(),
            }
        }
        Err(e) => return Err(e),
    };
    let flags = caps.capabilities;
    // Drivers older than device_caps (Linux 3.3) report none: nothing to check then.
    if !flags.is_empty() {
        if !flags.contains(CapabilityFlags::VIDEO_CAPTURE) {
            let why = if flags.contains(CapabilityFlags::VIDEO_CAPTURE_MPLANE) {
                "it is a multi-planar capture device, which is not supported (Raspberry Pi \
                 CSI cameras: feed `rpicam-vid ... -o -` to a stdin: or fifo: source)"
            } else {
                "it is not a video capture device"
            };
            return Err(SourceError::Config(format!(
                "{spec} ({}, card {:?}): {why}",
                caps.driver, caps.card
            )));
        }
        if !flags.contains(CapabilityFlags::STREAMING) {
            return Err(SourceError::Config(format!(
                "{spec} ({}, card {:?}): the device does not support streaming I/O",
                caps.driver, caps.card
            )));
        }
    }
    let offers = enumerate(&device, spec);
    tracing::debug!(
        "{spec}: offers {}",
        offers
            .iter()
            .map(|o| format!("{} ({} sizes)", fourcc_name(o.fourcc), o.sizes.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let choice = choose_format(&offers, request.format, request.width, request.height)
        .map_err(|m| SourceError::Config(format!("{spec}: {m}")))?;
    let asked = Format::new(choice.width, choice.height, FourCC::new(&choice.fourcc));
    let got = guarded(spec, "setting the format (VIDIOC_S_FMT)", || device.set_format(&asked))?;
    let layout = CaptureFormat::from_driver(got.fourcc.repr, got.width, got.height, got.stride)
        .map_err(|m| {
            SourceError::Config(format!(
                "{spec}: asked for {} {}x{}, the driver answered with {m}",
                choice.format, choice.width, choice.height
            ))
        })?;
    if layout.format != choice.format {
        if request.format.is_some() {
            return Err(SourceError::Config(format!(
                "{spec}: asked for {}, the driver gave {}",
                choice.format, layout.format
            )));
        }
        tracing::warn!("{spec}: asked for {}, the driver gave {}", choice.format, layout.format);
    }
    if (layout.width, layout.height) != (request.width as usize, request.height as usize) {
        tracing::info!(
            "{spec}: asked for {}x{}, the driver gave {}x{}",
            request.width,
            request.height,
            layout.width,
            layout.height
        );
    }
    let fps = negotiate_fps(&device, spec, request.fps);
    let mut stream = guarded(spec, "allocating capture buffers (VIDIOC_REQBUFS)", || {
        MmapStream::with_buffers(&device, BufferType::VideoCapture, request.buffers)
    })?;
    stream.set_timeout(request.timeout);
    Ok(Session {
        capture: Capture { stream, all_queued: false, started: false },
        layout,
        fps,
        driver: caps.driver,
        card: caps.card,
    })
}

/// Asks for `fps` (after the format: UVC resets the rate when the format changes) and
/// returns the rate the driver reports. A driver without frame rate control is logged and
/// runs at its own rate.
fn negotiate_fps(device: &Device, spec: &str, fps: f64) -> Option<f64> {
    let (numerator, denominator) = fps_to_interval(fps);
    let asked = Parameters::new(Fraction::new(numerator, denominator));
    let params =
        match guarded(spec, "setting the frame rate (VIDIOC_S_PARM)", || device.set_params(&asked))
        {
            Ok(params) => Some(params),
            Err(e) => {
                tracing::info!("{e}; the driver's own frame rate applies");
                guarded(spec, "VIDIOC_G_PARM", || device.params()).ok()
            }
        };
    let got = params.and_then(|p| interval_to_fps(p.interval.numerator, p.interval.denominator));
    match got {
        Some(got) if fps_differs(fps, got) => tracing::info!(
            "{spec}: asked for {} fps, the driver gave {} fps",
            format_fps(fps),
            format_fps(got)
        ),
        None => tracing::info!("{spec}: the driver does not report its frame rate"),
        _ => {}
    }
    got
}
