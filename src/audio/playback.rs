//! Playback on the default output device through cpal, resampled to the device's own rate.
//!
//! Machines without a sound card are normal (CI, servers, some VMs): every failure comes back as
//! a [`PlaybackError`] for the front end to show, never a panic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample, StreamConfig};

use super::Audio;
use super::resample::resample;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaybackError {
    #[error("no audio output device was found: playback is off, everything else works")]
    NoDevice,
    #[error("the audio output device cannot be used ({0}): playback is off, everything else works")]
    Device(String),
    #[error("cannot prepare the clip for playback: {0}")]
    Clip(String),
}

/// Where the sound goes. One per front end; plays one clip at a time.
#[derive(Default)]
pub struct Player {
    playing: Option<Playing>,
}

struct Playing {
    /// Kept alive while it plays; dropping it stops the device.
    _stream: cpal::Stream,
    /// Device frames written so far.
    frames_done: Arc<AtomicUsize>,
    finished: Arc<AtomicBool>,
    device_rate: u32,
    device_frames: usize,
    id: u64,
}

impl Player {
    /// Plays `audio` from the start, stopping whatever was playing. `id` names the clip, for
    /// [`Player::playing`].
    pub fn play(&mut self, audio: &Audio, id: u64) -> Result<(), PlaybackError> {
        self.play_from(audio, id, 0.0)
    }

    /// Plays `audio` from `start_s` seconds in.
    pub fn play_from(&mut self, audio: &Audio, id: u64, start_s: f64) -> Result<(), PlaybackError> {
        self.stop();
        let host = cpal::default_host();
        let device = host
            .default_output_device()
            .ok_or(PlaybackError::NoDevice)?;
        let supported = device
            .default_output_config()
            .map_err(|e| PlaybackError::Device(e.to_string()))?;
        let format = supported.sample_format();
        let config: StreamConfig = supported.into();
        let samples = resample(&audio.samples, audio.sample_rate, config.sample_rate)
            .map_err(|e| PlaybackError::Clip(e.to_string()))?;
        let start = (start_s.max(0.0) * f64::from(config.sample_rate)) as usize;
        let source = Source {
            frames_done: Arc::new(AtomicUsize::new(start.min(samples.len()))),
            samples: Arc::new(samples),
            finished: Arc::new(AtomicBool::new(false)),
            channels: usize::from(config.channels).max(1),
        };
        let (frames_done, finished) = (source.frames_done.clone(), source.finished.clone());
        let device_frames = source.samples.len();
        let stream = match format {
            SampleFormat::F32 => build::<f32>(&device, &config, source),
            SampleFormat::F64 => build::<f64>(&device, &config, source),
            SampleFormat::I16 => build::<i16>(&device, &config, source),
            SampleFormat::I32 => build::<i32>(&device, &config, source),
            SampleFormat::U16 => build::<u16>(&device, &config, source),
            SampleFormat::U8 => build::<u8>(&device, &config, source),
            SampleFormat::I8 => build::<i8>(&device, &config, source),
            other => Err(PlaybackError::Device(format!(
                "sample format {other} is not supported"
            ))),
        }?;
        stream
            .play()
            .map_err(|e| PlaybackError::Device(e.to_string()))?;
        self.playing = Some(Playing {
            _stream: stream,
            frames_done,
            finished,
            device_rate: config.sample_rate,
            device_frames,
            id,
        });
        Ok(())
    }

    pub fn stop(&mut self) {
        self.playing = None;
    }

    /// The clip playing now and how far it got in seconds; `None` once it has finished.
    pub fn playing(&mut self) -> Option<(u64, f64)> {
        let done = self
            .playing
            .as_ref()
            .is_some_and(|p| p.finished.load(Ordering::Relaxed));
        if done {
            self.playing = None;
        }
        self.playing.as_ref().map(|p| {
            let frames = p.frames_done.load(Ordering::Relaxed).min(p.device_frames);
            (p.id, frames as f64 / p.device_rate.max(1) as f64)
        })
    }
}

/// The audio callback's view of the clip.
struct Source {
    samples: Arc<Vec<f32>>,
    frames_done: Arc<AtomicUsize>,
    finished: Arc<AtomicBool>,
    channels: usize,
}

fn build<T>(
    device: &cpal::Device,
    config: &StreamConfig,
    source: Source,
) -> Result<cpal::Stream, PlaybackError>
where
    T: SizedSample + FromSample<f32>,
{
    let Source {
        samples,
        frames_done,
        finished,
        channels,
    } = source;
    let callback_finished = finished.clone();
    device
        .build_output_stream(
            *config,
            move |out: &mut [T], _: &cpal::OutputCallbackInfo| {
                let start = frames_done.load(Ordering::Relaxed);
                for (i, frame) in out.chunks_mut(channels).enumerate() {
                    let value = samples.get(start + i).copied().unwrap_or(0.0);
                    frame.fill(T::from_sample(value));
                }
                let end = start + out.len() / channels;
                frames_done.store(end, Ordering::Relaxed);
                if end >= samples.len() {
                    callback_finished.store(true, Ordering::Relaxed);
                }
            },
            move |e| {
                tracing::warn!(error = %e, "audio stream error");
                finished.store(true, Ordering::Relaxed);
            },
            None,
        )
        .map_err(|e| PlaybackError::Device(e.to_string()))
}
