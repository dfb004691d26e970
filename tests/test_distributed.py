"""torchrun on CPU with gloo: two nodes on localhost, the same updates as gradient accumulation,
and a resume after the whole job was killed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

import mt
from mt.checkpoint import load_checkpoint
from mt.rundir import RunDir

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MT_PACKAGE = Path(mt.__file__).parent  # a traceback through mt's own code names it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "-m", "mt", "train", f"data_dir={data_dir}", f"run_dir={run_dir}", "model=tiny",
        "train.device=cpu", "train.tune_decoding=false", "train.precision=fp32",
        "train.max_tokens=256", "train.lr=3e-3",
        "train.warmup_steps=2", "train.valid_bleu=false", "train.log_every=1", *extra,
    ]  # fmt: skip


def _torchrun(*launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher]


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (torchrun's workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            found.append(int(stat.parent.name))
    return found


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err[-3000:]


def test_two_nodes_on_localhost(prepared_dir, tmp_path):
    run, port = tmp_path / "run", _free_port()
    procs = [
        subprocess.Popen(
            _torchrun(
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={rank}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                *_train_args(prepared_dir, run, "train.max_steps=3"),
            ),
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    _finish(procs)
    assert "world size 2" in (run / "train.log").read_text()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["step"] == 3


def test_two_processes_equal_one_process_accumulating_two_batches(prepared_dir, tmp_path):
    """DDP averages the ranks' gradients of every world-th batch; accumulation sums the same
    batches in one process. With dropout off, both make the same updates."""
    steps = "train.max_steps=3"
    ddp = subprocess.Popen(
        _torchrun("--standalone", "--nproc_per_node=2",
                  *_train_args(prepared_dir, tmp_path / "ddp", steps)),
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _finish([ddp])
    single = _train_args(prepared_dir, tmp_path / "one", steps, "train.update_freq=2")
    one = subprocess.run(
        [sys.executable, *single],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    assert a["train_state"]["step"] == b["train_state"]["step"] == 3
    moved = 0
    for key, before in a["model"].items():
        torch.testing.assert_close(before, b["model"][key], atol=1e-5, rtol=1e-4)
        moved += int(before.is_floating_point() and before.abs().sum() > 0)
    assert moved > 10  # the comparison is over trained weights, not an empty model
    valid_a = a["train_state"]["history"][-1]["valid/loss"]
    assert abs(valid_a - b["train_state"]["history"][-1]["valid/loss"]) < 1e-4


def test_a_killed_ddp_job_resumes_from_its_last_checkpoint(prepared_dir, tmp_path):
    run = tmp_path / "run"
    args = _torchrun("--standalone", "--nproc_per_node=2")
    job = subprocess.Popen(
        [*args, *_train_args(prepared_dir, run, "train.max_steps=100000", "train.valid_every=2")],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list((run / "checkpoints").glob("step_4.pt")):
        time.sleep(0.2)
    for pid in [*_children(job.pid), job.pid]:  # workers first: each runs in its own session
        os.kill(pid, signal.SIGKILL)  # no chance to save anything
    job.wait()
    assert list((run / "checkpoints").glob("step_*.pt")), "no checkpoint before the kill"
    # The newest step file is what a resume picks: a kill between writing step_N.pt and
    # pointing last.pt at it leaves last.pt one save behind.
    saved = load_checkpoint(RunDir(run).steps()[-1])["train_state"]["step"]
    again = subprocess.Popen(
        [*args, *_train_args(prepared_dir, run, f"train.max_steps={saved + 2}",
                             "train.valid_every=2")],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _finish([again])
    log = (run / "train.log").read_text()
    assert f"from step {saved}" in log
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["step"] == saved + 2


def test_sigterm_stops_every_rank_after_the_same_update(prepared_dir, tmp_path):
    """torchrun passes SIGTERM to both workers; they agree on it, rank 0 saves, both exit."""
    run = tmp_path / "run"
    job = subprocess.Popen(
        [*_torchrun("--standalone", "--nproc_per_node=2"),
         *_train_args(prepared_dir, run, "train.max_steps=100000", "train.valid_every=2")],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list((run / "checkpoints").glob("step_2.pt")):
        time.sleep(0.2)
    workers = _children(job.pid)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert "stopped by SIGTERM at step" in err, err[-3000:]
    step = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["step"] == step
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # none left behind


def _rank_pid(job: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker with RANK=`rank`."""
    for pid in _children(job.pid):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker with RANK={rank} under torchrun {job.pid}")


def _lose_rank_1(prepared_dir: Path, run: Path, sig: signal.Signals) -> tuple[float, str, int]:
    """Start a 2-rank job with train.dist_timeout=10, send `sig` to rank 1 once a checkpoint
    exists; returns the seconds rank 0 took to exit afterwards, torchrun's stderr and the
    newest saved step."""
    job = subprocess.Popen(
        [*_torchrun("--standalone", "--nproc_per_node=2"),
         *_train_args(prepared_dir, run, "train.max_steps=100000", "train.valid_every=2",
                      "train.dist_timeout=10")],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list((run / "checkpoints").glob("step_4.pt")):
            time.sleep(0.2)
        rank0, rank1 = _rank_pid(job, 0), _rank_pid(job, 1)
        os.kill(rank1, sig)
        lost = time.monotonic()
        while Path(f"/proc/{rank0}").exists() and time.monotonic() - lost < 120:
            time.sleep(0.1)
        took = time.monotonic() - lost
        print(f"rank 0 left {took:.1f} s after rank 1 got {sig.name}")
        # torchrun would end a stopped worker itself after its 30 s grace; the test does not
        # wait for that: rank 0's exit is what it checks
        with contextlib.suppress(ProcessLookupError):
            os.kill(rank1, signal.SIGKILL)
        _, err = job.communicate(timeout=120)
    finally:
        for pid in [*_children(job.pid), job.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        job.wait()
    assert job.returncode != 0
    return took, err, load_checkpoint(RunDir(run).steps()[-1])["train_state"]["step"]


def _resumes(prepared_dir: Path, run: Path, saved: int) -> None:
    again = subprocess.Popen(
        [*_torchrun("--standalone", "--nproc_per_node=2"),
         *_train_args(prepared_dir, run, f"train.max_steps={saved + 2}", "train.valid_every=2")],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _finish([again])
    assert f"from step {saved}" in (run / "train.log").read_text()


def test_a_stopped_rank_ends_the_job_within_dist_timeout_naming_it(prepared_dir, tmp_path):
    """kill -STOP on rank 1: rank 0 waits at most train.dist_timeout in its collective, then
    exits with one sentence naming rank 1, never a silent wait; the run resumes after."""
    run = tmp_path / "run"
    took, err, saved = _lose_rank_1(prepared_dir, run, signal.SIGSTOP)
    assert "mt train: error: rank 0 of 2: rank 1 stopped answering" in err, err[-3000:]
    assert took < 10 + 20, f"rank 0 waited {took:.0f} s with train.dist_timeout=10"
    _resumes(prepared_dir, run, saved)


def test_a_killed_rank_ends_the_job_naming_it(prepared_dir, tmp_path):
    """kill -9 on rank 1: rank 0's collective fails at once; it names rank 1 and exits."""
    run = tmp_path / "run"
    took, err, saved = _lose_rank_1(prepared_dir, run, signal.SIGKILL)
    assert took < 10 + 20, f"rank 0 took {took:.0f} s to leave"
    # torchrun may end rank 0 (SIGTERM) before it has written its sentence; if it wrote one,
    # the sentence names rank 1
    if "mt train: error: rank 0" in err:
        assert "rank 1 stopped answering" in err, err[-3000:]
    assert f'File "{MT_PACKAGE}' not in err, err[-3000:]  # torchrun's own traceback only
