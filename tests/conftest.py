"""Shared fixtures: a tiny synthetic parallel corpus, and configs composed from the real YAML."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mt.cli import CONFIG_DIR
from mt.config import register_configs

EN = "a the man woman dog cat sees runs house red big small green eats apple walks street".split()
DE = (
    "ein der Mann Frau Hund Katze sieht läuft Haus rot groß klein grün isst Apfel geht Straße"
).split()


def make_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """n sentence pairs; the German side is a word-by-word image of the English side."""
    rng = random.Random(seed)
    en, de = [], []
    for _ in range(n):
        idx = [rng.randrange(len(EN)) for _ in range(rng.randint(3, 9))]
        en.append(" ".join(EN[i] for i in idx))
        de.append(" ".join(DE[i] for i in idx))
    return en, de


def write_corpus(folder: Path, sizes: dict[str, int] | None = None) -> Path:
    """Write {split}.en / {split}.de for train, valid and test into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = sizes or {"train": 300, "valid": 20, "test": 20}
    for seed, (split, n) in enumerate(sizes.items()):
        en, de = make_pairs(n, seed)
        (folder / f"{split}.en").write_text("\n".join(en) + "\n", encoding="utf-8")
        (folder / f"{split}.de").write_text("\n".join(de) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


def compose_config(stage: str, overrides: list[str]) -> object:
    """Compose configs/<stage>.yaml with overrides into its typed dataclass."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=stage, overrides=overrides)
    return OmegaConf.to_object(cfg)


def prepare_config(corpus: Path, out: Path, *extra: str) -> object:
    """A prepare config for a tiny local corpus with a small vocabulary."""
    overrides = [
        "data=local",
        f"data.path={corpus}",
        f"out_dir={out}",
        "spm.vocab_size=320",
        *extra,
    ]
    return compose_config("prepare", overrides)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    """A prepared data folder of the tiny corpus (joint vocabulary of at most 320 pieces)."""
    from mt.prepare import run_prepare

    root = tmp_path_factory.mktemp("prepared")
    corpus = write_corpus(root / "corpus")
    run_prepare(prepare_config(corpus, root / "data"))
    return root / "data"


def train_config(data_dir: Path, run_dir: Path, *extra: str) -> object:
    """A train config for the tiny model on CPU, quick to run."""
    overrides = [
        f"data_dir={data_dir}",
        f"run_dir={run_dir}",
        "model=tiny",
        "train.device=cpu",
        "train.precision=fp32",
        "train.max_tokens=512",
        "train.warmup_steps=10",
        "train.lr=3e-3",
        "train.log_every=5",
        "train.valid_every=0",
        "train.threads=1",
        "train.tune_decoding=false",  # tests/test_tuning.py turns it on where it is the subject
        *extra,
    ]
    return compose_config("train", overrides)


@pytest.fixture(scope="session")
def overfit_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A tiny model trained to memorize 32 pairs (validation = training pairs).

    Returns (corpus folder, run folder, training results).
    """
    import shutil

    from mt.prepare import run_prepare
    from mt.train import run_train

    root = tmp_path_factory.mktemp("overfit")
    corpus = write_corpus(root / "c", {"train": 32, "valid": 32, "test": 32})
    for side in ("en", "de"):
        shutil.copy(corpus / f"train.{side}", corpus / f"valid.{side}")
    run_prepare(prepare_config(corpus, root / "data"))
    cfg = train_config(
        root / "data",
        root / "run",
        "train.max_steps=300",
        "train.label_smoothing=0",
        "model.d_model=64",
        "model.d_ff=128",
        "train.lr=5e-3",
        "train.max_tokens=4096",
    )
    return corpus, root / "run", run_train(cfg)


@pytest.fixture(scope="session")
def overfit_loaded(overfit_run):
    """`overfit_run`'s model loaded for inference on CPU (its final checkpoint)."""
    import torch

    from mt.decode.run import load_run

    _, run, _ = overfit_run
    return load_run(run, None, torch.device("cpu"))
