//! AVX2 quantized residual add (`add_s8_16x__avx2`), 16 elements per step: the arithmetic of
//! [`super::add512`] (int32 lanes with `vpmulld`, exact because multipliers are at most
//! `2^22`; rounding as `(x >> s) +` bit `s - 1` of `x`, so nothing leaves the lane) on two
//! ymm registers of eight lanes. The elements past the last whole step go through the
//! scalar contract, which is the same integer arithmetic. The compiled scalar loop it
//! replaces (64-bit products) took about 2 cycles per element.

use super::Avx2;
use crate::params::AddParams;
use core::arch::x86_64::*;

/// Elements per step.
const STEP: usize = 16;

pub(super) fn run(_t: Avx2, a: &[i8], b: &[i8], p: &AddParams, out: &mut [i8]) {
    assert!(a.len() == b.len() && a.len() == out.len(), "add: length mismatch");
    p.check();
    let whole = a.len() / STEP * STEP;
    // SAFETY: the `Avx2` token proves AVX2; the three slices have `whole` elements.
    unsafe { add_s8_16x__avx2(&a[..whole], &b[..whole], p, &mut out[..whole]) };
    crate::scalar::add(&a[whole..], &b[whole..], p, &mut out[whole..]);
}

/// # Safety
/// AVX2; `a`, `b` and `out` have equal lengths, a multiple of [`STEP`]; `p` passed
/// `AddParams::check`.
#[target_feature(enable = "avx2")]
unsafe fn add_s8_16x__avx2(a: &[i8], b: &[i8], p: &AddParams, out: &mut [i8]) {
    let za = _mm256_set1_epi32(i32::from(p.a_zero_point));
    let zb = _mm256_set1_epi32(i32::from(p.b_zero_point));
    let ma = _mm256_set1_epi32(p.a_multiplier);
    let mb = _mm256_set1_epi32(p.b_multiplier);
    let shift = _mm_cvtsi32_si128(i32::from(p.shift));
    let shift_less_1 = _mm_cvtsi32_si128(i32::from(p.shift) - 1);
    let one = _mm256_set1_epi32(1);
    let zo = _mm256_set1_epi32(i32::from(p.output_zero_point));
    let (min, max) = (_mm_set1_epi8(p.output_min), _mm_set1_epi8(p.output_max));
    // Eight values of a and b (the low 8 bytes) to eight int32 results, zero point added.
    let lanes8 = |x: __m128i, y: __m128i| {
        let x = _mm256_sub_epi32(_mm256_cvtepi8_epi32(x), za);
        let y = _mm256_sub_epi32(_mm256_cvtepi8_epi32(y), zb);
        let sum = _mm256_add_epi32(_mm256_mullo_epi32(x, ma), _mm256_mullo_epi32(y, mb));
        let half = _mm256_and_si256(_mm256_srl_epi32(sum, shift_less_1), one);
        _mm256_add_epi32(_mm256_add_epi32(_mm256_sra_epi32(sum, shift), half), zo)
    };
    for ((x, y), o) in
        a.chunks_exact(STEP).zip(b.chunks_exact(STEP)).zip(out.chunks_exact_mut(STEP))
    {
        // SAFETY: each chunk is 16 bytes.
        unsafe {
            let x = _mm_loadu_si128(x.as_ptr().cast());
            let y = _mm_loadu_si128(y.as_ptr().cast());
            let low = lanes8(x, y);
            let high = lanes8(_mm_srli_si128::<8>(x), _mm_srli_si128::<8>(y));
            // Per 128-bit lane the pack interleaves low and high by fours; the qword
            // permute puts the 16 words back in order. Saturating twice before the clamp
            // is exact: the bounds lie inside int8.
            let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(low, high));
            let bytes = _mm_packs_epi16(
                _mm256_castsi256_si128(words),
                _mm256_extracti128_si256::<1>(words),
            );
            _mm_storeu_si128(o.as_mut_ptr().cast(), _mm_min_epi8(_mm_max_epi8(bytes, min), max));
        }
    }
}
