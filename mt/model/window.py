"""Local (windowed) self-attention: each query sees only keys within W positions of itself.

`band_mask` is the SDPA bool mask of the window, built once per stack forward and shared by
every layer. For long sequences `split_windows` / `merge_windows` run the encoder's window
attention by blocks instead: W queries at a time against the 3W keys around them, so memory
grows as S * W rather than S * S.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def band_mask(
    n_queries: int, n_keys: int, window: int, causal: bool, device: torch.device, q_start: int = 0
) -> Tensor:
    """Bool [T, S], True where key j is within `window` of query i (q_start + [0, T) vs [0, S)).

    Causal: q - window <= j <= q (W back and itself); else |q - j| <= window.
    """
    q_pos = torch.arange(q_start, q_start + n_queries, device=device)
    k_pos = torch.arange(n_keys, device=device)
    back = q_pos[:, None] - k_pos[None, :]  # [T, S]: how far key j lies before query i
    return (back <= window) & (back >= (0 if causal else -window))


def encoder_window(
    mask: Tensor | None, length: int, window: int, device: torch.device
) -> tuple[Tensor | None, int]:
    """The self-attention mask and blocked window for an encoder forward over S = length.

    W >= S covers every key: plain attention. S > 3W: blocks (`split_windows`), which then cost
    less than the S x S scores. In between: the band mask, built here once for every layer, with
    the diagonal always allowed so that no query (a pad query far from real tokens) sees no key.

    Args:
        mask: Key padding mask [B, 1, 1, S] (True = real token) or None.
        length: S.
        window: W, or 0 for full attention.
        device: Device of the batch.

    Returns:
        (mask for the layers, W for blocked attention or 0).
    """
    if window == 0 or window >= length:
        return mask, 0
    if length > 3 * window:
        return mask, window
    band = band_mask(length, length, window, False, device)  # [S, S]
    if mask is None:
        return band[None, None], 0
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return (band & mask) | eye, 0  # [B, 1, S, S]


def _blocks(x: Tensor, n_blocks: int, window: int) -> Tensor:
    """Keys or values [B, H, S, Dh] -> the 3W around each block [B * nb, H, 3W, Dh], zero-padded."""
    b, h, s, dh = x.shape
    x = F.pad(x, (0, 0, window, n_blocks * window - s + window))  # [B, H, (nb + 2) W, Dh]
    x = x.unfold(2, 3 * window, window)  # [B, H, nb, Dh, 3W]
    return x.permute(0, 2, 1, 4, 3).reshape(b * n_blocks, h, 3 * window, dh)


def split_windows(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, window: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cut non-causal window attention into independent blocks of W queries.

    Block i holds queries [iW, iW + W) and keys [iW - W, iW + 2W): every key within W of its
    queries, and in block coordinates (keys from 0, queries from W) the band is the same for
    every block. Positions outside [0, S) are zero-padded and masked out; each query may always
    attend to itself, so padding queries are never left without a key (no NaN rows).

    Args:
        q: Queries [B, H, S, Dh].
        k: Keys [B, H, S, Dh].
        v: Values [B, H, S, Dh].
        mask: Key padding mask [B, 1, 1, S] (True = real token) or None.
        window: W >= 1.

    Returns:
        Queries [B * nb, H, W, Dh], keys and values [B * nb, H, 3W, Dh] and the bool mask
        [B * nb, 1, W, 3W] (True = attend), nb = ceil(S / W); the queries sit at W + [0, W)
        of each block's keys (for `relative_index`).
    """
    b, h, s, dh = q.shape
    n_blocks = -(-s // window)
    qb = F.pad(q, (0, 0, 0, n_blocks * window - s)).view(b, h, n_blocks, window, dh)
    qb = qb.transpose(1, 2).reshape(b * n_blocks, h, window, dh)  # [B, nb, H, W, Dh] flattened
    real = torch.ones(b, s, dtype=torch.bool, device=q.device) if mask is None else mask.view(b, s)
    real = F.pad(real, (window, n_blocks * window - s + window), value=False)  # [B, (nb + 2) W]
    real = real.unfold(1, 3 * window, window)  # [B, nb, 3W]
    band = band_mask(window, 3 * window, window, False, q.device, q_start=window)  # [W, 3W]
    own = band_mask(window, 3 * window, 0, False, q.device, q_start=window)  # the diagonal
    allowed = (band & real[:, :, None, :]) | own  # [B, nb, W, 3W]
    allowed = allowed.view(b * n_blocks, 1, window, 3 * window)
    return qb, _blocks(k, n_blocks, window), _blocks(v, n_blocks, window), allowed


def merge_windows(y: Tensor, batch: int, length: int) -> Tensor:
    """Blocked outputs [B * nb, H, W, Dh] -> [B, H, S, Dh] (the padded tail dropped)."""
    _, h, window, dh = y.shape
    y = y.view(batch, -1, h, window, dh).transpose(1, 2)  # [B, H, nb, W, Dh]
    return y.reshape(batch, h, -1, dh)[:, :, :length]
