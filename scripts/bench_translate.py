"""Decoding speed of mt against Hugging Face `generate` on a MarianMTModel of the same size.

    python scripts/bench_translate.py [--preset small] [--batches 2] [--length 24]
                                      [--precision auto] [--run-dir runs/multi30k_en_de]
                                      [--test-precisions fp32,int8,bf16]

Both models get random weights, the same batches of 64 source sentences of equal length, and
the same forced output length: end-of-sentence is suppressed, so beam search and greedy search
run exactly `--length` steps in both. Prints sentences/s and target tokens/s for beam 5 and
greedy, and the ratio ours / Hugging Face, both in the same precision (auto: bf16 where this
CPU multiplies bf16 natively, as `mt translate` picks; else fp32). With --run-dir, also times
translating Multi30k test2016 (beam 5, batches of 64) with that run and reports its BLEU. The
last line is JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import sacrebleu
import torch

from mt.config import DecodeConfig, ModelConfig, model_preset
from mt.model import transformer
from mt.runtime import autocast, pick_precision
from mt.search import Limits, beam_search, greedy_search
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID
from mt.translate import Translator, load_run

VOCAB = 8000
CPU = torch.device("cpu")


class NoEos(torch.nn.Module):
    """Our model with end-of-sentence suppressed, so every hypothesis runs to the length cap."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode(self, src, src_pad_mask):
        return self.model.encode(src, src_pad_mask)

    def init_state(self, memory, src_pad_mask, max_len, rows_per_source=1):
        return self.model.init_state(memory, src_pad_mask, max_len, rows_per_source)

    def decode_step(self, tokens, state):
        logits = self.model.decode_step(tokens, state)
        logits[:, EOS_ID] = float("-inf")
        return logits


def build_hf(cfg: ModelConfig):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=VOCAB, d_model=cfg.d_model, encoder_layers=cfg.n_layers_enc,
        decoder_layers=cfg.n_layers_dec, encoder_attention_heads=cfg.n_heads,
        decoder_attention_heads=cfg.n_heads, encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff,
        activation_function=cfg.activation, max_position_embeddings=1024, scale_embedding=True,
        share_encoder_decoder_embeddings=True, pad_token_id=PAD_ID, decoder_start_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )  # fmt: skip
    return MarianMTModel(config).eval()


def time_ours(model, batches, beam: int, length: int, precision: str) -> float:
    start = time.perf_counter()
    for src in batches:
        mask = src == PAD_ID
        limits = Limits(BOS_ID, EOS_ID, max_len_a=0.0, max_len_b=length)
        with autocast(precision, CPU):
            if beam == 1:
                greedy_search(model, src, mask, limits)
            else:
                beam_search(model, src, mask, limits, beam=beam)
    return time.perf_counter() - start


def time_hf(model, batches, beam: int, length: int, precision: str) -> float:
    start = time.perf_counter()
    for src in batches:
        with autocast(precision, CPU):
            model.generate(
                input_ids=src, attention_mask=src != PAD_ID, num_beams=beam, do_sample=False,
                max_new_tokens=length + 1, min_new_tokens=length + 1, suppress_tokens=[EOS_ID],
            )  # fmt: skip
    return time.perf_counter() - start


def synthetic_speed(args, precision: str) -> dict:
    torch.manual_seed(0)
    cfg = model_preset(args.preset)
    ours = NoEos(transformer(**vars(cfg), src_vocab_size=VOCAB, tgt_vocab_size=VOCAB).eval())
    hf = build_hf(cfg)
    batches = [torch.randint(4, VOCAB, (64, args.length)) for _ in range(args.batches)]
    sentences = 64 * args.batches
    out = {}
    for beam in (5, 1):
        time_ours(ours, batches[:1], beam, 4, precision)  # warm-up
        time_hf(hf, batches[:1], beam, 4, precision)
        t_ours, t_hf = (
            time_ours(ours, batches, beam, args.length, precision),
            time_hf(hf, batches, beam, args.length, precision),
        )
        tokens = sentences * (args.length + 1)
        name = "beam5" if beam == 5 else "greedy"
        out[name] = {
            "mt_sent_s": round(sentences / t_ours, 1), "hf_sent_s": round(sentences / t_hf, 1),
            "mt_tok_s": round(tokens / t_ours), "hf_tok_s": round(tokens / t_hf),
        }  # fmt: skip
        out[f"ratio_{name}"] = round(t_hf / t_ours, 2)
        print(
            f"{name:<6}: mt {sentences / t_ours:7.1f} sent/s {tokens / t_ours:8.0f} tok/s | "
            f"HF generate {sentences / t_hf:7.1f} sent/s {tokens / t_hf:8.0f} tok/s | "
            f"ratio {t_hf / t_ours:.2f}x",
            flush=True,
        )
    return out


def test_set_speed(run_dir: Path, corpus: Path, precision: str) -> dict:
    """Translate test2016 with a trained run (beam 5, batches of 64) and score it."""
    with gzip.open(corpus / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as f:
        src = f.read().splitlines()
    with gzip.open(corpus / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        ref = f.read().splitlines()
    run = load_run(run_dir, None, CPU)
    out = {}
    for beam in (5, 1):
        translator = Translator(run, DecodeConfig(beam=beam, batch_size=64), CPU, precision)
        translator.translate(src[:64])  # warm-up: first-call allocations and kernel choices
        times = []
        for _ in range(3):
            start = time.perf_counter()
            hyps = [h[0][0] if h else "" for h in translator.translate(src)]
            times.append(time.perf_counter() - start)
        seconds = sorted(times)[1]
        score = sacrebleu.corpus_bleu(hyps, [ref]).score
        name = "beam5" if beam == 5 else "greedy"
        out[f"test2016_{precision}_{name}"] = {
            "seconds_median_of_3": round(seconds, 2),
            "bleu": round(score, 2),
        }
        print(f"test2016 {precision} {name}: {seconds:.1f} s for {len(src)} sentences, "
              f"BLEU {score:.2f} ({run.checkpoint.name})", flush=True)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batches", type=int, default=2, help="batches of 64 sentences")
    parser.add_argument("--length", type=int, default=24, help="source and output length")
    parser.add_argument("--run-dir", type=Path, help="a trained run to time on test2016")
    parser.add_argument(
        "--multi30k",
        type=Path,
        default=Path(os.environ.get("MT_MULTI30K", "../shared/data/multi30k")),
    )
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument(
        "--test-precisions",
        help="with --run-dir: the precisions to time test2016 in, e.g. fp32,int8,bf16 "
        "(default: --precision)",
    )
    args = parser.parse_args()
    precision = pick_precision(args.precision, CPU)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset}, "
        f"{precision} (both systems)"
    )
    results = {"precision": precision, **synthetic_speed(args, precision)}
    if args.run_dir:
        for name in (args.test_precisions or precision).split(","):
            results.update(test_set_speed(args.run_dir, args.multi30k, pick_precision(name, CPU)))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
