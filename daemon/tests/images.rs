//! Image decoding under hostile input: every decompression-bomb class is refused from its
//! header, large real JPEGs are decoded downscaled, `promctl classify` stays within a small
//! address space on all of them, and FIFOs are refused without blocking.

mod common;
use common::bombs;
use prom_daemon::imageio::{decode, load, ImageError, MAX_DECODED_PIXELS};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn every_bomb_is_refused_as_too_large_before_decoding() {
    for bomb in bombs::all() {
        let t = Instant::now();
        match decode(&bomb.bytes) {
            Err(ImageError::TooLarge(m)) => {
                let (w, h) = bomb.declared;
                assert!(
                    m.contains(&format!("{w}x{h}")) || m.contains("memory"),
                    "{}: {m}",
                    bomb.name
                )
            }
            Err(ImageError::Invalid(m)) => {
                // Sides above the format's or the decoder's limit fail in the header parse.
                assert!(bomb.declared.0 > 16384 || bomb.declared.1 > 16384, "{}: {m}", bomb.name)
            }
            Ok((w, h, _)) => panic!("{}: decoded as {w}x{h}", bomb.name),
        }
        assert!(t.elapsed() < Duration::from_secs(1), "{}: {:?}", bomb.name, t.elapsed());
    }
}

#[test]
fn large_jpegs_are_decoded_downscaled_and_small_ones_at_full_size() {
    // 24 MP: over the full-size bound, decoded at 1/2 (3000x2000 = 6 MP).
    let (w, h, rgb) = decode(&bombs::large_jpeg(6000, 4000)).unwrap();
    assert_eq!((w, h), (3000, 2000));
    assert_eq!(rgb.len(), 3000 * 2000 * 3);
    assert!(u64::from(w) * u64::from(h) <= MAX_DECODED_PIXELS);
    // The content survives: left dark red-free, right red (the gradient's x channel).
    let px = |x: u32, y: u32| &rgb[((y * w + x) * 3) as usize..][..3];
    assert!(
        px(5, 1000)[0] < 20 && px(2994, 1000)[0] > 235,
        "{:?} {:?}",
        px(5, 1000),
        px(2994, 1000)
    );
    // 12 MP: 1/2 (6 MP).
    assert_eq!(decode(&bombs::large_jpeg(4000, 3000)).unwrap().0, 2000);
    // At most 8 MP: full size.
    let (w, h, _) = decode(&bombs::large_jpeg(3000, 2000)).unwrap();
    assert_eq!((w, h), (3000, 2000));
}

#[test]
fn promctl_classify_refuses_bombs_within_a_small_address_space() {
    let dir = std::env::temp_dir().join(format!("prom-bombs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (i, bomb) in bombs::all().into_iter().enumerate() {
        let ext = if bomb.name.starts_with("jpeg") {
            "jpg"
        } else if bomb.name.starts_with("png") {
            "png"
        } else {
            "ppm"
        };
        let path = dir.join(format!("bomb{i}.{ext}"));
        std::fs::write(&path, &bomb.bytes).unwrap();
        files.push(path);
    }
    let big = dir.join("photo.jpg");
    std::fs::write(&big, bombs::large_jpeg(6000, 4000)).unwrap();
    // 400 MB of address space: a decoder allocating for any declared image would abort.
    let out = Command::new("bash")
        .arg("-c")
        .arg("ulimit -v 400000; exec \"$@\"")
        .arg("bash")
        .arg(env!("CARGO_BIN_EXE_promctl"))
        .arg("classify")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fashion-mnist-prom.prom"))
        .args(&files)
        .arg(&big)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for f in &files {
        assert!(
            stderr.contains(&f.display().to_string()),
            "{} not reported:\n{stderr}",
            f.display()
        );
    }
    let refused = stderr.lines().filter(|l| l.starts_with("promctl: ") && l.contains("/bomb"));
    assert_eq!(refused.count(), files.len(), "{stderr}");
    let summary = format!("{} of {} images could not be read", files.len(), files.len() + 1);
    assert!(stderr.contains(&summary), "{stderr}");
    assert!(stdout.contains("photo.jpg"), "the real photo was classified:\n{stdout}\n{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn image_fifos_are_refused_without_blocking() {
    let dir = std::env::temp_dir().join(format!("prom-image-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("frame.png");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (tx, rx) = std::sync::mpsc::channel();
    let f = fifo.clone();
    std::thread::spawn(move || tx.send(load(&f).map(|_| ()).map_err(|e| e.to_string())).unwrap());
    let r = rx.recv_timeout(Duration::from_secs(10)).expect("load blocked on a FIFO");
    assert!(r.unwrap_err().contains("not a regular file"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Found by the decode_image fuzz target (2026-12-03): a 1.5 KB JPEG on which zune-jpeg
/// 0.5.15's AVX2 IDCT panics (`Option::unwrap()` on `None`). Decoding it is an error, and
/// decoding goes on working afterwards.
#[test]
fn a_jpeg_that_panics_the_decoder_is_an_error() {
    let bytes = include_bytes!("data/fuzz-zune-jpeg-idct-panic.jpg");
    for _ in 0..3 {
        match decode(bytes) {
            Err(ImageError::Invalid(m)) => assert!(m.contains("decoder panicked"), "{m}"),
            Err(e) => panic!("unexpected error {e:?}"),
            // A decoder version that no longer panics may decode it; that is fine too.
            Ok((w, h, rgb)) => assert_eq!(rgb.len(), (w * h * 3) as usize),
        }
    }
    assert_eq!(decode(&bombs::large_jpeg(64, 48)).unwrap().0, 64);
}
