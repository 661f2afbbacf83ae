"""Reward placement: token char ends from generated ids, exact for byte-level BPE and SentencePiece-style
tokenizers, including non-canonical id sequences and multi-byte characters split across tokens."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finegrained.models.tiny import train_tokenizer
from finegrained.rewards.placement import decode_with_offsets, place_rewards
from finegrained.rl.types import CategoryRewards, RewardBreakdown

CORPUS = ["Bora is a town, and it has 3 bridges.", "Ünïcode wörds: café, naïve, 日本語のテキスト 😀👍🏽 e\u0301"] * 30


@functools.lru_cache(maxsize=1)
def byte_level():
    return train_tokenizer(CORPUS, vocab_size=400)


@functools.lru_cache(maxsize=1)
def sentencepiece_style():
    """A SentencePiece-style BPE (Metaspace pre-tokenizer, '▁' for spaces), built locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set("".join(CORPUS)) | set("abcdefghijklmnopqrstuvwxyz ,.:;!?"))
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>", "<pad>"], initial_alphabet=alphabet, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def reference_ends(tokenizer, ids, text):
    """Brute force: for each prefix, how many leading characters of the final text it already shows."""
    ends, best = [], 0
    for k in range(len(ids)):
        prefix = tokenizer.decode(ids[: k + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        common = 0
        while common < min(len(prefix), len(text)) and prefix[common] == text[common]:
            common += 1
        best = max(best, common)
        ends.append(best)
    return ends


TEXT = st.text(
    alphabet=st.sampled_from(list("abc ,.Ünï日本😀👍🏽\u0301\u00e9 \n")) | st.characters(blacklist_categories=("Cs",)),
    max_size=30,
)


@pytest.mark.parametrize("make", [byte_level, sentencepiece_style], ids=["byte_level", "sentencepiece"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, split_chars=st.booleans())
def test_token_ends_match_prefix_decoding(make, text, split_chars):
    tok = make()
    if split_chars:  # non-canonical: each character encoded alone, as sampling can produce
        ids = [i for ch in text for i in tok(ch, add_special_tokens=False).input_ids]
    else:
        ids = tok(text, add_special_tokens=False).input_ids
    ids = ids + [tok.eos_token_id]
    (decoded,) = decode_with_offsets(tok, [ids])
    assert decoded.text == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert decoded.token_ends == reference_ends(tok, ids, decoded.text)
    assert decoded.token_ends[-1] == decoded.token_ends[-2] if len(ids) > 1 else True  # EOS adds nothing


def test_multibyte_character_split_across_tokens_belongs_to_the_completing_token():
    tok = byte_level()
    emoji_bytes = "😀".encode()  # 4 bytes
    # one token per byte: the byte-level alphabet has every single byte as a token
    from finegrained.rewards.placement import _byte_decoder

    to_char = {b: c for c, b in _byte_decoder().items()}
    ids = [tok.convert_tokens_to_ids(to_char[b]) for b in b"a" + emoji_bytes + b"b"]
    (decoded,) = decode_with_offsets(tok, [ids])
    assert decoded.text == "a😀b"
    assert decoded.token_ends == [1, 1, 1, 1, 2, 3]


def breakdown(segments, rewards, granularity="sentence", name="cat"):
    return CategoryRewards(name=name, granularity=granularity, kind="span", segments=segments, rewards=rewards)


def test_place_rewards_on_the_token_ending_each_segment():
    tok = byte_level()
    texts = ["Bora is a town. It has 3 bridges.", "Hi."]
    ids = [tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id] for t in texts]
    decoded = decode_with_offsets(tok, ids)
    T = max(len(i) for i in ids) + 2
    mask = torch.zeros(2, T, dtype=torch.bool)
    for b, i in enumerate(ids):
        mask[b, : len(i)] = True
    span = breakdown([[(0, 15), (16, 33)], [(0, 3)]], [[1.0, -1.0], [0.5]])
    seq = CategoryRewards("whole", "sequence", "preference", [[(0, 33)], [(0, 3)]], [[2.0], [3.0]])
    placed = place_rewards(RewardBreakdown({"cat": span, "whole": seq}), decoded, mask)
    assert placed.shape == (2, T, 2)
    for b, d in enumerate(decoded):
        for (start, end), r in zip(span.segments[b], span.rewards[b]):
            expected_pos = next(k for k, e in enumerate(d.token_ends) if e >= end)  # plain loop reference
            assert placed[b, expected_pos, 0] == r
        assert placed[b, len(ids[b]) - 1, 1] == seq.rewards[b][0]  # on EOS
    assert placed[..., 0].sum() == pytest.approx(0.5)
    assert placed[:, :, :][~mask].abs().sum() == 0


def test_sequence_reward_goes_to_last_token_without_eos_and_nowhere_for_empty():
    mask = torch.tensor([[True, True, False], [False, False, False]])
    decoded = [type("D", (), {"token_ends": [1, 2], "text": "ab"})(), type("D", (), {"token_ends": [], "text": ""})()]
    seq = CategoryRewards("whole", "sequence", "preference", [[(0, 2)], []], [[1.5], []])
    placed = place_rewards(RewardBreakdown({"whole": seq}), decoded, mask)
    assert placed[0, 1, 0] == 1.5 and placed.sum() == 1.5
