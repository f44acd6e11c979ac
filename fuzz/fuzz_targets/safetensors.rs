//! A `.safetensors` file: header length, JSON header, offsets, dtypes, shapes.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::file("model.safetensors", data);
    common::read_checkpoint(&path);
});
