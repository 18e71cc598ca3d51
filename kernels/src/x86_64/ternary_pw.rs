//! AVX2 ternary pointwise convolution by partial-sum tables (add-only).
//!
//! Pixels are processed in tiles of 16, as int16 lanes of one ymm register. For each group of
//! four input channels the kernel builds, once per tile, the table of all 81 signed sums
//! `T[code] = sum_j w_j * x_j` (w in {-1, 0, 1}) from two 9-entry half tables; the packed
//! ternary weight byte of an output channel *is* its row index in that table (see
//! [`crate::ternary`]). Each output channel then costs one table load and one `vpaddw` per
//! four input channels and 16 pixels: 64 MACs per add, with no multiply anywhere.
//!
//! Tables are built for [`CHUNK`] groups at a time (so they stay in L1) and the int16 chunk
//! sums are widened into int32 accumulators after each chunk.
//!
//! Overflow: an entry is at most `4 * 128 = 512` in magnitude, a chunk sum at most
//! `CHUNK * 512 = 8192 < 2^15`, and the int32 total at most `128 * k` (see
//! [`crate::MAX_POINTWISE_K`]).

use super::requant::{ChannelParams, OutputParams};
use super::Avx2;
use crate::params::{Epilogue, PointwiseShape};
use crate::ternary::{groups, TernaryWeights, CODES};
use crate::AlignedBuf;
use core::arch::x86_64::*;

/// Pixels per tile (int16 lanes of a ymm register).
const TILE: usize = 16;
/// Groups of four input channels per table chunk: 16 * 81 * 32 bytes = 40.5 KiB.
const CHUNK: usize = 16;
/// Bytes of one table chunk.
const TABLES_BYTES: usize = CHUNK * CODES * 32;

fn round64(bytes: usize) -> usize {
    bytes.div_ceil(64) * 64
}

/// Scratch layout: transposed input tile, table chunk, int32 accumulators, output tile.
struct Layout {
    xt: usize,
    tables: usize,
    acc: usize,
    otile: usize,
    total: usize,
}

impl Layout {
    fn new(k: usize, n: usize) -> Layout {
        let xt = 0;
        let tables = xt + round64(groups(k) * 4 * 32);
        let acc = tables + TABLES_BYTES;
        let otile = acc + round64(n * 64);
        let total = otile + round64(n.div_ceil(16) * 16 * 16);
        Layout { xt, tables, acc, otile, total }
    }
}

pub(super) fn scratch_bytes(max_k: usize, max_n: usize) -> usize {
    Layout::new(max_k, max_n).total
}

pub(super) fn run(
    _t: Avx2,
    shape: PointwiseShape,
    input: &[i8],
    w: TernaryWeights<'_>,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut AlignedBuf,
) {
    let layout = Layout::new(shape.k, shape.n);
    assert!(scratch.len() >= layout.total, "scratch too small for this pointwise shape");
    // SAFETY: the `Avx2` token proves the CPU has AVX2. `Kernels::ternary_pointwise` checked
    // input/output lengths against the shape, the code count and that every code is < 81,
    // and the epilogue lengths; the scratch is 64-byte aligned and large enough (above).
    unsafe { run_avx2(shape, input, w.codes, epi, output, scratch.as_mut_ptr(), &layout) }
}

/// # Safety
/// AVX2 must be available; `input`, `codes`, `output` and `epi` must match `shape` (as
/// checked by `Kernels::ternary_pointwise`), every code must be below 81, and `scratch` must
/// be 64-byte aligned with at least `layout.total` bytes.
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(
    shape: PointwiseShape,
    input: &[i8],
    codes: &[u8],
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: *mut u8,
    layout: &Layout,
) {
    let PointwiseShape { pixels, k, n } = shape;
    let g = groups(k);
    // SAFETY: offsets lie inside the scratch (layout.total bytes) and are 64-byte aligned.
    let (xt, tables, acc, otile) = unsafe {
        (
            scratch.add(layout.xt).cast::<__m256i>(),
            scratch.add(layout.tables).cast::<__m256i>(),
            scratch.add(layout.acc).cast::<__m256i>(),
            scratch.add(layout.otile),
        )
    };
    let out_params = OutputParams::new(epi.output_zero_point, epi.output_min, epi.output_max);
    let mut start = 0;
    while start < pixels {
        let valid = TILE.min(pixels - start);
        // SAFETY: rows start..start+valid exist in input and output; the scratch regions
        // have the sizes the layout computed for k and n; codes are < 81 (caller).
        unsafe {
            transpose_input(input.as_ptr().add(start * k), k, valid, g * 4, xt);
            ternary_pw_16x4c__avx2_mac(xt, codes.as_ptr(), g, n, tables, acc);
            requantize_tile(acc, epi, &out_params, n, otile);
            store_output(otile, n, valid, output.as_mut_ptr().add(start * n));
        }
        start += valid;
    }
}

/// Add-only MAC of one 16-pixel tile against all output channels: for every output
/// channel `c`, `acc[2c]` and `acc[2c + 1]` receive the int32 sums of pixels 0..8 and 8..16.
///
/// # Safety
/// AVX2; `xt` holds `groups * 4` vectors (transposed input, int16); `codes` holds `n` rows of
/// `groups` codes, each below 81; `tables` has room for `CHUNK * 81` vectors; `acc` for
/// `2 * n` vectors; all 32-byte aligned.
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn ternary_pw_16x4c__avx2_mac(
    xt: *const __m256i,
    codes: *const u8,
    groups: usize,
    n: usize,
    tables: *mut __m256i,
    acc: *mut __m256i,
) {
    let mut gs = 0;
    while gs < groups {
        let len = CHUNK.min(groups - gs);
        // SAFETY: groups gs..gs+len exist in xt, the chunk fits the table area, and every
        // code row has `groups` entries, so `codes + gs + j` (j < len) stays inside row 0 and
        // each later row is reached by adding `groups`.
        unsafe {
            let mut x = xt.add(gs * 4);
            let mut t = tables;
            for _ in 0..len {
                ternary_table81__avx2(x, t);
                x = x.add(4);
                t = t.add(CODES);
            }
            let mut row = codes.add(gs);
            let mut a = acc;
            for _ in 0..n {
                let sum = if len == CHUNK {
                    ternary_lookup_chunk__avx2(tables, row)
                } else {
                    ternary_lookup_partial__avx2(tables, row, len)
                };
                let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(sum));
                let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(sum));
                if gs == 0 {
                    _mm256_store_si256(a, lo);
                    _mm256_store_si256(a.add(1), hi);
                } else {
                    _mm256_store_si256(a, _mm256_add_epi32(_mm256_load_si256(a), lo));
                    _mm256_store_si256(a.add(1), _mm256_add_epi32(_mm256_load_si256(a.add(1)), hi));
                }
                a = a.add(2);
                row = row.add(groups);
            }
        }
        gs += len;
    }
}

/// Sum of one table row per group over a full chunk (unrolled by the compiler).
///
/// # Safety
/// AVX2; `tables` holds `CHUNK` tables of 81 vectors; `row` has `CHUNK` codes below 81.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_lookup_chunk__avx2(tables: *const __m256i, row: *const u8) -> __m256i {
    // SAFETY: (caller) each code selects a row of its own 81-row table.
    unsafe {
        let mut s0 = _mm256_setzero_si256();
        let mut s1 = _mm256_setzero_si256();
        let mut t = tables;
        for j in 0..CHUNK / 2 {
            let c0 = usize::from(*row.add(2 * j));
            let c1 = usize::from(*row.add(2 * j + 1));
            s0 = _mm256_add_epi16(s0, _mm256_load_si256(t.add(c0)));
            s1 = _mm256_add_epi16(s1, _mm256_load_si256(t.add(CODES + c1)));
            t = t.add(2 * CODES);
        }
        _mm256_add_epi16(s0, s1)
    }
}

/// Same as [`ternary_lookup_chunk__avx2`] for a chunk of `len < CHUNK` groups.
///
/// # Safety
/// As for the full chunk, with `len` tables and codes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_lookup_partial__avx2(tables: *const __m256i, row: *const u8, len: usize) -> __m256i {
    // SAFETY: (caller) each code selects a row of its own 81-row table.
    unsafe {
        let mut s = _mm256_setzero_si256();
        let mut t = tables;
        for j in 0..len {
            s = _mm256_add_epi16(s, _mm256_load_si256(t.add(usize::from(*row.add(j)))));
            t = t.add(CODES);
        }
        s
    }
}

/// Builds the 81 signed sums of the four int16 vectors at `x` into `t`:
/// `t[d0 + 3 d1 + 9 d2 + 27 d3] = sum_j (d_j - 1) * x_j`.
///
/// # Safety
/// AVX2; `x` holds 4 vectors and `t` room for 81, both 32-byte aligned.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_table81__avx2(x: *const __m256i, t: *mut __m256i) {
    // SAFETY: (caller) 4 readable and 81 writable aligned vectors.
    unsafe {
        let low = ternary_table9__avx2(_mm256_load_si256(x), _mm256_load_si256(x.add(1)));
        let high = ternary_table9__avx2(_mm256_load_si256(x.add(2)), _mm256_load_si256(x.add(3)));
        let mut dst = t;
        for h in high {
            for l in low {
                _mm256_store_si256(dst, _mm256_add_epi16(l, h));
                dst = dst.add(1);
            }
        }
    }
}

/// The 9 signed sums of two vectors: `[d0 + 3 d1] = (d0 - 1) * a + (d1 - 1) * b`.
#[inline]
#[target_feature(enable = "avx2")]
fn ternary_table9__avx2(a: __m256i, b: __m256i) -> [__m256i; 9] {
    let z = _mm256_setzero_si256();
    let sum = _mm256_add_epi16(a, b);
    let diff = _mm256_sub_epi16(a, b);
    [
        _mm256_sub_epi16(z, sum),
        _mm256_sub_epi16(z, b),
        diff,
        _mm256_sub_epi16(z, a),
        z,
        a,
        _mm256_sub_epi16(z, diff),
        b,
        sum,
    ]
}

/// Transposes a tile of `valid` pixels x `k` int8 channels into `kpad` int16 vectors of 16
/// pixels each (missing pixels and channels are zero).
///
/// # Safety
/// AVX2; `input` readable for `valid * k` bytes; `xt` writable for `kpad` aligned vectors.
#[target_feature(enable = "avx2")]
unsafe fn transpose_input(input: *const i8, k: usize, valid: usize, kpad: usize, xt: *mut __m256i) {
    let full_blocks = if valid == TILE { k / 16 } else { 0 };
    // SAFETY: (caller) reads stay inside the valid rows, writes inside the kpad vectors.
    unsafe {
        for b in 0..full_blocks {
            let mut rows = [_mm_setzero_si128(); 16];
            for (i, r) in rows.iter_mut().enumerate() {
                *r = _mm_loadu_si128(input.add(i * k + b * 16).cast());
            }
            let cols = transpose16x16(rows);
            for (j, c) in cols.iter().enumerate() {
                _mm256_store_si256(xt.add(b * 16 + j), _mm256_cvtepi8_epi16(*c));
            }
        }
        let xt16 = xt.cast::<i16>();
        for ch in full_blocks * 16..kpad {
            for p in 0..TILE {
                let v = if ch < k && p < valid { i16::from(*input.add(p * k + ch)) } else { 0 };
                *xt16.add(ch * TILE + p) = v;
            }
        }
    }
}

/// Requantizes the tile's accumulators: channel `c`'s 16 pixels become 16 bytes at
/// `otile + 16 c`.
///
/// # Safety
/// AVX2; `acc` holds `2 n` aligned vectors; `otile` is writable for `16 n` bytes;
/// the epilogue has `n` entries with shifts in the contract's range.
#[target_feature(enable = "avx2")]
unsafe fn requantize_tile(
    acc: *const __m256i,
    epi: &Epilogue<'_>,
    out: &OutputParams,
    n: usize,
    otile: *mut u8,
) {
    for c in 0..n {
        let p = ChannelParams::new(epi.bias[c], epi.multiplier[c], epi.shift[c]);
        // SAFETY: (caller) c < n keeps both reads and the 16-byte write in bounds.
        unsafe {
            let lo = p.apply(_mm256_load_si256(acc.add(2 * c)));
            let hi = p.apply(_mm256_load_si256(acc.add(2 * c + 1)));
            _mm_storeu_si128(otile.add(16 * c).cast(), out.narrow16(lo, hi));
        }
    }
}

/// Writes the channel-major output tile (`n` x 16 bytes) to `valid` pixel rows of `n`
/// channels.
///
/// # Safety
/// AVX2; `otile` readable for `16 * n` bytes; `output` writable for `valid * n` bytes.
#[target_feature(enable = "avx2")]
unsafe fn store_output(otile: *const u8, n: usize, valid: usize, output: *mut i8) {
    let blocks = n / 16;
    // SAFETY: (caller) reads inside the tile, writes inside the valid rows.
    unsafe {
        for b in 0..blocks {
            let mut rows = [_mm_setzero_si128(); 16];
            for (j, r) in rows.iter_mut().enumerate() {
                *r = _mm_loadu_si128(otile.add((b * 16 + j) * 16).cast());
            }
            let cols = transpose16x16(rows);
            for (p, col) in cols.iter().enumerate().take(valid) {
                _mm_storeu_si128(output.add(p * n + b * 16).cast(), *col);
            }
        }
        for c in blocks * 16..n {
            for p in 0..valid {
                *output.add(p * n + c) = *otile.add(c * 16 + p) as i8;
            }
        }
    }
}

/// Transposes a 16x16 byte matrix held as 16 rows.
#[inline(always)]
fn transpose16x16(r: [__m128i; 16]) -> [__m128i; 16] {
    // SAFETY: SSE2 is part of the x86_64 baseline; these are register-only operations.
    unsafe {
        let mut a = [_mm_setzero_si128(); 16];
        for i in 0..8 {
            a[i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
            a[i + 8] = _mm_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
        }
        // a[h*8 + i]: rows 2i, 2i+1; columns h*8..h*8+8
        let mut b = [_mm_setzero_si128(); 16];
        for h in 0..2 {
            for i in 0..4 {
                let (x, y) = (a[h * 8 + 2 * i], a[h * 8 + 2 * i + 1]);
                b[h * 8 + i] = _mm_unpacklo_epi16(x, y);
                b[h * 8 + 4 + i] = _mm_unpackhi_epi16(x, y);
            }
        }
        // b[base + i] (base = h*8 + q*4): rows 4i..4i+4; columns base..base+4
        let mut c = [_mm_setzero_si128(); 16];
        for base in [0, 4, 8, 12] {
            for i in 0..2 {
                let (x, y) = (b[base + 2 * i], b[base + 2 * i + 1]);
                c[base + i] = _mm_unpacklo_epi32(x, y);
                c[base + 2 + i] = _mm_unpackhi_epi32(x, y);
            }
        }
        // c[base + 2e + i]: rows 8i..8i+8; columns base+2e, base+2e+1
        let mut out = [_mm_setzero_si128(); 16];
        for base in (0..16).step_by(2) {
            out[base] = _mm_unpacklo_epi64(c[base], c[base + 1]);
            out[base + 1] = _mm_unpackhi_epi64(c[base], c[base + 1]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16x16_transposes() {
        let mut m = [[0u8; 16]; 16];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (i * 16 + j) as u8;
            }
        }
        // SAFETY: SSE2 is baseline on x86_64; each row is 16 readable bytes.
        let rows = m.map(|r| unsafe { _mm_loadu_si128(r.as_ptr().cast()) });
        let cols = transpose16x16(rows);
        for (j, c) in cols.iter().enumerate() {
            let mut bytes = [0u8; 16];
            // SAFETY: 16 writable bytes.
            unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), *c) };
            for (i, &b) in bytes.iter().enumerate() {
                assert_eq!(b, m[i][j]);
            }
        }
    }
}
