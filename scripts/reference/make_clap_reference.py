#!/usr/bin/env python3
"""Builds a random transformers `ClapModel` (text tower + HTSAT audio tower) and writes golden tensors
for the Rust parity tests of CLAP's audio front end (`ClapFeatureExtractor`) and audio tower.

    python make_clap_reference.py          # tiny CLAP -> tests/fixtures/tiny-clap (+ tiny-clap-goldens.safetensors)
    python make_clap_reference.py --full   # full-size random CLAP -> target/reference/clap-full (not committed)

Tiny model. The text tower has exactly the config of the tiny AudioLDM text encoder
(tests/fixtures/tiny/text_encoder, projection_dim 24 = the tiny UNet's class-embedding input) and, by
default, its very weights, so the tiny CLAP is a consistent "companion" of the tiny pipeline: its
normalised text embedding of a prompt is the pipeline's. The audio tower keeps what bites in
HTSAT-tiny (transformers' ClapAudioConfig defaults for the real checkpoint): spec_size 256 (the real 1001 x 64 log-mel is bicubic-resized to
1024 x 64 and folded into a 256 x 256 image), patch 4 / stride 4, window 8, four stages of depth 2
(shifted windows with their mask in stages 0-2; in stage 3 the grid is 8 x 8 = one window, so
transformers turns the shift off there exactly as in HTSAT-tiny), patch merging between stages, odd
head counts (3, 2, 8, 3 heads: head sizes 2, 6, 3, 16), enable_fusion False, projection 48 -> 24 ->
24 with ReLU. Every weight, bias, norm affine and relative-position-bias table is random, and so are
bn0's running mean and variance (variance positive), so a port that drops any of them fails.
logit_scale_a / logit_scale_t are set to different non-trivial values.

Front end. `preprocessor_config.json` is a `ClapFeatureExtractor` with feature_size 64,
sampling_rate 48000, hop_length 480, fft_window_size 1024, max_length_s 10, frequency_min 50,
frequency_max 14000, padding "repeatpad", truncation "rand_trunc", top_db None: the values of
laion/clap-htsat-unfused's preprocessor_config.json as best known (not read from the Hub here); the
real companion checkpoints (sanchit-gandhi/clap-htsat-unfused-s-full-v2, -m-full) must be checked.

Clips. `clip_48k` (2.3 s, so repeatpad tiles it 4 times and zero-pads the rest) and `clip_long_48k`
(10.5 s, so rand_trunc crops it) are stored as int16 PCM; the float input is `int16 / 32768` (exact
in float32) and is what the extractor is given. rand_trunc draws its crop offset from numpy's global
legacy RNG; this script calls `np.random.seed(CROP_SEED)` immediately before the extractor call on
the long clip alone, so the offset is `np.random.RandomState(CROP_SEED).randint(0, overflow + 1)`
with overflow = len - 480000, i.e. MT19937 `init_genrand(CROP_SEED)`, then 32-bit outputs masked to
the smallest all-ones mask >= overflow, rejected while > overflow (checked below against the raw
MT19937 stream). The offset is stored as `clip_long_crop_start`.

Goldens (<out>-goldens.safetensors; float32 unless noted; model in float32, eval mode; B = batch):
  clip_48k, clip_long_48k          int16 PCM inputs; clip_long_crop_start int64 [1]
  features_short, features_long    extractor input_features [1, 1, 1001, 64] ([B, 1, T, mel]);
                                   is_longer_short, is_longer_long int64 [1]
  for features_short (hooks on ClapModel.get_audio_features; tokens [B, L, C] are row-major over the
  H x W patch grid, token = h * W + w):
  bn0_out            [1, 1, 1001, 64]   after the BatchNorm2d over mel bins, back in [B, 1, T, mel]
  mel_image          [1, 1, 256, 256]   reshape_mel2img output (bicubic T 1001 -> 1024, folded)
  patch_proj         [1, C0, 64, 64]    patch conv output, NCHW (before the patch LayerNorm)
  patch_embeds       [1, 4096, C0]      after flatten + patch LayerNorm
  stage{i}_block{j}_out [1, L_i, C_i]   output of block j < depth - 1 of stage i
  stage{i}_out       [1, L_i, C_i]      stage i after its last block (before patch merging)
  stage{i}_merged    [1, L_i / 4, 2 C_i] after patch merging (all but the last stage)
  final_norm         [1, L_last, C_last] encoder LayerNorm output
  last_hidden_state  [1, C_last, 2, 4 * W_last] the model's own (regrouped) last_hidden_state
  pooler_output      [1, C_last]        mean of final_norm over tokens
  audio_embeds_raw / audio_embeds [1, D] audio_projection output / L2-normalised
  block_shift_sizes  int64 [sum(depths)] the shift each block really used
  audio_embeds_batch(_raw) [2, D]      both clips in one batch; text_input_ids, text_attention_mask
  int64 [3, L]; text_embeds(_raw) [3, D]; logits_per_audio [2, 3]; logits_per_text [3, 2];
  cosine_audio_text [2, 3]. Metadata: prompts (JSON list), crop_seed, crop contract, logit scales.
Versions are pinned in requirements.txt.
"""

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    RobertaTokenizerFast,
)

ROOT = Path(__file__).resolve().parents[2]

RATE = 48000
SHORT_SECONDS = 2.3  # 110400 samples: repeatpad tiles 4x (441600) and zero-pads 38400
LONG_SECONDS = 10.5  # 504000 samples: rand_trunc crops 480000 at an offset in [0, 24000]
CROP_SEED = 1234  # np.random.seed(CROP_SEED) right before the long clip's extractor call
CLIP_SEED = 7  # noise in the clips

PROMPTS = [
    # The tiny pipeline's prompt (make_reference.py PROMPT): its CLAP text embedding equals the
    # pipeline's normalised prompt embedding when the text tower is the tiny text encoder.
    "a dog barking in the rain, then thunder!",
    "soft piano playing in the distance",
    "A siren wailing as a train passes",
]

LOGIT_SCALE_A = 2.9  # exp -> 18.17 (audio logits)
LOGIT_SCALE_T = 3.3  # exp -> 27.11 (text logits)

# Values of laion/clap-htsat-unfused's preprocessor_config.json as best known; check the companions.
FEATURES = dict(
    feature_size=64,
    sampling_rate=RATE,
    hop_length=480,
    fft_window_size=1024,
    max_length_s=10,
    frequency_min=50,
    frequency_max=14000,
    padding="repeatpad",
    truncation="rand_trunc",
    top_db=None,
    padding_value=0.0,
    return_attention_mask=False,
)

# The tiny AudioLDM text encoder (made by make_reference.py): its config is the text tower's.
TINY_TEXT_ENCODER = ROOT / "tests" / "fixtures" / "tiny" / "text_encoder"

TINY_AUDIO = dict(
    window_size=8,
    num_mel_bins=64,
    spec_size=256,
    hidden_act="gelu",
    patch_size=4,
    patch_stride=[4, 4],
    hidden_size=48,  # = patch_embeds_hidden_size * 2 ** (len(depths) - 1): the pooled width
    depths=[2, 2, 2, 2],
    num_attention_heads=[3, 2, 8, 3],  # widths 6, 12, 24, 48 -> head sizes 2, 6, 3, 16
    enable_fusion=False,
    fusion_type=None,
    patch_embed_input_channels=1,
    flatten_patch_embeds=True,
    patch_embeds_hidden_size=6,
    enable_patch_layer_norm=True,
    drop_path_rate=0.0,
    attention_probs_dropout_prob=0.0,
    hidden_dropout_prob=0.1,
    qkv_bias=True,
    mlp_ratio=4.0,
    layer_norm_eps=1e-5,
    projection_hidden_act="relu",
)


def make_clips(seed: int):
    """The two committed inputs as int16 PCM: a chirp plus noise (short), a slow down-sweep with an
    AM tone and noise (long; not periodic, so a wrong crop offset cannot match)."""
    rng = np.random.RandomState(seed)
    n = int(round(SHORT_SECONDS * RATE))
    t = np.arange(n) / RATE
    f0, f1 = 150.0, 12000.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * SHORT_SECONDS))
    short = 0.3 * np.sin(phase) + 0.08 * rng.standard_normal(n)

    n = int(round(LONG_SECONDS * RATE))
    t = np.arange(n) / RATE
    f0, f1 = 6000.0, 200.0
    sweep = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * LONG_SECONDS))
    am = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t)
    long = 0.2 * np.sin(sweep) + 0.12 * am * np.sin(2 * np.pi * 440.0 * t) + 0.05 * rng.standard_normal(n)
    long *= np.minimum(1.0, 0.2 + t / 5.0)  # rising envelope: the crop offset changes every frame's level

    def pcm(x):
        return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)

    return pcm(short), pcm(long)


def pcm_to_float(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / np.float32(32768.0)).astype(np.float32)


def randomize(model: torch.nn.Module, seed: int, skip_prefix: str | None = None):
    """Every parameter random: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm weights ~ 1 + N(0, 0.2^2),
    embeddings ~ N(0, 0.5^2), relative position bias tables ~ N(0, 0.5^2); BatchNorm running stats random."""
    gen = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.LayerNorm, torch.nn.BatchNorm2d, torch.nn.GroupNorm)
    norm_params = set()
    for module in model.modules():
        if isinstance(module, norm_types) and module.weight is not None:
            norm_params.add(id(module.weight))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if skip_prefix and name.startswith(skip_prefix):
                continue
            if name.startswith("logit_scale"):
                continue
            if id(p) in norm_params:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "relative_position_bias_table" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embeddings" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                # Around the level of CLAP log-mels (dB), one mean and variance per mel bin.
                module.running_mean.copy_(-35.0 + 8.0 * torch.randn(c, generator=gen))
                module.running_var.copy_(150.0 * torch.exp(0.5 * torch.randn(c, generator=gen)))
        model.logit_scale_a.fill_(LOGIT_SCALE_A)
        model.logit_scale_t.fill_(LOGIT_SCALE_T)


def build(full: bool, configs: Path, text_weights: Path | None, out: Path, seed: int):
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if full:
        text_config = ClapTextConfig.from_pretrained(configs / "text_encoder")
        audio_config = ClapAudioConfig()  # transformers' default: HTSAT-tiny
        tokenizer = RobertaTokenizerFast.from_pretrained(configs / "tokenizer")
    else:
        text_config = ClapTextConfig.from_pretrained(TINY_TEXT_ENCODER)
        audio_config = ClapAudioConfig(**TINY_AUDIO)
        tokenizer = RobertaTokenizerFast.from_pretrained(ROOT / "tests" / "fixtures" / "tiny" / "tokenizer")
    config = ClapConfig(
        text_config=text_config.to_dict(),
        audio_config=audio_config.to_dict(),
        projection_dim=text_config.projection_dim,
        projection_hidden_act=text_config.projection_hidden_act,
        logit_scale_init_value=math.exp(LOGIT_SCALE_A),
    )
    model = ClapModel(config)
    randomize(model, seed, skip_prefix=("text_" if text_weights else None))
    if text_weights:
        state = load_file(str(text_weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(k.startswith("text_") for k in missing):
            raise SystemExit(f"text weights do not fit: unexpected {unexpected}, missing {missing}")
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    keep = {"config.json", "model.safetensors"}
    for path in out.iterdir():
        if path.name not in keep:
            path.unlink() if path.is_file() else shutil.rmtree(path)
    extractor = ClapFeatureExtractor(**FEATURES)
    extractor.save_pretrained(out)
    return model, tokenizer, extractor


def crop_offset_from_mt19937(seed: int, overflow: int) -> int:
    """numpy's legacy bounded randint for a range < 2**32: masked rejection on raw 32-bit MT19937 outputs."""
    bitgen = np.random.RandomState(seed)._bit_generator
    if overflow == 0:
        return 0
    mask = (1 << overflow.bit_length()) - 1
    while True:
        v = int(bitgen.random_raw()) & mask
        if v <= overflow:
            return v


def capture_audio(model: ClapModel, features: torch.Tensor):
    """Runs get_audio_features with hooks; returns the intermediates and the normalised embedding."""
    enc = model.audio_model.audio_encoder
    acts = {}
    hooks = []

    def keep(name, pick=lambda o: o):
        def hook(module, inputs, output):
            acts[name] = pick(output).detach().clone()

        return hook

    # BatchNorm2d runs on [B, F, T, 1] (mel bins as channels); store it back in [B, 1, T, F].
    hooks.append(enc.batch_norm.register_forward_hook(keep("bn0_out", lambda o: o.transpose(1, 3))))
    hooks.append(
        enc.patch_embed.register_forward_pre_hook(lambda m, inputs: acts.__setitem__("mel_image", inputs[0].clone()))
    )
    hooks.append(enc.patch_embed.proj.register_forward_hook(keep("patch_proj")))
    hooks.append(enc.patch_embed.register_forward_hook(keep("patch_embeds")))
    for i, stage in enumerate(enc.layers):
        for j, block in enumerate(stage.blocks):
            if j < len(stage.blocks) - 1:
                hooks.append(block.register_forward_hook(keep(f"stage{i}_block{j}_out", lambda o: o[0])))
        hooks.append(stage.register_forward_hook(keep(f"stage{i}_out", lambda o: o[1])))
        if stage.downsample is not None:
            hooks.append(stage.register_forward_hook(keep(f"stage{i}_merged", lambda o: o[0])))
    hooks.append(enc.norm.register_forward_hook(keep("final_norm")))
    hooks.append(model.audio_projection.register_forward_hook(keep("audio_embeds_raw")))
    try:
        out = model.get_audio_features(input_features=features)
    finally:
        for h in hooks:
            h.remove()
    acts["last_hidden_state"] = out.last_hidden_state.detach().clone()
    acts["audio_embeds"] = out.pooler_output.detach().clone()
    # mel_image is the bicubic resize (time -> spec_size * freq_ratio) folded; no resize along mel bins here.
    if acts["bn0_out"].shape[-1] != enc.spec_size // enc.freq_ratio:
        raise SystemExit("mel bins other than spec_size // freq_ratio are not covered by these goldens")
    # The shift each block really used (transformers turns it off where the grid is <= one window), in block order.
    acts["block_shift_sizes"] = torch.tensor(
        [int(block.shift_size) for stage in enc.layers for block in stage.blocks], dtype=torch.int64
    )
    # The pooled output, as the model computes it (mean over all final tokens after the final norm).
    pooled = model.audio_model(input_features=features).pooler_output
    acts["pooler_output"] = pooled.detach().clone()
    return acts


@torch.no_grad()
def goldens(model: ClapModel, tokenizer, extractor: ClapFeatureExtractor, seed: int):
    g = {}
    short_pcm, long_pcm = make_clips(CLIP_SEED + seed)
    g["clip_48k"] = torch.from_numpy(short_pcm)
    g["clip_long_48k"] = torch.from_numpy(long_pcm)
    short = pcm_to_float(short_pcm)
    long = pcm_to_float(long_pcm)
    max_samples = extractor.nb_max_samples

    f_short = extractor(short, sampling_rate=RATE, return_tensors="np")
    np.random.seed(CROP_SEED)
    f_long = extractor(long, sampling_rate=RATE, return_tensors="np")
    overflow = len(long) - max_samples
    crop = int(np.random.RandomState(CROP_SEED).randint(0, overflow + 1))
    if crop != crop_offset_from_mt19937(CROP_SEED, overflow):
        raise SystemExit("numpy randint is not masked rejection on MT19937 here; fix the documented contract")
    # Which offset the extractor really used: the same features from the cropped clip without truncation.
    recheck = extractor(long[crop : crop + max_samples], sampling_rate=RATE, return_tensors="np")["input_features"]
    if not np.array_equal(recheck, f_long["input_features"]):
        raise SystemExit("the extractor's crop offset is not the one predicted from CROP_SEED")
    # The same features when both clips go through one call (one draw, for the long clip).
    np.random.seed(CROP_SEED)
    f_both = extractor([short, long], sampling_rate=RATE, return_tensors="np")
    feats_short = f_short["input_features"]
    feats_long = f_long["input_features"]
    if not np.array_equal(f_both["input_features"], np.concatenate([feats_short, feats_long])):
        raise SystemExit("batched extractor call differs from the single calls")
    assert feats_short.dtype == np.float32, feats_short.dtype
    g["clip_long_crop_start"] = torch.tensor([crop], dtype=torch.int64)
    g["features_short"] = torch.from_numpy(feats_short)
    g["features_long"] = torch.from_numpy(feats_long)
    g["is_longer_short"] = torch.from_numpy(np.asarray(f_short["is_longer"], dtype=np.int64).reshape(1))
    g["is_longer_long"] = torch.from_numpy(np.asarray(f_long["is_longer"], dtype=np.int64).reshape(1))

    # Audio tower intermediates for the short clip.
    acts = capture_audio(model, g["features_short"])
    g.update(acts)

    # A batch of both clips; fusion is off, so is_longer is not used by the model at all.
    batch = torch.cat([g["features_short"], g["features_long"]])
    out = model.get_audio_features(input_features=batch)
    g["audio_embeds_batch"] = out.pooler_output
    g["audio_embeds_batch_raw"] = model.audio_projection(model.audio_model(input_features=batch).pooler_output)

    # Text embeddings of the prompts (padded to the longest, with the attention mask).
    enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    g["text_input_ids"] = enc.input_ids.to(torch.int64)
    g["text_attention_mask"] = enc.attention_mask.to(torch.int64)
    text_out = model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    g["text_embeds"] = text_out.pooler_output
    pooled_text = model.text_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).pooler_output
    g["text_embeds_raw"] = model.text_projection(pooled_text)

    full = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, input_features=batch)
    g["logits_per_audio"] = full.logits_per_audio
    g["logits_per_text"] = full.logits_per_text
    a = g["audio_embeds_batch_raw"].double()
    t = g["text_embeds_raw"].double()
    g["cosine_audio_text"] = (F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).T).float()

    # Self-checks (printed): the model's own paths agree with each other.
    checks = {
        "audio_embeds_batch[0] vs audio_embeds": (g["audio_embeds_batch"][0] - g["audio_embeds"][0]).abs().max(),
        "forward audio_embeds vs audio_embeds_batch": (full.audio_embeds - g["audio_embeds_batch"]).abs().max(),
        "forward text_embeds vs text_embeds": (full.text_embeds - g["text_embeds"]).abs().max(),
        "pooler_output vs mean(final_norm)": (g["pooler_output"] - g["final_norm"].mean(1)).abs().max(),
        "cosine * exp(logit_scale_a) vs logits_per_audio": (
            g["cosine_audio_text"] * math.exp(LOGIT_SCALE_A) - g["logits_per_audio"]
        ).abs().max(),
    }
    meta = dict(
        prompts=json.dumps(PROMPTS),
        crop_seed=str(CROP_SEED),
        crop_contract="np.random.seed(crop_seed) immediately before ClapFeatureExtractor(long clip); "
        "offset = np.random.RandomState(crop_seed).randint(0, len - 480000 + 1)",
        clip_format="int16 PCM at 48 kHz; the extractor's input is int16 / 32768 as float32",
        logit_scale_a=str(LOGIT_SCALE_A),
        logit_scale_t=str(LOGIT_SCALE_T),
        seed=str(seed),
    )
    return {k: v.contiguous() for k, v in g.items()}, meta, checks


def save_canonical(tensors, path: Path, metadata: dict):
    """save_file, then the header's __metadata__ rewritten in sorted key order (safetensors writes it from a
    hash map, in a different order on every run), so that identical goldens give identical bytes."""
    save_file(tensors, str(path), metadata=metadata)
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    # Tensor entries in file-offset order, as safetensors lays them out.
    entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"])
    canonical = {"__metadata__": header["__metadata__"], **dict(entries)}
    text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:
        raise SystemExit("canonical safetensors header is longer than the original")
    raw[8 : 8 + n] = text + b" " * (n - len(text))
    path.write_bytes(bytes(raw))
    check = load_file(str(path))
    if set(check) != set(tensors) or any(not torch.equal(check[k], tensors[k]) for k in tensors):
        raise SystemExit("canonical rewrite broke the file")


def check_text_companion(g, tiny_goldens: Path):
    """The tiny pipeline's normalised prompt embedding (row 1 of its text_embeds) vs CLAP's of PROMPTS[0]."""
    if not tiny_goldens.exists():
        return None
    ref = load_file(str(tiny_goldens))["text_embeds"]
    return float((ref.reshape(2, -1)[1] - g["text_embeds"][0]).abs().max())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full-size random CLAP (HTSAT-tiny + the real text config)")
    parser.add_argument("--configs", type=Path, default=ROOT / "tests" / "fixtures" / "audioldm-s-full-v2")
    parser.add_argument(
        "--text-weights",
        type=Path,
        help="model.safetensors of a ClapTextModelWithProjection to use as the text tower "
        "(default: the tiny text encoder in tiny mode, random in --full mode)",
    )
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.full:
        out = args.out or ROOT / "target" / "reference" / "clap-full"
        text_weights = args.text_weights
        model_seed = 2000 + args.seed
    else:
        torch.set_num_threads(1)  # reduction order independent of the machine's core count
        out = args.out or ROOT / "tests" / "fixtures" / "tiny-clap"
        text_weights = args.text_weights or ROOT / "tests" / "fixtures" / "tiny" / "text_encoder" / "model.safetensors"
        model_seed = 100 + args.seed
    model, tokenizer, extractor = build(args.full, args.configs, text_weights, out, model_seed)
    tensors, meta, checks = goldens(model, tokenizer, extractor, args.seed)
    golden_path = out.parent / f"{out.name}-goldens.safetensors"
    save_canonical(tensors, golden_path, meta)
    for name, t in tensors.items():
        mx = t.abs().max().item() if t.numel() else 0
        print(f"{name:28s} {str(list(t.shape)):22s} {str(t.dtype):14s} max|x| {mx:.4g}")
    for name, value in checks.items():
        print(f"check {name}: {float(value):.3g}")
    if not args.full:
        diff = check_text_companion(tensors, ROOT / "tests" / "fixtures" / "tiny-goldens.safetensors")
        if diff is not None:
            print(f"check tiny pipeline prompt embedding vs CLAP text_embeds[0]: {diff:.3g}")
    for path in sorted(out.iterdir()) + [golden_path]:
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")
    print(f"wrote {out} and {golden_path}")


if __name__ == "__main__":
    main()
