//! Fuzz target: `Model::from_bytes` on arbitrary bytes must return `Ok` or a typed error,
//! never panic; an accepted model must have every blob readable through the accessors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::hint::black_box;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = prom_engine::Model::from_bytes(data) else {
        return;
    };
    black_box(model.metadata());
    black_box(model.labels());
    black_box(model.sections());
    black_box(model.checksum());
    let graph = model.graph();
    black_box(graph.classes());
    black_box(graph.classifier());
    for op in &graph.ops {
        let r = &op.record;
        black_box(model.blob_u8(r.weights));
        black_box(model.blob_i8(r.weights));
        black_box(model.blob_i32(r.bias));
        black_box(model.blob_i32(r.multipliers));
        black_box(model.blob_u8(r.shifts));
    }
});
