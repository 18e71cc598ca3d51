//! aarch64 NEON tier.
//!
//! Every SIMD function here is a `#[target_feature(enable = "neon")]` function; the unsafe
//! ones are reachable only through the safe entry points below, which take a [`Neon`] token
//! that can only be constructed when the CPU has NEON. That token plus the length checks done
//! by [`crate::Kernels`] is the whole safety argument.
//!
//! Naming: kernels follow XNNPACK's `op_types_tile__isa`. Every add-only function of the
//! ternary pointwise kernel has `ternary` in its name (`ternary_pw_16x4c_lut40__neon_mac`,
//! ...) and contains no multiply instruction; everything that multiplies (tiling arithmetic,
//! the weight rewrite and the requantization epilogue) lives in functions without `ternary`
//! in their symbol, which is why the add-only kernel's module is called `table_pw` and
//! `ternary_pointwise` below only forwards to an out-of-line function.

// Kernel function names follow XNNPACK's convention `op_tile__isa`.
#[allow(non_snake_case)]
mod dw;
#[allow(non_snake_case)]
mod int8_dot;
#[allow(non_snake_case)]
mod int8_pw;
mod requant;
#[allow(non_snake_case)]
mod stem;
#[allow(non_snake_case)]
mod table_pw;

use crate::params::{DepthwiseShape, Epilogue, PointwiseShape, StemShape};
use crate::{AlignedBuf, Scratch};
use std::ops::Range;

/// Capability token: proof that this CPU has NEON (Advanced SIMD), and whether it also has
/// the dot-product extension.
#[derive(Clone, Copy, Debug)]
pub struct Neon {
    dot: Option<NeonDot>,
}

/// Capability token: proof that this CPU has NEON and the dot-product extension (`sdot`;
/// Armv8.2 DotProd: Cortex-A76 and later, not the A72). Only the int8-multiply baseline
/// uses it; the add-only kernels need nothing beyond NEON.
#[derive(Clone, Copy, Debug)]
pub struct NeonDot(());

impl Neon {
    /// Returns the token when the CPU has NEON.
    pub fn detect() -> Option<Neon> {
        std::arch::is_aarch64_feature_detected!("neon").then(|| Neon {
            dot: std::arch::is_aarch64_feature_detected!("dotprod").then_some(NeonDot(())),
        })
    }

    /// Whether the int8-multiply pointwise baseline uses `sdot` on this CPU.
    pub fn has_dot_product(&self) -> bool {
        self.dot.is_some()
    }
}

pub(crate) fn scratch_bytes(max_k: usize, max_n: usize) -> usize {
    table_pw::scratch_bytes(max_k, max_n)
        .max(int8_pw::scratch_bytes(max_k, max_n))
        .max(int8_dot::scratch_bytes(max_k, max_n))
}

/// Packs int8 pointwise weights for the kernel [`int8_pointwise`] runs with this token.
pub(crate) fn pack_int8_pointwise(t: Neon, weights: &[i8], n: usize, k: usize) -> AlignedBuf {
    match t.dot {
        Some(_) => int8_dot::pack(weights, n, k),
        None => int8_pw::pack(weights, n, k),
    }
}

pub(crate) fn prepare_lists(codes: &[u8], k: usize, n: usize) -> AlignedBuf {
    table_pw::prepare(codes, k, n)
}

pub(crate) fn ternary_pointwise(
    t: Neon,
    shape: PointwiseShape,
    input: &[i8],
    w: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut Scratch,
) {
    table_pw::run(t, shape, input, w, epi, output, &mut scratch.buf)
}

pub(crate) fn int8_pointwise(
    t: Neon,
    shape: PointwiseShape,
    input: &[i8],
    w: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut Scratch,
) {
    match t.dot {
        Some(d) => int8_dot::run(d, shape, input, w, epi, output, &mut scratch.buf),
        None => int8_pw::run(t, shape, input, w, epi, output, &mut scratch.buf),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise3x3(
    t: Neon,
    shape: DepthwiseShape,
    input: &[i8],
    input_zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    dw::run(t, shape, input, input_zero_point, weights, epi, rows, output)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn stem3x3s2(
    t: Neon,
    shape: StemShape,
    input: &[u8],
    input_zero_point: u8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    stem::run(t, shape, input, input_zero_point, weights, epi, rows, output)
}
