#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from the test fixtures and
a few small files made here. Run from the repository root with the reference venv:
    .venv/bin/python fuzz/make_corpus.py
(needs numpy, safetensors and soundfile; the files are small and committed)."""

import base64
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import soundfile
from safetensors.numpy import save

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CORPUS = ROOT / "fuzz" / "corpus"


def put(target: str, name: str, data: bytes):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def main():
    rng = np.random.RandomState(0)
    # safetensors: small files of the dtypes and shapes the loaders meet.
    put("safetensors", "f32.safetensors", save({"w": rng.randn(3, 5).astype(np.float32), "b": rng.randn(5).astype(np.float32)}))
    put("safetensors", "mixed.safetensors", save({
        "h": rng.randn(2, 2, 3).astype(np.float16),
        "ids": np.arange(4, dtype=np.int64)[None],
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }, metadata={"format": "pt"}))
    # pickle archives: the committed torch.save fixtures and their data.pkl alone.
    for name in ["mixed.bin", "mixed_p4.bin"]:
        data = (FIXTURES / "pickle" / name).read_bytes()
        put("pickle_archive", name, data)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
            put("pickle_data_pkl", name.replace(".bin", ".pkl"), z.read(pkl))
    # configs: the selector byte, then the tiny fixture's and the real s-full-v2 layout's files.
    for i, part in enumerate(["unet", "vae", "vocoder", "text_encoder"]):
        put("config", f"{part}.json", bytes([i]) + (FIXTURES / "tiny" / part / "config.json").read_bytes())
    put("scheduler", "scheduler_config.json", (FIXTURES / "tiny" / "scheduler" / "scheduler_config.json").read_bytes())
    tokenizer_json = (FIXTURES / "tiny" / "tokenizer" / "tokenizer.json").read_bytes()
    put("tokenizer", "tokenizer.json", tokenizer_json)
    # SentencePiece charsmaps (base64 of: u32 trie size in bytes, the trie's u32 words, the
    # normalised strings): one that maps "A" to "a", and one that claims a 4 GiB trie, for which
    # the tokenizers crate would reserve 8 GiB (an abort where that cannot be had) had the loader
    # not refused it first.
    def with_charsmap(trie_bytes: int, words: list, strings: bytes) -> bytes:
        blob = trie_bytes.to_bytes(4, "little") + b"".join(w.to_bytes(4, "little") for w in words) + strings
        value = json.loads(tokenizer_json)
        value["normalizer"] = {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(blob).decode()}
        return json.dumps(value, ensure_ascii=False, indent=2).encode()
    a_to_lowercase = [0] * 257
    a_to_lowercase[0x41] = 0x41 | (1 << 8) | (0x141 << 10)
    put("tokenizer", "precompiled.json", with_charsmap(257 * 4, a_to_lowercase, b"a\0"))
    put("tokenizer", "huge-trie.json", with_charsmap(2**32 - 4, [0, 0], b""))
    # audio: the selector byte (wav, flac, mp3, ogg), then a short chirp in that format.
    t = np.arange(1600) / 8000.0
    chirp = (0.5 * np.sin(2 * np.pi * (200 + 1500 * t) * t)).astype(np.float32)
    for i, (fmt, subtype) in enumerate([("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("MP3", "MPEG_LAYER_III"), ("OGG", "VORBIS")]):
        buf = io.BytesIO()
        soundfile.write(buf, np.stack([chirp, -chirp], axis=1), 8000, format=fmt, subtype=subtype)
        put("audio", f"chirp.{fmt.lower()}", bytes([i]) + buf.getvalue())
    put("audio", "chirp-commented.wav", bytes([0]) + (FIXTURES / "clips" / "chirp-8k.wav").read_bytes()[:4000])
    for target in sorted(p.name for p in CORPUS.iterdir()):
        files = list((CORPUS / target).iterdir())
        print(f"{target}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
