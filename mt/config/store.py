"""The config tree and Hydra's ConfigStore: `CONFIG_DIR`, `register_configs` for the stage
schemas, `model_preset` / `fallback_model`, which read configs/model/ presets without Hydra, and
`init_from_overrides`, which gives `mt train init_from=RUN_DIR` that run's model."""

from __future__ import annotations

import importlib.resources
from dataclasses import fields, replace
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


FINETUNE_FREE = ("dropout", "attn_dropout", "act_dropout")
"""The model keys a fine-tune (train.init_from) may change; every other one is the architecture."""


def _override_value(value: Any) -> str:
    """A YAML scalar as Hydra's override grammar reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "null" if value is None else repr(value)


def init_from_overrides(overrides: list[str]) -> list[str]:
    """`mt train init_from=RUN_DIR`: the init run's model (RUN_DIR/config.yaml's `model`) as
    `model.<key>=<value>` overrides to go before the user's, so the composed model is the init
    run's and a `model.<key>` the user gives still wins (`mt train` then refuses one that
    changes the architecture). A fine-tune being resumed (its run_dir has a config.yaml) takes
    the model it started with from there, so the init run may be gone by then. Without either
    config.yaml nothing is added: `mt train` says what the init run lacks.

    Raises:
        ConfigError: For `model=PRESET` beside init_from (the model is the init run's).
    """
    given = dict(arg.split("=", 1) for arg in overrides if "=" in arg and arg[0] not in "-+~")
    run_dir = given.get("init_from")
    if run_dir in (None, "", "null"):
        return []
    if "model" in given:
        raise ConfigError(
            f"model={given['model']} with init_from={run_dir}: a fine-tune's model is the init "
            "run's; drop model= (model.dropout and the other dropouts may change)."
        )
    # RunDir.config of the new run, else of the init run (mt.rundir sits above mt.config)
    found = [Path(d) / "config.yaml" for d in (given.get("run_dir"), run_dir) if d]
    config = next((path for path in found if path.is_file()), None)
    if config is None:
        return []
    loaded = OmegaConf.to_container(OmegaConf.load(config))
    model = (loaded.get("model") if isinstance(loaded, dict) else None) or {}
    names = {f.name for f in fields(ModelConfig)}
    return [
        f"model.{key}={_override_value(value)}"
        for key, value in model.items()
        if key in names and f"model.{key}" not in given
    ]


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
