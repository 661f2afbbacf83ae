"""DPO / IPO / DDPO losses against plain Python loops, and dense DPO's token weights on hand-made diffs."""

from __future__ import annotations

import math
import random

import pytest
import torch

from finegrained.models.tiny import train_tokenizer
from finegrained.rl.dense_weights import changed_characters, dense_token_weights, dense_weights_of_ids, token_flags
from finegrained.rl.dpo_functional import preference_loss, reward_statistics, sequence_logprob, weighted_sequence_logprob


def random_batch(B=5, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(B, T, generator=g) * 3
    lengths = [random.Random(seed + b).randint(0, T) for b in range(B)]
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    weights = torch.where(torch.rand(B, T, generator=g) < 0.3, 5.0, 1.0)
    return logprobs, mask, weights


def test_sequence_logprobs_match_loops():
    logprobs, mask, weights = random_batch()
    sums, dense = sequence_logprob(logprobs, mask), weighted_sequence_logprob(logprobs, mask, weights)
    for b in range(logprobs.shape[0]):
        total = weighted = count = 0.0
        for t in range(logprobs.shape[1]):
            if mask[b, t]:
                total += float(logprobs[b, t])
                weighted += float(weights[b, t]) * float(logprobs[b, t])
                count += float(weights[b, t])
        assert float(sums[b]) == pytest.approx(total, abs=1e-5)
        assert float(dense[b]) == pytest.approx(weighted / count if count else 0.0, abs=1e-5)


def test_dense_logprob_with_gamma_one_is_the_mean_and_gamma_weighs_changed_tokens():
    logprobs = torch.tensor([[-1.0, -2.0, -4.0]])
    mask = torch.tensor([[True, True, True]])
    assert float(weighted_sequence_logprob(logprobs, mask, torch.ones(1, 3))) == pytest.approx(-7 / 3)
    # RLHF-V: (sum unchanged + gamma * sum changed) / (N_unchanged + gamma * N_changed); token 3 changed, gamma 5
    assert float(weighted_sequence_logprob(logprobs, mask, torch.tensor([[1.0, 1.0, 5.0]]))) == pytest.approx((-3 - 20) / 7)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "ddpo"])
def test_losses_and_rewards_match_loops(loss_type):
    g = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = (-torch.rand(6, generator=g) * 10 for _ in range(4))
    beta = 0.3
    out = preference_loss(pc, pr, rc, rr, beta, loss_type)
    for b in range(6):
        h = (float(pc[b]) - float(rc[b])) - (float(pr[b]) - float(rr[b]))
        expected = (h - 1 / (2 * beta)) ** 2 if loss_type == "ipo" else math.log1p(math.exp(-beta * h))
        assert float(out.losses[b]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert float(out.chosen_rewards[b]) == pytest.approx(beta * (float(pc[b]) - float(rc[b])), abs=1e-5)
        assert float(out.rejected_rewards[b]) == pytest.approx(beta * (float(pr[b]) - float(rr[b])), abs=1e-5)


def test_dpo_loss_hand_worked_and_gradient_pushes_chosen_up():
    pc = torch.tensor([-2.0], requires_grad=True)
    pr = torch.tensor([-3.0], requires_grad=True)
    out = preference_loss(pc, pr, torch.tensor([-2.0]), torch.tensor([-3.0]), beta=0.1)
    assert float(out.losses[0].detach()) == pytest.approx(math.log(2))  # policy == reference: h = 0
    out.losses.sum().backward()
    assert float(pc.grad[0]) < 0 < float(pr.grad[0])  # descending raises chosen, lowers rejected


def test_reward_statistics():
    stats = reward_statistics(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0]))
    assert stats == {"rewards/chosen": 1.0, "rewards/rejected": pytest.approx(2 / 3),
                     "rewards/margins": pytest.approx(1 / 3), "rewards/accuracies": pytest.approx(2 / 3)}  # fmt: skip


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError, match="sigmoid, ipo, ddpo"):
        preference_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.1, "hinge")


# -- token weights ---------------------------------------------------------------------------------
def chars(flags):
    return "".join("^" if f else "." for f in flags)


def test_changed_characters_replacement_deletion_insertion():
    a, b = changed_characters("It has 3 bridges.", "It has 5 bridges.")
    assert chars(a) == "." * 7 + "^" + "." * 9 + "." and chars(b) == chars(a)
    # deletion: the deleted chars on the original side, the char after the deletion point on the other
    a, b = changed_characters("Bora is a town, it is big.", "Bora is a town.")
    assert "".join(c for c, f in zip("Bora is a town, it is big.", a) if f) == ", it is big"
    assert [i for i, f in enumerate(b) if f] == [14]  # the final "." of the correction
    # insertion at the very end: the original's end position (its EOS) is marked, nothing else
    a, b = changed_characters("Bora is a town.", "Bora is a town. It has 3 bridges.")
    assert [i for i, f in enumerate(a) if f] == [15] and a[-1]
    assert not any(b[:15]) and all(b[15:33]) and not b[-1]


def test_token_flags_zero_width_tokens_and_eos():
    changed = [False, False, True, False, False]  # text of 4 chars + end position
    # tokens: [0,2) [2,2) (zero width: starts char 2) [2,3) [3,4); then EOS
    assert token_flags(changed, [2, 2, 3, 4], with_eos=True) == [False, True, True, False, False]
    assert token_flags([False, False, True], [1, 2], with_eos=True) == [False, False, True]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["Bora is a town, and it has 3 bridges. Kelt lies near the river Tal."] * 20
    corpus += ["東京は首都です。 emoji 🙂 and 🌍 here", "Wie lang ist die Brücke?"] * 10
    return train_tokenizer(corpus, vocab_size=400)


def weights_of(tokenizer, original, corrected, gamma=5.0):
    a = tokenizer(original, add_special_tokens=False).input_ids
    b = tokenizer(corrected, add_special_tokens=False).input_ids
    wa, wb = dense_weights_of_ids(tokenizer, a, b, gamma)
    assert len(wa) == len(a) + 1 and len(wb) == len(b) + 1  # one per token and the EOS
    pieces_a = [tokenizer.decode([i]) for i in a] + ["<eos>"]
    pieces_b = [tokenizer.decode([i]) for i in b] + ["<eos>"]
    return ([p for p, w in zip(pieces_a, wa) if w == gamma], [p for p, w in zip(pieces_b, wb) if w == gamma],
            set(wa) | set(wb))  # fmt: skip


CASES = {
    "replacement": ("Bora has 3 bridges.", "Bora has 5 bridges."),
    "deletion": ("Bora is a town, and it has 3 bridges.", "Bora is a town."),
    "insertion": ("Bora is a town.", "Bora is a big town."),
    "change_at_the_end": ("Bora is a town.", "Bora is a town!"),
    "appended_at_the_end": ("Bora is a town.", "Bora is a town. Kelt lies near the river Tal."),
    "emoji": ("emoji 🙂 here", "emoji 🌍 here"),
    "cjk": ("東京は首都です。", "東京は都です。"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dense_weights_on_hand_made_diffs(tokenizer, name):
    original, corrected = CASES[name]
    marked_a, marked_b, values = weights_of(tokenizer, original, corrected)
    assert values <= {1.0, 5.0}
    joined_a, joined_b = "".join(marked_a), "".join(marked_b)
    if name == "replacement":
        assert "3" in joined_a and "5" in joined_b and "Bora" not in joined_a + joined_b
    elif name == "deletion":
        assert "and" in joined_a and "bridges" in joined_a and "Bora" not in joined_a
        assert marked_b == ["."]  # the correction's token after the deletion point
    elif name == "insertion":
        assert "big" in joined_b and "Bora" not in joined_b
        assert "town" in joined_a and "Bora" not in joined_a  # the original's token right after the insertion point
    elif name == "change_at_the_end":
        assert marked_a == ["."] and marked_b == ["!"]
    elif name == "appended_at_the_end":
        assert marked_a == ["<eos>"] and "Kelt" in joined_b and "<eos>" not in marked_b
    elif name == "emoji":
        # every byte-piece of the emoji is marked, the words around it are not
        assert "emoji" not in joined_a and "here" not in joined_a and marked_a and marked_b
        assert "🙂" in tokenizer.decode(tokenizer("emoji 🙂 here", add_special_tokens=False).input_ids)
    elif name == "cjk":
        assert marked_a and "<eos>" not in marked_a + marked_b


def test_dense_weights_match_a_character_level_loop_on_random_edits(tokenizer):
    rng = random.Random(0)
    alphabet = "ab 東🙂."
    for _ in range(100):
        original = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        corrected = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        if original == corrected:
            continue
        a = tokenizer(original, add_special_tokens=False).input_ids
        wa, _ = dense_weights_of_ids(tokenizer, a, tokenizer(corrected, add_special_tokens=False).input_ids, 2.0)
        changed, _ = changed_characters(original, corrected)
        # plain loop: a token is changed when a character it (partly) spells is, by prefix decoding
        previous = 0
        for k in range(len(a)):
            end = len(tokenizer.decode(a[: k + 1]).rstrip("\ufffd"))
            span = range(previous, end) if end > previous else [min(end, len(original))]
            assert (wa[k] == 2.0) == any(changed[i] for i in span), (original, corrected, k)
            previous = max(previous, end)
        assert (wa[-1] == 2.0) == changed[-1]


def test_dense_token_weights_of_texts_and_offsets():
    wa, wb = dense_token_weights("ab", "ac", [1, 2], [1, 2], gamma=3.0)
    assert wa == [1.0, 3.0, 1.0] and wb == [1.0, 3.0, 1.0]
