//! x86_64 tiers: AVX2, and AVX-512 (F, BW, VL) for the ternary pointwise kernel.
//!
//! Every SIMD function here is an `unsafe fn` with `#[target_feature(enable = ...)]`; the
//! safe entry points take an [`Avx2`] or [`Avx512`] token, which can only be constructed when
//! the CPU has those features, and that is the whole safety argument for calling them. The
//! AVX-512 tier runs the operations it has no kernel of its own for with the AVX2 kernels
//! (every AVX-512 CPU has AVX2, and [`Avx512::avx2`] hands out that token).

// Kernel function names follow XNNPACK's convention `op_tile__isa`.
#[allow(non_snake_case)]
mod add;
#[allow(non_snake_case)]
mod add512;
#[allow(non_snake_case)]
mod dw;
#[allow(non_snake_case)]
mod dw512;
#[allow(non_snake_case)]
mod int8_pw;
#[allow(non_snake_case)]
mod int8_pw512;
mod requant;
mod requant512;
#[allow(non_snake_case)]
mod stem;
#[allow(non_snake_case)]
mod stem512;
// Deliberately not named `ternary*`: only its add-only MAC functions carry that word.
#[allow(non_snake_case)]
mod table_pw;
#[allow(non_snake_case)]
mod table_pw512;

/// Defines `fn $name([$v; 16]) -> [$v; 16]`, a 16x16 byte transpose done independently in
/// every 128-bit lane of `$v` (the unpack instructions work per lane), from the nine
/// intrinsics given: the low/high unpacks of 8-, 16-, 32- and 64-bit elements.
/// Shared by the SSE2 (one matrix) and AVX2 (two matrices at once) tile transposes.
macro_rules! byte_transpose16 {
    ($(#[$attr:meta])* fn $name:ident($v:ty) {
        $lo8:ident, $hi8:ident, $lo16:ident, $hi16:ident, $lo32:ident,
        $hi32:ident, $lo64:ident, $hi64:ident
    }) => {
        $(#[$attr])*
        fn $name(r: [$v; 16]) -> [$v; 16] {
            // Straight-line stages over named registers: written as loops over arrays, LLVM
            // kept the arrays on the stack (a store and a load per vector and stage).
            // SAFETY: register-only operations of an instruction set the function's target
            // features (or the x86_64 baseline, for SSE2) guarantee.
            #[allow(unused_unsafe)]
            unsafe {
                let [r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, r14, r15] = r;
                // a[i], a[i + 8]: rows 2i, 2i+1; columns 0..8 and 8..16
                let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15] = [
                    $lo8(r0, r1), $lo8(r2, r3), $lo8(r4, r5), $lo8(r6, r7),
                    $lo8(r8, r9), $lo8(r10, r11), $lo8(r12, r13), $lo8(r14, r15),
                    $hi8(r0, r1), $hi8(r2, r3), $hi8(r4, r5), $hi8(r6, r7),
                    $hi8(r8, r9), $hi8(r10, r11), $hi8(r12, r13), $hi8(r14, r15),
                ];
                // b[h*8 + q*4 + i]: rows 4i..4i+4; columns h*8 + q*4..+4
                let [b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15] = [
                    $lo16(a0, a1), $lo16(a2, a3), $lo16(a4, a5), $lo16(a6, a7),
                    $hi16(a0, a1), $hi16(a2, a3), $hi16(a4, a5), $hi16(a6, a7),
                    $lo16(a8, a9), $lo16(a10, a11), $lo16(a12, a13), $lo16(a14, a15),
                    $hi16(a8, a9), $hi16(a10, a11), $hi16(a12, a13), $hi16(a14, a15),
                ];
                // c[base + 2e + i] (base = 0, 4, 8, 12): rows 8i..8i+8; columns base+2e, +1
                let [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15] = [
                    $lo32(b0, b1), $lo32(b2, b3), $hi32(b0, b1), $hi32(b2, b3),
                    $lo32(b4, b5), $lo32(b6, b7), $hi32(b4, b5), $hi32(b6, b7),
                    $lo32(b8, b9), $lo32(b10, b11), $hi32(b8, b9), $hi32(b10, b11),
                    $lo32(b12, b13), $lo32(b14, b15), $hi32(b12, b13), $hi32(b14, b15),
                ];
                // out[j]: column j, rows 0..16
                [
                    $lo64(c0, c1), $hi64(c0, c1), $lo64(c2, c3), $hi64(c2, c3),
                    $lo64(c4, c5), $hi64(c4, c5), $lo64(c6, c7), $hi64(c6, c7),
                    $lo64(c8, c9), $hi64(c8, c9), $lo64(c10, c11), $hi64(c10, c11),
                    $lo64(c12, c13), $hi64(c12, c13), $lo64(c14, c15), $hi64(c14, c15),
                ]
            }
        }
    };
}
pub(crate) use byte_transpose16;

use crate::params::{AddParams, DepthwiseShape, Epilogue, PointwiseShape, PoolParams, StemShape};
use crate::{AlignedBuf, Scratch};
use std::ops::Range;

/// Capability token: proof that this CPU supports AVX2.
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

impl Avx2 {
    /// Returns the token when the CPU has AVX2.
    pub fn detect() -> Option<Avx2> {
        is_x86_feature_detected!("avx2").then_some(Avx2(()))
    }
}

/// Capability token: proof that this CPU supports AVX-512 F, BW and VL, and AVX2.
#[derive(Clone, Copy, Debug)]
pub struct Avx512(());

impl Avx512 {
    /// Returns the token when the CPU has AVX-512 F/BW/VL and AVX2.
    pub fn detect() -> Option<Avx512> {
        let has = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2");
        has.then_some(Avx512(()))
    }

    /// The AVX2 token (an `Avx512` token proves AVX2 too).
    pub fn avx2(self) -> Avx2 {
        Avx2(())
    }
}

pub(crate) fn scratch_bytes_avx512(max_k: usize, max_n: usize) -> usize {
    table_pw512::scratch_bytes(max_k, max_n).max(int8_pw512::scratch_bytes(max_k, max_n))
}

pub(crate) fn pack_int8_pointwise_avx512(weights: &[i8], n: usize, k: usize) -> AlignedBuf {
    int8_pw512::pack(weights, n, k)
}

pub(crate) fn int8_pointwise_avx512(
    t: Avx512,
    shape: PointwiseShape,
    input: &[i8],
    w: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut Scratch,
) {
    int8_pw512::run(t, shape, input, w, epi, output, &mut scratch.buf)
}

pub(crate) fn prepare_lists_avx512(codes: &[u8], k: usize, n: usize) -> AlignedBuf {
    table_pw512::prepare(codes, k, n)
}

pub(crate) fn ternary_pointwise_avx512(
    t: Avx512,
    shape: PointwiseShape,
    input: &[i8],
    w: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut Scratch,
) {
    table_pw512::run(t, shape, input, w, epi, output, &mut scratch.buf)
}

pub(crate) fn scratch_bytes(max_k: usize, max_n: usize) -> usize {
    table_pw::scratch_bytes(max_k, max_n).max(int8_pw::scratch_bytes(max_k, max_n))
}

pub(crate) fn pack_int8_pointwise(weights: &[i8], n: usize, k: usize) -> AlignedBuf {
    int8_pw::pack(weights, n, k)
}

pub(crate) fn prepare_lists(codes: &[u8], k: usize, n: usize) -> AlignedBuf {
    table_pw::prepare(codes, k, n)
}

pub(crate) fn ternary_pointwise(
    t: Avx2,
    shape: PointwiseShape,
    input: &[i8],
    w: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut Scratch,
) {
    table_pw::run(t, shape, input, w, epi, output, &mut scratch.buf)
}

pub(crate) fn int8_pointwise(
    t: Avx2,
    shape: PointwiseShape,
    input: &[i8],
    w: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut Scratch,
) {
    int8_pw::run(t, shape, input, w, epi, output, &mut scratch.buf)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise3x3(
    t: Avx2,
    shape: DepthwiseShape,
    input: &[i8],
    input_zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    dw::run(t, shape, input, input_zero_point, weights, epi, rows, output)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise3x3_avx512(
    t: Avx512,
    shape: DepthwiseShape,
    input: &[i8],
    input_zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    dw512::run(t, shape, input, input_zero_point, weights, epi, rows, output)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn stem3x3s2_avx512(
    t: Avx512,
    shape: StemShape,
    input: &[u8],
    input_zero_point: u8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    stem512::run(t, shape, input, input_zero_point, weights, epi, rows, output)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn stem3x3s2(
    t: Avx2,
    shape: StemShape,
    input: &[u8],
    input_zero_point: u8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    stem::run(t, shape, input, input_zero_point, weights, epi, rows, output)
}

// The classifier is int8 x int8 (not a ternary layer): 16 products per `vpmaddwd`, four
// output rows sharing each widened input vector. LLVM's vectorisation of the scalar loop
// (32-bit multiplies) ran at a fifth of this speed.
pub(crate) fn linear(t: Avx2, input: &[i8], weights: &[i8], bias: &[i32], logits: &mut [i32]) {
    let k = input.len();
    let body = k - k % 16;
    let rows = logits.len() - logits.len() % 4;
    for n0 in (0..rows).step_by(4) {
        let w = &weights[n0 * k..(n0 + 4) * k];
        let mut acc = [0i32; 4];
        if body > 0 {
            // SAFETY: the `Avx2` token proves the CPU has AVX2; slices are in bounds as
            // checked by `linear_4rows_x16__avx2`'s asserts.
            acc = unsafe { linear_4rows_x16__avx2(t, &input[..body], w, k) };
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let row = &w[r * k..(r + 1) * k];
            for j in body..k {
                *a += i32::from(row[j]) * i32::from(input[j]);
            }
            logits[n0 + r] = a.wrapping_add(bias[n0 + r]);
        }
    }
    crate::scalar::linear(input, &weights[rows * k..], &bias[rows..], &mut logits[rows..]);
}

/// Dot products of `input` (a multiple of 16 long) with the first `input.len()` weights of
/// four rows of `w` (row stride `k`).
///
/// # Safety
/// The CPU must support AVX2 (the token's promise).
#[allow(non_snake_case)]
#[target_feature(enable = "avx2")]
unsafe fn linear_4rows_x16__avx2(_t: Avx2, input: &[i8], w: &[i8], k: usize) -> [i32; 4] {
    use std::arch::x86_64::*;
    let len = input.len();
    assert!(len.is_multiple_of(16) && len <= k && w.len() >= 3 * k + len, "linear tile bounds");
    let mut acc = [_mm256_setzero_si256(); 4];
    for j in (0..len).step_by(16) {
        // SAFETY: j + 16 <= len <= input.len(), and row r's j + 16 <= 3k + len <= w.len().
        unsafe {
            let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(input.as_ptr().add(j).cast()));
            for (r, a) in acc.iter_mut().enumerate() {
                let p = w.as_ptr().add(r * k + j).cast();
                let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(p));
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(x, wv));
            }
        }
    }
    let mut out = [0i32; 4];
    for (o, a) in out.iter_mut().zip(acc) {
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` is 32 bytes, an unaligned store is allowed.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), a) };
        *o = lanes.iter().fold(0i32, |s, &v| s.wrapping_add(v));
    }
    out
}

// The global average pool is the scalar code compiled with AVX2 enabled, which LLVM
// vectorises; same integer arithmetic, so bit-identical by construction.

pub(crate) fn add_avx512(t: Avx512, a: &[i8], b: &[i8], p: &AddParams, out: &mut [i8]) {
    add512::run(t, a, b, p, out)
}

pub(crate) fn add(t: Avx2, a: &[i8], b: &[i8], p: &AddParams, out: &mut [i8]) {
    add::run(t, a, b, p, out)
}

pub(crate) fn global_avg_pool(
    _t: Avx2,
    input: &[i8],
    channels: usize,
    p: &PoolParams,
    out: &mut [i8],
) {
    #[target_feature(enable = "avx2")]
    fn pool_avx2(input: &[i8], channels: usize, p: &PoolParams, out: &mut [i8]) {
        crate::scalar::global_avg_pool(input, channels, p, out)
    }
    // SAFETY: the `Avx2` token proves the CPU has AVX2.
    unsafe { pool_avx2(input, channels, p, out) }
}
