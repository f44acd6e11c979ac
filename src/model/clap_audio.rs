//! The audio branch of CLAP, transformers' `ClapAudioModel` with its projection (HTSAT, a Swin
//! transformer over a log-mel image; REFERENCE.md section 7), for `enable_fusion = False`.
//!
//! ```text
//! x [B, 1, T, 64]  (clap_features: T = 1001 frames of 64 mel bins)
//! x = bn0(x)                    BatchNorm over mel bins, running statistics (eps 1e-5)
//! x = bicubic(x, T -> 1024)     along time, align_corners, A = -0.75, taps clamped
//! img = fold(x)                 [B, 256, 256]: img[k*64 + f, w] = x[k*256 + w, f]
//! t = LayerNorm(patch 4x4 conv(img))                     [B, 64*64, C0] (eps 1e-5)
//! per stage i (grid H_i x W_i, C_i = C0 * 2^i), depth_i Swin blocks:
//!     t = t + proj(window_attention(roll(LN(t), -s)))    rolled back by +s; s = 0 or ws/2
//!     t = t + fc2(gelu(fc1(LN(t))))
//!   then, but in the last stage, patch merging: 2x2 neighbours concatenated (4C),
//!   LayerNorm(4C), Linear(4C -> 2C) without bias
//! pooled = mean over tokens of LayerNorm(t)
//! audio_embeds = linear2(relu(linear1(pooled)))          (normalised by the caller)
//! ```
//!
//! Window attention adds the relative position bias (`table[(dh + ws - 1)(2 ws - 1) + dw + ws -
//! 1, head]`) and, in shifted blocks, -100 between tokens of different regions of the rolled
//! image. A stage whose grid is no larger than the window runs one unshifted window of the whole
//! grid, as transformers does.
//!
//! Built up stage by stage against the goldens of `scripts/reference/make_clap_reference.py`;
//! what this file records so far ends at the patch embeddings.

use serde::Deserialize;

use crate::checkpoint::Weights;
use crate::error::Result;
use crate::gpu::{Activation, Graph, Tensor, Var};
use crate::model::nn::{LayerNorm, Loader};

/// The mel image's side: the bicubic resize makes `SPEC_TIME` frames, folded into
/// `spec_size / num_mel_bins` rows of `spec_size` columns each.
const SPEC_TIME_FACTOR: usize = 4;

/// transformers' `ClapAudioConfig` fields the port reads (`audio_config` of a `ClapModel`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClapAudioConfig {
    pub window_size: usize,
    pub num_mel_bins: usize,
    pub spec_size: usize,
    pub hidden_act: String,
    pub patch_size: usize,
    pub patch_stride: Vec<usize>,
    pub patch_embeds_hidden_size: usize,
    pub projection_dim: usize,
    pub depths: Vec<usize>,
    pub num_attention_heads: Vec<usize>,
    pub enable_fusion: bool,
    pub hidden_size: usize,
    pub projection_hidden_act: String,
    pub layer_norm_eps: f64,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub enable_patch_layer_norm: bool,
    pub flatten_patch_embeds: bool,
    pub patch_embed_input_channels: usize,
}

impl Default for ClapAudioConfig {
    /// transformers' `ClapAudioConfig()`: HTSAT-tiny.
    fn default() -> Self {
        Self {
            window_size: 8,
            num_mel_bins: 64,
            spec_size: 256,
            hidden_act: "gelu".into(),
            patch_size: 4,
            patch_stride: vec![4, 4],
            patch_embeds_hidden_size: 96,
            projection_dim: 512,
            depths: vec![2, 2, 6, 2],
            num_attention_heads: vec![4, 8, 16, 32],
            enable_fusion: false,
            hidden_size: 768,
            projection_hidden_act: "relu".into(),
            layer_norm_eps: 1e-5,
            mlp_ratio: 4.0,
            qkv_bias: true,
            enable_patch_layer_norm: true,
            flatten_patch_embeds: true,
            patch_embed_input_channels: 1,
        }
    }
}

/// The weights per mel frame of torch's bicubic resize of `from` frames to `to` frames
/// (`align_corners=True`, `A = -0.75`, taps clamped to the ends), as a dense `[to, from]`
/// matrix: the resize is then one matrix product, exact up to the order of the sums.
pub fn bicubic_resize_matrix(from: usize, to: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let cubic_near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let cubic_far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    // torch computes the source scale in f32.
    let scale = if to > 1 {
        f64::from((from - 1) as f32 / (to - 1) as f32)
    } else {
        0.0
    };
    let mut matrix = vec![0.0f64; to * from];
    for i in 0..to {
        let source = f64::from((scale * i as f64) as f32);
        let floor = source.floor();
        let t = source - floor;
        let weights = [
            cubic_far(t + 1.0),
            cubic_near(t),
            cubic_near(1.0 - t),
            cubic_far(2.0 - t),
        ];
        for (k, w) in weights.into_iter().enumerate() {
            let tap = (floor as isize + k as isize - 1).clamp(0, from as isize - 1) as usize;
            matrix[i * from + tap] += w;
        }
    }
    matrix.into_iter().map(|w| w as f32).collect()
}

/// What the front of the tower records: from the log-mel features to the patch embeddings.
pub struct ClapAudioFront {
    config: ClapAudioConfig,
    /// bn0 as `x * scale + shift` per mel bin (running statistics folded at load).
    bn_scale: Tensor,
    bn_shift: Tensor,
    /// The patch convolution as a `[C0, patch * patch]` matrix over flattened patches.
    patch_weight: Tensor,
    patch_bias: Tensor,
    patch_norm: LayerNorm,
    /// [`bicubic_resize_matrix`] from the front end's frames to `spec_size * 4`, f32.
    resize: Tensor,
    frames: usize,
}

impl ClapAudioFront {
    /// Loads bn0 and the patch embedding from `audio_model.audio_encoder`, for features of
    /// `frames` mel frames (1001 for the 10 s window of the front end).
    pub async fn load(
        l: &Loader<'_>,
        encoder: &Weights<'_>,
        config: &ClapAudioConfig,
        frames: usize,
    ) -> Result<Self> {
        let bins = config.num_mel_bins;
        let bn = encoder.pp("batch_norm");
        let (gamma, beta, mean, var) = (
            bn.f32("weight", &[bins]).await?,
            bn.f32("bias", &[bins]).await?,
            bn.f32("running_mean", &[bins]).await?,
            bn.f32("running_var", &[bins]).await?,
        );
        // BatchNorm2d's eval-mode formula, folded: (x - mean) / sqrt(var + eps) * w + b.
        let eps = 1e-5f64;
        let scale: Vec<f32> = (0..bins)
            .map(|i| (f64::from(gamma[i]) / (f64::from(var[i]) + eps).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..bins)
            .map(|i| (f64::from(beta[i]) - f64::from(mean[i]) * f64::from(scale[i])) as f32)
            .collect();
        let c0 = config.patch_embeds_hidden_size;
        let p = config.patch_size;
        let time = config.spec_size * SPEC_TIME_FACTOR;
        let patch = encoder.pp("patch_embed");
        let proj = patch.pp("proj");
        let weight = proj
            .f32("weight", &[c0, config.patch_embed_input_channels, p, p])
            .await?;
        let f32s = |shape: &[usize], data: &[f32]| -> Result<Tensor> {
            Ok(Tensor::from_f32(
                l.ctx,
                shape,
                crate::gpu::DType::F32,
                data,
            )?)
        };
        Ok(Self {
            bn_scale: f32s(&[bins], &scale)?,
            bn_shift: f32s(&[bins], &shift)?,
            patch_weight: l.weight(&[c0, p * p], &weight)?,
            patch_bias: l.vector(&proj, "bias", &[c0]).await?,
            // nn.LayerNorm's default eps, not the config's.
            patch_norm: LayerNorm::load(l, &patch.pp("norm"), c0, 1e-5).await?,
            resize: f32s(&[time, frames], &bicubic_resize_matrix(frames, time))?,
            frames,
            config: config.clone(),
        })
    }

    /// Records bn0, the mel image and the patch embeddings of `features` (`[B, frames, bins]`),
    /// returning `(mel_image [B, spec, spec], patch_embeds [B, grid * grid, C0])`.
    pub fn forward(&self, g: &mut Graph, features: Var) -> Result<(Var, Var)> {
        let c = &self.config;
        let dims = g.dims(features).to_vec();
        let (batch, bins) = (dims[0], c.num_mel_bins);
        if dims != [batch, self.frames, bins] {
            return Err(crate::Error::Input(format!(
                "CLAP audio tower: features must be [batch, {}, {bins}], got {dims:?}",
                self.frames
            )));
        }
        let frames = self.frames;
        let spec = c.spec_size;
        let chunks = spec / bins;
        let resize = g.weight(&self.resize);
        let scale = g.weight(&self.bn_scale);
        let shift = g.weight(&self.bn_shift);
        let x = g.mul(features, scale)?;
        let x = g.add(x, shift)?;
        // The resize along time as (x^T R^T)^T: rows of [B * bins, T] times R [time, T]^T.
        let xt = g.permute(x, &[0, 2, 1])?;
        let xt = g.reshape(xt, [batch * bins, frames])?;
        let resized = g.linear(xt, resize, None, Activation::None, None)?;
        // [B, bins, chunks, spec] -> [B, chunks, bins, spec]: row k * bins + f, column w.
        let resized = g.reshape(resized, [batch, bins, chunks, spec])?;
        let image = g.permute(resized, &[0, 2, 1, 3])?;
        let image = g.reshape(image, [batch, spec, spec])?;
        // Patches of p x p, flattened row-major, in grid order: [B * grid * grid, p * p].
        let p = c.patch_size;
        let grid = spec / p;
        let patches = g.reshape(image, [batch, grid, p, grid, p])?;
        let patches = g.permute(patches, &[0, 1, 3, 2, 4])?;
        let patches = g.reshape(patches, [batch * grid * grid, p * p])?;
        let w = g.weight(&self.patch_weight);
        let b = g.weight(&self.patch_bias);
        let tokens = g.linear(patches, w, Some(b), Activation::None, None)?;
        let tokens = self.patch_norm.forward(g, tokens)?;
        let tokens = g.reshape(tokens, [batch, grid * grid, c.patch_embeds_hidden_size])?;
        Ok((image, tokens))
    }
}
