//! The vocoder (transformers `SpeechT5HifiGan`) against goldens from transformers on the tiny
//! random model (scaled so that its output is O(0.1)), `normalize_before`, and loading errors.

mod common;

use std::path::{Path, PathBuf};

use audioldm::checkpoint::Checkpoint;
use audioldm::engine::{DType, Graph, Tensor};
use audioldm::model::nn::{Loader, Precision};
use audioldm::model::vocoder::SpeechT5HifiGan;
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

fn load(dir: &Path) -> audioldm::Result<SpeechT5HifiGan> {
    SpeechT5HifiGan::load(&loader(Precision::default()), dir)
}

/// Runs `vocoder` on `mel [1, T, n]`, returns the waveform and prints the graph's cost.
fn vocode(vocoder: &SpeechT5HifiGan, shape: &[usize], mel: &[f32], label: &str) -> Vec<f32> {
    let mut g = Graph::new(model_ctx());
    let x = input(&mut g, shape, mel);
    let wav = vocoder.forward(&mut g, x).expect("record vocoder");
    let frames = shape[1];
    assert_eq!(g.dims(wav), [1, 160 * frames + 32]);
    assert_eq!(vocoder.config.output_len(frames), 160 * frames + 32);
    g.output(wav).unwrap();
    let mut exe = g.build().expect("build");
    exe.run().expect("run");
    let out = exe.read(wav).expect("read");
    let s = exe.stats();
    println!(
        "{label}: {} dispatches, {} kernels, planned {} B for intermediates (unplanned {} B, {} \
         buffers), weights {} B",
        s.dispatches, s.kernels, s.planned_bytes, s.unplanned_bytes, s.buffers, s.weight_bytes
    );
    out
}

#[test]
fn waveform_matches_transformers() {
    let vocoder = load(&fixture("tiny/vocoder")).expect("load tiny vocoder");
    assert!(!vocoder.config.normalize_before);
    let (shape, mel) = golden("vocoder_mel");
    let got = vocode(&vocoder, &shape, &mel, "vocoder");
    let (want_shape, want) = golden("vocoder_waveform");
    assert_eq!(want_shape, [1, 16032]);
    let peak = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    println!("reference waveform peak {peak:.3}");
    assert!(peak > 0.05, "the golden waveform should be O(0.1)");
    assert_close("vocoder waveform", &got, &f64s(&want), TOL);
}

#[test]
fn waveform_with_f16_weights_stays_close() {
    let precision = Precision {
        weights: DType::F16,
    };
    let vocoder = SpeechT5HifiGan::load(&loader(precision), &fixture("tiny/vocoder")).unwrap();
    let (shape, mel) = golden("vocoder_mel");
    let got = vocode(&vocoder, &shape, &mel, "vocoder (f16 weights)");
    assert_close(
        "vocoder waveform (f16 weights)",
        &got,
        &f64s(&golden("vocoder_waveform").1),
        1e-2,
    );
}

#[test]
fn rejects_wrong_mel_bins() {
    let vocoder = load(&fixture("tiny/vocoder")).unwrap();
    let mut g = Graph::new(model_ctx());
    let t = Tensor::from_f32(model_ctx(), [1, 10, 64], DType::F32, &[0.0; 640]).unwrap();
    let x = g.input(&t);
    let err = vocoder
        .forward(&mut g, x)
        .expect_err("an error")
        .to_string();
    println!("wrong mel bins: {err}");
    assert!(err.contains("32 mel bins"), "{err}");
}

/// The real vocoder config (64 mels, 1024 initial channels).
#[test]
#[ignore = "needs the output of make_reference.py --full; slow on a software adapter"]
fn full_size_matches_transformers() {
    let (dir, goldens) = full_reference();
    let vocoder = load(&dir.join("vocoder")).expect("load the full-size vocoder");
    let (shape, mel) = goldens.f32_any("vocoder_mel").unwrap();
    let start = std::time::Instant::now();
    let got = vocode(&vocoder, &shape, &mel, "full vocoder");
    println!("full vocoder: {:.1} s", start.elapsed().as_secs_f64());
    let want = goldens.f32_any("vocoder_waveform").unwrap().1;
    assert_close("full vocoder waveform", &got, &f64s(&want), TOL);
}

// ---- modified copies of the fixture ----

fn load_error(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `normalize_before: true` with random `mean` / `scale` buffers: feeding `mel * scale + mean`
/// must give the golden waveform (the model computes `(x - mean) / scale` first).
#[test]
fn normalize_before_applies_mean_and_scale() {
    let n = 32;
    let mean: Vec<f32> = random(11, n).iter().map(|v| 2.0 * v).collect();
    let scale: Vec<f32> = random(12, n).iter().map(|v| 1.5 + v).collect();
    let dir = modified_copy(
        &fixture("tiny/vocoder"),
        "normalize_before",
        |t| {
            t.get_mut("mean").unwrap().2 = f32_bytes(&mean);
            t.get_mut("scale").unwrap().2 = f32_bytes(&scale);
        },
        |c| {
            c.insert("normalize_before".into(), true.into());
        },
    );
    let vocoder = load(&dir).expect("load");
    assert!(vocoder.normalize.is_some());
    let (shape, mel) = golden("vocoder_mel");
    let raw: Vec<f32> = mel
        .iter()
        .enumerate()
        .map(|(i, &m)| m * scale[i % n] + mean[i % n])
        .collect();
    let got = vocode(&vocoder, &shape, &raw, "vocoder (normalize_before)");
    assert_close(
        "vocoder waveform (normalize_before)",
        &got,
        &f64s(&golden("vocoder_waveform").1),
        TOL,
    );
}

/// transformers' default for a missing `normalize_before` is true.
#[test]
fn optional_config_keys_default() {
    let dir = modified_copy(
        &fixture("tiny/vocoder"),
        "optional_keys",
        |_| {},
        |c| {
            for key in [
                "normalize_before",
                "leaky_relu_slope",
                "sampling_rate",
                "initializer_range",
                "architectures",
                "model_type",
            ] {
                c.remove(key);
            }
        },
    );
    let vocoder = load(&dir).expect("defaults apply");
    assert!(vocoder.config.normalize_before);
    assert_eq!(vocoder.config.leaky_relu_slope, 0.1);
    assert_eq!(vocoder.config.sampling_rate, 16000);
}

#[test]
fn missing_tensor_is_named() {
    let name = "resblocks.7.convs2.1.bias";
    let dir = modified_copy(
        &fixture("tiny/vocoder"),
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
fn wrong_shape_is_named() {
    let name = "upsampler.2.weight";
    let dir = modified_copy(
        &fixture("tiny/vocoder"),
        "wrong_shape",
        |t| {
            // ConvTranspose1d [Cin, Cout, k] = [16, 8, 8] stored as [8, 16, 8].
            let entry = t.get_mut(name).expect("fixture has the tensor");
            assert_eq!(entry.1, [16, 8, 8]);
            entry.1 = vec![8, 16, 8];
        },
        |_| {},
    );
    let err = load_error(&dir);
    println!("wrong shape: {err}");
    assert!(
        err.contains(name) && err.contains("[8, 16, 8]") && err.contains("[16, 8, 8]"),
        "{err}"
    );
}

#[test]
fn missing_config_key_is_an_error() {
    let dir = modified_copy(
        &fixture("tiny/vocoder"),
        "missing_config_key",
        |_| {},
        |c| {
            c.remove("upsample_rates");
        },
    );
    let err = load_error(&dir);
    println!("missing config key: {err}");
    assert!(
        err.contains("upsample_rates") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn inconsistent_config_is_an_error() {
    let dir = modified_copy(
        &fixture("tiny/vocoder"),
        "inconsistent_config",
        |_| {},
        |c| {
            c.insert(
                "upsample_kernel_sizes".into(),
                serde_json::json!([16, 16, 8, 4]),
            );
        },
    );
    let err = load_error(&dir);
    println!("inconsistent config: {err}");
    assert!(err.contains("upsample_kernel_sizes"), "{err}");
}
