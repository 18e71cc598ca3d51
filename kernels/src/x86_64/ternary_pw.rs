//! AVX2 ternary pointwise convolution by partial-sum tables (add-only).
//!
//! Pixels are processed in tiles of 16, as int16 lanes of one ymm register (the input tile is
//! transposed to channel-major first). Two table schemes, chosen per layer by the number of
//! output channels, because building a table only pays off when many outputs read it:
//!
//! - **81-entry tables** (many outputs): for each group of four input channels the kernel
//!   builds, once per tile, all 81 signed sums `T[code] = sum_j w_j * x_j` (w in {-1,0,1});
//!   the packed weight byte of an output channel *is* its row index (see
//!   [`crate::ternary`]), so each output channel costs one table load and one `vpaddw` per
//!   four input channels and 16 pixels: 64 MACs per add.
//! - **pair tables** (few outputs): per group two 9-entry tables, one per pair of input
//!   channels; each output adds two rows per group. A tenth of the build work, twice the
//!   lookups. The per-call weight pre-pass splits each code into the two row indices with a
//!   constant table (no arithmetic on the weights in the hot loop).
//!
//! Tables are built for a chunk of groups at a time (so they stay in L1) and the int16 chunk
//! sums are widened into int32 accumulators after each chunk.
//!
//! Overflow: a table entry (or a pair of pair-table entries) is at most `4 * 128 = 512` in
//! magnitude, a chunk sum at most `CHUNK * 512 <= 16384 < 2^15`, and the int32 total at most
//! `128 * k` (see [`crate::MAX_POINTWISE_K`]).

use super::requant::{ChannelParams, OutputParams};
use super::Avx2;
use crate::params::{Epilogue, PointwiseShape};
use crate::ternary::{groups, TernaryWeights, CODES};
use crate::AlignedBuf;
use core::arch::x86_64::*;

/// Pixels per tile (int16 lanes of a ymm register).
const TILE: usize = 16;
/// Tiles processed together: every weight code loaded serves both tiles' tables, whose rows
/// sit side by side in one 64-byte line.
const MAX_TILES: usize = 1;
/// Bytes of one table row (one vector per tile), as a shift.
const ROW_SHIFT: u32 = 5 + MAX_TILES.trailing_zeros();
/// Bytes of one table row.
const ROW_BYTES: usize = 1 << ROW_SHIFT;
/// Groups per chunk with 81-entry tables: 8 * 81 * 64 bytes = 40.5 KiB.
const CHUNK81: usize = 12;
/// Groups per chunk with pair tables: 32 * 18 * 64 bytes = 36 KiB, and every row offset
/// inside a chunk fits a u16.
const CHUNK_PAIRS: usize = 32;
/// Rows of the two pair tables of one group.
const PAIR_ROWS: usize = 18;
/// Layers with at most this many output channels use pair tables.
const PAIR_TABLES_MAX_N: usize = 48;
/// Output channels summed side by side (independent add chains).
const LANES: usize = 4;

/// `SPLIT[code] = [d0 + 3 d1, 9 + d2 + 3 d3]`: the rows of the two pair tables of a group
/// that together give `T[code]`.
const SPLIT: [[u8; 2]; CODES] = {
    let mut t = [[0u8; 2]; CODES];
    let mut code = 0;
    while code < CODES {
        t[code] = [(code % 9) as u8, (9 + code / 9) as u8];
        code += 1;
    }
    t
};

fn round64(bytes: usize) -> usize {
    bytes.div_ceil(64) * 64
}

/// Which table scheme a layer uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Table81,
    Pairs,
}

impl Scheme {
    fn for_outputs(n: usize) -> Scheme {
        if n <= PAIR_TABLES_MAX_N {
            Scheme::Pairs
        } else {
            Scheme::Table81
        }
    }
}

/// Scratch layout: transposed input tiles, table chunk, int32 accumulators, output tile and
/// (pair scheme) the per-call table offsets of every (output channel, group).
struct Layout {
    xt: usize,
    xt_stride: usize,
    tables: usize,
    acc: usize,
    acc16: usize,
    otile: usize,
    offsets: usize,
    total: usize,
}

impl Layout {
    fn new(k: usize, n: usize) -> Layout {
        let xt = 0;
        let xt_stride = round64(groups(k) * 4 * 32);
        let tables = xt + MAX_TILES * xt_stride;
        let table_bytes = (CHUNK81 * CODES).max(CHUNK_PAIRS * PAIR_ROWS) * ROW_BYTES;
        let acc = tables + table_bytes;
        let acc16 = acc + round64(n * 64 * MAX_TILES);
        let otile = acc16 + round64(n * 32 * MAX_TILES);
        let offsets = otile + round64(n.div_ceil(2) * 2 * 16);
        let offset_bytes = match Scheme::for_outputs(n) {
            Scheme::Table81 => 0, // the codes themselves index the tables
            Scheme::Pairs => n * groups(k) * 2 * 2,
        };
        let total = offsets + round64(offset_bytes);
        Layout { xt, xt_stride, tables, acc, acc16, otile, offsets, total }
    }
}

pub(super) fn scratch_bytes(max_k: usize, max_n: usize) -> usize {
    // A smaller n may take the pair scheme, whose layout differs.
    Layout::new(max_k, max_n).total.max(Layout::new(max_k, max_n.min(PAIR_TABLES_MAX_N)).total)
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

/// For the pair scheme: turns each code into the byte offsets of its two pair-table rows
/// inside the chunk's table block (row-major like the codes, two offsets per group), so the
/// lookup loop is one u16 load and one `vpaddw` per tile and lookup. Cheap: pair tables
/// serve layers with few output channels.
fn pair_offsets(codes: &[u8], g: usize, offsets: &mut [u16]) {
    const GROUP_BYTES: usize = PAIR_ROWS * ROW_BYTES;
    for (row, out) in codes.chunks_exact(g).zip(offsets.chunks_exact_mut(g * 2)) {
        let mut base = 0usize;
        let mut in_chunk = 0;
        for (&code, dst) in row.iter().zip(out.chunks_exact_mut(2)) {
            let [lo, hi] = SPLIT[usize::from(code)];
            dst[0] = (base + (usize::from(lo) << ROW_SHIFT)) as u16;
            dst[1] = (base + (usize::from(hi) << ROW_SHIFT)) as u16;
            in_chunk += 1;
            base += GROUP_BYTES;
            if in_chunk == CHUNK_PAIRS {
                in_chunk = 0;
                base = 0;
            }
        }
    }
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
    let scheme = Scheme::for_outputs(n);
    // SAFETY: offsets lie inside the scratch (layout.total bytes) and are 64-byte aligned.
    let (xt, tables, acc, otile, offsets) = unsafe {
        (
            scratch.add(layout.xt),
            scratch.add(layout.tables),
            Acc {
                wide: scratch.add(layout.acc).cast::<__m256i>(),
                narrow: scratch.add(layout.acc16).cast::<__m256i>(),
            },
            scratch.add(layout.otile),
            scratch.add(layout.offsets).cast::<u16>(),
        )
    };
    if scheme == Scheme::Pairs {
        // SAFETY: the layout reserved n * g * 2 offsets for the pair scheme.
        pair_offsets(codes, g, unsafe { std::slice::from_raw_parts_mut(offsets, n * g * 2) });
    }
    let out_params = OutputParams::new(epi.output_zero_point, epi.output_min, epi.output_max);
    let mut start = 0;
    while start < pixels {
        let remaining = pixels - start;
        let tiles = if remaining > TILE && MAX_TILES > 1 { 2 } else { 1 };
        // SAFETY: rows start..start+remaining exist in input and output; the scratch regions
        // have the sizes the layout computed for k and n; codes are < 81 and the pair
        // offsets address rows of their chunk's tables.
        unsafe {
            for t in 0..tiles {
                let first = start + t * TILE;
                let valid = TILE.min(pixels.saturating_sub(first));
                let xt_t = xt.add(t * layout.xt_stride).cast::<__m256i>();
                transpose_input(input.as_ptr().add(first.min(pixels) * k), k, valid, g * 4, xt_t);
            }
            let xt0 = xt.cast::<__m256i>();
            let xt1 = xt.add(layout.xt_stride).cast::<__m256i>();
            match (scheme, tiles) {
                (Scheme::Table81, 2) => {
                    ternary_pw_table81__avx2_mac::<2>([xt0, xt1], codes.as_ptr(), g, n, tables, acc)
                }
                (Scheme::Table81, _) => {
                    ternary_pw_table81__avx2_mac::<1>([xt0], codes.as_ptr(), g, n, tables, acc)
                }
                (Scheme::Pairs, 2) => {
                    ternary_pw_pairs__avx2_mac::<2>([xt0, xt1], offsets, g, n, tables, acc)
                }
                (Scheme::Pairs, _) => {
                    ternary_pw_pairs__avx2_mac::<1>([xt0], offsets, g, n, tables, acc)
                }
            }
            for t in 0..tiles {
                let first = start + t * TILE;
                let valid = TILE.min(pixels.saturating_sub(first));
                if valid == 0 {
                    break;
                }
                requantize_tile(acc.wide.add(2 * t), 2 * tiles, epi, &out_params, n, otile);
                store_output(otile, n, valid, output.as_mut_ptr().add(first * n));
            }
        }
        start += (tiles * TILE).min(remaining);
    }
}

/// Accumulator areas: int32 totals (`2 T` vectors per channel: tile t's pixels 0..8 and
/// 8..16 at `2t`, `2t + 1`) and int16 running sums (`T` vectors per channel).
#[derive(Clone, Copy)]
struct Acc {
    wide: *mut __m256i,
    narrow: *mut __m256i,
}

/// Where a chunk of groups stands in its int16 window: int16 sums run over up to 63 groups
/// (|sum| <= 63 * 512 < 2^15) before they are widened into the int32 totals.
#[derive(Clone, Copy)]
struct Window {
    /// First chunk of the window: sums start from zero.
    open: bool,
    /// Last chunk of the window: sums are widened into the int32 totals.
    close: bool,
    /// The window is the first of the tile: the totals are written, not added to.
    first: bool,
}

/// Steps through the chunks of a tile, `chunk` groups at a time.
struct Windows {
    per_window: usize,
    in_window: usize,
    first: bool,
}

impl Windows {
    fn new(chunk: usize) -> Windows {
        Windows { per_window: (63 / chunk).max(1), in_window: 0, first: true }
    }
    /// The window state of the next chunk; `last` marks the tile's final chunk.
    fn next(&mut self, last: bool) -> Window {
        let w = Window {
            open: self.in_window == 0,
            close: last || self.in_window + 1 == self.per_window,
            first: self.first,
        };
        self.in_window += 1;
        if w.close {
            self.in_window = 0;
            self.first = false;
        }
        w
    }
}

/// The starting int16 sums of `LANES` channels from `c` (zeros when the window opens).
///
/// # Safety
/// AVX2; unless `w.open`, `narrow` holds `T` aligned vectors for each channel `c + i`,
/// `i < min(LANES, n - c)`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_start_sums__avx2<const T: usize>(
    narrow: *const __m256i,
    w: Window,
    live: usize,
) -> [[__m256i; T]; LANES] {
    let mut s = [[_mm256_setzero_si256(); T]; LANES];
    if !w.open {
        for (i, lane) in s.iter_mut().enumerate().take(live) {
            for (t, v) in lane.iter_mut().enumerate() {
                // SAFETY: (caller) channel i's vectors exist.
                *v = unsafe { _mm256_load_si256(narrow.add(i * T + t)) };
            }
        }
    }
    s
}

/// Stores the int16 sums of one channel: kept as int16 inside a window, widened into the
/// int32 totals when it closes.
///
/// # Safety
/// AVX2; `narrow` points at `T` and `wide` at `2 T` aligned, writable vectors.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_store_sums__avx2<const T: usize>(
    sums: [__m256i; T],
    narrow: *mut __m256i,
    wide: *mut __m256i,
    w: Window,
) {
    for (t, sum) in sums.into_iter().enumerate() {
        // SAFETY: (caller) the vectors exist.
        unsafe {
            if !w.close {
                _mm256_store_si256(narrow.add(t), sum);
                continue;
            }
            let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(sum));
            let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(sum));
            let a = wide.add(2 * t);
            if w.first {
                _mm256_store_si256(a, lo);
                _mm256_store_si256(a.add(1), hi);
            } else {
                _mm256_store_si256(a, _mm256_add_epi32(_mm256_load_si256(a), lo));
                _mm256_store_si256(a.add(1), _mm256_add_epi32(_mm256_load_si256(a.add(1)), hi));
            }
        }
    }
}

/// Add-only MAC of `T` 16-pixel tiles with 81-entry tables: per chunk of groups, build the
/// tables, then each output channel adds the row its code selects in each group's table
/// (one code load serves all `T` tiles). Channel `c` receives its int32 sums in
/// `acc[2T c..2T (c + 1)]`.
///
/// # Safety
/// AVX2; each `xt[t]` holds `groups * 4` aligned vectors (transposed input, int16); `codes`
/// holds `n` rows of `groups` codes below 81; `tables` has room for `CHUNK81 * 81` rows of
/// `ROW_BYTES`; `acc` for `2 T n` aligned vectors.
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn ternary_pw_table81__avx2_mac<const T: usize>(
    xt: [*const __m256i; T],
    codes: *const u8,
    groups: usize,
    n: usize,
    tables: *mut u8,
    acc: Acc,
) {
    let mut windows = Windows::new(CHUNK81);
    let mut gs = 0;
    while gs < groups {
        let len = CHUNK81.min(groups - gs);
        let w = windows.next(gs + len == groups);
        // SAFETY: groups gs..gs+len exist in each xt and their tables fit the table area;
        // each code row has `groups` codes, of which this chunk reads `len` from `gs`.
        unsafe {
            for (tile, x) in xt.iter().enumerate() {
                let mut x = x.add(gs * 4);
                let mut t = tables.add(32 * tile);
                for _ in 0..len {
                    ternary_table81__avx2(x, t);
                    x = x.add(4);
                    t = t.add(CODES * ROW_BYTES);
                }
            }
            let mut row = codes.add(gs);
            let (mut wide, mut narrow) = (acc.wide, acc.narrow);
            let mut c = 0;
            while c < n {
                // Four channels side by side (the last rows repeat when n % 4 != 0; their
                // duplicate sums are dropped).
                let live = LANES.min(n - c);
                let rows: [*const u8; LANES] =
                    std::array::from_fn(|i| row.add(groups * i.min(live - 1)));
                let start = ternary_start_sums__avx2::<T>(narrow, w, live);
                let sums = ternary_gather81__avx2::<T>(start, tables, rows, len);
                for s in sums.into_iter().take(live) {
                    ternary_store_sums__avx2::<T>(s, narrow, wide, w);
                    wide = wide.add(2 * T);
                    narrow = narrow.add(T);
                }
                row = row.add(LANES * groups);
                c += LANES;
            }
        }
        gs += len;
    }
}

/// Four channels' sums over `len` groups of 81-entry tables for `T` tiles: group `j` adds
/// row `code` of table `j`. Independent add chains keep the adders busy.
///
/// # Safety
/// AVX2; `tables` holds `len` tables of 81 rows of `ROW_BYTES`; each `rows[i]` has `len`
/// codes below 81.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_gather81__avx2<const T: usize>(
    start: [[__m256i; T]; LANES],
    tables: *const u8,
    rows: [*const u8; LANES],
    len: usize,
) -> [[__m256i; T]; LANES] {
    let mut s = start;
    let mut tab = tables;
    for j in 0..len {
        for (acc, row) in s.iter_mut().zip(rows) {
            // SAFETY: (caller) the code selects a row of table j; tile t's vector is at
            // byte 32 t of the row.
            unsafe {
                let r = tab.add(usize::from(*row.add(j)) << ROW_SHIFT);
                for (t, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_add_epi16(*a, _mm256_load_si256(r.add(32 * t).cast()));
                }
            }
        }
        // SAFETY: stays within (or one past) the `len` tables.
        tab = unsafe { tab.add(CODES * ROW_BYTES) };
    }
    s
}

/// Add-only MAC of `T` tiles with pair tables (two lookups per group through the
/// precomputed byte offsets of `pair_offsets`); same outputs as the 81-entry kernel.
///
/// # Safety
/// AVX2; `xt` as above; `offsets` holds `n` rows of `2 * groups` offsets from
/// `pair_offsets`; `tables` has room for `CHUNK_PAIRS * 18` rows of `ROW_BYTES`; `acc` for
/// `2 T n` aligned vectors.
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn ternary_pw_pairs__avx2_mac<const T: usize>(
    xt: [*const __m256i; T],
    offsets: *const u16,
    groups: usize,
    n: usize,
    tables: *mut u8,
    acc: Acc,
) {
    let row_len = groups * 2;
    let mut windows = Windows::new(CHUNK_PAIRS);
    let mut gs = 0;
    while gs < groups {
        let len = CHUNK_PAIRS.min(groups - gs);
        let w = windows.next(gs + len == groups);
        // SAFETY: groups gs..gs+len exist in each xt and their tables fit the table area;
        // each offset row has `row_len` entries, of which this chunk reads `2 len` from
        // `2 gs`.
        unsafe {
            for (tile, x) in xt.iter().enumerate() {
                let mut x = x.add(gs * 4);
                let mut t = tables.add(32 * tile);
                for _ in 0..len {
                    ternary_pair_tables__avx2(x, t);
                    x = x.add(4);
                    t = t.add(PAIR_ROWS * ROW_BYTES);
                }
            }
            let mut row = offsets.add(gs * 2);
            let (mut wide, mut narrow) = (acc.wide, acc.narrow);
            let mut c = 0;
            while c < n {
                let live = LANES.min(n - c);
                let rows: [*const u16; LANES] =
                    std::array::from_fn(|i| row.add(row_len * i.min(live - 1)));
                let start = ternary_start_sums__avx2::<T>(narrow, w, live);
                let sums = ternary_gather_offsets__avx2::<T>(start, tables, rows, 2 * len);
                for s in sums.into_iter().take(live) {
                    ternary_store_sums__avx2::<T>(s, narrow, wide, w);
                    wide = wide.add(2 * T);
                    narrow = narrow.add(T);
                }
                row = row.add(LANES * row_len);
                c += LANES;
            }
        }
        gs += len;
    }
}

/// Four channels' sums of the table rows at `lookups` byte offsets each, for `T` tiles.
///
/// # Safety
/// AVX2; each `rows[i]` holds `lookups` offsets of rows inside `tables`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_gather_offsets__avx2<const T: usize>(
    start: [[__m256i; T]; LANES],
    tables: *const u8,
    rows: [*const u16; LANES],
    lookups: usize,
) -> [[__m256i; T]; LANES] {
    let mut s = start;
    for j in 0..lookups {
        for (acc, row) in s.iter_mut().zip(rows) {
            // SAFETY: (caller) the offset addresses a table row.
            unsafe {
                let r = tables.add(usize::from(*row.add(j)));
                for (t, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_add_epi16(*a, _mm256_load_si256(r.add(32 * t).cast()));
                }
            }
        }
    }
    s
}

/// Builds the two 9-row pair tables of a group (rows 0..9 from channels 0, 1; rows 9..18
/// from channels 2, 3), rows `ROW_BYTES` apart.
///
/// # Safety
/// AVX2; `x` holds 4 aligned vectors; `t` is 32-byte aligned with room for 18 rows.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_pair_tables__avx2(x: *const __m256i, t: *mut u8) {
    // SAFETY: (caller) 4 readable vectors and 18 writable rows.
    unsafe {
        let low = ternary_table9__avx2(_mm256_load_si256(x), _mm256_load_si256(x.add(1)));
        let high = ternary_table9__avx2(_mm256_load_si256(x.add(2)), _mm256_load_si256(x.add(3)));
        for (i, v) in low.into_iter().enumerate() {
            _mm256_store_si256(t.add(i * ROW_BYTES).cast(), v);
        }
        for (i, v) in high.into_iter().enumerate() {
            _mm256_store_si256(t.add((9 + i) * ROW_BYTES).cast(), v);
        }
    }
}

/// Builds the 81 signed sums of the four int16 vectors at `x` into `t`:
/// `t[d0 + 3 d1 + 9 d2 + 27 d3] = sum_j (d_j - 1) * x_j`.
///
/// # Safety
/// AVX2; `x` holds 4 aligned vectors; `t` is 32-byte aligned with room for 81 rows of
/// `ROW_BYTES`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ternary_table81__avx2(x: *const __m256i, t: *mut u8) {
    // SAFETY: (caller) 4 readable vectors and 81 writable rows.
    unsafe {
        let low = ternary_table9__avx2(_mm256_load_si256(x), _mm256_load_si256(x.add(1)));
        let high = ternary_table9__avx2(_mm256_load_si256(x.add(2)), _mm256_load_si256(x.add(3)));
        let mut dst = t;
        for h in high {
            for l in low {
                _mm256_store_si256(dst.cast(), _mm256_add_epi16(l, h));
                dst = dst.add(ROW_BYTES);
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
/// `otile + 16 c` (two channels per 32-byte store).
///
/// # Safety
/// AVX2; `acc` holds `n` channels of two aligned vectors, `stride` vectors apart; `otile`
/// is writable for `16 * round_up(n, 2)` bytes; the epilogue has `n` entries with shifts in
/// the contract's range.
#[target_feature(enable = "avx2")]
unsafe fn requantize_tile(
    acc: *const __m256i,
    stride: usize,
    epi: &Epilogue<'_>,
    out: &OutputParams,
    n: usize,
    otile: *mut u8,
) {
    let param = |c: usize| ChannelParams::new(epi.bias[c], epi.multiplier[c], epi.shift[c]);
    let mut c = 0;
    while c < n {
        let p0 = param(c);
        // An odd last channel is paired with itself; its second copy lands in the spare
        // 16 bytes the layout reserves.
        let p1 = if c + 1 < n { param(c + 1) } else { p0 };
        let c1 = if c + 1 < n { c + 1 } else { c };
        // SAFETY: (caller) c, c1 < n keep the reads and the 32-byte write in bounds.
        unsafe {
            let (a0, a1) = (acc.add(stride * c), acc.add(stride * c1));
            let bytes = out.narrow32(
                p0.apply(_mm256_load_si256(a0)),
                p0.apply(_mm256_load_si256(a0.add(1))),
                p1.apply(_mm256_load_si256(a1)),
                p1.apply(_mm256_load_si256(a1.add(1))),
            );
            _mm256_storeu_si256(otile.add(16 * c).cast(), bytes);
        }
        c += 2;
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
