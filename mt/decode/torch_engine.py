"""engine=torch: mt's own search over a loaded run (`TorchTranslator`).

Lines are sorted by length into token-budget batches, decoded (greedy, beam, sampling; with
prefixes, constraints and a shortlist), and handed back in input order; with
decode.inter_threads > 1 on CPU, several batches decode at once on a thread pool.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mt.config import DecodeConfig
from mt.data import batches_by_tokens
from mt.decode.alignment import check_layer, cross_attention, pharaoh, save_picture
from mt.decode.beam import beam_search
from mt.decode.constraints import Constraints
from mt.decode.ensemble import Ensemble
from mt.decode.greedy import greedy_search, sample
from mt.decode.inputs import constraint_ids, limits_for, one_line, prefix_ids, prepare_ids
from mt.decode.layout import for_decoding
from mt.decode.run import LoadedRun, for_target, tuned_decoding
from mt.decode.search import Hypothesis
from mt.decode.shortlist import ShortlistTable, load_shortlist
from mt.errors import MTError
from mt.runtime import autocast
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

log = logging.getLogger("mt.translate")


@dataclass
class _Job:
    """One batch ready to decode: the input lines it holds and its tensors."""

    rows: np.ndarray
    src: torch.Tensor
    prefix: torch.Tensor | None
    constraints: Constraints | None
    vocab: torch.Tensor | None


class TorchTranslator:
    """engine=torch: translates lists of sentences with one loaded run and decode settings."""

    def __init__(self, run: LoadedRun, decode: DecodeConfig, device: torch.device, precision: str):
        decode = tuned_decoding(run.run_dir, decode)
        if decode.ensemble_weights is not None:
            run = dataclasses.replace(run, model=_reweighted(run.model, decode.ensemble_weights))
        # int8 linear layers and output projection, or the fp32 one in oneDNN layout: on a copy
        run = dataclasses.replace(run, model=for_decoding(run.model, precision, device))
        run = for_target(run, decode.tgt_lang)
        self.run, self.decode, self.device, self.precision = run, decode, device, precision
        self.generator = torch.Generator(device=device).manual_seed(decode.seed)
        self.limits = limits_for(run, decode)
        self.shortlist = shortlist_table(run, decode)
        if decode.alignment or decode.attention_dir is not None:
            check_layer(run.model, decode.alignment_layer)

    def _search(
        self,
        src: torch.Tensor,
        prefix: torch.Tensor | None,
        constraints: Constraints | None,
        vocab: torch.Tensor | None = None,
    ) -> list[list[Hypothesis]]:
        d, mask, model, limits = self.decode, src == PAD_ID, self.run.model, self.limits
        if d.sampling:
            found = sample(
                model, src, mask, limits, topk=d.topk, topp=d.topp, temperature=d.temperature,
                generator=self.generator, prefix=prefix,
            )  # fmt: skip
            return [[h] for h in found]
        if d.beam == 1 and constraints is None:
            found = greedy_search(model, src, mask, limits, prefix, d.no_repeat_ngram, vocab)
            return [[h] for h in found]
        return beam_search(
            model, src, mask, limits, beam=d.beam, nbest=d.nbest, lenpen=d.lenpen, prefix=prefix,
            no_repeat_ngram=d.no_repeat_ngram, constraints=constraints, vocab=vocab,
        )  # fmt: skip

    def _candidates(
        self, src: torch.Tensor, prefixes: list[list[int]] | None, phrases: list[list[list[int]]]
    ) -> torch.Tensor | None:
        """The batch's output shortlist (sorted ids on the device), or None without one:
        decode.shortlist's ids, bos/eos/unk, and the ids of the batch's prefixes and
        constraints, which the outputs must be able to hold."""
        if self.shortlist is None:
            return None
        always = {BOS_ID, EOS_ID, UNK_ID}
        for seq in prefixes or []:
            always.update(seq)
        for line in phrases:
            for phrase in line:
                always.update(phrase)
        d = self.decode
        vocab = self.shortlist.candidates(src, d.shortlist, d.shortlist_per_source, always)
        return vocab.to(self.device)

    def translate(
        self,
        lines: list[str],
        where: str = "<input>",
        first_line: int = 1,
        prefixes: list[str] | None = None,
        constraints: list[list[str]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """n-best (text, score) lists for each line, in input order; empty lines give [].

        `prefixes` (one per line, "" for none) are target text every output must start with;
        `constraints` (a list of phrases per line) are target text every output must contain.
        """
        ids = prepare_ids(self.run, lines, where, first_line)
        forced = prefix_ids(self.run, self.decode, ids, prefixes, where, first_line)
        phrases = constraint_ids(self.run, self.decode, ids, constraints, where, first_line)
        results: list[list[tuple[str, float]]] = [[] for _ in lines]
        todo = np.array([i for i, seq in enumerate(ids) if seq], dtype=np.int64)
        lengths = np.array([len(ids[i]) + 1 for i in todo], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        d = self.decode

        def job(batch: np.ndarray) -> _Job:
            rows = todo[batch]
            src = torch.full((len(rows), int(lengths[batch].max())), PAD_ID, dtype=torch.long)
            for r, i in enumerate(rows):
                src[r, : len(ids[i]) + 1] = torch.tensor([*ids[i], EOS_ID])
            prefix = None if forced is None else _prefix_tensor([forced[i] for i in rows])
            cons = (
                None
                if phrases is None
                else Constraints.from_lists([phrases[i] for i in rows], self.device)
            )
            vocab = self._candidates(
                src,
                None if forced is None else [forced[i] for i in rows],
                [] if phrases is None else [phrases[i] for i in rows],
            )
            return _Job(rows, src.to(self.device), _to(prefix, self.device), cons, vocab)

        batches = batches_by_tokens(order, lengths, d.max_tokens, max_sentences=d.batch_size)
        for rows, found in self._decoded(job(batch) for batch in batches):
            for i, hyps in zip(rows, found, strict=True):
                if not hyps[0].complete:
                    log.warning(
                        "%s:%d: the output reached its length limit before every constraint "
                        "appeared (decode.max_len_a, decode.max_len_b)", where, first_line + i,
                    )  # fmt: skip
                texts = [one_line(t) for t in self.run.tgt_tok.decode([h.tokens for h in hyps])]
                texts = self._annotate(ids[i], hyps, texts, where, first_line + i)
                results[i] = [(t, h.score) for t, h in zip(texts, hyps, strict=True)]
        return results

    def _decoded(self, jobs: Iterator[_Job]) -> Iterator[tuple[np.ndarray, list[list[Hypothesis]]]]:
        """Each job's rows and hypotheses, in order. With decode.inter_threads N > 1 on CPU,
        N batches decode at once, each on 1/N of PyTorch's threads (restored afterwards)."""
        n = self.decode.inter_threads
        if n == 1 or self.device.type != "cpu" or self.decode.sampling:
            yield from ((job.rows, self._decode(job)) for job in jobs)
            return
        todo = list(jobs)  # at most decode.buffer_lines lines
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // n))
        try:
            with ThreadPoolExecutor(n) as pool:
                found = list(pool.map(self._decode, todo))
        finally:
            torch.set_num_threads(threads)
        # Every worker has finished before the caller sees a result: alignments and attention
        # pictures hook a decoder layer the workers would otherwise be running.
        yield from zip((job.rows for job in todo), found, strict=True)

    def _decode(self, job: _Job) -> list[list[Hypothesis]]:
        # autocast and no_grad are per thread: entered here, in the thread that decodes
        with autocast(self.precision, self.device):  # search runs under no_grad itself
            return self._search(job.src, job.prefix, job.constraints, job.vocab)

    def _annotate(
        self, src: list[int], hyps: list[Hypothesis], texts: list[str], where: str, line: int
    ) -> list[str]:
        """Alignments appended to the texts, and the attention picture of the best, if asked."""
        d = self.decode
        picture = d.attention_dir is not None and line <= d.attention_lines
        model = getattr(self.run.model, "members", [self.run.model])[0]  # an ensemble's first
        if not (d.alignment or picture):
            return texts
        src_pieces = [self.run.src_tok.sp.id_to_piece(t) for t in src]
        out = []
        for rank, (hyp, text) in enumerate(zip(hyps, texts, strict=True)):
            pieces = [self.run.tgt_tok.sp.id_to_piece(t) for t in hyp.tokens]
            weights = cross_attention(model, src, hyp.tokens, d.alignment_layer)
            if picture and rank == 0:
                path = Path(d.attention_dir) / f"{Path(where).name.strip('<>')}.{line:05d}.png"
                save_picture(weights, src_pieces, pieces, path, f"{where}:{line}: {text[:80]}")
            if d.alignment:
                text = f"{text}\t{pharaoh(weights.mean(0), src_pieces, pieces, d.alignment_unit)}"
            out.append(text)
        return out


def _reweighted(model: torch.nn.Module, weights: list[float]) -> torch.nn.Module:
    """The ensemble with its members weighted by `weights` (decode.ensemble_weights)."""
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    try:
        return Ensemble(members, [float(w) for w in weights]).eval()
    except ValueError as exc:
        raise MTError(f"decode.ensemble_weights: {exc}") from None


def _prefix_tensor(forced: list[list[int]]) -> torch.Tensor | None:
    """Prefix ids [B, P], -1 after each one's end; None when no row has one."""
    width = max(len(seq) for seq in forced)
    if width == 0:
        return None
    prefix = torch.full((len(forced), width), -1, dtype=torch.long)
    for r, seq in enumerate(forced):
        prefix[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return prefix


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def shortlist_table(run: LoadedRun, decode: DecodeConfig) -> ShortlistTable | None:
    """The table of decode.shortlist (counted and cached in the run folder on first use), or
    None when it is 0.

    Raises:
        MTError: If decode.shortlist is asked of sampling or an ensemble, in one sentence.
    """
    if not decode.shortlist:
        return None
    if decode.sampling:
        raise MTError(
            "decode.shortlist works with beam and greedy search only; drop it for "
            "decode.sampling=true."
        )
    if isinstance(run.model, Ensemble):
        raise MTError("decode.shortlist decodes one checkpoint; drop it for an ensemble.")
    if run.run_dir is None:
        raise MTError("decode.shortlist needs the run folder the model was loaded from.")
    sha256 = {"src": run.src_tok.sha256(), "tgt": run.tgt_tok.sha256()}
    return load_shortlist(run.run_dir, sha256)
