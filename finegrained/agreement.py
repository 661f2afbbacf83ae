"""``finegrained agreement``: how much annotators agree, per category, and a majority-vote merge.

    finegrained agreement --schema S ANNOTATIONS.jsonl... [--json report.json] [--merge merged.jsonl]

Records of the same item share an ``id`` and differ in ``annotator``. Span categories are compared on the
segments of the category's granularity (the same segmentation and label projection as reward-model
training): Cohen's kappa for two annotators, Krippendorff's alpha (nominal) for more. Preference
categories are compared on which output each annotator chose: percent agreement and Cohen's kappa /
Krippendorff's alpha. ``--merge`` writes one record per item by majority vote and lists ties.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from .data import PreferenceRecord, SpanRecord, inspect_file
from .errors import InputError
from .io import atomic_write_json, atomic_write_jsonl
from .labels import project_labels
from .schema import AnnotationSchema, load_schema
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


def agreement_score(ratings: dict[str, dict]) -> tuple[str, float, int]:
    """ratings: annotator -> {unit: label}. Kappa for two annotators (on shared units), alpha otherwise."""
    annotators = sorted(ratings)
    units = sorted({u for r in ratings.values() for u in r})
    if len(annotators) == 2:
        a, b = annotators
        shared = [u for u in units if u in ratings[a] and u in ratings[b]]
        if not shared:
            return "cohen_kappa", math.nan, 0
        return "cohen_kappa", cohen_kappa([ratings[a][u] for u in shared], [ratings[b][u] for u in shared]), len(shared)
    values = [[ratings[x][u] for x in annotators if u in ratings[x]] for u in units]
    return "krippendorff_alpha", krippendorff_alpha(values), sum(len(v) >= 2 for v in values)


def load_annotations(paths: Sequence[Path], schema: AnnotationSchema) -> tuple[list[SpanRecord], list[PreferenceRecord]]:
    spans, prefs, problems = [], [], []
    for path in paths:
        report = inspect_file(path, schema)
        problems += report.problems
        for record in report.records:
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
                ratings[r.annotator or "?"][(r.id, k)] = label
        out[category.name] = (dict(ratings), segments)
    return out


def preference_ratings(records: list[PreferenceRecord]) -> dict[str, dict]:
    """Per category: annotator -> {item: the chosen text}, the item being the unordered pair of outputs."""
    out: dict[str, dict] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        item = (r.prompt, *sorted((r.chosen, r.rejected)))
        out[r.category][r.annotator or "?"][item] = r.chosen
    return {c: dict(v) for c, v in out.items()}


def majority(values: list) -> tuple[object, bool]:
    """The most common value and whether it was a tie."""
    counts = Counter(values).most_common()
    tie = len(counts) > 1 and counts[0][1] == counts[1][1]
    return counts[0][0], tie


def report(paths: Sequence[Path], schema: AnnotationSchema) -> tuple[dict, list[dict], list[str]]:
    spans, prefs = load_annotations(paths, schema)
    categories, merged, ties = {}, [], []
    per_category = span_ratings(spans, schema) if spans else {}
    for name, (ratings, _) in per_category.items():
        statistic, value, n_units = agreement_score(ratings)
        categories[name] = {"kind": "span", "annotators": len(ratings), statistic: value, "units": n_units}
    for name, ratings in preference_ratings(prefs).items():
        statistic, value, n_units = agreement_score(ratings)
        items = {i for r in ratings.values() for i in r}
        agree = [len({ratings[a][i] for a in ratings if i in ratings[a]}) == 1 for i in items if sum(i in ratings[a] for a in ratings) >= 2]
        categories[name] = {"kind": "preference", "annotators": len(ratings), statistic: value, "units": n_units,
                            "percent_agreement": sum(agree) / len(agree) if agree else math.nan}  # fmt: skip
    # Majority-vote merge: span items segment by segment, preference items pair by pair.
    by_id: dict[str, list[SpanRecord]] = defaultdict(list)
    for r in spans:
        by_id[r.id].append(r)
    for item_id, group in sorted(by_id.items()):
        merged_spans = []
        for name, (ratings, segments) in per_category.items():
            for k, (start, end) in enumerate(segments[item_id]):
                votes = [ratings[r.annotator or "?"][(item_id, k)] for r in group]
                label, tie = majority(votes)
                if tie:
                    ties.append(f"{item_id}: {name} segment {k} ({start}-{end}): annotators split {Counter(votes)}")
                if label == 1:
                    merged_spans.append({"start": start, "end": end, "label": name})
        first = group[0]
        merged.append({"id": item_id, "prompt": first.prompt, "completion": first.completion, "spans": merged_spans,
                       "annotator": "majority", "meta": {"annotators": sorted(r.annotator or "?" for r in group)}})  # fmt: skip
    pref_groups: dict[tuple, list[PreferenceRecord]] = defaultdict(list)
    for r in prefs:
        pref_groups[(r.category, r.prompt, *sorted((r.chosen, r.rejected)))].append(r)
    for key, group in sorted(pref_groups.items(), key=lambda kv: kv[1][0].id):
        chosen, tie = majority([r.chosen for r in group])
        if tie:
            ties.append(f"{group[0].id}: {key[0]}: annotators split evenly")
            continue
        rejected = next(r.rejected if r.chosen == chosen else r.chosen for r in group)
        merged.append({"id": group[0].id, "prompt": group[0].prompt, "chosen": chosen, "rejected": rejected,
                       "category": key[0], "annotator": "majority"})  # fmt: skip
    return categories, merged, ties


def format_table(categories: dict) -> str:
    lines = [f"{'category':<14} {'kind':<10} {'annotators':>10} {'units':>6}  agreement"]
    for name, c in categories.items():
        statistic = "cohen_kappa" if "cohen_kappa" in c else "krippendorff_alpha"
        extra = f"  percent {c['percent_agreement']:.3f}" if "percent_agreement" in c else ""
        lines.append(f"{name:<14} {c['kind']:<10} {c['annotators']:>10} {c['units']:>6}  {statistic} {c[statistic]:.3f}{extra}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finegrained agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--schema", required=True)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    parser.add_argument("--merge", type=Path, help="write a majority-vote consolidated JSONL")
    args = parser.parse_args(argv)
    schema = load_schema(args.schema)
    categories, merged, ties = report(args.files, schema)
    print(format_table(categories))
    if args.json:
        atomic_write_json(args.json, {"categories": categories, "ties": ties})
    if args.merge:
        atomic_write_jsonl(args.merge, merged)
        print(f"wrote {len(merged)} merged records to {args.merge}; {len(ties)} ties (not decided by majority):")
        for t in ties:
            print(f"  {t}")
    return 0
