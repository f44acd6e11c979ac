#!/usr/bin/env python3
"""Audio-to-audio reference: style transfer, inpainting, super-resolution and continuation on
diffusers' AudioLDM parts, following the original AudioLDM repo (audioldm/pipeline.py, ldm.py) and the
project's noise contract (src/pipeline/edit.rs, ARCHITECTURE.md). Writes the input clips and
golden tensors for the Rust parity tests.

    python make_edit_reference.py            # tiny model (tests/fixtures/tiny) -> tests/fixtures/
    python make_edit_reference.py --full     # full-size random model (make_reference.py --full)
                                             #   -> target/reference/full-edit-goldens.safetensors

Noise contract: every draw is np.random.RandomState(k).standard_normal(shape).astype(float32),
shape the latent shape [1, C, frames, width] (the clip's own for the posterior sample):
  seed      the starting noise (style transfer: the forward noise added to the clip's latents)
  seed + 1  DDIM's variance noise, one draw per step with sigma > 0
  seed + 2  the VAE posterior sample of the clip
  seed + 3  the forward noise of the known region, one draw per step in step order
"""

import argparse
import math
import wave
from pathlib import Path

import librosa
import numpy as np
import scipy.signal
import torch
from safetensors.torch import save_file

from diffusers import AudioLDMPipeline

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"

PROMPT = "a dog barking in the rain, then thunder!"
NEGATIVE = "low quality, noisy, distorted, muffled, clipping, hum, static, silence, wind, crowd talking, music"
GUIDANCE = 2.5
SEED = 7

SAMPLE_RATE = 16000
HOP = 160
N_FFT = 1024
F_MAX = 8000.0
LOG_FLOOR = 1e-5


def chirp(rate: int, seconds: float) -> np.ndarray:
    """An exponential chirp 200 Hz -> 3.5 kHz (below the 8 kHz file's Nyquist) plus a little noise."""
    t = np.arange(int(rate * seconds)) / rate
    f0, f1 = 200.0, 3500.0
    k = math.log(f1 / f0) / seconds
    phase = 2 * math.pi * f0 * (np.exp(k * t) - 1) / k
    noise = np.random.RandomState(5).standard_normal(t.shape)
    return 0.6 * np.sin(phase) + 0.05 * noise


def write_pcm16(path: Path, samples: np.ndarray, rate: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


def read_pcm16(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as f:
        rate = f.getframerate()
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0), rate


def lengths(pipe: AudioLDMPipeline, duration: float):
    """diffusers' AudioLDMPipeline lengths (its __call__ and prepare_latents)."""
    factor = np.prod(pipe.vocoder.config.upsample_rates) / pipe.vocoder.config.sampling_rate
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    height = int(duration / factor)
    if height % scale:
        height = math.ceil(height / scale) * scale
    return dict(
        mel_frames=height,
        latent_frames=height // scale,
        latent_width=pipe.vocoder.config.model_in_dim // scale,
        samples=int(duration * pipe.vocoder.config.sampling_rate),
        seconds_per_frame=float(factor),
        scale=scale,
    )


def wav_to_fbank(wav: np.ndarray, frames: int, n_mels: int) -> np.ndarray:
    """The original's front end (audioldm/audio/tools.py wav_to_fbank) on a 16 kHz clip: [frames, n_mels]."""
    w = wav.astype(np.float32)
    w = w - np.mean(w)
    w = w / (np.max(np.abs(w)) + np.float32(1e-8))
    w = w * np.float32(0.5)
    if len(w) < frames * HOP:
        w = np.concatenate([w, np.zeros(frames * HOP - len(w), np.float32)])
    w = np.float32(0.5) * w / np.max(np.abs(w))
    w = np.clip(w, -1, 1).astype(np.float64)
    padded = np.pad(w, N_FFT // 2, mode="reflect")
    count = 1 + len(w) // HOP
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    spectra = np.stack([np.abs(np.fft.rfft(padded[i * HOP : i * HOP + N_FFT] * window)) for i in range(count)])
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels, fmin=0.0, fmax=F_MAX)
    logmel = np.log(np.maximum(spectra @ basis.T.astype(np.float64), LOG_FLOOR))
    out = np.zeros((frames, n_mels))
    out[: min(frames, count)] = logmel[:frames]
    return out.astype(np.float32)


def latent_shape(pipe: AudioLDMPipeline, duration: float):
    """[1, C, frames, width] of the UNet's latents for `duration` seconds."""
    n = lengths(pipe, duration)
    return (1, pipe.unet.config.in_channels, n["latent_frames"], n["latent_width"])


@torch.no_grad()
def decoded_run(pipe: AudioLDMPipeline, **call):
    """`pipe(**call, output_type="np")`, returning the final latents and the mel it decoded them
    to (AudioLDMPipeline offers neither) with the waveform [B, L]."""
    captured = {}
    decode = pipe.decode_latents

    def keep(latents):
        captured["latents"] = latents.clone()
        captured["mel"] = decode(latents)
        return captured["mel"]

    pipe.decode_latents = keep
    try:
        audio = pipe(**call, output_type="np").audios
    finally:
        pipe.decode_latents = decode
    return captured["latents"], captured["mel"], torch.from_numpy(np.asarray(audio, dtype=np.float32))


def normal(seed: int, shape) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed % 2**32).standard_normal(shape).astype(np.float32))


@torch.no_grad()
def encode(pipe: AudioLDMPipeline, fbank: np.ndarray, seed: int) -> torch.Tensor:
    """The posterior sample times the scaling factor, outliers clipped as the original does."""
    dist = pipe.vae.encode(torch.from_numpy(fbank)[None, None]).latent_dist
    z = (dist.mean + dist.std * normal(seed + 2, tuple(dist.mean.shape))) * pipe.vae.config.scaling_factor
    if z.abs().max() > 100:
        z = z.clamp(-10, 10)
    return z


@torch.no_grad()
def edit(pipe, clip16, mode, params, steps, eta, seed=SEED):
    """One edit of a 16 kHz clip; returns the golden tensors."""
    n_mels = pipe.vocoder.config.model_in_dim
    duration = len(clip16) / SAMPLE_RATE
    clip_len = lengths(pipe, duration)
    out_len = clip_len
    fbank = wav_to_fbank(clip16, clip_len["mel_frames"], n_mels)
    z0 = encode(pipe, fbank, seed)
    frames, width, scale = clip_len["latent_frames"], clip_len["latent_width"], clip_len["scale"]

    mask = None
    if mode == "inpaint":
        mask = np.ones((frames, width), np.float32)
        spf = clip_len["seconds_per_frame"]
        for f in range(frames):
            times = [m * spf for m in range(scale * f, scale * (f + 1))]
            if any(start <= t < end for t in times for start, end in params["ranges"]):
                mask[f] = 0
    elif mode == "superres":
        upper = librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=F_MAX, htk=False)[2:]
        kept = np.array([upper[scale * j + scale - 1] <= params["cutoff_hz"] for j in range(width)], np.float32)
        mask = np.tile(kept, (frames, 1))
    elif mode == "extend":
        out_len = lengths(pipe, duration + params["seconds"])
        mask = np.zeros((out_len["latent_frames"], width), np.float32)
        mask[:frames] = 1

    channels = pipe.unet.config.in_channels
    shape = (1, channels, out_len["latent_frames"], width)
    known = torch.zeros(shape)
    known[:, :, :frames] = z0
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    ts = scheduler.timesteps
    embeds = pipe._encode_prompt(PROMPT, "cpu", 1, GUIDANCE > 1, negative_prompt=NEGATIVE)
    start = normal(seed, shape)
    variance = np.random.RandomState((seed + 1) % 2**32)
    known_noise = np.random.RandomState((seed + 3) % 2**32)

    if mode == "transfer":
        t_enc = int(params["strength"] * steps)
        first = steps - t_enc
        noise_t = int(ts[first]) + scheduler.config.num_train_timesteps // steps
        if noise_t < scheduler.config.num_train_timesteps:
            x = scheduler.add_noise(z0, start, torch.tensor([noise_t]))
        else:
            x = start
        run = ts[first:]
    else:
        x = start
        run = ts
    m = None if mask is None else torch.from_numpy(mask)[None, None]

    for t in run:
        if m is not None:
            e = torch.from_numpy(known_noise.standard_normal(shape).astype(np.float32))
            x = m * scheduler.add_noise(known, e, t.reshape(1)) + (1 - m) * x
        eps = pipe.unet(torch.cat([x] * 2), t, encoder_hidden_states=None, class_labels=embeds).sample
        uncond, cond = eps.chunk(2)
        eps = uncond + GUIDANCE * (cond - uncond)
        noise = torch.from_numpy(variance.standard_normal(shape).astype(np.float32)) if eta > 0 else None
        x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    if m is not None:
        x = m * known + (1 - m) * x

    mel = pipe.decode_latents(x)
    waveform = pipe.mel_spectrogram_to_waveform(mel)[:, : out_len["samples"]]
    g = dict(
        fbank=torch.from_numpy(fbank),
        source_latents=z0,
        latents=x,
        mel=mel[:, 0],
        waveform=waveform,
        text_embeds=embeds,
        timesteps=run.to(torch.int64),
    )
    if mask is not None:
        g["mask"] = torch.from_numpy(mask)
    return g


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the full-size random model of make_reference.py --full")
    parser.add_argument("--model", type=Path, help="model folder")
    parser.add_argument("--out", type=Path, help="goldens file")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    # The input clips: 0.5 s at 16 kHz, and the same signal at 8 kHz for super-resolution.
    clip16_path = FIXTURES / "clips" / "chirp-16k.wav"
    clip8_path = FIXTURES / "clips" / "chirp-8k.wav"
    if not args.full:
        write_pcm16(clip16_path, chirp(16000, 0.5), 16000)
        write_pcm16(clip8_path, chirp(8000, 0.5), 8000)
    clip16, rate16 = read_pcm16(clip16_path)
    clip8, rate8 = read_pcm16(clip8_path)
    assert (rate16, rate8) == (16000, 8000)
    # Super-resolution's goldens start from this 16 kHz version of the 8 kHz clip; the Rust test
    # feeds the same samples (its own resampler is compared separately).
    clip8_16k = scipy.signal.resample_poly(clip8, 2, 1).astype(np.float32)

    if args.full:
        model = args.model or ROOT / "target" / "reference" / "full"
        out = args.out or model.with_name(f"{model.name}-edit-goldens.safetensors")
        steps = 10
        cases = {
            "transfer": ("transfer", dict(strength=0.5), clip16),
            "inpaint": ("inpaint", dict(ranges=[(0.1, 0.25)]), clip16),
            "superres": ("superres", dict(cutoff_hz=rate8 / 2), clip8_16k),
            "extend": ("extend", dict(seconds=0.5), clip16),
        }
        etas = [0.0]
    else:
        model = args.model or FIXTURES / "tiny"
        out = args.out or FIXTURES / "tiny-edit-goldens.safetensors"
        steps = 4
        cases = {
            "transfer": ("transfer", dict(strength=0.5), clip16),
            "transfer_full": ("transfer", dict(strength=1.0), clip16),
            "inpaint": ("inpaint", dict(ranges=[(0.1, 0.2), (0.3, 0.35)]), clip16),
            "superres": ("superres", dict(cutoff_hz=rate8 / 2), clip8_16k),
            "extend": ("extend", dict(seconds=0.3), clip16),
        }
        etas = [0.0, 1.0]

    pipe = AudioLDMPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    tensors = {"clip8_16k": torch.from_numpy(clip8_16k)}
    for name, (mode, params, clip) in cases.items():
        for eta in etas:
            g = edit(pipe, clip, mode, params, steps, eta)
            for key, value in g.items():
                tensors[f"{name}_eta{int(eta)}_{key}"] = value.contiguous()
            print(f"{name} eta {eta}: latents {list(g['latents'].shape)}, max|wave| {g['waveform'].abs().max():.3g}")
    save_file(tensors, str(out), metadata=dict(prompt=PROMPT, negative_prompt=NEGATIVE, seed=str(SEED), steps=str(steps)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
