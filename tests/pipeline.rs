//! The whole text-to-audio pipeline against diffusers' `AudioLDMPipeline` on the tiny random model:
//! a 3-step DDIM run with guidance 2.5 and a negative prompt from injected initial latents, on the
//! GPU (lavapipe here) and on the CPU backend. The other tests run on `model_ctx()`, except those
//! of the GPU's kernel variants.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use audioldm::Error;
use audioldm::engine::Context;
use audioldm::model::nn::Precision;
use audioldm::noise;
use audioldm::pipeline::{Event, Pipeline, Request};
use common::*;

fn pipeline_on(ctx: &Context) -> Pipeline {
    Pipeline::load(ctx, &fixtures().join("tiny"), Precision::default())
        .expect("load the tiny model")
}

fn pipeline() -> Pipeline {
    pipeline_on(model_ctx())
}

fn request() -> Request {
    tiny_request()
}

#[test]
fn seeded_noise_is_numpys_random_state() {
    let want = tiny_golden("init_latents");
    assert_eq!(noise::standard_normal(0, want.len()), want);
}

#[test]
fn end_to_end_matches_diffusers_on_the_gpu() {
    end_to_end_matches_diffusers(ctx());
}

#[test]
fn end_to_end_matches_diffusers_on_the_cpu() {
    end_to_end_matches_diffusers(cpu_ctx());
}

fn end_to_end_matches_diffusers(ctx: &Context) {
    let backend = if ctx.is_cpu() { "cpu" } else { "gpu" };
    let p = pipeline_on(ctx);
    let mut steps = Vec::new();
    let out = p
        .generate(&request(), &AtomicBool::new(false), |event| {
            if let Event::Step { i, n, preview } = event {
                assert_eq!(preview.frames * preview.bins, preview.data.len());
                steps.push((i, n));
            }
        })
        .expect("generate");
    assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!(out.text_embeds_shape, [2, 24]);
    assert_eq!(out.audio.sample_rate, 16000);
    assert_eq!(
        out.audio.samples.len(),
        16000,
        "trimmed to int(1.0 * 16000)"
    );
    for (name, got, golden, tol) in tiny::tiny_checks(&out) {
        assert_close(
            &format!("{backend}: {name}"),
            got,
            &f64s(&tiny_golden(golden)),
            tol,
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_clip_and_the_step_graph_is_reused() {
    let p = pipeline();
    let mut req = request();
    req.init_latents = None;
    req.seed = 7;
    let cancel = AtomicBool::new(false);
    let a = p.generate(&req, &cancel, |_| {}).unwrap();
    let b = p.generate(&req, &cancel, |_| {}).unwrap();
    assert_eq!(a.audio.samples, b.audio.samples);
    req.seed = 8;
    let c = p.generate(&req, &cancel, |_| {}).unwrap();
    assert_ne!(a.audio.samples, c.audio.samples);
}

#[test]
fn cancelling_stops_between_steps() {
    let p = pipeline();
    let cancel = AtomicBool::new(false);
    let mut seen = 0;
    let err = p
        .generate(&request(), &cancel, |event| {
            if let Event::Step { .. } = event {
                seen += 1;
                cancel.store(true, Ordering::Relaxed);
            }
        })
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(seen, 1);
}

/// Step i's preview is read while step i + 1 runs. A run cancelled with a step still unread
/// leaves nothing behind: the next run's previews are its own, step by step, as are an
/// uninterrupted pipeline's.
#[test]
fn previews_follow_their_steps_after_a_cancelled_run() {
    let previews = |p: &Pipeline, cancel_after: Option<usize>| {
        let cancel = AtomicBool::new(false);
        let mut seen = Vec::new();
        let result = p.generate(&request(), &cancel, |event| {
            if let Event::Step { i, n, preview } = event {
                assert_eq!(n, 3);
                seen.push((i, preview.data));
                if Some(i) == cancel_after {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        });
        (result, seen)
    };
    let fresh = pipeline();
    let (want_output, want) = previews(&fresh, None);
    let want_output = want_output.unwrap();
    assert_eq!(
        want.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    let p = pipeline();
    let (cancelled, _) = previews(&p, Some(1));
    assert!(matches!(cancelled, Err(Error::Cancelled)));
    let (output, got) = previews(&p, None);
    assert_eq!(got, want, "previews after a cancelled run");
    assert_eq!(output.unwrap().latents, want_output.latents);
    // The last preview is the final step's clean estimate, not the latents before it.
    assert_ne!(got[1].1, got[2].1);
}

#[test]
fn bad_requests_are_errors_and_empty_prompts_are_unconditional() {
    let p = pipeline();
    let cancel = AtomicBool::new(false);
    for duration in [0.0, -1.0, 0.03, f64::NAN, 61.0] {
        let req = Request {
            duration_s: Some(duration),
            init_latents: None,
            ..request()
        };
        let err = p.generate(&req, &cancel, |_| {}).unwrap_err().to_string();
        assert!(err.contains("duration"), "{duration}: {err}");
    }
    for steps in [0, 1001] {
        let req = Request { steps, ..request() };
        let err = p.generate(&req, &cancel, |_| {}).unwrap_err().to_string();
        assert!(err.contains("steps"), "{steps}: {err}");
    }
    let req = Request {
        init_latents: Some(vec![0.0; 5]),
        ..request()
    };
    assert!(p.generate(&req, &cancel, |_| {}).is_err());

    let mut nan = tiny_golden("init_latents");
    nan[17] = f32::NAN;
    let req = Request {
        init_latents: Some(nan),
        ..request()
    };
    let err = p.generate(&req, &cancel, |_| {}).unwrap_err().to_string();
    assert!(err.contains("denoising step 1 of 3"), "{err}");

    let req = Request {
        prompt: String::new(),
        negative_prompt: None,
        init_latents: None,
        ..request()
    };
    let out = p
        .generate(&req, &cancel, |_| {})
        .expect("an empty prompt is allowed");
    assert_eq!(out.audio.samples.len(), 16000);
    let long = "rain ".repeat(2000);
    let req = Request {
        prompt: long,
        init_latents: None,
        ..request()
    };
    p.generate(&req, &cancel, |_| {})
        .expect("a prompt over 512 tokens is truncated");
}

#[test]
fn guidance_off_runs_a_batch_of_one() {
    let p = pipeline();
    let req = Request {
        guidance_scale: 1.0,
        ..request()
    };
    let out = p.generate(&req, &AtomicBool::new(false), |_| {}).unwrap();
    assert_eq!(out.text_embeds_shape, [1, 24]);
    // Without a negative row the prompt's embedding is the second golden row.
    let want = tiny_golden("text_embeds");
    assert_close(
        "unguided prompt embedding",
        &out.text_embeds,
        &f64s(&want[24..]),
        1e-4,
    );
}

#[test]
fn a_missing_model_folder_is_a_clear_error() {
    let err = Pipeline::load(
        model_ctx(),
        &fixtures().join("no-such-model"),
        Precision::default(),
    )
    .err()
    .expect("missing folder");
    assert!(err.to_string().contains("no-such-model"), "{err}");
}

/// The tiny pipeline at parity with diffusers on each kernel variant set forced on a context of
/// its own: the GPU set (workgroup-memory tiles, fused norms, subgroup reductions) within the usual
/// tolerances, and with f16 arithmetic within 1e-2.
#[test]
fn every_kernel_variant_set_matches_diffusers() {
    use audioldm::engine::KernelVariants;
    for f16_math in [false, true] {
        let variants = KernelVariants {
            tiles: true,
            f16_math,
            fuse_norm: true,
            subgroups: true,
        };
        let ctx = new_ctx();
        ctx.set_variants(variants).expect("lavapipe has SHADER_F16");
        let p = Pipeline::load(&ctx, &fixtures().join("tiny"), Precision::default()).unwrap();
        let out = p
            .generate(&request(), &AtomicBool::new(false), |_| {})
            .expect("generate");
        for (name, got, golden, tol) in tiny::tiny_checks(&out) {
            let tol = if f16_math { 1e-2 } else { tol };
            assert_close(
                &format!("{variants:?}: {name}"),
                got,
                &f64s(&tiny_golden(golden)),
                tol,
            );
        }
    }
}

/// `--f16` (f16 weights) turns on f16 arithmetic where the GPU kernels run and the adapter has
/// SHADER_F16, and leaves the CPU adapters' kernels computing in f32; both within 1e-2. The choice
/// is the pipeline's own: other users of the context keep f32 arithmetic.
#[test]
fn f16_weights_compute_in_f16_only_with_the_gpu_kernels() {
    use audioldm::engine::KernelVariants;
    for tiles in [true, false] {
        let ctx = new_ctx();
        ctx.set_variants(KernelVariants {
            tiles,
            f16_math: false,
            fuse_norm: tiles,
            subgroups: tiles,
        })
        .unwrap();
        let p =
            Pipeline::load(&ctx, &fixtures().join("tiny"), Precision::weights_f16(true)).unwrap();
        assert_eq!(p.context().variants().f16_math, tiles);
        // The pipeline computes in f16 on a handle of its own: the shared context is unchanged,
        // and an f32 pipeline loaded on it next computes in f32.
        assert!(!ctx.variants().f16_math);
        let out = p
            .generate(&request(), &AtomicBool::new(false), |_| {})
            .expect("generate");
        for (name, got, golden, _) in tiny::tiny_checks(&out) {
            assert_close(
                &format!("f16 weights, tiles {tiles}: {name}"),
                got,
                &f64s(&tiny_golden(golden)),
                1e-2,
            );
        }
    }
}
