//! The log-mel front end AudioLDM's VAE and HiFi-GAN were trained on (the original repo's
//! `audioldm/audio/stft.py` `TacotronSTFT` and `audio/tools.py`): 16 kHz, a 1024-point STFT with
//! a periodic Hann window and hop 160 over a reflect-padded signal, the magnitude (not power) of
//! bins 0..=512, a Slaney-scale Slaney-normalised mel filterbank of 64 bands from 0 to 8 kHz
//! (librosa's default `mel`), and `ln(max(x, 1e-5))`.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use super::resample::resample;
use super::{Audio, Mel};
use crate::error::Result;

pub const SAMPLE_RATE: u32 = 16_000;
pub const N_FFT: usize = 1024;
pub const HOP: usize = 160;
pub const N_MELS: usize = 64;
pub const F_MIN: f64 = 0.0;
pub const F_MAX: f64 = 8_000.0;
/// The floor of the log: silence maps to `ln(1e-5) = -11.5129`.
pub const LOG_FLOOR: f32 = 1e-5;

/// Mel frames per second of audio (16000 / 160).
pub const FRAMES_PER_SECOND: f64 = SAMPLE_RATE as f64 / HOP as f64;

/// Computes log-mel spectrograms of 16 kHz audio, reusing its FFT plan and filterbank.
pub struct MelFrontEnd {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    n_mels: usize,
    /// `[n_mels, N_FFT / 2 + 1]`, row-major.
    filters: Vec<f32>,
}

impl Default for MelFrontEnd {
    fn default() -> Self {
        Self::new()
    }
}

impl MelFrontEnd {
    /// AudioLDM's front end: 64 bands.
    pub fn new() -> Self {
        Self::with_bands(N_MELS)
    }

    /// The same front end with `n_mels` bands over 0-8 kHz, for a model whose vocoder takes
    /// another width (`model_in_dim`; every released checkpoint has 64).
    pub fn with_bands(n_mels: usize) -> Self {
        Self {
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT),
            window: periodic_hann(N_FFT),
            n_mels,
            filters: slaney_mel_filters(SAMPLE_RATE as f64, N_FFT, n_mels, F_MIN, F_MAX)
                .into_iter()
                .map(|w| w as f32)
                .collect(),
        }
    }

    /// Magnitudes `[frames, N_FFT / 2 + 1]` of the centred STFT; `frames = 1 + len / HOP`.
    pub fn magnitudes(&self, samples: &[f32]) -> (usize, Vec<f32>) {
        let bins = N_FFT / 2 + 1;
        let frames = 1 + samples.len() / HOP;
        let padded = reflect_pad(samples, N_FFT / 2);
        let mut out = Vec::with_capacity(frames * bins);
        stft_frames(
            self.fft.as_ref(),
            &self.window,
            &padded,
            HOP,
            frames,
            |spectrum| out.extend(spectrum.iter().map(|c| c.norm())),
        );
        (frames, out)
    }

    /// The log-mel spectrogram of `audio` at any rate, resampled to 16 kHz first.
    pub fn log_mel_of(&self, audio: &Audio) -> Result<Mel> {
        let at_16k = resample(&audio.samples, audio.sample_rate, SAMPLE_RATE)?;
        Ok(self.log_mel(&at_16k))
    }

    /// The log-mel spectrogram of 16 kHz `samples`, `[frames, bands]`.
    pub fn log_mel(&self, samples: &[f32]) -> Mel {
        let bins = N_FFT / 2 + 1;
        let (frames, magnitudes) = self.magnitudes(samples);
        let mut data = Vec::with_capacity(frames * self.n_mels);
        for spectrum in magnitudes.chunks_exact(bins) {
            for filter in self.filters.chunks_exact(bins) {
                let energy: f32 = filter.iter().zip(spectrum).map(|(w, m)| w * m).sum();
                data.push(energy.max(LOG_FLOOR).ln());
            }
        }
        Mel {
            frames,
            bins: self.n_mels,
            data,
        }
    }

    /// The original AudioLDM's `wav_to_fbank` (`audioldm/audio/tools.py`) on a 16 kHz clip, the
    /// input of every audio-to-audio mode: remove the mean and scale to peak 0.5
    /// (`normalize_wav`), zero-pad at the end to `frames * HOP` samples, scale to peak exactly 0.5
    /// and clip to [-1, 1], take the log-mel and cut or zero-pad it to `frames`. A longer clip is
    /// not cut before the mel (the original's pad does nothing there), so its normalisation sees
    /// the whole clip. A silent clip ([`super::check_audible`]) is an error: scaling it would make
    /// its noise the input.
    pub fn wav_to_fbank(&self, samples: &[f32], frames: usize) -> Result<Mel> {
        let mean = samples.iter().map(|&v| v as f64).sum::<f64>() / samples.len().max(1) as f64;
        let mut wav: Vec<f32> = samples.iter().map(|&v| v - mean as f32).collect();
        // The rule every input clip meets, on what is scaled up: its callers check the clip as
        // given, but a constant offset is no sound, and a clip whose sound was all above 8 kHz
        // is silent only now.
        super::check_audible(&wav, "the clip at 16 kHz")?;
        let peak = wav.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let denominator = peak + 1e-8;
        wav.iter_mut().for_each(|v| *v = *v / denominator * 0.5);
        if wav.len() < frames * HOP {
            wav.resize(frames * HOP, 0.0);
        }
        let peak = wav.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        wav.iter_mut()
            .for_each(|v| *v = (0.5 * *v / peak).clamp(-1.0, 1.0));
        let mut mel = self.log_mel(&wav);
        mel.data.resize(frames * mel.bins, 0.0);
        mel.frames = frames;
        Ok(mel)
    }
}

/// Runs `fft` over `frames` windows of `padded`, `hop` samples apart, each multiplied by `window`
/// (samples past the end count as zero), and hands each spectrum to `each`.
pub(crate) fn stft_frames<T: realfft::FftNum>(
    fft: &dyn RealToComplex<T>,
    window: &[T],
    padded: &[T],
    hop: usize,
    frames: usize,
    mut each: impl FnMut(&[realfft::num_complex::Complex<T>]),
) {
    let mut input = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    for frame in 0..frames {
        let start = frame * hop;
        for (i, x) in input.iter_mut().enumerate() {
            *x = padded.get(start + i).copied().unwrap_or_else(T::zero) * window[i];
        }
        // The lengths come from the plan itself, so processing cannot fail.
        if fft
            .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
            .is_err()
        {
            unreachable!("FFT buffers are made by the plan");
        }
        each(&spectrum);
    }
}

/// `0.5 - 0.5 cos(2 pi n / N)` (scipy's `get_window("hann", N, fftbins=True)`).
pub(crate) fn periodic_hann_f64(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
        .collect()
}

fn periodic_hann(n: usize) -> Vec<f32> {
    periodic_hann_f64(n).into_iter().map(|w| w as f32).collect()
}

/// numpy's `pad(mode="reflect")`: mirrored without repeating the edge sample. Signals shorter
/// than the pad reflect back and forth, as numpy does.
pub(crate) fn reflect_pad<T: Copy + Default>(samples: &[T], pad: usize) -> Vec<T> {
    let n = samples.len();
    if n == 0 {
        return vec![T::default(); 2 * pad];
    }
    let index = |i: isize| -> usize {
        if n == 1 {
            return 0;
        }
        let period = 2 * (n as isize - 1);
        let m = i.rem_euclid(period);
        (if m < n as isize { m } else { period - m }) as usize
    };
    (-(pad as isize)..(n + pad) as isize)
        .map(|i| samples[index(i)])
        .collect()
}

/// The Slaney mel scale: linear (`F_SP` Hz per mel) below `MIN_LOG_HZ`, logarithmic above.
const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

/// Hz to mel on the Slaney scale, as librosa.
pub fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / log_step()
    } else {
        hz / F_SP
    }
}

/// The inverse of [`hz_to_mel`].
pub fn mel_to_hz(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (log_step() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

/// The centre frequency in Hz of each of `n_mels` bands between `f_min` and `f_max`.
pub fn mel_band_centres(n_mels: usize, f_min: f64, f_max: f64) -> Vec<f64> {
    let edges = mel_edges(n_mels, f_min, f_max);
    edges[1..=n_mels].to_vec()
}

/// The upper edge in Hz of each of `n_mels` bands between `f_min` and `f_max`: above it a band's
/// triangle is zero.
pub fn mel_band_upper_edges(n_mels: usize, f_min: f64, f_max: f64) -> Vec<f64> {
    let edges = mel_edges(n_mels, f_min, f_max);
    edges[2..].to_vec()
}

fn mel_edges(n_mels: usize, f_min: f64, f_max: f64) -> Vec<f64> {
    let (lo, hi) = (hz_to_mel(f_min), hz_to_mel(f_max));
    (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect()
}

/// librosa's `filters.mel(sr, n_fft, n_mels, fmin, fmax)` with `htk=False, norm="slaney"`:
/// triangles between neighbouring mel edges, each scaled to unit area, `[n_mels, n_fft/2 + 1]`.
pub fn slaney_mel_filters(
    sample_rate: f64,
    n_fft: usize,
    n_mels: usize,
    f_min: f64,
    f_max: f64,
) -> Vec<f64> {
    let bins = n_fft / 2 + 1;
    let edges = mel_edges(n_mels, f_min, f_max);
    let mut weights = vec![0.0; n_mels * bins];
    for m in 0..n_mels {
        let (left, centre, right) = (edges[m], edges[m + 1], edges[m + 2]);
        let norm = 2.0 / (right - left);
        for k in 0..bins {
            let f = k as f64 * sample_rate / n_fft as f64;
            let lower = (f - left) / (centre - left);
            let upper = (right - f) / (right - centre);
            weights[m * bins + k] = lower.min(upper).max(0.0) * norm;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_pad_matches_numpy() {
        // np.pad([1, 2, 3], 4, mode="reflect")
        let padded = reflect_pad(&[1.0, 2.0, 3.0], 4);
        assert_eq!(
            padded,
            [1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0]
        );
        assert_eq!(reflect_pad(&[5.0, 6.0], 1), [6.0, 5.0, 6.0, 5.0]);
    }

    #[test]
    fn mel_scale_round_trips() {
        for hz in [0.0, 10.0, 999.0, 1000.0, 1234.5, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9);
        }
    }
}
