"""The typed configuration of a medattn segmentation run.

Every field has a default, so a config file only states what differs. The YAML layout mirrors these
classes one to one (``train.epochs`` is ``Config.train.epochs``). Values are checked on load by
:mod:`medattn.config.coerce`; cross-field rules live in ``__post_init__``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass
class DataConfig:
    """Where the cases come from and how they are cached and split."""

    dataset: str = ""  #: dataset.json (MSD / nnU-Net), or a CSV / JSON list of image and label paths
    val_fraction: float = 0.2  #: share of training cases held out for validation (ignored if val_cases)
    val_cases: list[str] = field(default_factory=list)  #: explicit validation case names
    cache: Literal["memory", "disk", "none"] = "memory"  #: CacheDataset, PersistentDataset, or none
    cache_dir: str | None = None  #: for cache: disk (default: <output_dir>/cache)
    num_workers: int = 2  #: DataLoader worker processes

    def __post_init__(self) -> None:
        _check(0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)")
        _check(self.num_workers >= 0, "num_workers must be >= 0")


@dataclass
class PreprocessConfig:
    """Deterministic preprocessing, shared by training and inference (stored in the checkpoint)."""

    orientation: str | None = "auto"  #: axis codes such as "RAS"; "auto": RAS in 3-D, unchanged in 2-D
    #: mm per canonical axis; "median": the median spacing of the training cases; null: keep each case's
    target_spacing: list[float] | Literal["median"] | None = "median"
    normalization: Literal["zscore", "ct", "none"] = "zscore"  #: MRI-style z-score or CT window
    zscore_nonzero: bool = True  #: z-score statistics over non-zero (foreground) voxels only
    #: HU window scaled to [0, 1] for "ct"
    ct_window: tuple[float, float] = field(default_factory=lambda: [-1000.0, 1000.0])

    def __post_init__(self) -> None:
        if isinstance(self.target_spacing, list):
            _check(all(s > 0 for s in self.target_spacing), "target_spacing values must be > 0")
        _check(self.ct_window[0] < self.ct_window[1], "ct_window must be [low, high] with low < high")


@dataclass
class AugmentConfig:
    """Random training augmentation (MONAI transforms)."""

    flip: bool = True  #: random flips along every spatial axis
    rotate90: bool = False  #: random 90° rotations in the first two axes (for isotropic in-plane data)
    rotate_deg: float = 15.0  #: max random rotation in degrees (0 disables)
    scale: float = 0.1  #: max random zoom (0 disables)
    intensity: bool = True  #: random intensity scale/shift and Gaussian noise
    prob: float = 0.2  #: probability of each spatial/intensity augmentation

    def __post_init__(self) -> None:
        _check(0.0 <= self.prob <= 1.0, "prob must be in [0, 1]")
        _check(self.rotate_deg >= 0 and self.scale >= 0, "rotate_deg and scale must be >= 0")


@dataclass
class ModelConfig:
    """A model from the registry, by name. ``in_channels``/``out_channels`` come from the dataset."""

    name: str = "attention_unet"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation, validation and stopping."""

    epochs: int = 50
    batch_size: int = 2  #: volumes per process and step (global batch: batch_size × processes × grad_accumulation)
    patch_size: list[int] = field(default_factory=lambda: [64, 64, 64])
    samples_per_volume: int = 2  #: random patches drawn from each cached volume per epoch
    pos_fraction: float = 0.5  #: share of patches centred on foreground (rest on background)
    lr: float = 1e-3
    weight_decay: float = 1e-5
    scheduler: Literal["poly", "cosine", "constant"] = "poly"
    warmup_epochs: int = 0
    grad_clip: float = 12.0  #: max gradient norm (0 disables)
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  #: auto: bf16/fp16 on CUDA, fp32 on CPU
    device: str = "auto"  #: "auto", "cpu", "cuda", "cuda:1", ...
    val_every: int = 1  #: validate every N epochs (sliding window over whole validation cases)
    early_stopping_patience: int = 0  #: stop after N validations without improvement (0: off)
    deterministic: bool = False  #: torch.use_deterministic_algorithms (slower on GPU)
    grad_accumulation: int = 1  #: micro-batches whose gradients are summed before each optimizer step
    sync_batchnorm: bool = False  #: SyncBatchNorm across processes (CUDA, models with batch norm)
    dist_timeout_s: float = 1800.0  #: a collective waiting this long (dead or hung process) stops the run

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs must be >= 1")
        _check(self.batch_size >= 1 and self.samples_per_volume >= 1, "batch sizes must be >= 1")
        _check(all(p >= 1 for p in self.patch_size), "patch_size values must be >= 1")
        _check(0.0 <= self.pos_fraction <= 1.0, "pos_fraction must be in [0, 1]")
        _check(self.lr > 0 and self.weight_decay >= 0 and self.grad_clip >= 0, "lr > 0, weight_decay >= 0")
        _check(self.val_every >= 1, "val_every must be >= 1")
        _check(self.grad_accumulation >= 1, "grad_accumulation must be >= 1")
        _check(self.dist_timeout_s > 0, "dist_timeout_s must be > 0")


@dataclass
class InferConfig:
    """Sliding-window inference defaults (the CLI can override each)."""

    overlap: float = 0.5
    sw_batch_size: int = 2
    blend: Literal["gaussian", "constant"] = "gaussian"
    tta: bool = False  #: average over flips along every spatial axis
    save_probabilities: bool = False

    def __post_init__(self) -> None:
        _check(0.0 <= self.overlap < 1.0, "overlap must be in [0, 1)")
        _check(self.sw_batch_size >= 1, "sw_batch_size must be >= 1")


@dataclass
class Config:
    """A full segmentation run: data, preprocessing, augmentation, model, training and inference."""

    experiment: str = "experiment"
    output_dir: str = "runs/{experiment}"  #: ``{experiment}`` is replaced by the experiment name
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    @property
    def run_dir(self) -> str:
        """``output_dir`` with ``{experiment}`` filled in."""
        return self.output_dir.replace("{experiment}", self.experiment)
