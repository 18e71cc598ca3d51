//! Fuzz target: like `parse_model`, but the input's section checksums and header checksum
//! are recomputed first (wherever the section table makes that possible), so mutations get
//! past the CRC-32 checks and exercise the structural, graph and quantization checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
#[path = "touch.rs"]
mod touch;

const HEADER: usize = 64;
const TABLE_END: usize = HEADER + 4 * 32;

fn fix_checksums(b: &mut [u8]) {
    if b.len() < TABLE_END {
        return;
    }
    let rd = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    for i in 0..4 {
        let e = HEADER + 32 * i;
        let (offset, len) = (rd(b, e + 8), rd(b, e + 16));
        if let Some(end) = offset.checked_add(len).filter(|&end| end <= b.len() as u64) {
            let crc = crc32fast::hash(&b[offset as usize..end as usize]);
            b[e + 24..e + 28].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..60]);
    h.update(&b[HEADER..TABLE_END]);
    let crc = h.finalize();
    b[60..64].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    fix_checksums(&mut bytes);
    touch::parse_and_touch(&bytes);
});
