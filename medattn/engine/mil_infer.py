"""Slide-level inference with a MIL checkpoint (``medattn infer CKPT INPUTS -o OUT``).

Inputs are slides (any :data:`~medattn.io.slide.SLIDE_SUFFIXES` file) and/or ``.h5`` feature bags
(medattn, CLAM or TRIDENT layout), as files or folders. A slide is turned into a bag exactly as in
training: the checkpoint's ``slide``/``tissue``/``patch`` settings and encoder, through
:func:`medattn.data.features.slide_bag` into ``OUT/bags/<slide_id>.h5`` (plus ``masks/`` and
``thumbnails/`` there). Per slide, ``OUT/<slide_id>/`` receives (each file written atomically):

- ``attention.csv``: ``patch_index, x, y, attention, attention_weight`` (raw score, softmax weight);
- ``attention.h5``: datasets ``coords`` [N, 2], ``attention`` [N], ``attention_weight`` [N];
- ``heatmap.png``: the attention heatmap over the slide thumbnail (over a white canvas sized by the
  coordinates for a bag whose slide is not found next to it), titled with the prediction;
- ``prediction.json`` (written last; marks the slide complete): outputs, prediction, checkpoint sha256,
  settings, bag attributes, timings.

``OUT/predictions.csv`` (``slide_id, prediction, <one column per output>``) is rebuilt at the end from
every ``prediction.json`` in ``OUT`` made by this checkpoint. A slide whose ``prediction.json`` has the
same checkpoint sha256 and settings is skipped unless ``overwrite``; a slide that cannot be read fails
alone with a one-line message, leaving the other slides' outputs.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medattn import __version__
from medattn.data.bags import Bag, read_bag
from medattn.engine import distributed
from medattn.engine.distributed import placement
from medattn.engine.heatmap import render_heatmap
from medattn.engine.mil_checkpoint import MilModel, load_mil_checkpoint
from medattn.engine.mil_outputs import (
    PREDICTION_FILE,
    blank_canvas,
    patch_size_level0,
    write_attention,
    write_png,
    write_predictions_csv,
)
from medattn.errors import CheckpointError, DataError, MedattnError
from medattn.io.atomic import atomic_write_json
from medattn.io.slide import SLIDE_SUFFIXES, find_slides, open_slide, slide_suffix

BAGS_DIR = "bags"
CASE_FILES = ("attention.csv", "attention.h5", "heatmap.png", PREDICTION_FILE)


@dataclass
class MilInferResult:
    """What :func:`infer_slides` did: slide ids done / skipped, ``(slide_id, message)`` per failure."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    predictions_csv: Path | None = None


@dataclass(frozen=True)
class MilCase:
    """One input: a slide file or a bag file, and its id (the file name without its suffix)."""

    slide_id: str
    path: Path
    kind: str  # "slide" | "bag"


def predict_bag(mil: MilModel, bag: Bag) -> dict[str, Any]:
    """Predict one bag: ``{"outputs": [K] floats, "output_names", "prediction" (class name or None),
    "attention": np [N] raw scores, "attention_weights": np [N] softmax}``.

    Raises:
        DataError: an empty bag or a feature dimension the model was not trained on (naming the bag).
    """
    n, dim = bag.features.shape
    in_dim = (mil.encoder or {}).get("dim") or getattr(mil.model, "init_kwargs", {}).get("in_dim")
    if n == 0:
        raise DataError("the bag has no patches (no tissue found?)", bag.path)
    if in_dim is not None and dim != int(in_dim):
        raise DataError(f"features have {dim} dimensions but the model expects {in_dim} "
                        f"(encoder {mil.encoder.get('name')!r})", bag.path)
    device = next(mil.model.parameters()).device
    with torch.no_grad():
        out = mil.model(torch.from_numpy(np.ascontiguousarray(bag.features)).to(device).unsqueeze(0))
        outputs = mil.outputs(out["logits"])[0].double().cpu().numpy()
        scores = out["attention"][0].double().cpu().numpy()
    weights = np.exp(scores - scores.max())
    weights /= weights.sum()
    prediction = None
    if mil.task["type"] == "classification" and mil.classes:
        prediction = mil.classes[int(np.argmax(outputs))]
    return {"outputs": [float(v) for v in outputs], "output_names": list(mil.output_names),
            "prediction": prediction, "attention": scores, "attention_weights": weights}


def collect_inputs(inputs: Sequence[str | Path]) -> list[MilCase]:
    """Slides and ``.h5`` bags among ``inputs`` (files, or folders listed non-recursively).

    Raises:
        DataError: a missing input, a file that is neither, a folder with neither, two inputs with one id.
    """
    cases: list[MilCase] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = [MilCase(s.name[: -len(slide_suffix(s) or "")], s, "slide") for s in find_slides([p])]
            found += [MilCase(b.stem, b, "bag") for b in sorted(p.glob("*.h5")) if not b.name.startswith(".")]
            if not found:
                raise DataError("no slides or .h5 feature bags found", p)
            cases.extend(found)
        elif p.is_file() and p.suffix.lower() == ".h5":
            cases.append(MilCase(p.stem, p, "bag"))
        elif p.is_file() and slide_suffix(p) is None:
            raise DataError(f"neither a slide ({' '.join(SLIDE_SUFFIXES)}) nor a .h5 feature bag", p)
        else:
            s = find_slides([p])[0]  # DataError for a missing path
            cases.append(MilCase(s.name[: -len(slide_suffix(s) or "")], s, "slide"))
    by_id: dict[str, MilCase] = {}
    for c in cases:
        if c.slide_id in ("", ".", "..") or "/" in c.slide_id or "\\" in c.slide_id:
            raise DataError(f"slide id {c.slide_id!r} cannot name an output folder; rename the file", c.path)
        other = by_id.setdefault(c.slide_id, c)
        if other.path.resolve() != c.path.resolve():
            raise DataError(f"two inputs for slide {c.slide_id!r}: {other.path} and {c.path}")
    return list(by_id.values())


def _slide_next_to(bag_path: Path, slide_id: str) -> Path | None:
    """A slide ``<slide_id>.<suffix>`` in the bag's folder, its parent, or the parent's ``slides/``."""
    for folder in (bag_path.parent, bag_path.parent.parent, bag_path.parent.parent / "slides"):
        for suffix in SLIDE_SUFFIXES:
            cand = folder / f"{slide_id}{suffix}"
            if cand.is_file():
                return cand
    return None


def _thumbnail(mil: MilModel, case: MilCase, bag: Bag, slide_cfg: Any,
               patch_l0: float) -> tuple[np.ndarray, tuple[float, float], str]:
    """The slide's thumbnail (the input slide, or one found next to a bag), else a blank canvas."""
    size = mil.infer.thumbnail_size
    source = case.path if case.kind == "slide" else _slide_next_to(case.path, case.slide_id)
    if source is not None:
        try:
            with open_slide(source, mpp=slide_cfg.mpp, magnification=slide_cfg.magnification,
                            backend=slide_cfg.backend) as slide:
                thumb, ds = slide.get_thumbnail(size)
            return thumb, ds, str(source)
        except MedattnError:
            if case.kind == "slide":
                raise
    thumb, ds = blank_canvas(bag, patch_l0, size)
    return thumb, ds, "blank"


def _up_to_date(folder: Path, sha256: str, settings: dict[str, Any]) -> bool:
    try:
        rec = json.loads((folder / PREDICTION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(rec, dict) and (rec.get("checkpoint") or {}).get("sha256") == sha256
            and rec.get("settings") == settings and all((folder / f).is_file() for f in CASE_FILES))


def _bag_for(case: MilCase, cfg: Any, out_dir: Path, encoder: Any, overwrite: bool) -> Bag:
    """The input bag, or the slide's bag: reused from ``OUT/bags`` when it is current, else extracted."""
    if case.kind == "bag":
        return read_bag(case.path)
    from medattn.data.features import bag_is_current, slide_bag

    path = out_dir / BAGS_DIR / f"{case.slide_id}.h5"
    if overwrite or not bag_is_current(path, cfg, encoder):
        path = slide_bag(case.path, cfg, out_dir / BAGS_DIR, encoder=encoder, progress=False)
    return read_bag(path)


def _check_encoder(have: dict[str, Any], trained: dict[str, Any], checkpoint: Path) -> None:
    """The encoder built here must be the one the checkpoint's bags came from (name, version, dim)."""
    for key in ("name", "version", "dim"):
        a, b = have.get(key), trained.get(key)
        if a not in (None, "") and b not in (None, "") and str(a) != str(b):
            raise CheckpointError(f"the model was trained on features of encoder {trained.get('name')!r} "
                                  f"({key} {b!r}); this medattn builds {key} {a!r}", checkpoint)


def _predict_case(case: MilCase, mil: MilModel, cfg: Any, out_dir: Path, encoder: Any,
                  common: dict[str, Any], overwrite: bool) -> None:
    folder = out_dir / case.slide_id
    (folder / PREDICTION_FILE).unlink(missing_ok=True)  # it marks completion: gone while recomputing
    t0 = time.perf_counter()
    bag = _bag_for(case, cfg, out_dir, encoder, overwrite)
    t_bag = time.perf_counter()
    pred = predict_bag(mil, bag)
    t_model = time.perf_counter()
    patch_l0 = patch_size_level0(bag)
    thumb, ds, thumb_source = _thumbnail(mil, case, bag, cfg.slide, patch_l0)
    title = f"{case.slide_id}: {pred['prediction']}" if pred["prediction"] is not None else \
        f"{case.slide_id}: " + ", ".join(f"{k} {v:.3g}" for k, v in zip(pred["output_names"], pred["outputs"]))
    heat = render_heatmap(thumb, ds, bag.coords, patch_l0, pred["attention"], mil.infer.heatmap_scaling,
                          mil.infer.heatmap_colormap, mil.infer.heatmap_alpha, title=title)
    write_attention(folder, bag, pred)
    write_png(folder / "heatmap.png", heat)
    record = {
        "slide_id": case.slide_id, "input": str(case.path.resolve()), "input_kind": case.kind,
        "bag": str(bag.path.resolve()) if bag.path else None,
        "prediction": pred["prediction"], "outputs": dict(zip(pred["output_names"], pred["outputs"])),
        "output_names": pred["output_names"], "n_patches": len(bag),
        "top_patch": {"index": int(np.argmax(pred["attention"])),
                      "xy": bag.coords[int(np.argmax(pred["attention"]))].tolist()},
        "heatmap": {"source": thumb_source, "downsample": [float(d) for d in ds],
                    "patch_size_level0": patch_l0},
        "bag_attrs": {k: v for k, v in bag.attrs.items() if isinstance(v, (str, int, float, bool, type(None)))},
        **common,
        "timings": {"bag": round(t_bag - t0, 4), "model": round(t_model - t_bag, 4),
                    "outputs": round(time.perf_counter() - t_model, 4)},
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    atomic_write_json(folder / PREDICTION_FILE, record)


def infer_slides(checkpoint: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
                 overwrite: bool = False, progress: bool = True, mpp: float | None = None,
                 magnification: float | None = None, shard: str | tuple[int, int] | None = None,
                 device: str = "auto") -> MilInferResult:
    """Predict every slide / bag of ``inputs`` into ``out_dir`` (see the module docstring).

    Args:
        mpp, magnification: used for slides whose metadata lacks them (override the checkpoint's).
        shard: ``"i/n"``: only every n-th input (sorted by slide id) from the i-th; under torchrun
            ``RANK/WORLD_SIZE``.
        device: "auto", "cpu", "cuda", "cuda:N".

    Raises:
        CheckpointError: not a MIL checkpoint. DataError: a missing input or two inputs with one id.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    part, device = placement(shard, device)
    mil = load_mil_checkpoint(checkpoint, device=device)
    cases = sorted(collect_inputs(inputs), key=lambda c: c.slide_id)
    if part is not None:
        cases = distributed.shard(cases, *part)
    slide_cfg = dataclasses.replace(mil.slide, **{k: v for k, v in (("mpp", mpp), ("magnification", magnification))
                                                  if v is not None})
    cfg = dataclasses.replace(mil.config, slide=slide_cfg, tissue=mil.tissue, patch=mil.patch,
                              encoder=dataclasses.replace(mil.config.encoder, device=str(mil.device)))
    settings = {"mpp": slide_cfg.mpp, "magnification": slide_cfg.magnification,
                "infer": dataclasses.asdict(mil.infer)}
    common = {"medattn": __version__, "checkpoint": {"path": str(checkpoint.resolve()), "sha256": mil.sha256},
              "task": mil.task, "classes": mil.classes, "encoder": mil.encoder, "settings": settings,
              "device": str(mil.device)}
    result = MilInferResult()
    todo = []
    for case in cases:
        if not overwrite and _up_to_date(out_dir / case.slide_id, mil.sha256, settings):
            result.skipped.append(case.slide_id)
        else:
            todo.append(case)
    encoder = None
    if any(c.kind == "slide" for c in todo):
        from medattn.data.encoders import create_encoder

        encoder = create_encoder(cfg.encoder)
        _check_encoder(encoder.describe(), mil.encoder, checkpoint)
    bar = tqdm(total=len(cases), initial=len(cases) - len(todo), disable=not progress, unit="slide", desc="infer")
    with bar:
        for case in todo:
            bar.set_postfix_str(case.slide_id, refresh=False)
            try:
                _predict_case(case, mil, cfg, out_dir, encoder, common, overwrite)
                result.done.append(case.slide_id)
            except Exception as e:  # one slide fails alone, leaving none of its files
                for name in CASE_FILES:
                    (out_dir / case.slide_id / name).unlink(missing_ok=True)
                if isinstance(e, MedattnError):
                    msg = str(e).splitlines()[0]
                else:
                    msg = f"{case.path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                result.failed.append((case.slide_id, msg))
            finally:
                bar.update(1)
    result.predictions_csv = write_predictions_csv(out_dir, mil.sha256, mil.output_names)
    return result
