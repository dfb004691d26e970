"""The training stage: overfitting, exact resume, bf16 on CPU, DDP, bad configs."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from mt.checkpoint import load_checkpoint
from mt.decode.greedy import greedy_search
from mt.decode.search import Limits
from mt.model import transformer
from mt.runtime import bf16_supported
from mt.shards import Shard
from mt.tokenizer import BOS_ID, EOS_ID
from mt.train import run_train
from tests.conftest import train_config
from tests.test_cli import assert_clean_error, mt


def test_tiny_model_overfits_32_pairs_and_reproduces_them(overfit_run):
    _, run, results = overfit_run
    assert results["history"][-1]["valid/loss"] < 0.05
    assert results["history"][-1]["valid/bleu"] == pytest.approx(100.0)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    data = run.parent / "data"
    model = transformer(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    src, tgt = Shard.load(data, "train", "src"), Shard.load(data, "train", "tgt")
    for i in range(4):
        ids = torch.tensor([[*src[i].tolist(), EOS_ID]])
        hyp = greedy_search(model, ids, ids == 0, Limits(BOS_ID, EOS_ID))[0]
        assert hyp.tokens == tgt[i].tolist()


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_resume_matches_an_uninterrupted_run(prepared_dir, tmp_path):
    extra = ("train.valid_every=4", "train.valid_bleu=false", "model.dropout=0.1")
    straight = run_train(train_config(prepared_dir, tmp_path / "a", "train.max_steps=12", *extra))
    run_train(train_config(prepared_dir, tmp_path / "b", "train.max_steps=8", *extra))
    resumed = run_train(train_config(prepared_dir, tmp_path / "b", "train.max_steps=12", *extra))
    assert resumed["step"] == straight["step"] == 12
    assert resumed["history"][-1]["valid/loss"] == straight["history"][-1]["valid/loss"]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bf16 matmuls"
)
def test_bf16_autocast_trains_on_cpu(prepared_dir, tmp_path):
    results = run_train(
        train_config(prepared_dir, tmp_path / "r", "train.max_steps=6", "train.precision=bf16")
    )
    assert results["step"] == 6
    assert torch.isfinite(torch.tensor(results["history"][-1]["valid/loss"]))


def test_auto_precision_on_cpu_trains_in_the_faster_of_bf16_and_fp32(prepared_dir, tmp_path):
    """train.precision=auto times bf16 and fp32 updates where the CPU has both, and trains in
    the faster, saying so with both times; without native bf16 it is fp32, with no probe. A
    resumed run keeps the precision its checkpoint records, without timing again."""
    run = tmp_path / "run"
    run_train(train_config(prepared_dir, run, "train.max_steps=2", "train.precision=auto"))
    log = (run / "train.log").read_text()
    assert log.count("precision=auto:") <= 1
    if bf16_supported(torch.device("cpu")):
        probe = re.search(r"precision=auto: ([\d.]+) s per update in bf16, ([\d.]+) s in fp32 "
                          r"here: training in (bf16|fp32)", log)  # fmt: skip
        assert probe, log
        bf16_s, fp32_s, chosen = float(probe[1]), float(probe[2]), probe[3]
        assert chosen == ("bf16" if bf16_s <= fp32_s else "fp32")
    else:
        assert "precision=auto:" not in log
        chosen = "fp32"
    assert f"cpu, {chosen}," in log  # the run trains in the chosen precision
    assert load_checkpoint(run / "checkpoints" / "last.pt")["precision"] == chosen
    run_train(train_config(prepared_dir, run, "train.max_steps=3", "train.precision=auto"))
    resumed = (run / "train.log").read_text()[len(log) :]
    assert "resuming" in resumed and "precision=auto:" not in resumed
    assert f"cpu, {chosen}," in resumed


def _step_losses(run) -> list[float]:
    log = (run / "train.log").read_text()
    return [float(m) for m in re.findall(r"step \d+ epoch \d+ \| loss ([\d.]+)", log)]


def test_compiled_training_takes_the_steps_of_eager_training(prepared_dir, tmp_path):
    """train.compile=true (torch.compile, dynamic shapes): the same losses step by step as
    eager training on the same batches, without a recompilation per batch shape."""
    same = ("train.max_steps=6", "train.log_every=1", "model.dropout=0",
            "train.tune_decoding=false")  # fmt: skip
    run_train(train_config(prepared_dir, tmp_path / "eager", *same))
    run_train(train_config(prepared_dir, tmp_path / "compiled", *same, "train.compile=true"))
    eager, compiled = _step_losses(tmp_path / "eager"), _step_losses(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 6
    assert compiled == pytest.approx(eager, rel=2e-3)
    counts = re.search(r"train.compile: (\d+) graphs compiled, (\d+) recompilations",
                       (tmp_path / "compiled" / "train.log").read_text())  # fmt: skip
    assert counts and int(counts[2]) < 6  # not one per step


def test_run_folder_contents(prepared_dir, tmp_path):
    run = tmp_path / "r"
    run_train(
        train_config(
            prepared_dir,
            run,
            "train.max_steps=4",
            "train.keep_last=2",
            "train.valid_every=1",
            "train.valid_bleu=false",
        )
    )
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"last.pt", "best.pt", "step_3.pt", "step_4.pt"} <= names and "step_1.pt" not in names
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["step"] == 4
    assert (run / "config.yaml").is_file() and (run / "train.log").is_file()
    assert (run / "spm.model").is_file()
    assert any((run / "tensorboard").iterdir())
    results = json.loads((run / "results.json").read_text())
    assert "test/bleu" in results


def test_checkpoint_averaging(prepared_dir, tmp_path):
    run = tmp_path / "r"
    run_train(
        train_config(
            prepared_dir,
            run,
            "train.max_steps=3",
            "train.valid_every=1",
            "train.valid_bleu=false",
            "train.average_last=3",
        )
    )
    steps = [load_checkpoint(run / "checkpoints" / f"step_{i}.pt")["model"] for i in (1, 2, 3)]
    avg = load_checkpoint(run / "checkpoints" / "averaged.pt")
    key = next(k for k in avg["model"] if avg["model"][k].is_floating_point())
    expected = sum(s[key] for s in steps) / 3
    torch.testing.assert_close(avg["model"][key], expected)
    assert "optimizer" not in avg


def test_bad_model_config_is_a_clear_error(prepared_dir, tmp_path):
    result = mt(
        "train",
        f"data_dir={prepared_dir}",
        f"run_dir={tmp_path / 'r'}",
        "model=tiny",
        "model.d_model=30",
        "model.n_heads=4",
        "train.device=cpu",
    )
    assert_clean_error(result, "model.d_model=30 is not divisible by model.n_heads=4")


def test_fallback_model_trains_when_the_model_is_too_slow_for_the_minutes(prepared_dir, tmp_path):
    run = tmp_path / "r"
    extra = (
        "model.d_model=48", "model.d_ff=96", "model.dropout=0.1", "model.positions=rope",
        "train.max_minutes=5", "train.fallback_model=tiny", "train.fallback_below_steps=10000000",
    )  # fmt: skip
    run_train(train_config(prepared_dir, run, "train.max_steps=4", *extra))
    args = load_checkpoint(run / "checkpoints" / "last.pt")["model_args"]
    # tiny's sizes (d_model 32, d_ff 64) replace the model's; its other settings stay
    assert (args["d_model"], args["d_ff"], args["dropout"], args["positions"]) == (
        32,
        64,
        0.1,
        "rope",
    )
    assert "d_model: 32" in (run / "config.yaml").read_text()
    resumed = run_train(train_config(prepared_dir, run, "train.max_steps=6", *extra))
    assert resumed["step"] == 6
    assert load_checkpoint(run / "checkpoints" / "last.pt")["model_args"]["d_model"] == 32
    assert "d_model: 32" in (run / "config.yaml").read_text()  # rewritten on resume too
    assert (run / "train.log").read_text().count("speed check") == 1  # timed once, then kept


def test_fallback_model_stays_unused_when_the_model_is_fast_enough(prepared_dir, tmp_path):
    run = tmp_path / "r"
    extra = ("model.d_model=48", "train.max_minutes=5", "train.fallback_model=tiny")
    run_train(
        train_config(prepared_dir, run, "train.max_steps=2", "train.fallback_below_steps=1", *extra)
    )
    assert load_checkpoint(run / "checkpoints" / "last.pt")["model_args"]["d_model"] == 48
    assert "keeping the configured model" in (run / "train.log").read_text()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("train.fallback_model=tiny", "train.fallback_below_steps=100"),
            "needs train.max_minutes",
        ),
        (
            ("train.fallback_model=nano", "train.fallback_below_steps=100", "train.max_minutes=5"),
            "model='nano' is not a preset",
        ),
    ],
)
def test_bad_fallback_model_is_a_clear_error(prepared_dir, tmp_path, overrides, message):
    result = mt(
        "train", f"data_dir={prepared_dir}", f"run_dir={tmp_path / 'r'}", "model=tiny",
        "train.device=cpu", *overrides,
    )  # fmt: skip
    assert_clean_error(result, message)
    assert not (tmp_path / "r").exists()


def test_missing_data_dir_is_a_clear_error(tmp_path):
    result = mt("train", f"data_dir={tmp_path / 'nope'}", f"run_dir={tmp_path / 'r'}")
    assert_clean_error(result, "has no manifest.json")


def test_two_process_gloo_ddp(prepared_dir, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mt",
        "train",
        f"data_dir={prepared_dir}",
        f"run_dir={run}",
        "model=tiny",
        "train.device=cpu",
        "train.precision=fp32",
        "train.max_steps=4",
        "train.max_tokens=256",
        "train.valid_bleu=false",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in (run / "train.log").read_text()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["step"] == 4
