"""run_prepare: raw parallel text -> clean/filter -> train SentencePiece -> binarized splits.

With tokenizer.from_run=RUN_DIR the run's tokenizer files are copied in instead of training
SentencePiece (`mt.runvocab`), and the text is cleaned to the run's Unicode form.

The output folder holds the SentencePiece model(s), the binarized splits (see `mt.shards`) and
`manifest.json`, written last, which records counts, drops, lengths, hashes and the resolved
config. Re-running with the same inputs and config reuses the folder ("up to date").
Text streams through in chunks (cleaned lines wait in files in the build folder), so memory
does not grow with the corpus beyond its token arrays and SentencePiece's sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from mt import __version__
from mt.clean import CleanReport, SplitCleaner
from mt.config import DataConfig, PrepareConfig, direction_pair, validate_prepare
from mt.corpus import CorpusReader, InputFile, Pairs, iter_lines, local_files, open_hub, open_local
from mt.errors import MTError
from mt.files import check_parents, fault, unchanged
from mt.manifest import FORMAT, Manifest, Vocab, read_manifest
from mt.runvocab import RunVocab, read_run_vocab
from mt.shards import SIDES, flatten, token_dtype, write_shard
from mt.tokenizer import AnyTokenizer, language_tag, load_tokenizer, train_sentencepiece

CLEAN_CHUNK = 100_000  # pairs read and cleaned at a time
ENCODE_CHUNK = 100_000  # lines encoded at a time
TEXT = "text"  # build subfolder of cleaned line files; removed before the output is installed

log = logging.getLogger("mt.prepare")


def _config_hash(cfg: PrepareConfig) -> str:
    """Hash of every setting that changes the output (not where it goes, nor the input path)."""
    settings = dataclasses.asdict(cfg)
    for key in ("out_dir", "force", "workers"):
        settings.pop(key)
    settings["data"].pop("path")
    if not settings["data"]["directions"]:  # one direction: the hash folders had before the key
        settings["data"].pop("directions")
    tokenizer = settings.pop("tokenizer")  # none: the hash folders had before the key
    if tokenizer["from_run"] is not None:  # the run's vocabulary, wherever it lies, replaces spm
        settings.pop("spm")
        vocab = Path(tokenizer["from_run"]) / "vocab.json"
        settings["from_run"] = json.loads(vocab.read_text("utf-8"))
        codes = {k: tokenizer[k] for k in ("src_lang", "tgt_lang") if tokenizer[k] is not None}
        if codes:
            settings["codes"] = codes
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass
class Direction:
    """One direction of the corpus: its data config, local files (None: the hub), and the tag
    its sources start with (None when the folder holds this one direction only)."""

    data: DataConfig
    files: dict[str, list[Path]] | None
    tag: str | None
    codes: tuple[str, str] | None = None
    """The language codes its sources and targets start with (tokenizer.from_run of an NLLB
    or M2M100 import), or None."""

    @property
    def name(self) -> str:
        return f"{self.data.src}-{self.data.tgt}"

    @property
    def prefixes(self) -> tuple[str | None, str | None]:
        """The piece each source and each target line starts with (None: nothing)."""
        return self.codes if self.codes else (self.tag, None)


def directions(data: DataConfig) -> list[Direction]:
    """data.directions as Directions (data.src-data.tgt alone when it is empty); sources are
    tagged only when there are several."""
    pairs = [direction_pair(d) for d in data.directions] or [(data.src, data.tgt)]
    out = []
    for src, tgt in pairs:
        one = dataclasses.replace(data, src=src, tgt=tgt)
        files = None if data.hub_id else local_files(one)
        out.append(Direction(one, files, language_tag(tgt) if len(pairs) > 1 else None))
    return out


def _input_files(dirs: list[Direction]) -> list[Path]:
    """Every local file read, once each (directions from one source share its files)."""
    paths = [p for d in dirs for paths in (d.files or {}).values() for p in paths]
    return list(dict.fromkeys(paths))


def _check_out_dir(out: Path) -> Manifest | None:
    """Refuse a folder that holds something other than an earlier `mt prepare` output."""
    if out.exists() and not out.is_dir():
        raise MTError(f"out_dir {out} exists and is not a folder; choose another out_dir.")
    manifest = read_manifest(out)
    if manifest is None and out.is_dir() and any(out.iterdir()):
        raise MTError(
            f"out_dir {out} is not empty and holds no mt manifest.json; choose another out_dir "
            "(nothing was written)."
        )
    return manifest


def _same_inputs(recorded: list[dict[str, Any]], files: list[Path]) -> bool:
    """True when the files are the recorded ones: same size and mtime, else same content."""
    if len(recorded) != len(files):
        return False
    for old, path in zip(recorded, files, strict=True):
        now = InputFile.stat(path)
        if now.path != old["path"] or now.size != old["size"]:
            return False
        if now.mtime_ns != old["mtime_ns"] and now.hash().sha256 != old["sha256"]:
            return False
    return True


def _up_to_date(manifest: Manifest | None, cfg: PrepareConfig, files: list[Path]) -> bool:
    if manifest is None or manifest.config_hash != _config_hash(cfg):
        return False
    return _same_inputs(manifest.source.get("files", []), files)


def _first(chunks: Iterator[Pairs], n: int) -> Iterator[Pairs]:
    """The first `n` pairs of `chunks`. The rest is still read, so a bad line there still fails."""
    for chunk in chunks:
        if n > 0:
            yield Pairs(chunk.src[:n], chunk.tgt[:n])
        n -= len(chunk)


def _write_lines(f: TextIO, lines: list[str]) -> None:
    # a cleaned line holds no "\n": normalization turned every whitespace run into one space
    if lines:
        f.write("\n".join(lines) + "\n")


def _clean_to(
    chunks: Iterator[Pairs],
    cleaner: SplitCleaner,
    f_src: TextIO,
    f_tgt: TextIO,
    prefixes: tuple[str | None, str | None],
) -> None:
    """Clean a split chunk by chunk into its two line files; the lines of each side start with
    its prefix piece (a language tag or code), if any."""
    for chunk in chunks:
        kept = cleaner.clean(chunk)
        for f, lines, tag in ((f_src, kept.src, prefixes[0]), (f_tgt, kept.tgt, prefixes[1])):
            _write_lines(f, lines if tag is None else [f"{tag} {line}" for line in lines])


def _merged(reports: list[CleanReport]) -> CleanReport:
    """One split's report summed over its directions."""
    total = CleanReport(read=0, kept=0, dropped={}, flagged={})
    for r in reports:
        total.read, total.kept = total.read + r.read, total.kept + r.kept
        for mine, theirs in ((total.dropped, r.dropped), (total.flagged, r.flagged)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
    return total


def _read_clean(
    corpora: list[tuple[CorpusReader, Direction]], cfg: PrepareConfig, text: Path
) -> dict[str, CleanReport]:
    """Read and clean every split in one streaming pass into the line files
    `text/{split}.src` and `.tgt`; several directions follow one another in them."""
    text.mkdir()
    reports = {}
    for split in corpora[0][0].readers:
        parts = []
        with (
            open(text / f"{split}.src", "w", encoding="utf-8", newline="\n") as f_src,
            open(text / f"{split}.tgt", "w", encoding="utf-8", newline="\n") as f_tgt,
        ):
            for corpus, direction in corpora:
                chunks = corpus.chunks(split, CLEAN_CHUNK)
                if split == "train" and cfg.data.max_train_pairs is not None:
                    chunks = _first(chunks, cfg.data.max_train_pairs)
                cleaner = SplitCleaner(cfg.clean, filter_pairs=split == "train")
                _clean_to(chunks, cleaner, f_src, f_tgt, direction.prefixes)
                parts.append(cleaner.report())
        reports[split] = parts[0] if len(parts) == 1 else _merged(parts)
    if reports["train"].kept == 0:
        dropped = ", ".join(f"{k} {v}" for k, v in reports["train"].dropped.items() if v)
        raise MTError(
            f"the training split is empty after cleaning ({reports['train'].read} pairs read"
            + (f"; dropped: {dropped}" if dropped else "")
            + ")."
        )
    return reports


def _train_spm(
    text: Path, cfg: PrepareConfig, build: Path, threads: int, tags: list[str]
) -> dict[str, str]:
    """Train the joint model or one per side; returns side -> model file name.

    The sentences stream from the cleaned training line files: source lines, then target.
    Language `tags` become user-defined pieces (never split).
    """
    symbols = list(dict.fromkeys([*cfg.spm.user_defined_symbols, *tags]))
    opts = dict(
        vocab_size=cfg.spm.vocab_size,
        model_type=cfg.spm.model_type,
        character_coverage=cfg.spm.character_coverage,
        byte_fallback=cfg.spm.byte_fallback,
        user_defined_symbols=symbols,
        input_sentence_size=cfg.spm.input_sentence_size,
        seed=cfg.seed,
        threads=threads,
    )
    src, tgt = text / "train.src", text / "train.tgt"
    if cfg.spm.joint:
        train_sentencepiece(
            itertools.chain(iter_lines(src), iter_lines(tgt)), build / "spm", **opts
        )
        return {"src": "spm.model", "tgt": "spm.model"}
    for lang, path in ((cfg.data.src, src), (cfg.data.tgt, tgt)):
        train_sentencepiece(iter_lines(path), build / f"spm.{lang}", **opts)
    return {"src": f"spm.{cfg.data.src}.model", "tgt": f"spm.{cfg.data.tgt}.model"}


def _length_stats(lengths: np.ndarray) -> dict[str, float]:
    if len(lengths) == 0:
        return {"tokens": 0, "mean": 0.0, "p95": 0.0, "max": 0}
    return {
        "tokens": int(lengths.sum()),
        "mean": round(float(lengths.mean()), 2),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
    }


def _encoded_chunks(
    tok: AnyTokenizer, path: Path, threads: int, tagged: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens, lengths) of the lines of `path`, ENCODE_CHUNK lines at a time; `tagged` lines
    start with a language tag."""
    dtype = token_dtype(tok.vocab_size)
    encode = tok.encode_tagged if tagged else tok.encode
    lines = iter_lines(path)
    while chunk := list(itertools.islice(lines, ENCODE_CHUNK)):
        yield flatten(encode(chunk, threads), dtype)


def _encode(
    text: Path,
    splits: list[str],
    models: dict[str, str],
    build: Path,
    threads: int,
    tagged: set[str],
) -> dict[str, Any]:
    """Encode every split's line files on `threads` threads into shards; returns length stats.
    The lines of the `tagged` sides start with a language tag or code.

    Lines are read ENCODE_CHUNK at a time; only a side's token arrays are held whole.
    """
    tokenizers = {side: load_tokenizer(build / name) for side, name in models.items()}
    stats: dict[str, Any] = {}
    for split in splits:
        stats[split] = {"pairs": 0}
        for side in SIDES:
            path = text / f"{split}.{side}"
            chunks = _encoded_chunks(tokenizers[side], path, threads, side in tagged)
            lengths = write_shard(build, split, side, chunks)
            stats[split].update({"pairs": len(lengths), side: _length_stats(lengths)})
    return stats


def _install(build: Path, out: Path, old: Manifest | None, manifest: Manifest) -> None:
    """Move the new files into `out`, drop files only the old manifest owned, write the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    for path in build.iterdir():
        os.replace(path, out / path.name)
    for name in set(old.files) - set(manifest.files) if old else ():
        (out / name).unlink(missing_ok=True)
    manifest.write(out)


def _print_report(reports: dict[str, CleanReport], out: Path, manifest: Manifest) -> None:
    header = f"{'split':<6} {'read':>9} {'kept':>9}  dropped (train) / flagged (valid, test)"
    print(header)
    for split, r in reports.items():
        counts = r.dropped if split == "train" else r.flagged
        detail = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "-"
        print(f"{split:<6} {r.read:>9,} {r.kept:>9,}  {detail}")
    t = manifest.timings_s
    print(
        f"wrote {out}: vocab {manifest.spm.vocab_size}, read+clean {t['read_clean']:.1f}s, "
        f"sentencepiece {t['spm']:.1f}s, encode {t['encode']:.1f}s"
    )


def _open(direction: Direction) -> CorpusReader:
    d = direction
    return open_hub(d.data) if d.files is None else open_local(d.data, d.files)


def _fingerprints(corpora: list[CorpusReader], dirs: list[Direction]) -> dict[str, str]:
    """The hub datasets' fingerprints: per split, and per direction when there are several."""
    if len(dirs) == 1:
        return corpora[0].fingerprints
    pairs = zip(corpora, dirs, strict=True)
    return {f"{d.name}/{k}": v for c, d in pairs for k, v in c.fingerprints.items()}


def _with_codes(dirs: list[Direction], reuse: RunVocab, cfg: PrepareConfig) -> list[Direction]:
    """The directions with the language codes of tokenizer.from_run's run, where it has them."""
    d = dirs[0].data
    codes = reuse.language_codes(d.src, d.tgt, cfg.tokenizer.src_lang, cfg.tokenizer.tgt_lang)
    if codes is None:
        return dirs
    if len(dirs) > 1:
        raise MTError(
            f"tokenizer.from_run={cfg.tokenizer.from_run} has language codes, and mt prepares "
            "such data one direction at a time: leave data.directions empty."
        )
    return [dataclasses.replace(dirs[0], codes=codes)]


def run_prepare(cfg: PrepareConfig) -> Manifest:
    """Build (or reuse) the data folder `cfg.out_dir`; returns its manifest.

    The text streams: read+clean writes cleaned lines to files in the build folder,
    SentencePiece and the encoder read them back, so no split is ever held as strings.
    """
    validate_prepare(cfg)
    reuse = None
    if cfg.tokenizer.from_run is not None:
        reuse = read_run_vocab(cfg.tokenizer.from_run, "tokenizer.from_run")
        cfg = dataclasses.replace(
            cfg, clean=dataclasses.replace(cfg.clean, normalize=reuse.normalize)
        )
    out = Path(cfg.out_dir)
    check_parents(out, "out_dir")
    old = _check_out_dir(out)
    dirs = directions(cfg.data)
    if reuse is not None:
        dirs = _with_codes(dirs, reuse, cfg)
    elif cfg.tokenizer.src_lang is not None or cfg.tokenizer.tgt_lang is not None:
        raise MTError(
            "tokenizer.src_lang and tokenizer.tgt_lang name the language codes of a "
            "tokenizer.from_run run; set tokenizer.from_run, or leave them unset."
        )
    hub = bool(cfg.data.hub_id)
    if not cfg.force and not hub and _up_to_date(old, cfg, _input_files(dirs)):
        print(f"{out} is up to date (same inputs and settings); force=true rebuilds it.")
        return old  # type: ignore[return-value]  (up to date implies a manifest)
    threads = cfg.workers or os.cpu_count() or 1
    start = time.perf_counter()
    corpora = [_open(d) for d in dirs]
    if hub and not cfg.force and old and old.config_hash == _config_hash(cfg):
        if old.source.get("fingerprints") == _fingerprints(corpora, dirs):
            print(f"{out} is up to date (same dataset and settings); force=true rebuilds it.")
            return old
    build = out.parent / f".{out.name}.build-{os.getpid()}"
    try:
        manifest, reports = _build(cfg, corpora, dirs, out, old, build, start, threads, reuse)
    except OSError as exc:  # full, read-only, no permission: out_dir is left as it was
        raise fault(exc, out, unchanged(out)) from None
    _print_report(reports, out, manifest)
    return manifest


def _build(
    cfg: PrepareConfig,
    corpora: list[CorpusReader],
    dirs: list[Direction],
    out: Path,
    old: Manifest | None,
    build: Path,
    start: float,
    threads: int,
    reuse: RunVocab | None = None,
) -> tuple[Manifest, dict[str, CleanReport]]:
    """Everything is written in `build` beside `out`, then moved into it; `reuse` is the run
    whose tokenizer files are copied in instead of training SentencePiece."""
    timings: dict[str, float] = {}
    build.mkdir(parents=True)
    text = build / TEXT
    try:
        tags = [d.tag for d in dirs if d.tag is not None]
        reports = _read_clean(list(zip(corpora, dirs, strict=True)), cfg, text)
        timings["read_clean"] = time.perf_counter() - start
        mark = time.perf_counter()
        models = reuse.install(build) if reuse else _train_spm(text, cfg, build, threads, tags)
        timings["spm"] = time.perf_counter() - mark
        mark = time.perf_counter()
        tagged = {side for d in dirs for side, p in zip(SIDES, d.prefixes, strict=True) if p}
        stats = _encode(text, list(reports), models, build, threads, tagged)
        timings["encode"] = time.perf_counter() - mark
        shutil.rmtree(text)  # the cleaned lines are not part of the output
        manifest = _manifest(cfg, corpora, dirs, reports, stats, models, build, timings, reuse)
        _install(build, out, old, manifest)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return manifest, reports


def _manifest(
    cfg: PrepareConfig,
    corpora: list[CorpusReader],
    dirs: list[Direction],
    reports: dict[str, CleanReport],
    stats: dict[str, Any],
    models: dict[str, str],
    build: Path,
    timings: dict[str, float],
    reuse: RunVocab | None,
) -> Manifest:
    source: dict[str, Any] = {"hub_id": cfg.data.hub_id, "hub_config": cfg.data.hub_config}
    if cfg.data.hub_id:
        source["fingerprints"] = _fingerprints(corpora, dirs)
    else:
        source["path"] = str(Path(cfg.data.path or ".").resolve())
        inputs = {f.path: f for c in corpora for f in c.inputs}  # a shared file once
        source["files"] = [dataclasses.asdict(f.hash()) for f in inputs.values()]
    tokenizers = {side: load_tokenizer(build / name) for side, name in models.items()}
    languages = {side: list(dict.fromkeys(getattr(d.data, side) for d in dirs)) for side in SIDES}
    return Manifest(
        format=FORMAT,
        mt_version=__version__,
        source=source,
        direction=",".join(d.name for d in dirs),
        src=",".join(languages["src"]),
        tgt=",".join(languages["tgt"]),
        normalize=cfg.clean.normalize,
        splits=stats,
        cleaning={split: dataclasses.asdict(r) for split, r in reports.items()},
        spm=Vocab(
            joint=reuse.joint if reuse else cfg.spm.joint,
            models=models,
            vocab_size=tokenizers["src"].vocab_size,
            tgt_vocab_size=tokenizers["tgt"].vocab_size,
            sha256={side: tok.sha256() for side, tok in tokenizers.items()},
            from_run=str(reuse.run.root.resolve()) if reuse else None,
        ),
        files=sorted(p.name for p in build.iterdir()),
        config_hash=_config_hash(cfg),
        config=dataclasses.asdict(cfg),
        timings_s={k: round(v, 3) for k, v in timings.items()},
        directions=[d.name for d in dirs] if len(dirs) > 1 else [],
        tags={d.data.tgt: d.tag for d in dirs if d.tag is not None},
        src_tag=dirs[0].codes[0] if dirs[0].codes else None,
        tgt_tag=dirs[0].codes[1] if dirs[0].codes else None,
    )
