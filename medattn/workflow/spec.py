"""Workflow files: YAML → a validated, topologically ordered graph of stages.

A workflow file (``workflows/*.yaml``) is read with ``yaml.safe_load`` and looks like::

    name: seg3d_attention_unet
    stages:
      - name: data                    # the stage's name = its output folder in the run directory
        kind: synth                   # one of medattn.workflow.stages.STAGE_KINDS
        params: {n_train: 8, n_test: 4}
      - name: model
        kind: train
        config: demo_3d               # train only: a shipped config name or a YAML path
        set: [train.epochs=30]        # train only: config overrides, as `medattn train --set`
        inputs: {dataset: "@data/dataset.json"}

An input is ``@STAGE`` (the output folder of an earlier stage), ``@STAGE/sub/path`` (a file or
folder inside it) or a path (relative paths are relative to the workflow file). ``output`` names a
stage's output folder (default: the stage name). Problems found here raise :class:`WorkflowError`,
one line naming the workflow file and the problem: an unknown stage kind, an unknown key or
parameter, a cycle, a missing input, a duplicate stage name or output.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from medattn.config.loader import apply_override, find_file_or_shipped, read_yaml
from medattn.errors import ConfigError, MedattnError
from medattn.workflow.stages import STAGE_KINDS, check_params, fingerprint

__all__ = ["InputRef", "Stage", "Workflow", "WorkflowError", "load_workflow", "resolve_workflow_path",
           "shipped_workflows"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_STAGE_KEYS = {"name", "kind", "config", "set", "params", "inputs", "output"}
_TOP_KEYS = {"name", "description", "stages"}


class WorkflowError(MedattnError):
    """A workflow file is invalid, or one of its stages failed."""


@dataclass(frozen=True)
class InputRef:
    """One stage input: the output of an earlier stage (``stage`` set) or an external path."""

    stage: str | None
    path: str  # stage: a relative POSIX sub-path ("" = the whole output folder); else an absolute path

    def __str__(self) -> str:
        if self.stage is None:
            return self.path
        return f"@{self.stage}" + (f"/{self.path}" if self.path else "")


@dataclass
class Stage:
    """A validated stage: what it runs (``kind``, ``params``, ``config``), on what, into which folder."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, InputRef] = field(default_factory=dict)
    output: str = ""
    config: str | None = None  # train: resolved config path or shipped name
    overrides: list[str] = field(default_factory=list)  # train: `--set` overrides

    @property
    def upstream(self) -> list[str]:
        """Names of the stages whose outputs this stage reads, in input order, without repeats."""
        return list(dict.fromkeys(r.stage for r in self.inputs.values() if r.stage is not None))


@dataclass
class Workflow:
    """A workflow file's stages in execution order (every stage after the stages it reads)."""

    name: str
    path: Path
    stages: list[Stage]
    description: str = ""

    def stage(self, name: str) -> Stage:
        """The stage called ``name``; WorkflowError naming the workflow file otherwise."""
        for s in self.stages:
            if s.name == name:
                return s
        raise WorkflowError(f"no stage named {name!r} (stages: {', '.join(s.name for s in self.stages)})", self.path)

    def downstream(self, name: str) -> list[str]:
        """``name`` and every stage that (transitively) reads its output, in execution order."""
        found = {name}
        for s in self.stages:
            if found.intersection(s.upstream):
                found.add(s.name)
        return [s.name for s in self.stages if s.name in found]


def _workflow_dirs() -> list[Path]:
    dirs = []
    with contextlib.suppress(ModuleNotFoundError):  # installed as medattn.workflows (package_dir in setup.py)
        dirs.append(Path(str(importlib.resources.files("medattn.workflows"))))
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():  # a source checkout (also an editable install)
        dirs.append(checkout / "workflows")
    return [d for d in dirs if d.is_dir()]


def shipped_workflows() -> dict[str, Path]:
    """Workflow files shipped with medattn (the repository's ``workflows/`` folder), by name."""
    found: dict[str, Path] = {}
    for d in reversed(_workflow_dirs()):
        found.update({p.stem: p for p in sorted(d.glob("*.yaml"))})
    return found


def resolve_workflow_path(name_or_path: str | Path) -> Path:
    """A workflow file as given if it exists, else a shipped workflow of that name."""
    shipped = shipped_workflows()
    found = find_file_or_shipped(name_or_path, shipped)
    if found is None:
        raise WorkflowError(f"no such workflow file (shipped workflows: {', '.join(sorted(shipped)) or 'none'})",
                            name_or_path)
    return found


def _parse_input(path: Path, stage: str, key: str, value: Any) -> InputRef:
    where = f"stage {stage!r}: inputs.{key}"
    if not isinstance(value, str) or not value.strip():
        raise WorkflowError(f"{where}: expected a path or @STAGE[/sub/path], got {value!r}", path)
    if not value.startswith("@"):
        p = Path(value).expanduser()
        return InputRef(None, str(p if p.is_absolute() else (path.parent / p).resolve()))
    ref, _, sub = value[1:].partition("/")
    parts = PurePosixPath(sub).parts
    if not ref or ".." in parts or sub.startswith("/"):
        raise WorkflowError(f"{where}: {value!r} must be @STAGE or @STAGE/path inside that stage's output", path)
    return InputRef(ref, "/".join(parts))


def _parse_stage(path: Path, i: int, raw: Any) -> Stage:
    if not isinstance(raw, dict):
        raise WorkflowError(f"stages[{i}]: expected a mapping with name and kind, got {type(raw).__name__}", path)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise WorkflowError(f"stages[{i}]: name {name!r} must be a folder name (letters, digits, _ . -)", path)
    unknown = sorted(set(raw) - _STAGE_KEYS)
    if unknown:
        raise WorkflowError(f"stage {name!r}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_STAGE_KEYS))})",
                            path)
    kind = raw.get("kind")
    if kind not in STAGE_KINDS:
        raise WorkflowError(f"stage {name!r}: unknown stage kind {kind!r} (available: {', '.join(STAGE_KINDS)})",
                            path)
    spec = STAGE_KINDS[kind]
    output = raw.get("output", name)
    if not isinstance(output, str) or not _NAME.match(output) or output in (".", ".."):
        raise WorkflowError(f"stage {name!r}: output {output!r} must be a folder name inside the run directory", path)
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise WorkflowError(f"stage {name!r}: params must be a mapping", path)
    try:
        params = check_params(kind, params)
    except ConfigError as e:
        raise WorkflowError(f"stage {name!r}: {e}", path) from None
    inputs_raw = raw.get("inputs") or {}
    if not isinstance(inputs_raw, dict):
        raise WorkflowError(f"stage {name!r}: inputs must be a mapping of input name to path or @STAGE", path)
    for key in inputs_raw:
        if key not in spec.inputs:
            raise WorkflowError(f"stage {name!r}: {kind} takes no input {key!r} (inputs: "
                                f"{', '.join(spec.inputs) or 'none'})", path)
    for key, required in spec.inputs.items():
        if required and key not in inputs_raw:
            raise WorkflowError(f"stage {name!r}: missing input {key!r} ({kind} needs {', '.join(spec.inputs)})", path)
    inputs = {k: _parse_input(path, name, k, v) for k, v in inputs_raw.items()}
    config, overrides = raw.get("config"), raw.get("set") or []
    if kind != "train" and ("config" in raw or "set" in raw):
        raise WorkflowError(f"stage {name!r}: only train stages take config/set; use params", path)
    if config is not None:
        if not isinstance(config, str):
            raise WorkflowError(f"stage {name!r}: config must be a shipped config name or a YAML path", path)
        local = (path.parent / config).resolve()
        config = str(local) if local.is_file() else config
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise WorkflowError(f"stage {name!r}: set must be a list of KEY=VALUE strings", path)
    stage = Stage(name, kind, params, inputs, output, config, list(overrides))
    if kind == "train":
        try:
            fingerprint(stage)  # validates the config and its overrides now, not after the stages before it
        except ConfigError as e:
            raise WorkflowError(f"stage {name!r}: {e}", path) from None
    return stage


def _order(path: Path, stages: list[Stage]) -> list[Stage]:
    """Stages sorted so that each comes after the stages it reads (file order otherwise); cycles rejected."""
    by_name = {s.name: s for s in stages}
    done: dict[str, Stage] = {}
    visiting: list[str] = []

    def visit(s: Stage) -> None:
        if s.name in done:
            return
        if s.name in visiting:
            cycle = [*visiting[visiting.index(s.name):], s.name]
            raise WorkflowError(f"cycle between stages: {' → '.join(cycle)}", path)
        visiting.append(s.name)
        for up in s.upstream:
            visit(by_name[up])
        visiting.pop()
        done[s.name] = s

    for s in stages:
        visit(s)
    return list(done.values())


def _apply_overrides(path: Path, data: dict[str, Any], overrides: Sequence[str]) -> None:
    """``STAGE.params.KEY=V``, ``STAGE.inputs.KEY=V`` (a relative path: from the current folder) or (train)
    ``STAGE.config.dotted.key=V``."""
    stages = data.get("stages") if isinstance(data.get("stages"), list) else []
    by_name = {s.get("name"): s for s in stages if isinstance(s, dict)}
    for ov in overrides:
        key, eq, value = ov.partition("=")
        name, _, rest = key.partition(".")
        if not eq or not rest or name not in by_name:
            raise WorkflowError(f"--set {ov}: expected STAGE.KEY=VALUE with STAGE one of "
                                f"{', '.join(map(str, by_name))}", path)
        stage = by_name[name]
        if rest.startswith("config."):
            stage["set"] = [*(stage.get("set") or []), f"{rest.removeprefix('config.')}={value}"]
        elif rest.startswith("inputs.") and value and not value.startswith("@"):
            stage.setdefault("inputs", {})[rest.removeprefix("inputs.")] = str(Path(value).expanduser().resolve())
        else:
            try:
                apply_override(stage, f"{rest}={value}")
            except ConfigError as e:
                raise WorkflowError(str(e), path) from None


def load_workflow(path: str | Path, overrides: Sequence[str] = ()) -> Workflow:
    """Read and validate a workflow file (a path, or the name of a shipped workflow).

    Args:
        path: the YAML file, or a shipped workflow name (``seg3d_attention_unet``).
        overrides: ``STAGE.params.KEY=VALUE`` / ``STAGE.inputs.KEY=VALUE`` / ``STAGE.config.KEY=VALUE``
            (the last appends a config override to a train stage).

    Raises:
        WorkflowError: one line naming the file and the problem.
    """
    path = resolve_workflow_path(path).resolve()
    try:
        data = read_yaml(path)
    except ConfigError as e:
        raise WorkflowError(str(e).removeprefix(f"{path}: "), path) from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise WorkflowError(f"unknown top-level key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})", path)
    if not isinstance(data.get("stages"), list) or not data["stages"]:
        raise WorkflowError("expected a non-empty list under 'stages'", path)
    _apply_overrides(path, data, overrides)
    stages = [_parse_stage(path, i, raw) for i, raw in enumerate(data["stages"])]
    names: set[str] = set()
    outputs: dict[str, str] = {}
    for s in stages:
        if s.name in names:
            raise WorkflowError(f"duplicate stage name {s.name!r}", path)
        names.add(s.name)
        if s.output in outputs:
            raise WorkflowError(f"duplicate output {s.output!r}: stages {outputs[s.output]!r} and {s.name!r}", path)
        outputs[s.output] = s.name
    for s in stages:
        for key, ref in s.inputs.items():
            if ref.stage is not None and ref.stage not in names:
                raise WorkflowError(f"stage {s.name!r}: missing input {key}={ref}: no stage named {ref.stage!r}", path)
            if ref.stage is None and not Path(ref.path).exists():
                raise WorkflowError(f"stage {s.name!r}: missing input {key}: {ref.path} does not exist", path)
            if ref.stage == s.name:
                raise WorkflowError(f"cycle between stages: {s.name} → {s.name}", path)
    name = data.get("name", path.stem)
    if not isinstance(name, str):
        raise WorkflowError("name must be a string", path)
    return Workflow(name, path, _order(path, stages), str(data.get("description", "")))

