//! AVX2 stem. PLACEHOLDER: delegates to scalar until the AVX2 kernel lands.

use super::Avx2;
use crate::params::{Epilogue, StemShape};
use std::ops::Range;

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    _t: Avx2,
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
