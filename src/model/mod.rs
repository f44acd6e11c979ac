//! The four networks of AudioLDM, one file per reference module, each built from its
//! `config.json` and its checkpoint's own tensor names, recorded as ops on the engine's graph.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The largest config file read (the real ones are under 2 KB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a component's `config.json` (unknown keys ignored, missing ones defaulted as the
/// reference does; a missing required key is an error naming the file).
pub fn load_config<T: DeserializeOwned>(dir: &Path) -> Result<T> {
    load_config_file(&dir.join("config.json"))
}

/// [`load_config`] for a file with another name (`scheduler_config.json`).
pub fn load_config_file<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::untrusted::read_text(path, MAX_CONFIG_BYTES)?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Ceilings on the numbers in a config, far above every released AudioLDM checkpoint (widest
/// layer 1280, 12 layers, 50265 tokens, 1000 timesteps) and low enough that no size computed from
/// them overflows or asks for more than a GPU holds before a weight file is even opened.
pub mod limits {
    /// Channels, widths, hidden and projection sizes.
    pub const CHANNELS: usize = 16_384;
    /// Levels of a UNet, VAE or vocoder (down/up blocks, up-sampling stages).
    pub const LEVELS: usize = 8;
    /// Layers per block, transformer layers, text-encoder layers.
    pub const LAYERS: usize = 64;
    /// Convolution kernel sizes.
    pub const KERNEL: usize = 63;
    /// Latent, image and mel channels of a VAE.
    pub const LATENT_CHANNELS: usize = 64;
    /// Tokens in a vocabulary, positions, feed-forward widths.
    pub const TOKENS: usize = 1 << 20;
    /// Diffusion training timesteps.
    pub const TIMESTEPS: usize = 100_000;
}

/// Checks a config's numbers before anything is built from them; each error names the file, the
/// key and the value.
pub(crate) struct ConfigCheck<'a> {
    pub path: &'a Path,
}

impl ConfigCheck<'_> {
    pub fn fail(&self, message: String) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            message,
        }
    }

    /// `key` must lie in `range`.
    pub fn range(
        &self,
        key: &str,
        value: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<()> {
        if range.contains(&value) {
            Ok(())
        } else {
            Err(self.fail(format!(
                "{key} is {value}; it must be between {} and {}",
                range.start(),
                range.end()
            )))
        }
    }

    /// Every value of the list `key` must lie in `range`.
    pub fn all(
        &self,
        key: &str,
        values: &[usize],
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<()> {
        match values.iter().find(|v| !range.contains(v)) {
            None => Ok(()),
            Some(v) => Err(self.fail(format!(
                "{key} {values:?} holds {v}; each must be between {} and {}",
                range.start(),
                range.end()
            ))),
        }
    }

    /// A UNet's or VAE's `block_out_channels` and `norm_num_groups`: 1 to [`limits::LEVELS`]
    /// widths, each in range and split evenly into the groups.
    pub fn block_widths(&self, widths: &[usize], groups: usize) -> Result<()> {
        self.range(
            "the number of block_out_channels",
            widths.len(),
            1..=limits::LEVELS,
        )?;
        self.all("block_out_channels", widths, 1..=limits::CHANNELS)?;
        self.range("norm_num_groups", groups, 1..=limits::CHANNELS)?;
        for &width in widths {
            self.divides("block width", width, "norm_num_groups", groups)?;
        }
        Ok(())
    }

    /// `value` must split evenly into `parts` (groups, heads): `parts` at least 1.
    pub fn divides(&self, what: &str, value: usize, parts_key: &str, parts: usize) -> Result<()> {
        if parts == 0 || !value.is_multiple_of(parts) {
            Err(self.fail(format!(
                "{what} {value} does not split into {parts_key} = {parts}"
            )))
        } else {
            Ok(())
        }
    }
}

pub mod clap;
pub mod clap_audio;
pub mod clap_text;
pub mod nn;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vocoder;
