//! The pipeline stage by stage on a full-size model, side by side with diffusers on the same
//! machine and model (REFERENCE.md section 9 has the FLOPs):
//!
//! ```sh
//! python scripts/reference/make_reference.py --full --out target/reference/full
//! python scripts/reference/bench_reference.py --model target/reference/full \
//!     --out target/bench/reference.json
//! cargo bench --bench pipeline -- --model target/reference/full \
//!     --reference target/bench/reference.json
//! ```
//!
//! Options: `--duration S` (10), `--steps N` (10), `--repeat N` (3, medians), `--f16`.
//! Prints seconds per stage, our time over theirs, peak resident memory (on a software adapter
//! GPU memory is host memory), and the denoising step's graph: dispatches, submits per step,
//! planned intermediate bytes against the unplanned sum, weight bytes.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use audioldm::gpu::Context;
use audioldm::model::nn::Precision;
use audioldm::pipeline::{Event, Pipeline, Request, noise};

struct Args {
    model: PathBuf,
    reference: Option<PathBuf>,
    duration: f64,
    steps: usize,
    repeat: usize,
    f16: bool,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        model: PathBuf::from("target/reference/full"),
        reference: None,
        duration: 10.0,
        steps: 10,
        repeat: 3,
        f16: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--model" => args.model = value("--model")?.into(),
            "--reference" => args.reference = Some(value("--reference")?.into()),
            "--duration" => {
                args.duration = value("--duration")?.parse().map_err(|e| format!("{e}"))?
            }
            "--steps" => args.steps = value("--steps")?.parse().map_err(|e| format!("{e}"))?,
            "--repeat" => args.repeat = value("--repeat")?.parse().map_err(|e| format!("{e}"))?,
            "--f16" => args.f16 = true,
            // cargo bench passes --bench; other harness flags are not ours.
            _ => {}
        }
    }
    Ok(args)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Peak resident set size of this process (`VmHWM`), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let ctx = Context::new_blocking()?;
    let info = ctx.adapter_info();
    println!(
        "adapter: {} ({:?}, {:?}); model {}; {} s, {} steps, weights {}",
        info.name,
        info.backend,
        info.device_type,
        args.model.display(),
        args.duration,
        args.steps,
        if args.f16 { "f16" } else { "f32" }
    );
    let start = Instant::now();
    let pipeline = Pipeline::load(&ctx, &args.model, Precision::weights_f16(args.f16))?;
    println!("load: {:.2} s", start.elapsed().as_secs_f64());
    let repeat = args.repeat.max(1);
    let (prompt, negative) = ("a dog barking in the rain", "low quality");

    let text = median(
        (0..repeat)
            .map(|_| {
                let t = Instant::now();
                pipeline
                    .encode_text(prompt, Some(negative), true)
                    .map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?,
    );

    // The whole run, timed at its events: the first step includes recording the step graph,
    // the later ones are replays; decoding follows the last step.
    let lengths = pipeline.lengths(args.duration)?;
    let shape_count = 8 * lengths.latent_frames * lengths.latent_width;
    let request = Request {
        prompt: prompt.into(),
        negative_prompt: Some(negative.into()),
        steps: args.steps,
        duration_s: Some(args.duration),
        init_latents: Some(noise::standard_normal(0, shape_count)),
        ..Request::default()
    };
    let mut runs = Vec::new();
    let mut step_times = Vec::new();
    let mut first_steps = Vec::new();
    let mut decodes = Vec::new();
    let runs_wanted = if repeat > 1 { repeat - 1 } else { 1 };
    let mut output = None;
    for _ in 0..runs_wanted {
        let start = Instant::now();
        let mut last = None::<Instant>;
        let mut first = true;
        let out = pipeline.generate(&request, &AtomicBool::new(false), |event| {
            if let Event::Step { .. } = event {
                let now = Instant::now();
                match last {
                    Some(previous) => step_times.push((now - previous).as_secs_f64()),
                    None if first => first_steps.push((now - start).as_secs_f64()),
                    None => {}
                }
                first = false;
                last = Some(now);
            }
        })?;
        let end = Instant::now();
        if let Some(last) = last {
            decodes.push((end - last).as_secs_f64());
        }
        runs.push((end - start).as_secs_f64());
        output = Some(out);
    }
    let output = output.ok_or("no run")?;
    let step = if step_times.is_empty() {
        median(first_steps.clone())
    } else {
        median(step_times)
    };

    let shape = output.latent_shape;
    let vae = median(
        (0..repeat)
            .map(|_| {
                let t = Instant::now();
                pipeline
                    .decode_mel(&output.latents, shape)
                    .map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?,
    );
    let vocoder = median(
        (0..repeat)
            .map(|_| {
                let t = Instant::now();
                pipeline
                    .vocode(&output.mel)
                    .map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?,
    );

    let reference: Option<serde_json::Value> = match &args.reference {
        Some(path) => Some(serde_json::from_str(&std::fs::read_to_string(path)?)?),
        None => None,
    };
    let theirs = |key: &str| reference.as_ref().and_then(|r| r["seconds"][key].as_f64());
    if let Some(r) = &reference {
        println!(
            "reference: torch {} on {} with {} threads, {} s, {} steps",
            r["torch"], r["device"], r["threads"], r["duration_s"], r["steps"]
        );
    }
    println!(
        "{:<34} {:>10} {:>12} {:>10}",
        "stage", "ours (s)", "diffusers (s)", "ours/theirs"
    );
    let rows = [
        ("text encoder (prompt + negative)", text, "text_encoder"),
        ("UNet guidance step (replayed)", step, "unet_guidance_step"),
        ("VAE decode", vae, "vae_decode"),
        ("vocoder", vocoder, "vocoder"),
        ("whole run", median(runs), "run"),
    ];
    for (name, ours, key) in rows {
        match theirs(key) {
            Some(t) => println!("{name:<34} {ours:>10.2} {t:>12.2} {:>10.2}", ours / t),
            None => println!("{name:<34} {ours:>10.2} {:>12} {:>10}", "-", "-"),
        }
    }
    println!(
        "first step (records the graph): {:.2} s; decode after the last step: {:.2} s",
        median(first_steps),
        median(decodes)
    );
    if let Some(stats) = pipeline.step_stats() {
        println!(
            "step graph: {} dispatches, {} submit(s) per step, {} kernels; intermediates {:.1} MiB planned vs {:.1} MiB unplanned ({} buffers); weights {:.1} MiB",
            stats.dispatches,
            stats.submits / stats.runs.max(1),
            stats.kernels,
            stats.planned_bytes as f64 / (1 << 20) as f64,
            stats.unplanned_bytes as f64 / (1 << 20) as f64,
            stats.buffers,
            stats.weight_bytes as f64 / (1 << 20) as f64,
        );
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let ours_rss = peak_rss().map_or("?".into(), |b| format!("{:.2} GiB", gib(b)));
    let their_rss = reference
        .as_ref()
        .and_then(|r| r["peak_rss_bytes"].as_u64())
        .map_or("-".into(), |b| format!("{:.2} GiB", gib(b)));
    println!("peak resident memory: ours {ours_rss}, diffusers {their_rss}");
    Ok(())
}
