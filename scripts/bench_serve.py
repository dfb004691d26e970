"""Load test of `mt serve`: throughput and latency with and without dynamic batching, then faults.

    python scripts/bench_serve.py [--run-dir runs/multi30k_en_de] [--requests 2000]
                                  [--clients 1,8,32] [--beam 1] [--device cpu] [--threads N]
                                  [--multi30k DIR] [KEY=VALUE ...]

Starts `python -m mt serve run_dir=RUN port=0 ...` on 127.0.0.1 twice: batched
(serve.batch_window_ms=5, serve.max_batch_sentences=64) and unbatched
(serve.batch_window_ms=0, serve.max_batch_sentences=1: each sentence is decoded alone). Each
server gets --requests single-sentence POST /translate requests (Multi30k test2016 sources,
from $MT_MULTI30K or ../shared/data/multi30k, in order, cycled) from C concurrent clients
(threads with keep-alive http.client connections), for each C of --clients, after a warm-up.
Prints sentences/s, p50/p95/p99 latency, the mean sentences per decoder call (from /metrics)
and the errors (any answer but 200; must be 0) per C and mode. Then, on a batched server, the
faults: clients that drop the connection mid-request (half the headers, half the body, or the
whole request and gone before the answer), one 10 MB body (expect 413), and 100 malformed-JSON
requests interleaved with 100 good ones from 8 clients (expect 400s and 200s); the server
must still answer afterwards. Extra KEY=VALUE arguments go to both servers (e.g.
precision=int8). The clients share the machine with the server: on few cores they take CPU
from it. The last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import os
import queue
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

MODES = {
    "batched": ["serve.batch_window_ms=5", "serve.max_batch_sentences=64"],
    "unbatched": ["serve.batch_window_ms=0", "serve.max_batch_sentences=1"],
}
JSON = {"Content-Type": "application/json"}


@contextlib.contextmanager
def serving(args: argparse.Namespace, mode: str) -> Iterator[tuple[str, int]]:
    """A running `mt serve` of args.run_dir in `mode`: yields (host, port); stops it after."""
    cmd = [sys.executable, "-m", "mt", "serve", f"run_dir={args.run_dir}", "port=0"]
    cmd += [f"device={args.device}", f"decode.beam={args.beam}", *MODES[mode], *args.overrides]
    if args.threads:
        cmd.append(f"threads={args.threads}")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    try:
        found, seen, deadline = None, [], time.monotonic() + 300
        while found is None and time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.2))
                found = re.search(r" on http://(127\.0\.0\.1):(\d+)/", seen[-1])
        if found is None:
            raise SystemExit("mt serve did not start:\n" + "".join(seen))
        address = (found.group(1), int(found.group(2)))
        wait_healthy(address)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


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
    jobs: queue.Queue[int] = queue.Queue()
    for i in range(2 * n):
        jobs.put(i)
    statuses: list[tuple[bool, int]] = []  # (good, status)
    lock = threading.Lock()

    def client() -> None:
        conn = connect(address)
        while True:
            try:
                i = jobs.get_nowait()
            except queue.Empty:
                conn.close()
                return
            good = i % 2 == 1
            body = translate_body(sentences[i]) if good else b'{"text": "a man' + str(i).encode()
            try:
                status = request(conn, "POST", "/translate", body)[0]
            except (OSError, http.client.HTTPException):
                status, conn = -1, connect(address)
            with lock:
                statuses.append((good, status))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "good_sent": n, "good_200": sum(g and s == 200 for g, s in statuses),
        "bad_sent": n, "bad_400": sum(not g and s == 400 for g, s in statuses),
    }  # fmt: skip


def faults(args: argparse.Namespace, sentences: list[str]) -> dict:
    """The fault run on a batched server; `ok` says every expectation held."""
    with serving(args, "batched") as address:
        out = dropped_clients(address, sentences[0], each=20)
        good = translate_body(sentences[1])
        out["after_drops_200"] = once(address, "POST", "/translate", good)[0]
        out["big_body_status"] = big_body(address, 10_000_000)
        out.update(bad_and_good(address, sentences, 100, clients=8))
        out["health_after"] = once(address, "GET", "/health")[0]
    out["ok"] = (
        out["after_drops_200"] == 200 and out["big_body_status"] == 413
        and out["good_200"] == out["good_sent"] and out["bad_400"] == out["bad_sent"]
        and out["health_after"] == 200
    )  # fmt: skip
    return out


def test2016_sources(corpus: Path) -> list[str]:
    with gzip.open(corpus / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/multi30k_en_de"))
    parser.add_argument("--requests", type=int, default=2000, help="requests per C and mode")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--beam", type=int, default=1, help="decode.beam of the servers")
    parser.add_argument("--device", default="cpu", help="device= of the servers")
    parser.add_argument("--threads", type=int, help="threads= of the servers (default: mt's)")
    parser.add_argument(
        "--multi30k", type=Path,
        default=Path(os.environ.get("MT_MULTI30K", "../shared/data/multi30k")),
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="more KEY=VALUE for mt serve")
    args = parser.parse_args()
    sentences = test2016_sources(args.multi30k)
    sentences = [sentences[i % len(sentences)] for i in range(max(args.requests, 200))]
    counts = [int(c) for c in args.clients.split(",")]
    print(f"{args.run_dir}, beam {args.beam}, device {args.device}, {args.requests} requests "
          f"of one sentence per C and mode", flush=True)  # fmt: skip
    results: dict = {}
    for mode in MODES:
        with serving(args, mode) as address:
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
    fault = faults(args, sentences)
    print("faults: " + ", ".join(f"{k} {v}" for k, v in fault.items()), flush=True)
    results.update({f"fault_{k}": v for k, v in fault.items()})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
