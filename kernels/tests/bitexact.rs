//! Bit-exactness of every SIMD tier against the scalar oracle, and of the scalar oracle
//! against direct formulas. One set of property tests is instantiated per tier by
//! `tier_tests!`; a tier that should exist on this machine but does not is a failure.

mod common;

use common::*;
use prom_kernels::{
    DepthwiseShape, Kernels, PointwiseShape, StemShape, TernaryWeights, Tier, MAX_POINTWISE_K,
};

/// The kernels of `tier`, or a failing test if this machine should have it. `None` only for
/// a tier that /proc/cpuinfo (read independently of the crate's detection) says this CPU
/// cannot run; that is printed, so the skip is never silent.
fn require(tier: Tier) -> Option<Kernels> {
    if tier == Tier::Avx512 && !cpuinfo_has(&["avx512f", "avx512bw", "avx512vl"]) {
        assert!(
            Kernels::new(tier).is_err(),
            "avx512 detected although /proc/cpuinfo lacks avx512f/bw/vl"
        );
        println!("tier-check: avx512 not run: /proc/cpuinfo has no avx512f/bw/vl on this CPU");
        return None;
    }
    match Kernels::new(tier) {
        Ok(k) => {
            assert_eq!(k.tier(), tier);
            Some(k)
        }
        Err(e) => panic!("tier {tier} did not run: {e} (this test must not be skipped)"),
    }
}

/// Whether the first CPU's flags in /proc/cpuinfo include all of `flags`.
fn cpuinfo_has(flags: &[&str]) -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let line = info.lines().find(|l| l.starts_with("flags")).expect("cpuinfo flags line");
    let have: Vec<&str> = line.split_whitespace().collect();
    flags.iter().all(|f| have.contains(f))
}

struct Pw {
    shape: PointwiseShape,
    input: Vec<i8>,
    ternary: Vec<i8>,
    int8: Vec<i8>,
    epi: Epi,
}

impl Pw {
    fn random(rng: &mut Rng, pixels: usize, k: usize, n: usize) -> Pw {
        let zero_percent = rng.pick(&[0, 30, 50, 90]);
        let ternary = rng.ternary(n * k, zero_percent);
        let epi = if rng.range(0, 3) == 0 {
            Epi::random_shifts(rng, n)
        } else {
            Epi::realistic(rng, n, 40.0 * (k as f64).sqrt())
        };
        Pw {
            shape: PointwiseShape { pixels, k, n },
            input: rng.i8s(pixels * k),
            int8: rng.weights(n * k),
            ternary,
            epi,
        }
    }

    fn ternary_out(&self, kern: Kernels) -> Vec<i8> {
        let codes = pack_ternary(&self.ternary, self.shape.n, self.shape.k);
        let w = kern.prepare_ternary(TernaryWeights {
            n: self.shape.n,
            k: self.shape.k,
            codes: &codes,
        });
        let mut out = vec![0i8; self.shape.pixels * self.shape.n];
        let mut scratch = kern.scratch(self.shape.k, self.shape.n);
        kern.ternary_pointwise(
            self.shape,
            &self.input,
            &w,
            &self.epi.view(),
            &mut out,
            &mut scratch,
        );
        out
    }

    fn int8_out(&self, kern: Kernels) -> Vec<i8> {
        let w = kern.pack_int8_pointwise(&self.int8, self.shape.n, self.shape.k);
        let mut out = vec![0i8; self.shape.pixels * self.shape.n];
        let mut scratch = kern.scratch(self.shape.k, self.shape.n);
        kern.int8_pointwise(self.shape, &self.input, &w, &self.epi.view(), &mut out, &mut scratch);
        out
    }

    fn assert_same(&self, kern: Kernels) {
        let scalar = Kernels::scalar();
        assert_eq!(
            self.ternary_out(kern),
            self.ternary_out(scalar),
            "ternary pointwise {:?} tier {} differs from scalar",
            self.shape,
            kern.tier()
        );
        assert_eq!(
            self.int8_out(kern),
            self.int8_out(scalar),
            "int8 pointwise {:?} tier {} differs from scalar",
            self.shape,
            kern.tier()
        );
    }
}

fn check_pointwise_small_channels(kern: Kernels) {
    let mut rng = Rng::new(1);
    for k in 1..=65 {
        for n in [1, 2, 3, 7, 8, 15, 16, 17, 24, 31, 32, 33, 48, 64, 65] {
            let pixels = rng.pick(&[1, 3, 15, 16, 17, 31, 32, 33, 65]);
            Pw::random(&mut rng, pixels, k, n).assert_same(kern);
        }
    }
    for n in 1..=65 {
        let k = rng.usize(1, 65);
        let pixels = rng.pick(&[1, 9, 49]);
        Pw::random(&mut rng, pixels, k, n).assert_same(kern);
    }
}

fn check_pointwise_mobilenet(kern: Kernels) {
    let mut rng = Rng::new(2);
    for (pixels, k, n) in MOBILENETV2_POINTWISE {
        // Under emulation keep the channel shapes but trim the pixel count, keeping a
        // partial tile.
        let pixels = if emulated() { pixels.min(53) } else { pixels };
        Pw::random(&mut rng, pixels, k, n).assert_same(kern);
        // The same layer at width 1.4 (channels rounded to multiples of 8).
        let widen = |c: usize| (c * 14 / 10).div_ceil(8) * 8;
        Pw::random(&mut rng, pixels.min(64), widen(k), widen(n)).assert_same(kern);
    }
}

fn check_pointwise_extremes(kern: Kernels) {
    let mut rng = Rng::new(3);
    // Multi-window int16 sums of both table schemes (lut40: n < k, lut81: n >= k), and the
    // direct scheme's int16 bound (k = 255, n < 64); k = 255 with many outputs is NEON's
    // int16 accumulators over several lut40 chunks at their bound.
    let shapes = [
        (17, 1344, 24),
        (33, 65, 17),
        (16, 16, 16),
        (49, 960, 320),
        (65, 264, 300),
        (33, 255, 63),
        (17, 255, 130),
    ];
    for &(pixels, k, n) in &shapes {
        for x in [-128i8, 127, 0] {
            for wv in [-1i8, 0, 1] {
                let mut pw = Pw::random(&mut rng, pixels, k, n);
                pw.input.fill(x);
                pw.ternary.fill(wv);
                pw.int8.fill(if wv == 0 { 0 } else { 127 * wv });
                pw.assert_same(kern);
                // The same bound through the 16-bit (short-form) epilogue where it applies.
                pw.epi = Epi::realistic_with(&mut rng, n, 128.0 * k as f64, true);
                pw.assert_same(kern);
            }
        }
    }
}

fn check_requant_shifts(kern: Kernels) {
    let mut rng = Rng::new(4);
    for shift in prom_kernels::params::MIN_SHIFT..=prom_kernels::params::MAX_SHIFT {
        let mut pw = Pw::random(&mut rng, 19, 37, 21);
        pw.epi = Epi::with_shift(&mut rng, 21, shift);
        pw.assert_same(kern);
        let mut dw = Dw::random(&mut rng, 5, 7, 19, 1 + usize::from(shift % 2));
        dw.epi = Epi::with_shift(&mut rng, 19, shift);
        dw.assert_same(kern);
        let mut stem = Stem::random(&mut rng, 9, 7, 20);
        stem.epi = Epi::with_shift(&mut rng, 20, shift);
        stem.assert_same(kern);
    }
}

struct Dw {
    shape: DepthwiseShape,
    input: Vec<i8>,
    zero_point: i8,
    weights: Vec<i8>,
    epi: Epi,
}

impl Dw {
    fn random(rng: &mut Rng, height: usize, width: usize, channels: usize, stride: usize) -> Dw {
        let epi = if rng.range(0, 3) == 0 {
            Epi::random_shifts(rng, channels)
        } else {
            Epi::realistic(rng, channels, 40_000.0)
        };
        Dw {
            shape: DepthwiseShape { height, width, channels, stride },
            input: rng.i8s(height * width * channels),
            zero_point: rng.range(-128, 127) as i8,
            weights: rng.weights(9 * channels),
            epi,
        }
    }

    fn run(&self, kern: Kernels, rows: std::ops::Range<usize>) -> Vec<i8> {
        let mut out = vec![0i8; rows.len() * self.shape.out_width() * self.shape.channels];
        kern.depthwise3x3(
            self.shape,
            &self.input,
            self.zero_point,
            &self.weights,
            &self.epi.view(),
            rows,
            &mut out,
        );
        out
    }

    fn assert_same(&self, kern: Kernels) {
        let ho = self.shape.out_height();
        let full = self.run(Kernels::scalar(), 0..ho);
        assert_eq!(self.run(kern, 0..ho), full, "depthwise {:?} tier {}", self.shape, kern.tier());
        // A sub-range of rows equals the same rows of the full output.
        let (a, b) = (ho / 3, ho - ho / 4);
        let row = self.shape.out_width() * self.shape.channels;
        assert_eq!(self.run(kern, a..b), full[a * row..b * row], "depthwise rows {a}..{b}");
    }
}

fn check_depthwise(kern: Kernels) {
    let mut rng = Rng::new(5);
    for channels in 1..=65 {
        let size = rng.pick(&[1, 2, 3, 5, 7, 13]);
        let (h, w) = (size, rng.pick(&[1, 3, 7, 13, size]));
        Dw::random(&mut rng, h, w, channels, 1 + channels % 2).assert_same(kern);
    }
    for size in [1, 3, 7, 13] {
        for stride in [1, 2] {
            let channels = rng.pick(&[8, 16, 24, 40]);
            Dw::random(&mut rng, size, size, channels, stride).assert_same(kern);
        }
    }
    for (h, w, c, s) in MOBILENETV2_DEPTHWISE {
        let (h, w) = if emulated() { (h.min(9), w.min(11)) } else { (h, w) };
        Dw::random(&mut rng, h, w, c, s).assert_same(kern);
    }
    // Extremes: every input and weight at the ends of their ranges.
    for (x, wv) in [(-128i8, -127i8), (127, 127), (-128, 127), (0, 0)] {
        let mut dw = Dw::random(&mut rng, 7, 7, 33, 2);
        dw.input.fill(x);
        dw.weights.fill(wv);
        dw.zero_point = x;
        dw.assert_same(kern);
    }
}

struct Stem {
    shape: StemShape,
    input: Vec<u8>,
    zero_point: u8,
    weights: Vec<i8>,
    epi: Epi,
}

impl Stem {
    fn random(rng: &mut Rng, height: usize, width: usize, out_channels: usize) -> Stem {
        let epi = if rng.range(0, 3) == 0 {
            Epi::random_shifts(rng, out_channels)
        } else {
            Epi::realistic(rng, out_channels, 200_000.0)
        };
        Stem {
            shape: StemShape { height, width, out_channels },
            input: rng.u8s(height * width * 3),
            zero_point: rng.range(0, 255) as u8,
            weights: rng.weights(27 * out_channels),
            epi,
        }
    }

    fn run(&self, kern: Kernels, rows: std::ops::Range<usize>) -> Vec<i8> {
        let mut out = vec![0i8; rows.len() * self.shape.out_width() * self.shape.out_channels];
        kern.stem3x3s2(
            self.shape,
            &self.input,
            self.zero_point,
            &self.weights,
            &self.epi.view(),
            rows,
            &mut out,
        );
        out
    }

    fn assert_same(&self, kern: Kernels) {
        let ho = self.shape.out_height();
        let full = self.run(Kernels::scalar(), 0..ho);
        assert_eq!(self.run(kern, 0..ho), full, "stem {:?} tier {}", self.shape, kern.tier());
        let (a, b) = (ho / 2, ho);
        let row = self.shape.out_width() * self.shape.out_channels;
        assert_eq!(self.run(kern, a..b), full[a * row..b * row], "stem rows {a}..{b}");
    }
}

fn check_stem(kern: Kernels) {
    let mut rng = Rng::new(6);
    for out_channels in 1..=65 {
        let (h, w) = (rng.pick(&[1, 2, 3, 7, 13]), rng.pick(&[1, 3, 7, 13, 16]));
        Stem::random(&mut rng, h, w, out_channels).assert_same(kern);
    }
    let full = if emulated() { 35 } else { 224 };
    Stem::random(&mut rng, full, full, 32).assert_same(kern);
    Stem::random(&mut rng, 96, 96, 48).assert_same(kern); // width 1.4 stem at 96 px
    for (x, wv) in [(255u8, 127i8), (0, -127), (255, -127)] {
        let mut s = Stem::random(&mut rng, 13, 13, 40);
        s.input.fill(x);
        s.weights.fill(wv);
        s.assert_same(kern);
    }
}

fn check_small_ops(kern: Kernels) {
    let mut rng = Rng::new(7);
    let scalar = Kernels::scalar();
    // The MobileNetV2-1.4 classifier size at the extremes of the int8 ranges (largest sums).
    for (xv, wv) in [(-128i8, -127i8), (-128, 127), (127, 127)] {
        let (k, n) = (1792, 1001);
        let (x, w) = (vec![xv; k], vec![wv; k * n]);
        let bias: Vec<i32> = (0..n as i32).map(|i| i * 1000 - 500_000).collect();
        let (mut a, mut b) = (vec![0; n], vec![0; n]);
        kern.linear(&x, &w, &bias, &mut a);
        scalar.linear(&x, &w, &bias, &mut b);
        assert_eq!(a, b, "linear at x={xv}, w={wv}");
    }
    for _ in 0..50 {
        let (k, n) = (rng.usize(1, 1792), rng.usize(1, 40));
        let (x, w) = (rng.i8s(k), rng.weights(k * n));
        let bias: Vec<i32> = (0..n).map(|_| rng.range(-(1 << 20), 1 << 20) as i32).collect();
        let (mut a, mut b) = (vec![0; n], vec![0; n]);
        kern.linear(&x, &w, &bias, &mut a);
        scalar.linear(&x, &w, &bias, &mut b);
        assert_eq!(a, b);

        let len = rng.usize(1, 3000);
        let (x, y) = (rng.i8s(len), rng.i8s(len));
        let p = random_add_params(&mut rng);
        let (mut a, mut b) = (vec![0; len], vec![0; len]);
        kern.add(&x, &y, &p, &mut a);
        scalar.add(&x, &y, &p, &mut b);
        assert_eq!(a, b);

        // Extremes: largest multipliers and input distances (the int32 sum's bound), every
        // shift, wide clamp bounds.
        let shift = 1 + (rng.usize(0, 30) as u8);
        let (za, zb) = (rng.pick(&[-128i8, 127]), rng.pick(&[-128i8, 127]));
        let p = prom_kernels::AddParams {
            a_zero_point: za,
            b_zero_point: zb,
            a_multiplier: prom_kernels::params::ADD_MAX_MULTIPLIER,
            b_multiplier: rng.pick(&[0, prom_kernels::params::ADD_MAX_MULTIPLIER]),
            shift,
            output_zero_point: rng.range(-128, 127) as i8,
            output_min: -128,
            output_max: 127,
        };
        // Every third element as far from its zero point as int8 allows (|a - za| = 255).
        let far = |z: i8| if z < 0 { 127 } else { -128 };
        let x: Vec<i8> = (0..len).map(|i| if i % 3 == 0 { far(za) } else { x[i] }).collect();
        let y: Vec<i8> = (0..len).map(|i| if i % 3 == 0 { far(zb) } else { y[i] }).collect();
        kern.add(&x, &y, &p, &mut a);
        scalar.add(&x, &y, &p, &mut b);
        assert_eq!(a, b, "add extremes, shift {shift}");

        let (pixels, c) = (rng.pick(&[1, 9, 49]), rng.usize(1, 1280));
        let x = rng.i8s(pixels * c);
        let p = random_pool_params(&mut rng);
        let (mut a, mut b) = (vec![0; c], vec![0; c]);
        kern.global_avg_pool(&x, c, &p, &mut a);
        scalar.global_avg_pool(&x, c, &p, &mut b);
        assert_eq!(a, b);
    }
}

macro_rules! tier_tests {
    ($name:ident, $tier:expr, $cfg:meta) => {
        #[$cfg]
        mod $name {
            use super::*;

            /// Runs `check` on the tier's kernels (see [`require`] for when it may not).
            fn with_kern(check: fn(Kernels)) {
                if let Some(k) = require($tier) {
                    check(k);
                }
            }

            #[test]
            fn pointwise_channels_1_to_65() {
                with_kern(check_pointwise_small_channels);
            }
            #[test]
            fn pointwise_mobilenetv2_shapes() {
                with_kern(check_pointwise_mobilenet);
            }
            #[test]
            fn pointwise_extremes_and_accumulator_bound() {
                with_kern(check_pointwise_extremes);
            }
            #[test]
            fn requantization_every_shift() {
                with_kern(check_requant_shifts);
            }
            #[test]
            fn depthwise() {
                with_kern(check_depthwise);
            }
            #[test]
            fn stem() {
                with_kern(check_stem);
            }
            #[test]
            fn linear_add_pool() {
                with_kern(check_small_ops);
            }
            #[test]
            fn tier_really_ran() {
                let Some(kern) = require($tier) else { return };
                let kern = || kern;
                let before = prom_kernels::tier_calls($tier);
                let mut rng = Rng::new(10);
                Pw::random(&mut rng, 17, 40, 24).assert_same(kern());
                Dw::random(&mut rng, 7, 9, 33, 2).assert_same(kern());
                Stem::random(&mut rng, 9, 9, 24).assert_same(kern());
                let after = prom_kernels::tier_calls($tier);
                // ternary + int8 pointwise, 2 depthwise and 2 stem calls at least.
                assert!(after >= before + 6, "tier {} served {} calls", $tier, after - before);
                println!("tier-check: {} ran {} kernel calls", $tier, after - before);
                let baseline = kern().int8_pointwise_kernel();
                println!("tier-check: int8 baseline {baseline}");
                // Under qemu, the emulated core decides whether the int8 baseline may use
                // the dot-product extension: the A76 has it, the A72 does not.
                match std::env::var("QEMU_CPU").as_deref() {
                    Ok("cortex-a76") => assert!(baseline.contains("sdot"), "{baseline}"),
                    Ok("cortex-a72") => assert!(!baseline.contains("sdot"), "{baseline}"),
                    _ => {}
                }
            }
        }
    };
}

tier_tests!(avx2, Tier::Avx2, cfg(target_arch = "x86_64"));
tier_tests!(avx512, Tier::Avx512, cfg(target_arch = "x86_64"));
tier_tests!(neon, Tier::Neon, cfg(target_arch = "aarch64"));

/// The scalar oracle itself against direct formulas with unpacked weights.
mod scalar_oracle {
    use super::*;
    use prom_kernels::requantize;

    #[test]
    fn ternary_and_int8_match_direct_formula() {
        let mut rng = Rng::new(8);
        let kern = Kernels::scalar();
        for _ in 0..40 {
            let (pixels, k, n) = (rng.usize(1, 20), rng.usize(1, 70), rng.usize(1, 40));
            let pw = Pw::random(&mut rng, pixels, k, n);
            let e = &pw.epi;
            let direct = |w: &[i8]| -> Vec<i8> {
                let mut out = Vec::new();
                for p in 0..pixels {
                    for c in 0..n {
                        let acc: i32 = (0..k)
                            .map(|j| i32::from(w[c * k + j]) * i32::from(pw.input[p * k + j]))
                            .sum();
                        out.push(requantize(
                            acc,
                            e.bias[c],
                            e.multiplier[c],
                            e.shift[c],
                            e.zero_point,
                            e.min,
                            e.max,
                        ));
                    }
                }
                out
            };
            assert_eq!(pw.ternary_out(kern), direct(&pw.ternary));
            assert_eq!(pw.int8_out(kern), direct(&pw.int8));
        }
    }

    /// Worst case of the accumulator bound at MobileNetV2 x1.4's largest pointwise K:
    /// every input -128 and every weight -1 (or +1, or -127 for int8) gives exactly
    /// `+-128 * k` (or `128 * 127 * k`), observed through an identity-like epilogue.
    #[test]
    fn accumulator_bound_worst_case() {
        let k = 1344;
        assert!(k <= MAX_POINTWISE_K);
        let kern = Kernels::best();
        for (w, expected) in [(-1i8, 128 * 1344), (1, -128 * 1344)] {
            for tier in [Kernels::scalar(), kern] {
                let codes = pack_ternary(&vec![w; k], 1, k);
                let weights = tier.prepare_ternary(TernaryWeights { n: 1, k, codes: &codes });
                // multiplier 2^30, shift 62: y = acc / 2^32 rounded; bias moves acc so the
                // result sits in range: (acc - expected) must be exactly 0.
                let epi = Epi {
                    bias: vec![-expected],
                    multiplier: vec![1 << 30],
                    shift: vec![32],
                    zero_point: 0,
                    min: -128,
                    max: 127,
                };
                let mut out = vec![0i8; 1];
                let mut scratch = tier.scratch(k, 1);
                let shape = PointwiseShape { pixels: 1, k, n: 1 };
                tier.ternary_pointwise(
                    shape,
                    &vec![-128; k],
                    &weights,
                    &epi.view(),
                    &mut out,
                    &mut scratch,
                );
                assert_eq!(out[0], 0, "ternary acc != {expected} on {}", tier.tier());
                // one off in either direction is visible: scale 1/4 rounds +-4 to +-1
                let epi = Epi { bias: vec![-expected + 4], ..epi };
                tier.ternary_pointwise(
                    shape,
                    &vec![-128; k],
                    &weights,
                    &epi.view(),
                    &mut out,
                    &mut scratch,
                );
                assert_eq!(out[0], 1);
            }
        }
        for tier in [Kernels::scalar(), kern] {
            let expected = 128 * 127 * 1344;
            let w = tier.pack_int8_pointwise(&vec![-127; k], 1, k);
            let epi = Epi {
                bias: vec![-expected - 8],
                multiplier: vec![1 << 30],
                shift: vec![32],
                zero_point: 0,
                min: -128,
                max: 127,
            };
            let mut out = vec![0i8; 1];
            let mut scratch = tier.scratch(k, 1);
            let shape = PointwiseShape { pixels: 1, k, n: 1 };
            tier.int8_pointwise(shape, &vec![-128; k], &w, &epi.view(), &mut out, &mut scratch);
            assert_eq!(out[0], -2, "int8 acc != {expected} on {}", tier.tier());
        }
    }

    #[test]
    fn add_and_pool_match_direct_formula() {
        let mut rng = Rng::new(9);
        let kern = Kernels::scalar();
        for _ in 0..200 {
            let p = random_add_params(&mut rng);
            let (a, b) = (rng.i8s(1), rng.i8s(1));
            let mut out = [0i8];
            kern.add(&a, &b, &p, &mut out);
            let real = (i64::from(a[0]) - i64::from(p.a_zero_point)) * i64::from(p.a_multiplier)
                + (i64::from(b[0]) - i64::from(p.b_zero_point)) * i64::from(p.b_multiplier);
            let y = (real as f64 / 2f64.powi(i32::from(p.shift)) + 0.5).floor() as i64
                + i64::from(p.output_zero_point);
            assert_eq!(
                i64::from(out[0]),
                y.clamp(i64::from(p.output_min), i64::from(p.output_max))
            );
        }
        let x = vec![10i8, 20, 30, 40]; // 2 pixels x 2 channels
        let p = prom_kernels::PoolParams {
            input_zero_point: 10,
            multiplier: 1 << 30,
            shift: 32, // scale 1/4
            output_zero_point: 1,
            output_min: -128,
            output_max: 127,
        };
        let mut out = [0i8; 2];
        kern.global_avg_pool(&x, 2, &p, &mut out);
        // channel 0: (0 + 20) / 4 = 5 -> 6; channel 1: (10 + 30) / 4 = 10 -> 11
        assert_eq!(out, [6, 11]);
    }
}

#[test]
fn forced_tier_names_parse() {
    assert_eq!(Tier::from_name("AVX2"), Some(Tier::Avx2));
    assert_eq!(Tier::from_name("avx512"), Some(Tier::Avx512));
    assert_eq!(Tier::from_name(" neon "), Some(Tier::Neon));
    assert_eq!(Tier::from_name("scalar"), Some(Tier::Scalar));
    assert_eq!(Tier::from_name("sse"), None);
    assert!(Tier::Scalar.is_available());
    #[cfg(target_arch = "x86_64")]
    assert!(!Tier::Neon.is_available());
}
