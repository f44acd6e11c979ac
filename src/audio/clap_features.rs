//! CLAP's audio front end, as transformers' `ClapFeatureExtractor` computes it for the HTSAT
//! audio tower (`models/clap/feature_extraction_clap.py`): a clip at the extractor's rate (48 kHz)
//! is repeat-padded or cropped to `max_length_s`, then a centred, reflect-padded STFT (periodic
//! Hann window of `fft_window_size`, hop `hop_length`) gives power spectra, a Slaney mel filterbank
//! (`frequency_min`..`frequency_max`, `feature_size` bands) and `10 log10(max(x, 1e-10))` the
//! log-mel image `[frames, feature_size]` (1001 x 64 for 10 s).
//!
//! The settings come from the checkpoint's `preprocessor_config.json`. Only the modes of the
//! unfused checkpoints are supported: truncation `rand_trunc` (a longer clip is cropped at an
//! offset drawn as `np.random.RandomState(seed).randint(0, overflow + 1)`, so a seed gives the
//! crop Python gives after `np.random.seed(seed)`) and padding `repeatpad`, `repeat` or `pad`.
//! `fusion` (four mel views) is refused with a message.
//!
//! Computed in f64 throughout, as numpy does (its FFT output is kept as complex64 there, which
//! this matches to about 1e-7).

use std::path::Path;
use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use super::mel::{periodic_hann_f64, reflect_pad, slaney_mel_filters, stft_frames};
use crate::error::{Error, Result};
use crate::noise::Mt19937;

/// The most frames a window may make (CLAP's is 1001).
const MAX_FRAMES: usize = 20_000;

/// The floor of the power before the log (`spectrogram`'s `mel_floor` and `min_value`).
const POWER_FLOOR: f64 = 1e-10;

/// How a clip longer than the extractor's window is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// One crop at an offset drawn from the seed.
    RandTrunc,
    /// Four mel views of the whole clip (the fused checkpoints; not supported).
    Fusion,
}

/// How a clip shorter than the window is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Whole repeats of the clip, then silence.
    Repeatpad,
    /// Repeats of the clip, the last one cut.
    Repeat,
    /// Silence.
    Pad,
}

/// The fields of `preprocessor_config.json` the front end reads (transformers' defaults where a
/// field is absent).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClapFeatureConfig {
    #[serde(default = "defaults::feature_size")]
    pub feature_size: usize,
    #[serde(default = "defaults::sampling_rate")]
    pub sampling_rate: u32,
    #[serde(default = "defaults::hop_length")]
    pub hop_length: usize,
    #[serde(default = "defaults::max_length_s")]
    pub max_length_s: usize,
    #[serde(default = "defaults::fft_window_size")]
    pub fft_window_size: usize,
    #[serde(default)]
    pub frequency_min: f64,
    #[serde(default = "defaults::frequency_max")]
    pub frequency_max: f64,
    #[serde(default)]
    pub top_db: Option<f64>,
    #[serde(default = "defaults::truncation")]
    pub truncation: Truncation,
    #[serde(default = "defaults::padding")]
    pub padding: Padding,
}

mod defaults {
    use super::{Padding, Truncation};
    pub fn feature_size() -> usize {
        64
    }
    pub fn sampling_rate() -> u32 {
        48_000
    }
    pub fn hop_length() -> usize {
        480
    }
    pub fn max_length_s() -> usize {
        10
    }
    pub fn fft_window_size() -> usize {
        1024
    }
    pub fn frequency_max() -> f64 {
        14_000.0
    }
    pub fn truncation() -> Truncation {
        Truncation::Fusion
    }
    pub fn padding() -> Padding {
        Padding::Repeatpad
    }
}

impl ClapFeatureConfig {
    /// Reads and checks `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::untrusted::read_bounded(path, 1 << 20)?;
        Self::from_json(&bytes, path)
    }

    /// Parses and checks the text of `preprocessor_config.json`; `path` names it in errors.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        let not_config = |detail: String| Error::Config {
            path: path.to_path_buf(),
            message: format!("not a CLAP feature extractor config: {detail}"),
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| not_config(e.to_string()))?;
        if !value.is_object() {
            return Err(not_config("it is not a JSON object".into()));
        }
        let config: Self = serde_json::from_value(value).map_err(|e| not_config(e.to_string()))?;
        config.check().map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.truncation == Truncation::Fusion {
            return Err(
                "truncation \"fusion\" (the fused CLAP checkpoints) is not supported; \
                        the unfused ones use \"rand_trunc\""
                    .into(),
            );
        }
        if !(16..=8192).contains(&self.fft_window_size) {
            return Err(format!(
                "fft_window_size {} is outside 16..=8192",
                self.fft_window_size
            ));
        }
        if self.hop_length == 0 || self.hop_length > self.fft_window_size {
            return Err(format!(
                "hop_length {} must be in 1..=fft_window_size",
                self.hop_length
            ));
        }
        if !(1..=512).contains(&self.feature_size) {
            return Err(format!(
                "feature_size {} is outside 1..=512",
                self.feature_size
            ));
        }
        if !(8_000..=192_000).contains(&self.sampling_rate) {
            return Err(format!(
                "sampling_rate {} is outside 8000..=192000",
                self.sampling_rate
            ));
        }
        if !(1..=60).contains(&self.max_length_s) {
            return Err(format!(
                "max_length_s {} is outside 1..=60",
                self.max_length_s
            ));
        }
        // The real front end makes 1001 frames; a window of more than this many is no CLAP.
        if self.max_samples() / self.hop_length > MAX_FRAMES {
            return Err(format!(
                "{} s at hop {} makes more than {MAX_FRAMES} frames",
                self.max_length_s, self.hop_length
            ));
        }
        let nyquist = f64::from(self.sampling_rate) / 2.0;
        if !(self.frequency_min >= 0.0
            && self.frequency_min < self.frequency_max
            && self.frequency_max <= nyquist)
        {
            return Err(format!(
                "the mel range {}..{} Hz must lie within 0..{nyquist} Hz",
                self.frequency_min, self.frequency_max
            ));
        }
        if self.top_db.is_some_and(|db| !(db > 0.0 && db.is_finite())) {
            return Err("top_db must be positive".into());
        }
        Ok(())
    }

    /// Samples in the extractor's window (`max_length_s` at its rate).
    pub fn max_samples(&self) -> usize {
        self.max_length_s * self.sampling_rate as usize
    }

    /// Frames of the log-mel image: `1 + max_samples / hop_length`.
    pub fn frames(&self) -> usize {
        1 + self.max_samples() / self.hop_length
    }
}

/// The log-mel image of one clip, as `input_features[0, 0]`.
#[derive(Debug, Clone)]
pub struct ClapFeatures {
    /// `[frames, bands]`, row-major.
    pub data: Vec<f32>,
    pub frames: usize,
    pub bands: usize,
    /// Whether the clip was longer than the window and cropped (`is_longer`).
    pub is_longer: bool,
    /// Where the crop started, in samples (0 unless cropped).
    pub crop_start: usize,
}

/// Computes CLAP's input features, reusing its FFT plan and filterbank.
pub struct ClapFeatureExtractor {
    config: ClapFeatureConfig,
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    /// `[bands, fft_window_size / 2 + 1]`, row-major.
    filters: Vec<f64>,
}

impl ClapFeatureExtractor {
    /// The front end `config` describes (checked by [`ClapFeatureConfig::from_file`]).
    pub fn new(config: ClapFeatureConfig) -> Result<Self> {
        config.check().map_err(Error::Input)?;
        let n_fft = config.fft_window_size;
        Ok(Self {
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(n_fft),
            window: periodic_hann_f64(n_fft),
            filters: slaney_mel_filters(
                f64::from(config.sampling_rate),
                n_fft,
                config.feature_size,
                config.frequency_min,
                config.frequency_max,
            ),
            config,
        })
    }

    pub fn config(&self) -> &ClapFeatureConfig {
        &self.config
    }

    /// The features of `samples` (mono, at the extractor's rate); a clip longer than the window
    /// is cropped at the offset `seed` draws. A clip shorter than one frame (`hop_length` samples)
    /// or with non-finite samples is an error.
    pub fn features(&self, samples: &[f32], seed: u32) -> Result<ClapFeatures> {
        self.features_drawing(samples, &mut Mt19937::new(seed))
    }

    /// [`Self::features`] drawing a crop (only for a clip longer than the window) from `rng`: a
    /// batch of clips draws from one stream in order, as one extractor call does in Python after
    /// `np.random.seed(seed)`.
    pub fn features_drawing(&self, samples: &[f32], rng: &mut Mt19937) -> Result<ClapFeatures> {
        let hop = self.config.hop_length;
        if samples.len() < hop {
            let rate = self.config.sampling_rate;
            return Err(Error::Input(format!(
                "the clip is too short for CLAP: {} samples at {rate} Hz, under one frame \
                 ({hop} samples, {:.0} ms); CLAP needs at least one sample per frame",
                samples.len(),
                hop as f64 * 1000.0 / f64::from(rate)
            )));
        }
        if samples.iter().any(|s| !s.is_finite()) {
            return Err(Error::Input(
                "the clip holds non-finite samples (NaN or infinity)".into(),
            ));
        }
        let max = self.config.max_samples();
        let mut crop_start = 0;
        let window: Vec<f64> = if samples.len() > max {
            let overflow = samples.len() - max;
            crop_start = rng.randint(0, overflow as u64 + 1) as usize;
            samples[crop_start..crop_start + max]
                .iter()
                .map(|&s| f64::from(s))
                .collect()
        } else {
            self.fill(samples)
        };
        let bands = self.config.feature_size;
        let mut data = self.log_mel(&window);
        let frames = data.len() / bands;
        if let Some(top_db) = self.config.top_db {
            let peak = data.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let floor = peak - top_db as f32;
            data.iter_mut().for_each(|v| *v = v.max(floor));
        }
        Ok(ClapFeatures {
            data,
            frames,
            bands,
            is_longer: samples.len() > max,
            crop_start,
        })
    }

    /// A clip no longer than the window, filled to it as `padding` says.
    fn fill(&self, samples: &[f32]) -> Vec<f64> {
        let max = self.config.max_samples();
        let clip: Vec<f64> = samples.iter().map(|&s| f64::from(s)).collect();
        let mut out = match self.config.padding {
            // `int(max / len)` whole copies (one at least), as `np.tile`.
            Padding::Repeatpad => clip.repeat(max / clip.len()),
            Padding::Repeat => {
                let mut repeated = clip.repeat(max / clip.len() + 1);
                repeated.truncate(max);
                repeated
            }
            Padding::Pad => clip,
        };
        out.resize(max, 0.0);
        out
    }

    /// `10 log10(max(mel power, 1e-10))`, `[frames, bands]`.
    fn log_mel(&self, samples: &[f64]) -> Vec<f32> {
        let n_fft = self.config.fft_window_size;
        let hop = self.config.hop_length;
        let bins = n_fft / 2 + 1;
        let padded = reflect_pad(samples, n_fft / 2);
        let frames = 1 + (padded.len() - n_fft) / hop;
        let mut power = vec![0.0f64; bins];
        let mut out = Vec::with_capacity(frames * self.config.feature_size);
        stft_frames(
            self.fft.as_ref(),
            &self.window,
            &padded,
            hop,
            frames,
            |spectrum| {
                for (p, c) in power.iter_mut().zip(spectrum) {
                    *p = c.norm_sqr();
                }
                for filter in self.filters.chunks_exact(bins) {
                    let energy: f64 = filter.iter().zip(&power).map(|(w, p)| w * p).sum();
                    out.push((10.0 * energy.max(POWER_FLOOR).log10()) as f32);
                }
            },
        );
        out
    }
}
