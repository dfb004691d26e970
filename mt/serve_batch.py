"""Dynamic batching and metrics of `mt serve`: requests from many clients share decoder batches.

A bounded asyncio queue takes each request's sentences; one worker task waits
serve.batch_window_ms after the first arrives, takes what else came (up to
serve.max_batch_sentences), groups it by decode settings and decodes each group with one
Translator.translate call in a single worker thread, so the event loop keeps answering.
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
from typing import TypeVar

from mt.translate import Translator

log = logging.getLogger("mt.serve")

Results = list[list[tuple[str, float]]]  # per sentence, its n-best (text, score) list
T = TypeVar("T")

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_QUANTILES = (0.5, 0.9, 0.99)
LATENCY_WINDOW = 1000  # latency quantiles are over the last this many /translate requests


class QueueFull(Exception):
    """More than serve.max_queue requests are waiting for the decoder."""


@dataclass(frozen=True)
class Settings:
    """The decode settings a request may choose; requests with equal settings share batches."""

    beam: int
    nbest: int
    lenpen: float


@dataclass
class _Job:
    lines: list[str]
    settings: Settings
    future: asyncio.Future[Results]


class Metrics:
    """Counters of the server, rendered in the Prometheus text format by `render`."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (path, status) -> answers
        self.sentences = 0
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
    """Collects requests into batches and decodes them one batch at a time.

    Args:
        translator: Decodes; each batch uses a copy of it with the batch's Settings.
        window_s: How long to wait for more requests after the first one arrives.
        max_batch: Sentences per batch at most (a larger request still runs, alone).
        max_queue: Requests waiting at most; `submit` raises QueueFull beyond it.
        metrics: Where batch sizes and translated sentences are counted.
    """

    def __init__(
        self, translator: Translator, window_s: float, max_batch: int, max_queue: int,
        metrics: Metrics,
    ) -> None:  # fmt: skip
        self.translator, self.window_s, self.max_batch = translator, window_s, max_batch
        self.metrics, self.max_queue = metrics, max_queue
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()  # replaced in start(), in its loop
        self._held: _Job | None = None  # taken from the queue but too big for the last batch
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker task and its decoding thread (inside the running event loop)."""
        self.queue = asyncio.Queue(maxsize=self.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt-decode")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the worker; requests still queued get an error."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        waiting = [self._held] if self._held else []
        while not self.queue.empty():
            waiting.append(self.queue.get_nowait())
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is stopping"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, lines: list[str], settings: Settings, timeout_s: float) -> Results:
        """The n-best lists of `lines`, decoded in whatever batch they join.

        Raises:
            QueueFull: If serve.max_queue requests are already waiting.
            TimeoutError: If no answer came within timeout_s (the request is then dropped).
        """
        job = _Job(lines, settings, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull from None
        self.metrics.queue_depth = self.queue.qsize()
        return await asyncio.wait_for(job.future, timeout_s)  # cancels the job on timeout

    async def run_in_decoder(self, fn: Callable[[], T], timeout_s: float) -> T:
        """fn() in the decoding thread, between two batches (it may use the model too).

        Raises:
            asyncio.TimeoutError: If fn has not returned within timeout_s (it still runs on).
        """
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._executor, fn), timeout_s)

    async def _loop(self) -> None:
        while True:
            jobs = await self._collect()
            groups: dict[Settings, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.settings, []).append(job)
            for settings, group in groups.items():
                await self._decode(settings, group)

    async def _collect(self) -> list[_Job]:
        """The next batch: the first waiting job plus what arrives within the window."""
        first = self._held or await self.queue.get()
        self._held = None
        if self.window_s > 0:
            await asyncio.sleep(self.window_s)
        jobs, size = [first], len(first.lines)
        while size < self.max_batch and not self.queue.empty():
            job = self.queue.get_nowait()
            if size + len(job.lines) > self.max_batch:
                self._held = job  # opens the next batch
                break
            jobs.append(job)
            size += len(job.lines)
        self.metrics.queue_depth = self.queue.qsize()
        return [job for job in jobs if not job.future.done()]  # timed-out jobs are done

    async def _decode(self, settings: Settings, group: list[_Job]) -> None:
        """Decode a group's sentences in one call and hand each job its own slice."""
        lines = [line for job in group for line in job.lines]
        translator = copy.copy(self.translator)  # shares the model; only the settings differ
        translator.decode = dataclasses.replace(translator.decode, **dataclasses.asdict(settings))
        self.metrics.record_batch(len(lines))
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            run = functools.partial(translator.translate, lines, "<request>")
            results = await loop.run_in_executor(self._executor, run)
        except Exception as exc:  # a bug or out of memory: fail these requests, keep serving
            log.exception("decoding a batch of %d sentences failed", len(lines))
            for job in group:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        log.debug("decoded %d sentences in %.3f s", len(lines), time.perf_counter() - started)
        self.metrics.sentences += len(lines)
        start = 0
        for job in group:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.lines)])
            start += len(job.lines)
