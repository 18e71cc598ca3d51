//! The engine: an immutable [`Plan`] built once per model (kernel and prepared weights per
//! layer, activation arena layout), and a per-run [`State`] that owns the arena, the
//! per-worker scratch and a persistent worker pool. Running an inference allocates nothing.

use crate::graph::{Op, OpKind, Tensor};
use crate::model::Model;
use crate::pool::{Stages, WorkerPool};
use crate::trits;
use prom_kernels::{
    AddParams, AlignedBuf, DepthwiseShape, Epilogue, Int8PointwiseWeights, Kernels, PointwiseShape,
    PoolParams, PreparedTernary, Scratch, StemShape, TernaryWeights,
};
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the pointwise layers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointwiseMode {
    /// The add-only ternary kernels (the product).
    Ternary,
    /// The same weights through the int8-multiply kernels (the baseline `promctl benchmark`
    /// compares against; bit-identical results).
    Int8Baseline,
}

/// Per-layer prepared weights.
enum Weights {
    None,
    Ternary(PreparedTernary),
    Int8(Int8PointwiseWeights),
}

/// One planned layer.
struct Layer {
    op: Op,
    input: Tensor,
    output: Tensor,
    /// Arena byte ranges of input 0, input 1 (add) and the output.
    in0: Range<usize>,
    in1: Range<usize>,
    out: Range<usize>,
    weights: Weights,
}

/// The immutable plan of a model for one kernel tier.
pub struct Plan {
    model: Arc<Model>,
    kernels: Kernels,
    mode: PointwiseMode,
    layers: Vec<Layer>,
    arena_bytes: usize,
    max_k: usize,
    max_n: usize,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("tier", &self.kernels.tier())
            .field("mode", &self.mode)
            .field("layers", &self.layers.len())
            .field("arena_bytes", &self.arena_bytes)
            .finish()
    }
}

/// Per-layer description for reports.
#[derive(Clone, Debug)]
pub struct LayerInfo {
    /// Op kind.
    pub kind: OpKind,
    /// Input shape (h, w, c).
    pub input: (usize, usize, usize),
    /// Output shape.
    pub output: (usize, usize, usize),
    /// Multiply-accumulates.
    pub macs: u64,
}

impl Plan {
    /// Plans `model` for `kernels`: prepares weights for the tier, lays out the arena.
    pub fn new(model: Arc<Model>, kernels: Kernels, mode: PointwiseMode) -> Plan {
        let graph = model.graph();
        let tensors = &graph.tensors;
        // Last use of every tensor, for arena reuse.
        let mut last_use = vec![0usize; tensors.len()];
        for (i, op) in graph.ops.iter().enumerate() {
            last_use[op.record.input0 as usize] = i;
            if op.record.kind == OpKind::Add {
                last_use[op.record.input1 as usize] = i;
            }
            last_use[i + 1] = last_use[i + 1].max(i);
        }
        let ranges = arena_layout(graph, &last_use);
        let arena_bytes = ranges.iter().map(|r| r.end.div_ceil(64) * 64).max().unwrap_or(0);
        let (mut max_k, mut max_n) = (1, 1);
        let layers = graph
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let r = &op.record;
                let input = tensors[r.input0 as usize];
                let output = tensors[i + 1];
                if r.kind.is_pointwise() {
                    max_k = max_k.max(input.channels);
                    max_n = max_n.max(output.channels);
                }
                let weights =
                    if r.kind == OpKind::PointwiseInt8 {
                        let (k, n) = (input.channels, output.channels);
                        Weights::Int8(kernels.pack_int8_pointwise(model.blob_i8(r.weights), n, k))
                    } else if r.kind == OpKind::PointwiseTernary {
                        let (k, n) = (input.channels, output.channels);
                        let stored = model.blob_u8(r.weights);
                        match mode {
                            PointwiseMode::Ternary => {
                                let codes = trits::to_kernel_codes(stored, n, k);
                                let w = TernaryWeights { n, k, codes: &codes };
                                Weights::Ternary(kernels.prepare_ternary(w))
                            }
                            PointwiseMode::Int8Baseline => Weights::Int8(
                                kernels.pack_int8_pointwise(&trits::unpack(stored, n, k), n, k),
                            ),
                        }
                    } else {
                        Weights::None
                    };
                let in1 =
                    if r.kind == OpKind::Add { ranges[r.input1 as usize].clone() } else { 0..0 };
                Layer {
                    op: *op,
                    input,
                    output,
                    in0: ranges[r.input0 as usize].clone(),
                    in1,
                    out: ranges[i + 1].clone(),
                    weights,
                }
            })
            .collect();
        Plan { model, kernels, mode, layers, arena_bytes, max_k, max_n }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }
    /// The kernels (tier) the plan runs.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }
    /// Pointwise mode.
    pub fn mode(&self) -> PointwiseMode {
        self.mode
    }
    /// Bytes of the activation arena.
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }
    /// Bytes of prepared weights held by the plan (beyond the mapped file).
    pub fn prepared_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match &l.weights {
                Weights::None => 0,
                Weights::Ternary(w) => w.bytes(),
                Weights::Int8(w) => w.n() * w.k() * 2,
            })
            .sum()
    }
    /// Multiply-accumulates of one inference, all layers.
    pub fn macs(&self) -> u64 {
        self.layers.iter().map(|l| l.op.macs).sum()
    }

    /// Per-layer descriptions.
    pub fn layers(&self) -> Vec<LayerInfo> {
        self.layers
            .iter()
            .map(|l| LayerInfo {
                kind: l.op.record.kind,
                input: (l.input.height, l.input.width, l.input.channels),
                output: (l.output.height, l.output.width, l.output.channels),
                macs: l.op.macs,
            })
            .collect()
    }
}

/// Per-run state: arena, scratch per worker, worker pool. One inference at a time.
pub struct State {
    plan: Arc<Plan>,
    arena: AlignedBuf,
    input: AlignedBuf,
    scratch: Vec<Scratch>,
    pool: WorkerPool,
    /// The layers of an inference as stages of chunks the workers claim.
    stages: Stages,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("threads", &self.pool.threads()).finish()
    }
}

/// Pointer wrapper that lets the workers of one layer write disjoint parts of the arena.
#[derive(Clone, Copy)]
struct SharedMut(*mut u8);
// SAFETY: used only to hand the arena base to the workers of one layer, which write
// disjoint ranges (each chunk its own rows/pixels, each chunk claimed once) while no layer
// starts before the previous one is done; see `Frame::run_layer_chunk` and `Stages`.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole `Send + Sync` wrapper).
    fn get(self) -> *mut u8 {
        self.0
    }
}

impl State {
    /// State for `plan` with `threads` workers in total (the calling thread included).
    pub fn new(plan: Arc<Plan>, threads: usize) -> State {
        let threads = threads.max(1);
        let kernels = plan.kernels;
        let scratch = (0..threads).map(|_| kernels.scratch(plan.max_k, plan.max_n)).collect();
        let graph = plan.model.graph();
        let input_len = graph.tensors[0].len();
        State {
            arena: AlignedBuf::zeroed(plan.arena_bytes),
            input: AlignedBuf::zeroed(input_len),
            scratch,
            pool: WorkerPool::new(threads),
            stages: Stages::new(
                threads,
                plan.layers.iter().map(|l| chunks_per_owner(l.op.record.kind, l.output, threads)),
            ),
            plan,
        }
    }

    /// The plan.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Worker threads (including the caller).
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Runs `job(worker, workers)` on the caller (worker 0) and on each of this state's
    /// workers that joins in time, and returns when every call has returned: lets the caller
    /// spread work that belongs with an inference (such as preparing its input) over the
    /// same threads. Workers that are not running do not join, so `job` must claim its work
    /// from shared counters and the caller's call alone must be able to finish it (see
    /// `WorkerPool::run`). Allocates nothing.
    pub fn parallel(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        let workers = self.pool.threads();
        self.pool.run(&|worker| job(worker, workers));
    }

    /// Runs one inference on `input` (uint8 RGB, `H x W x 3` of the model) and returns the
    /// int32 logits. Allocates nothing.
    pub fn run(&mut self, input: &[u8]) -> &[i32] {
        self.run_inner(input, None)
    }

    /// As [`State::run`], recording each layer's wall time into `times` (one per layer).
    pub fn run_timed(&mut self, input: &[u8], times: &mut [Duration]) -> &[i32] {
        assert_eq!(times.len(), self.plan.layers.len(), "one time slot per layer");
        self.run_inner(input, Some(times))
    }

    fn run_inner(&mut self, input: &[u8], times: Option<&mut [Duration]>) -> &[i32] {
        let n_in = self.input.len();
        assert_eq!(input.len(), n_in, "input must be height x width x 3 bytes");
        self.input.as_u8_mut(n_in).copy_from_slice(input);
        let frame = Frame {
            plan: &self.plan,
            arena: SharedMut(self.arena.as_mut_ptr()),
            input: self.input.as_u8(n_in),
            scratch: SharedMut(self.scratch.as_mut_ptr().cast()),
        };
        // Worker 0 alone writes the times, each slot once the layer is done.
        let times = SharedTimes(times.map(|t| t.as_mut_ptr()));
        // A run that panicked may have left claims or the poison behind.
        self.stages.reset();
        let stages = &self.stages;
        let t0 = Instant::now();
        // One job per inference: every participant walks all layers, taking its own chunks
        // of each, then what the others left, then waiting for the layer's last chunks.
        let job = |worker: usize| {
            let layers_of_worker = || {
                stages.run(
                    worker,
                    |i, chunk| frame.run_layer_chunk(i, chunk, stages.chunks(i), worker),
                    |i| {
                        if let (0, Some(slots)) = (worker, times.get()) {
                            // SAFETY: `times` has one slot per layer (asserted by `run_timed`)
                            // and only worker 0 writes it, while the caller of `run_inner`
                            // waits; the slot holds the time since the start for now.
                            unsafe { *slots.add(i) = t0.elapsed() };
                        }
                    },
                );
            };
            // A participant that panics will not finish its chunk: poison the stages so the
            // others stop waiting (and panic in turn); the pool passes the panic on.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(layers_of_worker)) {
                stages.poison();
                resume_unwind(payload);
            }
        };
        self.pool.run(&job);
        if let Some(slots) = times.get() {
            // Times since the start into per-layer times.
            // SAFETY: the slots are `run_timed`'s exclusive borrow, no worker writes them now.
            let slots = unsafe { std::slice::from_raw_parts_mut(slots, self.plan.layers.len()) };
            for i in (1..slots.len()).rev() {
                slots[i] = slots[i].saturating_sub(slots[i - 1]);
            }
        }
        let last = self.plan.layers.last().expect("plans have layers");
        let n = last.output.channels;
        let start = last.out.start;
        // SAFETY: the logits range is 64-byte aligned inside the arena (`arena_layout` places
        // every tensor at a multiple of 64) and holds `n` i32.
        unsafe { std::slice::from_raw_parts(self.arena.as_ptr().add(start).cast::<i32>(), n) }
    }
}

/// What the workers of one inference share: the plan and input (read only), the arena and
/// the per-worker scratch (written in disjoint parts).
#[derive(Clone, Copy)]
struct Frame<'a> {
    plan: &'a Plan,
    arena: SharedMut,
    input: &'a [u8],
    scratch: SharedMut,
}

/// Worker 0's per-layer time slots of a timed run.
#[derive(Clone, Copy)]
struct SharedTimes(Option<*mut Duration>);
// SAFETY: only worker 0 writes through the pointer, and only while the caller of
// `State::run_inner`, which lent the slots, waits for the job.
unsafe impl Send for SharedTimes {}
// SAFETY: as above.
unsafe impl Sync for SharedTimes {}

impl SharedTimes {
    /// The slots (a method, so closures capture the whole `Send + Sync` wrapper).
    fn get(self) -> Option<*mut Duration> {
        self.0
    }
}

impl Frame<'_> {
    /// Chunk `chunk` of `chunks` of layer `i`, run by worker `worker` (whose scratch it uses).
    fn run_layer_chunk(self, i: usize, chunk: usize, chunks: usize, worker: usize) {
        let plan = self.plan;
        let layer = &plan.layers[i];
        let model = &*plan.model;
        let kernels = plan.kernels;
        let r = layer.op.record;
        let arena = self.arena;
        let input_u8 = self.input;
        let scratch = self.scratch;
        let epi_storage;
        let epi = match r.kind {
            OpKind::Stem | OpKind::Depthwise | OpKind::PointwiseTernary | OpKind::PointwiseInt8 => {
                epi_storage = Epilogue {
                    bias: model.blob_i32(r.bias),
                    multiplier: model.blob_i32(r.multipliers),
                    shift: model.blob_u8(r.shifts),
                    output_zero_point: layer.output.zero_point,
                    output_min: r.output_min,
                    output_max: r.output_max,
                };
                Some(&epi_storage)
            }
            _ => None,
        };
        {
            // SAFETY: every worker reads the layer's input ranges and writes only the part of
            // the output range of the chunk it claimed (split below by rows or pixels; each
            // chunk is claimed once, and the layer's input was complete before); the input and output
            // ranges of a layer never overlap (they are live at the same time, so the arena
            // allocator gave them disjoint ranges); each worker uses its own scratch.
            let (x, x1, y, scratch) = unsafe {
                let base = arena.get();
                let x = std::slice::from_raw_parts(
                    base.add(layer.in0.start).cast::<i8>(),
                    layer.in0.len(),
                );
                let x1 = std::slice::from_raw_parts(
                    base.add(layer.in1.start).cast::<i8>(),
                    layer.in1.len(),
                );
                let y = std::slice::from_raw_parts_mut(base.add(layer.out.start), layer.out.len());
                (x, x1, y, &mut *scratch.get().cast::<Scratch>().add(worker))
            };
            let out = layer.output;
            // This chunk's output units (rows, elements or classifier rows) and bytes.
            let (part, bytes) = chunk_part(r.kind, out, chunks, chunk);
            let y = as_i8(&mut y[bytes]);
            match r.kind {
                OpKind::Stem => {
                    let rows = part;
                    let shape = StemShape {
                        height: layer.input.height,
                        width: layer.input.width,
                        out_channels: out.channels,
                    };
                    let zp = model.graph().header.input_zero_point;
                    kernels.stem3x3s2(
                        shape,
                        input_u8,
                        zp,
                        model.blob_i8(r.weights),
                        epi.unwrap(),
                        rows,
                        y,
                    );
                }
                OpKind::Depthwise => {
                    let rows = part;
                    let shape = DepthwiseShape {
                        height: layer.input.height,
                        width: layer.input.width,
                        channels: out.channels,
                        stride: r.stride as usize,
                    };
                    let zp = layer.input.zero_point;
                    kernels.depthwise3x3(
                        shape,
                        x,
                        zp,
                        model.blob_i8(r.weights),
                        epi.unwrap(),
                        rows,
                        y,
                    );
                }
                OpKind::PointwiseTernary | OpKind::PointwiseInt8 => {
                    let px = part.start * out.width..part.end * out.width;
                    let k = layer.input.channels;
                    let shape = PointwiseShape { pixels: px.len(), k, n: out.channels };
                    let x = &x[px.start * k..px.end * k];
                    if px.is_empty() {
                        return;
                    }
                    match &layer.weights {
                        Weights::Ternary(w) => {
                            kernels.ternary_pointwise(shape, x, w, epi.unwrap(), y, scratch)
                        }
                        Weights::Int8(w) => {
                            kernels.int8_pointwise(shape, x, w, epi.unwrap(), y, scratch)
                        }
                        Weights::None => unreachable!("pointwise layers have weights"),
                    }
                }
                OpKind::Add => {
                    let ins = (
                        layer.input.zero_point,
                        plan.model.graph().tensors[r.input1 as usize].zero_point,
                    );
                    let params = AddParams {
                        a_zero_point: ins.0,
                        b_zero_point: ins.1,
                        a_multiplier: r.multiplier_a,
                        b_multiplier: r.multiplier_b,
                        shift: r.shift,
                        output_zero_point: out.zero_point,
                        output_min: r.output_min,
                        output_max: r.output_max,
                    };
                    kernels.add(&x[part.clone()], &x1[part], &params, y);
                }
                OpKind::AvgPool => {
                    if chunk == 0 {
                        let params = PoolParams {
                            input_zero_point: layer.input.zero_point,
                            multiplier: r.multiplier_a,
                            shift: r.shift,
                            output_zero_point: out.zero_point,
                            output_min: r.output_min,
                            output_max: r.output_max,
                        };
                        kernels.global_avg_pool(x, layer.input.channels, &params, y);
                    }
                }
                OpKind::Linear => {
                    let k = x.len();
                    if part.is_empty() {
                        return;
                    }
                    // SAFETY: the logits range holds out.channels i32 from a 64-byte aligned
                    // offset, so this worker's rows (4 bytes each) start 4-byte aligned and
                    // are in bounds.
                    let logits = unsafe {
                        std::slice::from_raw_parts_mut(y.as_mut_ptr().cast::<i32>(), part.len())
                    };
                    let weights = &model.blob_i8(r.weights)[part.start * k..part.end * k];
                    let bias = &model.blob_i32(r.bias)[part];
                    kernels.linear(x, weights, bias, logits);
                }
            }
        }
    }
}

/// Byte ranges of the tensors in the arena (tensor 0, the uint8 input, has its own buffer).
///
/// Tensors live in slots, a slot holding one tensor at a time (the first slot free over the
/// tensor's lifetime). Every tensor of a slot is placed so that the byte where the second of
/// two workers starts writing it sits at the slot's fixed centre: below the centre only
/// worker 0 ever writes, above it only worker 1. With a plain first-fit layout, a buffer the
/// second worker wrote was often reused for bytes the first one writes, and every such cache
/// line then had to be fetched from the other core before it could be written: measured on
/// the two-thread MobileNetV2-1.0-224, that cost more than the synchronisation. With one
/// thread the layout changes nothing but addresses; it costs about one largest tensor of
/// extra arena.
fn arena_layout(graph: &crate::graph::Graph, last_use: &[usize]) -> Vec<Range<usize>> {
    let tensors = &graph.tensors;
    let logits = tensors.len() - 1;
    let bytes_of = |t: usize| tensors[t].len() * if t == logits { 4 } else { 1 };
    // Byte offset at which worker 1 of 2 starts writing tensor t (its producer's split).
    let split_at = |t: usize| owner_bytes(graph.ops[t - 1].record.kind, tensors[t], 2, 1).start;
    // Slot of every tensor, and each slot's extent below and above its centre.
    let mut slot_of = vec![usize::MAX; tensors.len()];
    let mut slots: Vec<(usize, usize, Option<usize>)> = Vec::new(); // (below, above, occupant)
    for (t, slot_of_t) in slot_of.iter_mut().enumerate().skip(1) {
        let produced_at = t - 1;
        let below = split_at(t).div_ceil(64) * 64;
        let above = (bytes_of(t) - split_at(t)).div_ceil(64) * 64;
        let free = slots
            .iter()
            .position(|&(_, _, who)| who.is_none_or(|o| last_use[o].max(o - 1) < produced_at));
        let k = free.unwrap_or_else(|| {
            slots.push((0, 0, None));
            slots.len() - 1
        });
        let slot = &mut slots[k];
        *slot = (slot.0.max(below), slot.1.max(above), Some(t));
        *slot_of_t = k;
    }
    let mut centres = Vec::with_capacity(slots.len());
    let mut base = 0;
    for &(below, above, _) in &slots {
        centres.push(base + below);
        base += below + above;
    }
    (0..tensors.len())
        .map(|t| {
            if t == 0 {
                return 0..0;
            }
            // The centre is 64-byte aligned; rounding the split up keeps the start so.
            let start = centres[slot_of[t]] - split_at(t).div_ceil(64) * 64;
            start..start + bytes_of(t)
        })
        .collect()
}

/// Most chunks per worker a layer is cut into: spare chunks are what a running worker takes
/// over from one that is descheduled (or still waking up); more of them cost kernel calls.
const MAX_CHUNKS_PER_OWNER: usize = 4;

/// Fewest output pixels (convolutions) or bytes (adds) per chunk: below that a kernel call's
/// fixed work (loading weights, building tables) outweighs what finer chunks buy.
const MIN_CHUNK_PIXELS: usize = 64;
const MIN_CHUNK_BYTES: usize = 4096;

/// How a layer's output `out` is cut: units of `quantum` elements of `unit_bytes` each.
/// Convolutions (stem, depthwise and pointwise alike) split by output rows, so a worker
/// mostly reads what it wrote in the previous layer; the add by element ranges; the
/// classifier by output rows four at a time (the SIMD kernels' row block); the pool is one
/// piece.
fn layer_units(kind: OpKind, out: Tensor) -> (usize, usize, usize) {
    match kind {
        OpKind::Stem | OpKind::Depthwise | OpKind::PointwiseTernary | OpKind::PointwiseInt8 => {
            (out.height, 1, out.width * out.channels)
        }
        OpKind::Add => (out.len(), 64, 1),
        OpKind::Linear => (out.channels, 4, 4),
        OpKind::AvgPool => (out.len(), out.len().max(1), 1),
    }
}

/// Chunks per worker for a layer run by `owners` workers (1 with one worker: no split).
fn chunks_per_owner(kind: OpKind, out: Tensor, owners: usize) -> usize {
    if owners <= 1 {
        return 1;
    }
    let (len, quantum, _) = layer_units(kind, out);
    let units_per_owner = len.div_ceil(quantum) / owners;
    let by_size = match kind {
        OpKind::Stem | OpKind::Depthwise | OpKind::PointwiseTernary | OpKind::PointwiseInt8 => {
            out.height * out.width / (owners * MIN_CHUNK_PIXELS)
        }
        OpKind::Add => out.len() / (owners * MIN_CHUNK_BYTES),
        OpKind::Linear | OpKind::AvgPool => 1,
    };
    by_size.min(units_per_owner).clamp(1, MAX_CHUNKS_PER_OWNER)
}

/// Chunk `c` of `chunks` of a layer's output `out`: the units it computes and the bytes of
/// the output they occupy (the pool's output is all in chunk 0). The engine and the arena
/// layout both use it.
fn chunk_part(kind: OpKind, out: Tensor, chunks: usize, c: usize) -> (Range<usize>, Range<usize>) {
    let (len, quantum, unit_bytes) = layer_units(kind, out);
    let units = split(len, chunks, c, quantum);
    let bytes = units.start * unit_bytes..units.end * unit_bytes;
    (units, bytes)
}

/// The output bytes worker `w` of `owners` writes when every worker runs: its own chunks,
/// which are contiguous.
fn owner_bytes(kind: OpKind, out: Tensor, owners: usize, w: usize) -> Range<usize> {
    let per = chunks_per_owner(kind, out, owners);
    let first = chunk_part(kind, out, owners * per, w * per).1;
    let last = chunk_part(kind, out, owners * per, (w + 1) * per - 1).1;
    first.start..last.end
}

fn as_i8(bytes: &mut [u8]) -> &mut [i8] {
    // SAFETY: same size and alignment, every bit pattern valid.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<i8>(), bytes.len()) }
}

/// Worker `w` of `n`'s share of `0..len`, in multiples of `quantum` (the last share takes
/// the rest), so every element belongs to exactly one worker.
fn split(len: usize, n: usize, w: usize, quantum: usize) -> Range<usize> {
    let units = len.div_ceil(quantum);
    let per = units / n;
    let extra = units % n;
    let start_units = w * per + w.min(extra);
    let my_units = per + usize::from(w < extra);
    let start = (start_units * quantum).min(len);
    let end = ((start_units + my_units) * quantum).min(len);
    start..end
}

/// Softmax of `logits * scale` into `out` (f32; the only floating point of a run).
pub fn softmax(logits: &[i32], scale: f32, out: &mut [f32]) {
    let max = logits.iter().copied().max().unwrap_or(0);
    let mut sum = 0.0f32;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = ((l - max) as f32 * scale).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

/// The indices of the `k` largest scores, best first (ties: lower index first). Writes into
/// `out` without allocating.
pub fn top_k(scores: &[f32], out: &mut [usize]) {
    let k = out.len().min(scores.len());
    for slot in 0..k {
        let mut best: Option<usize> = None;
        for (i, &s) in scores.iter().enumerate() {
            if out[..slot].contains(&i) {
                continue;
            }
            if best.is_none_or(|b| s > scores[b]) {
                best = Some(i);
            }
        }
        out[slot] = best.unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once() {
        for len in [0, 1, 15, 16, 17, 49, 196, 12544] {
            for n in 1..=5 {
                for q in [1, 16, 64] {
                    let mut next = 0;
                    for w in 0..n {
                        let r = split(len, n, w, q);
                        assert_eq!(r.start, next.min(len));
                        next = r.end;
                        assert!(r.start.is_multiple_of(q) || r.is_empty());
                    }
                    assert_eq!(next, len);
                }
            }
        }
    }

    /// Tensors live at the same time never share bytes, every tensor is 64-byte aligned and
    /// inside the arena, and with two workers no cache line is written by both (the point
    /// of the layout), but for one at a split that is not 64-byte aligned.
    #[test]
    fn arena_layout_separates_live_tensors_and_the_two_workers() {
        use crate::mobilenet::{synthesize, SynthConfig};
        for (width, resolution) in [(0.35, 96), (1.0, 128)] {
            let cfg = SynthConfig {
                width,
                resolution,
                classes: 7,
                calibration_images: 1,
                ..SynthConfig::default()
            };
            let model = Arc::new(Model::from_bytes(&synthesize(&cfg).unwrap().to_bytes()).unwrap());
            for kernels in [Kernels::scalar(), Kernels::detect().unwrap()] {
                let plan = Plan::new(model.clone(), kernels, PointwiseMode::Ternary);
                let layers = &plan.layers;
                // Live range of tensor i + 1 (the output of layer i): until its last reader.
                let last_read = |i: usize| {
                    let reads = |j: usize| {
                        let r = &layers[j].op.record;
                        r.input0 as usize == i + 1
                            || (r.kind == OpKind::Add && r.input1 as usize == i + 1)
                    };
                    (i + 1..layers.len()).filter(|&j| reads(j)).max().unwrap_or(i)
                };
                for (i, a) in layers.iter().enumerate() {
                    assert!(a.out.start.is_multiple_of(64) && a.out.end <= plan.arena_bytes);
                    for (j, b) in layers.iter().enumerate().skip(i + 1) {
                        let overlap = a.out.start < b.out.end && b.out.start < a.out.end;
                        assert!(!overlap || last_read(i) < j, "layers {i} and {j} overlap");
                    }
                }
                // Bytes worker 0 writes in one layer are never written by worker 1 in
                // another (two threads; the pool's single-worker output is left out).
                let written = |i: usize, w: usize| {
                    let t = &layers[i];
                    let bytes = owner_bytes(t.op.record.kind, t.output, 2, w);
                    t.out.start + bytes.start..t.out.start + bytes.end
                };
                for i in 0..layers.len() {
                    for j in 0..layers.len() {
                        let (a, b) = (written(i, 0), written(j, 1));
                        if a.is_empty() || b.is_empty() {
                            continue;
                        }
                        // Cache lines, the unit two cores contend for: at most the one line
                        // a split that is not 64-byte aligned puts on both sides.
                        let lo = (a.start / 64).max(b.start / 64);
                        let hi = a.end.div_ceil(64).min(b.end.div_ceil(64));
                        assert!(
                            hi <= lo + 1,
                            "worker 0 in layer {i} ({a:?}) and worker 1 in layer {j} ({b:?}) \
                             share {} cache lines",
                            hi - lo
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn softmax_and_top_k() {
        let mut p = [0.0; 4];
        softmax(&[10, 20, 0, 20], 0.1, &mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut top = [0; 3];
        top_k(&p, &mut top);
        assert_eq!(top, [1, 3, 0]);
    }
}
