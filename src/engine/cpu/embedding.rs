//! The lookups of `embedding.wgsl` and `timestep.wgsl`: gathering rows of an embedding table, and
//! diffusers' sinusoidal timestep embedding.

use super::layout::{check_len, par_rows};
use crate::engine::error::{Result, shape_error};
use crate::engine::ops::timestep::{check_timestep, timestep_frequencies};

/// `table[ids]`: row `ids[r]` of `table [rows, dim]` (f32) into row `r` of `out [ids.len(), dim]`.
///
/// An id `>= rows` is an error naming it, where the GPU op writes a row of zeros (its windows of
/// the table leave such ids to the first window's zero fill): such an id means the ids and the
/// table do not belong together, which a zero row would hide. Ids are checked before anything is
/// written.
pub fn embedding(
    ids: &[u32],
    table: &[f32],
    rows: usize,
    dim: usize,
    out: &mut [f32],
) -> Result<()> {
    let op = "embedding";
    if rows == 0 || dim == 0 {
        return Err(shape_error(
            op,
            format!("table [{rows}, {dim}] is empty ({} ids)", ids.len()),
        ));
    }
    let size = rows
        .checked_mul(dim)
        .ok_or_else(|| shape_error(op, format!("table [{rows}, {dim}] is too large")))?;
    check_len(op, "table", table.len(), size)?;
    let want = ids
        .len()
        .checked_mul(dim)
        .ok_or_else(|| shape_error(op, format!("{} rows of {dim} are too many", ids.len())))?;
    check_len(op, "output", out.len(), want)?;
    if let Some((at, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= rows) {
        return Err(shape_error(
            op,
            format!("id {id} (position {at}) is outside the table's {rows} rows"),
        ));
    }
    par_rows(out, dim, |r, y| {
        let id = ids[r] as usize;
        y.copy_from_slice(&table[id * dim..(id + 1) * dim]);
    });
    Ok(())
}

/// `[batch, dim]` sinusoidal embedding of the timestep `t` (the same for every row), as
/// `Graph::timestep_embedding`: `[sin(t f), cos(t f)]` (`[cos, sin]` when `flip_sin_to_cos`) with
/// `f_j = exp(-ln(max_period) j / (dim/2 - downscale_freq_shift))`; an odd `dim` ends in a zero
/// column.
///
/// `t f` is one f32 multiply, as in PyTorch and on the GPU; its sine and cosine are taken in f64
/// and rounded, which the GPU's reduced-argument polynomials match to about 1e-7.
pub fn timestep_embedding(
    t: f32,
    batch: usize,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
    max_period: f32,
    out: &mut [f32],
) -> Result<()> {
    let op = "timestep_embedding";
    let half = check_timestep(batch, dim, downscale_freq_shift, max_period)?;
    let want = batch
        .checked_mul(dim)
        .ok_or_else(|| shape_error(op, format!("{batch} rows of {dim} are too many")))?;
    check_len(op, "output", out.len(), want)?;
    let mut row = vec![0.0f32; dim];
    let (first, rest) = row.split_at_mut(half);
    for ((s, c), f) in first
        .iter_mut()
        .zip(&mut rest[..half])
        .zip(timestep_frequencies(half, downscale_freq_shift, max_period))
    {
        let arg = f64::from(t * f);
        let (sin, cos) = (arg.sin() as f32, arg.cos() as f32);
        (*s, *c) = if flip_sin_to_cos {
            (cos, sin)
        } else {
            (sin, cos)
        };
    }
    par_rows(out, dim, |_, y| y.copy_from_slice(&row));
    Ok(())
}
