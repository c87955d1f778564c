"""Operator routes for running generations: list them, cancel one.

* ``GET /v1/requests`` — the generations running now, by the id of their response (also in its
  ``x-request-id`` header): API, model, elapsed time, tokens, tokens/s, prefix-cache hit rate.
* ``POST /v1/requests/{id}/cancel`` — end one now. Its client gets the API's normal end (a final chunk
  with ``finish_reason: "cancelled"`` and ``[DONE]``; ``response.incomplete`` with status
  ``cancelled``; a ``message_delta`` with ``stop_reason: "end_turn"`` and ``stop_details.type:
  "cancelled"``), not an error; a client that went away is a disconnect, not a cancel.
* ``POST /v1/responses/{id}/cancel`` — the OpenAI Responses route: cancels and answers with the
  response object in its final, ``cancelled`` state.

Behind ``--api-key`` like every route but ``/``, ``/ui`` and ``/health``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..serving.running import api_of
from ..serving.state import ServingState
from .errors import APIError
from .responses_routes import cancelled_responses

logger = logging.getLogger(__name__)

router = APIRouter()

RESPONSE_WAIT_S = 10.0  # how long a Responses cancel waits for the response's final state


def loaded_servings(raw: Request) -> list[ServingState]:
    """The serving states of every loaded model."""
    return raw.app.state.model_registry.loaded_servings()


def running_requests(raw: Request) -> list[dict]:
    entries = [entry for state in loaded_servings(raw) for entry in state.running.snapshot(state.model_name)]
    return sorted(entries, key=lambda e: -e["elapsed_s"])


def _cancel(raw: Request, request_id: str) -> list:
    cancelled = [r for state in loaded_servings(raw) for r in state.running.cancel(request_id)]
    if not cancelled:
        raise APIError(404, f"no running request has the id {request_id!r} (finished, or never started)",
                       param="request_id", code="request_not_found")
    logger.info("request %s (%s) cancelled by an operator", request_id, api_of(request_id))
    return cancelled


@router.get("/v1/requests")
async def list_requests(raw: Request):
    return JSONResponse({"object": "list", "data": running_requests(raw),
                         "cancelled_total": sum(state.running.cancelled_total for state in loaded_servings(raw))})


@router.post("/v1/requests/{request_id}/cancel")
async def cancel_request(request_id: str, raw: Request):
    _cancel(raw, request_id)
    return JSONResponse({"id": request_id, "object": "request", "api": api_of(request_id), "cancelled": True})


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, raw: Request):
    store = cancelled_responses(raw)
    if store.get(response_id) is None:
        try:
            _cancel(raw, response_id)
        except APIError:
            stored = getattr(raw.app.state, "responses_store", None)
            if stored is not None and stored.get(response_id) is not None:
                raise APIError(400, f"response {response_id!r} has already finished; only a running response "
                                    f"can be cancelled", param="response_id") from None
            raise APIError(404, f"no running response has the id {response_id!r}", param="response_id",
                           code="response_not_found") from None
    deadline = time.monotonic() + RESPONSE_WAIT_S
    while (body := store.get(response_id)) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # the response's own route writes its final state
    if body is None:  # its client went away before the end was written
        body = {"id": response_id, "object": "response", "status": "cancelled", "output": [],
                "incomplete_details": {"reason": "cancelled"}}
    return JSONResponse(body)
