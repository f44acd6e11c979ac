//! conv2d (implicit GEMM), conv1d and transposed conv1d against an f64 CPU reference that takes
//! PyTorch's weight layouts, so the load-time re-layout is tested too; on the GPU and on the CPU
//! backend, each given its weights as models load them (`conv_weight`,
//! `conv_transpose1d_weight`). What is about a WGSL kernel (its choice, the fused GroupNorm, f16
//! arithmetic) is GPU-only.

mod common;

use audioldm::engine::ops::conv::{
    Conv1dOptions, Conv2dOptions, ConvKernel, ConvTranspose1dOptions, conv_transpose1d_weight,
    conv_weight, conv_weight_layout,
};
use audioldm::engine::{Activation, Context, DType, Graph, Tensor};
use common::reference::*;
use common::*;

#[allow(clippy::too_many_arguments)]
fn run_conv2d(
    (backend, ctx): (&str, &Context),
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
    let (want, oh, ow) = conv2d_ref(c, &x, &wt, &bias, None);
    let residual = random(seed + 3, want.len());
    let mut g = Graph::new(ctx);
    let vx = input(&mut g, &[c.b, c.cin, c.h, c.w], &x);
    let (shape, laid) = conv_weight(ctx, &wt, c.cout, c.cin, c.kh, c.kw);
    let wten = Tensor::from_f32(ctx, shape, dtype, &laid).unwrap();
    let vw = g.weight(&wten);
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
    let got = run(g, out);
    let act_ref = |v: f64| match act {
        Activation::Silu => v / (1.0 + (-v).exp()),
        Activation::None => v,
        other => panic!("untested {other:?}"),
    };
    let want: Vec<f64> = want
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            act_ref(v)
                + if with_residual {
                    residual[i] as f64
                } else {
                    0.0
                }
        })
        .collect();
    let f16 = dtype == DType::F16 || kernel == (ConvKernel::Tiles { f16: true });
    let tol = if f16 { 1e-2 } else { 1e-5 };
    assert_close(
        &format!(
            "conv2d {kernel:?} {dtype:?} {act:?} b{} {}x{}x{} -> {} k{}x{} s{:?} p{:?} d{:?} on {backend}",
            c.b, c.cin, c.h, c.w, c.cout, c.kh, c.kw, c.stride, c.pad, c.dil
        ),
        &got,
        &want,
        tol,
    );
}

#[test]
fn conv2d_matches_reference() {
    let cases = [
        // 3x3 stride 1 padding 1, odd everything.
        Conv {
            b: 1,
            cin: 3,
            h: 7,
            w: 5,
            cout: 5,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [1; 4],
            dil: [1, 1],
        },
        // The UNet's down-sampler: 3x3 stride 2 padding 1, odd input (63 -> 32 like the latents).
        Conv {
            b: 2,
            cin: 6,
            h: 63,
            w: 4,
            cout: 7,
            kh: 3,
            kw: 3,
            stride: [2, 2],
            pad: [1; 4],
            dil: [1, 1],
        },
        // The VAE encoder's down-sampler: pad right/bottom only, stride 2.
        Conv {
            b: 1,
            cin: 4,
            h: 9,
            w: 8,
            cout: 6,
            kh: 3,
            kw: 3,
            stride: [2, 2],
            pad: [0, 1, 0, 1],
            dil: [1, 1],
        },
        // 1x1 (shortcuts, proj_in/out).
        Conv {
            b: 2,
            cin: 13,
            h: 5,
            w: 3,
            cout: 17,
            kh: 1,
            kw: 1,
            stride: [1, 1],
            pad: [0; 4],
            dil: [1, 1],
        },
        // Size-1 edges.
        Conv {
            b: 1,
            cin: 1,
            h: 1,
            w: 1,
            cout: 1,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [1; 4],
            dil: [1, 1],
        },
        // A real UNet level, narrowed: 64 channels at 25 x 16.
        Conv {
            b: 2,
            cin: 64,
            h: 25,
            w: 16,
            cout: 64,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pad: [1; 4],
            dil: [1, 1],
        },
    ];
    for backend in backends() {
        // The CPU backend has one convolution and ignores the choice; f16 arithmetic is GPU-only.
        let kernels: &[ConvKernel] = if backend.1.is_cpu() {
            &[ConvKernel::Tiled]
        } else {
            &[
                ConvKernel::Tiled,
                ConvKernel::TiledWith { tm: 8, tn: 4 },
                ConvKernel::Naive,
                ConvKernel::Tiles { f16: false },
                ConvKernel::Tiles { f16: true },
            ]
        };
        for (i, c) in cases.iter().enumerate() {
            for &kernel in kernels {
                run_conv2d(
                    backend,
                    c,
                    10 * i as u64,
                    DType::F32,
                    kernel,
                    Activation::None,
                    false,
                );
            }
            run_conv2d(
                backend,
                c,
                10 * i as u64,
                DType::F32,
                ConvKernel::Tiled,
                Activation::Silu,
                true,
            );
            run_conv2d(
                backend,
                c,
                10 * i as u64,
                DType::F16,
                ConvKernel::Tiled,
                Activation::None,
                true,
            );
        }
    }
}

/// HiFi-GAN's residual convolutions: leaky ReLU on the input, dilation, symmetric padding.
#[test]
fn conv1d_with_dilation_and_input_activation() {
    for (seed, &(b, cin, l, cout, k, dil, pad)) in [
        (1, 4, 37, 6, 3, 1, 1),
        (2, 5, 50, 3, 7, 3, 9),
        (1, 8, 101, 8, 11, 5, 25),
        (1, 3, 1, 2, 1, 1, 0),
        (1, 7, 64, 1, 7, 1, 3),
    ]
    .iter()
    .enumerate()
    {
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
        let (want, _, lout) = conv2d_ref(&c, &x, &wt, &bias, Some(0.1));
        let residual = random(seed + 3, want.len());
        let want: Vec<f64> = want
            .iter()
            .zip(&residual)
            .map(|(&v, &r)| v + r as f64)
            .collect();
        for (backend, ctx) in backends() {
            let mut g = Graph::new(ctx);
            let vx = input(&mut g, &[b, cin, l], &x);
            let (shape, laid) = conv_weight(ctx, &wt, cout, cin, 1, k);
            let wten = Tensor::from_f32(ctx, shape, DType::F32, &laid).unwrap();
            let vw = g.weight(&wten);
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
            let got = run(g, out);
            assert_close(
                &format!("conv1d b{b} {cin}x{l} -> {cout} k{k} d{dil} p{pad} on {backend}"),
                &got,
                &want,
                1e-5,
            );
        }
    }
}

/// HiFi-GAN's up-samplers: kernel 2u, stride u, padding u/2 (AudioLDM: u = 5, 4, 2, 2, 2 with
/// kernels 16, 16, 8, 4, 4), plus odd cases.
#[test]
fn conv_transpose1d_matches_reference() {
    let cases = [
        (1, 6, 11, 3, 16, 5, 5, 0),
        (2, 5, 9, 7, 16, 4, 6, 0),
        (1, 4, 13, 4, 8, 2, 3, 0),
        (1, 3, 17, 5, 4, 2, 1, 0),
        (1, 2, 5, 3, 3, 3, 0, 2),
        (1, 1, 1, 1, 1, 1, 0, 0),
        // Kernel shorter than the stride, padding past a whole phase, 64+ rows of phases.
        (2, 9, 7, 33, 2, 3, 4, 1),
        (1, 12, 10, 40, 7, 2, 5, 1),
    ];
    for (seed, &(b, cin, lin, cout, k, stride, pad, out_pad)) in cases.iter().enumerate() {
        for dtype in [DType::F32, DType::F16] {
            let seed = seed as u64 * 5;
            let x = random(seed, b * cin * lin);
            let wt = random(seed + 1, cin * cout * k);
            let bias = random(seed + 2, cout);
            let w_used = if dtype == DType::F16 {
                f16_round(&wt)
            } else {
                wt.clone()
            };
            let want = conv_transpose1d_ref(
                &x, &w_used, &bias, b, cin, lin, cout, k, stride, pad, out_pad, 0.1,
            );
            for (backend, ctx) in backends() {
                let mut g = Graph::new(ctx);
                let vx = input(&mut g, &[b, cin, lin], &x);
                let (shape, laid) = conv_transpose1d_weight(ctx, &wt, cin, cout, k, stride);
                let wten = Tensor::from_f32(ctx, shape, dtype, &laid).unwrap();
                let vw = g.weight(&wten);
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
                let got = run(g, out);
                assert_close(
                    &format!(
                        "conv_transpose1d {dtype:?} b{b} {cin}x{lin} -> {cout} k{k} s{stride} p{pad} op{out_pad} on {backend}"
                    ),
                    &got,
                    &want,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn conv_shape_errors_name_the_op_and_shapes() {
    for (backend, ctx) in backends() {
        let mut g = Graph::new(ctx);
        let x = input(&mut g, &[1, 3, 8, 8], &random(1, 192));
        // A weight of 7 input channels: on a GPU [Cout, kh, kw, Cin4] = [5, 3, 3, 8], Cin4 = 8
        // not 3 rounded up to 4; on the CPU [Cout, Cin, kh, kw] = [5, 7, 3, 3].
        let (shape, data) = conv_weight(ctx, &random(2, 5 * 7 * 9), 5, 7, 3, 3);
        let w_dims = format!("{shape:?}");
        let w = input(&mut g, &shape, &data);
        let err = g
            .conv2d(x, w, None, None, Conv2dOptions::same_padding(1, 1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("conv2d") && err.contains("[1, 3, 8, 8]") && err.contains(&w_dims),
            "{backend}: {err}"
        );
        let tiny = input(&mut g, &[1, 7, 2, 2], &random(3, 28));
        let err = g
            .conv2d(tiny, w, None, None, Conv2dOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("smaller than the kernel"), "{backend}: {err}");
        // A transposed-convolution weight for kernel 16, stride 4 (on a GPU laid out as
        // [4 * 3, 1, 4, 8]) used with kernel 8.
        let x1 = input(&mut g, &[1, 5, 9], &random(4, 45));
        let (shape, data) = conv_transpose1d_weight(ctx, &random(5, 5 * 3 * 16), 5, 3, 16, 4);
        let wt = input(&mut g, &shape, &data);
        let opts = ConvTranspose1dOptions {
            kernel_size: 8,
            stride: 4,
            padding: 2,
            output_padding: 0,
            act: Activation::None,
            input_leaky_relu: None,
        };
        let err = g
            .conv_transpose1d(x1, wt, None, opts)
            .unwrap_err()
            .to_string();
        let why = if ctx.is_cpu() {
            "(kernel 8, stride 4)"
        } else {
            "kernel 8 and stride 4"
        };
        assert!(
            err.contains("conv_transpose1d") && err.contains(why),
            "{backend}: {err}"
        );
    }
}

/// GroupNorm (+ SiLU) fused into a convolution's input pass computes what the two ops compute
/// (the same statistics and arithmetic, so the same bits), without the normalised tensor: the
/// fused graph has statistics and no GroupNorm output. Odd shapes, with and without SiLU.
#[test]
fn group_norm_fused_into_the_convolution_input_matches_the_two_ops() {
    use audioldm::engine::ops::conv::InputNorm;
    for (seed, &(b, cin, h, w, cout, groups, silu)) in [
        (2, 8, 9, 5, 6, 4, true),
        (1, 12, 7, 13, 5, 3, false),
        (3, 6, 4, 4, 7, 2, true),
    ]
    .iter()
    .enumerate()
    {
        let seed = 40 + seed as u64 * 5;
        // Inputs far from zero, as the statistics' shift is there for.
        let x: Vec<f32> = random(seed, b * cin * h * w)
            .iter()
            .map(|v| 3.0 + v)
            .collect();
        let wt = random(seed + 1, cout * cin * 9);
        let gamma = random(seed + 2, cin);
        let beta = random(seed + 3, cin);
        let (shape, laid) = conv_weight_layout(&wt, cout, cin, 3, 3);
        let wten = Tensor::from_f32(ctx(), shape, DType::F32, &laid).unwrap();
        let opts = Conv2dOptions::same_padding(1, 1);
        let build = |fused: bool| {
            let mut g = Graph::new(ctx());
            let vx = input(&mut g, &[b, cin, h, w], &x);
            let vg = input(&mut g, &[cin], &gamma);
            let vb = input(&mut g, &[cin], &beta);
            let vw = g.weight(&wten);
            let out = if fused {
                let stats = g.group_norm_stats(vx, groups, 1e-5).unwrap();
                let input_norm = InputNorm {
                    stats,
                    gamma: vg,
                    beta: vb,
                    groups,
                    silu,
                };
                let opts = Conv2dOptions {
                    input_norm: Some(input_norm),
                    ..opts
                };
                g.conv2d(vx, vw, None, None, opts).unwrap()
            } else {
                let n = g
                    .group_norm(vx, groups, Some(vg), Some(vb), 1e-5, silu)
                    .unwrap();
                g.conv2d(n, vw, None, None, opts).unwrap()
            };
            g.output(out).unwrap();
            let mut exe = g.build().unwrap();
            exe.run().unwrap();
            let labels: Vec<String> = exe
                .profile()
                .expect("lavapipe has timestamps")
                .ops
                .into_iter()
                .map(|op| op.label)
                .collect();
            (exe.read(out).unwrap(), labels)
        };
        let (separate, separate_ops) = build(false);
        let (fused, fused_ops) = build(true);
        assert!(separate_ops.iter().any(|l| l == "group_norm"));
        assert!(
            !fused_ops.iter().any(|l| l == "group_norm"),
            "{fused_ops:?}"
        );
        assert!(fused_ops.iter().any(|l| l == "group_norm_stats"));
        let err = max_rel_err(&fused, &f64s(&separate));
        println!("fused GroupNorm b{b} {cin}x{h}x{w} g{groups} silu {silu}: {err:.3e}");
        assert!(err <= 1e-6, "fused vs separate: {err:e}");
    }
}

/// With f16 arithmetic the padded input is stored in f16. Where the f16 tiles do not compile (a
/// device whose workgroups are at most 8 high), the register-blocked kernel standing by reads that
/// f16 input: one op falls back, and the result is the reference's within f16's error, and off it
/// by more than f32's (its inputs were rounded to f16).
#[test]
fn f16_tiles_that_do_not_compile_fall_back_to_a_kernel_reading_the_f16_input() {
    use audioldm::engine::{KernelVariants, LimitsProfile};
    let limits = wgpu::Limits {
        max_compute_workgroup_size_y: 8,
        ..ctx().limits().clone()
    };
    let small = ctx_with_limits(LimitsProfile::Custom(Box::new(limits)));
    small
        .set_variants(KernelVariants {
            tiles: true,
            f16_math: true,
            ..KernelVariants::default()
        })
        .expect("lavapipe has SHADER_F16");
    let c = Conv {
        b: 2,
        cin: 6,
        h: 9,
        w: 5,
        cout: 7,
        kh: 3,
        kw: 3,
        stride: [1, 1],
        pad: [1, 1, 1, 1],
        dil: [1, 1],
    };
    let x = random(91, c.b * c.cin * c.h * c.w);
    let wt = random(92, c.cout * c.cin * c.kh * c.kw);
    let bias = random(93, c.cout);
    let (want, _, _) = conv2d_ref(&c, &x, &wt, &bias, None);
    let mut g = Graph::new(&small);
    let vx = input(&mut g, &[c.b, c.cin, c.h, c.w], &x);
    let (shape, laid) = conv_weight_layout(&wt, c.cout, c.cin, c.kh, c.kw);
    let vw = g.weight(&Tensor::from_f32(&small, shape, DType::F32, &laid).unwrap());
    let vb = input(&mut g, &[c.cout], &bias);
    let out = g
        .conv2d(vx, vw, Some(vb), None, Conv2dOptions::same_padding(1, 1))
        .unwrap();
    g.output(out).unwrap();
    let mut exe = g.build().expect("the portable kernel instead");
    assert_eq!(
        exe.stats().fallbacks,
        1,
        "the convolution, not its input pass"
    );
    exe.run().unwrap();
    let got = exe.read(out).unwrap();
    assert_close("conv2d after the fallback, f16 input", &got, &want, 1e-2);
    let err = max_rel_err(&got, &want);
    assert!(err > 1e-5, "inputs not rounded to f16: {err:e}");
    let profile = exe.profile().expect("lavapipe has timestamps");
    let kernels: Vec<&str> = profile.ops.iter().map(|op| op.kernel.as_str()).collect();
    assert_eq!(kernels, ["conv.wgsl:conv_input", "conv.wgsl:conv2d"]);
    small.check().expect("no error left behind");
}
