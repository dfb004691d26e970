"""Scheduling and metrics of `mt serve`: requests from many clients share decoder calls, by cost.

Each request's sentences are priced (beam x output cap, see `sentence_costs`) and queued; one
worker task decodes them in chunks of bounded cost, one chunk at a time in a single thread so
the event loop keeps answering. `Batcher` states the rule.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from mt.decode.engine import Translator
from mt.decode.inputs import output_caps

log = logging.getLogger("mt.serve")

Results = list[list[tuple[str, float]]]  # per sentence, its n-best (text, score) list
T = TypeVar("T")

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_QUANTILES = (0.5, 0.9, 0.99)
LATENCY_WINDOW = 1000  # latency quantiles are over the last this many /translate requests


class QueueFull(Exception):
    """More than serve.max_queue requests are waiting for the decoder."""


class TooCostly(Exception):
    """A request's decoding work is over serve.max_request_cost."""

    def __init__(self, cost: int, limit: int) -> None:
        super().__init__(f"cost {cost} > {limit}")
        self.cost, self.limit = cost, limit


class ServerStopping(Exception):
    """The server is stopping: the request was not decoded (or not to its end)."""


class DecodeFailed(Exception):
    """Decoding failed for this request alone (retried apart from its batch); one sentence."""


@dataclass(frozen=True)
class Settings:
    """The decode settings a request may choose; requests with equal settings share batches."""

    beam: int
    nbest: int
    lenpen: float


def sentence_costs(translator: Any, lines: list[str], beam: int) -> list[int]:
    """The work each sentence may cost the decoder, in token-steps: beam x its output cap.

    The cap is decode.max_len_a x source tokens + decode.max_len_b, at most the model's length:
    the most tokens a hypothesis may grow to, so the most decoder steps times hypotheses the
    search can take. An empty sentence costs 0 (it is not decoded). `translator` is anything
    with `.run` (a LoadedRun) and `.decode`; the text must be valid Unicode.
    """
    run = translator.run
    ids = run.src_tok.encode(lines)
    lengths = [min(len(seq), run.max_len - 1) + 1 for seq in ids]  # + eos, as the search sees it
    caps = output_caps(run, translator.decode, lengths)
    return [beam * cap if seq else 0 for seq, cap in zip(ids, caps, strict=True)]


@dataclass(eq=False)
class _Job:
    """One request: its sentences, their costs, and how far the decoder has got."""

    lines: list[str]
    costs: list[int]
    settings: Settings
    future: asyncio.Future[Results]
    results: Results
    taken: int = 0  # sentences handed to the decoder so far, in order

    def left(self) -> int:
        """The cost of the sentences not yet handed to the decoder."""
        return sum(self.costs[self.taken :])


@dataclass
class _Part:
    """Sentences start..stop of a job, in one chunk."""

    job: _Job
    start: int
    stop: int

    def lines(self) -> list[str]:
        return self.job.lines[self.start : self.stop]


class Metrics:
    """Counters of the server, rendered in the Prometheus text format by `render`."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (path, status) -> answers
        self.sentences = 0
        self.dropped = 0  # sentences never decoded: their request timed out or its client left
        self.batches = [0] * (len(BATCH_BUCKETS) + 1)  # per bucket, the last one is +Inf
        self.batch_sum = 0
        self.latency: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.latency_sum, self.latency_count = 0.0, 0
        self.queue_depth = 0

    def record_request(self, path: str, status: int, seconds: float) -> None:
        self.requests[path, status] += 1
        if path == "/translate":
            self.latency.append(seconds)
            self.latency_sum += seconds
            self.latency_count += 1

    def record_batch(self, sentences: int) -> None:
        bucket = next((i for i, le in enumerate(BATCH_BUCKETS) if sentences <= le), -1)
        self.batches[bucket] += 1
        self.batch_sum += sentences

    def render(self) -> str:
        """The metrics as Prometheus text exposition format 0.0.4."""
        out = _header("mt_requests_total", "counter", "HTTP requests answered, by path and status.")
        for (path, status), n in sorted(self.requests.items()):
            out.append(f'mt_requests_total{{path="{path}",status="{status}"}} {n}')
        out += _header("mt_sentences_total", "counter", "Sentences translated.")
        out.append(f"mt_sentences_total {self.sentences}")
        out += _header(
            "mt_sentences_dropped_total", "counter",
            "Sentences not decoded because their request timed out or its client left.",
        )  # fmt: skip
        out.append(f"mt_sentences_dropped_total {self.dropped}")
        out += _header("mt_batch_sentences", "histogram", "Sentences per decoder call.")
        cumulative = 0
        for le, n in zip([*map(str, BATCH_BUCKETS), "+Inf"], self.batches, strict=True):
            cumulative += n
            out.append(f'mt_batch_sentences_bucket{{le="{le}"}} {cumulative}')
        out.append(f"mt_batch_sentences_sum {self.batch_sum}")
        out.append(f"mt_batch_sentences_count {cumulative}")
        name = "mt_request_latency_seconds"
        out += _header(name, "summary", f"/translate latency, last {LATENCY_WINDOW} requests.")
        ordered = sorted(self.latency)
        for q in LATENCY_QUANTILES:
            value = ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else "NaN"
            out.append(f'{name}{{quantile="{q}"}} {value}')
        out += [f"{name}_sum {self.latency_sum}", f"{name}_count {self.latency_count}"]
        out += _header("mt_queue_requests", "gauge", "Requests waiting for the decoder.")
        out.append(f"mt_queue_requests {self.queue_depth}")
        return "\n".join(out) + "\n"


def _header(name: str, kind: str, help_: str) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]


class Batcher:
    """Schedules the sentences of waiting requests into decoder calls (chunks) by their cost.

    Admission: a request finding `max_queue` requests waiting gets QueueFull; one costing over
    `max_request_cost` gets TooCostly. The rule: a chunk holds sentences of one Settings
    costing at most `batch_cost` in all (a single sentence over it goes alone) and at most
    `max_batch` sentences. It is filled from the waiting requests with the least work left
    first (ties: the earliest), each giving its next sentences in order. So a light request
    waits for the chunk being decoded when it arrives, then goes in the next one, ahead of
    heavy requests, which advance a chunk at a time in the room light ones leave. When the
    decoder is idle, the first request waits `window_s` for others to join it. A request that
    timed out or whose client left is dropped before the next chunk: its sentences not yet
    decoded never are. A chunk that fails is decoded again one request at a time, so only the
    request at fault fails.

    Args:
        translator: Decodes; each chunk uses a copy of it with the chunk's Settings.
        window_s: How long the first request waits for others when the decoder is idle.
        max_batch: Sentences per chunk at most.
        max_queue: Requests waiting at most; `submit` raises QueueFull beyond it.
        metrics: Where chunk sizes, translated and dropped sentences are counted.
        batch_cost: Cost of a chunk at most, in token-steps (`sentence_costs`).
        max_request_cost: Cost of a request at most.
    """

    def __init__(
        self, translator: Translator, window_s: float, max_batch: int, max_queue: int,
        metrics: Metrics, batch_cost: int, max_request_cost: int,
    ) -> None:  # fmt: skip
        self.translator, self.window_s, self.max_batch = translator, window_s, max_batch
        self.metrics, self.max_queue, self.batch_cost = metrics, max_queue, batch_cost
        self.max_request_cost = max_request_cost
        self._jobs: list[_Job] = []  # requests with sentences not yet handed to the decoder
        self._chunk: list[_Part] = []  # the chunk being decoded
        self._arrived = asyncio.Event()  # replaced in start(), in its loop
        self._closing = False
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None

    def waiting(self) -> int:
        """Requests with sentences not yet handed to the decoder."""
        return sum(not job.future.done() for job in self._jobs)

    def start(self) -> None:
        """Start the worker task and its decoding thread (inside the running event loop)."""
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-decode")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def close(self) -> None:
        """Answer every request not yet answered with ServerStopping; the decoder stops after
        the chunk it is decoding, and takes no new request."""
        self._closing = True
        for job in [*self._jobs, *(part.job for part in self._chunk)]:
            if not job.future.done():
                job.future.set_exception(ServerStopping())
        self._jobs = []
        self._arrived.set()  # the worker may be waiting for work: let it see _closing

    async def stop(self) -> None:
        """Close, stop the worker, and wait for the decoding thread (one chunk at most)."""
        self.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, lines: list[str], settings: Settings, timeout_s: float) -> Results:
        """The n-best lists of `lines` (valid Unicode), decoded in chunks.

        Raises:
            QueueFull: If serve.max_queue requests are already waiting.
            TooCostly: If the request would cost over max_request_cost.
            ServerStopping: If the server stops before the request is answered.
            DecodeFailed: If decoding this request failed.
            TimeoutError: If no answer came within timeout_s; the request is then dropped
                before its next chunk (so is a request whose caller is cancelled).
        """
        if self._closing:
            raise ServerStopping
        if self.waiting() >= self.max_queue:
            raise QueueFull
        costs = sentence_costs(self.translator, lines, settings.beam)
        if sum(costs) > self.max_request_cost:
            raise TooCostly(sum(costs), self.max_request_cost)
        future = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(lines, costs, settings, future, [[] for _ in lines]))
        self.metrics.queue_depth = self.waiting()
        self._arrived.set()
        return await asyncio.wait_for(future, timeout_s)  # cancels the future on timeout

    async def run_in_decoder(self, fn: Callable[[], T], timeout_s: float) -> T:
        """fn() in the decoding thread, between two chunks (it may use the model too).

        Raises:
            ServerStopping: If the server is stopping.
            asyncio.TimeoutError: If fn has not returned within timeout_s (it still runs on).
        """
        if self._closing:
            raise ServerStopping
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._executor, fn), timeout_s)

    async def _loop(self) -> None:
        while not self._closing:
            if not self._prune():
                self._arrived.clear()
                await self._arrived.wait()
                if self.window_s > 0:
                    await asyncio.sleep(self.window_s)
            self._chunk = self._next_chunk()
            try:
                await self._decode(self._chunk)
            except Exception as exc:  # a bug of ours: fail the chunk, keep the worker alive
                for part in self._chunk:
                    self._fail(part, exc)
            self._chunk = []

    def _prune(self) -> int:
        """Drop the requests already answered (timed out, client gone); the number left."""
        for job in self._jobs:
            if job.future.done():
                self.metrics.dropped += len(job.lines) - job.taken
        self._jobs = [job for job in self._jobs if not job.future.done()]
        self.metrics.queue_depth = len(self._jobs)
        return len(self._jobs)

    def _next_chunk(self) -> list[_Part]:
        """The next chunk by the rule of the class docstring; [] when nothing waits."""
        if not self._prune():
            return []
        by_work = sorted(self._jobs, key=_Job.left)  # stable: ties stay in arrival order
        settings, budget, room = by_work[0].settings, self.batch_cost, self.max_batch
        parts: list[_Part] = []
        for job in (job for job in by_work if job.settings == settings):
            stop = job.taken
            while stop < len(job.lines) and room > 0:
                if job.costs[stop] > budget and (parts or stop > job.taken):
                    break  # the first sentence of a chunk goes in whatever its cost
                budget, room, stop = budget - job.costs[stop], room - 1, stop + 1
            if stop > job.taken:
                parts.append(_Part(job, job.taken, stop))
                job.taken = stop
        self._jobs = [job for job in self._jobs if job.taken < len(job.lines)]
        self.metrics.queue_depth = len(self._jobs)
        return parts

    async def _decode(self, parts: list[_Part]) -> None:
        """Decode a chunk and hand each request its sentences; after a failure, again one
        request at a time."""
        if not parts:
            return
        lines = [line for part in parts for line in part.lines()]
        try:
            found = await self._translate(parts[0].job.settings, lines)
        except Exception as exc:  # a bug, bad input, out of memory: find the request at fault
            if len(parts) == 1:
                self._fail(parts[0], exc)
                return
            log.warning(
                "decoding a chunk of %d requests failed (%s: %s); retrying each alone",
                len(parts), type(exc).__name__, exc,
            )  # fmt: skip
            for part in parts:
                await self._decode_alone(part)
            return
        self._deliver(parts, found)

    async def _decode_alone(self, part: _Part) -> None:
        if part.job.future.done():  # timed out, client gone, or stopping
            return
        try:
            found = await self._translate(part.job.settings, part.lines())
        except Exception as exc:
            self._fail(part, exc)
            return
        self._deliver([part], found)

    async def _translate(self, settings: Settings, lines: list[str]) -> Results:
        translator = copy.copy(self.translator)  # shares the model; only the settings differ
        translator.decode = dataclasses.replace(translator.decode, **dataclasses.asdict(settings))
        self.metrics.record_batch(len(lines))
        started = time.perf_counter()
        run = functools.partial(translator.translate, lines, "<request>")
        found = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        log.debug("decoded %d sentences in %.3f s", len(lines), time.perf_counter() - started)
        self.metrics.sentences += len(lines)
        return found

    def _deliver(self, parts: list[_Part], found: Results) -> None:
        """Each part's slice of `found` into its job; a job whose last sentence it was is done."""
        at = 0
        for part in parts:
            size = part.stop - part.start
            job = part.job
            job.results[part.start : part.stop] = found[at : at + size]
            at += size
            if part.stop == len(job.lines) and not job.future.done():
                job.future.set_result(job.results)

    def _fail(self, part: _Part, exc: Exception) -> None:
        job = part.job
        log.error(
            "decoding a request of %d sentences failed", len(job.lines),
            exc_info=(type(exc), exc, exc.__traceback__),
        )  # fmt: skip
        if not job.future.done():
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            what = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
            job.future.set_exception(DecodeFailed(what))
