"""Annotation schemas: the error categories a project judges, loaded from YAML and validated.

A schema names its categories; each category has a granularity (the unit its reward model judges),
a kind (``span``: labels projected from annotated error spans; ``preference``: pairwise comparisons of
whole outputs), the annotator-facing error types that fold into it, and what its reward model sees of
the prompt (``context``: ``none``, ``question`` or ``prompt``; the old ``uses_context: true/false``
still means ``prompt``/``none``). The schema also carries the segmentation settings shared by every category and,
for ``context: question``, ``prompt.question_pattern``: a regex whose named group ``question`` finds
the question in a prompt.

Example (``annotation_schemas/qa_feedback.yaml``, Wu et al. 2023's preprocessing)::

    name: qa_feedback
    prompt: {question_pattern: '^\\s*question:\\s*(?P<question>.*?)\\s*context:'}
    segmentation:
      sentence: en_core_web_sm
      sub_sentence: {rule: paper, split_after: ",;!?", min_words: 5}
    categories:
      - name: relevance
        granularity: sub_sentence
        kind: span
        error_types: [Irrelevant, Redundant, Incoherent]
        min_span_words: {words: 5}          # shorter spans of these labels are dropped
        context: question
        description: Text that does not help answer the question.
      - name: factuality
        granularity: sentence
        kind: span
        error_types: [Wrong-Grounding, Unverifiable]
        ignore_overlapping: [relevance]     # a sentence with only relevance errors is left out
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import InputError, Problem
from .paths import SCHEMA_DIR

GRANULARITIES = ("sub_sentence", "sentence", "sequence")
KINDS = ("span", "preference")

#: sub-sentence rules: ``finegrained`` (this project's, the default) and ``paper`` (Wu et al. 2023's script)
SUB_SENTENCE_RULES = ("finegrained", "paper")
#: ``split_after`` when a schema gives none, per rule (the paper's script does not split after ``:``)
DEFAULT_SPLIT_AFTER = {"finegrained": ",;:!?", "paper": ",;!?"}

_CATEGORY_KEYS = {
    "name", "description", "granularity", "kind", "error_types", "uses_context", "min_span_words",
    "ignore_overlapping",
}
_TOP_KEYS = {"name", "description", "segmentation", "categories"}
# What a category's reward model sees of the prompt: nothing, the question part only, or all of it.
CONTEXT_MODES = ("none", "question", "prompt")
_CATEGORY_KEYS.add("context")
_TOP_KEYS.add("prompt")


@dataclass(frozen=True)
class SegmentationConfig:
    """How completions are cut into segments.

    ``sentence``: ``"sentencizer"`` (spaCy's rule-based sentencizer on a blank English pipeline, works
    offline) or the name of an installed spaCy pipeline or the path to a pipeline directory.
    Sub-sentences (``rule``, see ``finegrained.segment``): ``finegrained`` splits a sentence after a word
    ending in a ``split_after`` character when at least ``min_words`` words follow in the sentence and at
    least ``min_words`` words precede the cut in the current piece; ``paper`` is the rule of Wu et al.
    2023's preprocessing script. Frozen and hashable: segmenters are cached per configuration.
    """

    sentence: str = "sentencizer"
    split_after: str = ",;:!?"
    min_words: int = 5
    language: str = "en"
    rule: str = "finegrained"


@dataclass(frozen=True)
class SpanLengthFilter:
    """Spans with one of ``labels`` and fewer than ``words`` words (``text[start:end].split()``) are
    dropped before labels are projected (the paper drops relevance spans under 5 words, Appendix D)."""

    words: int
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Category:
    name: str
    granularity: str
    kind: str
    error_types: tuple[str, ...] = ()
    uses_context: bool | None = None  # the old spelling of `context`: true = "prompt", false = "none"
    description: str = ""
    #: spans of this category too short to count (``None``: every span counts)
    min_span_words: SpanLengthFilter | None = None
    #: category names or error types of other span categories whose spans make a segment without an
    #: error of this category *ignored* (label ``None``) instead of clean; see ``finegrained.labels``
    ignore_overlapping: tuple[str, ...] = ()
    context: str | None = None  # one of CONTEXT_MODES; default "prompt" (or as `uses_context` says)

    def __post_init__(self) -> None:
        context = resolve_context(self.context, self.uses_context)
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "uses_context", context != "none")

    @property
    def labels(self) -> tuple[str, ...]:
        """Span labels that mark an error of this category: its name and each of its error types."""
        return (self.name, *self.error_types)


def resolve_context(context: object, uses_context: object) -> str:
    """The context mode from ``context`` and/or the old boolean ``uses_context`` (None = not given).

    Raises ``ValueError`` for an unknown mode, a non-boolean ``uses_context``, or the two contradicting.
    """
    if uses_context is not None and not isinstance(uses_context, bool):
        raise ValueError("uses_context must be true or false")
    if context is None:
        return "none" if uses_context is False else "prompt"
    if context not in CONTEXT_MODES:
        raise ValueError(f"unknown context {context!r} (expected one of {', '.join(CONTEXT_MODES)})")
    if uses_context is not None and uses_context != (context != "none"):
        raise ValueError(f"context: {context} contradicts uses_context: {str(uses_context).lower()} "
                         "(give only context)")  # fmt: skip
    return str(context)


@dataclass(frozen=True)
class AnnotationSchema:
    name: str
    categories: tuple[Category, ...]
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    description: str = ""
    source: str = "<memory>"
    sha256: str = ""
    #: regex whose named group ``question`` finds the question in a prompt (``prompt.question_pattern``)
    question_pattern: str | None = None

    def category(self, name: str) -> Category:
        for c in self.categories:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.categories)
        raise KeyError(f"schema {self.name!r} has no category {name!r} (known: {known})")

    @property
    def category_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)

    @property
    def span_categories(self) -> tuple[Category, ...]:
        return tuple(c for c in self.categories if c.kind == "span")

    @property
    def preference_categories(self) -> tuple[Category, ...]:
        return tuple(c for c in self.categories if c.kind == "preference")

    def category_of_label(self, label: str) -> Category | None:
        """The category a span label belongs to (a category name or one of its error types)."""
        for c in self.categories:
            if label in c.labels:
                return c
        return None

    @property
    def all_labels(self) -> tuple[str, ...]:
        return tuple(label for c in self.categories for label in c.labels)

    def ignore_labels(self, category: Category) -> frozenset[str]:
        """Span labels that make a segment of ``category`` ignored (its ``ignore_overlapping``, with each
        category name expanded to that category's labels)."""
        out: set[str] = set()
        for name in category.ignore_overlapping:
            other = self.category_of_label(name)
            if other is None:
                continue  # refused when the schema was loaded; a hand-built schema may still hold one
            out.update(other.labels if name == other.name else (name,))
        return frozenset(out)


def resolve_schema_path(path_or_name: str | Path) -> Path:
    """A path to a YAML file, or the name of a shipped schema (``qa_feedback``, ``synthetic_qa``)."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    shipped = SCHEMA_DIR / f"{path_or_name}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(f.stem for f in SCHEMA_DIR.glob("*.yaml"))
    raise InputError(
        f"no such schema file; give a path or one of the shipped names: {', '.join(names)}", file=p
    )


def load_schema(path_or_name: str | Path) -> AnnotationSchema:
    """Load and validate a schema; raises ``InputError`` naming the file and the offending key."""
    path = resolve_schema_path(path_or_name)
    raw_bytes = path.read_bytes()
    try:
        data = yaml.safe_load(raw_bytes.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise InputError([Problem(str(path), None if line is None else line + 1, f"not valid YAML: {e}")]) from None
    return schema_from_dict(data, source=str(path), sha256=hashlib.sha256(raw_bytes).hexdigest())


def schema_from_dict(data: object, source: str = "<memory>", sha256: str = "") -> AnnotationSchema:
    problems: list[Problem] = []

    def bad(key: str, message: str) -> None:
        problems.append(Problem(source, None, message, field=key))

    if not isinstance(data, dict):
        raise InputError([Problem(source, None, "a schema must be a YAML mapping with 'name' and 'categories'")])
    for key in sorted(set(data) - _TOP_KEYS):
        bad(str(key), f"unknown key (expected one of {', '.join(sorted(_TOP_KEYS))})")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        bad("name", "must be a non-empty string")
        name = "<unnamed>"

    segmentation = _parse_segmentation(data.get("segmentation"), bad)
    question_pattern = _parse_prompt(data.get("prompt"), bad)
    pattern_given = isinstance(data.get("prompt"), dict) and data["prompt"].get("question_pattern") is not None

    raw_categories = data.get("categories")
    if not isinstance(raw_categories, list) or not raw_categories:
        bad("categories", "a schema needs a non-empty list of categories")
        raw_categories = []
    categories: list[Category] = []
    where_of: dict[str, str] = {}  # category name -> its key path, for problems found across categories
    seen_names: dict[str, int] = {}
    seen_labels: dict[str, str] = {}
    for i, raw in enumerate(raw_categories):
        category = _parse_category(raw, i, bad, seen_names, seen_labels, pattern_given)
        if category is not None:
            categories.append(category)
            where_of.setdefault(category.name, f"categories[{i}] ({category.name})")
    for category in categories:
        _check_ignore_overlapping(category, categories, f"{where_of[category.name]}.ignore_overlapping", bad)
    if problems:
        raise InputError(problems)
    description = data.get("description", "")
    return AnnotationSchema(
        name=name,
        categories=tuple(categories),
        segmentation=segmentation,
        description=description if isinstance(description, str) else "",
        source=source,
        sha256=sha256,
        question_pattern=question_pattern,
    )


def _parse_category(
    raw: object, i: int, bad, seen_names: dict[str, int], seen_labels: dict[str, str], pattern_given: bool = False
) -> Category | None:
    """One entry of ``categories``; problems go to ``bad``. ``None`` when it has no usable name."""
    where = f"categories[{i}]"
    if not isinstance(raw, dict):
        bad(where, "each category must be a mapping")
        return None
    for key in sorted(set(raw) - _CATEGORY_KEYS):
        bad(f"{where}.{key}", f"unknown key (expected one of {', '.join(sorted(_CATEGORY_KEYS))})")
    cname = raw.get("name")
    if not isinstance(cname, str) or not cname.strip():
        bad(f"{where}.name", "must be a non-empty string")
        return None
    where = f"categories[{i}] ({cname})"
    if cname in seen_names:
        bad(f"{where}.name", f"repeats the category name {cname!r} (first at categories[{seen_names[cname]}])")
    seen_names[cname] = i
    granularity = raw.get("granularity")
    if granularity not in GRANULARITIES:
        bad(f"{where}.granularity", f"unknown granularity {granularity!r} (expected one of {', '.join(GRANULARITIES)})")
    kind = raw.get("kind")
    if kind not in KINDS:
        bad(f"{where}.kind", f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    if kind == "preference" and granularity not in (None, "sequence") and granularity in GRANULARITIES:
        bad(f"{where}.granularity", "a preference category compares whole outputs: granularity must be 'sequence'")
    error_types = raw.get("error_types", [])
    if error_types is None:
        error_types = []
    if not isinstance(error_types, list) or not all(isinstance(t, str) and t for t in error_types):
        bad(f"{where}.error_types", "must be a list of non-empty strings")
        error_types = []
    for label in [cname, *error_types]:
        if label in seen_labels and not (label == cname and seen_labels[label] == cname):
            bad(f"{where}.error_types", f"repeats the label {label!r} (already used by category {seen_labels[label]!r})")
        seen_labels.setdefault(label, cname)
    context = _parse_context(raw, where, pattern_given, bad)
    description = raw.get("description", "")
    if not isinstance(description, str):
        bad(f"{where}.description", "must be a string")
        description = ""
    labels = (cname, *error_types)
    for key in ("min_span_words", "ignore_overlapping"):
        if key in raw and kind == "preference":
            bad(f"{where}.{key}", "only a span category has spans (this one is a preference category)")
    ignore = raw.get("ignore_overlapping") or []
    if not isinstance(ignore, list) or not all(isinstance(t, str) and t for t in ignore):
        bad(f"{where}.ignore_overlapping", "must be a list of category names or error types of other span categories")
        ignore = []
    return Category(
        name=cname,
        granularity=str(granularity),
        kind=str(kind),
        error_types=tuple(error_types),
        context=context,
        description=description.strip(),
        min_span_words=_parse_min_span_words(raw.get("min_span_words"), labels, f"{where}.min_span_words", bad),
        ignore_overlapping=tuple(dict.fromkeys(ignore)),
    )


def _parse_min_span_words(raw: object, labels: tuple[str, ...], where: str, bad) -> SpanLengthFilter | None:
    """``min_span_words: N`` or ``{words: N, error_types: [...]}`` (default: every label of the category)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raw = {"words": raw}
    for key in sorted(set(raw) - {"words", "error_types"}):
        bad(f"{where}.{key}", "unknown key (expected words, error_types)")
    words = raw.get("words")
    if isinstance(words, bool) or not isinstance(words, int) or words < 1:
        bad(f"{where}.words", f"must be a positive integer (spans with fewer words are dropped), got {words!r}")
        return None
    chosen = raw.get("error_types", list(labels))
    if not isinstance(chosen, list) or not chosen or not all(isinstance(t, str) and t for t in chosen):
        bad(f"{where}.error_types", "must be a non-empty list of this category's name or error types")
        return None
    foreign = [t for t in chosen if t not in labels]
    if foreign:
        bad(f"{where}.error_types", f"{', '.join(map(repr, foreign))} not a label of this category "
            f"(its labels: {', '.join(labels)})")
        return None
    return SpanLengthFilter(words=words, labels=tuple(dict.fromkeys(chosen)))


def _check_ignore_overlapping(category: Category, categories: list[Category], where: str, bad) -> None:
    """Every name in ``ignore_overlapping`` is a category name or error type of another span category."""
    if category.kind != "span":
        return  # already refused: a preference category has no segments to ignore
    for name in category.ignore_overlapping:
        other = next((c for c in categories if name in c.labels), None)
        others = [label for c in categories if c.kind == "span" and c.name != category.name for label in c.labels]
        if other is None:
            bad(where, f"{name!r} is not a category or error type of this schema "
                f"(other span categories' labels: {', '.join(others) or 'none'})")
        elif other.name == category.name:
            bad(where, f"{name!r} is a label of this category itself; name labels of other span categories")
        elif other.kind != "span":
            bad(where, f"{name!r} belongs to the preference category {other.name!r}, which has no spans")


def _parse_context(raw: dict, where: str, pattern_given: bool, bad) -> str:
    """A category's ``context`` (or its old spelling ``uses_context``); "prompt" after a problem."""
    uses_context = raw.get("uses_context")
    if uses_context is not None and not isinstance(uses_context, bool):
        bad(f"{where}.uses_context", "must be true or false")
        return "prompt"
    try:
        context = resolve_context(raw.get("context"), uses_context)
    except ValueError as e:
        bad(f"{where}.context", str(e))
        return "prompt"
    if context == "question" and not pattern_given:
        bad(f"{where}.context", "context: question needs the schema's prompt.question_pattern "
            "(a regex with a named group 'question')")  # fmt: skip
    return context


def _parse_prompt(raw: object, bad) -> str | None:
    """``prompt: {question_pattern: REGEX}`` -> the pattern (validated: compiles, has group ``question``)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        bad("prompt", "must be a mapping with question_pattern")
        return None
    for key in sorted(set(raw) - {"question_pattern"}):
        bad(f"prompt.{key}", "unknown key (expected question_pattern)")
    pattern = raw.get("question_pattern")
    if pattern is None:
        return None
    if not isinstance(pattern, str) or not pattern:
        bad("prompt.question_pattern", "must be a regular expression (a non-empty string)")
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        bad("prompt.question_pattern", f"not a valid regular expression: {e}")
        return None
    if "question" not in compiled.groupindex:
        bad("prompt.question_pattern", "needs a named group 'question', e.g. '^question:\\s*(?P<question>.*?)\\s*context:'")
        return None
    return pattern


def _parse_segmentation(raw: object, bad) -> SegmentationConfig:
    if raw is None:
        return SegmentationConfig()
    if not isinstance(raw, dict):
        bad("segmentation", "must be a mapping")
        return SegmentationConfig()
    for key in sorted(set(raw) - {"sentence", "sub_sentence", "language"}):
        bad(f"segmentation.{key}", "unknown key (expected sentence, sub_sentence, language)")
    sentence = raw.get("sentence", "sentencizer")
    if not isinstance(sentence, str) or not sentence:
        bad("segmentation.sentence", "must be 'sentencizer', the name of an installed spaCy pipeline or a path to one")
        sentence = "sentencizer"
    language = raw.get("language", "en")
    if not isinstance(language, str):
        bad("segmentation.language", "must be a spaCy language code such as 'en'")
        language = "en"
    sub = raw.get("sub_sentence") or {}
    if not isinstance(sub, dict):
        bad("segmentation.sub_sentence", "must be a mapping with rule, split_after and min_words")
        sub = {}
    for key in sorted(set(sub) - {"rule", "split_after", "min_words"}):
        bad(f"segmentation.sub_sentence.{key}", "unknown key (expected rule, split_after, min_words)")
    rule = sub.get("rule", "finegrained")
    if rule not in SUB_SENTENCE_RULES:
        bad("segmentation.sub_sentence.rule", f"unknown rule {rule!r} (expected one of {', '.join(SUB_SENTENCE_RULES)})")
        rule = "finegrained"
    split_after = sub.get("split_after", DEFAULT_SPLIT_AFTER[rule])
    if not isinstance(split_after, str) or not split_after or any(ch.isspace() for ch in split_after):
        bad("segmentation.sub_sentence.split_after", "must be a non-empty string of punctuation characters")
        split_after = DEFAULT_SPLIT_AFTER[rule]
    min_words = sub.get("min_words", 5)
    if isinstance(min_words, bool) or not isinstance(min_words, int) or min_words < 1:
        bad("segmentation.sub_sentence.min_words", "must be a positive integer")
        min_words = 5
    return SegmentationConfig(
        sentence=sentence, split_after=split_after, min_words=min_words, language=language, rule=rule
    )
