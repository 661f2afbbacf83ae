"""Reward placement: token char ends from generated ids, exact for byte-level BPE and SentencePiece-style
tokenizers, including non-canonical id sequences and multi-byte characters split across tokens."""

from __future__ import annotations

import functools
import itertools
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finegrained.models.tiny import train_tokenizer
from finegrained.rewards.placement import DecodedResponse, decode_with_offsets, place_rewards
from finegrained.rewards.types import CategoryRewards, RewardBreakdown

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


@functools.lru_cache(maxsize=1)
def sentencepiece_byte_fallback():
    """Llama-style: '▁' for spaces, and any character outside the vocabulary spelled as <0xNN> byte
    tokens (ordinary vocabulary entries, not special tokens), so one character can span several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "</s>", "<pad>"] + [f"<0x{b:02X}>" for b in range(256)])}
    for ch in "▁abcdefghijklmnopqrstuvwxyz,.é日":
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "a"), ("▁", "t"), ("h", "e"), ("▁t", "he")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def test_byte_fallback_tokenizer_spells_unknown_characters_in_bytes():
    tok = sentencepiece_byte_fallback()
    ids = tok("the ☃", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids)[-3:] == ["<0xE2>", "<0x98>", "<0x83>"]
    (decoded,) = decode_with_offsets(tok, [ids + [tok.eos_token_id]])
    assert decoded.text == "the ☃"
    assert decoded.token_ends[-4:] == [4, 4, 5, 5]  # the snowman belongs to its last byte; EOS adds nothing


def test_tokens_after_the_first_eos_add_no_text():
    tok = byte_level()
    ids = tok("Bora.", add_special_tokens=False).input_ids
    junk = tok(" town", add_special_tokens=False).input_ids
    (decoded,) = decode_with_offsets(tok, [ids + [tok.eos_token_id] + junk])
    assert decoded.text == "Bora."
    assert decoded.token_ends[len(ids):] == [5] * (1 + len(junk))


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


@pytest.mark.parametrize(
    "make", [byte_level, sentencepiece_style, sentencepiece_byte_fallback], ids=["byte_level", "sentencepiece", "byte_fallback"]
)
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


@pytest.mark.parametrize("make", [byte_level, sentencepiece_style, sentencepiece_byte_fallback])
def test_fast_route_needs_no_prefix_decoding(make, monkeypatch):
    """The exact fast route covers ordinary and non-canonical ids: prefix decoding (quadratic) is not used."""
    import finegrained.rewards.placement as placement

    def forbidden(*args):
        raise AssertionError("fell back to prefix decoding")

    tok = make()
    text = "the café 日本 😀👍🏽 e\u0301 ☃."
    canonical = tok(text, add_special_tokens=False).input_ids
    per_char = [i for ch in text for i in tok(ch, add_special_tokens=False).input_ids]
    rows = [canonical + [tok.eos_token_id], per_char + [tok.eos_token_id]]
    expected = [reference_ends(tok, ids, tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)) for ids in rows]
    monkeypatch.setattr(placement, "_ends_by_prefix", forbidden)
    decoded = decode_with_offsets(tok, rows)
    assert [d.token_ends for d in decoded] == expected


def test_added_non_byte_level_token_takes_the_exact_slow_route(monkeypatch):
    import copy

    tok = copy.deepcopy(byte_level())  # not the cached one: other tests must not see the added token
    tok.add_tokens(["<my note>"])  # an ordinary added token, its space not in the byte-level alphabet
    ids = tok("Bora<my note> is", add_special_tokens=False).input_ids
    assert "<my note>" in tok.convert_ids_to_tokens(ids)
    import finegrained.rewards.placement as placement

    slow_calls = []
    real_slow = placement._ends_by_prefix
    monkeypatch.setattr(placement, "_ends_by_prefix", lambda *args: slow_calls.append(1) or real_slow(*args))
    (decoded,) = decode_with_offsets(tok, [ids])
    assert slow_calls == [1]
    assert decoded.text == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert decoded.token_ends == reference_ends(tok, ids, decoded.text)


@pytest.mark.parametrize("make", [byte_level, sentencepiece_byte_fallback], ids=["byte_level", "byte_fallback"])
@settings(max_examples=40, deadline=None)
@given(text=TEXT, split_chars=st.booleans(), rewards=st.lists(st.integers(-3, 3), min_size=40, max_size=40), pad=st.integers(0, 3))
def test_each_word_reward_lands_on_the_token_completing_its_last_character(make, text, split_chars, rewards, pad):
    tok = make()
    if split_chars:
        ids = [i for ch in text for i in tok(ch, add_special_tokens=False).input_ids]
    else:
        ids = tok(text, add_special_tokens=False).input_ids
    ids = ids + [tok.eos_token_id]
    (decoded,) = decode_with_offsets(tok, [ids])
    segments = [(m.start(), m.end()) for m in re.finditer(r"\S+", decoded.text)]  # trimmed, like sentences
    values = [float(r) for r in rewards[: len(segments)]]
    mask = torch.zeros(1, len(ids) + pad, dtype=torch.bool)
    mask[0, : len(ids)] = True
    span = CategoryRewards("words", "sub_sentence", "span", [segments], [values])
    seq = CategoryRewards("whole", "sequence", "preference", [[(0, len(decoded.text))]], [[2.5]])
    placed = place_rewards(RewardBreakdown({"words": span, "whole": seq}), [decoded], mask)
    expected = torch.zeros_like(placed)
    ends = reference_ends(tok, ids, decoded.text)
    for (start, end), value in zip(segments, values):
        expected[0, next(k for k, e in enumerate(ends) if e >= end), 0] += value  # plain loop reference
    expected[0, len(ids) - 1, 1] = 2.5  # on EOS
    assert torch.equal(placed, expected)
    assert placed[..., 0].sum().item() == pytest.approx(sum(values))


@pytest.mark.parametrize(
    "make", [byte_level, sentencepiece_style, sentencepiece_byte_fallback], ids=["byte_level", "sentencepiece", "byte_fallback"]
)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_id_batches_match_prefix_decoding(make, data):
    """Arbitrary sampled ids, batched: lone continuation bytes (invalid UTF-8), half characters at the end,
    EOS in the middle, padding after it; rows of whole-character tokens share the batch route with them."""
    tok = make()
    vocab = len(tok)
    rows = data.draw(st.lists(st.lists(st.integers(0, vocab - 1), max_size=12), min_size=1, max_size=6))
    ids = [[i for i in row if i != tok.pad_token_id] for row in rows]
    ids.append(tok("the café 日本 😀", add_special_tokens=False).input_ids + [tok.eos_token_id, tok.pad_token_id])
    decoded = decode_with_offsets(tok, ids)
    for row, d in zip(ids, decoded):
        kept = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
        assert d.text == tok.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        expected = reference_ends(tok, kept, d.text)
        expected += [expected[-1] if expected else 0] * (len(row) - len(kept))
        assert d.token_ends == expected


def test_decode_accepts_a_padded_id_tensor():
    tok = byte_level()
    rows = [tok("Bora is", add_special_tokens=False).input_ids + [tok.eos_token_id], tok("日本", add_special_tokens=False).input_ids]
    T = max(map(len, rows)) + 1
    tensor = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])
    from_tensor = decode_with_offsets(tok, tensor)
    assert [d.text for d in from_tensor] == ["Bora is", "日本"]
    assert all(len(d.token_ends) == T for d in from_tensor)
    assert from_tensor[0].token_ends == decode_with_offsets(tok, [tensor[0].tolist()])[0].token_ends


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_place_rewards_on_a_padded_batch_matches_a_plain_loop(data):
    """Several rows of different lengths (one empty), segments of two span categories and a sequence one,
    some segments sharing a token or ending past the text: against a per-segment Python loop."""
    B = data.draw(st.integers(1, 5))
    lengths = data.draw(st.lists(st.integers(0, 8), min_size=B, max_size=B))
    T = max(lengths) + data.draw(st.integers(0, 2))
    if T == 0:
        T = 1
    decoded, spans_a, spans_b, seq = [], [], [], []
    for n in lengths:
        steps = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))  # chars each token completes
        ends = list(itertools.accumulate(steps))
        text_len = ends[-1] if ends else 0
        decoded.append(DecodedResponse("x" * text_len, ends))
        seg_ends = sorted(data.draw(st.lists(st.integers(1, text_len + 2), max_size=4))) if n else []
        spans_a.append([(0, e) for e in seg_ends])
        spans_b.append([(0, e) for e in seg_ends[::-1]])
        seq.append([(0, text_len)] if n else [])
    values = lambda spans, scale: [[scale * (j + 1) for j in range(len(s))] for s in spans]  # noqa: E731
    categories = {
        "a": CategoryRewards("a", "sub_sentence", "span", spans_a, values(spans_a, 1.0)),
        "whole": CategoryRewards("whole", "sequence", "preference", seq, [[0.5] * len(s) for s in seq]),
        "b": CategoryRewards("b", "sentence", "span", spans_b, values(spans_b, -0.25)),
    }
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths]).reshape(B, T)
    placed = place_rewards(RewardBreakdown(categories), decoded, mask)
    expected = torch.zeros(B, T, 3)
    for k, category in enumerate(categories.values()):
        for b, n in enumerate(lengths):
            if n == 0:
                continue
            for (_, end), value in zip(category.segments[b], category.rewards[b]):
                if category.granularity == "sequence":
                    position = n - 1
                else:
                    position = next((t for t in range(n) if decoded[b].token_ends[t] >= end), n - 1)
                expected[b, position, k] += value
    assert torch.allclose(placed, expected)
    assert placed.dtype == torch.float32 and placed.shape == (B, T, 3)
    assert placed[~mask].abs().sum() == 0


def test_invalid_utf8_replacement_characters_land_where_prefixes_show_them():
    """Sampled byte tokens need not form UTF-8. Each U+FFFD in the text belongs to the token holding the
    first byte it replaces (a decoded prefix already shows it there); a valid character to its last byte."""
    from finegrained.rewards.placement import _byte_decoder

    tok = byte_level()
    to_char = {b: c for c, b in _byte_decoder().items()}
    byte_ids = lambda data: [tok.convert_tokens_to_ids(to_char[b]) for b in data]  # noqa: E731
    cases = [
        (b"\xed\xbe", "\ufffd\ufffd", [1, 2]),  # a surrogate lead, then a lone continuation byte
        (b"\xe2\x98!", "\ufffd!", [1, 1, 2]),  # a cut-off 3-byte character: one U+FFFD, at its first byte
        (b"a\xe2\x98", "a\ufffd", [1, 2, 2]),  # unfinished at the very end
        (b"\xe2\x98\x83", "\u2603", [0, 0, 1]),  # valid: on its last byte
    ]
    decoded = decode_with_offsets(tok, [byte_ids(data) + [tok.eos_token_id] for data, _, _ in cases])
    for (data, text, ends), d in zip(cases, decoded):
        assert d.text == text
        assert d.token_ends == ends + ends[-1:]
        assert d.token_ends == reference_ends(tok, byte_ids(data) + [tok.eos_token_id], text)
