//! Recording: ops over virtual tensors, checked against the device's limits as they are recorded.

use std::ops::Range;

use super::super::context::Context;
use super::super::error::{GpuError, Result, shape_error};
use super::super::kernel::{KernelKey, PARAM_BLOCK_BYTES};
use super::super::tensor::{DType, Shape, Tensor};
use super::executable::Executable;
use super::{
    Binding, Input, LOOP_BUDGET, Node, Op, OpCost, OpKind, OpSpec, Scalar, Storage, Value, Var,
};

/// A forward pass being recorded. On a wgpu context each builder lowers its op to WGSL
/// dispatches at once (`ops`); on the CPU backend it records the op itself (`nodes`).
pub struct Graph {
    pub(crate) ctx: Context,
    pub(crate) values: Vec<Value>,
    pub(super) ops: Vec<Op>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) scalars: Vec<f32>,
}

impl Graph {
    pub fn new(ctx: &Context) -> Self {
        Self {
            ctx: ctx.clone(),
            values: Vec::new(),
            ops: Vec::new(),
            nodes: Vec::new(),
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
                tensor: tensor.reshaped(shape.clone()),
                weight,
            },
            _ => Storage::View { base },
        };
        let dtype = self.dtype(var);
        Ok(self.add_value(shape, dtype, storage))
    }

    /// The var that owns the storage behind `var` (itself unless it is a view).
    pub(crate) fn root(&self, var: Var) -> Var {
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

    /// Ops recorded: dispatches on a wgpu context, recorded ops on the CPU backend.
    pub fn len(&self) -> usize {
        self.ops.len() + self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether builders record [`Node`]s for the CPU backend instead of lowering to WGSL.
    pub(crate) fn records_nodes(&self) -> bool {
        self.ctx.is_cpu()
    }

    /// Records `kind` for the CPU backend; its output is a new f32 intermediate of `shape`.
    pub(crate) fn push_node(&mut self, label: &str, kind: OpKind, shape: Shape) -> Result<Var> {
        self.push_node_as(label, kind, shape, DType::F32)
    }

    /// [`Graph::push_node`] with an output of `dtype` (layout ops move u32 ids too).
    pub(crate) fn push_node_as(
        &mut self,
        label: &str,
        kind: OpKind,
        shape: Shape,
        dtype: DType,
    ) -> Result<Var> {
        let output = self.add_value(shape, dtype, Storage::Intermediate);
        self.nodes.push(Node {
            label: label.to_string(),
            kind,
            output,
        });
        Ok(output)
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
