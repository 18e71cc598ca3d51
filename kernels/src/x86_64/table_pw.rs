//! AVX2 ternary pointwise convolution by partial-sum tables (add-only).
//!
//! Pixels are processed in tiles of 16, as the int16 lanes of one ymm register (the input
//! tile is first transposed to channel-major). For each group of four input channels the
//! kernel builds, once per tile, the table of signed sums `T[code] = sum_j w_j * x_j` of the
//! packed codes (see [`crate::ternary`]); because `T[80 - c] = -T[c]` and `T[40] = 0`, only
//! the 40 rows of codes 41..=80 are stored ("lut40"). Each output channel then adds or
//! subtracts one row per group: 64 MACs per `vpaddw`/`vpsubw`, no multiply anywhere.
//!
//! The weights are prepared once, at load time ([`prepare`]), into per-chunk lists of row
//! byte offsets for every output channel: a plus list (codes above 40) and a minus list
//! (codes below 40); all-zero groups (code 40) are absent. The lookup loop therefore does no
//! arithmetic on weights: load two offsets, load two rows, add.
//!
//! Tables are built [`CHUNK`] groups at a time, so they stay in L1. Int16 sums wrap, so only
//! a sum's final value must fit: a run of up to 63 groups is at most `63 * 4 * 128 < 2^15`;
//! the sums are kept as int16 across chunks for up to [`WINDOW`] groups and then widened
//! into int32 totals, which are bounded by `128 * k` (see [`crate::MAX_POINTWISE_K`]).

use super::requant::{ChannelParams, OutputParams};
use super::Avx2;
use crate::params::{Epilogue, PointwiseShape};
use crate::ternary::{groups, CODES};
use crate::AlignedBuf;
use core::arch::x86_64::*;

/// Pixels per tile (int16 lanes of a ymm register).
const TILE: usize = 16;
/// Bytes of one table row.
const ROW: usize = TILE * 2;
/// Stored rows per group: codes 41..=80.
const ROWS: usize = 40;
/// Groups per chunk: 24 * 40 * 32 bytes = 30 KiB of tables.
const CHUNK: usize = 24;
/// Groups an int16 sum may span before it is widened (|sum| <= 48 * 512 < 2^15).
const WINDOW: usize = 2 * CHUNK;
/// Groups per chunk of full 81-row tables: 10 * 81 * 32 bytes = 25.3 KiB, leaving L1 room
/// for the tile and the sums (12 groups, 30.4 KiB, measured 2% slower over the network's
/// pointwise layers; 8 the same as 10, 6 slower; lut40 chunks of 20 the same as 24).
const CHUNK81: usize = 10;
/// Groups an int16 sum of the 81-row scheme spans before it is widened.
const WINDOW81: usize = 6 * CHUNK81;
/// Output channels summed side by side in the 81-row scheme (independent add chains; their
/// four u16 row offsets of a group are one u64 in the prepared lists).
pub(super) const LANES: usize = 4;
const _: () = assert!(WINDOW81 * 4 * 128 < 1 << 15 && CHUNK81 * CODES * ROW < 1 << 16);
/// Byte offset of the all-zero row that pads odd lists.
const ZERO_ROW: usize = CHUNK * ROWS * ROW;
const _: () = assert!(WINDOW * 4 * 128 < 1 << 15 && WINDOW.is_multiple_of(CHUNK));

/// Table geometry of one tier: bytes per table row (one vector of int16 pixel sums) and the
/// groups per chunk of each scheme. The prepared lists hold row byte offsets, so they depend
/// on it.
#[derive(Clone, Copy)]
pub(super) struct Geometry {
    /// Bytes of one table row.
    pub row: usize,
    /// Groups per lut40 chunk.
    pub chunk40: usize,
    /// Groups per lut81 chunk.
    pub chunk81: usize,
    /// Output count below which a layer skips the tables ([`Scheme::Direct`]).
    pub direct_max_n: usize,
}

impl Geometry {
    /// Byte offset of the all-zero row that pads odd lut40 lists (after a chunk's tables).
    pub const fn zero_row(self) -> usize {
        self.chunk40 * ROWS * self.row
    }

    /// Whether every row offset of a chunk (and the zero row) fits the u16 lists.
    pub const fn offsets_fit_u16(self) -> bool {
        self.zero_row() + self.row <= 1 << 16 && self.chunk81 * CODES * self.row <= 1 << 16
    }
}

/// This tier's geometry: 16-pixel rows of 32 bytes.
/// 16-pixel tiles halve the table build per addition less than the direct kernel's
/// additions, so the direct kernel pays off only below 32 outputs here (measured:
/// 112x112x32->16 0.145 -> 0.134 ms, 56x56x144->24 0.159 -> 0.148 ms, but 28x28x192->32
/// 0.055 -> 0.057 ms).
const GEOMETRY: Geometry =
    Geometry { row: ROW, chunk40: CHUNK, chunk81: CHUNK81, direct_max_n: 32 };
const _: () = assert!(GEOMETRY.offsets_fit_u16() && GEOMETRY.zero_row() == ZERO_ROW);

/// `(list, stored row)` of a code: list 0 adds, list 1 subtracts, 2 = all-zero group; the
/// stored row of code `c > 40` is `c - 41`, and `-T[c] = T[80 - c]`.
const fn entry(code: usize) -> (u8, usize) {
    if code > 40 {
        (0, code - 41)
    } else if code < 40 {
        (1, 80 - code - 41)
    } else {
        (2, 0)
    }
}

/// Table scheme of a layer. `Lut40` stores half the rows but gives every channel two
/// variable-length lists (a loop exit per list and chunk); `Lut81` stores all 81 rows, and
/// every channel reads exactly one row per group, so four channels run in lockstep. The full
/// table pays off only when very many outputs share it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    Lut40,
    Lut81,
    /// No tables: every output channel adds its +1 input vectors and subtracts its -1
    /// ones straight from the transposed tile (one list of each per channel over all of
    /// `k`). One addition per nonzero weight, 32 MACs each on AVX-512, against lut40's
    /// 40 stored rows per group of four inputs: with few outputs the table build costs more
    /// than it saves.
    Direct,
}

impl Scheme {
    /// Lut81 when at least as many outputs as inputs share the tables (MobileNetV2's expand
    /// layers) or when there are at least [`LUT81_MIN_N`] outputs; lut40 for the few-output
    /// project layers, where building 81 rows per group would cost more than the lookups.
    /// Lut40's per-channel lists have data-dependent lengths, so every list costs a branch
    /// misprediction or two; with many outputs that costs more than the 41 extra stored
    /// rows. Measured on the x86 machine (AVX-512 tier, `promctl benchmark`): 49x960x320
    /// 0.21 ms with lut40, 0.105 ms with lut81; 196x576x96 0.11 vs 0.09 ms; 784x192x32
    /// 0.061 vs 0.075 ms (lut40 better).
    pub(super) fn for_layer(k: usize, n: usize, geo: Geometry) -> Scheme {
        if n < geo.direct_max_n && k <= DIRECT_MAX_K {
            Scheme::Direct
        } else if n >= k || n >= LUT81_MIN_N {
            Scheme::Lut81
        } else {
            Scheme::Lut40
        }
    }
}

/// Output count from which a layer uses full 81-row tables whatever its input count.
const LUT81_MIN_N: usize = 96;
/// Largest input count of the direct kernel: its int16 sums, at most `128 k` in magnitude,
/// never wrap.
pub(super) const DIRECT_MAX_K: usize = 255;
const _: () = assert!(DIRECT_MAX_K * 128 < 1 << 15);

/// Number of prepared entries (u16) for `k` inputs and `n` outputs (an upper bound for
/// lut40: per chunk and output a 2-entry header and one pad per list, one entry per group).
pub(super) fn prepared_len(k: usize, n: usize, geo: Geometry) -> usize {
    let g = groups(k);
    match Scheme::for_layer(k, n, geo) {
        Scheme::Lut40 => n * (g + 4 * g.div_ceil(geo.chunk40)),
        Scheme::Lut81 => n.div_ceil(LANES) * LANES * g,
        Scheme::Direct => n * (k + 4),
    }
}

/// Prepares packed ternary codes (`n` rows of `groups(k)`, all below 81) for this tier.
pub(super) fn prepare(codes: &[u8], k: usize, n: usize) -> AlignedBuf {
    prepare_for(codes, k, n, GEOMETRY)
}

/// Prepares packed ternary codes for the scheme `k` and `n` select, with row offsets of the
/// given geometry.
pub(super) fn prepare_for(codes: &[u8], k: usize, n: usize, geo: Geometry) -> AlignedBuf {
    assert!(geo.offsets_fit_u16(), "table geometry: row offsets exceed u16");
    let len = prepared_len(k, n, geo);
    let mut buf = AlignedBuf::zeroed(len * 2);
    let out = buf.as_u16_mut(len);
    match Scheme::for_layer(k, n, geo) {
        Scheme::Lut40 => prepare_lut40(codes, k, n, geo, out),
        Scheme::Lut81 => prepare_lut81(codes, k, n, geo, out),
        Scheme::Direct => prepare_direct(codes, k, n, geo, out),
    }
    buf
}

/// Lut81: for each chunk of groups, for each quad of output channels, for each group, the
/// four channels' chunk-relative row byte offsets side by side (one u64), so the lookup loop
/// reads four offsets with one load. Spare lanes of a last partial quad name row 0 (their
/// sums are never stored).
fn prepare_lut81(codes: &[u8], k: usize, n: usize, geo: Geometry, out: &mut [u16]) {
    let g = groups(k);
    let rows: Vec<&[u8]> = codes.chunks_exact(g).take(n).collect();
    let mut pos = 0;
    let mut gs = 0;
    while gs < g {
        let len = geo.chunk81.min(g - gs);
        for quad in rows.chunks(LANES) {
            for j in 0..len {
                for (lane, row) in quad.iter().enumerate() {
                    let code = usize::from(row[gs + j]);
                    out[pos + lane] = ((j * CODES + code) * geo.row) as u16;
                }
                pos += LANES;
            }
        }
        gs += len;
    }
}

/// Lut40: for each chunk of groups, for each output channel,
/// `[plus count, minus count, plus offsets.., minus offsets..]` with both counts even (odd
/// lists are padded with the zero row).
fn prepare_lut40(codes: &[u8], k: usize, n: usize, geo: Geometry, out: &mut [u16]) {
    let g = groups(k);
    let mut lists = [Vec::with_capacity(geo.chunk40 + 1), Vec::with_capacity(geo.chunk40 + 1)];
    let mut pos = 0;
    let mut gs = 0;
    while gs < g {
        let len = geo.chunk40.min(g - gs);
        for row in codes.chunks_exact(g).take(n) {
            lists.iter_mut().for_each(Vec::clear);
            for (j, &code) in row[gs..gs + len].iter().enumerate() {
                let (list, stored) = entry(usize::from(code));
                if list < 2 {
                    lists[usize::from(list)].push(((j * ROWS + stored) * geo.row) as u16);
                }
            }
            for (l, list) in lists.iter_mut().enumerate() {
                if list.len() % 2 == 1 {
                    list.push(geo.zero_row() as u16);
                }
                out[pos + l] = list.len() as u16;
            }
            pos += 2;
            for list in &lists {
                out[pos..pos + list.len()].copy_from_slice(list);
                pos += list.len();
            }
        }
        gs += len;
    }
}

/// Direct: per output channel `[plus count, minus count, plus offsets.., minus offsets..]`,
/// the byte offsets of input channel vectors in the transposed tile (row `j` at
/// `j * geo.row`), both counts even: an odd list is padded with the zero vector the tile
/// keeps after its `round_up(k, 16)` channel vectors (see [`direct_zero_offset`]).
fn prepare_direct(codes: &[u8], k: usize, n: usize, geo: Geometry, out: &mut [u16]) {
    let g = groups(k);
    let zero = direct_zero_offset(k, geo) as u16;
    let mut pos = 0;
    for row in codes.chunks_exact(g).take(n) {
        let mut lists = [Vec::with_capacity(k + 1), Vec::with_capacity(k + 1)];
        for j in 0..k {
            match crate::ternary::TRITS[usize::from(row[j / 4])][j % 4] {
                1 => lists[0].push((j * geo.row) as u16),
                -1 => lists[1].push((j * geo.row) as u16),
                _ => {}
            }
        }
        for (l, list) in lists.iter_mut().enumerate() {
            if list.len() % 2 == 1 {
                list.push(zero);
            }
            out[pos + l] = list.len() as u16;
        }
        pos += 2;
        for list in &lists {
            out[pos..pos + list.len()].copy_from_slice(list);
            pos += list.len();
        }
    }
}

/// Byte offset, from the transposed tile, of the zero vector that pads the direct kernel's
/// odd lists: the first vector after the tile's whole 16-channel blocks.
pub(super) fn direct_zero_offset(k: usize, geo: Geometry) -> usize {
    k.div_ceil(16) * 16 * geo.row
}

/// Writes the direct kernel's zero vector (one row of zeros at the start of the table area,
/// which the direct kernel does not otherwise use) when `scheme` is direct, after checking
/// that the table area starts at [`direct_zero_offset`] from the tile (`tables_offset`).
///
/// # Safety
/// `tables` is writable for `geo.row` bytes.
pub(super) unsafe fn zero_direct_pad(
    scheme: Scheme,
    tables_offset: usize,
    k: usize,
    geo: Geometry,
    tables: *mut u8,
) {
    assert_eq!(tables_offset, direct_zero_offset(k, geo), "direct zero vector misplaced");
    if scheme == Scheme::Direct {
        // SAFETY: (caller) geo.row writable bytes.
        unsafe { std::ptr::write_bytes(tables, 0, geo.row) };
    }
}

pub(super) fn round64(bytes: usize) -> usize {
    bytes.div_ceil(64) * 64
}

/// Scratch layout: transposed input tile, table chunk (with its zero row), int32 totals,
/// int16 running sums, output tile, per-channel rounding terms and shifts, short-form
/// parameters.
struct Layout {
    xt: usize,
    tables: usize,
    wide: usize,
    narrow: usize,
    otile: usize,
    rounds: usize,
    posts: usize,
    short: usize,
    total: usize,
}

impl Layout {
    fn new(k: usize, n: usize) -> Layout {
        let xt = 0;
        // Whole 16-channel blocks, so that the direct kernel's zero vector (the first vector
        // of the table area) is at `direct_zero_offset`.
        let tables = xt + round64(k.div_ceil(16) * 16 * ROW);
        let wide = tables + round64((ZERO_ROW + ROW).max(CHUNK81 * CODES * ROW));
        let narrow = wide + round64(n * 64);
        let otile = narrow + round64(n * 32);
        let rounds = otile + round64(n.div_ceil(2) * 2 * 16);
        let posts = rounds + round64(n * 8);
        let short = posts + round64(n * 4);
        let total = short + round64(n * std::mem::size_of::<ShortParams>());
        Layout { xt, tables, wide, narrow, otile, rounds, posts, short, total }
    }
}

pub(super) fn scratch_bytes(max_k: usize, max_n: usize) -> usize {
    Layout::new(max_k, max_n).total
}

/// Kept out of line so that the multiplies of tiling and requantization are never inlined
/// into a function whose name contains `ternary`.
#[inline(never)]
pub(super) fn run(
    _t: Avx2,
    shape: PointwiseShape,
    input: &[i8],
    lists: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut AlignedBuf,
) {
    let layout = Layout::new(shape.k, shape.n);
    assert!(scratch.len() >= layout.total, "scratch too small for this pointwise shape");
    assert!(
        lists.len() >= prepared_len(shape.k, shape.n, GEOMETRY) * 2,
        "prepared weights too short"
    );
    // SAFETY: the `Avx2` token proves the CPU has AVX2. `Kernels::ternary_pointwise` checked
    // input/output lengths against the shape and the epilogue lengths, and the lists were
    // produced by `prepare` for this k and n (the `PreparedTernary` invariant), so every
    // offset names a row of its chunk's tables or the zero row; the scratch is 64-byte
    // aligned and large enough (asserted above).
    unsafe {
        run_avx2(shape, input, lists.as_ptr().cast(), epi, output, scratch.as_mut_ptr(), &layout)
    }
}

/// # Safety
/// AVX2; `input`, `output` and `epi` match `shape`; `lists` was produced by [`prepare`] for
/// `shape.k` and `shape.n`; `scratch` is 64-byte aligned with `layout.total` bytes.
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(
    shape: PointwiseShape,
    input: &[i8],
    lists: *const u16,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: *mut u8,
    layout: &Layout,
) {
    let PointwiseShape { pixels, k, n } = shape;
    let g = groups(k);
    // SAFETY: the regions lie inside the scratch (layout.total bytes), 64-byte aligned.
    let (xt, tables, acc, otile) = unsafe {
        let acc = Acc {
            wide: scratch.add(layout.wide).cast::<__m256i>(),
            narrow: scratch.add(layout.narrow).cast::<__m256i>(),
        };
        let tables = scratch.add(layout.tables);
        _mm256_store_si256(tables.add(ZERO_ROW).cast(), _mm256_setzero_si256());
        (scratch.add(layout.xt).cast::<__m256i>(), tables, acc, scratch.add(layout.otile))
    };
    let scheme = Scheme::for_layer(k, n, GEOMETRY);
    // SAFETY: the table area holds far more than one row, at direct_zero_offset (asserted).
    unsafe { zero_direct_pad(scheme, layout.tables - layout.xt, k, GEOMETRY, tables) };
    let out_params = OutputParams::new(epi.output_zero_point, epi.output_min, epi.output_max);
    // The per-channel rounding terms and post shifts, once per call rather than per tile.
    // SAFETY: the layout reserved n i64 and n i32 for them, suitably aligned.
    let (rounds, posts) = unsafe {
        (
            std::slice::from_raw_parts_mut(scratch.add(layout.rounds).cast::<i64>(), n),
            std::slice::from_raw_parts_mut(scratch.add(layout.posts).cast::<i32>(), n),
        )
    };
    // The direct kernel's int16 sums never wrap (k <= DIRECT_MAX_K).
    let single = match scheme {
        Scheme::Direct => true,
        Scheme::Lut40 => Chunks::single(g, WINDOW),
        Scheme::Lut81 => Chunks::single(g, WINDOW81),
    };
    // Final int16 sums and short-form parameters: the 16-bit epilogue. |acc| <= 128 k.
    let short = single && epi.short_form(128 * k as i64);
    // SAFETY: the layout reserved n short parameter records, 64-byte aligned.
    let short_params = unsafe { ShortParams::slice(scratch.add(layout.short), n) };
    if short {
        ShortParams::fill(epi, short_params);
    } else {
        for ((r, p), &s) in rounds.iter_mut().zip(posts.iter_mut()).zip(epi.shift) {
            *r = 1i64 << (s - 1);
            *p = i32::from(s) - 32;
        }
    }
    let requant = Requant { epi, rounds, posts, out: &out_params };
    let mut start = 0;
    while start < pixels {
        let valid = TILE.min(pixels - start);
        // SAFETY: rows start..start+valid exist in input and output; the scratch regions
        // have the sizes the layout computed for k and n; the lists match (caller).
        unsafe {
            transpose_input(input.as_ptr().add(start * k), k, valid, g * 4, xt);
            match scheme {
                Scheme::Lut40 => {
                    ternary_pw_16x4c_lut40__avx2_mac(xt, lists, g, n, tables, acc, CHUNK, WINDOW)
                }
                Scheme::Lut81 => ternary_pw_16x4c_lut81__avx2_mac(
                    xt, lists, g, n, tables, acc, CHUNK81, WINDOW81,
                ),
                Scheme::Direct => ternary_pw_16x1c_direct__avx2_mac(xt, lists, n, acc.narrow),
            }
            let output = output.as_mut_ptr().add(start * n);
            if short {
                requantize_tile_short(acc.narrow, short_params, &out_params, otile);
                store_output::<true>(otile, n, valid, output);
            } else {
                let sums = if single { Sums::Narrow(acc.narrow) } else { Sums::Wide(acc.wide) };
                requantize_tile(sums, &requant, n, otile);
                store_output::<false>(otile, n, valid, output);
            }
        }
        start += valid;
    }
}

/// One chunk of groups and where it stands in its int16 window.
pub(super) struct Chunk {
    /// First group.
    pub gs: usize,
    /// Groups in the chunk.
    pub len: usize,
    /// First chunk of a window: the sums start from zero.
    pub open: bool,
    /// Last chunk of a window: the sums are widened into the int32 totals.
    pub close: bool,
    /// The window is the tile's first: the totals are written, not added to.
    pub first: bool,
}

/// The chunks of a tile's `groups`, `chunk` groups at a time, in int16 windows of `window`
/// groups. A layer that fits one window never closes it: it keeps its int16 sums and the
/// epilogue widens them.
pub(super) struct Chunks {
    groups: usize,
    chunk: usize,
    window: usize,
    gs: usize,
    in_window: usize,
}

impl Chunks {
    pub(super) fn new(groups: usize, chunk: usize, window: usize) -> Chunks {
        Chunks { groups, chunk, window, gs: 0, in_window: 0 }
    }

    /// Whether a layer of `groups` groups keeps its sums as int16.
    pub(super) fn single(groups: usize, window: usize) -> bool {
        groups <= window
    }
}

impl Iterator for Chunks {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if self.gs >= self.groups {
            return None;
        }
        let len = self.chunk.min(self.groups - self.gs);
        let open = self.in_window == 0;
        self.in_window += len;
        let end = self.in_window == self.window || self.gs + len == self.groups;
        let close = end && !Chunks::single(self.groups, self.window);
        let chunk = Chunk { gs: self.gs, len, open, close, first: self.gs < self.window };
        if end {
            self.in_window = 0;
        }
        self.gs += len;
        Some(chunk)
    }
}

/// Defines, for one tier, the add-only MAC functions of the lut40 and lut81 table schemes
/// (one template, so the AVX2 and AVX-512 tiers run the same algorithm): the two MAC drivers,
/// the table builders, the list walker and the tile's sums, from the tier's int16 vector
/// type and intrinsics. Every generated function is named by the caller and must contain `ternary`
/// (the add-only check disassembles them). The invoking module provides `ROW`, `ROWS`,
/// `LANES`, `CODES`, `Chunk` and `Chunks`.
macro_rules! table_mac_kernels {
    (
        features: $feat:literal,
        vector: $v:ty,
        ops: {
            zero: $zero:ident, add: $add:ident, sub: $sub:ident, load: $load:ident,
            store: $store:ident, add32: $add32:ident, widen_lo: $widen_lo:ident,
            widen_hi: $widen_hi:ident $(,)?
        },
        names: {
            lut40: $lut40:ident, lut81: $lut81:ident, store_sum: $store_sum:ident,
            build_tables: $build_tables:ident, table81: $table81:ident,
            table40: $table40:ident, table9: $table9:ident, lists: $lists:ident,
            direct: $direct:ident $(,)?
        } $(,)?
    ) => {
        /// Where a tile's per-channel sums are: int16 (one vector per channel) when the
        /// layer fits one window, else int32 totals (two vectors per channel).
        #[derive(Clone, Copy)]
        enum Sums {
            Narrow(*const $v),
            Wide(*const $v),
        }

        impl Sums {
            /// Channel `c`'s sums of the first and second half of the tile's pixels as
            /// int32.
            ///
            /// # Safety
            /// The target features; channel `c` exists in the area.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn load(self, c: usize) -> ($v, $v) {
                // SAFETY: (caller) the vectors of channel c exist and are aligned.
                unsafe {
                    match self {
                        Sums::Narrow(p) => {
                            let v = $load(p.add(c));
                            ($widen_lo(v), $widen_hi(v))
                        }
                        Sums::Wide(p) => ($load(p.add(2 * c)), $load(p.add(2 * c + 1))),
                    }
                }
            }
        }

        /// Accumulator areas: int32 totals (2 vectors per channel: the first and second half of
        /// the tile's pixels) and int16 running sums (1 vector per channel).
        #[derive(Clone, Copy)]
        struct Acc {
            wide: *mut $v,
            narrow: *mut $v,
        }

        /// Add-only MAC of one pixel tile: for each chunk of groups, build the chunk's lut40
        /// tables, then for every output channel add its plus rows and subtract its minus rows.
        ///
        /// # Safety
        /// The target features; `xt` holds `groups * 4` aligned vectors (transposed input, int16);
        /// `lists` was produced by `prepare_for` for these `groups` and `n`; `tables` has room for
        /// a chunk of tables and holds the zero row; `acc` has room for `n` channels; `chunk` and
        /// `window` are the lut40 ones.
        #[allow(clippy::too_many_arguments)]
        #[inline(never)]
        #[target_feature(enable = $feat)]
        unsafe fn $lut40(
            xt: *const $v,
            lists: *const u16,
            groups: usize,
            n: usize,
            tables: *mut u8,
            acc: Acc,
            chunk: usize,
            window: usize,
        ) {
            let mut list = lists;
            for Chunk { gs, len, open, close, first } in Chunks::new(groups, chunk, window) {
                // SAFETY: groups gs..gs+len exist in xt and their tables fit the table area; the
                // lists of this chunk hold, per channel, a header and offsets of rows of these
                // tables (or the zero row); accumulators stay inside the n channels.
                unsafe {
                    $build_tables(xt.add(gs * 4), len, tables, ROWS, $table40);
                    let (mut wide, mut narrow) = (acc.wide, acc.narrow);
                    for _ in 0..n {
                        let start = if open { $zero() } else { $load(narrow) };
                        let (plus, minus) = (usize::from(*list) / 2, usize::from(*list.add(1)) / 2);
                        let (sum, next) = $lists(start, tables, list.add(2), plus, minus);
                        list = next;
                        $store_sum(sum, narrow, wide, close, first);
                        wide = wide.add(2);
                        narrow = narrow.add(1);
                    }
                }
            }
        }

        /// Add-only MAC of one pixel tile with full 81-row tables: for each chunk of groups, build
        /// the tables, then four channels at a time add one row per group.
        ///
        /// # Safety
        /// The target features; `xt` holds `groups * 4` aligned vectors; `lists` was produced by
        /// `prepare_for` for these `groups` and `n` (lut81); `tables` has room for a chunk of
        /// 81-row tables; `acc` for `n` channels; `chunk` and `window` are the lut81 ones.
        #[allow(clippy::too_many_arguments)]
        #[inline(never)]
        #[target_feature(enable = $feat)]
        unsafe fn $lut81(
            xt: *const $v,
            lists: *const u16,
            groups: usize,
            n: usize,
            tables: *mut u8,
            acc: Acc,
            chunk: usize,
            window: usize,
        ) {
            let mut list = lists;
            for Chunk { gs, len, open, close, first } in Chunks::new(groups, chunk, window) {
                // SAFETY: groups gs..gs+len exist in xt and their tables fit the table area; this
                // chunk's lists hold `len` offsets per channel, each naming a row of its group's
                // table; accumulators stay inside the n channels.
                unsafe {
                    $build_tables(xt.add(gs * 4), len, tables, CODES, $table81);
                    let (mut wide, mut narrow) = (acc.wide, acc.narrow);
                    let mut quads = list.cast::<u64>();
                    let mut c = 0;
                    while c < n {
                        let live = LANES.min(n - c);
                        let mut sums = [$zero(); LANES];
                        if !open {
                            for (i, s) in sums.iter_mut().enumerate().take(live) {
                                *s = $load(narrow.add(i));
                            }
                        }
                        for j in 0..len {
                            let offsets = quads.add(j).read_unaligned();
                            for (i, s) in sums.iter_mut().enumerate() {
                                let row = tables.add((offsets >> (16 * i)) as usize & 0xffff);
                                *s = $add(*s, $load(row.cast()));
                            }
                        }
                        quads = quads.add(len);
                        for sum in sums.into_iter().take(live) {
                            $store_sum(sum, narrow, wide, close, first);
                            wide = wide.add(2);
                            narrow = narrow.add(1);
                        }
                        c += LANES;
                    }
                    list = quads.cast();
                }
            }
        }

        /// Stores one channel's int16 sum: kept as int16 inside a window, widened into the int32
        /// totals (written on the first window, added afterwards) when it closes.
        ///
        /// # Safety
        /// The target features; `narrow` points at one and `wide` at two aligned, writable vectors.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn $store_sum(sum: $v, narrow: *mut $v, wide: *mut $v, close: bool, first: bool) {
            // SAFETY: (caller) the vectors exist.
            unsafe {
                if !close {
                    $store(narrow, sum);
                    return;
                }
                let lo = $widen_lo(sum);
                let hi = $widen_hi(sum);
                if first {
                    $store(wide, lo);
                    $store(wide.add(1), hi);
                } else {
                    $store(wide, $add32($load(wide), lo));
                    let w1 = wide.add(1);
                    $store(w1, $add32($load(w1), hi));
                }
            }
        }

        /// Builds the tables of `len` consecutive groups (four input vectors each), `rows` rows
        /// apart, with `build` (lut40 or lut81).
        ///
        /// # Safety
        /// The target features; `x` holds `4 len` aligned vectors; `tables` has room for `len *
        /// rows` rows; `build` writes `rows` rows from four vectors.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn $build_tables(
            x: *const $v,
            len: usize,
            tables: *mut u8,
            rows: usize,
            build: unsafe fn(*const $v, *mut u8),
        ) {
            let (mut x, mut t) = (x, tables);
            for _ in 0..len {
                // SAFETY: (caller) group j's inputs and table lie inside the given areas.
                unsafe {
                    build(x, t);
                    x = x.add(4);
                    t = t.add(rows * ROW);
                }
            }
        }

        /// Builds all 81 rows of one group's table: row `c` holds `T[c]`, `c = l + 9 h`.
        ///
        /// # Safety
        /// The target features; `x` holds 4 aligned vectors; `t` is row-aligned with room for 81
        /// rows.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn $table81(x: *const $v, t: *mut u8) {
            // SAFETY: (caller) 4 readable vectors and 81 writable rows.
            unsafe {
                let low = $table9($load(x), $load(x.add(1)));
                let high = $table9($load(x.add(2)), $load(x.add(3)));
                let mut dst = t;
                for h in &high {
                    for l in &low {
                        $store(dst.cast(), $add(*l, *h));
                        dst = dst.add(ROW);
                    }
                }
            }
        }

        /// Builds the 40 stored rows of one group's table (codes 41..=80, see [`super::table_pw`]):
        /// codes 41..=44 are `low[5..9]`, then `high[h] + low[l]` for `h` in 5..9 and every `l`.
        ///
        /// # Safety
        /// The target features; `x` holds 4 aligned vectors; `t` is row-aligned with room for 40
        /// rows.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn $table40(x: *const $v, t: *mut u8) {
            // SAFETY: (caller) 4 readable vectors and 40 writable rows.
            unsafe {
                let low = $table9($load(x), $load(x.add(1)));
                let high = $table9($load(x.add(2)), $load(x.add(3)));
                let mut dst = t;
                for l in &low[5..] {
                    $store(dst.cast(), *l);
                    dst = dst.add(ROW);
                }
                for h in &high[5..] {
                    for l in &low {
                        $store(dst.cast(), $add(*l, *h));
                        dst = dst.add(ROW);
                    }
                }
            }
        }

        /// The 9 signed sums of two vectors: `[d0 + 3 d1] = (d0 - 1) * a + (d1 - 1) * b`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn $table9(a: $v, b: $v) -> [$v; 9] {
            let z = $zero();
            let sum = $add(a, b);
            let diff = $sub(a, b);
            [$sub(z, sum), $sub(z, b), diff, $sub(z, a), z, a, $sub(z, diff), b, sum]
        }

        /// `start` plus the `2 plus` rows of the first offsets minus the `2 minus` rows of the next
        /// ones (byte offsets from `base`), two offsets per load in two add chains. Returns the sum
        /// and the position after the offsets.
        ///
        /// # Safety
        /// The target features; `list` holds `2 (plus + minus)` offsets from `prepare_for` that
        /// name aligned vectors from `base`.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn $lists(
            start: $v,
            base: *const u8,
            list: *const u16,
            plus: usize,
            minus: usize,
        ) -> ($v, *const u16) {
            // SAFETY: (caller) the offsets and every vector they name are in bounds.
            unsafe {
                let row = |off: u32| $load(base.add(off as usize).cast::<$v>());
                let mut p = list.cast::<u32>();
                let (mut s0, mut s1) = (start, $zero());
                for _ in 0..plus {
                    let pair = p.read_unaligned();
                    s0 = $add(s0, row(pair & 0xffff));
                    s1 = $add(s1, row(pair >> 16));
                    p = p.add(1);
                }
                for _ in 0..minus {
                    let pair = p.read_unaligned();
                    s0 = $sub(s0, row(pair & 0xffff));
                    s1 = $sub(s1, row(pair >> 16));
                    p = p.add(1);
                }
                ($add(s0, s1), p.cast())
            }
        }

        /// Add-only MAC of one tile without tables: every output channel adds the input
        /// vectors of its +1 weights and subtracts those of its -1 weights; channel `c`'s
        /// int16 sums end in `narrow[c]`.
        ///
        /// # Safety
        /// The target features; `xt` holds the transposed tile followed by a zero vector at
        /// `direct_zero_offset`; `lists` was produced by `prepare_for` for this `k` and `n`
        /// (direct); `narrow` has room for `n` vectors.
        #[inline(never)]
        #[target_feature(enable = $feat)]
        unsafe fn $direct(xt: *const $v, lists: *const u16, n: usize, narrow: *mut $v) {
            let mut list = lists;
            for c in 0..n {
                // SAFETY: (caller) each record's offsets name vectors of the tile or its zero
                // vector; channel c < n has its narrow vector.
                unsafe {
                    let (plus, minus) = (usize::from(*list) / 2, usize::from(*list.add(1)) / 2);
                    let (sum, next) = $lists($zero(), xt.cast(), list.add(2), plus, minus);
                    list = next;
                    $store(narrow.add(c), sum);
                }
            }
        }
    };
}
pub(super) use table_mac_kernels;

table_mac_kernels! {
    features: "avx2",
    vector: __m256i,
    ops: {
        zero: _mm256_setzero_si256, add: _mm256_add_epi16, sub: _mm256_sub_epi16,
        load: _mm256_load_si256, store: _mm256_store_si256, add32: _mm256_add_epi32,
        widen_lo: widen_lo, widen_hi: widen_hi,
    },
    names: {
        lut40: ternary_pw_16x4c_lut40__avx2_mac, lut81: ternary_pw_16x4c_lut81__avx2_mac,
        store_sum: ternary_store_sum__avx2, build_tables: ternary_build_tables__avx2,
        table81: ternary_table81__avx2, table40: ternary_table40__avx2,
        table9: ternary_table9__avx2, lists: ternary_lists__avx2,
        direct: ternary_pw_16x1c_direct__avx2_mac,
    },
}

/// Int16 lanes 0..8 of `v` as int32.
#[inline]
#[target_feature(enable = "avx2")]
fn widen_lo(v: __m256i) -> __m256i {
    _mm256_cvtepi16_epi32(_mm256_castsi256_si128(v))
}

/// Int16 lanes 8..16 of `v` as int32.
#[inline]
#[target_feature(enable = "avx2")]
fn widen_hi(v: __m256i) -> __m256i {
    _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(v))
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

/// Requantization parameters of a call: the epilogue plus the per-channel rounding terms
/// and post shifts computed once per call.
#[derive(Clone, Copy)]
struct Requant<'a> {
    epi: &'a Epilogue<'a>,
    rounds: &'a [i64],
    posts: &'a [i32],
    out: &'a OutputParams,
}

/// Requantizes the tile's sums: channel `c`'s 16 pixels become 16 bytes at `otile + 16 c`
/// (two channels per 32-byte store).
///
/// # Safety
/// AVX2; `sums` holds `n` channels; `otile` is writable for `16 * round_up(n, 2)` bytes;
/// the epilogue has `n` entries with shifts in the contract's range.
#[target_feature(enable = "avx2")]
unsafe fn requantize_tile(sums: Sums, requant: &Requant<'_>, n: usize, otile: *mut u8) {
    let Requant { epi, rounds, posts, out } = *requant;
    let param =
        |c: usize| ChannelParams::precomputed(epi.bias[c], epi.multiplier[c], rounds[c], posts[c]);
    let mut c = 0;
    while c < n {
        let p0 = param(c);
        // An odd last channel is paired with itself; its second copy lands in the spare
        // 16 bytes the layout reserves.
        let p1 = if c + 1 < n { param(c + 1) } else { p0 };
        let c1 = if c + 1 < n { c + 1 } else { c };
        // SAFETY: (caller) c, c1 < n keep the reads and the 32-byte write in bounds.
        unsafe {
            let ((a, b), (d, e)) = (sums.load(c), sums.load(c1));
            let bytes = out.narrow32(p0.apply(a), p0.apply(b), p1.apply(d), p1.apply(e));
            _mm256_storeu_si256(otile.add(16 * c).cast(), bytes);
        }
        c += 2;
    }
}

/// The short-form epilogue ([`Epilogue::short_form`]) of a tile whose final sums are int16,
/// two channels at a time: per channel, `vpmaddwd` against `(m >> 16, 0)` and
/// `(0, m >> 16)` gives the int32 products of the even and odd pixels, each plus the addend
/// and shifted by `s - 16`, then the zero point is added with int16 saturation (exact after
/// the clamp). The packs leave each 128-bit lane's eight pixels in the order
/// [`short_pixel`] gives, which [`store_output`] undoes.
///
/// # Safety
/// AVX2; `narrow` holds the final int16 sums of `params.len()` channels; `otile` is writable
/// for 16 bytes per channel rounded up to two channels; `params` are the short form's, which
/// holds for this epilogue and accumulator bound.
#[target_feature(enable = "avx2")]
unsafe fn requantize_tile_short(
    narrow: *const __m256i,
    params: &[ShortParams],
    out: &OutputParams,
    otile: *mut u8,
) {
    let n = params.len();
    let zero_point = out.zero_point16();
    // Channel c's 16 pixels as saturated int16 with the zero point added.
    let words = |c: usize| {
        let p = params[c];
        let addend = _mm256_set1_epi32(p.addend);
        let shift = _mm256_set1_epi32(p.shift);
        // SAFETY: (caller) channel c < n has its sums.
        let sums = unsafe { _mm256_load_si256(narrow.add(c)) };
        let even = _mm256_madd_epi16(sums, _mm256_set1_epi32(p.even));
        let odd = _mm256_madd_epi16(sums, _mm256_set1_epi32(p.odd));
        let even = _mm256_srav_epi32(_mm256_add_epi32(even, addend), shift);
        let odd = _mm256_srav_epi32(_mm256_add_epi32(odd, addend), shift);
        _mm256_adds_epi16(_mm256_packs_epi32(even, odd), zero_point)
    };
    let mut c = 0;
    while c < n {
        // An odd last channel is paired with itself; its second copy lands in the spare
        // 16 bytes the layout reserves.
        let c1 = if c + 1 < n { c + 1 } else { c };
        // Lanes [c lo, c1 lo | c hi, c1 hi] as 8-byte halves, reordered to c then c1;
        // saturating twice, then clamping, equals clamping the exact value.
        let bytes = _mm256_packs_epi16(words(c), words(c1));
        let bytes = _mm256_permute4x64_epi64::<0b11_01_10_00>(bytes);
        let clamped = out.clamp32(bytes);
        // SAFETY: (caller) the 32 bytes at 16 c are inside the tile.
        unsafe { _mm256_storeu_si256(otile.add(16 * c).cast(), clamped) };
        c += 2;
    }
}

/// One channel's short-form epilogue parameters as both x86 tiers' requantization loops
/// load them, computed once per call: the `vpmaddwd` multipliers of the even and odd
/// pixels (`(m >> 16, 0)` and `(0, m >> 16)` as int16 pairs), the addend and the shift.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub(super) struct ShortParams {
    pub(super) even: i32,
    pub(super) odd: i32,
    pub(super) addend: i32,
    pub(super) shift: i32,
}

impl ShortParams {
    /// `n` records at `at`.
    ///
    /// # Safety
    /// `at` is 16-byte aligned and writable for `n` records, used by nothing else while the
    /// slice lives.
    pub(super) unsafe fn slice<'a>(at: *mut u8, n: usize) -> &'a mut [ShortParams] {
        // SAFETY: (caller) aligned, in bounds and unaliased; every bit pattern is valid.
        unsafe { std::slice::from_raw_parts_mut(at.cast::<ShortParams>(), n) }
    }

    /// Every channel's parameters (meaningful where [`Epilogue::short_form`] holds).
    pub(super) fn fill(epi: &Epilogue<'_>, params: &mut [ShortParams]) {
        for (c, p) in params.iter_mut().enumerate() {
            let m = epi.multiplier[c] >> 16;
            *p = ShortParams {
                even: m,
                odd: m << 16,
                addend: epi.short_addend(c),
                shift: i32::from(epi.shift[c]) - 16,
            };
        }
    }
}

/// The pixel at byte `q` of a short-form output row: each group of eight holds the even
/// pixels, then the odd ones (what `vpackssdw` of even and odd products leaves per lane).
pub(super) const fn short_pixel(q: usize) -> usize {
    (q & !7) | ((q & 3) << 1) | ((q >> 2) & 1)
}

/// Writes the channel-major output tile (`n` x 16 bytes) to `valid` pixel rows of `n`
/// channels. With `SHORT`, byte `q` of a tile row is pixel [`short_pixel`]`(q)`.
///
/// # Safety
/// AVX2; `otile` readable for `16 * n` bytes; `output` writable for `valid * n` bytes.
#[target_feature(enable = "avx2")]
unsafe fn store_output<const SHORT: bool>(
    otile: *const u8,
    n: usize,
    valid: usize,
    output: *mut i8,
) {
    let pixel = |q: usize| if SHORT { short_pixel(q) } else { q };
    let blocks = n / 16;
    // SAFETY: (caller) reads inside the tile, writes inside the valid rows.
    unsafe {
        for b in 0..blocks {
            let mut rows = [_mm_setzero_si128(); 16];
            for (j, r) in rows.iter_mut().enumerate() {
                *r = _mm_loadu_si128(otile.add((b * 16 + j) * 16).cast());
            }
            let cols = transpose16x16(rows);
            for (q, col) in cols.iter().enumerate() {
                let p = pixel(q);
                if p < valid {
                    _mm_storeu_si128(output.add(p * n + b * 16).cast(), *col);
                }
            }
        }
        for c in blocks * 16..n {
            for q in 0..TILE {
                let p = pixel(q);
                if p < valid {
                    *output.add(p * n + c) = *otile.add(c * 16 + q) as i8;
                }
            }
        }
    }
}

super::byte_transpose16! {
    /// Transposes a 16x16 byte matrix held as 16 rows.
    #[inline(always)]
    fn transpose16x16(__m128i) {
        _mm_unpacklo_epi8, _mm_unpackhi_epi8, _mm_unpacklo_epi16,
        _mm_unpackhi_epi16, _mm_unpacklo_epi32, _mm_unpackhi_epi32, _mm_unpacklo_epi64,
        _mm_unpackhi_epi64
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
