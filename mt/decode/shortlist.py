"""Output-vocabulary shortlist for decoding (decode.shortlist), like Marian's lexical shortlist.

Per batch, search scores only a few candidate target ids instead of the whole vocabulary: the
output projection, log-softmax and top-k of a CPU decode step all scale with the vocabulary.
The candidates are the union of

* the K most frequent target pieces of the run's training data (decode.shortlist=K),
* for each distinct piece of the batch's sources, its N best target pieces among the others
  (decode.shortlist_per_source=N),
* bos, eos and unk, and the batch's target prefix and constraint ids, if any.

A source piece s ranks target pieces t by c(s, t), the number of training pairs with s in the
source and t in the target, i.e. by p(t | s); ties go to the lower id. Ranked that way the
pieces that are everywhere (".", "▁ein") come first for every s, but they are among the K
frequent ones, so they are skipped: the N taken are s's most likely pieces outside the K
frequent ones. Measured on Multi30k test2016, that covers more reference tokens per candidate
than ranking by the Dice coefficient, by PMI, or by c(s, t) / c(t) (which ranks pieces seen
once or twice first); docs/decoding.md has the coverage figures. The table keeps each source
piece's first 256 target pieces (MAX_DEPTH), so a large K can leave fewer than N new ones.

The table comes from the run's binarized training data (the data folder its config names:
`data_dir`, else `prepare_dir`) on first use, and is cached as RUN_DIR/shortlist.pt for the
run's vocabulary. Search slices the output projection's rows of the candidates once per batch
(`mt.decode.search`, `Seq2Seq.init_state(vocab=)`), so log-probs are normalized over the
candidates, as in Marian and CTranslate2 (vmap).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor

from mt.checkpoint import save_checkpoint
from mt.errors import MTError
from mt.manifest import load_manifest
from mt.rundir import RunDir
from mt.shards import Shard

log = logging.getLogger("mt.translate")

TABLE = "shortlist.pt"
FORMAT = "mt-shortlist/2"
MAX_DEPTH = 256
"""Target pieces kept per source piece; decode.shortlist_per_source is at most this."""
_CHUNK = 20_000  # sentence pairs counted at a time
_MERGE_AT = 20_000_000  # pending (source, target) counts that trigger a merge


@dataclass
class ShortlistTable:
    """What candidate ids are drawn from, for one vocabulary.

    frequent: every target id [V_tgt], most frequent in the training targets first.
    per_source: [V_src, MAX_DEPTH] target ids of each source id, the most co-occurring
        first (p(t | s)); -1 pads.
    sha256: hashes of the SentencePiece models it was counted with, {"src": ..., "tgt": ...}.
    """

    frequent: Tensor
    per_source: Tensor
    sha256: dict[str, str]

    def __post_init__(self) -> None:
        self.rank = torch.empty_like(self.frequent)  # [V_tgt] place of each id in `frequent`
        self.rank[self.frequent] = torch.arange(len(self.frequent))

    def candidates(self, src: Tensor, k: int, n: int, always: Iterable[int] = ()) -> Tensor:
        """Sorted distinct candidate ids [C] for a batch of sources src [B, S] (any padding):
        the k most frequent target ids, each source id's n best among the others, `always`."""
        src_ids = src.detach().cpu().flatten().unique()
        src_ids = src_ids[(src_ids >= 0) & (src_ids < self.per_source.size(0))]
        rows = self.per_source[src_ids]  # [U, MAX_DEPTH]
        new = (rows >= 0) & (self.rank[rows.clamp(min=0)] >= k)  # not among the k frequent
        taken = new & (new.cumsum(dim=1) <= n)  # the first n of those
        extra = torch.tensor(sorted(always), dtype=torch.long)
        return torch.cat([self.frequent[:k], rows[taken], extra]).unique()  # sorted

    def save(self, path: Path) -> None:
        """Write the table atomically, as checkpoints are written."""
        payload = {
            "format": FORMAT,
            "sha256": dict(self.sha256),
            "frequent": self.frequent.to(torch.int32),
            "per_source": self.per_source.to(_storage(len(self.frequent))),
        }
        save_checkpoint(payload, path)

    @classmethod
    def load(cls, path: Path) -> ShortlistTable | None:
        """The table in `path`, or None when it is missing or unreadable."""
        try:
            raw = torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError):
            return None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            return None
        return cls(raw["frequent"].long(), raw["per_source"].long(), dict(raw["sha256"]))


def _storage(vocab: int) -> torch.dtype:
    """The smallest integer dtype that holds ids below `vocab` and -1."""
    return torch.int16 if vocab <= torch.iinfo(torch.int16).max else torch.int32


def build_table(data_dir: Path, top: int = MAX_DEPTH) -> ShortlistTable:
    """Count the table from the train split of a prepared data folder (see the module doc)."""
    manifest = load_manifest(data_dir)
    v_src, v_tgt = manifest.spm.vocab_size, manifest.spm.tgt_vocab_size
    src, tgt = Shard.load(data_dir, "train", "src"), Shard.load(data_dir, "train", "tgt")
    if len(src) != len(tgt):
        raise MTError(f"{data_dir}: train has {len(src)} sources but {len(tgt)} targets.")
    frequent = np.bincount(np.asarray(tgt.tokens, dtype=np.int64), minlength=v_tgt)[:v_tgt]
    keys: list[np.ndarray] = []  # s * V_tgt + t of counted (s, t), with their counts
    counts: list[np.ndarray] = []
    pending = 0
    for lo in range(0, len(src), _CHUNK):
        hi = min(lo + _CHUNK, len(src))
        s_sent, s_tok = _distinct(src, lo, hi, v_src)
        t_sent, t_tok = _distinct(tgt, lo, hi, v_tgt)
        chunk_keys, chunk_counts = np.unique(
            _pairs(s_sent, s_tok, t_sent, t_tok, hi - lo, v_tgt), return_counts=True
        )
        keys.append(chunk_keys)
        counts.append(chunk_counts)
        pending += len(chunk_keys)
        if pending > _MERGE_AT:  # bounded memory on large corpora
            merged_keys, merged_counts = _merge(keys, counts)
            keys, counts, pending = [merged_keys], [merged_counts], len(merged_keys)
    key, count = _merge(keys, counts) if keys else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    s, t = key // v_tgt, key % v_tgt
    order = np.lexsort((t, -count, s))  # by source, most co-occurring first, then lower id
    s, t = s[order], t[order]
    rank = np.arange(len(s)) - np.searchsorted(s, s, side="left")
    keep = rank < top
    per_source = np.full((v_src, top), -1, dtype=np.int64)
    per_source[s[keep], rank[keep]] = t[keep]
    return ShortlistTable(
        torch.from_numpy(np.argsort(-frequent, kind="stable")),
        torch.from_numpy(per_source),
        dict(manifest.spm.sha256),
    )


def _distinct(shard: Shard, lo: int, hi: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(sentence - lo, id) of every distinct id of sentences lo..hi-1, by sentence then id."""
    offsets = shard.offsets[lo : hi + 1]
    ids = np.asarray(shard.tokens[offsets[0] : offsets[-1]], dtype=np.int64)
    sent = np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(offsets))
    key = np.unique(sent * vocab + np.minimum(ids, vocab - 1))
    return key // vocab, key % vocab


def _pairs(
    s_sent: np.ndarray, s_tok: np.ndarray, t_sent: np.ndarray, t_tok: np.ndarray, n: int, v_tgt: int
) -> np.ndarray:
    """s * V_tgt + t for every distinct source id s and target id t of each sentence pair."""
    t_start = np.searchsorted(t_sent, np.arange(n))  # [n] first target entry of each pair
    t_count = np.bincount(t_sent, minlength=n)
    reps = t_count[s_sent]  # targets to pair each source entry with
    total = int(reps.sum())
    first = np.repeat(t_start[s_sent] - (np.cumsum(reps) - reps), reps)
    t_index = first + np.arange(total)
    return np.repeat(s_tok, reps) * v_tgt + t_tok[t_index]


def _merge(keys: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One (sorted distinct keys, summed counts) from several."""
    if len(keys) == 1:
        return keys[0], counts[0]
    key, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    summed = np.bincount(inverse, weights=np.concatenate(counts), minlength=len(key))
    return key, summed.astype(np.int64)


def training_data(run_dir: Path) -> Path:
    """The prepared data folder a run trained on, as its config.yaml names it."""
    config = RunDir(run_dir).config
    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        raise MTError(
            f"decode.shortlist needs the run's training data, but {config} cannot be read."
        ) from None
    folder = cfg.get("data_dir") or cfg.get("prepare_dir")
    if not folder or not (Path(folder) / "train.tgt.tokens.npy").is_file():
        raise MTError(
            f"decode.shortlist needs the run's binarized training data, which {config} places "
            f"at {folder} (from {Path.cwd()}); run from where the run was trained, or drop "
            "decode.shortlist."
        )
    return Path(folder)


def load_shortlist(run_dir: Path, sha256: dict[str, str]) -> ShortlistTable:
    """RUN_DIR/shortlist.pt for the vocabulary of hashes `sha256`, counted (and cached) from
    the run's training data when missing or made for another vocabulary."""
    path = run_dir / TABLE
    table = ShortlistTable.load(path)
    if table is not None and table.sha256 == sha256:
        return table
    data_dir = training_data(run_dir)
    if dict(load_manifest(data_dir).spm.sha256) != sha256:
        raise MTError(
            f"decode.shortlist: the data folder {data_dir} has another vocabulary than the "
            f"run {run_dir}; drop decode.shortlist."
        )
    start = time.perf_counter()
    table = build_table(data_dir)
    log.info(
        "counted the decode.shortlist table from %s in %.1f s",
        data_dir, time.perf_counter() - start,
    )  # fmt: skip
    try:
        table.save(path)
    except OSError as exc:
        log.warning("could not cache the shortlist table in %s: %s", path, exc.strerror)
    return table
