"""Networks, built by name through the registry (configs never import code).

``create_model("attention_unet", spatial_dims=2, channels=[16, 32, 64])`` builds a model;
``list_models()`` lists the names. See :mod:`medattn.models.registry` for adding a network.
"""

from medattn.models.attention_unet import AttentionGate, AttentionUNet
from medattn.models.registry import (
    create_model,
    list_models,
    model_defaults,
    register_model,
    validate_model_kwargs,
)

__all__ = [
    "AttentionGate",
    "AttentionUNet",
    "create_model",
    "list_models",
    "model_defaults",
    "register_model",
    "validate_model_kwargs",
]
