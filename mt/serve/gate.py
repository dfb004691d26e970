"""The ASGI middleware around every request of `mt serve` (`Gate`): the body's size and read
deadline, a client that disconnects before its answer, an unexpected error answered as a 500
JSON sentence, and the count of every answer for /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse

from mt.serve.api import ApiError
from mt.serve.batch import Metrics

log = logging.getLogger("mt.serve")

CLIENT_GONE = 499  # nginx's status for a client that closed the connection before the answer


class Gate:
    """ASGI middleware guarding each request: refuses bodies over serve.max_body_bytes (413) or
    not complete within read_timeout_s (408, then the connection closes); cancels the app when
    the client disconnects first (its queued sentences are then never decoded); answers an
    unexpected error with a 500 JSON sentence and one traceback in the log, keeping the
    connection; counts every answer by path (one of `routes`, else "other"; a client gone
    before its answer as 499)."""

    def __init__(
        self, app: Any, max_body_bytes: int, read_timeout_s: float, metrics: Metrics,
        routes: tuple[str, ...],
    ) -> None:  # fmt: skip
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.read_timeout_s, self.routes = read_timeout_s, routes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [CLIENT_GONE]  # until an answer starts

        async def send_noting_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope["path"] if scope["path"] in self.routes else "other"
        try:
            body = await self._read_body(scope, receive)
            if isinstance(body, bytes):
                await self._run(scope, body, receive, send_noting_status, status)
            elif body is not None:
                await _answer(scope, send_noting_status, body)
        finally:
            self.metrics.record_request(path, status[0], time.perf_counter() - started)

    async def _read_body(self, scope: dict, receive: Callable) -> bytes | ApiError | None:
        """The whole body; else the error to answer (too big, too slow), or None if the client
        left."""
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"0")
        too_big = ApiError(
            413, f"the request body is over serve.max_body_bytes={self.max_body_bytes}."
        )
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return too_big
        chunks, size = [], 0
        deadline = time.monotonic() + self.read_timeout_s
        while True:
            try:  # a deadline on the whole body: dribbling a byte at a time does not reset it
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                return ApiError(
                    408, f"the request body did not arrive within serve.read_timeout_s="
                    f"{self.read_timeout_s:g} seconds.",
                )  # fmt: skip
            if message["type"] != "http.request":  # the client left
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return too_big
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _run(
        self, scope: dict, body: bytes, receive: Callable, send: Callable, status: list[int]
    ) -> None:
        """The app on `body`, cancelled if the client disconnects before it answers; an error
        it raises is logged once and answered 500 if no answer has started."""
        gone = asyncio.Event()

        async def watch() -> None:  # the only reader of the client's messages from now on
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        unread = [body]

        async def replayed() -> dict:  # the app's receive(): the body, then the disconnect
            if unread:
                return {"type": "http.request", "body": unread.pop(), "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        app = asyncio.ensure_future(self.app(scope, replayed, send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({app, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this task is cancelled (the server stopping)
            watcher.cancel()
            if not app.done():
                app.cancel()
        try:
            await app
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
            if status[0] == CLIENT_GONE:  # no answer started
                await _answer(scope, send, ApiError(500, "internal error; see the server log."))


async def _answer(scope: dict, send: Callable, error: ApiError) -> None:
    """Send `error` as the JSON answer; a 408 or 413 closes the connection (the rest of the body
    was not read)."""
    headers = {"connection": "close"} if error.status in (408, 413) else None
    await JSONResponse({"error": error.message}, error.status, headers)(scope, _nothing, send)


async def _nothing() -> dict:
    return {"type": "http.disconnect"}
