"""Decoding speed of mt against Hugging Face `generate` and CTranslate2 on models of one size.

    python scripts/bench_translate.py [--preset small] [--batches 2] [--length 24]
                                      [--inter-threads 1,2]
                                      [--precision auto] [--run-dir runs/multi30k_en_de]
                                      [--test-precisions fp32,int8,bf16] [--engines]
                                      [--shortlist K] [--profile] [--rounds 3] [--repeats 3]
    python scripts/bench_translate.py --smoke      # seconds on CPU: that it runs, not speeds

All models get random weights, the same batches of 64 source sentences of equal length, and
the same forced output length: end-of-sentence is suppressed (CTranslate2:
min_decoding_length = max_decoding_length), so beam search and greedy search run exactly
`--length` + 1 steps in all. The peers: a Hugging Face MarianMTModel of the same size, and
CTranslate2 4.x on that Marian converted with its own `TransformersConverter`, in float32
and int8. Prints sentences/s for beam 5 and greedy and the ratios ours / peer (mt and Hugging
Face in one precision, auto: bf16 where this CPU multiplies bf16 natively, as `mt translate`
picks, else fp32); mt int8 is compared with CTranslate2 int8. With --run-dir, also times
Multi30k test2016 (batches of 64) with that run in each of --test-precisions and reports BLEU;
with --engines too, the same through engine=ctranslate2 (float32 and int8), with the share of
beam-5 lines identical to mt fp32; each engine and precision also decodes test2016 with
decode.inter_threads=2 (its speed-up and its share of lines identical to one batch at a time).
With --run-dir and --shortlist K, each mt system runs again
with decode.shortlist=K, on the line after its full-vocabulary one: speed (and the speed-up),
BLEU, the share of lines identical to the full-vocabulary output, and the mean shortlist size.
--profile adds torch.profiler's view of mt's search: aten ops per decoder step and the ops that
take the time. The last line is JSON. --smoke checks that all of this runs, in seconds: the
`tiny` preset, one batch of length 4, one round, one turn, one thread layout, and (without
--run-dir) a `tiny` model trained for a few steps on a synthetic corpus as the run, timed in
one pass with --shortlist 8.

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
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sacrebleu
import torch

# run as `python scripts/bench_translate.py`: its folder is on sys.path
from benchlib import (
    last_json_line,
    multi30k_dir,
    print_json,
    read_test2016,
    run_child,
    smoke_run,
    timed_translate,
)

from mt.config import DecodeConfig, ModelConfig, model_preset
from mt.decode.beam import beam_search
from mt.decode.engine import make_translator
from mt.decode.greedy import greedy_search
from mt.decode.layout import for_decoding
from mt.decode.run import load_run
from mt.decode.search import Limits
from mt.model import transformer
from mt.runtime import autocast, pick_precision
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID

VOCAB = 8000
CPU = torch.device("cpu")


class NoEos(torch.nn.Module):
    """Our model with end-of-sentence suppressed, so every hypothesis runs to the length cap."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode(self, src, src_pad_mask):
        return self.model.encode(src, src_pad_mask)

    def init_state(self, memory, src_pad_mask, max_len, rows_per_source=1, vocab=None):
        return self.model.init_state(memory, src_pad_mask, max_len, rows_per_source, vocab)

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


def _each(decode, batches, inter: int) -> float:
    """Seconds to run decode(src) on every batch: one after another, or (inter > 1) inter
    batches at once from a thread pool, as `mt translate decode.inter_threads=N` does."""
    start = time.perf_counter()
    if inter == 1:
        for src in batches:
            decode(src)
    else:
        with ThreadPoolExecutor(inter) as pool:
            list(pool.map(decode, batches))
    return time.perf_counter() - start


def time_ours(model, batches, beam: int, length: int, precision: str, inter: int = 1) -> float:
    def decode(src):
        mask = src == PAD_ID
        limits = Limits(BOS_ID, EOS_ID, max_len_a=0.0, max_len_b=length)
        with autocast(precision, CPU):
            if beam == 1:
                greedy_search(model, src, mask, limits)
            else:
                beam_search(model, src, mask, limits, beam=beam)

    return _each(decode, batches, inter)


def time_hf(model, batches, beam: int, length: int, precision: str, inter: int = 1) -> float:
    def decode(src):
        with torch.no_grad(), autocast(precision, CPU):
            model.generate(
                input_ids=src, attention_mask=src != PAD_ID, num_beams=beam, do_sample=False,
                max_new_tokens=length + 1, min_new_tokens=length + 1, suppress_tokens=[EOS_ID],
            )  # fmt: skip

    return _each(decode, batches, inter)


class _StubTokenizer:
    """What CTranslate2's Marian loader reads from a tokenizer (a random model has none)."""

    pad_token, unk_token, bos_token, eos_token = "<pad>", "<unk>", "<s>", "</s>"

    def get_vocab(self) -> dict[str, int]:
        # The Marian loader drops the last row as Marian's own <pad>; inputs never use it.
        names = ["<blank>", "<unk>", "<s>", "</s>", *(f"t{i}" for i in range(4, VOCAB - 1))]
        return {piece: i for i, piece in enumerate([*names, "<pad>"])}


def build_ct2(cfg: ModelConfig, folder: Path, compute_type: str, inter: int = 1):
    """The random Hugging Face Marian of `cfg` (`build_hf`, seed 0) converted by CTranslate2's
    own `TransformersConverter` into `folder`, once: later calls load that conversion (the
    benchmark converts in a process of its own, `--convert-ct2`, so no timed process builds it).
    It runs `inter` batches at once (inter_threads), each on 1/inter of the threads."""
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
    return ctranslate2.Translator(str(folder / "ct2"), compute_type=compute_type,
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
    torch.manual_seed(0)
    cfg = model_preset(args.preset)
    batches = _batches(args)
    inter = args.inter
    torch.set_num_threads(max(1, torch.get_num_threads() // inter))  # each batch's share
    if system in ("mt", "mt_int8"):
        model = transformer(**vars(cfg), src_vocab_size=VOCAB, tgt_vocab_size=VOCAB).eval()
        if system == "mt_int8":
            precision = "int8"
        ours = NoEos(for_decoding(model, precision, CPU))  # as `mt translate` lays it out
        run = functools.partial(time_ours, ours, precision=precision, inter=inter)
    elif system == "hf":
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
            "--precision", args.precision, "--shortlist", str(args.shortlist), *flags]  # fmt: skip
    if args.run_dir:
        argv += ["--run-dir", str(args.run_dir), "--multi30k", str(args.multi30k)]
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


def profile_steps(args, precision: str) -> dict:
    """Where mt's decoding time goes: torch.profiler over one batch, beam 5 and greedy."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    cfg = model_preset(args.preset)
    model = transformer(**vars(cfg), src_vocab_size=VOCAB, tgt_vocab_size=VOCAB).eval()
    ours = NoEos(for_decoding(model, precision, CPU))
    batch = [torch.randint(4, VOCAB - 1, (64, args.length))]
    out = {}
    for beam in (5, 1):
        name = "beam5" if beam == 5 else "greedy"
        time_ours(ours, batch, beam, 4, precision)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            total = time_ours(ours, batch, beam, args.length, precision)
        events = prof.key_averages()
        n_ops = sum(e.count for e in events if e.key.startswith("aten::"))
        steps = args.length + 1
        print(f"profile {name}: {total:.2f} s, {n_ops / steps:.0f} aten ops per step "
              f"({n_ops} in {steps} steps); top ops by self CPU time:")  # fmt: skip
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        self_total = sum(e.self_cpu_time_total for e in events)
        for e in top:
            share = 100 * e.self_cpu_time_total / self_total
            print(f"  {e.key:<40} {share:5.1f}%  {e.count:6d} calls  "
                  f"{e.self_cpu_time_total / max(e.count, 1):8.1f} us/call")  # fmt: skip
        out[f"profile_{name}"] = {
            "ops_per_step": round(n_ops / steps),
            "top": {e.key: round(100 * e.self_cpu_time_total / self_total, 1) for e in top[:6]},
        }
    return out


def time_test_system(
    run_dir: Path, corpus: Path, engine: str, precision: str, shortlist: int, passes: int = 3
):
    """test2016 through one (engine, precision): per search, seconds (median of `passes`) and
    outputs; with `shortlist` K > 0 (engine torch), also with decode.shortlist=K and its mean
    size."""
    src, _ = read_test2016(corpus)
    _time_translator = functools.partial(timed_translate, passes=passes)
    run = load_run(run_dir, None, CPU)
    out = {"checkpoint": run.checkpoint.name, "vocab": run.tgt_tok.vocab_size}
    for beam in (5, 1):
        name = "beam5" if beam == 5 else "greedy"
        decode = DecodeConfig(beam=beam, batch_size=64)
        translator = make_translator(run, decode, CPU, precision, engine)
        out[name] = _time_translator(translator, src)
        two = dataclasses.replace(decode, inter_threads=2)  # 2 batches at once, 1 thread each
        out[f"{name}_inter2"] = _time_translator(
            make_translator(run, two, CPU, precision, engine), src
        )
        if shortlist and engine == "torch":
            decode = dataclasses.replace(decode, shortlist=shortlist)
            translator = make_translator(run, decode, CPU, precision, engine)
            sizes = _count_shortlists(translator)
            out[f"{name}_sl"] = (*_time_translator(translator, src), sum(sizes) / len(sizes))
    return out


def test_set_speed(args, systems: list[tuple[str, str]]) -> dict:
    """Translate test2016 with a trained run (batches of 64) in each (engine, precision), each
    in its own process, and score it; lines identical to the first system's output with the
    same search are counted. With --shortlist K > 0, each engine=torch system runs again with
    decode.shortlist=K, and its lines are compared with that system's full-vocabulary output."""
    _, ref = read_test2016(args.multi30k)
    shortlist = args.shortlist
    runs = {
        (engine, precision): _child(args, "--test-system", f"{engine}:{precision}")
        for engine, precision in systems
    }
    out, first = {}, {}
    for name in ("beam5", "greedy"):
        for (engine, precision), res in runs.items():
            seconds, hyps = res[name]
            first.setdefault(name, hyps)
            system = f"{'mt' if engine == 'torch' else 'ct2'}_{precision}"
            out[f"test2016_{system}_{name}"] = _report(
                system, name, seconds, hyps, ref, first[name], f"{systems[0][0]} {systems[0][1]}",
                res["checkpoint"],
            )  # fmt: skip
            fast, two_hyps = res[f"{name}_inter2"]
            out[f"test2016_{system}_inter2_{name}"] = _report(
                f"{system}_inter2", name, fast, two_hyps, ref, hyps,
                f"{system} a batch at a time", "decode.inter_threads=2", speedup=seconds / fast,
            )  # fmt: skip
            if f"{name}_sl" in res:
                fast, short_hyps, size = res[f"{name}_sl"]
                note = f"shortlist {size:.0f} of {res['vocab']}"
                out[f"test2016_{system}_sl{shortlist}_{name}"] = _report(
                    f"{system}_sl{shortlist}", name, fast, short_hyps, ref, hyps,
                    f"{system} full vocab", note, speedup=seconds / fast,
                )  # fmt: skip
    return out


def _count_shortlists(translator) -> list[int]:
    """The shortlist size of every batch the translator decodes from now on."""
    sizes: list[int] = []
    candidates = translator._candidates

    def counted(*args):
        vocab = candidates(*args)
        sizes.append(len(vocab))
        return vocab

    translator._candidates = counted
    return sizes


def _report(system, name, seconds, hyps, ref, baseline, baseline_name, note, speedup=None):
    """Print one test2016 line and return its numbers."""
    src_len = len(hyps)
    same = sum(a == b for a, b in zip(hyps, baseline, strict=True)) / src_len
    score = sacrebleu.corpus_bleu(hyps, [ref]).score
    faster = "" if speedup is None else f", {speedup:.2f}x {baseline_name}"
    print(f"test2016 {system:<14} {name:<6}: {seconds:5.1f} s for {src_len} sentences "
          f"({src_len / seconds:6.1f} sent/s{faster}), BLEU {score:.2f}, "
          f"{100 * same:5.1f}% lines as {baseline_name} ({note})", flush=True)  # fmt: skip
    row = {
        "seconds_median_of_3": round(seconds, 2), "sent_s": round(src_len / seconds, 1),
        "bleu": round(score, 2), "identical_to_first": round(same, 4),
    }  # fmt: skip
    if speedup is not None:  # a shortlist or inter_threads run, against its plain run
        row["identical_to_plain"] = row.pop("identical_to_first")
        row["speedup_over_plain"] = round(speedup, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batches", type=int, default=2, help="batches of 64 sentences")
    parser.add_argument("--length", type=int, default=24, help="source and output length")
    parser.add_argument("--run-dir", type=Path, help="a trained run to time on test2016")
    parser.add_argument("--multi30k", type=Path, default=multi30k_dir())
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument(
        "--test-precisions",
        help="with --run-dir: the precisions to time test2016 in, e.g. fp32,int8,bf16 "
        "(default: --precision)",
    )
    parser.add_argument(
        "--engines", action="store_true",
        help="with --run-dir: also test2016 through engine=ctranslate2 in fp32 and int8",
    )  # fmt: skip
    parser.add_argument(
        "--shortlist", type=int, default=0, metavar="K",
        help="with --run-dir: also test2016 with decode.shortlist=K in each mt precision",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="also profile mt's search: ops per step and the top ops")  # fmt: skip
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
    parser.add_argument("--test-system", help=argparse.SUPPRESS)  # engine:precision
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
    if args.test_system:
        engine, test_precision = args.test_system.split(":")
        passes = 1 if args.smoke else 3
        res = time_test_system(
            args.run_dir, args.multi30k, engine, test_precision, args.shortlist, passes
        )
        print(json.dumps(res))
        return
    if args.smoke:
        args.repeats, args.inter_threads = 1, [1]
        with tempfile.TemporaryDirectory(prefix="bench_translate_") as tmp:
            if args.run_dir is None:  # a tiny trained run, timed with a shortlist too
                args.run_dir, args.multi30k = smoke_run(Path(tmp))
                args.shortlist = args.shortlist or 8
            bench(args, precision)
        return
    bench(args, precision)


def bench(args: argparse.Namespace, precision: str) -> None:
    """The parent: every system in turn, in processes of their own; prints the JSON line."""
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset}, "
        f"{precision} (both systems); each system in its own process"
    )
    results = {"precision": precision, **synthetic_speed(args, precision)}
    if args.profile:
        results.update(profile_steps(args, precision))
    if args.run_dir:
        names = (args.test_precisions or precision).split(",")
        systems = [("torch", pick_precision(n, CPU)) for n in names]
        if args.engines:
            systems += [("ctranslate2", "fp32"), ("ctranslate2", "int8")]
        results.update(test_set_speed(args, systems))
    print_json(results)


if __name__ == "__main__":
    main()
