//! Text-to-audio, as diffusers' `AudioLDMPipeline` does it: prompt in, waveform out, with progress
//! events and cancellation between steps. Knows nothing of any front end: the CLI and the desktop
//! app both call [`Pipeline::generate`] (or [`run`], which loads first).

pub mod ddim;
pub mod dpm;
pub mod edit;
pub mod ranking;
pub mod variation;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub use crate::audio::{Audio, Mel};
use crate::engine::{Context, DType, Executable, Graph, GraphStats, Profile, Scalar, Tensor, Var};
use crate::error::{Error, Result};
use crate::model::clap_text::ClapTextModelWithProjection;
use crate::model::nn::{Loader, Precision};
use crate::model::tokenizer::TextTokenizer;
use crate::model::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::model::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::model::vocoder::{SpeechT5HifiGan, SpeechT5HifiGanConfig};
use crate::noise;

use ddim::{DdimScheduler, StepCoefficients};

/// The sampler a run denoises with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SchedulerKind {
    /// DDIM, the checkpoints' own scheduler (diffusers' `DDIMScheduler`).
    #[default]
    Ddim,
    /// DPM-Solver++ 2M (diffusers' `DPMSolverMultistepScheduler` from the same config): about
    /// as good in fewer steps.
    DpmSolverPlusPlus,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 2] = [SchedulerKind::Ddim, SchedulerKind::DpmSolverPlusPlus];

    /// The name the CLI takes and the WAV comment records.
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::DpmSolverPlusPlus => "dpm++",
        }
    }

    /// The scheduler called `name` (case-insensitive); an error lists the known ones.
    pub fn parse(name: &str) -> Result<Self> {
        let wanted = name.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|s| s.name() == wanted)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|s| s.name()).collect();
                Error::Input(format!(
                    "unknown scheduler {name:?}; the known ones are {}",
                    known.join(", ")
                ))
            })
    }
}

/// The longest clip a request may ask for: the VAE's activations are split to fit any binding,
/// but beyond it the vocoder's widest (32 channels at 16 kHz, 123 MB at 60 s) would outgrow one
/// binding under WebGPU's default limits (128 MiB).
pub const MAX_DURATION_S: f64 = 60.0;

/// What to generate. `Default` gives diffusers' defaults (10 steps, guidance 2.5, eta 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub prompt: String,
    /// `None` is the empty (unconditional) negative prompt, as in diffusers.
    pub negative_prompt: Option<String>,
    pub steps: usize,
    pub guidance_scale: f32,
    /// Seconds of audio; `None` takes the model's default (`sample_size` latent frames: 5.12 s).
    pub duration_s: Option<f64>,
    pub seed: u32,
    pub eta: f32,
    /// Initial latents `[1, C, frames, width]` instead of seeded noise.
    pub init_latents: Option<Vec<f32>>,
    /// An L2-normalised embedding `[dim]` to condition on instead of the prompt's (a variation:
    /// a clip's CLAP audio embedding, or its blend with the prompt's; see [`variation`]). The
    /// negative row is still the negative prompt's.
    pub conditioning: Option<Vec<f32>>,
    pub scheduler: SchedulerKind,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: None,
            steps: 10,
            guidance_scale: 2.5,
            duration_s: None,
            seed: 0,
            eta: 0.0,
            init_latents: None,
            conditioning: None,
            scheduler: SchedulerKind::Ddim,
        }
    }
}

impl Request {
    /// The settings as JSON, for a clip's metadata (the WAV comment the CLI and the app write);
    /// `default_duration_s` stands in when the request leaves the duration to the model.
    pub fn describe(&self, model: &str, default_duration_s: f64) -> String {
        serde_json::Value::Object(self.settings(model, default_duration_s)).to_string()
    }

    /// [`Self::describe`]'s fields, for the modes that add their own (edits, variations,
    /// candidates).
    pub fn settings(
        &self,
        model: &str,
        default_duration_s: f64,
    ) -> serde_json::Map<String, serde_json::Value> {
        let serde_json::Value::Object(settings) = serde_json::json!({
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "duration_s": self.duration_s.unwrap_or(default_duration_s),
            "seed": self.seed,
            "eta": self.eta,
            "scheduler": match self.scheduler {
                SchedulerKind::Ddim => "DDIM",
                SchedulerKind::DpmSolverPlusPlus => "DPM-Solver++ 2M",
            },
            "model": model,
            "initial_latents": if self.init_latents.is_some() { "injected" } else { "seeded" },
            "conditioning": if self.conditioning.is_some() { "embedding" } else { "prompt" },
        }) else {
            unreachable!("json! of an object literal is an object")
        };
        settings
    }
}

/// A clip's settings (a JSON object, as [`Request::describe`] and the modes' `describe` make it)
/// with what ran its networks added as `backend` ([`Context::backend_name`]): the WAV comment the
/// CLI and the app write. Text that is not a JSON object is returned as it is.
pub fn settings_with_backend(settings: &str, backend: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(settings) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("backend".into(), backend.into());
            serde_json::Value::Object(map).to_string()
        }
        _ => settings.to_string(),
    }
}

/// Everything a generation produced.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub audio: Audio,
    /// The decoded mel spectrogram (exact, from the VAE).
    pub mel: Mel,
    /// Final latents `[1, C, frames, width]` as the scheduler left them (before VAE scaling).
    pub latents: Vec<f32>,
    pub latent_shape: [usize; 4],
    /// Text embeddings `[rows, dim]` in diffusers' order: negative first when guidance is on.
    pub text_embeds: Vec<f32>,
    pub text_embeds_shape: [usize; 2],
    /// Edits: the source clip's latents (posterior sample times the scaling factor)
    /// `[1, C, clip frames, width]`; empty for text-to-audio.
    pub source_latents: Vec<f32>,
    pub source_latent_shape: [usize; 4],
    /// Masked edits: `[frames, width]` over the result's latents, 1 on kept cells.
    pub mask: Option<Vec<f32>>,
}

/// What the shared denoising loop runs: its start, the steps it takes (a tail of the schedule
/// for style transfer), and the region it holds to known latents.
struct Plan {
    shape: [usize; 4],
    initial: Vec<f32>,
    steps: Vec<StepCoefficients>,
    known: Option<Known>,
}

/// Latents held by a mask: before every step the kept cells are set to the known latents noised
/// to that step's level, and after the last step to the known latents themselves.
struct Known {
    /// `[1, C, frames, width]`.
    latents: Vec<f32>,
    /// `[frames, width]`, 1 on kept cells, broadcast over channels.
    mask: Vec<f32>,
    /// The per-step forward noise of the kept cells.
    noise: noise::LegacyNormal,
}

impl Known {
    /// Sets every kept cell `k` of `x` to `value(k, known[k])`.
    fn impose(&self, x: &mut [f32], value: impl Fn(usize, f32) -> f32) {
        let cells = self.mask.len();
        for (k, v) in x.iter_mut().enumerate() {
            if self.mask[k % cells] != 0.0 {
                *v = value(k, self.latents[k]);
            }
        }
    }

    /// `mask * known + (1 - mask) * x`.
    fn hold(&self, x: &[f32]) -> Vec<f32> {
        let mut out = x.to_vec();
        self.impose(&mut out, |_, z0| z0);
        out
    }
}

/// Progress of [`run`] and [`Pipeline::generate`].
#[derive(Clone, Debug)]
pub enum Event {
    Loaded {
        model: PathBuf,
    },
    /// Step `i` (1-based) of `n` done; `preview` is a cheap look at the current clean estimate.
    Step {
        i: usize,
        n: usize,
        preview: Mel,
    },
    /// Candidate `k` (1-based) of `n` starts (ranked runs, [`ranking`]).
    Candidate {
        k: usize,
        n: usize,
    },
    /// CLAP is scoring the candidates.
    Scoring,
    Done(Box<Output>),
    Failed(String),
}

/// The latent and audio sizes a duration maps to, as diffusers' `AudioLDMPipeline.__call__` and
/// `prepare_latents` compute them (`pipelines/audioldm/pipeline_audioldm.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lengths {
    pub mel_frames: usize,
    pub latent_frames: usize,
    pub latent_width: usize,
    pub samples: usize,
}

/// The step graph of one latent shape, recorded once and replayed every step.
struct StepGraph {
    shape: [usize; 4],
    guided: bool,
    exe: Executable,
    latents: Tensor,
    embeds: Tensor,
    noise: Tensor,
    /// The previous step's clean estimate (fed back after every step).
    prev_clean: Tensor,
    timestep: Scalar,
    guidance: Scalar,
    x0_scale: Scalar,
    x0_eps: Scalar,
    x_coef: Scalar,
    clean_coef: Scalar,
    eps_coef: Scalar,
    prev_coef: Scalar,
    sigma: Scalar,
}

/// GPU memory of a loaded model and of its last run, from the engine's buffer accounting
/// ([`Context::gpu_memory`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Bytes of each network's weights on the GPU, in load order.
    pub weights: Vec<(&'static str, u64)>,
    /// The stages of the last run, in order.
    pub stages: Vec<StageMemory>,
}

/// One stage of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageMemory {
    pub stage: &'static str,
    /// Storage bytes alive at the stage's peak: resident weights, its activations and whatever
    /// else was alive (the cached step graph).
    pub peak_bytes: u64,
    /// What the stage added at its peak over what was alive when it started.
    pub activation_bytes: u64,
}

impl MemoryReport {
    pub fn weight_bytes(&self) -> u64 {
        self.weights.iter().map(|(_, bytes)| bytes).sum()
    }

    /// The most GPU memory the last run held at once.
    pub fn peak_bytes(&self) -> u64 {
        self.stages.iter().map(|s| s.peak_bytes).max().unwrap_or(0)
    }
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
        write!(
            f,
            "GPU memory: peak {:.0} MiB; weights {:.0} MiB (",
            mib(self.peak_bytes()),
            mib(self.weight_bytes())
        )?;
        for (i, (name, bytes)) in self.weights.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {:.0}", mib(*bytes))?;
        }
        write!(f, ")")?;
        for stage in &self.stages {
            write!(
                f,
                "; {} +{:.0} MiB (peak {:.0})",
                stage.stage,
                mib(stage.activation_bytes),
                mib(stage.peak_bytes)
            )?;
        }
        Ok(())
    }
}

/// Where the networks' weights live between the stages that use them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Residency {
    /// All four on the GPU from load on: fastest between runs (the desktop default).
    #[default]
    AllResident,
    /// Only the network the current stage needs: each is uploaded from its memory-mapped
    /// checkpoint when its stage starts and freed when it ends (peak: the UNet and its step).
    LowMemory,
}

impl Residency {
    /// [`Residency::LowMemory`] when a front end's low-memory switch is on.
    pub fn from_low_memory(low_memory: bool) -> Self {
        if low_memory {
            Self::LowMemory
        } else {
            Self::AllResident
        }
    }
}

/// A network the pipeline loads from its folder of the model.
trait Component: Sized {
    async fn load(loader: &Loader<'_>, dir: &Path) -> Result<Self>;
}

impl Component for ClapTextModelWithProjection {
    async fn load(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        Self::load_async(loader, dir).await
    }
}

impl Component for UNet2DConditionModel {
    async fn load(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        Self::load_async(loader, dir).await
    }
}

impl Component for AutoencoderKL {
    async fn load(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        Self::load_async(loader, dir).await
    }
}

impl Component for SpeechT5HifiGan {
    async fn load(loader: &Loader<'_>, dir: &Path) -> Result<Self> {
        Self::load_async(loader, dir).await
    }
}

/// One network of the pipeline: its weights kept on the GPU, or loaded for each stage.
struct Network<T> {
    resident: Option<Arc<T>>,
    dir: PathBuf,
}

impl<T: Component> Network<T> {
    /// Loads the network in `dir` once (which checks its files and config), records its weight
    /// bytes under `name` in `weights` (what the load left alive on the GPU), and keeps it when
    /// `residency` says so. Returns it with what `config` takes from the loaded model; a
    /// low-memory pipeline frees the weights before the next network loads.
    async fn load<C>(
        loader: &Loader<'_>,
        residency: Residency,
        weights: &mut Vec<(&'static str, u64)>,
        name: &'static str,
        dir: PathBuf,
        config: impl FnOnce(&T) -> C,
    ) -> Result<(Self, C)> {
        let live = loader.ctx.gpu_memory().live;
        let model = T::load(loader, &dir).await?;
        weights.push((name, loader.ctx.gpu_memory().live.saturating_sub(live)));
        let config = config(&model);
        let resident = (residency == Residency::AllResident).then(|| Arc::new(model));
        Ok((Self { resident, dir }, config))
    }

    /// The network's weights on the GPU for one stage: the resident copy, or a fresh upload
    /// that is freed when the returned handle is dropped.
    async fn get(&self, loader: &Loader<'_>) -> Result<Arc<T>> {
        match &self.resident {
            Some(model) => Ok(Arc::clone(model)),
            None => Ok(Arc::new(T::load(loader, &self.dir).await?)),
        }
    }
}

/// A stage being measured (see [`Pipeline::begin_stage`]).
struct StageMeter {
    stage: &'static str,
    base: u64,
}

/// A loaded model: the four networks, the tokenizer and the scheduler on one GPU context.
pub struct Pipeline {
    ctx: Context,
    dir: PathBuf,
    precision: Precision,
    residency: Residency,
    tokenizer: TextTokenizer,
    text_encoder: Network<ClapTextModelWithProjection>,
    unet: Network<UNet2DConditionModel>,
    vae: Network<AutoencoderKL>,
    vocoder: Network<SpeechT5HifiGan>,
    unet_config: UNet2DConditionConfig,
    vae_config: AutoencoderKLConfig,
    vocoder_config: SpeechT5HifiGanConfig,
    scheduler: DdimScheduler,
    step_graph: Mutex<Option<StepGraph>>,
    /// 0: one submit per graph run; else at most this many dispatches per submit.
    dispatches_per_submit: AtomicUsize,
    memory: Mutex<MemoryReport>,
}

/// Loads the model in `dir` and generates `request`, reporting every stage through `on_event`
/// (including failure, which is also returned).
#[cfg(not(target_arch = "wasm32"))]
pub fn run(
    ctx: &Context,
    dir: &Path,
    precision: Precision,
    request: &Request,
    cancel: &AtomicBool,
    mut on_event: impl FnMut(Event),
) -> Result<Output> {
    let result = Pipeline::load(ctx, dir, precision).and_then(|pipeline| {
        on_event(Event::Loaded {
            model: dir.to_path_buf(),
        });
        pipeline.generate(request, cancel, &mut on_event)
    });
    match result {
        Ok(output) => {
            on_event(Event::Done(Box::new(output.clone())));
            Ok(output)
        }
        Err(e) => {
            on_event(Event::Failed(e.to_string()));
            Err(e)
        }
    }
}

fn check_finite(stage: &str, values: &[f32]) -> Result<()> {
    if values.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::NonFinite {
            stage: stage.to_string(),
        })
    }
}

impl Pipeline {
    /// Loads a diffusers-layout AudioLDM folder (`unet/`, `vae/`, `text_encoder/`, `vocoder/`,
    /// `tokenizer/`, `scheduler/`) with every network resident on the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(ctx: &Context, dir: &Path, precision: Precision) -> Result<Self> {
        Self::load_with(ctx, dir, precision, Residency::AllResident)
    }

    /// [`Pipeline::load`] with a choice of where the weights live between stages. Every network
    /// is loaded once either way, so a broken file is an error now, not in the middle of a run.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_with(
        ctx: &Context,
        dir: &Path,
        precision: Precision,
        residency: Residency,
    ) -> Result<Self> {
        pollster::block_on(Self::load_async(ctx, dir, precision, residency))
    }

    /// [`Pipeline::load_with`] without blocking: in a browser the weights are read from the
    /// page's files as each tensor is needed.
    pub async fn load_async(
        ctx: &Context,
        dir: &Path,
        precision: Precision,
        residency: Residency,
    ) -> Result<Self> {
        if !crate::untrusted::is_dir(dir) {
            return Err(Error::Input(format!(
                "model folder {} does not exist",
                dir.display()
            )));
        }
        let ctx = &precision.arithmetic_context(ctx);
        let loader = Loader { ctx, precision };
        let tokenizer = TextTokenizer::from_dir(&dir.join("tokenizer"))?;
        let mut weights = Vec::new();
        let (text_encoder, ()) = Network::<ClapTextModelWithProjection>::load(
            &loader,
            residency,
            &mut weights,
            "text encoder",
            dir.join("text_encoder"),
            |_| (),
        )
        .await?;
        let (unet, unet_config) = Network::<UNet2DConditionModel>::load(
            &loader,
            residency,
            &mut weights,
            "UNet",
            dir.join("unet"),
            |m| m.config.clone(),
        )
        .await?;
        let (vae, vae_config) = Network::<AutoencoderKL>::load(
            &loader,
            residency,
            &mut weights,
            "VAE",
            dir.join("vae"),
            |m| m.config.clone(),
        )
        .await?;
        let (vocoder, vocoder_config) = Network::<SpeechT5HifiGan>::load(
            &loader,
            residency,
            &mut weights,
            "vocoder",
            dir.join("vocoder"),
            |m| m.config.clone(),
        )
        .await?;
        let pipeline = Self {
            ctx: ctx.clone(),
            dir: dir.to_path_buf(),
            precision,
            residency,
            tokenizer,
            text_encoder,
            unet,
            vae,
            vocoder,
            unet_config,
            vae_config,
            vocoder_config,
            scheduler: DdimScheduler::load(&dir.join("scheduler"))?,
            step_graph: Mutex::new(None),
            dispatches_per_submit: AtomicUsize::new(0),
            memory: Mutex::new(MemoryReport {
                weights,
                stages: Vec::new(),
            }),
        };
        tracing::info!(model = %dir.display(), "AudioLDM loaded");
        Ok(pipeline)
    }

    /// On a device shared with a renderer (the desktop app), runs each graph in submits of at
    /// most `n` dispatches so that frames are drawn in between (see
    /// [`Executable::set_max_dispatches_per_submit`]); `None` is one submit per run.
    pub fn set_max_dispatches_per_submit(&self, n: Option<usize>) {
        self.dispatches_per_submit
            .store(n.unwrap_or(0), Ordering::Relaxed);
    }

    fn dispatches_per_submit(&self) -> Option<usize> {
        match self.dispatches_per_submit.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    fn loader(&self) -> Loader<'_> {
        Loader {
            ctx: &self.ctx,
            precision: self.precision,
        }
    }

    pub fn residency(&self) -> Residency {
        self.residency
    }

    /// GPU memory of the model's weights and, per stage, of its last run.
    pub fn memory_report(&self) -> MemoryReport {
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the last run's stages: a run starts.
    fn begin_run(&self) {
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stages
            .clear();
    }

    /// Starts measuring a stage's GPU memory.
    fn begin_stage(&self, stage: &'static str) -> StageMeter {
        self.ctx.reset_peak_memory();
        StageMeter {
            stage,
            base: self.ctx.gpu_memory().live,
        }
    }

    fn end_stage(&self, meter: StageMeter) {
        let peak = self.ctx.gpu_memory().peak;
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stages
            .push(StageMemory {
                stage: meter.stage,
                peak_bytes: peak,
                activation_bytes: peak.saturating_sub(meter.base),
            });
    }

    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    pub fn sample_rate(&self) -> u32 {
        self.vocoder_config.sampling_rate
    }

    /// The model's default clip length (diffusers: `sample_size * vae_scale * hop`).
    pub fn default_duration_s(&self) -> f64 {
        let size = self.unet_config.sample_size.unwrap_or(128);
        size as f64 * self.vae_scale_factor() as f64 * self.seconds_per_frame()
    }

    /// The clip length whose latents have `frames` frames (for injected latents).
    pub fn duration_for_latent_frames(&self, frames: usize) -> f64 {
        (frames * self.vae_scale_factor()) as f64 * self.seconds_per_frame()
    }

    fn vae_scale_factor(&self) -> usize {
        1 << (self.vae_config.block_out_channels.len().saturating_sub(1))
    }

    fn seconds_per_frame(&self) -> f64 {
        let hop: usize = self.vocoder_config.upsample_rates.iter().product();
        hop as f64 / self.vocoder_config.sampling_rate as f64
    }

    /// Latent and audio sizes for a duration, exactly as diffusers computes them.
    pub fn lengths(&self, duration_s: f64) -> Result<Lengths> {
        let factor = self.seconds_per_frame();
        let scale = self.vae_scale_factor();
        let shortest = factor * scale as f64;
        if !duration_s.is_finite() || duration_s < shortest {
            return Err(Error::Input(format!(
                "the duration must be at least {shortest} s, got {duration_s} s"
            )));
        }
        if duration_s > MAX_DURATION_S {
            return Err(Error::Input(format!(
                "the duration must be at most {MAX_DURATION_S} s, got {duration_s} s"
            )));
        }
        let mut height = (duration_s / factor) as usize;
        if !height.is_multiple_of(scale) {
            height = height.div_ceil(scale) * scale;
        }
        Ok(Lengths {
            mel_frames: height,
            latent_frames: height / scale,
            latent_width: self.vocoder_config.model_in_dim / scale,
            samples: (duration_s * self.vocoder_config.sampling_rate as f64) as usize,
        })
    }

    /// Text embeddings `[rows, dim]`: `[negative, prompt]` when `guided`, else `[prompt]`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_text(
        &self,
        prompt: &str,
        negative: Option<&str>,
        guided: bool,
    ) -> Result<(Vec<f32>, usize)> {
        pollster::block_on(self.encode_text_async(prompt, negative, guided))
    }

    /// [`Self::encode_text`] without blocking.
    pub async fn encode_text_async(
        &self,
        prompt: &str,
        negative: Option<&str>,
        guided: bool,
    ) -> Result<(Vec<f32>, usize)> {
        self.encode_rows(Some(prompt), None, negative, guided).await
    }

    /// The embeddings a request conditions on, `[negative, condition]` when `guided`: the
    /// condition is `condition` when given, else the prompt's embedding.
    async fn encode_rows(
        &self,
        prompt: Option<&str>,
        condition: Option<&[f32]>,
        negative: Option<&str>,
        guided: bool,
    ) -> Result<(Vec<f32>, usize)> {
        let encoder = self.text_encoder.get(&self.loader()).await?;
        let dim = encoder.config.projection_dim;
        let mut rows = Vec::with_capacity(2 * dim);
        if guided {
            // diffusers truncates the negative prompt at the embedding width (its quirk).
            let max = encoder.negative_max_len();
            rows.extend(
                encoder
                    .embed_text_async(&self.ctx, &self.tokenizer, negative.unwrap_or(""), max)
                    .await?,
            );
        }
        match condition {
            Some(condition) if condition.len() != dim => {
                return Err(Error::Input(format!(
                    "the conditioning embedding has {} values; this model's text embeddings \
                     have {dim}",
                    condition.len()
                )));
            }
            Some(condition) => rows.extend_from_slice(condition),
            None => {
                let max = encoder.prompt_max_len(&self.tokenizer);
                rows.extend(
                    encoder
                        .embed_text_async(&self.ctx, &self.tokenizer, prompt.unwrap_or(""), max)
                        .await?,
                );
            }
        }
        check_finite("the text encoder", &rows)?;
        Ok((rows, dim))
    }

    /// Generates `request`, calling `on_event` after every step; stops with [`Error::Cancelled`]
    /// between steps once `cancel` is set.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate(
        &self,
        request: &Request,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event),
    ) -> Result<Output> {
        pollster::block_on(self.generate_async(request, cancel, on_event))
    }

    /// [`Self::generate`] without blocking: the GPU is awaited between steps, so a browser's
    /// page draws (and takes a Cancel) while it runs.
    pub async fn generate_async(
        &self,
        request: &Request,
        cancel: &AtomicBool,
        mut on_event: impl FnMut(Event),
    ) -> Result<Output> {
        let duration = request
            .duration_s
            .unwrap_or_else(|| self.default_duration_s());
        let lengths = self.lengths(duration)?;
        self.check_request(request)?;
        let steps = self.schedule(request)?;
        let shape = self.latent_shape(&lengths);
        let count: usize = shape.iter().product();
        let initial = match &request.init_latents {
            Some(latents) if latents.len() == count => latents.clone(),
            Some(latents) => {
                return Err(Error::Input(format!(
                    "initial latents have {} values; a {duration} s clip needs {shape:?} = {count}",
                    latents.len()
                )));
            }
            // DDIM's init_noise_sigma is 1.
            None => noise::standard_normal(request.seed, count),
        };
        self.check_fits(shape).await?;
        self.begin_run();
        let plan = Plan {
            shape,
            initial,
            steps,
            known: None,
        };
        let (latents, embeds, dim) = self.denoise(request, plan, cancel, &mut on_event).await?;
        self.finish(latents, shape, lengths, embeds, dim).await
    }

    /// Every step of `request`'s run with its scheduler.
    fn schedule(&self, request: &Request) -> Result<Vec<StepCoefficients>> {
        match request.scheduler {
            SchedulerKind::Ddim => Ok(self
                .scheduler
                .timesteps(request.steps)?
                .into_iter()
                .map(|t| {
                    self.scheduler
                        .step(t, request.steps, request.eta)
                        .coefficients()
                })
                .collect()),
            SchedulerKind::DpmSolverPlusPlus => {
                dpm::DpmSolver::new(&self.scheduler).plan(request.steps)
            }
        }
    }

    /// The checks of a request's numbers that do not depend on its length.
    fn check_request(&self, request: &Request) -> Result<()> {
        if !request.guidance_scale.is_finite() {
            return Err(Error::Input(
                "the guidance scale must be a finite number".into(),
            ));
        }
        if !(0.0..=1.0).contains(&request.eta) {
            return Err(Error::Input(format!(
                "eta must be between 0 and 1, got {}",
                request.eta
            )));
        }
        if request.eta != 0.0 && request.scheduler != SchedulerKind::Ddim {
            return Err(Error::Input(format!(
                "eta is DDIM's; the {} scheduler is deterministic (leave eta at 0)",
                request.scheduler.name()
            )));
        }
        Ok(())
    }

    /// `[1, C, frames, width]` of the UNet's latents for `lengths`.
    fn latent_shape(&self, lengths: &Lengths) -> [usize; 4] {
        [
            1,
            self.unet_config.in_channels,
            lengths.latent_frames,
            lengths.latent_width,
        ]
    }

    /// The denoising loop every mode shares: guided DDIM from `plan.initial` over
    /// `plan.timesteps`, holding `plan.known` where it has one. Returns the final latents and
    /// the text embeddings `[rows, dim]`.
    async fn denoise(
        &self,
        request: &Request,
        plan: Plan,
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<(Vec<f32>, Vec<f32>, usize)> {
        let shape = plan.shape;
        let guided = request.guidance_scale > 1.0;
        let meter = self.begin_stage("text encoder");
        let (embeds, dim) = self
            .encode_rows(
                Some(&request.prompt),
                request.conditioning.as_deref(),
                request.negative_prompt.as_deref(),
                guided,
            )
            .await?;
        self.end_stage(meter);
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let meter = self.begin_stage("UNet");
        // The step graph leaves its cache while it runs (no lock is held across an await) and
        // returns to it afterwards, whatever the run's outcome.
        let cached = self
            .step_graph
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut step = match cached {
            Some(step) if step.shape == shape && step.guided == guided => step,
            stale => {
                drop(stale);
                self.record_step(shape, guided, dim).await?
            }
        };
        let result = self
            .denoise_steps(&mut step, request, plan, &embeds, cancel, on_event)
            .await;
        // The step graph holds the UNet's weights: a low-memory pipeline frees both before the
        // decoder loads.
        if self.residency == Residency::AllResident {
            *self
                .step_graph
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(step);
        } else {
            drop(step);
        }
        let latents = result?;
        self.end_stage(meter);
        Ok((latents, embeds, dim))
    }

    /// The steps of [`Self::denoise`] on the recorded `step` graph.
    async fn denoise_steps(
        &self,
        step: &mut StepGraph,
        request: &Request,
        plan: Plan,
        embeds: &[f32],
        cancel: &AtomicBool,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Vec<f32>> {
        let Plan {
            shape,
            initial,
            steps,
            mut known,
        } = plan;
        let count: usize = shape.iter().product();
        let scale = self.vae_scale_factor();
        step.latents.write_f32(&self.ctx, &initial)?;
        step.embeds.write_f32(&self.ctx, embeds)?;
        step.exe.set_scalar(step.guidance, request.guidance_scale);
        step.exe
            .set_max_dispatches_per_submit(self.dispatches_per_submit());
        // A run cancelled or failed part way leaves its last steps unread.
        step.exe.discard_unread_runs();
        let mut rng = noise::LegacyNormal::new(request.seed.wrapping_add(1));
        let n = steps.len();
        // A multistep solver's memory starts empty (its first step is first order).
        step.prev_clean.write_f32(&self.ctx, &vec![0.0; count])?;
        if let Some(known) = &known {
            on_event(Event::Step {
                i: 0,
                n,
                preview: preview_mel(&known.hold(&initial), shape, scale),
            });
        }
        // Step `done` (from 1) has finished: its clean estimate is checked and previewed.
        let mut report = async |step: &mut StepGraph, known: Option<&Known>, done: usize| {
            let clean = step.exe.read_staged_async().await?;
            check_finite(&format!("denoising step {done} of {n}"), &clean)?;
            let clean = match known {
                Some(known) => known.hold(&clean),
                None => clean,
            };
            on_event(Event::Step {
                i: done,
                n,
                preview: preview_mel(&clean, shape, scale),
            });
            Ok::<_, Error>(())
        };
        let mut x = initial;
        for (i, s) in steps.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            if let Some(known) = &mut known {
                // The known region at this step's noise level, over the current latents.
                if i > 0 {
                    x = step.latents.to_vec_f32_async(&self.ctx).await?;
                }
                let e = known.noise.sample(count);
                known.impose(&mut x, |k, z0| s.signal * z0 + s.noise * e[k]);
                step.latents.write_f32(&self.ctx, &x)?;
            }
            step.exe.set_scalar(step.timestep, s.timestep as f32);
            step.exe.set_scalar(step.x0_scale, s.x0_scale);
            step.exe.set_scalar(step.x0_eps, s.x0_eps);
            step.exe.set_scalar(step.x_coef, s.x);
            step.exe.set_scalar(step.clean_coef, s.clean);
            step.exe.set_scalar(step.eps_coef, s.eps);
            step.exe.set_scalar(step.prev_coef, s.prev_clean);
            step.exe.set_scalar(step.sigma, s.sigma);
            if s.sigma > 0.0 {
                step.noise.write_f32(&self.ctx, &rng.sample(count))?;
            }
            if !step.exe.run_unless_async(cancel).await? {
                return Err(Error::Cancelled);
            }
            // With step i queued behind it, step i - 1 is checked and shown: the GPU does not
            // wait for the CPU between steps.
            if i > 0 {
                report(step, known.as_ref(), i).await?;
            }
        }
        if n > 0 {
            report(step, known.as_ref(), n).await?;
        }
        let mut latents = step.latents.to_vec_f32_async(&self.ctx).await?;
        if let Some(known) = &known {
            // diffusers' inpainting convention: the kept cells end as the clip's own latents.
            latents = known.hold(&latents);
        }
        check_finite("the denoising loop", &latents)?;
        Ok(latents)
    }

    /// Decodes final latents and trims the waveform to `lengths.samples`.
    async fn finish(
        &self,
        latents: Vec<f32>,
        shape: [usize; 4],
        lengths: Lengths,
        embeds: Vec<f32>,
        dim: usize,
    ) -> Result<Output> {
        let (mel, waveform) = self.decode_async(&latents, shape).await?;
        let samples = waveform[..lengths.samples.min(waveform.len())].to_vec();
        Ok(Output {
            audio: Audio {
                sample_rate: self.sample_rate(),
                samples,
            },
            mel,
            latents,
            latent_shape: shape,
            text_embeds_shape: [embeds.len() / dim, dim],
            text_embeds: embeds,
            ..Output::default()
        })
    }

    /// Records UNet, guidance and the scheduler's update for one latent shape:
    /// `ε = ε_u + g (ε_c − ε_u)`, then [`StepCoefficients`]' `x0` and `x'`; `x'` is copied back
    /// into `x` and `x0` into the previous-estimate input. DDIM is
    /// `x' = sqrt(ᾱ_prev) x0 + sqrt(1−ᾱ_prev−σ²) ε + σ z`; DPM-Solver++ 2M
    /// `x' = (σ_t/σ_s) x + b x0 + d x0_prev`.
    async fn record_step(&self, shape: [usize; 4], guided: bool, dim: usize) -> Result<StepGraph> {
        let ctx = &self.ctx;
        let unet = self.unet.get(&self.loader()).await?;
        let latents = Tensor::empty(ctx, shape, DType::F32)?;
        let rows = if guided { 2 } else { 1 };
        let embeds = Tensor::empty(ctx, [rows, dim], DType::F32)?;
        let zeros = vec![0.0; shape.iter().product()];
        let noise = Tensor::from_f32(ctx, shape, DType::F32, &zeros)?;
        let prev_clean = Tensor::from_f32(ctx, shape, DType::F32, &zeros)?;
        let mut g = Graph::new(ctx);
        let x = g.input(&latents);
        let e = g.input(&embeds);
        let z = g.input(&noise);
        let prev = g.input(&prev_clean);
        let timestep = g.scalar(0.0);
        let guidance = g.scalar(1.0);
        let (x0_scale, x0_eps) = (g.scalar(1.0), g.scalar(0.0));
        let (x_coef, clean_coef, eps_coef) = (g.scalar(0.0), g.scalar(1.0), g.scalar(0.0));
        let (prev_coef, sigma) = (g.scalar(0.0), g.scalar(0.0));
        let eps = if guided {
            let doubled = g.concat(x, x, 0)?;
            let both = unet.forward(&mut g, doubled, timestep, Some(e))?;
            let uncond = g.slice(both, 0, 0, 1)?;
            let cond = g.slice(both, 0, 1, 2)?;
            let diff = g.sub(cond, uncond)?;
            g.axpby(uncond, diff, 1.0, guidance)?
        } else {
            unet.forward(&mut g, x, timestep, Some(e))?
        };
        let clean = g.axpby(x, eps, x0_scale, x0_eps)?;
        let next = g.axpby(clean, eps, clean_coef, eps_coef)?;
        let next = g.axpby(next, x, 1.0, x_coef)?;
        let next = g.axpby(next, prev, 1.0, prev_coef)?;
        let next = g.axpby(next, z, 1.0, sigma)?;
        g.output(clean)?;
        g.output(next)?;
        let mut exe = g.build()?;
        exe.feed_back(next, x)?;
        exe.feed_back(clean, prev)?;
        // Step i's estimate is read for its preview while step i + 1 runs.
        exe.stage_output(clean, 2)?;
        let stats = exe.stats();
        tracing::info!(
            dispatches = stats.dispatches,
            planned_mib = stats.planned_bytes as f64 / (1 << 20) as f64,
            unplanned_mib = stats.unplanned_bytes as f64 / (1 << 20) as f64,
            "denoising step recorded"
        );
        Ok(StepGraph {
            shape,
            guided,
            exe,
            latents,
            embeds,
            noise,
            prev_clean,
            timestep,
            guidance,
            x0_scale,
            x0_eps,
            x_coef,
            clean_coef,
            eps_coef,
            prev_coef,
            sigma,
        })
    }

    /// VAE decode (after undoing the latent scaling) and vocoder: returns the mel and the
    /// untrimmed waveform.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode(&self, latents: &[f32], shape: [usize; 4]) -> Result<(Mel, Vec<f32>)> {
        pollster::block_on(self.decode_async(latents, shape))
    }

    /// [`Self::decode`] without blocking.
    pub async fn decode_async(
        &self,
        latents: &[f32],
        shape: [usize; 4],
    ) -> Result<(Mel, Vec<f32>)> {
        let meter = self.begin_stage("VAE decoder");
        let mel = self.decode_mel_async(latents, shape).await?;
        self.end_stage(meter);
        let meter = self.begin_stage("vocoder");
        let waveform = self.vocode_async(&mel).await?;
        self.end_stage(meter);
        Ok((mel, waveform))
    }

    /// The VAE decoder on latents `[1, C, frames, width]` (before VAE scaling): the log-mel.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_mel(&self, latents: &[f32], shape: [usize; 4]) -> Result<Mel> {
        pollster::block_on(self.decode_mel_async(latents, shape))
    }

    /// [`Self::decode_mel`] without blocking.
    pub async fn decode_mel_async(&self, latents: &[f32], shape: [usize; 4]) -> Result<Mel> {
        let (g, z, mel) = self.record_decode(shape).await?;
        z.write_f32(&self.ctx, latents)?;
        let dims = g.dims(mel).to_vec();
        let data = self.run_once(g, mel).await?;
        check_finite("the VAE decoder", &data)?;
        Ok(Mel {
            frames: dims[2],
            bins: dims[3],
            data,
        })
    }

    /// The vocoder on a log-mel: the untrimmed waveform (`hop * frames + 32` samples).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn vocode(&self, mel: &Mel) -> Result<Vec<f32>> {
        pollster::block_on(self.vocode_async(mel))
    }

    /// [`Self::vocode`] without blocking.
    pub async fn vocode_async(&self, mel: &Mel) -> Result<Vec<f32>> {
        let (g, input, wave) = self.record_vocode(mel.frames, mel.bins).await?;
        input.write_f32(&self.ctx, &mel.data)?;
        let waveform = self.run_once(g, wave).await?;
        check_finite("the vocoder", &waveform)?;
        Ok(waveform)
    }

    /// Records (without running) the decoder and the vocoder for latents of `shape`, so that a
    /// clip the device cannot hold, even split, is an error before any denoising starts.
    async fn check_fits(&self, shape: [usize; 4]) -> Result<()> {
        let (g, _, mel) = self.record_decode(shape).await?;
        let (frames, bins) = (g.dims(mel)[2], g.dims(mel)[3]);
        drop(g);
        self.record_vocode(frames, bins).await?;
        Ok(())
    }

    /// The VAE decoder's graph: latents `[1, C, frames, width]` in, mel `[1, 1, T, bins]` out.
    async fn record_decode(&self, shape: [usize; 4]) -> Result<(Graph, Tensor, Var)> {
        let z = Tensor::empty(&self.ctx, shape, DType::F32)?;
        let mut g = Graph::new(&self.ctx);
        let input = g.input(&z);
        let scaled = g.scale(input, (1.0 / self.vae_config.scaling_factor) as f32, 0.0)?;
        let mel = self.vae.get(&self.loader()).await?.decode(&mut g, scaled)?;
        Ok((g, z, mel))
    }

    /// The vocoder's graph: mel `[1, frames, bins]` in, waveform out.
    async fn record_vocode(&self, frames: usize, bins: usize) -> Result<(Graph, Tensor, Var)> {
        let input = Tensor::empty(&self.ctx, [1, frames, bins], DType::F32)?;
        let mut g = Graph::new(&self.ctx);
        let x = g.input(&input);
        let wave = self.vocoder.get(&self.loader()).await?.forward(&mut g, x)?;
        Ok((g, input, wave))
    }

    /// Builds `g` with `out` as its output, runs it once and reads `out`.
    async fn run_once(&self, mut g: Graph, out: Var) -> Result<Vec<f32>> {
        g.output(out)?;
        let mut exe = g.build()?;
        exe.set_max_dispatches_per_submit(self.dispatches_per_submit());
        exe.run_async().await?;
        Ok(exe.read_async(out).await?)
    }

    /// GPU time per dispatch of one denoising step (the step graph of the last generation,
    /// replayed once more), one VAE decode and one vocoder run of `output` (that generation's),
    /// from timestamp queries; an error on an adapter without them.
    pub async fn profile_async(&self, output: &Output) -> Result<Vec<(&'static str, Profile)>> {
        let mut profiles = Vec::new();
        let cached = self
            .step_graph
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut step) = cached else {
            return Err(Error::Input(
                "no denoising step to profile: generate a clip first (with the model resident)"
                    .into(),
            ));
        };
        let profiled = step.exe.profile_async().await;
        *self
            .step_graph
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(step);
        profiles.push(("denoising step", profiled?));

        let (mut g, z, mel) = self.record_decode(output.latent_shape).await?;
        z.write_f32(&self.ctx, &output.latents)?;
        g.output(mel)?;
        profiles.push(("VAE decode", g.build()?.profile_async().await?));

        let (mut g, input, wave) = self
            .record_vocode(output.mel.frames, output.mel.bins)
            .await?;
        input.write_f32(&self.ctx, &output.mel.data)?;
        g.output(wave)?;
        profiles.push(("vocoder", g.build()?.profile_async().await?));
        Ok(profiles)
    }

    /// Blocking [`Self::profile_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&self, output: &Output) -> Result<Vec<(&'static str, Profile)>> {
        pollster::block_on(self.profile_async(output))
    }

    /// Statistics of the recorded denoising step (after a generation): dispatches and submits
    /// per step, planned intermediate bytes, weight bytes.
    pub fn step_stats(&self) -> Option<GraphStats> {
        self.step_graph
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| s.exe.stats().clone())
    }
}

/// A cheap picture of latents `[1, C, frames, width]`: the channel mean, stretched by the VAE's
/// scale factor to mel size. Shows where energy sits over time and frequency while denoising;
/// the exact mel comes from the VAE at the end.
pub fn preview_mel(latents: &[f32], shape: [usize; 4], scale: usize) -> Mel {
    let [_, channels, frames, width] = shape;
    let (out_frames, bins) = (frames * scale, width * scale);
    let mut data = vec![0.0; out_frames * bins];
    for f in 0..out_frames {
        for b in 0..bins {
            let (lf, lw) = (f / scale, b / scale);
            let sum: f32 = (0..channels)
                .map(|c| latents[(c * frames + lf) * width + lw])
                .sum();
            data[f * bins + b] = sum / channels as f32;
        }
    }
    Mel {
        frames: out_frames,
        bins,
        data,
    }
}
