"""The FastAPI app of `mt serve`: routes, request models, limits, API key, JSON errors.

Every error is `{"error": "<one sentence>"}` with a 4xx/5xx status; a limit's sentence names
its `serve.*` key. `build_app` takes objects (a Translator, the options, the key), not config.
One request's fault (bad text, a decoder error, a slow body, a client gone) is answered or
dropped on its own: the others in its batch still get their translations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import importlib.resources
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mt.config import ServeOptions
from mt.decode.engine import Translator
from mt.serve.attention import attention_matrix
from mt.serve.batch import (
    Batcher,
    DecodeFailed,
    Metrics,
    QueueFull,
    Results,
    ServerStopping,
    Settings,
    TooCostly,
)

log = logging.getLogger("mt.serve")

PAGE = "page.html"
ROUTES = ("/", "/translate", "/attention", "/health", "/metrics", "/docs", "/openapi.json")
STOPPING = "the server is stopping; send the request again shortly."
CLIENT_GONE = 499  # nginx's status for a client that closed the connection before the answer


class ApiError(Exception):
    """An error answer: HTTP status and the sentence sent as {"error": ...}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class TranslateRequest(BaseModel):
    """Sentences to translate, with optional decode settings (the server's by default)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": ["A man rides a bike."], "beam": 4}]},
    )
    text: str | list[str] = Field(description="One sentence, or a list of sentences.")
    beam: int | None = Field(None, ge=1, description="Beam size, at most serve.max_beam.")
    nbest: int | None = Field(None, ge=1, description="Hypotheses per sentence, at most beam.")
    lenpen: float | None = Field(None, ge=0, le=10, description="Length penalty exponent.")


class Scored(BaseModel):
    """One hypothesis of an n-best list."""

    text: str
    score: float


class TranslateResponse(BaseModel):
    """Per sentence in request order: its translation (nbest=1) or its n-best list."""

    translations: list[str] | list[list[Scored]]
    scores: list[float | None] | None = Field(
        None, description="With nbest=1: each translation's score (null for an empty sentence)."
    )


class AttentionRequest(BaseModel):
    """One sentence whose translation and cross-attention to draw."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "A man rides a bike."}]}
    )
    text: str = Field(description="One sentence.")
    beam: int | None = Field(None, ge=1, description="Beam size, at most serve.max_beam.")
    lenpen: float | None = Field(None, ge=0, le=10, description="Length penalty exponent.")


class AttentionResponse(BaseModel):
    """The best translation's pieces and its cross-attention (decode.alignment_layer, the
    last by default; heads averaged). The output ids are the translation re-encoded."""

    source: list[str] = Field(description="Source pieces, then </s>.")
    output: list[str] = Field(description="Output pieces, then </s>.")
    translation: str
    weights: list[list[float]] = Field(
        description="A row per output piece, a column per source piece; each row sums to 1."
    )


class Health(BaseModel):
    """Whether the model is loaded, which checkpoint, and how long the server has run."""

    status: str
    model_loaded: bool
    checkpoint: str
    uptime_s: float
    queue: int


def build_app(translator: Translator, options: ServeOptions, api_key: str | None) -> FastAPI:
    """The app serving `translator`; its batcher runs while the app's lifespan does."""
    metrics = Metrics()
    batcher = Batcher(
        translator,
        options.batch_window_ms / 1000,
        options.max_batch_sentences,
        options.max_queue,
        metrics,
        options.batch_cost,
        options.max_request_cost,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="mt serve",
        summary="Machine translation with a trained mt run; sentences are batched across requests.",
        lifespan=lifespan,
    )
    app.state.batcher, app.state.metrics = batcher, metrics
    _add_error_handlers(app)
    app.add_middleware(
        _Gate, max_body_bytes=options.max_body_bytes,
        read_timeout_s=options.read_timeout_s,
        metrics=metrics,
    )  # fmt: skip
    _add_routes(app, translator, options, batcher, _key_check(api_key))
    return app


def _add_routes(
    app: FastAPI, translator: Translator, options: ServeOptions, batcher: Batcher,
    authorized: Callable[[Request], None],
) -> None:  # fmt: skip
    started = time.monotonic()
    page = importlib.resources.files("mt.serve").joinpath(PAGE).read_text(encoding="utf-8")

    @app.post("/translate", dependencies=[Depends(authorized)])
    async def translate(req: TranslateRequest) -> TranslateResponse:
        """Translate one sentence or a list; concurrent requests share decoder batches."""
        lines, settings = check_request(req, options, translator)
        results = await _submit(batcher, lines, settings, options)
        return _response(results, settings.nbest)

    @app.get("/health")
    async def health() -> Health:
        """Open without the API key, for load balancers and probes."""
        return Health(
            status="ok",
            model_loaded=True,
            checkpoint=str(translator.run.checkpoint),
            uptime_s=round(time.monotonic() - started, 3),
            queue=batcher.waiting(),
        )

    @app.get("/metrics", dependencies=[Depends(authorized)], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Counters, batch sizes and latency quantiles in the Prometheus text format."""
        body = app.state.metrics.render()
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    _add_attention_route(app, translator, options, batcher, authorized)


def _add_attention_route(
    app: FastAPI, translator: Translator, options: ServeOptions, batcher: Batcher,
    authorized: Callable[[Request], None],
) -> None:  # fmt: skip
    @app.post("/attention", dependencies=[Depends(authorized)])
    async def attention(req: AttentionRequest) -> AttentionResponse:
        """Translate one sentence (batched with /translate requests) and return the
        cross-attention of its translation: output pieces by source pieces."""
        started = time.monotonic()
        ask = TranslateRequest(text=req.text, beam=req.beam, lenpen=req.lenpen)
        lines, settings = check_request(ask, options, translator)
        settings = dataclasses.replace(settings, nbest=1)
        (hyps,) = await _submit(batcher, lines, settings, options)
        translation = hyps[0][0] if hyps else ""
        if translator.decode.alignment:  # the links appended to the text are not the text
            translation = translation.partition("\t")[0]
        matrix = functools.partial(attention_matrix, translator, req.text, translation)
        left = max(0.0, options.timeout_s - (time.monotonic() - started))
        try:
            return AttentionResponse(**await batcher.run_in_decoder(matrix, left))
        except asyncio.TimeoutError:
            raise ApiError(504, _late(options)) from None
        except ServerStopping:
            raise ApiError(503, STOPPING) from None


async def _submit(
    batcher: Batcher, lines: list[str], settings: Settings, options: ServeOptions
) -> Results:
    """The batcher's results, or ApiError: 413 (too costly), 503 (queue full, stopping),
    504 (serve.timeout_s passed) or 500 (decoding this request failed)."""
    try:
        return await batcher.submit(lines, settings, options.timeout_s)
    except QueueFull:
        raise ApiError(
            503, f"the server is busy: serve.max_queue={options.max_queue} requests are "
            "waiting; try again shortly.",
        ) from None  # fmt: skip
    except TooCostly as exc:
        raise ApiError(
            413, f"this request may cost {exc.cost} token-steps of decoding (beam {settings.beam} "
            f"x each sentence's output cap, summed); serve.max_request_cost is {exc.limit}: send "
            "fewer or shorter sentences or a smaller beam, or raise serve.max_request_cost.",
        ) from None  # fmt: skip
    except ServerStopping:
        raise ApiError(503, STOPPING) from None
    except DecodeFailed as exc:
        raise ApiError(
            500, f"internal error while decoding this request: {str(exc).rstrip('.')}."
        ) from None
    except asyncio.TimeoutError:
        raise ApiError(504, _late(options)) from None


def _late(options: ServeOptions) -> str:
    return f"no translation within serve.timeout_s={options.timeout_s:g} seconds."


def check_request(
    req: TranslateRequest, options: ServeOptions, translator: Translator
) -> tuple[list[str], Settings]:
    """The request's sentences and decode settings, or ApiError naming the limit it breaks."""
    lines = [req.text] if isinstance(req.text, str) else req.text
    if not lines:
        raise ApiError(422, "text is an empty list; send at least one sentence.")
    if len(lines) > options.max_sentences:
        raise ApiError(
            413, f"{len(lines)} sentences in one request; serve.max_sentences is "
            f"{options.max_sentences}.",
        )  # fmt: skip
    for i, line in enumerate(lines, start=1):
        if len(line) > options.max_chars:
            raise ApiError(
                413, f"sentence {i} has {len(line)} characters; serve.max_chars is "
                f"{options.max_chars}.",
            )  # fmt: skip
        if fault := unicode_fault(line):
            raise ApiError(
                422, f"sentence {i} (text[{i - 1}]) is not valid Unicode: {fault}; send "
                "both halves of a UTF-16 pair, or UTF-8 text.",
            )  # fmt: skip
    d = translator.decode
    beam = req.beam or d.beam
    if beam > options.max_beam:
        raise ApiError(422, f"beam={beam} exceeds serve.max_beam={options.max_beam}.")
    nbest = req.nbest or min(d.nbest, beam)
    if nbest > beam:
        raise ApiError(422, f"nbest={nbest} exceeds beam={beam}.")
    return lines, Settings(beam, nbest, d.lenpen if req.lenpen is None else req.lenpen)


def unicode_fault(line: str) -> str | None:
    """Where `line` is not valid Unicode, or None. JSON's \\u escapes can carry half of a UTF-16
    surrogate pair alone, which Python keeps in a str but no tokenizer can encode."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone UTF-16 surrogate U+{ord(line[exc.start]):04X} at character {exc.start + 1}"
    return None


def _response(results: Results, nbest: int) -> TranslateResponse:
    if nbest == 1:
        return TranslateResponse(
            translations=[hyps[0][0] if hyps else "" for hyps in results],
            scores=[hyps[0][1] if hyps else None for hyps in results],
        )
    nbest_lists = [[Scored(text=t, score=s) for t, s in hyps] for hyps in results]
    return TranslateResponse(translations=nbest_lists)


def _key_check(api_key: str | None) -> Callable[[Request], None]:
    """A dependency refusing requests without the key (`Authorization: Bearer` or X-API-Key)."""

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key", "")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = given or token.strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            what = "a wrong API key" if given else "no API key"
            raise ApiError(401, f"{what}: send `Authorization: Bearer KEY` or `X-API-Key: KEY`.")

    return authorized


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, FastAPI's own included, as {"error": "<one sentence>"}."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's "error parsing the body"
            bad = exc.__cause__
            where = f"byte {bad.object[bad.start]:#04x} at offset {bad.start}"
            return JSONResponse({"error": f"the request body is not valid UTF-8 ({where})."}, 400)
        return JSONResponse({"error": f"{exc.detail}."}, exc.status_code, exc.headers)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        json_sent = "json" in request.headers.get("content-type", "")
        model = AttentionRequest if request.url.path == "/attention" else TranslateRequest
        status, message = validation_sentence(exc.errors(), json_sent, model)
        return JSONResponse({"error": message}, status_code=status)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)


def validation_sentence(
    errors: Any, json_sent: bool = True, model: type[BaseModel] = TranslateRequest
) -> tuple[int, str]:
    """(status, one sentence) for pydantic's errors of a request body: the first one counts.

    A body sent without `Content-Type: application/json` is not parsed (so an HTML form on
    another site cannot post to the API); `json_sent` tells that case apart. `model` is the
    route's request model (TranslateRequest or AttentionRequest).
    """
    first = errors[0]
    where = [str(p) for p in first["loc"] if p != "body"]
    if first["type"] == "json_invalid":
        return 400, f"the request body is not valid JSON ({first['ctx']['error']})."
    if not json_sent and not where:
        return 415, "send the body as JSON, with the header Content-Type: application/json."
    if not where or first["type"] == "model_attributes_type":
        return 422, 'the request body must be a JSON object like {"text": "..."}.'
    field = where[0]
    if first["type"] == "missing":
        return 422, f"the request has no '{field}' field."
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return 422, f"unknown field '{field}'; the fields are {allowed}."
    if field == "text" and model is AttentionRequest:
        return 422, "text must be a string: /attention takes one sentence."
    if field == "text":  # str | list[str]: pydantic reports both branches; an index is clearer
        items = [e["loc"] for e in errors if len(e["loc"]) == 4 and e["loc"][1] == "text"]
        if items:  # ("body", "text", "list[str]", index)
            index = items[0][3]
            return 422, f"text[{index}] is not a string."
        return 422, "text must be a string or a list of strings."
    return 422, f"{field}: {first['msg'][0].lower()}{first['msg'][1:]}."


class _Gate:
    """ASGI middleware guarding each request: refuses bodies over serve.max_body_bytes (413) or
    not complete within read_timeout_s (408, then the connection closes); cancels the app when
    the client disconnects first (its queued sentences are then never decoded); answers an
    unexpected error with a 500 JSON sentence and one traceback in the log, keeping the
    connection; counts every answer (a client gone before its answer as 499)."""

    def __init__(
        self, app: Any, max_body_bytes: int, read_timeout_s: float, metrics: Metrics
    ) -> None:
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [CLIENT_GONE]  # until an answer starts

        async def send_noting_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope["path"] if scope["path"] in ROUTES else "other"
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
