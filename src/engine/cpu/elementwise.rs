//! The elementwise ops of `elementwise.wgsl`: `act(alpha * x + beta)`, `alpha * a + beta * b` and
//! `a * b` with `b` broadcast onto `a` (PyTorch's rules, trailing dims aligned), and GEGLU.

use super::{activate_with, par_chunks, widest};
use crate::engine::Activation;
use crate::engine::error::{Result, shape_error};

/// Elements a task takes.
const CHUNK: usize = 1 << 14;

/// `out = act(alpha * x + beta)`.
pub fn unary(out: &mut [f32], x: &[f32], act: Activation, alpha: f32, beta: f32) -> Result<()> {
    if out.len() != x.len() {
        return Err(shape_error(
            "unary",
            format!("{} outputs for {} inputs", out.len(), x.len()),
        ));
    }
    par_chunks(out, CHUNK, |c, y| {
        let xs = &x[c * CHUNK..];
        widest(
            #[inline(always)]
            |fused| {
                // A loop per activation: with `act` unknown, LLVM leaves the `match` in one scalar
                // loop.
                let ab = (alpha, beta);
                match act {
                    Activation::None => map_act(y, xs, Activation::None, ab, fused),
                    Activation::Relu => map_act(y, xs, Activation::Relu, ab, fused),
                    Activation::LeakyRelu(s) => map_act(y, xs, Activation::LeakyRelu(s), ab, fused),
                    Activation::Silu => map_act(y, xs, Activation::Silu, ab, fused),
                    Activation::Gelu => map_act(y, xs, Activation::Gelu, ab, fused),
                    Activation::Tanh => map_act(y, xs, Activation::Tanh, ab, fused),
                }
            },
        );
    });
    Ok(())
}

/// `y = act(alpha * x + beta)`, for [`unary`] to compile once per activation.
#[inline(always)]
fn map_act(y: &mut [f32], x: &[f32], act: Activation, (alpha, beta): (f32, f32), fused: bool) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = activate_with(alpha * v + beta, act, fused);
    }
}

/// How two operands combine.
#[derive(Clone, Copy, Debug)]
pub enum Combine {
    /// `alpha * a + beta * b`.
    Axpby { alpha: f32, beta: f32 },
    /// `a * b`.
    Mul,
}

/// `out = combine(a, b)`, `b` (of dims `b_dims`) broadcast onto `a` (of dims `a_dims`).
pub fn binary(
    out: &mut [f32],
    (a, a_dims): (&[f32], &[usize]),
    (b, b_dims): (&[f32], &[usize]),
    combine: Combine,
) -> Result<()> {
    let lead = a_dims.len().checked_sub(b_dims.len());
    let fits = lead.is_some_and(|lead| {
        b_dims
            .iter()
            .zip(&a_dims[lead..])
            .all(|(&nb, &na)| nb == na || nb == 1)
    });
    let (Some(lead), true) = (lead, fits) else {
        return Err(shape_error(
            "binary",
            format!("cannot broadcast {b_dims:?} onto {a_dims:?}"),
        ));
    };
    let sizes = [
        (a.len(), a_dims.iter().product::<usize>()),
        (b.len(), b_dims.iter().product()),
        (out.len(), a.len()),
    ];
    if sizes.iter().any(|(got, want)| got != want) {
        return Err(shape_error(
            "binary",
            format!("values {sizes:?} (held, wanted) do not match the dims"),
        ));
    }
    // b's stride along each of a's dims: 0 on a's leading dims and where b has a 1.
    let mut strides = vec![0; a_dims.len()];
    let mut stride = 1;
    for (i, &nb) in b_dims.iter().enumerate().rev() {
        if nb != 1 {
            strides[lead + i] = stride;
        }
        stride *= nb;
    }
    let b_index = |mut i: usize| {
        let mut at = 0;
        for (&n, &s) in a_dims.iter().zip(&strides).rev() {
            at += (i % n) * s;
            i /= n;
        }
        at
    };
    par_chunks(out, CHUNK, |c, y| {
        for (j, o) in y.iter_mut().enumerate() {
            let i = c * CHUNK + j;
            let (x, z) = (a[i], b[b_index(i)]);
            *o = match combine {
                Combine::Axpby { alpha, beta } => alpha * x + beta * z,
                Combine::Mul => x * z,
            };
        }
    });
    Ok(())
}

/// diffusers' GEGLU over rows of `2h`: `out[r, j] = x[r, j] * gelu(x[r, h + j])`.
pub fn geglu(out: &mut [f32], x: &[f32], h: usize) -> Result<()> {
    if h == 0 || !x.len().is_multiple_of(2 * h) || out.len() * 2 != x.len() {
        return Err(shape_error(
            "geglu",
            format!(
                "{} inputs are not rows of 2 x {h}, or {} outputs not half of them",
                x.len(),
                out.len()
            ),
        ));
    }
    par_chunks(out, h, |r, y| {
        let (a, gate) = x[2 * h * r..2 * h * (r + 1)].split_at(h);
        widest(
            #[inline(always)]
            |fused| {
                for ((o, &a), &g) in y.iter_mut().zip(a).zip(gate) {
                    *o = a * activate_with(g, Activation::Gelu, fused);
                }
            },
        );
    });
    Ok(())
}
