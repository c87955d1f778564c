"""Start and stop the servers a comparison runs against: `vllm-mlx serve` and the mlx-lm peer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedServer:
    """A server process with its log file; ``wait_ready`` polls ``ready_path`` until it answers 200."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, env: dict | None = None,
                 ready_path: str = "/v1/models"):
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 300.0) -> "ManagedServer":
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log: {self.log_path}"
                                   + self._log_tail())
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready after {timeout}s; log: {self.log_path}" + self._log_tail())

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def _log_tail(self) -> str:
        return "\n" + self.log()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> "ManagedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def vllm_mlx_server(model: str, log: Path, *args: str, port: int | None = None,
                    env: dict | None = None) -> ManagedServer:
    port = port or free_port()
    exe = str(Path(sys.executable).with_name("vllm-mlx"))
    return ManagedServer("vllm-mlx", [exe, "serve", model, "--port", str(port), *args], port, log,
                         {"HF_HUB_OFFLINE": "1", **(env or {})}, ready_path="/health")


def mlx_lm_server(model: str, log: Path, *args: str, port: int | None = None) -> ManagedServer:
    """mlx_lm.server from the installed mlx-lm; on Linux with the same BLAS vllm-mlx loads (LD_PRELOAD)."""
    from .. import BLAS_STATUS

    port = port or free_port()
    env = {"HF_HUB_OFFLINE": "1"}
    if BLAS_STATUS.path:
        env["LD_PRELOAD"] = BLAS_STATUS.path
    return ManagedServer("mlx_lm.server", [sys.executable, "-m", "mlx_lm.server", "--model", model,
                                           "--port", str(port), *args], port, log, env)
