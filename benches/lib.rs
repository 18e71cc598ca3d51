//! Shared pieces of the benchmarks and the kernel demo: MobileNetV2-1.0-224 layer shapes and
//! randomly initialised layers with realistic quantization parameters.

use prom_kernels::{
    ternary, Epilogue, Int8PointwiseWeights, Kernels, PointwiseShape, PreparedTernary, Scratch,
    TernaryWeights,
};

/// Every distinct pointwise (1x1) shape of MobileNetV2-1.0-224 as (pixels = H*W, k, n),
/// derived from the architecture in prom-engine.
pub fn mobilenetv2_pointwise() -> Vec<(usize, usize, usize)> {
    prom_engine::distinct_layer_shapes(1.0, 224).0
}

/// Every distinct depthwise shape of MobileNetV2-1.0-224 as (height, width, channels, stride).
pub fn mobilenetv2_depthwise() -> Vec<(usize, usize, usize, usize)> {
    prom_engine::distinct_layer_shapes(1.0, 224).1
}

/// Deterministic pseudo-random numbers (SplitMix64).
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// `len` random int8 values.
    pub fn i8s(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| self.next_u64() as i8).collect()
    }
    /// `len` random uint8 values.
    pub fn u8s(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
    /// `len` int8 weights in [-127, 127].
    pub fn weights(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| ((self.next_u64() % 255) as i16 - 127) as i8).collect()
    }
}

/// Owned epilogue parameters with a scale that keeps outputs spread over the int8 range.
pub struct OwnedEpilogue {
    /// Bias per channel.
    pub bias: Vec<i32>,
    /// Multiplier per channel.
    pub multiplier: Vec<i32>,
    /// Shift per channel.
    pub shift: Vec<u8>,
}

impl OwnedEpilogue {
    /// Parameters for `n` channels whose accumulators have roughly magnitude `acc_range`,
    /// with the packer's short multipliers (as `promctl synth` writes them), so kernels
    /// take the same epilogue as on a real model.
    pub fn new(rng: &mut Rng, n: usize, acc_range: f64) -> OwnedEpilogue {
        let mut e = OwnedEpilogue { bias: vec![], multiplier: vec![], shift: vec![] };
        for _ in 0..n {
            let scale = 60.0 / acc_range * (0.5 + (rng.next_u64() % 1000) as f64 / 1000.0);
            let (m, s) = prom_kernels::quantize_scale_short(scale.min(0.49)).expect("scale");
            e.multiplier.push(m);
            e.shift.push(s);
            e.bias.push((rng.next_u64() % 2001) as i32 - 1000);
        }
        e
    }

    /// Borrowed view with output zero point -128 and ReLU6-style clamp to the full range.
    pub fn view(&self) -> Epilogue<'_> {
        Epilogue {
            bias: &self.bias,
            multiplier: &self.multiplier,
            shift: &self.shift,
            output_zero_point: -128,
            output_min: -128,
            output_max: 127,
        }
    }
}

/// A pointwise layer with random activations and both kinds of weights.
pub struct PointwiseLayer {
    /// Shape.
    pub shape: PointwiseShape,
    /// Activations, pixels x k.
    pub input: Vec<i8>,
    /// Packed ternary weights (about one third zeros).
    pub codes: Vec<u8>,
    /// Row-major int8 weights for the multiply baseline.
    pub int8: Vec<i8>,
    /// Epilogue parameters.
    pub epi: OwnedEpilogue,
}

impl PointwiseLayer {
    /// A random layer of the given shape.
    pub fn random(pixels: usize, k: usize, n: usize, seed: u64) -> PointwiseLayer {
        let mut rng = Rng::new(seed);
        let trits: Vec<i8> = (0..n * k).map(|_| (rng.next_u64() % 3) as i8 - 1).collect();
        PointwiseLayer {
            shape: PointwiseShape { pixels, k, n },
            input: rng.i8s(pixels * k),
            codes: ternary::pack(&trits, n, k).expect("ternary"),
            int8: rng.weights(n * k),
            epi: OwnedEpilogue::new(&mut rng, n, 60.0 * (k as f64).sqrt()),
        }
    }

    /// Multiply-accumulates of one run.
    pub fn macs(&self) -> u64 {
        (self.shape.pixels * self.shape.k * self.shape.n) as u64
    }

    /// Packed ternary weights view.
    pub fn ternary_weights(&self) -> TernaryWeights<'_> {
        TernaryWeights { n: self.shape.n, k: self.shape.k, codes: &self.codes }
    }

    /// Int8 weights packed for `kern`.
    pub fn int8_weights(&self, kern: &Kernels) -> Int8PointwiseWeights {
        kern.pack_int8_pointwise(&self.int8, self.shape.n, self.shape.k)
    }

    /// Scratch for `kern`.
    pub fn scratch(&self, kern: &Kernels) -> Scratch {
        kern.scratch(self.shape.k, self.shape.n)
    }

    /// Ternary weights prepared for `kern` (done once, at load time, by the engine).
    pub fn prepared_ternary(&self, kern: &Kernels) -> PreparedTernary {
        kern.prepare_ternary(self.ternary_weights())
    }

    /// Runs the ternary kernel of `kern` into `out`.
    pub fn run_ternary(
        &self,
        kern: &Kernels,
        w: &PreparedTernary,
        out: &mut [i8],
        scratch: &mut Scratch,
    ) {
        kern.ternary_pointwise(self.shape, &self.input, w, &self.epi.view(), out, scratch);
    }

    /// Runs the int8 kernel of `kern` into `out`.
    pub fn run_int8(
        &self,
        kern: &Kernels,
        w: &Int8PointwiseWeights,
        out: &mut [i8],
        scratch: &mut Scratch,
    ) {
        kern.int8_pointwise(self.shape, &self.input, w, &self.epi.view(), out, scratch);
    }
}
