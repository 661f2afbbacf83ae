"""Critic-free advantages (finegrained.rl.advantages) against plain Python loops, the textbook GRPO and
RLOO estimators, and the hand-worked example of docs/ARCHITECTURE.md."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from finegrained.rl import advantages as A


def random_batch(seed: int, n_groups=3, G=4, T=9, K=3, sequence_categories=(2,)):
    """Placed rewards (B, T, K) and positions from random segments per sample and category, random
    lengths (early EOS), some categories without segments in a sample, and some constant groups."""
    rng = random.Random(seed)
    B = n_groups * G
    rewards, positions = torch.zeros(B, T, K), torch.zeros(B, T, K, dtype=torch.bool)
    lengths = [rng.randint(1, T) for _ in range(B)]
    for b in range(B):
        for k in range(K):
            if k in sequence_categories:
                ends = [lengths[b] - 1]
            else:
                ends = sorted(rng.sample(range(lengths[b]), rng.randint(0, min(3, lengths[b]))))
            for end in ends:
                value = 0.5 if b // G == 0 and k == 0 else rng.choice([-1.0, 0.0, 0.3, 1.0, rng.uniform(-2, 2)])
                rewards[b, end, k] += value
                positions[b, end, k] = True
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    return rewards, positions, mask


def loop_advantages(rewards, positions, mask, weights, G, estimator, order, scale_std, eps):
    """The module doc's recipe, one group, category and step reward at a time."""
    B, T, K = rewards.shape
    if order == "sum":
        rewards = rewards.sum(-1, keepdim=True)
        positions = positions.any(-1, keepdim=True)
        weights, K = [1.0], 1
    step = [[0.0] * T for _ in range(B)]
    for g in range(B // G):
        rows = range(g * G, (g + 1) * G)
        for k in range(K):
            values = {(b, t): float(rewards[b, t, k]) for b in rows for t in range(T) if positions[b, t, k]}
            if len(values) < 2 or len(set(values.values())) == 1:
                continue
            mean = sum(values.values()) / len(values)
            std = statistics.stdev(values.values())
            for (b, t), r in values.items():
                if estimator == "grpo":
                    baseline = mean
                else:
                    others = [v for (b2, _), v in values.items() if b2 != b]
                    if not others:
                        continue
                    baseline = sum(others) / len(others)
                a = r - baseline
                if scale_std:
                    a = a / (std + eps) * abs(weights[k])
                step[b][t] += a
    out = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                out[b][t] = sum(step[b][s] for s in range(t, T) if mask[b, s])
    return torch.tensor(out)


@pytest.mark.parametrize("estimator", A.ESTIMATORS)
@pytest.mark.parametrize("order", A.ORDERS)
@pytest.mark.parametrize("scale_std", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_advantages_match_a_plain_loop(estimator, order, scale_std, seed):
    rewards, positions, mask = random_batch(seed)
    weights = torch.tensor([0.3, 0.5, 1.0])
    got, _, _ = A.critic_free_advantages(rewards, positions, mask, weights, 4, estimator, order, scale_std, 1e-6)
    want = loop_advantages(rewards, positions, mask, [0.3, 0.5, 1.0], 4, estimator, order, scale_std, 1e-6)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got[~mask] == 0).all()


def holistic(scores: list[float], G: int):
    B = len(scores)
    T = 5
    lengths = [1 + (i * 3) % T for i in range(B)]  # early EOS: the reward sits on each response's last token
    rewards, positions = torch.zeros(B, T, 1), torch.zeros(B, T, 1, dtype=torch.bool)
    for b, (r, n) in enumerate(zip(scores, lengths)):
        rewards[b, n - 1, 0], positions[b, n - 1, 0] = r, True
    return rewards, positions, torch.arange(T)[None] < torch.tensor(lengths)[:, None]


def test_holistic_grpo_is_the_textbook_formula():
    scores = [0.2, 1.5, -0.7, 0.9, 3.0, 3.0, 3.0, 2.5]
    rewards, positions, mask = holistic(scores, 4)
    got, _, constant = A.critic_free_advantages(rewards, positions, mask, torch.ones(1), 4, "grpo", eps=1e-4)
    for g in range(2):
        group = scores[4 * g : 4 * g + 4]
        for j, r in enumerate(group):
            a = (r - statistics.fmean(group)) / (statistics.stdev(group) + 1e-4)
            row = 4 * g + j
            assert torch.allclose(got[row][mask[row]], torch.full((int(mask[row].sum()),), a), atol=1e-5)
    assert constant.tolist() == [False, False]


def test_holistic_rloo_is_the_textbook_formula():
    scores = [0.2, 1.5, -0.7, 0.9, 3.0, 1.0]
    rewards, positions, mask = holistic(scores, 3)
    got, _, _ = A.critic_free_advantages(rewards, positions, mask, torch.ones(1), 3, "rloo", scale_std=False)
    for i, r in enumerate(scores):
        group = range(3 * (i // 3), 3 * (i // 3) + 3)
        a = r - statistics.fmean(scores[j] for j in group if j != i)
        assert torch.allclose(got[i][mask[i]], torch.tensor(a), atol=1e-6)


def test_per_category_and_sum_orders_differ_when_scales_differ():
    # two sequence categories on one token: a large-scale one that barely varies and a small one that does
    G = 2
    rewards, positions = torch.zeros(2, 1, 2), torch.ones(2, 1, 2, dtype=torch.bool)
    rewards[:, 0, 0] = torch.tensor([10.0, 12.0])
    rewards[:, 0, 1] = torch.tensor([0.2, 0.1])
    mask = torch.ones(2, 1, dtype=torch.bool)
    weights = torch.ones(2)
    gdpo, _, _ = A.critic_free_advantages(rewards, positions, mask, weights, G, order="per_category", eps=0.0)
    summed, _, _ = A.critic_free_advantages(rewards, positions, mask, weights, G, order="sum", eps=0.0)
    s = math.sqrt(2) / 2  # each (r - mean) / std for two values
    assert torch.allclose(gdpo[:, 0], torch.tensor([-s + s, s - s]), atol=1e-6)  # the categories cancel
    assert torch.allclose(summed[:, 0], torch.tensor([-s, s]), atol=1e-6)  # the large category dominates


def test_constant_groups_give_zero_advantage_and_are_flagged():
    scores = [1.0, 1.0, 1.0, 0.1, 0.3, 0.1]  # first group all equal (0.1 + 0.2 rounding is no excuse)
    rewards, positions, mask = holistic(scores, 3)
    for estimator in A.ESTIMATORS:
        got, _, constant = A.critic_free_advantages(rewards, positions, mask, torch.ones(1), 3, estimator)
        assert (got[:3] == 0).all() and (got[3:].abs().sum() > 0)
        assert constant.tolist() == [True, False]


def test_a_group_with_a_single_reward_is_constant():
    rewards, positions = torch.zeros(2, 3, 1), torch.zeros(2, 3, 1, dtype=torch.bool)
    rewards[0, 1, 0], positions[0, 1, 0] = 2.0, True  # only one segment in the whole group
    mask = torch.ones(2, 3, dtype=torch.bool)
    got, _, constant = A.critic_free_advantages(rewards, positions, mask, torch.ones(1), 2, "rloo")
    assert (got == 0).all() and constant.tolist() == [True]


def test_reward_to_go_matches_a_loop():
    rng = random.Random(3)
    x = torch.tensor([[rng.uniform(-1, 1) for _ in range(6)] for _ in range(4)])
    mask = torch.arange(6)[None] < torch.tensor([6, 3, 1, 0])[:, None]
    got = A.reward_to_go(x, mask)
    for b in range(4):
        for t in range(6):
            want = sum(float(x[b, s]) for s in range(t, 6) if mask[b, s]) if mask[b, t] else 0.0
            assert math.isclose(float(got[b, t]), want, abs_tol=1e-6)


def test_bad_groups_and_names_are_refused():
    rewards, positions, mask = holistic([1.0, 2.0, 3.0], 3)
    with pytest.raises(ValueError, match="groups of 2"):
        A.critic_free_advantages(rewards, positions, mask, torch.ones(1), 2)
    with pytest.raises(ValueError, match="estimator"):
        A.critic_free_advantages(rewards, positions, mask, torch.ones(1), 3, "ppo")
    with pytest.raises(ValueError, match="order"):
        A.critic_free_advantages(rewards, positions, mask, torch.ones(1), 3, order="gdpo")
    with pytest.raises(ValueError, match="aggregation"):
        A.aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "mean", 4)


def test_loss_aggregations_match_loops():
    rng = random.Random(5)
    loss = torch.tensor([[rng.uniform(-1, 1) for _ in range(5)] for _ in range(3)])
    lengths = [5, 2, 1]
    mask = torch.arange(5)[None] < torch.tensor(lengths)[:, None]
    real = [[float(loss[b, t]) for t in range(n)] for b, n in enumerate(lengths)]
    flat = [v for row in real for v in row]
    assert math.isclose(float(A.aggregate_loss(loss, mask, "token_mean", 8)), sum(flat) / len(flat), rel_tol=1e-6)
    assert math.isclose(float(A.aggregate_loss(loss, mask, "sequence_mean", 8)),
                        statistics.fmean(sum(r) / len(r) for r in real), rel_tol=1e-6)  # fmt: skip
    assert math.isclose(float(A.aggregate_loss(loss, mask, "token_sum", 8)), sum(flat) / (3 * 8), rel_tol=1e-6)


def test_clipped_surrogate_matches_a_loop():
    rng = random.Random(7)
    new = torch.tensor([[rng.uniform(-2, 0) for _ in range(4)] for _ in range(3)])
    old = new + torch.tensor([[rng.uniform(-0.5, 0.5) for _ in range(4)] for _ in range(3)])
    adv = torch.tensor([[rng.uniform(-1, 1) for _ in range(4)] for _ in range(3)])
    loss, clipped = A.clipped_surrogate(new, old, adv, 0.2)
    for b in range(3):
        for t in range(4):
            ratio = math.exp(float(new[b, t] - old[b, t]))
            a = float(adv[b, t])
            u, c = -a * ratio, -a * min(max(ratio, 0.8), 1.2)
            assert math.isclose(float(loss[b, t]), max(u, c), rel_tol=1e-5, abs_tol=1e-7)
            assert float(clipped[b, t]) == float(c > u)


def test_the_worked_example_of_the_architecture_notes():
    """docs/ARCHITECTURE.md, finegrained.rl.advantages: two samples' segment rewards -> token advantages."""
    rewards, positions = torch.zeros(2, 5, 2), torch.zeros(2, 5, 2, dtype=torch.bool)
    for b, t, k, r in [(0, 1, 0, 0.0), (0, 4, 0, -0.5), (0, 4, 1, 0.24), (1, 2, 0, 0.0), (1, 2, 1, -0.15)]:
        rewards[b, t, k], positions[b, t, k] = r, True
    mask = torch.arange(5)[None] < torch.tensor([5, 3])[:, None]
    weights = torch.tensor([0.5, 0.3])
    documented = {
        ("grpo", "per_category", True): [[-0.0765, -0.0765, -0.3652, -0.3652, -0.3652], [0.0765] * 3 + [0, 0]],
        ("grpo", "sum", True): [[0.1022, 0.1022, -0.945, -0.945, -0.945], [-0.1022] * 3 + [0, 0]],
        ("rloo", "per_category", False): [[-0.11] * 5, [-0.14] * 3 + [0, 0]],
    }
    for (estimator, order, scale_std), want in documented.items():
        got, _, _ = A.critic_free_advantages(rewards, positions, mask, weights, 2, estimator, order, scale_std, eps=0.0)
        torch.testing.assert_close(got, torch.tensor(want), atol=6e-5, rtol=0)
    # and the table's intermediate numbers, by hand
    fact = [0.0, -0.5, 0.0]
    assert math.isclose(statistics.fmean(fact), -1 / 6) and math.isclose(statistics.stdev(fact), 0.288675, rel_tol=1e-5)
    assert math.isclose(statistics.stdev([0.24, -0.15]), 0.275772, rel_tol=1e-5)
