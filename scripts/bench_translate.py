"""Decoding speed of mt against Hugging Face `generate` and CTranslate2 on models of one size.

    python scripts/bench_translate.py [--preset small] [--batches 2] [--length 24]
                                      [--inter-threads 1,2] [--precision auto]
                                      [--rounds 3] [--repeats 3]
    python scripts/bench_translate.py --smoke      # seconds on CPU: that it runs, not speeds

All models get random weights, the same batches of 64 source sentences of equal length, and
the same forced output length: end-of-sentence is suppressed (CTranslate2:
min_decoding_length = max_decoding_length), so beam search and greedy search run exactly
`--length` + 1 steps in all. The peers: a Hugging Face MarianMTModel of the same size, and
CTranslate2 4.x on that Marian converted with its own `TransformersConverter`, in float32
and int8. Prints sentences/s for beam 5 and greedy and the ratios ours / peer (mt and Hugging
Face in one precision, auto: bf16 where this CPU multiplies bf16 natively, as `mt translate`
picks, else fp32); mt int8 is compared with CTranslate2 int8. The last line is JSON. --smoke
checks that all of this runs, in seconds: the `tiny` preset, one batch of length 4, one round,
one turn, one thread layout.

Each system is timed in a process of its own (this script again, with --system): in one
process, the peers' thread pools and allocations slow whichever engine runs next (mt's greedy
search ran at 0.33-0.36 s per batch alone and 0.50-0.60 s after a CTranslate2 translator had
run in the same process). The systems take turns, --repeats times, each turn a fresh process;
a system's figure is the median of its turns, each turn's the median of --rounds passes over
the batches, and the mt / CTranslate2 float32 ratio of every turn is printed too.

Two thread layouts are timed, each a table of its own (--inter-threads): one batch at a time on
all threads, and two batches at once on half the threads each (mt translate
decode.inter_threads=2, CTranslate2's inter_threads=2 with intra_threads halved; Hugging Face
from a thread pool the same way). The JSON's ratio_ct2_beam5 / ratio_ct2_greedy compare each
engine in its faster layout; each layout's own ratios are under inter1 / inter2.

A trained run on Multi30k test2016 (speed and BLEU per precision, engine, shortlist) is
`scripts/bench_test2016.py`; where mt's decoding time goes, `scripts/bench_profile.py`.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# run as `python scripts/bench_translate.py`: its folder is on sys.path
from benchlib import (
    CPU,
    VOCAB,
    each_batch,
    last_json_line,
    print_json,
    random_decoder,
    run_child,
    synchronize,
    time_ours,
)

from mt.config import ModelConfig, model_preset
from mt.runtime import autocast, pick_precision
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID


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


def time_hf(
    model, batches, beam: int, length: int, precision: str, inter: int = 1, device=CPU
) -> float:
    """Seconds for Hugging Face `generate` over `batches` (model and batches on `device`)."""

    def decode(src):
        with torch.no_grad(), autocast(precision, device):
            model.generate(
                input_ids=src, attention_mask=src != PAD_ID, num_beams=beam, do_sample=False,
                max_new_tokens=length + 1, min_new_tokens=length + 1, suppress_tokens=[EOS_ID],
            )  # fmt: skip
        synchronize(device)

    return each_batch(decode, batches, inter)


class _StubTokenizer:
    """What CTranslate2's Marian loader reads from a tokenizer (a random model has none)."""

    pad_token, unk_token, bos_token, eos_token = "<pad>", "<unk>", "<s>", "</s>"

    def get_vocab(self) -> dict[str, int]:
        # The Marian loader drops the last row as Marian's own <pad>; inputs never use it.
        names = ["<blank>", "<unk>", "<s>", "</s>", *(f"t{i}" for i in range(4, VOCAB - 1))]
        return {piece: i for i, piece in enumerate([*names, "<pad>"])}


def build_ct2(
    cfg: ModelConfig, folder: Path, compute_type: str, inter: int = 1, device: str = "cpu"
):
    """The random Hugging Face Marian of `cfg` (`build_hf`, seed 0) converted by CTranslate2's
    own `TransformersConverter` into `folder`, once: later calls load that conversion (the
    benchmark converts in a process of its own, `--convert-ct2`, so no timed process builds it).
    It runs on `device` ("cpu" or "cuda"), `inter` batches at once (inter_threads), each on
    1/inter of the threads."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return _StubTokenizer()

    if not (folder / "ct2").is_dir():
        torch.manual_seed(0)
        build_hf(cfg).save_pretrained(folder / "hf")
        Converter(str(folder / "hf")).convert(str(folder / "ct2"))
    threads = torch.get_num_threads()
    return ctranslate2.Translator(str(folder / "ct2"), device=device, compute_type=compute_type,
                                  inter_threads=inter, intra_threads=threads)  # fmt: skip


def time_ct2(translator, batches, beam: int, length: int, inter: int = 1) -> float:
    """Batches one after another; with inter > 1 all sentences in one call, which CTranslate2
    splits into batches of 64 and runs on its `inter` replicas at once."""
    tokens = [[[f"t{int(t)}" for t in row] for row in src] for src in batches]
    calls = tokens if inter == 1 else [[row for src in tokens for row in src]]
    start = time.perf_counter()
    for src in calls:
        translator.translate_batch(
            src, beam_size=beam, max_batch_size=64, min_decoding_length=length + 1,
            max_decoding_length=length + 1,
        )  # fmt: skip
    return time.perf_counter() - start


SYSTEMS = ("mt", "mt_int8", "hf", "ct2", "ct2_int8")


def _batches(args) -> list[torch.Tensor]:
    """The random source batches, the same in every process."""
    gen = torch.Generator().manual_seed(1)
    shape = (64, args.length)
    return [torch.randint(4, VOCAB - 1, shape, generator=gen) for _ in range(args.batches)]


def time_system(args, system: str, precision: str) -> dict[str, float]:
    """Seconds for all batches (median of --rounds) with beam 5 and greedy, for one system."""
    cfg = model_preset(args.preset)
    batches = _batches(args)
    inter = args.inter
    torch.set_num_threads(max(1, torch.get_num_threads() // inter))  # each batch's share
    if system in ("mt", "mt_int8"):
        if system == "mt_int8":
            precision = "int8"
        ours = random_decoder(args.preset, precision)
        run = functools.partial(time_ours, ours, precision=precision, inter=inter)
    elif system == "hf":
        torch.manual_seed(0)
        run = functools.partial(time_hf, build_hf(cfg), precision=precision, inter=inter)
    else:
        compute_type = "float32" if system == "ct2" else "int8"
        translator = build_ct2(cfg, args.ct2_dir, compute_type, inter)
        run = functools.partial(time_ct2, translator, inter=inter)
    out = {}
    for beam in (5, 1):
        run(batches[:1], beam=beam, length=4)  # warm-up
        rounds = [run(batches, beam=beam, length=args.length) for _ in range(args.rounds)]
        out["beam5" if beam == 5 else "greedy"] = statistics.median(rounds)
    return out


def _child(args, *flags: str) -> dict:
    """Run this script with --system ... in a fresh process and return its JSON line."""
    argv = [sys.executable, __file__, "--preset", args.preset, "--batches", str(args.batches),
            "--length", str(args.length), "--rounds", str(args.rounds),
            "--precision", args.precision, *flags]  # fmt: skip
    if args.smoke:
        argv.append("--smoke")
    done = run_child(argv)
    if done.returncode != 0:
        sys.exit(f"bench_translate: {' '.join(flags)} failed:\n{done.stderr[-2000:]}")
    return last_json_line(done.stdout)


def synthetic_speed(args, precision: str) -> dict:
    # The systems take turns, --repeats times, so a slow spell of a shared machine falls on
    # all of them; each system's figure is the median of its repeats. The CTranslate2 peer is
    # converted first, in a process of its own: building the Hugging Face model and converting
    # it in a timed process slowed CTranslate2 there (greedy 138 sent/s, against 264-268 in
    # processes that only loaded the conversion). Each thread layout (--inter) is timed apart.
    sentences = 64 * args.batches
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_ct2_") as ct2_dir:
        _child(args, "--convert-ct2", "--ct2-dir", ct2_dir)
        for inter in args.inter_threads:
            flags = ("--ct2-dir", ct2_dir, "--inter", str(inter))
            sweeps = [{system: _child(args, "--system", system, *flags) for system in SYSTEMS}
                      for _ in range(args.repeats)]  # fmt: skip
            print(f"{_layout(inter)}:", flush=True)
            out[f"inter{inter}"] = _layout_table(sweeps, sentences)
    layouts = list(out.values())
    for name in ("beam5", "greedy"):  # each engine in its faster layout
        best = {system: max(layout[name][f"{system}_sent_s"] for layout in layouts)
                for system in ("mt", "ct2", "mt_int8", "ct2_int8")}  # fmt: skip
        out[f"ratio_ct2_{name}"] = round(best["mt"] / best["ct2"], 2)
        out[f"ratio_ct2_int8_{name}"] = round(best["mt_int8"] / best["ct2_int8"], 2)
        print(f"{name:<6} each engine in its faster layout: mt {best['mt']:.1f} sent/s, "
              f"CTranslate2 {best['ct2']:.1f}: mt/CT2 fp32 {out[f'ratio_ct2_{name}']:.2f}x; "
              f"int8 {best['mt_int8']:.1f} / {best['ct2_int8']:.1f}: "
              f"{out[f'ratio_ct2_int8_{name}']:.2f}x", flush=True)  # fmt: skip
    return out


def _layout(inter: int) -> str:
    threads = torch.get_num_threads()
    if inter == 1:
        return f"one batch at a time on {threads} threads"
    return f"{inter} batches at once, {max(1, threads // inter)} thread(s) each"


def _layout_table(sweeps: list[dict], sentences: int) -> dict:
    """Print and return one layout's speeds (median of the turns) and ratios."""
    out: dict = {}
    for name in ("beam5", "greedy"):
        per_sweep = [sweep["ct2"][name] / sweep["mt"][name] for sweep in sweeps]
        out[f"ratio_ct2_{name}_each"] = [round(r, 2) for r in per_sweep]
        t = {system: statistics.median(sw[system][name] for sw in sweeps) for system in SYSTEMS}
        out[name] = {f"{k}_sent_s": round(sentences / v, 1) for k, v in t.items()}
        out[f"ratio_{name}"] = round(t["hf"] / t["mt"], 2)
        out[f"ratio_ct2_{name}"] = round(t["ct2"] / t["mt"], 2)
        out[f"ratio_ct2_int8_{name}"] = round(t["ct2_int8"] / t["mt_int8"], 2)
        speeds = " | ".join(f"{k} {sentences / v:6.1f}" for k, v in t.items())
        print(
            f"  {name:<6} sent/s: {speeds} | mt/HF {out[f'ratio_{name}']:.2f}x, "
            f"mt/CT2 fp32 {out[f'ratio_ct2_{name}']:.2f}x, "
            f"mt int8/CT2 int8 {out[f'ratio_ct2_int8_{name}']:.2f}x "
            f"(mt/CT2 fp32 in each turn: {', '.join(f'{r:.2f}' for r in per_sweep)})",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batches", type=int, default=2, help="batches of 64 sentences")
    parser.add_argument("--length", type=int, default=24, help="source and output length")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--rounds", type=int, default=3,
                        help="passes over the batches per system; the median counts")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3,
                        help="turns each system takes, in its own process each time")  # fmt: skip
    parser.add_argument(
        "--inter-threads", type=lambda v: [int(n) for n in v.split(",")], default=[1, 2],
        help="thread layouts to time, as decode.inter_threads: batches decoded at once, each "
        "on 1/N of the threads (default 1,2)",
    )  # fmt: skip
    parser.add_argument("--inter", type=int, default=1, help=argparse.SUPPRESS)  # a child's
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)  # a child's job
    parser.add_argument("--ct2-dir", type=Path, help=argparse.SUPPRESS)  # the converted peer
    parser.add_argument("--convert-ct2", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one pass of everything: checks that it runs")  # fmt: skip
    args = parser.parse_args()
    if args.smoke:  # the parent's and every child's sizes
        args.preset, args.batches, args.length, args.rounds = "tiny", 1, 4, 1
    precision = pick_precision(args.precision, CPU)
    if args.convert_ct2:  # a child: the CTranslate2 peer into --ct2-dir
        build_ct2(model_preset(args.preset), args.ct2_dir, "float32")
        print(json.dumps({}))
        return
    if args.system:  # a child: one system, one JSON line
        print(json.dumps(time_system(args, args.system, precision)))
        return
    if args.smoke:
        args.repeats, args.inter_threads = 1, [1]
    bench(args, precision)


def bench(args: argparse.Namespace, precision: str) -> None:
    """The parent: every system in turn, in processes of their own; prints the JSON line."""
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset}, "
        f"{precision} (both systems); each system in its own process"
    )
    results = {"precision": precision, **synthetic_speed(args, precision)}
    print_json(results)


if __name__ == "__main__":
    main()
