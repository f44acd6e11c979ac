//! Audio-to-audio against `scripts/reference/make_edit_reference.py` on the tiny random model:
//! the input front end, and style transfer, inpainting, super-resolution and continuation with
//! eta 0 and eta 1 (source latents, final latents, mel, waveform, mask), on the GPU (lavapipe here)
//! and on the CPU backend; then bad input and cancellation (on `model_ctx()`).

mod common;

use common::clips;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use audioldm::Error;
use audioldm::audio::Audio;
use audioldm::audio::decode::decode_file;
use audioldm::audio::mel::MelFrontEnd;
use audioldm::audio::resample::resample;
use audioldm::checkpoint::Checkpoint;
use audioldm::engine::Context;
use audioldm::model::nn::Precision;
use audioldm::pipeline::edit::{EditRequest, Mode};
use audioldm::pipeline::{Event, Output, Pipeline, Request, SchedulerKind};
use common::*;

const PROMPT: &str = "a dog barking in the rain, then thunder!";
const NEGATIVE: &str = "low quality, noisy, distorted, muffled, clipping, hum, static, silence, wind, crowd talking, music";
const SEED: u32 = 7;
const STEPS: usize = 4;
/// The tiny vocoder's mel width (`model_in_dim`).
const BANDS: usize = 32;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tiny_goldens() -> Checkpoint {
    Checkpoint::open(&fixtures().join("tiny-edit-goldens.safetensors")).expect("edit goldens")
}

fn golden(name: &str) -> Vec<f32> {
    tiny_goldens().f32_any(name).expect(name).1
}

fn pipeline_on(ctx: &Context) -> Pipeline {
    Pipeline::load(ctx, &fixtures().join("tiny"), Precision::default())
        .expect("load the tiny model")
}

fn pipeline() -> Pipeline {
    pipeline_on(model_ctx())
}

fn clip16() -> Audio {
    decode_file(&fixtures().join("clips/chirp-16k.wav"), 60.0).expect("decode the 16 kHz clip")
}

/// The 8 kHz clip at 16 kHz as the reference resampled it (scipy's `resample_poly`).
fn clip8_as_16k() -> Audio {
    Audio {
        sample_rate: 16_000,
        samples: golden("clip8_16k"),
    }
}

fn edit(source: Audio, mode: Mode, eta: f32) -> EditRequest {
    edit_with_steps(source, mode, eta, STEPS)
}

fn edit_with_steps(source: Audio, mode: Mode, eta: f32, steps: usize) -> EditRequest {
    EditRequest {
        request: Request {
            prompt: PROMPT.into(),
            negative_prompt: Some(NEGATIVE.into()),
            steps,
            guidance_scale: 2.5,
            duration_s: None,
            seed: SEED,
            eta,
            init_latents: None,
            conditioning: None,
            scheduler: SchedulerKind::Ddim,
        },
        source,
        source_name: "chirp.wav".into(),
        mode,
    }
}

/// The reference's cases: golden prefix, source, mode.
fn cases() -> Vec<(&'static str, Audio, Mode)> {
    vec![
        ("transfer", clip16(), Mode::StyleTransfer { strength: 0.5 }),
        (
            "transfer_full",
            clip16(),
            Mode::StyleTransfer { strength: 1.0 },
        ),
        (
            "inpaint",
            clip16(),
            Mode::Inpaint {
                ranges: vec![(0.1, 0.2), (0.3, 0.35)],
            },
        ),
        (
            "superres",
            clip8_as_16k(),
            Mode::SuperResolution {
                cutoff_hz: Some(4000.0),
            },
        ),
        ("extend", clip16(), Mode::Extend { seconds: 0.3 }),
    ]
}

#[test]
fn the_input_front_end_matches_the_reference() {
    let front_end = MelFrontEnd::with_bands(BANDS);
    // 0.5 s: 50 mel frames, rounded up to 52 (a multiple of the VAE's factor 4).
    for (name, audio) in [("transfer", clip16()), ("superres", clip8_as_16k())] {
        let mel = front_end
            .wav_to_fbank(&audio.samples, 52)
            .expect("front end");
        assert_eq!((mel.frames, mel.bins), (52, BANDS));
        let want = f64s(&golden(&format!("{name}_eta0_fbank")));
        println!(
            "{name} fbank: max abs err {:.3e}",
            max_abs_err(&mel.data, &want)
        );
        assert_close(&format!("{name} fbank"), &mel.data, &want, 1e-4);
    }
}

#[test]
fn our_resampler_agrees_with_the_reference_resampler() {
    let clip8 = decode_file(&fixtures().join("clips/chirp-8k.wav"), 60.0).expect("decode 8 kHz");
    assert_eq!(clip8.sample_rate, 8000);
    let ours = resample(&clip8.samples, 8000, 16_000).expect("resample");
    let theirs = golden("clip8_16k");
    assert_eq!(ours.len(), theirs.len());
    // Two different band-limited interpolators (rubato's FFT resampler and scipy's polyphase
    // filter) on a chirp reaching 3.5 kHz of a 4 kHz band: close, not equal. Parity runs on the
    // reference's samples; this bounds what the resampler changes.
    let interior = 64..ours.len() - 64;
    let err = max_rel_err(&ours[interior.clone()], &f64s(&theirs[interior.clone()]));
    // What the model sees: the log-mel of each.
    let front_end = MelFrontEnd::with_bands(BANDS);
    let mel_ours = front_end.wav_to_fbank(&ours, 52).unwrap();
    let mel_theirs = golden("superres_eta0_fbank");
    // Per band: the mean |difference| of the log-mels, and each one's mean level.
    let upper = audioldm::audio::mel::mel_band_upper_edges(BANDS, 0.0, 8000.0);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mut worst_below, mut leak) = (0.0f64, f64::NEG_INFINITY);
    for (band, &top) in upper.iter().enumerate() {
        let column = |m: &[f32]| -> Vec<f64> {
            m.iter()
                .skip(band)
                .step_by(BANDS)
                .map(|&v| v as f64)
                .collect()
        };
        let (a, b) = (column(&mel_ours.data), column(&mel_theirs));
        let diff: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).collect();
        if top <= 3500.0 {
            worst_below = worst_below.max(mean(&diff));
        } else if top >= 5000.0 {
            // Above the 8 kHz file's band there is only what a resampler leaks (images).
            leak = leak.max(mean(&a) - mean(&b));
        }
    }
    println!(
        "8 -> 16 kHz, rubato vs scipy resample_poly: max rel err {err:.3e} (64 samples from the \
         ends); log-mel below 3.5 kHz: mean abs diff per band <= {worst_below:.3e}; above 5 kHz \
         ours minus theirs <= {leak:.2} (negative: rubato leaks less)"
    );
    assert!(worst_below < 0.02, "{worst_below}");
    assert!(leak < 0.0, "{leak}");
    assert!(err < 0.06, "{err}");
}

/// Runs one reference case and compares every output with `goldens` (`{name}_eta{eta}_*`).
fn check_case(p: &Pipeline, goldens: &Checkpoint, request: EditRequest, name: &str) -> Output {
    let eta = request.request.eta;
    let backend = if p.context().is_cpu() { "cpu" } else { "gpu" };
    let label = format!("{backend}: {name} eta {eta}");
    let prefix = format!("{name}_eta{eta}_");
    let golden = |key: &str| goldens.f32_any(key).expect(key).1;
    let mut steps = Vec::new();
    let out = p
        .edit(&request, &AtomicBool::new(false), |event| {
            if let Event::Step { i, n, preview } = event {
                assert_eq!(preview.frames * preview.bins, preview.data.len());
                steps.push((i, n));
            }
        })
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let n = goldens
        .i64_any(&format!("{prefix}timesteps"))
        .expect("timesteps")
        .1
        .len();
    assert_eq!(steps.last(), Some(&(n, n)), "{label}: steps {steps:?}");
    let want = |key: &str| f64s(&golden(&format!("{prefix}{key}")));
    assert_close(
        &format!("{label} text_embeds"),
        &out.text_embeds,
        &want("text_embeds"),
        1e-4,
    );
    assert_close(
        &format!("{label} source latents"),
        &out.source_latents,
        &want("source_latents"),
        1e-3,
    );
    assert_close(
        &format!("{label} final latents"),
        &out.latents,
        &want("latents"),
        1e-3,
    );
    assert_close(&format!("{label} mel"), &out.mel.data, &want("mel"), 1e-3);
    let wave = want("waveform");
    assert_eq!(out.audio.samples.len(), wave.len(), "{label}: length");
    assert_close(
        &format!("{label} waveform"),
        &out.audio.samples,
        &wave,
        1e-3,
    );
    match out.mask.as_ref() {
        Some(mask) => assert_eq!(mask, &golden(&format!("{prefix}mask")), "{label}: mask"),
        None => assert!(name.starts_with("transfer"), "{label}: no mask"),
    }
    out
}

#[test]
fn every_mode_matches_the_reference_with_eta_0_and_1_on_the_gpu() {
    every_mode_matches_the_reference_with_eta_0_and_1(ctx());
}

#[test]
fn every_mode_matches_the_reference_with_eta_0_and_1_on_the_cpu() {
    every_mode_matches_the_reference_with_eta_0_and_1(cpu_ctx());
}

fn every_mode_matches_the_reference_with_eta_0_and_1(ctx: &Context) {
    let p = pipeline_on(ctx);
    for (name, source, mode) in cases() {
        for eta in [0.0, 1.0] {
            let request = edit(source.clone(), mode.clone(), eta);
            let out = check_case(&p, &tiny_goldens(), request, name);
            match name {
                // 0.5 s: 8000 samples, 13 latent frames; extended by 0.3 s: 12800 and 20.
                "extend" => {
                    assert_eq!(out.audio.samples.len(), 12_800);
                    assert_eq!(out.latent_shape, [1, 8, 20, 8]);
                    assert_eq!(out.source_latent_shape, [1, 8, 13, 8]);
                }
                _ => {
                    assert_eq!(out.audio.samples.len(), 8000);
                    assert_eq!(out.latent_shape, [1, 8, 13, 8]);
                }
            }
        }
    }
}

#[test]
fn masks_follow_the_ranges_and_the_cutoff() {
    let p = pipeline();
    let cancel = AtomicBool::new(false);
    // Inpainting 0.1-0.2 s: mel frames 10..19 -> latent frames 2..4 regenerated.
    let out = p
        .edit(
            &edit(
                clip16(),
                Mode::Inpaint {
                    ranges: vec![(0.1, 0.2)],
                },
                0.0,
            ),
            &cancel,
            |_| {},
        )
        .unwrap();
    let mask = out.mask.unwrap();
    let frames: Vec<f32> = mask.chunks(8).map(|row| row[0]).collect();
    let mut want = vec![1.0; 13];
    want[2..5].fill(0.0);
    assert_eq!(frames, want);
    // The kept cells are the clip's own latents.
    for (k, (&got, &src)) in out.latents.iter().zip(&out.source_latents).enumerate() {
        if mask[k % mask.len()] == 1.0 {
            assert_eq!(got, src, "kept cell {k}");
        }
    }
    // Super-resolution of an 8 kHz file keeps 0-4 kHz by default: with 32 bands, latent bands
    // whose top mel band ends at or below 4 kHz.
    let out = p
        .edit(
            &edit(
                Audio {
                    sample_rate: 8000,
                    samples: resample(&clip16().samples, 16_000, 8000).unwrap(),
                },
                Mode::SuperResolution { cutoff_hz: None },
                0.0,
            ),
            &cancel,
            |_| {},
        )
        .unwrap();
    let mask = out.mask.unwrap();
    let upper = audioldm::audio::mel::mel_band_upper_edges(BANDS, 0.0, 8000.0);
    for j in 0..8 {
        let kept = upper[4 * j + 3] <= 4000.0;
        assert_eq!(mask[j] == 1.0, kept, "band {j}");
    }
    assert!(mask[0] == 1.0 && mask[7] == 0.0, "{:?}", &mask[..8]);
}

#[test]
fn the_known_region_shows_from_the_first_preview_and_the_seed_decides() {
    let p = pipeline();
    let cancel = AtomicBool::new(false);
    let request = edit(
        clip16(),
        Mode::Inpaint {
            ranges: vec![(0.2, 0.3)],
        },
        1.0,
    );
    let mut first = None;
    let a = p
        .edit(&request, &cancel, |event| {
            if let Event::Step { i: 0, preview, .. } = event {
                first = Some(preview);
            }
        })
        .unwrap();
    let first = first.expect("a preview before the first step");
    assert_eq!((first.frames, first.bins), (52, 32));
    let b = p.edit(&request, &cancel, |_| {}).unwrap();
    assert_eq!(a.audio.samples, b.audio.samples, "same seed, same clip");
    let mut other = request.clone();
    other.request.seed += 1;
    let c = p.edit(&other, &cancel, |_| {}).unwrap();
    assert_ne!(a.audio.samples, c.audio.samples);
    // The text-to-audio step graph serves edits of the same shape and back.
    let text = Request {
        duration_s: Some(0.5),
        ..request.request.clone()
    };
    p.generate(&text, &cancel, |_| {}).unwrap();
    let again = p.edit(&request, &cancel, |_| {}).unwrap();
    assert_eq!(a.audio.samples, again.audio.samples);
}

/// Every mode, with parameters that suit a 0.5 s clip.
fn modes() -> [Mode; 4] {
    [
        Mode::StyleTransfer { strength: 0.5 },
        Mode::Inpaint {
            ranges: vec![(0.1, 0.2)],
        },
        Mode::SuperResolution {
            cutoff_hz: Some(4000.0),
        },
        Mode::Extend { seconds: 0.3 },
    ]
}

/// Dither alone is refused by every mode with the one message every input clip gets (variations
/// and CLAP scores give it too), before any GPU work; a quiet clip (-70 dBFS) is edited.
#[test]
fn every_edit_refuses_dither_with_the_one_silence_message() {
    let p = pipeline();
    let source = Audio {
        sample_rate: 16_000,
        samples: clips::dither()[..8000].to_vec(),
    };
    let expected = Error::Silent {
        clip: "chirp.wav".into(),
        peak_dbfs: audioldm::audio::peak_dbfs(&source.samples),
    }
    .to_string();
    assert!(expected.contains("below the -80 dBFS"), "{expected}");
    // The chirp scaled to peak -70 dBFS.
    let chirp = clip16();
    let gain = 10f64.powf((-70.0 - audioldm::audio::peak_dbfs(&chirp.samples)) / 20.0) as f32;
    let quiet = Audio {
        samples: chirp.samples.iter().map(|s| s * gain).collect(),
        ..chirp
    };
    let quiet_peak = audioldm::audio::peak_dbfs(&quiet.samples);
    assert!((-70.01..-69.99).contains(&quiet_peak), "{quiet_peak}");
    for mode in modes() {
        let request = edit(source.clone(), mode.clone(), 0.0);
        let err = request.check().unwrap_err();
        assert!(matches!(err, Error::Silent { .. }), "{mode:?}: {err:?}");
        assert_eq!(err.to_string(), expected, "{mode:?}");
        assert_eq!(edit_error(&p, &request), expected, "{mode:?}");
        edit(quiet.clone(), mode.clone(), 0.0)
            .check()
            .unwrap_or_else(|e| panic!("{mode:?}: a -70 dBFS clip is refused: {e}"));
    }
    let made = p
        .edit(
            &edit(quiet, Mode::StyleTransfer { strength: 0.5 }, 0.0),
            &AtomicBool::new(false),
            |_| {},
        )
        .expect("a -70 dBFS clip is edited");
    assert!(made.audio.samples.iter().all(|s| s.is_finite()));
}

fn edit_error(p: &Pipeline, request: &EditRequest) -> String {
    let err = p
        .edit(request, &AtomicBool::new(false), |_| {})
        .expect_err("must be refused");
    err.to_string()
}

#[test]
fn bad_clips_and_parameters_are_clear_errors() {
    let p = pipeline();
    let transfer = Mode::StyleTransfer { strength: 0.5 };
    let silent = Audio {
        sample_rate: 16_000,
        samples: vec![0.0; 8000],
    };
    let err = edit_error(&p, &edit(silent, transfer.clone(), 0.0));
    assert!(err.contains("chirp.wav is silent"), "{err}");
    let empty = Audio {
        sample_rate: 16_000,
        samples: Vec::new(),
    };
    let err = edit_error(&p, &edit(empty, transfer.clone(), 0.0));
    assert!(err.contains("no audio"), "{err}");
    let long = Audio {
        sample_rate: 8000,
        samples: vec![0.1; 8000 * 61],
    };
    let err = edit_error(&p, &edit(long, transfer.clone(), 0.0));
    assert!(
        err.contains("61.00 s") && err.contains("at most 60 s"),
        "{err}"
    );
    let short = Audio {
        sample_rate: 16_000,
        samples: vec![0.1; 300],
    };
    let err = edit_error(&p, &edit(short, transfer, 0.0));
    assert!(err.contains("at least"), "{err}");

    for (strength, words) in [
        (0.0, "above 0"),
        (-0.5, "above 0"),
        (1.5, "at most 1"),
        (f32::NAN, "above 0"),
        (0.1, "no denoising step"),
    ] {
        let err = edit_error(&p, &edit(clip16(), Mode::StyleTransfer { strength }, 0.0));
        assert!(err.contains(words), "strength {strength}: {err}");
    }

    for (ranges, words) in [
        (vec![], "at least one"),
        (vec![(0.2, 0.6)], "outside the clip"),
        (vec![(-0.1, 0.2)], "outside the clip"),
        (vec![(0.2, 0.2)], "empty"),
        (vec![(0.3, 0.2)], "reversed"),
        (vec![(0.1, 0.3), (0.25, 0.4)], "overlap"),
        (vec![(0.101, 0.105)], "no mel frame"),
        (vec![(f64::NAN, 0.2)], "not a pair"),
    ] {
        let err = edit_error(
            &p,
            &edit(
                clip16(),
                Mode::Inpaint {
                    ranges: ranges.clone(),
                },
                0.0,
            ),
        );
        assert!(err.contains(words), "{ranges:?}: {err}");
    }

    for (cutoff, words) in [
        (Some(8000.0), "between 0 and 8000"),
        (Some(12_000.0), "between 0 and 8000"),
        (Some(0.0), "between 0 and 8000"),
        (Some(50.0), "keeps nothing"),
        (None, "recorded at 16000 Hz"),
    ] {
        let err = edit_error(
            &p,
            &edit(clip16(), Mode::SuperResolution { cutoff_hz: cutoff }, 0.0),
        );
        assert!(err.contains(words), "{cutoff:?}: {err}");
    }

    for (seconds, words) in [
        (60.0, "at most 60"),
        (0.0, "positive"),
        (-1.0, "positive"),
        (f64::INFINITY, "positive"),
    ] {
        let err = edit_error(&p, &edit(clip16(), Mode::Extend { seconds }, 0.0));
        assert!(err.contains(words), "{seconds}: {err}");
    }

    let mut with_duration = edit(clip16(), Mode::Extend { seconds: 1.0 }, 0.0);
    with_duration.request.duration_s = Some(1.0);
    let err = edit_error(&p, &with_duration);
    assert!(err.contains("source clip"), "{err}");
}

#[test]
fn cancelling_stops_during_encoding_and_during_denoising() {
    let p = pipeline();
    let request = edit(clip16(), Mode::StyleTransfer { strength: 1.0 }, 0.0);
    // Set before the call: the front end runs, then the edit stops before the VAE encoder.
    let cancel = AtomicBool::new(true);
    let mut events = 0;
    let err = p.edit(&request, &cancel, |_| events += 1).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(events, 0);

    // At the preview of the encoded clip (inpainting), before any step.
    let request = edit(
        clip16(),
        Mode::Inpaint {
            ranges: vec![(0.0, 0.1)],
        },
        0.0,
    );
    for stop_at in [0, 2] {
        let cancel = AtomicBool::new(false);
        let mut seen = Vec::new();
        let err = p
            .edit(&request, &cancel, |event| {
                if let Event::Step { i, .. } = event {
                    seen.push(i);
                    if i == stop_at {
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
            })
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert_eq!(seen, (0..=stop_at).collect::<Vec<_>>());
    }
}

#[test]
fn settings_name_the_mode_its_parameters_and_the_source() {
    let request = edit(
        clip16(),
        Mode::Inpaint {
            ranges: vec![(0.1, 0.2)],
        },
        1.0,
    );
    let text = request.describe("tests/fixtures/tiny");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["mode"], "inpainting");
    assert_eq!(json["mode_parameters"]["ranges_s"][0][1], 0.2);
    assert_eq!(json["source"], "chirp.wav");
    assert_eq!(json["eta"], 1.0);
    assert_eq!(json["duration_s"], 0.5);
}

/// The same on the full-size random s-full-v2 (`make_reference.py --full`, then
/// `make_edit_reference.py --full`): 10 steps, eta 0.
#[test]
#[ignore = "needs the full-size reference from make_reference.py --full and make_edit_reference.py --full"]
fn full_size_edits_match_the_reference() {
    let (dir, _) = full_reference();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let goldens = Checkpoint::open(&dir.with_file_name(format!("{name}-edit-goldens.safetensors")))
        .expect("run scripts/reference/make_edit_reference.py --full");
    let p =
        Pipeline::load(model_ctx(), &dir, Precision::default()).expect("load the full-size model");
    let clip8 = Audio {
        sample_rate: 16_000,
        samples: goldens.f32_any("clip8_16k").unwrap().1,
    };
    for (name, source, mode) in [
        ("transfer", clip16(), Mode::StyleTransfer { strength: 0.5 }),
        (
            "inpaint",
            clip16(),
            Mode::Inpaint {
                ranges: vec![(0.1, 0.25)],
            },
        ),
        (
            "superres",
            clip8,
            Mode::SuperResolution {
                cutoff_hz: Some(4000.0),
            },
        ),
        ("extend", clip16(), Mode::Extend { seconds: 0.5 }),
    ] {
        check_case(&p, &goldens, edit_with_steps(source, mode, 0.0, 10), name);
    }
}
