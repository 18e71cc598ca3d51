//! The `.prom` container: little-endian, a fixed header, a section table, 64-byte aligned
//! sections with CRC-32 checksums. Specified in docs/FORMAT.md ("The .prom file").
//!
//! This module only knows bytes: it parses and checks the container and the binary graph
//! records, with checked arithmetic and typed errors, before anything is used. The meaning of
//! the graph (shapes, quantization ranges) is checked in [`crate::graph`].

use crate::error::FormatError;
use crate::graph::{Blob, OpKind, OpRecord, TensorRecord};

/// File magic: "PROMMDL" and a NUL.
pub const MAGIC: [u8; 8] = *b"PROMMDL\0";
/// Format version this build reads and writes.
pub const VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 64;
/// Size of one section table entry.
pub const SECTION_ENTRY_SIZE: usize = 32;
/// Alignment of every section and of every weight blob.
pub const ALIGN: usize = 64;
/// Size of the graph header inside the GRAPH section.
pub const GRAPH_HEADER_SIZE: usize = 32;
/// Size of one tensor record.
pub const TENSOR_RECORD_SIZE: usize = 24;
/// Size of one op record.
pub const OP_RECORD_SIZE: usize = 128;
/// Largest number of sections a file may declare.
pub const MAX_SECTIONS: usize = 16;

/// Section kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SectionKind {
    /// UTF-8 JSON metadata.
    Meta = 1,
    /// UTF-8 class labels, one per line.
    Labels = 2,
    /// Binary graph: header, tensor records, op records.
    Graph = 3,
    /// Weight blobs referenced by the op records.
    Weights = 4,
}

impl SectionKind {
    /// All kinds, each required exactly once.
    pub const ALL: [SectionKind; 4] =
        [SectionKind::Meta, SectionKind::Labels, SectionKind::Graph, SectionKind::Weights];

    fn from_u32(v: u32) -> Option<SectionKind> {
        SectionKind::ALL.into_iter().find(|k| *k as u32 == v)
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Meta => "meta",
            SectionKind::Labels => "labels",
            SectionKind::Graph => "graph",
            SectionKind::Weights => "weights",
        }
    }
}

/// A section as found in the table (validated: inside the file, aligned, not overlapping,
/// checksum correct).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    /// Kind.
    pub kind: SectionKind,
    /// Byte offset in the file.
    pub offset: usize,
    /// Byte length.
    pub len: usize,
    /// CRC-32 of the section bytes.
    pub crc32: u32,
}

/// Little-endian reader over a byte slice with checked bounds.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }

    fn array<const N: usize>(&self, at: usize) -> Result<[u8; N], FormatError> {
        let end = at.checked_add(N).ok_or(FormatError::Truncated { what: self.what })?;
        let s = self.bytes.get(at..end).ok_or(FormatError::Truncated { what: self.what })?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub(crate) fn u8(&self, at: usize) -> Result<u8, FormatError> {
        Ok(self.array::<1>(at)?[0])
    }
    pub(crate) fn i8(&self, at: usize) -> Result<i8, FormatError> {
        Ok(self.u8(at)? as i8)
    }
    pub(crate) fn u32(&self, at: usize) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(at)?))
    }
    pub(crate) fn i32(&self, at: usize) -> Result<i32, FormatError> {
        Ok(i32::from_le_bytes(self.array(at)?))
    }
    pub(crate) fn f32(&self, at: usize) -> Result<f32, FormatError> {
        Ok(f32::from_le_bytes(self.array(at)?))
    }
    pub(crate) fn u64(&self, at: usize) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(at)?))
    }
}

/// Converts a file-declared u64 to usize, naming the field on failure.
fn to_usize(v: u64, what: &'static str) -> Result<usize, FormatError> {
    usize::try_from(v).map_err(|_| FormatError::OutOfRange { what, value: v })
}

/// Bytes at the start of a file that hold the header and the section table: what
/// [`parse_layout`] needs.
pub const PREFIX_SIZE: usize = HEADER_SIZE + 4 * SECTION_ENTRY_SIZE;

/// The layout a file's header and section table declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// File size from the header, equal to the end of the last section.
    pub file_size: usize,
    /// Meta, labels, graph and weights sections, in that order.
    pub sections: [Section; 4],
}

/// Parses and checks the header and section table (the first [`PREFIX_SIZE`] bytes of a
/// file; more are ignored) and the layout they declare: sections in bounds, not
/// overlapping, each placed at the first 64-byte boundary after what precedes it, the last
/// one ending the file. So a file is no larger than its sections plus alignment padding,
/// and a reader can check the declared size before reading the rest.
pub fn parse_layout(prefix: &[u8]) -> Result<Layout, FormatError> {
    if prefix.len() < HEADER_SIZE {
        return Err(FormatError::Truncated { what: "header" });
    }
    if prefix[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let h = Reader::new(prefix, "header");
    let version = h.u32(8)?;
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion { found: version, supported: VERSION });
    }
    let header_size = h.u32(12)? as usize;
    if header_size != HEADER_SIZE {
        return Err(FormatError::Invalid(format!("header size {header_size}, expected 64")));
    }
    let count = h.u32(16)? as usize;
    if count != SectionKind::ALL.len() {
        return Err(FormatError::Invalid(format!(
            "section count {count}, expected {} (meta, labels, graph, weights)",
            SectionKind::ALL.len()
        )));
    }
    let flags = h.u32(20)?;
    if flags != 0 {
        return Err(FormatError::Invalid(format!("unknown header flags {flags:#x}")));
    }
    let file_size = to_usize(h.u64(24)?, "file size")?;
    let table_offset = to_usize(h.u64(32)?, "section table offset")?;
    if table_offset != HEADER_SIZE {
        return Err(FormatError::Invalid(format!(
            "section table at {table_offset}, expected {HEADER_SIZE}"
        )));
    }
    let table_len = count * SECTION_ENTRY_SIZE;
    let table_end = HEADER_SIZE + table_len;
    if prefix.len() < table_end || file_size < table_end {
        return Err(FormatError::Truncated { what: "section table" });
    }
    if prefix[40..60].iter().any(|&b| b != 0) {
        return Err(FormatError::Invalid("reserved header bytes are not zero".into()));
    }
    let stored = h.u32(60)?;
    let computed = header_crc(&prefix[..60], &prefix[HEADER_SIZE..table_end]);
    if stored != computed {
        return Err(FormatError::Checksum { what: "header and section table".into() });
    }

    let t = Reader::new(&prefix[HEADER_SIZE..table_end], "section table");
    let mut found: [Option<Section>; 4] = [None; 4];
    for i in 0..count {
        let at = i * SECTION_ENTRY_SIZE;
        let raw_kind = t.u32(at)?;
        let kind = SectionKind::from_u32(raw_kind)
            .ok_or_else(|| FormatError::Invalid(format!("section {i}: unknown kind {raw_kind}")))?;
        if t.u32(at + 4)? != 0 || t.u32(at + 28)? != 0 {
            return Err(FormatError::Invalid(format!("section {}: non-zero flags", kind.name())));
        }
        let offset = to_usize(t.u64(at + 8)?, "section offset")?;
        let len = to_usize(t.u64(at + 16)?, "section length")?;
        let crc32 = t.u32(at + 24)?;
        let end = offset
            .checked_add(len)
            .ok_or(FormatError::OutOfRange { what: "section end", value: u64::MAX })?;
        if offset % ALIGN != 0 {
            return Err(FormatError::Invalid(format!(
                "section {} at offset {offset} is not 64-byte aligned",
                kind.name()
            )));
        }
        if offset < table_end || end > file_size {
            return Err(FormatError::SectionOutOfBounds {
                section: kind.name(),
                offset,
                len,
                file_len: file_size,
            });
        }
        let slot = &mut found[SectionKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)];
        if slot.is_some() {
            return Err(FormatError::Invalid(format!("section {} appears twice", kind.name())));
        }
        *slot = Some(Section { kind, offset, len, crc32 });
    }
    let mut out = Vec::with_capacity(4);
    for (s, kind) in found.iter().zip(SectionKind::ALL) {
        out.push(
            s.ok_or_else(|| FormatError::Invalid(format!("missing {} section", kind.name())))?,
        );
    }
    // No two sections may overlap.
    let mut sorted = out.clone();
    sorted.sort_by_key(|s| s.offset);
    for w in sorted.windows(2) {
        if w[0].offset + w[0].len > w[1].offset {
            return Err(FormatError::Overlap { first: w[0].kind.name(), second: w[1].kind.name() });
        }
    }
    // Sections follow each other with alignment padding only, and the last one ends the
    // file: no room for megabytes of padding that would be read but never used.
    let mut covered = table_end;
    for s in &sorted {
        if s.offset != covered.next_multiple_of(ALIGN) {
            return Err(FormatError::Invalid(format!(
                "{} bytes of padding before the {} section (at most 63, to align it)",
                s.offset - covered,
                s.kind.name()
            )));
        }
        covered = s.offset + s.len;
    }
    if file_size != covered {
        return Err(FormatError::Invalid(format!(
            "the header says {file_size} bytes but the last section ends at {covered}"
        )));
    }
    Ok(Layout { file_size, sections: [out[0], out[1], out[2], out[3]] })
}

/// Parses and checks the whole container in `bytes`: the layout ([`parse_layout`]), the
/// file size, zero padding and the section checksums; returns the four sections.
pub fn parse_container(bytes: &[u8]) -> Result<[Section; 4], FormatError> {
    let layout = parse_layout(bytes)?;
    if layout.file_size != bytes.len() {
        return Err(if layout.file_size > bytes.len() {
            FormatError::Truncated { what: "file (shorter than its header says)" }
        } else {
            FormatError::Invalid(format!(
                "file is {} bytes but its header says {}",
                bytes.len(),
                layout.file_size
            ))
        });
    }
    // Every byte outside the header, the table and the sections is zero padding (nothing
    // unchecked can hide in a file).
    let mut sorted = layout.sections;
    sorted.sort_by_key(|s| s.offset);
    let mut covered = PREFIX_SIZE;
    for s in &sorted {
        if bytes[covered..s.offset].iter().any(|&b| b != 0) {
            return Err(FormatError::Invalid(format!(
                "non-zero padding before the {} section",
                s.kind.name()
            )));
        }
        covered = s.offset + s.len;
    }
    for s in &layout.sections {
        if crc32fast::hash(&bytes[s.offset..s.offset + s.len]) != s.crc32 {
            return Err(FormatError::Checksum { what: format!("{} section", s.kind.name()) });
        }
    }
    Ok(layout.sections)
}

/// CRC-32 of the first 60 header bytes followed by the section table.
pub(crate) fn header_crc(header60: &[u8], table: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header60);
    h.update(table);
    h.finalize()
}

/// The graph header of the GRAPH section.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphHeader {
    /// Input height (pixels).
    pub input_height: u32,
    /// Input width (pixels).
    pub input_width: u32,
    /// Scale of the uint8 input (`real = scale * (u - zero_point)`), informational: the
    /// normalisation is folded into the stem.
    pub input_scale: f32,
    /// Zero point of the uint8 input: the stem's padding value.
    pub input_zero_point: u8,
    /// Number of tensor records.
    pub tensor_count: u32,
    /// Number of op records.
    pub op_count: u32,
}

/// Upper bounds that keep a hostile file from asking for absurd allocations.
pub const MAX_TENSORS: usize = 4096;
/// See [`MAX_TENSORS`].
pub const MAX_OPS: usize = 4096;

/// Parses the GRAPH section's records (byte-level checks only).
pub fn parse_graph(
    graph: &[u8],
) -> Result<(GraphHeader, Vec<TensorRecord>, Vec<OpRecord>), FormatError> {
    let r = Reader::new(graph, "graph header");
    let header = GraphHeader {
        input_height: r.u32(0)?,
        input_width: r.u32(4)?,
        input_scale: r.f32(8)?,
        input_zero_point: r.u8(12)?,
        tensor_count: r.u32(16)?,
        op_count: r.u32(20)?,
    };
    if r.u8(13)? != 0 || r.u8(14)? != 0 || r.u8(15)? != 0 || r.u32(24)? != 0 || r.u32(28)? != 0 {
        return Err(FormatError::Invalid("graph header: reserved bytes are not zero".into()));
    }
    let tensors = header.tensor_count as usize;
    let ops = header.op_count as usize;
    if tensors == 0 || tensors > MAX_TENSORS {
        return Err(FormatError::Invalid(format!(
            "graph: {tensors} tensors (allowed 1..={MAX_TENSORS})"
        )));
    }
    if ops == 0 || ops > MAX_OPS {
        return Err(FormatError::Invalid(format!("graph: {ops} ops (allowed 1..={MAX_OPS})")));
    }
    let expected = GRAPH_HEADER_SIZE + tensors * TENSOR_RECORD_SIZE + ops * OP_RECORD_SIZE;
    if graph.len() != expected {
        return Err(if graph.len() < expected {
            FormatError::Truncated { what: "graph records" }
        } else {
            FormatError::Invalid(format!(
                "graph section is {} bytes, {tensors} tensors and {ops} ops need {expected}",
                graph.len()
            ))
        });
    }
    let mut tensor_records = Vec::with_capacity(tensors);
    for i in 0..tensors {
        let at = GRAPH_HEADER_SIZE + i * TENSOR_RECORD_SIZE;
        let t = Reader::new(&graph[at..at + TENSOR_RECORD_SIZE], "tensor record");
        if (17..24).any(|b| graph[at + b] != 0) {
            return Err(FormatError::Invalid(format!("tensor {i}: reserved bytes are not zero")));
        }
        tensor_records.push(TensorRecord {
            height: t.u32(0)?,
            width: t.u32(4)?,
            channels: t.u32(8)?,
            scale: t.f32(12)?,
            zero_point: t.i8(16)?,
        });
    }
    let ops_at = GRAPH_HEADER_SIZE + tensors * TENSOR_RECORD_SIZE;
    let mut op_records = Vec::with_capacity(ops);
    for i in 0..ops {
        let at = ops_at + i * OP_RECORD_SIZE;
        let o = Reader::new(&graph[at..at + OP_RECORD_SIZE], "op record");
        let raw_kind = o.u8(0)?;
        let kind = OpKind::from_u8(raw_kind)
            .ok_or_else(|| FormatError::Invalid(format!("op {i}: unknown kind {raw_kind}")))?;
        if o.u8(3)? != 0
            || o.u8(19)? != 0
            || o.u32(28)? != 0
            || graph[at + 96..at + 128].iter().any(|&b| b != 0)
        {
            return Err(FormatError::Invalid(format!("op {i}: reserved bytes are not zero")));
        }
        let blob = |off: usize| -> Result<Blob, FormatError> {
            Ok(Blob {
                offset: to_usize(o.u64(off)?, "blob offset")?,
                len: to_usize(o.u64(off + 8)?, "blob length")?,
            })
        };
        op_records.push(OpRecord {
            kind,
            stride: o.u8(1)?,
            flags: o.u8(2)?,
            input0: o.u32(4)?,
            input1: o.u32(8)?,
            output: o.u32(12)?,
            output_min: o.i8(16)?,
            output_max: o.i8(17)?,
            shift: o.u8(18)?,
            multiplier_a: o.i32(20)?,
            multiplier_b: o.i32(24)?,
            weights: blob(32)?,
            bias: blob(48)?,
            multipliers: blob(64)?,
            shifts: blob(80)?,
        });
    }
    Ok((header, tensor_records, op_records))
}

/// Appends `value` little-endian.
pub(crate) trait PutLe {
    fn put_u8(&mut self, v: u8);
    fn put_u32(&mut self, v: u32);
    fn put_i32(&mut self, v: i32);
    fn put_u64(&mut self, v: u64);
    fn put_f32(&mut self, v: f32);
    fn pad_to(&mut self, align: usize);
}

impl PutLe for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_i32(&mut self, v: i32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_f32(&mut self, v: f32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn pad_to(&mut self, align: usize) {
        let len = self.len().div_ceil(align) * align;
        self.resize(len, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::assemble;

    fn container() -> Vec<u8> {
        assemble(&[
            (SectionKind::Meta, b"{}"),
            (SectionKind::Labels, b"a"),
            (SectionKind::Graph, &[1, 2, 3]),
            (SectionKind::Weights, &[4; 70]),
        ])
    }

    #[test]
    fn parses_what_assemble_writes() {
        let sections = parse_container(&container()).unwrap();
        assert_eq!(sections.map(|s| s.kind), SectionKind::ALL);
        assert!(sections.iter().all(|s| s.offset % ALIGN == 0));
    }

    #[test]
    fn padding_must_be_zero() {
        let bytes = container();
        let sections = parse_container(&bytes).unwrap();
        // The byte right after the META section is padding.
        let mut damaged = bytes.clone();
        damaged[sections[0].offset + sections[0].len] = 1;
        let err = parse_container(&damaged).unwrap_err();
        assert!(err.to_string().contains("padding"), "{err}");
    }
}
