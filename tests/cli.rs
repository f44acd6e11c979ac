//! The command line's edit commands on the tiny fixture model: the WAV they write, its comment,
//! `--dump`, and the errors that must come before any model work.

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
