//! The four networks of AudioLDM, one file per reference module, each built from its
//! `config.json` and its checkpoint's own tensor names, recorded as ops on the engine's graph.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Reads a component's `config.json` (unknown keys ignored, missing ones defaulted as the
/// reference does; a missing required key is an error naming the file).
pub fn load_config<T: DeserializeOwned>(dir: &Path) -> Result<T> {
    load_config_file(&dir.join("config.json"))
}

/// [`load_config`] for a file with another name (`scheduler_config.json`).
pub fn load_config_file<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let path = path.to_path_buf();
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path,
        message: e.to_string(),
    })
}

pub mod clap_text;
pub mod nn;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vocoder;
