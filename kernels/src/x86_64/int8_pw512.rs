//! AVX-512 int8-multiply pointwise baseline (placeholder: packs and runs the AVX2 kernel
//! until the AVX-512 kernel lands).

use super::Avx512;
use crate::params::{Epilogue, PointwiseShape};
use crate::AlignedBuf;

/// Packs row-major `n x k` int8 weights for [`run`].
pub(super) fn pack(weights: &[i8], n: usize, k: usize) -> AlignedBuf {
    super::int8_pw::pack(weights, n, k)
}

/// Scratch bytes [`run`] needs for up to `max_k` inputs and `max_n` outputs.
pub(super) fn scratch_bytes(max_k: usize, max_n: usize) -> usize {
    super::int8_pw::scratch_bytes(max_k, max_n)
}

pub(super) fn run(
    t: Avx512,
    shape: PointwiseShape,
    input: &[i8],
    weights: &AlignedBuf,
    epi: &Epilogue<'_>,
    output: &mut [i8],
    scratch: &mut AlignedBuf,
) {
    super::int8_pw::run(t.avx2(), shape, input, weights, epi, output, scratch)
}
