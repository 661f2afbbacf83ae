"""Prompts longer than the policy's position limit: cut from the left (counted) or refused, never a crash."""

from __future__ import annotations

import json

import pytest
import torch

from finegrained.commands import evaluate, sample
from finegrained.errors import InputError
from finegrained.rl.generation import encode_prompts, fit_prompts, prompt_token_budget
from finegrained.models.tiny import tiny_causal_lm, train_tokenizer

N_POSITIONS = 64
LONG = "facts: Bora is a town near the river Tal and it has three bridges. " * 12 + "question: what is Bora?"
SHORT = "question: what is Bora?"


@pytest.fixture(scope="module")
def short_policy(tmp_path_factory):
    """A tiny GPT-2 that attends over only 64 positions."""
    path = tmp_path_factory.mktemp("policy64")
    tok = train_tokenizer([LONG, SHORT] * 20, vocab_size=300)
    tiny_causal_lm(tok, n_layer=1, n_embd=32, n_positions=N_POSITIONS, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory, short_policy):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("prompts") / "long.jsonl"
    path.write_text(json.dumps({"id": "long", "prompt": LONG, "reference": "a town"}) + "\n"
                    + json.dumps({"id": "short", "prompt": SHORT, "reference": "a town"}) + "\n")  # fmt: skip
    assert len(AutoTokenizer.from_pretrained(short_policy)(LONG).input_ids) > 3 * N_POSITIONS  # really too long
    return path


def test_left_rule_keeps_the_end_of_the_prompt(short_policy):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(short_policy)
    full = tok(LONG, add_special_tokens=False).input_ids
    ids, mask = encode_prompts(tok, [LONG, SHORT], "cpu", max_tokens=20)
    assert ids.shape == (2, 20)
    assert ids[0].tolist() == full[-20:]
    assert mask[1].sum() == len(tok(SHORT, add_special_tokens=False).input_ids)
    fit = fit_prompts(tok, [{"id": "a", "prompt": LONG}, {"id": "b", "prompt": SHORT}], 20, "left", who="test")
    assert fit.n_truncated == 1 and fit.dropped == [len(full) - 20]
    with pytest.raises(InputError, match=r"src: prompt: record 'a' has \d+ tokens; the policy allows 20"):
        fit_prompts(tok, [{"id": "a", "prompt": LONG}, {"id": "b", "prompt": SHORT}], 20, "error", who="test", source="src")


def test_budget_leaves_room_for_the_response(short_policy):
    from transformers import AutoModelForCausalLM

    from finegrained.errors import FinegrainedError

    model = AutoModelForCausalLM.from_pretrained(short_policy)
    assert prompt_token_budget([model], 16) == N_POSITIONS - 16
    with pytest.raises(FinegrainedError, match="max_new_tokens=64 leaves no room"):
        prompt_token_budget([model], 64)


def test_sample_cuts_long_prompts_or_refuses_them(short_policy, prompt_file, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    argv = ["--policy", str(short_policy), "--prompts", str(prompt_file), "--output", str(out), "--max-new-tokens", "16"]
    assert sample.main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == [LONG, SHORT]  # the written prompt is the whole text
    assert "cut 1 of 2 prompts from the left to their last 48 tokens" in capsys.readouterr().err
    out.unlink()
    with pytest.raises(InputError, match=r"long.jsonl: prompt: record 'long' has \d+ tokens"):
        sample.main([*argv, "--truncate", "error"])
    assert not out.exists()


def test_evaluate_long_prompts_without_an_oracle(short_policy, prompt_file, tmp_path, capsys):
    argv = [f"output_dir={tmp_path}", "task=jsonl", f"task.eval={prompt_file}", "generation.max_new_tokens=16",
            f"policies.a={short_policy}"]  # fmt: skip
    assert evaluate.main(argv) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    entry = report["policies"]["a"]
    assert entry["n"] == 2 and entry["prompts_truncated"] == 1
    assert entry["kl"] == pytest.approx(0.0, abs=1e-6)
    assert "error_rate" not in entry
    printed = capsys.readouterr().out
    assert "err:" not in printed and "total_err" not in printed and " - " not in printed
    assert "no oracle for this task" in printed


def test_evaluate_prints_reward_model_scores(short_policy, prompt_file, tmp_path, capsys):
    argv = [f"output_dir={tmp_path}", "task=jsonl", f"task.eval={prompt_file}", "generation.max_new_tokens=8",
            f"policies.a={short_policy}", "+reward=rule_based"]  # fmt: skip
    assert evaluate.main(argv) == 0
    entry = json.loads((tmp_path / "eval.json").read_text())["policies"]["a"]
    header = capsys.readouterr().out.splitlines()[0].split()
    assert "rm_total" in header and all(f"rm:{name}" in header for name in entry["rewards"])


def test_ppo_smoke_with_a_jsonl_task_and_a_64_position_policy(tmp_path, capsys):
    from finegrained.commands import ppo

    prompts = tmp_path / "train.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": LONG.replace("three", str(i)) if i % 2 else SHORT + f" {i}"}) + "\n"
                               for i in range(16)))  # fmt: skip
    argv = ["experiment=smoke", f"output_dir={tmp_path / 'run'}", "log.progress=false", "task=jsonl", f"task.train={prompts}",
            f"policy.n_positions={N_POSITIONS}", "ppo.iterations=2", "ppo.batch_size=8", "checkpoint.every=0"]  # fmt: skip
    assert ppo.main(argv) == 0
    err = capsys.readouterr().err
    assert "[ppo] cut 8 of 16 prompts from the left to their last 48 tokens" in err
    assert "[ppo] 2/2 iterations" in err  # the progress line of a non-terminal stderr
    with pytest.raises(InputError, match="record 'q1' has"):
        ppo.main([*argv, "task.truncate=error", "overwrite=true"])


def test_reward_models_never_read_past_their_positions(tmp_path):
    from finegrained.rewards.inference import load_judge
    from finegrained.rewards.directory import init_reward_model_dir
    from finegrained.schema import Category

    tok = train_tokenizer([LONG, SHORT] * 20, vocab_size=300)
    span = init_reward_model_dir(Category("factuality", "sentence", "span", uses_context=True), tmp_path / "span", tok,
                                 hidden=32, n_layer=1, max_length=32)  # fmt: skip
    pref = init_reward_model_dir(Category("completeness", "sequence", "preference"), tmp_path / "pref", tok,
                                 hidden=32, n_layer=1, max_length=32)  # fmt: skip
    completion = "Bora is a town. It has three bridges."
    span_judge, pref_judge = load_judge(span, device="cpu"), load_judge(pref, device="cpu")
    p = span_judge.score_segments([LONG], [completion * 6], [[(0, 15), (16, 37), (38, len(completion * 6))]])
    assert len(p[0]) == 3 and all(0.0 <= x <= 1.0 for x in p[0])
    scores = pref_judge.score_sequences([LONG, LONG], [completion, completion * 20])
    assert all(torch.isfinite(torch.tensor(scores)))


def test_right_rule_keeps_the_start_of_the_prompt(short_policy):
    from transformers import AutoTokenizer

    from finegrained.rl.generation import TRUNCATE_RULES, cut_prompt_ids
    from finegrained.settings import TASK

    assert TASK["truncate"].choices == TRUNCATE_RULES  # task.truncate accepts exactly what the code applies
    tok = AutoTokenizer.from_pretrained(short_policy)
    full = tok(LONG, add_special_tokens=False).input_ids
    ids, mask = encode_prompts(tok, [LONG, SHORT], "cpu", max_tokens=20, truncate="right")
    assert ids.shape == (2, 20) and ids[0].tolist() == full[:20] and bool(mask[0].all())
    short = tok(SHORT, add_special_tokens=False).input_ids
    assert ids[1, 20 - len(short) :].tolist() == short and int(mask[1].sum()) == len(short)  # left-padded, uncut
    assert cut_prompt_ids(full, None, "right") == full and cut_prompt_ids(full, len(full), "error") == full
    with pytest.raises(ValueError, match="truncate='error'"):
        cut_prompt_ids(full, 20, "error")
    fit = fit_prompts(tok, [{"id": "a", "prompt": LONG}, {"id": "b", "prompt": SHORT}], 20, "right", who="test")
    assert fit.dropped == [len(full) - 20]
    assert fit.message("test").startswith("[test] cut 1 of 2 prompts from the right to their first 20 tokens")
    with pytest.raises(InputError, match="truncate=right the first 20"):
        fit_prompts(tok, [{"id": "a", "prompt": LONG}], 20, "error", who="test")


def test_right_rule_in_generation_rollout_and_kl(short_policy):
    """generate, PPO's sample_responses and response_kl all read the prompt's first tokens under ``right``;
    checked against greedy decoding and a plain KL loop from the cut prompt."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finegrained.rl.generation import generate, prepare_tokenizer, response_kl
    from finegrained.rl.rollout import sample_responses

    tok = AutoTokenizer.from_pretrained(short_policy)
    prepare_tokenizer(tok)
    policy = AutoModelForCausalLM.from_pretrained(short_policy).eval()
    reference = tiny_causal_lm(tok, n_layer=1, n_embd=32, n_positions=N_POSITIONS, seed=1).eval()
    first = tok(LONG, add_special_tokens=False).input_ids[: N_POSITIONS - 8]
    [g] = generate(policy, tok, [LONG], max_new_tokens=8, truncate="right")
    assert g.prompt_budget == N_POSITIONS - 8 and g.prompt_truncate == "right"
    ids = torch.tensor([first])
    with torch.no_grad():
        greedy = policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, len(first) :].tolist()  # fmt: skip
    assert g.response_ids == greedy[: len(g.response_ids)]
    query, _, _, _ = sample_responses(policy, tok, [LONG], max_new_tokens=4, max_prompt_tokens=20, truncate="right")
    assert query[0].tolist() == first[:20]
    # the KL along the response, from the same cut prompt, one position at a time
    expected, context = 0.0, list(first)
    with torch.no_grad():
        for token in g.response_ids:
            x = torch.tensor([context])
            logp = F.log_softmax(policy(x).logits[0, -1].float(), -1)
            logq = F.log_softmax(reference(x).logits[0, -1].float(), -1)
            expected += float((logp.exp() * (logp - logq)).sum())
            context.append(token)
    assert response_kl(policy, reference, tok, [g]) == pytest.approx([expected], rel=1e-4, abs=1e-5)


def test_sample_and_sft_cut_from_the_right(short_policy, prompt_file, tmp_path, capsys):
    from transformers import AutoTokenizer

    from finegrained import sft

    out = tmp_path / "out.jsonl"
    argv = ["--policy", str(short_policy), "--prompts", str(prompt_file), "--output", str(out), "--max-new-tokens", "16",
            "--truncate", "right"]  # fmt: skip
    assert sample.main(argv) == 0
    assert "cut 1 of 2 prompts from the right to their first 48 tokens" in capsys.readouterr().err
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == [LONG, SHORT]
    tok = AutoTokenizer.from_pretrained(short_policy)
    full = tok(LONG, add_special_tokens=False).input_ids
    ids, labels = sft.encode_example(tok, LONG, " a town", max_length=32, truncate="right")
    n_prompt = labels.count(sft.IGNORE_INDEX)
    assert ids[:n_prompt] == full[:n_prompt] and len(ids) == 32
    pairs = [{"prompt": LONG, "completion": " a town", "_line": 3}]
    with pytest.raises(InputError, match=r"pairs.jsonl:3: prompt: prompt and completion have \d+ tokens; the model holds 32"):
        sft.encode_all(tok, pairs, 32, "training", truncate="error", source="pairs.jsonl")
