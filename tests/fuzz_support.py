"""What every answer of the server must look like under fuzzing: no 5xx, errors in the API's shape."""

from __future__ import annotations

import json

ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/count_tokens")


def problems(path: str, status: int, content_type: str, text: str) -> list[str]:
    """What is wrong with one response (empty when it is fine)."""
    found = []
    if status >= 500:
        found.append(f"server error {status}")
    if "text/event-stream" in content_type:
        # a stream is 200 from its first byte: a failure inside it shows up as an error event
        if '"generation_error"' in text or "internal error" in text or '"api_error"' in text:
            found.append("error event inside a stream")
        return found
    if status >= 400:
        try:
            body = json.loads(text)
        except ValueError:
            return found + [f"{status} with a body that is not JSON: {text[:200]!r}"]
        if path.split("?")[0] in ANTHROPIC_PATHS:
            ok = (isinstance(body, dict) and body.get("type") == "error" and isinstance(body.get("error"), dict)
                  and isinstance(body["error"].get("message"), str) and isinstance(body["error"].get("type"), str))
        else:
            err = body.get("error") if isinstance(body, dict) else None
            ok = isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)
        if not ok:
            found.append(f"{status} not in the API's error shape: {text[:300]}")
    return found


def log_problems(log: str) -> list[str]:
    """Tracebacks in the server log: an exception escaped somewhere, even if the client saw a 4xx."""
    return [line for line in log.splitlines() if "Traceback" in line or "Exception in ASGI" in line]
