//! Shared by the fuzz targets: parse, and read everything an accepted model exposes.

use std::hint::black_box;

pub fn parse_and_touch(bytes: &[u8]) {
    let Ok(model) = prom_engine::Model::from_bytes(bytes) else {
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
}
