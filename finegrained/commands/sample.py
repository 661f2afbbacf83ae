"""``finegrained sample``: completions from a policy, as JSONL the annotation app reads.

    finegrained sample --policy DIR --prompts prompts.jsonl --output completions.jsonl
                       [--n-per-prompt K] [--max-new-tokens N] [--temperature T] [--top-p P] [--top-k K]
                       [--greedy] [--seed S] [--batch-size B] [--device D] [--pairs]
                       [--prompt-column C] [--id-column C] [--truncate left|right|error]
                       [--format jsonl|label-studio] [--schema S]

Parse and check the options, call ``finegrained.sample.sample_completions`` (whose docstring describes the
records written), write them and report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import FinegrainedError
from ..io import atomic_write_jsonl
from ..rl.generation import TRUNCATE_RULES
from ..sample import read_prompts, sample_completions

OUTPUT_FORMATS = ("jsonl", "label-studio")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finegrained sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="HF causal LM directory with its tokenizer")
    parser.add_argument("--prompts", required=True, type=Path,
                        help="JSONL with a 'prompt' (and 'id') per line, or a datasets directory (save_to_disk) "
                             "or .csv/.parquet file with --prompt-column")  # fmt: skip
    parser.add_argument("--prompt-column", default="prompt", help="datasets input: the prompt column (default: prompt)")
    parser.add_argument("--id-column", default=None, help="datasets input: the id column (default: row numbers)")
    parser.add_argument("--truncate", choices=TRUNCATE_RULES, default="left",
                        help="a prompt longer than the policy allows with --max-new-tokens: left = keep its last "
                             "tokens (default), right = keep its first tokens, error = refuse, naming the records")  # fmt: skip
    parser.add_argument("--output", required=True, type=Path,
                        help="file to write: JSONL (id, prompt, completion, meta), or with --format label-studio "
                             "the tasks JSON (the labeling config is written beside it)")  # fmt: skip
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="jsonl",
                        help="jsonl = items for finegrained annotate (default); label-studio = Label Studio tasks "
                             "and a labeling config")  # fmt: skip
    parser.add_argument("--schema", default="qa_feedback",
                        help="--format label-studio: the schema whose categories the labeling config asks for "
                             "(default: qa_feedback)")  # fmt: skip
    parser.add_argument("--n-per-prompt", type=int, default=1, help="completions per prompt (default: 1)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = no top-k filtering")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--pairs", action="store_true",
                        help="two samples per prompt written as one pair item (completion_a, completion_b), "
                             "for preference categories")  # fmt: skip
    return parser


def check_args(args: argparse.Namespace) -> None:
    bad = []
    if args.pairs and args.n_per_prompt not in (1, 2):
        bad.append(f"--pairs samples two completions per prompt; drop --n-per-prompt {args.n_per_prompt}")
    if args.n_per_prompt < 1:
        bad.append(f"--n-per-prompt must be at least 1, got {args.n_per_prompt}")
    if args.max_new_tokens < 1:
        bad.append(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.batch_size < 1:
        bad.append(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.greedy and args.temperature <= 0:
        bad.append(f"--temperature must be positive (use --greedy for deterministic decoding), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        bad.append(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        bad.append(f"--top-k must be 0 (off) or positive, got {args.top_k}")
    if args.output.exists() and args.prompts.exists() and args.output.resolve() == args.prompts.resolve():
        bad.append("--output must not be the --prompts file")
    if bad:
        raise FinegrainedError("\n".join(f"finegrained sample: {b}" for b in bad))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    records = read_prompts(args.prompts, args.prompt_column, args.id_column)  # checked before the (slow) model load
    config_xml = label_studio_config(args) if args.format == "label-studio" else None  # schema checked early too
    items = sample_completions(
        args.policy, records, n_per_prompt=args.n_per_prompt, pairs=args.pairs, max_new_tokens=args.max_new_tokens,
        do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        batch_size=args.batch_size, seed=args.seed, device=args.device, truncate=args.truncate, source=str(args.prompts),
    )  # fmt: skip
    if args.pairs:
        what = f"{len(items)} pair items"
    else:
        what = f"{len(items)} completions ({len(records)} prompts x {args.n_per_prompt})"
    if config_xml is None:
        atomic_write_jsonl(args.output, items)
        print(f"wrote {what} to {args.output}")
    else:
        write_label_studio(args.output, items, config_xml, what)
    return 0


def label_studio_config(args: argparse.Namespace) -> str:
    """The labeling config for ``--format label-studio`` (raises on a schema without such categories)."""
    from ..convert.label_studio import labeling_config
    from ..schema import load_schema

    return labeling_config(load_schema(args.schema), pairs=args.pairs)


def write_label_studio(output: Path, items: list[dict], config_xml: str, what: str) -> None:
    """Label Studio tasks (a JSON array) at ``output`` and the labeling config beside it."""
    from ..convert.label_studio import labeling_config_path, tasks_from_items
    from ..io import atomic_write_json, atomic_write_text

    config_path = labeling_config_path(output)
    atomic_write_json(output, tasks_from_items(items))
    atomic_write_text(config_path, config_xml)
    print(f"wrote {what} as Label Studio tasks to {output}\nwrote the labeling config to {config_path}")
