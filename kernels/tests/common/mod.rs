//! Test helpers: a seeded RNG, random operands, and the MobileNetV2 shapes.
#![allow(dead_code)]

use prom_kernels::params::{MAX_SHIFT, MIN_SHIFT};
use prom_kernels::{ternary, AddParams, PoolParams};

/// SplitMix64: small, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    pub fn usize(&mut self, lo: usize, hi: usize) -> usize {
        self.range(lo as i64, hi as i64) as usize
    }
    pub fn i8s(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| self.next_u64() as i8).collect()
    }
    pub fn u8s(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
    /// int8 weights in the contract's symmetric range [-127, 127].
    pub fn weights(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| self.range(-127, 127) as i8).collect()
    }
    /// Ternary weights with about `zero_percent` zeros.
    pub fn ternary(&mut self, len: usize, zero_percent: u64) -> Vec<i8> {
        (0..len)
            .map(|_| {
                if self.next_u64() % 100 < zero_percent {
                    0
                } else if self.next_u64().is_multiple_of(2) {
                    1
                } else {
                    -1
                }
            })
            .collect()
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.usize(0, items.len() - 1)]
    }
}

/// Owned epilogue parameters.
#[derive(Clone, Debug)]
pub struct Epi {
    pub bias: Vec<i32>,
    pub multiplier: Vec<i32>,
    pub shift: Vec<u8>,
    pub zero_point: i8,
    pub min: i8,
    pub max: i8,
}

impl Epi {
    pub fn view(&self) -> prom_kernels::Epilogue<'_> {
        prom_kernels::Epilogue {
            bias: &self.bias,
            multiplier: &self.multiplier,
            shift: &self.shift,
            output_zero_point: self.zero_point,
            output_min: self.min,
            output_max: self.max,
        }
    }

    /// Parameters whose scale roughly maps an accumulator of magnitude `acc_range` onto the
    /// int8 range, so outputs are spread out (not all clamped), with random bias/zero
    /// point/clamp (sometimes ReLU6-like).
    /// Half of the time with the packer's short multipliers (`quantize_scale_short`), which
    /// let kernels take the 16-bit epilogue.
    pub fn realistic(rng: &mut Rng, n: usize, acc_range: f64) -> Epi {
        let short = rng.range(0, 1) == 0;
        Epi::realistic_with(rng, n, acc_range, short)
    }

    /// [`Epi::realistic`] with short multipliers or full 31-bit ones.
    pub fn realistic_with(rng: &mut Rng, n: usize, acc_range: f64, short: bool) -> Epi {
        let mut e = Epi::random_shifts(rng, n);
        for c in 0..n {
            let scale = (100.0 / acc_range.max(1.0)) * (0.5 + rng.range(0, 1000) as f64 / 1000.0);
            let quantize = if short {
                prom_kernels::quantize_scale_short
            } else {
                prom_kernels::quantize_scale
            };
            let (m, s) = quantize(scale.min(0.49)).unwrap();
            e.multiplier[c] = m;
            e.shift[c] = s;
            e.bias[c] = rng.range(-(acc_range as i64) / 4, acc_range as i64 / 4) as i32;
        }
        e
    }

    /// Fully random multipliers and shifts across the whole allowed range.
    pub fn random_shifts(rng: &mut Rng, n: usize) -> Epi {
        let zero_point = rng.range(-128, 127) as i8;
        let (min, max) = match rng.range(0, 2) {
            0 => (-128, 127),
            1 => (zero_point, 127), // ReLU-like lower bound
            _ => {
                let a = rng.range(-128, 127) as i8;
                let b = rng.range(-128, 127) as i8;
                (a.min(b), a.max(b))
            }
        };
        Epi {
            bias: (0..n).map(|_| rng.range(-(1 << 24), 1 << 24) as i32).collect(),
            multiplier: (0..n).map(|_| rng.range(0, i32::MAX as i64) as i32).collect(),
            shift: (0..n).map(|_| rng.range(MIN_SHIFT as i64, MAX_SHIFT as i64) as u8).collect(),
            zero_point,
            min,
            max,
        }
    }

    /// Identity-ish: passes small accumulators through with scale just under 0.5.
    pub fn with_shift(rng: &mut Rng, n: usize, shift: u8) -> Epi {
        let mut e = Epi::random_shifts(rng, n);
        e.shift = vec![shift; n];
        e
    }
}

pub fn random_add_params(rng: &mut Rng) -> AddParams {
    let a = rng.range(-128, 127) as i8;
    let b = rng.range(-128, 127) as i8;
    AddParams {
        a_zero_point: rng.range(-128, 127) as i8,
        b_zero_point: rng.range(-128, 127) as i8,
        a_multiplier: rng.range(0, 1 << 22) as i32,
        b_multiplier: rng.range(0, 1 << 22) as i32,
        // Mostly realistic shifts, a third anywhere in the contract's 1..=31.
        shift: if rng.range(0, 3) == 0 { rng.range(1, 31) } else { rng.range(16, 31) } as u8,
        output_zero_point: rng.range(-128, 127) as i8,
        output_min: a.min(b),
        output_max: a.max(b),
    }
}

pub fn random_pool_params(rng: &mut Rng) -> PoolParams {
    let (m, s) = prom_kernels::quantize_scale(0.49 * (rng.range(1, 1000) as f64 / 1000.0)).unwrap();
    PoolParams {
        input_zero_point: rng.range(-128, 127) as i8,
        multiplier: m,
        shift: s.max(40),
        output_zero_point: rng.range(-128, 127) as i8,
        output_min: -128,
        output_max: 127,
    }
}

pub fn pack_ternary(w: &[i8], n: usize, k: usize) -> Vec<u8> {
    ternary::pack(w, n, k).expect("ternary weights")
}

/// Every distinct pointwise (1x1) shape of MobileNetV2-1.0-224 as (pixels, k, n).
pub const MOBILENETV2_POINTWISE: [(usize, usize, usize); 19] = [
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
];

/// Every distinct depthwise shape of MobileNetV2-1.0-224 as (height, width, channels, stride).
pub const MOBILENETV2_DEPTHWISE: [(usize, usize, usize, usize); 10] = [
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
];

/// Whether the tests run under emulation (smaller sizes keep CI time sensible).
pub fn emulated() -> bool {
    std::env::var_os("PROM_TEST_EMULATED").is_some()
}
