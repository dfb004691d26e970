"""Fine-tuning: `mt prepare tokenizer.from_run=RUN_DIR` and `mt train init_from=RUN_DIR`, from a
tiny run mt trained and from a tiny random Marian imported with `mt import` (the builders of
tests/test_import.py): the vocabulary, the weights, resume, the refusals, and a fine-tuned
import that translates, serves and exports back to its class; an imported NLLB and M2M100,
whose data gets their language codes on both sides as transformers gives them. With
MT_MULTI30K set, 50 steps on Multi30k from an imported tiny Marian lower the validation loss."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from mt.checkpoint import load_checkpoint
from mt.cli import main
from mt.convert.pretrained import IdMap
from mt.data import ParallelData
from mt.decode.run import for_target, load_run
from mt.errors import MTError
from mt.loss import Seq2SeqLoss
from mt.manifest import load_manifest
from mt.runvocab import read_run_vocab
from mt.tokenizer import EOS_ID, PAD_ID, load_tokenizer
from mt.training.validation import evaluate_split
from tests.conftest import write_corpus

transformers = pytest.importorskip("transformers")

from tests.test_import import (  # noqa: E402
    SRC_WORDS,
    TGT_WORDS,
    Family,
    _generate,
    _import,
    _m2m100,
    _marian,
    _sentences,
    _spm_pieces,
    _train_spm,
    _translate_args,
)

CPU = ["train.device=cpu", "train.precision=fp32", "train.log_every=5"]
QUICK = [*CPU, "train.threads=1", "train.max_tokens=512", "train.valid_every=0",
         "train.tune_decoding=false"]  # fmt: skip


def _stage(stage: str, *args: str) -> None:
    main([stage, *args])


def _refusal(capsys: pytest.CaptureFixture[str], stage: str, *args: str) -> str:
    """The one sentence a stage ends with (exit status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([stage, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mt {stage}: error: "), err
    return err[0]


def _results(run: Path) -> dict[str, Any]:
    return json.loads((run / "results.json").read_text(encoding="utf-8"))


def _valid_loss(run: Path, data: Path) -> float:
    """Label-smoothing-free loss per target token of the run's checkpoint on `data`'s valid."""
    loaded = load_run(run, None, torch.device("cpu"))
    split = ParallelData(data, "valid", loaded.max_len)
    metrics = evaluate_split(
        loaded.model, split, loaded.tgt_tok, "fp32", torch.device("cpu"), False, "valid"
    )
    return metrics["valid/loss"]


# ---------------------------------------------------------------- from a run mt trained


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run mt trained for 30 steps on the toy corpus (its own SentencePiece model)."""
    root = tmp_path_factory.mktemp("mt_run")
    corpus = write_corpus(root / "corpus")
    _stage("prepare", "data=local", f"data.path={corpus}", f"out_dir={root / 'data'}",
           "spm.vocab_size=320")  # fmt: skip
    _stage("train", f"data_dir={root / 'data'}", f"run_dir={root / 'run'}", "model=tiny",
           *QUICK, "train.max_steps=30", "train.lr=3e-3", "train.warmup_steps=10")  # fmt: skip
    return root / "run"


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory, mt_run: Path) -> Path:
    """Another toy corpus prepared with `mt_run`'s tokenizer."""
    root = tmp_path_factory.mktemp("domain")
    corpus = write_corpus(root / "corpus", {"train": 120, "valid": 16, "test": 16})
    out = root / "data"
    _stage("prepare", "data=local", f"data.path={corpus}", f"out_dir={out}",
           f"tokenizer.from_run={mt_run}")  # fmt: skip
    return out


def test_prepare_from_run_encodes_with_the_runs_vocabulary(
    domain: Path, mt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = load_manifest(domain)
    vocab = json.loads((mt_run / "vocab.json").read_text(encoding="utf-8"))
    assert manifest.spm.identity() == vocab
    assert manifest.spm.from_run == str(mt_run.resolve())
    assert manifest.config["tokenizer"]["from_run"] == str(mt_run)
    tok = load_tokenizer(domain / manifest.spm.models["src"])
    assert tok.pieces() == load_tokenizer(mt_run / vocab["models"]["src"]).pieces()
    corpus = domain.parent / "corpus"
    _stage("prepare", "data=local", f"data.path={corpus}", f"out_dir={domain}",
           f"tokenizer.from_run={mt_run}")  # fmt: skip
    assert "up to date" in capsys.readouterr().out


def test_init_from_starts_at_the_runs_weights_and_resumes_without_it(
    domain: Path, mt_run: Path, tmp_path: Path
) -> None:
    init = tmp_path / "init"
    shutil.copytree(mt_run, init)
    run = tmp_path / "tuned"
    args = [f"init_from={init}", f"data_dir={domain}", f"run_dir={run}", *QUICK]
    _stage("train", *args, "train.max_steps=2", "train.lr=1e-12", "train.warmup_steps=1")
    assert _results(run)["step"] == 2  # step 0, not the init run's 30
    start = read_run_vocab(init, "init_from").ckpt["model"]  # the checkpoint it decodes with
    tuned = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.allclose(tuned["model"][k], v, atol=1e-8) for k, v in start.items())
    assert tuned["config"]["init_from"] == str(init)
    shutil.rmtree(init)  # a resumed fine-tune reads its own checkpoints only
    _stage("train", *args, "train.max_steps=4", "train.lr=1e-12", "train.warmup_steps=1")
    assert _results(run)["step"] == 4


def test_refusals_name_the_key_or_file(
    domain: Path, mt_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "tuned"
    base = [f"data_dir={domain}", f"run_dir={run}", *QUICK, "train.max_steps=1"]
    other = tmp_path / "other"  # a data folder with its own SentencePiece model
    _stage("prepare", "data=local", f"data.path={domain.parent / 'corpus'}", f"out_dir={other}",
           "spm.vocab_size=300")  # fmt: skip
    err = _refusal(capsys, "train", f"init_from={mt_run}", *base[1:], f"data_dir={other}")
    assert "was prepared with another vocabulary than init_from" in err
    assert f"tokenizer.from_run={mt_run}" in err
    err = _refusal(capsys, "train", f"init_from={mt_run}", *base, "model.d_model=48")
    assert "model.d_model=48 differs from init_from" in err
    err = _refusal(capsys, "train", f"init_from={mt_run}", *base, "model.norm=post")
    assert "model.norm=post differs" in err
    assert "model=small with init_from" in _refusal(
        capsys, "train", f"init_from={mt_run}", *base, "model=small"
    )
    empty = tmp_path / "empty"
    shutil.copytree(mt_run, empty, ignore=shutil.ignore_patterns("*.pt"))
    err = _refusal(capsys, "train", f"init_from={empty}", *base)
    assert f"init_from={empty} has no checkpoint" in err
    err = _refusal(capsys, "prepare", "data=local", f"data.path={domain.parent / 'corpus'}",
                   f"out_dir={tmp_path / 'd'}", f"tokenizer.from_run={tmp_path}")  # fmt: skip
    assert f"tokenizer.from_run={tmp_path} has no vocab.json" in err
    assert not run.exists() or not (run / "checkpoints" / "last.pt").exists()


def test_dropout_may_change_and_the_fine_tune_trains(
    domain: Path, mt_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "tuned"
    _stage("train", f"init_from={mt_run}", f"data_dir={domain}", f"run_dir={run}", *QUICK,
           "train.max_steps=3", "model.dropout=0.3", "experiment=finetune")  # fmt: skip
    cfg = load_checkpoint(run / "checkpoints" / "last.pt")["config"]
    assert cfg["model"]["dropout"] == 0.3 and cfg["train"]["lr"] == 5e-5
    assert _results(run)["step"] == 3


def test_init_from_with_data_prepares_it_with_the_init_runs_tokenizer(
    domain: Path, mt_run: Path, tmp_path: Path
) -> None:
    prepared = tmp_path / "prepared"
    _stage("train", f"init_from={mt_run}", "data=local", f"data.path={domain.parent / 'corpus'}",
           f"prepare_dir={prepared}", f"run_dir={tmp_path / 'tuned'}", *QUICK,
           "train.max_steps=1")  # fmt: skip
    assert load_manifest(prepared).spm.from_run == str(mt_run.resolve())
    assert _results(tmp_path / "tuned")["step"] == 1


# ---------------------------------------------------------------- from an imported Marian


def _pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """The word-for-word toy translation the tiny Marian was fit on."""
    words = dict(zip(SRC_WORDS, [*TGT_WORDS, "wasser"], strict=True))
    src = _sentences(SRC_WORDS, n, seed)
    return src, [" ".join(words[w] for w in line.split()) for line in src]


def _toy_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for split, n, seed in (("train", 200, 21), ("valid", 24, 22), ("test", 24, 23)):
        src, tgt = _pairs(n, seed)
        (folder / f"{split}.en").write_text("\n".join(src) + "\n", encoding="utf-8")
        (folder / f"{split}.de").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Marian (shared vocabulary, swish) imported, and toy data with its tokenizer."""
    root = tmp_path_factory.mktemp("marian")
    folder, _, _ = _marian(root, shared=True, activation="swish", scale=True)
    _import(folder, root / "import")
    corpus = _toy_corpus(root / "corpus")
    _stage("prepare", "data=local", f"data.path={corpus}", f"out_dir={root / 'data'}",
           f"tokenizer.from_run={root / 'import'}")  # fmt: skip
    return root / "import", root / "data"


def _fine_tune_20_steps(imported: Path, data: Path, *extra: str) -> Path:
    """`imported` fine-tuned 20 steps on `data` (experiment=finetune at lr 1e-3) into the
    folder "tuned" beside it: validation (BLEU) every 10, tuning beam 2, lenpen 1.0 only."""
    run = imported.parent / "tuned"
    _stage("train", "experiment=finetune", f"init_from={imported}", f"data_dir={data}",
           f"run_dir={run}", *CPU, "train.threads=1", "train.max_tokens=512", "train.max_steps=20",
           "train.lr=1e-3", "train.warmup_steps=5", "train.valid_every=10",
           "train.tune_beams=[2]", "train.tune_lenpens=[1.0]", *extra)  # fmt: skip
    return run


@pytest.fixture(scope="module")
def marian_tuned(marian: tuple[Path, Path]) -> Path:
    """The import fine-tuned 20 steps: validation (BLEU) every 10, averaging, tuning."""
    imported, data = marian
    return _fine_tune_20_steps(imported, data, "train.average_last=2")


def test_the_imported_vocabulary_prepares_joint_data(marian: tuple[Path, Path]) -> None:
    imported, data = marian
    manifest = load_manifest(data)
    assert manifest.spm.joint and manifest.normalize == "none"  # the import's form
    assert manifest.spm.identity() == json.loads((imported / "vocab.json").read_text())
    assert {"source.spm", "target.spm", "src.vocab.json", "tgt.vocab.json"} <= {
        p.name for p in data.iterdir()
    }


def test_a_fine_tuned_import_lowers_loss_and_keeps_its_way_back(
    marian: tuple[Path, Path], marian_tuned: Path
) -> None:
    imported, data = marian
    assert _valid_loss(marian_tuned, data) < _valid_loss(imported, data)
    results = _results(marian_tuned)
    assert results["step"] == 20 and "valid/bleu" in results["history"][-1]
    ckpt = load_checkpoint(marian_tuned / "checkpoints" / "final.pt")
    pretrained = load_checkpoint(imported / "checkpoints" / "final.pt")["pretrained"]
    assert ckpt["pretrained"] == pretrained
    assert (marian_tuned / "hf_tokenizer").is_dir()
    assert (marian_tuned / "decoding.json").is_file()


def test_a_fine_tuned_import_translates_and_exports_to_its_class(
    marian: tuple[Path, Path], marian_tuned: Path, tmp_path: Path
) -> None:
    out = tmp_path / "hf"
    _stage("export", f"run_dir={marian_tuned}", "format=huggingface", f"out_dir={out}")
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert type(hf) is transformers.MarianMTModel
    tok = transformers.AutoTokenizer.from_pretrained(out)
    texts = _pairs(30, 31)[0]
    fam = Family(out, marian_tuned, hf, tok, None, None)  # type: ignore[arg-type]
    src, hyp = tmp_path / "src.txt", tmp_path / "hyp.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    _stage("translate", *_translate_args(fam, 1), f"input={src}", f"output={hyp}")
    eos = hf.config.eos_token_id
    want = tok.batch_decode([[*seq, eos] for seq in _generate(fam, texts, 1)],
                            skip_special_tokens=True)  # fmt: skip
    assert hyp.read_text(encoding="utf-8").splitlines() == want


def test_a_fine_tuned_import_serves(marian_tuned: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from mt.config import DecodeConfig, ServeOptions
    from mt.decode.torch_engine import TorchTranslator
    from mt.serve.app import build_app

    cpu = torch.device("cpu")
    translator = TorchTranslator(load_run(marian_tuned, None, cpu), DecodeConfig(), cpu, "fp32")
    texts = _pairs(4, 41)[0]
    expected = [hyps[0][0] for hyps in translator.translate(texts)]
    with TestClient(build_app(translator, ServeOptions(batch_window_ms=1), None)) as client:
        answer = client.post("/translate", json={"text": texts})
    assert answer.status_code == 200, answer.text
    assert answer.json()["translations"] == expected


def test_separate_vocabularies_prepare_and_fine_tune(tmp_path: Path) -> None:
    folder, _, _ = _marian(tmp_path, shared=False, activation="relu", scale=False)
    _import(folder, tmp_path / "import")
    corpus = _toy_corpus(tmp_path / "corpus")
    data, run = tmp_path / "data", tmp_path / "tuned"
    _stage("prepare", "data=local", f"data.path={corpus}", f"out_dir={data}",
           f"tokenizer.from_run={tmp_path / 'import'}")  # fmt: skip
    assert not load_manifest(data).spm.joint
    _stage("train", f"init_from={tmp_path / 'import'}", f"data_dir={data}", f"run_dir={run}",
           *QUICK, "train.max_steps=2")  # fmt: skip
    assert _results(run)["step"] == 2
    args = load_checkpoint(run / "checkpoints" / "last.pt")["model_args"]
    assert args["share_embeddings"] is False


# ---------------------------------------------------------------- from an imported NLLB / M2M100

NLLB_CODES = ["tokenizer.src_lang=eng_Latn", "tokenizer.tgt_lang=deu_Latn"]


@pytest.fixture(scope="module")
def nllb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """A tiny NLLB (its tokenizer, codes eng_Latn, deu_Latn) imported; toy data prepared with
    its tokenizer and codes; the Hugging Face tokenizer."""
    root = tmp_path_factory.mktemp("nllb")
    folder, _, tok = _m2m100(root, nllb=True)
    _import(folder, root / "import")
    corpus = _toy_corpus(root / "corpus")
    _stage("prepare", "data=local", f"data.path={corpus}", f"out_dir={root / 'data'}",
           f"tokenizer.from_run={root / 'import'}", *NLLB_CODES)  # fmt: skip
    return root / "import", root / "data", tok


def _model_ids(imported: Path) -> IdMap:
    return IdMap.from_json(
        load_checkpoint(imported / "checkpoints" / "final.pt")["pretrained"]["tgt_map"]
    )


def test_nllb_data_holds_the_ids_transformers_trains_on(nllb: tuple[Path, Path, Any]) -> None:
    """Sources are [eng_Latn] pieces </s> and targets [deu_Latn] pieces </s>, as NllbTokenizer
    gives input_ids and labels; decoding starts from the decoder start, as transformers shifts."""
    imported, data, tok = nllb
    manifest = load_manifest(data)
    assert (manifest.src_tag, manifest.tgt_tag) == ("eng_Latn", "deu_Latn")
    src, tgt = _pairs(24, 22)  # the valid split, kept in order
    want = tok(src, text_target=tgt)
    rows = _model_ids(imported).rows
    split = ParallelData(data, "valid", 64)
    batch = split.collate(list(range(len(split))))
    for i in range(len(split)):
        got_src = [rows[t] for t in batch.src[i].tolist() if t != PAD_ID]
        got_tgt = [rows[t] for t in batch.tgt_out[i].tolist() if t != PAD_ID]
        assert got_src == want["input_ids"][i]
        assert got_tgt == want["labels"][i]
    assert rows[int(batch.tgt_in[0, 0])] == tok.eos_token_id  # M2M100's decoder start


def test_nllb_fine_tuning_loss_is_transformers_loss(nllb: tuple[Path, Path, Any]) -> None:
    """On the prepared validation batch, mt's training loss (no smoothing) is the cross-entropy
    transformers computes for the same model from NllbTokenizer's input_ids and labels."""
    imported, data, tok = nllb
    src, tgt = _pairs(24, 22)
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(imported.parent / "hf").eval()
    inputs = tok(src, text_target=tgt, return_tensors="pt", padding=True)
    inputs["labels"] = inputs["labels"].masked_fill(inputs["labels"] == tok.pad_token_id, -100)
    loaded = load_run(imported, None, torch.device("cpu"))
    split = ParallelData(data, "valid", loaded.max_len)
    batch = split.collate(list(range(len(split))))
    with torch.no_grad():
        want = hf(**inputs).loss
        _, nll = Seq2SeqLoss(loaded.model, 0.0, PAD_ID)(
            batch.src, batch.src_pad_mask, batch.tgt_in, batch.tgt_out
        )
    torch.testing.assert_close(nll / batch.n_tgt_tokens, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def nllb_tuned(nllb: tuple[Path, Path, Any]) -> Path:
    """The NLLB import fine-tuned 20 steps: validation (greedy BLEU) every 10, tuning."""
    imported, data, _ = nllb
    return _fine_tune_20_steps(imported, data, "train.average_last=0")


def test_a_fine_tuned_nllb_translates_into_its_language_and_exports_back(
    nllb: tuple[Path, Path, Any], nllb_tuned: Path, tmp_path: Path
) -> None:
    imported, data, tok = nllb
    assert _valid_loss(nllb_tuned, data) < _valid_loss(imported, data)
    assert "valid/bleu" in _results(nllb_tuned)["history"][-1]
    ckpt = load_checkpoint(nllb_tuned / "checkpoints" / "final.pt")
    assert ckpt["data"]["src_tag"] == "eng_Latn" and ckpt["data"]["tgt_tag"] == "deu_Latn"
    texts = _pairs(30, 31)[0]
    src, hyp = tmp_path / "src.txt", tmp_path / "hyp.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    args = ["decode.beam=1", "decode.max_len_a=0", "decode.max_len_b=22", "device=cpu",
            "precision=fp32"]  # fmt: skip
    # no decode.tgt_lang: the run translates into the language it was tuned for
    _stage("translate", f"run_dir={nllb_tuned}", *args, f"input={src}", f"output={hyp}")
    by_code = tmp_path / "by_code.txt"
    _stage("translate", f"run_dir={nllb_tuned}", *args, "decode.tgt_lang=deu_Latn",
           f"input={src}", f"output={by_code}")  # fmt: skip
    assert by_code.read_text(encoding="utf-8") == hyp.read_text(encoding="utf-8")
    loaded = load_run(nllb_tuned, None, torch.device("cpu"))
    with pytest.raises(MTError, match=r"translates into de \(deu_Latn\) only"):
        for_target(loaded, "fra_Latn")
    out = tmp_path / "hf"
    _stage("export", f"run_dir={nllb_tuned}", "format=huggingface", f"out_dir={out}")
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert type(hf) is transformers.M2M100ForConditionalGeneration
    deu = tok.convert_tokens_to_ids("deu_Latn")
    assert hf.generation_config.forced_bos_token_id == deu
    back = transformers.AutoTokenizer.from_pretrained(out)
    with torch.no_grad():  # generate's defaults, but for the search settings mt was given
        made = hf.generate(**back(texts, return_tensors="pt", padding=True), num_beams=1,
                           max_length=24, bad_words_ids=None)  # fmt: skip
    want = back.batch_decode(made, skip_special_tokens=True)
    assert [row[1] for row in made.tolist()] == [deu] * len(texts)
    assert hyp.read_text(encoding="utf-8").splitlines() == want


def test_m2m100_data_takes_its_codes_from_the_corpus_languages(tmp_path: Path) -> None:
    folder, _, tok = _m2m100(tmp_path, nllb=False)
    _import(folder, tmp_path / "import")
    data = tmp_path / "data"
    _stage("prepare", "data=local", f"data.path={_toy_corpus(tmp_path / 'corpus')}",
           f"out_dir={data}", f"tokenizer.from_run={tmp_path / 'import'}")  # fmt: skip
    manifest = load_manifest(data)
    assert (manifest.src_tag, manifest.tgt_tag) == ("__en__", "__de__")
    rows = _model_ids(tmp_path / "import").rows
    first = ParallelData(data, "valid", 64).collate([0])
    assert rows[int(first.src[0, 0])] == tok.convert_tokens_to_ids("__en__")
    assert rows[int(first.tgt_out[0, 0])] == tok.convert_tokens_to_ids("__de__")
    assert int(first.tgt_out[0, -1]) == EOS_ID


def test_language_code_refusals_name_the_key(
    nllb: tuple[Path, Path, Any], marian: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    imported = nllb[0]
    corpus = imported.parent / "corpus"
    base = ["data=local", f"data.path={corpus}", f"out_dir={tmp_path / 'd'}"]
    err = _refusal(capsys, "prepare", *base, f"tokenizer.from_run={imported}")
    assert "has none for data.src=en: set tokenizer.src_lang" in err
    err = _refusal(capsys, "prepare", *base, f"tokenizer.from_run={imported}",
                   "tokenizer.src_lang=eng_Latn", "tokenizer.tgt_lang=xyz_Latn")  # fmt: skip
    assert "tokenizer.tgt_lang=xyz_Latn is not a language code of" in err
    err = _refusal(capsys, "prepare", *base, f"tokenizer.from_run={marian[0]}",
                   "tokenizer.src_lang=eng_Latn")  # fmt: skip
    assert "has no language codes" in err
    err = _refusal(capsys, "prepare", *base, f"tokenizer.from_run={imported}", *NLLB_CODES,
                   "data.directions=[en-de,de-en]")  # fmt: skip
    assert "one direction at a time" in err
    err = _refusal(capsys, "prepare", *base, "tokenizer.tgt_lang=deu_Latn")
    assert "set tokenizer.from_run, or leave them unset" in err
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- Multi30k (MT_MULTI30K)

CORPUS = os.environ.get("MT_MULTI30K")


def _multi30k_marian(root: Path, corpus: Path) -> Path:
    """A random tiny MarianMTModel whose SentencePiece models were trained on Multi30k."""
    import gzip

    def lines(name: str) -> list[str]:
        with gzip.open(corpus / name, "rt", encoding="utf-8") as f:
            return [line.strip() for line in f][:10_000]

    source = _train_spm(root / "src", lines("train.en.gz"), 1000, "unigram")
    target = _train_spm(root / "tgt", lines("train.de.gz"), 1000, "unigram")
    src_pieces, tgt_pieces = _spm_pieces(source), _spm_pieces(target)
    joint = src_pieces + [p for p in tgt_pieces if p not in set(src_pieces)]
    table = {p: i for i, p in enumerate(["</s>", "<unk>", *joint, "<pad>"])}
    (root / "vocab.json").write_text(json.dumps(table), encoding="utf-8")
    tok = transformers.MarianTokenizer(str(source), str(target), str(root / "vocab.json"),
                                       source_lang="en", target_lang="de")  # fmt: skip
    size = len(table)
    config = transformers.MarianConfig(
        vocab_size=size, decoder_vocab_size=size, d_model=64, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, activation_function="swish",
        max_position_embeddings=256, pad_token_id=size - 1, eos_token_id=0,
        decoder_start_token_id=size - 1, forced_eos_token_id=0, scale_embedding=True,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = root / "hf"
    transformers.MarianMTModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.skipif(CORPUS is None, reason="set MT_MULTI30K to the Multi30k folder")
def test_fifty_steps_on_multi30k_lower_the_validation_loss(tmp_path: Path) -> None:
    corpus = Path(str(CORPUS))
    _import(_multi30k_marian(tmp_path, corpus), tmp_path / "import")
    data, run = tmp_path / "data", tmp_path / "tuned"
    _stage("prepare", "data=multi30k_local", f"data.path={corpus}", "data.test=null",
           f"out_dir={data}", f"tokenizer.from_run={tmp_path / 'import'}")  # fmt: skip
    _stage("train", "experiment=finetune", f"init_from={tmp_path / 'import'}", f"data_dir={data}",
           f"run_dir={run}", *CPU, "train.threads=0", "train.max_tokens=1024",
           "train.max_steps=50", "train.lr=1e-3", "train.warmup_steps=10",
           "train.valid_every=0", "train.valid_bleu=false", "train.average_last=0",
           "train.tune_decoding=false")  # fmt: skip
    before, after = _valid_loss(tmp_path / "import", data), _valid_loss(run, data)
    print(f"Multi30k valid loss per target token: {before:.3f} before, {after:.3f} after 50 steps")
    assert after < before
