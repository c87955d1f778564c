"""OpenBLAS's thread count: all but two usable cores by default (the engine's Python thread and the
HTTP side need theirs), the user's OPENBLAS_NUM_THREADS / OMP_NUM_THREADS when set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vllm_mlx import BLAS_STATUS
from vllm_mlx.platform import THREAD_ENV, blas_threads

PROBE = """
import ctypes, json, os, vllm_mlx
from vllm_mlx.platform import usable_cores
s = vllm_mlx.BLAS_STATUS
threads = ctypes.CDLL(s.path).openblas_get_num_threads() if s.path else None
print(json.dumps({"reason": s.reason, "threads": threads, "cores": usable_cores()}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_blas_threads_leave_two_cores():
    assert [blas_threads(n) for n in (1, 2, 3, 4, 16)] == [1, 1, 1, 2, 14]


@pytest.mark.skipif(BLAS_STATUS.path is None, reason="OpenBLAS is not loaded on this machine")
def test_openblas_thread_count_default_and_override():
    default = probe()
    assert default["threads"] == blas_threads(default["cores"])
    assert f"{default['threads']} thread(s) of {default['cores']} cores" in default["reason"]
    every = default["cores"]  # OpenBLAS runs at most one thread per core; the default leaves two free
    chosen = probe(OPENBLAS_NUM_THREADS=str(every))
    assert chosen["threads"] == every
    assert f"OPENBLAS_NUM_THREADS={every}" in chosen["reason"]
