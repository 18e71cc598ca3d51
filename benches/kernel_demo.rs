//! Kernel demo: runs every MobileNetV2-1.0-224 pointwise layer shape through the add-only
//! ternary kernel and the int8-multiply kernel of the best tier on this CPU and through the
//! scalar oracle, checks the SIMD outputs bit for bit against scalar, and prints throughput.
//!
//! `cargo run --release -p prom-benches --bin kernel-demo [-- --repeat N]`
//! (the detailed, statistically sound numbers come from `cargo bench --bench pointwise`).

use prom_benches::{mobilenetv2_pointwise, PointwiseLayer};
use prom_kernels::Kernels;
use std::process::ExitCode;
use std::time::Instant;

fn best_seconds(repeat: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm caches and the scratch
    (0..repeat)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Best times of two closures run alternately, `rounds` times each, so that both see the
/// same machine conditions (this matters on shared or throttling hosts).
fn race(rounds: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    let (mut ta, mut tb) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        ta = ta.min(best_seconds(1, &mut a));
        tb = tb.min(best_seconds(1, &mut b));
    }
    (ta, tb)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let repeat = match args.iter().position(|a| a == "--repeat") {
        Some(i) => match args.get(i + 1).and_then(|v| v.parse::<usize>().ok()) {
            Some(r) if r > 0 => r,
            _ => {
                eprintln!("kernel-demo: --repeat needs a positive number");
                return ExitCode::from(2);
            }
        },
        None => 20,
    };
    let simd = match Kernels::detect() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("kernel-demo: {e}");
            return ExitCode::from(2);
        }
    };
    let scalar = Kernels::scalar();
    let tier = simd.tier();
    // `--profile P,K,N`: loop one shape's ternary kernel for a profiler, nothing else.
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        let dims: Vec<usize> = args
            .get(i + 1)
            .map(|s| s.split(',').filter_map(|d| d.parse().ok()).collect())
            .unwrap_or_default();
        let [p, k, n] = dims[..] else {
            eprintln!("kernel-demo: --profile needs P,K,N");
            return ExitCode::from(2);
        };
        let layer = PointwiseLayer::random(p, k, n, 0);
        let tw = layer.prepared_ternary(&simd);
        let (mut out, mut out2) = (vec![0i8; p * n], vec![0i8; p * n]);
        let (mut scratch, mut scratch2) = (layer.scratch(&simd), layer.scratch(&simd));
        let w = layer.int8_weights(&simd);
        // Alternate the two kernels so both see the same machine conditions.
        let (t, ti) = race(
            5 * repeat,
            || layer.run_ternary(&simd, &tw, &mut out, &mut scratch),
            || layer.run_int8(&simd, &w, &mut out2, &mut scratch2),
        );
        let g = |t: f64| layer.macs() as f64 / t / 1e9;
        println!("{p}x{k}x{n}: ternary-{tier} {:.1} GMAC/s, int8-{tier} {:.1} GMAC/s", g(t), g(ti));
        return ExitCode::SUCCESS;
    }
    println!("prom-kernels demo: MobileNetV2-1.0-224 pointwise layers, 1 thread, tier {tier}");
    println!("(random weights and activations; outputs checked bit for bit against scalar)\n");
    println!(
        "{:>16} {:>9} {:>12} {:>12} {:>12} {:>8}",
        "PxKxN", "MMAC", "ternary", "int8", "scalar", "t/int8"
    );
    println!("{:>16} {:>9} {:>12} {:>12} {:>12} {:>8}", "", "", "GMAC/s", "GMAC/s", "GMAC/s", "");
    let (mut t_ternary, mut t_int8, mut t_scalar) = (0.0, 0.0, 0.0);
    let mut mismatches = 0;
    for (i, (p, k, n)) in mobilenetv2_pointwise().into_iter().enumerate() {
        let layer = PointwiseLayer::random(p, k, n, i as u64);
        let (tw, sw) = (layer.prepared_ternary(&simd), layer.prepared_ternary(&scalar));
        let (mut out, mut reference) = (vec![0i8; p * n], vec![0i8; p * n]);
        let (mut scratch, mut scratch2) = (layer.scratch(&simd), layer.scratch(&simd));
        let w = layer.int8_weights(&simd);
        let mut out2 = vec![0i8; p * n];
        let (tt, ti) = race(
            repeat,
            || layer.run_ternary(&simd, &tw, &mut out, &mut scratch),
            || layer.run_int8(&simd, &w, &mut out2, &mut scratch2),
        );
        let mut s_scratch = layer.scratch(&scalar);
        let ts = best_seconds(repeat.min(3), || {
            layer.run_ternary(&scalar, &sw, &mut reference, &mut s_scratch)
        });
        layer.run_ternary(&simd, &tw, &mut out, &mut scratch);
        if out != reference {
            mismatches += 1;
            eprintln!("MISMATCH: {p}x{k}x{n} ternary {tier} differs from scalar");
        }
        let g = |t: f64| layer.macs() as f64 / t / 1e9;
        println!(
            "{:>16} {:>9.2} {:>12.1} {:>12.1} {:>12.2} {:>7.2}x",
            format!("{p}x{k}x{n}"),
            layer.macs() as f64 / 1e6,
            g(tt),
            g(ti),
            g(ts),
            ti / tt
        );
        t_ternary += tt;
        t_int8 += ti;
        t_scalar += ts;
    }
    println!(
        "\nsummed over the 19 shapes: ternary {:.2} ms, int8 {:.2} ms, scalar {:.2} ms",
        t_ternary * 1e3,
        t_int8 * 1e3,
        t_scalar * 1e3
    );
    println!(
        "ternary-{tier} is {:.2}x faster than int8-{tier} and {:.1}x faster than ternary-scalar",
        t_int8 / t_ternary,
        t_scalar / t_ternary
    );
    if mismatches > 0 {
        eprintln!("{mismatches} shapes differ from the scalar oracle");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
