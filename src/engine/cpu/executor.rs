//! The CPU backend's executable: a graph's recorded ops ([`Node`]s) run in order as the kernels
//! of this module's siblings, over one arena laid out by the same memory plan as the GPU's
//! buffers (a slot is a range of the arena).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::RwLockReadGuard;
use std::sync::atomic::{AtomicBool, Ordering};

use super::attention::{Heads, attention_strided};
use super::conv::{Conv2d, ConvTranspose1d, conv_transpose1d, conv2d};
use super::elementwise::{Combine, binary, geglu, unary};
use super::gemm::{Epilogue, MatSlice, gemm};
use super::{embedding, layout, norm};
use crate::engine::error::{GpuError, Result};
use crate::engine::graph::plan::{Use, plan};
use crate::engine::graph::{Graph, GraphStats, Node, OpKind, Storage, Value, Var, feedback_pair};
use crate::engine::profile::{OpTiming, Profile};
use crate::engine::tensor::{DType, Tensor};

/// Where a var's elements are during a run.
#[derive(Clone)]
enum Place {
    /// Elements of the arena.
    Arena(Range<usize>),
    /// A tensor of its own: an input, a weight or an output.
    Tensor(Tensor),
}

/// How long a page's CPU run holds the event loop before giving it a turn: about two frames.
#[cfg(target_arch = "wasm32")]
const PAGE_TURN: std::time::Duration = std::time::Duration::from_millis(30);

/// A graph of the CPU backend, planned and ready to replay.
pub(crate) struct CpuExecutable {
    values: Vec<Value>,
    nodes: Vec<Node>,
    scalars: Vec<f32>,
    /// Per var (views resolved to their base's memory).
    places: Vec<Option<Place>>,
    arena: Vec<f32>,
    stats: GraphStats,
    feedback: Vec<(Tensor, Tensor)>,
    staged: Option<Staged>,
}

/// See [`CpuExecutable::stage_output`].
struct Staged {
    source: Tensor,
    depth: usize,
    unread: VecDeque<Vec<f32>>,
}

impl CpuExecutable {
    pub(crate) fn new(graph: Graph, planned: bool) -> Result<Self> {
        let roots: Vec<Var> = (0..graph.values.len())
            .map(|i| graph.root(Var(i)))
            .collect();
        let Graph {
            ctx,
            values,
            nodes,
            scalars,
            ..
        } = graph;
        let uses = nodes.iter().map(|node| Use {
            reads: node.kind.inputs().iter().map(|v| roots[v.0]).collect(),
            writes: node.output,
        });
        let memory = plan(&values, uses, planned);
        let mut slot_start = Vec::with_capacity(memory.slot_bytes.len());
        let mut floats = 0usize;
        for &bytes in &memory.slot_bytes {
            slot_start.push(floats);
            floats += (bytes as usize).div_ceil(4);
        }
        let mut arena = Vec::new();
        arena.try_reserve_exact(floats).map_err(|_| {
            GpuError::HostOutOfMemory(format!(
                "allocating the {} bytes of a graph's intermediates ({} ops)",
                4 * floats,
                nodes.len()
            ))
        })?;
        arena.resize(floats, 0.0);
        let mut stats = GraphStats {
            dispatches: nodes.len(),
            planned_bytes: 4 * floats as u64,
            unplanned_bytes: memory.unplanned_bytes,
            buffers: memory.slot_bytes.len(),
            ..GraphStats::default()
        };
        let mut places: Vec<Option<Place>> = vec![None; values.len()];
        for (var, range, slot) in &memory.placed {
            let start = slot_start[*slot] + (range.start / 4) as usize;
            places[*var] = Some(Place::Arena(
                start..start + (range.end - range.start) as usize / 4,
            ));
        }
        for (i, value) in values.iter().enumerate() {
            match &value.storage {
                Storage::External { tensor, weight } => {
                    if *weight {
                        stats.weight_bytes += tensor.bytes();
                    } else {
                        stats.input_bytes += tensor.bytes();
                    }
                    places[i] = Some(Place::Tensor(tensor.clone()));
                }
                Storage::Output => {
                    let tensor = Tensor::empty(&ctx, value.shape.clone(), value.dtype)?;
                    stats.output_bytes += tensor.bytes();
                    places[i] = Some(Place::Tensor(tensor));
                }
                Storage::Intermediate | Storage::View { .. } => {}
            }
        }
        for (i, value) in values.iter().enumerate() {
            if let Storage::View { base } = value.storage {
                places[i] = match places[base.0].clone() {
                    Some(Place::Tensor(t)) => Some(Place::Tensor(t.reshaped(value.shape.clone()))),
                    other => other,
                };
            }
        }
        Ok(Self {
            values,
            nodes,
            scalars,
            places,
            arena,
            stats,
            feedback: Vec::new(),
            staged: None,
        })
    }

    pub fn stats(&self) -> &GraphStats {
        &self.stats
    }

    pub fn set_scalar(&mut self, scalar: crate::engine::Scalar, value: f32) {
        self.scalars[scalar.0] = value;
    }

    pub fn feed_back(&mut self, from: Var, into: Var) -> Result<()> {
        let pair = (self.tensor(from)?, self.tensor(into)?);
        self.feedback.push(feedback_pair(&self.values, pair, into)?);
        Ok(())
    }

    /// Runs the ops in order, checking `stop` before each; returns whether all ran. In a page
    /// the page's event loop gets a turn between ops every [`PAGE_TURN`], so that it keeps
    /// drawing (and hears a cancel) while a step runs; elsewhere nothing is awaited.
    pub async fn run_unless_async(&mut self, stop: &AtomicBool) -> Result<bool> {
        self.run_timed(stop, None).await
    }

    /// Blocking [`Self::run_unless_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_unless(&mut self, stop: &AtomicBool) -> Result<bool> {
        pollster::block_on(self.run_unless_async(stop))
    }

    /// One run with every op timed by the host's clock.
    pub async fn profile_async(&mut self) -> Result<Profile> {
        let mut ops = Vec::with_capacity(self.nodes.len());
        self.run_timed(&AtomicBool::new(false), Some(&mut ops))
            .await?;
        Ok(Profile { ops })
    }

    async fn run_timed(
        &mut self,
        stop: &AtomicBool,
        mut timings: Option<&mut Vec<OpTiming>>,
    ) -> Result<bool> {
        #[cfg(target_arch = "wasm32")]
        let mut last_turn = web_time::Instant::now();
        for i in 0..self.nodes.len() {
            #[cfg(target_arch = "wasm32")]
            if last_turn.elapsed() >= PAGE_TURN {
                crate::engine::context::next_task().await;
                last_turn = web_time::Instant::now();
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let start = web_time::Instant::now();
            self.run_node(i)
                .map_err(|e| in_op(e, &self.nodes[i].label))?;
            if let Some(timings) = timings.as_deref_mut() {
                let node = &self.nodes[i];
                timings.push(OpTiming {
                    label: node.label.clone(),
                    kernel: format!("cpu:{}", kind_name(&node.kind)),
                    shape: self.values[node.output.0].shape.to_string(),
                    seconds: start.elapsed().as_secs_f64(),
                    flops: self.flops(node),
                    bytes: 0,
                });
            }
        }
        for (source, target) in &self.feedback {
            let (Some(from), Some(into)) = (source.host(), target.host()) else {
                return Err(GpuError::Invalid(
                    "a CPU graph fed back a GPU tensor".into(),
                ));
            };
            into.write().copy_from_slice(&from.read());
        }
        if let Some(staged) = &mut self.staged {
            if staged.unread.len() == staged.depth {
                staged.unread.pop_front();
            }
            staged.unread.push_back(host_values(&staged.source)?);
        }
        self.stats.runs += 1;
        self.stats.submits += 1;
        Ok(true)
    }

    pub fn tensor(&self, var: Var) -> Result<Tensor> {
        let readable =
            |storage: &Storage| matches!(storage, Storage::Output | Storage::External { .. });
        let value = self.values.get(var.0);
        let ok = match value.map(|v| &v.storage) {
            Some(Storage::View { base }) => readable(&self.values[base.0].storage),
            Some(storage) => readable(storage),
            None => false,
        };
        match (&self.places[var.0], ok) {
            (Some(Place::Tensor(t)), true) => Ok(t.clone()),
            _ => Err(GpuError::Invalid(
                "only inputs and outputs of a graph can be read; mark it with Graph::output".into(),
            )),
        }
    }

    pub fn read(&self, var: Var) -> Result<Vec<f32>> {
        host_values(&self.tensor(var)?)
    }

    pub fn stage_output(&mut self, var: Var, depth: usize) -> Result<()> {
        let source = self.tensor(var)?;
        if source.dtype() != DType::F32 || depth == 0 {
            return Err(GpuError::Invalid(format!(
                "only an f32 output can be staged, into at least one buffer (got {:?}, {depth})",
                source.dtype()
            )));
        }
        self.staged = Some(Staged {
            source,
            depth,
            unread: VecDeque::new(),
        });
        Ok(())
    }

    pub fn read_staged(&mut self) -> Result<Vec<f32>> {
        self.staged
            .as_mut()
            .ok_or_else(|| GpuError::Invalid("no output of this graph is staged".into()))?
            .unread
            .pop_front()
            .ok_or_else(|| GpuError::Invalid("no run of this graph is waiting to be read".into()))
    }

    pub fn discard_unread_runs(&mut self) {
        if let Some(staged) = &mut self.staged {
            staged.unread.clear();
        }
    }

    pub fn unread_runs(&self) -> usize {
        self.staged.as_ref().map_or(0, |s| s.unread.len())
    }

    fn dims(&self, var: Var) -> &[usize] {
        self.values[var.0].shape.dims()
    }

    /// Floating-point operations of the ops that carry them, for profiles.
    fn flops(&self, node: &Node) -> u64 {
        let out = self.values[node.output.0].shape.numel() as u64;
        match &node.kind {
            OpKind::Gemm(g) => 2 * (g.batch * g.m * g.n * g.k) as u64,
            OpKind::Conv2d { weight, .. } => {
                let w = self.dims(*weight);
                2 * out * (w[1] * w[2] * w[3]) as u64
            }
            OpKind::ConvTranspose1d { weight, x, .. } => {
                let (w, x) = (self.dims(*weight), self.dims(*x));
                2 * (x[0] * x[2] * w[0] * w[1] * w[2]) as u64
            }
            OpKind::Attention(a) => 2 * (a.batch * a.heads * a.tq * a.tk * (a.d + a.dv)) as u64,
            _ => 0,
        }
    }

    /// Runs node `i`: its inputs read in place, its output written in place.
    fn run_node(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let reads = node.kind.inputs();
        let out_place = self.places[node.output.0]
            .clone()
            .ok_or_else(|| GpuError::Invalid(format!("{}: output has no memory", node.label)))?;
        // The plan never lets an op's output share memory with what it reads (their lifetimes
        // overlap at that op); checked here because the slices below rely on it.
        if let Place::Arena(out) = &out_place {
            for var in &reads {
                if let Some(Place::Arena(r)) = &self.places[var.0]
                    && r.start < out.end
                    && out.start < r.end
                {
                    return Err(GpuError::Invalid(format!(
                        "{}: output and input share memory (a memory plan bug)",
                        node.label
                    )));
                }
            }
        }
        let arena = self.arena.as_mut_ptr();
        let arena_len = self.arena.len();
        let mut held = Vec::with_capacity(reads.len());
        for &var in &reads {
            held.push((
                var,
                Held::new(
                    &self.places[var.0],
                    self.values[var.0].dtype,
                    arena,
                    arena_len,
                )?,
            ));
        }
        let operands = Operands { held };
        let mut guard;
        let out: &mut [f32] = match &out_place {
            // SAFETY: the range lies in the arena, and is disjoint from every input range (checked
            // above); nothing else touches the arena during the op.
            Place::Arena(r) => unsafe {
                std::slice::from_raw_parts_mut(arena.add(r.start), r.len())
            },
            Place::Tensor(t) => {
                let host = t.host().ok_or_else(|| {
                    GpuError::Invalid(format!("{}: output is not host memory", node.label))
                })?;
                guard = host.write();
                let numel = t.numel();
                &mut bytemuck::cast_slice_mut::<u32, f32>(&mut guard)[..numel]
            }
        };
        self.compute(node, &operands, out)
    }

    fn compute(&self, node: &Node, x: &Operands<'_>, out: &mut [f32]) -> Result<()> {
        let s = &self.scalars;
        match &node.kind {
            OpKind::Gemm(g) => {
                let view = |v: &crate::engine::ops::matmul::MatView| MatSlice {
                    data: x.f32(v.var),
                    offset: v.offset,
                    sb: v.sb,
                    sr: v.sr,
                    sc: v.sc,
                };
                gemm(
                    out,
                    view(&g.a),
                    view(&g.b),
                    (g.batch, g.m, g.k, g.n),
                    g.alpha,
                    Epilogue {
                        bias: g.bias.map(|v| x.f32(v)),
                        act: g.act,
                        residual: g.residual.map(|v| x.f32(v)),
                    },
                )
            }
            OpKind::Conv2d {
                x: input,
                weight,
                bias,
                residual,
                opts,
            } => {
                let (xd, wd) = (self.dims(*input), self.dims(*weight));
                let c = Conv2d {
                    batch: xd[0],
                    cin: xd[1],
                    h: xd[2],
                    w: xd[3],
                    cout: wd[0],
                    kh: wd[2],
                    kw: wd[3],
                    stride: opts.stride,
                    padding: opts.padding,
                    dilation: opts.dilation,
                    input_leaky_relu: opts.input_leaky_relu,
                };
                conv2d(
                    out,
                    x.f32(*input),
                    x.f32(*weight),
                    &c,
                    Epilogue {
                        bias: bias.map(|v| x.f32(v)),
                        act: opts.act,
                        residual: residual.map(|v| x.f32(v)),
                    },
                )
            }
            OpKind::ConvTranspose1d {
                x: input,
                weight,
                bias,
                opts,
            } => {
                let (xd, wd) = (self.dims(*input), self.dims(*weight));
                let c = ConvTranspose1d {
                    batch: xd[0],
                    cin: xd[1],
                    len: xd[2],
                    cout: wd[1],
                    k: wd[2],
                    stride: opts.stride,
                    padding: opts.padding,
                    output_padding: opts.output_padding,
                    input_leaky_relu: opts.input_leaky_relu,
                };
                conv_transpose1d(
                    out,
                    x.f32(*input),
                    x.f32(*weight),
                    &c,
                    Epilogue {
                        bias: bias.map(|v| x.f32(v)),
                        act: opts.act,
                        residual: None,
                    },
                )
            }
            OpKind::Attention(a) => {
                let heads = |v: &crate::engine::ops::attention::HeadView| Heads {
                    data: x.f32(v.var),
                    offset: v.offset,
                    sb: v.sb,
                    st: v.st,
                    sh: v.sh,
                };
                attention_strided(
                    out,
                    heads(&a.q),
                    heads(&a.k),
                    heads(&a.v),
                    &super::Attention {
                        batch: a.batch,
                        heads: a.heads,
                        tq: a.tq,
                        tk: a.tk,
                        d: a.d,
                        dv: a.dv,
                        scale: a.scale,
                    },
                )
            }
            OpKind::GroupNorm {
                x: input,
                groups,
                gamma,
                beta,
                eps,
                silu,
            } => {
                let d = self.dims(*input);
                let spatial = d[2..].iter().product();
                norm::group_norm(
                    out,
                    x.f32(*input),
                    (d[0], d[1], spatial),
                    *groups,
                    gamma.map(|v| x.f32(v)),
                    beta.map(|v| x.f32(v)),
                    *eps,
                    *silu,
                )
            }
            OpKind::LayerNorm {
                x: input,
                gamma,
                beta,
                eps,
            } => norm::layer_norm(
                out,
                x.f32(*input),
                self.last_dim(*input),
                x.f32(*gamma),
                x.f32(*beta),
                *eps,
            ),
            OpKind::L2Normalize { x: input, eps } => {
                norm::l2_normalize(out, x.f32(*input), self.last_dim(*input), *eps)
            }
            OpKind::Softmax { x: input, scale } => {
                norm::softmax(out, x.f32(*input), self.last_dim(*input), *scale)
            }
            OpKind::Unary {
                x: input,
                act,
                alpha,
                beta,
            } => unary(out, x.f32(*input), *act, alpha.value(s), beta.value(s)),
            OpKind::Binary {
                a,
                b,
                mul,
                alpha,
                beta,
            } => {
                let combine = if *mul {
                    Combine::Mul
                } else {
                    Combine::Axpby {
                        alpha: alpha.value(s),
                        beta: beta.value(s),
                    }
                };
                binary(
                    out,
                    (x.f32(*a), self.dims(*a)),
                    (x.f32(*b), self.dims(*b)),
                    combine,
                )
            }
            OpKind::Geglu { x: input } => geglu(out, x.f32(*input), self.last_dim(*input) / 2),
            OpKind::Permute { x: input, perm } => {
                layout::permute(x.f32(*input), self.dims(*input), perm, out)
            }
            OpKind::Slice {
                x: input,
                axis,
                start,
                end,
            } => layout::slice(x.f32(*input), self.dims(*input), *axis, *start, *end, out),
            OpKind::Concat { a, b, axis } => layout::concat(
                x.f32(*a),
                self.dims(*a),
                x.f32(*b),
                self.dims(*b),
                *axis,
                out,
            ),
            OpKind::Embedding { ids, table } => {
                let td = self.dims(*table);
                let dim = td.last().copied().unwrap_or(0);
                let rows = self.values[table.0].shape.numel() / dim.max(1);
                embedding::embedding(x.u32(*ids), x.f32(*table), rows, dim, out)
            }
            OpKind::TimestepEmbedding {
                t,
                batch,
                dim,
                flip_sin_to_cos,
                downscale_freq_shift,
                max_period,
            } => embedding::timestep_embedding(
                t.value(s),
                *batch,
                *dim,
                *flip_sin_to_cos,
                *downscale_freq_shift,
                *max_period,
                out,
            ),
            OpKind::UpsampleNearest {
                x: input,
                out_h,
                out_w,
            } => layout::upsample_nearest(x.f32(*input), self.dims(*input), *out_h, *out_w, out),
        }
    }

    fn last_dim(&self, var: Var) -> usize {
        self.dims(var).last().copied().unwrap_or(1)
    }
}

/// An error of a kernel, named after the op that ran it.
fn in_op(error: GpuError, label: &str) -> GpuError {
    match error {
        GpuError::Shape { .. } | GpuError::HostOutOfMemory(_) => error,
        other => GpuError::Invalid(format!("{label}: {other}")),
    }
}

fn kind_name(kind: &OpKind) -> &'static str {
    match kind {
        OpKind::Gemm(_) => "gemm",
        OpKind::Conv2d { .. } => "conv2d",
        OpKind::ConvTranspose1d { .. } => "conv_transpose1d",
        OpKind::Attention(_) => "attention",
        OpKind::GroupNorm { .. } => "group_norm",
        OpKind::LayerNorm { .. } => "layer_norm",
        OpKind::L2Normalize { .. } => "l2_normalize",
        OpKind::Softmax { .. } => "softmax",
        OpKind::Unary { .. } => "unary",
        OpKind::Binary { .. } => "binary",
        OpKind::Geglu { .. } => "geglu",
        OpKind::Permute { .. } => "permute",
        OpKind::Slice { .. } => "slice",
        OpKind::Concat { .. } => "concat",
        OpKind::Embedding { .. } => "embedding",
        OpKind::TimestepEmbedding { .. } => "timestep_embedding",
        OpKind::UpsampleNearest { .. } => "upsample_nearest",
    }
}

/// An op's input, held for the op's duration.
enum Held<'a> {
    Arena(&'a [f32]),
    /// A tensor's words, locked for reading.
    Words(RwLockReadGuard<'a, Vec<u32>>, usize),
    /// An f16 weight widened to f32 for this op.
    Widened(Vec<f32>),
}

impl<'a> Held<'a> {
    fn new(
        place: &'a Option<Place>,
        dtype: DType,
        arena: *mut f32,
        arena_len: usize,
    ) -> Result<Self> {
        match place {
            Some(Place::Arena(r)) => {
                debug_assert!(r.end <= arena_len);
                // SAFETY: the range lies in the arena (the plan placed it), and no op input range
                // overlaps the op's output (checked by `run_node`).
                Ok(Held::Arena(unsafe {
                    std::slice::from_raw_parts(arena.add(r.start), r.len())
                }))
            }
            Some(Place::Tensor(t)) => {
                let host = t
                    .host()
                    .ok_or_else(|| GpuError::Invalid("a CPU graph reads a GPU tensor".into()))?;
                let words = host.read();
                if dtype == DType::F16 {
                    let halves: &[half::f16] = bytemuck::cast_slice(&words);
                    let mut wide = Vec::new();
                    wide.try_reserve_exact(t.numel()).map_err(|_| {
                        GpuError::HostOutOfMemory(format!(
                            "widening an f16 weight of shape {}",
                            t.shape()
                        ))
                    })?;
                    wide.extend(halves[..t.numel()].iter().map(|h| h.to_f32()));
                    return Ok(Held::Widened(wide));
                }
                Ok(Held::Words(words, t.numel()))
            }
            None => Err(GpuError::Invalid("an op reads a var with no memory".into())),
        }
    }
}

/// The inputs of one op, by var.
struct Operands<'a> {
    held: Vec<(Var, Held<'a>)>,
}

impl Operands<'_> {
    fn get(&self, var: Var) -> &Held<'_> {
        &self
            .held
            .iter()
            .find(|(v, _)| *v == var)
            .expect("every var an op reads is held")
            .1
    }

    fn f32(&self, var: Var) -> &[f32] {
        match self.get(var) {
            Held::Arena(data) => data,
            Held::Words(words, n) => &bytemuck::cast_slice(words)[..*n],
            Held::Widened(data) => data,
        }
    }

    fn u32(&self, var: Var) -> &[u32] {
        match self.get(var) {
            Held::Arena(data) => bytemuck::cast_slice(data),
            Held::Words(words, n) => &words[..*n],
            Held::Widened(_) => &[],
        }
    }
}

/// The values of a tensor the CPU backend made.
fn host_values(tensor: &Tensor) -> Result<Vec<f32>> {
    if tensor.dtype() == DType::U32 {
        return Err(GpuError::Invalid("reading a u32 tensor as f32".into()));
    }
    tensor
        .host_f32()
        .ok_or_else(|| GpuError::Invalid("a CPU graph holds a GPU tensor".into()))
}
