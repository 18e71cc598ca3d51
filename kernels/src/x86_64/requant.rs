//! AVX2 requantization epilogue shared by the AVX2 kernels: the contract's
//! `y = (x * m + 2^(s-1)) >> s` with `s >= 32`, exact in 64-bit lanes.
//!
//! `_mm256_mul_epi32` multiplies the even 32-bit lanes into 64-bit products; the odd lanes
//! are shifted down and multiplied the same way. Adding the 64-bit rounding term and taking
//! the high 32 bits of each product is an exact `>> 32` (floor); an arithmetic shift by
//! `s - 32` finishes the floor division by `2^s`. These functions multiply (once per output);
//! none is part of a ternary MAC loop.

use core::arch::x86_64::*;

/// Per-lane requantization parameters for 8 output channels.
#[derive(Clone, Copy)]
pub(super) struct LaneParams {
    bias: __m256i,
    multiplier: __m256i,
    /// `2^(s-1)` for channels 0, 2, 4, 6 (64-bit lanes).
    round_even: __m256i,
    /// `2^(s-1)` for channels 1, 3, 5, 7.
    round_odd: __m256i,
    /// `s - 32` per channel.
    post_shift: __m256i,
}

impl LaneParams {
    /// Loads parameters for channels `c..c + 8`; channels at or past `bias.len()` get
    /// neutral values (their results are never stored).
    ///
    /// The slices must have equal lengths (as `Epilogue::check` ensures).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn load(bias: &[i32], multiplier: &[i32], shift: &[u8], c: usize) -> Self {
        let avail = bias.len().saturating_sub(c).min(8);
        if avail == 8 {
            // SAFETY: channels c..c+8 exist in all three slices (checked lengths are equal).
            let (bias, multiplier, shift) = unsafe {
                (
                    _mm256_loadu_si256(bias.as_ptr().add(c).cast()),
                    _mm256_loadu_si256(multiplier.as_ptr().add(c).cast()),
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(shift.as_ptr().add(c).cast())),
                )
            };
            return Self::from_vectors(bias, multiplier, shift);
        }
        let mut b = [0i32; 8];
        let mut m = [0i32; 8];
        let mut s = [32i32; 8];
        let start = c.min(bias.len());
        let tail = start..start + avail;
        b[..avail].copy_from_slice(&bias[tail.clone()]);
        m[..avail].copy_from_slice(&multiplier[tail.clone()]);
        for (d, &v) in s.iter_mut().zip(&shift[tail]) {
            *d = i32::from(v);
        }
        // SAFETY: the arrays are 8 i32 each, exactly one unaligned 256-bit load.
        let (bias, multiplier, shift) = unsafe {
            (
                _mm256_loadu_si256(b.as_ptr().cast()),
                _mm256_loadu_si256(m.as_ptr().cast()),
                _mm256_loadu_si256(s.as_ptr().cast()),
            )
        };
        Self::from_vectors(bias, multiplier, shift)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn from_vectors(bias: __m256i, multiplier: __m256i, shift: __m256i) -> Self {
        let s_minus_1 = _mm256_sub_epi32(shift, _mm256_set1_epi32(1));
        let one = _mm256_set1_epi64x(1);
        LaneParams {
            bias,
            multiplier,
            round_even: _mm256_sllv_epi64(
                one,
                _mm256_and_si256(s_minus_1, _mm256_set1_epi64x(0xffff_ffff)),
            ),
            round_odd: _mm256_sllv_epi64(one, _mm256_srli_epi64::<32>(s_minus_1)),
            post_shift: _mm256_sub_epi32(shift, _mm256_set1_epi32(32)),
        }
    }

    /// `(acc + bias) * m + round >> s` per lane (int32 result before the zero point).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn apply(&self, acc: __m256i) -> __m256i {
        let x = _mm256_add_epi32(acc, self.bias);
        let even = _mm256_add_epi64(_mm256_mul_epi32(x, self.multiplier), self.round_even);
        let odd = _mm256_add_epi64(
            _mm256_mul_epi32(_mm256_srli_epi64::<32>(x), _mm256_srli_epi64::<32>(self.multiplier)),
            self.round_odd,
        );
        let high = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
        _mm256_srav_epi32(high, self.post_shift)
    }
}

/// Requantization parameters of one output channel applied to 8 lanes (8 pixels).
#[derive(Clone, Copy)]
pub(super) struct ChannelParams {
    bias: __m256i,
    multiplier: __m256i,
    round: __m256i,
    post_shift: __m128i,
}

impl ChannelParams {
    /// Broadcasts one channel's parameters with the rounding term `2^(s-1)` and the post
    /// shift `s - 32` precomputed.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn precomputed(bias: i32, multiplier: i32, round: i64, post_shift: i32) -> Self {
        ChannelParams {
            bias: _mm256_set1_epi32(bias),
            multiplier: _mm256_set1_epi32(multiplier),
            round: _mm256_set1_epi64x(round),
            post_shift: _mm_cvtsi32_si128(post_shift),
        }
    }

    /// Same rule as [`LaneParams::apply`], one channel on all lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn apply(&self, acc: __m256i) -> __m256i {
        let x = _mm256_add_epi32(acc, self.bias);
        let even = _mm256_add_epi64(_mm256_mul_epi32(x, self.multiplier), self.round);
        let odd = _mm256_add_epi64(
            _mm256_mul_epi32(_mm256_srli_epi64::<32>(x), self.multiplier),
            self.round,
        );
        let high = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
        _mm256_sra_epi32(high, self.post_shift)
    }
}

/// Output zero point and clamp bounds.
#[derive(Clone, Copy)]
pub(super) struct OutputParams {
    zero_point: __m256i,
    zero_point16: __m256i,
    min: __m128i,
    max: __m128i,
    min256: __m256i,
    max256: __m256i,
}

impl OutputParams {
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn new(zero_point: i8, min: i8, max: i8) -> Self {
        OutputParams {
            zero_point: _mm256_set1_epi32(i32::from(zero_point)),
            zero_point16: _mm256_set1_epi16(i16::from(zero_point)),
            min: _mm_set1_epi8(min),
            max: _mm_set1_epi8(max),
            min256: _mm256_set1_epi8(min),
            max256: _mm256_set1_epi8(max),
        }
    }

    /// Narrows four vectors of 8 int32 (`a`, `b`, `c`, `d` in output order) to 32 int8 with
    /// the zero point and clamp. The zero point is added with int16 saturation after the
    /// first narrowing: every saturation happens only beyond the int8 range, where the clamp
    /// gives the same answer as for the exact value.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn narrow32(&self, a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        let ab = _mm256_adds_epi16(_mm256_packs_epi32(a, b), self.zero_point16);
        let cd = _mm256_adds_epi16(_mm256_packs_epi32(c, d), self.zero_point16);
        // per 128-bit lane: [a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7] as 4-byte groups
        let bytes = _mm256_packs_epi16(ab, cd);
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        self.clamp32(ordered)
    }

    /// The output zero point in 16 int16 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn zero_point16(&self) -> __m256i {
        self.zero_point16
    }

    /// Clamps 32 int8 values to the output bounds.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn clamp32(&self, bytes: __m256i) -> __m256i {
        _mm256_min_epi8(_mm256_max_epi8(bytes, self.min256), self.max256)
    }

    /// Adds the zero point to 16 int32 values (`lo` = first 8) and narrows them, clamped, to
    /// 16 int8 in order. Saturating narrowing before the clamp gives the same result as
    /// clamping the exact value, because the clamp bounds lie inside the int8 range.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn narrow16(&self, lo: __m256i, hi: __m256i) -> __m128i {
        let lo = _mm256_add_epi32(lo, self.zero_point);
        let hi = _mm256_add_epi32(hi, self.zero_point);
        // packs works per 128-bit lane: [lo0-3 hi0-3 | lo4-7 hi4-7] -> reorder quadwords.
        let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(lo, hi));
        let bytes =
            _mm_packs_epi16(_mm256_castsi256_si128(packed), _mm256_extracti128_si256::<1>(packed));
        _mm_min_epi8(_mm_max_epi8(bytes, self.min), self.max)
    }
}

impl LaneParams {
    /// Same result as [`LaneParams::apply`], for kernels whose parameters stay in registers
    /// across a loop: the odd lanes are moved down with `vpshufd` rather than 64-bit shifts.
    /// With `apply`, LLVM may hoist a sign extension of the shifted multiplier out of such a
    /// loop and then lower the product as a full 64-bit multiply (three `vpmuludq`); here both
    /// products stay single `vpmuldq`s.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn apply_dup(&self, acc: __m256i) -> __m256i {
        let x = _mm256_add_epi32(acc, self.bias);
        let even = _mm256_add_epi64(_mm256_mul_epi32(x, self.multiplier), self.round_even);
        let odd = _mm256_add_epi64(
            _mm256_mul_epi32(
                _mm256_shuffle_epi32::<0b11_11_01_01>(x),
                _mm256_shuffle_epi32::<0b11_11_01_01>(self.multiplier),
            ),
            self.round_odd,
        );
        let high = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
        _mm256_srav_epi32(high, self.post_shift)
    }
}
