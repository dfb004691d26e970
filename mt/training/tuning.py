"""The search settings a run decodes with by default: at the end of `mt train`, a small grid
of beam sizes and length penalties is decoded on validation with the final checkpoint, through
the same engine as `mt translate`; the best by BLEU is written to RUN_DIR/decoding.json, which
`mt translate`, `mt eval`, `mt serve` and exports read for the settings a user leaves unset
(`mt.decode.run.tuned_decoding`). A model that scores under MIN_BLEU with the first pair (the
defaults) is not translating yet (a short or diverged run: its outputs run to the length cap),
so the rest of the grid, which would only decode noise at the cap, is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mt.config import DecodeConfig
from mt.data import ParallelData
from mt.decode.run import DEFAULT_BEAM, DEFAULT_LENPEN, load_run
from mt.decode.torch_engine import TorchTranslator
from mt.metrics import bleu
from mt.training.stopping import EvaluationStopped

log = logging.getLogger("mt.train")
MIN_BLEU = 1.0  # validation BLEU under which the grid stops after its first pair


def grid(beams: list[int], lenpens: list[float]) -> list[tuple[int, float]]:
    """Every (beam, lenpen) pair, mt's defaults first (ties keep the earlier pair)."""
    pairs = [(b, lp) for b in beams for lp in lenpens]
    default = (DEFAULT_BEAM, DEFAULT_LENPEN)
    return sorted(pairs, key=lambda pair: pair != default)


def tune_decoding(
    run_dir: Path,
    checkpoint: Path,
    valid: ParallelData,
    pairs: list[tuple[int, float]],
    device: torch.device,
    precision: str,
    stop: Callable[[], str],
) -> dict[str, Any]:
    """Decode validation with `checkpoint` under each (beam, lenpen) of `pairs`, as `mt
    translate` would, and return the best: {"beam", "lenpen", "valid_bleu", "checkpoint",
    "grid": [{"beam", "lenpen", "valid_bleu"}, ...]}, and "skipped" (why) when the first pair
    scores under MIN_BLEU and the others are not tried.

    Raises:
        EvaluationStopped: `stop` returned a signal name between two grid points.
    """
    run = load_run(run_dir, str(checkpoint), device)
    sources = run.src_tok.decode([valid.src[i].tolist() for i in range(len(valid))])
    refs = run.tgt_tok.decode([valid.tgt[i].tolist() for i in range(len(valid))])
    tried = []
    for beam, lenpen in pairs:
        if signal_name := stop():
            raise EvaluationStopped(signal_name)
        decode = DecodeConfig(beam=beam, lenpen=lenpen)
        outputs = TorchTranslator(run, decode, device, precision).translate(sources)
        hyps = [best[0][0] if best else "" for best in outputs]
        score = bleu(hyps, [refs]).score
        log.info("decoding on validation: beam %d, lenpen %g: BLEU %.2f", beam, lenpen, score)
        tried.append({"beam": beam, "lenpen": lenpen, "valid_bleu": round(score, 2)})
        if score < MIN_BLEU and len(pairs) > 1:
            skipped = f"validation BLEU {score:.2f} < {MIN_BLEU:g}: not translating yet"
            return {**tried[0], "checkpoint": checkpoint.name, "grid": tried, "skipped": skipped}
    best = max(tried, key=lambda point: point["valid_bleu"])  # the first of equals
    return {**best, "checkpoint": checkpoint.name, "grid": tried}


def tuned_summary(tuning: dict[str, Any]) -> str:
    """One log line: the chosen settings against mt's defaults."""
    if "skipped" in tuning:
        return (
            f"decoding not tuned ({tuning['skipped']}); mt translate uses beam "
            f"{tuning['beam']}, lenpen {tuning['lenpen']:g} unless told otherwise"
        )
    default = next(
        (p for p in tuning["grid"] if (p["beam"], p["lenpen"]) == (DEFAULT_BEAM, DEFAULT_LENPEN)),
        None,
    )
    against = "" if default is None else f" (beam 5, lenpen 1: {default['valid_bleu']:.2f})"
    return (
        f"decoding tuned on validation: beam {tuning['beam']}, lenpen {tuning['lenpen']:g}, "
        f"BLEU {tuning['valid_bleu']:.2f}{against}; mt translate uses them unless told otherwise"
    )
