//! Normalisations: GroupNorm (optionally fused with SiLU), LayerNorm, L2 normalisation and softmax.
//! Each runs one workgroup per normalised set (a group of one batch item, or a row) over
//! `shaders/norm.wgsl`; statistics use Welford's algorithm merged across the workgroup, through
//! workgroup memory or, where the variants say so, subgroup operations.

use std::ops::Range;

use crate::engine::error::{Result, shape_error};
use crate::engine::graph::{Binding, Graph, OpKind, OpSpec, Params, Var, grid};
use crate::engine::kernel::KernelKey;
use crate::engine::tensor::{DType, Shape};

/// Threads per workgroup for GroupNorm, whose sets are long (up to ~10^5 elements).
const GROUP_WG: usize = 256;

/// Threads per workgroup for a row op: 64 for rows up to 2048 elements, else 256.
fn row_wg(n: usize) -> usize {
    if n <= 2048 { 64 } else { 256 }
}

/// The uniform block of `shaders/norm.wgsl`, in the order of its `Params` struct.
struct NormParams {
    n: usize,
    sets: usize,
    spatial: usize,
    groups: usize,
    cpg: usize,
    eps: f32,
    scale: f32,
    set0: usize,
}

impl NormParams {
    fn rows(n: usize, sets: usize, eps: f32, scale: f32) -> Self {
        Self {
            n,
            sets,
            spatial: 1,
            groups: 1,
            cpg: 1,
            eps,
            scale,
            set0: 0,
        }
    }

    /// The sets `sets` of a GroupNorm of `groups` groups over `n`-element sets (`spatial` per
    /// channel), for one dispatch.
    fn groups(n: usize, sets: &Range<usize>, spatial: usize, groups: usize, eps: f32) -> Self {
        Self {
            n,
            sets: sets.len(),
            spatial,
            groups,
            cpg: n / spatial,
            eps,
            scale: 1.0,
            set0: sets.start,
        }
    }

    fn params(&self) -> Params {
        Params::default()
            .u(self.n)
            .u(self.sets)
            .u(self.spatial)
            .u(self.groups)
            .u(self.cpg)
            .f(self.eps)
            .f(self.scale)
            .u(self.set0)
    }
}

impl Graph {
    /// PyTorch `GroupNorm(groups, C, eps)` over `x [B, C, ...]` (biased variance), with the
    /// per-channel affine `gamma [C]`, `beta [C]` when given, then SiLU when `silu` (the
    /// `norm -> silu` of a diffusers ResnetBlock, fused).
    pub fn group_norm(
        &mut self,
        x: Var,
        groups: usize,
        gamma: Option<Var>,
        beta: Option<Var>,
        eps: f32,
        silu: bool,
    ) -> Result<Var> {
        let op = "group_norm";
        let (xs, channels, spatial) = self.group_layout(op, x, groups)?;
        for (name, affine) in [("gamma", gamma), ("beta", beta)] {
            if let Some(v) = affine {
                self.expect_dtype(op, v, &[DType::F32])?;
                let vs = self.shape(v);
                if vs.numel() != channels {
                    return Err(shape_error(
                        op,
                        format!("{name} {vs} does not match the {channels} channels of input {xs}"),
                    ));
                }
            }
        }
        if self.records_nodes() {
            let kind = OpKind::GroupNorm {
                x,
                groups,
                gamma,
                beta,
                eps,
                silu,
            };
            return self.push_node(op, kind, xs);
        }
        let cpg = channels / groups;
        let n = cpg * spatial;
        let mut key = KernelKey::new("norm.wgsl", "group_norm", 3, 1)
            .define("GROUP_NORM", 1)
            .define("WG", GROUP_WG);
        if gamma.is_some() {
            key = key.define("GAMMA", 1);
        }
        if beta.is_some() {
            key = key.define("BETA", 1);
        }
        if silu {
            key = key.define("ACT_SILU", 1);
        }
        // One dispatch per part of the output (one in all unless it is over one binding); a
        // group never straddles two parts, so each keeps its one-workgroup statistics.
        let y = self.alloc(op, xs.clone(), DType::F32)?;
        let portable = key;
        let key = self.reduction_variant(&portable);
        for sets in self.parts_in_units(op, y, n)? {
            let part = sets.start * n..sets.end * n;
            let params = NormParams::groups(n, &sets, spatial, groups, eps).params();
            self.push_window(
                Binding::elements(y, part.clone()),
                OpSpec {
                    label: op.to_string(),
                    key: key.clone(),
                    inputs: vec![
                        Some(Binding::elements(x, part)),
                        gamma.map(Binding::from),
                        beta.map(Binding::from),
                    ],
                    out_shape: xs.clone(),
                    out_dtype: DType::F32,
                    params,
                    workgroups: grid(sets.len()),
                },
            )?;
            self.offer_portable_reduction(&key, &portable, grid(sets.len()));
        }
        Ok(y)
    }

    /// `portable` (a `norm.wgsl` kernel) with its reductions on subgroups where the context's
    /// variants say so.
    fn reduction_variant(&self, portable: &KernelKey) -> KernelKey {
        portable
            .clone()
            .flag("SUBGROUPS", self.context().variants().subgroups)
    }

    /// For the op recorded last with `key`: the portable kernel stands by if `key` is the
    /// subgroup variant.
    fn offer_portable_reduction(
        &mut self,
        key: &KernelKey,
        portable: &KernelKey,
        workgroups: [u32; 3],
    ) {
        if key != portable {
            self.offer_fallback(portable.clone(), workgroups);
        }
    }

    /// The shape, channels and spatial size of the input `x [B, C, ...]` of a GroupNorm of
    /// `groups` groups; an error when it is not one.
    fn group_layout(&self, op: &str, x: Var, groups: usize) -> Result<(Shape, usize, usize)> {
        self.expect_dtype(op, x, &[DType::F32])?;
        let xs = self.shape(x).clone();
        let (channels, spatial) = match xs.dims() {
            [_, c, rest @ ..] => (*c, rest.iter().product::<usize>()),
            _ => {
                return Err(shape_error(
                    op,
                    format!("input {xs} must be [B, C, ...] (rank >= 2)"),
                ));
            }
        };
        if xs.numel() == 0 {
            return Err(shape_error(op, format!("input {xs} is empty")));
        }
        if groups == 0 || channels % groups != 0 {
            return Err(shape_error(
                op,
                format!("{channels} channels of input {xs} do not split into {groups} groups"),
            ));
        }
        Ok((xs, channels, spatial))
    }

    /// `(shift, mean, rstd)` of every group of `x [B, C, ...]` as `[B * groups, 3]`, computed as
    /// [`Graph::group_norm`] computes them: what a convolution needs to normalise its input as it
    /// reads it ([`crate::engine::ops::conv::InputNorm`]), so the normalised tensor is never written.
    pub fn group_norm_stats(&mut self, x: Var, groups: usize, eps: f32) -> Result<Var> {
        let op = "group_norm_stats";
        let (xs, channels, spatial) = self.group_layout(op, x, groups)?;
        if self.records_nodes() {
            return Err(shape_error(
                op,
                "the CPU backend does not fuse GroupNorm into convolutions; record group_norm",
            ));
        }
        let cpg = channels / groups;
        let n = cpg * spatial;
        let total = xs.numel() / n;
        let portable = KernelKey::new("norm.wgsl", "group_stats", 1, 1)
            .define("GROUP_STATS", 1)
            .define("WG", GROUP_WG);
        let key = self.reduction_variant(&portable);
        let stats = self.alloc(op, Shape(vec![total, 3]), DType::F32)?;
        for sets in self.parts_in_units(op, x, n)? {
            let params = NormParams::groups(n, &sets, spatial, groups, eps).params();
            self.push_window(
                Binding::from(stats),
                OpSpec {
                    label: op.to_string(),
                    key: key.clone(),
                    inputs: vec![Some(Binding::elements(x, sets.start * n..sets.end * n))],
                    out_shape: Shape(vec![total, 3]),
                    out_dtype: DType::F32,
                    params,
                    workgroups: grid(sets.len()),
                },
            )?;
            self.offer_portable_reduction(&key, &portable, grid(sets.len()));
        }
        Ok(stats)
    }

    /// PyTorch `LayerNorm(D, eps)` over the last dim of `x [..., D]`, with `gamma [D]`, `beta [D]`.
    pub fn layer_norm(&mut self, x: Var, gamma: Var, beta: Var, eps: f32) -> Result<Var> {
        let op = "layer_norm";
        let (xs, d, rows) = self.rows_of(op, x)?;
        for (name, v) in [("gamma", gamma), ("beta", beta)] {
            self.expect_dtype(op, v, &[DType::F32])?;
            let vs = self.shape(v);
            if vs.numel() != d {
                return Err(shape_error(
                    op,
                    format!("{name} {vs} does not match the last dim ({d}) of input {xs}"),
                ));
            }
        }
        if self.records_nodes() {
            let kind = OpKind::LayerNorm {
                x,
                gamma,
                beta,
                eps,
            };
            return self.push_node(op, kind, xs);
        }
        let wg = row_wg(d);
        let portable = KernelKey::new("norm.wgsl", "layer_norm", 3, 1)
            .define("LAYER_NORM", 1)
            .define("WG", wg);
        let key = self.reduction_variant(&portable);
        let y = self.push(OpSpec {
            label: op.to_string(),
            key: key.clone(),
            inputs: vec![
                Some(Binding::from(x)),
                Some(Binding::from(gamma)),
                Some(Binding::from(beta)),
            ],
            out_shape: xs,
            out_dtype: DType::F32,
            params: NormParams::rows(d, rows, eps, 1.0).params(),
            workgroups: grid(rows),
        })?;
        self.offer_portable_reduction(&key, &portable, grid(rows));
        Ok(y)
    }

    /// `torch.nn.functional.normalize(x, dim=-1)`: `x / max(||x||_2, eps)` per row.
    pub fn l2_normalize(&mut self, x: Var, eps: f32) -> Result<Var> {
        self.row_op("l2_normalize", "L2_NORMALIZE", x, eps, 1.0)
    }

    /// `softmax(scale * x)` over the last dim, max-subtracted.
    pub fn softmax(&mut self, x: Var, scale: f32) -> Result<Var> {
        self.row_op("softmax", "SOFTMAX", x, 0.0, scale)
    }

    fn row_op(
        &mut self,
        op: &'static str,
        define: &'static str,
        x: Var,
        eps: f32,
        scale: f32,
    ) -> Result<Var> {
        let (xs, d, rows) = self.rows_of(op, x)?;
        if self.records_nodes() {
            let kind = match define {
                "SOFTMAX" => OpKind::Softmax { x, scale },
                _ => OpKind::L2Normalize { x, eps },
            };
            return self.push_node(op, kind, xs);
        }
        let portable = KernelKey::new("norm.wgsl", op, 1, 1)
            .define(define, 1)
            .define("WG", row_wg(d));
        let key = self.reduction_variant(&portable);
        let y = self.push(OpSpec {
            label: op.to_string(),
            key: key.clone(),
            inputs: vec![Some(Binding::from(x))],
            out_shape: xs,
            out_dtype: DType::F32,
            params: NormParams::rows(d, rows, eps, scale).params(),
            workgroups: grid(rows),
        })?;
        self.offer_portable_reduction(&key, &portable, grid(rows));
        Ok(y)
    }

    /// The shape, last dim and row count of a non-empty f32 input of rank >= 1.
    fn rows_of(&self, op: &str, x: Var) -> Result<(Shape, usize, usize)> {
        self.expect_dtype(op, x, &[DType::F32])?;
        let xs = self.shape(x).clone();
        let Some(&d) = xs.dims().last() else {
            return Err(shape_error(op, format!("input {xs} is a scalar")));
        };
        if xs.numel() == 0 {
            return Err(shape_error(op, format!("input {xs} is empty")));
        }
        let rows = xs.numel() / d;
        Ok((xs, d, rows))
    }
}
