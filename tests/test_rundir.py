"""The run folder's checks: which recorded model arguments build the configured model."""

import dataclasses

from mt.config import ModelConfig
from mt.rundir import same_model


def test_a_checkpoint_from_before_an_option_existed_builds_the_same_model() -> None:
    now = {**dataclasses.asdict(ModelConfig()), "src_vocab_size": 40, "tgt_vocab_size": 40}
    older = {k: v for k, v in now.items() if k not in ("sinusoid", "output_bias")}
    assert same_model(older, now)
    assert not same_model({**older, "d_model": 256}, now)
    assert not same_model(older, {**now, "sinusoid": "marian"})  # the older one had vaswani
    assert not same_model(None, now)
