"""The config tree and Hydra's ConfigStore: `CONFIG_DIR`, `register_configs` for the stage
schemas, and `model_preset` / `fallback_model`, which read configs/model/ presets without Hydra."""

from __future__ import annotations

import importlib.resources
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from mt.config.bounds import ConfigError
from mt.config.decode import EvalConfig, TranslateConfig
from mt.config.deploy import ExportConfig, ImportConfig, ServeConfig
from mt.config.prepare import PrepareConfig
from mt.config.train import ModelConfig, TrainConfig


def _config_dir() -> Path:
    """The Hydra config tree: mt/configs in an installed package (a wheel maps the repository's
    configs/ there), else configs/ beside the package in a source checkout or editable install."""
    shipped = Path(str(importlib.resources.files("mt").joinpath("configs")))
    # this file is mt/config/store.py: parents[2] is the folder that holds mt/ and configs/
    return shipped if shipped.is_dir() else Path(__file__).resolve().parents[2] / "configs"


CONFIG_DIR = _config_dir()


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """The `ModelConfig` of configs/model/<name>.yaml, merged as `model=<name>` composes it.

    Args:
        name: Preset name, a file stem under configs/model/ (e.g. tiny, small, base, big).
        **overrides: ModelConfig fields to change, like `model.<key>=<value>` overrides.

    Returns:
        The schema's defaults, then the preset's values, then the overrides.

    Raises:
        ConfigError: If there is no such preset; the message lists the available ones.
    """
    available = sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))
    if name not in available:
        raise ConfigError(f"model={name!r} is not a preset; available: {', '.join(available)}.")
    preset = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), preset, overrides)
    return cast(ModelConfig, OmegaConf.to_object(merged))


FALLBACK_SIZES = ("d_model", "n_heads", "n_layers_enc", "n_layers_dec", "d_ff")
"""What train.fallback_model takes from its preset."""


def fallback_model(model: ModelConfig, preset: str) -> ModelConfig:
    """`model` with the sizes of configs/model/<preset>.yaml (train.fallback_model)."""
    sizes = model_preset(preset)
    return replace(model, **{key: getattr(sizes, key) for key in FALLBACK_SIZES})


def register_configs() -> None:
    """Register the stage schemas so `defaults: [<stage>_schema]` in YAML finds them."""
    cs = ConfigStore.instance()
    cs.store(name="prepare_schema", node=PrepareConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="translate_schema", node=TranslateConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="serve_schema", node=ServeConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="import_schema", node=ImportConfig)
