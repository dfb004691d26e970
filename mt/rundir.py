"""The run folder: the one place that names its files, locks it, and checks what it holds.

`mt train` writes a run folder and `mt translate` / `mt eval` read it; both go through `RunDir`:

    RUN_DIR/config.yaml  train.log  results.json  decoding.json  vocab.json  .lock
    RUN_DIR/<SentencePiece model(s)>  (an imported or fine-tuned run: <side>.vocab.json too)
    RUN_DIR/hf_tokenizer/  import.json  (an imported run; hf_tokenizer/ also a fine-tune of one)
    RUN_DIR/tensorboard/
    RUN_DIR/checkpoints/step_<N>.pt  last.pt  best.pt  averaged.pt  final.pt
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt.checkpoint import load_checkpoint, remove_stale_temps, step_checkpoints
from mt.config import ModelConfig
from mt.errors import MTError
from mt.manifest import Vocab
from mt.tokenizer import load_tokenizer

log = logging.getLogger("mt.train")

# What mt translate falls back to without checkpoint=: the validated choice first.
INFERENCE_CHECKPOINTS = ("final.pt", "best.pt", "last.pt")


def same_model(recorded: dict[str, Any] | None, model_args: dict[str, Any]) -> bool:
    """Whether a checkpoint's model arguments build the model `model_args` do: a key an older
    checkpoint lacks (an option added since) counts at its default, which is the behaviour
    the checkpoint was trained with."""
    if recorded is None:
        return False
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    return {**defaults, **recorded} == {**defaults, **model_args}


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder, and the checks that guard it."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        """The newest complete step checkpoint (a hard link)."""
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        """The step checkpoint with the best validation score (a hard link)."""
        return self.checkpoints / "best.pt"

    @property
    def averaged(self) -> Path:
        return self.checkpoints / "averaged.pt"

    @property
    def final(self) -> Path:
        """best.pt or averaged.pt, whichever scored higher on validation (a hard link)."""
        return self.checkpoints / "final.pt"

    def step(self, n: int) -> Path:
        return self.checkpoints / f"step_{n}.pt"

    def steps(self) -> list[Path]:
        """The step checkpoints on disk, oldest first."""
        return step_checkpoints(self.checkpoints)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def decoding(self) -> Path:
        """The search settings `mt train` tuned on validation (see mt.decode.run.tuned_decoding)."""
        return self.root / "decoding.json"

    @property
    def vocab(self) -> Path:
        """Names and hashes of the SentencePiece model(s) the run trains on."""
        return self.root / "vocab.json"

    def spm(self, name: str) -> Path:
        """A SentencePiece model file copied into the run folder."""
        return self.root / name

    @property
    def trained(self) -> bool:
        """True once the run has written a checkpoint."""
        return self.last.is_file() or bool(self.steps())

    # ---------------------------------------------------------------- for mt train

    def check_is_run(self) -> None:
        """Refuse a path that is a file, or a folder holding files that are not an mt run."""
        if self.root.exists() and not self.root.is_dir():
            raise MTError(f"run_dir {self.root} exists and is not a folder.")
        ours = self.config.is_file() or self.checkpoints.is_dir()
        if self.root.is_dir() and any(self.root.iterdir()) and not ours:
            raise MTError(
                f"run_dir {self.root} holds files that are not an mt run; choose another run_dir."
            )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive OS lock on RUN_DIR/.lock while the block runs.

        The kernel drops the lock when the process dies, even by kill -9, so a stale lock file
        never blocks the next run.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                raise MTError(
                    f"run_dir {self.root} is in use by another mt train process (pid {owner}); "
                    "wait for it to finish or choose another run_dir."
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield

    def sweep_temps(self) -> None:
        """Delete temp files that a run killed mid-write left (only safe while locked)."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temps(self.checkpoints):
            log.info("removed %s, left by a run that was killed while writing it", stale.name)

    def install_vocab(self, vocab: Vocab, data_dir: Path) -> None:
        """Record the vocabulary in vocab.json and copy its files in (SentencePiece models, or an
        imported run's vocabulary files and the models they name), so the run stands alone.

        Refuses to resume a trained run on another vocabulary, before its SentencePiece files
        are replaced. Vocabulary sizes alone can agree by chance (8,000 pieces of another
        corpus); the hashes of the SentencePiece models cannot. A run with no checkpoint yet
        may switch data freely.
        """
        wanted = vocab.identity()
        if self.trained and self.vocab.is_file():
            if json.loads(self.vocab.read_text(encoding="utf-8")) != wanted:
                raise MTError(
                    f"run_dir {self.root} was trained on another vocabulary (its vocab.json "
                    "differs from the data_dir's SentencePiece model); use another run_dir, or "
                    "the run's own data."
                )
        self.vocab.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")
        for name in set(vocab.models.values()):  # a vocabulary file names its SentencePiece models
            for path in load_tokenizer(data_dir / name).files():
                shutil.copyfile(path, self.spm(path.name))

    def resume_state(self, model_args: dict[str, Any]) -> dict[str, Any] | None:
        """The newest readable checkpoint to resume from (step files by step, then last.pt).

        A kill between writing step_N.pt and pointing last.pt at it leaves last.pt one step
        behind, so the step files come first. Unreadable files are skipped with a warning.

        Raises:
            MTError: If the checkpoint was trained with other model settings.
        """
        skipped = False
        for path in [*reversed(self.steps()), self.last]:
            if not path.is_file():
                continue
            try:
                ckpt = load_checkpoint(path)
            except MTError as exc:
                log.warning("skipping %s: %s", path, exc)
                skipped = True
                continue
            if not same_model(ckpt.get("model_args"), model_args):
                raise MTError(
                    f"{path} was trained with other model settings or another vocabulary than "
                    "this config; use another run_dir, or the run's own config."
                )
            if "optimizer" not in ckpt:
                continue
            if skipped:
                log.warning("resuming from %s, the newest readable checkpoint", path)
            return ckpt
        return None

    # ---------------------------------------------------------------- for mt translate

    def pick_checkpoint(self, checkpoint: str | None) -> Path:
        """The given checkpoint, else final.pt (chosen on validation), best.pt, last.pt."""
        if checkpoint:
            return Path(checkpoint)
        for name in INFERENCE_CHECKPOINTS:
            if (self.checkpoints / name).is_file():
                return self.checkpoints / name
        raise MTError(f"run_dir {self.root} has no checkpoints (expected checkpoints/last.pt).")
