//! Fuzz target: `Model::from_bytes` on arbitrary bytes must return `Ok` or a typed error,
//! never panic; an accepted model must have every blob readable through the accessors.
#![no_main]

use libfuzzer_sys::fuzz_target;
#[path = "touch.rs"]
mod touch;

fuzz_target!(|data: &[u8]| touch::parse_and_touch(data));
