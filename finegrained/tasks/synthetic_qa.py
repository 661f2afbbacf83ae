"""The built-in task: grounded QA over small synthetic fact sets, with a noisy writer, simulated
annotators and an oracle. No downloads; small enough for a tiny GPT-2 on a laptop CPU.

A prompt lists a few facts about two fictional places and asks about some attributes of one of them::

    facts: Bora is a town. Bora lies near the river Tal. Bora has 3 bridges. Kelt is a village.
    Kelt is known for its wool. question: Tell me what Bora is and how many bridges it has.

A good answer states every asked attribute of the asked place, correctly, in clauses such as
``Bora is a town, and it has 3 bridges.``

How the oracle reads an answer. It cuts the answer exactly as the ``synthetic_qa`` annotation schema
does (spaCy sentences; sub-sentences split after ``,;:`` with at least 3 words a side) and reads the
claims of each sub-sentence with fixed patterns (``X is a town``, ``lies near the river R``, ``has N
bridges``, ``is known for its T``, ``was founded by P``, and claims no fact can support, such as ``has a
large market``). A claim's subject is the place named in the clause, else the last place named before
it, else the asked place (``it``).

Error units, per category:
- relevance, per sub-sentence: *Irrelevant* when it makes no claim at all or only claims about a place
  the question does not ask about; *Redundant* when every claim it makes was already made earlier in the
  answer;
- factuality, per sentence: *Wrong-Grounding* when a claim contradicts the facts; *Unverifiable* when a
  claim is about something the facts do not state (and none contradicts them);
- completeness, per asked attribute: missing unless the answer states it correctly for the asked place.

Error rates: relevance = erroneous sub-sentences / sub-sentences; factuality = erroneous sentences /
sentences; completeness = missing asked attributes / asked attributes. The **total error rate** is all
error units of the three categories over all units: (erroneous sub-sentences + erroneous sentences +
missing attributes) / (sub-sentences + sentences + asked attributes), pooled over the answers. An empty
answer misses every asked attribute.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass, field

from ..schema import load_schema
from ..segment import get_segmenter

PLACES = (
    "Bora Kelt Miro Sana Tovi Luma Desk Fara Gilo Hask Ivel Jorn Kesa Lito Mavi Nerd Olan Pesk Quin Rova "
    "Silo Tarn Ulma Vesk Wora Yuli Zand Amot Brin Cova"
).split()
KINDS = ("town", "village", "city", "port")
RIVERS = ("Tal", "Oma", "Rin", "Vel", "Sur", "Ked")
GOODS = ("salt", "wool", "fish", "bread", "glass", "tea", "cheese", "wine")
FOUNDERS = ("Ana", "Bo", "Cai", "Dara", "Eli", "Fen")
ATTRIBUTES = ("kind", "river", "bridges", "goods", "founder")
UNSUPPORTED_THINGS = ("market", "castle", "school", "harbor", "tower")
FILLERS = ("the weather is mild", "the roads are long", "many people like stories", "the sky is grey")

QUESTION_PARTS = {
    "kind": "what kind of place {p} is",
    "river": "where {p} lies",
    "bridges": "how many bridges {p} has",
    "goods": "what {p} is known for",
    "founder": "who founded {p}",
}

# Claim patterns; group "subject" is optional (a place name), group "value" is the claimed value.
_NAME = r"(?:(?P<subject>[A-Z][a-z]+)\s+)?"
CLAIM_PATTERNS = {
    "kind": re.compile(_NAME + r"is an? (?P<value>\w+)\b(?! by)"),
    "river": re.compile(_NAME + r"lies near the river (?P<value>\w+)"),
    "bridges": re.compile(_NAME + r"has (?P<value>\w+) bridges?\b"),
    "goods": re.compile(_NAME + r"is known for its (?P<value>\w+)"),
    "founder": re.compile(_NAME + r"was founded by (?P<value>\w+)"),
    "unsupported": re.compile(_NAME + r"has an? (?:large |small |old |new )?(?P<value>\w+)\b(?! bridges)"),
}

DEFAULT_ERROR_RATES = {"wrong": 0.15, "unverifiable": 0.15, "irrelevant": 0.2, "redundant": 0.15, "missing": 0.2}


@dataclass
class Claim:
    subject: str
    attribute: str  # one of ATTRIBUTES, or "unsupported"
    value: str


@dataclass
class Judgement:
    """What the oracle found in one answer (char spans in the answer, unit counts per category)."""

    sub_sentences: list[tuple[int, int]]
    sentences: list[tuple[int, int]]
    relevance_errors: dict[int, str] = field(default_factory=dict)  # sub-sentence index -> error type
    factuality_errors: dict[int, str] = field(default_factory=dict)  # sentence index -> error type
    error_clauses: dict[int, str] = field(default_factory=dict)  # sub-sentence index -> factuality error type
    asked: tuple[str, ...] = ()
    answered: frozenset[str] = frozenset()

    @property
    def missing(self) -> list[str]:
        return [a for a in self.asked if a not in self.answered]

    def counts(self) -> dict[str, int]:
        return {
            "relevance_errors": len(self.relevance_errors),
            "sub_sentences": len(self.sub_sentences),
            "factuality_errors": len(self.factuality_errors),
            "sentences": len(self.sentences),
            "missing": len(self.missing),
            "asked": len(self.asked),
        }

    def n_errors(self) -> int:
        return len(self.relevance_errors) + len(self.factuality_errors) + len(self.missing)


# Prompts ------------------------------------------------------------------------------------------
def _world(rng: random.Random) -> dict[str, dict[str, str]]:
    names = rng.sample(PLACES, 2)
    return {
        n: {
            "kind": rng.choice(KINDS),
            "river": rng.choice(RIVERS),
            "bridges": str(rng.randint(2, 9)),
            "goods": rng.choice(GOODS),
            "founder": rng.choice(FOUNDERS),
        }
        for n in names
    }


def fact_sentence(place: str, attribute: str, value: str, subject: str | None = None) -> str:
    """The clause stating one attribute, e.g. ``Bora has 3 bridges`` (no final period)."""
    s = subject or place
    return {
        "kind": f"{s} is a {value}",
        "river": f"{s} lies near the river {value}",
        "bridges": f"{s} has {value} bridges",
        "goods": f"{s} is known for its {value}",
        "founder": f"{s} was founded by {value}",
    }[attribute]


def _join_parts(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _split_of(prompt: str) -> str:
    """Each prompt text belongs to exactly one split (a hash bucket), so splits never share a prompt."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 9 else "eval" if bucket == 8 else "train"


def make_record(rng: random.Random) -> dict:
    world = _world(rng)
    asked_place, other = list(world)
    n_asked = rng.randint(2, 4)
    asked = tuple(sorted(rng.sample(ATTRIBUTES, n_asked), key=ATTRIBUTES.index))
    extra = rng.choice([a for a in ATTRIBUTES if a not in asked])
    facts = {asked_place: [*asked, extra], other: rng.sample(ATTRIBUTES, 2)}
    lines = [fact_sentence(p, a, world[p][a]) + "." for p in (asked_place, other) for a in sorted(facts[p], key=ATTRIBUTES.index)]
    question = "Tell me " + _join_parts([QUESTION_PARTS[a].format(p=asked_place) for a in asked]) + "."
    prompt = "facts: " + " ".join(lines) + " question: " + question
    return {
        "prompt": prompt,
        "reference": write_answer({"place": asked_place, "asked": asked, "world": world, "facts": facts}, rng, {}),
        "place": asked_place,
        "asked": asked,
        "world": world,
        "facts": {p: list(a) for p, a in facts.items()},
    }


def prompts(split: str, n: int = 256, seed: int = 0) -> list[dict]:
    """``n`` task records of ``split`` (``train``, ``eval`` or ``test``): ``id``, ``prompt``, ``reference``
    and the structured facts (``place``, ``asked``, ``world``, ``facts``). Deterministic per seed; a
    prompt text never appears in two splits."""
    if split not in ("train", "eval", "test"):
        raise ValueError(f"unknown split {split!r}: expected train, eval or test")
    rng = random.Random(f"synthetic_qa:{split}:{seed}")
    records, seen = [], set()
    while len(records) < n:
        r = make_record(rng)
        if _split_of(r["prompt"]) == split and r["prompt"] not in seen:
            seen.add(r["prompt"])
            records.append({"id": f"{split}-{seed}-{len(records)}", **r})
    return records


def parse_prompt(prompt: str) -> dict:
    """Recover the facts and the question from a prompt text (the oracle sees only text)."""
    facts_part, _, question = prompt.partition(" question: ")
    known: dict[str, dict[str, str]] = {}
    for clause in re.split(r"(?<=\.)\s+", facts_part.removeprefix("facts: ").strip()):
        for claim in claims_in(clause.rstrip("."), default_subject=""):
            if claim.subject:
                known.setdefault(claim.subject, {})[claim.attribute] = claim.value
    place_match = re.search(r"\b(" + "|".join(PLACES) + r")\b", question)
    place = place_match.group(1) if place_match else ""
    asked = tuple(a for a in ATTRIBUTES if QUESTION_PARTS[a].format(p=place) in question)
    return {"place": place, "asked": asked, "known": known}


# Answers ------------------------------------------------------------------------------------------
def write_answer(record: dict, rng: random.Random, error_rates: dict[str, float] | None = None) -> str:
    """An answer to ``record`` with errors planted at the given per-answer rates (see
    ``DEFAULT_ERROR_RATES``): ``wrong`` (an asked attribute stated with a wrong value), ``unverifiable``
    (a sentence the facts cannot support), ``irrelevant`` (a clause about the other place or about
    nothing), ``redundant`` (a repeated clause), ``missing`` (an asked attribute left out)."""
    rates = {k: 0.0 for k in DEFAULT_ERROR_RATES} | dict(error_rates or {})
    place, world = record["place"], record["world"]
    other = next(p for p in world if p != place)
    asked = list(record["asked"])
    if len(asked) > 1 and rng.random() < rates["missing"]:
        asked.remove(rng.choice(asked))
    # Items are (place, attribute, value) facts or (None, None, text) fillers; subjects are rendered
    # last, so that "it" always refers to the place the previous fact was about.
    items: list[tuple[str | None, str | None, str]] = []
    for a in asked:
        value = world[place][a]
        if rng.random() < rates["wrong"] / max(1, len(record["asked"])):
            value = _wrong_value(a, value, rng)
        items.append((place, a, value))
    if rng.random() < rates["redundant"] and items:
        items.insert(rng.randint(1, len(items)), rng.choice(items))
    if rng.random() < rates["irrelevant"]:
        if rng.random() < 0.5:
            a = rng.choice(record["facts"][other])
            irrelevant = (other, a, world[other][a])
        else:
            irrelevant = (None, None, rng.choice(FILLERS))
        items.insert(rng.randint(1, len(items)), irrelevant)
    clauses, previous = [], None
    for p, a, value in items:
        if p is None:
            clauses.append(value)
            continue
        clauses.append(fact_sentence(p, a, value, subject="it" if p == previous else None))
        previous = p
    sentences = []
    for i in range(0, len(clauses), 2):
        pair = clauses[i : i + 2]
        text = pair[0] if len(pair) == 1 else f"{pair[0]}, and {pair[1]}"
        sentences.append(text[0].upper() + text[1:] + ".")
    if rng.random() < rates["unverifiable"]:
        thing = rng.choice(UNSUPPORTED_THINGS)
        sentences.insert(rng.randint(1, len(sentences)), f"It has a large {thing}.")
    return " ".join(sentences)


def _wrong_value(attribute: str, value: str, rng: random.Random) -> str:
    pool = {"kind": KINDS, "river": RIVERS, "bridges": [str(i) for i in range(2, 10)], "goods": GOODS, "founder": FOUNDERS}
    return rng.choice([v for v in pool[attribute] if v != value])


def sft_corpus(n: int, seed: int = 0, error_rates: dict[str, float] | None = None, split: str = "train") -> list[dict]:
    """``n`` prompt/completion pairs from the noisy writer (the SFT data of the demo)."""
    rates = DEFAULT_ERROR_RATES if error_rates is None else error_rates
    rng = random.Random(f"synthetic_qa:writer:{seed}")
    return [
        {"id": r["id"], "prompt": r["prompt"], "completion": write_answer(r, rng, rates)}
        for r in prompts(split, n=n, seed=seed)
    ]


# Oracle -------------------------------------------------------------------------------------------
def claims_in(clause: str, default_subject: str) -> list[Claim]:
    """Every claim the patterns find in one clause, with its subject resolved."""
    found = []
    for attribute, pattern in CLAIM_PATTERNS.items():
        for m in pattern.finditer(clause):
            subject = m.group("subject")
            if subject not in PLACES:
                subject = default_subject
            value = m.group("value")
            if attribute == "kind" and value in ("known",):  # "is known for" is the goods pattern
                continue
            found.append(Claim(subject, attribute, value))
    return found


@functools.lru_cache(maxsize=1)
def _segmenter():
    return get_segmenter(load_schema("synthetic_qa").segmentation)


def judge(prompt: str, completion: str, segments: dict | None = None) -> Judgement:
    """The oracle's reading of one answer (see the module docstring for the rules)."""
    facts = parse_prompt(prompt)
    if segments is None:
        segments = _segmenter().segment_many([completion], ("sentence", "sub_sentence"))
        segments = {k: v[0] for k, v in segments.items()}
    sentences, subs = segments["sentence"], segments["sub_sentence"]
    j = Judgement(sub_sentences=subs, sentences=sentences, asked=facts["asked"])
    subject = facts["place"]
    made: set[tuple[str, str, str]] = set()
    answered = set()
    for i, (start, end) in enumerate(subs):
        clause = completion[start:end]
        named = re.findall(r"\b(" + "|".join(PLACES) + r")\b", clause)
        claims = claims_in(clause, default_subject=subject)
        if named:
            subject = named[-1]
        keys = [(c.subject, c.attribute, c.value) for c in claims]
        if not claims or all(c.subject != facts["place"] for c in claims):
            j.relevance_errors[i] = "Irrelevant"
        elif all(k in made for k in keys):
            j.relevance_errors[i] = "Redundant"
        made.update(keys)
        verdicts = [_verify(c, facts["known"]) for c in claims]
        if "wrong" in verdicts:
            j.error_clauses[i] = "Wrong-Grounding"
        elif "unverifiable" in verdicts:
            j.error_clauses[i] = "Unverifiable"
        for c, v in zip(claims, verdicts):
            if v == "correct" and c.subject == facts["place"]:
                answered.add(c.attribute)
    for s_index, (s_start, s_end) in enumerate(sentences):
        types = {t for i, t in j.error_clauses.items() if s_start <= subs[i][0] < s_end}
        if types:
            j.factuality_errors[s_index] = "Wrong-Grounding" if "Wrong-Grounding" in types else "Unverifiable"
    j.answered = frozenset(answered)
    return j


def _verify(claim: Claim, known: dict[str, dict[str, str]]) -> str:
    if claim.attribute == "unsupported":
        return "unverifiable"
    fact = known.get(claim.subject, {}).get(claim.attribute)
    if fact is None:
        return "unverifiable"
    return "correct" if fact == claim.value else "wrong"


def oracle_judgement(prompt: str, completion: str) -> dict[str, int]:
    """Unit counts of one answer: errors and units per category (see the module docstring)."""
    return judge(prompt, completion).counts()


def oracle_error_rates(prompts_: list[str], completions: list[str]) -> dict:
    """Pooled error rates over a batch of answers: ``{"error_rate": {category: rate}, "total_error_rate":
    rate, "counts": {...}}`` (definitions in the module docstring)."""
    segs = _segmenter().segment_many(list(completions), ("sentence", "sub_sentence"))
    totals = dict.fromkeys(("relevance_errors", "sub_sentences", "factuality_errors", "sentences", "missing", "asked"), 0)
    for i, (p, c) in enumerate(zip(prompts_, completions)):
        counts = judge(p, c, {"sentence": segs["sentence"][i], "sub_sentence": segs["sub_sentence"][i]}).counts()
        for k in totals:
            totals[k] += counts[k]

    def rate(errors: int, units: int) -> float:
        return errors / units if units else 0.0

    errors = totals["relevance_errors"] + totals["factuality_errors"] + totals["missing"]
    units = totals["sub_sentences"] + totals["sentences"] + totals["asked"]
    return {
        "error_rate": {
            "relevance": rate(totals["relevance_errors"], totals["sub_sentences"]),
            "factuality": rate(totals["factuality_errors"], totals["sentences"]),
            "completeness": rate(totals["missing"], totals["asked"]),
        },
        "total_error_rate": rate(errors, units),
        "counts": totals,
    }


# Corrections --------------------------------------------------------------------------------------
def _clause_subjects(completion: str, sub_sentences: list[tuple[int, int]], asked_place: str) -> list[str]:
    """The place an ``it`` in each sub-sentence refers to, as ``judge`` resolves it (the last place named
    before the clause, else the asked place)."""
    subjects, subject = [], asked_place
    for start, end in sub_sentences:
        subjects.append(subject)
        named = re.findall(r"\b(" + "|".join(PLACES) + r")\b", completion[start:end])
        if named:
            subject = named[-1]
    return subjects


def _fix_wrong_values(clause: str, default_subject: str, known: dict[str, dict[str, str]]) -> str:
    """The clause with every claimed value that contradicts the facts replaced by the stated one."""
    edits = []
    for attribute in ATTRIBUTES:
        for m in CLAIM_PATTERNS[attribute].finditer(clause):
            subject = m.group("subject") if m.group("subject") in PLACES else default_subject
            fact = known.get(subject, {}).get(attribute)
            if fact is not None and m.group("value") != fact and not (attribute == "kind" and m.group("value") == "known"):
                edits.append((*m.span("value"), fact))
    for start, end, value in sorted(edits, reverse=True):
        clause = clause[:start] + value + clause[end:]
    return clause


def _as_sentence(clauses: list[str]) -> str:
    """Kept clauses of one sentence joined back: no leading ``and``, a capital first letter, a final period."""
    text = " ".join(clauses)
    text = re.sub(r"^(?:and|but)\s+", "", text, flags=re.IGNORECASE)
    text = text.rstrip(",;: ")
    if not text.endswith((".", "!", "?")):
        text += "."
    return text[0].upper() + text[1:]


def correct_answer(prompt: str, completion: str) -> str | None:
    """The answer as a careful annotator corrects it (RLHF-V style, minimal edits): irrelevant, redundant
    and unverifiable clauses deleted, wrong values replaced by the facts' values, missing asked attributes
    appended as sentences (``Bora has 3 bridges.``). Deterministic, no random draws. None when there is
    nothing to correct, or when the edited text is not better by the oracle (fewer error units)."""
    j = judge(prompt, completion)
    if not j.n_errors():
        return None
    facts = parse_prompt(prompt)
    place, known = facts["place"], facts["known"]
    subjects = _clause_subjects(completion, j.sub_sentences, place)
    sentences = []
    for s_start, s_end in j.sentences:
        kept = []
        for i, (start, end) in enumerate(j.sub_sentences):
            if not s_start <= start < s_end or i in j.relevance_errors or j.error_clauses.get(i) == "Unverifiable":
                continue
            clause = completion[start:end]
            if j.error_clauses.get(i) == "Wrong-Grounding":
                clause = _fix_wrong_values(clause, subjects[i], known)
            kept.append(clause)
        if kept:
            sentences.append(_as_sentence(kept))
    corrected = " ".join(sentences)
    missing = judge(prompt, corrected).missing if corrected else list(j.asked)
    sentences += [fact_sentence(place, a, known[place][a]) + "." for a in missing if a in known.get(place, {})]
    corrected = " ".join(sentences)
    if not corrected or corrected == completion or judge(prompt, corrected).n_errors() >= j.n_errors():
        return None
    return corrected


# Simulated annotators -----------------------------------------------------------------------------
def annotate_spans(
    prompt: str, completion: str, annotator: str = "ann-0", noise: float = 0.0, rng: random.Random | None = None
) -> dict:
    """A span record (DESIGN.md section 3) as a careful annotator would write it: each erroneous clause
    marked with its error type (relevance errors on the sub-sentence, factuality errors on the clause
    holding the bad claim). With ``noise`` > 0 each sub-sentence's judgement flips with that probability.
    When the answer has errors the record also carries ``correction`` (``correct_answer``, after ``meta``):
    the careful annotator's corrected answer, derived without random draws and free of label noise, so the
    draws from ``rng`` and every other field are those of an annotator who writes no corrections."""
    rng = rng or random.Random(0)
    j = judge(prompt, completion)
    spans = []
    for i, (start, end) in enumerate(j.sub_sentences):
        relevance = j.relevance_errors.get(i)
        factuality = j.error_clauses.get(i)
        if noise and rng.random() < noise:
            relevance = None if relevance else rng.choice(["Irrelevant", "Redundant"])
        if noise and rng.random() < noise:
            factuality = None if factuality else rng.choice(["Wrong-Grounding", "Unverifiable"])
        if relevance:
            spans.append({"start": start, "end": end, "label": relevance})
        if factuality:
            spans.append({"start": start, "end": end, "label": factuality})
    record = {"id": "", "prompt": prompt, "completion": completion, "spans": spans, "annotator": annotator, "meta": {}}
    correction = correct_answer(prompt, completion)
    if correction is not None:
        record["correction"] = correction
    return record


def annotate_preference(
    prompt: str,
    a: str,
    b: str,
    category: str,
    annotator: str = "ann-0",
    noise: float = 0.0,
    rng: random.Random | None = None,
) -> dict | None:
    """A preference record for ``completeness`` (more asked attributes stated correctly wins) or
    ``holistic`` (fewer error units of all kinds wins, as an overall judgement); None for a tie."""
    rng = rng or random.Random(0)
    ja, jb = judge(prompt, a), judge(prompt, b)
    if category == "completeness":
        score_a, score_b = -len(ja.missing), -len(jb.missing)
    elif category == "holistic":
        score_a, score_b = -ja.n_errors(), -jb.n_errors()
    else:
        raise ValueError(f"no simulated preference for category {category!r}")
    if score_a == score_b or a == b:
        return None
    a_wins = score_a > score_b
    if noise and rng.random() < noise:
        a_wins = not a_wins
    chosen, rejected = (a, b) if a_wins else (b, a)
    return {"id": "", "prompt": prompt, "chosen": chosen, "rejected": rejected, "category": category, "annotator": annotator}


# Rule judges (docs/ARCHITECTURE.md "Judges") -------------------------------------------------------
def oracle_span_judge(category: str):
    """A span judge giving the oracle's verdict (0/1) per segment of ``category`` (relevance or factuality)."""

    def judge_segments(prompts_, completions, segments):
        out = []
        for p, c, segs in zip(prompts_, completions, segments):
            j = judge(p, c)
            units = j.sub_sentences if category == "relevance" else j.sentences
            errors = j.relevance_errors if category == "relevance" else j.factuality_errors
            bad = {units[i] for i in errors}
            out.append([1.0 if tuple(s) in bad else 0.0 for s in segs])
        return out

    return judge_segments


def oracle_sequence_judge(category: str = "completeness"):
    """A sequence judge: minus the number of missing attributes (completeness) or of all error units (holistic)."""

    def judge_sequences(prompts_, completions):
        js = [judge(p, c) for p, c in zip(prompts_, completions)]
        return [float(-len(j.missing) if category == "completeness" else -j.n_errors()) for j in js]

    return judge_sequences


# Offline preference data -------------------------------------------------------------------------
def simulated_annotations(kind: str, category: str | None = None, split: str = "train", n_prompts: int = 128,
                          samples_per_prompt: int = 2, seed: int = 1) -> list[dict]:  # fmt: skip
    """Annotated records for offline preference training without any file (``finegrained dpo``'s default
    data): ``samples_per_prompt`` answers of the noisy writer to each of ``n_prompts`` prompts of ``split``,
    judged by a careful simulated annotator. ``kind="preference"``: a preference record of ``category``
    (``holistic`` when None, or ``completeness``) for each non-tied pair of answers; ``kind="span"``: one span
    record per answer, with a ``correction`` when the answer has errors. Its own random stream: the demo's
    annotations do not change."""
    if kind not in ("preference", "span"):
        raise ValueError(f"kind must be 'preference' or 'span', got {kind!r}")
    rng = random.Random(f"synthetic_qa:offline:{split}:{seed}")
    out = []
    for record in prompts(split, n=n_prompts, seed=seed):
        answers = [write_answer(record, rng, DEFAULT_ERROR_RATES) for _ in range(samples_per_prompt)]
        if kind == "span":
            for j, answer in enumerate(answers):
                out.append({**annotate_spans(record["prompt"], answer), "id": f"{record['id']}-s{j}"})
            continue
        for a in range(len(answers)):
            for b in range(a + 1, len(answers)):
                pref = annotate_preference(record["prompt"], answers[a], answers[b], category or "holistic")
                if pref is not None:
                    out.append({**pref, "id": f"{record['id']}-{category or 'holistic'}-{a}v{b}"})
    return out
