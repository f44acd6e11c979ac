//! The UNet against diffusers on the tiny random model: ε for given latents, timestep and text
//! embeddings (8 heads, class-embedding concat, GEGLU, odd latent length 25 -> 13 -> 7 -> 4).

mod common;

use std::path::PathBuf;

use audioldm::checkpoint::Checkpoint;
use audioldm::engine::{DType, Graph, Tensor};
use audioldm::model::nn::{Loader, Precision};
use audioldm::model::unet::UNet2DConditionModel;
use common::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden(name: &str) -> (Vec<usize>, Vec<f32>) {
    Checkpoint::open(&fixtures().join("tiny-goldens.safetensors"))
        .expect("goldens")
        .f32_any(name)
        .expect(name)
}

fn run_unet(precision: Precision) -> (Vec<f32>, Vec<f64>) {
    let loader = Loader {
        ctx: model_ctx(),
        precision,
    };
    let unet =
        UNet2DConditionModel::load(&loader, &fixtures().join("tiny/unet")).expect("load unet");
    let (lshape, latents) = golden("unet_latents");
    let (eshape, embeds) = golden("text_embeds");
    let (_, want) = golden("unet_eps");
    let mut g = Graph::new(model_ctx());
    let x = input(&mut g, &lshape, &latents);
    let e = input(&mut g, &eshape, &embeds);
    let t = g.scalar(501.0);
    let eps = unet.forward(&mut g, x, t, Some(e)).expect("record");
    assert_eq!(g.dims(eps), lshape.as_slice());
    g.output(eps).unwrap();
    let mut exe = g.build().expect("build");
    exe.run().expect("run");
    let got = exe.read(eps).expect("read");
    let s = exe.stats();
    println!(
        "unet: {} dispatches, planned {} B vs unplanned {} B, weights {} B, {} kernels",
        s.dispatches, s.planned_bytes, s.unplanned_bytes, s.weight_bytes, s.kernels
    );
    (got, f64s(&want))
}

#[test]
fn unet_epsilon_matches_diffusers() {
    let (got, want) = run_unet(Precision::default());
    assert_close("unet eps (tiny, f32)", &got, &want, 1e-4);
}

#[test]
fn unet_with_f16_weights_stays_close() {
    let (got, want) = run_unet(Precision {
        weights: DType::F16,
    });
    assert_close("unet eps (tiny, f16 weights)", &got, &want, 1e-2);
}

#[test]
fn unet_shape_and_config_errors_are_reported() {
    let loader = Loader {
        ctx: model_ctx(),
        precision: Precision::default(),
    };
    let unet = UNet2DConditionModel::load(&loader, &fixtures().join("tiny/unet")).unwrap();
    let mut g = Graph::new(model_ctx());
    let bad = Tensor::from_f32(model_ctx(), [2, 8, 25], DType::F32, &vec![0.0; 400]).unwrap();
    let x = g.input(&bad);
    let err = unet.forward(&mut g, x, 1.0, None).unwrap_err().to_string();
    assert!(err.contains("[2, 8, 25]"), "{err}");
    let err = UNet2DConditionModel::load(&loader, &fixtures().join("tiny/vae"))
        .err()
        .expect("a VAE is no UNet");
    println!("{err}");
}
