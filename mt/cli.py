"""The `mt` command: picks configs/<stage>.yaml, composes it with Hydra, calls one run_* function.

Expected mistakes (a bad key, a missing file, a malformed line) end with one sentence on stderr
and exit status 2; no traceback. Flags such as `--help`, `--cfg job` or `--info` go to Hydra's
own entry point, so they behave as Hydra users expect.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mt import __version__
from mt.config import CONFIG_DIR, ConfigError, init_from_overrides, register_configs
from mt.errors import MTError, Stopped
from mt.files import describe_os_error

# stage -> (module, function, one-line help)
STAGES: dict[str, tuple[str, str, str]] = {
    "prepare": ("mt.prepare", "run_prepare", "clean parallel text, train SentencePiece, binarize"),
    "train": ("mt.train", "run_train", "train a Transformer on a prepared data directory"),
    "translate": (
        "mt.translate",
        "run_translate",
        "translate text files or stdin with beam search",
    ),
    "eval": ("mt.evaluate", "run_eval", "score translations with sacreBLEU (BLEU, chrF, TER)"),
    "serve": ("mt.serve.stage", "run_serve", "serve a trained run over HTTP (POST /translate)"),
    "export": ("mt.convert.export", "run_export", "export a run to CTranslate2 or Hugging Face"),
    "import": (
        "mt.convert.importer",
        "run_import",
        "import a Hugging Face Marian (OPUS-MT) or M2M100 (NLLB) model as a run",
    ),
}

EXIT_USAGE = 2

log = logging.getLogger("mt")


def _usage() -> str:
    lines = [
        "usage: mt <stage> [key=value ...] [--config-dir DIR] [--help] [--cfg job]",
        "       mt --version",
        "",
        "stages:",
    ]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in STAGES.items()]
    lines += ["", "Run `mt <stage> --help` for a stage's options (Hydra overrides)."]
    return "\n".join(lines)


def _fail(stage: str, message: str) -> None:
    print(f"mt {stage}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _config_sentence(exc: BaseException) -> str:
    """Turn a Hydra/OmegaConf exception into one sentence that names the key."""
    cause = exc.__cause__ or exc.__context__ or exc
    full_key = getattr(cause, "full_key", None) or getattr(exc, "full_key", None)
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if full_key and "missing mandatory value" in detail.lower():
        return f"config key '{full_key}' must be set ({full_key}=...)."
    if full_key and " not in " in detail:
        return f"unknown config key '{full_key}' (`--cfg job` lists the valid keys)."
    if full_key:
        return f"bad value for config key '{full_key}': {detail}."
    if "Could not find" in detail:
        lines = str(exc).splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("Available")), None)
        options = []
        if start is not None:
            options = [line.strip() for line in lines[start + 1 :] if line.startswith("\t")]
            options = [o for o in options if "=" not in o]
        suffix = f"; available: {', '.join(options)}" if options else ""
        what = detail.split("': ", 1)[-1]
        return f"{what}{suffix}."
    return detail


def _merge_repeated(overrides: list[str]) -> list[str]:
    """`ref=a ref=b` -> `ref=['a','b']`: a key given twice collects its values into a list.

    A config group given twice (`data=local ... data=wmt14_en_de`) is a choice, not a list:
    the last one wins, as for any later override.
    """
    keys = [arg.split("=", 1)[0] for arg in overrides if "=" in arg and not arg.startswith("-")]
    groups = {key for key in keys if (CONFIG_DIR / key).is_dir()}
    if groups:
        key_of = [arg.split("=", 1)[0] for arg in overrides]
        last = {key: i for i, key in enumerate(key_of) if key in groups}
        overrides = [a for i, a in enumerate(overrides) if last.get(key_of[i], i) == i]
        keys = [key for key in keys if key not in groups]
    repeated = {key for key in keys if keys.count(key) > 1}
    if not repeated:
        return overrides
    merged: dict[str, list[str]] = {key: [] for key in repeated}
    out: list[str] = []
    for arg in overrides:
        key, _, value = arg.partition("=")
        if key in repeated:
            if not merged[key]:
                out.append(key)  # placeholder keeps the first position
            merged[key].append(value)
        else:
            out.append(arg)
    quote = lambda v: "'" + v.replace("'", "\\'") + "'"  # noqa: E731
    return [f"{a}=[{','.join(map(quote, merged[a]))}]" if a in merged else a for a in out]


def _compose(stage: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=stage, overrides=overrides)
    return OmegaConf.to_object(cfg)


def _stop_on_sigterm(signum: int, _frame: Any) -> None:
    raise Stopped("stopped by SIGTERM.", 128 + signum)


def _run_stage(stage: str, run: Callable[[Any], Any], cfg: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so outputs in progress are abandoned as they should be
    # (mt train and mt serve install their own handlers over this one)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        run(cfg)
    except (MTError, ConfigError) as exc:
        _fail(stage, str(exc))
    except OSError as exc:  # a file-system fault no writer above turned into a sentence
        _fail(stage, describe_os_error(exc))
    except Stopped as exc:
        print(f"mt {stage}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print(f"mt {stage}: interrupted.", file=sys.stderr)
        sys.exit(130)


def _hydra_entry(stage: str, run: Callable[[Any], Any], args: list[str]) -> None:
    """Hand flags (--help, --cfg, --info, -m ...) to Hydra's own entry point."""
    import hydra

    @hydra.main(config_path=str(CONFIG_DIR), config_name=stage, version_base=None)
    def _task(cfg: Any) -> None:
        _run_stage(stage, run, OmegaConf.to_object(cfg))

    sys.argv = [f"mt {stage}", *args]
    _task()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `mt` console script."""
    try:
        _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # `mt translate ... | head`: the reader left, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


def _take_config_dirs(stage: str, args: list[str]) -> tuple[list[str], list[str]]:
    """Split `--config-dir DIR` / `--config-dir=DIR` / `-cd DIR` off the arguments.

    Returns the other arguments and the absolute folders, which join Hydra's search path after
    mt's own configs: a user's `experiment/mine.yaml` there is `experiment=mine`.
    """
    rest, dirs = [], []
    it = iter(args)
    for arg in it:
        if arg in ("--config-dir", "-cd"):
            value = next(it, None)
            if value is None:
                _fail(stage, f"{arg} needs a folder: {arg} DIR.")
        elif arg.startswith("--config-dir="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
            continue
        folder = Path(value).expanduser().resolve()
        if not folder.is_dir():
            _fail(stage, f"--config-dir {value} is not a folder.")
        dirs.append(folder)
    return rest, dirs


def _main(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        sys.exit(0 if args else EXIT_USAGE)
    if args[0] in ("-V", "--version"):
        print(f"mt {__version__}")
        return
    stage, rest = args[0], args[1:]
    if stage not in STAGES:
        _fail(stage, f"unknown stage '{stage}'; choose one of {', '.join(STAGES)}.")
    module, func, _ = STAGES[stage]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    register_configs()
    run = getattr(importlib.import_module(module), func)
    rest, config_dirs = _take_config_dirs(stage, _merge_repeated(rest))
    if config_dirs:  # both entry points below honour Hydra's search-path override
        rest = [f"hydra.searchpath=[{','.join(f'file://{d}' for d in config_dirs)}]", *rest]
    if stage == "train":  # init_from: the init run's model, unless the user's overrides say else
        try:
            rest = [*init_from_overrides(rest), *rest]
        except ConfigError as exc:
            _fail(stage, str(exc))
    if any(arg.startswith("-") for arg in rest):
        _hydra_entry(stage, run, rest)
        return
    try:
        cfg = _compose(stage, rest)
    except (OmegaConfBaseException, ConfigError) as exc:
        _fail(stage, _config_sentence(exc))
    except Exception as exc:  # Hydra's own exceptions (composition, override grammar)
        if type(exc).__module__.startswith(("hydra", "omegaconf")):
            _fail(stage, _config_sentence(exc))
        raise
    _run_stage(stage, run, cfg)
