//! The parity tests on the full-size random `audioldm-s-full-v2` built from the real configs:
//! `scripts/reference/make_reference.py --full` writes it (never committed), then
//! `AUDIOLDM_FULL_REFERENCE=<its --out folder> cargo test --release --test full_size -- --ignored`.
//! The UNet and pipeline goldens run on `model_ctx()` (the CPU backend unless
//! `AUDIOLDM_TEST_DEVICE=gpu`); f16 arithmetic and the WebGPU default limits are the GPU's.

mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use audioldm::checkpoint::Checkpoint;
use audioldm::engine::Graph;
use audioldm::model::nn::{Loader, Precision};
use audioldm::model::unet::UNet2DConditionModel;
use audioldm::pipeline::{Pipeline, Request};
use common::*;

fn model_dir() -> PathBuf {
    full_reference().0
}

fn goldens() -> Checkpoint {
    full_reference().1
}

fn golden(name: &str) -> (Vec<usize>, Vec<f32>) {
    goldens().f32_any(name).expect(name)
}

#[test]
#[ignore = "needs the full-size reference from make_reference.py --full"]
fn full_size_unet_matches_diffusers() {
    let loader = Loader {
        ctx: model_ctx(),
        precision: Precision::default(),
    };
    let unet = UNet2DConditionModel::load(&loader, &model_dir().join("unet")).expect("load unet");
    let (lshape, latents) = golden("unet_latents");
    let (eshape, embeds) = golden("text_embeds");
    let t = goldens().i64_any("unet_timestep").expect("timestep").1[0];
    let mut g = Graph::new(model_ctx());
    let x = input(&mut g, &lshape, &latents);
    let e = input(&mut g, &eshape, &embeds);
    let eps = unet.forward(&mut g, x, t as f32, Some(e)).unwrap();
    let got = run(g, eps);
    assert_close(
        "full-size unet eps",
        &got,
        &f64s(&golden("unet_eps").1),
        1e-4,
    );
}

#[test]
#[ignore = "needs the full-size reference from make_reference.py --full"]
fn full_size_pipeline_matches_diffusers() {
    full_size_run_matches_diffusers(model_ctx(), Precision::default(), [1e-4, 1e-4, 1e-4, 1e-3]);
}

/// f16 weights with the GPU kernel set forced (workgroup-memory tiles, f16 arithmetic with f32
/// accumulation), within 1e-2 of diffusers' f32 run end to end.
#[test]
#[ignore = "needs the full-size reference from make_reference.py --full; minutes on lavapipe"]
fn full_size_f16_arithmetic_within_1e2() {
    use audioldm::engine::KernelVariants;
    let ctx = common::new_ctx();
    ctx.set_variants(KernelVariants {
        tiles: true,
        f16_math: false,
        fuse_norm: true,
        subgroups: true,
    })
    .unwrap();
    let pipeline = full_size_run_matches_diffusers(&ctx, Precision::weights_f16(true), [1e-2; 4]);
    assert!(
        pipeline.context().variants().f16_math,
        "--f16 turned f16 arithmetic on"
    );
}

/// The goldens' run (3 guided DDIM steps from injected latents) on `ctx`, each output within
/// its tolerance: text embeddings, final latents, mel, waveform. Returns the pipeline.
fn full_size_run_matches_diffusers(
    ctx: &audioldm::engine::Context,
    precision: Precision,
    tol: [f64; 4],
) -> Pipeline {
    let pipeline = Pipeline::load(ctx, &model_dir(), precision).expect("load");
    let meta = goldens();
    let (_, init) = golden("init_latents");
    let duration = pipeline.duration_for_latent_frames(golden("init_latents").0[2]);
    let request = Request {
        prompt: "a dog barking in the rain, then thunder!".into(),
        negative_prompt: Some(
            "low quality, noisy, distorted, muffled, clipping, hum, static, silence, wind, crowd talking, music".into(),
        ),
        steps: 3,
        guidance_scale: 2.5,
        duration_s: Some(duration),
        seed: 0,
        eta: 0.0,
        init_latents: Some(init),
        conditioning: None,
        scheduler: audioldm::pipeline::SchedulerKind::Ddim,
    };
    let out = pipeline
        .generate(&request, &AtomicBool::new(false), |_| {})
        .expect("generate");
    assert_close(
        "full-size text_embeds",
        &out.text_embeds,
        &f64s(&meta.f32_any("text_embeds").unwrap().1),
        tol[0],
    );
    assert_close(
        "full-size final latents",
        &out.latents,
        &f64s(&meta.f32_any("run_final_latents").unwrap().1),
        tol[1],
    );
    assert_close(
        "full-size mel",
        &out.mel.data,
        &f64s(&meta.f32_any("run_mel").unwrap().1),
        tol[2],
    );
    let want = meta.f32_any("run_waveform").unwrap().1;
    assert_eq!(out.audio.samples.len(), want.len());
    assert_close(
        "full-size waveform",
        &out.audio.samples,
        &f64s(&want),
        tol[3],
    );
    pipeline
}

/// The process's peak resident memory (`VmHWM`), in MiB; on a software adapter GPU buffers are
/// host memory, so this includes them.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[test]
#[ignore = "needs the full-size reference from make_reference.py --full; tens of minutes on lavapipe"]
fn full_size_long_clips_under_webgpu_default_limits() {
    use audioldm::engine::LimitsProfile;
    // AUDIOLDM_LONG_CLIPS="30,60" by default: the durations to make, in seconds.
    let durations: Vec<f64> = std::env::var("AUDIOLDM_LONG_CLIPS")
        .unwrap_or_else(|_| "30,60".into())
        .split(',')
        .map(|d| {
            d.trim()
                .parse()
                .expect("AUDIOLDM_LONG_CLIPS: seconds, comma-separated")
        })
        .collect();
    let ctx = common::ctx_with_limits(LimitsProfile::WebGpuDefault);
    let pipeline = Pipeline::load(&ctx, &model_dir(), Precision::default()).expect("load");
    for duration in durations {
        let started = std::time::Instant::now();
        let request = Request {
            prompt: "rain on a tin roof, distant thunder".into(),
            steps: 2,
            duration_s: Some(duration),
            ..Request::default()
        };
        let out = pipeline
            .generate(&request, &AtomicBool::new(false), |_| {})
            .expect("generate");
        let samples = (duration * 16_000.0) as usize;
        assert_eq!(out.audio.samples.len(), samples);
        assert!(out.audio.samples.iter().all(|s| s.is_finite()));
        let step = pipeline.step_stats().expect("a step ran");
        println!(
            "{duration} s under webgpu-default: {:.0} s, step graph {:.0} MiB planned + {:.0} MiB \
             weights, peak RSS {:.0} MiB",
            started.elapsed().as_secs_f64(),
            step.planned_bytes as f64 / (1 << 20) as f64,
            step.weight_bytes as f64 / (1 << 20) as f64,
            peak_rss_mib()
        );
        println!("{duration} s {}", pipeline.memory_report());
    }
}

#[test]
#[ignore = "needs the full-size reference from make_reference.py --full; hours on lavapipe"]
fn full_size_long_edit_under_webgpu_default_limits() {
    use audioldm::audio::Audio;
    use audioldm::engine::LimitsProfile;
    use audioldm::pipeline::edit::{EditRequest, Mode};
    // AUDIOLDM_LONG_EDIT seconds of source clip (60 by default): the VAE encoder's widest
    // activation at 60 s (128 x 6000 x 64 floats) must split under the 128 MiB binding.
    let duration: f64 = std::env::var("AUDIOLDM_LONG_EDIT")
        .map(|d| d.trim().parse().expect("AUDIOLDM_LONG_EDIT: seconds"))
        .unwrap_or(60.0);
    let ctx = common::ctx_with_limits(LimitsProfile::WebGpuDefault);
    let pipeline = Pipeline::load(&ctx, &model_dir(), Precision::default()).expect("load");
    let samples = (duration * 16_000.0) as usize;
    // A chirp from 100 Hz to 4 kHz: content in every part of the mel.
    let source: Vec<f32> = (0..samples)
        .map(|i| {
            let t = i as f64 / 16_000.0;
            let f = 100.0 + (4000.0 - 100.0) * t / duration;
            (0.5 * (std::f64::consts::PI * f * t).sin()) as f32
        })
        .collect();
    let edit = EditRequest {
        request: Request {
            prompt: "rain on a tin roof, distant thunder".into(),
            steps: 2,
            ..Request::default()
        },
        source: Audio {
            sample_rate: 16_000,
            samples: source,
        },
        source_name: "chirp".into(),
        mode: Mode::StyleTransfer { strength: 0.5 },
    };
    let started = std::time::Instant::now();
    let out = pipeline
        .edit(&edit, &AtomicBool::new(false), |_| {})
        .expect("edit");
    assert_eq!(out.audio.samples.len(), samples);
    assert!(out.audio.samples.iter().all(|s| s.is_finite()));
    println!(
        "{duration} s style transfer under webgpu-default: {:.0} s, peak RSS {:.0} MiB",
        started.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    println!("{duration} s edit {}", pipeline.memory_report());
}
