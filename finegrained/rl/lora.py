"""LoRA adapters for the policy, with the reference policy as the same model with its adapters off.

Full fine-tuning keeps two copies of the policy's weights (the policy and the frozen reference) and an
optimizer state of twice the policy's size. With ``lora.r > 0`` the policy's linear layers are frozen
and each gets a low-rank update ``W x + (alpha / r) * B A x`` (A: (r, in), B: (out, r), B starts at
zero so training starts from the initial policy); only A and B are trained, and the reference is the
policy itself inside ``adapters_disabled`` — no second copy of the weights.

Works on ``torch.nn.Linear`` and on GPT-2's ``Conv1D`` (weight stored as (in, out)). The output head (the
tied embedding) is never adapted. ``merge_adapters_`` folds the adapters into the weights and removes
them, leaving a plain Hugging Face model to ``save_pretrained``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import FinegrainedError


def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D``: y = x @ W + b with W (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def _in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    in_features, out_features = module.weight.shape  # Conv1D
    return in_features, out_features


class LoRALinear(nn.Module):
    """A frozen linear layer (``nn.Linear`` or ``Conv1D``) plus a trainable low-rank update.

    (..., in) -> (..., out): ``base(x) + scale * (dropout(x) @ A.T) @ B.T`` with A (r, in), B (out, r),
    ``scale = alpha / r``; with ``enabled = False`` it is exactly ``base(x)``.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        in_features, out_features = _in_out(base)
        self.base = base
        self.base.requires_grad_(False)
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.scale = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True

    def delta_weight(self) -> torch.Tensor:
        """The update in the base layer's own weight layout: (out, in) for Linear, (in, out) for Conv1D."""
        delta = (self.lora_B @ self.lora_A) * self.scale  # (out, in)
        return delta if isinstance(self.base, nn.Linear) else delta.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.enabled:
            return out
        update = (self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.T) @ self.lora_B.T
        return out + (update * self.scale).to(out.dtype)


def _output_head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def add_adapters(model: nn.Module, r: int, alpha: float, dropout: float = 0.0, targets: list[str] | None = None) -> list[str]:
    """Freeze ``model`` and wrap its linear layers in ``LoRALinear`` (in place); returns the wrapped names.

    ``targets``: module-name suffixes to adapt (e.g. ``["c_attn", "c_proj"]`` or ``["q_proj", "v_proj"]``);
    ``None`` adapts every Linear/Conv1D except the output head.
    """
    if r < 1:
        raise FinegrainedError(f"lora.r={r}: expected a positive rank (0 switches LoRA off)")
    if isinstance(targets, str):  # lora.targets=c_attn on the command line
        targets = [targets]
    head = _output_head(model)
    chosen = []
    for name, module in model.named_modules():
        if module is head or not (isinstance(module, nn.Linear) or _is_conv1d(module)):
            continue
        if targets is not None and not any(name == t or name.endswith("." + t) for t in targets):
            continue
        chosen.append(name)
    if not chosen:
        wanted = "any linear layer" if targets is None else f"lora.targets={list(targets)}"
        raise FinegrainedError(f"LoRA: {wanted} matched no module of {type(model).__name__}")
    model.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return chosen


def adapter_modules(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as it was before any adapter training: the reference policy."""
    modules = adapter_modules(model)
    for m in modules:
        m.enabled = False
    try:
        yield
    finally:
        for m in modules:
            m.enabled = True


@torch.no_grad()
def merge_adapters_(model: nn.Module) -> int:
    """Fold every adapter into its base weight and put the base layer back (in place); returns how many.
    Afterwards the model has its original structure and parameter names, ready for ``save_pretrained``."""
    merged = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoRALinear):
            continue
        module.base.weight += module.delta_weight().to(module.base.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.base)
        merged += 1
    return merged


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
