//! NEON depthwise 3x3 (stride 1 or 2, padding 1 with the input zero point), vectorised
//! across channels.
//!
//! Per output row and block of 16 channels (then 8, then an overlapping or partial last
//! block) the 9 tap weight vectors and the requantization parameters stay in registers while
//! the kernel walks the row's output pixels. Each tap costs `smull` + `smull2` (exact int16
//! products) and four `saddw` into int32x4 accumulators; int16 sums of two taps could
//! overflow (`2 * 128 * 128`), so every product is widened. Border pixels read the zero
//! point vector instead of memory; interior pixels take a branch-free path.
//!
//! A last block that overlaps the previous one recomputes a few channels and writes the
//! same values again, which keeps odd channel counts off the scalar path.

use super::requant::{Output, Quad};
use super::Neon;
use crate::params::{DepthwiseShape, Epilogue};
use core::arch::aarch64::*;
use std::ops::Range;

/// One output row's view of the input: the three input rows (null where the row is padding)
/// and the geometry.
struct RowView {
    rows: [*const i8; 3],
    width: usize,
    channels: usize,
    stride: usize,
    out_width: usize,
}

impl RowView {
    /// First input column of output pixel `ox`, and whether all 9 taps are inside the input.
    #[inline]
    fn column(&self, ox: usize) -> (isize, bool) {
        let ix0 = (ox * self.stride) as isize - 1;
        let inside =
            ix0 >= 0 && ix0 as usize + 2 < self.width && self.rows.iter().all(|r| !r.is_null());
        (ix0, inside)
    }

    /// Pointer to channel `cs` of input pixel (`ky`, `ix`), or `None` in the padding.
    #[inline]
    fn tap(&self, ky: usize, ix: isize, cs: usize) -> Option<*const i8> {
        let row = self.rows[ky];
        if row.is_null() || ix < 0 || ix as usize >= self.width {
            None
        } else {
            Some(row.wrapping_add(ix as usize * self.channels + cs))
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    _t: Neon,
    shape: DepthwiseShape,
    input: &[i8],
    input_zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    // SAFETY: the `Neon` token proves NEON is available; `Kernels::depthwise3x3` checked the
    // input, weight, output and epilogue lengths against the shape and the row range.
    unsafe { run_neon(shape, input, input_zero_point, weights, epi, rows, output) }
}

/// # Safety
/// NEON; lengths as checked by `Kernels::depthwise3x3`.
#[target_feature(enable = "neon")]
unsafe fn run_neon(
    shape: DepthwiseShape,
    input: &[i8],
    zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    let (h, w, c, s) = (shape.height, shape.width, shape.channels, shape.stride);
    let wo = shape.out_width();
    let out = Output::new(epi);
    for (oi, oy) in rows.enumerate() {
        let iy0 = (oy * s) as isize - 1;
        let view = RowView {
            rows: [0, 1, 2].map(|ky| {
                let iy = iy0 + ky;
                if iy < 0 || iy as usize >= h {
                    std::ptr::null()
                } else {
                    input[iy as usize * w * c..].as_ptr()
                }
            }),
            width: w,
            channels: c,
            stride: s,
            out_width: wo,
        };
        let out_row = output[oi * wo * c..][..wo * c].as_mut_ptr();
        // SAFETY: the row pointers address whole input rows of w * c bytes; the block
        // starts and widths keep every channel access below c; out_row has wo * c bytes.
        unsafe {
            let mut cs = 0;
            while c - cs >= 16 {
                dw3x3_s8_16c__neon(&view, cs, zero_point, weights, epi, &out, out_row);
                cs += 16;
            }
            if c - cs >= 8 {
                dw3x3_s8_8c__neon(&view, cs, 8, zero_point, weights, epi, &out, out_row);
                cs += 8;
            }
            if cs < c {
                if c >= 8 {
                    dw3x3_s8_8c__neon(&view, c - 8, 8, zero_point, weights, epi, &out, out_row);
                } else {
                    dw3x3_s8_8c__neon(&view, cs, c - cs, zero_point, weights, epi, &out, out_row);
                }
            }
        }
    }
}

/// 16 channels `cs..cs + 16` of one output row.
///
/// # Safety
/// NEON; `cs + 16 <= channels`; the view's rows are whole input rows; `weights` is
/// `[9][channels]`; `out_row` is writable for `out_width * channels` bytes.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn dw3x3_s8_16c__neon(
    v: &RowView,
    cs: usize,
    zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    out: &Output,
    out_row: *mut i8,
) {
    let c = v.channels;
    // SAFETY: (caller) tap t's 16 weights are at t * c + cs.
    let wv: [int8x16_t; 9] =
        std::array::from_fn(|t| unsafe { vld1q_s8(weights.as_ptr().add(t * c + cs)) });
    let q = [0, 4, 8, 12].map(|i| Quad::load(epi, cs + i));
    let zp = vdupq_n_s8(zero_point);
    for ox in 0..v.out_width {
        let (ix0, inside) = v.column(ox);
        let mut acc = [vdupq_n_s32(0); 4];
        for ky in 0..3 {
            for kx in 0..3 {
                let x = if inside {
                    // SAFETY: all taps of this pixel are inside the input (checked).
                    unsafe { vld1q_s8(v.rows[ky].add((ix0 as usize + kx) * c + cs)) }
                } else {
                    match v.tap(ky, ix0 + kx as isize, cs) {
                        // SAFETY: an in-range pixel has channels cs..cs + 16.
                        Some(p) => unsafe { vld1q_s8(p) },
                        None => zp,
                    }
                };
                let w = wv[ky * 3 + kx];
                let lo = vmull_s8(vget_low_s8(x), vget_low_s8(w));
                let hi = vmull_high_s8(x, w);
                acc[0] = vaddw_s16(acc[0], vget_low_s16(lo));
                acc[1] = vaddw_high_s16(acc[1], lo);
                acc[2] = vaddw_s16(acc[2], vget_low_s16(hi));
                acc[3] = vaddw_high_s16(acc[3], hi);
            }
        }
        let y = [0, 1, 2, 3].map(|i| q[i].apply(acc[i]));
        // SAFETY: (caller) pixel ox's channels cs..cs + 16 are inside the output row.
        unsafe { vst1q_s8(out_row.add(ox * c + cs), out.narrow16(y)) };
    }
}

/// `width <= 8` channels `cs..cs + width` of one output row (a partial block goes through
/// stack copies).
///
/// # Safety
/// NEON; `cs + width <= channels`; otherwise as for [`dw3x3_s8_16c__neon`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn dw3x3_s8_8c__neon(
    v: &RowView,
    cs: usize,
    width: usize,
    zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    out: &Output,
    out_row: *mut i8,
) {
    let c = v.channels;
    // SAFETY: (caller) tap t's `width` weights are at t * c + cs.
    let wv: [int8x8_t; 9] =
        std::array::from_fn(|t| unsafe { load8(weights.as_ptr().add(t * c + cs), width) });
    let q = [Quad::load(epi, cs), Quad::load(epi, cs + 4)];
    let zp = vdup_n_s8(zero_point);
    for ox in 0..v.out_width {
        let (ix0, inside) = v.column(ox);
        let mut acc = [vdupq_n_s32(0); 2];
        for ky in 0..3 {
            for kx in 0..3 {
                let x = if inside {
                    // SAFETY: all taps of this pixel are inside the input (checked).
                    unsafe { load8(v.rows[ky].add((ix0 as usize + kx) * c + cs), width) }
                } else {
                    match v.tap(ky, ix0 + kx as isize, cs) {
                        // SAFETY: an in-range pixel has channels cs..cs + width.
                        Some(p) => unsafe { load8(p, width) },
                        None => zp,
                    }
                };
                let prod = vmull_s8(x, wv[ky * 3 + kx]);
                acc[0] = vaddw_s16(acc[0], vget_low_s16(prod));
                acc[1] = vaddw_high_s16(acc[1], prod);
            }
        }
        let bytes = out.narrow8(q[0].apply(acc[0]), q[1].apply(acc[1]));
        // SAFETY: (caller) pixel ox's channels cs..cs + width are inside the output row.
        unsafe { store8(out_row.add(ox * c + cs), bytes, width) };
    }
}

/// Loads `width <= 8` bytes (the rest of the vector is unspecified but defined).
///
/// # Safety
/// NEON; `p` readable for `width` bytes.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn load8(p: *const i8, width: usize) -> int8x8_t {
    // SAFETY: (caller) `width` readable bytes; the stack copy is 8 bytes.
    unsafe {
        if width == 8 {
            vld1_s8(p)
        } else {
            let mut t = [0i8; 8];
            std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), width);
            vld1_s8(t.as_ptr())
        }
    }
}

/// Stores the first `width <= 8` bytes of `v`.
///
/// # Safety
/// NEON; `p` writable for `width` bytes.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn store8(p: *mut i8, v: int8x8_t, width: usize) {
    // SAFETY: (caller) `width` writable bytes; the stack copy is 8 bytes.
    unsafe {
        if width == 8 {
            vst1_s8(p, v);
        } else {
            let mut t = [0i8; 8];
            vst1_s8(t.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(t.as_ptr(), p, width);
        }
    }
}
