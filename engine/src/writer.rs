//! Writing `.prom` files: serialise a [`ModelSpec`] and replace the target atomically
//! (write a temporary file in the same directory, fsync, rename).

use crate::format::{
    header_crc, PutLe, SectionKind, ALIGN, HEADER_SIZE, MAGIC, SECTION_ENTRY_SIZE, VERSION,
};
use crate::graph::{OpKind, TensorRecord, NO_TENSOR};
use crate::model::Metadata;
use std::io::Write;
use std::path::Path;

/// One op with its weights, as written.
#[derive(Clone, Debug, PartialEq)]
pub struct OpSpec {
    /// Kind.
    pub kind: OpKind,
    /// Stride.
    pub stride: u8,
    /// Flags (bit 0: ReLU6).
    pub flags: u8,
    /// First input tensor.
    pub input0: u32,
    /// Second input tensor (add), else [`NO_TENSOR`].
    pub input1: u32,
    /// Lower clamp bound.
    pub output_min: i8,
    /// Upper clamp bound.
    pub output_max: i8,
    /// Per-tensor shift (add, avgpool).
    pub shift: u8,
    /// Per-tensor multiplier (add input 0, avgpool).
    pub multiplier_a: i32,
    /// Add input 1 multiplier.
    pub multiplier_b: i32,
    /// Weights bytes (int8 weights, or packed ternary codes).
    pub weights: Vec<u8>,
    /// Bias per output channel.
    pub bias: Vec<i32>,
    /// Requantization multiplier per output channel.
    pub multipliers: Vec<i32>,
    /// Requantization shift per output channel.
    pub shifts: Vec<u8>,
}

impl OpSpec {
    /// An op of `kind` reading `input0` with everything else empty.
    pub fn new(kind: OpKind, input0: u32) -> OpSpec {
        OpSpec {
            kind,
            stride: 1,
            flags: 0,
            input0,
            input1: NO_TENSOR,
            output_min: -128,
            output_max: 127,
            shift: 0,
            multiplier_a: 0,
            multiplier_b: 0,
            weights: Vec::new(),
            bias: Vec::new(),
            multipliers: Vec::new(),
            shifts: Vec::new(),
        }
    }
}

/// A whole model, as written.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Metadata.
    pub metadata: Metadata,
    /// Class labels.
    pub labels: Vec<String>,
    /// Input scale (informational).
    pub input_scale: f32,
    /// uint8 input zero point.
    pub input_zero_point: u8,
    /// Tensors (0 = input, `i + 1` = output of op `i`).
    pub tensors: Vec<TensorRecord>,
    /// Ops in execution order.
    pub ops: Vec<OpSpec>,
}

fn weights_blob(weights: &mut Vec<u8>, data: &[u8]) -> (u64, u64) {
    if data.is_empty() {
        return (0, 0);
    }
    weights.pad_to(ALIGN);
    let offset = weights.len();
    weights.extend_from_slice(data);
    (offset as u64, data.len() as u64)
}

fn le_bytes_i32(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl ModelSpec {
    /// Serialises the model.
    pub fn to_bytes(&self) -> Vec<u8> {
        let meta = serde_json::to_vec_pretty(&self.metadata).expect("metadata serialises");
        let labels = self.labels.join("\n").into_bytes();
        let mut weights = Vec::new();
        let mut graph = Vec::new();
        let input = &self.tensors[0];
        graph.put_u32(input.height);
        graph.put_u32(input.width);
        graph.put_f32(self.input_scale);
        graph.put_u8(self.input_zero_point);
        graph.extend_from_slice(&[0; 3]);
        graph.put_u32(self.tensors.len() as u32);
        graph.put_u32(self.ops.len() as u32);
        graph.put_u32(0);
        graph.put_u32(0);
        for t in &self.tensors {
            graph.put_u32(t.height);
            graph.put_u32(t.width);
            graph.put_u32(t.channels);
            graph.put_f32(t.scale);
            graph.put_u8(t.zero_point as u8);
            graph.extend_from_slice(&[0; 7]);
        }
        for (i, op) in self.ops.iter().enumerate() {
            let start = graph.len();
            graph.put_u8(op.kind as u8);
            graph.put_u8(op.stride);
            graph.put_u8(op.flags);
            graph.put_u8(0);
            graph.put_u32(op.input0);
            graph.put_u32(op.input1);
            graph.put_u32(i as u32 + 1);
            graph.put_u8(op.output_min as u8);
            graph.put_u8(op.output_max as u8);
            graph.put_u8(op.shift);
            graph.put_u8(0);
            graph.put_i32(op.multiplier_a);
            graph.put_i32(op.multiplier_b);
            graph.put_u32(0);
            for data in [
                op.weights.clone(),
                le_bytes_i32(&op.bias),
                le_bytes_i32(&op.multipliers),
                op.shifts.clone(),
            ] {
                let (offset, len) = weights_blob(&mut weights, &data);
                graph.put_u64(offset);
                graph.put_u64(len);
            }
            graph.resize(start + crate::format::OP_RECORD_SIZE, 0);
        }
        assemble(&[
            (SectionKind::Meta, &meta),
            (SectionKind::Labels, &labels),
            (SectionKind::Graph, &graph),
            (SectionKind::Weights, &weights),
        ])
    }

    /// Writes the model to `path` atomically: a temporary file next to it, fsync, rename.
    pub fn write(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        write_atomically(path.as_ref(), &self.to_bytes())
    }
}

/// Lays out header, section table and 64-byte aligned sections.
pub(crate) fn assemble(sections: &[(SectionKind, &[u8])]) -> Vec<u8> {
    let table_len = sections.len() * SECTION_ENTRY_SIZE;
    let mut offsets = Vec::new();
    let mut at = (HEADER_SIZE + table_len).div_ceil(ALIGN) * ALIGN;
    for (_, data) in sections {
        offsets.push(at);
        at = (at + data.len()).div_ceil(ALIGN) * ALIGN;
    }
    let file_size =
        offsets.last().map(|&o| o + sections.last().map_or(0, |s| s.1.len())).unwrap_or(at);
    let mut table = Vec::with_capacity(table_len);
    for ((kind, data), &offset) in sections.iter().zip(&offsets) {
        table.put_u32(*kind as u32);
        table.put_u32(0);
        table.put_u64(offset as u64);
        table.put_u64(data.len() as u64);
        table.put_u32(crc32fast::hash(data));
        table.put_u32(0);
    }
    let mut out = Vec::with_capacity(file_size);
    out.extend_from_slice(&MAGIC);
    out.put_u32(VERSION);
    out.put_u32(HEADER_SIZE as u32);
    out.put_u32(sections.len() as u32);
    out.put_u32(0);
    out.put_u64(file_size as u64);
    out.put_u64(HEADER_SIZE as u64);
    out.extend_from_slice(&[0; 20]);
    let crc = header_crc(&out[..60], &table);
    out.put_u32(crc);
    out.extend_from_slice(&table);
    for ((_, data), &offset) in sections.iter().zip(&offsets) {
        out.resize(offset, 0);
        out.extend_from_slice(data);
    }
    debug_assert_eq!(out.len(), file_size);
    out
}

/// Writes `bytes` to a temporary file in `path`'s directory, syncs it and renames it over
/// `path`, so readers (and memory maps of the old file) never see a partial model.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "model path has no file name")
    })?;
    // Unique per process and call, so concurrent writers never share a temporary file.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.{}.{n}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
