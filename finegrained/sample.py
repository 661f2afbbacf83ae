"""Completions from a policy, as the items the annotation app reads (``finegrained sample``).

    finegrained sample --policy DIR --prompts prompts.jsonl --output completions.jsonl
                       [--n-per-prompt K] [--max-new-tokens N] [--temperature T] [--top-p P] [--top-k K]
                       [--greedy] [--seed S] [--batch-size B] [--device D] [--pairs]
                       [--prompt-column C] [--id-column C] [--truncate left|right|error]
                       [--format jsonl|label-studio] [--schema S]

``prompts.jsonl`` holds one object per line with ``prompt`` (and optionally ``id``); a ``datasets`` directory
(``save_to_disk``) or .csv/.parquet file works too, with ``--prompt-column`` / ``--id-column``. Prompts longer
than the policy allows with ``--max-new-tokens`` keep their last tokens (``--truncate left``, counted), their
first tokens (``--truncate right``, counted) or are refused (``--truncate error``); the records written keep
the whole prompt. Each output record is
``{"id", "prompt", "completion", "meta"}`` with ids ``<prompt id>-<k>`` (``k`` = 0..K-1) and
``meta = {"policy", "sample", "ended"}`` (``ended``: the model produced EOS before ``--max-new-tokens``).
With ``--pairs`` (two samples per prompt) each prompt gives one *pair item* instead,
``{"id", "prompt", "completion_a", "completion_b", "meta"}``, for the preference categories of a schema.
Generation follows the policy text convention of ``docs/ARCHITECTURE.md`` (prompt ids without special
tokens, batched, left-padded, KV cache), so what is annotated is exactly what PPO would see. This closes
the loop: sample -> annotate -> train-rm -> ppo -> sample.

``--format label-studio`` writes the same items as Label Studio tasks (a JSON array, ``{"data": {"item_id",
"prompt", "completion"}}`` or, with ``--pairs``, ``completion_a`` / ``completion_b``) and, beside the tasks
file, ``<name>.labeling_config.xml`` generated from ``--schema`` (span categories as labels; with
``--pairs`` its preference categories as A / B / Tie choices). Read the export back with
``finegrained convert label-studio``.
"""

from __future__ import annotations

from pathlib import Path


def prompt_task(path: Path, prompt_column: str = "prompt", id_column: str | None = None) -> dict:
    """The task config ``--prompts`` stands for: a JSONL file (``task=jsonl``), or a ``datasets`` dataset
    (a ``save_to_disk`` directory or a .csv/.parquet file, ``task=hf_dataset``)."""
    if path.is_dir() or path.suffix.lower() in (".csv", ".parquet"):
        columns = {"prompt": prompt_column, "id": id_column}
        return {"prompts": {"_target_": "finegrained.prompts.dataset_prompts", "path": str(path), "columns": columns}}
    return {"prompts": {"_target_": "finegrained.prompts.jsonl_prompts", "train": str(path)}}


def read_prompts(path: Path, prompt_column: str = "prompt", id_column: str | None = None) -> list[dict]:
    """Checked ``{"id", "prompt", ...}`` records of ``--prompts`` (ids default to ``p<line>``, unique)."""
    from .prompts import load_prompts

    return load_prompts(prompt_task(path, prompt_column, id_column), "train")


def sample_completions(
    policy: str, records: list[dict], *, n_per_prompt: int = 1, pairs: bool = False, max_new_tokens: int = 128,
    do_sample: bool = True, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, batch_size: int = 32,
    seed: int = 0, device: str | None = None, truncate: str = "left", source: str = "prompts",
) -> list[dict]:
    """Items for the annotation app from the policy directory ``policy`` on checked prompt ``records``:
    ``n_per_prompt`` completions per prompt, or with ``pairs`` one pair item (two samples) per prompt."""
    from .evaluate import pick_device
    from .rl.generation import fit_prompts, generate, load_policy, prompt_token_budget

    model, tokenizer = load_policy(policy, pick_device(device), option="--policy")
    budget = prompt_token_budget([model], max_new_tokens)
    fit_prompts(tokenizer, records, budget, truncate, who="sample", source=source)
    n_per_prompt = 2 if pairs else n_per_prompt
    # Each prompt repeated K times, side by side in the batch: one generate call per batch, not per sample.
    expanded = [(r, k) for r in records for k in range(n_per_prompt)]
    generations = generate(
        model, tokenizer, [r["prompt"] for r, _ in expanded], max_new_tokens=max_new_tokens,
        do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
        batch_size=batch_size, seed=seed, progress=True, truncate=truncate,
    )  # fmt: skip
    if pairs:
        return [
            {"id": r["id"], "prompt": r["prompt"], "completion_a": a.completion, "completion_b": b.completion,
             "meta": {"policy": str(policy), "ended": [a.ended, b.ended]}}  # fmt: skip
            for r, a, b in zip(records, generations[0::2], generations[1::2])
        ]
    return [
        {"id": f"{r['id']}-{k}", "prompt": r["prompt"], "completion": g.completion,
         "meta": {"policy": str(policy), "sample": k, "ended": g.ended}}  # fmt: skip
        for (r, k), g in zip(expanded, generations)
    ]
