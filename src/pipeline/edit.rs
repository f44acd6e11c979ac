//! Audio-to-audio: the zero-shot manipulations of the AudioLDM paper on a source clip (style
//! transfer, inpainting, super-resolution, continuation), as the original repo runs them
//! (`audioldm/pipeline.py` `style_transfer` and `super_resolution_and_inpainting`, `ldm.py`
//! `generate_sample_masked`) on diffusers' parts. Every mode is the text-to-audio denoising loop
//! with another start, a subset of its timesteps, or a known region held by a mask.
//!
//! # Noise contract
//! Every random draw is NumPy's `RandomState(k).standard_normal(shape).astype(float32)`, with
//! `shape` the latent shape `[1, C, frames, width]` of the result (of the clip alone for the
//! posterior sample), one generator per purpose; `seed + k` wraps modulo 2^32:
//! - `RandomState(seed)`: the starting noise. Inpainting, super-resolution and continuation start
//!   from it as text-to-audio does; style transfer adds it to the clip's latents.
//! - `RandomState(seed + 1)`: DDIM's variance noise, one draw per step whose sigma is above zero.
//! - `RandomState(seed + 2)`: the VAE posterior sample of the clip (one draw).
//! - `RandomState(seed + 3)`: the forward noise of the known region, one draw per step in step
//!   order (masked modes only).
//!
//! `scripts/reference/make_edit_reference.py` implements the same on diffusers' modules.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Event, Lengths, MAX_DURATION_S, Output, Pipeline, Plan, Request, check_finite};
use crate::audio::Audio;
use crate::audio::mel::{F_MAX, F_MIN, MelFrontEnd, SAMPLE_RATE, mel_band_upper_edges};
use crate::audio::resample::resample;
use crate::engine::{DType, Graph, Tensor};
use crate::error::{Error, Result};
use crate::model::vae::latent_std;
use crate::noise;

/// What to do with the source clip.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Text-guided style transfer: `strength` in (0, 1] is the share of the schedule the clip's
    /// latents are noised into and denoised back from (1 keeps nothing of the clip).
    StyleTransfer { strength: f32 },
    /// Regenerate these time ranges `[start, end)` in seconds; the rest is kept.
    Inpaint { ranges: Vec<(f64, f64)> },
    /// Keep the clip's content below `cutoff_hz` and generate the mel bands above it; `None`
    /// takes half the source file's sample rate.
    SuperResolution { cutoff_hz: Option<f64> },
    /// Extend the clip by `seconds`.
    Extend { seconds: f64 },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::StyleTransfer { .. } => "style transfer",
            Mode::Inpaint { .. } => "inpainting",
            Mode::SuperResolution { .. } => "super-resolution",
            Mode::Extend { .. } => "continuation",
        }
    }
}

/// An edit of a source clip. `request` gives the prompt, negative prompt, steps, guidance, seed
/// and eta; the clip sets the length, so `request.duration_s` and `request.init_latents` must be
/// `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct EditRequest {
    pub request: Request,
    /// The decoded clip at its own sample rate (channel 0).
    pub source: Audio,
    /// The source's file name, for the settings recorded with the result.
    pub source_name: String,
    pub mode: Mode,
}

impl EditRequest {
    /// The settings as JSON for the clip's metadata: those of text-to-audio plus the mode, its
    /// parameters and the source's name.
    pub fn describe(&self, model: &str) -> String {
        let mut settings = self.request.settings(model, self.source.duration_s());
        let parameters = match &self.mode {
            Mode::StyleTransfer { strength } => serde_json::json!({ "strength": strength }),
            Mode::Inpaint { ranges } => serde_json::json!({ "ranges_s": ranges }),
            Mode::SuperResolution { cutoff_hz } => serde_json::json!({
                "cutoff_hz": cutoff_hz.unwrap_or(self.source.sample_rate as f64 / 2.0)
            }),
            Mode::Extend { seconds } => serde_json::json!({ "seconds": seconds }),
        };
        settings.remove("initial_latents");
        settings.insert("mode".into(), self.mode.name().into());
        settings.insert("mode_parameters".into(), parameters);
        settings.insert("source".into(), self.source_name.clone().into());
        serde_json::Value::Object(settings).to_string()
    }

    /// The checks that need no model, which the front ends run before loading one: the request
    /// leaves the length and latents to the clip, and the clip holds audio that is not silent
    /// ([`crate::audio::check_audible`], the rule every input clip meets).
    pub fn check(&self) -> Result<()> {
        if self.request.init_latents.is_some() || self.request.duration_s.is_some() {
            return Err(Error::Input(
                "an edit takes its length and its latents from the source clip: leave the \
                 duration and the initial latents unset"
                    .into(),
            ));
        }
        if self.source.samples.is_empty() || self.source.sample_rate == 0 {
            return Err(Error::Input(format!(
                "{}: the source clip holds no audio",
                self.source_name
            )));
        }
        self.source.check_audible(&self.source_name)
    }
}

/// What the edit holds fixed, resolved against the clip and the model before any GPU work.
struct Prepared {
    /// The clip at 16 kHz.
    clip: Vec<f32>,
    clip_lengths: Lengths,
    /// The result's lengths (the clip's, or clip plus extension).
    lengths: Lengths,
    /// `[frames, width]` of the result, 1 on kept latent cells; `None` for style transfer.
    mask: Option<Vec<f32>>,
    /// Style transfer: the index into the timesteps of the first denoising step.
    first_step: usize,
}

impl Pipeline {
    /// Runs `edit` on its source clip: front end, VAE encoding, the mode's denoising, decoding.
    /// The checks on the clip and the mode's parameters all run before the GPU does any work.
    /// Calls `on_event` once the clip is encoded (`Step` with `i = 0`, a preview of the known
    /// region) and after every step; stops with [`Error::Cancelled`] between stages and steps.
    /// The noise follows the contract in this module's documentation.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn edit(
        &self,
        edit: &EditRequest,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event),
    ) -> Result<Output> {
        pollster::block_on(self.edit_async(edit, cancel, on_event))
    }

    /// [`Self::edit`] without blocking: what a browser's page runs.
    pub async fn edit_async(
        &self,
        edit: &EditRequest,
        cancel: &AtomicBool,
        mut on_event: impl FnMut(Event),
    ) -> Result<Output> {
        edit.check()?;
        let request = &edit.request;
        self.check_request(request)?;
        if request.scheduler != super::SchedulerKind::Ddim {
            return Err(Error::Input(format!(
                "edits run DDIM, as the original AudioLDM does (their noise levels follow its \
                 schedule); the {} scheduler is for text-to-audio and variations",
                request.scheduler.name()
            )));
        }
        let timesteps = self.scheduler.timesteps(request.steps)?;
        let ddim = |timesteps: &[usize]| {
            timesteps
                .iter()
                .map(|&t| {
                    self.scheduler
                        .step(t, request.steps, request.eta)
                        .coefficients()
                })
                .collect()
        };
        let prepared = self.prepare(edit)?;
        let front_end = MelFrontEnd::with_bands(self.vocoder_config.model_in_dim);
        let mel = front_end.wav_to_fbank(&prepared.clip, prepared.clip_lengths.mel_frames)?;
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }

        let source_shape = self.latent_shape(&prepared.clip_lengths);
        let shape = self.latent_shape(&prepared.lengths);
        self.check_fits(shape).await?;
        self.begin_run();
        let meter = self.begin_stage("VAE encoder");
        let source_latents = self
            .encode_source(&mel, source_shape, request.seed, cancel)
            .await?;
        self.end_stage(meter);

        let count: usize = shape.iter().product();
        let start = noise::standard_normal(request.seed, count);
        let plan = match &prepared.mask {
            None => {
                let steps = &timesteps[prepared.first_step..];
                let stride = self.scheduler.config.num_train_timesteps / request.steps;
                // The original's off-by-one (LDM img2img): the noise level sits one step above
                // the first denoising call; past the schedule's end it is pure noise.
                let initial = match self.scheduler.noise_scales(steps[0] + stride) {
                    Some((signal, noise)) => source_latents
                        .iter()
                        .zip(&start)
                        .map(|(&z, &e)| signal * z + noise * e)
                        .collect(),
                    None => start,
                };
                Plan {
                    shape,
                    initial,
                    steps: ddim(steps),
                    known: None,
                }
            }
            Some(mask) => Plan {
                shape,
                initial: start,
                steps: ddim(&timesteps),
                known: Some(super::Known {
                    latents: place(&source_latents, source_shape, shape),
                    mask: mask.clone(),
                    noise: noise::LegacyNormal::new(request.seed.wrapping_add(3)),
                }),
            },
        };
        let (latents, embeds, dim) = self.denoise(request, plan, cancel, &mut on_event).await?;
        let mut output = self
            .finish(latents, shape, prepared.lengths, embeds, dim)
            .await?;
        output.source_latents = source_latents;
        output.source_latent_shape = source_shape;
        output.mask = prepared.mask;
        Ok(output)
    }

    /// Resamples the clip and resolves the mode against it: lengths, mask, first step.
    fn prepare(&self, edit: &EditRequest) -> Result<Prepared> {
        let source = &edit.source;
        let unusable = |duration: f64, e: &dyn std::fmt::Display| {
            Error::Input(format!(
                "the source clip cannot be edited as it is ({duration:.2} s): {e}"
            ))
        };
        // Refused before resampling: a long recording would be converted only to be dropped.
        if source.duration_s() > MAX_DURATION_S {
            return Err(unusable(
                source.duration_s(),
                &format!("an edit takes clips of at most {MAX_DURATION_S} s: trim it first"),
            ));
        }
        let clip = resample(&source.samples, source.sample_rate, SAMPLE_RATE)?;
        let duration = clip.len() as f64 / SAMPLE_RATE as f64;
        let clip_lengths = self.lengths(duration).map_err(|e| unusable(duration, &e))?;
        let width = clip_lengths.latent_width;
        let scale = self.vae_scale_factor();
        let seconds_per_frame = self.seconds_per_frame();
        let mut prepared = Prepared {
            clip,
            clip_lengths,
            lengths: clip_lengths,
            mask: None,
            first_step: 0,
        };
        match &edit.mode {
            &Mode::StyleTransfer { strength } => {
                if !(strength > 0.0 && strength <= 1.0) {
                    return Err(Error::Input(format!(
                        "the strength must be above 0 and at most 1, got {strength}"
                    )));
                }
                let steps = edit.request.steps;
                let denoising = (strength as f64 * steps as f64) as usize;
                if denoising == 0 {
                    return Err(Error::Input(format!(
                        "strength {strength} with {steps} steps leaves no denoising step \
                         (int(strength x steps) = 0): raise the strength or the steps"
                    )));
                }
                prepared.first_step = steps - denoising;
            }
            Mode::Inpaint { ranges } => {
                check_ranges(ranges, duration, seconds_per_frame)?;
                let frames = clip_lengths.latent_frames;
                let mut mask = vec![1.0f32; frames * width];
                for f in 0..frames {
                    let regenerated = (scale * f..scale * (f + 1)).any(|m| {
                        let t = m as f64 * seconds_per_frame;
                        ranges.iter().any(|&(start, end)| start <= t && t < end)
                    });
                    if regenerated {
                        mask[f * width..(f + 1) * width].fill(0.0);
                    }
                }
                prepared.mask = Some(mask);
            }
            &Mode::SuperResolution { cutoff_hz } => {
                let cutoff = cutoff_hz.unwrap_or(source.sample_rate as f64 / 2.0);
                let bands = self.vocoder_config.model_in_dim;
                let upper = mel_band_upper_edges(bands, F_MIN, F_MAX);
                if !(cutoff > 0.0 && cutoff < F_MAX) {
                    let why = match cutoff_hz {
                        None => format!(
                            "the clip was recorded at {} Hz, so it already covers 0-{F_MAX} Hz \
                             with nothing above to generate: give a cutoff below {F_MAX} Hz",
                            source.sample_rate
                        ),
                        Some(_) => format!("it must lie between 0 and {F_MAX} Hz"),
                    };
                    return Err(Error::Input(format!(
                        "super-resolution cutoff {cutoff} Hz: {why}"
                    )));
                }
                let kept: Vec<bool> = (0..width)
                    .map(|j| upper[scale * j + scale - 1] <= cutoff)
                    .collect();
                if !kept[0] {
                    return Err(Error::Input(format!(
                        "super-resolution cutoff {cutoff} Hz keeps nothing of the clip: the \
                         lowest latent band reaches {:.0} Hz",
                        upper[scale - 1]
                    )));
                }
                let row: Vec<f32> = kept.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
                prepared.mask = Some(row.repeat(clip_lengths.latent_frames));
            }
            &Mode::Extend { seconds } => {
                if !(seconds.is_finite() && seconds > 0.0) {
                    return Err(Error::Input(format!(
                        "the extension must be a positive number of seconds, got {seconds}"
                    )));
                }
                let total = duration + seconds;
                let lengths = self.lengths(total).map_err(|e| {
                    Error::Input(format!(
                        "the clip ({duration:.2} s) extended by {seconds} s is {total:.2} s: {e}"
                    ))
                })?;
                let kept = clip_lengths.latent_frames;
                let mut mask = vec![0.0f32; lengths.latent_frames * width];
                mask[..kept * width].fill(1.0);
                prepared.lengths = lengths;
                prepared.mask = Some(mask);
            }
        }
        Ok(prepared)
    }

    /// The VAE posterior sample of the clip's log-mel, times the scaling factor (the original's
    /// `style_transfer`: `get_first_stage_encoding(encode_first_stage(mel))`, its clip of outliers
    /// included), with the noise of `seed + 2`. Stops
    /// with [`Error::Cancelled`] between submits once `cancel` is set.
    async fn encode_source(
        &self,
        mel: &super::Mel,
        shape: [usize; 4],
        seed: u32,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>> {
        let ctx = &self.ctx;
        let input = Tensor::from_f32(ctx, [1, 1, mel.frames, mel.bins], DType::F32, &mel.data)?;
        let mut g = Graph::new(ctx);
        let x = g.input(&input);
        let dist = self.vae.get(&self.loader()).await?.encode(&mut g, x)?;
        let dims = g.dims(dist.mean).to_vec();
        if dims != shape {
            return Err(Error::Input(format!(
                "the VAE encodes a {} x {} mel into latents {dims:?}, the UNet expects {shape:?}",
                mel.frames, mel.bins
            )));
        }
        g.output(dist.mean)?;
        g.output(dist.logvar)?;
        let mut exe = g.build()?;
        exe.set_max_dispatches_per_submit(self.dispatches_per_submit());
        if !exe.run_unless_async(cancel).await? {
            return Err(Error::Cancelled);
        }
        let mean = exe.read_async(dist.mean).await?;
        let std = latent_std(&exe.read_async(dist.logvar).await?);
        check_finite("the VAE encoder", &mean)?;
        check_finite("the VAE encoder", &std)?;
        let eps = noise::standard_normal(seed.wrapping_add(2), mean.len());
        let scaling = self.vae_config.scaling_factor as f32;
        let mut z: Vec<f32> = mean
            .iter()
            .zip(&std)
            .zip(&eps)
            .map(|((&m, &s), &e)| (m + s * e) * scaling)
            .collect();
        if z.iter().any(|v| v.abs() > 100.0) {
            z.iter_mut().for_each(|v| *v = v.clamp(-10.0, 10.0));
        }
        Ok(z)
    }
}

/// Checks inpainting ranges against a clip of `duration` seconds: each inside the clip, not
/// empty or reversed, covering at least one mel frame, and none overlapping another.
fn check_ranges(ranges: &[(f64, f64)], duration: f64, seconds_per_frame: f64) -> Result<()> {
    if ranges.is_empty() {
        return Err(Error::Input(
            "inpainting needs at least one time range to regenerate".into(),
        ));
    }
    for &(start, end) in ranges {
        if !(start.is_finite() && end.is_finite()) {
            return Err(Error::Input(format!(
                "the range {start}-{end} s is not a pair of numbers"
            )));
        }
        if start >= end {
            return Err(Error::Input(format!(
                "the range {start}-{end} s is {}: its end must come after its start",
                if start == end { "empty" } else { "reversed" }
            )));
        }
        if start < 0.0 || end > duration {
            return Err(Error::Input(format!(
                "the range {start}-{end} s lies outside the clip (0-{duration:.3} s)"
            )));
        }
        let first = (start / seconds_per_frame).ceil();
        if first * seconds_per_frame >= end {
            return Err(Error::Input(format!(
                "the range {start}-{end} s holds no mel frame (one every {seconds_per_frame} s)"
            )));
        }
    }
    let mut sorted = ranges.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in sorted.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(Error::Input(format!(
                "the ranges {}-{} s and {}-{} s overlap",
                pair[0].0, pair[0].1, pair[1].0, pair[1].1
            )));
        }
    }
    Ok(())
}

/// Latents `[1, C, frames, width]` of the clip written into the first frames of a (possibly
/// longer) zero latent of `shape`.
fn place(latents: &[f32], from: [usize; 4], shape: [usize; 4]) -> Vec<f32> {
    if from == shape {
        return latents.to_vec();
    }
    let [_, channels, frames, width] = shape;
    let source_frames = from[2];
    let mut out = vec![0.0; channels * frames * width];
    for c in 0..channels {
        let src = &latents[c * source_frames * width..(c + 1) * source_frames * width];
        out[c * frames * width..][..source_frames * width].copy_from_slice(src);
    }
    out
}
