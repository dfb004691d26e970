"""Numeric options are checked where they enter: a bad value is one sentence naming the key.

The numeric fields come from the dataclasses themselves, so a new option is covered without
editing this file; each is driven with arbitrary values (NaN, infinities, huge, negative).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mt.cli import main
from mt.config import (
    CleanConfig,
    ConfigError,
    DataConfig,
    DecodeConfig,
    EvalConfig,
    ModelConfig,
    PrepareConfig,
    ServeConfig,
    ServeOptions,
    SpmConfig,
    TrainConfig,
    TrainLoopConfig,
    TranslateConfig,
    validate_decode,
    validate_eval,
    validate_model,
    validate_prepare,
    validate_serve,
    validate_train,
    validate_translate,
)
from mt.decode.run import tuned_decoding
from mt.decode.search import Limits, length_penalty
from tests.test_cli import assert_clean_error, mt

Build = Callable[[str, Any], None]
"""Validate a default config whose one field `key` is set to a value."""


def _decode(key: str, value: Any) -> None:
    validate_decode(DecodeConfig(**{key: value}))


def _serve_options(key: str, value: Any) -> None:
    validate_serve(ServeConfig(run_dir="r", serve=ServeOptions(**{key: value})))


def _serve(key: str, value: Any) -> None:
    validate_serve(ServeConfig(run_dir="r", **{key: value}))


def _train(key: str, value: Any) -> None:
    validate_train(TrainConfig(train=TrainLoopConfig(**{key: value})))


def _model(key: str, value: Any) -> None:
    validate_model(ModelConfig(**{key: value}))


def _translate(key: str, value: Any) -> None:
    validate_translate(TranslateConfig(run_dir="r", **{key: value}))


def _eval(key: str, value: Any) -> None:
    validate_eval(EvalConfig(**{key: value}))


def _clean(key: str, value: Any) -> None:
    validate_prepare(PrepareConfig(data=DataConfig(path="p"), clean=CleanConfig(**{key: value})))


def _spm(key: str, value: Any) -> None:
    validate_prepare(PrepareConfig(data=DataConfig(path="p"), spm=SpmConfig(**{key: value})))


def _prepare(key: str, value: Any) -> None:
    validate_prepare(PrepareConfig(data=DataConfig(path="p"), **{key: value}))


# (dataclass, the prefix of its keys on the command line, how a value of it is validated)
GROUPS: list[tuple[type, str, Build]] = [
    (DecodeConfig, "decode.", _decode),
    (ServeOptions, "serve.", _serve_options),
    (ServeConfig, "", _serve),
    (TrainLoopConfig, "train.", _train),
    (ModelConfig, "model.", _model),
    (TranslateConfig, "", _translate),
    (EvalConfig, "", _eval),
    (CleanConfig, "clean.", _clean),
    (SpmConfig, "spm.", _spm),
    (PrepareConfig, "", _prepare),
]
NUMERIC = [  # optional numbers (decode.beam: None is the run's own) are numbers when set
    pytest.param(build, prefix + f.name, f.name, f.type.removesuffix(" | None"), id=prefix + f.name)
    for cls, prefix, build in GROUPS
    for f in fields(cls)
    if f.type.removesuffix(" | None") in ("int", "float")
]
FLOATS = [p for p in NUMERIC if p.values[3] == "float"]

SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0.0, -1.0, 11.0]
SPECIAL_INTS = [-(2**63), -5, -1, 0, 1, 2**31, 2**32, 2**63, 10**30]


def _values(kind: str) -> st.SearchStrategy:
    if kind == "float":
        return st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(), st.integers(-1000, 1000))
    return st.one_of(st.sampled_from(SPECIAL_INTS), st.integers())


def _outcome(build: Build, key: str, name: str, value: Any) -> str | None:
    """None when the value is accepted, else the ConfigError's message (checked here)."""
    try:
        build(name, value)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and message.endswith("."), message
        assert f"{key}=" in message, f"{message!r} does not name {key}"
        return message
    return None


def test_every_numeric_option_is_covered():
    keys = {p.values[1] for p in NUMERIC}
    assert {"decode.lenpen", "decode.max_line_bytes", "serve.timeout_s", "train.lr"} <= keys
    assert len(keys) > 60


@pytest.mark.parametrize(("build", "key", "name", "kind"), NUMERIC)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_is_valid_or_one_sentence_naming_the_key(data, build, key, name, kind):
    value = data.draw(_values(kind), label=key)
    message = _outcome(build, key, name, value)
    if message is None:  # what is accepted is finite and, but for a few keys, not negative
        assert not (isinstance(value, float) and not math.isfinite(value)), key
        assert value >= 0 or key == "decode.alignment_layer", f"{key}={value} was accepted"


@pytest.mark.parametrize(("build", "key", "name", "kind"), FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_refused_as_not_finite(build, key, name, kind, value):
    assert f"{key}={value} must be a finite number." == _outcome(build, key, name, value)


@pytest.mark.parametrize(("build", "key", "name", "kind"), NUMERIC)
def test_negative_values_are_refused(build, key, name, kind):
    assert _outcome(build, key, name, -2 if kind == "int" else -2.0) is not None


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("lenpen", 1e308, "must be in [0, 10]"),
        ("lenpen", 10.5, "must be in [0, 10]"),
        ("max_len_a", -1.0, "must be in [0, 100]"),
        ("max_len_b", -5, "decode.max_len_b=-5"),
        ("max_len_a", 1e308, "must be in [0, 100]"),
        ("alignment_layer", -2, "-1 (the last layer)"),
        ("seed", 2**32, "decode.seed=4294967296"),
        ("temperature", 0.0, "must be in [0.001, 1000]"),
        ("max_line_bytes", 0, "decode.max_line_bytes=0"),
    ],
)
def test_out_of_range_decode_values_are_refused(key, value, words):
    with pytest.raises(ConfigError, match=f"decode.{key}=") as caught:
        validate_decode(DecodeConfig(**{key: value}))
    assert words in str(caught.value)


def test_length_limits_that_leave_no_room_are_refused():
    with pytest.raises(ConfigError, match="decode.max_len_a=0 and decode.max_len_b=0 allow no"):
        validate_decode(DecodeConfig(max_len_a=0.0, max_len_b=0))
    validate_decode(DecodeConfig(max_len_a=0.0, max_len_b=1))
    validate_decode(DecodeConfig(max_len_a=1.0, max_len_b=0))


def test_alignment_layer_accepts_minus_one_and_layer_indices():
    for layer in (-1, 0, 5):
        validate_decode(DecodeConfig(alignment_layer=layer))


@pytest.mark.parametrize(
    ("build", "key", "value"),
    [
        (_decode, "beam", 5000),
        (_decode, "nbest", 5000),
        (_decode, "batch_size", 10**6),
        (_decode, "max_tokens", 10**8),
        (_decode, "buffer_lines", 10**9),
        (_decode, "max_line_bytes", 10**9),
        (_serve_options, "max_beam", 5000),
        (_serve_options, "max_body_bytes", 10**10),
        (_serve_options, "max_queue", 10**8),
    ],
)
def test_sizes_that_can_exhaust_memory_say_how_to_allow_them(build, key, value):
    group = "decode" if build is _decode else "serve"
    with pytest.raises(ConfigError) as caught:
        build(key, value)
    assert f"{group}.{key}={value}" in str(caught.value)
    assert f"{group}.allow_large=true" in str(caught.value)
    if build is _decode:  # the escape hatch lets it through
        extra = {"nbest": value} if key == "nbest" else {}
        validate_decode(DecodeConfig(**{"beam": value, **extra, key: value, "allow_large": True}))
    else:
        options = ServeOptions(**{key: value, "allow_large": True})
        validate_serve(ServeConfig(run_dir="r", serve=options))


def test_nbest_over_beam_names_both(tmp_path):
    with pytest.raises(ConfigError, match="decode.nbest=6 exceeds decode.beam=5"):
        validate_decode(DecodeConfig(beam=5, nbest=6))
    # an unset beam is the run's (here mt's default, 5), checked once it is known
    validate_decode(DecodeConfig(nbest=6))
    with pytest.raises(ConfigError, match="decode.nbest=6 exceeds decode.beam=5"):
        validate_decode(tuned_decoding(tmp_path, DecodeConfig(nbest=6)))


@pytest.mark.parametrize("weights", [[math.nan, 1.0], [1.0, math.inf], [-1.0, 2.0], [0.0, 0.0]])
def test_bad_ensemble_weights_name_the_key(weights):
    with pytest.raises(ConfigError, match="decode.ensemble_weights="):
        validate_decode(DecodeConfig(ensemble_weights=weights))


@pytest.mark.parametrize("betas", [[math.nan, 0.98], [0.9, 1.0], [-0.1, 0.9]])
def test_bad_betas_name_the_key(betas):
    with pytest.raises(ConfigError, match="train.betas="):
        validate_train(TrainConfig(train=TrainLoopConfig(betas=betas)))


@settings(max_examples=200, deadline=None)
@given(
    lenpen=st.floats(allow_nan=True, allow_infinity=True),
    a=st.floats(allow_nan=True, allow_infinity=True),
    b=st.integers(),
)
def test_accepted_length_settings_give_room_and_finite_scores(lenpen, a, b):
    try:
        validate_decode(DecodeConfig(lenpen=lenpen, max_len_a=a, max_len_b=b))
    except ConfigError:
        return
    limits = Limits(bos_id=2, eos_id=3, max_len_a=a, max_len_b=b, max_len=1023)
    caps = limits.caps(torch.tensor([1, 7, 1023]))
    assert caps.min().item() >= 1  # every source may have at least one output token
    assert math.isfinite(length_penalty(1024, lenpen)) and length_penalty(1024, lenpen) > 0


# ------------------------------------------------------------------ through the command line

BAD_DECODE = ["decode.lenpen=nan", "decode.lenpen=1e308", "decode.max_len_a=-1",
              "decode.max_len_b=-5"]  # fmt: skip


@pytest.mark.parametrize("override", BAD_DECODE)
def test_bad_decode_values_of_a_real_run_are_one_sentence(overfit_run, override):
    _, run, _ = overfit_run
    result = mt("translate", f"run_dir={run}", override, stdin="a man\n")
    assert_clean_error(result, override.split("=")[0] + "=")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["translate", "run_dir=nowhere", "decode.lenpen=nan"], "decode.lenpen=nan"),
        (["translate", "run_dir=nowhere", "decode.beam=100000"], "decode.allow_large=true"),
        (["translate", "run_dir=nowhere", "decode.alignment_layer=-3"], "alignment_layer=-3"),
        (["serve", "run_dir=nowhere", "serve.timeout_s=inf"], "serve.timeout_s=inf"),
        (["serve", "run_dir=nowhere", "serve.max_queue=0"], "serve.max_queue=0"),
        (["train", "data_dir=nowhere", "train.lr=nan"], "train.lr=nan"),
        (["train", "data_dir=nowhere", "train.seed=-1"], "train.seed=-1"),
        (["train", "data_dir=nowhere", "model.dropout=nan"], "model.dropout=nan"),
        (["eval", "hyp=[h.txt,h.txt]", "ref=h.txt", "bootstrap_samples=0"], "bootstrap_samples=0"),
    ],
)
def test_bad_values_exit_2_with_one_sentence(capsys, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)  # nothing is written where the tests run
    (tmp_path / "h.txt").write_text("a man\n", encoding="utf-8")
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0] and lines[0].endswith("."), lines[0]
