//! Audio in and out: WAV files, decoding of common formats (symphonia), resampling (rubato), the
//! log-mel front end AudioLDM was trained on, and playback (cpal).

pub mod clap_features;
pub mod decode;
pub mod mel;
#[cfg(feature = "app")]
pub mod playback;
pub mod resample;
pub mod wav;

/// A (log-)mel spectrogram, time-major: `data[frame * bins + bin]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mel {
    pub frames: usize,
    pub bins: usize,
    pub data: Vec<f32>,
}

/// Mono audio.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub samples: Vec<f32>,
}

impl Audio {
    pub fn duration_s(&self) -> f64 {
        if self.sample_rate == 0 {
            0.0
        } else {
            self.samples.len() as f64 / self.sample_rate as f64
        }
    }
}
