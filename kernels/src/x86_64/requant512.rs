//! AVX-512 requantization epilogue with per-lane parameters, shared by the AVX-512 depthwise,
//! stem and int8 pointwise kernels: the contract's `y = ((acc + bias) m + 2^(s-1)) >> s`
//! (`s >= 32`) through even/odd 64-bit `vpmuldq` products and their high halves, then an
//! arithmetic shift by `s - 32`, then the output zero point. With `FOLDED`
//! ([`crate::params::Epilogue::foldable`]) bias, rounding term and zero point are one 64-bit
//! addend per lane and the two 32-bit additions disappear.

use core::arch::x86_64::*;

/// Requantization parameters of 16 lanes (one channel each).
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct LaneReq {
    multiplier: __m512i,
    /// 64-bit addend of the even / odd lanes' products.
    add_even: __m512i,
    add_odd: __m512i,
    /// `s - 32` per lane.
    post_shift: __m512i,
    /// Bias (literal rule only; part of `add_*` when folded).
    bias: __m512i,
}

impl LaneReq {
    /// Parameters from per-lane bias, multiplier and shift (int32 lanes; shifts in the
    /// contract's range) and the output zero point. `FOLDED` only where the epilogue is
    /// foldable for the kernel's accumulator bound.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    pub(super) fn new<const FOLDED: bool>(
        bias: __m512i,
        multiplier: __m512i,
        shift: __m512i,
        zero_point: i8,
    ) -> LaneReq {
        let one = _mm512_set1_epi64(1);
        let multiplier_odd = _mm512_srli_epi64::<32>(multiplier);
        let shift_even = _mm512_and_si512(shift, _mm512_set1_epi64(0xffff_ffff));
        let shift_odd = _mm512_srli_epi64::<32>(shift);
        let mut add_even = _mm512_sllv_epi64(one, _mm512_sub_epi64(shift_even, one));
        let mut add_odd = _mm512_sllv_epi64(one, _mm512_sub_epi64(shift_odd, one));
        if FOLDED {
            // bias * m + 2^(s-1) + zp * 2^s (the shift of a negative zp is its product).
            let zp = _mm512_set1_epi64(i64::from(zero_point));
            add_even = _mm512_add_epi64(
                _mm512_add_epi64(add_even, _mm512_mul_epi32(bias, multiplier)),
                _mm512_sllv_epi64(zp, shift_even),
            );
            add_odd = _mm512_add_epi64(
                _mm512_add_epi64(
                    add_odd,
                    _mm512_mul_epi32(_mm512_srli_epi64::<32>(bias), multiplier_odd),
                ),
                _mm512_sllv_epi64(zp, shift_odd),
            );
        }
        LaneReq {
            multiplier,
            add_even,
            add_odd,
            post_shift: _mm512_sub_epi32(shift, _mm512_set1_epi32(32)),
            bias,
        }
    }

    /// Requantizes 16 int32 lanes, output zero point included (not yet clamped);
    /// `zero_point` (broadcast) is used by the literal rule only.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
    pub(super) fn apply<const FOLDED: bool>(&self, acc: __m512i, zero_point: __m512i) -> __m512i {
        let x = if FOLDED { acc } else { _mm512_add_epi32(acc, self.bias) };
        let even = _mm512_add_epi64(_mm512_mul_epi32(x, self.multiplier), self.add_even);
        // The odd lanes move down with vpshufd, not 64-bit shifts: given a shifted operand,
        // LLVM may hoist its sign extension out of a kernel's loop and then lower the product
        // as a full 64-bit multiply (three vpmuludq) instead of one vpmuldq.
        let odd = _mm512_add_epi64(
            _mm512_mul_epi32(
                _mm512_shuffle_epi32::<_MM_PERM_DDBB>(x),
                _mm512_shuffle_epi32::<_MM_PERM_DDBB>(self.multiplier),
            ),
            self.add_odd,
        );
        // High halves of the products (an exact floor `>> 32`): the odd lanes already hold
        // theirs; the even lanes take the even products' swapped into place.
        let high = _mm512_mask_shuffle_epi32::<_MM_PERM_CDAB>(odd, 0x5555, even);
        let y = _mm512_srav_epi32(high, self.post_shift);
        if FOLDED {
            y
        } else {
            _mm512_add_epi32(y, zero_point)
        }
    }
}
