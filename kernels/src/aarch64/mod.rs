//! aarch64 NEON tier. PLACEHOLDER: delegates to scalar until the NEON kernels land.

use crate::params::{DepthwiseShape, Epilogue, PointwiseShape, StemShape};
use crate::{AlignedBuf, Scratch, TernaryWeights};
use std::ops::Range;

/// Capability token: proof that this CPU has NEON (Advanced SIMD).
#[derive(Clone, Copy, Debug)]
pub struct Neon(());

impl Neon {
    /// Returns the token when the CPU has NEON.
    pub fn detect() -> Option<Neon> {
        std::arch::is_aarch64_feature_detected!("neon").then_some(Neon(()))
    }
}

pub(crate) fn scratch_bytes(_max_k: usize, max_n: usize) -> usize {
    max_n * 4
}

pub(crate) fn pack_int8_pointwise(weights: &[i8], _n: usize, _k: usize) -> AlignedBuf {
    AlignedBuf::from_i8(weights)
}

pub(crate) fn ternary_pointwise(
    _t: Neon,
    shape: PointwiseShape,
    input: &[i8],
    w: TernaryWeights<'_>,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut Scratch,
) {
    crate::scalar::ternary_pointwise(shape, input, w, epi, output, scratch.buf.as_i32_mut(shape.n))
}

pub(crate) fn int8_pointwise(
    _t: Neon,
    shape: PointwiseShape,
    input: &[i8],
    w: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    _scratch: &mut Scratch,
) {
    crate::scalar::int8_pointwise(shape, input, w.as_i8(shape.n * shape.k), epi, output)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise3x3(
    _t: Neon,
    shape: DepthwiseShape,
    input: &[i8],
    input_zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    crate::scalar::depthwise3x3(shape, input, input_zero_point, weights, epi, rows, output)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn stem3x3s2(
    _t: Neon,
    shape: StemShape,
    input: &[u8],
    input_zero_point: u8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    crate::scalar::stem3x3s2(shape, input, input_zero_point, weights, epi, rows, output)
}
