//! The audio branch of CLAP, transformers' `ClapAudioModel` with its projection (HTSAT, a Swin
//! transformer over a log-mel image; transformers `models/clap/modeling_clap.py`), for
//! `enable_fusion = False`.
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
//! Checked stage by stage against the goldens of `scripts/reference/make_clap_reference.py`.

use serde::Deserialize;

use crate::checkpoint::{Checkpoint, Weights};
use crate::engine::{Activation, Graph, Tensor, Var};
use crate::error::{Error, Result};
use crate::model::nn::{LayerNorm, Linear, Loader};

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
struct ClapAudioFront {
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
    async fn load(
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
        Ok(Self {
            bn_scale: l.constant(&[bins], &scale)?,
            bn_shift: l.constant(&[bins], &shift)?,
            patch_weight: l.weight(&[c0, p * p], &weight)?,
            patch_bias: l.vector(&proj, "bias", &[c0]).await?,
            // nn.LayerNorm's default eps, not the config's.
            patch_norm: LayerNorm::load(l, &patch.pp("norm"), c0, 1e-5).await?,
            resize: l.constant(&[time, frames], &bicubic_resize_matrix(frames, time))?,
            frames,
            config: config.clone(),
        })
    }

    /// Records bn0, the mel image and the patch embeddings of `features` (`[B, frames, bins]`),
    /// returning `(mel_image [B, spec, spec], patch_embeds [B, grid * grid, C0])`.
    fn forward(&self, g: &mut Graph, features: Var) -> Result<(Var, Var)> {
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

/// The additive mask between shifted regions (transformers uses -100, not -inf).
const REGION_MASK: f32 = -100.0;

/// One Swin block (`ClapAudioSwinLayer`) on an `n x n` grid.
struct SwinBlock {
    norm_before: LayerNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    norm_after: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    /// `[heads, N, N]`: the relative position bias of a window.
    bias: Tensor,
    /// `[windows, 1, N, N]`: the region mask of a shifted block.
    mask: Option<Tensor>,
    heads: usize,
    grid: usize,
    window: usize,
    shift: usize,
}

impl SwinBlock {
    #[allow(clippy::too_many_arguments)]
    async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        dim: usize,
        heads: usize,
        grid: usize,
        window: usize,
        shift: usize,
        c: &ClapAudioConfig,
    ) -> Result<Self> {
        let eps = c.layer_norm_eps as f32;
        let hidden = (dim as f64 * c.mlp_ratio) as usize;
        let att = vb.pp("attention");
        let own = att.pp("self");
        let span = 2 * window - 1;
        let table = own
            .f32("relative_position_bias_table", &[span * span, heads])
            .await?;
        let tokens = window * window;
        let mut bias = vec![0.0f32; heads * tokens * tokens];
        for i in 0..tokens {
            for j in 0..tokens {
                let (hi, wi, hj, wj) = (i / window, i % window, j / window, j % window);
                let index = (hi + window - 1 - hj) * span + (wi + window - 1 - wj);
                for h in 0..heads {
                    bias[(h * tokens + i) * tokens + j] = table[index * heads + h];
                }
            }
        }
        let mask = if shift > 0 {
            let mask = region_mask(grid, window, shift);
            let windows = (grid / window) * (grid / window);
            Some(l.constant(&[windows, 1, tokens, tokens], &mask)?)
        } else {
            None
        };
        Ok(Self {
            norm_before: LayerNorm::load(l, &vb.pp("layernorm_before"), dim, eps).await?,
            query: Linear::load(l, &own.pp("query"), dim, dim, c.qkv_bias).await?,
            key: Linear::load(l, &own.pp("key"), dim, dim, c.qkv_bias).await?,
            value: Linear::load(l, &own.pp("value"), dim, dim, c.qkv_bias).await?,
            attn_out: Linear::load(l, &att.pp("output").pp("dense"), dim, dim, true).await?,
            norm_after: LayerNorm::load(l, &vb.pp("layernorm_after"), dim, eps).await?,
            fc1: Linear::load(l, &vb.pp("intermediate").pp("dense"), dim, hidden, true).await?,
            fc2: Linear::load(l, &vb.pp("output").pp("dense"), hidden, dim, true).await?,
            bias: l.constant(&[heads, tokens, tokens], &bias)?,
            mask,
            heads,
            grid,
            window,
            shift,
        })
    }

    /// `x [B, n * n, C]` through the block.
    fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let none = Activation::None;
        let dims = g.dims(x).to_vec();
        let (batch, dim) = (dims[0], dims[2]);
        let (n, ws, heads) = (self.grid, self.window, self.heads);
        let (per_side, tokens, head_dim) = (n / ws, ws * ws, dim / heads);
        let windows = per_side * per_side;
        let h = self.norm_before.forward(g, x)?;
        let h = g.reshape(h, [batch, n, n, dim])?;
        let h = roll(g, h, n - self.shift % n)?;
        let h = g.reshape(h, [batch, per_side, ws, per_side, ws, dim])?;
        let h = g.permute(h, &[0, 1, 3, 2, 4, 5])?;
        let h = g.reshape(h, [batch * windows, tokens, dim])?;
        let split = |g: &mut Graph, v: Var, perm: &[usize], last: [usize; 2]| -> Result<Var> {
            let v = g.reshape(v, [batch * windows, tokens, heads, head_dim])?;
            let v = g.permute(v, perm)?;
            Ok(g.reshape(v, [batch * windows * heads, last[0], last[1]])?)
        };
        let q = self.query.forward(g, h, none, None)?;
        let k = self.key.forward(g, h, none, None)?;
        let v = self.value.forward(g, h, none, None)?;
        let q = split(g, q, &[0, 2, 1, 3], [tokens, head_dim])?;
        let kt = split(g, k, &[0, 2, 3, 1], [head_dim, tokens])?;
        let v = split(g, v, &[0, 2, 1, 3], [tokens, head_dim])?;
        let scores = g.matmul(q, kt, 1.0 / (head_dim as f32).sqrt())?;
        let scores = g.reshape(scores, [batch, windows, heads, tokens, tokens])?;
        let bias = g.weight(&self.bias);
        let mut scores = g.add(scores, bias)?;
        if let Some(mask) = &self.mask {
            let mask = g.weight(mask);
            scores = g.add(scores, mask)?;
        }
        let probs = g.softmax(scores, 1.0)?;
        let probs = g.reshape(probs, [batch * windows * heads, tokens, tokens])?;
        let a = g.matmul(probs, v, 1.0)?;
        let a = g.reshape(a, [batch * windows, heads, tokens, head_dim])?;
        let a = g.permute(a, &[0, 2, 1, 3])?;
        let a = g.reshape(a, [batch * windows, tokens, dim])?;
        let a = self.attn_out.forward(g, a, none, None)?;
        let a = g.reshape(a, [batch, per_side, per_side, ws, ws, dim])?;
        let a = g.permute(a, &[0, 1, 3, 2, 4, 5])?;
        let a = g.reshape(a, [batch, n, n, dim])?;
        let a = roll(g, a, self.shift)?;
        let a = g.reshape(a, [batch, n * n, dim])?;
        let x = g.add(x, a)?;
        let h = self.norm_after.forward(g, x)?;
        let h = self.fc1.forward(g, h, Activation::Gelu, None)?;
        self.fc2.forward(g, h, none, Some(x))
    }
}

/// `torch.roll(x, (by, by), dims=(1, 2))` on `[B, n, n, C]`, `by` in `0..n`.
fn roll(g: &mut Graph, x: Var, by: usize) -> Result<Var> {
    let n = g.dims(x)[1];
    let by = by % n;
    if by == 0 {
        return Ok(x);
    }
    let mut x = x;
    for axis in [1, 2] {
        let tail = g.slice(x, axis, n - by, n)?;
        let head = g.slice(x, axis, 0, n - by)?;
        x = g.concat(tail, head, axis)?;
    }
    Ok(x)
}

/// The mask of a shifted block: per window `[N, N]`, 0 within a region of the rolled grid and
/// [`REGION_MASK`] across regions; regions per axis are `[0, n - ws)`, `[n - ws, n - s)`,
/// `[n - s, n)`.
fn region_mask(grid: usize, window: usize, shift: usize) -> Vec<f32> {
    let region = |i: usize| {
        if i < grid - window {
            0
        } else if i < grid - shift {
            1
        } else {
            2
        }
    };
    let per_side = grid / window;
    let tokens = window * window;
    let mut mask = Vec::with_capacity(per_side * per_side * tokens * tokens);
    for wh in 0..per_side {
        for ww in 0..per_side {
            let ids: Vec<usize> = (0..tokens)
                .map(|t| {
                    let (h, w) = (wh * window + t / window, ww * window + t % window);
                    region(h) * 3 + region(w)
                })
                .collect();
            for &a in &ids {
                mask.extend(ids.iter().map(|&b| if a == b { 0.0 } else { REGION_MASK }));
            }
        }
    }
    mask
}

/// Patch merging (`ClapAudioPatchMerging`): each 2x2 neighbourhood's tokens concatenated, the
/// row offset varying fastest, then LayerNorm and a bias-free halving Linear.
struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

impl PatchMerging {
    fn forward(&self, g: &mut Graph, x: Var, grid: usize) -> Result<Var> {
        let dims = g.dims(x).to_vec();
        let (batch, dim) = (dims[0], dims[2]);
        let half = grid / 2;
        let x = g.reshape(x, [batch, half, 2, half, 2, dim])?;
        let x = g.permute(x, &[0, 1, 3, 4, 2, 5])?;
        let x = g.reshape(x, [batch, half * half, 4 * dim])?;
        let x = self.norm.forward(g, x)?;
        self.reduction.forward(g, x, Activation::None, None)
    }
}

/// One stage: its blocks on a `grid x grid` grid, then (but in the last) patch merging.
struct Stage {
    blocks: Vec<SwinBlock>,
    merging: Option<PatchMerging>,
    grid: usize,
}

/// What [`ClapAudioModel::forward`] can also hand back, for tests that check each stage.
#[derive(Default)]
pub struct Taps(pub Vec<(String, Var)>);

impl Taps {
    fn tap(&mut self, name: impl Into<String>, var: Var) {
        self.0.push((name.into(), var));
    }
}

/// `ClapAudioModel` and `audio_projection` of a transformers `ClapModel` on the GPU.
pub struct ClapAudioModel {
    pub config: ClapAudioConfig,
    front: ClapAudioFront,
    stages: Vec<Stage>,
    norm: LayerNorm,
    projection1: Linear,
    projection2: Linear,
    /// `[1, L]` of `1 / L`: the mean over the last stage's `L` tokens as a product.
    mean: Tensor,
    projection_act: Activation,
}

impl ClapAudioModel {
    /// Checks `config` for what the port implements; `path` names it in errors.
    pub fn check(config: &ClapAudioConfig, path: &std::path::Path) -> Result<()> {
        let bad = |message: String| Error::Config {
            path: path.to_path_buf(),
            message: format!("audio_config: {message}"),
        };
        let c = config;
        if c.enable_fusion {
            return Err(bad(
                "enable_fusion (the fused CLAP models) is not supported".into(),
            ));
        }
        if c.depths.is_empty() || c.depths.len() != c.num_attention_heads.len() {
            return Err(bad(format!(
                "depths {:?} and num_attention_heads {:?} must be as long, and not empty",
                c.depths, c.num_attention_heads
            )));
        }
        if c.depths.len() > 8 || c.depths.iter().any(|&d| !(1..=64).contains(&d)) {
            return Err(bad(format!("depths {:?} are out of range", c.depths)));
        }
        if c.patch_stride != [c.patch_size, c.patch_size]
            || !(1..=16).contains(&c.patch_size)
            || c.patch_embed_input_channels != 1
            || !c.enable_patch_layer_norm
            || !c.flatten_patch_embeds
        {
            return Err(bad(
                "only square patches with the stride of their size, one input channel and a \
                 patch LayerNorm are supported"
                    .into(),
            ));
        }
        if c.num_mel_bins == 0
            || c.spec_size == 0
            || !c.spec_size.is_multiple_of(c.num_mel_bins)
            || !c.spec_size.is_multiple_of(c.patch_size)
            || c.spec_size > 4096
        {
            return Err(bad(format!(
                "spec_size {} must be a multiple of num_mel_bins {} and patch_size {}",
                c.spec_size, c.num_mel_bins, c.patch_size
            )));
        }
        let stages = c.depths.len();
        let mut grid = c.spec_size / c.patch_size;
        let window = c.window_size;
        for (i, &heads) in c.num_attention_heads.iter().enumerate() {
            let dim = c.patch_embeds_hidden_size << i;
            if heads == 0 || !dim.is_multiple_of(heads) || dim > 16_384 {
                return Err(bad(format!(
                    "stage {i}: width {dim} does not split into {heads} heads"
                )));
            }
            if window == 0
                || !grid.is_multiple_of(window.min(grid))
                || (i + 1 < stages && !grid.is_multiple_of(2))
            {
                return Err(bad(format!(
                    "stage {i}: its {grid}x{grid} grid does not split into windows of \
                     {window} (and halve for the next stage)"
                )));
            }
            if grid < window {
                return Err(bad(format!(
                    "stage {i}: its {grid}x{grid} grid is smaller than the window {window}"
                )));
            }
            grid /= 2;
        }
        if c.hidden_size != c.patch_embeds_hidden_size << (stages - 1) {
            return Err(bad(format!(
                "hidden_size {} is not patch_embeds_hidden_size {} doubled at each of {} \
                 merges",
                c.hidden_size,
                c.patch_embeds_hidden_size,
                stages - 1
            )));
        }
        if !(c.mlp_ratio > 0.0 && c.mlp_ratio <= 16.0 && c.layer_norm_eps >= 0.0) {
            return Err(bad("mlp_ratio or layer_norm_eps is out of range".into()));
        }
        if c.hidden_act != "gelu" {
            return Err(bad(format!(
                "hidden_act {:?} is not supported",
                c.hidden_act
            )));
        }
        if c.projection_hidden_act != "relu" {
            return Err(bad(format!(
                "projection_hidden_act {:?} is not supported",
                c.projection_hidden_act
            )));
        }
        Ok(())
    }

    /// Loads the audio tower of a `ClapModel` checkpoint (`audio_model.…`, `audio_projection.…`)
    /// for features of `frames` mel frames.
    pub async fn from_checkpoint(
        l: &Loader<'_>,
        config: ClapAudioConfig,
        ckpt: &Checkpoint,
        frames: usize,
    ) -> Result<Self> {
        Self::check(&config, &ckpt.path().with_file_name("config.json"))?;
        let c = &config;
        let encoder = ckpt.root().pp("audio_model").pp("audio_encoder");
        let front = ClapAudioFront::load(l, &encoder, c, frames).await?;
        let mut stages = Vec::with_capacity(c.depths.len());
        let mut grid = c.spec_size / c.patch_size;
        for (i, (&depth, &heads)) in c.depths.iter().zip(&c.num_attention_heads).enumerate() {
            let dim = c.patch_embeds_hidden_size << i;
            let layer = encoder.pp("layers").pp(i);
            // A grid no larger than the window is one window, never shifted.
            let window = c.window_size.min(grid);
            let mut blocks = Vec::with_capacity(depth);
            for b in 0..depth {
                let shift = if b % 2 == 1 && grid > c.window_size {
                    c.window_size / 2
                } else {
                    0
                };
                let vb = layer.pp("blocks").pp(b);
                blocks.push(SwinBlock::load(l, &vb, dim, heads, grid, window, shift, c).await?);
            }
            let merging = if i + 1 < c.depths.len() {
                let down = layer.pp("downsample");
                Some(PatchMerging {
                    norm: LayerNorm::load(l, &down.pp("norm"), 4 * dim, 1e-5).await?,
                    reduction: Linear::load(l, &down.pp("reduction"), 4 * dim, 2 * dim, false)
                        .await?,
                })
            } else {
                None
            };
            stages.push(Stage {
                blocks,
                merging,
                grid,
            });
            if i + 1 < c.depths.len() {
                grid /= 2;
            }
        }
        let tokens = grid * grid;
        let proj = ckpt.root().pp("audio_projection");
        let (hidden, out) = (c.hidden_size, c.projection_dim);
        Ok(Self {
            front,
            stages,
            norm: LayerNorm::load(l, &encoder.pp("norm"), hidden, 1e-5).await?,
            projection1: Linear::load(l, &proj.pp("linear1"), hidden, out, true).await?,
            projection2: Linear::load(l, &proj.pp("linear2"), out, out, true).await?,
            mean: l.constant(&[1, tokens], &vec![1.0 / tokens as f32; tokens])?,
            projection_act: Activation::Relu,
            config,
        })
    }

    /// Records the tower for `features` (`[B, frames, bins]`), returning the projected audio
    /// embeddings `[B, projection_dim]` (not normalised). `taps` collects the stages' outputs.
    pub fn forward(&self, g: &mut Graph, features: Var, taps: &mut Taps) -> Result<Var> {
        let (image, mut x) = self.front.forward(g, features)?;
        taps.tap("mel_image", image);
        taps.tap("patch_embeds", x);
        for (i, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.blocks.iter().enumerate() {
                x = block.forward(g, x)?;
                taps.tap(format!("stage{i}_block{b}_out"), x);
            }
            taps.tap(format!("stage{i}_out"), x);
            if let Some(merging) = &stage.merging {
                x = merging.forward(g, x, stage.grid)?;
                taps.tap(format!("stage{i}_merged"), x);
            }
        }
        let x = self.norm.forward(g, x)?;
        taps.tap("final_norm", x);
        let dims = g.dims(x).to_vec();
        let (batch, tokens, hidden) = (dims[0], dims[1], dims[2]);
        let xt = g.permute(x, &[0, 2, 1])?;
        let xt = g.reshape(xt, [batch * hidden, tokens])?;
        let mean = g.weight(&self.mean);
        let pooled = g.linear(xt, mean, None, Activation::None, None)?;
        let pooled = g.reshape(pooled, [batch, hidden])?;
        taps.tap("pooler_output", pooled);
        let h = self
            .projection1
            .forward(g, pooled, self.projection_act, None)?;
        let embeds = self.projection2.forward(g, h, Activation::None, None)?;
        taps.tap("audio_embeds_raw", embeds);
        Ok(embeds)
    }
}
