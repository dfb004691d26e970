"""Every stage and every option of every config group composes, validates, and builds its model.

Options are the YAML files found under configs/<group>/, so a new preset is covered without
editing this file; a new group folder fails `test_every_group_folder_is_covered` until added here.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
from omegaconf import OmegaConf

from mt.config import (
    CONFIG_DIR,
    ModelConfig,
    PrepareConfig,
    TrainConfig,
    model_preset,
    validate_decode,
    validate_model,
    validate_prepare,
    validate_serve,
    validate_train,
)
from mt.model import transformer
from mt.model.layers import Dropout
from tests.conftest import compose_config

STAGES = ("prepare", "train", "translate", "eval", "export", "serve")
GROUP_STAGES = {
    "data": ("prepare", "train"),
    "model": ("train",),
    "train": ("train",),
    "experiment": ("train",),
}
VOCAB = 16  # a tiny joint vocabulary: the model's size is in its layers, not its embeddings


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def _yaml(group: str, option: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml"))


def _required(group: str, option: str) -> list[str]:
    """Overrides for the keys an option leaves mandatory (`???`), e.g. data=local's path."""
    cfg = OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")
    return [f"{group}.{key}=placeholder" for key in cfg if OmegaConf.is_missing(cfg, key)]


def _compose(stage: str, overrides: list[str]) -> object:
    if stage in ("translate", "export", "serve"):  # the run to use has no default
        overrides = ["run_dir=runs/placeholder", *overrides]
    if stage == "export":
        overrides = ["out_dir=exports/placeholder", *overrides]
    return compose_config(stage, overrides)


def _validate(stage: str, cfg: object) -> None:
    """Run the checks the stage's run_* function runs before it starts."""
    if stage == "prepare":
        validate_prepare(cfg)
    elif stage == "train":
        validate_train(cfg)
        # with data_dir unset, train prepares `data` first: that config must hold too
        validate_prepare(PrepareConfig(data=cfg.data, clean=cfg.clean, spm=cfg.spm))
    elif stage == "export":
        from mt.convert.export import FORMATS

        assert cfg.format in FORMATS
    elif stage == "serve":
        validate_serve(cfg)
    else:
        validate_decode(cfg.decode)


def _n_params(cfg: ModelConfig, vocab: int) -> int:
    """Parameters of `transformer(...)` with cfg over a joint vocabulary, counted by hand."""
    d, f = cfg.d_model, cfg.d_ff
    attention = 4 * d * (d + 1)  # q, k, v and output projections with biases
    ffn = 2 * d * f + f + d
    encoder_layer = attention + ffn + 2 * 2 * d  # two LayerNorms
    decoder_layer = 2 * attention + ffn + 3 * 2 * d  # self- and cross-attention, three norms
    embeddings = vocab * d * (1 if cfg.share_embeddings else 2)
    positions = 2 * cfg.max_positions * d if cfg.positions == "learned" else 0
    final_norms = 2 * 2 * d if cfg.norm == "pre" else 0
    layers = cfg.n_layers_enc * encoder_layer + cfg.n_layers_dec * decoder_layer
    return layers + embeddings + positions + final_norms


def test_every_group_folder_is_covered() -> None:
    folders = {path.name for path in CONFIG_DIR.iterdir() if path.is_dir()}
    assert folders == set(GROUP_STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_defaults_compose_and_validate(stage: str) -> None:
    _validate(stage, _compose(stage, []))


@pytest.mark.parametrize(
    ("group", "option", "stage"),
    [
        (group, option, stage)
        for group, stages in GROUP_STAGES.items()
        for option in _options(group)
        for stage in stages
    ],
)
def test_every_group_option_composes_and_validates(group: str, option: str, stage: str) -> None:
    cfg = _compose(stage, [f"{group}={option}", *_required(group, option)])
    _validate(stage, cfg)


@pytest.mark.parametrize("name", _options("model"))
def test_every_model_preset_builds_the_model_its_yaml_describes(name: str) -> None:
    cfg: TrainConfig = _compose("train", [f"model={name}"])
    validate_model(cfg.model)
    for key, value in _yaml("model", name).items():  # e.g. big.yaml's dropout 0.3
        assert getattr(cfg.model, key) == value, key
    assert model_preset(name) == cfg.model  # the same merge as `model=<name>`
    model = transformer(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, **asdict(cfg.model))
    layer = model.encoder.layers[0]
    assert model.decoder.embed.tokens.embedding_dim == cfg.model.d_model
    assert layer.self_attn.n_heads == cfg.model.n_heads
    assert layer.ffn.fc1.out_features == cfg.model.d_ff
    assert len(model.encoder.layers) == cfg.model.n_layers_enc
    assert len(model.decoder.layers) == cfg.model.n_layers_dec
    assert {m.p for m in model.modules() if isinstance(m, Dropout)} == {cfg.model.dropout}
    n_params = sum(p.numel() for p in model.parameters())  # shared tensors counted once
    assert n_params == _n_params(cfg.model, VOCAB)


def test_model_preset_applies_overrides_over_the_yaml() -> None:
    cfg = model_preset("tiny", dropout=0.25, norm="post")
    assert (cfg.d_model, cfg.dropout, cfg.norm) == (_yaml("model", "tiny")["d_model"], 0.25, "post")


def test_unknown_model_preset_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match="model='huge' is not a preset; available: ") as info:
        model_preset("huge")
    assert all(name in str(info.value) for name in _options("model"))


def test_model_preset_reads_no_other_folder() -> None:
    with pytest.raises(ValueError, match="is not a preset"):
        model_preset("../train/quick")
