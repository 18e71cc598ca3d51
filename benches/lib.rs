//! Shared helpers for the benchmarks (random layers of MobileNetV2 shapes).
