//! The f64 CPU references the kernel tests compare with, and their error measure: shared by the
//! native tests (`tests/kernels_*.rs`, through `common`) and the browser's (`web/tests/`), so both
//! check the kernels against the same code.
#![allow(dead_code)]

use audioldm::engine::Activation;

/// C[b] = A[b] (m x k) * B[b] (k x n), all row-major, in f64.
pub fn matmul_ref(
    a: &[f32],
    b: &[f32],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    b_batched: bool,
) -> Vec<f64> {
    let mut c = vec![0.0; batch * m * n];
    for bi in 0..batch {
        let bb = if b_batched { bi * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    acc += a[bi * m * k + i * k + p] as f64 * b[bb + p * n + j] as f64;
                }
                c[bi * m * n + i * n + j] = acc;
            }
        }
    }
    c
}

pub fn act_ref(x: f64, act: Activation) -> f64 {
    match act {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu(s) => {
            if x >= 0.0 {
                x
            } else {
                x * s as f64
            }
        }
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::Tanh => x.tanh(),
    }
}

pub fn leaky(x: f64, slope: Option<f32>) -> f64 {
    match slope {
        Some(s) if x < 0.0 => x * s as f64,
        _ => x,
    }
}

/// PyTorch ConvTranspose1d with weight [Cin, Cout, k], in f64.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose1d_ref(
    x: &[f32],
    wt: &[f32],
    bias: &[f32],
    b: usize,
    cin: usize,
    lin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    out_pad: usize,
    slope: f32,
) -> Vec<f64> {
    let lout = (lin - 1) * stride + k + out_pad - 2 * pad;
    let mut full = vec![0.0f64; b * cout * (lout + 2 * pad + k)];
    let width = lout + 2 * pad + k;
    for bi in 0..b {
        for ci in 0..cin {
            for s in 0..lin {
                let xv = leaky(x[(bi * cin + ci) * lin + s] as f64, Some(slope));
                for co in 0..cout {
                    for j in 0..k {
                        full[(bi * cout + co) * width + s * stride + j] +=
                            xv * wt[(ci * cout + co) * k + j] as f64;
                    }
                }
            }
        }
    }
    let mut out = vec![0.0; b * cout * lout];
    for bi in 0..b {
        for co in 0..cout {
            for t in 0..lout {
                out[(bi * cout + co) * lout + t] =
                    full[(bi * cout + co) * width + t + pad] + bias[co] as f64;
            }
        }
    }
    out
}

pub fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

/// Mean and biased variance in f64 (two-pass).
pub fn moments(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

#[allow(clippy::too_many_arguments)]
pub fn group_norm_ref(
    x: &[f32],
    dims: &[usize],
    groups: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f64,
    silu_after: bool,
) -> Vec<f64> {
    let (b, c) = (dims[0], dims[1]);
    let s: usize = dims[2..].iter().product();
    let cpg = c / groups;
    let mut y = vec![0.0; x.len()];
    for bi in 0..b {
        for g in 0..groups {
            let start = (bi * c + g * cpg) * s;
            let set = &x[start..start + cpg * s];
            let (mean, var) = moments(set);
            let rstd = 1.0 / (var + eps).sqrt();
            for (i, &v) in set.iter().enumerate() {
                let ch = g * cpg + i / s;
                let mut o = (v as f64 - mean) * rstd;
                if let Some(gm) = gamma {
                    o *= gm[ch] as f64;
                }
                if let Some(bt) = beta {
                    o += bt[ch] as f64;
                }
                y[start + i] = if silu_after { silu(o) } else { o };
            }
        }
    }
    y
}

pub fn layer_norm_ref(x: &[f32], d: usize, gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f64> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let (mean, var) = moments(row);
        let rstd = 1.0 / (var + eps).sqrt();
        for (i, &v) in row.iter().enumerate() {
            y.push((v as f64 - mean) * rstd * gamma[i] as f64 + beta[i] as f64);
        }
    }
    y
}

pub fn softmax_ref(x: &[f32], d: usize, scale: f64) -> Vec<f64> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let s: Vec<f64> = row.iter().map(|&v| v as f64 * scale).collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = s.iter().map(|v| (v - m).exp()).sum();
        y.extend(s.iter().map(|v| (v - m).exp() / sum));
    }
    y
}

pub fn l2_ref(x: &[f32], d: usize, eps: f64) -> Vec<f64> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        y.extend(row.iter().map(|&v| v as f64 / norm.max(eps)));
    }
    y
}

/// Largest absolute difference, relative to the largest magnitude of the reference. This is the
/// "max relative error" the tests report: a per-element ratio would blow up wherever the
/// reference crosses zero.
pub fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    max_abs_err(got, want) / scale
}

/// The largest absolute difference; a NaN counts as infinitely far.
pub fn max_abs_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            if g.is_nan() {
                f64::INFINITY
            } else {
                (g as f64 - w).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// Rounds through f16 and back, as f16 weight storage does.
pub fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// A conv2d case: batch, channels, input size, kernel, stride, padding (top, bottom, left,
/// right) and dilation.
#[derive(Clone, Copy)]
pub struct Conv {
    pub b: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 4],
    pub dil: [usize; 2],
}

impl Conv {
    /// The output's height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        let oh = (self.h + self.pad[0] + self.pad[1] - self.dil[0] * (self.kh - 1) - 1)
            / self.stride[0]
            + 1;
        let ow = (self.w + self.pad[2] + self.pad[3] - self.dil[1] * (self.kw - 1) - 1)
            / self.stride[1]
            + 1;
        (oh, ow)
    }
}

/// PyTorch conv2d with weight [Cout, Cin, kh, kw], per-side zero padding, in f64.
pub fn conv2d_ref(
    c: &Conv,
    x: &[f32],
    wt: &[f32],
    bias: &[f32],
    in_slope: Option<f32>,
) -> (Vec<f64>, usize, usize) {
    let (oh, ow) = c.out_hw();
    let mut out = vec![0.0; c.b * c.cout * oh * ow];
    for b in 0..c.b {
        for co in 0..c.cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[co] as f64;
                    for ci in 0..c.cin {
                        for ky in 0..c.kh {
                            for kx in 0..c.kw {
                                let iy =
                                    (oy * c.stride[0] + ky * c.dil[0]) as isize - c.pad[0] as isize;
                                let ix =
                                    (ox * c.stride[1] + kx * c.dil[1]) as isize - c.pad[2] as isize;
                                if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                                    continue;
                                }
                                let xv = x
                                    [((b * c.cin + ci) * c.h + iy as usize) * c.w + ix as usize]
                                    as f64;
                                let wv = wt[((co * c.cin + ci) * c.kh + ky) * c.kw + kx] as f64;
                                acc += leaky(xv, in_slope) * wv;
                            }
                        }
                    }
                    out[((b * c.cout + co) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    (out, oh, ow)
}

/// Multi-head attention: per head `softmax(scale * Q K^T) V`, output `[B, Tq, H*Dv]`.
#[derive(Clone, Copy)]
pub struct AttentionProblem {
    pub batch: usize,
    pub heads: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub dv: usize,
    pub scale: f32,
}

/// Where the row of (batch, token, head) starts in a tensor.
pub type RowAt<'a> = &'a dyn Fn(usize, usize, usize) -> usize;

impl AttentionProblem {
    /// The case with the usual scale, `1 / sqrt(d)`.
    pub fn new(batch: usize, heads: usize, tq: usize, tk: usize, d: usize, dv: usize) -> Self {
        Self {
            batch,
            heads,
            tq,
            tk,
            d,
            dv,
            scale: 1.0 / (d as f32).sqrt(),
        }
    }

    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.heads * self.tq * self.tk * (self.d + self.dv)) as f64
    }

    pub fn name(&self) -> String {
        format!(
            "attention B={} H={} Tq={} Tk={} D={} Dv={}",
            self.batch, self.heads, self.tq, self.tk, self.d, self.dv
        )
    }

    /// The reference in f64, with the Q, K and V rows of (batch, token, head) found by `q_at`,
    /// `k_at`, `v_at`.
    pub fn reference(
        &self,
        (q, q_at): (&[f32], RowAt),
        (k, k_at): (&[f32], RowAt),
        (v, v_at): (&[f32], RowAt),
    ) -> Vec<f64> {
        let AttentionProblem {
            batch,
            heads,
            tq,
            tk,
            d,
            dv,
            scale,
        } = *self;
        let width = heads * dv;
        let mut out = vec![0.0; batch * tq * width];
        let mut s = vec![0.0f64; tk];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..tq {
                    let qr = &q[q_at(b, i, h)..][..d];
                    for (j, sj) in s.iter_mut().enumerate() {
                        let kr = &k[k_at(b, j, h)..][..d];
                        let dot: f64 = qr.iter().zip(kr).map(|(&a, &c)| a as f64 * c as f64).sum();
                        *sj = dot * scale as f64;
                    }
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0.0;
                    for sj in s.iter_mut() {
                        *sj = (*sj - m).exp();
                        sum += *sj;
                    }
                    let o = &mut out[(b * tq + i) * width + h * dv..][..dv];
                    for (j, &p) in s.iter().enumerate() {
                        let vr = &v[v_at(b, j, h)..][..dv];
                        for (oe, &ve) in o.iter_mut().zip(vr) {
                            *oe += p / sum * ve as f64;
                        }
                    }
                }
            }
        }
        out
    }
}
