"""A real Label Studio server (PyPI's ``label-studio``) takes our labeling configs and tasks, stores annotations
made through its API, and exports a project that ``finegrained convert label-studio`` reads back exactly.

Optional and slow (the server is a Django application of a few hundred MB that takes a minute to start): it
runs when ``FINEGRAINED_LABEL_STUDIO`` names a ``label-studio`` executable (for instance one installed in its
own venv: ``python -m venv ../ls-server && ../ls-server/bin/pip install label-studio``), and skips otherwise.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from finegrained.convert import label_studio as ls

# the prompt, the completion (emoji outside the BMP, CJK, a combining accent) and its overlapping spans
from test_label_studio import COMPLETION, PROMPT, SCHEMA, SPANS

pytestmark = [pytest.mark.slow, pytest.mark.external]

TOKEN = "finegrained0test0token0000000000000000000"


def _executable() -> str:
    path = os.environ.get("FINEGRAINED_LABEL_STUDIO")
    if not path:
        pytest.skip("set FINEGRAINED_LABEL_STUDIO to a label-studio executable to run against a real server")
    if not Path(path).is_file():
        pytest.fail(f"FINEGRAINED_LABEL_STUDIO={path}: no such file")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str):
        self.url = url

    def call(self, method: str, path: str, body: object = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Token {TOKEN}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: HTTP {e.code}: {e.read()[:2000]!r}") from None
        return json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    executable = _executable()
    data_dir = tmp_path_factory.mktemp("label-studio")
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "false",
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}  # fmt: skip
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 (closed below, after the process)
    process = subprocess.Popen(
        [executable, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir), "--username", "annotator@example.com", "--password", "finegrained-test",
         "--user-token", TOKEN],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"label-studio exited with {process.returncode}:\n{(data_dir / 'server.log').read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"label-studio did not answer in 300 s:\n{(data_dir / 'server.log').read_text()[-4000:]}")
            time.sleep(2)
        yield Server(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _project(server: Server, title: str, config: str, tasks: list[dict]) -> tuple[int, list[dict]]:
    """A project with our config and tasks; returns its id and its tasks as the server stored them."""
    project = server.call("POST", "/api/projects", {"title": title, "label_config": config})
    server.call("POST", f"/api/projects/{project['id']}/import", tasks)
    stored = server.call("GET", f"/api/tasks?project={project['id']}&page_size=100")
    stored = stored["tasks"] if isinstance(stored, dict) else stored
    assert len(stored) == len(tasks)
    return project["id"], sorted(stored, key=lambda t: t["id"])


def _region(k: int, control: str, to_name: str, value: dict, kind: str) -> dict:
    return {"id": f"r{k}", "from_name": control, "to_name": to_name, "type": kind, "value": value}


def _export(server: Server, project_id: int, tmp_path: Path) -> Path:
    exported = server.call("GET", f"/api/projects/{project_id}/export?exportType=JSON&download_all_tasks=true")
    path = tmp_path / f"export-{project_id}.json"
    path.write_text(json.dumps(exported, ensure_ascii=False), encoding="utf-8")
    return path


def test_a_real_server_round_trips_span_annotations_with_exact_offsets(server, tmp_path):
    items = [{"id": "q1", "prompt": PROMPT, "completion": COMPLETION},
             {"id": "q2", "prompt": PROMPT, "completion": "Bora is a town."}]  # fmt: skip
    project_id, stored = _project(server, "finegrained spans", ls.labeling_config(SCHEMA), ls.tasks_from_items(items))
    assert [t["data"]["completion"] for t in stored] == [COMPLETION, "Bora is a town."]  # the text survives intact

    # Regions as the current Label Studio front end writes them: offsets in code points, the selected text.
    regions = []
    for k, (sub, label) in enumerate(SPANS):
        start = COMPLETION.index(sub)
        value = {"start": start, "end": start + len(sub), "text": sub, "labels": [label]}
        regions.append(_region(k, SCHEMA.category_of_label(label).name, "completion", value, "labels"))
    server.call("POST", f"/api/tasks/{stored[0]['id']}/annotations", {"result": regions})
    no_errors = _region(0, ls.NO_ERRORS_CONTROL, "completion", {"choices": [ls.NO_ERRORS]}, "choices")
    server.call("POST", f"/api/tasks/{stored[1]['id']}/annotations", {"result": [no_errors]})

    counts = ls.convert_export(_export(server, project_id, tmp_path), tmp_path / "out", SCHEMA)
    assert counts["spans.jsonl"] == 2 and counts["preferences.jsonl"] == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "spans.jsonl").read_text("utf-8").splitlines()]
    by_completion = {r["completion"]: r for r in records}
    assert {r["id"] for r in records} == {"q1", "q2"}
    marked = by_completion[COMPLETION]
    assert marked["prompt"] == PROMPT
    got = sorted((COMPLETION[s["start"]:s["end"]], s["label"]) for s in marked["spans"])
    assert got == sorted(SPANS)  # every span, overlapping ones included, at its exact characters
    assert by_completion["Bora is a town."]["spans"] == []


def test_a_real_server_round_trips_preference_choices(server, tmp_path):
    items = [{"id": "p1", "prompt": PROMPT, "completion_a": "Bora is a town 🚀.", "completion_b": "No idea."}]
    project_id, stored = _project(server, "finegrained pairs", ls.labeling_config(SCHEMA, pairs=True), ls.tasks_from_items(items))
    categories = [c.name for c in SCHEMA.preference_categories]
    # the first category prefers B, the others A, and one more category (when the schema has three) a tie
    choice = {name: ("B" if k == 0 else "Tie" if k == 2 else "A") for k, name in enumerate(categories)}
    regions = [_region(k, name, "completion_a", {"choices": [choice[name]]}, "choices") for k, name in enumerate(categories)]
    server.call("POST", f"/api/tasks/{stored[0]['id']}/annotations", {"result": regions})

    counts = ls.convert_export(_export(server, project_id, tmp_path), tmp_path / "out", SCHEMA)
    assert counts["spans.jsonl"] == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "preferences.jsonl").read_text("utf-8").splitlines()]
    assert sorted(r["category"] for r in records) == sorted(name for name in categories if choice[name] != "Tie")
    for record in records:
        a, b = items[0]["completion_a"], items[0]["completion_b"]
        assert (record["chosen"], record["rejected"]) == ((b, a) if choice[record["category"]] == "B" else (a, b))
        assert record["prompt"] == PROMPT
