//! AVX2 depthwise 3x3. PLACEHOLDER: delegates to scalar until the AVX2 kernel lands.

use super::Avx2;
use crate::params::{DepthwiseShape, Epilogue};
use std::ops::Range;

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    _t: Avx2,
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
