//! MobileNetV2 in PROM quantization: the architecture (any width multiplier 0.35-1.4, input
//! 32-224 in steps of 32, any class count) and a deterministic synthesizer of random-weight
//! models whose quantization parameters are calibrated on random inputs, so activations
//! neither saturate nor vanish.
//!
//! Calibration is done in the integer domain, layer by layer: for every convolution the true
//! accumulators `a = sum w (q - z_in)` are measured on the calibration images, then the
//! per-channel multiplier and bias are chosen so that ReLU6 outputs spread over the int8
//! range (about a fifth clipped at zero) and linear outputs have a standard deviation of about
//! 32 levels, and the layer is run with the real kernels to feed the next one.

use crate::graph::{conv_out, OpKind, TensorRecord, FLAG_RELU6, NO_TENSOR};
use crate::model::Metadata;
use crate::writer::{ModelSpec, OpSpec};
use prom_kernels::{
    quantize_scale, quantize_scale_short, ternary, AddParams, DepthwiseShape, Epilogue, Kernels,
    PointwiseShape, PoolParams, StemShape, TernaryWeights,
};

/// Synthesis parameters.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    /// Width multiplier (0.35..=1.4).
    pub width: f32,
    /// Input resolution (32..=224, a multiple of 32).
    pub resolution: u32,
    /// Number of classes.
    pub classes: u32,
    /// Random seed.
    pub seed: u64,
    /// Share of zero ternary weights (0..1).
    pub zero_fraction: f32,
    /// Calibration images.
    pub calibration_images: usize,
    /// Indices (in order of appearance) of the pointwise layers synthesized at int8
    /// precision (`OpKind::PointwiseInt8`); the others are ternary.
    pub int8_pointwise: Vec<usize>,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            width: 1.0,
            resolution: 224,
            classes: 1000,
            seed: 1,
            zero_fraction: 0.4,
            calibration_images: 2,
            int8_pointwise: Vec::new(),
        }
    }
}

/// Why a configuration cannot be synthesized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SynthError {
    /// Width outside the family.
    #[error("width multiplier {0} is outside 0.35..=1.4")]
    Width(f32),
    /// Resolution outside the family.
    #[error("resolution {0} must be 32..=224 and a multiple of 32")]
    Resolution(u32),
    /// No classes.
    #[error("classes must be at least 1 (got {0})")]
    Classes(u32),
    /// Zero share outside [0, 1).
    #[error("zero fraction {0} must be in 0.0..1.0")]
    ZeroFraction(f32),
    /// An int8 pointwise layer index past the network's pointwise layers.
    #[error("int8 pointwise layer {0} does not exist (MobileNetV2 has {POINTWISE_LAYERS})")]
    Int8Pointwise(usize),
}

/// Inverted-residual settings (expansion t, channels c, repeats n, stride s).
pub const BLOCKS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Number of pointwise layers of MobileNetV2 (expand and project per block, the first block
/// without expansion, and the final 1x1 conv).
pub const POINTWISE_LAYERS: usize = 34;

/// Channels rounded to a multiple of 8 the usual MobileNet way (never below 8, never more
/// than 10% below the exact value).
pub fn make_divisible(v: f32) -> usize {
    let mut n = ((v + 4.0) as usize / 8 * 8).max(8);
    if (n as f32) < 0.9 * v {
        n += 8;
    }
    n
}

/// A pointwise layer's `(pixels, k, n)`.
pub type PointwiseDims = (usize, usize, usize);
/// A depthwise layer's `(height, width, channels, stride)`.
pub type DepthwiseDims = (usize, usize, usize, usize);

/// The distinct pointwise `(pixels, k, n)` and depthwise `(height, width, channels, stride)`
/// shapes of MobileNetV2 at `width` and `resolution`, in order of first appearance (what
/// the kernel benchmarks run).
pub fn distinct_layer_shapes(
    width: f32,
    resolution: usize,
) -> (Vec<PointwiseDims>, Vec<DepthwiseDims>) {
    let (mut pw, mut dw) = (Vec::new(), Vec::new());
    let mut push_pw = |shape| {
        if !pw.contains(&shape) {
            pw.push(shape);
        }
    };
    let mut side = conv_out(resolution, 2);
    let mut c = make_divisible(32.0 * width);
    for &(t, ch, n, s) in &BLOCKS {
        let out_c = make_divisible(ch as f32 * width);
        for r in 0..n {
            let stride = if r == 0 { s } else { 1 };
            let hidden = c * t;
            if t != 1 {
                push_pw((side * side, c, hidden));
            }
            if !dw.contains(&(side, side, hidden, stride)) {
                dw.push((side, side, hidden, stride));
            }
            side = conv_out(side, stride);
            push_pw((side * side, hidden, out_c));
            c = out_c;
        }
    }
    let last = if width > 1.0 { make_divisible(1280.0 * width) } else { 1280 };
    push_pw((side * side, c, last));
    (pw, dw)
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (sum of 4 uniforms), mean 0, std 1.
    fn normal(&mut self) -> f64 {
        ((0..4).map(|_| self.unit()).sum::<f64>() - 2.0) * 3f64.sqrt()
    }
}

/// True accumulators `sum_k w[n][k] (q[k] - z)` of a pointwise layer with weights `w`
/// (`[n][k]`, ternary or int8) on a sample of about 256 pixels of every calibration image.
fn sampled_pointwise_acc(x: &Act, w: &[i8], k: usize) -> Vec<Vec<i64>> {
    let pixels = x.h * x.w;
    let stride = (pixels / 256).max(1);
    x.data
        .iter()
        .map(|img| {
            let mut a = Vec::new();
            for p in (0..pixels).step_by(stride) {
                let row = &img[p * k..(p + 1) * k];
                for wrow in w.chunks(k) {
                    a.push(
                        wrow.iter()
                            .zip(row)
                            .map(|(&w, &q)| i64::from(w) * (i64::from(q) - i64::from(x.zp)))
                            .sum(),
                    );
                }
            }
            a
        })
        .collect()
}

/// Runs a calibration layer: (kernels, epilogue, image index, output).
type RunLayer<'a> = dyn Fn(&Kernels, &Epilogue<'_>, usize, &mut [i8]) + 'a;

/// Calls `f(output pixel, tap, input pixel)` for every tap of a 3x3 padding-1 convolution
/// of an `h x w` input with `stride` that falls inside the input (tap = `ky * 3 + kx`).
fn taps3x3(h: usize, w: usize, stride: usize, mut f: impl FnMut(usize, usize, usize)) {
    let (ho, wo) = (conv_out(h, stride), conv_out(w, stride));
    for oy in 0..ho {
        for ox in 0..wo {
            for ky in 0..3 {
                for kx in 0..3 {
                    let (iy, ix) =
                        ((oy * stride + ky) as isize - 1, (ox * stride + kx) as isize - 1);
                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                        f(oy * wo + ox, ky * 3 + kx, iy as usize * w + ix as usize);
                    }
                }
            }
        }
    }
}

/// Calibration activations: one int8 tensor per calibration image.
struct Act {
    h: usize,
    w: usize,
    c: usize,
    scale: f32,
    zp: i8,
    data: Vec<Vec<i8>>,
}

struct Builder {
    rng: Rng,
    kernels: Kernels,
    tensors: Vec<TensorRecord>,
    ops: Vec<OpSpec>,
    zero_fraction: f32,
    int8_pointwise: Vec<usize>,
    pointwise_count: usize,
}

/// Per-channel (multiplier, shift, bias) such that `(a + bias) * M` has the wanted spread.
fn requant_for(stats: &[(f64, f64)], relu6: bool, rng: &mut Rng) -> (Vec<i32>, Vec<u8>, Vec<f64>) {
    let mut mult = Vec::with_capacity(stats.len());
    let mut shift = Vec::with_capacity(stats.len());
    let mut bias = Vec::with_capacity(stats.len());
    for &(mean, std) in stats {
        let target = if relu6 { 50.0 } else { 32.0 };
        let scale = (target / std.max(1.0)).clamp(1e-9, 0.45);
        let (m, s) = quantize_scale_short(scale).expect("scale in the contract's range");
        mult.push(m);
        shift.push(s);
        let effective = f64::from(m) / 2f64.powi(i32::from(s));
        // ReLU6 outputs: centre around 40 levels above zero so ~20% clip; linear: centred.
        let centre = if relu6 { 40.0 + 10.0 * rng.normal() } else { 4.0 * rng.normal() };
        bias.push(centre / effective - mean);
    }
    (mult, shift, bias)
}

impl Builder {
    fn push_tensor(&mut self, a: &Act) -> u32 {
        self.tensors.push(TensorRecord {
            height: a.h as u32,
            width: a.w as u32,
            channels: a.c as u32,
            scale: a.scale,
            zero_point: a.zp,
        });
        (self.tensors.len() - 1) as u32
    }

    /// Finishes a convolution: stats of true accumulators -> requant, folds the input zero
    /// point into the bias, records the op and computes its calibration outputs.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        mut op: OpSpec,
        x: &Act,
        out_hwc: (usize, usize, usize),
        acc: &[Vec<i64>],
        weight_sums: &[i64],
        relu6: bool,
        run: &RunLayer<'_>,
    ) -> Act {
        let (h, w, c) = out_hwc;
        let stats: Vec<(f64, f64)> = (0..c)
            .map(|ch| {
                let vals: Vec<f64> = acc
                    .iter()
                    .flat_map(|img| img.iter().skip(ch).step_by(c))
                    .map(|&v| v as f64)
                    .collect();
                let mean = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
                let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>()
                    / vals.len().max(1) as f64;
                (mean, var.sqrt())
            })
            .collect();
        let (mult, shift, bias) = requant_for(&stats, relu6, &mut self.rng);
        let zin = i64::from(x.zp);
        op.bias = bias
            .iter()
            .zip(weight_sums)
            .map(|(&b, &ws)| (b.round() as i64 - zin * ws).clamp(-(1 << 24), 1 << 24) as i32)
            .collect();
        op.multipliers = mult;
        op.shifts = shift;
        let (zp, scale) = if relu6 { (-128i8, 6.0 / 255.0) } else { (0i8, x.scale) };
        op.flags = if relu6 { FLAG_RELU6 } else { 0 };
        op.output_min = -128;
        op.output_max = 127;
        let epi = Epilogue {
            bias: &op.bias,
            multiplier: &op.multipliers,
            shift: &op.shifts,
            output_zero_point: zp,
            output_min: -128,
            output_max: 127,
        };
        let data = (0..x.data.len())
            .map(|img| {
                let mut out = vec![0i8; h * w * c];
                run(&self.kernels, &epi, img, &mut out);
                out
            })
            .collect();
        self.ops.push(op);
        let y = Act { h, w, c, scale, zp, data };
        self.push_tensor(&y);
        y
    }

    fn int8_weights(&mut self, n: usize, std: f64) -> Vec<i8> {
        (0..n).map(|_| (self.rng.normal() * std).round().clamp(-127.0, 127.0) as i8).collect()
    }

    fn stem(&mut self, images: &[Vec<u8>], res: usize, c: usize) -> Act {
        let w = self.int8_weights(27 * c, 40.0);
        let (ho, wo) = (conv_out(res, 2), conv_out(res, 2));
        let acc: Vec<Vec<i64>> = images
            .iter()
            .map(|img| {
                let mut a = vec![0i64; ho * wo * c];
                // Padding taps are skipped: the padding value is the input zero point 0.
                taps3x3(res, res, 2, |out, tap, inp| {
                    for ci in 0..3 {
                        let u = i64::from(img[inp * 3 + ci]);
                        let row = &w[(tap * 3 + ci) * c..(tap * 3 + ci + 1) * c];
                        for (acc, &wt) in a[out * c..(out + 1) * c].iter_mut().zip(row) {
                            *acc += u * i64::from(wt);
                        }
                    }
                });
                a
            })
            .collect();
        let mut op = OpSpec::new(OpKind::Stem, 0);
        op.stride = 2;
        op.weights = w.iter().map(|&v| v as u8).collect();
        let input = Act { h: res, w: res, c: 3, scale: 1.0 / 255.0, zp: 0, data: Vec::new() };
        let sums = vec![0i64; c];
        let shape = StemShape { height: res, width: res, out_channels: c };
        let run = |k: &Kernels, e: &Epilogue<'_>, img: usize, out: &mut [i8]| {
            k.stem3x3s2(shape, &images[img], 0, &w, e, 0..ho, out)
        };
        let mut x = input;
        x.data = vec![Vec::new(); images.len()];
        self.conv(op, &x, (ho, wo, c), &acc, &sums, true, &run)
    }

    fn pointwise(&mut self, x: &Act, input: u32, n: usize, relu6: bool) -> Act {
        let index = self.pointwise_count;
        self.pointwise_count += 1;
        if self.int8_pointwise.contains(&index) {
            return self.pointwise_int8(x, input, n, relu6);
        }
        let k = x.c;
        let trits: Vec<i8> = (0..n * k)
            .map(|_| {
                if self.rng.unit() < f64::from(self.zero_fraction) {
                    0
                } else if self.rng.next() & 1 == 0 {
                    1
                } else {
                    -1
                }
            })
            .collect();
        let codes = ternary::pack(&trits, n, k).expect("ternary weights");
        let stored = crate::trits::pack(&trits, n, k);
        let sums: Vec<i64> =
            trits.chunks(k).map(|r| r.iter().map(|&v| i64::from(v)).sum()).collect();
        let pixels = x.h * x.w;
        let acc = sampled_pointwise_acc(x, &trits, k);
        let mut op = OpSpec::new(OpKind::PointwiseTernary, input);
        op.weights = stored;
        let shape = PointwiseShape { pixels, k, n };
        let kernels = self.kernels;
        let prepared = kernels.prepare_ternary(TernaryWeights { n, k, codes: &codes });
        let mut scratch = kernels.scratch(k, n);
        let scratch_cell = std::cell::RefCell::new(&mut scratch);
        let run = |kk: &Kernels, e: &Epilogue<'_>, img: usize, out: &mut [i8]| {
            kk.ternary_pointwise(
                shape,
                &x.data[img],
                &prepared,
                e,
                out,
                &mut scratch_cell.borrow_mut(),
            )
        };
        self.conv(op, x, (x.h, x.w, n), &acc, &sums, relu6, &run)
    }

    /// An int8 pointwise layer (per-layer precision), run with the int8 kernels.
    fn pointwise_int8(&mut self, x: &Act, input: u32, n: usize, relu6: bool) -> Act {
        let k = x.c;
        let w = self.int8_weights(n * k, 40.0);
        let sums: Vec<i64> = w.chunks(k).map(|r| r.iter().map(|&v| i64::from(v)).sum()).collect();
        let pixels = x.h * x.w;
        let acc = sampled_pointwise_acc(x, &w, k);
        let mut op = OpSpec::new(OpKind::PointwiseInt8, input);
        op.weights = w.iter().map(|&v| v as u8).collect();
        let shape = PointwiseShape { pixels, k, n };
        let kernels = self.kernels;
        let packed = kernels.pack_int8_pointwise(&w, n, k);
        let mut scratch = kernels.scratch(k, n);
        let scratch_cell = std::cell::RefCell::new(&mut scratch);
        let run = |kk: &Kernels, e: &Epilogue<'_>, img: usize, out: &mut [i8]| {
            kk.int8_pointwise(shape, &x.data[img], &packed, e, out, &mut scratch_cell.borrow_mut())
        };
        self.conv(op, x, (x.h, x.w, n), &acc, &sums, relu6, &run)
    }

    fn depthwise(&mut self, x: &Act, input: u32, stride: usize) -> Act {
        let c = x.c;
        let w = self.int8_weights(9 * c, 40.0);
        let (ho, wo) = (conv_out(x.h, stride), conv_out(x.w, stride));
        let acc: Vec<Vec<i64>> = x
            .data
            .iter()
            .map(|img| {
                let mut a = vec![0i64; ho * wo * c];
                // Padding taps are skipped: they contribute (z - z) * w = 0.
                taps3x3(x.h, x.w, stride, |out, tap, inp| {
                    for ch in 0..c {
                        let q = i64::from(img[inp * c + ch]) - i64::from(x.zp);
                        a[out * c + ch] += q * i64::from(w[tap * c + ch]);
                    }
                });
                a
            })
            .collect();
        let sums: Vec<i64> =
            (0..c).map(|ch| (0..9).map(|t| i64::from(w[t * c + ch])).sum()).collect();
        let mut op = OpSpec::new(OpKind::Depthwise, input);
        op.stride = stride as u8;
        op.weights = w.iter().map(|&v| v as u8).collect();
        let shape = DepthwiseShape { height: x.h, width: x.w, channels: c, stride };
        let run = |k: &Kernels, e: &Epilogue<'_>, img: usize, out: &mut [i8]| {
            k.depthwise3x3(shape, &x.data[img], x.zp, &w, e, 0..ho, out)
        };
        self.conv(op, x, (ho, wo, c), &acc, &sums, true, &run)
    }

    /// Residual add with output scale twice the inputs' (both inputs share a scale here).
    fn add(&mut self, a: &Act, ia: u32, b: &Act, ib: u32) -> Act {
        let shift = 20u8;
        let (sa, sb) = (f64::from(a.scale), f64::from(b.scale));
        let so = (sa + sb).max(1e-12);
        let ma = ((sa / so) * f64::from(1u32 << shift)).round() as i32;
        let mb = ((sb / so) * f64::from(1u32 << shift)).round() as i32;
        let mut op = OpSpec::new(OpKind::Add, ia);
        op.input1 = ib;
        op.shift = shift;
        op.multiplier_a = ma;
        op.multiplier_b = mb;
        let params = AddParams {
            a_zero_point: a.zp,
            b_zero_point: b.zp,
            a_multiplier: ma,
            b_multiplier: mb,
            shift,
            output_zero_point: 0,
            output_min: -128,
            output_max: 127,
        };
        let data = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| {
                let mut out = vec![0i8; x.len()];
                self.kernels.add(x, y, &params, &mut out);
                out
            })
            .collect();
        self.ops.push(op);
        let y = Act { h: a.h, w: a.w, c: a.c, scale: so as f32, zp: 0, data };
        self.push_tensor(&y);
        y
    }

    fn avgpool(&mut self, x: &Act, input: u32) -> Act {
        let (m, s) = quantize_scale(1.0 / (x.h * x.w) as f64).expect("1/pixels is representable");
        let mut op = OpSpec::new(OpKind::AvgPool, input);
        op.multiplier_a = m;
        op.shift = s;
        let params = PoolParams {
            input_zero_point: x.zp,
            multiplier: m,
            shift: s,
            output_zero_point: x.zp,
            output_min: -128,
            output_max: 127,
        };
        let data = x
            .data
            .iter()
            .map(|img| {
                let mut out = vec![0i8; x.c];
                self.kernels.global_avg_pool(img, x.c, &params, &mut out);
                out
            })
            .collect();
        self.ops.push(op);
        let y = Act { h: 1, w: 1, c: x.c, scale: x.scale, zp: x.zp, data };
        self.push_tensor(&y);
        y
    }

    /// Classifier; returns the logit scale (softmax temperature) it chose.
    fn linear(&mut self, x: &Act, input: u32, classes: usize) {
        let k = x.c;
        let w = self.int8_weights(classes * k, 30.0);
        let sums: Vec<i64> = w.chunks(k).map(|r| r.iter().map(|&v| i64::from(v)).sum()).collect();
        let bias: Vec<i32> = sums.iter().map(|&s| (-i64::from(x.zp) * s) as i32).collect();
        let mut all = Vec::new();
        for img in &x.data {
            let mut logits = vec![0i32; classes];
            self.kernels.linear(img, &w, &bias, &mut logits);
            all.extend(logits.iter().map(|&l| f64::from(l)));
        }
        let mean = all.iter().sum::<f64>() / all.len().max(1) as f64;
        let std = (all.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>()
            / all.len().max(1) as f64)
            .sqrt();
        let mut op = OpSpec::new(OpKind::Linear, input);
        op.weights = w.iter().map(|&v| v as u8).collect();
        op.bias = bias;
        self.ops.push(op);
        // Logit scale: a standard deviation of about 3 nats across classes.
        self.tensors.push(TensorRecord {
            height: 1,
            width: 1,
            channels: classes as u32,
            scale: (3.0 / std.max(1.0)) as f32,
            zero_point: 0,
        });
    }
}

/// Deterministic calibration images: smooth colour gradients plus noise.
fn calibration_images(rng: &mut Rng, count: usize, res: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|_| {
            let (a, b, c) = (rng.unit(), rng.unit(), rng.unit());
            let mut img = vec![0u8; res * res * 3];
            for y in 0..res {
                for x in 0..res {
                    for ch in 0..3 {
                        let base = 127.0
                            + 90.0
                                * ((x as f64 * 0.05 * (a + 0.2)
                                    + y as f64 * 0.03 * (b + 0.2)
                                    + ch as f64 * c * 3.0)
                                    .sin());
                        img[(y * res + x) * 3 + ch] =
                            (base + 25.0 * rng.normal()).clamp(0.0, 255.0) as u8;
                    }
                }
            }
            img
        })
        .collect()
}

/// Synthesizes a MobileNetV2 PROM model.
pub fn synthesize(cfg: &SynthConfig) -> Result<ModelSpec, SynthError> {
    if !(0.35..=1.4).contains(&cfg.width) {
        return Err(SynthError::Width(cfg.width));
    }
    if !(32..=224).contains(&cfg.resolution) || !cfg.resolution.is_multiple_of(32) {
        return Err(SynthError::Resolution(cfg.resolution));
    }
    if cfg.classes == 0 {
        return Err(SynthError::Classes(cfg.classes));
    }
    if !(0.0..1.0).contains(&cfg.zero_fraction) {
        return Err(SynthError::ZeroFraction(cfg.zero_fraction));
    }
    if let Some(&bad) = cfg.int8_pointwise.iter().find(|&&i| i >= POINTWISE_LAYERS) {
        return Err(SynthError::Int8Pointwise(bad));
    }
    let res = cfg.resolution as usize;
    let mut rng = Rng(cfg.seed ^ 0x5052_4f4d);
    let images = calibration_images(&mut rng, cfg.calibration_images.max(1), res);
    let mut b = Builder {
        rng,
        kernels: Kernels::best(),
        tensors: vec![TensorRecord {
            height: res as u32,
            width: res as u32,
            channels: 3,
            scale: 1.0 / 255.0,
            zero_point: 0,
        }],
        ops: Vec::new(),
        zero_fraction: cfg.zero_fraction,
        int8_pointwise: cfg.int8_pointwise.clone(),
        pointwise_count: 0,
    };
    let stem_c = make_divisible(32.0 * cfg.width);
    let mut x = b.stem(&images, res, stem_c);
    let mut xi = 1u32;
    for &(t, c, n, s) in &BLOCKS {
        let out_c = make_divisible(c as f32 * cfg.width);
        for r in 0..n {
            let stride = if r == 0 { s } else { 1 };
            let residual = stride == 1 && x.c == out_c;
            let input_act_index = xi;
            let mut h = if t != 1 {
                let hidden = x.c * t;
                let y = b.pointwise(&x, xi, hidden, true);
                xi = (b.tensors.len() - 1) as u32;
                y
            } else {
                Act { h: x.h, w: x.w, c: x.c, scale: x.scale, zp: x.zp, data: x.data.clone() }
            };
            h = b.depthwise(&h, xi, stride);
            xi = (b.tensors.len() - 1) as u32;
            let mut y = b.pointwise(&h, xi, out_c, false);
            xi = (b.tensors.len() - 1) as u32;
            if residual {
                // Declare the projection output on the block input's scale so the add is
                // a plain average of the two branches.
                y.scale = x.scale;
                b.tensors[xi as usize].scale = x.scale;
                y = b.add(&x, input_act_index, &y, xi);
                xi = (b.tensors.len() - 1) as u32;
            }
            x = y;
        }
    }
    let last_c = if cfg.width > 1.0 { make_divisible(1280.0 * cfg.width) } else { 1280 };
    x = b.pointwise(&x, xi, last_c, true);
    xi = (b.tensors.len() - 1) as u32;
    if x.h * x.w > 1 {
        // Pooling a single pixel (32x32 inputs) is the identity: the classifier reads it.
        x = b.avgpool(&x, xi);
        xi = (b.tensors.len() - 1) as u32;
    }
    b.linear(&x, xi, cfg.classes as usize);
    let labels = (0..cfg.classes).map(|i| format!("class {i}")).collect();
    let metadata = Metadata {
        architecture: "mobilenetv2".into(),
        width_multiplier: cfg.width,
        input_height: cfg.resolution,
        input_width: cfg.resolution,
        classes: cfg.classes,
        producer: "promctl synth".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        notes: format!(
            "SYNTHESIZED: random weights (seed {}), {:.0}% zero ternary weights, quantization calibrated on {} random images; not a trained model",
            cfg.seed,
            cfg.zero_fraction * 100.0,
            cfg.calibration_images.max(1)
        ),
    };
    debug_assert!(b.ops.iter().all(|o| o.kind == OpKind::Add || o.input1 == NO_TENSOR));
    Ok(ModelSpec {
        metadata,
        labels,
        input_scale: 1.0 / 255.0,
        input_zero_point: 0,
        tensors: b.tensors,
        ops: b.ops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointwise_layer_count_and_int8_choice() {
        let count: usize = BLOCKS.iter().map(|&(t, _, n, _)| n * if t == 1 { 1 } else { 2 }).sum();
        assert_eq!(count + 1, POINTWISE_LAYERS);
        let cfg = SynthConfig {
            resolution: 32,
            classes: 3,
            int8_pointwise: vec![POINTWISE_LAYERS],
            ..SynthConfig::default()
        };
        assert_eq!(synthesize(&cfg), Err(SynthError::Int8Pointwise(POINTWISE_LAYERS)));
    }

    #[test]
    fn distinct_shapes_of_mobilenetv2_1_0_224() {
        let (pw, dw) = distinct_layer_shapes(1.0, 224);
        assert_eq!(
            pw,
            [
                (12544, 32, 16),
                (12544, 16, 96),
                (3136, 96, 24),
                (3136, 24, 144),
                (3136, 144, 24),
                (784, 144, 32),
                (784, 32, 192),
                (784, 192, 32),
                (196, 192, 64),
                (196, 64, 384),
                (196, 384, 64),
                (196, 384, 96),
                (196, 96, 576),
                (196, 576, 96),
                (49, 576, 160),
                (49, 160, 960),
                (49, 960, 160),
                (49, 960, 320),
                (49, 320, 1280),
            ]
        );
        assert_eq!(
            dw,
            [
                (112, 112, 32, 1),
                (112, 112, 96, 2),
                (56, 56, 144, 1),
                (56, 56, 144, 2),
                (28, 28, 192, 1),
                (28, 28, 192, 2),
                (14, 14, 384, 1),
                (14, 14, 576, 1),
                (14, 14, 576, 2),
                (7, 7, 960, 1),
            ]
        );
    }
}
