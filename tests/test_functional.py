"""The RL math against plain Python loops on random inputs with right padding and early EOS."""

from __future__ import annotations

import math
import random

import pytest
import torch

from finegrained.rl import functional as F


def random_batch(seed: int, B: int = 5, T: int = 7):
    g = torch.Generator().manual_seed(seed)
    lengths = [T, 1, *[random.Random(seed + i).randint(1, T) for i in range(B - 2)]]  # full, 1-token, random
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    return g, lengths, mask


def test_gae_matches_reference_loop():
    for seed in range(5):
        g, lengths, mask = random_batch(seed)
        rewards = torch.randn(mask.shape, generator=g)
        values = torch.randn(mask.shape, generator=g)
        gamma, lam = 0.97, 0.9
        adv, ret = F.gae(rewards, values, mask, gamma, lam)
        for b, n in enumerate(lengths):
            expected = [0.0] * mask.shape[1]
            running = 0.0
            for t in reversed(range(n)):
                next_value = values[b, t + 1].item() if t + 1 < n else 0.0
                delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
                running = delta + gamma * lam * running
                expected[t] = running
            assert torch.allclose(adv[b], torch.tensor(expected), atol=1e-5)
            assert torch.allclose(ret[b, :n], adv[b, :n] + values[b, :n], atol=1e-5)
            assert (ret[b, n:] == 0).all()


def test_gae_gamma_one_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5, 9.0]])
    mask = torch.tensor([[True, True, True, False]])
    adv, _ = F.gae(rewards, values, mask, 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[3 - 0.5, 2 - 0.5, 2 - 0.5, 0.0]]))


def test_masked_statistics_match_loops():
    g, lengths, mask = random_batch(1)
    x = torch.randn(mask.shape, generator=g)
    real = [x[b, t].item() for b, n in enumerate(lengths) for t in range(n)]
    mean = sum(real) / len(real)
    var = sum((v - mean) ** 2 for v in real) / (len(real) - 1)
    assert math.isclose(F.masked_mean(x, mask).item(), mean, rel_tol=1e-5)
    assert math.isclose(F.masked_var(x, mask).item(), var, rel_tol=1e-5)
    rows = F.masked_mean(x, mask, dim=1)
    for b, n in enumerate(lengths):
        assert math.isclose(rows[b].item(), sum(x[b, :n].tolist()) / n, rel_tol=1e-5)
    white = F.masked_whiten(x, mask)
    assert abs(F.masked_mean(white, mask).item()) < 1e-5
    assert math.isclose(F.masked_var(white, mask).item(), 1.0, rel_tol=1e-4)
    scaled = F.masked_whiten(x, mask, shift_mean=False)
    for b, n in enumerate(lengths):
        for t in range(mask.shape[1]):
            expected = x[b, t].item() / math.sqrt(var + 1e-8) if t < n else 0.0
            assert math.isclose(scaled[b, t].item(), expected, rel_tol=1e-4, abs_tol=1e-6)


def test_logprobs_entropy_and_kl_estimators():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    ids = torch.randint(0, 5, (2, 3), generator=g)
    lp = F.logprobs_from_logits(logits, ids)
    ent = F.entropy_from_logits(logits)
    for b in range(2):
        for t in range(3):
            z = [math.exp(v) for v in logits[b, t].tolist()]
            p = [v / sum(z) for v in z]
            assert math.isclose(lp[b, t].item(), math.log(p[ids[b, t]]), rel_tol=1e-5)
            assert math.isclose(ent[b, t].item(), -sum(q * math.log(q) for q in p), rel_tol=1e-5)
    both_lp, both_ent = F.logprobs_and_entropy(logits, ids)
    assert torch.allclose(both_lp, lp) and torch.allclose(both_ent, ent)
    ref = lp + torch.randn(lp.shape, generator=g)
    k1, k3 = F.kl_penalty(lp, ref, "k1"), F.kl_penalty(lp, ref, "k3")
    for b in range(2):
        for t in range(3):
            r = math.exp(ref[b, t].item() - lp[b, t].item())
            assert math.isclose(k1[b, t].item(), lp[b, t].item() - ref[b, t].item(), rel_tol=1e-5)
            assert math.isclose(k3[b, t].item(), (r - 1) - math.log(r), rel_tol=1e-4, abs_tol=1e-6)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError):
        F.kl_penalty(lp, ref, "k2")


def test_combine_and_kl_rewards():
    g, lengths, mask = random_batch(2)
    cat = torch.randn(*mask.shape, 3, generator=g)
    w = torch.tensor([0.3, 0.5, 0.3])
    combined = F.combine_rewards(cat, w)
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            assert math.isclose(combined[b, t].item(), sum(w[k].item() * cat[b, t, k].item() for k in range(3)), rel_tol=1e-5, abs_tol=1e-6)
    assert torch.allclose(F.combine_rewards(cat), cat.sum(-1))
    kl = torch.randn(mask.shape, generator=g)
    total = F.token_rewards_with_kl(combined, kl, 0.1, mask)
    assert torch.allclose(total, (combined - 0.1 * kl) * mask)


def test_policy_and_value_losses_match_loops():
    for seed in range(3):
        g, lengths, mask = random_batch(seed + 10)
        old = torch.randn(mask.shape, generator=g)
        new = old + 0.3 * torch.randn(mask.shape, generator=g)
        adv = torch.randn(mask.shape, generator=g)
        loss, clip_frac, approx_kl = F.policy_loss(new, old, adv, mask, 0.2)
        terms, clipped, kls = [], [], []
        for b, n in enumerate(lengths):
            for t in range(n):
                r = math.exp(new[b, t].item() - old[b, t].item())
                a = adv[b, t].item()
                u, c = -a * r, -a * min(max(r, 0.8), 1.2)
                terms.append(max(u, c))
                clipped.append(c > u)
                kls.append(0.5 * math.log(r) ** 2)
        assert math.isclose(loss.item(), sum(terms) / len(terms), rel_tol=1e-5)
        assert math.isclose(clip_frac.item(), sum(clipped) / len(clipped), rel_tol=1e-5)
        assert math.isclose(approx_kl.item(), sum(kls) / len(kls), rel_tol=1e-4)
        values = old + 0.5 * torch.randn(mask.shape, generator=g)
        returns = torch.randn(mask.shape, generator=g)
        vloss, vfrac = F.value_loss(values, old, returns, mask, 0.2)
        errs, fr = [], []
        for b, n in enumerate(lengths):
            for t in range(n):
                v, o, R = values[b, t].item(), old[b, t].item(), returns[b, t].item()
                vc = o + min(max(v - o, -0.2), 0.2)
                errs.append(max((v - R) ** 2, (vc - R) ** 2))
                fr.append((vc - R) ** 2 > (v - R) ** 2)
        assert math.isclose(vloss.item(), 0.5 * sum(errs) / len(errs), rel_tol=1e-5)
        assert math.isclose(vfrac.item(), sum(fr) / len(fr), rel_tol=1e-5)


def test_explained_variance():
    mask = torch.tensor([[True, True, True, False]])
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    assert math.isclose(F.explained_variance(returns, returns, mask).item(), 1.0)
    assert abs(F.explained_variance(torch.full_like(returns, 2.0), returns, mask).item()) < 1e-6


def test_kl_controllers():
    fixed = F.FixedKLController(0.1)
    fixed.update(5.0, 10)
    assert fixed.value == 0.1
    adaptive = F.AdaptiveKLController(0.1, target=1.0, horizon=100)
    adaptive.update(10.0, 10)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 10 / 100)
    assert math.isclose(adaptive.value, 0.1 * 1.02)
    adaptive.update(0.5, 10)  # error -0.5 clipped to -0.2
    assert math.isclose(adaptive.value, 0.1 * 1.02 * 0.98)
    state = adaptive.state_dict()
    other = F.AdaptiveKLController(0.5, target=1.0, horizon=100)
    other.load_state_dict(state)
    assert other.value == adaptive.value


def test_policy_loss_gradient_at_ratio_one_is_minus_advantage_over_token_count():
    """Hand-worked: with new == old every ratio is 1 (inside the clip range), so d loss / d logp = -A / N."""
    mask = torch.tensor([[True, True, False], [True, False, False]])
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -9.0, -9.0]])
    new = old.clone().requires_grad_(True)
    adv = torch.tensor([[1.0, -2.0, 7.0], [4.0, 7.0, 7.0]])
    loss, clip_fraction, approx_kl = F.policy_loss(new, old, adv, mask, 0.2)
    loss.backward()
    assert math.isclose(loss.item(), -(1.0 - 2.0 + 4.0) / 3, rel_tol=1e-6)
    assert torch.allclose(new.grad, -adv * mask / 3)
    assert clip_fraction.item() == 0 and approx_kl.item() == 0


def test_empty_mask_gives_zero_not_nan():
    x = torch.randn(2, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    assert F.masked_mean(x, mask).item() == 0
    assert torch.equal(F.masked_mean(x, mask, dim=1), torch.zeros(2))
    adv, ret = F.gae(x, x, mask, 0.99, 0.95)
    assert torch.equal(adv, torch.zeros(2, 3)) and torch.equal(ret, torch.zeros(2, 3))
