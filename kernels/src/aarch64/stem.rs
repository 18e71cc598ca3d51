//! NEON stem: 3x3 stride-2 padding-1 convolution from uint8 RGB to int8, vectorised across
//! output channels.
//!
//! Per output row and block of 16 output channels (then 8, then an overlapping or partial
//! last block) the 27 tap weight vectors are widened to int16 once and kept on the stack;
//! for each output pixel the 27 input values (the zero point in the padding) are gathered
//! and each multiplies the tap's weights with `mul` by a broadcast scalar. A u8 times an int8
//! fits int16 exactly (`255 * 128 < 2^15`); the products are widened into int32 accumulators
//! (`saddw`), since sums of two could overflow int16.

use super::dw::{load8, store8};
use super::requant::{Output, Quad};
use super::Neon;
use crate::params::{Epilogue, StemShape};
use core::arch::aarch64::*;
use std::ops::Range;

/// Taps of the stem: 3 x 3 pixels x 3 channels.
const TAPS: usize = 27;

/// One output row's view of the input: the three input rows (null where the row is
/// padding), the width and the zero point.
struct RowView {
    rows: [*const u8; 3],
    width: usize,
    zero_point: u8,
}

impl RowView {
    /// The 27 input values of output pixel `ox`, `[(ky * 3 + kx) * 3 + ci]`.
    #[inline]
    fn gather(&self, ox: usize) -> [i16; TAPS] {
        let ix0 = (2 * ox) as isize - 1;
        let mut taps = [i16::from(self.zero_point); TAPS];
        let inside = ix0 >= 0 && ix0 as usize + 2 < self.width;
        for (ky, dst) in taps.chunks_exact_mut(9).enumerate() {
            let row = self.rows[ky];
            if row.is_null() {
                continue;
            }
            if inside {
                // SAFETY: the 3 pixels ix0..ix0 + 3 lie inside this input row.
                let src = unsafe { std::slice::from_raw_parts(row.add(ix0 as usize * 3), 9) };
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = i16::from(s);
                }
            } else {
                for (kx, px) in dst.chunks_exact_mut(3).enumerate() {
                    let ix = ix0 + kx as isize;
                    if ix >= 0 && (ix as usize) < self.width {
                        // SAFETY: pixel ix lies inside this input row (3 bytes).
                        let src =
                            unsafe { std::slice::from_raw_parts(row.add(ix as usize * 3), 3) };
                        for (d, &s) in px.iter_mut().zip(src) {
                            *d = i16::from(s);
                        }
                    }
                }
            }
        }
        taps
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    _t: Neon,
    shape: StemShape,
    input: &[u8],
    input_zero_point: u8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    // SAFETY: the `Neon` token proves NEON is available; `Kernels::stem3x3s2` checked the
    // input, weight, output and epilogue lengths against the shape and the row range.
    unsafe { run_neon(shape, input, input_zero_point, weights, epi, rows, output) }
}

/// # Safety
/// NEON; lengths as checked by `Kernels::stem3x3s2`.
#[target_feature(enable = "neon")]
unsafe fn run_neon(
    shape: StemShape,
    input: &[u8],
    zero_point: u8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    let (h, w, co) = (shape.height, shape.width, shape.out_channels);
    let wo = shape.out_width();
    let out = Output::new(epi);
    for (oi, oy) in rows.enumerate() {
        let iy0 = (2 * oy) as isize - 1;
        let view = RowView {
            rows: [0, 1, 2].map(|ky| {
                let iy = iy0 + ky;
                if iy < 0 || iy as usize >= h {
                    std::ptr::null()
                } else {
                    input[iy as usize * w * 3..].as_ptr()
                }
            }),
            width: w,
            zero_point,
        };
        let out_row = output[oi * wo * co..][..wo * co].as_mut_ptr();
        // SAFETY: the row pointers address whole input rows; the block starts and widths
        // keep every channel access below co; out_row has wo * co bytes.
        unsafe {
            let mut cs = 0;
            while co - cs >= 16 {
                stem3x3s2_u8s8_16c__neon(&view, wo, co, cs, weights, epi, &out, out_row);
                cs += 16;
            }
            if co - cs >= 8 {
                stem3x3s2_u8s8_8c__neon(&view, wo, co, cs, 8, weights, epi, &out, out_row);
                cs += 8;
            }
            if cs < co {
                if co >= 8 {
                    stem3x3s2_u8s8_8c__neon(&view, wo, co, co - 8, 8, weights, epi, &out, out_row);
                } else {
                    stem3x3s2_u8s8_8c__neon(
                        &view,
                        wo,
                        co,
                        cs,
                        co - cs,
                        weights,
                        epi,
                        &out,
                        out_row,
                    );
                }
            }
        }
    }
}

/// Output channels `cs..cs + 16` of one output row.
///
/// # Safety
/// NEON; `cs + 16 <= co`; `weights` is `[27][co]`; `out_row` writable for `wo * co` bytes.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn stem3x3s2_u8s8_16c__neon(
    v: &RowView,
    wo: usize,
    co: usize,
    cs: usize,
    weights: &[i8],
    epi: &Epilogue<'_>,
    out: &Output,
    out_row: *mut i8,
) {
    let wv: [[int16x8_t; 2]; TAPS] = std::array::from_fn(|t| {
        // SAFETY: (caller) tap t's 16 weights are at t * co + cs.
        let w = unsafe { vld1q_s8(weights.as_ptr().add(t * co + cs)) };
        [vmovl_s8(vget_low_s8(w)), vmovl_high_s8(w)]
    });
    let q = [0, 4, 8, 12].map(|i| Quad::load(epi, cs + i));
    for ox in 0..wo {
        let taps = v.gather(ox);
        let mut acc = [vdupq_n_s32(0); 4];
        for (w, &x) in wv.iter().zip(&taps) {
            let lo = vmulq_n_s16(w[0], x);
            let hi = vmulq_n_s16(w[1], x);
            acc[0] = vaddw_s16(acc[0], vget_low_s16(lo));
            acc[1] = vaddw_high_s16(acc[1], lo);
            acc[2] = vaddw_s16(acc[2], vget_low_s16(hi));
            acc[3] = vaddw_high_s16(acc[3], hi);
        }
        let y = [0, 1, 2, 3].map(|i| q[i].apply(acc[i]));
        // SAFETY: (caller) pixel ox's channels cs..cs + 16 are inside the output row.
        unsafe { vst1q_s8(out_row.add(ox * co + cs), out.narrow16(y)) };
    }
}

/// `width <= 8` output channels `cs..cs + width` of one output row.
///
/// # Safety
/// NEON; `cs + width <= co`; otherwise as for [`stem3x3s2_u8s8_16c__neon`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn stem3x3s2_u8s8_8c__neon(
    v: &RowView,
    wo: usize,
    co: usize,
    cs: usize,
    width: usize,
    weights: &[i8],
    epi: &Epilogue<'_>,
    out: &Output,
    out_row: *mut i8,
) {
    let wv: [int16x8_t; TAPS] = std::array::from_fn(|t| {
        // SAFETY: (caller) tap t's `width` weights are at t * co + cs.
        vmovl_s8(unsafe { load8(weights.as_ptr().add(t * co + cs), width) })
    });
    let q = [Quad::load(epi, cs), Quad::load(epi, cs + 4)];
    for ox in 0..wo {
        let taps = v.gather(ox);
        let mut acc = [vdupq_n_s32(0); 2];
        for (&w, &x) in wv.iter().zip(&taps) {
            let prod = vmulq_n_s16(w, x);
            acc[0] = vaddw_s16(acc[0], vget_low_s16(prod));
            acc[1] = vaddw_high_s16(acc[1], prod);
        }
        let bytes = out.narrow8(q[0].apply(acc[0]), q[1].apply(acc[1]));
        // SAFETY: (caller) pixel ox's channels cs..cs + width are inside the output row.
        unsafe { store8(out_row.add(ox * co + cs), bytes, width) };
    }
}
