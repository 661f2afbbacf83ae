"""PPO's rollouts: every log-prob the learner uses belongs to the distribution that sampled the tokens
(temperature, top-k), the reference's to the same temperature untruncated; and a pretrained model's own
generation_config never changes what is sampled."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

from finegrained.config import compose
from finegrained.rl.generation import generate, load_policy
from finegrained.models.tiny import tiny_causal_lm, train_tokenizer
from finegrained.rl import trainer as ppo
from finegrained.rl.rollout import joint_inputs, sample_responses


def smoke_trainer(tmp_path, *overrides: str) -> ppo.PPOTrainer:
    cfg = compose("ppo", ["experiment=smoke", f"output_dir={tmp_path}", "log.progress=false", "checkpoint.every=0",
                          "ppo.batch_size=8", "ppo.minibatch_size=8", "ppo.epochs=1", *overrides])  # fmt: skip
    return ppo.build_trainer(cfg)


@torch.no_grad()
def raw_logits(model, traj) -> torch.Tensor:
    """Logits (B, T, V) predicting each response token, from a plain full forward pass."""
    ids, mask, position_ids = joint_inputs(traj.query_ids, traj.query_mask, traj.response_ids, traj.response_mask)
    P = traj.query_ids.shape[1]
    return model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids).logits[:, P - 1 : -1].float()


def token_logprobs(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(scores, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def rollout_after_one_update(trainer):
    """A rollout of a policy that one PPO update has moved away from the reference (so the two differ)."""
    stats = trainer.run_iteration()
    traj = trainer.rollout(trainer.next_prompts(), ppo.PhaseTimer())[0]
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    return stats, traj, raw_logits(policy, traj), raw_logits(trainer.reference, traj)


def test_stored_logprobs_are_the_tempered_log_softmax_for_policy_and_reference(tmp_path):
    trainer = smoke_trainer(tmp_path, "generation.temperature=0.7")
    stats, traj, policy_logits, ref_logits = rollout_after_one_update(trainer)
    mask, ids = traj.response_mask, traj.response_ids
    expected_policy = token_logprobs(policy_logits / 0.7, ids)
    expected_ref = token_logprobs(ref_logits / 0.7, ids)
    torch.testing.assert_close(traj.logprobs[mask], expected_policy[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(traj.ref_logprobs[mask], expected_ref[mask], atol=1e-5, rtol=0)
    # the check can fail: raw logits give other numbers, and the policy has moved from the reference
    assert (traj.logprobs[mask] - token_logprobs(policy_logits, ids)[mask]).abs().max() > 1e-3
    assert (traj.ref_logprobs[mask] - traj.logprobs[mask]).abs().max() > 1e-4
    # the PPO epoch takes its log-probs the same way: before the first step the ratio is exactly 1
    assert stats["approx_kl"] < 1e-10 and stats["clip_fraction"] == 0


def test_under_top_k_the_policy_is_truncated_and_the_reference_is_not(tmp_path):
    trainer = smoke_trainer(tmp_path, "generation.temperature=0.7", "generation.top_k=5")
    stats, traj, policy_logits, ref_logits = rollout_after_one_update(trainer)
    mask, ids = traj.response_mask, traj.response_ids
    rows = policy_logits.reshape(-1, policy_logits.shape[-1])  # (B*T, V), as transformers' warpers take them
    dummy = torch.zeros((rows.shape[0], 1), dtype=torch.long)
    warped = TopKLogitsWarper(5)(dummy, TemperatureLogitsWarper(0.7)(dummy, rows)).reshape(policy_logits.shape)
    sampled_score = warped.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.isfinite(sampled_score[mask]).all()  # every sampled token lies in the policy's top 5
    torch.testing.assert_close(traj.logprobs[mask], token_logprobs(warped, ids)[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(traj.ref_logprobs[mask], token_logprobs(ref_logits / 0.7, ids)[mask], atol=1e-5, rtol=0)
    assert (traj.logprobs[mask] - token_logprobs(policy_logits / 0.7, ids)[mask]).abs().max() > 1e-3
    kl = traj.logprobs - traj.ref_logprobs
    assert torch.isfinite(kl[mask]).all()
    assert stats["approx_kl"] < 1e-10 and torch.isfinite(torch.tensor(stats["entropy"]))


# -- a pretrained model's generation_config ------------------------------------------------------------


@pytest.fixture(scope="module")
def penalised_and_neutral(tmp_path_factory):
    """The same tiny weights twice: once with a generation_config that bans repeats, once without."""
    tok = train_tokenizer(["facts: Bora is a town. question: what is Bora? answer: Bora is a town."] * 30, vocab_size=300)
    dirs = {}
    for name, extra in (("penalised", {"repetition_penalty": 5.0, "no_repeat_ngram_size": 1}), ("neutral", {})):
        model = tiny_causal_lm(tok, n_layer=1, n_embd=32, seed=0)
        for key, value in extra.items():
            setattr(model.generation_config, key, value)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        dirs[name] = path
    return dirs


PROMPTS = ["facts: Bora is a town.", "question: what is Bora?", "answer:"]


def test_generate_ignores_the_models_own_generation_config(penalised_and_neutral):
    penalised, tok = load_policy(str(penalised_and_neutral["penalised"]))
    neutral, _ = load_policy(str(penalised_and_neutral["neutral"]))
    assert penalised.generation_config.repetition_penalty == 5.0
    for do_sample in (True, False):
        a = generate(penalised, tok, PROMPTS, do_sample=do_sample, max_new_tokens=24, seed=3)
        b = generate(neutral, tok, PROMPTS, do_sample=do_sample, max_new_tokens=24, seed=3)
        assert [g.response_ids for g in a] == [g.response_ids for g in b], do_sample
    assert penalised.generation_config.repetition_penalty == 5.0  # restored after the call
    # the fixture does bite: transformers' own generate() follows the saved config
    ids = tok(PROMPTS[:1], return_tensors="pt").input_ids
    outputs = []
    for model in (penalised, neutral):
        torch.manual_seed(3)
        outputs.append(model.generate(input_ids=ids, do_sample=True, top_k=0, max_new_tokens=24, pad_token_id=tok.pad_token_id).tolist())
    assert outputs[0] != outputs[1]


def test_ppo_rollouts_ignore_the_models_own_generation_config(penalised_and_neutral, tmp_path):
    responses = []
    for name in ("penalised", "neutral"):
        cfg = compose("ppo", ["experiment=smoke", "policy=pretrained", f"policy.name_or_path={penalised_and_neutral[name]}",
                              f"output_dir={tmp_path / name}", "log.progress=false", "generation.temperature=0.7"])  # fmt: skip
        trainer = ppo.build_trainer(cfg)
        policy = trainer.accelerator.unwrap_model(trainer.policy)
        torch.manual_seed(5)
        responses.append(sample_responses(policy, trainer.tokenizer, PROMPTS, max_new_tokens=24, temperature=0.7)[2])
    assert torch.equal(responses[0], responses[1])
