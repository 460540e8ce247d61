"""Config loading: typed validation, one-line errors naming file and key, overrides, safe YAML."""

from pathlib import Path

import pytest
import yaml

from medattn.config import (
    Config,
    config_to_dict,
    load_config,
    resolve_config_path,
    save_config,
    shipped_configs,
)
from medattn.errors import ConfigError
from medattn.models import validate_model_kwargs


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults_load_without_a_file():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 50 and cfg.model.name == "attention_unet"


def test_file_values_are_typed(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  epochs: 7\n  lr: 1\npreprocess:\n  target_spacing: [1, 1, 2]\n"))
    assert cfg.train.epochs == 7
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.preprocess.target_spacing == [1.0, 1.0, 2.0]


def test_unknown_key_names_file_and_key_in_one_line(tmp_path):
    p = write(tmp_path, "train:\n  epoch: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and "train.epoch" in msg and "did you mean 'epochs'" in msg
    assert "\n" not in msg


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="trian: unknown key"):
        load_config(write(tmp_path, "trian:\n  epochs: 5\n"))


@pytest.mark.parametrize("text,key,expected", [
    ("train:\n  epochs: five\n", "train.epochs", "expected int"),
    ("train:\n  epochs: 2.5\n", "train.epochs", "expected int"),
    ("train:\n  amp: maybe\n", "train.amp", "expected one of"),
    ("train:\n  patch_size: 64\n", "train.patch_size", "expected a list"),
    ("augment:\n  flip: 1\n", "augment.flip", "expected bool"),
    ("preprocess:\n  ct_window: [1, 2, 3]\n", "preprocess.ct_window", "expected a list of 2 values"),
])
def test_wrong_type_names_key(tmp_path, text, key, expected):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: {key}") and expected in str(e.value)


def test_value_rule_violation(tmp_path):
    with pytest.raises(ConfigError, match="train: epochs must be >= 1"):
        load_config(write(tmp_path, "train:\n  epochs: 0\n"))


def test_dotted_overrides(tmp_path):
    p = write(tmp_path, "train:\n  epochs: 3\n")
    cfg = load_config(p, ["train.epochs=5", "model.kwargs.channels=[4, 8]", "data.cache=none",
                          "preprocess.target_spacing=null"])
    assert cfg.train.epochs == 5
    assert cfg.model.kwargs == {"channels": [4, 8]}
    assert cfg.data.cache == "none" and cfg.preprocess.target_spacing is None


def test_bad_override_names_the_override():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epoch=5"])
    assert str(e.value).startswith("--set train.epoch=5: train.epoch: unknown key")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["train.epochs"])


def test_yaml_cannot_construct_python_objects(tmp_path):
    p = write(tmp_path, "experiment: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)


def test_invalid_yaml_reports_line(tmp_path):
    p = write(tmp_path, "train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(str(p)) and "line" in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(None, ["train.epochs=9", "model.kwargs.channels=[4, 8, 16]"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert config_to_dict(load_config(out)) == config_to_dict(cfg)
    assert yaml.safe_load(out.read_text())["train"]["epochs"] == 9


def test_run_dir_substitutes_experiment():
    cfg = load_config(None, ["experiment=abc", "output_dir=/tmp/x/{experiment}"])
    assert cfg.run_dir == "/tmp/x/abc"


def test_every_shipped_config_is_valid():
    shipped = shipped_configs()
    assert {"demo_3d", "attention_unet_3d", "attention_unet_2d"} <= set(shipped)
    for name, path in shipped.items():
        cfg = load_config(path)
        validate_model_kwargs(cfg.model.name, cfg.model.kwargs, source=str(path))
        assert resolve_config_path(name) == path
