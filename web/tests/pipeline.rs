//! The whole text-to-audio pipeline in a browser, against diffusers' `AudioLDMPipeline` on the
//! tiny random model (the goldens of `tests/pipeline.rs`: a 3-step DDIM run with guidance 2.5 and
//! a negative prompt from injected initial latents), with the tolerances of the native test. The
//! model's files are mounted as Blobs, as the page mounts a download, so the weights go through
//! the browser's loading path: safetensors headers read at mount, each tensor's bytes read from
//! its Blob when it loads; the tokenizer is the tokenizers crate's wasm build.
#![cfg(target_arch = "wasm32")]

mod common;
#[path = "../../tests/common/tiny.rs"]
mod tiny;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use audioldm::checkpoint::Checkpoint;
use audioldm::model::nn::Precision;
use audioldm::pipeline::{Event, Pipeline, Residency};
use common::*;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../tests/fixtures/tiny/", $name)).as_slice(),
        )
    };
}

/// The tiny model's folder, as the files a download would give.
const TINY: &[(&str, &[u8])] = &[
    fixture!("model_index.json"),
    fixture!("scheduler/scheduler_config.json"),
    fixture!("text_encoder/config.json"),
    fixture!("text_encoder/model.safetensors"),
    fixture!("tokenizer/tokenizer.json"),
    fixture!("tokenizer/tokenizer_config.json"),
    fixture!("unet/config.json"),
    fixture!("unet/diffusion_pytorch_model.safetensors"),
    fixture!("vae/config.json"),
    fixture!("vae/diffusion_pytorch_model.safetensors"),
    fixture!("vocoder/config.json"),
    fixture!("vocoder/model.safetensors"),
];

const GOLDENS: &[u8] = include_bytes!("../../tests/fixtures/tiny-goldens.safetensors");

fn blob(bytes: &[u8]) -> web_sys::Blob {
    let parts = js_sys::Array::new();
    parts.push(&js_sys::Uint8Array::from(bytes));
    web_sys::Blob::new_with_u8_array_sequence(&parts).expect("a Blob")
}

#[wasm_bindgen_test]
async fn tiny_pipeline_matches_diffusers() {
    let ctx = ctx().await;
    let root = Path::new("/tiny");
    let files = TINY
        .iter()
        .map(|(name, bytes)| (name.to_string(), blob(bytes)))
        .collect();
    audioldm::mounted::mount(root, files).await.expect("mount");
    let goldens_root = Path::new("/goldens");
    audioldm::mounted::mount(
        goldens_root,
        vec![("tiny.safetensors".into(), blob(GOLDENS))],
    )
    .await
    .expect("mount the goldens");
    let goldens = Checkpoint::open(&goldens_root.join("tiny.safetensors")).expect("goldens");
    let golden = async |name: &str| {
        let shape = goldens.shape(name).expect(name).to_vec();
        goldens.f32_async(name, &shape).await.expect(name)
    };

    let mut checks = Checks::new("tiny_pipeline_matches_diffusers");
    let pipeline = Pipeline::load_async(&ctx, root, Precision::default(), Residency::AllResident)
        .await
        .expect("load the tiny model");
    let request = tiny::tiny_request_from(golden("init_latents").await);
    let mut steps = Vec::new();
    let out = pipeline
        .generate_async(&request, &AtomicBool::new(false), |event| {
            if let Event::Step { i, n, .. } = event {
                steps.push((i, n));
            }
        })
        .await
        .expect("generate");
    assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
    let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    assert_eq!(out.audio.sample_rate, 16000);
    assert_eq!(
        out.audio.samples.len(),
        16000,
        "trimmed to int(1.0 * 16000)"
    );
    for (name, got, golden_name, tol) in tiny::tiny_checks(&out) {
        checks.close(name, got, &f64s(golden(golden_name).await), tol);
    }
    checks.finish();
}
