"""Typed schemas for every config group, registered with Hydra's ConfigStore; validation only.

Every default lives in a dataclass field; the YAML files under `configs/` hold presets and
overrides. Hydra merges YAML into these schemas, so a misspelled key or a wrong type is an error
that names the key. `model_preset` reads a configs/model/ preset the same way without Hydra.

The schemas live per stage (`prepare`, `train`, `decode`, `deploy`), the numeric limits of every
option in `bounds`, the checks in `validate`, and the config tree and Hydra glue in `store`;
this package re-exports what the rest of mt imports.
"""

from mt.config.bounds import BOOTSTRAP_BOUND, Bound, ConfigError, check_value
from mt.config.decode import DecodeConfig, EvalConfig, TranslateConfig
from mt.config.deploy import ExportConfig, ImportConfig, ServeConfig, ServeOptions
from mt.config.prepare import (
    CleanConfig,
    DataConfig,
    PrepareConfig,
    SpmConfig,
    TokenizerConfig,
)
from mt.config.store import (
    CONFIG_DIR,
    FALLBACK_SIZES,
    FINETUNE_FREE,
    fallback_model,
    init_from_overrides,
    model_preset,
    register_configs,
)
from mt.config.train import ModelConfig, TrainConfig, TrainLoopConfig
from mt.config.validate import (
    direction_pair,
    validate_decode,
    validate_eval,
    validate_model,
    validate_prepare,
    validate_serve,
    validate_train,
    validate_translate,
)

__all__ = [
    "BOOTSTRAP_BOUND",
    "CONFIG_DIR",
    "FALLBACK_SIZES",
    "FINETUNE_FREE",
    "Bound",
    "CleanConfig",
    "ConfigError",
    "DataConfig",
    "DecodeConfig",
    "EvalConfig",
    "ExportConfig",
    "ImportConfig",
    "ModelConfig",
    "PrepareConfig",
    "ServeConfig",
    "ServeOptions",
    "SpmConfig",
    "TrainConfig",
    "TokenizerConfig",
    "TrainLoopConfig",
    "TranslateConfig",
    "check_value",
    "direction_pair",
    "fallback_model",
    "init_from_overrides",
    "model_preset",
    "register_configs",
    "validate_decode",
    "validate_eval",
    "validate_model",
    "validate_prepare",
    "validate_serve",
    "validate_train",
    "validate_translate",
]
