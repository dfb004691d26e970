"""Raw parallel text in: local files (aligned text, TSV, JSONL; optionally gzipped) or the hub.

Every split is read as a stream of chunks, so a corpus larger than memory can be cleaned.
Local files are read strictly: bytes that are not UTF-8, a malformed line or mismatched line
counts raise MTError naming the file and line. Hub datasets (and local dataset folders) go
through `datasets.load_dataset`, in both the two-column and the `translation`-dict layouts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import TypeVar

from mt.config import DataConfig
from mt.errors import MTError

CHUNK = 100_000
"""Pairs per chunk when a split is streamed."""
BLOCK = 1 << 24
"""Bytes read from a file at a time (16 MiB)."""

T = TypeVar("T")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Pairs:
    """Aligned source and target sentences of one split (or of a chunk of it)."""

    src: list[str]
    tgt: list[str]

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class InputFile:
    """A local file the corpus was read from, with what tells whether it changed."""

    path: str
    size: int
    mtime_ns: int
    sha256: str = ""

    @classmethod
    def stat(cls, path: Path) -> InputFile:
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns)

    def hash(self) -> InputFile:
        """Fill in the content hash (reads the whole file)."""
        self.sha256 = file_sha256(Path(self.path))
        return self


@dataclass
class Corpus:
    """Every split of a corpus in memory, plus the inputs that produced it."""

    splits: dict[str, Pairs]
    inputs: list[InputFile] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)


@dataclass
class CorpusReader:
    """Every split of a corpus as a stream of chunks, read when asked for, plus its inputs.

    `readers` maps a split to a function of the chunk size that starts reading it afresh.
    """

    readers: dict[str, Callable[[int], Iterator[Pairs]]]
    inputs: list[InputFile] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)

    def chunks(self, split: str, size: int = CHUNK) -> Iterator[Pairs]:
        """The pairs of `split`, `size` at a time (the last chunk may be shorter)."""
        return self.readers[split](size)

    def load(self) -> Corpus:
        """Every split in memory: for small corpora."""
        splits = {}
        for split in self.readers:
            src, tgt = [], []
            for chunk in self.chunks(split):
                src += chunk.src
                tgt += chunk.tgt
            splits[split] = Pairs(src, tgt)
        return Corpus(splits, self.inputs, self.fingerprints)


def split_names(data: DataConfig) -> dict[str, str]:
    """Map our split names (train/valid/test) to the corpus' names, skipping unset ones."""
    names = {"train": data.train, "valid": data.valid, "test": data.test}
    return {ours: theirs for ours, theirs in names.items() if theirs}


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` consecutive items (the last may be shorter)."""
    items = iter(items)
    while batch := list(islice(items, size)):
        yield batch


# ---------------------------------------------------------------- local files


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def detect_format(data: DataConfig) -> str:
    """Pick text/tsv/jsonl from the files present for the training split."""
    if data.format != "auto":
        return data.format
    folder = Path(data.path or ".")
    for fmt, stem in (
        ("text", f"{data.train}.{data.src}"),
        ("tsv", f"{data.train}.tsv"),
        ("jsonl", f"{data.train}.jsonl"),
    ):
        if _find(folder, stem):
            return fmt
    raise MTError(
        f"found no training data in {folder}: expected {data.train}.{data.src}[.gz] and "
        f"{data.train}.{data.tgt}[.gz], {data.train}.tsv[.gz] or {data.train}.jsonl[.gz]."
    )


def local_files(data: DataConfig) -> dict[str, list[Path]]:
    """The files each split reads, in column order; raises MTError for a missing one."""
    folder = Path(data.path or ".")
    if not folder.is_dir():
        raise MTError(f"data.path {folder} is not a folder.")
    fmt = detect_format(data)
    stems = {
        split: [f"{name}.{data.src}", f"{name}.{data.tgt}"] if fmt == "text" else [f"{name}.{fmt}"]
        for split, name in split_names(data).items()
    }
    files: dict[str, list[Path]] = {}
    for split, names in stems.items():
        found = [_find(folder, name) for name in names]
        for name, path in zip(names, found, strict=True):
            if path is None:
                raise MTError(f"missing file {folder / name} (nor {name}.gz) for split '{split}'.")
        files[split] = [p for p in found if p is not None]
    return files


def _decode(path: Path, raw: bytes, lines_before: int) -> str:
    """`raw` (whole lines of `path`, after `lines_before` lines) as text; MTError names the line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = lines_before + raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise MTError(
            f"{path}:{line}: byte 0x{raw[exc.start]:02x} at column {column} is not valid UTF-8."
        ) from None


def _raw_blocks(path: Path) -> Iterator[bytes]:
    """The bytes of a file (gunzipped if it ends in .gz), cut after a newline where one is near."""
    try:
        with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
            carry = b""
            while block := f.read(BLOCK):
                block = carry + block
                cut = block.rfind(b"\n") + 1  # a "\n" byte never sits inside a UTF-8 sequence
                carry = block[cut:]
                if cut:
                    yield block[:cut]
            if carry:
                yield carry
    except (OSError, EOFError, zlib.error) as exc:
        raise MTError(f"cannot read {path}: {exc}.") from None


def iter_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (gzip if it ends in .gz), read block by block.

    Line endings are dropped, and so is a byte-order mark at the start. Lines end at "\\n"
    only: str.splitlines() would also break at U+2028, \\x1c, \\r ... inside a line.
    """
    lines_before, held = 0, False
    for raw in _raw_blocks(path):
        text = _decode(path, raw, lines_before)
        if lines_before == 0:
            text = text.removeprefix("\ufeff")
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        if held:  # something follows the first line: it was an empty line after all
            yield ""
        # a file that is a lone "\n" has no lines (as when files were read whole): hold it
        held = lines_before == 0 and lines == [""]
        if not held:
            yield from lines
        lines_before += len(lines)


def read_lines(path: Path) -> list[str]:
    """All lines of a UTF-8 text file (gzip if it ends in .gz), without line endings."""
    return list(iter_lines(path))


def _text_chunks(src_path: Path, tgt_path: Path, size: int) -> Iterator[Pairs]:
    src_lines, tgt_lines = iter_lines(src_path), iter_lines(tgt_path)
    done = 0
    while True:
        src, tgt = list(islice(src_lines, size)), list(islice(tgt_lines, size))
        if len(src) != len(tgt):
            n_src = done + len(src) + sum(1 for _ in src_lines)
            n_tgt = done + len(tgt) + sum(1 for _ in tgt_lines)
            raise MTError(
                f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}; "
                "aligned files need one line per sentence pair."
            )
        if not src:
            return
        done += len(src)
        yield Pairs(src, tgt)


def _tsv_chunks(path: Path, data: DataConfig, size: int) -> Iterator[Pairs]:
    lines = iter_lines(path)
    columns, number = data.tsv_columns, 1
    if columns is None:
        header = next(lines, None)
        if header is None:
            raise MTError(f"{path} is empty: expected a header row naming the languages.")
        columns, number = header.strip().split("\t"), 2
    for lang in (data.src, data.tgt):
        if lang not in columns:
            raise MTError(f"{path}: no column '{lang}' among {columns} (set data.tsv_columns).")
    i_src, i_tgt = columns.index(data.src), columns.index(data.tgt)
    for batch in _batched(lines, size):
        rows = [line.split("\t") for line in batch]
        for row in rows:
            if len(row) != len(columns):
                raise MTError(
                    f"{path}:{number}: expected {len(columns)} tab-separated fields, "
                    f"found {len(row)}."
                )
            number += 1
        yield Pairs([r[i_src] for r in rows], [r[i_tgt] for r in rows])


def _jsonl_pair(path: Path, number: int, line: str, src: str, tgt: str) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MTError(f"{path}:{number}: not valid JSON ({exc.msg}).") from None
    if isinstance(record, dict) and isinstance(record.get("translation"), dict):
        record = record["translation"]
    if not isinstance(record, dict):
        raise MTError(f"{path}:{number}: expected a JSON object.")
    for lang in (src, tgt):
        if not isinstance(record.get(lang), str):
            raise MTError(f"{path}:{number}: no string field '{lang}'.")
    return record[src], record[tgt]


def _jsonl_chunks(path: Path, data: DataConfig, size: int) -> Iterator[Pairs]:
    pairs = (
        _jsonl_pair(path, number, line, data.src, data.tgt)
        for number, line in enumerate(iter_lines(path), start=1)
        if line.strip()
    )
    for batch in _batched(pairs, size):
        yield Pairs([s for s, _ in batch], [t for _, t in batch])


def open_local(data: DataConfig, files: dict[str, list[Path]]) -> CorpusReader:
    """Every split of local files (see `local_files`), read when its chunks are asked for."""
    fmt = detect_format(data)
    readers: dict[str, Callable[[int], Iterator[Pairs]]] = {}
    for split, paths in files.items():
        if fmt == "text":
            readers[split] = partial(_text_chunks, paths[0], paths[1])
        elif fmt == "tsv":
            readers[split] = partial(_tsv_chunks, paths[0], data)
        else:
            readers[split] = partial(_jsonl_chunks, paths[0], data)
    inputs = [InputFile.stat(p) for paths in files.values() for p in paths]
    return CorpusReader(readers, inputs)


# ---------------------------------------------------------------- hub


def _hub_columns(ds: object, data: DataConfig, split: str) -> tuple[object, list[str]]:
    """The dataset with the two language columns at top level, and their names."""
    columns = list(ds.column_names)  # type: ignore[attr-defined]
    if "translation" in columns:
        flat = ds.flatten()  # type: ignore[attr-defined]
        columns = list(flat.column_names)
        wanted = [f"translation.{data.src}", f"translation.{data.tgt}"]
    else:
        flat, wanted = ds, [data.src, data.tgt]
    for column in wanted:
        if column not in columns:
            raise MTError(
                f"dataset {data.hub_id} split '{split}' has no column '{column}' "
                f"(columns: {', '.join(columns)})."
            )
    return flat.select_columns(wanted), wanted  # type: ignore[attr-defined]


def _hub_chunks(ds: object, wanted: list[str], size: int) -> Iterator[Pairs]:
    for batch in ds.iter(batch_size=size):  # type: ignore[attr-defined]
        yield Pairs(list(batch[wanted[0]]), list(batch[wanted[1]]))


def open_hub(data: DataConfig) -> CorpusReader:
    """Open every split with `datasets.load_dataset(hub_id, hub_config, split=...)`.

    The datasets stay memory-mapped Arrow tables; their rows become strings chunk by chunk.
    """
    import datasets

    readers: dict[str, Callable[[int], Iterator[Pairs]]] = {}
    fingerprints: dict[str, str] = {}
    for split, name in split_names(data).items():
        try:
            ds = datasets.load_dataset(data.hub_id, data.hub_config, split=name)
        except (ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MTError(f"cannot load split '{name}' of dataset {data.hub_id}: {first}") from None
        except (OSError, ConnectionError) as exc:
            raise MTError(f"cannot load dataset {data.hub_id} from the hub: {exc}") from None
        readers[split] = partial(_hub_chunks, *_hub_columns(ds, data, name))
        fingerprints[split] = ds._fingerprint
    return CorpusReader(readers, fingerprints=fingerprints)


def open_corpus(data: DataConfig) -> CorpusReader:
    """Open every split of the configured corpus, from the hub or from local files."""
    if data.hub_id:
        return open_hub(data)
    return open_local(data, local_files(data))


def load_corpus(data: DataConfig) -> Corpus:
    """Load every split of the configured corpus into memory (small corpora)."""
    return open_corpus(data).load()
