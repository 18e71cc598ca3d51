//! x86_64 AVX2 tier.
//!
//! Every SIMD function here is an `unsafe fn` with `#[target_feature(enable = "avx2")]`; the
//! safe entry points take an [`Avx2`] token, which can only be constructed when the CPU has
//! AVX2, and that is the whole safety argument for calling them.

// Kernel function names follow XNNPACK's convention `op_tile__isa`.
#[allow(non_snake_case)]
mod dw;
#[allow(non_snake_case)]
mod int8_pw;
mod requant;
#[allow(non_snake_case)]
mod stem;
// Deliberately not named `ternary*`: only its add-only MAC functions carry that word.
#[allow(non_snake_case)]
mod table_pw;

use crate::params::{AddParams, DepthwiseShape, Epilogue, PointwiseShape, PoolParams, StemShape};
use crate::{AlignedBuf, Scratch};
use std::ops::Range;

/// Capability token: proof that this CPU supports AVX2.
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

impl Avx2 {
    /// Returns the token when the CPU has AVX2.
    pub fn detect() -> Option<Avx2> {
        is_x86_feature_detected!("avx2").then_some(Avx2(()))
    }
}

pub(crate) fn scratch_bytes(max_k: usize, max_n: usize) -> usize {
    table_pw::scratch_bytes(max_k, max_n).max(int8_pw::scratch_bytes(max_k, max_n))
}

pub(crate) fn pack_int8_pointwise(weights: &[i8], n: usize, k: usize) -> AlignedBuf {
    int8_pw::pack(weights, n, k)
}

pub(crate) fn prepare_lists(codes: &[u8], k: usize, n: usize) -> AlignedBuf {
    table_pw::prepare(codes, k, n)
}

pub(crate) fn ternary_pointwise(
    t: Avx2,
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
    t: Avx2,
    shape: PointwiseShape,
    input: &[i8],
    w: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut Scratch,
) {
    int8_pw::run(t, shape, input, w, epi, output, &mut scratch.buf)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise3x3(
    t: Avx2,
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
    t: Avx2,
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

// The small ops (classifier, residual add, pool) are the scalar code compiled with AVX2
// enabled, which LLVM vectorises; same integer arithmetic, so bit-identical by construction.

pub(crate) fn linear(_t: Avx2, input: &[i8], weights: &[i8], bias: &[i32], logits: &mut [i32]) {
    #[target_feature(enable = "avx2")]
    fn linear_avx2(input: &[i8], weights: &[i8], bias: &[i32], logits: &mut [i32]) {
        crate::scalar::linear(input, weights, bias, logits)
    }
    // SAFETY: the `Avx2` token proves the CPU has AVX2.
    unsafe { linear_avx2(input, weights, bias, logits) }
}

pub(crate) fn add(_t: Avx2, a: &[i8], b: &[i8], p: &AddParams, out: &mut [i8]) {
    #[target_feature(enable = "avx2")]
    fn add_avx2(a: &[i8], b: &[i8], p: &AddParams, out: &mut [i8]) {
        crate::scalar::add(a, b, p, out)
    }
    // SAFETY: the `Avx2` token proves the CPU has AVX2.
    unsafe { add_avx2(a, b, p, out) }
}

pub(crate) fn global_avg_pool(
    _t: Avx2,
    input: &[i8],
    channels: usize,
    p: &PoolParams,
    out: &mut [i8],
) {
    #[target_feature(enable = "avx2")]
    fn pool_avx2(input: &[i8], channels: usize, p: &PoolParams, out: &mut [i8]) {
        crate::scalar::global_avg_pool(input, channels, p, out)
    }
    // SAFETY: the `Avx2` token proves the CPU has AVX2.
    unsafe { pool_avx2(input, channels, p, out) }
}
