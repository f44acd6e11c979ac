//! The front ends' entry: with no arguments the desktop app, else the command line
//! (`audioldm generate "PROMPT" -o out.wav`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use audioldm::audio::wav::{WavFormat, write_wav};
use audioldm::gpu::Context;
use audioldm::hub::{self, DEFAULT_MODEL};
use audioldm::model::nn::Precision;
use audioldm::pipeline::{Event, Pipeline, Request};

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

#[derive(Subcommand)]
enum Command {
    /// Open the desktop app (what running without a command does).
    App {
        /// Start with this model (a Hugging Face repo id or a local folder) instead of the last one.
        #[arg(long)]
        model: Option<String>,
        /// Store weights as f16 on the GPU.
        #[arg(long)]
        f16: bool,
    },
    /// Generate a clip from a text prompt.
    Generate {
        /// What to hear, e.g. "a dog barking in the rain".
        prompt: String,
        /// What not to hear.
        #[arg(long)]
        negative: Option<String>,
        /// Denoising steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Classifier-free guidance scale (1 or less turns guidance off).
        #[arg(long, default_value_t = 2.5)]
        guidance: f32,
        /// Seconds of audio [default: the model's, 5.12 s].
        #[arg(long)]
        duration: Option<f64>,
        /// Seed of the initial noise (NumPy's RandomState(seed).standard_normal).
        #[arg(long, default_value_t = 0)]
        seed: u32,
        /// DDIM eta (0 is deterministic).
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
        /// Initial latents: a .safetensors file with a tensor `latents` [1, 8, frames, 16].
        #[arg(long)]
        init_latents: Option<PathBuf>,
        /// Write DIR/outputs.safetensors (text_embeds, latents, mel, waveform).
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Store weights as f16 on the GPU (half the memory; within 1e-2 of f32).
        #[arg(long)]
        f16: bool,
        /// Never touch the network: use the Hugging Face cache only.
        #[arg(long)]
        offline: bool,
    },
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
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> audioldm::Result<()> {
    let command = cli.command.unwrap_or(Command::App {
        model: None,
        f16: false,
    });
    match command {
        Command::App { model, f16 } => {
            let options = audioldm::app::AppOptions {
                model,
                precision: Precision::weights_f16(f16),
                ..Default::default()
            };
            audioldm::app::run_native(options).map_err(audioldm::Error::Input)
        }
        Command::Generate {
            prompt,
            negative,
            steps,
            guidance,
            duration,
            seed,
            eta,
            model,
            out,
            format,
            init_latents,
            dump,
            f16,
            offline,
        } => {
            let started = Instant::now();
            let dir = resolve_model(&model, offline)?;
            let ctx = Context::new_blocking()?;
            let info = ctx.adapter_info();
            eprintln!(
                "GPU: {} ({:?}, {:?})",
                info.name, info.backend, info.device_type
            );
            let precision = Precision::weights_f16(f16);
            let pipeline = Pipeline::load(&ctx, &dir, precision)?;
            let init = init_latents.as_deref().map(read_latents).transpose()?;
            let duration = match (&init, duration) {
                (Some((frames, _)), None) => Some(pipeline.duration_for_latent_frames(*frames)),
                (_, d) => d,
            };
            let request = Request {
                prompt,
                negative_prompt: negative,
                steps,
                guidance_scale: guidance,
                duration_s: duration,
                seed,
                eta,
                init_latents: init.map(|(_, latents)| latents),
            };
            let bar = ProgressBar::new(steps as u64).with_style(
                ProgressStyle::with_template(
                    "{spinner} denoising {bar:30} {pos}/{len} steps, {elapsed} elapsed, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let cancel = AtomicBool::new(false);
            let output = pipeline.generate(&request, &cancel, |event| {
                if let Event::Step { i, n, .. } = event {
                    bar.set_length(n as u64);
                    bar.set_position(i as u64);
                }
            })?;
            bar.finish_and_clear();
            let settings = request.describe(&model, pipeline.default_duration_s());
            let wav_format = match format {
                Format::Pcm16 => WavFormat::Pcm16,
                Format::F32 => WavFormat::Float32,
            };
            write_wav(
                &out,
                &output.audio.samples,
                output.audio.sample_rate,
                wav_format,
                Some(&settings),
            )?;
            if let Some(dir) = dump {
                dump_outputs(&dir, &output)?;
            }
            eprintln!(
                "wrote {} ({:.2} s at {} Hz) in {:.1} s",
                out.display(),
                output.audio.samples.len() as f64 / output.audio.sample_rate as f64,
                output.audio.sample_rate,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
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

/// `DIR/outputs.safetensors`: text_embeds, latents (before VAE scaling), mel, waveform.
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
    let tensors = [
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
