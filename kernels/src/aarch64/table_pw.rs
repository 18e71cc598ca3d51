//! NEON ternary pointwise convolution by partial-sum tables (add-only).
//!
//! Pixels are processed in tiles of 16, as the int16 lanes of two q registers. Per chunk of
//! input channels the tile is transposed to channel-major, the chunk's tables of partial
//! sums are built, and every output channel adds table rows: one row holds a partial sum for
//! each of the 16 pixels, so one row costs two `ldr q` and two `add`s. Two table schemes,
//! chosen per layer by the number of output channels (a table pays off only when enough
//! outputs read it):
//!
//! - **lut40** (many outputs): for each group of four inputs the signed sums
//!   `T[code] = sum_j (d_j - 1) * x_j` of the packed codes (see [`crate::ternary`]) above 40.
//!   Codes below 40 are their negations (`T[80 - c] = -T[c]`) and code 40 is zero, so 40
//!   stored rows cover all 81 codes: one lookup per group and output (64 MACs per lookup).
//! - **lut16** (few outputs): for each group the subset sums `S[mask] = sum_{j in mask} x_j`
//!   (the transpose writes the four single rows, 11 are built); an output adds the row of its
//!   +1 weights and subtracts the row of its -1 weights. Twice the lookups of lut40 for a
//!   quarter of the table stores. In llvm-mca's Cortex-A72 model a q-register store takes
//!   two cycles, so per group and tile the lut40 build costs about 160 cycles (lut16: 44)
//!   against about 2.4 cycles per lookup: lut40 wins only with about a hundred outputs or
//!   more. (Estimates, not yet measured on hardware.)
//!
//! At load time the weights are rewritten as lists of row byte offsets (`u16`): for each
//! chunk and output channel, a header with the pair counts of a plus list and a minus list
//! and the channel's index, then the two lists, each padded to even length with the offset
//! of a zero row. All-zero groups (and empty masks) are simply absent. The lookup loop reads
//! four row addresses with one 64-bit load and does no arithmetic on weights: load offsets,
//! load rows, add; subtract the minus sum at the end.
//!
//! Within a chunk the records are ordered by their pair counts, not by channel. List
//! lengths depend on the weights, so in channel order nearly every output's loop exits and
//! odd tails differ from the previous output's: about one branch misprediction per list
//! (11-15 cycles) against 6 cycles per four lookups. Sorted, consecutive outputs share
//! their counts and the branches change outcome only where the counts step (benches/mca).
//!
//! Overflow: int16 adds wrap, so only a chunk's final sum must fit: it is a ternary sum of at
//! most `4 * 40` inputs, at most `160 * 128 = 20480` in magnitude. Chunk sums are widened
//! into int32 accumulators, whose total is at most `128 * k` (see
//! [`crate::MAX_POINTWISE_K`]).
//!
//! Only the `ternary_*` functions touch weights and they are add-only (no multiply
//! instruction, not even for addresses: pointers advance by increments). Tiling, transposes,
//! the weight rewrite and the requantization epilogue live in the other functions of this
//! module, which is deliberately not named `ternary*`.

use super::requant::{Output, Quad};
use super::Neon;
use crate::params::{Epilogue, PointwiseShape};
use crate::ternary::{groups, CODES, TRITS};
use crate::AlignedBuf;
use core::arch::aarch64::*;

/// Pixels per tile (int16 lanes of two q registers).
const TILE: usize = 16;
/// Bytes of one row of the transposed input (16 int16).
const ROW: usize = TILE * 2;
/// Bytes of one half row of a table (pixels 0..8 or 8..16). Tables keep the two halves in
/// regions [`HALF`] bytes apart, so a lookup is two `ldr q` with immediate offsets from one
/// address (an `ldp q` costs an extra micro-op on Cortex-A72).
const HALF_ROW: usize = 16;
/// Stored rows of a lut40 table (codes 41..=80).
const LUT40_ROWS: usize = 40;
/// Groups per lut40 chunk: 2 * 16 * 40 * 16 bytes = 20 KiB of tables.
const LUT40_CHUNK: usize = 16;
/// Rows of a lut16 table (row 0, the empty subset, is never used: the zero row serves).
const LUT16_ROWS: usize = 16;
/// Groups per lut16 chunk: 2 * 40 * 16 * 16 bytes = 20 KiB of tables.
const LUT16_CHUNK: usize = 40;
/// Layers with at most this many output channels use lut16 (see the module docs).
const LUT16_MAX_N: usize = 96;
/// A channel's short-form requantization: `[B16, m >> 16, 16 - s, 0]` (see
/// [`requantize_tile`]), one aligned vector.
#[repr(C, align(16))]
struct ShortParams([i32; 4]);

/// Offset of the zero row, after the table data of either scheme.
const ZERO_ROW: usize = LUT40_CHUNK * LUT40_ROWS * HALF_ROW;
/// Distance between the low and high half regions of the tables.
const HALF: usize = ZERO_ROW + HALF_ROW;
/// Bytes of the table chunk.
const TABLES_BYTES: usize = 2 * HALF;
/// Bytes of the transposed input chunk of lut40 (lut16 transposes into its tables).
const XT_BYTES: usize = LUT40_CHUNK * 4 * ROW;
const _: () = assert!(LUT16_CHUNK * LUT16_ROWS * HALF_ROW <= ZERO_ROW);
const _: () = assert!(ZERO_ROW < 1 << 16, "row offsets must fit u16");
const _: () = assert!(LUT16_CHUNK >= LUT40_CHUNK, "offset bound uses the smaller chunk");
const _: () = assert!(4 * 128 * LUT40_CHUNK < 1 << 15 && 4 * 128 * LUT16_CHUNK < 1 << 15);

/// `MASKS[code] = [plus, minus]`: bit `j` set where weight `j` is +1, respectively -1.
const MASKS: [[u8; 2]; CODES] = {
    let mut t = [[0u8; 2]; CODES];
    let mut code = 0;
    while code < CODES {
        let mut j = 0;
        while j < 4 {
            match TRITS[code][j] {
                1 => t[code][0] |= 1 << j,
                -1 => t[code][1] |= 1 << j,
                _ => {}
            }
            j += 1;
        }
        code += 1;
    }
    t
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scheme {
    /// Signed sums of codes 41..=80, one lookup per group.
    Lut40,
    /// Subset sums, a plus and a minus lookup per group.
    Lut16,
}

impl Scheme {
    fn for_outputs(n: usize) -> Scheme {
        if n <= LUT16_MAX_N {
            Scheme::Lut16
        } else {
            Scheme::Lut40
        }
    }

    /// Groups per chunk.
    fn chunk(self) -> usize {
        match self {
            Scheme::Lut40 => LUT40_CHUNK,
            Scheme::Lut16 => LUT16_CHUNK,
        }
    }

    /// Per-code `[plus, minus]` rows within a group, and rows per group.
    fn entries(self) -> (&'static [[u16; 2]; CODES], u16) {
        match self {
            Scheme::Lut40 => (&LUT40_ENTRIES, LUT40_ROWS as u16),
            Scheme::Lut16 => (&LUT16_ENTRIES, LUT16_ROWS as u16),
        }
    }
}

/// "No row" in the entry tables.
const NO_ROW: u16 = u16::MAX;

/// Per code, the `[plus, minus]` row of a lut40 table: codes above 40 add row `c - 41`,
/// codes below subtract row `39 - c` (`T[c] = -T[80 - c]`), code 40 adds nothing.
const LUT40_ENTRIES: [[u16; 2]; CODES] = {
    let mut t = [[NO_ROW; 2]; CODES];
    let mut c = 0;
    while c < CODES {
        if c > 40 {
            t[c][0] = (c - 41) as u16;
        } else if c < 40 {
            t[c][1] = (39 - c) as u16;
        }
        c += 1;
    }
    t
};

/// Per code, the `[plus, minus]` subset rows of a lut16 table (an empty subset: no row).
const LUT16_ENTRIES: [[u16; 2]; CODES] = {
    let mut t = [[NO_ROW; 2]; CODES];
    let mut c = 0;
    while c < CODES {
        let mut s = 0;
        while s < 2 {
            if MASKS[c][s] != 0 {
                t[c][s] = MASKS[c][s] as u16;
            }
            s += 1;
        }
        c += 1;
    }
    t
};

/// `u16` entries of a record header: plus pairs, minus pairs, channel, padding (so the
/// offsets that follow stay 8-byte aligned).
const HEADER: usize = 4;

/// Upper bound of the `u16` list entries for `k` inputs and `n` outputs: per chunk and
/// output a header, one pad per list and at most one entry per group (lut40) or two
/// (lut16).
fn max_list_entries(k: usize, n: usize) -> usize {
    let g = groups(k);
    let per_group = if Scheme::for_outputs(n) == Scheme::Lut16 { 2 } else { 1 };
    n * (per_group * g + (HEADER + 2) * g.div_ceil(LUT40_CHUNK))
}

fn round64(bytes: usize) -> usize {
    bytes.div_ceil(64) * 64
}

/// Scratch layout: transposed input chunk, table chunk, int32 accumulators, output tile.
struct Layout {
    xt: usize,
    tables: usize,
    acc: usize,
    otile: usize,
    /// Short-form parameters, four i32 per channel ([`ShortParams`]), computed once per call.
    addends: usize,
    total: usize,
}

impl Layout {
    fn new(n: usize) -> Layout {
        let xt = 0;
        let tables = xt + XT_BYTES;
        let acc = tables + round64(TABLES_BYTES);
        let otile = acc + round64(n * TILE * 4);
        let addends = otile + round64(n * TILE);
        let total = addends + round64(n * 16);
        Layout { xt, tables, acc, otile, addends, total }
    }
}

pub(super) fn scratch_bytes(_max_k: usize, max_n: usize) -> usize {
    Layout::new(max_n).total
}

/// Prepares packed ternary codes (`n` rows of `groups(k)`, all below 81) once, at load
/// time, as the row-offset lists of the scheme `n` selects (see [`pack_lists`]).
pub(super) fn prepare(codes: &[u8], k: usize, n: usize) -> AlignedBuf {
    let entries = max_list_entries(k, n);
    let mut buf = AlignedBuf::zeroed(entries * 2);
    pack_lists(codes, k, n, Scheme::for_outputs(n), buf.as_u16_mut(entries));
    buf
}

/// Kept out of line so that the multiplies of tiling and requantization can never be
/// inlined into a function whose name contains `ternary`.
#[inline(never)]
pub(super) fn run(
    _t: Neon,
    shape: PointwiseShape,
    input: &[i8],
    lists: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut AlignedBuf,
) {
    let layout = Layout::new(shape.n);
    assert!(scratch.len() >= layout.total, "scratch too small for this pointwise shape");
    let entries = max_list_entries(shape.k, shape.n);
    assert!(lists.len() >= entries * 2, "prepared ternary weights too short");
    let scheme = Scheme::for_outputs(shape.n);
    // SAFETY: the `Neon` token proves the CPU has NEON. `Kernels::ternary_pointwise` checked
    // input/output lengths against the shape and the epilogue lengths; the lists were packed
    // by `prepare` for this k and n (the `PreparedTernary` invariant); the scratch is 64-byte
    // aligned and large enough (asserted above).
    unsafe {
        let lists = lists.as_u16(entries);
        run_neon(shape, input, lists, epi, output, scratch.as_mut_ptr(), &layout, scheme)
    }
}

/// # Safety
/// NEON; `input`, `output` and `epi` must match `shape` (as checked by
/// `Kernels::ternary_pointwise`), `lists` must come from `prepare` for this shape, and
/// `scratch` must be 64-byte aligned with at least `layout.total` bytes.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn run_neon(
    shape: PointwiseShape,
    input: &[i8],
    lists: &[u16],
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: *mut u8,
    layout: &Layout,
    scheme: Scheme,
) {
    let PointwiseShape { pixels, k, n } = shape;
    let g = groups(k);
    // SAFETY: offsets lie inside the scratch (layout.total bytes) and are 64-byte aligned.
    let (xt, tables, acc, otile) = unsafe {
        (
            scratch.add(layout.xt),
            scratch.add(layout.tables),
            scratch.add(layout.acc).cast::<i32>(),
            scratch.add(layout.otile).cast::<i8>(),
        )
    };
    // SAFETY: both halves of the zero row, which no transpose or table build writes.
    unsafe {
        std::ptr::write_bytes(tables.add(ZERO_ROW), 0, HALF_ROW);
        std::ptr::write_bytes(tables.add(ZERO_ROW + HALF), 0, HALF_ROW);
    }
    let chunk = scheme.chunk();
    let out = Output::new(epi);
    // |acc| <= 128 k: int8 activations times weights in {-1, 0, 1}. The short form's
    // parameters (the addend is a 64-bit product) once per call, not per tile.
    let short = epi.short_form_wide(128 * k as i64).then(|| {
        // SAFETY: the layout reserved n aligned ShortParams for them, used by nothing else.
        let params = unsafe {
            std::slice::from_raw_parts_mut(scratch.add(layout.addends).cast::<ShortParams>(), n)
        };
        for (c, p) in params.iter_mut().enumerate() {
            *p = ShortParams([
                epi.short_addend(c),
                epi.multiplier[c] >> 16,
                16 - i32::from(epi.shift[c]),
                0,
            ]);
        }
        &*params
    });
    let mut start = 0;
    while start < pixels {
        let valid = TILE.min(pixels - start);
        // SAFETY: rows start..start+valid exist in input and output; the scratch regions
        // have the sizes the layout computed for k and n; the lists were packed for this
        // scheme and chunking, so every offset names a row of its chunk's tables (or the
        // zero row) and each MAC call consumes exactly its chunk's lists.
        unsafe {
            let tile = input.as_ptr().add(start * k);
            let mut gs = 0;
            let mut list = lists.as_ptr();
            while gs < g {
                let len = chunk.min(g - gs);
                let c0 = gs * 4;
                let channels = (4 * len).min(k - c0);
                let first = gs == 0;
                let t = tables.cast::<i16>();
                list = match scheme {
                    Scheme::Lut40 => {
                        let slots = [0, ROW, 2 * ROW, 3 * ROW];
                        let dst = (xt, 4 * ROW, slots, HALF_ROW);
                        transpose_tile(tile.add(c0), k, channels, 4 * len, valid, dst);
                        ternary_pw_16x4c_lut40__neon_mac(xt.cast(), len, list, n, t, acc, first)
                    }
                    Scheme::Lut16 => {
                        let slots = [1, 2, 4, 8].map(|r| r * HALF_ROW);
                        let dst = (tables, LUT16_ROWS * HALF_ROW, slots, HALF);
                        transpose_tile(tile.add(c0), k, channels, 4 * len, valid, dst);
                        ternary_pw_16x4c_lut16__neon_mac(t, len, list, n, acc, first)
                    }
                };
                gs += len;
            }
            requantize_tile(acc, epi, short, &out, n, otile);
            store_output(otile, n, valid, output.as_mut_ptr().add(start * n));
        }
        start += valid;
    }
}

/// One output channel's lists for one chunk, as [`pack_lists`] writes them.
struct Record {
    channel: u16,
    /// Plus and minus lists, each padded to even length with the zero row.
    lists: [[u16; LUT16_CHUNK + 1]; 2],
    count: [usize; 2],
}

/// Rewrites the codes as row-offset records, chunk by chunk: per output channel
/// `[plus pairs, minus pairs, channel, 0, plus offsets.., minus offsets..]`, each list
/// padded to even length with the zero row; within a chunk the records are sorted by their
/// pair counts (the module docs say why). Runs once, at load time (`prepare`).
fn pack_lists(codes: &[u8], k: usize, n: usize, scheme: Scheme, out: &mut [u16]) {
    assert!(n <= 1 << 16, "channel indices must fit u16");
    let g = groups(k);
    let (entries, rows) = scheme.entries();
    let chunk = scheme.chunk();
    let mut pos = 0;
    let mut gs = 0;
    let mut records = Vec::with_capacity(n);
    while gs < g {
        let len = chunk.min(g - gs);
        records.clear();
        for (channel, row) in codes.chunks_exact(g).take(n).enumerate() {
            // Every entry is written; only real rows advance their list.
            let mut r =
                Record { channel: channel as u16, lists: [[0; LUT16_CHUNK + 1]; 2], count: [0; 2] };
            let mut base = 0u16;
            for &code in &row[gs..gs + len] {
                for ((list, count), &e) in
                    r.lists.iter_mut().zip(&mut r.count).zip(&entries[usize::from(code)])
                {
                    list[*count] = base.wrapping_add(e).wrapping_mul(HALF_ROW as u16);
                    *count += usize::from(e != NO_ROW);
                }
                base += rows;
            }
            for (list, count) in r.lists.iter_mut().zip(&mut r.count) {
                if *count % 2 == 1 {
                    list[*count] = ZERO_ROW as u16;
                    *count += 1;
                }
            }
            records.push(r);
        }
        // Stable: equal counts keep channel order.
        records.sort_by_key(|r| r.count);
        for r in &records {
            let [plus, minus] = r.count.map(|c| (c / 2) as u16);
            out[pos..pos + HEADER].copy_from_slice(&[plus, minus, r.channel, 0]);
            pos += HEADER;
            for (list, &count) in r.lists.iter().zip(&r.count) {
                out[pos..pos + count].copy_from_slice(&list[..count]);
                pos += count;
            }
        }
        gs += len;
    }
}

/// Add-only MAC of one 16-pixel tile and one chunk of `len` groups with lut40 tables,
/// against all `n` output channels: channel `c`'s int32 sums of pixels 0..16 are stored
/// (`first`) or added into `acc[16 c..16 c + 16]`. Returns the end of the chunk's lists.
///
/// # Safety
/// NEON; `xt` holds `4 * len` rows of 16 int16; `list` holds the chunk's lists for `n`
/// outputs as packed by `pack_lists` for lut40; `tables` is the table chunk with its zero
/// row; `acc` has room for `16 n` int32; all 16-byte aligned.
#[inline(never)]
#[target_feature(enable = "neon")]
unsafe fn ternary_pw_16x4c_lut40__neon_mac(
    xt: *const i16,
    len: usize,
    list: *const u16,
    n: usize,
    tables: *mut i16,
    acc: *mut i32,
    first: bool,
) -> *const u16 {
    // SAFETY: (caller) 4 input rows and 40 table rows per group, then lookups inside the
    // built tables.
    unsafe {
        let mut x = xt;
        let mut t = tables;
        for _ in 0..len {
            ternary_table40__neon(x, t);
            x = x.add(4 * TILE);
            t = t.add(LUT40_ROWS * HALF_ROW / 2);
        }
        ternary_accumulate__neon(tables.cast_const().cast(), list, n, acc, first)
    }
}

/// Add-only MAC of one 16-pixel tile and one chunk of `len` groups with lut16 tables (the
/// single rows 1, 2, 4, 8 of each group already hold the transposed inputs); otherwise as
/// [`ternary_pw_16x4c_lut40__neon_mac`].
///
/// # Safety
/// NEON; `tables` is the table chunk with its zero row and `len` groups of 16 rows whose
/// rows 1, 2, 4, 8 are filled; `list` holds the chunk's lists for `n` outputs as packed by
/// `pack_lists` for lut16; `acc` has room for `16 n` int32.
#[inline(never)]
#[target_feature(enable = "neon")]
unsafe fn ternary_pw_16x4c_lut16__neon_mac(
    tables: *mut i16,
    len: usize,
    list: *const u16,
    n: usize,
    acc: *mut i32,
    first: bool,
) -> *const u16 {
    // SAFETY: (caller) 16 rows per group, then lookups inside the built tables.
    unsafe {
        let mut t = tables;
        for _ in 0..len {
            ternary_table16__neon(t);
            t = t.add(LUT16_ROWS * HALF_ROW / 2);
        }
        ternary_accumulate__neon(tables.cast_const().cast(), list, n, acc, first)
    }
}

/// For each of `n` records (one per output channel, in the order [`pack_lists`] wrote
/// them): add the rows of its plus list, subtract those of its minus list, widen the int16
/// chunk sum to int32 and store it or add it to the record's channel's accumulators.
/// Returns the end of the lists.
///
/// # Safety
/// NEON; `list` holds `n` (header, plus list, minus list) records whose offsets name
/// 16-byte-aligned half rows inside the tables and whose channels are below `n`; `acc`
/// holds `16 n` aligned int32.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn ternary_accumulate__neon(
    tables: *const u8,
    list: *const u16,
    n: usize,
    acc: *mut i32,
    first: bool,
) -> *const u16 {
    // SAFETY: (caller) every row read and accumulator access is in bounds; pointers move by
    // increments only.
    unsafe {
        let mut p = list;
        for _ in 0..n {
            let header = u64::from_le(p.cast::<u64>().read_unaligned());
            let a = acc.add(TILE * ((header >> 32) & 0xffff) as usize);
            // Two add chains (even and odd offsets), each pixels 0..8 and 8..16.
            let mut s = [[vdupq_n_s16(0); 2]; 2];
            let (plus, minus) = (header as u32 & 0xffff, (header >> 16) as u32 & 0xffff);
            p = ternary_list__neon::<false>(&mut s, tables, p.add(HEADER), plus);
            p = ternary_list__neon::<true>(&mut s, tables, p, minus);
            let lo = vaddq_s16(s[0][0], s[1][0]);
            let hi = vaddq_s16(s[0][1], s[1][1]);
            let wide = [
                vmovl_s16(vget_low_s16(lo)),
                vmovl_high_s16(lo),
                vmovl_s16(vget_low_s16(hi)),
                vmovl_high_s16(hi),
            ];
            for (i, w) in wide.into_iter().enumerate() {
                let q = a.add(4 * i);
                vst1q_s32(q, if first { w } else { vaddq_s32(vld1q_s32(q), w) });
            }
        }
        p
    }
}

/// Adds (or with `SUB` subtracts) the table rows named by `pairs` pairs of offsets at `p`
/// into the two chains of `s`, four offsets per 64-bit load. Returns the end of the list.
///
/// # Safety
/// NEON; `p` holds `2 * pairs` offsets of aligned half rows inside `tables`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn ternary_list__neon<const SUB: bool>(
    s: &mut [[int16x8_t; 2]; 2],
    tables: *const u8,
    p: *const u16,
    pairs: u32,
) -> *const u16 {
    // SAFETY: (caller) offsets are in bounds; the offset loads stay inside the list.
    unsafe {
        let add = |s: &mut [int16x8_t; 2], off: u64| {
            let row = tables.add(off as usize).cast::<i16>();
            let (lo, hi) = (vld1q_s16(row), vld1q_s16(row.add(HALF / 2)));
            if SUB {
                s[0] = vsubq_s16(s[0], lo);
                s[1] = vsubq_s16(s[1], hi);
            } else {
                s[0] = vaddq_s16(s[0], lo);
                s[1] = vaddq_s16(s[1], hi);
            }
        };
        let mut p = p;
        for _ in 0..pairs / 2 {
            let w = u64::from_le(p.cast::<u64>().read_unaligned());
            add(&mut s[0], w & 0xffff);
            add(&mut s[1], (w >> 16) & 0xffff);
            add(&mut s[0], (w >> 32) & 0xffff);
            add(&mut s[1], w >> 48);
            p = p.add(4);
        }
        if pairs & 1 != 0 {
            let w = u64::from(u32::from_le(p.cast::<u32>().read_unaligned()));
            add(&mut s[0], w & 0xffff);
            add(&mut s[1], w >> 16);
            p = p.add(2);
        }
        p
    }
}

/// Builds the 40 lut40 rows of one group from its four input rows at `x`: row `c - 41`
/// holds `T[c] = sum_j (d_j - 1) * x_j` for `c = d0 + 3 d1 + 9 d2 + 27 d3` in 41..=80,
/// one 8-pixel half at a time (the high halves go to the region [`HALF`] bytes further).
///
/// With `l = d0 + 3 d1` and `h = d2 + 3 d3`, `T[c] = low[l] + high[h]` and `c = l + 9 h`, so
/// codes 41..=80 are `h = 4` (where `high[4] = 0`) with `l` in 5..9, then `h` in 5..9 with
/// every `l`.
///
/// # Safety
/// NEON; `x` holds 4 rows of 16 int16 and `t` room for 40 half rows in both regions, all
/// 16-byte aligned.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn ternary_table40__neon(x: *const i16, t: *mut i16) {
    // SAFETY: (caller) 4 readable and 40 writable aligned rows.
    unsafe {
        for (xh, th) in [(0, 0), (8, HALF / 2)] {
            let xs = x.add(xh);
            let low = ternary_table9__neon(vld1q_s16(xs), vld1q_s16(xs.add(TILE)));
            let high =
                ternary_table9__neon(vld1q_s16(xs.add(2 * TILE)), vld1q_s16(xs.add(3 * TILE)));
            let mut dst = t.add(th);
            for &l in &low[5..] {
                vst1q_s16(dst, l);
                dst = dst.add(8);
            }
            for &h in &high[5..] {
                for l in low {
                    vst1q_s16(dst, vaddq_s16(l, h));
                    dst = dst.add(8);
                }
            }
        }
    }
}

/// The 9 signed sums of two vectors: `[d0 + 3 d1] = (d0 - 1) * a + (d1 - 1) * b`.
#[inline]
#[target_feature(enable = "neon")]
fn ternary_table9__neon(a: int16x8_t, b: int16x8_t) -> [int16x8_t; 9] {
    let sum = vaddq_s16(a, b);
    let diff = vsubq_s16(a, b);
    [vnegq_s16(sum), vnegq_s16(b), diff, vnegq_s16(a), vdupq_n_s16(0), a, vnegq_s16(diff), b, sum]
}

/// Completes one subset table: from the single rows 1, 2, 4, 8 builds the 11 rows of
/// subsets with two or more members (row `mask` = sum of the members' rows), in both half
/// regions.
///
/// # Safety
/// NEON; `t` holds 16 aligned half rows in both regions, with rows 1, 2, 4, 8 initialised.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn ternary_table16__neon(t: *mut i16) {
    // SAFETY: (caller) 16 aligned rows.
    unsafe {
        for half in [0, HALF / 2] {
            let r = t.add(half);
            let a = vld1q_s16(r.add(8));
            let b = vld1q_s16(r.add(2 * 8));
            let c = vld1q_s16(r.add(4 * 8));
            let d = vld1q_s16(r.add(8 * 8));
            let ab = vaddq_s16(a, b);
            let ac = vaddq_s16(a, c);
            let bc = vaddq_s16(b, c);
            let abc = vaddq_s16(ab, c);
            let rows = [
                (3, ab),
                (5, ac),
                (6, bc),
                (7, abc),
                (9, vaddq_s16(a, d)),
                (10, vaddq_s16(b, d)),
                (11, vaddq_s16(ab, d)),
                (12, vaddq_s16(c, d)),
                (13, vaddq_s16(ac, d)),
                (14, vaddq_s16(bc, d)),
                (15, vaddq_s16(abc, d)),
            ];
            for (mask, v) in rows {
                vst1q_s16(r.add(mask * 8), v);
            }
        }
    }
}

/// Transposes 8 rows of 16 bytes as two 8x8 blocks: output `j` holds column `j` of the left
/// block in its low half and column `j + 8` (the right block) in its high half.
#[inline]
#[target_feature(enable = "neon")]
fn transpose8x16(r: [int8x16_t; 8]) -> [int8x16_t; 8] {
    // Each trn stage works within 64-bit halves, so both 8x8 blocks transpose at once.
    let t = [
        vtrn1q_s8(r[0], r[1]),
        vtrn2q_s8(r[0], r[1]),
        vtrn1q_s8(r[2], r[3]),
        vtrn2q_s8(r[2], r[3]),
        vtrn1q_s8(r[4], r[5]),
        vtrn2q_s8(r[4], r[5]),
        vtrn1q_s8(r[6], r[7]),
        vtrn2q_s8(r[6], r[7]),
    ]
    .map(|v| vreinterpretq_s16_s8(v));
    let u = [
        vtrn1q_s16(t[0], t[2]),
        vtrn1q_s16(t[1], t[3]),
        vtrn2q_s16(t[0], t[2]),
        vtrn2q_s16(t[1], t[3]),
        vtrn1q_s16(t[4], t[6]),
        vtrn1q_s16(t[5], t[7]),
        vtrn2q_s16(t[4], t[6]),
        vtrn2q_s16(t[5], t[7]),
    ]
    .map(|v| vreinterpretq_s32_s16(v));
    [
        vtrn1q_s32(u[0], u[4]),
        vtrn1q_s32(u[1], u[5]),
        vtrn1q_s32(u[2], u[6]),
        vtrn1q_s32(u[3], u[7]),
        vtrn2q_s32(u[0], u[4]),
        vtrn2q_s32(u[1], u[5]),
        vtrn2q_s32(u[2], u[6]),
        vtrn2q_s32(u[3], u[7]),
    ]
    .map(|v| vreinterpretq_s8_s32(v))
}

/// Where [`transpose_tile`] writes: channel `c`'s pixels 0..8 go to
/// `base + (c / 4) * group_stride + slots[c % 4]` and pixels 8..16 `half_stride` bytes
/// further.
type Dest = (*mut u8, usize, [usize; 4], usize);

/// Transposes `channels` (real) of a tile of `valid` pixels (rows `stride` bytes apart)
/// into int16 rows of 16 pixels at `dst`. Channels `channels..padded`, and pixels past
/// `valid`, are zero.
///
/// # Safety
/// NEON; `src` readable for `valid` rows of `channels` bytes; every destination half row
/// writable and 16-byte aligned.
#[target_feature(enable = "neon")]
unsafe fn transpose_tile(
    src: *const i8,
    stride: usize,
    channels: usize,
    padded: usize,
    valid: usize,
    dst: Dest,
) {
    let (base, group_stride, slots, half_stride) = dst;
    // SAFETY: callers pass c < padded, which selects a destination row (caller contract).
    let row = |c: usize| unsafe { base.add((c / 4) * group_stride + slots[c % 4]) };
    // Stores pixels 0..8 and 8..16 of channel c.
    let put = |c: usize, lo: int16x8_t, hi: int16x8_t| {
        let d = row(c);
        // SAFETY: (caller) both half rows of channel c are writable and aligned.
        unsafe {
            vst1q_s16(d.cast(), lo);
            vst1q_s16(d.add(half_stride).cast(), hi);
        }
    };
    let mut c = 0;
    // SAFETY: (caller) reads stay inside the valid rows and channels, writes inside the
    // destination rows.
    unsafe {
        if valid == TILE {
            while c + 16 <= channels {
                let a = transpose8x16(std::array::from_fn(|p| vld1q_s8(src.add(p * stride + c))));
                let b =
                    transpose8x16(std::array::from_fn(|p| vld1q_s8(src.add((p + 8) * stride + c))));
                for j in 0..8 {
                    put(c + j, vmovl_s8(vget_low_s8(a[j])), vmovl_s8(vget_low_s8(b[j])));
                    put(c + 8 + j, vmovl_high_s8(a[j]), vmovl_high_s8(b[j]));
                }
                c += 16;
            }
            if c + 8 <= channels {
                let half = |p: usize| vcombine_s8(vld1_s8(src.add(p * stride + c)), vdup_n_s8(0));
                let a = transpose8x16(std::array::from_fn(half));
                let b = transpose8x16(std::array::from_fn(|p| half(p + 8)));
                for j in 0..8 {
                    put(c + j, vmovl_s8(vget_low_s8(a[j])), vmovl_s8(vget_low_s8(b[j])));
                }
                c += 8;
            }
        }
        for ch in c..padded {
            let mut v = [0i16; TILE];
            if ch < channels {
                for (p, d) in v.iter_mut().enumerate().take(valid) {
                    *d = i16::from(*src.add(p * stride + ch));
                }
            }
            put(ch, vld1q_s16(v.as_ptr()), vld1q_s16(v.as_ptr().add(8)));
        }
    }
}

/// Requantizes the tile's accumulators: channel `c`'s 16 pixels become 16 bytes at
/// `otile + 16 c`. With `short` ([`Epilogue::short_form_wide`] holds for this layer's
/// accumulator bound) each channel is `(acc * (m >> 16) + B16) >> (s - 16)`: one 32-bit
/// multiply-add and one shift (`sshl` by a negative count, a floor) per four pixels instead
/// of two 64-bit products, two rounding shifts and two narrows.
///
/// # Safety
/// NEON; `acc` holds `16 n` aligned int32; `otile` is writable for `16 n` bytes; the
/// epilogue has `n` entries with shifts in the contract's range; `short` (`n` parameter
/// sets) only where the short form holds.
// Out of line: inlined into the tile loop, its constants live on the stack across the MAC
// calls (the ABI keeps no 128-bit register over a call) and were reloaded per channel.
#[inline(never)]
#[target_feature(enable = "neon")]
unsafe fn requantize_tile(
    acc: *const i32,
    epi: &Epilogue<'_>,
    short: Option<&[ShortParams]>,
    out: &Output,
    n: usize,
    otile: *mut i8,
) {
    // A copy in registers: through the reference, LLVM reloads it after every output store
    // (an `i8` store may alias it).
    let out = *out;
    if let Some(params) = short {
        for (c, p) in params.iter().enumerate().take(n) {
            // One load per channel; the multiplier is used by lane.
            // SAFETY: (caller) c < n keeps the reads and the 16-byte write in bounds; the
            // parameters are 16-byte aligned.
            unsafe {
                let p = vld1q_s32(p.0.as_ptr());
                let addend = vdupq_laneq_s32::<0>(p);
                let right = vdupq_laneq_s32::<2>(p);
                let a = acc.add(TILE * c);
                let y = [0, 4, 8, 12].map(|i| {
                    vshlq_s32(vmlaq_laneq_s32::<1>(addend, vld1q_s32(a.add(i)), p), right)
                });
                vst1q_s8(otile.add(TILE * c), out.narrow16(y));
            }
        }
        return;
    }
    let params = epi.bias.iter().zip(epi.multiplier).zip(epi.shift).take(n);
    for (c, ((&b, &m), &s)) in params.enumerate() {
        let q = Quad::splat(b, m, s);
        // SAFETY: (caller) c < n keeps the reads and the 16-byte write in bounds.
        unsafe {
            let a = acc.add(TILE * c);
            let y = [0, 4, 8, 12].map(|i| q.apply(vld1q_s32(a.add(i))));
            vst1q_s8(otile.add(TILE * c), out.narrow16(y));
        }
    }
}

/// Writes the channel-major output tile (`n` rows of 16 pixels) to `valid` pixel rows of
/// `n` channels.
///
/// # Safety
/// NEON; `otile` readable for `16 n` bytes; `output` writable for `valid * n` bytes.
#[target_feature(enable = "neon")]
unsafe fn store_output(otile: *const i8, n: usize, valid: usize, output: *mut i8) {
    let mut c = 0;
    // SAFETY: (caller) reads inside the tile, writes inside the valid rows.
    unsafe {
        let channel = |ch: usize| vld1q_s8(otile.add(ch * TILE));
        while c + 16 <= n {
            // a[j] / b[j]: pixels j (low half) and j + 8 (high half) of 8 channels each.
            let a = transpose8x16(std::array::from_fn(|i| channel(c + i)));
            let b = transpose8x16(std::array::from_fn(|i| channel(c + 8 + i)));
            for j in 0..8 {
                if j < valid {
                    let v = vcombine_s8(vget_low_s8(a[j]), vget_low_s8(b[j]));
                    vst1q_s8(output.add(j * n + c), v);
                }
                if j + 8 < valid {
                    let v = vcombine_s8(vget_high_s8(a[j]), vget_high_s8(b[j]));
                    vst1q_s8(output.add((j + 8) * n + c), v);
                }
            }
            c += 16;
        }
        if c + 8 <= n {
            let a = transpose8x16(std::array::from_fn(|i| channel(c + i)));
            for (j, v) in a.iter().enumerate() {
                if j < valid {
                    vst1_s8(output.add(j * n + c), vget_low_s8(*v));
                }
                if j + 8 < valid {
                    vst1_s8(output.add((j + 8) * n + c), vget_high_s8(*v));
                }
            }
            c += 8;
        }
        for ch in c..n {
            for p in 0..valid {
                *output.add(p * n + ch) = *otile.add(ch * TILE + p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose8x16_transposes() {
        let mut m = [[0i8; 16]; 8];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (i * 16 + j) as i8;
            }
        }
        // SAFETY: NEON is baseline on aarch64; each row is 16 readable bytes, each output
        // 16 writable bytes.
        unsafe {
            let cols = transpose8x16(m.map(|r| vld1q_s8(r.as_ptr())));
            for (j, c) in cols.iter().enumerate() {
                let mut bytes = [0i8; 16];
                vst1q_s8(bytes.as_mut_ptr(), *c);
                for i in 0..8 {
                    assert_eq!(bytes[i], m[i][j]);
                    assert_eq!(bytes[8 + i], m[i][j + 8]);
                }
            }
        }
    }

    #[test]
    fn masks_split_codes_into_plus_and_minus_sets() {
        for (code, &[plus, minus]) in MASKS.iter().enumerate() {
            assert_eq!(plus & minus, 0);
            for (j, &t) in TRITS[code].iter().enumerate() {
                let w = i8::from(plus >> j & 1 == 1) - i8::from(minus >> j & 1 == 1);
                assert_eq!(w, t, "code {code} lane {j}");
            }
        }
    }

    #[test]
    fn lut40_entries_cover_every_code() {
        // T[c] for c > 40 is row c - 41 (plus); for c < 40 it is -T[80 - c], row 39 - c.
        for (c, &e) in LUT40_ENTRIES.iter().enumerate() {
            let row = |r: usize| r as u16;
            match c {
                40 => assert_eq!(e, [NO_ROW, NO_ROW]),
                41.. => assert_eq!(e, [row(c - 41), NO_ROW]),
                _ => assert_eq!(e, [NO_ROW, row(39 - c)]),
            }
        }
        for (c, trits) in TRITS.iter().enumerate() {
            assert_eq!(trits.map(|t| -t), TRITS[80 - c]);
        }
    }

    #[test]
    fn lists_hold_each_nonzero_group_once_sorted_by_length() {
        // Channel c keeps every (c + 2)-th group nonzero: later channels have shorter
        // lists, so sorting reverses the channel order.
        let (k, n) = (4 * 45, 7);
        let g = groups(k);
        let codes: Vec<u8> = (0..n * g)
            .map(|i| if (i % g).is_multiple_of(i / g + 2) { (i * 7 % 81) as u8 } else { 40 })
            .collect();
        for scheme in [Scheme::Lut40, Scheme::Lut16] {
            let mut out = vec![u16::MAX; max_list_entries(k, n)];
            pack_lists(&codes, k, n, scheme, &mut out);
            let (entries, rows) = scheme.entries();
            let mut pos = 0;
            let mut reordered = false;
            for gs in (0..g).step_by(scheme.chunk()) {
                let len = scheme.chunk().min(g - gs);
                let mut seen = vec![];
                let mut prev = (0, 0);
                for _ in 0..n {
                    let (plus, minus, channel) = (out[pos], out[pos + 1], out[pos + 2]);
                    assert_eq!(out[pos + 3], 0);
                    assert!((plus, minus) >= prev, "{scheme:?}: records not sorted");
                    prev = (plus, minus);
                    seen.push(channel);
                    pos += HEADER;
                    // The channel's nonzero rows of this chunk, each list padded to even.
                    let row = &codes[usize::from(channel) * g + gs..][..len];
                    let mut expect = [vec![], vec![]];
                    for (j, &code) in row.iter().enumerate() {
                        for (list, &r) in expect.iter_mut().zip(&entries[usize::from(code)]) {
                            if r != NO_ROW {
                                list.push((j as u16 * rows + r) * HALF_ROW as u16);
                            }
                        }
                    }
                    for (pairs, mut list) in [plus, minus].into_iter().zip(expect) {
                        if list.len() % 2 == 1 {
                            list.push(ZERO_ROW as u16);
                        }
                        assert_eq!(usize::from(pairs) * 2, list.len(), "{scheme:?}");
                        assert_eq!(out[pos..pos + list.len()], list[..], "{scheme:?}");
                        pos += list.len();
                    }
                }
                let order = seen.clone();
                seen.sort_unstable();
                reordered |= order != seen;
                assert_eq!(seen, (0..n as u16).collect::<Vec<_>>(), "{scheme:?}: channels");
            }
            assert!(reordered, "{scheme:?}: the test's codes should need sorting");
            assert!(pos <= out.len());
        }
    }

    #[test]
    fn lists_fit_their_bound() {
        for k in [1, 4, 5, 63, 64, 65, 159, 160, 161, 1344] {
            for n in [1, 3, 17] {
                for zero_heavy in [false, true] {
                    // Codes cycling through all values, or mostly zero weights.
                    let codes: Vec<u8> = (0..n * groups(k))
                        .map(|i| if zero_heavy && i % 3 != 0 { 40 } else { (i * 7 % 81) as u8 })
                        .collect();
                    for scheme in [Scheme::Lut40, Scheme::Lut16] {
                        let mut out = vec![u16::MAX; max_list_entries(k, n)];
                        pack_lists(&codes, k, n, scheme, &mut out);
                    }
                }
            }
        }
    }
}
