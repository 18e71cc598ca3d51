//! AVX-512 stem (placeholder: runs the AVX2 kernel until the AVX-512 kernel lands).

use super::Avx512;
use crate::params::{Epilogue, StemShape};
use std::ops::Range;

#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    t: Avx512,
    shape: StemShape,
    input: &[u8],
    input_zero_point: u8,
    weights: &[i8],
    epi: &Epilogue<'_>,
    rows: Range<usize>,
    output: &mut [i8],
) {
    super::stem::run(t.avx2(), shape, input, input_zero_point, weights, epi, rows, output)
}
