"""Policy, reference and value models for PPO.

- The policy is any HF causal LM (``policy.name_or_path``: a directory or hub id) or a tiny GPT-2 built
  from config with a tokenizer trained on the task's prompts. A tiny policy is saved once to
  ``output_dir/initial_policy/`` so that a resumed run rebuilds the same reference and tokenizer; the
  random-generator states right after building it are saved beside it (``RNG_STATE_FILE``) and restored
  after loading it, because building draws random numbers that loading does not: without them a run
  resumed before its first checkpoint would initialise its value head (and LoRA adapters) differently
  from the uninterrupted run.
- The reference policy is a frozen copy of the initial policy (eval mode, no gradients); with LoRA
  (``lora.r > 0``, ``finegrained.rl.lora``: a ``peft.PeftModel``) it is instead the policy itself inside
  ``policy.disable_adapter()``.
- The value model is either separate (``value.shared=false``: the policy's trunk copied, or a reward-model
  backbone directory, plus a scalar head) or a scalar head on the policy's own trunk (``value.shared=true``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from ..errors import FinegrainedError
from .generation import prepare_tokenizer
from .checkpoint import rng_state, set_rng_state

RNG_STATE_FILE = "finegrained_rng_state.pt"


class ValueHead(nn.Module):
    """Hidden states (B, L, H) -> values (B, L)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.bias)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


class ValueModel(nn.Module):
    """A transformer trunk with a scalar head: (input_ids, attention_mask, position_ids) -> values (B, L)."""

    def __init__(self, trunk: nn.Module, hidden_size: int):
        super().__init__()
        self.trunk = trunk
        self.head = ValueHead(hidden_size)

    def forward(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return self.head(hidden)


def hidden_size_of(model) -> int:
    config = model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise FinegrainedError(f"cannot tell the hidden size of {type(model).__name__}")


def build_policy(cfg: DictConfig, output_dir: Path, prompts: list[str], save_initial: bool = True):
    """(policy, tokenizer): from ``policy.name_or_path``, or a tiny GPT-2 (saved to initial_policy/ when
    ``save_initial``; every process builds the same one from the seed, only the main one writes it)."""
    from ..model_dirs import load_causal_lm, save_pretrained_dir

    source = cfg.policy.name_or_path
    initial = output_dir / "initial_policy"
    reloaded_initial = not source and initial.is_dir()
    if reloaded_initial:
        source = str(initial)
    if source:
        role = "the policy (policy.name_or_path)" if cfg.policy.name_or_path else "the policy of this run (initial_policy/)"
        policy, tokenizer = load_causal_lm(source, role)
        if reloaded_initial and (initial / RNG_STATE_FILE).is_file():
            # continue from the random state the run that built this policy had: the same draws follow
            set_rng_state(torch.load(initial / RNG_STATE_FILE, weights_only=True))
    else:
        from ..io import atomic_directory
        from ..models.tiny import tiny_causal_lm, train_tokenizer

        tokenizer = train_tokenizer(prompts, vocab_size=cfg.policy.vocab_size)
        policy = tiny_causal_lm(
            tokenizer, n_layer=cfg.policy.n_layer, n_embd=cfg.policy.n_embd, n_head=cfg.policy.n_head,
            n_positions=cfg.policy.n_positions, seed=cfg.seed,
        )  # fmt: skip
        if save_initial:
            with atomic_directory(initial, overwrite=True) as tmp:
                save_pretrained_dir(tmp, policy, tokenizer)
                torch.save(rng_state(), tmp / RNG_STATE_FILE)
    # PPO compares log-probs of the same tokens before and after an update: dropout would add noise to
    # that ratio, so it is switched off (as in most RLHF codebases).
    for module in policy.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    if tokenizer.eos_token_id is None:
        raise FinegrainedError(f"the policy tokenizer ({source or 'tiny'}) has no EOS token")
    prepare_tokenizer(tokenizer)
    if policy.generation_config is not None:
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
    return policy, tokenizer


def frozen_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def build_value_model(cfg: DictConfig, policy, tokenizer=None) -> nn.Module:
    """A separate value model: the policy's trunk (copied) or a backbone directory, plus a value head;
    with ``value.shared`` just the head, applied to the policy's last hidden states.

    A backbone directory must be causal (a bidirectional encoder would let a value see later tokens) and
    share the policy's vocabulary (``tokenizer``, the policy's), checked by ``model_dirs.load_value_trunk``."""
    if cfg.value.shared:
        return ValueHead(hidden_size_of(policy))
    if cfg.value.init_from in (None, "policy"):
        trunk = copy.deepcopy(policy.base_model)
        return ValueModel(trunk, hidden_size_of(policy))
    from ..model_dirs import load_value_trunk

    if tokenizer is None:
        raise TypeError("build_value_model: value.init_from=<dir> needs the policy's tokenizer")
    trunk = load_value_trunk(cfg.value.init_from, tokenizer, f"the value model (value.init_from={cfg.value.init_from})")
    return ValueModel(trunk, hidden_size_of(trunk))
