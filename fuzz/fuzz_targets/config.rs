//! Each model's `config.json` (and CLAP's `preprocessor_config.json`): the first byte picks the
//! file, the rest is its text. Parsing and validation only (no GPU): what the loaders run before
//! anything is built.
#![no_main]

use std::path::Path;

use audioldm::audio::clap_features::{ClapFeatureConfig, ClapFeatureExtractor};
use audioldm::model::clap::ClapConfig;
use audioldm::model::clap_audio::ClapAudioModel;
use audioldm::model::clap_text::ClapTextConfig;
use audioldm::model::unet::UNet2DConditionConfig;
use audioldm::model::vae::AutoencoderKLConfig;
use audioldm::model::vocoder::SpeechT5HifiGanConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    let path = Path::new("config.json");
    match which % 6 {
        0 => {
            if let Ok(c) = serde_json::from_slice::<UNet2DConditionConfig>(json) {
                let _ = c.validate(path);
            }
        }
        1 => {
            if let Ok(c) = serde_json::from_slice::<AutoencoderKLConfig>(json) {
                let _ = c.validate(path);
            }
        }
        2 => {
            if let Ok(c) = serde_json::from_slice::<SpeechT5HifiGanConfig>(json) {
                let _ = c.validate(path);
            }
        }
        3 => {
            if let Ok(c) = serde_json::from_slice::<ClapTextConfig>(json) {
                let _ = c.check(path);
            }
        }
        4 => {
            if let Ok(c) = serde_json::from_slice::<ClapConfig>(json) {
                let _ = c.text_config.check(path);
                let _ = ClapAudioModel::check(&c.audio_config, path);
            }
        }
        _ => {
            if let Ok(c) = ClapFeatureConfig::from_json(json, path) {
                let _ = ClapFeatureExtractor::new(c);
            }
        }
    }
});
