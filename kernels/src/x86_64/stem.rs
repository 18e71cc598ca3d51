//! AVX2 stem: full 3x3 stride-2 padding-1 convolution from uint8 RGB to int8.
//!
//! Scheme (`stem3x3s2_u8s8_8c__avx2`): output channels are vectorised, 8 int32 lanes per
//! group and up to [`MAX_GROUPS`] groups per pass. The 9 taps of one kernel row are 9
//! consecutive bytes of the image (3 columns x RGB), so the kernel works on pairs of them:
//! each row gives 5 pairs (the 10th tap is a neighbour's byte with weight 0), 15 pairs per
//! pixel. A pair is broadcast from memory as two int16 and one `vpmaddwd` against the weights
//! interleaved per pair (`[pair][group][channel][2]`, packed once per call into a stack array)
//! adds it into 8 channels.
//!
//! For a chunk of [`COLS`] output pixels the three input rows are first widened to int16 into a
//! small stack window, padding columns and rows already filled with the zero point, so the
//! pixel loop reads the window without any bounds test.
//!
//! Channel tails: with `Cout >= 8` the last group is moved back to `Cout - 8`, overlapping the
//! one before (it recomputes identical values); `Cout < 8` pads the weights with zero
//! channels and stores only `Cout` bytes.
//!
//! Overflow: `vpmaddwd` of `u8` and `i8` values as int16 is exact (`2 * 255 * 128 < 2^31`),
//! and `|acc| <= 27 * 255 * 128 < 2^20`.

use super::requant::{LaneParams, OutputParams};
use super::Avx2;
use crate::params::{Epilogue, StemShape};
use core::arch::x86_64::*;
use std::ops::Range;

/// Output channels per group (int32 lanes of a ymm register).
const GROUP: usize = 8;
/// Groups per pass: up to 64 output channels in registers.
const MAX_GROUPS: usize = 8;
/// Tap pairs per pixel: 3 kernel rows x 5.
const PAIRS: usize = 15;
/// Output pixels per widened window.
const COLS: usize = 32;
/// int16 pairs per window row: `(2 * COLS + 1) * 3` values plus the weight-0 partner of the
/// last tap, rounded up.
const ROW_PAIRS: usize = 104;
const _: () = assert!(2 * ROW_PAIRS > (2 * COLS + 1) * 3);

/// Packed weights of one pass: `[pair][group]`, each 8 channels x (tap, next tap) as int16.
type Packed = [__m256i; PAIRS * MAX_GROUPS];
/// The three widened input rows of one window, int16 values viewed as pairs.
type Window = [[i32; ROW_PAIRS]; 3];

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    _t: Avx2,
    shape: StemShape,
    input: &[u8],
    input_zero_point: u8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    // `Kernels::stem3x3s2` checked the same; the pointer arithmetic below relies on it.
    shape.check_call(input.len(), weights.len(), epi, &rows, output.len());
    if rows.is_empty() {
        return;
    }
    // SAFETY: the `Avx2` token proves AVX2; lengths and the row range were checked above.
    unsafe { run_avx2(shape, input, input_zero_point, weights, epi, rows, output) }
}

/// # Safety
/// AVX2 must be available; slices and `rows` as checked in [`run`].
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(
    shape: StemShape,
    input: &[u8],
    input_zero_point: u8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    let co = shape.out_channels;
    // Fewer than 8 channels: zero-padded to one full group.
    let mut narrow = [0i8; 27 * GROUP];
    let (wsrc, stride) = if co >= GROUP {
        (weights, co)
    } else {
        for (dst, src) in narrow.chunks_exact_mut(GROUP).zip(weights.chunks_exact(co)) {
            dst[..co].copy_from_slice(src);
        }
        (&narrow[..], GROUP)
    };
    let mut start = 0;
    while start < co {
        let end = (start + GROUP * MAX_GROUPS).min(co);
        let mut offsets = [0usize; MAX_GROUPS];
        let groups = (end - start).div_ceil(GROUP);
        for (g, off) in offsets.iter_mut().enumerate().take(groups) {
            *off = (start + g * GROUP).min(stride - GROUP);
        }
        let pass = Pass {
            input,
            zp: input_zero_point,
            shape,
            epi,
            rows: rows.clone(),
            offsets,
            packed: pack(wsrc, stride, &offsets[..groups]),
        };
        // SAFETY: every group's 8 channels lie inside the (padded) weights; when `co < 8`
        // the single group starts at 0 and only `co` bytes are stored.
        unsafe {
            match groups {
                1 => pass.run::<1>(output),
                2 => pass.run::<2>(output),
                3 => pass.run::<3>(output),
                4 => pass.run::<4>(output),
                5 => pass.run::<5>(output),
                6 => pass.run::<6>(output),
                7 => pass.run::<7>(output),
                _ => pass.run::<8>(output),
            }
        }
        start = end;
    }
}

/// Interleaves the weights of tap pairs for the groups at `offsets`.
#[target_feature(enable = "avx2")]
fn pack(w: &[i8], stride: usize, offsets: &[usize]) -> Packed {
    let mut packed = [_mm256_setzero_si256(); PAIRS * MAX_GROUPS];
    for ky in 0..3 {
        for p in 0..5 {
            let ta = ky * 9 + 2 * p;
            for (g, &off) in offsets.iter().enumerate() {
                let row_a = &w[ta * stride + off..][..GROUP];
                // SAFETY: both slices have 8 bytes.
                let (a, b) = unsafe {
                    let a = _mm_loadl_epi64(row_a.as_ptr().cast());
                    // The 10th tap of a row gets weight 0.
                    let b = if 2 * p + 1 < 9 {
                        _mm_loadl_epi64(w[(ta + 1) * stride + off..][..GROUP].as_ptr().cast())
                    } else {
                        _mm_setzero_si128()
                    };
                    (a, b)
                };
                packed[(ky * 5 + p) * MAX_GROUPS + g] =
                    _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a, b));
            }
        }
    }
    packed
}

/// One pass over up to 64 output channels.
struct Pass<'a> {
    input: &'a [u8],
    zp: u8,
    shape: StemShape,
    epi: &'a Epilogue<'a>,
    rows: Range<usize>,
    /// First channel of each group.
    offsets: [usize; MAX_GROUPS],
    packed: Packed,
}

impl Pass<'_> {
    /// Computes the pass's channels for every output row.
    ///
    /// # Safety
    /// AVX2; `output` holds `rows.len() * out_width * Cout` values; every group's 8 channels
    /// `offsets[g]..offsets[g] + 8` lie below `Cout`, except for `Cout < 8`, where `G == 1`
    /// and `offsets[0] == 0`.
    // One instance per group count, kept out of line so `run_avx2` stays small.
    #[inline(never)]
    #[target_feature(enable = "avx2")]
    unsafe fn run<const G: usize>(&self, output: &mut [i8]) {
        let co = self.shape.out_channels;
        let wo = self.shape.out_width();
        let mut lp = [LaneParams::load(self.epi.bias, self.epi.multiplier, self.epi.shift, 0); G];
        for (l, &off) in lp.iter_mut().zip(&self.offsets) {
            *l = LaneParams::load(self.epi.bias, self.epi.multiplier, self.epi.shift, off);
        }
        let out =
            OutputParams::new(self.epi.output_zero_point, self.epi.output_min, self.epi.output_max);
        let mut win: Window = [[0; ROW_PAIRS]; 3];
        for oy in self.rows.clone() {
            let mut ox0 = 0;
            while ox0 < wo {
                let ox1 = (ox0 + COLS).min(wo);
                self.widen(&mut win, oy, ox0, ox1);
                for ox in ox0..ox1 {
                    let acc = stem3x3s2_u8s8_8c__avx2::<G>(&win, 3 * (ox - ox0), &self.packed);
                    // SAFETY: pixel ox of output row oy - rows.start exists.
                    let dst =
                        unsafe { output.as_mut_ptr().add(((oy - self.rows.start) * wo + ox) * co) };
                    let mut g = 0;
                    while g < G {
                        let h = (g + 1).min(G - 1);
                        let v = out.narrow16(lp[g].apply_dup(acc[g]), lp[h].apply_dup(acc[h]));
                        // SAFETY: (caller) the groups' channels lie inside the pixel; with
                        // fewer than 8 channels only `co` bytes are written.
                        unsafe {
                            if co < GROUP {
                                let mut tmp = [0i8; 16];
                                _mm_storeu_si128(tmp.as_mut_ptr().cast(), v);
                                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, co);
                            } else {
                                _mm_storel_epi64(dst.add(self.offsets[g]).cast(), v);
                                _mm_storel_epi64(
                                    dst.add(self.offsets[h]).cast(),
                                    _mm_unpackhi_epi64(v, v),
                                );
                            }
                        }
                        g += 2;
                    }
                }
                ox0 = ox1;
            }
        }
    }

    /// Fills the window with the input rows of output row `oy`, columns `2 ox0 - 1 ..= 2 ox1
    /// - 1`, widened to int16, padding included.
    #[target_feature(enable = "avx2")]
    fn widen(&self, win: &mut Window, oy: usize, ox0: usize, ox1: usize) {
        let (h, w) = (self.shape.height, self.shape.width);
        let zp = i16::from(self.zp);
        let cols = 2 * (ox1 - ox0) + 1;
        for (ky, row) in win.iter_mut().enumerate() {
            let iy = (2 * oy + ky).wrapping_sub(1);
            if iy >= h {
                let zz = i32::from(zp) * 0x1_0001;
                row.fill(zz);
                continue;
            }
            let src_row = &self.input[iy * w * 3..(iy + 1) * w * 3];
            // Window column j is image column 2 * ox0 - 1 + j.
            let first = (2 * ox0).saturating_sub(1);
            let last = (2 * ox0 + cols - 1).min(w); // exclusive
            let lead = usize::from(ox0 == 0);
            for e in 0..3 * lead {
                set(row, e, zp);
            }
            let src = &src_row[3 * first..3 * last];
            widen_bytes(src, row, 3 * lead);
            for e in 3 * (lead + last - first)..3 * cols {
                set(row, e, zp);
            }
        }
    }
}

/// Writes int16 value `v` at element `e` of a window row.
#[inline]
fn set(row: &mut [i32; ROW_PAIRS], e: usize, v: i16) {
    let pair = &mut row[e / 2];
    let shift = 16 * (e % 2);
    *pair = (*pair & !(0xffff << shift)) | (i32::from(v as u16) << shift);
}

/// Zero-extends `src` into the window row from element `at` on.
#[inline]
#[target_feature(enable = "avx2")]
fn widen_bytes(src: &[u8], row: &mut [i32; ROW_PAIRS], at: usize) {
    assert!(at + src.len() <= 2 * ROW_PAIRS, "stem: window overflow");
    let mut chunks = src.chunks_exact(16);
    let mut e = at;
    for chunk in &mut chunks {
        // SAFETY: the chunk has 16 bytes; elements e..e + 16 lie inside the row (asserted).
        unsafe {
            let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(chunk.as_ptr().cast()));
            _mm256_storeu_si256(row.as_mut_ptr().cast::<i16>().add(e).cast(), v);
        }
        e += 16;
    }
    for &b in chunks.remainder() {
        set(row, e, i16::from(b));
        e += 1;
    }
}

/// The MAC loop of one pixel whose taps start at pair `base` of each window row: 15 tap pairs
/// x `G` groups of 8 output channels.
#[inline]
#[target_feature(enable = "avx2")]
fn stem3x3s2_u8s8_8c__avx2<const G: usize>(win: &Window, base: usize, w: &Packed) -> [__m256i; G] {
    let mut acc = [_mm256_setzero_si256(); G];
    for (ky, row) in win.iter().enumerate() {
        let taps = &row[base..base + 5];
        for (p, &pair) in taps.iter().enumerate() {
            let x = _mm256_set1_epi32(pair);
            let wp = &w[(ky * 5 + p) * MAX_GROUPS..][..G];
            for (a, &wv) in acc.iter_mut().zip(wp) {
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(x, wv));
            }
        }
    }
    acc
}
