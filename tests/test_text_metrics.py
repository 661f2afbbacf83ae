from __future__ import annotations

import itertools
import random

from finegrained.text_metrics import lcs_length, rouge_l, words


def brute_force_lcs(a, b):
    """Longest common subsequence by trying every subsequence of the shorter list."""
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    for k in range(len(short), 0, -1):
        for idx in itertools.combinations(range(len(short)), k):
            sub = [short[i] for i in idx]
            it = iter(long_)
            if all(any(x == y for y in it) for x in sub):
                return k
    return 0


def test_lcs_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        assert lcs_length(a, b) == brute_force_lcs(a, b)


def test_rouge_l_hand_worked():
    # candidate 4 words, reference 5 words, LCS "the cat on mat" = 4: P = 1, R = 0.8, F = 2*0.8/1.8
    assert abs(rouge_l("The cat on mat", "the cat sat on mat.") - 2 * 0.8 / 1.8) < 1e-12
    assert rouge_l("same words here", "Same, words; here!") == 1.0
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("x y", "z") == 0.0
    assert words("Ünïcode wörds, 3 cats") == ["ünïcode", "wörds", "3", "cats"]
