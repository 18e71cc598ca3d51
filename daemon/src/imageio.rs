//! Image files to model input: decode JPEG/PNG/PPM, centre-crop to the model's aspect
//! ratio, resize (bilinear, fixed point) to the model input, uint8 RGB.

use std::path::Path;

/// Decoding or reading an image failed.
#[derive(Debug)]
pub struct ImageError(pub String);

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImageError {}

/// Largest accepted image side (guards memory on hostile input).
pub const MAX_SIDE: u32 = 16384;

/// Decodes an encoded image (JPEG, PNG or PPM/PGM) to RGB8.
pub fn decode(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), ImageError> {
    let format = image::guess_format(bytes)
        .map_err(|e| ImageError(format!("unrecognised image format: {e}")))?;
    if !matches!(
        format,
        image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::Pnm
    ) {
        return Err(ImageError(format!("unsupported image format {format:?} (JPEG, PNG, PPM)")));
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| ImageError(format!("cannot decode image: {e}")))?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    Ok((w, h, rgb.into_raw()))
}

/// Reads and decodes an image file.
pub fn load(path: &Path) -> Result<(u32, u32, Vec<u8>), ImageError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ImageError(format!("cannot read {}: {e}", path.display())))?;
    decode(&bytes).map_err(|e| ImageError(format!("{}: {e}", path.display())))
}

/// Centre-crops `src` (`w x h` RGB8) to the aspect ratio of `out_w x out_h` and resizes it
/// bilinearly (16.16 fixed point, pixel centres aligned) into `out`.
pub fn crop_resize(src: &[u8], w: usize, h: usize, out: &mut [u8], out_w: usize, out_h: usize) {
    assert_eq!(src.len(), w * h * 3);
    assert_eq!(out.len(), out_w * out_h * 3);
    // Largest centred region with the output's aspect ratio.
    let (cw, ch) =
        if w * out_h > h * out_w { (h * out_w / out_h, h) } else { (w, w * out_h / out_w) };
    let (cw, ch) = (cw.max(1), ch.max(1));
    let (x0, y0) = ((w - cw) / 2, (h - ch) / 2);
    // Source coordinate of output pixel centre i: (i + 0.5) * c / o - 0.5, in 16.16.
    let coord = |i: usize, c: usize, o: usize| -> i64 {
        (((2 * i as i64 + 1) * c as i64) << 16) / (2 * o as i64) - (1 << 15)
    };
    for oy in 0..out_h {
        let sy = coord(oy, ch, out_h).clamp(0, ((ch - 1) as i64) << 16);
        let (y_a, fy) = ((sy >> 16) as usize, sy & 0xffff);
        let y_b = (y_a + 1).min(ch - 1);
        for ox in 0..out_w {
            let sx = coord(ox, cw, out_w).clamp(0, ((cw - 1) as i64) << 16);
            let (x_a, fx) = ((sx >> 16) as usize, sx & 0xffff);
            let x_b = (x_a + 1).min(cw - 1);
            for c in 0..3 {
                let p = |x: usize, y: usize| i64::from(src[((y0 + y) * w + x0 + x) * 3 + c]);
                let top = p(x_a, y_a) * (65536 - fx) + p(x_b, y_a) * fx;
                let bottom = p(x_a, y_b) * (65536 - fx) + p(x_b, y_b) * fx;
                let v = (top * (65536 - fy) + bottom * fy + (1 << 31)) >> 32;
                out[(oy * out_w + ox) * 3 + c] = v.clamp(0, 255) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_resize_is_exact_and_uniform_stays_uniform() {
        let src: Vec<u8> = (0..4 * 4 * 3).map(|i| i as u8).collect();
        let mut out = vec![0u8; 4 * 4 * 3];
        crop_resize(&src, 4, 4, &mut out, 4, 4);
        assert_eq!(out, src);
        let flat = vec![77u8; 640 * 480 * 3];
        let mut small = vec![0u8; 96 * 96 * 3];
        crop_resize(&flat, 640, 480, &mut small, 96, 96);
        assert!(small.iter().all(|&v| v == 77));
    }

    #[test]
    fn crops_the_centre() {
        // 6x2 image: left and right thirds black, centre white; a square crop is the centre.
        let mut src = vec![0u8; 6 * 2 * 3];
        for y in 0..2 {
            for x in 2..4 {
                src[(y * 6 + x) * 3..(y * 6 + x) * 3 + 3].fill(255);
            }
        }
        let mut out = vec![0u8; 2 * 2 * 3];
        crop_resize(&src, 6, 2, &mut out, 2, 2);
        assert!(out.iter().all(|&v| v == 255));
    }

    #[test]
    fn decodes_ppm_and_rejects_garbage() {
        let ppm = b"P6\n2 1\n255\n\x01\x02\x03\x04\x05\x06";
        assert_eq!(decode(ppm).unwrap(), (2, 1, vec![1, 2, 3, 4, 5, 6]));
        assert!(decode(b"not an image").is_err());
        assert!(decode(b"P6\n2 1\n255\n\x01").is_err());
    }
}
