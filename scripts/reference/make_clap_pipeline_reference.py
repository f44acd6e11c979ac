#!/usr/bin/env python3
"""Goldens for CLAP in the pipeline: ranked candidates and variations of a clip, on the tiny AudioLDM
pipeline (tests/fixtures/tiny) and the tiny CLAP model that pairs with it (tests/fixtures/tiny-clap,
made by make_clap_reference.py). Writes tests/fixtures/tiny-clap-pipeline-goldens.safetensors.

    python make_clap_pipeline_reference.py

Ranked candidates (the original AudioLDM's ldm.py generate_sample, mirrored on diffusers' AudioLDM2Pipeline.score_waveforms):
candidate k is diffusers' AudioLDMPipeline run of PROMPT with initial latents
np.random.RandomState(SEED + k).standard_normal(shape).astype(float32) (the project's noise contract;
eta 0, so no other draw). Its 16 kHz waveform is resampled to 48 kHz with
scipy.signal.resample_poly(w, 3, 1) (the Rust side resamples with rubato, which differs in the
transition band; the goldens therefore also hold these 48 kHz clips, so the Rust test can score the
very same input), then ClapFeatureExtractor (all candidates in one call, after np.random.seed(SEED);
1 s clips are repeat-padded, so nothing is drawn), ClapModel.get_audio_features, L2-normalised. The
prompt's CLAP text embedding uses the pipeline's tokenizer (the tiny CLAP folder has none; the Rust
side falls back to the pipeline's the same way). Scores are F.cosine_similarity(audio, text).

Variations (the original's pipeline.py text_to_audio with original_audio_file_path): the clip is `clip_48k` of tiny-clap-goldens.safetensors (2.3 s
at 48 kHz, int16 / 32768). Its CLAP audio embedding e_audio (features after np.random.seed(SEED); no
crop) conditions AudioLDMPipeline through `prompt_embeds`, guided against the empty prompt as diffusers
does when `negative_prompt` is None; duration = the clip's (len / 48000 s); initial latents from
RandomState(SEED). `vary_*` conditions on e_audio alone; `vary_mix_*` on
normalize((1 - MIX) * e_audio + MIX * e_text), e_text being the pipeline's own normalised text
embedding of VARY_PROMPT (diffusers' _encode_prompt), blended in float64.

Goldens (float32):
  candidates_waveform [N, L]  candidates_48k [N, 3 L]  clap_audio_embeds [N, D]  clap_text_embeds [1, D]
  clap_scores [N]
  vary_clip_embedding [1, D]  vary_text_embeds [2, D] (negative, condition)  vary_latents  vary_waveform [1, L]
  vary_mix_text_embeds [2, D]  vary_mix_latents  vary_mix_waveform
Metadata: prompt, seed, candidates, steps, guidance, duration, vary_prompt, mix.
Versions are pinned in requirements.txt.
"""

from pathlib import Path

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F
from diffusers import AudioLDMPipeline
from safetensors.numpy import load_file
from safetensors.torch import save_file
from transformers import ClapFeatureExtractor, ClapModel

from make_edit_reference import decoded_run, latent_shape, normal

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"

PROMPT = "a dog barking in the rain, then thunder!"
SEED = 7
CANDIDATES = 3
STEPS = 3
GUIDANCE = 2.5
DURATION = 1.0
VARY_PROMPT = "birds singing at dawn"
MIX = 0.5


def embeds(output) -> torch.Tensor:
    """get_*_features' embedding (an output object in transformers 5), L2-normalised."""
    x = output.pooler_output if hasattr(output, "pooler_output") else output
    return F.normalize(x, dim=-1)


def run(pipe: AudioLDMPipeline, seed: int, duration: float, **conditioning):
    """One guided DDIM run from the seed's latents; returns (latents, waveform [1, L])."""
    latents, _, wave = decoded_run(
        pipe,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        audio_length_in_s=duration,
        latents=normal(seed, latent_shape(pipe, duration)),
        **conditioning,
    )
    return latents, wave


@torch.no_grad()
def main():
    pipe = AudioLDMPipeline.from_pretrained(FIXTURES / "tiny")
    pipe.set_progress_bar_config(disable=True)
    clap = ClapModel.from_pretrained(FIXTURES / "tiny-clap").eval()
    extractor = ClapFeatureExtractor.from_pretrained(FIXTURES / "tiny-clap")
    tokenizer = pipe.tokenizer
    g = {}

    # Ranked candidates.
    waves = [run(pipe, SEED + k, DURATION, prompt=PROMPT)[1][0] for k in range(CANDIDATES)]
    g["candidates_waveform"] = torch.stack(waves)
    clips48 = [scipy.signal.resample_poly(w.numpy(), 3, 1).astype(np.float32) for w in waves]
    g["candidates_48k"] = torch.from_numpy(np.stack(clips48))
    np.random.seed(SEED)
    features = extractor(clips48, sampling_rate=48000, return_tensors="pt")
    audio = embeds(clap.get_audio_features(input_features=features.input_features))
    text_in = tokenizer([PROMPT], padding=True, return_tensors="pt")
    text = embeds(clap.get_text_features(input_ids=text_in.input_ids, attention_mask=text_in.attention_mask))
    g["clap_audio_embeds"] = audio
    g["clap_text_embeds"] = text
    g["clap_scores"] = F.cosine_similarity(audio, text, dim=-1)
    print("candidate scores", g["clap_scores"].tolist())

    # Variations of a 48 kHz clip.
    pcm = load_file(str(FIXTURES / "tiny-clap-goldens.safetensors"))["clip_48k"].reshape(-1)
    clip = pcm.astype(np.float32) / 32768.0
    duration = len(clip) / 48000
    np.random.seed(SEED)
    features = extractor([clip], sampling_rate=48000, return_tensors="pt")
    e_audio = embeds(clap.get_audio_features(input_features=features.input_features))
    g["vary_clip_embedding"] = e_audio
    e_text = pipe._encode_prompt(VARY_PROMPT, "cpu", 1, False)
    mixed = (1 - MIX) * e_audio.double() + MIX * e_text.double()
    conditions = {"vary": e_audio, "vary_mix": F.normalize(mixed, dim=-1).float()}
    for name, condition in conditions.items():
        negative = pipe._encode_prompt(None, "cpu", 1, True, prompt_embeds=condition)
        latents, wave = run(pipe, SEED, duration, prompt_embeds=condition)
        g[f"{name}_text_embeds"] = negative
        g[f"{name}_latents"] = latents
        g[f"{name}_waveform"] = wave
        print(f"{name}: latents {list(latents.shape)}, waveform {list(wave.shape)}")

    out = FIXTURES / "tiny-clap-pipeline-goldens.safetensors"
    save_file(
        {k: v.contiguous().float() for k, v in g.items()},
        str(out),
        metadata=dict(
            prompt=PROMPT,
            seed=str(SEED),
            candidates=str(CANDIDATES),
            steps=str(STEPS),
            guidance=str(GUIDANCE),
            duration=str(DURATION),
            vary_prompt=VARY_PROMPT,
            mix=str(MIX),
        ),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
