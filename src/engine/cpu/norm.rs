//! The normalisations of `norm.wgsl`, row by row (or group by group) on rayon's threads. Sums are
//! taken in f64 in two passes: memory, not arithmetic, bounds these ops, and a mean far from zero
//! (a VAE activation of mean 100 and spread 0.01) keeps its precision.

use super::{exp, par_chunks};
use crate::engine::error::{Result, shape_error};

/// Mean and biased variance of `v`.
fn moments(v: &[f32]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = sum(v, f64::from) / n;
    let var = sum(v, |x| (f64::from(x) - mean).powi(2)) / n;
    (mean, var)
}

/// `f(x)` summed over `v` in f64, in eight running sums: independent chains that the compiler
/// vectorises (one chain is a dependent add per value).
fn sum(v: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder().iter().map(|&x| f(x)).sum::<f64>();
    for c in chunks {
        for (lane, &x) in lanes.iter_mut().zip(c) {
            *lane += f(x);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

fn check_len(op: &str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(shape_error(
            op,
            format!("the {what} holds {got} values, not {want}"),
        ))
    }
}

/// Rows of `d` values: fails unless `x` is whole rows and `out` matches it.
fn check_rows(op: &str, out: &[f32], x: &[f32], d: usize) -> Result<()> {
    if d == 0 || !x.len().is_multiple_of(d) {
        return Err(shape_error(
            op,
            format!("{} values are not rows of {d}", x.len()),
        ));
    }
    check_len(op, "output", out.len(), x.len())
}

/// PyTorch `GroupNorm(groups, C, eps)` over `x [batch, channels, spatial]`, the per-channel
/// affine when given, then SiLU when `silu`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    out: &mut [f32],
    x: &[f32],
    (batch, channels, spatial): (usize, usize, usize),
    groups: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    silu: bool,
) -> Result<()> {
    let op = "group_norm";
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(shape_error(
            op,
            format!("{channels} channels do not split into {groups} groups"),
        ));
    }
    check_len(op, "input", x.len(), batch * channels * spatial)?;
    check_len(op, "output", out.len(), x.len())?;
    for (name, affine) in [("gamma", gamma), ("beta", beta)] {
        if let Some(v) = affine {
            check_len(op, name, v.len(), channels)?;
        }
    }
    let per_group = channels / groups;
    let set = per_group * spatial;
    if set == 0 {
        return Ok(());
    }
    par_chunks(out, set, |s, y| {
        let xs = &x[s * set..(s + 1) * set];
        let (mean, var) = moments(xs);
        let rstd = 1.0 / (var + f64::from(eps)).sqrt();
        let first_channel = (s % groups) * per_group;
        // The mean in two f32 parts: `v - hi` is exact for values near it, so a mean far from
        // zero costs no precision (a value of 100.004 in a group of mean 100 keeps its 0.004).
        let hi = mean as f32;
        let lo = (mean - f64::from(hi)) as f32;
        for (c, (ys, xs)) in y.chunks_mut(spatial).zip(xs.chunks(spatial)).enumerate() {
            let ch = first_channel + c;
            let scale = (rstd * f64::from(gamma.map_or(1.0, |g| g[ch]))) as f32;
            let shift = beta.map_or(0.0, |b| b[ch]);
            if silu {
                for (o, &v) in ys.iter_mut().zip(xs) {
                    let n = ((v - hi) - lo) * scale + shift;
                    *o = n / (1.0 + exp(-n));
                }
            } else {
                for (o, &v) in ys.iter_mut().zip(xs) {
                    *o = ((v - hi) - lo) * scale + shift;
                }
            }
        }
    });
    Ok(())
}

/// PyTorch `LayerNorm(d, eps)` over rows of `d`, with `gamma [d]`, `beta [d]`.
pub fn layer_norm(
    out: &mut [f32],
    x: &[f32],
    d: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Result<()> {
    check_rows("layer_norm", out, x, d)?;
    check_len("layer_norm", "gamma", gamma.len(), d)?;
    check_len("layer_norm", "beta", beta.len(), d)?;
    par_chunks(out, d, |r, y| {
        let xs = &x[r * d..(r + 1) * d];
        let (mean, var) = moments(xs);
        let rstd = 1.0 / (var + f64::from(eps)).sqrt();
        for (i, (o, &v)) in y.iter_mut().zip(xs).enumerate() {
            *o = ((f64::from(v) - mean) * rstd) as f32 * gamma[i] + beta[i];
        }
    });
    Ok(())
}

/// `softmax(scale * x)` over rows of `d`, max-subtracted.
pub fn softmax(out: &mut [f32], x: &[f32], d: usize, scale: f32) -> Result<()> {
    check_rows("softmax", out, x, d)?;
    par_chunks(out, d, |r, y| {
        let xs = &x[r * d..(r + 1) * d];
        let max = xs
            .iter()
            .map(|&v| v * scale)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for (o, &v) in y.iter_mut().zip(xs) {
            *o = exp(v * scale - max);
            sum += f64::from(*o);
        }
        let inv = (1.0 / sum) as f32;
        y.iter_mut().for_each(|o| *o *= inv);
    });
    Ok(())
}

/// `torch.nn.functional.normalize(x, dim=-1, eps)`: `x / max(||x||, eps)` over rows of `d`.
pub fn l2_normalize(out: &mut [f32], x: &[f32], d: usize, eps: f32) -> Result<()> {
    check_rows("l2_normalize", out, x, d)?;
    par_chunks(out, d, |r, y| {
        let xs = &x[r * d..(r + 1) * d];
        let norm = xs.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let inv = (1.0 / norm.max(f64::from(eps))) as f32;
        for (o, &v) in y.iter_mut().zip(xs) {
            *o = v * inv;
        }
    });
    Ok(())
}
