//! GFLOP/s of the GEMM and the UNet's real convolution shapes, next to naive kernels.
//! `cargo bench --bench kernels` (add `-- --quick` for fewer repetitions, `--gemm`, `--conv` or
//! `--norm` for one part). The normalisations run with the portable and the subgroup reductions.

use std::time::Instant;

use audioldm::engine::ops::conv::{
    Conv2dOptions, ConvKernel, ConvTranspose1dOptions, conv_transpose1d_weight_shape,
};
use audioldm::engine::ops::matmul::{Gemm, MatView, MatmulKernel};
use audioldm::engine::{Activation, Context, DType, Graph, KernelVariants, Result, Tensor, Var};

fn tensor(ctx: &Context, shape: &[usize], seed: u32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    // A cheap deterministic fill; values do not matter for timing.
    let data: Vec<f32> = (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0 - 0.5
        })
        .collect();
    Tensor::from_f32(ctx, shape, DType::F32, &data)
}

/// Median seconds of one replay of a one-op graph.
fn time_graph(ctx: &Context, g: Graph, out: Var, reps: usize) -> Result<f64> {
    let mut g = g;
    g.output(out)?;
    let mut exe = g.build()?;
    exe.run()?;
    ctx.wait()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        exe.run()?;
        ctx.wait()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let gemm_only = std::env::args().any(|a| a == "--gemm");
    let conv_only = std::env::args().any(|a| a == "--conv");
    let norm_only = std::env::args().any(|a| a == "--norm");
    let reps = if quick { 1 } else { 3 };
    let ctx = Context::new_blocking()?;
    let info = ctx.adapter_info();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "adapter: {} ({:?}, {:?}), {cores} CPU cores",
        info.name, info.backend, info.device_type
    );
    if norm_only {
        return bench_norms(&ctx, reps);
    }
    println!(
        "{:<44} {:>10} {:>10} {:>12}",
        "case", "ms", "GFLOP/s", "GFLOP/s/core"
    );
    let report = |name: &str, flops: f64, secs: f64| {
        let gflops = flops / secs / 1e9;
        println!(
            "{name:<44} {:>10.1} {gflops:>10.2} {:>12.2}",
            secs * 1e3,
            gflops / cores as f64
        );
    };

    if !conv_only {
        let n = 1024;
        let a = tensor(&ctx, &[n, n], 1)?;
        let b = tensor(&ctx, &[n, n], 2)?;
        for kernel in [
            MatmulKernel::Naive,
            MatmulKernel::Tiled { tm: 4, tn: 4 },
            MatmulKernel::Tiled { tm: 4, tn: 8 },
            MatmulKernel::Tiled { tm: 8, tn: 8 },
            MatmulKernel::TiledN4 { tm: 4, tn: 1 },
            MatmulKernel::TiledN4 { tm: 4, tn: 2 },
            MatmulKernel::TiledN4 { tm: 8, tn: 1 },
            MatmulKernel::TiledN4 { tm: 8, tn: 2 },
            MatmulKernel::TiledN4 { tm: 2, tn: 4 },
            MatmulKernel::Tiles { f16: false },
            MatmulKernel::Tiles { f16: true },
        ] {
            if kernel == (MatmulKernel::Tiles { f16: true }) && !ctx.capabilities().shader_f16 {
                continue;
            }
            let mut g = Graph::new(&ctx);
            let (va, vb) = (g.input(&a), g.input(&b));
            let out = g.matmul_with(va, vb, 1.0, kernel)?;
            let secs = time_graph(&ctx, g, out, reps)?;
            report(
                &format!("gemm 1024^3 {kernel:?}"),
                2.0 * (n * n * n) as f64,
                secs,
            );
        }

        // The same product with B as a Linear weight [N, K], where the vec4 kernel applies.
        for kernel in [
            MatmulKernel::Naive,
            MatmulKernel::Tiled { tm: 4, tn: 8 },
            MatmulKernel::TiledK4 { tm: 4, tn: 4 },
            MatmulKernel::TiledK4 { tm: 4, tn: 8 },
        ] {
            let mut g = Graph::new(&ctx);
            let (va, vb) = (g.input(&a), g.weight(&b));
            let out = g.gemm(Gemm {
                a: MatView::new(va, n, 1),
                b: MatView::new(vb, 1, n),
                batch: 1,
                m: n,
                k: n,
                n,
                alpha: 1.0,
                bias: None,
                residual: None,
                act: Activation::None,
                kernel,
            })?;
            let secs = time_graph(&ctx, g, out, reps)?;
            report(
                &format!("linear 1024^3 {kernel:?}"),
                2.0 * (n * n * n) as f64,
                secs,
            );
        }
    }
    if gemm_only {
        return Ok(());
    }
    // The UNet's 3x3 convolutions (batch 2 for classifier-free guidance, 10 s of audio), then
    // HiFi-GAN's resblock convolutions at its last two stages (10 s of audio) as height-1 2-D
    // ones: input shape, kernel [kh, kw], options.
    let mut cases: Vec<(String, [usize; 4], [usize; 2], Conv2dOptions)> = Vec::new();
    for &(c, h, w) in &[(128, 250, 16), (256, 125, 8), (384, 63, 4), (640, 32, 2)] {
        let name = format!("conv3x3 2x{c}x{h}x{w}");
        cases.push((
            name,
            [2, c, h, w],
            [3, 3],
            Conv2dOptions::same_padding(1, 1),
        ));
    }
    for &(c, l, k, d) in &[(64, 80016, 11, 5), (32, 160032, 7, 3), (32, 160032, 3, 1)] {
        let pad = d * (k - 1) / 2;
        let opts = Conv2dOptions {
            padding: [0, 0, pad, pad],
            dilation: [1, d],
            ..Conv2dOptions::default()
        };
        cases.push((
            format!("conv1d {c}x{l} k{k} d{d}"),
            [1, c, 1, l],
            [1, k],
            opts,
        ));
    }
    let f16 = ctx.capabilities().shader_f16;
    let kernels: Vec<ConvKernel> = if quick {
        vec![ConvKernel::Naive, ConvKernel::Tiled]
    } else {
        vec![
            ConvKernel::Naive,
            ConvKernel::Tiled,
            ConvKernel::TiledWith { tm: 4, tn: 4 },
            ConvKernel::TiledWith { tm: 4, tn: 8 },
            ConvKernel::TiledWith { tm: 8, tn: 4 },
            ConvKernel::TiledWith { tm: 8, tn: 2 },
        ]
    }
    .into_iter()
    .chain([ConvKernel::Tiles { f16: false }])
    .chain(f16.then_some(ConvKernel::Tiles { f16: true }))
    .collect();
    for (name, [b, c, h, w], [kh, kw], opts) in cases {
        let x = tensor(&ctx, &[b, c, h, w], 3)?;
        // [Cout, kh, kw, Cin4], Cin a multiple of 4.
        let wt = tensor(&ctx, &[c, kh, kw, c], 4)?;
        for &kernel in &kernels {
            let mut g = Graph::new(&ctx);
            let (vx, vw) = (g.input(&x), g.weight(&wt));
            let out = g.conv2d(vx, vw, None, None, Conv2dOptions { kernel, ..opts })?;
            let secs = time_graph(&ctx, g, out, reps)?;
            // Every case keeps its size: b h w output pixels.
            let flops = 2.0 * (b * h * w) as f64 * (c * c * kh * kw) as f64;
            report(&format!("{name} {kernel:?}"), flops, secs);
        }
    }
    // HiFi-GAN's up-sampling transposed convolutions (10 s of audio): Cin, input length, kernel,
    // stride; Cout = Cin / 2, padding (k - u) / 2.
    let upsamplers: [(usize, usize, usize, usize); 5] = [
        (1024, 1000, 16, 5),
        (512, 5001, 16, 4),
        (256, 20004, 8, 2),
        (128, 40008, 4, 2),
        (64, 80016, 4, 2),
    ];
    for (cin, l, k, u) in upsamplers {
        let x = tensor(&ctx, &[1, cin, l], 7)?;
        let wt = tensor(&ctx, &conv_transpose1d_weight_shape(cin, cin / 2, k, u), 8)?;
        let mut g = Graph::new(&ctx);
        let (vx, vw) = (g.input(&x), g.weight(&wt));
        let opts = ConvTranspose1dOptions {
            kernel_size: k,
            stride: u,
            padding: (k - u) / 2,
            output_padding: 0,
            act: Activation::None,
            input_leaky_relu: None,
        };
        let out = g.conv_transpose1d(vx, vw, None, opts)?;
        let secs = time_graph(&ctx, g, out, reps)?;
        let flops = 2.0 * l as f64 * (cin * cin / 2 * k) as f64;
        report(
            &format!("conv_transpose1d {cin}x{l} k{k} s{u}"),
            flops,
            secs,
        );
    }
    if !conv_only {
        bench_norms(&ctx, reps)?;
    }
    Ok(())
}

/// GB/s (bytes read and written once) of the UNet's GroupNorms and of LayerNorm and softmax rows,
/// with the workgroup-memory tree and, where the adapter has SUBGROUP, the subgroup reductions.
fn bench_norms(ctx: &Context, reps: usize) -> Result<()> {
    let mut sets = vec![("tree", KernelVariants::default())];
    if ctx.capabilities().subgroup {
        let subgroups = KernelVariants {
            subgroups: true,
            ..KernelVariants::default()
        };
        sets.push(("subgroups", subgroups));
    }
    println!("{:<44} {:>10} {:>10}", "normalisation", "ms", "GB/s");
    for (name, variants) in sets {
        ctx.set_variants(variants)?;
        let cases: [(&str, Vec<usize>); 5] = [
            ("group_norm+silu 2x128x250x16 G32", vec![2, 128, 250, 16]),
            ("group_norm+silu 2x640x32x2 G32", vec![2, 640, 32, 2]),
            ("layer_norm 2x4000x128", vec![2, 4000, 128]),
            ("layer_norm 2x77x768", vec![2, 77, 768]),
            ("softmax 16000x77", vec![16000, 77]),
        ];
        for (case, shape) in cases {
            let x = tensor(ctx, &shape, 9)?;
            let mut g = Graph::new(ctx);
            let vx = g.input(&x);
            let out = if case.starts_with("group_norm") {
                g.group_norm(vx, 32, None, None, 1e-5, true)?
            } else if case.starts_with("layer_norm") {
                let d = shape[2];
                let gamma = g.weight(&tensor(ctx, &[d], 10)?);
                let beta = g.weight(&tensor(ctx, &[d], 11)?);
                g.layer_norm(vx, gamma, beta, 1e-5)?
            } else {
                g.softmax(vx, 0.125)?
            };
            let secs = time_graph(ctx, g, out, reps)?;
            let bytes = 2.0 * 4.0 * shape.iter().product::<usize>() as f64;
            println!(
                "{:<44} {:>10.2} {:>10.2}",
                format!("{case} {name}"),
                secs * 1e3,
                bytes / secs / 1e9
            );
        }
    }
    Ok(())
}
