//! Writes the seed corpus of the `parse_model` fuzz target: the hand-built valid test model
//! and a few damaged variants (each with its checksums fixed where that lets the damage reach
//! a deeper check). Run from the repository root:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus
//! ```

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use common::*;
use prom_engine::format::SectionKind;
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/parse_model");
    std::fs::create_dir_all(&dir)?;
    let valid = small_spec().to_bytes();

    let mut shape = small_spec();
    shape.tensors[3].channels = 12;
    let mut shift = small_spec();
    shift.ops[OP_STEM].shifts[0] = 31;
    let mut labels = small_spec();
    labels.labels.pop();
    let blob_past_end = patched(&valid, |b| {
        let weights_len = entry(b, SectionKind::Weights).len;
        let at = op_record_pos(b, OP_DW) + op_field::WEIGHTS;
        wr_u64(b, at, weights_len.div_ceil(64) * 64);
    });
    let meta = replace_section(&valid, SectionKind::Meta, b"{\"architecture\": \"mobilenetv2\"}");

    let seeds: [(&str, Vec<u8>); 7] = [
        ("valid.prom", valid.clone()),
        ("truncated.prom", valid[..valid.len() / 2].to_vec()),
        ("shape_mismatch.prom", shape.to_bytes()),
        ("shift_31.prom", shift.to_bytes()),
        ("fewer_labels.prom", labels.to_bytes()),
        ("blob_past_end.prom", blob_past_end),
        ("meta_missing_fields.prom", meta),
    ];
    for (name, bytes) in seeds {
        let verdict = match prom_engine::Model::from_bytes(&bytes) {
            Ok(_) => "valid".to_string(),
            Err(e) => format!("rejected: {e}"),
        };
        assert_eq!(name == "valid.prom", verdict == "valid", "{name}: {verdict}");
        std::fs::write(dir.join(name), &bytes)?;
        println!("{name}: {} bytes, {verdict}", bytes.len());
    }
    Ok(())
}
