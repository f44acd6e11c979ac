//! The pipeline stage by stage on a full-size model, side by side with diffusers on the same
//! machine and model (each stage's FLOPs are counted by the graph, `Profile`):
//!
//! ```sh
//! python scripts/reference/make_reference.py --full --out target/reference/full
//! python scripts/reference/bench_reference.py --model target/reference/full \
//!     --out target/bench/reference.json
//! cargo bench --bench pipeline -- --model target/reference/full \
//!     --reference target/bench/reference.json
//! ```
//!
//! Options: `--device auto|gpu|cpu` (as the CLI's, `AUDIOLDM_DEVICE`; `auto` takes the CPU
//! backend where the only adapter is a software one), `--duration S` (10), `--steps N` (10),
//! `--repeat N` (3, medians), `--f16`, `--low-memory` (one network in memory at a time),
//! `--limits adapter|webgpu-default`. Beside the stage times it prints each stage's GFLOP/s (its
//! FLOPs from a profiled run, where the backend can profile) and a 1024^3 GEMM against
//! PyTorch's; run `bench_reference.py` with `--threads` equal to ours (`RAYON_NUM_THREADS`, or
//! the core count) for a fair pair.
//! Prints seconds per stage, our time over theirs, peak resident memory (on a software adapter
//! GPU memory is host memory), and the denoising step's graph: dispatches, submits per step,
//! planned intermediate bytes against the unplanned sum, weight bytes.
//!
//! `--memory` measures memory instead of time: one run of `--steps` (2 unless given), then the
//! peak GPU bytes of each stage (resident weights plus planned activations), the resident memory
//! after loading and at the peak, beside diffusers' peak from a reference made with
//! `bench_reference.py --memory` at the same duration and precision. Peak resident memory is
//! per process, so measure each duration and precision in a run of its own.
//!
//! `--profile` times nothing on the CPU: after one run of `--steps` (1 unless given) it prints the
//! GPU time of every dispatch of one denoising step, one VAE decode and one vocoder run, from
//! timestamp queries, per kernel family and for the costliest ops (name, kernel, output shape,
//! time, achieved GFLOP/s where the op counts its work, GB/s over the bytes it binds). An adapter
//! without `TIMESTAMP_QUERY` is named and nothing is measured.
//!
//! `--clap DIR` also times CLAP's audio side on one 10 s clip at 16 kHz (what a candidate is):
//! resampling to 48 kHz, the front end and the HTSAT tower, beside `bench_reference.py --clap DIR`
//! (scipy's polyphase resampler, transformers' `ClapFeatureExtractor` and `ClapModel`). The clip
//! is `RandomState(0).standard_normal(160000) * 0.1` on both sides. `--clap-only` times just
//! that (no AudioLDM run):
//!
//! ```sh
//! python scripts/reference/make_clap_reference.py --full
//! python scripts/reference/bench_reference.py --model target/reference/full \
//!     --clap target/reference/clap-full --clap-only --out target/bench/clap.json
//! cargo bench --bench pipeline -- --model target/reference/full \
//!     --clap target/reference/clap-full --clap-only --reference target/bench/clap.json
//! ```

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use audioldm::audio::Audio;
use audioldm::engine::{Context, DeviceChoice, Graph, LimitsProfile, Tensor};
use audioldm::model::nn::Precision;
use audioldm::noise;
use audioldm::pipeline::ranking::ClapScorer;
use audioldm::pipeline::{Event, Pipeline, Request, Residency};

struct Args {
    model: PathBuf,
    reference: Option<PathBuf>,
    duration: f64,
    /// `--steps`: 10 when timing, 2 when measuring memory.
    steps: Option<usize>,
    repeat: usize,
    f16: bool,
    low_memory: bool,
    limits: Option<LimitsProfile>,
    device: DeviceChoice,
    memory: bool,
    clap: Option<PathBuf>,
    clap_only: bool,
    profile: bool,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        model: PathBuf::from("target/reference/full"),
        reference: None,
        duration: 10.0,
        steps: None,
        repeat: 3,
        f16: false,
        low_memory: false,
        limits: None,
        device: DeviceChoice::from_env().map_err(|e| e.to_string())?,
        memory: false,
        clap: None,
        clap_only: false,
        profile: false,
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
            "--steps" => {
                args.steps = Some(value("--steps")?.parse().map_err(|e| format!("{e}"))?);
            }
            "--repeat" => args.repeat = value("--repeat")?.parse().map_err(|e| format!("{e}"))?,
            "--f16" => args.f16 = true,
            "--low-memory" => args.low_memory = true,
            "--memory" => args.memory = true,
            "--clap" => args.clap = Some(value("--clap")?.into()),
            "--clap-only" => args.clap_only = true,
            "--profile" => args.profile = true,
            "--device" => {
                args.device = DeviceChoice::parse(&value("--device")?).map_err(|e| e.to_string())?
            }
            "--limits" => {
                args.limits =
                    Some(LimitsProfile::parse(&value("--limits")?).map_err(|e| e.to_string())?)
            }
            // cargo bench passes --bench; other harness flags are not ours.
            _ => {}
        }
    }
    Ok(args)
}

/// Median seconds of a 1024^3 f32 matmul through the engine (a one-op graph, replayed).
fn gemm_1024(ctx: &Context, repeat: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let n = 1024;
    let values = noise::standard_normal(1, n * n);
    let a = Tensor::from_f32(ctx, [n, n], audioldm::engine::DType::F32, &values)?;
    let mut g = Graph::new(ctx);
    let (va, vb) = (g.input(&a), g.input(&a));
    let c = g.matmul(va, vb, 1.0)?;
    g.output(c)?;
    let mut exe = g.build()?;
    exe.run()?;
    ctx.wait()?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        exe.run()?;
        ctx.wait()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A field of `/proc/self/status` given in kB (`VmHWM`: peak resident set, `VmRSS`: now), in bytes.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn peak_rss() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

fn gib_or_unknown(bytes: Option<u64>) -> String {
    bytes.map_or("?".into(), |b| {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    })
}

/// Diffusers' peak resident memory as the reference recorded it, `-` without one.
fn reference_peak_rss(reference: &Option<serde_json::Value>) -> String {
    reference
        .as_ref()
        .and_then(|r| r["peak_rss_bytes"].as_u64())
        .map_or("-".into(), |b| gib_or_unknown(Some(b)))
}

fn read_reference(
    path: &Option<PathBuf>,
) -> Result<Option<serde_json::Value>, Box<dyn std::error::Error>> {
    Ok(match path {
        Some(path) => Some(serde_json::from_str(&std::fs::read_to_string(path)?)?),
        None => None,
    })
}

/// One run of `--steps`; then GPU memory per stage and resident memory, ours beside diffusers'.
fn measure_memory(
    args: &Args,
    pipeline: &Pipeline,
    rss_after_load: Option<u64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let request = Request {
        prompt: "a dog barking in the rain".into(),
        negative_prompt: Some("low quality".into()),
        steps: args.steps.unwrap_or(2),
        duration_s: Some(args.duration),
        ..Request::default()
    };
    let start = Instant::now();
    pipeline.generate(&request, &AtomicBool::new(false), |_| {})?;
    println!(
        "one run of {} steps: {:.1} s",
        request.steps,
        start.elapsed().as_secs_f64()
    );
    let report = pipeline.memory_report();
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    println!("{:<24} {:>12}", "weights", "MiB");
    for (network, bytes) in &report.weights {
        println!("{network:<24} {:>12.0}", mib(*bytes));
    }
    println!(
        "{:<24} {:>12} {:>14}",
        "stage", "peak GPU MiB", "activations MiB"
    );
    for stage in &report.stages {
        println!(
            "{:<24} {:>12.0} {:>14.0}",
            stage.stage,
            mib(stage.peak_bytes),
            mib(stage.activation_bytes)
        );
    }
    println!(
        "peak GPU memory: {:.0} MiB = {:.2} GB",
        mib(report.peak_bytes()),
        report.peak_bytes() as f64 / 1e9
    );
    let reference = read_reference(&args.reference)?;
    if let Some(r) = &reference {
        println!(
            "reference: torch {} on {}, {} s, {} steps, {}",
            r["torch"], r["device"], r["duration_s"], r["steps"], r["dtype"]
        );
    }
    println!(
        "resident memory: after load {}, peak {}; diffusers peak {}",
        gib_or_unknown(rss_after_load),
        gib_or_unknown(peak_rss()),
        reference_peak_rss(&reference)
    );
    if let Some(cuda) = reference
        .as_ref()
        .and_then(|r| r["peak_cuda_bytes"].as_u64())
    {
        println!("diffusers peak CUDA memory: {:.0} MiB", mib(cuda));
    }
    Ok(())
}

/// One run, then the GPU time of each dispatch of a step, a VAE decode and a vocoder run.
fn profile(
    args: &Args,
    ctx: &Context,
    pipeline: &Pipeline,
) -> Result<(), Box<dyn std::error::Error>> {
    if !ctx.is_cpu() && !ctx.capabilities().timestamp_query {
        println!(
            "{} does not offer timestamp queries (TIMESTAMP_QUERY): no GPU times on this adapter",
            ctx.adapter_info().name
        );
        return Ok(());
    }
    let request = Request {
        prompt: "a dog barking in the rain".into(),
        negative_prompt: Some("low quality".into()),
        steps: args.steps.unwrap_or(1),
        duration_s: Some(args.duration),
        ..Request::default()
    };
    let output = pipeline.generate(&request, &AtomicBool::new(false), |_| {})?;
    let mut whole = 0.0;
    for (stage, profile) in pipeline.profile(&output)? {
        println!("{}", profile.report(stage, 25));
        whole += profile.total().seconds;
    }
    println!("GPU time of a step, a decode and a vocoder run together: {whole:.2} s");
    Ok(())
}

/// CLAP's audio side on one 10 s clip at 16 kHz: resampling, front end, HTSAT tower.
fn bench_clap(
    ctx: &Context,
    args: &Args,
    dir: &std::path::Path,
    reference: &Option<serde_json::Value>,
) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let scorer = ClapScorer::load(
        ctx,
        dir,
        Precision::weights_f16(args.f16),
        &args.model.join("tokenizer"),
    )?;
    println!("CLAP load: {:.2} s", start.elapsed().as_secs_f64());
    let clip = Audio {
        sample_rate: 16_000,
        samples: noise::standard_normal(0, 160_000)
            .iter()
            .map(|x| x * 0.1)
            .collect(),
    };
    let mut times = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let t = Instant::now();
        pollster::block_on(scorer.embed_clips_async(std::slice::from_ref(&clip), 0))?;
        times.push(t.elapsed().as_secs_f64());
    }
    let first = times[0];
    let ours = median(if times.len() > 1 {
        times[1..].to_vec()
    } else {
        times
    });
    let theirs = reference
        .as_ref()
        .and_then(|r| r["seconds"]["clap_audio"].as_f64());
    match theirs {
        Some(t) => println!(
            "CLAP audio embedding of a 10 s clip: ours {ours:.2} s (first {first:.2} s), \
             transformers {t:.2} s, ours/theirs {:.2}",
            ours / t
        ),
        None => println!(
            "CLAP audio embedding of a 10 s clip: ours {ours:.2} s (first, compiling: {first:.2} s)"
        ),
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let limits = match &args.limits {
        Some(profile) => profile.clone(),
        None => LimitsProfile::from_env()?,
    };
    let ctx = Context::for_device_blocking(args.device, limits)?;
    let residency = Residency::from_low_memory(args.low_memory);
    println!(
        "{}, limits {}; model {}; {} s, weights {}, {:?}",
        ctx.backend_name(),
        ctx.limits_profile(),
        args.model.display(),
        args.duration,
        if args.f16 { "f16" } else { "f32" },
        residency
    );
    let reference = read_reference(&args.reference)?;
    if let Some(clap) = &args.clap {
        bench_clap(&ctx, &args, clap, &reference)?;
        if args.clap_only {
            return Ok(());
        }
    }
    let start = Instant::now();
    let pipeline = Pipeline::load_with(
        &ctx,
        &args.model,
        Precision::weights_f16(args.f16),
        residency,
    )?;
    println!("load: {:.2} s", start.elapsed().as_secs_f64());
    if args.memory {
        return measure_memory(&args, &pipeline, proc_status_bytes("VmRSS:"));
    }
    if args.profile {
        return profile(&args, &ctx, &pipeline);
    }
    let steps = args.steps.unwrap_or(10);
    println!("{steps} steps");
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
        steps,
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
    // Each stage's FLOPs, from one profiled run of it (where the backend can time ops).
    let flops: Vec<(&str, u64)> = if ctx.is_cpu() || ctx.capabilities().timestamp_query {
        pipeline
            .profile(&output)?
            .into_iter()
            .map(|(stage, p)| (stage, p.total().flops))
            .collect()
    } else {
        Vec::new()
    };
    let stage_flops = |key: &str| {
        let stage = match key {
            "unet_guidance_step" => "denoising step",
            "vae_decode" => "VAE decode",
            "vocoder" => "vocoder",
            _ => return None,
        };
        flops.iter().find(|(s, _)| *s == stage).map(|(_, f)| *f)
    };
    let gflops = |flops: Option<u64>, seconds: f64| {
        flops.map_or("-".to_string(), |f| {
            format!("{:.1}", f as f64 / seconds / 1e9)
        })
    };
    println!("{:<34} {:>10}", "", "GFLOP/s");
    for (name, ours, key) in rows {
        let rate = gflops(stage_flops(key), ours);
        match theirs(key) {
            Some(t) => println!(
                "{name:<34} {ours:>10.2} {t:>12.2} {:>10.2} {rate:>10}",
                ours / t
            ),
            None => println!("{name:<34} {ours:>10.2} {:>12} {:>10} {rate:>10}", "-", "-"),
        }
    }
    let gemm = gemm_1024(&ctx, repeat.max(10))?;
    let gemm_flops = Some(2 * 1024u64.pow(3));
    match theirs("gemm_1024") {
        Some(t) => println!(
            "{:<34} {gemm:>10.4} {t:>12.4} {:>10.2} {:>10}   (torch {})",
            "GEMM 1024^3",
            gemm / t,
            gflops(gemm_flops, gemm),
            gflops(gemm_flops, t)
        ),
        None => println!(
            "{:<34} {gemm:>10.4} {:>12} {:>10} {:>10}",
            "GEMM 1024^3",
            "-",
            "-",
            gflops(gemm_flops, gemm)
        ),
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
    println!(
        "peak resident memory: ours {}, diffusers {}; {}",
        gib_or_unknown(peak_rss()),
        reference_peak_rss(&reference),
        pipeline.memory_report()
    );
    Ok(())
}
