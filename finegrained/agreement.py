"""``finegrained agreement``: how much annotators agree, per category, and a majority-vote merge.

    finegrained agreement --schema S ANNOTATIONS.jsonl... [--json report.json] [--merge merged.jsonl]

Records of the same item share an ``id`` and differ in ``annotator``. Span categories are compared on the
segments of the category's granularity (the same segmentation and label projection as reward-model
training): Cohen's kappa for two annotators, Krippendorff's alpha (nominal) for more. Preference
categories are compared on which output each annotator chose: percent agreement and Cohen's kappa /
Krippendorff's alpha. ``--merge`` writes one record per item by majority vote and lists ties.

Files may be the annotation app's journals: a record submitted twice counts once (its latest version),
a preference tie (``meta.tie``) is a third answer besides the two outputs, and a record without an
annotator is attributed to its file's name.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .data import PreferenceRecord, SpanRecord, record_from_json
from .errors import FinegrainedError, InputError
from .labels import project_labels
from .schema import AnnotationSchema
from .segment import get_segmenter


def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's kappa of two raters over the same units: (p_o - p_e) / (1 - p_e)."""
    if len(a) != len(b) or not a:
        raise ValueError("cohen_kappa needs two equally long, non-empty label lists")
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    if p_e == 1.0:
        return 1.0 if p_o == 1.0 else math.nan
    return (p_o - p_e) / (1.0 - p_e)


def krippendorff_alpha(units: Sequence[Sequence]) -> float:
    """Krippendorff's alpha for nominal data. ``units``: per unit, the values given by the raters who
    rated it (units with fewer than two values are not pairable and are ignored)."""
    pairable = [list(u) for u in units if len(u) >= 2]
    coincidence: Counter = Counter()
    for values in pairable:
        m = len(values)
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    coincidence[(c, k)] += 1.0 / (m - 1)
    n_c: Counter = Counter()
    for (c, _), w in coincidence.items():
        n_c[c] += w
    n = sum(n_c.values())
    if n <= 1:
        return math.nan
    observed = sum(w for (c, k), w in coincidence.items() if c != k) / n
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n * (n - 1))
    if expected == 0:
        return 1.0 if observed == 0 else math.nan
    return 1.0 - observed / expected


def agreement_score(ratings: dict[str, dict]) -> dict[str, float | int | str]:
    """ratings: annotator -> {unit: label}. Cohen's kappa for two annotators (on the units both rated),
    Krippendorff's alpha otherwise; plus the share of units (rated by at least two) on which all agree."""
    annotators = sorted(ratings)
    units = sorted({u for r in ratings.values() for u in r}, key=repr)
    values = [[ratings[x][u] for x in annotators if u in ratings[x]] for u in units]
    pairable = [v for v in values if len(v) >= 2]
    percent = sum(len(set(v)) == 1 for v in pairable) / len(pairable) if pairable else math.nan
    if len(annotators) == 2:
        a, b = annotators
        shared = [u for u in units if u in ratings[a] and u in ratings[b]]
        kappa = cohen_kappa([ratings[a][u] for u in shared], [ratings[b][u] for u in shared]) if shared else math.nan
        return {"statistic": "cohen_kappa", "cohen_kappa": kappa, "units": len(shared), "percent_agreement": percent}
    return {"statistic": "krippendorff_alpha", "krippendorff_alpha": krippendorff_alpha(values),
            "units": len(pairable), "percent_agreement": percent}  # fmt: skip


def load_annotations(paths: Sequence[Path], schema: AnnotationSchema) -> tuple[list[SpanRecord], list[PreferenceRecord]]:
    """Span and preference records of every file (latest version per id; annotator defaults to the file
    name). Raises ``InputError`` listing the problems of every file."""
    from .app.store import latest_records

    spans, prefs, problems = [], [], []
    for path in paths:
        try:
            rows, _ = latest_records(path, schema, keep_ties=True)
        except InputError as e:
            problems += e.problems
            continue
        for row in rows:
            record = record_from_json(row)
            if record.annotator is None:
                record = replace(record, annotator=Path(path).stem)
            (spans if isinstance(record, SpanRecord) else prefs).append(record)
    if problems:
        raise InputError(problems[:50])
    return spans, prefs


def span_ratings(records: list[SpanRecord], schema: AnnotationSchema) -> dict[str, tuple[dict, dict]]:
    """Per span category: (annotator -> {(item id, segment index): 0/1}, item id -> (text, segments))."""
    segmenter = get_segmenter(schema.segmentation)
    texts = {r.id: r.completion for r in records}
    ids = sorted(texts)
    out = {}
    for category in schema.span_categories:
        segments = dict(zip(ids, segmenter.segment([texts[i] for i in ids], category.granularity)))
        ratings: dict[str, dict] = defaultdict(dict)
        for r in records:
            labels = project_labels(r.completion, segments[r.id], r.spans, category)
            for k, label in enumerate(labels):
                ratings[r.annotator][(r.id, k)] = label
        out[category.name] = (dict(ratings), segments)
    return out


def preference_item(r: PreferenceRecord) -> tuple[str, str, str]:
    """The unordered pair a preference judges: (prompt, first output, second output), outputs sorted."""
    first, second = sorted((r.chosen, r.rejected))
    return r.prompt, first, second


def preference_answer(r: PreferenceRecord) -> str:
    """``"first"`` / ``"second"`` (in ``preference_item`` order) or ``"tie"``: one label space for all items,
    so chance agreement is estimated across items (a label per output text would make every item its own
    category and kappa would collapse to raw agreement)."""
    if r.meta.get("tie"):
        return "tie"
    return "first" if r.chosen == preference_item(r)[1] else "second"


def preference_ratings(records: list[PreferenceRecord]) -> dict[str, dict]:
    """Per category: annotator -> {pair item: "first" | "second" | "tie"}."""
    out: dict[str, dict] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        out[r.category][r.annotator][preference_item(r)] = preference_answer(r)
    return {c: dict(v) for c, v in out.items()}


def majority(values: list) -> tuple[object, bool]:
    """The most common value and whether it was a tie."""
    counts = Counter(values).most_common()
    tie = len(counts) > 1 and counts[0][1] == counts[1][1]
    return counts[0][0], tie


@dataclass
class AgreementReport:
    """Figures per category, the majority-vote records, and what the vote could not settle."""

    categories: dict[str, dict]
    merged_spans: list[dict]
    merged_preferences: list[dict]
    ties: list[str]  # no majority: nothing decided (span segments count as clean, pairs are left out)
    disagreements: list[str]  # decided by majority, but not unanimously


def report(paths: Sequence[Path], schema: AnnotationSchema) -> AgreementReport:
    spans, prefs = load_annotations(paths, schema)
    annotators = sorted({r.annotator for r in [*spans, *prefs]})
    if len(annotators) < 2:
        who = f"only one annotator ({annotators[0]})" if annotators else "no annotated records"
        raise FinegrainedError(f"agreement needs at least two annotators; the files hold {who}. Records of one item "
                               f"share an 'id' and differ in 'annotator' (a record without one counts as its file's name)")  # fmt: skip
    out = AgreementReport({}, [], [], [], [])
    per_category = span_ratings(spans, schema) if spans else {}
    for name, (ratings, _) in per_category.items():
        out.categories[name] = {"kind": "span", "annotators": len(ratings), **agreement_score(ratings)}
    for name, ratings in preference_ratings(prefs).items():
        out.categories[name] = {"kind": "preference", "annotators": len(ratings), **agreement_score(ratings)}

    # Majority-vote merge of span items, segment by segment: a segment is an error of a category when most
    # annotators' spans make it one (the same projection reward-model training uses).
    by_id: dict[str, list[SpanRecord]] = defaultdict(list)
    for r in spans:
        by_id[r.id].append(r)
    for item_id, group in sorted(by_id.items()):
        merged_spans = []
        for name, (ratings, segments) in per_category.items():
            for k, (start, end) in enumerate(segments[item_id]):
                votes = [ratings[r.annotator][(item_id, k)] for r in group]
                label, tie = majority(votes)
                where = f"{item_id}: {name} segment {k} [{start}, {end}): {votes.count(1)} of {len(votes)} marked an error"
                if tie:
                    out.ties.append(where + " (tie: left clean)")
                    continue
                if len(set(votes)) > 1:
                    out.disagreements.append(where)
                if label == 1:
                    merged_spans.append({"start": start, "end": end, "label": name})
        first = group[0]
        out.merged_spans.append({"id": item_id, "prompt": first.prompt, "completion": first.completion,
                                 "spans": merged_spans, "annotator": "majority",
                                 "meta": {"annotators": sorted(r.annotator for r in group)}})  # fmt: skip

    # Preferences, pair by pair: the majority answer (first, second or tie); a majority tie writes nothing.
    pref_groups: dict[tuple, list[PreferenceRecord]] = defaultdict(list)
    for r in prefs:
        pref_groups[(r.category, *preference_item(r))].append(r)
    for (category, prompt, first, second), group in sorted(pref_groups.items(), key=lambda kv: kv[1][0].id):
        answers = [preference_answer(r) for r in group]
        answer, tie = majority(answers)
        where = f"{group[0].id}: {category}: answers {dict(sorted(Counter(answers).items()))}"
        if tie:
            out.ties.append(where + " (tie: left out)")
            continue
        if len(set(answers)) > 1:
            out.disagreements.append(where)
        if answer == "tie":
            continue  # most annotators saw no difference: there is no preference to train on
        chosen, rejected = (first, second) if answer == "first" else (second, first)
        out.merged_preferences.append({"id": group[0].id, "prompt": prompt, "chosen": chosen, "rejected": rejected,
                                       "category": category, "annotator": "majority",
                                       "meta": {"annotators": sorted(r.annotator for r in group)}})  # fmt: skip
    return out


def format_table(categories: dict) -> str:
    lines = [f"{'category':<14} {'kind':<10} {'annotators':>10} {'units':>6}  {'statistic':<18} {'value':>6}  {'agree %':>7}"]
    notes = []
    for name, c in categories.items():
        value, percent = c[c["statistic"]], c["percent_agreement"]
        value_text = "n/a" if math.isnan(value) else f"{value:.3f}"
        percent_text = "n/a" if math.isnan(percent) else f"{100 * percent:.1f}"
        lines.append(f"{name:<14} {c['kind']:<10} {c['annotators']:>10} {c['units']:>6}  {c['statistic']:<18} "
                     f"{value_text:>6}  {percent_text:>7}")  # fmt: skip
        if c["annotators"] < 2:
            notes.append(f"{name}: n/a (one annotator)")
        elif not c["units"]:
            notes.append(f"{name}: n/a (no unit rated by two annotators)")
        elif math.isnan(value):
            notes.append(f"{name}: n/a ({c['statistic']} is undefined: every rating is the same label)")
    return "\n".join(lines + [f"note: {n}" for n in notes])


def _json_safe(value):
    """NaN (agreement undefined, e.g. no shared units) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def json_report(result: AgreementReport) -> dict:
    """The figures, ties and disagreements as JSON-ready data (``--json``)."""
    return _json_safe({"categories": result.categories, "ties": result.ties, "disagreements": result.disagreements})


def merge_targets(result: AgreementReport, merge: Path) -> list[tuple[Path, list[dict]]]:
    """(file, majority-vote records) to write for ``--merge OUT``: the span records at ``OUT``, the
    preferences at ``OUT.preferences.jsonl`` when there are both (validate wants one record kind per file)."""
    targets = []
    if result.merged_spans or not result.merged_preferences:
        targets.append((merge, result.merged_spans))
    if result.merged_preferences:
        path = merge.with_name(f"{merge.stem}.preferences{merge.suffix}") if result.merged_spans else merge
        targets.append((path, result.merged_preferences))
    return targets
