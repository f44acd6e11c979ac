"""Times diffusers' AudioLDMPipeline stage by stage on a model folder, for `cargo bench --bench
pipeline` to put side by side with our engine (same machine, same model, same sizes).

    python scripts/reference/bench_reference.py --model target/reference/full --out target/bench/reference.json

Stages (fp32): text encoder (prompt and negative, each padded to 512 tokens as the pipeline
does), one UNet guidance step (batch 2) at --duration seconds, VAE decode, vocoder, and a
whole --steps run. Median of --repeat runs each; peak RSS of the process.

--memory times nothing: it loads the pipeline in --dtype (fp32, or fp16 where the device runs it),
makes one clip of --steps (2 unless given) at --duration seconds, and records the process's peak
resident memory (and peak CUDA memory on a GPU), for `cargo bench --bench pipeline -- --memory`.
Peak resident memory is per process: one duration and dtype per run.

--clap DIR also times CLAP's audio side on one 10 s clip at 16 kHz (seconds.clap_audio):
scipy.signal.resample_poly to 48 kHz, ClapFeatureExtractor, ClapModel.get_audio_features, on
RandomState(0).standard_normal(160000) * 0.1 (the clip `cargo bench --bench pipeline -- --clap`
uses). --clap-only times just that.
"""

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AudioLDMPipeline


def timed(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        start = time.perf_counter()
        with torch.no_grad():
            out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=None, help="10, or 2 with --memory")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", action="store_true", help="measure peak memory of one run, no timings")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--tf32", action="store_true", help="on CUDA, let fp32 matmuls and convolutions use TF32")
    parser.add_argument("--gemm", action="store_true", help="time a 1024^3 fp32 matmul (cuBLAS on CUDA) and exit")
    parser.add_argument("--clap", type=Path, help="a ClapModel folder: time its audio side too")
    parser.add_argument("--clap-only", action="store_true", help="time only CLAP's audio side")
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 2 if args.memory else 10
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    # PyTorch's defaults: TF32 off for matmuls, on for cuDNN convolutions; --tf32 turns both on,
    # and without it both are off (plain fp32).
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    def gemm_1024():
        a = torch.randn(1024, 1024, device=device)
        b = torch.randn(1024, 1024, device=device)
        seconds, _ = timed(lambda: (a @ b, sync()), max(args.repeat, 10))
        return seconds

    if args.gemm:
        seconds = gemm_1024()
        write_result(args, {"device": str(device), "torch": torch.__version__, "tf32": args.tf32,
                            "seconds": {"gemm_1024": seconds}, "gflops": 2 * 1024**3 / seconds / 1e9})
        return

    clap_seconds = bench_clap(args, device, sync) if args.clap else None
    if args.clap_only:
        write_result(args, {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "seconds": {"clap_audio": clap_seconds}})
        return

    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    pipe = AudioLDMPipeline.from_pretrained(args.model, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    prompt, negative = "a dog barking in the rain", "low quality"
    if args.memory:
        measure_memory(pipe, args, device, prompt, negative)
        return

    def text():
        out = pipe._encode_prompt(prompt, device, 1, True, negative)
        sync()
        return out

    t_text, embeds = timed(text, args.repeat)

    factor = np.prod(pipe.vocoder.config.upsample_rates) / pipe.vocoder.config.sampling_rate
    height = int(args.duration / factor)
    scale = pipe.vae_scale_factor
    if height % scale:
        height = int(np.ceil(height / scale)) * scale
    channels = pipe.unet.config.in_channels
    width = pipe.vocoder.config.model_in_dim // scale
    generator = np.random.RandomState(0)
    latents = torch.from_numpy(generator.standard_normal((1, channels, height // scale, width)).astype(np.float32)).to(device=device, dtype=dtype)
    timestep = torch.tensor([500], device=device)

    def unet_step():
        x = torch.cat([latents] * 2)
        eps = pipe.unet(x, timestep, encoder_hidden_states=None, class_labels=embeds).sample
        uncond, cond = eps.chunk(2)
        out = uncond + 2.5 * (cond - uncond)
        sync()
        return out

    t_unet, _ = timed(unet_step, args.repeat)

    def vae():
        out = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        sync()
        return out

    t_vae, mel = timed(vae, args.repeat)

    def vocoder():
        out = pipe.vocoder(mel.squeeze(1))
        sync()
        return out

    t_vocoder, _ = timed(vocoder, args.repeat)

    def whole():
        out = pipe(
            prompt,
            negative_prompt=negative,
            num_inference_steps=args.steps,
            guidance_scale=2.5,
            audio_length_in_s=args.duration,
            latents=latents,
        ).audios
        sync()
        return out

    t_run, _ = timed(whole, max(1, args.repeat - 1) if args.repeat > 1 else 1)
    t_gemm = gemm_1024()

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "tf32": args.tf32,
        "duration_s": args.duration,
        "steps": args.steps,
        "latent_shape": list(latents.shape),
        "seconds": {
            "text_encoder": t_text,
            "unet_guidance_step": t_unet,
            "vae_decode": t_vae,
            "vocoder": t_vocoder,
            "run": t_run,
            "clap_audio": clap_seconds,
            "gemm_1024": t_gemm,
        },
        "peak_rss_bytes": peak_rss,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    }
    write_result(args, result)


def bench_clap(args, device, sync):
    """Median seconds of CLAP's audio side on one 10 s clip at 16 kHz."""
    import scipy.signal
    from transformers import ClapFeatureExtractor, ClapModel

    model = ClapModel.from_pretrained(args.clap).eval().to(device)
    extractor = ClapFeatureExtractor.from_pretrained(args.clap)
    clip = (np.random.RandomState(0).standard_normal(160000) * 0.1).astype(np.float32)

    def embed():
        clip48 = scipy.signal.resample_poly(clip, 3, 1).astype(np.float32)
        np.random.seed(0)
        features = extractor([clip48], sampling_rate=48000, return_tensors="pt")
        out = model.get_audio_features(input_features=features.input_features.to(device))
        sync()
        return out

    seconds, _ = timed(embed, args.repeat)
    print(f"CLAP audio embedding of a 10 s clip: {seconds:.2f} s")
    return seconds


def write_result(args, result):
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def measure_memory(pipe, args, device, prompt, negative):
    start = time.perf_counter()
    with torch.no_grad():
        pipe(
            prompt,
            negative_prompt=negative,
            num_inference_steps=args.steps,
            guidance_scale=2.5,
            audio_length_in_s=args.duration,
            generator=torch.Generator(device).manual_seed(0),
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    write_result(
        args,
        {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "duration_s": args.duration,
            "steps": args.steps,
            "dtype": args.dtype,
            "seconds": {"run": time.perf_counter() - start},
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_cuda_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        },
    )


if __name__ == "__main__":
    main()
