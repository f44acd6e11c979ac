//! diffusers `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`, `vae.py`), the VAE that
//! maps AudioLDM's latents to a log-mel spectrogram (decoder) and back (encoder).
//!
//! The structs mirror diffusers' modules and their checkpoint names: [`Encoder`] and [`Decoder`]
//! made of [`DownEncoderBlock2D`] / [`UpDecoderBlock2D`] (each a list of [`ResnetBlock2D`] and an
//! optional [`Downsample2D`] / [`Upsample2D`]) around a [`UNetMidBlock2D`] (resnet, [`Attention`],
//! resnet). Every norm is a GroupNorm with eps 1e-6; the attention has one head over all channels.
//!
//! Fusions (exact up to summation order): GroupNorm + SiLU in one kernel; a resnet's shortcut is
//! added in its second conv's epilogue; the attention's q, k and v are one GEMM that reads the
//! normalised NCHW input through strides (no transpose) and whose bias is fused; the down-sampler's
//! `F.pad(x, (0, 1, 0, 1))` is the conv's own asymmetric padding; `quant_conv` is split at load into
//! its mean and log-variance halves, so `DiagonalGaussianDistribution`'s `chunk` costs nothing.

use std::path::Path;

use serde::Deserialize;

use crate::checkpoint::{Checkpoint, Weights};
use crate::engine::ops::attention::{Attention as AttentionOp, HeadView};
use crate::engine::ops::conv::{Conv2dOptions, conv_weight};
use crate::engine::ops::matmul::{Gemm, MatView, MatmulKernel};
use crate::engine::{Activation, DType, Graph, Tensor, Var};
use crate::error::{Error, Result};

use super::nn::{Conv2d, GroupNorm, Linear, Loader};
use super::{ConfigCheck, limits, load_config};

/// diffusers' VAE norms all use this eps (`resnet_eps=1e-6`, `conv_norm_out` eps 1e-6).
const NORM_EPS: f32 = 1e-6;
/// `DiagonalGaussianDistribution` clamps the log-variance to this range.
pub const LOGVAR_MIN: f32 = -30.0;
pub const LOGVAR_MAX: f32 = 20.0;

/// `sample_size` is an int or an `[h, w]` pair in diffusers configs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect([usize; 2]),
}

/// The VAE's `config.json`. Keys that fix the tensors' shapes and names are required: diffusers'
/// defaults for them (`in_channels=3`, `block_out_channels=(64,)`, ...) describe an RGB image VAE,
/// so a config without them is broken, and defaulting would only turn that into a confusing
/// weight-shape error. The other keys take diffusers' defaults; unknown keys are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct AutoencoderKLConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    #[serde(default = "default_sample_size")]
    pub sample_size: SampleSize,
    /// Latents are `z * scaling_factor` in diffusion space; the pipeline applies it, not the VAE.
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn default_norm_num_groups() -> usize {
    32
}
fn default_act_fn() -> String {
    "silu".into()
}
fn default_sample_size() -> SampleSize {
    SampleSize::Square(32)
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

impl AutoencoderKLConfig {
    /// Rejects what this implementation does not build and numbers out of range; `path` names
    /// the config file in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let fail = |message: String| {
            Err(Error::Config {
                path: path.to_path_buf(),
                message,
            })
        };
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return fail("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return fail(format!(
                "{} down and {} up block types for {levels} block_out_channels",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return fail(format!(
                "down block type `{t}` is not supported (only DownEncoderBlock2D)"
            ));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return fail(format!(
                "up block type `{t}` is not supported (only UpDecoderBlock2D)"
            ));
        }
        if self.act_fn != "silu" {
            return fail(format!(
                "act_fn `{}` is not supported (only silu)",
                self.act_fn
            ));
        }
        let check = ConfigCheck { path };
        check.block_widths(&self.block_out_channels, self.norm_num_groups)?;
        check.range(
            "layers_per_block",
            self.layers_per_block,
            1..=limits::LAYERS,
        )?;
        for (key, value) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            check.range(key, value, 1..=limits::LATENT_CHANNELS)?;
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return fail(format!(
                "scaling_factor {} must be a positive number",
                self.scaling_factor
            ));
        }
        Ok(())
    }

    /// Spatial down-sampling factor of the encoder (4 for AudioLDM: mel `[T, 64]` to `[T/4, 16]`).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `nn.Conv2d` loaded from `vb`, with diffusers' VAE defaults.
async fn conv(
    l: &Loader<'_>,
    vb: &Weights<'_>,
    cin: usize,
    cout: usize,
    kernel: usize,
    padding: usize,
) -> Result<Conv2d> {
    Conv2d::load(l, vb, cin, cout, kernel, 1, padding).await
}

async fn norm(
    l: &Loader<'_>,
    vb: &Weights<'_>,
    groups: usize,
    channels: usize,
) -> Result<GroupNorm> {
    GroupNorm::load(l, vb, groups, channels, NORM_EPS).await
}

/// `[B, C, H, W]` of a graph value, or an error naming `what`.
fn nchw(g: &Graph, x: Var, what: &str) -> Result<[usize; 4]> {
    match *g.dims(x) {
        [b, c, h, w] => Ok([b, c, h, w]),
        ref other => Err(Error::Input(format!(
            "{what} expects a [B, C, H, W] tensor, got {other:?}"
        ))),
    }
}

/// diffusers `ResnetBlock2D` without a time embedding (`temb_channels=None`):
/// `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`.
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// 1x1 `conv_shortcut` when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        cin: usize,
        cout: usize,
        groups: usize,
    ) -> Result<Self> {
        Ok(Self {
            norm1: norm(l, &vb.pp("norm1"), groups, cin).await?,
            conv1: conv(l, &vb.pp("conv1"), cin, cout, 3, 1).await?,
            norm2: norm(l, &vb.pp("norm2"), groups, cout).await?,
            conv2: conv(l, &vb.pp("conv2"), cout, cout, 3, 1).await?,
            conv_shortcut: if cin != cout {
                Some(conv(l, &vb.pp("conv_shortcut"), cin, cout, 1, 0).await?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let h = self
            .conv1
            .forward_normed(g, x, &self.norm1, true, Activation::None, None)?;
        // The shortcut is computed last so that its output lives only until the add.
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(g, x, Activation::None, None)?,
            None => x,
        };
        self.conv2
            .forward_normed(g, h, &self.norm2, true, Activation::None, Some(shortcut))
    }
}

/// diffusers `Attention` as the VAE mid block builds it: GroupNorm, one head over all `C`
/// channels, scale `1/sqrt(C)`, biased projections, the input added back.
///
/// `to_q`, `to_k`, `to_v` are concatenated at load into one `[3C, C]` projection ([`Self::qkv`]).
/// Checkpoints written by diffusers <= 0.16 name them `query`, `key`, `value`, `proj_attn`;
/// [`AutoencoderKL::load`] renames those.
pub struct Attention {
    pub group_norm: GroupNorm,
    /// `to_q`, `to_k`, `to_v` stacked: weight `[3C, C]`, bias `[3C]`.
    pub qkv: Linear,
    /// The three biases of [`Self::qkv`] apart, for when its `[B, T, 3C]` output is over one
    /// binding and the projections run one by one.
    pub qkv_biases: [Tensor; 3],
    pub to_out: Linear,
    pub channels: usize,
}

impl Attention {
    pub async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        channels: usize,
        groups: usize,
    ) -> Result<Self> {
        let c = channels;
        let mut weight = Vec::with_capacity(3 * c * c);
        let mut bias = Vec::with_capacity(3 * c);
        for name in ["to_q", "to_k", "to_v"] {
            let p = vb.pp(name);
            weight.extend(p.f32("weight", &[c, c]).await?);
            bias.extend(p.f32("bias", &[c]).await?);
        }
        let qkv = Linear {
            weight: l.weight(&[3 * c, c], &weight)?,
            bias: Some(Tensor::from_f32(l.ctx, [3 * c], DType::F32, &bias)?),
        };
        let part = |i: usize| Tensor::from_f32(l.ctx, [c], DType::F32, &bias[i * c..(i + 1) * c]);
        Ok(Self {
            group_norm: norm(l, &vb.pp("group_norm"), groups, c).await?,
            qkv,
            qkv_biases: [part(0)?, part(1)?, part(2)?],
            to_out: Linear::load(l, &vb.pp("to_out").pp(0), c, c, true).await?,
            channels: c,
        })
    }

    pub fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let [b, c, h, w] = nchw(g, x, "VAE attention")?;
        let t = h * w;
        let normed = self.group_norm.forward(g, x, false)?;
        // [B, T, n] = x^T W[rows]^T + b, reading the normalised [B, C, T] through strides.
        let weight = g.weight(&self.qkv.weight);
        let project = |g: &mut Graph, row0: usize, n: usize, bias: Option<&Tensor>| {
            let bias = bias.map(|bias| g.weight(bias));
            g.gemm(Gemm {
                a: MatView {
                    var: normed,
                    offset: 0,
                    sb: c * t,
                    sr: 1,
                    sc: t,
                },
                b: MatView {
                    var: weight,
                    offset: row0 * c,
                    sb: 0,
                    sr: 1,
                    sc: c,
                },
                batch: b,
                m: t,
                k: c,
                n,
                alpha: 1.0,
                bias,
                residual: None,
                act: Activation::None,
                kernel: MatmulKernel::Auto,
            })
        };
        // One projection into [B, T, 3C] where that fits one binding, else three (long clips).
        let fused = 4 * (b * t * 3 * c) as u64 <= g.context().max_binding_bytes();
        let views = if fused {
            let qkv = project(g, 0, 3 * c, self.qkv.bias.as_ref())?;
            [0, c, 2 * c].map(|offset| HeadView {
                var: qkv,
                offset,
                sb: t * 3 * c,
                st: 3 * c,
                sh: c,
            })
        } else {
            let mut views = Vec::with_capacity(3);
            for (i, bias) in self.qkv_biases.iter().enumerate() {
                let var = project(g, i * c, c, Some(bias))?;
                views.push(HeadView::interleaved(var, t, 1, c));
            }
            [views[0], views[1], views[2]]
        };
        let attn = g.attention_strided(AttentionOp {
            q: views[0],
            k: views[1],
            v: views[2],
            batch: b,
            heads: 1,
            tq: t,
            tk: t,
            d: c,
            dv: c,
            scale: 1.0 / (c as f32).sqrt(),
        })?;
        let out = self.to_out.forward(g, attn, Activation::None, None)?;
        let out = g.permute(out, &[0, 2, 1])?;
        let out = g.reshape(out, [b, c, h, w])?;
        Ok(g.add(out, x)?)
    }
}

/// diffusers `UNetMidBlock2D` without a time embedding: `resnets[0]`, then per layer an optional
/// attention and the next resnet.
pub struct UNetMidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// One per layer; `None` when `mid_block_add_attention` is false.
    pub attentions: Vec<Option<Attention>>,
}

impl UNetMidBlock2D {
    pub async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        channels: usize,
        groups: usize,
        add_attention: bool,
    ) -> Result<Self> {
        let layers = 1;
        let mut resnets = Vec::with_capacity(layers + 1);
        for i in 0..=layers {
            let vb = vb.pp("resnets").pp(i);
            resnets.push(ResnetBlock2D::load(l, &vb, channels, channels, groups).await?);
        }
        let mut attentions = Vec::with_capacity(layers);
        for i in 0..layers {
            let vb = vb.pp("attentions").pp(i);
            attentions.push(if add_attention {
                Some(Attention::load(l, &vb, channels, groups).await?)
            } else {
                None
            });
        }
        Ok(Self {
            resnets,
            attentions,
        })
    }

    pub fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let mut h = self.resnets[0].forward(g, x)?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            if let Some(attn) = attn {
                h = attn.forward(g, h)?;
            }
            h = resnet.forward(g, h)?;
        }
        Ok(h)
    }
}

/// diffusers `Downsample2D` with `padding=0`: `F.pad(x, (0, 1, 0, 1))` then a 3x3 stride-2 conv,
/// the pad being the conv's own `[top, bottom, left, right] = [0, 1, 0, 1]` padding.
pub struct Downsample2D {
    pub conv: Conv2d,
}

impl Downsample2D {
    pub async fn load(l: &Loader<'_>, vb: &Weights<'_>, channels: usize) -> Result<Self> {
        let mut conv = Conv2d::load(l, &vb.pp("conv"), channels, channels, 3, 2, 0).await?;
        conv.options.padding = [0, 1, 0, 1];
        Ok(Self { conv })
    }

    pub fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        self.conv.forward(g, x, Activation::None, None)
    }
}

/// diffusers `Upsample2D` with a conv: nearest x2, then a 3x3 conv.
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub async fn load(l: &Loader<'_>, vb: &Weights<'_>, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv(l, &vb.pp("conv"), channels, channels, 3, 1).await?,
        })
    }

    pub fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let [_, _, h, w] = nchw(g, x, "Upsample2D")?;
        let up = g.upsample_nearest(x, 2 * h, 2 * w)?;
        self.conv.forward(g, up, Activation::None, None)
    }
}

/// `layers` resnets `vb.resnets.{i}`, the first from `cin` channels, the rest from `cout`.
async fn load_resnets(
    l: &Loader<'_>,
    vb: &Weights<'_>,
    cin: usize,
    cout: usize,
    layers: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock2D>> {
    let mut resnets = Vec::with_capacity(layers);
    for i in 0..layers {
        let cin = if i == 0 { cin } else { cout };
        resnets.push(ResnetBlock2D::load(l, &vb.pp("resnets").pp(i), cin, cout, groups).await?);
    }
    Ok(resnets)
}

fn forward_resnets(resnets: &[ResnetBlock2D], g: &mut Graph, mut x: Var) -> Result<Var> {
    for resnet in resnets {
        x = resnet.forward(g, x)?;
    }
    Ok(x)
}

/// diffusers `DownEncoderBlock2D`: resnets, then a down-sampler except in the last block.
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        cin: usize,
        cout: usize,
        layers: usize,
        groups: usize,
        add_downsample: bool,
    ) -> Result<Self> {
        let resnets = load_resnets(l, vb, cin, cout, layers, groups).await?;
        let downsampler = if add_downsample {
            Some(Downsample2D::load(l, &vb.pp("downsamplers").pp(0), cout).await?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            downsampler,
        })
    }

    pub fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let x = forward_resnets(&self.resnets, g, x)?;
        match &self.downsampler {
            Some(down) => down.forward(g, x),
            None => Ok(x),
        }
    }
}

/// diffusers `UpDecoderBlock2D`: resnets, then an up-sampler except in the last block.
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        cin: usize,
        cout: usize,
        layers: usize,
        groups: usize,
        add_upsample: bool,
    ) -> Result<Self> {
        let resnets = load_resnets(l, vb, cin, cout, layers, groups).await?;
        let upsampler = if add_upsample {
            Some(Upsample2D::load(l, &vb.pp("upsamplers").pp(0), cout).await?)
        } else {
            None
        };
        Ok(Self { resnets, upsampler })
    }

    pub fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let x = forward_resnets(&self.resnets, g, x)?;
        match &self.upsampler {
            Some(up) => up.forward(g, x),
            None => Ok(x),
        }
    }
}

/// diffusers `Encoder` (`double_z=True`): mel `[B, in, H, W]` to moments `[B, 2 latent, H/f, W/f]`.
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: UNetMidBlock2D,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    pub async fn load(l: &Loader<'_>, vb: &Weights<'_>, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let (channels, groups) = (&cfg.block_out_channels, cfg.norm_num_groups);
        let last = channels[channels.len() - 1];
        let mut down_blocks = Vec::with_capacity(channels.len());
        for (i, &cout) in channels.iter().enumerate() {
            let cin = if i == 0 { channels[0] } else { channels[i - 1] };
            down_blocks.push(
                DownEncoderBlock2D::load(
                    l,
                    &vb.pp("down_blocks").pp(i),
                    cin,
                    cout,
                    cfg.layers_per_block,
                    groups,
                    i + 1 < channels.len(),
                )
                .await?,
            );
        }
        Ok(Self {
            conv_in: conv(l, &vb.pp("conv_in"), cfg.in_channels, channels[0], 3, 1).await?,
            down_blocks,
            mid_block: UNetMidBlock2D::load(
                l,
                &vb.pp("mid_block"),
                last,
                groups,
                cfg.mid_block_add_attention,
            )
            .await?,
            conv_norm_out: norm(l, &vb.pp("conv_norm_out"), groups, last).await?,
            conv_out: conv(l, &vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1).await?,
        })
    }

    pub fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let mut h = self.conv_in.forward(g, x, Activation::None, None)?;
        for block in &self.down_blocks {
            h = block.forward(g, h)?;
        }
        let h = self.mid_block.forward(g, h)?;
        self.conv_out
            .forward_normed(g, h, &self.conv_norm_out, true, Activation::None, None)
    }
}

/// diffusers `Decoder` (`norm_type="group"`): latents `[B, latent, h, w]` to `[B, out, h f, w f]`.
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: UNetMidBlock2D,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub async fn load(l: &Loader<'_>, vb: &Weights<'_>, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let groups = cfg.norm_num_groups;
        let reversed: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(reversed.len());
        for (i, &cout) in reversed.iter().enumerate() {
            let cin = if i == 0 { reversed[0] } else { reversed[i - 1] };
            up_blocks.push(
                UpDecoderBlock2D::load(
                    l,
                    &vb.pp("up_blocks").pp(i),
                    cin,
                    cout,
                    cfg.layers_per_block + 1,
                    groups,
                    i + 1 < reversed.len(),
                )
                .await?,
            );
        }
        let (first, last) = (reversed[reversed.len() - 1], reversed[0]);
        Ok(Self {
            conv_in: conv(l, &vb.pp("conv_in"), cfg.latent_channels, last, 3, 1).await?,
            mid_block: UNetMidBlock2D::load(
                l,
                &vb.pp("mid_block"),
                last,
                groups,
                cfg.mid_block_add_attention,
            )
            .await?,
            up_blocks,
            conv_norm_out: norm(l, &vb.pp("conv_norm_out"), groups, first).await?,
            conv_out: conv(l, &vb.pp("conv_out"), first, cfg.out_channels, 3, 1).await?,
        })
    }

    pub fn forward(&self, g: &mut Graph, z: Var) -> Result<Var> {
        let h = self.conv_in.forward(g, z, Activation::None, None)?;
        let mut h = self.mid_block.forward(g, h)?;
        for block in &self.up_blocks {
            h = block.forward(g, h)?;
        }
        self.conv_out
            .forward_normed(g, h, &self.conv_norm_out, true, Activation::None, None)
    }
}

/// What [`AutoencoderKL::encode`] records: diffusers' `DiagonalGaussianDistribution` as the two
/// halves of the moments. `logvar` is not clamped yet: the engine has no `exp` (nor clamp) op, so
/// `std = exp(0.5 * clamp(logvar, -30, 20))` is taken on the CPU by [`latent_std`] after read-back.
#[derive(Clone, Copy, Debug)]
pub struct LatentDist {
    /// `[B, latent, h, w]`: the mode, `latent_dist.mean`.
    pub mean: Var,
    /// `[B, latent, h, w]`: the raw log-variance (channels `latent..2 latent` of the moments).
    pub logvar: Var,
}

/// `DiagonalGaussianDistribution.std`: `exp(0.5 * clamp(logvar, -30, 20))`, in f32 as torch does.
pub fn latent_std(logvar: &[f32]) -> Vec<f32> {
    logvar
        .iter()
        .map(|&v| (0.5 * v.clamp(LOGVAR_MIN, LOGVAR_MAX)).exp())
        .collect()
}

/// diffusers `AutoencoderKL` (no tiling, no slicing).
pub struct AutoencoderKL {
    pub config: AutoencoderKLConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    /// `quant_conv` (`2 latent -> 2 latent`, 1x1) split into its mean and log-variance outputs.
    pub quant_conv: Option<(Conv2d, Conv2d)>,
    pub post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKL {
    /// Reads `dir/config.json` and the weights (`diffusion_pytorch_model.safetensors` or `.bin`),
    /// accepting both the current attention names and diffusers <= 0.16's `query`, `key`,
    /// `value`, `proj_attn`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        pollster::block_on(Self::load_async(loader, dir))
    }

    /// [`Self::load`] without blocking (a browser reads each tensor when it is needed).
    pub async fn load_async(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        let config: AutoencoderKLConfig = load_config(dir)?;
        config.validate(&dir.join("config.json"))?;
        let mut ckpt = Checkpoint::open_dir(dir)?;
        for (old, new) in [
            (".query.", ".to_q."),
            (".key.", ".to_k."),
            (".value.", ".to_v."),
            (".proj_attn.", ".to_out.0."),
        ] {
            ckpt.rename_all(old, new);
        }
        let vb = ckpt.root();
        let l = loader;
        let latent = config.latent_channels;
        let quant_conv = if config.use_quant_conv {
            let vb = vb.pp("quant_conv");
            let (c2, c) = (2 * latent, latent);
            let w = vb.f32("weight", &[c2, c2, 1, 1]).await?;
            let b = vb.f32("bias", &[c2]).await?;
            let half = |i: usize| -> Result<Conv2d> {
                let rows = &w[i * c * c2..(i + 1) * c * c2];
                let (shape, laid) = conv_weight(l.ctx, rows, c, c2, 1, 1);
                Ok(Conv2d {
                    weight: l.weight(&shape, &laid)?,
                    bias: Some(Tensor::from_f32(
                        l.ctx,
                        [c],
                        DType::F32,
                        &b[i * c..(i + 1) * c],
                    )?),
                    options: Conv2dOptions::same_padding(1, 0),
                })
            };
            Some((half(0)?, half(1)?))
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(conv(l, &vb.pp("post_quant_conv"), latent, latent, 1, 0).await?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::load(l, &vb.pp("encoder"), &config).await?,
            decoder: Decoder::load(l, &vb.pp("decoder"), &config).await?,
            quant_conv,
            post_quant_conv,
            config,
        })
    }

    /// `vae.decode(z).sample`: `z [B, latent, h, w]` (already divided by the scaling factor) to
    /// `[B, out, h f, w f]` (f = 4 for AudioLDM: the log-mel `[B, 1, 4h, 4w]`).
    pub fn decode(&self, g: &mut Graph, z: Var) -> Result<Var> {
        let [_, c, _, _] = nchw(g, z, "VAE decode")?;
        if c != self.config.latent_channels {
            return Err(Error::Input(format!(
                "VAE decode expects {} latent channels, got {:?}",
                self.config.latent_channels,
                g.dims(z)
            )));
        }
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(g, z, Activation::None, None)?,
            None => z,
        };
        self.decoder.forward(g, z)
    }

    /// `vae.encode(x).latent_dist`: `x [B, in, H, W]` to the mean and log-variance
    /// `[B, latent, ceil(H/f), ceil(W/f)]` (see [`LatentDist`] for the std).
    pub fn encode(&self, g: &mut Graph, x: Var) -> Result<LatentDist> {
        let [_, c, _, _] = nchw(g, x, "VAE encode")?;
        if c != self.config.in_channels {
            return Err(Error::Input(format!(
                "VAE encode expects {} input channels, got {:?}",
                self.config.in_channels,
                g.dims(x)
            )));
        }
        let moments = self.encoder.forward(g, x)?;
        Ok(match &self.quant_conv {
            Some((mean, logvar)) => LatentDist {
                mean: mean.forward(g, moments, Activation::None, None)?,
                logvar: logvar.forward(g, moments, Activation::None, None)?,
            },
            None => {
                let latent = self.config.latent_channels;
                LatentDist {
                    mean: g.slice(moments, 1, 0, latent)?,
                    logvar: g.slice(moments, 1, latent, 2 * latent)?,
                }
            }
        })
    }
}
