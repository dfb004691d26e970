"""One model for several target languages: data.directions, <2xx> source tags, decode.tgt_lang."""

from __future__ import annotations

import json

import pytest
import torch

from mt.config import ConfigError, DecodeConfig, validate_prepare
from mt.decode.run import for_target, load_run
from mt.decode.torch_engine import TorchTranslator
from mt.errors import MTError
from mt.prepare import run_prepare
from mt.shards import Shard, shard_paths
from mt.tokenizer import Tokenizer
from tests.conftest import EN, make_pairs, prepare_config, train_config

FR = "un le homme femme chien chat voit court maison rouge grand petit vert mange pomme marche rue"
FR_OF = dict(zip(EN, FR.split(), strict=True))


def _write(folder, sizes):
    """{split}.en / .de / .fr: German and French are word-by-word images of the English."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(sizes.items()):
        en, de = make_pairs(n, seed)
        fr = [" ".join(FR_OF[w] for w in line.split()) for line in en]
        for lang, lines in (("en", en), ("de", de), ("fr", fr)):
            (folder / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def multi_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    corpus = _write(root / "corpus", {"train": 200, "valid": 10, "test": 10})
    run_prepare(prepare_config(corpus, root / "data", "data.directions=[en-de,en-fr]"))
    return corpus, root / "data"


def test_prepare_tags_each_source_with_its_target_language(multi_data):
    corpus, data = multi_data
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["directions"] == ["en-de", "en-fr"]
    assert manifest["tags"] == {"de": "<2de>", "fr": "<2fr>"}
    assert manifest["splits"]["train"]["pairs"] == 400  # both directions, none dropped
    tok = Tokenizer(data / manifest["spm"]["models"]["src"])
    de_tag, fr_tag = tok.piece_id("<2de>"), tok.piece_id("<2fr>")
    src, tgt = Shard.load(data, "train", "src"), Shard.load(data, "train", "tgt")
    english, german, french = (_lines(corpus / f"train.{lang}") for lang in ("en", "de", "fr"))
    for i in (0, 57, 199):
        # the tag is one piece, then the sentence exactly as it encodes without a tag
        assert src[i].tolist() == [de_tag, *tok.encode([english[i]])[0]]
        assert src[200 + i].tolist() == [fr_tag, *tok.encode([english[i]])[0]]
        assert tok.decode([tgt[i].tolist(), tgt[200 + i].tolist()]) == [german[i], french[i]]
    assert manifest["splits"]["valid"]["pairs"] == 20


def test_one_direction_keeps_the_bilingual_layout(tmp_path):
    corpus = _write(tmp_path / "corpus", {"train": 50, "valid": 5, "test": 5})
    run_prepare(prepare_config(corpus, tmp_path / "a", "data.directions=[en-fr]"))
    run_prepare(prepare_config(corpus, tmp_path / "b", "data.src=en", "data.tgt=fr"))
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab")
    assert a["tags"] == {} and a["directions"] == [] and a["direction"] == "en-fr"
    for side in ("src", "tgt"):
        pairs = zip(*(shard_paths(tmp_path / d, "train", side) for d in "ab"), strict=True)
        for path_a, path_b in pairs:
            assert path_a.read_bytes() == path_b.read_bytes()


@pytest.mark.parametrize(
    ("directions", "words"),
    [("[en-de,ende]", "not a direction like en-de"), ("[en-de,fr-de]", "target language twice")],
)
def test_bad_directions_are_refused_by_name(tmp_path, directions, words):
    cfg = prepare_config(tmp_path, tmp_path / "out", f"data.directions={directions}")
    with pytest.raises(ConfigError, match=words):
        validate_prepare(cfg)


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    """A tiny model that memorized 32 English sentences into both German and French."""
    from mt.train import run_train

    root = tmp_path_factory.mktemp("multi_run")
    corpus = _write(root / "corpus", {"train": 32, "valid": 4, "test": 4})
    run_prepare(prepare_config(corpus, root / "data", "data.directions=[en-de,en-fr]"))
    cfg = train_config(
        root / "data", root / "run", "train.max_steps=400", "train.label_smoothing=0",
        "model.d_model=64", "model.d_ff=128", "train.lr=5e-3", "train.max_tokens=4096",
    )  # fmt: skip
    run_train(cfg)
    return corpus, root / "run"


def test_the_tag_picks_the_output_language(multi_run):
    corpus, run = multi_run
    loaded = load_run(run, None, torch.device("cpu"))
    english = _lines(corpus / "train.en")
    for lang in ("de", "fr"):
        decode = DecodeConfig(tgt_lang=lang, max_len_a=3.0)  # small vocabulary: long outputs
        out = TorchTranslator(loaded, decode, torch.device("cpu"), "fp32").translate(english)
        hits = sum(
            h[0][0] == ref for h, ref in zip(out, _lines(corpus / f"train.{lang}"), strict=True)
        )
        assert hits >= 30, (lang, hits)


def test_empty_lines_stay_empty_with_a_tag(multi_run):
    _, run = multi_run
    loaded = load_run(run, None, torch.device("cpu"))
    translator = TorchTranslator(loaded, DecodeConfig(tgt_lang="fr"), torch.device("cpu"), "fp32")
    assert translator.translate(["", "a man"])[0] == []


def test_a_multilingual_run_needs_one_of_its_languages(multi_run):
    _, run = multi_run
    loaded = load_run(run, None, torch.device("cpu"))
    with pytest.raises(MTError, match=r"multilingual \(into de, fr\): set decode.tgt_lang"):
        for_target(loaded, None)
    with pytest.raises(MTError, match="decode.tgt_lang=es: .* into de, fr only"):
        for_target(loaded, "es")


def test_a_bilingual_run_takes_only_its_own_target(overfit_loaded):
    assert for_target(overfit_loaded, "de") is overfit_loaded
    assert for_target(overfit_loaded, None) is overfit_loaded
    with pytest.raises(MTError, match="decode.tgt_lang=fr: .* into de only"):
        for_target(overfit_loaded, "fr")


def test_export_refuses_a_multilingual_run_by_name(multi_run, tmp_path):
    from mt.convert.export import run_export
    from tests.conftest import compose_config

    _, run = multi_run
    cfg = compose_config("export", [f"run_dir={run}", f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(MTError, match="data.directions: .* multilingual"):
        run_export(cfg)
    assert not (tmp_path / "out").exists()
