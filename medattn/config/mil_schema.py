"""The typed configuration of a whole-slide multiple-instance-learning (MIL) run.

A MIL config file says ``pipeline: mil`` at the top; everything else has a default. The sections
follow the data flow: ``slide`` (reading) → ``tissue`` (detection) → ``patch`` (tiling) → ``encoder``
(features, written as HDF5 bags) → ``task`` + ``model`` (gated ABMIL) → ``train`` (patient-level
k-fold cross-validation) → ``infer`` (slide predictions and attention heatmaps). Areas are in µm² at
level 0, so the same config works for slides scanned at different resolutions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass
class MilDataConfig:
    """The slide table and where slides or precomputed bags are found."""

    #: CSV with ``slide_id``, ``patient_id`` and ``label`` (classification) or ``time`` + ``event``
    #: (survival); an optional ``slide`` column gives each slide's path (relative to the CSV)
    slides_csv: str = ""
    slides_dir: str | None = None  #: slides found as ``<slides_dir>/<slide_id>.<ext>`` (any slide format)
    #: feature bags ``<bags_dir>/<slide_id>.h5`` (medattn, CLAM or TRIDENT layout); default
    #: ``<output_dir>/bags``, filled from the slides by the configured encoder when missing
    bags_dir: str | None = None
    label_column: str = "label"
    time_column: str = "time"
    event_column: str = "event"  #: 1 = event observed, 0 = censored
    classes: list[str] = field(default_factory=list)  #: class names in order (default: sorted labels)


@dataclass
class SlideConfig:
    """Slide reading. Overrides apply only where the slide's metadata lacks the value."""

    mpp: float | None = None  #: µm per pixel at level 0, used when the metadata has none
    magnification: float | None = None  #: objective power at level 0, used when the metadata has none
    backend: Literal["auto", "openslide", "tiffslide", "image"] = "auto"  #: auto: OpenSlide, then tiffslide

    def __post_init__(self) -> None:
        _check(self.mpp is None or self.mpp > 0, "mpp must be > 0")
        _check(self.magnification is None or self.magnification > 0, "magnification must be > 0")


@dataclass
class TissueConfig:
    """Tissue detection on a thumbnail: saturation threshold, morphology, holes, minimum area."""

    method: Literal["otsu", "threshold"] = "otsu"  #: Otsu on HSV saturation, or a fixed ``threshold``
    threshold: float = 0.08  #: saturation threshold in [0, 1] for ``method: threshold``
    thumbnail_size: int = 2048  #: longest side (px) of the thumbnail detection runs on
    blur_sigma: float = 1.0  #: Gaussian blur of the saturation channel, thumbnail px (0: none)
    max_brightness: float = 0.95  #: pixels brighter than this (glass, 0–1) are never tissue
    min_brightness: float = 0.05  #: pixels darker than this (black borders, 0–1) are never tissue
    close_radius_um: float = 16.0  #: morphological closing radius (µm, level 0); 0 disables
    open_radius_um: float = 8.0  #: morphological opening radius (µm, level 0); 0 disables
    min_area_um2: float = 20000.0  #: tissue pieces smaller than this are dropped
    fill_holes: bool = True  #: fill holes in tissue smaller than ``max_hole_area_um2``
    max_hole_area_um2: float = 10000.0  #: larger holes (lumens, tears) stay holes
    #: a user mask (PNG at any size covering the whole slide, or GeoJSON in level-0 pixels) that
    #: replaces detection; ``{slide_id}`` is replaced by the slide's id
    mask: str | None = None

    def __post_init__(self) -> None:
        _check(0.0 <= self.threshold <= 1.0, "threshold must be in [0, 1]")
        _check(self.thumbnail_size >= 64, "thumbnail_size must be >= 64")
        _check(0.0 <= self.min_brightness < self.max_brightness <= 1.0,
               "need 0 <= min_brightness < max_brightness <= 1")
        _check(min(self.blur_sigma, self.close_radius_um, self.open_radius_um, self.min_area_um2,
                   self.max_hole_area_um2) >= 0, "sizes and radii must be >= 0")


@dataclass
class PatchConfig:
    """Tiling of the tissue into patches (coordinates are level-0 top-left corners)."""

    magnification: float = 20.0  #: target magnification the patches are read at
    size: int = 256  #: patch side in pixels at the target magnification
    overlap: float = 0.0  #: fraction of the patch shared with its neighbour, in [0, 1)
    min_tissue: float = 0.5  #: minimum tissue fraction of a patch, in [0, 1]

    def __post_init__(self) -> None:
        _check(self.magnification > 0, "magnification must be > 0")
        _check(self.size >= 8, "size must be >= 8")
        _check(0.0 <= self.overlap < 1.0, "overlap must be in [0, 1)")
        _check(0.0 <= self.min_tissue <= 1.0, "min_tissue must be in [0, 1]")


@dataclass
class EncoderConfig:
    """The patch encoder that turns patches into feature vectors."""

    name: str = "handcrafted"  #: ``handcrafted`` (no weights) or ``cnn`` (a MONAI network)
    #: local weights file (``.pt``/``.pth`` loaded with weights_only=True, or ``.safetensors``);
    #: required by ``cnn``, never downloaded
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  #: encoder options, e.g. ``{network: resnet18}``
    batch_size: int = 64  #: patches per encoder call
    num_workers: int = 2  #: DataLoader workers reading patches
    device: str = "auto"

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        _check(self.num_workers >= 0, "num_workers must be >= 0")


@dataclass
class TaskConfig:
    """What the slide-level model predicts."""

    type: Literal["classification", "survival"] = "classification"
    survival_loss: Literal["cox", "nll"] = "nll"  #: Cox partial likelihood or discrete-time NLL
    n_bins: int = 4  #: discrete-time bins (quantiles of event times) for ``survival_loss: nll``

    def __post_init__(self) -> None:
        _check(self.n_bins >= 2, "n_bins must be >= 2")


@dataclass
class MilModelConfig:
    """A bag model from the registry; ``in_dim`` and ``n_outputs`` come from the bags and the task."""

    name: str = "abmil"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class MilTrainConfig:
    """Cross-validated training."""

    folds: int = 5  #: patient-level folds (k-fold; each fold is the test set once)
    seeds: list[int] = field(default_factory=lambda: [0])  #: every fold is trained once per seed
    val_fraction: float = 0.15  #: patients of each training fold held out for early stopping
    epochs: int = 30
    lr: float = 2e-4
    weight_decay: float = 1e-5
    batch_size: int = 1  #: bags per step (padded and masked); Cox needs several
    max_patches: int | None = None  #: random patches per bag and step in training (None: all)
    class_weighting: bool = True  #: weight classes by inverse frequency (classification)
    #: standardise features with the training bags' per-dimension mean/std (stored in the model)
    normalize_features: bool = True
    early_stopping_patience: int = 10  #: epochs without validation improvement (0: off)
    aem_lambda: float = 0.0  #: weight of the attention-entropy (AEM) regulariser (0: off)
    aem_normalize: bool = True  #: divide the entropy by log N (bag size)
    grad_clip: float = 0.0  #: max gradient norm (0: off)
    grad_accumulation: int = 1
    device: str = "auto"
    dist_timeout_s: float = 1800.0  #: a collective waiting this long (dead or hung process) stops the run

    def __post_init__(self) -> None:
        _check(self.folds >= 2, "folds must be >= 2")
        _check(len(self.seeds) >= 1, "seeds must list at least one seed")
        _check(0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)")
        _check(self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1")
        _check(self.max_patches is None or self.max_patches >= 1, "max_patches must be >= 1")
        _check(self.lr > 0 and self.weight_decay >= 0 and self.grad_clip >= 0, "lr > 0, weight_decay >= 0")
        _check(self.aem_lambda >= 0, "aem_lambda must be >= 0")
        _check(self.grad_accumulation >= 1 and self.dist_timeout_s > 0, "grad_accumulation >= 1")


@dataclass
class MilInferConfig:
    """Slide inference outputs. The raw attention scores are always stored; scaling is display only."""

    heatmap_scaling: Literal["rank", "minmax", "raw"] = "rank"  #: percentile rank, min–max, or raw sigmoid
    heatmap_colormap: str = "jet"  #: a matplotlib colormap name
    heatmap_alpha: float = 0.45  #: opacity of the heatmap over the thumbnail
    thumbnail_size: int = 2048  #: longest side of the heatmap image (px)

    def __post_init__(self) -> None:
        _check(0.0 <= self.heatmap_alpha <= 1.0, "heatmap_alpha must be in [0, 1]")


@dataclass
class MilConfig:
    """A full whole-slide MIL run (``pipeline: mil`` in the file)."""

    pipeline: Literal["mil"] = "mil"
    experiment: str = "mil"
    output_dir: str = "runs/{experiment}"  #: ``{experiment}`` is replaced by the experiment name
    seed: int = 0
    data: MilDataConfig = field(default_factory=MilDataConfig)
    slide: SlideConfig = field(default_factory=SlideConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: MilModelConfig = field(default_factory=MilModelConfig)
    train: MilTrainConfig = field(default_factory=MilTrainConfig)
    infer: MilInferConfig = field(default_factory=MilInferConfig)

    @property
    def run_dir(self) -> str:
        """``output_dir`` with ``{experiment}`` filled in."""
        return self.output_dir.replace("{experiment}", self.experiment)
