"""The annotation page in real headless Chromium (Debian's ``chromium`` driven by Playwright).

Set-up: ``scripts/install_browser.sh`` (apt chromium + ``pip install playwright``; no ``playwright install``).
Skipped, with the reason, when either is missing. Run with ``pytest -m browser tests/test_app_browser.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from finegrained.app.server import build_server, serve_in_thread
from finegrained.schema import load_schema

pytestmark = pytest.mark.browser

CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def _chromium() -> str | None:
    explicit = os.environ.get("FINEGRAINED_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    # Prefer the real binary over Debian's wrapper script (the wrapper adds flags and a shell start-up).
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return shutil.which("chromium")


def _missing(reason: str) -> None:
    # CI installs the browser (.ci/run) and sets FINEGRAINED_REQUIRE_BROWSER=1, so that a broken install
    # fails loudly there instead of quietly skipping the only tests of the page itself.
    if os.environ.get("FINEGRAINED_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " and FINEGRAINED_REQUIRE_BROWSER=1")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        _missing("Playwright is not installed (scripts/install_browser.sh)")
    executable = _chromium()
    if executable is None:
        _missing("Chromium is not installed (scripts/install_browser.sh: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


# The emoji is one code point in Python but two UTF-16 units in JavaScript: a page that counted UTF-16
# units would save every offset after it one too far.
EMOJI_COMPLETION = "🦜 Bora is a town. It has 3 bridges, and the weather is mild."
HOSTILE_COMPLETION = (
    '<script>window.__pwned = "script"</script>'
    '<img src=x onerror="window.__pwned = \'img\'"> and <b>bold</b> &amp; text'
)


def _serve(tmp_path, rows, annotator="ann-1"):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    output = tmp_path / "annotations.jsonl"
    server = build_server(load_schema("synthetic_qa"), items, output, annotator, port=0)
    serve_in_thread(server)
    return server, output


def _new_page(browser):
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the page's CSP (rightly) forbids.
    # It also makes the XSS test stricter: text-only rendering must hold even without the CSP backstop.
    page = browser.new_context(bypass_csp=True).new_page()
    page.set_default_timeout(10_000)  # fail fast: every step here takes milliseconds when it works
    return page


def _select(page, text: str) -> None:
    """Select the first occurrence of ``text`` in the completion, as a mouse drag would (a DOM Range)."""
    page.evaluate(
        """(needle) => {
            const container = document.getElementById('completion');
            const walker = document.createTreeWalker(container, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                const at = node.data.indexOf(needle);
                if (at >= 0) {
                    const range = document.createRange();
                    range.setStart(node, at);
                    range.setEnd(node, at + needle.length);
                    const selection = window.getSelection();
                    selection.removeAllRanges();
                    selection.addRange(range);
                    return;
                }
            }
            throw new Error('text not found: ' + needle);
        }""",
        text,
    )
    page.wait_for_function(
        "(needle) => document.getElementById('selection-text').textContent.includes(needle.trim())", arg=text
    )


def test_select_label_submit_reload_finds_the_record(browser, tmp_path):
    rows = [
        {"id": "q1", "prompt": "facts: Bora is a town. question: how many bridges?", "completion": EMOJI_COMPLETION},
        {"id": "q2", "prompt": "question: what is Kelt?", "completion": "Kelt is a village."},
    ]
    server, output = _serve(tmp_path, rows)
    try:
        page = _new_page(browser)
        page.goto(server.url)
        page.wait_for_function("document.getElementById('completion').textContent.length > 0")
        assert page.text_content("#progress-text").startswith("Item 1 of 2")
        assert "contradicts the facts" in page.text_content("#category-list")  # the schema's guidance

        # a selection with a leading space (trimmed by the page), labelled with the shortcut key "1"
        _select(page, " the weather is mild")
        page.keyboard.press("1")  # 1 = Irrelevant (relevance)
        _select(page, "It has 3 bridges")
        page.click("button.label-button[data-label='Wrong-Grounding']")
        assert page.locator("#span-list li").count() == 2
        assert page.locator("#completion .hl").count() == 2
        # remove a span and put it back: removal works and the record below has both
        page.locator("#span-list li", has_text="It has 3 bridges").locator("button.remove").click()
        assert page.locator("#span-list li").count() == 1
        _select(page, "It has 3 bridges")
        page.keyboard.press("3")  # 3 = Wrong-Grounding
        page.click("#submit")
        page.wait_for_function("document.getElementById('progress-text').textContent.startsWith('Item 2 of 2')")

        page.reload()  # the only unannotated item left is q2: the page resumes there
        page.wait_for_function("document.getElementById('item-id').textContent === 'q2'")
        assert "1 annotated" in page.text_content("#progress-text")
        page.click("#no-errors")
        page.wait_for_function("document.getElementById('status').textContent.includes('All 2 items')")
        page.close()
    finally:
        server.shutdown()
        server.server_close()

    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == ["q1", "q2"]
    first = records[0]
    assert first["annotator"] == "ann-1" and first["meta"]["submitted_at"].endswith("Z")
    spans = sorted((s["start"], s["end"], s["label"]) for s in first["spans"])
    weather = EMOJI_COMPLETION.index("the weather is mild")
    bridges = EMOJI_COMPLETION.index("It has 3 bridges")
    assert spans == [(bridges, bridges + len("It has 3 bridges"), "Wrong-Grounding"),
                     (weather, weather + len("the weather is mild"), "Irrelevant")]  # fmt: skip
    assert EMOJI_COMPLETION[weather : weather + len("the weather is mild")] == "the weather is mild"
    assert records[1]["spans"] == []


def test_hostile_completion_renders_as_inert_text(browser, tmp_path):
    rows = [{"id": "x", "prompt": '<img src=x onerror="window.__pwned = \'prompt\'">', "completion": HOSTILE_COMPLETION}]
    server, _ = _serve(tmp_path, rows)
    try:
        page = _new_page(browser)
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(server.url)
        page.wait_for_function("document.getElementById('completion').textContent.length > 0")
        page.wait_for_timeout(200)  # give a (wrongly) injected image time to fail and fire onerror
        assert page.evaluate("window.__pwned") is None
        assert page.text_content("#completion") == HOSTILE_COMPLETION  # shown verbatim, as text
        assert page.locator("#completion script, #completion img, #completion b").count() == 0
        assert page.locator("#prompt-text img").count() == 0
        assert page.text_content("#prompt-text") == rows[0]["prompt"]
        assert dialogs == []
        page.close()
    finally:
        server.shutdown()
        server.server_close()


def test_pair_item_preferences(browser, tmp_path):
    rows = [{"id": "p1", "prompt": "question: what is Bora?", "completion_a": "Bora is a town.",
             "completion_b": "Bora is a town with 3 bridges."}]  # fmt: skip
    server, output = _serve(tmp_path, rows)
    try:
        page = _new_page(browser)
        page.goto(server.url)
        page.wait_for_selector("#pair-mode:not([hidden])")
        assert page.is_disabled("#submit-pair")
        page.click("button[data-category='completeness'][data-choice='B']")
        page.keyboard.press("t")  # the next unanswered comparison (holistic): tie
        page.click("#submit-pair")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Saved')")
        page.close()
    finally:
        server.shutdown()
        server.server_close()
    records = {r["category"]: r for r in map(json.loads, output.read_text().splitlines())}
    assert records["completeness"]["chosen"] == "Bora is a town with 3 bridges."
    assert records["completeness"]["meta"]["item"] == "p1"
    assert records["holistic"]["meta"]["tie"] is True


def test_an_edited_correction_is_saved_and_shown_again(browser, tmp_path):
    rows = [{"id": "q1", "prompt": "facts: Bora is a town.", "completion": EMOJI_COMPLETION},
            {"id": "q2", "prompt": "question: what is Kelt?", "completion": "Kelt is a village."}]  # fmt: skip
    corrected = "🦜 Bora is a town. It has 4 bridges."
    server, output = _serve(tmp_path, rows)
    try:
        page = _new_page(browser)
        page.goto(server.url)
        page.wait_for_function("document.getElementById('completion').textContent.length > 0")
        page.click("#correction-box summary")
        assert page.input_value("#correction") == EMOJI_COMPLETION  # prefilled with the completion
        page.fill("#correction", corrected)
        page.locator("#correction").blur()  # label keys typed in the box are text, not shortcuts
        _select(page, "the weather is mild")
        page.keyboard.press("1")
        page.click("#submit")
        page.wait_for_function("document.getElementById('item-id').textContent === 'q2'")
        page.click("#no-errors")  # the box left as the completion: no correction
        page.wait_for_function("document.getElementById('status').textContent.includes('All 2 items')")
        page.click("#prev")
        page.wait_for_function("document.getElementById('item-id').textContent === 'q1'")
        assert page.input_value("#correction") == corrected
        page.close()
    finally:
        server.shutdown()
        server.server_close()
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert records[0]["correction"] == corrected and "correction" not in records[1]
