//! Record a forward pass once, plan its memory, replay it with one submit.
//!
//! Ops are recorded over virtual tensors ([`Var`]). [`Graph::build`] assigns every intermediate a
//! buffer by liveness (greedy by size: the largest tensors are placed first and tensors whose
//! lifetimes do not overlap share a buffer), writes every op's parameters into one uniform buffer
//! that ops index by dynamic offset, and makes all bind groups. [`Executable::run`] then records one
//! compute pass and submits it once; only scalars set with [`Executable::set_scalar`] change.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::context::Context;
use super::error::{GpuError, Result, shape_error};
use super::kernel::{Kernel, KernelKey, PARAM_BLOCK_BYTES};
use super::profile::{OpTiming, Profile};
use super::tensor::{
    DType, GpuBuffer, Shape, Tensor, create_buffer, map_read, read_buffer, staging_buffer,
};

/// A tensor of a graph: an input bound to an existing [`Tensor`], or the result of an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(usize);

/// A scalar parameter that can change between replays (the timestep, a scheduler coefficient).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scalar(usize);

enum Storage {
    External {
        tensor: Tensor,
        weight: bool,
    },
    Intermediate,
    Output,
    /// Another shape over the same elements as `base` (a reshape): no copy, no buffer of its own.
    View {
        base: Var,
    },
}

struct Value {
    shape: Shape,
    dtype: DType,
    storage: Storage,
    /// Byte ranges stored in buffers of their own, for an intermediate larger than one binding
    /// (see [`Graph::alloc`]); empty when the value is stored whole.
    parts: Vec<Range<u64>>,
}

/// A coefficient of an op: fixed when recorded, or a [`Scalar`] that may change between replays.
#[derive(Clone, Copy, Debug)]
pub enum Coef {
    Const(f32),
    Scalar(Scalar),
}

impl From<f32> for Coef {
    fn from(value: f32) -> Self {
        Coef::Const(value)
    }
}

impl From<Scalar> for Coef {
    fn from(scalar: Scalar) -> Self {
        Coef::Scalar(scalar)
    }
}

/// One word of an op's uniform block.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Word {
    Bits(u32),
    Scalar(Scalar),
}

/// An op's uniform block under construction.
#[derive(Default)]
pub(crate) struct Params(Vec<Word>);

impl Params {
    pub fn u(mut self, value: usize) -> Self {
        self.0.push(Word::Bits(value as u32));
        self
    }
    pub fn f(mut self, value: f32) -> Self {
        self.0.push(Word::Bits(value.to_bits()));
        self
    }
    pub fn coef(mut self, coef: impl Into<Coef>) -> Self {
        self.0.push(match coef.into() {
            Coef::Const(value) => Word::Bits(value.to_bits()),
            Coef::Scalar(scalar) => Word::Scalar(scalar),
        });
        self
    }
}

/// A byte range of a var bound to one storage binding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Binding {
    pub var: Var,
    pub offset: u64,
    pub size: Option<u64>,
}

impl From<Var> for Binding {
    fn from(var: Var) -> Self {
        Binding {
            var,
            offset: 0,
            size: None,
        }
    }
}

impl Binding {
    /// Elements `range` of a 4-byte-element var (a part of it, see [`Graph::parts`]).
    pub fn elements(var: Var, range: Range<usize>) -> Self {
        Binding {
            var,
            offset: 4 * range.start as u64,
            size: Some(4 * range.len() as u64),
        }
    }
}

/// An optional input; absent ones bind the context's placeholder buffer.
pub(crate) type Input = Option<Binding>;

struct Op {
    label: String,
    key: KernelKey,
    inputs: Vec<Input>,
    output: Binding,
    params: Vec<Word>,
    workgroups: [u32; 3],
    cost: OpCost,
    /// A portable kernel (and its dispatch size) computing the same with the same bindings and
    /// parameters, for a variant that does not compile on the adapter.
    fallback: Option<(KernelKey, [u32; 3])>,
}

/// What one dispatch does, for profiles: its output's shape, the floating-point operations its
/// builder counted (0 for ops that only move data), and the bytes it binds (each input and the
/// output once: the least memory traffic it can have).
#[derive(Clone, Debug, Default)]
pub struct OpCost {
    pub shape: String,
    pub flops: u64,
    pub bytes: u64,
}

/// What an op builder hands to [`Graph::push`].
pub(crate) struct OpSpec {
    pub label: String,
    pub key: KernelKey,
    pub inputs: Vec<Input>,
    pub out_shape: Shape,
    pub out_dtype: DType,
    pub params: Params,
    pub workgroups: [u32; 3],
}

pub struct Graph {
    ctx: Context,
    values: Vec<Value>,
    ops: Vec<Op>,
    scalars: Vec<f32>,
}

impl Graph {
    pub fn new(ctx: &Context) -> Self {
        Self {
            ctx: ctx.clone(),
            values: Vec::new(),
            ops: Vec::new(),
            scalars: Vec::new(),
        }
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    fn add_value(&mut self, shape: Shape, dtype: DType, storage: Storage) -> Var {
        self.values.push(Value {
            shape,
            dtype,
            storage,
            parts: Vec::new(),
        });
        Var(self.values.len() - 1)
    }

    /// An intermediate that ops then write window by window ([`Graph::push_window`]). One larger
    /// than the device's largest binding is stored in parts, each in a buffer of its own and
    /// each at most one binding: runs of whole slices along the leading dimensions (of
    /// `dims[2..]` for rank 3 and up, rows for rank 2), a power of two of them per part so that
    /// power-of-two groups of channels never straddle two parts. Ops bind one part at a time.
    pub(crate) fn alloc(&mut self, op: &str, shape: Shape, dtype: DType) -> Result<Var> {
        let max_binding = self.ctx.max_binding_bytes();
        let bytes = dtype.storage_bytes(shape.numel());
        let mut parts = Vec::new();
        if bytes > max_binding {
            if dtype == DType::F16 {
                return Err(shape_error(
                    op,
                    format!(
                        "an f16 tensor of shape {shape} is over one binding and cannot be split"
                    ),
                ));
            }
            let slice: usize = match shape.dims() {
                [_, _, rest @ ..] if !rest.is_empty() => rest.iter().product(),
                [_, row] => *row,
                _ => 1,
            };
            let slice_bytes = dtype.storage_bytes(slice);
            if slice_bytes > max_binding {
                return Err(shape_error(
                    op,
                    format!(
                        "output {shape} cannot be split to fit this device's largest binding \
                         ({max_binding} bytes): one slice of it takes {slice_bytes} bytes"
                    ),
                ));
            }
            let per_part = 1u64 << (max_binding / slice_bytes).ilog2();
            let part_bytes = per_part * slice_bytes;
            let mut start = 0;
            while start < bytes {
                parts.push(start..(start + part_bytes).min(bytes));
                start += part_bytes;
            }
        }
        let var = self.add_value(shape, dtype, Storage::Intermediate);
        self.values[var.0].parts = parts;
        Ok(var)
    }

    /// The element ranges `var` is stored in, in order (one range when it is stored whole). An op
    /// that splits its work binds one of them at a time ([`Binding::elements`]).
    pub(crate) fn parts(&self, var: Var) -> Vec<Range<usize>> {
        let root = &self.values[self.root(var).0];
        if root.parts.is_empty() {
            return std::iter::once(0..root.shape.numel()).collect();
        }
        root.parts
            .iter()
            .map(|r| (r.start / 4) as usize..(r.end / 4) as usize)
            .collect()
    }

    /// [`Graph::parts`] in units of `unit` elements (channel planes, normalised groups), or an
    /// error naming `op` when a part boundary falls inside a unit.
    pub(crate) fn parts_in_units(
        &self,
        op: &str,
        var: Var,
        unit: usize,
    ) -> Result<Vec<Range<usize>>> {
        self.parts(var)
            .into_iter()
            .map(|part| {
                if part.start.is_multiple_of(unit) && part.end.is_multiple_of(unit) {
                    Ok(part.start / unit..part.end / unit)
                } else {
                    Err(shape_error(
                        op,
                        format!(
                            "{} is split over bindings inside a run of {unit} elements that one \
                             dispatch must see whole; cannot split it",
                            self.shape(var)
                        ),
                    ))
                }
            })
            .collect()
    }

    /// Whether `var` is stored in more than one part.
    pub(crate) fn is_split(&self, var: Var) -> bool {
        !self.values[self.root(var).0].parts.is_empty()
    }

    /// Binds an activation input (the latents, token ids): its contents may change between runs.
    pub fn input(&mut self, tensor: &Tensor) -> Var {
        self.external(tensor, false)
    }

    /// Binds a weight; counted in [`GraphStats::weight_bytes`].
    pub fn weight(&mut self, tensor: &Tensor) -> Var {
        self.external(tensor, true)
    }

    fn external(&mut self, tensor: &Tensor, weight: bool) -> Var {
        self.add_value(
            tensor.shape().clone(),
            tensor.dtype(),
            Storage::External {
                tensor: tensor.clone(),
                weight,
            },
        )
    }

    /// The same elements under another shape (same count), without a copy.
    pub fn reshape(&mut self, var: Var, shape: impl Into<Shape>) -> Result<Var> {
        let shape = shape.into();
        let from = self.shape(var).clone();
        if shape.numel() != from.numel() {
            return Err(shape_error(
                "reshape",
                format!("cannot reshape {from} to {shape}"),
            ));
        }
        let base = self.root(var);
        let storage = match self.values[base.0].storage {
            Storage::External { ref tensor, weight } => Storage::External {
                tensor: Tensor::from_buffer(tensor.shared_buffer(), shape.clone(), tensor.dtype()),
                weight,
            },
            _ => Storage::View { base },
        };
        let dtype = self.dtype(var);
        Ok(self.add_value(shape, dtype, storage))
    }

    /// The var that owns the storage behind `var` (itself unless it is a view).
    fn root(&self, var: Var) -> Var {
        match self.values[var.0].storage {
            Storage::View { base } => base,
            _ => var,
        }
    }

    /// Keeps `var` in a buffer of its own after the run, readable and usable by other graphs.
    pub fn output(&mut self, var: Var) -> Result<()> {
        // Marking a view keeps the tensor it views.
        let root = self.root(var);
        let value = &mut self.values[root.0];
        match value.storage {
            Storage::Intermediate | Storage::Output => {
                value.storage = Storage::Output;
                Ok(())
            }
            Storage::External { .. } | Storage::View { .. } => Err(GpuError::Invalid(
                "an input cannot be marked as an output of the graph".into(),
            )),
        }
    }

    /// A replay-time scalar with its initial value.
    pub fn scalar(&mut self, value: f32) -> Scalar {
        self.scalars.push(value);
        Scalar(self.scalars.len() - 1)
    }

    pub fn shape(&self, var: Var) -> &Shape {
        &self.values[var.0].shape
    }

    pub fn dims(&self, var: Var) -> &[usize] {
        self.values[var.0].shape.dims()
    }

    pub fn dtype(&self, var: Var) -> DType {
        self.values[var.0].dtype
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Fails with an error naming `op` unless `var` holds `dtype`.
    pub(crate) fn expect_dtype(&self, op: &str, var: Var, dtypes: &[DType]) -> Result<()> {
        let dtype = self.dtype(var);
        if dtypes.contains(&dtype) {
            Ok(())
        } else {
            Err(shape_error(
                op,
                format!(
                    "expects {dtypes:?}, got a {dtype:?} tensor of shape {}",
                    self.shape(var)
                ),
            ))
        }
    }

    /// Fails with an error naming `op` unless the optional `bias` is an f32 vector of `n` values.
    pub(crate) fn expect_bias(&self, op: &str, bias: Option<Var>, n: usize) -> Result<()> {
        let Some(bias) = bias else { return Ok(()) };
        self.expect_dtype(op, bias, &[DType::F32])?;
        if self.shape(bias).numel() != n {
            return Err(shape_error(
                op,
                format!(
                    "bias {} does not match {n} output features",
                    self.shape(bias)
                ),
            ));
        }
        Ok(())
    }

    /// Fails unless a kernel whose invocations loop `iterations` times stays under [`LOOP_BUDGET`].
    pub(crate) fn expect_loop_budget(&self, op: &str, iterations: usize) -> Result<()> {
        if iterations > LOOP_BUDGET {
            return Err(shape_error(
                op,
                format!(
                    "one invocation would loop {iterations} times, over the {LOOP_BUDGET} this engine \
                     allows (software adapters stop loops silently past 65535)"
                ),
            ));
        }
        Ok(())
    }

    /// Fails unless `binding` is a valid window of its var that one binding can cover: inside the
    /// tensor, aligned, within one of its parts, at most the device's largest binding.
    fn check_binding(&self, label: &str, binding: &Binding, what: &str) -> Result<()> {
        let root = self.root(binding.var);
        let value = &self.values[root.0];
        let total = value.dtype.storage_bytes(value.shape.numel());
        let size = binding.size.unwrap_or(total - binding.offset.min(total));
        let align = u64::from(self.ctx.limits().min_storage_buffer_offset_alignment);
        let end = binding.offset.checked_add(size);
        if end.is_none_or(|end| end > total) {
            return Err(GpuError::Invalid(format!(
                "{label}: binding window {}+{size} of a {total}-byte tensor is out of range",
                binding.offset
            )));
        }
        let offset = match value.parts.iter().find(|p| p.contains(&binding.offset)) {
            Some(part) if binding.offset + size <= part.end => binding.offset - part.start,
            Some(_) => {
                return Err(GpuError::Invalid(format!(
                    "{label}: {what} of shape {} is stored in parts of at most {} bytes (this \
                     device's largest binding), and this op cannot split it",
                    self.values[binding.var.0].shape,
                    self.ctx.max_binding_bytes()
                )));
            }
            None => binding.offset,
        };
        // A window that starts a part is at offset 0 of that part's buffer.
        if offset % align != 0 {
            return Err(GpuError::Invalid(format!(
                "{label}: binding window {}+{size} of a {total}-byte tensor is misaligned",
                binding.offset
            )));
        }
        let max_binding = self.ctx.max_binding_bytes();
        if size > max_binding {
            return Err(GpuError::Invalid(format!(
                "{label}: {what} of shape {} needs a {size}-byte binding, over this device's \
                 largest ({max_binding} bytes), and this op cannot split it",
                self.values[binding.var.0].shape
            )));
        }
        Ok(())
    }

    /// Records an op and returns its output.
    pub(crate) fn push(&mut self, spec: OpSpec) -> Result<Var> {
        let out_bytes = spec.out_dtype.storage_bytes(spec.out_shape.numel());
        let max_binding = self.ctx.max_binding_bytes();
        if out_bytes > max_binding {
            return Err(GpuError::Invalid(format!(
                "{}: output of shape {} ({out_bytes} bytes) is over this device's largest binding \
                 ({max_binding} bytes), and this op cannot split it",
                spec.label, spec.out_shape
            )));
        }
        let output = self.add_value(
            spec.out_shape.clone(),
            spec.out_dtype,
            Storage::Intermediate,
        );
        if let Err(e) = self.record(Binding::from(output), spec) {
            self.values.pop();
            return Err(e);
        }
        Ok(output)
    }

    /// Records an op that writes (part of) an existing intermediate instead of a new one; used to
    /// split work whose inputs are too large for one binding.
    pub(crate) fn push_into(&mut self, target: Var, spec: OpSpec) -> Result<()> {
        let value = &self.values[target.0];
        if value.shape != spec.out_shape || value.dtype != spec.out_dtype {
            return Err(GpuError::Invalid(format!(
                "{}: cannot write into a tensor of shape {}",
                spec.label, value.shape
            )));
        }
        self.record(Binding::from(target), spec)
    }

    /// Records an op that writes the window `target` of an intermediate made by [`Graph::alloc`]
    /// (`spec.out_shape` is ignored); how split ops write their parts.
    pub(crate) fn push_window(&mut self, target: Binding, spec: OpSpec) -> Result<()> {
        let value = &self.values[target.var.0];
        if value.dtype != spec.out_dtype {
            return Err(GpuError::Invalid(format!(
                "{}: cannot write {:?} into a {:?} tensor",
                spec.label, spec.out_dtype, value.dtype
            )));
        }
        self.record(target, spec)
    }

    fn record(&mut self, output: Binding, spec: OpSpec) -> Result<()> {
        if spec.params.0.len() as u64 * 4 > PARAM_BLOCK_BYTES {
            return Err(GpuError::Invalid(format!(
                "{}: too many parameters",
                spec.label
            )));
        }
        let max_groups = self.ctx.limits().max_compute_workgroups_per_dimension;
        if spec.workgroups.iter().any(|&g| g > max_groups) {
            return Err(GpuError::Invalid(format!(
                "{}: dispatch {:?} is over the device's {max_groups} workgroups per dimension",
                spec.label, spec.workgroups
            )));
        }
        if !matches!(
            self.values[output.var.0].storage,
            Storage::Intermediate | Storage::Output
        ) {
            return Err(GpuError::Invalid(format!(
                "{}: can only write intermediates",
                spec.label
            )));
        }
        for binding in spec.inputs.iter().flatten() {
            self.check_binding(&spec.label, binding, "input")?;
        }
        self.check_binding(&spec.label, &output, "output")?;
        let inputs: Vec<Input> = spec
            .inputs
            .into_iter()
            .map(|input| {
                input.map(|b| Binding {
                    var: self.root(b.var),
                    ..b
                })
            })
            .collect();
        let bound = |b: &Binding| {
            b.size.unwrap_or_else(|| {
                let v = &self.values[b.var.0];
                v.dtype.storage_bytes(v.shape.numel())
            })
        };
        let bytes = inputs.iter().flatten().map(bound).sum::<u64>() + bound(&output);
        self.ops.push(Op {
            label: spec.label,
            key: spec.key,
            inputs,
            output,
            params: spec.params.0,
            workgroups: spec.workgroups,
            cost: OpCost {
                shape: spec.out_shape.to_string(),
                flops: 0,
                bytes,
            },
            fallback: None,
        });
        Ok(())
    }

    /// Gives the op recorded last a portable kernel to fall back to if its own does not compile
    /// on the adapter: same bindings and parameters, `workgroups` its dispatch size.
    pub(crate) fn offer_fallback(&mut self, key: KernelKey, workgroups: [u32; 3]) {
        if let Some(op) = self.ops.last_mut() {
            op.fallback = Some((key, workgroups));
        }
    }

    /// Counts `flops` floating-point operations for the op recorded last (for profiles).
    pub(crate) fn count_flops(&mut self, flops: u64) {
        if let Some(op) = self.ops.last_mut() {
            op.cost.flops = flops;
        }
    }

    /// Plans memory and prepares everything a replay needs.
    pub fn build(self) -> Result<Executable> {
        Executable::new(self, true)
    }

    /// Like [`Graph::build`], but every tensor gets a buffer of its own (the reference that the
    /// memory plan is tested against).
    pub fn build_unplanned(self) -> Result<Executable> {
        Executable::new(self, false)
    }
}

/// Loop iterations one invocation may run. llvmpipe (Mesa's software adapter) stops every loop of
/// an invocation once 65,535 iterations have run in all of them, silently, leaving the rest of the
/// output unwritten; kernels keep under this budget (with a margin) on every adapter, so that a
/// shape that works on one adapter works on all.
pub(crate) const LOOP_BUDGET: usize = 60_000;

/// Splits a 1-D count of workgroups over x and y so neither exceeds the per-dimension limit.
/// Kernels recover the linear index as `wg.x + wg.y * num_workgroups.x`.
pub(crate) fn grid(groups: usize) -> [u32; 3] {
    const MAX_X: usize = 32768;
    if groups <= MAX_X {
        [groups.max(1) as u32, 1, 1]
    } else {
        [MAX_X as u32, groups.div_ceil(MAX_X) as u32, 1]
    }
}

/// What a built graph costs.
#[derive(Clone, Debug, Default)]
pub struct GraphStats {
    /// Dispatches in one run.
    pub dispatches: usize,
    /// Submits so far (one per [`Executable::run`]).
    pub submits: usize,
    pub runs: usize,
    /// Bytes of the buffers the memory plan allocated for intermediates.
    pub planned_bytes: u64,
    /// What the intermediates would take with a buffer each.
    pub unplanned_bytes: u64,
    /// Intermediate buffers allocated.
    pub buffers: usize,
    pub weight_bytes: u64,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub kernels: usize,
    /// Ops whose kernel variant did not compile on the adapter and that run the portable kernel.
    pub fallbacks: usize,
}

struct CompiledOp {
    /// Named in errors of [`Executable::run_op_by_op`] and in profiles.
    label: String,
    /// `shader:entry`, for profiles.
    kernel_name: String,
    cost: OpCost,
    kernel: Arc<Kernel>,
    bind_group: wgpu::BindGroup,
    param_offset: u32,
    workgroups: [u32; 3],
}

impl CompiledOp {
    fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[self.param_offset]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// A planned graph, ready to replay.
pub struct Executable {
    ctx: Context,
    values: Vec<Value>,
    tensors: Vec<Option<Tensor>>,
    /// Where each var's bytes live (one entry, or one per part).
    buffers: Vec<Vec<(Range<u64>, Arc<GpuBuffer>)>>,
    ops: Vec<CompiledOp>,
    uniform: wgpu::Buffer,
    words: Vec<u32>,
    scalar_slots: Vec<Vec<usize>>,
    dirty: bool,
    stats: GraphStats,
    /// Copies appended to every run, after the compute pass: (from output, into input).
    feedback: Vec<(Tensor, Tensor)>,
    /// See [`Executable::set_max_dispatches_per_submit`].
    max_dispatches_per_submit: Option<usize>,
    /// See [`Executable::stage_output`].
    staged: Option<StagedOutput>,
}

/// One output copied by every run, within the run's own submit, into the next buffer of a ring
/// the CPU can map: a run's result is read while later runs are already queued.
struct StagedOutput {
    source: Tensor,
    ring: Vec<wgpu::Buffer>,
    /// The ring buffer the next run fills.
    next: usize,
    /// Runs submitted and not yet read, oldest first: (ring buffer, the submission filling it).
    unread: VecDeque<(usize, wgpu::SubmissionIndex)>,
}

/// Assigns each interval (first, last, bytes) a slot so that slots never hold overlapping
/// intervals; returns the slot of each and the size of each slot. Largest first, first fit.
fn plan_slots(intervals: &[(usize, usize, u64)]) -> (Vec<usize>, Vec<u64>) {
    let mut order: Vec<usize> = (0..intervals.len()).collect();
    order.sort_by(|&a, &b| intervals[b].2.cmp(&intervals[a].2).then(a.cmp(&b)));
    let mut slot_of = vec![0; intervals.len()];
    let mut slots: Vec<(u64, Vec<(usize, usize)>)> = Vec::new();
    for i in order {
        let (first, last, bytes) = intervals[i];
        let free = slots
            .iter()
            .position(|(_, taken)| taken.iter().all(|&(f, l)| last < f || first > l));
        let slot = match free {
            Some(slot) => slot,
            None => {
                slots.push((bytes, Vec::new()));
                slots.len() - 1
            }
        };
        slots[slot].1.push((first, last));
        slot_of[i] = slot;
    }
    (slot_of, slots.into_iter().map(|(bytes, _)| bytes).collect())
}

impl Executable {
    fn new(graph: Graph, planned: bool) -> Result<Self> {
        let Graph {
            ctx,
            values,
            ops,
            scalars,
        } = graph;
        let bytes_of = |v: &Value| v.dtype.storage_bytes(v.shape.numel());
        let mut stats = GraphStats {
            dispatches: ops.len(),
            ..Default::default()
        };

        // Liveness: an intermediate lives from the op that writes it to the last op that reads it.
        let mut first = vec![usize::MAX; values.len()];
        let mut last = vec![0usize; values.len()];
        for (i, op) in ops.iter().enumerate() {
            for binding in op.inputs.iter().flatten() {
                last[binding.var.0] = i;
            }
            let out = op.output.var.0;
            first[out] = first[out].min(i);
            last[out] = last[out].max(i);
        }
        let mut tensors: Vec<Option<Tensor>> = vec![None; values.len()];
        let mut intermediates = Vec::new();
        let mut output_parts = Vec::new();
        for (i, value) in values.iter().enumerate() {
            match &value.storage {
                Storage::External { tensor, weight } => {
                    if *weight {
                        stats.weight_bytes += tensor.bytes();
                    } else {
                        stats.input_bytes += tensor.bytes();
                    }
                    tensors[i] = Some(tensor.clone());
                }
                Storage::Output if value.parts.is_empty() => {
                    let tensor = Tensor::empty(&ctx, value.shape.clone(), value.dtype)?;
                    stats.output_bytes += tensor.bytes();
                    tensors[i] = Some(tensor);
                }
                Storage::Output => {
                    for part in &value.parts {
                        let bytes = part.end - part.start;
                        let buffer = create_buffer(&ctx, "output part", bytes)?;
                        stats.output_bytes += bytes;
                        output_parts.push((i, part.clone(), Arc::new(buffer)));
                    }
                }
                Storage::Intermediate => {
                    stats.unplanned_bytes += bytes_of(value);
                    let interval = (first[i], last[i].max(first[i]));
                    if value.parts.is_empty() {
                        intermediates.push((i, 0..bytes_of(value), interval));
                    }
                    for part in &value.parts {
                        intermediates.push((i, part.clone(), interval));
                    }
                }
                Storage::View { .. } => {}
            }
        }
        let intervals: Vec<_> = intermediates
            .iter()
            .map(|(_, range, (first, last))| (*first, *last, range.end - range.start))
            .collect();
        let (slot_of, slot_bytes) = if planned {
            plan_slots(&intervals)
        } else {
            (
                (0..intervals.len()).collect(),
                intervals.iter().map(|i| i.2).collect(),
            )
        };
        let mut slot_buffers = Vec::with_capacity(slot_bytes.len());
        for (slot, &bytes) in slot_bytes.iter().enumerate() {
            slot_buffers.push(Arc::new(create_buffer(
                &ctx,
                &format!("pool {slot}"),
                bytes,
            )?));
            stats.planned_bytes += bytes.max(4);
        }
        stats.buffers = slot_buffers.len();
        // Where each var's bytes live: one buffer, or one per part.
        let mut buffers: Vec<Vec<(Range<u64>, Arc<GpuBuffer>)>> = values
            .iter()
            .zip(&tensors)
            .map(|(value, tensor)| match tensor {
                Some(t) => vec![(0..bytes_of(value), t.shared_buffer())],
                None => Vec::new(),
            })
            .collect();
        for ((var, range, _), &slot) in intermediates.iter().zip(&slot_of) {
            let value = &values[*var];
            if value.parts.is_empty() {
                tensors[*var] = Some(Tensor::from_buffer(
                    Arc::clone(&slot_buffers[slot]),
                    value.shape.clone(),
                    value.dtype,
                ));
            }
            buffers[*var].push((range.clone(), Arc::clone(&slot_buffers[slot])));
        }
        for (var, range, buffer) in output_parts {
            buffers[var].push((range, buffer));
        }
        // Views share their base's buffers (bases always come before their views).
        for (i, value) in values.iter().enumerate() {
            if let Storage::View { base } = value.storage {
                tensors[i] = tensors[base.0].as_ref().map(|t| {
                    Tensor::from_buffer(t.shared_buffer(), value.shape.clone(), value.dtype)
                });
                buffers[i] = buffers[base.0].clone();
            }
        }

        // One uniform block per op, written once here and again only where a scalar changes.
        let block_words = (PARAM_BLOCK_BYTES / 4) as usize;
        let mut words = vec![0u32; ops.len().max(1) * block_words];
        let mut scalar_slots = vec![Vec::new(); scalars.len()];
        for (i, op) in ops.iter().enumerate() {
            for (j, word) in op.params.iter().enumerate() {
                let at = i * block_words + j;
                words[at] = match *word {
                    Word::Bits(bits) => bits,
                    Word::Scalar(s) => {
                        scalar_slots[s.0].push(at);
                        scalars[s.0].to_bits()
                    }
                };
            }
        }
        let uniform = ctx.scoped("allocating the graph's parameters", || {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("op params"),
                size: (words.len() * 4) as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;

        let mut compiled = Vec::with_capacity(ops.len());
        for (i, mut op) in ops.into_iter().enumerate() {
            let kernel = match (ctx.kernel(&op.key), op.fallback.take()) {
                (Ok(kernel), _) => kernel,
                (Err(e), Some((key, workgroups))) => {
                    tracing::warn!(
                        "{}: the kernel {}:{} does not compile on this adapter ({e}); using the \
                         portable {}:{}",
                        op.label,
                        op.key.shader,
                        op.key.entry,
                        key.shader,
                        key.entry
                    );
                    let kernel = ctx.kernel(&key)?;
                    (op.key, op.workgroups) = (key, workgroups);
                    stats.fallbacks += 1;
                    kernel
                }
                (Err(e), None) => return Err(e),
            };
            // The buffer behind a window and the window's offset in it (checked when recorded).
            let resolve = |binding: &Binding| {
                let parts = &buffers[binding.var.0];
                let value = &values[binding.var.0];
                let size = binding
                    .size
                    .unwrap_or(bytes_of(value) - binding.offset)
                    .max(4);
                parts
                    .iter()
                    .find(|(range, _)| range.contains(&binding.offset) || range.is_empty())
                    .map(|(range, buffer)| wgpu::BufferBinding {
                        buffer,
                        offset: binding.offset - range.start,
                        size: wgpu::BufferSize::new(size),
                    })
                    .ok_or_else(|| {
                        GpuError::Invalid(format!("{}: reads a tensor no op writes", op.label))
                    })
            };
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &uniform,
                    offset: 0,
                    size: wgpu::BufferSize::new(PARAM_BLOCK_BYTES),
                }),
            }];
            for (j, input) in op.inputs.iter().enumerate() {
                let resource = match input {
                    Some(binding) => {
                        if first[binding.var.0] >= i
                            && matches!(values[binding.var.0].storage, Storage::Intermediate)
                        {
                            return Err(GpuError::Invalid(format!(
                                "{}: reads a tensor before any op writes it",
                                op.label
                            )));
                        }
                        resolve(binding)?
                    }
                    None => wgpu::BufferBinding {
                        buffer: ctx.placeholder(),
                        offset: 0,
                        size: None,
                    },
                };
                entries.push(wgpu::BindGroupEntry {
                    binding: 1 + j as u32,
                    resource: wgpu::BindingResource::Buffer(resource),
                });
            }
            entries.push(wgpu::BindGroupEntry {
                binding: 1 + op.inputs.len() as u32,
                resource: wgpu::BindingResource::Buffer(resolve(&op.output)?),
            });
            let bind_group = ctx.scoped(&format!("binding {}", op.label), || {
                ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(&op.label),
                    layout: &kernel.layout,
                    entries: &entries,
                })
            })?;
            compiled.push(CompiledOp {
                label: op.label,
                kernel_name: format!("{}:{}", op.key.shader, op.key.entry),
                cost: op.cost,
                kernel,
                bind_group,
                param_offset: (i as u64 * PARAM_BLOCK_BYTES) as u32,
                workgroups: op.workgroups,
            });
        }
        stats.kernels = ctx.kernel_count();
        Ok(Self {
            ctx,
            values,
            tensors,
            buffers,
            ops: compiled,
            uniform,
            words,
            scalar_slots,
            dirty: true,
            stats,
            feedback: Vec::new(),
            max_dispatches_per_submit: None,
            staged: None,
        })
    }

    pub fn stats(&self) -> &GraphStats {
        &self.stats
    }

    pub fn set_scalar(&mut self, scalar: Scalar, value: f32) {
        for &at in &self.scalar_slots[scalar.0] {
            self.words[at] = value.to_bits();
        }
        self.dirty = true;
    }

    fn upload_params(&mut self) -> Result<()> {
        if self.dirty {
            self.ctx.scoped("updating op parameters", || {
                self.ctx
                    .queue()
                    .write_buffer(&self.uniform, 0, bytemuck::cast_slice(&self.words))
            })?;
            self.dirty = false;
        }
        Ok(())
    }

    fn encode(&self, ops: &[CompiledOp], with_feedback: bool) -> wgpu::CommandBuffer {
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("graph"),
                });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("graph"),
                timestamp_writes: None,
            });
            for op in ops {
                op.dispatch(&mut pass);
            }
        }
        if with_feedback {
            self.encode_feedback(&mut encoder);
        }
        encoder.finish()
    }

    /// The copies of [`Self::feed_back`] and [`Self::stage_output`], appended after a run's last
    /// dispatch. A run that encodes them must be followed by [`Self::finish_run`].
    fn encode_feedback(&self, encoder: &mut wgpu::CommandEncoder) {
        for (from, into) in &self.feedback {
            encoder.copy_buffer_to_buffer(from.buffer(), 0, into.buffer(), 0, from.bytes());
        }
        if let Some(staged) = &self.staged {
            let source = &staged.source;
            encoder.copy_buffer_to_buffer(
                source.buffer(),
                0,
                &staged.ring[staged.next],
                0,
                source.bytes(),
            );
        }
    }

    /// Counts a run whose last submit (with the copies of [`Self::encode_feedback`]) was
    /// `submission`.
    fn finish_run(&mut self, submission: wgpu::SubmissionIndex) {
        self.stats.runs += 1;
        if let Some(staged) = &mut self.staged {
            staged.unread.push_back((staged.next, submission));
            staged.next = (staged.next + 1) % staged.ring.len();
            // The oldest unread run's copy is overwritten by the run just submitted.
            if staged.unread.len() > staged.ring.len() {
                staged.unread.pop_front();
            }
        }
    }

    /// From now on every run also copies output `var` (f32) into the next of `depth` buffers the
    /// CPU can map, in the run's own submit; [`Self::read_staged_async`] reads them in the order of
    /// the runs, waiting for that run only. A loop can so submit run `i + 1` before it reads run
    /// `i`, and the GPU never waits for the CPU between runs. With `depth` runs unread, the next
    /// run overwrites the oldest one's copy.
    pub fn stage_output(&mut self, var: Var, depth: usize) -> Result<()> {
        let source = self.tensor(var)?;
        if source.dtype() != DType::F32 || depth == 0 {
            return Err(GpuError::Invalid(format!(
                "only an f32 output can be staged, into at least one buffer (got {:?}, {depth})",
                source.dtype()
            )));
        }
        let ring = (0..depth)
            .map(|_| staging_buffer(&self.ctx, source.bytes().max(4)))
            .collect::<Result<_>>()?;
        self.staged = Some(StagedOutput {
            source,
            ring,
            next: 0,
            unread: VecDeque::new(),
        });
        Ok(())
    }

    /// The staged output ([`Self::stage_output`]) of the oldest run not yet read, once that run
    /// has finished; later runs go on meanwhile.
    pub async fn read_staged_async(&mut self) -> Result<Vec<f32>> {
        let staged = self
            .staged
            .as_mut()
            .ok_or_else(|| GpuError::Invalid("no output of this graph is staged".into()))?;
        let (slot, submission) = staged.unread.pop_front().ok_or_else(|| {
            GpuError::Invalid("no run of this graph is waiting to be read".into())
        })?;
        let staged = &*staged;
        let bytes = map_read(
            &self.ctx,
            &staged.ring[slot],
            staged.source.bytes(),
            Some(submission),
        )
        .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Blocking [`Self::read_staged_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_staged(&mut self) -> Result<Vec<f32>> {
        pollster::block_on(self.read_staged_async())
    }

    /// Forgets the runs whose staged output has not been read: the next read is of the next run.
    pub fn discard_unread_runs(&mut self) {
        if let Some(staged) = &mut self.staged {
            staged.unread.clear();
        }
    }

    /// Runs submitted whose staged output has not been read ([`Self::stage_output`]).
    pub fn unread_runs(&self) -> usize {
        self.staged.as_ref().map_or(0, |s| s.unread.len())
    }

    /// After every run, copies output `from` into input `into` within the same submit, so that an
    /// iteration (a denoising step) feeds its result to the next replay without a round trip.
    pub fn feed_back(&mut self, from: Var, into: Var) -> Result<()> {
        let (source, target) = (self.tensor(from)?, self.tensor(into)?);
        let is_input = matches!(
            self.values.get(into.0).map(|v| &v.storage),
            Some(Storage::External { weight: false, .. })
        );
        if !is_input || source.bytes() != target.bytes() || source.dtype() != target.dtype() {
            return Err(GpuError::Invalid(format!(
                "cannot feed an output of shape {} back into {} (must be an input of the same size)",
                source.shape(),
                target.shape()
            )));
        }
        self.feedback.push((source, target));
        Ok(())
    }

    /// Replays the whole graph: one compute pass, one submit. Does not wait for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run(&mut self) -> Result<()> {
        self.run_unless(&AtomicBool::new(false)).map(|_| ())
    }

    /// [`Self::run`] without blocking between sliced submits.
    pub async fn run_async(&mut self) -> Result<()> {
        self.run_unless_async(&AtomicBool::new(false))
            .await
            .map(|_| ())
    }

    /// Blocking [`Self::run_unless_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_unless(&mut self, stop: &AtomicBool) -> Result<bool> {
        pollster::block_on(self.run_unless_async(stop))
    }

    /// [`Self::run`], checking `stop` before every submit: with sliced submits a long graph can
    /// be abandoned part way. Returns whether it ran to the end; when it did not, its outputs
    /// (and any feedback) are not to be used. Between slices it waits for the GPU without
    /// blocking, so that in a browser the page draws meanwhile.
    pub async fn run_unless_async(&mut self, stop: &AtomicBool) -> Result<bool> {
        self.upload_params()?;
        let slice = self
            .max_dispatches_per_submit
            .unwrap_or(self.ops.len())
            .max(1);
        let slices = self.ops.len().div_ceil(slice).max(1);
        for i in 0..slices {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let ops =
                &self.ops[(i * slice).min(self.ops.len())..((i + 1) * slice).min(self.ops.len())];
            let last = i + 1 == slices;
            let commands = self.encode(ops, last);
            let submission = self.ctx.scoped("submitting the graph", || {
                self.ctx.queue().submit([commands])
            })?;
            self.stats.submits += 1;
            if last {
                self.finish_run(submission);
            } else {
                // Let whoever else uses the queue (a renderer) in before the next slice.
                self.ctx.wait_async().await?;
            }
        }
        Ok(true)
    }

    /// Splits every [`Executable::run`] into submits of at most `n` dispatches, each waited for
    /// before the next: on a device shared with a renderer, frames are drawn between slices
    /// instead of after the whole graph (a denoising step on a software adapter takes seconds).
    /// `None` (the default) is one submit per run.
    pub fn set_max_dispatches_per_submit(&mut self, n: Option<usize>) {
        self.max_dispatches_per_submit = n;
    }

    /// Replays the graph once (with its feedback, as [`Self::run`] does) with every dispatch in a
    /// compute pass of its own between two timestamps, and returns each one's GPU time. Needs
    /// the adapter's `TIMESTAMP_QUERY` ([`crate::gpu::Capabilities`]); without it, an error that
    /// says so. Passes of their own add a little time per dispatch on some drivers, so the total
    /// is an upper bound of a plain replay's.
    pub async fn profile_async(&mut self) -> Result<Profile> {
        let ctx = self.ctx.clone();
        if !ctx.capabilities().timestamp_query {
            return Err(GpuError::Invalid(format!(
                "the adapter {} does not offer timestamp queries (TIMESTAMP_QUERY): GPU times \
                 cannot be measured on it",
                ctx.adapter_info().name
            )));
        }
        self.upload_params()?;
        // Two queries per dispatch; a query set holds at most 4096.
        let chunk = (wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;
        let seconds_per_tick = f64::from(ctx.queue().get_timestamp_period()) * 1e-9;
        let chunks = self.ops.len().div_ceil(chunk).max(1);
        let mut timings = Vec::with_capacity(self.ops.len());
        for c in 0..chunks {
            let ops =
                &self.ops[(c * chunk).min(self.ops.len())..((c + 1) * chunk).min(self.ops.len())];
            let count = 2 * ops.len() as u32;
            if count == 0 {
                break;
            }
            let (set, resolved) = ctx.scoped("allocating timestamp queries", || {
                let set = ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                });
                let resolved = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("profile timestamps"),
                    size: 8 * u64::from(count),
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                (set, resolved)
            })?;
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("profile"),
                    });
            for (i, op) in ops.iter().enumerate() {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(&op.label),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &set,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    }),
                });
                op.dispatch(&mut pass);
            }
            let last = c + 1 == chunks;
            if last {
                self.encode_feedback(&mut encoder);
            }
            encoder.resolve_query_set(&set, 0..count, &resolved, 0);
            let submission = ctx.scoped("submitting a profiled replay", || {
                ctx.queue().submit([encoder.finish()])
            })?;
            self.stats.submits += 1;
            let bytes = read_buffer(&ctx, &resolved, 8 * u64::from(count)).await?;
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
            for (i, op) in ops.iter().enumerate() {
                timings.push(OpTiming {
                    label: op.label.clone(),
                    kernel: op.kernel_name.clone(),
                    shape: op.cost.shape.clone(),
                    seconds: ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64
                        * seconds_per_tick,
                    flops: op.cost.flops,
                    bytes: op.cost.bytes,
                });
            }
            if last {
                self.finish_run(submission);
            }
        }
        Ok(Profile { ops: timings })
    }

    /// Blocking [`Self::profile_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&mut self) -> Result<Profile> {
        pollster::block_on(self.profile_async())
    }

    /// Replays op by op, one submit and one wait each, naming the op that fails.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_op_by_op(&mut self) -> Result<()> {
        self.upload_params()?;
        for i in 0..self.ops.len() {
            let op = &self.ops[i..=i];
            let last = i + 1 == self.ops.len();
            let commands = self.encode(op, last);
            let submission = self.ctx.scoped(&format!("running {}", op[0].label), || {
                self.ctx.queue().submit([commands])
            })?;
            self.ctx.wait()?;
            self.stats.submits += 1;
            if last {
                self.finish_run(submission);
            }
        }
        Ok(())
    }

    /// The tensor behind an input or output of the graph (intermediates share memory and have none).
    pub fn tensor(&self, var: Var) -> Result<Tensor> {
        let readable =
            |storage: &Storage| matches!(storage, Storage::Output | Storage::External { .. });
        match self.values.get(var.0).map(|v| &v.storage) {
            Some(Storage::View { base }) if readable(&self.values[base.0].storage) => self.tensors
                [var.0]
                .clone()
                .ok_or_else(|| GpuError::Invalid("unbound var".into())),
            Some(storage) if readable(storage) => self.tensors[var.0]
                .clone()
                .ok_or_else(|| GpuError::Invalid("unbound var".into())),
            _ => Err(GpuError::Invalid(
                "only inputs and outputs of a graph can be read; mark it with Graph::output".into(),
            )),
        }
    }

    /// Blocking [`Self::read_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, var: Var) -> Result<Vec<f32>> {
        pollster::block_on(self.read_async(var))
    }

    /// Reads an output back (after the GPU's work); one stored in parts is read part by part.
    pub async fn read_async(&self, var: Var) -> Result<Vec<f32>> {
        let split = self
            .values
            .get(var.0)
            .is_some_and(|v| matches!(v.storage, Storage::Output) && !v.parts.is_empty());
        if !split {
            return self.tensor(var)?.to_vec_f32_async(&self.ctx).await;
        }
        let value = &self.values[var.0];
        if value.dtype != DType::F32 {
            return Err(GpuError::Invalid(format!(
                "cannot read a {:?} output as f32",
                value.dtype
            )));
        }
        let mut out = Vec::with_capacity(value.shape.numel());
        for (range, buffer) in &self.buffers[var.0] {
            let len = ((range.end - range.start) / 4) as usize;
            let part = Tensor::from_buffer(Arc::clone(buffer), Shape(vec![len]), DType::F32);
            out.extend(part.to_vec_f32_async(&self.ctx).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::plan_slots;

    #[test]
    fn disjoint_lifetimes_share_a_slot() {
        // a: ops 0-1, b: 1-2, c: 2-3 (disjoint from a), d: 3-3.
        let intervals = [(0, 1, 100), (1, 2, 80), (2, 3, 60), (3, 3, 200)];
        let (slot_of, sizes) = plan_slots(&intervals);
        for i in 0..intervals.len() {
            for j in 0..i {
                let (a, b) = (intervals[i], intervals[j]);
                let overlap = !(a.1 < b.0 || b.1 < a.0);
                if overlap {
                    assert_ne!(
                        slot_of[i], slot_of[j],
                        "{i} and {j} overlap but share a slot"
                    );
                }
                assert!(sizes[slot_of[i]] >= a.2);
            }
        }
        assert!(sizes.iter().sum::<u64>() < intervals.iter().map(|i| i.2).sum::<u64>());
    }
}
