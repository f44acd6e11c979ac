//! The VAE (diffusers `AutoencoderKL`) against goldens from diffusers on the tiny random model:
//! decode (post_quant_conv + decoder), encode (encoder + quant_conv, the latent mean and std), the
//! same weights under diffusers <= 0.16's attention names in a `.bin`, and loading errors.

mod common;

use std::path::{Path, PathBuf};

use audioldm::checkpoint::Checkpoint;
use audioldm::engine::{DType, Graph, Tensor};
use audioldm::model::nn::{Loader, Precision};
use audioldm::model::vae::{AutoencoderKL, latent_std};
use common::*;

const TOL: f64 = 1e-4;

fn fixture(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(part)
}

fn golden(name: &str) -> (Vec<usize>, Vec<f32>) {
    let ckpt = Checkpoint::open(&fixture("tiny-goldens.safetensors")).expect("goldens");
    ckpt.f32_any(name).expect(name)
}

fn loader(precision: Precision) -> Loader<'static> {
    Loader {
        ctx: model_ctx(),
        precision,
    }
}

fn load(dir: &Path) -> audioldm::Result<AutoencoderKL> {
    AutoencoderKL::load(&loader(Precision::default()), dir)
}

/// Decodes the golden latents with `vae`, returns the mel and prints the graph's cost.
fn decode(vae: &AutoencoderKL, label: &str) -> Vec<f32> {
    let (shape, z) = golden("vae_latents");
    let mut g = Graph::new(model_ctx());
    let z = input(&mut g, &shape, &z);
    let mel = vae.decode(&mut g, z).expect("record decode");
    assert_eq!(g.dims(mel), [1, 1, 100, 32]);
    g.output(mel).unwrap();
    let mut exe = g.build().expect("build");
    exe.run().expect("run");
    let out = exe.read(mel).expect("read");
    let s = exe.stats();
    println!(
        "{label}: {} dispatches, {} kernels, planned {} B for intermediates (unplanned {} B, {} \
         buffers), weights {} B",
        s.dispatches, s.kernels, s.planned_bytes, s.unplanned_bytes, s.buffers, s.weight_bytes
    );
    out
}

#[test]
fn decode_matches_diffusers() {
    let vae = load(&fixture("tiny/vae")).expect("load tiny VAE");
    let got = decode(&vae, "decode");
    let (_, want) = golden("vae_mel");
    assert_close("vae decode (mel)", &got, &f64s(&want), TOL);
}

#[test]
fn encode_matches_diffusers() {
    let vae = load(&fixture("tiny/vae")).expect("load tiny VAE");
    let (shape, mel) = golden("vae_mel");
    let mut g = Graph::new(model_ctx());
    let x = input(&mut g, &shape, &mel);
    let dist = vae.encode(&mut g, x).expect("record encode");
    assert_eq!(g.dims(dist.mean), [1, 8, 25, 8]);
    assert_eq!(g.dims(dist.logvar), [1, 8, 25, 8]);
    g.output(dist.mean).unwrap();
    g.output(dist.logvar).unwrap();
    let mut exe = g.build().expect("build");
    exe.run().expect("run");
    let s = exe.stats();
    println!(
        "encode: {} dispatches, {} kernels, planned {} B for intermediates (unplanned {} B), \
         weights {} B",
        s.dispatches, s.kernels, s.planned_bytes, s.unplanned_bytes, s.weight_bytes
    );
    let mean = exe.read(dist.mean).unwrap();
    let std = latent_std(&exe.read(dist.logvar).unwrap());
    assert_close(
        "vae encode (mean)",
        &mean,
        &f64s(&golden("vae_encoded_mean").1),
        TOL,
    );
    assert_close(
        "vae encode (std)",
        &std,
        &f64s(&golden("vae_encoded_std").1),
        TOL,
    );
}

/// The same weights as a PyTorch `.bin` with `query`/`key`/`value`/`proj_attn` (the Hub's files).
#[test]
fn old_attention_names_in_a_bin_load() {
    let dir = fixture("tiny-bin/vae");
    let raw = Checkpoint::open_dir(&dir).unwrap();
    assert!(raw.contains("decoder.mid_block.attentions.0.proj_attn.weight"));
    let vae = load(&dir).expect("load the .bin VAE with old attention names");
    let got = decode(&vae, "decode (.bin, old names)");
    assert_close(
        "vae decode (.bin, old names)",
        &got,
        &f64s(&golden("vae_mel").1),
        TOL,
    );
}

/// f16 weight storage: not a parity target, but it must stay close.
#[test]
fn decode_with_f16_weights_stays_close() {
    let precision = Precision {
        weights: DType::F16,
    };
    let vae = AutoencoderKL::load(&loader(precision), &fixture("tiny/vae")).expect("load");
    let got = decode(&vae, "decode (f16 weights)");
    assert_close(
        "vae decode (f16 weights)",
        &got,
        &f64s(&golden("vae_mel").1),
        1e-2,
    );
}

#[test]
fn decode_rejects_wrong_latent_channels() {
    let vae = load(&fixture("tiny/vae")).unwrap();
    let mut g = Graph::new(model_ctx());
    let t = Tensor::from_f32(model_ctx(), [1, 4, 5, 8], DType::F32, &[0.0; 160]).unwrap();
    let z = g.input(&t);
    let err = vae.decode(&mut g, z).expect_err("an error").to_string();
    println!("wrong latent channels: {err}");
    assert!(err.contains("latent channels"), "{err}");
}

/// Decode and encode at full size (128/256/512 channels, 32 groups, attention over 512 channels).
#[test]
#[ignore = "needs the output of make_reference.py --full; slow on a software adapter"]
fn full_size_matches_diffusers() {
    let (dir, goldens) = full_reference();
    let vae = load(&dir.join("vae")).expect("load the full-size VAE");
    let (shape, z) = goldens.f32_any("vae_latents").unwrap();
    let (mel_shape, want_mel) = goldens.f32_any("vae_mel").unwrap();
    let mut g = Graph::new(model_ctx());
    let z = input(&mut g, &shape, &z);
    let mel = vae.decode(&mut g, z).unwrap();
    assert_eq!(g.dims(mel), mel_shape.as_slice());
    g.output(mel).unwrap();
    let mut exe = g.build().unwrap();
    let start = std::time::Instant::now();
    exe.run().unwrap();
    let got = exe.read(mel).unwrap();
    let s = exe.stats();
    println!(
        "full decode {:?} -> {mel_shape:?}: {:.1} s, {} dispatches, planned {} B (unplanned {} B), \
         weights {} B",
        shape,
        start.elapsed().as_secs_f64(),
        s.dispatches,
        s.planned_bytes,
        s.unplanned_bytes,
        s.weight_bytes
    );
    assert_close("full vae decode (mel)", &got, &f64s(&want_mel), TOL);

    let mut g = Graph::new(model_ctx());
    let x = input(&mut g, &mel_shape, &want_mel);
    let dist = vae.encode(&mut g, x).unwrap();
    g.output(dist.mean).unwrap();
    g.output(dist.logvar).unwrap();
    let mut exe = g.build().unwrap();
    exe.run().unwrap();
    let mean = exe.read(dist.mean).unwrap();
    let std = latent_std(&exe.read(dist.logvar).unwrap());
    let want = |name| f64s(&goldens.f32_any(name).unwrap().1);
    assert_close(
        "full vae encode (mean)",
        &mean,
        &want("vae_encoded_mean"),
        TOL,
    );
    assert_close("full vae encode (std)", &std, &want("vae_encoded_std"), TOL);
}

// ---- loading errors, on modified copies of the fixture ----

fn load_error(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unmodified_copy_loads() {
    let dir = modified_copy(&fixture("tiny/vae"), "unmodified", |_| {}, |_| {});
    let vae = load(&dir).expect("an unmodified copy loads");
    let got = decode(&vae, "decode (copy)");
    assert_close("vae decode (copy)", &got, &f64s(&golden("vae_mel").1), TOL);
}

#[test]
fn missing_tensor_is_named() {
    let name = "decoder.up_blocks.1.resnets.2.conv2.weight";
    let dir = modified_copy(
        &fixture("tiny/vae"),
        "missing_tensor",
        |t| {
            t.remove(name).expect("fixture has the tensor");
        },
        |_| {},
    );
    let err = load_error(&dir);
    println!("missing tensor: {err}");
    assert!(err.contains(name) && err.contains("missing"), "{err}");
}

#[test]
fn missing_attention_tensor_is_named() {
    let name = "encoder.mid_block.attentions.0.to_v.bias";
    let dir = modified_copy(
        &fixture("tiny/vae"),
        "missing_attention_tensor",
        |t| {
            t.remove(name).expect("fixture has the tensor");
        },
        |_| {},
    );
    let err = load_error(&dir);
    println!("missing attention tensor: {err}");
    assert!(err.contains(name), "{err}");
}

#[test]
fn wrong_shape_is_named() {
    let name = "encoder.down_blocks.0.downsamplers.0.conv.weight";
    let dir = modified_copy(
        &fixture("tiny/vae"),
        "wrong_shape",
        |t| {
            // [16, 16, 3, 3] stored as [16, 16, 9, 1]: same bytes, wrong shape.
            let entry = t.get_mut(name).expect("fixture has the tensor");
            assert_eq!(entry.1, [16, 16, 3, 3]);
            entry.1 = vec![16, 16, 9, 1];
        },
        |_| {},
    );
    let err = load_error(&dir);
    println!("wrong shape: {err}");
    assert!(
        err.contains(name) && err.contains("[16, 16, 9, 1]") && err.contains("[16, 16, 3, 3]"),
        "{err}"
    );
}

#[test]
fn missing_config_key_is_an_error() {
    let dir = modified_copy(
        &fixture("tiny/vae"),
        "missing_config_key",
        |_| {},
        |c| {
            c.remove("block_out_channels");
        },
    );
    let err = load_error(&dir);
    println!("missing config key: {err}");
    assert!(
        err.contains("block_out_channels") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn unsupported_config_is_an_error() {
    let dir = modified_copy(
        &fixture("tiny/vae"),
        "unsupported_config",
        |_| {},
        |c| {
            c.insert("act_fn".into(), "gelu".into());
        },
    );
    let err = load_error(&dir);
    println!("unsupported act_fn: {err}");
    assert!(err.contains("act_fn") && err.contains("gelu"), "{err}");
}

/// Keys diffusers defaults may be absent; the tiny config sets only the defaults' values for
/// these, so the model is unchanged.
#[test]
fn optional_config_keys_default() {
    let dir = modified_copy(
        &fixture("tiny/vae"),
        "optional_keys",
        |_| {},
        |c| {
            for key in [
                "act_fn",
                "sample_size",
                "use_quant_conv",
                "use_post_quant_conv",
                "mid_block_add_attention",
                "force_upcast",
                "shift_factor",
                "latents_mean",
                "latents_std",
                "_class_name",
                "_diffusers_version",
            ] {
                c.remove(key);
            }
            c.insert("some_future_key".into(), 42.into());
        },
    );
    let vae = load(&dir).expect("defaults apply");
    assert_eq!(vae.config.act_fn, "silu");
    assert!(vae.config.use_quant_conv && vae.config.mid_block_add_attention);
    // serde_json without `float_roundtrip` may parse a float 1 ulp (f64) off.
    assert!((vae.config.scaling_factor - 0.9392935633659363).abs() < 1e-12);
}
