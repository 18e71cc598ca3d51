//! Packed ternary weights: the layout every tier and the `.prom` file share.
//!
//! # Layout
//! Weights `w[n][k]` in {-1, 0, +1} for `n` output and `k` input channels are stored row by
//! row (output channel major). Each row holds `groups(k) = ceil(k / 4)` bytes; byte `g` of
//! row `n` packs the four weights `w[n][4g..4g+4]` as a base-3 number ("trits"):
//!
//! ```text
//! code = (w0 + 1) + 3 * (w1 + 1) + 9 * (w2 + 1) + 27 * (w3 + 1)      in 0..=80
//! ```
//! Weights past `k` (the tail of the last group) are 0, i.e. digit 1. That is 2 bits per
//! weight (1.58 bits of information). The code of a group is directly the row index into a
//! table of the 81 signed partial sums of four activations, which is what the add-only
//! table-lookup kernels use; the digit extraction needed by the scalar tier is a table too,
//! so no tier ever multiplies or divides to decode weights.

/// Ternary weights per packed byte.
pub const TRITS_PER_BYTE: usize = 4;
/// Number of distinct codes of one byte (3^4).
pub const CODES: usize = 81;

/// Number of packed bytes per output channel for `k` input channels.
pub const fn groups(k: usize) -> usize {
    k.div_ceil(TRITS_PER_BYTE)
}

/// Borrowed packed ternary weights (`n` rows of [`groups`]`(k)` codes).
#[derive(Clone, Copy, Debug)]
pub struct TernaryWeights<'a> {
    /// Output channels.
    pub n: usize,
    /// Input channels.
    pub k: usize,
    /// `n * groups(k)` codes, each in `0..81`.
    pub codes: &'a [u8],
}

impl TernaryWeights<'_> {
    /// Panics unless the code buffer matches the shape and every code is below 81.
    ///
    /// The kernels index an 81-row table with the codes, so an out-of-range code would read
    /// past the table; this check is what makes the safe entry points sound.
    pub fn check(&self) {
        let expected = self.n.checked_mul(groups(self.k)).expect("ternary weights: size overflow");
        assert_eq!(self.codes.len(), expected, "ternary weights: code count != n * ceil(k/4)");
        assert!(self.codes.iter().all(|&c| usize::from(c) < CODES), "ternary weights: code >= 81");
    }
}

/// Error returned by [`pack`] for input that is not a ternary matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PackError {
    /// `weights.len() != n * k`.
    Length {
        /// Expected element count.
        expected: usize,
        /// Actual element count.
        actual: usize,
    },
    /// A weight outside {-1, 0, 1}.
    NotTernary {
        /// Output channel of the offending weight.
        n: usize,
        /// Input channel of the offending weight.
        k: usize,
        /// Its value.
        value: i8,
    },
}

impl std::fmt::Display for PackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackError::Length { expected, actual } => {
                write!(f, "ternary pack: expected {expected} weights, got {actual}")
            }
            PackError::NotTernary { n, k, value } => {
                write!(f, "ternary pack: weight [{n}][{k}] = {value} is not in {{-1, 0, 1}}")
            }
        }
    }
}

impl std::error::Error for PackError {}

/// Packs row-major `n x k` ternary weights into the layout described in the module docs.
pub fn pack(weights: &[i8], n: usize, k: usize) -> Result<Vec<u8>, PackError> {
    let expected = n * k;
    if weights.len() != expected {
        return Err(PackError::Length { expected, actual: weights.len() });
    }
    let g = groups(k);
    let mut out = vec![0u8; n * g];
    for row in 0..n {
        for group in 0..g {
            let mut code = 0u8;
            let mut place = 1u8;
            for j in 0..TRITS_PER_BYTE {
                let col = group * TRITS_PER_BYTE + j;
                let w = if col < k { weights[row * k + col] } else { 0 };
                if !(-1..=1).contains(&w) {
                    return Err(PackError::NotTernary { n: row, k: col, value: w });
                }
                code += place * (w + 1) as u8;
                place *= 3;
            }
            out[row * g + group] = code;
        }
    }
    Ok(out)
}

/// Unpacks to row-major `n x k` weights (the inverse of [`pack`]).
pub fn unpack(w: TernaryWeights<'_>) -> Vec<i8> {
    w.check();
    let g = groups(w.k);
    let mut out = vec![0i8; w.n * w.k];
    for row in 0..w.n {
        for col in 0..w.k {
            out[row * w.k + col] = TRITS[usize::from(w.codes[row * g + col / 4])][col % 4];
        }
    }
    out
}

/// Digits of every code, as weights: `TRITS[code][j]` is the weight of lane `j`.
pub const TRITS: [[i8; 4]; CODES] = {
    let mut t = [[0i8; 4]; CODES];
    let mut code = 0;
    while code < CODES {
        let mut rest = code;
        let mut j = 0;
        while j < 4 {
            t[code][j] = (rest % 3) as i8 - 1;
            rest /= 3;
            j += 1;
        }
        code += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_codes_and_tails() {
        for k in 1..=13 {
            let n = 81;
            let w: Vec<i8> = (0..n * k).map(|i| ((i * 7 + i / 3) % 3) as i8 - 1).collect();
            let packed = pack(&w, n, k).unwrap();
            assert_eq!(packed.len(), n * groups(k));
            assert_eq!(unpack(TernaryWeights { n, k, codes: &packed }), w);
        }
        // every code decodes and re-encodes to itself
        let codes: Vec<u8> = (0..81).collect();
        let w = unpack(TernaryWeights { n: 81, k: 4, codes: &codes });
        assert_eq!(pack(&w, 81, 4).unwrap(), codes);
    }

    #[test]
    fn tail_weights_are_zero_digits() {
        let packed = pack(&[1, -1, 1], 1, 3).unwrap();
        // digits (1+1), (-1+1), (1+1), tail 0 -> 1: 2 + 3*0 + 9*2 + 27*1
        assert_eq!(packed, vec![47]);
    }

    #[test]
    fn rejects_non_ternary_and_bad_length() {
        assert_eq!(pack(&[0, 2, 0, 0], 1, 4), Err(PackError::NotTernary { n: 0, k: 1, value: 2 }));
        assert_eq!(pack(&[0; 5], 2, 3), Err(PackError::Length { expected: 6, actual: 5 }));
    }
}
