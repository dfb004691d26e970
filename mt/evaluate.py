"""run_eval: sacreBLEU BLEU, chrF and TER (with signatures) of hypothesis files, of a run's
translations of a test set, or of several systems compared by paired bootstrap resampling."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mt.config import EvalConfig, validate_eval
from mt.corpus import read_lines
from mt.decode.engine import make_translator, setup_inference
from mt.decode.run import as_list, load_run, run_files
from mt.errors import MTError
from mt.files import check_destination, refuse_inputs, write_text
from mt.metrics import Score, bleu, bleu_lc, chrf, paired_bootstrap, ter
from mt.translate import side_inputs, translate_files

log = logging.getLogger("mt.eval")

METRICS = {"bleu": bleu, "bleu_lc": bleu_lc, "chrf": chrf, "ter": ter}


def _read_same_length(
    paths: list[str], n_expected: tuple[str, int] | None, what: str
) -> list[list[str]]:
    streams = []
    for path in paths:
        lines = read_lines(Path(path)) if Path(path).is_file() else None
        if lines is None:
            raise MTError(f"{what} file {path} does not exist.")
        if n_expected is not None and len(lines) != n_expected[1]:
            raise MTError(
                f"{path} has {len(lines)} lines but {n_expected[0]} has {n_expected[1]}; "
                "hypotheses and references need one line per segment."
            )
        streams.append(lines)
    return streams


def _translate_src(cfg: EvalConfig) -> str:
    """Translate cfg.src with cfg.run_dir; returns the path of the saved translations."""
    if not cfg.src:
        raise MTError("mt eval run_dir=... needs src=FILE, the source side of the test set.")
    output = cfg.output or str(Path(cfg.run_dir) / f"{Path(cfg.src).name}.hyp")
    refuse_inputs(output, [cfg.src, *as_list(cfg.ref), *side_inputs(cfg.decode)])
    device, precision = setup_inference(cfg.device, cfg.precision, cfg.threads)
    run = load_run(Path(cfg.run_dir), cfg.checkpoint, device)
    refuse_inputs(output, run_files(run))
    translator = make_translator(run, cfg.decode, device, precision, cfg.engine)
    translate_files(translator, [cfg.src], output)
    d = translator.decode
    settings = f"beam {d.beam}, lenpen {d.lenpen:g}"
    print(f"translations of {cfg.src} ({run.checkpoint.name}, {settings}): {output}")
    return output


def _score_table(name: str, scores: list[Score]) -> str:
    rows = [f"{name}"] + [f"  {s.name:<5} {s.score:6.2f}   {s.signature}" for s in scores]
    return "\n".join(rows)


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Score one or more hypothesis files against the references; returns the JSON report."""
    validate_eval(cfg)
    refs_paths = as_list(cfg.ref)
    if not refs_paths:
        raise MTError("mt eval needs ref=FILE (one or more reference files).")
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown:
        raise MTError(
            f"metrics={cfg.metrics} names unknown metric(s) {unknown}; use {', '.join(METRICS)}."
        )
    if cfg.report:
        inputs = [*refs_paths, *as_list(cfg.hyp), cfg.src or "-", cfg.output or "-"]
        refuse_inputs(cfg.report, inputs, key="report")
        if cfg.output and Path(cfg.output).resolve() == Path(cfg.report).resolve():
            raise MTError(f"report {cfg.report} is also output=; give them two names.")
        check_destination(Path(cfg.report), key="report")
    hyp_paths = [_translate_src(cfg)] if cfg.run_dir else as_list(cfg.hyp)
    if not hyp_paths:
        raise MTError("mt eval needs hyp=FILE, or run_dir=DIR src=FILE to translate first.")
    refs = _read_same_length(refs_paths, None, "reference")
    first_ref = (refs_paths[0], len(refs[0]))
    for path, stream in zip(refs_paths[1:], refs[1:], strict=True):
        if len(stream) != first_ref[1]:
            raise MTError(f"{path} has {len(stream)} lines but {first_ref[0]} has {first_ref[1]}.")
    hyps = _read_same_length(hyp_paths, first_ref, "hypothesis")
    report: dict[str, Any] = {"references": refs_paths, "systems": {}}
    for path, lines in zip(hyp_paths, hyps, strict=True):
        scores = [METRICS[m](lines, refs) for m in cfg.metrics]
        print(_score_table(path, scores))
        report["systems"][path] = {
            s.name: {"score": round(s.score, 2), "signature": s.signature, "detail": s.detail}
            for s in scores
        }
    if len(hyp_paths) > 1:
        comparison = paired_bootstrap(
            list(zip(hyp_paths, hyps, strict=True)), refs, cfg.metrics, cfg.bootstrap_samples
        )
        print(comparison["table"])
        report["comparison"] = comparison["systems"]
    if cfg.report:
        write_text(Path(cfg.report), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
