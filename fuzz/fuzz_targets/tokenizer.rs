//! `tokenizer.json`: loaded as the pipeline loads it, then used to encode prompts.
#![no_main]

mod common;

use audioldm::model::tokenizer::TextTokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch().join("tokenizer");
    let _ = std::fs::create_dir_all(&dir);
    if std::fs::write(dir.join("tokenizer.json"), data).is_err() {
        return;
    }
    if let Ok(tokenizer) = TextTokenizer::from_dir(&dir) {
        for prompt in ["", "a dog barking in the rain", "<s></s><pad><mask> ünï 🎵"] {
            let _ = tokenizer.encode(prompt, 512);
            let _ = tokenizer.encode(prompt, 3);
        }
    }
});
