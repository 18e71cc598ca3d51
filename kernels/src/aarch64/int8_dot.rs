//! NEON int8-multiply pointwise convolution with the dot-product extension (`sdot`,
//! Armv8.2 DotProd: Cortex-A55/A76 and later, so the Raspberry Pi 5 but not the Pi 4): the
//! baseline a user's int8 engine would run on such a core, so that `promctl benchmark`
//! compares the add-only kernel against it rather than against the slower `smull` kernel.
//!
//! Scheme (like XNNPACK's qs8 "4x16c4" dot-product GEMM): weights are packed once into
//! blocks of [`NR`] = 16 output channels; per group of 4 input channels a block holds
//! `[16 channels][4]` bytes, four vectors. A micro-tile of [`MR`] = 4 pixels x 16 channels
//! keeps 16 int32x4 accumulators. Per 16 input channels it loads 16 bytes of each pixel and
//! 16 weight vectors and issues 64 `sdot` by element (`acc += w[c][0..4] . x[4g..4g+4]`),
//! 1024 exact MACs. `k` is padded to a multiple of 16 with zero weights.
//!
//! The dot-product intrinsics are unstable in Rust (`stdarch_neon_dotprod`), so `sdot` is
//! one instruction of inline assembly in [`sdot_lane`], inside functions compiled with
//! `target_feature(enable = "neon,dotprod")` and reachable only with a [`NeonDot`] token.
//!
//! Overflow: `sdot` adds four exact products to an int32 lane; the sum is bounded by
//! `128 * 128 * k` (see [`crate::MAX_POINTWISE_K`]), as in every int8 kernel.

use super::int8_pw::round64;
use super::requant::{Output, Quad};
use super::NeonDot;
use crate::params::{Epilogue, PointwiseShape};
use crate::AlignedBuf;
use core::arch::aarch64::*;

/// Output channels per block.
const NR: usize = 16;
/// Pixels per micro-tile.
const MR: usize = 4;

/// Input channels padded to a multiple of 16.
fn padded(k: usize) -> usize {
    k.div_ceil(16) * 16
}

/// Packs row-major `n x k` int8 weights: block `b` (channels `16 b..16 b + 16`, zero padded)
/// holds, per group `g` of 4 input channels, `[16][4]` bytes: channel `c`'s weights
/// `4 g..4 g + 4`.
pub(super) fn pack(weights: &[i8], n: usize, k: usize) -> AlignedBuf {
    let kp = padded(k);
    let blocks = n.div_ceil(NR);
    let mut buf = AlignedBuf::zeroed(blocks * kp * NR);
    let data = buf.as_i8_mut(blocks * kp * NR);
    for (c, row) in weights.chunks_exact(k).enumerate().take(n) {
        let block = &mut data[(c / NR) * kp * NR..][..kp * NR];
        for (kk, &w) in row.iter().enumerate() {
            block[(kk / 4) * 4 * NR + (c % NR) * 4 + kk % 4] = w;
        }
    }
    buf
}

/// Scratch layout: `MR` input rows of padded `k`, then four [`Quad`]s of requantization
/// parameters per block.
fn params_offset(k: usize) -> usize {
    round64(MR * padded(k))
}

pub(super) fn scratch_bytes(max_k: usize, max_n: usize) -> usize {
    params_offset(max_k) + max_n.div_ceil(NR) * 4 * std::mem::size_of::<Quad>()
}

pub(super) fn run(
    _t: NeonDot,
    shape: PointwiseShape,
    input: &[i8],
    weights: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut AlignedBuf,
) {
    let PointwiseShape { k, n, .. } = shape;
    let kp = padded(k);
    let blocks = n.div_ceil(NR);
    assert!(weights.len() >= blocks * kp * NR, "int8 weights: packed buffer too small");
    assert!(scratch.len() >= scratch_bytes(k, n), "scratch too small for this pointwise shape");
    let base = scratch.as_mut_ptr();
    // SAFETY: the scratch holds MR rows of kp bytes, then 4 * blocks Quads at a 64-byte
    // aligned offset (asserted size); the two regions do not overlap.
    let (xs, params) = unsafe {
        (
            std::slice::from_raw_parts_mut(base.cast::<i8>(), MR * kp),
            std::slice::from_raw_parts_mut(base.add(params_offset(k)).cast::<Quad>(), 4 * blocks),
        )
    };
    // SAFETY: the `NeonDot` token proves NEON is available.
    // (Four Quads per 16-channel block are the same array as one per 4-channel block.)
    unsafe { super::int8_pw::prepare(epi, params) };
    // SAFETY: NEON and DotProd (token); the lengths were asserted above and are restated
    // in `tiles`' contract.
    unsafe { tiles(shape, input, weights.as_ptr().cast::<i8>(), epi, output, xs, params) };
}

/// Every 4-pixel tile and 16-channel block of the layer: copies the tile's input rows,
/// runs the micro-kernel and stores the requantized outputs. A separate function with the
/// `dotprod` feature so that the micro-kernel (which has it) is inlined into this loop:
/// LLVM does not inline a function into a caller with fewer target features.
///
/// # Safety
/// NEON and DotProd; `w` holds `n.div_ceil(16) * kp * 16` packed bytes (`kp` = `k`
/// rounded up to 16), `xs` is `4 * kp` bytes, `params` holds 4 `Quad`s per block, and
/// `input`/`output` have `pixels * k` / `pixels * n` values (checked by the caller).
#[target_feature(enable = "neon,dotprod")]
unsafe fn tiles(
    shape: PointwiseShape,
    input: &[i8],
    w: *const i8,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    xs: &mut [i8],
    params: &[Quad],
) {
    let PointwiseShape { pixels, k, n } = shape;
    let kp = padded(k);
    let out = Output::new(epi);
    // Padding channels (k..kp) meet zero weights and the rows past a partial tile are never
    // stored, so the rows need no clearing between tiles.
    let mut p = 0;
    while p < pixels {
        let rows = MR.min(pixels - p);
        for (r, dst) in xs.chunks_exact_mut(kp).enumerate().take(rows) {
            dst[..k].copy_from_slice(&input[(p + r) * k..][..k]);
        }
        for (b, q) in params.chunks_exact(4).enumerate() {
            let c0 = b * NR;
            let width = NR.min(n - c0);
            // SAFETY: (caller) NEON and DotProd; block b has kp * NR packed bytes; xs holds
            // MR rows of kp; rows p..p+rows of the output have n bytes, of which channels
            // c0..c0+width are written.
            unsafe {
                let acc = int8_pw_4x16c4__neon_dot(xs.as_ptr(), kp, w.add(b * kp * NR));
                for (r, a) in acc.iter().enumerate().take(rows) {
                    let y = [0, 1, 2, 3].map(|v| q[v].apply(a[v]));
                    store_row(out.narrow16(y), output.as_mut_ptr().add((p + r) * n + c0), width);
                }
            }
        }
        p += rows;
    }
}

/// Stores the first `width` of 16 bytes.
///
/// # Safety
/// NEON; `out` writable for `width` bytes (`width <= 16`).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store_row(bytes: int8x16_t, out: *mut i8, width: usize) {
    // SAFETY: (caller) `out` has `width` writable bytes; tmp is 16 bytes.
    unsafe {
        if width == NR {
            vst1q_s8(out, bytes);
        } else {
            let mut tmp = [0i8; NR];
            vst1q_s8(tmp.as_mut_ptr(), bytes);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), out, width);
        }
    }
}

/// `acc + (w[4 j..4 j + 4] . x[4 L..4 L + 4])` for each int32 lane `j`: one `sdot` by element.
///
/// # Safety
/// NEON and DotProd must be available.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot_lane<const L: i32>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: (caller) the CPU has DotProd; the instruction only reads and writes the
    // three vector registers.
    unsafe {
        core::arch::asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            x = in(vreg) x,
            lane = const L,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// The multiply-accumulate loop of one 4-pixel x 16-channel micro-tile. Returns, per pixel,
/// the int32 sums of channels `4 v..4 v + 4` in vector `v`.
///
/// # Safety
/// NEON and DotProd; `xs` holds 4 rows of `kp` bytes (`kp` a multiple of 16); `w` holds the
/// block's `kp * 16` packed bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn int8_pw_4x16c4__neon_dot(xs: *const i8, kp: usize, w: *const i8) -> [[int32x4_t; 4]; MR] {
    let mut acc = [[vdupq_n_s32(0); 4]; MR];
    let x = [0, 1, 2, 3].map(|r| xs.wrapping_add(r * kp));
    let mut wp = w;
    let mut k = 0;
    // SAFETY: (caller) every load is inside xs's rows (k + 16 <= kp) and the block
    // (64 bytes per group of 4 input channels).
    unsafe {
        while k < kp {
            let xv = x.map(|row| vld1q_s8(row.add(k)));
            macro_rules! group {
                ($g:literal) => {{
                    let wv = [0, 1, 2, 3].map(|v| vld1q_s8(wp.add(64 * $g + 16 * v)));
                    for (a, xr) in acc.iter_mut().zip(xv) {
                        for (acc_rv, wc) in a.iter_mut().zip(wv) {
                            *acc_rv = sdot_lane::<$g>(*acc_rv, wc, xr);
                        }
                    }
                }};
            }
            group!(0);
            group!(1);
            group!(2);
            group!(3);
            wp = wp.add(4 * 64);
            k += 16;
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_puts_each_weight_in_its_group_and_lane() {
        let (n, k) = (18, 20);
        let w: Vec<i8> = (0..n * k).map(|i| (i % 251) as i8).collect();
        let packed = pack(&w, n, k);
        let kp = padded(k);
        let data = packed.as_i8(n.div_ceil(NR) * kp * NR);
        for c in 0..n {
            for kk in 0..kp {
                let at = (c / NR) * kp * NR + (kk / 4) * 64 + (c % NR) * 4 + kk % 4;
                let want = if kk < k { w[c * k + kk] } else { 0 };
                assert_eq!(data[at], want, "channel {c}, input {kk}");
            }
        }
    }
}
