//! A whole PyTorch `.bin` file: the zip archive and everything in it.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::file("pytorch_model.bin", data);
    common::read_checkpoint(&path);
});
