//! The real tokenizer of cvssp/audioldm-s-full-v2 (its `tokenizer.json`, fetched from the test
//! server as the page fetches a model's files) built by the tokenizers crate for wasm
//! (`unstable_wasm`: fancy-regex instead of onig), against transformers' ids: the same cases as
//! the native test.
#![cfg(target_arch = "wasm32")]

mod common;

use std::path::Path;

use audioldm::model::tokenizer::TextTokenizer;
use common::real_tokenizer::check_against_transformers;
use common::{fetch_served, served_url};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn real_tokenizer_matches_transformers() {
    let root = Path::new("/real-tokenizer");
    let mut files = Vec::new();
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        files.push((
            name.to_string(),
            fetch_served(&format!("real-tokenizer/{name}")).await,
        ));
    }
    audioldm::mounted::mount(root, files)
        .await
        .expect("mount the tokenizer");
    let tok = TextTokenizer::from_dir(root).expect("the real tokenizer");
    assert_eq!(tok.vocab_size(), 50265);
    let matched = check_against_transformers(&tok, &served_url("real-tokenizer/tokenizer.json"));
    console_log!("the real tokenizer in the browser: {matched} prompts match transformers");
}
