//! Device limits: the named profiles, the tiny pipeline under WebGPU's default limits at parity
//! with diffusers, and ops that split their work when a tensor is larger than one binding, checked
//! bit for bit against the unsplit run on a device whose bindings are made tiny on purpose.

mod common;

use std::sync::atomic::AtomicBool;

use audioldm::engine::{Context, DType, Graph, LimitsProfile, Tensor, Var};
use audioldm::model::nn::Precision;
use audioldm::pipeline::Pipeline;
use common::*;

/// A device on the same adapter whose bindings (and buffers) hold at most `bytes`.
fn small_binding_ctx(bytes: u64) -> Context {
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: bytes,
        ..wgpu::Limits::default()
    };
    common::ctx_with_limits(LimitsProfile::Custom(Box::new(limits)))
}

fn upload(ctx: &Context, g: &mut Graph, shape: &[usize], seed: u64) -> Var {
    let data = random(seed, shape.iter().product());
    let t = Tensor::from_f32(ctx, shape, DType::F32, &data).expect("upload");
    g.input(&t)
}

fn weight(ctx: &Context, g: &mut Graph, shape: &[usize], seed: u64) -> Var {
    let data = random(seed, shape.iter().product());
    let t = Tensor::from_f32(ctx, shape, DType::F32, &data).expect("upload");
    g.weight(&t)
}

#[test]
fn profiles_are_parsed_and_reported() {
    assert_eq!(
        LimitsProfile::parse("webgpu-default").unwrap(),
        LimitsProfile::WebGpuDefault
    );
    assert_eq!(
        LimitsProfile::parse("adapter").unwrap(),
        LimitsProfile::Adapter
    );
    let err = LimitsProfile::parse("huge").unwrap_err().to_string();
    assert!(
        err.contains("huge") && err.contains("webgpu-default"),
        "{err}"
    );

    let ctx = common::ctx_with_limits(LimitsProfile::WebGpuDefault);
    assert_eq!(ctx.limits_profile().name(), "webgpu-default");
    assert_eq!(ctx.max_binding_bytes(), 128 << 20);
    assert_eq!(ctx.limits().max_buffer_size, 256 << 20);

    // Limits past what the adapter offers: an error that names the limit.
    let offered = ctx_limits_of_adapter();
    let greedy = wgpu::Limits {
        max_compute_workgroup_storage_size: offered.max_compute_workgroup_storage_size + 1,
        ..offered
    };
    let err = LimitsProfile::Custom(Box::new(greedy))
        .request(&ctx_limits_of_adapter())
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_compute_workgroup_storage_size"), "{err}");
}

fn ctx_limits_of_adapter() -> wgpu::Limits {
    common::ctx_with_limits(LimitsProfile::Adapter)
        .limits()
        .clone()
}

#[test]
fn tiny_pipeline_under_webgpu_default_limits_matches_diffusers() {
    let ctx = common::ctx_with_limits(LimitsProfile::WebGpuDefault);
    let pipeline =
        Pipeline::load(&ctx, &fixtures().join("tiny"), Precision::default()).expect("load");
    let request = tiny_request();
    let out = pipeline
        .generate(&request, &AtomicBool::new(false), |_| {})
        .expect("generate");
    assert_close(
        "webgpu-default latents",
        &out.latents,
        &f64s(&tiny_golden("run_final_latents")),
        1e-4,
    );
    assert_close(
        "webgpu-default mel",
        &out.mel.data,
        &f64s(&tiny_golden("run_mel")),
        1e-4,
    );
    assert_close(
        "webgpu-default waveform",
        &out.audio.samples,
        &f64s(&tiny_golden("run_waveform")),
        1e-3,
    );
}

/// A VAE-like chain on `ctx`: nearest x3 up-sampling of a small input, GroupNorm + SiLU, a 3x3
/// convolution with a 1x1 shortcut as its residual, a stride-2 convolution with diffusers'
/// asymmetric padding, and GroupNorm again. Returns every stage.
fn chain(ctx: &Context, shape: [usize; 4], cout: usize) -> Vec<Vec<f32>> {
    use audioldm::engine::ops::conv::{Conv2dOptions, conv_weight_layout};
    let [_, c, h, w] = shape;
    let mut g = Graph::new(ctx);
    let x = upload(ctx, &mut g, &shape, 1);
    let conv_weight = |g: &mut Graph, cout: usize, cin: usize, k: usize, seed: u64| {
        let raw = random(seed, cout * cin * k * k);
        let (wshape, data) = conv_weight_layout(&raw, cout, cin, k, k);
        let t = Tensor::from_f32(ctx, wshape, DType::F32, &data).expect("upload");
        g.weight(&t)
    };
    let up = g.upsample_nearest(x, 3 * h, 3 * w).expect("upsample");
    let gamma = weight(ctx, &mut g, &[c], 2);
    let beta = weight(ctx, &mut g, &[c], 3);
    let normed = g
        .group_norm(up, c, Some(gamma), Some(beta), 1e-6, true)
        .expect("group_norm");
    let w1 = conv_weight(&mut g, cout, c, 3, 4);
    let b1 = weight(ctx, &mut g, &[cout], 5);
    let ws = conv_weight(&mut g, cout, c, 1, 6);
    let shortcut = g
        .conv2d(up, ws, None, None, Conv2dOptions::default())
        .expect("shortcut");
    let conv = g
        .conv2d(
            normed,
            w1,
            Some(b1),
            Some(shortcut),
            Conv2dOptions::same_padding(1, 1),
        )
        .expect("conv");
    let w2 = conv_weight(&mut g, cout, cout, 3, 7);
    let down_opts = Conv2dOptions {
        padding: [0, 1, 0, 1],
        ..Conv2dOptions::same_padding(2, 0)
    };
    let down = g.conv2d(conv, w2, None, None, down_opts).expect("down");
    let groups = if cout.is_multiple_of(2) {
        cout / 2
    } else {
        cout
    };
    let last = g
        .group_norm(down, groups, None, None, 1e-5, false)
        .expect("group_norm");
    let stages = [up, normed, shortcut, conv, down, last];
    for v in stages {
        g.output(v).expect("output");
    }
    let mut exe = g.build().expect("build");
    exe.run().expect("run");
    stages.iter().map(|&v| exe.read(v).expect("read")).collect()
}

#[test]
fn split_ops_equal_the_unsplit_run_bit_for_bit() {
    // Odd sizes; 8 KiB bindings split the large stages into parts of one or two channel planes and
    // the convolutions into windows of a few rows.
    let small = small_binding_ctx(8 << 10);
    for (shape, cout) in [([1, 5, 11, 9], 7), ([2, 6, 7, 13], 4), ([1, 3, 10, 10], 10)] {
        let whole = chain(ctx(), shape, cout);
        let split = chain(&small, shape, cout);
        for (stage, (a, b)) in whole.iter().zip(&split).enumerate() {
            assert_eq!(a.len(), b.len());
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{shape:?} -> {cout}: stage {stage} differs from the unsplit run"
            );
        }
    }
}

#[test]
fn what_cannot_be_split_is_a_clear_error() {
    let small = small_binding_ctx(1 << 10);
    // One channel plane of 20 x 20 f32 (1600 bytes) is over a 1 KiB binding.
    let mut g = Graph::new(&small);
    let x = upload(&small, &mut g, &[1, 2, 10, 10], 1);
    let err = g.upsample_nearest(x, 20, 20).unwrap_err().to_string();
    assert!(
        err.contains("upsample_nearest") && err.contains("1024") && err.contains("1600"),
        "{err}"
    );

    // Groups of three channels over parts of two: the statistics would straddle two bindings.
    let mut g = Graph::new(&small);
    let x = upload(&small, &mut g, &[1, 6, 4, 4], 2);
    let up = g.upsample_nearest(x, 8, 8).expect("upsample");
    let err = g
        .group_norm(up, 2, None, None, 1e-5, false)
        .unwrap_err()
        .to_string();
    // A group is 3 channels of 8 x 8.
    assert!(err.contains("group_norm") && err.contains("192"), "{err}");
}

#[test]
fn gpu_memory_is_reported_per_network_and_stage() {
    // A context of its own, so that no other test's buffers are counted.
    let ctx = common::ctx_with_limits(LimitsProfile::Adapter);
    assert_eq!(ctx.gpu_memory().live, 0);
    let pipeline =
        Pipeline::load(&ctx, &fixtures().join("tiny"), Precision::default()).expect("load");
    let loaded = ctx.gpu_memory().live;
    let report = pipeline.memory_report();
    let names: Vec<&str> = report.weights.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["text encoder", "UNet", "VAE", "vocoder"]);
    assert!(report.weights.iter().all(|&(_, bytes)| bytes > 0));
    assert_eq!(report.weight_bytes(), loaded);

    pipeline
        .generate(&tiny_request(), &AtomicBool::new(false), |_| {})
        .expect("generate");
    let report = pipeline.memory_report();
    println!("{report}");
    let stages: Vec<&str> = report.stages.iter().map(|s| s.stage).collect();
    assert_eq!(stages, ["text encoder", "UNet", "VAE decoder", "vocoder"]);
    for stage in &report.stages {
        assert!(stage.activation_bytes > 0, "{stage:?}");
        assert!(
            stage.peak_bytes >= loaded + stage.activation_bytes,
            "{stage:?}"
        );
    }
    assert_eq!(
        report.peak_bytes(),
        report.stages.iter().map(|s| s.peak_bytes).max().unwrap()
    );
    // Graphs free their activations when dropped; the cached step graph stays.
    let step = pipeline.step_stats().expect("step graph");
    let live = ctx.gpu_memory().live;
    assert!(live >= loaded + step.planned_bytes, "{live} {loaded}");
    drop(pipeline);
    assert_eq!(
        ctx.gpu_memory().live,
        0,
        "every buffer is released with the model"
    );
}

#[test]
fn the_tiny_vae_decodes_at_parity_with_its_activations_split() {
    // The decoder's widest activations are 32 channels of 100 x 32 (400 KiB), in groups of 4
    // channels; its mid-block attention projects 200 tokens to q, k and v (75 KiB). 256 KiB
    // bindings split the former into parts of 16 channels; 64 KiB ones into parts of 4 (one
    // group) and the projection into three.
    let shape = [1, 8, 25, 8];
    let latents = tiny_golden("run_final_latents");
    // Both kernel sets: the GPU set's convolutions read their split inputs through the fused
    // GroupNorm and write their windows from workgroup-memory tiles.
    for (kib, gpu) in [(256u64, false), (64, false), (256, true), (64, true)] {
        let small = small_binding_ctx(kib << 10);
        if gpu {
            small
                .set_variants(audioldm::engine::KernelVariants {
                    tiles: true,
                    f16_math: false,
                    fuse_norm: true,
                    subgroups: true,
                })
                .unwrap();
        }
        let pipeline =
            Pipeline::load(&small, &fixtures().join("tiny"), Precision::default()).expect("load");
        let mel = pipeline.decode_mel(&latents, shape).expect("decode");
        assert_close(
            &format!("tiny VAE decode with {kib} KiB bindings, GPU kernels {gpu}"),
            &mel.data,
            &f64s(&tiny_golden("run_mel")),
            1e-4,
        );
    }
}

#[test]
fn long_attention_merges_its_key_splits_per_window_of_queries_bit_for_bit() {
    use audioldm::engine::ops::attention::{Attention, HeadView};
    // 300 queries over 70 keys in chunks of 16 (5 splits), one head of 24: the partial results
    // take 300 x 5 x 26 x 4 = 156 KB, over 128 KiB bindings: windows of 128 query rows.
    let run = |ctx: &Context| {
        let mut g = Graph::new(ctx);
        let q = upload(ctx, &mut g, &[1, 300, 24], 1);
        let k = upload(ctx, &mut g, &[1, 70, 24], 2);
        let v = upload(ctx, &mut g, &[1, 70, 24], 3);
        let out = g
            .attention_split(
                Attention {
                    q: HeadView::interleaved(q, 300, 1, 24),
                    k: HeadView::interleaved(k, 70, 1, 24),
                    v: HeadView::interleaved(v, 70, 1, 24),
                    batch: 1,
                    heads: 1,
                    tq: 300,
                    tk: 70,
                    d: 24,
                    dv: 24,
                    scale: 0.2,
                },
                16,
            )
            .expect("attention");
        g.output(out).expect("output");
        let mut exe = g.build().expect("build");
        exe.run().expect("run");
        exe.read(out).expect("read")
    };
    let whole = run(ctx());
    let split = run(&small_binding_ctx(128 << 10));
    assert!(
        whole
            .iter()
            .zip(&split)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

#[test]
fn low_memory_makes_the_same_clip_and_holds_one_network_at_a_time() {
    use audioldm::pipeline::Residency;
    let run = |residency: Residency| {
        let ctx = common::ctx_with_limits(LimitsProfile::Adapter);
        let pipeline = Pipeline::load_with(
            &ctx,
            &fixtures().join("tiny"),
            Precision::default(),
            residency,
        )
        .expect("load");
        assert_eq!(pipeline.residency(), residency);
        let after_load = ctx.gpu_memory().live;
        let out = pipeline
            .generate(&tiny_request(), &AtomicBool::new(false), |_| {})
            .expect("generate");
        let report = pipeline.memory_report();
        println!("{residency:?}: {report}");
        (out, report, after_load, ctx.gpu_memory().live)
    };
    let (resident, all, all_loaded, _) = run(Residency::AllResident);
    let (low, low_report, low_loaded, low_after) = run(Residency::LowMemory);
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same(&resident.latents, &low.latents));
    assert!(same(&resident.audio.samples, &low.audio.samples));

    // Nothing stays on the GPU between runs, and no stage holds more than its own network.
    assert_eq!(low_loaded, 0);
    assert_eq!(low_after, 0);
    assert_eq!(all_loaded, all.weight_bytes());
    assert_eq!(low_report.weights, all.weights);
    for (stage, network) in [
        ("text encoder", "text encoder"),
        ("UNet", "UNet"),
        ("VAE decoder", "VAE"),
        ("vocoder", "vocoder"),
    ] {
        let peak = |r: &audioldm::pipeline::MemoryReport| {
            r.stages
                .iter()
                .find(|s| s.stage == stage)
                .unwrap()
                .peak_bytes
        };
        let weights = all.weights.iter().find(|(n, _)| *n == network).unwrap().1;
        assert!(peak(&low_report) < peak(&all), "{stage}");
        assert!(peak(&low_report) >= weights, "{stage}");
    }
    assert!(low_report.peak_bytes() < all.peak_bytes());
}
