//! The desktop app: an egui front end over the [`Pipeline`](crate::pipeline::Pipeline) API. It
//! holds no model logic: it turns controls into a [`Request`](crate::pipeline::Request), hands it
//! to a worker thread and draws what comes back.
//!
//! One GPU device serves the whole process: eframe creates it with the engine's
//! [`device_descriptor`] (the limits of the chosen [`LimitsProfile`] and the features the engine
//! uses) and the engine wraps it with [`Context::from_device`]. The Device setting may instead
//! run the networks on the CPU backend ([`Context::cpu`]), which `auto` does where eframe's
//! adapter is a software one ([`worker::choose_backend`]).

pub mod spectrogram;
pub mod state;
#[cfg(target_arch = "wasm32")]
pub mod web;
pub mod worker;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
// `std::time` panics in a browser; `web_time` is `std::time` on the desktop.
use web_time::{Instant, SystemTime, UNIX_EPOCH};

use eframe::egui::{self, Color32, Key, KeyboardShortcut, Modifiers, RichText};
#[cfg(not(target_arch = "wasm32"))]
use eframe::egui_wgpu::WgpuConfiguration;
use eframe::egui_wgpu::{WgpuSetup, WgpuSetupCreateNew};

use crate::audio::decode::decode_file;
use crate::audio::mel::MelFrontEnd;
use crate::audio::playback::Player;
use crate::audio::wav::{WavFormat, read_comment, read_wav, write_wav};
use crate::audio::{Audio, Mel};
use crate::engine::context::{LimitsProfile, device_descriptor};
use crate::engine::{Context, DeviceChoice};
use crate::hub;
use crate::model::nn::Precision;
use crate::pipeline::edit::{EditRequest, Mode};
use crate::pipeline::ranking::{Candidates, describe_candidate};
use crate::pipeline::variation::VariationRequest;
use crate::pipeline::{Residency, settings_with_backend};

use spectrogram::{Overlay, SpectrogramView};
use state::{
    CANDIDATES_RANGE, CUTOFF_RANGE, DURATION_RANGE, EXTEND_RANGE, EditKind, EditRecord,
    GUIDANCE_RANGE, HistoryEntry, MIX_RANGE, Persisted, STEPS_RANGE, STRENGTH_RANGE, Settings,
    VariationRecord,
};
use worker::{Backend, Job, Report, Task, Worker, backend_label, choose_backend};

/// The name eframe stores settings under (and the window title).
pub const APP_ID: &str = "AudioLDM";

/// How the app is set up; tests point `data_dir` at a temporary folder.
#[derive(Clone, Debug, Default)]
pub struct AppOptions {
    /// Where generated clips are kept; default: `clips/` in eframe's storage folder.
    pub data_dir: Option<PathBuf>,
    /// Start with this model instead of the one used last.
    pub model: Option<String>,
    /// Start with this audio file as the input clip.
    pub input: Option<PathBuf>,
    pub precision: Precision,
    /// The limits the shared device is created with.
    pub limits: LimitsProfile,
    /// Start with low memory on ([`Residency::LowMemory`]) whatever was chosen last; the app's
    /// "Low GPU memory" setting chooses from then on.
    pub residency: Residency,
    /// Start on this device whatever was chosen last (`--device`, `AUDIOLDM_DEVICE`); the app's
    /// Device setting chooses from then on.
    pub device: Option<DeviceChoice>,
}

/// The wgpu setup eframe should use so that the engine can share its device, created with the
/// limits of `profile`. A browser without WebGPU draws with WebGL2 instead: that device only
/// draws (WebGL has no compute shaders), and the networks run on the CPU backend.
pub fn wgpu_setup(profile: &LimitsProfile) -> WgpuSetup {
    let mut setup = WgpuSetupCreateNew::without_display_handle();
    setup.instance_descriptor = crate::engine::context::instance_descriptor();
    #[cfg(target_arch = "wasm32")]
    {
        setup.instance_descriptor.backends |= eframe::wgpu::Backends::GL;
    }
    let profile = profile.clone();
    setup.device_descriptor = Arc::new(move |adapter| {
        if !can_compute(&adapter.get_info()) {
            return eframe::wgpu::DeviceDescriptor {
                required_limits: eframe::wgpu::Limits::downlevel_webgl2_defaults()
                    .using_resolution(adapter.limits()),
                ..Default::default()
            };
        }
        device_descriptor(adapter, &profile).unwrap_or_else(|e| {
            // eframe takes a descriptor, not an error: ask for the profile's limits anyway, and
            // the device request fails with wgpu's error naming the limit.
            tracing::error!("{e}");
            eframe::wgpu::DeviceDescriptor {
                required_limits: profile.wanted(&adapter.limits()),
                ..Default::default()
            }
        })
    });
    WgpuSetup::CreateNew(setup)
}

/// Whether the engine can run on a device of this adapter: any but WebGL2's, which only draws.
fn can_compute(adapter: &eframe::wgpu::AdapterInfo) -> bool {
    !(cfg!(target_arch = "wasm32") && adapter.backend == eframe::wgpu::Backend::Gl)
}

/// Opens the main window and runs until it is closed.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_native(options: AppOptions) -> Result<(), String> {
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("AudioLDM")
            .with_inner_size([1200.0, 760.0])
            .with_min_inner_size([800.0, 520.0])
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: WgpuConfiguration {
            wgpu_setup: wgpu_setup(&options.limits),
            ..Default::default()
        },
        ..Default::default()
    };
    eframe::run_native(
        APP_ID,
        native,
        Box::new(move |cc| Ok(Box::new(AudioLdmApp::new(cc, options)))),
    )
    .map_err(|e| {
        format!(
            "cannot open the window: {e}. The app needs a GPU adapter for drawing and compute; \
             without a GPU on Linux, install Mesa's software one (mesa-vulkan-drivers), and \
             check WGPU_BACKEND if it is set"
        )
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Severity {
    Info,
    Error,
}

/// A message shown at the top of the window until dismissed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub severity: Severity,
    pub text: String,
}

/// Where the running generation is.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    Resolving,
    Downloading {
        file: String,
        fraction: f32,
    },
    Loading,
    Denoising {
        i: usize,
        n: usize,
    },
    /// CLAP scores a ranked run's candidates.
    Scoring,
    Cancelling,
}

/// The generation in flight.
struct Run {
    id: u64,
    settings: Settings,
    /// The device setting the run was submitted with.
    device: DeviceChoice,
    /// What runs its networks ([`backend_label`]) and whether it is the CPU backend, once the
    /// worker has said.
    backend: Option<(String, bool)>,
    started: Instant,
    denoising_started: Option<Instant>,
    phase: Phase,
    preview: Option<Mel>,
    /// Set when the run edits a clip.
    edit: Option<Box<EditRequest>>,
    /// Set when the run makes a variation of a clip.
    variation: Option<Box<VariationRequest>>,
    /// A ranked run's candidate in the making, `(k, n)` with `k` 1-based.
    candidate: Option<(usize, usize)>,
}

/// A clip's audio and spectrogram, kept in memory once loaded.
struct Clip {
    audio: Audio,
    mel: Mel,
}

/// A file dropped onto the window (or a clip from the history), to be edited.
pub struct InputClip {
    pub name: String,
    pub audio: Audio,
    /// The log-mel of its first channel at 16 kHz: what the model would see.
    pub mel: Mel,
    /// The time ranges inpainting regenerates, in seconds, sorted and disjoint.
    pub ranges: Vec<(f64, f64)>,
}

impl InputClip {
    /// Adds a range to regenerate, merged with those it touches.
    pub fn add_range(&mut self, (start, end): (f64, f64)) {
        let (mut start, mut end) = (start.max(0.0), end.min(self.audio.duration_s()));
        if end <= start {
            return;
        }
        self.ranges.retain(|&(a, b)| {
            let touches = a <= end && start <= b;
            if touches {
                start = start.min(a);
                end = end.max(b);
            }
            !touches
        });
        self.ranges.push((start, end));
        self.ranges.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
}

/// Id under which the input clip plays (history ids count up from 0).
const INPUT_CLIP_ID: u64 = u64::MAX;

pub struct AudioLdmApp {
    persisted: Persisted,
    data_dir: PathBuf,
    /// The engine's context on eframe's device, if eframe renders with wgpu.
    shared: Option<Context>,
    /// What runs the networks of a device setting ([`backend_label`]): as the worker last said,
    /// or as expected before it has.
    backend: (DeviceChoice, String),
    worker: Worker,
    run: Option<Run>,
    player: Player,
    clips: HashMap<u64, Clip>,
    selected: Option<u64>,
    input: Option<InputClip>,
    spectrogram: SpectrogramView,
    input_spectrogram: SpectrogramView,
    messages: Vec<Message>,
    mel_front_end: MelFrontEnd,
    /// Whether the model field names something already on disk, for the last text checked.
    model_status: (String, String),
    /// How the worker last loaded a model, once it has.
    loaded_residency: Option<Residency>,
    /// Where the main controls were drawn in the last frame, by label, in points: what a page
    /// driving the app from outside (the web build's end-to-end test) clicks.
    controls: HashMap<&'static str, egui::Rect>,
    /// Dropped files whose bytes have arrived (a browser reads them asynchronously).
    #[cfg(target_arch = "wasm32")]
    dropped: std::rc::Rc<std::cell::RefCell<Vec<Result<PathBuf, String>>>>,
    /// [`Self::history_signature`] when the history was last saved.
    saved_history: (usize, Option<u64>),
    /// The model folder the user picked, mounted (a browser reads it asynchronously).
    #[cfg(target_arch = "wasm32")]
    picked_folder: std::rc::Rc<std::cell::RefCell<Option<Result<PathBuf, String>>>>,
    /// For the page's calls into the app, which must draw what they change.
    #[cfg(target_arch = "wasm32")]
    egui_ctx: egui::Context,
}

impl AudioLdmApp {
    /// Builds the app on eframe's device (when eframe renders with wgpu), restoring the settings
    /// and history of the last run.
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        let mut persisted: Persisted = cc
            .storage
            .and_then(|storage| eframe::get_value(storage, eframe::APP_KEY))
            .unwrap_or_default();
        if let Some(model) = options.model {
            persisted.settings.model = model;
        }
        if options.residency == Residency::LowMemory {
            persisted.low_memory = true;
        }
        if let Some(device) = options.device {
            persisted.device = device;
        }
        let render_state = cc.wgpu_render_state.as_ref();
        let drawing_only = render_state.is_some_and(|rs| !can_compute(&rs.adapter.get_info()));
        let shared = render_state.filter(|_| !drawing_only).map(|rs| {
            Context::from_device(
                rs.device.clone(),
                rs.queue.clone(),
                rs.adapter.get_info(),
                options.limits.clone(),
            )
        });
        let egui_ctx = cc.egui_ctx.clone();
        let worker = Worker::spawn(
            shared.clone(),
            options.limits.clone(),
            options.precision,
            move || egui_ctx.request_repaint(),
        );
        let data_dir = options.data_dir.unwrap_or_else(default_data_dir);
        let backend = (
            persisted.device,
            expected_backend_name(persisted.device, shared.as_ref()),
        );
        let mut app = Self {
            persisted,
            data_dir,
            shared,
            backend,
            worker,
            run: None,
            player: Player::default(),
            clips: HashMap::new(),
            selected: None,
            input: None,
            spectrogram: SpectrogramView::default(),
            input_spectrogram: SpectrogramView::default(),
            messages: Vec::new(),
            mel_front_end: MelFrontEnd::new(),
            model_status: (String::new(), String::new()),
            loaded_residency: None,
            controls: HashMap::new(),
            #[cfg(target_arch = "wasm32")]
            dropped: Default::default(),
            saved_history: (0, None),
            #[cfg(target_arch = "wasm32")]
            picked_folder: Default::default(),
            #[cfg(target_arch = "wasm32")]
            egui_ctx: cc.egui_ctx.clone(),
        };
        app.saved_history = app.history_signature();
        if drawing_only {
            app.info(format!(
                "This browser offers no WebGPU, so the networks run on the CPU backend ({}): \
                 the slow path, minutes for a clip where a GPU takes seconds. Chrome or Edge \
                 113+, Safari 26+ and Firefox 141+ on Windows run them on the GPU.",
                Context::cpu().backend_name()
            ));
        }
        if let Some(path) = &options.input {
            app.load_input(path);
        }
        app
    }

    /// Whether "Low GPU memory" is ticked.
    pub fn low_memory(&self) -> bool {
        self.persisted.low_memory
    }

    /// The adapter eframe renders with, if it renders with wgpu.
    pub fn renderer_adapter(&self) -> Option<&eframe::wgpu::AdapterInfo> {
        self.shared.as_ref().map(|c| c.adapter_info())
    }

    /// The running generation's live preview (the spectrogram of its latest estimate), once the
    /// first step has reported it.
    pub fn preview(&self) -> Option<&Mel> {
        self.run.as_ref().and_then(|r| r.preview.as_ref())
    }

    /// The Device setting: what runs the networks from the next generation on.
    pub fn device(&self) -> DeviceChoice {
        self.persisted.device
    }

    /// What the status line says runs the networks: the backend of the Device setting
    /// ([`backend_label`]), with a note when `auto` fell back to the CPU.
    pub fn backend_status(&mut self) -> String {
        let device = self.persisted.device;
        if self.backend.0 != device {
            self.backend = (device, expected_backend_name(device, self.shared.as_ref()));
        }
        let shared = self.shared.as_ref().map(|c| c.adapter_info());
        match choose_backend(device, shared.map(|info| info.device_type)) {
            Backend::Cpu { fell_back: true } => format!(
                "{} · auto chose the CPU: {}",
                self.backend.1,
                match shared {
                    Some(info) => format!("{} is a software rasteriser", info.name),
                    None if cfg!(target_arch = "wasm32") => "the browser has no WebGPU".into(),
                    None => "no GPU device to share".to_string(),
                }
            ),
            _ => self.backend.1.clone(),
        }
    }

    /// Where the loaded model keeps its weights (`None` before the first load).
    pub fn loaded_residency(&self) -> Option<Residency> {
        self.loaded_residency
    }

    pub fn settings(&self) -> &Settings {
        &self.persisted.settings
    }

    pub fn settings_mut(&mut self) -> &mut Settings {
        &mut self.persisted.settings
    }

    pub fn history(&self) -> &[HistoryEntry] {
        &self.persisted.history
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    pub fn is_running(&self) -> bool {
        self.run.is_some()
    }

    /// The phase of the running generation, if any.
    pub fn phase(&self) -> Option<&Phase> {
        self.run.as_ref().map(|r| &r.phase)
    }

    /// The history entry whose clip the main view shows.
    pub fn selected(&self) -> Option<u64> {
        self.selected
    }

    /// Mel frames of the spectrogram on screen.
    pub fn shown_frames(&self) -> usize {
        self.spectrogram.frames()
    }

    /// The exact (VAE-decoded) spectrogram of history entry `id`, once loaded.
    pub fn clip_mel(&self, id: u64) -> Option<&Mel> {
        self.clips.get(&id).map(|c| &c.mel)
    }

    /// Where the control labelled `label` ("Prompt", "Generate") was drawn in the last frame.
    pub fn control_rect(&self, label: &str) -> Option<egui::Rect> {
        self.controls.get(label).copied()
    }

    pub fn input_clip(&self) -> Option<&InputClip> {
        self.input.as_ref()
    }

    /// The clip playing (a history entry's id, or the input clip's) and where, in seconds.
    pub fn playing(&mut self) -> Option<(u64, f64)> {
        self.player.playing()
    }

    fn error(&mut self, text: impl Into<String>) {
        let text = text.into();
        tracing::warn!("{text}");
        self.messages.push(Message {
            severity: Severity::Error,
            text,
        });
    }

    fn info(&mut self, text: impl Into<String>) {
        self.messages.push(Message {
            severity: Severity::Info,
            text: text.into(),
        });
    }

    /// Starts a generation with the current settings.
    pub fn generate(&mut self) {
        let settings = self.next_settings();
        let task = match settings.candidates {
            0 | 1 => Task::Generate(settings.request()),
            n => Task::Candidates(settings.request(), n),
        };
        self.submit(settings, task, None);
    }

    /// Starts a variation of the input clip: conditioned on its CLAP audio embedding, blended
    /// with the prompt (when there is one) by the mix slider.
    pub fn generate_variation(&mut self) {
        let Some(input) = &self.input else {
            self.error("Drop an audio file on the window first: variations vary an input clip.");
            return;
        };
        let (source, source_name) = (input.audio.clone(), input.name.clone());
        self.submit_variation(source, source_name);
    }

    /// Starts a variation of history entry `id` ("More like this").
    pub fn more_like_this(&mut self, id: u64) {
        let Some(audio) = self.clip(id).map(|c| c.audio.clone()) else {
            return;
        };
        let name = format!("clip {id}: {}", self.prompt_of(id));
        self.submit_variation(audio, name);
    }

    fn submit_variation(&mut self, source: Audio, source_name: String) {
        let settings = self.next_settings();
        let variation = VariationRequest {
            request: settings.variation_request(),
            source,
            source_name,
            mix: settings.mix,
        };
        if let Err(e) = variation.check() {
            self.error(e.to_string());
            return;
        }
        let variation = Box::new(variation);
        self.submit_run(
            settings,
            Task::Vary(variation.clone()),
            None,
            Some(variation),
        );
    }

    /// Starts the edit the input panel describes (mode and parameters) on the input clip, with
    /// the prompt, guidance, steps and seed of the left panel.
    pub fn generate_edit(&mut self) {
        let Some(input) = &self.input else {
            self.error("Drop an audio file on the window first: edits work on an input clip.");
            return;
        };
        let s = &self.persisted.settings;
        let mode = match s.edit {
            EditKind::StyleTransfer => Mode::StyleTransfer {
                strength: s.strength,
            },
            EditKind::Inpaint => {
                if input.ranges.is_empty() {
                    self.error(
                        "Drag over the input clip's spectrogram to mark the time ranges to                          regenerate.",
                    );
                    return;
                }
                Mode::Inpaint {
                    ranges: input.ranges.clone(),
                }
            }
            EditKind::SuperResolution => Mode::SuperResolution {
                cutoff_hz: Some(s.cutoff_hz),
            },
            EditKind::Extend => Mode::Extend {
                seconds: s.extend_s,
            },
        };
        let (source, source_name) = (input.audio.clone(), input.name.clone());
        let settings = self.next_settings();
        let edit = EditRequest {
            request: settings.edit_request(),
            source,
            source_name,
            mode,
        };
        self.submit_edit(settings, edit);
    }

    fn submit_edit(&mut self, settings: Settings, edit: EditRequest) {
        // Refused at once, as a variation's clip is, not after the model loads.
        if let Err(e) = edit.check() {
            self.error(e.to_string());
            return;
        }
        let edit = Box::new(edit);
        self.submit(settings, Task::Edit(edit.clone()), Some(edit));
    }

    fn submit(&mut self, settings: Settings, task: Task, edit: Option<Box<EditRequest>>) {
        self.submit_run(settings, task, edit, None);
    }

    /// The current settings with the seed this run uses.
    fn next_settings(&mut self) -> Settings {
        let mut settings = self.persisted.settings.clone();
        if settings.random_seed {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            settings.seed = RandomState::new().hash_one(nanos) as u32;
            self.persisted.settings.seed = settings.seed;
        }
        settings
    }

    fn submit_run(
        &mut self,
        settings: Settings,
        task: Task,
        edit: Option<Box<EditRequest>>,
        variation: Option<Box<VariationRequest>>,
    ) {
        let id = self.persisted.next_id;
        self.persisted.next_id += 1;
        let device = self.persisted.device;
        let job = Job {
            id,
            device,
            model: settings.model.trim().to_string(),
            residency: Residency::from_low_memory(self.persisted.low_memory),
            clap: settings.clap(),
            task,
        };
        match self.worker.submit(job) {
            Ok(()) => {
                self.run = Some(Run {
                    id,
                    settings,
                    device,
                    backend: None,
                    started: Instant::now(),
                    denoising_started: None,
                    phase: Phase::Resolving,
                    preview: None,
                    edit,
                    variation,
                    candidate: None,
                });
            }
            Err(e) => self.error(e),
        }
    }

    pub fn cancel(&mut self) {
        if let Some(run) = &mut self.run {
            self.worker.cancel();
            run.phase = Phase::Cancelling;
        }
    }

    /// Loads `path` as the input clip (what a drop onto the window does).
    pub fn load_input(&mut self, path: &Path) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        match decode_file(path, crate::pipeline::MAX_DURATION_S) {
            Ok(audio) => {
                // Super-resolution keeps what the recording holds: up to half its rate.
                let nyquist = audio.sample_rate as f64 / 2.0;
                if CUTOFF_RANGE.contains(&nyquist) {
                    self.persisted.settings.cutoff_hz = nyquist;
                }
                self.set_input(name, audio);
            }
            Err(e) => self.error(format!("cannot load the dropped file: {e}")),
        }
    }

    fn set_input(&mut self, name: String, audio: Audio) {
        match self.mel_front_end.log_mel_of(&audio) {
            Ok(mel) => {
                self.input = Some(InputClip {
                    name,
                    audio,
                    mel,
                    ranges: Vec::new(),
                })
            }
            Err(e) => self.error(format!("cannot load the clip: {e}")),
        }
    }

    /// Makes history entry `id` the input clip, so that edits chain.
    pub fn use_as_input(&mut self, id: u64) {
        let Some(audio) = self.clip(id).map(|c| c.audio.clone()) else {
            return;
        };
        let prompt = self.prompt_of(id);
        self.set_input(format!("clip {id}: {prompt}"), audio);
    }

    /// The prompt of history entry `id` (empty when it has none or is gone).
    fn prompt_of(&self, id: u64) -> String {
        self.persisted
            .history
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.settings.prompt.clone())
            .unwrap_or_default()
    }

    fn handle_reports(&mut self) {
        while let Some(report) = self.worker.poll() {
            let Some(run) = &mut self.run else { continue };
            if report.id() != run.id {
                continue;
            }
            let cancelling = run.phase == Phase::Cancelling;
            match report {
                Report::Downloading { file, fraction, .. } if !cancelling => {
                    run.phase = Phase::Downloading { file, fraction };
                }
                Report::Backend { name, cpu, .. } => {
                    self.backend = (run.device, name.clone());
                    run.backend = Some((name, cpu));
                }
                Report::Loading { residency, .. } => {
                    self.loaded_residency = Some(residency);
                    if !cancelling {
                        run.phase = Phase::Loading;
                    }
                }
                Report::Started { .. } => run.denoising_started = Some(Instant::now()),
                Report::Step { i, n, preview, .. } => {
                    if !cancelling {
                        run.phase = Phase::Denoising { i, n };
                    }
                    run.preview = Some(preview);
                }
                Report::Candidate { k, n, .. } => run.candidate = Some((k, n)),
                Report::Scoring { .. } if !cancelling => run.phase = Phase::Scoring,
                Report::Done { output, .. } => self.finish(*output),
                Report::Ranked { candidates, .. } => self.finish_ranked(*candidates),
                Report::Cancelled { .. } => {
                    self.run = None;
                    self.info("Generation cancelled.");
                }
                Report::Failed { message, .. } => {
                    self.run = None;
                    self.error(format!("Generation failed: {message}"));
                }
                _ => {}
            }
        }
    }

    fn finish(&mut self, output: crate::pipeline::Output) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        let description = match (&run.edit, &run.variation) {
            (Some(edit), _) => edit.describe(&run.settings.model),
            (None, Some(variation)) => {
                variation.describe(&run.settings.model, &run.settings.clap_in_use())
            }
            (None, None) => run.settings.describe(),
        };
        let description = with_backend(&description, &run);
        let edit = run.edit.take().map(|edit| {
            let source_wav = self.keep_source(run.id, &edit.source, "edit");
            EditRecord {
                mode: edit.mode,
                source_name: edit.source_name,
                source_wav,
                description: description.clone(),
            }
        });
        let variation = run.variation.take().map(|variation| {
            let source_wav = self.keep_source(run.id, &variation.source, "variation");
            VariationRecord {
                mix: variation.mix,
                source_name: variation.source_name,
                source_wav,
                description: description.clone(),
            }
        });
        // An edit's (and a variation's) length comes from its clip.
        run.settings.duration_s = output.audio.duration_s();
        let entry = HistoryEntry {
            id: run.id,
            settings: run.settings,
            wav: PathBuf::new(),
            created: 0,
            took_s: run.started.elapsed().as_secs_f64(),
            edit,
            variation,
            score: None,
        };
        self.add_to_history(entry, output, &description);
        self.selected = Some(run.id);
    }

    /// A ranked run's candidates enter the history together, the best on top and selected.
    fn finish_ranked(&mut self, candidates: Candidates) {
        let Some(run) = self.run.take() else {
            return;
        };
        let n = candidates.outputs.len();
        let took_s = run.started.elapsed().as_secs_f64();
        let clap = run.settings.clap_in_use();
        let ranking = candidates.scores.ranking();
        let mut outputs: Vec<Option<crate::pipeline::Output>> =
            candidates.outputs.into_iter().map(Some).collect();
        // Inserted worst first at the top, so the best ends up first.
        for (place, &k) in ranking.iter().enumerate().rev() {
            let Some(output) = outputs[k].take() else {
                continue;
            };
            let id = if place == 0 {
                run.id
            } else {
                self.persisted.next_id += 1;
                self.persisted.next_id - 1
            };
            // Each candidate is the clip its own seed makes: Regenerate repeats just it.
            let settings = Settings {
                seed: candidates.seeds[k],
                random_seed: false,
                candidates: 1,
                ..run.settings.clone()
            };
            let score = candidates.scores.scores[k];
            let description = with_backend(
                &describe_candidate(
                    &settings.request(),
                    &settings.model,
                    settings.duration_s,
                    (k, n),
                    score,
                    &clap,
                ),
                &run,
            );
            let entry = HistoryEntry {
                id,
                settings,
                wav: PathBuf::new(),
                created: 0,
                took_s,
                edit: None,
                variation: None,
                score: Some((score, n)),
            };
            self.add_to_history(entry, output, &description);
        }
        self.selected = Some(run.id);
    }

    /// Keeps the source clip of run `id` on disk (a 32-bit float WAV at its own rate) so that
    /// the run can be repeated after a restart.
    fn keep_source(&mut self, id: u64, source: &Audio, what: &str) -> PathBuf {
        let source_wav = self.data_dir.join(format!("source-{id}.wav"));
        let kept = make_dir(&self.data_dir).and_then(|()| {
            write_wav(
                &source_wav,
                &source.samples,
                source.sample_rate,
                WavFormat::Float32,
                None,
            )
        });
        if let Err(e) = kept {
            self.error(format!(
                "the source clip could not be kept on disk, so the {what} cannot be repeated \
                 after the app closes: {e}"
            ));
        }
        source_wav
    }

    /// Writes `output` beside the app's storage and puts `entry` (its `wav` and `created` set
    /// here) at the top of the history.
    fn add_to_history(
        &mut self,
        mut entry: HistoryEntry,
        output: crate::pipeline::Output,
        description: &str,
    ) {
        entry.wav = self.data_dir.join(format!("clip-{}.wav", entry.id));
        let saved = make_dir(&self.data_dir).and_then(|()| {
            write_wav(
                &entry.wav,
                &output.audio.samples,
                output.audio.sample_rate,
                WavFormat::Float32,
                Some(description),
            )
        });
        if let Err(e) = saved {
            self.error(format!(
                "the clip could not be kept on disk, it lasts until the app closes: {e}"
            ));
        }
        entry.created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        self.clips.insert(
            entry.id,
            Clip {
                audio: output.audio,
                mel: output.mel,
            },
        );
        self.persisted.history.insert(0, entry);
    }

    /// The clip of history entry `id`, read from its WAV file if it is not in memory yet.
    fn clip(&mut self, id: u64) -> Option<&Clip> {
        if !self.clips.contains_key(&id) {
            let entry = self.persisted.history.iter().find(|e| e.id == id)?;
            let loaded = read_wav(&entry.wav).and_then(|(samples, sample_rate)| {
                let audio = Audio {
                    sample_rate,
                    samples,
                };
                let mel = self.mel_front_end.log_mel_of(&audio)?;
                Ok(Clip { audio, mel })
            });
            match loaded {
                Ok(clip) => {
                    self.clips.insert(id, clip);
                }
                Err(e) => {
                    self.error(format!("cannot read the clip: {e}"));
                    return None;
                }
            }
        }
        self.clips.get(&id)
    }

    /// Plays clip `id` (a history entry or the input clip) from `start_s` seconds.
    fn play(&mut self, id: u64, start_s: f64) {
        let audio = if id == INPUT_CLIP_ID {
            self.input.as_ref().map(|c| c.audio.clone())
        } else {
            self.clip(id).map(|c| c.audio.clone())
        };
        if let Some(audio) = audio
            && let Err(e) = self.player.play_from(&audio, id, start_s)
        {
            self.error(e.to_string());
        }
    }

    /// Offers history entry `id` as a 16-bit WAV file: a save dialog on the desktop, a download
    /// in a browser.
    pub fn save_as(&mut self, id: u64) {
        let Some(entry) = self.persisted.history.iter().find(|e| e.id == id).cloned() else {
            return;
        };
        let Some(clip) = self.clip(id) else { return };
        let (samples, rate) = (clip.audio.samples.clone(), clip.audio.sample_rate);
        let name = file_name_for(&entry.settings.prompt);
        // What the clip's own file records (the backend, a candidate's score), else the settings
        // again.
        let described = match read_comment(&entry.wav) {
            Ok(Some(comment)) => comment,
            _ => match (&entry.edit, &entry.variation) {
                (Some(edit), _) => edit.description.clone(),
                (None, Some(variation)) => variation.description.clone(),
                (None, None) => entry.settings.describe(),
            },
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            let Some(path) = rfd::FileDialog::new()
                .set_file_name(name)
                .add_filter("WAV audio", &["wav"])
                .save_file()
            else {
                return;
            };
            match write_wav(&path, &samples, rate, WavFormat::Pcm16, Some(&described)) {
                Ok(()) => self.info(format!("Saved {}", path.display())),
                Err(e) => self.error(format!("cannot save the clip: {e}")),
            }
        }
        // A browser saves by downloading.
        #[cfg(target_arch = "wasm32")]
        match crate::audio::wav::wav_bytes(&samples, rate, WavFormat::Pcm16, Some(&described))
            .and_then(|bytes| web::download(&name, &bytes, "audio/wav"))
        {
            Ok(()) => self.info(format!("Downloading {name}")),
            Err(e) => self.error(format!("cannot save the clip: {e}")),
        }
    }

    /// Repeats history entry `id` with the same settings (and source clip, for an edit).
    fn regenerate(&mut self, id: u64) {
        let Some(entry) = self.persisted.history.iter().find(|e| e.id == id).cloned() else {
            return;
        };
        let settings = Settings {
            random_seed: false,
            // An edit (or variation) keeps the panel's own duration; the clip sets the run's.
            duration_s: match entry.edit.is_some() || entry.variation.is_some() {
                true => self.persisted.settings.duration_s,
                false => entry.settings.duration_s,
            },
            ..entry.settings.clone()
        };
        self.persisted.settings = settings.clone();
        if let Some(record) = entry.variation {
            match read_wav(&record.source_wav) {
                Ok((samples, sample_rate)) => {
                    self.persisted.settings.mix = record.mix;
                    let source = Audio {
                        sample_rate,
                        samples,
                    };
                    self.submit_variation(source, record.source_name);
                }
                Err(e) => self.error(format!(
                    "cannot repeat the variation: its source clip is gone: {e}"
                )),
            }
            return;
        }
        let Some(record) = entry.edit else {
            self.generate();
            return;
        };
        match read_wav(&record.source_wav) {
            Ok((samples, sample_rate)) => {
                let edit = EditRequest {
                    request: settings.edit_request(),
                    source: Audio {
                        sample_rate,
                        samples,
                    },
                    source_name: record.source_name,
                    mode: record.mode,
                };
                self.submit_edit(settings, edit);
            }
            Err(e) => self.error(format!(
                "cannot repeat the edit: its source clip is gone: {e}"
            )),
        }
    }

    /// What tells one history from another as it changes (a clip added or removed).
    fn history_signature(&self) -> (usize, Option<u64>) {
        let history = &self.persisted.history;
        (history.len(), history.first().map(|e| e.id))
    }

    /// What the app says of the model field's text (where it leads, or what is wrong with it).
    pub fn model_status(&mut self) -> String {
        self.check_model()
    }

    fn check_model(&mut self) -> String {
        let model = self.persisted.settings.model.trim().to_string();
        if self.model_status.0 != model {
            let status = if model.is_empty() {
                "give a Hugging Face repo id or a folder".to_string()
            } else {
                model_status(&model)
            };
            self.model_status = (model, status);
        }
        self.model_status.1.clone()
    }

    fn messages_ui(&mut self, ui: &mut egui::Ui) {
        let mut dismissed = None;
        for (i, message) in self.messages.iter().enumerate() {
            // Wrapped: a long message (a failure's cause, the browser's CPU note) stays readable.
            ui.horizontal_wrapped(|ui| {
                let colour = match message.severity {
                    Severity::Error => ui.visuals().error_fg_color,
                    Severity::Info => ui.visuals().text_color(),
                };
                if ui.small_button("Dismiss").clicked() {
                    dismissed = Some(i);
                }
                ui.label(RichText::new(&message.text).color(colour));
            });
        }
        if let Some(i) = dismissed {
            self.messages.remove(i);
        }
    }

    fn controls_ui(&mut self, ui: &mut egui::Ui) {
        let running = self.run.is_some();
        let settings = &mut self.persisted.settings;
        let label = ui.label("Prompt");
        let prompt = ui
            .add(
                egui::TextEdit::multiline(&mut settings.prompt)
                    .hint_text("a dog barking in the rain")
                    .desired_rows(3)
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(label.id);
        self.controls.insert("Prompt", prompt.rect);
        let label = ui.label("Negative prompt");
        ui.add(
            egui::TextEdit::multiline(&mut settings.negative)
                .hint_text("low quality")
                .desired_rows(1)
                .desired_width(f32::INFINITY),
        )
        .labelled_by(label.id);
        ui.add_space(6.0);
        ui.spacing_mut().slider_width = 160.0;
        ui.add(egui::Slider::new(&mut settings.guidance, GUIDANCE_RANGE).text("Guidance scale"));
        ui.add(
            egui::Slider::new(&mut settings.steps, STEPS_RANGE)
                .text("Steps")
                .logarithmic(true),
        );
        ui.add(
            egui::Slider::new(&mut settings.duration_s, DURATION_RANGE)
                .text("Duration (s)")
                .step_by(0.01),
        );
        ui.horizontal(|ui| {
            let label = ui.label("Seed");
            ui.add_enabled(
                !settings.random_seed,
                egui::DragValue::new(&mut settings.seed),
            )
            .labelled_by(label.id);
            ui.checkbox(&mut settings.random_seed, "Random seed");
        });
        let candidates = ui
            .add(egui::Slider::new(&mut settings.candidates, CANDIDATES_RANGE).text("Candidates"))
            .on_hover_text(
                "Make this many clips (seeds seed, seed + 1, …) and rank them by how well CLAP \
                 hears the prompt in each; all of them go to the history, the best on top",
            );
        self.controls.insert("Candidates", candidates.rect);
        ui.horizontal(|ui| {
            let label = ui.label("Scheduler");
            egui::ComboBox::from_id_salt("scheduler")
                .selected_text(scheduler_label(settings.scheduler))
                .show_ui(ui, |ui| {
                    for kind in crate::pipeline::SchedulerKind::ALL {
                        ui.selectable_value(&mut settings.scheduler, kind, scheduler_label(kind));
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text(
                    "DPM-Solver++ reaches DDIM's quality in fewer steps; edits always run DDIM",
                );
        });
        ui.add_space(6.0);
        let label = ui.label("Model");
        ui.add(egui::TextEdit::singleline(&mut settings.model).desired_width(f32::INFINITY))
            .labelled_by(label.id);
        ui.horizontal(|ui| {
            let folder = ui.button("Folder…");
            self.controls.insert("Folder…", folder.rect);
            #[cfg(not(target_arch = "wasm32"))]
            if folder.clicked()
                && let Some(dir) = rfd::FileDialog::new().pick_folder()
            {
                settings.model = dir.display().to_string();
            }
            #[cfg(target_arch = "wasm32")]
            if folder.clicked() {
                let picked = std::rc::Rc::clone(&self.picked_folder);
                let egui_ctx = ui.ctx().clone();
                let asked = web::pick_folder(move |folder| {
                    *picked.borrow_mut() = Some(folder);
                    egui_ctx.request_repaint();
                });
                if let Err(e) = asked {
                    self.messages.push(Message {
                        severity: Severity::Error,
                        text: e,
                    });
                }
            }
            if ui.button("Default model").clicked() {
                settings.model = hub::DEFAULT_MODEL.to_string();
            }
        });
        let status = self.check_model();
        ui.label(RichText::new(status).small().weak());
        let settings = &mut self.persisted.settings;
        let label = ui.label("CLAP model (ranking, variations)");
        let companion = hub::clap_companion(&settings.model).unwrap_or("a CLAP repo id or folder");
        ui.add(
            egui::TextEdit::singleline(&mut settings.clap)
                .hint_text(companion)
                .desired_width(f32::INFINITY),
        )
        .labelled_by(label.id)
        .on_hover_text("Empty: the CLAP model converted from the same AudioLDM checkpoint");
        ui.checkbox(&mut self.persisted.low_memory, "Low GPU memory")
            .on_hover_text(
                "Keep only the network each stage needs on the GPU, uploading the next from disk: \
                 about half the GPU memory, a few seconds more per clip (on the CPU, half the \
                 memory)",
            );
        ui.horizontal(|ui| {
            let label = ui.label("Device");
            egui::ComboBox::from_id_salt("device")
                .selected_text(device_label(self.persisted.device))
                .show_ui(ui, |ui| {
                    for device in [DeviceChoice::Auto, DeviceChoice::Gpu, DeviceChoice::Cpu] {
                        ui.selectable_value(
                            &mut self.persisted.device,
                            device,
                            device_label(device),
                        );
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text(
                    "What runs the networks, from the next generation on. Auto: the GPU where it \
                     is a real one, else the processor (much faster than a software GPU); GPU: \
                     the window's GPU, even a software one; CPU: the processor's cores. The \
                     status line says which is in use",
                );
        });
        ui.add_space(8.0);

        ui.horizontal(|ui| {
            let generate = ui.add_enabled(!running, egui::Button::new("Generate"));
            self.controls.insert("Generate", generate.rect);
            if generate.clicked() {
                self.generate();
            }
            generate.on_hover_text("Ctrl+Enter");
            if ui
                .add_enabled(running, egui::Button::new("Cancel"))
                .clicked()
            {
                self.cancel();
            }
        });
        if let Some(run) = &self.run {
            let (fraction, text) = progress_text(run);
            // Not animated: an animation redraws every frame, and on a browser's software or
            // integrated GPU those frames take the time the model's steps need. The text moves
            // with each report, and at least once a second.
            ui.add(egui::ProgressBar::new(fraction).text(text));
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_secs(1));
        }
    }

    fn history_ui(&mut self, ui: &mut egui::Ui) {
        ui.heading("History");
        if self.persisted.history.is_empty() {
            ui.label(RichText::new("Generated clips appear here.").weak());
        }
        let playing = self.player.playing().map(|(id, _)| id);
        let mut action = None;
        egui::ScrollArea::vertical().show(ui, |ui| {
            for entry in &self.persisted.history {
                let selected = self.selected == Some(entry.id);
                egui::Frame::group(ui.style()).show(ui, |ui| {
                    ui.set_width(ui.available_width());
                    let s = &entry.settings;
                    let title = if s.prompt.trim().is_empty() {
                        "(no prompt)".to_string()
                    } else {
                        s.prompt.clone()
                    };
                    if ui.selectable_label(selected, title).clicked() {
                        action = Some(HistoryAction::Select(entry.id));
                    }
                    let negative = if s.negative.is_empty() {
                        String::new()
                    } else {
                        format!(" · not: {}", s.negative)
                    };
                    if let Some(edit) = &entry.edit {
                        ui.label(RichText::new(edit.summary()).small());
                    }
                    if let Some(variation) = &entry.variation {
                        ui.label(RichText::new(variation.summary(&s.prompt)).small());
                    }
                    if let Some((score, n)) = entry.score {
                        ui.label(
                            RichText::new(format!("CLAP score {score:.3} · one of {n} candidates"))
                                .small(),
                        );
                    }
                    ui.label(
                        RichText::new(format!(
                            "{:.2} s · {} steps · guidance {:.1} · seed {}{negative}\n{} · took {:.1} s",
                            s.duration_s, s.steps, s.guidance, s.seed, s.model, entry.took_s
                        ))
                        .small()
                        .weak(),
                    );
                    ui.horizontal_wrapped(|ui| {
                        if playing == Some(entry.id) {
                            if ui.button("Stop").clicked() {
                                action = Some(HistoryAction::Stop);
                            }
                        } else if ui.button("Play").clicked() {
                            action = Some(HistoryAction::Play(entry.id));
                        }
                        if ui.button("Save as WAV…").clicked() {
                            action = Some(HistoryAction::Save(entry.id));
                        }
                        if ui
                            .add_enabled(self.run.is_none(), egui::Button::new("Regenerate"))
                            .clicked()
                        {
                            action = Some(HistoryAction::Regenerate(entry.id));
                        }
                        if ui.button("Use as input").clicked() {
                            action = Some(HistoryAction::UseAsInput(entry.id));
                        }
                        if ui
                            .add_enabled(self.run.is_none(), egui::Button::new("More like this"))
                            .on_hover_text(
                                "A variation: new audio conditioned on this clip's CLAP \
                                 embedding (blended with the prompt by the input panel's mix)",
                            )
                            .clicked()
                        {
                            action = Some(HistoryAction::MoreLikeThis(entry.id));
                        }
                        if ui.button("Remove").clicked() {
                            action = Some(HistoryAction::Remove(entry.id));
                        }
                    });
                });
            }
        });
        match action {
            Some(HistoryAction::Select(id)) => self.selected = Some(id),
            Some(HistoryAction::Play(id)) => {
                self.selected = Some(id);
                self.play(id, 0.0);
            }
            Some(HistoryAction::Stop) => self.player.stop(),
            Some(HistoryAction::Save(id)) => self.save_as(id),
            Some(HistoryAction::Regenerate(id)) => self.regenerate(id),
            Some(HistoryAction::UseAsInput(id)) => self.use_as_input(id),
            Some(HistoryAction::MoreLikeThis(id)) => self.more_like_this(id),
            Some(HistoryAction::Remove(id)) => {
                // A browser's storage is small and shared: the clip's files go with the entry.
                #[cfg(target_arch = "wasm32")]
                for entry in self.persisted.history.iter().filter(|e| e.id == id) {
                    crate::mounted::remove(&entry.wav);
                    if let Some(edit) = &entry.edit {
                        crate::mounted::remove(&edit.source_wav);
                    }
                    if let Some(variation) = &entry.variation {
                        crate::mounted::remove(&variation.source_wav);
                    }
                }
                self.persisted.history.retain(|e| e.id != id);
                self.clips.remove(&id);
                if self.selected == Some(id) {
                    self.selected = None;
                }
            }
            None => {}
        }
    }

    fn main_view_ui(&mut self, ui: &mut egui::Ui) {
        let playing = self.player.playing();
        if let Some(run) = &self.run {
            ui.heading(match (&run.edit, &run.variation) {
                (Some(edit), _) => format!(
                    "Editing {} ({}): {}",
                    edit.source_name,
                    edit.mode.name(),
                    run.settings.prompt
                ),
                (None, Some(variation)) => format!("Varying {}", variation.source_name),
                (None, None) => format!("Generating: {}", run.settings.prompt),
            });
            match &run.preview {
                Some(preview) => {
                    let key = format!("preview {} {:?}", run.id, run.phase);
                    self.spectrogram.show(ui, &key, preview, 280.0, None);
                    ui.label(
                        RichText::new(
                            "Preview of the current clean-latent estimate; the exact spectrogram comes with the audio.",
                        )
                        .small()
                        .weak(),
                    );
                }
                None => {
                    ui.add_space(120.0);
                    ui.vertical_centered(|ui| {
                        ui.label(
                            RichText::new("The spectrogram appears with the first step.").weak(),
                        )
                    });
                }
            }
        } else if let Some(id) = self.selected {
            let prompt = self.prompt_of(id);
            ui.heading(if prompt.is_empty() {
                "(no prompt)".into()
            } else {
                prompt
            });
            if self.clip(id).is_some() {
                let cursor = playing.filter(|(p, _)| *p == id).map(|(_, t)| t);
                let mut play = false;
                let mut stop = false;
                ui.horizontal(|ui| {
                    if cursor.is_some() {
                        stop = ui.button("Stop").clicked();
                    } else {
                        let button = ui.button("Play");
                        self.controls.insert("Play", button.rect);
                        play = button.clicked();
                    }
                });
                let mut seek = None;
                if let Some(clip) = self.clips.get(&id) {
                    seek =
                        self.spectrogram
                            .show(ui, &format!("clip {id}"), &clip.mel, 280.0, cursor);
                }
                if play {
                    self.play(id, 0.0);
                }
                if let Some(t) = seek {
                    self.play(id, t);
                }
                if stop {
                    self.player.stop();
                }
            }
        } else {
            ui.heading("AudioLDM");
            ui.label("Type what you want to hear and press Generate (Ctrl+Enter).");
        }
        ui.add_space(12.0);
        ui.separator();
        self.input_ui(ui, playing);
    }

    fn input_ui(&mut self, ui: &mut egui::Ui, playing: Option<(u64, f64)>) {
        ui.heading("Input clip");
        let Some(input) = &self.input else {
            egui::Frame::group(ui.style()).show(ui, |ui| {
                ui.set_width(ui.available_width());
                ui.set_height(80.0);
                ui.centered_and_justified(|ui| {
                    ui.label(RichText::new("Drop an audio file here (wav, flac, mp3, ogg)").weak());
                });
            });
            return;
        };
        ui.label(format!(
            "{} · {:.2} s at {} Hz",
            input.name,
            input.audio.duration_s(),
            input.audio.sample_rate
        ));
        let cursor = playing.filter(|(p, _)| *p == INPUT_CLIP_ID).map(|(_, t)| t);
        let (mut play, mut stop, mut clear) = (false, false, false);
        ui.horizontal(|ui| {
            if cursor.is_some() {
                stop = ui.button("Stop").clicked();
            } else {
                play = ui.button("Play input").clicked();
            }
            clear = ui.button("Clear input").clicked();
        });
        spectrogram::waveform(ui, &input.audio.samples, 60.0);
        let settings = &mut self.persisted.settings;
        let kind = settings.edit;
        let overlay = Overlay {
            ranges: if kind == EditKind::Inpaint {
                &input.ranges
            } else {
                &[]
            },
            cutoff_hz: (kind == EditKind::SuperResolution).then_some(settings.cutoff_hz),
            select_ranges: kind == EditKind::Inpaint,
            label: Some("Input spectrogram"),
        };
        let key = format!("input {}", input.name);
        let interaction = self
            .input_spectrogram
            .show_with(ui, &key, &input.mel, 160.0, cursor, &overlay);

        ui.add_space(6.0);
        ui.horizontal_wrapped(|ui| {
            ui.label("Edit:");
            for kind in EditKind::ALL {
                ui.selectable_value(&mut settings.edit, kind, kind.label());
            }
        });
        let mut remove_range = None;
        match settings.edit {
            EditKind::StyleTransfer => {
                ui.add(egui::Slider::new(&mut settings.strength, STRENGTH_RANGE).text("Strength"));
                ui.label(
                    RichText::new(
                        "How much of the clip is noised away and redrawn: low keeps its shape, 1 \
                         keeps nothing.",
                    )
                    .small()
                    .weak(),
                );
            }
            EditKind::Inpaint => {
                if input.ranges.is_empty() {
                    ui.label(
                        RichText::new("Drag over the spectrogram to mark ranges to regenerate.")
                            .small()
                            .weak(),
                    );
                }
                for (i, (start, end)) in input.ranges.iter().enumerate() {
                    ui.horizontal(|ui| {
                        ui.label(format!("Regenerate {start:.2}-{end:.2} s"));
                        if ui.small_button("Remove range").clicked() {
                            remove_range = Some(i);
                        }
                    });
                }
            }
            EditKind::SuperResolution => {
                ui.add(
                    egui::Slider::new(&mut settings.cutoff_hz, CUTOFF_RANGE)
                        .text("Cutoff (Hz)")
                        .step_by(50.0),
                );
                ui.label(
                    RichText::new(format!(
                        "Keeps the clip below the line and generates the bands above it (this \
                         file was recorded at {} Hz).",
                        input.audio.sample_rate
                    ))
                    .small()
                    .weak(),
                );
            }
            EditKind::Extend => {
                ui.add(
                    egui::Slider::new(&mut settings.extend_s, EXTEND_RANGE)
                        .text("Seconds to add")
                        .step_by(0.01),
                );
            }
        }
        let running = self.run.is_some();
        let generate = ui
            .add_enabled(!running, egui::Button::new("Generate edit"))
            .on_hover_text("Runs the edit with the prompt, guidance, steps and seed on the left.");
        self.controls.insert("Generate edit", generate.rect);
        let generate = generate.clicked();
        ui.separator();
        let settings = &mut self.persisted.settings;
        ui.add(egui::Slider::new(&mut settings.mix, MIX_RANGE).text("Prompt mix"))
            .on_hover_text(
                "How much of the prompt goes into a variation: 0 is the clip alone, 1 the prompt \
                 alone; without a prompt, the clip alone",
            );
        let vary = ui
            .add_enabled(!running, egui::Button::new("Variations"))
            .on_hover_text(
                "New audio that sounds like this clip: conditioned on its CLAP audio embedding",
            );
        self.controls.insert("Variations", vary.rect);
        let vary = vary.clicked();
        if let Some(input) = &mut self.input {
            if let Some(range) = interaction.selected {
                input.add_range(range);
            }
            if let Some(i) = remove_range {
                input.ranges.remove(i);
            }
        }
        if generate {
            self.generate_edit();
        }
        if vary {
            self.generate_variation();
        }
        if play {
            self.play(INPUT_CLIP_ID, 0.0);
        }
        if let Some(t) = interaction.clicked {
            self.play(INPUT_CLIP_ID, t);
        }
        if stop {
            self.player.stop();
        }
        if clear {
            self.input = None;
        }
    }

    fn drop_ui(&mut self, ctx: &egui::Context) {
        let (hovering, dropped) =
            ctx.input(|i| (!i.raw.hovered_files.is_empty(), i.raw.dropped_files.clone()));
        if hovering {
            let screen = ctx.content_rect();
            egui::Area::new(egui::Id::unique("drop overlay"))
                .order(egui::Order::Foreground)
                .fixed_pos(screen.min)
                .interactable(false)
                .show(ctx, |ui| {
                    egui::Frame::NONE
                        .fill(Color32::from_black_alpha(190))
                        .show(ui, |ui| {
                            ui.set_min_size(screen.size());
                            ui.centered_and_justified(|ui| {
                                ui.label(
                                    RichText::new("Drop to load as the input clip")
                                        .size(28.0)
                                        .color(Color32::WHITE),
                                );
                            });
                        });
                });
        }
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(file) = dropped.first() {
            self.load_input(file.path());
        }
        // A browser reads a dropped file only asynchronously: its bytes are kept where the
        // readers find them ([`crate::untrusted::write_file`]) and loaded on a later frame.
        #[cfg(target_arch = "wasm32")]
        if let Some(file) = dropped.first().cloned() {
            let arrived = std::rc::Rc::clone(&self.dropped);
            let egui_ctx = ctx.clone();
            wasm_bindgen_futures::spawn_local(async move {
                let path = Path::new("/dropped").join(file.path());
                let stored = file
                    .bytes_async()
                    .await
                    .and_then(|bytes| {
                        crate::untrusted::write_file(&path, &bytes).map_err(|e| e.to_string())
                    })
                    .map(|()| path);
                arrived.borrow_mut().push(stored);
                egui_ctx.request_repaint();
            });
        }
        #[cfg(target_arch = "wasm32")]
        {
            let arrived: Vec<_> = self.dropped.borrow_mut().drain(..).collect();
            for stored in arrived {
                match stored {
                    Ok(path) => self.load_input(&path),
                    Err(e) => self.error(format!("cannot read the dropped file: {e}")),
                }
                // This frame's panels are drawn already: the next one shows the clip.
                ctx.request_repaint();
            }
        }
    }

    /// What the browser has finished in the background: a picked model folder mounted, clips
    /// that its storage could not keep.
    #[cfg(target_arch = "wasm32")]
    fn browser_arrivals(&mut self) {
        let picked = self.picked_folder.borrow_mut().take();
        match picked {
            Some(Ok(folder)) => {
                self.persisted.settings.model = folder.display().to_string();
                self.model_status = (String::new(), String::new());
            }
            Some(Err(e)) => self.error(format!("cannot use the picked folder: {e}")),
            None => {}
        }
        for e in crate::mounted::take_persist_errors() {
            self.error(e);
        }
    }
}

/// Where clips are kept unless the options say: `clips/` in eframe's storage folder on the
/// desktop; in a browser, with the page's files in memory.
fn default_data_dir() -> PathBuf {
    #[cfg(target_arch = "wasm32")]
    return PathBuf::from("/clips");
    #[cfg(not(target_arch = "wasm32"))]
    eframe::storage_dir(APP_ID)
        .map(|d| d.join("clips"))
        .unwrap_or_else(|| std::env::temp_dir().join("audioldm-clips"))
}

/// Makes the clip folder (a browser's needs none).
fn make_dir(dir: &Path) -> crate::Result<()> {
    #[cfg(not(target_arch = "wasm32"))]
    std::fs::create_dir_all(dir).map_err(|source| crate::Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    #[cfg(target_arch = "wasm32")]
    let _ = dir;
    Ok(())
}

/// Where the model field's text leads, without touching the network.
fn model_status(model: &str) -> String {
    #[cfg(not(target_arch = "wasm32"))]
    return match hub::find_cached(model, &hub::ResolveOptions::default()) {
        Ok(Some(_)) if Path::new(model).is_dir() => "a local folder".to_string(),
        Ok(Some(_)) => "in the Hugging Face cache".to_string(),
        Ok(None) => "downloads on first use".to_string(),
        Err(e) => e.to_string(),
    };
    #[cfg(target_arch = "wasm32")]
    if Path::new(model).starts_with(hub::web::LOCAL_ROOT) {
        return if crate::mounted::is_dir(Path::new(model)) {
            "a folder picked in this visit".to_string()
        } else {
            "a folder picked in an earlier visit: pick it again with \"Folder…\"".to_string()
        };
    }
    #[cfg(target_arch = "wasm32")]
    match hub::web::base_url(model) {
        Ok(url) => format!("from {url}, kept in this browser's cache after the first visit"),
        Err(e) => e.to_string(),
    }
}

enum HistoryAction {
    Select(u64),
    Play(u64),
    Stop,
    Save(u64),
    Regenerate(u64),
    UseAsInput(u64),
    MoreLikeThis(u64),
    Remove(u64),
}

/// The progress bar's fill and text for `run`.
fn progress_text(run: &Run) -> (f32, String) {
    let (fraction, text) = phase_text(run);
    match run.candidate {
        Some((k, n)) if run.phase != Phase::Scoring => (
            ((k - 1) as f32 + fraction) / n as f32,
            format!("Candidate {k}/{n} · {text}"),
        ),
        _ => (fraction, text),
    }
}

/// The progress bar's fill and text for the phase of `run` alone.
fn phase_text(run: &Run) -> (f32, String) {
    match &run.phase {
        Phase::Resolving => (0.0, "Finding the model…".into()),
        Phase::Downloading { file, fraction } => (
            *fraction,
            format!("Downloading {file} ({:.0}%)", fraction * 100.0),
        ),
        Phase::Loading => (
            0.0,
            format!(
                "Loading the model{}… {:.0} s",
                match run.backend {
                    Some((_, true)) => "",
                    _ => " onto the GPU",
                },
                run.started.elapsed().as_secs_f64()
            ),
        ),
        Phase::Cancelling => (0.0, "Cancelling…".into()),
        Phase::Scoring => (1.0, "Scoring the candidates with CLAP…".into()),
        Phase::Denoising { i, n } => {
            let fraction = *i as f32 / (*n).max(1) as f32;
            let left = run
                .denoising_started
                .filter(|_| *i > 0)
                .map(|t| t.elapsed().as_secs_f64() / *i as f64 * (n - i) as f64);
            let text = match left {
                Some(s) if i < n => format!("Step {i}/{n} · about {s:.0} s left"),
                _ if i >= n => format!("Step {i}/{n} · decoding…"),
                _ => format!("Step {i}/{n}"),
            };
            (fraction, text)
        }
    }
}

fn device_label(device: DeviceChoice) -> &'static str {
    match device {
        DeviceChoice::Auto => "Auto",
        DeviceChoice::Gpu => "GPU",
        DeviceChoice::Cpu => "CPU",
    }
}

/// What runs the networks of the device setting `device`, before the worker has said: the name
/// [`backend_label`] gives (for the renderer's device, or the CPU backend).
fn expected_backend_name(device: DeviceChoice, shared: Option<&Context>) -> String {
    let shared_type = shared.map(|c| c.adapter_info().device_type);
    match (choose_backend(device, shared_type), shared) {
        (Backend::Cpu { .. }, _) => Context::cpu().backend_name(),
        (Backend::Shared, Some(ctx)) => backend_label(ctx),
        (Backend::Shared | Backend::OwnGpu, _) => {
            "GPU: no renderer's device to share, the engine makes its own at the first generation"
                .to_string()
        }
    }
}

/// A clip's settings with what ran `run` added (when the worker said).
fn with_backend(settings: &str, run: &Run) -> String {
    match &run.backend {
        Some((backend, _)) => settings_with_backend(settings, backend),
        None => settings.to_string(),
    }
}

fn scheduler_label(kind: crate::pipeline::SchedulerKind) -> &'static str {
    match kind {
        crate::pipeline::SchedulerKind::Ddim => "DDIM",
        crate::pipeline::SchedulerKind::DpmSolverPlusPlus => "DPM-Solver++",
    }
}

/// A file name for a clip from its prompt: letters, digits and dashes.
fn file_name_for(prompt: &str) -> String {
    let stem: String = prompt
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .take(8)
        .collect::<Vec<_>>()
        .join("-");
    format!("{}.wav", if stem.is_empty() { "clip" } else { &stem })
}

impl eframe::App for AudioLdmApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.handle_reports();
        #[cfg(target_arch = "wasm32")]
        self.browser_arrivals();
        // Taken before the prompt box sees it (it would insert a newline), acted on after the
        // panels: text typed in the same frame is then already in the settings.
        let generate_requested = ctx.input_mut(|i| {
            i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::Enter))
        });
        egui::Panel::bottom("status").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.label(RichText::new(self.backend_status()).small().weak());
            });
        });
        if !self.messages.is_empty() {
            egui::Panel::top("messages").show(ui, |ui| self.messages_ui(ui));
        }
        egui::Panel::left("controls")
            .resizable(true)
            .default_size(320.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.controls_ui(ui));
            });
        egui::Panel::right("history")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| self.history_ui(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| self.main_view_ui(ui));
        });
        self.drop_ui(&ctx);
        if generate_requested && self.run.is_none() {
            self.generate();
        }
        if self.player.playing().is_some() {
            ctx.request_repaint_after(std::time::Duration::from_millis(33));
        }
        // A changed history is saved at once, not at eframe's next autosave: a closed browser
        // tab gives no chance to save (eframe 0.37 listens for "onbeforeunload", which never
        // fires), and a crashed desktop app none either.
        let history = self.history_signature();
        if history != self.saved_history
            && let Some(storage) = frame.storage_mut()
        {
            eframe::App::save(self, storage);
            storage.flush();
            self.saved_history = history;
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.persisted);
    }

    /// Lets the web page reach the app ([`web::with_app`]).
    #[cfg(target_arch = "wasm32")]
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::file_name_for;

    #[test]
    fn file_names_come_from_the_prompt() {
        assert_eq!(file_name_for("A dog, barking!"), "A-dog-barking.wav");
        assert_eq!(file_name_for("  "), "clip.wav");
        assert_eq!(file_name_for("ünïcode 音"), "ünïcode-音.wav");
    }
}
