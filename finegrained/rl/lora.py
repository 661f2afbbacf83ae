"""LoRA adapters through peft, with the reference policy as the same model with its adapters off.

Full fine-tuning keeps two copies of the policy's weights (the policy and the frozen reference) and an
optimizer state of twice the policy's size. With ``lora.r > 0`` the policy becomes a ``peft.PeftModel``:
its weights are frozen and each chosen linear layer gets a low-rank update ``W x + (alpha / r) B A x``
(B starts at zero, so training starts from the initial policy); only A and B train, and the reference is
the policy itself inside ``policy.disable_adapter()``, no second copy of the weights. ``final/`` is
``policy.merge_and_unload()`` saved as a plain Hugging Face model; checkpoints hold the wrapped model's
state (peft's names, ``...base_layer.weight`` and ``...lora_A.default.weight``) for an exact resume.

``lora.targets`` keeps its meaning: module-name suffixes (``[c_attn]``, ``[q_proj, v_proj]``), null for
every linear layer but the output head, which is never adapted. GPT-2's ``Conv1D`` stores its weight as
(in, out): peft needs ``fan_in_fan_out=True`` for it.
"""

from __future__ import annotations

import warnings

from torch import nn

from ..errors import FinegrainedError


def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D``: y = x @ W + b with W (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def _matches(name: str, targets: list[str]) -> bool:
    """peft's rule for a list of ``target_modules``: the whole name or a dotted suffix of it."""
    return any(name == t or name.endswith("." + t) for t in targets)


def adapter_targets(model: nn.Module, targets: list[str] | str | None) -> list[str]:
    """Full names of the modules ``targets`` (suffixes; None: every linear layer) selects, the output head
    left out; a target that names something other than a linear layer, or nothing, is refused."""
    if isinstance(targets, str):  # lora.targets=c_attn on the command line
        targets = [targets]
    targets = None if targets is None else [str(t) for t in targets]
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    chosen = []
    for name, module in model.named_modules():
        if module is head or not name or (targets is not None and not _matches(name, targets)):
            continue
        if isinstance(module, nn.Linear) or _is_conv1d(module):
            chosen.append(name)
        elif targets is not None:
            raise FinegrainedError(f"LoRA: lora.targets={targets} names {name} ({type(module).__name__}), not a linear layer")
    if not chosen:
        wanted = "any linear layer" if targets is None else f"lora.targets={targets}"
        raise FinegrainedError(f"LoRA: {wanted} matched no linear layer of {type(model).__name__} (the output head is never adapted)")
    return chosen


def add_adapters(model: nn.Module, r: int, alpha: float, dropout: float = 0.0, targets: list[str] | str | None = None):
    """``model`` frozen and wrapped as a ``peft.PeftModel`` with rank-``r`` LoRA adapters on the layers
    ``adapter_targets`` selects (``model`` itself is changed in place: its layers become peft's)."""
    if r < 1:
        raise FinegrainedError(f"lora.r={r}: expected a positive rank (0 switches LoRA off)")
    from peft import LoraConfig, get_peft_model

    chosen = adapter_targets(model, targets)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=chosen,  # full names: peft matches them exactly, so the output head stays out
        fan_in_fan_out=any(_is_conv1d(model.get_submodule(n)) for n in chosen),
    )  # fmt: skip
    with warnings.catch_warnings():
        # peft reads the deprecated ``is_gradient_checkpointing`` of transformers 5: not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
