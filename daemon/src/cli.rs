//! `promctl`: synthesize, inspect, classify with and benchmark PROM models.

use crate::client::{self, BusArgs};
use clap::{Parser, Subcommand};
use prom_engine::{
    softmax, synthesize, top_k, Model, OpKind, Plan, PointwiseMode, State, SynthConfig,
};
use prom_kernels::Kernels;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Control and inspect PROM models and the prom-daemon service.
#[derive(Parser, Debug)]
#[command(name = "promctl", version, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a deterministic MobileNetV2 PROM model with random weights and calibrated
    /// quantization (for tests and benchmarks; not a trained model).
    Synth {
        /// Architecture (only mobilenetv2).
        #[arg(long, default_value = "mobilenetv2")]
        arch: String,
        /// Width multiplier, 0.35..=1.4.
        #[arg(long, default_value_t = 1.0)]
        width: f32,
        /// Input resolution, 32..=224, a multiple of 32.
        #[arg(long, default_value_t = 224)]
        resolution: u32,
        /// Number of classes.
        #[arg(long, default_value_t = 1000)]
        classes: u32,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Share of zero ternary weights, 0.0..1.0.
        #[arg(long, default_value_t = 0.4)]
        zero_fraction: f32,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Show a model's layers, parameter counts, MACs by op kind, section sizes, checksums
    /// and labels.
    Inspect {
        /// Model file.
        model: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Classify images (JPEG, PNG, PPM): centre crop, resize to the model input, print the
    /// top-k classes.
    Classify {
        /// Model file.
        model: PathBuf,
        /// Images.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// How many classes to print per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// One JSON object per image.
        #[arg(long)]
        json: bool,
    },
    /// Measure inference latency on this machine (add-only ternary pointwise layers and,
    /// for comparison, the same network through the int8-multiply kernels).
    ///
    /// Figures hold for the machine this runs on and nowhere else. The project's ARM
    /// figures (docs/BENCHMARKS.md) are estimates from a static cycle model
    /// (benches/mca), not measurements: it has no ARM hardware. To measure a Raspberry Pi,
    /// run `promctl benchmark` on it (`--threads 4` for all four cores), and from a source
    /// checkout `cargo bench -p prom-benches --bench pointwise` for the pointwise kernels
    /// layer by layer. The int8 line names the baseline kernel: `sdot` on cores with the
    /// dot-product extension (the Pi 5's Cortex-A76), `smull` elsewhere (the Pi 4's
    /// Cortex-A72).
    Benchmark {
        /// Model file; without it MobileNetV2-1.0-224 is synthesized in memory.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Timed iterations.
        #[arg(long, default_value_t = 100)]
        iterations: usize,
        /// Untimed warm-up iterations.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's state, model, kernel tier and per-camera statistics.
    Status {
        #[command(flatten)]
        bus: BusArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print classifications as the daemon publishes them.
    Watch {
        #[command(flatten)]
        bus: BusArgs,
        /// Only this camera.
        #[arg(long)]
        camera: Option<String>,
        /// Exit after this many results.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Make the daemon reload its model (or switch to PATH); the old model keeps serving
    /// if the new one is missing or invalid.
    Reload {
        #[command(flatten)]
        bus: BusArgs,
        /// New model file; without it the current model file is read again.
        path: Option<PathBuf>,
    },
    /// Pause a camera (no frames are classified until `resume`).
    Pause {
        #[command(flatten)]
        bus: BusArgs,
        /// Camera name.
        camera: String,
    },
    /// Resume a paused camera.
    Resume {
        #[command(flatten)]
        bus: BusArgs,
        /// Camera name.
        camera: String,
    },
    /// Pack a trained network (the interchange file `prom-train export` writes: safetensors
    /// with the graph in its metadata) into a .prom model: requantization multipliers and
    /// shifts, zero-point folds and trit packing per docs/FORMAT.md, validated by the engine,
    /// written atomically.
    Pack {
        /// Interchange file (.safetensors).
        input: PathBuf,
        /// Class labels, one per line, in class order.
        #[arg(long)]
        labels: PathBuf,
        /// Output model file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Measure a model's accuracy on a labelled data set with the engine: top-1, top-5,
    /// per-class accuracy and speed. DATA is a directory with idx files
    /// (t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz], e.g. Fashion-MNIST;
    /// greyscale images smaller than the input are centred on a black canvas) or a folder
    /// tree with one folder per class (named by label or class index).
    Eval {
        /// Model file.
        model: PathBuf,
        /// Data set directory.
        data: PathBuf,
        /// idx split: test (t10k-*) or train.
        #[arg(long, default_value = "test", value_parser = ["test", "train"])]
        split: String,
        /// Evaluate only the first N images.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Write every image's int32 logits to FILE (little-endian, images x classes).
        #[arg(long, value_name = "FILE")]
        logits: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon on a private bus with its embedded trained model (Fashion-MNIST, PROM
    /// ternary) and a file camera playing bundled test images; classify each image over
    /// D-Bus (ClassifyImage) and print predicted vs true labels and the accuracy, then the
    /// camera's Classified signals (no camera, no system bus, no model file needed).
    Demo {
        /// Classified signals of the demo camera to show before stopping the daemon.
        #[arg(long, default_value_t = 10)]
        frames: u64,
        /// Serve this model instead of the embedded Fashion-MNIST PROM model (for example
        /// models/mobilenetv2-imagenet-int8.prom with --images models/demo/photos).
        #[arg(long, value_name = "FILE")]
        model: Option<PathBuf>,
        /// Classify the images of this folder instead of the bundled Fashion-MNIST test
        /// images; a name ending in `_<class id>` (such as `cat_281.png`) gives the true class.
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Runs promctl with the process arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Synth { arch, width, resolution, classes, seed, zero_fraction, output } => {
            synth(&arch, width, resolution, classes, seed, zero_fraction, &output)
        }
        Command::Inspect { model, json } => inspect(&model, json),
        Command::Classify { model, images, top, threads, json } => {
            classify(&model, &images, top, threads, json)
        }
        Command::Benchmark { model, threads, iterations, warmup, json } => {
            benchmark(model.as_deref(), threads, iterations, warmup, json)
        }
        Command::Status { bus, json } => client::status(&bus, json),
        Command::Watch { bus, camera, count, json } => {
            client::watch(&bus, camera.as_deref(), count, json)
        }
        Command::Reload { bus, path } => client::reload(&bus, path.as_deref()),
        Command::Pause { bus, camera } => client::pause_resume(&bus, &camera, true),
        Command::Resume { bus, camera } => client::pause_resume(&bus, &camera, false),
        Command::Demo { frames, json, model, images } => client::demo(&client::DemoOptions {
            frames,
            json,
            model: model.as_deref(),
            images: images.as_deref(),
        }),
        Command::Pack { input, labels, output } => crate::toolkit::pack(&input, &labels, &output),
        Command::Eval { model, data, split, limit, threads, logits, json } => {
            crate::toolkit::eval(&crate::toolkit::EvalOptions {
                model: &model,
                data: &data,
                split: &split,
                limit,
                threads,
                json,
                logits: logits.as_deref(),
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&*e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("promctl: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn synth(
    arch: &str,
    width: f32,
    resolution: u32,
    classes: u32,
    seed: u64,
    zero_fraction: f32,
    output: &PathBuf,
) -> Result<()> {
    if arch != "mobilenetv2" {
        return Err(format!("unknown architecture {arch:?} (supported: mobilenetv2)").into());
    }
    let cfg =
        SynthConfig { width, resolution, classes, seed, zero_fraction, ..SynthConfig::default() };
    let spec = synthesize(&cfg)?;
    spec.write(output).map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    let bytes = std::fs::metadata(output)?.len();
    println!(
        "wrote {} ({bytes} bytes): synthesized MobileNetV2-{width}-{resolution}, {classes} classes, seed {seed}",
        output.display()
    );
    Ok(())
}

fn open(path: &PathBuf) -> Result<Arc<Model>> {
    Ok(Arc::new(Model::open(path)?))
}

#[derive(Serialize)]
struct InspectReport {
    file: String,
    bytes: usize,
    checksum: String,
    metadata: prom_engine::Metadata,
    layers: Vec<LayerRow>,
    macs_by_kind: Vec<(String, u64)>,
    params: u64,
    macs: u64,
    sections: Vec<SectionRow>,
    labels: Vec<String>,
}

#[derive(Serialize)]
struct LayerRow {
    index: usize,
    kind: String,
    input: (usize, usize, usize),
    output: (usize, usize, usize),
    stride: u8,
    params: u64,
    macs: u64,
}

#[derive(Serialize)]
struct SectionRow {
    name: String,
    offset: usize,
    bytes: usize,
    crc32: String,
}

fn inspect(path: &PathBuf, json: bool) -> Result<()> {
    let model = open(path)?;
    let graph = model.graph();
    let layers: Vec<LayerRow> = graph
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let x = graph.tensors[op.record.input0 as usize];
            let y = graph.tensors[i + 1];
            LayerRow {
                index: i,
                kind: op.record.kind.name().into(),
                input: (x.height, x.width, x.channels),
                output: (y.height, y.width, y.channels),
                stride: op.record.stride,
                params: op.params,
                macs: op.macs,
            }
        })
        .collect();
    let macs_by_kind: Vec<(String, u64)> = OpKind::ALL
        .iter()
        .map(|k| {
            (
                k.name().to_string(),
                graph.ops.iter().filter(|o| o.record.kind == *k).map(|o| o.macs).sum(),
            )
        })
        .collect();
    let report = InspectReport {
        file: path.display().to_string(),
        bytes: model.bytes().len(),
        checksum: format!("{:08x}", model.checksum()),
        metadata: model.metadata().clone(),
        params: graph.ops.iter().map(|o| o.params).sum(),
        macs: graph.ops.iter().map(|o| o.macs).sum(),
        layers,
        macs_by_kind,
        sections: model
            .sections()
            .iter()
            .map(|s| SectionRow {
                name: s.kind.name().into(),
                offset: s.offset,
                bytes: s.len,
                crc32: format!("{:08x}", s.crc32),
            })
            .collect(),
        labels: model.labels().to_vec(),
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    let m = &report.metadata;
    writeln!(out, "{}: {} bytes, crc32 {}", report.file, report.bytes, report.checksum)?;
    writeln!(
        out,
        "{} width {} input {}x{}, {} classes; producer {} {}",
        m.architecture,
        m.width_multiplier,
        m.input_height,
        m.input_width,
        m.classes,
        m.producer,
        m.producer_version
    )?;
    if !m.notes.is_empty() {
        writeln!(out, "notes: {}", m.notes)?;
    }
    writeln!(
        out,
        "\n{:>4} {:<10} {:>16} {:>16} {:>3} {:>10} {:>12}",
        "#", "op", "input", "output", "s", "params", "MACs"
    )?;
    for l in &report.layers {
        let shape = |s: (usize, usize, usize)| format!("{}x{}x{}", s.0, s.1, s.2);
        writeln!(
            out,
            "{:>4} {:<10} {:>16} {:>16} {:>3} {:>10} {:>12}",
            l.index,
            l.kind,
            shape(l.input),
            shape(l.output),
            l.stride,
            l.params,
            l.macs
        )?;
    }
    writeln!(out, "\ntotal: {} parameters, {} MACs", report.params, report.macs)?;
    for (kind, macs) in &report.macs_by_kind {
        if *macs > 0 {
            writeln!(
                out,
                "  {kind:<10} {macs:>12} MACs ({:.1}%)",
                100.0 * *macs as f64 / report.macs as f64
            )?;
        }
    }
    writeln!(out, "\nsections:")?;
    for s in &report.sections {
        writeln!(
            out,
            "  {:<8} offset {:>8} {:>9} bytes crc32 {}",
            s.name, s.offset, s.bytes, s.crc32
        )?;
    }
    let shown: Vec<&str> = report.labels.iter().take(10).map(String::as_str).collect();
    writeln!(
        out,
        "\nlabels ({}): {}{}",
        report.labels.len(),
        shown.join(", "),
        if report.labels.len() > 10 { ", ..." } else { "" }
    )?;
    Ok(())
}

#[derive(Serialize)]
struct Classification {
    image: String,
    top: Vec<Scored>,
}

#[derive(Serialize)]
struct Scored {
    class: usize,
    label: String,
    score: f32,
}

fn classify(
    path: &PathBuf,
    images: &[PathBuf],
    top: usize,
    threads: usize,
    json: bool,
) -> Result<()> {
    let model = open(path)?;
    let kernels = Kernels::detect()?;
    let (h, w) = (model.metadata().input_height as usize, model.metadata().input_width as usize);
    let scale = model.graph().tensors.last().map(|t| t.scale).unwrap_or(1.0);
    let plan = Arc::new(Plan::new(Arc::clone(&model), kernels, PointwiseMode::Ternary));
    let mut state = State::new(plan, threads);
    let mut input = vec![0u8; h * w * 3];
    let mut probs = vec![0f32; model.graph().classes()];
    let mut best = vec![0usize; top.min(probs.len())];
    let mut out = std::io::stdout().lock();
    let mut failures = 0;
    for image in images {
        let (iw, ih, rgb) = match crate::imageio::load(image) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("promctl: {e}");
                failures += 1;
                continue;
            }
        };
        crate::imageio::crop_resize(&rgb, iw as usize, ih as usize, &mut input, w, h);
        let logits = state.run(&input);
        softmax(logits, scale, &mut probs);
        top_k(&probs, &mut best);
        let result = Classification {
            image: image.display().to_string(),
            top: best
                .iter()
                .map(|&c| Scored { class: c, label: model.labels()[c].clone(), score: probs[c] })
                .collect(),
        };
        if json {
            serde_json::to_writer(&mut out, &result)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}:", result.image)?;
            for s in &result.top {
                writeln!(out, "  {:>6.2}%  {:>5}  {}", s.score * 100.0, s.class, s.label)?;
            }
        }
    }
    if failures > 0 {
        return Err(format!("{failures} of {} images could not be read", images.len()).into());
    }
    Ok(())
}

/// Published 45 nm energies per operation (M. Horowitz, "Computing's energy problem (and what
/// we can do about it)", ISSCC 2014): pJ.
mod energy {
    pub const INT8_ADD: f64 = 0.03;
    pub const INT8_MUL: f64 = 0.2;
    pub const INT32_ADD: f64 = 0.1;
    pub const FP16_ADD: f64 = 0.4;
    pub const FP16_MUL: f64 = 1.1;
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

#[derive(Serialize)]
struct LayerTiming {
    index: usize,
    kind: String,
    output: (usize, usize, usize),
    macs: u64,
    time_ms: f64,
    share: f64,
}

#[derive(Serialize)]
struct Energy {
    /// Estimated energy per inference of the PROM model, microjoules.
    prom_uj: f64,
    /// Same network in float16, microjoules.
    fp16_uj: f64,
    /// fp16 / PROM.
    ratio: f64,
    source: &'static str,
}

#[derive(Serialize)]
struct BenchReport {
    model: String,
    tier: String,
    threads: usize,
    iterations: usize,
    latency_ms: Latency,
    fps: f64,
    baseline_int8_latency_ms: Latency,
    /// The int8-multiply pointwise kernel of the baseline (`sdot` where the CPU has it).
    baseline_int8_kernel: &'static str,
    speedup_vs_int8: f64,
    macs: u64,
    model_bytes: usize,
    fp16_bytes: u64,
    /// Time to open (map and validate) the model file, best of 10; absent for synthesized.
    open_ms: Option<f64>,
    layers: Vec<LayerTiming>,
    energy: Energy,
}

fn percentiles(mut t: Vec<Duration>) -> Latency {
    t.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(t[((t.len() - 1) as f64 * q).round() as usize]);
    Latency {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        mean: t.iter().map(|&d| ms(d)).sum::<f64>() / t.len() as f64,
    }
}

struct Progress {
    on: bool,
    total: usize,
    done: usize,
    label: &'static str,
}

impl Progress {
    fn new(label: &'static str, total: usize) -> Progress {
        Progress { on: std::io::stderr().is_terminal(), total, done: 0, label }
    }
    fn tick(&mut self) {
        self.done += 1;
        if self.on && (self.done.is_multiple_of(5) || self.done == self.total) {
            let width = 30;
            let filled = width * self.done / self.total.max(1);
            eprint!(
                "\r{:<24} [{}{}] {}/{}",
                self.label,
                "=".repeat(filled),
                " ".repeat(width - filled),
                self.done,
                self.total
            );
            if self.done == self.total {
                eprintln!();
            }
        }
    }
}

fn timed_runs(
    state: &mut State,
    input: &[u8],
    warmup: usize,
    iterations: usize,
    label: &'static str,
    layer_times: Option<&mut [Duration]>,
) -> Vec<Duration> {
    let mut progress = Progress::new(label, warmup + iterations);
    for _ in 0..warmup {
        state.run(input);
        progress.tick();
    }
    let mut times = Vec::with_capacity(iterations);
    let layers = state.plan().layers().len();
    let mut per_layer = vec![Duration::ZERO; layers];
    let mut sum = vec![Duration::ZERO; layers];
    for _ in 0..iterations {
        let t = Instant::now();
        state.run_timed(input, &mut per_layer);
        times.push(t.elapsed());
        for (s, d) in sum.iter_mut().zip(&per_layer) {
            *s += *d;
        }
        progress.tick();
    }
    if let Some(out) = layer_times {
        for (o, s) in out.iter_mut().zip(sum) {
            *o = s / iterations.max(1) as u32;
        }
    }
    times
}

fn benchmark(
    path: Option<&std::path::Path>,
    threads: usize,
    iterations: usize,
    warmup: usize,
    json: bool,
) -> Result<()> {
    if iterations == 0 {
        return Err("--iterations must be at least 1".into());
    }
    let mut open_ms = None;
    let (model, name) = match path {
        Some(p) => {
            // Open (map + full validation) timed over a few repetitions; best of them.
            let mut best = f64::INFINITY;
            for _ in 0..10 {
                let t = Instant::now();
                let m = Model::open(p)?;
                best = best.min(t.elapsed().as_secs_f64() * 1e3);
                drop(m);
            }
            open_ms = Some(best);
            (Arc::new(Model::open(p)?), p.display().to_string())
        }
        None => {
            if std::io::stderr().is_terminal() {
                eprintln!("synthesizing MobileNetV2-1.0-224 (random weights) ...");
            }
            let bytes = synthesize(&SynthConfig::default())?.to_bytes();
            (Arc::new(Model::from_bytes(&bytes)?), "synthesized MobileNetV2-1.0-224".into())
        }
    };
    let kernels = Kernels::detect()?;
    let graph = model.graph();
    let input: Vec<u8> = (0..graph.tensors[0].len()).map(|i| (i * 7 % 251) as u8).collect();
    let plan = Arc::new(Plan::new(Arc::clone(&model), kernels, PointwiseMode::Ternary));
    let mut state = State::new(Arc::clone(&plan), threads);
    let mut layer_times = vec![Duration::ZERO; graph.ops.len()];
    let times = timed_runs(
        &mut state,
        &input,
        warmup,
        iterations,
        "ternary (add-only)",
        Some(&mut layer_times),
    );
    drop(state);
    let base_plan = Arc::new(Plan::new(Arc::clone(&model), kernels, PointwiseMode::Int8Baseline));
    let mut base_state = State::new(base_plan, threads);
    let base_times =
        timed_runs(&mut base_state, &input, warmup, iterations, "int8-multiply baseline", None);
    drop(base_state);

    let latency = percentiles(times);
    let baseline = percentiles(base_times);
    let total_layer: f64 = layer_times.iter().map(|d| d.as_secs_f64()).sum();
    let layers: Vec<LayerTiming> = graph
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let y = graph.tensors[i + 1];
            LayerTiming {
                index: i,
                kind: op.record.kind.name().into(),
                output: (y.height, y.width, y.channels),
                macs: op.macs,
                time_ms: layer_times[i].as_secs_f64() * 1e3,
                share: layer_times[i].as_secs_f64() / total_layer.max(1e-12),
            }
        })
        .collect();
    let params: u64 = graph.ops.iter().map(|o| o.params).sum();
    let macs_of =
        |k: OpKind| graph.ops.iter().filter(|o| o.record.kind == k).map(|o| o.macs).sum::<u64>();
    let pw = macs_of(OpKind::PointwiseTernary) as f64;
    // int8 pointwise layers (per-layer precision) multiply like the other int8 layers.
    let mul = (macs_of(OpKind::Stem)
        + macs_of(OpKind::Depthwise)
        + macs_of(OpKind::Linear)
        + macs_of(OpKind::PointwiseInt8)) as f64;
    let other = macs_of(OpKind::AvgPool) as f64;
    let prom_pj = pw * energy::INT8_ADD
        + mul * (energy::INT8_MUL + energy::INT32_ADD)
        + other * energy::INT32_ADD;
    let fp16_pj = (pw + mul) * (energy::FP16_MUL + energy::FP16_ADD) + other * energy::FP16_ADD;
    let report = BenchReport {
        model: name,
        tier: kernels.tier().to_string(),
        threads,
        iterations,
        fps: 1e3 / latency.mean,
        speedup_vs_int8: baseline.p50 / latency.p50,
        latency_ms: latency,
        baseline_int8_latency_ms: baseline,
        baseline_int8_kernel: kernels.int8_pointwise_kernel(),
        macs: graph.ops.iter().map(|o| o.macs).sum(),
        model_bytes: model.bytes().len(),
        fp16_bytes: params * 2,
        open_ms,
        layers,
        energy: Energy {
            prom_uj: prom_pj / 1e6,
            fp16_uj: fp16_pj / 1e6,
            ratio: fp16_pj / prom_pj,
            source: "45 nm energies per op, Horowitz ISSCC 2014: int8 add 0.03 pJ, int8 mul 0.2 pJ, int32 add 0.1 pJ, fp16 add 0.4 pJ, fp16 mul 1.1 pJ; compute only, memory not counted",
        },
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    let l = &report.latency_ms;
    writeln!(out, "model: {} ({} MACs)", report.model, report.macs)?;
    writeln!(
        out,
        "tier {}, {} thread(s), {} iterations after {} warm-up",
        report.tier, threads, iterations, warmup
    )?;
    writeln!(
        out,
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  mean {:.3}   ({:.1} fps)",
        l.p50, l.p90, l.p99, l.mean, report.fps
    )?;
    let b = &report.baseline_int8_latency_ms;
    writeln!(
        out,
        "int8-multiply pointwise baseline: p50 {:.3}  mean {:.3} ms -> add-only is {:.2}x faster; \
         baseline kernel {}",
        b.p50, b.mean, report.speedup_vs_int8, report.baseline_int8_kernel
    )?;
    writeln!(
        out,
        "model {} bytes vs float16 {} bytes ({:.1}x smaller)",
        report.model_bytes,
        report.fp16_bytes,
        report.fp16_bytes as f64 / report.model_bytes as f64
    )?;
    if let Some(ms) = report.open_ms {
        writeln!(out, "open + validate: {ms:.3} ms")?;
    }
    writeln!(
        out,
        "energy estimate: {:.1} uJ vs float16 {:.1} uJ ({:.1}x less; {})",
        report.energy.prom_uj, report.energy.fp16_uj, report.energy.ratio, report.energy.source
    )?;
    writeln!(
        out,
        "\n{:>4} {:<10} {:>14} {:>12} {:>9} {:>6}",
        "#", "op", "output", "MACs", "ms", "share"
    )?;
    for r in &report.layers {
        writeln!(
            out,
            "{:>4} {:<10} {:>14} {:>12} {:>9.4} {:>5.1}%",
            r.index,
            r.kind,
            format!("{}x{}x{}", r.output.0, r.output.1, r.output.2),
            r.macs,
            r.time_ms,
            r.share * 100.0
        )?;
    }
    Ok(())
}
