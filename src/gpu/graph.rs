//! Record a forward pass once, plan its memory, replay it with one submit.
//!
//! Ops are recorded over virtual tensors ([`Var`]). [`Graph::build`] assigns every intermediate a
//! buffer by liveness (greedy by size: the largest tensors are placed first and tensors whose
//! lifetimes do not overlap share a buffer), writes every op's parameters into one uniform buffer
//! that ops index by dynamic offset, and makes all bind groups. [`Executable::run`] then records one
//! compute pass and submits it once; only scalars set with [`Executable::set_scalar`] change.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::context::Context;
use super::error::{GpuError, Result, shape_error};
use super::kernel::{Kernel, KernelKey, PARAM_BLOCK_BYTES};
use super::tensor::{DType, Shape, Tensor, create_buffer};

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

/// An optional input; absent ones bind the context's placeholder buffer.
pub(crate) type Input = Option<Binding>;

struct Op {
    label: String,
    key: KernelKey,
    inputs: Vec<Input>,
    output: Var,
    params: Vec<Word>,
    workgroups: [u32; 3],
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
        });
        Var(self.values.len() - 1)
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

    /// Records an op and returns its output.
    pub(crate) fn push(&mut self, spec: OpSpec) -> Result<Var> {
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
        let max_binding = self.ctx.max_binding_bytes();
        let align = u64::from(self.ctx.limits().min_storage_buffer_offset_alignment);
        for binding in spec.inputs.iter().flatten() {
            let value = &self.values[binding.var.0];
            let total = value.dtype.storage_bytes(value.shape.numel());
            let size = binding.size.unwrap_or(total - binding.offset.min(total));
            if binding.offset % align != 0 || binding.offset + size > total {
                return Err(GpuError::Invalid(format!(
                    "{}: binding window {}+{size} of a {total}-byte tensor is misaligned or out of range",
                    spec.label, binding.offset
                )));
            }
            if size > max_binding {
                return Err(GpuError::Invalid(format!(
                    "{}: input of shape {} needs a {size}-byte binding, over this device's largest \
                     ({max_binding} bytes), and this op cannot split it",
                    spec.label, value.shape
                )));
            }
        }
        let out_bytes = spec.out_dtype.storage_bytes(spec.out_shape.numel());
        if out_bytes > max_binding {
            return Err(GpuError::Invalid(format!(
                "{}: output of shape {} ({out_bytes} bytes) is over this device's largest binding \
                 ({max_binding} bytes)",
                spec.label, spec.out_shape
            )));
        }
        let output = self.add_value(spec.out_shape, spec.out_dtype, Storage::Intermediate);
        let inputs = spec
            .inputs
            .into_iter()
            .map(|input| {
                input.map(|b| Binding {
                    var: self.root(b.var),
                    ..b
                })
            })
            .collect();
        self.ops.push(Op {
            label: spec.label,
            key: spec.key,
            inputs,
            output,
            params: spec.params.0,
            workgroups: spec.workgroups,
        });
        Ok(output)
    }

    /// Records an op that writes (part of) an existing intermediate instead of a new one; used to
    /// split work whose inputs are too large for one binding.
    pub(crate) fn push_into(&mut self, target: Var, spec: OpSpec) -> Result<()> {
        let value = &self.values[target.0];
        if !matches!(value.storage, Storage::Intermediate | Storage::Output)
            || value.shape != spec.out_shape
            || value.dtype != spec.out_dtype
        {
            return Err(GpuError::Invalid(format!(
                "{}: cannot write into a tensor of shape {}",
                spec.label, value.shape
            )));
        }
        let var = self.push(spec)?;
        self.values.pop();
        if let Some(op) = self.ops.last_mut() {
            debug_assert_eq!(op.output, var);
            op.output = target;
        }
        Ok(())
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
}

struct CompiledOp {
    label: String,
    kernel: Arc<Kernel>,
    bind_group: wgpu::BindGroup,
    param_offset: u32,
    workgroups: [u32; 3],
}

/// A planned graph, ready to replay.
pub struct Executable {
    ctx: Context,
    values: Vec<Value>,
    tensors: Vec<Option<Tensor>>,
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
            first[op.output.0] = first[op.output.0].min(i);
            last[op.output.0] = last[op.output.0].max(i);
        }
        let mut tensors: Vec<Option<Tensor>> = vec![None; values.len()];
        let mut intermediates = Vec::new();
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
                Storage::Output => {
                    let tensor = Tensor::empty(&ctx, value.shape.clone(), value.dtype)?;
                    stats.output_bytes += tensor.bytes();
                    tensors[i] = Some(tensor);
                }
                Storage::Intermediate => {
                    stats.unplanned_bytes += bytes_of(value);
                    intermediates.push((i, (first[i], last[i].max(first[i]), bytes_of(value))));
                }
                Storage::View { .. } => {}
            }
        }
        let intervals: Vec<_> = intermediates
            .iter()
            .map(|&(_, interval)| interval)
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
        // Views share their base's buffer (bases always come before their views).
        for (&(var, _), &slot) in intermediates.iter().zip(&slot_of) {
            let value = &values[var];
            tensors[var] = Some(Tensor::from_buffer(
                Arc::clone(&slot_buffers[slot]),
                value.shape.clone(),
                value.dtype,
            ));
        }

        for (i, value) in values.iter().enumerate() {
            if let Storage::View { base } = value.storage {
                tensors[i] = tensors[base.0].as_ref().map(|t| {
                    Tensor::from_buffer(t.shared_buffer(), value.shape.clone(), value.dtype)
                });
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
        for (i, op) in ops.into_iter().enumerate() {
            let kernel = ctx.kernel(&op.key)?;
            let tensor_of = |var: Var| {
                tensors[var.0].as_ref().ok_or_else(|| {
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
                        let tensor = tensor_of(binding.var)?;
                        wgpu::BufferBinding {
                            buffer: tensor.buffer(),
                            offset: binding.offset,
                            size: wgpu::BufferSize::new(
                                binding
                                    .size
                                    .unwrap_or(tensor.bytes() - binding.offset)
                                    .max(4),
                            ),
                        }
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
            let out = tensor_of(op.output)?;
            entries.push(wgpu::BindGroupEntry {
                binding: 1 + op.inputs.len() as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: out.buffer(),
                    offset: 0,
                    size: wgpu::BufferSize::new(out.bytes().max(4)),
                }),
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
            ops: compiled,
            uniform,
            words,
            scalar_slots,
            dirty: true,
            stats,
            feedback: Vec::new(),
            max_dispatches_per_submit: None,
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
                pass.set_pipeline(&op.kernel.pipeline);
                pass.set_bind_group(0, &op.bind_group, &[op.param_offset]);
                let [x, y, z] = op.workgroups;
                pass.dispatch_workgroups(x, y, z);
            }
        }
        if with_feedback {
            for (from, into) in &self.feedback {
                encoder.copy_buffer_to_buffer(from.buffer(), 0, into.buffer(), 0, from.bytes());
            }
        }
        encoder.finish()
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
    pub fn run(&mut self) -> Result<()> {
        self.run_unless(&AtomicBool::new(false)).map(|_| ())
    }

    /// [`Self::run`], checking `stop` before every submit: with sliced submits a long graph can
    /// be abandoned part way. Returns whether it ran to the end; when it did not, its outputs
    /// (and any feedback) are not to be used.
    pub fn run_unless(&mut self, stop: &AtomicBool) -> Result<bool> {
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
            self.ctx.scoped("submitting the graph", || {
                self.ctx.queue().submit([commands])
            })?;
            self.stats.submits += 1;
            if !last {
                // Let whoever else uses the queue (a renderer) in before the next slice.
                self.ctx.wait()?;
            }
        }
        self.stats.runs += 1;
        Ok(true)
    }

    /// Splits every [`Executable::run`] into submits of at most `n` dispatches, each waited for
    /// before the next: on a device shared with a renderer, frames are drawn between slices
    /// instead of after the whole graph (a denoising step on a software adapter takes seconds).
    /// `None` (the default) is one submit per run.
    pub fn set_max_dispatches_per_submit(&mut self, n: Option<usize>) {
        self.max_dispatches_per_submit = n;
    }

    /// Replays op by op, one submit and one wait each, naming the op that fails.
    pub fn run_op_by_op(&mut self) -> Result<()> {
        self.upload_params()?;
        for i in 0..self.ops.len() {
            let op = &self.ops[i..=i];
            let commands = self.encode(op, i + 1 == self.ops.len());
            self.ctx.scoped(&format!("running {}", op[0].label), || {
                self.ctx.queue().submit([commands])
            })?;
            self.ctx.wait()?;
            self.stats.submits += 1;
        }
        self.stats.runs += 1;
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

    /// Reads an output back (waits for the GPU).
    pub fn read(&self, var: Var) -> Result<Vec<f32>> {
        self.tensor(var)?.to_vec_f32(&self.ctx)
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
