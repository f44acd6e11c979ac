//! The recorded op: what an op computes, its operands and parameters, with no kernel chosen. The
//! CPU backend runs these ([`crate::engine::cpu::executor`]); the wgpu backend lowers each builder
//! call to WGSL dispatches as it is recorded (it needs the device's limits to split work), so its
//! graphs keep [`super::Op`]s instead.

use super::{Coef, Var};
use crate::engine::ops::Activation;
use crate::engine::ops::attention::Attention;
use crate::engine::ops::conv::{Conv2dOptions, ConvTranspose1dOptions};
use crate::engine::ops::matmul::Gemm;

/// One recorded op and the intermediate it writes.
pub(crate) struct Node {
    /// The builder that recorded it (`linear`, `conv2d`, ...), for errors and profiles.
    pub label: String,
    pub kind: OpKind,
    pub output: Var,
}

/// What a node computes, in the terms of the builder that recorded it (see `ops/`).
pub(crate) enum OpKind {
    /// `act(alpha * A B + bias) + residual` over strided views ([`crate::engine::Graph::gemm`]).
    Gemm(Gemm),
    /// `x [B, Cin, H, W]` with a weight in PyTorch's layout `[Cout, Cin, kh, kw]`.
    Conv2d {
        x: Var,
        weight: Var,
        bias: Option<Var>,
        residual: Option<Var>,
        opts: Conv2dOptions,
    },
    /// `x [B, Cin, L]` with a weight in PyTorch's layout `[Cin, Cout, k]`.
    ConvTranspose1d {
        x: Var,
        weight: Var,
        bias: Option<Var>,
        opts: ConvTranspose1dOptions,
    },
    Attention(Attention),
    GroupNorm {
        x: Var,
        groups: usize,
        gamma: Option<Var>,
        beta: Option<Var>,
        eps: f32,
        silu: bool,
    },
    LayerNorm {
        x: Var,
        gamma: Var,
        beta: Var,
        eps: f32,
    },
    L2Normalize {
        x: Var,
        eps: f32,
    },
    Softmax {
        x: Var,
        scale: f32,
    },
    /// `act(alpha * x + beta)`.
    Unary {
        x: Var,
        act: Activation,
        alpha: Coef,
        beta: Coef,
    },
    /// `alpha * a + beta * b`, or `a * b` when `mul`, `b` broadcast onto `a`.
    Binary {
        a: Var,
        b: Var,
        mul: bool,
        alpha: Coef,
        beta: Coef,
    },
    Geglu {
        x: Var,
    },
    Permute {
        x: Var,
        perm: Vec<usize>,
    },
    Slice {
        x: Var,
        axis: usize,
        start: usize,
        end: usize,
    },
    Concat {
        a: Var,
        b: Var,
        axis: usize,
    },
    Embedding {
        ids: Var,
        table: Var,
    },
    TimestepEmbedding {
        t: Coef,
        batch: usize,
        dim: usize,
        flip_sin_to_cos: bool,
        downscale_freq_shift: f32,
        max_period: f32,
    },
    UpsampleNearest {
        x: Var,
        out_h: usize,
        out_w: usize,
    },
}

impl OpKind {
    /// Every var the op reads.
    pub fn inputs(&self) -> Vec<Var> {
        let with = |vars: &[Var], optional: &[Option<Var>]| {
            let mut all = vars.to_vec();
            all.extend(optional.iter().flatten());
            all
        };
        match self {
            OpKind::Gemm(g) => with(&[g.a.var, g.b.var], &[g.bias, g.residual]),
            OpKind::Conv2d {
                x,
                weight,
                bias,
                residual,
                ..
            } => with(&[*x, *weight], &[*bias, *residual]),
            OpKind::ConvTranspose1d {
                x, weight, bias, ..
            } => with(&[*x, *weight], &[*bias]),
            OpKind::Attention(a) => vec![a.q.var, a.k.var, a.v.var],
            OpKind::GroupNorm { x, gamma, beta, .. } => with(&[*x], &[*gamma, *beta]),
            OpKind::LayerNorm { x, gamma, beta, .. } => vec![*x, *gamma, *beta],
            OpKind::L2Normalize { x, .. }
            | OpKind::Softmax { x, .. }
            | OpKind::Unary { x, .. }
            | OpKind::Geglu { x }
            | OpKind::Permute { x, .. }
            | OpKind::Slice { x, .. }
            | OpKind::UpsampleNearest { x, .. } => vec![*x],
            OpKind::Binary { a, b, .. } | OpKind::Concat { a, b, .. } => vec![*a, *b],
            OpKind::Embedding { ids, table } => vec![*ids, *table],
            OpKind::TimestepEmbedding { .. } => Vec::new(),
        }
    }
}
