"""The run decodes at its best by default: `mt train` tunes beam and lenpen on validation and
stores them in RUN_DIR/decoding.json; `mt translate` and `mt eval` use them for what the user
leaves unset, and anything the user sets wins."""

from __future__ import annotations

import json
import shutil

import pytest

from mt.cli import main
from mt.config import DecodeConfig
from mt.decode.run import tuned_decoding
from mt.errors import MTError
from mt.rundir import RunDir
from mt.train import run_train
from mt.training.tuning import grid
from tests.conftest import train_config
from tests.test_cli import mt


def test_the_grid_tries_the_defaults_first_so_ties_keep_them():
    pairs = grid([4, 5], [0.6, 1.0, 1.4])
    assert pairs[0] == (5, 1.0)
    assert sorted(pairs) == [(4, 0.6), (4, 1.0), (4, 1.4), (5, 0.6), (5, 1.0), (5, 1.4)]


def test_training_tunes_decoding_on_validation_and_records_it(overfit_run, tmp_path):
    """A model that translates (one update on from the memorizing run) tries the whole grid."""
    _, trained, _ = overfit_run
    run = tmp_path / "run"
    main(["train", f"data_dir={trained.parent / 'data'}", f"run_dir={run}",
          f"init_from={trained}", "train.device=cpu", "train.precision=fp32", "train.threads=1",
          "train.max_tokens=512", "train.valid_every=0", "train.max_steps=1", "train.lr=1e-9",
          "train.warmup_steps=1", "train.tune_decoding=true", "train.tune_beams=[1,3]",
          "train.tune_lenpens=[0.5,1.0]"])  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    stored = json.loads(RunDir(run).decoding.read_text())
    assert stored == results["decoding"]
    tried = {(p["beam"], p["lenpen"]) for p in stored["grid"]}
    assert tried == {(1, 0.5), (1, 1.0), (3, 0.5), (3, 1.0)}
    best = max(p["valid_bleu"] for p in stored["grid"])
    assert stored["valid_bleu"] == best and (stored["beam"], stored["lenpen"]) in tried
    assert stored["checkpoint"] == "final.pt" and "skipped" not in stored
    assert best > 50  # it translates what it memorized
    off = tmp_path / "off"
    run_train(train_config(trained.parent / "data", off, "train.max_steps=2",
                           "train.tune_decoding=false"))  # fmt: skip
    assert not RunDir(off).decoding.exists()


def test_a_model_that_does_not_translate_yet_keeps_the_defaults_after_one_decode(
    prepared_dir, tmp_path
):
    run = tmp_path / "run"
    results = run_train(train_config(prepared_dir, run, "train.max_steps=1",
                                     "train.tune_decoding=true", "train.lr=1e-9"))  # fmt: skip
    stored = json.loads(RunDir(run).decoding.read_text())
    assert stored == results["decoding"]
    assert [(p["beam"], p["lenpen"]) for p in stored["grid"]] == [(5, 1.0)]
    assert stored["valid_bleu"] < 1.0 and "not translating yet" in stored["skipped"]
    assert "decoding not tuned" in (run / "train.log").read_text()


@pytest.fixture
def tuned_run(overfit_run, tmp_path):
    """A copy of the overfit run whose decoding.json says beam 2, lenpen 0.6."""
    _, run, _ = overfit_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    RunDir(copy).decoding.write_text(json.dumps({"beam": 2, "lenpen": 0.6, "grid": []}))
    return copy


def test_unset_settings_come_from_the_run_and_set_ones_win(tuned_run, tmp_path):
    assert tuned_decoding(tuned_run, DecodeConfig()) == DecodeConfig(beam=2, lenpen=0.6)
    assert tuned_decoding(tuned_run, DecodeConfig(beam=7)) == DecodeConfig(beam=7, lenpen=0.6)
    assert tuned_decoding(tmp_path, DecodeConfig()) == DecodeConfig(beam=5, lenpen=1.0)
    src = tmp_path / "src.en"
    src.write_text("red big house green cat\nthe dog runs\n")
    plain = mt("eval", f"run_dir={tuned_run}", f"src={src}", f"ref={src}",
               f"output={tmp_path / 'a.hyp'}")  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert "beam 2, lenpen 0.6" in plain.stdout
    chosen = mt("eval", f"run_dir={tuned_run}", f"src={src}", f"ref={src}", "decode.beam=3",
                f"output={tmp_path / 'b.hyp'}")  # fmt: skip
    assert "beam 3, lenpen 0.6" in chosen.stdout, chosen.stderr
    same = mt("translate", f"run_dir={tuned_run}", f"input={src}", f"output={tmp_path / 'c'}",
              "decode.beam=2", "decode.lenpen=0.6")  # fmt: skip
    assert same.returncode == 0, same.stderr
    assert (tmp_path / "c").read_text() == (tmp_path / "a.hyp").read_text()


def test_a_broken_decoding_file_is_one_sentence(tuned_run, tmp_path):
    RunDir(tuned_run).decoding.write_text("{not json")
    with pytest.raises(MTError, match="decoding.json is not the decoding settings"):
        tuned_decoding(tuned_run, DecodeConfig())
    src = tmp_path / "src.en"
    src.write_text("the dog runs\n")
    done = mt("translate", f"run_dir={tuned_run}", f"input={src}", f"output={tmp_path / 'o'}")
    assert done.returncode == 2 and "decoding.json" in done.stderr
    assert "Traceback" not in done.stderr
