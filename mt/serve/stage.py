"""run_serve: a trained run behind an HTTP API (FastAPI on uvicorn), until SIGTERM or Ctrl-C.

Loads the run once, binds host:port (127.0.0.1 unless told otherwise), logs the URL, and
serves the app of mt.serve.app. A connection that sends no complete request head in time is
closed. SIGTERM gives the requests in flight a few seconds, answers the rest with 503, and
exits 0 once the decoder has finished its chunk.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mt.config import ServeConfig, ServeOptions, validate_serve
from mt.decode.engine import make_translator, setup_inference
from mt.decode.run import load_run
from mt.errors import MTError

if TYPE_CHECKING:  # uvicorn is optional (the serve extra): imported where it is used
    import uvicorn

log = logging.getLogger("mt.serve")

API_KEY_ENV = "MT_SERVE_API_KEY"


def run_serve(cfg: ServeConfig) -> None:
    """Serve cfg.run_dir on cfg.host:cfg.port until stopped."""
    validate_serve(cfg)
    api_key = api_key_of(cfg.serve)
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise MTError(f"mt serve needs {' and '.join(missing)}: pip install 'mt[serve]'.")
    from mt.serve.app import build_app  # fastapi is an optional extra (mt[serve])

    if not Path(cfg.run_dir).is_dir():
        raise MTError(f"run_dir {cfg.run_dir} is not a folder.")
    device, precision = setup_inference(cfg.device, cfg.precision, cfg.threads)
    run = load_run(Path(cfg.run_dir), cfg.checkpoint, device)
    translator = make_translator(run, cfg.decode, device, precision, cfg.engine)
    app = build_app(translator, cfg.serve, api_key)
    sock = _bind(cfg.host, cfg.port)
    server = make_server(app, cfg.serve.idle_timeout_s, cfg.serve.shutdown_s)
    log.info(
        "serving %s on %s (API docs at /docs%s)",
        run.checkpoint,
        _url(sock),
        ", API key required" if api_key else "",
    )
    with _sigterm_exits_cleanly(cfg.serve.shutdown_s):
        asyncio.run(serve(server, sock, app.state.batcher.close, cfg.serve.shutdown_s))


def api_key_of(options: ServeOptions) -> str | None:
    """serve.api_key, else $MT_SERVE_API_KEY, else None (no key needed).

    Raises:
        MTError: If the key given is empty or blank, which would leave the API open.
    """
    if options.api_key is not None:
        key, where = options.api_key, "serve.api_key"
    else:
        key, where = os.environ.get(API_KEY_ENV), f"${API_KEY_ENV}"
    if key is not None and not key.strip():
        raise MTError(
            f"{where} is empty, which would leave the API open: give a key, or leave it unset "
            "to serve without one."
        )
    return key


def make_server(
    app: Any, idle_timeout_s: float = ServeOptions.idle_timeout_s,
    shutdown_s: float = ServeOptions.shutdown_s,
) -> uvicorn.Server:  # fmt: skip
    """A uvicorn.Server of `app` (from mt.serve.app.build_app) whose connections are closed
    when no complete request head arrives within idle_timeout_s (see `_head_deadline`)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http=_head_deadline(),
        log_config=None,  # mt's logging set-up prints uvicorn's lines too
        timeout_keep_alive=idle_timeout_s,  # type: ignore[arg-type]  # a float works
        timeout_graceful_shutdown=int(shutdown_s) + 2,  # `serve` answers before it cancels
    )
    return uvicorn.Server(config)


async def serve(
    server: uvicorn.Server, sock: socket.socket, close: Callable[[], None],
    shutdown_s: float = ServeOptions.shutdown_s,
) -> None:  # fmt: skip
    """server.serve on `sock`; shutdown_s after it starts to stop (SIGTERM), `close()` (the
    batcher's) answers every request still waiting with 503 and stops the decoder after its
    chunk, before uvicorn would cancel them."""

    async def close_when_stopping() -> None:
        while not server.should_exit:  # set by uvicorn's signal handler; it polls it too
            await asyncio.sleep(0.1)
        await asyncio.sleep(shutdown_s)
        close()

    watch = asyncio.ensure_future(close_when_stopping())
    try:
        await server.serve(sockets=[sock])
    finally:
        watch.cancel()


def _head_deadline() -> type:
    """uvicorn's h11 protocol, closing a connection whose next request head has not arrived
    within timeout_keep_alive seconds of its opening or of its last answer, and, on shutdown,
    one whose request body is still arriving. uvicorn's own keep-alive timer starts only after
    a first answer and restarts on every byte, so a client sending nothing, or a byte every
    few seconds, would hold its connection forever. (A class made here: uvicorn is optional.)
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.arm()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request head arrived
                self.disarm()

        def on_response_complete(self) -> None:
            self.arm()  # before: uvicorn may start a pipelined request, which disarms
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

        def shutdown(self) -> None:
            if self.cycle is not None and self.cycle.more_body and not self.cycle.response_started:
                self.transport.close()  # the app sees the client leave, answers nothing
            else:
                super().shutdown()

        def arm(self) -> None:
            self.disarm()
            self.deadline = self.loop.call_later(self.timeout_keep_alive, self.expire)

        def disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def expire(self) -> None:
            if self.cycle is None or self.cycle.response_complete:  # no request in progress
                self.timeout_keep_alive_handler()

    return HeadDeadline


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or MTError in one sentence (port taken, bad host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise MTError(f"cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


@contextmanager
def _sigterm_exits_cleanly(shutdown_s: float) -> Iterator[None]:
    """After its graceful shutdown uvicorn re-raises the SIGTERM it caught; with the default
    handler that would kill the process (status -15), so handle it as a normal stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(
        signal.SIGTERM,
        lambda *_: log.info(
            "SIGTERM: stopped (requests not answered within %g s got 503)", shutdown_s
        ),
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
