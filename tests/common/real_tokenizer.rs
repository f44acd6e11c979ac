//! The real tokenizer of cvssp/audioldm-s-full-v2 against transformers' ids
//! (`tests/fixtures/real-tokenizer-ids.json`, made by `scripts/reference/`): shared by the native
//! tests and the browser's (`web/tests/tokenizer.rs`), which build the tokenizer from the same
//! files in their own way.

use audioldm::model::tokenizer::TextTokenizer;

/// transformers' ids, as JSON.
pub const REAL_IDS_JSON: &str = include_str!("../fixtures/real-tokenizer-ids.json");

#[derive(serde::Deserialize)]
pub struct RealIds {
    pub model_max_length: usize,
    pub pad_id: u32,
    pub bos_id: u32,
    pub eos_id: u32,
    pub cases: Vec<RealCase>,
}

#[derive(serde::Deserialize)]
pub struct RealCase {
    pub text: String,
    pub max_length: usize,
    pub truncated: bool,
    pub ids: Vec<u32>,
}

pub fn real_ids() -> RealIds {
    serde_json::from_str(REAL_IDS_JSON).expect("parse real-tokenizer-ids.json")
}

/// Checks `tok` against every case of transformers' ids; returns how many prompts matched.
pub fn check_against_transformers(tok: &TextTokenizer, what: &str) -> usize {
    let want = real_ids();
    assert_eq!(tok.model_max_length(), want.model_max_length, "{what}");
    assert_eq!(
        (tok.bos_id(), tok.pad_id(), tok.eos_id()),
        (want.bos_id, want.pad_id, want.eos_id),
        "{what}"
    );
    assert!(want.cases.len() >= 15);
    for case in &want.cases {
        let got = tok.encode_full(&case.text, case.max_length).unwrap();
        assert_eq!(
            got.ids, case.ids,
            "{what}: ids of {:?} (max {})",
            case.text, case.max_length
        );
        assert_eq!(got.dropped > 0, case.truncated, "{what}: {:?}", case.text);
    }
    want.cases.len()
}
