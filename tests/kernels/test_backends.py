"""medattn.kernels backend selection (MEDATTN_ATTENTION override)."""

import pytest
from medattn.kernels import available_backends, selected_backend


def test_default_backend_per_device(monkeypatch):
    monkeypatch.delenv("MEDATTN_ATTENTION", raising=False)
    assert selected_backend("cpu") == "reference"
    assert selected_backend("cuda") == "triton"


@pytest.mark.parametrize("value,expected", [("reference", "reference"), ("TRITON", "triton"), (" triton ", "triton")])
def test_environment_override(monkeypatch, value, expected):
    monkeypatch.setenv("MEDATTN_ATTENTION", value)
    assert selected_backend("cpu") == expected


def test_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MEDATTN_ATTENTION", "flash")
    with pytest.raises(ValueError, match="MEDATTN_ATTENTION='flash': expected one of reference, triton"):
        selected_backend("cpu")


def test_reference_is_always_available():
    backends = available_backends()
    assert backends["reference"] is True
    import torch

    if not torch.cuda.is_available():
        assert backends["triton"] is False
