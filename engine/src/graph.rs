//! The network graph stored in a `.prom` file: tensors (shape and quantization) and ops in
//! execution order, each op producing the next tensor. [`Graph::validate`] checks every
//! shape, blob and quantization parameter against the numeric contract before use.

use crate::error::FormatError;
use crate::format::{GraphHeader, ALIGN};
use prom_kernels::params::{ADD_MAX_MULTIPLIER, ADD_MAX_SHIFT, MAX_SHIFT, MIN_SHIFT};
use prom_kernels::MAX_POINTWISE_K;

/// Op kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpKind {
    /// 3x3 stride-2 conv from uint8 RGB (the stem).
    Stem = 1,
    /// Depthwise 3x3 conv, stride 1 or 2.
    Depthwise = 2,
    /// Ternary pointwise (1x1) conv.
    PointwiseTernary = 3,
    /// Quantized residual add.
    Add = 4,
    /// Global average pool.
    AvgPool = 5,
    /// Int8 linear classifier to int32 logits.
    Linear = 6,
    /// Int8 pointwise (1x1) conv (a layer kept at int8 precision; multiply kernels).
    PointwiseInt8 = 7,
}

impl OpKind {
    /// All kinds.
    pub const ALL: [OpKind; 7] = [
        OpKind::Stem,
        OpKind::Depthwise,
        OpKind::PointwiseTernary,
        OpKind::Add,
        OpKind::AvgPool,
        OpKind::Linear,
        OpKind::PointwiseInt8,
    ];

    pub(crate) fn from_u8(v: u8) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| *k as u8 == v)
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Stem => "stem",
            OpKind::Depthwise => "depthwise",
            OpKind::PointwiseTernary => "pointwise",
            OpKind::Add => "add",
            OpKind::AvgPool => "avgpool",
            OpKind::Linear => "linear",
            OpKind::PointwiseInt8 => "pointwise-int8",
        }
    }

    /// Whether the op is a pointwise (1x1) convolution, ternary or int8.
    pub fn is_pointwise(self) -> bool {
        matches!(self, OpKind::PointwiseTernary | OpKind::PointwiseInt8)
    }
}

/// A byte range inside the WEIGHTS section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Blob {
    /// Offset from the start of the WEIGHTS section (a multiple of 64 when non-empty).
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// A tensor record as stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorRecord {
    /// Height.
    pub height: u32,
    /// Width.
    pub width: u32,
    /// Channels.
    pub channels: u32,
    /// Quantization scale (`real = scale * (q - zero_point)`).
    pub scale: f32,
    /// Zero point (0 for the uint8 input and the int32 logits).
    pub zero_point: i8,
}

/// An op record as stored (see docs/FORMAT.md for the meaning of each field per kind).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpRecord {
    /// Kind.
    pub kind: OpKind,
    /// Stride (stem 2, depthwise 1 or 2, others 1).
    pub stride: u8,
    /// Bit 0: the op ends in ReLU6 (informational; the clamp bounds are what counts).
    pub flags: u8,
    /// First input tensor.
    pub input0: u32,
    /// Second input tensor (add only; `u32::MAX` otherwise).
    pub input1: u32,
    /// Output tensor.
    pub output: u32,
    /// Lower clamp bound.
    pub output_min: i8,
    /// Upper clamp bound.
    pub output_max: i8,
    /// Per-tensor shift (add, avgpool).
    pub shift: u8,
    /// Per-tensor multiplier (add: of input 0; avgpool).
    pub multiplier_a: i32,
    /// Add: multiplier of input 1.
    pub multiplier_b: i32,
    /// Weights.
    pub weights: Blob,
    /// int32 bias per output channel.
    pub bias: Blob,
    /// int32 multiplier per output channel.
    pub multipliers: Blob,
    /// u8 shift per output channel.
    pub shifts: Blob,
}

/// No second input.
pub const NO_TENSOR: u32 = u32::MAX;
/// Flag bit: ReLU6.
pub const FLAG_RELU6: u8 = 1;

/// A validated tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tensor {
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Channels.
    pub channels: usize,
    /// Scale.
    pub scale: f32,
    /// Zero point.
    pub zero_point: i8,
}

impl Tensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.height * self.width * self.channels
    }
    /// Whether the tensor has no elements (never true for a validated tensor).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A validated op; blobs are absolute byte ranges in the model data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Op {
    /// The stored record, with blob offsets made absolute (file offsets).
    pub record: OpRecord,
    /// Multiply-accumulates of the op (0 for add and pool).
    pub macs: u64,
    /// Parameter count (weights + biases).
    pub params: u64,
}

/// A validated graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// Header fields.
    pub header: GraphHeader,
    /// Tensors; tensor 0 is the uint8 input, tensor `i + 1` the output of op `i`.
    pub tensors: Vec<Tensor>,
    /// Ops in execution order; the last one is the linear classifier.
    pub ops: Vec<Op>,
}

/// Largest tensor extent accepted.
const MAX_EXTENT: u32 = 4096;
/// Largest tensor element count accepted (64 Mi).
const MAX_ELEMENTS: usize = 1 << 26;

fn invalid(msg: String) -> FormatError {
    FormatError::Invalid(msg)
}

impl Graph {
    /// Checks the records against each other and against the weights section
    /// (`weights_offset..weights_offset + weights.len()` in the file), using `weights` to
    /// check value ranges (ternary codes, shifts, multipliers, int8 weight range).
    pub fn validate(
        header: GraphHeader,
        tensor_records: &[TensorRecord],
        op_records: &[OpRecord],
        weights_offset: usize,
        weights: &[u8],
    ) -> Result<Graph, FormatError> {
        if tensor_records.len() != op_records.len() + 1 {
            return Err(invalid(format!(
                "graph: {} tensors for {} ops (each op produces one tensor, plus the input)",
                tensor_records.len(),
                op_records.len()
            )));
        }
        let mut tensors = Vec::with_capacity(tensor_records.len());
        for (i, t) in tensor_records.iter().enumerate() {
            for (name, v) in [("height", t.height), ("width", t.width), ("channels", t.channels)] {
                if v == 0 || v > MAX_EXTENT {
                    return Err(invalid(format!(
                        "tensor {i}: {name} {v} outside 1..={MAX_EXTENT}"
                    )));
                }
            }
            let len = t.height as usize * t.width as usize * t.channels as usize;
            if len > MAX_ELEMENTS {
                return Err(invalid(format!("tensor {i}: {len} elements is too large")));
            }
            if !(t.scale.is_finite() && t.scale > 0.0) {
                return Err(invalid(format!("tensor {i}: scale {} is not positive", t.scale)));
            }
            tensors.push(Tensor {
                height: t.height as usize,
                width: t.width as usize,
                channels: t.channels as usize,
                scale: t.scale,
                zero_point: t.zero_point,
            });
        }
        let input = tensors[0];
        if input.height != header.input_height as usize
            || input.width != header.input_width as usize
            || input.channels != 3
        {
            return Err(invalid(format!(
                "tensor 0 (input) is {}x{}x{}, the graph header says {}x{}x3",
                input.height, input.width, input.channels, header.input_height, header.input_width
            )));
        }
        if input.zero_point != 0 {
            return Err(invalid("tensor 0 (input): zero point field must be 0 (the uint8 zero point is in the graph header)".into()));
        }
        let blobs = BlobCheck { weights_offset, weights };
        let mut ops = Vec::with_capacity(op_records.len());
        for (i, rec) in op_records.iter().enumerate() {
            let ctx = |m: String| invalid(format!("op {i} ({}): {m}", rec.kind.name()));
            if rec.output as usize != i + 1 {
                return Err(ctx(format!("output tensor {} must be {}", rec.output, i + 1)));
            }
            let in0 = rec.input0 as usize;
            if in0 > i {
                return Err(ctx(format!("input tensor {in0} is not produced before this op")));
            }
            if rec.kind != OpKind::Add && rec.input1 != NO_TENSOR {
                return Err(ctx("has a second input".into()));
            }
            if rec.output_min > rec.output_max {
                return Err(ctx(format!(
                    "clamp bounds {}..{} are reversed",
                    rec.output_min, rec.output_max
                )));
            }
            let (is_input, is_logits) =
                (|t: usize| t == 0, |t: usize| t > 0 && t == op_records.len());
            if rec.kind != OpKind::Stem && is_input(in0) {
                return Err(ctx("reads the uint8 network input".into()));
            }
            if rec.kind == OpKind::Linear && i + 1 != op_records.len() {
                return Err(ctx("the linear classifier must be the last op".into()));
            }
            if rec.kind != OpKind::Linear && is_logits(i + 1) {
                return Err(ctx("the last op must be the linear classifier".into()));
            }
            let x = tensors[in0];
            let y = tensors[i + 1];
            let mut rec = *rec;
            let (macs, params) = match rec.kind {
                OpKind::Stem => {
                    if in0 != 0 || rec.stride != 2 {
                        return Err(ctx("must read the input with stride 2".into()));
                    }
                    expect_shape(&ctx, y, conv_out(x.height, 2), conv_out(x.width, 2), y.channels)?;
                    let c = y.channels;
                    blobs.conv(&ctx, &mut rec, 27 * c, c, 27 * 255 * 127)?;
                    ((y.height * y.width * c * 27) as u64, (27 * c + c) as u64)
                }
                OpKind::Depthwise => {
                    if rec.stride != 1 && rec.stride != 2 {
                        return Err(ctx(format!("stride {} (must be 1 or 2)", rec.stride)));
                    }
                    let s = rec.stride as usize;
                    expect_shape(&ctx, y, conv_out(x.height, s), conv_out(x.width, s), x.channels)?;
                    let c = y.channels;
                    blobs.conv(&ctx, &mut rec, 9 * c, c, 9 * 128 * 127)?;
                    ((y.height * y.width * c * 9) as u64, (9 * c + c) as u64)
                }
                OpKind::PointwiseTernary | OpKind::PointwiseInt8 => {
                    if rec.stride != 1 {
                        return Err(ctx("stride must be 1".into()));
                    }
                    expect_shape(&ctx, y, x.height, x.width, y.channels)?;
                    let (k, n) = (x.channels, y.channels);
                    if k > MAX_POINTWISE_K {
                        return Err(ctx(format!("{k} input channels (at most {MAX_POINTWISE_K})")));
                    }
                    if rec.kind == OpKind::PointwiseInt8 {
                        blobs.conv(&ctx, &mut rec, n * k, n, 128 * 127 * k as i64)?;
                    } else {
                        let row = crate::trits::row_bytes(k);
                        blobs.conv(&ctx, &mut rec, n * row, n, 128 * k as i64)?;
                        let codes = blobs.bytes(rec.weights);
                        let max = crate::trits::CODES5;
                        if let Some(pos) = codes.iter().position(|&c| usize::from(c) >= max) {
                            return Err(ctx(format!(
                                "ternary byte {} at {pos} (max {})",
                                codes[pos],
                                max - 1
                            )));
                        }
                    }
                    ((x.height * x.width * k * n) as u64, (k * n + n) as u64)
                }
                OpKind::Add => {
                    let in1 = rec.input1 as usize;
                    if in1 > i || in1 == 0 {
                        return Err(ctx(format!("second input tensor {} is invalid", rec.input1)));
                    }
                    let b = tensors[in1];
                    if (b.height, b.width, b.channels) != (x.height, x.width, x.channels) {
                        return Err(ctx("inputs have different shapes".into()));
                    }
                    expect_shape(&ctx, y, x.height, x.width, x.channels)?;
                    for (name, m) in
                        [("multiplier_a", rec.multiplier_a), ("multiplier_b", rec.multiplier_b)]
                    {
                        if !(0..=ADD_MAX_MULTIPLIER).contains(&m) {
                            return Err(ctx(format!("{name} {m} outside 0..=2^22")));
                        }
                    }
                    if !(1..=ADD_MAX_SHIFT).contains(&rec.shift) {
                        return Err(ctx(format!(
                            "shift {} outside 1..={ADD_MAX_SHIFT}",
                            rec.shift
                        )));
                    }
                    blobs.none(&ctx, &rec)?;
                    (0, 0)
                }
                OpKind::AvgPool => {
                    expect_shape(&ctx, y, 1, 1, x.channels)?;
                    if x.height * x.width > 1 << 16 {
                        return Err(ctx("more than 65536 pixels to pool".into()));
                    }
                    if rec.multiplier_a < 0 {
                        return Err(ctx("negative multiplier".into()));
                    }
                    if !(MIN_SHIFT..=MAX_SHIFT).contains(&rec.shift) {
                        return Err(ctx(format!(
                            "shift {} outside {MIN_SHIFT}..={MAX_SHIFT}",
                            rec.shift
                        )));
                    }
                    blobs.none(&ctx, &rec)?;
                    ((x.height * x.width * x.channels) as u64, 0)
                }
                OpKind::Linear => {
                    if x.height != 1 || x.width != 1 {
                        return Err(ctx("input must be 1x1 (after the average pool)".into()));
                    }
                    expect_shape(&ctx, y, 1, 1, y.channels)?;
                    if y.zero_point != 0 {
                        return Err(ctx("logits tensor must have zero point 0".into()));
                    }
                    let (k, n) = (x.channels, y.channels);
                    rec.weights = blobs.blob(&ctx, rec.weights, k * n, "weights")?;
                    rec.bias = blobs.blob(&ctx, rec.bias, 4 * n, "bias")?;
                    for (name, b) in [("multipliers", rec.multipliers), ("shifts", rec.shifts)] {
                        if b != Blob::default() {
                            return Err(ctx(format!("has a {name} blob; the classifier has none")));
                        }
                    }
                    blobs.int8_weights(&ctx, rec.weights)?;
                    blobs.bias_bound(&ctx, rec.bias, 128 * 127 * k as i64)?;
                    ((k * n) as u64, (k * n + n) as u64)
                }
            };
            ops.push(Op { record: rec, macs, params });
        }
        Ok(Graph { header, tensors, ops })
    }

    /// The op that produces the logits (the last one).
    pub fn classifier(&self) -> &Op {
        self.ops.last().expect("validated graphs have ops")
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.tensors.last().map(|t| t.channels).unwrap_or(0)
    }
}

/// Output extent of a 3x3 pad-1 convolution.
pub fn conv_out(extent: usize, stride: usize) -> usize {
    (extent - 1) / stride + 1
}

fn expect_shape(
    ctx: &dyn Fn(String) -> FormatError,
    y: Tensor,
    h: usize,
    w: usize,
    c: usize,
) -> Result<(), FormatError> {
    if (y.height, y.width, y.channels) != (h, w, c) {
        return Err(ctx(format!(
            "output tensor is {}x{}x{}, expected {h}x{w}x{c}",
            y.height, y.width, y.channels
        )));
    }
    Ok(())
}

/// Blob checks against the weights section.
struct BlobCheck<'a> {
    weights_offset: usize,
    weights: &'a [u8],
}

impl BlobCheck<'_> {
    /// Checks a blob's length, alignment and bounds; returns it with an absolute offset.
    fn blob(
        &self,
        ctx: &dyn Fn(String) -> FormatError,
        b: Blob,
        expected_len: usize,
        name: &str,
    ) -> Result<Blob, FormatError> {
        if b.len != expected_len {
            return Err(ctx(format!("{name} blob is {} bytes, expected {expected_len}", b.len)));
        }
        if !b.offset.is_multiple_of(ALIGN) {
            return Err(ctx(format!("{name} blob offset {} is not 64-byte aligned", b.offset)));
        }
        let end = b.offset.checked_add(b.len).filter(|&e| e <= self.weights.len());
        if end.is_none() {
            return Err(ctx(format!(
                "{name} blob {}..+{} lies outside the {}-byte weights section",
                b.offset,
                b.len,
                self.weights.len()
            )));
        }
        Ok(Blob { offset: self.weights_offset + b.offset, len: b.len })
    }

    fn bytes(&self, absolute: Blob) -> &[u8] {
        let start = absolute.offset - self.weights_offset;
        &self.weights[start..start + absolute.len]
    }

    /// Weights, bias, multipliers, shifts of a convolution with `c` outputs and an
    /// accumulator bounded by `max_acc`.
    fn conv(
        &self,
        ctx: &dyn Fn(String) -> FormatError,
        rec: &mut OpRecord,
        weights_len: usize,
        c: usize,
        max_acc: i64,
    ) -> Result<(), FormatError> {
        rec.weights = self.blob(ctx, rec.weights, weights_len, "weights")?;
        rec.bias = self.blob(ctx, rec.bias, 4 * c, "bias")?;
        rec.multipliers = self.blob(ctx, rec.multipliers, 4 * c, "multipliers")?;
        rec.shifts = self.blob(ctx, rec.shifts, c, "shifts")?;
        if rec.kind != OpKind::PointwiseTernary {
            self.int8_weights(ctx, rec.weights)?;
        }
        for (j, m) in self.bytes(rec.multipliers).chunks_exact(4).enumerate() {
            let m = i32::from_le_bytes([m[0], m[1], m[2], m[3]]);
            if m < 0 {
                return Err(ctx(format!("channel {j}: negative multiplier {m}")));
            }
        }
        if let Some((j, s)) = self
            .bytes(rec.shifts)
            .iter()
            .enumerate()
            .find(|(_, s)| !(MIN_SHIFT..=MAX_SHIFT).contains(s))
        {
            return Err(ctx(format!("channel {j}: shift {s} outside {MIN_SHIFT}..={MAX_SHIFT}")));
        }
        self.bias_bound(ctx, rec.bias, max_acc)
    }

    /// int8 weights must be in the symmetric range [-127, 127].
    fn int8_weights(
        &self,
        ctx: &dyn Fn(String) -> FormatError,
        b: Blob,
    ) -> Result<(), FormatError> {
        if let Some(pos) = self.bytes(b).iter().position(|&w| w as i8 == -128) {
            return Err(ctx(format!("int8 weight -128 at byte {pos} (weights are in -127..=127)")));
        }
        Ok(())
    }

    /// `|bias| + max |acc|` must fit an i32 so the bias add never wraps.
    fn bias_bound(
        &self,
        ctx: &dyn Fn(String) -> FormatError,
        b: Blob,
        max_acc: i64,
    ) -> Result<(), FormatError> {
        for (j, v) in self.bytes(b).chunks_exact(4).enumerate() {
            let v = i32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            if i64::from(v).abs() + max_acc > i64::from(i32::MAX) {
                return Err(ctx(format!("channel {j}: bias {v} could overflow the accumulator")));
            }
        }
        Ok(())
    }

    /// Ops without weights must have empty blobs.
    fn none(&self, ctx: &dyn Fn(String) -> FormatError, rec: &OpRecord) -> Result<(), FormatError> {
        for (name, b) in [
            ("weights", rec.weights),
            ("bias", rec.bias),
            ("multipliers", rec.multipliers),
            ("shifts", rec.shifts),
        ] {
            if b != Blob::default() {
                return Err(ctx(format!("has a {name} blob; this op takes none")));
            }
        }
        Ok(())
    }
}
