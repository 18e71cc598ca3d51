//! Bit-exact checks of every preprocessing fast path against straightforward reference code:
//! take the whole frame's samples with plain loops (R G B, or Y U V with chroma replicated,
//! or Y), crop and resize them with `imageio::crop_resize`, then convert each output pixel.

use prom_daemon::imageio::crop_resize;
use prom_daemon::preprocess::{Crop, Frame, PixelFormat, PreprocessError, Preprocessor};

const RAW: [PixelFormat; 6] = [
    PixelFormat::Yuyv,
    PixelFormat::Nv12,
    PixelFormat::Yuv420,
    PixelFormat::Rgb24,
    PixelFormat::Bgr24,
    PixelFormat::Grey,
];

/// xorshift64*: deterministic frames without a rand dependency.
struct Rng(u64);

impl Rng {
    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// BT.601 limited range, 16.16 fixed point, round half up, clamped: written out plainly.
fn ref_yuv(y: u8, u: u8, v: u8) -> [u8; 3] {
    let y = i64::from(y) - 16;
    let u = i64::from(u) - 128;
    let v = i64::from(v) - 128;
    let r = (76309 * y + 104597 * v + 32768) >> 16;
    let g = (76309 * y - 25675 * u - 53279 * v + 32768) >> 16;
    let b = (76309 * y + 132201 * u + 32768) >> 16;
    [r.clamp(0, 255) as u8, g.clamp(0, 255) as u8, b.clamp(0, 255) as u8]
}

/// Bytes a frame buffer has when every row (of every plane) is `stride` bytes long.
fn buffer_len(format: PixelFormat, h: usize, stride: usize) -> usize {
    match format {
        PixelFormat::Nv12 | PixelFormat::Yuv420 => stride * h * 3 / 2,
        _ => stride * h,
    }
}

/// The whole frame's samples, one pixel at a time: `[R, G, B]`, `[Y, U, V]` (each pixel with
/// the chroma sample covering it) or `[Y, Y, Y]`.
fn ref_samples(format: PixelFormat, w: usize, h: usize, stride: usize, d: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let row = y * stride;
            let px = match format {
                PixelFormat::Yuyv => {
                    let pair = row + x / 2 * 4;
                    [d[row + x * 2], d[pair + 1], d[pair + 3]]
                }
                PixelFormat::Nv12 => {
                    let uv = stride * h + y / 2 * stride + x / 2 * 2;
                    [d[row + x], d[uv], d[uv + 1]]
                }
                PixelFormat::Yuv420 => {
                    let cs = stride / 2;
                    let u = stride * h + y / 2 * cs + x / 2;
                    let v = u + cs * (h / 2);
                    [d[row + x], d[u], d[v]]
                }
                PixelFormat::Rgb24 => [d[row + x * 3], d[row + x * 3 + 1], d[row + x * 3 + 2]],
                PixelFormat::Bgr24 => [d[row + x * 3 + 2], d[row + x * 3 + 1], d[row + x * 3]],
                PixelFormat::Grey => [d[row + x]; 3],
                PixelFormat::Mjpeg => unreachable!(),
            };
            img[(y * w + x) * 3..][..3].copy_from_slice(&px);
        }
    }
    img
}

/// Resized samples to RGB, pixel by pixel.
fn ref_finish(format: PixelFormat, mut img: Vec<u8>) -> Vec<u8> {
    for px in img.chunks_mut(3) {
        let rgb = match format {
            PixelFormat::Yuyv | PixelFormat::Nv12 | PixelFormat::Yuv420 => {
                ref_yuv(px[0], px[1], px[2])
            }
            PixelFormat::Grey => ref_yuv(px[0], 128, 128),
            _ => [px[0], px[1], px[2]],
        };
        px.copy_from_slice(&rgb);
    }
    img
}

/// The reference for a whole raw frame.
#[allow(clippy::too_many_arguments)]
fn reference(
    format: PixelFormat,
    w: usize,
    h: usize,
    stride: usize,
    data: &[u8],
    crop: Crop,
    ow: usize,
    oh: usize,
) -> Vec<u8> {
    let samples = ref_samples(format, w, h, stride, data);
    ref_finish(format, ref_resize(&samples, w, h, crop, ow, oh))
}

fn sub_image(rgb: &[u8], w: usize, x0: usize, y0: usize, cw: usize, ch: usize) -> Vec<u8> {
    let mut sub = Vec::with_capacity(cw * ch * 3);
    for y in y0..y0 + ch {
        sub.extend_from_slice(&rgb[(y * w + x0) * 3..(y * w + x0 + cw) * 3]);
    }
    sub
}

/// Bilinear stretch with crop_resize's arithmetic (no centre crop), one output value at a
/// time: the reference for regions whose aspect ratio differs from the output's.
fn ref_stretch(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<u8> {
    let coord = |i: usize, c: usize, o: usize| -> i64 {
        let s = (((2 * i as i64 + 1) * c as i64) << 16) / (2 * o as i64) - (1 << 15);
        s.clamp(0, ((c - 1) as i64) << 16)
    };
    let mut out = vec![0u8; ow * oh * 3];
    for oy in 0..oh {
        for ox in 0..ow {
            let (sx, sy) = (coord(ox, w, ow), coord(oy, h, oh));
            let (xa, ya) = ((sx >> 16) as usize, (sy >> 16) as usize);
            let (xb, yb) = ((xa + 1).min(w - 1), (ya + 1).min(h - 1));
            let (fx, fy) = (sx & 0xffff, sy & 0xffff);
            for c in 0..3 {
                let p = |x: usize, y: usize| i64::from(src[(y * w + x) * 3 + c]);
                let top = p(xa, ya) * (65536 - fx) + p(xb, ya) * fx;
                let bottom = p(xa, yb) * (65536 - fx) + p(xb, yb) * fx;
                out[(oy * ow + ox) * 3 + c] =
                    ((top * (65536 - fy) + bottom * fy + (1 << 31)) >> 32) as u8;
            }
        }
    }
    out
}

/// Crop and resize a full RGB image the reference way.
fn ref_resize(rgb: &[u8], w: usize, h: usize, crop: Crop, ow: usize, oh: usize) -> Vec<u8> {
    let mut out = vec![0u8; ow * oh * 3];
    match crop {
        Crop::Centre => crop_resize(rgb, w, h, &mut out, ow, oh),
        Crop::Region { x, y, width, height } => {
            let sub = sub_image(rgb, w, x, y, width, height);
            if width * oh == height * ow {
                // Same aspect ratio: crop_resize does not crop any further.
                crop_resize(&sub, width, height, &mut out, ow, oh);
            } else {
                out = ref_stretch(&sub, width, height, ow, oh);
            }
        }
    }
    out
}

fn run(frame: &Frame, crop: Crop, ow: usize, oh: usize) -> Vec<u8> {
    let mut pre = Preprocessor::new(frame.format, frame.width, frame.height, crop, ow, oh)
        .unwrap_or_else(|e| panic!("{} {}x{}: {e}", frame.format, frame.width, frame.height));
    let mut out = vec![0u8; pre.output_len()];
    pre.run(frame, &mut out).unwrap();
    // A second run on the same buffers must give the same result (no stale row cache).
    let mut again = vec![0u8; out.len()];
    pre.run(frame, &mut again).unwrap();
    assert_eq!(out, again);
    out
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i} (pixel {}): {} != {}", i / 3, got[i], want[i]);
    }
}

#[test]
fn reference_stretch_agrees_with_crop_resize() {
    let mut rng = Rng(7);
    for (w, h, ow, oh) in [(640, 480, 224, 168), (37, 11, 74, 22), (20, 20, 7, 7), (5, 3, 5, 3)] {
        let src = rng.bytes(w * h * 3);
        let mut want = vec![0u8; ow * oh * 3];
        crop_resize(&src, w, h, &mut want, ow, oh);
        assert_same(&ref_stretch(&src, w, h, ow, oh), &want, "stretch");
    }
}

#[test]
fn random_frames_match_reference_bit_exactly() {
    #[rustfmt::skip]
    let cases: &[(usize, usize, Crop, usize, usize, usize)] = &[
        // (width, height, crop, out w, out h, stride padding)
        (640, 480, Crop::Centre, 224, 224, 0),
        (640, 480, Crop::Centre, 96, 96, 0),
        (640, 480, Crop::Centre, 224, 224, 64),
        (96, 96, Crop::Centre, 96, 96, 0),
        (96, 96, Crop::Centre, 224, 224, 0),
        (32, 24, Crop::Centre, 224, 160, 0),
        (62, 34, Crop::Centre, 17, 23, 6),
        (2, 2, Crop::Centre, 1, 1, 0),
        (2, 2, Crop::Centre, 3, 5, 0),
        (640, 480, Crop::Region { x: 101, y: 37, width: 333, height: 111 }, 96, 32, 0),
        (640, 480, Crop::Region { x: 3, y: 5, width: 201, height: 77 }, 224, 224, 0),
        (640, 480, Crop::Region { x: 0, y: 0, width: 640, height: 480 }, 224, 224, 2),
        (64, 48, Crop::Region { x: 1, y: 1, width: 5, height: 3 }, 50, 30, 0),
        (64, 48, Crop::Region { x: 63, y: 47, width: 1, height: 1 }, 4, 4, 0),
        (64, 48, Crop::Region { x: 31, y: 0, width: 33, height: 47 }, 13, 99, 0),
    ];
    let mut rng = Rng(0x5eed);
    for &(w, h, crop, ow, oh, pad) in cases {
        for format in RAW {
            let stride = format.row_bytes(w).unwrap() + pad;
            let data = rng.bytes(buffer_len(format, h, stride));
            let frame = Frame { format, width: w, height: h, stride, data: &data };
            let got = run(&frame, crop, ow, oh);
            let want = reference(format, w, h, stride, &data, crop, ow, oh);
            assert_same(&got, &want, &format!("{format} {w}x{h} {crop:?} -> {ow}x{oh} +{pad}"));
        }
    }
}

#[test]
fn row_bands_from_separate_preprocessors_equal_a_full_run() {
    // How the daemon splits a frame over its engine workers.
    let mut rng = Rng(0xba2d);
    for &(w, h, ow, oh, bands) in
        &[(640, 480, 224, 224, 2), (640, 480, 224, 224, 3), (62, 34, 17, 23, 4), (32, 24, 5, 1, 2)]
    {
        for format in RAW {
            let stride = format.row_bytes(w).unwrap() + 2;
            let data = rng.bytes(buffer_len(format, h, stride));
            let frame = Frame { format, width: w, height: h, stride, data: &data };
            let want = run(&frame, Crop::Centre, ow, oh);
            let mut got = vec![0u8; want.len()];
            let per = oh.div_ceil(bands);
            for (i, band) in got.chunks_mut(per * ow * 3).enumerate() {
                let mut pre = Preprocessor::new(format, w, h, Crop::Centre, ow, oh).unwrap();
                let rows = i * per..i * per + band.len() / (ow * 3);
                pre.run_rows(&frame, rows, band).unwrap();
            }
            assert_same(&got, &want, &format!("{format} {w}x{h} -> {ow}x{oh} in {bands} bands"));
        }
    }
    let mut pre = Preprocessor::new(PixelFormat::Yuyv, 4, 4, Crop::Centre, 2, 2).unwrap();
    let data = [0u8; 32];
    let frame = Frame::new(PixelFormat::Yuyv, 4, 4, &data);
    assert!(pre.run_rows(&frame, 1..3, &mut [0u8; 12]).is_err(), "rows past the end");
    assert!(pre.run_rows(&frame, 0..1, &mut [0u8; 12]).is_err(), "wrong output length");
    let mut mjpeg = Preprocessor::new(PixelFormat::Mjpeg, 16, 16, Crop::Centre, 8, 8).unwrap();
    let frame = Frame::new(PixelFormat::Mjpeg, 16, 16, &data);
    assert!(mjpeg.run_rows(&frame, 0..4, &mut [0u8; 96]).is_err(), "MJPEG only whole");
}

#[test]
fn strided_frames_need_only_bytes_up_to_the_last_one_read() {
    let mut rng = Rng(3);
    let (w, h) = (8, 4);
    for format in RAW {
        let stride = format.row_bytes(w).unwrap() + 4;
        let full = rng.bytes(buffer_len(format, h, stride));
        let want = reference(format, w, h, stride, &full, Crop::Centre, 4, 2);
        // Drop the padding after the last row.
        let short = &full[..full.len() - 4 / if format == PixelFormat::Yuv420 { 2 } else { 1 }];
        let frame = Frame { format, width: w, height: h, stride, data: short };
        assert_same(&run(&frame, Crop::Centre, 4, 2), &want, format.name());
    }
}

fn fill_frame(format: PixelFormat, w: usize, h: usize, y: u8, u: u8, v: u8) -> Vec<u8> {
    let n = w * h;
    match format {
        PixelFormat::Yuyv => [y, u, y, v].repeat(n / 2),
        PixelFormat::Nv12 => [vec![y; n], [u, v].repeat(n / 4)].concat(),
        PixelFormat::Yuv420 => [vec![y; n], vec![u; n / 4], vec![v; n / 4]].concat(),
        PixelFormat::Grey => vec![y; n],
        _ => unreachable!(),
    }
}

#[test]
fn known_colours() {
    let yuv = [PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::Yuv420];
    for format in yuv.into_iter().chain([PixelFormat::Grey]) {
        for (y, want) in [(16, 0), (235, 255), (126, 128), (0, 0), (255, 255)] {
            let data = fill_frame(format, 640, 480, y, 128, 128);
            let out = run(&Frame::new(format, 640, 480, &data), Crop::Centre, 224, 224);
            assert!(out.iter().all(|&c| c == want), "{format} Y={y}: {:?}", &out[..3]);
        }
    }
    // Saturated primaries (BT.601 limited-range YCbCr of 100% red, green, blue).
    for format in yuv {
        for ((y, u, v), want) in [
            ((81, 90, 240), [255, 0, 0]),
            ((145, 54, 34), [0, 255, 0]),
            ((41, 240, 110), [0, 0, 255]),
        ] {
            let data = fill_frame(format, 64, 48, y, u, v);
            let out = run(&Frame::new(format, 64, 48, &data), Crop::Centre, 8, 8);
            for px in out.chunks(3) {
                let diff = px.iter().zip(want).map(|(&a, b)| a.abs_diff(b)).max().unwrap();
                assert!(diff <= 2, "{format} {y},{u},{v}: {px:?} vs {want:?}");
            }
        }
    }
    // Channel order of the packed RGB formats.
    let px = [10u8, 20, 30].repeat(16);
    let rgb = run(&Frame::new(PixelFormat::Rgb24, 4, 4, &px), Crop::Centre, 2, 2);
    let bgr = run(&Frame::new(PixelFormat::Bgr24, 4, 4, &px), Crop::Centre, 2, 2);
    assert_eq!(&rgb[..3], &[10, 20, 30]);
    assert_eq!(&bgr[..3], &[30, 20, 10]);
}

/// A deterministic 640x480 "camera" scene: gradients, saturated patches, a disc, fine detail.
fn scene(w: usize, h: usize) -> Vec<u8> {
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let mut p = [(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, 96];
            let (dx, dy) = (x as i64 - 400, y as i64 - 260);
            if dx * dx + dy * dy < 90 * 90 {
                p = [240, 200, 20];
            } else if (40..140).contains(&y) {
                p = match x / 80 {
                    1 => [255, 0, 0],
                    2 => [0, 255, 0],
                    3 => [0, 0, 255],
                    4 => [255, 255, 255],
                    5 => [0, 0, 0],
                    6 => [if (x + y) % 2 == 0 { 255 } else { 0 }; 3],
                    _ => p,
                };
            }
            rgb[(y * w + x) * 3..][..3].copy_from_slice(&p);
        }
    }
    rgb
}

/// RGB to BT.601 limited-range YCbCr (floating point, rounded): how a camera would encode.
fn rgb_to_yuv(p: &[u8]) -> [f64; 3] {
    let [r, g, b] = [p[0], p[1], p[2]].map(|c| f64::from(c) / 255.0);
    let y = 0.299 * r + 0.587 * g + 0.114 * b;
    [16.0 + 219.0 * y, 128.0 + 224.0 * (b - y) / 1.772, 128.0 + 224.0 * (r - y) / 1.402]
}

/// The scene as a frame in `format`, chroma averaged over the pixels that share it.
fn encode_scene(rgb: &[u8], w: usize, h: usize, format: PixelFormat) -> Vec<u8> {
    let yuv: Vec<[f64; 3]> = rgb.chunks(3).map(rgb_to_yuv).collect();
    let q = |v: f64| v.round().clamp(0.0, 255.0) as u8;
    let luma: Vec<u8> = yuv.iter().map(|p| q(p[0])).collect();
    // Mean chroma component `c` over block (bx, by) of size sw x sh.
    let chroma = |c: usize, bx: usize, by: usize, sw: usize, sh: usize| {
        let mut s = 0.0;
        for y in by * sh..by * sh + sh {
            for x in bx * sw..bx * sw + sw {
                s += yuv[y * w + x][c];
            }
        }
        q(s / (sw * sh) as f64)
    };
    match format {
        PixelFormat::Rgb24 => rgb.to_vec(),
        PixelFormat::Bgr24 => rgb.chunks(3).flat_map(|p| [p[2], p[1], p[0]]).collect(),
        PixelFormat::Grey => luma,
        PixelFormat::Yuyv => {
            let mut d = Vec::with_capacity(w * h * 2);
            for y in 0..h {
                for bx in 0..w / 2 {
                    let (u, v) = (chroma(1, bx, y, 2, 1), chroma(2, bx, y, 2, 1));
                    d.extend_from_slice(&[luma[y * w + 2 * bx], u, luma[y * w + 2 * bx + 1], v]);
                }
            }
            d
        }
        PixelFormat::Nv12 | PixelFormat::Yuv420 => {
            let mut u = Vec::new();
            let mut v = Vec::new();
            for by in 0..h / 2 {
                for bx in 0..w / 2 {
                    u.push(chroma(1, bx, by, 2, 2));
                    v.push(chroma(2, bx, by, 2, 2));
                }
            }
            if format == PixelFormat::Nv12 {
                let uv: Vec<u8> = u.iter().zip(&v).flat_map(|(&u, &v)| [u, v]).collect();
                [luma, uv].concat()
            } else {
                [luma, u, v].concat()
            }
        }
        PixelFormat::Mjpeg => unreachable!(),
    }
}

/// Mean absolute difference of two RGB images.
fn mean_diff(a: &[u8], b: &[u8]) -> f64 {
    let sum: u64 = a.iter().zip(b).map(|(&x, &y)| u64::from(x.abs_diff(y))).sum();
    sum as f64 / a.len() as f64
}

#[test]
fn camera_like_frames_in_every_format() {
    let (w, h) = (640, 480);
    let rgb = scene(w, h);
    let crops = [Crop::Centre, Crop::Region { x: 300, y: 150, width: 201, height: 203 }];
    for crop in crops {
        let truth = ref_resize(&rgb, w, h, crop, 224, 224);
        // What a perfect grey camera would show: the scene's luma.
        let grey: Vec<u8> = rgb
            .chunks(3)
            .flat_map(|p| [ref_yuv(rgb_to_yuv(p)[0].round() as u8, 128, 128)[0]; 3])
            .collect();
        let grey_truth = ref_resize(&grey, w, h, crop, 224, 224);
        for format in RAW {
            let data = encode_scene(&rgb, w, h, format);
            assert_eq!(Some(data.len()), format.frame_len(w, h));
            let got = run(&Frame::new(format, w, h, &data), crop, 224, 224);
            let stride = format.row_bytes(w).unwrap();
            let want = reference(format, w, h, stride, &data, crop, 224, 224);
            assert_same(&got, &want, &format!("scene {format} {crop:?}"));
            // The conversion itself is right, not just consistent: close to the scene.
            let err =
                mean_diff(&got, if format == PixelFormat::Grey { &grey_truth } else { &truth });
            let limit = match format {
                PixelFormat::Rgb24 | PixelFormat::Bgr24 => 0.0,
                _ => 2.5,
            };
            assert!(err <= limit, "{format} {crop:?}: mean error {err:.2} vs the scene");
        }
    }
}

fn jpeg(pixels: &[u8], w: usize, h: usize, grey: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    let colour = if grey { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
        .encode(pixels, w as u32, h as u32, colour)
        .unwrap();
    buf
}

/// Decodes with jpeg_decoder at the DCT scale giving `scaled` (the full size: no scaling).
fn decode_at(jpeg: &[u8], scaled: (usize, usize)) -> (usize, usize, Vec<u8>) {
    let mut dec = jpeg_decoder::Decoder::new(jpeg);
    let (dw, dh) = dec.scale(scaled.0 as u16, scaled.1 as u16).unwrap();
    let (dw, dh) = (usize::from(dw), usize::from(dh));
    let mut pixels = dec.decode().unwrap();
    if dec.info().unwrap().pixel_format == jpeg_decoder::PixelFormat::L8 {
        pixels = pixels.iter().flat_map(|&l| [l; 3]).collect();
    }
    assert_eq!((dw, dh), scaled);
    (dw, dh, pixels)
}

fn run_mjpeg(
    data: &[u8],
    w: usize,
    h: usize,
    crop: Crop,
    ow: usize,
    oh: usize,
) -> (Vec<u8>, (usize, usize)) {
    let mut pre = Preprocessor::new(PixelFormat::Mjpeg, w, h, crop, ow, oh).unwrap();
    let mut out = vec![0u8; pre.output_len()];
    pre.run(&Frame::new(PixelFormat::Mjpeg, w, h, data), &mut out).unwrap();
    (out, pre.jpeg_decoded_size().unwrap())
}

#[test]
fn mjpeg_matches_full_and_downscaled_decodes() {
    let (w, h) = (640, 480);
    let rgb = scene(w, h);
    let data = jpeg(&rgb, w, h, false);
    // (out size, crop, expected DCT-scaled decode size)
    let cases = [
        (224, 224, Crop::Centre, (320, 240)),
        (480, 480, Crop::Centre, (640, 480)),
        (96, 96, Crop::Centre, (160, 120)),
        (32, 32, Crop::Centre, (80, 60)),
        (60, 60, Crop::Centre, (80, 60)),
        (81, 60, Crop::Centre, (160, 120)),
        (224, 224, Crop::Region { x: 100, y: 100, width: 200, height: 200 }, (640, 480)),
        (224, 224, Crop::Region { x: 0, y: 0, width: 640, height: 480 }, (320, 240)),
    ];
    for (ow, oh, crop, scaled) in cases {
        let (got, decoded) = run_mjpeg(&data, w, h, crop, ow, oh);
        assert_eq!(decoded, scaled, "{ow}x{oh} {crop:?}");
        let (dw, dh, pixels) = decode_at(&data, scaled);
        // At full scale the region is used as given; scaled, it is mapped like this.
        let crop = match crop {
            Crop::Region { x, y, width, height } if dw != w => {
                let (x0, y0) = (x * dw / w, y * dh / h);
                let (x1, y1) = (((x + width) * dw).div_ceil(w), ((y + height) * dh).div_ceil(h));
                Crop::Region { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }
            }
            c => c,
        };
        let want = ref_resize(&pixels, dw, dh, crop, ow, oh);
        assert_same(&got, &want, &format!("mjpeg {ow}x{oh} {crop:?}"));
        // And the picture is the scene (JPEG and DCT scaling lose a little). Beyond about
        // 2:1 the bilinear "truth" aliases the 1-pixel checker while the DCT averages it.
        if crop == Crop::Centre && oh >= 224 {
            let err = mean_diff(&got, &ref_resize(&rgb, w, h, crop, ow, oh));
            assert!(err < 3.0, "mjpeg {ow}x{oh}: mean error {err:.2} vs the scene");
        }
    }
}

#[test]
fn mjpeg_greyscale_and_odd_sizes() {
    let mut rng = Rng(11);
    for (w, h, ow, oh, grey) in [
        (97, 61, 224, 224, false),
        (97, 61, 10, 7, true),
        (1, 1, 3, 3, false),
        (333, 17, 40, 2, true),
    ] {
        let data = if grey { rng.bytes(w * h) } else { rng.bytes(w * h * 3) };
        let encoded = jpeg(&data, w, h, grey);
        let mut pre = Preprocessor::new(PixelFormat::Mjpeg, w, h, Crop::Centre, ow, oh).unwrap();
        let scaled = pre.jpeg_decoded_size().unwrap();
        let (dw, dh, pixels) = decode_at(&encoded, scaled);
        let mut got = vec![0u8; pre.output_len()];
        pre.run(&Frame::new(PixelFormat::Mjpeg, w, h, &encoded), &mut got).unwrap();
        let want = ref_resize(&pixels, dw, dh, Crop::Centre, ow, oh);
        assert_same(&got, &want, &format!("mjpeg {w}x{h} grey={grey} -> {ow}x{oh}"));
    }
}

/// Turns a JPEG into webcam-style MJPEG: an AVI1 APP0 segment and no Huffman tables (the
/// decoder must supply the standard ones, which the image crate's encoder uses).
fn strip_huffman_tables(jpeg: &[u8]) -> Vec<u8> {
    let mut out = vec![0xff, 0xd8, 0xff, 0xe0, 0, 16];
    out.extend_from_slice(b"AVI1\0\0\0\0\0\0\0\0\0\0");
    let mut i = 2;
    loop {
        assert_eq!(jpeg[i], 0xff);
        let marker = jpeg[i + 1];
        if marker == 0xda {
            out.extend_from_slice(&jpeg[i..]);
            return out;
        }
        let len = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
        if marker != 0xc4 && marker != 0xe0 {
            out.extend_from_slice(&jpeg[i..i + 2 + len]);
        }
        i += 2 + len;
    }
}

#[test]
fn mjpeg_without_huffman_tables() {
    let (w, h) = (640, 480);
    let data = jpeg(&scene(w, h), w, h, false);
    let mjpeg = strip_huffman_tables(&data);
    assert!(!mjpeg.windows(2).take_while(|p| p != &[0xff, 0xda]).any(|p| p == [0xff, 0xc4]));
    let (want, _) = run_mjpeg(&data, w, h, Crop::Centre, 224, 224);
    let (got, _) = run_mjpeg(&mjpeg, w, h, Crop::Centre, 224, 224);
    assert_same(&got, &want, "AVI1 MJPEG");
}

#[test]
fn errors_are_clear() {
    let mut pre = Preprocessor::new(PixelFormat::Yuyv, 640, 480, Crop::Centre, 224, 224).unwrap();
    let mut out = vec![0u8; 224 * 224 * 3];
    let short = vec![0u8; 640 * 480 * 2 - 1];
    let err = pre.run(&Frame::new(PixelFormat::Yuyv, 640, 480, &short), &mut out).unwrap_err();
    assert_eq!(err, PreprocessError::FrameLength { expected: 614400, actual: 614399 });
    assert!(err.to_string().contains("614399"), "{err}");
    let frame = vec![0u8; 640 * 480 * 2];
    let err = pre.run(&Frame::new(PixelFormat::Nv12, 640, 480, &frame), &mut out).unwrap_err();
    assert!(err.to_string().contains("nv12 640x480, expected yuyv 640x480"), "{err}");
    let err = pre.run(&Frame::new(PixelFormat::Yuyv, 640, 480, &frame), &mut out[1..]).unwrap_err();
    assert!(matches!(err, PreprocessError::OutputLength { expected: 150528, actual: 150527 }));
    let bad_stride = Frame { stride: 1279, ..Frame::new(PixelFormat::Yuyv, 640, 480, &frame) };
    assert!(matches!(
        pre.run(&bad_stride, &mut out),
        Err(PreprocessError::Stride { stride: 1279, min: 1280 })
    ));

    let config = |f, w, h, crop, ow, oh| match Preprocessor::new(f, w, h, crop, ow, oh) {
        Err(PreprocessError::Config(msg)) => msg,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert!(config(PixelFormat::Yuyv, 641, 480, Crop::Centre, 224, 224).contains("even"));
    assert!(config(PixelFormat::Nv12, 640, 481, Crop::Centre, 224, 224).contains("even"));
    assert!(config(PixelFormat::Rgb24, 640, 480, Crop::Centre, 0, 224).contains("output size"));
    let outside = Crop::Region { x: 600, y: 0, width: 41, height: 10 };
    assert!(config(PixelFormat::Rgb24, 640, 480, outside, 224, 224).contains("outside"));
    let empty = Crop::Region { x: 0, y: 0, width: 0, height: 10 };
    assert!(config(PixelFormat::Grey, 640, 480, empty, 224, 224).contains("empty"));

    let mut mjpeg = Preprocessor::new(PixelFormat::Mjpeg, 64, 48, Crop::Centre, 16, 16).unwrap();
    let mut out = vec![0u8; 16 * 16 * 3];
    let mut check = |data: &[u8], needle: &str| {
        let err = mjpeg.run(&Frame::new(PixelFormat::Mjpeg, 64, 48, data), &mut out).unwrap_err();
        assert!(matches!(err, PreprocessError::Jpeg(_)), "{err:?}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    };
    check(b"definitely not a jpeg", "cannot decode MJPEG frame");
    check(&[], "cannot decode MJPEG frame");
    let good = jpeg(&scene(64, 48), 64, 48, false);
    check(&good[..good.len() / 2], "cannot decode MJPEG frame");
    check(&jpeg(&scene(32, 48), 32, 48, false), "JPEG is 32x48, expected 64x48");
    // The preprocessor still works after bad frames.
    mjpeg.run(&Frame::new(PixelFormat::Mjpeg, 64, 48, &good), &mut out).unwrap();
}
