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

    /// [`check_audible`] on this clip.
    pub fn check_audible(&self, name: &str) -> crate::error::Result<()> {
        check_audible(&self.samples, name)
    }
}

/// The quietest an input clip may be: a clip whose peak is below -80 dBFS holds no sound to work
/// from (16-bit dither alone peaks near -90 dBFS, an empty recording lower still), and scaling it
/// up, as the edits' front end does, would only make its noise the input. Every mode that takes
/// a clip (the edits, variations, CLAP scores of given clips) refuses one with
/// [`Error::Silent`](crate::Error::Silent), through [`check_audible`].
pub const SILENCE_DBFS: f64 = -80.0;

/// The peak of `samples` in dBFS (1.0 is 0 dBFS): `-inf` when they hold no sound. Non-finite
/// samples are skipped ([`check_audible`] refuses them).
pub fn peak_dbfs(samples: &[f32]) -> f64 {
    let peak = samples
        .iter()
        .filter(|s| s.is_finite())
        .fold(0.0f32, |m, s| m.max(s.abs()));
    20.0 * f64::from(peak).log10()
}

/// The one rule for a clip a mode works from, checked before any model work: finite samples
/// whose peak ([`peak_dbfs`]) reaches [`SILENCE_DBFS`]. `name` names the clip in the error.
pub fn check_audible(samples: &[f32], name: &str) -> crate::error::Result<()> {
    if samples.iter().any(|s| !s.is_finite()) {
        return Err(crate::Error::Input(format!(
            "{name}: the clip holds non-finite samples (NaN or infinity)"
        )));
    }
    let peak_dbfs = peak_dbfs(samples);
    if peak_dbfs < SILENCE_DBFS {
        return Err(crate::Error::Silent {
            clip: name.to_string(),
            peak_dbfs,
        });
    }
    Ok(())
}
