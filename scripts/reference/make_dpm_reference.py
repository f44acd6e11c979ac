#!/usr/bin/env python3
"""Goldens for DPM-Solver++ 2M on the tiny AudioLDM pipeline, as diffusers users run it:
`pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`.

    python make_dpm_reference.py                 # -> tests/fixtures/tiny-dpm-goldens.safetensors
    python make_dpm_reference.py --study --model target/reference/full --duration 2.56
                                                 # mel distance of DPM-Solver++ at 5..25 steps to DDIM at 50

Two spacings. `leading`: the tiny fixture's scheduler_config.json names "leading" (recent diffusers
write the key), so DPM honours it. `linspace`: the same config without `timestep_spacing` (as the
Hub checkpoints' files are), so DPM's own default applies. Each runs PROMPT with NEGATIVE, guidance
2.5, STEPS steps (first-order first step, second-order middle steps, first-order last step onto
sigma 0), from initial latents np.random.RandomState(SEED).standard_normal(shape).astype(float32).

Goldens (float32 unless noted): {spacing}_timesteps int64 [STEPS], {spacing}_latents (before the VAE
scaling), {spacing}_waveform [1, L]. Metadata: prompt, negative, seed, steps, guidance, duration.

--study prints, for a model folder (the full-size random one), the mean absolute difference of the
log-mel of DPM-Solver++ at 5, 10, 15, 20, 25 steps and of DDIM at 10, 25 steps from DDIM at 50
steps, all from the same initial latents, and writes nothing.
"""

import argparse
from pathlib import Path

import torch
from diffusers import AudioLDMPipeline, DDIMScheduler, DPMSolverMultistepScheduler
from safetensors.torch import save_file

from make_edit_reference import decoded_run, latent_shape, normal

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"

PROMPT = "a dog barking in the rain, then thunder!"
NEGATIVE = "low quality"
SEED = 7
STEPS = 5
GUIDANCE = 2.5
DURATION = 1.0


def run(pipe, steps, duration, latents):
    """One guided run; returns (latents before decoding, mel, waveform [1, L])."""
    return decoded_run(
        pipe,
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        audio_length_in_s=duration,
        latents=latents.clone(),
    )


def initial_latents(pipe, duration):
    return normal(SEED, latent_shape(pipe, duration))


def goldens(model: Path, out: Path):
    pipe = AudioLDMPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    base = dict(pipe.scheduler.config)
    assert base.get("timestep_spacing") == "leading", "the fixture's config names its spacing"
    without = {k: v for k, v in base.items() if k != "timestep_spacing"}
    tensors = {}
    for spacing, config in [("leading", base), ("linspace", without)]:
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(config)
        assert pipe.scheduler.config.timestep_spacing == spacing
        latents, _, wave = run(pipe, STEPS, DURATION, initial_latents(pipe, DURATION))
        pipe.scheduler.set_timesteps(STEPS)
        tensors[f"{spacing}_timesteps"] = pipe.scheduler.timesteps.to(torch.int64)
        tensors[f"{spacing}_latents"] = latents
        tensors[f"{spacing}_waveform"] = wave
        print(f"{spacing}: timesteps {pipe.scheduler.timesteps.tolist()}, latents {list(latents.shape)}")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(out),
        metadata=dict(
            prompt=PROMPT,
            negative=NEGATIVE,
            seed=str(SEED),
            steps=str(STEPS),
            guidance=str(GUIDANCE),
            duration=str(DURATION),
        ),
    )
    print(f"wrote {out}")


def study(model: Path, duration: float):
    pipe = AudioLDMPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    config = {k: v for k, v in pipe.scheduler.config.items() if k != "timestep_spacing"}
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    dpm = DPMSolverMultistepScheduler.from_config(config)
    start = initial_latents(pipe, duration)
    pipe.scheduler = ddim
    _, target, _ = run(pipe, 50, duration, start)
    print(f"DDIM 50 steps: log-mel mean |x| {target.abs().mean():.4f}")
    for name, scheduler, steps in [("DDIM", ddim, 10), ("DDIM", ddim, 25)] + [
        ("DPM-Solver++", dpm, s) for s in (5, 10, 15, 20, 25)
    ]:
        pipe.scheduler = scheduler
        _, mel, _ = run(pipe, steps, duration, start)
        print(f"{name} {steps} steps: mean |mel - DDIM-50 mel| = {(mel - target).abs().mean():.4f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=FIXTURES / "tiny")
    parser.add_argument("--out", type=Path, default=FIXTURES / "tiny-dpm-goldens.safetensors")
    parser.add_argument("--study", action="store_true")
    parser.add_argument("--duration", type=float, default=2.56)
    args = parser.parse_args()
    if args.study:
        study(args.model, args.duration)
    else:
        goldens(args.model, args.out)


if __name__ == "__main__":
    main()
