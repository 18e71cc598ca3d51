//! NEON int8-multiply pointwise convolution: the baseline the add-only kernel is measured
//! against, written to be fast rather than a straw man.
//!
//! Scheme (close to XNNPACK's qs8 GEMM "c16" NEON kernels): weights are packed once into
//! blocks of [`NR`] = 4 output channels, interleaved by 16 input channels
//! (`[block][k / 16][4][16]`, then one `[4][8]` step when `k` padded to a multiple of 8 is
//! not a multiple of 16). A micro-tile of [`MR`] = 4 pixels x 4 channels keeps 16 int32x4
//! accumulators; per 16 input channels each (pixel, channel) pair costs `smull`, `smull2`
//! (exact int16 products) and two `sadalp` (pairwise widening accumulate into int32), and the
//! four partial lanes are reduced with `addp` at the end. On Cortex-A72 and A76 the
//! multiplies issue on one pipe and `sadalp` on the other, so the loop runs at the multiply
//! peak, 8 MACs per cycle (llvm-mca, A72 model: 32 cycles per 256 MACs), and it is exact for
//! any int8 operands (no int16 sum of two products, which `-128 * -128` could overflow).
//!
//! Overflow: one `sadalp` adds two products, `2 * 128 * 128 < 2^31`; the int32 sum is bounded
//! by `128 * 128 * k` (see [`crate::MAX_POINTWISE_K`]).

use super::requant::{Output, Quad};
use super::Neon;
use crate::params::{Epilogue, PointwiseShape};
use crate::AlignedBuf;
use core::arch::aarch64::*;

/// Output channels per block.
const NR: usize = 4;
/// Pixels per micro-tile.
const MR: usize = 4;

/// Input channels padded to a multiple of 8.
fn padded(k: usize) -> usize {
    k.div_ceil(8) * 8
}

/// `bytes` rounded up to a cache line (scratch regions start on one).
pub(super) fn round64(bytes: usize) -> usize {
    bytes.div_ceil(64) * 64
}

/// Packs row-major `n x k` int8 weights into blocks of 4 channels (zero padded): per block,
/// `k / 16` steps of `[4][16]` bytes, then a `[4][8]` step if the padded `k` has a half step.
pub(super) fn pack(weights: &[i8], n: usize, k: usize) -> AlignedBuf {
    let kp = padded(k);
    let full = kp / 16 * 16;
    let blocks = n.div_ceil(NR);
    let mut buf = AlignedBuf::zeroed(blocks * kp * NR);
    let data = buf.as_i8_mut(blocks * kp * NR);
    for (c, row) in weights.chunks_exact(k).enumerate().take(n) {
        let block = &mut data[(c / NR) * kp * NR..][..kp * NR];
        let lane = c % NR;
        for (kk, &w) in row.iter().enumerate() {
            let at = if kk < full {
                (kk / 16) * 16 * NR + lane * 16 + kk % 16
            } else {
                full * NR + lane * 8 + (kk - full)
            };
            block[at] = w;
        }
    }
    buf
}

/// Scratch layout: `MR` input rows of padded `k`, then one [`Quad`] of requantization
/// parameters per block.
fn params_offset(k: usize) -> usize {
    round64(MR * padded(k))
}

pub(super) fn scratch_bytes(max_k: usize, max_n: usize) -> usize {
    params_offset(max_k) + max_n.div_ceil(NR) * std::mem::size_of::<Quad>()
}

pub(super) fn run(
    _t: Neon,
    shape: PointwiseShape,
    input: &[i8],
    weights: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut AlignedBuf,
) {
    let PointwiseShape { pixels, k, n } = shape;
    let kp = padded(k);
    let blocks = n.div_ceil(NR);
    assert!(weights.len() >= blocks * kp * NR, "int8 weights: packed buffer too small");
    assert!(scratch.len() >= scratch_bytes(k, n), "scratch too small for this pointwise shape");
    let base = scratch.as_mut_ptr();
    // SAFETY: the scratch holds MR rows of kp bytes, then `blocks` Quads at a 64-byte aligned
    // offset (asserted size); the two regions do not overlap.
    let (xs, params) = unsafe {
        (
            std::slice::from_raw_parts_mut(base.cast::<i8>(), MR * kp),
            std::slice::from_raw_parts_mut(base.add(params_offset(k)).cast::<Quad>(), blocks),
        )
    };
    // SAFETY: the `Neon` token proves NEON is available.
    unsafe { prepare(epi, params) };
    // SAFETY: the `Neon` token proves NEON is available.
    let out = unsafe { Output::new(epi) };
    // Padding channels (k..kp) meet zero weights and the rows past a partial tile are never
    // stored, so the rows need no clearing between tiles.
    let mut p = 0;
    while p < pixels {
        let rows = MR.min(pixels - p);
        for (r, dst) in xs.chunks_exact_mut(kp).enumerate().take(rows) {
            dst[..k].copy_from_slice(&input[(p + r) * k..][..k]);
        }
        for (b, q) in params.iter().enumerate() {
            let c0 = b * NR;
            let width = NR.min(n - c0);
            // SAFETY: NEON (token); block b has kp * NR packed bytes (asserted); xs holds MR
            // rows of kp; rows p..p+rows of the output have n bytes from which channels
            // c0..c0+width are written.
            unsafe {
                let acc = int8_pw_4x4c16__neon(
                    xs.as_ptr(),
                    kp,
                    weights.as_ptr().cast::<i8>().add(b * kp * NR),
                );
                let y = acc.map(|a| q.apply(a));
                store_tile(out.narrow16(y), output.as_mut_ptr().add(p * n + c0), n, rows, width);
            }
        }
        p += rows;
    }
}

/// Fills the requantization parameters of 4-channel blocks (`params[b]`: channels
/// `4 b..4 b + 4`).
///
/// # Safety
/// NEON must be available.
#[target_feature(enable = "neon")]
pub(super) unsafe fn prepare(epi: &Epilogue<'_>, params: &mut [Quad]) {
    for (b, q) in params.iter_mut().enumerate() {
        *q = Quad::load(epi, b * NR);
    }
}

/// Stores a 4x4 tile (`bytes[4 r + c]`) to `rows` rows of `stride` bytes, `width` channels
/// each.
///
/// # Safety
/// NEON; `out` writable for `rows` rows of `width` bytes at `stride` apart.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store_tile(bytes: int8x16_t, out: *mut i8, stride: usize, rows: usize, width: usize) {
    let mut tmp = [0u32; 4];
    // SAFETY: tmp is 16 writable bytes; (caller) the destination rows are writable.
    unsafe {
        vst1q_u32(tmp.as_mut_ptr(), vreinterpretq_u32_s8(bytes));
        let mut dst = out;
        for v in tmp.iter().take(rows) {
            if width == NR {
                dst.cast::<u32>().write_unaligned(*v);
            } else {
                let b = v.to_ne_bytes();
                std::ptr::copy_nonoverlapping(b.as_ptr().cast::<i8>(), dst, width);
            }
            dst = dst.add(stride);
        }
    }
}

/// The multiply-accumulate loop of one 4-pixel x 4-channel micro-tile. Returns, per pixel,
/// the int32 sums of the 4 channels.
///
/// # Safety
/// NEON; `xs` holds 4 rows of `kp` bytes (`kp` a multiple of 8); `w` holds the block's
/// `kp * 4` packed bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn int8_pw_4x4c16__neon(xs: *const i8, kp: usize, w: *const i8) -> [int32x4_t; MR] {
    let mut acc = [[vdupq_n_s32(0); NR]; MR];
    let x = [0, 1, 2, 3].map(|r| xs.wrapping_add(r * kp));
    let mut k = 0;
    let mut wp = w;
    // SAFETY: (caller) every load is inside xs's rows (k + 16 <= kp) and the block.
    unsafe {
        while k + 16 <= kp {
            let xv = x.map(|row| vld1q_s8(row.add(k)));
            let wv = [0, 1, 2, 3].map(|c| vld1q_s8(wp.add(16 * c)));
            for (a, xr) in acc.iter_mut().zip(xv) {
                for (acc_rc, wc) in a.iter_mut().zip(wv) {
                    let lo = vmull_s8(vget_low_s8(xr), vget_low_s8(wc));
                    let hi = vmull_high_s8(xr, wc);
                    *acc_rc = vpadalq_s16(vpadalq_s16(*acc_rc, lo), hi);
                }
            }
            wp = wp.add(16 * NR);
            k += 16;
        }
        if k < kp {
            let xv = x.map(|row| vld1_s8(row.add(k)));
            let wv = [0, 1, 2, 3].map(|c| vld1_s8(wp.add(8 * c)));
            for (a, xr) in acc.iter_mut().zip(xv) {
                for (acc_rc, wc) in a.iter_mut().zip(wv) {
                    *acc_rc = vpadalq_s16(*acc_rc, vmull_s8(xr, wc));
                }
            }
        }
    }
    acc.map(|a| vpaddq_s32(vpaddq_s32(a[0], a[1]), vpaddq_s32(a[2], a[3])))
}
