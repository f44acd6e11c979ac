//! CLAP's audio front end against transformers' `ClapFeatureExtractor` on the clips and
//! settings of `scripts/reference/make_clap_reference.py` (`tests/fixtures/tiny-clap/`,
//! `tests/fixtures/tiny-clap-goldens.safetensors`).

mod common;

use std::path::{Path, PathBuf};

use audioldm::audio::clap_features::{ClapFeatureConfig, ClapFeatureExtractor};
use audioldm::checkpoint::Checkpoint;
use common::max_rel_err;

/// The seed the reference draws the long clip's crop with (`crop_seed` in the goldens' metadata).
const CROP_SEED: u32 = 1234;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn goldens() -> Checkpoint {
    Checkpoint::open(&fixtures().join("tiny-clap-goldens.safetensors")).expect("goldens")
}

/// A clip stored as 16-bit PCM, as the extractor saw it: `int16 / 32768`.
fn clip(name: &str) -> Vec<f32> {
    let (_, pcm) = goldens().i64_any(name).expect(name);
    pcm.into_iter().map(|v| v as f32 / 32768.0).collect()
}

fn extractor() -> ClapFeatureExtractor {
    let config =
        ClapFeatureConfig::from_file(&fixtures().join("tiny-clap/preprocessor_config.json"))
            .expect("preprocessor_config.json");
    ClapFeatureExtractor::new(config).expect("the front end")
}

fn as_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

#[test]
fn front_end_matches_transformers_on_a_short_clip() {
    let features = extractor()
        .features(&clip("clip_48k"), CROP_SEED)
        .expect("features");
    let (shape, want) = goldens().f32_any("features_short").expect("features_short");
    assert_eq!(shape, [1, 1, 1001, 64]);
    assert_eq!((features.frames, features.bands), (1001, 64));
    assert!(!features.is_longer);
    let err = max_rel_err(&features.data, &as_f64(&want));
    println!("front end, 2.3 s clip repeat-padded to 10 s: max rel err {err:.3e}");
    assert!(err <= 1e-4, "max rel err {err:e}");
}

#[test]
fn front_end_crops_a_long_clip_where_numpy_does() {
    let goldens = goldens();
    let features = extractor()
        .features(&clip("clip_long_48k"), CROP_SEED)
        .expect("features");
    let (_, crop) = goldens.i64_any("clip_long_crop_start").expect("crop start");
    assert!(features.is_longer);
    assert_eq!(features.crop_start as i64, crop[0], "the crop offset");
    let (_, want) = goldens.f32_any("features_long").expect("features_long");
    let err = max_rel_err(&features.data, &as_f64(&want));
    println!(
        "front end, 10.5 s clip cropped at {}: max rel err {err:.3e}",
        crop[0]
    );
    assert!(err <= 1e-4, "max rel err {err:e}");
}

#[test]
fn front_end_refuses_what_it_cannot_embed() {
    let front_end = extractor();
    let empty = front_end.features(&[], 0).unwrap_err().to_string();
    assert!(empty.contains("too short"), "{empty}");
    // Under one frame (a hop of 480 samples at 48 kHz) is too short; one frame is a clip,
    // repeated to fill the window.
    let short = front_end.features(&[0.5; 479], 0).unwrap_err().to_string();
    assert!(
        short.contains("479 samples") && short.contains("10 ms"),
        "{short}"
    );
    let mut with_nan = vec![0.1; 600];
    with_nan[300] = f32::NAN;
    let nan = front_end.features(&with_nan, 0).unwrap_err().to_string();
    assert!(nan.contains("non-finite"), "{nan}");
    let one = front_end.features(&[0.5; 480], 0).expect("one frame");
    assert_eq!(one.frames, 1001);
    assert!(one.data.iter().all(|v| v.is_finite()));

    let dir = std::env::temp_dir().join(format!("audioldm-clap-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("preprocessor_config.json");
    for (text, expected) in [
        (r#"{"truncation": "fusion"}"#, "fusion"),
        (
            r#"{"truncation": "rand_trunc", "hop_length": 0}"#,
            "hop_length",
        ),
        (
            r#"{"truncation": "rand_trunc", "frequency_max": 30000}"#,
            "mel range",
        ),
        (
            r#"{"truncation": "rand_trunc", "padding": "mirror"}"#,
            "mirror",
        ),
        ("[1, 2]", "not a CLAP feature extractor config"),
    ] {
        std::fs::write(&config, text).unwrap();
        let err = ClapFeatureConfig::from_file(&config)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{text}: {err}");
        assert!(err.contains("preprocessor_config.json"), "{text}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bicubic_resize_keeps_the_ends_and_sums_to_one() {
    use audioldm::model::clap_audio::bicubic_resize_matrix;
    let m = bicubic_resize_matrix(1001, 1024);
    for row in m.chunks_exact(1001) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    }
    // align_corners: the first and last output frames are the input's.
    assert_eq!(m[0], 1.0);
    assert_eq!(m[1023 * 1001 + 1000], 1.0);
}

/// The `audio_config` of the `ClapModel` in `dir`.
fn audio_config(dir: &Path) -> audioldm::model::clap_audio::ClapAudioConfig {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(config["audio_config"].clone()).expect("audio_config")
}

fn tiny_audio_config() -> audioldm::model::clap_audio::ClapAudioConfig {
    audio_config(&fixtures().join("tiny-clap"))
}

/// The audio tower of the `ClapModel` in `dir`, in f32.
fn audio_model(dir: &Path) -> audioldm::model::clap_audio::ClapAudioModel {
    audio_model_in(dir, audioldm::model::nn::Precision::default())
}

fn audio_model_in(
    dir: &Path,
    precision: audioldm::model::nn::Precision,
) -> audioldm::model::clap_audio::ClapAudioModel {
    use audioldm::model::nn::Loader;
    let ckpt = Checkpoint::open(&dir.join("model.safetensors")).expect("model");
    let loader = Loader {
        ctx: common::model_ctx(),
        precision,
    };
    pollster::block_on(
        audioldm::model::clap_audio::ClapAudioModel::from_checkpoint(
            &loader,
            audio_config(dir),
            &ckpt,
            1001,
        ),
    )
    .expect("load the CLAP audio tower")
}

fn tiny_audio_model() -> audioldm::model::clap_audio::ClapAudioModel {
    audio_model(&fixtures().join("tiny-clap"))
}

/// Runs the tower of `model` on `goldens`' `features_short` and checks every stage the goldens
/// hold within `tolerance`; returns how many were checked and the worst error.
fn check_stages(
    model: &audioldm::model::clap_audio::ClapAudioModel,
    goldens: &Checkpoint,
    tolerance: f64,
) -> (usize, f64) {
    use audioldm::engine::{DType, Graph, Tensor};
    use audioldm::model::clap_audio::Taps;
    let ctx = common::model_ctx();
    let (_, features) = goldens.f32_any("features_short").unwrap();
    let input = Tensor::from_f32(ctx, [1, 1001, 64], DType::F32, &features).unwrap();
    let mut g = Graph::new(ctx);
    let x = g.input(&input);
    let mut taps = Taps::default();
    let embeds = model.forward(&mut g, x, &mut taps).expect("record");
    let normalised = g.l2_normalize(embeds, 1e-12).unwrap();
    taps.0.push(("audio_embeds".into(), normalised));
    for (_, var) in &taps.0 {
        g.output(*var).unwrap();
    }
    let mut exe = g.build().expect("build");
    exe.run().expect("run");
    let mut checked = 0;
    let mut worst = 0.0f64;
    for (name, var) in &taps.0 {
        if !goldens.contains(name) {
            continue;
        }
        let got = exe.read(*var).unwrap();
        let (_, want) = goldens.f32_any(name).unwrap();
        let err = max_rel_err(&got, &as_f64(&want));
        println!("audio tower {name}: max rel err {err:.3e}");
        assert!(err <= tolerance, "{name}: max rel err {err:e}");
        worst = worst.max(err);
        checked += 1;
    }
    (checked, worst)
}

#[test]
fn audio_tower_matches_transformers_stage_by_stage() {
    let (checked, worst) = check_stages(&tiny_audio_model(), &goldens(), 1e-4);
    // Every stage's blocks and merges, the final norm, the pooling and both embeddings.
    assert!(checked >= 16, "only {checked} goldens matched a tap");
    println!("audio tower: {checked} stages checked, worst max rel err {worst:.3e}");
}

#[test]
fn audio_tower_with_f16_weights_stays_within_1e_2() {
    let f16 = audioldm::model::nn::Precision::weights_f16(true);
    let model = audio_model_in(&fixtures().join("tiny-clap"), f16);
    let (checked, worst) = check_stages(&model, &goldens(), 1e-2);
    assert!(checked >= 16);
    println!("audio tower, f16 weights: {checked} stages, worst max rel err {worst:.3e}");
}

/// The full-size random CLAP of `make_clap_reference.py --full` (HTSAT-tiny, 614 MB; not
/// committed): `AUDIOLDM_CLAP_FULL_REFERENCE`, else `target/reference/clap-full`, with its
/// goldens beside it.
#[test]
#[ignore = "needs make_clap_reference.py --full (target/reference/clap-full)"]
fn full_size_audio_tower_matches_transformers() {
    let dir = std::env::var_os("AUDIOLDM_CLAP_FULL_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/reference/clap-full")
        });
    let goldens_path = dir.with_file_name(format!(
        "{}-goldens.safetensors",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let goldens = Checkpoint::open(&goldens_path).expect("the full-size goldens");
    let config = ClapFeatureConfig::from_file(&dir.join("preprocessor_config.json")).unwrap();
    let front_end = ClapFeatureExtractor::new(config).unwrap();
    let (_, pcm) = goldens.i64_any("clip_48k").unwrap();
    let clip: Vec<f32> = pcm.into_iter().map(|v| v as f32 / 32768.0).collect();
    let features = front_end.features(&clip, CROP_SEED).unwrap();
    let (_, want) = goldens.f32_any("features_short").unwrap();
    let err = max_rel_err(&features.data, &as_f64(&want));
    println!("full-size front end: max rel err {err:.3e}");
    assert!(err <= 1e-4);
    let started = std::time::Instant::now();
    let (checked, worst) = check_stages(&audio_model(&dir), &goldens, 1e-4);
    println!(
        "full-size audio tower: {checked} stages checked, worst max rel err {worst:.3e} \
         ({:.1} s with loading)",
        started.elapsed().as_secs_f64()
    );
    assert!(checked >= 16);
}

#[test]
fn audio_tower_embeds_a_batch_as_each_clip_alone() {
    use audioldm::engine::{DType, Graph, Tensor};
    use audioldm::model::clap_audio::Taps;
    let ctx = common::model_ctx();
    let model = tiny_audio_model();
    let goldens = goldens();
    let (_, short) = goldens.f32_any("features_short").unwrap();
    let (_, long) = goldens.f32_any("features_long").unwrap();
    let both: Vec<f32> = short.iter().chain(&long).copied().collect();
    let input = Tensor::from_f32(ctx, [2, 1001, 64], DType::F32, &both).unwrap();
    let mut g = Graph::new(ctx);
    let x = g.input(&input);
    let embeds = model
        .forward(&mut g, x, &mut Taps::default())
        .expect("record");
    let normalised = g.l2_normalize(embeds, 1e-12).unwrap();
    let got = common::run(g, normalised);
    let (shape, want) = goldens.f32_any("audio_embeds_batch").unwrap();
    assert_eq!(shape, [2, 24]);
    let err = max_rel_err(&got, &as_f64(&want));
    println!("audio tower, a batch of two clips: max rel err {err:.3e}");
    assert!(err <= 1e-4, "max rel err {err:e}");
}

#[test]
fn audio_configs_the_port_cannot_run_are_refused() {
    use audioldm::model::clap_audio::{ClapAudioConfig, ClapAudioModel};
    let path = Path::new("clap/config.json");
    let good = tiny_audio_config();
    ClapAudioModel::check(&good, path).expect("the tiny config");
    ClapAudioModel::check(&ClapAudioConfig::default(), path).expect("HTSAT-tiny");
    type Change = Box<dyn Fn(&mut ClapAudioConfig)>;
    let cases: Vec<(&str, Change)> = vec![
        ("enable_fusion", Box::new(|c| c.enable_fusion = true)),
        ("as long", Box::new(|c| c.depths.push(2))),
        ("heads", Box::new(|c| c.num_attention_heads[0] = 4)),
        ("hidden_size", Box::new(|c| c.hidden_size = 64)),
        ("spec_size", Box::new(|c| c.spec_size = 250)),
        ("smaller than the window", Box::new(|c| c.window_size = 16)),
        ("hidden_act", Box::new(|c| c.hidden_act = "swish".into())),
        ("patches", Box::new(|c| c.patch_stride = vec![2, 2])),
    ];
    for (expected, change) in cases {
        let mut config = good.clone();
        change(&mut config);
        let err = ClapAudioModel::check(&config, path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(err.contains("clap/config.json"), "{err}");
    }
}

#[test]
fn clap_model_scores_clips_against_prompts_as_transformers() {
    use audioldm::audio::Audio;
    use audioldm::model::clap::{ClapModel, cosine_similarity};
    use audioldm::model::nn::{Loader, Precision};
    let ctx = common::model_ctx();
    let loader = Loader {
        ctx,
        precision: Precision::default(),
    };
    let model = ClapModel::load(&loader, &fixtures().join("tiny-clap")).expect("the tiny CLAP");
    let goldens = goldens();
    let clips: Vec<Audio> = ["clip_48k", "clip_long_48k"]
        .into_iter()
        .map(|name| Audio {
            sample_rate: 48_000,
            samples: clip(name),
        })
        .collect();
    let audio = model.embed_audio(ctx, &clips, CROP_SEED).expect("audio");
    let (_, ids) = goldens.i64_any("text_input_ids").unwrap();
    let (_, mask) = goldens.i64_any("text_attention_mask").unwrap();
    let width = ids.len() / 3;
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|p| {
            (0..width)
                .filter(|&t| mask[p * width + t] == 1)
                .map(|t| ids[p * width + t] as u32)
                .collect()
        })
        .collect();
    let text = pollster::block_on(model.embed_ids_async(ctx, &prompts)).expect("text");
    let flat = |rows: &[Vec<f32>]| rows.concat();
    for (name, got) in [
        ("audio_embeds_batch", flat(&audio)),
        ("text_embeds", flat(&text)),
    ] {
        let (_, want) = goldens.f32_any(name).unwrap();
        let err = max_rel_err(&got, &as_f64(&want));
        println!("CLAP {name}: max rel err {err:.3e}");
        assert!(err <= 1e-4, "{name}: {err:e}");
    }
    let scores: Vec<f32> = audio
        .iter()
        .flat_map(|a| text.iter().map(|t| cosine_similarity(a, t)))
        .collect();
    let (_, want) = goldens.f32_any("cosine_audio_text").unwrap();
    let worst = scores
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    println!("CLAP cosine similarities {scores:?}: max abs err {worst:.3e}");
    assert!(worst <= 1e-5, "{worst:e}");
}

#[test]
fn a_clap_model_whose_towers_disagree_is_refused() {
    use audioldm::model::clap::ClapModel;
    use audioldm::model::nn::{Loader, Precision};
    let dir = std::env::temp_dir().join(format!("audioldm-clap-towers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = fixtures().join("tiny-clap");
    for name in ["model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(source.join(name), dir.join(name)).unwrap();
    }
    let text = std::fs::read_to_string(source.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["text_config"]["projection_dim"] = 32.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let loader = Loader {
        ctx: common::model_ctx(),
        precision: Precision::default(),
    };
    let err = ClapModel::load(&loader, &dir)
        .err()
        .expect("an error")
        .to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        err.contains("projects to 32") && err.contains("24"),
        "{err}"
    );
    assert!(err.contains("config.json"), "{err}");
}
