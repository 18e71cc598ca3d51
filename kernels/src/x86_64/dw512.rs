//! AVX-512 depthwise 3x3 convolution (placeholder: runs the AVX2 kernel until the
//! 32-channel AVX-512 kernel lands).

use super::Avx512;
use crate::params::{DepthwiseShape, Epilogue};
use std::ops::Range;

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    t: Avx512,
    shape: DepthwiseShape,
    input: &[i8],
    input_zero_point: i8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    super::dw::run(t.avx2(), shape, input, input_zero_point, weights, epi, rows, output)
}
