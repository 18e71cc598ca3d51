//! A loaded model: the file bytes (memory-mapped, or an aligned copy), its validated
//! metadata, labels and graph, and typed zero-copy views of its weights.

use crate::error::{FormatError, OpenError};
use crate::format::{parse_container, parse_graph, parse_layout, Section, PREFIX_SIZE};
use crate::graph::{Blob, Graph};
use prom_kernels::AlignedBuf;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Model metadata (the META section, JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Architecture name, e.g. `mobilenetv2`.
    pub architecture: String,
    /// Width multiplier of the architecture.
    pub width_multiplier: f32,
    /// Input height in pixels.
    pub input_height: u32,
    /// Input width in pixels.
    pub input_width: u32,
    /// Number of classes.
    pub classes: u32,
    /// Program that wrote the file.
    pub producer: String,
    /// Its version.
    pub producer_version: String,
    /// Free-form notes (quantization details, provenance).
    #[serde(default)]
    pub notes: String,
}

/// Default size limit of [`Model::open`] and [`Model::read`]: 64 MiB (MobileNetV2-1.4 at
/// 224x224 is about 7 MB). Readers that take the limit from configuration use
/// [`Model::open_limited`] and [`Model::read_limited`].
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 64 << 20;

/// Where the model bytes live.
enum Backing {
    Mapped(memmap2::Mmap),
    Owned(AlignedBuf),
}

/// A validated model. Cheap to share behind an `Arc`.
pub struct Model {
    backing: Backing,
    metadata: Metadata,
    labels: Vec<String>,
    graph: Graph,
    sections: [Section; 4],
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("metadata", &self.metadata)
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

impl Model {
    /// Memory-maps and validates a model file of at most [`DEFAULT_MAX_MODEL_BYTES`].
    pub fn open(path: impl AsRef<Path>) -> Result<Model, OpenError> {
        Model::open_limited(path, DEFAULT_MAX_MODEL_BYTES)
    }

    /// Memory-maps and validates a model file of at most `max_bytes` bytes.
    pub fn open_limited(path: impl AsRef<Path>, max_bytes: u64) -> Result<Model, OpenError> {
        let path = path.as_ref();
        let io = |source| OpenError::Io { path: path.display().to_string(), source };
        let (mut file, len) = crate::files::open_regular(path, max_bytes, "model").map_err(io)?;
        check_prefix(&mut file, len).map_err(|source| format_error(path, source))?;
        // SAFETY: the map is read-only and private to this process. The model file is
        // replaced by writers through rename (never modified in place, see `write`), so the
        // mapped bytes do not change under us; every byte is validated before use.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Model::validate(Backing::Mapped(map)).map_err(|source| format_error(path, source))
    }

    /// Reads a model file of at most [`DEFAULT_MAX_MODEL_BYTES`] into aligned memory and
    /// validates it. Unlike [`Model::open`], the model stays intact if the file is later
    /// overwritten in place or truncated (with a map, touching a truncated page is SIGBUS);
    /// the daemon loads models this way.
    pub fn read(path: impl AsRef<Path>) -> Result<Model, OpenError> {
        Model::read_limited(path, DEFAULT_MAX_MODEL_BYTES)
    }

    /// [`Model::read`] with a size limit of `max_bytes`. Refuses, without blocking, what is
    /// not a regular file (a FIFO would block `open` until a writer comes) and files over
    /// the limit; reads the header and section table first and the rest only when the size
    /// they declare is the file's.
    pub fn read_limited(path: impl AsRef<Path>, max_bytes: u64) -> Result<Model, OpenError> {
        use std::io::Read;
        let path = path.as_ref();
        let io = |source| OpenError::Io { path: path.display().to_string(), source };
        let (mut file, len) = crate::files::open_regular(path, max_bytes, "model").map_err(io)?;
        let prefix = check_prefix(&mut file, len).map_err(|source| format_error(path, source))?;
        let mut buf = AlignedBuf::zeroed(len);
        let bytes = buf.as_u8_mut(len);
        bytes[..prefix.len()].copy_from_slice(&prefix);
        file.read_exact(&mut bytes[prefix.len()..]).map_err(io)?;
        // A file that grew while being read is not the file whose length was checked.
        if file.read(&mut [0u8; 1]).map_err(io)? != 0 {
            return Err(io(std::io::Error::other("the file changed while it was read")));
        }
        Model::validate(Backing::Owned(buf)).map_err(|source| format_error(path, source))
    }

    /// Validates a model held in memory (copied into an aligned buffer).
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, FormatError> {
        let mut buf = AlignedBuf::zeroed(bytes.len());
        buf.as_u8_mut(bytes.len()).copy_from_slice(bytes);
        Model::validate(Backing::Owned(buf))
    }

    fn validate(backing: Backing) -> Result<Model, FormatError> {
        let bytes = match &backing {
            Backing::Mapped(m) => &m[..],
            Backing::Owned(b) => b.as_u8(b.len()),
        };
        let sections = parse_container(bytes)?;
        let [meta, labels, graph, weights] = sections;
        let slice = |s: &Section| &bytes[s.offset..s.offset + s.len];
        let metadata: Metadata = std::str::from_utf8(slice(&meta))
            .map_err(|e| FormatError::Metadata(format!("not UTF-8: {e}")))
            .and_then(|s| {
                serde_json::from_str(s).map_err(|e| FormatError::Metadata(e.to_string()))
            })?;
        let labels_text = std::str::from_utf8(slice(&labels))
            .map_err(|e| FormatError::Invalid(format!("labels are not UTF-8: {e}")))?;
        let labels: Vec<String> = if labels_text.is_empty() {
            Vec::new()
        } else {
            labels_text.split('\n').map(str::to_owned).collect()
        };
        let (header, tensors, ops) = parse_graph(slice(&graph))?;
        let graph = Graph::validate(header, &tensors, &ops, weights.offset, slice(&weights))?;
        check_metadata(&metadata, &labels, &graph)?;
        Ok(Model { backing, metadata, labels, graph, sections })
    }

    /// All bytes of the model.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mapped(m) => &m[..],
            Backing::Owned(b) => b.as_u8(b.len()),
        }
    }

    /// Metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Class labels (one per class).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The validated graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The four sections (meta, labels, graph, weights) with offsets, sizes and checksums.
    pub fn sections(&self) -> &[Section; 4] {
        &self.sections
    }

    /// CRC-32 of the whole file, a short model identity for logs and D-Bus.
    pub fn checksum(&self) -> u32 {
        crc32fast::hash(self.bytes())
    }

    /// A blob's bytes (blobs of a validated graph are inside the file).
    pub fn blob_u8(&self, b: Blob) -> &[u8] {
        &self.bytes()[b.offset..b.offset + b.len]
    }

    /// A blob as int8 values.
    pub fn blob_i8(&self, b: Blob) -> &[i8] {
        let bytes = self.blob_u8(b);
        // SAFETY: i8 and u8 have the same size and alignment and every bit pattern is valid.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
    }

    /// A blob as little-endian int32 values, in place.
    pub fn blob_i32(&self, b: Blob) -> &[i32] {
        let bytes = self.blob_u8(b);
        assert!(
            b.len.is_multiple_of(4) && (bytes.as_ptr() as usize).is_multiple_of(4),
            "unaligned i32 blob"
        );
        // SAFETY: validated blobs start at a 64-byte aligned file offset and the file data
        // starts on a page (mmap) or 64-byte (AlignedBuf) boundary, so the pointer is 4-byte
        // aligned (asserted); the length is a multiple of 4; every bit pattern is a valid
        // i32; the target is little-endian (checked at compile time in lib.rs), like the file.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<i32>(), bytes.len() / 4) }
    }
}

fn format_error(path: &Path, source: FormatError) -> OpenError {
    OpenError::Format { path: path.display().to_string(), source }
}

/// Reads the header and section table at the start of `file` (`len` bytes) and checks the
/// layout they declare against `len` before the rest is read. Returns the bytes read.
fn check_prefix(file: &mut std::fs::File, len: usize) -> Result<Vec<u8>, FormatError> {
    use std::io::Read;
    let mut prefix = vec![0u8; PREFIX_SIZE.min(len)];
    file.read_exact(&mut prefix)
        .map_err(|_| FormatError::Truncated { what: "file (shorter than its size)" })?;
    let layout = parse_layout(&prefix)?;
    if layout.file_size != len {
        return Err(if layout.file_size > len {
            FormatError::Truncated { what: "file (shorter than its header says)" }
        } else {
            FormatError::Invalid(format!(
                "file is {len} bytes but its header says {}",
                layout.file_size
            ))
        });
    }
    Ok(prefix)
}

fn check_metadata(meta: &Metadata, labels: &[String], graph: &Graph) -> Result<(), FormatError> {
    let err = |m: String| FormatError::Metadata(m);
    if meta.architecture.trim().is_empty() {
        return Err(err("architecture is empty".into()));
    }
    if !(meta.width_multiplier.is_finite() && meta.width_multiplier > 0.0) {
        return Err(err(format!("width_multiplier {} is not positive", meta.width_multiplier)));
    }
    if (meta.input_height, meta.input_width)
        != (graph.header.input_height, graph.header.input_width)
    {
        return Err(err(format!(
            "input size {}x{} differs from the graph's {}x{}",
            meta.input_height,
            meta.input_width,
            graph.header.input_height,
            graph.header.input_width
        )));
    }
    if meta.classes as usize != graph.classes() {
        return Err(err(format!(
            "classes {} differs from the classifier's {} outputs",
            meta.classes,
            graph.classes()
        )));
    }
    if labels.len() != graph.classes() {
        return Err(FormatError::Invalid(format!(
            "{} labels for {} classes",
            labels.len(),
            graph.classes()
        )));
    }
    for (i, label) in labels.iter().enumerate() {
        check_text(&format!("label {i} (line {})", i + 1), label, MAX_LABEL_BYTES, "")
            .map_err(FormatError::Invalid)?;
        if label.trim().is_empty() {
            return Err(FormatError::Invalid(format!("label {i} (line {}) is empty", i + 1)));
        }
    }
    let fields = [
        ("architecture", &meta.architecture, MAX_LABEL_BYTES, ""),
        ("producer", &meta.producer, MAX_LABEL_BYTES, ""),
        ("producer_version", &meta.producer_version, MAX_LABEL_BYTES, ""),
        ("notes", &meta.notes, MAX_NOTES_BYTES, "\n\t"),
    ];
    for (name, text, max, allowed) in fields {
        check_text(name, text, max, allowed).map_err(err)?;
    }
    Ok(())
}

/// Longest class label, architecture or producer string, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// Longest metadata `notes`, in bytes.
pub const MAX_NOTES_BYTES: usize = 64 << 10;

/// Labels and metadata strings reach D-Bus messages, logs and terminals: at most `max`
/// bytes and no control characters (NUL makes a D-Bus message invalid, and the bus then
/// drops the daemon) other than those in `allowed`.
fn check_text(what: &str, text: &str, max: usize, allowed: &str) -> Result<(), String> {
    if text.len() > max {
        return Err(format!("{what} is {} bytes long (at most {max})", text.len()));
    }
    match text.char_indices().find(|&(_, c)| c.is_control() && !allowed.contains(c)) {
        Some((at, c)) => {
            Err(format!("{what} contains the control character U+{:04X} at byte {at}", c as u32))
        }
        None => Ok(()),
    }
}
