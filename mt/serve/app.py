"""The FastAPI app of `mt serve`: its routes, the API key, and the batcher's outcomes as answers.

`build_app` takes objects (a Translator, the options, the key), not config. What a request may
hold and how errors read is `mt.serve.api`; what guards each connection is `mt.serve.gate`.
One request's fault (bad text, a decoder error, a slow body, a client gone) is answered or
dropped on its own: the others in its batch still get their translations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import importlib.resources
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from mt.config import ServeOptions
from mt.decode.engine import Translator
from mt.serve.api import (
    ApiError,
    AttentionRequest,
    AttentionResponse,
    Health,
    Scored,
    TranslateRequest,
    TranslateResponse,
    add_error_handlers,
    check_request,
)
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
from mt.serve.gate import Gate

PAGE = "page.html"
ROUTES = ("/", "/translate", "/attention", "/health", "/metrics", "/docs", "/openapi.json")
STOPPING = "the server is stopping; send the request again shortly."


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
    add_error_handlers(app)
    app.add_middleware(
        Gate, max_body_bytes=options.max_body_bytes,
        read_timeout_s=options.read_timeout_s,
        metrics=metrics, routes=ROUTES,
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
