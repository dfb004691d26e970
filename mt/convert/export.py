"""mt export: the stage that writes a run as a CTranslate2 or Hugging Face folder.

`export` stages the whole folder (the format's files plus `mt_export.json`, the provenance)
beside `out_dir`, and swaps it in only when complete: a fault leaves what was there untouched.
The formats themselves are `mt.convert.ctranslate2` and `mt.convert.huggingface`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from mt import __version__
from mt.config import ExportConfig
from mt.convert.ctranslate2 import write_ctranslate2
from mt.convert.huggingface import write_huggingface
from mt.convert.source import Source, load_source
from mt.errors import MTError
from mt.files import check_parents, fault, is_write_fault, unchanged

log = logging.getLogger("mt.export")

FORMATS = ("ctranslate2", "huggingface")
EXPORT_INFO = "mt_export.json"


def export_info(source: Source, fmt: str, quantization: str) -> dict[str, Any]:
    """The contents of `mt_export.json`: mt's version, the format, the run and its scores."""
    return {
        "mt_version": __version__,
        "format": fmt,
        "quantization": quantization,
        "run_dir": str(source.run.root.resolve()),
        "checkpoint": str(source.checkpoint.resolve()),
        "checkpoint_sha256": source.checkpoint_sha256,
        "normalize": source.normalize,
        "model_args": source.model_args,
        "results": source.results(),
    }


def export(source: Source, out_dir: Path, fmt: str, quantization: str = "none") -> Path:
    """Write the export into a temp folder beside `out_dir`, then move it into place."""
    if fmt not in FORMATS:
        raise MTError(f"format={fmt!r} is not one of {', '.join(FORMATS)}.")
    if fmt == "huggingface" and quantization != "none":
        raise MTError("quantization applies to format=ctranslate2 only.")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
            _stage_and_swap(source, out_dir, Path(tmp), fmt, quantization)
    except (OSError, RuntimeError) as exc:
        if not is_write_fault(exc):
            raise
        raise fault(exc, out_dir, unchanged(out_dir)) from None
    return out_dir


def _stage_and_swap(source: Source, out_dir: Path, tmp: Path, fmt: str, quantization: str) -> None:
    """Write the export in `tmp`, then swap it with `out_dir`: the old export is removed only
    once the new one is in place."""
    staged = tmp / "export"
    if fmt == "ctranslate2":
        write_ctranslate2(source, staged, quantization)
    else:
        staged.mkdir()
        write_huggingface(source, staged)
    info = json.dumps(export_info(source, fmt, quantization), indent=2)
    (staged / EXPORT_INFO).write_text(info + "\n", encoding="utf-8")
    if out_dir.exists():
        out_dir.rename(tmp / "previous")  # removed with tmp
    staged.rename(out_dir)


def run_export(cfg: ExportConfig) -> Path:
    """`mt export`: refuse to replace a folder that is not an earlier export, then export."""
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise MTError(f"out_dir {out} is a file; name a folder (new, or an earlier export).")
    check_parents(out, "out_dir")
    if out.exists() and any(out.iterdir()) and not (out / EXPORT_INFO).is_file():
        raise MTError(f"out_dir {out} holds files that are not an mt export; choose another.")
    if out.exists() and not cfg.force and any(out.iterdir()):
        raise MTError(f"out_dir {out} holds an earlier export; add force=true to replace it.")
    source = load_source(cfg.run_dir, cfg.checkpoint)
    if "," in source.direction:
        raise MTError(
            f"data.directions: {cfg.run_dir} is multilingual ({source.direction}) and cannot be "
            "exported: its sources start with a language tag that no exported tokenizer adds. "
            "Translate it with `mt translate decode.tgt_lang=...` (or engine=ctranslate2)."
        )
    export(source, out, cfg.format, cfg.quantization)
    log.info("exported %s (%s) to %s", source.checkpoint, cfg.format, out)
    return out
