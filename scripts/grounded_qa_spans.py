#!/usr/bin/env python3
# A realistic grounded-QA span set to develop reward models against when no human annotations are at
# hand (QA-Feedback cannot be downloaded here). Usage: python scripts/grounded_qa_spans.py OUT.jsonl SEED N
# The figures in the closing note of the reward-model issue came from
#   python scripts/grounded_qa_spans.py train.jsonl 1 400 && python scripts/grounded_qa_spans.py eval.jsonl 2 150
#   finegrained train-rm category=relevance data.train=train.jsonl data.eval=eval.jsonl output_dir=rm-rel [model=minilm]
"""A realistic-ish synthetic grounded-QA span set: facts in the prompt; answers mix grounded sentences,
wrong-grounding (a fact with a wrong value), unverifiable claims, irrelevant clauses and repeats."""
import json, random, sys
PEOPLE = ["Ada Byron", "Marie Curie", "Alan Turing", "Grace Hopper", "Niels Bohr", "Emmy Noether", "Carl Gauss", "Lise Meitner"]
CITIES = ["Paris", "London", "Vienna", "Berlin", "Rome", "Madrid", "Oslo", "Prague", "Dublin", "Lisbon"]
FIELDS = ["chemistry", "physics", "mathematics", "computing", "astronomy", "biology"]
YEARS = list(range(1790, 1960))
FILLER = ["which many people find interesting", "as is often mentioned in textbooks", "and the weather was mild that year",
          "although some say the food there is excellent", "while the local river flooded twice"]
def facts(rng, who):
    return {"born": rng.choice(YEARS), "city": rng.choice(CITIES), "field": rng.choice(FIELDS), "prize": rng.choice(YEARS)}
def sent(kind, who, f, rng):
    other = {"born": rng.choice([y for y in YEARS if y != f["born"]]), "city": rng.choice([c for c in CITIES if c != f["city"]]),
             "field": rng.choice([x for x in FIELDS if x != f["field"]])}
    key = rng.choice(["born", "city", "field"])
    val = f if kind == "ok" else other
    t = {"born": f"{who} was born in {val['born']}", "city": f"{who} lived in {val['city']}", "field": f"{who} worked in {val['field']}"}[key]
    if kind == "unverifiable":
        t = rng.choice([f"{who} had {rng.randint(2,9)} siblings", f"{who} enjoyed playing the violin", f"{who} once visited {rng.choice(CITIES)} in winter"])
    return t
def record(i, rng):
    who = rng.choice(PEOPLE); f = facts(rng, who)
    prompt = (f"question: Tell me about {who}. context: {who} was born in {f['born']}. {who} lived in {f['city']}. "
              f"{who} worked in {f['field']}. {who} received a prize in {f['prize']}.")
    parts, spans, pos = [], [], 0
    for k in range(rng.randint(2, 5)):
        r = rng.random()
        kind = "ok" if r < 0.6 else ("wrong" if r < 0.8 else "unverifiable")
        s = sent(kind, who, f, rng)
        start = pos + (1 if parts else 0)
        irr = None
        if rng.random() < 0.2:
            filler = rng.choice(FILLER)
            irr = (start + len(s) + 2, start + len(s) + 2 + len(filler))
            s = s + ", " + filler
        s += "."
        if kind == "wrong": spans.append({"start": start, "end": start + len(s) - 1, "label": "Wrong-Grounding"})
        if kind == "unverifiable": spans.append({"start": start, "end": start + len(s) - 1, "label": "Unverifiable"})
        if irr: spans.append({"start": irr[0], "end": irr[1], "label": "Irrelevant"})
        if parts and rng.random() < 0.1:  # repeat an earlier sentence verbatim
            s = parts[0]
            spans = [sp for sp in spans if sp["start"] < start]
            spans.append({"start": start, "end": start + len(s), "label": "Redundant"})
        parts.append(s); pos = start + len(s)
    return {"id": f"q{i}", "prompt": prompt, "completion": " ".join(parts), "spans": spans}
rng = random.Random(int(sys.argv[2]))
with open(sys.argv[1], "w") as out:
    for i in range(int(sys.argv[3])): out.write(json.dumps(record(i, rng)) + "\n")
