"""Deadlines for every phase of an HTTP connection, so slow or silent clients cannot hold one open.

uvicorn closes a connection that idles *between* requests (``timeout_keep_alive``), but not one that
opens and sends nothing, sends its headers a byte at a time (slowloris), drips its body, or stops
reading a response. This protocol -- uvicorn's httptools protocol with timers around its parser
callbacks -- closes each of them:

* headers: from the connection's start (or a later request's first byte) to the end of its headers,
  ``--header-timeout``; a client that began a request gets a bare 408, a silent one is just closed;
* body: from the end of the headers to the end of the body, ``--body-timeout`` plus a short grace
  (the ASGI middleware in body_limit.py answers 408 in the API's shape at the deadline itself; this is
  the backstop for bodies no route reads, e.g. on a GET);
* writing: a response the client reads none of for ``--write-timeout`` (the transport's buffer above
  its high-water mark all along). Closing the connection ends the request's stream, which aborts its
  generation in the engine.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)

BODY_GRACE_S = 2.0  # the ASGI-level 408 goes first; then the connection is closed regardless
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: 24\r\nconnection: close\r\n\r\nrequest headers too slow")


def guarded_protocol(header_timeout_s: float, body_timeout_s: float, write_timeout_s: float):
    """uvicorn's ``http`` protocol class with these deadlines (one class per server, no shared state)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # uvicorn[standard] brings httptools; without it there are no header deadlines
        logger.warning("httptools is not installed: --header-timeout and --write-timeout are not enforced")
        return "auto"

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        timeouts = {"headers": header_timeout_s, "body": body_timeout_s + BODY_GRACE_S, "write": write_timeout_s}

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._phase: asyncio.TimerHandle | None = None  # the headers or body deadline
            self._write: asyncio.TimerHandle | None = None
            self._begun = False  # bytes of a request's head arrived (a silent connection just closes)

        def _arm(self, kind: str) -> None:
            self._disarm()
            self._phase = self.loop.call_later(self.timeouts[kind], self._expire, kind)

        def _disarm(self) -> None:
            if self._phase is not None:
                self._phase.cancel()
                self._phase = None

        def _expire(self, kind: str) -> None:
            if kind != "write":
                self._phase = None
            else:
                self._write = None
            if self.transport is None or self.transport.is_closing():
                return
            client = self.client[0] if self.client else "?"
            flag = {"headers": "--header-timeout", "body": "--body-timeout", "write": "--write-timeout"}[kind]
            logger.info("closing the connection from %s: %s (%s)", client, {
                "headers": "its request headers did not arrive in time",
                "body": "its request body did not arrive in time",
                "write": "it read none of the response in time"}[kind], flag)
            if kind == "headers" and self._begun and (self.cycle is None or self.cycle.response_complete):
                self.transport.write(TIMEOUT_RESPONSE)
            if kind == "write":
                # The client reads nothing: flushing first would wait forever, and the request would not
                # learn that its client is gone. Drop the connection now (connection_lost tells the app).
                self.transport.abort()
            else:
                self.transport.close()

        # -- the connection and the parser's callbacks ------------------------------------
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm("headers")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._begun = True
            if self._phase is None:
                self._arm("headers")

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._begun = False
            self._arm("body")

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm_all()
            super().connection_lost(exc)

        def handle_websocket_upgrade(self) -> None:
            self._disarm_all()  # the connection belongs to the WebSocket protocol from here on
            super().handle_websocket_upgrade()

        def _disarm_all(self) -> None:
            self._disarm()
            if self._write is not None:
                self._write.cancel()
                self._write = None

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write is None:
                self._write = self.loop.call_later(self.timeouts["write"], self._expire, "write")

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write is not None:
                self._write.cancel()
                self._write = None

    return GuardedHttpToolsProtocol
