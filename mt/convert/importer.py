"""mt import: a Hugging Face Marian (OPUS-MT) or M2M100 (NLLB) model -> an ordinary mt run folder.

`source` is a hub id, downloaded with `huggingface_hub.snapshot_download` as a connected user
would, or a local folder written by `save_pretrained` with its tokenizer files. The run folder
gets the checkpoint (checkpoints/final.pt), the tokenizer (the SentencePiece models and mt's
vocabulary files), vocab.json, config.yaml and import.json: the source, its revision and the
sha256 of every file it was made from. It is written beside run_dir and renamed into place.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mt import __version__
from mt.checkpoint import FORMAT, save_checkpoint
from mt.config import ImportConfig
from mt.convert.m2m100 import import_m2m100
from mt.convert.marian import import_marian
from mt.convert.pretrained import M2M100, MARIAN, TOKENIZER_DIR, Imported, refuse
from mt.convert.source import missing_extra
from mt.corpus import file_sha256
from mt.errors import MTError
from mt.files import check_parents, fault, is_write_fault, unchanged
from mt.rundir import RunDir

log = logging.getLogger("mt.import")

IMPORT_INFO = "import.json"
IMPORT_FORMAT = "mt-import/1"
# Weights in formats torch does not read (TensorFlow, Flax, Rust, ONNX): not downloaded.
OTHER_FRAMEWORKS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "onnx/*", "*.tflite"]
# config.model_type -> the class mt imports it as
FAMILIES = {"marian": MARIAN, "m2m_100": M2M100}


def fetch(source: str, revision: str | None) -> tuple[Path, str]:
    """The local folder of `source` and its revision (the hub commit; "local" for a folder).

    Raises:
        MTError: A hub id that cannot be downloaded (offline, unknown, gated), in one sentence
            that says how to pass a local folder instead.
    """
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise MTError(f"source {source} is a file; name a folder written by save_pretrained.")
        if revision is not None:
            raise MTError(f"revision={revision} applies to a hub id; source {source} is a folder.")
        return path, "local"
    try:
        from huggingface_hub import snapshot_download  # optional extra: mt[export]
    except ImportError:
        raise missing_extra("huggingface_hub", "mt import") from None
    try:
        folder = Path(
            snapshot_download(source, revision=revision, ignore_patterns=OTHER_FRAMEWORKS)
        )
    except Exception as exc:  # offline, unknown repo, gated, bad revision: all one sentence
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise MTError(
            f"source={source}: the model could not be downloaded from the Hugging Face hub "
            f"({reason}); without network access, run `save_pretrained(DIR)` on its model and "
            "tokenizer where you can reach the hub, copy DIR here and pass source=DIR."
        ) from None
    return folder, folder.name  # snapshots/<commit>


def load_pretrained(folder: Path, src_lang: str | None) -> Imported:
    """Load the model and tokenizer of a save_pretrained folder and make them mt's."""
    try:  # optional extra: mt[export]
        import transformers
    except ImportError:
        raise missing_extra("transformers", "mt import") from None
    transformers.utils.logging.disable_progress_bar()  # mt's stderr: one sentence or its log
    transformers.utils.logging.set_verbosity_error()
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise MTError(f"{folder} holds no readable Hugging Face config ({first}).") from None
    family = FAMILIES.get(config.model_type)
    if family is None:
        name = (config.architectures or [config.model_type])[0]
        raise MTError(
            f"{name} cannot be imported: mt imports {MARIAN} (OPUS-MT) and {M2M100} (NLLB) only."
        )
    named = (config.architectures or [family])[0]
    if named != family:
        raise refuse(named, f"mt imports {family} of model_type={config.model_type}")
    try:
        model = getattr(transformers, family).from_pretrained(folder, dtype="float32")
        with warnings.catch_warnings():  # MarianTokenizer's advice on sacremoses, which
            warnings.simplefilter("ignore")  # only its unused punctuation normalizer needs
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise MTError(f"{folder}: the model or its tokenizer did not load ({first}).") from None
    if family == MARIAN:
        return import_marian(model.eval(), tokenizer)
    return import_m2m100(model.eval(), tokenizer, folder, src_lang)


def manifest(cfg: ImportConfig, folder: Path, revision: str, imported: Imported) -> dict:
    """import.json: where the model came from, the hash of every file, what mt made of it."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)
    return {
        "format": IMPORT_FORMAT, "mt_version": __version__, "source": cfg.source,
        "revision": revision, "class": imported.family,
        "files": {str(p.relative_to(folder)): file_sha256(p) for p in files},
        "model_args": imported.model_args, "data": imported.data,
        "id_maps": {"src": imported.src_map.to_json(), "tgt": imported.tgt_map.to_json()},
        **{k: v for k, v in imported.config.items() if k != "banned"},
    }  # fmt: skip


def checkpoint(imported: Imported, cfg: ImportConfig, identity: dict) -> dict[str, Any]:
    """The run's one checkpoint: what `mt.decode.run.load_run` reads, plus `pretrained` (the
    id maps and the source's config, for an export back to its class)."""
    src, _, tgt = imported.data["direction"].partition("-")
    return {
        "format": FORMAT, "step": 0, "model": imported.model.state_dict(),
        "model_args": imported.model_args, "vocab": identity, "data": imported.data,
        "config": {"data": {"src": src, "tgt": tgt}, "import": OmegaConf.to_container(
            OmegaConf.structured(cfg))},
        "pretrained": {
            "family": imported.family, "src_map": imported.src_map.to_json(),
            "tgt_map": imported.tgt_map.to_json(), **imported.config,
        },
    }  # fmt: skip


def write_run(staged: Path, cfg: ImportConfig, folder: Path, revision: str, imp: Imported) -> None:
    """Every file of the run folder, into `staged`."""
    run = RunDir(staged)
    run.checkpoints.mkdir(parents=True)
    for name, original in imp.spm_files.items():
        shutil.copyfile(original, run.spm(name))
    sha = {}
    for side, (name, spec) in imp.vocab_files.items():
        run.spm(name).write_text(json.dumps(spec, ensure_ascii=False) + "\n", encoding="utf-8")
        sha[side] = file_sha256(run.spm(name))
    models = {side: name for side, (name, _) in imp.vocab_files.items()}
    identity = {"models": models, "sha256": sha}
    run.vocab.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")
    config = {"import": OmegaConf.structured(cfg), "model": imp.model_args}
    run.config.write_text(OmegaConf.to_yaml(OmegaConf.create(config)), encoding="utf-8")
    imp.tokenizer.save_pretrained(str(staged / TOKENIZER_DIR))
    for name, original in imp.spm_files.items():  # NLLB's tokenizer.json comes without it
        if not (staged / TOKENIZER_DIR / name).is_file():
            shutil.copyfile(original, staged / TOKENIZER_DIR / name)
    info = manifest(cfg, folder, revision, imp)
    (staged / IMPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    save_checkpoint(checkpoint(imp, cfg, identity), run.final)


def check_run_dir(run_dir: Path, force: bool) -> None:
    """Refuse a run_dir that holds anything but an earlier import (that only with force)."""
    check_parents(run_dir, "run_dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise MTError(f"run_dir {run_dir} is a file; name a folder.")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / IMPORT_INFO).is_file():
            raise MTError(
                f"run_dir {run_dir} holds files that are not an mt import; choose another."
            )
        if not force:
            raise MTError(
                f"run_dir {run_dir} holds an earlier import; add force=true to replace it."
            )


def run_import(cfg: ImportConfig) -> Path:
    """`mt import`: fetch, convert, and write the run folder (atomically: staged beside it)."""
    run_dir = Path(cfg.run_dir)
    check_run_dir(run_dir, cfg.force)
    folder, revision = fetch(cfg.source, cfg.revision)
    imported = load_pretrained(folder, cfg.src_lang)
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=run_dir.parent, prefix=f".{run_dir.name}.") as tmp:
            staged = Path(tmp) / "run"
            write_run(staged, cfg, folder, revision, imported)
            if run_dir.exists():
                run_dir.rename(Path(tmp) / "previous")  # removed with tmp
            staged.rename(run_dir)
    except (OSError, RuntimeError) as exc:
        if not is_write_fault(exc):
            raise
        raise fault(exc, run_dir, unchanged(run_dir)) from None
    log.info("imported %s (%s, %s) into %s", cfg.source, imported.family, revision, run_dir)
    return run_dir
