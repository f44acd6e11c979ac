//! Record a forward pass once, plan its memory, replay it with one submit.
//!
//! Ops are recorded over virtual tensors ([`Var`]). [`Graph::build`] assigns every intermediate a
//! buffer by liveness (greedy by size: the largest tensors are placed first and tensors whose
//! lifetimes do not overlap share a buffer), writes every op's parameters into one uniform buffer
//! that ops index by dynamic offset, and makes all bind groups. [`Executable::run`] then records one
//! compute pass and submits it once; only scalars set with [`Executable::set_scalar`] change.
//!
//! In parts: `record` (the ops of a forward pass over virtual tensors, checked as recorded),
//! `node` (the backend-neutral recorded op the CPU backend runs), `plan` (where each
//! intermediate lives, by liveness, for both backends), `executable` (a built graph on either
//! backend), `execute` (the wgpu backend's buffers, bind groups, replays, read-backs) and
//! `staging` (its outputs read while later runs are already queued).

mod executable;
mod execute;
mod node;
pub(crate) mod plan;
mod record;
mod staging;

use std::ops::Range;

use super::kernel::KernelKey;
use super::tensor::{DType, Shape, Tensor};

pub use executable::Executable;
pub use execute::GraphStats;
pub(crate) use node::{Node, OpKind};
pub use record::Graph;

/// A tensor of a graph: an input bound to an existing [`Tensor`], or the result of an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

/// A scalar parameter that can change between replays (the timestep, a scheduler coefficient).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scalar(pub(crate) usize);

pub(crate) enum Storage {
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

pub(crate) struct Value {
    pub shape: Shape,
    pub dtype: DType,
    pub storage: Storage,
    /// Byte ranges stored in buffers of their own, for an intermediate larger than one binding
    /// (see [`Graph::alloc`]); empty when the value is stored whole.
    pub parts: Vec<Range<u64>>,
}

/// The pair a built graph copies after each run, `source` (an output) into `target`, checked:
/// `target` must be an input (not a weight) of the same size and dtype. Both backends'
/// `feed_back` use it.
pub(crate) fn feedback_pair(
    values: &[Value],
    (source, target): (Tensor, Tensor),
    into: Var,
) -> Result<(Tensor, Tensor), super::error::GpuError> {
    let is_input = matches!(
        values.get(into.0).map(|v| &v.storage),
        Some(Storage::External { weight: false, .. })
    );
    if !is_input || source.bytes() != target.bytes() || source.dtype() != target.dtype() {
        return Err(super::error::GpuError::Invalid(format!(
            "cannot feed an output of shape {} back into {} (must be an input of the same size)",
            source.shape(),
            target.shape()
        )));
    }
    Ok((source, target))
}

/// A coefficient of an op: fixed when recorded, or a [`Scalar`] that may change between replays.
#[derive(Clone, Copy, Debug)]
pub enum Coef {
    Const(f32),
    Scalar(Scalar),
}

impl Coef {
    /// Its value, given the current values of the graph's scalars.
    pub(crate) fn value(self, scalars: &[f32]) -> f32 {
        match self {
            Coef::Const(value) => value,
            Coef::Scalar(scalar) => scalars[scalar.0],
        }
    }
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
