//! Decompression bombs: small, well-formed image files whose headers declare huge images,
//! in every format and pixel layout the daemon decodes, plus large real images.

use image::{ExtendedColorType, ImageEncoder};

/// A bomb: a name, the file bytes and the declared size.
pub struct Bomb {
    pub name: String,
    pub bytes: Vec<u8>,
    pub declared: (u32, u32),
}

fn jpeg(w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
    let channels = if color == ExtendedColorType::L8 { 1 } else { 3 };
    let pixels: Vec<u8> = (0..w * h * channels).map(|i| (i * 37 % 251) as u8).collect();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .write_image(&pixels, w, h, color)
        .unwrap();
    out
}

/// A small JPEG whose frame header (SOF0) declares `w x h`.
pub fn jpeg_declaring(w: u16, h: u16, grey: bool) -> Vec<u8> {
    let color = if grey { ExtendedColorType::L8 } else { ExtendedColorType::Rgb8 };
    let mut b = jpeg(16, 16, color);
    let sof = b.windows(2).position(|m| m == [0xFF, 0xC0]).expect("baseline JPEG");
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    b
}

/// A small PNG whose IHDR declares `w x h` (CRC fixed, so only the size is hostile).
pub fn png_declaring(w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
    let bpp = color.bits_per_pixel() as usize / 8;
    let pixels = vec![7u8; 4 * 4 * bpp];
    let mut b = Vec::new();
    image::codecs::png::PngEncoder::new(&mut b).write_image(&pixels, 4, 4, color).unwrap();
    // Signature (8), IHDR length (4), "IHDR" (4), width, height, ..., CRC over type+data.
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A PPM/PGM header declaring `w x h` with a few bytes of data.
pub fn pnm_declaring(magic: &str, w: u32, h: u32, max: u32) -> Vec<u8> {
    let mut b = format!("{magic}\n{w} {h}\n{max}\n").into_bytes();
    b.extend_from_slice(&[1u8; 64]);
    b
}

/// Every bomb class from the hardening audit, at several sizes.
pub fn all() -> Vec<Bomb> {
    let mut v = Vec::new();
    let mut push = |name: String, bytes: Vec<u8>, declared| v.push(Bomb { name, bytes, declared });
    for (w, h) in [(13000u16, 13000u16), (65000, 65000), (16384, 9000), (9000, 16384)] {
        for grey in [false, true] {
            push(
                format!("jpeg {w}x{h} grey={grey}"),
                jpeg_declaring(w, h, grey),
                (w.into(), h.into()),
            );
        }
    }
    use ExtendedColorType::*;
    for (w, h, color) in [
        (16384, 16384, L8),
        (13377, 13377, Rgb8),
        (8192, 8192, Rgba16),
        (4000, 3000, Rgb8),
        (100_000, 100_000, La8),
        (1, 1 << 30, L16),
    ] {
        push(format!("png {w}x{h} {color:?}"), png_declaring(w, h, color), (w, h));
    }
    for (magic, w, h, max) in
        [("P6", 20000, 20000, 255), ("P5", 30000, 30000, 255), ("P6", 5000, 5000, 65535)]
    {
        push(format!("{magic} {w}x{h} max {max}"), pnm_declaring(magic, w, h, max), (w, h));
    }
    v
}

/// A real photograph-sized JPEG (`w x h`, smooth content), for the downscaled path.
pub fn large_jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            pixels.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, 128]);
        }
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .write_image(&pixels, w, h, ExtendedColorType::Rgb8)
        .unwrap();
    out
}
