//! NEON requantization epilogue shared by the NEON kernels: the contract's
//! `y = ((acc + bias) * m + 2^(s-1)) >> s`, then `+ zero point` and clamp.
//!
//! `vmull_s32` gives the exact 64-bit product and `vrshlq_s64` by `-s` is exactly
//! `(p + 2^(s-1)) >> s` (the rounding constant is added at full precision), which is the
//! contract's round-half-up. `|p| < 2^62` and `s >= 32`, so the result fits an int32 and a
//! plain narrow is exact. These functions multiply (once per output); none of them is part
//! of a ternary MAC loop, and none has `ternary` in its name.

use crate::params::Epilogue;
use core::arch::aarch64::*;

/// Requantization parameters for 4 int32 lanes: each lane its own output channel
/// ([`Quad::load`]) or one channel in every lane ([`Quad::splat`]).
#[derive(Clone, Copy)]
pub(super) struct Quad {
    bias: int32x4_t,
    multiplier: int32x4_t,
    /// `-shift` of lanes 0-1 and 2-3 (a negative `vrshlq_s64` shift rounds to the right).
    neg_shift: [int64x2_t; 2],
}

impl Quad {
    /// One channel's parameters in all four lanes.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn splat(bias: i32, multiplier: i32, shift: u8) -> Quad {
        let ns = vdupq_n_s64(-i64::from(shift));
        Quad { bias: vdupq_n_s32(bias), multiplier: vdupq_n_s32(multiplier), neg_shift: [ns, ns] }
    }

    /// Channels `c..c + 4` of `epi` in lanes 0..4; lanes past the last channel get neutral
    /// parameters (their results are never stored).
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn load(epi: &Epilogue<'_>, c: usize) -> Quad {
        let mut b = [0i32; 4];
        let mut m = [0i32; 4];
        let mut s = [-32i64; 4];
        let start = c.min(epi.bias.len());
        let end = (c + 4).min(epi.bias.len());
        for (i, ch) in (start..end).enumerate() {
            b[i] = epi.bias[ch];
            m[i] = epi.multiplier[ch];
            s[i] = -i64::from(epi.shift[ch]);
        }
        // SAFETY: each array is exactly one vector of readable stack memory.
        unsafe {
            Quad {
                bias: vld1q_s32(b.as_ptr()),
                multiplier: vld1q_s32(m.as_ptr()),
                neg_shift: [vld1q_s64(s.as_ptr()), vld1q_s64(s.as_ptr().add(2))],
            }
        }
    }

    /// `((acc + bias) * m + 2^(s-1)) >> s` per lane (before the zero point). The bias add
    /// wraps, as in the contract.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn apply(&self, acc: int32x4_t) -> int32x4_t {
        let x = vaddq_s32(acc, self.bias);
        let lo = vmull_s32(vget_low_s32(x), vget_low_s32(self.multiplier));
        let hi = vmull_high_s32(x, self.multiplier);
        let lo = vrshlq_s64(lo, self.neg_shift[0]);
        let hi = vrshlq_s64(hi, self.neg_shift[1]);
        vmovn_high_s64(vmovn_s64(lo), hi)
    }
}

/// Output zero point and clamp bounds.
#[derive(Clone, Copy)]
pub(super) struct Output {
    zero_point: int16x8_t,
    min: int8x16_t,
    max: int8x16_t,
}

impl Output {
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn new(epi: &Epilogue<'_>) -> Output {
        Output {
            zero_point: vdupq_n_s16(i16::from(epi.output_zero_point)),
            min: vdupq_n_s8(epi.output_min),
            max: vdupq_n_s8(epi.output_max),
        }
    }

    /// Saturates to int16 and adds the zero point (saturating). Exact for the final result:
    /// a value saturated here is beyond every int8 clamp bound even after the zero point.
    #[inline]
    #[target_feature(enable = "neon")]
    fn saturate16(&self, a: int32x4_t, b: int32x4_t) -> int16x8_t {
        vqaddq_s16(vqmovn_high_s32(vqmovn_s32(a), b), self.zero_point)
    }

    /// 8 values (`a` = first 4) to clamped int8.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn narrow8(&self, a: int32x4_t, b: int32x4_t) -> int8x8_t {
        let v = vqmovn_s16(self.saturate16(a, b));
        vmin_s8(vmax_s8(v, vget_low_s8(self.min)), vget_low_s8(self.max))
    }

    /// 16 values in order to clamped int8. Saturating narrowing before the clamp equals
    /// clamping the exact value because the bounds lie inside int8.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn narrow16(&self, v: [int32x4_t; 4]) -> int8x16_t {
        let lo = vqmovn_s16(self.saturate16(v[0], v[1]));
        let bytes = vqmovn_high_s16(lo, self.saturate16(v[2], v[3]));
        vminq_s8(vmaxq_s8(bytes, self.min), self.max)
    }
}
