"""LoRA adapters through peft: the math against plain loops, the reference as adapters-off, the targets,
merging into final/, and exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from finegrained.config import compose
from finegrained.errors import FinegrainedError
from finegrained.models.tiny import tiny_causal_lm, train_tokenizer
from finegrained.rl import trainer as ppo
from finegrained.rl.checkpoint import CheckpointError, rng_state, set_rng_state
from finegrained.rl.lora import add_adapters


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["a b c d e f g"] * 20, vocab_size=300)


def tiny_llama() -> torch.nn.Module:
    """nn.Linear layers (q_proj, ..., down_proj), where GPT-2 has Conv1D."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(config)


def loop_lora(x: torch.Tensor, base_out: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """base(x) + scale * B A x, one output element at a time. x (N, in), A (r, in), B (out, r)."""
    out = base_out.clone()
    for n in range(x.shape[0]):
        for o in range(B.shape[0]):
            total = 0.0
            for k in range(A.shape[0]):
                total += float(B[o, k]) * sum(float(A[k, i]) * float(x[n, i]) for i in range(x.shape[1]))
            out[n, o] += scale * total
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_adapter_math_disable_and_merge(tokenizer, family):
    model = tiny_causal_lm(tokenizer, n_layer=1, n_embd=8, n_head=2, seed=0) if family == "gpt2" else tiny_llama()
    policy = add_adapters(model.eval(), r=2, alpha=6.0)  # eval: no dropout
    name, layer = next((n, m) for n, m in policy.named_modules() if isinstance(m, LoraLayer))
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # (r, in), (out, r)
    with torch.no_grad():
        B.normal_()  # peft starts B at zero; give the update something to do
    x = torch.randn(3, A.shape[1])
    with torch.no_grad():
        base_out = layer.base_layer(x)
        torch.testing.assert_close(layer(x), loop_lora(x, base_out, A, B, 6.0 / 2), atol=1e-5, rtol=1e-5)
        with policy.disable_adapter():
            torch.testing.assert_close(layer(x), base_out, rtol=0, atol=0)
        ids = torch.tensor([[3, 7, 11, 5]])
        adapted_logits = policy(input_ids=ids).logits
    # only the adapters train
    assert all(("lora_A" in n or "lora_B" in n) == p.requires_grad for n, p in policy.named_parameters())
    # merging folds the update into the weights: a plain model with the same function
    merged = policy.merge_and_unload()
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted_logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(merged.get_submodule(name.removeprefix("base_model.model."))(x), base_out)


def test_targets_select_by_suffix_and_refuse_what_they_cannot_adapt(tokenizer):
    def adapted(model) -> list[str]:
        return [n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, LoraLayer)]

    policy = add_adapters(tiny_causal_lm(tokenizer, n_layer=2, n_embd=32, seed=0), r=2, alpha=4, targets="c_attn")  # lora.targets=c_attn
    assert adapted(policy) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert all(not p.requires_grad for n, p in policy.named_parameters() if "lora_" not in n)
    # null: every linear layer but the tied output head
    policy = add_adapters(tiny_causal_lm(tokenizer, n_layer=1, n_embd=32, seed=0), r=2, alpha=4)
    assert adapted(policy) == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
                               "transformer.h.0.mlp.c_proj"]  # fmt: skip
    assert not policy.get_output_embeddings().weight.requires_grad
    assert sorted(adapted(add_adapters(tiny_llama(), r=2, alpha=4, targets=["q_proj", "v_proj"]))) == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]  # fmt: skip
    with pytest.raises(FinegrainedError, match="matched no linear layer"):
        add_adapters(tiny_causal_lm(tokenizer, n_layer=1, n_embd=32, seed=0), r=2, alpha=4, targets=["q_proj"])
    with pytest.raises(FinegrainedError, match="matched no linear layer"):
        add_adapters(tiny_causal_lm(tokenizer, n_layer=1, n_embd=32, seed=0), r=2, alpha=4, targets=["lm_head"])
    with pytest.raises(FinegrainedError, match=r"names transformer.h.0.attn \(GPT2Attention\), not a linear layer"):
        add_adapters(tiny_causal_lm(tokenizer, n_layer=1, n_embd=32, seed=0), r=2, alpha=4, targets=["attn"])
    with pytest.raises(FinegrainedError, match="positive rank"):
        add_adapters(tiny_causal_lm(tokenizer, n_layer=1, n_embd=32, seed=0), r=0, alpha=4)


def lora_overrides(tmp_path, *extra: str) -> list[str]:
    return ["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false", "checkpoint.every=0", "ppo.batch_size=4",
            "ppo.minibatch_size=4", "lora.r=2", "lora.alpha=8", "ppo.lr=1e-2", *extra]  # fmt: skip


def test_ppo_trains_only_the_chosen_adapters(tmp_path):
    trainer = ppo.build_trainer(compose("ppo", lora_overrides(tmp_path, "ppo.iterations=1", "lora.targets=[c_attn]")))
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    n_layer = policy.config.n_layer
    assert [n for n, m in policy.named_modules() if isinstance(m, LoraLayer)] == [
        f"base_model.model.transformer.h.{i}.attn.c_attn" for i in range(n_layer)]  # fmt: skip
    trainable = {id(p) for p in policy.parameters() if p.requires_grad}
    optimized = {id(p) for p in trainer.optimizer.param_groups[0]["params"]}
    assert optimized == trainable and len(trainable) == 2 * n_layer  # A and B of each c_attn layer


def test_ppo_with_lora_keeps_the_base_weights_and_saves_a_merged_model(tmp_path):
    cfg = compose("ppo", lora_overrides(tmp_path, "ppo.iterations=2", "ppo.batch_size=8", "value.shared=true"))
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
    assert any(float(p.detach().abs().max()) > 0 for n, p in policy.named_parameters() if "lora_B" in n)
    ids = torch.tensor([[5, 9, 13, 21, 8]])
    with torch.no_grad():
        adapted = policy(input_ids=ids).logits
    trainer.save_checkpoint()
    trainer.save_final()
    # final/ is a plain HF model with the adapters merged in: no peft files, the adapted policy's outputs
    assert not list((tmp_path / "final").glob("adapter_*"))
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    assert not any("lora" in n or "base_layer" in n for n in final.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(final(ids).logits, adapted, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(final(ids).logits, initial(ids).logits)
    # the checkpoint keeps the adapters apart from the frozen weights, for an exact resume
    checkpoint = load_file(tmp_path / "checkpoints" / "iter-2" / "policy.safetensors")
    assert any("lora_A" in k for k in checkpoint) and any("base_layer" in k for k in checkpoint)


def test_reference_is_exactly_the_initial_policy_with_adapters_off(tmp_path):
    trainer = ppo.build_trainer(compose("ppo", lora_overrides(tmp_path, "ppo.iterations=1")))
    trainer.run_iteration()
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    initial = AutoModelForCausalLM.from_pretrained(tmp_path / "initial_policy").eval()
    ids = torch.tensor([[5, 9, 13, 21, 8, 3]])
    with torch.no_grad():
        adapted = policy(input_ids=ids).logits
        with policy.disable_adapter():
            reference = policy(input_ids=ids).logits
        torch.testing.assert_close(reference, initial(ids).logits, rtol=0, atol=0)
        assert not torch.allclose(adapted, reference)  # the update changed the adapted policy
        torch.testing.assert_close(policy(input_ids=ids).logits, adapted, rtol=0, atol=0)  # adapters back on


def test_lora_checkpoint_resumes_exactly(tmp_path):
    overrides = lora_overrides(tmp_path, "ppo.iterations=2")
    first = ppo.build_trainer(compose("ppo", overrides))
    first.run_iteration()
    first.save_checkpoint()
    resumed = ppo.build_trainer(compose("ppo", [*overrides, "resume=true"]))
    assert resumed.iteration == 1
    # the next iteration from the same random state gives the same weights, bit for bit
    state = rng_state()
    first_stats = first.run_iteration()
    set_rng_state(state)
    resumed_stats = resumed.run_iteration()
    assert resumed_stats["loss/policy"] == first_stats["loss/policy"]
    before = dict(first.accelerator.unwrap_model(first.policy).named_parameters())
    after = dict(resumed.accelerator.unwrap_model(resumed.policy).named_parameters())
    assert before.keys() == after.keys() and any("lora_B" in k for k in after)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    # a checkpoint with adapters does not resume a run without them, and says why
    with pytest.raises(CheckpointError, match="LoRA adapters"):
        ppo.build_trainer(compose("ppo", [*overrides, "resume=true", "lora.r=0"]))
