//! The whole text-to-audio pipeline in a browser, against diffusers' `AudioLDMPipeline` on the
//! tiny random model (the goldens of `tests/pipeline.rs`: a 3-step DDIM run with guidance 2.5 and
//! a negative prompt from injected initial latents), with the tolerances of the native test. The
//! model comes over HTTP from the test server as the page gets one from the Hub
//! (`hub::web::resolve`: fetched, checked, kept in the Cache API, mounted as Blobs), so the
//! weights go through the browser's loading path: safetensors headers read at mount, each
//! tensor's bytes read from its Blob when it loads; the tokenizer is the tokenizers crate's wasm
//! build.
#![cfg(target_arch = "wasm32")]

mod common;
#[path = "../../tests/common/tiny.rs"]
mod tiny;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use audioldm::checkpoint::Checkpoint;
use audioldm::engine::Context;
use audioldm::model::nn::Precision;
use audioldm::pipeline::{Event, Pipeline, Residency};
use common::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const GOLDENS: &[u8] = include_bytes!("../../tests/fixtures/tiny-goldens.safetensors");

fn blob(bytes: &[u8]) -> web_sys::Blob {
    let parts = js_sys::Array::new();
    parts.push(&js_sys::Uint8Array::from(bytes));
    web_sys::Blob::new_with_u8_array_sequence(&parts).expect("a Blob")
}

/// The tiny model fetched from the test server into an empty browser cache (every file
/// downloaded), then resolved again (every file found in the cache); the folder it is mounted at.
async fn download_tiny() -> PathBuf {
    let window = web_sys::window().expect("a browser window");
    let caches = window.caches().expect("the Cache API");
    JsFuture::from(caches.delete(audioldm::hub::web::CACHE_NAME))
        .await
        .expect("empty the cache");
    let model = served_url("tiny/");
    let mut downloaded = BTreeSet::new();
    let dir = audioldm::hub::web::resolve(&model, &mut |p| {
        if p.finished {
            downloaded.insert(p.file);
        }
    })
    .await
    .expect("download the tiny model");
    for file in [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "vocoder/model.safetensors",
        "tokenizer/tokenizer.json",
        "model_index.json",
    ] {
        assert!(
            downloaded.contains(file),
            "{file} was not downloaded: {downloaded:?}"
        );
    }
    let mut again = Vec::new();
    let cached = audioldm::hub::web::resolve(&model, &mut |p| again.push(p.file))
        .await
        .expect("the tiny model from the cache");
    assert_eq!(cached, dir);
    assert!(again.is_empty(), "downloaded again: {again:?}");
    console_log!(
        "{} files downloaded from {model}, then found in the cache",
        downloaded.len()
    );
    dir
}

#[wasm_bindgen_test]
async fn tiny_pipeline_matches_diffusers() {
    tiny_pipeline_on(&ctx().await, "tiny_pipeline_matches_diffusers").await;
}

/// The page's path without WebGPU: the CPU backend compiled to WebAssembly (SIMD128, one
/// thread), with the native test's tolerances.
#[wasm_bindgen_test]
async fn tiny_pipeline_matches_diffusers_on_the_cpu_backend() {
    let ctx = Context::cpu();
    console_log!("{}", ctx.backend_name());
    tiny_pipeline_on(&ctx, "tiny_pipeline_matches_diffusers_on_the_cpu_backend").await;
}

async fn tiny_pipeline_on(ctx: &Context, test: &'static str) {
    let root = &download_tiny().await;
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

    let mut checks = Checks::new(test);
    let pipeline = Pipeline::load_async(ctx, root, Precision::default(), Residency::AllResident)
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
