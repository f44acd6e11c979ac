//! The engine's kernels in a browser: GEMM, convolutions, norms and attention on the page's
//! WebGPU (headless Chromium's SwiftShader adapter under `bash web/test.sh`), each against an f64
//! CPU reference on seeded inputs of odd shapes that do not divide the tile sizes, with the
//! tolerances of the native tests (`tests/kernels_*.rs`). Every case logs its max relative error;
//! each test ends with a `SUMMARY` line holding its worst.
#![cfg(target_arch = "wasm32")]

mod common;

use audioldm::engine::ops::attention::{Attention, HeadView};
use audioldm::engine::ops::conv::{
    Conv1dOptions, Conv2dOptions, ConvKernel, ConvTranspose1dOptions,
    conv_transpose1d_weight_layout, conv_weight, conv_weight_layout,
};
use audioldm::engine::ops::matmul::{Gemm, MatView, MatmulKernel};
use audioldm::engine::{Activation, Context, DType, Graph};
use common::reference::AttentionProblem as Problem;
use common::reference::*;
use common::*;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

// ---- cases ----

impl Conv {
    /// A 3x3 convolution with the same stride both ways and no dilation.
    #[allow(clippy::too_many_arguments)]
    const fn k3(
        b: usize,
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        s: usize,
        pad: [usize; 4],
    ) -> Self {
        Self {
            b,
            cin,
            h,
            w,
            cout,
            kh: 3,
            kw: 3,
            stride: [s, s],
            pad,
            dil: [1, 1],
        }
    }
}

impl Problem {
    fn inputs(&self, seed: u64) -> [Vec<f32>; 3] {
        let rows_q = self.batch * self.tq * self.heads;
        let rows_k = self.batch * self.tk * self.heads;
        [
            random(seed, rows_q * self.d),
            random(seed + 1, rows_k * self.d),
            random(seed + 2, rows_k * self.dv),
        ]
    }

    /// `Graph::attention` (or with `key_chunk` the split form) on `[B, T, H*D]` tensors against
    /// the reference.
    async fn check(
        &self,
        checks: &mut Checks,
        [q, k, v]: &[Vec<f32>; 3],
        key_chunk: Option<usize>,
        tol: f64,
    ) {
        let Problem {
            batch,
            heads,
            tq,
            tk,
            d,
            dv,
            scale,
        } = *self;
        let ctx = ctx().await;
        let mut g = Graph::new(&ctx);
        let vq = input(&mut g, &[batch, tq, heads * d], q);
        let vk = input(&mut g, &[batch, tk, heads * d], k);
        let vv = input(&mut g, &[batch, tk, heads * dv], v);
        let out = match key_chunk {
            None => g.attention(vq, vk, vv, heads, scale).unwrap(),
            Some(chunk) => {
                let view = |var, t, w| HeadView::interleaved(var, t, heads, w);
                let a = Attention {
                    q: view(vq, tq, d),
                    k: view(vk, tk, d),
                    v: view(vv, tk, dv),
                    batch,
                    heads,
                    tq,
                    tk,
                    d,
                    dv,
                    scale,
                };
                g.attention_split(a, chunk).unwrap()
            }
        };
        assert_eq!(g.dims(out), &[batch, tq, heads * dv]);
        let got = run(g, out).await;
        let rows = |t: usize, w: usize| move |b, i, h| (b * t + i) * heads * w + h * w;
        let want = self.reference((q, &rows(tq, d)), (k, &rows(tk, d)), (v, &rows(tk, dv)));
        let chunked = key_chunk.map_or(String::new(), |c| format!(" key_chunk={c}"));
        checks.close(&format!("{}{chunked}", self.name()), &got, &want, tol);
    }
}

// ---- GEMM ----

#[wasm_bindgen_test]
async fn matmul_matches_reference_on_odd_shapes() {
    let ctx = ctx().await;
    let mut checks = Checks::new("matmul");
    let shapes = [
        (1, 1, 1, 1),
        (1, 7, 13, 5),
        (2, 33, 17, 65),
        (3, 64, 64, 64),
        (1, 100, 257, 31),
        (2, 1, 40, 9),
        (2, 33, 20, 12),
        (1, 101, 260, 36),
        (1, 3, 8, 4),
    ];
    for (seed, &(batch, m, k, n)) in shapes.iter().enumerate() {
        let mut kernels = vec![
            MatmulKernel::Tiled { tm: 4, tn: 4 },
            MatmulKernel::Tiled { tm: 8, tn: 8 },
            MatmulKernel::Gemv,
            MatmulKernel::Naive,
        ];
        if n % 4 == 0 && k % 4 == 0 {
            kernels.push(MatmulKernel::TiledN4 { tm: 4, tn: 2 });
            kernels.push(MatmulKernel::TiledN4 { tm: 8, tn: 1 });
        }
        for kernel in kernels {
            for b_batched in [false, true] {
                let a = random(seed as u64 * 10, batch * m * k);
                let bn = if b_batched { batch } else { 1 };
                let b = random(seed as u64 * 10 + 1, bn * k * n);
                let mut g = Graph::new(&ctx);
                let va = input(&mut g, &[batch, m, k], &a);
                let b_shape: &[usize] = if b_batched { &[batch, k, n] } else { &[k, n] };
                let vb = input(&mut g, b_shape, &b);
                let out = g.matmul_with(va, vb, 0.5, kernel).unwrap();
                assert_eq!(g.dims(out), &[batch, m, n]);
                let got = run(g, out).await;
                checks.close(
                    &format!("matmul {kernel:?} b{batch} {m}x{k}x{n} batched_b={b_batched}"),
                    &got,
                    // alpha 0.5, a power of two: the scaled reference is exact.
                    &matmul_ref(&a, &b, batch, m, k, n, b_batched)
                        .iter()
                        .map(|c| 0.5 * c)
                        .collect::<Vec<_>>(),
                    1e-5,
                );
            }
        }
    }
    checks.finish();
}

/// Long reductions through every path that takes them: `Auto`, GEMV, and the vec4-along-K
/// kernel on a Linear weight `[N, K]` stored as f32 and as f16.
#[wasm_bindgen_test]
async fn long_reductions_stay_within_1e4() {
    let ctx = ctx().await;
    let mut checks = Checks::new("matmul long K");
    for &(m, k, n) in &[(9, 4096, 11), (3, 3072, 5), (9, 4096, 12)] {
        let a = random(7, m * k);
        let b = random(8, k * n);
        for kernel in [MatmulKernel::Auto, MatmulKernel::Gemv] {
            let mut g = Graph::new(&ctx);
            let va = input(&mut g, &[m, k], &a);
            let vb = input(&mut g, &[k, n], &b);
            let out = g.matmul_with(va, vb, 1.0, kernel).unwrap();
            let got = run(g, out).await;
            checks.close(
                &format!("matmul {kernel:?} {m}x{k}x{n}"),
                &got,
                &matmul_ref(&a, &b, 1, m, k, n, false),
                1e-4,
            );
        }
    }
    for dtype in [DType::F32, DType::F16] {
        let (m, k, n) = (17, 3072, 40);
        let x = random(21, m * k);
        let w = random(22, n * k);
        let w_used = if dtype == DType::F16 {
            f16_round(&w)
        } else {
            w.clone()
        };
        let want: Vec<f64> = (0..m * n)
            .map(|o| {
                let (i, j) = (o / n, o % n);
                (0..k)
                    .map(|p| x[i * k + p] as f64 * w_used[j * k + p] as f64)
                    .sum()
            })
            .collect();
        for kernel in [
            MatmulKernel::TiledK4 { tm: 4, tn: 8 },
            MatmulKernel::Tiled { tm: 4, tn: 8 },
        ] {
            let mut g = Graph::new(&ctx);
            let vx = input(&mut g, &[m, k], &x);
            let vw = weight(&mut g, &[n, k], dtype, &w);
            let out = g
                .gemm(Gemm {
                    a: MatView::new(vx, k, 1),
                    b: MatView::new(vw, 1, k),
                    batch: 1,
                    m,
                    k,
                    n,
                    alpha: 1.0,
                    bias: None,
                    residual: None,
                    act: Activation::None,
                    kernel,
                })
                .unwrap();
            let got = run(g, out).await;
            checks.close(
                &format!("linear {kernel:?} {dtype:?} {m}x{k}->{n}"),
                &got,
                &want,
                1e-4,
            );
        }
    }
    checks.finish();
}

/// Linear: y = act(x W^T + b) + r with f32 and f16 weights (f16 compared with the rounded
/// weights), GEMV rows and tiled ones, K a multiple of 4 (vec4 kernel) or not.
#[wasm_bindgen_test]
async fn linear_fuses_bias_activation_and_residual() {
    let ctx = ctx().await;
    let mut checks = Checks::new("linear");
    let acts = [
        Activation::None,
        Activation::Relu,
        Activation::LeakyRelu(0.1),
        Activation::Silu,
        Activation::Gelu,
        Activation::Tanh,
    ];
    let shapes = [
        (1usize, 19usize, 23usize),
        (2, 64, 48),
        (37, 50, 29),
        (5, 128, 130),
        (33, 36, 65),
        (70, 4, 9),
    ];
    for (si, &(rows, k, n)) in shapes.iter().enumerate() {
        // Every activation on two shapes (one GEMV, one tiled); one each on the others.
        let these: Vec<Activation> = if si == 0 || si == 2 {
            acts.to_vec()
        } else {
            vec![acts[si % acts.len()]]
        };
        for act in these {
            for dtype in [DType::F32, DType::F16] {
                let seed = si as u64 * 100;
                let x = random(seed, rows * k);
                let w = random(seed + 1, n * k);
                let bias = random(seed + 2, n);
                let res = random(seed + 3, rows * n);
                let mut g = Graph::new(&ctx);
                let vx = input(&mut g, &[rows, k], &x);
                let vw = weight(&mut g, &[n, k], dtype, &w);
                let vb = input(&mut g, &[n], &bias);
                let vr = input(&mut g, &[rows, n], &res);
                let out = g.linear(vx, vw, Some(vb), act, Some(vr)).unwrap();
                let got = run(g, out).await;
                let w_used = if dtype == DType::F16 {
                    f16_round(&w)
                } else {
                    w.clone()
                };
                let mut want = vec![0.0; rows * n];
                for i in 0..rows {
                    for j in 0..n {
                        let dot: f64 = (0..k)
                            .map(|p| x[i * k + p] as f64 * w_used[j * k + p] as f64)
                            .sum();
                        want[i * n + j] =
                            act_ref(dot + bias[j] as f64, act) + res[i * n + j] as f64;
                    }
                }
                checks.close(
                    &format!("linear {rows}x{k}->{n} {act:?} {dtype:?}"),
                    &got,
                    &want,
                    1e-5,
                );
            }
        }
    }
    checks.finish();
}

// ---- convolutions ----

#[allow(clippy::too_many_arguments)]
async fn run_conv2d(
    ctx: &Context,
    checks: &mut Checks,
    c: &Conv,
    seed: u64,
    dtype: DType,
    kernel: ConvKernel,
    act: Activation,
    with_residual: bool,
) {
    let x = random(seed, c.b * c.cin * c.h * c.w);
    let wt = random(seed + 1, c.cout * c.cin * c.kh * c.kw);
    let bias = random(seed + 2, c.cout);
    let wt_used = if dtype == DType::F16 {
        f16_round(&wt)
    } else {
        wt.clone()
    };
    let conv = conv2d_ref(c, &x, &wt_used, &bias, None).0;
    let (oh, ow) = c.out_hw();
    let residual = random(seed + 3, conv.len());
    let mut g = Graph::new(ctx);
    let vx = input(&mut g, &[c.b, c.cin, c.h, c.w], &x);
    let (shape, laid) = conv_weight(ctx, &wt, c.cout, c.cin, c.kh, c.kw);
    let vw = weight(&mut g, &shape, dtype, &laid);
    let vb = input(&mut g, &[c.cout], &bias);
    let vr = with_residual.then(|| input(&mut g, &[c.b, c.cout, oh, ow], &residual));
    let opts = Conv2dOptions {
        stride: c.stride,
        padding: c.pad,
        dilation: c.dil,
        act,
        input_leaky_relu: None,
        input_norm: None,
        kernel,
    };
    let out = g.conv2d(vx, vw, Some(vb), vr, opts).unwrap();
    assert_eq!(g.dims(out), &[c.b, c.cout, oh, ow]);
    let got = run(g, out).await;
    let want: Vec<f64> = conv
        .iter()
        .zip(&residual)
        .map(|(&v, &r)| act_ref(v, act) + if with_residual { r as f64 } else { 0.0 })
        .collect();
    checks.close(
        &format!(
            "conv2d {kernel:?} {dtype:?} {act:?} b{} {}x{}x{} -> {} k{}x{} s{:?} p{:?}",
            c.b, c.cin, c.h, c.w, c.cout, c.kh, c.kw, c.stride, c.pad
        ),
        &got,
        &want,
        1e-5,
    );
}

/// Odd shapes and the model's own for 2D convolutions.
const CONV2D_CASES: [Conv; 6] = [
    // 3x3 stride 1 padding 1, odd everything.
    Conv::k3(1, 3, 7, 5, 5, 1, [1; 4]),
    // The UNet's down-sampler: stride 2 on an odd input (63 -> 32 like the latents).
    Conv::k3(2, 6, 63, 4, 7, 2, [1; 4]),
    // The VAE encoder's down-sampler: padding right and bottom only, stride 2.
    Conv::k3(1, 4, 9, 8, 6, 2, [0, 1, 0, 1]),
    // 1x1 (shortcuts, proj_in/out).
    Conv {
        kh: 1,
        kw: 1,
        ..Conv::k3(2, 13, 5, 3, 17, 1, [0; 4])
    },
    // Size-1 edges.
    Conv::k3(1, 1, 1, 1, 1, 1, [1; 4]),
    // A UNet level, narrowed: 64 channels at 25 x 16.
    Conv::k3(2, 64, 25, 16, 64, 1, [1; 4]),
];

#[wasm_bindgen_test]
async fn conv2d_matches_reference() {
    let ctx = ctx().await;
    let mut checks = Checks::new("conv2d");
    let cases = CONV2D_CASES;
    for (i, c) in cases.iter().enumerate() {
        let seed = 10 * i as u64;
        for kernel in [
            ConvKernel::Tiled,
            ConvKernel::TiledWith { tm: 8, tn: 4 },
            ConvKernel::Naive,
        ] {
            run_conv2d(
                &ctx,
                &mut checks,
                c,
                seed,
                DType::F32,
                kernel,
                Activation::None,
                false,
            )
            .await;
        }
        let tiled = ConvKernel::Tiled;
        run_conv2d(
            &ctx,
            &mut checks,
            c,
            seed,
            DType::F32,
            tiled,
            Activation::Silu,
            true,
        )
        .await;
        // f16 weights, against the rounded weights.
        run_conv2d(
            &ctx,
            &mut checks,
            c,
            seed,
            DType::F16,
            tiled,
            Activation::None,
            true,
        )
        .await;
    }
    checks.finish();
}

/// The CPU backend as a page without WebGPU runs it (WebAssembly, SIMD128, one thread): the
/// products and convolutions, whose edge handling differs from the native build's vector
/// width, against the same references on odd shapes (f32 and f16 weights, fused epilogues).
#[wasm_bindgen_test]
async fn cpu_backend_matches_reference_on_odd_shapes() {
    let ctx = Context::cpu();
    let mut checks = Checks::new("cpu backend");
    for (seed, (batch, m, k, n)) in [
        (1, 7, 13, 5),
        (2, 33, 17, 65),
        (1, 101, 260, 36),
        (2, 1, 40, 9),
    ]
    .into_iter()
    .enumerate()
    {
        let a = random(seed as u64 * 10, batch * m * k);
        let b = random(seed as u64 * 10 + 1, k * n);
        let mut g = Graph::new(&ctx);
        let va = input(&mut g, &[batch, m, k], &a);
        let vb = input(&mut g, &[k, n], &b);
        let out = g.matmul(va, vb, 1.0).unwrap();
        let got = run(g, out).await;
        let want = matmul_ref(&a, &b, batch, m, k, n, false);
        checks.close(
            &format!("cpu matmul b{batch} {m}x{k}x{n}"),
            &got,
            &want,
            1e-5,
        );
    }
    for (i, c) in CONV2D_CASES.iter().enumerate() {
        for (dtype, act, residual) in [
            (DType::F32, Activation::None, false),
            (DType::F32, Activation::Silu, true),
            (DType::F16, Activation::None, true),
        ] {
            let tiled = ConvKernel::Tiled;
            run_conv2d(
                &ctx,
                &mut checks,
                c,
                10 * i as u64,
                dtype,
                tiled,
                act,
                residual,
            )
            .await;
        }
    }
    checks.finish();
}

/// HiFi-GAN's residual convolutions: leaky ReLU on the input, dilation, symmetric padding.
#[wasm_bindgen_test]
async fn conv1d_with_dilation_and_input_activation() {
    let ctx = ctx().await;
    let mut checks = Checks::new("conv1d");
    let cases = [
        (1, 4, 37, 6, 3, 1, 1),
        (2, 5, 50, 3, 7, 3, 9),
        (1, 8, 101, 8, 11, 5, 25),
        (1, 3, 1, 2, 1, 1, 0),
        (1, 7, 64, 1, 7, 1, 3),
    ];
    for (seed, &(b, cin, l, cout, k, dil, pad)) in cases.iter().enumerate() {
        let seed = seed as u64 * 7;
        let x = random(seed, b * cin * l);
        let wt = random(seed + 1, cout * cin * k);
        let bias = random(seed + 2, cout);
        let c = Conv {
            b,
            cin,
            h: 1,
            w: l,
            cout,
            kh: 1,
            kw: k,
            stride: [1, 1],
            pad: [0, 0, pad, pad],
            dil: [1, dil],
        };
        let conv = conv2d_ref(&c, &x, &wt, &bias, Some(0.1)).0;
        let lout = c.out_hw().1;
        let residual = random(seed + 3, conv.len());
        let mut g = Graph::new(&ctx);
        let vx = input(&mut g, &[b, cin, l], &x);
        let (shape, laid) = conv_weight_layout(&wt, cout, cin, 1, k);
        let vw = weight(&mut g, &shape, DType::F32, &laid);
        let vb = input(&mut g, &[cout], &bias);
        let vr = input(&mut g, &[b, cout, lout], &residual);
        let opts = Conv1dOptions {
            padding: pad,
            dilation: dil,
            input_leaky_relu: Some(0.1),
            ..Default::default()
        };
        let out = g.conv1d(vx, vw, Some(vb), Some(vr), opts).unwrap();
        assert_eq!(g.dims(out), &[b, cout, lout]);
        let got = run(g, out).await;
        let want: Vec<f64> = conv
            .iter()
            .zip(&residual)
            .map(|(&v, &r)| v + r as f64)
            .collect();
        checks.close(
            &format!("conv1d b{b} {cin}x{l} -> {cout} k{k} d{dil} p{pad}"),
            &got,
            &want,
            1e-5,
        );
    }
    checks.finish();
}

/// HiFi-GAN's up-samplers (kernel 2u, stride u, padding u/2) and odd cases: kernels shorter
/// than the stride, padding past a whole phase, output padding.
#[wasm_bindgen_test]
async fn conv_transpose1d_matches_reference() {
    let ctx = ctx().await;
    let mut checks = Checks::new("conv_transpose1d");
    let cases = [
        (1, 6, 11, 3, 16, 5, 5, 0),
        (2, 5, 9, 7, 16, 4, 6, 0),
        (1, 4, 13, 4, 8, 2, 3, 0),
        (1, 3, 17, 5, 4, 2, 1, 0),
        (1, 2, 5, 3, 3, 3, 0, 2),
        (1, 1, 1, 1, 1, 1, 0, 0),
        (2, 9, 7, 33, 2, 3, 4, 1),
        (1, 12, 10, 40, 7, 2, 5, 1),
    ];
    for (seed, &(b, cin, lin, cout, k, stride, pad, out_pad)) in cases.iter().enumerate() {
        for dtype in [DType::F32, DType::F16] {
            let seed = seed as u64 * 5;
            let x = random(seed, b * cin * lin);
            let wt = random(seed + 1, cin * cout * k);
            let bias = random(seed + 2, cout);
            let mut g = Graph::new(&ctx);
            let vx = input(&mut g, &[b, cin, lin], &x);
            let (shape, laid) = conv_transpose1d_weight_layout(&wt, cin, cout, k, stride);
            let vw = weight(&mut g, &shape, dtype, &laid);
            let vb = input(&mut g, &[cout], &bias);
            let opts = ConvTranspose1dOptions {
                kernel_size: k,
                stride,
                padding: pad,
                output_padding: out_pad,
                act: Activation::None,
                input_leaky_relu: Some(0.1),
            };
            let out = g.conv_transpose1d(vx, vw, Some(vb), opts).unwrap();
            let got = run(g, out).await;
            let w_used = if dtype == DType::F16 {
                f16_round(&wt)
            } else {
                wt.clone()
            };
            let want = conv_transpose1d_ref(
                &x, &w_used, &bias, b, cin, lin, cout, k, stride, pad, out_pad, 0.1,
            );
            checks.close(
                &format!(
                    "conv_transpose1d {dtype:?} b{b} {cin}x{lin} -> {cout} k{k} s{stride} p{pad} op{out_pad}"
                ),
                &got,
                &want,
                1e-5,
            );
        }
    }
    checks.finish();
}

// ---- norms ----

#[allow(clippy::too_many_arguments)]
async fn check_group_norm(
    checks: &mut Checks,
    dims: &[usize],
    groups: usize,
    (gamma, beta, silu): (bool, bool, bool),
    eps: f32,
    (scale, offset): (f32, f32),
    seed: u64,
) {
    let ctx = ctx().await;
    let numel: usize = dims.iter().product();
    let c = dims[1];
    let x = shifted(seed, numel, scale, offset);
    let gm = shifted(seed + 1, c, 0.5, 1.0);
    let bt = random(seed + 2, c);
    let mut g = Graph::new(&ctx);
    let vx = input(&mut g, dims, &x);
    let vg = gamma.then(|| input(&mut g, &[c], &gm));
    let vb = beta.then(|| input(&mut g, &[c], &bt));
    let out = g.group_norm(vx, groups, vg, vb, eps, silu).unwrap();
    assert_eq!(g.dims(out), dims);
    let got = run(g, out).await;
    let want = group_norm_ref(
        &x,
        dims,
        groups,
        gamma.then_some(&gm[..]),
        beta.then_some(&bt[..]),
        eps as f64,
        silu,
    );
    checks.close(
        &format!(
            "group_norm {dims:?} G={groups} gamma={gamma} beta={beta} silu={silu} eps={eps:e} x*{scale}+{offset}"
        ),
        &got,
        &want,
        1e-5,
    );
}

#[wasm_bindgen_test]
async fn group_norm_matches_reference_on_odd_shapes() {
    let mut checks = Checks::new("group_norm");
    let cases: &[(&[usize], usize)] = &[
        (&[2, 6, 5], 3),
        (&[1, 4, 3, 7], 4),    // one channel per group
        (&[3, 8], 2),          // rank 2: no spatial dims
        (&[2, 32, 17, 3], 8),  // 204 elements per group: under one workgroup's 256 threads
        (&[1, 12, 13, 29], 3), // 1508 per group: not a multiple of 256
        (&[2, 3, 2, 2, 3], 1), // rank 5, one group
        (&[1, 64, 1000], 32),  // a 1-D UNet/VAE-like shape
        (&[2, 5, 1], 5),       // single-element groups: the output is beta
    ];
    let mut seed = 0;
    for &(dims, groups) in cases {
        for flags in [
            (true, true, false),
            (true, true, true),
            (false, false, true),
            (true, false, false),
            (false, true, true),
        ] {
            seed += 10;
            check_group_norm(&mut checks, dims, groups, flags, 1e-5, (1.0, 0.0), seed).await;
        }
    }
    // Far from zero: a one-pass sum of squares would lose the variance to cancellation (mean
    // 10, spread 3), and even an f32 mean loses digits unless taken relative to a shift (mean
    // 100, spread 0.01).
    let all = (true, true, true);
    check_group_norm(
        &mut checks,
        &[2, 128, 64, 16],
        32,
        all,
        1e-6,
        (3.0, 10.0),
        8,
    )
    .await;
    let plain = (false, false, false);
    check_group_norm(
        &mut checks,
        &[1, 4, 33, 31],
        2,
        plain,
        1e-9,
        (0.01, 100.0),
        9,
    )
    .await;
    checks.finish();
}

#[wasm_bindgen_test]
async fn layer_norm_matches_reference() {
    let ctx = ctx().await;
    let mut checks = Checks::new("layer_norm");
    let cases: &[(&[usize], f32, f32, f32)] = &[
        // dims, eps, scale, offset
        (&[1, 1], 1e-5, 1.0, 0.0), // D = 1: zero variance, the output is beta
        (&[3, 7], 1e-5, 1.0, 0.0),
        (&[1, 64], 1e-12, 3.0, 10.0),
        (&[2, 5, 33], 1e-5, 1.0, 0.5),
        (&[2, 77, 768], 1e-12, 3.0, 10.0), // the CLAP text encoder (RoBERTa)
        (&[4, 1024], 1e-12, 3.0, 10.0),
        (&[3, 3001], 1e-5, 2.0, -4.0), // over 2048: the 256-thread variant
        (&[5, 300], 1e-12, 0.01, 100.0), // mean 100, spread 0.01
        (&[2, 500, 128], 1e-5, 1.0, 0.0), // a UNet transformer block's rows
    ];
    for (seed, &(dims, eps, scale, offset)) in cases.iter().enumerate() {
        let seed = seed as u64 * 10 + 100;
        let numel: usize = dims.iter().product();
        let d = *dims.last().unwrap();
        let x = shifted(seed, numel, scale, offset);
        let gamma = shifted(seed + 1, d, 0.5, 1.0);
        let beta = random(seed + 2, d);
        let mut g = Graph::new(&ctx);
        let vx = input(&mut g, dims, &x);
        let vg = input(&mut g, &[d], &gamma);
        let vb = input(&mut g, &[d], &beta);
        let out = g.layer_norm(vx, vg, vb, eps).unwrap();
        assert_eq!(g.dims(out), dims);
        let got = run(g, out).await;
        checks.close(
            &format!("layer_norm {dims:?} eps={eps:e} x*{scale}+{offset}"),
            &got,
            &layer_norm_ref(&x, d, &gamma, &beta, eps as f64),
            1e-5,
        );
    }
    checks.finish();
}

/// Softmax (attention's probabilities) and the L2 normalisation of the CLAP embedding.
#[wasm_bindgen_test]
async fn softmax_and_l2_normalize_match_reference() {
    let ctx = ctx().await;
    let mut checks = Checks::new("softmax, l2_normalize");
    let cases: &[(&[usize], f32, f32)] = &[
        // dims, scale, input spread
        (&[1, 1], 1.0, 1.0),
        (&[3, 7], 0.125, 1.0),
        (&[2, 4, 1000], 1.0, 5.0),
        (&[5, 65], -2.0, 3.0),    // a negative scale flips the maximum
        (&[2, 4097], 1.0, 40.0),  // large logits: only max subtraction keeps exp finite
        (&[64, 77], 0.125, 10.0), // attention probabilities over CLAP's 77 tokens
        (&[40000, 3], 1.0, 1.0),  // more rows than one grid dimension takes (32768)
    ];
    for (seed, &(dims, scale, spread)) in cases.iter().enumerate() {
        let numel: usize = dims.iter().product();
        let d = *dims.last().unwrap();
        let x = shifted(seed as u64 + 300, numel, spread, 0.0);
        let mut g = Graph::new(&ctx);
        let vx = input(&mut g, dims, &x);
        let out = g.softmax(vx, scale).unwrap();
        let got = run(g, out).await;
        let want = softmax_ref(&x, d, scale as f64);
        // Rows sum to one: compare some rows on their own too, where the whole tensor's measure
        // would hide the error of rows of small probabilities.
        for (r, (got_row, want_row)) in got.chunks(d).zip(want.chunks(d)).enumerate().take(8) {
            let err = max_rel_err(got_row, want_row);
            assert!(err <= 1e-5, "softmax {dims:?} row {r}: {err:.3e}");
        }
        checks.close(
            &format!("softmax {dims:?} scale={scale} spread={spread}"),
            &got,
            &want,
            1e-5,
        );
    }
    let cases: &[(&[usize], f32)] = &[
        (&[1, 1], 1e-12),
        (&[5, 17], 1e-12),
        (&[2, 512], 1e-12), // the CLAP embedding
        (&[3, 2, 100], 1e-12),
        (&[2, 5000], 1e-12),
        (&[4, 3], 10.0), // every norm under eps: x / eps
    ];
    for (seed, &(dims, eps)) in cases.iter().enumerate() {
        let numel: usize = dims.iter().product();
        let d = *dims.last().unwrap();
        let x = random(seed as u64 + 200, numel);
        let mut g = Graph::new(&ctx);
        let vx = input(&mut g, dims, &x);
        let out = g.l2_normalize(vx, eps).unwrap();
        let got = run(g, out).await;
        checks.close(
            &format!("l2_normalize {dims:?} eps={eps:e}"),
            &got,
            &l2_ref(&x, d, eps as f64),
            1e-5,
        );
    }
    checks.finish();
}

// ---- attention ----

#[wasm_bindgen_test]
async fn attention_matches_reference_on_odd_shapes() {
    let mut checks = Checks::new("attention");
    let cases = [
        // batch, heads, tq, tk, d, dv
        (1, 1, 1, 1, 16, 16),   // one query, one key
        (2, 3, 5, 7, 16, 16),   // tk not a multiple of the key block
        (1, 2, 65, 33, 32, 32), // tq one past a workgroup
        (2, 1, 17, 1, 48, 48),  // one key: the output is v
        (1, 2, 70, 50, 80, 80),
        (1, 2, 20, 30, 16, 48), // dv != d
        (1, 3, 9, 130, 1, 1),   // head dim 1
        (1, 2, 3, 11, 5, 7),    // head dims that are not multiples of 4
        (1, 1, 37, 29, 512, 512),
        (3, 4, 100, 77, 64, 64), // 77 CLAP text tokens
    ];
    for (seed, &(b, h, tq, tk, d, dv)) in cases.iter().enumerate() {
        let p = Problem::new(b, h, tq, tk, d, dv);
        p.check(&mut checks, &p.inputs(seed as u64 * 10), None, 1e-5)
            .await;
    }
    checks.finish();
}

/// Keys split into chunks merged by a second pass: one key per split, chunks that do not divide
/// Tk or the key block, a last chunk of one key.
#[wasm_bindgen_test]
async fn split_keys_match_reference() {
    let mut checks = Checks::new("attention split keys");
    let cases = [
        // batch, heads, tq, tk, d, dv, key_chunk
        (1, 1, 1, 2, 16, 16, 1),
        (2, 3, 5, 17, 16, 16, 1),
        (2, 3, 5, 17, 16, 16, 8),
        (1, 2, 65, 41, 32, 48, 5),
        (2, 1, 17, 100, 5, 7, 24),
        (1, 2, 70, 333, 80, 80, 100),
    ];
    for (seed, &(b, h, tq, tk, d, dv, chunk)) in cases.iter().enumerate() {
        let p = Problem::new(b, h, tq, tk, d, dv);
        let inputs = p.inputs(seed as u64 * 10 + 400);
        p.check(&mut checks, &inputs, Some(chunk), 1e-5).await;
    }
    checks.finish();
}

/// Logits in the hundreds overflow exp() unless the running max is subtracted. Integer q and k
/// (and a power-of-two scale) make every score exact in f32, so the kernel is what is measured.
#[wasm_bindgen_test]
async fn attention_is_stable_for_large_scores() {
    let mut checks = Checks::new("attention large scores");
    let integers = |seed: u64, n: usize| -> Vec<f32> {
        random(seed, n)
            .into_iter()
            .map(|x| (x * 16.0).round())
            .collect()
    };
    for (chunk, tk) in [(None, 300), (Some(64), 300), (None, 1)] {
        let p = Problem::new(1, 2, 40, tk, 64, 64);
        let q = integers(500, 40 * 2 * 64);
        let k = integers(501, tk * 2 * 64);
        let v = random(502, tk * 2 * 64);
        let max_score = q
            .chunks(64)
            .flat_map(|qr| {
                k.chunks(64)
                    .map(move |kr| qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>())
            })
            .fold(0.0f32, |m, s| m.max(s.abs()))
            * p.scale;
        assert!(
            tk == 1 || max_score > 100.0,
            "scores too small to test: {max_score}"
        );
        p.check(&mut checks, &[q, k, v], chunk, 1e-5).await;
    }
    checks.finish();
}

/// The strided form: Q, K and V read straight out of one fused `[B, T, 3*H*D]` projection, and
/// out of one head-major `[B, H, T, D]` tensor.
#[wasm_bindgen_test]
async fn strided_attention_reads_fused_and_head_major_layouts() {
    let ctx = ctx().await;
    let mut checks = Checks::new("attention strided");
    let (batch, heads, t, d) = (2, 3, 45, 16);
    let width = heads * d;
    let qkv = random(700, batch * t * 3 * width);
    let mut g = Graph::new(&ctx);
    let vqkv = input(&mut g, &[batch, t, 3 * width], &qkv);
    let view = |offset| HeadView {
        var: vqkv,
        offset,
        sb: t * 3 * width,
        st: 3 * width,
        sh: d,
    };
    let p = Problem::new(batch, heads, t, t, d, d);
    let attention = |q, k, v, scale| Attention {
        q,
        k,
        v,
        batch,
        heads,
        tq: t,
        tk: t,
        d,
        dv: d,
        scale,
    };
    let out = g
        .attention_strided(attention(view(0), view(width), view(2 * width), p.scale))
        .unwrap();
    assert_eq!(g.dims(out), &[batch, t, width]);
    let got = run(g, out).await;
    let at = |part: usize| move |b, i, h| (b * t + i) * 3 * width + part * width + h * d;
    let want = p.reference((&qkv, &at(0)), (&qkv, &at(1)), (&qkv, &at(2)));
    checks.close("attention_strided fused qkv", &got, &want, 1e-5);

    let q = random(710, batch * heads * t * d);
    let mut g = Graph::new(&ctx);
    let vq = input(&mut g, &[batch, heads, t, d], &q);
    let view = HeadView {
        var: vq,
        offset: 0,
        sb: heads * t * d,
        st: d,
        sh: t * d,
    };
    let out = g
        .attention_strided(attention(view, view, view, 0.3))
        .unwrap();
    let got = run(g, out).await;
    let at = |b, i, h| ((b * heads + h) * t + i) * d;
    let p = Problem { scale: 0.3, ..p };
    let want = p.reference((&q, &at), (&q, &at), (&q, &at));
    checks.close("attention_strided [B, H, T, D]", &got, &want, 1e-5);
    checks.finish();
}

// ---- the context itself ----

/// The helper the page uses: a WebGPU adapter (never a WebGL2 fallback) and limits the engine
/// can split its work under.
#[wasm_bindgen_test]
async fn webgpu_context_is_on_browser_webgpu() {
    assert!(audioldm_web::has_webgpu(), "navigator.gpu is missing");
    let ctx = ctx().await;
    assert_eq!(ctx.adapter_info().backend, wgpu::Backend::BrowserWebGpu);
    assert!(ctx.max_binding_bytes() >= 128 << 20);
    assert!(
        audioldm_web::WebGpuError::Unavailable
            .to_string()
            .contains("WebGPU")
    );
}
