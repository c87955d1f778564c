"""The soak script in its short form: concurrent streams, 30% hung up mid-stream, then every check
(intact streams, idle engine, empty caches after clear, bounded memory, fast /health).
The long form (200 clients, 2 minutes) and its figures: docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


def test_short_soak(start_server, tiny_qwen3):
    server = start_server(tiny_qwen3, "--max-num-seqs", "16", "--api-key", "soak")
    result = subprocess.run(
        [sys.executable, str(SOAK), "--url", server.base_url, "--clients", "24", "--duration", "8", "--rounds", "2",
         "--max-tokens", "24", "--disconnect", "0.3", "--health-p99-ms", "1000"],
        capture_output=True, text=True, timeout=240)
    summary = json.loads(result.stdout)
    assert summary["ok"] and result.returncode == 0, json.dumps(summary, indent=2)
    assert summary["requests"]["completed_intact"] >= 24 and summary["requests"]["disconnected_mid_stream"] >= 5
    assert summary["engine_after"]["requests_aborted"] >= summary["requests"]["disconnected_mid_stream"] // 2
    assert server.proc.poll() is None


@pytest.mark.reliability
def test_short_soak_under_attack(start_server, tiny_qwen3):
    """The same load with hostile clients beside it (scripts/soak.py --attacks): stalled readers, slow
    connections, 10 MB prompts, lone surrogates. Every attack gets its bound's answer and the soak's
    checks (memory, /health, idle engine) still hold."""
    server = start_server(tiny_qwen3, "--max-num-seqs", "32", "--api-key", "soak", "--header-timeout", "2",
                          "--body-timeout", "2", "--write-timeout", "4", "--stream-buffer-mb", "4")
    result = subprocess.run(
        [sys.executable, str(SOAK), "--url", server.base_url, "--clients", "16", "--duration", "8", "--rounds", "2",
         "--max-tokens", "24", "--disconnect", "0.3", "--health-p99-ms", "1000", "--attacks",
         "--rss-growth-mb", "96"],  # 10 MB bodies in flight: the allocator's pages vary by +-60 MB, flat over rounds
        capture_output=True, text=True, timeout=400)
    summary = json.loads(result.stdout)
    assert summary["ok"] and result.returncode == 0, json.dumps(summary, indent=2)
    attacks = summary["attacks"]
    assert len(attacks) == 2 and all(a["rounds"] >= 1 and a["slow_connections"] >= 24 for a in attacks)
    assert sum(a["stalled_streams"] for a in attacks) >= 2 and sum(a["huge_prompts"] for a in attacks) >= 4
    assert "its client is not reading the stream" in server.log()
