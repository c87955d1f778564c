"""/metrics in Prometheus format after real traffic."""

from __future__ import annotations

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families


def _samples(server) -> dict:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_after_traffic(qwen3_server):
    c = openai.OpenAI(base_url=f"{qwen3_server.base_url}/v1", api_key="x", max_retries=0)
    before = _samples(qwen3_server)
    key = ("vllm_mlx_http_requests_total", (("route", "/v1/chat/completions"), ("status", "200")))
    ttft_key = ("vllm_mlx_time_to_first_token_seconds_count", ())
    # ignore_eos: every request streams tokens, so each one has a time to first token (a sampled EOS
    # as the first token would leave a request without one)
    for _ in range(3):
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                  extra_body={"ignore_eos": True})
    list(c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                   stream=True, extra_body={"ignore_eos": True}))
    httpx.post(f"{qwen3_server.base_url}/v1/chat/completions", json={"model": "m"}, timeout=10)  # a 400
    after = _samples(qwen3_server)
    assert after[key] - before.get(key, 0) == 4
    bad = ("vllm_mlx_http_requests_total", (("route", "/v1/chat/completions"), ("status", "400")))
    assert after[bad] - before.get(bad, 0) == 1
    assert after[ttft_key] - before.get(ttft_key, 0) == 4
    assert after[("vllm_mlx_inter_token_latency_seconds_count", ())] > 0
    assert after[("vllm_mlx_generation_tokens_processed", ())] >= before.get(
        ("vllm_mlx_generation_tokens_processed", ()), 0) + 16
    assert ("vllm_mlx_running_requests", ()) in after and ("vllm_mlx_prefix_cache_bytes", ()) in after
