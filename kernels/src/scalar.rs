//! The scalar tier: plain, obviously correct loops. It is the oracle every other tier is
//! tested against bit for bit, and the tier used on CPUs without a SIMD tier (e.g. armv7).

use crate::params::{
    requantize, AddParams, DepthwiseShape, Epilogue, PointwiseShape, PoolParams, StemShape,
};
use crate::ternary::{groups, TernaryWeights};
use std::ops::Range;

/// Sign masks of every code: `MASKS[code][j] = (plus, minus)` with `plus = -1` (all ones)
/// when weight `j` is +1 and `minus = -1` when it is -1, so a weight is applied with an AND
/// and an add or subtract: no multiply, even one the compiler might pick for `w * x`.
const MASKS: [[(i32, i32); 4]; 81] = {
    let mut m = [[(0i32, 0i32); 4]; 81];
    let mut code = 0;
    while code < 81 {
        let mut j = 0;
        while j < 4 {
            let w = crate::ternary::TRITS[code][j];
            m[code][j] = (if w == 1 { -1 } else { 0 }, if w == -1 { -1 } else { 0 });
            j += 1;
        }
        code += 1;
    }
    m
};

/// Add-only MAC of one pixel against every output channel's packed ternary row:
/// `acc[n] = sum_k w[n][k] * x[k]`. `codes` holds `acc.len()` rows of `groups` bytes.
#[inline(never)]
pub(crate) fn ternary_mac_pixel(x: &[i8], codes: &[u8], groups: usize, acc: &mut [i32]) {
    for (row, a) in codes.chunks_exact(groups).zip(acc.iter_mut()) {
        let mut sum = 0i32;
        for (&code, xs) in row.iter().zip(x.chunks(4)) {
            let masks = &MASKS[usize::from(code)];
            for (&(plus, minus), &v) in masks.iter().zip(xs) {
                let v = i32::from(v);
                sum += v & plus;
                sum -= v & minus;
            }
        }
        *a = sum;
    }
}

/// Ternary pointwise convolution (scalar). `acc` is scratch of at least `shape.n` i32.
pub(crate) fn ternary_pointwise(
    shape: PointwiseShape,
    input: &[i8],
    w: TernaryWeights<'_>,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    acc: &mut [i32],
) {
    let g = groups(shape.k);
    let acc = &mut acc[..shape.n];
    for (x, out) in input.chunks_exact(shape.k).zip(output.chunks_exact_mut(shape.n)) {
        ternary_mac_pixel(x, w.codes, g, acc);
        apply_epilogue(acc, epi, out);
    }
}

/// Requantizes one pixel's accumulators into its output channels.
pub(crate) fn apply_epilogue(acc: &[i32], epi: &Epilogue<'_>, out: &mut [i8]) {
    for (n, (o, &a)) in out.iter_mut().zip(acc).enumerate() {
        *o = requantize(
            a,
            epi.bias[n],
            epi.multiplier[n],
            epi.shift[n],
            epi.output_zero_point,
            epi.output_min,
            epi.output_max,
        );
    }
}

/// Int8 pointwise convolution (scalar), weights row-major `n x k`.
pub(crate) fn int8_pointwise(
    shape: PointwiseShape,
    input: &[i8],
    weights: &[i8],
    epi: &Epilogue<'_>,
    output: &mut [i8],
) {
    for (x, out) in input.chunks_exact(shape.k).zip(output.chunks_exact_mut(shape.n)) {
        for (n, o) in out.iter_mut().enumerate() {
            let row = &weights[n * shape.k..(n + 1) * shape.k];
            let acc: i32 = row.iter().zip(x).map(|(&w, &v)| i32::from(w) * i32::from(v)).sum();
            *o = requantize(
                acc,
                epi.bias[n],
                epi.multiplier[n],
                epi.shift[n],
                epi.output_zero_point,
                epi.output_min,
                epi.output_max,
            );
        }
    }
}

/// Depthwise 3x3, padding 1 (padding value = `input_zero_point`), weights `[9][channels]`,
/// output rows `rows` of the full output written to `output`.
pub(crate) fn depthwise3x3(
    shape: DepthwiseShape,
    input: &[i8],
    input_zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    let (h, w, c, s) = (shape.height, shape.width, shape.channels, shape.stride);
    let wo = shape.out_width();
    for (oy_index, oy) in rows.enumerate() {
        for ox in 0..wo {
            for ch in 0..c {
                let mut acc = 0i32;
                for ky in 0..3 {
                    for kx in 0..3 {
                        let iy = (oy * s + ky) as isize - 1;
                        let ix = (ox * s + kx) as isize - 1;
                        let v = if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            input_zero_point
                        } else {
                            input[(iy as usize * w + ix as usize) * c + ch]
                        };
                        acc += i32::from(v) * i32::from(weights[(ky * 3 + kx) * c + ch]);
                    }
                }
                output[(oy_index * wo + ox) * c + ch] = requantize(
                    acc,
                    epi.bias[ch],
                    epi.multiplier[ch],
                    epi.shift[ch],
                    epi.output_zero_point,
                    epi.output_min,
                    epi.output_max,
                );
            }
        }
    }
}

/// Stem: 3x3 stride-2 padding-1 convolution from uint8 RGB, weights
/// `[(ky * 3 + kx) * 3 + ci][out_channels]`, output rows `rows`.
pub(crate) fn stem3x3s2(
    shape: StemShape,
    input: &[u8],
    input_zero_point: u8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    let (h, w, co) = (shape.height, shape.width, shape.out_channels);
    let wo = shape.out_width();
    for (oy_index, oy) in rows.enumerate() {
        for ox in 0..wo {
            for n in 0..co {
                let mut acc = 0i32;
                for ky in 0..3 {
                    for kx in 0..3 {
                        for ci in 0..3 {
                            let iy = (oy * 2 + ky) as isize - 1;
                            let ix = (ox * 2 + kx) as isize - 1;
                            let v = if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                input_zero_point
                            } else {
                                input[(iy as usize * w + ix as usize) * 3 + ci]
                            };
                            let tap = (ky * 3 + kx) * 3 + ci;
                            acc += i32::from(v) * i32::from(weights[tap * co + n]);
                        }
                    }
                }
                output[(oy_index * wo + ox) * co + n] = requantize(
                    acc,
                    epi.bias[n],
                    epi.multiplier[n],
                    epi.shift[n],
                    epi.output_zero_point,
                    epi.output_min,
                    epi.output_max,
                );
            }
        }
    }
}

/// Int8 linear layer to int32 logits: `logits[n] = bias[n] + sum_k w[n][k] * x[k]` (wrapping).
/// (Always inlined so that SIMD tiers can compile it with their target features.)
#[inline(always)]
pub(crate) fn linear(input: &[i8], weights: &[i8], bias: &[i32], logits: &mut [i32]) {
    let k = input.len();
    for (n, out) in logits.iter_mut().enumerate() {
        let row = &weights[n * k..(n + 1) * k];
        let acc: i32 = row.iter().zip(input).map(|(&w, &v)| i32::from(w) * i32::from(v)).sum();
        *out = acc.wrapping_add(bias[n]);
    }
}

/// Quantized residual add.
#[inline(always)]
pub(crate) fn add(a: &[i8], b: &[i8], p: &AddParams, out: &mut [i8]) {
    let round = 1i64 << (p.shift - 1);
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let sum = i64::from(i32::from(x) - i32::from(p.a_zero_point)) * i64::from(p.a_multiplier)
            + i64::from(i32::from(y) - i32::from(p.b_zero_point)) * i64::from(p.b_multiplier);
        let v = ((sum + round) >> p.shift) + i64::from(p.output_zero_point);
        *o = v.clamp(i64::from(p.output_min), i64::from(p.output_max)) as i8;
    }
}

/// Global average pool over `pixels` rows of `channels` values (summed row by row, 64
/// channels at a time in a stack buffer, so memory is read in order).
#[inline(always)]
pub(crate) fn global_avg_pool(input: &[i8], channels: usize, p: &PoolParams, out: &mut [i8]) {
    let pixels = input.len() / channels;
    let bias = -(i32::from(p.input_zero_point) * pixels as i32);
    for c0 in (0..channels).step_by(64) {
        let width = 64.min(channels - c0);
        let mut sums = [0i32; 64];
        for row in input.chunks_exact(channels) {
            for (s, &v) in sums[..width].iter_mut().zip(&row[c0..c0 + width]) {
                *s += i32::from(v);
            }
        }
        for (o, &s) in out[c0..c0 + width].iter_mut().zip(&sums[..width]) {
            *o = requantize(
                s,
                bias,
                p.multiplier,
                p.shift,
                p.output_zero_point,
                p.output_min,
                p.output_max,
            );
        }
    }
}
