"""mt serve: the HTTP API on a tiny model that memorized 32 pairs, in process and as `mt serve`."""

from __future__ import annotations

import asyncio
import contextlib
import html
import http.client
import json
import logging
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from mt.config import ConfigError, DecodeConfig, ServeOptions, validate_serve  # noqa: E402
from mt.decode.engine import Translator  # noqa: E402
from mt.decode.run import load_run  # noqa: E402
from mt.decode.torch_engine import TorchTranslator  # noqa: E402
from mt.errors import MTError  # noqa: E402
from mt.serve.app import build_app  # noqa: E402
from mt.serve.stage import api_key_of  # noqa: E402
from tests.conftest import compose_config  # noqa: E402
from tests.test_cli import assert_clean_error, mt  # noqa: E402


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def translator(overfit_run) -> Translator:
    import torch

    _, run, _ = overfit_run
    cpu = torch.device("cpu")
    return TorchTranslator(load_run(run, None, cpu), DecodeConfig(), cpu, "fp32")


@pytest.fixture(scope="module")
def src(overfit_run) -> list[str]:
    return _lines(overfit_run[0] / "train.en")


@pytest.fixture(scope="module")
def client(translator):
    with TestClient(build_app(translator, ServeOptions(batch_window_ms=1), None)) as c:
        yield c


def _metrics(text: str) -> dict[str, float]:
    """`name{labels}` -> value of a Prometheus text exposition."""
    rows = [line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")]
    return {name: float(value) for name, value in rows}


@contextlib.asynccontextmanager
async def _async_client(app):
    """An httpx client calling the app in this event loop, with the app's lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://mt") as c:
            yield c


class _WordTokenizer:
    """A stand-in tokenizer: one token per word."""

    def encode(self, texts):
        return [[1] * len(text.split()) for text in texts]


class _Blocking:
    """A stand-in Translator whose translate() blocks until `release` is set; it records the
    sentences of each call in `calls`."""

    def __init__(self) -> None:
        self.decode = DecodeConfig(beam=5, lenpen=1.0)  # a Translator's settings are resolved
        self.run = SimpleNamespace(
            checkpoint=Path("stub.pt"), src_tok=_WordTokenizer(), max_len=1024
        )
        self.started, self.release = threading.Event(), threading.Event()
        self.calls: list[list[str]] = []

    def translate(self, lines, where="<input>", first_line=1):
        self.calls.append(list(lines))
        self.started.set()
        assert self.release.wait(20)
        return [[(line.upper(), -1.0)] for line in lines]


HEAVY = "w " * 999 + "w"  # 1,000 words, 1,999 characters: at beam 8, 4 to a chunk
JSON = {"content-type": "application/json"}


# ------------------------------------------------------------------ translations


def test_one_sentence_and_a_list_equal_the_translator_output(client, translator, src):
    expected = translator.translate(src[:6])
    one = client.post("/translate", json={"text": src[0]})
    assert one.status_code == 200, one.text
    assert one.json()["translations"] == [expected[0][0][0]]
    assert one.json()["scores"] == pytest.approx([expected[0][0][1]], abs=1e-4)
    many = client.post("/translate", json={"text": src[:6]}).json()
    assert many["translations"] == [hyps[0][0] for hyps in expected]
    assert many["scores"] == pytest.approx([hyps[0][1] for hyps in expected], abs=1e-4)


def test_the_model_translates_its_training_pairs(client, overfit_run, src):
    tgt = _lines(overfit_run[0] / "train.de")
    assert client.post("/translate", json={"text": src[:8]}).json()["translations"] == tgt[:8]


def test_nbest_gives_scored_lists_like_the_translator(client, translator, src):
    answer = client.post("/translate", json={"text": src[:3], "beam": 4, "nbest": 3, "lenpen": 0.6})
    assert answer.status_code == 200, answer.text
    reference = TorchTranslator(
        translator.run, DecodeConfig(beam=4, nbest=3, lenpen=0.6), *_dev(translator)
    )
    for got, want in zip(answer.json()["translations"], reference.translate(src[:3]), strict=True):
        assert [h["text"] for h in got] == [t for t, _ in want]
        assert [h["score"] for h in got] == pytest.approx([s for _, s in want], abs=1e-4)
        assert [h["score"] for h in got] == sorted((h["score"] for h in got), reverse=True)


def _dev(translator: Translator) -> tuple:
    return translator.device, translator.precision


def test_empty_sentence_gives_empty_translation(client, src):
    answer = client.post("/translate", json={"text": ["", src[1]]}).json()
    assert answer["translations"][0] == "" and answer["scores"][0] is None
    assert answer["translations"][1]


# ------------------------------------------------------------------ health, metrics, docs, page


def test_health_names_the_checkpoint_and_needs_no_key(translator):
    with TestClient(build_app(translator, ServeOptions(), api_key="s3cret")) as c:
        first = c.get("/health")
        time.sleep(0.05)
        second = c.get("/health").json()
    assert first.status_code == 200
    assert first.json()["model_loaded"] is True
    assert first.json()["checkpoint"] == str(translator.run.checkpoint)
    assert second["uptime_s"] > first.json()["uptime_s"] >= 0


def test_metrics_count_requests_sentences_batches_and_latency(translator, src):
    with TestClient(build_app(translator, ServeOptions(batch_window_ms=0), None)) as c:
        c.post("/translate", json={"text": src[:3]})
        c.post("/translate", json={"text": src[3]})
        c.post("/translate", json={"text": []})
        response = c.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = _metrics(response.text)
    assert m['mt_requests_total{path="/translate",status="200"}'] == 2
    assert m['mt_requests_total{path="/translate",status="422"}'] == 1
    assert m["mt_sentences_total"] == 4
    assert m["mt_batch_sentences_count"] == 2 and m["mt_batch_sentences_sum"] == 4
    assert m['mt_batch_sentences_bucket{le="1"}'] == 1  # the request of one sentence
    assert m['mt_batch_sentences_bucket{le="4"}'] == 2
    assert m["mt_request_latency_seconds_count"] == 3
    assert 0 < m['mt_request_latency_seconds{quantile="0.5"}'] < 60


def test_openapi_docs_and_page(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/translate" in schema["paths"]
    assert {"text", "beam", "nbest", "lenpen"} <= set(
        schema["components"]["schemas"]["TranslateRequest"]["properties"]
    )
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "<textarea" in page.text and 'id="output"' in page.text and "translate" in page.text


# ------------------------------------------------------------------ attention


def test_attention_rows_are_distributions_over_the_source_pieces(client, translator, src):
    from mt.decode.alignment import cross_attention

    answer = client.post("/attention", json={"text": src[2]})
    assert answer.status_code == 200, answer.text
    got = answer.json()
    run = translator.run
    assert got["translation"] == translator.translate([src[2]])[0][0][0]
    (src_ids,) = run.src_tok.encode([src[2]])
    (out_ids,) = run.tgt_tok.encode([got["translation"]])
    assert got["source"] == [*map(run.src_tok.sp.id_to_piece, src_ids), "</s>"]
    assert got["output"] == [*map(run.tgt_tok.sp.id_to_piece, out_ids), "</s>"]
    weights = got["weights"]
    assert len(weights) == len(got["output"]) and len(got["output"]) > 2
    assert all(len(row) == len(got["source"]) for row in weights)
    assert [sum(row) for row in weights] == pytest.approx([1.0] * len(weights), abs=1e-4)
    expected = cross_attention(run.model, src_ids, out_ids).mean(0).tolist()
    assert [w for row in weights for w in row] == pytest.approx(
        [w for row in expected for w in row], abs=1e-5
    )
    assert "/attention" in client.get("/openapi.json").json()["paths"]


def test_attention_of_an_ensemble_is_its_first_members(overfit_run, translator, src):
    import torch

    cpu = torch.device("cpu")
    checkpoint = str(translator.run.checkpoint)
    pair = load_run(overfit_run[1], [checkpoint, checkpoint], cpu)
    ensemble = TorchTranslator(pair, DecodeConfig(), cpu, "fp32")
    with TestClient(build_app(ensemble, ServeOptions(batch_window_ms=0), None)) as c:
        got = c.post("/attention", json={"text": src[4]})
    with TestClient(build_app(translator, ServeOptions(batch_window_ms=0), None)) as c:
        alone = c.post("/attention", json={"text": src[4]})
    assert got.status_code == 200, got.text
    assert got.json()["output"] == alone.json()["output"]
    flat = [w for row in got.json()["weights"] for w in row]
    assert flat == pytest.approx([w for row in alone.json()["weights"] for w in row], abs=1e-5)


def test_attention_needs_the_key_when_one_is_set(translator, src):
    with TestClient(build_app(translator, ServeOptions(), api_key="s3cret")) as c:
        refused = c.post("/attention", json={"text": src[0]})
        assert refused.status_code == 401 and "no API key" in refused.json()["error"]
        ok = c.post("/attention", json={"text": src[0]}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200 and ok.json()["weights"]


@pytest.mark.parametrize(
    ("options", "body", "status", "fragment"),
    [
        ({"max_chars": 10}, {"text": "x" * 11}, 413,
         "sentence 1 has 11 characters; serve.max_chars is 10"),
        ({"max_beam": 6}, {"text": "a", "beam": 7}, 422, "beam=7 exceeds serve.max_beam=6"),
        ({"max_body_bytes": 100}, {"text": "y" * 200}, 413, "serve.max_body_bytes=100"),
        ({}, {"text": ["a", "b"]}, 422, "text must be a string: /attention takes one sentence"),
        ({}, {"text": "a", "nbest": 2}, 422,
         "unknown field 'nbest'; the fields are text, beam, lenpen"),
        ({}, {}, 422, "no 'text' field"),
    ],
)  # fmt: skip
def test_attention_over_a_limit_gets_4xx_naming_it(translator, options, body, status, fragment):
    with TestClient(build_app(translator, ServeOptions(**options), None)) as c:
        refused = c.post("/attention", json=body)
        assert refused.status_code == status, refused.text
        assert fragment in refused.json()["error"]
        assert c.post("/attention", json={"text": "the dog"}).status_code == 200  # still serving


def test_attention_of_an_empty_sentence_is_eos_to_eos(client):
    got = client.post("/attention", json={"text": ""}).json()
    assert got == {"source": ["</s>"], "output": ["</s>"], "translation": "", "weights": [[1.0]]}


# ------------------------------------------------------------------ limits and bad requests


@pytest.mark.parametrize(
    ("options", "body", "status", "fragment"),
    [
        ({"max_chars": 10}, {"text": ["short", "x" * 11]}, 413,
         "sentence 2 has 11 characters; serve.max_chars is 10"),
        ({"max_sentences": 2}, {"text": ["a", "b", "c"]}, 413,
         "3 sentences in one request; serve.max_sentences is 2"),
        ({"max_beam": 6}, {"text": "a", "beam": 7}, 422, "beam=7 exceeds serve.max_beam=6"),
        ({}, {"text": "a", "beam": 2, "nbest": 3}, 422, "nbest=3 exceeds beam=2"),
        ({"max_body_bytes": 100}, {"text": "y" * 200}, 413, "serve.max_body_bytes=100"),
    ],
)  # fmt: skip
def test_a_request_over_a_limit_gets_4xx_naming_it(
    translator, src, options, body, status, fragment
):
    with TestClient(build_app(translator, ServeOptions(**options), None)) as c:
        refused = c.post("/translate", json=body)
        assert refused.status_code == status
        assert fragment in refused.json()["error"]
        assert c.post("/translate", json={"text": "the dog"}).status_code == 200  # still serving


def test_a_chunked_body_over_the_limit_is_refused_too(translator, src):
    with TestClient(build_app(translator, ServeOptions(max_body_bytes=100), None)) as c:
        chunks = iter([b'{"text": "' + b"z" * 60, b"z" * 60 + b'"}'])  # no Content-Length
        refused = c.post("/translate", content=chunks, headers={"content-type": "application/json"})
        assert refused.status_code == 413, refused.text
        assert "serve.max_body_bytes=100" in refused.json()["error"]
        assert c.post("/translate", json={"text": src[0]}).status_code == 200


@pytest.mark.parametrize(
    ("content", "status", "fragment"),
    [
        (b'{"text": "a man', 400, "not valid JSON"),
        (b'{"text": 5}', 422, "text must be a string or a list of strings"),
        (b'{"text": ["a", 3]}', 422, "text[1] is not a string"),
        (b'{"text": []}', 422, "text is an empty list"),
        (b"{}", 422, "no 'text' field"),
        (b"[1, 2]", 422, "must be a JSON object"),
        (b'{"text": "a", "beam": "wide"}', 422, "beam: "),
        (b'{"text": "a", "beam": 0}', 422, "beam: "),
        (b'{"text": "a", "colour": 1}', 422, "unknown field 'colour'"),
        (b'{"text": "a \xff b"}', 400, "not valid UTF-8 (byte 0xff at offset 12)"),
    ],
)
def test_malformed_requests_get_one_sentence_json_errors(client, src, content, status, fragment):
    answer = client.post(
        "/translate", content=content, headers={"content-type": "application/json"}
    )
    assert answer.status_code == status, answer.text
    assert list(answer.json()) == ["error"]
    message = answer.json()["error"]
    assert fragment in message and "\n" not in message and message.endswith(".")
    assert client.post("/translate", json={"text": src[0]}).status_code == 200


def test_a_body_not_sent_as_json_gets_415(client):
    answer = client.post("/translate", content=b'{"text": "a"}')  # no Content-Type
    assert answer.status_code == 415 and "Content-Type: application/json" in answer.json()["error"]
    form = client.post("/translate", data={"text": "a"})
    assert form.status_code == 415


def test_unknown_path_is_a_json_404(client):
    answer = client.get("/nowhere")
    assert answer.status_code == 404 and answer.json() == {"error": "Not Found."}


def test_api_key_from_either_header(translator, src, monkeypatch):
    with TestClient(build_app(translator, ServeOptions(), api_key="s3cret")) as c:
        body = {"text": src[0]}
        assert "no API key" in c.post("/translate", json=body).json()["error"]
        wrong = c.post("/translate", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]
        assert c.get("/metrics").status_code == 401
        ok = c.post("/translate", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.post("/translate", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
    monkeypatch.setenv("MT_SERVE_API_KEY", "from-env")
    assert api_key_of(ServeOptions()) == "from-env"
    assert api_key_of(ServeOptions(api_key="given")) == "given"
    monkeypatch.delenv("MT_SERVE_API_KEY")
    assert api_key_of(ServeOptions()) is None


# ------------------------------------------------------------------ batching, queue, timeout


def test_concurrent_requests_are_decoded_in_one_batch(translator, src):
    app = build_app(translator, ServeOptions(batch_window_ms=300), None)

    async def send_all():
        async with _async_client(app) as c:
            posts = [c.post("/translate", json={"text": line}) for line in src[:8]]
            return await asyncio.gather(*posts), (await c.get("/metrics")).text

    answers, metrics = asyncio.run(send_all())
    m = _metrics(metrics)
    assert m["mt_batch_sentences_count"] == 1 and m["mt_batch_sentences_sum"] == 8
    for line, answer in zip(src[:8], answers, strict=True):
        (hyp,) = translator.translate([line])  # one by one
        assert answer.json()["translations"] == [hyp[0][0]]
        assert answer.json()["scores"] == pytest.approx([hyp[0][1]], abs=1e-4)


def test_requests_with_other_settings_get_their_own_batch(translator, src):
    app = build_app(translator, ServeOptions(batch_window_ms=300), None)

    async def send_all():
        async with _async_client(app) as c:
            posts = [
                c.post("/translate", json={"text": s, "beam": 1 + i % 2})
                for i, s in enumerate(src[:6])
            ]
            return await asyncio.gather(*posts), (await c.get("/metrics")).text

    answers, metrics = asyncio.run(send_all())
    m = _metrics(metrics)
    assert m["mt_batch_sentences_count"] == 2 and m["mt_batch_sentences_sum"] == 6
    assert all(a.status_code == 200 for a in answers)


def test_max_batch_sentences_splits_batches(translator, src):
    app = build_app(translator, ServeOptions(batch_window_ms=300, max_batch_sentences=4), None)

    async def send_all():
        async with _async_client(app) as c:
            posts = [c.post("/translate", json={"text": src[i : i + 2]}) for i in range(0, 12, 2)]
            return await asyncio.gather(*posts), (await c.get("/metrics")).text

    answers, metrics = asyncio.run(send_all())
    m = _metrics(metrics)
    assert m["mt_batch_sentences_count"] == 3 and m['mt_batch_sentences_bucket{le="2"}'] == 0
    got = [t for a in answers for t in a.json()["translations"]]
    assert got == [hyps[0][0] for hyps in translator.translate(src[:12])]


def test_a_full_queue_gives_503_and_queued_requests_still_finish():
    stub = _Blocking()
    app = build_app(stub, ServeOptions(max_queue=1, batch_window_ms=0), None)

    async def scenario():
        async with _async_client(app) as c:
            first = asyncio.create_task(c.post("/translate", json={"text": "a"}))
            while not stub.started.is_set():  # the worker is decoding "a"
                await asyncio.sleep(0.01)
            second = asyncio.create_task(c.post("/translate", json={"text": "b"}))
            while (await c.get("/health")).json()["queue"] < 1:  # "b" waits in the queue
                await asyncio.sleep(0.01)
            third = await c.post("/translate", json={"text": "c"})
            stub.release.set()
            return await first, await second, third

    first, second, third = asyncio.run(scenario())
    assert third.status_code == 503 and "serve.max_queue=1" in third.json()["error"]
    assert first.json()["translations"] == ["A"] and second.json()["translations"] == ["B"]


def test_a_request_over_the_timeout_gets_504_and_the_server_goes_on():
    stub = _Blocking()
    app = build_app(stub, ServeOptions(timeout_s=0.2, batch_window_ms=0), None)

    async def scenario():
        async with _async_client(app) as c:
            late = await c.post("/translate", json={"text": "a"})
            stub.release.set()
            return late, await c.post("/translate", json={"text": "b"})

    late, after = asyncio.run(scenario())
    assert late.status_code == 504 and "serve.timeout_s=0.2" in late.json()["error"]
    assert after.status_code == 200 and after.json()["translations"] == ["B"]


def test_a_decoder_crash_is_a_500_json_and_the_server_goes_on():
    stub = _Blocking()
    stub.release.set()
    calls = []

    def translate(lines, where="<input>", first_line=1):
        calls.append(lines)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [[(line, 0.0)] for line in lines]

    stub.translate = translate
    with TestClient(build_app(stub, ServeOptions(), None), raise_server_exceptions=False) as c:
        crashed = c.post("/translate", json={"text": "a"})
        assert crashed.status_code == 500 and "RuntimeError" in crashed.json()["error"]
        assert c.post("/translate", json={"text": "b"}).json()["translations"] == ["b"]


# ------------------------------------------------------------------ one bad request, no one else


def test_text_that_is_not_unicode_gets_422_naming_it_and_its_batch_is_translated(translator, src):
    app = build_app(translator, ServeOptions(batch_window_ms=300), None)
    bad = json.dumps({"text": [src[0], "a \ud800 b"]}).encode()  # a lone surrogate, escaped

    async def send_all():
        async with _async_client(app) as c:
            posts = [c.post("/translate", content=bad, headers=JSON)]
            posts += [c.post("/translate", json={"text": line}) for line in src[1:5]]
            answers = await asyncio.gather(*posts)
            one = json.dumps({"text": "\udc80"}).encode()
            attention = await c.post("/attention", content=one, headers=JSON)
            return answers, attention, (await c.get("/metrics")).text

    (refused, *good), attention, metrics = asyncio.run(send_all())
    assert refused.status_code == 422, refused.text
    assert "sentence 2 (text[1]) is not valid Unicode" in refused.json()["error"]
    assert "U+D800 at character 3" in refused.json()["error"]
    assert [a.json()["translations"][0] for a in good] == [
        translator.translate([line])[0][0][0] for line in src[1:5]
    ]
    assert attention.status_code == 422 and "sentence 1 (text[0])" in attention.json()["error"]
    assert _metrics(metrics).get('mt_requests_total{path="/translate",status="500"}', 0) == 0


def test_a_failing_chunk_is_retried_per_request_and_only_the_one_at_fault_fails(caplog):
    stub = _Blocking()
    calls = []

    def translate(lines, where="<input>", first_line=1):
        calls.append(list(lines))
        assert stub.release.wait(20)
        if "poison" in lines:
            raise RuntimeError("cannot decode poison")
        return [[(line.upper(), -1.0)] for line in lines]

    stub.translate = translate
    app = build_app(stub, ServeOptions(batch_window_ms=0), None)

    async def send_all():
        async with _async_client(app) as c:
            first = asyncio.create_task(c.post("/translate", json={"text": "x"}))
            while not calls:  # the decoder is busy with "x"
                await asyncio.sleep(0.01)
            bodies = [{"text": "a"}, {"text": ["b", "poison"]}, {"text": ["c", "d"]}]
            posts = [asyncio.create_task(c.post("/translate", json=b)) for b in bodies]
            while (await c.get("/health")).json()["queue"] < 3:  # all three wait: one chunk
                await asyncio.sleep(0.01)
            stub.release.set()
            return await first, await asyncio.gather(*posts)

    with caplog.at_level(logging.INFO, logger="mt.serve"):
        x, (a, poisoned, cd) = asyncio.run(send_all())
    assert x.json()["translations"] == ["X"] and a.json()["translations"] == ["A"]
    assert cd.json()["translations"] == ["C", "D"]
    assert poisoned.status_code == 500
    assert poisoned.json() == {
        "error": "internal error while decoding this request: RuntimeError: cannot decode poison."
    }
    assert calls[1:] == [["a", "b", "poison", "c", "d"], ["a"], ["b", "poison"], ["c", "d"]]
    assert sum(r.exc_info is not None for r in caplog.records) == 1  # one traceback


def test_over_http_a_bad_request_is_answered_and_the_connection_kept(server, src):
    host, port = urllib.parse.urlsplit(server).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        bad = json.dumps({"text": ["\ud800"]}).encode()
        conn.request("POST", "/translate", body=bad, headers=JSON)
        answer = conn.getresponse()
        assert answer.status == 422 and answer.getheader("connection") != "close"
        assert "sentence 1 (text[0]) is not valid Unicode" in json.loads(answer.read())["error"]
        conn.request("POST", "/translate", body=json.dumps({"text": src[0]}), headers=JSON)
        assert conn.getresponse().status == 200  # on the same connection
    finally:
        conn.close()


def _raw_post(app, body: bytes, leave: asyncio.Event):
    """POST /translate to the app as an ASGI call whose client leaves when `leave` is set."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/translate", "raw_path": b"/translate", "query_string": b"",
        "root_path": "", "server": ("mt", 80), "client": ("client", 1),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent: list[dict] = []

    async def receive():
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": body, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    return app(scope, receive, send)


def test_a_request_whose_client_left_is_never_decoded():
    stub = _Blocking()
    app = build_app(stub, ServeOptions(batch_window_ms=0), None)

    async def scenario():
        async with _async_client(app) as c:
            first = asyncio.create_task(c.post("/translate", json={"text": "a"}))
            while not stub.started.is_set():  # the decoder is busy with "a"
                await asyncio.sleep(0.01)
            leave = asyncio.Event()
            gone = asyncio.create_task(_raw_post(app, b'{"text": "b"}', leave))
            while (await c.get("/health")).json()["queue"] < 1:  # "b" waits
                await asyncio.sleep(0.01)
            leave.set()  # its client disconnects
            await asyncio.sleep(0.2)
            stub.release.set()
            await first
            after = await c.post("/translate", json={"text": "c"})
            await asyncio.wait_for(gone, 10)
            return after, (await c.get("/metrics")).text

    after, metrics = asyncio.run(scenario())
    assert after.json()["translations"] == ["C"]
    assert stub.calls == [["a"], ["c"]]  # "b" never
    m = _metrics(metrics)
    assert m["mt_sentences_dropped_total"] == 1
    assert m['mt_requests_total{path="/translate",status="499"}'] == 1


def test_a_request_that_timed_out_stops_at_the_next_chunk():
    stub = _Blocking()
    app = build_app(stub, ServeOptions(batch_window_ms=0, timeout_s=0.3), None)

    async def scenario():
        async with _async_client(app) as c:
            late = await c.post("/translate", json={"text": [HEAVY] * 6, "beam": 8})
            stub.release.set()  # the chunk in progress ends; the rest is not decoded
            after = await c.post("/translate", json={"text": "ok"})
            return late, after, (await c.get("/metrics")).text

    late, after, metrics = asyncio.run(scenario())
    assert late.status_code == 504 and "serve.timeout_s=0.3" in late.json()["error"]
    assert after.json()["translations"] == ["OK"]
    assert [len(call) for call in stub.calls] == [4, 1]  # a chunk of 4 sentences of 6, "ok"
    assert stub.calls[1] == ["ok"]
    assert _metrics(metrics)["mt_sentences_dropped_total"] == 2


def test_a_light_request_is_answered_between_chunks_of_heavy_ones():
    stub = _Blocking()
    stub.release.set()
    decode = stub.translate

    def translate(lines, where="<input>", first_line=1):
        found = decode(lines, where, first_line)  # records the call
        time.sleep(0.1 * len(lines))  # a decoder busy for 0.1 s a sentence
        return found

    stub.translate = translate
    app = build_app(stub, ServeOptions(batch_window_ms=0), None)
    done: list[str] = []

    async def post(c, name, body):
        answer = await c.post("/translate", json=body)
        done.append(name)
        return answer

    async def scenario():
        async with _async_client(app) as c:
            heavy = [
                asyncio.create_task(post(c, f"heavy{i}", {"text": [HEAVY] * 6, "beam": 8}))
                for i in range(2)
            ]
            while not stub.calls:  # the decoder has started on the heavy ones
                await asyncio.sleep(0.01)
            light = await post(c, "light", {"text": "a man", "beam": 8})
            return light, await asyncio.gather(*heavy)

    light, heavy = asyncio.run(scenario())
    assert light.json()["translations"] == ["A MAN"]
    assert all(len(h.json()["translations"]) == 6 for h in heavy)
    assert [len(call) for call in stub.calls] == [4, 4, 4, 1]  # 1,000 words at beam 8: 4 a chunk
    assert "a man" in stub.calls[1]  # the chunk after the one it arrived during
    assert done.index("light") < max(done.index("heavy0"), done.index("heavy1")), done


def test_a_request_over_the_cost_budget_gets_413_naming_the_limit():
    stub = _Blocking()
    stub.release.set()
    with TestClient(build_app(stub, ServeOptions(), None)) as c:
        refused = c.post("/translate", json={"text": [HEAVY] * 64, "beam": 8})
        assert refused.status_code == 413, refused.text[:200]
        message = refused.json()["error"]
        assert "serve.max_request_cost is" in message and "raise serve.max_request_cost" in message
        assert c.post("/translate", json={"text": [HEAVY] * 2, "beam": 8}).status_code == 200
    assert [len(call) for call in stub.calls] == [2]  # the refused one never reached it


def test_idle_slow_and_stalled_connections_are_closed(server):
    host, port = urllib.parse.urlsplit(server).netloc.split(":")
    head = b"POST /translate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    idle = socket.create_connection((host, int(port)))  # sends nothing
    dribbling = socket.create_connection((host, int(port)))  # a header byte every 0.5 s
    dribbling.sendall(head + b"X-Slow: ")
    stalled = socket.create_connection((host, int(port)))  # 10 of 100 body bytes, then nothing
    stalled.sendall(head + b"Content-Length: 100\r\n\r\n" + b'{"text": "')
    received = {sock: b"" for sock in (idle, dribbling, stalled)}
    open_ = set(received)
    deadline = time.monotonic() + 40  # the server's limits are 5 s (head) and 10 s (body)
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_), [], [], 0.5)
        for sock in readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionError:
                chunk = b""
            received[sock] += chunk
            if not chunk:
                open_.discard(sock)
        if dribbling in open_:
            with contextlib.suppress(OSError):
                dribbling.sendall(b"a")
    for sock in received:
        sock.close()
    assert not open_, f"{len(open_)} of 3 connections still open after 40 s"
    assert received[idle] == b"" and received[dribbling] == b""
    assert received[stalled].startswith(b"HTTP/1.1 408"), received[stalled]
    assert b"serve.read_timeout_s=10" in received[stalled]
    assert httpx.get(server + "health").status_code == 200


def test_an_empty_api_key_is_refused_at_start(overfit_run, monkeypatch):
    cmd = [sys.executable, "-m", "mt", "serve", f"run_dir={overfit_run[1]}", "port=0"]
    result = subprocess.run(
        [*cmd, "device=cpu", "serve.api_key="], capture_output=True, text=True, timeout=60
    )
    assert_clean_error(result, "serve.api_key is empty, which would leave the API open")
    monkeypatch.setenv("MT_SERVE_API_KEY", " ")
    with pytest.raises(MTError, match=r"\$MT_SERVE_API_KEY is empty"):
        api_key_of(ServeOptions())


# ------------------------------------------------------------------ config and the command


def test_serve_config_composes_and_validates(overfit_run):
    cfg = compose_config("serve", [f"run_dir={overfit_run[1]}", "serve.max_chars=50", "port=0"])
    assert cfg.serve.max_chars == 50 and cfg.host == "127.0.0.1"
    validate_serve(cfg)
    cfg.decode.beam = cfg.serve.max_beam + 1
    with pytest.raises(ConfigError, match="serve.max_beam"):
        validate_serve(cfg)


def test_help_lists_serve():
    assert "  serve " in mt("--help").stdout


def test_bad_run_dir_and_missing_checkpoint_are_one_sentence(overfit_run, tmp_path):
    assert_clean_error(mt("serve", f"run_dir={tmp_path / 'none'}"), "is not a folder")
    missing = tmp_path / "gone.pt"
    result = mt("serve", f"run_dir={overfit_run[1]}", f"checkpoint={missing}", "device=cpu")
    assert_clean_error(result, str(missing), "does not exist")


def _start(run: Path, *extra: str) -> tuple[subprocess.Popen, str, list[str]]:
    """`python -m mt serve run_dir=RUN port=0 ...`: the process, its URL, its stderr lines."""
    cmd = [sys.executable, "-m", "mt", "serve", f"run_dir={run}", "port=0", "device=cpu"]
    cmd += ["precision=fp32", "threads=1", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            seen.append(lines.get(timeout=0.2))
            if found := re.search(r" on (http://127\.0\.0\.1:\d+/)", seen[-1]):
                _wait_healthy(found.group(1))
                threading.Thread(target=lambda: [seen.append(x) for x in iter(lines.get, None)],
                                 daemon=True).start()  # fmt: skip
                return proc, found.group(1), seen
        if proc.poll() is not None and lines.empty():
            break
    proc.kill()
    raise AssertionError("mt serve did not start:\n" + "".join(seen))


def _wait_healthy(url: str) -> None:
    for _ in range(100):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "health", timeout=5).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url}health never answered")


@pytest.fixture(scope="module")
def server(overfit_run):
    proc, url, seen = _start(overfit_run[1])
    yield url
    proc.terminate()
    proc.wait(timeout=60)


def test_the_command_serves_over_http(server, translator, src):
    assert httpx.get(server + "health").json()["model_loaded"] is True
    answer = httpx.post(server + "translate", json={"text": src[:2]}, timeout=30)
    assert answer.json()["translations"] == [h[0][0] for h in translator.translate(src[:2])]


def test_sigterm_finishes_the_request_in_flight_then_exits_0(overfit_run, translator, src):
    proc, url, seen = _start(overfit_run[1], "serve.batch_window_ms=1500")
    answers = []
    request = threading.Thread(
        target=lambda: answers.append(
            httpx.post(url + "translate", json={"text": src[0]}, timeout=60)
        )
    )
    request.start()
    time.sleep(0.7)  # the request waits in the batch window
    proc.send_signal(signal.SIGTERM)
    request.join(60)
    assert proc.wait(timeout=60) == 0, "".join(seen)
    assert answers and answers[0].status_code == 200
    assert answers[0].json()["translations"] == [translator.translate([src[0]])[0][0][0]]
    assert any("SIGTERM: stopped" in line for line in seen)


def test_sigterm_with_heavy_work_in_flight_stops_within_seconds(overfit_run, src):
    proc, url, seen = _start(overfit_run[1])
    long = " ".join(src * 20)[:1999]  # a sentence of 1,999 characters
    answers: list = []

    def post() -> None:
        try:
            body = {"text": [long] * 10, "beam": 8}
            answers.append(httpx.post(url + "translate", json=body, timeout=120))
        except httpx.HTTPError as exc:
            answers.append(exc)

    clients = [threading.Thread(target=post) for _ in range(30)]  # ~300 x 0.15 s of work
    for client in clients:
        client.start()
    try:
        while httpx.get(url + "health", timeout=30).json()["queue"] < 20:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(timeout=15) == 0, "".join(seen)  # not ~35 s later
        stopped_in = time.monotonic() - started
    finally:
        proc.kill()
        for client in clients:
            client.join(60)
    statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    stopping = [a.json()["error"] for a in answers if a.status_code == 503]
    assert all("the server is stopping" in e for e in stopping)
    assert stopped_in < 15 and "Traceback" not in "".join(seen), "".join(seen)


def _browser_dom(url: str, profile: Path, budget_ms: int) -> str:
    """The page's DOM after headless Chromium ran its scripts for `budget_ms` of virtual time."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    cmd = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run"]
    cmd += [f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


def test_the_page_translates_in_a_headless_browser(server, translator, src, tmp_path):
    dom = _browser_dom(f"{server}?text={urllib.parse.quote(src[3])}", tmp_path, 5000)
    expected = translator.translate([src[3]])[0][0][0]
    output = re.search(r'<div id="output"[^>]*>(.*?)</div>', dom, re.S)
    assert output and output.group(1) == html.escape(expected, quote=False), dom


def test_the_page_draws_the_attention_in_a_headless_browser(server, src, tmp_path):
    dom = _browser_dom(f"{server}?text={urllib.parse.quote(src[5])}&attention=1", tmp_path, 8000)
    expected = httpx.post(server + "attention", json={"text": src[5]}, timeout=30).json()
    drawn = re.search(r'<div id="attention">(.*?)</div>', dom, re.S)
    assert drawn and "<table" in drawn.group(1), dom
    rows = re.findall(r'<th scope="row">(.*?)</th>', drawn.group(1))
    columns = re.findall(r'<th scope="col">(.*?)</th>', drawn.group(1))
    assert [html.unescape(r) for r in rows] == expected["output"]
    assert [html.unescape(c) for c in columns] == expected["source"]
    assert len(re.findall(r"<td ", drawn.group(1))) == len(rows) * len(columns)


def test_engine_ctranslate2_serves_the_same_greedy_translations(overfit_run, src):
    pytest.importorskip("ctranslate2")
    import torch

    from mt.decode.engine import make_translator

    _, run, _ = overfit_run
    cpu = torch.device("cpu")
    loaded = load_run(run, None, cpu)
    ours = TorchTranslator(loaded, DecodeConfig(beam=1), cpu, "fp32").translate(src[:8])
    ct2 = make_translator(loaded, DecodeConfig(beam=1), cpu, "fp32", "ctranslate2")
    with TestClient(build_app(ct2, ServeOptions(batch_window_ms=1), None)) as c:
        got = c.post("/translate", json={"text": src[:8]})
        attention = c.post("/attention", json={"text": src[0]})
    assert got.status_code == 200, got.text
    assert got.json()["translations"] == [h[0][0] for h in ours]
    assert attention.status_code == 200, attention.text
    assert attention.json()["translation"] == ours[0][0][0]
    assert len(attention.json()["weights"]) == len(attention.json()["output"])
