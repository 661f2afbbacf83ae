#!/usr/bin/env python
"""Reward placement speed: decode_with_offsets + place_rewards on sampled-looking responses, one core.

    OMP_NUM_THREADS=1 python scripts/bench_placement.py            # 10,000 responses of ~64 tokens
    OMP_NUM_THREADS=1 python scripts/bench_placement.py --n 2000 --tokens 128

Responses are byte-level BPE ids (finegrained.models.tiny.train_tokenizer) of generated paragraphs, with
a share of ids replaced by random vocabulary ids so that sequences are non-canonical and some multi-byte
characters are split, then EOS and right padding. Segments are cheap regex sub-sentences (segmentation
itself is measured by scripts/bench_segment.py). Prints the best of ``--repeats`` runs per stage.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time

import torch

sys.path.insert(0, ".")  # run from a checkout without installing

from finegrained.models.tiny import train_tokenizer  # noqa: E402
from finegrained.rewards.placement import decode_with_offsets, place_rewards  # noqa: E402
from finegrained.rewards.types import CategoryRewards, RewardBreakdown  # noqa: E402

_WORDS = ("the a river city answer because however people year famous first large old new team song film "
          "book war king north island music history water Paris 1969 3,000 café naïve 日本 😀").split()


def make_batch(tokenizer, n: int, tokens: int, noise: float, seed: int) -> tuple[list[list[int]], torch.Tensor]:
    """``n`` responses of at most ``tokens`` ids (EOS included when it fits), right-padded; (ids, mask (n, T))."""
    rng = random.Random(seed)
    vocab, eos, pad = len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = []
    for _ in range(n):
        text = " ".join(rng.choice(_WORDS) + rng.choice(["", "", "", ",", "."]) for _ in range(tokens))
        ids = tokenizer.encode(text, add_special_tokens=False)[: rng.randint(tokens // 2, tokens)]
        ids = [rng.randrange(vocab) if rng.random() < noise else i for i in ids]  # non-canonical samples
        ids = [i for i in ids if i not in (eos, pad)]
        if len(ids) < tokens:
            ids.append(eos)
        rows.append(ids)
    T = max(len(r) for r in rows)
    mask = torch.tensor([[t < len(r) for t in range(T)] for r in rows])
    return [r + [pad] * (T - len(r)) for r in rows], mask


def make_breakdown(texts: list[str]) -> RewardBreakdown:
    """A span category on regex sub-sentences and a sequence category on the stripped text."""
    spans = [[m.span() for m in re.finditer(r"[^,.\s][^,.]*?[,.]|[^,.\s][^,.]*[^,.\s]", t)] for t in texts]
    whole = [[(0, len(t))] if t.strip() else [] for t in texts]
    return RewardBreakdown({
        "relevance": CategoryRewards("relevance", "sub_sentence", "span", spans, [[0.3] * len(s) for s in spans]),
        "holistic": CategoryRewards("holistic", "sequence", "preference", whole, [[1.0] * len(s) for s in whole]),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--noise", type=float, default=0.05, help="share of ids replaced by random ids")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    corpus = [" ".join(random.Random(i).choices(_WORDS, k=40)) for i in range(300)]
    tokenizer = train_tokenizer(corpus, vocab_size=500)
    ids, mask = make_batch(tokenizer, args.n, args.tokens, args.noise, seed=0)
    decode_with_offsets(tokenizer, ids[:10])  # builds the per-tokenizer byte table once (not timed)

    decode_s, place_s = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        decoded = decode_with_offsets(tokenizer, ids)
        t1 = time.perf_counter()
        breakdown = make_breakdown([d.text for d in decoded])
        t2 = time.perf_counter()
        rewards = place_rewards(breakdown, decoded, mask)
        t3 = time.perf_counter()
        decode_s.append(t1 - t0)
        place_s.append(t3 - t2)
    n_segments = sum(len(s) for s in breakdown.categories["relevance"].segments)
    placed = rewards.sum().item()
    expected = sum(breakdown.total_per_sample())
    print(f"{args.n} responses, T={mask.shape[1]}, mean length {mask.sum(-1).float().mean():.1f} tokens, "
          f"{n_segments} segments, noise {args.noise}")
    print(f"decode_with_offsets  best {min(decode_s):.3f} s  runs {', '.join(f'{s:.3f}' for s in decode_s)}")
    print(f"place_rewards        best {min(place_s):.3f} s  runs {', '.join(f'{s:.3f}' for s in place_s)}")
    print(f"total                best {min(decode_s) + min(place_s):.3f} s")
    print(f"reward sum placed {placed:.1f} vs judged {expected:.1f}")
    return 0 if abs(placed - expected) < 1e-3 * max(1.0, abs(expected)) else 1


if __name__ == "__main__":
    sys.exit(main())
