//! Variations of a clip: text-to-audio conditioned on the clip's CLAP *audio* embedding instead
//! of a prompt's text embedding, as the original AudioLDM's `text_to_audio(original_audio_file_path
//! = ...)` does (`audioldm/pipeline.py`, `embed_mode="audio"`). AudioLDM's UNet was trained on
//! CLAP audio embeddings, so the clip's embedding (from the CLAP model paired with the
//! checkpoint) steers it toward "more sounds like this one". With a prompt, the condition is the
//! normalised blend `normalize((1 - mix) * e_audio + mix * e_text)`, `e_text` being the prompt's embedding from
//! the pipeline's own text encoder (what text-to-audio conditions on). Guidance is against the
//! negative prompt's embedding (the empty prompt's by default), as in text-to-audio.
//!
//! # Randomness
//! The starting noise and DDIM's noise are text-to-audio's for `seed` (see [`super::noise`]); a
//! clip longer than CLAP's 10 s window is cropped at `RandomState(seed).randint(0, overflow + 1)`.

use std::sync::atomic::{AtomicBool, Ordering};

use super::ranking::ClapScorer;
use super::{Event, MAX_DURATION_S, Output, Pipeline, Request};
use crate::audio::Audio;
use crate::error::{Error, Result};

/// A variation of a clip. `request` gives the optional prompt to blend in (empty: none), the
/// negative prompt, steps, guidance, seed, eta and the duration (`None`: the clip's, at most
/// [`MAX_DURATION_S`]); its `init_latents` and `conditioning` must be `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct VariationRequest {
    pub request: Request,
    /// The clip at its own sample rate.
    pub source: Audio,
    /// The source's file name, for the settings recorded with the result.
    pub source_name: String,
    /// The prompt's weight in the blend, in [0, 1]; unused without a prompt.
    pub mix: f32,
}

/// What a variation made: the clip, and the source's CLAP audio embedding.
#[derive(Clone, Debug, Default)]
pub struct Variation {
    /// Its `text_embeds` rows are `[negative, condition]` (`[condition]` without guidance).
    pub output: Output,
    /// The source's L2-normalised CLAP audio embedding.
    pub clip_embedding: Vec<f32>,
}

impl VariationRequest {
    /// Whether a prompt is blended in.
    pub fn has_prompt(&self) -> bool {
        !self.request.prompt.trim().is_empty()
    }

    /// The duration the result has: the request's, else the clip's (at most [`MAX_DURATION_S`]).
    pub fn duration_s(&self) -> f64 {
        self.request
            .duration_s
            .unwrap_or_else(|| self.source.duration_s().min(MAX_DURATION_S))
    }

    /// The settings as JSON for the clip's metadata: text-to-audio's plus the mode, the mix and
    /// the source's name.
    pub fn describe(&self, model: &str, clap: &str) -> String {
        let mut settings = self.request.settings(model, self.duration_s());
        settings.remove("initial_latents");
        settings.insert("mode".into(), "variation".into());
        let conditioning = if self.has_prompt() {
            settings.insert("mix".into(), self.mix.into());
            "clip and prompt"
        } else {
            "clip"
        };
        settings.insert("conditioning".into(), conditioning.into());
        settings.insert("clap".into(), clap.into());
        settings.insert("source".into(), self.source_name.clone().into());
        serde_json::Value::Object(settings).to_string()
    }

    /// The checks that need no model: mix, request fields, and the clip
    /// ([`crate::audio::check_audible`]).
    pub fn check(&self) -> Result<()> {
        if !(self.mix.is_finite() && (0.0..=1.0).contains(&self.mix)) {
            return Err(Error::Input(format!(
                "the mix must be between 0 (the clip alone) and 1 (the prompt alone), got {}",
                self.mix
            )));
        }
        if self.request.init_latents.is_some() || self.request.conditioning.is_some() {
            return Err(Error::Input(
                "a variation starts from seeded noise and conditions on its clip: leave the \
                 initial latents and the conditioning unset"
                    .into(),
            ));
        }
        // The one rule for every input clip: finite, and not silent.
        self.source.check_audible(&self.source_name)?;
        Ok(())
    }
}

/// `normalize((1 - mix) * audio + mix * text)`, or `audio` without a text embedding.
pub fn blend(audio: &[f32], text: Option<&[f32]>, mix: f32) -> Vec<f32> {
    let mixed: Vec<f64> = match text {
        Some(text) => audio
            .iter()
            .zip(text)
            .map(|(&a, &t)| f64::from(1.0 - mix) * f64::from(a) + f64::from(mix) * f64::from(t))
            .collect(),
        None => audio.iter().map(|&a| f64::from(a)).collect(),
    };
    let norm = mixed.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    mixed.iter().map(|v| (v / norm) as f32).collect()
}

impl Pipeline {
    /// Makes a variation of `variation.source`, conditioned as the module documentation says,
    /// with `scorer`'s CLAP model (the one paired with this pipeline's checkpoint). Everything
    /// that can be checked without the GPU is checked first.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn vary(
        &self,
        variation: &VariationRequest,
        scorer: &ClapScorer,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event),
    ) -> Result<Variation> {
        pollster::block_on(self.vary_async(variation, scorer, cancel, on_event))
    }

    /// [`Self::vary`] without blocking.
    pub async fn vary_async(
        &self,
        variation: &VariationRequest,
        scorer: &ClapScorer,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event),
    ) -> Result<Variation> {
        variation.check()?;
        let request = &variation.request;
        self.check_request(request)?;
        let duration = variation.duration_s();
        self.lengths(duration)?;
        self.scheduler.timesteps(request.steps)?;
        let clip_embedding = scorer
            .embed_clips_async(std::slice::from_ref(&variation.source), request.seed)
            .await?
            .remove(0);
        let text = match variation.has_prompt() {
            true => Some(
                self.encode_text_async(&request.prompt, None, false)
                    .await?
                    .0,
            ),
            false => None,
        };
        if let Some(text) = &text
            && text.len() != clip_embedding.len()
        {
            return Err(Error::Input(format!(
                "the CLAP model {} embeds into {} dimensions, this model's text encoder into {}: \
                 it is not this model's companion",
                scorer.dir().display(),
                clip_embedding.len(),
                text.len()
            )));
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let conditioned = Request {
            duration_s: Some(duration),
            conditioning: Some(blend(&clip_embedding, text.as_deref(), variation.mix)),
            ..request.clone()
        };
        let output = self.generate_async(&conditioned, cancel, on_event).await?;
        Ok(Variation {
            output,
            clip_embedding,
        })
    }
}
