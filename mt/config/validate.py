"""Validation of composed configs: one `validate_*` per stage or group, each raising
`ConfigError` that names the first key whose value makes no sense."""

from __future__ import annotations

import math

from mt.config.bounds import (
    BOOTSTRAP_BOUND,
    CLEAN_BOUNDS,
    DECODE_BOUNDS,
    MODEL_BOUNDS,
    PORT_BOUND,
    PREPARE_BOUNDS,
    SERVE_BOUNDS,
    SPM_BOUNDS,
    THREADS_BOUND,
    TRAIN_BOUNDS,
    Bound,
    ConfigError,
    check_bounds,
    check_list,
    check_value,
    format_number,
)
from mt.config.decode import DecodeConfig, EvalConfig, TranslateConfig
from mt.config.deploy import ServeConfig
from mt.config.prepare import PrepareConfig
from mt.config.store import fallback_model
from mt.config.train import ModelConfig, TrainConfig

NORMALIZATION_FORMS = ("NFC", "NFKC", "NFD", "NFKD", "none")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}.")


def validate_prepare(cfg: PrepareConfig) -> None:
    """Raise ConfigError naming the first key whose value makes no sense."""
    data, clean, spm = cfg.data, cfg.clean, cfg.spm
    if data.hub_id is None and data.path is None:
        raise ConfigError("set data.path (a folder of local files) or data.hub_id (a dataset id).")
    if data.src == data.tgt:
        raise ConfigError(f"data.src and data.tgt are both {data.src!r}; pick two languages.")
    targets = [direction_pair(d)[1] for d in data.directions]
    if len(set(targets)) != len(targets):
        raise ConfigError(
            f"data.directions={list(data.directions)} names a target language twice; a "
            "multilingual model tells its directions apart by the target's tag."
        )
    _check_choice("data.format", data.format, ("auto", "text", "tsv", "jsonl"))
    _check_choice("clean.normalize", clean.normalize, NORMALIZATION_FORMS)
    _check_choice("spm.model_type", spm.model_type, ("unigram", "bpe"))
    check_bounds(clean, CLEAN_BOUNDS, "clean")
    check_bounds(spm, SPM_BOUNDS, "spm")
    check_bounds(cfg, PREPARE_BOUNDS)
    if spm.vocab_size < 8 + len(spm.user_defined_symbols):
        raise ConfigError(f"spm.vocab_size={spm.vocab_size} is too small.")
    if data.tsv_columns is not None and sorted(data.tsv_columns) != sorted({*data.tsv_columns}):
        raise ConfigError(f"data.tsv_columns={data.tsv_columns} names a language twice.")


def direction_pair(direction: str) -> tuple[str, str]:
    """ "en-de" -> ("en", "de"); ConfigError for anything else."""
    src, sep, tgt = str(direction).partition("-")
    if not (sep and src and tgt) or "-" in tgt or src == tgt:
        raise ConfigError(
            f"data.directions: {direction!r} is not a direction like en-de (two different "
            "language codes joined by '-')."
        )
    return src, tgt


def _check_positions(model: ModelConfig) -> None:
    """The keys that go with model.positions."""
    if model.positions == "rope" and (model.d_model // model.n_heads) % 2:
        raise ConfigError(
            f"model.positions=rope needs an even head dimension, not "
            f"model.d_model / model.n_heads = {model.d_model // model.n_heads}."
        )
    k = model.max_relative_positions
    if model.positions == "relative" and k <= 0:
        raise ConfigError(
            f"model.positions=relative needs model.max_relative_positions > 0, not {k}."
        )
    if model.positions != "relative" and k != 0:
        raise ConfigError(
            f"model.max_relative_positions={k} is used only with model.positions=relative."
        )


def validate_model(model: ModelConfig) -> None:
    """Raise ConfigError naming the first model key whose value makes no sense."""
    check_bounds(model, MODEL_BOUNDS, "model")
    if model.d_model % model.n_heads:
        raise ConfigError(
            f"model.d_model={model.d_model} is not divisible by model.n_heads={model.n_heads}."
        )
    _check_choice("model.activation", model.activation, ("relu", "gelu", "swish"))
    _check_choice("model.sinusoid", model.sinusoid, ("vaswani", "marian", "fairseq"))
    _check_choice("model.norm", model.norm, ("pre", "post"))
    _check_choice("model.positions", model.positions, ("sinusoidal", "learned", "rope", "relative"))
    _check_positions(model)


def validate_train(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first key of a train config that makes no sense."""
    validate_model(cfg.model)
    t = cfg.train
    check_bounds(t, TRAIN_BOUNDS, "train")
    check_list("train.betas", t.betas, Bound(0.0, 1.0, open_high=True))
    check_list("train.tune_beams", t.tune_beams, DECODE_BOUNDS["beam"])
    check_list("train.tune_lenpens", t.tune_lenpens, DECODE_BOUNDS["lenpen"])
    if t.tune_decoding and not (t.tune_beams and t.tune_lenpens):
        raise ConfigError(
            "train.tune_decoding=true needs at least one train.tune_beams and one "
            "train.tune_lenpens value (or set train.tune_decoding=false)."
        )
    _check_choice("train.precision", t.precision, ("auto", "bf16", "fp16", "fp32"))
    _check_choice("train.device", t.device, ("auto", "cpu", "cuda"))
    _check_choice("train.schedule", t.schedule, ("inverse_sqrt", "linear"))
    too_short = 0 < t.max_steps <= t.warmup_steps
    unbounded = t.max_steps <= 0 and t.max_minutes <= 0
    if t.schedule == "linear" and (too_short or unbounded):
        raise ConfigError(
            f"train.schedule=linear decays to 0 at train.max_steps, which must exceed "
            f"train.warmup_steps={t.warmup_steps} (got {t.max_steps}), or by train.max_minutes."
        )
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas={t.betas} must hold two numbers.")
    if t.fallback_model and cfg.init_from:
        raise ConfigError(
            f"train.fallback_model={t.fallback_model} cannot go with init_from: a fine-tune keeps "
            "the init run's model."
        )
    if t.fallback_model:
        if t.max_minutes <= 0 or t.fallback_below_steps <= 0:
            raise ConfigError(
                f"train.fallback_model={t.fallback_model} needs train.max_minutes and "
                "train.fallback_below_steps above 0: it trains the fallback when the model would "
                "make fewer than that many updates in that time."
            )
        validate_model(fallback_model(cfg.model, t.fallback_model))


def validate_decode(decode: DecodeConfig) -> None:
    """Raise ConfigError naming the first decode key whose value makes no sense."""
    if decode.alignment_layer < -1:
        raise ConfigError(
            f"decode.alignment_layer={format_number(decode.alignment_layer)} must be -1 (the last "
            "layer) or a layer index from 0."
        )
    check_bounds(decode, DECODE_BOUNDS, "decode", decode.allow_large)
    if decode.beam is not None and decode.nbest > decode.beam:
        raise ConfigError(f"decode.nbest={decode.nbest} exceeds decode.beam={decode.beam}.")
    if int(decode.max_len_a + decode.max_len_b) < 1:  # the cap of a one-token source
        raise ConfigError(
            f"decode.max_len_a={format_number(decode.max_len_a)} and "
            f"decode.max_len_b={format_number(decode.max_len_b)} allow no output for a one-token "
            "source (its output is cut to max_len_a + max_len_b tokens); raise one of them."
        )
    if decode.ensemble_weights is not None:
        check_list("decode.ensemble_weights", decode.ensemble_weights, Bound(0.0, math.inf))
        if sum(decode.ensemble_weights) <= 0:
            raise ConfigError(
                f"decode.ensemble_weights={decode.ensemble_weights} must have a weight above 0."
            )
    _check_choice("decode.alignment_unit", decode.alignment_unit, ("piece", "word"))
    if decode.constraints is not None and decode.sampling:
        raise ConfigError("decode.constraints needs beam search, not decode.sampling=true.")


def validate_serve(cfg: ServeConfig) -> None:
    """Raise ConfigError naming the first key of a serve config that makes no sense."""
    validate_decode(cfg.decode)
    s = cfg.serve
    check_bounds(s, SERVE_BOUNDS, "serve", s.allow_large)
    check_value("port", cfg.port, PORT_BOUND)
    check_value("threads", cfg.threads, THREADS_BOUND)
    if cfg.decode.beam is not None and cfg.decode.beam > s.max_beam:
        raise ConfigError(f"decode.beam={cfg.decode.beam} exceeds serve.max_beam={s.max_beam}.")
    if cfg.decode.sampling:
        raise ConfigError("decode.sampling=true is not supported by mt serve; use beam search.")


def validate_translate(cfg: TranslateConfig) -> None:
    """Raise ConfigError naming the first key of a translate config that makes no sense."""
    validate_decode(cfg.decode)
    check_value("threads", cfg.threads, THREADS_BOUND)


def validate_eval(cfg: EvalConfig) -> None:
    """Raise ConfigError naming the first key of an eval config that makes no sense."""
    validate_decode(cfg.decode)
    check_value("bootstrap_samples", cfg.bootstrap_samples, BOOTSTRAP_BOUND)
    check_value("threads", cfg.threads, THREADS_BOUND)
