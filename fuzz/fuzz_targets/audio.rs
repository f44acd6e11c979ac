//! An audio file as a user drops it: the first byte picks the extension (wav, flac, mp3, ogg)
//! that hints the format; the rest is the file. Decoded with the edit limit, and read as a WAV
//! (samples and comment) too.
#![no_main]

mod common;

use audioldm::audio::decode::decode_file;
use audioldm::audio::wav::{read_comment, read_wav};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, file)) = data.split_first() else {
        return;
    };
    let extension = ["wav", "flac", "mp3", "ogg"][which as usize % 4];
    let path = common::file(&format!("clip.{extension}"), file);
    let _ = decode_file(&path, 60.0);
    if extension == "wav" {
        let _ = read_wav(&path);
        let _ = read_comment(&path);
    }
});
