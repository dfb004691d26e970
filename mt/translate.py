"""run_translate: checkpoint -> batched search -> detokenized text, streamed file to file.

Input is read a buffer of lines at a time, sorted by length into batches, translated, and
written back in input order before the next buffer is read, so output starts early and memory
stays flat on any input size. An empty input line gives an empty output line.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from mt.alignment import check_layer, cross_attention, pharaoh, save_picture
from mt.checkpoint import load_checkpoint
from mt.clean import normalize
from mt.config import DecodeConfig, TranslateConfig, validate_decode
from mt.constraints import Constraints
from mt.data import pack_batches
from mt.decode.layout import for_decoding
from mt.errors import FileFault, MTError
from mt.files import Output, refuse_inputs
from mt.rundir import RunDir
from mt.runtime import autocast, setup_hardware
from mt.search import Hypothesis, Limits, beam_search, greedy_search, sample
from mt.shortlist import ShortlistTable, load_shortlist
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

log = logging.getLogger("mt.translate")


@dataclass
class LoadedRun:
    """A model ready for inference with its tokenizers and cleaning settings."""

    model: torch.nn.Module
    src_tok: Tokenizer
    tgt_tok: Tokenizer
    normalize_form: str
    max_len: int
    checkpoint: Path
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    """A multilingual run's target languages and their source tags ({} when bilingual)."""
    tgt: str = ""
    """A bilingual run's target language ("" when unknown)."""
    src_tag: int | None = None
    """Id every source starts with: the tag of decode.tgt_lang (see `for_target`)."""
    run_dir: Path | None = None
    """The run folder it was loaded from (decode.shortlist caches its table there)."""


def load_run(run_dir: Path, checkpoint: Any, device: torch.device) -> LoadedRun:
    """Rebuild the model from a checkpoint and check its vocabulary against the run's.

    `checkpoint` is a path, None (the run's pick), or a list of paths: an `Ensemble` of models
    of one vocabulary, equally weighted (`set_ensemble_weights` changes that).
    """
    from mt.ensemble import Ensemble

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
        tok = Tokenizer(spm_path)
        if tok.sha256() != vocab["sha256"][side]:
            raise MTError(f"{paths[0]} was trained with another vocabulary than {spm_path}.")
        tokenizers[side] = tok
    return LoadedRun(
        models[0] if len(models) == 1 else Ensemble(models).eval(),
        tokenizers["src"],
        tokenizers["tgt"],
        _normalize_form(ckpts[0]),
        min(c["model_args"]["max_positions"] for c in ckpts),
        paths[0],
        **_languages(ckpts[0]),
        run_dir=Path(run_dir),
    )


def _languages(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The tags of a multilingual checkpoint, or the target language of a bilingual one."""
    data = ckpt.get("data", {})
    if data.get("tags"):
        return {"tags": dict(data["tags"])}
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
        return dataclasses.replace(run, src_tag=run.src_tok.piece_id(run.tags[tgt_lang]))
    if tgt_lang is not None and run.tgt and tgt_lang != run.tgt:
        raise MTError(
            f"decode.tgt_lang={tgt_lang}: {run.checkpoint} translates into {run.tgt} only."
        )
    return run


def _load_model(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    from mt.model import transformer

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


def _reweighted(model: torch.nn.Module, weights: list[float]) -> torch.nn.Module:
    """The ensemble with its members weighted by `weights` (decode.ensemble_weights)."""
    from mt.ensemble import Ensemble

    members = list(model.members) if isinstance(model, Ensemble) else [model]
    try:
        return Ensemble(members, [float(w) for w in weights]).eval()
    except ValueError as exc:
        raise MTError(f"decode.ensemble_weights: {exc}") from None


def prepare_ids(run: LoadedRun, lines: list[str], where: str, first_line: int) -> list[list[int]]:
    """Source ids of each line as the model was trained on them: normalized, encoded, and cut
    to the model's length (room for eos) with a warning naming the line."""
    ids = run.src_tok.encode(normalize(lines, run.normalize_form))
    if run.src_tag is not None:  # empty lines stay empty (they are not translated)
        ids = [[run.src_tag, *seq] if seq else seq for seq in ids]
    limit = run.max_len - 1  # room for eos
    for i, seq in enumerate(ids):
        if len(seq) > limit:
            log.warning(
                "%s:%d: %d tokens, truncated to the model's limit of %d",
                where, first_line + i, len(seq), limit,
            )  # fmt: skip
            ids[i] = seq[:limit]
    return ids


@dataclass
class _Job:
    """One batch ready to decode: the input lines it holds and its tensors."""

    rows: np.ndarray
    src: torch.Tensor
    prefix: torch.Tensor | None
    constraints: Constraints | None
    vocab: torch.Tensor | None


class Translator:
    """Translates lists of sentences with one loaded run and decode settings."""

    def __init__(self, run: LoadedRun, decode: DecodeConfig, device: torch.device, precision: str):
        if decode.ensemble_weights is not None:
            run = dataclasses.replace(run, model=_reweighted(run.model, decode.ensemble_weights))
        # int8 linear layers and output projection, or the fp32 one packed for CPU: on a copy
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

        batches = pack_batches(order, lengths, d.max_tokens, max_sentences=d.batch_size)
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


def shortlist_table(run: LoadedRun, decode: DecodeConfig) -> ShortlistTable | None:
    """The table of decode.shortlist (counted and cached in the run folder on first use), or
    None when it is 0.

    Raises:
        MTError: If decode.shortlist is asked of sampling or an ensemble, in one sentence.
    """
    if not decode.shortlist:
        return None
    from mt.ensemble import Ensemble

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


def limits_for(run: LoadedRun, decode: DecodeConfig) -> Limits:
    """Where outputs start and end for this run and these decode settings."""
    return Limits(
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        max_len_a=decode.max_len_a,
        max_len_b=decode.max_len_b,
        max_len=run.max_len - 1,  # bos takes the first of the model's positions
    )


def output_caps(run: LoadedRun, decode: DecodeConfig, src_lengths: list[int]) -> list[int]:
    """The cap on output tokens (before eos) of sources of `src_lengths` tokens, eos included."""
    return limits_for(run, decode).caps(torch.tensor(src_lengths, dtype=torch.long)).tolist()


def prefix_ids(
    run: LoadedRun,
    decode: DecodeConfig,
    ids: list[list[int]],
    prefixes: list[str] | None,
    where: str,
    first_line: int,
) -> list[list[int]] | None:
    """Target ids of each line's prefix, or None without prefixes.

    Raises:
        MTError: If a prefix is longer than its line's output may be, naming the line.
    """
    if prefixes is None or not any(p.strip() for p in prefixes):
        return None
    forced = run.tgt_tok.encode(normalize(prefixes, run.normalize_form))
    caps = output_caps(run, decode, [len(seq) + 1 for seq in ids])
    for i, (seq, cap) in enumerate(zip(forced, caps, strict=True)):
        if len(seq) > cap:
            raise MTError(
                f"{where}:{first_line + i}: the target prefix has {len(seq)} tokens, more than "
                f"the {cap} this line's output may have (decode.max_len_a, decode.max_len_b)."
            )
    return forced


def constraint_ids(
    run: LoadedRun,
    decode: DecodeConfig,
    ids: list[list[int]],
    constraints: list[list[str]] | None,
    where: str,
    first_line: int,
) -> list[list[list[int]]] | None:
    """Target ids of each line's constraint phrases, or None without any.

    A line whose phrases hold more tokens than its output may have is warned about by line: its
    output then holds as many of them as fit.
    """
    if constraints is None or not any(constraints):
        return None
    phrases = [run.tgt_tok.encode(normalize(line, run.normalize_form)) for line in constraints]
    caps = output_caps(run, decode, [len(seq) + 1 for seq in ids])
    for i, (line, cap) in enumerate(zip(phrases, caps, strict=True)):
        if sum(map(len, line)) > cap:
            log.warning(
                "%s:%d: the constraints have %d tokens, more than the %d this line's output may "
                "have; not all of them can appear", where, first_line + i, sum(map(len, line)), cap,
            )  # fmt: skip
    return phrases


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


# Every character that Python's str.splitlines() (and so many readers) treats as a line end.
_LINE_BREAKS = str.maketrans(dict.fromkeys("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029", " "))


def one_line(text: str) -> str:
    """`text` with line-ending characters as spaces, so one output line stays one line.

    Byte-fallback pieces can decode to any character, including line ends: an untrained or
    unlucky model must still write exactly one line per input line.
    """
    return text.translate(_LINE_BREAKS)


MAX_LINE_BYTES = 1_000_000


def read_buffers(
    paths: list[str], size: int, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[str, int, list[str]]]:
    """(file name, first line number, lines) buffers of at most `size` lines, strictly UTF-8.

    A line is read with a bound: one longer than `max_line_bytes` is refused with its file and
    line number, before a file without line ends can fill the memory.
    """
    for path in paths:
        name = "<stdin>" if path == "-" else path
        with _open_input(path) as f:
            buffer, first = [], 1
            for number, raw in enumerate(_bounded_lines(f, name, max_line_bytes), start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise MTError(
                        f"{name}:{number}: byte 0x{raw[exc.start]:02x} is not valid UTF-8."
                    ) from None
                buffer.append(line.rstrip("\n").rstrip("\r"))
                if len(buffer) == size:
                    yield name, first, buffer
                    buffer, first = [], number + 1
            if buffer:
                yield name, first, buffer


def _bounded_lines(f: IO[bytes], name: str, limit: int) -> Iterator[bytes]:
    number = 0
    while raw := f.readline(limit + 1):
        number += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            raise MTError(
                f"{name}:{number}: the line is longer than {limit:,} bytes; raise "
                "decode.max_line_bytes to read it."
            )
        yield raw


@contextmanager
def _open_input(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise MTError(f"cannot read input {path}: {exc.strerror}.") from None
    with f:
        yield f


def _format(results: list[list[tuple[str, float]]], nbest: int, first_line: int) -> str:
    if nbest == 1:
        return "".join(f"{hyps[0][0] if hyps else ''}\n" for hyps in results)
    lines = []
    for offset, hyps in enumerate(results):
        lines += [f"{first_line + offset}\t{score:.4f}\t{text}\n" for text, score in hyps]
    return "".join(lines)


def as_list(value: Any) -> list[str]:
    """A path or a list of paths from a config value."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


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


INPUT_FORMATS = ("text", "tsv")


def translate_files(
    translator: Any, inputs: list[str], output: str, input_format: str = "text"
) -> int:
    """Stream `inputs` through the translator into `output`; returns the lines translated.

    input_format=tsv reads `source<TAB>target prefix` lines; decode.prefix names a file of
    prefixes, one per input line, and decode.constraints a file of tab-separated phrases.
    """
    if input_format not in INPUT_FORMATS:
        raise MTError(f"input_format={input_format!r} is not one of {', '.join(INPUT_FORMATS)}.")
    d = translator.decode
    prefix_lines = _SideLines("decode.prefix", d.prefix)
    constraint_lines = _SideLines("decode.constraints", d.constraints)
    out = Output(output)
    try:
        for name, first, lines in read_buffers(inputs, d.buffer_lines):
            prefixes = prefix_lines.take(len(lines))
            if input_format == "tsv":
                pairs = [line.split("\t", 1) for line in lines]
                lines, prefixes = [p[0] for p in pairs], [p[1] if len(p) > 1 else "" for p in pairs]
            phrases = constraint_lines.take(len(lines))
            if phrases is not None:
                phrases = [[p for p in line.split("\t") if p.strip()] for line in phrases]
            extra = {} if phrases is None else {"constraints": phrases}
            results = translator.translate(lines, name, first, prefixes, **extra)
            out.write(_format(results, d.nbest, first))
            out.commit(len(lines))
        prefix_lines.check_end()
        constraint_lines.check_end()
        out.close()
    except FileFault as exc:
        raise FileFault(f"{str(exc).rstrip('.')}; {out.abandon()}.", exc.path) from None
    except BaseException:
        kept = out.abandon()  # failed or interrupted: the output is left as it was
        if out.lines and kept:
            log.warning("translation stopped after %d input lines: %s.", out.lines, kept)
        raise
    return out.lines


class _SideLines:
    """The lines of a file that goes line by line with the input (decode.prefix, ...)."""

    def __init__(self, key: str, path: str | None) -> None:
        self.key, self.path = key, path
        self._lines = None
        if path is not None:
            self._lines = (line for _, _, buffer in read_buffers([path], 2000) for line in buffer)

    def take(self, n: int) -> list[str] | None:
        """The next n lines, or None without a file."""
        if self._lines is None:
            return None
        lines = [next(self._lines, None) for _ in range(n)]
        if None in lines:
            raise MTError(f"{self.key} {self.path} has fewer lines than the input.")
        return lines  # type: ignore[return-value]

    def check_end(self) -> None:
        """Refuse a file with more lines than the input had."""
        if self._lines is not None and next(self._lines, None) is not None:
            raise MTError(f"{self.key} {self.path} has more lines than the input.")


def side_inputs(decode: DecodeConfig) -> list[str]:
    """The files besides the input that decoding reads line by line."""
    return [p for p in (decode.prefix, decode.constraints) if p]


def run_files(run: LoadedRun) -> list[Path]:
    """The files of a loaded run that an output must never replace."""
    files = [run.checkpoint, run.src_tok.path, run.tgt_tok.path]
    if run.run_dir is not None:
        files += [run.run_dir / "config.yaml", *run.run_dir.glob("checkpoints/*.pt")]
    return files


ENGINES = ("torch", "ctranslate2")


def make_translator(
    run: LoadedRun, decode: DecodeConfig, device: torch.device, precision: str, engine: str
) -> Any:
    """mt's own search (engine=torch) or CTranslate2's on an export of the run."""
    if engine not in ENGINES:
        raise MTError(f"engine={engine!r} is not one of {', '.join(ENGINES)}.")
    if engine == "ctranslate2":
        from mt.ct2 import CT2Translator

        if decode.shortlist:
            raise MTError(
                "decode.shortlist needs engine=torch; engine=ctranslate2 scores the whole "
                "vocabulary."
            )
        return CT2Translator(run, decode, device, precision)
    return Translator(run, decode, device, precision)


def run_translate(cfg: TranslateConfig) -> int:
    """Translate cfg.input into cfg.output; returns the number of input lines."""
    validate_decode(cfg.decode)
    inputs = as_list(cfg.input)
    refuse_inputs(cfg.output, [*inputs, *side_inputs(cfg.decode)])
    device, precision = setup_inference(cfg.device, cfg.precision, cfg.threads)
    run = load_run(Path(cfg.run_dir), cfg.checkpoint, device)
    refuse_inputs(cfg.output, run_files(run))
    translator = make_translator(run, cfg.decode, device, precision, cfg.engine)
    total = translate_files(translator, inputs, cfg.output, cfg.input_format)
    log.info("translated %d lines with %s", total, run.checkpoint)
    return total
