"""The numeric limits of every option: `Bound`, the per-group tables of bounds, `check_value`
and the checks built on it, and `ConfigError`, which every config check raises."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A config value that type-checks but makes no sense; the message names the key."""


INT32_MAX = 2**31 - 1
"""The largest value of an integer option without a tighter bound (C ints: CTranslate2, torch)."""
BYTES_MAX = 2**63 - 1
"""The largest byte count (a signed 64-bit file offset)."""
SEED_MAX = 2**32 - 1
"""Seeds go to NumPy, torch and CTranslate2, whose seeds are unsigned 32-bit integers."""
THREADS_MAX = 4096


@dataclass(frozen=True)
class Bound:
    """The values a numeric option accepts: low <= value <= high, finite.

    `open_low` / `open_high` exclude the end. A value above `large` can exhaust memory: it is
    refused unless the group's `allow_large` is set.
    """

    low: float
    high: float = INT32_MAX
    open_low: bool = False
    open_high: bool = False
    large: float | None = None


def format_number(x: float) -> str:
    """A bound or value as the user would type it: 10 not 10.0, 1e+308, nan."""
    if isinstance(x, int) and x.bit_length() > 64:  # str() refuses ints of over 4300 digits
        return f"{'-' if x < 0 else ''}<a {int(x.bit_length() * math.log10(2)) + 1}-digit number>"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


def _interval(bound: Bound, too_low: bool = False) -> str:
    """`in [0, 10]`; `at least 1` where the upper end is no real limit and not the problem."""
    if bound.high == math.inf or (too_low and bound.high >= INT32_MAX):
        return f"{'above' if bound.open_low else 'at least'} {format_number(bound.low)}"
    left, right = "(" if bound.open_low else "[", ")" if bound.open_high else "]"
    return f"in {left}{format_number(bound.low)}, {format_number(bound.high)}{right}"


def _within(value: float, bound: Bound) -> bool:
    """Whether `value` is a finite number within `bound` (`large` aside)."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    above_low = value > bound.low if bound.open_low else value >= bound.low
    return above_low and (value < bound.high if bound.open_high else value <= bound.high)


def check_value(key: str, value: float, bound: Bound, large_key: str | None = None) -> None:
    """Raise ConfigError, in one sentence naming `key`, unless `value` is within `bound`.

    Args:
        key: The option as typed on the command line, e.g. `decode.lenpen`.
        value: Its value (an int or a float; NaN and infinities are refused).
        bound: The values it accepts.
        large_key: The key that allows values above `bound.large` (e.g. `decode.allow_large`);
            None when they are allowed.
    """
    shown = format_number(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={shown} must be a finite number.")
    if not _within(value, bound):
        raise ConfigError(f"{key}={shown} must be {_interval(bound, value <= bound.low)}.")
    if large_key and bound.large is not None and value > bound.large:
        raise ConfigError(
            f"{key}={shown} is above {bound.large:,}, a size that can exhaust memory; set "
            f"{large_key}=true to use it anyway."
        )


def check_bounds(
    obj: Any, bounds: dict[str, Bound], group: str = "", allow_large: bool = True
) -> None:
    """check_value for every field of `obj` named in `bounds`; keys are `group.field`.

    Without `allow_large`, values above a bound's `large` are refused, naming `group.allow_large`.
    """
    prefix = f"{group}." if group else ""
    large_key = None if allow_large else f"{group}.allow_large"
    for name, bound in bounds.items():
        value = getattr(obj, name)
        if value is not None:  # an unset optional value (e.g. decode.beam: the run's own)
            check_value(prefix + name, value, bound, large_key)


def check_list(key: str, values: list[float], bound: Bound) -> None:
    """Every number of a list option within `bound`; the message shows the whole list."""
    if not all(_within(value, bound) for value in values):
        shown = "[" + ", ".join(format_number(value) for value in values) + "]"
        raise ConfigError(f"{key}={shown} must hold finite numbers {_interval(bound)}.")


CLEAN_BOUNDS = {
    "max_words": Bound(1),
    "max_ratio": Bound(0.0, math.inf, open_low=True),
    "ratio_min_words": Bound(0),
}
SPM_BOUNDS = {
    "vocab_size": Bound(8),
    "character_coverage": Bound(0.0, 1.0, open_low=True),
    "input_sentence_size": Bound(1),
}
PREPARE_BOUNDS = {"workers": Bound(0, THREADS_MAX), "seed": Bound(0, SEED_MAX)}
MODEL_BOUNDS = {
    "d_model": Bound(1, 65_536),
    "n_heads": Bound(1, 65_536),
    "n_layers_enc": Bound(1, 1024),
    "n_layers_dec": Bound(1, 1024),
    "d_ff": Bound(1, 1_048_576),
    "dropout": Bound(0.0, 1.0, open_high=True),
    "attn_dropout": Bound(0.0, 1.0, open_high=True),
    "act_dropout": Bound(0.0, 1.0, open_high=True),
    "max_positions": Bound(1, 1_048_576),
    "max_relative_positions": Bound(0, 1_048_576),
    "attn_window": Bound(0),
    "position_offset": Bound(0, 1_048_576),
}
TRAIN_BOUNDS = {
    "max_tokens": Bound(8),  # fewer cannot hold a pair of sentences with bos and eos
    "update_freq": Bound(1),
    "max_steps": Bound(0),
    "max_epochs": Bound(0),
    "max_minutes": Bound(0.0, 1e7),  # minutes * 60 stays an exact float; ~19 years
    "lr": Bound(0.0, 1.0, open_low=True),  # AdamW steps by ~lr per weight: above 1 diverges
    "warmup_steps": Bound(0),
    "eps": Bound(0.0, 1.0),
    "weight_decay": Bound(0.0, 1.0),  # lr * weight_decay >= 1 would flip the weights' sign
    "clip_norm": Bound(0.0, math.inf),
    "label_smoothing": Bound(0.0, 1.0, open_high=True),
    "seed": Bound(0, SEED_MAX),
    "valid_every": Bound(0),
    "patience": Bound(0),
    "keep_last": Bound(0),
    "average_last": Bound(0),
    "log_every": Bound(1),  # a modulus
    "threads": Bound(0, THREADS_MAX),
    "dist_timeout": Bound(1.0, 86_400.0),  # one second to one day
    "max_bad_steps": Bound(1),
    "fallback_below_steps": Bound(0),
}
DECODE_BOUNDS = {
    "beam": Bound(1, large=1000),
    "nbest": Bound(1, large=1000),
    "lenpen": Bound(0.0, 10.0),  # ((5 + len) / 6) ** lenpen overflows near 140 (1,000 tokens)
    "max_len_a": Bound(0.0, 100.0),  # a * src_len past 2**63 wraps the length cap to 0
    "max_len_b": Bound(0, 1_000_000),
    "max_tokens": Bound(1, large=1_000_000),
    "batch_size": Bound(1, large=100_000),
    "buffer_lines": Bound(1, large=10_000_000),
    "max_line_bytes": Bound(1, BYTES_MAX, large=100_000_000),
    "inter_threads": Bound(1, THREADS_MAX),
    "topk": Bound(0),
    "topp": Bound(0.0, 1.0, open_low=True),
    "temperature": Bound(0.001, 1000.0),  # log-probs / temperature stay finite
    "seed": Bound(0, SEED_MAX),
    "no_repeat_ngram": Bound(0),
    "alignment_layer": Bound(-1),  # the model's depth bounds it from above, checked at load
    "attention_lines": Bound(0),
    "shortlist": Bound(0),
    "shortlist_per_source": Bound(0, 256),  # mt.decode.shortlist.MAX_DEPTH
}
SERVE_BOUNDS = {
    "batch_window_ms": Bound(0.0, 60_000.0),
    "max_batch_sentences": Bound(1, large=10_000),
    "max_chars": Bound(1, large=1_000_000),
    "max_sentences": Bound(1, large=10_000),
    "max_beam": Bound(1, large=1000),
    "timeout_s": Bound(0.0, 86_400.0, open_low=True),
    "max_queue": Bound(1, large=1_000_000),
    "max_body_bytes": Bound(1, BYTES_MAX, large=100_000_000),
    "batch_cost": Bound(1, large=10_000_000),
    "max_request_cost": Bound(1, large=100_000_000),
    "read_timeout_s": Bound(0.0, 3600.0, open_low=True),
    "idle_timeout_s": Bound(0.0, 3600.0, open_low=True),
    "shutdown_s": Bound(0.0, 600.0),
}
PORT_BOUND = Bound(0, 65_535)
THREADS_BOUND = Bound(0, THREADS_MAX)
BOOTSTRAP_BOUND = Bound(1, 1_000_000)
"""eval's bootstrap_samples: p-values resolve to 1e-6 by then; each resample rescores a corpus."""
