"""``finegrained sample``: completions from a policy, as JSONL the annotation app reads.

    finegrained sample --policy DIR --prompts prompts.jsonl --output completions.jsonl [--n-per-prompt K]

``prompts.jsonl`` holds one object per line with ``prompt`` (and optionally ``id``). Each output record is
``{"id", "prompt", "completion"}`` with ids ``<prompt id>-<k>``; closing the loop sample -> annotate ->
train-rm -> ppo -> sample.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .io import atomic_write_jsonl, read_string_records


def read_prompts(path: Path) -> list[dict]:
    """``{"id", "prompt"}`` per line of ``path``; ids default to ``p<line>``."""
    return [{"id": str(r.get("id", f"p{r['_line']}")), "prompt": r["prompt"]} for r in read_string_records(path, ("prompt",))]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finegrained sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="HF causal LM directory (or hub id) with its tokenizer")
    parser.add_argument("--prompts", required=True, type=Path, help="JSONL with a 'prompt' (and 'id') per line")
    parser.add_argument("--output", required=True, type=Path, help="JSONL to write (id, prompt, completion)")
    parser.add_argument("--n-per-prompt", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    from .evaluate import pick_device
    from .generation import generate, load_policy

    records = read_prompts(args.prompts)
    model, tokenizer = load_policy(args.policy, pick_device(args.device))
    expanded = [(r, k) for r in records for k in range(args.n_per_prompt)]
    generations = generate(
        model, tokenizer, [r["prompt"] for r, _ in expanded], max_new_tokens=args.max_new_tokens,
        do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        batch_size=args.batch_size, seed=args.seed, progress=True,
    )  # fmt: skip
    out = [{"id": f"{r['id']}-{k}", "prompt": r["prompt"], "completion": g.completion} for (r, k), g in zip(expanded, generations)]
    atomic_write_jsonl(args.output, out)
    print(f"wrote {len(out)} completions to {args.output}")
    return 0
