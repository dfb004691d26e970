"""The end of a training run (rank 0 alone): choose the final checkpoint on validation (best.pt,
or averaged.pt with train.average_last), link it as final.pt, tune its search settings on
validation (train.tune_decoding), and score it on the test split.

A stop request ends either phase with `Stopped`; every checkpoint is on disk by then, so a
re-run of the same command redoes the phase.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mt.checkpoint import link_checkpoint, load_checkpoint
from mt.config import TrainConfig
from mt.data import ParallelData
from mt.files import write_text
from mt.manifest import Manifest
from mt.training.checkpoints import average_last
from mt.training.setup import target_code_id
from mt.training.stopping import stoppable
from mt.training.trainer import Trainer
from mt.training.tuning import grid, tune_decoding, tuned_summary
from mt.training.validation import evaluate_split

log = logging.getLogger("mt.train")


def final_scores(
    cfg: TrainConfig, trainer: Trainer, data_dir: Path, manifest: Manifest
) -> dict[str, Any]:
    """Choose the final checkpoint on validation, link it as final.pt, score it on test.

    The candidates are best.pt (best validation score) and, with train.average_last=N,
    averaged.pt (the mean of the last N step checkpoints); the one scoring higher on
    validation wins. Test BLEU is greedy, as during validation. A stop request ends either
    phase with Stopped; every checkpoint is on disk by then, so a re-run redoes the phase.
    """
    run = trainer.run
    final = run.best if run.best.is_file() else run.last
    out: dict[str, Any] = {}
    if cfg.train.average_last > 1:
        with stoppable(trainer.requested_signal, "checkpoint averaging"):
            final, out = _average(cfg, trainer, final)
    link_checkpoint(final, run.final)
    out["final_checkpoint"] = final.name
    if cfg.train.tune_decoding and trainer.valid_data is not None:
        with stoppable(trainer.requested_signal, "decoding tuning"):
            out["decoding"] = _tune(cfg, trainer, run.final)
    if not manifest.has_split("test"):
        return out
    with stoppable(trainer.requested_signal, "the final test decode"):
        return {**out, **_test_scores(cfg, trainer, data_dir, manifest, final)}


def _average(cfg: TrainConfig, trainer: Trainer, final: Path) -> tuple[Path, dict[str, Any]]:
    """Average the last train.average_last step checkpoints; returns the final checkpoint
    and averaged.pt's validation scores: averaged.pt if it validates at least as well as
    `final` (best.pt) or there is no validation split, else `final`, which it also is when
    fewer than two step checkpoints exist."""
    run, out = trainer.run, {}
    averaged = average_last(run, cfg.train.average_last)
    if averaged is not None and trainer.valid_data is not None:
        trainer.model.load_state_dict(load_checkpoint(averaged)["model"])
        metrics = trainer.validate(all_ranks=False)
        out["averaged_valid"] = metrics
        score = metrics.get("valid/bleu", -metrics["valid/loss"])
        best = trainer.state.best_score
        shown = "none" if best is None else f"{best:.3f}"
        log.info("averaged.pt on validation: %.3f (best.pt: %s at step %d)",
                 score, shown, trainer.state.best_step)  # fmt: skip
        if best is None or score >= best:
            final = averaged
    elif averaged is not None:
        final = averaged
    return final, out


def _tune(cfg: TrainConfig, trainer: Trainer, final: Path) -> dict[str, Any]:
    """Tune beam and lenpen of `final` on validation; write RUN_DIR/decoding.json."""
    t, run = cfg.train, trainer.run
    pairs = grid(t.tune_beams, t.tune_lenpens)
    log.info("tuning decoding on validation (%d pairs): %d settings", len(trainer.valid_data),
             len(pairs))  # fmt: skip
    tuning = tune_decoding(
        run.root, final, trainer.valid_data, pairs, trainer.device, trainer.precision,
        stop=lambda: trainer.requested_signal,
    )  # fmt: skip
    write_text(run.decoding, json.dumps(tuning, indent=2) + "\n")
    log.info("%s", tuned_summary(tuning))
    return tuning


def _test_scores(
    cfg: TrainConfig, trainer: Trainer, data_dir: Path, manifest: Manifest, final: Path
) -> dict[str, float]:
    """Greedy BLEU and loss of `final` on the test split (rank 0 alone)."""
    trainer.model.load_state_dict(load_checkpoint(final)["model"])
    first = target_code_id(manifest, trainer.tokenizer)
    test = ParallelData(data_dir, "test", cfg.model.max_positions, first)
    log.info("decoding the test split (%d pairs) with %s", len(test), final.name)
    metrics = evaluate_split(
        trainer.model, test, trainer.tokenizer, trainer.precision, trainer.device,
        with_bleu=True, prefix="test", label_smoothing=cfg.train.label_smoothing,
        stop=lambda: trainer.requested_signal,
    )  # fmt: skip
    log.info("test (%s, greedy): BLEU %.2f, loss %.3f", final.name, metrics["test/bleu"],
             metrics["test/loss"])  # fmt: skip
    return metrics
