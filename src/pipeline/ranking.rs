//! Ranked candidates, as the original AudioLDM keeps the best of `n_candidate_gen_per_text`
//! clips (`audioldm/ldm.py` `generate_sample`): every candidate is scored by the cosine
//! similarity of its CLAP audio embedding and the prompt's CLAP text embedding, from one CLAP
//! model.
//!
//! # Seeds
//! Candidate `k` (0-based) is the text-to-audio run of the request with seed `seed + k` (wrapping
//! modulo 2^32), so candidate 0 is the clip a plain run makes. The candidates run one after
//! another on the one recorded step graph: memory does not grow with their number, and each is
//! exactly the clip its seed makes alone. Clips longer than CLAP's 10 s window are cropped at
//! offsets drawn in candidate order from `RandomState(seed)` (see [`ClapModel::embed_audio`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::{Event, Output, Pipeline, Request};
use crate::audio::Audio;
use crate::engine::Context;
use crate::error::{Error, Result};
use crate::model::clap::{ClapModel, cosine_similarity};
use crate::model::nn::{Loader, Precision};
use crate::model::tokenizer::TextTokenizer;

/// The most candidates one run makes: each is a whole generation, so this bounds a run's time
/// (memory does not grow with the count).
pub const MAX_CANDIDATES: usize = 16;

/// A CLAP model on the pipeline's GPU, with the tokenizer of its folder (or the pipeline's, which
/// the CLAP models that pair with AudioLDM share).
pub struct ClapScorer {
    ctx: Context,
    dir: PathBuf,
    model: ClapModel,
    tokenizer: TextTokenizer,
}

/// The scores of clips against a prompt.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    /// The prompt's L2-normalised CLAP text embedding `[D]`.
    pub text_embed: Vec<f32>,
    /// Each clip's L2-normalised CLAP audio embedding `[D]`, in the clips' order.
    pub audio_embeds: Vec<Vec<f32>>,
    /// Each clip's cosine similarity with the prompt, in the clips' order.
    pub scores: Vec<f32>,
}

impl Scores {
    /// The clips' indices from the best score to the worst (ties keep the clips' order).
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.scores.len()).collect();
        order.sort_by(|&a, &b| self.scores[b].total_cmp(&self.scores[a]));
        order
    }

    /// The index of the best-scoring clip.
    pub fn best(&self) -> usize {
        self.ranking().first().copied().unwrap_or(0)
    }
}

/// What a ranked run made: every candidate in seed order, and their scores.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    /// Candidate `k` is the request's run with seed `seeds[k]`.
    pub outputs: Vec<Output>,
    pub seeds: Vec<u32>,
    pub scores: Scores,
}

impl Candidates {
    /// The best candidate.
    pub fn best(&self) -> &Output {
        &self.outputs[self.scores.best()]
    }
}

impl ClapScorer {
    /// Loads the CLAP model in `dir`; its tokenizer is the folder's own (`tokenizer.json`, or
    /// `vocab.json` + `merges.txt`), else the one in `fallback_tokenizer`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(
        ctx: &Context,
        dir: &Path,
        precision: Precision,
        fallback_tokenizer: &Path,
    ) -> Result<Self> {
        pollster::block_on(Self::load_async(ctx, dir, precision, fallback_tokenizer))
    }

    /// [`Self::load`] without blocking.
    pub async fn load_async(
        ctx: &Context,
        dir: &Path,
        precision: Precision,
        fallback_tokenizer: &Path,
    ) -> Result<Self> {
        let own = ["tokenizer.json", "vocab.json"]
            .iter()
            .any(|f| crate::untrusted::is_file(&dir.join(f)));
        let tokenizer = TextTokenizer::from_dir(if own { dir } else { fallback_tokenizer })?;
        let ctx = &precision.arithmetic_context(ctx);
        let model = ClapModel::load_async(&Loader { ctx, precision }, dir).await?;
        tracing::info!(clap = %dir.display(), "CLAP loaded");
        Ok(Self {
            ctx: ctx.clone(),
            dir: dir.to_path_buf(),
            model,
            tokenizer,
        })
    }

    /// The folder the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The width of CLAP's embedding space.
    pub fn embedding_width(&self) -> usize {
        self.model.embedding_width()
    }

    /// The L2-normalised CLAP text embedding of `prompt`.
    pub async fn embed_prompt_async(&self, prompt: &str) -> Result<Vec<f32>> {
        let text = &self.model.text;
        let max = text.prompt_max_len(&self.tokenizer);
        text.embed_text_async(&self.ctx, &self.tokenizer, prompt, max)
            .await
    }

    /// The L2-normalised CLAP audio embeddings of `clips` (see [`ClapModel::embed_audio`]).
    pub async fn embed_clips_async(&self, clips: &[Audio], seed: u32) -> Result<Vec<Vec<f32>>> {
        self.model.embed_audio_async(&self.ctx, clips, seed).await
    }

    /// Scores `clips` against `prompt`. The clips are input: each must meet the rule every input
    /// clip meets ([`crate::audio::check_audible`]), checked before the GPU runs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn score(&self, prompt: &str, clips: &[Audio], seed: u32) -> Result<Scores> {
        pollster::block_on(self.score_async(prompt, clips, seed))
    }

    /// [`Self::score`] without blocking.
    pub async fn score_async(&self, prompt: &str, clips: &[Audio], seed: u32) -> Result<Scores> {
        for (k, clip) in clips.iter().enumerate() {
            clip.check_audible(&format!("clip {} of {}", k + 1, clips.len()))?;
        }
        self.score_made(prompt, clips, seed).await
    }

    /// Scores clips the pipeline made (a ranked run's candidates): a quiet candidate is scored,
    /// not refused.
    async fn score_made(&self, prompt: &str, clips: &[Audio], seed: u32) -> Result<Scores> {
        let audio_embeds = self.embed_clips_async(clips, seed).await?;
        let text_embed = self.embed_prompt_async(prompt).await?;
        let scores = audio_embeds
            .iter()
            .map(|a| cosine_similarity(a, &text_embed))
            .collect();
        Ok(Scores {
            text_embed,
            audio_embeds,
            scores,
        })
    }
}

/// A candidate's settings for its clip's metadata: those of `request` (its own, with its seed; see
/// [`Request::settings`]) plus its number `k` (0-based, in seed order), the run's count `n`, its
/// score and the CLAP model that gave it.
pub fn describe_candidate(
    request: &Request,
    model: &str,
    duration_s: f64,
    (k, n): (usize, usize),
    score: f32,
    clap: &str,
) -> String {
    let mut settings = request.settings(model, duration_s);
    settings.insert("candidate".into(), k.into());
    settings.insert("candidates".into(), n.into());
    settings.insert("clap_score".into(), score.into());
    settings.insert("clap".into(), clap.into());
    serde_json::Value::Object(settings).to_string()
}

/// Checks a candidate count (and that seeds can make them differ) before any work starts.
pub fn check_candidates(n: usize, init_latents: bool) -> Result<()> {
    if init_latents && n > 1 {
        return Err(Error::Input(
            "candidates differ by their seeds' noise; with initial latents given, every \
             candidate would be the same clip"
                .into(),
        ));
    }
    if n == 0 || n > MAX_CANDIDATES {
        return Err(Error::Input(format!(
            "the number of candidates must be between 1 and {MAX_CANDIDATES}, got {n} (each is a \
             whole generation; they run one after another, so the GPU memory a run needs does \
             not grow with their number)"
        )));
    }
    Ok(())
}

impl Pipeline {
    /// Generates `n` candidates of `request` (seeds `seed`, `seed + 1`, ...) and scores them with
    /// `scorer`. Reports [`Event::Candidate`] before each, then its steps; stops with
    /// [`Error::Cancelled`] between steps.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate_candidates(
        &self,
        request: &Request,
        n: usize,
        scorer: &ClapScorer,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event),
    ) -> Result<Candidates> {
        pollster::block_on(self.generate_candidates_async(request, n, scorer, cancel, on_event))
    }

    /// [`Self::generate_candidates`] without blocking.
    pub async fn generate_candidates_async(
        &self,
        request: &Request,
        n: usize,
        scorer: &ClapScorer,
        cancel: &AtomicBool,
        mut on_event: impl FnMut(Event),
    ) -> Result<Candidates> {
        check_candidates(n, request.init_latents.is_some())?;
        let seeds: Vec<u32> = (0..n as u32)
            .map(|k| request.seed.wrapping_add(k))
            .collect();
        let mut outputs = Vec::with_capacity(n);
        for (k, &seed) in seeds.iter().enumerate() {
            on_event(Event::Candidate { k: k + 1, n });
            let candidate = Request {
                seed,
                ..request.clone()
            };
            outputs.push(
                self.generate_async(&candidate, cancel, &mut on_event)
                    .await?,
            );
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        on_event(Event::Scoring);
        let clips: Vec<Audio> = outputs.iter().map(|o| o.audio.clone()).collect();
        let scores = scorer
            .score_made(&request.prompt, &clips, request.seed)
            .await?;
        Ok(Candidates {
            outputs,
            seeds,
            scores,
        })
    }
}
