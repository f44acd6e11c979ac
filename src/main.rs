//! The front ends' entry: with no arguments the desktop app, else the command line
//! (`audioldm generate "PROMPT" -o out.wav`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use audioldm::audio::decode::decode_file;
use audioldm::audio::wav::{WavFormat, write_wav};
use audioldm::engine::{Context, DeviceChoice, LimitsProfile};
use audioldm::hub::{self, DEFAULT_MODEL};
use audioldm::model::nn::Precision;
use audioldm::pipeline::edit::{EditRequest, Mode};
use audioldm::pipeline::ranking::{ClapScorer, check_candidates, describe_candidate};
use audioldm::pipeline::variation::VariationRequest;
use audioldm::pipeline::{Event, Output, Pipeline, Request, Residency, SchedulerKind};

#[derive(Parser)]
#[command(
    name = "audioldm",
    version,
    about = "Text-to-audio with AudioLDM on any GPU (WGSL through wgpu)"
)]
struct Cli {
    /// Without a command, the desktop app opens.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// 16-bit PCM
    Pcm16,
    /// 32-bit float
    F32,
}

/// What runs the networks.
#[derive(Clone, Copy, ValueEnum)]
enum Device {
    /// A real GPU where there is one, else the CPU backend (faster than a software adapter).
    Auto,
    /// The GPU adapter wgpu finds, even a software one (lavapipe, SwiftShader, WARP).
    Gpu,
    /// The CPU backend: the processor's cores (RAYON_NUM_THREADS sets how many).
    Cpu,
}

impl From<Device> for DeviceChoice {
    fn from(device: Device) -> Self {
        match device {
            Device::Auto => DeviceChoice::Auto,
            Device::Gpu => DeviceChoice::Gpu,
            Device::Cpu => DeviceChoice::Cpu,
        }
    }
}

/// The limits the GPU device is created with.
#[derive(Clone, Copy, ValueEnum)]
enum Limits {
    /// Everything the adapter offers.
    Adapter,
    /// The WebGPU specification's defaults (128 MiB per binding, 256 MiB per buffer).
    WebgpuDefault,
}

impl From<Limits> for LimitsProfile {
    fn from(limits: Limits) -> Self {
        match limits {
            Limits::Adapter => LimitsProfile::Adapter,
            Limits::WebgpuDefault => LimitsProfile::WebGpuDefault,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Open the desktop app (what running without a command does).
    #[cfg(feature = "app")]
    App {
        /// Start with this model (a Hugging Face repo id or a local folder) instead of the last one.
        #[arg(long)]
        model: Option<String>,
        /// Store weights as f16 on the GPU.
        #[arg(long)]
        f16: bool,
        /// Open with this audio file as the input clip, ready to edit.
        #[arg(long)]
        input: Option<PathBuf>,
        /// GPU limits to create the device with.
        #[arg(long, value_enum, env = "AUDIOLDM_LIMITS", default_value_t = Limits::Adapter)]
        limits: Limits,
        /// Keep only the network the current stage needs on the GPU (less memory, slower runs).
        #[arg(long)]
        low_memory: bool,
        /// Start on this device whatever was chosen last (the app's Device setting chooses from
        /// then on): a real GPU where there is one, else the processor (auto); the window's GPU
        /// adapter, even a software one (gpu); the processor (cpu).
        #[arg(long, value_enum, env = "AUDIOLDM_DEVICE")]
        device: Option<Device>,
    },
    /// Generate a clip from a text prompt.
    Generate {
        /// What to hear, e.g. "a dog barking in the rain".
        prompt: String,
        /// Seconds of audio [default: the model's, 5.12 s].
        #[arg(long)]
        duration: Option<f64>,
        /// Initial latents: a .safetensors file with a tensor `latents` [1, 8, frames, 16].
        #[arg(long)]
        init_latents: Option<PathBuf>,
        /// Make N clips from the seeds SEED, SEED+1, ... and keep the one CLAP scores best
        /// against the prompt (the original AudioLDM makes 3).
        #[arg(long, default_value_t = 1, value_name = "N")]
        candidates: usize,
        /// With --candidates, also write every candidate k (seed SEED+k) as OUT-k.wav, its score
        /// in the WAV comment.
        #[arg(long, requires = "candidates")]
        keep_all: bool,
        #[command(flatten)]
        options: Options,
    },
    /// Variations of a clip: new audio conditioned on the clip's CLAP audio embedding ("more like
    /// this"), optionally blended with a prompt.
    Vary {
        /// The audio file to vary (wav, flac, mp3, ogg; channel 0 is used).
        input: PathBuf,
        /// A prompt to blend in.
        #[arg(long, default_value = "")]
        prompt: String,
        /// The prompt's weight in the blend, from 0 (the clip alone) to 1 (the prompt alone).
        #[arg(long, default_value_t = 0.5, requires = "prompt")]
        mix: f32,
        /// Seconds of audio [default: the clip's].
        #[arg(long)]
        duration: Option<f64>,
        #[command(flatten)]
        options: Options,
    },
    /// Style transfer: turn an audio file into what the prompt describes.
    Transfer {
        /// The audio file to transform (wav, flac, mp3, ogg; channel 0 is used).
        input: PathBuf,
        /// What it should become.
        prompt: String,
        /// How much of the clip is noised away and regenerated, in (0, 1].
        #[arg(long, default_value_t = 0.5)]
        strength: f32,
        #[command(flatten)]
        options: Options,
    },
    /// Inpainting: regenerate time ranges of an audio file, keep the rest.
    Inpaint {
        /// The audio file to edit.
        input: PathBuf,
        /// What the regenerated ranges should hold.
        prompt: String,
        /// A range to regenerate, START:END in seconds (repeat for more).
        #[arg(long = "range", value_name = "START:END", required = true, value_parser = parse_range)]
        ranges: Vec<(f64, f64)>,
        #[command(flatten)]
        options: Options,
    },
    /// Super-resolution: keep the content below a cutoff, generate the bands above it.
    Superres {
        /// The audio file to extend in frequency (e.g. an 8 kHz recording).
        input: PathBuf,
        /// What the clip is.
        prompt: String,
        /// Keep the clip below this frequency [default: half the file's sample rate].
        #[arg(long)]
        cutoff_hz: Option<f64>,
        #[command(flatten)]
        options: Options,
    },
    /// Continuation: extend an audio file by some seconds.
    Extend {
        /// The audio file to continue.
        input: PathBuf,
        /// What the continuation should hold.
        prompt: String,
        /// Seconds to add.
        #[arg(long)]
        seconds: f64,
        #[command(flatten)]
        options: Options,
    },
}

/// What every generating command takes.
#[derive(Args)]
struct Options {
    /// What not to hear.
    #[arg(long)]
    negative: Option<String>,
    /// Denoising steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Classifier-free guidance scale (1 or less turns guidance off).
    #[arg(long, default_value_t = 2.5)]
    guidance: f32,
    /// Seed of the noise (NumPy's RandomState(seed).standard_normal; see ARCHITECTURE.md).
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// DDIM eta (0 is deterministic; the original AudioLDM uses 1).
    #[arg(long, default_value_t = 0.0)]
    eta: f32,
    /// The sampler: ddim (the checkpoints' own) or dpm++ (DPM-Solver++ 2M: about as good in
    /// fewer steps; text-to-audio and variations).
    #[arg(long, default_value = "ddim", value_parser = parse_scheduler)]
    scheduler: SchedulerKind,
    /// A Hugging Face repo id or a local diffusers folder.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// The CLAP model for --candidates and `vary` (a Hugging Face repo id or a local folder)
    /// [default: the one paired with --model].
    #[arg(long, value_name = "ID_OR_FOLDER")]
    clap: Option<String>,
    /// Output WAV file.
    #[arg(short, long, default_value = "out.wav")]
    out: PathBuf,
    /// Sample format of the WAV file.
    #[arg(long, value_enum, default_value_t = Format::Pcm16)]
    format: Format,
    /// Write DIR/outputs.safetensors (text_embeds, latents, mel, waveform; for edits also
    /// source_latents and mask; with CLAP also clap_audio_embeds, clap_text_embeds, clap_scores).
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Store weights as f16 on the GPU (half the memory; within 1e-2 of f32).
    #[arg(long)]
    f16: bool,
    /// Never touch the network: use the Hugging Face cache only.
    #[arg(long)]
    offline: bool,
    /// What runs the networks: a real GPU where there is one, else the processor (auto); the
    /// GPU adapter, even a software one (gpu); the processor (cpu).
    #[arg(long, value_enum, env = "AUDIOLDM_DEVICE", default_value_t = Device::Auto)]
    device: Device,
    /// GPU limits to create the device with.
    #[arg(long, value_enum, env = "AUDIOLDM_LIMITS", default_value_t = Limits::Adapter)]
    limits: Limits,
    /// Keep only the network the current stage needs in memory: each is loaded from its
    /// checkpoint when its stage starts (less memory, a little slower; on the CPU backend the
    /// saving is host memory).
    #[arg(long)]
    low_memory: bool,
}

impl Options {
    fn request(&self, prompt: String) -> Request {
        Request {
            prompt,
            negative_prompt: self.negative.clone(),
            steps: self.steps,
            guidance_scale: self.guidance,
            duration_s: None,
            seed: self.seed,
            eta: self.eta,
            init_latents: None,
            conditioning: None,
            scheduler: self.scheduler,
        }
    }
}

fn parse_scheduler(name: &str) -> Result<SchedulerKind, String> {
    SchedulerKind::parse(name).map_err(|e| e.to_string())
}

/// `START:END` in seconds.
fn parse_range(text: &str) -> Result<(f64, f64), String> {
    let (start, end) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not START:END (seconds)"))?;
    let number = |s: &str| {
        s.trim()
            .parse::<f64>()
            .map_err(|_| format!("{s:?} in {text:?} is not a number of seconds"))
    };
    Ok((number(start)?, number(end)?))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,wgpu_hal=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_out_of_gpu_memory() {
                eprintln!(
                    "hint: this run needs more GPU memory than the GPU has free or allows: try \
                     --low-memory (one network on the GPU at a time), --f16, a shorter \
                     --duration, or close other programs using the GPU"
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// `audioldm app`, with what the environment sets (`AUDIOLDM_DEVICE`, `AUDIOLDM_LIMITS`) as clap
/// reads it for the command itself; an unknown value there is reported as clap reports it.
#[cfg(feature = "app")]
fn default_command() -> Option<Command> {
    Cli::parse_from(["audioldm", "app"]).command
}

#[cfg(not(feature = "app"))]
fn default_command() -> Option<Command> {
    None
}

fn run(cli: Cli) -> audioldm::Result<()> {
    let Some(command) = cli.command.or_else(default_command) else {
        return Err(audioldm::Error::Input(
            "this build has no desktop app (it was built without the `app` feature); \
             `audioldm --help` lists the commands"
                .into(),
        ));
    };
    match command {
        #[cfg(feature = "app")]
        Command::App {
            model,
            f16,
            input,
            limits,
            low_memory,
            device,
        } => {
            let options = audioldm::app::AppOptions {
                model,
                input,
                precision: Precision::weights_f16(f16),
                limits: limits.into(),
                residency: Residency::from_low_memory(low_memory),
                device: device.map(DeviceChoice::from),
                ..Default::default()
            };
            audioldm::app::run_native(options).map_err(audioldm::Error::Input)
        }
        Command::Generate {
            prompt,
            duration,
            init_latents,
            candidates,
            keep_all,
            options,
        } => {
            check_candidates(candidates, init_latents.is_some())?;
            let kept: Vec<PathBuf> = match keep_all {
                true => (0..candidates)
                    .map(|k| candidate_path(&options.out, k))
                    .collect(),
                false => Vec::new(),
            };
            kept.iter().try_for_each(|path| check_writable(path))?;
            let init = init_latents.as_deref().map(read_latents).transpose()?;
            let mut request = options.request(prompt);
            request.init_latents = init.as_ref().map(|(_, latents)| latents.clone());
            let clap = (candidates > 1).then_some(&options.clap);
            produce(&options, clap, |pipeline, scorer, cancel, on_event| {
                request.duration_s = match (&init, duration) {
                    (Some((frames, _)), None) => Some(pipeline.duration_for_latent_frames(*frames)),
                    (_, d) => d.or(Some(pipeline.default_duration_s())),
                };
                let Some(scorer) = scorer else {
                    let output = pipeline.generate(&request, cancel, on_event)?;
                    let settings = request.describe(&options.model, pipeline.default_duration_s());
                    return Ok(Produced::clip(output, settings));
                };
                let ranked =
                    pipeline.generate_candidates(&request, candidates, scorer, cancel, on_event)?;
                Ok(ranked_clips(&options, &request, scorer, ranked, &kept))
            })
        }
        Command::Vary {
            input,
            prompt,
            mix,
            duration,
            options,
        } => {
            let source = decode_file(&input, audioldm::pipeline::MAX_DURATION_S)?;
            let mut request = options.request(prompt);
            request.duration_s = duration;
            let variation = VariationRequest {
                request,
                source,
                source_name: file_name(&input),
                mix,
            };
            variation.check()?;
            produce(
                &options,
                Some(&options.clap),
                |pipeline, scorer, cancel, on_event| {
                    let scorer = scorer.ok_or_else(|| {
                        audioldm::Error::Input("variations need a CLAP model (--clap)".into())
                    })?;
                    let made = pipeline.vary(&variation, scorer, cancel, on_event)?;
                    let clap = scorer.dir().display().to_string();
                    let settings = variation.describe(&options.model, &clap);
                    let mut produced = Produced::clip(made.output, settings);
                    produced.tensors.push((
                        "clap_audio_embeds",
                        vec![1, made.clip_embedding.len()],
                        made.clip_embedding,
                    ));
                    Ok(produced)
                },
            )
        }
        Command::Transfer {
            input,
            prompt,
            strength,
            options,
        } => edit(input, prompt, Mode::StyleTransfer { strength }, &options),
        Command::Inpaint {
            input,
            prompt,
            ranges,
            options,
        } => edit(input, prompt, Mode::Inpaint { ranges }, &options),
        Command::Superres {
            input,
            prompt,
            cutoff_hz,
            options,
        } => edit(input, prompt, Mode::SuperResolution { cutoff_hz }, &options),
        Command::Extend {
            input,
            prompt,
            seconds,
            options,
        } => edit(input, prompt, Mode::Extend { seconds }, &options),
    }
}

/// Runs an edit of the audio file `input`, which is decoded before any model work starts.
fn edit(input: PathBuf, prompt: String, mode: Mode, options: &Options) -> audioldm::Result<()> {
    if options.scheduler != SchedulerKind::Ddim {
        return Err(audioldm::Error::Input(format!(
            "edits run DDIM, as the original AudioLDM does; --scheduler {} is for generate and \
             vary",
            options.scheduler.name()
        )));
    }
    let source = decode_file(&input, audioldm::pipeline::MAX_DURATION_S)?;
    let edit = EditRequest {
        request: options.request(prompt),
        source,
        source_name: file_name(&input),
        mode,
    };
    edit.check()?;
    produce(options, None, |pipeline, _, cancel, on_event| {
        let output = pipeline.edit(&edit, cancel, on_event)?;
        Ok(Produced::clip(output, edit.describe(&options.model)))
    })
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// What a command made: the clip for `--out` with its settings (the WAV comment), more clips to
/// write beside it, and more tensors for `--dump`.
struct Produced {
    output: Output,
    settings: String,
    clips: Vec<(PathBuf, Vec<f32>, String)>,
    tensors: Vec<(&'static str, Vec<usize>, Vec<f32>)>,
}

impl Produced {
    fn clip(output: Output, settings: String) -> Self {
        Self {
            output,
            settings,
            clips: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

/// `OUT-k.wav` beside `OUT.wav`.
fn candidate_path(out: &std::path::Path, k: usize) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "wav".into());
    out.with_file_name(format!("{stem}-{k}.{ext}"))
}

/// The best candidate for `--out`, every candidate for `kept`, the scores printed and dumped.
fn ranked_clips(
    options: &Options,
    request: &Request,
    scorer: &ClapScorer,
    ranked: audioldm::pipeline::ranking::Candidates,
    kept: &[PathBuf],
) -> Produced {
    let clap = scorer.dir().display().to_string();
    let n = ranked.outputs.len();
    let best = ranked.scores.best();
    let settings = |k: usize| {
        let candidate = Request {
            seed: ranked.seeds[k],
            ..request.clone()
        };
        let duration = request.duration_s.unwrap_or_default();
        describe_candidate(
            &candidate,
            &options.model,
            duration,
            (k, n),
            ranked.scores.scores[k],
            &clap,
        )
    };
    eprintln!("CLAP scores against the prompt (cosine similarity), best first:");
    for k in ranked.scores.ranking() {
        eprintln!(
            "  candidate {k} (seed {}): {:.4}{}",
            ranked.seeds[k],
            ranked.scores.scores[k],
            if k == best { "  <- best" } else { "" }
        );
    }
    let clips = kept
        .iter()
        .enumerate()
        .map(|(k, path)| {
            (
                path.clone(),
                ranked.outputs[k].audio.samples.clone(),
                settings(k),
            )
        })
        .collect();
    let best_settings = settings(best);
    let width = ranked.scores.text_embed.len();
    let tensors = vec![
        (
            "clap_audio_embeds",
            vec![n, width],
            ranked.scores.audio_embeds.concat(),
        ),
        ("clap_text_embeds", vec![1, width], ranked.scores.text_embed),
        ("clap_scores", vec![n], ranked.scores.scores),
    ];
    let mut outputs = ranked.outputs;
    Produced {
        output: outputs.swap_remove(best),
        settings: best_settings,
        clips,
        tensors,
    }
}

/// What every generating command does around its pipeline call: check that the output can be
/// written, find the model (and, with `clap`, the CLAP model: `--clap`, else the model's
/// companion), load them, show progress, write the WAVs (and the dump).
fn produce(
    options: &Options,
    clap: Option<&Option<String>>,
    call: impl FnOnce(
        &Pipeline,
        Option<&ClapScorer>,
        &AtomicBool,
        &mut dyn FnMut(Event),
    ) -> audioldm::Result<Produced>,
) -> audioldm::Result<()> {
    let started = Instant::now();
    check_writable(&options.out)?;
    let dir = resolve_model(&options.model, &hub::AUDIOLDM, options.offline)?;
    let clap_dir = match clap {
        Some(choice) => Some(resolve_clap(
            choice.as_deref(),
            &options.model,
            options.offline,
        )?),
        None => None,
    };
    let ctx = Context::for_device_blocking(options.device.into(), options.limits.into())?;
    if ctx.is_cpu() {
        eprintln!("{}", ctx.backend_name());
    } else {
        eprintln!("{}, {} limits", ctx.backend_name(), ctx.limits_profile());
    }
    let pipeline = Pipeline::load_with(
        &ctx,
        &dir,
        Precision::weights_f16(options.f16),
        Residency::from_low_memory(options.low_memory),
    )?;
    let scorer = match &clap_dir {
        Some(dir) => Some(ClapScorer::load(
            &ctx,
            dir,
            Precision::weights_f16(options.f16),
            &pipeline.model_dir().join("tokenizer"),
        )?),
        None => None,
    };
    let bar = ProgressBar::new(options.steps as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} {msg}denoising {bar:30} {pos}/{len} steps, {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cancel = AtomicBool::new(false);
    let produced = call(
        &pipeline,
        scorer.as_ref(),
        &cancel,
        &mut |event| match event {
            Event::Step { i, n, .. } => {
                bar.set_length(n as u64);
                bar.set_position(i as u64);
            }
            Event::Candidate { k, n } => {
                bar.reset();
                bar.set_message(format!("candidate {k}/{n}: "));
            }
            Event::Scoring => bar.set_message("scoring with CLAP, "),
            _ => {}
        },
    )?;
    bar.finish_and_clear();
    let Produced {
        output,
        settings,
        clips,
        tensors,
    } = produced;
    let wav_format = match options.format {
        Format::Pcm16 => WavFormat::Pcm16,
        Format::F32 => WavFormat::Float32,
    };
    write_wav(
        &options.out,
        &output.audio.samples,
        output.audio.sample_rate,
        wav_format,
        Some(&with_backend(&settings, &ctx)),
    )?;
    for (path, samples, settings) in &clips {
        write_wav(
            path,
            samples,
            output.audio.sample_rate,
            wav_format,
            Some(&with_backend(settings, &ctx)),
        )?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &options.dump {
        dump_outputs(dir, &output, tensors)?;
    }
    eprintln!(
        "wrote {} ({:.2} s at {} Hz) in {:.1} s",
        options.out.display(),
        output.audio.samples.len() as f64 / output.audio.sample_rate as f64,
        output.audio.sample_rate,
        started.elapsed().as_secs_f64()
    );
    eprintln!("{}", pipeline.memory_report());
    Ok(())
}

/// A clip's settings (a JSON object) with what ran it added as `backend`.
fn with_backend(settings: &str, ctx: &Context) -> String {
    audioldm::pipeline::settings_with_backend(settings, &ctx.backend_name())
}

/// Fails now, not after minutes of generation, when `path` cannot be written: its folder is
/// missing or read-only, or it names a folder.
fn check_writable(path: &std::path::Path) -> audioldm::Result<()> {
    let io = |source| audioldm::Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let existed = path.exists();
    if path.is_dir() {
        return Err(audioldm::Error::Input(format!(
            "the output {} is a folder, not a file",
            path.display()
        )));
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io)?;
    if !existed {
        std::fs::remove_file(path).map_err(io)?;
    }
    Ok(())
}

/// The CLAP model's folder: `choice`, else the companion of `model`. Its absence is an error
/// that says what to do.
fn resolve_clap(choice: Option<&str>, model: &str, offline: bool) -> audioldm::Result<PathBuf> {
    let Some(clap) = choice.or_else(|| hub::clap_companion(model)) else {
        return Err(audioldm::Error::Input(format!(
            "ranking candidates and variations need a CLAP model, and {model} has no known \
             companion: pass --clap with a CLAP model's repo id or folder (the companions of the \
             AudioLDM checkpoints are {})",
            hub::CLAP_COMPANIONS
                .iter()
                .map(|(_, clap)| *clap)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(" and ")
        )));
    };
    resolve_model(clap, &hub::CLAP, offline).map_err(|e| {
        audioldm::Error::Input(format!(
            "ranking candidates and variations need the CLAP model {clap}: {e}"
        ))
    })
}

/// A local folder, or a Hugging Face repo id downloaded into (or found in) the standard cache.
fn resolve_model(model: &str, layout: &hub::Layout, offline: bool) -> audioldm::Result<PathBuf> {
    let options = hub::ResolveOptions {
        offline,
        ..Default::default()
    };
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let dir = hub::resolve_layout(model, layout, &options, &mut |p| {
        if bar.is_hidden() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_length(p.overall_total);
        bar.set_position(p.overall_downloaded);
        bar.set_message(format!(
            "downloading {} ({}/{})",
            p.file, p.file_index, p.file_count
        ));
    })?;
    bar.finish_and_clear();
    Ok(dir)
}

/// Reads tensor `latents` `[1, C, frames, width]` from a safetensors file.
fn read_latents(path: &std::path::Path) -> audioldm::Result<(usize, Vec<f32>)> {
    let file = audioldm::checkpoint::Checkpoint::open(path)?;
    let (shape, data) = file.f32_any("latents")?;
    match shape.as_slice() {
        &[1, _, frames, _] => Ok((frames, data)),
        other => Err(audioldm::Error::Input(format!(
            "{}: `latents` must have shape [1, channels, frames, width], got {other:?}",
            path.display()
        ))),
    }
}

/// `DIR/outputs.safetensors`: text_embeds, latents (before VAE scaling), mel, waveform, and for
/// edits source_latents and mask.
fn dump_outputs(
    dir: &std::path::Path,
    output: &Output,
    extra: Vec<(&'static str, Vec<usize>, Vec<f32>)>,
) -> audioldm::Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let io = |source| audioldm::Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let mut tensors = vec![
        (
            "text_embeds",
            output.text_embeds_shape.to_vec(),
            bytes(&output.text_embeds),
        ),
        (
            "latents",
            output.latent_shape.to_vec(),
            bytes(&output.latents),
        ),
        (
            "mel",
            vec![1, output.mel.frames, output.mel.bins],
            bytes(&output.mel.data),
        ),
        (
            "waveform",
            vec![1, output.audio.samples.len()],
            bytes(&output.audio.samples),
        ),
    ];
    if !output.source_latents.is_empty() {
        tensors.push((
            "source_latents",
            output.source_latent_shape.to_vec(),
            bytes(&output.source_latents),
        ));
    }
    if let Some(mask) = &output.mask {
        let [_, _, frames, width] = output.latent_shape;
        tensors.push(("mask", vec![frames, width], bytes(mask)));
    }
    for (name, shape, data) in &extra {
        tensors.push((name, shape.clone(), bytes(data)));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|view| (name.to_string(), view))
                .map_err(|e| audioldm::Error::Input(format!("dump {name}: {e}")))
        })
        .collect::<audioldm::Result<Vec<_>>>()?;
    let path = dir.join("outputs.safetensors");
    safetensors::serialize_to_file(views, None, &path)
        .map_err(|e| audioldm::Error::Input(format!("{}: {e}", path.display())))
}
