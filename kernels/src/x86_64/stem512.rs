//! AVX-512 stem: full 3x3 stride-2 padding-1 convolution from uint8 RGB to int8.
//!
//! Scheme (`stem3x3s2_u8s8_16c__avx512`): output channels are vectorised, 16 int32 lanes per
//! group and up to [`MAX_GROUPS`] groups (64 channels) per pass. A pixel's 27 taps are fed to
//! `vpmaddwd` as 14 int16 pairs broadcast from a small widened window (see [`Windows`]):
//! kernel rows 0 and 1 are interleaved element-wise, so their 9 + 9 taps make 9 pairs
//! `(row 0, row 1)`, and row 2 gives 5 pairs of neighbouring taps (the 10th tap meets a zero
//! weight). That is one pair fewer than pairing within each row (15), i.e. 28 of the 30
//! multiplier slots do work. The weights are packed once per pass into a stack array
//! `[pair][group]` in the same pair order.
//!
//! Lane order: the int32 results are narrowed with `vpackssdw` (+ `vpacksswb` or
//! `vpmovswb`), which interleave groups per 128-bit lane. Instead of permuting the bytes
//! afterwards, each group's lanes hold the channels that the packs put in place (see
//! [`lane_channel`]); the weights and epilogue parameters are laid out in that order once per
//! pass, so every output pixel is one (masked) store of channels in order. Channel tails pad
//! the weights with zero channels and mask the stores. With at most 8 output channels the
//! AVX2 kernel is faster (its 8-lane group wastes no lanes) and runs instead.
//!
//! Epilogue: as in `dw512.rs`, the contract's rule with even/odd `vpmuldq` 64-bit products;
//! when no bias can wrap `acc + bias` and every shift is at most `FOLD_MAX_SHIFT` (53), bias,
//! rounding term and output zero point fold into one 64-bit addend per channel.
//!
//! Overflow: `vpmaddwd` of `u8` and `i8` values as int16 is exact (`2 * 255 * 128 < 2^31`),
//! and `|acc| <= 27 * 255 * 128 < 2^20`.

use super::requant512::LaneReq;
use super::Avx512;
use crate::params::{Epilogue, StemShape};
use core::arch::x86_64::*;
use std::ops::Range;

/// Output channels per group (int32 lanes of a zmm register).
const GROUP: usize = 16;
/// Groups per pass: up to 64 output channels.
const MAX_GROUPS: usize = 4;
/// Output channels per pass.
const PASS: usize = GROUP * MAX_GROUPS;
/// Tap pairs per pixel: 9 `(row 0, row 1)` pairs and 5 pairs of row 2.
const PAIRS: usize = 14;
/// Output pixels per widened window.
const COLS: usize = 32;
/// Window elements per row: the `(2 * COLS + 1) * 3` input bytes rounded up to whole 16-byte
/// blocks, which also leaves room for the weight-0 partner of row 2's last tap.
const WIN: usize = 208;
const _: () = assert!(WIN.is_multiple_of(16) && WIN > (2 * COLS + 1) * 3);
/// Largest `|acc|`: 27 products of a `u8` and an `i8`.
const ACC_MAX: i32 = 27 * 255 * 128;

/// Packed weights of one pass: `[pair][group]`, each 16 channels x (tap, partner) as int16.
type Packed = [__m512i; PAIRS * MAX_GROUPS];

/// The three input rows of one chunk of output pixels, widened, padding included.
struct Windows {
    /// Rows 0 and 1 interleaved: element `e` is `row0[e] | row1[e] << 16`.
    r01: [i32; WIN],
    /// Row 2 as int16, viewed as pairs of neighbouring elements.
    r2: [i32; WIN / 2],
    /// The rows' bytes with padding columns (zero point), before widening.
    bytes: [[u8; WIN]; 3],
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    t: Avx512,
    shape: StemShape,
    input: &[u8],
    input_zero_point: u8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    let co = shape.out_channels;
    if co <= 8 {
        // One 8-lane AVX2 group (three vector ports) beats a half-empty 16-lane group (two).
        // (The AVX2 entry point runs the checks below itself.)
        return super::stem::run(
            t.avx2(),
            shape,
            input,
            input_zero_point,
            weights,
            epi,
            rows,
            output,
        );
    }
    // `Kernels::stem3x3s2` checked the same; the pointer arithmetic below relies on it.
    shape.check_call(input.len(), weights.len(), epi, &rows, output.len());
    if rows.is_empty() {
        return;
    }
    let fast = epi.foldable(i64::from(ACC_MAX));
    let job = Job { shape, input, zp: input_zero_point, weights, epi, rows };
    let mut c0 = 0;
    while c0 < co {
        let valid = (co - c0).min(PASS);
        // SAFETY: the `Avx512` token proves AVX-512 F/BW/VL and AVX2; lengths and the row
        // range were checked above; the pass covers channels c0..c0 + valid <= co with
        // `valid.div_ceil(16)` groups; `fast` was decided as `run_pass` requires.
        unsafe {
            match (valid.div_ceil(GROUP), fast) {
                (1, true) => job.run_pass::<1, true>(c0, valid, output),
                (2, true) => job.run_pass::<2, true>(c0, valid, output),
                (3, true) => job.run_pass::<3, true>(c0, valid, output),
                (_, true) => job.run_pass::<4, true>(c0, valid, output),
                (1, false) => job.run_pass::<1, false>(c0, valid, output),
                (2, false) => job.run_pass::<2, false>(c0, valid, output),
                (3, false) => job.run_pass::<3, false>(c0, valid, output),
                (_, false) => job.run_pass::<4, false>(c0, valid, output),
            }
        }
        c0 += valid;
    }
}

/// The arguments of one call.
struct Job<'a> {
    shape: StemShape,
    input: &'a [u8],
    zp: u8,
    weights: &'a [i8],
    epi: &'a Epilogue<'a>,
    rows: Range<usize>,
}

/// Pass-relative channel held by lane `j` of group `g` of a pass with `groups` groups.
///
/// `vpackssdw a, b` puts lanes `4l..4l + 4` of `a`, then of `b`, into 128-bit lane `l`;
/// `vpacksswb` of two such results does the same one level up. So with 4 groups, byte
/// `16l + 4g + i` of the narrowed vector comes from lane `4l + i` of group `g`; with 2 groups
/// (`vpmovswb` after one `vpackssdw`) byte `8l + 4g + i`. A third group is narrowed alone
/// (`vpmovsdb`), in plain order.
const fn lane_channel(groups: usize, g: usize, j: usize) -> usize {
    if groups == 4 {
        16 * (j / 4) + 4 * g + j % 4
    } else if groups >= 2 && g < 2 {
        8 * (j / 4) + 4 * g + j % 4
    } else {
        16 * g + j
    }
}

impl Job<'_> {
    /// Computes channels `c0..c0 + valid` of every output row.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL; slices and `rows` as checked in [`run`]; `c0 + valid <= Cout` and
    /// `G == valid.div_ceil(16) <= 4`; `FAST` only if every shift is at most `FOLD_MAX_SHIFT` (53)
    /// and no `acc + bias` can wrap.
    // One instance per group count, kept out of line so `run` stays small.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    unsafe fn run_pass<const G: usize, const FAST: bool>(
        &self,
        c0: usize,
        valid: usize,
        output: &mut [i8],
    ) {
        let Job { shape, input, zp, weights, epi, ref rows } = *self;
        let (co, wo) = (shape.out_channels, shape.out_width());
        let packed = pack::<G>(weights, co, c0, valid);
        let req = lane_params::<G, FAST>(epi, c0, valid);
        let out = Out {
            zero_point: _mm512_set1_epi32(i32::from(epi.output_zero_point)),
            min: _mm512_set1_epi8(epi.output_min),
            max: _mm512_set1_epi8(epi.output_max),
            mask: if valid == 64 { !0 } else { (1u64 << valid) - 1 },
        };
        let mut win = Windows { r01: [0; WIN], r2: [0; WIN / 2], bytes: [[zp; WIN]; 3] };
        for oy in rows.clone() {
            let mut ox0 = 0;
            while ox0 < wo {
                let ox1 = (ox0 + COLS).min(wo);
                fill(&mut win, shape, input, zp, oy, ox0, ox1);
                for ox in ox0..ox1 {
                    let j = ox - ox0;
                    let r01 = win.r01[6 * j..][..9].try_into().unwrap();
                    let r2 = win.r2[3 * j..][..5].try_into().unwrap();
                    let acc = stem3x3s2_u8s8_16c__avx512::<G>(r01, r2, &packed);
                    // SAFETY: pixel ox of output row oy - rows.start exists and holds channels
                    // c0..c0 + valid (caller); `out.mask` selects exactly those.
                    unsafe {
                        let dst = output.as_mut_ptr().add(((oy - rows.start) * wo + ox) * co + c0);
                        finish::<G, FAST>(acc, &req, &out, dst);
                    }
                }
                ox0 = ox1;
            }
        }
    }
}

/// Interleaves the weights of the tap pairs for the pass's channels in lane order; lanes past
/// `valid` get zero weights.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn pack<const G: usize>(w: &[i8], co: usize, c0: usize, valid: usize) -> Packed {
    let mut v = [[0i16; 2 * GROUP]; PAIRS * MAX_GROUPS];
    for g in 0..G {
        for j in 0..GROUP {
            let c = lane_channel(G, g, j);
            if c >= valid {
                continue;
            }
            let tap = |t: usize| i16::from(w[t * co + c0 + c]);
            for k in 0..9 {
                let lanes = &mut v[k * MAX_GROUPS + g];
                lanes[2 * j] = tap(k);
                lanes[2 * j + 1] = tap(9 + k);
            }
            for p in 0..5 {
                let lanes = &mut v[(9 + p) * MAX_GROUPS + g];
                lanes[2 * j] = tap(18 + 2 * p);
                // The 10th tap of row 2 gets weight 0.
                lanes[2 * j + 1] = if 2 * p + 1 < 9 { tap(19 + 2 * p) } else { 0 };
            }
        }
    }
    // SAFETY: each element is 64 bytes, one unaligned load.
    v.map(|lanes| unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) })
}

/// Loads the epilogue of the pass's channels in lane order; lanes past `valid` get neutral
/// parameters (their results are never stored).
// Out of line: where LLVM sees `bias * m` inside the folded addend, it factors
// `acc * m + bias * m` back into `(acc + bias) * m` and lowers that as a full 64-bit
// multiply (three `vpmuludq` per product).
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn lane_params<const G: usize, const FAST: bool>(
    epi: &Epilogue<'_>,
    c0: usize,
    valid: usize,
) -> [LaneReq; G] {
    let (mut b, mut m, mut s) = ([0i32; PASS], [0i32; PASS], [32i32; PASS]);
    for g in 0..G {
        for j in 0..GROUP {
            let c = lane_channel(G, g, j);
            if c < valid {
                b[g * GROUP + j] = epi.bias[c0 + c];
                m[g * GROUP + j] = epi.multiplier[c0 + c];
                s[g * GROUP + j] = i32::from(epi.shift[c0 + c]);
            }
        }
    }
    core::array::from_fn(|g| {
        // SAFETY: each array holds 64 i32; group g's 16 start at 16 g <= 48.
        let (bias, multiplier, shift) = unsafe {
            (
                _mm512_loadu_si512(b.as_ptr().add(g * GROUP).cast()),
                _mm512_loadu_si512(m.as_ptr().add(g * GROUP).cast()),
                _mm512_loadu_si512(s.as_ptr().add(g * GROUP).cast()),
            )
        };
        LaneReq::new::<FAST>(bias, multiplier, shift, epi.output_zero_point)
    })
}

/// Fills the windows with the input rows of output row `oy`, columns `2 ox0 - 1 ..= 2 ox1
/// - 1`, padding included.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn fill(
    win: &mut Windows,
    shape: StemShape,
    input: &[u8],
    zp: u8,
    oy: usize,
    ox0: usize,
    ox1: usize,
) {
    let (h, w) = (shape.height, shape.width);
    for (ky, bytes) in win.bytes.iter_mut().enumerate() {
        let iy = (2 * oy + ky).wrapping_sub(1);
        if iy >= h {
            bytes.fill(zp);
            continue;
        }
        // Window column c is image column 2 * ox0 - 1 + c.
        let first = (2 * ox0).saturating_sub(1);
        let last = (2 * ox1).min(w); // exclusive
        let lead = 3 * usize::from(ox0 == 0);
        let n = 3 * (last - first);
        bytes[..lead].fill(zp);
        bytes[lead..lead + n].copy_from_slice(&input[(iy * w + first) * 3..(iy * w + last) * 3]);
        bytes[lead + n..].fill(zp);
    }
    let [b0, b1, b2] = &win.bytes;
    for e in (0..WIN).step_by(16) {
        // SAFETY: e + 16 <= WIN for every byte row, `r01` (WIN i32) and `r2` (WIN i16).
        unsafe {
            let r0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(b0.as_ptr().add(e).cast()));
            let r1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(b1.as_ptr().add(e).cast()));
            let r01 = _mm512_or_si512(r0, _mm512_slli_epi32::<16>(r1));
            _mm512_storeu_si512(win.r01.as_mut_ptr().add(e).cast(), r01);
            let r2 = _mm256_cvtepu8_epi16(_mm_loadu_si128(b2.as_ptr().add(e).cast()));
            _mm256_storeu_si256(win.r2.as_mut_ptr().cast::<i16>().add(e).cast(), r2);
        }
    }
}

/// The MAC loop of one pixel: 14 tap pairs (`r01`: rows 0/1, `r2`: row 2) x `G` groups of 16
/// output channels.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn stem3x3s2_u8s8_16c__avx512<const G: usize>(
    r01: &[i32; 9],
    r2: &[i32; 5],
    w: &Packed,
) -> [__m512i; G] {
    let mut acc = [_mm512_setzero_si512(); G];
    // Two plain counted loops (not a chained iterator), which LLVM unrolls.
    for (k, &pair) in r01.iter().enumerate() {
        mac_pair(&mut acc, pair, &w[k * MAX_GROUPS..][..G]);
    }
    for (p, &pair) in r2.iter().enumerate() {
        mac_pair(&mut acc, pair, &w[(9 + p) * MAX_GROUPS..][..G]);
    }
    acc
}

/// Adds one broadcast tap pair times its packed weights into the accumulators.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn mac_pair<const G: usize>(acc: &mut [__m512i; G], pair: i32, w: &[__m512i]) {
    let x = _mm512_set1_epi32(pair);
    for (a, &wv) in acc.iter_mut().zip(w) {
        *a = _mm512_add_epi32(*a, _mm512_madd_epi16(x, wv));
    }
}

/// Output zero point, clamp bounds and store mask of a pass.
struct Out {
    /// Output zero point as int32 (generic path only).
    zero_point: __m512i,
    min: __m512i,
    max: __m512i,
    /// The pass's valid channels, in store order.
    mask: u64,
}

/// LaneRequantizes one pixel's `G` groups and stores its valid channels at `dst`.
///
/// Saturating narrowing before the clamp is exact: the clamp bounds lie inside the int8 range.
///
/// # Safety
/// AVX-512 F/BW/VL; `dst` is writable for the bytes of `out.mask`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn finish<const G: usize, const FAST: bool>(
    acc: [__m512i; G],
    req: &[LaneReq; G],
    out: &Out,
    dst: *mut i8,
) {
    let y: [__m512i; G] = core::array::from_fn(|g| req[g].apply::<FAST>(acc[g], out.zero_point));
    // SAFETY: (caller) the bytes of `out.mask` are writable; other bytes are not accessed.
    unsafe {
        if G == 4 {
            let v =
                _mm512_packs_epi16(_mm512_packs_epi32(y[0], y[1]), _mm512_packs_epi32(y[2], y[3]));
            let v = _mm512_min_epi8(_mm512_max_epi8(v, out.min), out.max);
            _mm512_mask_storeu_epi8(dst, out.mask, v);
            return;
        }
        if G >= 2 {
            let v = _mm512_cvtsepi16_epi8(_mm512_packs_epi32(y[0], y[1]));
            let v = _mm256_min_epi8(
                _mm256_max_epi8(v, _mm512_castsi512_si256(out.min)),
                _mm512_castsi512_si256(out.max),
            );
            _mm256_mask_storeu_epi8(dst, out.mask as u32, v);
        }
        if G % 2 == 1 {
            let g = G - 1;
            let v = _mm512_cvtsepi32_epi8(y[g]);
            let v = _mm_min_epi8(
                _mm_max_epi8(v, _mm512_castsi512_si128(out.min)),
                _mm512_castsi512_si128(out.max),
            );
            _mm_mask_storeu_epi8(dst.add(GROUP * g), (out.mask >> (GROUP * g)) as u16, v);
        }
    }
}
