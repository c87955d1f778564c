"""Distributed serving end to end: 2 ranks on loopback (ring backend) started by mlx.launch.

The model is split tensor-parallel over the ranks; the same prompts must give the same greedy
tokens as one process, concurrent streams, n > 1, the prefix cache and aborts must keep working,
and a lost or stalled rank must end the job instead of hanging it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from conftest import VLLM_MLX, ManagedServer, ServerProcess, free_port

MLX_LAUNCH = str(Path(sys.executable).with_name("mlx.launch"))
PROMPTS = ["Hello there, how are you?", "The capital of France is", "1 2 3 4 5", "Write a haiku about the sea."]
LONG_PROMPT = "Distributed serving keeps every rank in lockstep. " * 12  # > one 64-token cache block
MAX_TOKENS = 8

pytestmark = pytest.mark.slow


def _free_port_pair() -> int:
    """A port p with p and p + 1 free (mlx.launch gives rank i the ring port p + i)."""
    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair")


def children(pid: int) -> list[int]:
    """The pids of a process's children (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


class DistributedServer(ManagedServer):
    """`mlx.launch -n 2 -- vllm-mlx serve MODEL --distributed` on loopback."""

    def __init__(self, model: Path, log_path: Path, *args: str):
        port = free_port()
        cmd = [MLX_LAUNCH, "--backend", "ring", "-n", "2", "--starting-port", str(_free_port_pair()), "--",
               VLLM_MLX, "serve", str(model), "--distributed", "--port", str(port), *args]
        super().__init__("mlx.launch", cmd, port, log_path, ready_path="/health")
        self.base_url = self.url

    def wait_ready(self, timeout: float = 240.0) -> "DistributedServer":
        return super().wait_ready(timeout)

    def rank_pid(self, rank: int) -> int:
        """The pid of a rank: a child of the launcher whose environment says MLX_RANK=rank."""
        for pid in children(self.proc.pid):
            try:
                if f"MLX_RANK={rank}".encode() in (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0"):
                    return pid
            except OSError:
                continue
        raise LookupError(f"rank {rank} not found")

    def alive(self, pid: int) -> bool:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def stop(self) -> None:
        pids = []
        for rank in (0, 1):
            try:
                pids.append(self.rank_pid(rank))
            except LookupError:
                pass
        for pid in pids:  # rank 0 stops its followers with a last message
            os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            for pid in pids:
                if self.alive(pid):
                    os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    servers: list[DistributedServer] = []

    def start(model: Path, *args: str, wait: bool = True) -> DistributedServer:
        server = DistributedServer(model, tmp_path_factory.mktemp("dist") / "server.log", *args)
        servers.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in servers:
        server.stop()


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def greedy_tokens(server, prompt: str, max_tokens: int = MAX_TOKENS) -> tuple[list[str], list[float]]:
    r = client(server).completions.create(model="m", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                          logprobs=1, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    return lp.tokens, lp.token_logprobs


def stream_chat(server, content: str) -> str:
    stream = client(server).chat.completions.create(
        model="m", messages=[{"role": "user", "content": content}], max_tokens=MAX_TOKENS, temperature=0,
        stream=True, extra_body={"ignore_eos": True})
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


@pytest.fixture(scope="module")
def single_llama(tmp_path_factory, tiny_llama):
    server = ServerProcess([str(tiny_llama)], tmp_path_factory.mktemp("single") / "server.log").wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dist_qwen3(launch, tiny_qwen3):
    return launch(tiny_qwen3)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_two_ranks_match_one_process(family, launch, request):
    single = request.getfixturevalue("qwen3_server" if family == "qwen3" else "single_llama")
    dist = request.getfixturevalue("dist_qwen3") if family == "qwen3" else launch(request.getfixturevalue("tiny_llama"))

    # Greedy output through the server is the single-process output, token for token.
    for prompt in PROMPTS[:2]:
        tokens, logprobs = greedy_tokens(dist, prompt)
        want_tokens, want_logprobs = greedy_tokens(single, prompt)
        assert tokens == want_tokens
        assert logprobs == pytest.approx(want_logprobs, abs=1e-3)  # sharded sums round differently

    # Concurrent streams share the batch on both ranks and still give the solo results.
    want = [stream_chat(single, p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(lambda p: stream_chat(dist, p), PROMPTS))
    assert got == want
    assert all(got)

    health = httpx.get(f"{dist.base_url}/health").json()
    assert health["status"] == "ok" and health["engine"]["running"] == 0


@pytest.fixture(scope="module")
def tiny_qwen35(models_dir) -> Path:
    from vllm_mlx_testing.arch_models import build_arch_model

    return build_arch_model(models_dir / "dist-qwen3_5", "qwen3_5")


@pytest.fixture(scope="module")
def exact_mtp_qwen35(models_dir) -> Path:
    from vllm_mlx_testing.arch_models import build_arch_model
    from vllm_mlx_testing.builders import add_mtp_head

    return add_mtp_head(build_arch_model(models_dir / "dist-mtp-exact", "qwen3_5"), exact=True)


@pytest.mark.parametrize("case", ["ngram", "draft-recurrent", "mtp"])
def test_speculation_across_ranks_matches_one_process(case, launch, start_server, request):
    """Speculation on two ranks: rank 0 reads back, proposes and sends each speculative step's verify
    inputs and rejected positions in its record; the follower runs the same verify forwards and drops
    the same positions. Greedy and seeded sampled output is the single process's (without speculation),
    alone and for concurrent streams; sampled rows reject part of their proposals.

    ``ngram``: prompt lookup on Qwen3 (whose tiny random model repeats itself). ``draft-recurrent``: the
    GatedDeltaNet hybrid Qwen3.5 drafting for itself (the draft loaded whole on rank 0 only), so the
    follower rolls its recurrent layers back from its own snapshots. ``mtp``: Qwen3.5's MTP head (one
    whose greedy proposals are the model's next tokens) on rank 0 alone, reading the output layer it
    keeps whole; the served forward gathers the split one on every rank."""
    if case == "mtp":
        model = request.getfixturevalue("exact_mtp_qwen35")
        single, dist = start_server(model, "--speculative", "off"), launch(model, "--speculative", "mtp")
    elif case == "ngram":
        model = request.getfixturevalue("tiny_qwen3")
        single, dist = request.getfixturevalue("plain_qwen3_server"), launch(model, "--speculative", "ngram")
    else:
        model = request.getfixturevalue("tiny_qwen35")
        single, dist = start_server(model, "--speculative", "off"), launch(model, "--draft-model", str(model))
    prompts = PROMPTS + ["again: " + "one two three four " * 4]

    def chat(server, content: str, seed: int | None = None) -> str:
        # sampled rows draw between their two likeliest tokens: they fall into repeating stretches that
        # prompt lookup proposes, and leave them at random, so part of the proposals is rejected
        sampling = {"temperature": 0.0} if seed is None else {"temperature": 1.0, "seed": seed}
        extra = {"ignore_eos": True} if seed is None else {"ignore_eos": True, "top_k": 2}
        out = client(server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": content}], max_tokens=48, **sampling,
            extra_body=extra)
        return out.choices[0].message.content

    cases = [(p, None) for p in prompts] + [(p, 7 + i) for i, p in enumerate(prompts)]
    want = [chat(single, p, seed) for p, seed in cases]
    assert [chat(dist, p, seed) for p, seed in cases[:2]] == want[:2]
    with ThreadPoolExecutor(len(cases)) as pool:
        assert list(pool.map(lambda c: chat(dist, *c), cases)) == want
    health = httpx.get(f"{dist.base_url}/health").json()
    spec = health["engine"]["speculative"]
    assert spec["method"] == case.split("-")[0]
    assert spec["verify_steps"] > 0 and spec["proposed"] > spec["accepted"] > 0, spec  # rejections dropped too
    if case == "mtp":  # the greedy rows take every proposal (~0.2 overall when rank 0's head reads its part)
        assert spec["accepted"] > 0.6 * spec["proposed"], spec
    assert health["status"] == "ok"


def test_prefix_cache_n_and_abort_stay_consistent(dist_qwen3, qwen3_server):
    dist = dist_qwen3
    c = client(dist)

    # The prefix cache hits on rank 0 and the followers reuse the same blocks: same tokens again.
    first = greedy_tokens(dist, LONG_PROMPT)[0]
    r = c.completions.create(model="m", prompt=LONG_PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                             logprobs=1, extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens_details.cached_tokens >= 64
    assert r.choices[0].logprobs.tokens == first == greedy_tokens(qwen3_server, LONG_PROMPT)[0]

    # n > 1 forks rows from one prefill on every rank.
    r = c.completions.create(model="m", prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0, n=2,
                             extra_body={"ignore_eos": True})
    assert [ch.text for ch in r.choices] == [r.choices[0].text] * 2

    # A client that goes away mid-stream aborts its row on every rank; serving goes on.
    stream = c.completions.create(model="m", prompt=PROMPTS[1], max_tokens=200, temperature=0, stream=True,
                                  extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert greedy_tokens(dist, PROMPTS[2])[0] == greedy_tokens(qwen3_server, PROMPTS[2])[0]
    deadline = time.monotonic() + 30
    while httpx.get(f"{dist.base_url}/health").json()["engine"]["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{dist.base_url}/health").json()["engine"]["requests_aborted"] >= 1


def test_pipeline_parallel_matches_one_process(launch, models_dir, tiny_qwen3, start_server):
    from vllm_mlx_testing.pipeline_models import build_qwen2_like

    model = build_qwen2_like(models_dir / "tiny-qwen2", tiny_qwen3, num_hidden_layers=4)
    single = start_server(model)
    dist = launch(model, "--distributed-parallelism", "pipeline")
    assert "pipeline-parallel shard" in dist.log()
    for prompt in PROMPTS[:2]:
        assert greedy_tokens(dist, prompt)[0] == greedy_tokens(single, prompt)[0]
    want = [stream_chat(single, p) for p in PROMPTS[:3]]
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda p: stream_chat(dist, p), PROMPTS[:3])) == want


def _stream_until_failure(server, on_third_chunk) -> tuple[str, float]:
    """Start a long stream, call ``on_third_chunk``; returns how the stream ended (the error) and when."""
    stream = client(server).completions.create(model="m", prompt="Hello", max_tokens=2000, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True})
    started = None
    try:
        for i, _ in enumerate(stream):
            if i == 2:
                on_third_chunk()
                started = time.monotonic()
    except (openai.APIError, httpx.HTTPError) as exc:
        return f"{type(exc).__name__}: {exc}", time.monotonic() - started
    return "completed", time.monotonic() - started


def _stream_end(server) -> str:
    """How a long stream ended: "completed", or the error it raised."""
    stream = client(server).completions.create(model="m", prompt="Hi there", max_tokens=2000, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True})
    try:
        for _ in stream:
            pass
    except (openai.APIError, httpx.HTTPError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "completed"


def test_killed_follower_ends_the_job(launch, tiny_qwen3):
    dist = launch(tiny_qwen3)
    rank0, rank1 = dist.rank_pid(0), dist.rank_pid(1)
    ended, seconds = _stream_until_failure(dist, lambda: os.kill(rank1, signal.SIGKILL))
    assert "connection to a peer was lost" in ended and seconds < 30
    dist.proc.wait(30)  # rank 0 exits, and with it the launcher
    assert not dist.alive(rank0)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{dist.base_url}/health", timeout=2)
    assert "connection to a peer was lost" in dist.log()


def test_stalled_follower_ends_the_job(launch, tiny_qwen3):
    dist = launch(tiny_qwen3, "--distributed-timeout", "3")
    rank0, rank1 = dist.rank_pid(0), dist.rank_pid(1)
    try:
        ended, seconds = _stream_until_failure(dist, lambda: os.kill(rank1, signal.SIGSTOP))
        assert "a rank stalled or died" in ended and seconds < 30
        deadline = time.monotonic() + 30
        while dist.alive(rank0) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not dist.alive(rank0)  # (mlx.launch may not relay its last lines: it waits on the frozen rank)
    finally:
        os.kill(rank1, signal.SIGKILL)  # a stopped process ignores the launcher's SIGTERM


@pytest.mark.parametrize("dies", ["engine process", "follower"])
def test_rank_0_with_an_engine_process(dies, launch, tiny_qwen3, qwen3_server):
    """--engine-process: rank 0's API process does HTTP and starts an engine process, which joins the
    group as rank 0 and leads. Output is the single process's; when that engine process or a follower
    dies, every stream in flight ends with an error event and the whole job ends, leaving no process."""
    dist = launch(tiny_qwen3, "--engine-process")
    rank0, rank1 = dist.rank_pid(0), dist.rank_pid(1)
    health = httpx.get(f"{dist.base_url}/health").json()
    engine_pid = health["engine"]["pid"]
    assert children(rank0) == [engine_pid]  # the leader runs in the API process's child
    assert b"MLX_RANK=0" in (Path("/proc") / str(engine_pid) / "environ").read_bytes().split(b"\0")
    assert health["models"]["models"][0]["weight_bytes"] > 0  # rank 0's shard, reported by its engine process
    assert "rank 0 of 2 joined the distributed group" in dist.log()

    for prompt in PROMPTS[:2]:
        assert greedy_tokens(dist, prompt)[0] == greedy_tokens(qwen3_server, prompt)[0]
    want = [stream_chat(qwen3_server, p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        assert list(pool.map(lambda p: stream_chat(dist, p), PROMPTS)) == want

    victim = engine_pid if dies == "engine process" else rank1

    def kill_when_all_run() -> None:
        deadline = time.monotonic() + 30
        while httpx.get(f"{dist.base_url}/health").json()["engine"]["running"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)

    with ThreadPoolExecutor(3) as pool:
        others = [pool.submit(_stream_end, dist) for _ in range(3)]
        ends = [_stream_until_failure(dist, kill_when_all_run)[0]] + [f.result(60) for f in others]
    assert all(e.startswith("APIError") for e in ends), ends  # an error event, not a cut connection
    reason = "the engine process died" if dies == "engine process" else "connection to a peer was lost"
    assert all(reason in e for e in ends), ends
    dist.proc.wait(30)  # the job ends: the launcher exits
    deadline = time.monotonic() + 10
    while any(dist.alive(p) for p in (rank0, rank1, engine_pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(dist.alive(p) for p in (rank0, rank1, engine_pid))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{dist.base_url}/health", timeout=2)


@pytest.mark.parametrize("engine_process", [False, True])
def test_distributed_outside_a_launcher_is_a_clear_error(engine_process, tiny_qwen3):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_")}
    args = ["--engine-process"] if engine_process else []
    proc = subprocess.run([VLLM_MLX, "serve", str(tiny_qwen3), "--distributed", *args], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "--distributed must run under mlx.launch" in proc.stderr


def test_the_rank_is_read_from_the_launchers_environment():
    """With --engine-process, rank 0's API process learns its rank without joining the group."""
    from vllm_mlx.serving.distributed_setup import DistributedSetupError, launched_rank

    assert launched_rank({"MLX_RANK": "1"}) == 1
    assert launched_rank({"OMPI_COMM_WORLD_RANK": "0"}) == 0
    assert launched_rank({"MLX_RANK": " ", "PMI_RANK": "2"}) == 2
    with pytest.raises(DistributedSetupError, match="none of MLX_RANK"):
        launched_rank({"HOME": "/root"})


def test_rank_0s_engine_process_waits_for_its_peers_at_most_the_timeout(tiny_qwen3, tmp_path, monkeypatch):
    """mx.distributed.init holds the GIL while it waits for the other ranks, so nothing in the engine
    process could notice its API process is gone: the wait is bounded by --distributed-timeout."""
    import json

    from vllm_mlx.config import ServerConfig
    from vllm_mlx.engine.config import EngineConfig
    from vllm_mlx.engine.process_client import EngineProcess
    from vllm_mlx.models.loader import load_metadata
    from vllm_mlx.serving.distributed_setup import LeaderSetup

    port = _free_port_pair()
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))  # rank 1 never comes
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    config = ServerConfig(model=str(tiny_qwen3), distributed=True, engine_process=True, distributed_timeout=2)
    engine = EngineProcess(lambda: load_metadata(str(tiny_qwen3)), None, EngineConfig(), lambda outputs: None,
                           max_restarts=0, setup=LeaderSetup(config, tiny_qwen3))
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="killed by SIGALRM"):
            engine.start(timeout=120)
        # the 2 s bound, not the 60 s default: the margin is for spawning the process on a loaded machine
        # (a CI run once took 30 s from here to the alarm)
        assert time.monotonic() - started < 50
        assert not (Path("/proc") / str(engine.pid)).exists()  # ended and reaped
    finally:
        engine.shutdown(2.0)
