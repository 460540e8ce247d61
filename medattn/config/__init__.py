"""Typed, validated configuration (YAML via safe_load, dotted ``--set`` overrides)."""

from medattn.config.coerce import build_dataclass, coerce_value
from medattn.config.loader import (
    apply_override,
    config_from_dict,
    config_to_dict,
    load_config,
    load_mil_config,
    read_yaml,
    resolve_config_path,
    save_config,
    shipped_configs,
)
from medattn.config.mil_schema import (
    EncoderConfig,
    MilConfig,
    MilDataConfig,
    MilInferConfig,
    MilModelConfig,
    MilTrainConfig,
    PatchConfig,
    SlideConfig,
    TaskConfig,
    TissueConfig,
)
from medattn.config.schema import (
    AugmentConfig,
    Config,
    DataConfig,
    InferConfig,
    ModelConfig,
    PreprocessConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig", "Config", "DataConfig", "EncoderConfig", "InferConfig", "MilConfig", "MilDataConfig",
    "MilInferConfig", "MilModelConfig", "MilTrainConfig", "ModelConfig", "PatchConfig", "PreprocessConfig",
    "SlideConfig", "TaskConfig", "TissueConfig", "TrainConfig", "apply_override", "build_dataclass",
    "coerce_value", "config_from_dict", "config_to_dict", "load_config", "load_mil_config", "read_yaml",
    "resolve_config_path", "save_config",
    "shipped_configs",
]
