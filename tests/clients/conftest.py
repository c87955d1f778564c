"""Fixtures of the client-compatibility suite: agent-model servers (one per model family) that log
every request and every conversation the model answered, a refusing egress proxy, and the results
file that scripts/render_client_matrix.py turns into docs/clients.md."""

from __future__ import annotations

import datetime
import json
import platform
from contextlib import contextmanager
from pathlib import Path

import pytest

from .client_support import ARTIFACTS, Evidence, NoEgressProxy, read_jsonl, size

API_KEY = "client-test-key"
MODEL = "scripted"
# Agent clients send long system prompts and many tools (Claude Code ~35k tokens).
CONTEXT = 262144
PARSERS = {"qwen3": "hermes", "llama": "llama3_json"}


class AgentServer:
    """A running `vllm-mlx serve` of the agent scripted model, with its request log and transcript."""

    def __init__(self, server, family: str, folder: Path):
        self.server = server
        self.family = family
        self.parser = PARSERS[family]
        self.requests_path = folder / "requests.jsonl"
        self.transcript_path = folder / "transcript.jsonl"
        self.base_url = server.base_url
        self.port = server.port
        self.api_key = API_KEY
        self.model = MODEL

    @contextmanager
    def watch(self):
        """Collects what the server saw while the block runs (into the yielded list's Evidence)."""
        marks = size(self.requests_path), size(self.transcript_path)
        box: list[Evidence] = []
        try:
            yield box
        finally:
            box.append(Evidence(read_jsonl(self.requests_path, marks[0]), read_jsonl(self.transcript_path, marks[1])))


@pytest.fixture(scope="session")
def agent_server(start_server, models_dir, tmp_path_factory):
    """agent_server(family) -> AgentServer, started once per family for the session."""
    from vllm_mlx_testing import build_scripted_model

    running: dict[str, AgentServer] = {}

    def get(family: str = "qwen3") -> AgentServer:
        if family not in running:
            path = build_scripted_model(models_dir / f"agent-{family}", (), "Hello from the scripted agent model.",
                                        family, agent=True, max_position_embeddings=CONTEXT)
            folder = tmp_path_factory.mktemp(f"agent-{family}")
            server = start_server(path, "--trust-remote-code", "--served-model-name", MODEL, "--api-key", API_KEY,
                                  "--request-log", folder / "requests.jsonl", "--max-num-seqs", "4",
                                  env={"VLLM_MLX_SCRIPTED_TRANSCRIPT": str(folder / "transcript.jsonl")})
            running[family] = AgentServer(server, family, folder)
        return running[family]

    return get


@pytest.fixture
def proxy():
    p = NoEgressProxy()
    yield p
    p.close()


# ---------------------------------------------------------------------------
# Results: each client test fills a row; the session merges rows into results.json.

RESULTS: dict[str, dict] = {}


@pytest.fixture
def record(request):
    """record(client=..., version=..., ...) -> the row for this test (update it as facts come in)."""
    row: dict = {"test": request.node.nodeid.split("::", 1)[-1]}
    RESULTS[request.node.nodeid] = row

    def update(**facts) -> dict:
        row.update(facts)
        return row

    return update


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    row = RESULTS.get(item.nodeid)
    if row is None:
        return
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        row["outcome"] = rep.outcome
        row["test_seconds"] = round(rep.duration, 1)
        if rep.skipped and isinstance(rep.longrepr, tuple):
            row["skip_reason"] = rep.longrepr[2]


def pytest_sessionfinish(session):
    rows = [r for r in RESULTS.values() if "client" in r and "outcome" in r]
    if not rows:
        return
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "results.json"
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    key = lambda r: (r["client"], r.get("variant", ""))  # noqa: E731
    merged = {key(r): r for r in old.get("rows", [])}
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for row in rows:
        if row["outcome"] == "skipped" and key(row) in merged:
            continue  # a machine without the client keeps the last real result
        merged[key(row)] = {**row, "run_at": stamp, "machine": f"{platform.system()} {platform.machine()}"}
    path.write_text(json.dumps({"rows": sorted(merged.values(), key=key)}, indent=2) + "\n")
