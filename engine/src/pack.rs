//! `promctl pack`: the interchange file that training exports (safetensors with float32
//! tensors plus the graph as JSON in its metadata, docs/TRAINING.md) to a `.prom` model.
//!
//! Training decides every quantization choice (weights on their grid, per-channel weight
//! scales, activation scales and zero points); this module does the integer conversion the
//! numeric contract defines (docs/FORMAT.md), once: requantization multipliers and shifts,
//! biases at the accumulator scale with the input zero point folded in, residual-add and pool
//! multipliers, weight layouts and trit packing. Every tensor is checked against the graph
//! (shape, finiteness, grid) and the result goes through the engine's own validation before
//! anything is written.

use crate::graph::{conv_out, OpKind, TensorRecord, FLAG_RELU6, NO_TENSOR};
use crate::model::{Metadata, Model};
use crate::writer::{ModelSpec, OpSpec};
use prom_kernels::params::ADD_MAX_MULTIPLIER;
use prom_kernels::{quantize_scale, quantize_scale_short};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// The interchange format name and version this packer reads.
pub const INTERCHANGE_FORMAT: &str = "prom-interchange";
/// Interchange version.
pub const INTERCHANGE_VERSION: u32 = 1;
/// The ReLU6 output quantization the contract fixes.
const RELU6_SCALE: f64 = 6.0 / 255.0;
const RELU6_ZERO_POINT: i64 = -128;
/// How far (in grid steps) a stored weight may be from its integer grid point.
const GRID_TOLERANCE: f64 = 0.01;

/// Why an interchange file cannot be packed. Messages name the op and tensor.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Not a readable safetensors file.
    #[error("not a safetensors file: {0}")]
    SafeTensors(String),
    /// The graph metadata is missing or malformed.
    #[error("graph: {0}")]
    Graph(String),
    /// An op or one of its tensors is inconsistent.
    #[error("op {op} ({kind}): {msg}")]
    Op {
        /// Op index in the interchange graph.
        op: usize,
        /// Op kind.
        kind: String,
        /// What is wrong.
        msg: String,
    },
    /// Labels do not fit the classifier.
    #[error("labels: {0}")]
    Labels(String),
    /// The packed model failed the engine's validation.
    #[error("the packed model does not validate: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct GraphJson {
    format: String,
    version: u32,
    architecture: String,
    width_multiplier: f32,
    classes: u32,
    input: InputJson,
    #[serde(default)]
    notes: String,
    ops: Vec<OpJson>,
}

#[derive(Deserialize)]
struct InputJson {
    height: u32,
    width: u32,
    scale: f64,
    zero_point: i64,
}

#[derive(Deserialize)]
struct OpJson {
    kind: String,
    #[serde(default)]
    input: Option<usize>,
    #[serde(default)]
    inputs: Option<Vec<usize>>,
    #[serde(default)]
    stride: Option<usize>,
    #[serde(default)]
    relu6: bool,
    #[serde(default)]
    precision: Option<String>,
    #[serde(default)]
    weight: Option<String>,
    #[serde(default)]
    weight_scale: Option<String>,
    #[serde(default)]
    bias: Option<String>,
    output_scale: f64,
    output_zero_point: i64,
}

/// A float32 tensor of the interchange file.
struct F32Tensor {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// The tensors of the file, by name.
struct Tensors<'a>(SafeTensors<'a>);

impl Tensors<'_> {
    fn get(&self, name: &str) -> Result<F32Tensor, String> {
        let view = self.0.tensor(name).map_err(|_| format!("tensor {name:?} is missing"))?;
        if view.dtype() != Dtype::F32 {
            return Err(format!("tensor {name:?} is {:?}, expected F32", view.dtype()));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(format!("tensor {name:?}: element {i} is not finite ({})", data[i]));
        }
        Ok(F32Tensor { name: name.to_string(), shape: view.shape().to_vec(), data })
    }
}

/// A tensor of the packed graph as it is being built.
#[derive(Clone, Copy)]
struct Act {
    index: u32,
    h: usize,
    w: usize,
    c: usize,
    scale: f64,
    zp: i64,
}

/// Packs the interchange file `bytes` with `labels` into a model, validated by the engine.
pub fn pack(bytes: &[u8], labels: Vec<String>) -> Result<ModelSpec, PackError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| PackError::SafeTensors(e.to_string()))?;
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| PackError::SafeTensors(e.to_string()))?;
    let text = meta.metadata().as_ref().and_then(|m| m.get("prom_graph")).ok_or_else(|| {
        PackError::Graph("no prom_graph entry in the safetensors metadata".into())
    })?;
    let g: GraphJson =
        serde_json::from_str(text).map_err(|e| PackError::Graph(format!("invalid JSON: {e}")))?;
    if g.format != INTERCHANGE_FORMAT || g.version != INTERCHANGE_VERSION {
        return Err(PackError::Graph(format!(
            "format {:?} version {} (this packer reads {INTERCHANGE_FORMAT:?} version {INTERCHANGE_VERSION})",
            g.format, g.version
        )));
    }
    if labels.len() != g.classes as usize {
        return Err(PackError::Labels(format!(
            "{} labels for a {}-class model",
            labels.len(),
            g.classes
        )));
    }
    if let Some(i) = labels.iter().position(|l| l.is_empty() || l.contains('\n')) {
        return Err(PackError::Labels(format!("label {i} is empty or spans lines")));
    }
    let tensors = Tensors(st);
    let mut packer = Packer::new(&g)?;
    for (i, op) in g.ops.iter().enumerate() {
        packer.op(op, &tensors).map_err(|msg| PackError::Op {
            op: i,
            kind: op.kind.clone(),
            msg,
        })?;
    }
    let spec = packer.finish(&g, labels)?;
    Model::from_bytes(&spec.to_bytes()).map_err(|e| PackError::Invalid(e.to_string()))?;
    Ok(spec)
}

struct Packer {
    /// Interchange tensor index -> packed tensor (None: not produced yet).
    map: Vec<Option<Act>>,
    tensors: Vec<TensorRecord>,
    ops: Vec<OpSpec>,
    input_zero_point: u8,
    logit_scale: Option<f64>,
}

fn check_scale(what: &str, s: f64) -> Result<(), String> {
    if !(s.is_finite() && s > 0.0) {
        return Err(format!("{what} {s} is not a positive number"));
    }
    Ok(())
}

fn check_zero_point(z: i64) -> Result<i8, String> {
    i8::try_from(z).map_err(|_| format!("output zero point {z} outside -128..=127"))
}

/// `floor(v + 1/2)`: the contract's rounding.
fn round_half_up(v: f64) -> f64 {
    (v + 0.5).floor()
}

impl Packer {
    fn new(g: &GraphJson) -> Result<Packer, PackError> {
        let i = &g.input;
        if !(1..=4096).contains(&i.height) || !(1..=4096).contains(&i.width) {
            return Err(PackError::Graph(format!("input {}x{} is invalid", i.height, i.width)));
        }
        let zp = u8::try_from(i.zero_point).map_err(|_| {
            PackError::Graph(format!("input zero point {} outside 0..=255", i.zero_point))
        })?;
        check_scale("input scale", i.scale).map_err(PackError::Graph)?;
        let input = Act {
            index: 0,
            h: i.height as usize,
            w: i.width as usize,
            c: 3,
            scale: i.scale,
            zp: i64::from(zp),
        };
        Ok(Packer {
            map: vec![Some(input)],
            tensors: vec![TensorRecord {
                height: i.height,
                width: i.width,
                channels: 3,
                scale: i.scale as f32,
                zero_point: 0,
            }],
            ops: Vec::new(),
            input_zero_point: zp,
            logit_scale: None,
        })
    }

    fn input(&self, t: Option<usize>) -> Result<Act, String> {
        let t = t.ok_or("no input tensor")?;
        self.map
            .get(t)
            .copied()
            .flatten()
            .ok_or_else(|| format!("input tensor {t} is not produced before this op"))
    }

    fn push(&mut self, op: Option<OpSpec>, act: Act) {
        if let Some(op) = op {
            self.tensors.push(TensorRecord {
                height: act.h as u32,
                width: act.w as u32,
                channels: act.c as u32,
                scale: act.scale as f32,
                zero_point: act.zp as i8,
            });
            self.ops.push(op);
        }
        self.map.push(Some(act));
    }

    fn op(&mut self, op: &OpJson, t: &Tensors<'_>) -> Result<(), String> {
        if self.logit_scale.is_some() {
            return Err("comes after the linear classifier, which must be last".into());
        }
        check_scale("output scale", op.output_scale)?;
        match op.kind.as_str() {
            "stem" | "depthwise" | "pointwise" => self.conv(op, t),
            "add" => self.add(op),
            "avgpool" => self.avgpool(op),
            "linear" => self.linear(op, t),
            other => Err(format!("unknown op kind {other:?}")),
        }
    }

    fn conv(&mut self, op: &OpJson, t: &Tensors<'_>) -> Result<(), String> {
        let x = self.input(op.input)?;
        let stride = op.stride.unwrap_or(1);
        let w = t.get(op.weight.as_deref().ok_or("no weight tensor named")?)?;
        let ws = t.get(op.weight_scale.as_deref().ok_or("no weight_scale tensor named")?)?;
        let b = t.get(op.bias.as_deref().ok_or("no bias tensor named")?)?;
        let c = *w.shape.first().ok_or_else(|| format!("{}: scalar weights", w.name))?;
        let (kind, expected, y) = match op.kind.as_str() {
            "stem" => {
                if x.index != 0 || stride != 2 {
                    return Err("the stem must read the input image with stride 2".into());
                }
                let y = (conv_out(x.h, 2), conv_out(x.w, 2), c);
                (OpKind::Stem, vec![c, 3, 3, 3], y)
            }
            "depthwise" => {
                if stride != 1 && stride != 2 {
                    return Err(format!("stride {stride} (must be 1 or 2)"));
                }
                let y = (conv_out(x.h, stride), conv_out(x.w, stride), x.c);
                (OpKind::Depthwise, vec![x.c, 1, 3, 3], y)
            }
            _ => {
                if stride != 1 {
                    return Err(format!("stride {stride} (pointwise stride must be 1)"));
                }
                let kind = match op.precision.as_deref() {
                    Some("ternary") | None => OpKind::PointwiseTernary,
                    Some("int8") => OpKind::PointwiseInt8,
                    Some(p) => return Err(format!("precision {p:?} (ternary or int8)")),
                };
                (kind, vec![c, x.c, 1, 1], (x.h, x.w, c))
            }
        };
        if x.index == 0 && kind != OpKind::Stem {
            return Err("only the stem reads the input image".into());
        }
        let shape_ok = w.shape == expected || (kind.is_pointwise() && w.shape == expected[..2]);
        if !shape_ok {
            return Err(format!("{}: shape {:?}, expected {expected:?}", w.name, w.shape));
        }
        for (tensor, what) in [(&ws, "weight_scale"), (&b, "bias")] {
            if tensor.shape != [c] {
                return Err(format!(
                    "{} ({what}): shape {:?}, expected [{c}]",
                    tensor.name, tensor.shape
                ));
            }
        }
        if let Some(i) = ws.data.iter().position(|&s| s <= 0.0) {
            return Err(format!("{}: channel {i} scale {} is not positive", ws.name, ws.data[i]));
        }
        let (lo, hi) = if kind == OpKind::PointwiseTernary { (-1, 1) } else { (-127, 127) };
        let per_channel = w.data.len() / c;
        let q = on_grid(&w, &ws.data, per_channel, lo, hi)?;
        let (s_out, z_out) = if op.relu6 {
            if (op.output_scale - RELU6_SCALE).abs() > 1e-6 * RELU6_SCALE
                || op.output_zero_point != RELU6_ZERO_POINT
            {
                return Err(format!(
                    "ReLU6 output must use scale 6/255 and zero point -128 (got {} and {})",
                    op.output_scale, op.output_zero_point
                ));
            }
            (RELU6_SCALE, RELU6_ZERO_POINT)
        } else {
            (op.output_scale, op.output_zero_point)
        };
        let z_out8 = check_zero_point(z_out)?;
        // Layout per docs/FORMAT.md.
        let weights: Vec<u8> = match kind {
            OpKind::Stem => {
                // [c][ci][ky][kx] -> [(ky*3+kx)*3+ci][c]
                let mut out = vec![0u8; 27 * c];
                for n in 0..c {
                    for ci in 0..3 {
                        for tap in 0..9 {
                            out[(tap * 3 + ci) * c + n] = q[n * 27 + ci * 9 + tap] as u8;
                        }
                    }
                }
                out
            }
            OpKind::Depthwise => {
                let mut out = vec![0u8; 9 * c];
                for n in 0..c {
                    for tap in 0..9 {
                        out[tap * c + n] = q[n * 9 + tap] as u8;
                    }
                }
                out
            }
            OpKind::PointwiseTernary => crate::trits::pack(&q, c, x.c),
            _ => q.iter().map(|&v| v as u8).collect(),
        };
        let mut spec = OpSpec::new(kind, x.index);
        spec.stride = stride as u8;
        spec.flags = if op.relu6 { FLAG_RELU6 } else { 0 };
        spec.weights = weights;
        for n in 0..c {
            let row = &q[n * per_channel..(n + 1) * per_channel];
            let sum: i64 = row.iter().map(|&v| i64::from(v)).sum();
            // An all-zero channel outputs its bias alone; any weight scale gives the same
            // result, so pick one that keeps the bias and multiplier in range.
            let s_w = if row.iter().all(|&v| v == 0) {
                s_out / (x.scale * 64.0)
            } else {
                f64::from(ws.data[n])
            };
            let acc_scale = x.scale * s_w;
            let (m, s) = quantize_scale_short(acc_scale / s_out).ok_or_else(|| {
                format!(
                    "channel {n}: requantization scale {:e} (input {:e} x weight {:e} / output {:e}) is outside the contract's range; raise the output scale",
                    acc_scale / s_out, x.scale, s_w, s_out
                )
            })?;
            let bias = round_half_up(f64::from(b.data[n]) / acc_scale) - (x.zp * sum) as f64;
            let max_acc = match kind {
                OpKind::Stem => 27 * 255 * 127,
                OpKind::Depthwise => 9 * 128 * 127,
                OpKind::PointwiseTernary => 128 * x.c as i64,
                _ => 128 * 127 * x.c as i64,
            };
            if bias.abs() + max_acc as f64 > f64::from(i32::MAX) {
                return Err(format!(
                    "{}: channel {n}: bias {} at the accumulator scale {acc_scale:e} overflows int32",
                    b.name, b.data[n]
                ));
            }
            spec.bias.push(bias as i32);
            spec.multipliers.push(m);
            spec.shifts.push(s);
        }
        spec.output_min = if op.relu6 { z_out8 } else { -128 };
        spec.output_max = 127;
        let index = self.tensors.len() as u32;
        let act = Act { index, h: y.0, w: y.1, c: y.2, scale: s_out, zp: z_out };
        self.push(Some(spec), act);
        Ok(())
    }

    fn add(&mut self, op: &OpJson) -> Result<(), String> {
        let ins = op.inputs.as_deref().ok_or("no inputs (an add takes two)")?;
        let [a, b] = ins else {
            return Err(format!("{} inputs (an add takes two)", ins.len()));
        };
        let (a, b) = (self.input(Some(*a))?, self.input(Some(*b))?);
        if (a.h, a.w, a.c) != (b.h, b.w, b.c) {
            return Err(format!("inputs are {}x{}x{} and {}x{}x{}", a.h, a.w, a.c, b.h, b.w, b.c));
        }
        if a.index == 0 || b.index == 0 {
            return Err("an add cannot read the input image".into());
        }
        let z = check_zero_point(op.output_zero_point)?;
        let (ra, rb) = (a.scale / op.output_scale, b.scale / op.output_scale);
        // The largest shift that keeps both multipliers within 2^22.
        let big = ra.max(rb);
        let shift = (1..=31u8)
            .rev()
            .find(|&s| round_half_up(big * f64::from(1u32 << s)) <= f64::from(ADD_MAX_MULTIPLIER))
            .ok_or_else(|| format!("input/output scale ratio {big} is too large for the add"))?;
        let unit = f64::from(1u32 << shift);
        let mut spec = OpSpec::new(OpKind::Add, a.index);
        spec.input1 = b.index;
        spec.shift = shift;
        spec.multiplier_a = round_half_up(ra * unit) as i32;
        spec.multiplier_b = round_half_up(rb * unit) as i32;
        let index = self.tensors.len() as u32;
        let act = Act { index, scale: op.output_scale, zp: i64::from(z), ..a };
        self.push(Some(spec), act);
        Ok(())
    }

    fn avgpool(&mut self, op: &OpJson) -> Result<(), String> {
        let x = self.input(op.input)?;
        if (op.output_scale - x.scale).abs() > 1e-6 * x.scale || op.output_zero_point != x.zp {
            return Err("the pool's output quantization must equal its input's".into());
        }
        let pixels = x.h * x.w;
        if pixels == 1 {
            // Pooling one pixel is the identity (and 1/1 is outside the requantization
            // range): the classifier reads the tensor directly.
            self.push(None, x);
            return Ok(());
        }
        let (m, s) = quantize_scale(1.0 / pixels as f64)
            .ok_or_else(|| format!("1/{pixels} is not representable"))?;
        let mut spec = OpSpec::new(OpKind::AvgPool, x.index);
        spec.multiplier_a = m;
        spec.shift = s;
        let index = self.tensors.len() as u32;
        let act = Act { index, h: 1, w: 1, ..x };
        self.push(Some(spec), act);
        Ok(())
    }

    fn linear(&mut self, op: &OpJson, t: &Tensors<'_>) -> Result<(), String> {
        let x = self.input(op.input)?;
        if x.h != 1 || x.w != 1 {
            return Err(format!(
                "input is {}x{}x{}; the classifier reads 1x1 (pool first)",
                x.h, x.w, x.c
            ));
        }
        let w = t.get(op.weight.as_deref().ok_or("no weight tensor named")?)?;
        let ws = t.get(op.weight_scale.as_deref().ok_or("no weight_scale tensor named")?)?;
        let b = t.get(op.bias.as_deref().ok_or("no bias tensor named")?)?;
        let n = *w.shape.first().ok_or_else(|| format!("{}: scalar weights", w.name))?;
        if w.shape != [n, x.c] {
            return Err(format!("{}: shape {:?}, expected [{n}, {}]", w.name, w.shape, x.c));
        }
        if ws.data.len() != 1 || ws.data[0] <= 0.0 {
            return Err(format!(
                "{}: the classifier has one positive weight scale (its logits have one scale)",
                ws.name
            ));
        }
        if b.shape != [n] {
            return Err(format!("{} (bias): shape {:?}, expected [{n}]", b.name, b.shape));
        }
        let s_w = f64::from(ws.data[0]);
        let q = on_grid(&w, &vec![ws.data[0]; n], x.c, -127, 127)?;
        let acc_scale = x.scale * s_w;
        let mut spec = OpSpec::new(OpKind::Linear, x.index);
        spec.weights = q.iter().map(|&v| v as u8).collect();
        for c in 0..n {
            let sum: i64 = q[c * x.c..(c + 1) * x.c].iter().map(|&v| i64::from(v)).sum();
            let bias = round_half_up(f64::from(b.data[c]) / acc_scale) - (x.zp * sum) as f64;
            if bias.abs() + (128 * 127 * x.c) as f64 > f64::from(i32::MAX) {
                return Err(format!("{}: class {c}: bias overflows int32", b.name));
            }
            spec.bias.push(bias as i32);
        }
        self.logit_scale = Some(acc_scale);
        let index = self.tensors.len() as u32;
        let act = Act { index, h: 1, w: 1, c: n, scale: acc_scale, zp: 0 };
        self.push(Some(spec), act);
        Ok(())
    }

    fn finish(self, g: &GraphJson, labels: Vec<String>) -> Result<ModelSpec, PackError> {
        if self.logit_scale.is_none() {
            return Err(PackError::Graph("the graph does not end with a linear classifier".into()));
        }
        let classes = self.tensors.last().map(|t| t.channels).unwrap_or(0);
        if classes != g.classes {
            return Err(PackError::Graph(format!(
                "the classifier has {classes} outputs, the graph says {} classes",
                g.classes
            )));
        }
        let metadata = Metadata {
            architecture: g.architecture.clone(),
            width_multiplier: g.width_multiplier,
            input_height: g.input.height,
            input_width: g.input.width,
            classes,
            producer: "prom-train + promctl pack".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            notes: g.notes.clone(),
        };
        debug_assert!(self.ops.iter().all(|o| o.kind == OpKind::Add || o.input1 == NO_TENSOR));
        Ok(ModelSpec {
            metadata,
            labels,
            input_scale: g.input.scale as f32,
            input_zero_point: self.input_zero_point,
            tensors: self.tensors,
            ops: self.ops,
        })
    }
}

/// The integer weights `w / scale[channel]`, which must lie on the grid (within
/// [`GRID_TOLERANCE`] of an integer) and in `lo..=hi`.
fn on_grid(
    w: &F32Tensor,
    scales: &[f32],
    per_channel: usize,
    lo: i8,
    hi: i8,
) -> Result<Vec<i8>, String> {
    let mut out = Vec::with_capacity(w.data.len());
    for (i, &v) in w.data.iter().enumerate() {
        let s = f64::from(scales[i / per_channel]);
        let r = f64::from(v) / s;
        let q = r.round();
        if (r - q).abs() > GRID_TOLERANCE {
            return Err(format!(
                "{}: element {i} = {v} is {r:.4} steps of its channel's scale {s:e}, not on the quantization grid (export the fake-quantized weights)",
                w.name
            ));
        }
        if q < f64::from(lo) || q > f64::from(hi) {
            return Err(format!("{}: element {i} is {q} steps, outside {lo}..={hi}", w.name));
        }
        out.push(q as i8);
    }
    Ok(out)
}

/// Reads a labels file: one label per line (a trailing newline is fine).
pub fn parse_labels(text: &str) -> Vec<String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).collect()
}
