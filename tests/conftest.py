import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory):
    """A tiny causal-LM policy directory (1 layer, 32 wide, its own tokenizer) for sampling tests."""
    from finegrained.models.tiny import tiny_causal_lm, train_tokenizer

    path = tmp_path_factory.mktemp("policy")
    tok = train_tokenizer(["facts: Bora is a town. question: what is Bora?"] * 30, vocab_size=300)
    tiny_causal_lm(tok, n_layer=1, n_embd=32, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path
