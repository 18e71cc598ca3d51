//! Shared helpers for the `.prom` format tests (and the fuzz seed-corpus generator, which
//! includes this file by path).
//!
//! [`small_spec`] builds a small but complete and valid model by hand:
//!
//! ```text
//! t0 input 8x8x3 (u8)
//! op0 stem 3x3 s2            -> t1 4x4x8
//! op1 ternary pointwise      -> t2 4x4x16
//! op2 depthwise 3x3 s1       -> t3 4x4x16
//! op3 ternary pointwise      -> t4 4x4x8
//! op4 add(t4, t1) residual   -> t5 4x4x8
//! op5 global average pool    -> t6 1x1x8
//! op6 linear classifier      -> t7 1x1x5 (int32 logits)
//! ```
//!
//! The byte-level helpers ([`entries`], [`fix_checksums`], [`assemble`], ...) read and patch
//! the container the way docs/FORMAT.md lays it out, independently of the engine's parser,
//! so tests can damage one thing and keep every checksum right.
#![allow(dead_code)]

use prom_engine::format::{
    SectionKind, ALIGN, GRAPH_HEADER_SIZE, HEADER_SIZE, MAGIC, OP_RECORD_SIZE, SECTION_ENTRY_SIZE,
    TENSOR_RECORD_SIZE, VERSION,
};
use prom_engine::graph::{TensorRecord, FLAG_RELU6};
use prom_engine::trits;
use prom_engine::{Metadata, ModelSpec, OpKind, OpSpec};
use prom_kernels::quantize_scale;

/// Stem output channels.
pub const C: usize = 8;
/// Expanded channels.
pub const E: usize = 16;
/// Classes.
pub const CLASSES: usize = 5;
/// Input extent.
pub const INPUT: u32 = 8;

/// Index of each op in [`small_spec`].
pub const OP_STEM: usize = 0;
pub const OP_EXPAND: usize = 1;
pub const OP_DW: usize = 2;
pub const OP_PROJECT: usize = 3;
pub const OP_ADD: usize = 4;
pub const OP_POOL: usize = 5;
pub const OP_LINEAR: usize = 6;

/// Deterministic xorshift PRNG so the model is the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }
}

fn int8_weights(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.range(-127, 127) as i8 as u8).collect()
}

/// Ternary weights in the file's layout (five trits per byte, `prom_engine::trits`; the
/// engine converts them to the kernels' four-trit codes at load time).
fn ternary_codes(rng: &mut Rng, n: usize, k: usize) -> Vec<u8> {
    let w: Vec<i8> = (0..n * k).map(|_| rng.range(-1, 1) as i8).collect();
    trits::pack(&w, n, k)
}

/// Per-channel requantization pairs from realistic scales via `quantize_scale`.
fn requant(rng: &mut Rng, c: usize, base: f64) -> (Vec<i32>, Vec<u8>) {
    (0..c)
        .map(|_| {
            let scale = base * (0.5 + rng.range(0, 1000) as f64 / 1000.0);
            quantize_scale(scale).expect("scale representable")
        })
        .unzip()
}

fn bias(rng: &mut Rng, c: usize, max_abs: i64) -> Vec<i32> {
    (0..c).map(|_| rng.range(-max_abs, max_abs) as i32).collect()
}

fn tensor(h: u32, w: u32, c: usize, scale: f32, zp: i8) -> TensorRecord {
    TensorRecord { height: h, width: w, channels: c as u32, scale, zero_point: zp }
}

fn conv(kind: OpKind, input0: u32, stride: u8) -> OpSpec {
    OpSpec { stride, flags: FLAG_RELU6, ..OpSpec::new(kind, input0) }
}

/// The metadata matching [`small_spec`].
pub fn small_metadata() -> Metadata {
    Metadata {
        architecture: "mobilenetv2".into(),
        width_multiplier: 0.35,
        input_height: INPUT,
        input_width: INPUT,
        classes: CLASSES as u32,
        producer: "prom-engine format tests".into(),
        producer_version: "0.1.0".into(),
        notes: "hand-built test model".into(),
    }
}

/// A small, valid model (see the module docs for its graph).
pub fn small_spec() -> ModelSpec {
    let mut rng = Rng::new(0x5eed_1234_abcd_ef01);
    let h = INPUT / 2;
    let tensors = vec![
        tensor(INPUT, INPUT, 3, 1.0 / 255.0, 0),
        tensor(h, h, C, 6.0 / 255.0, -128),
        tensor(h, h, E, 6.0 / 255.0, -128),
        tensor(h, h, E, 6.0 / 255.0, -128),
        tensor(h, h, C, 0.05, 3),
        tensor(h, h, C, 0.06, -2),
        tensor(1, 1, C, 0.03, 1),
        tensor(1, 1, CLASSES, 0.001, 0),
    ];

    let mut stem = conv(OpKind::Stem, 0, 2);
    stem.weights = int8_weights(&mut rng, 27 * C);
    stem.bias = bias(&mut rng, C, 20_000);
    (stem.multipliers, stem.shifts) = requant(&mut rng, C, 1e-4);

    let mut expand = conv(OpKind::PointwiseTernary, 1, 1);
    expand.weights = ternary_codes(&mut rng, E, C);
    expand.bias = bias(&mut rng, E, 500);
    (expand.multipliers, expand.shifts) = requant(&mut rng, E, 0.02);

    let mut dw = conv(OpKind::Depthwise, 2, 1);
    dw.weights = int8_weights(&mut rng, 9 * E);
    dw.bias = bias(&mut rng, E, 5_000);
    (dw.multipliers, dw.shifts) = requant(&mut rng, E, 3e-4);

    let mut project = OpSpec::new(OpKind::PointwiseTernary, 3);
    project.weights = ternary_codes(&mut rng, C, E);
    project.bias = bias(&mut rng, C, 500);
    (project.multipliers, project.shifts) = requant(&mut rng, C, 0.03);

    let mut add = OpSpec::new(OpKind::Add, 4);
    add.input1 = 1;
    add.multiplier_a = 1 << 20;
    add.multiplier_b = 3 << 19;
    add.shift = 21;

    let mut pool = OpSpec::new(OpKind::AvgPool, 5);
    let (m, s) = quantize_scale(0.06 / 0.03 / 16.0).expect("pool scale");
    pool.multiplier_a = m;
    pool.shift = s;

    let mut linear = OpSpec::new(OpKind::Linear, 6);
    linear.weights = int8_weights(&mut rng, C * CLASSES);
    linear.bias = bias(&mut rng, CLASSES, 100_000);

    ModelSpec {
        metadata: small_metadata(),
        labels: (0..CLASSES).map(|i| format!("class-{i}")).collect(),
        input_scale: 1.0 / 255.0,
        input_zero_point: 0,
        tensors,
        ops: vec![stem, expand, dw, project, add, pool, linear],
    }
}

// ---------------------------------------------------------------------------------------
// Byte-level view of the container (independent of the engine's parser).

/// Size of the header plus the four-entry section table.
pub const TABLE_END: usize = HEADER_SIZE + 4 * SECTION_ENTRY_SIZE;

/// A section table entry as stored (unvalidated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: usize,
    pub kind: u32,
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

pub fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
pub fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
pub fn wr_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn wr_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Byte position of section table entry `i`.
pub fn entry_pos(i: usize) -> usize {
    HEADER_SIZE + i * SECTION_ENTRY_SIZE
}

/// The four table entries of `bytes` (which must hold a whole header and table).
pub fn entries(bytes: &[u8]) -> Vec<Entry> {
    (0..4)
        .map(|i| {
            let at = entry_pos(i);
            Entry {
                index: i,
                kind: rd_u32(bytes, at),
                offset: rd_u64(bytes, at + 8),
                len: rd_u64(bytes, at + 16),
                crc: rd_u32(bytes, at + 24),
            }
        })
        .collect()
}

/// The table entry of `kind`.
pub fn entry(bytes: &[u8], kind: SectionKind) -> Entry {
    entries(bytes).into_iter().find(|e| e.kind == kind as u32).expect("section present")
}

/// Byte range of the section `kind` in `bytes`.
pub fn section_range(bytes: &[u8], kind: SectionKind) -> std::ops::Range<usize> {
    let e = entry(bytes, kind);
    e.offset as usize..(e.offset + e.len) as usize
}

/// Recomputes the header CRC (bytes 60..64): CRC-32 of bytes 0..60 then the section table.
pub fn fix_header_crc(bytes: &mut [u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..60]);
    h.update(&bytes[HEADER_SIZE..TABLE_END]);
    let crc = h.finalize();
    wr_u32(bytes, 60, crc);
}

/// Recomputes every section CRC whose declared range lies inside `bytes`, then the header
/// CRC, so only the structural damage a test made remains.
pub fn fix_checksums(bytes: &mut [u8]) {
    for e in entries(bytes) {
        let end = e.offset.checked_add(e.len);
        if let Some(end) = end.filter(|&end| end <= bytes.len() as u64) {
            let crc = crc32fast::hash(&bytes[e.offset as usize..end as usize]);
            wr_u32(bytes, entry_pos(e.index) + 24, crc);
        }
    }
    fix_header_crc(bytes);
}

/// Lays out a container exactly like the writer: header, table, 64-byte aligned sections
/// in the given order, file ending at the end of the last section.
pub fn assemble(sections: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let table_end = HEADER_SIZE + sections.len() * SECTION_ENTRY_SIZE;
    let mut at = table_end.div_ceil(ALIGN) * ALIGN;
    let mut offsets = Vec::new();
    for (_, data) in sections {
        offsets.push(at);
        at = (at + data.len()).div_ceil(ALIGN) * ALIGN;
    }
    let file_size = offsets.last().map_or(table_end, |o| o + sections.last().unwrap().1.len());
    let mut out = vec![0u8; file_size];
    out[..8].copy_from_slice(&MAGIC);
    wr_u32(&mut out, 8, VERSION);
    wr_u32(&mut out, 12, HEADER_SIZE as u32);
    wr_u32(&mut out, 16, sections.len() as u32);
    wr_u64(&mut out, 24, file_size as u64);
    wr_u64(&mut out, 32, HEADER_SIZE as u64);
    for (i, ((kind, data), &offset)) in sections.iter().zip(&offsets).enumerate() {
        let e = entry_pos(i);
        wr_u32(&mut out, e, *kind);
        wr_u64(&mut out, e + 8, offset as u64);
        wr_u64(&mut out, e + 16, data.len() as u64);
        wr_u32(&mut out, e + 24, crc32fast::hash(data));
        out[offset..offset + data.len()].copy_from_slice(data);
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&out[..60]);
    h.update(&out[HEADER_SIZE..table_end]);
    let crc = h.finalize();
    wr_u32(&mut out, 60, crc);
    out
}

/// The four sections of a (valid-layout) file, in table order.
pub fn split_sections(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
    entries(bytes)
        .into_iter()
        .map(|e| (e.kind, bytes[e.offset as usize..(e.offset + e.len) as usize].to_vec()))
        .collect()
}

/// Re-lays out `bytes` with the contents of section `kind` replaced by `data`.
pub fn replace_section(bytes: &[u8], kind: SectionKind, data: &[u8]) -> Vec<u8> {
    let mut sections = split_sections(bytes);
    for s in &mut sections {
        if s.0 == kind as u32 {
            s.1 = data.to_vec();
        }
    }
    assemble(&sections)
}

/// Position (in the file) of tensor record `i` of the graph section.
pub fn tensor_record_pos(bytes: &[u8], i: usize) -> usize {
    let g = section_range(bytes, SectionKind::Graph).start;
    g + GRAPH_HEADER_SIZE + i * TENSOR_RECORD_SIZE
}

/// Position (in the file) of op record `i` of the graph section.
pub fn op_record_pos(bytes: &[u8], i: usize) -> usize {
    let g = section_range(bytes, SectionKind::Graph).start;
    let tensors = rd_u32(bytes, g + 16) as usize;
    g + GRAPH_HEADER_SIZE + tensors * TENSOR_RECORD_SIZE + i * OP_RECORD_SIZE
}

/// Field offsets inside an op record.
pub mod op_field {
    pub const KIND: usize = 0;
    pub const STRIDE: usize = 1;
    pub const INPUT0: usize = 4;
    pub const INPUT1: usize = 8;
    pub const SHIFT: usize = 18;
    pub const MULTIPLIER_A: usize = 20;
    pub const WEIGHTS: usize = 32;
    pub const BIAS: usize = 48;
    pub const MULTIPLIERS: usize = 64;
    pub const SHIFTS: usize = 80;
}

/// Field offsets inside a tensor record.
pub mod tensor_field {
    pub const HEIGHT: usize = 0;
    pub const WIDTH: usize = 4;
    pub const CHANNELS: usize = 8;
    pub const SCALE: usize = 12;
}

/// Applies `patch` to a copy of `bytes` and recomputes every checksum.
pub fn patched(bytes: &[u8], patch: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = bytes.to_vec();
    patch(&mut b);
    fix_checksums(&mut b);
    b
}
