import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``FINEGRAINED_REQUIRE_OPTIONAL=1`` (CI, which installs every optional extra) a skipped test fails:
    a broken optional install must not pass as a skip. Tests marked ``external`` (they need a program CI does
    not install, such as a Label Studio server) may still skip."""
    outcome = yield
    report = outcome.get_result()
    required = os.environ.get("FINEGRAINED_REQUIRE_OPTIONAL") == "1"
    if required and report.skipped and not hasattr(report, "wasxfail") and "external" not in item.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped ({reason}), but FINEGRAINED_REQUIRE_OPTIONAL=1: CI installs every optional extra"


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory):
    """A tiny causal-LM policy directory (1 layer, 32 wide, its own tokenizer) for sampling tests."""
    from finegrained.models.tiny import tiny_causal_lm, train_tokenizer

    path = tmp_path_factory.mktemp("policy")
    tok = train_tokenizer(["facts: Bora is a town. question: what is Bora?"] * 30, vocab_size=300)
    tiny_causal_lm(tok, n_layer=1, n_embd=32, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path
