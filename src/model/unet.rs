//! `UNet2DConditionModel` as AudioLDM configures it (diffusers `models/unets/unet_2d_condition.py`,
//! `unet_2d_blocks.py`, `resnet.py`, `transformers/transformer_2d.py`, `attention.py`): the text
//! embedding enters as a class embedding concatenated to the time embedding, and every transformer
//! block is self-attention only (`encoder_hidden_states` is `None`, so `attn2` attends to the
//! block's own tokens).

use std::path::Path;

use serde::Deserialize;

use crate::checkpoint::{Checkpoint, Weights};
use crate::engine::{Activation, Coef, Graph, Var};
use crate::error::{Error, Result};

use super::nn::{Conv2d, GroupNorm, LayerNorm, Linear, Loader};
use super::{ConfigCheck, limits, load_config};

/// An int or a per-block list in diffusers' configs (`attention_head_dim: 8` or `[8, 8, ...]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Many(Vec<usize>),
}

impl PerBlock {
    fn expand(&self, blocks: usize) -> Vec<usize> {
        match self {
            PerBlock::One(v) => vec![*v; blocks],
            PerBlock::Many(v) => v.clone(),
        }
    }
}

fn default_channels() -> usize {
    4
}
fn default_layers() -> usize {
    2
}
fn default_groups() -> usize {
    32
}
fn default_eps() -> f32 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_heads() -> PerBlock {
    PerBlock::One(8)
}
fn default_silu() -> String {
    "silu".into()
}
fn default_positional() -> String {
    "positional".into()
}
fn default_time_shift() -> String {
    "default".into()
}
fn default_kernel() -> usize {
    3
}

/// The keys of diffusers' `unet/config.json` this model reads, with diffusers' defaults.
#[derive(Clone, Debug, Deserialize)]
pub struct UNet2DConditionConfig {
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    #[serde(default = "default_channels")]
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_layers")]
    pub layers_per_block: usize,
    #[serde(default = "default_heads")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub cross_attention_dim: Option<PerBlock>,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f32,
    #[serde(default = "default_silu")]
    pub act_fn: String,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f32,
    #[serde(default = "default_one")]
    pub downsample_padding: usize,
    #[serde(default = "default_positional")]
    pub time_embedding_type: String,
    #[serde(default = "default_time_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub only_cross_attention: bool,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "default_kernel")]
    pub conv_in_kernel: usize,
    #[serde(default = "default_kernel")]
    pub conv_out_kernel: usize,
    #[serde(default = "default_one")]
    pub transformer_layers_per_block: usize,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub sample_size: Option<usize>,
}

impl UNet2DConditionConfig {
    /// Rejects what this implementation does not build (and diffusers would build differently)
    /// and numbers out of range; `path` names the config file in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let levels = self.block_out_channels.len();
        if levels == 0
            || self.down_block_types.len() != levels
            || self.up_block_types.len() != levels
        {
            return Err(bad(format!(
                "{} block widths, {} down blocks and {} up blocks must agree",
                levels,
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        let checks = [
            (self.act_fn == "silu", format!("act_fn {:?}", self.act_fn)),
            (
                self.time_embedding_type == "positional",
                format!("time_embedding_type {:?}", self.time_embedding_type),
            ),
            (
                self.resnet_time_scale_shift == "default",
                format!("resnet_time_scale_shift {:?}", self.resnet_time_scale_shift),
            ),
            (
                !self.use_linear_projection,
                "use_linear_projection true".into(),
            ),
            (
                !self.only_cross_attention,
                "only_cross_attention true".into(),
            ),
            (!self.center_input_sample, "center_input_sample true".into()),
            (
                matches!(
                    self.class_embed_type.as_deref(),
                    None | Some("simple_projection")
                ),
                format!("class_embed_type {:?}", self.class_embed_type),
            ),
            (
                self.conv_in_kernel % 2 == 1 && self.conv_out_kernel % 2 == 1,
                "even conv_in/conv_out kernels".into(),
            ),
        ];
        for (ok, what) in checks {
            if !ok {
                return Err(bad(format!("unsupported UNet setting: {what}")));
            }
        }
        self.check_sizes(path)
    }

    /// Every number the graph is built from, in range before any of it is used.
    fn check_sizes(&self, path: &Path) -> Result<()> {
        let check = ConfigCheck { path };
        let widths = &self.block_out_channels;
        check.block_widths(widths, self.norm_num_groups)?;
        check.range("in_channels", self.in_channels, 1..=limits::LATENT_CHANNELS)?;
        check.range(
            "out_channels",
            self.out_channels,
            1..=limits::LATENT_CHANNELS,
        )?;
        check.range(
            "layers_per_block",
            self.layers_per_block,
            1..=limits::LAYERS,
        )?;
        check.range(
            "transformer_layers_per_block",
            self.transformer_layers_per_block,
            1..=limits::LAYERS,
        )?;
        check.range("conv_in_kernel", self.conv_in_kernel, 1..=limits::KERNEL)?;
        check.range("conv_out_kernel", self.conv_out_kernel, 1..=limits::KERNEL)?;
        check.range(
            "downsample_padding",
            self.downsample_padding,
            0..=limits::KERNEL,
        )?;
        let heads = self.heads();
        if heads.len() != widths.len() {
            return Err(check.fail(format!(
                "{} attention head counts for {} blocks",
                heads.len(),
                widths.len()
            )));
        }
        for (&width, &h) in widths.iter().zip(&heads) {
            check.divides("block width", width, "attention heads", h)?;
        }
        if let Some(dims) = &self.cross_attention_dim {
            check.all(
                "cross_attention_dim",
                &dims.expand(widths.len()),
                1..=limits::CHANNELS,
            )?;
        }
        for (key, value) in [
            (
                "projection_class_embeddings_input_dim",
                self.projection_class_embeddings_input_dim,
            ),
            ("time_embedding_dim", self.time_embedding_dim),
            ("sample_size", self.sample_size),
        ] {
            if let Some(value) = value {
                check.range(key, value, 1..=limits::CHANNELS)?;
            }
        }
        Ok(())
    }

    fn heads(&self) -> Vec<usize> {
        let levels = self.block_out_channels.len();
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .expand(levels)
    }
}

/// `ResnetBlock2D` with `time_embedding_norm="default"` and output scale 1.
struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        cin: usize,
        cout: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f32,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(l, &vb.pp("norm1"), groups, cin, eps).await?,
            conv1: Conv2d::load(l, &vb.pp("conv1"), cin, cout, 3, 1, 1).await?,
            time_emb_proj: match temb {
                Some(t) => Some(Linear::load(l, &vb.pp("time_emb_proj"), t, cout, true).await?),
                None => None,
            },
            norm2: GroupNorm::load(l, &vb.pp("norm2"), groups, cout, eps).await?,
            conv2: Conv2d::load(l, &vb.pp("conv2"), cout, cout, 3, 1, 1).await?,
            conv_shortcut: if cin != cout {
                Some(Conv2d::load(l, &vb.pp("conv_shortcut"), cin, cout, 1, 1, 0).await?)
            } else {
                None
            },
        })
    }

    /// `emb_act` is `SiLU(emb)`, shared by every resnet of the UNet.
    fn forward(&self, g: &mut Graph, x: Var, emb_act: Option<Var>) -> Result<Var> {
        let mut h = self
            .conv1
            .forward_normed(g, x, &self.norm1, true, Activation::None, None)?;
        if let (Some(proj), Some(emb)) = (&self.time_emb_proj, emb_act) {
            let t = proj.forward(g, emb, Activation::None, None)?;
            let (b, c) = (g.dims(t)[0], g.dims(t)[1]);
            let t = g.reshape(t, [b, c, 1, 1])?;
            h = g.add(h, t)?;
        }
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(g, x, Activation::None, None)?,
            None => x,
        };
        self.conv2
            .forward_normed(g, h, &self.norm2, true, Activation::None, Some(shortcut))
    }
}

/// diffusers' `Attention` as a self-attention: `to_q/k/v` without bias, `to_out.0` with bias.
struct SelfAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f32,
}

impl SelfAttention {
    async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        dim: usize,
        kv_dim: usize,
        heads: usize,
    ) -> Result<Self> {
        Ok(Self {
            to_q: Linear::load(l, &vb.pp("to_q"), dim, dim, false).await?,
            to_k: Linear::load(l, &vb.pp("to_k"), kv_dim, dim, false).await?,
            to_v: Linear::load(l, &vb.pp("to_v"), kv_dim, dim, false).await?,
            to_out: Linear::load(l, &vb.pp("to_out").pp(0), dim, dim, true).await?,
            heads,
            scale: 1.0 / ((dim / heads) as f32).sqrt(),
        })
    }

    /// `to_out(attention(x)) + residual` over tokens `[B, N, C]`.
    fn forward(&self, g: &mut Graph, x: Var, residual: Var) -> Result<Var> {
        let q = self.to_q.forward(g, x, Activation::None, None)?;
        let k = self.to_k.forward(g, x, Activation::None, None)?;
        let v = self.to_v.forward(g, x, Activation::None, None)?;
        let a = g.attention(q, k, v, self.heads, self.scale)?;
        self.to_out.forward(g, a, Activation::None, Some(residual))
    }
}

/// `BasicTransformerBlock` with two self-attentions and a GEGLU feed-forward.
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: SelfAttention,
    norm2: LayerNorm,
    attn2: SelfAttention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl BasicTransformerBlock {
    async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        dim: usize,
        heads: usize,
        cross_dim: usize,
    ) -> Result<Self> {
        let ff = vb.pp("ff").pp("net");
        Ok(Self {
            norm1: LayerNorm::load(l, &vb.pp("norm1"), dim, 1e-5).await?,
            attn1: SelfAttention::load(l, &vb.pp("attn1"), dim, dim, heads).await?,
            norm2: LayerNorm::load(l, &vb.pp("norm2"), dim, 1e-5).await?,
            attn2: SelfAttention::load(l, &vb.pp("attn2"), dim, cross_dim, heads).await?,
            norm3: LayerNorm::load(l, &vb.pp("norm3"), dim, 1e-5).await?,
            ff_in: Linear::load(l, &ff.pp(0).pp("proj"), dim, 8 * dim, true).await?,
            ff_out: Linear::load(l, &ff.pp(2), 4 * dim, dim, true).await?,
        })
    }

    fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let n = self.norm1.forward(g, x)?;
        let x = self.attn1.forward(g, n, x)?;
        let n = self.norm2.forward(g, x)?;
        let x = self.attn2.forward(g, n, x)?;
        let n = self.norm3.forward(g, x)?;
        let h = self.ff_in.forward(g, n, Activation::None, None)?;
        let h = g.geglu(h)?;
        self.ff_out.forward(g, h, Activation::None, Some(x))
    }
}

/// `Transformer2DModel` with continuous input and 1x1 convolutions as projections.
struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Conv2d,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Conv2d,
}

impl Transformer2DModel {
    #[allow(clippy::too_many_arguments)]
    async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        dim: usize,
        heads: usize,
        cross_dim: usize,
        layers: usize,
        groups: usize,
    ) -> Result<Self> {
        let norm = GroupNorm::load(l, &vb.pp("norm"), groups, dim, 1e-6).await?;
        let proj_in = Conv2d::load(l, &vb.pp("proj_in"), dim, dim, 1, 1, 0).await?;
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let vb = vb.pp("transformer_blocks").pp(i);
            blocks.push(BasicTransformerBlock::load(l, &vb, dim, heads, cross_dim).await?);
        }
        Ok(Self {
            norm,
            proj_in,
            blocks,
            proj_out: Conv2d::load(l, &vb.pp("proj_out"), dim, dim, 1, 1, 0).await?,
        })
    }

    fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let &[b, c, h, w] = g.dims(x) else {
            return Err(Error::Input(format!(
                "Transformer2DModel expects [B, C, H, W], got {:?}",
                g.dims(x)
            )));
        };
        let hs = self.norm.forward(g, x, false)?;
        let hs = self.proj_in.forward(g, hs, Activation::None, None)?;
        let tokens = g.permute(hs, &[0, 2, 3, 1])?;
        let mut tokens = g.reshape(tokens, [b, h * w, c])?;
        for block in &self.blocks {
            tokens = block.forward(g, tokens)?;
        }
        let hs = g.reshape(tokens, [b, h, w, c])?;
        let hs = g.permute(hs, &[0, 3, 1, 2])?;
        self.proj_out.forward(g, hs, Activation::None, Some(x))
    }
}

/// One resnet, optionally followed by its transformer.
struct Layer {
    resnet: ResnetBlock2D,
    attention: Option<Transformer2DModel>,
}

impl Layer {
    fn forward(&self, g: &mut Graph, x: Var, emb_act: Var) -> Result<Var> {
        let h = self.resnet.forward(g, x, Some(emb_act))?;
        match &self.attention {
            Some(attn) => attn.forward(g, h),
            None => Ok(h),
        }
    }
}

/// `DownBlock2D` / `CrossAttnDownBlock2D`.
struct DownBlock {
    layers: Vec<Layer>,
    downsampler: Option<Conv2d>,
}

/// `UpBlock2D` / `CrossAttnUpBlock2D`.
struct UpBlock {
    layers: Vec<Layer>,
    upsampler: Option<Conv2d>,
}

/// Everything a block needs to build its layers.
struct BlockSpec {
    temb: usize,
    groups: usize,
    eps: f32,
    heads: usize,
    cross_dim: usize,
    transformer_layers: usize,
}

impl BlockSpec {
    async fn layer(
        &self,
        l: &Loader<'_>,
        vb: &Weights<'_>,
        j: usize,
        cin: usize,
        cout: usize,
        attention: bool,
    ) -> Result<Layer> {
        let resnet = ResnetBlock2D::load(
            l,
            &vb.pp("resnets").pp(j),
            cin,
            cout,
            Some(self.temb),
            self.groups,
            self.eps,
        )
        .await?;
        let attention = if attention {
            Some(
                Transformer2DModel::load(
                    l,
                    &vb.pp("attentions").pp(j),
                    cout,
                    self.heads,
                    self.cross_dim,
                    self.transformer_layers,
                    self.groups,
                )
                .await?,
            )
        } else {
            None
        };
        Ok(Layer { resnet, attention })
    }
}

fn has_attention(block_type: &str, path: &Path) -> Result<bool> {
    match block_type {
        "DownBlock2D" | "UpBlock2D" => Ok(false),
        "CrossAttnDownBlock2D" | "CrossAttnUpBlock2D" => Ok(true),
        other => Err(Error::Config {
            path: path.join("config.json"),
            message: format!("unsupported UNet block type {other:?}"),
        }),
    }
}

/// The UNet: `forward` records one noise prediction on a graph.
pub struct UNet2DConditionModel {
    pub config: UNet2DConditionConfig,
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    class_embedding: Option<Linear>,
    down_blocks: Vec<DownBlock>,
    mid_resnets: Vec<ResnetBlock2D>,
    mid_attentions: Vec<Transformer2DModel>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    /// Loads `config.json` and the weights of a diffusers `unet/` folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(l: &Loader<'_>, dir: &Path) -> Result<Self> {
        pollster::block_on(Self::load_async(l, dir))
    }

    /// [`Self::load`] without blocking (a browser reads each tensor when it is needed).
    pub async fn load_async(l: &Loader<'_>, dir: &Path) -> Result<Self> {
        let config: UNet2DConditionConfig = load_config(dir)?;
        let ckpt = Checkpoint::open_dir(dir)?;
        Self::from_checkpoint(l, config, &ckpt, dir).await
    }

    pub async fn from_checkpoint(
        l: &Loader<'_>,
        config: UNet2DConditionConfig,
        ckpt: &Checkpoint,
        dir: &Path,
    ) -> Result<Self> {
        config.validate(&dir.join("config.json"))?;
        let vb = ckpt.root();
        let widths = &config.block_out_channels;
        let levels = widths.len();
        let c0 = widths[0];
        let temb_dim = config.time_embedding_dim.unwrap_or(4 * c0);
        let heads = config.heads();
        let cross = config
            .cross_attention_dim
            .as_ref()
            .map(|c| c.expand(levels))
            .unwrap_or_else(|| widths.clone());
        if heads.len() != levels || cross.len() != levels {
            return Err(Error::Config {
                path: dir.join("config.json"),
                message: format!(
                    "expected {levels} attention head counts and cross-attention widths"
                ),
            });
        }
        for (i, (&w, (&h, &x))) in widths.iter().zip(heads.iter().zip(&cross)).enumerate() {
            if w % h != 0 || x != w {
                return Err(Error::Config {
                    path: dir.join("config.json"),
                    message: format!(
                        "level {i}: width {w} must split into {h} heads, and self-attention needs \
                         cross_attention_dim {x} equal to it (AudioLDM passes no encoder states)"
                    ),
                });
            }
        }
        let class_embedding = match config.class_embed_type.as_deref() {
            Some("simple_projection") => {
                let input = config.projection_class_embeddings_input_dim.ok_or_else(|| Error::Config {
                    path: dir.join("config.json"),
                    message: "class_embed_type simple_projection needs projection_class_embeddings_input_dim"
                        .into(),
                })?;
                Some(Linear::load(l, &vb.pp("class_embedding"), input, temb_dim, true).await?)
            }
            _ => None,
        };
        let emb_dim = if config.class_embeddings_concat && class_embedding.is_some() {
            2 * temb_dim
        } else {
            temb_dim
        };
        let spec = |heads: usize, cross_dim: usize| BlockSpec {
            temb: emb_dim,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            heads,
            cross_dim,
            transformer_layers: config.transformer_layers_per_block,
        };

        let mut down_blocks = Vec::with_capacity(levels);
        let mut out_ch = c0;
        for (i, block_type) in config.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = widths[i];
            let attention = has_attention(block_type, dir)?;
            let bvb = vb.pp("down_blocks").pp(i);
            let s = spec(heads[i], cross[i]);
            let mut layers = Vec::with_capacity(config.layers_per_block);
            for j in 0..config.layers_per_block {
                let cin = if j == 0 { in_ch } else { out_ch };
                layers.push(s.layer(l, &bvb, j, cin, out_ch, attention).await?);
            }
            let downsampler = if i + 1 < levels {
                Some(
                    Conv2d::load(
                        l,
                        &bvb.pp("downsamplers").pp(0).pp("conv"),
                        out_ch,
                        out_ch,
                        3,
                        2,
                        config.downsample_padding,
                    )
                    .await?,
                )
            } else {
                None
            };
            down_blocks.push(DownBlock {
                layers,
                downsampler,
            });
        }

        let top = widths[levels - 1];
        let mid = vb.pp("mid_block");
        let mid_spec = spec(heads[levels - 1], cross[levels - 1]);
        let mut mid_resnets = Vec::with_capacity(2);
        for j in 0..2 {
            mid_resnets.push(
                ResnetBlock2D::load(
                    l,
                    &mid.pp("resnets").pp(j),
                    top,
                    top,
                    Some(emb_dim),
                    mid_spec.groups,
                    mid_spec.eps,
                )
                .await?,
            );
        }
        let mid_attentions = vec![
            Transformer2DModel::load(
                l,
                &mid.pp("attentions").pp(0),
                top,
                mid_spec.heads,
                mid_spec.cross_dim,
                mid_spec.transformer_layers,
                mid_spec.groups,
            )
            .await?,
        ];

        let reversed: Vec<usize> = widths.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(levels);
        let mut out_ch = reversed[0];
        for (i, block_type) in config.up_block_types.iter().enumerate() {
            let prev_out = out_ch;
            out_ch = reversed[i];
            let in_ch = reversed[(i + 1).min(levels - 1)];
            let attention = has_attention(block_type, dir)?;
            let bvb = vb.pp("up_blocks").pp(i);
            let s = spec(heads[levels - 1 - i], cross[levels - 1 - i]);
            let n = config.layers_per_block + 1;
            let mut layers = Vec::with_capacity(n);
            for j in 0..n {
                let skip = if j == n - 1 { in_ch } else { out_ch };
                let res_in = if j == 0 { prev_out } else { out_ch };
                layers.push(
                    s.layer(l, &bvb, j, res_in + skip, out_ch, attention)
                        .await?,
                );
            }
            let upsampler = if i + 1 < levels {
                Some(
                    Conv2d::load(
                        l,
                        &bvb.pp("upsamplers").pp(0).pp("conv"),
                        out_ch,
                        out_ch,
                        3,
                        1,
                        1,
                    )
                    .await?,
                )
            } else {
                None
            };
            up_blocks.push(UpBlock { layers, upsampler });
        }

        Ok(Self {
            conv_in: Conv2d::load(
                l,
                &vb.pp("conv_in"),
                config.in_channels,
                c0,
                config.conv_in_kernel,
                1,
                config.conv_in_kernel / 2,
            )
            .await?,
            time_linear_1: Linear::load(
                l,
                &vb.pp("time_embedding").pp("linear_1"),
                c0,
                temb_dim,
                true,
            )
            .await?,
            time_linear_2: Linear::load(
                l,
                &vb.pp("time_embedding").pp("linear_2"),
                temb_dim,
                temb_dim,
                true,
            )
            .await?,
            class_embedding,
            down_blocks,
            mid_resnets,
            mid_attentions,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                l,
                &vb.pp("conv_norm_out"),
                config.norm_num_groups,
                c0,
                config.norm_eps,
            )
            .await?,
            conv_out: Conv2d::load(
                l,
                &vb.pp("conv_out"),
                c0,
                config.out_channels,
                config.conv_out_kernel,
                1,
                config.conv_out_kernel / 2,
            )
            .await?,
            config,
        })
    }

    /// Records `ε = unet(sample, t, class_labels)`: `sample [B, C_in, H, W]`, `class_labels
    /// [B, projection_dim]` (the text embeddings), `t` the timestep (one for the whole batch; a
    /// replay-time scalar in a denoising loop). Returns `[B, C_out, H, W]`.
    pub fn forward(
        &self,
        g: &mut Graph,
        sample: Var,
        t: impl Into<Coef>,
        class_labels: Option<Var>,
    ) -> Result<Var> {
        let &[batch, _, _, _] = g.dims(sample) else {
            return Err(Error::Input(format!(
                "UNet sample must be [B, C, H, W], got {:?}",
                g.dims(sample)
            )));
        };
        let c0 = self.config.block_out_channels[0];
        let t_emb = g.timestep_embedding(
            batch,
            t,
            c0,
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
            10000.0,
        )?;
        let emb = self
            .time_linear_1
            .forward(g, t_emb, Activation::Silu, None)?;
        let mut emb = self.time_linear_2.forward(g, emb, Activation::None, None)?;
        if let Some(class) = &self.class_embedding {
            let labels = class_labels.ok_or_else(|| {
                Error::Input("this UNet is conditioned on class labels (the text embedding)".into())
            })?;
            let class_emb = class.forward(g, labels, Activation::None, None)?;
            emb = if self.config.class_embeddings_concat {
                g.concat(emb, class_emb, 1)?
            } else {
                g.add(emb, class_emb)?
            };
        }
        // Every resnet applies SiLU to the embedding before its projection: do it once.
        let emb_act = g.activation(emb, Activation::Silu)?;

        let mut h = self.conv_in.forward(g, sample, Activation::None, None)?;
        let mut skips = vec![h];
        for block in &self.down_blocks {
            for layer in &block.layers {
                h = layer.forward(g, h, emb_act)?;
                skips.push(h);
            }
            if let Some(down) = &block.downsampler {
                h = down.forward(g, h, Activation::None, None)?;
                skips.push(h);
            }
        }

        h = self.mid_resnets[0].forward(g, h, Some(emb_act))?;
        for (attn, resnet) in self.mid_attentions.iter().zip(&self.mid_resnets[1..]) {
            h = attn.forward(g, h)?;
            h = resnet.forward(g, h, Some(emb_act))?;
        }

        for block in &self.up_blocks {
            for layer in &block.layers {
                let skip = skips
                    .pop()
                    .ok_or_else(|| Error::Input("UNet skip connections ran out".into()))?;
                let joined = g.concat(h, skip, 1)?;
                h = layer.forward(g, joined, emb_act)?;
            }
            if let Some(up) = &block.upsampler {
                // Up-sample to the size of the skip tensor that comes next, as diffusers does
                // when a side is not a multiple of 2^levels (250 -> 125 -> 63 -> 32 and back).
                let target = skips
                    .last()
                    .map(|s| (g.dims(*s)[2], g.dims(*s)[3]))
                    .ok_or_else(|| Error::Input("UNet skip connections ran out".into()))?;
                let upsampled = g.upsample_nearest(h, target.0, target.1)?;
                h = up.forward(g, upsampled, Activation::None, None)?;
            }
        }

        self.conv_out
            .forward_normed(g, h, &self.conv_norm_out, true, Activation::None, None)
    }
}
