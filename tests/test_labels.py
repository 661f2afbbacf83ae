"""Label projection: hand-worked cases, properties, and a brute-force reference on random inputs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finegrained.errors import FinegrainedError
from finegrained.labels import WordIndex, project_all_categories, project_labels, project_labels_batch
from finegrained.schema import Category, SegmentationConfig
from finegrained.segment import Segmenter

RELEVANCE = Category("relevance", "sub_sentence", "span", ("Irrelevant", "Redundant", "Incoherent"))
FACTUALITY = Category("factuality", "sentence", "span", ("Wrong-Grounding", "Unverifiable"))
COMPLETENESS = Category("completeness", "sequence", "preference")
ALL_LABELS = [*RELEVANCE.labels, *FACTUALITY.labels, "unknown"]

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class S:
    """Stands in for ``finegrained.data.Span``: anything with start, end, label works."""

    start: int
    end: int
    label: str


def reference_labels(text, segments, spans, category, min_overlap_words):
    """The definition, literally: count words having a character inside both span and segment."""
    words, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        j = i
        while j < len(text) and not text[j].isspace():
            j += 1
        words.append(range(i, j))
        i = j
    out = []
    for g0, g1 in segments:
        marked = 0
        for span in spans:
            if span.label not in category.labels:
                continue
            inside = set(range(max(g0, span.start), min(g1, span.end)))
            if sum(1 for w in words if inside.intersection(w)) >= min_overlap_words:
                marked = 1
        out.append(marked)
    return out


_PIECES = ["The", "answer", "is", "x", ",", ".", "!", " ", "  ", "\n", "\r\n", "\t", "\u3000",
           "😀", "你好", "e\u0301", "3,000", "Ω"]
texts_strategy = st.one_of(
    st.lists(st.sampled_from(_PIECES), max_size=30).map("".join),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=50),
)


@st.composite
def case(draw):
    text = draw(texts_strategy)
    n = len(text)
    # Arbitrary (possibly untrimmed) non-overlapping segments: sorted distinct cut points.
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=8))))
    segments = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if a < b]
    spans = draw(
        st.lists(
            st.builds(S, st.integers(-2, n + 2), st.integers(-2, n + 2), st.sampled_from(ALL_LABELS)),
            max_size=5,
        )
    )
    return text, segments, spans


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(SegmentationConfig(min_words=2))


# ----------------------------------------------------------------------------- properties
@PROPERTY
@given(case(), st.sampled_from([RELEVANCE, FACTUALITY]), st.integers(1, 3))
def test_matches_brute_force_reference(args, category, min_overlap_words):
    text, segments, spans = args
    got = project_labels(text, segments, spans, category, min_overlap_words)
    assert got == reference_labels(text, segments, spans, category, min_overlap_words)
    # Dicts with the same keys give the same labels.
    as_dicts = [{"start": s.start, "end": s.end, "label": s.label} for s in spans]
    assert project_labels(text, segments, as_dicts, category, min_overlap_words) == got


@PROPERTY
@given(texts_strategy, st.data())
def test_a_span_covering_a_segment_marks_it_and_only_what_it_touches(segmenter, text, data):
    (segments,) = segmenter.sub_sentences([text])
    if not segments:
        assert project_labels(text, segments, [S(0, len(text), "relevance")], RELEVANCE) == []
        return
    j = data.draw(st.integers(0, len(segments) - 1))
    g0, g1 = segments[j]
    n_words = len(text[g0:g1].split())
    exact = [S(g0, g1, "Redundant")]
    labels = project_labels(text, segments, exact, RELEVANCE)
    assert labels == [int(k == j) for k in range(len(segments))]
    # Exactly covering, it overlaps every word of the segment and no more.
    assert project_labels(text, segments, exact, RELEVANCE, min_overlap_words=n_words)[j] == 1
    assert project_labels(text, segments, exact, RELEVANCE, min_overlap_words=n_words + 1)[j] == 0
    # The same span under another category's label changes nothing for this one.
    assert project_labels(text, segments, [S(g0, g1, "Unverifiable")], RELEVANCE) == [0] * len(segments)
    assert project_labels(text, segments, [S(g0, g1, "Unverifiable")], FACTUALITY)[j] == 1
    # A span strictly inside the segment marks only this segment.
    a = data.draw(st.integers(g0, g1 - 1))
    b = data.draw(st.integers(a + 1, g1))
    inner = project_labels(text, segments, [S(a, b, "relevance")], RELEVANCE)
    assert all(v == 0 for k, v in enumerate(inner) if k != j)
    assert inner[j] == int(bool(text[a:b].strip()))


@PROPERTY
@given(st.lists(st.sampled_from(["aa", "b", "ccc", "😀", "你"]), min_size=1, max_size=12), st.data())
def test_threshold_counts_whole_words_touched(words, data):
    text = " ".join(words)
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    first = data.draw(st.integers(0, len(words) - 1))
    last = data.draw(st.integers(first, len(words) - 1))
    # A span from the last character of word `first` to the first character of word `last`.
    span_start = starts[first] + len(words[first]) - 1
    span = S(span_start, max(span_start + 1, starts[last] + 1), "Irrelevant")
    touched = last - first + 1
    segment = [(0, len(text))]
    for m in range(1, len(words) + 2):
        assert project_labels(text, segment, [span], RELEVANCE, m) == [int(touched >= m)]


# ----------------------------------------------------------------------------- hand-worked cases
def test_hand_worked_example(segmenter):
    text = "Paris is the capital of France. It has a big zoo, and the zoo has zebras in it."
    segments = segmenter.sentences([text])[0]
    assert [text[a:b] for a, b in segments] == [
        "Paris is the capital of France.", "It has a big zoo, and the zoo has zebras in it."
    ]
    zoo = text.index("It has")
    spans = [
        S(zoo, len(text), "Irrelevant"),  # relevance error over the whole second sentence
        S(0, 5, "Wrong-Grounding"),  # "Paris": one word of the first sentence
        S(29, zoo + 2, "Unverifiable"),  # "e." + space + "It": one word in each sentence
    ]
    assert project_labels(text, segments, spans, RELEVANCE) == [0, 1]
    assert project_labels(text, segments, spans, FACTUALITY) == [1, 1]
    assert project_labels(text, segments, spans, FACTUALITY, min_overlap_words=2) == [0, 0]
    # Spans are judged one at a time: two one-word spans do not add up to two words.
    assert project_labels(text, segments, [S(0, 5, "factuality"), S(6, 8, "factuality")], FACTUALITY, 2) == [0, 0]
    assert project_labels(text, segments, [S(0, 8, "factuality")], FACTUALITY, 2) == [1, 0]


def test_whitespace_only_overlap_and_empty_spans_mark_nothing():
    text = "one two   three"
    segments = [(0, 7), (10, 15)]
    assert project_labels(text, segments, [S(7, 10, "relevance")], RELEVANCE) == [0, 0]
    assert project_labels(text, segments, [S(3, 3, "relevance")], RELEVANCE) == [0, 0]
    assert project_labels(text, segments, [S(5, 3, "relevance")], RELEVANCE) == [0, 0]
    assert project_labels(text, segments, [], RELEVANCE) == [0, 0]
    assert project_labels(text, [], [S(0, 15, "relevance")], RELEVANCE) == []
    # A span starting mid-word still overlaps that word.
    assert project_labels(text, segments, [S(6, 11, "relevance")], RELEVANCE) == [1, 1]


def test_batch_and_all_categories_agree_with_single_calls():
    texts = ["A b. C d.", "E f g."]
    segs = [[(0, 4), (5, 9)], [(0, 6)]]
    spans = [[S(5, 6, "Incoherent"), S(0, 1, "Unverifiable")], []]
    assert project_labels_batch(texts, segs, spans, RELEVANCE) == [[0, 1], [0]]
    assert project_labels_batch(texts, segs, spans, FACTUALITY) == [[1, 0], [0]]
    by_granularity = {"sub_sentence": segs[0], "sentence": segs[0], "sequence": [(0, 9)]}
    assert project_all_categories(texts[0], by_granularity, spans[0], [RELEVANCE, FACTUALITY, COMPLETENESS]) == {
        "relevance": [0, 1],
        "factuality": [1, 0],
    }
    with pytest.raises(ValueError):
        project_labels_batch(texts, segs[:1], spans, RELEVANCE)


def test_word_index_counts():
    words = WordIndex(" ab  c\td😀 ")
    assert words.count(0, 11) == 3
    assert words.count(2, 3) == 1
    assert words.count(3, 5) == 0
    assert words.count(5, 5) == 0


def test_bad_arguments():
    with pytest.raises(FinegrainedError, match="min_overlap_words"):
        project_labels("a", [(0, 1)], [S(0, 1, "relevance")], RELEVANCE, min_overlap_words=0)
    with pytest.raises(TypeError):
        project_labels("a", [(0, 1)], [S(0, 1, "relevance")], "relevance")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the schema's rules: short spans, ignores
from finegrained.labels import (  # noqa: E402
    IGNORED,
    category_labels,
    drop_short_spans,
    labels_by_category,
    segment_labels,
    segment_labels_batch,
)
from finegrained.schema import schema_from_dict  # noqa: E402


def paper_like_schema(ignore=("relevance",), min_span_words=None):
    """QA-Feedback's categories with the paper's label rules, sentences by the offline sentencizer."""
    relevance = {"name": "relevance", "granularity": "sub_sentence", "kind": "span",
                 "error_types": ["Irrelevant", "Redundant", "Incoherent"]}
    if min_span_words is not None:
        relevance["min_span_words"] = min_span_words
    factuality = {"name": "factuality", "granularity": "sentence", "kind": "span",
                  "error_types": ["Wrong-Grounding", "Unverifiable"], "ignore_overlapping": list(ignore)}
    return schema_from_dict({
        "name": "paper_like",
        "segmentation": {"sentence": "sentencizer", "sub_sentence": {"rule": "paper"}},
        "categories": [relevance, factuality, {"name": "completeness", "granularity": "sequence", "kind": "preference"}],
    })


PAPER_SCHEMA = paper_like_schema(min_span_words={"words": 5, "error_types": ["Irrelevant", "Redundant", "Incoherent"]})


def _span(text, piece, label, occurrence=0):
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(piece, start + 1)
    return S(start, start + len(piece), label)


def test_short_relevance_spans_are_dropped_factual_ones_never():
    text = "One two three four five six seven."
    spans = [
        S(0, 18, "Irrelevant"),  # "One two three four": 4 words, dropped
        S(0, 23, "Redundant"),  # 5 words: kept
        S(2, 23, "Incoherent"),  # "e two three four five": a word piece counts as a word, 5: kept
        S(4, 5, "Unverifiable"),  # 1 word, but factual: kept
        S(0, 3, "relevance"),  # the category name is not in this filter's error_types: kept
    ]
    kept, dropped = drop_short_spans(text, spans, PAPER_SCHEMA)
    assert dropped == 1 and kept == spans[1:]
    # min_span_words without error_types covers every label of the category, its name too
    every = paper_like_schema(min_span_words=5)
    assert drop_short_spans(text, spans, every) == ([spans[1], spans[2], spans[3]], 2)
    # no filter: nothing dropped
    assert drop_short_spans(text, spans, paper_like_schema()) == (spans, 0)


def test_factuality_ignores_sentences_with_only_relevance_errors():
    text = ("The bridge is 2 km long. It was built by a famous engineer in 1900. The bridge is 2 km long. "
            "It is very red. Many people cross it every day, mostly on foot.")
    spans = [
        _span(text, "2 km", "Wrong-Grounding"),  # sentence 0: factual error
        _span(text, "a famous engineer in 1900.", "Irrelevant"),  # sentence 1: relevance only, 5 words
        _span(text, "The bridge is 2 km long.", "Redundant", occurrence=1),  # sentence 2: relevance only
        _span(text, "very red.", "Incoherent"),  # sentence 3: 2 words, dropped: the sentence is clean
        _span(text, "Many people", "Unverifiable"),  # sentence 4: factual ...
        _span(text, "cross it every day, mostly on foot.", "Irrelevant"),  # ... and relevance: an error
    ]
    segments, labels = segment_labels((text, spans), PAPER_SCHEMA, PAPER_SCHEMA.category("factuality"))
    assert [text[a:b] for a, b in segments][3] == "It is very red."
    assert labels == [1, IGNORED, IGNORED, 0, 1]
    # without the span-length filter the short Incoherent span makes sentence 3 ignored too
    unfiltered = paper_like_schema()
    assert segment_labels((text, spans), unfiltered, unfiltered.category("factuality")).labels == [1, None, None, None, 1]
    # an error type in ignore_overlapping ignores only for spans of that type
    redundant_only = paper_like_schema(ignore=("Redundant",))
    assert segment_labels((text, spans), redundant_only, redundant_only.category("factuality")).labels == [1, 0, None, 0, 1]
    # relevance has no ignore rule: plain projection, after the short span is dropped
    rel_segments, rel_labels = segment_labels((text, spans), PAPER_SCHEMA, PAPER_SCHEMA.category("relevance"))
    assert rel_labels == [0, 1, 1, 0, 1]
    assert len(rel_segments) == 5  # "Many people cross it every day," has 6 words but only 3 follow


def reference_category_labels(text, segments, spans, schema, category):
    """The rules written out: drop short spans, then error / ignored / clean per segment."""
    def words_of(span):
        return len(text[max(span.start, 0):max(span.end, 0)].split())

    def kept(span):
        owner = schema.category_of_label(span.label)
        rule = owner.min_span_words if owner is not None else None
        return not (rule and span.label in rule.labels and words_of(span) < rule.words)

    survivors = [s for s in spans if kept(s)]
    errors = reference_labels(text, segments, survivors, category, 1)
    ignore = Category("ignore", "sentence", "span", tuple(schema.ignore_labels(category)))
    others = reference_labels(text, segments, [s for s in survivors if s.label in ignore.error_types], ignore, 1)
    return [1 if e else (None if o else 0) for e, o in zip(errors, others)]


@PROPERTY
@given(case(), st.sampled_from([None, 1, 2, 3]), st.sampled_from([(), ("relevance",), ("Incoherent", "Irrelevant")]))
def test_category_labels_match_the_rules_written_out(drawn, words, ignore):
    text, segments, spans = drawn
    schema = paper_like_schema(ignore=ignore, min_span_words=None if words is None else {"words": words})
    for category in schema.span_categories:
        got = category_labels(text, segments, spans, schema, category)
        assert got == reference_category_labels(text, segments, spans, schema, category)
        if words is None and not schema.ignore_labels(category):
            assert got == project_labels(text, segments, spans, category)  # no rules: plain projection


def test_batch_and_by_category_agree_with_single_records():
    from finegrained.data import Span, SpanRecord

    texts = ["It is red, and it is also very long, with five more words here. Fine.", "Short."]
    records = [
        SpanRecord("a", "p", texts[0], (Span(0, 9, "Irrelevant"), Span(11, 35, "Redundant"), Span(65, 70, "Unverifiable"))),
        SpanRecord("b", "p", texts[1], ()),
    ]
    for category in PAPER_SCHEMA.span_categories:
        batch = segment_labels_batch(records, PAPER_SCHEMA, category)
        assert batch == [segment_labels(r, PAPER_SCHEMA, category) for r in records]
        assert batch == [segment_labels((r.completion, r.spans), PAPER_SCHEMA, category) for r in records]
    segmenter = Segmenter(PAPER_SCHEMA.segmentation)
    by_granularity = segmenter.segment_many(texts[:1], ["sentence", "sub_sentence"])
    joint = labels_by_category(texts[0], {g: v[0] for g, v in by_granularity.items()}, records[0].spans,
                               PAPER_SCHEMA, PAPER_SCHEMA.categories)
    assert set(joint) == {"relevance", "factuality"}
    for name, labels in joint.items():
        assert labels == segment_labels(records[0], PAPER_SCHEMA, PAPER_SCHEMA.category(name)).labels
    with pytest.raises(FinegrainedError, match="preference"):
        segment_labels(records[0], PAPER_SCHEMA, PAPER_SCHEMA.category("completeness"))
