//! The desktop app, driven through its widgets with egui_kittest on the tiny fixture model. The
//! harness renders with wgpu on the same setup the real window uses; with the Device setting at
//! `gpu` (what most tests pin) the engine runs on the renderer's device here too, with `cpu` on
//! the CPU backend (`every_mode_runs_on_the_cpu_backend_picked_in_the_settings`).
#![cfg(feature = "app")]

#[path = "common/clips.rs"]
mod clips;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use audioldm::app::worker::{Backend, choose_backend};
use audioldm::app::{AppOptions, AudioLdmApp, Phase, Severity, wgpu_setup};
use audioldm::engine::{DeviceChoice, LimitsProfile};
use audioldm::pipeline::Residency;
use eframe::egui;
use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions};

fn tiny_model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .display()
        .to_string()
}

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("audioldm-app-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The app on the renderer's device (the Device setting at `gpu`, as before the CPU backend).
fn harness(data_dir: &Path) -> Harness<'static, AudioLdmApp> {
    harness_with(AppOptions {
        data_dir: Some(data_dir.to_path_buf()),
        device: Some(DeviceChoice::Gpu),
        ..Default::default()
    })
}

/// eframe's storage, in memory: what `save` wrote is what the next start reads.
#[derive(Default, Clone)]
struct MemoryStorage(std::collections::HashMap<String, String>);

impl eframe::Storage for MemoryStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }

    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }

    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }

    fn flush(&mut self) {}
}

/// The app started again on what `storage` holds.
fn restarted(options: AppOptions, storage: MemoryStorage) -> Harness<'static, AudioLdmApp> {
    let storage: &'static MemoryStorage = Box::leak(Box::new(storage));
    Harness::builder()
        .with_size(egui::Vec2::new(1200.0, 760.0))
        .wgpu_setup(wgpu_setup(&LimitsProfile::default()))
        .build_eframe(move |cc| {
            cc.storage = Some(storage);
            AudioLdmApp::new(cc, options)
        })
}

fn harness_with(options: AppOptions) -> Harness<'static, AudioLdmApp> {
    Harness::builder()
        .with_size(egui::Vec2::new(1200.0, 760.0))
        .wgpu_setup(wgpu_setup(&LimitsProfile::default()))
        .build_eframe(move |cc| AudioLdmApp::new(cc, options))
}

/// Steps the UI until `done` holds, failing after `timeout`.
fn step_until(
    harness: &mut Harness<'static, AudioLdmApp>,
    timeout: Duration,
    what: &str,
    done: impl Fn(&AudioLdmApp) -> bool,
) {
    let start = Instant::now();
    while !done(harness.state()) {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; messages: {:?}",
            harness.state().messages()
        );
        harness.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    harness.run_steps(2);
}

/// A slider by its label (its number field carries the same label).
fn slider<'h>(
    harness: &'h Harness<'static, AudioLdmApp>,
    label: &'h str,
) -> egui_kittest::Node<'h> {
    harness.get_by_role_and_label(egui::accesskit::Role::Slider, label)
}

/// Points the model field at the tiny fixture and sets a short clip, through the widgets.
fn set_up_tiny_run(harness: &mut Harness<'static, AudioLdmApp>, steps: f64) {
    harness
        .get_by_label("Model")
        .set_text_value_accesskit(&tiny_model());
    slider(harness, "Duration (s)").set_value_accesskit(1.0);
    slider(harness, "Steps").set_value_accesskit(steps);
    harness.run();
}

#[test]
fn typing_a_prompt_and_generating_adds_a_clip_to_the_history_and_shows_its_spectrogram() {
    let dir = data_dir("generate");
    let mut harness = harness(&dir);

    harness.get_by_label("Prompt").focus();
    harness.run();
    harness
        .get_by_label("Prompt")
        .type_text("a dog barking in the rain");
    harness
        .get_by_label("Negative prompt")
        .set_text_value_accesskit("low quality");
    slider(&harness, "Guidance scale").set_value_accesskit(3.5);
    harness.get_by_label("Random seed").click();
    set_up_tiny_run(&mut harness, 3.0);
    {
        let settings = harness.state().settings();
        assert_eq!(settings.prompt, "a dog barking in the rain");
        assert_eq!(settings.negative, "low quality");
        assert_eq!(settings.guidance, 3.5);
        assert_eq!(settings.steps, 3);
        assert_eq!(settings.duration_s, 1.0);
        assert!(!settings.random_seed);
    }

    harness.get_by_label("Generate").click();
    harness.run_steps(2);
    assert!(harness.state().is_running(), "Generate started nothing");
    step_until(&mut harness, Duration::from_secs(300), "the clip", |app| {
        !app.is_running()
    });

    let app = harness.state();
    assert!(
        app.messages().iter().all(|m| m.severity != Severity::Error),
        "{:?}",
        app.messages()
    );
    let [entry] = app.history() else {
        panic!("expected one history entry, got {:?}", app.history());
    };
    assert_eq!(entry.settings.prompt, "a dog barking in the rain");
    assert_eq!(entry.settings.negative, "low quality");
    assert_eq!(entry.settings.steps, 3);
    assert_eq!(entry.settings.guidance, 3.5);
    assert_eq!(entry.settings.seed, 0);
    assert!(
        entry.wav.is_file(),
        "{} was not written",
        entry.wav.display()
    );
    let (samples, rate) = audioldm::audio::wav::read_wav(&entry.wav).expect("the clip's WAV");
    assert_eq!(rate, 16_000);
    assert_eq!(samples.len(), 16_000);
    assert!(samples.iter().all(|s| s.is_finite()) && samples.iter().any(|s| *s != 0.0));

    // The main view shows the finished clip's exact spectrogram: 1 s is 100 mel frames, of the
    // tiny vocoder's 32 bins.
    assert_eq!(app.selected(), Some(entry.id));
    let mel = app.clip_mel(entry.id).expect("the clip's spectrogram");
    assert_eq!((mel.frames, mel.bins), (100, 32));
    assert_eq!(app.shown_frames(), 100);
    // Play in the main view and in the history entry.
    assert_eq!(harness.get_all_by_label("Play").count(), 2);
    let _ = harness.get_by_label("Regenerate");

    assert_eq!(
        harness.state().loaded_residency(),
        Some(Residency::AllResident)
    );

    // The same settings again give the same clip (seed 0 was not random), also with only one
    // network at a time on the GPU: the model is loaded again for that.
    harness.get_by_label("Low GPU memory").click();
    harness.run();
    harness.get_by_label("Regenerate").click();
    harness.run_steps(2);
    assert!(
        harness.state().is_running(),
        "Regenerate started nothing: {:?}",
        harness.state().messages()
    );
    step_until(
        &mut harness,
        Duration::from_secs(300),
        "the second clip",
        |app| !app.is_running(),
    );
    assert_eq!(
        harness.state().loaded_residency(),
        Some(Residency::LowMemory)
    );
    let history = harness.state().history();
    assert_eq!(history.len(), 2);
    let (again, _) = audioldm::audio::wav::read_wav(&history[0].wav).expect("second WAV");
    assert_eq!(again, samples);

    // Settings and history survive a restart; a clip from before plays from its WAV file.
    let mut storage = MemoryStorage::default();
    eframe::App::save(harness.state_mut(), &mut storage);
    let settings = harness.state().settings().clone();
    let history = harness.state().history().to_vec();
    drop(harness);
    let mut harness = restarted(
        AppOptions {
            data_dir: Some(dir.clone()),
            ..Default::default()
        },
        storage,
    );
    assert_eq!(harness.state().settings(), &settings);
    assert_eq!(harness.state().history(), &history[..]);
    assert!(
        harness.state().low_memory(),
        "the low-memory choice was forgotten"
    );
    let oldest = history[1].id;
    assert!(harness.state().clip_mel(oldest).is_none());
    harness
        .get_all_by_label("a dog barking in the rain")
        .last()
        .expect("the oldest history entry")
        .click();
    harness.run();
    assert_eq!(harness.state().selected(), Some(oldest));
    // Read back from the WAV: the log-mel of its audio, 1 + 16000 / 160 frames of 64 bands.
    let mel = harness
        .state()
        .clip_mel(oldest)
        .expect("the clip read back");
    assert_eq!((mel.frames, mel.bins), (101, 64));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn text_typed_in_the_same_frame_as_ctrl_enter_is_part_of_the_request() {
    let dir = data_dir("same-frame");
    let mut harness = harness(&dir);
    set_up_tiny_run(&mut harness, 1.0);
    harness.get_by_label("Prompt").focus();
    harness.run();
    // Both events reach the app in one frame, as a fast typist's would (kittest's own helpers
    // give every queued event a frame of its own).
    let input = harness.input_mut();
    input
        .events
        .push(egui::Event::Text("rain on a tin roof".into()));
    input.events.push(egui::Event::Key {
        key: egui::Key::Enter,
        physical_key: None,
        pressed: true,
        repeat: false,
        modifiers: egui::Modifiers::COMMAND,
    });
    harness.step();
    assert!(harness.state().is_running(), "Ctrl+Enter started nothing");
    step_until(&mut harness, Duration::from_secs(300), "the clip", |app| {
        !app.is_running()
    });
    let history = harness.state().history();
    assert_eq!(history.len(), 1, "{:?}", harness.state().messages());
    assert_eq!(history[0].settings.prompt, "rain on a tin roof");
    // Ctrl+Enter did not put a newline into the prompt.
    assert_eq!(harness.state().settings().prompt, "rain on a tin roof");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_enter_generates_and_cancel_stops_the_run_between_steps() {
    let dir = data_dir("cancel");
    let mut harness = harness(&dir);
    harness
        .get_by_label("Prompt")
        .set_text_value_accesskit("wind");
    set_up_tiny_run(&mut harness, 200.0);
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    step_until(
        &mut harness,
        Duration::from_secs(300),
        "the first step",
        |app| matches!(app.phase(), Some(Phase::Denoising { i, .. }) if *i >= 1),
    );
    harness.get_by_label("Cancel").click();
    harness.run_steps(2);
    step_until(
        &mut harness,
        Duration::from_secs(120),
        "the cancel",
        |app| !app.is_running(),
    );
    let app = harness.state();
    assert!(app.history().is_empty(), "a cancelled run left a clip");
    assert!(
        app.messages()
            .iter()
            .any(|m| m.severity == Severity::Info && m.text.contains("cancelled")),
        "{:?}",
        app.messages()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_model_path_that_does_not_exist_shows_an_error() {
    let dir = data_dir("missing-model");
    let mut harness = harness(&dir);
    let missing = dir.join("no-such-model");
    harness
        .get_by_label("Model")
        .set_text_value_accesskit(&missing.display().to_string());
    harness.run();
    harness.get_by_label("Generate").click();
    // One frame takes the click and starts the run; only then can its end be waited for.
    harness.step();
    assert!(harness.state().is_running(), "Generate started nothing");
    step_until(
        &mut harness,
        Duration::from_secs(60),
        "the failure",
        |app| !app.is_running(),
    );
    let app = harness.state();
    let errors: Vec<_> = app
        .messages()
        .iter()
        .filter(|m| m.severity == Severity::Error)
        .collect();
    assert_eq!(errors.len(), 1, "{:?}", app.messages());
    assert!(
        errors[0].text.contains("no-such-model"),
        "the error does not name the path: {}",
        errors[0].text
    );
    assert!(app.history().is_empty());
    // The message is on screen and can be dismissed.
    let _ = harness.get_by_label_contains("Generation failed");
    harness.get_by_label("Dismiss").click();
    harness.run();
    assert!(harness.state().messages().is_empty());
}

/// A file dropped onto the window, as the native backend reports it.
#[derive(Debug)]
struct DroppedPath(PathBuf);

impl egui::DroppedFile for DroppedPath {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn dropped(path: &Path) -> egui::DroppedFileHandle {
    std::sync::Arc::new(DroppedPath(path.to_path_buf()))
}

#[test]
fn a_dropped_audio_file_becomes_the_input_clip_and_a_bad_one_is_an_error() {
    let dir = data_dir("drop");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let wav = dir.join("tone.wav");
    let tone: Vec<f32> = (0..22_050)
        .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 44_100.0).sin() * 0.5)
        .collect();
    audioldm::audio::wav::write_wav(
        &wav,
        &tone,
        44_100,
        audioldm::audio::wav::WavFormat::Pcm16,
        None,
    )
    .expect("write the tone");
    let mut harness = harness(&dir);

    harness.input_mut().hovered_files.push(egui::HoveredFile {
        path: Some(wav.clone()),
        ..Default::default()
    });
    // egui keeps repainting while files hover over the window.
    harness.run_steps(3);
    let _ = harness.get_by_label("Drop to load as the input clip");
    harness.input_mut().hovered_files.clear();
    harness.input_mut().dropped_files.push(dropped(&wav));
    harness.run();
    let input = harness.state().input_clip().expect("the dropped clip");
    assert_eq!(input.name, "tone.wav");
    assert_eq!(input.audio.sample_rate, 44_100);
    assert_eq!(input.audio.samples.len(), 22_050);
    // 0.5 s at 16 kHz: 8000 samples, 1 + 8000/160 mel frames.
    assert_eq!((input.mel.frames, input.mel.bins), (51, 64));
    let _ = harness.get_by_label("Play input");

    let bad = dir.join("not-audio.mp3");
    std::fs::write(&bad, b"this is not audio at all").expect("write junk");
    harness.input_mut().dropped_files.push(dropped(&bad));
    harness.run();
    let app = harness.state();
    assert!(
        app.messages()
            .iter()
            .any(|m| m.severity == Severity::Error && m.text.contains("not-audio.mp3")),
        "{:?}",
        app.messages()
    );
    // The good clip stays.
    assert_eq!(app.input_clip().map(|c| c.name.as_str()), Some("tone.wav"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn main_window_snapshot() {
    let dir = data_dir("snapshot");
    // A local model by its relative path, so that nothing in the window depends on where the
    // checkout is or on this machine's Hugging Face cache.
    let mut harness = harness_with(AppOptions {
        data_dir: Some(dir),
        model: Some("tests/fixtures/tiny".into()),
        // The status line names the renderer's adapter, not this machine's processor.
        device: Some(DeviceChoice::Gpu),
        ..Default::default()
    });
    harness.run();
    assert!(harness.state().messages().is_empty());
    // Fonts and anti-aliasing differ a little between Mesa versions and GPUs.
    harness.snapshot_options(
        "main_window",
        &SnapshotOptions::new()
            .threshold(2.0)
            .max_failed_pixels(2_000),
    );
}

/// A harness tall enough that the input panel's controls are on screen, on the renderer's
/// device.
fn tall_harness(data_dir: &Path) -> Harness<'static, AudioLdmApp> {
    tall_harness_with(AppOptions {
        data_dir: Some(data_dir.to_path_buf()),
        device: Some(DeviceChoice::Gpu),
        ..Default::default()
    })
}

fn tall_harness_with(options: AppOptions) -> Harness<'static, AudioLdmApp> {
    Harness::builder()
        .with_size(egui::Vec2::new(1200.0, 1400.0))
        .wgpu_setup(wgpu_setup(&LimitsProfile::default()))
        .build_eframe(move |cc| AudioLdmApp::new(cc, options))
}

fn chirp() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clips/chirp-16k.wav")
}

/// Drags across the input spectrogram from `from` to `to` (fractions of its plot's width).
fn drag_on_input_spectrogram(harness: &mut Harness<'static, AudioLdmApp>, from: f32, to: f32) {
    let rect = harness.get_by_label("Input spectrogram").rect();
    // The plot inside the view leaves room for the axes: 52 points left, 6 right.
    let x = |f: f32| rect.left() + 52.0 + f * (rect.width() - 58.0);
    let y = rect.center().y;
    harness.hover_at(egui::pos2(x(from), y));
    harness.run();
    harness.drag_at(egui::pos2(x(from), y));
    harness.run();
    for step in 1..=4 {
        let f = from + (to - from) * step as f32 / 4.0;
        harness.hover_at(egui::pos2(x(f), y));
        harness.run();
    }
    harness.drop_at(egui::pos2(x(to), y));
    harness.run();
}

#[test]
fn style_transfer_and_inpainting_through_the_widgets() {
    use audioldm::pipeline::edit::Mode;
    let dir = data_dir("edit");
    let mut harness = tall_harness(&dir);
    set_up_tiny_run(&mut harness, 2.0);
    harness.get_by_label("Prompt").focus();
    harness.run();
    harness
        .get_by_label("Prompt")
        .type_text("rain on a tin roof");
    harness.get_by_label("Random seed").click();
    harness.run();
    harness.input_mut().dropped_files.push(dropped(&chirp()));
    harness.run();
    assert_eq!(
        harness.state().input_clip().map(|c| c.name.as_str()),
        Some("chirp-16k.wav")
    );

    // Style transfer at strength 1: both steps run.
    harness.get_by_label("Style transfer").click();
    harness.run();
    slider(&harness, "Strength").set_value_accesskit(1.0);
    harness.run();
    harness.get_by_label("Generate edit").click();
    harness.step();
    assert!(harness.state().is_running());
    step_until(
        &mut harness,
        Duration::from_secs(120),
        "the style transfer",
        |app| !app.is_running(),
    );
    let app = harness.state();
    assert!(app.messages().is_empty(), "{:?}", app.messages());
    assert_eq!(app.history().len(), 1);
    let entry = &app.history()[0];
    let record = entry.edit.as_ref().expect("an edit entry");
    assert_eq!(record.mode, Mode::StyleTransfer { strength: 1.0 });
    assert_eq!(record.source_name, "chirp-16k.wav");
    assert_eq!(entry.settings.prompt, "rain on a tin roof");
    let (samples, rate) = audioldm::audio::wav::read_wav(&entry.wav).expect("the clip's WAV");
    assert_eq!(
        (samples.len(), rate),
        (8000, 16_000),
        "the clip's own length"
    );
    assert!(record.source_wav.is_file());

    // Inpainting: pick the mode, drag a range on the clip's spectrogram, generate.
    harness.get_by_label("Inpaint").click();
    harness.run();
    drag_on_input_spectrogram(&mut harness, 0.2, 0.4);
    let ranges = harness.state().input_clip().unwrap().ranges.clone();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    let (start, end) = ranges[0];
    // The view spans the clip's 51 mel frames (0.51 s).
    assert!(
        (start - 0.102).abs() < 0.02 && (end - 0.204).abs() < 0.02,
        "{ranges:?}"
    );
    let _ = harness.get_by_label(&format!("Regenerate {start:.2}-{end:.2} s"));
    harness.get_by_label("Generate edit").click();
    harness.step();
    step_until(
        &mut harness,
        Duration::from_secs(120),
        "the inpainting",
        |app| !app.is_running(),
    );
    let app = harness.state();
    assert!(app.messages().is_empty(), "{:?}", app.messages());
    assert_eq!(app.history().len(), 2);
    let inpainted = app.history()[0].clone();
    assert_eq!(
        inpainted.edit.as_ref().map(|e| e.mode.clone()),
        Some(Mode::Inpaint { ranges })
    );
    let _ = harness.get_by_label(&inpainted.edit.as_ref().unwrap().summary());

    // Regenerate repeats the edit exactly.
    harness
        .get_all_by_label("Regenerate")
        .next()
        .unwrap()
        .click();
    harness.step();
    step_until(
        &mut harness,
        Duration::from_secs(120),
        "the repeated edit",
        |app| !app.is_running(),
    );
    let app = harness.state();
    assert_eq!(app.history().len(), 3);
    let again = &app.history()[0];
    assert_eq!(
        again.edit.as_ref().map(|e| &e.mode),
        inpainted.edit.as_ref().map(|e| &e.mode)
    );
    assert_eq!(
        audioldm::audio::wav::read_wav(&again.wav).unwrap(),
        audioldm::audio::wav::read_wav(&inpainted.wav).unwrap()
    );

    // A failed edit leaves the input clip and the history as they were.
    harness
        .get_by_label("Model")
        .set_text_value_accesskit(&dir.join("no-such-model").display().to_string());
    harness.run();
    harness.get_by_label("Generate edit").click();
    harness.step();
    step_until(
        &mut harness,
        Duration::from_secs(60),
        "the failed edit",
        |app| !app.is_running(),
    );
    let app = harness.state();
    assert!(
        app.messages()
            .iter()
            .any(|m| m.severity == Severity::Error && m.text.contains("no-such-model")),
        "{:?}",
        app.messages()
    );
    assert_eq!(app.history().len(), 3);
    let input = app.input_clip().expect("the input clip stays");
    assert_eq!(input.name, "chirp-16k.wav");
    assert_eq!(input.ranges.len(), 1);

    // "Use as input" makes a result the next edit's clip.
    harness
        .get_all_by_label("Use as input")
        .next()
        .unwrap()
        .click();
    harness.run();
    let input = harness
        .state()
        .input_clip()
        .expect("the clip from the history");
    assert!(input.name.starts_with("clip "), "{}", input.name);
    assert!(input.ranges.is_empty());
    assert_eq!(input.audio.samples.len(), 8000);
    drop(harness);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn running_out_of_gpu_memory_says_how_to_need_less() {
    use audioldm::engine::{DType, GpuError, Tensor};
    // A real out-of-memory error of the engine: a tensor over the device's largest buffer.
    let ctx = audioldm::engine::Context::new_blocking().expect("a GPU adapter");
    let too_many = (ctx.limits().max_buffer_size / 4 + 1) as usize;
    let err = audioldm::Error::from(Tensor::empty(&ctx, [too_many], DType::F32).unwrap_err());
    assert!(matches!(
        err,
        audioldm::Error::Gpu(GpuError::OutOfMemory(_))
    ));
    assert!(err.is_out_of_gpu_memory());
    let message = audioldm::app::worker::failure_message(&err);
    println!("{message}");
    assert!(
        message.starts_with("out of GPU memory while allocating"),
        "{message}"
    );
    assert!(message.contains("\"Low GPU memory\""), "{message}");
    // Anything else is reported as it is.
    let other = audioldm::Error::Input("no such model folder: x".into());
    assert_eq!(
        audioldm::app::worker::failure_message(&other),
        "no such model folder: x"
    );
}

#[test]
fn ranked_candidates_and_variations_through_the_widgets() {
    let dir = data_dir("clap");
    let mut harness = tall_harness(&dir);
    set_up_tiny_run(&mut harness, 2.0);
    harness.get_by_label("Prompt").focus();
    harness.run();
    harness.get_by_label("Prompt").type_text("thunder");
    harness.get_by_label("Random seed").click();
    let tiny_clap = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clap");
    harness
        .get_by_label("CLAP model (ranking, variations)")
        .set_text_value_accesskit(&tiny_clap.display().to_string());
    slider(&harness, "Candidates").set_value_accesskit(3.0);
    harness.run();
    // The candidates run DPM-Solver++, picked in the scheduler's drop-down.
    harness.get_by_label("Scheduler").click();
    harness.run();
    harness.get_by_label("DPM-Solver++").click();
    harness.run();
    assert_eq!(
        harness.state().settings().scheduler,
        audioldm::pipeline::SchedulerKind::DpmSolverPlusPlus
    );
    let seed = harness.state().settings().seed;

    harness.get_by_label("Generate").click();
    harness.step();
    assert!(harness.state().is_running());
    step_until(
        &mut harness,
        Duration::from_secs(180),
        "the candidates",
        |app| !app.is_running(),
    );
    let app = harness.state();
    assert!(app.messages().is_empty(), "{:?}", app.messages());
    let history = app.history();
    assert_eq!(history.len(), 3, "every candidate is kept");
    let scores: Vec<f32> = history
        .iter()
        .map(|e| e.score.expect("a score").0)
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );
    let mut seeds: Vec<u32> = history.iter().map(|e| e.settings.seed).collect();
    seeds.sort();
    assert_eq!(seeds, [seed, seed + 1, seed + 2]);
    assert_eq!(app.selected(), Some(history[0].id), "the best is selected");
    let comment = audioldm::audio::wav::read_comment(&history[0].wav)
        .unwrap()
        .expect("a comment");
    assert!(comment.contains("clap_score"), "{comment}");
    assert!(comment.contains("DPM-Solver++ 2M"), "{comment}");
    let shown = format!("CLAP score {:.3} · one of 3 candidates", scores[0]);
    assert!(harness.get_all_by_label(&shown).next().is_some(), "{shown}");
    let best = history[0].id;

    // "More like this" on the best candidate: a variation blended with the prompt.
    harness
        .get_all_by_label("More like this")
        .next()
        .unwrap()
        .click();
    harness.step();
    step_until(
        &mut harness,
        Duration::from_secs(120),
        "the variation",
        |app| !app.is_running(),
    );
    let app = harness.state();
    assert!(app.messages().is_empty(), "{:?}", app.messages());
    assert_eq!(app.history().len(), 4);
    let entry = &app.history()[0];
    let record = entry.variation.as_ref().expect("a variation entry");
    assert_eq!(record.source_name, format!("clip {best}: thunder"));
    assert_eq!(record.mix, 0.5);
    assert!(record.source_wav.is_file());
    let (samples, _) = audioldm::audio::wav::read_wav(&entry.wav).expect("the clip's WAV");
    assert_eq!(samples.len(), 16_000, "the source's length");

    // "Variations" on a dropped clip, without a prompt; a silent clip is refused at once.
    harness.get_by_label("Prompt").set_text_value_accesskit("");
    harness.input_mut().dropped_files.push(dropped(&chirp()));
    harness.run();
    harness.get_by_label("Variations").click();
    harness.step();
    step_until(
        &mut harness,
        Duration::from_secs(120),
        "the variation of the input",
        |app| !app.is_running(),
    );
    let app = harness.state();
    assert!(app.messages().is_empty(), "{:?}", app.messages());
    let entry = &app.history()[0];
    assert_eq!(
        entry.variation.as_ref().map(|v| v.source_name.as_str()),
        Some("chirp-16k.wav")
    );
    let silent = dir.join("silent.wav");
    audioldm::audio::wav::write_wav(
        &silent,
        &[0.0; 8000],
        16_000,
        audioldm::audio::wav::WavFormat::Pcm16,
        None,
    )
    .unwrap();
    harness.input_mut().dropped_files.push(dropped(&silent));
    harness.run();
    harness.get_by_label("Variations").click();
    harness.run();
    assert!(!harness.state().is_running());
    let messages = harness.state().messages();
    assert!(
        messages
            .iter()
            .any(|m| m.severity == Severity::Error && m.text.contains("is silent")),
        "{messages:?}"
    );
}

/// A dropped clip of dither alone (16-bit TPDF, ±1 LSB: -90.3 dBFS, what `sox -n -r 16000 -b 16
/// x.wav trim 0 1` writes) is refused at once by every edit and by "Variations", with the one
/// message the CLI and the library give, and nothing runs.
#[test]
fn a_dithered_input_clip_is_refused_by_every_mode_with_one_message() {
    let dir = data_dir("dither");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dither = clips::dither();
    let wav = dir.join("dither.wav");
    audioldm::audio::wav::write_wav(
        &wav,
        &dither,
        16_000,
        audioldm::audio::wav::WavFormat::Pcm16,
        None,
    )
    .expect("write the dither");
    let mut harness = tall_harness(&dir);
    set_up_tiny_run(&mut harness, 2.0);
    harness.input_mut().dropped_files.push(dropped(&wav));
    harness.run();
    let input = harness.state().input_clip().expect("the dropped clip");
    let expected = audioldm::Error::Silent {
        clip: "dither.wav".into(),
        peak_dbfs: audioldm::audio::peak_dbfs(&input.audio.samples),
    }
    .to_string();
    assert!(expected.contains("-90.3 dBFS"), "{expected}");
    let mut refusals = 0;
    for mode in [
        "Style transfer",
        "Inpaint",
        "Super-resolution",
        "Extend",
        "Variations",
    ] {
        if mode == "Variations" {
            harness.get_by_label("Variations").click();
        } else {
            harness.get_by_label(mode).click();
            harness.run();
            if mode == "Inpaint" {
                drag_on_input_spectrogram(&mut harness, 0.2, 0.4);
            }
            harness.get_by_label("Generate edit").click();
        }
        harness.run();
        refusals += 1;
        let app = harness.state();
        assert!(!app.is_running(), "{mode}");
        let errors: Vec<&str> = app
            .messages()
            .iter()
            .filter(|m| m.severity == Severity::Error)
            .map(|m| m.text.as_str())
            .collect();
        assert_eq!(errors.len(), refusals, "{mode}: {errors:?}");
        assert_eq!(errors.last(), Some(&expected.as_str()), "{mode}");
        assert!(app.history().is_empty(), "{mode}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A local model has no CLAP companion: with the CLAP field empty, ranked candidates say what is
/// missing and name the field, and nothing enters the history.
#[test]
fn candidates_without_a_clap_model_say_what_is_missing() {
    let dir = data_dir("no-clap");
    let mut harness = harness(&dir);
    set_up_tiny_run(&mut harness, 2.0);
    slider(&harness, "Candidates").set_value_accesskit(2.0);
    harness.run();
    harness.get_by_label("Generate").click();
    harness.step();
    step_until(
        &mut harness,
        Duration::from_secs(60),
        "the refusal",
        |app| !app.is_running(),
    );
    let app = harness.state();
    assert!(app.history().is_empty());
    assert!(
        app.messages().iter().any(|m| m.severity == Severity::Error
            && m.text.contains("CLAP model field")
            && m.text.contains("no known companion")),
        "{:?}",
        app.messages()
    );
}

/// The Device setting's decision: `cpu` is the CPU backend; `gpu` the renderer's device (one
/// device, one wgpu), or the engine's own without one; `auto` the renderer's device where it is a
/// real GPU, else the CPU backend, marked as a fallback.
#[test]
fn auto_runs_on_the_cpu_backend_where_the_renderers_adapter_is_a_software_one() {
    use eframe::wgpu::DeviceType;
    for kind in [
        DeviceType::DiscreteGpu,
        DeviceType::IntegratedGpu,
        DeviceType::VirtualGpu,
        DeviceType::Other,
    ] {
        assert_eq!(
            choose_backend(DeviceChoice::Auto, Some(kind)),
            Backend::Shared
        );
        assert_eq!(
            choose_backend(DeviceChoice::Gpu, Some(kind)),
            Backend::Shared
        );
        assert_eq!(
            choose_backend(DeviceChoice::Cpu, Some(kind)),
            Backend::Cpu { fell_back: false }
        );
    }
    // A software rasteriser (lavapipe, SwiftShader, WARP), or no renderer's device at all.
    assert_eq!(
        choose_backend(DeviceChoice::Auto, Some(DeviceType::Cpu)),
        Backend::Cpu { fell_back: true }
    );
    assert_eq!(
        choose_backend(DeviceChoice::Auto, None),
        Backend::Cpu { fell_back: true }
    );
    assert_eq!(
        choose_backend(DeviceChoice::Gpu, Some(DeviceType::Cpu)),
        Backend::Shared
    );
    assert_eq!(choose_backend(DeviceChoice::Gpu, None), Backend::OwnGpu);
    assert_eq!(
        choose_backend(DeviceChoice::Cpu, None),
        Backend::Cpu { fell_back: false }
    );
    // `auto` falling back and `cpu` run on the same context: switching between them keeps the
    // loaded model.
    assert!(Backend::Cpu { fell_back: true }.same_context(Backend::Cpu { fell_back: false }));
    assert!(!Backend::Shared.same_context(Backend::OwnGpu));
    assert!(!Backend::Shared.same_context(Backend::Cpu { fell_back: false }));
}

/// Picks `label` ("Auto", "GPU", "CPU") in the Device drop-down.
fn pick_device(harness: &mut Harness<'static, AudioLdmApp>, label: &str) {
    harness.get_by_label("Device").click();
    harness.run();
    harness.get_by_label(label).click();
    harness.run();
}

#[test]
fn the_device_setting_is_shown_kept_and_overridden_by_the_option() {
    let dir = data_dir("device");
    let mut harness = harness_with(AppOptions {
        data_dir: Some(dir.clone()),
        ..Default::default()
    });
    harness.run();
    assert_eq!(harness.state().device(), DeviceChoice::Auto, "the default");
    let adapter = harness
        .state()
        .renderer_adapter()
        .cloned()
        .expect("the harness renders with wgpu");
    // `auto` on this machine's renderer: the CPU backend with a note where the adapter is a
    // software one (lavapipe here), the adapter where it is a real GPU.
    let status = harness.state_mut().backend_status();
    println!("auto: {status}");
    if adapter.device_type == eframe::wgpu::DeviceType::Cpu {
        assert!(status.starts_with("CPU: "), "{status}");
        assert!(
            status.ends_with(&format!(
                "auto chose the CPU: {} is a software rasteriser",
                adapter.name
            )),
            "{status}"
        );
    } else {
        assert!(status.starts_with("GPU: "), "{status}");
        assert!(status.contains(&adapter.name), "{status}");
    }
    // The status line shows it.
    let _ = harness.get_by_label(&status);

    pick_device(&mut harness, "GPU");
    assert_eq!(harness.state().device(), DeviceChoice::Gpu);
    let status = harness.state_mut().backend_status();
    assert!(
        status.starts_with("GPU: ") && status.contains(&adapter.name),
        "{status}"
    );
    assert!(!status.contains("auto chose"), "{status}");
    let _ = harness.get_by_label(&status);

    pick_device(&mut harness, "CPU");
    assert_eq!(harness.state().device(), DeviceChoice::Cpu);
    let status = harness.state_mut().backend_status();
    assert!(status.starts_with("CPU: "), "{status}");
    assert!(status.contains(" threads)"), "{status}");
    assert!(!status.contains("auto chose"), "{status}");
    let _ = harness.get_by_label(&status);

    // The choice survives a restart; `--device` (the option) overrides it at start.
    harness
        .get_by_label("Prompt")
        .set_text_value_accesskit("hail");
    harness.run();
    let mut storage = MemoryStorage::default();
    eframe::App::save(harness.state_mut(), &mut storage);
    let settings = harness.state().settings().clone();
    drop(harness);
    let options = AppOptions {
        data_dir: Some(dir.clone()),
        ..Default::default()
    };
    let harness = restarted(options.clone(), storage.clone());
    assert_eq!(harness.state().device(), DeviceChoice::Cpu);
    assert_eq!(harness.state().settings(), &settings);
    drop(harness);
    let harness = restarted(
        AppOptions {
            device: Some(DeviceChoice::Gpu),
            ..options.clone()
        },
        storage.clone(),
    );
    assert_eq!(harness.state().device(), DeviceChoice::Gpu);
    drop(harness);

    // A device name this build does not know costs the choice, not the settings.
    let mut unknown = storage.clone();
    let mut replaced = false;
    for value in unknown.0.values_mut() {
        if value.contains("\"cpu\"") {
            *value = value.replace("\"cpu\"", "\"tpu\"");
            replaced = true;
        }
    }
    assert!(
        replaced,
        "the device is not stored by name: {:?}",
        storage.0
    );
    let harness = restarted(options, unknown);
    assert_eq!(harness.state().device(), DeviceChoice::Auto);
    assert_eq!(harness.state().settings(), &settings);
    drop(harness);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The WAV comment of `wav`, which records what ran the clip's networks as `backend`.
fn backend_of(wav: &Path) -> String {
    let comment = audioldm::audio::wav::read_comment(wav)
        .expect("the clip's WAV")
        .expect("a comment");
    let settings: serde_json::Value = serde_json::from_str(&comment).expect("JSON settings");
    settings["backend"]
        .as_str()
        .unwrap_or_else(|| panic!("no backend in {comment}"))
        .to_string()
}

/// Waits for the run just started and checks that it left no error.
fn finish_run(harness: &mut Harness<'static, AudioLdmApp>, what: &str) {
    harness.step();
    assert!(
        harness.state().is_running(),
        "{what} started nothing: {:?}",
        harness.state().messages()
    );
    step_until(harness, Duration::from_secs(180), what, |app| {
        !app.is_running()
    });
    let messages = harness.state().messages();
    assert!(
        messages.iter().all(|m| m.severity != Severity::Error),
        "{what}: {messages:?}"
    );
}

/// Everything the app does, on the CPU backend picked in the settings: text-to-audio with
/// DPM-Solver++ and low memory, the live preview, the four edits, ranked candidates, a
/// variation; then back on the renderer's device, which the next run reloads the model on.
#[test]
fn every_mode_runs_on_the_cpu_backend_picked_in_the_settings() {
    let dir = data_dir("cpu");
    let mut harness = tall_harness(&dir);
    set_up_tiny_run(&mut harness, 2.0);
    pick_device(&mut harness, "CPU");
    assert_eq!(harness.state().device(), DeviceChoice::Cpu);
    harness
        .get_by_label("Prompt")
        .set_text_value_accesskit("hail");
    harness.get_by_label("Random seed").click();
    harness.get_by_label("Low GPU memory").click();
    harness.run();
    harness.get_by_label("Scheduler").click();
    harness.run();
    harness.get_by_label("DPM-Solver++").click();
    harness.run();

    // Text-to-audio.
    harness.get_by_label("Generate").click();
    finish_run(&mut harness, "the clip");
    let app = harness.state();
    assert_eq!(app.loaded_residency(), Some(Residency::LowMemory));
    let [entry] = app.history() else {
        panic!("expected one history entry, got {:?}", app.history());
    };
    let cpu_clip = entry.wav.clone();
    let backend = backend_of(&cpu_clip);
    assert!(backend.starts_with("CPU: "), "{backend}");
    let comment = audioldm::audio::wav::read_comment(&cpu_clip)
        .unwrap()
        .unwrap_or_default();
    assert!(comment.contains("DPM-Solver++ 2M"), "{comment}");
    let (cpu_samples, _) = audioldm::audio::wav::read_wav(&cpu_clip).expect("the clip");
    assert_eq!(cpu_samples.len(), 16_000);
    assert!(cpu_samples.iter().all(|s| s.is_finite()) && cpu_samples.iter().any(|s| *s != 0.0));
    // The status line names the backend the run reported.
    assert_eq!(harness.state_mut().backend_status(), backend);
    let _ = harness.get_by_label(&backend);

    // The live preview comes with the steps; a long run is cancelled once it has one.
    slider(&harness, "Steps").set_value_accesskit(200.0);
    harness.run();
    harness.get_by_label("Generate").click();
    step_until(
        &mut harness,
        Duration::from_secs(120),
        "the first step",
        |app| matches!(app.phase(), Some(Phase::Denoising { i, .. }) if *i >= 1),
    );
    let preview = harness.state().preview().expect("a live preview");
    assert!(preview.frames > 0 && preview.bins > 0);
    assert!(preview.data.iter().all(|v| v.is_finite()));
    harness.get_by_label("Cancel").click();
    harness.run_steps(2);
    step_until(
        &mut harness,
        Duration::from_secs(120),
        "the cancel",
        |app| !app.is_running(),
    );
    slider(&harness, "Steps").set_value_accesskit(2.0);
    harness.run();

    // The four edits of a dropped clip.
    harness.input_mut().dropped_files.push(dropped(&chirp()));
    harness.run();
    for mode in ["Style transfer", "Inpaint", "Super-resolution", "Extend"] {
        harness.get_by_label(mode).click();
        harness.run();
        if mode == "Inpaint" {
            drag_on_input_spectrogram(&mut harness, 0.2, 0.4);
        }
        let before = harness.state().history().len();
        harness.get_by_label("Generate edit").click();
        finish_run(&mut harness, mode);
        let history = harness.state().history();
        assert_eq!(history.len(), before + 1, "{mode}");
        let entry = &history[0];
        assert!(entry.edit.is_some(), "{mode}");
        assert!(backend_of(&entry.wav).starts_with("CPU: "), "{mode}");
        let (samples, _) = audioldm::audio::wav::read_wav(&entry.wav).expect("the edit");
        assert!(samples.len() >= 8000, "{mode}: {} samples", samples.len());
        assert!(samples.iter().all(|s| s.is_finite()), "{mode}");
    }

    // Ranked candidates and a variation, with the tiny CLAP.
    let tiny_clap = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clap");
    harness
        .get_by_label("CLAP model (ranking, variations)")
        .set_text_value_accesskit(&tiny_clap.display().to_string());
    slider(&harness, "Candidates").set_value_accesskit(2.0);
    harness.run();
    let before = harness.state().history().len();
    harness.get_by_label("Generate").click();
    finish_run(&mut harness, "the candidates");
    let history = harness.state().history();
    assert_eq!(history.len(), before + 2);
    for entry in &history[..2] {
        assert!(entry.score.is_some());
        assert!(backend_of(&entry.wav).starts_with("CPU: "));
    }
    harness.get_by_label("Variations").click();
    finish_run(&mut harness, "the variation");
    let history = harness.state().history();
    assert_eq!(history.len(), before + 3);
    assert!(history[0].variation.is_some());
    assert!(backend_of(&history[0].wav).starts_with("CPU: "));

    // Back on the renderer's device: the first clip again (the same settings and seed), made
    // there (the model loads onto the new context), matches the CPU's.
    pick_device(&mut harness, "GPU");
    slider(&harness, "Candidates").set_value_accesskit(1.0);
    harness.run();
    harness.get_by_label("Generate").click();
    finish_run(&mut harness, "the clip on the GPU");
    let entry = &harness.state().history()[0];
    assert_eq!(entry.settings.prompt, "hail");
    let backend = backend_of(&entry.wav);
    assert!(backend.starts_with("GPU: "), "{backend}");
    let (gpu_samples, _) = audioldm::audio::wav::read_wav(&entry.wav).expect("the clip");
    assert_eq!(gpu_samples.len(), cpu_samples.len());
    let max_diff = gpu_samples
        .iter()
        .zip(&cpu_samples)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff < 1e-3, "GPU and CPU clips differ by {max_diff}");
    assert_eq!(harness.state_mut().backend_status(), backend);
    drop(harness);
    let _ = std::fs::remove_dir_all(&dir);
}
