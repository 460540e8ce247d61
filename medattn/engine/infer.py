"""Folder inference (``medattn infer``): segment every case of some inputs into an output folder.

For each case ``<case>`` (one image file, a DICOM series folder, or the ``<case>_0000``, ``<case>_0001``
… channel files of a multi-channel model) ``out_dir`` receives, each file written atomically:

- ``<case><ext>``: the label map, in the input's format (DICOM → ``.nii.gz``, JPEG → ``.png``) and on
  the input's grid and geometry (NIfTI: the input's header, so the affine is bit-identical);
- ``probabilities/<case>.nii.gz`` (optional): the K class probabilities as a 4-D NIfTI (X, Y, Z, K) on
  the input's grid (2-D inputs: (X, Y, 1, K)); in a sub-folder, so that ``out_dir`` holds only label maps
  and can be passed to ``medattn evaluate`` as it is;
- ``<case>.json``: the manifest (inputs, outputs, checkpoint path and sha256, medattn version, model,
  labels, settings, device, timings, input geometry). Written last: it marks the case complete.

and ``infer_settings.json`` holds the run's resolved settings. With a one-channel model a trailing
``_0000`` is dropped from the case name (nnU-Net naming: ``case_000_0000.nii.gz`` → ``case_000.nii.gz``).

A case whose manifest and outputs exist and were made by the same checkpoint (sha256) with the same
settings is skipped unless ``overwrite``. A case that cannot be read or predicted fails alone: it is
recorded in :attr:`InferResult.failed` with a one-line message, and none of its output files remain.
The next case is read and preprocessed in a background thread while the current one is predicted.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from medattn import __version__
from medattn.engine import distributed
from medattn.engine.distributed import placement
from medattn.engine.predictor import Prediction, Predictor
from medattn.errors import DataError, MedattnError
from medattn.io import Geometry, case_name, list_images, prediction_path, write_image
from medattn.io.atomic import atomic_write_json
from medattn.io.dicom import is_dicom_file
from medattn.io.image import short_reason

SETTINGS_FILE = "infer_settings.json"
PROBABILITIES_DIR = "probabilities"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class InferResult:
    """What :func:`infer` did.

    Attributes:
        done: cases predicted in this run.
        skipped: cases whose outputs already existed (same checkpoint and settings).
        failed: ``(case, one-line error message)`` per case that could not be predicted.
        outputs: case → its files in ``out_dir`` (label, [probabilities], manifest), for done and skipped.
        settings_path: ``out_dir/infer_settings.json``.
    """

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, list[Path]] = field(default_factory=dict)
    settings_path: Path | None = None

    @property
    def ok(self) -> bool:
        """True when no case failed."""
        return not self.failed


@dataclass
class InferCase:
    """One case to predict: its channel inputs in order and its output files."""

    name: str
    images: tuple[Path, ...]
    label_path: Path
    probabilities_path: Path
    manifest_path: Path
    problem: str | None = None  # a grouping error: the case fails without being read


def _expand(inputs: Sequence[str | Path]) -> list[Path]:
    """Input files and folders → image files / DICOM series folders, in order, without duplicates."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise DataError("no such file or folder", p)
        if p.is_dir():
            holds_dicom = any(not f.name.startswith(".") and is_dicom_file(f) for f in sorted(p.iterdir()))
            listed = [p] if holds_dicom else list_images(p)
            if not listed:
                raise DataError("no images found", p)
            found.extend(listed)
        else:
            found.append(p)
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def group_channel_files(files: list[Path], n_channels: int) -> list[tuple[str, tuple[Path, ...], str | None]]:
    """(case name, channel files in order, grouping problem or None) per case, in input order."""
    if n_channels == 1:
        out = []
        for f in files:
            m = _CHANNEL_RE.match(case_name(f))
            out.append((m["case"] if m and m["channel"] == "0000" else case_name(f), (f,), None))
        return out
    entries: dict[str, list[tuple[int | None, Path]]] = {}
    for f in files:
        m = _CHANNEL_RE.match(case_name(f))
        key, channel = (m["case"], int(m["channel"])) if m else (case_name(f), None)
        entries.setdefault(key, []).append((channel, f))
    out = []
    for name, items in entries.items():
        if len(items) == 1 and items[0][0] is None:  # one file holding every channel (MSD style)
            out.append((name, (items[0][1],), None))
            continue
        items = sorted(items, key=lambda cf: -1 if cf[0] is None else cf[0])
        paths = tuple(f for _, f in items)
        found = [c for c, _ in items]
        problem = None
        if found != list(range(n_channels)):
            have = ", ".join("(no suffix)" if c is None else f"_{c:04d}" for c in found)
            problem = (f"{paths[0]}: case {name!r} needs the {n_channels} channel files "
                       f"_0000.._{n_channels - 1:04d}, found {have}")
        out.append((name, paths, problem))
    return out


def _prefetched(pool: ThreadPoolExecutor, fn: Callable[[T], R],
                items: Sequence[T]) -> Iterator[tuple[T, Future[R]]]:
    """Yield ``(item, future of fn(item))`` while ``fn`` already runs on the next item in ``pool``."""
    if not items:
        return
    upcoming = pool.submit(fn, items[0])
    for i, item in enumerate(items):
        current = upcoming
        if i + 1 < len(items):
            upcoming = pool.submit(fn, items[i + 1])
        yield item, current


def collect_cases(inputs: Sequence[str | Path], out_dir: str | Path, n_channels: int) -> list[InferCase]:
    """Cases of ``inputs`` with their output paths in ``out_dir``.

    Raises:
        DataError: a missing input, a folder without images, two inputs for one case name, or an
            output that would overwrite an input.
    """
    out_dir = Path(out_dir)
    files = _expand(inputs)
    inputs_resolved = {f.resolve() for f in files}
    cases: list[InferCase] = []
    by_name: dict[str, Path] = {}
    for name, images, problem in group_channel_files(files, n_channels):
        if name in by_name:
            raise DataError(f"two inputs for case {name!r}: {by_name[name]} and {images[0]}")
        by_name[name] = images[0]
        stem = case_name(images[0])
        ext = prediction_path(images[0], out_dir).name[len(stem):]
        label_path = out_dir / f"{name}{ext}"
        if label_path.resolve() in inputs_resolved:
            raise DataError(f"the prediction would overwrite the input {label_path}; choose another out_dir",
                            out_dir)
        cases.append(InferCase(name, images, label_path, out_dir / PROBABILITIES_DIR / f"{name}.nii.gz",
                           out_dir / f"{name}.json", problem))
    return cases


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _up_to_date(case: InferCase, sha256: str, settings: dict[str, Any]) -> bool:
    try:
        manifest = json.loads(case.manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or not isinstance(manifest.get("checkpoint"), dict):
        return False
    files = [case.label_path] + ([case.probabilities_path] if settings["save_probabilities"] else [])
    return (manifest["checkpoint"].get("sha256") == sha256 and manifest.get("settings") == settings
            and all(f.is_file() for f in files))


def _geometry_3d(g: Geometry) -> Geometry:
    """A 2-D geometry as one slice of a 3-D volume (unit z spacing), for a 4-D probabilities NIfTI."""
    if g.ndim == 3:
        return g
    d = np.eye(3)
    d[:2, :2] = g.direction_matrix
    return Geometry.from_arrays((*g.spacing, 1.0), (*g.origin, 0.0), d)


def write_case_outputs(case: InferCase, pred: Prediction, manifest: dict[str, Any],
                save_probabilities: bool) -> list[Path]:
    """Write label, optional probabilities, then the manifest; on any error remove what was written.

    Raises:
        DataError: a file cannot be written (naming it); nothing of the case is left behind.
    """
    written: list[Path] = []
    ref = pred.reference
    t0 = time.perf_counter()
    target = case.label_path
    try:
        written.append(write_image(pred.label, target, ref.geometry, reference=ref))
        if save_probabilities:
            target = case.probabilities_path
            probs, geometry = pred.probabilities, ref.geometry
            if geometry.ndim == 2:
                probs, geometry = probs[..., None], _geometry_3d(geometry)
            written.append(write_image(probs, target, geometry, reference=ref))
        manifest["timings"] = {**{k: round(v, 4) for k, v in pred.timings.items()},
                               "write": round(time.perf_counter() - t0, 4)}
        target = case.manifest_path
        atomic_write_json(target, manifest)
        written.append(target)
    except BaseException as e:
        for f in written:
            with contextlib.suppress(OSError):
                f.unlink()
        if isinstance(e, OSError):
            raise DataError(f"cannot write the prediction: {e.strerror or short_reason(e)}", target) from e
        raise
    return written


def _forget_previous(case: InferCase) -> None:
    """Before recomputing: drop the old manifest (it marks completion) and probabilities it listed."""
    try:
        old = json.loads(case.manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    case.manifest_path.unlink(missing_ok=True)
    if isinstance(old, dict) and (old.get("outputs") or {}).get("probabilities"):
        case.probabilities_path.unlink(missing_ok=True)


def failure_message(case: InferCase, exc: BaseException) -> str:
    if isinstance(exc, MedattnError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{case.images[0]}: {type(exc).__name__}: {short_reason(exc)}"


def case_manifest(case: InferCase, pred: Prediction, common: dict[str, Any], save_probabilities: bool) -> dict:
    return {"case": case.name, "inputs": [str(p.resolve()) for p in case.images],
            "outputs": {"label": case.label_path.name,
                        "probabilities": (f"{PROBABILITIES_DIR}/{case.probabilities_path.name}"
                                          if save_probabilities else None)},
            **common, "input_geometry": pred.reference.geometry.to_dict(),
            "input_shape": list(pred.reference.spatial_shape),
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def infer(checkpoint: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, *,
          overwrite: bool = False, save_probabilities: bool | None = None, overlap: float | None = None,
          blend: str | None = None, tta: bool | None = None, sw_batch_size: int | None = None,
          device: str = "auto", progress: bool = True, shard: str | tuple[int, int] | None = None) -> InferResult:
    """Segment every case of ``inputs`` into ``out_dir`` with one model load.

    Args:
        checkpoint: a medattn checkpoint file.
        inputs: image files, DICOM series folders and/or folders of images (listed with
            :func:`medattn.io.list_images`).
        out_dir: output folder (created).
        overwrite: recompute cases whose outputs exist.
        save_probabilities: also write ``probabilities/<case>.nii.gz``; None: the checkpoint's default.
        overlap, blend, tta, sw_batch_size: sliding-window settings; None: the checkpoint's defaults.
        device: "auto", "cpu", "cuda", "cuda:N".
        progress: show a tqdm progress bar.
        shard: ``"i/n"`` or ``(i, n)``: predict only every n-th case (sorted by name) from the i-th, so
            that n processes split the inputs; under torchrun it defaults to ``RANK/WORLD_SIZE``.

    Returns:
        :class:`InferResult` (done / skipped / failed cases and output files).

    Raises:
        CheckpointError: the checkpoint is missing, corrupt or not a medattn checkpoint.
        DataError: a missing input, a folder without images, two inputs with one case name, or an
            output that would overwrite an input.
        ConfigError: invalid settings or device.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    part, device = placement(shard, device)
    predictor = Predictor(checkpoint, device=device, overlap=overlap, blend=blend, tta=tta,
                          sw_batch_size=sw_batch_size)
    cases = collect_cases(inputs, out_dir, len(predictor.channels))
    if part is not None:  # deterministic: every n-th case by name, whatever the input order
        cases = distributed.shard(sorted(cases, key=lambda c: c.name), *part)
    if save_probabilities is None:
        save_probabilities = bool(predictor.infer_defaults.get("save_probabilities", False))
    settings = {**predictor.settings, "save_probabilities": bool(save_probabilities)}
    sha256 = file_sha256(checkpoint)
    common = {"medattn": __version__, "checkpoint": {"path": str(checkpoint.resolve()), "sha256": sha256},
              "model": predictor.model_name, "labels": {str(k): v for k, v in predictor.labels.items()},
              "channels": predictor.channels, "settings": settings, "preprocess": predictor.preprocess,
              "device": str(predictor.device)}
    result = InferResult(settings_path=out_dir / SETTINGS_FILE)
    atomic_write_json(result.settings_path, {**common, "inputs": [str(Path(i).resolve()) for i in inputs],
                                             "out_dir": str(out_dir.resolve()), "overwrite": overwrite})
    todo: list[InferCase] = []
    for case in cases:
        if case.problem:
            result.failed.append((case.name, case.problem))
        elif not overwrite and _up_to_date(case, sha256, settings):
            result.skipped.append(case.name)
            probs = [case.probabilities_path] if save_probabilities else []
            result.outputs[case.name] = [case.label_path, *probs, case.manifest_path]
        else:
            todo.append(case)
    bar = tqdm(total=len(cases), disable=not progress, unit="case", desc="infer")
    bar.update(len(cases) - len(todo))
    with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="medattn-prefetch") as pool:
        for case, prepared in _prefetched(pool, lambda c: predictor.prepare(c.images), todo):
            bar.set_postfix_str(case.name, refresh=False)
            try:
                pred = predictor.run(prepared.result())
                _forget_previous(case)
                manifest = case_manifest(case, pred, common, bool(save_probabilities))
                result.outputs[case.name] = write_case_outputs(case, pred, manifest, bool(save_probabilities))
                result.done.append(case.name)
            except Exception as e:  # one case fails alone; the message is recorded for the caller
                result.failed.append((case.name, failure_message(case, e)))
            finally:
                bar.update(1)
    return result
