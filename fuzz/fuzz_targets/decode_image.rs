//! Fuzz target: the image path of ClassifyImage and `file:` sources. `imageio::decode` on
//! arbitrary bytes must return an image or an error (never panic, never allocate beyond
//! its bounds: libFuzzer's -rss_limit_mb and -malloc_limit_mb catch that); a decoded image
//! must be consistent and go through the crop-and-resize to a model input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prom_daemon::imageio::{crop_resize, decode, MAX_DECODED_PIXELS};

fuzz_target!(|data: &[u8]| {
    if let Ok((w, h, rgb)) = decode(data) {
        assert!(w > 0 && h > 0, "{w}x{h}");
        assert!(u64::from(w) * u64::from(h) <= MAX_DECODED_PIXELS, "{w}x{h}");
        assert_eq!(rgb.len(), w as usize * h as usize * 3);
        let mut out = vec![0u8; 32 * 32 * 3];
        crop_resize(&rgb, w as usize, h as usize, &mut out, 32, 32);
    }
});
