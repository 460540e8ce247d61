"""Loading, overriding and saving configs.

YAML is read with ``yaml.safe_load`` only, and a config names models by registry key: no config
can import or run code. A bare name (``attention_unet_3d``) refers to a config shipped with medattn.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path
from typing import Any

import yaml

from medattn.config.coerce import build_dataclass
from medattn.config.mil_schema import MilConfig
from medattn.config.schema import Config
from medattn.errors import ConfigError
from medattn.io.atomic import atomic_write_text


def shipped_configs() -> dict[str, Path]:
    """Configs installed with medattn (the repository's ``configs/`` folder), by name."""
    root = importlib.resources.files("medattn.configs")
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}


def find_file_or_shipped(name_or_path: str | Path, shipped: dict[str, Path]) -> Path | None:
    """``name_or_path`` if it is a file, else the shipped file of that bare name (with or without
    ``.yaml``), else None. Used for configs and workflows alike."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    key = p.stem if p.suffix in (".yaml", ".yml") else str(name_or_path)
    return shipped.get(key) if not p.parent.parts else None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path as given if it exists, else a shipped config of that name; ConfigError otherwise."""
    shipped = shipped_configs()
    found = find_file_or_shipped(name_or_path, shipped)
    if found is None:
        raise ConfigError(f"no such config file (shipped configs: {', '.join(sorted(shipped))})", name_or_path)
    return found


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load``; ConfigError naming the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", path) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"invalid YAML: {where}{problem}", path) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", path)
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as a YAML scalar/list."""
    if "=" not in override:
        raise ConfigError(f"--set {override}: expected KEY=VALUE, e.g. train.epochs=5")
    key, raw = override.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {override}: malformed key {key!r}")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


PIPELINES = ("segmentation", "mil")


def config_from_dict(data: dict[str, Any], source: str | None = None) -> Config | MilConfig:
    """Validate a plain mapping into a :class:`Config`, or a :class:`MilConfig` when it says
    ``pipeline: mil`` (errors name ``source`` and the key)."""
    pipeline = data.get("pipeline", "segmentation")
    if pipeline not in PIPELINES:
        raise ConfigError(f"pipeline: must be one of {', '.join(PIPELINES)}, got {pipeline!r}", source)
    if pipeline == "mil":
        return build_dataclass(MilConfig, data, "", source)
    return build_dataclass(Config, {k: v for k, v in data.items() if k != "pipeline"}, "", source)


def load_config(path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config | MilConfig:
    """Load ``path`` (or the defaults when None), apply ``--set`` overrides, validate.

    The file's ``pipeline`` key (``segmentation``, the default, or ``mil``) picks the schema.

    Raises:
        ConfigError: one line naming the file (or ``--set``) and the offending key.
    """
    data: dict[str, Any] = {}
    source = None
    if path is not None:
        resolved = resolve_config_path(path)
        source = str(path)
        data = read_yaml(resolved)
    cfg = config_from_dict(data, source)  # file errors name the file, before any override
    for ov in overrides:
        apply_override(data, ov)
        try:
            cfg = config_from_dict(data, source)
        except ConfigError as e:
            msg = str(e).removeprefix(f"{source}: ") if source else str(e)
            raise ConfigError(f"--set {ov}: {msg}") from e
    return cfg


def load_mil_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> MilConfig:
    """:func:`load_config` for a file that must be a MIL config (``pipeline: mil``)."""
    cfg = load_config(path, ["pipeline=mil", *overrides] if path is None else overrides)
    if not isinstance(cfg, MilConfig):
        raise ConfigError("not a MIL config (add 'pipeline: mil')", path)
    return cfg


def config_to_dict(cfg: Config | MilConfig) -> dict[str, Any]:
    """Plain-data form (YAML/JSON safe) of a config."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config | MilConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML next to an output (atomically)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    atomic_write_text(path, "# resolved medattn config\n" + text)
    return Path(path)
