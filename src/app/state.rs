//! What the app remembers between runs: the settings of the next generation and the history of
//! generated clips (their audio is kept as WAV files beside eframe's storage).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::hub::DEFAULT_MODEL;
use crate::pipeline::Request;

/// The controls of the main window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub prompt: String,
    pub negative: String,
    pub guidance: f32,
    pub steps: usize,
    pub duration_s: f64,
    pub seed: u32,
    /// Draw a new seed for every generation.
    pub random_seed: bool,
    /// A Hugging Face repo id or a local folder.
    pub model: String,
}

impl Default for Settings {
    fn default() -> Self {
        let request = Request::default();
        Self {
            prompt: String::new(),
            negative: String::new(),
            guidance: request.guidance_scale,
            steps: request.steps,
            duration_s: DEFAULT_DURATION_S,
            seed: request.seed,
            random_seed: true,
            model: DEFAULT_MODEL.to_string(),
        }
    }
}

/// diffusers' default clip length for the official checkpoints (`sample_size` 128 latent frames).
pub const DEFAULT_DURATION_S: f64 = 5.12;
pub const STEPS_RANGE: std::ops::RangeInclusive<usize> = 1..=200;
pub const GUIDANCE_RANGE: std::ops::RangeInclusive<f32> = 0.0..=10.0;
pub const DURATION_RANGE: std::ops::RangeInclusive<f64> = 0.5..=30.0;

impl Settings {
    /// The pipeline request these settings make.
    pub fn request(&self) -> Request {
        Request {
            prompt: self.prompt.clone(),
            negative_prompt: (!self.negative.trim().is_empty()).then(|| self.negative.clone()),
            steps: self.steps,
            guidance_scale: self.guidance,
            duration_s: Some(self.duration_s),
            seed: self.seed,
            ..Request::default()
        }
    }

    /// The settings as text for the WAV file's comment, in the keys the CLI writes.
    pub fn describe(&self) -> String {
        self.request().describe(&self.model, self.duration_s)
    }
}

/// One generated clip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: u64,
    /// The settings it was made with, `seed` being the seed actually used.
    pub settings: Settings,
    /// Where its audio is kept (32-bit float WAV with the settings in its comment).
    pub wav: PathBuf,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Seconds the generation took.
    pub took_s: f64,
}

/// Everything persisted through eframe's storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    pub settings: Settings,
    pub history: Vec<HistoryEntry>,
    pub next_id: u64,
}
