//! A built graph on either backend: one type for models and pipelines, whatever runs it.

use std::sync::atomic::AtomicBool;

use super::super::cpu::executor::CpuExecutable;
use super::super::error::Result;
use super::super::profile::Profile;
use super::super::tensor::Tensor;
use super::execute::{GpuExecutable, GraphStats};
use super::record::Graph;
use super::{Scalar, Var};

/// A planned graph, ready to replay: WGSL dispatches on a wgpu device, or Rust kernels on the CPU
/// backend over one planned arena.
pub struct Executable(Backend);

enum Backend {
    Gpu(GpuExecutable),
    Cpu(CpuExecutable),
}

/// Forwards a call to whichever backend holds the graph.
macro_rules! both {
    ($self:ident, $exe:ident => $call:expr) => {
        match &$self.0 {
            Backend::Gpu($exe) => $call,
            Backend::Cpu($exe) => $call,
        }
    };
    (mut $self:ident, $exe:ident => $call:expr) => {
        match &mut $self.0 {
            Backend::Gpu($exe) => $call,
            Backend::Cpu($exe) => $call,
        }
    };
}

impl Executable {
    pub(super) fn new(graph: Graph, planned: bool) -> Result<Self> {
        Ok(Self(if graph.records_nodes() {
            Backend::Cpu(CpuExecutable::new(graph, planned)?)
        } else {
            Backend::Gpu(GpuExecutable::new(graph, planned)?)
        }))
    }

    pub fn stats(&self) -> &GraphStats {
        both!(self, exe => exe.stats())
    }

    /// Sets a replay-time scalar for the runs that follow.
    pub fn set_scalar(&mut self, scalar: Scalar, value: f32) {
        both!(mut self, exe => exe.set_scalar(scalar, value))
    }

    /// After every run, copies output `from` into input `into`, so that an iteration (a denoising
    /// step) feeds its result to the next replay without a round trip through the caller.
    pub fn feed_back(&mut self, from: Var, into: Var) -> Result<()> {
        both!(mut self, exe => exe.feed_back(from, into))
    }

    /// Replays the whole graph. On a GPU it submits and does not wait; on the CPU it returns
    /// when the work is done.
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

    /// [`Self::run`], checking `stop` before every submit (GPU) or op (CPU), so a long graph can
    /// be abandoned part way. Returns whether it ran to the end; when it did not, its outputs
    /// (and any feedback) are not to be used.
    pub async fn run_unless_async(&mut self, stop: &AtomicBool) -> Result<bool> {
        match &mut self.0 {
            Backend::Gpu(exe) => exe.run_unless_async(stop).await,
            Backend::Cpu(exe) => exe.run_unless_async(stop).await,
        }
    }

    /// Splits every run into submits of at most `n` dispatches (see
    /// [`GpuExecutable::set_max_dispatches_per_submit`]); nothing to split on the CPU, where a
    /// renderer never waits for the engine's queue.
    pub fn set_max_dispatches_per_submit(&mut self, n: Option<usize>) {
        if let Backend::Gpu(exe) = &mut self.0 {
            exe.set_max_dispatches_per_submit(n);
        }
    }

    /// Replays the graph once with every op timed: GPU timestamps (needs `TIMESTAMP_QUERY`), or
    /// the host's clock on the CPU.
    pub async fn profile_async(&mut self) -> Result<Profile> {
        match &mut self.0 {
            Backend::Gpu(exe) => exe.profile_async().await,
            Backend::Cpu(exe) => exe.profile_async().await,
        }
    }

    /// Blocking [`Self::profile_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&mut self) -> Result<Profile> {
        pollster::block_on(self.profile_async())
    }

    /// Runs op by op, each waited for: the eager reference the planned graph is tested against,
    /// and a way to find which op fails.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_op_by_op(&mut self) -> Result<()> {
        match &mut self.0 {
            Backend::Gpu(exe) => exe.run_op_by_op(),
            Backend::Cpu(exe) => exe.run_unless(&AtomicBool::new(false)).map(|_| ()),
        }
    }

    /// The tensor behind an input or output of the graph (intermediates share memory and have none).
    pub fn tensor(&self, var: Var) -> Result<Tensor> {
        both!(self, exe => exe.tensor(var))
    }

    /// Blocking [`Self::read_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, var: Var) -> Result<Vec<f32>> {
        pollster::block_on(self.read_async(var))
    }

    /// Reads an output back (after the work that writes it).
    pub async fn read_async(&self, var: Var) -> Result<Vec<f32>> {
        match &self.0 {
            Backend::Gpu(exe) => exe.read_async(var).await,
            Backend::Cpu(exe) => exe.read(var),
        }
    }

    /// From now on every run also keeps a copy of output `var` (f32), up to `depth` runs unread;
    /// [`Self::read_staged_async`] reads them in the order of the runs. On a GPU the copy is made
    /// in the run's own submit, so a loop can queue run `i + 1` before it reads run `i`.
    pub fn stage_output(&mut self, var: Var, depth: usize) -> Result<()> {
        both!(mut self, exe => exe.stage_output(var, depth))
    }

    /// The staged output of the oldest run not yet read.
    pub async fn read_staged_async(&mut self) -> Result<Vec<f32>> {
        match &mut self.0 {
            Backend::Gpu(exe) => exe.read_staged_async().await,
            Backend::Cpu(exe) => exe.read_staged(),
        }
    }

    /// Blocking [`Self::read_staged_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_staged(&mut self) -> Result<Vec<f32>> {
        pollster::block_on(self.read_staged_async())
    }

    /// Forgets the runs whose staged output has not been read: the next read is of the next run.
    pub fn discard_unread_runs(&mut self) {
        both!(mut self, exe => exe.discard_unread_runs())
    }

    /// Runs whose staged output has not been read ([`Self::stage_output`]).
    pub fn unread_runs(&self) -> usize {
        both!(self, exe => exe.unread_runs())
    }
}
