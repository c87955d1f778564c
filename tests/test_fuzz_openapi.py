"""Schemathesis against the server's own /openapi.json: every route, valid and invalid inputs.

Zero 5xx, every rejection in the API's own error shape, no exception in the server log.
Short by default; VLLM_MLX_FUZZ_EXAMPLES=500 (examples per route and mode) is the long form
(docs/reliability.md).
"""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from fuzz_support import log_problems, problems

EXAMPLES = int(os.environ.get("VLLM_MLX_FUZZ_EXAMPLES", "12"))


def _fuzz_operation(server, operation, mode: GenerationMode, failures: list[str]) -> int:
    calls = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=server.base_url, timeout=60)
        calls.append(response.status_code)
        for problem in problems(case.formatted_path, response.status_code,
                                response.headers.get("content-type", ""), response.text):
            failures.append(f"{operation.method.upper()} {operation.path} [{mode.value}] {problem}\n"
                            f"  body: {str(getattr(case, 'body', None))[:400]}")

    try:
        run()
    except Unsatisfiable:  # no invalid input exists (a GET without parameters)
        assert mode is GenerationMode.NEGATIVE
    return len(calls)


def test_every_route_answers_4xx_in_its_shape_never_5xx(fuzz_server):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")
    failures: list[str] = []
    calls, routes = 0, set()
    for result in schema.get_all_operations():
        operation = result.ok()
        routes.add(f"{operation.method.upper()} {operation.path}")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls += _fuzz_operation(fuzz_server, operation, mode, failures)
    assert {"POST /v1/chat/completions", "POST /v1/completions", "POST /v1/messages",
            "POST /v1/messages/count_tokens", "POST /v1/responses", "POST /v1/embeddings"} <= routes
    assert calls >= len(routes) * 2
    assert fuzz_server.proc.poll() is None, "the server died"
    failures += [f"server log: {line}" for line in log_problems(fuzz_server.log())]
    assert not failures, f"{len(failures)} problem(s) in {calls} calls:\n" + "\n".join(dict.fromkeys(failures))
