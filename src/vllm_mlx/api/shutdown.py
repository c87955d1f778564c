"""Graceful shutdown: on SIGTERM/SIGINT stop taking requests, let running ones finish for a while,
then end the rest with a proper final event instead of a cut connection."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain window before in-flight generations are aborted.

    uvicorn stops accepting connections and waits for open ones when it is asked to exit. During
    ``drain_seconds`` requests keep generating; after that every remaining request is aborted in the
    engine, so each stream still gets its final chunk (finish_reason "abort") and ``[DONE]``.
    uvicorn's own graceful timeout, a few seconds later, is only the backstop.
    """

    def __init__(self, config: uvicorn.Config, app, drain_seconds: float):
        super().__init__(config)
        self._app = app
        self._drain_seconds = drain_seconds

    async def shutdown(self, sockets=None) -> None:
        logger.info("shutting down: draining in-flight requests for up to %.0f s", self._drain_seconds)
        abort = asyncio.get_running_loop().call_later(self._drain_seconds, self._abort_remaining)
        try:
            await super().shutdown(sockets)
        finally:
            abort.cancel()

    def _abort_remaining(self) -> None:
        logger.warning("drain time is over: ending the remaining requests")
        self._app.state.model_registry.abort_all()
