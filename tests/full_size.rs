//! The parity tests on the full-size random `audioldm-s-full-v2` built from the real configs:
//! `scripts/reference/make_reference.py --full` writes it (never committed), then
//! `AUDIOLDM_FULL_REFERENCE=<its --out folder> cargo test --release --test full_size -- --ignored`.

mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use audioldm::checkpoint::Checkpoint;
use audioldm::gpu::Graph;
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
        ctx: ctx(),
        precision: Precision::default(),
    };
    let unet = UNet2DConditionModel::load(&loader, &model_dir().join("unet")).expect("load unet");
    let (lshape, latents) = golden("unet_latents");
    let (eshape, embeds) = golden("text_embeds");
    let t = goldens().i64_any("unet_timestep").expect("timestep").1[0];
    let mut g = Graph::new(ctx());
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
    let pipeline = Pipeline::load(ctx(), &model_dir(), Precision::default()).expect("load");
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
    };
    let out = pipeline
        .generate(&request, &AtomicBool::new(false), |_| {})
        .expect("generate");
    assert_close(
        "full-size text_embeds",
        &out.text_embeds,
        &f64s(&meta.f32_any("text_embeds").unwrap().1),
        1e-4,
    );
    assert_close(
        "full-size final latents",
        &out.latents,
        &f64s(&meta.f32_any("run_final_latents").unwrap().1),
        1e-4,
    );
    assert_close(
        "full-size mel",
        &out.mel.data,
        &f64s(&meta.f32_any("run_mel").unwrap().1),
        1e-4,
    );
    let want = meta.f32_any("run_waveform").unwrap().1;
    assert_eq!(out.audio.samples.len(), want.len());
    assert_close("full-size waveform", &out.audio.samples, &f64s(&want), 1e-3);
}
