//! transformers `SpeechT5HifiGan` (`models/speecht5/modeling_speecht5.py`): the HiFi-GAN vocoder
//! that turns AudioLDM's log-mel spectrogram into a 16 kHz waveform.
//!
//! ```text
//! mel [B, T, n_mels] -> (normalize_before: (x - mean) / scale) -> transpose -> conv_pre (k 7)
//! per stage i: leaky_relu(0.1) -> upsampler.i (ConvTranspose1d, stride u_i)
//!              -> mean over the stage's resblocks (kernels 3, 7, 11)
//! leaky_relu(0.01, torch's default slope!) -> conv_post (k 7) -> tanh -> [B, L]
//! ```
//!
//! Every leaky ReLU is fused into the conv that reads its output (the engine applies it to the
//! conv's inputs as they are loaded), each resblock's skip is added in its second conv's
//! epilogue, and tanh is conv_post's epilogue.

use std::path::Path;

use serde::Deserialize;

use crate::checkpoint::{Checkpoint, Weights};
use crate::engine::{Activation, DType, Graph, Tensor, Var};
use crate::error::{Error, Result};

use super::nn::{Conv1d, ConvTranspose1d, Loader};
use super::{ConfigCheck, limits, load_config};

/// `nn.functional.leaky_relu`'s default slope, used before `conv_post`.
const FINAL_LEAKY_RELU_SLOPE: f32 = 0.01;

/// The vocoder's `config.json`. As for the VAE, the keys that fix the tensors' shapes are
/// required (transformers' defaults for them describe SpeechT5's 80-bin vocoder, not AudioLDM's);
/// the others take transformers' defaults (note `normalize_before` defaults to true there, while
/// AudioLDM's configs say false). Unknown keys are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct SpeechT5HifiGanConfig {
    pub model_in_dim: usize,
    pub upsample_initial_channel: usize,
    pub upsample_rates: Vec<usize>,
    pub upsample_kernel_sizes: Vec<usize>,
    pub resblock_kernel_sizes: Vec<usize>,
    pub resblock_dilation_sizes: Vec<Vec<usize>>,
    #[serde(default = "default_sampling_rate")]
    pub sampling_rate: u32,
    #[serde(default = "default_leaky_relu_slope")]
    pub leaky_relu_slope: f32,
    #[serde(default = "yes")]
    pub normalize_before: bool,
}

fn default_sampling_rate() -> u32 {
    16000
}
fn default_leaky_relu_slope() -> f32 {
    0.1
}
fn yes() -> bool {
    true
}

impl SpeechT5HifiGanConfig {
    /// Rejects what this implementation does not build and numbers out of range; `path` names
    /// the config file in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let fail = |message: String| {
            Err(Error::Config {
                path: path.to_path_buf(),
                message,
            })
        };
        let check = ConfigCheck { path };
        let stages = self.upsample_rates.len();
        // First: `upsample_initial_channel >> stages` below must not shift by 64 or more.
        check.range("the number of upsample_rates", stages, 1..=limits::LEVELS)?;
        if self.upsample_kernel_sizes.len() != stages {
            return fail(format!(
                "{stages} upsample_rates and {} upsample_kernel_sizes (need the same, at least one)",
                self.upsample_kernel_sizes.len()
            ));
        }
        if self.resblock_kernel_sizes.is_empty()
            || self.resblock_kernel_sizes.len() != self.resblock_dilation_sizes.len()
        {
            return fail(format!(
                "{} resblock_kernel_sizes and {} resblock_dilation_sizes (need the same, at least one)",
                self.resblock_kernel_sizes.len(),
                self.resblock_dilation_sizes.len()
            ));
        }
        if self
            .resblock_dilation_sizes
            .iter()
            .any(|d| d.is_empty() || d.contains(&0))
            || self.resblock_kernel_sizes.contains(&0)
        {
            return fail("resblock kernels and dilations must be positive".into());
        }
        if self
            .upsample_rates
            .iter()
            .zip(&self.upsample_kernel_sizes)
            .any(|(&u, &k)| u == 0 || k < u)
        {
            return fail(format!(
                "upsample_kernel_sizes {:?} must be at least upsample_rates {:?} (and rates positive)",
                self.upsample_kernel_sizes, self.upsample_rates
            ));
        }
        if self.model_in_dim == 0 || self.upsample_initial_channel >> stages == 0 {
            return fail(format!(
                "upsample_initial_channel {} cannot be halved {stages} times",
                self.upsample_initial_channel
            ));
        }
        check.all("upsample_rates", &self.upsample_rates, 1..=64)?;
        check.all(
            "upsample_kernel_sizes",
            &self.upsample_kernel_sizes,
            1..=limits::KERNEL,
        )?;
        check.all(
            "resblock_kernel_sizes",
            &self.resblock_kernel_sizes,
            1..=limits::KERNEL,
        )?;
        check.range(
            "the number of resblock_kernel_sizes",
            self.resblock_kernel_sizes.len(),
            1..=limits::LEVELS,
        )?;
        for dilations in &self.resblock_dilation_sizes {
            check.all("resblock_dilation_sizes", dilations, 1..=limits::KERNEL)?;
            check.range(
                "the number of resblock dilations",
                dilations.len(),
                1..=limits::LEVELS,
            )?;
        }
        check.range("model_in_dim", self.model_in_dim, 1..=1024)?;
        check.range(
            "upsample_initial_channel",
            self.upsample_initial_channel,
            1..=limits::CHANNELS,
        )?;
        // Samples per mel frame: 160 in every real checkpoint.
        let hop: usize = self.upsample_rates.iter().product();
        check.range("the product of upsample_rates", hop, 1..=4096)?;
        check.range(
            "sampling_rate",
            self.sampling_rate as usize,
            1_000..=192_000,
        )?;
        if !self.leaky_relu_slope.is_finite() {
            return fail(format!(
                "leaky_relu_slope {} is not a number",
                self.leaky_relu_slope
            ));
        }
        Ok(())
    }

    /// Channels after up-sampling stage `i`.
    fn channels(&self, i: usize) -> usize {
        self.upsample_initial_channel >> (i + 1)
    }

    /// Output samples for `frames` mel frames (`160 T + 32` for AudioLDM's vocoder).
    pub fn output_len(&self, frames: usize) -> usize {
        self.upsample_rates
            .iter()
            .zip(&self.upsample_kernel_sizes)
            .fold(frames, |l, (&u, &k)| {
                l.saturating_sub(1) * u + k - 2 * ((k - u) / 2)
            })
    }
}

/// transformers `HifiGanResidualBlock`: for each dilation `d`,
/// `x = x + conv2(lrelu(conv1_d(lrelu(x))))`.
pub struct HifiGanResidualBlock {
    pub convs1: Vec<Conv1d>,
    pub convs2: Vec<Conv1d>,
    pub leaky_relu_slope: f32,
}

impl HifiGanResidualBlock {
    pub async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        channels: usize,
        kernel: usize,
        dilations: &[usize],
        leaky_relu_slope: f32,
    ) -> Result<Self> {
        let padding = |d: usize| (kernel * d - d) / 2;
        let mut convs1 = Vec::with_capacity(dilations.len());
        let mut convs2 = Vec::with_capacity(dilations.len());
        for (i, &d) in dilations.iter().enumerate() {
            let vb1 = vb.pp("convs1").pp(i);
            convs1.push(Conv1d::load(l, &vb1, channels, channels, kernel, d, padding(d)).await?);
        }
        for i in 0..dilations.len() {
            let vb2 = vb.pp("convs2").pp(i);
            convs2.push(Conv1d::load(l, &vb2, channels, channels, kernel, 1, padding(1)).await?);
        }
        Ok(Self {
            convs1,
            convs2,
            leaky_relu_slope,
        })
    }

    pub fn forward(&self, g: &mut Graph, mut x: Var) -> Result<Var> {
        let slope = Some(self.leaky_relu_slope);
        for (conv1, conv2) in self.convs1.iter().zip(&self.convs2) {
            let h = conv1.forward(g, x, slope, Activation::None, None)?;
            x = conv2.forward(g, h, slope, Activation::None, Some(x))?;
        }
        Ok(x)
    }
}

/// transformers `SpeechT5HifiGan` with weight norm removed (plain weights, as diffusers ships).
pub struct SpeechT5HifiGan {
    pub config: SpeechT5HifiGanConfig,
    pub conv_pre: Conv1d,
    pub upsampler: Vec<ConvTranspose1d>,
    /// `resblocks[i * K + j]`: stage `i`, kernel `j` of K.
    pub resblocks: Vec<HifiGanResidualBlock>,
    pub conv_post: Conv1d,
    /// The `mean` buffer `[n_mels]`, and `1 / scale`, when `normalize_before`.
    pub normalize: Option<(Tensor, Tensor)>,
}

impl SpeechT5HifiGan {
    /// Reads `dir/config.json` and the weights (`model.safetensors` or `.bin`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        pollster::block_on(Self::load_async(loader, dir))
    }

    /// [`Self::load`] without blocking (a browser reads each tensor when it is needed).
    pub async fn load_async(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        let config: SpeechT5HifiGanConfig = load_config(dir)?;
        config.validate(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open_dir(dir)?;
        let vb = ckpt.root();
        let l = loader;
        let c0 = config.upsample_initial_channel;
        let conv_pre =
            Conv1d::load(l, &vb.pp("conv_pre"), config.model_in_dim, c0, 7, 1, 3).await?;
        let mut upsampler = Vec::new();
        let mut resblocks = Vec::new();
        for (i, (&u, &k)) in config
            .upsample_rates
            .iter()
            .zip(&config.upsample_kernel_sizes)
            .enumerate()
        {
            let (cin, cout) = (c0 >> i, config.channels(i));
            upsampler.push(
                ConvTranspose1d::load(l, &vb.pp("upsampler").pp(i), cin, cout, k, u, (k - u) / 2)
                    .await?,
            );
            for (kernel, dilations) in config
                .resblock_kernel_sizes
                .iter()
                .zip(&config.resblock_dilation_sizes)
            {
                resblocks.push(
                    HifiGanResidualBlock::load(
                        l,
                        &vb.pp("resblocks").pp(resblocks.len()),
                        cout,
                        *kernel,
                        dilations,
                        config.leaky_relu_slope,
                    )
                    .await?,
                );
            }
        }
        let last = config.channels(config.upsample_rates.len() - 1);
        let conv_post = Conv1d::load(l, &vb.pp("conv_post"), last, 1, 7, 1, 3).await?;
        let normalize = if config.normalize_before {
            let n = config.model_in_dim;
            let mean = l.vector(&vb, "mean", &[n]).await?;
            let inv_scale: Vec<f32> = vb
                .f32("scale", &[n])
                .await?
                .iter()
                .map(|s| 1.0 / s)
                .collect();
            Some((mean, Tensor::from_f32(l.ctx, [n], DType::F32, &inv_scale)?))
        } else {
            None
        };
        Ok(Self {
            config,
            conv_pre,
            upsampler,
            resblocks,
            conv_post,
            normalize,
        })
    }

    /// `vocoder(mel)`: `mel [B, T, n_mels]` (natural-log mel) to the waveform `[B, L]`,
    /// `L = `[`SpeechT5HifiGanConfig::output_len`]`(T)`.
    pub fn forward(&self, g: &mut Graph, mel: Var) -> Result<Var> {
        let n_mels = self.config.model_in_dim;
        let &[b, t, n] = g.dims(mel) else {
            return Err(Error::Input(format!(
                "the vocoder expects a mel [B, T, {n_mels}], got {:?}",
                g.dims(mel)
            )));
        };
        if t == 0 || b == 0 {
            return Err(Error::Input(format!(
                "the vocoder got an empty mel of shape {:?}",
                g.dims(mel)
            )));
        }
        if n != n_mels {
            return Err(Error::Input(format!(
                "the vocoder expects {n_mels} mel bins, got a mel of shape {:?}",
                g.dims(mel)
            )));
        }
        let mut x = mel;
        if let Some((mean, inv_scale)) = &self.normalize {
            let (mean, inv_scale) = (g.weight(mean), g.weight(inv_scale));
            x = g.sub(x, mean)?;
            x = g.mul(x, inv_scale)?;
        }
        let x = g.permute(x, &[0, 2, 1])?;
        let mut x = self.conv_pre.forward(g, x, None, Activation::None, None)?;
        let kernels = self.config.resblock_kernel_sizes.len();
        for (i, up) in self.upsampler.iter().enumerate() {
            x = up.forward(g, x, Some(self.config.leaky_relu_slope))?;
            let blocks = &self.resblocks[i * kernels..(i + 1) * kernels];
            // (r_0 + ... + r_{K-1}) / K, the last add and the division in one op.
            let mut sum = blocks[0].forward(g, x)?;
            for (j, block) in blocks.iter().enumerate().skip(1) {
                let r = block.forward(g, x)?;
                sum = if j + 1 == kernels {
                    let inv = 1.0 / kernels as f32;
                    g.axpby(sum, r, inv, inv)?
                } else {
                    g.add(sum, r)?
                };
            }
            x = sum;
        }
        let y =
            self.conv_post
                .forward(g, x, Some(FINAL_LEAKY_RELU_SLOPE), Activation::Tanh, None)?;
        let len = g.dims(y)[2];
        debug_assert_eq!(len, self.config.output_len(t));
        Ok(g.reshape(y, [b, len])?)
    }
}
