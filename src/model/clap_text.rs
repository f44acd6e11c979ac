//! The text branch of CLAP, transformers' `ClapTextModelWithProjection`: a RoBERTa encoder whose
//! pooled `<s>` token goes through a two-layer projection (transformers
//! `models/clap/modeling_clap.py`, `ClapTextModelWithProjection` and `ClapProjectionLayer`).
//!
//! ```text
//! x = LayerNorm(word[ids] + token_type[0] + position[pos])            eps 1e-12
//! N x (post-LN):  a = attention(q(x), k(x), v(x))                      heads of hidden/heads
//!                 x = LayerNorm(dense(a) + x)
//!                 x = LayerNorm(output(gelu(intermediate(x))) + x)
//! pooled = tanh(pooler(x[:, 0]))
//! text_embeds = linear2(relu(linear1(pooled)))
//! ```
//!
//! Only the real tokens run: the reference pads to 512 and masks the pads with `finfo.min`, which
//! gives them softmax weight exactly 0, so the `<s>` output does not depend on them. Positions
//! follow RoBERTa's `padding_idx` convention (`cumsum(ids != pad) * (ids != pad) + pad`: real
//! tokens 2, 3, …), computed on the host by [`ClapTextModelWithProjection::position_ids`].
//!
//! [`ClapTextModelWithProjection::encode_prompts`] reproduces diffusers' `_encode_prompt`:
//! `[negatives…, prompts…]`, each L2-normalised, the prompt cut at the tokenizer's
//! `model_max_length` and the negative prompt at `projection_dim` tokens (diffusers pads and
//! truncates it to `prompt_embeds.shape[1]`, the embedding width, in
//! `AudioLDMPipeline._encode_prompt`).

use std::path::Path;

use serde::Deserialize;

use crate::checkpoint::{Checkpoint, Weights};
use crate::engine::{Activation, Context, Graph, Tensor, Var};
use crate::error::{Error, Result};
use crate::model::nn::{Embedding, LayerNorm, Linear, Loader};
use crate::model::tokenizer::TextTokenizer;
use crate::model::{ConfigCheck, limits, load_config};

/// A token id, or several (`eos_token_id` may be a list in transformers' configs).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// `config.json` of the text encoder (transformers' `ClapTextConfig`), missing keys taking
/// transformers' defaults; unknown keys (dropouts, `use_cache`, …) are ignored.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClapTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub projection_dim: usize,
    pub projection_hidden_act: String,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIds>,
    pub position_embedding_type: String,
}

impl Default for ClapTextConfig {
    /// transformers' `ClapTextConfig()` (RoBERTa-base with a 512-wide projection).
    fn default() -> Self {
        Self {
            vocab_size: 50265,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            max_position_embeddings: 514,
            type_vocab_size: 1,
            layer_norm_eps: 1e-12,
            projection_dim: 512,
            projection_hidden_act: "relu".into(),
            pad_token_id: Some(1),
            bos_token_id: Some(0),
            eos_token_id: Some(TokenIds::One(2)),
            position_embedding_type: "absolute".into(),
        }
    }
}

impl ClapTextConfig {
    /// The `padding_idx` of the embeddings (RoBERTa: 1).
    pub fn pad_id(&self) -> Result<u32> {
        self.pad_token_id.ok_or_else(|| {
            Error::Input(
                "the text encoder config has no pad_token_id (RoBERTa positions need one)".into(),
            )
        })
    }

    /// The longest sequence the position table allows: positions run from `pad + 1` to
    /// `max_position_embeddings - 1` (512 for RoBERTa's 514 positions).
    pub fn max_tokens(&self) -> usize {
        let pad = self.pad_token_id.unwrap_or(0) as usize;
        self.max_position_embeddings.saturating_sub(pad + 1)
    }

    /// Fails on settings the port does not implement; `path` names the config in the error.
    pub fn check(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        if self.position_embedding_type != "absolute" {
            return Err(bad(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            )));
        }
        let check = ConfigCheck { path };
        check.divides(
            "hidden_size",
            self.hidden_size,
            "attention heads",
            self.num_attention_heads,
        )?;
        check.range("hidden_size", self.hidden_size, 1..=limits::CHANNELS)?;
        check.range(
            "num_hidden_layers",
            self.num_hidden_layers,
            1..=limits::LAYERS,
        )?;
        check.range(
            "intermediate_size",
            self.intermediate_size,
            1..=limits::TOKENS,
        )?;
        check.range("vocab_size", self.vocab_size, 1..=limits::TOKENS)?;
        check.range(
            "max_position_embeddings",
            self.max_position_embeddings,
            1..=limits::TOKENS,
        )?;
        check.range("type_vocab_size", self.type_vocab_size, 1..=limits::LAYERS)?;
        check.range("projection_dim", self.projection_dim, 1..=limits::CHANNELS)?;
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return Err(bad(format!(
                "layer_norm_eps {} must be a non-negative number",
                self.layer_norm_eps
            )));
        }
        if self.pad_token_id.is_none() {
            return Err(bad(
                "pad_token_id is null; RoBERTa positions need one".into()
            ));
        }
        activation(&self.hidden_act).map_err(bad)?;
        activation(&self.projection_hidden_act).map_err(bad)?;
        Ok(())
    }
}

/// transformers' `ACT2FN` names that the engine computes exactly.
fn activation(name: &str) -> std::result::Result<Activation, String> {
    Ok(match name {
        "gelu" => Activation::Gelu,
        "relu" => Activation::Relu,
        "tanh" => Activation::Tanh,
        "silu" | "swish" => Activation::Silu,
        other => return Err(format!("activation {other:?} is not supported")),
    })
}

/// One post-LN RoBERTa layer (`ClapTextLayer`).
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

impl Layer {
    async fn load(l: &Loader<'_>, vb: &Weights<'_>, c: &ClapTextConfig, eps: f32) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let att = vb.pp("attention");
        let s = att.pp("self");
        Ok(Self {
            query: Linear::load(l, &s.pp("query"), h, h, true).await?,
            key: Linear::load(l, &s.pp("key"), h, h, true).await?,
            value: Linear::load(l, &s.pp("value"), h, h, true).await?,
            attn_out: Linear::load(l, &att.pp("output").pp("dense"), h, h, true).await?,
            attn_norm: LayerNorm::load(l, &att.pp("output").pp("LayerNorm"), h, eps).await?,
            intermediate: Linear::load(l, &vb.pp("intermediate").pp("dense"), h, i, true).await?,
            output: Linear::load(l, &vb.pp("output").pp("dense"), i, h, true).await?,
            out_norm: LayerNorm::load(l, &vb.pp("output").pp("LayerNorm"), h, eps).await?,
        })
    }

    fn forward(&self, g: &mut Graph, x: Var, heads: usize, act: Activation) -> Result<Var> {
        let none = Activation::None;
        let q = self.query.forward(g, x, none, None)?;
        let k = self.key.forward(g, x, none, None)?;
        let v = self.value.forward(g, x, none, None)?;
        let head_dim = g.dims(x)[2] / heads;
        let a = g.attention(q, k, v, heads, 1.0 / (head_dim as f32).sqrt())?;
        let x = self.attn_out.forward(g, a, none, Some(x))?;
        let x = self.attn_norm.forward(g, x)?;
        let h = self.intermediate.forward(g, x, act, None)?;
        let y = self.output.forward(g, h, none, Some(x))?;
        self.out_norm.forward(g, y)
    }
}

/// `ClapTextModelWithProjection` on the GPU.
pub struct ClapTextModelWithProjection {
    pub config: ClapTextConfig,
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    /// `token_type_embeddings.weight [type_vocab, hidden]`, f32 (added, never gathered: every
    /// token has type 0).
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    pooler: Linear,
    projection1: Linear,
    projection2: Linear,
    hidden_act: Activation,
    projection_act: Activation,
}

impl ClapTextModelWithProjection {
    /// Loads a `text_encoder/` folder: `config.json` and `model.safetensors` (or `.bin`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        pollster::block_on(Self::load_async(loader, dir))
    }

    /// [`Self::load`] without blocking (a browser reads each tensor when it is needed).
    pub async fn load_async(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        let config: ClapTextConfig = load_config(dir)?;
        config.check(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open_dir(dir)?;
        Self::from_checkpoint(loader, config, &ckpt).await
    }

    /// Builds the model from a checked config and a checkpoint with transformers' names
    /// (`text_model.…`, `text_projection.…`).
    pub async fn from_checkpoint(
        loader: &Loader<'_>,
        config: ClapTextConfig,
        ckpt: &Checkpoint,
    ) -> Result<Self> {
        config.check(&ckpt.path().with_file_name("config.json"))?;
        let c = &config;
        let eps = c.layer_norm_eps as f32;
        let (h, p) = (c.hidden_size, c.projection_dim);
        let root = ckpt.root();
        let tm = root.pp("text_model");
        let emb = tm.pp("embeddings");
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            layers.push(Layer::load(loader, &tm.pp("encoder").pp("layer").pp(i), c, eps).await?);
        }
        let proj = root.pp("text_projection");
        Ok(Self {
            word_embeddings: Embedding::load(loader, &emb.pp("word_embeddings"), c.vocab_size, h)
                .await?,
            position_embeddings: Embedding::load(
                loader,
                &emb.pp("position_embeddings"),
                c.max_position_embeddings,
                h,
            )
            .await?,
            token_type_embeddings: loader
                .vector(
                    &emb.pp("token_type_embeddings"),
                    "weight",
                    &[c.type_vocab_size, h],
                )
                .await?,
            embeddings_norm: LayerNorm::load(loader, &emb.pp("LayerNorm"), h, eps).await?,
            layers,
            pooler: Linear::load(loader, &tm.pp("pooler").pp("dense"), h, h, true).await?,
            projection1: Linear::load(loader, &proj.pp("linear1"), h, p, true).await?,
            projection2: Linear::load(loader, &proj.pp("linear2"), p, p, true).await?,
            hidden_act: activation(&c.hidden_act).map_err(Error::Input)?,
            projection_act: activation(&c.projection_hidden_act).map_err(Error::Input)?,
            config,
        })
    }

    /// RoBERTa's position ids for one sequence: `cumsum(ids != pad) * (ids != pad) + pad`, i.e.
    /// `pad + 1, pad + 2, …` for the tokens and `pad` for a pad token (one written in the prompt
    /// text, say; the pipeline's own pads never reach the model here).
    pub fn position_ids(&self, ids: &[u32]) -> Vec<u32> {
        let pad = self.config.pad_token_id.unwrap_or(1);
        let mut count = 0;
        ids.iter()
            .map(|&id| {
                if id == pad {
                    pad
                } else {
                    count += 1;
                    pad + count
                }
            })
            .collect()
    }

    /// Records the encoder for `ids` and `positions` (u32 `[B, n]`, `n` real tokens each, no
    /// pads to mask), returning the projected `text_embeds [B, projection_dim]` (not normalised).
    pub fn forward(&self, g: &mut Graph, ids: Var, positions: Var) -> Result<Var> {
        let dims = g.dims(ids).to_vec();
        let &[batch, _tokens] = dims.as_slice() else {
            return Err(Error::Input(format!(
                "text encoder: token ids must be [batch, tokens], got {:?}",
                dims
            )));
        };
        if g.dims(positions) != dims.as_slice() {
            return Err(Error::Input(format!(
                "text encoder: position ids {:?} do not match token ids {dims:?}",
                g.dims(positions)
            )));
        }
        let h = self.config.hidden_size;
        // (word + token_type[0]) + position, in the reference's order.
        let words = self.word_embeddings.forward(g, ids)?;
        let mut token_type0 = g.weight(&self.token_type_embeddings);
        if self.config.type_vocab_size > 1 {
            token_type0 = g.slice(token_type0, 0, 0, 1)?;
        }
        let x = g.add(words, token_type0)?;
        let pos = self.position_embeddings.forward(g, positions)?;
        let x = g.add(x, pos)?;
        let mut x = self.embeddings_norm.forward(g, x)?;
        for layer in &self.layers {
            x = layer.forward(g, x, self.config.num_attention_heads, self.hidden_act)?;
        }
        let first = g.slice(x, 1, 0, 1)?;
        let first = g.reshape(first, [batch, h])?;
        let pooled = self.pooler.forward(g, first, Activation::Tanh, None)?;
        let hidden = self
            .projection1
            .forward(g, pooled, self.projection_act, None)?;
        self.projection2.forward(g, hidden, Activation::None, None)
    }

    /// Records one sequence of ids (uploaded here) as a batch of one: `text_embeds [1, P]`.
    pub fn record(&self, g: &mut Graph, ids: &[u32]) -> Result<Var> {
        self.check_ids(ids)?;
        let positions = self.position_ids(ids);
        let n = ids.len();
        let ctx = g.context().clone();
        let ids_t = Tensor::from_u32(&ctx, [1, n], ids)?;
        let pos_t = Tensor::from_u32(&ctx, [1, n], &positions)?;
        let (ids_v, pos_v) = (g.input(&ids_t), g.input(&pos_t));
        self.forward(g, ids_v, pos_v)
    }

    /// Fails unless `ids` is a sequence the encoder can run: non-empty, ids in the vocabulary,
    /// positions within the table.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let c = &self.config;
        if ids.is_empty() {
            return Err(Error::Input(
                "text encoder: empty token sequence (a prompt encodes to at least <s> </s>)".into(),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::Input(format!(
                "text encoder: token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let last = self.position_ids(ids).into_iter().max().unwrap_or(0) as usize;
        if last >= c.max_position_embeddings {
            return Err(Error::Input(format!(
                "text encoder: {} tokens need position {last}, but the model has {} positions \
                 (at most {} tokens)",
                ids.len(),
                c.max_position_embeddings,
                c.max_tokens()
            )));
        }
        Ok(())
    }

    /// Runs each sequence as its own batch-1 chain of one graph and returns their L2-normalised
    /// (`x / max(||x||, 1e-12)`) embeddings in order, `[sequences, projection_dim]` on the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn embed_ids(&self, ctx: &Context, sequences: &[Vec<u32>]) -> Result<Tensor> {
        pollster::block_on(self.embed_ids_async(ctx, sequences))
    }

    /// [`Self::embed_ids`] without blocking.
    pub async fn embed_ids_async(&self, ctx: &Context, sequences: &[Vec<u32>]) -> Result<Tensor> {
        if sequences.is_empty() {
            return Err(Error::Input("text encoder: no sequences to encode".into()));
        }
        let mut g = Graph::new(ctx);
        let mut out: Option<Var> = None;
        for ids in sequences {
            let e = self.record(&mut g, ids)?;
            out = Some(match out {
                None => e,
                Some(prev) => g.concat(prev, e, 0)?,
            });
        }
        let out = g.l2_normalize(out.expect("at least one sequence"), 1e-12)?;
        g.output(out)?;
        let mut exe = g.build()?;
        exe.run_async().await?;
        Ok(exe.tensor(out)?)
    }

    /// The token limit of a prompt: the tokenizer's `model_max_length` (512), within what the
    /// position table allows.
    pub fn prompt_max_len(&self, tokenizer: &TextTokenizer) -> usize {
        tokenizer.model_max_length().min(self.config.max_tokens())
    }

    /// The token limit of a negative prompt: diffusers uses `prompt_embeds.shape[1]`, the
    /// projection width (512 in the real model, where it equals the prompt limit).
    pub fn negative_max_len(&self) -> usize {
        self.config.projection_dim.min(self.config.max_tokens())
    }

    /// diffusers' `_encode_prompt` with classifier-free guidance: `[negatives…, prompts…]`, each
    /// row L2-normalised, `[2B, projection_dim]` (or `[B, P]` when `negative_prompts` is `None`,
    /// i.e. no guidance). diffusers' `negative_prompt=None` is `""` for every prompt; a list of
    /// negatives must match the prompts one for one. Repeating rows for several waveforms per
    /// prompt is the caller's.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_prompts(
        &self,
        ctx: &Context,
        tokenizer: &TextTokenizer,
        prompts: &[&str],
        negative_prompts: Option<&[&str]>,
    ) -> Result<Tensor> {
        if prompts.is_empty() {
            return Err(Error::Input("no prompt given".into()));
        }
        let mut sequences = Vec::new();
        if let Some(negatives) = negative_prompts {
            if negatives.len() != prompts.len() {
                return Err(Error::Input(format!(
                    "{} negative prompts for {} prompts",
                    negatives.len(),
                    prompts.len()
                )));
            }
            let max_len = self.negative_max_len();
            for text in negatives {
                sequences.push(tokenizer.encode(text, max_len)?);
            }
        }
        let max_len = self.prompt_max_len(tokenizer);
        for text in prompts {
            sequences.push(tokenizer.encode(text, max_len)?);
        }
        self.embed_ids(ctx, &sequences)
    }

    /// One prompt's L2-normalised embedding `[projection_dim]`, read back: the text cut at
    /// `max_len` tokens ([`prompt_max_len`](Self::prompt_max_len) for a prompt,
    /// [`negative_max_len`](Self::negative_max_len) for a negative prompt).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn embed_text(
        &self,
        ctx: &Context,
        tokenizer: &TextTokenizer,
        text: &str,
        max_len: usize,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.embed_text_async(ctx, tokenizer, text, max_len))
    }

    /// [`Self::embed_text`] without blocking.
    pub async fn embed_text_async(
        &self,
        ctx: &Context,
        tokenizer: &TextTokenizer,
        text: &str,
        max_len: usize,
    ) -> Result<Vec<f32>> {
        let ids = tokenizer.encode(text, max_len)?;
        let embeds = self.embed_ids_async(ctx, &[ids]).await?;
        Ok(embeds.to_vec_f32_async(ctx).await?)
    }
}
