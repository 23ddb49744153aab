"""Stage 1: a CLIPTokenizer whose BPE merges turn every word of the shapes grammar into one token.

python -m sdlab.shapes.train_tokenizer --out .train/tokenizer
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer

from sdlab.shapes.dataset import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 32  # the longest caption is 17 tokens with BOS/EOS; SD pipelines pad to this


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE on `words` until each is a single symbol (ties broken by first occurrence)."""
    segments = [[*w[:-1], w[-1] + "</w>"] for w in words]
    merges = []
    while any(len(s) > 1 for s in segments):
        counts = Counter(pair for s in segments for pair in zip(s, s[1:], strict=False))
        pair = max(counts, key=counts.__getitem__)
        merges.append(pair)
        for s in segments:
            i = 0
            while i < len(s) - 1:
                if (s[i], s[i + 1]) == pair:
                    s[i : i + 2] = [s[i] + s[i + 1]]
                i += 1
    return merges


def build_tokenizer(out: Path, max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """Write vocab.json/merges.txt (full byte alphabet, so nothing is unknown) and load them."""
    out.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(ByteLevel.alphabet())
    merges = learn_merges(vocabulary())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    vocab |= {BOS: len(vocab), EOS: len(vocab) + 1}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n")
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(out)
    return CLIPTokenizer.from_pretrained(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".train/tokenizer"))
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH)
    args = parser.parse_args(argv)
    tokenizer = build_tokenizer(args.out, args.max_length)
    print(f"{len(tokenizer)} tokens, max_length {tokenizer.model_max_length} -> {args.out}")


if __name__ == "__main__":
    main()
