"""Cross-attention of a finished translation: Pharaoh alignments and attention pictures.

Search runs on SDPA, which returns no weights; so once a hypothesis is chosen, the model reads
it again by teacher forcing while a hook on one decoder layer's cross-attention recomputes
softmax(q k^T / sqrt(d_head)) from the same queries and keys. The weights are exactly the ones
the search used at each step (the decoder is causal).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from mt.errors import MTError
from mt.files import write_bytes_with
from mt.tokenizer import BOS_ID, EOS_ID


@torch.no_grad()
def cross_attention(model, src: list[int], out: list[int], layer: int = -1) -> Tensor:
    """Attention of decoder `layer` [H, T + 1, S + 1] (float32, CPU).

    Rows are the positions that predict `out` and then eos (fed bos, out...); columns are the
    source pieces and the source eos.
    """
    block = model.decoder.layers[layer].cross_attn
    captured: list[Tensor] = []

    def hook(module, args, _output) -> None:
        x, packing, k, _v, mask = args[:5]
        (q,) = module._split(packing.unpack(module.q(x)), 1)  # [B, H, T, Dh]
        scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(module.head_dim)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        captured.append(scores.softmax(dim=-1)[0].cpu())

    handle = block.register_forward_hook(hook)
    try:
        device = next(model.parameters()).device
        s = torch.tensor([[*src, EOS_ID]], device=device)
        model(s, s == 0, torch.tensor([[BOS_ID, *out]], device=device))
    finally:
        handle.remove()
    return captured[0]


def check_layer(model: torch.nn.Module, layer: int) -> None:
    """Refuse a decode.alignment_layer that the model (or an ensemble's first member) lacks."""
    model = getattr(model, "members", [model])[0]
    n = len(model.decoder.layers)
    if not -n <= layer < n:
        raise MTError(
            f"decode.alignment_layer={layer} is out of range: the model has {n} decoder layers "
            f"(0 to {n - 1}, or -1 for the last)."
        )


def _words(pieces: list[str]) -> list[int]:
    """The word index of each SentencePiece piece (a piece starting with ▁ opens a word)."""
    index, words = -1, []
    for piece in pieces:
        if piece.startswith("\u2581") or index < 0:
            index += 1
        words.append(index)
    return words


def pharaoh(
    weights: Tensor, src_pieces: list[str], out_pieces: list[str], unit: str = "piece"
) -> str:
    """`i-j` links (source i, target j), each target piece to its most attended source piece.

    Args:
        weights: Heads-averaged attention [T + 1, S + 1] from `cross_attention(...).mean(0)`.
        unit: piece, or word (links between the words the pieces belong to, deduplicated).
    """
    n_src, n_out = len(src_pieces), len(out_pieces)
    if n_src == 0 or n_out == 0:
        return ""
    best = weights[:n_out, :n_src].argmax(dim=1).tolist()  # eos on either side is left out
    links = list(enumerate(best))  # (target j, source i)
    if unit == "word":
        src_w, out_w = _words(src_pieces), _words(out_pieces)
        links = sorted({(out_w[j], src_w[i]) for j, i in links})
    return " ".join(f"{i}-{j}" for j, i in links)


def save_picture(
    weights: Tensor, src_pieces: list[str], out_pieces: list[str], path: Path, title: str
) -> None:
    """A PNG of attention [H, T+1, S+1], heads averaged: output pieces down, source across."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MTError("decode.attention_dir needs matplotlib: pip install 'mt[plot]'.") from None
    rows, cols = [*out_pieces, "</s>"], [*src_pieces, "</s>"]
    width, height = max(4.0, 0.35 * len(cols) + 2.0), max(3.0, 0.3 * len(rows) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    image = ax.imshow(weights.mean(dim=0).numpy(), cmap="viridis", vmin=0.0, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("source pieces")
    ax.set_ylabel("output pieces")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, label="attention (heads averaged)")
    fig.tight_layout()
    try:  # savefig picks the format from the name; the temp name would hide it
        write_bytes_with(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
