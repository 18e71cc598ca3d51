//! V4L2 capture without a camera: FourCC mapping, the automatic format choice, frame interval
//! arithmetic, copies of dequeued buffers (padded strides for every format, MJPEG with
//! trailing bytes), timestamps and the errors of devices that are not there or not cameras.
//! With `PROM_TEST_V4L2_DEVICE=/dev/videoN` also a capture from that real device.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prom_daemon::config::{Camera, Source};
use prom_daemon::preprocess::{Crop, Frame, PixelFormat, Preprocessor};
use prom_daemon::sources::{self, FrameMeta, FrameSource, SourceError};
use prom_daemon::v4l2::{
    choose_format, copy_frame, format_fps, format_from_fourcc, fourcc_name, fps_to_interval,
    frame_age, interval_to_fps, is_monotonic_timestamp, jpeg_payload, monotonic_now,
    timeval_to_duration, BadFrame, CaptureFormat, Choice, Offer, Packing, Request, SizeRange,
    V4l2Source, AUTO_ORDER, DEFAULT_BUFFERS, DEFAULT_TIMEOUT, MAX_FRAME_AGE,
};

const RAW: [PixelFormat; 5] = [
    PixelFormat::Yuyv,
    PixelFormat::Nv12,
    PixelFormat::Rgb24,
    PixelFormat::Bgr24,
    PixelFormat::Grey,
];

// ---------------------------------------------------------------------------------------------
// FourCC codes

#[test]
fn fourcc_codes_map_to_the_v4l2_formats() {
    for format in PixelFormat::V4L2 {
        assert_eq!(format_from_fourcc(format.fourcc()), Some(format), "{format}");
    }
    assert_eq!(format_from_fourcc(*b"YUYV"), Some(PixelFormat::Yuyv));
    assert_eq!(format_from_fourcc(*b"NV12"), Some(PixelFormat::Nv12));
    assert_eq!(format_from_fourcc(*b"RGB3"), Some(PixelFormat::Rgb24));
    assert_eq!(format_from_fourcc(*b"BGR3"), Some(PixelFormat::Bgr24));
    assert_eq!(format_from_fourcc(*b"GREY"), Some(PixelFormat::Grey));
    assert_eq!(format_from_fourcc(*b"MJPG"), Some(PixelFormat::Mjpeg));
    assert_eq!(format_from_fourcc(*b"JPEG"), Some(PixelFormat::Mjpeg), "JPEG is MJPEG");
    // Not capture formats here: planar YUV 4:2:0 (raw streams only), H.264, 16-bit grey.
    for code in [*b"YU12", *b"H264", *b"Y16 ", *b"yuyv", [0; 4]] {
        assert_eq!(format_from_fourcc(code), None, "{code:?}");
    }
    assert_eq!(fourcc_name(*b"H264"), "H264");
    assert_eq!(fourcc_name(*b"Y16 "), "Y16");
    assert_eq!(fourcc_name([0, 0, 0, 0]), "0x00000000");
    assert_eq!(fourcc_name([1, 2, 3, 0xff]), "0xff030201");
}

#[test]
fn the_automatic_order_covers_every_v4l2_format_with_grey_last() {
    let mut sorted = AUTO_ORDER.to_vec();
    sorted.sort_by_key(|f| f.name());
    let mut v4l2 = PixelFormat::V4L2.to_vec();
    v4l2.sort_by_key(|f| f.name());
    assert_eq!(sorted, v4l2);
    let rank = |f| AUTO_ORDER.iter().position(|&g| g == f).unwrap();
    assert_eq!(rank(PixelFormat::Grey), AUTO_ORDER.len() - 1);
    for raw in [PixelFormat::Nv12, PixelFormat::Yuyv, PixelFormat::Rgb24, PixelFormat::Bgr24] {
        assert!(rank(raw) < rank(PixelFormat::Mjpeg), "{raw} is cheaper than a JPEG decode");
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes and format choice

fn discrete(sizes: &[(u32, u32)]) -> Vec<SizeRange> {
    sizes.iter().map(|&(width, height)| SizeRange::Discrete { width, height }).collect()
}

fn offer(code: &[u8; 4], sizes: &[(u32, u32)]) -> Offer {
    Offer { fourcc: *code, sizes: discrete(sizes) }
}

fn stepwise(min: (u32, u32), max: (u32, u32), step: (u32, u32)) -> SizeRange {
    SizeRange::Stepwise {
        min_width: min.0,
        max_width: max.0,
        step_width: step.0,
        min_height: min.1,
        max_height: max.1,
        step_height: step.1,
    }
}

#[test]
fn nearest_size_in_a_range() {
    assert_eq!(SizeRange::Discrete { width: 320, height: 240 }.nearest(640, 480), (320, 240));
    let range = stepwise((16, 16), (1920, 1080), (16, 8));
    assert_eq!(range.nearest(640, 480), (640, 480));
    assert_eq!(range.nearest(641, 479), (640, 480));
    assert_eq!(range.nearest(648, 484), (656, 488), "half a step rounds up");
    assert_eq!(range.nearest(5000, 5000), (1920, 1080));
    assert_eq!(range.nearest(1, 1), (16, 16));
    // A maximum off the step grid: the largest grid point not above it.
    let odd = stepwise((10, 10), (105, 105), (10, 10));
    assert_eq!(odd.nearest(104, 200), (100, 100));
    // Continuous ranges (step 1) and a driver's step 0 take the size as it is.
    assert_eq!(stepwise((1, 1), (4096, 4096), (1, 1)).nearest(641, 479), (641, 479));
    assert_eq!(stepwise((1, 1), (4096, 4096), (0, 0)).nearest(641, 479), (641, 479));
    // A range whose maximum is below its minimum (a broken driver) still answers.
    assert_eq!(stepwise((64, 64), (32, 32), (8, 8)).nearest(100, 10), (64, 64));
}

fn choice(code: &[u8; 4], width: u32, height: u32) -> Choice {
    Choice { fourcc: *code, format: format_from_fourcc(*code).unwrap(), width, height }
}

/// A typical UVC webcam: YUYV up to 1280x720, MJPEG up to 1920x1080.
fn webcam() -> Vec<Offer> {
    vec![
        offer(b"YUYV", &[(640, 480), (320, 240), (1280, 720)]),
        offer(b"MJPG", &[(640, 480), (320, 240), (1280, 720), (1920, 1080)]),
    ]
}

#[test]
fn auto_prefers_the_requested_size_then_the_cheapest_format() {
    let cam = webcam();
    assert_eq!(choose_format(&cam, None, 640, 480), Ok(choice(b"YUYV", 640, 480)));
    assert_eq!(choose_format(&cam, None, 1280, 720), Ok(choice(b"YUYV", 1280, 720)));
    // Only MJPEG has the size: the size wins over the cheaper format.
    assert_eq!(choose_format(&cam, None, 1920, 1080), Ok(choice(b"MJPG", 1920, 1080)));
    // Nobody has 800x600: the nearest size (640x480), then the cheapest format.
    assert_eq!(choose_format(&cam, None, 800, 600), Ok(choice(b"YUYV", 640, 480)));
    // The order of the offers does not matter.
    let reversed: Vec<Offer> = cam.iter().rev().cloned().collect();
    for (w, h) in [(640, 480), (1920, 1080), (800, 600), (100, 100)] {
        assert_eq!(choose_format(&reversed, None, w, h), choose_format(&cam, None, w, h));
    }

    let all = [b"GREY", b"MJPG", b"BGR3", b"RGB3", b"YUYV", b"NV12"];
    let at = |codes: &[&[u8; 4]]| -> Vec<Offer> {
        codes.iter().map(|c| offer(c, &[(640, 480)])).collect()
    };
    // Removing the cheapest each time walks down AUTO_ORDER.
    for n in (1..=all.len()).rev() {
        let got = choose_format(&at(&all[..n]), None, 640, 480).unwrap();
        assert_eq!(got.format, AUTO_ORDER[all.len() - n], "offers {n}");
    }
    assert_eq!(
        choose_format(&at(&[b"BGR3", b"RGB3"]), None, 640, 480).unwrap().format,
        PixelFormat::Rgb24
    );
    assert_eq!(
        choose_format(&at(&[b"MJPG", b"BGR3"]), None, 640, 480).unwrap().format,
        PixelFormat::Bgr24
    );
}

#[test]
fn auto_takes_grey_only_without_a_colour_format() {
    // GREY at the exact size, YUYV only far from it: colour wins.
    let offers = [offer(b"GREY", &[(640, 480)]), offer(b"YUYV", &[(160, 120)])];
    assert_eq!(choose_format(&offers, None, 640, 480), Ok(choice(b"YUYV", 160, 120)));
    // Unusable formats do not count as colour.
    let offers = [offer(b"H264", &[(640, 480)]), offer(b"GREY", &[(320, 240)])];
    assert_eq!(choose_format(&offers, None, 640, 480), Ok(choice(b"GREY", 320, 240)));
    // An explicitly configured GREY is taken even next to colour formats.
    let offers = [offer(b"YUYV", &[(640, 480)]), offer(b"GREY", &[(640, 480)])];
    assert_eq!(
        choose_format(&offers, Some(PixelFormat::Grey), 640, 480),
        Ok(choice(b"GREY", 640, 480))
    );
}

#[test]
fn auto_skips_unusable_formats_and_fails_clearly_without_any() {
    let offers = [offer(b"H264", &[(640, 480)]), offer(b"YUYV", &[(640, 480)])];
    assert_eq!(choose_format(&offers, None, 640, 480), Ok(choice(b"YUYV", 640, 480)));
    let offers = [offer(b"H264", &[(640, 480)]), offer(b"YU12", &[(640, 480)])];
    let err = choose_format(&offers, None, 640, 480).unwrap_err();
    assert!(err.contains("H264") && err.contains("YU12") && err.contains("yuyv"), "{err}");
}

#[test]
fn a_configured_format_is_used_at_its_nearest_size() {
    let cam = webcam();
    assert_eq!(
        choose_format(&cam, Some(PixelFormat::Mjpeg), 640, 480),
        Ok(choice(b"MJPG", 640, 480))
    );
    assert_eq!(
        choose_format(&cam, Some(PixelFormat::Yuyv), 1920, 1080),
        Ok(choice(b"YUYV", 1280, 720))
    );
    let err = choose_format(&cam, Some(PixelFormat::Nv12), 640, 480).unwrap_err();
    assert!(err.contains("nv12") && err.contains("YUYV, MJPG"), "{err}");
    // Devices that call their MJPEG "JPEG" are asked with their own code.
    let offers = [offer(b"JPEG", &[(1280, 720)])];
    assert_eq!(
        choose_format(&offers, Some(PixelFormat::Mjpeg), 1280, 720),
        Ok(choice(b"JPEG", 1280, 720))
    );
    assert_eq!(choose_format(&offers, None, 1280, 720), Ok(choice(b"JPEG", 1280, 720)));
}

#[test]
fn stepwise_and_unenumerated_sizes() {
    let offers = [
        Offer { fourcc: *b"NV12", sizes: vec![stepwise((32, 32), (1280, 960), (32, 2))] },
        offer(b"YUYV", &[(640, 480)]),
    ];
    assert_eq!(choose_format(&offers, None, 640, 480), Ok(choice(b"NV12", 640, 480)));
    assert_eq!(choose_format(&offers, None, 650, 481), Ok(choice(b"NV12", 640, 482)));
    assert_eq!(choose_format(&offers, None, 4000, 3000), Ok(choice(b"NV12", 1280, 960)));
    // No sizes enumerated: any size, so the request itself.
    let offers = [Offer { fourcc: *b"RGB3", sizes: vec![] }];
    assert_eq!(choose_format(&offers, None, 333, 222), Ok(choice(b"RGB3", 333, 222)));
    // No formats enumerated at all: ask for the configured format, or YUYV.
    assert_eq!(choose_format(&[], None, 640, 480), Ok(choice(b"YUYV", 640, 480)));
    assert_eq!(
        choose_format(&[], Some(PixelFormat::Mjpeg), 640, 480),
        Ok(choice(b"MJPG", 640, 480))
    );
}

// ---------------------------------------------------------------------------------------------
// Frame rate

#[test]
fn frame_intervals() {
    assert_eq!(fps_to_interval(30.0), (1, 30));
    assert_eq!(fps_to_interval(15.0), (1, 15));
    assert_eq!(fps_to_interval(1000.0), (1, 1000));
    assert_eq!(fps_to_interval(29.97), (1001, 30000));
    assert_eq!(fps_to_interval(30000.0 / 1001.0), (1001, 30000));
    assert_eq!(fps_to_interval(59.94), (1001, 60000));
    assert_eq!(fps_to_interval(23.976), (1001, 24000));
    assert_eq!(fps_to_interval(7.5), (2, 15));
    assert_eq!(fps_to_interval(12.5), (2, 25));
    assert_eq!(fps_to_interval(0.5), (2, 1));
    assert_eq!(fps_to_interval(0.25), (4, 1));
    assert_eq!(fps_to_interval(5000.0), (1, 1000), "clamped");
    for fps in [0.5, 1.0, 5.0, 7.5, 10.0, 12.5, 15.0, 24.0, 25.0, 29.97, 30.0, 59.94, 60.0, 120.0] {
        let (n, d) = fps_to_interval(fps);
        let back = interval_to_fps(n, d).unwrap();
        assert!((back - fps).abs() < fps * 1e-4, "{fps} -> {n}/{d} -> {back}");
    }
    assert_eq!(interval_to_fps(1, 30), Some(30.0));
    assert_eq!(interval_to_fps(2, 15), Some(7.5));
    assert_eq!(interval_to_fps(0, 30), None);
    assert_eq!(interval_to_fps(1, 0), None);
    assert_eq!(format_fps(30.0), "30");
    assert_eq!(format_fps(10.0), "10");
    assert_eq!(format_fps(120.0), "120");
    assert_eq!(format_fps(30000.0 / 1001.0), "29.97");
    assert_eq!(format_fps(7.5), "7.5");
    assert_eq!(format_fps(0.5), "0.5");
}

// ---------------------------------------------------------------------------------------------
// Frame layouts

#[test]
fn layouts_from_the_driver() {
    let yuyv = CaptureFormat::from_driver(*b"YUYV", 640, 480, 1280).unwrap();
    assert_eq!((yuyv.format(), yuyv.width(), yuyv.height()), (PixelFormat::Yuyv, 640, 480));
    assert_eq!((yuyv.stride(), yuyv.row_bytes()), (1280, 1280));
    assert_eq!((yuyv.min_len(), yuyv.padded_len()), (1280 * 480, 1280 * 480));
    // bytesperline 0: tightly packed.
    assert_eq!(CaptureFormat::from_driver(*b"YUYV", 640, 480, 0).unwrap(), yuyv);
    let padded = CaptureFormat::from_driver(*b"YUYV", 640, 480, 1344).unwrap();
    assert_eq!((padded.min_len(), padded.padded_len()), (1344 * 479 + 1280, 1344 * 480));
    let nv12 = CaptureFormat::from_driver(*b"NV12", 640, 480, 704).unwrap();
    assert_eq!((nv12.min_len(), nv12.padded_len()), (704 * 719 + 640, 704 * 720));
    let rgb = CaptureFormat::from_driver(*b"RGB3", 5, 3, 16).unwrap();
    assert_eq!((rgb.row_bytes(), rgb.min_len(), rgb.padded_len()), (15, 16 * 2 + 15, 48));
    let grey = CaptureFormat::from_driver(*b"GREY", 7, 2, 0).unwrap();
    assert_eq!((grey.stride(), grey.min_len()), (7, 14));
    let mjpeg = CaptureFormat::from_driver(*b"MJPG", 1920, 1080, 0).unwrap();
    assert_eq!((mjpeg.format(), mjpeg.stride(), mjpeg.min_len()), (PixelFormat::Mjpeg, 0, 0));
    assert_eq!(
        CaptureFormat::from_driver(*b"JPEG", 64, 48, 0).unwrap().format(),
        PixelFormat::Mjpeg
    );

    let err = |code: &[u8; 4], w, h, bpl| CaptureFormat::from_driver(*code, w, h, bpl).unwrap_err();
    assert!(err(b"YUYV", 640, 480, 1000).contains("bytesperline 1000"));
    assert!(err(b"YUYV", 641, 480, 0).contains("641x480"));
    assert!(err(b"NV12", 640, 481, 0).contains("640x481"));
    assert!(err(b"GREY", 0, 480, 0).contains("empty"));
    assert!(err(b"H264", 640, 480, 0).contains("H264"));
}

/// A deterministic tightly packed `format` frame and the same frame with rows `stride`
/// bytes apart (padding bytes 0xEE), followed by `slack` bytes of 0xDD (the rest of a
/// larger mmap buffer).
fn frames(
    format: PixelFormat,
    w: usize,
    h: usize,
    stride: usize,
    slack: usize,
) -> (Vec<u8>, Vec<u8>) {
    // NV12: h rows of luma, then h / 2 rows of interleaved chroma, as wide as the luma.
    let row = format.row_bytes(w).unwrap();
    let rows = if format == PixelFormat::Nv12 { h + h / 2 } else { h };
    let tight: Vec<u8> =
        (0..row * rows).map(|i| (i * 37 + format as usize * 11 + 3) as u8).collect();
    let mut padded = Vec::new();
    for r in tight.chunks(row) {
        padded.extend_from_slice(r);
        padded.resize(padded.len() + stride - row, 0xee);
    }
    padded.resize(padded.len() + slack, 0xdd);
    (tight, padded)
}

#[test]
fn raw_frames_with_padded_rows_are_copied_with_either_packing() {
    for format in RAW {
        for (w, h) in [(6, 4), (8, 6), (2, 2), (640, 480)] {
            let row = format.row_bytes(w).unwrap();
            for pad in [0, 2, 10, 64] {
                let stride = row + pad;
                let code = format.fourcc();
                let layout = CaptureFormat::from_driver(code, w as u32, h as u32, stride as u32)
                    .unwrap_or_else(|e| panic!("{format} {w}x{h}: {e}"));
                let (tight, padded) = frames(format, w, h, stride, 100);
                let full = padded.len() - 100;
                assert_eq!(layout.padded_len(), full);
                let what = format!("{format} {w}x{h} stride {stride}");
                let mut buf = Vec::new();

                // Tight: exactly the packed frame, whatever bytesused (>= min_len) says.
                for used in [full, layout.min_len(), padded.len(), usize::MAX] {
                    assert_eq!(
                        copy_frame(&layout, &padded, used, Packing::Tight, &mut buf),
                        Ok(row)
                    );
                    assert!(buf == tight, "{what}: tight copy, bytesused {used}");
                }
                // Driver: the padded frame, without what follows it in the buffer.
                assert_eq!(
                    copy_frame(&layout, &padded, full, Packing::Driver, &mut buf),
                    Ok(stride)
                );
                assert!(buf == padded[..full], "{what}: driver copy");
                assert_eq!(
                    copy_frame(&layout, &padded, usize::MAX, Packing::Driver, &mut buf),
                    Ok(stride)
                );
                assert_eq!(buf.len(), full, "{what}: bytesused beyond the frame");
                // The last row's padding may be missing.
                let min = layout.min_len();
                assert_eq!(
                    copy_frame(&layout, &padded, min, Packing::Driver, &mut buf),
                    Ok(stride)
                );
                assert!(buf == padded[..min], "{what}: driver copy of min_len bytes");

                // Short and empty frames are rejected for both packings.
                for packing in [Packing::Tight, Packing::Driver] {
                    assert_eq!(
                        copy_frame(&layout, &padded, min - 1, packing, &mut buf),
                        Err(BadFrame::Short { needed: min, got: min - 1 }),
                        "{what}"
                    );
                    assert_eq!(
                        copy_frame(&layout, &padded, 0, packing, &mut buf),
                        Err(BadFrame::Empty)
                    );
                    assert_eq!(
                        copy_frame(&layout, &[], full, packing, &mut buf),
                        Err(BadFrame::Empty)
                    );
                    assert_eq!(
                        copy_frame(&layout, &padded[..min - 1], full, packing, &mut buf),
                        Err(BadFrame::Short { needed: min, got: min - 1 }),
                        "{what}: the mmap buffer itself is short"
                    );
                }
            }
        }
    }
}

#[test]
fn padded_and_tight_copies_preprocess_identically() {
    for format in RAW {
        let (w, h) = (40, 30);
        let row = format.row_bytes(w).unwrap();
        for pad in [0, 8, 24] {
            let stride = row + pad;
            let layout =
                CaptureFormat::from_driver(format.fourcc(), w as u32, h as u32, stride as u32)
                    .unwrap();
            let (tight, padded) = frames(format, w, h, stride, 0);
            let mut pre = Preprocessor::new(format, w, h, Crop::Centre, 16, 16).unwrap();
            let reference = {
                let mut out = vec![0; pre.output_len()];
                pre.run(&Frame::new(format, w, h, &tight), &mut out).unwrap();
                out
            };
            for packing in [Packing::Driver, Packing::Tight] {
                let mut buf = Vec::new();
                let stride = copy_frame(&layout, &padded, padded.len(), packing, &mut buf).unwrap();
                let frame = Frame { format, width: w, height: h, stride, data: &buf };
                let mut out = vec![0; pre.output_len()];
                pre.run(&frame, &mut out).unwrap();
                assert!(out == reference, "{format} pad {pad} {packing:?}");
            }
        }
    }
}

#[test]
fn copies_reuse_the_buffer() {
    let layout = CaptureFormat::from_driver(*b"NV12", 64, 48, 80).unwrap();
    let (_, padded) = frames(PixelFormat::Nv12, 64, 48, 80, 0);
    let mut buf = Vec::with_capacity(padded.len());
    let (ptr, capacity) = (buf.as_ptr(), buf.capacity());
    for i in 0..100 {
        let packing = if i % 2 == 0 { Packing::Driver } else { Packing::Tight };
        copy_frame(&layout, &padded, padded.len() - i % 16, packing, &mut buf).unwrap();
        assert_eq!((buf.as_ptr(), buf.capacity()), (ptr, capacity), "copy {i} reallocated");
    }
    let jpeg = jpeg_image(32, 24);
    let mjpeg = CaptureFormat::from_driver(*b"MJPG", 32, 24, 0).unwrap();
    copy_frame(&mjpeg, &jpeg, jpeg.len(), Packing::Driver, &mut buf).unwrap();
    assert_eq!((buf.as_ptr(), buf.capacity()), (ptr, capacity));
}

// ---------------------------------------------------------------------------------------------
// MJPEG

fn jpeg_image(w: usize, h: usize) -> Vec<u8> {
    let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
        .encode(&pixels, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .unwrap();
    buf
}

#[test]
fn mjpeg_frames_are_cut_to_the_image() {
    let (w, h) = (48, 32);
    let jpeg = jpeg_image(w, h);
    assert!(jpeg.ends_with(&[0xff, 0xd9]));
    let layout = CaptureFormat::from_driver(*b"MJPG", w as u32, h as u32, 0).unwrap();
    let mut buf = Vec::new();
    let mut copy = |data: &[u8], used: usize| {
        copy_frame(&layout, data, used, Packing::Driver, &mut buf).map(|s| (s, buf.clone()))
    };

    // An mmap buffer much larger than the frame, bytesused exact: the image, stride 0.
    let mut mmap = jpeg.clone();
    mmap.resize(64 * 1024, 0xaa);
    assert_eq!(copy(&mmap, jpeg.len()), Ok((0, jpeg.clone())));
    // bytesused covering zero padding, or garbage without an end marker: cut.
    let mut zeros = jpeg.clone();
    zeros.resize(jpeg.len() + 300, 0);
    assert_eq!(copy(&zeros, zeros.len()), Ok((0, jpeg.clone())));
    let mut garbage = jpeg.clone();
    garbage.extend((0..500).map(|i| {
        if i % 2 == 0 {
            0xff
        } else {
            ((i % 200) as u8).wrapping_add(0xda)
        }
    }));
    garbage.extend_from_slice(&[0xff, 0xd8, 0xff, 0x00]);
    assert_eq!(copy(&garbage, garbage.len()), Ok((0, jpeg.clone())));
    // bytesused beyond the buffer is clamped to it.
    assert_eq!(copy(&zeros, usize::MAX), Ok((0, jpeg.clone())));

    // Stale bytes of an older, longer frame (with its own end marker) after this one: cut at
    // that marker; the decoder stops at the first.
    let mut stale = jpeg.clone();
    stale.extend_from_slice(&[0x12, 0x34, 0xff, 0xd9, 0, 0]);
    let (_, got) = copy(&stale, stale.len()).unwrap();
    assert_eq!(got, stale[..jpeg.len() + 4]);

    // No end marker at all (a truncated frame): kept whole, the decoder decides.
    let truncated = &jpeg[..jpeg.len() / 2];
    assert_eq!(jpeg_payload(truncated), Ok(truncated));
    // Not a JPEG, empty: rejected.
    assert_eq!(copy(&mmap[1..], jpeg.len() - 1), Err(BadFrame::NotJpeg));
    assert_eq!(copy(&[0u8; 16], 16), Err(BadFrame::NotJpeg));
    assert_eq!(copy(&mmap, 0), Err(BadFrame::Empty));
    assert_eq!(jpeg_payload(&[0xff, 0xd8]), Ok(&[0xff, 0xd8][..]));
    assert_eq!(jpeg_payload(&[0xff, 0xd9]), Err(BadFrame::NotJpeg));

    // What is delivered decodes like the clean image.
    let mut pre = Preprocessor::new(PixelFormat::Mjpeg, w, h, Crop::Centre, 8, 8).unwrap();
    let mut reference = vec![0; pre.output_len()];
    pre.run(&Frame::new(PixelFormat::Mjpeg, w, h, &jpeg), &mut reference).unwrap();
    for data in [&garbage, &stale, &zeros] {
        let (_, frame) = copy(data, data.len()).unwrap();
        let mut out = vec![0; pre.output_len()];
        pre.run(&Frame::new(PixelFormat::Mjpeg, w, h, &frame), &mut out).unwrap();
        assert_eq!(out, reference);
    }
}

#[test]
fn bad_frames_say_why() {
    assert_eq!(
        BadFrame::Short { needed: 100, got: 10 }.to_string(),
        "the frame has 10 bytes, its format and size need 100"
    );
    assert!(BadFrame::Corrupt.to_string().contains("corrupt"));
    assert!(BadFrame::NotJpeg.to_string().contains("JPEG"));
}

// ---------------------------------------------------------------------------------------------
// Timestamps

#[test]
fn buffer_timestamps() {
    // V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC, with other flags (ERROR, TSTAMP_SRC_SOE) around it.
    assert!(is_monotonic_timestamp(0x2000));
    assert!(is_monotonic_timestamp(0x2000 | 0x40 | 0x1_0000 | 0x1));
    assert!(!is_monotonic_timestamp(0));
    assert!(!is_monotonic_timestamp(0x4000), "copied from the output side");
    assert!(!is_monotonic_timestamp(0x6000));

    assert_eq!(timeval_to_duration(5, 250_000), Some(Duration::from_millis(5250)));
    assert_eq!(timeval_to_duration(0, 0), Some(Duration::ZERO));
    assert_eq!(timeval_to_duration(-1, 0), None);
    assert_eq!(timeval_to_duration(1, -1), None);
    assert_eq!(timeval_to_duration(1, 1_000_000), None);

    let s = Duration::from_secs;
    assert_eq!(frame_age(s(100), s(100)), Some(Duration::ZERO));
    assert_eq!(
        frame_age(s(100), s(100) + Duration::from_millis(40)),
        Some(Duration::from_millis(40))
    );
    assert_eq!(frame_age(s(100), s(100) + MAX_FRAME_AGE), Some(MAX_FRAME_AGE));
    assert_eq!(frame_age(s(100), s(101) + MAX_FRAME_AGE), None, "too old");
    assert_eq!(frame_age(s(101), s(100)), None, "in the future");
}

#[test]
fn the_monotonic_clock_matches_instant() {
    // Frame ages come from monotonic_now(); it must advance with Instant's clock.
    let (i0, m0) = (Instant::now(), monotonic_now().unwrap());
    std::thread::sleep(Duration::from_millis(30));
    let (i1, m1) = (Instant::now(), monotonic_now().unwrap());
    let (di, dm) = (i1 - i0, m1 - m0);
    assert!(di.abs_diff(dm) < Duration::from_millis(5), "Instant {di:?} vs CLOCK_MONOTONIC {dm:?}");
}

// ---------------------------------------------------------------------------------------------
// Opening devices

fn request() -> Request {
    Request::for_camera(&Camera::new("cam", Source::V4l2 { device: "/dev/video0".into() }))
}

#[test]
fn requests_follow_the_camera() {
    let mut camera = Camera::new("cam", Source::V4l2 { device: "/dev/video3".into() });
    camera.format = Some(PixelFormat::Mjpeg);
    (camera.width, camera.height, camera.fps) = (1280, 720, 15.0);
    let r = Request::for_camera(&camera);
    assert_eq!(r.format, Some(PixelFormat::Mjpeg));
    assert_eq!((r.width, r.height, r.fps), (1280, 720, 15.0));
    assert_eq!(
        (r.buffers, r.timeout, r.packing),
        (DEFAULT_BUFFERS, DEFAULT_TIMEOUT, Packing::Driver)
    );
    assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(2));
    assert_eq!(Packing::default(), Packing::Driver);
}

#[test]
fn a_missing_device_is_an_error_naming_it() {
    let path = Path::new("/dev/video-does-not-exist");
    let err = V4l2Source::open(path, request()).unwrap_err();
    match &err {
        SourceError::Io(source, e) => {
            assert_eq!(source, "v4l2:/dev/video-does-not-exist");
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.starts_with("v4l2:/dev/video-does-not-exist: "), "{text}");

    // Through sources::open, as the pipeline opens it.
    let camera = Camera::new("cam", Source::V4l2 { device: path.into() });
    let err = sources::open(&camera, true).err().expect("opening a missing device failed");
    assert!(matches!(err, SourceError::Io(..)), "{err:?}");
    assert!(err.to_string().contains("/dev/video-does-not-exist"), "{err}");
}

#[test]
fn a_node_that_is_not_a_camera_is_a_config_error() {
    let err = V4l2Source::open(Path::new("/dev/null"), request()).unwrap_err();
    assert!(matches!(err, SourceError::Config(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("v4l2:/dev/null") && text.contains("not a V4L2 device"), "{text}");

    let dir = std::env::temp_dir();
    let err = V4l2Source::open(&dir, request()).unwrap_err();
    assert!(err.to_string().contains(&dir.display().to_string()), "{err}");
}

#[test]
fn bad_requests_are_config_errors_naming_the_device() {
    let path = Path::new("/dev/video-does-not-exist");
    type Change = fn(&mut Request);
    let bad: [(&str, Change); 7] = [
        ("fps 0", |r| r.fps = 0.0),
        ("fps NaN", |r| r.fps = f64::NAN),
        ("1 buffers", |r| r.buffers = 1),
        ("64 buffers", |r| r.buffers = 64),
        ("timeout", |r| r.timeout = Duration::ZERO),
        ("0x480", |r| r.width = 0),
        ("yuv420", |r| r.format = Some(PixelFormat::Yuv420)),
    ];
    for (what, change) in bad {
        let mut r = request();
        change(&mut r);
        let err = V4l2Source::open(path, r).unwrap_err();
        assert!(matches!(err, SourceError::Config(_)), "{what}: {err:?}");
        let text = err.to_string();
        assert!(text.contains("v4l2:/dev/video-does-not-exist"), "{what}: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// A real camera

/// Captures from the device named by `PROM_TEST_V4L2_DEVICE` (format from
/// `PROM_TEST_V4L2_FORMAT`, default auto) and preprocesses every frame; without the variable
/// it says so and returns.
#[test]
fn captures_from_a_real_device() {
    let Some(device) = std::env::var_os("PROM_TEST_V4L2_DEVICE") else {
        println!(
            "v4l2 capture from a real device NOT RUN: set PROM_TEST_V4L2_DEVICE=/dev/videoN \
             (and optionally PROM_TEST_V4L2_FORMAT=yuyv|mjpeg|...) to run it"
        );
        return;
    };
    let path = PathBuf::from(device);
    let mut camera = Camera::new("cam", Source::V4l2 { device: path.clone() });
    camera.format = std::env::var("PROM_TEST_V4L2_FORMAT")
        .ok()
        .filter(|f| f != "auto")
        .map(|f| f.parse().unwrap());
    (camera.width, camera.height, camera.fps) = (640, 480, 30.0);

    let mut source =
        V4l2Source::open(&path, Request::for_camera(&camera)).unwrap_or_else(|e| panic!("{e}"));
    let description = source.describe();
    println!("opened {description}");
    assert!(description.starts_with(&format!("v4l2:{} ", path.display())), "{description}");
    assert!(description.contains(&format!("driver {}", source.driver())), "{description}");
    let layout = source.layout();
    let mut pre =
        Preprocessor::new(layout.format(), layout.width(), layout.height(), Crop::Centre, 224, 224)
            .unwrap();
    let mut out = vec![0; pre.output_len()];
    let mut buf = Vec::new();
    let mut previous: Option<FrameMeta> = None;
    let mut capture = |source: &mut V4l2Source, sequence: u64, previous: &mut Option<FrameMeta>| {
        let meta = source.next_frame(&mut buf).unwrap_or_else(|e| panic!("frame {sequence}: {e}"));
        assert_eq!(
            (meta.format, meta.width, meta.height),
            (layout.format(), layout.width(), layout.height())
        );
        assert_eq!(meta.sequence, sequence);
        assert!(meta.captured <= Instant::now());
        if let Some(p) = previous {
            assert!(meta.captured >= p.captured, "frame {sequence} captured before the last");
        }
        if meta.format != PixelFormat::Mjpeg {
            assert!(meta.stride >= meta.format.row_bytes(meta.width).unwrap());
        }
        let frame = meta.frame(&buf);
        pre.run(&frame, &mut out).unwrap_or_else(|e| panic!("frame {sequence}: {e}"));
        *previous = Some(meta);
    };
    for i in 0..10 {
        capture(&mut source, i, &mut previous);
    }
    // Reopening renegotiates; the sequence numbers go on.
    source.reopen().unwrap_or_else(|e| panic!("reopen: {e}"));
    assert_eq!(source.layout(), layout);
    for i in 10..15 {
        capture(&mut source, i, &mut previous);
    }
    println!("captured 15 frames, {} lost", source.lost_frames());
    drop(source);

    // The same device through sources::open (what the pipeline does).
    let mut source = sources::open(&camera, true).unwrap_or_else(|e| panic!("{e}"));
    let meta = source.next_frame(&mut buf).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((meta.width, meta.height), (layout.width(), layout.height()));
}
