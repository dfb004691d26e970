"""run_serve: a trained run behind an HTTP API (FastAPI on uvicorn), until SIGTERM or Ctrl-C.

Loads the run once, binds host:port (127.0.0.1 unless told otherwise), logs the URL, and
serves the app of mt.serve_app; SIGTERM lets in-flight requests finish, then exits 0.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mt.config import ServeConfig, ServeOptions, validate_serve
from mt.errors import MTError
from mt.translate import load_run, make_translator, setup_inference

log = logging.getLogger("mt.serve")

API_KEY_ENV = "MT_SERVE_API_KEY"


def run_serve(cfg: ServeConfig) -> None:
    """Serve cfg.run_dir on cfg.host:cfg.port until stopped."""
    validate_serve(cfg)
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise MTError(f"mt serve needs {' and '.join(missing)}: pip install 'mt[serve]'.")
    import uvicorn

    from mt.serve_app import build_app

    if not Path(cfg.run_dir).is_dir():
        raise MTError(f"run_dir {cfg.run_dir} is not a folder.")
    device, precision = setup_inference(cfg.device, cfg.precision, cfg.threads)
    run = load_run(Path(cfg.run_dir), cfg.checkpoint, device)
    translator = make_translator(run, cfg.decode, device, precision, cfg.engine)
    api_key = api_key_of(cfg.serve)
    app = build_app(translator, cfg.serve, api_key)
    sock = _bind(cfg.host, cfg.port)
    config = uvicorn.Config(
        app,
        log_config=None,  # mt's logging set-up prints uvicorn's lines too
        timeout_graceful_shutdown=int(cfg.serve.timeout_s) + 5,
    )
    server = uvicorn.Server(config)
    log.info(
        "serving %s on %s (API docs at /docs%s)",
        run.checkpoint,
        _url(sock),
        ", API key required" if api_key else "",
    )
    with _sigterm_exits_cleanly():
        server.run(sockets=[sock])


def api_key_of(options: ServeOptions) -> str | None:
    """serve.api_key, else $MT_SERVE_API_KEY, else None (no key needed)."""
    return options.api_key or os.environ.get(API_KEY_ENV) or None


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
def _sigterm_exits_cleanly() -> Iterator[None]:
    """After its graceful shutdown uvicorn re-raises the SIGTERM it caught; with the default
    handler that would kill the process (status -15), so handle it as a normal stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(
        signal.SIGTERM,
        lambda *_: log.info("SIGTERM: stopped after answering the requests in flight"),
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
