//! Camera frames to model input (uint8 RGB, `H x W x 3`) straight from the source pixel
//! format: crop (centre crop to the output aspect ratio, or a region of interest), then a
//! bilinear resize, without building a full-size RGB frame.
//!
//! The arithmetic is fixed so that tests can reproduce it bit for bit:
//! - The bilinear resize is [`crate::imageio::crop_resize`]'s (16.16 fixed point, pixel
//!   centres aligned, round half up), applied to the frame's own samples: R, G, B for the
//!   RGB formats, Y, U, V for the YUV formats (each pixel with the chroma sample covering
//!   it, i.e. chroma replicated to 4:4:4), Y for GREY. Only the at most `2 x out_w` columns
//!   of at most `2 x out_h` rows that the output needs are ever read.
//! - The resized (8-bit) YUV or grey samples are then converted to RGB, once per output
//!   pixel: BT.601 limited range, the V4L2 default for these formats (see [`yuv_to_rgb`]).
//!   The conversion is affine, so converting after interpolating differs from converting
//!   first only by rounding and clamping, and it is 4x fewer conversions.
//!   A reference is therefore: replicate chroma, `crop_resize` the YUV image as if it were
//!   RGB, convert each output pixel.
//! - GREY is limited-range luma as well (V4L2 treats it as YCbCr without chroma), i.e. the
//!   same as YUV with neutral chroma.
//! - MJPEG is decoded by `jpeg-decoder` at the smallest DCT scale (1/8, 1/4, 1/2, 1) that
//!   leaves the crop at least as large as the output, then cropped and resized like RGB24.

use std::fmt;
use std::str::FromStr;

/// Pixel layout of a camera frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// YUV 4:2:2 packed, `Y0 U Y1 V` per pixel pair.
    Yuyv,
    /// Y plane, then one plane of interleaved `U V` at half width and half height.
    Nv12,
    /// Planar I420: Y plane, U plane, V plane; chroma at half width and half height.
    #[serde(alias = "i420")]
    Yuv420,
    /// Packed `R G B`.
    Rgb24,
    /// Packed `B G R`.
    Bgr24,
    /// 8-bit luma.
    #[serde(alias = "gray")]
    Grey,
    /// Motion JPEG: every frame a (baseline) JPEG image.
    #[serde(alias = "mjpg")]
    Mjpeg,
}

impl PixelFormat {
    /// Every format, in order of preference for a camera (cheapest to preprocess first).
    pub const ALL: [PixelFormat; 7] = [
        PixelFormat::Grey,
        PixelFormat::Rgb24,
        PixelFormat::Bgr24,
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Yuv420,
        PixelFormat::Mjpeg,
    ];

    /// The canonical lower-case name (as accepted by [`FromStr`]).
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Nv12 => "nv12",
            PixelFormat::Yuv420 => "yuv420",
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Bgr24 => "bgr24",
            PixelFormat::Grey => "grey",
            PixelFormat::Mjpeg => "mjpeg",
        }
    }

    /// The V4L2 FourCC code of the format.
    pub fn fourcc(self) -> [u8; 4] {
        *match self {
            PixelFormat::Yuyv => b"YUYV",
            PixelFormat::Nv12 => b"NV12",
            PixelFormat::Yuv420 => b"YU12",
            PixelFormat::Rgb24 => b"RGB3",
            PixelFormat::Bgr24 => b"BGR3",
            PixelFormat::Grey => b"GREY",
            PixelFormat::Mjpeg => b"MJPG",
        }
    }

    /// The format with V4L2 FourCC code `code`, if supported.
    pub fn from_fourcc(code: [u8; 4]) -> Option<PixelFormat> {
        PixelFormat::ALL.into_iter().find(|f| f.fourcc() == code)
    }

    /// Bytes in one tightly packed row of the first (or only) plane; `None` for MJPEG.
    pub fn row_bytes(self, width: usize) -> Option<usize> {
        match self {
            PixelFormat::Yuyv => width.checked_mul(2),
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => width.checked_mul(3),
            PixelFormat::Nv12 | PixelFormat::Yuv420 | PixelFormat::Grey => Some(width),
            PixelFormat::Mjpeg => None,
        }
    }

    /// Bytes in a tightly packed `width x height` frame; `None` for MJPEG (variable), for a
    /// zero or overflowing size, and for odd sizes the chroma subsampling cannot represent.
    pub fn frame_len(self, width: usize, height: usize) -> Option<usize> {
        self.layout_len(width, height, self.row_bytes(width)?)
    }

    /// Formats of raw `stdin:` and `fifo:` frames (what `rpicam-vid` and friends write).
    pub const RAW_STREAM: [PixelFormat; 4] =
        [PixelFormat::Yuv420, PixelFormat::Nv12, PixelFormat::Yuyv, PixelFormat::Rgb24];

    /// Formats that can be asked of a V4L2 device.
    pub const V4L2: [PixelFormat; 6] = [
        PixelFormat::Yuyv,
        PixelFormat::Mjpeg,
        PixelFormat::Nv12,
        PixelFormat::Rgb24,
        PixelFormat::Bgr24,
        PixelFormat::Grey,
    ];

    /// Whether the width must be even (horizontally subsampled chroma).
    pub fn needs_even_width(self) -> bool {
        self.even_width()
    }

    /// Whether the height must be even (vertically subsampled chroma).
    pub fn needs_even_height(self) -> bool {
        self.even_height()
    }

    fn even_width(self) -> bool {
        matches!(self, PixelFormat::Yuyv | PixelFormat::Nv12 | PixelFormat::Yuv420)
    }

    fn even_height(self) -> bool {
        matches!(self, PixelFormat::Nv12 | PixelFormat::Yuv420)
    }

    /// Bytes needed up to the last one read, for rows `stride` bytes apart (V4L2 convention:
    /// NV12's UV plane shares the luma stride, YUV420's chroma planes use half of it).
    /// `None` if the size or stride is invalid.
    fn layout_len(self, width: usize, height: usize, stride: usize) -> Option<usize> {
        let row = self.row_bytes(width)?;
        if width == 0
            || height == 0
            || stride < row
            || (self.even_width() && !width.is_multiple_of(2))
            || (self.even_height() && !height.is_multiple_of(2))
        {
            return None;
        }
        let luma = stride.checked_mul(height)?;
        match self {
            PixelFormat::Nv12 => luma.checked_add(stride.checked_mul(height / 2 - 1)? + width),
            PixelFormat::Yuv420 => {
                if !stride.is_multiple_of(2) {
                    return None;
                }
                let cs = stride / 2;
                luma.checked_add(cs.checked_mul(height - 1)? + width / 2)
            }
            _ => stride.checked_mul(height - 1)?.checked_add(row),
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown pixel format name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePixelFormatError(pub String);

impl fmt::Display for ParsePixelFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown pixel format {:?} (expected yuyv, nv12, yuv420/i420, rgb24, bgr24, grey/gray or mjpeg)",
            self.0
        )
    }
}

impl std::error::Error for ParsePixelFormatError {}

impl FromStr for PixelFormat {
    type Err = ParsePixelFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "yuyv" => PixelFormat::Yuyv,
            "nv12" => PixelFormat::Nv12,
            "yuv420" | "i420" => PixelFormat::Yuv420,
            "rgb24" => PixelFormat::Rgb24,
            "bgr24" => PixelFormat::Bgr24,
            "grey" | "gray" => PixelFormat::Grey,
            "mjpeg" | "mjpg" => PixelFormat::Mjpeg,
            _ => return Err(ParsePixelFormatError(s.to_owned())),
        })
    }
}

/// One camera frame, borrowed from the capture buffer.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    /// Bytes from one row of the first (or only) plane to the next. NV12's UV plane uses the
    /// same stride and YUV420's chroma planes half of it (as V4L2 does); each plane starts
    /// right after `stride x rows` bytes of the previous one. Ignored for MJPEG.
    pub stride: usize,
    pub data: &'a [u8],
}

impl<'a> Frame<'a> {
    /// A tightly packed frame (stride = row bytes).
    pub fn new(format: PixelFormat, width: usize, height: usize, data: &'a [u8]) -> Self {
        let stride = format.row_bytes(width).unwrap_or(0);
        Frame { format, width, height, stride, data }
    }
}

/// Which part of the source frame becomes the model input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Crop {
    /// The largest centred region with the output's aspect ratio.
    #[default]
    Centre,
    /// An explicit region in source pixels, stretched to the output size.
    Region { x: usize, y: usize, width: usize, height: usize },
}

/// Why a preprocessor could not be built or a frame could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreprocessError {
    /// Impossible geometry given to [`Preprocessor::new`].
    Config(String),
    /// The frame's format or size differs from the preprocessor's.
    FrameMismatch { expected: (PixelFormat, usize, usize), actual: (PixelFormat, usize, usize) },
    /// The frame's stride is too small (or odd for YUV420).
    Stride { stride: usize, min: usize },
    /// The frame is shorter than its format, size and stride need.
    FrameLength { expected: usize, actual: usize },
    /// The output buffer is not `out_width x out_height x 3` bytes.
    OutputLength { expected: usize, actual: usize },
    /// An MJPEG frame could not be decoded.
    Jpeg(String),
}

impl fmt::Display for PreprocessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreprocessError::Config(msg) => write!(f, "invalid preprocessing setup: {msg}"),
            PreprocessError::FrameMismatch { expected: (ef, ew, eh), actual: (af, aw, ah) } => {
                write!(f, "frame is {af} {aw}x{ah}, expected {ef} {ew}x{eh}")
            }
            PreprocessError::Stride { stride, min } => {
                write!(f, "frame stride {stride} is invalid (at least {min}, even for yuv420)")
            }
            PreprocessError::FrameLength { expected, actual } => {
                write!(f, "frame has {actual} bytes, its format and size need {expected}")
            }
            PreprocessError::OutputLength { expected, actual } => {
                write!(f, "output buffer has {actual} bytes, expected {expected}")
            }
            PreprocessError::Jpeg(msg) => write!(f, "cannot decode MJPEG frame: {msg}"),
        }
    }
}

impl std::error::Error for PreprocessError {}

/// BT.601 limited-range YCbCr to RGB in 16.16 fixed point:
/// `R = (76309 (Y-16) + 104597 (V-128) + 2^15) >> 16`,
/// `G = (76309 (Y-16) - 25675 (U-128) - 53279 (V-128) + 2^15) >> 16`,
/// `B = (76309 (Y-16) + 132201 (U-128) + 2^15) >> 16`,
/// i.e. round half up (arithmetic shift), then clamped to 0..=255.
/// Y=16 is black, Y=235 white, U=V=128 grey.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 76309 * (i32::from(y) - 16) + (1 << 15);
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    [clamp(c + 104597 * e), clamp(c - 25675 * d - 53279 * e), clamp(c + 132201 * d)]
}

/// 16.16 fixed point to a clamped 8-bit value (the arithmetic shift rounds down).
#[inline]
fn clamp(x: i32) -> u8 {
    (x >> 16).clamp(0, 255) as u8
}

/// Limited-range luma as RGB: [`yuv_to_rgb`] with neutral chroma.
#[inline]
fn grey_to_rgb(y: u8) -> [u8; 3] {
    [clamp(76309 * (i32::from(y) - 16) + (1 << 15)); 3]
}

/// The largest centred `(x, y, width, height)` region of `w x h` with the aspect ratio of
/// `out_w x out_h`; the same integer formula as [`crate::imageio::crop_resize`].
pub fn centre_crop(w: usize, h: usize, out_w: usize, out_h: usize) -> (usize, usize, usize, usize) {
    let (cw, ch) =
        if w * out_h > h * out_w { (h * out_w / out_h, h) } else { (w, w * out_h / out_w) };
    let (cw, ch) = (cw.max(1), ch.max(1));
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

/// One output coordinate's two source neighbours (absolute indices) and the weight of `b`.
#[derive(Clone, Copy, Debug)]
struct Tap {
    a: usize,
    b: usize,
    f: u32,
}

/// Fills `taps` for `out` output samples over source samples `start..start + len`.
fn fill_taps(taps: &mut Vec<Tap>, start: usize, len: usize, out: usize) {
    taps.clear();
    for i in 0..out {
        // Source coordinate of output pixel centre i: (i + 0.5) * len / out - 0.5, in 16.16
        // (exactly imageio::crop_resize's formula, so both paths agree bit for bit).
        let s = ((((2 * i as i64 + 1) * len as i64) << 16) / (2 * out as i64) - (1 << 15))
            .clamp(0, ((len - 1) as i64) << 16);
        let a = (s >> 16) as usize;
        taps.push(Tap { a: start + a, b: start + (a + 1).min(len - 1), f: (s & 0xffff) as u32 });
    }
}

/// Separable bilinear resampler with a two-row cache of horizontally blended source rows.
struct Resampler {
    out_w: usize,
    out_h: usize,
    xtaps: Vec<Tap>,
    ytaps: Vec<Tap>,
    /// Horizontally blended rows, `sum * 65536` per channel (fits: 255 * 65536 < 2^24).
    rows: [Vec<u32>; 2],
    /// Source row held by each `rows` slot in the current frame.
    held: [Option<usize>; 2],
}

impl Resampler {
    fn new(out_w: usize, out_h: usize) -> Self {
        Resampler {
            out_w,
            out_h,
            xtaps: Vec::with_capacity(out_w),
            ytaps: Vec::with_capacity(out_h),
            rows: [vec![0; out_w * 3], vec![0; out_w * 3]],
            held: [None; 2],
        }
    }

    /// Sets the source region; reuses the tables' capacity, so it never allocates.
    fn set_region(&mut self, x: usize, y: usize, w: usize, h: usize) {
        fill_taps(&mut self.xtaps, x, w, self.out_w);
        fill_taps(&mut self.ytaps, y, h, self.out_h);
    }

    /// Resizes `C`-channel samples into RGB `out`: `row(y)` gives the samples-of-column
    /// function of source row `y`, `finish` turns resized samples into an RGB pixel.
    fn run<const C: usize, R, P, F>(
        &mut self,
        rows: std::ops::Range<usize>,
        out: &mut [u8],
        row: R,
        finish: F,
    ) where
        R: Fn(usize) -> P,
        P: Fn(usize) -> [u8; C],
        F: Fn([u8; C]) -> [u8; 3],
    {
        self.held = [None; 2];
        let ytaps = std::mem::take(&mut self.ytaps);
        for (t, dst) in ytaps[rows].iter().zip(out.chunks_exact_mut(self.out_w * 3)) {
            let keep = self.held.iter().position(|&h| h == Some(t.b));
            let sa = self.load(t.a, keep, &row);
            let sb = self.load(t.b, Some(sa), &row);
            let (wa, wb) = (u64::from(65536 - t.f), u64::from(t.f));
            let (top, bottom) = (&self.rows[sa], &self.rows[sb]);
            let pixels = top.chunks_exact(C).zip(bottom.chunks_exact(C));
            for (d, (p, q)) in dst.chunks_exact_mut(3).zip(pixels) {
                // At most 255 * 2^32 + 2^31, so the shifted value is at most 255.
                let v: [u8; C] = std::array::from_fn(|c| {
                    ((u64::from(p[c]) * wa + u64::from(q[c]) * wb + (1 << 31)) >> 32) as u8
                });
                d.copy_from_slice(&finish(v));
            }
        }
        self.ytaps = ytaps;
    }

    /// Makes source row `y` available in a slot other than `keep`; returns the slot.
    fn load<const C: usize, R, P>(&mut self, y: usize, keep: Option<usize>, row: &R) -> usize
    where
        R: Fn(usize) -> P,
        P: Fn(usize) -> [u8; C],
    {
        if let Some(slot) = self.held.iter().position(|&h| h == Some(y)) {
            return slot;
        }
        let slot = usize::from(keep == Some(0));
        let px = row(y);
        for (t, d) in self.xtaps.iter().zip(self.rows[slot].chunks_exact_mut(C)) {
            let (p, q) = (px(t.a), px(t.b));
            let (wa, wb) = (65536 - t.f, t.f);
            for c in 0..C {
                d[c] = u32::from(p[c]) * wa + u32::from(q[c]) * wb;
            }
        }
        self.held[slot] = Some(y);
        slot
    }
}

/// MJPEG decoding plan.
#[derive(Clone, Copy, Debug)]
struct JpegPlan {
    /// DCT-scaled size to decode at; the resampler tables are set up for it.
    decoded: (usize, usize),
}

/// Converts frames of one format and size to model input of one size. Built once; [`run`]
/// allocates nothing for raw formats (MJPEG: only what `jpeg-decoder` allocates itself).
///
/// [`run`]: Preprocessor::run
pub struct Preprocessor {
    format: PixelFormat,
    width: usize,
    height: usize,
    crop: Crop,
    out_w: usize,
    out_h: usize,
    resampler: Resampler,
    jpeg: Option<JpegPlan>,
}

impl fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Preprocessor")
            .field("format", &self.format)
            .field("size", &(self.width, self.height))
            .field("crop", &self.crop)
            .field("out", &(self.out_w, self.out_h))
            .field("jpeg_decoded", &self.jpeg.map(|j| j.decoded))
            .finish()
    }
}

/// Size of a `len`-pixel side decoded at DCT scale `eighths`/8 (jpeg-decoder rounds up).
fn scaled(len: usize, eighths: usize) -> usize {
    (len * eighths).div_ceil(8)
}

impl Preprocessor {
    /// A preprocessor for `format` frames of `width x height` to `out_w x out_h` RGB.
    pub fn new(
        format: PixelFormat,
        width: usize,
        height: usize,
        crop: Crop,
        out_w: usize,
        out_h: usize,
    ) -> Result<Self, PreprocessError> {
        let bad = |msg: String| Err(PreprocessError::Config(msg));
        if out_w == 0 || out_h == 0 || out_w > 1 << 15 || out_h > 1 << 15 {
            return bad(format!("output size {out_w}x{out_h} is not in 1..=32768"));
        }
        if format == PixelFormat::Mjpeg {
            if width == 0 || height == 0 || width > 65535 || height > 65535 {
                return bad(format!("MJPEG frame size {width}x{height} is not in 1..=65535"));
            }
        } else if format.frame_len(width, height).is_none() {
            return bad(format!(
                "{format} cannot have frame size {width}x{height}{}",
                if format.even_width() { " (needs a non-zero even size)" } else { "" }
            ));
        }
        if let Crop::Region { x, y, width: w, height: h } = crop {
            if w == 0 || h == 0 || x.saturating_add(w) > width || y.saturating_add(h) > height {
                return bad(format!(
                    "crop region {w}x{h} at ({x}, {y}) is empty or outside the {width}x{height} frame"
                ));
            }
        }
        let mut pre = Preprocessor {
            format,
            width,
            height,
            crop,
            out_w,
            out_h,
            resampler: Resampler::new(out_w, out_h),
            jpeg: None,
        };
        if format == PixelFormat::Mjpeg {
            // Smallest DCT scale whose crop still covers the output in both axes
            // (jpeg-decoder's own choice only guarantees one axis).
            let eighths = [1, 2, 4, 8]
                .into_iter()
                .find(|&s| {
                    let (_, _, cw, ch) = pre.region_in(scaled(width, s), scaled(height, s));
                    cw >= out_w && ch >= out_h
                })
                .unwrap_or(8);
            let decoded = (scaled(width, eighths), scaled(height, eighths));
            pre.jpeg = Some(JpegPlan { decoded });
            pre.set_decoded_size(decoded);
        } else {
            let (x, y, w, h) = pre.region_in(width, height);
            pre.resampler.set_region(x, y, w, h);
        }
        Ok(pre)
    }

    /// Output bytes per frame (`out_w x out_h x 3`).
    pub fn output_len(&self) -> usize {
        self.out_w * self.out_h * 3
    }

    /// The source format this preprocessor accepts.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// For MJPEG, the size frames are decoded at (after DCT downscaling).
    pub fn jpeg_decoded_size(&self) -> Option<(usize, usize)> {
        self.jpeg.map(|j| j.decoded)
    }

    /// The crop as `(x, y, w, h)` in an image of `dw x dh` that shows the whole source
    /// frame, possibly DCT-scaled: a region's edges are scaled outwards to whole pixels.
    fn region_in(&self, dw: usize, dh: usize) -> (usize, usize, usize, usize) {
        match self.crop {
            Crop::Centre => centre_crop(dw, dh, self.out_w, self.out_h),
            Crop::Region { x, y, width, height } => {
                let (x0, y0) = (x * dw / self.width, y * dh / self.height);
                let x1 = ((x + width) * dw).div_ceil(self.width).min(dw);
                let y1 = ((y + height) * dh).div_ceil(self.height).min(dh);
                (x0.min(dw - 1), y0.min(dh - 1), (x1 - x0).max(1), (y1 - y0).max(1))
            }
        }
    }

    fn set_decoded_size(&mut self, decoded: (usize, usize)) {
        let (x, y, w, h) = self.region_in(decoded.0, decoded.1);
        self.resampler.set_region(x, y, w, h);
        if let Some(plan) = &mut self.jpeg {
            plan.decoded = decoded;
        }
    }

    /// Converts `frame` into `out` (`out_h x out_w x 3` RGB bytes).
    pub fn run(&mut self, frame: &Frame, out: &mut [u8]) -> Result<(), PreprocessError> {
        self.run_rows(frame, 0..self.out_h, out)
    }

    /// Output rows `rows` of [`run`](Preprocessor::run)'s result into `out`
    /// (`rows.len() x out_w x 3` bytes), so several threads can share one frame, each with
    /// its own `Preprocessor`. The bytes are exactly those rows of a full run. MJPEG frames
    /// are decoded whole, so for them only the full range is accepted.
    pub fn run_rows(
        &mut self,
        frame: &Frame,
        rows: std::ops::Range<usize>,
        out: &mut [u8],
    ) -> Result<(), PreprocessError> {
        if rows.start > rows.end
            || rows.end > self.out_h
            || (self.format == PixelFormat::Mjpeg && rows != (0..self.out_h))
        {
            return Err(PreprocessError::Config(format!(
                "output rows {rows:?} are not a range of 0..{}{}",
                self.out_h,
                if self.format == PixelFormat::Mjpeg { " (MJPEG: only the whole)" } else { "" }
            )));
        }
        if (frame.format, frame.width, frame.height) != (self.format, self.width, self.height) {
            return Err(PreprocessError::FrameMismatch {
                expected: (self.format, self.width, self.height),
                actual: (frame.format, frame.width, frame.height),
            });
        }
        let expected = rows.len() * self.out_w * 3;
        if out.len() != expected {
            return Err(PreprocessError::OutputLength { expected, actual: out.len() });
        }
        if self.format == PixelFormat::Mjpeg {
            return self.run_jpeg(frame.data, out);
        }
        let (w, h, stride, data) = (self.width, self.height, frame.stride, frame.data);
        let needed = self.format.layout_len(w, h, stride).ok_or(PreprocessError::Stride {
            stride,
            min: self.format.row_bytes(w).unwrap_or(0),
        })?;
        if data.len() < needed {
            return Err(PreprocessError::FrameLength { expected: needed, actual: data.len() });
        }
        // Each arm hands the resampler a per-row sampler and a per-output-pixel conversion;
        // rows are cut to length so the per-pixel indexing stays cheap.
        let rs = &mut self.resampler;
        let yuv = |[y, u, v]: [u8; 3]| yuv_to_rgb(y, u, v);
        match self.format {
            PixelFormat::Yuyv => rs.run(
                rows.clone(),
                out,
                |y| {
                    let r = &data[y * stride..][..w * 2];
                    move |x: usize| {
                        let q = &r[(x & !1) * 2..][..4];
                        [q[(x & 1) * 2], q[1], q[3]]
                    }
                },
                yuv,
            ),
            PixelFormat::Nv12 => {
                let (luma, uv) = data.split_at(stride * h);
                rs.run(
                    rows.clone(),
                    out,
                    |y| {
                        let (l, c) = (&luma[y * stride..][..w], &uv[y / 2 * stride..][..w]);
                        move |x: usize| [l[x], c[x & !1], c[x | 1]]
                    },
                    yuv,
                )
            }
            PixelFormat::Yuv420 => {
                let cs = stride / 2;
                let (luma, chroma) = data.split_at(stride * h);
                let (u, v) = chroma.split_at(cs * (h / 2));
                rs.run(
                    rows.clone(),
                    out,
                    |y| {
                        let l = &luma[y * stride..][..w];
                        let (u, v) = (&u[y / 2 * cs..][..w / 2], &v[y / 2 * cs..][..w / 2]);
                        move |x: usize| [l[x], u[x / 2], v[x / 2]]
                    },
                    yuv,
                )
            }
            PixelFormat::Rgb24 => rs.run(
                rows.clone(),
                out,
                |y| {
                    let r = &data[y * stride..][..w * 3];
                    move |x: usize| [r[x * 3], r[x * 3 + 1], r[x * 3 + 2]]
                },
                |p| p,
            ),
            PixelFormat::Bgr24 => rs.run(
                rows.clone(),
                out,
                |y| {
                    let r = &data[y * stride..][..w * 3];
                    move |x: usize| [r[x * 3 + 2], r[x * 3 + 1], r[x * 3]]
                },
                |p| p,
            ),
            PixelFormat::Grey => rs.run(
                rows.clone(),
                out,
                |y| {
                    let r = &data[y * stride..][..w];
                    move |x: usize| [r[x]]
                },
                |[l]| grey_to_rgb(l),
            ),
            PixelFormat::Mjpeg => unreachable!("handled above"),
        }
        Ok(())
    }

    fn run_jpeg(&mut self, data: &[u8], out: &mut [u8]) -> Result<(), PreprocessError> {
        let Some(plan) = self.jpeg else { unreachable!("MJPEG preprocessor without a plan") };
        let (w, h) = (self.width, self.height);
        let (rw, rh) = plan.decoded;
        // jpeg-decoder is fuzzed, but a corrupt camera frame must never take the daemon down.
        let decoded = std::panic::catch_unwind(move || {
            let mut dec = jpeg_decoder::Decoder::new(data);
            // A hostile frame cannot make the decoder allocate more than a full RGB frame.
            dec.set_max_decoding_buffer_size(w * h * 3);
            dec.read_info().map_err(|e| e.to_string())?;
            let info = dec.info().ok_or("no frame header")?;
            if (usize::from(info.width), usize::from(info.height)) != (w, h) {
                return Err(format!("JPEG is {}x{}, expected {w}x{h}", info.width, info.height));
            }
            let channels = match info.pixel_format {
                jpeg_decoder::PixelFormat::L8 => 1,
                jpeg_decoder::PixelFormat::RGB24 => 3,
                other => return Err(format!("unsupported JPEG pixel format {other:?}")),
            };
            // Sizes were checked to fit u16 in new().
            let (dw, dh) = dec.scale(rw as u16, rh as u16).map_err(|e| e.to_string())?;
            let (dw, dh) = (usize::from(dw), usize::from(dh));
            let pixels = dec.decode().map_err(|e| e.to_string())?;
            if pixels.len() < dw * dh * channels {
                return Err(format!("decoder returned {} bytes for {dw}x{dh}", pixels.len()));
            }
            Ok((pixels, dw, dh, channels))
        })
        .unwrap_or_else(|_| Err("decoder panicked".to_owned()));
        let (pixels, dw, dh, channels) = decoded.map_err(PreprocessError::Jpeg)?;
        if (dw, dh) != plan.decoded {
            // Only tiny frames round differently; the tables keep their capacity.
            self.set_decoded_size((dw, dh));
        }
        let out_h = self.out_h;
        let rs = &mut self.resampler;
        if channels == 1 {
            // Decoded JPEG luma is full range, so grey is replicated, not expanded.
            rs.run(
                0..out_h,
                out,
                |y| {
                    let r = &pixels[y * dw..][..dw];
                    move |x: usize| [r[x]]
                },
                |[l]| [l; 3],
            );
        } else {
            rs.run(
                0..out_h,
                out,
                |y| {
                    let r = &pixels[y * dw * 3..][..dw * 3];
                    move |x: usize| [r[x * 3], r[x * 3 + 1], r[x * 3 + 2]]
                },
                |p| p,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_aliases_and_fourccs() {
        for f in PixelFormat::ALL {
            assert_eq!(f.name().parse::<PixelFormat>(), Ok(f));
            assert_eq!(PixelFormat::from_fourcc(f.fourcc()), Some(f));
        }
        assert_eq!("I420".parse(), Ok(PixelFormat::Yuv420));
        assert_eq!("gray".parse(), Ok(PixelFormat::Grey));
        assert_eq!("MJPG".parse(), Ok(PixelFormat::Mjpeg));
        let err = "h264".parse::<PixelFormat>().unwrap_err();
        assert!(err.to_string().contains("h264"), "{err}");
    }

    #[test]
    fn frame_lengths() {
        use PixelFormat::*;
        assert_eq!(Yuyv.frame_len(640, 480), Some(640 * 480 * 2));
        assert_eq!(Nv12.frame_len(640, 480), Some(640 * 480 * 3 / 2));
        assert_eq!(Yuv420.frame_len(640, 480), Some(640 * 480 * 3 / 2));
        assert_eq!(Rgb24.frame_len(3, 5), Some(45));
        assert_eq!(Bgr24.frame_len(3, 5), Some(45));
        assert_eq!(Grey.frame_len(3, 5), Some(15));
        assert_eq!(Yuyv.frame_len(3, 5), None);
        assert_eq!(Yuyv.frame_len(4, 5), Some(40));
        assert_eq!(Nv12.frame_len(4, 5), None);
        assert_eq!(Yuv420.frame_len(5, 4), None);
        assert_eq!(Grey.frame_len(0, 4), None);
        assert_eq!(Rgb24.frame_len(usize::MAX, 2), None);
        assert_eq!(Mjpeg.frame_len(640, 480), None);
        // Strided layouts need everything up to the last byte read.
        assert_eq!(Yuv420.layout_len(4, 2, 6), Some(12 + 3 + 2));
        assert_eq!(Yuv420.layout_len(4, 2, 5), None);
        assert_eq!(Nv12.layout_len(4, 2, 6), Some(12 + 4));
    }

    #[test]
    fn limited_range_anchors() {
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        assert_eq!(yuv_to_rgb(0, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(255, 128, 128), [255, 255, 255]);
        assert_eq!(yuv_to_rgb(126, 128, 128), [128, 128, 128]);
        for y in 0..=255 {
            assert_eq!(grey_to_rgb(y), yuv_to_rgb(y, 128, 128));
        }
    }

    #[test]
    fn taps_match_identity_and_clamp_at_edges() {
        let mut t = Vec::new();
        fill_taps(&mut t, 10, 4, 4);
        assert!(t.iter().enumerate().all(|(i, t)| t.a == 10 + i && t.f == 0));
        fill_taps(&mut t, 0, 2, 8);
        assert_eq!((t[0].a, t[0].b, t[0].f), (0, 1, 0));
        assert_eq!((t[7].a, t[7].b, t[7].f), (1, 1, 0));
    }
}
