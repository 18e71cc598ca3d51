//! AVX2 int8-multiply pointwise convolution: the baseline the add-only kernel is measured
//! against, written to be fast rather than a straw man.
//!
//! Scheme (close to XNNPACK's qs8 GEMM "c2" AVX2 kernels): weights are packed once into
//! blocks of [`NR`] = 16 output channels, sign-extended to int16 and interleaved in pairs of
//! input channels (`[block][k / 2][16][2]`), so one `vpmaddwd` multiplies a broadcast pair of
//! activations by 8 output channels and adds the pair into int32. A micro-tile of [`MR`]
//! pixels x 16 channels keeps 2 * MR accumulators in registers; each activation row is
//! widened to int16 once per tile and reused for every block of output channels.
//!
//! Overflow: `vpmaddwd` of int16 values from int8 cannot saturate (2 * 128 * 127 < 2^31) and
//! the int32 sum is bounded by `128 * 127 * k` (see [`crate::MAX_POINTWISE_K`]).

use super::requant::{LaneParams, OutputParams};
use super::Avx2;
use crate::params::{Epilogue, PointwiseShape};
use crate::AlignedBuf;
use core::arch::x86_64::*;

/// Output channels per block (two ymm accumulators of 8 int32).
pub(super) const NR: usize = 16;
/// Pixels per micro-tile.
const MR: usize = 4;

fn pairs(k: usize) -> usize {
    k.div_ceil(2)
}

/// Packs row-major `n x k` int8 weights into `[n / 16][k / 2][16][2]` int16 (zero padded).
pub(super) fn pack(weights: &[i8], n: usize, k: usize) -> AlignedBuf {
    let kp = pairs(k);
    let blocks = n.div_ceil(NR);
    let mut buf = AlignedBuf::zeroed(blocks * kp * NR * 2 * 2);
    let data = buf.as_i16_mut(blocks * kp * NR * 2);
    for c in 0..n {
        for kk in 0..k {
            data[((c / NR) * kp + kk / 2) * NR * 2 + (c % NR) * 2 + kk % 2] =
                i16::from(weights[c * k + kk]);
        }
    }
    buf
}

pub(super) fn scratch_bytes(max_k: usize, _max_n: usize) -> usize {
    MR * pairs(max_k) * 2 * 2
}

pub(super) fn run(
    _t: Avx2,
    shape: PointwiseShape,
    input: &[i8],
    weights: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut AlignedBuf,
) {
    let kp = pairs(shape.k);
    let blocks = shape.n.div_ceil(NR);
    assert!(weights.len() >= blocks * kp * NR * 4, "int8 weights: packed buffer too small");
    let xw = scratch.as_i16_mut(MR * kp * 2);
    // SAFETY: the `Avx2` token proves AVX2. `Kernels::int8_pointwise` checked the input and
    // output lengths and the epilogue against the shape; the packed weights have
    // `blocks * kp` 64-byte rows (asserted above) and are 64-byte aligned; `xw` holds MR rows.
    unsafe { run_avx2(shape, input, weights.as_ptr().cast(), epi, output, xw) }
}

/// # Safety
/// AVX2; buffers as described in [`run`].
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(
    shape: PointwiseShape,
    input: &[i8],
    weights: *const __m256i,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    xw: &mut [i16],
) {
    let PointwiseShape { pixels, k, n } = shape;
    let kp = pairs(k);
    let stride = kp * 2;
    let out_params = OutputParams::new(epi.output_zero_point, epi.output_min, epi.output_max);
    let mut p = 0;
    while p < pixels {
        let rows = MR.min(pixels - p);
        for r in 0..rows {
            let src = &input[(p + r) * k..(p + r + 1) * k];
            let dst = &mut xw[r * stride..(r + 1) * stride];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = i16::from(s);
            }
            dst[k..].fill(0);
        }
        for block in 0..n.div_ceil(NR) {
            let c0 = block * NR;
            // SAFETY: block < n / 16 rounded up, so its kp rows of 2 vectors exist; xw has
            // `rows` widened rows; the output rows p..p+rows exist.
            unsafe {
                let w = weights.add(block * kp * 2);
                let out = output.as_mut_ptr().add(p * n + c0);
                let lo = LaneParams::load(epi.bias, epi.multiplier, epi.shift, c0);
                let hi = LaneParams::load(epi.bias, epi.multiplier, epi.shift, c0 + 8);
                let width = NR.min(n - c0);
                match rows {
                    4 => {
                        tile::<4>(xw.as_ptr(), stride, w, kp, &lo, &hi, &out_params, out, n, width)
                    }
                    3 => {
                        tile::<3>(xw.as_ptr(), stride, w, kp, &lo, &hi, &out_params, out, n, width)
                    }
                    2 => {
                        tile::<2>(xw.as_ptr(), stride, w, kp, &lo, &hi, &out_params, out, n, width)
                    }
                    _ => {
                        tile::<1>(xw.as_ptr(), stride, w, kp, &lo, &hi, &out_params, out, n, width)
                    }
                }
            }
        }
        p += rows;
    }
}

/// One R x 16 micro-tile: MAC over all input pairs, then requantize and store `width`
/// channels of each of the R rows.
///
/// # Safety
/// AVX2; `xw` holds R rows of `stride` int16; `w` holds `kp` pairs of vectors; `out` is
/// writable for R rows of `row_len` bytes from which `width` are written.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tile<const R: usize>(
    xw: *const i16,
    stride: usize,
    w: *const __m256i,
    kp: usize,
    lo: &LaneParams,
    hi: &LaneParams,
    out_params: &OutputParams,
    out: *mut i8,
    row_len: usize,
    width: usize,
) {
    // SAFETY: (caller) every read is inside xw's R rows and the block's weights.
    let acc = unsafe { int8_pw_mac_rx16c2__avx2::<R>(xw, stride, w, kp) };
    for (r, a) in acc.iter().enumerate() {
        let bytes = out_params.narrow16(lo.apply(a[0]), hi.apply(a[1]));
        // SAFETY: (caller) row r has `width` writable bytes at `out + r * row_len`.
        unsafe {
            let dst = out.add(r * row_len);
            if width == NR {
                _mm_storeu_si128(dst.cast(), bytes);
            } else {
                let mut tmp = [0i8; 16];
                _mm_storeu_si128(tmp.as_mut_ptr().cast(), bytes);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, width);
            }
        }
    }
}

/// The multiply-accumulate loop: R rows x 16 channels, two input channels per `vpmaddwd`.
///
/// # Safety
/// AVX2; as for [`tile`].
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn int8_pw_mac_rx16c2__avx2<const R: usize>(
    xw: *const i16,
    stride: usize,
    w: *const __m256i,
    kp: usize,
) -> [[__m256i; 2]; R] {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for q in 0..kp {
        // SAFETY: (caller) q < kp, so the two weight vectors and each row's pair exist.
        unsafe {
            let w0 = _mm256_load_si256(w.add(2 * q));
            let w1 = _mm256_load_si256(w.add(2 * q + 1));
            for (r, a) in acc.iter_mut().enumerate() {
                let pair = std::ptr::read_unaligned(xw.add(r * stride + 2 * q).cast::<i32>());
                let x = _mm256_set1_epi32(pair);
                a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(x, w0));
                a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(x, w1));
            }
        }
    }
    acc
}
