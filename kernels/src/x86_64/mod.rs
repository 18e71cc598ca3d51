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

use crate::params::{DepthwiseShape, Epilogue, PointwiseShape, StemShape};
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
