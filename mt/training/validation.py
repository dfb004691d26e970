"""Scoring one split during and after training: teacher-forced loss, perplexity and greedy
BLEU over deterministic, decode-sized batches (validation, averaged.pt, the test split).

A stop request is honoured between two batches (`EvaluationStopped`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from mt.config import DecodeConfig
from mt.data import ParallelData, batches_by_tokens
from mt.decode.greedy import greedy_search
from mt.decode.search import Limits
from mt.loss import Seq2SeqLoss
from mt.metrics import bleu
from mt.runtime import autocast
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID, AnyTokenizer
from mt.training.stopping import EvaluationStopped


def eval_batch_ids(data: ParallelData) -> list[np.ndarray]:
    """Deterministic length-sorted batches covering every pair once (validation, test).

    Sized like `mt translate`'s batches (DecodeConfig's max_tokens and batch_size defaults),
    never like training's: a small train.max_tokens must not make every validation crawl.
    """
    decode = DecodeConfig()
    lens = np.maximum(data.src_lens, data.tgt_lens)  # teacher forcing pads both sides
    order = np.argsort(data.src_lens, kind="stable")
    return batches_by_tokens(order, lens, decode.max_tokens, max_sentences=decode.batch_size)


@torch.no_grad()  # not inference_mode: see mt.decode.search
def evaluate_split(
    model: nn.Module,
    data: ParallelData,
    tokenizer: AnyTokenizer,
    precision: str,
    device: torch.device,
    with_bleu: bool,
    prefix: str,
    label_smoothing: float = 0.0,
    stop: Callable[[], str] | None = None,
) -> dict[str, float]:
    """Loss per target token, perplexity and (if `with_bleu`) greedy BLEU of one split.

    Runs on the bare model (not a DDP wrapper), so one rank can evaluate alone; its batches
    are `eval_batch_ids`.

    Args:
        stop: Asked before every batch; a signal name ("SIGTERM") abandons the split, ""
            goes on. None: never stop.

    Raises:
        EvaluationStopped: `stop` returned a signal name.
    """
    model.eval()
    loss_fn = Seq2SeqLoss(model, label_smoothing, PAD_ID)
    loss_sum = nll_sum = tokens = 0.0
    hyps: dict[int, str] = {}
    limits = Limits(BOS_ID, EOS_ID, max_len=data.max_len - 1)  # bos takes one of the positions
    for ids in eval_batch_ids(data):
        if stop is not None and (signal_name := stop()):
            raise EvaluationStopped(signal_name)
        batch = data.collate(ids).to(device)
        with autocast(precision, device):
            loss, nll = loss_fn(batch.src, batch.src_pad_mask, batch.tgt_in, batch.tgt_out)
            if with_bleu:
                first = data.tgt_first
                prefix_ids = (
                    None if first is None else batch.src.new_full((len(batch.ids), 1), first)
                )
                found = greedy_search(model, batch.src, batch.src_pad_mask, limits, prefix_ids)
                texts = tokenizer.decode([h.tokens for h in found])
                hyps.update(zip(batch.ids.tolist(), texts, strict=True))
        loss_sum, nll_sum = loss_sum + float(loss), nll_sum + float(nll)
        tokens += batch.n_tgt_tokens
    metrics = {
        f"{prefix}/loss": loss_sum / tokens,
        f"{prefix}/ppl": math.exp(min(nll_sum / tokens, 50)),
    }
    if with_bleu:
        refs = tokenizer.decode([data.tgt[i].tolist() for i in range(len(data))])
        metrics[f"{prefix}/bleu"] = bleu([hyps[i] for i in range(len(refs))], [refs]).score
    return metrics
