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


# -- the sampling distribution: temperature, top-k, top-p, EOS held back ----------------------------------


def random_logits(seed: int, shape=(3, 4, 11)) -> torch.Tensor:
    """Random logits with exact ties (rounded to a coarse grid), the case where top-k rules matter."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 4).round() / 2


SETTINGS = [(1.0, 0, 1.0), (0.7, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8), (0.7, 4, 0.6), (0.5, 1, 0.9), (2.0, 20, 0.3)]


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_process_logits_matches_transformers_warpers(temperature, top_k, top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    for seed in range(4):
        logits = random_logits(seed)
        rows = logits.reshape(-1, logits.shape[-1])  # HF warpers take (batch, vocab)
        dummy_ids = torch.zeros((rows.shape[0], 1), dtype=torch.long)
        expected = TemperatureLogitsWarper(temperature)(dummy_ids, rows)
        if top_k:
            expected = TopKLogitsWarper(top_k)(dummy_ids, expected)
        if top_p < 1.0:
            expected = TopPLogitsWarper(top_p)(dummy_ids, expected)
        ours = F.process_logits(logits, temperature, top_k, top_p).reshape(rows.shape)
        assert torch.equal(torch.isneginf(ours), torch.isneginf(expected)), (seed, temperature, top_k, top_p)
        kept = ~torch.isneginf(expected)
        assert torch.allclose(ours[kept], expected[kept])


def plain_kept_tokens(row: list[float], temperature: float, top_k: int, top_p: float) -> set[int]:
    """Which tokens a sampler may draw, spelled out: the k largest (ties kept), then the smallest set of
    most likely tokens reaching probability top_p (tokens whose cumulative mass from the least likely
    upwards stays within 1 - top_p are dropped; the most likely always stays)."""
    scaled = [v / temperature for v in row]
    kept = set(range(len(row)))
    if top_k:
        threshold = sorted(scaled, reverse=True)[min(top_k, len(row)) - 1]
        kept = {i for i in kept if scaled[i] >= threshold}
    if top_p < 1.0:
        z = sum(math.exp(scaled[i]) for i in kept)
        ascending = sorted(kept, key=lambda i: scaled[i])  # stable order for ties, as torch.sort on CPU
        cumulative, dropped = 0.0, set()
        for position, i in enumerate(ascending):
            cumulative += math.exp(scaled[i]) / z
            if cumulative <= 1 - top_p and position < len(ascending) - 1:
                dropped.add(i)
        kept -= dropped
    return kept


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_sampling_logprobs_and_entropy_match_a_plain_loop(temperature, top_k, top_p):
    eos, min_new = 2, 2
    for seed in range(3):
        logits = (torch.randn(3, 4, 11, generator=torch.Generator().manual_seed(seed)) * 2).requires_grad_(True)
        ids = torch.randint(0, 11, (3, 4), generator=torch.Generator().manual_seed(100 + seed))
        ids[:, :min_new] = torch.where(ids[:, :min_new] == eos, eos + 1, ids[:, :min_new])  # never EOS while held back
        lp, ent = F.sampling_logprobs_and_entropy(logits, ids, temperature, top_k, top_p, eos_token_id=eos, min_new_tokens=min_new)
        for b in range(3):
            for t in range(4):
                row = logits[b, t].tolist()
                if t < min_new:
                    row[eos] = float("-inf")
                finite = [i for i, v in enumerate(row) if v != float("-inf")]
                kept = plain_kept_tokens([row[i] for i in finite], temperature, top_k, top_p)
                support = {finite[j] for j in kept} | {int(ids[b, t])}  # the sampled token always stays in
                log_z = math.log(sum(math.exp(row[i] / temperature) for i in support))
                expected_lp = row[int(ids[b, t])] / temperature - log_z
                probs = [math.exp(row[i] / temperature - log_z) for i in support]
                assert math.isclose(lp[b, t].item(), expected_lp, rel_tol=1e-5, abs_tol=1e-6), (b, t)
                assert math.isclose(ent[b, t].item(), -sum(q * math.log(q) for q in probs), rel_tol=1e-4, abs_tol=1e-6)
        (lp.sum() + ent.sum()).backward()  # masked entries must not turn the gradient into NaN
        assert torch.isfinite(logits.grad).all()


def test_untruncated_sampling_logprobs_are_the_tempered_log_softmax():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(3))
    ids = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(4))
    lp, ent = F.sampling_logprobs_and_entropy(logits, ids, temperature=0.7)
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, ids[..., None]).squeeze(-1)
    assert torch.allclose(lp, expected, atol=1e-6)
    assert not torch.allclose(lp, F.logprobs_from_logits(logits, ids), atol=1e-3)  # temperature does change them
    assert torch.allclose(ent, F.entropy_from_logits(logits / 0.7), atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        F.process_logits(logits, temperature=0.0)


# -- statistics over several processes --------------------------------------------------------------------


def thread_ranks(n: int):
    """``n`` fake processes: each rank's ``sum_across`` waits for every rank's tensor and returns their sum
    (in rank order, so every rank gets bit-identical results), as an all-reduce would."""
    import threading

    barrier, slots = threading.Barrier(n), [None] * n

    def sum_across_for(rank: int):
        def sum_across(t: torch.Tensor) -> torch.Tensor:
            slots[rank] = t.clone()
            barrier.wait()
            total = sum(slots[1:], slots[0].clone())
            barrier.wait()  # nobody overwrites a slot before every rank has read them all
            return total

        return sum_across

    def run(fn, shards):
        results = [None] * n

        def work(rank):
            results[rank] = fn(*shards[rank], sum_across_for(rank))

        threads = [threading.Thread(target=work, args=(r,)) for r in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    return run


def test_whitening_over_two_processes_equals_one_process_with_the_whole_batch():
    g, lengths, mask = random_batch(7, B=6, T=7)
    x = torch.randn(mask.shape, generator=g) + 2.0
    # rank 0 holds rows 0-2 padded to 7 tokens, rank 1 rows 3-5 cut to their own longest response
    width_1 = max(lengths[3:])
    shards = [(x[:3], mask[:3]), (x[3:, :width_1], mask[3:, :width_1])]
    real = [x[b, t].item() for b, n in enumerate(lengths) for t in range(n)]
    mean = sum(real) / len(real)
    var = sum((v - mean) ** 2 for v in real) / (len(real) - 1)
    run = thread_ranks(2)
    for rank_mean, rank_var in run(lambda xs, ms, s: F.global_masked_moments(xs, ms, s), shards):
        assert math.isclose(rank_mean.item(), mean, rel_tol=1e-5) and math.isclose(rank_var.item(), var, rel_tol=1e-5)
    local_mean = F.global_masked_moments(*shards[0])[0].item()
    assert not math.isclose(local_mean, mean, rel_tol=1e-3)  # one shard alone would whiten differently
    for shift in (True, False):
        whole = F.masked_whiten(x, mask, shift_mean=shift)
        white_0, white_1 = run(lambda xs, ms, s: F.masked_whiten(xs, ms, shift_mean=shift, sum_across=s), shards)
        assert torch.allclose(white_0, whole[:3], atol=1e-5) and torch.allclose(white_1, whole[3:, :width_1], atol=1e-5)
    kl_sums = [torch.tensor([0.5, 1.5, 4.0]), torch.tensor([2.0])]
    for rank_kl in run(lambda v, s: F.global_mean(v, s), [(kl_sums[0],), (kl_sums[1],)]):
        assert math.isclose(rank_kl.item(), 8.0 / 4)


# -- gradient accumulation ----------------------------------------------------------------------------------


def test_accumulation_groups_match_the_step_rule_of_a_plain_loop():
    for n in range(1, 11):
        for k in range(1, 6):
            expected, current = [], []
            for step in range(n):  # an optimizer step after every k-th minibatch and after the last one
                current.append(step)
                if (step + 1) % k == 0 or step + 1 == n:
                    expected.append(current)
                    current = []
            assert [list(g) for g in F.accumulation_groups(n, k)] == expected, (n, k)


def test_accumulated_gradient_is_the_mean_over_the_minibatches_of_its_group():
    """5 minibatches, grad_accum 2: groups [0, 1], [2, 3], [4]; every step's gradient must be the mean of
    its group's minibatch-loss gradients, the short last group included."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, generator=g).requires_grad_(True)
    minibatches = [torch.randn(4, 3, generator=g) for _ in range(5)]

    def loss_of(x):
        return ((x @ weight) ** 2).mean()

    for group in F.accumulation_groups(len(minibatches), 2):
        weight.grad = None
        for i in group:
            (loss_of(minibatches[i]) / len(group)).backward()  # as PPOTrainer.update does
        accumulated = weight.grad.clone()
        expected = torch.zeros(3)
        for i in group:  # plain loop: each minibatch's own gradient, then their mean
            expected += torch.autograd.grad(loss_of(minibatches[i]), weight)[0] / len(group)
        assert torch.allclose(accumulated, expected, atol=1e-6), list(group)
        if len(group) < 2:  # dividing by grad_accum instead would halve the last step
            assert not torch.allclose(accumulated, expected / 2)
