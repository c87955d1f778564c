"""Attacks at the HTTP layer against a real server process, each with the bound it must stay within:
lone UTF-16 surrogates in every text field, slow and silent connections (slowloris), and a client
that stops reading a large streamed answer. The figures of the longer forms: docs/reliability.md."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from vllm_mlx.api.unicode_check import lone_surrogate
from vllm_mlx_testing.attacks import (
    HealthProbe,
    closed_by_server,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    slow_connections,
    stalled_stream,
    surrogate_requests,
)

pytestmark = pytest.mark.reliability

STREAM_BUFFER_MB = 2


@pytest.fixture(scope="module")
def server(start_server, tiny_qwen3):
    return start_server(tiny_qwen3, "--served-model-name", "tiny-qwen3", "--max-num-seqs", "64",
                        "--header-timeout", "1", "--body-timeout", "1", "--write-timeout", "3",
                        "--stream-buffer-mb", str(STREAM_BUFFER_MB))


def _engine(server) -> dict:
    return httpx.get(f"{server.base_url}/health").json()["engine"]


# -- lone surrogates ------------------------------------------------------------------------------------
def test_lone_surrogate_detection():
    assert lone_surrogate(b'"\\ud800"') == "\\ud800" and lone_surrogate(b'"\\udc00x"') == "\\udc00"
    assert lone_surrogate(b'{"\\uD83D": 1}') == "\\ud83d"  # in a key
    assert lone_surrogate(b'"\\ud83d\\ud83d\\ude00"') == "\\ud83d"  # a high one followed by a pair
    assert lone_surrogate(b'"\\\\\\ud800"') == "\\ud800"  # an escaped backslash, then the escape
    assert lone_surrogate(b'"\xed\xa0\x80"') == "bytes ED A0 80"  # the bytes a surrogate would encode to
    for fine in (b'"\\ud83d\\ude00"', json.dumps("emoji \U0001F600").encode(), b'"\\\\ud800"', b'"\xed\x9f\xbf"',
                 "plain é ✓".encode(), b"not json \\ud800"):
        assert lone_surrogate(fine) is None, fine


def test_lone_surrogates_are_400_in_every_api(server):
    for name, path, body in surrogate_requests():
        resp = httpx.post(f"{server.base_url}{path}", content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 400, (name, resp.status_code, resp.text[:300])
        error = resp.json()
        if path.startswith("/v1/messages"):
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", name
            assert "surrogate" in error["error"]["message"]
        else:
            assert error["error"]["code"] == "invalid_unicode" and "surrogate" in error["error"]["message"], name
    # an escaped surrogate *pair* is an emoji: served
    ok = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"content-type": "application/json"},
                    content=b'{"max_tokens": 2, "messages": [{"role": "user", "content": "hi \\ud83d\\ude00"}]}')
    assert ok.status_code == 200, ok.text
    assert "Traceback" not in server.log()


# -- slow clients ---------------------------------------------------------------------------------------
def test_slow_and_silent_connections_are_closed(server):
    port = int(server.base_url.rsplit(":", 1)[1])
    with HealthProbe(server.base_url) as probe:
        started = time.monotonic()
        results = slow_connections("127.0.0.1", port, count=51, drip_s=0.2, give_up_s=15)
        took = time.monotonic() - started
    by_kind = {kind: [r for r in results if r[0] == kind] for kind in ("silent", "headers", "body")}
    assert all(len(v) == 17 for v in by_kind.values())
    # every one closed within its deadline (1 s) plus scheduling slack; none was left open
    assert all(end != "open" and seconds < 5 for _, end, seconds in results), results
    assert {end for _, end, _ in by_kind["silent"]} <= {"closed", "reset:ConnectionResetError"}
    assert {end for _, end, _ in by_kind["headers"]} == {"408"}  # began a request: told why
    assert {end for _, end, _ in by_kind["body"]} == {"408"}  # in the API's shape (next test)
    assert took < 10
    assert not probe.failures and probe.percentile_ms(0.99) < 1000, (probe.failures, probe.percentile_ms(0.99))
    log = server.log()
    assert "--header-timeout" in log and "--body-timeout" in log
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_a_slow_body_gets_408_in_the_apis_shape(server):
    port = int(server.base_url.rsplit(":", 1)[1])
    for path in ("/v1/chat/completions", "/v1/messages"):
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         f"content-length: 100\r\n\r\n{{".encode())
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
        error = json.loads(body)
        if path == "/v1/messages":
            assert error["type"] == "error" and "--body-timeout" in error["error"]["message"]
        else:
            assert error["error"]["code"] == "request_timeout" and "--body-timeout" in error["error"]["message"]


# -- a client that stops reading ------------------------------------------------------------------------
def test_a_stalled_reader_is_stopped_and_bounded(server):
    """n=64 rows with 20 logprobs each stream to a client that reads nothing: the request is stopped
    once its undelivered output passes --stream-buffer-mb, memory stays bounded, /health stays fast,
    and the connection is closed after --write-timeout."""
    port = int(server.base_url.rsplit(":", 1)[1])
    before = _engine(server)
    rss0 = rss_mb(server.proc.pid)
    reset_peak_rss(server.proc.pid)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "n": 64,
            "stream": True, "logprobs": True, "top_logprobs": 20, "ignore_eos": True}
    several = {"model": "m", "prompt": ["hi", "there", "you"], "max_tokens": 2000, "n": 16, "stream": True,
               "logprobs": 20, "ignore_eos": True}
    with HealthProbe(server.base_url) as probe:
        socks = [stalled_stream("127.0.0.1", port, "/v1/chat/completions", chat),
                 stalled_stream("127.0.0.1", port, "/v1/completions", several)]
        deadline = time.monotonic() + 120  # generous: on a loaded machine the buffers fill slowly
        while time.monotonic() < deadline:
            engine = _engine(server)
            if engine["requests_aborted"] >= before["requests_aborted"] + 4 and engine["running"] == 0:
                break
            time.sleep(0.2)
        closed = [closed_by_server(s, timeout_s=15) for s in socks]  # --write-timeout 3
        for s in socks:
            s.close()
    engine = _engine(server)
    # 1 chat request + 3 prompts, each stopped in the engine, nothing left running
    assert engine["requests_aborted"] >= before["requests_aborted"] + 4 and engine["running"] == 0, engine
    assert engine["generation_tokens"] - before["generation_tokens"] < 64 * 2000  # far from the whole answer
    assert all(closed), closed
    log = server.log()
    assert log.count("its client is not reading the stream") >= 2 and "--stream-buffer-mb" in log
    # what the server held: two buffers of 2 MiB plus the rows' KV cache and allocator slack
    peak = peak_rss_mb(server.proc.pid)
    assert peak - rss0 < 150, (rss0, peak)
    assert not probe.failures and probe.percentile_ms(0.99) < 1000, probe.percentile_ms(0.99)
    assert httpx.post(f"{server.base_url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
