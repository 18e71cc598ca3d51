//! AVX-512 depthwise 3x3 convolution: int8, stride 1 or 2, padding 1 with the input zero point.
//!
//! Scheme (`dw3x3s1_s8_32c__avx512`, `dw3x3s2_s8_32c__avx512`): the AVX2 kernel's (see `dw.rs`)
//! widened to 32 channels per block. A column's three input rows are sign-extended to int16
//! (`vpmovsxbw zmm, m256`) and interleaved word-wise into `vpmaddwd` operands: rows 0 and 1
//! as pairs `(r0, r1)` against `(w0k, w1k)`. Row 2 is paired with the same row of the
//! neighbouring column instead of with a zero weight: stride 1 pairs columns `(x - 1, x)`,
//! which meet `(w20, w21)` for output `x` and `(0, w22)` for output `x - 1`; stride 2 pairs
//! the columns `(2 ox, 2 ox + 1)` of one output, `(w21, w22)` for it and `(0, w20)` for the
//! next. An output thus costs 5 `vpmaddwd` per 16 lanes instead of 6 (one pair per kx and
//! two for row 2), and stride 2 builds one row-2 pair per output instead of two. The edge
//! columns, where a neighbour is the padding, use the plain `(r2, r0)` against `(w2k, 0)`
//! form. `vpunpck*wd` works per 128-bit lane, so the two int32 halves of a block hold the
//! channels `{0-3, 8-11, 16-19, 24-27}` ("lo") and `{4-7, 12-15, 20-23, 28-31}` ("hi"); that
//! order is exactly what one `vpackssdw lo, hi` puts back in channel order. Outputs are
//! finished two at a time: one `vpacksswb` of both and one `vpermq` give both in channel
//! order (instead of one `vpmovswb`, two uops, each), and the clamp is one zmm min/max pair.
//! The epilogue parameters are loaded in the same lane order.
//!
//! Epilogue: the contract's rule with even/odd `vpmuldq` 64-bit products. When no bias can
//! wrap `acc + bias` and every shift is at most `FOLD_MAX_SHIFT` (53) (true of real models), the
//! bias, rounding term and output zero point fold into one 64-bit addend per channel,
//! `bias * m + 2^(s-1) + zp * 2^s`, saving two adds per 16 lanes; otherwise the literal rule.
//!
//! Padding and the rolling accumulators are as in the AVX2 kernel. Bands of output rows span
//! up to 512 KiB of input, so every MobileNetV2 layer but the 112x112x96 one is one band; the
//! whole input then stays in L2 while the channel blocks sweep it. (32 KiB, L1-sized bands
//! were up to 16% slower, most on the 14x14 and 7x7 layers: each band repeats the per-block
//! setup.) Channel
//! tails: with `C >= 32` the last block moves back to `C - 32` (overlapping, recomputing
//! identical values); `C < 32` runs one block with masked loads and stores.
//!
//! Overflow: none; `|acc| <= 9 * 128 * 128 = 147456 < 2^18`.

use super::requant512::LaneReq;
use super::Avx512;
use crate::params::{DepthwiseShape, Epilogue};
use core::arch::x86_64::*;
use std::ops::Range;

/// Channels per block.
const NC: usize = 32;
/// Input bytes one band of output rows should span (its input rows stay in L2).
const BAND_BYTES: usize = 512 * 1024;
/// Largest `|acc|`: nine products of int8 values.
const ACC_MAX: i32 = 9 * 128 * 128;

/// `vpmaddwd` operands of one column (or one kx of the weights):
/// `[rows 0/1 lo, rows 0/1 hi, row 2 lo, row 2 hi]`.
type Col = [__m512i; 4];
/// int32 sums of the lo and hi channels.
type Acc = [__m512i; 2];

/// One 32-channel block: weights per kx, padding contributions, epilogue.
struct Block {
    taps: [Col; 3],
    /// Row 2 weight pairs for a pair of neighbouring columns: stride 1 `(w20, w21)` and
    /// `(0, w22)`, stride 2 `(w21, w22)` and `(0, w20)`.
    row2: [Acc; 2],
    pad: [Acc; 3],
    req: [LaneReq; 2],
    /// Output zero point as int32 (generic path only).
    zero_point: __m512i,
    min: __m512i,
    max: __m512i,
    /// Channel offset of the block.
    cb: usize,
    /// Valid channels (for masked loads and stores when `C < 32`).
    mask: __mmask32,
}

/// Base pointer and pixel step of the three input rows of one output row.
struct Rows {
    ptr: [*const i8; 3],
    step: [usize; 3],
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    _t: Avx512,
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
    let fast = epi.foldable(i64::from(ACC_MAX));
    // SAFETY: the `Avx512` token proves AVX-512 F/BW/VL and AVX2; lengths and the row range
    // were checked above.
    unsafe {
        if fast {
            run_avx512::<true>(shape, input, input_zero_point, weights, epi, rows, output)
        } else {
            run_avx512::<false>(shape, input, input_zero_point, weights, epi, rows, output)
        }
    }
}

/// # Safety
/// AVX-512 F/BW/VL must be available; slices and `rows` as checked in [`run`]; `FAST` only
/// if every shift is at most `FOLD_MAX_SHIFT` (53) and no `acc + bias` can wrap.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn run_avx512<const FAST: bool>(
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
    let band = (BAND_BYTES / (shape.stride * shape.width * c)).max(1);
    let mut start = rows.start;
    while start < rows.end {
        let band_rows = start..(start + band).min(rows.end);
        let mut c0 = 0;
        while c0 < c {
            // SAFETY: every block lies inside the channels: either 32 channels at
            // `min(c0, c - 32) + 32 <= c`, or the single block 0..c when `c < 32`. Lengths
            // and rows were checked by `run`; `FAST` as promised by the caller.
            unsafe {
                if c >= NC {
                    let b = block::<true, FAST>(
                        weights,
                        epi,
                        &pad_row,
                        shape.stride,
                        c0.min(c - NC),
                        NC,
                    );
                    band_avx512::<true, FAST>(
                        shape,
                        input,
                        &pad_row,
                        &b,
                        band_rows.clone(),
                        &rows,
                        output,
                    );
                } else {
                    let b = block::<false, FAST>(weights, epi, &pad_row, shape.stride, 0, c);
                    band_avx512::<false, FAST>(
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
/// AVX-512 F/BW/VL; `weights` holds `9 * C` values and the epilogue `C` channels, with
/// `cb + 32 <= C` when `FULL`, else `cb == 0` and `width == C < 32`; `FAST` as for
/// [`run_avx512`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn block<const FULL: bool, const FAST: bool>(
    weights: &[i8],
    epi: &Epilogue<'_>,
    pad_row: &[i8; NC],
    stride: usize,
    cb: usize,
    width: usize,
) -> Block {
    let c = weights.len() / 9;
    let mask: __mmask32 = if FULL { !0 } else { (1u32 << width) - 1 };
    let mut taps = [[_mm512_setzero_si512(); 4]; 3];
    let mut w2 = [_mm512_setzero_si512(); 3];
    let zero = _mm512_setzero_si512();
    for (kx, t) in taps.iter_mut().enumerate() {
        // SAFETY: (caller) rows kx, 3 + kx and 6 + kx of the weights hold the block's bytes.
        let (w0, w1) = unsafe {
            let p = weights.as_ptr().add(cb);
            w2[kx] = load32::<FULL>(p.add((6 + kx) * c), mask);
            (load32::<FULL>(p.add(kx * c), mask), load32::<FULL>(p.add((3 + kx) * c), mask))
        };
        let (p01, p2) = (pair(w0, w1), pair(w2[kx], zero));
        // Edge columns pair row 2 with row 0, which meets a zero weight.
        *t = [p01[0], p01[1], p2[0], p2[1]];
    }
    let row2 = if stride == 1 {
        [pair(w2[0], w2[1]), pair(zero, w2[2])]
    } else {
        [pair(w2[1], w2[2]), pair(zero, w2[0])]
    };
    // The padding column reads the zero-point row in all three rows.
    let pad_rows = Rows { ptr: [pad_row.as_ptr(); 3], step: [0; 3] };
    // SAFETY: the padding row has 32 bytes and a step of 0.
    let (p, r2, r0) = unsafe { load_col::<true>(&pad_rows, 0, !0) };
    let pad_col = edge(p, r2, r0);
    // SAFETY: (caller) the epilogue holds channels cb..cb + width.
    let req = unsafe { lane_params::<FULL, FAST>(epi, cb, width) };
    Block {
        pad: [
            contrib(&pad_col, &taps[0]),
            contrib(&pad_col, &taps[1]),
            contrib(&pad_col, &taps[2]),
        ],
        taps,
        row2,
        req,
        zero_point: _mm512_set1_epi32(i32::from(epi.output_zero_point)),
        min: _mm512_set1_epi8(epi.output_min),
        max: _mm512_set1_epi8(epi.output_max),
        cb,
        mask,
    }
}

/// Loads the epilogue of channels `cb..cb + width` in the block's lo / hi lane order.
/// Channels past `width` get neutral parameters (their results are never stored).
///
/// # Safety
/// AVX-512 F/BW/VL; the epilogue holds channels `cb..cb + 32` when `FULL`, else `cb == 0`
/// and `width < 32` channels; `FAST` as for [`run_avx512`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn lane_params<const FULL: bool, const FAST: bool>(
    epi: &Epilogue<'_>,
    cb: usize,
    width: usize,
) -> [LaneReq; 2] {
    let (b, m, s) = if FULL {
        // SAFETY: (caller) channels cb..cb + 32 exist in all three slices.
        unsafe {
            let (b, m, s) = (
                epi.bias.as_ptr().add(cb),
                epi.multiplier.as_ptr().add(cb),
                epi.shift.as_ptr().add(cb),
            );
            (
                [_mm512_loadu_si512(b.cast()), _mm512_loadu_si512(b.add(16).cast())],
                [_mm512_loadu_si512(m.cast()), _mm512_loadu_si512(m.add(16).cast())],
                [
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(s.cast())),
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(s.add(16).cast())),
                ],
            )
        }
    } else {
        // Only for `C < 32`, once per band: a stack copy is simplest.
        let (mut b, mut m, mut s) = ([0i32; NC], [0i32; NC], [32i32; NC]);
        b[..width].copy_from_slice(&epi.bias[cb..cb + width]);
        m[..width].copy_from_slice(&epi.multiplier[cb..cb + width]);
        for (d, &v) in s.iter_mut().zip(&epi.shift[cb..cb + width]) {
            *d = i32::from(v);
        }
        // SAFETY: each array holds 32 i32, two 64-byte loads.
        unsafe {
            (
                [
                    _mm512_loadu_si512(b.as_ptr().cast()),
                    _mm512_loadu_si512(b.as_ptr().add(16).cast()),
                ],
                [
                    _mm512_loadu_si512(m.as_ptr().cast()),
                    _mm512_loadu_si512(m.as_ptr().add(16).cast()),
                ],
                [
                    _mm512_loadu_si512(s.as_ptr().cast()),
                    _mm512_loadu_si512(s.as_ptr().add(16).cast()),
                ],
            )
        }
    };
    let lo = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    let hi = _mm512_add_epi32(lo, _mm512_set1_epi32(4));
    [lo, hi].map(|idx| {
        let bias = _mm512_permutex2var_epi32(b[0], idx, b[1]);
        let multiplier = _mm512_permutex2var_epi32(m[0], idx, m[1]);
        let shift = _mm512_permutex2var_epi32(s[0], idx, s[1]);
        LaneReq::new::<FAST>(bias, multiplier, shift, epi.output_zero_point)
    })
}

/// Runs one block over the output rows `band` (absolute), writing into `output`, which holds
/// the rows `all.start..all.end`.
///
/// # Safety
/// AVX-512 F/BW/VL; `b` was made by [`block`] for these channels; `band` lies inside `all`;
/// lengths as checked by [`run`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn band_avx512<const FULL: bool, const FAST: bool>(
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
                dw3x3s1_s8_32c__avx512::<FULL, FAST>(&rows, w, b, out, c);
            } else {
                dw3x3s2_s8_32c__avx512::<FULL, FAST>(&rows, w, b, out, c);
            }
        }
    }
}

/// One output row of one block, stride 1 (`w` outputs).
///
/// Column `ix` adds its kx = 2 term to output `ix - 1` (then complete and stored), its kx = 1
/// term to output `ix` and starts output `ix + 1` with its kx = 0 term. Row 2 goes through
/// the pair `(r2[ix - 1], r2[ix])`: weights `(w20, w21)` for output `ix`, `(0, w22)` for output
/// `ix - 1`. Outputs are finished two at a time.
///
/// # Safety
/// AVX-512 F/BW/VL; `rows` point at `w` readable pixels (step `c`) or at the padding row
/// (step 0); `out` is writable for `w` pixels of step `c`, 32 bytes each when `FULL`, else
/// the bytes of `b.mask`.
// Inlined into the band's row loop: the block's ~30 vectors then stay in registers across
// rows instead of being reloaded per row (worth ~15% on the 7x7 and 14x14 layers).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn dw3x3s1_s8_32c__avx512<const FULL: bool, const FAST: bool>(
    rows: &Rows,
    w: usize,
    b: &Block,
    out: *mut i8,
    c: usize,
) {
    // SAFETY: (caller) columns 0..w are readable and outputs 0..w writable.
    unsafe {
        let (p, r2, r0) = load_col::<FULL>(rows, 0, b.mask);
        // Output 0's left column is the padding; its row 2 term is part of `pad[0]`.
        let mut st = S1 {
            cur: add(b.pad[0], contrib(&edge(p, r2, r0), &b.taps[1])),
            next: madd2(p, pair01(&b.taps[0])),
            prev: r2,
        };
        let mut ix = 1;
        while ix + 2 <= w {
            let d0 = st.step::<FULL>(rows, ix, b);
            let d1 = st.step::<FULL>(rows, ix + 1, b);
            store2::<FULL>(out.add((ix - 1) * c), out.add(ix * c), finish2::<FAST>(d0, d1, b), b);
            ix += 2;
        }
        // The last output's right column is the padding.
        if ix < w {
            let d0 = st.step::<FULL>(rows, ix, b);
            let d1 = add(st.cur, b.pad[2]);
            store2::<FULL>(out.add((ix - 1) * c), out.add(ix * c), finish2::<FAST>(d0, d1, b), b);
        } else {
            let d = add(st.cur, b.pad[2]);
            // The same output twice: LLVM computes it once.
            let v = finish2::<FAST>(d, d, b);
            store::<FULL>(out.add((w - 1) * c), _mm512_castsi512_si256(v), b.mask);
        }
    }
}

/// Rolling state of a stride-1 row: the sums of outputs `ix` and `ix + 1` before column `ix`,
/// and row 2 of column `ix - 1`.
struct S1 {
    cur: Acc,
    next: Acc,
    prev: __m512i,
}

impl S1 {
    /// Adds column `ix`; returns output `ix - 1`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL; pixel `ix` of every row is readable as for [`load32`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    unsafe fn step<const FULL: bool>(&mut self, rows: &Rows, ix: usize, b: &Block) -> Acc {
        // SAFETY: (caller) pixel ix is readable.
        let (p, r2, _) = unsafe { load_col::<FULL>(rows, ix, b.mask) };
        let h = pair(self.prev, r2);
        self.prev = r2;
        let done = add(add(self.cur, madd2(p, pair01(&b.taps[2]))), madd2(h, b.row2[1]));
        self.cur = add(add(self.next, madd2(p, pair01(&b.taps[1]))), madd2(h, b.row2[0]));
        self.next = madd2(p, pair01(&b.taps[0]));
        done
    }
}

/// One output row of one block, stride 2 (`(w - 1) / 2 + 1` outputs).
///
/// Output `ox` reads columns `2 ox - 1` (kept from the previous output), `2 ox`, `2 ox + 1`.
/// Row 2 of columns `2 ox` and `2 ox + 1` is one pair: weights `(w21, w22)` for output `ox`,
/// `(0, w20)` for output `ox + 1`. Outputs are finished two at a time.
///
/// # Safety
/// As for [`dw3x3s1_s8_32c__avx512`], with `(w - 1) / 2 + 1` outputs.
// Inlined into the band's row loop: the block's ~30 vectors then stay in registers across
// rows instead of being reloaded per row (worth ~15% on the 7x7 and 14x14 layers).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn dw3x3s2_s8_32c__avx512<const FULL: bool, const FAST: bool>(
    rows: &Rows,
    w: usize,
    b: &Block,
    out: *mut i8,
    c: usize,
) {
    // SAFETY: (caller) columns 0..w are readable and outputs 0..=(w - 1) / 2 writable.
    unsafe {
        let mut cur = b.pad[0];
        // Outputs whose three columns lie inside the row.
        let inner = w / 2;
        let mut ox = 0;
        while ox + 2 <= inner {
            let d0 = step_s2::<FULL>(rows, 2 * ox, b, &mut cur);
            let d1 = step_s2::<FULL>(rows, 2 * ox + 2, b, &mut cur);
            store2::<FULL>(out.add(ox * c), out.add((ox + 1) * c), finish2::<FAST>(d0, d1, b), b);
            ox += 2;
        }
        let d0 = if ox < inner { Some(step_s2::<FULL>(rows, 2 * ox, b, &mut cur)) } else { None };
        // With `w` odd the last output's right column is the padding.
        let d1 = if w % 2 == 1 {
            let (p, r2, r0) = load_col::<FULL>(rows, w - 1, b.mask);
            Some(add(add(cur, contrib(&edge(p, r2, r0), &b.taps[1])), b.pad[2]))
        } else {
            None
        };
        match (d0, d1) {
            (Some(d0), Some(d1)) => {
                let v = finish2::<FAST>(d0, d1, b);
                store2::<FULL>(out.add(ox * c), out.add((ox + 1) * c), v, b);
            }
            (Some(d), None) | (None, Some(d)) => {
                let v = finish2::<FAST>(d, d, b);
                store::<FULL>(out.add(ox * c), _mm512_castsi512_si256(v), b.mask);
            }
            (None, None) => {}
        }
    }
}

/// Adds columns `ix` and `ix + 1` to `cur` (the output they end) and returns it; `cur` becomes
/// the next output's partial sum.
///
/// # Safety
/// AVX-512 F/BW/VL; pixels `ix` and `ix + 1` of every row are readable as for [`load32`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn step_s2<const FULL: bool>(rows: &Rows, ix: usize, b: &Block, cur: &mut Acc) -> Acc {
    // SAFETY: (caller) both pixels are readable.
    let ((pe, re, _), (po, ro, _)) =
        unsafe { (load_col::<FULL>(rows, ix, b.mask), load_col::<FULL>(rows, ix + 1, b.mask)) };
    let k = pair(re, ro);
    let done = add(
        add(add(*cur, madd2(pe, pair01(&b.taps[1]))), madd2(po, pair01(&b.taps[2]))),
        madd2(k, b.row2[0]),
    );
    *cur = add(madd2(po, pair01(&b.taps[0])), madd2(k, b.row2[1]));
    done
}

/// Loads the 32 channel bytes at `p` sign-extended to int16; only the bytes of `mask` (the
/// rest zero) when `!FULL`.
///
/// # Safety
/// AVX-512 F/BW/VL; `p` is readable for 32 bytes when `FULL`, else for the bytes of `mask`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn load32<const FULL: bool>(p: *const i8, mask: __mmask32) -> __m512i {
    // SAFETY: (caller) the bytes read are readable; masked-off bytes are not accessed.
    let v = unsafe {
        if FULL {
            _mm256_loadu_si256(p.cast())
        } else {
            _mm256_maskz_loadu_epi8(mask, p)
        }
    };
    _mm512_cvtepi8_epi16(v)
}

/// Stores 32 bytes at `p`, or only the bytes of `mask` when `!FULL`.
///
/// # Safety
/// AVX-512 F/BW/VL; `p` is writable for 32 bytes when `FULL`, else for the bytes of `mask`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn store<const FULL: bool>(p: *mut i8, v: __m256i, mask: __mmask32) {
    // SAFETY: (caller) the bytes written are writable; masked-off bytes are not accessed.
    unsafe {
        if FULL {
            _mm256_storeu_si256(p.cast(), v);
        } else {
            _mm256_mask_storeu_epi8(p, mask, v);
        }
    }
}

/// Widens input column `ix` of the three rows: the `vpmaddwd` operands of rows 0 and 1
/// (lo, hi), row 2 and row 0 as int16.
///
/// # Safety
/// AVX-512 F/BW/VL; pixel `ix` of every row is readable as for [`load32`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn load_col<const FULL: bool>(
    rows: &Rows,
    ix: usize,
    mask: __mmask32,
) -> (Acc, __m512i, __m512i) {
    // SAFETY: (caller) pixel ix of each row is readable; padding rows have step 0.
    let (r0, r1, r2) = unsafe {
        (
            load32::<FULL>(rows.ptr[0].add(ix * rows.step[0]), mask),
            load32::<FULL>(rows.ptr[1].add(ix * rows.step[1]), mask),
            load32::<FULL>(rows.ptr[2].add(ix * rows.step[2]), mask),
        )
    };
    (pair(r0, r1), r2, r0)
}

/// The column operands of the edges (see [`Col`]), where row 2 is not paired with a neighbour.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn edge(p: Acc, r2: __m512i, r0: __m512i) -> Col {
    // Row 2's second word meets a zero weight; pairing it with row 0 rather than with
    // itself keeps LLVM from turning the unpacks into byte shuffles before the widening
    // (two more uops).
    let q = pair(r2, r0);
    [p[0], p[1], q[0], q[1]]
}

/// Interleaves two int16 vectors into the lo and hi `vpmaddwd` operands.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn pair(a: __m512i, b: __m512i) -> Acc {
    [_mm512_unpacklo_epi16(a, b), _mm512_unpackhi_epi16(a, b)]
}

/// The rows 0/1 weight pairs of one kx.
#[inline]
fn pair01(taps: &Col) -> Acc {
    [taps[0], taps[1]]
}

/// lo and hi `vpmaddwd`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn madd2(x: Acc, taps: Acc) -> Acc {
    [_mm512_madd_epi16(x[0], taps[0]), _mm512_madd_epi16(x[1], taps[1])]
}

/// Contribution of one edge column under the weights of one kx.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn contrib(col: &Col, taps: &Col) -> Acc {
    [
        _mm512_add_epi32(_mm512_madd_epi16(col[0], taps[0]), _mm512_madd_epi16(col[2], taps[2])),
        _mm512_add_epi32(_mm512_madd_epi16(col[1], taps[1]), _mm512_madd_epi16(col[3], taps[3])),
    ]
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn add(a: Acc, b: Acc) -> Acc {
    [_mm512_add_epi32(a[0], b[0]), _mm512_add_epi32(a[1], b[1])]
}

/// Requantizes two outputs' 32 channels to clamped int8: the first output in the low 256
/// bits, the second in the high, each in channel order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn finish2<const FAST: bool>(a: Acc, d: Acc, b: &Block) -> __m512i {
    let wa = _mm512_packs_epi32(
        b.req[0].apply::<FAST>(a[0], b.zero_point),
        b.req[1].apply::<FAST>(a[1], b.zero_point),
    );
    let wd = _mm512_packs_epi32(
        b.req[0].apply::<FAST>(d[0], b.zero_point),
        b.req[1].apply::<FAST>(d[1], b.zero_point),
    );
    // Per 128-bit lane l: the int16 of channels 8l..8l+8 of each output, so the byte pack
    // gives 8 bytes of `a` then 8 of `d` per lane and one qword permute orders them.
    // Saturating before the clamp is exact: the clamp bounds lie inside the int8 range.
    let bytes = _mm512_packs_epi16(wa, wd);
    let ordered = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), bytes);
    _mm512_min_epi8(_mm512_max_epi8(ordered, b.min), b.max)
}

/// Stores the two outputs of [`finish2`] at `p` and `q` (32 bytes each, or the bytes of the
/// block's mask when `!FULL`).
///
/// # Safety
/// AVX-512 F/BW/VL; `p` and `q` are writable as for [`store`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn store2<const FULL: bool>(p: *mut i8, q: *mut i8, v: __m512i, b: &Block) {
    // SAFETY: (caller) both outputs are writable.
    unsafe {
        store::<FULL>(p, _mm512_castsi512_si256(v), b.mask);
        store::<FULL>(q, _mm512_extracti64x4_epi64::<1>(v), b.mask);
    }
}
