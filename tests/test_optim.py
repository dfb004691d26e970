import math

import pytest
import torch
from torch import nn

from mt.optim import build_optimizer, build_scheduler, inverse_sqrt, linear_decay, param_groups


def test_inverse_sqrt_warms_up_linearly_then_decays():
    f = inverse_sqrt(100)
    assert f(1) == pytest.approx(0.01)
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(1.0)
    assert f(400) == pytest.approx(0.5)
    assert f(10_000) == pytest.approx(math.sqrt(100 / 10_000))


def test_no_weight_decay_on_norms_biases_embeddings():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4  # embedding, linear bias, norm weight and bias


def test_scheduler_drives_the_optimizer_lr():
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, 1e-3, (0.9, 0.98), 1e-8, 0.0, torch.device("cpu"))
    sched = build_scheduler(opt, warmup_steps=4)
    lrs = []
    for _ in range(6):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # after k scheduler steps the lr is peak * min(k / warmup, sqrt(warmup / k))
    assert lrs[:5] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3 * math.sqrt(4 / 5)])


def test_linear_schedule_warms_up_then_reaches_zero_at_the_end():
    f = linear_decay(10, 110)
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == 0.0 and f(200) == 0.0


def test_linear_schedule_with_a_time_budget_decays_over_the_steps_that_fit():
    elapsed = [0.0]
    f = linear_decay(10, 1000, total_seconds=100.0, clock=lambda: elapsed[0])
    elapsed[0] = 50.0  # 60 steps in 50 s: 120 steps fit in 100 s, far fewer than 1000
    assert f(60) == pytest.approx((120 - 60) / (120 - 10))
    elapsed[0] = 8.0  # at the end of warmup the decay starts from 1, whatever the pace
    assert f(10) == pytest.approx(1.0)
    elapsed[0] = 100.0  # the time is up: zero
    assert f(90) == 0.0
    elapsed[0] = 1.0  # a fast pace: 1000 * 100 steps would fit, so max_steps decides
    assert f(10 + 495) == pytest.approx(0.5)
    assert linear_decay(10, 0)(500) == 1.0  # no budget at all: constant after warmup


def test_time_budgeted_run_ends_near_zero_learning_rate(prepared_dir, tmp_path):
    from mt.checkpoint import load_checkpoint
    from mt.train import run_train
    from tests.conftest import train_config

    cfg = train_config(
        prepared_dir, tmp_path / "r", "train.max_steps=0", "train.max_minutes=0.04",
        "train.schedule=linear", "train.warmup_steps=0", "train.lr=1e-3",
        "train.valid_every=0", "train.valid_bleu=false",
    )  # fmt: skip
    results = run_train(cfg)
    assert results["stop_reason"] == "reached train.max_minutes=0.04"
    assert results["step"] > 5
    lr = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    # the last update used the pace measured one step earlier: at most a step or two of lr left
    assert 0.0 <= lr[0]["lr"] < 1e-3 * 3 / results["step"]


@pytest.mark.parametrize(
    ("overrides", "ok"),
    [
        (["train.max_steps=0", "train.max_minutes=5"], True),  # the time budget alone
        (["train.max_steps=0", "train.max_minutes=0"], False),  # no budget to decay over
        (["train.max_steps=3", "train.max_minutes=5"], False),  # ends inside warmup
    ],
)
def test_linear_schedule_needs_a_budget_beyond_warmup(prepared_dir, tmp_path, overrides, ok):
    from mt.config import ConfigError, validate_train
    from tests.conftest import train_config

    cfg = train_config(
        prepared_dir, tmp_path / "r", "train.schedule=linear", "train.warmup_steps=4", *overrides
    )
    if ok:
        validate_train(cfg)
    else:
        with pytest.raises(ConfigError, match="train.schedule=linear"):
            validate_train(cfg)
