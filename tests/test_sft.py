"""SFT: loss only on completion tokens; a short run lowers eval loss and writes a loadable policy."""

from __future__ import annotations

import json

import pytest

from finegrained import sft
from finegrained.commands import sft as sft_command
from finegrained.config import compose_from_argv
from finegrained.errors import FinegrainedError, InputError
from finegrained.models.tiny import train_tokenizer


def test_labels_mask_the_prompt_and_keep_eos():
    tok = train_tokenizer(["question: a b c answer: x y z"] * 20, vocab_size=300)
    ids, labels = sft.encode_example(tok, "question: a b c", " answer: x y z", max_length=64)
    prompt_len = len(tok("question: a b c", add_special_tokens=False).input_ids)
    assert labels[:prompt_len] == [sft.IGNORE_INDEX] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert ids[-1] == tok.eos_token_id
    # too long: the prompt is cut from the left, the completion is kept whole
    cut_ids, cut_labels = sft.encode_example(tok, "question: a b c " * 10, " answer: x y z", max_length=12)
    assert len(cut_ids) == 12 and cut_ids[-1] == tok.eos_token_id
    assert sft.encode_example(tok, "q", " answer: x y z " * 20, max_length=8) is None
    batch = sft.collate([(ids, labels), (cut_ids, cut_labels)], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, max(len(ids), 12))
    assert (batch["labels"][batch["attention_mask"] == 0] == sft.IGNORE_INDEX).all()


def test_model_dropout_reaches_the_policy_config():
    from finegrained.models.tiny import tiny_causal_lm

    tok = train_tokenizer(["question: a b c answer: x y z"] * 20, vocab_size=300)
    default = compose_from_argv("sft", [])
    assert default.model.dropout == 0.1  # GPT-2's own default: the full demo's SFT is unchanged
    cfg = compose_from_argv("sft", ["model.dropout=0.0", "model.n_layer=1", "model.n_embd=32"])
    model, _ = sft.build_model(cfg, ["question: a b c answer: x y z"] * 20)
    assert (model.config.embd_pdrop, model.config.attn_pdrop, model.config.resid_pdrop) == (0.0, 0.0, 0.0)
    model.train()  # without dropout, training mode is deterministic
    ids = tok("question: a b c", return_tensors="pt").input_ids
    assert (model(ids).logits == model(ids).logits).all()
    dropped = tiny_causal_lm(tok, n_layer=1, n_embd=32, seed=0).train()
    assert not (dropped(ids).logits == dropped(ids).logits).all()


def test_short_sft_run_lowers_eval_loss_and_writes_final(tmp_path):
    out = tmp_path / "sft"
    argv = [f"output_dir={out}", "data.n_train=128", "data.n_eval=16", "train.epochs=4", "train.batch_size=16", "train.lr=5e-3",
            "model.n_layer=1", "model.n_embd=32", "model.vocab_size=300", "train.progress=false"]  # fmt: skip
    cfg = compose_from_argv("sft", argv)
    result = sft.train_sft(cfg)
    assert result["eval_loss"] < result["initial_eval_loss"] - 0.5
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert (out / "final" / "model.safetensors").is_file()
    assert model.config.vocab_size == len(tok)
    with pytest.raises(FinegrainedError, match="already exists"):
        sft_command.main(argv)


def test_bad_pairs_file_names_file_line_and_field(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" + json.dumps({"prompt": "p", "completion": None}) + "\n{oops\n")
    with pytest.raises(InputError) as info:
        sft.read_pairs(bad)
    text = str(info.value)
    assert f"{bad}:2: completion: must be a string" in text
    assert f"{bad}:3: not valid JSON" in text


def test_without_eval_data_sft_says_so_instead_of_nan(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"question {i}:", "completion": f" answer {i}"}) + "\n" for i in range(8)))
    argv = [f"output_dir={tmp_path / 'sft'}", f"data.train={pairs}", "train.epochs=1", "train.batch_size=4",
            "model.n_layer=1", "model.n_embd=32", "model.vocab_size=300", "train.progress=false"]  # fmt: skip
    assert sft_command.main(argv) == 0
    err = capsys.readouterr().err
    assert "nan" not in err and "no eval data" in err
    assert "[sft] 2/2 steps" in err  # train.progress=false still writes a summary line
