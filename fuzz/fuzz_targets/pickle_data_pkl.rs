//! `data.pkl` inside a valid torch.save archive with two small storages, so that the input
//! reaches the pickle machine and the tensor rebuilds instead of the zip reader.
#![no_main]

mod common;

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fn archive(pickle: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored);
    let entries: [(&str, &[u8]); 4] = [
        ("archive/data.pkl", pickle),
        ("archive/data/0", &[0u8; 64]),
        ("archive/data/1", &[1u8; 24]),
        ("archive/version", b"3\n"),
    ];
    for (name, bytes) in entries {
        if zip.start_file(name, stored).is_err() || zip.write_all(bytes).is_err() {
            return Vec::new();
        }
    }
    zip.finish().map(|c| c.into_inner()).unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let path = common::file("data-pkl.bin", &archive(data));
    common::read_checkpoint(&path);
});
