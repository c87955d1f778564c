"""The soak script in its short form: concurrent streams, 30% hung up mid-stream, then every check
(intact streams, idle engine, empty caches after clear, bounded memory, fast /health).
The long form (200 clients, 2 minutes) and its figures: docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
