"""Shared fixtures: tiny model folders built locally, and real server processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vllm_mlx  # noqa: E402,F401  (loads OpenBLAS before mlx is imported anywhere)
from vllm_mlx.bench.servers import ManagedServer, free_port  # noqa: E402


VLLM_MLX = str(Path(sys.executable).with_name("vllm-mlx"))


class ServerProcess(ManagedServer):
    """`vllm-mlx serve ...` started as a real process on a free port."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None):
        port = free_port()
        if os.environ.get("VLLM_MLX_TEST_ENGINE_PROCESS") == "1" and "--engine-process" not in args:
            args = [*args, "--engine-process"]  # run a test file against servers whose engine is a child process
        super().__init__("vllm-mlx", [VLLM_MLX, "serve", *args, "--port", str(port)], port, log_path, env,
                         ready_path="/health")
        self.base_url = self.url

    def wait_ready(self, timeout: float = 180.0) -> "ServerProcess":
        return super().wait_ready(timeout)

    def health(self) -> dict:
        return httpx.get(f"{self.base_url}/health", timeout=5).json()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_qwen3(models_dir) -> Path:
    from vllm_mlx_testing import build_tiny_model

    return build_tiny_model(models_dir / "tiny-qwen3", "qwen3")


@pytest.fixture(scope="session")
def tiny_llama(models_dir) -> Path:
    from vllm_mlx_testing import build_tiny_model

    return build_tiny_model(models_dir / "tiny-llama", "llama")


SCRIPTED_RULES = [
    {"if_contains": "two cities", "reply": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n'
                                           '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": '
                                           '{"city": "Zürich 🌦", "days": "3"}}\n</tool_call>'},
    {"if_contains": "lookup_stock_price", "reply": "I can see the lookup_stock_price tool."},
    {"if_contains": "JSON please", "reply": '{"city":"Paris","temp":22}'},
    {"if_contains": "weather", "reply": "It is sunny in Paris, 22 °C. Have a nice day!"},
    {"if_contains": "think", "reply": "<think>\nThe user wants a plan.\n</think>\n\nStep one: relax."},
]
SCRIPTED_DEFAULT = "Hello from the scripted model. The answer is 42."


@pytest.fixture(scope="session")
def scripted_qwen3(models_dir) -> Path:
    from vllm_mlx_testing import build_scripted_model

    return build_scripted_model(models_dir / "scripted-qwen3", SCRIPTED_RULES, SCRIPTED_DEFAULT, "qwen3")


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict | None = None, wait: bool = True) -> ServerProcess:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = ServerProcess([str(a) for a in args], log, env)
        servers.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def qwen3_server(start_server, tiny_qwen3) -> ServerProcess:
    return start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "alias-q", "--max-num-seqs", "16")


@pytest.fixture(scope="session")
def plain_qwen3_server(start_server, tiny_qwen3) -> ServerProcess:
    """The tiny Qwen3 without speculative decoding (which the default turns on): the baseline speculation
    is compared with."""
    return start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--speculative", "off")


@pytest.fixture(scope="session")
def scripted_server(start_server, scripted_qwen3) -> ServerProcess:
    return start_server(scripted_qwen3, "--trust-remote-code", "--served-model-name", "scripted")


@pytest.fixture(scope="session")
def fuzz_server(start_server, tiny_qwen3, models_dir) -> ServerProcess:
    """A small-context server (every generation stays short) with an embedding model, for fuzz tests."""
    from vllm_mlx_testing.embedding_models import build_tiny_bert

    bert = build_tiny_bert(models_dir / "fuzz-bert")
    return start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--max-model-len", "96", "--max-tokens", "4",
                        "--max-num-seqs", "8", "--max-messages", "64", "--max-tools", "16", "--embedding-model", bert)
