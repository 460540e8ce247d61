"""Model registry: build by name, defaults from the constructor, kwargs checked against type hints."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn

from medattn.errors import ConfigError
from medattn.models import (
    AttentionUNet,
    create_model,
    list_models,
    model_defaults,
    register_model,
    validate_model_kwargs,
)
from medattn.models import registry as registry_module


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry for tests that register their own toy models."""
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))


def test_attention_unet_is_registered_and_built_by_name():
    assert "attention_unet" in list_models()
    model = create_model("attention_unet", spatial_dims=2, in_channels=3, out_channels=4, channels=[4, 8])
    assert isinstance(model, AttentionUNet)
    assert model.channels == (4, 8) and model.spatial_dims == 2
    out = model(torch.randn(1, 3, 12, 10))
    assert out.shape == (1, 4, 12, 10)


def test_model_defaults_come_from_the_constructor_signature():
    assert model_defaults("attention_unet") == {
        "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": (16, 32, 64, 128, 256),
        "norm": "instance", "deep_supervision": False, "dropout": 0.0,
    }


def test_unknown_model_name_lists_the_known_names():
    with pytest.raises(ConfigError) as e:
        create_model("atention_unet")
    # other test modules may register test-only models, so check the list contains the real one
    msg = str(e.value)
    assert msg.startswith("unknown model 'atention_unet' (known: ") and "attention_unet" in msg.split("known: ")[1]
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        model_defaults("nope")


def test_unknown_kwarg_names_the_key_the_model_and_the_file():
    with pytest.raises(ConfigError) as e:
        validate_model_kwargs("attention_unet", {"chanels": [4, 8]}, source="run/config.yaml")
    msg = str(e.value)
    assert msg.startswith(
        "run/config.yaml: model.kwargs.chanels: unknown parameter for model 'attention_unet' (known: ")
    assert "channels" in msg and "deep_supervision" in msg and "\n" not in msg
    assert e.value.path == "run/config.yaml"
    with pytest.raises(ConfigError, match=r"^model\.kwargs\.width: unknown parameter"):
        create_model("attention_unet", width=3)


@pytest.mark.parametrize(("key", "value", "named"), [
    ("spatial_dims", "3", "model.kwargs.spatial_dims"),
    ("spatial_dims", True, "model.kwargs.spatial_dims"),     # bool is not an int here
    ("norm", "layer", "model.kwargs.norm"),                  # not one of the Literal values
    ("channels", [8, "16"], r"model.kwargs.channels\[1\]"),  # element type checked
    ("channels", 16, "model.kwargs.channels"),
    ("deep_supervision", "yes", "model.kwargs.deep_supervision"),
    ("dropout", "high", "model.kwargs.dropout"),
])
def test_wrong_types_name_the_key(key, value, named):
    with pytest.raises(ConfigError, match=f"^cfg.yaml: {named}: expected "):
        validate_model_kwargs("attention_unet", {key: value}, source="cfg.yaml")


def test_valid_kwargs_are_coerced_to_canonical_values():
    out = validate_model_kwargs("attention_unet", {"dropout": 0, "channels": (4, 8, 16), "norm": "batch"},
                                where="train.model")
    assert out == {"dropout": 0.0, "channels": [4, 8, 16], "norm": "batch"}
    assert isinstance(out["dropout"], float)


def test_constructor_value_errors_become_config_errors():
    with pytest.raises(ConfigError, match=r"^model 'attention_unet': channels needs at least 2 positive"):
        create_model("attention_unet", channels=[8])
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\)"):
        create_model("attention_unet", dropout=1.0)


def test_registering_a_model_takes_one_decorator(scratch_registry):
    @register_model("toy_net")
    class ToyNet(nn.Module):
        def __init__(self, *, width: int = 3, mode: Literal["a", "b"] = "a", scale: float = 1.0) -> None:
            super().__init__()
            self.lin = nn.Linear(2, width)
            self.mode, self.scale = mode, scale

    assert "toy_net" in list_models()
    assert model_defaults("toy_net") == {"width": 3, "mode": "a", "scale": 1.0}
    net = create_model("toy_net", width=5, mode="b", scale=2)
    assert isinstance(net, ToyNet) and net.lin.out_features == 5 and net.mode == "b" and net.scale == 2.0
    with pytest.raises(ConfigError, match=r"^model\.kwargs\.mode: expected one of 'a', 'b', got 'c'$"):
        create_model("toy_net", mode="c")


def test_required_parameters_must_be_given(scratch_registry):
    @register_model("needs_k")
    class NeedsK(nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.k = k

    assert model_defaults("needs_k") == {}
    with pytest.raises(ConfigError, match=r"^model\.kwargs\.k: required parameter for model 'needs_k'"):
        create_model("needs_k")
    assert create_model("needs_k", k=4).k == 4


def test_duplicate_names_and_non_modules_are_rejected(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        @register_model("attention_unet")
        class Other(nn.Module):
            pass

    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        register_model("not_a_module")(object)
    # re-registering the same class (e.g. a module re-imported) is harmless
    assert register_model("attention_unet")(AttentionUNet) is AttentionUNet
