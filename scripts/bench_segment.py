#!/usr/bin/env python
"""Segmentation speed on generated short paragraphs, one process on one core.

    python scripts/bench_segment.py                  # 20,000 paragraphs, prints a table
    python scripts/bench_segment.py --n 5000 --json out/bench_segment.json

Measures, in texts per second (best of ``--repeats`` runs after a warm-up):
  sentences       spaCy blank pipeline + sentencizer via nlp.pipe, cache off (the cold path);
  sub_sentences   the same plus the sub-sentence rule, cache off;
  both_cold       sub-sentences and sentences of new texts with one spaCy pass (what the PPO scorer does);
  split_only      the sub-sentence rule alone, sentences already cached (its marginal cost);
  cached          sentences for texts already seen (what a second granularity costs the scorer);
  sequence        the stripped-text span.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time

_WORDS = (
    "the a river city answer question because however people year born famous first large old new "
    "team song film book war king queen north south island music history science water energy "
    "Paris London 1969 3,000 U.S. e.g. well-known"
).split()


def make_paragraphs(n: int, seed: int) -> list[str]:
    """``n`` paragraphs of 1-4 sentences, 4-22 words each, some with commas/semicolons and line breaks."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(1, 4)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 22))]
            for _ in range(rng.randint(0, 2)):
                k = rng.randrange(len(words))
                words[k] += rng.choice([",", ",", ";", ":"])
            sentence = " ".join(words).rstrip(",;:")
            sentences.append(sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "!", "?"]))
        sep = rng.choice([" ", " ", " ", "\n", "  "])
        out.append(sep.join(sentences))
    return out


def _best_rate(fn, n_texts: int, repeats: int) -> tuple[float, list[float]]:
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return n_texts / min(seconds), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="number of paragraphs (default 20000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1000, help="nlp.pipe batch size")
    parser.add_argument("--min-words", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the figures here (atomically)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU core")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be positive")

    pinned = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        # One core, as the target is stated per core; pick one we are allowed to run on.
        pinned = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {pinned})

    from finegrained.schema import SegmentationConfig
    from finegrained.segment import Segmenter

    texts = make_paragraphs(args.n, args.seed)
    config = SegmentationConfig(min_words=args.min_words)
    t0 = time.perf_counter()
    cold = Segmenter(config, batch_size=args.batch_size, cache_size=0)
    load_seconds = time.perf_counter() - t0
    cold.sub_sentences(texts[: min(1000, len(texts))])  # warm-up

    rates: dict[str, float] = {}
    rates["sentences"], _ = _best_rate(lambda: cold.sentences(texts), args.n, args.repeats)
    rates["sub_sentences"], _ = _best_rate(lambda: cold.sub_sentences(texts), args.n, args.repeats)

    warm = Segmenter(config, batch_size=args.batch_size, cache_size=args.n)

    def both_granularities():
        warm.clear_cache()  # new texts each time, as in PPO: one spaCy pass serves both granularities
        warm.segment_many(texts, ["sub_sentence", "sentence"])

    rates["both_cold"], _ = _best_rate(both_granularities, args.n, args.repeats)
    sentences = warm.sentences(texts)
    rates["split_only"], _ = _best_rate(
        lambda: [[p for a, b in s for p in warm.split_sentence(t, a, b)] for t, s in zip(texts, sentences)],
        args.n,
        args.repeats,
    )
    rates["cached"], _ = _best_rate(lambda: warm.sentences(texts), args.n, args.repeats)
    rates["sequence"], _ = _best_rate(lambda: warm.segment(texts, "sequence"), args.n, args.repeats)

    n_sentences = sum(len(s) for s in sentences)
    n_sub = sum(len(s) for s in cold.sub_sentences(texts))
    result = {
        "n_paragraphs": args.n,
        "mean_chars": statistics.fmean(len(t) for t in texts),
        "mean_words": statistics.fmean(len(t.split()) for t in texts),
        "sentences_per_paragraph": n_sentences / args.n,
        "sub_sentences_per_paragraph": n_sub / args.n,
        "paragraphs_per_second": {k: round(v, 1) for k, v in rates.items()},
        "seconds_for_10000": {k: round(10000 / v, 4) for k, v in rates.items()},
        "pipeline_load_seconds": round(load_seconds, 3),
        "batch_size": args.batch_size,
        "min_words": args.min_words,
        "pinned_cpu": pinned,
        "python": platform.python_version(),
        "spacy": __import__("spacy").__version__,
    }
    print(f"{args.n} paragraphs, {result['mean_words']:.1f} words and "
          f"{result['sentences_per_paragraph']:.2f} sentences each (one core: cpu {pinned})")
    for key, rate in rates.items():
        print(f"  {key:<14} {rate:>12,.0f} paragraphs/s   {10000 / rate:7.3f} s per 10,000")
    if args.json:
        from finegrained.io import atomic_write_json

        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
