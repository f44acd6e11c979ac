#!/usr/bin/env python3
"""Token ids of the real AudioLDM tokenizer for the Rust tokenizer test (tests/model_text.rs).

    python tokenizer_ids.py [--tokenizer DIR] [--out tests/fixtures/real-tokenizer-ids.json]

Tokenises each prompt as the pipeline does (`padding="max_length", truncation=True` at
`model_max_length` = 512, or at a smaller `max_length` for a few cases, as diffusers does for the
negative prompt at the projection size) with the pinned transformers (requirements.txt) and stores
the ids without the pads. The tokenizer is the real one, committed with the checkpoint's configs in
tests/fixtures/audioldm-s-full-v2/tokenizer.
"""

import argparse
import json
from pathlib import Path

import transformers
from transformers import RobertaTokenizerFast

ROOT = Path(__file__).resolve().parents[2]

# (text, max_length or None for model_max_length)
CASES = [
    ("a dog barking in the rain, then thunder!", None),
    ("A hammer is hitting a wooden surface", None),
    ("Techno music with a strong, upbeat tempo and high melodic riffs", None),
    ("low quality, noisy, distorted, muffled, clipping, hum, static, silence, wind, crowd talking, music", None),
    # The negative prompt quirk: truncated at a projection size (24 in the tiny model).
    ("low quality, noisy, distorted, muffled, clipping, hum, static, silence, wind, crowd talking, music", 24),
    ("a cat meowing", 8),
    ("a cat meowing", 3),
    # Longer than 512 tokens: truncated to 510 BPE tokens + <s> + </s>.
    ("birds chirping in a forest while a river flows gently in the background, " * 40, None),
    ("The year 2024: 100% LOUD engine-noise @ 3.5kHz, 0.25 s bursts; " * 60, None),
    # Exactly at the limit (510 BPE tokens) and one over.
    ("a" + " a" * 509, None),
    ("a" + " a" * 510, None),
    # Unicode: accents, combining marks, CJK, emoji (with skin tone and ZWJ sequences).
    ("Ünïcödé café — naïve façade, crème brûlée", None),
    ("e\u0301 versus \u00e9; zero\u200bwidth and non\u00a0breaking\u2003spaces", None),
    ("日本語の音声、雨の音と雷。中文：狗在叫。한국어 소리", None),
    ("🎵 music 🎸🥁 drums 👏🏽 applause 👨‍👩‍👧 family", None),
    # Punctuation and whitespace oddities.
    ("Hello!!! ... ??? -- (test) [brackets] {braces} \"quotes\" 'single' don't won't I'm y'all", None),
    ("  leading and trailing spaces  ", None),
    ("tabs\tand\nnewlines\r\nand   runs    of     spaces", None),
    ("   ", None),
    # Special-token text inside a prompt (matched as the special tokens, <mask> strips a space to its left).
    ("a <mask> barking </s> then <s> and <pad> <unk>", None),
    ("", None),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "tests" / "fixtures" / "audioldm-s-full-v2" / "tokenizer")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "real-tokenizer-ids.json")
    args = parser.parse_args()
    tok = RobertaTokenizerFast.from_pretrained(args.tokenizer)
    cases = []
    for text, max_length in CASES:
        max_length = max_length or tok.model_max_length
        enc = tok(text, padding="max_length", max_length=max_length, truncation=True)
        ids = enc.input_ids
        assert len(ids) == max_length
        real = [i for i, m in zip(ids, enc.attention_mask) if m == 1]
        assert real == [i for i in ids if i != tok.pad_token_id] or "<pad>" in text
        untruncated = len(tok(text).input_ids)
        cases.append(dict(text=text, max_length=max_length, truncated=untruncated > max_length, ids=real))
    doc = dict(
        source="scripts/reference/tokenizer_ids.py",
        tokenizer="audioldm-s-full-v2-hf/tokenizer",
        transformers=transformers.__version__,
        model_max_length=tok.model_max_length,
        pad_id=tok.pad_token_id,
        bos_id=tok.bos_token_id,
        eos_id=tok.eos_token_id,
        cases=cases,
    )
    # One line per case: small and diffable.
    args.out.write_text(compact(doc) + "\n", encoding="utf-8")
    for case in cases:
        print(f"{len(case['ids']):4d} ids (max {case['max_length']}, truncated {case['truncated']}): {case['text'][:60]!r}")
    print(f"wrote {args.out}")


def compact(doc):
    """JSON with one line per case."""
    head = {k: v for k, v in doc.items() if k != "cases"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    lines.append(' "cases": [')
    cases = [f"  {json.dumps(c, ensure_ascii=False)}" for c in doc["cases"]]
    lines.append(",\n".join(cases))
    lines.append(" ]")
    lines.append("}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
