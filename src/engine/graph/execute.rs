//! Execution: the planned buffers, one uniform block per op, bind groups, and replays in one
//! submit.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::super::context::Context;
use super::super::error::{GpuError, Result};
use super::super::kernel::{Kernel, PARAM_BLOCK_BYTES};
use super::super::profile::{OpTiming, Profile};
use super::super::tensor::{DType, GpuBuffer, Shape, Tensor, create_buffer, read_buffer};
use super::plan::{Use, plan};
use super::record::Graph;
use super::staging::StagedOutput;
use super::{Binding, OpCost, Scalar, Storage, Value, Var, Word, feedback_pair};

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
pub(crate) struct GpuExecutable {
    pub(super) ctx: Context,
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
    pub(super) staged: Option<StagedOutput>,
}

impl GpuExecutable {
    pub(super) fn new(graph: Graph, planned: bool) -> Result<Self> {
        let Graph {
            ctx,
            values,
            ops,
            scalars,
            ..
        } = graph;
        let bytes_of = |v: &Value| v.dtype.storage_bytes(v.shape.numel());
        let mut stats = GraphStats {
            dispatches: ops.len(),
            ..Default::default()
        };

        let uses = ops.iter().map(|op| Use {
            reads: op.inputs.iter().flatten().map(|b| b.var).collect(),
            writes: op.output.var,
        });
        let memory = plan(&values, uses, planned);
        stats.unplanned_bytes = memory.unplanned_bytes;
        let first = &memory.first;
        let mut tensors: Vec<Option<Tensor>> = vec![None; values.len()];
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
                Storage::Intermediate | Storage::View { .. } => {}
            }
        }
        let slot_bytes = &memory.slot_bytes;
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
        for (var, range, slot) in &memory.placed {
            let (var, slot) = (*var, *slot);
            let value = &values[var];
            if value.parts.is_empty() {
                tensors[var] = Some(Tensor::from_buffer(
                    Arc::clone(&slot_buffers[slot]),
                    value.shape.clone(),
                    value.dtype,
                ));
            }
            buffers[var].push((range.clone(), Arc::clone(&slot_buffers[slot])));
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

    /// After every run, copies output `from` into input `into` within the same submit, so that an
    /// iteration (a denoising step) feeds its result to the next replay without a round trip.
    pub fn feed_back(&mut self, from: Var, into: Var) -> Result<()> {
        let pair = (self.tensor(from)?, self.tensor(into)?);
        self.feedback.push(feedback_pair(&self.values, pair, into)?);
        Ok(())
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
    /// the adapter's `TIMESTAMP_QUERY` ([`crate::engine::Capabilities`]); without it, an error that
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
