"""Typed configuration: the schema (:mod:`detmine.config.schema`) and reading it
(:mod:`detmine.config.loading`: YAML, dotted overrides, checks, saving)::

    cfg = load_config("configs/quickstart.yaml", ["mining=ohem", "train.lr=0.01"])
"""

from detmine.config.loading import (
    apply_override,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    validate_components,
)
from detmine.config.schema import (
    Config,
    DataConfig,
    EvalConfig,
    LossConfig,
    MatchingConfig,
    MiningConfig,
    ModelConfig,
    PostprocessConfig,
    TrainConfig,
    VisConfig,
    validate_config,
)

__all__ = [
    "Config",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "MatchingConfig",
    "MiningConfig",
    "ModelConfig",
    "PostprocessConfig",
    "TrainConfig",
    "VisConfig",
    "apply_override",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
    "validate_components",
    "validate_config",
]
