//! Fused multi-head attention `softmax(scale * Q K^T) V` with an online softmax over the keys
//! (`shaders/attention.wgsl`): the score matrix is never materialised.

use crate::engine::error::{Result, shape_error};
use crate::engine::graph::{Binding, Graph, LOOP_BUDGET, OpKind, OpSpec, Params, Var, grid};
use crate::engine::kernel::KernelKey;
use crate::engine::tensor::{DType, Shape};

/// Query rows per workgroup (one invocation each), and outputs per workgroup of the combine pass.
const WG: usize = 64;
/// Keys per block of the online softmax: scores held in registers at once.
const KB: usize = 8;
/// The largest head dim: each invocation keeps a query and an accumulator of this many floats.
pub const MAX_HEAD_DIM: usize = 512;

/// A strided view of per-head rows: element (b, t, h, i) at `offset + b*sb + t*st + h*sh + i`
/// (elements of one head's row are contiguous).
#[derive(Clone, Copy, Debug)]
pub struct HeadView {
    pub var: Var,
    pub offset: usize,
    /// Batch stride.
    pub sb: usize,
    /// Token (row) stride.
    pub st: usize,
    /// Head stride.
    pub sh: usize,
}

impl HeadView {
    /// `[B, T, H*D]` with heads interleaved as PyTorch's `view(B, T, H, D)`.
    pub fn interleaved(var: Var, tokens: usize, heads: usize, head_dim: usize) -> Self {
        Self {
            var,
            offset: 0,
            sb: tokens * heads * head_dim,
            st: heads * head_dim,
            sh: head_dim,
        }
    }
}

/// The general form of [`Graph::attention`]: Q, K and V as strided views (e.g. columns of one
/// fused QKV projection, or `[B, H, T, D]` tensors). The output is `[batch, tq, heads * dv]`.
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    pub q: HeadView,
    pub k: HeadView,
    pub v: HeadView,
    pub batch: usize,
    pub heads: usize,
    pub tq: usize,
    pub tk: usize,
    /// Head dim of Q and K.
    pub d: usize,
    /// Head dim of V (and of the output).
    pub dv: usize,
    pub scale: f32,
}

/// Keys per split: `chunk` when given, else all of them unless one invocation's loops (the head
/// dims once per key block) would run past [`LOOP_BUDGET`], then a multiple of the key block
/// balanced over the splits.
fn key_chunk(a: &Attention, chunk: Option<usize>, tiles: bool) -> usize {
    if let Some(chunk) = chunk {
        return chunk.clamp(1, a.tk);
    }
    // Per block: both head-dim loops (unrolled by four) plus slack for the block's own loops, and
    // with tiles each invocation's share of staging the keys and values; per invocation: the
    // query loads and the stores.
    let qb = rows_per_invocation(a);
    let staging = if tiles {
        KB * (padded(a.d) + padded(a.dv)) / WG
    } else {
        0
    };
    let per_block = a.d.div_ceil(4) + a.dv.div_ceil(4) + KB + staging;
    let max_blocks = ((LOOP_BUDGET - 2 * qb * (a.d + a.dv)) / per_block).max(1);
    let blocks = a.tk.div_ceil(KB);
    let splits = blocks.div_ceil(max_blocks);
    blocks.div_ceil(splits) * KB
}

/// Query rows per invocation: two share each K and V load where the head dims are small; large
/// ones keep one (the private arrays grow with the rows, and llvmpipe's compile time with them).
fn rows_per_invocation(a: &Attention) -> usize {
    if a.d.max(a.dv) <= 128 { 2 } else { 1 }
}

/// Private array size for a head dim: the next power of two, at least 16.
fn padded(dim: usize) -> usize {
    dim.next_power_of_two().max(16)
}

impl Graph {
    /// Multi-head attention without a mask: `q [B, Tq, H*D]`, `k [B, Tk, H*D]`,
    /// `v [B, Tk, H*Dv]` give `[B, Tq, H*Dv]`, per head `softmax(scale * Q K^T) V`, heads
    /// interleaved as PyTorch's `view(B, T, H, D)`.
    pub fn attention(&mut self, q: Var, k: Var, v: Var, heads: usize, scale: f32) -> Result<Var> {
        let op = "attention";
        for var in [q, k, v] {
            self.expect_dtype(op, var, &[DType::F32])?;
        }
        let (qs, ks, vs) = (
            self.shape(q).clone(),
            self.shape(k).clone(),
            self.shape(v).clone(),
        );
        let bad = |why: &str| {
            shape_error(
                op,
                format!("q {qs}, k {ks}, v {vs} with {heads} heads: {why}"),
            )
        };
        let ([b, tq, hd], [bk, tk, hdk], [bv, tkv, hdv]) = (qs.dims(), ks.dims(), vs.dims()) else {
            return Err(bad("expected [B, T, H*D] each"));
        };
        if b != bk || b != bv {
            return Err(bad("batch sizes differ"));
        }
        if tk != tkv {
            return Err(bad("k and v have different numbers of tokens"));
        }
        if hd != hdk {
            return Err(bad("q and k have different widths"));
        }
        if heads == 0 || hd % heads != 0 || hdv % heads != 0 {
            return Err(bad("the widths do not split into heads"));
        }
        let (d, dv) = (hd / heads, hdv / heads);
        self.attention_checked(
            op,
            Attention {
                q: HeadView::interleaved(q, *tq, heads, d),
                k: HeadView::interleaved(k, *tk, heads, d),
                v: HeadView::interleaved(v, *tk, heads, dv),
                batch: *b,
                heads,
                tq: *tq,
                tk: *tk,
                d,
                dv,
                scale,
            },
            None,
        )
    }

    /// [`Graph::attention`] over strided views; the output is `[batch, tq, heads * dv]`.
    pub fn attention_strided(&mut self, a: Attention) -> Result<Var> {
        self.attention_checked("attention_strided", a, None)
    }

    /// [`Graph::attention_strided`] with the keys cut into chunks of `key_chunk` that run side by
    /// side and are merged by a second dispatch. Without it, keys are split only where one pass
    /// would run into llvmpipe's loop limit.
    pub fn attention_split(&mut self, a: Attention, key_chunk: usize) -> Result<Var> {
        self.attention_checked("attention_split", a, Some(key_chunk))
    }

    fn attention_checked(&mut self, op: &str, a: Attention, chunk: Option<usize>) -> Result<Var> {
        if a.batch == 0 || a.heads == 0 || a.tq == 0 || a.tk == 0 || a.d == 0 || a.dv == 0 {
            return Err(shape_error(
                op,
                format!(
                    "empty attention: batch {}, heads {}, tq {}, tk {}, head dims {} and {}",
                    a.batch, a.heads, a.tq, a.tk, a.d, a.dv
                ),
            ));
        }
        for (name, view, t, width) in [
            ("q", &a.q, a.tq, a.d),
            ("k", &a.k, a.tk, a.d),
            ("v", &a.v, a.tk, a.dv),
        ] {
            self.expect_dtype(op, view.var, &[DType::F32])?;
            let last = view.offset
                + (a.batch - 1) * view.sb
                + (t - 1) * view.st
                + (a.heads - 1) * view.sh
                + width;
            let numel = self.shape(view.var).numel();
            if last > numel {
                return Err(shape_error(
                    op,
                    format!(
                        "{name} view ({} x {t} tokens x {} heads x {width}) reaches past its \
                         tensor of shape {}",
                        a.batch,
                        a.heads,
                        self.shape(view.var)
                    ),
                ));
            }
        }
        if self.records_nodes() {
            let out = Shape(vec![a.batch, a.tq, a.heads * a.dv]);
            return self.push_node(op, OpKind::Attention(a), out);
        }
        if a.d > MAX_HEAD_DIM || a.dv > MAX_HEAD_DIM {
            return Err(shape_error(
                op,
                format!(
                    "head dims {} and {} exceed the largest supported, {MAX_HEAD_DIM}",
                    a.d, a.dv
                ),
            ));
        }
        // The GPU variant stages each block's keys and values in workgroup memory, where it fits.
        let kv_len = KB * padded(a.d).max(padded(a.dv));
        let tiles = self.context().variants().tiles
            && 4 * kv_len as u32 <= self.context().limits().max_compute_workgroup_storage_size;
        let chunk = key_chunk(&a, chunk, tiles);
        let splits = a.tk.div_ceil(chunk);
        let width = a.heads * a.dv;
        let out_shape = Shape(vec![a.batch, a.tq, width]);
        // Params of the window of query rows `row0..row0 + tq` (all of them unless split).
        let params = |row0: usize, tq: usize| {
            Params::default()
                .u(tq)
                .u(a.tk)
                .u(a.d)
                .u(a.dv)
                .u(a.q.offset + row0 * a.q.st)
                .u(a.q.sb)
                .u(a.q.st)
                .u(a.q.sh)
                .u(a.k.offset)
                .u(a.k.sb)
                .u(a.k.st)
                .u(a.k.sh)
                .u(a.v.offset)
                .u(a.v.sb)
                .u(a.v.st)
                .u(a.v.sh)
                .u(tq * width)
                .u(width)
                .u(a.dv)
                .f(a.scale)
                .u(a.batch)
                .u(a.heads)
                .u(splits)
                .u(chunk)
        };
        let qb = rows_per_invocation(&a);
        let portable = KernelKey::new("attention.wgsl", "attention", 3, 1)
            .define("WG", WG)
            .define("KB", KB)
            .define("QB", qb)
            .define("DK", padded(a.d))
            .define("DV", padded(a.dv))
            .define("Q_LEN", qb * padded(a.d))
            .define("A_LEN", qb * padded(a.dv))
            .define("S_LEN", qb * KB);
        let key = if tiles {
            portable.clone().define("TILES", 1).define("KV_LEN", kv_len)
        } else {
            portable.clone()
        };
        let inputs = vec![
            Some(Binding::from(a.q.var)),
            Some(Binding::from(a.k.var)),
            Some(Binding::from(a.v.var)),
        ];
        // q·k and p·v of every query row against every key.
        let flops_per_row = 2 * (a.batch * a.heads * a.tk * (a.d + a.dv)) as u64;
        // Workgroups of WG invocations of qb rows each, per head and (batch item, split).
        let step = WG * qb;
        let dispatch = |rows: usize| {
            [
                rows.div_ceil(step) as u32,
                a.heads as u32,
                (a.batch * splits) as u32,
            ]
        };
        if splits == 1 {
            let out = self.push(OpSpec {
                label: op.to_string(),
                key,
                inputs,
                out_shape,
                out_dtype: DType::F32,
                params: params(0, a.tq),
                workgroups: dispatch(a.tq),
            })?;
            self.count_flops(flops_per_row * a.tq as u64);
            if tiles {
                self.offer_fallback(portable, dispatch(a.tq));
            }
            return Ok(out);
        }
        // The key splits' partial results, merged by a second dispatch. When they are over one
        // binding (long sequences), both run per window of query rows, each row computed as it
        // would be unsplit; windows are whole workgroups of rows.
        let partial_row_bytes = 4 * (splits * a.batch * a.heads * (a.dv + 2)) as u64;
        let max_binding = self.context().max_binding_bytes();
        let rows_fit = (max_binding / partial_row_bytes) as usize / step * step;
        let window = if partial_row_bytes * a.tq as u64 <= max_binding {
            a.tq
        } else if a.batch == 1 && rows_fit > 0 {
            rows_fit
        } else {
            return Err(shape_error(
                op,
                format!(
                    "the partial results of {splits} key splits over {} query rows are over this \
                     device's largest binding ({max_binding} bytes), and cannot be split for a \
                     batch of {}",
                    a.tq, a.batch
                ),
            ));
        };
        let out = self.alloc(op, out_shape.clone(), DType::F32)?;
        let mut row0 = 0;
        while row0 < a.tq {
            let rows = window.min(a.tq - row0);
            let partial = self.push(OpSpec {
                label: format!("{op} ({splits} key splits)"),
                key: key.clone(),
                inputs: inputs.clone(),
                out_shape: Shape(vec![splits, a.batch, a.heads, rows, a.dv + 2]),
                out_dtype: DType::F32,
                params: params(row0, rows),
                workgroups: dispatch(rows),
            })?;
            self.count_flops(flops_per_row * rows as u64);
            if tiles {
                self.offer_fallback(portable.clone(), dispatch(rows));
            }
            // Rows of one batch item are contiguous; a batch of several is never windowed.
            let rows_out = row0 * width * a.batch..(row0 + rows) * width * a.batch;
            self.push_window(
                Binding::elements(out, rows_out),
                OpSpec {
                    label: format!("{op} (merge of {splits} key splits)"),
                    key: KernelKey::new("attention.wgsl", "combine", 1, 1)
                        .define("COMBINE", 1)
                        .define("WG", WG),
                    inputs: vec![Some(Binding::from(partial))],
                    out_shape: out_shape.clone(),
                    out_dtype: DType::F32,
                    params: params(row0, rows),
                    workgroups: grid((a.batch * rows * width).div_ceil(WG)),
                },
            )?;
            row0 += rows;
        }
        Ok(out)
    }
}
