"""Fine-tuning throughput of an imported OPUS-MT-sized Marian: mt against a plain transformers loop.

    python scripts/bench_finetune.py [--precisions fp32,bf16] [--seconds 60] [--threads N]
    python scripts/bench_finetune.py --device cuda --precisions bf16,fp16
    python scripts/bench_finetune.py --smoke      # seconds: a tiny Marian, fp32, synthetic text

A random MarianMTModel with the configuration of Helsinki-NLP/opus-mt-en-de (d_model 512, 6+6
layers, 8 heads, FFN 2048, swish, a 58,101-piece vocabulary, scaled embeddings, static
sinusoids) and a MarianTokenizer (SentencePiece trained on Multi30k, MT_MULTI30K or
../shared/data/multi30k, else on the synthetic corpus; the vocabulary filled up to 58,101
pieces) is saved, imported with `mt import`, and the corpus is prepared with its tokenizer
(`tokenizer.from_run`). Both systems fine-tune the same weights on the same batches (at most
--max-tokens padded tokens each, 4,096 by default): mt's `Trainer.train_step` on the imported
model, and a plain transformers loop (logits -> label-smoothed cross-entropy, AdamW, clipping)
on the MarianMTModel, the batches mapped to its ids. Rounds alternate so that machine drift
hits both alike. Precisions: fp32, and bf16 where `mt.runtime.bf16_supported` says the device
has it. Peak memory: each system alone in a child process for a few steps (on CPU the peak
RSS, reset after the imports and the batches, and how far it rose above the RSS then; on CUDA
also `max_memory_allocated`). The last line is one JSON object with every figure and
`ratio_<precision>` = mt / transformers target tokens/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

# run as `python scripts/bench_finetune.py`: its folder is on sys.path
from benchlib import (
    alternate,
    last_json_line,
    multi30k_dir,
    plain_update,
    print_json,
    run_child,
    smoke_corpus,
    synchronize,
)

from mt.checkpoint import load_checkpoint
from mt.config import DataConfig, ImportConfig, PrepareConfig, TokenizerConfig, TrainLoopConfig
from mt.convert.importer import run_import
from mt.convert.pretrained import IdMap
from mt.data import Batch, ParallelData, epoch_batches
from mt.loss import Seq2SeqLoss
from mt.model import transformer
from mt.optim import build_optimizer, build_scheduler
from mt.prepare import run_prepare
from mt.runtime import autocast, bf16_supported, grad_scaler
from mt.tokenizer import PAD_ID
from mt.tracking import Tracker
from mt.training.trainer import Trainer

# Helsinki-NLP/opus-mt-en-de's config.json, as far as it shapes the model.
OPUS_MT_EN_DE: dict[str, Any] = dict(
    vocab_size=58101, d_model=512, encoder_layers=6, decoder_layers=6,
    encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
    decoder_ffn_dim=2048, activation_function="swish", scale_embedding=True,
    static_position_embeddings=True, max_position_embeddings=512, dropout=0.1,
    attention_dropout=0.0, activation_dropout=0.0, share_encoder_decoder_embeddings=True,
)  # fmt: skip
SMOKE: dict[str, Any] = dict(
    OPUS_MT_EN_DE, vocab_size=300, d_model=32, encoder_layers=2, decoder_layers=2,
    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
    decoder_ffn_dim=64, max_position_embeddings=128,
)  # fmt: skip
LR = 5e-5


def _lines(corpus: Path, lang: str) -> list[str]:
    import gzip

    with gzip.open(corpus / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
        return [line.strip() for line in f]


def _spm(prefix: Path, lines: list[str], size: int) -> tuple[Path, list[str]]:
    """A SentencePiece model of at most `size` pieces and its pieces (no specials)."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=size,
        hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_file=str(prefix.with_suffix(".model")))
    keep = [i for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
    return prefix.with_suffix(".model"), [sp.id_to_piece(i) for i in keep]


def build_marian(folder: Path, corpus: Path, shape: dict[str, Any], spm_size: int) -> Path:
    """Save a random MarianMTModel of `shape` and its MarianTokenizer into folder/hf."""
    import transformers

    source, src_pieces = _spm(folder / "source", _lines(corpus, "en"), spm_size)
    target, tgt_pieces = _spm(folder / "target", _lines(corpus, "de"), spm_size)
    size = shape["vocab_size"]
    pieces = list(dict.fromkeys([*src_pieces, *tgt_pieces]))[: size - 3]
    pieces += [f"<fill{i}>" for i in range(size - 3 - len(pieces))]  # up to the real vocabulary
    table = {p: i for i, p in enumerate(["</s>", "<unk>", *pieces, "<pad>"])}
    (folder / "vocab.json").write_text(json.dumps(table), encoding="utf-8")
    tok = transformers.MarianTokenizer(
        str(source), str(target), str(folder / "vocab.json"), source_lang="en", target_lang="de"
    )
    config = transformers.MarianConfig(
        **shape, pad_token_id=size - 1, eos_token_id=0, decoder_start_token_id=size - 1,
        forced_eos_token_id=0, bad_words_ids=[[size - 1]], num_beams=4,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.MarianMTModel(config).save_pretrained(folder / "hf")
    tok.save_pretrained(folder / "hf")
    return folder / "hf"


def setup(work: Path, smoke: bool) -> None:
    """work/hf (the model), work/run (its import), work/data (the corpus in its ids)."""
    corpus = multi30k_dir()
    if smoke or not (corpus / "train.en.gz").is_file():
        corpus = smoke_corpus(work / "corpus", train=2000 if not smoke else 400)
    shape, spm_size = (SMOKE, 200) if smoke else (OPUS_MT_EN_DE, 8000)
    hf = build_marian(work, corpus, shape, spm_size)
    run_import(ImportConfig(source=str(hf), run_dir=str(work / "run")))
    data = DataConfig(name="ft", path=str(corpus), format="text", valid="val", test=None)
    tokenizer = TokenizerConfig(from_run=str(work / "run"))
    run_prepare(PrepareConfig(data=data, tokenizer=tokenizer, out_dir=str(work / "data")))


def load_batches(work: Path, n: int, max_tokens: int) -> list[Batch]:
    """The first `n` training batches of work/data, of at most `max_tokens` padded tokens each
    (the same in every process)."""
    max_len = json.loads((work / "run" / "import.json").read_text())["model_args"]["max_positions"]
    train = ParallelData(work / "data", "train", max_len)
    return [train.collate(b) for b in epoch_batches(train, max_tokens, seed=1, epoch=0)[:n]]


class Mt:
    """mt's real `Trainer.train_step` on the imported model."""

    def __init__(self, work: Path, precision: str, device: torch.device) -> None:
        ckpt = load_checkpoint(work / "run" / "checkpoints" / "final.pt")
        model = transformer(**ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
        model.to(device).train()
        opt = build_optimizer(model, LR, (0.9, 0.98), 1e-8, 0.0, device)
        self.trainer = Trainer(
            model=model, loss_fn=Seq2SeqLoss(model, 0.1, PAD_ID), optimizer=opt,
            scheduler=build_scheduler(opt, 1), scaler=grad_scaler(precision, device),
            train_data=None, valid_data=None, tokenizer=None, tracker=Tracker(None), run=None,
            cfg=TrainLoopConfig(), device=device, precision=precision,
        )  # fmt: skip

    def step(self, batch: Batch) -> None:
        self.trainer.train_step([batch])


class Transformers:
    """A plain transformers loop on the MarianMTModel: logits -> label-smoothed cross-entropy,
    AdamW, clipping (a GradScaler in fp16, as mt's Trainer); mt's batches mapped to its ids."""

    def __init__(self, work: Path, precision: str, device: torch.device) -> None:
        import transformers

        self.model = transformers.MarianMTModel.from_pretrained(work / "hf").to(device).train()
        pretrained = load_checkpoint(work / "run" / "checkpoints" / "final.pt")["pretrained"]
        self.rows = torch.tensor(IdMap.from_json(pretrained["tgt_map"]).rows, device=device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=(0.9, 0.98))
        self.scaler = grad_scaler(precision, device)
        self.precision, self.device = precision, device

    def step(self, batch: Batch) -> None:
        batch = batch.to(self.device)
        labels = self.rows[batch.tgt_out].masked_fill(batch.tgt_out == PAD_ID, -100)
        with autocast(self.precision, self.device):
            logits = self.model(
                input_ids=self.rows[batch.src],  # [B, S] model ids (a shared vocabulary)
                attention_mask=~batch.src_pad_mask,
                decoder_input_ids=self.rows[batch.tgt_in],  # mt's bos -> the decoder start
            ).logits
        plain_update(self.model, self.opt, self.scaler, logits, labels, -100, batch.n_tgt_tokens)


SYSTEMS = {"mt": Mt, "transformers": Transformers}


def compare(work: Path, batches: list[Batch], precision: str, seconds: float, rounds: int,
            device: torch.device) -> dict[str, float]:  # fmt: skip
    """Target tokens/s of each system, in alternating rounds after two warm-up steps."""
    systems = {name: cls(work, precision, device) for name, cls in SYSTEMS.items()}
    return alternate(systems, batches, seconds, rounds, device, warmup=2)


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: the peak), in MiB."""
    with open("/proc/self/status", encoding="ascii") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+), so the peak is this system's, not that of
    the imports before it; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def child(work: Path, name: str, precision: str, device: torch.device, args: argparse.Namespace):
    """One system alone for `args.steps` steps; prints its peak memory as JSON."""
    import transformers  # noqa: F401  (both children hold the same libraries)

    batches = load_batches(work, args.steps, args.max_tokens)
    reset = _reset_peak_rss()
    before = _status_mb("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    system = SYSTEMS[name](work, precision, device)
    for batch in batches:
        system.step(batch)
    synchronize(device)
    peak = _status_mb("VmHWM")
    if not reset:  # the process's peak, imports included
        peak = max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out = {"peak_rss_mb": round(peak), "peak_rss_above_start_mb": round(peak - before)}
    if device.type == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    print_json(out)


def peak_memory(work: Path, name: str, precision: str, args: argparse.Namespace) -> dict:
    argv = [sys.executable, __file__, "--child", name, "--work", str(work),
            "--precisions", precision, "--device", args.device, "--threads", str(args.threads),
            "--steps", str(args.steps), "--max-tokens", str(args.max_tokens)]  # fmt: skip
    done = run_child(argv, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"child {name} {precision} failed:\n{done.stderr[-3000:]}")
    return last_json_line(done.stdout)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--seconds", type=float, default=60.0, help="per system and precision")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--steps", type=int, default=8, help="steps of each memory child")
    parser.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--child", choices=sorted(SYSTEMS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.precisions, args.seconds, args.rounds, args.batches, args.steps = "fp32", 1, 2, 4, 2
        args.max_tokens = 512
    return args


def main() -> None:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.child:
        child(args.work, args.child, args.precisions, device, args)
        return
    cpu = f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"torch {torch.__version__}, {where}")
    precisions = args.precisions.split(",")
    if "bf16" in precisions and not bf16_supported(device):
        print("bf16: this device has no native bf16 matmul; bf16 skipped")
        precisions.remove("bf16")
    results: dict[str, Any] = {"shape": "smoke" if args.smoke else "opus-mt-en-de", "device": where}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        setup(work, args.smoke)
        batches = load_batches(work, args.batches, args.max_tokens)
        results["batches"] = len(batches)
        results["tgt_tokens_per_batch"] = round(sum(b.n_tgt_tokens for b in batches) / len(batches))
        for precision in precisions:
            speed = compare(work, batches, precision, args.seconds, args.rounds, device)
            memory = {name: peak_memory(work, name, precision, args) for name in SYSTEMS}
            ratio = speed["mt"] / speed["transformers"]
            print(
                f"{precision}: mt {speed['mt']:8.0f} tgt tok/s, peak {memory['mt']} | "
                f"transformers {speed['transformers']:8.0f}, peak {memory['transformers']} | "
                f"ratio {ratio:.2f}x",
                flush=True,
            )
            results[precision] = {
                "mt_tok_s": round(speed["mt"]), "transformers_tok_s": round(speed["transformers"]),
                "mt_memory": memory["mt"], "transformers_memory": memory["transformers"],
            }  # fmt: skip
            results[f"ratio_{precision}"] = round(ratio, 3)
    print_json(results)


if __name__ == "__main__":
    main()
