"""`vllm-mlx bench`: the statistics, and every mode run for real on the tiny model / real servers."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_mlx.bench.stats import bootstrap_median_interval, percentile, summarize, wilson_interval

VLLM_MLX = str(Path(sys.executable).with_name("vllm-mlx"))


def bench(*args, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([VLLM_MLX, "bench", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def visible_qwen3(models_dir) -> Path:
    """A tiny model whose every token shows text (as the demo model): each streamed token can be timed."""
    from vllm_mlx_testing import build_tiny_model

    return build_tiny_model(models_dir / "tiny-visible-qwen3", "qwen3", init_scale=8.0, tie_word_embeddings=False,
                            visible_text=True)


# -- statistics ----------------------------------------------------------------

def test_percentile_interpolates_between_order_statistics():
    data = [5, 1, 4, 2, 3]
    assert percentile(data, 0) == 1 and percentile(data, 100) == 5
    assert percentile(data, 50) == 3
    assert percentile(data, 95) == pytest.approx(4.8)
    assert percentile([10, 20], 25) == pytest.approx(12.5)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_median_and_bootstrap_interval():
    data = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 100.0]
    s = summarize(data)
    assert s.median == 13.0 and s.n == 7
    assert 10.0 <= s.low <= 13.0 <= s.high <= 100.0
    assert s.high < 100.0  # the median's interval does not follow the outlier
    assert summarize(data) == s  # fixed seed: reproducible
    assert bootstrap_median_interval([3.0, 9.0]) == (3.0, 9.0)  # too few values: the range
    tight = summarize([7.0] * 9)
    assert (tight.low, tight.median, tight.high) == (7.0, 7.0, 7.0)
    wide = summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    assert wide.low < 5.0 < wide.high and wide.median == statistics.median(range(1, 10))


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(16, 16)
    assert low == pytest.approx(0.8064, abs=1e-4) and high == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


# -- engine mode -----------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_server_cpu_counts_processes_started_by_any_thread_and_their_children():
    """An engine process is started by a thread of the server, not its main thread; its own helpers are
    its children. The server's CPU must count them all."""
    import threading
    import time

    from vllm_mlx.bench.served_bench import process_tree_cpu_s

    burn = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', " \
           "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.4: pass\\ntime.sleep(30)']); " \
           "time.sleep(30)"
    procs = []
    thread = threading.Thread(target=lambda: procs.append(subprocess.Popen([sys.executable, "-c", burn])))
    thread.start()
    thread.join()
    try:
        before = process_tree_cpu_s(os.getpid())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process_tree_cpu_s(os.getpid()) - before < 0.35:
            time.sleep(0.1)
        assert process_tree_cpu_s(os.getpid()) - before >= 0.35  # the grandchild's busy loop
    finally:
        subprocess.run(["pkill", "-P", str(procs[0].pid)])
        procs[0].kill()
        procs[0].wait()


def test_engine_bench_preset_columns(tiny_qwen3, tmp_path):
    out = tmp_path / "engine.json"
    r = bench(tiny_qwen3, "--preset", "batch10", "--repeat", 2, "--json", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    for column in ("total time s", "prompts/s", "completion tok/s", "prompt+completion tok/s"):
        assert column in r.stdout
    result = json.loads(out.read_text())
    assert result["preset"]["num_prompts"] == 10 and result["preset"]["max_tokens"] == 64
    assert result["preset"]["engine_max_num_seqs"] == 16
    assert len(result["runs"]) == 2
    for run in result["runs"]:
        assert run["completion_tokens"] == 10 * 64
        assert run["prompts_per_s"] == pytest.approx(10 / run["total_s"])
        assert run["total_tok_per_s"] > run["completion_tok_per_s"] > 0
    s = result["summary"]["completion_tok_per_s"]
    assert s["n"] == 2 and s["low"] <= s["median"] <= s["high"]


def test_engine_bench_against_ceiling(tiny_qwen3, tmp_path):
    out = tmp_path / "ceiling.json"
    r = bench(tiny_qwen3, "--preset", "single", "--max-tokens", 32, "--repeat", 2, "--warmup", 0, "--ceiling",
              "--json", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "bare mlx-lm loop" in r.stdout and "mlx_lm.stream_generate" in r.stdout
    s = json.loads(out.read_text())["ceiling_summary"]
    assert s["batch"] == 1
    for key in ("bare_decode", "engine_decode", "engine_single", "mlx_generate_single", "single_ratio"):
        assert s[key]["n"] == 2 and s[key]["median"] > 0


def test_rows_bench_engine_against_bare_loop_with_profile(tiny_qwen3, tmp_path):
    out = tmp_path / "rows.json"
    r = bench("rows", tiny_qwen3, "--rows", 1, 3, "--tokens", 16, "--repeat", 2, "--warmup", 0, "--profile",
              "--json", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "bare mlx-lm loop" in r.stdout and "mlx_lm.stream_generate" in r.stdout and "step profile" in r.stdout
    result = json.loads(out.read_text())
    for b in ("1", "3"):
        s = result["summary"][b]
        assert s["engine"]["n"] == 2 and s["engine"]["median"] > 0 and s["bare"]["median"] > 0
        profile = result["profiles"][b]
        assert profile["mean_rows"] == int(b)
        phases = profile["ms_per_step"]
        assert phases["build"] > 0 and phases["launch"] > 0 and phases["post"] > 0
        assert abs(sum(phases.values()) - profile["total_ms_per_step"]) < 1e-6
    assert result["summary"]["1"]["ratio_mlx_generate"]["median"] > 0
    r = bench("rows", tiny_qwen3, "--tokens", 2)
    assert r.returncode == 2 and "--tokens must be at least 3" in r.stderr


def test_rows_bench_samples_at_a_temperature(tiny_qwen3, tmp_path):
    out = tmp_path / "rows.json"
    r = bench("rows", tiny_qwen3, "--rows", 1, 2, "--tokens", 8, "--repeat", 1, "--warmup", 0, "--temperature", 0.8,
              "--json", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "temperature 0.8" in r.stdout
    result = json.loads(out.read_text())
    assert result["options"]["temperature"] == 0.8
    assert result["summary"]["2"]["bare"]["median"] > 0 and result["summary"]["1"]["mlx_generate"]["median"] > 0
    r = bench("rows", tiny_qwen3, "--temperature", -1)
    assert r.returncode == 2 and "--temperature must be in [0, 2]" in r.stderr


def test_served_bench_http_against_the_engine_in_process(visible_qwen3, tmp_path):
    out = tmp_path / "served.json"
    r = bench("served", visible_qwen3, "--concurrency", 1, 3, "--max-tokens", 12, "--repeat", 1, "--warmup", 1,
              "--json", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "served/engine" in r.stdout
    summary = json.loads(out.read_text())["summary"]
    for c in ("1", "3"):
        s = summary[c]
        assert s["served"]["median"] > 0 and s["engine"]["median"] > 0 and s["ratio"]["n"] == 1
        assert s["served_ttft_ms"]["median"] > 0 and s["engine_ttft_ms"]["median"] > 0
        if sys.platform.startswith("linux"):  # CPU per token, from /proc: the server did work, the client too
            assert s["server_cpu_us_per_token"]["median"] > 0 and s["client_cpu_us_per_token"]["median"] > 0


# -- serve mode against real servers -------------------------------------------

@pytest.fixture(scope="module")
def two_servers(start_server, visible_qwen3):
    return [start_server(visible_qwen3, "--max-num-seqs", "8") for _ in range(2)]


def test_serve_sweep_writes_json_and_plots(two_servers, tmp_path):
    out = tmp_path / "serve"
    r = bench("serve", "--url", two_servers[0].base_url, "--concurrency", 1, 3, "--repeat", 2, "--warmup", 0,
              "--max-tokens", 12, "--out", out)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "TTFT p95" in r.stdout and "ITL p99" in r.stdout
    result = json.loads((out / "results.json").read_text())
    levels = result["servers"]["server1"]["concurrency"]
    assert set(levels) == {"1", "3"}
    for c, entry in levels.items():
        assert entry["failed"] == 0 and all(r["untimed"] == 0 for r in entry["rounds"]) and len(entry["rounds"]) == 2
        for rnd in entry["rounds"]:
            assert rnd["requests"] == 2 * int(c)  # --requests-per-client 2
            assert rnd["completion_tokens"] == rnd["requests"] * 12  # ignore_eos: exactly max_tokens each
            assert rnd["ttft_p50"] <= rnd["ttft_p95"] <= rnd["ttft_p99"]
            assert rnd["itl_p50"] <= rnd["itl_p99"] and rnd["e2e_p50"] >= rnd["ttft_p50"]
            assert rnd["output_tok_per_s"] == pytest.approx(rnd["completion_tokens"] / rnd["wall_s"])
    assert "compare" not in result
    for png in ("throughput.png", "latency.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_serve_without_matplotlib_writes_json_and_says_how_to_get_plots(two_servers, tmp_path):
    """A light install (no 'bench' extra): the run still ends well, with its JSON, and names the extra.
    matplotlib is hidden from the bench process by a sitecustomize that marks it unimportable."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None  # import -> ImportError\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hide), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "serve"
    r = subprocess.run([VLLM_MLX, "bench", "serve", "--url", two_servers[0].base_url, "--concurrency", "1",
                        "--repeat", "1", "--warmup", "0", "--max-tokens", "4", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    assert json.loads((out / "results.json").read_text())["servers"]["server1"]["concurrency"]["1"]["failed"] == 0
    assert "no plots: matplotlib is not installed" in r.stderr and "'bench' extra" in r.stderr
    assert "scripts/dev.sh install full" in r.stderr  # run from this clone: the clone's command
    assert not list(out.glob("*.png"))


def test_serve_compare_interleaves_two_servers(two_servers, tmp_path):
    out = tmp_path / "compare"
    a, b = (s.base_url for s in two_servers)
    r = bench("serve", "--url", a, "--compare", b, "--name", "A", "--name", "B", "--concurrency", 2,
              "--repeat", 2, "--warmup", 1, "--max-tokens", 8, "--out", out, "--no-plots")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "A / B (paired per round)" in r.stdout and "tok/s ratio" in r.stdout
    result = json.loads((out / "results.json").read_text())
    assert result["names"] == ["A", "B"]
    ratio = result["compare"]["2"]["output_tok_per_s_ratio"]
    rounds_a = result["servers"]["A"]["concurrency"]["2"]["rounds"]
    rounds_b = result["servers"]["B"]["concurrency"]["2"]["rounds"]
    expected = [x["output_tok_per_s"] / y["output_tok_per_s"] for x, y in zip(rounds_a, rounds_b)]
    assert ratio["values"] == pytest.approx(expected) and ratio["n"] == 2
    assert "ttft_p95_ratio" in result["compare"]["2"]
    decode = result["compare"]["2"]["decode_rate_ratio"]  # a stream's speed after its first token
    assert decode["values"] == pytest.approx([y["tpot_p50"] / x["tpot_p50"] for x, y in zip(rounds_a, rounds_b)])
    assert "decode rate ratio (1/TPOT p50)" in r.stdout
    assert not (out / "throughput.png").exists()


def test_serve_reports_failures_of_a_dead_server(tmp_path):
    r = bench("serve", "--url", "http://127.0.0.1:9", "--concurrency", 1, "--repeat", 1, "--warmup", 0,
              "--out", tmp_path, "--no-plots", "--no-progress")
    assert r.returncode == 1
    level = json.loads((tmp_path / "results.json").read_text())["servers"]["server1"]["concurrency"]["1"]
    assert level["failed"] == 2 and "ConnectorError" in level["rounds"][0]["errors"][0]  # refused


def test_agent_over_http(two_servers, tmp_path):
    out = tmp_path / "agent.json"
    r = bench("agent", "--url", two_servers[0].base_url, "--turns", 3, "--conversations", 2, "--warmup", 0,
              "--system-words", 120, "--max-tokens", 8, "--json", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.read_text())["summary"][two_servers[0].base_url]
    tokens = [t["prompt_tokens"] for t in summary]
    assert len(tokens) == 3 and tokens[0] > 120 and tokens[0] < tokens[1] < tokens[2]
    assert all(t["ttft_ms"]["n"] == 2 and t["ttft_ms"]["median"] > 0 for t in summary)


# -- divergence and agent in-process ----------------------------------------------

def test_divergence_in_process(tiny_qwen3, tmp_path):
    out = tmp_path / "div.json"
    r = bench("divergence", tiny_qwen3, "--num-prompts", 6, "--max-tokens", 12, "--json", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "serial vs concurrent" in r.stdout and "Wilson" in r.stdout
    result = json.loads(out.read_text())
    assert result["compared_on"] == "token ids"
    base, conc = result["serial_vs_serial"], result["serial_vs_concurrent"]
    assert base["total"] == conc["total"] == 6
    assert base["agree"] == 6  # the same request alone twice is reproducible
    # float32 on the CPU: batched greedy decoding gives the solo tokens (as test_engine asserts)
    assert conc["agree"] == 6 and conc["ci95"][0] < 1.0 == conc["ci95"][1]


def test_agent_in_process(visible_qwen3, tmp_path):
    out = tmp_path / "agent.json"
    r = bench("agent", visible_qwen3, "--turns", 3, "--conversations", 2, "--warmup", 0, "--system-words", 200,
              "--max-tokens", 8, "--json", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "TTFT per turn" in r.stdout
    result = json.loads(out.read_text())
    (name,) = result["names"]
    assert len(result["runs"][name]) == 2
    tokens = [t["prompt_tokens"] for t in result["summary"][name]]
    assert tokens[0] > 200 and tokens[0] < tokens[1] < tokens[2]


def test_cli_errors():
    r = bench("divergence")
    assert r.returncode == 2 and "either MODEL" in r.stderr
    r = bench("agent", "some-model", "--compare", "http://127.0.0.1:9")
    assert r.returncode == 2 and "--compare needs --url" in r.stderr
    r = bench("serve", "--url", "http://x", "--concurrency", 0)
    assert r.returncode == 2 and "--concurrency must be at least 1" in r.stderr
    r = bench("/nonexistent-model-folder", "--repeat", 1)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_rows_bench_against_an_engine_with_speculation(tiny_qwen3, tmp_path, method):
    out = tmp_path / "rows.json"
    draft = ("--draft-model", tiny_qwen3) if method == "draft" else ()
    r = bench("rows", tiny_qwen3, "--rows", 1, 2, "--tokens", 16, "--repeat", 1, "--warmup", 0, "--speculative",
              method, *draft, "--json", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "the engine without speculation" in r.stdout and f"speculation ({method}, all rounds)" in r.stdout
    result = json.loads(out.read_text())
    assert result["summary"]["2"]["ratio_speculative"]["median"] > 0
    spec = result["speculation"]
    assert spec["method"] == method and spec["proposed"] >= spec["accepted"]
    if method == "draft":
        r = bench("rows", tiny_qwen3, "--speculative", "draft")
        assert r.returncode == 2 and "--speculative draft and --draft-model MODEL go together" in r.stderr
