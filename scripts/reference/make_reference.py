#!/usr/bin/env python3
"""Builds AudioLDM pipelines with random weights and writes golden tensors for the Rust parity tests.

    python make_reference.py                      # tiny models + goldens -> tests/fixtures/tiny
    python make_reference.py --full               # full-size random s-full-v2 -> target/reference/full

The tiny models keep what bites in the real configs: 8 attention heads
as diffusers reads `attention_head_dim`, the text embedding as a concatenated class embedding,
GEGLU feed-forwards, LayerNorm eps 1e-12 in the text encoder, an odd latent length (25 -> 13 -> 7
-> 4), the vocoder's 5-4-2-2-2 up-sampling, a projection size unlike the token limit (so the
negative prompt's truncation quirk shows). Every weight, bias and norm affine is random (a port
that drops a bias must not match), and the vocoder is scaled so its output is O(0.1).
Versions are pinned in requirements.txt.
"""

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    RobertaTokenizerFast,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

ROOT = Path(__file__).resolve().parents[2]

PROMPT = "a dog barking in the rain, then thunder!"
# Longer than the tiny projection size (24 tokens), so diffusers truncates it there.
NEGATIVE = "low quality, noisy, distorted, muffled, clipping, hum, static, silence, wind, crowd talking, music"
GUIDANCE = 2.5
STEPS = 3
TIMESTEP = 501

# Real scheduler settings of cvssp/audioldm-s-full-v2 (its scheduler/scheduler_config.json).
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.0015,
    beta_end=0.0195,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)

TINY_UNET = dict(
    sample_size=32,
    in_channels=8,
    out_channels=8,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[8, 16, 24, 32],
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=[8, 16, 24, 32],
    norm_num_groups=8,
    norm_eps=1e-5,
    act_fn="silu",
    class_embed_type="simple_projection",
    class_embeddings_concat=True,
    projection_class_embeddings_input_dim=24,
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
)

TINY_VAE = dict(
    in_channels=1,
    out_channels=1,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[16, 32, 32],
    latent_channels=8,
    layers_per_block=2,
    norm_num_groups=8,
    act_fn="silu",
    sample_size=64,
    scaling_factor=0.9392935633659363,
)

TINY_TEXT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    hidden_act="gelu",
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-12,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    projection_dim=24,
    projection_hidden_act="relu",
)

TINY_VOCODER = dict(
    model_in_dim=32,
    sampling_rate=16000,
    upsample_initial_channel=64,
    upsample_rates=[5, 4, 2, 2, 2],
    upsample_kernel_sizes=[16, 16, 8, 4, 4],
    resblock_kernel_sizes=[3, 7, 11],
    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    leaky_relu_slope=0.1,
    normalize_before=False,
)


def corpus():
    """Deterministic sentences about sounds, to train the tiny byte-level BPE on."""
    rng = np.random.RandomState(1)
    things = "dog cat bird rain thunder engine piano guitar crowd wind water bell clock siren train car door".split()
    verbs = "barking meowing singing falling rumbling running playing strumming talking blowing dripping ringing ticking wailing passing".split()
    extras = "loud soft distant close echoing muffled noisy quiet gentle harsh".split()
    lines = []
    for _ in range(4000):
        words = [rng.choice(extras), rng.choice(things), rng.choice(verbs)]
        if rng.rand() < 0.5:
            words += ["in", "the", rng.choice(things)]
        line = " ".join(words)
        if rng.rand() < 0.3:
            line = line.capitalize() + rng.choice([".", "!", ",", "?"])
        lines.append(line)
    lines.append("Ünïcödé café — naïve façade 🎵 日本語")
    return lines


def train_tokenizer(out: Path):
    """A small byte-level BPE with RoBERTa's special tokens, saved as RobertaTokenizerFast."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        corpus(), vocab_size=500, min_frequency=2, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        tok = RobertaTokenizerFast(vocab=f"{tmp}/vocab.json", merges=f"{tmp}/merges.txt", model_max_length=512)
        tok.save_pretrained(out)
    return RobertaTokenizerFast.from_pretrained(out)


def randomize(model: torch.nn.Module, seed: int):
    """Every parameter random: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm weights ~ 1 + N(0, 0.2^2)."""
    gen = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    norm_params = set()
    for module in model.modules():
        if isinstance(module, norm_types):
            if module.weight is not None:
                norm_params.add(id(module.weight))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) in norm_params:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embeddings" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                if isinstance(model, SpeechT5HifiGan) and name.startswith("upsampler"):
                    # ConvTranspose1d [Cin, Cout, k]: each output sums Cin * k / stride inputs.
                    fan_in = p.shape[0] * 2
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def scale_vocoder(vocoder: SpeechT5HifiGan, mel: torch.Tensor, target_std=0.15):
    """Scales conv_post so that the random vocoder's output has std ~ target (before tanh)."""
    with torch.no_grad():
        wav = vocoder(mel)
        pre = torch.atanh(wav.clamp(-0.999999, 0.999999))
        factor = target_std / float(pre.std())
        vocoder.conv_post.weight.mul_(factor)
        vocoder.conv_post.bias.mul_(factor)


def build(configs: Path | None, out: Path, seed: int):
    """Builds (tiny, or full-size from real configs) random parts and saves them in diffusers layout."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if configs is None:
        tokenizer = train_tokenizer(out / "tokenizer")
        unet = UNet2DConditionModel(**TINY_UNET)
        vae = AutoencoderKL(**TINY_VAE)
        text_encoder = ClapTextModelWithProjection(ClapTextConfig(vocab_size=len(tokenizer), **TINY_TEXT))
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**TINY_VOCODER))
    else:
        shutil.copytree(configs / "tokenizer", out / "tokenizer")
        tokenizer = RobertaTokenizerFast.from_pretrained(out / "tokenizer")
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
        text_encoder = ClapTextModelWithProjection(ClapTextConfig.from_pretrained(configs / "text_encoder"))
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig.from_pretrained(configs / "vocoder"))
    for i, model in enumerate([unet, vae, text_encoder, vocoder]):
        randomize(model, seed + i)
        model.eval()
    mel_bins = vocoder.config.model_in_dim
    probe = torch.randn(1, 64, mel_bins, generator=torch.Generator().manual_seed(seed + 9)) - 4.0
    scale_vocoder(vocoder, probe)
    scheduler = DDIMScheduler(**SCHEDULER)
    pipe = AudioLDMPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, vocoder=vocoder
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe


def write_bin_variant(pipe: AudioLDMPipeline, out: Path):
    """The VAE again as a PyTorch zip pickle with diffusers <= 0.16 attention names, as the Hub's
    .bin files of cvssp/audioldm have them."""
    out.mkdir(parents=True, exist_ok=True)
    renames = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    state = {}
    for name, tensor in pipe.vae.state_dict().items():
        if ".attentions." in name:
            for new, old in renames.items():
                name = name.replace(new, old)
        state[name] = tensor.contiguous()
    torch.save(state, out / "diffusion_pytorch_model.bin")
    with open(out / "config.json", "w") as f:
        json.dump(dict(pipe.vae.config), f, indent=2, default=list)


@torch.no_grad()
def goldens(pipe: AudioLDMPipeline, duration: float, seed: int):
    g = {}
    tok = pipe.tokenizer

    def ids(text, max_length):
        enc = tok(text, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        return enc.input_ids, enc.attention_mask

    prompt_ids, _ = ids(PROMPT, tok.model_max_length)
    embed_dim = pipe.text_encoder.config.projection_dim
    negative_ids, _ = ids(NEGATIVE, embed_dim)
    g["prompt_ids"] = prompt_ids[0][prompt_ids[0] != tok.pad_token_id].to(torch.int64)
    g["negative_ids"] = negative_ids[0][negative_ids[0] != tok.pad_token_id].to(torch.int64)
    g["empty_ids"] = ids("", 8)[0][0][:2].to(torch.int64)

    # Text embeddings exactly as the pipeline makes them: [negative, prompt], L2-normalised.
    text_embeds = pipe._encode_prompt(
        PROMPT, "cpu", 1, True, negative_prompt=NEGATIVE
    )
    g["text_embeds"] = text_embeds.contiguous()

    # UNet epsilon for given latents, timestep and embeddings.
    vocoder_factor = np.prod(pipe.vocoder.config.upsample_rates) / pipe.vocoder.config.sampling_rate
    height = int(duration / vocoder_factor)
    if height % 4:
        height = math.ceil(height / 4) * 4
    frames, width = height // 4, pipe.vocoder.config.model_in_dim // 4
    gen = torch.Generator().manual_seed(seed)
    unet_in = torch.randn(2, 8, frames, width, generator=gen)
    g["unet_latents"] = unet_in
    g["unet_timestep"] = torch.tensor([TIMESTEP], dtype=torch.int64)
    g["unet_eps"] = pipe.unet(unet_in, TIMESTEP, encoder_hidden_states=None, class_labels=text_embeds).sample

    # VAE decode and encode, vocoder.
    z = torch.randn(1, 8, frames, width, generator=gen)
    g["vae_latents"] = z
    mel = pipe.vae.decode(z).sample
    g["vae_mel"] = mel
    posterior = pipe.vae.encode(mel).latent_dist
    g["vae_encoded_mean"] = posterior.mean
    g["vae_encoded_std"] = posterior.std
    vocoder_mel = torch.randn(1, height, pipe.vocoder.config.model_in_dim, generator=gen) - 4.0
    g["vocoder_mel"] = vocoder_mel
    g["vocoder_waveform"] = pipe.vocoder(vocoder_mel)

    # A whole DDIM run from portable initial noise (numpy's legacy MT19937 normal, like diffusers' tests).
    init = np.random.RandomState(seed).standard_normal((1, 8, frames, width)).astype(np.float32)
    g["init_latents"] = torch.from_numpy(init)
    step_latents = []

    def on_step(pipe_, step, timestep, kwargs):
        step_latents.append(kwargs["latents"].clone())
        return kwargs

    captured = {}
    original_decode = pipe.decode_latents

    def decode_and_keep(latents):
        captured["latents"] = latents.clone()
        mel_out = original_decode(latents)
        captured["mel"] = mel_out.clone()
        return mel_out

    pipe.decode_latents = decode_and_keep
    try:
        audio = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            audio_length_in_s=duration,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            eta=0.0,
            latents=torch.from_numpy(init),
            output_type="np",
        ).audios
    finally:
        pipe.decode_latents = original_decode
    g["run_final_latents"] = captured["latents"]
    g["run_mel"] = captured["mel"]
    g["run_waveform"] = torch.from_numpy(np.ascontiguousarray(audio))
    g["run_timesteps"] = pipe.scheduler.timesteps.to(torch.int64)
    meta = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        guidance_scale=str(GUIDANCE),
        steps=str(STEPS),
        eta="0.0",
        duration=str(duration),
        unet_timestep=str(TIMESTEP),
        seed=str(seed),
    )
    return {k: v.contiguous() for k, v in g.items()}, meta


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full-size random s-full-v2 from the real configs")
    parser.add_argument("--configs", type=Path, default=ROOT / "tests" / "fixtures" / "audioldm-s-full-v2")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--duration", type=float, help="seconds of audio for the goldens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-goldens", action="store_true", help="write the model only (for benchmarks)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.full:
        out = args.out or ROOT / "target" / "reference" / "full"
        duration = args.duration or 2.56
        pipe = build(args.configs, out, seed=1000 + args.seed)
    else:
        out = args.out or ROOT / "tests" / "fixtures" / "tiny"
        duration = args.duration or 1.0
        pipe = build(None, out, seed=args.seed)
        write_bin_variant(pipe, out.parent / "tiny-bin" / "vae")
    if args.no_goldens:
        print(f"wrote {out}")
        return
    tensors, meta = goldens(pipe, duration, args.seed)
    golden_path = out.parent / f"{out.name}-goldens.safetensors"
    save_file(tensors, str(golden_path), metadata=meta)
    for name, t in tensors.items():
        print(f"{name:22s} {str(list(t.shape)):22s} {t.dtype}  max|x| {t.abs().max().item() if t.numel() else 0:.4g}")
    print(f"wrote {out} and {golden_path}")


if __name__ == "__main__":
    main()
