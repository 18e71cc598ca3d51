//! # prom-engine
//!
//! The `.prom` model format (memory-mapped, validated with checked arithmetic before any
//! use, typed errors) and the integer-only engine that runs PROM-quantized MobileNetV2
//! models on the kernels of `prom-kernels`. Specified in docs/FORMAT.md.

#[cfg(not(target_endian = "little"))]
compile_error!(
    "prom-engine reads little-endian model data in place: big-endian hosts are not supported"
);

pub mod error;
pub mod files;
pub mod format;
pub mod graph;
pub mod model;
pub mod pack;
pub mod trits;
pub mod writer;

pub use error::{FormatError, OpenError};
pub use graph::{Blob, Graph, Op, OpKind, Tensor};
pub use model::{Metadata, Model, DEFAULT_MAX_MODEL_BYTES, MAX_LABEL_BYTES, MAX_NOTES_BYTES};
pub use writer::{ModelSpec, OpSpec};

pub mod exec;
mod pool;

pub use exec::{softmax, top_k, LayerInfo, Plan, PointwiseMode, State};
pub mod mobilenet;
pub use mobilenet::{distinct_layer_shapes, synthesize, SynthConfig, SynthError};
