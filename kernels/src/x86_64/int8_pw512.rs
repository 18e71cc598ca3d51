//! AVX-512 int8-multiply pointwise convolution: the baseline the AVX-512 add-only kernel is
//! measured against, written to be fast rather than a straw man.
//!
//! Scheme (`int8_pw_12x32c2__avx512`): the AVX2 kernel's (see `int8_pw.rs`) widened to zmm.
//! Weights are packed once into blocks of [`NR`] = 32 output channels, sign-extended to int16
//! and interleaved in pairs of input channels (`[block][k / 2][2][16][2]`), so one
//! `vpmaddwd` multiplies a broadcast pair of activations by 16 output channels. A micro-tile
//! of up to [`MR`] = 12 pixels x 32 channels keeps 2 * MR accumulators in zmm registers; each
//! activation row is widened to int16 once per tile and reused for every block. The pixels
//! are split into tiles of near-equal size (49 pixels run as 5 tiles of 9-10, not 4 x 12 + 1),
//! since a short tile streams all the weights for little work. A last block of at most 16
//! channels (n = 16, say) is packed as a single natural-order half and runs with one
//! accumulator per pixel instead of two half-empty ones.
//!
//! Within a full block the two zmm halves hold the channels `{0-3, 8-11, 16-19, 24-27}`
//! ("lo") and `{4-7, 12-15, 20-23, 28-31}` ("hi"): `vpackssdw lo, hi` works per 128-bit lane
//! and then yields channels 8l..8l+8 in lane l, so `vpmovswb` (or, for two pixels at once,
//! `vpacksswb` and one `vpermq`) gives the bytes in order.
//!
//! Epilogue: the contract's rule with even/odd `vpmuldq` 64-bit products, parameters built
//! once per call into the scratch. When no bias can wrap `acc + bias` and every shift is at
//! most `FOLD_MAX_SHIFT` (53) (true of real models), bias, rounding term and output zero point
//! fold into one 64-bit addend per channel, `bias * m + 2^(s-1) + zp * 2^s`; otherwise the
//! literal rule. Channel tails use masked stores (the padded weights are zero).
//!
//! Overflow: `vpmaddwd` of int16 values from int8 cannot saturate (2 * 128 * 127 < 2^31) and
//! the int32 sum is bounded by `128 * 127 * k` (see [`crate::MAX_POINTWISE_K`]).

use super::requant512::LaneReq;
use super::Avx512;
use crate::params::{Epilogue, PointwiseShape};
use crate::AlignedBuf;
use core::arch::x86_64::*;
use std::mem::size_of;

/// Output channels per block (two zmm accumulators of 16 int32).
const NR: usize = 32;
/// Largest number of pixels per micro-tile (2 * MR accumulators, 2 weight vectors and a
/// broadcast fit the 32 zmm registers).
const MR: usize = 12;

fn pairs(k: usize) -> usize {
    k.div_ceil(2)
}

/// int16 per widened activation row: the pairs rounded up to whole zmm vectors, so the
/// widening stores never leave the row and the padding reads as zero.
fn row_words(k: usize) -> usize {
    (2 * pairs(k)).next_multiple_of(32)
}

/// Channel (within its block) of lane `j` of half `h`.
fn lane_channel(h: usize, j: usize) -> usize {
    (j / 4) * 8 + h * 4 + j % 4
}

/// Whether the last block holds at most 16 channels: it is then packed and run as one
/// natural-order zmm half (`[k / 2][16][2]`), not as two half-empty ones.
fn half_tail(n: usize) -> bool {
    (1..=NR / 2).contains(&(n % NR))
}

/// Packs row-major `n x k` int8 weights into `[n / 32][k / 2][2][16][2]` int16 (zero padded;
/// half 0 holds the "lo" channels, half 1 the "hi" ones; see [`half_tail`] for the last).
pub(super) fn pack(weights: &[i8], n: usize, k: usize) -> AlignedBuf {
    let kp = pairs(k);
    let blocks = n.div_ceil(NR);
    let mut buf = AlignedBuf::zeroed(blocks * kp * NR * 2 * 2);
    let data = buf.as_i16_mut(blocks * kp * NR * 2);
    let half = half_tail(n);
    for c in 0..n {
        let (block, cc) = (c / NR, c % NR);
        // In a half block pair q's 16 channels are at [q][16][2] (natural order).
        let (h, j) = if half && block == blocks - 1 {
            (0, cc)
        } else {
            ((cc / 4) % 2, (cc / 8) * 4 + cc % 4)
        };
        let lanes = if half && block == blocks - 1 { NR / 2 } else { NR };
        for kk in 0..k {
            data[block * kp * NR * 2 + ((kk / 2) * 2 + h) * lanes + j * 2 + kk % 2] =
                i16::from(weights[c * k + kk]);
        }
    }
    buf
}

/// Scratch bytes [`run`] needs for up to `max_k` inputs and `max_n` outputs: the epilogue
/// parameters of every block, then `MR` widened activation rows.
pub(super) fn scratch_bytes(max_k: usize, max_n: usize) -> usize {
    params_bytes(max_n) + MR * row_words(max_k) * 2
}

fn params_bytes(n: usize) -> usize {
    n.div_ceil(NR) * 2 * size_of::<LaneReq>()
}

pub(super) fn run(
    _t: Avx512,
    shape: PointwiseShape,
    input: &[i8],
    weights: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut AlignedBuf,
) {
    let PointwiseShape { pixels, k, n } = shape;
    // `Kernels::int8_pointwise` checked the same and the epilogue; the pointer arithmetic
    // below relies on it.
    shape.check_call(input.len(), output.len());
    let kp = pairs(k);
    let blocks = n.div_ceil(NR);
    assert!(weights.len() >= blocks * kp * NR * 4, "int8 weights: packed buffer too small");
    assert!(scratch.len() >= scratch_bytes(k, n), "int8 pointwise: scratch too small");
    if pixels == 0 {
        return;
    }
    let acc_max = 128 * 127 * k as i64;
    let fast = epi.foldable(acc_max);
    let (params, xw) = scratch.as_u8_mut(scratch_bytes(k, n)).split_at_mut(params_bytes(n));
    // SAFETY: the `Avx512` token proves AVX-512 F/BW/VL and AVX2. Lengths were checked above;
    // the packed weights have `blocks * kp` 128-byte rows and are 64-byte aligned, as is the
    // scratch, whose parameter part (a multiple of 64 bytes) holds `2 * blocks` `LaneReq`s and
    // whose rest holds MR widened rows.
    unsafe {
        let params = params.as_mut_ptr().cast::<LaneReq>();
        let xw = xw.as_mut_ptr().cast::<i16>();
        let w = weights.as_ptr().cast::<__m512i>();
        if fast {
            run_avx512::<true>(shape, input, w, epi, output, params, xw)
        } else {
            run_avx512::<false>(shape, input, w, epi, output, params, xw)
        }
    }
}

/// # Safety
/// AVX-512 F/BW/VL; buffers as described in [`run`]; `FAST` only if every shift is at most
/// `FOLD_MAX_SHIFT` (53) and no `acc + bias` can wrap.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn run_avx512<const FAST: bool>(
    shape: PointwiseShape,
    input: &[i8],
    weights: *const __m512i,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    params: *mut LaneReq,
    xw: *mut i16,
) {
    let PointwiseShape { pixels, k, n } = shape;
    let kp = pairs(k);
    let stride = row_words(k);
    let blocks = n.div_ceil(NR);
    let half = half_tail(n);
    for b in 0..blocks {
        let natural = half && b == blocks - 1;
        for h in 0..2 {
            // SAFETY: (caller) the scratch holds 2 * blocks aligned `LaneReq`s.
            unsafe { params.add(2 * b + h).write(req::<FAST>(epi, b * NR, h, natural)) };
        }
    }
    let e = Out {
        zero_point: _mm512_set1_epi32(i32::from(epi.output_zero_point)),
        min: _mm512_set1_epi8(epi.output_min),
        max: _mm512_set1_epi8(epi.output_max),
    };
    let tiles = pixels.div_ceil(MR);
    let mut p = 0;
    for t in 0..tiles {
        let end = pixels * (t + 1) / tiles;
        let rows = end - p;
        for r in 0..rows {
            // SAFETY: pixel p + r exists; row r of the scratch holds `stride` int16.
            unsafe { widen(input.as_ptr().add((p + r) * k), k, xw.add(r * stride)) };
        }
        for block in 0..blocks {
            let c0 = block * NR;
            let mask = u32::MAX >> (NR - NR.min(n - c0));
            // SAFETY: the block's kp rows of 2 vectors exist (one when it is a half block);
            // its `LaneReq`s were written above; the scratch holds `rows` widened rows; output
            // rows p..end exist and hold the channels of `mask` from c0.
            unsafe {
                let w = weights.add(block * kp * 2);
                let req = params.add(2 * block);
                let out = output.as_mut_ptr().add(p * n + c0);
                if half && block == blocks - 1 {
                    let mask = mask as __mmask16;
                    match rows {
                        12 => tile_half::<12, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        11 => tile_half::<11, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        10 => tile_half::<10, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        9 => tile_half::<9, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        8 => tile_half::<8, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        7 => tile_half::<7, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        6 => tile_half::<6, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        5 => tile_half::<5, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        4 => tile_half::<4, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        3 => tile_half::<3, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        2 => tile_half::<2, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        _ => tile_half::<1, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                    }
                } else {
                    match rows {
                        12 => tile::<12, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        11 => tile::<11, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        10 => tile::<10, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        9 => tile::<9, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        8 => tile::<8, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        7 => tile::<7, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        6 => tile::<6, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        5 => tile::<5, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        4 => tile::<4, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        3 => tile::<3, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        2 => tile::<2, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                        _ => tile::<1, FAST>(xw, stride, w, kp, req, &e, out, n, mask),
                    }
                }
            }
        }
        p = end;
    }
}

/// Output zero point (generic path only) and clamp bounds.
struct Out {
    zero_point: __m512i,
    min: __m512i,
    max: __m512i,
}

/// Builds the requantization parameters of half `h` of the block at channel `c0` (of its
/// channels `c0..c0 + 16` when `natural`); lanes of channels past the end get neutral values
/// (their results are never stored).
// Out of line: inlined, LLVM may fold the addend's `bias * m` into the loop's products as
// `(acc + bias) * m` and lower that as a full 64-bit multiply (three vpmuludq).
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn req<const FAST: bool>(epi: &Epilogue<'_>, c0: usize, h: usize, natural: bool) -> LaneReq {
    let (mut m, mut shift, mut bias) = ([0i32; 16], [32i32; 16], [0i32; 16]);
    for j in 0..16 {
        let c = c0 + if natural { j } else { lane_channel(h, j) };
        if c < epi.bias.len() {
            (bias[j], m[j], shift[j]) = (epi.bias[c], epi.multiplier[c], i32::from(epi.shift[c]));
        }
    }
    // SAFETY: every array is exactly 64 bytes, one unaligned load each.
    let (bias, m, shift) = unsafe {
        (
            _mm512_loadu_si512(bias.as_ptr().cast()),
            _mm512_loadu_si512(m.as_ptr().cast()),
            _mm512_loadu_si512(shift.as_ptr().cast()),
        )
    };
    LaneReq::new::<FAST>(bias, m, shift, epi.output_zero_point)
}

/// Sign-extends `k` int8 at `src` to int16 at `dst`, zero-filling up to [`row_words`].
///
/// # Safety
/// AVX-512 F/BW/VL; `src` readable for `k` bytes; `dst` 64-byte aligned and writable for
/// `row_words(k)` int16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn widen(src: *const i8, k: usize, dst: *mut i16) {
    let mut i = 0;
    while i < k {
        let mask = u32::MAX >> (32 - (k - i).min(32));
        // SAFETY: (caller) the masked load reads only bytes i..k; the store writes 32 int16
        // inside the row (whole vectors up to `row_words(k)`).
        unsafe {
            let v = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, src.add(i)));
            _mm512_store_si512(dst.add(i).cast(), v);
        }
        i += 32;
    }
}

/// One R x 32 micro-tile: MAC over all input pairs, then requantize and store the channels
/// of `mask` of each of the R rows.
///
/// # Safety
/// AVX-512 F/BW/VL; `xw` holds R rows of `stride` int16; `w` holds `kp` pairs of vectors;
/// `req` points at the block's two `LaneReq`s; `out` is writable for R rows of `row_len` bytes
/// from which the bytes of `mask` are written.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn tile<const R: usize, const FAST: bool>(
    xw: *const i16,
    stride: usize,
    w: *const __m512i,
    kp: usize,
    req: *const LaneReq,
    e: &Out,
    out: *mut i8,
    row_len: usize,
    mask: __mmask32,
) {
    // SAFETY: (caller) every read is inside xw's R rows and the block's weights.
    let acc = unsafe { int8_pw_mac_rx32c2__avx512::<R>(xw, stride, w, kp) };
    // SAFETY: (caller) the two `LaneReq`s are initialised and aligned.
    let (lo, hi) = unsafe { (&*req, &*req.add(1)) };
    // Per 128-bit lane, `vpackssdw lo, hi` holds channels 8l..8l+8 as int16. Saturating
    // before the clamp is exact: the clamp bounds lie inside the int8 range.
    let words = |a: &[__m512i; 2]| {
        _mm512_packs_epi32(
            lo.apply::<FAST>(a[0], e.zero_point),
            hi.apply::<FAST>(a[1], e.zero_point),
        )
    };
    let single = |r: usize| {
        let bytes = _mm512_cvtsepi16_epi8(words(&acc[r]));
        let bytes = _mm256_min_epi8(
            _mm256_max_epi8(bytes, _mm512_castsi512_si256(e.min)),
            _mm512_castsi512_si256(e.max),
        );
        // SAFETY: (caller) row r has the bytes of the mask writable.
        unsafe { store32(out.add(r * row_len), bytes, mask) };
    };
    // Two rows share one byte pack, clamp and qword permute (6 shuffle-port uops, not 10).
    // Row r + 1's bytes land in the upper half, stored by a masked 64-byte store 32 bytes
    // before the row: in bounds when rows hold at least 32 bytes (LLVM turns a permute plus
    // `vextracti64x4` into five ymm shuffles).
    let order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
    let pair = |r: usize| {
        let bytes = _mm512_packs_epi16(words(&acc[r]), words(&acc[r + 1]));
        let bytes = _mm512_min_epi8(_mm512_max_epi8(bytes, e.min), e.max);
        let bytes = _mm512_permutexvar_epi64(order, bytes);
        // SAFETY: (caller) rows r and r + 1 have the bytes of the mask writable; with
        // `row_len >= 32` the upper store starts at or after row r and writes only the mask's
        // bytes of row r + 1.
        unsafe {
            store32(out.add(r * row_len), _mm512_castsi512_si256(bytes), mask);
            let next = out.add((r + 1) * row_len - NR);
            _mm512_mask_storeu_epi8(next, u64::from(mask) << 32, bytes);
        }
    };
    // Constant trip counts, so the loops unroll and the accumulators stay in registers.
    if row_len >= NR {
        for i in 0..R / 2 {
            pair(2 * i);
        }
    } else {
        for r in 0..R - R % 2 {
            single(r);
        }
    }
    if R % 2 == 1 {
        single(R - 1);
    }
}

/// Stores the bytes of `mask` at `p` (all 32 in one plain store when full).
///
/// # Safety
/// AVX-512 F/BW/VL; `p` is writable for the bytes of `mask`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn store32(p: *mut i8, v: __m256i, mask: __mmask32) {
    // SAFETY: (caller) the bytes written are writable; masked-off bytes are not accessed.
    unsafe {
        if mask == u32::MAX {
            _mm256_storeu_si256(p.cast(), v);
        } else {
            _mm256_mask_storeu_epi8(p, mask, v);
        }
    }
}

/// One R x 16 micro-tile of a half block (channels in natural order): as [`tile`] with one
/// accumulator per row.
///
/// # Safety
/// As for [`tile`], with `w` holding `kp` vectors and `mask` 16 bits.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn tile_half<const R: usize, const FAST: bool>(
    xw: *const i16,
    stride: usize,
    w: *const __m512i,
    kp: usize,
    req: *const LaneReq,
    e: &Out,
    out: *mut i8,
    row_len: usize,
    mask: __mmask16,
) {
    // SAFETY: (caller) every read is inside xw's R rows and the block's weights.
    let acc = unsafe { int8_pw_mac_rx16c2__avx512::<R>(xw, stride, w, kp) };
    // SAFETY: (caller) the first `LaneReq` is initialised and aligned.
    let rq = unsafe { &*req };
    for (r, &a) in acc.iter().enumerate() {
        // Saturating before the clamp is exact (the bounds lie inside the int8 range).
        let bytes = _mm512_cvtsepi32_epi8(rq.apply::<FAST>(a, e.zero_point));
        let bytes = _mm_min_epi8(
            _mm_max_epi8(bytes, _mm512_castsi512_si128(e.min)),
            _mm512_castsi512_si128(e.max),
        );
        // SAFETY: (caller) row r has the bytes of the mask writable; masked-off bytes are not
        // accessed.
        unsafe { _mm_mask_storeu_epi8(out.add(r * row_len), mask, bytes) };
    }
}

/// The multiply-accumulate loop of a half block: R rows x 16 channels.
///
/// # Safety
/// AVX-512 F/BW/VL; as for [`tile_half`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn int8_pw_mac_rx16c2__avx512<const R: usize>(
    xw: *const i16,
    stride: usize,
    w: *const __m512i,
    kp: usize,
) -> [__m512i; R] {
    let mut acc = [_mm512_setzero_si512(); R];
    for q in 0..kp {
        // SAFETY: (caller) q < kp, so the weight vector and each row's pair exist.
        unsafe {
            let w0 = _mm512_load_si512(w.add(q).cast());
            for (r, a) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(xw.add(r * stride + 2 * q).cast::<i32>().read());
                *a = _mm512_add_epi32(*a, _mm512_madd_epi16(x, w0));
            }
        }
    }
    acc
}

/// The multiply-accumulate loop: R rows x 32 channels, two input channels per `vpmaddwd`.
///
/// # Safety
/// AVX-512 F/BW/VL; as for [`tile`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn int8_pw_mac_rx32c2__avx512<const R: usize>(
    xw: *const i16,
    stride: usize,
    w: *const __m512i,
    kp: usize,
) -> [[__m512i; 2]; R] {
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    for q in 0..kp {
        // SAFETY: (caller) q < kp, so the two weight vectors and each row's pair exist.
        unsafe {
            let w0 = _mm512_load_si512(w.add(2 * q).cast());
            let w1 = _mm512_load_si512(w.add(2 * q + 1).cast());
            for (r, a) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(xw.add(r * stride + 2 * q).cast::<i32>().read());
                a[0] = _mm512_add_epi32(a[0], _mm512_madd_epi16(x, w0));
                a[1] = _mm512_add_epi32(a[1], _mm512_madd_epi16(x, w1));
            }
        }
    }
    acc
}
