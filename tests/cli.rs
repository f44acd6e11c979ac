//! The command line's edit commands on the tiny fixture model: the WAV they write, its comment,
//! `--dump`, and the errors that must come before any model work.

#[path = "common/clips.rs"]
mod clips;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use audioldm::audio::wav::{read_comment, read_wav};
use audioldm::checkpoint::Checkpoint;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn audioldm(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_audioldm"))
        .args(args)
        .output()
        .expect("run audioldm");
    println!(
        "audioldm {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn every_edit_command_writes_its_clip_with_its_settings() {
    let dir = scratch("edits");
    let tiny = fixtures().join("tiny");
    let chirp16 = fixtures().join("clips/chirp-16k.wav");
    let chirp8 = fixtures().join("clips/chirp-8k.wav");
    let cases: [(&str, &Path, &[&str], &str, usize); 4] = [
        (
            "transfer",
            &chirp16,
            &["--strength", "0.5"],
            "style transfer",
            8000,
        ),
        (
            "inpaint",
            &chirp16,
            &["--range", "0.1:0.2", "--range", "0.3:0.35"],
            "inpainting",
            8000,
        ),
        ("superres", &chirp8, &[], "super-resolution", 8000),
        (
            "extend",
            &chirp16,
            &["--seconds", "0.3"],
            "continuation",
            12_800,
        ),
    ];
    for (command, input, extra, mode, samples) in cases {
        let out = dir.join(format!("{command}.wav"));
        let dump = dir.join(command);
        let mut args = vec![
            command,
            path(input),
            "a dog barking",
            "--model",
            path(&tiny),
            "--steps",
            "2",
            "--seed",
            "3",
            "-o",
            path(&out),
            "--dump",
            path(&dump),
        ];
        args.extend_from_slice(extra);
        let output = audioldm(&args);
        assert!(output.status.success(), "{command}: {}", stderr(&output));
        let (wave, rate) = read_wav(&out).expect("the written clip");
        assert_eq!((wave.len(), rate), (samples, 16_000), "{command}");
        let comment = read_comment(&out).unwrap().expect("a settings comment");
        let settings: serde_json::Value = serde_json::from_str(&comment).expect("JSON settings");
        assert_eq!(settings["mode"], mode, "{comment}");
        assert_eq!(
            settings["source"],
            input.file_name().unwrap().to_str().unwrap()
        );
        assert_eq!(settings["seed"], 3);
        let dumped = Checkpoint::open(&dump.join("outputs.safetensors")).expect("the dump");
        for name in [
            "text_embeds",
            "source_latents",
            "latents",
            "mel",
            "waveform",
        ] {
            dumped
                .f32_any(name)
                .unwrap_or_else(|e| panic!("{command}: {e}"));
        }
        let mask = dumped.f32_any("mask");
        if command == "transfer" {
            assert!(mask.is_err(), "style transfer has no mask");
        } else {
            let (shape, _) = mask.expect("a mask");
            assert_eq!(shape[1], 8, "{command}: [frames, width]");
        }
    }
    // The 8 kHz file's default cutoff is 4 kHz.
    let comment = read_comment(&dir.join("superres.wav")).unwrap().unwrap();
    let settings: serde_json::Value = serde_json::from_str(&comment).unwrap();
    assert_eq!(settings["mode_parameters"]["cutoff_hz"], 4000.0);
}

#[test]
fn bad_input_fails_before_the_model_is_loaded() {
    let dir = scratch("bad");
    let chirp16 = fixtures().join("clips/chirp-16k.wav");
    // A model that does not exist: the checks below must fail before it is looked at.
    let missing_model = dir.join("no-model");
    let out = dir.join("out.wav");
    let junk = dir.join("junk.wav");
    std::fs::write(&junk, b"RIFF not really a wave file").unwrap();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--model", path(&missing_model)]);
        audioldm(&all)
    };
    let output = run(&["transfer", path(&junk), "x", "-o", path(&out)]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("junk.wav"), "{}", stderr(&output));
    let output = run(&[
        "transfer",
        path(&dir.join("missing.wav")),
        "x",
        "-o",
        path(&out),
    ]);
    assert!(
        stderr(&output).contains("missing.wav"),
        "{}",
        stderr(&output)
    );
    let unwritable = dir.join("no-such-folder").join("out.wav");
    let output = run(&[
        "extend",
        path(&chirp16),
        "x",
        "--seconds",
        "1",
        "-o",
        path(&unwritable),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no-such-folder"),
        "{}",
        stderr(&output)
    );
    let output = run(&["inpaint", path(&chirp16), "x", "--range", "0.2-0.3"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("START:END"), "{}", stderr(&output));
    // Everything else was fine, so the missing model is what stops this one.
    let output = run(&["transfer", path(&chirp16), "x", "-o", path(&out)]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("no-model"), "{}", stderr(&output));
    assert!(!out.exists(), "nothing written");
}

/// A clip of dither alone (16-bit TPDF, ±1 LSB: -90.3 dBFS, what `sox -n -r 16000 -b 16 x.wav
/// trim 0 1` writes) is refused by every command that takes a clip, with one message naming its
/// peak and the threshold, before the model is looked at; a -70 dBFS clip passes that check.
#[test]
fn every_command_that_takes_a_clip_refuses_dither_with_one_message() {
    use audioldm::audio::wav::{WavFormat, write_wav};
    let dir = scratch("dither");
    let missing_model = dir.join("no-model");
    let dither = clips::dither();
    let dithered = dir.join("dither.wav");
    write_wav(&dithered, &dither, 16_000, WavFormat::Pcm16, None).unwrap();
    let quiet = dir.join("quiet.wav");
    let tone = clips::sine_at(-70.0, 16_000);
    write_wav(&quiet, &tone, 16_000, WavFormat::Pcm16, None).unwrap();
    let decoded = audioldm::audio::decode::decode_file(&dithered, 60.0).unwrap();
    let expected = audioldm::Error::Silent {
        clip: "dither.wav".into(),
        peak_dbfs: audioldm::audio::peak_dbfs(&decoded.samples),
    }
    .to_string();
    assert!(expected.contains("-90.3 dBFS"), "{expected}");
    let commands: [&[&str]; 5] = [
        &["vary"],
        &["transfer", "rain"],
        &["inpaint", "rain", "--range", "0.1:0.2"],
        &["superres", "rain"],
        &["extend", "rain", "--seconds", "0.3"],
    ];
    for command in commands {
        for (input, silent) in [(&dithered, true), (&quiet, false)] {
            let mut args = vec![command[0], path(input)];
            args.extend_from_slice(&command[1..]);
            args.extend_from_slice(&["--model", path(&missing_model)]);
            let output = audioldm(&args);
            assert!(!output.status.success());
            let err = stderr(&output);
            if silent {
                assert!(
                    err.contains(&format!("error: {expected}\n")),
                    "{args:?}: {err}"
                );
                assert!(
                    !err.contains("no-model"),
                    "{args:?} looked at the model: {err}"
                );
            } else {
                assert!(!err.contains("is silent"), "{args:?}: {err}");
            }
        }
    }
}

/// The reference's settings and tensors for CLAP in the pipeline
/// (`scripts/reference/make_clap_pipeline_reference.py`).
fn clap_golden(name: &str) -> Vec<f32> {
    Checkpoint::open(&fixtures().join("tiny-clap-pipeline-goldens.safetensors"))
        .expect("goldens")
        .f32_any(name)
        .expect(name)
        .1
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

#[test]
fn ranked_candidates_from_the_command_line() {
    let dir = scratch("candidates");
    let out = dir.join("best.wav");
    let dump = dir.join("dump");
    let output = audioldm(&[
        "generate",
        "a dog barking in the rain, then thunder!",
        "--model",
        path(&fixtures().join("tiny")),
        "--clap",
        path(&fixtures().join("tiny-clap")),
        "--candidates",
        "3",
        "--keep-all",
        "--seed",
        "7",
        "--steps",
        "3",
        "--duration",
        "1",
        "--format",
        "f32",
        "--dump",
        path(&dump),
        "-o",
        path(&out),
    ]);
    assert!(output.status.success());
    let err = stderr(&output);
    assert!(err.contains("candidate 2 (seed 9)"), "{err}");
    let dumped = Checkpoint::open(&dump.join("outputs.safetensors")).expect("the dump");
    let (shape, scores) = dumped.f32_any("clap_scores").expect("clap_scores");
    assert_eq!(shape, [3]);
    assert_eq!(dumped.shape("clap_audio_embeds"), Some(&[3, 24][..]));
    assert_eq!(dumped.shape("clap_text_embeds"), Some(&[1, 24][..]));
    let best = (0..3)
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap();
    let (best_samples, _) = read_wav(&out).expect("the best clip");
    for (k, &want_score) in scores.iter().enumerate() {
        let kept = dir.join(format!("best-{k}.wav"));
        let (samples, rate) = read_wav(&kept).expect("a kept candidate");
        assert_eq!(rate, 16_000);
        let want = &clap_golden("candidates_waveform")[k * 16_000..(k + 1) * 16_000];
        let err = max_rel_err(&samples, want);
        assert!(err <= 1e-3, "candidate {k}: max rel err {err:e}");
        let comment = read_comment(&kept).unwrap().expect("a comment");
        let settings: serde_json::Value = serde_json::from_str(&comment).unwrap();
        assert_eq!(settings["seed"], 7 + k);
        assert_eq!(settings["candidate"], k);
        assert_eq!(settings["candidates"], 3);
        let score = settings["clap_score"].as_f64().expect("a score") as f32;
        assert_eq!(score, want_score);
        if k == best {
            assert_eq!(samples, best_samples, "the best candidate is the output");
        }
    }
    let comment = read_comment(&out).unwrap().expect("a comment");
    let settings: serde_json::Value = serde_json::from_str(&comment).unwrap();
    assert_eq!(settings["candidate"], best);
}

#[test]
fn variations_from_the_command_line() {
    let dir = scratch("vary");
    let goldens = Checkpoint::open(&fixtures().join("tiny-clap-goldens.safetensors")).unwrap();
    let (_, pcm) = goldens.i64_any("clip_48k").expect("clip_48k");
    let clip: Vec<f32> = pcm.iter().map(|&s| s as f32 / 32768.0).collect();
    let input = dir.join("clip-48k.wav");
    audioldm::audio::wav::write_wav(
        &input,
        &clip,
        48_000,
        audioldm::audio::wav::WavFormat::Float32,
        None,
    )
    .unwrap();
    let (tiny, tiny_clap) = (fixtures().join("tiny"), fixtures().join("tiny-clap"));
    for (name, extra) in [
        ("vary", &[][..]),
        (
            "vary_mix",
            &["--prompt", "birds singing at dawn", "--mix", "0.5"][..],
        ),
    ] {
        let out = dir.join(format!("{name}.wav"));
        let dump = dir.join(name);
        let mut args = vec![
            "vary",
            path(&input),
            "--model",
            path(&tiny),
            "--clap",
            path(&tiny_clap),
            "--seed",
            "7",
            "--steps",
            "3",
            "--format",
            "f32",
            "--dump",
            path(&dump),
            "-o",
            path(&out),
        ];
        args.extend_from_slice(extra);
        let output = audioldm(&args);
        assert!(output.status.success());
        let dumped = Checkpoint::open(&dump.join("outputs.safetensors")).expect("the dump");
        for (dumped_name, golden, tol) in [
            ("clap_audio_embeds", "vary_clip_embedding".to_string(), 1e-4),
            ("text_embeds", format!("{name}_text_embeds"), 1e-4),
            ("latents", format!("{name}_latents"), 1e-3),
            ("waveform", format!("{name}_waveform"), 1e-3),
        ] {
            let (_, got) = dumped.f32_any(dumped_name).expect(dumped_name);
            let err = max_rel_err(&got, &clap_golden(&golden));
            println!("{name} {dumped_name}: max rel err {err:.3e}");
            assert!(err <= tol, "{name} {dumped_name}: max rel err {err:e}");
        }
        let comment = read_comment(&out).unwrap().expect("a comment");
        let settings: serde_json::Value = serde_json::from_str(&comment).unwrap();
        assert_eq!(settings["mode"], "variation");
        assert_eq!(settings["source"], "clip-48k.wav");
        assert_eq!(settings["duration_s"], 2.3);
    }
}

#[test]
fn bad_candidates_and_variations_fail_before_the_model_is_loaded() {
    let dir = scratch("bad-clap");
    let missing_model = dir.join("no-model");
    let silent = dir.join("silent.wav");
    audioldm::audio::wav::write_wav(
        &silent,
        &[0.0; 16_000],
        16_000,
        audioldm::audio::wav::WavFormat::Pcm16,
        None,
    )
    .unwrap();
    let chirp16 = fixtures().join("clips/chirp-16k.wav");
    let refused = |args: &[&str], expected: &str| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--model", path(&missing_model)]);
        let output = audioldm(&all);
        assert!(!output.status.success());
        let err = stderr(&output);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(
            !err.contains("no-model"),
            "{args:?} looked at the model: {err}"
        );
    };
    refused(&["generate", "x", "--candidates", "0"], "between 1 and 16");
    refused(&["generate", "x", "--candidates", "17"], "between 1 and 16");
    refused(&["generate", "x", "--keep-all"], "--candidates");
    refused(
        &["vary", path(&chirp16), "--prompt", "rain", "--mix", "1.5"],
        "mix must be between 0",
    );
    refused(&["vary", path(&chirp16), "--mix", "0.2"], "--prompt");
    refused(&["vary", path(&silent)], "is silent");
    // A local model has no known companion: without --clap, ranking says what is missing.
    let output = audioldm(&[
        "generate",
        "x",
        "--candidates",
        "2",
        "--model",
        path(&fixtures().join("tiny")),
        "-o",
        path(&dir.join("out.wav")),
    ]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("--clap") && err.contains("sanchit-gandhi/clap-htsat-unfused-s-full-v2"),
        "{err}"
    );
    // A folder that is not a CLAP model.
    let output = audioldm(&[
        "vary",
        path(&chirp16),
        "--model",
        path(&fixtures().join("tiny")),
        "--clap",
        path(&fixtures().join("tiny")),
        "-o",
        path(&dir.join("out.wav")),
    ]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("not a transformers CLAP model folder"),
        "{err}"
    );
}

#[test]
fn the_scheduler_is_chosen_by_name_and_recorded() {
    let dir = scratch("scheduler");
    let out = dir.join("dpm.wav");
    let dump = dir.join("dump");
    let output = audioldm(&[
        "generate",
        "a dog barking in the rain, then thunder!",
        "--negative",
        "low quality",
        "--model",
        path(&fixtures().join("tiny")),
        "--scheduler",
        "dpm++",
        "--steps",
        "5",
        "--seed",
        "7",
        "--duration",
        "1",
        "--dump",
        path(&dump),
        "-o",
        path(&out),
    ]);
    assert!(output.status.success());
    let comment = read_comment(&out).unwrap().expect("a comment");
    let settings: serde_json::Value = serde_json::from_str(&comment).unwrap();
    assert_eq!(settings["scheduler"], "DPM-Solver++ 2M");
    let (_, latents) = Checkpoint::open(&dump.join("outputs.safetensors"))
        .unwrap()
        .f32_any("latents")
        .unwrap();
    let (_, want) = Checkpoint::open(&fixtures().join("tiny-dpm-goldens.safetensors"))
        .unwrap()
        .f32_any("leading_latents")
        .unwrap();
    let err = max_rel_err(&latents, &want);
    assert!(err <= 1e-4, "DPM-Solver++ latents: max rel err {err:e}");

    let missing_model = dir.join("no-model");
    let output = audioldm(&[
        "generate",
        "x",
        "--scheduler",
        "euler",
        "--model",
        path(&missing_model),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("ddim, dpm++"),
        "{}",
        stderr(&output)
    );
    let chirp16 = fixtures().join("clips/chirp-16k.wav");
    let output = audioldm(&[
        "transfer",
        path(&chirp16),
        "x",
        "--scheduler",
        "dpm++",
        "--model",
        path(&missing_model),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("edits run DDIM"),
        "{}",
        stderr(&output)
    );
}

/// `--device`: each backend names itself on the first line and in the WAV comment, and both make
/// the same clip; an unknown device lists the known ones; `gpu` where no adapter is found says
/// so and names `--device cpu`.
#[test]
fn the_device_is_chosen_named_and_recorded() {
    let dir = scratch("device");
    let tiny = fixtures().join("tiny");
    let mut clips = Vec::new();
    for (device, first) in [("cpu", "CPU: "), ("gpu", "GPU: ")] {
        let out = dir.join(format!("{device}.wav"));
        let output = audioldm(&[
            "generate",
            "a dog barking",
            "--model",
            path(&tiny),
            "--duration",
            "1",
            "--steps",
            "3",
            "--device",
            device,
            "-o",
            path(&out),
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stderr(&output);
        assert!(
            text.lines().next().is_some_and(|l| l.starts_with(first)),
            "{text}"
        );
        let comment = read_comment(&out).unwrap().expect("a comment");
        let settings: serde_json::Value = serde_json::from_str(&comment).unwrap();
        let backend = settings["backend"]
            .as_str()
            .expect("a backend in the comment");
        assert!(backend.starts_with(first), "{backend}");
        clips.push(read_wav(&out).expect("the written clip").0);
    }
    let err = max_rel_err(&clips[0], &clips[1]);
    assert!(err <= 1e-3, "CPU and GPU clips differ by {err:e}");

    let output = audioldm(&["generate", "x", "--device", "tpu", "--model", path(&tiny)]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("auto, gpu, cpu"),
        "{}",
        stderr(&output)
    );

    let output = Command::new(env!("CARGO_BIN_EXE_audioldm"))
        .args(["generate", "x", "--device", "gpu", "--model", path(&tiny)])
        .args(["-o", path(&dir.join("none.wav"))])
        .env("WGPU_ADAPTER_NAME", "no adapter has this name")
        .output()
        .expect("run audioldm");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--device cpu"),
        "{}",
        stderr(&output)
    );
}
