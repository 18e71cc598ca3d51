//! Ternary weights as stored in `.prom` files: five trits per byte (3^5 = 243 <= 256), 1.6
//! bits per weight, which keeps MobileNetV2-1.0 under 2 MB. Rows are output channels; byte
//! `g` of a row packs weights `5g..5g+5` as `sum_j (w_j + 1) * 3^j`; weights past `k` are 0.
//! At load time the engine re-expresses them as the kernels' four-trit codes
//! (`prom_kernels::ternary`), from which each tier prepares its own form anyway.

/// Weights per stored byte.
pub const TRITS_PER_BYTE: usize = 5;
/// Distinct byte values (3^5).
pub const CODES5: usize = 243;

/// Bytes per output channel for `k` inputs.
pub const fn row_bytes(k: usize) -> usize {
    k.div_ceil(TRITS_PER_BYTE)
}

/// `DIGITS[b][j]`: weight `j` (-1, 0 or 1) of byte `b`.
const DIGITS: [[i8; 5]; CODES5] = {
    let mut t = [[0i8; 5]; CODES5];
    let mut b = 0;
    while b < CODES5 {
        let mut rest = b;
        let mut j = 0;
        while j < 5 {
            t[b][j] = (rest % 3) as i8 - 1;
            rest /= 3;
            j += 1;
        }
        b += 1;
    }
    t
};

/// Packs row-major `n x k` ternary weights (each in -1..=1; callers validate).
pub fn pack(weights: &[i8], n: usize, k: usize) -> Vec<u8> {
    assert_eq!(weights.len(), n * k, "ternary weights: length != n * k");
    let rb = row_bytes(k);
    let mut out = vec![0u8; n * rb];
    for (row, dst) in weights.chunks_exact(k).zip(out.chunks_exact_mut(rb)) {
        for (g, d) in dst.iter_mut().enumerate() {
            let mut code = 0u8;
            let mut place = 1u8;
            for j in 0..TRITS_PER_BYTE {
                let w = row.get(g * TRITS_PER_BYTE + j).copied().unwrap_or(0);
                assert!((-1..=1).contains(&w), "weight {w} is not ternary");
                code += place * (w + 1) as u8;
                place = place.wrapping_mul(3);
            }
            *d = code;
        }
    }
    out
}

/// Unpacks to row-major `n x k` weights. Bytes must be below 243 (validated on load).
pub fn unpack(bytes: &[u8], n: usize, k: usize) -> Vec<i8> {
    let rb = row_bytes(k);
    assert_eq!(bytes.len(), n * rb, "packed ternary weights: length");
    let mut out = Vec::with_capacity(n * k);
    for row in bytes.chunks_exact(rb) {
        for j in 0..k {
            out.push(DIGITS[usize::from(row[j / TRITS_PER_BYTE])][j % TRITS_PER_BYTE]);
        }
    }
    out
}

/// The kernels' four-trit codes of stored weights.
pub fn to_kernel_codes(bytes: &[u8], n: usize, k: usize) -> Vec<u8> {
    prom_kernels::ternary::pack(&unpack(bytes, n, k), n, k).expect("unpacked weights are ternary")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte_and_tail() {
        for k in 1..=12 {
            let n = 243;
            let w: Vec<i8> = (0..n * k).map(|i| ((i * 7 + i / 5) % 3) as i8 - 1).collect();
            assert_eq!(unpack(&pack(&w, n, k), n, k), w);
        }
        let all: Vec<u8> = (0..243).map(|b| b as u8).collect();
        assert_eq!(pack(&unpack(&all, 243, 5), 243, 5), all);
    }

    #[test]
    fn kernel_codes_match_direct_packing() {
        let w: Vec<i8> = (0..7 * 13).map(|i| (i % 3) as i8 - 1).collect();
        assert_eq!(
            to_kernel_codes(&pack(&w, 7, 13), 7, 13),
            prom_kernels::ternary::pack(&w, 7, 13).unwrap()
        );
    }
}
