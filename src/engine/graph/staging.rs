//! Staged outputs: a run's result copied, inside the run's own submit, into a ring of buffers the
//! CPU can map, so that a loop reads run `i` while run `i + 1` is already queued.

use std::collections::VecDeque;

use super::super::error::{GpuError, Result};
use super::super::tensor::{DType, Tensor, map_read, staging_buffer};
use super::Var;
use super::execute::GpuExecutable;

/// One output copied by every run, within the run's own submit, into the next buffer of a ring
/// the CPU can map: a run's result is read while later runs are already queued.
pub(super) struct StagedOutput {
    pub(super) source: Tensor,
    pub(super) ring: Vec<wgpu::Buffer>,
    /// The ring buffer the next run fills.
    pub(super) next: usize,
    /// Runs submitted and not yet read, oldest first: (ring buffer, the submission filling it).
    pub(super) unread: VecDeque<(usize, wgpu::SubmissionIndex)>,
}

impl GpuExecutable {
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
}
