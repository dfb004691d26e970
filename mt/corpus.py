"""Raw parallel text in: local files (aligned text, TSV, JSONL; optionally gzipped) or the hub.

Local files are read strictly: bytes that are not UTF-8, a malformed line or mismatched line
counts raise MTError naming the file and line. Hub datasets (and local dataset folders) go
through `datasets.load_dataset`, in both the two-column and the `translation`-dict layouts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from mt.config import DataConfig
from mt.errors import MTError


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Pairs:
    """Aligned source and target sentences of one split."""

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
    """Every split of a corpus, plus the inputs that produced it."""

    splits: dict[str, Pairs]
    inputs: list[InputFile] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)


def split_names(data: DataConfig) -> dict[str, str]:
    """Map our split names (train/valid/test) to the corpus' names, skipping unset ones."""
    names = {"train": data.train, "valid": data.valid, "test": data.test}
    return {ours: theirs for ours, theirs in names.items() if theirs}


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


def read_lines(path: Path) -> list[str]:
    """All lines of a UTF-8 text file (gzip if it ends in .gz), without line endings."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise MTError(f"cannot read {path}: {exc}.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise MTError(
            f"{path}:{line}: byte 0x{raw[exc.start]:02x} at column {column} is not valid UTF-8."
        ) from None
    text = text.removeprefix("\ufeff")
    if text.endswith("\n"):
        text = text[:-1]
    # split on "\n" only: str.splitlines() would also break at U+2028, \x1c, \r ... inside a line
    return text.split("\n") if text else []


def _read_text_pair(src_path: Path, tgt_path: Path) -> Pairs:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise MTError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            "aligned files need one line per sentence pair."
        )
    return Pairs(src, tgt)


def _read_tsv(path: Path, data: DataConfig) -> Pairs:
    lines = read_lines(path)
    columns, first = data.tsv_columns, 1
    if columns is None:
        if not lines:
            raise MTError(f"{path} is empty: expected a header row naming the languages.")
        columns, lines, first = lines[0].strip().split("\t"), lines[1:], 2
    for lang in (data.src, data.tgt):
        if lang not in columns:
            raise MTError(f"{path}: no column '{lang}' among {columns} (set data.tsv_columns).")
    i_src, i_tgt = columns.index(data.src), columns.index(data.tgt)
    rows = [line.split("\t") for line in lines]
    for number, row in enumerate(rows, start=first):
        if len(row) != len(columns):
            raise MTError(
                f"{path}:{number}: expected {len(columns)} tab-separated fields, found {len(row)}."
            )
    return Pairs([r[i_src] for r in rows], [r[i_tgt] for r in rows])


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


def _read_jsonl(path: Path, data: DataConfig) -> Pairs:
    pairs = [
        _jsonl_pair(path, number, line, data.src, data.tgt)
        for number, line in enumerate(read_lines(path), start=1)
        if line.strip()
    ]
    return Pairs([s for s, _ in pairs], [t for _, t in pairs])


def load_local(data: DataConfig, files: dict[str, list[Path]]) -> Corpus:
    """Read every split from local files (see `local_files`)."""
    fmt = detect_format(data)
    splits: dict[str, Pairs] = {}
    for split, paths in files.items():
        if fmt == "text":
            splits[split] = _read_text_pair(paths[0], paths[1])
        elif fmt == "tsv":
            splits[split] = _read_tsv(paths[0], data)
        else:
            splits[split] = _read_jsonl(paths[0], data)
    inputs = [InputFile.stat(p) for paths in files.values() for p in paths]
    return Corpus(splits, inputs)


# ---------------------------------------------------------------- hub


def _hub_pairs(ds: object, data: DataConfig, split: str) -> Pairs:
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
    return Pairs(list(flat[wanted[0]]), list(flat[wanted[1]]))


def load_hub(data: DataConfig) -> Corpus:
    """Load every split with `datasets.load_dataset(hub_id, hub_config, split=...)`."""
    import datasets

    splits: dict[str, Pairs] = {}
    fingerprints: dict[str, str] = {}
    for split, name in split_names(data).items():
        try:
            ds = datasets.load_dataset(data.hub_id, data.hub_config, split=name)
        except (ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MTError(f"cannot load split '{name}' of dataset {data.hub_id}: {first}") from None
        except (OSError, ConnectionError) as exc:
            raise MTError(f"cannot load dataset {data.hub_id} from the hub: {exc}") from None
        splits[split] = _hub_pairs(ds, data, name)
        fingerprints[split] = ds._fingerprint
    return Corpus(splits, fingerprints=fingerprints)


def load_corpus(data: DataConfig) -> Corpus:
    """Load every split of the configured corpus, from the hub or from local files."""
    if data.hub_id:
        return load_hub(data)
    return load_local(data, local_files(data))
