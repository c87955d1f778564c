"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..serving.errors import APIError, ContextOverflow

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_")
    except ValueError:
        return "error"


# error.code when the error names none: always a string (clients switch on it), never the status number
_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "forbidden",
    404: "not_found",
    408: "request_timeout",
    413: "request_too_large",
    422: "invalid_request",
    429: "rate_limit_exceeded",
    499: "client_closed_request",
    500: "server_error",
    503: "service_unavailable",
    504: "request_timeout",
}


def default_code(status: int) -> str:
    return _CODES.get(status) or _phrase(status)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status) or _phrase(status),
            "param": param,
            "code": str(code) if code is not None else default_code(status),
        }
    }


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


# Routes under this prefix speak Anthropic's error shape: {"type": "error", "error": {"type", "message"}}.
ANTHROPIC_PREFIX = "/v1/messages"
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 408: "timeout_error", 413: "request_too_large", 422: "invalid_request_error",
                    429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error",
                    529: "overloaded_error"}


def anthropic_error_body(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


RESPONSES_PREFIX = "/v1/responses"
# What OpenAI's Responses API says when the input does not fit (Codex compacts on the code)
RESPONSES_OVERFLOW = "Your input exceeds the context window of this model. Please adjust your input and try again."


def error_response_for(path: str, status: int, message: str, param: str | None = None,
                       code: str | None = None) -> JSONResponse:
    """An error in the shape of the API the path belongs to (Anthropic under /v1/messages, else OpenAI)."""
    if _under(path, ANTHROPIC_PREFIX):
        return JSONResponse(anthropic_error_body(status, message), status_code=status)
    return error_response(status, message, param, code)


def overflow_message(path: str, exc: ContextOverflow) -> tuple[str, str | None]:
    """(message, param) of a context overflow as each API's clients expect it: Anthropic's
    ``prompt is too long: N tokens > M maximum`` (Claude Code and opencode compact and retry on it),
    OpenAI Responses' wording with ``param: input`` (Codex reacts to the code), chat's own detail."""
    if _under(path, ANTHROPIC_PREFIX):
        return f"prompt is too long: {exc.prompt_tokens} tokens > {exc.max_prompt_tokens} maximum", exc.param
    if _under(path, RESPONSES_PREFIX):
        param = "max_output_tokens" if exc.max_tokens is not None else "input"
        return f"{RESPONSES_OVERFLOW} ({exc.message})", param
    return exc.message, exc.param


def generation_failure(out) -> APIError:
    """The error of a generation that ended with FinishReason.ERROR: a grammar that failed while
    decoding is the request's fault (400); anything else is the server's (500)."""
    if getattr(out, "error_status", 500) == 400:
        return APIError(400, f"the output constraint failed while decoding: {out.error}", code="constraint_failed")
    return APIError(500, f"generation failed: {out.error}", code="generation_error")


def bracket_path(param: str | None) -> str | None:
    """``input.3.content.0`` as OpenAI writes paths: ``input[3].content[0]``."""
    if not param:
        return param
    out = ""
    for part in param.split("."):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def _field_path(loc: tuple) -> list[str]:
    """A validation error's location as field names and indexes (union branch tags such as ``str`` or
    ``list[dict[str,any]]`` dropped)."""
    return [str(p) for p in loc if p != "body" and not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p))]


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "function-after", "function-before"}


def _validation_message(exc: RequestValidationError, path: str) -> tuple[str, str | None]:
    errors = exc.errors()
    # of a union's branches, the error that got furthest into the value says the most
    first = max(errors, key=lambda e: len(_field_path(e.get("loc", ())))) if errors else {}
    if first.get("type") == "json_invalid":  # the body did not parse: say where and why
        loc = first.get("loc", ())
        where = f" at character {loc[-1]}" if len(loc) > 1 and isinstance(loc[-1], int) else ""
        problem = (first.get("ctx") or {}).get("error") or "invalid JSON"
        return f"the request body is not valid JSON: {problem}{where}", None
    param = ".".join(_field_path(first.get("loc", ()))) or None
    if _under(path, RESPONSES_PREFIX):
        param = bracket_path(param)
    msg = first.get("msg", "invalid request")
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        message, param = exc.message, exc.param
        if isinstance(exc, ContextOverflow):
            message, param = overflow_message(request.url.path, exc)
        response = error_response_for(request.url.path, exc.status, message, param, exc.code)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc, request.url.path)
        return error_response_for(request.url.path, 400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error_response_for(request.url.path, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("unhandled error")
        return error_response_for(request.url.path, 500, f"internal error: {type(exc).__name__}")
