//! Sinusoidal timestep embedding, diffusers' `get_timestep_embedding` (see `timestep.wgsl`).

use crate::engine::error::{Result, shape_error};
use crate::engine::graph::{Binding, Coef, Graph, OpKind, OpSpec, Params, Var, grid};
use crate::engine::kernel::KernelKey;
use crate::engine::tensor::{DType, Shape, Tensor};

use super::layout::GROUP;

/// `exp(-ln(max_period) * j / (half - shift))` for `j < half`, in f64, rounded to f32.
pub fn timestep_frequencies(half: usize, downscale_freq_shift: f32, max_period: f32) -> Vec<f32> {
    let denom = half as f64 - f64::from(downscale_freq_shift);
    let log_period = f64::from(max_period).ln();
    (0..half)
        .map(|j| (-log_period * j as f64 / denom).exp() as f32)
        .collect()
}

/// Fails unless a timestep embedding of `batch` rows of `dim` has finite frequencies; returns
/// `dim / 2`, the number of frequencies. Both backends check with it.
pub(crate) fn check_timestep(
    batch: usize,
    dim: usize,
    downscale_freq_shift: f32,
    max_period: f32,
) -> Result<usize> {
    let op = "timestep_embedding";
    let half = dim / 2;
    if batch == 0 || half == 0 {
        return Err(shape_error(
            op,
            format!("needs batch >= 1 and dim >= 2, got batch {batch}, dim {dim}"),
        ));
    }
    if half as f64 == f64::from(downscale_freq_shift)
        || !max_period.is_finite()
        || max_period <= 0.0
    {
        return Err(shape_error(
            op,
            format!(
                "dim {dim} with downscale_freq_shift {downscale_freq_shift} and max_period \
                 {max_period} gives no finite frequencies"
            ),
        ));
    }
    Ok(half)
}

impl Graph {
    /// `[batch, dim]` sinusoidal embedding of the timestep `t` (the same for every row):
    /// `[sin(t f), cos(t f)]` (`[cos, sin]` when `flip_sin_to_cos`) with
    /// `f_j = exp(-ln(max_period) j / (dim/2 - downscale_freq_shift))`; an odd `dim` ends in a
    /// zero column. `t` may be a replay-time [`Scalar`](crate::engine::Scalar).
    pub fn timestep_embedding(
        &mut self,
        batch: usize,
        t: impl Into<Coef>,
        dim: usize,
        flip_sin_to_cos: bool,
        downscale_freq_shift: f32,
        max_period: f32,
    ) -> Result<Var> {
        let op = "timestep_embedding";
        let half = check_timestep(batch, dim, downscale_freq_shift, max_period)?;
        if self.records_nodes() {
            let kind = OpKind::TimestepEmbedding {
                t: t.into(),
                batch,
                dim,
                flip_sin_to_cos,
                downscale_freq_shift,
                max_period,
            };
            return self.push_node(op, kind, Shape(vec![batch, dim]));
        }
        let freqs = timestep_frequencies(half, downscale_freq_shift, max_period);
        let table = Tensor::from_f32(self.context(), [half], DType::F32, &freqs)?;
        let freq = self.input(&table);
        let n = batch * dim;
        self.push(OpSpec {
            label: op.to_string(),
            key: KernelKey::new("timestep.wgsl", "timestep", 1, 1),
            inputs: vec![Some(Binding::from(freq))],
            out_shape: Shape(vec![batch, dim]),
            out_dtype: DType::F32,
            params: Params::default()
                .u(n)
                .u(dim)
                .u(half)
                .u(usize::from(flip_sin_to_cos))
                .coef(t),
            workgroups: grid(n.div_ceil(GROUP)),
        })
    }
}
