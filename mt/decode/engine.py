"""The `Translator` interface that the stages, the server and the benchmarks decode through,
and `make_translator`, which picks the engine (torch, or CTranslate2 on an export of the run)."""

from __future__ import annotations

from typing import Protocol

import torch

from mt.config import DecodeConfig, validate_decode
from mt.decode.ct2 import CT2Translator
from mt.decode.run import LoadedRun, tuned_decoding
from mt.decode.torch_engine import TorchTranslator
from mt.errors import MTError
from mt.runtime import setup_hardware


class Translator(Protocol):
    """What every engine offers: its run and settings, and n-best lists for lines of text."""

    run: LoadedRun
    decode: DecodeConfig  # resolved: beam and lenpen set (`tuned_decoding`)

    def translate(
        self,
        lines: list[str],
        where: str = "<input>",
        first_line: int = 1,
        prefixes: list[str] | None = None,
        constraints: list[list[str]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """n-best (text, score) lists for each line, in input order; empty lines give []."""
        ...


ENGINES = ("torch", "ctranslate2")


def make_translator(
    run: LoadedRun, decode: DecodeConfig, device: torch.device, precision: str, engine: str
) -> Translator:
    """mt's own search (engine=torch) or CTranslate2's on an export of the run, searching with
    the settings tuned for the run where `decode` leaves them unset (`tuned_decoding`)."""
    decode = tuned_decoding(run.run_dir, decode)
    validate_decode(decode)  # e.g. decode.nbest against the run's tuned beam
    if engine not in ENGINES:
        raise MTError(f"engine={engine!r} is not one of {', '.join(ENGINES)}.")
    if engine == "ctranslate2":
        if decode.shortlist:
            raise MTError(
                "decode.shortlist needs engine=torch; engine=ctranslate2 scores the whole "
                "vocabulary."
            )
        return CT2Translator(run, decode, device, precision)
    return TorchTranslator(run, decode, device, precision)


INFERENCE_PRECISIONS = ("auto", "bf16", "fp16", "fp32", "int8")


def setup_inference(
    device_name: str, precision_name: str, threads: int
) -> tuple[torch.device, str]:
    """The device and precision to decode with; auto: bf16 where the device multiplies bf16
    natively (same BLEU, faster beam search on such CPUs), else fp32."""
    if precision_name not in INFERENCE_PRECISIONS:
        raise MTError(
            f"precision={precision_name!r} is not one of {', '.join(INFERENCE_PRECISIONS)}."
        )
    return setup_hardware(device_name, precision_name, threads)
