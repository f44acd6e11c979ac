//! transformers' `ClapModel`: CLAP's text and audio towers, which map prompts and clips into one
//! embedding space, with the feature extractor of its folder (`config.json`,
//! `preprocessor_config.json`, `model.safetensors`). AudioLDM's UNet was trained on the audio
//! embeddings of this space and is steered by the text ones; the cosine similarity of the two
//! ranks generated clips against their prompt (the original AudioLDM's `audioldm/ldm.py`,
//! `generate_sample`, with `n_candidate_gen_per_text`).

use std::path::Path;

use serde::Deserialize;

use crate::audio::Audio;
use crate::audio::clap_features::{ClapFeatureConfig, ClapFeatureExtractor};
use crate::audio::resample::resample;
use crate::checkpoint::Checkpoint;
use crate::engine::{Context, DType, Graph, Tensor};
use crate::error::{Error, Result};
use crate::model::clap_audio::{ClapAudioConfig, ClapAudioModel, Taps};
use crate::model::clap_text::{ClapTextConfig, ClapTextModelWithProjection};
use crate::model::load_config;
use crate::model::nn::Loader;
use crate::noise::Mt19937;

/// `config.json` of a `ClapModel`: both towers' configs (transformers copies the shared
/// `projection_dim` into each).
#[derive(Clone, Debug, Deserialize)]
pub struct ClapConfig {
    pub text_config: ClapTextConfig,
    pub audio_config: ClapAudioConfig,
}

/// Both towers and the front end of a `ClapModel` on the GPU.
pub struct ClapModel {
    pub text: ClapTextModelWithProjection,
    pub audio: ClapAudioModel,
    pub front_end: ClapFeatureExtractor,
}

impl ClapModel {
    /// Loads a `ClapModel` folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        pollster::block_on(Self::load_async(loader, dir))
    }

    /// [`Self::load`] without blocking.
    pub async fn load_async(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let config: ClapConfig = load_config(dir)?;
        let (text_width, audio_width) = (
            config.text_config.projection_dim,
            config.audio_config.projection_dim,
        );
        if text_width != audio_width {
            return Err(Error::Config {
                path,
                message: format!(
                    "the text tower projects to {text_width} and the audio tower to \
                     {audio_width}: a CLAP model's towers share one embedding space"
                ),
            });
        }
        let front_end = ClapFeatureExtractor::new(ClapFeatureConfig::from_file(
            &dir.join("preprocessor_config.json"),
        )?)?;
        let ckpt = Checkpoint::open_dir(dir)?;
        let text =
            ClapTextModelWithProjection::from_checkpoint(loader, config.text_config, &ckpt).await?;
        let frames = front_end.config().frames();
        let audio =
            ClapAudioModel::from_checkpoint(loader, config.audio_config, &ckpt, frames).await?;
        Ok(Self {
            text,
            audio,
            front_end,
        })
    }

    /// The width of the shared embedding space.
    pub fn embedding_width(&self) -> usize {
        self.audio.config.projection_dim
    }

    /// The L2-normalised audio embeddings of `clips` (any rate; resampled to the front end's),
    /// one row each. Clips longer than the front end's window are cropped at offsets drawn in
    /// order from one `RandomState(seed)` stream, as one extractor call draws them in Python.
    /// Every clip's features are made (and checked) before the GPU runs; the clips then go
    /// through one recorded graph one at a time, so memory does not grow with their number.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn embed_audio(&self, ctx: &Context, clips: &[Audio], seed: u32) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.embed_audio_async(ctx, clips, seed))
    }

    /// [`Self::embed_audio`] without blocking.
    pub async fn embed_audio_async(
        &self,
        ctx: &Context,
        clips: &[Audio],
        seed: u32,
    ) -> Result<Vec<Vec<f32>>> {
        if clips.is_empty() {
            return Err(Error::Input("CLAP: no clips to embed".into()));
        }
        let rate = self.front_end.config().sampling_rate;
        let mut rng = Mt19937::new(seed);
        let mut features = Vec::with_capacity(clips.len());
        for clip in clips {
            let samples = resample(&clip.samples, clip.sample_rate, rate)?;
            features.push(self.front_end.features_drawing(&samples, &mut rng)?);
        }
        let (frames, bands) = (features[0].frames, features[0].bands);
        let input = Tensor::empty(ctx, [1, frames, bands], DType::F32)?;
        let mut g = Graph::new(ctx);
        let x = g.input(&input);
        let embeds = self.audio.forward(&mut g, x, &mut Taps::default())?;
        let embeds = g.l2_normalize(embeds, 1e-12)?;
        g.output(embeds)?;
        let mut exe = g.build()?;
        let mut rows = Vec::with_capacity(clips.len());
        for clip in &features {
            input.write_f32(ctx, &clip.data)?;
            exe.run_async().await?;
            rows.push(exe.tensor(embeds)?.to_vec_f32_async(ctx).await?);
        }
        Ok(rows)
    }

    /// The L2-normalised text embeddings of token sequences (the CLAP tokenizer's ids), one row
    /// each.
    pub async fn embed_ids_async(&self, ctx: &Context, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let flat = self
            .text
            .embed_ids_async(ctx, ids)
            .await?
            .to_vec_f32_async(ctx)
            .await?;
        Ok(flat
            .chunks_exact(self.embedding_width())
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// The cosine similarity of two embeddings (`F.cosine_similarity`, eps 1e-8), in f64.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    (dot / (norm(a) * norm(b)).max(1e-8)) as f32
}
