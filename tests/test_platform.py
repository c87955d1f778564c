"""OpenBLAS's thread count is reported (doctor, logs) and the user's OPENBLAS_NUM_THREADS is honoured."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vllm_mlx import BLAS_STATUS
from vllm_mlx.platform import THREAD_ENV

PROBE = """
import ctypes, json, vllm_mlx
s = vllm_mlx.BLAS_STATUS
print(json.dumps({"reason": s.reason, "threads": ctypes.CDLL(s.path).openblas_get_num_threads()}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(BLAS_STATUS.path is None, reason="OpenBLAS is not loaded on this machine")
def test_openblas_thread_count_is_reported_and_the_users_choice_honoured():
    default = probe()
    assert f"{default['threads']} thread(s) (one per core)" in default["reason"]
    chosen = probe(OPENBLAS_NUM_THREADS="1")
    assert chosen["threads"] == 1
    assert "1 thread(s) (OPENBLAS_NUM_THREADS=1)" in chosen["reason"]
