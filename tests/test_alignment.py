"""Alignments and attention pictures from cross-attention; no repeated n-grams."""

from __future__ import annotations

import pytest
import torch

from mt.config import DecodeConfig
from mt.decode.alignment import cross_attention, pharaoh
from mt.decode.search import repeat_bans
from mt.decode.torch_engine import TorchTranslator
from tests.test_cli import mt

CPU = torch.device("cpu")


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_cross_attention_rows_are_distributions_over_the_source(overfit_loaded):
    src, out = (
        overfit_loaded.src_tok.encode(["red big house"])[0],
        overfit_loaded.tgt_tok.encode(["rot"])[0],
    )
    weights = cross_attention(overfit_loaded.model, src, out)
    heads = overfit_loaded.model.decoder.layers[-1].cross_attn.n_heads
    assert weights.shape == (heads, len(out) + 1, len(src) + 1)
    torch.testing.assert_close(weights.sum(-1), torch.ones(heads, len(out) + 1))
    first = cross_attention(overfit_loaded.model, src, out, layer=0)
    assert not torch.allclose(first, weights)  # the layer is the one asked for


def test_pharaoh_links_pieces_and_words():
    weights = torch.tensor([[0.1, 0.8, 0.1, 0.0], [0.7, 0.2, 0.1, 0.0], [0.0, 0.1, 0.9, 0.0]])
    src, out = ["\u2581a", "b", "\u2581c"], ["\u2581x", "\u2581y", "z"]
    assert pharaoh(weights, src, out) == "1-0 0-1 2-2"
    assert pharaoh(weights, src, out, unit="word") == "0-0 0-1 1-1"  # b is in word 0, z in 1
    assert pharaoh(weights, src, []) == ""


def test_alignment_column_and_pictures_through_the_cli(overfit_run, tmp_path):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    corpus, run, _ = overfit_run
    src = _lines(corpus / "train.en")[:5]
    (tmp_path / "in.en").write_text("\n".join(["", *src]) + "\n", encoding="utf-8")
    pictures = tmp_path / "att"
    done = mt("translate", f"run_dir={run}", f"input={tmp_path / 'in.en'}",
              f"output={tmp_path / 'out'}", "decode.alignment=true", "decode.beam=2",
              f"decode.attention_dir={pictures}", "decode.attention_lines=3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = _lines(tmp_path / "out")
    assert len(lines) == 6 and lines[0] == ""
    for line, source in zip(lines[1:], src, strict=True):
        text, links = line.split("\t")
        n_src = len(source.split())
        pairs = [tuple(map(int, link.split("-"))) for link in links.split()]
        assert pairs and all(0 <= i < 2 * n_src + 2 for i, _ in pairs)  # pieces, not words
    written = sorted(p.name for p in pictures.iterdir())
    assert written == ["in.en.00002.png", "in.en.00003.png"]  # line 1 is empty
    image = matplotlib_image.imread(pictures / written[0])
    assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 400


def test_repeat_bans_forbid_completing_a_seen_ngram():
    history = torch.tensor([[5, 6, 7, 5, 6], [1, 2, 3, 4, 5]])
    rows, tokens = repeat_bans(history, 3)
    assert rows.tolist() == [0] and tokens.tolist() == [7]  # "5 6" was followed by 7
    assert repeat_bans(history, 6) is None


def test_no_repeat_ngram_outputs_have_no_repeated_bigram(overfit_loaded, overfit_run):
    corpus, _, _ = overfit_run
    src = [" ".join(line.split() * 3) for line in _lines(corpus / "train.en")[:12]]
    for beam in (1, 3):
        translator = TorchTranslator(
            overfit_loaded, DecodeConfig(beam=beam, no_repeat_ngram=2), CPU, "fp32"
        )
        for hyps in translator.translate(src):
            ids = overfit_loaded.tgt_tok.encode([hyps[0][0]])[0]
            bigrams = list(zip(ids, ids[1:], strict=False))
            assert len(bigrams) == len(set(bigrams))


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    """A tiny model trained to copy its input (target = source), 2,000 pairs, 400 steps."""
    from mt.prepare import run_prepare
    from mt.train import run_train
    from tests.conftest import make_pairs, prepare_config, train_config

    root = tmp_path_factory.mktemp("copy")
    corpus = root / "c"
    corpus.mkdir()
    for seed, (split, n) in enumerate({"train": 2000, "valid": 20, "test": 20}.items()):
        words, _ = make_pairs(n, seed)
        for side in ("en", "de"):
            (corpus / f"{split}.{side}").write_text("\n".join(words) + "\n", encoding="utf-8")
    run_prepare(prepare_config(corpus, root / "data"))
    steps = ("train.max_steps=400", "train.label_smoothing=0", "train.max_tokens=2048")
    run_train(train_config(root / "data", root / "run", *steps, "train.lr=5e-3"))
    return root / "run"


def test_alignments_of_a_copy_model_are_the_diagonal(copy_run):
    from mt.decode.run import load_run
    from tests.conftest import make_pairs

    run = load_run(copy_run, None, CPU)
    decode = DecodeConfig(beam=1, alignment=True, alignment_unit="word")
    lines, _ = make_pairs(20, 7)  # unseen sentences
    on_diagonal = links = 0
    for (text_links, _score), *_ in TorchTranslator(run, decode, CPU, "fp32").translate(lines):
        pairs = [tuple(map(int, link.split("-"))) for link in text_links.split("\t")[1].split()]
        on_diagonal += sum(i == j for i, j in pairs)
        links += len(pairs)
    assert links >= 100 and on_diagonal / links >= 0.9, (on_diagonal, links)
