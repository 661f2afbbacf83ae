"""What each reward model sees of the prompt: a category's ``context`` (none | question | prompt)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from finegrained.errors import FinegrainedError, InputError
from finegrained.models.tiny import train_tokenizer
from finegrained.commands import train_rm
from finegrained.rewards.context import NoQuestionFound, PromptView, reward_model_prompt
from finegrained.rewards.inference import METADATA_FILE, load_judge
from finegrained.rewards.scorer import RewardScorer
from finegrained.rewards.span_model import MARKER_TOKEN
from finegrained.rewards.directory import init_joint_reward_model_dir, init_reward_model_dir
from finegrained.schema import Category, load_schema

QA_PATTERN = load_schema("qa_feedback").question_pattern
QUESTION = "Wie lang ist die Brücke?"
PASSAGES = "wikipage: Brücke text: Die Brücke ist 1,2 km lang."
QA_PROMPT = f"question: {QUESTION} context: {PASSAGES}"


class RecordingTokenizer:
    """Delegates to a tokenizer and remembers every text it is asked to encode."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.texts: list[str] = []

    def __call__(self, texts, *args, **kwargs):
        self.texts.extend([texts] if isinstance(texts, str) else list(texts))
        return self._tokenizer(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    words = "the bridge is long short river question context answer wikipage text die ist lang".split()
    texts = [" ".join(rng.choices(words, k=12)) for _ in range(100)] + [QA_PROMPT] * 3
    return train_tokenizer(texts, vocab_size=300, extra_special_tokens=[MARKER_TOKEN])


# --------------------------------------------------------------------------------------------------
# The view itself


def test_each_mode_gives_its_view_of_a_qa_feedback_prompt():
    view = PromptView("question", QA_PATTERN)
    assert reward_model_prompt(QA_PROMPT, "none", None) is None
    assert reward_model_prompt(QA_PROMPT, "prompt", None) == QA_PROMPT
    assert view.of(QA_PROMPT) == f"question: {QUESTION}"
    assert view.of("  question:   multi\nword?  context: x") == "question: multi\nword?"
    for unreadable in ["no question here", "question: context: only passages", "context: x question: y"]:
        with pytest.raises(NoQuestionFound, match="finds no question"):
            view.of(unreadable)
    assert PromptView("none").of_many([QA_PROMPT]) is None


def test_shipped_schemas_modes():
    qa = load_schema("qa_feedback")
    assert {c.name: c.context for c in qa.categories} == {
        "relevance": "question", "factuality": "prompt", "completeness": "prompt", "holistic": "prompt",
    }  # fmt: skip
    synthetic = load_schema("synthetic_qa")  # unchanged: every category reads the whole prompt
    assert all(c.context == "prompt" and c.uses_context for c in synthetic.categories)
    assert synthetic.question_pattern is None


def test_category_keeps_the_old_spelling():
    assert Category("r", "sentence", "span").context == "prompt"
    assert Category("r", "sentence", "span", uses_context=False).context == "none"
    assert Category("r", "sentence", "span", context="question").uses_context is True
    with pytest.raises(ValueError, match="contradicts"):
        Category("r", "sentence", "span", uses_context=False, context="prompt")


SCHEMA_HEAD = "name: s\n"
RELEVANCE = "categories:\n  - {{name: relevance, granularity: sentence, kind: span{extra}}}\n"
PATTERN = "prompt: {question_pattern: '^question: (?P<question>.*?) context:'}\n"

BAD_SCHEMAS = {
    "unknown_mode": (RELEVANCE.format(extra=", context: passages"), "categories[0] (relevance).context: unknown context 'passages'"),
    "uses_context_not_bool": (RELEVANCE.format(extra=", uses_context: yes-please"), "categories[0] (relevance).uses_context: must be true or false"),
    "contradiction": (PATTERN + RELEVANCE.format(extra=", context: question, uses_context: false"),
                      "categories[0] (relevance).context: context: question contradicts uses_context: false"),
    "question_without_pattern": (RELEVANCE.format(extra=", context: question"), "categories[0] (relevance).context: context: question needs the schema's prompt.question_pattern"),
    "pattern_does_not_compile": ("prompt: {question_pattern: 'question: (?P<question>'}\n" + RELEVANCE.format(extra=""),
                                 "prompt.question_pattern: not a valid regular expression"),
    "pattern_without_group": ("prompt: {question_pattern: 'question: (.*) context:'}\n" + RELEVANCE.format(extra=""),
                              "prompt.question_pattern: needs a named group 'question'"),
    "prompt_unknown_key": ("prompt: {question_regex: x}\n" + RELEVANCE.format(extra=""), "prompt.question_regex: unknown key"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_SCHEMAS))
def test_bad_context_settings_are_refused_by_key(name, tmp_path):
    body, fragment = BAD_SCHEMAS[name]
    path = tmp_path / "s.yaml"
    path.write_text(SCHEMA_HEAD + body, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_schema(path)
    assert f"{path}: {fragment}" in str(caught.value)


def test_consistent_old_and_new_spellings_load(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCHEMA_HEAD + PATTERN + RELEVANCE.format(extra=", context: question, uses_context: true"))
    assert load_schema(path).category("relevance").context == "question"
    path.write_text(SCHEMA_HEAD + RELEVANCE.format(extra=", uses_context: false"))
    assert load_schema(path).category("relevance").context == "none"


# --------------------------------------------------------------------------------------------------
# What the model's tokenizer sees, per mode (single and joint models)


def _untrained_judge(tmp_path, tokenizer, context: str, kind: str):
    granularity = "sentence" if kind == "span" else "sequence"
    category = Category("c", granularity, kind, context=context)
    directory = init_reward_model_dir(category, tmp_path / f"{kind}-{context}", tokenizer, hidden=16,
                                               n_layer=1, n_head=2, question_pattern=QA_PATTERN)  # fmt: skip
    judge = load_judge(directory, device="cpu")
    judge.tokenizer = RecordingTokenizer(judge.tokenizer)
    return judge


@pytest.mark.parametrize("kind", ["span", "preference"])
@pytest.mark.parametrize(
    "context, expected", [("none", None), ("question", f"question: {QUESTION}"), ("prompt", QA_PROMPT)]
)
def test_the_tokenizer_sees_the_mode_s_view(tmp_path, tokenizer, kind, context, expected):
    judge = _untrained_judge(tmp_path, tokenizer, context, kind)
    completion = "The bridge is long."
    if kind == "span":
        judge([QA_PROMPT], [completion], [[(0, len(completion))]])
    else:
        judge([QA_PROMPT], [completion])
    seen = judge.tokenizer.texts
    assert completion in seen
    prompt_texts = [t for t in seen if t != completion]
    assert prompt_texts == ([] if expected is None else [expected])
    assert not any(PASSAGES in t for t in seen) or context == "prompt"
    assert json.loads((tmp_path / f"{kind}-{context}" / METADATA_FILE).read_text())["context"] == context


def test_scoring_a_prompt_without_a_question_is_a_clear_error(tmp_path, tokenizer):
    judge = _untrained_judge(tmp_path, tokenizer, "question", "preference")
    with pytest.raises(FinegrainedError, match="finds no question in the prompt 'just an instruction'"):
        judge(["just an instruction"], ["an answer"])


def test_joint_model_has_one_view_and_refuses_mixed_modes(tmp_path, tokenizer):
    categories = [Category("relevance", "sentence", "span", context="question"),
                  Category("completeness", "sequence", "preference", context="question")]  # fmt: skip
    directory = init_joint_reward_model_dir(categories, tmp_path / "joint", tokenizer, hidden=16, n_layer=1, n_head=2,
                                            question_pattern=QA_PATTERN)  # fmt: skip
    judge = load_judge(directory, device="cpu")
    judge.tokenizer = RecordingTokenizer(judge.tokenizer)
    judge.score([QA_PROMPT], ["The bridge is long."])
    assert f"question: {QUESTION}" in judge.tokenizer.texts and QA_PROMPT not in judge.tokenizer.texts

    mixed = [categories[0], Category("factuality", "sentence", "span", context="prompt")]
    with pytest.raises(FinegrainedError, match=r"context differs \(relevance: question, factuality: prompt\)"):
        init_joint_reward_model_dir(mixed, tmp_path / "mixed", tokenizer, question_pattern=QA_PATTERN)
    with pytest.raises(FinegrainedError, match="context differs"):
        train_rm.main(["schema=qa_feedback", "categories=[relevance,factuality]", f"data.train={tmp_path / 'x.jsonl'}",
                       f"output_dir={tmp_path / 'out'}"])  # fmt: skip


def test_old_finegrained_json_with_only_uses_context_still_loads(tmp_path, tokenizer):
    _untrained_judge(tmp_path, tokenizer, "prompt", "span")
    directory = tmp_path / "span-prompt"
    metadata = json.loads((directory / METADATA_FILE).read_text())
    del metadata["context"], metadata["question_pattern"]
    for uses_context, mode in [(False, "none"), (True, "prompt")]:
        (directory / METADATA_FILE).write_text(json.dumps({**metadata, "uses_context": uses_context}))
        assert load_judge(directory, device="cpu").prompt_view == PromptView(mode)


def test_old_joint_finegrained_json_reads_the_whole_prompt_when_any_category_did(tmp_path, tokenizer):
    categories = [Category("relevance", "sentence", "span"), Category("factuality", "sentence", "span")]
    joint = init_joint_reward_model_dir(categories, tmp_path / "joint", tokenizer, hidden=16, n_layer=1, n_head=2)
    metadata = json.loads((joint / METADATA_FILE).read_text())
    del metadata["context"], metadata["question_pattern"]
    for name, uses_context in [("relevance", False), ("factuality", True)]:  # how joint models were trained
        del metadata["categories"][name]["context"]
        metadata["categories"][name]["uses_context"] = uses_context
    (joint / METADATA_FILE).write_text(json.dumps(metadata))
    assert load_judge(joint, device="cpu").prompt_view == PromptView("prompt")


# --------------------------------------------------------------------------------------------------
# Training: the refusal names the record; a tiny train-rm with context: question round-trips


def _question_schema(tmp_path) -> Path:
    path = tmp_path / "qa.yaml"
    path.write_text(
        "name: qa\nprompt: {question_pattern: '^\\s*question:\\s*(?P<question>.*?)\\s*context:'}\n"
        "segmentation: {sentence: sentencizer}\ncategories:\n"
        "  - {name: relevance, granularity: sentence, kind: span, error_types: [Irrelevant], context: question}\n",
        encoding="utf-8",
    )
    return path


def _span_records(n: int, seed: int) -> list[dict]:
    """Planted rule: a sentence about 'weather' is irrelevant; the prompt's passages vary, the question not."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        sentences = ["The bridge is long.", "It was opened in 1899.", "The weather is mild today."]
        rng.shuffle(sentences)
        completion = " ".join(sentences[: rng.randint(1, 3)])
        start = completion.find("The weather")
        spans = [] if start < 0 else [{"start": start, "end": start + len("The weather is mild today."), "label": "Irrelevant"}]
        prompt = f"question: {QUESTION} context: wikipage: P{i} text: {' '.join(rng.choices(['die', 'ist', 'lang'], k=5))}"
        records.append({"id": f"r{i}", "prompt": prompt, "completion": completion, "spans": spans})
    return records


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_training_refuses_a_prompt_without_a_question_naming_the_record(tmp_path):
    records = _span_records(6, seed=0)
    records[3]["prompt"] = "summarise the passage: ..."
    data = _write(tmp_path / "spans.jsonl", records)
    with pytest.raises(InputError) as caught:
        train_rm.main([f"schema={_question_schema(tmp_path)}", "category=relevance", f"data.train={data}",
                       f"output_dir={tmp_path / 'rm'}", "train.progress=false"])  # fmt: skip
    message = str(caught.value)
    assert message.startswith(f"{data}: prompt: record 'r3': the question pattern")
    assert "'r0'" not in message and not (tmp_path / "rm").exists()


def test_tiny_train_rm_with_question_context_round_trips(tmp_path):
    data = _write(tmp_path / "spans.jsonl", _span_records(24, seed=1))
    out = tmp_path / "rm"
    assert train_rm.main([
        f"schema={_question_schema(tmp_path)}", "category=relevance", f"data.train={data}", f"output_dir={out}",
        "train.epochs=2", "train.batch_size=8", "train.progress=false", "model.hidden=16", "model.n_layer=1",
        "model.n_head=2", "max_length=64",
    ]) == 0  # fmt: skip
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata["context"] == "question" and "(?P<question>" in metadata["question_pattern"]

    judge = load_judge(out, device="cpu")
    judge.tokenizer = RecordingTokenizer(judge.tokenizer)
    completion = "The bridge is long. The weather is mild today."
    direct = judge([QA_PROMPT], [completion], [[(0, 19), (20, len(completion))]])
    assert judge.tokenizer.texts.count(f"question: {QUESTION}") == 1 and QA_PROMPT not in judge.tokenizer.texts

    # RL-time scoring goes through the same view: the scorer's judgement equals the judge's
    scorer = RewardScorer.from_config({"categories": {"relevance": {"model": str(out), "weight": 1.0, "mode": "soft"}}},
                                      device="cpu")  # fmt: skip
    relevance = scorer([QA_PROMPT], [completion]).categories["relevance"]
    assert relevance.segments[0] == [(0, 19), (20, len(completion))]
    assert relevance.p_error[0] == pytest.approx(direct[0], abs=1e-6)
