"""engine=ctranslate2: `mt translate` / `mt eval` decoding through a CTranslate2 export of the run.

The export lives in RUN_DIR/ctranslate2/<checkpoint stem>/, made on first use and made again
when the checkpoint's hash differs from the one its mt_export.json records. Input goes through
the same normalization, truncation, batching and one-line guarantees as the torch engine;
only the search runs in CTranslate2.

Where the two searches differ, this module makes CTranslate2 follow mt:
- Length caps: mt emits at most int(max_len_a * src_len + max_len_b) tokens, then eos. Sources
  are decoded in groups of one cap, with `max_decoding_length = cap + 1`, and cut to `cap`
  tokens: greedy output is then mt's exactly.
- Scores: a hypothesis cut at the cap, or one that starts with a target prefix (whose tokens
  CTranslate2 does not score), is scored again with `score_batch`, eos included, as mt scores.
- Length penalty: CTranslate2 divides by length ** alpha, mt by the GNMT penalty. Beams are
  searched with no penalty, all `beam` hypotheses come back with their raw log-probs, and mt's
  penalty ranks them; n-best scores are mt's.
- Stopping: CTranslate2 ends a sentence once `beam` hypotheses have finished (fairseq's rule),
  mt once no live hypothesis can beat the finished ones (Hugging Face's); n-best lists can differ
  in their tail, as docs/export.md measures.
"""

from __future__ import annotations

import json
import logging
from itertools import groupby
from pathlib import Path
from typing import Any

import torch

from mt.config import DecodeConfig
from mt.convert.export import EXPORT_INFO, export
from mt.convert.source import load_source, missing_extra
from mt.corpus import file_sha256
from mt.decode.ensemble import Ensemble
from mt.decode.inputs import one_line, output_caps, prefix_ids, prepare_ids
from mt.decode.run import LoadedRun, for_target, tuned_decoding
from mt.decode.search import length_penalty
from mt.errors import MTError

log = logging.getLogger("mt.translate")

# mt precision -> CTranslate2 compute type (weights are stored in float32 and converted on load)
COMPUTE_TYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8_float32"}


def cached_export(run: LoadedRun) -> Path:
    """RUN_DIR/ctranslate2/<checkpoint stem>, exported now unless it matches the checkpoint."""
    root = run.run_dir if run.run_dir is not None else run.checkpoint.parent.parent
    folder = root / "ctranslate2" / run.checkpoint.stem
    info = folder / EXPORT_INFO
    if info.is_file():
        recorded = json.loads(info.read_text(encoding="utf-8")).get("checkpoint_sha256")
        if recorded == file_sha256(run.checkpoint):  # a hit loads no second copy of the model
            return folder
        log.info("%s changed since its CTranslate2 export; exporting again", run.checkpoint)
    export(load_source(root, str(run.checkpoint)), folder, "ctranslate2")
    log.info("exported %s to %s for engine=ctranslate2", run.checkpoint, folder)
    return folder


class CT2Translator:
    """`Translator`'s interface (translate, decode) over a CTranslate2 model of the run."""

    def __init__(self, run: LoadedRun, decode: DecodeConfig, device: torch.device, precision: str):
        decode = tuned_decoding(run.run_dir, decode)
        try:
            import ctranslate2
        except ImportError:  # an optional extra: mt[export]
            raise missing_extra("ctranslate2", "engine=ctranslate2") from None
        if isinstance(run.model, Ensemble):
            raise MTError(
                "engine=ctranslate2 decodes one checkpoint; use engine=torch for an ensemble."
            )
        if decode.constraints is not None:
            raise MTError(
                "engine=ctranslate2 has no lexical constraints; use engine=torch for "
                "decode.constraints."
            )
        if precision not in COMPUTE_TYPES:
            raise MTError(
                f"engine=ctranslate2 takes precision fp32, bf16, fp16 or int8, not {precision}."
            )
        run = for_target(run, decode.tgt_lang)
        folder = cached_export(run)
        inter = decode.inter_threads if device.type == "cpu" else 1
        threads = max(1, torch.get_num_threads() // inter) if device.type == "cpu" else 0
        self.model = ctranslate2.Translator(
            str(folder), device=device.type, compute_type=COMPUTE_TYPES[precision],
            inter_threads=inter, intra_threads=threads,
        )  # fmt: skip
        ctranslate2.set_random_seed(decode.seed)
        self.run, self.decode, self.device, self.precision = run, decode, device, precision

    def _options(self) -> dict[str, Any]:
        d = self.decode
        if d.sampling:
            return dict(
                beam_size=1, sampling_topk=d.topk, sampling_topp=d.topp,
                sampling_temperature=d.temperature, num_hypotheses=1, length_penalty=0.0,
            )  # fmt: skip
        return dict(beam_size=d.beam, num_hypotheses=d.beam, length_penalty=0.0)

    def _search(
        self, pieces: list[list[str]], cap: int, prefix: list[list[str]] | None
    ) -> list[list[tuple[list[int], float]]]:
        """(ids, mt score) n-best lists for sources of one cap, best first."""
        d = self.decode
        results = self.model.translate_batch(
            pieces, prefix, max_batch_size=d.batch_size, max_decoding_length=cap + 1,
            min_decoding_length=0, return_scores=True, return_end_token=True, **self._options(),
        )  # fmt: skip
        found = [list(zip(r.hypotheses, r.scores, strict=True)) for r in results]
        self._rescore(pieces, found, cap, prefix)
        tok, lenpen = self.run.tgt_tok, 1.0 if d.sampling else d.lenpen
        out = []
        for hyps in found:
            scored = []
            for tokens, logprob in hyps:
                ids = [tok.piece_to_id(t) for t in tokens if t != "</s>"]
                scored.append((ids, logprob / length_penalty(len(ids) + 1, lenpen)))
            scored.sort(key=lambda h: h[1], reverse=True)
            out.append(scored[: 1 if d.sampling else d.nbest])
        return out

    def _rescore(
        self,
        pieces: list[list[str]],
        found: list[list[tuple[list[str], float]]],
        cap: int,
        prefix: list[list[str]] | None,
    ) -> None:
        """Score as mt does, in place: hypotheses that ran past `cap` tokens are cut to it and
        end in a forced eos; a prefix's tokens count (CTranslate2 leaves them out)."""
        where = [(i, k) for i, hyps in enumerate(found) for k, (t, _) in enumerate(hyps)
                 if t[-1:] != ["</s>"] or (prefix is not None and prefix[i])]  # fmt: skip
        if not where:
            return
        cut = [[t for t in found[i][k][0] if t != "</s>"][:cap] for i, k in where]
        scores = self.model.score_batch([pieces[i] for i, _ in where], cut)  # eos included
        for (i, k), tokens, result in zip(where, cut, scores, strict=True):
            found[i][k] = (tokens, sum(result.log_probs))

    def translate(
        self,
        lines: list[str],
        where: str = "<input>",
        first_line: int = 1,
        prefixes: list[str] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """n-best (text, score) lists for each line, in input order; empty lines give [].

        `prefixes` (one per line, "" for none) go to CTranslate2 as target prefixes.
        """
        ids = prepare_ids(self.run, lines, where, first_line)
        forced = prefix_ids(self.run, self.decode, ids, prefixes, where, first_line)
        results: list[list[tuple[str, float]]] = [[] for _ in lines]
        todo = sorted((i for i, seq in enumerate(ids) if seq), key=lambda i: len(ids[i]))
        lengths = [len(ids[i]) + 1 for i in todo]
        caps = dict(zip(todo, output_caps(self.run, self.decode, lengths), strict=True))
        src_tok, tgt_tok = self.run.src_tok, self.run.tgt_tok
        for cap, group in groupby(todo, key=caps.__getitem__):
            rows = list(group)
            pieces = [[src_tok.id_to_piece(t) for t in ids[i]] for i in rows]
            prefix = None
            if forced is not None:
                prefix = [[tgt_tok.id_to_piece(t) for t in forced[i]] for i in rows]
            found = self._search(pieces, cap, prefix)
            for i, hyps in zip(rows, found, strict=True):
                texts = self.run.tgt_tok.decode([h[0] for h in hyps])
                results[i] = [(one_line(t), s) for t, (_, s) in zip(texts, hyps, strict=True)]
        return results
