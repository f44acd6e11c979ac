//! The data movement of `layout.wgsl` and `upsample.wgsl`: permute, slice, concat and
//! nearest-neighbour resizing, into contiguous row-major outputs. Values are copied unchanged, so
//! these are exact. Each kernel copies whole inner runs with `copy_from_slice` where the source
//! holds them contiguously, and works out a source offset once per run rather than per element.

use super::par_chunks;
use crate::engine::error::{Result, shape_error};
use crate::engine::ops::layout::{collapse, contiguous_strides};
use crate::engine::ops::upsample::nearest_source_index;

/// Values a task copies at least (whole rows are never split).
const CHUNK: usize = 1 << 14;

/// The product of `dims`, or an error naming `op` where it overflows (hostile sizes must not
/// panic).
pub(super) fn numel(op: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| shape_error(op, format!("{dims:?} holds more values than memory")))
}

pub(super) fn check_len(op: &str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(shape_error(
            op,
            format!("the {what} holds {got} values, not {want}"),
        ))
    }
}

/// `f(r, row)` for each `run`-long row `r` of `out`, rows grouped so that a task is worth its
/// scheduling even where rows are a few values long.
pub(super) fn par_rows(out: &mut [f32], run: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if out.is_empty() || run == 0 {
        return;
    }
    let rows = (CHUNK / run).max(1);
    par_chunks(out, rows * run, |c, chunk| {
        for (i, row) in chunk.chunks_mut(run).enumerate() {
            f(c * rows + i, row);
        }
    });
}

/// `x.permute(perm)` made contiguous, for `x` contiguous of `dims`: output dim `i` is input dim
/// `perm[i]`. Unlike the GPU op there is no limit on how many dims stay apart after merging.
pub fn permute(x: &[f32], dims: &[usize], perm: &[usize], out: &mut [f32]) -> Result<()> {
    let op = "permute";
    let mut seen = vec![false; dims.len()];
    let valid = perm.len() == dims.len()
        && perm
            .iter()
            .all(|&p| p < dims.len() && !std::mem::replace(&mut seen[p], true));
    if !valid {
        return Err(shape_error(
            op,
            format!("{perm:?} is not a permutation of the dims of {dims:?}"),
        ));
    }
    let n = numel(op, dims)?;
    check_len(op, "input", x.len(), n)?;
    check_len(op, "output", out.len(), n)?;
    let strides = contiguous_strides(dims);
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let src_strides: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    strided_copy(x, &out_dims, &src_strides, 0, out);
    Ok(())
}

/// Elements `start..end` of `axis` of `x` (contiguous of `dims`), contiguous. As on the GPU, an
/// empty range is an error.
pub fn slice(
    x: &[f32],
    dims: &[usize],
    axis: usize,
    start: usize,
    end: usize,
    out: &mut [f32],
) -> Result<()> {
    let op = "slice";
    if axis >= dims.len() || start >= end || end > dims[axis] {
        return Err(shape_error(
            op,
            format!("cannot take {start}..{end} of axis {axis} of {dims:?}"),
        ));
    }
    check_len(op, "input", x.len(), numel(op, dims)?)?;
    // The kept block of each outer index is one contiguous run of the input.
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let (run, row) = ((end - start) * inner, dims[axis] * inner);
    check_len(op, "output", out.len(), outer * run)?;
    par_rows(out, run, |o, y| {
        let from = o * row + start * inner;
        y.copy_from_slice(&x[from..from + run]);
    });
    Ok(())
}

/// `torch.cat([a, b], axis)` for contiguous `a` and `b`: all dims but `axis` must match.
pub fn concat(
    a: &[f32],
    a_dims: &[usize],
    b: &[f32],
    b_dims: &[usize],
    axis: usize,
    out: &mut [f32],
) -> Result<()> {
    let op = "concat";
    let matches = a_dims.len() == b_dims.len()
        && axis < a_dims.len()
        && a_dims
            .iter()
            .zip(b_dims)
            .enumerate()
            .all(|(i, (x, y))| i == axis || x == y);
    if !matches {
        return Err(shape_error(
            op,
            format!("cannot join {a_dims:?} and {b_dims:?} along axis {axis}"),
        ));
    }
    check_len(op, "first input", a.len(), numel(op, a_dims)?)?;
    check_len(op, "second input", b.len(), numel(op, b_dims)?)?;
    check_len(op, "output", out.len(), a.len() + b.len())?;
    // Each outer index's output row is a's block followed by b's, both contiguous.
    let inner: usize = a_dims[axis + 1..].iter().product();
    let (ra, rb) = (a_dims[axis] * inner, b_dims[axis] * inner);
    par_rows(out, ra + rb, |o, y| {
        let (ya, yb) = y.split_at_mut(ra);
        ya.copy_from_slice(&a[o * ra..(o + 1) * ra]);
        yb.copy_from_slice(&b[o * rb..(o + 1) * rb]);
    });
    Ok(())
}

/// `F.interpolate(x, size=(out_h, out_w), mode="nearest")` for `x [B, C, H, W]` (any sizes, also
/// downsampling), with PyTorch's f32 source indices ([`nearest_source_index`]).
pub fn upsample_nearest(
    x: &[f32],
    dims: &[usize],
    out_h: usize,
    out_w: usize,
    out: &mut [f32],
) -> Result<()> {
    let op = "upsample_nearest";
    let &[b, c, in_h, in_w] = dims else {
        return Err(shape_error(
            op,
            format!("input {dims:?} is not [B, C, H, W] (to {out_h}x{out_w})"),
        ));
    };
    let n = numel(op, dims)?;
    if out_h == 0 || out_w == 0 || n == 0 {
        return Err(shape_error(
            op,
            format!("cannot resize {dims:?} to {out_h}x{out_w}"),
        ));
    }
    check_len(op, "input", x.len(), n)?;
    check_len(op, "output", out.len(), numel(op, &[b, c, out_h, out_w])?)?;
    let (in_plane, out_plane) = (in_h * in_w, out_h * out_w);
    let sx: Vec<usize> = (0..out_w)
        .map(|ox| nearest_source_index(ox, in_w, out_w))
        .collect();
    par_rows(out, out_plane, |p, y| {
        let plane = &x[p * in_plane..(p + 1) * in_plane];
        let mut last = None;
        for oy in 0..out_h {
            let sy = nearest_source_index(oy, in_h, out_h);
            let at = oy * out_w;
            // Upsampling repeats source rows: copy the output row already built from this one.
            if last == Some(sy) {
                y.copy_within(at - out_w..at, at);
            } else {
                let src = &plane[sy * in_w..(sy + 1) * in_w];
                for (o, &s) in y[at..at + out_w].iter_mut().zip(&sx) {
                    *o = src[s];
                }
            }
            last = Some(sy);
        }
    });
    Ok(())
}

/// `out[i] = x[offset + sum_d coord_d(i) * src_strides[d]]`, `out` contiguous of `out_dims`, as
/// `layout.wgsl`'s `strided_copy`. Dims are merged first, so the innermost dim left is as long as
/// it can be; where its source stride is 1 each output row is one slice copy.
fn strided_copy(
    x: &[f32],
    out_dims: &[usize],
    src_strides: &[usize],
    offset: usize,
    out: &mut [f32],
) {
    let (dims, strides) = collapse(out_dims, src_strides);
    let (outer_dims, inner) = dims.split_at(dims.len() - 1);
    let (outer_strides, inner_stride) = strides.split_at(strides.len() - 1);
    let (inner, inner_stride) = (inner[0], inner_stride[0]);
    par_rows(out, inner, |r, y| {
        let mut rest = r;
        let mut at = offset;
        for (&dim, &stride) in outer_dims.iter().zip(outer_strides).rev() {
            at += (rest % dim) * stride;
            rest /= dim;
        }
        if inner_stride == 1 {
            y.copy_from_slice(&x[at..at + inner]);
        } else {
            for (k, o) in y.iter_mut().enumerate() {
                *o = x[at + k * inner_stride];
            }
        }
    });
}
