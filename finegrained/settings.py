"""What every setting of every Hydra command means: type, allowed range or choices, one line of help.

One table per command (``SPECS[config_name]``), keyed by the dotted path in the composed config. The
same tables drive ``finegrained.config_checks`` (refuse unknown keys, check every value before any work
starts) and each command's ``--help``. A ``*`` in a key matches any one name (``reward.categories.*.weight``);
an ``open`` entry is a mapping whose contents are the user's own (policy names, a callable's keyword
arguments): anything below it is accepted. Cross-key rules (``Rule``) check what one key cannot.

This module imports nothing heavy: ``--help`` and configuration errors never load torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

KINDS = ("int", "float", "bool", "str", "list", "mapping", "any", "seeds")


@dataclass(frozen=True)
class Setting:
    """One setting. ``low``/``high`` are inclusive bounds, ``above``/``below`` exclusive ones."""

    help: str
    kind: str = "any"
    low: float | None = None
    above: float | None = None
    high: float | None = None
    below: float | None = None
    choices: tuple = ()
    nullable: bool = False
    open: bool = False  # a mapping of the user's own entries: every key below it is accepted
    overrides_for: str | None = None  # a list of Hydra overrides passed on to this command (demo stages)
    allow_inf: bool = False  # a float that may be +inf (e.g. a clipping norm: inf = no clipping)

    def allowed(self) -> str:
        """What is allowed, as the end of "must be ...", e.g. ``an integer >= 1``."""
        if self.choices and self.kind == "list":
            text = "a list of " + ", ".join(_show(c) for c in self.choices) + " (or one of them)"
        elif self.choices:
            text = "one of " + ", ".join(_show(c) for c in self.choices)
        elif self.kind == "seeds":
            text = "an integer >= 1 (that many seeds) or a list of integers >= 0"
        else:
            text = {
                "int": "an integer", "float": "a number (inf allowed)" if self.allow_inf else "a number", "bool": "true or false", "str": "a string",
                "list": "a list", "mapping": "a mapping", "any": "any value",
            }[self.kind] + self._bounds()  # fmt: skip
        if self.overrides_for:
            text = f"a list of {self.overrides_for} overrides (key=value)"
        return text + (", or null" if self.nullable else "")

    def _bounds(self) -> str:
        parts = []
        if self.above is not None:
            parts.append(f"> {_show(self.above)}")
        if self.low is not None:
            parts.append(f">= {_show(self.low)}")
        if self.high is not None:
            parts.append(f"<= {_show(self.high)}")
        if self.below is not None:
            parts.append(f"< {_show(self.below)}")
        return (" " + " and ".join(parts)) if parts else ""

    def problem(self, value) -> str | None:
        """None when ``value`` (plain Python, interpolations resolved) is allowed, else "must be ..."."""
        if value is None:
            return None if self.nullable else f"must be {self.allowed()}"
        if not self._fits(value):
            return f"must be {self.allowed()}"
        return None

    def _fits(self, value) -> bool:
        if self.choices and self.kind == "list":  # several of the choices, or one
            return all(isinstance(v, str) and v in self.choices for v in (value if isinstance(value, list) else [value]))
        if self.choices:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.kind == "seeds":
            if isinstance(value, list):
                return bool(value) and all(_is_int(v) and v >= 0 for v in value)
            return _is_int(value) and value >= 1
        if self.overrides_for:
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        if self.kind == "int" and not _is_int(value):
            return False
        if self.kind == "float" and not (_is_number(value) and (math.isfinite(value) or (self.allow_inf and value == math.inf))):
            return False
        simple = {"bool": bool, "str": str, "list": list, "mapping": dict}
        if self.kind in simple and not isinstance(value, simple[self.kind]):
            return False
        if self.kind in ("int", "float"):
            return _in_bounds(value, self)
        return True


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in_bounds(value, s: Setting) -> bool:
    return not (
        (s.low is not None and value < s.low) or (s.above is not None and value <= s.above)
        or (s.high is not None and value > s.high) or (s.below is not None and value >= s.below)
    )  # fmt: skip


def _show(value) -> str:
    """A value as the user would type it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else "''"
    return str(value)


def show_value(value) -> str:
    return _show(value)


# -- constructors (read like the table they build) --------------------------------------------------
def Int(help: str, low=None, high=None, nullable=False) -> Setting:  # noqa: N802
    return Setting(help, "int", low=low, high=high, nullable=nullable)


def Float(help: str, low=None, above=None, high=None, below=None, nullable=False, allow_inf=False) -> Setting:  # noqa: N802
    return Setting(help, "float", low=low, above=above, high=high, below=below, nullable=nullable, allow_inf=allow_inf)


def Bool(help: str, nullable=False) -> Setting:  # noqa: N802
    return Setting(help, "bool", nullable=nullable)


def Str(help: str, nullable=False) -> Setting:  # noqa: N802
    return Setting(help, "str", nullable=nullable)


def Choice(choices: tuple, help: str, nullable=False) -> Setting:  # noqa: N802
    return Setting(help, "str", choices=tuple(choices), nullable=nullable)


def Choices(choices: tuple, help: str) -> Setting:  # noqa: N802
    """A list of some of ``choices`` (a single one may be given bare)."""
    return Setting(help, "list", choices=tuple(choices))


def Open(help: str, nullable=False) -> Setting:  # noqa: N802
    return Setting(help, "mapping", open=True, nullable=nullable)


def Block(help: str) -> Setting:  # noqa: N802
    """A mapping whose keys are listed in the table (not open)."""
    return Setting(help, "mapping")


@dataclass(frozen=True)
class Rule:
    """A check over several keys (each already valid on its own); ``test(*values)`` True = fine."""

    keys: tuple[str, ...]
    test: Callable[..., bool]
    message: str


def multiple_of(value_key: str, divisor_key: str) -> Rule:
    return Rule((value_key, divisor_key), lambda v, d: v % d == 0, f"must be a multiple of {divisor_key}")


def at_most(small_key: str, big_key: str) -> Rule:
    return Rule((small_key, big_key), lambda s, b: s <= b, f"must be <= {big_key}")


@dataclass(frozen=True)
class Command:
    """A Hydra command: its table, rules, help text, and how its command line is read."""

    cli_name: str
    summary: str
    usage: str
    examples: tuple[str, ...]
    settings: dict[str, Setting]
    rules: tuple[Rule, ...] = ()
    notes: str = ""
    aliases: dict[str, str] = field(default_factory=dict)  # key=value spelled differently -> config key
    # bare word -> the overrides it stands for (each added unless the command line sets that key itself)
    words: dict[str, tuple[str, ...]] = field(default_factory=dict)


def mounted(prefix: str, table: dict[str, Setting]) -> dict[str, Setting]:
    """``table`` (the keys of one config group option) at ``prefix.`` in a command's config."""
    return {f"{prefix}.{k}": v for k, v in table.items()}


# -- config groups ------------------------------------------------------------------------------------
REPORT_TO = Choices(("tensorboard", "mlflow", "wandb"), "experiment trackers that get every metric and the "
                    "config (mlflow, wandb: pip install 'finegrained[mlflow]' / '[wandb]'); []: none")
TASK = {  # conf/task/{synthetic_qa,jsonl,hf_dataset}.yaml
    "name": Str("name of the task"),
    "schema": Str("annotation schema of the task (a shipped name or a YAML path)", nullable=True),
    "prompts": Open("fn(split, n, seed) -> prompt records: _target_ and its keyword arguments"),
    "prompts.n": Int("prompts per split", low=1),
    "oracle": Open("fn(prompts, completions) -> error rates (_target_, _partial_); null: no oracle", nullable=True),
    "truncate": Choice(("left", "right", "error"), "a prompt longer than the policy allows: left (keep its last tokens, "
                       "counted in the log) | right (keep its first tokens, counted) | error (refuse, naming the record)"),
    # task=jsonl
    "train": Str("task=jsonl: JSONL of {id?, prompt, reference?} for training (ppo)", nullable=True),
    "eval": Str("task=jsonl: JSONL of held-out prompts (evaluate)", nullable=True),
    # task=hf_dataset
    "path": Str("task=hf_dataset: save_to_disk directory, data file, builder name or cached dataset name", nullable=True),
    "config_name": Str("task=hf_dataset: the dataset's configuration (load_dataset's name)", nullable=True),
    "data_files": Open("task=hf_dataset: {split: file} for a builder such as json or csv", nullable=True),
    "train_split": Str("task=hf_dataset: the split ppo trains on"),
    "eval_split": Str("task=hf_dataset: the split evaluate reads"),
    "columns": Open("task=hf_dataset: column names of prompt, id and reference"),
}

POLICY = {  # conf/policy/{tiny,pretrained}.yaml
    "name_or_path": Str("HF directory or hub id of a causal LM; null: a tiny GPT-2 built from the sizes below", nullable=True),
    "n_layer": Int("tiny policy: transformer layers", low=1),
    "n_embd": Int("tiny policy: width", low=1),
    "n_head": Int("tiny policy: attention heads (must divide n_embd)", low=1),
    "n_positions": Int("tiny policy: longest prompt + response in tokens", low=1),
    "vocab_size": Int("tiny policy: tokenizer size, trained on the task's prompts", low=1),
}

SPAN_MODES = ("hard", "soft", "penalty")
GRANULARITIES = ("sub_sentence", "sentence", "sequence")
REWARD = {  # conf/reward/*.yaml (the reward scorer's config)
    "span_mode": Choice(SPAN_MODES, "span categories: hard +w/-w, soft w(1 - 2p), penalty 0/-w per segment"),
    "segmentation": Block("segmentation used by rule judges"),
    "segmentation.sentence": Str("sentence splitter (sentencizer, or a spaCy pipeline name)"),
    "segmentation.split_after": Str("characters after which a sentence splits into sub-sentences"),
    "segmentation.min_words": Int("fewest words on each side of a sub-sentence split", low=1),
    "segmentation.language": Str("spaCy language code"),
    "segmentation.rule": Choice(("finegrained", "paper"), "sub-sentence rule: finegrained (default) or paper (Wu et al. 2023)"),
    "categories": Block("reward categories by name"),
    "categories.*": Block("one reward category: a trained model (model:) or a Python rule (judge:)"),
    "categories.*.model": Str("reward-model directory written by train-rm; null or empty: skip the category", nullable=True),
    "categories.*.weight": Float("weight of the category's rewards (0: skip the category)"),
    "categories.*.judge": Open("rule judge: _target_ (a callable) and its keyword arguments", nullable=True),
    "categories.*.kind": Choice(("span", "preference"), "rule judges: span (per segment) or preference (per answer)", nullable=True),
    "categories.*.granularity": Choice(GRANULARITIES, "rule judges: the segments judged", nullable=True),
    "categories.*.mode": Choice(SPAN_MODES, "span categories: this category's span mode (default: span_mode)", nullable=True),
    "categories.*.normalisation": Block("preference rules: mean and std the score is normalised with"),
    "categories.*.normalisation.mean": Float("score mean"),
    "categories.*.normalisation.std": Float("score standard deviation", above=0),
}

RM_MODEL = {  # conf/model/*.yaml (train-rm backbones)
    "name_or_path": Str("HF encoder/decoder directory or hub id (minilm: the offline MiniLM); null: a tiny BERT", nullable=True),
    "vocab_size": Int("tiny model: tokenizer size, trained on the training texts", low=1),
    "n_layer": Int("tiny model: transformer layers", low=1),
    "hidden": Int("tiny model: width", low=1),
    "n_head": Int("tiny model: attention heads (must divide hidden)", low=1),
    "dropout": Float("tiny model: dropout", low=0, high=1),
    "segment_types": Int("tiny model: BERT token types (0 = prompt, segments cycle through the rest)", low=2),
}

DEVICE = Str("device, e.g. cpu or cuda; null: a GPU when there is one", nullable=True)

# -- commands -----------------------------------------------------------------------------------------
PPO = {
    "output_dir": Str("run directory: checkpoints/, final/, tensorboard events, config.yaml"),
    "seed": Int("random seed", low=0),
    "resume": Bool("continue from the newest complete checkpoint in output_dir"),
    "overwrite": Bool("start over in an output_dir that already holds a run"),
    "bf16": Bool("bf16 autocast (GPU, or a CPU with bf16 instructions)"),
    "gradient_checkpointing": Bool("recompute activations in the backward pass (less memory, more time)"),
    "accelerate": Block("accelerate settings"),
    "accelerate.cpu": Bool("true: force CPU; null: a GPU when there is one", nullable=True),
    "ppo.iterations": Int("PPO iterations (generate, score, update)", low=1),
    "ppo.batch_size": Int("prompts per iteration, over all processes (episodes: batch_size x samples_per_prompt)", low=1),
    "ppo.samples_per_prompt": Int("G responses per prompt, sampled together and kept on one process", low=1),
    "ppo.minibatch_size": Int("episodes per minibatch of the update", low=1),
    "ppo.grad_accum": Int("minibatches per optimizer step", low=1),
    "ppo.epochs": Int("PPO epochs over each batch", low=1),
    "ppo.lr": Float("policy learning rate", above=0),
    "ppo.value_lr": Float("value-model learning rate", above=0),
    "ppo.warmup_steps": Int("optimizer steps of linear learning-rate warm-up", low=0),
    "ppo.clip_range": Float("policy ratio clip", above=0),
    "ppo.clip_range_value": Float("value clip around the old values", above=0),
    "ppo.value_coef": Float("weight of the value loss", low=0),
    "ppo.entropy_coef": Float("weight of the entropy bonus", low=0),
    "ppo.gamma": Float("discount (1.0 as in Wu et al. 2023)", low=0, high=1),
    "ppo.lam": Float("GAE lambda", low=0, high=1),
    "ppo.whiten_rewards": Bool("scale rewards to unit variance (keeps their sign)"),
    "ppo.whiten_advantages": Bool("whiten advantages per batch"),
    "ppo.max_grad_norm": Float("gradient clipping norm (.inf: no clipping)", above=0, allow_inf=True),
    "kl.estimator": Choice(("k1", "k3"), "per-token KL estimator: k1 log p/q, k3 (r - 1) - log r"),
    "kl.coef": Float("KL penalty coefficient (the start value when adaptive)", low=0),
    "kl.adaptive": Bool("adapt the coefficient towards kl.target"),
    "kl.target": Float("adaptive: target KL per response", above=0),
    "kl.horizon": Int("adaptive: episodes over which the coefficient adapts", low=1),
    "generation.max_new_tokens": Int("longest response in tokens", low=1),
    "generation.min_new_tokens": Int("EOS is suppressed before this many tokens", low=0),
    "generation.temperature": Float("sampling temperature", above=0),
    "generation.top_k": Int("sample from the k most likely tokens (0: all)", low=0),
    "generation.top_p": Float("nucleus sampling mass (1.0: all)", above=0, high=1),
    "lora.r": Int("> 0: train rank-r LoRA adapters only (the reference is the policy with adapters off)", low=0),
    "lora.alpha": Float("LoRA scale numerator (scale = alpha / r)", above=0),
    "lora.dropout": Float("dropout on the adapters' input", low=0, high=1),
    "lora.targets": Setting("module-name suffixes to adapt, e.g. [c_attn]; null: every linear layer but the output head",
                            "any", nullable=True),
    "value.shared": Bool("a value head on the policy's own trunk instead of a separate value model"),
    "value.init_from": Str("policy (or null), or a backbone directory (e.g. a reward model's) for the value model", nullable=True),
    "checkpoint.every": Int("iterations between checkpoints (0: none)", low=0),
    "checkpoint.keep": Int("checkpoints kept", low=1),
    "log.progress": Bool("progress bar"),
    "log.samples_every": Int("iterations between sample completions in tensorboard (0: never)", low=0),
    "log.n_samples": Int("sample completions logged each time", low=0),
    "log.report_to": REPORT_TO,
    **mounted("policy", POLICY),
    **mounted("reward", REWARD),
    **mounted("task", TASK),
}

# finegrained grpo / rloo: their configs compose conf/ppo.yaml, so the ppo table plus their own keys
CRITIC_FREE = {
    **PPO,
    "advantage.order": Choice(("per_category", "sum"), "per_category: normalise each category's rewards over the "
                              "group, then weight and sum (GDPO) | sum: sum the categories, then normalise (GRPO)"),
    "advantage.scale_std": Bool("divide by the group's standard deviation (Dr. GRPO: false)"),
    "advantage.eps": Float("added to the group's standard deviation", above=0),
    "loss.aggregation": Choice(("token_mean", "sequence_mean", "token_sum"), "token_mean: over every token of the "
                               "minibatch | sequence_mean: mean of each response's token mean (GRPO) | token_sum: "
                               "token sum / (responses x max_new_tokens) (Dr. GRPO)"),
    "kl.mode": Choice(("loss", "reward", "none"), "KL to the reference: loss (kl.coef x KL term in the loss, GRPO) | "
                      "reward (per-token penalty in the reward, PPO) | none"),
}

TRAIN_RM = {
    "schema": Str("annotation schema: a shipped name or a YAML path"),
    "category": Str("the category to train (its kind, span or preference, picks the model type)", nullable=True),
    "categories": Setting("instead of category: several categories on one shared backbone, e.g. "
                          "[relevance,factuality,completeness]", "list", nullable=True),
    "data.train": Str("span JSONL (span categories) or preference JSONL (preference categories)"),
    "data.eval": Str("held-out file; null: hold out data.eval_fraction of data.train", nullable=True),
    "data.preferences": Str("categories=[...] with preference categories: their preference JSONL", nullable=True),
    "data.eval_preferences": Str("held-out preference file; null: hold out eval_fraction of data.preferences", nullable=True),
    "data.eval_fraction": Float("share of data.train held out when data.eval is null", low=0, below=1),
    "output_dir": Str("reward-model directory to write"),
    "overwrite": Bool("replace an existing finished output_dir"),
    "seed": Int("random seed", low=0),
    "device": DEVICE,
    "max_length": Int("tokens per input; the prompt is cut first, completion markers never", low=8),
    "min_overlap_words": Int("words an error span must share with a segment to mark it", low=1),
    "train.epochs": Int("passes over the training data", low=1),
    "train.batch_size": Int("examples per step", low=1),
    "train.eval_batch_size": Int("examples per evaluation forward pass", low=1),
    "train.lr": Float("learning rate; null: 2e-3 for a model built from config, 5e-5 for a pretrained one", above=0, nullable=True),
    "train.weight_decay": Float("AdamW weight decay", low=0),
    "train.warmup_ratio": Float("share of the steps spent warming the learning rate up", low=0, high=1),
    "train.max_grad_norm": Float("gradient clipping norm (null or 0: none)", low=0, nullable=True),
    "train.class_weighting": Choice(("balanced", "none"), "span models: weight the minority class up (balanced) or not"),
    "train.eval_every": Int("evaluate every N steps, keeping the best checkpoint (0: only at the end)", low=0),
    "train.best_metric": Str("metric that picks the best checkpoint (e.g. error_f1); null: segment/pairwise accuracy", nullable=True),
    "train.mixed_precision": Choice(("no", "bf16", "fp16"), "mixed precision (bf16 on a GPU)"),
    "train.progress": Bool("progress bar"),
    "log.report_to": REPORT_TO,
    **mounted("model", RM_MODEL),
}

EVAL_RM = {
    "model_dir": Str("reward-model directory written by train-rm (also accepted as model=<dir>)", nullable=True),
    "data": Str("span JSONL (span models) or preference JSONL (preference models)", nullable=True),
    "schema": Str("schema; null: the copy saved in the model directory", nullable=True),
    "output_dir": Str("where metrics.json goes; null: <model>/eval/<data file stem>/", nullable=True),
    "batch_size": Int("examples per forward pass", low=1),
    "device": DEVICE,
}

SFT = {
    "output_dir": Str("run directory: final/ (HF dir), checkpoints/, tensorboard events"),
    "seed": Int("random seed", low=0),
    "overwrite": Bool("replace an existing output_dir/final"),
    "data.train": Str("JSONL with prompt and completion per line; null: the task's noisy writer", nullable=True),
    "data.eval": Str("held-out JSONL of the same form", nullable=True),
    "data.n_train": Int("built-in corpus: training pairs (when data.train is null)", low=1),
    "data.n_eval": Int("built-in corpus: held-out pairs (when data.eval is null)", low=1),
    "data.error_rates": Open("noisy-writer error rates by error type; null: the task's defaults", nullable=True),
    "model.name_or_path": Str("HF causal LM directory or hub id; null: a tiny GPT-2 built from the sizes below", nullable=True),
    "model.n_layer": Int("tiny model: transformer layers", low=1),
    "model.n_embd": Int("tiny model: width", low=1),
    "model.n_head": Int("tiny model: attention heads (must divide n_embd)", low=1),
    "model.n_positions": Int("tiny model: longest prompt + completion in tokens", low=1),
    "model.vocab_size": Int("tiny model: tokenizer size, trained on the corpus", low=1),
    "model.dropout": Float("tiny model: embedding, attention and residual dropout (GPT-2's 0.1)", low=0, below=1),
    "train.epochs": Int("passes over the training pairs", low=1),
    "train.batch_size": Int("pairs per step", low=1),
    "train.lr": Float("learning rate", above=0),
    "train.warmup_steps": Int("steps of learning-rate warm-up", low=0),
    "train.weight_decay": Float("AdamW weight decay", low=0),
    "train.max_grad_norm": Float("gradient clipping norm", above=0),
    "train.log_every": Int("steps between tensorboard points", low=1),
    "train.progress": Bool("progress bar"),
    "checkpoint.every": Int("steps between intermediate checkpoints (0: only output_dir/final)", low=0),
    "bf16": Bool("bf16 autocast (GPU)"),
    "log.report_to": REPORT_TO,
    **mounted("task", TASK),
}

EVALUATE = {
    "policies": Open("policy name -> HF directory (or hub id) of a causal LM with its tokenizer"),
    "reference": Str("policy name (or directory) the KL is measured against; null: the first policy", nullable=True),
    "reward": Setting("reward config (reward=<option>, conf/reward/) to also report reward-model scores; null: none",
                      "mapping", nullable=True),
    "split": Choice(("train", "eval", "test"), "split of the task's prompts"),
    "n_prompts": Int("held-out prompts per policy", low=1),
    "generation.do_sample": Bool("sample (true) or greedy (false)"),
    "generation.temperature": Float("sampling temperature", above=0),
    "generation.top_k": Int("sample from the k most likely tokens (0: all)", low=0),
    "generation.top_p": Float("nucleus sampling mass (1.0: all)", above=0, high=1),
    "generation.max_new_tokens": Int("longest completion in tokens", low=1),
    "generation.batch_size": Int("prompts per generate call", low=1),
    "oracle": Open("the task's oracle (default: task.oracle); null: none", nullable=True),
    "n_examples": Int("sample completions per policy kept in eval.json", low=0),
    "output_dir": Str("where eval.json goes"),
    "seed": Int("sampling seed", low=0),
    "device": DEVICE,
    **mounted("task", TASK),
    **mounted("reward", REWARD),
}

DEMO = {
    "output_dir": Str("demo directory (each stage is skipped when its outputs are complete)"),
    "schema": Str("annotation schema of the built-in task"),
    "seeds": Setting("an int n (seeds 0..n-1) or a list of seeds such as [0,7]", "seeds"),
    "weights": Block("fine-grained reward weights"),
    "weights.relevance": Float("weight of relevance (paper: 0.3)"),
    "weights.factuality": Float("weight of factuality (paper: 0.5)"),
    "weights.completeness": Float("weight of completeness (paper: 0.3)"),
    "holistic_weight": Float("weight of the holistic reward"),
    "span_mode": Choice(SPAN_MODES, "span reward mode of the fine-grained run (see README)"),
    "max_new_tokens": Int("longest answer in tokens (PPO and evaluation)", low=1),
    "eval_sampling": Bool("evaluate sampled answers at temperature 1 (false: greedy)"),
    "annotators": Int("simulated annotators (ann-0 ..), each record annotated by one", low=1),
    "label_noise": Float("probability that a simulated annotator flips a judgement", low=0, high=1),
    "shared_rm": Bool("also a joint reward model on one backbone and a fine-grained PPO run with it"),
    "algorithms": Choices(("ppo", "grpo", "dpo_holistic", "dpo_completeness_corrections", "ddpo"),
                          "learners compared, ppo always among them: grpo adds fine-grained and holistic GRPO (4 samples "
                          "per prompt, the same episodes); dpo_holistic (DPO on the holistic pairs), "
                          "dpo_completeness_corrections (DPO on the completeness pairs plus the span corrections) and ddpo "
                          "(dense DPO on the span corrections) train offline from the same SFT policy and annotations"),
    "dpo_overrides": Setting("overrides of every offline (dpo) run", "list", overrides_for="dpo"),
    "sft_overrides": Setting("overrides of the SFT stage", "list", overrides_for="sft"),
    "sft_policy": Str("start from this trained SFT policy directory instead of stage 1; `shipped`: the one the "
                      "package ships (the full demo's seed-0 SFT policy); null: train it", nullable=True),
    "n_annotation_prompts": Int("prompts sampled from the SFT policy and annotated", low=1),
    "samples_per_prompt": Int("answers per annotated prompt (two give one preference pair)", low=2),
    "rm_overrides": Setting("overrides of every reward-model stage", "list", overrides_for="train_rm"),
    "ppo_iterations": Int("PPO iterations of every run", low=1),
    "ppo_overrides": Setting("overrides of every PPO run", "list", overrides_for="ppo"),
    "n_eval_prompts": Int("held-out prompts of the evaluation", low=1),
    "note": Str("printed with the results", nullable=True),
}

BENCH = {
    "output_dir": Str("where bench.json (and profile.txt) go"),
    "seed": Int("random seed", low=0),
    "bench.algorithm": Choice(("ppo", "grpo", "rloo", "dpo"), "the learner timed (grpo, rloo: batch_size episodes as "
                              "batch_size / 4 prompts x 4 samples, batch_size a multiple of 4; dpo: optimizer steps on "
                              "batch_size pairs of 64 prompt + response_length tokens)"),
    "bench.mode": Choice(("holistic", "fine_grained"), "holistic: one sequence reward model; fine_grained: three categories"),
    "bench.n_layer": Int("layers of every model", low=1),
    "bench.n_embd": Int("width of every model", low=1),
    "bench.n_head": Int("attention heads (must divide bench.n_embd)", low=1),
    "bench.vocab_size": Int("tokenizer size, trained on built-in text", low=1),
    "bench.batch_size": Int("episodes per iteration", low=1),
    "bench.response_length": Int("fixed response length in tokens (EOS suppressed until then)", low=1),
    "bench.ppo_epochs": Int("PPO epochs per iteration", low=1),
    "bench.minibatches": Int("minibatches per PPO epoch", low=1),
    "bench.iterations": Int("iterations; the first is a warm-up, the median of the rest is reported (of all when 1)", low=1),
    "bench.bare_repeats": Int("bare model-work measurements (0: none)", low=0),
    "bench.bf16": Bool("bf16 autocast"),
    "bench.device": Choice(("auto", "cpu"), "auto: a GPU when there is one"),
    "bench.shared_value": Bool("a value head on the policy's trunk instead of a separate value model"),
    "bench.lora_r": Int("> 0: LoRA adapters of this rank", low=0),
    "bench.shared_rm": Bool("fine_grained: one reward-model backbone with a head per category"),
    "bench.profile": Bool("one more iteration under cProfile -> output_dir/profile.txt"),
    **mounted("task", TASK),
}

PPO_RULES = (at_most("generation.min_new_tokens", "generation.max_new_tokens"), multiple_of("policy.n_embd", "policy.n_head"))


def critic_free_command(name: str, summary: str) -> Command:
    """``finegrained grpo`` / ``rloo``: the ppo command's rules, a group of at least two samples."""
    return Command(
        name, summary, f"finegrained {name} [group=option ...] [key=value ...]",
        (f"finegrained {name} experiment=smoke",
         f"finegrained {name} experiment=smoke ppo.samples_per_prompt=8 advantage.order=sum loss.aggregation=token_sum",
         f"finegrained {name} policy=pretrained policy.name_or_path=outputs/demo/sft/final reward=fine_grained"
         " reward.categories.relevance.model=outputs/demo/rm/relevance"
         " reward.categories.factuality.model=outputs/demo/rm/factuality"
         " reward.categories.completeness.model=outputs/demo/rm/completeness"),
        CRITIC_FREE,
        rules=(*PPO_RULES, Rule(("ppo.samples_per_prompt",), lambda g: g >= 2,
                                "must be at least 2: a sample's baseline is the other samples of its prompt")),
        notes="No value model: value.*, ppo.value_lr, value_coef, clip_range_value, gamma, lam and whiten_* are not used.",
    )  # fmt: skip


DPO = {
    # the run's own keys mean what they mean for ppo
    **{k: PPO[k] for k in ("output_dir", "seed", "resume", "overwrite", "bf16", "gradient_checkpointing", "accelerate",
                           "accelerate.cpu", "lora.r", "lora.alpha", "lora.dropout", "lora.targets", "checkpoint.keep",
                           "log.progress", "log.report_to")},
    "data.train": Setting("preference JSONL (a file or a list of files); null: the built-in task's simulated annotations",
                          "any", nullable=True),
    "data.corrections": Setting("span JSONL (a file or a list): records with a correction become pairs "
                                "(chosen = correction, rejected = completion)", "any", nullable=True),
    "data.eval": Setting("held-out preference or span JSONL (a file or a list); null: hold out data.eval_fraction "
                         "of the prompts", "any", nullable=True),
    "data.eval_fraction": Float("share of the prompts held out when data.eval is null (0: no held-out split)", low=0, below=1),
    "data.category": Str("only preference records of this category (e.g. completeness); null: all", nullable=True),
    "data.schema": Str("annotation schema the files are validated against (a shipped name or a YAML path)", nullable=True),
    "data.without_correction": Choice(("skip", "error"), "span records without a correction: skip them (counted and "
                                      "reported) or refuse the file"),
    "data.builtin": Open("fn(kind, category, split) -> records, used when data.train and data.corrections are null"),
    "dpo.loss": Choice(("sigmoid", "ipo", "ddpo"), "sigmoid: DPO; ipo: IPO; ddpo: dense DPO, changed tokens weigh dpo.gamma"),
    "dpo.beta": Float("strength of the pull towards the reference (DPO's beta; IPO's target margin is 1 / (2 beta))", above=0),
    "dpo.gamma": Float("ddpo: weight of the tokens of segments the annotator changed (RLHF-V: 5)", above=0),
    "dpo.epochs": Int("passes over the training pairs", low=1),
    "dpo.batch_size": Int("pairs per optimizer step, over all processes", low=1),
    "dpo.grad_accum": Int("micro-batches per optimizer step", low=1),
    "dpo.lr": Float("learning rate", above=0),
    "dpo.warmup_steps": Int("optimizer steps of linear learning-rate warm-up", low=0),
    "dpo.max_grad_norm": Float("gradient clipping norm (.inf: no clipping)", above=0, allow_inf=True),
    "dpo.eval_batch_size": Int("pairs per held-out forward pass", low=1),
    "checkpoint.every": Int("optimizer steps between checkpoints (0: none)", low=0),
    "log.eval_every": Int("optimizer steps between held-out evaluations (0: at the start and the end only)", low=0),
    **mounted("policy", POLICY),
    **mounted("task", TASK),
}

COMMANDS: dict[str, Command] = {
    "ppo": Command(
        "ppo", "dense-reward PPO on a causal LM, fine-grained or holistic rewards",
        "finegrained ppo [group=option ...] [key=value ...]",
        (
            "finegrained ppo experiment=smoke",
            "finegrained ppo experiment=smoke lora.r=8 value.shared=true output_dir=outputs/ppo-lora",
            "finegrained ppo policy=pretrained policy.name_or_path=outputs/demo/sft/final reward=fine_grained"
            " reward.categories.relevance.model=outputs/demo/rm/relevance"
            " reward.categories.factuality.model=outputs/demo/rm/factuality"
            " reward.categories.completeness.model=outputs/demo/rm/completeness",
            "finegrained ppo policy=pretrained policy.name_or_path=outputs/demo/sft/final reward=holistic"
            " reward.categories.holistic.model=outputs/demo/rm/holistic",
        ),
        PPO,
        rules=PPO_RULES,
        notes="A new reward category needs its kind and granularity (rule judges) or a model directory.",
    ),
    "dpo": Command(
        "dpo", "offline preference optimisation of a causal LM: DPO, IPO or dense DPO on corrections",
        "finegrained dpo [group=option ...] [key=value ...]",
        (
            "finegrained dpo experiment=smoke",
            "finegrained dpo experiment=smoke dpo.loss=ddpo dpo.gamma=5",
            "finegrained dpo experiment=smoke dpo.loss=ipo lora.r=4 output_dir=outputs/dpo-ipo-lora",
            "finegrained dpo policy=pretrained policy.name_or_path=outputs/demo/sft/final"
            " data.train=outputs/demo/annotations/completeness_train.jsonl"
            " data.corrections=outputs/demo/annotations/spans_train.jsonl",
        ),
        DPO,
        rules=(multiple_of("policy.n_embd", "policy.n_head"),),
        notes="experiment=smoke stands for dpo_experiment=smoke (conf/dpo_experiment/).",
        aliases={"experiment": "dpo_experiment"},
    ),
    "train_rm": Command(
        "train-rm", "train a reward model for one category (or several on one shared backbone)",
        "finegrained train-rm category=<name> data.train=<jsonl> output_dir=<dir> [key=value ...]",
        (
            "finegrained train-rm schema=synthetic_qa category=factuality data.train=spans.jsonl output_dir=rm/factuality",
            "finegrained train-rm category=completeness data.train=prefs.jsonl data.eval=prefs_eval.jsonl"
            " train.epochs=5 output_dir=rm/completeness",
            "finegrained train-rm categories=[relevance,factuality,completeness] data.train=spans.jsonl"
            " data.preferences=prefs.jsonl output_dir=rm/joint",
            "finegrained train-rm category=factuality data.train=spans.jsonl model=pretrained"
            " model.name_or_path=/path/to/hf-encoder train.lr=5e-5 output_dir=rm/factuality-bert",
        ),
        TRAIN_RM,
        rules=(multiple_of("model.hidden", "model.n_head"),),
    ),
    "eval_rm": Command(
        "eval-rm", "evaluate a trained reward model on an annotated file (metrics.json)",
        "finegrained eval-rm model=<reward model dir> data=<jsonl> [key=value ...]",
        (
            "finegrained eval-rm model=rm/factuality data=spans_eval.jsonl",
            "finegrained eval-rm model=rm/joint data=spans_eval.jsonl output_dir=rm/joint/eval-spans batch_size=8",
        ),
        EVAL_RM,
        aliases={"model": "model_dir"},
    ),
    "sft": Command(
        "sft", "supervised fine-tuning of a causal LM, loss on completion tokens only",
        "finegrained sft [key=value ...]",
        (
            "finegrained sft",
            "finegrained sft data.train=pairs.jsonl model.name_or_path=/path/to/hf-model output_dir=outputs/sft-mine",
            "finegrained sft data.n_train=1000 train.epochs=3 output_dir=outputs/sft-small",
        ),
        SFT,
        rules=(multiple_of("model.n_embd", "model.n_head"),),
    ),
    "evaluate": Command(
        "evaluate", "generate from policies on held-out prompts, score them, write output_dir/eval.json",
        "finegrained evaluate policies.NAME=DIR [policies.NAME2=DIR2 ...] [key=value ...]",
        (
            "finegrained evaluate policies.sft=outputs/demo/sft/final policies.ppo=outputs/demo/ppo/fine_grained-seed0/final",
            "finegrained evaluate policies.ppo=outputs/demo/ppo/holistic-seed0/final reward=holistic"
            " reward.categories.holistic.model=outputs/demo/rm/holistic generation.do_sample=true",
        ),
        EVALUATE,
    ),
    "demo": Command(
        "demo", "the built-in task end to end: fine-grained against holistic RLHF",
        "finegrained demo [quick] [key=value ...]",
        (
            "finegrained demo quick",
            "finegrained demo",
            "finegrained demo seeds=3",
            "finegrained demo seeds=3 shared_rm=true output_dir=outputs/demo-shared",
        ),
        DEMO,
        notes="quick is scale=quick (and output_dir=outputs/demo-quick unless given).",
        words={"quick": ("scale=quick", "output_dir=outputs/demo-quick")},
    ),
    "bench": Command(
        "bench", "PPO iterations on models built from config, timed phase by phase (bench.json)",
        "finegrained bench [key=value ...]",
        (
            "finegrained bench",
            "finegrained bench bench.mode=fine_grained bench.batch_size=32 output_dir=outputs/bench-fg",
            "finegrained bench bench.n_layer=2 bench.n_embd=128 bench.n_head=4 bench.profile=true",
            "finegrained bench bench.shared_value=true bench.lora_r=8",
            "finegrained bench bench.mode=fine_grained bench.shared_rm=true",
        ),
        BENCH,
        rules=(
            multiple_of("bench.n_embd", "bench.n_head"),
            at_most("bench.minibatches", "bench.batch_size"),
            Rule(("bench.shared_rm", "bench.mode"), lambda shared, mode: not shared or mode == "fine_grained",
                 "true needs bench.mode=fine_grained"),
        ),
    ),
    "grpo": critic_free_command("grpo", "critic-free GRPO that keeps every segment's reward, fine-grained or holistic"),
    "rloo": critic_free_command("rloo", "critic-free RLOO that keeps every segment's reward, fine-grained or holistic"),
}
