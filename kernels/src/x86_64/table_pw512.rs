//! AVX-512 ternary pointwise convolution by partial-sum tables (add-only): the scheme of
//! [`super::table_pw`] (lut40 / lut81 tables of the signed sums of four input channels, one
//! row per output channel and group, load-time row-offset lists) with 32-pixel tiles, one
//! int16 lane per pixel of a zmm register, so every `vpaddw`/`vpsubw` does 128 MACs.
//!
//! What changes with the width besides the tables:
//! - tiles are transposed to and from channel-major with 256-bit byte transposes that do the
//!   two 16-pixel halves of a tile at once, and channel or pixel tails use masked loads and
//!   stores (AVX-512BW/VL) instead of scalar loops;
//! - the requantization epilogue handles 16 int32 lanes per step and narrows with the
//!   saturating `vpmovsdb`.
//!
//! Chunks keep the tables in L1 next to the tile and the sums: 12 groups of lut40 (12 * 40
//! rows of 64 bytes, 30 KiB) or 5 groups of lut81 (5 * 81 * 64, 25 KiB; 6 groups, 30 KiB,
//! measured 2% slower over the network's pointwise layers, 4 the same as 5, 3 slower again,
//! and lut40 chunks of 8 the same as 12). Int16 sums wrap, so only a sum's final value has
//! to fit: they run over at most 48 (lut40) or 60 (lut81) groups, `60 * 4 * 128 < 2^15`,
//! before they are widened into int32 totals.

use super::table_pw::{
    prepared_len, round64, short_pixel, zero_direct_pad, Chunk, Chunks, Geometry, Scheme,
    ShortParams, LANES,
};
use super::Avx512;
use crate::params::{Epilogue, PointwiseShape};
use crate::ternary::{groups, CODES};
use crate::AlignedBuf;
use core::arch::x86_64::*;

/// Pixels per tile (int16 lanes of a zmm register).
const TILE: usize = 32;
/// Bytes of one table row.
const ROW: usize = TILE * 2;
/// Stored rows per lut40 group: codes 41..=80.
const ROWS: usize = 40;
/// Table geometry (row offsets in the prepared lists); the direct kernel below 64 outputs.
const GEOMETRY: Geometry = Geometry { row: ROW, chunk40: 12, chunk81: 5, direct_max_n: 64 };
/// Groups an int16 lut40 sum may span before it is widened (|sum| <= 48 * 512 < 2^15).
const WINDOW: usize = 4 * GEOMETRY.chunk40;
/// Groups an int16 lut81 sum spans before it is widened.
const WINDOW81: usize = 12 * GEOMETRY.chunk81;
const _: () = assert!(GEOMETRY.offsets_fit_u16());
const _: () = assert!(WINDOW * 4 * 128 < 1 << 15 && WINDOW81 * 4 * 128 < 1 << 15);
const _: () =
    assert!(WINDOW.is_multiple_of(GEOMETRY.chunk40) && WINDOW81.is_multiple_of(GEOMETRY.chunk81));

/// Prepares packed ternary codes for this tier (row offsets of 64-byte rows).
pub(super) fn prepare(codes: &[u8], k: usize, n: usize) -> AlignedBuf {
    super::table_pw::prepare_for(codes, k, n, GEOMETRY)
}

/// Scratch layout: transposed input tile, table chunk (with its zero row), int32 totals,
/// int16 running sums, channel-major output tile, per-channel rounding terms and shifts,
/// short-form parameters.
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
        // Whole 16-channel blocks: the transpose writes every vector of its last block.
        let tables = xt + k.div_ceil(16) * 16 * ROW;
        let table_bytes = (GEOMETRY.zero_row() + ROW).max(GEOMETRY.chunk81 * CODES * ROW);
        let wide = tables + round64(table_bytes);
        let narrow = wide + n * 2 * ROW;
        let otile = narrow + n * ROW;
        // Whole 32-channel blocks: the output transposes read them (tails masked).
        let rounds = otile + n.div_ceil(32) * 32 * TILE;
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
    _t: Avx512,
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
    // SAFETY: the `Avx512` token proves the CPU has AVX-512 F/BW/VL (and AVX2).
    // `Kernels::ternary_pointwise` checked input/output lengths against the shape and the
    // epilogue (`PointwiseShape::check_call`, `Epilogue::check`); the lists were
    // produced by `prepare` for this k and n (the `PreparedTernary` invariant), so every
    // offset names a row of its chunk's tables or the zero row; the scratch is 64-byte
    // aligned and large enough (asserted above).
    unsafe {
        run_avx512(shape, input, lists.as_ptr().cast(), epi, output, scratch.as_mut_ptr(), &layout)
    }
}

/// # Safety
/// AVX-512 F/BW/VL; `input`, `output` and `epi` match `shape`; `lists` was produced by
/// [`prepare`] for `shape.k` and `shape.n`; `scratch` is 64-byte aligned with `layout.total`
/// bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn run_avx512(
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
    let scheme = Scheme::for_layer(k, n, GEOMETRY);
    // SAFETY: the regions lie inside the scratch (layout.total bytes), 64-byte aligned.
    let (xt, tables, acc, otile) = unsafe {
        let acc = Acc {
            wide: scratch.add(layout.wide).cast::<__m512i>(),
            narrow: scratch.add(layout.narrow).cast::<__m512i>(),
        };
        let tables = scratch.add(layout.tables);
        _mm512_store_si512(tables.add(GEOMETRY.zero_row()).cast(), _mm512_setzero_si512());
        zero_direct_pad(scheme, layout.tables - layout.xt, k, GEOMETRY, tables);
        (scratch.add(layout.xt).cast::<__m512i>(), tables, acc, scratch.add(layout.otile))
    };
    // The per-channel epilogue parameters are computed once per call rather than per tile.
    let (window, chunk) = match scheme {
        Scheme::Lut40 | Scheme::Direct => (WINDOW, GEOMETRY.chunk40),
        Scheme::Lut81 => (WINDOW81, GEOMETRY.chunk81),
    };
    // The direct kernel's int16 sums never wrap (k <= DIRECT_MAX_K).
    let narrow = scheme == Scheme::Direct || Chunks::single(g, window);
    // |acc| <= 128 k: int8 activations times weights in {-1, 0, 1}.
    let acc_max = 128 * k as i64;
    let folded = epi.foldable(acc_max);
    // Final int16 sums and short-form parameters: the 16-bit epilogue.
    let short = narrow && epi.short_form(acc_max);
    // SAFETY: the layout reserved n short parameter records, 64-byte aligned.
    let short_params = unsafe { ShortParams::slice(scratch.add(layout.short), n) };
    if short {
        ShortParams::fill(epi, short_params);
    }
    // SAFETY: the layout reserved n i64 and n i32 for them, suitably aligned.
    let (rounds, posts) = unsafe {
        (
            std::slice::from_raw_parts_mut(scratch.add(layout.rounds).cast::<i64>(), n),
            std::slice::from_raw_parts_mut(scratch.add(layout.posts).cast::<i32>(), n),
        )
    };
    if !short {
        for (c, (r, p)) in rounds.iter_mut().zip(posts.iter_mut()).enumerate() {
            let s = epi.shift[c];
            *r = if folded { epi.folded_addend(c) } else { 1i64 << (s - 1) };
            *p = i32::from(s) - 32;
        }
    }
    let requant = Requant {
        epi,
        rounds,
        posts,
        zero_point: _mm512_set1_epi32(i32::from(epi.output_zero_point)),
        min: _mm256_set1_epi8(epi.output_min),
        max: _mm256_set1_epi8(epi.output_max),
    };
    let sums = if narrow { Sums::Narrow(acc.narrow) } else { Sums::Wide(acc.wide) };
    let rows = short_rows(n);
    let mut start = 0;
    while start < pixels {
        let valid = TILE.min(pixels - start);
        // SAFETY: rows start..start+valid exist in input and output; the scratch regions
        // have the sizes the layout computed for k and n; the lists match (caller).
        unsafe {
            transpose_input(input.as_ptr().add(start * k), k, valid, xt);
            match scheme {
                Scheme::Lut40 => {
                    ternary_pw_32x4c_lut40__avx512_mac(xt, lists, g, n, tables, acc, chunk, window)
                }
                Scheme::Lut81 => {
                    ternary_pw_32x4c_lut81__avx512_mac(xt, lists, g, n, tables, acc, chunk, window)
                }
                Scheme::Direct => ternary_pw_32x1c_direct__avx512_mac(xt, lists, n, acc.narrow),
            }
            let output = output.as_mut_ptr().add(start * n);
            if short {
                requantize_tile_short(acc.narrow, short_params, &requant, otile);
                store_output_short(otile, n, valid, output, &rows);
            } else {
                if folded {
                    requantize_tile::<true>(sums, &requant, n, otile);
                } else {
                    requantize_tile::<false>(sums, &requant, n, otile);
                }
                store_output(otile, n, valid, output);
            }
        }
        start += valid;
    }
}

super::table_pw::table_mac_kernels! {
    features: "avx512f,avx512bw",
    vector: __m512i,
    ops: {
        zero: _mm512_setzero_si512, add: _mm512_add_epi16, sub: _mm512_sub_epi16,
        load: _mm512_load_si512, store: _mm512_store_si512, add32: _mm512_add_epi32,
        widen_lo: widen_lo, widen_hi: widen_hi,
    },
    names: {
        lut40: ternary_pw_32x4c_lut40__avx512_mac, lut81: ternary_pw_32x4c_lut81__avx512_mac,
        store_sum: ternary_store_sum__avx512, build_tables: ternary_build_tables__avx512,
        table81: ternary_table81__avx512, table40: ternary_table40__avx512,
        table9: ternary_table9__avx512, lists: ternary_lists__avx512,
        direct: ternary_pw_32x1c_direct__avx512_mac,
    },
}

/// Int16 lanes 0..16 of `v` as int32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn widen_lo(v: __m512i) -> __m512i {
    _mm512_cvtepi16_epi32(_mm512_castsi512_si256(v))
}

/// Int16 lanes 16..32 of `v` as int32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn widen_hi(v: __m512i) -> __m512i {
    _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(v))
}

super::byte_transpose16! {
    /// Two 16x16 byte transposes at once, one per 128-bit lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose16x16x2(__m256i) {
        _mm256_unpacklo_epi8, _mm256_unpackhi_epi8,
        _mm256_unpacklo_epi16, _mm256_unpackhi_epi16, _mm256_unpacklo_epi32,
        _mm256_unpackhi_epi32, _mm256_unpacklo_epi64, _mm256_unpackhi_epi64
    }
}

/// Mask of the first `count` (at most 16) bytes.
#[inline]
fn first_bytes(count: usize) -> __mmask16 {
    ((1u32 << count.min(16)) - 1) as __mmask16
}

/// Transposes a tile of `valid` pixels x `k` int8 channels into int16 vectors of 32 pixels,
/// one per channel, for whole 16-channel blocks (missing pixels and channels are zero).
///
/// # Safety
/// AVX-512 BW/VL; `input` readable for `valid * k` bytes; `xt` writable for
/// `round_up(k, 16)` aligned vectors.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn transpose_input(input: *const i8, k: usize, valid: usize, xt: *mut __m512i) {
    for b in 0..k.div_ceil(16) {
        let mask = first_bytes(k - b * 16);
        // Lane 0 of row i holds pixel i, lane 1 pixel i + 16 (zero past `valid`); masked
        // loads never touch bytes past the channels or pixels.
        let rows: [__m256i; 16] = core::array::from_fn(|i| {
            // SAFETY: (caller) pixel p < valid has k readable bytes from p * k; the mask
            // limits the load to channels b * 16.. below k.
            let load = |p: usize| unsafe {
                if p < valid {
                    _mm_maskz_loadu_epi8(mask, input.add(p * k + b * 16))
                } else {
                    _mm_setzero_si128()
                }
            };
            _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(load(i)), load(i + 16))
        });
        let cols = transpose16x16x2(rows);
        for (j, c) in cols.iter().enumerate() {
            // SAFETY: (caller) xt holds round_up(k, 16) vectors; b * 16 + j is below that.
            unsafe { _mm512_store_si512(xt.add(b * 16 + j), _mm512_cvtepi8_epi16(*c)) };
        }
    }
}

/// Requantization parameters of a call: the epilogue plus the per-channel rounding terms
/// and post shifts computed once per call, and the output zero point and clamp bounds.
#[derive(Clone, Copy)]
struct Requant<'a> {
    epi: &'a Epilogue<'a>,
    rounds: &'a [i64],
    posts: &'a [i32],
    zero_point: __m512i,
    min: __m256i,
    max: __m256i,
}

/// Requantizes the tile's sums: channel `c`'s 32 pixels become 32 bytes at `otile + 32 c`.
/// Same rule as the AVX2 epilogue ([`super::requant`]): the 64-bit products of the even and
/// odd lanes plus `2^(s-1)`, their high halves, then an arithmetic shift by `s - 32`. With
/// `FOLDED` the per-channel addends already hold the bias and the zero point
/// ([`Epilogue::foldable`]).
///
/// # Safety
/// AVX-512 F/BW/VL; `sums` holds `n` channels; `otile` is writable for `32 n` bytes; the
/// epilogue has `n` entries with shifts in the contract's range; `FOLDED` only where
/// [`Epilogue::foldable`] holds and the addends were computed for it.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn requantize_tile<const FOLDED: bool>(
    sums: Sums,
    requant: &Requant<'_>,
    n: usize,
    otile: *mut u8,
) {
    let Requant { epi, rounds, posts, zero_point, min, max } = *requant;
    for c in 0..n {
        let bias = _mm512_set1_epi32(epi.bias[c]);
        let multiplier = _mm512_set1_epi32(epi.multiplier[c]);
        let round = _mm512_set1_epi64(rounds[c]);
        let post = _mm_cvtsi32_si128(posts[c]);
        let apply = |acc: __m512i| {
            let x = if FOLDED { acc } else { _mm512_add_epi32(acc, bias) };
            let even = _mm512_add_epi64(_mm512_mul_epi32(x, multiplier), round);
            let odd =
                _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64::<32>(x), multiplier), round);
            let high = _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64::<32>(even), odd);
            let y = _mm512_sra_epi32(high, post);
            let y = if FOLDED { y } else { _mm512_add_epi32(y, zero_point) };
            // Saturating to int8 first, then clamping, equals clamping the exact value:
            // the clamp bounds lie inside the int8 range.
            _mm512_cvtsepi32_epi8(y)
        };
        // SAFETY: (caller) channel c < n exists in the sums; 32 bytes at 32 c are writable.
        unsafe {
            let (lo, hi) = sums.load(c);
            let bytes = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(apply(lo)), apply(hi));
            let clamped = _mm256_min_epi8(_mm256_max_epi8(bytes, min), max);
            _mm256_store_si256(otile.add(32 * c).cast(), clamped);
        }
    }
}

/// The short-form epilogue ([`Epilogue::short_form`]) of a tile whose final sums are int16:
/// per channel, `vpmaddwd` against `(m >> 16, 0)` and `(0, m >> 16)` gives the int32
/// products of the even and odd pixels, each plus the addend and shifted by `s - 16`, then
/// the zero point is added with int16 saturation (exact after the clamp). Channels `c` and
/// `c + 16` of each 32-channel block are narrowed together by one `vpacksswb` into 64 bytes
/// at `otile + 64 j` (`j = c % 16` within the block): per 128-bit lane `l`, eight bytes of
/// `c` then eight of `c + 16`, for the positions `8 l .. 8 l + 8`, whose pixels are
/// [`short_pixel`] (the packs keep even pixels before odd ones); [`store_output_short`]
/// undoes both.
///
/// # Safety
/// AVX-512 F/BW/VL; `narrow` holds the final int16 sums of `params.len()` channels; `otile`
/// is writable for 32 bytes per channel rounded up to 32 channels; `params` are the short
/// form's, which holds for this epilogue and accumulator bound.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn requantize_tile_short(
    narrow: *const __m512i,
    params: &[ShortParams],
    requant: &Requant<'_>,
    otile: *mut u8,
) {
    let n = params.len();
    let zero_point = _mm512_set1_epi16(i16::from(requant.epi.output_zero_point));
    let (min, max) =
        (_mm512_set1_epi8(requant.epi.output_min), _mm512_set1_epi8(requant.epi.output_max));
    // Channel c's 32 pixels as saturated int16, zero point added (zero past n).
    let words = |c: usize| {
        let Some(p) = params.get(c) else { return _mm512_setzero_si512() };
        // Broadcasts straight from memory (load ports) and a per-lane shift keep the
        // shuffle port free for the packs and transposes: it bounds this part of a tile.
        let even_m = _mm512_set1_epi32(p.even);
        let odd_m = _mm512_set1_epi32(p.odd);
        let addend = _mm512_set1_epi32(p.addend);
        let shift = _mm512_set1_epi32(p.shift);
        // SAFETY: (caller) channel c < n has its sums.
        let sums = unsafe { _mm512_load_si512(narrow.add(c)) };
        let even = _mm512_madd_epi16(sums, even_m);
        let odd = _mm512_madd_epi16(sums, odd_m);
        let even = _mm512_srav_epi32(_mm512_add_epi32(even, addend), shift);
        let odd = _mm512_srav_epi32(_mm512_add_epi32(odd, addend), shift);
        _mm512_adds_epi16(_mm512_packs_epi32(even, odd), zero_point)
    };
    for block in 0..n.div_ceil(32) {
        for j in 0..16 {
            let c = block * 32 + j;
            // Saturating twice, then clamping, equals clamping the exact value: the clamp
            // bounds lie inside the int8 range.
            let bytes = _mm512_packs_epi16(words(c), words(c + 16));
            let clamped = _mm512_min_epi8(_mm512_max_epi8(bytes, min), max);
            // SAFETY: (caller) the tile has room for whole 32-channel blocks.
            unsafe { _mm512_store_si512(otile.add(64 * (block * 16 + j)).cast(), clamped) };
        }
    }
}

/// Byte offsets of the output rows of a short-form tile's positions: position `q` holds
/// pixel [`short_pixel`]`(q)`, whose row starts `short_pixel(q) * n` bytes into the tile's
/// output. Computed once per call.
fn short_rows(n: usize) -> [usize; TILE] {
    core::array::from_fn(|q| short_pixel(q) * n)
}

/// Writes a short-form output tile ([`requantize_tile_short`]) to `valid` pixel rows of `n`
/// channels: per 32-channel block one 16x16 byte transpose in each 128-bit lane of 16 zmm
/// rows makes column `t` of lane `l` the 16 channels `16 (t / 8)..` of the block at position
/// `8 l + t % 8`. A whole tile's full blocks are stored with plain 16-byte stores, which
/// `vextracti32x4` does straight from the zmm (no shuffle), in straight-line code that keeps
/// the columns in registers; the last tile and a channel tail use masked stores. (Storing
/// each lane straight from the zmm with a shifted 64-byte mask, without extracts, was
/// measured slower: those stores straddle cache lines.)
///
/// # Safety
/// AVX-512 BW/VL; `otile` as written by [`requantize_tile_short`] for `n` channels, 64-byte
/// aligned; `output` writable for `valid * n` bytes; `rows` is [`short_rows`]`(n)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn store_output_short(
    otile: *const u8,
    n: usize,
    valid: usize,
    output: *mut i8,
    rows: &[usize; TILE],
) {
    // The columns of 32-channel block `block`.
    let columns = |block: usize| {
        // SAFETY: (caller) the tile holds whole 32-channel blocks of 16 rows.
        let tile: [__m512i; 16] = core::array::from_fn(|j| unsafe {
            _mm512_load_si512(otile.add(64 * (block * 16 + j)).cast())
        });
        transpose16x16x4(tile)
    };
    for block in 0..n.div_ceil(32) {
        // SAFETY: (caller) every position's pixel below `valid` has n writable bytes from
        // its row offset; the plain stores write channels block * 32.. + 32 <= n of all 32
        // pixels, the masked ones only bytes below n of pixels below `valid`.
        unsafe {
            let base = output.add(block * 32);
            if valid < TILE || block * 32 + 32 > n {
                // Out of line, so the columns of whole blocks stay in registers.
                store_columns_masked(columns(block), base, n - block * 32, rows, valid);
                continue;
            }
            let cols = columns(block);
            // Column t: channels 16 (t / 8).. at positions 8 l + t % 8.
            macro_rules! put {
                ($($t:literal)*) => {$({
                    let (col, at, r) = (cols[$t], base.add(16 * ($t / 8)), $t % 8);
                    _mm_storeu_si128(at.add(rows[r]).cast(), _mm512_castsi512_si128(col));
                    let lane1 = _mm512_extracti32x4_epi32::<1>(col);
                    _mm_storeu_si128(at.add(rows[8 + r]).cast(), lane1);
                    let lane2 = _mm512_extracti32x4_epi32::<2>(col);
                    _mm_storeu_si128(at.add(rows[16 + r]).cast(), lane2);
                    let lane3 = _mm512_extracti32x4_epi32::<3>(col);
                    _mm_storeu_si128(at.add(rows[24 + r]).cast(), lane3);
                })*};
            }
            put!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        }
    }
}

/// The stores of [`store_output_short`] for the last tile or a block with fewer than 32
/// channels (`channels` of them): only the rows of pixels below `valid`, only the bytes
/// of existing channels.
///
/// # Safety
/// AVX-512 BW/VL; the rows of pixels below `valid` are writable for `channels.min(32)` bytes
/// from `base`.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn store_columns_masked(
    cols: [__m512i; 16],
    base: *mut i8,
    channels: usize,
    rows: &[usize; TILE],
    valid: usize,
) {
    for (t, col) in cols.iter().enumerate() {
        let channel = 16 * (t / 8);
        if channel >= channels {
            break;
        }
        let mask = first_bytes(channels - channel);
        let lanes = [
            _mm512_castsi512_si128(*col),
            _mm512_extracti32x4_epi32::<1>(*col),
            _mm512_extracti32x4_epi32::<2>(*col),
            _mm512_extracti32x4_epi32::<3>(*col),
        ];
        for (lane, bytes) in lanes.into_iter().enumerate() {
            let q = 8 * lane + t % 8;
            if short_pixel(q) < valid {
                // SAFETY: (caller) pixel short_pixel(q) < valid: its bytes below `channels`
                // are writable.
                unsafe { _mm_mask_storeu_epi8(base.add(rows[q] + channel), mask, bytes) };
            }
        }
    }
}

super::byte_transpose16! {
    /// Four 16x16 byte transposes at once, one per 128-bit lane.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn transpose16x16x4(__m512i) {
        _mm512_unpacklo_epi8, _mm512_unpackhi_epi8,
        _mm512_unpacklo_epi16, _mm512_unpackhi_epi16, _mm512_unpacklo_epi32,
        _mm512_unpackhi_epi32, _mm512_unpacklo_epi64, _mm512_unpackhi_epi64
    }
}

/// Writes the channel-major output tile (`n` x 32 bytes) to `valid` pixel rows of `n`
/// channels, 16 channels at a time (the last block's channel tail through masked stores).
///
/// # Safety
/// AVX-512 BW/VL; `otile` readable for `32 * round_up(n, 16)` bytes, 32-byte aligned;
/// `output` writable for `valid * n` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn store_output(otile: *const u8, n: usize, valid: usize, output: *mut i8) {
    for b in 0..n.div_ceil(16) {
        let mask = first_bytes(n - b * 16);
        // SAFETY: (caller) the tile has whole 16-channel blocks of 32 bytes.
        let rows: [__m256i; 16] = core::array::from_fn(|j| unsafe {
            _mm256_load_si256(otile.add((b * 16 + j) * TILE).cast())
        });
        let cols = transpose16x16x2(rows);
        // Column p: lane 0 is pixel p's 16 channels, lane 1 pixel p + 16's.
        for (p, col) in cols.iter().enumerate() {
            // SAFETY: (caller) pixels below `valid` have n writable bytes; the mask keeps
            // the stores inside channels below n.
            unsafe {
                if p < valid {
                    let dst = output.add(p * n + b * 16);
                    _mm_mask_storeu_epi8(dst, mask, _mm256_castsi256_si128(*col));
                }
                if p + 16 < valid {
                    let dst = output.add((p + 16) * n + b * 16);
                    _mm_mask_storeu_epi8(dst, mask, _mm256_extracti128_si256::<1>(*col));
                }
            }
        }
    }
}
