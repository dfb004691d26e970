"""Load test of `mt serve`: throughput and latency with and without dynamic batching, then faults.

    python scripts/bench_serve.py [--run-dir runs/multi30k_en_de] [--requests 2000]
                                  [--clients 1,8,32] [--beam 1] [--device cpu] [--threads N]
                                  [--multi30k DIR] [--heavy 16] [--faults-only] [KEY=VALUE ...]
    python scripts/bench_serve.py --smoke          # seconds: a tiny run, the load test only

Starts `python -m mt serve run_dir=RUN port=0 ...` on 127.0.0.1 twice: batched
(serve.batch_window_ms=5, serve.max_batch_sentences=64) and unbatched
(serve.batch_window_ms=0, serve.max_batch_sentences=1: each sentence is decoded alone). Each
server gets --requests single-sentence POST /translate requests (Multi30k test2016 sources,
from $MT_MULTI30K or ../shared/data/multi30k, in order, cycled) from C concurrent clients
(threads with keep-alive http.client connections), for each C of --clients, after a warm-up.
Prints sentences/s, p50/p95/p99 latency, the mean sentences per decoder call (from /metrics)
and the errors (any answer but 200; must be 0) per C and mode. Then, on a batched server, the
faults (--faults-only runs these alone): clients that drop the connection mid-request (half
the headers, half the body, or the whole request and gone before the answer), one 10 MB body
(expect 413), 100 malformed-JSON requests interleaved with 100 good ones from 8 clients
(expect 400s and 200s), 50 requests holding a lone UTF-16 surrogate interleaved with 50 good
ones (expect 422s and 200s), two heavy requests (--heavy sentences of 2,000 characters at
beam 8) with 20 light one-sentence requests sent while they run (the light ones must be
answered, and quickly), 4 heavy requests whose clients give up after 1 s (their sentences not
yet decoded must be dropped), an idle connection, one dribbling its headers and one stalled
mid-body (all closed; the stalled one gets 408), a request over serve.max_request_cost
(expect 413), and SIGTERM with 8 heavy requests in flight (each answered 200 or 503; the
server must exit 0 within 10 s). `crashes` counts 500s and connection errors of requests
that deserved an answer, tracebacks in the server's log and a bad exit; it must be 0. Extra
KEY=VALUE arguments go to both servers (e.g. precision=int8). The clients share the machine
with the server: on few cores they take CPU from it. The last line is JSON. --smoke checks that
the load test runs: without --run-dir, a `tiny` model trained for a few steps on a synthetic
corpus; 16 requests per C of 1 and 2, and no fault run (its slow-connection part alone waits
for the server's timeouts).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import queue
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# run as `python scripts/bench_serve.py`: its folder is on sys.path
from benchlib import multi30k_dir, print_json, read_test2016, smoke_run

MODES = {
    "batched": ["serve.batch_window_ms=5", "serve.max_batch_sentences=64"],
    "unbatched": ["serve.batch_window_ms=0", "serve.max_batch_sentences=1"],
}
JSON = {"Content-Type": "application/json"}


@dataclass
class Served:
    """A running `mt serve`: its address, its stderr so far, and once stopped, how many
    seconds it took to exit after SIGTERM and its exit status."""

    address: tuple[str, int]
    log: list[str]
    stop_s: float | None = None
    exit_status: int | None = None


@contextlib.contextmanager
def serving(args: argparse.Namespace, mode: str) -> Iterator[Served]:
    """A running `mt serve` of args.run_dir in `mode`; sends it SIGTERM after."""
    cmd = [sys.executable, "-m", "mt", "serve", f"run_dir={args.run_dir}", "port=0"]
    cmd += [f"device={args.device}", f"decode.beam={args.beam}", *MODES[mode], *args.overrides]
    if args.threads:
        cmd.append(f"threads={args.threads}")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen: list[str] = []
    threading.Thread(target=lambda: [seen.append(x) for x in proc.stderr], daemon=True).start()
    served = None
    try:
        deadline = time.monotonic() + 300
        while served is None and time.monotonic() < deadline and proc.poll() is None:
            found = [re.search(r" on http://(127\.0\.0\.1):(\d+)/", line) for line in seen]
            if any(found):
                host, port = next(f for f in found if f).groups()
                served = Served((host, int(port)), seen)
            time.sleep(0.2)
        if served is None:
            raise SystemExit("mt serve did not start:\n" + "".join(seen))
        wait_healthy(served.address)
        yield served
    finally:
        stopped = time.monotonic()
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if served is not None:
            served.stop_s = round(time.monotonic() - stopped, 2)
            served.exit_status = proc.returncode


def wait_healthy(address: tuple[str, int]) -> None:
    for _ in range(300):
        with contextlib.suppress(OSError, http.client.HTTPException):
            if once(address, "GET", "/health")[0] == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{address} never answered /health")


def connect(address: tuple[str, int]) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(*address, timeout=120)


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=JSON if body is not None else {})
    answer = conn.getresponse()
    return answer.status, answer.read()


def once(
    address: tuple[str, int], method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """One request on a connection of its own."""
    conn = connect(address)
    try:
        return request(conn, method, path, body)
    finally:
        conn.close()


def translate_body(line: str) -> bytes:
    return json.dumps({"text": line}).encode()


def metrics(address: tuple[str, int]) -> dict[str, float]:
    text = once(address, "GET", "/metrics")[1].decode()
    rows = [line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")]
    return {name: float(value) for name, value in rows}


def load(address: tuple[str, int], sentences: list[str], n: int, clients: int) -> dict:
    """n requests of one sentence from `clients` threads: sent/s, latency quantiles, errors."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n))
    lock = threading.Lock()

    def client() -> None:
        conn = connect(address)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                conn.close()
                return
            started = time.perf_counter()
            try:
                status, body = request(conn, "POST", "/translate", translate_body(sentences[i]))
            except (OSError, http.client.HTTPException) as exc:
                status, body = -1, repr(exc).encode()
                conn.close()
                conn = connect(address)
            with lock:
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors.append(f"{status} {body[:200]!r}")

    before = metrics(address)
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    after = metrics(address)
    calls = after["mt_batch_sentences_count"] - before["mt_batch_sentences_count"]
    decoded = after["mt_batch_sentences_sum"] - before["mt_batch_sentences_sum"]
    ordered = sorted(latencies)

    def ms(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "sent_s": round(n / seconds, 1), "p50_ms": ms(0.5), "p95_ms": ms(0.95),
        "p99_ms": ms(0.99), "mean_batch": round(decoded / max(calls, 1), 2),
        "errors": len(errors), "first_errors": errors[:3],
    }  # fmt: skip


def raw(address: tuple[str, int], data: bytes, wait_answer: bool = False) -> bytes:
    """Send `data` on a fresh socket and close it, reading an answer first if asked."""
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(data)
        return sock.recv(65536) if wait_answer else b""


def dropped_clients(address: tuple[str, int], sentence: str, each: int) -> dict:
    """Clients gone mid-request: half the headers, half the body, the whole request unread."""
    body = translate_body(sentence)
    head = (
        f"POST /translate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    kinds = {
        "half_headers": head[: len(head) // 2],
        "half_body": head + body[: len(body) // 2],
        "gone_before_answer": head + body,
    }
    for data in kinds.values():
        for _ in range(each):
            raw(address, data)
    time.sleep(1.0)  # let the server decode what the last ones left behind
    return {f"dropped_{kind}": each for kind in kinds}


def big_body(address: tuple[str, int], size: int) -> int:
    """The status answered to a `size`-byte body, sent while reading (the server may refuse
    it after the headers and close)."""
    body = b'{"text": "' + b"x" * (size - 12) + b'"}'
    head = (
        f"POST /translate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    data, sent, answer = memoryview(head + body), 0, b""
    with socket.create_connection(address, timeout=30) as sock:
        while b"\r\n" not in answer:
            writable = [sock] if sent < len(data) else []
            readable, writable, _ = select.select([sock], writable, [], 30)
            if not readable and not writable:
                break
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                answer += chunk
            elif writable:
                try:
                    sent += sock.send(data[sent : sent + 65536])
                except (BrokenPipeError, ConnectionResetError):
                    sent = len(data)  # the server stopped reading: wait for its answer
    found = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    return int(found.group(1)) if found else -1


def bad_and_good(address: tuple[str, int], sentences: list[str], n: int, clients: int) -> dict:
    """n malformed-JSON requests interleaved with n good ones from `clients` threads."""
    bodies = [
        translate_body(sentences[i]) if i % 2 == 1 else b'{"text": "a man' + str(i).encode()
        for i in range(2 * n)
    ]
    statuses = concurrently(address, bodies, clients)
    return {
        "good_sent": n, "good_200": sum(s == 200 for s in statuses[1::2]),
        "bad_sent": n, "bad_400": sum(s == 400 for s in statuses[0::2]),
    }  # fmt: skip


def concurrently(address: tuple[str, int], bodies: list[bytes], clients: int) -> list[int]:
    """The status of each POST /translate of `bodies`, in order, sent from `clients` keep-alive
    threads (-1: a connection error)."""
    statuses = [0] * len(bodies)
    jobs: queue.Queue[int] = queue.Queue()
    for i in range(len(bodies)):
        jobs.put(i)

    def client() -> None:
        conn = connect(address)
        while True:
            try:
                i = jobs.get_nowait()
            except queue.Empty:
                conn.close()
                return
            try:
                statuses[i] = request(conn, "POST", "/translate", bodies[i])[0]
            except (OSError, http.client.HTTPException):
                statuses[i], conn = -1, connect(address)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def surrogates_and_good(
    address: tuple[str, int], sentences: list[str], n: int, clients: int
) -> dict:
    """n requests holding a lone UTF-16 surrogate (expect 422) interleaved with n good ones
    (expect 200), from `clients` threads: the bad ones share batches with good ones."""
    bad = [json.dumps({"text": [s, "broken \ud800 text"]}).encode() for s in sentences[:n]]
    good = [translate_body(s) for s in sentences[n : 2 * n]]
    statuses = concurrently(
        address, [x for pair in zip(bad, good, strict=True) for x in pair], clients
    )
    return {
        "surrogate_sent": n, "surrogate_422": statuses[0::2].count(422),
        "surrogate_good_sent": n, "surrogate_good_200": statuses[1::2].count(200),
    }  # fmt: skip


def heavy_body(sentences: list[str], n: int) -> bytes:
    """n sentences of 2,000 characters at beam 8: within every documented limit."""
    long = " ".join(sentences)[:2000].rstrip()
    return json.dumps({"text": [long] * n, "beam": 8}).encode()


def timed_post(address: tuple[str, int], body: bytes, out: list, timeout: float = 120) -> None:
    """Append (status, seconds) of one POST /translate to `out` (status -1: no answer)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        status = request(conn, "POST", "/translate", body)[0]
    except (OSError, http.client.HTTPException):
        status = -1
    finally:
        conn.close()
    out.append((status, time.perf_counter() - started))


def in_threads(address: tuple[str, int], body: bytes, n: int, out: list) -> list[threading.Thread]:
    """n concurrent `timed_post`s of body, started."""
    threads = [threading.Thread(target=timed_post, args=(address, body, out)) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def heavy_and_light(
    address: tuple[str, int], sentences: list[str], heavy: int, per_heavy: int, light: int
) -> dict:
    """`heavy` requests of `per_heavy` long sentences at beam 8 and, while they run, `light`
    one-sentence requests one after another: the light ones must not wait for the heavy."""
    heavy_out: list[tuple[int, float]] = []
    threads = in_threads(address, heavy_body(sentences, per_heavy), heavy, heavy_out)
    time.sleep(0.5)  # the heavy ones are being decoded
    light_out: list[tuple[int, float]] = []
    for line in sentences[:light]:
        timed_post(address, translate_body(line), light_out)
    heavy_running = sum(t.is_alive() for t in threads)
    for t in threads:
        t.join()
    light_s = sorted(seconds for _, seconds in light_out)
    return {
        "light_sent": light, "light_200": sum(s == 200 for s, _ in light_out),
        "light_p50_ms": round(1000 * light_s[len(light_s) // 2], 1),
        "light_max_ms": round(1000 * light_s[-1], 1),
        "heavy_running_after_light": heavy_running, "heavy_sent": heavy,
        "heavy_200": sum(s == 200 for s, _ in heavy_out),
        "heavy_504": sum(s == 504 for s, _ in heavy_out),
        "heavy_max_s": round(max(seconds for _, seconds in heavy_out), 1),
    }  # fmt: skip


def clients_gone(address: tuple[str, int], sentences: list[str], n: int, per_heavy: int) -> dict:
    """n clients that send a heavy request and give up after 1 s (a client-side timeout):
    the sentences the server never decoded for them, from /metrics."""
    before = metrics(address).get("mt_sentences_dropped_total", 0.0)
    out: list[tuple[int, float]] = []
    threads = [
        threading.Thread(
            target=timed_post, args=(address, heavy_body(sentences, per_heavy), out, 1.0)
        )
        for _ in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2.0)  # the decoder finishes the chunk it had started
    dropped = metrics(address).get("mt_sentences_dropped_total", 0.0) - before
    return {
        "gone_sent": n, "gone_gave_up": sum(s == -1 for s, _ in out),
        "gone_sentences": n * per_heavy, "gone_sentences_dropped": int(dropped),
    }  # fmt: skip


def slow_connections(address: tuple[str, int], wait_s: float = 40) -> dict:
    """An idle connection, one dribbling a header byte every 0.5 s, one stalled mid-body: the
    seconds each stayed open, and the stalled one's status (expect 408)."""
    head = b"POST /translate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    socks = {
        "idle": (socket.create_connection(address), b""),
        "dribbling": (socket.create_connection(address), head + b"X-Slow: "),
        "stalled": (socket.create_connection(address), head + b'Content-Length: 100\r\n\r\n{"t'),
    }
    opened, closed, answers = time.monotonic(), {}, {name: b"" for name in socks}
    for sock, data in socks.values():
        sock.sendall(data)
    while len(closed) < len(socks) and time.monotonic() - opened < wait_s:
        live = {sock: name for name, (sock, _) in socks.items() if name not in closed}
        for sock in select.select(list(live), [], [], 0.5)[0]:
            try:
                chunk = sock.recv(65536)
            except ConnectionError:
                chunk = b""
            answers[live[sock]] += chunk
            if not chunk:
                closed[live[sock]] = round(time.monotonic() - opened, 1)
        if "dribbling" not in closed:
            with contextlib.suppress(OSError):
                socks["dribbling"][0].sendall(b"a")
    for sock, _ in socks.values():
        sock.close()
    found = re.match(rb"HTTP/1\.1 (\d{3})", answers["stalled"])
    return {
        **{f"{name}_closed_s": closed.get(name, -1) for name in socks},
        "stalled_status": int(found.group(1)) if found else -1,
    }


def faults(args: argparse.Namespace, sentences: list[str]) -> dict:
    """The fault run on a batched server; `ok` says every expectation held, `crashes` counts
    500s, connection errors of requests that deserved an answer, tracebacks in the server log
    and a server that did not exit 0."""
    in_flight: list[tuple[int, float]] = []
    with serving(args, "batched") as served:
        address = served.address
        out = dropped_clients(address, sentences[0], each=20)
        good = translate_body(sentences[1])
        out["after_drops_200"] = once(address, "POST", "/translate", good)[0]
        out["big_body_status"] = big_body(address, 10_000_000)
        out.update(bad_and_good(address, sentences, 100, clients=8))
        out.update(surrogates_and_good(address, sentences, 50, clients=8))
        out.update(heavy_and_light(address, sentences, 2, args.heavy, light=20))
        out.update(clients_gone(address, sentences, 4, args.heavy))
        out.update(slow_connections(address))
        out["over_cost_status"] = once(address, "POST", "/translate", heavy_body(sentences, 64))[0]
        out["health_after"] = once(address, "GET", "/health")[0]
        # SIGTERM (on leaving this block) with heavy work in flight: 503s, no resets
        threads = in_threads(address, heavy_body(sentences, args.heavy), 8, in_flight)
        time.sleep(1.0)
    for t in threads:
        t.join()
    statuses = [s for s, _ in in_flight]
    out.update({
        "sigterm_in_flight": len(statuses), "sigterm_200": statuses.count(200),
        "sigterm_503": statuses.count(503), "stop_s": served.stop_s,
        "exit_status": served.exit_status,
        "tracebacks": sum("Traceback" in line for line in served.log),
    })  # fmt: skip
    return _judged(out, statuses)


def _judged(out: dict, sigterm_statuses: list[int]) -> dict:
    """`out` with `crashes` and `ok` added."""
    answered = {200, 503}
    out["crashes"] = (
        out["tracebacks"] + (out["exit_status"] != 0)
        + sum(s not in answered for s in sigterm_statuses)
        + (out["good_sent"] - out["good_200"]) + (out["light_sent"] - out["light_200"])
        + (out["surrogate_good_sent"] - out["surrogate_good_200"])
    )  # fmt: skip
    out["ok"] = (
        out["crashes"] == 0 and out["after_drops_200"] == 200 and out["big_body_status"] == 413
        and out["bad_400"] == out["bad_sent"] and out["surrogate_422"] == out["surrogate_sent"]
        and out["heavy_200"] + out["heavy_504"] == out["heavy_sent"]
        and out["gone_sentences_dropped"] > 0 and out["stalled_status"] == 408
        and all(out[f"{name}_closed_s"] > 0 for name in ("idle", "dribbling", "stalled"))
        and out["over_cost_status"] == 413 and out["health_after"] == 200
        and out["stop_s"] is not None and out["stop_s"] < 10
    )  # fmt: skip
    return out


def load_test(args: argparse.Namespace, sentences: list[str], counts: list[int]) -> dict:
    """Throughput and latency per C of `counts` and mode; printed as it goes."""
    results: dict = {}
    for mode in MODES:
        with serving(args, mode) as served:
            address = served.address
            load(address, sentences, min(64, args.requests), max(counts))  # warm-up
            for c in counts:
                r = load(address, sentences, args.requests, c)
                results.update({f"c{c}_{mode}_{k}": v for k, v in r.items() if k != "first_errors"})
                print(f"{mode:<9} C={c:<3}: {r['sent_s']:7.1f} sent/s, p50 {r['p50_ms']:7.1f} ms, "
                      f"p95 {r['p95_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms, mean batch "
                      f"{r['mean_batch']:5.2f}, errors {r['errors']} {r['first_errors'] or ''}",
                      flush=True)  # fmt: skip
    for c in counts:
        results[f"ratio_c{c}"] = round(
            results[f"c{c}_batched_sent_s"] / results[f"c{c}_unbatched_sent_s"], 2
        )
    results["errors"] = sum(v for k, v in results.items() if k.endswith("_errors"))
    return results


def test2016_sources(corpus: Path) -> list[str]:
    return [line for line in read_test2016(corpus)[0] if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="default: runs/multi30k_en_de")
    parser.add_argument("--requests", type=int, default=2000, help="requests per C and mode")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--beam", type=int, default=1, help="decode.beam of the servers")
    parser.add_argument("--device", default="cpu", help="device= of the servers")
    parser.add_argument("--threads", type=int, help="threads= of the servers (default: mt's)")
    parser.add_argument("--multi30k", type=Path, default=multi30k_dir())
    parser.add_argument(
        "--heavy", type=int, default=16,
        help="sentences of 2,000 characters (beam 8) per heavy request of the fault run",
    )  # fmt: skip
    parser.add_argument("--faults-only", action="store_true", help="skip the load test")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no fault run")
    parser.add_argument("overrides", nargs="*", help="more KEY=VALUE for mt serve")
    args = parser.parse_args()
    if not args.smoke:
        args.run_dir = args.run_dir or Path("runs/multi30k_en_de")
        bench(args)
        return
    args.requests, args.clients = 16, "1,2"
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        if args.run_dir is None:
            args.run_dir, args.multi30k = smoke_run(Path(tmp))
        bench(args)


def bench(args: argparse.Namespace) -> None:
    sentences = test2016_sources(args.multi30k)
    sentences = [sentences[i % len(sentences)] for i in range(max(args.requests, 200))]
    counts = [int(c) for c in args.clients.split(",")]
    print(f"{args.run_dir}, beam {args.beam}, device {args.device}, {args.requests} requests "
          f"of one sentence per C and mode", flush=True)  # fmt: skip
    results: dict = {}
    if not args.faults_only:
        results.update(load_test(args, sentences, counts))
    if not args.smoke:
        fault = faults(args, sentences)
        print("faults: " + ", ".join(f"{k} {v}" for k, v in fault.items()), flush=True)
        results.update({f"fault_{k}": v for k, v in fault.items()})
    print_json(results)


if __name__ == "__main__":
    main()
