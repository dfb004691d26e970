"""A trained run loaded for decoding: `LoadedRun` (model, tokenizers, limits, languages),
`load_run` (one checkpoint, or several as an ensemble), `for_target` (a multilingual run's
target language), the files of a run that an output must never replace, and the search
settings tuned for the run (`tuned_decoding`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mt.checkpoint import load_checkpoint
from mt.config import DecodeConfig
from mt.decode.ensemble import Ensemble
from mt.errors import MTError
from mt.model import transformer
from mt.rundir import RunDir
from mt.tokenizer import AnyTokenizer, load_tokenizer


@dataclass
class LoadedRun:
    """A model ready for inference with its tokenizers and cleaning settings."""

    model: torch.nn.Module
    src_tok: AnyTokenizer
    tgt_tok: AnyTokenizer
    normalize_form: str
    max_len: int
    checkpoint: Path
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    """A multilingual run's target languages and their source tags ({} when bilingual)."""
    tgt: str = ""
    """A bilingual run's target language ("" when unknown)."""
    src_tag: int | None = None
    """Id every source starts with: the tag of decode.tgt_lang (see `for_target`), or an
    imported NLLB run's source language code."""
    tgt_tag: int | None = None
    """Id every output starts with (forced): an imported NLLB run's code of decode.tgt_lang."""
    tags_on: str = "source"
    """Where a multilingual run's tags go: "source" (mt's <2de>) or "target" (NLLB's codes,
    forced as the first output token)."""
    run_dir: Path | None = None
    """The run folder it was loaded from (decode.shortlist caches its table there)."""


def load_run(run_dir: Path, checkpoint: Any, device: torch.device) -> LoadedRun:
    """Rebuild the model from a checkpoint and check its vocabulary against the run's.

    `checkpoint` is a path, None (the run's pick), or a list of paths: an `Ensemble` of models
    of one vocabulary, equally weighted (`set_ensemble_weights` changes that).
    """
    run = RunDir(run_dir)
    paths = [run.pick_checkpoint(c) for c in as_list(checkpoint)] or [run.pick_checkpoint(None)]
    models, ckpts = [], []
    for path in paths:
        model, ckpt = _load_model(path, device)
        if ckpts and ckpt["vocab"] != ckpts[0]["vocab"]:
            raise MTError(
                f"{path} was trained with another vocabulary than {paths[0]}; an ensemble "
                "needs one vocabulary."
            )
        models.append(model)
        ckpts.append(ckpt)
    vocab = ckpts[0]["vocab"]
    tokenizers = {}
    for side in ("src", "tgt"):
        spm_path = run.spm(vocab["models"][side])
        if not spm_path.is_file():
            raise MTError(f"{spm_path} is missing: the run folder needs its SentencePiece model.")
        tok = load_tokenizer(spm_path)
        if tok.sha256() != vocab["sha256"][side]:
            raise MTError(f"{paths[0]} was trained with another vocabulary than {spm_path}.")
        tokenizers[side] = tok
    data = ckpts[0].get("data", {})
    src_code = data.get("src_tag")  # an NLLB run's source code (imported or fine-tuned)
    tgt_code = data.get("tgt_tag")  # a fine-tuned NLLB run's target code
    return LoadedRun(
        models[0] if len(models) == 1 else Ensemble(models).eval(),
        tokenizers["src"],
        tokenizers["tgt"],
        _normalize_form(ckpts[0]),
        min(c["model_args"]["max_positions"] for c in ckpts),
        paths[0],
        **_languages(ckpts[0]),
        src_tag=None if src_code is None else tokenizers["src"].piece_id(src_code),
        tgt_tag=None if tgt_code is None else tokenizers["tgt"].piece_id(tgt_code),
        run_dir=Path(run_dir),
    )


def _languages(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The tags of a multilingual checkpoint, or the target language of a bilingual one."""
    data = ckpt.get("data", {})
    if data.get("tags"):
        return {"tags": dict(data["tags"]), "tags_on": data.get("tags_on", "source")}
    direction = data.get("direction") or "{src}-{tgt}".format(**ckpt["config"]["data"])
    return {"tgt": direction.partition("-")[2]}


def for_target(run: LoadedRun, tgt_lang: str | None) -> LoadedRun:
    """The run set to translate into `tgt_lang` (decode.tgt_lang): a multilingual run needs
    one of its languages; a bilingual run takes its own target, or none."""
    if run.tags:
        languages = ", ".join(sorted(run.tags))
        if tgt_lang is None:
            raise MTError(
                f"{run.checkpoint} is multilingual (into {languages}): set decode.tgt_lang."
            )
        if tgt_lang not in run.tags:
            raise MTError(
                f"decode.tgt_lang={tgt_lang}: {run.checkpoint} translates into {languages} only."
            )
        if run.tags_on == "target":
            return dataclasses.replace(run, tgt_tag=run.tgt_tok.piece_id(run.tags[tgt_lang]))
        return dataclasses.replace(run, src_tag=run.src_tok.piece_id(run.tags[tgt_lang]))
    # a fine-tuned NLLB / M2M100 run answers to its language and to its code (deu_Latn)
    code = None if run.tgt_tag is None else run.tgt_tok.id_to_piece(run.tgt_tag)
    if tgt_lang is not None and run.tgt and tgt_lang not in (run.tgt, code):
        named = run.tgt if code is None else f"{run.tgt} ({code})"
        raise MTError(f"decode.tgt_lang={tgt_lang}: {run.checkpoint} translates into {named} only.")
    return run


def _load_model(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    ckpt = load_checkpoint(path)
    model = transformer(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def _normalize_form(ckpt: dict[str, Any]) -> str:
    """The Unicode form the training data was prepared with, which input must match.

    Checkpoints record it under "data"; older ones only have their train config's cleaning,
    which is right when `mt train data=...` prepared the data itself.
    """
    if "data" in ckpt:
        return str(ckpt["data"]["normalize"])
    return str(ckpt.get("config", {}).get("clean", {}).get("normalize", "NFC"))


def run_files(run: LoadedRun) -> list[Path]:
    """The files of a loaded run that an output must never replace."""
    files = [run.checkpoint, *run.src_tok.files(), *run.tgt_tok.files()]
    if run.run_dir is not None:
        files += [run.run_dir / "config.yaml", *run.run_dir.glob("checkpoints/*.pt")]
    return files


def as_list(value: Any) -> list[str]:
    """A path or a list of paths from a config value."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


DEFAULT_BEAM, DEFAULT_LENPEN = 5, 1.0


def tuned_decoding(run_dir: Path | None, decode: DecodeConfig) -> DecodeConfig:
    """`decode` with the search settings left unset (beam, lenpen: None) filled in: the values
    `mt train` tuned for the run on validation (RUN_DIR/decoding.json), else 5 and 1.0. What
    the user set is kept.

    Raises:
        MTError: If decoding.json is not the JSON object `mt train` writes (one sentence).
    """
    if decode.beam is not None and decode.lenpen is not None:
        return decode
    tuned: dict[str, Any] = {}
    path = RunDir(run_dir).decoding if run_dir is not None else None
    if path is not None and path.is_file():
        try:
            tuned = json.loads(path.read_text(encoding="utf-8"))
            beam, lenpen = int(tuned["beam"]), float(tuned["lenpen"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MTError(
                f"{path} is not the decoding settings `mt train` writes ({exc}); delete it to "
                "decode with beam 5 and lenpen 1.0, or set decode.beam and decode.lenpen."
            ) from None
        tuned = {"beam": beam, "lenpen": lenpen}
    return dataclasses.replace(
        decode,
        beam=decode.beam if decode.beam is not None else tuned.get("beam", DEFAULT_BEAM),
        lenpen=decode.lenpen if decode.lenpen is not None else tuned.get("lenpen", DEFAULT_LENPEN),
    )
