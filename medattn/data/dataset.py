"""Dataset descriptions: which image files and label files make up each case.

Accepted descriptions:

* ``dataset.json`` in the Medical Segmentation Decathlon / nnU-Net layout, next to ``imagesTr/`` and
  ``labelsTr/`` (and optionally ``imagesTs/``, ``labelsTs/``). Channels are separate files with the
  ``_0000``, ``_0001`` … suffix (nnU-Net), or one multi-channel file (MSD). Labels come from
  ``labels`` in either form: ``{"background": 0, "liver": 1}`` (nnU-Net v2) or
  ``{"0": "background", "1": "liver"}`` (MSD).
* a CSV file with a header containing ``image`` (or ``image_0000``, ``image_0001`` … for several
  channels) and optionally ``label`` and ``name``; paths relative to the CSV's folder.
* a JSON list ``[{"image": ..., "label": ...}, ...]`` (``image`` may be a list of channel files), or a
  mapping with ``training``/``test`` lists and optional ``labels``.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medattn.errors import DataError
from medattn.io import SUPPORTED_EXTENSIONS, case_name


@dataclass(frozen=True)
class Case:
    """One case: its channel image files (in channel order) and an optional label file."""

    name: str
    images: tuple[Path, ...]
    label: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        """The MONAI-style dict the data pipeline starts from."""
        d: dict[str, Any] = {"name": self.name, "image": [str(p) for p in self.images]}
        if self.label is not None:
            d["label"] = str(self.label)
        return d


@dataclass
class DatasetSpec:
    """A parsed dataset description."""

    source: Path
    training: list[Case]
    test: list[Case] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)  #: value -> name, background 0 included
    channel_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Number of output classes (max label value + 1)."""
        return max(self.labels) + 1 if self.labels else 0


def _parse_labels(raw: Any, source: Path) -> dict[int, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise DataError("'labels' must be a non-empty mapping", source)
    out: dict[int, str] = {}
    for k, v in raw.items():
        try:
            if isinstance(v, int) and not isinstance(v, bool):  # nnU-Net v2: name -> value
                out[int(v)] = str(k)
            else:  # MSD: "value" -> name
                out[int(k)] = str(v)
        except (TypeError, ValueError):
            raise DataError(f"labels: cannot read entry {k!r}: {v!r} (nnU-Net 'name': value regions "
                            "are not supported)", source) from None
    if 0 not in out:
        raise DataError("labels: value 0 (background) must be declared", source)
    if sorted(out) != list(range(len(out))):
        raise DataError(f"labels: values must be consecutive from 0, got {sorted(out)}", source)
    return out


def _ext_of(path: Path) -> str:
    return next((e for e in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True) if path.name.endswith(e)),
                path.suffix)


def _channel_files(image: Path, n_channels: int | None, source: Path) -> tuple[Path, ...]:
    """Resolve an MSD image entry: the file itself, or its ``_0000``… channel files."""
    if image.exists() and (n_channels in (None, 1) or image.is_dir()):
        return (image,)
    ext = _ext_of(image)
    stem = image.name[: len(image.name) - len(ext)] if ext else image.name
    files = []
    for c in range(n_channels or 64):
        f = image.with_name(f"{stem}_{c:04d}{ext}")
        if not f.exists():
            break
        files.append(f)
    if not files and image.exists():
        return (image,)
    if not files:
        raise DataError(f"image {image.name} not found (nor {stem}_0000{ext})", source)
    if n_channels and len(files) != n_channels:
        raise DataError(f"case {stem}: found {len(files)} channel files, expected {n_channels}", source)
    return tuple(files)


def _resolve(base: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else (base / q).resolve()


def _check_exists(case: Case, source: Path) -> None:
    for f in (*case.images, *([case.label] if case.label else [])):
        if not f.exists():
            raise DataError(f"case '{case.name}': no such file {f}", source)


def _from_entries(entries: Any, base: Path, source: Path, n_channels: int | None, key: str) -> list[Case]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise DataError(f"'{key}' must be a list", source)
    cases = []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            e = {"image": e}
        if not isinstance(e, dict) or "image" not in e:
            raise DataError(f"{key}[{i}]: expected a mapping with an 'image' entry", source)
        imgs = e["image"] if isinstance(e["image"], list) else [e["image"]]
        images: tuple[Path, ...] = ()
        for im in imgs:
            images += _channel_files(_resolve(base, str(im)), None if len(imgs) > 1 else n_channels, source)
        label = _resolve(base, str(e["label"])) if e.get("label") else None
        name = str(e.get("name") or (case_name(label) if label else case_name(images[0]).removesuffix("_0000")))
        case = Case(name, images, label)
        _check_exists(case, source)
        cases.append(case)
    return cases


def _nnunet_folder(base: Path, images_dir: str, labels_dir: str, file_ending: str, n_channels: int,
                   source: Path) -> list[Case]:
    """Discover cases from ``imagesTr/<case>_0000<ending>`` files (nnU-Net v2 without a 'training' list)."""
    folder = base / images_dir
    if not folder.is_dir():
        return []
    cases = []
    for f in sorted(folder.glob(f"*_0000{file_ending}")):
        name = f.name[: -len(f"_0000{file_ending}")]
        images = tuple(folder / f"{name}_{c:04d}{file_ending}" for c in range(n_channels))
        label = base / labels_dir / f"{name}{file_ending}"
        case = Case(name, images, label if label.exists() or labels_dir == "labelsTr" else None)
        _check_exists(case, source)
        cases.append(case)
    return cases


def _load_dataset_json(path: Path, data: dict) -> DatasetSpec:
    base = path.parent
    channels = data.get("channel_names") or data.get("modality") or {"0": "image"}
    channel_names = [str(channels[k]) for k in sorted(channels, key=lambda k: int(k))]
    n = len(channel_names)
    labels = _parse_labels(data.get("labels"), path)
    if "training" in data:
        training = _from_entries(data.get("training"), base, path, n, "training")
    else:
        training = _nnunet_folder(base, "imagesTr", "labelsTr", data.get("file_ending", ".nii.gz"), n, path)
    test_raw = data.get("test")
    if test_raw and isinstance(test_raw, list) and all(isinstance(t, str) for t in test_raw):
        test_raw = [{"image": t} for t in test_raw]
    test = _from_entries(test_raw, base, path, n, "test") if test_raw else _nnunet_folder(
        base, "imagesTs", "labelsTs", data.get("file_ending", ".nii.gz"), n, path)
    # MSD test lists carry no labels; pick up labelsTs/<case> when it exists.
    test = [c if c.label else Case(c.name, c.images, _maybe(base / "labelsTs", c, data)) for c in test]
    return DatasetSpec(path, training, test, labels, channel_names)


def _maybe(folder: Path, case: Case, data: dict) -> Path | None:
    ending = data.get("file_ending") or _ext_of(case.images[0])
    f = folder / f"{case.name}{ending}"
    return f if f.exists() else None


def _load_csv(path: Path) -> DatasetSpec:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError("no cases (the CSV has no rows)", path)
    cols = list(rows[0].keys())
    img_cols = sorted(c for c in cols if c.startswith("image_")) or (["image"] if "image" in cols else [])
    if not img_cols:
        raise DataError(f"CSV needs an 'image' column (or image_0000, image_0001, ...); found {cols}", path)
    entries = [{"image": [r[c] for c in img_cols], "label": r.get("label") or None, "name": r.get("name") or None}
               for r in rows]
    return DatasetSpec(path, _from_entries(entries, path.parent, path, None, "rows"), [], {},
                       [f"image_{i}" for i in range(len(img_cols))])


def load_dataset(path: str | Path) -> DatasetSpec:
    """Parse a dataset description (see the module docstring).

    Raises:
        DataError: a missing file, an empty dataset or a malformed description, naming the file.
    """
    path = Path(path)
    if path.is_dir() and (path / "dataset.json").exists():
        path = path / "dataset.json"
    if not path.is_file():
        raise DataError("no such dataset description (expected dataset.json, a .csv or a .json list)", path)
    if path.suffix.lower() == ".csv":
        spec = _load_csv(path)
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"invalid JSON: {e}", path) from e
        if isinstance(data, list):
            spec = DatasetSpec(path, _from_entries(data, path.parent, path, None, "cases"))
        elif isinstance(data, dict):
            spec = _load_dataset_json(path, data)
        else:
            raise DataError("expected a JSON mapping (dataset.json) or a list of cases", path)
    if not spec.training:
        raise DataError("empty dataset: no training cases found", path)
    names = [c.name for c in spec.training]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise DataError(f"duplicate case names: {', '.join(sorted(dup)[:5])}", path)
    return spec


def split_cases(cases: list[Case], val_fraction: float, seed: int, val_names: list[str] | None = None
                ) -> tuple[list[Case], list[Case]]:
    """Deterministic train/validation split (by explicit names, else a seeded shuffle)."""
    if val_names:
        known = {c.name for c in cases}
        missing = [n for n in val_names if n not in known]
        if missing:
            raise DataError(f"data.val_cases: unknown case(s) {', '.join(missing[:5])}")
        val = [c for c in cases if c.name in set(val_names)]
    else:
        n_val = round(len(cases) * val_fraction)
        if val_fraction > 0 and len(cases) >= 2:
            n_val = max(1, n_val)
        order = sorted(cases, key=lambda c: c.name)
        random.Random(seed).shuffle(order)
        val = order[:n_val]
    train = [c for c in cases if c not in val]
    if not train:
        raise DataError("no training cases left after the validation split")
    return train, val
