//! Image files to model input: decode JPEG/PNG/PPM, centre-crop to the model's aspect
//! ratio, resize (bilinear, fixed point) to the model input, uint8 RGB.

use std::path::Path;

/// Decoding or reading an image failed.
#[derive(Debug)]
pub enum ImageError {
    /// Not an image this daemon decodes, or damaged.
    Invalid(String),
    /// A well-formed image that is too large to decode within the memory bounds.
    TooLarge(String),
}

impl ImageError {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            ImageError::Invalid(m) | ImageError::TooLarge(m) => m,
        }
    }

    fn map(self, f: impl FnOnce(String) -> String) -> ImageError {
        match self {
            ImageError::Invalid(m) => ImageError::Invalid(f(m)),
            ImageError::TooLarge(m) => ImageError::TooLarge(f(m)),
        }
    }
}

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ImageError {}

/// Largest accepted image side.
pub const MAX_SIDE: u32 = 16384;
/// Largest image area a header may declare. Real cameras stay below it (50 MP sensors
/// are 8192x6144); a small file declaring more is a decompression bomb.
pub const MAX_DECLARED_PIXELS: u64 = 64 << 20;
/// Largest image decoded at full size. JPEGs above it are decoded with DCT-domain
/// downscaling (1/2, 1/4 or 1/8) to at most this many pixels; PNG and PPM above it are
/// refused. 8 MP of RGB8 is 24 MiB.
pub const MAX_DECODED_PIXELS: u64 = 8 << 20;
/// Largest buffer a decoder may allocate (the full-size decode of [`MAX_DECODED_PIXELS`] in
/// RGBA with 16 bits per channel fits; it is checked before allocating).
pub const MAX_DECODER_ALLOC: u64 = 64 << 20;
/// Largest image file read from disk.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Decodes an encoded image (JPEG, PNG or PPM/PGM) to RGB8, within fixed memory bounds: the
/// dimensions in the header are checked before anything is allocated, large JPEGs are
/// decoded downscaled, and the decoders' allocations are capped.
pub fn decode(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), ImageError> {
    use image::ImageFormat;
    let format = image::guess_format(bytes)
        .map_err(|e| ImageError::Invalid(format!("unrecognised image format: {e}")))?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Pnm) {
        return Err(ImageError::Invalid(format!(
            "unsupported image format {format:?} (JPEG, PNG, PPM)"
        )));
    }
    let reader = || {
        let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        limits.max_alloc = Some(MAX_DECODER_ALLOC);
        reader.limits(limits);
        reader
    };
    let invalid = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => {
            ImageError::TooLarge(format!("image exceeds the decoder's memory bounds: {l}"))
        }
        e => ImageError::Invalid(format!("cannot decode image: {e}")),
    };
    // The header alone: nothing is allocated for the pixels yet.
    let (w, h) = reader().into_dimensions().map_err(invalid)?;
    let declared = u64::from(w) * u64::from(h);
    if w == 0 || h == 0 {
        return Err(ImageError::Invalid(format!("image is {w}x{h}")));
    }
    if declared > MAX_DECLARED_PIXELS {
        return Err(ImageError::TooLarge(format!(
            "image declares {w}x{h}, more than {} megapixels",
            MAX_DECLARED_PIXELS >> 20
        )));
    }
    if declared > MAX_DECODED_PIXELS {
        if format == ImageFormat::Jpeg {
            return decode_jpeg_downscaled(bytes, w, h);
        }
        return Err(ImageError::TooLarge(format!(
            "image is {w}x{h}; {format:?} images above {} megapixels are not decoded",
            MAX_DECODED_PIXELS >> 20
        )));
    }
    // Fuzzing found a JPEG on which the image crate's decoder (zune-jpeg 0.5.15, AVX2 IDCT)
    // panics; a hostile image must be an error, never a dead worker thread.
    let decoded = std::panic::catch_unwind(|| reader().decode());
    let img = decoded
        .map_err(|_| ImageError::Invalid("cannot decode image: the decoder panicked".into()))?
        .map_err(invalid)?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    Ok((w, h, rgb.into_raw()))
}

/// Decodes a large JPEG with DCT-domain downscaling by the smallest of 1/2, 1/4, 1/8 that
/// brings it to [`MAX_DECODED_PIXELS`] or fewer.
fn decode_jpeg_downscaled(bytes: &[u8], w: u32, h: u32) -> Result<(u32, u32, Vec<u8>), ImageError> {
    let factor = [2u32, 4, 8]
        .into_iter()
        .find(|f| u64::from(w.div_ceil(*f)) * u64::from(h.div_ceil(*f)) <= MAX_DECODED_PIXELS)
        .ok_or_else(|| ImageError::TooLarge(format!("image is {w}x{h}, too large even at 1/8")))?;
    let (sw, sh) = (w.div_ceil(factor), h.div_ceil(factor));
    let bad = |e: String| ImageError::Invalid(format!("cannot decode image: {e}"));
    // jpeg-decoder is fuzzed, but a hostile image must never take the daemon down.
    let decoded = std::panic::catch_unwind(|| {
        let mut dec = jpeg_decoder::Decoder::new(bytes);
        dec.set_max_decoding_buffer_size(MAX_DECODER_ALLOC as usize);
        dec.read_info().map_err(|e| e.to_string())?;
        // Sides are at most MAX_SIDE (checked from the header), so they fit u16.
        let (dw, dh) = dec.scale(sw as u16, sh as u16).map_err(|e| e.to_string())?;
        let info = dec.info().ok_or("no frame header")?;
        let pixels = dec.decode().map_err(|e| e.to_string())?;
        Ok::<_, String>((u32::from(dw), u32::from(dh), info.pixel_format, pixels))
    })
    .unwrap_or_else(|_| Err("decoder panicked".into()));
    let (dw, dh, format, pixels) = decoded.map_err(bad)?;
    let n = dw as usize * dh as usize;
    let rgb = match format {
        jpeg_decoder::PixelFormat::RGB24 if pixels.len() >= n * 3 => pixels[..n * 3].to_vec(),
        jpeg_decoder::PixelFormat::L8 if pixels.len() >= n => {
            pixels[..n].iter().flat_map(|&v| [v, v, v]).collect()
        }
        jpeg_decoder::PixelFormat::CMYK32 if pixels.len() >= n * 4 => pixels[..n * 4]
            .chunks_exact(4)
            .flat_map(|p| {
                // Adobe CMYK JPEGs store inverted values: the channel is already 255 - ink.
                let k = u32::from(p[3]);
                [0, 1, 2].map(|c| ((u32::from(p[c]) * k + 127) / 255) as u8)
            })
            .collect(),
        other => {
            return Err(bad(format!("{other:?} output of {} bytes for {dw}x{dh}", pixels.len())))
        }
    };
    Ok((dw, dh, rgb))
}

/// Reads and decodes an image file (at most [`MAX_FILE_BYTES`]).
pub fn load(path: &Path) -> Result<(u32, u32, Vec<u8>), ImageError> {
    let bytes = prom_engine::files::read_regular(path, MAX_FILE_BYTES, "image")
        .map_err(|e| ImageError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    decode(&bytes).map_err(|e| e.map(|m| format!("{}: {m}", path.display())))
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
