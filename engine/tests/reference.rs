//! An independent, deliberately naive integer executor of `.prom` graphs (plain loops over
//! the stored weights; no kernels crate, its own requantization code), and the check that
//! the engine's logits equal it bit for bit on many random inputs for several synthesized
//! models, on every available tier and thread count.

use prom_engine::{synthesize, trits, Model, OpKind, Plan, PointwiseMode, State, SynthConfig};
use prom_kernels::{Kernels, Tier};
use std::sync::Arc;

/// `floor((x * m + 2^(s-1)) / 2^s)` with `x = acc + bias` wrapping, then zero point and clamp
/// (docs/FORMAT.md, "Requantization").
fn requant(acc: i64, bias: i32, m: i32, s: u8, zp: i8, lo: i8, hi: i8) -> i8 {
    let x = (acc as i32).wrapping_add(bias) as i128;
    let y = (x * m as i128 + (1i128 << (s - 1))).div_euclid(1i128 << s) + zp as i128;
    y.clamp(lo as i128, hi as i128) as i8
}

fn le_i32(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Runs the model naively; returns the logits.
fn reference(model: &Model, input: &[u8]) -> Vec<i32> {
    let g = model.graph();
    let mut acts: Vec<Vec<i8>> = vec![Vec::new(); g.tensors.len()];
    let mut logits = Vec::new();
    for (i, op) in g.ops.iter().enumerate() {
        let r = op.record;
        let xt = g.tensors[r.input0 as usize];
        let yt = g.tensors[i + 1];
        let w = model.blob_u8(r.weights);
        let bias = le_i32(model.blob_u8(r.bias));
        let mult = le_i32(model.blob_u8(r.multipliers));
        let shift = model.blob_u8(r.shifts);
        let q = |acc: i64, c: usize| {
            requant(acc, bias[c], mult[c], shift[c], yt.zero_point, r.output_min, r.output_max)
        };
        let mut y = vec![0i8; yt.len()];
        match r.kind {
            OpKind::Stem | OpKind::Depthwise => {
                let s = r.stride as usize;
                for oy in 0..yt.height {
                    for ox in 0..yt.width {
                        for c in 0..yt.channels {
                            let mut acc = 0i64;
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let iy = (oy * s + ky) as i64 - 1;
                                    let ix = (ox * s + kx) as i64 - 1;
                                    let inside = iy >= 0
                                        && ix >= 0
                                        && iy < xt.height as i64
                                        && ix < xt.width as i64;
                                    let at = |ch: usize| {
                                        (iy as usize * xt.width + ix as usize) * xt.channels + ch
                                    };
                                    if r.kind == OpKind::Stem {
                                        for ci in 0..3 {
                                            let v = if inside {
                                                input[at(ci)]
                                            } else {
                                                g.header.input_zero_point
                                            };
                                            let wt =
                                                w[((ky * 3 + kx) * 3 + ci) * yt.channels + c] as i8;
                                            acc += v as i64 * wt as i64;
                                        }
                                    } else {
                                        let x = &acts[r.input0 as usize];
                                        let v = if inside { x[at(c)] } else { xt.zero_point };
                                        acc += v as i64
                                            * (w[(ky * 3 + kx) * yt.channels + c] as i8) as i64;
                                    }
                                }
                            }
                            y[(oy * yt.width + ox) * yt.channels + c] = q(acc, c);
                        }
                    }
                }
            }
            OpKind::PointwiseTernary => {
                let (k, n) = (xt.channels, yt.channels);
                let wts = trits::unpack(w, n, k);
                let x = &acts[r.input0 as usize];
                for p in 0..yt.height * yt.width {
                    for c in 0..n {
                        let acc: i64 =
                            (0..k).map(|j| wts[c * k + j] as i64 * x[p * k + j] as i64).sum();
                        y[p * n + c] = q(acc, c);
                    }
                }
            }
            OpKind::PointwiseInt8 => {
                let (k, n) = (xt.channels, yt.channels);
                let x = &acts[r.input0 as usize];
                for p in 0..yt.height * yt.width {
                    for c in 0..n {
                        let acc: i64 =
                            (0..k).map(|j| (w[c * k + j] as i8) as i64 * x[p * k + j] as i64).sum();
                        y[p * n + c] = q(acc, c);
                    }
                }
            }
            OpKind::Add => {
                let (a, b) = (&acts[r.input0 as usize], &acts[r.input1 as usize]);
                let (za, zb) =
                    (xt.zero_point as i64, g.tensors[r.input1 as usize].zero_point as i64);
                for (j, out) in y.iter_mut().enumerate() {
                    let sum = (a[j] as i64 - za) * r.multiplier_a as i64
                        + (b[j] as i64 - zb) * r.multiplier_b as i64;
                    let v = (sum + (1i64 << (r.shift - 1))).div_euclid(1i64 << r.shift)
                        + yt.zero_point as i64;
                    *out = v.clamp(r.output_min as i64, r.output_max as i64) as i8;
                }
            }
            OpKind::AvgPool => {
                let x = &acts[r.input0 as usize];
                let pixels = xt.height * xt.width;
                for c in 0..xt.channels {
                    let acc: i64 = (0..pixels)
                        .map(|p| x[p * xt.channels + c] as i64 - xt.zero_point as i64)
                        .sum();
                    y[c] = requant(
                        acc,
                        0,
                        r.multiplier_a,
                        r.shift,
                        yt.zero_point,
                        r.output_min,
                        r.output_max,
                    );
                }
            }
            OpKind::Linear => {
                let x = &acts[r.input0 as usize];
                let (k, n) = (xt.channels, yt.channels);
                logits = (0..n)
                    .map(|c| {
                        let acc: i64 =
                            (0..k).map(|j| (w[c * k + j] as i8) as i64 * x[j] as i64).sum();
                        (acc as i32).wrapping_add(bias[c])
                    })
                    .collect();
            }
        }
        acts[i + 1] = y;
    }
    logits
}

fn random_image(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[test]
fn engine_equals_naive_reference_bit_for_bit() {
    let emulated = std::env::var_os("PROM_TEST_EMULATED").is_some();
    // (width, resolution, classes, images, pointwise layers at int8 precision)
    let configs: &[(f32, u32, u32, usize, &[usize])] = if emulated {
        &[(0.35, 96, 10, 2, &[]), (0.5, 128, 3, 1, &[0, 5]), (1.0, 32, 10, 2, &[1, 16])]
    } else {
        &[
            (0.35, 96, 10, 6, &[]),
            (0.75, 160, 100, 3, &[0, 3, 33]),
            (1.0, 128, 37, 3, &[]),
            (1.4, 96, 7, 3, &[2, 7, 20]),
            (1.0, 32, 10, 4, &[]),
            (1.0, 32, 10, 4, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]),
            (0.35, 64, 5, 3, &[1, 4]),
        ]
    };
    for (ci, &(width, res, classes, images, int8)) in configs.iter().enumerate() {
        let cfg = SynthConfig {
            width,
            resolution: res,
            classes,
            seed: 11 + ci as u64,
            int8_pointwise: int8.to_vec(),
            ..SynthConfig::default()
        };
        let model = Arc::new(Model::from_bytes(&synthesize(&cfg).unwrap().to_bytes()).unwrap());
        let int8_ops =
            model.graph().ops.iter().filter(|o| o.record.kind == OpKind::PointwiseInt8).count();
        assert_eq!(int8_ops, int8.len(), "the model has the int8 pointwise layers asked for");
        let states: Vec<(String, State)> = Tier::ALL
            .into_iter()
            .filter(|t| t.is_available())
            .flat_map(|t| [1, 2].map(move |threads| (t, threads)))
            .map(|(t, threads)| {
                let plan = Arc::new(Plan::new(
                    Arc::clone(&model),
                    Kernels::new(t).unwrap(),
                    PointwiseMode::Ternary,
                ));
                (format!("{t} x{threads}"), State::new(plan, threads))
            })
            .collect();
        let mut states = states;
        for img in 0..images {
            let input = random_image(100 * ci as u64 + img as u64, (res * res * 3) as usize);
            let expected = reference(&model, &input);
            assert_eq!(expected.len(), classes as usize);
            for (name, state) in states.iter_mut() {
                assert_eq!(
                    state.run(&input),
                    &expected[..],
                    "width {width} res {res} int8 {int8:?} image {img}: {name}"
                );
            }
        }
    }
}
