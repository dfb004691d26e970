"""What the HTTP API of `mt serve` accepts and answers: the request and response models, the
checks a request must pass (valid Unicode, the `serve.*` limits, each sentence naming its key),
and every error, FastAPI's and pydantic's included, as `{"error": "<one sentence>"}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mt.config import ServeOptions
from mt.decode.engine import Translator
from mt.serve.batch import Settings


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


def add_error_handlers(app: FastAPI) -> None:
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
