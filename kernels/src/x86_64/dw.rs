//! AVX2 depthwise 3x3 convolution: int8, stride 1 or 2, padding 1 with the input zero point.
//!
//! Scheme (`dw3x3s1_s8_16c__avx2`, `dw3x3s2_s8_16c__avx2`): channels are vectorised 16 at a
//! time and a row is swept column by column. The three input rows of one column are widened
//! once into `vpmaddwd` operands: rows 0 and 1 interleaved byte-wise and sign-extended, so each
//! int32 lane holds the int16 pair `(r0, r1)` of one channel and meets the weight pair
//! `(w[0][kx], w[1][kx])`; row 2 sign-extended to int32, which read as int16 pairs is
//! `(r2, sign bits)` and meets `(w[2][kx], 0)`. A column thus costs 2 `vpmaddwd` per 8
//! channels for each output it feeds, and is built once: in stride 1 it feeds three outputs
//! (kx = 2, 1, 0 of outputs ix - 1, ix, ix + 1) whose accumulators roll along the row.
//!
//! Padding: an input row outside the image reads a 16-byte zero-point array with a pixel step
//! of 0; the left and right padding columns are constant per block, so their contributions are
//! computed once. The per-pixel loops have no bounds tests.
//!
//! Channel tails: with `C >= 16` the last block is moved back to `C - 16`, overlapping the one
//! before (it recomputes identical values), so every load and store is 16 bytes inside one
//! pixel. `C < 16` runs one block whose loads and stores go through a 16-byte stack copy.
//!
//! Overflow: none; int8 products fit `vpmaddwd` exactly and `|acc| <= 9 * 128 * 128 < 2^18`.

use super::requant::{LaneParams, OutputParams};
use super::Avx2;
use crate::params::{DepthwiseShape, Epilogue};
use core::arch::x86_64::*;
use std::ops::Range;

/// Channels per block.
const NC: usize = 16;
/// Input bytes one band of output rows should span, so that the band's input rows stay in L1
/// while every channel block sweeps over them.
const BAND_BYTES: usize = 32 * 1024;

/// `vpmaddwd` operands of one input column (or of the weights of one kx):
/// `[rows 0/1 channels 0..8, rows 0/1 channels 8..16, row 2 channels 0..8, row 2 channels 8..16]`.
type Col = [__m256i; 4];
/// Contribution of one column to one output: int32 sums of channels 0..8 and 8..16.
type Acc = [__m256i; 2];

/// One 16-channel block: weights per kx, epilogue, padding contributions.
struct Block {
    taps: [Col; 3],
    pad: [Acc; 3],
    lo: LaneParams,
    hi: LaneParams,
    out: OutputParams,
    /// Channel offset of the block.
    cb: usize,
    /// Valid channels (16, or `C` when `C < 16`).
    width: usize,
}

/// Base pointer and pixel step of the three input rows of one output row.
struct Rows {
    ptr: [*const i8; 3],
    step: [usize; 3],
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    _t: Avx2,
    shape: DepthwiseShape,
    input: &[i8],
    input_zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    // `Kernels::depthwise3x3` checked the same; the pointer arithmetic below relies on it.
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
    shape: DepthwiseShape,
    input: &[i8],
    input_zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    let c = shape.channels;
    let pad_row = [input_zero_point; NC];
    let out = OutputParams::new(epi.output_zero_point, epi.output_min, epi.output_max);
    let band = (BAND_BYTES / (shape.stride * shape.width * c)).max(1);
    let mut start = rows.start;
    while start < rows.end {
        let band_rows = start..(start + band).min(rows.end);
        let mut c0 = 0;
        while c0 < c {
            // SAFETY: every block lies inside the channels: either 16 channels at
            // `min(c0, c - 16) + 16 <= c`, or the single block 0..c when `c < 16`. Lengths
            // and rows were checked by `run`.
            unsafe {
                if c >= NC {
                    let b = block::<true>(weights, epi, out, &pad_row, c0.min(c - NC), NC);
                    band_avx2::<true>(shape, input, &pad_row, &b, band_rows.clone(), &rows, output);
                } else {
                    let b = block::<false>(weights, epi, out, &pad_row, 0, c);
                    band_avx2::<false>(
                        shape,
                        input,
                        &pad_row,
                        &b,
                        band_rows.clone(),
                        &rows,
                        output,
                    );
                }
            }
            c0 += NC;
        }
        start = band_rows.end;
    }
}

/// Prepares the weights, padding contributions and epilogue of the block `cb..cb + width`.
///
/// # Safety
/// AVX2; `weights` holds `9 * C` values with `cb + 16 <= C` when `FULL`, else `cb == 0` and
/// `width == C`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn block<const FULL: bool>(
    weights: &[i8],
    epi: &Epilogue<'_>,
    out: OutputParams,
    pad_row: &[i8; NC],
    cb: usize,
    width: usize,
) -> Block {
    let c = weights.len() / 9;
    let zero = _mm_setzero_si128();
    let mut taps = [[_mm256_setzero_si256(); 4]; 3];
    for (kx, t) in taps.iter_mut().enumerate() {
        // SAFETY: (caller) rows kx, 3 + kx and 6 + kx of the weights hold the block's bytes.
        let (w0, w1, w2) = unsafe {
            let p = weights.as_ptr().add(cb);
            (
                load16::<FULL>(p.add(kx * c), width),
                load16::<FULL>(p.add((3 + kx) * c), width),
                load16::<FULL>(p.add((6 + kx) * c), width),
            )
        };
        *t = [
            _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(w0, w1)),
            _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(w0, w1)),
            _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(w2, zero)),
            _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(w2, zero)),
        ];
    }
    // The padding column reads the zero-point row in all three rows.
    let pad_rows = Rows { ptr: [pad_row.as_ptr(); 3], step: [0; 3] };
    // SAFETY: the padding row has 16 bytes and a step of 0.
    let pad_col = unsafe { column::<true>(&pad_rows, 0, NC) };
    Block {
        pad: [
            contrib(&pad_col, &taps[0]),
            contrib(&pad_col, &taps[1]),
            contrib(&pad_col, &taps[2]),
        ],
        taps,
        lo: LaneParams::load(epi.bias, epi.multiplier, epi.shift, cb),
        hi: LaneParams::load(epi.bias, epi.multiplier, epi.shift, cb + 8),
        out,
        cb,
        width,
    }
}

/// Runs one block over the output rows `band` (absolute), writing into `output`, which holds
/// the rows `all.start..all.end`.
///
/// # Safety
/// AVX2; `b` was made by [`block`] for these channels; `band` lies inside `all`; lengths as
/// checked by [`run`].
#[target_feature(enable = "avx2")]
unsafe fn band_avx2<const FULL: bool>(
    shape: DepthwiseShape,
    input: &[i8],
    pad_row: &[i8; NC],
    b: &Block,
    band: Range<usize>,
    all: &Range<usize>,
    output: &mut [i8],
) {
    let (h, w, c, s) = (shape.height, shape.width, shape.channels, shape.stride);
    let wo = shape.out_width();
    for oy in band {
        let mut rows = Rows { ptr: [pad_row.as_ptr(); 3], step: [0; 3] };
        for ky in 0..3 {
            let iy = (oy * s + ky).wrapping_sub(1);
            if iy < h {
                // SAFETY: row iy exists; the block's channels lie inside each pixel.
                rows.ptr[ky] = unsafe { input.as_ptr().add(iy * w * c + b.cb) };
                rows.step[ky] = c;
            }
        }
        // SAFETY: output row oy - all.start exists (oy < all.end) and the block's channels
        // lie inside each of its pixels.
        unsafe {
            let out = output.as_mut_ptr().add((oy - all.start) * wo * c + b.cb);
            if s == 1 {
                dw3x3s1_s8_16c__avx2::<FULL>(&rows, w, b, out, c);
            } else {
                dw3x3s2_s8_16c__avx2::<FULL>(&rows, w, b, out, c);
            }
        }
    }
}

/// One output row of one block, stride 1 (`w` outputs).
///
/// Column `ix` adds its kx = 2 term to output `ix - 1` (then complete and stored), its kx = 1
/// term to output `ix` and starts output `ix + 1` with its kx = 0 term.
///
/// # Safety
/// AVX2; `rows` point at `w` readable pixels (step `c`) or at the padding row (step 0); `out`
/// is writable for `w` pixels of step `c`, `b.width` bytes each.
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn dw3x3s1_s8_16c__avx2<const FULL: bool>(
    rows: &Rows,
    w: usize,
    b: &Block,
    out: *mut i8,
    c: usize,
) {
    // SAFETY: (caller) columns 0..w are readable and outputs 0..w writable.
    unsafe {
        let col = column::<FULL>(rows, 0, b.width);
        let mut cur = add(b.pad[0], contrib(&col, &b.taps[1]));
        let mut next = contrib(&col, &b.taps[0]);
        for ix in 1..w {
            let col = column::<FULL>(rows, ix, b.width);
            let done = add(cur, contrib(&col, &b.taps[2]));
            cur = add(next, contrib(&col, &b.taps[1]));
            next = contrib(&col, &b.taps[0]);
            store::<FULL>(out.add((ix - 1) * c), finish(done, b), b.width);
        }
        store::<FULL>(out.add((w - 1) * c), finish(add(cur, b.pad[2]), b), b.width);
    }
}

/// One output row of one block, stride 2 (`(w - 1) / 2 + 1` outputs).
///
/// Output `ox` reads columns `2 ox - 1` (kept from the previous output), `2 ox`, `2 ox + 1`.
///
/// # Safety
/// As for [`dw3x3s1_s8_16c__avx2`], with `(w - 1) / 2 + 1` outputs.
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn dw3x3s2_s8_16c__avx2<const FULL: bool>(
    rows: &Rows,
    w: usize,
    b: &Block,
    out: *mut i8,
    c: usize,
) {
    // SAFETY: (caller) columns 0..w are readable and outputs 0..=(w - 1) / 2 writable.
    unsafe {
        let mut cur = b.pad[0];
        for ox in 0..w / 2 {
            let even = column::<FULL>(rows, 2 * ox, b.width);
            let odd = column::<FULL>(rows, 2 * ox + 1, b.width);
            let done = add(add(cur, contrib(&even, &b.taps[1])), contrib(&odd, &b.taps[2]));
            cur = contrib(&odd, &b.taps[0]);
            store::<FULL>(out.add(ox * c), finish(done, b), b.width);
        }
        if w % 2 == 1 {
            // The last output's right column is the padding.
            let even = column::<FULL>(rows, w - 1, b.width);
            let done = add(add(cur, contrib(&even, &b.taps[1])), b.pad[2]);
            store::<FULL>(out.add((w / 2) * c), finish(done, b), b.width);
        }
    }
}

/// Loads the 16 channel bytes at `p`, or only `width` of them (the rest zero) when `!FULL`.
///
/// # Safety
/// `p` is readable for 16 bytes when `FULL`, else for `width <= 16` bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load16<const FULL: bool>(p: *const i8, width: usize) -> __m128i {
    // SAFETY: (caller) the bytes read are readable; `tmp` has 16 bytes.
    unsafe {
        if FULL {
            _mm_loadu_si128(p.cast())
        } else {
            let mut tmp = [0i8; NC];
            std::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), width);
            _mm_loadu_si128(tmp.as_ptr().cast())
        }
    }
}

/// Stores 16 bytes at `p`, or only the first `width` when `!FULL`.
///
/// # Safety
/// `p` is writable for 16 bytes when `FULL`, else for `width <= 16` bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store<const FULL: bool>(p: *mut i8, v: __m128i, width: usize) {
    // SAFETY: (caller) the bytes written are writable; `tmp` has 16 bytes.
    unsafe {
        if FULL {
            _mm_storeu_si128(p.cast(), v);
        } else {
            let mut tmp = [0i8; NC];
            _mm_storeu_si128(tmp.as_mut_ptr().cast(), v);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), p, width);
        }
    }
}

/// Widens input column `ix` of the three rows into `vpmaddwd` operands (see [`Col`]).
///
/// # Safety
/// AVX2; pixel `ix` of every row is readable as for [`load16`].
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn column<const FULL: bool>(rows: &Rows, ix: usize, width: usize) -> Col {
    // SAFETY: (caller) pixel ix of each row is readable; padding rows have step 0.
    let (r0, r1, r2lo, r2hi) = unsafe {
        let p2 = rows.ptr[2].add(ix * rows.step[2]);
        let (r2lo, r2hi) = if FULL {
            // Two 8-byte loads fold into `vpmovsxbd ymm, m64`.
            (_mm_loadl_epi64(p2.cast()), _mm_loadl_epi64(p2.add(8).cast()))
        } else {
            let r2 = load16::<FULL>(p2, width);
            (r2, _mm_srli_si128::<8>(r2))
        };
        (
            load16::<FULL>(rows.ptr[0].add(ix * rows.step[0]), width),
            load16::<FULL>(rows.ptr[1].add(ix * rows.step[1]), width),
            r2lo,
            r2hi,
        )
    };
    [
        _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(r0, r1)),
        _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(r0, r1)),
        _mm256_cvtepi8_epi32(r2lo),
        _mm256_cvtepi8_epi32(r2hi),
    ]
}

/// Contribution of one column under the weights of one kx.
#[inline]
#[target_feature(enable = "avx2")]
fn contrib(col: &Col, taps: &Col) -> Acc {
    [
        _mm256_add_epi32(_mm256_madd_epi16(col[0], taps[0]), _mm256_madd_epi16(col[2], taps[2])),
        _mm256_add_epi32(_mm256_madd_epi16(col[1], taps[1]), _mm256_madd_epi16(col[3], taps[3])),
    ]
}

#[inline]
#[target_feature(enable = "avx2")]
fn add(a: Acc, b: Acc) -> Acc {
    [_mm256_add_epi32(a[0], b[0]), _mm256_add_epi32(a[1], b[1])]
}

/// Requantizes one output's 16 channels to int8.
#[inline]
#[target_feature(enable = "avx2")]
fn finish(acc: Acc, b: &Block) -> __m128i {
    b.out.narrow16(b.lo.apply_dup(acc[0]), b.hi.apply_dup(acc[1]))
}
