"""LoRA adapters: the math against plain loops, the reference as adapters-off, merging, and a PPO run."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from finegrained.config import compose
from finegrained.errors import FinegrainedError
from finegrained.rl import trainer as ppo
from finegrained.rl.lora import LoRALinear, adapter_modules, adapters_disabled, add_adapters, merge_adapters_


def loop_reference(layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """base(x) + scale * B A x, one output element at a time."""
    base = layer.base(x)
    A, B = layer.lora_A, layer.lora_B
    out = base.clone()
    for n in range(x.shape[0]):
        for o in range(B.shape[0]):
            total = 0.0
            for k in range(A.shape[0]):
                total += float(B[o, k]) * sum(float(A[k, i]) * float(x[n, i]) for i in range(x.shape[1]))
            out[n, o] += layer.scale * total
    return out


@pytest.mark.parametrize("make_base", [lambda: nn.Linear(5, 3), lambda: Conv1D(3, 5)], ids=["linear", "conv1d"])
def test_adapter_math_disable_and_merge(make_base):
    torch.manual_seed(0)
    base = make_base()
    x = torch.randn(4, 5)
    expected_base = base(x).detach()
    layer = LoRALinear(base, r=2, alpha=4.0)
    # B starts at zero: the adapted layer starts as the base layer
    torch.testing.assert_close(layer(x), expected_base)
    with torch.no_grad():
        layer.lora_B.normal_()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), loop_reference(layer, x), atol=1e-5, rtol=1e-5)
        adapted = layer(x)
        layer.enabled = False
        torch.testing.assert_close(layer(x), expected_base)
        layer.enabled = True
    # only the adapter trains
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    # merging folds the update into the base weight: the same function without the adapter
    holder = nn.Sequential(layer)
    assert merge_adapters_(holder) == 1
    assert not isinstance(holder[0], LoRALinear)
    torch.testing.assert_close(holder[0](x), adapted, atol=1e-5, rtol=1e-5)


def test_add_adapters_targets_and_errors():
    from finegrained.models.tiny import tiny_causal_lm, train_tokenizer

    tok = train_tokenizer(["a b c d e f g"] * 20, vocab_size=300)
    model = tiny_causal_lm(tok, n_layer=2, n_embd=32, seed=0)
    names = add_adapters(model, r=2, alpha=4, targets="c_attn")  # one name, as lora.targets=c_attn gives it
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    with pytest.raises(FinegrainedError, match="matched no module"):
        add_adapters(tiny_causal_lm(tok, n_layer=1, n_embd=32, seed=0), r=2, alpha=4, targets=["q_proj"])
    with pytest.raises(FinegrainedError, match="positive rank"):
        add_adapters(model, r=0, alpha=4)
    # every linear layer but the tied output head
    model = tiny_causal_lm(tok, n_layer=1, n_embd=32, seed=0)
    assert len(add_adapters(model, r=2, alpha=4)) == 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    assert model.lm_head.weight.requires_grad is False


def test_ppo_with_lora_keeps_the_base_weights_and_saves_a_merged_model(tmp_path):
    cfg = compose("ppo", ["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false", "checkpoint.every=0",
                          "ppo.iterations=2", "ppo.batch_size=8", "ppo.minibatch_size=4", "lora.r=4", "lora.alpha=8",
                          "ppo.lr=1e-2", "value.shared=true"])  # fmt: skip
    trainer = ppo.build_trainer(cfg)
    assert trainer.reference is None  # no second copy of the weights
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    base_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    initial = AutoModelForCausalLM.from_pretrained(tmp_path / "initial_policy").eval()
    stats = [trainer.run_iteration() for _ in range(2)]
    assert all(math.isfinite(s["loss/policy"]) for s in stats)
    # the frozen weights did not move; the adapters did
    for name, param in policy.named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(param, base_before[name], rtol=0, atol=0)
    assert any(float(m.lora_B.detach().abs().max()) > 0 for m in adapter_modules(policy))
    trainer.save_checkpoint()
    trainer.save_final()
    # final/ is a plain HF model with the adapters merged in: it loads without finegrained and differs
    # from the initial policy, while the checkpoint keeps the adapters for an exact resume
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    ids = torch.tensor([[5, 9, 13, 21, 8]])
    with torch.no_grad():
        assert not torch.allclose(final(ids).logits, initial(ids).logits)
    checkpoint = load_file(tmp_path / "checkpoints" / "iter-2" / "policy.safetensors")
    assert any("lora_A" in k for k in checkpoint)


def test_reference_is_the_initial_policy_with_adapters_off(tmp_path):
    cfg = compose("ppo", ["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false", "checkpoint.every=0",
                          "ppo.iterations=1", "ppo.batch_size=4", "ppo.minibatch_size=4", "lora.r=2",
                          "ppo.lr=1e-2"])  # fmt: skip
    trainer = ppo.build_trainer(cfg)
    trainer.run_iteration()
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    initial = AutoModelForCausalLM.from_pretrained(tmp_path / "initial_policy").eval()
    ids = torch.tensor([[5, 9, 13, 21, 8, 3]])
    with torch.no_grad():
        adapted = policy(ids).logits
        with adapters_disabled(policy):
            reference = policy(ids).logits
    torch.testing.assert_close(reference, initial(ids).logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(adapted, reference)  # the update changed the adapted policy


def test_lora_checkpoint_resumes_with_the_adapters(tmp_path):
    overrides = ["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false", "checkpoint.every=0",
                 "ppo.iterations=2", "ppo.batch_size=4", "ppo.minibatch_size=4", "lora.r=2", "ppo.lr=1e-2"]  # fmt: skip
    first = ppo.build_trainer(compose("ppo", overrides))
    first.run_iteration()
    first.save_checkpoint()
    resumed = ppo.build_trainer(compose("ppo", [*overrides, "resume=true"]))
    assert resumed.iteration == 1
    before = dict(first.accelerator.unwrap_model(first.policy).named_parameters())
    after = dict(resumed.accelerator.unwrap_model(resumed.policy).named_parameters())
    assert before.keys() == after.keys() and any("lora_B" in k for k in after)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
