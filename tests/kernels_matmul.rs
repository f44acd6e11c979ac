//! GEMM, GEMV, batched matmul and Linear against an f64 CPU reference, on the GPU and on the CPU
//! backend (whose one GEMM ignores the kernel choice; the tests of a WGSL kernel are GPU-only).

mod common;

use audioldm::engine::ops::matmul::MatmulKernel;
use audioldm::engine::{Activation, Context, DType, Graph, Tensor};
use common::reference::*;
use common::*;

/// The kernels a parity test tries on `ctx`: `gpu` on a GPU; on the CPU backend, which ignores
/// [`MatmulKernel`], just `Auto`.
fn kernels_on(ctx: &Context, gpu: Vec<MatmulKernel>) -> Vec<MatmulKernel> {
    if ctx.is_cpu() {
        vec![MatmulKernel::Auto]
    } else {
        gpu
    }
}

#[test]
fn matmul_matches_reference_on_odd_shapes() {
    let shapes = [
        (1, 1, 1, 1),
        (1, 7, 13, 5),
        (2, 33, 17, 65),
        (3, 64, 64, 64),
        (1, 100, 257, 31),
        (2, 1, 40, 9),
        // K and N multiples of 4 (the vec4-along-N kernel), N not of its 64- or 32-column tiles.
        (2, 33, 20, 12),
        (1, 101, 260, 36),
        (1, 3, 8, 4),
    ];
    for (backend, ctx) in backends() {
        for (seed, &(batch, m, k, n)) in shapes.iter().enumerate() {
            let mut kernels = vec![
                MatmulKernel::Tiled { tm: 4, tn: 4 },
                MatmulKernel::Tiled { tm: 8, tn: 8 },
                MatmulKernel::Gemv,
                MatmulKernel::Naive,
                MatmulKernel::Tiles { f16: false },
            ];
            if n % 4 == 0 && k % 4 == 0 {
                kernels.push(MatmulKernel::TiledN4 { tm: 4, tn: 2 });
                kernels.push(MatmulKernel::TiledN4 { tm: 8, tn: 1 });
            }
            for kernel in kernels_on(ctx, kernels) {
                for b_batched in [false, true] {
                    let a = random(seed as u64 * 10, batch * m * k);
                    let bn = if b_batched { batch } else { 1 };
                    let b = random(seed as u64 * 10 + 1, bn * k * n);
                    let mut g = Graph::new(ctx);
                    let va = input(&mut g, &[batch, m, k], &a);
                    let vb = if b_batched {
                        input(&mut g, &[batch, k, n], &b)
                    } else {
                        input(&mut g, &[k, n], &b)
                    };
                    let out = g.matmul_with(va, vb, 0.5, kernel).unwrap();
                    assert_eq!(g.dims(out), &[batch, m, n]);
                    let got = run(g, out);
                    let want: Vec<f64> = matmul_ref(&a, &b, batch, m, k, n, b_batched)
                        .iter()
                        .map(|v| v * 0.5)
                        .collect();
                    assert_close(
                        &format!(
                            "matmul {kernel:?} b{batch} {m}x{k}x{n} batched_b={b_batched} on {backend}"
                        ),
                        &got,
                        &want,
                        1e-5,
                    );
                }
            }
        }
    }
}

/// The vec4 kernel on a Linear weight [N, K] with a long K, f32 and f16, against the scalar one.
#[test]
fn vec4_linear_kernel_handles_long_reductions() {
    use audioldm::engine::ops::matmul::{Gemm, MatView};
    for dtype in [DType::F32, DType::F16] {
        for &(m, k, n) in &[(9, 4096, 11), (17, 3072, 40)] {
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
                MatmulKernel::Tiles { f16: false },
            ] {
                let mut g = Graph::new(ctx());
                let vx = input(&mut g, &[m, k], &x);
                let wt = Tensor::from_f32(ctx(), [n, k], dtype, &w).unwrap();
                let vw = g.weight(&wt);
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
                let got = run(g, out);
                assert_close(
                    &format!("linear {kernel:?} {dtype:?} {m}x{k}->{n}"),
                    &got,
                    &want,
                    1e-4,
                );
            }
        }
    }
    // Operands that are not contiguous along K cannot take it.
    let mut g = Graph::new(ctx());
    let a = input(&mut g, &[8, 8], &random(1, 64));
    let b = input(&mut g, &[8, 8], &random(2, 64));
    let err = g
        .matmul_with(a, b, 1.0, MatmulKernel::TiledK4 { tm: 4, tn: 8 })
        .unwrap_err()
        .to_string();
    assert!(err.contains("contiguous along K"), "{err}");
}

/// The vec4-along-N kernel with B a plain `[K, N]` matrix stored as f32 and as f16, and its
/// refusal of an N that is not a multiple of 4.
#[test]
fn vec4_columns_kernel_reads_f32_and_f16() {
    let (m, k, n) = (13, 516, 44);
    let a = random(31, m * k);
    let b = random(32, k * n);
    for dtype in [DType::F32, DType::F16] {
        let b_used = if dtype == DType::F16 {
            f16_round(&b)
        } else {
            b.clone()
        };
        let mut g = Graph::new(ctx());
        let va = input(&mut g, &[m, k], &a);
        let bt = Tensor::from_f32(ctx(), [k, n], dtype, &b).unwrap();
        let vb = g.weight(&bt);
        let kernel = MatmulKernel::TiledN4 { tm: 4, tn: 2 };
        let out = g.matmul_with(va, vb, 1.0, kernel).unwrap();
        let got = run(g, out);
        assert_close(
            &format!("matmul {kernel:?} {dtype:?} {m}x{k}x{n}"),
            &got,
            &matmul_ref(&a, &b_used, 1, m, k, n, false),
            1e-4,
        );
    }
    let mut g = Graph::new(ctx());
    let va = input(&mut g, &[4, 8], &random(1, 32));
    let vb = input(&mut g, &[8, 6], &random(2, 48));
    let err = g
        .matmul_with(va, vb, 1.0, MatmulKernel::TiledN4 { tm: 4, tn: 2 })
        .unwrap_err()
        .to_string();
    assert!(err.contains("B along N"), "{err}");
}

#[test]
fn long_reductions_stay_within_1e4() {
    // (9, 4096, 12): `Auto` reads A along K and B along N (vec4 kernel); the others take the scalar kernels.
    for &(m, k, n) in &[(9, 4096, 11), (3, 3072, 5), (9, 4096, 12)] {
        let a = random(7, m * k);
        let b = random(8, k * n);
        let want = matmul_ref(&a, &b, 1, m, k, n, false);
        for (backend, ctx) in backends() {
            let kernels = vec![
                MatmulKernel::Auto,
                MatmulKernel::Gemv,
                MatmulKernel::Tiles { f16: false },
            ];
            for kernel in kernels_on(ctx, kernels) {
                let mut g = Graph::new(ctx);
                let va = input(&mut g, &[m, k], &a);
                let vb = input(&mut g, &[k, n], &b);
                let out = g.matmul_with(va, vb, 1.0, kernel).unwrap();
                let got = run(g, out);
                assert_close(
                    &format!("matmul {kernel:?} {m}x{k}x{n} on {backend}"),
                    &got,
                    &want,
                    1e-4,
                );
            }
        }
    }
}

/// Linear: y = act(x W^T + b) + r, weights f32 and f16, every activation, GEMV and tiled paths.
#[test]
fn linear_fuses_bias_activation_and_residual() {
    let acts = [
        Activation::None,
        Activation::Relu,
        Activation::LeakyRelu(0.1),
        Activation::Silu,
        Activation::Gelu,
        Activation::Tanh,
    ];
    // Up to 4 rows take the GEMV; K a multiple of 4 the vec4 kernel (TiledK4), else `Tiled`.
    for (seed, &(rows, k, n)) in [
        (1usize, 19usize, 23usize),
        (2, 64, 48),
        (37, 50, 29),
        (5, 128, 130),
        (33, 36, 65),
        (70, 4, 9),
    ]
    .iter()
    .enumerate()
    {
        for act in acts {
            for dtype in [DType::F32, DType::F16] {
                let seed = seed as u64 * 100;
                let x = random(seed, rows * k);
                let w = random(seed + 1, n * k);
                let bias = random(seed + 2, n);
                let res = random(seed + 3, rows * n);
                let w_used = if dtype == DType::F16 {
                    f16_round(&w)
                } else {
                    w.clone()
                };
                // With the weights used (f16-rounded when stored so), and with the f32 weights.
                let reference = |w: &[f32]| {
                    let mut want = vec![0.0; rows * n];
                    for i in 0..rows {
                        for j in 0..n {
                            let dot: f64 = (0..k)
                                .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                                .sum();
                            want[i * n + j] =
                                act_ref(dot + bias[j] as f64, act) + res[i * n + j] as f64;
                        }
                    }
                    want
                };
                let want = reference(&w_used);
                let want32 = reference(&w);
                for (backend, ctx) in backends() {
                    let mut g = Graph::new(ctx);
                    let vx = input(&mut g, &[rows, k], &x);
                    let wt = Tensor::from_f32(ctx, [n, k], dtype, &w).unwrap();
                    let vw = g.weight(&wt);
                    let vb = input(&mut g, &[n], &bias);
                    let vr = input(&mut g, &[rows, n], &res);
                    let out = g.linear(vx, vw, Some(vb), act, Some(vr)).unwrap();
                    let got = run(g, out);
                    let tol = 1e-5;
                    assert_close(
                        &format!("linear {rows}x{k}->{n} {act:?} {dtype:?} on {backend}"),
                        &got,
                        &want,
                        tol,
                    );
                    if dtype == DType::F16 {
                        // Against the unrounded f32 weights, f16 storage stays within 1e-2.
                        assert_close(
                            &format!("linear f16-vs-f32 {rows}x{k}->{n} {act:?} on {backend}"),
                            &got,
                            &want32,
                            1e-2,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn shape_mismatch_is_an_error_naming_the_op_and_shapes() {
    for (backend, ctx) in backends() {
        let mut g = Graph::new(ctx);
        let a = input(&mut g, &[3, 5], &random(1, 15));
        let b = input(&mut g, &[6, 2], &random(2, 12));
        let err = g.matmul(a, b, 1.0).unwrap_err().to_string();
        assert!(
            err.contains("matmul") && err.contains("[3, 5]") && err.contains("[6, 2]"),
            "{backend}: {err}"
        );
        let w = input(&mut g, &[4, 7], &random(3, 28));
        let err = g
            .linear(a, w, None, Activation::None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linear") && err.contains("[3, 5]") && err.contains("[4, 7]"),
            "{backend}: {err}"
        );
    }
}

/// The workgroup-tile kernel computing in f16 (f32 accumulation): within 1e-2 of the f64
/// reference on odd shapes, strided and batched operands, long K, and with f16 weights.
#[test]
fn f16_arithmetic_tiles_stay_within_1e2() {
    assert!(
        ctx().capabilities().shader_f16,
        "lavapipe offers SHADER_F16; this adapter does not"
    );
    let kernel = MatmulKernel::Tiles { f16: true };
    let mut worst: f64 = 0.0;
    for (seed, &(batch, m, k, n)) in [
        (1, 7, 13, 5),
        (2, 33, 17, 65),
        (3, 64, 64, 64),
        (1, 100, 257, 31),
        (1, 9, 4096, 11),
    ]
    .iter()
    .enumerate()
    {
        for b_batched in [false, true] {
            let a = random(seed as u64 * 10 + 100, batch * m * k);
            let bn = if b_batched { batch } else { 1 };
            let b = random(seed as u64 * 10 + 101, bn * k * n);
            let mut g = Graph::new(ctx());
            let va = input(&mut g, &[batch, m, k], &a);
            let vb = if b_batched {
                input(&mut g, &[batch, k, n], &b)
            } else {
                input(&mut g, &[k, n], &b)
            };
            let out = g.matmul_with(va, vb, 1.0, kernel).unwrap();
            let got = run(g, out);
            let want = matmul_ref(&a, &b, batch, m, k, n, b_batched);
            let err = max_rel_err(&got, &want);
            worst = worst.max(err);
            assert!(
                err <= 1e-2,
                "f16 tiles b{batch} {m}x{k}x{n}: max rel err {err:e}"
            );
        }
    }
    println!("f16-arithmetic tiles: worst max rel err {worst:.3e}");
}

/// A 37x70x29 `Auto` matmul of inputs drawn from `seed` and `seed + 1`, recorded on `ctx` and
/// marked as output, with the f64 reference.
fn auto_matmul(
    ctx: &audioldm::engine::Context,
    seed: u64,
) -> (Graph, audioldm::engine::Var, Vec<f64>) {
    let (m, k, n) = (37, 70, 29);
    let a = random(seed, m * k);
    let b = random(seed + 1, k * n);
    let mut g = Graph::new(ctx);
    let va = input(&mut g, &[m, k], &a);
    let vb = input(&mut g, &[k, n], &b);
    let out = g.matmul(va, vb, 1.0).unwrap();
    g.output(out).unwrap();
    (g, out, matmul_ref(&a, &b, 1, m, k, n, false))
}

/// `Auto` follows the context's kernel variants: a context with the GPU set picks the tiles (a
/// result within 1e-5 either way), and f16 arithmetic is refused where SHADER_F16 is missing.
#[test]
fn auto_follows_the_contexts_kernel_variants() {
    use audioldm::engine::KernelVariants;
    let gpu = new_ctx();
    gpu.set_variants(KernelVariants {
        tiles: true,
        ..KernelVariants::default()
    })
    .unwrap();
    let (g, out, want) = auto_matmul(&gpu, 61);
    let mut exe = g.build().unwrap();
    exe.run().unwrap();
    let got = exe.read(out).unwrap();
    assert_close("Auto with the GPU variants", &got, &want, 1e-5);
    let profile = exe.profile().expect("lavapipe has timestamps");
    assert!(
        profile
            .ops
            .iter()
            .any(|op| op.kernel == "matmul_tiles.wgsl:matmul_tiles"),
        "{:?}",
        profile.ops
    );
    assert_eq!(
        KernelVariants::parse("tiles, f16-math").unwrap(),
        KernelVariants {
            tiles: true,
            f16_math: true,
            ..KernelVariants::default()
        }
    );
    assert_eq!(
        KernelVariants::parse("gpu").unwrap(),
        KernelVariants {
            tiles: true,
            fuse_norm: true,
            subgroups: true,
            ..KernelVariants::default()
        }
    );
    assert!(KernelVariants::parse("subgroups").unwrap().subgroups);
    assert!(KernelVariants::parse("cuda").is_err());
}

/// A variant the adapter cannot compile falls back to the portable kernel: with the GPU set forced
/// on a device whose workgroups are at most 8 high, the 16 x 16 tiles fail to compile, a warning
/// names them, and the register-blocked kernel (8 x 8) computes the same result. Such a device's
/// own choice (`for_adapter`) never picks the tiles.
#[test]
fn a_variant_that_does_not_compile_falls_back_to_the_portable_kernel() {
    use audioldm::engine::{KernelVariants, LimitsProfile};
    let limits = wgpu::Limits {
        max_compute_workgroup_size_y: 8,
        ..ctx().limits().clone()
    };
    let small = ctx_with_limits(LimitsProfile::Custom(Box::new(limits.clone())));
    let gpu_info = wgpu::AdapterInfo {
        device_type: wgpu::DeviceType::DiscreteGpu,
        ..ctx().adapter_info().clone()
    };
    assert!(!KernelVariants::for_adapter(&gpu_info, &limits).tiles);
    assert!(KernelVariants::for_adapter(&gpu_info, ctx().limits()).tiles);
    small
        .set_variants(KernelVariants {
            tiles: true,
            ..KernelVariants::default()
        })
        .unwrap();
    let (g, out, want) = auto_matmul(&small, 71);
    let mut exe = g.build().expect("the portable kernel instead");
    assert_eq!(exe.stats().fallbacks, 1);
    exe.run().unwrap();
    assert_close(
        "matmul after the fallback",
        &exe.read(out).unwrap(),
        &want,
        1e-5,
    );
    let profile = exe.profile().expect("lavapipe has timestamps");
    assert_eq!(profile.ops[0].kernel, "matmul.wgsl:matmul");
    // The device is still usable after the failed compile.
    small.check().expect("no error left behind");
}
