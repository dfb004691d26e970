"""checkpoint=[a.pt,b.pt]: ensembles of models of one vocabulary."""

from __future__ import annotations

import pytest
import torch

from mt.config import DecodeConfig
from mt.decode.ensemble import Ensemble
from mt.decode.run import load_run
from mt.decode.torch_engine import TorchTranslator
from mt.errors import MTError
from tests.conftest import train_config
from tests.test_cli import assert_clean_error, mt

CPU = torch.device("cpu")


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def second_run(overfit_run, tmp_path_factory):
    """Another model on the overfit run's data (same vocabulary), barely trained."""
    from mt.train import run_train

    _, run, _ = overfit_run
    other = tmp_path_factory.mktemp("second") / "run"
    run_train(train_config(run.parent / "data", other, "train.max_steps=5", "model.d_model=64",
                           "model.d_ff=128"))  # fmt: skip
    return other


def _same(a, b) -> bool:
    """The same n-best texts, and scores within 1e-4."""
    texts = [[t for t, _ in h] for h in a] == [[t for t, _ in h] for h in b]
    scores = [s for h in a for _, s in h], [s for h in b for _, s in h]
    return texts and all(abs(x - y) < 1e-4 for x, y in zip(*scores, strict=True))


def _translate(run_dir, checkpoint, lines, **decode):
    loaded = load_run(run_dir, checkpoint, CPU)
    return TorchTranslator(loaded, DecodeConfig(**decode), CPU, "fp32").translate(lines)


@pytest.mark.parametrize("beam", [1, 4])
def test_a_model_ensembled_with_itself_is_the_model(overfit_run, beam):
    corpus, run, _ = overfit_run
    lines = _lines(corpus / "train.en")[:16] + ["red big house green cat"]
    final = str(run / "checkpoints" / "final.pt")
    alone = _translate(run, final, lines, beam=beam, nbest=min(beam, 2))
    twice = _translate(run, [final, final], lines, beam=beam, nbest=min(beam, 2))
    assert _same(twice, alone)


def test_weights_choose_the_members(overfit_run, second_run):
    corpus, run, _ = overfit_run
    lines = _lines(corpus / "train.en")[:16]
    a, b = str(run / "checkpoints" / "final.pt"), str(second_run / "checkpoints" / "last.pt")
    only_a = _translate(run, [a, b], lines, beam=3, ensemble_weights=[1.0, 0.0])
    assert _same(only_a, _translate(run, a, lines, beam=3))
    only_b = _translate(run, [a, b], lines, beam=3, ensemble_weights=[0.0, 1.0])
    assert [h[0][0] for h in only_b] == [h[0][0] for h in _translate(run, b, lines, beam=3)]
    both = _translate(run, [a, b], lines, beam=3)
    assert both != only_a and both != only_b  # both members count
    with pytest.raises(MTError, match="decode.ensemble_weights"):
        _translate(run, [a, b], lines, ensemble_weights=[1.0])


def test_a_vocabulary_mismatch_is_one_sentence(overfit_run, prepared_dir, tmp_path):
    from mt.train import run_train

    corpus, run, _ = overfit_run
    other = tmp_path / "other"
    run_train(train_config(prepared_dir, other, "train.max_steps=1"))
    (tmp_path / "in.en").write_text("red house\n", encoding="utf-8")
    pair = f"[{run / 'checkpoints' / 'final.pt'},{other / 'checkpoints' / 'last.pt'}]"
    result = mt("translate", f"run_dir={run}", f"input={tmp_path / 'in.en'}", "output=-",
                f"checkpoint={pair}")  # fmt: skip
    assert_clean_error(result, "another vocabulary", "an ensemble needs one vocabulary")


def test_an_ensemble_refuses_a_shortlist_at_the_decoder_protocol(overfit_run):
    """The shortlist is a typed argument of ``init_state``: a decoder that cannot score one
    says so instead of silently scoring the whole vocabulary."""
    _, run, _ = overfit_run
    model = load_run(run, str(run / "checkpoints" / "final.pt"), CPU).model
    ensemble = Ensemble([model, model], [1.0, 1.0])
    src = torch.tensor([[5, 6, 2]])
    pad = src == 0
    memory = ensemble.encode(src, pad)
    assert ensemble.init_state(memory, pad, 4, rows_per_source=2) is not None
    with pytest.raises(ValueError, match="no shortlist"):
        ensemble.init_state(memory, pad, 4, vocab=torch.tensor([0, 1, 2, 5]))
