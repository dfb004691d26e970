"""mt export and engine=ctranslate2: the exported models translate exactly as mt does."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mt.config import DecodeConfig
from mt.convert.export import export
from mt.convert.source import Source, check_representable, load_source
from mt.decode.engine import make_translator
from mt.decode.run import load_run
from mt.decode.torch_engine import TorchTranslator
from mt.errors import MTError
from mt.model import transformer
from mt.rundir import RunDir
from mt.tokenizer import Tokenizer
from tests.conftest import make_pairs, prepare_config, train_config, write_corpus
from tests.test_cli import assert_clean_error, mt

ctranslate2 = pytest.importorskip("ctranslate2")
transformers = pytest.importorskip("transformers")
CPU = torch.device("cpu")


def _inputs() -> list[str]:
    """Unseen word combinations, empty lines and lines longer than the model's positions."""
    lines, _ = make_pairs(240, seed=11)
    long_line = " ".join(["red big house"] * 200)  # > max_positions pieces: truncated
    return ["", *lines[:120], "", long_line, *lines[120:], "   ", long_line[:300]]


def _decode(**kw) -> DecodeConfig:
    return DecodeConfig(**{"max_len_a": 1.2, "max_len_b": 10, **kw})


@pytest.mark.parametrize("inter", [1, 2])  # 2: two batches of 16 decode at once in each engine
def test_ctranslate2_greedy_is_token_identical(overfit_loaded, inter):
    lines = _inputs()
    decode = _decode(beam=1, batch_size=16, inter_threads=inter)
    ours = TorchTranslator(overfit_loaded, decode, CPU, "fp32").translate(lines)
    theirs = make_translator(overfit_loaded, decode, CPU, "fp32", "ctranslate2").translate(lines)
    assert [h[0][0] if h else None for h in theirs] == [h[0][0] if h else None for h in ours]
    for a, b in zip(ours, theirs, strict=True):
        if a:
            assert abs(a[0][1] - b[0][1]) < 1e-3  # the same score, eos included


def test_ctranslate2_beam4_nbest4_matches(overfit_loaded):
    """The same model in both engines: every hypothesis both find scores the same. The searches
    stop differently (CTranslate2 at `beam` finished hypotheses, mt when no live one can win),
    so n-best tails differ and a few best hypotheses too (240 of 242 lines agree here)."""
    lines = [line for line in _inputs() if line.strip()]
    decode = _decode(beam=4, nbest=4, lenpen=0.0)
    ours = TorchTranslator(overfit_loaded, decode, CPU, "fp32").translate(lines)
    theirs = make_translator(overfit_loaded, decode, CPU, "fp32", "ctranslate2").translate(lines)
    same_best = sum(a[0][0] == b[0][0] for a, b in zip(ours, theirs, strict=True))
    assert same_best >= 0.95 * len(lines)
    for a, b in zip(ours, theirs, strict=True):
        assert len(b) == 4
        if a[0][0] == b[0][0]:
            assert abs(a[0][1] - b[0][1]) < 1e-3


def test_ctranslate2_export_folder_and_cache(overfit_loaded, overfit_run, tmp_path):
    _, run, _ = overfit_run
    folder = run / "ctranslate2" / overfit_loaded.checkpoint.stem
    make_translator(overfit_loaded, _decode(beam=1), CPU, "fp32", "ctranslate2")
    info = json.loads((folder / "mt_export.json").read_text())
    assert info["checkpoint"] == str(overfit_loaded.checkpoint.resolve())
    assert {p.name for p in folder.iterdir()} >= {"model.bin", "mt_export.json", "config.json"}
    stamp = (folder / "model.bin").stat().st_mtime_ns
    make_translator(
        overfit_loaded, _decode(beam=1), CPU, "int8", "ctranslate2"
    )  # cached: no export
    assert (folder / "model.bin").stat().st_mtime_ns == stamp
    info["checkpoint_sha256"] = "0" * 64  # as if the checkpoint had changed since
    (folder / "mt_export.json").write_text(json.dumps(info))
    make_translator(overfit_loaded, _decode(beam=1), CPU, "fp32", "ctranslate2")
    assert (folder / "model.bin").stat().st_mtime_ns != stamp


def _hf(folder: Path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(
        folder
    )


@pytest.mark.parametrize("beam", [1, 4])
def test_huggingface_generate_is_token_identical(overfit_run, overfit_loaded, tmp_path, beam):
    _, run, _ = overfit_run
    folder = export(load_source(run, None), tmp_path / "hf", "huggingface")
    model, tok = _hf(folder)
    lines = [line for line in _inputs() if line.strip() and len(line) < 200][:64]
    ours = TorchTranslator(overfit_loaded, _decode(beam=beam, lenpen=0.0), CPU, "fp32").translate(
        lines
    )
    theirs = []
    for line in lines:  # one at a time: mt's length cap depends on the source length
        batch = tok([line], return_tensors="pt")
        cap = int(1.2 * batch["input_ids"].size(1) + 10)
        with torch.no_grad():
            out = model.generate(**batch, num_beams=beam, length_penalty=0.0, do_sample=False,
                                 max_new_tokens=cap + 1)  # fmt: skip
        theirs.append(tok.decode(out[0, 1 : cap + 1], skip_special_tokens=True))
    same = [a == b[0][0] for a, b in zip(theirs, ours, strict=True)]
    print(f"beam {beam}: {sum(same)} of {len(same)} lines identical")
    if beam == 1:
        assert all(same)
    else:  # at the length cap mt forces eos on every beam, generate ends them without one
        assert sum(same) >= 0.9 * len(same)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "## Scores" in card


def _random_source(rng: random.Random, tok: Tokenizer, tmp: Path, **fixed) -> Source:
    """A random-weight model of random settings (`fixed` overrides them after the draw)."""
    args = dict(
        src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size,
        d_model=rng.choice([16, 32]), n_heads=2, n_layers_enc=rng.randint(1, 3),
        n_layers_dec=rng.randint(1, 3), d_ff=rng.choice([24, 48]), dropout=0.0,
        attn_dropout=0.0, act_dropout=0.0, activation=rng.choice(["relu", "gelu"]),
        norm=rng.choice(["pre", "post"]), positions=rng.choice(["sinusoidal", "learned"]),
        max_positions=64, share_embeddings=rng.choice([True, False]), pad_id=0,
    )  # fmt: skip
    args.update(fixed)
    model = transformer(**args).eval()
    with torch.no_grad():  # norms and biases away from their 1 / 0 start, so a swap shows
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return Source(RunDir(tmp), Path(__file__), model, args, tok, tok, "NFC", "en-de")


def _ct2_logprobs_match(source: Source, tok: Tokenizer, folder: Path, seed: int) -> None:
    """CTranslate2's `score_batch` log-probs of a few pairs equal mt's teacher-forced ones."""
    src_text, tgt_text = make_pairs(3, seed=seed)
    pairs = list(zip(tok.encode(src_text), tok.encode(tgt_text), strict=True))
    ct2 = ctranslate2.Translator(str(folder))
    scored = ct2.score_batch([tok.sp.encode(s, out_type=str) for s in src_text],
                             [tok.sp.encode(t, out_type=str) for t in tgt_text])  # fmt: skip
    for (src, tgt), result in zip(pairs, scored, strict=True):
        ours = _mt_logprobs(source.model, src, tgt)[torch.arange(len(tgt) + 1), [*tgt, 3]]
        torch.testing.assert_close(torch.tensor(result.log_probs), ours, atol=1e-4, rtol=0)


def _mt_logprobs(model, src: list[int], tgt: list[int]) -> torch.Tensor:
    s, t_in = torch.tensor([src + [3]]), torch.tensor([[2, *tgt]])
    with torch.no_grad():
        logits = model(s, s == 0, t_in)[0]
    return F.log_softmax(logits.float(), dim=-1)


@pytest.mark.parametrize("seed", range(8))
def test_random_model_options_export_exactly(prepared_dir, tmp_path, seed):
    tok = Tokenizer(next(prepared_dir.glob("*.model")))
    source = _random_source(random.Random(seed), tok, tmp_path)
    _ct2_logprobs_match(source, tok, export(source, tmp_path / "ct2", "ctranslate2"), seed)
    src_text, tgt_text = make_pairs(3, seed=seed)
    pairs = list(zip(tok.encode(src_text), tok.encode(tgt_text), strict=True))
    hp = source.model_args
    if (hp["norm"] == "pre" and not hp["share_embeddings"]) or (
        hp["norm"] == "post" and hp["positions"] == "learned"
    ):
        with pytest.raises(MTError, match="model.share_embeddings|model.positions"):
            export(source, tmp_path / "hf", "huggingface")
        return
    model, _ = _hf(export(source, tmp_path / "hf", "huggingface"))
    for src, tgt in pairs:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([src + [3]]),
                           decoder_input_ids=torch.tensor([[2, *tgt]])).logits[0]  # fmt: skip
        expected = _mt_logprobs(source.model, src, tgt)
        torch.testing.assert_close(F.log_softmax(logits, -1), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("positions", "norm", "seed"),
    [("rope", "pre", 0), ("rope", "post", 1), ("relative", "pre", 2), ("relative", "post", 3)],
)
def test_rope_and_relative_export_to_ctranslate2_exactly(
    prepared_dir, tmp_path, positions, norm, seed
):
    """Rotary and Shaw relative self-attention (distances clipped at +-4, so longer ones share
    a row): CTranslate2's log-probs are mt's; Hugging Face refuses them by name."""
    tok = Tokenizer(next(prepared_dir.glob("*.model")))
    torch.manual_seed(seed)
    k = 4 if positions == "relative" else 0
    source = _random_source(random.Random(seed), tok, tmp_path, positions=positions, norm=norm,
                            max_relative_positions=k)  # fmt: skip
    _ct2_logprobs_match(source, tok, export(source, tmp_path / "ct2", "ctranslate2"), seed)
    with pytest.raises(MTError, match=f"model.positions={positions} cannot be exported to Hug"):
        export(source, tmp_path / "hf", "huggingface")


@pytest.fixture(scope="module", params=[("rope", "pre"), ("relative", "post")], ids="-".join)
def positions_run(request, tmp_path_factory) -> Path:
    """A tiny model with positions inside self-attention, trained on 32 pairs (as overfit_run)."""
    from mt.prepare import run_prepare
    from mt.train import run_train

    positions, norm = request.param
    root = tmp_path_factory.mktemp(positions)
    corpus = write_corpus(root / "c", {"train": 32, "valid": 32, "test": 32})
    for side in ("en", "de"):
        shutil.copy(corpus / f"train.{side}", corpus / f"valid.{side}")
    run_prepare(prepare_config(corpus, root / "data"))
    k = 4 if positions == "relative" else 0
    cfg = train_config(root / "data", root / "run", "train.max_steps=150", "train.lr=5e-3",
                       "train.label_smoothing=0", "train.max_tokens=4096",
                       f"model.positions={positions}", f"model.max_relative_positions={k}",
                       f"model.norm={norm}")  # fmt: skip
    run_train(cfg)
    return root / "run"


def test_rope_and_relative_runs_translate_in_ctranslate2_as_in_mt(positions_run):
    """engine=ctranslate2 (which exports the run first) decodes incrementally through its own
    caches as mt does: greedy token-identical, beam 4 the same best on nearly every line."""
    loaded = load_run(positions_run, None, CPU)
    lines = _inputs()
    for decode in (_decode(beam=1), _decode(beam=4, nbest=4, lenpen=0.0)):
        ours = TorchTranslator(loaded, decode, CPU, "fp32").translate(lines)
        theirs = make_translator(loaded, decode, CPU, "fp32", "ctranslate2").translate(lines)
        same = [a[0][0] == b[0][0] for a, b in zip(ours, theirs, strict=True) if a]
        print(f"{positions_run.parent.name} beam {decode.beam}: {sum(same)} of {len(same)}")
        if decode.beam == 1:
            assert all(same)
        else:  # the searches stop by different rules (see the beam 4 test above)
            assert sum(same) >= 0.95 * len(same)
        for a, b in zip(ours, theirs, strict=True):
            if a and a[0][0] == b[0][0]:
                assert abs(a[0][1] - b[0][1]) < 1e-3  # the same score, eos included
    lengths = [len(h[0][0]) for h in ours if h]
    assert len(set(lengths)) > 5  # sentences of many lengths: not a degenerate model
    with pytest.raises(MTError, match="cannot be exported to Hugging Face transformers"):
        export(load_source(positions_run, None), positions_run.parent / "hf", "huggingface")


def test_an_option_an_exporter_cannot_hold_is_refused_by_name():
    for positions in ("rope", "relative"):
        args = {"positions": positions, "norm": "pre", "activation": "relu"}
        check_representable(args, "ctranslate2")
        with pytest.raises(
            MTError,
            match=f"model.positions={positions} cannot be exported to Hugging Face transformers",
        ):
            check_representable(args, "huggingface")
    for fmt, target in (("ctranslate2", "CTranslate2"), ("huggingface", "Hugging Face")):
        with pytest.raises(MTError, match=f"model.attn_window=64 cannot be exported to {target}"):
            check_representable({"positions": "sinusoidal", "attn_window": 64}, fmt)
        check_representable({"positions": "learned", "attn_window": 0}, fmt)


def test_mt_export_command(overfit_run, tmp_path):
    _, run, _ = overfit_run
    out = tmp_path / "exports" / "ct2"
    done = mt("export", f"run_dir={run}", f"out_dir={out}", "quantization=int8")
    assert done.returncode == 0, done.stderr
    assert (out / "model.bin").is_file() and list(out.glob("*.model"))
    assert json.loads((out / "mt_export.json").read_text())["quantization"] == "int8"
    again = mt("export", f"run_dir={run}", f"out_dir={out}")
    assert_clean_error(again, "force=true")
    assert mt("export", f"run_dir={run}", f"out_dir={out}", "force=true").returncode == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert_clean_error(mt("export", f"run_dir={run}", f"out_dir={foreign}"), "not an mt export")
    assert (foreign / "notes.txt").read_text() == "keep me"
    bad = mt("export", f"run_dir={run}", f"out_dir={tmp_path / 'q'}", "quantization=int4")
    assert_clean_error(bad, "quantization='int4'")
    shutil.rmtree(out)


def test_ctranslate2_with_a_checkpoint_outside_the_run_folder(overfit_run, tmp_path):
    """engine=ctranslate2 exports into the run folder the checkpoint was named with, not into
    the folder above the checkpoint file, and finds the run's SentencePiece models."""
    _, run, _ = overfit_run
    outside = tmp_path / "elsewhere" / "chosen.pt"
    outside.parent.mkdir()
    shutil.copyfile(run / "checkpoints" / "last.pt", outside)
    loaded = load_run(run, str(outside), CPU)
    lines = _inputs()[:20]
    ours = TorchTranslator(loaded, _decode(beam=1), CPU, "fp32").translate(lines)
    theirs = make_translator(loaded, _decode(beam=1), CPU, "fp32", "ctranslate2").translate(lines)
    assert [h[0][0] if h else None for h in theirs] == [h[0][0] if h else None for h in ours]
    assert (run / "ctranslate2" / "chosen" / "model.bin").is_file()
    assert not (tmp_path / "ctranslate2").exists()
