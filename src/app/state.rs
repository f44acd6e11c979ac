//! What the app remembers between runs: the settings of the next generation and the history of
//! generated clips (their audio is kept as WAV files beside eframe's storage).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::DeviceChoice;
use crate::hub::DEFAULT_MODEL;
use crate::pipeline::edit::Mode;
use crate::pipeline::{Request, SchedulerKind};

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
    /// The edit "Generate edit" applies to the input clip, and its parameters.
    pub edit: EditKind,
    pub strength: f32,
    pub cutoff_hz: f64,
    pub extend_s: f64,
    /// Clips made per Generate, ranked by CLAP against the prompt (1: no ranking).
    pub candidates: usize,
    /// The CLAP model for ranking and variations; empty takes the model's companion.
    pub clap: String,
    /// A variation's blend: the prompt's weight against the clip's, in [0, 1].
    pub mix: f32,
    /// The sampler of text-to-audio and variations (edits run DDIM).
    pub scheduler: SchedulerKind,
}

/// The audio-to-audio modes the input clip offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EditKind {
    #[default]
    StyleTransfer,
    Inpaint,
    SuperResolution,
    Extend,
}

impl EditKind {
    pub const ALL: [EditKind; 4] = [
        EditKind::StyleTransfer,
        EditKind::Inpaint,
        EditKind::SuperResolution,
        EditKind::Extend,
    ];

    pub fn label(self) -> &'static str {
        match self {
            EditKind::StyleTransfer => "Style transfer",
            EditKind::Inpaint => "Inpaint",
            EditKind::SuperResolution => "Super-resolution",
            EditKind::Extend => "Extend",
        }
    }
}

pub const STRENGTH_RANGE: std::ops::RangeInclusive<f32> = 0.05..=1.0;
pub const CUTOFF_RANGE: std::ops::RangeInclusive<f64> = 500.0..=7500.0;
pub const EXTEND_RANGE: std::ops::RangeInclusive<f64> = 0.5..=20.0;
pub const CANDIDATES_RANGE: std::ops::RangeInclusive<usize> =
    1..=crate::pipeline::ranking::MAX_CANDIDATES;
pub const MIX_RANGE: std::ops::RangeInclusive<f32> = 0.0..=1.0;

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
            edit: EditKind::default(),
            strength: 0.5,
            cutoff_hz: 4000.0,
            extend_s: 5.0,
            candidates: 1,
            clap: String::new(),
            mix: 0.5,
            scheduler: SchedulerKind::Ddim,
        }
    }
}

/// diffusers' default clip length for the official checkpoints (`sample_size` 128 latent frames).
pub const DEFAULT_DURATION_S: f64 = 5.12;
pub const STEPS_RANGE: std::ops::RangeInclusive<usize> = 1..=200;
pub const GUIDANCE_RANGE: std::ops::RangeInclusive<f32> = 0.0..=10.0;
/// As long as the pipeline makes (large activations are split to fit the device's bindings).
pub const DURATION_RANGE: std::ops::RangeInclusive<f64> = 0.5..=crate::pipeline::MAX_DURATION_S;

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
            scheduler: self.scheduler,
            ..Request::default()
        }
    }

    /// The settings as text for the WAV file's comment, in the keys the CLI writes.
    pub fn describe(&self) -> String {
        self.request().describe(&self.model, self.duration_s)
    }

    /// The request of an edit: the clip sets the length, and edits run DDIM.
    pub fn edit_request(&self) -> Request {
        Request {
            scheduler: SchedulerKind::Ddim,
            ..self.variation_request()
        }
    }

    /// The request of a variation: the clip sets the length.
    pub fn variation_request(&self) -> Request {
        Request {
            duration_s: None,
            ..self.request()
        }
    }

    /// The CLAP model field, `None` when it is empty (the model's companion).
    pub fn clap(&self) -> Option<String> {
        let clap = self.clap.trim();
        (!clap.is_empty()).then(|| clap.to_string())
    }

    /// The CLAP model a run uses: the field's, else the model's companion (empty when it has
    /// none).
    pub fn clap_in_use(&self) -> String {
        self.clap().unwrap_or_else(|| {
            crate::hub::clap_companion(&self.model)
                .unwrap_or_default()
                .to_string()
        })
    }
}

/// How a history entry was made as a variation of a clip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariationRecord {
    /// The prompt's weight in the blend (unused without a prompt).
    pub mix: f32,
    pub source_name: String,
    /// The source clip, kept as a 32-bit float WAV at its own rate.
    pub source_wav: PathBuf,
    /// The settings as recorded in the clip's WAV comment.
    pub description: String,
}

impl VariationRecord {
    /// One line for the history.
    pub fn summary(&self, prompt: &str) -> String {
        if prompt.trim().is_empty() {
            format!("variation of {}", self.source_name)
        } else {
            format!(
                "variation of {}, prompt mix {:.2}",
                self.source_name, self.mix
            )
        }
    }
}

/// How a history entry was made from a source clip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EditRecord {
    pub mode: Mode,
    pub source_name: String,
    /// The source clip, kept as a 32-bit float WAV at its own rate so that the edit can be
    /// repeated after a restart.
    pub source_wav: PathBuf,
    /// The settings as recorded in the clip's WAV comment.
    pub description: String,
}

impl EditRecord {
    /// One line for the history: the mode and its parameters.
    pub fn summary(&self) -> String {
        let what = match &self.mode {
            Mode::StyleTransfer { strength } => format!("style transfer, strength {strength:.2}"),
            Mode::Inpaint { ranges } => {
                let ranges: Vec<String> = ranges
                    .iter()
                    .map(|(a, b)| format!("{a:.2}-{b:.2} s"))
                    .collect();
                format!("inpainting {}", ranges.join(", "))
            }
            Mode::SuperResolution { cutoff_hz } => match cutoff_hz {
                Some(hz) => format!("super-resolution above {hz:.0} Hz"),
                None => "super-resolution".into(),
            },
            Mode::Extend { seconds } => format!("extended by {seconds:.2} s"),
        };
        format!("{what} of {}", self.source_name)
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
    /// Set when the clip is an edit of another.
    #[serde(default)]
    pub edit: Option<EditRecord>,
    /// Set when the clip is a variation of another.
    #[serde(default)]
    pub variation: Option<VariationRecord>,
    /// For a ranked run's candidates: CLAP's score against the prompt, and how many candidates
    /// the run made.
    #[serde(default)]
    pub score: Option<(f32, usize)>,
}

/// Everything persisted through eframe's storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    pub settings: Settings,
    pub history: Vec<HistoryEntry>,
    pub next_id: u64,
    /// Keep only the network the current stage needs on the GPU. A preference of this machine,
    /// not of a clip, so it lives beside the settings rather than in them.
    pub low_memory: bool,
    /// What runs the networks (auto, gpu, cpu), by name; also a preference of this machine.
    #[serde(with = "device_name")]
    pub device: DeviceChoice,
}

/// A [`DeviceChoice`] kept by its name; a name this build does not know reads as `Auto`, so that
/// it costs the choice and not the history.
mod device_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::engine::DeviceChoice;

    pub fn serialize<S: Serializer>(device: &DeviceChoice, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(device.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DeviceChoice, D::Error> {
        let name = String::deserialize(d)?;
        Ok(DeviceChoice::parse(&name).unwrap_or_else(|e| {
            tracing::warn!("the device setting: {e}; using auto");
            DeviceChoice::Auto
        }))
    }
}
