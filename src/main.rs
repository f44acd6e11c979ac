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
use audioldm::gpu::{Context, LimitsProfile};
use audioldm::hub::{self, DEFAULT_MODEL};
use audioldm::model::nn::Precision;
use audioldm::pipeline::edit::{EditRequest, Mode};
use audioldm::pipeline::{Event, Pipeline, Request, Residency};

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
    /// A Hugging Face repo id or a local diffusers folder.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Output WAV file.
    #[arg(short, long, default_value = "out.wav")]
    out: PathBuf,
    /// Sample format of the WAV file.
    #[arg(long, value_enum, default_value_t = Format::Pcm16)]
    format: Format,
    /// Write DIR/outputs.safetensors (text_embeds, latents, mel, waveform; for edits also
    /// source_latents and mask).
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Store weights as f16 on the GPU (half the memory; within 1e-2 of f32).
    #[arg(long)]
    f16: bool,
    /// Never touch the network: use the Hugging Face cache only.
    #[arg(long)]
    offline: bool,
    /// GPU limits to create the device with.
    #[arg(long, value_enum, env = "AUDIOLDM_LIMITS", default_value_t = Limits::Adapter)]
    limits: Limits,
    /// Keep only the network the current stage needs on the GPU: each is uploaded from its
    /// checkpoint when its stage starts (less memory, a little slower).
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
        }
    }
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

#[cfg(feature = "app")]
fn default_command() -> Option<Command> {
    Some(Command::App {
        model: None,
        f16: false,
        input: None,
        limits: Limits::Adapter,
        low_memory: false,
    })
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
        } => {
            let options = audioldm::app::AppOptions {
                model,
                input,
                precision: Precision::weights_f16(f16),
                limits: limits.into(),
                residency: Residency::from_low_memory(low_memory),
                ..Default::default()
            };
            audioldm::app::run_native(options).map_err(audioldm::Error::Input)
        }
        Command::Generate {
            prompt,
            duration,
            init_latents,
            options,
        } => {
            let init = init_latents.as_deref().map(read_latents).transpose()?;
            let mut request = options.request(prompt);
            request.init_latents = init.as_ref().map(|(_, latents)| latents.clone());
            produce(&options, |pipeline, cancel, on_event| {
                request.duration_s = match (&init, duration) {
                    (Some((frames, _)), None) => Some(pipeline.duration_for_latent_frames(*frames)),
                    (_, d) => d,
                };
                let output = pipeline.generate(&request, cancel, on_event)?;
                let settings = request.describe(&options.model, pipeline.default_duration_s());
                Ok((output, settings))
            })
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
    let source = decode_file(&input, audioldm::pipeline::MAX_DURATION_S)?;
    let edit = EditRequest {
        request: options.request(prompt),
        source,
        source_name: input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| input.display().to_string()),
        mode,
    };
    produce(options, |pipeline, cancel, on_event| {
        let output = pipeline.edit(&edit, cancel, on_event)?;
        Ok((output, edit.describe(&options.model)))
    })
}

/// What every generating command does around its pipeline call: check that the output can be
/// written, load the model, show progress, write the WAV (and the dump).
fn produce(
    options: &Options,
    call: impl FnOnce(
        &Pipeline,
        &AtomicBool,
        &mut dyn FnMut(Event),
    ) -> audioldm::Result<(audioldm::pipeline::Output, String)>,
) -> audioldm::Result<()> {
    let started = Instant::now();
    check_writable(&options.out)?;
    let dir = resolve_model(&options.model, options.offline)?;
    let ctx = Context::with_limits_blocking(options.limits.into())?;
    let info = ctx.adapter_info();
    eprintln!(
        "GPU: {} ({:?}, {:?}), {} limits",
        info.name,
        info.backend,
        info.device_type,
        ctx.limits_profile()
    );
    let pipeline = Pipeline::load_with(
        &ctx,
        &dir,
        Precision::weights_f16(options.f16),
        Residency::from_low_memory(options.low_memory),
    )?;
    let bar = ProgressBar::new(options.steps as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} denoising {bar:30} {pos}/{len} steps, {elapsed} elapsed, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cancel = AtomicBool::new(false);
    let (output, settings) = call(&pipeline, &cancel, &mut |event| {
        if let Event::Step { i, n, .. } = event {
            bar.set_length(n as u64);
            bar.set_position(i as u64);
        }
    })?;
    bar.finish_and_clear();
    let wav_format = match options.format {
        Format::Pcm16 => WavFormat::Pcm16,
        Format::F32 => WavFormat::Float32,
    };
    write_wav(
        &options.out,
        &output.audio.samples,
        output.audio.sample_rate,
        wav_format,
        Some(&settings),
    )?;
    if let Some(dir) = &options.dump {
        dump_outputs(dir, &output)?;
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

/// A local folder, or a Hugging Face repo id downloaded into (or found in) the standard cache.
fn resolve_model(model: &str, offline: bool) -> audioldm::Result<PathBuf> {
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
    let dir = hub::resolve(model, &options, &mut |p| {
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
    output: &audioldm::pipeline::Output,
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
