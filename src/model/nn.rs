//! The layers the four networks share (PyTorch `nn` modules), each loaded by its checkpoint names
//! and recorded onto a [`Graph`] by `forward`.

use crate::checkpoint::Weights;
use crate::engine::ops::conv::{
    Conv1dOptions, Conv2dOptions, ConvTranspose1dOptions, InputNorm, conv_transpose1d_weight,
    conv_weight,
};
use crate::engine::{Activation, Context, DType, Graph, Tensor, Var};
use crate::error::Result;

/// How weights are stored on the GPU: f32 (the reference path) or f16 (half the memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Precision {
    pub weights: DType,
}

impl Default for Precision {
    fn default() -> Self {
        Self::weights_f16(false)
    }
}

impl Precision {
    /// f16 weights when `f16`, else the f32 reference path.
    pub fn weights_f16(f16: bool) -> Self {
        Self {
            weights: if f16 { DType::F16 } else { DType::F32 },
        }
    }

    /// The context a model loaded at this precision records its graphs on. With f16 weights,
    /// GEMMs and convolutions also compute in f16 (f32 accumulation) where the adapter has
    /// `SHADER_F16` and runs the GPU kernels: a handle of `ctx` with f16 arithmetic, so that
    /// whoever else uses `ctx` keeps its variants. Elsewhere the weights are stored in f16 and the
    /// arithmetic stays f32, which is said in the log. f32 weights take `ctx` as it is
    /// (`AUDIOLDM_KERNELS` or a test may have forced f16 arithmetic on it).
    pub fn arithmetic_context(self, ctx: &Context) -> Context {
        if self.weights != DType::F16 {
            return ctx.clone();
        }
        let variants = ctx.variants();
        let name = &ctx.adapter_info().name;
        if !ctx.capabilities().shader_f16 {
            tracing::warn!(
                "{name} has no SHADER_F16: --f16 stores the weights in f16 and computes in f32"
            );
            return ctx.clone();
        }
        if !variants.tiles {
            tracing::info!(
                "{name} runs the CPU adapters' kernels: --f16 stores the weights in f16 and \
                 computes in f32 (f16 arithmetic is no faster there)"
            );
            return ctx.clone();
        }
        ctx.with_variants(crate::engine::KernelVariants {
            f16_math: true,
            ..variants
        })
        .unwrap_or_else(|e| {
            tracing::warn!("{e}");
            ctx.clone()
        })
    }
}

/// Loads tensors from a checkpoint onto the GPU.
#[derive(Clone, Copy)]
pub struct Loader<'a> {
    pub ctx: &'a Context,
    pub precision: Precision,
}

impl Loader<'_> {
    /// A matrix or convolution weight, stored in the chosen precision.
    pub fn weight(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Ok(Tensor::from_f32(
            self.ctx,
            shape,
            self.precision.weights,
            data,
        )?)
    }

    /// A tensor computed at load (folded norm statistics, masks, resampling matrices): f32.
    pub fn constant(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Ok(Tensor::from_f32(self.ctx, shape, DType::F32, data)?)
    }

    /// Biases, norm affines, embeddings that are added: always f32.
    pub async fn vector(&self, vb: &Weights<'_>, name: &str, shape: &[usize]) -> Result<Tensor> {
        let data = vb.f32(name, shape).await?;
        Ok(Tensor::from_f32(self.ctx, shape, DType::F32, &data)?)
    }

    async fn optional_bias(
        &self,
        vb: &Weights<'_>,
        bias: bool,
        n: usize,
    ) -> Result<Option<Tensor>> {
        Ok(if bias {
            Some(self.vector(vb, "bias", &[n]).await?)
        } else {
            None
        })
    }
}

/// `nn.Linear`: `y = x W^T + b`, weight `[out, in]`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        inputs: usize,
        outputs: usize,
        bias: bool,
    ) -> Result<Self> {
        let w = vb.f32("weight", &[outputs, inputs]).await?;
        Ok(Self {
            weight: l.weight(&[outputs, inputs], &w)?,
            bias: l.optional_bias(vb, bias, outputs).await?,
        })
    }

    /// `act(x W^T + b) + residual`.
    pub fn forward(
        &self,
        g: &mut Graph,
        x: Var,
        act: Activation,
        residual: Option<Var>,
    ) -> Result<Var> {
        let w = g.weight(&self.weight);
        let b = self.bias.as_ref().map(|b| g.weight(b));
        Ok(g.linear(x, w, b, act, residual)?)
    }
}

/// `nn.Conv2d` (groups 1), weight laid out at load for the backend (see [`conv_weight`]).
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub options: Conv2dOptions,
}

impl Conv2d {
    /// A square-kernel convolution with PyTorch's symmetric `padding`.
    pub async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let w = vb.f32("weight", &[cout, cin, kernel, kernel]).await?;
        let (shape, laid) = conv_weight(l.ctx, &w, cout, cin, kernel, kernel);
        Ok(Self {
            weight: l.weight(&shape, &laid)?,
            bias: l.optional_bias(vb, true, cout).await?,
            options: Conv2dOptions::same_padding(stride, padding),
        })
    }

    pub fn forward(
        &self,
        g: &mut Graph,
        x: Var,
        act: Activation,
        residual: Option<Var>,
    ) -> Result<Var> {
        let w = g.weight(&self.weight);
        let b = self.bias.as_ref().map(|b| g.weight(b));
        let options = Conv2dOptions {
            act,
            ..self.options
        };
        Ok(g.conv2d(x, w, b, residual, options)?)
    }

    /// `conv(norm(x))`, `norm` a GroupNorm followed by SiLU when `silu`. Where the context's
    /// kernel variants fuse norms, the GroupNorm is applied as the convolution reads its input
    /// (statistics first; the normalised tensor is never written); else it is an op of its own.
    pub fn forward_normed(
        &self,
        g: &mut Graph,
        x: Var,
        norm: &GroupNorm,
        silu: bool,
        act: Activation,
        residual: Option<Var>,
    ) -> Result<Var> {
        if !g.context().variants().fuse_norm {
            let h = norm.forward(g, x, silu)?;
            return self.forward(g, h, act, residual);
        }
        let stats = g.group_norm_stats(x, norm.groups, norm.eps)?;
        let input_norm = InputNorm {
            stats,
            gamma: g.weight(&norm.gamma),
            beta: g.weight(&norm.beta),
            groups: norm.groups,
            silu,
        };
        let w = g.weight(&self.weight);
        let b = self.bias.as_ref().map(|b| g.weight(b));
        let options = Conv2dOptions {
            act,
            input_norm: Some(input_norm),
            ..self.options
        };
        Ok(g.conv2d(x, w, b, residual, options)?)
    }
}

/// `nn.Conv1d` (groups 1), weight laid out at load for the backend (see [`conv_weight`]).
pub struct Conv1d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub options: Conv1dOptions,
}

impl Conv1d {
    pub async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        cin: usize,
        cout: usize,
        kernel: usize,
        dilation: usize,
        padding: usize,
    ) -> Result<Self> {
        let w = vb.f32("weight", &[cout, cin, kernel]).await?;
        let (shape, laid) = conv_weight(l.ctx, &w, cout, cin, 1, kernel);
        Ok(Self {
            weight: l.weight(&shape, &laid)?,
            bias: l.optional_bias(vb, true, cout).await?,
            options: Conv1dOptions {
                padding,
                dilation,
                ..Conv1dOptions::default()
            },
        })
    }

    /// `act(conv(leaky_relu(x)) + b) + residual`, the leaky ReLU on the input only if asked.
    pub fn forward(
        &self,
        g: &mut Graph,
        x: Var,
        input_leaky_relu: Option<f32>,
        act: Activation,
        residual: Option<Var>,
    ) -> Result<Var> {
        let w = g.weight(&self.weight);
        let b = self.bias.as_ref().map(|b| g.weight(b));
        let options = Conv1dOptions {
            act,
            input_leaky_relu,
            ..self.options
        };
        Ok(g.conv1d(x, w, b, residual, options)?)
    }
}

/// `nn.ConvTranspose1d` (groups 1), weight re-laid out at load for the phase-by-phase
/// convolution (see [`conv_transpose1d_weight`]).
pub struct ConvTranspose1d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub options: ConvTranspose1dOptions,
}

impl ConvTranspose1d {
    pub async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let w = vb.f32("weight", &[cin, cout, kernel]).await?;
        let (shape, laid) = conv_transpose1d_weight(l.ctx, &w, cin, cout, kernel, stride);
        Ok(Self {
            weight: l.weight(&shape, &laid)?,
            bias: l.optional_bias(vb, true, cout).await?,
            options: ConvTranspose1dOptions {
                kernel_size: kernel,
                stride,
                padding,
                output_padding: 0,
                act: Activation::None,
                input_leaky_relu: None,
            },
        })
    }

    pub fn forward(&self, g: &mut Graph, x: Var, input_leaky_relu: Option<f32>) -> Result<Var> {
        let w = g.weight(&self.weight);
        let b = self.bias.as_ref().map(|b| g.weight(b));
        let options = ConvTranspose1dOptions {
            input_leaky_relu,
            ..self.options
        };
        Ok(g.conv_transpose1d(x, w, b, options)?)
    }
}

/// `nn.GroupNorm` with affine parameters, optionally followed by SiLU in the same kernel.
pub struct GroupNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub groups: usize,
    pub eps: f32,
}

impl GroupNorm {
    pub async fn load(
        l: &Loader<'_>,
        vb: &Weights<'_>,
        groups: usize,
        channels: usize,
        eps: f32,
    ) -> Result<Self> {
        Ok(Self {
            gamma: l.vector(vb, "weight", &[channels]).await?,
            beta: l.vector(vb, "bias", &[channels]).await?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, g: &mut Graph, x: Var, silu: bool) -> Result<Var> {
        let (gamma, beta) = (g.weight(&self.gamma), g.weight(&self.beta));
        Ok(g.group_norm(x, self.groups, Some(gamma), Some(beta), self.eps, silu)?)
    }
}

/// `nn.LayerNorm` over the last dimension.
pub struct LayerNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub async fn load(l: &Loader<'_>, vb: &Weights<'_>, dim: usize, eps: f32) -> Result<Self> {
        Ok(Self {
            gamma: l.vector(vb, "weight", &[dim]).await?,
            beta: l.vector(vb, "bias", &[dim]).await?,
            eps,
        })
    }

    pub fn forward(&self, g: &mut Graph, x: Var) -> Result<Var> {
        let (gamma, beta) = (g.weight(&self.gamma), g.weight(&self.beta));
        Ok(g.layer_norm(x, gamma, beta, self.eps)?)
    }
}

/// `nn.Embedding`: rows of a `[vocab, dim]` table gathered by id.
pub struct Embedding {
    pub table: Tensor,
}

impl Embedding {
    pub async fn load(l: &Loader<'_>, vb: &Weights<'_>, vocab: usize, dim: usize) -> Result<Self> {
        let data = vb.f32("weight", &[vocab, dim]).await?;
        Ok(Self {
            table: l.weight(&[vocab, dim], &data)?,
        })
    }

    pub fn forward(&self, g: &mut Graph, ids: Var) -> Result<Var> {
        let table = g.weight(&self.table);
        Ok(g.embedding(ids, table)?)
    }
}
